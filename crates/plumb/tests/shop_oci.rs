//! examples/shop-oci: the shop with every replica an OCI container built from its Dockerfile
//! (nginx -> gateway -> 3 products -> Redis). The app answers through the published port,
//! spread over all three product containers; `down` leaves nothing, in podman either.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

const STACK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/shop-oci/plumb.toml");
const COMPOSE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/shop-oci/compose.yaml");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

fn http(sb: &Sandbox, from: Option<&str>, url: &str) -> String {
    let prefix = from.map(|n| format!("ip netns exec {n} ")).unwrap_or_default();
    sb.ok(&format!("{prefix}curl -sf -m 5 {url}"))
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects and podman in a sandbox)")]
fn the_shop_runs_as_containers_built_from_its_dockerfiles() {
    let Some(sb) = Sandbox::start() else { return };
    let _podman = sb.use_podman();
    sb.plumb_ok(&["up", "-f", STACK, "--wait"]);
    assert_eq!(
        sb.podman_containers(),
        [
            "shop-oci-gateway-1",
            "shop-oci-product-1",
            "shop-oci-product-2",
            "shop-oci-product-3",
            "shop-oci-redis-1",
            "shop-oci-web-1"
        ]
    );
    assert!(eventually(Duration::from_secs(20), || {
        let rows = sb.ps();
        rows.len() == 6 && rows.iter().all(|r| r["process"]["health"] == "healthy")
    }));

    // The page and the catalogue through the published port, from outside and from the host.
    assert!(http(&sb, Some("outside"), &format!("http://{HOST_IP}:8081/")).contains("<html"));
    assert!(http(&sb, None, "http://127.0.0.1:8081/").contains("<html"));
    let mut served_by = BTreeSet::new();
    for _ in 0..6 {
        let body: serde_json::Value = serde_json::from_str(&http(
            &sb,
            Some("outside"),
            &format!("http://{HOST_IP}:8081/api/products"),
        ))
        .unwrap();
        assert!(body["products"].as_array().unwrap().len() >= 3, "{body}");
        served_by.insert(body["served_by"].as_str().unwrap().to_string());
    }
    assert_eq!(
        served_by,
        BTreeSet::from(["product-1".into(), "product-2".into(), "product-3".into()])
    );
    // Views are counted in the Redis container.
    assert!(http(&sb, None, "http://127.0.0.1:8081/api/products/2").contains("\"views\""));
    assert_eq!(sb.ok("podman exec shop-oci-redis-1 redis-cli get views:2").trim(), "1");
    // The containers' output is the replicas' log, as a host program's (nginx's access log
    // goes to its stdout).
    assert!(
        eventually(Duration::from_secs(5), || sb
            .plumb_ok(&["logs", "web-1"])
            .contains("GET /api/products")),
        "{}",
        sb.plumb_ok(&["logs", "web-1"])
    );
    // A second up builds nothing and leaves every container running.
    let again = sb.plumb(&["up", "-f", STACK]);
    assert!(!text(&again.stderr).contains("building"), "{}", text(&again.stderr));
    let again = text(&again.stdout);
    assert!(again.contains("0 processes started, 6 left running"), "{again}");

    sb.plumb_ok(&["down", "shop-oci"]);
    assert_eq!(sb.podman_containers(), Vec::<String>::new());
    sb.assert_clean();
}

/// The same shop from its Compose file: `build:` services run as podman containers, healthchecks
/// run inside them (`podman exec`), `deploy.replicas` spreads the catalogue.
#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects and podman in a sandbox)")]
fn the_shop_runs_from_its_compose_file_as_containers() {
    let Some(sb) = Sandbox::start() else { return };
    let _podman = sb.use_podman();
    sb.plumb_ok(&["up", "-f", COMPOSE, "--wait"]);
    assert_eq!(sb.podman_containers().len(), 6, "{:?}", sb.podman_containers());
    assert!(eventually(Duration::from_secs(30), || {
        let rows = sb.ps();
        rows.len() == 6 && rows.iter().all(|r| r["process"]["health"] == "healthy")
    }));
    let mut served_by = BTreeSet::new();
    for _ in 0..6 {
        let body: serde_json::Value = serde_json::from_str(&http(
            &sb,
            Some("outside"),
            &format!("http://{HOST_IP}:8081/api/products"),
        ))
        .unwrap();
        served_by.insert(body["served_by"].as_str().unwrap().to_string());
    }
    assert_eq!(served_by.len(), 3, "{served_by:?}");
    // Unpublished ports stay closed from outside.
    assert!(sb.connect(Some("outside"), HOST_IP, 5000).is_none());
    sb.plumb_ok(&["down", "-f", COMPOSE]);
    assert_eq!(sb.podman_containers(), Vec::<String>::new());
    sb.assert_clean();
}

/// The shop's images run by podman itself (its CNI backend), on plumb's network through plumb's
/// CNI plugin (examples/shop-oci/podman-network.toml): names and the product VIP spread over
/// the three product containers, the stack's policies hold, `plumb trace` and `plumb capture`
/// see podman's containers, and `podman rm` + `plumb down` leave nothing.
#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects and podman in a sandbox)")]
fn the_shop_runs_in_podman_on_plumbs_network_through_the_cni_plugin() {
    let Some(sb) = Sandbox::start() else { return };
    let _podman = sb.use_podman();
    let dir = sb.dir.display().to_string();
    for image in ["redis", "product", "gateway", "web"] {
        sb.ok(&format!(
            "podman build -q -t localhost/shop-oci-{image} -f {EXAMPLES}/shop-oci/{image}.Dockerfile {EXAMPLES}/shop >/dev/null"
        ));
    }
    // podman's CNI backend, its plugin folder holding plumb (`plumb cni install`) and portmap.
    sb.ok(&format!(
        "set -e; mkdir -p {dir}/cni-bin {dir}/net.d /var/lib/cni; cp /usr/lib/cni/portmap {dir}/cni-bin/
         mount -t tmpfs tmpfs /var/lib/cni
         cp /etc/containers/containers.conf {dir}/containers-cni.conf
         printf '[network]\\nnetwork_backend = \"cni\"\\ncni_plugin_dirs = [\"{dir}/cni-bin\"]\\nnetwork_config_dir = \"{dir}/net.d\"\\n' >> {dir}/containers-cni.conf"
    ));
    sb.plumb_ok(&["cni", "install", &format!("{dir}/cni-bin")]);
    sb.plumb_ok(&["up", "-f", &format!("{EXAMPLES}/shop-oci/podman-network.toml")]);
    let list = sb.plumb_ok(&["cni", "conflist", "shopnet", "shop", "--name", "shopnet"]);
    sb.write("net.d/shopnet.conflist", &list);
    let podman = format!("CONTAINERS_CONF={dir}/containers-cni.conf podman");
    let run = |name: &str, service: &str, extra: &str| {
        sb.ok(&format!(
            "{podman} run -d --name {name} --network shopnet --network-alias {service} {extra} localhost/shop-oci-{service} >/dev/null"
        ));
    };
    run("redis", "redis", "");
    for i in 1..=3 {
        run(
            &format!("product-{i}"),
            "product",
            &format!("-e PLUMB_SERVICE=product -e PLUMB_REPLICA={i}"),
        );
    }
    run("gateway", "gateway", "");
    run("web", "web", "-p 8083:80");

    // The app answers through the port podman published; the gateway's requests by name to
    // product's VIP land on all three product containers (no --dns: podman takes plumb's DNS
    // server from the ADD result).
    let url = format!("http://{HOST_IP}:8083/api/products");
    assert!(
        eventually(Duration::from_secs(30), || sb
            .sh(&format!("ip netns exec outside curl -sf -m 2 -o /dev/null {url}"))
            .status
            .success()),
        "the shop never answered: {}",
        sb.plumb_ok(&["ps"])
    );
    let mut served_by = BTreeSet::new();
    for _ in 0..6 {
        let body: serde_json::Value = serde_json::from_str(&http(&sb, Some("outside"), &url)).unwrap();
        served_by.insert(body["served_by"].as_str().unwrap().to_string());
    }
    assert_eq!(served_by.len(), 3, "{served_by:?}");
    // podman wrote plumb's DNS server (the ADD result's) into the containers: names resolve
    // inside them, the service's to its VIP.
    let resolved = sb.ok(&format!("{podman} exec gateway getent hosts product"));
    assert!(resolved.starts_with(&sb.vip("shopnet", "product")), "{resolved}");
    let services = sb.plumb_ok(&["services", "-s", "shopnet", "--json"]);
    assert!(
        services.contains("product-1") && services.contains("product-3"),
        "{services}"
    );

    // The policies hold: web reaches the gateway, never Redis; plumb trace says which rule.
    let redis = sb.address("redis", "eth0");
    let gateway = sb.address("gateway", "eth0");
    let reaches = |ip: &str, port: u16| {
        sb.sh(&format!(
            "ip netns exec shopnet-web timeout 3 bash -c 'exec 3<>/dev/tcp/{ip}/{port}'"
        ))
        .status
        .success()
    };
    assert!(reaches(&gateway, 5000), "web -> gateway");
    assert!(!reaches(&redis, 6379), "web -> redis");
    let traced = sb.plumb(&["trace", "web", &format!("{redis}:6379"), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&traced.stdout).unwrap();
    assert_eq!(traced.status.code(), Some(1), "{report:#}");
    assert_eq!(report["decided_by"]["verdict"], "drop", "{report:#}");
    // plumb capture records the products' packets while the app is asked.
    let captured = sb.sh(&format!(
        "(sleep 0.5; ip netns exec outside curl -sf -m 2 -o /dev/null {url}) & timeout 10 {PLUMB} capture shopnet/product -c 2"
    ));
    assert!(captured.status.success(), "{}", text(&captured.stderr));
    assert!(text(&captured.stdout).contains("/eth0"), "{}", text(&captured.stdout));

    sb.ok(&format!(
        "{podman} rm -f -t 0 web gateway product-1 product-2 product-3 redis >/dev/null"
    ));
    assert!(!sb.plumb_ok(&["ps"]).contains("product-1"));
    let dnat = sb.ok("iptables-save -t nat | grep -c 'CNI-DN-' || true");
    assert_eq!(dnat.trim(), "0", "portmap's DNAT is gone");
    sb.plumb_ok(&["down", "shopnet"]);
    assert_eq!(sb.podman_containers(), Vec::<String>::new());
    // portmap's empty chains and tables are the runtime's leftovers, not plumb's.
    sb.ok("for ipt in iptables ip6tables; do for t in nat filter mangle; do $ipt -t $t -F 2>/dev/null; $ipt -t $t -X 2>/dev/null; done; done; nft delete table ip nat 2>/dev/null; nft delete table ip6 nat 2>/dev/null; true");
    sb.assert_clean();
}

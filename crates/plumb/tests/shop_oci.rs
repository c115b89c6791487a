//! examples/shop-oci: the shop with every replica an OCI container built from its Dockerfile
//! (nginx -> gateway -> 3 products -> Redis). The app answers through the published port,
//! spread over all three product containers; `down` leaves nothing, in podman either.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

const STACK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/shop-oci/plumb.toml");
const COMPOSE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/shop-oci/compose.yaml");

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

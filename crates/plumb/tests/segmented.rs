//! The segmented shop (`plumb demo --segmented`, examples/shop-segmented) with real nginx,
//! Flask and Redis on three networks: the app answers through the published port, and each
//! tier reaches only the next, by name and by address.

mod common;

use std::collections::BTreeSet;

use common::*;

fn http(sb: &Sandbox, from: Option<&str>, url: &str) -> String {
    let prefix = from.map(|n| format!("ip netns exec {n} ")).unwrap_or_default();
    sb.ok(&format!("{prefix}curl -sf -m 5 {url}"))
}

/// True if `container` completes a TCP connect to `target:port` within 2 s. Run through
/// `plumb exec`, so a name resolves through the container's own resolv.conf (the stack's DNS).
fn tcp(sb: &Sandbox, container: &str, target: &str, port: u16) -> bool {
    let script = format!("exec 3<>/dev/tcp/{target}/{port}");
    sb.plumb(&["exec", container, "--", "timeout", "2", "bash", "-c", &script])
        .status
        .success()
}

/// What `name` resolves to in `container` (the stack's DNS server, through getaddrinfo), if
/// anything; the first address.
fn hosts_entry(sb: &Sandbox, container: &str, name: &str) -> Option<String> {
    let out = sb.plumb(&["exec", container, "--", "getent", "ahostsv4", name]);
    out.status
        .success()
        .then(|| text(&out.stdout).split_whitespace().next().unwrap_or("").to_string())
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn the_segmented_shop_works_and_each_tier_reaches_only_the_next() {
    let Some(sb) = Sandbox::start() else { return };
    // The demo waits until everything is healthy.
    sb.plumb_ok(&["demo", "--segmented"]);
    assert_eq!(sb.ps().len(), 6);

    // The page and the API through the published port, from the host and from outside.
    assert!(http(&sb, None, "http://127.0.0.1:8080/").contains("<html"));
    assert!(http(&sb, Some("outside"), &format!("http://{HOST_IP}:8080/")).contains("<html"));
    let mut served_by = BTreeSet::new();
    for i in 0..9 {
        let (from, host) = if i % 2 == 0 {
            (None, "127.0.0.1")
        } else {
            (Some("outside"), HOST_IP)
        };
        let body: serde_json::Value =
            serde_json::from_str(&http(&sb, from, &format!("http://{host}:8080/api/products"))).unwrap();
        assert!(body["products"].as_array().unwrap().len() >= 3, "{body}");
        served_by.insert(body["served_by"].as_str().unwrap().to_string());
    }
    assert_eq!(
        served_by,
        BTreeSet::from(["product-1".into(), "product-2".into(), "product-3".into()])
    );

    // Interfaces follow the networks' order in the stack file.
    let gateway_front = sb.address("gateway-1", "eth0");
    let gateway_back = sb.address("gateway-1", "eth1");
    let product_back = sb.address("product-1", "eth0");
    let product_db = sb.address("product-1", "eth1");
    let redis = sb.address("redis-1", "eth0");
    assert!(gateway_front.starts_with("10.89.10.") && gateway_back.starts_with("10.89.11."));
    assert!(product_back.starts_with("10.89.11.") && product_db.starts_with("10.89.12."));
    assert!(redis.starts_with("10.89.12."));

    // Names resolve only where the two share a network: a service to its VIP, a replica to its
    // address on the network they share.
    let gateway_vip = sb.vip("shop-seg", "gateway");
    assert_eq!(hosts_entry(&sb, "web-1", "gateway"), Some(gateway_vip.clone()));
    assert_eq!(hosts_entry(&sb, "product-1", "gateway"), Some(gateway_vip));
    assert_eq!(hosts_entry(&sb, "gateway-1", "product-1"), Some(product_back.clone()));
    let redis_vip = sb.vip("shop-seg", "redis");
    // product's default route is backend; redis is on database only: its VIP all the same.
    assert_eq!(hosts_entry(&sb, "product-2", "redis"), Some(redis_vip));
    for (asker, hidden) in [("web-1", "redis"), ("web-1", "product"), ("gateway-1", "redis")] {
        assert_eq!(hosts_entry(&sb, asker, hidden), None, "{asker} resolves {hidden}");
    }

    // Each tier reaches the next (so the failures below are the firewall, not a dead service).
    assert!(tcp(&sb, "web-1", "gateway", 5000));
    assert!(tcp(&sb, "gateway-1", "product-1", 5001));
    assert!(tcp(&sb, "gateway-1", &product_back, 5001));
    assert!(tcp(&sb, "product-3", "redis", 6379));
    assert!(tcp(&sb, "product-1", &redis, 6379));

    // ... and nothing further.
    for (asker, target, port) in [
        ("web-1", "redis", 6379),
        ("web-1", redis.as_str(), 6379),
        ("web-1", "product", 5001),
        ("web-1", product_back.as_str(), 5001),
        ("web-1", product_db.as_str(), 5001),
        ("web-1", gateway_back.as_str(), 5000),
        ("gateway-1", "redis", 6379),
        ("gateway-1", redis.as_str(), 6379),
        ("gateway-1", product_db.as_str(), 5001),
        // The policies: each tier takes traffic only from the tier before it, on its port,
        // even from containers isolation lets through (same network).
        ("product-1", gateway_back.as_str(), 5000),
        ("redis-1", product_db.as_str(), 5001),
        ("product-2", product_back.as_str(), 5001),
        ("product-1", "redis", 6380),
        ("web-1", "gateway", 80),
    ] {
        assert!(!tcp(&sb, asker, target, port), "{asker} reached {target}:{port}");
    }
    // The host reaches web's published port, but not the gateway directly (policies).
    assert!(
        sb.connect(None, &gateway_front, 5000).is_none(),
        "the host reached the gateway"
    );
    // `plumb policy why` names the policy that decides.
    let why = sb.plumb(&["policy", "why", "product-1", "redis:6379"]);
    assert!(
        why.status.success() && text(&why.stdout).contains("policies[2]"),
        "{why:?}"
    );
    let why = sb.plumb(&["policy", "why", "product-1", &format!("{gateway_back}:5000")]);
    assert_eq!(why.status.code(), Some(1), "{why:?}");
    assert!(
        text(&why.stdout).contains("gateway's ingress is default-deny"),
        "{why:?}"
    );
    // database is internal: Redis reaches nothing outside.
    assert!(!sb.ping("shop-seg-redis-1", OUTSIDE_IP));

    // Both demos publish 8080: the flat one is refused while this one is up.
    let flat = sb.plumb(&["demo"]);
    assert!(
        !flat.status.success() && text(&flat.stderr).contains("shop-seg"),
        "{flat:?}"
    );
    assert!(!sb.namespaces().iter().any(|n| n.starts_with("shop-web")));

    sb.plumb_ok(&["demo", "--down"]);
    sb.assert_clean();
    assert!(
        !sb.state_dir.join("demo/shop-seg").exists(),
        "the demo's files are left"
    );
}

//! Compose files run natively: the reference shop from examples/shop/compose.yaml comes up
//! with `plumb up -f compose.yaml`, answers through its published port, resolves its names,
//! scales and takes attachments through the recorded compose file, and goes down leaving
//! nothing; a bad compose
//! file is refused at its line, before anything is made.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

fn http(sb: &Sandbox, from: Option<&str>, url: &str) -> String {
    let prefix = from.map(|n| format!("ip netns exec {n} ")).unwrap_or_default();
    sb.ok(&format!("{prefix}curl -sf -m 5 {url}"))
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn the_shop_comes_up_from_its_compose_file() {
    let Some(sb) = Sandbox::start() else { return };
    sb.copy_shop();
    sb.plumb_ok(&["up", "-f", "shop/compose.yaml"]);
    assert!(
        eventually(Duration::from_secs(30), || {
            let rows = sb.ps();
            rows.len() == 6 && rows.iter().all(|r| r["process"]["health"] == "healthy")
        }),
        "{:#?}",
        sb.ps()
    );
    // The compose file's name, its `default` network with the subnet it gives.
    let rows = sb.ps();
    assert!(rows.iter().all(|r| r["stack"] == "shop"), "{rows:#?}");

    // The page and the catalogue through the published port 8080, from outside.
    assert!(http(&sb, Some("outside"), &format!("http://{HOST_IP}:8080/")).contains("<html"));
    let mut served_by = BTreeSet::new();
    for _ in 0..6 {
        let body: serde_json::Value = serde_json::from_str(&http(
            &sb,
            Some("outside"),
            &format!("http://{HOST_IP}:8080/api/products"),
        ))
        .unwrap();
        assert!(body["products"].as_array().unwrap().len() >= 3, "{body}");
        served_by.insert(body["served_by"].as_str().unwrap().to_string());
    }
    assert_eq!(
        served_by,
        BTreeSet::from(["product-1".into(), "product-2".into(), "product-3".into()])
    );
    // Only what `ports` publishes is reachable from outside: the gateway's 5000 is not.
    assert_eq!(sb.connect(Some("outside"), HOST_IP, 5000), None);

    // Names: `redis` is the service's VIP, `redis-1` its replica on the default network.
    let redis = sb.plumb_ok(&["exec", "product-2", "--", "getent", "hosts", "redis"]);
    assert!(redis.starts_with("10.96.0."), "{redis}");
    let redis_1 = sb.plumb_ok(&["exec", "product-2", "--", "getent", "hosts", "redis-1"]);
    assert!(redis_1.starts_with("10.89.0."), "{redis_1}");
    assert_eq!(sb.ok("ip netns exec shop-web-1 redis-cli -h redis ping").trim(), "PONG");

    // `scale` parses the recorded compose file again.
    sb.plumb_ok(&["scale", "product=2"]);
    assert_eq!(
        sb.ps().iter().filter(|r| r["service"] == "product").count(),
        2,
        "{:#?}",
        sb.ps()
    );
    assert!(sb.plumb(&["exec", "product-3", "--", "true"]).status.code() != Some(0));

    // `attach` and `detach` plan from the recorded compose file too: a namespace made
    // elsewhere joins the default network and reaches web with real packets.
    sb.ok("ip netns add runtime-x");
    let out = sb.plumb_ok(&[
        "attach",
        "shop/ext",
        "--network",
        "default",
        "--netns",
        "/run/netns/runtime-x",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(v["address"].as_str().unwrap().starts_with("10.89.0."), "{v}");
    let web = sb.address("web-1", "eth0");
    assert!(sb.ping("runtime-x", &web), "ext -> web-1");
    assert!(http(&sb, Some("runtime-x"), &format!("http://{web}:80/health")).contains("ok"));
    sb.plumb_ok(&["detach", "shop/ext"]);
    assert!(!sb.ping("runtime-x", &web), "detached, ext still reaches web-1");
    sb.ok("ip netns del runtime-x");

    // `convert` writes the same stack as TOML.
    let toml = sb.plumb_ok(&["convert", "-f", "shop/compose.yaml"]);
    assert!(
        toml.contains("[services.product]")
            && toml.contains("replicas = 3")
            && toml.contains("subnet = \"10.89.0.0/24\""),
        "{toml}"
    );

    sb.plumb_ok(&["down", "-f", "shop/compose.yaml"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_bad_compose_file_is_refused_at_its_line_and_makes_nothing() {
    let Some(sb) = Sandbox::start() else { return };
    // Found as Compose's default name when the folder has no plumb.toml.
    sb.write(
        "bad/compose.yaml",
        "services:\n  web:\n    command: [/bin/sleep, \"60\"]\n    ports: [\"8080:80\"]\n    volumes: [\"./data:/data\"]\n  cache:\n    command: [/bin/sleep, \"60\"]\n    depends_on: [nowhere]\n",
    );
    let out = sb.sh(&format!("cd bad && {PLUMB} up"));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("compose.yaml:5:5")
            && err.contains("services.web.volumes")
            && err.contains("volumes is not supported"),
        "{err}"
    );
    sb.assert_clean();

    // A file Compose accepts but plumb's checks refuse: the same, at the compose line.
    sb.write(
        "bad/compose.yaml",
        "services:\n  web:\n    command: [/bin/sleep, \"60\"]\n    depends_on: [nowhere]\n",
    );
    let out = sb.plumb(&["up", "-f", "bad/compose.yaml"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad/compose.yaml:4:18") && err.contains("services.web.depends_on: unknown service \"nowhere\""),
        "{err}"
    );
    sb.assert_clean();

    // A good one in the same folder comes up under the folder's name, and goes.
    sb.write(
        "bad/compose.yaml",
        "services:\n  web:\n    command: [/bin/sleep, \"60\"]\n",
    );
    sb.ok(&format!("cd bad && {PLUMB} up"));
    assert_eq!(sb.ps()[0]["stack"], "bad", "{:#?}", sb.ps());
    sb.ok(&format!("cd bad && {PLUMB} down"));
    sb.assert_clean();
}

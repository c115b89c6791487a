//! Metrics: with `metrics = "127.0.0.1:9464"` the supervisor serves Prometheus text that
//! promtool accepts, whose interface counters grow with traffic and whose load-balancer, DNS
//! and health series tell what happened; without it nothing listens; a bad address is refused.

mod common;

use std::time::Duration;

use common::*;

const STACK: &str = r#"
name = "mt"
metrics = "127.0.0.1:9464"
[networks.n]
subnet = "10.89.52.0/24"
[services.web]
replicas = 2
expose = [80]
command = ["/usr/bin/python3", "-m", "http.server", "80", "--bind", "0.0.0.0"]
health = { tcp = 80, interval = "200ms" }
[services.client]
"#;

/// The value of the series `name{...container="C"...}`, if the scrape has it.
fn value(scrape: &str, name: &str, container: &str) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| l.contains(&format!("container=\"{container}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn metrics_pass_promtool_and_follow_the_traffic() {
    let sb = Sandbox::start().unwrap();
    sb.write("plumb.toml", STACK);
    sb.plumb_ok(&["up"]);
    let scrape = || sb.ok("curl -sf -m 5 http://127.0.0.1:9464/metrics");
    assert!(eventually(Duration::from_secs(10), || {
        value(&scrape(), "plumb_container_healthy", "web-2") == Some(1.0)
    }));
    let before = scrape();
    let checked = sb.sh(&format!(
        "printf '%s' '{}' | promtool check metrics",
        before.replace('\'', "'\\''")
    ));
    assert!(
        checked.status.success(),
        "promtool: {}{}\n{before}",
        text(&checked.stdout),
        text(&checked.stderr)
    );

    // Ten requests through the VIP, by name: DNS, the load balancer and the veths count them.
    for _ in 0..10 {
        sb.ok("ip netns exec mt-client-1 curl -sf -m 2 -o /dev/null http://web/");
    }
    let after = scrape();
    for c in ["web-1", "web-2", "client-1"] {
        let (b, a) = (
            value(&before, "plumb_container_receive_bytes_total", c).unwrap_or(0.0),
            value(&after, "plumb_container_receive_bytes_total", c).unwrap(),
        );
        assert!(a > b, "{c}: receive bytes {b} -> {a}");
    }
    let lb: f64 = ["web-1", "web-2"]
        .iter()
        .map(|c| value(&after, "plumb_lb_backend_connections_total", c).unwrap_or(0.0))
        .sum();
    assert_eq!(lb, 10.0, "{after}");
    let dns = after
        .lines()
        .find(|l| l.starts_with("plumb_dns_queries_total{"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(dns >= 10.0, "{after}");
    assert!(
        value(&after, "plumb_container_probe_duration_seconds", "web-1").is_some(),
        "{after}"
    );
    assert_eq!(value(&after, "plumb_container_healthy", "client-1"), Some(1.0));
    assert!(sb.sh("curl -sf -m 2 http://127.0.0.1:9464/other").status.code() != Some(0));

    sb.plumb_ok(&["down"]);
    assert!(
        !sb.sh("curl -sf -m 2 http://127.0.0.1:9464/metrics").status.success(),
        "still served after down"
    );
    sb.assert_clean();

    // Without `metrics`, nothing listens; a bad address is refused before anything is made.
    sb.write("plumb.toml", &STACK.replace("metrics = \"127.0.0.1:9464\"\n", ""));
    sb.plumb_ok(&["up"]);
    assert!(!sb.ok("ss -Hltn").contains(":9464"));
    sb.plumb_ok(&["down"]);
    sb.write("plumb.toml", &STACK.replace("127.0.0.1:9464", "127.0.0.1"));
    let bad = sb.plumb(&["up"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(text(&bad.stderr).contains("metrics"), "{}", text(&bad.stderr));
    sb.assert_clean();
}

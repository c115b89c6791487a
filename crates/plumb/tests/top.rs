//! `plumb top --once`: every container of the stack, with counters that grew with the traffic
//! sent during the sample, established connections, health and restarts.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const STACK: &str = r#"
name = "tp"
[networks.n]
subnet = "10.89.49.0/24"
[services.web]
command = ["/usr/bin/python3", "-m", "http.server", "80", "--bind", "0.0.0.0"]
health = { tcp = 80, interval = "200ms" }
[services.client]
[services.idle]
"#;

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn top_once_shows_every_container_with_its_traffic() {
    let sb = Sandbox::start().unwrap();
    sb.write("plumb.toml", STACK);
    sb.plumb_ok(&["up"]);
    let web = sb.address("web-1", "eth0");
    let get = format!("ip netns exec tp-client-1 curl -sf -m 2 -o /dev/null http://{web}/");
    assert!(eventually(Duration::from_secs(10), || sb.sh(&get).status.success()));
    // Requests all through the one-second sample, and a connection held open.
    sb.spawn_in(
        "tp-client-1",
        &format!("bash -c 'for i in $(seq 40); do curl -sf -m 1 -o /dev/null http://{web}/; sleep 0.05; done'"),
    );
    sb.spawn_in(
        "tp-client-1",
        &format!("python3 -c \"import socket,time; s=socket.create_connection(('{web}', 80)); time.sleep(5)\""),
    );
    std::thread::sleep(Duration::from_millis(300));
    let rows: Vec<Value> = serde_json::from_str(&sb.plumb_ok(&["top", "--once", "--json"])).unwrap();
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["container"] == name)
            .unwrap_or_else(|| panic!("no {name} in {rows:#?}"))
    };
    assert_eq!(rows.len(), 3, "{rows:#?}");
    for name in ["web-1", "client-1"] {
        let r = row(name);
        for field in [
            "rx_bytes_per_s",
            "tx_bytes_per_s",
            "rx_packets_per_s",
            "tx_packets_per_s",
        ] {
            assert!(r[field].as_f64().unwrap() > 0.0, "{name} {field}: {r:#}");
        }
    }
    assert!(row("client-1")["rx_bytes"].as_u64().unwrap() > 0);
    assert!(row("web-1")["established"].as_u64().unwrap() >= 1, "{rows:#?}");
    assert_eq!(row("web-1")["health"], "healthy");
    assert_eq!(row("idle-1")["health"], "-");
    assert_eq!(row("idle-1")["rx_bytes_per_s"].as_f64().unwrap(), 0.0, "{rows:#?}");
    // For people: a table naming each.
    let table = sb.plumb_ok(&["top", "tp", "--once"]);
    assert!(
        table.starts_with("CONTAINER") && table.contains("tp/web-1") && table.contains("tp/idle-1"),
        "{table}"
    );
    assert_eq!(sb.plumb(&["top", "nosuch", "--once"]).status.code(), Some(2));
    sb.plumb_ok(&["down"]);
    assert_eq!(sb.plumb(&["top", "tp", "--once"]).status.code(), Some(2));
    sb.assert_clean();
}

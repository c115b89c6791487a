//! `plumb conns`: a container's listener with the process that holds it, an established
//! connection during a request, and the host's flow for a published port with its DNAT.

mod common;

use common::*;
use serde_json::Value;

const STACK: &str = r#"
name = "cn"
[networks.front]
subnet = "10.89.42.0/24"
[services.web]
ports = ["8080:80"]
command = ["/usr/bin/python3", "-m", "http.server", "80", "--bind", "0.0.0.0"]
health = { tcp = 80, interval = "200ms" }
[services.idle]
"#;

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn conns_shows_listeners_connections_and_nat() {
    let sb = Sandbox::start().unwrap();
    sb.write("plumb.toml", STACK);
    sb.plumb_ok(&["up"]);
    let request = format!("ip netns exec outside curl -sf -m 2 -o /dev/null http://{HOST_IP}:8080/");
    assert!(eventually(std::time::Duration::from_secs(10), || sb
        .sh(&request)
        .status
        .success()));
    let web = sb.address("web-1", "eth0");
    // A connection from the outside held open while conns looks.
    sb.spawn_in(
        "outside",
        &format!("python3 -c \"import socket,time; s=socket.create_connection(('{HOST_IP}', 8080)); time.sleep(8)\""),
    );
    let mut report = Value::Null;
    let found = eventually(std::time::Duration::from_secs(5), || {
        report = serde_json::from_str(&sb.plumb_ok(&["conns", "web", "--json"])).unwrap();
        report["sockets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["state"] == "ESTAB")
    });
    assert!(found, "no established socket in web-1:\n{report:#}");
    let sockets = report["sockets"].as_array().unwrap();
    let listener = sockets
        .iter()
        .find(|s| s["state"] == "LISTEN" && s["local"] == "0.0.0.0:80")
        .unwrap_or_else(|| panic!("no listener on 0.0.0.0:80:\n{report:#}"));
    assert_eq!(listener["container"], "web-1");
    assert_eq!(listener["processes"][0]["command"], "python3", "{report:#}");
    let established = sockets.iter().find(|s| s["state"] == "ESTAB").unwrap();
    assert_eq!(established["local"], format!("{web}:80"), "{report:#}");
    // The flow came in on the host's port 8080 and was DNATed to web-1:80.
    let flows = report["flows"].as_array().unwrap();
    let published = flows
        .iter()
        .find(|f| f["original"]["dport"] == 8080 && f["original"]["src"] == OUTSIDE_IP)
        .unwrap_or_else(|| panic!("no flow to 8080 from outside:\n{report:#}"));
    assert_eq!(published["dnat"], format!("{web}:80"), "{report:#}");
    // The flows come from ctnetlink, not /proc/net/nf_conntrack: with the process's /proc/net
    // hidden (a tmpfs over its own /proc/PID/net, in a mount namespace of its own inside the
    // sandbox), the same flow is listed.
    let hidden = sb.ok(&format!(
        "unshare --mount sh -c 'mount -t tmpfs none /proc/$$/net && ! test -e /proc/net/nf_conntrack && exec {PLUMB} conns web --json'"
    ));
    let hidden: Value = serde_json::from_str(&hidden).unwrap();
    assert!(
        hidden["flows"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["original"]["dport"] == 8080
                && f["original"]["src"] == OUTSIDE_IP
                && f["dnat"] == format!("{web}:80")
                && f["state"] == "ESTABLISHED"),
        "no flow to 8080 without /proc/net:\n{hidden:#}"
    );

    // Only the target's sockets: idle has none, and its report is empty of web's.
    let idle: Value = serde_json::from_str(&sb.plumb_ok(&["conns", "idle-1", "--json"])).unwrap();
    assert!(idle["sockets"].as_array().unwrap().is_empty(), "{idle:#}");
    // The table for people names the process and the NAT.
    let human = sb.plumb_ok(&["conns", "cn"]);
    assert!(
        human.contains("python3[") && human.contains(&format!("dnat to {web}:80")),
        "{human}"
    );

    for unknown in [vec!["conns", "nosuch"], vec!["conns", "cn/nosuch"]] {
        let out = sb.plumb(&unknown);
        assert_eq!(out.status.code(), Some(2), "{unknown:?}");
        assert!(
            text(&out.stderr).contains("no stack, service or container"),
            "{}",
            text(&out.stderr)
        );
    }
    sb.plumb_ok(&["down"]);
    assert_eq!(
        sb.plumb(&["conns", "cn"]).status.code(),
        Some(2),
        "a stack that is down has no connections"
    );
    sb.assert_clean();
}

//! `plumb capture`: a service's packets written as pcapng while known requests run, each
//! labelled with the container interface it crossed (as tshark reads them); the BPF filter
//! keeps other packets out; `-c` ends the capture by itself; unknown targets are an input error.

mod common;

use std::io::{BufRead, BufReader};
use std::time::Duration;

use common::*;

const STACK: &str = r#"
name = "cap"
[networks.front]
subnet = "10.89.46.0/24"
[services.web]
replicas = 2
command = ["/usr/bin/python3", "-m", "http.server", "80", "--bind", "0.0.0.0"]
health = { tcp = 80, interval = "200ms" }
[services.client]
"#;

/// Starts `plumb ARGS` in the background and returns once it says it is capturing.
fn start_capture(sb: &Sandbox, args: &[&str]) -> std::process::Child {
    let mut child = sb.spawn_plumb(args);
    let mut first = String::new();
    BufReader::new(child.stderr.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("capturing on"), "{first}");
    child
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn capture_labels_each_packet_with_its_container_interface() {
    let sb = Sandbox::start().unwrap();
    sb.write("plumb.toml", STACK);
    sb.plumb_ok(&["up"]);
    let web1 = sb.address("web-1", "eth0");
    let web2 = sb.address("web-2", "eth0");
    let client = sb.address("client-1", "eth0");
    for ip in [&web1, &web2] {
        let get = format!("ip netns exec cap-client-1 curl -sf -m 2 -o /dev/null http://{ip}/");
        assert!(
            eventually(Duration::from_secs(10), || sb.sh(&get).status.success()),
            "{ip} never answered"
        );
    }
    let file = sb.dir.join("web.pcapng");
    let file = path_str(&file).to_string();
    let mut capture = start_capture(
        &sb,
        &[
            "capture",
            "web",
            "--filter",
            "tcp port 80",
            "--duration",
            "3s",
            "-w",
            &file,
        ],
    );
    // Known requests: three to web-1, two to web-2; and pings, which the filter must keep out.
    for ip in [&web1, &web1, &web2, &web1, &web2] {
        sb.ok(&format!(
            "ip netns exec cap-client-1 curl -sf -m 2 -o /dev/null http://{ip}/"
        ));
    }
    sb.ok(&format!("ip netns exec cap-client-1 ping -c2 -i0.2 -W1 {web1}"));
    assert!(capture.wait().unwrap().success(), "capture failed");

    let fields = sb.ok(&format!(
        "tshark -r {file} -T fields -e frame.interface_name -e ip.src -e ip.dst -e ip.proto -e tcp.flags.syn -e tcp.flags.ack 2>/dev/null"
    ));
    let rows: Vec<Vec<&str>> = fields.lines().map(|l| l.split('\t').collect()).collect();
    assert!(!rows.is_empty(), "no packets in {file}");
    for row in &rows {
        let (iface, src, dst, proto) = (row[0], row[1], row[2], row[3]);
        assert_eq!(proto, "6", "the filter lets only TCP through: {row:?}");
        // Each packet is labelled with the replica whose interface it crossed.
        let replica = if src == web1 || dst == web1 { &web1 } else { &web2 };
        let want = if replica == &web1 { "web-1/eth0" } else { "web-2/eth0" };
        assert_eq!(iface, want, "{row:?}");
        assert!(src == client || dst == client, "{row:?}");
    }
    // Each request's handshake is there: a SYN without ACK from the client, per request.
    let syns = |ip: &str| rows.iter().filter(|r| r[2] == ip && r[4] == "1" && r[5] == "0").count();
    assert_eq!((syns(&web1), syns(&web2)), (3, 2), "{fields}");

    // -c ends the capture by itself, after exactly that many packets.
    let counted = sb.sh(&format!(
        "(sleep 0.5; ip netns exec cap-client-1 curl -sf -m 2 -o /dev/null http://{web1}/) & timeout 10 {PLUMB} capture web-1 -c 4"
    ));
    assert!(counted.status.success(), "{}", text(&counted.stderr));
    assert_eq!(text(&counted.stdout).lines().count(), 4, "{}", text(&counted.stdout));
    assert!(
        text(&counted.stdout).lines().all(|l| l.contains(" web-1/eth0 ")),
        "{}",
        text(&counted.stdout)
    );
    assert!(
        text(&counted.stderr).contains("4 packets captured"),
        "{}",
        text(&counted.stderr)
    );

    for bad in [
        vec!["capture", "nosuch"],
        vec!["capture", "web", "-i", "eth7"],
        vec!["capture", "web", "--filter", "tcp port"],
    ] {
        let out = sb.plumb(&bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
    }
    sb.plumb_ok(&["down"]);
    assert_eq!(
        sb.plumb(&["capture", "web"]).status.code(),
        Some(2),
        "a stack that is down"
    );
    sb.assert_clean();
}

//! Overlay networks across simulated hosts (tests/common/cluster.rs), with real packets.

mod common;

use common::cluster::{Cluster, UNDERLAY_GATEWAY};
use common::*;

/// The harness itself: hosts reach each other and the sandbox over the underlay, `outside`
/// through the sandbox; a cut drops a host's traffic to one address until healed; a spawned
/// process is killed with the host.
#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn simulated_hosts_share_an_underlay() {
    let Some(cluster) = Cluster::start(3) else { return };
    let (h1, h2, h3) = (cluster.host(0), cluster.host(1), cluster.host(2));
    assert_eq!((h1.name.as_str(), h3.underlay.as_str()), ("h1", "10.99.0.13"));
    h1.ok(&format!(
        "ping -c1 -W1 {} && ping -c1 -W1 {UNDERLAY_GATEWAY} && ping -c1 -W1 {OUTSIDE_IP}",
        h2.underlay
    ));
    assert_eq!(h2.ok("ip -o link show eth0 | grep -o 'mtu [0-9]*'").trim(), "mtu 1500");
    // Each host has its own /run/netns and state dir.
    h1.ok("ip netns add probe");
    assert_eq!(h1.namespaces(), ["probe"]);
    assert!(h2.namespaces().is_empty() && cluster.sandbox.namespaces().is_empty());
    h1.ok("ip netns del probe");
    h1.cut_from(&h3.underlay);
    assert!(!h1.sh(&format!("ping -c1 -W1 {}", h3.underlay)).status.success());
    assert!(h1.sh(&format!("ping -c1 -W1 {}", h2.underlay)).status.success());
    assert_eq!(h1.nft_tables(), "", "the cut table is the test's, not plumb's");
    h1.heal();
    h1.ok(&format!("ping -c1 -W1 {}", h3.underlay));
    let pid = h2.spawn("sleep 1000");
    assert!(h2.processes().contains(&pid));
    h2.kill_all();
    assert!(eventually(std::time::Duration::from_secs(5), || h2
        .processes()
        .is_empty()));
    assert!(h1.links().is_empty());
}

/// Two overlay networks over three hosts, `b` internal: `web-N` on `a` and `other-N` on `b`
/// run on host hN.
const STACK: &str = r#"
name = "ov"
[networks.a]
subnet = "10.50.0.0/16"
driver = "overlay"
[networks.b]
subnet = "10.60.0.0/16"
driver = "overlay"
internal = true
[services.web]
networks = ["a"]
replicas = 4
[services.other]
networks = ["b"]
replicas = 4
"#;

/// Host `i` (1-based)'s assignment: replica i of each service, block i-1 of each network, and
/// the hosts in `peers` (1-based) as its peers.
fn assignment(i: usize, peers: &[usize]) -> String {
    assignment_with_mtu(i, peers, 1450)
}

/// The same, with the overlays' MTU as the agent derives it from the underlay's.
fn assignment_with_mtu(i: usize, peers: &[usize], mtu: u32) -> String {
    let overlay = |net: &str, second: u8| {
        let peers: Vec<String> = peers
            .iter()
            .filter(|p| **p != i)
            .map(|p| {
                format!(
                    r#"{{"host": "h{p}", "underlay": "10.99.0.{}", "block": "10.{second}.{}.0/24"}}"#,
                    10 + p,
                    p - 1
                )
            })
            .collect();
        format!(
            r#""{net}": {{"block": "10.{second}.{}.0/24", "local": "10.99.0.{}", "mtu": {mtu}, "peers": [{}]}}"#,
            i - 1,
            10 + i,
            peers.join(", ")
        )
    };
    format!(
        r#"{{"host": "h{i}", "replicas": {{"web": [{i}], "other": [{i}]}}, "overlays": {{{}, {}}}}}"#,
        overlay("a", 50),
        overlay("b", 60)
    )
}

/// Writes the stack file and host `i`'s assignment (with `peers`) into the host's folder and
/// returns `up`'s arguments for them.
fn up_args(cluster: &Cluster, i: usize, peers: &[usize]) -> Vec<String> {
    up_args_with(cluster, i, &assignment(i, peers))
}

/// `up`'s arguments for host `i` with this assignment.
fn up_args_with(cluster: &Cluster, i: usize, assignment: &str) -> Vec<String> {
    let host = cluster.host(i - 1);
    let stack = host.dir.join("stack.toml");
    std::fs::write(&stack, STACK).unwrap();
    let file = host
        .dir
        .join(format!("h{i}-{:x}.json", plumb_core::names::fnv1a(&[assignment])));
    std::fs::write(&file, assignment).unwrap();
    let mut args = vec!["up".to_string(), "-f".into(), path_str(&stack).into()];
    args.extend(["--assignment".into(), path_str(&file).into()]);
    args
}

fn up(cluster: &Cluster, i: usize, peers: &[usize], extra: &[&str]) -> String {
    let mut args = up_args(cluster, i, peers);
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    cluster.host(i - 1).plumb_ok(&args)
}

/// web-N's address on `a` (block N-1, first after the gateway), other-N's on `b`.
fn web(n: usize) -> String {
    format!("10.50.{}.2", n - 1)
}
fn other(n: usize) -> String {
    format!("10.60.{}.2", n - 1)
}

fn mtu(host: &Host, ns: Option<&str>, link: &str) -> String {
    let prefix = ns.map(|n| format!("-n {n} ")).unwrap_or_default();
    host.ok(&format!("ip {prefix}-o link show {link} | grep -o 'mtu [0-9]*'"))
        .trim()
        .to_string()
}

/// The device and its entries as `ip`/`bridge` list them.
fn entries(host: &Host) -> String {
    host.ok(
        "dev=$(ip -o link show type vxlan | awk -F': ' '/plumb:ov\\/vxlan\\/a/ {print $2}' | sed 's/@.*//')
         ip route show dev $dev; ip neigh show dev $dev nud permanent; bridge fdb show dev $dev | grep dst",
    )
}

use common::cluster::Host;

/// The underlay's MTU went down (the agent's assignment says 1400 for the overlays now): the
/// VXLAN devices are made again, and the bridges and both ends of the veths follow in place
/// (containers keep running); full-size packets of the new MTU cross, larger ones do not.
#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn an_underlay_mtu_change_reaches_the_bridges_and_the_containers() {
    let Some(cluster) = Cluster::start(2) else { return };
    let both = [1, 2];
    for i in both {
        up(&cluster, i, &both, &[]);
    }
    let h1 = cluster.host(0);
    let inode = || h1.ok("stat -L -c %i /run/netns/ov-web-1");
    let web1 = inode();
    for i in both {
        let args = up_args_with(&cluster, i, &assignment_with_mtu(i, &both, 1400));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = cluster.host(i - 1).plumb_ok(&args);
        assert!(!out.contains("up to date"), "h{i}: {out}");
    }
    let at_1400 = h1.ok("ip -o link show | grep -E ': pl[bvx]' | grep -c 'mtu 1400'");
    assert_eq!(at_1400.trim(), "6", "two bridges, two veths, two VXLAN devices at 1400");
    assert_eq!(mtu(h1, Some("ov-web-1"), "eth0"), "mtu 1400");
    assert_eq!(inode(), web1, "set in place: web-1 is not recreated");
    h1.ok(&format!("ip netns exec ov-web-1 ping -c1 -W1 -M do -s 1372 {}", web(2)));
    assert!(
        !h1.sh(&format!("ip netns exec ov-web-1 ping -c1 -W1 -M do -s 1373 {}", web(2)))
            .status
            .success(),
        "1401 bytes do not fit the overlay's new MTU"
    );
    for i in both {
        let args = up_args_with(&cluster, i, &assignment_with_mtu(i, &both, 1400));
        let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
        args.extend(["--dry-run", "--json"]);
        let plan: serde_json::Value = serde_json::from_str(&cluster.host(i - 1).plumb_ok(&args)).unwrap();
        assert_eq!(plan["steps"], serde_json::json!([]), "h{i}: {plan:#}");
    }
    for host in cluster.hosts() {
        host.plumb_ok(&["down", "ov"]);
        host.assert_clean();
    }
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn containers_on_three_hosts_reach_each_other_over_the_overlay_and_nothing_else() {
    let Some(cluster) = Cluster::start(3) else { return };
    let all = [1, 2, 3];
    // --dry-run shows the VXLAN device, the checksum workaround and the peers' entries.
    let script = up(&cluster, 1, &all, &["--dry-run"]);
    for needle in [
        "type vxlan id",
        "local 10.99.0.11 dstport 4789 nolearning",
        "ethtool -K plx",
        "ip addr add 10.50.0.0/32 dev plx",
        "ip route add 10.50.1.0/24 via 10.50.1.0 dev plx",
        "ip neigh add 10.50.2.0 lladdr",
        "dst 10.99.0.13 self permanent",
        "mtu 1450 master plb",
    ] {
        assert!(script.contains(needle), "missing {needle:?} in\n{script}");
    }
    for i in all {
        up(&cluster, i, &all, &[]);
    }
    // The same assignment again: nothing to do.
    for i in all {
        let plan = up(&cluster, i, &all, &["--dry-run", "--json"]);
        let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
        assert_eq!(plan["steps"], serde_json::json!([]), "h{i}: {plan:#}");
    }
    let (h1, h2, h3) = (cluster.host(0), cluster.host(1), cluster.host(2));
    h2.serve("ov-web-2", 7000, "web-2");
    h3.serve("ov-web-3", 7000, "web-3");
    h2.serve("ov-other-2", 7000, "other-2");
    // Across hosts by address, the client's own address preserved (no NAT inside).
    assert_eq!(
        h1.connect(Some("ov-web-1"), &web(2), 7000).as_deref(),
        Some("web-2 from 10.50.0.2")
    );
    assert_eq!(
        h1.connect(Some("ov-web-1"), &web(3), 7000).as_deref(),
        Some("web-3 from 10.50.0.2")
    );
    assert!(h1.ping("ov-web-1", &web(3)));
    assert!(h3.ping("ov-web-3", &web(2)));
    // The MTU: underlay 1500 - 50 on the device, the bridge and both veth ends; 1400-byte and
    // 1450-byte packets cross without fragmenting (the outer packet is 1500), 1451 do not fit.
    let dev = h1.ok("ip -o link show type vxlan | awk -F': ' '{print $2}' | sed 's/@.*//' | head -1");
    assert_eq!(mtu(h1, None, dev.trim()), "mtu 1450");
    assert_eq!(mtu(h1, Some("ov-web-1"), "eth0"), "mtu 1450");
    let bridge_and_veths = h1.ok("ip -o link show | grep -E ': pl[bv]' | grep -c 'mtu 1450'");
    assert_eq!(bridge_and_veths.trim(), "4", "two bridges, two veths at 1450");
    h1.ok(&format!("ip netns exec ov-web-1 ping -c1 -W1 -M do -s 1372 {}", web(2)));
    h1.ok(&format!("ip netns exec ov-web-1 ping -c1 -W1 -M do -s 1422 {}", web(3)));
    assert!(
        !h1.sh(&format!("ip netns exec ov-web-1 ping -c1 -W1 -M do -s 1423 {}", web(2)))
            .status
            .success(),
        "1451 bytes do not fit the overlay's MTU"
    );
    // Two overlays stay apart across hosts, both ways.
    assert_eq!(h1.connect(Some("ov-web-1"), &other(2), 7000), None);
    assert_eq!(h1.connect(Some("ov-other-1"), &web(2), 7000), None);
    assert_eq!(
        h1.connect(Some("ov-other-1"), &other(2), 7000).as_deref(),
        Some("other-2 from 10.60.0.2")
    );
    assert!(!h3.ping("ov-other-3", &web(1)));
    // Egress NAT to the outside from every host, with the host's underlay address.
    cluster.sandbox.serve("outside", 8080, "outside");
    for (i, host) in cluster.hosts().iter().enumerate() {
        let got = host.connect(Some(&format!("ov-web-{}", i + 1)), OUTSIDE_IP, 8080);
        assert_eq!(got, Some(format!("outside from {}", host.underlay)));
        // The internal overlay crosses hosts (above) but does not leave.
        assert_eq!(
            host.connect(Some(&format!("ov-other-{}", i + 1)), OUTSIDE_IP, 8080),
            None
        );
    }
    for host in cluster.hosts() {
        host.plumb_ok(&["down", "ov"]);
        host.assert_clean();
    }
}

/// A UDP listener in namespace `ns` of `host` that appends each datagram to a file; returns
/// the file's path.
fn udp_log(host: &Host, ns: &str, port: u16) -> std::path::PathBuf {
    let log = host.dir.join(format!("udp-{ns}-{port}.log"));
    let code = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',{port}))\n\
         while True:\n d,a=s.recvfrom(100)\n f=open('{}','a'); f.write(d.decode()+' from '+a[0]+'\\n'); f.close()\n",
        log.display()
    );
    let script = host.dir.join(format!("udp-{ns}-{port}.py"));
    std::fs::write(&script, code).unwrap();
    std::fs::write(&log, "").unwrap();
    host.spawn(&format!("ip netns exec {ns} python3 {}", script.display()));
    let bound = || {
        host.sh(&format!("ip netns exec {ns} ss -Hlun sport = :{port} | grep -q {port}"))
            .status
            .success()
    };
    assert!(
        eventually(std::time::Duration::from_secs(10), bound),
        "UDP listener in {ns}"
    );
    log
}

fn send_udp(host: &Host, ns: &str, ip: &str, port: u16, text: &str) {
    host.ok(&format!(
        "ip netns exec {ns} python3 -c \"import socket; socket.socket(socket.AF_INET,socket.SOCK_DGRAM).sendto(b'{text}',('{ip}',{port}))\""
    ));
}

/// VXLAN is accepted only from the peers' underlay addresses: h4 believes it is a peer of
/// h1 (its own assignment lists h1), but h1's does not list h4, so what h4's container sends
/// to h1's never arrives, and h1's drop rule counts it; the same from h2 arrives.
#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn vxlan_from_a_host_that_is_not_a_peer_is_dropped() {
    let Some(cluster) = Cluster::start(4) else { return };
    let (h1, h2, h4) = (cluster.host(0), cluster.host(1), cluster.host(3));
    up(&cluster, 1, &[1, 2, 3], &[]);
    up(&cluster, 2, &[1, 2, 3], &[]);
    up(&cluster, 4, &[1, 2, 3, 4], &[]);
    let log = udp_log(h1, "ov-web-1", 9000);
    send_udp(h2, "ov-web-2", &web(1), 9000, "peer");
    send_udp(h4, "ov-web-4", &web(1), 9000, "stranger");
    let arrived = || std::fs::read_to_string(&log).unwrap();
    assert!(
        eventually(std::time::Duration::from_secs(5), || arrived()
            .contains("peer from 10.50.1.2")),
        "{}",
        arrived()
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!arrived().contains("stranger"), "{}", arrived());
    let input = h1.ok("nft list chain inet plumb_ov input");
    let counted = input
        .lines()
        .find(|l| l.contains("VXLAN only from") && l.contains("counter packets 1 "));
    assert!(counted.is_some(), "the stranger's packet is counted:\n{input}");
    // A fourth host is not reached either (h1 has no route to its block).
    assert!(!h1.ping("ov-web-1", &web(4)));
}

/// Removing a peer from the assignment removes exactly its route, neighbour and FDB entry
/// (and its address from the VXLAN accept set), in a small plan; the device stays.
#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_peer_removed_takes_exactly_its_entries_with_it() {
    let Some(cluster) = Cluster::start(3) else { return };
    let h1 = cluster.host(0);
    for i in [1, 2, 3] {
        up(&cluster, i, &[1, 2, 3], &[]);
    }
    let before = entries(h1);
    assert_eq!(before.lines().count(), 6, "{before}");
    let plan = up(&cluster, 1, &[1, 2], &["--dry-run", "--json"]);
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    let steps = plan["steps"].as_array().unwrap();
    let kinds: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    // Both overlays lose the peer; the accept set loses its address.
    assert_eq!(
        kinds,
        ["update_overlay", "update_overlay", "apply_firewall"],
        "{plan:#}"
    );
    for step in &steps[..2] {
        let ops: Vec<&str> = step["ops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["op"].as_str().unwrap())
            .collect();
        assert_eq!(ops, ["onlink_route_del", "neigh_del", "fdb_del"], "{step:#}");
    }
    up(&cluster, 1, &[1, 2], &[]);
    let after = entries(h1);
    let gone: Vec<&str> = before.lines().filter(|l| !after.contains(l)).collect();
    assert_eq!(after.lines().count(), 3, "{after}");
    assert_eq!(gone.len(), 3, "{gone:?}");
    assert!(gone[0].starts_with("10.50.2.0/24 via 10.50.2.0"), "{gone:?}");
    assert!(gone[1].starts_with("10.50.2.0 lladdr"), "{gone:?}");
    assert!(gone[2].contains("dst 10.99.0.13"), "{gone:?}");
    assert!(!h1.ok("nft list set inet plumb_ov overlay_hosts").contains("10.99.0.13"));
    cluster.host(1).serve("ov-web-2", 7000, "web-2");
    assert_eq!(
        h1.connect(Some("ov-web-1"), &web(2), 7000).as_deref(),
        Some("web-2 from 10.50.0.2")
    );
    assert!(!h1.ping("ov-web-1", &web(3)));
    // Back again: the same entries as before.
    up(&cluster, 1, &[1, 2, 3], &[]);
    let sorted = |text: &str| {
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted(&entries(h1)), sorted(&before));
    assert!(h1.ping("ov-web-1", &web(3)));
}

/// A peer that turns hostile (root on h2: its own rules deleted) sends through its VXLAN
/// device from addresses that are not its block's: h1 takes what comes from h2's block, and
/// drops what claims to come from h1's own block or from outside the network.
#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_peer_cannot_spoof_sources_through_the_overlay() {
    let Some(cluster) = Cluster::start(2) else { return };
    let (h1, h2) = (cluster.host(0), cluster.host(1));
    up(&cluster, 1, &[1, 2], &[]);
    up(&cluster, 2, &[1, 2], &[]);
    // Reverse-path filtering would drop some of these by itself: off, so plumb's rules decide.
    h1.ok("for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done");
    let log = udp_log(h1, "ov-web-1", 9000);
    h2.ok("nft delete table inet plumb_ov; nft delete table bridge plumb_ov 2>/dev/null || true");
    let dev = h2
        .ok("ip -o link show type vxlan | awk -F': ' '/plumb:ov\\/vxlan\\/a/ {print $2}' | sed 's/@.*//'")
        .trim()
        .to_string();
    for (source, text) in [
        ("10.50.0.99", "claims-h1-block"),
        ("10.77.0.5", "outside-the-network"),
        ("10.50.1.99", "from-h2-block"),
    ] {
        h2.ok(&format!("ip addr add {source}/32 dev {dev}"));
        h2.ok(&format!(
            "python3 -c \"import socket; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); \
             s.bind(('{source}',0)); s.sendto(b'{text}',('{}',9000))\"",
            web(1)
        ));
    }
    let arrived = || std::fs::read_to_string(&log).unwrap();
    assert!(
        eventually(std::time::Duration::from_secs(5), || arrived()
            .contains("from-h2-block from 10.50.1.99")),
        "the control datagram did not arrive: {}",
        arrived()
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!arrived().contains("claims-h1-block"), "{}", arrived());
    assert!(!arrived().contains("outside-the-network"), "{}", arrived());
}

/// `vx`: on one overlay, only `api` may send to `db` (UDP 9000); `intruder` may not. h1 runs
/// api-1 and intruder-1, h2 runs db-1.
const POLICY_STACK: &str = r#"
name = "vx"
[networks.a]
subnet = "10.50.0.0/16"
driver = "overlay"
[services.api]
networks = ["a"]
[services.intruder]
networks = ["a"]
[services.db]
networks = ["a"]
[[policies]]
from = "api"
to = "db"
ports = [9000]
protocol = "udp"
"#;

/// `up` of POLICY_STACK on host `i` (1-based) of two, running `replicas`, knowing `remote`
/// (JSON objects of RemoteContainer).
fn up_policy_stack(cluster: &Cluster, i: usize, replicas: &str, remote: &[String]) {
    let host = cluster.host(i - 1);
    let stack = host.dir.join("vx.toml");
    std::fs::write(&stack, POLICY_STACK).unwrap();
    let peer = 3 - i;
    let assignment = format!(
        r#"{{"host": "h{i}", "replicas": {{{replicas}}}, "remote": [{}],
            "overlays": {{"a": {{"block": "10.50.{}.0/24", "local": "10.99.0.{}", "mtu": 1450,
            "peers": [{{"host": "h{peer}", "underlay": "10.99.0.{}", "block": "10.50.{}.0/24"}}]}}}}}}"#,
        remote.join(", "),
        i - 1,
        10 + i,
        10 + peer,
        peer - 1
    );
    let file = host.dir.join(format!("vx-h{i}.json"));
    std::fs::write(&file, assignment).unwrap();
    host.plumb_ok(&["up", "-f", path_str(&stack), "--assignment", path_str(&file)]);
}

fn remote(name: &str, host: &str, address: &str) -> String {
    let (service, replica) = name.rsplit_once('-').unwrap();
    format!(
        r#"{{"name": "{name}", "service": "{service}", "replica": {replica}, "host": "{host}",
            "addresses": {{"a": "{address}"}}, "ready": true}}"#
    )
}

fn address_in(host: &Host, ns: &str) -> String {
    host.ok(&format!(
        "ip -n {ns} -4 -o addr show dev eth0 | awk '{{print $4}}' | cut -d/ -f1"
    ))
    .trim()
    .to_string()
}

/// The overlay device of network `a` of `stack` on `host`: (VNI, MAC).
fn vtep(host: &Host, stack: &str) -> (u32, String) {
    let links: serde_json::Value = serde_json::from_str(&host.ok("ip -d -j link show type vxlan")).unwrap();
    let link = links
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["ifalias"].as_str() == Some(&format!("plumb:{stack}/vxlan/a")))
        .expect("the overlay's VXLAN device");
    let vni = link["linkinfo"]["info_data"]["id"].as_u64().unwrap() as u32;
    (vni, link["address"].as_str().unwrap().to_string())
}

/// A Python script sending one VXLAN datagram to `vtep_ip`:4789 that carries an Ethernet
/// frame to `dst_mac` holding an IPv4/UDP packet `src` -> `dst`:`port` with `text`.
fn forged_vxlan(vni: u32, dst_mac: &str, src: &str, dst: &str, port: u16, text: &str, vtep_ip: &str) -> String {
    format!(
        "import socket,struct\n\
         data=b'{text}'\n\
         udp=struct.pack('!HHHH',40000,{port},8+len(data),0)+data\n\
         h=struct.pack('!BBHHHBBH4s4s',0x45,0,20+len(udp),1,0,64,17,0,socket.inet_aton('{src}'),socket.inet_aton('{dst}'))\n\
         c=sum(struct.unpack('!10H',h)); c=(c>>16)+(c&0xffff); c=~(c+(c>>16))&0xffff\n\
         h=h[:10]+struct.pack('!H',c)+h[12:]\n\
         eth=bytes.fromhex('{}')+bytes.fromhex('02aabbccddee')+b'\\x08\\x00'\n\
         vx=struct.pack('!II',0x08000000,{vni}<<8)\n\
         socket.socket(socket.AF_INET,socket.SOCK_DGRAM).sendto(vx+eth+h+udp,('{vtep_ip}',4789))\n",
        dst_mac.replace(':', "")
    )
}

/// A container cannot inject VXLAN: intruder-1 on h1 sends h2's VTEP a datagram with the
/// right VNI (read from h2's device: knowing it gets it nothing) and a forged inner packet
/// "from api-1" to db-1, which db's policy would take from api. h1 drops it before its
/// egress NAT could give it h1's underlay address, which h2 accepts VXLAN from. The same
/// bytes sent by h1 itself (the host encapsulating, as its VXLAN device does) arrive: the
/// forged packet was well formed, only its sender was wrong.
#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_container_cannot_inject_vxlan_past_policies() {
    let Some(cluster) = Cluster::start(2) else { return };
    let (h1, h2) = (cluster.host(0), cluster.host(1));
    let db = "10.50.1.2";
    up_policy_stack(
        &cluster,
        1,
        r#""api": [1], "intruder": [1]"#,
        &[remote("db-1", "h2", db)],
    );
    let (api, intruder) = (address_in(h1, "vx-api-1"), address_in(h1, "vx-intruder-1"));
    up_policy_stack(
        &cluster,
        2,
        r#""db": [1]"#,
        &[remote("api-1", "h1", &api), remote("intruder-1", "h1", &intruder)],
    );
    assert_eq!(address_in(h2, "vx-db-1"), db);
    let log = udp_log(h2, "vx-db-1", 9000);
    let arrived = || std::fs::read_to_string(&log).unwrap();
    // The policy at work: api's datagram arrives, intruder's does not.
    send_udp(h1, "vx-api-1", db, 9000, "honest");
    send_udp(h1, "vx-intruder-1", db, 9000, "direct");
    assert!(
        eventually(std::time::Duration::from_secs(5), || arrived()
            .contains(&format!("honest from {api}"))),
        "{}",
        arrived()
    );

    let (vni, mac) = vtep(h2, "vx");
    let forged = forged_vxlan(vni, &mac, &api, db, 9000, "forged", "10.99.0.12");
    std::fs::write(h1.dir.join("forged.py"), forged).unwrap();
    let control = forged_vxlan(vni, &mac, &api, db, 9000, "control", "10.99.0.12");
    std::fs::write(h1.dir.join("control.py"), control).unwrap();
    // To h2's VTEP, and to h1's own (the input hook), from the container.
    h1.ok(&format!(
        "ip netns exec vx-intruder-1 python3 {}",
        h1.dir.join("forged.py").display()
    ));
    let own = forged_vxlan(vni, &mac, &api, db, 9000, "forged-own", "10.99.0.11");
    std::fs::write(h1.dir.join("own.py"), own).unwrap();
    h1.ok(&format!(
        "ip netns exec vx-intruder-1 python3 {}",
        h1.dir.join("own.py").display()
    ));
    h1.ok(&format!("python3 {}", h1.dir.join("control.py").display()));
    assert!(
        eventually(std::time::Duration::from_secs(5), || arrived()
            .contains(&format!("control from {api}"))),
        "the host's own encapsulation did not arrive: {}",
        arrived()
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert!(!arrived().contains("direct"), "{}", arrived());
    assert!(
        !arrived().contains("forged"),
        "a container injected VXLAN: {}",
        arrived()
    );
    let forward = h1.ok("nft list chain inet plumb_vx forward");
    assert!(
        forward
            .lines()
            .any(|l| l.contains("containers send no VXLAN") && l.contains("counter packets 1 ")),
        "h1 counts the container's VXLAN datagram:\n{forward}"
    );
    for host in cluster.hosts() {
        host.plumb_ok(&["down", "vx"]);
        host.assert_clean();
    }
}

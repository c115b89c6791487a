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

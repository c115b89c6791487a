//! `plumb chaos`: faults measured with real packets. A delay on a service adds its amount to
//! the round trip with it (once, not twice) and clearing it takes it away; a link fault
//! touches only that link; a partition cuts both ways and only between its two sides; loss
//! loses pings; timed faults end by themselves (relay killed, plumb gone, supervisor
//! stopped); `down` leaves nothing; `--dry-run` changes nothing.

mod common;

use std::time::Duration;

use common::*;

const STACK: &str = r#"
name = "ch"
[networks.n]
subnet = "10.89.70.0/24"
[services.a]
networks = ["n"]
[services.b]
networks = ["n"]
replicas = 2
expose = [80]
[services.c]
networks = ["n"]
"#;

fn up(sb: &Sandbox) {
    sb.write("plumb.toml", STACK);
    sb.plumb_ok(&["up"]);
}

/// The average ping round trip from `ns` to `ip`, in milliseconds (10 pings, 0.1 s apart).
fn rtt_ms(sb: &Sandbox, ns: &str, ip: &str) -> f64 {
    let out = sb.ok(&format!("ip netns exec {ns} ping -c 10 -i 0.1 -W 2 -q {ip}"));
    let line = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .unwrap_or_else(|| panic!("no rtt: {out}"));
    let numbers = line.split('=').nth(1).unwrap().trim();
    numbers.split('/').nth(1).unwrap().parse().unwrap()
}

/// A delay of 100 ms shows as 80..200 ms more round trip (the relay's timer and scheduling
/// add a little; the lower bound catches a delay applied to neither direction, the upper one
/// a delay applied to both).
fn assert_delayed(before: f64, after: f64, what: &str) {
    let added = after - before;
    assert!(
        (80.0..200.0).contains(&added),
        "{what}: {before:.2} ms -> {after:.2} ms (+{added:.1})"
    );
}

fn assert_not_delayed(before: f64, after: f64, what: &str) {
    assert!(after - before < 20.0, "{what}: {before:.2} ms -> {after:.2} ms");
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_delay_on_a_service_adds_to_the_round_trip_once_and_clearing_restores_it() {
    let Some(sb) = Sandbox::start() else { return };
    up(&sb);
    let (b1, b2) = (sb.address("b-1", "eth0"), sb.address("b-2", "eth0"));
    let before = rtt_ms(&sb, "ch-a-1", &b1);
    let said = sb.plumb_ok(&["chaos", "b", "--delay", "100ms"]);
    assert!(said.contains("fault 1: delay 100ms on b (b-1, b-2)"), "{said}");
    assert_delayed(before, rtt_ms(&sb, "ch-a-1", &b1), "a-1 -> b-1");
    assert_delayed(before, rtt_ms(&sb, "ch-c-1", &b2), "c-1 -> b-2");
    let list = sb.plumb_ok(&["chaos", "list"]);
    assert!(list.contains("delay 100ms") && list.contains("until cleared"), "{list}");
    sb.plumb_ok(&["chaos", "clear", "b"]);
    assert_not_delayed(before, rtt_ms(&sb, "ch-a-1", &b1), "after clear");
    assert!(
        !sb.links().iter().any(|l| l.starts_with("plc")),
        "taps left: {:?}",
        sb.links()
    );

    // A link: only what a sends to b (its replicas and its VIP) waits.
    let c = sb.address("c-1", "eth0");
    let to_c = rtt_ms(&sb, "ch-a-1", &c);
    sb.plumb_ok(&["chaos", "a->b", "--delay", "100ms", "--jitter", "5ms"]);
    assert_delayed(before, rtt_ms(&sb, "ch-a-1", &b1), "a-1 -> b-1 under a->b");
    assert_not_delayed(before, rtt_ms(&sb, "ch-c-1", &b1), "c-1 -> b-1 under a->b");
    assert_not_delayed(to_c, rtt_ms(&sb, "ch-a-1", &c), "a-1 -> c-1 under a->b");
    sb.serve("ch-b-1", 80, "b1");
    sb.serve("ch-b-2", 80, "b2");
    let vip = sb.vip("ch", "b");
    let connect = |ns: &str| {
        let t = std::time::Instant::now();
        sb.connect(Some(ns), &vip, 80).expect("connects through the VIP");
        t.elapsed()
    };
    assert!(
        connect("ch-a-1") >= Duration::from_millis(100),
        "a's packets to the VIP wait too"
    );
    // Faults on the same container may not pile up (one redirect per interface).
    let out = sb.plumb(&["chaos", "a", "--loss", "5%"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("plumb chaos clear 2"),
        "{}",
        text(&out.stderr)
    );
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_partition_cuts_both_ways_and_only_between_its_two_sides() {
    let Some(sb) = Sandbox::start() else { return };
    up(&sb);
    let listing =
        |sb: &Sandbox| sb.ok("nft list table inet plumb_ch | sed 's/counter packets [0-9]* bytes [0-9]*/counter/'");
    let first = listing(&sb);
    let (a, b1, c) = (
        sb.address("a-1", "eth0"),
        sb.address("b-1", "eth0"),
        sb.address("c-1", "eth0"),
    );
    sb.serve("ch-b-1", 80, "b1");
    sb.serve("ch-b-2", 80, "b2");
    let vip = sb.vip("ch", "b");
    assert!(sb.connect(Some("ch-a-1"), &vip, 80).is_some());
    sb.plumb_ok(&["chaos", "partition", "a", "b"]);
    assert!(!sb.ping("ch-a-1", &b1), "a -> b still answers");
    assert!(!sb.ping("ch-b-1", &a), "b -> a still answers");
    assert!(sb.connect(Some("ch-a-1"), &vip, 80).is_none(), "a reaches b's VIP");
    assert!(sb.ping("ch-c-1", &b1) && sb.ping("ch-c-1", &a), "c is cut off too");
    assert!(sb.ping("ch-a-1", &c) && sb.ping("ch-b-1", &c));
    assert!(
        sb.connect(Some("ch-c-1"), &vip, 80).is_some(),
        "c no longer reaches b's VIP"
    );
    assert!(sb.nft_tables().contains("table inet plumbchaos1_ch"));
    // The stack's own tables are not touched: `up` has nothing to do.
    let now = listing(&sb);
    let diff: Vec<String> = now
        .lines()
        .zip(first.lines())
        .filter(|(a, b)| a != b)
        .map(|(a, b)| format!("- {b}\n+ {a}"))
        .collect();
    let plan = format!(
        "{}\ntable changes since up:\n{}",
        sb.plumb_ok(&["up", "--dry-run"]),
        diff.join("\n")
    );
    let again = sb.plumb_ok(&["up"]);
    assert!(again.contains("up to date"), "{again}\nthe plan was:\n{plan}");
    sb.plumb_ok(&["chaos", "clear", "1"]);
    assert!(sb.ping("ch-a-1", &b1) && sb.ping("ch-b-1", &a));

    // Loss: half the frames b sends are dropped, so about half the pings get no reply.
    sb.plumb_ok(&["chaos", "b-1", "--loss", "50%"]);
    let out = sb.sh(&format!("ip netns exec ch-a-1 ping -c 60 -i 0.02 -W 1 -q {b1}"));
    let summary = text(&out.stdout);
    let lost: f64 = summary
        .split(',')
        .find(|p| p.contains("packet loss"))
        .and_then(|p| p.trim().split('%').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{summary}"));
    assert!(
        (20.0..=80.0).contains(&lost),
        "50% loss gave {lost}% lost pings: {summary}"
    );
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn timed_faults_end_by_themselves_and_nothing_outlives_the_stack() {
    let Some(sb) = Sandbox::start() else { return };
    up(&sb);
    let (a, b1) = (sb.address("a-1", "eth0"), sb.address("b-1", "eth0"));
    let before = rtt_ms(&sb, "ch-a-1", &b1);

    // A timed delay ends by itself (its relay removes it at its time).
    sb.plumb_ok(&["chaos", "b-1", "--delay", "100ms", "--for", "2s"]);
    assert_delayed(before, rtt_ms(&sb, "ch-a-1", &b1), "timed delay");
    assert!(eventually(Duration::from_secs(6), || sb
        .plumb_ok(&["chaos", "list", "--json"])
        .trim()
        == "[]"));
    assert_not_delayed(before, rtt_ms(&sb, "ch-a-1", &b1), "after its time");
    assert!(!sb.links().iter().any(|l| l.starts_with("plc")));

    // The relay killed with kill -9: the supervisor removes the fault (its frames would go
    // nowhere), and traffic flows straight again.
    sb.plumb_ok(&["chaos", "b-1", "--delay", "100ms", "--for", "1h"]);
    let list: serde_json::Value = serde_json::from_str(&sb.plumb_ok(&["chaos", "list", "--json"])).unwrap();
    let relay = list[0]["relay_pid"].as_u64().expect("a relay");
    sb.ok(&format!("kill -9 {relay}"));
    assert!(eventually(Duration::from_secs(5), || sb.ping("ch-a-1", &b1)));
    assert!(eventually(Duration::from_secs(5), || !sb
        .links()
        .iter()
        .any(|l| l.starts_with("plc"))));

    // With the supervisor stopped (SIGSTOP), the next plumb command ends an expired fault.
    // (Stopped first: a ping that fails takes its whole 1 s timeout, and the supervisor
    // must not get to the fault's end before the check below.)
    let supervisor = sb.ok("cat $PLUMB_STATE_DIR/stacks/ch/status.json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"supervisor_pid\"])'");
    let supervisor = supervisor.trim();
    sb.ok(&format!("kill -STOP {supervisor}"));
    sb.plumb_ok(&["chaos", "partition", "a", "b", "--for", "2s"]);
    assert!(!sb.ping("ch-a-1", &b1));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!sb.ping("ch-a-1", &b1), "nobody ended it yet");
    let listed = sb.plumb(&["chaos", "list"]);
    sb.ok(&format!("kill -CONT {supervisor}"));
    assert!(
        text(&listed.stderr).contains("fault 3 (partition on a<->b) ended"),
        "{}",
        text(&listed.stderr)
    );
    assert!(sb.ping("ch-a-1", &b1) && sb.ping("ch-b-1", &a));
    assert!(!sb.nft_tables().contains("plumbchaos"));

    // down removes faults still active: relays, taps, redirects and tables.
    sb.plumb_ok(&["chaos", "b", "--delay", "50ms", "--loss", "1%"]);
    sb.plumb_ok(&["chaos", "partition", "a", "c"]);
    let script = sb.plumb_ok(&["down", "--dry-run"]);
    assert!(
        script.contains("tc qdisc del dev plv") && script.contains("delete table bridge plumbchaos5_ch"),
        "{script}"
    );
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn dry_run_prints_the_commands_and_bad_requests_name_what_is_wrong() {
    let Some(sb) = Sandbox::start() else { return };
    up(&sb);
    let before = sb.kernel_state();
    let script = sb.plumb_ok(&["chaos", "a->b", "--delay", "100ms", "--dry-run"]);
    for expected in [
        "ip tuntap add dev plc",
        "bridge link set dev plc",
        "tc qdisc add dev plv",
        "protocol ip u32 match ip dst ",
        "action mirred egress redirect dev plc",
        "# plumb chaos-relay ch 1",
    ] {
        assert!(script.contains(expected), "{expected:?} missing from\n{script}");
    }
    let script = sb.plumb_ok(&["chaos", "partition", "a", "n", "--dry-run"]);
    assert!(
        script.contains("nft -f -") && script.contains("ip saddr { 10.89.70.0/24 }"),
        "{script}"
    );
    assert_eq!(sb.kernel_state(), before, "a dry run changed the kernel");
    assert_eq!(sb.plumb_ok(&["chaos", "list", "--json"]).trim(), "[]");

    for (args, says) in [
        (
            vec!["chaos", "nope", "--delay", "1ms"],
            "no container, service or network \"nope\"",
        ),
        (
            vec!["chaos", "a->nope", "--delay", "1ms"],
            "no container or service \"nope\" in stack ch",
        ),
        (vec!["chaos", "a", "--loss", "500%"], "--loss \"500%\" is not a share"),
        (vec!["chaos", "a", "--rate", "fast"], "--rate \"fast\" is not a rate"),
        (vec!["chaos", "a"], "no impairment given"),
        (
            vec!["chaos", "partition", "a", "a"],
            "cannot partition \"a\" from itself",
        ),
        (vec!["chaos", "clear", "9"], "no active fault matches \"9\""),
    ] {
        let out = sb.plumb(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
        assert!(text(&out.stderr).contains(says), "{args:?}: {}", text(&out.stderr));
    }
    assert_eq!(sb.kernel_state(), before, "a refused request changed the kernel");
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

/// Faults are part of the stack's desired state: an `up` that rebuilds the delayed
/// containers (here: b joins a second network) re-makes the redirects on their new veths,
/// so the delay is still measured, and `chaos list` still tells the truth.
#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn an_up_that_rebuilds_a_delayed_container_keeps_the_delay() {
    let Some(sb) = Sandbox::start() else { return };
    up(&sb);
    let before = rtt_ms(&sb, "ch-a-1", &sb.address("b-1", "eth0"));
    sb.plumb_ok(&["chaos", "b", "--delay", "100ms"]);
    let rebuilt = STACK.replace(
        "[services.b]\nnetworks = [\"n\"]",
        "[networks.m]\nsubnet = \"10.89.71.0/24\"\n[services.b]\nnetworks = [\"n\", \"m\"]",
    );
    assert_ne!(rebuilt, STACK);
    sb.write("plumb.toml", &rebuilt);
    let plan = sb.plumb_ok(&["up", "--dry-run"]);
    assert!(
        plan.contains("fault 1 on b"),
        "the plan re-makes the fault's redirects:\n{plan}"
    );
    let said = sb.plumb_ok(&["up"]);
    assert!(said.contains("2 created, 2 removed"), "{said}");
    let b1 = sb.address("b-1", "eth0");
    assert_delayed(before, rtt_ms(&sb, "ch-a-1", &b1), "a-1 -> rebuilt b-1");
    let list = sb.plumb_ok(&["chaos", "list"]);
    assert!(list.contains("delay 100ms"), "{list}");
    sb.plumb_ok(&["chaos", "clear", "1"]);
    assert_not_delayed(before, rtt_ms(&sb, "ch-a-1", &b1), "after clear");
    sb.plumb_ok(&["down"]);
}

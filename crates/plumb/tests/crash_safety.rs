//! An `up` killed at any point (SIGKILL) is completed by the next `up` and fully removed by
//! `down`; concurrent plumb processes serialize on the state directory's lock.

mod common;

use std::time::Duration;

use common::*;

fn stack(name: &str, subnet: &str, replicas: u32) -> String {
    format!("name = \"{name}\"\n[networks.n]\nsubnet = \"{subnet}\"\n[services.c]\nreplicas = {replicas}\nports = [\"8080:80\"]\n")
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn an_up_killed_at_any_point_is_finished_by_up_and_undone_by_down() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("plumb.toml", &stack("crash", "10.91.0.0/22", 150));
    // Kill at several points: before, during and after wiring the containers.
    for (round, delay_ms) in [0u64, 15, 40, 90, 160].into_iter().enumerate() {
        let mut up = sb.spawn_plumb(&["up"]);
        std::thread::sleep(Duration::from_millis(delay_ms));
        up.kill().unwrap();
        up.wait().unwrap();
        if round % 2 == 0 {
            // The next `up` completes the stack...
            sb.plumb_ok(&["up"]);
            assert_eq!(
                sb.plumb_ok(&["up", "--dry-run"]),
                "",
                "after a killed up, the next up must complete the stack"
            );
            assert_eq!(sb.namespaces().len(), 150);
            assert!(sb.ping("crash-c-1", "10.91.0.151"));
            assert!(sb.ping("crash-c-150", OUTSIDE_IP));
            sb.plumb_ok(&["down"]);
        } else {
            // ... or `down` removes whatever it had made.
            sb.plumb_ok(&["down"]);
        }
        sb.assert_clean();
    }
}

/// The kernel and the record as an `up` killed right after creating a bridge leaves them: the
/// record names the network (written before anything is made), the bridge has no alias yet
/// (the kernel takes it only in a later request). Made deterministically: a veth holding the
/// bridge's name makes that `up` fail at the bridge, after recording its intent; then the
/// bridge is made by the very command `up --dry-run` shows for it. Returns the bridge's name.
fn leave_a_bridge_without_its_alias(sb: &Sandbox) -> String {
    let script = sb.plumb_ok(&["up", "--dry-run"]);
    let create = script
        .lines()
        .find(|l| l.starts_with("ip link add plb") && l.contains(" type bridge "))
        .unwrap_or_else(|| panic!("no bridge in the plan:\n{script}"))
        .to_string();
    let bridge = create.split_whitespace().nth(3).unwrap().to_string();
    sb.ok(&format!("ip link add {bridge} type veth peer name squatter"));
    assert!(!sb.plumb(&["up"]).status.success(), "up made its bridge over a veth");
    sb.ok(&format!("ip link del {bridge} && {create}"));
    let shown = sb.ok(&format!("ip -d link show {bridge}"));
    assert!(!shown.contains("alias"), "{shown}");
    bridge
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_bridge_made_just_before_the_kill_is_found_by_down_and_by_up() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("plumb.toml", &stack("early", "10.93.0.0/24", 2));
    let bridge = leave_a_bridge_without_its_alias(&sb);
    sb.plumb_ok(&["down"]);
    assert!(!sb.links().contains(&bridge), "down left {bridge}");
    sb.assert_clean();

    leave_a_bridge_without_its_alias(&sb);
    sb.plumb_ok(&["up"]);
    assert_eq!(sb.plumb_ok(&["up", "--dry-run"]), "");
    assert!(sb.ping("early-c-1", "10.93.0.3"));
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn concurrent_plumb_processes_serialize() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("a/plumb.toml", &stack("a", "10.92.0.0/24", 20).replace("8080", "8081"));
    sb.write("b/plumb.toml", &stack("b", "10.92.1.0/24", 20));
    let runs: Vec<_> = [
        ["up", "-f", "a/plumb.toml"],
        ["up", "-f", "b/plumb.toml"],
        ["up", "-f", "a/plumb.toml"],
        ["up", "-f", "b/plumb.toml"],
    ]
    .iter()
    .map(|args| sb.spawn_plumb(args))
    .collect();
    for run in runs {
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    assert_eq!(sb.plumb_ok(&["up", "-f", "a/plumb.toml", "--dry-run"]), "");
    assert_eq!(sb.plumb_ok(&["up", "-f", "b/plumb.toml", "--dry-run"]), "");
    assert_eq!(sb.namespaces().len(), 40);
    assert!(sb.ping("a-c-20", "10.92.0.2"));
    assert!(sb.ping("b-c-1", "10.92.1.21"));
    let downs: Vec<_> = [["down", "a"], ["down", "b"]]
        .iter()
        .map(|args| sb.spawn_plumb(args))
        .collect();
    for run in downs {
        assert!(run.wait_with_output().unwrap().status.success());
    }
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn an_interrupted_up_says_what_to_do_and_ps_shows_what_is_incomplete() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("plumb.toml", &stack("intr", "10.93.0.0/22", 150));
    // Ctrl-C in the middle: exit 130 and a sentence saying how to finish or undo.
    let up = sb.spawn_plumb(&["up"]);
    std::thread::sleep(Duration::from_millis(60));
    sb.ok(&format!("kill -INT {}", up.id()));
    let out = up.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted") && err.contains("plumb up") && err.contains("plumb down"),
        "{err}"
    );

    // A namespace file that is only an empty mount point (an up stopped between making the
    // file and binding the namespace to it) is shown as incomplete, not as up...
    sb.plumb_ok(&["up"]);
    sb.ok("umount /run/netns/intr-c-7");
    let rows = sb.ps();
    let row = rows.iter().find(|r| r["container"] == "c-7").expect("c-7 in ps");
    assert_eq!(row["complete"], false, "{row}");
    assert!(sb.plumb_ok(&["ps"]).contains("incomplete (run plumb up)"));
    // ... and the next up makes it whole: the container answers again.
    sb.plumb_ok(&["up"]);
    assert!(sb.ps().iter().all(|r| r["complete"] == true));
    assert!(sb.ping("intr-c-7", "10.93.0.2"));
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

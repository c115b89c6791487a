//! `plumb tour`: the course runs end to end in the tour's own sandbox (every check of every
//! step passing, with real pings, connections and DNS queries; blocked ones blocked), starts at
//! a given assignment or step, writes its slide deck, and leaves nothing behind: not when it
//! ends, not on Ctrl-C mid-way, not when killed (a second run then works as the first did).
//! The tour runs inside the test Sandbox too, so even a tour that escaped its own would not
//! reach the machine.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::time::Duration;

use common::*;
use plumb_core::tour::COURSE;
use serde_json::Value;

fn parse_events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

/// The step events' ids, in order, each asserted to have passed.
fn passed_steps(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["event"] == "step")
        .map(|e| {
            assert_eq!(e["passed"], true, "step failed: {e}");
            e["step"].as_str().unwrap().to_string()
        })
        .collect()
}

fn pid_namespace(events: &[Value]) -> u64 {
    let sandbox = events
        .iter()
        .find(|e| e["event"] == "sandbox")
        .expect("a sandbox event");
    sandbox["pid_namespace"].as_u64().unwrap()
}

/// Processes anywhere on the machine in the PID namespace with this inode.
fn processes_in_pid_namespace(inode: u64) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| std::fs::metadata(format!("/proc/{pid}/ns/pid")).is_ok_and(|m| m.ino() == inode))
        .collect()
}

/// The tour's sandbox is gone: no process of its PID namespace is left (so no namespace of it
/// can be held), and the test sandbox holds nothing either.
fn assert_tour_left_nothing(sb: &Sandbox, pid_ns: u64) {
    assert!(
        eventually(Duration::from_secs(5), || processes_in_pid_namespace(pid_ns).is_empty()),
        "processes of the tour's sandbox left: {:?}",
        processes_in_pid_namespace(pid_ns)
    );
    sb.assert_clean();
    assert_eq!(
        sb.ok("ls -A /etc/netns"),
        "",
        "the tour's resolv.conf files leaked out of its sandbox"
    );
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn the_whole_tour_passes_every_check_and_leaves_nothing() {
    let sb = Sandbox::start().unwrap();
    let out = sb.plumb(&["tour", "--json"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "tour failed\nstdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    let events = parse_events(&stdout);
    let all: Vec<String> = COURSE
        .iter()
        .flat_map(|a| a.steps.iter().map(|s| s.id.to_string()))
        .collect();
    assert_eq!(passed_steps(&events), all, "every step, in order, passed");
    let checks: Vec<&Value> = events.iter().filter(|e| e["event"] == "check").collect();
    let expected: usize = COURSE.iter().flat_map(|a| a.steps).map(|s| s.checks.len()).sum();
    assert_eq!(checks.len(), expected);
    assert!(checks.iter().all(|c| c["passed"] == true), "failed checks: {checks:#?}");
    // Forbidden traffic was tried and blocked, not skipped.
    assert!(checks.iter().filter(|c| c["expect"] == "blocked").count() >= 6);
    let summary = events.iter().find(|e| e["event"] == "summary").unwrap();
    assert_eq!(summary["failed"], serde_json::json!([]));
    assert_eq!(summary["passed"].as_u64().unwrap() as usize, expected);
    // The stacks were taken down cleanly before the sandbox went.
    let teardown = events.iter().find(|e| e["event"] == "teardown").unwrap();
    assert_eq!(teardown["stacks_down"], serde_json::json!(["tour"]));
    assert_tour_left_nothing(&sb, pid_namespace(&events));
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn the_tour_starts_at_a_step_after_setting_up_what_came_before() {
    let sb = Sandbox::start().unwrap();
    let out = sb.plumb(&["tour", "4.2", "--json"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "tour 4.2 failed\nstdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    let events = parse_events(&stdout);
    let steps = passed_steps(&events);
    // 4.2's checks need the stack that 2.2 brings up and 4.1's state: set up quietly, not shown.
    assert_eq!(steps.first().map(String::as_str), Some("4.2"), "{steps:?}");
    assert!(!steps
        .iter()
        .any(|s| s.starts_with("1.") || s.starts_with("2.") || s == "4.1"));
    assert!(steps.contains(&"8.3".to_string()), "it runs on to the end: {steps:?}");
    assert_tour_left_nothing(&sb, pid_namespace(&events));

    // An assignment with nothing before it (the VXLAN one) starts straight there.
    let out = sb.plumb(&["tour", "6", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events = parse_events(&text(&out.stdout));
    assert_eq!(passed_steps(&events).first().map(String::as_str), Some("6.1"));
    assert_tour_left_nothing(&sb, pid_namespace(&events));

    let out = sb.plumb(&["tour", "9"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("plumb tour --list"), "{}", text(&out.stderr));
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn ctrl_c_mid_tour_and_a_kill_leave_nothing_and_a_second_run_works() {
    let sb = Sandbox::start().unwrap();
    let mut killed = None;
    for signal in ["INT", "KILL"] {
        let mut tour = sb.spawn_plumb_group(&["tour", "--json"]);
        let pgid = tour.id();
        let mut lines = BufReader::new(tour.stdout.take().unwrap()).lines();
        let mut seen = Vec::new();
        // Wait until the plumb stack is up (its supervisor and services running).
        for line in lines.by_ref() {
            let event: Value = serde_json::from_str(&line.unwrap()).unwrap();
            let done = event["event"] == "step" && event["step"] == "2.2";
            seen.push(event);
            if done {
                break;
            }
        }
        let pid_ns = pid_namespace(&seen);
        assert!(
            processes_in_pid_namespace(pid_ns).len() > 3,
            "the stack's processes run in the tour's sandbox"
        );
        // As a terminal does: the signal goes to the whole foreground group.
        sb.ok(&format!("kill -{signal} -- -{pgid}"));
        let rest: Vec<String> = lines.map_while(|l| l.ok()).collect();
        let status = tour.wait().unwrap();
        assert!(!status.success(), "{signal}: the tour stopped short");
        if signal == "INT" {
            assert_eq!(status.code(), Some(130));
            let rest = parse_events(&rest.join("\n"));
            assert!(rest.iter().any(|e| e["event"] == "interrupted"), "{rest:?}");
            let teardown = rest
                .iter()
                .find(|e| e["event"] == "teardown")
                .expect("teardown on Ctrl-C");
            assert_eq!(teardown["stacks_down"], serde_json::json!(["tour"]));
            assert!(!rest.iter().any(|e| e["event"] == "summary"));
        }
        if signal == "INT" {
            assert_tour_left_nothing(&sb, pid_ns);
        } else {
            // The kernel ends a killed tour's processes with its PID namespace, but its
            // replicas' cgroup folders stay until the next tour removes them (below).
            assert!(
                eventually(Duration::from_secs(5), || processes_in_pid_namespace(pid_ns).is_empty()),
                "processes of the killed tour's sandbox left: {:?}",
                processes_in_pid_namespace(pid_ns)
            );
            killed = Some(pid_ns);
        }
    }
    // A second run after the crash works as the first, and takes what the killed one left.
    let out = sb.plumb(&["tour", "1", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        passed_steps(&parse_events(&text(&out.stdout)))
            .first()
            .map(String::as_str),
        Some("1.1")
    );
    assert_tour_left_nothing(&sb, killed.unwrap());
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn list_and_slides_run_nothing_and_the_html_deck_is_self_contained() {
    let sb = Sandbox::start().unwrap();
    let list = sb.plumb_ok(&["tour", "--list"]);
    for a in COURSE {
        assert!(list.contains(a.title), "{list}");
        for s in a.steps {
            assert!(list.contains(&format!("{:<5} {}", s.id, s.title)), "{list}");
        }
    }
    let before = sb.kernel_state();
    sb.plumb_ok(&["tour", "--slides", "deck"]);
    assert_eq!(sb.kernel_state(), before, "--slides changes nothing in the kernel");
    let md = std::fs::read_to_string(sb.dir.join("deck/tour.md")).unwrap();
    let html = std::fs::read_to_string(sb.dir.join("deck/tour.html")).unwrap();
    let slides: usize = 1 + COURSE.iter().map(|a| 1 + a.steps.len()).sum::<usize>();
    assert_eq!(html.matches("<section").count(), slides);
    assert_eq!(md.matches("\n---\n").count() + 1, slides);
    for a in COURSE {
        for s in a.steps {
            assert!(md.contains(&format!("## {} {}", s.id, s.title)));
            for c in s.commands {
                assert!(md.contains(c), "{c}");
            }
        }
    }
    assert!(html.contains("ip link add veth-red type veth peer name eth0 netns red"));
    assert!(html.contains("br0 10.0.0.1/24"), "the diagrams are in the deck");
    // Self-contained: nothing is fetched from anywhere.
    for external in [
        "src=\"", "src='", "href=\"", "href='", "url(", "@import", "<link", "<iframe",
    ] {
        assert!(!html.contains(external), "the deck loads something: {external}");
    }
    let bad = sb.plumb(&["tour", "--slides", "/proc/version/x"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        text(&bad.stderr).contains("cannot write the slides"),
        "{}",
        text(&bad.stderr)
    );
}

/// Drives `plumb tour 1` on a terminal (a pty): Enter runs a step for the learner; `t` opens a
/// shell where the learner types, and the tour checks the effect (a half-done step is "not
/// yet", with the check that failed); Ctrl-C at a prompt ends the tour, which cleans up.
const TERMINAL_DRIVER: &str = r#"
import os, pty, sys, time, select
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "tour", "1"])
out, pos = b"", 0
def expect(pat, timeout=60):
    global out, pos
    end = time.time() + timeout
    while True:
        i = out.find(pat.encode(), pos)
        if i >= 0:
            pos = i + len(pat)
            return
        if time.time() > end:
            sys.exit("never saw %r; the terminal showed:\n%s" % (pat, out.decode(errors="replace")))
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                out += os.read(fd, 4096)
            except OSError:
                sys.exit("the tour ended early:\n" + out.decode(errors="replace"))
expect("q: quit >")
os.write(fd, b"\n")
expect("✓ the host reaches the outside: passes")
expect("q: quit >")
os.write(fd, b"t\n")
expect("(tour 1.2)")
os.write(fd, b"ip netns add red\nexit\n")
expect("Not yet")
expect("✗ red reaches its own loopback")
expect("q: quit >")
os.write(fd, b"t\n")
expect("(tour 1.2)")
os.write(fd, b"ip -n red link set lo up; ip netns add blue; ip -n blue link set lo up\nexit\n")
expect("✓ red reaches its own loopback: passes")
expect("✓ red cannot reach the outside: blocked, as it should be")
expect("── 1.3")
expect("q: quit >")
os.write(fd, b"\x03")
expect("sandbox is being removed")
_, status = os.waitpid(pid, 0)
print("exit", os.waitstatus_to_exitcode(status))
# Again, and quit at the first prompt: the tour says where it stopped and cleans up.
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], [sys.argv[1], "tour", "6"])
out, pos = b"", 0
expect("q: quit >")
os.write(fd, b"q\n")
expect("You left the tour at step 6.1")
expect("sandbox is being removed")
_, status = os.waitpid(pid, 0)
print("quit", os.waitstatus_to_exitcode(status))
"#;

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn on_a_terminal_the_learner_runs_or_types_each_step_and_the_effect_is_checked() {
    let sb = Sandbox::start().unwrap();
    let driver = sb.write("drive.py", TERMINAL_DRIVER);
    let out = sb.ok(&format!("python3 {} {PLUMB}", path_str(&driver)));
    assert!(out.contains("exit 130\n"), "Ctrl-C: {out}");
    assert!(out.trim_end().ends_with("quit 0"), "q: {out}");
    sb.assert_clean();
}

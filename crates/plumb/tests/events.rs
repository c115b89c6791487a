//! `plumb events`: containers created, processes started, a killed process's exit and restart,
//! and health changes, in order, as JSON lines for programs; unknown stacks are an error.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const STACK: &str = r#"
name = "ev"
[networks.n]
subnet = "10.89.48.0/24"
[services.w]
command = ["/bin/sleep", "3600"]
restart = "always"
health = { exec = ["/bin/true"], interval = "200ms" }
"#;

fn events(sb: &Sandbox) -> Vec<Value> {
    sb.plumb_ok(&["events", "ev", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn kinds(all: &[Value]) -> Vec<String> {
    all.iter()
        .map(|e| format!("{} {}", e["event"].as_str().unwrap(), e["detail"].as_str().unwrap()))
        .collect()
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn events_tell_a_killed_process_exit_and_restart() {
    let sb = Sandbox::start().unwrap();
    sb.write("plumb.toml", STACK);
    sb.plumb_ok(&["up"]);
    assert!(eventually(Duration::from_secs(10), || kinds(&events(&sb))
        .contains(&"health healthy".to_string())));
    let before = events(&sb);
    assert_eq!(before[0]["event"], "created", "{before:#?}");
    assert_eq!(before[0]["container"], "w-1");
    let pid = sb.ps()[0]["process"]["pid"].as_u64().expect("w-1 runs");
    assert_eq!(before[1]["event"], "started");
    assert_eq!(before[1]["detail"], format!("pid {pid}"));

    sb.ok(&format!("kill -9 {pid}"));
    assert!(eventually(Duration::from_secs(10), || {
        let k = kinds(&events(&sb));
        k.iter().filter(|e| e.starts_with("started ")).count() == 2
    }));
    let after = kinds(&events(&sb));
    let from = after.iter().position(|e| e.starts_with("exited ")).unwrap();
    assert!(
        after[from].contains("SIGKILL") || after[from].contains("signal 9"),
        "{after:#?}"
    );
    assert!(after[from + 1].starts_with("restarting in "), "{after:#?}");
    assert!(after[from + 2].starts_with("started pid "), "{after:#?}");
    // Times never go back.
    let times: Vec<u64> = events(&sb).iter().map(|e| e["ts_ms"].as_u64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // For people: a table with a header.
    let table = sb.plumb_ok(&["events"]);
    assert!(
        table.starts_with("TIME") && table.contains(" w-1 ") && table.contains("restarting"),
        "{table}"
    );

    let unknown = sb.plumb(&["events", "nosuch"]);
    assert_eq!(unknown.status.code(), Some(2));
    sb.plumb_ok(&["down"]);
    assert_eq!(
        sb.plumb(&["events", "ev"]).status.code(),
        Some(2),
        "a stack that is down"
    );
    sb.assert_clean();
}

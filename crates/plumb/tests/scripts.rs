//! The script of a plan and the plan's execution are two readings of one list of operations:
//! run under `set -e` on a machine in the planned-from state, the script of an `up`, of an
//! edit and of a `down` leaves the same kernel state (links, addresses, routes, nft ruleset)
//! as plumb executing the plan does.

mod common;

use common::*;

const BASE: &str = r#"
name = "eq"
[networks.front]
subnet = "10.93.1.0/24"
[networks.back]
subnet = "10.93.2.0/24"
internal = true
[services.web]
networks = ["front", "back"]
ports = ["8080:80"]
[services.api]
networks = ["back"]
replicas = 2
[services.lone]
networks = ["front"]
"#;

/// Adds a service, removes one, changes a port and the replicas of another.
fn edited() -> String {
    BASE.replace(
        "[services.lone]\nnetworks = [\"front\"]\n",
        "[services.cache]\nnetworks = [\"back\"]\n",
    )
    .replace("8080:80", "9090:80")
    .replace("replicas = 2", "replicas = 3")
}

/// Brings `before` up (if any), then reaches `after` (a stack file, or `None` for down) once
/// by running plumb's script by hand and once by plumb itself; both kernel states must match.
fn script_and_execution_agree(before: Option<&str>, after: Option<&str>) {
    let by_script = Sandbox::start().unwrap();
    let by_plumb = Sandbox::start().unwrap();
    for sb in [&by_script, &by_plumb] {
        if let Some(text) = before {
            sb.write("plumb.toml", text);
            sb.plumb_ok(&["up"]);
        }
        if let Some(text) = after {
            sb.write("plumb.toml", text);
        }
    }
    let command = if after.is_some() { "up" } else { "down" };
    let script = by_script.plumb_ok(&[command, "--dry-run"]);
    assert!(script.contains("set -e"), "{script}");
    by_script.write("plan.sh", &script);
    by_script.ok("sh plan.sh");
    by_plumb.plumb_ok(&[command]);
    let (want, got) = (by_plumb.kernel_state(), by_script.kernel_state());
    if after.is_some() {
        // The comparison is over real objects, not two empty listings.
        for needle in [
            "netns eq-web-1",
            "addr eth1 10.93.2.",
            "route default via 10.93.1.1",
            "table inet plumb_eq",
            "table bridge plumb_eq",
            " hairpin",
        ] {
            assert!(want.contains(needle), "missing {needle:?} in:\n{want}");
        }
    }
    assert_eq!(
        got, want,
        "the script of `plumb {command}` left another state than executing it:\n{script}"
    );
    if after.is_some() {
        // plumb reads the script's work back and finds nothing left to do.
        assert_eq!(by_script.plumb_ok(&["up", "--dry-run"]), "");
    }
    for sb in [by_script, by_plumb] {
        sb.plumb_ok(&["down"]);
        sb.assert_clean();
    }
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn the_script_of_an_up_builds_what_executing_it_builds() {
    script_and_execution_agree(None, Some(BASE));
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn the_script_of_an_edit_changes_what_executing_it_changes() {
    script_and_execution_agree(Some(BASE), Some(&edited()));
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn the_script_of_a_down_removes_what_executing_it_removes() {
    script_and_execution_agree(Some(BASE), None);
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn dry_run_json_lists_steps_and_their_operations() {
    let sb = Sandbox::start().unwrap();
    sb.write("plumb.toml", BASE);
    let plan: serde_json::Value = serde_json::from_str(&sb.plumb_ok(&["up", "--dry-run", "--json"])).unwrap();
    let steps = plan["steps"].as_array().unwrap();
    let containers: Vec<&serde_json::Value> = steps.iter().filter(|s| s["step"] == "create_container").collect();
    assert_eq!(containers.len(), 4);
    assert_eq!(
        containers[0]["ops"][0],
        serde_json::json!({"op": "netns_add", "name": "eq-api-1"})
    );
    sb.plumb_ok(&["up"]);
    let down: serde_json::Value = serde_json::from_str(&sb.plumb_ok(&["down", "--dry-run", "--json"])).unwrap();
    let kinds: Vec<&str> = down["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[..3], ["stop_processes", "delete_firewall", "remove_links"]);
    // --dry-run changed nothing: the stack still answers.
    assert_eq!(sb.namespaces().len(), 4);
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

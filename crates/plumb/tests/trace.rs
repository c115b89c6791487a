//! `plumb trace`: a probe that gets through shows the way it took and the rules it met; one
//! that is refused names the rule that decided (an internal network's way out); the tracing
//! tables are gone afterwards.

mod common;

use common::*;
use serde_json::Value;

const STACK: &str = r#"
name = "tr"
[networks.front]
subnet = "10.89.44.0/24"
[networks.db]
subnet = "10.89.45.0/24"
internal = true
[services.web]
networks = ["front"]
[services.redis]
networks = ["db"]
expose = [6379]
"#;

fn trace(sb: &Sandbox, from: &str, to: &str) -> (Option<i32>, Value) {
    let out = sb.plumb(&["trace", from, to, "--json"]);
    let report = serde_json::from_str(&text(&out.stdout))
        .unwrap_or_else(|e| panic!("{e}: {}{}", text(&out.stdout), text(&out.stderr)));
    (out.status.code(), report)
}

/// Every rule comment the probe met, in order.
fn comments(report: &Value) -> Vec<String> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["rules"].as_array().unwrap().iter())
        .filter_map(|r| r["comment"].as_str().map(str::to_string))
        .collect()
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn trace_shows_the_way_and_the_rule_that_decided() {
    let sb = Sandbox::start().unwrap();
    sb.write("plumb.toml", STACK);
    sb.plumb_ok(&["up"]);
    sb.serve("outside", 9000, "outside");

    // Allowed: web-1 reaches the outside through its bridge and the egress NAT.
    let (code, report) = trace(&sb, "web-1", &format!("{OUTSIDE_IP}:9000"));
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["outcome"], "connected");
    assert!(report["decided_by"].is_null(), "{report:#}");
    let first = &report["steps"][0];
    assert_eq!(first["at"]["family"], "bridge", "{report:#}");
    assert!(
        first["in"].as_str().unwrap().starts_with("web-1 eth0 on front"),
        "{report:#}"
    );
    assert!(
        comments(&report).contains(&"front: egress NAT".to_string()),
        "{report:#}"
    );
    // The tracing table itself is not part of the report.
    assert!(!report.to_string().contains("plumb_trace_"), "{report:#}");

    // Refused: redis-1 sits on an internal network; the isolation rule decides.
    let (code, report) = trace(&sb, "redis-1", &format!("{OUTSIDE_IP}:9000"));
    assert_eq!(code, Some(1), "{report:#}");
    assert_ne!(report["outcome"], "connected");
    assert_eq!(report["decided_by"]["verdict"], "drop", "{report:#}");
    assert_eq!(
        report["decided_by"]["rule"]["comment"], "db: internal, nothing leaves",
        "{report:#}"
    );
    assert_eq!(report["decided_by"]["at"]["chain"], "forward", "{report:#}");
    // For people: the same, in words.
    let human = text(&sb.plumb(&["trace", "redis-1", &format!("{OUTSIDE_IP}:9000")]).stdout);
    assert!(
        human.contains("decided by rule \"db: internal, nothing leaves\""),
        "{human}"
    );

    // Through a VIP, from a container on none of the service's networks: the service's
    // isolation rule decides (not "no ready replica"), and a reset is a reject, not a drop.
    let (code, report) = trace(&sb, "web-1", "redis:6379");
    assert_eq!(report["outcome"], "refused", "{report:#}");
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["decided_by"]["verdict"], "reject (TCP reset)", "{report:#}");
    assert_eq!(
        report["decided_by"]["rule"]["comment"], "redis: only from containers on its networks",
        "{report:#}"
    );

    // No tracing table is left behind, also when the trace is told to stop half-way (it
    // finishes its few seconds and removes its tables first).
    let stopped = sb.sh(&format!(
        "{PLUMB} trace redis-1 {OUTSIDE_IP}:9000 >/dev/null 2>&1 & t=$!; sleep 0.5; \
         nft list tables | grep -c plumb_trace_; kill -TERM $t; wait $t; echo exit $?"
    ));
    assert_eq!(text(&stopped.stdout).trim(), "2\nexit 143", "{}", text(&stopped.stderr));
    let tables = sb.nft_tables();
    assert!(!tables.contains("plumb_trace_"), "{tables}");

    for bad in [
        vec!["trace", "nosuch", "web:80"],
        vec!["trace", "web-1", "web"],
        vec!["trace", "web-1", "nosuch:80"],
    ] {
        let out = sb.plumb(&bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
        assert!(!text(&out.stderr).is_empty(), "{bad:?} must say why");
    }
    sb.plumb_ok(&["down"]);
    assert_eq!(sb.plumb(&["trace", "web-1", "10.89.44.3:80"]).status.code(), Some(2));
    sb.assert_clean();
}

const POLICED: &str = r#"
name = "tp2"
[networks.front]
subnet = "10.89.47.0/24"
[services.web]
[services.api]

[[policies]]
from = "web"
to = "api"
ports = [80]
"#;

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn trace_names_the_policy_and_its_line() {
    let sb = Sandbox::start().unwrap();
    sb.write("plumb.toml", POLICED);
    sb.plumb_ok(&["up"]);
    sb.serve("tp2-api-1", 80, "api");
    sb.serve("tp2-api-1", 81, "api");
    // Allowed by the policy: connected, and the policy is named with its line.
    let line = POLICED.lines().position(|l| l == "[[policies]]").unwrap() + 1;
    let (code, report) = trace(&sb, "web-1", "api-1:80");
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["policy"]["allowed"], true, "{report:#}");
    let summary = report["policy"]["summary"].as_str().unwrap();
    assert!(summary.contains(&format!("plumb.toml:{line}")), "{report:#}");
    // Port 81 is no policy's: api's default-deny drops it, in the kernel and in words.
    let (code, report) = trace(&sb, "web-1", "api-1:81");
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["policy"]["allowed"], false, "{report:#}");
    assert_eq!(report["decided_by"]["verdict"], "drop", "{report:#}");
    let rule = report["decided_by"]["rule"]["comment"].as_str().unwrap_or_default();
    assert!(rule.contains("api") && rule.contains("default-deny"), "{report:#}");
    assert_eq!(report["decided_by"]["rule"]["chain"], "deny_to_api", "{report:#}");
    let human = text(&sb.plumb(&["trace", "web-1", "api-1:81"]).stdout);
    assert!(human.contains("the stack's policies deny it"), "{human}");
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

//! `plumb experiment run`: the shop's own experiments, for real. Killing a product replica
//! keeps the catalogue answering (the hypothesis holds, exit 0); cutting the products off
//! Redis does not (it fails, exit 1, naming the check); an experiment killed with kill -9
//! mid-fault leaves a fault that still ends on time; nothing is left after `down`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn experiment(sb: &Sandbox, name: &str) -> (Option<i32>, Value) {
    let out = sb.plumb(&["experiment", "run", name, "-f", "shop/plumb.toml", "--json"]);
    let report = serde_json::from_str(&text(&out.stdout))
        .unwrap_or_else(|e| panic!("{e}: {}{}", text(&out.stdout), text(&out.stderr)));
    (out.status.code(), report)
}

fn catalogue_answers(sb: &Sandbox) -> bool {
    sb.sh("ip netns exec shop-web-1 curl -sf -m 3 http://127.0.0.1:80/api/products")
        .status
        .success()
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn the_shop_survives_a_killed_product_but_not_losing_redis() {
    let Some(sb) = Sandbox::start() else { return };
    sb.copy_shop();
    sb.plumb_ok(&["up", "-f", "shop/plumb.toml"]);
    assert!(eventually(Duration::from_secs(30), || {
        let rows = sb.ps();
        rows.len() == 6 && rows.iter().all(|r| r["process"]["health"] == "healthy")
    }));

    // A product replica killed: the gateway fails over, the catalogue keeps answering.
    let restarts = |sb: &Sandbox| -> u64 {
        sb.ps()
            .iter()
            .filter(|r| r["service"] == "product")
            .map(|r| r["process"]["restarts"].as_u64().unwrap_or(0))
            .sum()
    };
    let before = restarts(&sb);
    let (code, report) = experiment(&sb, "product-dies");
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["held"], true, "{report:#}");
    let timeline = report["timeline"].as_array().unwrap();
    let kill = timeline.iter().find(|e| e["kind"] == "fault_start").unwrap();
    assert!(kill["name"] == "kill product" && kill["ok"] == true, "{kill}");
    assert!(
        timeline
            .iter()
            .filter(|e| e["phase"] == "during" && e["kind"] == "check")
            .count()
            >= 4
    );
    assert!(
        eventually(Duration::from_secs(10), || restarts(&sb) > before),
        "the killed replica was not restarted"
    );

    // The products cut off from Redis: the catalogue fails, and the verdict says which check.
    let (code, report) = experiment(&sb, "products-lose-redis");
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(report["held"], false);
    let failed = &report["failed_check"];
    assert_eq!(failed["name"], "catalogue answers", "{report:#}");
    assert_eq!(failed["phase"], "during", "{report:#}");
    // Its fault is gone with it, and the shop answers again.
    assert_eq!(sb.plumb_ok(&["chaos", "list", "--json"]).trim(), "[]");
    assert!(!sb.nft_tables().contains("plumbchaos"));
    assert!(eventually(Duration::from_secs(20), || catalogue_answers(&sb)));

    // Interrupted (Ctrl-C) while its partition is on: the run removes it before it ends.
    let mut run = sb.spawn_plumb(&["experiment", "run", "products-lose-redis", "-f", "shop/plumb.toml"]);
    assert!(eventually(Duration::from_secs(10), || sb
        .nft_tables()
        .contains("plumbchaos")));
    sb.ok(&format!("kill -INT {}", run.id()));
    assert_eq!(run.wait().unwrap().code(), Some(130));
    assert!(
        !sb.nft_tables().contains("plumbchaos"),
        "an interrupted run left its partition"
    );
    assert!(eventually(Duration::from_secs(20), || catalogue_answers(&sb)));

    // Killed (-9) while its partition is on: the fault still ends at its time (the
    // supervisor removes it), and the catalogue answers again.
    let mut run = sb.spawn_plumb(&["experiment", "run", "products-lose-redis", "-f", "shop/plumb.toml"]);
    assert!(eventually(Duration::from_secs(10), || sb
        .nft_tables()
        .contains("plumbchaos")));
    sb.ok(&format!("kill -9 {}", run.id()));
    let _ = run.wait();
    assert!(!catalogue_answers(&sb), "the partition is on");
    assert!(eventually(Duration::from_secs(8), || !sb
        .nft_tables()
        .contains("plumbchaos")));
    assert_eq!(sb.plumb_ok(&["chaos", "list", "--json"]).trim(), "[]");
    assert!(eventually(Duration::from_secs(20), || catalogue_answers(&sb)));

    // An unknown experiment is an input error naming the ones there are.
    let out = sb.plumb(&["experiment", "run", "nope", "-f", "shop/plumb.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("product-dies, products-lose-redis"),
        "{}",
        text(&out.stderr)
    );

    sb.plumb_ok(&["down", "-f", "shop/plumb.toml"]);
    sb.assert_clean();
}

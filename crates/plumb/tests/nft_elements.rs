//! Set-element changes over netlink: an `up` that only changes elements (a policy's sources)
//! runs no `nft -f`, its packets see the change, and it leaves the sets exactly as `nft -f` of
//! its own `--dry-run` rendering does (`nft -j list set`, byte for byte). While no other
//! transaction came since plumb's own, `up` does not list the ruleset; one that did is seen.

mod common;

use common::*;

const STACK: &str = "name = \"el\"\n[networks.n]\nsubnet = \"10.71.0.0/24\"\n\
                     [services.a]\n[services.b]\n[services.c]\n[[policies]]\nto = \"b\"\n\
                     ports = [80, \"7000-7010\"]\n";

/// The policy's sources: containers and CIDRs (ranges in the concatenated interval sets).
fn stack(from: &[&str]) -> String {
    let from: Vec<String> = from.iter().map(|f| format!("\"{f}\"")).collect();
    format!("{STACK}from = [{}]\n", from.join(", "))
}

/// The sets a rendering names, each as `nft -j list set` prints it.
fn listings(sb: &Sandbox, script: &str) -> Vec<(String, String)> {
    let mut sets: Vec<String> = script
        .lines()
        .filter_map(|l| {
            let rest = l
                .strip_prefix("add element ")
                .or_else(|| l.strip_prefix("delete element "))?;
            let words: Vec<&str> = rest.split_whitespace().take(3).collect();
            Some(words.join(" "))
        })
        .collect();
    sets.sort();
    sets.dedup();
    sets.into_iter()
        .map(|s| {
            let listing = sb.ok(&format!("nft -j list set {s}"));
            (s, listing)
        })
        .collect()
}

/// The nft script in `up --dry-run`'s output.
fn nft_script(plan: &str) -> String {
    let start = plan.find("nft -f - <<'EOF'\n").expect("an nft transaction") + "nft -f - <<'EOF'\n".len();
    let end = start + plan[start..].find("\nEOF").expect("its end");
    plan[start..end].to_string() + "\n"
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn policy_element_edits_go_over_netlink_and_leave_what_nft_would() {
    let sb = Sandbox::start().unwrap();
    let before = stack(&["a", "172.16.0.0/30", "172.16.0.8/29"]);
    let before_file = sb.write("before.toml", &before);
    sb.plumb_ok(&["up", "-f", path_str(&before_file)]);
    // c by address, not by name: naming it would isolate it (a new deny chain, not elements).
    let c = format!("{}/32", sb.address("c-1", "eth0"));
    let after_file = sb.write("after.toml", &stack(&["a", &c, "172.16.0.8/29", "172.16.1.0/24"]));
    let b = sb.address("b-1", "eth0");
    sb.serve("el-b-1", 80, "b");
    let reaches = |from: &str| sb.connect(Some(from), &b, 80).is_some_and(|r| r.starts_with("b from"));
    assert!(reaches("el-a-1"));
    assert!(!reaches("el-c-1"), "c is not allowed yet");

    // The change is element edits only: sources added and removed.
    let plan = sb.plumb_ok(&["up", "-f", path_str(&after_file), "--dry-run"]);
    let script = nft_script(&plan);
    assert!(
        script
            .lines()
            .all(|l| l.starts_with("add element ") || l.starts_with("delete element ")),
        "{script}"
    );
    assert!(
        script.contains("delete element inet plumb_el policy_allow { 172.16.0.0/30 . "),
        "{script}"
    );
    assert!(script.contains("172.16.1.0/24 . "), "{script}");

    // Applied with an `nft` on PATH that records how it is called: only listings, no `-f`.
    let bin = sb.dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let real = sb.ok("command -v nft").trim().to_string();
    let log = sb.dir.join("nft.log");
    sb.write(
        "bin/nft",
        &format!("#!/bin/sh\necho \"$*\" >>{}\nexec {real} \"$@\"\n", log.display()),
    );
    sb.ok(&format!(
        "chmod +x {bin}/nft && PATH={bin}:$PATH {PLUMB} up -f {after}",
        bin = bin.display(),
        after = path_str(&after_file)
    ));
    let calls = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !calls.lines().any(|l| l.starts_with("-f")),
        "nft ran a transaction: {calls}"
    );
    assert!(reaches("el-c-1"), "c is allowed now");
    assert!(reaches("el-a-1"));
    let by_netlink = listings(&sb, &script);
    assert_eq!(by_netlink.len(), 3, "{by_netlink:?}");

    // Back (over netlink too), then forward again by `nft -f` of the rendering: the same sets.
    sb.plumb_ok(&["up", "-f", path_str(&before_file)]);
    assert!(!reaches("el-c-1"), "c is refused again");
    assert_ne!(listings(&sb, &script), by_netlink);
    let file = sb.write("edit.nft", &script);
    sb.ok(&format!("nft -f {}", file.display()));
    let by_nft = listings(&sb, &script);
    for ((set, netlink), (_, nft)) in by_netlink.iter().zip(&by_nft) {
        assert_eq!(netlink, nft, "{set} differs");
    }

    let logged_up = || {
        let _ = std::fs::remove_file(&log);
        sb.ok(&format!(
            "PATH={}:$PATH {PLUMB} up -f {}",
            bin.display(),
            path_str(&after_file)
        ));
        std::fs::read_to_string(&log).unwrap_or_default()
    };
    // The hand-applied rendering moved the generation: the next `up` lists and finds the sets
    // as it wants them; after that, nothing committed since: an `up` runs no `nft` at all.
    assert!(logged_up().contains("list ruleset"));
    assert_eq!(logged_up(), "", "an up with nothing to do listed the ruleset");
    // An element added by hand moves the generation: listed, seen, and the table re-asserted.
    sb.ok("nft add element inet plumb_el policy_allow { 192.0.2.1 . 10.71.0.3 . tcp . 22 }");
    assert!(logged_up().contains("list ruleset"));
    let allow = sb.ok("nft list set inet plumb_el policy_allow");
    assert!(!allow.contains("192.0.2.1"), "{allow}");

    sb.plumb_ok(&["down", "-f", path_str(&after_file)]);
    sb.assert_clean();
}

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
    script_and_execution_agree_after(before, after, |_| None);
}

/// The same, with `prepare` run in each sandbox once `before` is up; it may make a link
/// that is not the stack's, which must survive (and is then deleted).
fn script_and_execution_agree_after(
    before: Option<&str>,
    after: Option<&str>,
    prepare: impl Fn(&Sandbox) -> Option<String>,
) {
    let by_script = Sandbox::start().unwrap();
    let by_plumb = Sandbox::start().unwrap();
    let mut survivor = None;
    for sb in [&by_script, &by_plumb] {
        if let Some(text) = before {
            sb.write("plumb.toml", text);
            sb.plumb_ok(&["up"]);
        }
        survivor = prepare(sb);
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
    if let Some(link) = &survivor {
        assert!(want.contains(&format!("  {link} ")), "{link} was deleted:\n{want}");
        for sb in [&by_script, &by_plumb] {
            sb.ok(&format!("ip link del {link}"));
        }
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
fn the_script_of_a_down_spares_a_foreign_link_in_the_stacks_link_group() {
    // Someone else's link (a bridge) in the interface group the down deletes in one request: executing
    // the plan deletes only the stack's links; so must the script.
    script_and_execution_agree_after(Some(BASE), None, |sb| {
        let script = sb.plumb_ok(&["down", "--dry-run"]);
        let group = script
            .split("group ")
            .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u32>().ok())
            .next()
            .unwrap_or_else(|| panic!("no link group in:\n{script}"));
        sb.ok(&format!(
            "ip link add foreign0 type bridge && ip link set foreign0 group {group}"
        ));
        Some("foreign0".to_string())
    });
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

const CHAOS: &str = r#"
name = "eqc"
[networks.n]
subnet = "10.93.7.0/24"
[services.a]
networks = ["n"]
[services.b]
networks = ["n"]
replicas = 2
"#;

/// What a chaos fault makes on the host, normalized for comparison: each link's qdiscs and
/// ingress filters (`tc -j`), and each chaos tap's bridge port flags, link flags, tun
/// settings (persist, pi...) and master. Left out: indexes, MACs, timers, and what follows
/// from the relay holding a tap open or not (carrier, operstate, port state).
fn chaos_state(sb: &Sandbox) -> String {
    sb.ok(r#"
        set -e
        for dev in $(ip -j link show | python3 -c 'import json, sys; print(" ".join(sorted(l["ifname"] for l in json.load(sys.stdin))))'); do
            echo "qdisc $dev $(tc -j qdisc show dev $dev)"
            echo "filter $dev $(tc -j filter show dev $dev ingress)"
        done
        bridge -j -d link show | python3 -c '
import json, sys
for l in sorted(json.load(sys.stdin), key=lambda l: l["ifname"]):
    for k in ("ifindex", "state"): l.pop(k, None)
    l["flags"] = [f for f in l["flags"] if f not in ("LOWER_UP", "NO-CARRIER")]
    print("port", json.dumps(l, sort_keys=True))'
        ip -j -d link show | python3 -c '
import json, sys
for l in sorted(json.load(sys.stdin), key=lambda l: l["ifname"]):
    if (l.get("linkinfo") or {}).get("info_kind") != "tun": continue
    for k in ("ifindex", "address", "operstate", "linkmode", "qdisc"): l.pop(k, None)
    l["flags"] = [f for f in l["flags"] if f not in ("LOWER_UP", "NO-CARRIER")]
    port = l["linkinfo"].get("info_slave_data") or {}
    for k in [k for k in port if k.endswith("_timer") or k == "state"]: port.pop(k)
    print("tap", json.dumps(l, sort_keys=True))'
    "#)
}

/// A chaos fault's taps, bridge-port flags and tc redirects: the commands `plumb chaos
/// --dry-run` prints, run by hand, leave the same kernel state as plumb making the fault
/// (over netlink and ioctls); and the commands it prints for removing it, the same state as
/// `plumb chaos clear`.
fn chaos_script_and_execution_agree(fault: &[&str], expected: &[&str]) {
    let by_script = Sandbox::start().unwrap();
    let by_plumb = Sandbox::start().unwrap();
    for sb in [&by_script, &by_plumb] {
        sb.write("plumb.toml", CHAOS);
        sb.plumb_ok(&["up"]);
    }
    let before = chaos_state(&by_plumb);
    let script = by_script.plumb_ok(&[fault, &["--dry-run"]].concat());
    by_script.write("chaos.sh", &script);
    by_script.ok("sh chaos.sh");
    by_plumb.plumb_ok(fault);
    let (want, got) = (chaos_state(&by_plumb), chaos_state(&by_script));
    // The comparison is over real objects: a persistent tap, quiet on its bridge, and a
    // redirect to it.
    for needle in [
        "\"kind\":\"clsact\"",
        "\"mirred_action\":\"redirect\",\"direction\":\"egress\",\"to_dev\":\"plc",
        "\"persist\": true",
        "\"pi\": false",
        "\"learning\": false",
        "\"master\": \"plb",
        "\"bcast_flood\": false",
        "\"mcast_flood\": false",
        "\"flood\": false",
        "\"ifalias\": \"plumb:eqc/chaos-1/",
    ]
    .iter()
    .chain(expected)
    {
        assert!(want.contains(needle), "missing {needle:?} in:\n{want}");
    }
    assert_eq!(
        got, want,
        "the script of `plumb {fault:?}` left another state than executing it:\n{script}"
    );

    // The removal the script prints (commented out: it runs at `chaos clear`), run by hand.
    let undo: String = script
        .split("# Removed by")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| l.strip_prefix("# "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(undo.contains("tc qdisc del dev plv"), "{script}");
    by_script.write("undo.sh", &undo);
    by_script.ok("sh undo.sh");
    by_plumb.plumb_ok(&["chaos", "clear", "1"]);
    let (want, got) = (chaos_state(&by_plumb), chaos_state(&by_script));
    assert_eq!(
        got, want,
        "the removal in the script left another state than `plumb chaos clear`:\n{undo}"
    );
    assert_eq!(want, before, "clearing the fault left something of it");
    for sb in [by_script, by_plumb] {
        sb.plumb_ok(&["down"]);
        sb.assert_clean();
    }
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn the_script_of_a_chaos_fault_on_some_destinations_makes_what_executing_it_makes() {
    chaos_script_and_execution_agree(
        &["chaos", "a->b", "--delay", "50ms"],
        &[
            "\"protocol\":\"ip\"",
            "\"match\":{\"value\":\"a5d0703\",\"mask\":\"ffffffff\",\"offmask\":\"\",\"off\":16}",
        ],
    );
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn the_script_of_a_chaos_fault_on_all_traffic_makes_what_executing_it_makes() {
    chaos_script_and_execution_agree(
        &["chaos", "a", "--delay", "50ms"],
        &[
            "\"protocol\":\"all\"",
            "\"match\":{\"value\":\"0\",\"mask\":\"0\",\"offmask\":\"\",\"off\":0}",
        ],
    );
}

const OVERLAY: &str = "name = \"ov\"\n[networks.o]\nsubnet = \"10.98.0.0/16\"\ndriver = \"overlay\"\n[services.web]\nnetworks = [\"o\"]\n";

/// Host h1's part of the overlay stack, with one peer (`peer` is its last address byte).
fn overlay_assignment(peer: u8) -> String {
    format!(
        r#"{{"host": "h1", "replicas": {{"web": [1]}}, "overlays": {{"o": {{"block": "10.98.1.0/24", "local": "10.99.0.11", "mtu": 1450, "peers": [{{"host": "h{peer}", "underlay": "10.99.0.{}", "block": "10.98.{peer}.0/24"}}]}}}}}}"#,
        10 + u32::from(peer)
    )
}

/// The kernel state plus what an overlay adds: the VXLAN device's settings, its FDB and
/// neighbour entries.
fn overlay_state(sb: &Sandbox) -> String {
    let vxlans = sb.ok("ip -o link show type vxlan | awk -F': ' '{print $2}' | sed 's/@.*//'");
    let mut state = sb.kernel_state();
    for dev in vxlans.split_whitespace() {
        state += &sb.ok(&format!(
            "ip -d -j link show dev {dev} | python3 -c 'import json,sys; d=json.load(sys.stdin)[0]; i=d[\"linkinfo\"][\"info_data\"]; print(\"vxlan\", d[\"ifname\"], d[\"mtu\"], d.get(\"address\"), i.get(\"id\"), i.get(\"local\"), i.get(\"port\"), i.get(\"learning\"))'
             bridge fdb show dev {dev} | grep -v permanent | sort; bridge fdb show dev {dev} | grep dst | sort
             ip neigh show dev {dev} | sort"
        ));
    }
    state
}

/// The script of an overlay `up` (with a host assignment), of a change of its peers and of
/// its `down` leave what executing them leaves: links, addresses, routes, tables, and the
/// VXLAN device's settings, FDB and neighbour entries.
#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn the_script_of_an_overlay_up_edit_and_down_does_what_executing_them_does() {
    let by_script = Sandbox::start().unwrap();
    let by_plumb = Sandbox::start().unwrap();
    let stack = by_script.write("stack.toml", OVERLAY);
    by_plumb.write("stack.toml", OVERLAY);
    for sb in [&by_script, &by_plumb] {
        // The underlay: an address of this host's, as the agent would find it.
        sb.ok("ip link add und0 type bridge && ip addr add 10.99.0.11/24 dev und0 && ip link set und0 up");
    }
    for (phase, peer) in [("up", Some(2)), ("edit", Some(3)), ("down", None)] {
        let args: Vec<String> = match peer {
            Some(p) => {
                for sb in [&by_script, &by_plumb] {
                    sb.write("a.json", &overlay_assignment(p));
                }
                let file = by_script.dir.join("a.json");
                ["up", "-f", path_str(&stack), "--assignment", path_str(&file)]
                    .map(str::to_string)
                    .to_vec()
            }
            None => vec!["down".to_string(), "ov".to_string()],
        };
        let mut dry = args.clone();
        dry.push("--dry-run".into());
        let dry: Vec<&str> = dry.iter().map(String::as_str).collect();
        let script = by_script.plumb_ok(&dry);
        by_script.write("plan.sh", &script);
        by_script.ok("sh plan.sh");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        by_plumb.plumb_ok(&args);
        let (want, got) = (overlay_state(&by_plumb), overlay_state(&by_script));
        if peer.is_some() {
            for needle in ["vxlan plx", "dst 10.99.0.1", "10.98.", "netns ov-web-1"] {
                assert!(want.contains(needle), "{phase}: missing {needle:?} in:\n{want}");
            }
        }
        assert_eq!(
            got, want,
            "{phase}: the script left another state than executing it:\n{script}"
        );
    }
    for sb in [by_script, by_plumb] {
        sb.ok("ip link del und0");
        sb.assert_clean();
    }
}

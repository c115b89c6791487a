//! The core engine with real packets: namespaces, bridges, veths, addresses, routes, egress
//! NAT, published ports, isolation; idempotence, diffs, the dry-run script, and clean removal.

mod common;

use common::*;

const STACK: &str = r#"
name = "demo"

[networks.front]
subnet = "10.89.1.0/24"

[networks.back]
subnet = "10.89.2.0/24"
internal = true

[services.web]
networks = ["front", "back"]
ports = ["8080:80"]

[services.api]
networks = ["back"]
replicas = 2

[services.lone]
networks = ["front"]

[services.fixed.networks.front]
ip = "10.89.1.200"
"#;

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn containers_talk_within_networks_not_across_and_reach_out_through_nat() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("plumb.toml", STACK);
    sb.plumb_ok(&["up"]);

    // Inside a container: eth0, eth1 in network order, lo up, default route via the first gateway.
    let inside = sb.ok("ip netns exec demo-web-1 ip -o addr show; ip netns exec demo-web-1 ip route show default");
    assert!(
        inside.contains("eth0    inet 10.89.1.") || inside.contains("eth0 inet 10.89.1."),
        "{inside}"
    );
    assert!(inside.contains("eth1") && inside.contains("inet 10.89.2."), "{inside}");
    assert!(inside.contains("default via 10.89.1.1 dev eth0"), "{inside}");
    assert!(sb.ok("ip netns exec demo-lone-1 ip -o link show lo").contains("UP"));
    assert_eq!(sb.address("fixed-1", "eth0"), "10.89.1.200");

    let web_front = sb.address("web-1", "eth0");
    let api1 = sb.address("api-1", "eth0");
    let api2 = sb.address("api-2", "eth0");
    sb.serve("demo-web-1", 80, "web");
    sb.serve("demo-api-1", 5000, "api1");
    sb.serve("outside", 9000, "internet");

    // Same network: TCP works.
    assert!(sb
        .connect(Some("demo-lone-1"), &web_front, 80)
        .unwrap()
        .starts_with("web from 10.89.1."));
    assert!(sb.ping("demo-api-2", &api1));
    // A container on both networks reaches both.
    assert!(sb.connect(Some("demo-web-1"), &api1, 5000).is_some());
    // Across networks: nothing, neither TCP nor ping.
    assert_eq!(
        sb.connect(Some("demo-lone-1"), &api1, 5000),
        None,
        "front must not reach back"
    );
    assert!(
        sb.ping("demo-api-1", &sb.address("web-1", "eth1")),
        "back reaches web on back"
    );
    assert!(
        !sb.ping("demo-api-1", &web_front),
        "back must not reach into front, even web's address there"
    );
    assert!(!sb.ping("demo-lone-1", &api2), "front must not reach back");
    // Egress through masquerade: the outside sees the host's address, not the container's.
    assert_eq!(
        sb.connect(Some("demo-lone-1"), OUTSIDE_IP, 9000).as_deref(),
        Some("internet from 203.0.113.1")
    );
    // An internal network has no way out.
    assert_eq!(
        sb.connect(Some("demo-api-1"), OUTSIDE_IP, 9000),
        None,
        "internal network must not reach outside"
    );

    // Published port: from outside, from the host's own address, and from localhost.
    assert!(sb
        .connect(Some("outside"), HOST_IP, 8080)
        .unwrap()
        .starts_with("web from 203.0.113.2"));
    assert!(sb.connect(None, HOST_IP, 8080).unwrap().starts_with("web from"));
    assert!(sb
        .connect(None, "127.0.0.1", 8080)
        .unwrap()
        .starts_with("web from 10.89.1.1"));
    // Only the published port: another port of the web container is not reachable from outside.
    assert_eq!(sb.connect(Some("outside"), HOST_IP, 5000), None);

    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn up_is_idempotent_and_an_edit_applies_only_the_difference() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("plumb.toml", STACK);
    sb.plumb_ok(&["up"]);
    assert_eq!(sb.plumb_ok(&["up", "--dry-run"]), "", "a second up must change nothing");
    assert!(sb.plumb_ok(&["up"]).contains("up to date"));
    let inode = |ns: &str| sb.ok(&format!("stat -L -c %i /run/netns/{ns}"));
    let web = inode("demo-web-1");

    // Add a service: only it is created.
    sb.write(
        "plumb.toml",
        &format!("{STACK}\n[services.extra]\nnetworks = [\"front\"]\n"),
    );
    let plan = sb.plumb_ok(&["up", "--dry-run"]);
    assert!(plan.contains("ip netns add demo-extra-1"), "{plan}");
    assert!(
        !plan.contains("ip netns del"),
        "nothing is removed when a service is added:\n{plan}"
    );
    assert_eq!(plan.matches("ip netns add").count(), 1, "{plan}");
    sb.plumb_ok(&["up"]);
    assert!(sb.ping("demo-extra-1", &sb.address("lone-1", "eth0")));

    // Publish another port: only the nft table changes.
    sb.write(
        "plumb.toml",
        &format!(
            "{}\n[services.extra]\nnetworks = [\"front\"]\n",
            STACK.replace("\"8080:80\"", "\"8081:80\"")
        ),
    );
    let plan = sb.plumb_ok(&["up", "--dry-run"]);
    assert!(plan.contains("tcp . 8081") && !plan.contains("ip netns"), "{plan}");
    sb.plumb_ok(&["up"]);
    sb.serve("demo-web-1", 80, "web");
    assert!(sb.connect(Some("outside"), HOST_IP, 8081).is_some());
    assert_eq!(sb.connect(Some("outside"), HOST_IP, 8080), None, "the old port is gone");

    // Remove a service: only it goes; the others keep their namespaces and addresses.
    sb.write(
        "plumb.toml",
        &STACK
            .replace("[services.lone]\nnetworks = [\"front\"]\n", "")
            .replace("\"8080:80\"", "\"8081:80\""),
    );
    let plan = sb.plumb_ok(&["up", "--dry-run"]);
    assert!(
        plan.contains("ip netns del demo-extra-1") && plan.contains("ip netns del demo-lone-1"),
        "{plan}"
    );
    assert!(!plan.contains("ip netns add"), "{plan}");
    sb.plumb_ok(&["up"]);
    assert_eq!(inode("demo-web-1"), web, "web-1 must not be recreated");
    assert!(!sb.namespaces().contains(&"demo-lone-1".to_string()));

    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

/// Link MTUs are read back: one lowered by hand on the bridge, the host ends and a container's
/// end is noticed by `up` (not "up to date") and set back in place, and full-size packets
/// pass again.
#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_link_mtu_changed_behind_plumbs_back_is_set_back_by_up() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("plumb.toml", STACK);
    sb.plumb_ok(&["up"]);
    let lone = sb.address("lone-1", "eth0");
    let full_size = format!("ip netns exec demo-web-1 ping -c1 -W1 -M do -s 1472 {lone}");
    assert!(sb.sh(&full_size).status.success(), "full-size packets pass at first");
    let inode = || sb.ok("stat -L -c %i /run/netns/demo-web-1");
    let web = inode();
    sb.ok("for l in $(ip -o link show | sed -n 's/^[0-9]*: \\(pl[bv][^:@]*\\).*/\\1/p'); do ip link set $l mtu 1280; done; \
           ip -n demo-lone-1 link set eth0 mtu 1280");
    assert!(
        !sb.sh(&full_size).status.success(),
        "the lowered MTU drops full-size packets"
    );
    let script = sb.plumb_ok(&["up", "--dry-run"]);
    assert!(script.contains("ip -n demo-lone-1 link set eth0 mtu 1500"), "{script}");
    let out = sb.plumb_ok(&["up"]);
    assert!(!out.contains("up to date"), "{out}");
    assert!(sb.sh(&full_size).status.success(), "full-size packets pass again");
    assert_eq!(inode(), web, "set in place: web-1 is not recreated");
    assert!(sb.plumb_ok(&["up"]).contains("up to date"));
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn the_dry_run_script_replayed_by_hand_builds_the_same_network() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("plumb.toml", STACK);
    let script = sb.plumb_ok(&["up", "--dry-run"]);
    assert!(script.starts_with("#!/bin/sh"));
    sb.write("replay.sh", &script);
    sb.ok("sh replay.sh");
    // plumb reads the kernel back and finds nothing to do: the script made exactly its state.
    assert_eq!(
        sb.plumb_ok(&["up", "--dry-run"]),
        "",
        "the replayed script must produce plumb's state"
    );
    sb.serve("demo-web-1", 80, "web");
    assert!(sb.connect(Some("outside"), HOST_IP, 8080).is_some());
    sb.serve("outside", 9000, "internet");
    assert_eq!(
        sb.connect(Some("demo-lone-1"), OUTSIDE_IP, 9000).as_deref(),
        Some("internet from 203.0.113.1")
    );
    assert_eq!(
        // api-1 is 10.89.2.2, the first address handed out on back.
        sb.connect(Some("demo-lone-1"), "10.89.2.2", 9000),
        None,
        "isolation holds"
    );
    // down finds the hand-made objects by their names and aliases, with no state file.
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn ps_inspect_and_exec_show_and_enter_containers() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("plumb.toml", STACK);
    sb.plumb_ok(&["up"]);

    let ps = sb.plumb_ok(&["ps"]);
    assert!(
        ps.contains("CONTAINER") && ps.contains("web-1") && ps.contains("8080->80/tcp"),
        "{ps}"
    );
    let rows: serde_json::Value = serde_json::from_str(&sb.plumb_ok(&["ps", "--json"])).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 5);
    assert!(rows.as_array().unwrap().iter().all(|r| r["present"] == true));

    let net: serde_json::Value = serde_json::from_str(&sb.plumb_ok(&["inspect", "back", "--json"])).unwrap();
    assert_eq!(net["kind"], "network");
    assert_eq!(net["subnet"], "10.89.2.0/24");
    assert_eq!(net["internal"], true);
    assert_eq!(net["containers"].as_array().unwrap().len(), 3);
    let web: serde_json::Value = serde_json::from_str(&sb.plumb_ok(&["inspect", "web-1", "--json"])).unwrap();
    assert_eq!(web["kernel"]["default_route"], "10.89.1.1");
    assert!(sb.plumb_ok(&["inspect", "web"]).contains("namespace: demo-web-1"));

    // exec runs inside the namespace and passes the exit code through.
    let out = sb.plumb_ok(&["exec", "web-1", "--", "ip", "-o", "addr", "show", "eth1"]);
    assert!(out.contains("10.89.2."), "{out}");
    assert_eq!(
        sb.plumb(&["exec", "api", "--", "sh", "-c", "exit 7"]).status.code(),
        Some(7)
    );
    assert_eq!(sb.plumb(&["exec", "nope-1", "--", "true"]).status.code(), Some(2));

    sb.plumb_ok(&["down", "demo"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn down_works_without_the_state_file_and_rules_removed_by_others_are_restored() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("plumb.toml", STACK);
    sb.plumb_ok(&["up"]);
    // Someone deletes plumb's table: the next up notices and puts it back.
    sb.ok("nft delete table inet plumb_demo");
    assert!(sb.plumb_ok(&["up", "--dry-run"]).contains("nft -f -"));
    sb.plumb_ok(&["up"]);
    assert!(sb.nft_tables().contains("plumb_demo"));
    sb.serve("demo-web-1", 80, "web");
    assert!(sb.connect(Some("outside"), HOST_IP, 8080).is_some());
    // A process started in a container does not stop `down` from removing everything.
    sb.serve("demo-lone-1", 7000, "stray");

    std::fs::remove_dir_all(&sb.state_dir).unwrap();
    sb.plumb_ok(&["down", "demo"]);
    sb.assert_clean();
    // Named again, or named wrong: nothing of it is up, an input error that says so.
    for name in ["demo", "nosuch"] {
        let again = sb.plumb(&["down", name]);
        assert_eq!(again.status.code(), Some(2), "down {name}");
        assert!(
            text(&again.stderr).contains("nothing to remove"),
            "{}",
            text(&again.stderr)
        );
    }
    // From the folder's file, a second `down` is a quiet success (as `compose down`).
    assert!(sb.plumb_ok(&["down"]).contains("nothing to remove"));
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn stacks_side_by_side_stay_apart_and_down_removes_only_its_own() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write(
        "a/plumb.toml",
        "name = \"a\"\n[networks.n]\nsubnet = \"10.90.1.0/24\"\n[services.s]\nreplicas = 2\n",
    );
    sb.write(
        "b/plumb.toml",
        "name = \"b\"\n[networks.n]\nsubnet = \"10.90.2.0/24\"\n[services.s]\n",
    );
    sb.plumb_ok(&["up", "-f", "a/plumb.toml"]);
    sb.plumb_ok(&["up", "-f", "b/plumb.toml"]);
    sb.serve("b-s-1", 80, "b");
    assert!(
        sb.connect(Some("a-s-1"), "10.90.2.2", 80).is_none(),
        "stacks are isolated from each other"
    );
    assert!(sb.ping("a-s-1", "10.90.1.3"));
    // A third stack may not take b's addresses.
    sb.write(
        "c/plumb.toml",
        "name = \"c\"\n[networks.n]\nsubnet = \"10.90.2.0/25\"\n",
    );
    let out = sb.plumb(&["up", "-f", "c/plumb.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("overlaps network \"n\" (10.90.2.0/24) of stack \"b\""),
        "{}",
        text(&out.stderr)
    );

    sb.plumb_ok(&["down", "-f", "a/plumb.toml"]);
    assert_eq!(sb.namespaces(), vec!["b-s-1".to_string()]);
    assert!(sb.nft_tables().contains("plumb_b") && !sb.nft_tables().contains("plumb_a"));
    // b keeps working: its container still answers and still reaches the outside.
    assert!(sb.ping("b-s-1", OUTSIDE_IP));
    assert!(
        sb.connect(None, "10.90.2.2", 80).is_some(),
        "the host still reaches b's container"
    );
    sb.plumb_ok(&["down", "b"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn forwarding_turned_on_by_plumb_is_turned_off_by_the_last_down() {
    let Some(sb) = Sandbox::start() else { return };
    sb.ok("sysctl -qw net.ipv4.ip_forward=0");
    sb.write(
        "a.toml",
        "name = \"a\"\n[networks.n]\nsubnet = \"10.90.3.0/24\"\n[services.s]\n",
    );
    sb.write(
        "b.toml",
        "name = \"b\"\n[networks.n]\nsubnet = \"10.90.4.0/24\"\n[services.s]\n",
    );
    sb.plumb_ok(&["up", "-f", "a.toml"]);
    sb.plumb_ok(&["up", "-f", "b.toml"]);
    let forwarding = || sb.ok("sysctl -n net.ipv4.ip_forward").trim().to_string();
    assert_eq!(forwarding(), "1");
    assert!(sb.ping("a-s-1", OUTSIDE_IP));
    let off = "sysctl -qw net.ipv4.ip_forward=0";
    let script = sb.plumb_ok(&["down", "a", "--dry-run"]);
    assert!(!script.contains(off), "stack b still needs forwarding:\n{script}");
    sb.plumb_ok(&["down", "a"]);
    assert_eq!(forwarding(), "1", "stack b still needs it");
    // The last down's plan says it turns forwarding off, and --dry-run changes nothing.
    let script = sb.plumb_ok(&["down", "b", "--dry-run"]);
    assert!(
        script.contains(off),
        "the last down's script leaves forwarding on:\n{script}"
    );
    assert_eq!(forwarding(), "1");
    sb.plumb_ok(&["down", "b"]);
    assert_eq!(forwarding(), "0", "the machine is left as plumb found it");
    sb.assert_clean();
}

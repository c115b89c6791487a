//! `plumb attach` / `plumb detach` (what a CNI ADD and DEL call): a namespace made by someone
//! else (here `ip netns add`, as a runtime would) joins a stack's network with real packets
//! both ways, gets a DNS name and the service's VIP; an `up` keeps it; detaching or `down`
//! unwires it and never ends its processes or deletes its namespace.

mod common;

use common::*;

const STACK: &str = r#"
name = "at"
[networks.n]
subnet = "10.89.90.0/24"
[networks.m]
subnet = "10.89.91.0/24"
[services.a]
networks = ["n"]
[services.b]
networks = ["m"]
"#;

/// What `name` resolves to from `ns` (through the namespace's resolv.conf), or "".
fn resolve(sb: &Sandbox, ns: &str, name: &str) -> String {
    sb.ok(&format!(
        "ip netns exec {ns} python3 -c \"import socket\ntry: print(socket.gethostbyname('{name}'))\nexcept OSError: print('')\""
    ))
    .trim()
    .to_string()
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_namespace_made_elsewhere_joins_a_network_and_leaves_it_intact() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("plumb.toml", STACK);
    sb.plumb_ok(&["up"]);
    // The "runtime": its own namespace, a process inside.
    sb.ok("ip netns add runtime-x");
    let pid = sb.ok("ip netns exec runtime-x sleep 600 >/dev/null 2>&1 & echo $!");
    let pid = pid.trim();

    let out = sb.plumb_ok(&[
        "attach",
        "at/ext",
        "--network",
        "n",
        "--netns",
        "/run/netns/runtime-x",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let cidr = v["address"].as_str().unwrap().to_string();
    let ip = cidr.split('/').next().unwrap().to_string();
    assert!(ip.starts_with("10.89.90."), "{v}");
    assert_eq!(v["gateway"], "10.89.90.1");
    assert_eq!(v["interface"], "eth0");
    let a1 = sb.address("a-1", "eth0");

    // Real packets both ways; its name in the stack's DNS; b, on another network, cannot reach it.
    assert!(sb.ping("at-a-1", &ip), "a-1 -> ext");
    assert!(sb.ping("runtime-x", &a1), "ext -> a-1");
    assert!(sb.ping("runtime-x", "10.89.90.1"), "ext -> its gateway");
    assert_eq!(resolve(&sb, "at-a-1", "ext"), ip, "ext's name from a-1");
    assert!(!sb.ping("at-b-1", &ip), "b is on another network");
    // Anti-spoofing holds for it too: another source address from it goes nowhere.
    sb.ok("ip netns exec runtime-x ip addr add 10.89.90.250/24 dev eth0");
    assert!(
        !sb.sh(&format!("ip netns exec runtime-x ping -c1 -W1 -I 10.89.90.250 {a1}"))
            .status
            .success(),
        "a spoofed source from ext"
    );
    sb.ok("ip netns exec runtime-x ip addr del 10.89.90.250/24 dev eth0");
    let ps = sb.plumb_ok(&["ps"]);
    assert!(ps.contains("ext"), "{ps}");

    // The same ADD again changes nothing; an up of the stack keeps it.
    sb.plumb_ok(&["attach", "at/ext", "--network", "n", "--netns", "/run/netns/runtime-x"]);
    let said = sb.plumb_ok(&["up"]);
    assert!(said.contains("up to date"), "{said}");
    assert!(sb.ping("at-a-1", &ip), "still reachable after up");

    // Bad requests: exit 2, nothing changed.
    sb.ok("ip netns add runtime-y");
    let host_pid = sb.ok("sleep 600 >/dev/null 2>&1 & echo $!").trim().to_string();
    let host_netns = format!("/proc/{host_pid}/ns/net");
    let routes_before = sb.ok("ip route");
    for (args, why) in [
        (
            vec![
                "attach",
                "at/ext2",
                "--network",
                "nope",
                "--netns",
                "/run/netns/runtime-y",
            ],
            "no network",
        ),
        (
            vec!["attach", "at/a-1", "--network", "n", "--netns", "/run/netns/runtime-y"],
            "own services",
        ),
        (
            vec!["attach", "ext2", "--network", "n", "--netns", "/run/netns/runtime-y"],
            "STACK/NAME",
        ),
        (
            vec!["attach", "at/ext2", "--network", "n", "--netns", "/nonexistent"],
            "/nonexistent",
        ),
        (
            vec!["attach", "at/ext2", "--network", "n", "--netns", "/etc/hostname"],
            "not a network namespace",
        ),
        (
            vec!["attach", "at/ext2", "--network", "n", "--netns", "/run/netns/runtime-x"],
            "the namespace of at/ext",
        ),
        // Never the host's own namespace (its routes would be replaced), nor a namespace
        // plumb made (a second name and address into a-1).
        (
            vec!["attach", "at/ext2", "--network", "n", "--netns", &host_netns],
            "the host's own network namespace",
        ),
        (
            vec!["attach", "at/ext2", "--network", "n", "--netns", "/run/netns/at-a-1"],
            "the namespace of at/a-1",
        ),
    ] {
        let out = sb.plumb(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(why), "{args:?}: {err}");
    }
    assert!(!sb.namespaces().iter().any(|n| n == "at-ext2"), "{:?}", sb.namespaces());
    assert_eq!(sb.ok("ip route"), routes_before, "the host's routes changed");
    assert!(
        !sb.ps().iter().any(|c| c["container"] == "ext2"),
        "a refused attach is recorded"
    );
    sb.ok(&format!("kill {host_pid}; ip netns del runtime-y"));

    // Detach: unwired, the namespace and its process stay; a second DEL is fine.
    sb.plumb_ok(&["detach", "at/ext"]);
    assert!(!sb.ping("at-a-1", &ip), "detached");
    assert!(sb.ok("ip netns list").contains("runtime-x"));
    assert!(
        sb.sh(&format!("kill -0 {pid}")).status.success(),
        "its process was ended"
    );
    assert!(
        !sb.ok("ip netns exec runtime-x ip -o link").contains("eth0"),
        "its veth is gone"
    );
    let again = sb.plumb_ok(&["detach", "at/ext"]);
    assert!(again.contains("not attached"), "{again}");

    // Attached again, by the path of its process's namespace (`/proc/PID/ns/net`, as some
    // runtimes give it), then `down`: still its process and namespace stay.
    let by_pid = format!("/proc/{pid}/ns/net");
    sb.plumb_ok(&["attach", "at/ext", "--network", "n", "--netns", &by_pid]);
    assert!(sb.ping("at-a-1", &ip) || sb.ping("at-a-1", &ip), "attached again");
    sb.plumb_ok(&["down"]);
    assert!(
        sb.sh(&format!("kill -0 {pid}")).status.success(),
        "down ended the runtime's process"
    );
    assert!(sb.ok("ip netns list").contains("runtime-x"));
    sb.ok(&format!("kill {pid}; ip netns del runtime-x"));
    sb.assert_clean();
}

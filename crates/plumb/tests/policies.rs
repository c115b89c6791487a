//! Network policies with real packets: truth tables (3 networks, 3 services, ports 80 and
//! 81, TCP and UDP, from every container, the outside through the published ports, and the
//! host) for six policy sets applied one after another with `plumb up` (each change an
//! in-place update of the tables, not a new table), `plumb policy why` agreeing with every
//! cell of one table, a process whose first connection is denied, and 10,000 policy elements
//! giving the same verdicts as the small policy they contain. Each truth table is also
//! probed with UDP broadcast (limited and each subnet's) and multicast (224.0.0.1).

mod common;

use common::reachability::{Matrix, Proto, Reachability, Source, Target};
use common::*;

/// a on n1 (publishes 80 and 81, TCP and UDP), b on n1 and n2, c on n2 and n3.
const STACK: &str = r#"name = "pol"
[networks.n1]
subnet = "10.96.1.0/24"
[networks.n2]
subnet = "10.96.2.0/24"
[networks.n3]
subnet = "10.96.3.0/24"
[services.a]
networks = ["n1"]
ports = ["80:80", "81:81", "80:80/udp", "81:81/udp"]
[services.b]
networks = ["n1", "n2"]
[services.c]
networks = ["n2", "n3"]
"#;

/// Each label's networks.
fn nets(label: &str) -> &'static [&'static str] {
    match label {
        "a" => &["n1"],
        "b" => &["n1", "n2"],
        "c" => &["n2", "n3"],
        _ => &[],
    }
}

/// The service of a target label (`b@n2` -> `b`) and its network.
fn split(t: &Target) -> (&str, &str) {
    t.label.split_once('@').unwrap()
}

/// What network isolation allows (no policies): a container reaches its own addresses and
/// those on networks it shares; the outside reaches a's published ports through the host
/// address; the host reaches every container.
fn base(s: &Source, t: &Target, _port: u16, _proto: Proto) -> bool {
    let (svc, net) = split(t);
    match s.label.as_str() {
        "outside" => svc == "a",
        "host" => true,
        src => src == svc || nets(src).contains(&net),
    }
}

struct Case {
    name: &'static str,
    policies: &'static str,
    allows: fn(&Source, &Target, u16, Proto) -> bool,
}

fn local(s: &Source, t: &Target) -> bool {
    s.label == split(t).0
}

const CASES: &[Case] = &[
    Case {
        name: "no policies",
        policies: "",
        allows: |_, _, _, _| true,
    },
    Case {
        name: "default-deny ingress for b: only n1's addresses, 80/tcp",
        policies: "[[policies]]\nfrom = \"10.96.1.0/24\"\nto = \"b\"\nports = [80]\nlog = true\n",
        allows: |s, t, port, proto| {
            split(t).0 != "b" || local(s, t) || (s.label == "a" && port == 80 && proto == Proto::Tcp)
        },
    },
    Case {
        name: "egress only: b reaches n2's addresses over TCP, nothing else",
        policies: "[[policies]]\nfrom = \"b\"\nto = \"10.96.2.0/24\"\nports = [80, 81]\n",
        allows: |s, t, _, proto| s.label != "b" || local(s, t) || (split(t).1 == "n2" && proto == Proto::Tcp),
    },
    Case {
        name: "CIDR and host: a takes 80/tcp from 203.0.113.0/24 and 81/udp from the host",
        policies: "[[policies]]\nfrom = \"203.0.113.0/24\"\nto = \"a\"\nports = [80]\n\
                   [[policies]]\nfrom = \"host\"\nto = \"a\"\nports = [81]\nprotocol = \"udp\"\n",
        allows: |s, t, port, proto| {
            split(t).0 != "a"
                || local(s, t)
                || (s.label == "outside" && port == 80 && proto == Proto::Tcp)
                || (s.label == "host" && port == 81 && proto == Proto::Udp)
        },
    },
    Case {
        // A network selector in `from` selects its members (b, c): their egress is isolated too.
        name: "port range, UDP only, network selector: n2's members (b, c) may send only 80-81/udp to c",
        policies: "[[policies]]\nfrom = \"network:n2\"\nto = \"c\"\nports = [\"80-81\"]\nprotocol = \"udp\"\n",
        allows: |s, t, _, proto| {
            let (src, dst) = (s.label.as_str(), split(t).0);
            let to_c_ok = dst != "c" || src == "c" || (src == "b" && proto == Proto::Udp);
            let from_ok = match src {
                "b" => dst == "b" || (dst == "c" && proto == Proto::Udp),
                "c" => dst == "c",
                _ => true,
            };
            to_c_ok && from_ok
        },
    },
    Case {
        name: "multi-network b: a -> b on TCP, b -> c on 80/udp, both ways isolated",
        policies: "[[policies]]\nfrom = \"a\"\nto = \"b\"\nports = [\"80-81\"]\n\
                   [[policies]]\nfrom = \"b\"\nto = \"c\"\nports = [80]\nprotocol = \"udp\"\n",
        allows: |s, t, port, proto| {
            let (src, dst) = (s.label.as_str(), split(t).0);
            if src == dst {
                return true;
            }
            let ingress = match dst {
                "b" => src == "a" && proto == Proto::Tcp,
                "c" => src == "b" && port == 80 && proto == Proto::Udp,
                _ => true,
            };
            let egress = match src {
                "a" => dst == "b" && proto == Proto::Tcp,
                "b" => dst == "c" && port == 80 && proto == Proto::Udp,
                _ => true,
            };
            ingress && egress
        },
    },
];

/// Broadcast and multicast destinations each source sends the same UDP datagrams to.
const GROUPS: &[&str] = &[
    "255.255.255.255",
    "224.0.0.1",
    "10.96.1.255",
    "10.96.2.255",
    "10.96.3.255",
];

/// Whether a datagram from `s` to group `g` reaches the segment of network `net`: the subnet
/// broadcast of a network it is on; the limited broadcast and multicast leave by its default
/// route's interface, its first network's.
fn on_segment(s: &Source, g: &str, net: &str) -> bool {
    let mine = nets(&s.label);
    match g.strip_prefix("10.96.").and_then(|r| r.strip_suffix(".255")) {
        Some(n) => net == format!("n{n}") && mine.contains(&net),
        None => mine.first() == Some(&net),
    }
}

/// A group datagram arrives in namespace `ns` iff the sender is that namespace (the kernel
/// loops it back, if it left by one of its own networks), or some target of `ns` on the
/// datagram's segment would be reached by a unicast datagram on the same port.
fn group_reaches(
    grid: &Reachability,
    allows: fn(&Source, &Target, u16, Proto) -> bool,
    s: &Source,
    ns: &str,
    g: &str,
    port: u16,
) -> bool {
    let targets = grid.targets.iter().filter(|t| t.ns == ns);
    let mut targets = targets.filter(|t| on_segment(s, g, split(t).1));
    if s.ns == ns {
        return targets.next().is_some();
    }
    targets.any(|t| base(s, t, port, Proto::Udp) && allows(s, t, port, Proto::Udp))
}

fn grid(sb: &Sandbox) -> Reachability {
    let targets = vec![
        Target::of(sb, "a@n1", "pol-a-1", "eth0"),
        Target::of(sb, "b@n1", "pol-b-1", "eth0"),
        Target::of(sb, "b@n2", "pol-b-1", "eth1"),
        Target::of(sb, "c@n2", "pol-c-1", "eth0"),
        Target::of(sb, "c@n3", "pol-c-1", "eth1"),
    ];
    let sources = vec![
        Source::ns("a", "pol-a-1"),
        Source::ns("b", "pol-b-1"),
        Source::ns("c", "pol-c-1"),
        Source::through("outside", "outside", HOST_IP),
        Source::host("host"),
    ];
    Reachability::new(sources, targets, &[80, 81], &[Proto::Tcp, Proto::Udp])
}

/// The handle of a table: the same handle after `up` means it was edited, not replaced.
fn handle(sb: &Sandbox, table: &str) -> String {
    let out = sb.ok(&format!("nft -a list table {table} | head -1"));
    out.split("# handle").nth(1).unwrap_or_default().trim().to_string()
}

/// `plumb policy why` for every cell, compared with the observed matrix.
fn why_agrees(sb: &Sandbox, grid: &Reachability, observed: &Matrix) {
    let mut disagree = Vec::new();
    for (r, s) in grid.sources.iter().enumerate() {
        for (k, col) in grid.columns().iter().enumerate() {
            let t = &grid.targets[col.target];
            let from = match s.label.as_str() {
                "outside" => OUTSIDE_IP.to_string(),
                "host" => "host".to_string(),
                c => format!("{c}-1"),
            };
            let to = format!("{}:{}/{}", t.addr, col.port, col.proto.name());
            let out = sb.plumb(&["policy", "why", &from, &to, "-s", "pol"]);
            let said = match out.status.code() {
                Some(0) => true,
                Some(1) => false,
                _ => panic!("policy why {from} {to}: {out:?}"),
            };
            if said != observed.cells[r][k] {
                disagree.push(format!("{from} -> {to}: why says {said}: {}", text(&out.stdout)));
            }
        }
    }
    assert!(
        disagree.is_empty(),
        "policy why disagrees with the packets:\n{}",
        disagree.join("\n")
    );
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn six_policy_sets_give_their_truth_tables_and_edits_are_in_place() {
    let sb = Sandbox::start().unwrap();
    sb.write("plumb.toml", STACK);
    sb.plumb_ok(&["up"]);
    let grid = grid(&sb);
    grid.listen(&sb);
    let mut handles: Option<(String, String)> = None;
    for (i, case) in CASES.iter().enumerate() {
        sb.write("plumb.toml", &format!("{STACK}{}", case.policies));
        if i >= 2 {
            // Between two policy sets: elements and chains change, the tables stay.
            let plan = sb.plumb_ok(&["up", "--dry-run"]);
            assert!(!plan.contains("delete table"), "{}: {plan}", case.name);
            assert!(plan.contains("element inet plumb_pol policy_"), "{}: {plan}", case.name);
        }
        sb.plumb_ok(&["up"]);
        let now = (handle(&sb, "inet plumb_pol"), handle(&sb, "bridge plumb_pol"));
        if i >= 2 {
            assert_eq!(handles.as_ref(), Some(&now), "{}: a table was replaced", case.name);
        }
        handles = Some(now);
        let allows = case.allows;
        let expected = grid.expect(|s, t, port, proto| base(s, t, port, proto) && allows(s, t, port, proto));
        let report = grid.assert_matches(&sb, &expected);
        println!("policy set {i}: {}\n{report}", case.name);
        // The same flows as broadcast and multicast: a policy denies them as it denies unicast.
        let groups = grid.assert_groups(&sb, GROUPS, |s, ns, g, port| {
            group_reaches(&grid, allows, s, ns, g, port)
        });
        println!("{}: {groups}", case.name);
        if i == CASES.len() - 1 {
            why_agrees(&sb, &grid, &expected);
        }
    }
    // Denied packets are counted per target (the bridge's chain for same-bridge traffic).
    let counters = sb.ok("nft list chain bridge plumb_pol deny_to_c; nft list chain inet plumb_pol deny_to_c");
    assert!(
        counters
            .lines()
            .any(|l| l.contains("counter packets") && !l.contains("counter packets 0 ")),
        "{counters}"
    );
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_process_first_connection_is_already_denied() {
    let sb = Sandbox::start().unwrap();
    let log = sb.dir.join("first.log");
    sb.write(
        "plumb.toml",
        &format!(
            r#"name = "first"
[networks.n]
subnet = "10.96.5.0/24"
[services.server]
command = ["/usr/bin/python3", "-c", "import socket,time\ns=socket.socket()\ns.bind(('0.0.0.0',7000))\ns.listen()\nwhile True: s.accept()[0].close()"]
[services.server.networks.n]
ip = "10.96.5.10"
[services.client]
command = ["/bin/bash", "-c", "for p in 7000 7001; do timeout 1 bash -c \"exec 3<>/dev/tcp/10.96.5.10/$p\"; echo $p $?; done >> {log}; sleep 1000"]
[[policies]]
from = "client"
to = "server"
ports = [7001]
"#,
            log = log.display()
        ),
    );
    sb.plumb_ok(&["up"]);
    assert!(
        eventually(std::time::Duration::from_secs(10), || std::fs::read_to_string(&log)
            .is_ok_and(|l| l.lines().count() >= 2)),
        "the client wrote nothing"
    );
    // The very first attempt, to 7000 (not allowed), is dropped: it times out (124) instead
    // of being refused or answered. 7001 is allowed and nothing listens: refused at once (1),
    // so packets do pass where a policy allows them.
    let seen = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        seen.lines().take(2).collect::<Vec<_>>(),
        ["7000 124", "7001 1"],
        "{seen}"
    );
    let counters = sb.ok("nft list chain bridge plumb_first deny_to_server");
    assert!(!counters.contains("counter packets 0 "), "{counters}");
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

/// `from`: a, plus `n` /30s from 172.16.0.0 on, every other one (so none merge).
fn many_sources(n: u32) -> String {
    let cidrs: Vec<String> = (0..n)
        .map(|i| format!("\"{}/30\"", std::net::Ipv4Addr::from(0xac10_0000u32 + i * 8)))
        .collect();
    let mut from = vec!["\"a\"".to_string()];
    from.extend(cidrs);
    format!("[{}]", from.join(", "))
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn ten_thousand_policy_elements_give_the_small_policys_verdicts() {
    let sb = Sandbox::start().unwrap();
    let stack = "name = \"big\"\n[networks.n]\nsubnet = \"10.96.7.0/24\"\n\
                 [services.a]\n[services.b]\n[services.c]\n[[policies]]\nto = \"b\"\nports = [80, 81, 8443]\n";
    sb.write("plumb.toml", &format!("{stack}from = \"a\"\n"));
    sb.plumb_ok(&["up"]);
    let grid = Reachability::new(
        vec![
            Source::ns("a", "big-a-1"),
            Source::ns("c", "big-c-1"),
            Source::host("host"),
        ],
        vec![
            Target::of(&sb, "a", "big-a-1", "eth0"),
            Target::of(&sb, "b", "big-b-1", "eth0"),
            Target::of(&sb, "c", "big-c-1", "eth0"),
        ],
        &[80, 81],
        &[Proto::Tcp, Proto::Udp],
    );
    grid.listen(&sb);
    // b takes only a's TCP; a (egress isolated by `from`) sends only that; c and the host
    // reach everyone else.
    let expected = grid.expect(|s, t, _, proto| match (s.label.as_str(), t.label.as_str()) {
        (src, dst) if src == dst => true,
        ("a", dst) => dst == "b" && proto == Proto::Tcp,
        (_, dst) => dst != "b",
    });
    println!("small policy\n{}", grid.assert_matches(&sb, &expected));

    sb.write("plumb.toml", &format!("{stack}from = {}\n", many_sources(5000)));
    sb.plumb_ok(&["up"]);
    // tcp, or 6 where the host has no /etc/protocols (netbase) for nft to name it by.
    let elements = sb.ok("nft list set inet plumb_big policy_allow | grep -oE ' \\. (tcp|6) \\. ' | wc -l");
    assert!(elements.trim().parse::<u32>().unwrap() >= 10_000, "{elements}");
    println!("10,002 elements\n{}", grid.assert_matches(&sb, &expected));
    // An edit with all of them present is one element added (to each set holding flows).
    sb.write("plumb.toml", &format!("{stack}from = {}\n", many_sources(5001)));
    let plan = sb.plumb_ok(&["up", "--dry-run"]);
    // One element command per set: policy_allow in both tables, and the bridge table's
    // policy_port_allow (the same flow at b's port, for broadcast and multicast).
    assert_eq!(plan.matches("add element").count(), 3, "{plan}");
    assert!(!plan.contains("delete table"), "{plan}");
    sb.plumb_ok(&["up"]);
    grid.assert_matches(&sb, &expected);

    sb.plumb_ok(&["down"]);
    sb.assert_clean();
    assert_eq!(sb.ok("nft list ruleset").trim(), "", "nft objects left");
}

//! Reachability truth tables with real packets (the Kubernetes network-policy e2e style):
//! every container, and the `outside` namespace, probes every container address on ports 80
//! and 81, TCP and UDP, and the observed grid must equal the one derived from the rules in
//! docs/concepts.md ("Security model"): same network allowed; different networks denied; a
//! container on two networks reaches both; an internal network lets nothing in or out except
//! within; from outside only a published port, through a host address.

mod common;

use common::reachability::{Proto, Reachability, Source, Target, Via};
use common::*;
use std::collections::BTreeMap;
use std::time::Instant;

/// `grid`: `front` and `back` (normal), `vault` (internal). a on front (publishes 80/tcp),
/// b on back, c on vault, w on front and vault.
const GRID: &str = r#"
name = "grid"
[networks.front]
subnet = "10.97.1.0/24"
[networks.back]
subnet = "10.97.2.0/24"
[networks.vault]
subnet = "10.97.3.0/24"
internal = true
[services.a]
networks = ["front"]
ports = ["80:80"]
[services.b]
networks = ["back"]
[services.c]
networks = ["vault"]
[services.w]
networks = ["front", "vault"]
"#;

/// What today's rules allow: a container reaches an address of a network it is on; nothing
/// else crosses between networks (internal ones included) or stacks. `nets` maps a source or
/// target label to its networks; `published` lists (target label, port, protocol) reachable
/// through the host address.
fn todays_rules(
    nets: &BTreeMap<String, Vec<String>>,
    published: &[(&str, u16, Proto)],
) -> impl Fn(&Source, &Target, u16, Proto) -> bool {
    let nets = nets.clone();
    let published: Vec<(String, u16, Proto)> = published.iter().map(|(t, p, pr)| (t.to_string(), *p, *pr)).collect();
    move |s, t, port, proto| match &s.via {
        Via::Address(_) => published.contains(&(t.label.clone(), port, proto)),
        Via::Direct => {
            let target_net = &nets[&t.label][0];
            nets.get(&s.label).is_some_and(|n| n.contains(target_net))
        }
    }
}

fn labels(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
    pairs
        .iter()
        .map(|(l, n)| (l.to_string(), n.iter().map(|s| s.to_string()).collect()))
        .collect()
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn one_stack_three_networks_grid() {
    let sb = Sandbox::start().unwrap();
    sb.write("plumb.toml", GRID);
    sb.plumb_ok(&["up"]);
    // `outside-routed` is any machine that routes the stack's subnets via the host.
    sb.ok("for n in 1 2 3; do ip -n outside route add 10.97.$n.0/24 via 203.0.113.1; done");

    let targets = vec![
        Target::of(&sb, "a", "grid-a-1", "eth0"),
        Target::of(&sb, "b", "grid-b-1", "eth0"),
        Target::of(&sb, "c", "grid-c-1", "eth0"),
        Target::of(&sb, "w@front", "grid-w-1", "eth0"),
        Target::of(&sb, "w@vault", "grid-w-1", "eth1"),
    ];
    let sources = vec![
        Source::ns("a", "grid-a-1"),
        Source::ns("b", "grid-b-1"),
        Source::ns("c", "grid-c-1"),
        Source::ns("w", "grid-w-1"),
        Source::through("outside", "outside", HOST_IP),
        Source::ns("outside-routed", "outside"),
    ];
    // Each label's networks (a target's: the network of its address).
    let nets = labels(&[
        ("a", &["front"]),
        ("b", &["back"]),
        ("c", &["vault"]),
        ("w", &["front", "vault"]),
        ("w@front", &["front"]),
        ("w@vault", &["vault"]),
    ]);
    let grid = Reachability::new(sources, targets, &[80, 81], &[Proto::Tcp, Proto::Udp]);
    let expected = grid.expect(todays_rules(&nets, &[("a", 80, Proto::Tcp)]));

    let started = Instant::now();
    grid.listen(&sb);
    let report = grid.assert_matches(&sb, &expected);
    println!("{report}probed in {:?}", started.elapsed());

    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn two_stacks_side_by_side_grid() {
    let sb = Sandbox::start().unwrap();
    sb.write(
        "left/plumb.toml",
        "name = \"left\"\n[networks.n]\nsubnet = \"10.97.11.0/24\"\n[networks.m]\nsubnet = \"10.97.12.0/24\"\ninternal = true\n\
         [services.x]\nnetworks = [\"n\"]\n[services.y]\nnetworks = [\"n\", \"m\"]\n",
    );
    sb.write(
        "right/plumb.toml",
        "name = \"right\"\n[networks.n]\nsubnet = \"10.97.21.0/24\"\n[networks.m]\nsubnet = \"10.97.22.0/24\"\ninternal = true\n\
         [services.x]\nnetworks = [\"n\"]\n[services.y]\nnetworks = [\"n\", \"m\"]\n",
    );
    sb.plumb_ok(&["up", "-f", "left/plumb.toml"]);
    sb.plumb_ok(&["up", "-f", "right/plumb.toml"]);

    let mut targets = Vec::new();
    let mut sources = Vec::new();
    for stack in ["left", "right"] {
        targets.push(Target::of(&sb, &format!("{stack}.x"), &format!("{stack}-x-1"), "eth0"));
        targets.push(Target::of(
            &sb,
            &format!("{stack}.y@n"),
            &format!("{stack}-y-1"),
            "eth0",
        ));
        targets.push(Target::of(
            &sb,
            &format!("{stack}.y@m"),
            &format!("{stack}-y-1"),
            "eth1",
        ));
        sources.push(Source::ns(&format!("{stack}.x"), &format!("{stack}-x-1")));
        sources.push(Source::ns(&format!("{stack}.y"), &format!("{stack}-y-1")));
    }
    // Networks are stack-qualified: same name in two stacks is two networks.
    let nets = labels(&[
        ("left.x", &["left/n"]),
        ("left.y", &["left/n", "left/m"]),
        ("left.y@n", &["left/n"]),
        ("left.y@m", &["left/m"]),
        ("right.x", &["right/n"]),
        ("right.y", &["right/n", "right/m"]),
        ("right.y@n", &["right/n"]),
        ("right.y@m", &["right/m"]),
    ]);
    let grid = Reachability::new(sources, targets, &[80, 81], &[Proto::Tcp, Proto::Udp]);
    let expected = grid.expect(todays_rules(&nets, &[]));

    let started = Instant::now();
    grid.listen(&sb);
    let report = grid.assert_matches(&sb, &expected);
    println!("{report}probed in {:?}", started.elapsed());

    sb.plumb_ok(&["down", "-f", "left/plumb.toml"]);
    sb.plumb_ok(&["down", "-f", "right/plumb.toml"]);
    sb.assert_clean();
}

/// The printer, without the kernel: a mismatch is starred in a third grid and listed with
/// what the probe saw, and the grids carry the expected and observed values.
#[test]
fn the_printer_marks_mismatches() {
    use common::reachability::Matrix;
    let grid = Reachability::new(
        vec![Source::ns("a", "s-a-1"), Source::through("outside", "outside", HOST_IP)],
        vec![
            Target::new("a", "s-a-1", "10.0.0.2"),
            Target::new("b", "s-b-1", "10.0.1.2"),
        ],
        &[80],
        &[Proto::Tcp, Proto::Udp],
    );
    let expected = grid.expect(|s, t, _, proto| s.label == t.label || (t.label == "a" && proto == Proto::Tcp));
    let mut observed: Matrix = expected.clone();
    observed.cells[1][2] = true;
    observed.seen[1][2] = "b".into();
    let report = grid.render(&expected, &observed);
    let lines: Vec<&str> = report.lines().collect();
    assert_eq!(lines[2], "from\\to | a   | b");
    assert_eq!(lines[3], "a       | . . | X X", "{report}");
    assert_eq!(lines[4], "outside | . X | X X", "{report}");
    assert_eq!(lines[8], "outside | . X | . X", "{report}");
    assert_eq!(lines[12], "outside | . X | * X", "{report}");
    assert!(
        report.contains("summary: 8 probes, 4 allowed, 4 denied, 1 mismatches")
            && report.contains("outside -> b:80/tcp: expected denied, observed allowed (probe saw \"b\")"),
        "{report}"
    );
}

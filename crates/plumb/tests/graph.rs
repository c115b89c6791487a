//! `plumb graph`: the drawing of a stack that is up names every network, container address
//! and published port as the kernel holds them, renders with Graphviz, and is a Mermaid
//! flowchart; unknown stacks are a clear error with exit code 2.

mod common;

use common::*;

const STACK: &str = r#"
name = "gr"
[networks.front]
subnet = "10.89.40.0/24"
[networks.db]
subnet = "10.89.41.0/24"
internal = true
[services.web]
networks = ["front"]
ports = ["8080:80"]
[services.api]
networks = ["front", "db"]
replicas = 2
expose = [5000]
"#;

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_stack_that_is_up_is_drawn_as_the_kernel_holds_it() {
    let sb = Sandbox::start().unwrap();
    sb.write("plumb.toml", STACK);
    sb.plumb_ok(&["up"]);
    let dot = sb.plumb_ok(&["graph", "gr"]);
    // Every address the kernel holds is on the drawing, on the right interface.
    for (container, ifname) in [
        ("web-1", "eth0"),
        ("api-1", "eth0"),
        ("api-1", "eth1"),
        ("api-2", "eth1"),
    ] {
        let cidr = sb.ok(&format!(
            "ip -n gr-{container} -4 -o addr show {ifname} | awk '{{print $4}}'"
        ));
        let cidr = cidr.trim();
        let edge = format!("-> ctr_{} [label=\"{ifname} {cidr}\"]", container.replace('-', "_"));
        assert!(dot.contains(&edge), "missing {edge}:\n{dot}");
    }
    assert!(dot.contains("publish 8080->80/tcp"), "{dot}");
    assert!(dot.contains("VIP 10.96.0."), "{dot}");
    // Graphviz renders it.
    let svg = sb.ok(&format!("{PLUMB} graph gr | dot -Tsvg")).replace("&#45;", "-");
    assert!(
        svg.contains("<svg") && svg.contains("web-1") && svg.contains("api-2"),
        "{svg}"
    );
    // The file gives the same drawing as the stack that is up (leases are kept).
    assert_eq!(sb.plumb_ok(&["graph", "-f", "plumb.toml"]), dot);

    let mermaid = sb.plumb_ok(&["graph", "gr", "--format", "mermaid"]);
    assert!(mermaid.starts_with("flowchart LR\n"), "{mermaid}");
    assert_mermaid_shape(&mermaid);
    // Mermaid's own parser (npm's `mermaid`, through scripts/mermaid-parse) reads it.
    let parser = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/mermaid-parse");
    let parsed = sb.sh(&format!("{PLUMB} graph gr --format mermaid | {parser}"));
    assert_ne!(
        parsed.status.code(),
        Some(3),
        "Mermaid's parser is not available ({}): it needs the Debian packages nodejs and npm, \
         then one run of scripts/mermaid-parse with network (scripts/test does both)",
        text(&parsed.stderr).trim()
    );
    assert_eq!(
        parsed.status.code(),
        Some(0),
        "Mermaid does not parse it: {}\n{mermaid}",
        text(&parsed.stderr)
    );

    let unknown = sb.plumb(&["graph", "nosuch"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("no stack called \"nosuch\" is up"));
    sb.plumb_ok(&["down", "gr"]);
    let after = sb.plumb(&["graph", "gr"]);
    assert_eq!(after.status.code(), Some(2), "a stack that is down has nothing to draw");
    sb.assert_clean();
}

/// Every line after the header is a node (`id[...]`, `id[[...]]`, `id((...))`, `id[/...\]`)
/// or an edge (`a -->|"..."| b`, `a -.->|"..."| b`) between declared nodes.
fn assert_mermaid_shape(chart: &str) {
    let mut nodes = std::collections::BTreeSet::new();
    for line in chart.lines().skip(1) {
        let line = line.trim();
        let id: String = line
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let rest = &line[id.len()..];
        if rest.starts_with(' ') {
            let (arrow, tail) = rest.trim_start().split_once('|').expect(line);
            assert!(arrow == "-->" || arrow == "-.->", "bad arrow in {line}");
            let (label, to) = tail.split_once("| ").expect(line);
            assert!(
                label.starts_with('"') && label.ends_with('"'),
                "label unquoted in {line}"
            );
            assert!(
                nodes.contains(&id) && nodes.contains(to),
                "edge between undeclared nodes: {line}"
            );
        } else {
            let ok = [
                ("[[\"", "\"]]"),
                ("((\"", "\"))"),
                ("{{\"", "\"}}"),
                ("[/\"", "\"\\]"),
                ("[\"", "\"]"),
            ]
            .iter()
            .any(|(open, close)| rest.starts_with(open) && rest.ends_with(close));
            assert!(ok && !id.is_empty(), "not a node: {line}");
            nodes.insert(id);
        }
    }
}

//! A stack's topology as a graph, for people: networks (bridges with their subnet and
//! gateway), containers with their addresses on each network, published ports (from the host),
//! services' virtual IPs, and the flows policies allow (with the stack-file line of each).
//! Rendered as Graphviz `dot`, as a Mermaid flowchart, or as JSON (the nodes and edges
//! themselves, which `plumb ui` draws); pure text.

use std::fmt::Write;

use serde::Serialize;

use crate::desired::Desired;
use crate::spec::Selector;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphFormat {
    Dot,
    Mermaid,
    Json,
}

/// Node ids use only `[a-z0-9_]`, which both formats take unquoted.
fn id(kind: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("{kind}_{clean}")
}

/// One edge of the graph: from, to, its label; dashed: not a link (a route, a published
/// port, a VIP's choice of replica).
#[derive(Debug, Clone, Serialize)]
pub struct Edge {
    pub from: String,
    pub to: String,
    pub label: String,
    pub dashed: bool,
}

/// One node: id, shape, label lines; `name` is the network, container or service it stands for.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub id: String,
    #[serde(rename = "kind")]
    pub shape: Shape,
    pub name: String,
    pub lines: Vec<String>,
}

/// The whole graph of one stack.
#[derive(Debug, Clone, Serialize)]
pub struct Topology {
    pub stack: String,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Host,
    Network,
    Container,
    #[serde(rename = "service")]
    Vip,
    /// Outside the stack: "outside", or an address range.
    Elsewhere,
}

fn model(desired: &Desired) -> (Vec<Node>, Vec<Edge>) {
    let mut nodes = vec![Node {
        id: "host".into(),
        shape: Shape::Host,
        name: "host".into(),
        lines: vec!["host".into()],
    }];
    let mut edges = Vec::new();
    for net in &desired.networks {
        let mut lines = vec![
            format!("network {}", net.name),
            format!("{} {}", net.bridge, net.subnet),
            format!("gateway {}", net.gateway),
        ];
        if net.internal {
            lines.push("internal".into());
        }
        nodes.push(Node {
            id: id("net", &net.name),
            shape: Shape::Network,
            name: net.name.clone(),
            lines,
        });
        if !net.internal {
            edges.push(Edge {
                from: "host".into(),
                to: id("net", &net.name),
                label: "routed, NAT out".into(),
                dashed: true,
            });
        }
    }
    for c in &desired.containers {
        let mut lines = vec![c.name.clone()];
        if c.process.is_none() {
            lines.push("(no process)".into());
        }
        nodes.push(Node {
            id: id("ctr", &c.name),
            shape: Shape::Container,
            name: c.name.clone(),
            lines,
        });
        for i in &c.interfaces {
            edges.push(Edge {
                from: id("net", &i.network),
                to: id("ctr", &c.name),
                label: format!("{} {}", i.name, i.cidr()),
                dashed: false,
            });
        }
        for p in &c.ports {
            edges.push(Edge {
                from: "host".into(),
                to: id("ctr", &c.name),
                label: format!("publish {p}"),
                dashed: true,
            });
        }
    }
    // A service node for every VIP, and for every service a policy names.
    let named: Vec<&str> = desired
        .policies
        .iter()
        .flat_map(|p| p.spec.from.iter().chain(&p.spec.to))
        .filter_map(|s| match s {
            Selector::Service(name) => Some(name.as_str()),
            _ => None,
        })
        .collect();
    for svc in &desired.services {
        if svc.vip.is_none() && !named.contains(&svc.name.as_str()) {
            continue;
        }
        let ports: Vec<String> = svc.ports.iter().map(ToString::to_string).collect();
        let mut lines = vec![format!("service {}", svc.name)];
        if let Some(vip) = svc.vip {
            lines.push(format!("VIP {vip}"));
        }
        if !ports.is_empty() {
            lines.push(ports.join(" "));
        }
        nodes.push(Node {
            id: id("svc", &svc.name),
            shape: Shape::Vip,
            name: svc.name.clone(),
            lines,
        });
        for c in &svc.containers {
            edges.push(Edge {
                from: id("svc", &svc.name),
                to: id("ctr", c),
                label: if svc.vip.is_some() {
                    svc.lb.as_str().into()
                } else {
                    "replica".into()
                },
                dashed: true,
            });
        }
    }
    for policy in &desired.policies {
        let ports: Vec<String> = policy.spec.ports.iter().map(ToString::to_string).collect();
        let ports = if ports.is_empty() {
            "all ports".to_string()
        } else {
            ports.join(",")
        };
        let label = format!("allow {ports}/{} ({})", policy.spec.protocol.as_str(), policy.source);
        for from in &policy.spec.from {
            for to in &policy.spec.to {
                let (a, b) = (selector_node(from, &mut nodes), selector_node(to, &mut nodes));
                edges.push(Edge {
                    from: a,
                    to: b,
                    label: label.clone(),
                    dashed: false,
                });
            }
        }
    }
    (nodes, edges)
}

/// The node a policy's selector names, made if it is outside the stack.
fn selector_node(selector: &Selector, nodes: &mut Vec<Node>) -> String {
    let (node, label) = match selector {
        Selector::Service(name) => return id("svc", name),
        Selector::Network(name) => return id("net", name),
        Selector::Host => return "host".into(),
        Selector::Outside => ("outside".to_string(), "outside".to_string()),
        Selector::Cidr(net) => (id("cidr", &net.to_string()), net.to_string()),
    };
    if !nodes.iter().any(|n| n.id == node) {
        nodes.push(Node {
            id: node.clone(),
            shape: Shape::Elsewhere,
            name: label.clone(),
            lines: vec![label],
        });
    }
    node
}

/// The stack's graph: what every format renders.
pub fn topology(desired: &Desired) -> Topology {
    let (nodes, edges) = model(desired);
    Topology {
        stack: desired.stack.clone(),
        nodes,
        edges,
    }
}

/// The stack as a graph in `format`.
pub fn render(desired: &Desired, format: GraphFormat) -> String {
    let (nodes, edges) = model(desired);
    match format {
        GraphFormat::Dot => dot(&desired.stack, &nodes, &edges),
        GraphFormat::Mermaid => mermaid(&nodes, &edges),
        GraphFormat::Json => {
            let mut text = serde_json::to_string_pretty(&topology(desired)).unwrap_or_default();
            text.push('\n');
            text
        }
    }
}

fn dot(stack: &str, nodes: &[Node], edges: &[Edge]) -> String {
    let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = format!(
        "digraph \"{}\" {{\n\trankdir=LR;\n\tnode [fontname=\"sans-serif\"];\n",
        quote(stack)
    );
    for n in nodes {
        let shape = match n.shape {
            Shape::Host => "house",
            Shape::Network => "box3d",
            Shape::Container => "box",
            Shape::Vip => "ellipse",
            Shape::Elsewhere => "octagon",
        };
        let label: Vec<String> = n.lines.iter().map(|l| quote(l)).collect();
        let _ = writeln!(out, "\t{} [shape={shape}, label=\"{}\"];", n.id, label.join("\\n"));
    }
    for e in edges {
        let style = if e.dashed { ", style=dashed" } else { "" };
        let _ = writeln!(out, "\t{} -> {} [label=\"{}\"{style}];", e.from, e.to, quote(&e.label));
    }
    out.push_str("}\n");
    out
}

fn mermaid(nodes: &[Node], edges: &[Edge]) -> String {
    // Mermaid labels are quoted; a double quote inside one is written as #quot;.
    let quote = |s: &str| s.replace('"', "#quot;");
    let mut out = String::from("flowchart LR\n");
    for n in nodes {
        let label = n.lines.iter().map(|l| quote(l)).collect::<Vec<_>>().join("<br/>");
        let (open, close) = match n.shape {
            Shape::Host => ("[/", "\\]"),
            Shape::Network => ("[[", "]]"),
            Shape::Container => ("[", "]"),
            Shape::Vip => ("((", "))"),
            Shape::Elsewhere => ("{{", "}}"),
        };
        let _ = writeln!(out, "    {}{open}\"{label}\"{close}", n.id);
    }
    for e in edges {
        let arrow = if e.dashed { "-.->" } else { "-->" };
        let _ = writeln!(out, "    {} {arrow}|\"{}\"| {}", e.from, quote(&e.label), e.to);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::resolve;
    use crate::spec::parse;

    fn shop() -> Desired {
        let text = "name = \"shop\"\n[networks.front]\nsubnet = \"10.89.1.0/24\"\n[networks.db]\nsubnet = \"10.89.2.0/24\"\ninternal = true\n\
                    [services.web]\nnetworks = [\"front\"]\nports = [\"8080:80\"]\n\
                    [services.api]\nnetworks = [\"front\", \"db\"]\nreplicas = 2\nexpose = [5000]\n\
                    [services.redis]\nnetworks = [\"db\"]\nlb = \"none\"\n";
        resolve(&parse("plumb.toml", text).unwrap(), &Default::default())
            .unwrap()
            .0
    }

    #[test]
    fn dot_names_networks_containers_ports_and_vips() {
        let out = render(&shop(), GraphFormat::Dot);
        assert!(out.starts_with("digraph \"shop\" {"), "{out}");
        assert!(
            out.contains("net_front [shape=box3d, label=\"network front\\n"),
            "{out}"
        );
        assert!(
            out.contains("net_db -> ctr_api_2 [label=\"eth1 10.89.2.3/24\"]"),
            "{out}"
        );
        assert!(
            out.contains("host -> ctr_web_1 [label=\"publish 8080->80/tcp\", style=dashed]"),
            "{out}"
        );
        assert!(
            out.contains("svc_api [shape=ellipse, label=\"service api\\nVIP 10.96.0.2\\n5000/tcp\"]"),
            "{out}"
        );
        // Internal networks have no way to the host; headless services no VIP.
        assert!(!out.contains("host -> net_db"), "{out}");
        assert!(!out.contains("svc_redis"), "{out}");
    }

    #[test]
    fn policies_are_drawn_as_allowed_flows_with_their_line() {
        let text = "name = \"shop\"\n[networks.front]\nsubnet = \"10.89.1.0/24\"\n\
                    [services.web]\n[services.api]\n\
                    [[policies]]\nfrom = \"web\"\nto = \"api\"\nports = [5000]\n\
                    [[policies]]\nfrom = \"outside\"\nto = \"web\"\n";
        let d = resolve(&parse("plumb.toml", text).unwrap(), &Default::default())
            .unwrap()
            .0;
        let out = render(&d, GraphFormat::Dot);
        assert!(
            out.contains("svc_web -> svc_api [label=\"allow 5000/tcp (plumb.toml:"),
            "{out}"
        );
        assert!(out.contains("outside [shape=octagon, label=\"outside\"]"), "{out}");
        assert!(out.contains("outside -> svc_web [label=\"allow all ports/tcp"), "{out}");
        let m = render(&d, GraphFormat::Mermaid);
        assert!(m.contains("    outside{{\"outside\"}}"), "{m}");
    }

    #[test]
    fn json_has_the_same_nodes_and_edges_with_their_kind() {
        let v: serde_json::Value = serde_json::from_str(&render(&shop(), GraphFormat::Json)).unwrap();
        assert_eq!(v["stack"], "shop");
        let nodes = v["nodes"].as_array().unwrap();
        let web = nodes.iter().find(|n| n["id"] == "ctr_web_1").unwrap();
        assert_eq!(web["kind"], "container");
        assert_eq!(web["name"], "web-1");
        assert!(nodes.iter().any(|n| n["kind"] == "service" && n["name"] == "api"));
        assert!(v["edges"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["from"] == "net_db" && e["to"] == "ctr_api_2" && e["label"] == "eth1 10.89.2.3/24"));
    }

    #[test]
    fn mermaid_is_a_flowchart_with_the_same_edges() {
        let out = render(&shop(), GraphFormat::Mermaid);
        assert!(out.starts_with("flowchart LR\n"), "{out}");
        assert!(out.contains("    net_front[[\"network front<br/>"), "{out}");
        assert!(out.contains("    svc_api -.->|\"round-robin\"| ctr_api_1"), "{out}");
        assert!(
            out.contains("    net_front -->|\"eth0 10.89.1.4/24\"| ctr_web_1"),
            "{out}"
        );
        assert!(
            out.contains("    host -.->|\"publish 8080->80/tcp\"| ctr_web_1"),
            "{out}"
        );
    }
}

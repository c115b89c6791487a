//! `plumb ps`: the containers of every stack that is up, with their namespaces, interfaces,
//! addresses and published ports.

use plumb_core::Container;
use serde::Serialize;

use super::Context;
use crate::failure::Result;
use crate::output::{print_json, table};

#[derive(Serialize)]
struct Row<'a> {
    stack: &'a str,
    container: &'a str,
    service: &'a str,
    replica: u32,
    namespace: &'a str,
    /// The namespace exists under /run/netns.
    present: bool,
    interfaces: Vec<Iface<'a>>,
    ports: Vec<String>,
}

#[derive(Serialize)]
struct Iface<'a> {
    name: &'a str,
    network: &'a str,
    address: String,
    host_veth: &'a str,
    bridge: &'a str,
}

pub fn run(ctx: &Context, json: bool) -> Result<()> {
    let stacks = ctx.state.stacks()?;
    let mut rows = Vec::new();
    for st in stacks.values() {
        let Some(desired) = &st.desired else { continue };
        rows.extend(desired.containers.iter().map(|c| row(&st.stack, c)));
    }
    if json {
        print_json(&rows);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no stack is up");
        return Ok(());
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.stack.to_string(),
                r.container.to_string(),
                if r.present {
                    "up".into()
                } else {
                    "missing".into()
                },
                r.namespace.to_string(),
                r.interfaces
                    .iter()
                    .map(|i| format!("{} {} ({})", i.name, i.address, i.network))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.ports.join(", "),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "STACK",
                "CONTAINER",
                "STATE",
                "NAMESPACE",
                "INTERFACES",
                "PORTS"
            ],
            &cells
        )
    );
    Ok(())
}

fn row<'a>(stack: &'a str, c: &'a Container) -> Row<'a> {
    Row {
        stack,
        container: &c.name,
        service: &c.service,
        replica: c.replica,
        namespace: &c.netns,
        present: plumb_linux::netns::path(&c.netns).exists(),
        interfaces: c
            .interfaces
            .iter()
            .map(|i| Iface {
                name: &i.name,
                network: &i.network,
                address: i.cidr().to_string(),
                host_veth: &i.host_veth,
                bridge: &i.bridge,
            })
            .collect(),
        ports: c
            .ports
            .iter()
            .map(|p| format!("{}->{}/{}", p.host, p.container, p.protocol.as_str()))
            .collect(),
    }
}

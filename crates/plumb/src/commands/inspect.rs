//! `plumb inspect NAME`: everything about one network or container, as the stack file asked
//! for it and as the kernel holds it now.

use plumb_core::{Container, Network};
use serde_json::{json, Value};

use super::{Context, Format};
use crate::failure::{Failure, Result};
use crate::output::print_json;
use crate::stackfile::{self, find_container};
use plumb_core::kernel::Kernel;

pub fn run(ctx: &Context, name: &str, format: Format) -> Result<()> {
    let value = match find_network(ctx, name)? {
        Some((stack, net, members)) => network_report(&stack, &net, &members),
        None => {
            // Not found as a container either: say both were looked for (an ambiguous name or
            // one on another host keeps its own message).
            let (st, c) =
                find_container(&ctx.state, name).map_err(|e| match e.message.starts_with("no container") {
                    true => Failure::new(format!(
                        "no network or container called {name:?} in any stack that is up"
                    ))
                    .hint("`plumb ps` lists containers; networks are named in the stack file")
                    .code(2),
                    false => e,
                })?;
            container_report(&st.stack, &c)
        }
    };
    if format == Format::Json {
        print_json(&value);
    } else {
        print_value(&value, 0);
    }
    Ok(())
}

type Member = (String, String, String);

fn find_network(ctx: &Context, name: &str) -> Result<Option<(String, Network, Vec<Member>)>> {
    let (stack_filter, name) = stackfile::qualified(name);
    for (stack, st) in ctx.state.stacks()? {
        if stack_filter.is_some_and(|f| f != stack) {
            continue;
        }
        let Some(desired) = &st.desired else { continue };
        if let Some(net) = desired.network(name) {
            let members = desired
                .containers
                .iter()
                .flat_map(|c| {
                    c.interfaces
                        .iter()
                        .filter(|i| i.network == name)
                        .map(|i| (c.name.clone(), i.name.clone(), i.cidr().to_string()))
                })
                .collect();
            return Ok(Some((stack, net.clone(), members)));
        }
    }
    Ok(None)
}

fn network_report(stack: &str, net: &Network, members: &[Member]) -> Value {
    json!({
        "kind": "network",
        "stack": stack,
        "name": net.name,
        "subnet": net.subnet.to_string(),
        "gateway": net.gateway.to_string(),
        "internal": net.internal,
        "bridge": net.bridge,
        "containers": members.iter().map(|(c, i, a)| json!({"container": c, "interface": i, "address": a})).collect::<Vec<_>>(),
    })
}

fn container_report(stack: &str, c: &Container) -> Value {
    json!({
        "kind": "container",
        "stack": stack,
        "name": c.name,
        "service": c.service,
        "replica": c.replica,
        "namespace": c.netns,
        "gateway": c.gateway.map(|g| g.to_string()),
        "interfaces": c.interfaces.iter().map(|i| json!({
            "name": i.name, "network": i.network, "address": i.cidr().to_string(),
            "host_veth": i.host_veth, "bridge": i.bridge,
        })).collect::<Vec<_>>(),
        "ports": c.ports.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
        "kernel": live(&c.netns),
    })
}

/// What the container's namespace holds right now (needs root; `null` otherwise).
fn live(ns: &str) -> Value {
    let read = || -> Result<Value> {
        let mut kernel = crate::apply::kernel()?;
        let Some(observed) = kernel.netns(ns)? else {
            return Ok(Value::Null);
        };
        Ok(json!({
            "lo_up": observed.lo_up,
            "default_route": observed.default_gateway.map(|g| g.to_string()),
            "links": observed.links.iter().map(|(name, l)| json!({
                "name": name, "up": l.up, "alias": l.alias,
                "addresses": l.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        }))
    };
    read().unwrap_or(Value::Null)
}

fn print_value(value: &Value, indent: usize) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::Object(_) | Value::Array(_) if !is_empty(v) => {
                        println!("{pad}{k}:");
                        print_value(v, indent + 2);
                    }
                    _ => println!("{pad}{k}: {}", scalar(v)),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(_) => {
                        println!("{pad}-");
                        print_value(item, indent + 2);
                    }
                    _ => println!("{pad}- {}", scalar(item)),
                }
            }
        }
        other => println!("{pad}{}", scalar(other)),
    }
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.is_empty(),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(_) | Value::Object(_) => "(none)".into(),
        other => other.to_string(),
    }
}

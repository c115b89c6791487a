//! `plumb services`: each service of a stack as others reach it: its VIP, ports and balancing,
//! and its endpoints with their readiness and the connections each has received through the
//! VIP (its endpoint chain's nft counter, from one listing of the stack's table).

use std::collections::{BTreeMap, BTreeSet};

use plumb_core::firewall::{tables_in_listing, vips, TableId};
use plumb_core::kernel::Kernel;
use plumb_core::Desired;
use serde::Serialize;
use serde_json::Value;

use super::{require_stack_name, Context, Format};
use crate::failure::{Failure, Result};
use crate::output::{print_json, table};
use crate::runfile;

#[derive(Serialize)]
pub struct Row {
    stack: String,
    service: String,
    vip: Option<String>,
    ports: Vec<String>,
    lb: String,
    affinity_secs: Option<u64>,
    endpoints: Vec<EndpointRow>,
}

#[derive(Serialize)]
pub struct EndpointRow {
    container: String,
    address: Option<String>,
    ready: bool,
    /// Connections received through the VIP; `None` when the kernel's table could not be read
    /// (or the service has no VIP).
    connections: Option<u64>,
}

/// `stack`: one stack (unknown: an error, exit 2), or every stack that is up.
pub fn run(ctx: &Context, stack: Option<&str>, format: Format) -> Result<()> {
    let records = ctx.state.stacks()?;
    let names: Vec<&String> = match stack {
        Some(name) => {
            require_stack_name(name)?;
            let known = records.get_key_value(name).map(|(k, _)| k);
            vec![known.ok_or_else(|| {
                Failure::new(format!("no stack called {name:?} is up"))
                    .hint("`plumb ps` lists the stacks that are up")
                    .code(2)
            })?]
        }
        None => records.keys().collect(),
    };
    let listing = crate::apply::kernel().ok().and_then(|mut k| k.nft_ruleset().ok());
    let tables = listing.as_deref().and_then(tables_in_listing);
    let mut rows = Vec::new();
    for name in names {
        let Some(desired) = &records[name].desired else {
            continue;
        };
        rows.extend(of_stack(ctx, desired, tables.as_ref()));
    }
    if format == Format::Json {
        print_json(&rows);
        return Ok(());
    }
    print_table(&rows);
    Ok(())
}

/// The rows of one stack's services; `tables`: the ruleset's tables, when they could be read
/// (`plumb ui` shows the same).
pub fn of_stack(ctx: &Context, desired: &Desired, tables: Option<&BTreeMap<TableId, Vec<Value>>>) -> Vec<Row> {
    let counts = tables.map(|t| {
        t.get(&vips::table_of(&desired.stack))
            .map(|o| vips::endpoint_counts(o))
            .unwrap_or_default()
    });
    let unready = runfile::read_status(&ctx.state.stack_dir(&desired.stack)).unready(desired);
    rows_of(desired, &unready, counts.as_ref())
}

fn rows_of(desired: &Desired, unready: &BTreeSet<String>, counts: Option<&BTreeMap<String, u64>>) -> Vec<Row> {
    let balancer = vips::Balancer::of(desired);
    desired
        .services
        .iter()
        .map(|s| {
            let balanced = balancer.service(&s.name);
            let endpoints = s
                .containers
                .iter()
                .map(|name| {
                    let c = desired.container(name);
                    EndpointRow {
                        container: name.clone(),
                        address: c.and_then(|c| c.interfaces.first()).map(|i| i.address.to_string()),
                        ready: !unready.contains(name),
                        connections: balanced
                            .and(counts)
                            .map(|counts| counts.get(name).copied().unwrap_or(0)),
                    }
                })
                .collect();
            Row {
                stack: desired.stack.clone(),
                service: s.name.clone(),
                vip: s.vip.map(|v| v.to_string()),
                ports: match s.every_port {
                    // The VIP balances every TCP, UDP and SCTP port (no declared ports).
                    true => vec!["all".to_string()],
                    false => s.ports.iter().map(ToString::to_string).collect(),
                },
                lb: s.lb.as_str().to_string(),
                affinity_secs: s.affinity_secs,
                endpoints,
            }
        })
        .collect()
}

fn print_table(rows: &[Row]) {
    if rows.is_empty() {
        println!("no services: no stack is up");
        return;
    }
    let mut lines = Vec::new();
    for r in rows {
        let lb = match r.affinity_secs {
            Some(secs) => format!("{} (client-ip {secs}s)", r.lb),
            None => r.lb.clone(),
        };
        let head = [
            r.stack.clone(),
            r.service.clone(),
            r.vip.clone().unwrap_or_else(|| "-".into()),
            if r.ports.is_empty() {
                "-".into()
            } else {
                r.ports.join(",")
            },
            lb,
        ];
        for (i, e) in r.endpoints.iter().enumerate() {
            let mut line: Vec<String> = if i == 0 {
                head.to_vec()
            } else {
                vec![String::new(); head.len()]
            };
            line.push(e.container.clone());
            line.push(e.address.clone().unwrap_or_else(|| "-".into()));
            line.push(if e.ready { "ready" } else { "unready" }.into());
            line.push(e.connections.map_or("-".into(), |n| n.to_string()));
            lines.push(line);
        }
    }
    print!(
        "{}",
        table(
            &[
                "STACK",
                "SERVICE",
                "VIP",
                "PORTS",
                "LB",
                "ENDPOINT",
                "ADDRESS",
                "STATE",
                "CONNECTIONS"
            ],
            &lines
        )
    );
}

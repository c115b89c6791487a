//! The cluster's commands: `plumb agent` (in `crate::cluster::agent`), `plumb deploy` (write a
//! stack into the store and wait until the agents run it), `plumb undeploy` and `plumb cluster
//! status` (hosts, where each replica runs, overlay health).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{require_stack_name, Format};
use crate::cluster::store::{Access, Expect, Store, Transport, PLAIN_WARNING};
use crate::cluster::{keys, SpecRecord, StackView, View};
use crate::failure::{Failure, Result};
use crate::output::{count, print_json, say, table};
use crate::{runfile, stackfile};

/// `plumb deploy -f FILE`: validates the file here (errors cite its lines), writes it and a
/// first placement into the store in one transaction, then waits up to `wait` until every
/// placed replica runs and is ready.
/// Connects to the store; a plain http:// one (--insecure) is warned about each time.
fn connect(access: &Access) -> Result<Store> {
    let (store, transport) = Store::connect(access)?;
    if transport == Transport::Plain {
        eprintln!("warning: {PLAIN_WARNING}");
    }
    Ok(store)
}

/// `plumb cluster init`: the cluster's certificates, and how to use them.
pub fn init(out: &Path, store_addresses: &[String], clients: &[String]) -> Result<()> {
    let made = crate::cluster::pki::init(out, store_addresses, clients)?;
    for f in &made.written {
        say!("wrote {}", f.display());
    }
    if !made.kept.is_empty() {
        say!("kept {} file(s) already there (never overwritten)", made.kept.len());
    }
    let store = out.join("store");
    say!(
        "etcd: --cert-file {s}/server.crt --key-file {s}/server.key --trusted-ca-file {s}/ca.crt --client-cert-auth \\\n  \
         --peer-cert-file {s}/server.crt --peer-key-file {s}/server.key --peer-trusted-ca-file {s}/ca.crt --peer-client-cert-auth \\\n  \
         --listen-client-urls https://ADDRESS:2379 --advertise-client-urls https://ADDRESS:2379",
        s = store.display()
    );
    say!(
        "each host: copy {}/clients/NAME to /etc/plumb/tls (or pass --tls), then plumb agent --store https://ADDRESS:2379",
        out.display()
    );
    Ok(())
}

pub fn deploy(store: &Access, file: &Path, wait: Duration, format: Format) -> Result<()> {
    let file = &stackfile::resolve(file);
    let parsed = stackfile::load(file)?;
    let stack = parsed.stack.name.clone();
    let store = connect(store)?;
    let view = View::from_snapshot(&store.get_prefix(keys::ROOT)?);
    let alive = view.alive();
    if alive.is_empty() {
        return Err(Failure::new("no host is in the cluster")
            .hint("start `plumb agent --store URL` on each host first; `plumb cluster status` lists them"));
    }
    let current = view.stacks.get(&stack).cloned().unwrap_or_default();
    let placement = plumb_core::cluster::place(&parsed.stack, &alive, &current.placement);
    let absolute = stackfile::absolute(file);
    let spec = SpecRecord {
        file: file.display().to_string(),
        dir: absolute.parent().map(Path::to_path_buf).unwrap_or_default(),
        text: parsed.text.clone(),
        deployed_ms: runfile::unix_ms(),
    };
    let spec_value = serde_json::to_string(&spec).map_err(|e| Failure::new(e.to_string()))?;
    let placement_value = serde_json::to_string(&placement).map_err(|e| Failure::new(e.to_string()))?;
    let (spec_key, placement_key) = (keys::spec(&stack), keys::placement(&stack));
    let won = store.put_if(
        &[(&placement_key, Expect::ModRevision(current.placement_revision))],
        &[(&spec_key, &spec_value), (&placement_key, &placement_value)],
        None,
    )?;
    if !won {
        return Err(
            Failure::new("the placement changed while deploying (a host joined or left)")
                .hint("run the same `plumb deploy` again"),
        );
    }
    let started = Instant::now();
    let replicas: u32 = parsed.stack.services.values().map(|s| s.replicas).sum();
    let pending = replicas as usize - placement.len();
    if format == Format::Human {
        say!(
            "deployed {stack}: {} over {} ({})",
            count(placement.len(), "replica"),
            count(alive.len(), "host"),
            alive.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        if pending > 0 {
            say!(
                "{} pending: pinned to a host that is not in the cluster",
                count(pending, "replica")
            );
        }
    }
    let mut last_line = String::new();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let ready = loop {
        let view = View::from_snapshot(&store.get_prefix(&keys::stack(&stack))?);
        let sv = view.stacks.get(&stack).cloned().unwrap_or_default();
        let ready = placement
            .iter()
            .filter(|(c, h)| sv.endpoints.get(*c).is_some_and(|e| e.ready && &e.host == *h))
            .count();
        let errors: Vec<String> = sv
            .reports
            .iter()
            .filter_map(|(h, r)| r.error.as_ref().map(|e| format!("{h}: {e}")))
            .collect();
        if ready == placement.len() || started.elapsed() >= wait {
            if format == Format::Human && !last_line.is_empty() {
                eprint!("\r\x1b[K");
            }
            if ready < placement.len() && !errors.is_empty() {
                return Err(Failure::new(format!(
                    "{ready} of {} replicas ready after {:.0?}; hosts report:\n  {}",
                    placement.len(),
                    started.elapsed(),
                    errors.join("\n  ")
                ))
                .hint("fix the cause and deploy again; `plumb cluster status` shows the cluster"));
            }
            break ready;
        }
        if format == Format::Human && tty && started.elapsed() > Duration::from_secs(1) {
            last_line = format!(
                "  {ready}/{} replicas ready ({:.1} s)",
                placement.len(),
                started.elapsed().as_secs_f64()
            );
            eprint!("\r\x1b[K{last_line}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let seconds = started.elapsed().as_secs_f64();
    match format {
        Format::Json => {
            print_json(&serde_json::json!({
                "stack": stack,
                "placement": placement,
                "ready": ready,
                "replicas": placement.len(),
                "pending": pending,
                "seconds": seconds,
            }));
            Ok(())
        }
        Format::Human => {
            say!("{ready}/{} replicas ready in {seconds:.2} s", placement.len());
            if ready < placement.len() {
                return Err(Failure::new("not every replica became ready in time")
                    .hint("`plumb cluster status` shows where each runs; `plumb logs` on that host says why"));
            }
            Ok(())
        }
    }
}

/// `plumb undeploy STACK`: removes the stack's spec, waits until every agent has removed its
/// replicas (and its keys), then clears what is left under the stack's prefix.
pub fn undeploy(store: &Access, stack: &str, wait: Duration) -> Result<()> {
    require_stack_name(stack)?;
    let store = connect(store)?;
    let prefix = keys::stack(stack);
    if store.get_prefix(&prefix)?.entries.is_empty() {
        return Err(Failure::new(format!("stack {stack} is not deployed"))
            .hint("`plumb cluster status` lists the deployed stacks")
            .code(2));
    }
    store.delete(&keys::spec(stack))?;
    store.delete(&keys::placement(stack))?;
    let started = Instant::now();
    loop {
        let left = store.get_prefix(&prefix)?.entries.len();
        if left == 0 {
            break;
        }
        if started.elapsed() >= wait {
            // Hosts that did not answer have lost their leases by now or are gone: their keys
            // go with the prefix; such a host removes the stack when it sees it undeployed.
            say!("some hosts did not confirm in {wait:.0?}: clearing their keys");
            store.delete_prefix(&prefix)?;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    say!("undeployed {stack} in {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[derive(Serialize)]
struct HostRow {
    host: String,
    underlay: String,
    mtu: u32,
    /// Seconds since the agent registered.
    up_secs: u64,
}

#[derive(Serialize)]
struct ReplicaRow {
    stack: String,
    container: String,
    host: Option<String>,
    addresses: BTreeMap<String, String>,
    ready: bool,
}

#[derive(Serialize)]
struct OverlayRow {
    stack: String,
    network: String,
    host: String,
    block: String,
    /// Peers the host has wired, and how many it should have.
    peers: Option<usize>,
    expected_peers: usize,
    /// Whether the host's VXLAN device keeps tx checksum offload (None: not reported yet).
    tx_offload: Option<bool>,
    /// Why: no NAT rule there may rewrite VXLAN, or the rule that may (the workaround).
    tx_offload_why: Option<String>,
}

#[derive(Serialize)]
struct Status {
    hosts: Vec<HostRow>,
    replicas: Vec<ReplicaRow>,
    overlays: Vec<OverlayRow>,
    errors: Vec<String>,
}

pub fn status(store: &Access, format: Format) -> Result<()> {
    let store = connect(store)?;
    let view = View::from_snapshot(&store.get_prefix(keys::ROOT)?);
    let now = runfile::unix_ms();
    let hosts: Vec<HostRow> = view
        .hosts
        .values()
        .map(|(h, _)| HostRow {
            host: h.name.clone(),
            underlay: h.underlay.to_string(),
            mtu: h.mtu,
            up_secs: now.saturating_sub(h.since_ms) / 1000,
        })
        .collect();
    let mut replicas = Vec::new();
    let mut overlays = Vec::new();
    let mut errors = Vec::new();
    for (stack, sv) in &view.stacks {
        replicas.extend(replica_rows(stack, sv));
        for (network, blocks) in &sv.blocks {
            for (block, host) in blocks {
                let offload = sv.reports.get(host).and_then(|r| r.offload.get(network));
                overlays.push(OverlayRow {
                    stack: stack.clone(),
                    network: network.clone(),
                    host: host.clone(),
                    block: block.to_string(),
                    peers: sv.reports.get(host).and_then(|r| r.peers.get(network).copied()),
                    expected_peers: blocks
                        .values()
                        .filter(|h| *h != host && view.hosts.contains_key(*h))
                        .count(),
                    tx_offload: offload.map(|o| o.kept),
                    tx_offload_why: offload.map(|o| o.why.clone()),
                });
            }
        }
        if let Some(why) = &sv.damaged {
            errors.push(format!(
                "{stack}: {why}; the agents keep what runs until `plumb deploy` writes it again"
            ));
        }
        for (host, r) in &sv.reports {
            if let Some(e) = &r.error {
                errors.push(format!("{stack} on {host}: {e}"));
            }
        }
    }
    let status = Status {
        hosts,
        replicas,
        overlays,
        errors,
    };
    if format == Format::Json {
        print_json(&status);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = status
        .hosts
        .iter()
        .map(|h| {
            vec![
                h.host.clone(),
                "alive".into(),
                h.underlay.clone(),
                h.mtu.to_string(),
                format!("{} s", h.up_secs),
            ]
        })
        .collect();
    print!("{}", table(&["HOST", "STATE", "UNDERLAY", "MTU", "UP"], &rows));
    if !status.replicas.is_empty() {
        let rows: Vec<Vec<String>> = status
            .replicas
            .iter()
            .map(|r| {
                let addresses: Vec<String> = r.addresses.iter().map(|(n, a)| format!("{n}={a}")).collect();
                vec![
                    r.stack.clone(),
                    r.container.clone(),
                    r.host.clone().unwrap_or_else(|| "(pending)".into()),
                    if r.ready { "ready" } else { "not ready" }.into(),
                    addresses.join(" "),
                ]
            })
            .collect();
        print!(
            "\n{}",
            table(&["STACK", "CONTAINER", "HOST", "STATE", "ADDRESSES"], &rows)
        );
    }
    if !status.overlays.is_empty() {
        let rows: Vec<Vec<String>> = status
            .overlays
            .iter()
            .map(|o| {
                let wired = o.peers.map_or("?".to_string(), |p| p.to_string());
                let health = if o.peers == Some(o.expected_peers) {
                    "ok"
                } else {
                    "converging"
                };
                vec![
                    o.stack.clone(),
                    o.network.clone(),
                    o.host.clone(),
                    o.block.clone(),
                    format!("{wired}/{} {health}", o.expected_peers),
                    match o.tx_offload {
                        Some(true) => "kept",
                        Some(false) => "off (workaround)",
                        None => "?",
                    }
                    .into(),
                ]
            })
            .collect();
        print!(
            "\n{}",
            table(
                &["STACK", "NETWORK", "HOST", "BLOCK", "PEERS WIRED", "TX CSUM OFFLOAD"],
                &rows
            )
        );
        for o in &status.overlays {
            if let Some(why) = &o.tx_offload_why {
                println!("{} on {} ({}): {why}", o.network, o.host, o.stack);
            }
        }
    }
    for e in &status.errors {
        println!("error: {e}");
    }
    Ok(())
}

fn replica_rows(stack: &str, sv: &StackView) -> Vec<ReplicaRow> {
    let mut names: Vec<&String> = sv.placement.keys().chain(sv.endpoints.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|c| {
            let e = sv.endpoints.get(c);
            ReplicaRow {
                stack: stack.to_string(),
                container: c.clone(),
                host: sv.placement.get(c).cloned().or_else(|| e.map(|e| e.host.clone())),
                addresses: e
                    .map(|e| e.addresses.iter().map(|(n, a)| (n.clone(), a.to_string())).collect())
                    .unwrap_or_default(),
                ready: e.is_some_and(|e| e.ready),
            }
        })
        .collect()
}

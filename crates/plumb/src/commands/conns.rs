//! `plumb conns [TARGET]`: the sockets of each container (listening and connected, TCP and
//! UDP, with the process holding each), read in its namespace through sock_diag as `ss -tunap`
//! does; and the host's tracked flows that involve the stack's addresses, with the NAT each
//! went through (published ports, VIPs, egress masquerade), as `conntrack -L` shows them.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use plumb_core::kernel::{Flow, Kernel, SocketInfo, Transport, Tuple};
use serde_json::{json, Value};

use super::{Context, Format};
use crate::failure::{Failure, Result};
use crate::output::{print_json, table};
use crate::stackfile;

pub fn run(ctx: &Context, target: Option<&str>, format: Format) -> Result<()> {
    let mut kernel = crate::apply::kernel()?;
    let found = gather(ctx, &mut kernel, target)?;
    match format {
        Format::Json => print_json(&found.to_json()),
        Format::Human => {
            let rows: Vec<Vec<String>> = found
                .containers
                .iter()
                .flat_map(|(_, name, socks)| socks.iter().map(|s| socket_row(name, s, &found.held)))
                .collect();
            println!("SOCKETS");
            print!(
                "{}",
                table(&["CONTAINER", "PROTO", "STATE", "LOCAL", "PEER", "PROCESS"], &rows)
            );
            println!("\nFLOWS (host conntrack)");
            let rows: Vec<Vec<String>> = found.flows.iter().map(flow_row).collect();
            print!("{}", table(&["PROTO", "STATE", "FROM", "TO", "NAT", "EXPIRES"], &rows));
        }
    }
    Ok(())
}

/// The sockets of the containers a target names and the host's flows that involve them.
pub struct Connections {
    /// (stack, container, its sockets).
    containers: Vec<(String, String, Vec<SocketInfo>)>,
    held: Held,
    flows: Vec<Flow>,
}

impl Connections {
    /// As `plumb conns --json` prints it (and `plumb ui` serves it).
    pub fn to_json(&self) -> Value {
        json!({
            "sockets": self.containers.iter().flat_map(|(stack, name, socks)| socks.iter().map(|s| socket_json(stack, name, s, &self.held))).collect::<Vec<_>>(),
            "flows": self.flows.iter().map(flow_json).collect::<Vec<_>>(),
        })
    }
}

pub fn gather(ctx: &Context, kernel: &mut dyn Kernel, target: Option<&str>) -> Result<Connections> {
    let targets = stackfile::find_targets(&ctx.state, target)?;
    let mut containers = Vec::new();
    let mut addresses: BTreeSet<Ipv4Addr> = BTreeSet::new();
    for (st, c) in &targets {
        let socks = kernel.sockets_in(&c.netns).map_err(|e| {
            Failure::new(format!("container {} has no namespace: {e}", c.name))
                .hint(format!("`plumb up` in the stack {}'s folder makes it again", st.stack))
        })?;
        addresses.extend(c.interfaces.iter().map(|i| i.address));
        if let Some(desired) = &st.desired {
            addresses.extend(
                desired
                    .services
                    .iter()
                    .filter(|s| s.name == c.service)
                    .filter_map(|s| s.vip),
            );
        }
        containers.push((st.stack.clone(), c.name.clone(), socks));
    }
    // Who holds each socket: one pass over /proc for all the containers.
    let held = kernel.socket_holders();
    let flows: Vec<Flow> = kernel
        .conntrack()?
        .into_iter()
        .filter(|f| f.addresses().iter().any(|a| addresses.contains(a)))
        .collect();
    Ok(Connections {
        containers,
        held,
        flows,
    })
}

fn endpoint(address: IpAddr, port: u16) -> String {
    match address {
        IpAddr::V6(a) => format!("[{a}]:{port}"),
        IpAddr::V4(a) => format!("{a}:{port}"),
    }
}

fn proto(s: &SocketInfo) -> &'static str {
    match s.transport {
        Transport::Tcp => "tcp",
        Transport::Udp => "udp",
    }
}

/// The processes holding a socket: (pid, command name).
type Held = std::collections::BTreeMap<u64, Vec<(u32, String)>>;

fn holders_of<'a>(s: &SocketInfo, held: &'a Held) -> &'a [(u32, String)] {
    held.get(&s.inode).map_or(&[], Vec::as_slice)
}

fn holders(s: &SocketInfo, held: &Held) -> String {
    holders_of(s, held)
        .iter()
        .map(|(pid, name)| format!("{name}[{pid}]"))
        .collect::<Vec<_>>()
        .join(",")
}

fn socket_row(container: &str, s: &SocketInfo, held: &Held) -> Vec<String> {
    let peer = if s.remote.1 == 0 {
        "*".to_string()
    } else {
        endpoint(s.remote.0, s.remote.1)
    };
    vec![
        container.to_string(),
        proto(s).to_string(),
        s.state.to_string(),
        endpoint(s.local.0, s.local.1),
        peer,
        holders(s, held),
    ]
}

fn socket_json(stack: &str, container: &str, s: &SocketInfo, held: &Held) -> Value {
    json!({
        "stack": stack,
        "container": container,
        "protocol": proto(s),
        "state": s.state,
        "local": endpoint(s.local.0, s.local.1),
        "peer": endpoint(s.remote.0, s.remote.1),
        "processes": holders_of(s, held).iter().map(|(pid, name)| json!({"pid": pid, "command": name})).collect::<Vec<_>>(),
    })
}

fn nat_text(f: &Flow) -> String {
    let mut parts = Vec::new();
    if let Some((a, p)) = f.dnat() {
        parts.push(format!("dnat to {a}:{p}"));
    }
    if let Some((a, p)) = f.snat() {
        parts.push(format!("snat to {a}:{p}"));
    }
    parts.join(", ")
}

fn flow_row(f: &Flow) -> Vec<String> {
    let o = &f.original;
    let mut state = f.state.clone();
    if f.unreplied {
        state = format!("{state} unreplied").trim().to_string();
    }
    vec![
        f.protocol.clone(),
        state,
        format!("{}:{}", o.src, o.sport),
        format!("{}:{}", o.dst, o.dport),
        nat_text(f),
        format!("{}s", f.expires),
    ]
}

fn flow_json(f: &Flow) -> Value {
    let tuple = |t: &Tuple| json!({"src": t.src, "dst": t.dst, "sport": t.sport, "dport": t.dport});
    json!({
        "protocol": f.protocol,
        "state": f.state,
        "original": tuple(&f.original),
        "reply": tuple(&f.reply),
        "dnat": f.dnat().map(|(a, p)| format!("{a}:{p}")),
        "snat": f.snat().map(|(a, p)| format!("{a}:{p}")),
        "unreplied": f.unreplied,
        "expires_s": f.expires,
    })
}

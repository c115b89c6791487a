//! `plumb policy why FROM TO:PORT[/PROTO]`: whether a flow is allowed, and the rule and the
//! stack-file line that decide, from the stack's recorded desired state (what `up` applied)
//! through plumb-core's evaluator over the same compiled sets the kernel holds.

use std::net::Ipv4Addr;
use std::path::Path;

use plumb_core::policy::{explain, Explanation, Party};
use plumb_core::spec::Protocol;
use plumb_core::Desired;
use serde_json::json;

use super::{require_stack_name, Context, Format};
use crate::failure::{Failure, Result};
use crate::output::print_json;
use crate::stackfile;
use crate::state::StackState;

/// Which stack: `-s STACK`, the stack of `-f FILE`, or the only one that is up.
pub enum Which<'a> {
    Stack(&'a str),
    File(&'a Path),
    Default,
}

/// What the receiving sidecar judges besides the flow (`--method`, `--path`, `--mtls`).
pub struct L7 {
    pub method: Option<String>,
    pub path: Option<String>,
    pub mtls: bool,
}

pub fn why(ctx: &Context, which: Which, from: &str, to: &str, l7: &L7, format: Format) -> Result<()> {
    let state = stack(ctx, which)?;
    let desired = state.desired.as_ref().ok_or_else(|| {
        bad(format!("stack {} has no recorded desired state", state.stack)).hint("run `plumb up` first")
    })?;
    let (to, port, protocol) = split_target(to)?;
    let src = party(desired, from, None)?;
    let dst = party(desired, to, Some(&src))?;
    let e = explain(desired, &src, &dst, protocol, port);
    let flow = format!("{} -> {}:{port}/{}", show(&src), show(&dst), protocol.as_str());
    // The receiving sidecar's verdict, when the flow reaches a meshed container.
    let sidecar = match (&src, &dst) {
        (Party::Container { address: from, .. } | Party::Outside(from), Party::Container { name, .. })
            if e.allowed && protocol == Protocol::Tcp =>
        {
            desired.containers.iter().find(|c| &c.name == name && c.mesh).map(|c| {
                plumb_core::policy::l7::evaluate_desired(
                    desired,
                    &plumb_core::policy::l7::Request {
                        from: *from,
                        to_service: &c.service,
                        port,
                        method: l7.method.as_deref(),
                        path: l7.path.as_deref(),
                        mtls: l7.mtls,
                    },
                )
            })
        }
        _ => None,
    };
    let allowed = e.allowed && sidecar.as_ref().is_none_or(|v| v.allowed);
    if format == Format::Json {
        print_json(
            &json!({"stack": state.stack, "flow": flow, "allowed": allowed, "explanation": e, "sidecar": sidecar}),
        );
    } else {
        match &sidecar {
            Some(v) if !v.allowed => {
                println!("denied: {flow}");
                println!("  decided by: the receiving sidecar: {} (l7)", v.summary);
                println!("  (the network lets the flow through: {})", e.summary);
            }
            _ => {
                print_human(&flow, &e);
                if let Some(v) = &sidecar {
                    println!("  sidecar: {}", v.summary);
                }
            }
        }
    }
    if allowed {
        Ok(())
    } else {
        // The verdict is the output; exit 1 says "denied" to scripts without a second message.
        Err(Failure::silent(1))
    }
}

fn print_human(flow: &str, e: &Explanation) {
    println!("{}: {flow}", if e.allowed { "allowed" } else { "denied" });
    println!("  decided by: {} ({})", e.summary, e.stage);
    if let Some(v) = &e.policy {
        println!("  rule: {} hook: {}", v.hook, v.rule);
        if let plumb_core::policy::Reason::Allowed { set, element, .. } = &v.reason {
            println!("  element: {element} in @{set}");
        }
    }
}

fn bad(message: impl Into<String>) -> Failure {
    Failure::new(message).code(2)
}

/// The stack a command means: named, of a file, or the only one that is up (`plumb ui` too).
pub fn stack(ctx: &Context, which: Which) -> Result<StackState> {
    let name = match which {
        Which::Stack(s) => {
            require_stack_name(s)?;
            s.to_string()
        }
        Which::File(f) => stackfile::stack_name(f)?,
        Which::Default => {
            let stacks: Vec<String> = ctx.state.stacks()?.into_keys().collect();
            if stacks.is_empty() {
                return Err(bad("no stack is up").hint("bring one up with `plumb up`"));
            }
            stackfile::one_stack(stacks, |s| s.as_str()).map_err(|many| {
                bad(format!("several stacks are up: {}", many.join(", ")))
                    .hint("say which with -s STACK or -f FILE, or run it in the folder of the stack's plumb.toml")
            })?
        }
    };
    ctx.state
        .load(&name)?
        .ok_or_else(|| bad(format!("no stack {name:?} is up")).hint("`plumb ps` lists the stacks that are up"))
}

/// `TO:PORT[/tcp|udp]` ([`plumb_core::policy::parse_target`]).
fn split_target(to: &str) -> Result<(&str, u16, Protocol)> {
    let t = plumb_core::policy::parse_target(to)
        .map_err(|e| bad(e.to_string()).hint("write TO:PORT or TO:PORT/udp, e.g. redis-1:6379 or 10.89.1.5:53/udp"))?;
    Ok((t.name, t.port, t.protocol))
}

/// A container (`web-1`, or a service for its first replica), `host`, `outside`, or an
/// address (a container's, a gateway = the host, or any other = outside). A destination
/// container is addressed on a network the source shares with it, if any.
fn party(d: &Desired, name: &str, from: Option<&Party>) -> Result<Party> {
    match name {
        "host" => return Ok(Party::Host(None)),
        "outside" => return Ok(Party::Outside(outside_address(d))),
        _ => {}
    }
    if let Ok(ip) = name.parse::<Ipv4Addr>() {
        if d.networks.iter().any(|n| n.gateway == ip) {
            return Ok(Party::Host(Some(ip)));
        }
        for c in &d.containers {
            if c.interfaces.iter().any(|i| i.address == ip) {
                return Ok(Party::Container {
                    name: c.name.clone(),
                    address: ip,
                });
            }
        }
        if d.networks.iter().any(|n| n.subnet.contains(&ip)) {
            return Err(bad(format!("no container of stack {} has address {ip}", d.stack))
                .hint("`plumb ps` lists the containers and their addresses"));
        }
        return Ok(Party::Outside(ip));
    }
    let c = d
        .container_or_first(name)
        .ok_or_else(|| {
            bad(format!("no container or service {name:?} in stack {}", d.stack))
                .hint("name a container (web-1), a service (its first replica), host, outside or an IPv4 address; `plumb ps` lists the containers")
        })?;
    let shared = from.and_then(|f| match f {
        Party::Container { name: src, .. } => d.container(src).and_then(|s| {
            c.interfaces
                .iter()
                .find(|i| s.interfaces.iter().any(|j| j.network == i.network))
        }),
        _ => c
            .published_address(&d.networks)
            .and_then(|a| c.interfaces.iter().find(|i| i.address == a)),
    });
    let iface = shared.or(c.interfaces.first()).ok_or_else(|| {
        bad(format!("{} has no network interface", c.name)).hint("it joins no network (networks = [])")
    })?;
    Ok(Party::Container {
        name: c.name.clone(),
        address: iface.address,
    })
}

/// An address no network of the stack holds (for `outside` without an address).
fn outside_address(d: &Desired) -> Ipv4Addr {
    let candidates = ["192.0.2.1", "198.51.100.1", "203.0.113.1"];
    candidates
        .iter()
        .filter_map(|c| c.parse::<Ipv4Addr>().ok())
        .find(|ip| !d.networks.iter().any(|n| n.subnet.contains(ip)))
        .unwrap_or(Ipv4Addr::new(192, 0, 2, 1))
}

fn show(p: &Party) -> String {
    match p {
        Party::Container { name, address } => format!("{name} ({address})"),
        Party::Host(Some(a)) => format!("host ({a})"),
        Party::Host(None) => "host".into(),
        Party::Outside(a) => format!("outside ({a})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_is_not_a_port() {
        assert!(split_target("redis-1:0").is_err());
        assert!(split_target("10.89.1.5:0/udp").is_err());
        assert!(matches!(
            split_target("redis-1:6379"),
            Ok(("redis-1", 6379, Protocol::Tcp))
        ));
    }
}

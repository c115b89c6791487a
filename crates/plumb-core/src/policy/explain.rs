//! The whole answer to `plumb policy why FROM TO:PORT/PROTO`: first what network isolation
//! lets through (the same container, shared networks, published ports, internal networks),
//! which policies never open; then the policy verdict from [`super::evaluate`]; last the
//! host guard, which closes the host to containers except where a policy opens it.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::{compile, evaluate, Endpoint, Query, Verdict};
use crate::desired::{Container, Desired};
use crate::spec::Protocol;

/// One end as the user names it, resolved against the stack.
#[derive(Debug, Clone, PartialEq)]
pub enum Party {
    /// A container, and the address used (for a destination: the one asked for).
    Container { name: String, address: Ipv4Addr },
    /// The host, at this address if known (a gateway, for plumb's DNS).
    Host(Option<Ipv4Addr>),
    /// An address outside the stack's networks.
    Outside(Ipv4Addr),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub allowed: bool,
    /// `local`, `network` or `policy`: which stage decided.
    pub stage: &'static str,
    pub summary: String,
    /// The policy rules' verdict, when they were consulted.
    pub policy: Option<Verdict>,
}

/// Explains one flow.
pub fn explain(desired: &Desired, from: &Party, to: &Party, protocol: Protocol, port: u16) -> Explanation {
    if let Some((allowed, why)) = network(desired, from, to, protocol, port) {
        let stage = if allowed { "local" } else { "network" };
        return Explanation {
            allowed,
            stage,
            summary: why,
            policy: None,
        };
    }
    let endpoint = |p: &Party| match p {
        Party::Container { address, .. } | Party::Outside(address) => Endpoint::Addr(*address),
        Party::Host(at) => Endpoint::Host(*at),
    };
    let verdict = evaluate(
        &compile(desired),
        &Query {
            from: endpoint(from),
            to: endpoint(to),
            protocol,
            port,
        },
    );
    // The host guard (firewall::host): a container reaches the host only at plumb's DNS or
    // where a policy to the host allows, so a flow no policy isolates is still dropped there.
    let guarded = matches!((from, to), (Party::Container { .. }, Party::Host(_)))
        && matches!(verdict.reason, super::Reason::Unrestricted);
    if guarded {
        return Explanation {
            allowed: false,
            stage: "network",
            summary: "the host's own services are closed to containers: only plumb's DNS on the gateways and what a policy to \"host\" allows".to_string(),
            policy: Some(verdict),
        };
    }
    let summary = match &verdict.reason {
        super::Reason::Dns => "plumb's DNS resolver on a gateway is always reachable".to_string(),
        super::Reason::TraceReceiver => "a meshed stack's trace receiver on a gateway is always reachable".to_string(),
        super::Reason::Allowed { policy: Some(i), .. } => {
            format!("allowed by policies[{i}] ({})", desired.policies[*i].source)
        }
        super::Reason::Allowed {
            policy: None, element, ..
        } => format!("allowed by set element {element}"),
        super::Reason::Unrestricted => "no policy isolates either side".to_string(),
        super::Reason::IngressDenied { service, policies } => format!(
            "{service}'s ingress is default-deny ({}) and no policy allows this flow",
            cite(desired, policies)
        ),
        super::Reason::EgressDenied { service, policies } => format!(
            "{service}'s egress is default-deny ({}) and no policy allows this flow",
            cite(desired, policies)
        ),
    };
    Explanation {
        allowed: verdict.allowed,
        stage: "policy",
        summary,
        policy: Some(verdict),
    }
}

fn cite(desired: &Desired, policies: &[usize]) -> String {
    let named: Vec<String> = policies
        .iter()
        .map(|i| format!("policies[{i}] {}", desired.policies[*i].source))
        .collect();
    format!("named by {}", named.join(", "))
}

/// What network isolation decides before any policy: `Some((allowed, why))` when it decides
/// alone (the same container: no firewall; or a denial), `None` when policies decide.
fn network(desired: &Desired, from: &Party, to: &Party, protocol: Protocol, port: u16) -> Option<(bool, String)> {
    let container = |name: &str| desired.container(name);
    match (from, to) {
        (Party::Container { name: a, .. }, Party::Container { name: b, address }) if a == b => Some((
            true,
            format!("{a} reaches its own address {address} inside its namespace"),
        )),
        (Party::Container { name: a, .. }, Party::Container { name: b, address }) => {
            let (src, dst) = (container(a)?, container(b)?);
            let net = network_of(dst, *address)?;
            if src.interfaces.iter().any(|i| i.network == net) {
                None
            } else {
                Some((
                    false,
                    format!("network isolation: {a} is not on network {net} ({b}'s {address})"),
                ))
            }
        }
        (Party::Container { name, .. }, Party::Host(_) | Party::Outside(_)) => {
            let c = container(name)?;
            let outward: Vec<&str> = c
                .interfaces
                .iter()
                .filter(|i| desired.network(&i.network).is_some_and(|n| !n.internal))
                .map(|i| i.network.as_str())
                .collect();
            let what = if matches!(to, Party::Host(_)) {
                "the host"
            } else {
                "the outside"
            };
            if outward.is_empty() {
                Some((
                    false,
                    format!("network isolation: {name} is only on internal networks, which reach nothing of {what}"),
                ))
            } else {
                None
            }
        }
        (Party::Outside(src), Party::Container { name, address }) => {
            let c = container(name)?;
            let published = c.published_address(&desired.networks) == Some(*address)
                && c.ports.iter().any(|p| p.container == port && p.protocol == protocol);
            if published {
                None
            } else {
                Some((
                    false,
                    format!("network isolation: {src} reaches {name} only through a published port, and {address}:{port}/{} is not published", protocol.as_str()),
                ))
            }
        }
        (Party::Host(_), Party::Container { .. }) => None,
        (Party::Host(_) | Party::Outside(_), Party::Host(_) | Party::Outside(_)) => Some((
            false,
            "neither end is a container of the stack: plumb's rules do not apply".to_string(),
        )),
    }
}

fn network_of(c: &Container, address: Ipv4Addr) -> Option<String> {
    c.interfaces
        .iter()
        .find(|i| i.address == address)
        .map(|i| i.network.clone())
}

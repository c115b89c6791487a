//! `plumb policy why`: the verdict of the policy rules for one flow, worked out the way the
//! kernel works it out, from the same compiled sets and maps: the DNS exemption, then the
//! allowed-flow set (`policy_allow`, or the host's sets), then the ingress map of the
//! destination, then the egress map of the source; a flow neither side is isolated for
//! passes. Network isolation (which policies never open) is judged elsewhere.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::{Compiled, Target};
use crate::spec::Protocol;

/// One end of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "address")]
pub enum Endpoint {
    /// A container, or any address that is not the host's.
    Addr(Ipv4Addr),
    /// The host, reached at (or sending from) this address if known.
    Host(Option<Ipv4Addr>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Query {
    pub from: Endpoint,
    pub to: Endpoint,
    pub protocol: Protocol,
    pub port: u16,
}

/// Why a flow is allowed or denied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Reason {
    /// plumb's DNS resolver on a network's gateway is always reachable.
    Dns,
    /// A meshed stack's trace receiver on a gateway is always reachable.
    TraceReceiver,
    /// An element of an allowed-flow set matched; `policy` is the first policy allowing it.
    Allowed {
        set: &'static str,
        element: String,
        policy: Option<usize>,
    },
    /// No policy isolates either side: only network isolation applies.
    Unrestricted,
    /// The destination's service has default-deny ingress and no policy allows the flow.
    IngressDenied { service: String, policies: Vec<usize> },
    /// The source's service has default-deny egress and no policy allows the flow.
    EgressDenied { service: String, policies: Vec<usize> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    /// The hook whose policy chain decides: forward, input (to the host), output (from it).
    pub hook: &'static str,
    /// The rule that decided, as nft holds it.
    pub rule: String,
    #[serde(flatten)]
    pub reason: Reason,
}

/// The policy verdict for `q`.
pub fn evaluate(c: &Compiled, q: &Query) -> Verdict {
    let port = u32::from(q.port);
    match (q.from, q.to) {
        (Endpoint::Host(_), Endpoint::Host(_)) => verdict(
            true,
            "output",
            "(the host to itself: no policy applies)",
            Reason::Unrestricted,
        ),
        (Endpoint::Host(_), Endpoint::Addr(d)) => {
            let d = u32::from(d);
            let hit = c
                .from_host
                .iter()
                .find(|f| f.protocol == q.protocol && f.addr.contains(d) && f.ports.contains(port));
            if let Some(f) = hit {
                let policy = c
                    .grants
                    .iter()
                    .find(|g| g.allows(None, Some(d), q.protocol, q.port))
                    .map(|g| g.index);
                return allowed(
                    "output",
                    "ip daddr . meta l4proto . th dport @policy_from_host accept",
                    "policy_from_host",
                    f.text(),
                    policy,
                );
            }
            isolation(c, "output", None, Some(d))
        }
        (Endpoint::Addr(s), Endpoint::Host(at)) => {
            if q.port == 53 && at.is_some_and(|a| c.gateways.contains(&a)) {
                return verdict(
                    true,
                    "input",
                    "ip daddr { GATEWAYS } meta l4proto { tcp, udp } th dport 53 accept",
                    Reason::Dns,
                );
            }
            if c.trace_receiver
                && q.protocol == Protocol::Tcp
                && q.port == crate::mesh::OTLP_PORT
                && at.is_some_and(|a| c.gateways.contains(&a))
            {
                return verdict(
                    true,
                    "input",
                    "ip daddr { GATEWAYS } tcp dport 4318 accept",
                    Reason::TraceReceiver,
                );
            }
            let s = u32::from(s);
            let hit = c
                .to_host
                .iter()
                .find(|f| f.protocol == q.protocol && f.addr.contains(s) && f.ports.contains(port));
            if let Some(f) = hit {
                let policy = c
                    .grants
                    .iter()
                    .find(|g| g.allows(Some(s), None, q.protocol, q.port))
                    .map(|g| g.index);
                return allowed(
                    "input",
                    "ip saddr . meta l4proto . th dport @policy_to_host accept",
                    "policy_to_host",
                    f.text(),
                    policy,
                );
            }
            isolation(c, "input", Some(s), None)
        }
        (Endpoint::Addr(s), Endpoint::Addr(d)) => {
            let (s, d) = (u32::from(s), u32::from(d));
            let hit = c
                .allow
                .iter()
                .find(|f| f.protocol == q.protocol && f.src.contains(s) && f.dst.contains(d) && f.ports.contains(port));
            if let Some(f) = hit {
                let policy = c
                    .grants
                    .iter()
                    .find(|g| g.allows(Some(s), Some(d), q.protocol, q.port))
                    .map(|g| g.index);
                return allowed(
                    "forward",
                    "ip saddr . ip daddr . meta l4proto . th dport @policy_allow accept",
                    "policy_allow",
                    f.text(),
                    policy,
                );
            }
            isolation(c, "forward", Some(s), Some(d))
        }
    }
}

fn verdict(allowed: bool, hook: &'static str, rule: &str, reason: Reason) -> Verdict {
    Verdict {
        allowed,
        hook,
        rule: rule.to_string(),
        reason,
    }
}

fn allowed(hook: &'static str, rule: &str, set: &'static str, element: String, policy: Option<usize>) -> Verdict {
    verdict(true, hook, rule, Reason::Allowed { set, element, policy })
}

/// No allowed-flow element matched: the destination's ingress map, then the source's egress map.
fn isolation(c: &Compiled, hook: &'static str, src: Option<u32>, dst: Option<u32>) -> Verdict {
    let owner = |a: Option<u32>, targets: &std::collections::BTreeMap<String, Target>| {
        let svc = c.owners.get(&Ipv4Addr::from(a?))?;
        targets.get(svc).map(|t| (svc.clone(), t.policies.clone()))
    };
    if let Some((service, policies)) = owner(dst, &c.ingress) {
        let rule = format!("ip daddr vmap @policy_ingress -> deny_to_{service}: counter drop");
        return verdict(false, hook, &rule, Reason::IngressDenied { service, policies });
    }
    if hook != "output" {
        if let Some((service, policies)) = owner(src, &c.egress) {
            let rule = format!("ip saddr vmap @policy_egress -> deny_from_{service}: counter drop");
            return verdict(false, hook, &rule, Reason::EgressDenied { service, policies });
        }
    }
    verdict(
        true,
        hook,
        "(no policy isolates either side: base chain policy accept)",
        Reason::Unrestricted,
    )
}

//! Egress NAT: containers on a non-internal network reach the outside with the host's address.

use super::{Hook, HookPoint, Rule, Ruleset};
use crate::desired::Desired;

pub fn contribute(desired: &Desired, rules: &mut Ruleset) {
    for net in desired.networks.iter().filter(|n| !n.internal) {
        let (br, subnet, name) = (&net.bridge, net.subnet, &net.name);
        let postrouting = rules.chain("postrouting", Some(Hook::nat(HookPoint::Postrouting)));
        postrouting.rules.push(Rule::new(
            format!("ip saddr {subnet} oifname != \"{br}\" masquerade"),
            format!("{name}: egress NAT"),
        ));
        // A container reaching a published port of its own network (itself included) gets
        // the gateway as source: otherwise the reply skips the host's un-DNAT, and a packet
        // from a container to itself arrives with its own address as source and is dropped.
        postrouting.rules.push(Rule::new(
            format!("oifname \"{br}\" ip saddr {subnet} ct status dnat masquerade"),
            format!("{name}: hairpin to published ports"),
        ));
    }
}

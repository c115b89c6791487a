//! Egress NAT: containers on a non-internal network reach the outside with the host's address.
//! And hairpin NAT, on every network: a connection DNATed (a published port, a virtual IP)
//! back into the network it came from gets the gateway as source.

use super::{Hook, HookPoint, Rule, Ruleset};
use crate::desired::Desired;

pub fn contribute(desired: &Desired, rules: &mut Ruleset) {
    for net in &desired.networks {
        let (br, subnet, name) = (&net.bridge, net.subnet, &net.name);
        let postrouting = rules.chain("postrouting", Some(Hook::nat(HookPoint::Postrouting)));
        match (&net.overlay, net.internal) {
            (_, true) => {}
            // Within an overlay, sources are preserved across hosts.
            (Some(o), false) => postrouting.rules.push(Rule::new(
                format!(
                    "ip saddr {subnet} ip daddr != {} oifname != \"{br}\" masquerade",
                    o.subnet
                ),
                format!("{name}: egress NAT (not within the overlay)"),
            )),
            (None, false) => postrouting.rules.push(Rule::new(
                format!("ip saddr {subnet} oifname != \"{br}\" masquerade"),
                format!("{name}: egress NAT"),
            )),
        }
        // A container reaching a published port or a VIP whose replica is on its own network
        // (itself included) gets the gateway as source: otherwise the replica's reply goes
        // straight over the bridge, skipping the host's un-DNAT, and the client drops it (its
        // source is not the address it called); a packet from a container to itself would
        // arrive with its own address as source and be dropped.
        if !net.internal || has_vips(desired) {
            postrouting.rules.push(Rule::new(
                format!("oifname \"{br}\" ip saddr {subnet} ct status dnat masquerade"),
                format!("{name}: hairpin to published ports and virtual IPs"),
            ));
        }
    }
}

fn has_vips(desired: &Desired) -> bool {
    desired.services.iter().any(|s| s.vip.is_some())
}

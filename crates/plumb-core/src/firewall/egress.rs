//! Egress NAT: containers on a non-internal network reach the outside with the host's address.

use super::{Hook, HookPoint, Rule, Ruleset};
use crate::desired::Desired;

pub fn contribute(desired: &Desired, rules: &mut Ruleset) {
    for net in desired.networks.iter().filter(|n| !n.internal) {
        let postrouting = rules.chain("postrouting", Some(Hook::nat(HookPoint::Postrouting)));
        postrouting.rules.push(Rule::new(
            format!("ip saddr {} oifname != \"{}\" masquerade", net.subnet, net.bridge),
            format!("{}: egress NAT", net.name),
        ));
    }
}

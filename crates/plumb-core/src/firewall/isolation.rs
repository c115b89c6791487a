//! Isolation between networks: a plumb network talks to no other plumb network (of any stack),
//! and nothing leaves an internal network (nothing enters any network: see `inbound`).

use super::{Hook, HookPoint, Rule, Ruleset};
use crate::desired::Desired;
use crate::names::BRIDGE_PREFIX;

pub fn contribute(desired: &Desired, rules: &mut Ruleset) {
    let forward = rules.chain("forward", Some(Hook::filter(HookPoint::Forward)));
    for net in &desired.networks {
        let (br, name) = (&net.bridge, &net.name);
        if net.internal {
            forward.rules.push(Rule::new(
                format!("iifname \"{br}\" oifname != \"{br}\" drop"),
                format!("{name}: internal, nothing leaves"),
            ));
        } else {
            forward.rules.push(Rule::new(
                format!("iifname \"{br}\" oifname != \"{br}\" oifname \"{BRIDGE_PREFIX}*\" drop"),
                format!("{name}: no traffic to other plumb networks"),
            ));
        }
    }
}

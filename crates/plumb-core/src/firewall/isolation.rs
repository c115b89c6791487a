//! Isolation between networks: a plumb network talks to no other plumb network (of any stack),
//! and an internal network talks to nothing outside itself.

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
            forward.rules.push(Rule::new(
                format!("oifname \"{br}\" iifname != \"{br}\" drop"),
                format!("{name}: internal, nothing enters"),
            ));
        } else {
            forward.rules.push(Rule::new(
                format!("iifname \"{br}\" oifname != \"{br}\" oifname \"{BRIDGE_PREFIX}*\" drop"),
                format!("{name}: no traffic to other plumb networks"),
            ));
        }
    }
}

//! What may enter a container network from outside it: replies to connections made from
//! inside (conntrack), and traffic a published port's DNAT sent there; nothing else, so a
//! machine that routes a stack's subnet via the host reaches no unpublished port (Docker 28
//! drops such direct routed access too). And what may leave it: only packets with a source
//! address of the network (a container cannot send off-subnet sources out).

use super::{Hook, HookPoint, Rule, Ruleset};
use crate::desired::Desired;

pub fn contribute(desired: &Desired, rules: &mut Ruleset) {
    let vip_subnet = desired
        .service_subnet
        .filter(|_| desired.services.iter().any(|s| s.vip.is_some()));
    let forward = rules.chain("forward", Some(Hook::filter(HookPoint::Forward)));
    forward.rules.push(Rule::new(
        "ct state established,related accept",
        "replies to connections already allowed",
    ));
    for net in &desired.networks {
        let (br, name, subnet) = (&net.bridge, &net.name, net.subnet);
        forward.rules.push(Rule::new(
            format!("iifname \"{br}\" ip saddr != {subnet} drop"),
            format!("{name}: no spoofed sources leave"),
        ));
        if !net.internal {
            forward.rules.push(Rule::new(
                format!("oifname \"{br}\" iifname != \"{br}\" ct status dnat accept"),
                format!("{name}: published ports enter"),
            ));
        } else if let Some(subnet) = vip_subnet {
            // The load balancer sends a VIP connection here only from a container that is on
            // this network too (its default route being another one).
            forward.rules.push(Rule::new(
                format!("oifname \"{br}\" iifname != \"{br}\" ct status dnat ct original ip daddr {subnet} accept"),
                format!("{name}: VIP connections of containers also on it enter"),
            ));
        }
        forward.rules.push(Rule::new(
            format!("oifname \"{br}\" iifname != \"{br}\" drop"),
            format!("{name}: nothing else enters (no routed access to containers)"),
        ));
    }
}

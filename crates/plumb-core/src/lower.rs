//! Lowering: each kind of step as the kernel operations that make it, in order. This is the
//! only place that knows what "make a container" means in operations; execution and
//! rendering both read the result.

use crate::desired::{Container, Network};
use crate::firewall::NftChange;
use crate::ops::{At, Ipv6, Op};
use crate::plan::{Step, What, STOP_GRACE_MS};
use crate::zone;

fn sysctl(key: String, value: &str) -> Op {
    Op::Sysctl {
        key,
        value: value.into(),
    }
}

pub fn enable_forwarding() -> Step {
    Step {
        what: What::EnableForwarding,
        ops: vec![sysctl("net.ipv4.ip_forward".into(), "1")],
    }
}

pub fn stop_processes(namespaces: Vec<String>) -> Step {
    Step {
        ops: vec![Op::StopProcesses {
            namespaces: namespaces.clone(),
            grace_ms: STOP_GRACE_MS,
        }],
        what: What::StopProcesses { namespaces },
    }
}

pub fn remove_links(group: u32, links: Vec<String>, networks: Vec<String>) -> Step {
    let mut ops: Vec<Op> = links
        .iter()
        .map(|l| Op::LinkSetGroup { link: l.clone(), group })
        .collect();
    ops.push(Op::LinkDelGroup {
        group,
        links: links.clone(),
    });
    Step {
        what: What::RemoveLinks { links, networks },
        ops,
    }
}

pub fn delete_container(container: String, netns: String) -> Step {
    Step {
        ops: vec![
            Op::EtcNetnsDel { netns: netns.clone() },
            Op::NetnsDel { name: netns.clone() },
        ],
        what: What::DeleteContainer { container, netns },
    }
}

pub fn create_bridge(net: &Network) -> Step {
    let br = &net.bridge;
    let host = At::Host;
    Step {
        what: What::CreateBridge {
            network: net.name.clone(),
            bridge: br.clone(),
        },
        ops: vec![
            Op::BridgeAdd {
                name: br.clone(),
                mac: net.bridge_mac_text(),
            },
            Op::LinkAlias {
                at: host.clone(),
                link: br.clone(),
                alias: net.alias.clone(),
                ipv6: Ipv6::Keep,
            },
            sysctl(format!("net.ipv6.conf.{br}.disable_ipv6"), "1"),
            sysctl(format!("net.ipv4.conf.{br}.route_localnet"), "1"),
            Op::AddrAdd {
                at: host.clone(),
                link: br.clone(),
                cidr: net.gateway_cidr(),
            },
            Op::LinkUp {
                at: host,
                link: br.clone(),
            },
        ],
    }
}

pub fn firewall(what: What, changes: Vec<NftChange>) -> Step {
    Step {
        what,
        ops: vec![Op::Nft { changes }],
    }
}

pub fn create_container(stack: &str, c: &Container) -> Step {
    let ns = &c.netns;
    let inside = At::Netns(ns.clone());
    let mut ops = vec![
        Op::NetnsAdd { name: ns.clone() },
        Op::ResolvConf {
            netns: ns.clone(),
            content: zone::resolv_conf(stack, c.gateway),
        },
        Op::LinkUp {
            at: inside.clone(),
            link: "lo".into(),
        },
    ];
    for i in &c.interfaces {
        ops.push(Op::VethAdd {
            name: i.host_veth.clone(),
            bridge: i.bridge.clone(),
            peer: i.name.clone(),
            netns: ns.clone(),
            peer_mac: i.mac.clone(),
        });
        // Host ends carry no IPv6: otherwise every new port floods DAD/RS/MLD to all others.
        ops.push(sysctl(format!("net.ipv6.conf.{}.disable_ipv6", i.host_veth), "1"));
        // Hairpin: a container reaching its own published port is bridged back to its port.
        ops.push(Op::BridgePortUp {
            link: i.host_veth.clone(),
        });
        ops.push(Op::LinkAlias {
            at: inside.clone(),
            link: i.name.clone(),
            alias: i.alias.clone(),
            ipv6: Ipv6::NoAddresses,
        });
        ops.push(Op::AddrAdd {
            at: inside.clone(),
            link: i.name.clone(),
            cidr: i.cidr(),
        });
        ops.push(Op::LinkUp {
            at: inside.clone(),
            link: i.name.clone(),
        });
    }
    if let Some(gateway) = c.gateway {
        ops.push(Op::DefaultRoute { at: inside, gateway });
    }
    Step {
        what: What::CreateContainer {
            container: c.name.clone(),
            service: c.service.clone(),
            replica: c.replica,
        },
        ops,
    }
}

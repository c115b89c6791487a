//! Lowering: each kind of step as the kernel operations that make it, in order. This is the
//! only place that knows what "make a container" means in operations; execution and
//! rendering both read the result.

use crate::cluster::VXLAN_PORT;
use crate::desired::{Container, Network, Overlay};
use crate::firewall::NftChange;
use crate::ops::{At, Ipv6, Op};
use crate::plan::{vtep_cidr, vxlan_alias, OverlayEntries, Step, What, STOP_GRACE_MS};
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

pub fn disable_forwarding() -> Step {
    Step {
        what: What::DisableForwarding,
        ops: vec![sysctl("net.ipv4.ip_forward".into(), "0")],
    }
}

/// Links of `net` set to its MTU (none: no step).
pub fn set_mtu(net: &Network, ops: Vec<Op>) -> Option<Step> {
    let mtu = ops.iter().find_map(|op| match op {
        Op::LinkMtu { mtu, .. } => Some(*mtu),
        _ => None,
    })?;
    Some(Step {
        what: What::SetMtu {
            network: net.name.clone(),
            mtu,
        },
        ops,
    })
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
                mac: net.bridge_mac(),
                mtu: net.mtu(),
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

/// An overlay network's VXLAN device (not a port of the bridge: the host routes between
/// them, per-host blocks as flannel's vxlan backend), its VTEP address, and every peer's
/// entries.
pub fn create_overlay(stack: &str, net: &Network, overlay: &Overlay) -> Step {
    let dev = &overlay.device;
    let host = At::Host;
    let mut ops = vec![
        Op::VxlanAdd {
            name: dev.clone(),
            vni: overlay.vni,
            local: overlay.local,
            port: VXLAN_PORT,
            mac: overlay.mac,
            mtu: overlay.mtu,
        },
        Op::LinkAlias {
            at: host.clone(),
            link: dev.clone(),
            alias: vxlan_alias(stack, &net.name),
            ipv6: Ipv6::Keep,
        },
        sysctl(format!("net.ipv6.conf.{dev}.disable_ipv6"), "1"),
    ];
    if !overlay.tx_offload {
        ops.push(Op::TxChecksumOff { link: dev.clone() });
    }
    ops.extend([
        Op::AddrAdd {
            at: host.clone(),
            link: dev.clone(),
            cidr: vtep_cidr(net),
        },
        Op::LinkUp {
            at: host,
            link: dev.clone(),
        },
    ]);
    let entries = OverlayEntries::wanted(stack, &net.name, overlay);
    ops.extend(entry_ops(dev, &OverlayEntries::default(), &entries));
    Step {
        what: What::CreateOverlay {
            network: net.name.clone(),
            device: dev.clone(),
            offload: overlay.tx_offload_why.clone(),
        },
        ops,
    }
}

/// Peers' entries changed in place: the stale ones removed, then the new ones added.
pub fn update_overlay(net: &Network, overlay: &Overlay, gone: &OverlayEntries, new: &OverlayEntries) -> Step {
    Step {
        what: What::UpdateOverlay {
            network: net.name.clone(),
            device: overlay.device.clone(),
        },
        ops: entry_ops(&overlay.device, gone, new),
    }
}

/// Removals first (a route or neighbour replaced for the same key must go before its
/// successor comes), then, per entry kind in the order a packet needs them: FDB (MAC →
/// underlay), neighbour (VTEP address → MAC), route (block → VTEP address).
fn entry_ops(dev: &str, gone: &OverlayEntries, new: &OverlayEntries) -> Vec<Op> {
    let link = || dev.to_string();
    let mut ops = Vec::new();
    for (destination, via) in &gone.routes {
        ops.push(Op::OnlinkRouteDel {
            destination: *destination,
            via: *via,
            link: link(),
        });
    }
    for (address, _) in &gone.neighbours {
        ops.push(Op::NeighDel {
            link: link(),
            address: *address,
        });
    }
    for (mac, dst) in &gone.fdb {
        ops.push(Op::FdbDel {
            link: link(),
            mac: *mac,
            dst: *dst,
        });
    }
    for (mac, dst) in &new.fdb {
        ops.push(Op::FdbAdd {
            link: link(),
            mac: *mac,
            dst: *dst,
        });
    }
    for (address, mac) in &new.neighbours {
        ops.push(Op::NeighAdd {
            link: link(),
            address: *address,
            mac: *mac,
        });
    }
    for (destination, via) in &new.routes {
        ops.push(Op::OnlinkRouteAdd {
            destination: *destination,
            via: *via,
            link: link(),
        });
    }
    ops
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
    let namespace = match &c.external {
        Some(path) => Op::NetnsAttach {
            name: ns.clone(),
            path: path.clone(),
        },
        None => Op::NetnsAdd { name: ns.clone() },
    };
    let mut ops = vec![
        namespace,
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
            peer_mac: i.mac,
            mtu: i.mtu,
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
    if c.mesh {
        ops.push(Op::NetnsNft {
            netns: ns.clone(),
            script: crate::mesh::interception_script(),
        });
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

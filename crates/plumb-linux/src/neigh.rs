//! Neighbour entries: permanent IPv4 neighbours (an address's MAC, no ARP) and a VXLAN
//! device's FDB entries (a MAC's remote underlay address), which the kernel keeps as
//! neighbour messages of the bridge family. Add, delete, read back.

use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use plumb_core::Mac;

use crate::netlink::{Netlink, Result};

fn message(family: AddressFamily, index: u32) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = family;
    m.header.ifindex = index;
    m
}

/// `ip neigh add ADDRESS lladdr MAC dev DEV nud permanent`
pub fn add_permanent(nl: &mut Netlink, index: u32, address: Ipv4Addr, mac: [u8; 6]) -> Result<()> {
    let mut m = message(AddressFamily::Inet, index);
    m.header.state = NeighbourState::Permanent;
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(address)));
    m.attributes.push(NeighbourAttribute::LinkLocalAddress(mac.to_vec()));
    nl.request(RouteNetlinkMessage::NewNeighbour(m), NLM_F_CREATE | NLM_F_EXCL, || {
        format!("add neighbour {address}")
    })
}

/// `ip neigh del ADDRESS dev DEV`
pub fn delete(nl: &mut Netlink, index: u32, address: Ipv4Addr) -> Result<()> {
    let mut m = message(AddressFamily::Inet, index);
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(address)));
    nl.request(RouteNetlinkMessage::DelNeighbour(m), 0, || {
        format!("delete neighbour {address}")
    })
}

/// The permanent IPv4 neighbours on link `index`: (address, MAC).
pub fn permanent(nl: &mut Netlink, index: u32) -> Result<Vec<(Ipv4Addr, Mac)>> {
    let query = message(AddressFamily::Inet, 0);
    let replies = nl.dump(RouteNetlinkMessage::GetNeighbour(query), || "list neighbours".into())?;
    let mut out = Vec::new();
    for reply in replies {
        let RouteNetlinkMessage::NewNeighbour(n) = reply else {
            continue;
        };
        if n.header.ifindex != index || n.header.state != NeighbourState::Permanent {
            continue;
        }
        let (mut address, mut mac) = (None, None);
        for a in n.attributes {
            match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => address = Some(ip),
                NeighbourAttribute::LinkLocalAddress(bytes) => mac = Mac::from_bytes(&bytes),
                _ => {}
            }
        }
        if let (Some(address), Some(mac)) = (address, mac) {
            out.push((address, mac));
        }
    }
    Ok(out)
}

fn fdb_message(index: u32, mac: [u8; 6], dst: Ipv4Addr) -> NeighbourMessage {
    let mut m = message(AddressFamily::Bridge, index);
    m.header.state = NeighbourState::Permanent;
    // NTF_SELF: the entry is the device's own (the VXLAN FDB), not a bridge master's.
    m.header.flags = NeighbourFlags::Own;
    m.attributes.push(NeighbourAttribute::LinkLocalAddress(mac.to_vec()));
    m.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Other(
            dst.octets().to_vec(),
        )));
    m
}

/// `bridge fdb add MAC dev DEV dst DST self permanent`
pub fn fdb_add(nl: &mut Netlink, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<()> {
    nl.request(
        RouteNetlinkMessage::NewNeighbour(fdb_message(index, mac, dst)),
        NLM_F_CREATE | NLM_F_EXCL,
        || format!("add FDB entry {} dst {dst}", Mac(mac)),
    )
}

/// `bridge fdb del MAC dev DEV dst DST self`
pub fn fdb_delete(nl: &mut Netlink, index: u32, mac: [u8; 6], dst: Ipv4Addr) -> Result<()> {
    nl.request(
        RouteNetlinkMessage::DelNeighbour(fdb_message(index, mac, dst)),
        0,
        || format!("delete FDB entry {} dst {dst}", Mac(mac)),
    )
}

/// The FDB entries of link `index` with a remote IPv4 destination: (MAC, destination).
pub fn fdb(nl: &mut Netlink, index: u32) -> Result<Vec<(Mac, Ipv4Addr)>> {
    let query = message(AddressFamily::Bridge, 0);
    let replies = nl.dump(RouteNetlinkMessage::GetNeighbour(query), || "list FDB entries".into())?;
    let mut out = Vec::new();
    for reply in replies {
        let RouteNetlinkMessage::NewNeighbour(n) = reply else {
            continue;
        };
        if n.header.ifindex != index {
            continue;
        }
        let (mut mac, mut dst) = (None, None);
        for a in n.attributes {
            match a {
                NeighbourAttribute::LinkLocalAddress(bytes) => mac = Mac::from_bytes(&bytes),
                NeighbourAttribute::Destination(NeighbourAddress::Other(b)) if b.len() == 4 => {
                    dst = Some(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => dst = Some(ip),
                _ => {}
            }
        }
        if let (Some(mac), Some(dst)) = (mac, dst) {
            out.push((mac, dst));
        }
    }
    Ok(out)
}

//! IPv4 routes: the default route of a container, and reading it back.

use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netlink::{Netlink, Result};

pub fn add_default_v4(nl: &mut Netlink, gateway: Ipv4Addr) -> Result<()> {
    let mut message = RouteMessage::default();
    message.header.address_family = AddressFamily::Inet;
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    message.header.protocol = RouteProtocol::Boot;
    message.header.scope = RouteScope::Universe;
    message.header.kind = RouteType::Unicast;
    message
        .attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
    nl.request(
        RouteNetlinkMessage::NewRoute(message),
        NLM_F_CREATE | NLM_F_EXCL,
        || format!("add default route via {gateway}"),
    )
}

fn onlink_route(destination: ipnet::Ipv4Net, via: Ipv4Addr, index: u32) -> RouteMessage {
    let mut message = RouteMessage::default();
    message.header.address_family = AddressFamily::Inet;
    message.header.destination_prefix_length = destination.prefix_len();
    message.header.table = RouteHeader::RT_TABLE_MAIN;
    message.header.protocol = RouteProtocol::Boot;
    message.header.scope = RouteScope::Universe;
    message.header.kind = RouteType::Unicast;
    message.header.flags = RouteFlags::Onlink;
    message
        .attributes
        .push(RouteAttribute::Destination(RouteAddress::Inet(destination.network())));
    message
        .attributes
        .push(RouteAttribute::Gateway(RouteAddress::Inet(via)));
    message.attributes.push(RouteAttribute::Oif(index));
    message
}

/// `ip route add DESTINATION via VIA dev DEV onlink`: the next hop is taken as directly
/// reachable on the link whatever its addresses (a peer's VTEP on a VXLAN device).
pub fn add_onlink(nl: &mut Netlink, destination: ipnet::Ipv4Net, via: Ipv4Addr, index: u32) -> Result<()> {
    nl.request(
        RouteNetlinkMessage::NewRoute(onlink_route(destination, via, index)),
        NLM_F_CREATE | NLM_F_EXCL,
        || format!("add route {destination} via {via} onlink"),
    )
}

/// `ip route del DESTINATION via VIA dev DEV`
pub fn delete_via(nl: &mut Netlink, destination: ipnet::Ipv4Net, via: Ipv4Addr, index: u32) -> Result<()> {
    nl.request(
        RouteNetlinkMessage::DelRoute(onlink_route(destination, via, index)),
        0,
        || format!("delete route {destination} via {via}"),
    )
}

/// The main table's IPv4 routes out of link `index` with a gateway: (destination, gateway).
pub fn via_link(nl: &mut Netlink, index: u32) -> Result<Vec<(ipnet::Ipv4Net, Ipv4Addr)>> {
    let mut query = RouteMessage::default();
    query.header.address_family = AddressFamily::Inet;
    let replies = nl.dump(RouteNetlinkMessage::GetRoute(query), || "list routes".into())?;
    let mut out = Vec::new();
    for m in replies {
        let RouteNetlinkMessage::NewRoute(r) = m else { continue };
        if r.header.table != RouteHeader::RT_TABLE_MAIN {
            continue;
        }
        let (mut destination, mut gateway, mut oif) = (Ipv4Addr::UNSPECIFIED, None, None);
        for attribute in &r.attributes {
            match attribute {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => destination = *d,
                RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(*g),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        let net = ipnet::Ipv4Net::new(destination, r.header.destination_prefix_length).ok();
        if let (Some(net), Some(gateway), Some(i)) = (net, gateway, oif) {
            if i == index {
                out.push((net, gateway));
            }
        }
    }
    Ok(out)
}

/// The gateway of the IPv4 default route in the main table, if there is one.
pub fn default_gateway_v4(nl: &mut Netlink) -> Result<Option<Ipv4Addr>> {
    let mut query = RouteMessage::default();
    query.header.address_family = AddressFamily::Inet;
    let replies = nl.dump(RouteNetlinkMessage::GetRoute(query), || "list routes".into())?;
    for m in replies {
        let RouteNetlinkMessage::NewRoute(r) = m else {
            continue;
        };
        if r.header.destination_prefix_length != 0 || r.header.table != RouteHeader::RT_TABLE_MAIN {
            continue;
        }
        for attribute in &r.attributes {
            if let RouteAttribute::Gateway(RouteAddress::Inet(gw)) = attribute {
                return Ok(Some(*gw));
            }
        }
    }
    Ok(None)
}

/// The IPv4 routes of the main table other than default routes, as (destination, output
/// link index).
pub fn list_v4(nl: &mut Netlink) -> Result<Vec<(ipnet::Ipv4Net, Option<u32>)>> {
    let mut query = RouteMessage::default();
    query.header.address_family = AddressFamily::Inet;
    let replies = nl.dump(RouteNetlinkMessage::GetRoute(query), || "list routes".into())?;
    let mut out = Vec::new();
    for m in replies {
        let RouteNetlinkMessage::NewRoute(r) = m else { continue };
        let prefix = r.header.destination_prefix_length;
        if prefix == 0 || r.header.table != RouteHeader::RT_TABLE_MAIN {
            continue;
        }
        let mut destination = None;
        let mut oif = None;
        for attribute in &r.attributes {
            match attribute {
                RouteAttribute::Destination(RouteAddress::Inet(d)) => destination = Some(*d),
                RouteAttribute::Oif(i) => oif = Some(*i),
                _ => {}
            }
        }
        if let Some(net) = destination.and_then(|d| ipnet::Ipv4Net::new(d, prefix).ok()) {
            out.push((net, oif));
        }
    }
    Ok(out)
}

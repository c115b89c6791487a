//! IPv4 routes: the default route of a container, and reading it back.

use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
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

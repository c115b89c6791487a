//! IPv4 addresses on links: add one, read them back.

use std::net::IpAddr;

use ipnet::Ipv4Net;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::netlink::{Netlink, Result};

pub fn add_v4(nl: &mut Netlink, index: u32, cidr: Ipv4Net) -> Result<()> {
    let mut message = AddressMessage::default();
    message.header.family = AddressFamily::Inet;
    message.header.prefix_len = cidr.prefix_len();
    message.header.index = index;
    let ip = IpAddr::V4(cidr.addr());
    message.attributes.push(AddressAttribute::Local(ip));
    message.attributes.push(AddressAttribute::Address(ip));
    message.attributes.push(AddressAttribute::Broadcast(cidr.broadcast()));
    nl.request(
        RouteNetlinkMessage::NewAddress(message),
        NLM_F_CREATE | NLM_F_EXCL,
        || format!("add address {cidr}"),
    )
}

/// Every IPv4 address of the socket's namespace, as (link index, address/prefix).
pub fn list_v4(nl: &mut Netlink) -> Result<Vec<(u32, Ipv4Net)>> {
    let mut query = AddressMessage::default();
    query.header.family = AddressFamily::Inet;
    let replies = nl.dump(RouteNetlinkMessage::GetAddress(query), || "list addresses".into())?;
    let mut out = Vec::new();
    for m in replies {
        let RouteNetlinkMessage::NewAddress(a) = m else {
            continue;
        };
        for attribute in &a.attributes {
            if let AddressAttribute::Local(IpAddr::V4(ip)) = attribute {
                if let Ok(net) = Ipv4Net::new(*ip, a.header.prefix_len) {
                    out.push((a.header.index, net));
                }
            }
        }
    }
    Ok(out)
}

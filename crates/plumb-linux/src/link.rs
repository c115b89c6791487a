//! Links: create bridges and veth pairs, bring them up, label them, read them back, delete them.

use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, InfoBridge, InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth,
    InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::RouteNetlinkMessage;
use plumb_core::Mac;

use crate::netlink::{Netlink, Result};

/// IN6_ADDR_GEN_MODE_NONE: no IPv6 link-local address, so no DAD or router solicitations.
const ADDR_GEN_MODE_NONE: u8 = 1;

/// A link as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub alias: Option<String>,
    /// Index of the bridge this link is a port of.
    pub master: Option<u32>,
    pub up: bool,
    pub kind: Option<String>,
    /// The interface group (0 unless someone set one).
    pub group: u32,
    pub mac: Option<Mac>,
    pub mtu: Option<u32>,
}

/// Every link of the socket's namespace.
pub fn list(nl: &mut Netlink) -> Result<Vec<Link>> {
    let replies = nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()), || {
        "list links".into()
    })?;
    Ok(replies
        .into_iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
            _ => None,
        })
        .collect())
}

pub use plumb_core::kernel::LinkCounters as Counters;

/// The counters of every link of the socket's namespace, by name (one dump, as `ip -s link`).
pub fn counters(nl: &mut Netlink) -> Result<std::collections::BTreeMap<String, Counters>> {
    let replies = nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()), || {
        "read link counters".into()
    })?;
    let mut out = std::collections::BTreeMap::new();
    for reply in replies {
        let RouteNetlinkMessage::NewLink(message) = reply else {
            continue;
        };
        let mut name = None;
        let mut counters = Counters::default();
        for attribute in message.attributes {
            match attribute {
                LinkAttribute::IfName(n) => name = Some(n),
                LinkAttribute::Stats64(s) => {
                    counters = Counters {
                        rx_bytes: s.rx_bytes,
                        tx_bytes: s.tx_bytes,
                        rx_packets: s.rx_packets,
                        tx_packets: s.tx_packets,
                        rx_dropped: s.rx_dropped,
                        tx_dropped: s.tx_dropped,
                    }
                }
                _ => {}
            }
        }
        if let Some(name) = name {
            out.insert(name, counters);
        }
    }
    Ok(out)
}

fn link_of(message: LinkMessage) -> Link {
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        alias: None,
        master: None,
        up: message.header.flags.contains(LinkFlags::Up),
        kind: None,
        group: 0,
        mac: None,
        mtu: None,
    };
    for attribute in message.attributes {
        match attribute {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::IfAlias(a) => link.alias = Some(a),
            LinkAttribute::Controller(m) => link.master = Some(m),
            LinkAttribute::Group(g) => link.group = g,
            LinkAttribute::Mtu(m) => link.mtu = Some(m),
            LinkAttribute::Address(bytes) => link.mac = Mac::from_bytes(&bytes),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Kind(kind) = info {
                        link.kind = Some(kind.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

/// Creates a bridge with a fixed MAC address and multicast snooping off (snooping re-arms
/// timers on every port whenever one changes: quadratic work at scale).
pub fn create_bridge(nl: &mut Netlink, name: &str, mac: [u8; 6], mtu: Option<u32>) -> Result<()> {
    let mut message = LinkMessage::default();
    message.attributes.push(LinkAttribute::IfName(name.into()));
    message.attributes.extend(mtu.map(LinkAttribute::Mtu));
    // A bridge without an address of its own takes its ports' lowest one, and recomputes it
    // (notifying every listener) as ports come and go.
    message.attributes.push(LinkAttribute::Address(mac.to_vec()));
    message.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Bridge),
        LinkInfo::Data(InfoData::Bridge(vec![InfoBridge::MulticastSnooping(0)])),
    ]));
    nl.request(RouteNetlinkMessage::NewLink(message), NLM_F_CREATE | NLM_F_EXCL, || {
        format!("create bridge {name}")
    })
}

/// Creates a veth pair in one request: `name` here, attached to bridge `master`, and its peer
/// (name and MAC address) placed straight into the namespace `peer_netns`.
pub fn create_veth(
    nl: &mut Netlink,
    name: &str,
    master: u32,
    (peer_name, peer_mac): (&str, [u8; 6]),
    peer_netns: BorrowedFd,
    mtu: Option<u32>,
) -> Result<()> {
    let mut peer = LinkMessage::default();
    peer.attributes.push(LinkAttribute::IfName(peer_name.into()));
    peer.attributes.extend(mtu.map(LinkAttribute::Mtu));
    peer.attributes.push(LinkAttribute::Address(peer_mac.to_vec()));
    peer.attributes.push(LinkAttribute::NetNsFd(peer_netns.as_raw_fd()));
    let mut message = LinkMessage::default();
    message.attributes.push(LinkAttribute::IfName(name.into()));
    message.attributes.extend(mtu.map(LinkAttribute::Mtu));
    message.attributes.push(LinkAttribute::Controller(master));
    message.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    nl.request(RouteNetlinkMessage::NewLink(message), NLM_F_CREATE | NLM_F_EXCL, || {
        format!("create veth {name}")
    })
}

/// A VXLAN device's settings, from `create_vxlan` or as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vxlan {
    pub vni: u32,
    pub local: Option<std::net::Ipv4Addr>,
    pub port: Option<u16>,
    pub learning: bool,
    pub mac: [u8; 6],
    pub mtu: u32,
}

/// `ip link add NAME address MAC mtu MTU type vxlan id VNI local LOCAL dstport PORT nolearning`:
/// no remote and no group, so frames go only where FDB entries say.
pub fn create_vxlan(nl: &mut Netlink, name: &str, v: &Vxlan) -> Result<()> {
    let mut data = vec![InfoVxlan::Id(v.vni), InfoVxlan::Learning(v.learning)];
    data.extend(v.local.map(InfoVxlan::Local));
    data.extend(v.port.map(InfoVxlan::Port));
    let mut message = LinkMessage::default();
    message.attributes.push(LinkAttribute::IfName(name.into()));
    message.attributes.push(LinkAttribute::Address(v.mac.to_vec()));
    message.attributes.push(LinkAttribute::Mtu(v.mtu));
    message.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Vxlan),
        LinkInfo::Data(InfoData::Vxlan(data)),
    ]));
    nl.request(RouteNetlinkMessage::NewLink(message), NLM_F_CREATE | NLM_F_EXCL, || {
        format!("create VXLAN device {name}")
    })
}

/// A VXLAN device's index and settings; `None` if the link is absent or not VXLAN.
pub fn vxlan(nl: &mut Netlink, name: &str) -> Result<Option<(u32, Vxlan)>> {
    let mut message = LinkMessage::default();
    message.attributes.push(LinkAttribute::IfName(name.into()));
    let replies = match nl.query(RouteNetlinkMessage::GetLink(message), || format!("look up link {name}")) {
        Err(e) if e.errno() == Some(nix::errno::Errno::ENODEV as i32) => return Ok(None),
        other => other?,
    };
    let Some(RouteNetlinkMessage::NewLink(link)) = replies.into_iter().next() else {
        return Ok(None);
    };
    let mut v = Vxlan {
        vni: 0,
        local: None,
        port: None,
        learning: true,
        mac: [0; 6],
        mtu: 0,
    };
    let mut is_vxlan = false;
    for attribute in link.attributes {
        match attribute {
            LinkAttribute::Mtu(m) => v.mtu = m,
            LinkAttribute::Address(bytes) if bytes.len() == 6 => v.mac.copy_from_slice(&bytes),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    if let LinkInfo::Data(InfoData::Vxlan(data)) = info {
                        is_vxlan = true;
                        for d in data {
                            match d {
                                InfoVxlan::Id(id) => v.vni = id,
                                InfoVxlan::Local(a) => v.local = Some(a),
                                InfoVxlan::Port(p) => v.port = Some(p),
                                InfoVxlan::Learning(l) => v.learning = l,
                                _ => {}
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(is_vxlan.then_some((link.header.index, v)))
}

/// A link named by index or by name (the kernel looks names up in a hash table).
#[derive(Debug, Clone, Copy)]
pub enum LinkRef<'a> {
    Index(u32),
    Name(&'a str),
}

fn set(nl: &mut Netlink, link: LinkRef, edit: impl FnOnce(&mut LinkMessage), what: impl Fn() -> String) -> Result<()> {
    let mut message = LinkMessage::default();
    match link {
        LinkRef::Index(i) => message.header.index = i,
        LinkRef::Name(n) => message.attributes.push(LinkAttribute::IfName(n.into())),
    }
    edit(&mut message);
    nl.request(RouteNetlinkMessage::SetLink(message), 0, what)
}

pub fn set_up(nl: &mut Netlink, link: LinkRef) -> Result<()> {
    set(
        nl,
        link,
        |m| {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        },
        || format!("set {link:?} up"),
    )
}

pub fn set_mtu(nl: &mut Netlink, link: LinkRef, mtu: u32) -> Result<()> {
    set(
        nl,
        link,
        |m| m.attributes.push(LinkAttribute::Mtu(mtu)),
        || format!("set the MTU of {link:?} to {mtu}"),
    )
}

pub fn set_alias(nl: &mut Netlink, link: LinkRef, alias: &str) -> Result<()> {
    set(
        nl,
        link,
        |m| m.attributes.push(LinkAttribute::IfAlias(alias.into())),
        || format!("set alias of {link:?}"),
    )
}

/// `ip link set NAME alias ALIAS master BRIDGE`, in one request as `ip` sends it.
pub fn set_alias_and_master(nl: &mut Netlink, link: LinkRef, alias: &str, master: u32) -> Result<()> {
    set(
        nl,
        link,
        |m| {
            m.attributes.push(LinkAttribute::IfAlias(alias.into()));
            m.attributes.push(LinkAttribute::Controller(master));
        },
        || format!("set alias and master of {link:?}"),
    )
}

/// Labels a container interface and turns off IPv6 address generation on it, in one request
/// (it must come before "up": within one request the kernel applies "up" first).
pub fn set_alias_without_ipv6(nl: &mut Netlink, link: LinkRef, alias: &str) -> Result<()> {
    set(
        nl,
        link,
        |m| {
            m.attributes.push(LinkAttribute::IfAlias(alias.into()));
            m.attributes
                .push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![
                    AfSpecInet6::AddrGenMode(ADDR_GEN_MODE_NONE),
                ])]));
        },
        || format!("configure {link:?}"),
    )
}

/// Brings a bridge port up in hairpin mode (a frame may leave by the port it came in on:
/// with `br_netfilter`, a container's packet to its own published port is DNATed and bridged
/// straight back to its own port), in one request. Port settings travel in a NEWLINK for an
/// existing link (SETLINK ignores them), as `ip link set ... type bridge_slave` sends them.
pub fn set_port_up_with_hairpin(nl: &mut Netlink, link: LinkRef) -> Result<()> {
    let mut message = LinkMessage::default();
    match link {
        LinkRef::Index(i) => message.header.index = i,
        LinkRef::Name(n) => message.attributes.push(LinkAttribute::IfName(n.into())),
    }
    message.header.flags = LinkFlags::Up;
    message.header.change_mask = LinkFlags::Up;
    message.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::PortKind(InfoPortKind::Bridge),
        LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::HairpinMode(true)])),
    ]));
    nl.request(RouteNetlinkMessage::NewLink(message), 0, || {
        format!("set {link:?} up in hairpin mode")
    })
}

/// `bridge link set dev NAME learning off flood off mcast_flood off bcast_flood off`: a
/// bridge port that learns no MAC address and receives no unknown-unicast, multicast or
/// broadcast floods (the bridge sends it nothing of its own accord). A NEWLINK with port
/// data, as [`set_port_up_with_hairpin`] (the kernel applies both encodings alike).
pub fn set_port_quiet(nl: &mut Netlink, link: LinkRef) -> Result<()> {
    let mut message = LinkMessage::default();
    match link {
        LinkRef::Index(i) => message.header.index = i,
        LinkRef::Name(n) => message.attributes.push(LinkAttribute::IfName(n.into())),
    }
    message.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::PortKind(InfoPortKind::Bridge),
        LinkInfo::PortData(InfoPortData::BridgePort(vec![
            InfoBridgePort::Learning(false),
            InfoBridgePort::UnicastFlood(false),
            InfoBridgePort::MulticastFlood(false),
            InfoBridgePort::BroadcastFlood(false),
        ])),
    ]));
    nl.request(RouteNetlinkMessage::NewLink(message), 0, || {
        format!("turn off learning and floods on bridge port {link:?}")
    })
}

/// Puts a link into interface group `group`.
pub fn set_group(nl: &mut Netlink, link: LinkRef, group: u32) -> Result<()> {
    set(
        nl,
        link,
        |m| m.attributes.push(LinkAttribute::Group(group)),
        || format!("set group of {link:?}"),
    )
}

/// Deletes every link in interface group `group` in one request (the kernel unregisters them
/// as one batch). ENODEV when the group is empty.
pub fn delete_group(nl: &mut Netlink, group: u32) -> Result<()> {
    let mut message = LinkMessage::default();
    message.attributes.push(LinkAttribute::Group(group));
    nl.request(RouteNetlinkMessage::DelLink(message), 0, || {
        format!("delete links of group {group}")
    })
}

pub fn delete(nl: &mut Netlink, name: &str) -> Result<()> {
    let mut message = LinkMessage::default();
    message.attributes.push(LinkAttribute::IfName(name.into()));
    nl.request(RouteNetlinkMessage::DelLink(message), 0, || {
        format!("delete link {name}")
    })
}

/// The index of the link called `name`.
pub fn index_of(nl: &mut Netlink, name: &str) -> Result<u32> {
    get(nl, LinkRef::Name(name)).map(|l| l.index)
}

/// One link, by index or name: a GETLINK naming one link answers with that link alone.
pub fn get(nl: &mut Netlink, link: LinkRef) -> Result<Link> {
    let mut message = LinkMessage::default();
    match link {
        LinkRef::Index(i) => message.header.index = i,
        LinkRef::Name(n) => message.attributes.push(LinkAttribute::IfName(n.into())),
    }
    let what = || format!("look up link {link:?}");
    let replies = nl.query(RouteNetlinkMessage::GetLink(message), what)?;
    replies
        .into_iter()
        .find_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_of(l)),
            _ => None,
        })
        .ok_or_else(|| {
            crate::Error::new(
                what(),
                std::io::Error::from_raw_os_error(nix::errno::Errno::ENODEV as i32),
            )
        })
}

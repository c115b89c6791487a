//! Traffic control over rtnetlink, for chaos redirects: a `clsact` qdisc on a link and u32
//! filters on its ingress hook whose `mirred` action redirects frames to another link. Each
//! request is the one `tc` sends for the command `Op::tool_commands` renders (see the
//! comment on each function), so `--dry-run` describes exactly what runs.

use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute, TcFilterU32Option,
    TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};
use netlink_packet_route::RouteNetlinkMessage;

use crate::netlink::{Netlink, Result};

const CLSACT: &str = "clsact";
/// `ETH_P_ALL` and `ETH_P_IP`: a filter's protocol, in network order in `tcm_info`.
const ETH_P_ALL: u16 = 0x0003;
const ETH_P_IP: u16 = 0x0800;
/// The priority every redirect filter gets (`prio 1`).
const PRIORITY: u16 = 1;
/// Where IPv4's destination address is in its header, for a u32 key.
const IPV4_DST_OFFSET: i32 = 16;

/// The clsact qdisc's header: `tcm_parent` TC_H_CLSACT, `tcm_handle` ffff:0, as `tc` sends.
fn clsact_message(index: u32) -> TcMessage {
    let mut message = TcMessage::with_index(index as i32);
    message.header.parent = TcHandle::CLSACT;
    message.header.handle = TcHandle {
        major: TcHandle::CLSACT.major,
        minor: 0,
    };
    message.attributes.push(TcAttribute::Kind(CLSACT.into()));
    message
}

/// `tc qdisc add dev DEV clsact`.
pub fn add_clsact(nl: &mut Netlink, index: u32) -> Result<()> {
    nl.request(
        RouteNetlinkMessage::NewQueueDiscipline(clsact_message(index)),
        NLM_F_CREATE | NLM_F_EXCL,
        || format!("add a clsact qdisc to link {index}"),
    )
}

/// `tc qdisc del dev DEV clsact`: its filters go with it. ENOENT or EINVAL when there is none.
pub fn delete_clsact(nl: &mut Netlink, index: u32) -> Result<()> {
    nl.request(
        RouteNetlinkMessage::DelQueueDiscipline(clsact_message(index)),
        0,
        || format!("delete the clsact qdisc of link {index}"),
    )
}

/// `tc filter add dev DEV ingress prio 1 protocol all u32 match u32 0 0 action mirred egress
/// redirect dev TAP`, or with `to`, `... protocol ip u32 match ip dst TO/32 action ...`: one
/// u32 key (a match-all key is offset 0, mask 0), terminal, whose one action steals the frame
/// and hands it to the egress of link `tap`.
pub fn add_redirect(nl: &mut Netlink, index: u32, tap: u32, to: Option<Ipv4Addr>) -> Result<()> {
    let mut key = TcU32Key::default();
    let protocol = match to {
        None => ETH_P_ALL,
        Some(ip) => {
            key.off = IPV4_DST_OFFSET;
            key.mask = u32::MAX;
            key.val = u32::from_ne_bytes(ip.octets());
            ETH_P_IP
        }
    };
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![key];

    let mut mirror = TcMirror::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = tap;
    let mut action = TcAction::default();
    action.attributes = vec![
        TcActionAttribute::Kind("mirred".into()),
        TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(mirror))]),
    ];

    let mut message = TcMessage::with_index(index as i32);
    message.header.parent = TcHandle {
        major: TcHandle::CLSACT.major,
        minor: TcHandle::MIN_INGRESS,
    };
    // TC_H_MAKE(prio << 16, htons(protocol)).
    message.header.info = (u32::from(PRIORITY) << 16) | u32::from(protocol.to_be());
    message.attributes = vec![
        TcAttribute::Kind("u32".into()),
        TcAttribute::Options(vec![
            TcOption::U32(TcFilterU32Option::Selector(selector)),
            TcOption::U32(TcFilterU32Option::Action(vec![action])),
        ]),
    ];
    nl.request(
        RouteNetlinkMessage::NewTrafficFilter(message),
        NLM_F_CREATE | NLM_F_EXCL,
        || format!("add a u32 redirect filter to link {index}"),
    )
}

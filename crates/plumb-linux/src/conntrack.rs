//! The connection tracking table of this network namespace, as `conntrack -L` shows it: each
//! flow's original and reply direction, from which the NAT it went through follows (a reply
//! that comes from elsewhere than the original destination was DNATed; one that goes back to
//! elsewhere than the original source was SNATed). Read through ctnetlink (a dump request
//! on a netfilter netlink socket, as `conntrack -L` does), which works where the deprecated
//! /proc/net/nf_conntrack is compiled out. The messages are a few nested TLVs, parsed here:
//! the crate that knows them (netlink-packet-netfilter) needs another netlink-packet-core
//! than netlink-packet-route's and two proc-macro crates, for about a hundred lines.

use std::io;
use std::net::Ipv4Addr;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

pub use plumb_core::kernel::{Flow, Tuple};

/// The IPv4 flows of this network namespace (empty when conntrack is not loaded).
pub fn flows() -> Vec<Flow> {
    dump().unwrap_or_default()
}

/// `(NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET`, and the type of each flow in the reply
/// (`IPCTNL_MSG_CT_NEW`).
const CT_GET: u16 = 0x0101;
const CT_NEW: u16 = 0x0100;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_DUMP: u16 = 0x300;
const AF_INET: u8 = 2;
const HEADER: usize = 16;
/// `struct nfgenmsg`: family, version, resource id.
const NFGENMSG: usize = 4;

// Attributes of a flow (`enum ctattr_type` and the nested ones).
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_TIMEOUT: u16 = 7;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
/// `IPS_SEEN_REPLY`: a packet came back.
const IPS_SEEN_REPLY: u32 = 1 << 1;

/// Every IPv4 flow, from one ctnetlink dump in the calling thread's network namespace.
pub fn dump() -> io::Result<Vec<Flow>> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut request = Vec::with_capacity(HEADER + NFGENMSG);
    request.extend_from_slice(&((HEADER + NFGENMSG) as u32).to_ne_bytes());
    request.extend_from_slice(&CT_GET.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(&[AF_INET, 0, 0, 0]);
    socket.send(&request, 0)?;
    let mut flows = Vec::new();
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut buffer[..], 0)?;
        if parse_messages(&buffer[..size], &mut flows)? {
            return Ok(flows);
        }
    }
}

/// Parses one datagram of the dump's reply into `flows`; true once the dump is done.
pub fn parse_messages(mut bytes: &[u8], flows: &mut Vec<Flow>) -> io::Result<bool> {
    let invalid = || io::Error::new(io::ErrorKind::InvalidData, "truncated ctnetlink message");
    while bytes.len() >= HEADER {
        let length = u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(bytes[4..6].try_into().unwrap());
        if length < HEADER || length > bytes.len() {
            return Err(invalid());
        }
        let payload = &bytes[HEADER..length];
        match kind {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let code = i32::from_ne_bytes(payload.get(0..4).ok_or_else(invalid)?.try_into().unwrap());
                return match code {
                    0 => Ok(true),
                    _ => Err(io::Error::from_raw_os_error(-code)),
                };
            }
            CT_NEW if payload.len() >= NFGENMSG && payload[0] == AF_INET => {
                flows.extend(flow(&payload[NFGENMSG..]));
            }
            _ => {}
        }
        bytes = &bytes[(length + 3) & !3..];
    }
    Ok(false)
}

/// The attributes in `bytes`: (type without the nested and byte-order flags, value).
fn attributes(mut bytes: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let length = u16::from_ne_bytes(bytes.get(0..2)?.try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(bytes.get(2..4)?.try_into().ok()?) & 0x3fff;
        let value = bytes.get(4..length)?;
        bytes = bytes.get((length + 3) & !3..).unwrap_or_default();
        Some((kind, value))
    })
}

fn be16(value: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(value.try_into().ok()?))
}

fn be32(value: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(value.try_into().ok()?))
}

/// A flow's attributes; `None` if a tuple is missing or not IPv4.
fn flow(bytes: &[u8]) -> Option<Flow> {
    let (mut original, mut reply, mut number) = (None, None, 0);
    let (mut status, mut expires, mut state) = (0, 0, String::new());
    for (kind, value) in attributes(bytes) {
        match kind {
            CTA_TUPLE_ORIG => (original, number) = tuple(value)?,
            CTA_TUPLE_REPLY => reply = Some(tuple(value)?.0?),
            CTA_STATUS => status = be32(value)?,
            CTA_TIMEOUT => expires = be32(value)?,
            CTA_PROTOINFO => {
                let tcp = attributes(value).find(|(k, _)| *k == CTA_PROTOINFO_TCP);
                if let Some(s) = tcp.and_then(|(_, v)| attributes(v).find(|(k, _)| *k == CTA_PROTOINFO_TCP_STATE)) {
                    state = tcp_state(*s.1.first()?).to_string();
                }
            }
            _ => {}
        }
    }
    Some(Flow {
        protocol: protocol_name(number).to_string(),
        state,
        original: original?,
        reply: reply?,
        expires: u64::from(expires),
        unreplied: status & IPS_SEEN_REPLY == 0,
    })
}

/// A tuple (addresses, and ports for the protocols that have them) and its protocol number.
fn tuple(bytes: &[u8]) -> Option<(Option<Tuple>, u8)> {
    let (mut src, mut dst, mut sport, mut dport, mut number) = (None, None, 0, 0, 0);
    for (kind, value) in attributes(bytes) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, v) in attributes(value) {
                    let address = <[u8; 4]>::try_from(v).ok().map(Ipv4Addr::from);
                    match k {
                        CTA_IP_V4_SRC => src = address,
                        CTA_IP_V4_DST => dst = address,
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, v) in attributes(value) {
                    match k {
                        CTA_PROTO_NUM => number = *v.first()?,
                        CTA_PROTO_SRC_PORT => sport = be16(v)?,
                        CTA_PROTO_DST_PORT => dport = be16(v)?,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let tuple = Some(Tuple {
        src: src?,
        dst: dst?,
        sport,
        dport,
    });
    Some((tuple, number))
}

/// The names /proc/net/nf_conntrack and `conntrack -L` give.
fn protocol_name(number: u8) -> &'static str {
    match number {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        33 => "dccp",
        47 => "gre",
        132 => "sctp",
        136 => "udplite",
        _ => "unknown",
    }
}

/// `enum tcp_conntrack`, named as the kernel prints it.
fn tcp_state(state: u8) -> &'static str {
    const NAMES: [&str; 10] = [
        "NONE",
        "SYN_SENT",
        "SYN_RECV",
        "ESTABLISHED",
        "FIN_WAIT",
        "CLOSE_WAIT",
        "LAST_ACK",
        "TIME_WAIT",
        "CLOSE",
        "SYN_SENT2",
    ];
    NAMES.get(usize::from(state)).copied().unwrap_or("UNKNOWN")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An attribute: length, type (nested ones flagged as the kernel flags them), value, padding.
    fn attr(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(value);
        out.resize((out.len() + 3) & !3, 0);
        out
    }

    fn nested(kind: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attr(kind | 0x8000, &parts.concat())
    }

    fn tuple_attr(kind: u16, src: [u8; 4], dst: [u8; 4], proto: u8, ports: Option<(u16, u16)>) -> Vec<u8> {
        let mut proto_parts = vec![attr(CTA_PROTO_NUM, &[proto])];
        if let Some((s, d)) = ports {
            proto_parts.push(attr(CTA_PROTO_SRC_PORT | 0x4000, &s.to_be_bytes()));
            proto_parts.push(attr(CTA_PROTO_DST_PORT | 0x4000, &d.to_be_bytes()));
        } else {
            proto_parts.push(attr(4, &7u16.to_be_bytes()));
        }
        nested(
            kind,
            &[
                nested(CTA_TUPLE_IP, &[attr(CTA_IP_V4_SRC, &src), attr(CTA_IP_V4_DST, &dst)]),
                nested(CTA_TUPLE_PROTO, &proto_parts),
            ],
        )
    }

    fn message(kind: u16, family: u8, attributes: &[Vec<u8>]) -> Vec<u8> {
        let body = [vec![family, 0, 0, 0], attributes.concat()].concat();
        let mut out = Vec::new();
        out.extend_from_slice(&((HEADER + body.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&0x2u16.to_ne_bytes());
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn flows_show_their_nat() {
        let published = message(
            CT_NEW,
            AF_INET,
            &[
                tuple_attr(
                    CTA_TUPLE_ORIG,
                    [203, 0, 113, 2],
                    [203, 0, 113, 1],
                    6,
                    Some((40000, 8080)),
                ),
                tuple_attr(CTA_TUPLE_REPLY, [10, 89, 0, 2], [203, 0, 113, 2], 6, Some((80, 40000))),
                attr(CTA_STATUS, &0x18eu32.to_be_bytes()),
                attr(CTA_TIMEOUT, &431999u32.to_be_bytes()),
                nested(
                    CTA_PROTOINFO,
                    &[nested(CTA_PROTOINFO_TCP, &[attr(CTA_PROTOINFO_TCP_STATE, &[3])])],
                ),
            ],
        );
        let masqueraded = message(
            CT_NEW,
            AF_INET,
            &[
                tuple_attr(CTA_TUPLE_ORIG, [10, 89, 0, 2], [203, 0, 113, 2], 17, Some((5353, 53))),
                tuple_attr(
                    CTA_TUPLE_REPLY,
                    [203, 0, 113, 2],
                    [203, 0, 113, 1],
                    17,
                    Some((53, 5353)),
                ),
                attr(CTA_STATUS, &0x188u32.to_be_bytes()),
                attr(CTA_TIMEOUT, &28u32.to_be_bytes()),
            ],
        );
        let ping = message(
            CT_NEW,
            AF_INET,
            &[
                tuple_attr(CTA_TUPLE_ORIG, [10, 89, 0, 2], [10, 89, 0, 3], 1, None),
                tuple_attr(CTA_TUPLE_REPLY, [10, 89, 0, 3], [10, 89, 0, 2], 1, None),
                attr(CTA_STATUS, &0x18au32.to_be_bytes()),
            ],
        );
        let ipv6 = message(CT_NEW, 10, &[attr(CTA_TIMEOUT, &1u32.to_be_bytes())]);
        let done = message(NLMSG_DONE, 0, &[]);
        let mut flows = Vec::new();
        let datagram = [published, masqueraded, ping, ipv6].concat();
        assert!(!parse_messages(&datagram, &mut flows).unwrap(), "not done yet");
        assert!(parse_messages(&done, &mut flows).unwrap());
        assert_eq!(flows.len(), 3, "IPv6 flows are skipped: {flows:?}");
        let published = &flows[0];
        assert_eq!(
            (published.protocol.as_str(), published.state.as_str()),
            ("tcp", "ESTABLISHED")
        );
        assert_eq!((published.expires, published.unreplied), (431999, false));
        assert_eq!(published.dnat(), Some(("10.89.0.2".parse().unwrap(), 80)));
        assert_eq!(published.snat(), None);
        let masqueraded = &flows[1];
        assert!(masqueraded.unreplied && masqueraded.state.is_empty());
        assert_eq!(masqueraded.snat(), Some(("203.0.113.1".parse().unwrap(), 5353)));
        assert_eq!(masqueraded.dnat(), None);
        let ping = &flows[2];
        assert_eq!(ping.protocol, "icmp");
        assert_eq!((ping.original.sport, ping.dnat(), ping.snat()), (0, None, None));
    }

    #[test]
    fn a_refused_dump_is_an_error() {
        let mut error = message(NLMSG_ERROR, 0, &[]);
        error.truncate(HEADER);
        error.extend_from_slice(&(-93i32).to_ne_bytes());
        error.extend_from_slice(&[0; 16]);
        let length = error.len() as u32;
        error[0..4].copy_from_slice(&length.to_ne_bytes());
        let e = parse_messages(&error, &mut Vec::new()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(93));
        assert!(
            parse_messages(&[1, 0, 0, 0, 0, 0], &mut Vec::new()).is_ok(),
            "a runt is no message"
        );
    }
}

//! The sockets of this network namespace, from the kernel through sock_diag netlink (as `ss`
//! reads them), and which process holds each from /proc/PID/fd (as `ss -p` finds it). Used
//! before publishing a port, so a host service on it is named instead of silently shadowed,
//! and by `plumb conns`.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::IpAddr;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST};
use netlink_packet_sock_diag::constants::{AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP};
use netlink_packet_sock_diag::inet::{ExtensionFlags, InetRequest, SocketId, StateFlags};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr};

use crate::netlink::{Error, Result};

pub use plumb_core::kernel::{Listener, SocketInfo, Transport};

/// Sockets of `transport` listening (TCP) or bound (UDP) on `port`, IPv4 and IPv6, from
/// the kernel's socket tables through sock_diag (as `ss` reads them): asking for listening
/// TCP sockets walks only the listening table, not every connection of the machine.
pub fn listeners(transport: Transport, port: u16) -> Result<Vec<Listener>> {
    let (protocol, states) = match transport {
        Transport::Tcp => (IPPROTO_TCP, StateFlags::LISTEN),
        Transport::Udp => (IPPROTO_UDP, StateFlags::CLOSE),
    };
    let mut found = Vec::new();
    for family in [AF_INET, AF_INET6] {
        for s in dump(family, protocol, states)? {
            if s.local.1 == port {
                found.push((s.local.0, s.local.1, s.inode));
            }
        }
    }
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let holders = holders();
    Ok(found
        .into_iter()
        .map(|(address, port, inode)| Listener {
            address,
            port,
            holders: holders.get(&u64::from(inode)).cloned().unwrap_or_default(),
        })
        .collect())
}

/// Every TCP and UDP socket of this network namespace (IPv4 and IPv6).
pub fn all() -> Result<Vec<SocketInfo>> {
    let mut found = Vec::new();
    for (transport, protocol) in [(Transport::Tcp, IPPROTO_TCP), (Transport::Udp, IPPROTO_UDP)] {
        for family in [AF_INET, AF_INET6] {
            for s in dump(family, protocol, StateFlags::all())? {
                found.push((transport, s));
            }
        }
    }
    Ok(found
        .into_iter()
        .map(|(transport, s)| SocketInfo {
            transport,
            state: state_name(transport, s.state),
            local: s.local,
            remote: s.remote,
            inode: u64::from(s.inode),
        })
        .collect())
}

/// The kernel's TCP state numbers (include/net/tcp_states.h) in `ss`'s words.
fn state_name(transport: Transport, state: u8) -> &'static str {
    match (transport, state) {
        (Transport::Udp, 1) => "ESTAB",
        (Transport::Udp, _) => "UNCONN",
        (Transport::Tcp, s) => match s {
            1 => "ESTAB",
            2 => "SYN-SENT",
            3 => "SYN-RECV",
            4 => "FIN-WAIT-1",
            5 => "FIN-WAIT-2",
            6 => "TIME-WAIT",
            7 => "UNCONN",
            8 => "CLOSE-WAIT",
            9 => "LAST-ACK",
            10 => "LISTEN",
            11 => "CLOSING",
            _ => "UNKNOWN",
        },
    }
}

/// What one sock_diag answer says of a socket.
struct Dumped {
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
    state: u8,
    inode: u32,
}

/// One sock_diag dump of the sockets in `states`.
fn dump(family: u8, protocol: u8, states: StateFlags) -> Result<Vec<Dumped>> {
    let what = "list sockets";
    let wrap = |e| Error::new(what, e);
    let mut socket = Socket::new(NETLINK_SOCK_DIAG).map_err(wrap)?;
    socket.bind_auto().map_err(wrap)?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(wrap)?;
    let socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let request = SockDiagMessage::InetRequest(InetRequest {
        family,
        protocol,
        extensions: ExtensionFlags::empty(),
        states,
        socket_id,
    });
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
    packet.finalize();
    let mut bytes = vec![0; packet.buffer_len()];
    packet.serialize(&mut bytes);
    socket.send(&bytes, 0).map_err(wrap)?;
    let mut out = Vec::new();
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let size = socket.recv(&mut &mut buffer[..], 0).map_err(wrap)?;
        let mut offset = 0;
        while offset < size {
            let message = NetlinkMessage::<SockDiagMessage>::deserialize(&buffer[offset..size])
                .map_err(|e| Error::new(what, io::Error::other(e.to_string())))?;
            let length = message.header.length as usize;
            match message.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let id = &r.header.socket_id;
                    out.push(Dumped {
                        local: (id.source_address, id.source_port),
                        remote: (id.destination_address, id.destination_port),
                        state: r.header.state,
                        inode: r.header.inode,
                    });
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return Err(Error::new(what, io::Error::from_raw_os_error(e.raw_code().abs())))
                }
                _ => {}
            }
            if length == 0 {
                break;
            }
            offset += length;
        }
    }
}

/// Socket inode → the processes holding it, from one pass over /proc/*/fd (inodes are the
/// machine's, whatever namespace a socket is in: one pass serves every container).
pub fn holders() -> HashMap<u64, Vec<(u32, String)>> {
    let mut out: HashMap<u64, Vec<(u32, String)>> = HashMap::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let command = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else { continue };
            let target = target.to_string_lossy();
            if let Some(inode) = target.strip_prefix("socket:[").and_then(|t| t.strip_suffix(']')) {
                if let Ok(inode) = inode.parse() {
                    let holders = out.entry(inode).or_default();
                    if !holders.iter().any(|(p, _)| *p == pid) {
                        holders.push((pid, command.trim().to_string()));
                    }
                }
            }
        }
    }
    out
}

//! Who listens on a port in this network namespace, read from /proc/net/{tcp,udp}{,6} (the
//! kernel's text view of its socket tables, stable for decades) and /proc/PID/fd (which
//! process holds each socket), as `ss -lp` shows it. Used before publishing a port, so a
//! host service on it is named instead of silently shadowed.

use std::collections::HashMap;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A socket listening (TCP) or bound (UDP) on the port asked about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub address: IpAddr,
    pub port: u16,
    /// The processes holding the socket: (pid, command name).
    pub holders: Vec<(u32, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Udp,
}

/// Sockets of `transport` listening (TCP) or bound (UDP) on `port`, IPv4 and IPv6.
pub fn listeners(transport: Transport, port: u16) -> Vec<Listener> {
    let (files, state) = match transport {
        Transport::Tcp => (["/proc/net/tcp", "/proc/net/tcp6"], "0A"), // TCP_LISTEN
        Transport::Udp => (["/proc/net/udp", "/proc/net/udp6"], "07"), // TCP_CLOSE: bound, unconnected
    };
    let mut found: Vec<(IpAddr, u16, u64)> = Vec::new();
    for file in files {
        let Ok(text) = fs::read_to_string(file) else { continue };
        found.extend(text.lines().skip(1).filter_map(|line| parse_line(line, state)));
    }
    found.retain(|(_, p, _)| *p == port);
    if found.is_empty() {
        return Vec::new();
    }
    let holders = socket_holders();
    found
        .into_iter()
        .map(|(address, port, inode)| Listener {
            address,
            port,
            holders: holders.get(&inode).cloned().unwrap_or_default(),
        })
        .collect()
}

/// `sl local_address rem_address st ... inode`: the local address, port and inode of a
/// socket in `state`.
fn parse_line(line: &str, state: &str) -> Option<(IpAddr, u16, u64)> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.get(3) != Some(&state) {
        return None;
    }
    let (address, port) = fields.get(1)?.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let inode = fields.get(9)?.parse().ok()?;
    Some((parse_address(address)?, port, inode))
}

/// The kernel prints addresses as hex of the in-memory words (little-endian on x86).
fn parse_address(hex: &str) -> Option<IpAddr> {
    let words: Option<Vec<u32>> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(&hex[i * 8..i * 8 + 8], 16).ok())
        .collect();
    let bytes: Vec<u8> = words?.iter().flat_map(|w| w.to_ne_bytes()).collect();
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))),
        16 => {
            let octets: [u8; 16] = bytes.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(octets)))
        }
        _ => None,
    }
}

/// Socket inode → the processes holding it, from one pass over /proc/*/fd.
fn socket_holders() -> HashMap<u64, Vec<(u32, String)>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_lines_read_back() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0";
        let want = (IpAddr::V4(Ipv4Addr::LOCALHOST), 8080, 12345);
        if cfg!(target_endian = "little") {
            assert_eq!(parse_line(v4, "0A"), Some(want));
        }
        assert_eq!(parse_line(v4, "07"), None);
        let v6 = "   1: 00000000000000000000000000000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1";
        assert_eq!(parse_line(v6, "0A"), Some((IpAddr::V6(Ipv6Addr::UNSPECIFIED), 80, 777)));
    }
}

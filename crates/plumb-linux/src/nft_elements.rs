//! nftables set and map elements over netlink. A list of [`ElementEdit`]s becomes one
//! nf_tables batch on a NETLINK_NETFILTER socket (NFNL_MSG_BATCH_BEGIN, NFT_MSG_DELSETELEM /
//! NFT_MSG_NEWSETELEM, NFNL_MSG_BATCH_END), every message acknowledged: all of it applies or
//! none. Unlike the `nft` program, nothing of the ruleset is read first: what is left is the
//! kernel's own work (docs/architecture.md says where that still grows with the table).
//!
//! [`generation`] reads the ruleset's generation (NFT_MSG_GETGEN): every committed transaction
//! in the namespace moves it on, so an unchanged generation means an unchanged ruleset.
//!
//! Keys and values are encoded from nft's own text, for the types plumb's sets use
//! (`ipv4_addr`, `inet_proto`, `inet_service`, `ifname`, `ether_addr`, `mark`, `typeof numgen`,
//! their concatenations, ranges in concatenated interval sets, verdicts). Anything else is
//! [`Unsupported`]: the caller then applies the same edits with `nft -f`.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};
use nix::sys::socket::{setsockopt, sockopt};
use plumb_core::firewall::{ElementAction, ElementEdit, Family, TableId};

use crate::netlink::{Error, Result};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_NEWGEN: u16 = 15;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_GEN_ID: u16 = 1;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NFPROTO_INET: u8 = 1;
const NFPROTO_BRIDGE: u8 = 7;

/// Elements per message: an attribute's length is 16 bits, so the element list of one message
/// must stay under 64 KiB (256 of plumb's largest elements take about 25 KiB).
const ELEMENTS_PER_MESSAGE: usize = 256;

/// An edit this module cannot encode (a type or form plumb's sets do not use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

/// One part of a key: how many bytes, and how its text becomes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Ipv4,
    Protocol,
    Service,
    Ifname,
    Ether,
    /// A 32-bit integer in host order (`mark`, `numgen`).
    Integer,
}

impl Part {
    fn of(name: &str) -> Option<Part> {
        Some(match name {
            "ipv4_addr" => Part::Ipv4,
            "inet_proto" => Part::Protocol,
            "inet_service" => Part::Service,
            "ifname" => Part::Ifname,
            "ether_addr" => Part::Ether,
            "mark" => Part::Integer,
            _ => return None,
        })
    }

    /// The first and last value `text` covers (the same for a single value).
    fn range(self, text: &str) -> Option<(Vec<u8>, Vec<u8>)> {
        let single = |v: Vec<u8>| Some((v.clone(), v));
        match self {
            Part::Ipv4 => {
                if let Some((addr, len)) = text.split_once('/') {
                    let addr = u32::from(addr.parse::<Ipv4Addr>().ok()?);
                    let len: u32 = len.parse().ok().filter(|l| *l <= 32)?;
                    let host = u32::MAX.checked_shr(len).unwrap_or(0);
                    return Some(((addr & !host).to_be_bytes().into(), (addr | host).to_be_bytes().into()));
                }
                if let Some((lo, hi)) = text.split_once('-') {
                    let (lo, hi): (Ipv4Addr, Ipv4Addr) = (lo.parse().ok()?, hi.parse().ok()?);
                    return Some((lo.octets().into(), hi.octets().into()));
                }
                single(text.parse::<Ipv4Addr>().ok()?.octets().into())
            }
            Part::Protocol => single(vec![match text {
                "icmp" => 1,
                "tcp" => 6,
                "udp" => 17,
                "sctp" => 132,
                n => n.parse().ok()?,
            }]),
            Part::Service => {
                let (lo, hi) = text.split_once('-').unwrap_or((text, text));
                let (lo, hi): (u16, u16) = (lo.parse().ok()?, hi.parse().ok()?);
                Some((lo.to_be_bytes().into(), hi.to_be_bytes().into()))
            }
            Part::Ifname => {
                let name = text.strip_prefix('"')?.strip_suffix('"')?;
                if name.len() >= 16 {
                    return None;
                }
                let mut bytes = name.as_bytes().to_vec();
                bytes.resize(16, 0);
                single(bytes)
            }
            Part::Ether => {
                let bytes: Option<Vec<u8>> = text.split(':').map(|b| u8::from_str_radix(b, 16).ok()).collect();
                single(bytes.filter(|b| b.len() == 6)?)
            }
            Part::Integer => single(text.parse::<u32>().ok()?.to_ne_bytes().into()),
        }
    }
}

/// A key type: its parts, from `ipv4_addr . inet_service` or `typeof numgen inc mod 64`.
fn parts(key: &str) -> std::result::Result<Vec<Part>, Unsupported> {
    if key.starts_with("typeof numgen ") {
        return Ok(vec![Part::Integer]);
    }
    key.split(" . ")
        .map(|name| Part::of(name).ok_or_else(|| Unsupported(format!("key type {name}"))))
        .collect()
}

/// A key's bytes (each part padded to 4 bytes, as nft's registers are): the start, and the
/// end where the set holds ranges.
fn encode_key(parts: &[Part], text: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let texts: Vec<&str> = text.split(" . ").collect();
    if texts.len() != parts.len() {
        return None;
    }
    let (mut lo, mut hi) = (Vec::new(), Vec::new());
    for (part, text) in parts.iter().zip(texts) {
        let (a, b) = part.range(text)?;
        for (out, bytes) in [(&mut lo, a), (&mut hi, b)] {
            let padded = out.len() + bytes.len().next_multiple_of(4);
            out.extend_from_slice(&bytes);
            out.resize(padded, 0);
        }
    }
    Some((lo, hi))
}

/// A verdict as nf_tables codes it, with the chain it names.
fn verdict(text: &str) -> Option<(i32, Option<&str>)> {
    let mut words = text.split_whitespace();
    let code = match words.next()? {
        "drop" => 0,
        "accept" => 1,
        "continue" => -1,
        "return" => -5,
        "jump" => -3,
        "goto" => -4,
        _ => return None,
    };
    let chain = words.next();
    match (code, chain, words.next()) {
        (-3 | -4, Some(_), None) | (0 | 1 | -1 | -5, None, None) => Some((code, chain)),
        _ => None,
    }
}

/// Netlink attributes written into a buffer.
struct Writer(Vec<u8>);

impl Writer {
    fn attr(&mut self, kind: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(payload);
        self.pad();
    }

    fn string(&mut self, kind: u16, text: &str) {
        let mut bytes = text.as_bytes().to_vec();
        bytes.push(0);
        self.attr(kind, &bytes);
    }

    fn nested(&mut self, kind: u16, inner: impl FnOnce(&mut Writer)) {
        let at = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        inner(self);
        let len = (self.0.len() - at) as u16;
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        let padded = self.0.len().next_multiple_of(4);
        self.0.resize(padded, 0);
    }

    /// A netlink message: header, nfgenmsg, then what `body` writes.
    fn message(&mut self, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16, body: impl FnOnce(&mut Writer)) {
        let at = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(&flags.to_ne_bytes());
        self.0.extend_from_slice(&seq.to_ne_bytes());
        self.0.extend_from_slice(&0u32.to_ne_bytes());
        self.0.extend_from_slice(&[family, 0]);
        self.0.extend_from_slice(&res_id.to_be_bytes());
        body(self);
        let len = (self.0.len() - at) as u32;
        self.0[at..at + 4].copy_from_slice(&len.to_ne_bytes());
    }
}

/// One element's attributes, encoded, inside an NFTA_LIST_ELEM.
struct Element {
    key: Vec<u8>,
    key_end: Option<Vec<u8>>,
    data: Option<Data>,
}

enum Data {
    Value(Vec<u8>),
    Verdict(i32, Option<String>),
}

/// An edit's elements encoded, or why they cannot be.
fn encode_edit(edit: &ElementEdit) -> std::result::Result<Vec<Element>, Unsupported> {
    let key_parts = parts(&edit.key)?;
    let ranges = edit.interval();
    if ranges && key_parts.len() == 1 {
        // A single-type interval set needs nft's start/end element pairs and merging.
        return Err(Unsupported(format!("interval set {} of one type", edit.set)));
    }
    let value_part = match edit.value.as_deref() {
        None | Some("verdict") => None,
        Some(ty) => Some(Part::of(ty).ok_or_else(|| Unsupported(format!("value type {ty}")))?),
    };
    let bad = |what: &str, text: &str| Unsupported(format!("{what} {text:?} of {}", edit.set));
    let mut out = Vec::new();
    for (key, value) in &edit.elements {
        let (lo, hi) = encode_key(&key_parts, key).ok_or_else(|| bad("key", key))?;
        if !ranges && lo != hi {
            return Err(bad("a range key outside an interval set", key));
        }
        let data = match (edit.action, value, value_part) {
            (ElementAction::Delete, _, _) | (_, None, _) => None,
            (ElementAction::Add, Some(v), None) => {
                let (code, chain) = verdict(v).ok_or_else(|| bad("verdict", v))?;
                Some(Data::Verdict(code, chain.map(str::to_string)))
            }
            (ElementAction::Add, Some(v), Some(part)) => {
                let (a, _) = part.range(v).filter(|(a, b)| a == b).ok_or_else(|| bad("value", v))?;
                Some(Data::Value(a))
            }
        };
        out.push(Element {
            key: lo,
            key_end: ranges.then_some(hi),
            data,
        });
    }
    Ok(out)
}

fn family(table: &TableId) -> u8 {
    match table.family {
        Family::Inet => NFPROTO_INET,
        Family::Bridge => NFPROTO_BRIDGE,
    }
}

/// Edits of one table.
pub type TableEdits<'a> = (&'a TableId, &'a [ElementEdit]);

/// The whole batch for the edits of each table, and the sequence numbers that must be
/// acknowledged.
fn batch(tables: &[TableEdits], first_seq: u32) -> std::result::Result<(Vec<u8>, Vec<u32>), Unsupported> {
    let mut w = Writer(Vec::new());
    let mut seq = first_seq;
    let mut acked = Vec::new();
    w.message(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        |_| {},
    );
    for (table, edit) in tables.iter().flat_map(|(t, edits)| edits.iter().map(move |e| (*t, e))) {
        let elements = encode_edit(edit)?;
        let (kind, flags) = match edit.action {
            ElementAction::Add => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE),
            ElementAction::Delete => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
        };
        for chunk in elements.chunks(ELEMENTS_PER_MESSAGE) {
            seq = seq.wrapping_add(1);
            acked.push(seq);
            let kind = (NFNL_SUBSYS_NFTABLES << 8) | kind;
            w.message(kind, flags, seq, family(table), 0, |w| {
                w.string(NFTA_SET_ELEM_LIST_TABLE, &table.name);
                w.string(NFTA_SET_ELEM_LIST_SET, &edit.set);
                w.nested(NFTA_SET_ELEM_LIST_ELEMENTS, |w| {
                    for e in chunk {
                        w.nested(NFTA_LIST_ELEM, |w| write_element(w, e));
                    }
                });
            });
        }
    }
    seq = seq.wrapping_add(1);
    w.message(NFNL_MSG_BATCH_END, NLM_F_REQUEST, seq, 0, NFNL_SUBSYS_NFTABLES, |_| {});
    Ok((w.0, acked))
}

fn write_element(w: &mut Writer, e: &Element) {
    w.nested(NFTA_SET_ELEM_KEY, |w| w.attr(NFTA_DATA_VALUE, &e.key));
    if let Some(end) = &e.key_end {
        w.nested(NFTA_SET_ELEM_KEY_END, |w| w.attr(NFTA_DATA_VALUE, end));
    }
    match &e.data {
        None => {}
        Some(Data::Value(v)) => w.nested(NFTA_SET_ELEM_DATA, |w| w.attr(NFTA_DATA_VALUE, v)),
        Some(Data::Verdict(code, chain)) => w.nested(NFTA_SET_ELEM_DATA, |w| {
            w.nested(NFTA_DATA_VERDICT, |w| {
                w.attr(NFTA_VERDICT_CODE, &code.to_be_bytes());
                if let Some(chain) = chain {
                    w.string(NFTA_VERDICT_CHAIN, chain);
                }
            })
        }),
    }
}

/// A batch encoded and ready to send.
pub struct Batch {
    bytes: Vec<u8>,
    /// Where each message starts (its sequence number is set when it is sent).
    starts: Vec<usize>,
    /// The messages the kernel acknowledges, by index.
    acked: Vec<usize>,
    tables: Vec<String>,
}

impl Batch {
    /// The edits of every table as one batch, or why netlink cannot carry them.
    pub fn encode(tables: &[TableEdits]) -> std::result::Result<Batch, Unsupported> {
        let (bytes, acked) = batch(tables, 0)?;
        let mut starts = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            starts.push(at);
            at += u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        }
        Ok(Batch {
            bytes,
            starts,
            acked: acked.into_iter().map(|seq| seq as usize).collect(),
            tables: tables.iter().map(|(t, _)| t.to_string()).collect(),
        })
    }

    /// Applies the batch, atomically; an error names the first message the kernel refused.
    pub fn send(&mut self) -> Result<()> {
        if self.acked.is_empty() {
            return Ok(());
        }
        let what = format!("change set elements in {}", self.tables.join(", "));
        with_channel(|channel| {
            let first = channel.take_sequences(self.starts.len() as u32);
            for (i, at) in self.starts.iter().enumerate() {
                let seq = first.wrapping_add(i as u32);
                self.bytes[at + 8..at + 12].copy_from_slice(&seq.to_ne_bytes());
            }
            // The batch goes in one send (the kernel takes it as one transaction only then).
            if self.bytes.len() > 128 * 1024 {
                let fd = channel.socket.as_fd();
                setsockopt(&fd, sockopt::SndBufForce, &(self.bytes.len() * 2))?;
                setsockopt(&fd, sockopt::RcvBufForce, &(self.acked.len() * 64 + 65536))?;
            }
            channel.socket.send(&self.bytes, 0)?;
            let acked: Vec<u32> = self.acked.iter().map(|i| first.wrapping_add(*i as u32)).collect();
            read_acks(&channel.socket, &acked)
        })
        .map_err(|e| Error::new(what, e))
    }
}

/// Applies the edits of every table in one atomic batch.
pub fn apply(tables: &[TableEdits]) -> Result<()> {
    let unsupported =
        |u: Unsupported| Error::new("encode set elements", io::Error::new(io::ErrorKind::Unsupported, u.0));
    Batch::encode(tables).map_err(unsupported)?.send()
}

/// A thread's netfilter socket, in the namespace it was opened in. It stays open: closing a
/// netfilter socket waits for the kernel to free the elements deleted before (an RCU grace
/// period, 10-20 ms here), which would otherwise be paid by every change.
struct Channel {
    socket: Socket,
    netns: u64,
    sequence: u32,
}

impl Channel {
    fn open(netns: u64) -> io::Result<Channel> {
        let mut socket = Socket::new(NETLINK_NETFILTER)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        // Errors carry only the refused message's header back, not the whole batch.
        socket.set_cap_ack(true)?;
        Ok(Channel {
            socket,
            netns,
            sequence: 0,
        })
    }

    /// `n` fresh sequence numbers; the first is returned.
    fn take_sequences(&mut self, n: u32) -> u32 {
        let first = self.sequence.wrapping_add(1);
        self.sequence = self.sequence.wrapping_add(n);
        first
    }
}

thread_local! {
    static CHANNEL: std::cell::RefCell<Option<Channel>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` on this thread's channel, opened on first use and again in a new namespace. A
/// channel that failed is not reused (replies may be left in it).
fn with_channel<T>(f: impl FnOnce(&mut Channel) -> io::Result<T>) -> io::Result<T> {
    use std::os::unix::fs::MetadataExt;
    let here = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    CHANNEL.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().map(|c| c.netns) != Some(here) {
            *slot = Some(Channel::open(here)?);
        }
        let result = f(slot.as_mut().expect("opened above"));
        if result.is_err() {
            *slot = None;
        }
        result
    })
}

/// The nf_tables ruleset generation of the calling thread's network namespace.
pub fn generation() -> Result<u32> {
    with_channel(|channel| {
        let seq = channel.take_sequences(1);
        let mut w = Writer(Vec::new());
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN;
        w.message(kind, NLM_F_REQUEST | NLM_F_ACK, seq, 0, 0, |_| {});
        channel.socket.send(&w.0, 0)?;
        let mut buffer = vec![0u8; 8192];
        let mut found = None;
        loop {
            let size = channel.socket.recv(&mut &mut buffer[..], 0)?;
            if let Some(id) = generation_in(&buffer[..size]) {
                found = Some(id);
            }
            if let Some((_, code)) = acks(&buffer[..size]).into_iter().find(|(s, _)| *s == seq) {
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
                return found.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no NFTA_GEN_ID"));
            }
        }
    })
    .map_err(|e| Error::new("read the nftables generation", e))
}

/// NFTA_GEN_ID of an NFT_MSG_NEWGEN in a datagram.
fn generation_in(datagram: &[u8]) -> Option<u32> {
    let mut at = 0;
    while at + 20 <= datagram.len() {
        let len = u32::from_ne_bytes(datagram[at..at + 4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes([datagram[at + 4], datagram[at + 5]]);
        if len < 16 || at + len > datagram.len() {
            return None;
        }
        if kind == (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN {
            let mut a = at + 20;
            while a + 4 <= at + len {
                let alen = u16::from_ne_bytes([datagram[a], datagram[a + 1]]) as usize;
                let akind = u16::from_ne_bytes([datagram[a + 2], datagram[a + 3]]) & !NLA_F_NESTED;
                if alen < 4 || a + alen > at + len {
                    break;
                }
                if akind == NFTA_GEN_ID && alen == 8 {
                    return Some(u32::from_be_bytes(datagram[a + 4..a + 8].try_into().ok()?));
                }
                a += alen.next_multiple_of(4);
            }
        }
        at += len.next_multiple_of(4);
    }
    None
}

/// Reads an acknowledgement or an error for each of `acked`; the first error wins.
fn read_acks(socket: &Socket, acked: &[u32]) -> io::Result<()> {
    let mut pending: std::collections::BTreeSet<u32> = acked.iter().copied().collect();
    let mut failure = None;
    let mut buffer = vec![0u8; 64 * 1024];
    while !pending.is_empty() {
        // The kernel answers the whole batch at once: after an error, take what is queued.
        let flags = if failure.is_some() { nix::libc::MSG_DONTWAIT } else { 0 };
        let size = match socket.recv(&mut &mut buffer[..], flags) {
            Ok(size) => size,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        };
        for (seq, code) in acks(&buffer[..size]) {
            pending.remove(&seq);
            if code != 0 && failure.is_none() {
                let position = acked.iter().position(|s| *s == seq).map_or(0, |p| p + 1);
                let e = io::Error::from_raw_os_error(-code);
                failure = Some(io::Error::new(
                    e.kind(),
                    format!("message {position} of the batch: {e}"),
                ));
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// `(sequence, error code)` of each NLMSG_ERROR in a datagram (0 is an acknowledgement).
fn acks(datagram: &[u8]) -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 20 <= datagram.len() {
        let word = |i: usize| u32::from_ne_bytes(datagram[i..i + 4].try_into().expect("4 bytes"));
        let len = word(at) as usize;
        let kind = u16::from_ne_bytes([datagram[at + 4], datagram[at + 5]]);
        if len < 16 || at + len > datagram.len() {
            break;
        }
        if kind == NLMSG_ERROR {
            out.push((word(at + 8), word(at + 16) as i32));
        }
        at += len.next_multiple_of(4);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(
        action: ElementAction,
        key: &str,
        value: Option<&str>,
        interval: bool,
        elements: &[(&str, Option<&str>)],
    ) -> ElementEdit {
        ElementEdit {
            action,
            set: "s".into(),
            key: key.into(),
            value: value.map(str::to_string),
            options: if interval {
                vec!["flags interval".into()]
            } else {
                Vec::new()
            },
            elements: elements
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
        }
    }

    /// nft's `--debug=netlink` prints keys as host-order 32-bit words; these are its lines.
    fn words(bytes: &[u8]) -> String {
        bytes
            .chunks(4)
            .map(|w| format!("{:08x}", u32::from_le_bytes(w.try_into().unwrap())))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn keys_are_encoded_as_nft_encodes_them() {
        // `nft --debug=netlink add element inet t a { 10.0.0.0/30 . 10.95.1.2 . tcp . 5201-5300 }`
        let flow = parts("ipv4_addr . ipv4_addr . inet_proto . inet_service").unwrap();
        let (lo, hi) = encode_key(&flow, "10.0.0.0/30 . 10.95.1.2 . tcp . 5201-5300").unwrap();
        assert_eq!(words(&lo), "0000000a 02015f0a 00000006 00005114");
        assert_eq!(words(&hi), "0300000a 02015f0a 00000006 0000b414");
        // `... p { 10.0.0.1 . "veth1" . udp . 53 }` in `ipv4_addr . ifname . inet_proto . inet_service`
        let port = parts("ipv4_addr . ifname . inet_proto . inet_service").unwrap();
        let (lo, hi) = encode_key(&port, "10.0.0.1 . \"veth1\" . udp . 53").unwrap();
        assert_eq!(
            words(&lo),
            "0100000a 68746576 00000031 00000000 00000000 00000011 00003500"
        );
        assert_eq!(lo, hi);
        // `... s { 10.96.0.2 . tcp . 80 : goto c }` and a numgen slot `3`.
        let vip = parts("ipv4_addr . inet_proto . inet_service").unwrap();
        assert_eq!(
            words(&encode_key(&vip, "10.96.0.2 . tcp . 80").unwrap().0),
            "0200600a 00000006 00005000"
        );
        let slot = parts("typeof numgen inc mod 64").unwrap();
        assert_eq!(words(&encode_key(&slot, "3").unwrap().0), "00000003");
        assert_eq!(encode_key(&slot, "0.0.0.0/0"), None);
        let all = parts("ipv4_addr").unwrap();
        assert_eq!(encode_key(&all, "0.0.0.0/0").unwrap().1, vec![255; 4]);
    }

    #[test]
    fn what_cannot_be_encoded_is_said_so() {
        let table = TableId {
            family: Family::Inet,
            name: "t".into(),
        };
        let add = ElementAction::Add;
        for (e, why) in [
            (
                edit(add, "ipv4_addr", None, true, &[("10.0.0.0/8", None)]),
                "of one type",
            ),
            (
                edit(add, "ipv6_addr", None, false, &[("::1", None)]),
                "key type ipv6_addr",
            ),
            (
                edit(add, "ipv4_addr", None, false, &[("10.0.0.0/8", None)]),
                "a range key",
            ),
            (
                edit(add, "ipv4_addr", Some("verdict"), false, &[("10.0.0.1", Some("goto"))]),
                "verdict",
            ),
            (
                edit(add, "ifname", None, false, &[("\"a-name-too-long-for-a-link\"", None)]),
                "key",
            ),
        ] {
            let Err(Unsupported(text)) = Batch::encode(&[(&table, &[e])]).map(drop) else {
                panic!("{why}: accepted")
            };
            assert!(text.contains(why), "{text}");
        }
    }

    #[test]
    fn a_batch_is_begin_elements_end_each_element_message_acknowledged() {
        let table = TableId {
            family: Family::Bridge,
            name: "plumb_s".into(),
        };
        let many: Vec<(String, Option<&str>)> = (0..300).map(|i| (i.to_string(), Some("goto ep_a"))).collect();
        let many: Vec<(&str, Option<&str>)> = many.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        let edits = [
            edit(
                ElementAction::Delete,
                "typeof numgen inc mod 64",
                Some("verdict"),
                false,
                &[("1", None)],
            ),
            edit(
                ElementAction::Add,
                "typeof numgen inc mod 64",
                Some("verdict"),
                false,
                &many,
            ),
        ];
        let (bytes, acked) = batch(&[(&table, &edits)], 7).unwrap();
        // One delete message, two add messages (256 + 44 elements).
        assert_eq!(acked, [8, 9, 10]);
        let mut at = 0;
        let mut seen = Vec::new();
        while at < bytes.len() {
            let len = u32::from_ne_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes([bytes[at + 4], bytes[at + 5]]);
            let flags = u16::from_ne_bytes([bytes[at + 6], bytes[at + 7]]);
            let family = bytes[at + 16];
            seen.push((kind, flags & NLM_F_ACK != 0, family));
            assert_eq!(len % 4, 0);
            at += len;
        }
        assert_eq!(at, bytes.len());
        assert_eq!(
            seen,
            [
                (0x10, false, 0),
                (0x0a0e, true, 7),
                (0x0a0c, true, 7),
                (0x0a0c, true, 7),
                (0x11, false, 0)
            ]
        );
        // The verdict: NFT_GOTO (-4) and the chain, nested under the element's data.
        let goto = [&(-4i32).to_be_bytes()[..], &[9, 0, 2, 0], b"ep_a\0"].concat();
        assert!(bytes.windows(goto.len()).any(|w| w == goto));
    }

    #[test]
    fn the_generation_is_read_from_newgen() {
        let mut w = Writer(Vec::new());
        w.message((NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWGEN, 0, 1, 0, 0, |w| {
            w.attr(NFTA_GEN_ID, &77u32.to_be_bytes());
            w.attr(2, &9u32.to_be_bytes());
        });
        assert_eq!(generation_in(&w.0), Some(77));
        assert_eq!(generation_in(&w.0[..w.0.len() - 4]), None);
    }

    #[test]
    fn acknowledgements_and_errors_are_read_by_sequence() {
        let mut datagram = Vec::new();
        for (seq, code) in [(8u32, 0i32), (9, -2)] {
            datagram.extend_from_slice(&36u32.to_ne_bytes());
            datagram.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            datagram.extend_from_slice(&[0; 2]);
            datagram.extend_from_slice(&seq.to_ne_bytes());
            datagram.extend_from_slice(&[0; 4]);
            datagram.extend_from_slice(&code.to_ne_bytes());
            datagram.extend_from_slice(&[0; 16]);
        }
        assert_eq!(acks(&datagram), [(8, 0), (9, -2)]);
        assert_eq!(acks(&datagram[..50]), [(8, 0)]);
    }
}

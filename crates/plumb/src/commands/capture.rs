//! `plumb capture TARGET`: packets on a container's interfaces (every replica's, for a service)
//! or on a network's bridge, through libpcap with the filter compiled to kernel BPF. With `-w`,
//! a pcapng file with one interface block per captured interface named `CONTAINER/IFACE` (or
//! `network/NAME`), so Wireshark and tshark show where each packet was seen; without it, one
//! line per packet as tcpdump prints them, prefixed by that name. Packets from several
//! interfaces are merged in time order. Ctrl-C, `-c` or `--duration` end it; the report counts
//! what was captured and what the kernel dropped.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use pcap::{Active, Capture, Precision};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{InterfaceDescriptionBlock, InterfaceDescriptionOption};
use pcap_file::pcapng::PcapNgWriter;
use plumb_core::kernel::Kernel;

use super::{require_root, Context};
use crate::failure::{Failure, Result};
use crate::stackfile;

/// Packets from several interfaces wait this long so that they can be written in time order.
const REORDER_WINDOW: Duration = Duration::from_millis(100);
const SNAPLEN: i32 = 262_144;

pub struct Options<'a> {
    pub interface: Option<&'a str>,
    pub filter: Option<&'a str>,
    pub count: Option<u64>,
    pub duration: Option<Duration>,
    pub write: Option<&'a Path>,
}

/// One interface to capture on: where (a namespace or the host) and how it is named.
struct Source {
    label: String,
    netns: Option<String>,
    ifname: String,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: i32) {
    STOP.store(true, Ordering::SeqCst);
}

pub fn run(ctx: &Context, target: &str, options: &Options) -> Result<()> {
    require_root("capture")?;
    let sources = sources(ctx, target, options.interface)?;
    let mut kernel = crate::apply::kernel()?;
    let mut captures = Vec::new();
    for source in &sources {
        let open = || {
            open(
                &source.ifname,
                options.filter,
                source.netns.is_none(),
                options.write.is_none(),
            )
        };
        let capture = match &source.netns {
            Some(ns) => {
                // The capture is opened inside the namespace and stays bound to it.
                let mut opened = None;
                kernel.in_netns(ns, &mut || opened = Some(open()))?;
                opened.ok_or_else(|| Failure::new(format!("cannot enter {ns}")))??
            }
            None => open()?,
        };
        captures.push(capture);
    }
    // SAFETY: the handler only stores to an atomic.
    let action = SigAction::new(SigHandler::Handler(on_interrupt), SaFlags::empty(), SigSet::empty());
    unsafe {
        let _ = sigaction(Signal::SIGINT, &action);
        let _ = sigaction(Signal::SIGTERM, &action);
    }
    let labels: Vec<String> = sources.iter().map(|s| s.label.clone()).collect();
    eprintln!(
        "capturing on {}{}; Ctrl-C stops",
        labels.join(", "),
        options.filter.map(|f| format!(" (filter: {f})")).unwrap_or_default()
    );

    let (tx, rx) = mpsc::channel::<Vec<Captured>>();
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for (index, mut capture) in captures.into_iter().enumerate() {
        let tx = tx.clone();
        let done = done.clone();
        readers.push(std::thread::spawn(move || {
            let fd = capture.as_raw_fd();
            while !done.load(Ordering::Relaxed) && !STOP.load(Ordering::Relaxed) {
                // Non-blocking reads after a bounded wait: a quiet interface never keeps the
                // capture from ending.
                // SAFETY: the capture owns the descriptor and outlives this borrow.
                let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
                let mut fds = [PollFd::new(borrowed, PollFlags::POLLIN)];
                if poll(&mut fds, PollTimeout::from(100u16)).unwrap_or(0) == 0 {
                    continue;
                }
                // Drain everything the kernel holds, then send it on in one piece.
                let mut batch = Vec::new();
                loop {
                    match capture.next_packet() {
                        Ok(p) => batch.push(Captured {
                            index,
                            ts: Duration::new(p.header.ts.tv_sec as u64, p.header.ts.tv_usec as u32),
                            original_len: p.header.len,
                            data: p.data.to_vec(),
                        }),
                        Err(pcap::Error::TimeoutExpired | pcap::Error::NoMorePackets) => break,
                        Err(_) => return capture.stats().ok(),
                    }
                }
                if !batch.is_empty() && tx.send(batch).is_err() {
                    break;
                }
            }
            capture.stats().ok()
        }));
    }
    drop(tx);

    let mut sink = Sink::new(options.write, &labels)?;
    let started = Instant::now();
    let mut pending: BTreeMap<(Duration, u64), Captured> = BTreeMap::new();
    let mut seq = 0u64;
    let mut written = 0u64;
    let limit_reached = |written: u64| options.count.is_some_and(|c| written >= c);
    loop {
        let over = STOP.load(Ordering::Relaxed)
            || options.duration.is_some_and(|d| started.elapsed() >= d)
            || limit_reached(written);
        if over {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(batch) => {
                for p in batch.into_iter().chain(rx.try_iter().flatten()) {
                    pending.insert((p.ts, seq), p);
                    seq += 1;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // Write what is older than the reorder window: nothing earlier can still come.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        while let Some(entry) = pending.first_entry() {
            if now.saturating_sub(entry.key().0) < REORDER_WINDOW || limit_reached(written) {
                break;
            }
            sink.write(&entry.remove(), &labels)?;
            written += 1;
        }
    }
    done.store(true, Ordering::Relaxed);
    for p in std::mem::take(&mut pending).into_values() {
        if limit_reached(written) {
            break;
        }
        sink.write(&p, &labels)?;
        written += 1;
    }
    sink.finish()?;
    let mut dropped = 0u64;
    let mut received = 0u64;
    for reader in readers {
        if let Ok(Some(stat)) = reader.join() {
            dropped += u64::from(stat.dropped) + u64::from(stat.if_dropped);
            received += u64::from(stat.received);
        }
    }
    eprintln!("{written} packets captured ({received} seen by the filter), {dropped} dropped by the kernel");
    Ok(())
}

struct Captured {
    index: usize,
    ts: Duration,
    original_len: u32,
    data: Vec<u8>,
}

/// `promisc` on a bridge: only then does the bridge pass up a copy of the frames it forwards
/// between its ports (otherwise it shows only what is for the host, and floods).
/// `immediate`: each packet is handed over as it comes (lines on a terminal); otherwise the
/// kernel fills whole blocks first (at most 100 ms), which keeps up with far more packets.
fn open(ifname: &str, filter: Option<&str>, promisc: bool, immediate: bool) -> Result<Capture<Active>> {
    let failed = |e: pcap::Error| Failure::new(format!("cannot capture on {ifname}: {e}"));
    let mut capture = Capture::from_device(ifname)
        .map_err(failed)?
        .promisc(promisc)
        .snaplen(SNAPLEN)
        .immediate_mode(immediate)
        .timeout(100)
        .buffer_size(8 << 20)
        .precision(Precision::Nano)
        .open()
        .and_then(Capture::setnonblock)
        .map_err(failed)?;
    if let Some(f) = filter {
        capture.filter(f, true).map_err(|e| {
            Failure::new(format!("the filter {f:?} is not valid: {e}"))
                .hint("write a tcpdump (pcap-filter) expression, e.g. \"tcp port 80\"")
                .code(2)
        })?;
    }
    Ok(capture)
}

/// The interfaces TARGET names: a network's bridge, or the interfaces of each container it
/// names (all but `lo`, or only `-i IFACE`).
fn sources(ctx: &Context, target: &str, interface: Option<&str>) -> Result<Vec<Source>> {
    let (stack_filter, name) = stackfile::qualified(target);
    for (stack, st) in ctx.state.stacks()? {
        if stack_filter.is_some_and(|f| f != stack) {
            continue;
        }
        let Some(desired) = &st.desired else { continue };
        if desired.container(name).is_none() && !desired.containers.iter().any(|c| c.service == name) {
            if let Some(net) = desired.network(name) {
                return Ok(vec![Source {
                    label: format!("network/{}", net.name),
                    netns: None,
                    ifname: net.bridge.clone(),
                }]);
            }
        }
    }
    let targets = stackfile::find_targets(&ctx.state, Some(target))?;
    let mut out = Vec::new();
    for (_, c) in &targets {
        for i in &c.interfaces {
            if interface.is_none_or(|want| want == "any" || want == i.name) {
                out.push(Source {
                    label: format!("{}/{}", c.name, i.name),
                    netns: Some(c.netns.clone()),
                    ifname: i.name.clone(),
                });
            }
        }
    }
    if out.is_empty() {
        return Err(Failure::new(format!(
            "{target} has no interface {}",
            interface.unwrap_or("to capture on")
        ))
        .hint("`plumb inspect CONTAINER` lists its interfaces")
        .code(2));
    }
    Ok(out)
}

/// Where packets go: a pcapng file, or lines on stdout.
enum Sink {
    File(PcapNgWriter<BufWriter<File>>),
    Lines(std::io::StdoutLock<'static>),
}

impl Sink {
    fn new(path: Option<&Path>, labels: &[String]) -> Result<Sink> {
        let Some(path) = path else {
            return Ok(Sink::Lines(std::io::stdout().lock()));
        };
        let file =
            File::create(path).map_err(|e| Failure::new(format!("cannot write {}: {e}", path.display())).code(2))?;
        let failed = |e: pcap_file::PcapError| Failure::new(format!("cannot write {}: {e}", path.display()));
        let mut writer = PcapNgWriter::new(BufWriter::new(file)).map_err(failed)?;
        for label in labels {
            writer
                .write_pcapng_block(InterfaceDescriptionBlock {
                    linktype: pcap_file::DataLink::ETHERNET,
                    snaplen: SNAPLEN as u32,
                    options: vec![
                        InterfaceDescriptionOption::IfName(Cow::Owned(label.clone())),
                        // Timestamps in nanoseconds (the writer stores them so).
                        InterfaceDescriptionOption::IfTsResol(9),
                    ],
                })
                .map_err(failed)?;
        }
        Ok(Sink::File(writer))
    }

    fn write(&mut self, p: &Captured, labels: &[String]) -> Result<()> {
        match self {
            Sink::File(w) => {
                w.write_pcapng_block(EnhancedPacketBlock {
                    interface_id: p.index as u32,
                    timestamp: p.ts,
                    original_len: p.original_len,
                    data: Cow::Borrowed(&p.data),
                    options: Vec::new(),
                })
                .map_err(|e| Failure::new(format!("cannot write the capture: {e}")))?;
            }
            Sink::Lines(out) => {
                let _ = writeln!(out, "{}", line(p.ts, &labels[p.index], &p.data, p.original_len));
                let _ = out.flush();
            }
        }
        Ok(())
    }

    fn finish(self) -> Result<()> {
        if let Sink::File(w) = self {
            w.into_inner()
                .flush()
                .map_err(|e| Failure::new(format!("cannot write the capture: {e}")))?;
        }
        Ok(())
    }
}

/// One packet as tcpdump prints it: `12:00:00.123456 web-1/eth0 IP 10.0.0.2.40000 > 10.0.0.3.80: Flags [S], length 0`.
pub fn line(ts: Duration, label: &str, data: &[u8], original_len: u32) -> String {
    let secs = ts.as_secs() % 86_400;
    let time = format!(
        "{:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        ts.subsec_micros()
    );
    let what = match SlicedPacket::from_ethernet(data) {
        Err(_) => format!("unreadable frame, length {original_len}"),
        Ok(p) => match (&p.net, &p.transport) {
            (Some(NetSlice::Ipv4(ip)), transport) => {
                let (src, dst) = (ip.header().source_addr(), ip.header().destination_addr());
                match transport {
                    Some(TransportSlice::Tcp(t)) => {
                        let flags: String = [
                            (t.syn(), 'S'),
                            (t.fin(), 'F'),
                            (t.rst(), 'R'),
                            (t.psh(), 'P'),
                            (t.ack(), '.'),
                        ]
                        .iter()
                        .filter(|(on, _)| *on)
                        .map(|(_, c)| *c)
                        .collect();
                        format!(
                            "IP {src}.{} > {dst}.{}: Flags [{flags}], length {}",
                            t.source_port(),
                            t.destination_port(),
                            t.payload().len()
                        )
                    }
                    Some(TransportSlice::Udp(u)) => format!(
                        "IP {src}.{} > {dst}.{}: UDP, length {}",
                        u.source_port(),
                        u.destination_port(),
                        u.payload().len()
                    ),
                    Some(TransportSlice::Icmpv4(_)) => format!("IP {src} > {dst}: ICMP"),
                    _ => format!("IP {src} > {dst}: protocol {}", ip.header().protocol().0),
                }
            }
            (Some(NetSlice::Arp(_)), _) => format!("ARP, length {original_len}"),
            (Some(NetSlice::Ipv6(_)), _) => format!("IP6, length {original_len}"),
            _ => format!("ethernet, length {original_len}"),
        },
    };
    format!("{time} {label} {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tcp_syn_reads_like_tcpdump() {
        let mut frame = vec![0u8; 12];
        frame.extend([0x08, 0x00]);
        let builder = etherparse::PacketBuilder::ipv4([10, 0, 0, 2], [10, 0, 0, 3], 64)
            .tcp(40000, 80, 1, 1024)
            .syn();
        let mut ip = Vec::new();
        builder.write(&mut ip, &[]).unwrap();
        frame.extend(ip);
        let text = line(Duration::new(3723, 5_000), "web-1/eth0", &frame, frame.len() as u32);
        assert_eq!(
            text,
            "01:02:03.000005 web-1/eth0 IP 10.0.0.2.40000 > 10.0.0.3.80: Flags [S], length 0"
        );
    }
}

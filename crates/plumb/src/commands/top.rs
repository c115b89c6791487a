//! `plumb top`: every container's traffic, refreshed each second: bytes and packets per second
//! in and out (from the host end of each of its veths, read by netlink: what the host sends is
//! what the container receives), drops, established TCP connections (sock_diag in its namespace),
//! health and restarts (from the supervisor), CPU % and memory (a replica with limits: from
//! its cgroup). Keys: `q` quits; `n`, `r`, `t`, `c` sort by
//! name, receive rate, transmit rate, connections. `--once` prints one table for scripts.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::termios::{self, LocalFlags, SetArg};
use plumb_core::kernel::{Kernel, Transport};
use serde::Serialize;

use super::{require_root, Context, Format};
use crate::failure::Result;
use crate::output::{print_json, table};
use crate::runfile;
use crate::stackfile;

const REFRESH: Duration = Duration::from_secs(1);

/// Counters of one container: the sums over its interfaces, seen from inside.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    rx_bytes: u64,
    tx_bytes: u64,
    rx_packets: u64,
    tx_packets: u64,
    drops: u64,
    /// Its cgroup's counters (a replica with limits: only those have a cgroup).
    usage: Option<plumb_core::cgroup::Usage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    stack: String,
    container: String,
    rx_bytes_per_s: f64,
    tx_bytes_per_s: f64,
    rx_packets_per_s: f64,
    tx_packets_per_s: f64,
    rx_bytes: u64,
    tx_bytes: u64,
    drops: u64,
    established: usize,
    health: String,
    restarts: u32,
    /// CPU use over the refresh, in percent of one core.
    cpu_percent: Option<f64>,
    /// Memory charged to its cgroup.
    memory_bytes: Option<u64>,
    /// A meshed container's sidecar counts: requests it served (inbound) so far, those
    /// answered 5xx, the 99th percentile of their latency (a histogram bound), and each route.
    #[serde(skip_serializing_if = "Option::is_none")]
    mesh: Option<MeshRow>,
}

#[derive(Debug, Clone, Serialize)]
struct MeshRow {
    requests: u64,
    errors_5xx: u64,
    p99_seconds: Option<f64>,
    retries: u64,
    ejections: u64,
    routes: Vec<(plumb_core::mesh::stats::RouteKey, plumb_core::mesh::stats::RouteStats)>,
}

impl MeshRow {
    fn of(s: plumb_core::mesh::stats::SidecarStats) -> MeshRow {
        let mut inbound = plumb_core::mesh::stats::RouteStats::default();
        for (k, r) in s.routes.iter().filter(|(k, _)| k.direction == "inbound") {
            let _ = k;
            inbound.requests += r.requests;
            for (c, n) in &r.responses {
                *inbound.responses.entry(c.clone()).or_default() += n;
            }
            inbound
                .latency_buckets
                .resize(r.latency_buckets.len().max(inbound.latency_buckets.len()), 0);
            for (i, n) in r.latency_buckets.iter().enumerate() {
                inbound.latency_buckets[i] += n;
            }
        }
        MeshRow {
            requests: inbound.requests,
            errors_5xx: inbound.responses.get("5xx").copied().unwrap_or(0),
            p99_seconds: inbound.quantile(0.99),
            retries: s.routes.iter().map(|(_, r)| r.retries).sum(),
            ejections: s.routes.iter().map(|(_, r)| r.ejections).sum(),
            routes: s.routes,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SortBy {
    Name,
    Rx,
    Tx,
    Connections,
}

pub fn run(ctx: &Context, target: Option<&str>, once: bool, format: Format) -> Result<()> {
    require_root("top")?;
    let mut kernel = crate::apply::kernel()?;
    let kernel = &mut kernel;
    let mut before = sample(kernel, ctx, target)?;
    let mut at = Instant::now();
    if once {
        std::thread::sleep(REFRESH);
        let rows = rows(kernel, ctx, target, &before, at.elapsed())?;
        match format {
            Format::Json => print_json(&rows),
            Format::Human => print!("{}", render(&rows)),
        }
        return Ok(());
    }
    let keys = Keys::raw();
    // Into a pipe or file (`plumb top | head`): plain tables one after another, as `top -b`
    // writes, never screen escapes.
    let screen = std::io::stdout().is_terminal();
    let mut sort = SortBy::Name;
    loop {
        let deadline = Instant::now() + REFRESH;
        while Instant::now() < deadline {
            match keys.as_ref().and_then(Keys::read) {
                Some(b'q') => return Ok(()),
                Some(b'n') => sort = SortBy::Name,
                Some(b'r') => sort = SortBy::Rx,
                Some(b't') => sort = SortBy::Tx,
                Some(b'c') => sort = SortBy::Connections,
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        let mut rows = rows(kernel, ctx, target, &before, at.elapsed())?;
        before = sample(kernel, ctx, target)?;
        at = Instant::now();
        sort_rows(&mut rows, sort);
        let mut out = std::io::stdout().lock();
        let page = match screen {
            true => format!(
                "\x1b[H\x1b[2Jplumb top: {} containers, refreshed every second; q quits, sort: n name, r rx, t tx, c connections\r\n\r\n{}",
                rows.len(),
                render(&rows).replace('\n', "\r\n")
            ),
            false => format!("plumb top: {} containers\n{}\n", rows.len(), render(&rows)),
        };
        if out.write_all(page.as_bytes()).and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
    }
}

pub type Sample = BTreeMap<(String, String), Counters>;

/// The counters of every container TARGET names, now: one netlink dump of the host's links.
pub fn sample(kernel: &mut dyn Kernel, ctx: &Context, target: Option<&str>) -> Result<Sample> {
    let links = kernel.link_counters()?;
    let mut out = Sample::new();
    for (st, c) in stackfile::find_targets(&ctx.state, target)? {
        let mut sum = Counters::default();
        for stat in c.interfaces.iter().filter_map(|i| links.get(&i.host_veth)) {
            // The host end sends what the container receives, and the other way round.
            sum.rx_bytes += stat.tx_bytes;
            sum.tx_bytes += stat.rx_bytes;
            sum.rx_packets += stat.tx_packets;
            sum.tx_packets += stat.rx_packets;
            sum.drops += stat.rx_dropped + stat.tx_dropped;
        }
        sum.usage = kernel.cgroup_usage(&plumb_core::cgroup::replica_path(&st.stack, &c.name));
        out.insert((st.stack.clone(), c.name.clone()), sum);
    }
    Ok(out)
}

/// Each container's row: counters now, rates since `before` (`elapsed` ago); `plumb ui`'s too.
pub fn rows(
    kernel: &mut dyn Kernel,
    ctx: &Context,
    target: Option<&str>,
    before: &Sample,
    elapsed: Duration,
) -> Result<Vec<Row>> {
    let now = sample(kernel, ctx, target)?;
    let secs = elapsed.as_secs_f64().max(0.001);
    let mut statuses = BTreeMap::new();
    let mut meshes: BTreeMap<String, BTreeMap<String, plumb_core::mesh::stats::SidecarStats>> = BTreeMap::new();
    let mut out = Vec::new();
    for (st, c) in stackfile::find_targets(&ctx.state, target)? {
        let key = (st.stack.clone(), c.name.clone());
        let (Some(n), b) = (now.get(&key), before.get(&key).copied().unwrap_or_default()) else {
            continue;
        };
        let status = statuses
            .entry(st.stack.clone())
            .or_insert_with(|| runfile::read_status(&ctx.state.stack_dir(&st.stack)));
        let replica = status.replicas.get(&c.name);
        let established = kernel.sockets_in(&c.netns).ok().map_or(0, |socks| {
            socks
                .iter()
                .filter(|s| s.transport == Transport::Tcp && s.state == "ESTAB")
                .count()
        });
        let rate = |new: u64, old: u64| new.saturating_sub(old) as f64 / secs;
        out.push(Row {
            stack: st.stack.clone(),
            container: c.name.clone(),
            rx_bytes_per_s: rate(n.rx_bytes, b.rx_bytes),
            tx_bytes_per_s: rate(n.tx_bytes, b.tx_bytes),
            rx_packets_per_s: rate(n.rx_packets, b.rx_packets),
            tx_packets_per_s: rate(n.tx_packets, b.tx_packets),
            rx_bytes: n.rx_bytes,
            tx_bytes: n.tx_bytes,
            drops: n.drops,
            established,
            health: match replica {
                None if c.process.is_none() => "-".into(),
                None => "?".into(),
                Some(r) => r.health.map_or_else(|| r.state.to_string(), |h| h.to_string()),
            },
            restarts: replica.map_or(0, |r| r.restarts),
            cpu_percent: n
                .usage
                .zip(b.usage)
                .map(|(n, b)| plumb_core::cgroup::cpu_percent(b.cpu_usec, n.cpu_usec, elapsed.as_micros() as u64)),
            memory_bytes: n.usage.map(|u| u.memory_bytes),
            mesh: if c.mesh {
                let stats = meshes.entry(st.stack.clone()).or_insert_with(|| {
                    let dir = ctx.state.stack_dir(&st.stack);
                    st.desired
                        .as_ref()
                        .map(|d| crate::supervisor::read_mesh_stats(&dir, d))
                        .unwrap_or_default()
                        .into_iter()
                        .map(|s| (s.container.clone(), s))
                        .collect()
                });
                stats.remove(&c.name).map(MeshRow::of)
            } else {
                None
            },
        });
    }
    Ok(out)
}

fn sort_rows(rows: &mut [Row], by: SortBy) {
    match by {
        SortBy::Name => rows.sort_by(|a, b| (&a.stack, &a.container).cmp(&(&b.stack, &b.container))),
        SortBy::Rx => rows.sort_by(|a, b| b.rx_bytes_per_s.total_cmp(&a.rx_bytes_per_s)),
        SortBy::Tx => rows.sort_by(|a, b| b.tx_bytes_per_s.total_cmp(&a.tx_bytes_per_s)),
        SortBy::Connections => rows.sort_by_key(|r| std::cmp::Reverse(r.established)),
    }
}

fn render(rows: &[Row]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                format!("{}/{}", r.stack, r.container),
                bytes(r.rx_bytes_per_s),
                bytes(r.tx_bytes_per_s),
                format!("{:.0}", r.rx_packets_per_s),
                format!("{:.0}", r.tx_packets_per_s),
                bytes(r.rx_bytes as f64).trim_end_matches("/s").to_string(),
                bytes(r.tx_bytes as f64).trim_end_matches("/s").to_string(),
                r.drops.to_string(),
                r.established.to_string(),
                r.health.clone(),
                r.restarts.to_string(),
                r.cpu_percent.map_or_else(|| "-".into(), |c| format!("{c:.1}%")),
                r.memory_bytes.map_or_else(|| "-".into(), super::ps::memory),
                r.mesh.as_ref().map_or("-".into(), |m| m.requests.to_string()),
                r.mesh.as_ref().map_or("-".into(), |m| m.errors_5xx.to_string()),
                r.mesh.as_ref().and_then(|m| m.p99_seconds).map_or("-".into(), |s| {
                    if s.is_finite() {
                        format!("<{}ms", s * 1000.0)
                    } else {
                        ">10s".into()
                    }
                }),
            ]
        })
        .collect();
    table(
        &[
            "CONTAINER",
            "RX/S",
            "TX/S",
            "RXPKT/S",
            "TXPKT/S",
            "RX",
            "TX",
            "DROPS",
            "ESTAB",
            "HEALTH",
            "RESTARTS",
            "CPU",
            "MEM",
            "REQS",
            "5XX",
            "P99",
        ],
        &cells,
    )
}

/// `1.2 MB/s`.
fn bytes(per_s: f64) -> String {
    let units = ["B", "kB", "MB", "GB"];
    let mut v = per_s;
    let mut i = 0;
    while v >= 1000.0 && i < units.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0} {}/s", units[i])
    } else {
        format!("{v:.1} {}/s", units[i])
    }
}

/// The terminal in non-canonical mode without echo while `top` runs (restored when dropped),
/// so a key press arrives at once; none when stdin is not a terminal.
struct Keys {
    saved: termios::Termios,
}

impl Keys {
    fn raw() -> Option<Keys> {
        let stdin = std::io::stdin();
        if !stdin.is_terminal() {
            return None;
        }
        let saved = termios::tcgetattr(stdin.as_fd()).ok()?;
        let mut raw = saved.clone();
        raw.local_flags.remove(LocalFlags::ICANON | LocalFlags::ECHO);
        raw.control_chars[termios::SpecialCharacterIndices::VMIN as usize] = 0;
        raw.control_chars[termios::SpecialCharacterIndices::VTIME as usize] = 0;
        termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw).ok()?;
        Some(Keys { saved })
    }

    /// A key pressed since the last call, if any (never blocks).
    fn read(&self) -> Option<u8> {
        let mut byte = [0u8; 1];
        match std::io::stdin().lock().read(&mut byte) {
            Ok(1) => Some(byte[0]),
            _ => None,
        }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin().as_fd(), SetArg::TCSANOW, &self.saved);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_read_in_units() {
        assert_eq!(super::bytes(999.0), "999 B/s");
        assert_eq!(super::bytes(1_234_567.0), "1.2 MB/s");
    }
}

//! `plumb trace FROM TO:PORT[/proto]`: one real probe connection from a container, traced by
//! nftables itself. A tracing table marks (`meta nftrace set 1`) only the probe's packets, in
//! both directions, matched by its source port; `nft monitor trace` reports every hook they
//! pass and every rule they match; the report names each step's interfaces by what plumb made
//! them for, each rule by its comment (which feature of plumb made it and why), and the rule or
//! policy that decided. Other traffic is not marked, so it is not slowed.

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;
use plumb_core::desired::{Container, Desired};
use plumb_core::firewall::{Family, NftChange, TableId};
use plumb_core::kernel::{Kernel, ProbeOutcome as Outcome};
use plumb_core::policy::{explain, Explanation, Party};
use plumb_core::spec::Protocol;
use plumb_core::trace::{self, Decision, Step};
use plumb_core::Op;
use serde_json::json;

use super::{require_root, Context, Format};
use crate::failure::{Failure, Result};
use crate::output::print_json;
use crate::stackfile;

/// How long the probe waits for an answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// `nft monitor` has no "ready" signal: time for it to subscribe before the probe goes, and
/// for the last events to arrive after.
const MONITOR_SETTLE: Duration = Duration::from_millis(300);

pub fn run(ctx: &Context, from: &str, to: &str, format: Format) -> Result<()> {
    require_root("trace")?;
    let (st, source) = stackfile::find_container(&ctx.state, from).map_err(|f| f.code(2))?;
    let desired = st
        .desired
        .clone()
        .ok_or_else(|| Failure::new(format!("stack {} has no record of what it is", st.stack)))?;
    let (target, port, udp) = parse_target(to)?;
    let (address, target_label) = resolve(&desired, &source, target)?;
    let protocol = if udp { "udp" } else { "tcp" };

    let mut kernel = crate::apply::kernel()?;
    let probe = kernel.bind_probe(&source.netns, udp)?;
    remove_stale_tables(&mut kernel);
    let table = format!("{TRACE_PREFIX}{}", std::process::id());
    let sources: Vec<Ipv4Addr> = source.interfaces.iter().map(|i| i.address).collect();
    let child = Monitor::spawn()?;
    // From here until the tracing tables are gone, Ctrl-C (or a TERM) waits: the few seconds
    // of the probe run out and the tables are removed first. Threads started from here on
    // inherit the block; the monitor, started before, still takes the signal and ends.
    let hold = HeldSignals::hold();
    let monitor = Monitor::read(child);
    let marks = TraceTables::add(Box::new(kernel), &table, protocol, probe.port(), &sources)?;
    std::thread::sleep(MONITOR_SETTLE);
    let outcome = probe.send(SocketAddrV4::new(address, port), PROBE_TIMEOUT);
    std::thread::sleep(MONITOR_SETTLE);
    let lines = monitor.stop();
    drop(marks);
    drop(hold);

    let parsed: Vec<_> = lines.iter().filter_map(|l| trace::parse_line(l)).collect();
    let steps = trace::steps(&parsed, &[table.as_str()]);
    let decision = trace::decision(&steps);
    let steps = trace::collapse(steps);
    let outcome_text = match &outcome {
        Outcome::Answered if udp => "answered".to_string(),
        Outcome::Answered => "connected".to_string(),
        Outcome::Refused => "refused".to_string(),
        Outcome::TimedOut => format!("no answer within {}s", PROBE_TIMEOUT.as_secs()),
        Outcome::Failed(why) => format!("failed: {why}"),
    };
    let policy = policy_view(
        &desired,
        &source,
        address,
        if udp { Protocol::Udp } else { Protocol::Tcp },
        port,
    );
    let hops: Vec<(String, String)> = steps
        .iter()
        .map(|(s, _)| (label(&desired, s.iif.as_deref()), label(&desired, s.oif.as_deref())))
        .collect();
    match format {
        Format::Json => print_json(&json!({
            "from": source.name,
            "to": target_label,
            "address": address,
            "port": port,
            "protocol": protocol,
            "source_port": probe.port(),
            "outcome": outcome_text,
            "answered": outcome == Outcome::Answered,
            "steps": steps.iter().zip(&hops).map(|((s, times), (i, o))| json!({
                "at": s.at, "in": i, "out": o, "rules": s.rules, "policy": s.policy, "times": times,
            })).collect::<Vec<_>>(),
            "decided_by": decision,
            "policy": policy,
        })),
        Format::Human => print_report(
            &source.name,
            &target_label,
            address,
            port,
            protocol,
            &outcome_text,
            &steps,
            &hops,
            decision.as_ref(),
        ),
    }
    if let (Format::Human, Some(p)) = (format, &policy) {
        let verdict = if p.allowed { "allow" } else { "deny" };
        println!("the stack's policies {verdict} it: {} ({})", p.summary, p.stage);
    }
    if outcome == Outcome::Answered {
        Ok(())
    } else {
        Err(Failure::silent(1))
    }
}

/// What the stack's policies say of the probe's flow, computed from the same compiled rules
/// as `plumb policy why` (so the policy and its stack-file line are named); none without
/// policies, or for a VIP (the replica it lands on is the load balancer's choice).
fn policy_view(
    desired: &Desired,
    source: &Container,
    to: Ipv4Addr,
    protocol: Protocol,
    port: u16,
) -> Option<Explanation> {
    if desired.policies.is_empty() || desired.services.iter().any(|s| s.vip == Some(to)) {
        return None;
    }
    let target = desired
        .containers
        .iter()
        .find(|c| c.interfaces.iter().any(|i| i.address == to));
    let from_address = source
        .interfaces
        .iter()
        .find(|i| target.is_some_and(|t| t.interfaces.iter().any(|o| o.network == i.network)))
        .or(source.interfaces.first())?
        .address;
    let from = Party::Container {
        name: source.name.clone(),
        address: from_address,
    };
    let to = match target {
        Some(t) => Party::Container {
            name: t.name.clone(),
            address: to,
        },
        None if desired.networks.iter().any(|n| n.gateway == to) => Party::Host(Some(to)),
        None => Party::Outside(to),
    };
    Some(explain(desired, &from, &to, protocol, port))
}

/// `TARGET:PORT[/tcp|udp]` ([`plumb_core::policy::parse_target`]); true for udp.
fn parse_target(text: &str) -> Result<(&str, u16, bool)> {
    let t = plumb_core::policy::parse_target(text).map_err(|e| {
        Failure::new(format!("{text:?} is not TARGET:PORT[/tcp|udp]: {e}"))
            .hint("e.g. `plumb trace web-1 api:5000`, `plumb trace web-1 10.89.0.3:53/udp`")
            .code(2)
    })?;
    Ok((t.name, t.port, t.protocol == plumb_core::spec::Protocol::Udp))
}

/// The address a target names: an IPv4 address; a container (its address on a network it
/// shares with the source, else its first); a service (its VIP, or its first replica).
pub(crate) fn resolve(desired: &Desired, source: &Container, target: &str) -> Result<(Ipv4Addr, String)> {
    if let Ok(ip) = target.parse::<Ipv4Addr>() {
        return Ok((ip, ip.to_string()));
    }
    if let Some(vip) = desired.service(target).and_then(|s| s.vip) {
        return Ok((vip, format!("{target} (VIP)")));
    }
    let container = desired.container_or_first(target).ok_or_else(|| {
        Failure::new(format!(
            "no container, service or address {target:?} in stack {}",
            desired.stack
        ))
        .hint("name a container (SVC-k), a service, or an IPv4 address")
        .code(2)
    })?;
    let shared = container
        .interfaces
        .iter()
        .find(|i| source.interfaces.iter().any(|s| s.network == i.network))
        .or(container.interfaces.first())
        .ok_or_else(|| Failure::new(format!("container {} has no network", container.name)).code(2))?;
    Ok((shared.address, container.name.clone()))
}

/// An interface by what plumb made it for.
fn label(desired: &Desired, ifname: Option<&str>) -> String {
    let Some(name) = ifname else { return String::new() };
    if let Some(net) = desired.networks.iter().find(|n| n.bridge == name) {
        return format!("bridge of {} ({name})", net.name);
    }
    for c in &desired.containers {
        if let Some(i) = c.interfaces.iter().find(|i| i.host_veth == name) {
            return format!("{} {} on {} ({name})", c.name, i.name, i.network);
        }
    }
    format!("host {name}")
}

#[allow(clippy::too_many_arguments)]
fn print_report(
    from: &str,
    to: &str,
    address: Ipv4Addr,
    port: u16,
    protocol: &str,
    outcome: &str,
    steps: &[(Step, usize)],
    hops: &[(String, String)],
    decision: Option<&Decision>,
) {
    println!("trace {from} -> {to} {address}:{port}/{protocol}: {outcome}");
    for (n, ((step, times), (iif, oif))) in steps.iter().zip(hops).enumerate() {
        let way = match (iif.is_empty(), oif.is_empty()) {
            (false, false) => format!("in {iif}, out {oif}"),
            (false, true) => format!("in {iif}"),
            (true, false) => format!("out {oif}"),
            (true, true) => String::new(),
        };
        let again = if *times > 1 {
            format!("  ({times} packets)")
        } else {
            String::new()
        };
        println!("{:>3}  {}  {way}{again}", n + 1, step.at);
        for rule in &step.rules {
            let why = rule
                .comment
                .as_deref()
                .map(|c| format!("\"{c}\": "))
                .unwrap_or_default();
            let chain = if rule.chain == step.at.chain {
                String::new()
            } else {
                format!("[{}] ", rule.chain)
            };
            println!("       {chain}{why}{}  -> {}", rule.expr, rule.verdict);
        }
        if let Some(policy) = &step.policy {
            println!("       chain policy -> {policy}");
        }
    }
    match decision {
        Some(d) => {
            let by = match &d.rule {
                Some(r) => format!(
                    "rule {}",
                    r.comment.as_deref().map_or(r.expr.clone(), |c| format!("\"{c}\""))
                ),
                None => "the chain's policy".to_string(),
            };
            println!("decided by {by} in {}: {}", d.at, d.verdict);
        }
        None if steps.is_empty() => {
            println!("no plumb rule saw the probe (it never left the container, or went nowhere plumb filters)")
        }
        None => println!("no rule dropped it"),
    }
}

const TRACE_PREFIX: &str = "plumb_trace_";

/// Tracing tables left by a trace that was killed (its PID is gone): removed.
fn remove_stale_tables(kernel: &mut dyn Kernel) {
    let Ok(tables) = kernel.nft_tables() else {
        return;
    };
    let stale: Vec<NftChange> = tables
        .into_iter()
        .filter_map(|(family, name)| {
            let pid = name.strip_prefix(TRACE_PREFIX)?.parse::<i32>().ok()?;
            let family = match family.as_str() {
                "inet" => Family::Inet,
                "bridge" => Family::Bridge,
                _ => return None,
            };
            kill(Pid::from_raw(pid), None).is_err().then_some(NftChange::Delete {
                table: TableId { family, name },
            })
        })
        .collect();
    if !stale.is_empty() {
        let _ = kernel.apply(&Op::Nft { changes: stale });
        let _ = kernel.settle();
    }
}

/// The tracing tables (`trace::tables`), made as one nft transaction like any other `Op`;
/// removed when dropped.
struct TraceTables {
    kernel: Box<dyn Kernel>,
    tables: Vec<TableId>,
}

impl TraceTables {
    fn add(
        mut kernel: Box<dyn Kernel>,
        name: &str,
        protocol: &str,
        port: u16,
        sources: &[Ipv4Addr],
    ) -> Result<TraceTables> {
        let rulesets = trace::tables(name, protocol, port, sources);
        let tables = rulesets.iter().map(|r| r.table.clone()).collect();
        let changes = rulesets
            .into_iter()
            .map(|ruleset| NftChange::Replace { ruleset })
            .collect();
        kernel.apply(&Op::Nft { changes })?;
        kernel.settle()?;
        Ok(TraceTables { kernel, tables })
    }
}

impl Drop for TraceTables {
    fn drop(&mut self) {
        let changes = self
            .tables
            .iter()
            .map(|table| NftChange::Delete { table: table.clone() })
            .collect();
        let removed = self
            .kernel
            .apply(&Op::Nft { changes })
            .and_then(|()| self.kernel.settle());
        if let Err(e) = removed {
            eprintln!("plumb: could not remove the tracing tables: {e}");
        }
    }
}

/// SIGINT, SIGTERM and SIGHUP blocked while held; when dropped, unblocked (one that came
/// meanwhile then takes effect).
struct HeldSignals(SigSet);

impl HeldSignals {
    fn hold() -> HeldSignals {
        let mut set = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            set.add(s);
        }
        let _ = set.thread_block();
        HeldSignals(set)
    }
}

impl Drop for HeldSignals {
    fn drop(&mut self) {
        let _ = self.0.thread_unblock();
    }
}

/// `nft monitor trace`, its lines gathered on a thread.
struct Monitor {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Monitor {
    fn spawn() -> Result<Child> {
        Command::new("nft")
            .args(["monitor", "trace"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| Failure::new(format!("cannot run nft monitor trace: {e}")))
    }

    /// Gathers `child`'s lines on a thread.
    fn read(mut child: Child) -> Monitor {
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(std::result::Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Monitor { child, lines }
    }

    /// Ends the monitor (SIGTERM by PID: SIGINT may be ignored, as it is for background jobs
    /// of a shell; SIGKILL if it does not end within a second) and returns its lines (it
    /// writes each event as it comes).
    fn stop(mut self) -> Vec<String> {
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while matches!(self.child.try_wait(), Ok(None)) {
            if std::time::Instant::now() > deadline {
                let _ = kill(pid, Signal::SIGKILL);
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut out = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            out.push(line);
        }
        out
    }
}

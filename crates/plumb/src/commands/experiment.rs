//! `plumb experiment run NAME`: a chaos experiment from the stack file's `[[experiments]]`.
//! The checks run before the faults (the steady state), every `interval` while the faults
//! are on, and after them until they pass again (up to `settle`); the verdict is that the
//! hypothesis held, or the first check that failed, when and why. Every fault the run starts
//! is recorded with its scheduled end (so it ends even if this process is killed) and removed
//! when the run ends, also on Ctrl-C.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use plumb_core::desired::Desired;
use plumb_core::spec::{CheckProbe, CheckSpec, ExperimentSpec, FaultAction, FaultSpec};
use serde::Serialize;

use super::chaos::{self as chaos_cmd, Request};
use super::{require_nft, require_root, Context, Format};
use crate::failure::{Failure, Result};
use crate::faults::{self, Locked};
use crate::output::{print_json, say};
use crate::state::StackState;
use crate::{runfile, stackfile};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Phase {
    Before,
    During,
    After,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Phase::Before => "before",
            Phase::During => "during",
            Phase::After => "after",
        }
    }
}

/// One line of the timeline: a check's result, or a fault started or ended.
#[derive(Debug, Clone, Serialize)]
struct Event {
    /// Milliseconds since the run began.
    t_ms: u64,
    phase: Phase,
    /// `check`, `fault_start`, `fault_end`.
    kind: &'static str,
    name: String,
    ok: bool,
    detail: String,
}

#[derive(Serialize)]
struct Report<'a> {
    experiment: &'a str,
    stack: &'a str,
    held: bool,
    interrupted: bool,
    /// The first check that failed (the one that decided), if any.
    failed_check: Option<&'a Event>,
    checks_run: usize,
    timeline: &'a [Event],
}

/// SIGINT, SIGTERM and SIGHUP held for the run and read from a signalfd, so an interrupted
/// run still removes its faults before it ends.
struct Interrupts {
    fd: SignalFd,
    set: SigSet,
}

impl Interrupts {
    fn hold() -> Result<Interrupts> {
        let mut set = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            set.add(s);
        }
        set.thread_block()
            .map_err(|e| Failure::new(format!("cannot hold signals: {e}")))?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(|e| Failure::new(format!("cannot read signals: {e}")))?;
        Ok(Interrupts { fd, set })
    }

    /// Waits up to `d`; true if a signal came (the run is to end).
    fn sleep(&self, d: Duration) -> bool {
        let millis = u16::try_from(d.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        let _ = poll(&mut fds, PollTimeout::from(millis));
        matches!(self.fd.read_signal(), Ok(Some(_)))
    }
}

impl Drop for Interrupts {
    fn drop(&mut self) {
        let _ = self.set.thread_unblock();
    }
}

struct Run<'a> {
    ctx: &'a Context,
    st: &'a StackState,
    desired: &'a Desired,
    exp: &'a ExperimentSpec,
    begun: Instant,
    events: Vec<Event>,
    /// Faults this run started and has not ended yet: (fault number, when it ends).
    active: Vec<(u32, Instant)>,
    interrupted: bool,
    seed: u64,
    format: Format,
}

impl Run<'_> {
    fn note(&mut self, phase: Phase, kind: &'static str, name: String, ok: bool, detail: String) {
        let event = Event {
            t_ms: self.begun.elapsed().as_millis() as u64,
            phase,
            kind,
            name,
            ok,
            detail,
        };
        if self.format == Format::Human {
            print_event(&event);
        }
        self.events.push(event);
    }

    /// Runs every check once; true if all passed.
    fn checks(&mut self, phase: Phase) -> bool {
        let mut all = true;
        for check in &self.exp.checks {
            let (ok, detail) = self.check(check);
            all &= ok;
            self.note(phase, "check", check.name.clone(), ok, detail);
        }
        all
    }

    fn check(&self, check: &CheckSpec) -> (bool, String) {
        match &check.probe {
            CheckProbe::Http {
                host,
                port,
                path,
                from,
                status,
                within,
                ..
            } => {
                let Some(ip) = resolve(self.desired, host) else {
                    return (false, format!("{host} has no address"));
                };
                let netns = from
                    .as_deref()
                    .and_then(|f| self.desired.container_or_first(f))
                    .map(|c| c.netns.clone());
                match http_get(netns, ip, *port, host, path, *within) {
                    Ok((got, took)) if got == *status => (true, format!("{got} in {} ms", took.as_millis())),
                    Ok((got, took)) => (false, format!("HTTP {got} in {} ms (want {status})", took.as_millis())),
                    Err(e) => (false, e),
                }
            }
            CheckProbe::Healthy { service, at_least } => {
                let status = runfile::read_status(&self.ctx.state.stack_dir(&self.st.stack));
                let ready = status
                    .replicas
                    .values()
                    .filter(|r| r.service == *service && r.is_ready())
                    .count();
                let ok = ready >= *at_least as usize;
                (ok, format!("{ready} healthy (want at least {at_least})"))
            }
        }
    }

    fn start_fault(&mut self, fault: &FaultSpec, ends: Instant) {
        let dir = self.ctx.state.stack_dir(&self.st.stack);
        let request = match &fault.action {
            FaultAction::Kill { service } => {
                let (ok, detail) = match chaos_cmd::kill_one(&dir, service, &mut self.seed) {
                    Ok((name, pid)) => (true, format!("{name} (pid {pid})")),
                    Err(e) => (false, e.message),
                };
                self.note(Phase::During, "fault_start", format!("kill {service}"), ok, detail);
                return;
            }
            FaultAction::Partition { a, b } => Request::Partition {
                a: a.clone(),
                b: b.clone(),
            },
            FaultAction::Impair { target, impairment } => Request::Impair {
                target: target.clone(),
                impairment: *impairment,
            },
        };
        let lasts = ends.saturating_duration_since(Instant::now());
        let origin = format!("experiment {}", self.exp.name);
        match chaos_cmd::start(self.ctx, self.st, &request, Some(lasts), &origin) {
            Ok(f) => {
                self.active.push((f.id, ends));
                self.note(
                    Phase::During,
                    "fault_start",
                    format!("{} on {}", f.describe(), f.target),
                    true,
                    format!("fault {}, for {} ms", f.id, lasts.as_millis()),
                );
            }
            Err(e) => self.note(Phase::During, "fault_start", describe(fault), false, e.message),
        }
    }

    /// Ends the run's faults that are due (all of them with `all`).
    fn end_faults(&mut self, all: bool) {
        let now = Instant::now();
        let due: Vec<u32> = self
            .active
            .iter()
            .filter(|(_, ends)| all || *ends <= now)
            .map(|(id, _)| *id)
            .collect();
        if due.is_empty() {
            return;
        }
        self.active.retain(|(id, _)| !due.contains(id));
        let dir = self.ctx.state.stack_dir(&self.st.stack);
        let removed = Locked::open(&dir).and_then(|mut l| l.remove(|f| due.contains(&f.id)));
        let phase = if all { Phase::After } else { Phase::During };
        match removed {
            Ok((gone, errors)) => {
                for f in gone {
                    self.note(
                        phase,
                        "fault_end",
                        format!("{} on {}", f.describe(), f.target),
                        errors.is_empty(),
                        format!("fault {}", f.id),
                    );
                }
            }
            Err(e) => self.note(phase, "fault_end", "faults".into(), false, e.message),
        }
    }

    fn go(&mut self, interrupts: &Interrupts) {
        if !self.checks(Phase::Before) {
            return;
        }
        let total = self.exp.duration();
        let faults_begin = Instant::now();
        let mut schedule: Vec<&FaultSpec> = self.exp.faults.iter().collect();
        schedule.sort_by_key(|f| f.at);
        let mut next_fault = 0;
        let mut next_check = faults_begin + self.exp.interval.min(Duration::from_millis(500));
        loop {
            let now = Instant::now();
            while next_fault < schedule.len() && faults_begin + schedule[next_fault].at <= now {
                let f = schedule[next_fault];
                let ends = faults_begin + f.at + f.lasts.unwrap_or_else(|| total.saturating_sub(f.at));
                self.start_fault(f, ends);
                next_fault += 1;
            }
            self.end_faults(false);
            if now >= faults_begin + total && next_fault == schedule.len() {
                break;
            }
            if now >= next_check {
                self.checks(Phase::During);
                next_check = Instant::now() + self.exp.interval;
            }
            if interrupts.sleep(Duration::from_millis(50)) {
                self.interrupted = true;
                return;
            }
        }
        self.end_faults(true);
        let deadline = Instant::now() + self.exp.settle;
        loop {
            let results: Vec<(String, bool, String)> = self
                .exp
                .checks
                .iter()
                .map(|c| {
                    let (ok, detail) = self.check(c);
                    (c.name.clone(), ok, detail)
                })
                .collect();
            let all = results.iter().all(|(_, ok, _)| *ok);
            if all || Instant::now() >= deadline {
                for (name, ok, detail) in results {
                    self.note(Phase::After, "check", name, ok, detail);
                }
                return;
            }
            if interrupts.sleep(self.exp.interval) {
                self.interrupted = true;
                return;
            }
        }
    }
}

fn describe(fault: &FaultSpec) -> String {
    match &fault.action {
        FaultAction::Kill { service } => format!("kill {service}"),
        FaultAction::Partition { a, b } => format!("partition {a}<->{b}"),
        FaultAction::Impair { target, impairment } => format!("{} on {target}", impairment.describe()),
    }
}

fn print_event(e: &Event) {
    let status = match (e.kind, e.ok) {
        ("check", true) => "ok",
        ("check", false) => "FAIL",
        ("fault_start", true) => "start",
        ("fault_end", true) => "end",
        _ => "ERROR",
    };
    say!(
        "{:>8.2}s  {:<6}  {:<5}  {}: {}",
        e.t_ms as f64 / 1000.0,
        e.phase.as_str(),
        status,
        e.name,
        e.detail
    );
}

/// A URL's host as an address: a service's VIP (else its first replica), a container's first
/// address, `localhost`, or an IPv4 address.
fn resolve(desired: &Desired, host: &str) -> Option<Ipv4Addr> {
    if let Ok(ip) = host.parse() {
        return Some(ip);
    }
    if host == "localhost" {
        return Some(Ipv4Addr::LOCALHOST);
    }
    if let Some(vip) = desired.service(host).and_then(|s| s.vip) {
        return Some(vip);
    }
    desired
        .container_or_first(host)
        .and_then(|c| c.interfaces.first())
        .map(|i| i.address)
}

/// `GET path` from the host or from inside a container (on a thread of its own that enters
/// the container's namespace): the status and how long until it came, or what went wrong.
fn http_get(
    netns: Option<String>,
    ip: Ipv4Addr,
    port: u16,
    host: &str,
    path: &str,
    within: Duration,
) -> std::result::Result<(u16, Duration), String> {
    let (host, path) = (host.to_string(), path.to_string());
    let task = move || -> std::result::Result<(u16, Duration), String> {
        if let Some(ns) = netns {
            use plumb_core::kernel::Kernel;
            let mut kernel = crate::apply::kernel().map_err(|e| e.to_string())?;
            kernel.enter_netns(&ns).map_err(|e| e.to_string())?;
        }
        crate::load::get_once(SocketAddr::from((ip, port)), &host, &path, within)
    };
    std::thread::spawn(task)
        .join()
        .unwrap_or_else(|_| Err("the check's thread failed".into()))
}

/// `plumb experiment list`: what `run` can take from the file.
pub fn list(file: &Path, format: Format) -> Result<()> {
    let parsed = stackfile::load(file)?;
    let experiments = &parsed.stack.experiments;
    if format == Format::Json {
        let rows: Vec<serde_json::Value> = experiments
            .iter()
            .map(|e| {
                serde_json::json!({
                    "name": e.name,
                    "description": e.description,
                    "checks": e.checks.iter().map(|c| &c.name).collect::<Vec<_>>(),
                    "faults": e.faults.len(),
                    "duration_ms": e.duration().as_millis() as u64,
                    "settle_ms": e.settle.as_millis() as u64,
                })
            })
            .collect();
        print_json(&rows);
        return Ok(());
    }
    if experiments.is_empty() {
        say!("{} has no [[experiments]] (see docs/stack-file.md)", file.display());
        return Ok(());
    }
    let rows: Vec<Vec<String>> = experiments
        .iter()
        .map(|e| {
            vec![
                e.name.clone(),
                e.checks.len().to_string(),
                e.faults.len().to_string(),
                humantime::format_duration(e.duration()).to_string(),
                e.description.clone().unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        crate::output::table(&["NAME", "CHECKS", "FAULTS", "FAULTS FOR", "DESCRIPTION"], &rows)
    );
    Ok(())
}

pub fn run(ctx: &Context, name: &str, file: &Path, format: Format) -> Result<()> {
    require_root("experiment run")?;
    require_nft()?;
    let parsed = stackfile::load(file)?;
    let Some(exp) = parsed.stack.experiments.iter().find(|e| e.name == name) else {
        let names: Vec<&str> = parsed.stack.experiments.iter().map(|e| e.name.as_str()).collect();
        let hint = match names.is_empty() {
            true => "add an [[experiments]] table to the stack file (see docs/stack-file.md)".to_string(),
            false => format!("the file has: {}", names.join(", ")),
        };
        return Err(Failure::new(format!("no experiment {name:?} in {}", file.display()))
            .hint(hint)
            .code(2));
    };
    let stack = &parsed.stack.name;
    let st = ctx.state.load(stack)?.filter(|s| s.desired.is_some()).ok_or_else(|| {
        Failure::new(format!("stack {stack} is not up")).hint(format!("run `plumb up -f {}` first", file.display()))
    })?;
    let desired = st.desired.as_ref().expect("filtered above");
    let dir = ctx.state.stack_dir(stack);
    faults::tend(&dir)?;
    if format == Format::Human {
        let what = exp.description.as_deref().map(|d| format!(": {d}")).unwrap_or_default();
        say!("experiment {} on stack {stack}{what}", exp.name);
    }
    let interrupts = Interrupts::hold()?;
    let mut run = Run {
        ctx,
        st: &st,
        desired,
        exp,
        begun: Instant::now(),
        events: Vec::new(),
        active: Vec::new(),
        interrupted: false,
        seed: runfile::unix_ms() ^ u64::from(std::process::id()),
        format,
    };
    run.go(&interrupts);
    // Whatever happened, the run's faults end with it.
    run.end_faults(true);
    drop(interrupts);
    verdict(&run, stack, format)
}

fn verdict(run: &Run, stack: &str, format: Format) -> Result<()> {
    let failed = run.events.iter().find(|e| !e.ok);
    let held = failed.is_none() && !run.interrupted;
    let checks_run = run.events.iter().filter(|e| e.kind == "check").count();
    match format {
        Format::Json => print_json(&Report {
            experiment: &run.exp.name,
            stack,
            held,
            interrupted: run.interrupted,
            failed_check: failed,
            checks_run,
            timeline: &run.events,
        }),
        Format::Human => match failed {
            _ if run.interrupted => say!("interrupted: its faults are removed; no verdict"),
            None => say!("hypothesis held: {checks_run} checks passed"),
            Some(e) => say!(
                "hypothesis failed: {:?} failed {} the faults at {:.2}s: {}",
                e.name,
                e.phase.as_str(),
                e.t_ms as f64 / 1000.0,
                e.detail
            ),
        },
    }
    match (held, run.interrupted) {
        (true, _) => Ok(()),
        (false, true) => Err(Failure::silent(130)),
        (false, false) => Err(Failure::silent(1)),
    }
}

//! `plumb chaos`: faults on purpose. An impairment (delay, loss, rate...) on a container, a
//! service or a link `a->b`; a partition between two services or networks; replicas killed
//! at random; the active faults listed and cleared. Faults are recorded with their expiry in
//! the stack's state directory before the kernel is touched (see `faults.rs`).

use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use plumb_core::chaos::{self, ChaosError, Fault, Impairment, Timing};
use plumb_core::Op;
use serde::Serialize;

use super::{require_nft, require_root, Context, Format};
use crate::failure::{Failure, Result};
use crate::faults::{self, Locked};
use crate::output::{count, print_json, say, table};
use crate::runfile::{self, ReplicaState};
use crate::stackfile;
use crate::state::StackState;

impl From<ChaosError> for Failure {
    fn from(e: ChaosError) -> Failure {
        Failure::new(e.message).hint(e.hint).code(2)
    }
}

/// What a fault does and to what, before it is resolved against a stack.
#[derive(Debug, Clone)]
pub enum Request {
    Impair { target: String, impairment: Impairment },
    Partition { a: String, b: String },
}

/// Takes the `STACK/` off each name (`shop/web`, `shop/web->shop/gateway`), as `exec`, `logs`
/// and `capture` accept it: the stack they name, which must agree with each other and `-s`.
pub fn unqualify<'a>(stack: Option<&'a str>, names: &mut [&'a str]) -> Result<Option<&'a str>> {
    let mut chosen = stack;
    for name in names.iter_mut() {
        if let (Some(s), rest) = stackfile::qualified(name) {
            if chosen.is_some_and(|c| c != s) {
                return Err(Failure::new(format!(
                    "{name:?} names stack {s}, but the command is about stack {}",
                    chosen.unwrap_or_default()
                ))
                .hint("name one stack: STACK/NAME everywhere, or -s STACK")
                .code(2));
            }
            chosen = Some(s);
            *name = rest;
        }
    }
    Ok(chosen)
}

/// A target as given (`web`, `shop/web`, `shop/web->shop/gateway`) without its `STACK/`s, and
/// the stack they named.
fn unqualify_target<'a>(stack: Option<&'a str>, target: &'a str) -> Result<(String, Option<&'a str>)> {
    let mut ends: Vec<&str> = target.split("->").map(str::trim).collect();
    let stack = unqualify(stack, &mut ends)?;
    Ok((ends.join("->"), stack))
}

impl Request {
    /// The same request with every name unqualified, and the stack its names gave.
    pub fn unqualified(&self, stack: Option<&str>) -> Result<(Request, Option<String>)> {
        match self {
            Request::Impair { target, impairment } => {
                let (target, stack) = unqualify_target(stack, target)?;
                let stack = stack.map(str::to_string);
                Ok((
                    Request::Impair {
                        target,
                        impairment: *impairment,
                    },
                    stack,
                ))
            }
            Request::Partition { a, b } => {
                let mut names = [a.as_str(), b.as_str()];
                let stack = unqualify(stack, &mut names)?.map(str::to_string);
                let [a, b] = names.map(str::to_string);
                Ok((Request::Partition { a, b }, stack))
            }
        }
    }

    /// The name a stack must know for the request to be about it.
    fn first_name(&self) -> &str {
        match self {
            Request::Impair { target, .. } => target.split("->").next().unwrap_or(target).trim(),
            Request::Partition { a, .. } => a,
        }
    }
}

/// The stack a name belongs to: `-s STACK`, or the only stack that is up knowing the name
/// as a container, service or network.
pub fn pick_stack(ctx: &Context, stack: Option<&str>, name: &str) -> Result<StackState> {
    let stacks = ctx.state.stacks()?;
    if let Some(s) = stack {
        super::require_stack_name(s)?;
        return stacks.get(s).cloned().ok_or_else(|| {
            Failure::new(format!("stack {s} is not up"))
                .hint("`plumb ps` lists the stacks")
                .code(2)
        });
    }
    let knows = |st: &StackState| {
        st.desired.as_ref().is_some_and(|d| {
            d.container(name).is_some() || d.containers.iter().any(|c| c.service == name) || d.network(name).is_some()
        })
    };
    let found: Vec<&StackState> = stacks.values().filter(|st| knows(st)).collect();
    if found.is_empty() {
        return Err(Failure::new(format!(
            "no container, service or network {name:?} in any stack that is up"
        ))
        .hint("`plumb ps` lists the containers; a service name means all its replicas")
        .code(2));
    }
    stackfile::one_stack(found, |st| st.stack.as_str())
        .cloned()
        .map_err(|found| {
            let stacks: Vec<&str> = found.iter().map(|st| st.stack.as_str()).collect();
            stackfile::in_several_stacks(&format!("{name:?}"), &stacks)
        })
}

/// Resolves a request against the stack (a new fault number is taken only when it is kept).
fn plan(st: &StackState, faults: &mut chaos::Faults, request: &Request, timing: Timing) -> Result<Fault> {
    let desired = st.desired.as_ref().ok_or_else(|| {
        Failure::new(format!("stack {} has no record of its containers", st.stack)).hint("run `plumb up` again")
    })?;
    let id = faults.next_id.max(1);
    let fault = match request {
        Request::Impair { target, impairment } => chaos::plan_impairment(desired, id, target, *impairment, timing)?,
        Request::Partition { a, b } => chaos::plan_partition(desired, id, a, b, timing)?,
    };
    if let Some(other) = chaos::conflict(&faults.faults, &fault) {
        return Err(Failure::new(format!(
            "fault {} ({} on {}) already redirects some of these containers' traffic",
            other.id,
            other.describe(),
            other.target
        ))
        .hint(format!("clear it first: `plumb chaos clear {}`", other.id))
        .code(2));
    }
    faults.take_id();
    Ok(fault)
}

/// Starts a fault: recorded first (so whoever comes next can remove it), then its kernel
/// objects, its relay, and the redirects to the relay. On failure, what was made is removed.
pub fn start(
    ctx: &Context,
    st: &StackState,
    request: &Request,
    lasts: Option<Duration>,
    origin: &str,
) -> Result<Fault> {
    let dir = ctx.state.stack_dir(&st.stack);
    let mut locked = Locked::open(&dir)?;
    let timing = Timing {
        now_ms: runfile::unix_ms(),
        lasts,
    };
    let mut fault = plan(st, &mut locked.faults, request, timing)?;
    fault.origin = origin.to_string();
    locked.faults.faults.push(fault.clone());
    locked.save()?;
    let made = (|| -> Result<u32> {
        let mut kernel = crate::apply::kernel()?;
        apply(&mut kernel, &fault.setup_ops())?;
        let pid = match fault.detours.is_empty() {
            true => 0,
            false => faults::start_relay(&ctx.state.root, &st.stack, &dir, fault.id)?,
        };
        Ok(pid)
    })();
    let result = made.and_then(|pid| {
        if pid != 0 {
            fault.relay_pid = Some(pid);
            if let Some(f) = locked.faults.faults.iter_mut().find(|f| f.id == fault.id) {
                f.relay_pid = Some(pid);
            }
            locked.save()?;
        }
        let mut kernel = crate::apply::kernel()?;
        apply(&mut kernel, &fault.redirect_ops())
    });
    if let Err(e) = result {
        let id = fault.id;
        let _ = locked.remove(|f| f.id == id);
        return Err(e);
    }
    Ok(fault)
}

fn apply(kernel: &mut dyn plumb_core::kernel::Kernel, ops: &[Op]) -> Result<()> {
    for op in ops {
        kernel.apply(op)?;
    }
    kernel.settle()?;
    Ok(())
}

/// `plumb chaos TARGET ...` and `plumb chaos partition A B`.
pub fn run(
    ctx: &Context,
    request: &Request,
    lasts: Option<Duration>,
    stack: Option<&str>,
    dry_run: bool,
) -> Result<()> {
    require_root("chaos")?;
    require_nft()?;
    let (request, stack) = request.unqualified(stack)?;
    let request = &request;
    let st = pick_stack(ctx, stack.as_deref(), request.first_name())?;
    let dir = ctx.state.stack_dir(&st.stack);
    report_expired(faults::tend(&dir)?);
    if dry_run {
        let mut recorded = faults::read(&dir)?;
        let timing = Timing {
            now_ms: runfile::unix_ms(),
            lasts,
        };
        let fault = plan(&st, &mut recorded, request, timing)?;
        print!("{}", script(&fault));
        return Ok(());
    }
    let fault = start(ctx, &st, request, lasts, "plumb chaos")?;
    let on = match fault.containers() {
        c if c.is_empty() => String::new(),
        c => format!(" ({})", c.into_iter().collect::<Vec<_>>().join(", ")),
    };
    let until = match lasts {
        Some(d) => format!("for {}", humantime::format_duration(d)),
        None => "until cleared".to_string(),
    };
    say!(
        "fault {}: {} on {}{on}, {until}; `plumb chaos clear {}` ends it",
        fault.id,
        fault.describe(),
        fault.target,
        fault.id
    );
    Ok(())
}

/// The fault as a script: its commands in order, the relay in between, and how it is undone.
fn script(fault: &Fault) -> String {
    let mut out = format!(
        "#!/bin/sh\n# Generated by `plumb chaos --dry-run`: fault {} ({} on {}), as commands.\nset -e\n\n",
        fault.id,
        fault.describe(),
        fault.target
    );
    for op in fault.setup_ops() {
        out.push_str(&op.command());
        out.push('\n');
    }
    if !fault.detours.is_empty() {
        out.push_str(&format!(
            "# plumb's relay process opens the taps and holds, drops or damages each frame \
             ({}), then writes it back:\n# plumb chaos-relay {} {} &\n",
            fault.describe(),
            fault.stack,
            fault.id
        ));
    }
    for op in fault.redirect_ops() {
        out.push_str(&op.command());
        out.push('\n');
    }
    out.push_str("\n# Removed by `plumb chaos clear`, at its expiry, or by `plumb down`:\n");
    for op in fault.undo_ops() {
        for line in op.command().lines() {
            out.push_str(&format!("# {line}\n"));
        }
    }
    out
}

fn report_expired(gone: Vec<Fault>) {
    for f in gone {
        eprintln!("plumb: fault {} ({} on {}) ended", f.id, f.describe(), f.target);
    }
}

#[derive(Serialize)]
struct Row<'a> {
    stack: &'a str,
    #[serde(flatten)]
    fault: &'a Fault,
    description: String,
    remaining_ms: Option<u64>,
}

/// `plumb chaos list`: every stack's active faults (or one stack's).
pub fn list(ctx: &Context, stack: Option<&str>, format: Format) -> Result<()> {
    let mut all = Vec::new();
    for name in ctx.state.stacks()?.into_keys().filter(|s| stack.is_none_or(|f| f == s)) {
        let dir = ctx.state.stack_dir(&name);
        if nix::unistd::geteuid().is_root() {
            report_expired(faults::tend(&dir)?);
        }
        all.extend(faults::read(&dir)?.faults);
    }
    let now = runfile::unix_ms();
    let rows: Vec<Row> = all
        .iter()
        .map(|f| Row {
            stack: &f.stack,
            fault: f,
            description: f.describe(),
            remaining_ms: f.remaining_ms(now),
        })
        .collect();
    if format == Format::Json {
        print_json(&rows);
        return Ok(());
    }
    if rows.is_empty() {
        say!("no active faults");
        return Ok(());
    }
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.fault.id.to_string(),
                r.stack.to_string(),
                r.fault.target.clone(),
                r.description.clone(),
                r.remaining_ms.map_or("until cleared".into(), |ms| {
                    format!("{:.0}s", (ms as f64 / 1000.0).ceil())
                }),
                r.fault.origin.clone(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(&["ID", "STACK", "TARGET", "FAULT", "LEFT", "STARTED BY"], &lines)
    );
    Ok(())
}

/// `plumb chaos clear [TARGET]`: TARGET is a fault number, a target as given, or a name the
/// fault's target mentions (a service); none clears every fault.
pub fn clear(ctx: &Context, target: Option<&str>, stack: Option<&str>) -> Result<()> {
    require_root("chaos clear")?;
    let (target, stack) = match target {
        Some(t) => {
            let (t, s) = unqualify_target(stack, t)?;
            (Some(t), s)
        }
        None => (None, stack),
    };
    let target = target.as_deref();
    let mut cleared = 0;
    let mut errors = Vec::new();
    for name in ctx.state.stacks()?.into_keys().filter(|s| stack.is_none_or(|f| f == s)) {
        let dir = ctx.state.stack_dir(&name);
        if faults::read(&dir)?.faults.is_empty() {
            continue;
        }
        let mut locked = Locked::open(&dir)?;
        let (gone, errs) = locked.remove(|f| target.is_none_or(|t| matches(f, t)))?;
        for f in &gone {
            say!("fault {} ({} on {}) removed", f.id, f.describe(), f.target);
        }
        cleared += gone.len();
        errors.extend(errs);
    }
    if !errors.is_empty() {
        return Err(Failure::new(format!(
            "some fault objects could not be removed: {}",
            errors.join("; ")
        ))
        .hint("`plumb down` removes whatever is left"));
    }
    if cleared == 0 {
        match target {
            Some(t) => {
                return Err(Failure::new(format!("no active fault matches {t:?}"))
                    .hint("`plumb chaos list` shows them")
                    .code(2))
            }
            None => say!("no active faults"),
        }
    }
    Ok(())
}

fn matches(fault: &Fault, target: &str) -> bool {
    if let Ok(id) = target.parse::<u32>() {
        return fault.id == id;
    }
    fault.target == target
        || fault
            .target
            .split("<->")
            .flat_map(|side| side.split("->"))
            .any(|part| part.trim() == target)
        || fault.containers().contains(target)
}

/// `plumb chaos kill SVC`: kills a running replica chosen at random, `count` times, `every`
/// apart; the supervisor restarts it by its policy. Killed by PID (its process group: the
/// replica's whole process tree), from the supervisor's status.
pub fn kill(
    ctx: &Context,
    service: &str,
    every: Option<Duration>,
    count_: Option<u32>,
    stack: Option<&str>,
) -> Result<()> {
    require_root("chaos kill")?;
    let mut names = [service];
    let stack = unqualify(stack, &mut names)?;
    let service = names[0];
    let st = pick_stack(ctx, stack, service)?;
    let dir = ctx.state.stack_dir(&st.stack);
    runfile::live_supervisor(&dir).ok_or_else(|| {
        Failure::new(format!("stack {} has no running supervisor", st.stack)).hint("`plumb up` starts it again")
    })?;
    let times = count_.unwrap_or(if every.is_some() { u32::MAX } else { 1 });
    let mut seed = runfile::unix_ms() ^ u64::from(std::process::id());
    for round in 0..times {
        if round > 0 {
            std::thread::sleep(every.unwrap_or_default());
        }
        let killed = kill_one(&dir, service, &mut seed)?;
        say!("killed {} (pid {})", killed.0, killed.1);
    }
    if times > 1 && times != u32::MAX {
        say!("{} killed", count(times as usize, "replica"));
    }
    Ok(())
}

/// Kills one running replica of `service` at random: (its name, its PID).
pub fn kill_one(stack_dir: &std::path::Path, service: &str, seed: &mut u64) -> Result<(String, u32)> {
    let status = runfile::read_status(stack_dir);
    let running: Vec<(&String, u32)> = status
        .replicas
        .iter()
        .filter(|(_, r)| r.service == service && r.state == ReplicaState::Running)
        .filter_map(|(name, r)| Some((name, r.pid?)))
        .collect();
    if running.is_empty() {
        return Err(Failure::new(format!("no replica of {service:?} is running"))
            .hint("`plumb ps` shows the replicas and their state"));
    }
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    let (name, pid) = running[(*seed % running.len() as u64) as usize];
    killpg(Pid::from_raw(pid as i32), Signal::SIGKILL)
        .map_err(|e| Failure::new(format!("cannot kill {name} (pid {pid}): {e}")))?;
    Ok((name.clone(), pid))
}

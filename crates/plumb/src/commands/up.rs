//! `plumb up`: make the kernel match the stack file (observe, diff, execute), or print the
//! plan as a script with `--dry-run`.

use std::path::{Path, PathBuf};

use plumb_core::cluster::HostAssignment;
use plumb_core::firewall::vxlan_nat;
use plumb_core::kernel::Kernel;
use plumb_core::services::run_specs;
use plumb_core::spec::Parsed;
use plumb_core::{render, Desired, Plan, What};
use plumb_engine::{Engine, Up};

use super::{require_nft, require_root, Context, Format};
use crate::apply;
use crate::events;
use crate::failure::{Failure, Result};
use crate::output::{count, say};
use crate::state::Lock;
use crate::supervisor::Supervisor;
use crate::{processes, runfile, stackfile};
use plumb_core::services::RunSpec;

/// What `up` does with the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply(Supervision),
    /// Print the plan and change nothing.
    DryRun(Format),
}

/// Where the stack's processes are supervised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Supervision {
    Background,
    /// In this process, until Ctrl-C.
    Foreground,
    /// In the background, without waiting for the processes to be ready (the agent follows
    /// readiness itself).
    NoWait,
    /// In the background, waiting until every replica is ready (`up --wait`): healthy where
    /// it has a health check, else still running shortly after its start.
    Wait,
}

/// Reads a host assignment (`plumb up --assignment FILE`: one host's part of a cluster stack
/// brought up by hand, without the cluster store).
pub fn read_assignment(path: &Path) -> Result<HostAssignment> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Failure::new(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        Failure::new(format!("{}: not a host assignment: {e}", path.display()))
            .hint("it is the JSON form of plumb_core::cluster::HostAssignment")
    })
}

/// Ctrl-C (or SIGTERM, SIGHUP) during `up` still ends it at once, as the user asked, but
/// says what the stack is left as and what to do: the next `up` finishes, `down` undoes.
/// For the `up` and `demo` commands only: the agent, which calls [`run`] too, handles its own
/// signals (it must leave the cluster cleanly on TERM).
pub fn say_how_to_recover_if_interrupted() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    extern "C" fn interrupted(_: nix::libc::c_int) {
        const MESSAGE: &[u8] =
            b"\nplumb: interrupted: the stack may be half made; run `plumb up` again to finish it or `plumb down` to undo it\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe.
        unsafe {
            nix::libc::write(2, MESSAGE.as_ptr().cast(), MESSAGE.len());
            nix::libc::_exit(130);
        }
    }
    let action = SigAction::new(SigHandler::Handler(interrupted), SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only calls async-signal-safe functions.
        let _ = unsafe { sigaction(signal, &action) };
    }
}

/// `plumb up -f FILE`.
pub fn run(ctx: &Context, file: &Path, mode: Mode, assignment: Option<&HostAssignment>) -> Result<()> {
    let file = &stackfile::resolve(file);
    let mut parsed = stackfile::load(file)?;
    if assignment.is_none() {
        parsed = keep_autoscaled_counts(ctx, file, parsed)?;
    }
    let file = stackfile::absolute(file);
    let base = match assignment.and_then(|a| a.base.clone()) {
        Some(base) => base,
        None => file.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    bring_up(ctx, &parsed, base, Some(file), assignment, mode)
}

/// An autoscaled service of a stack that is up keeps the count its autoscaler reached (within
/// the file's `min..max`), as a Kubernetes HPA owns its Deployment's replicas: `up` of an
/// edited file does not undo the scaling; `replicas` is only the starting count.
fn keep_autoscaled_counts(ctx: &Context, file: &Path, parsed: Parsed) -> Result<Parsed> {
    let Some(desired) = ctx
        .state
        .load(&parsed.stack.name)
        .ok()
        .flatten()
        .and_then(|r| r.desired)
    else {
        return Ok(parsed);
    };
    let mut counts = std::collections::BTreeMap::new();
    for (name, svc) in &parsed.stack.services {
        let Some(a) = &svc.autoscale else { continue };
        let running = desired
            .containers
            .iter()
            .filter(|c| &c.service == name && c.external.is_none())
            .count();
        let Ok(running) = u32::try_from(running) else { continue };
        let keep = running.clamp(a.min, a.max);
        if running > 0 && keep != svc.replicas {
            counts.insert(name.clone(), keep);
        }
    }
    if counts.is_empty() {
        return Ok(parsed);
    }
    let text =
        std::fs::read_to_string(file).map_err(|e| Failure::new(format!("cannot read {}: {e}", file.display())))?;
    let dir = stackfile::absolute(file)
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    Ok(plumb_engine::stackfile::parse(
        &file.display().to_string(),
        &text,
        &dir,
        &counts,
    )?)
}

/// `plumb scale SERVICE=N...`: the stack's recorded file, parsed again with these replica
/// counts (checked as the file's own), brought up through the engine like `up`.
pub fn scale(ctx: &Context, stack: Option<&str>, services: &[String], dry_run: bool) -> Result<()> {
    let mut replicas = std::collections::BTreeMap::new();
    let mut names = Vec::new();
    let mut stack = stack.map(str::to_string);
    for arg in services {
        let parsed = arg
            .split_once('=')
            .and_then(|(svc, n)| Some((svc, n.trim().parse::<u32>().ok()?)));
        let Some((service, count)) = parsed else {
            return Err(Failure::new(format!("{arg:?} is not SERVICE=N"))
                .hint("e.g. `plumb scale web=3`")
                .code(2));
        };
        let mut one = [service];
        let current = stack.clone();
        let named = crate::commands::chaos::unqualify(current.as_deref(), &mut one)?;
        let service = one[0].to_string();
        stack = named.map(str::to_string);
        names.push(service.clone());
        replicas.insert(service, count);
    }
    let st = crate::commands::chaos::pick_stack(ctx, stack.as_deref(), &names[0])?;
    let (file, parsed) = Engine::planner(&ctx.state).recorded_stack_file(&st.stack, &replicas)?;
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    let mode = match dry_run {
        true => Mode::DryRun(Format::Human),
        false => Mode::Apply(Supervision::Background),
    };
    bring_up(ctx, &parsed, base, Some(file), None, mode)
}

/// The assignment with each overlay's transmit checksum offload decided where it leaves it
/// open: kept unless a NAT rule on this host may rewrite the VXLAN packets it sends
/// ([`vxlan_nat`]; one ruleset read for all overlays), the workaround otherwise and when the
/// kernel cannot be read (not root).
pub fn decide_offload(assignment: &HostAssignment, kernel: Option<&mut dyn Kernel>) -> HostAssignment {
    let mut out = assignment.clone();
    let open = out.overlays.values().any(|o| o.tx_offload.is_none());
    let read = match kernel {
        _ if !open => Err("not needed".to_string()),
        None => Err("not running as root".to_string()),
        Some(k) => k
            .nft_ruleset()
            .and_then(|json| Ok((json, k.iptables_legacy_tables()?)))
            .map_err(|e| e.to_string()),
    };
    for o in out.overlays.values_mut() {
        let ruleset = read
            .as_ref()
            .map(|(j, l)| (j.as_str(), l.as_slice()))
            .map_err(Clone::clone);
        let d = vxlan_nat::decide(o.tx_offload, o.local, ruleset);
        o.tx_offload = Some(d.keep);
        o.tx_offload_why = Some(d.why);
    }
    out
}

/// Brings a parsed stack up (the CLI's `up`, `scale`, and the cluster agent with this host's
/// assignment): the engine plans and applies the change, then the supervisor takes the
/// stack's processes.
pub fn bring_up(
    ctx: &Context,
    parsed: &Parsed,
    base: PathBuf,
    file: Option<PathBuf>,
    assignment: Option<&HostAssignment>,
    mode: Mode,
) -> Result<()> {
    let stack = parsed.stack.name.clone();
    let root = nix::unistd::geteuid().is_root();
    if let Mode::Apply(_) = mode {
        require_root("up")?;
        require_nft()?;
    }
    let stack_dir = ctx.state.stack_dir(&stack);
    // Without root neither the kernel nor the state directory (private to root) can be read:
    // the plan is then the plan from scratch, as the note below says.
    let mut kernel = if root { Some(apply::kernel()?) } else { None };
    if let (Mode::Apply(_), Some(k)) = (&mode, kernel.as_mut()) {
        refuse_unenforceable_limits(parsed, k)?;
    }
    let decided = assignment.map(|a| decide_offload(a, kernel.as_mut().map(|k| k as &mut dyn Kernel)));
    // The load balancer lists the replicas the supervisor reports ready (none before it
    // ran): the plan then matches the chains the supervisor keeps, and it re-applies them
    // from its own view when it takes this run (closing the race with this read).
    let unready = |d: &Desired| runfile::read_status(&stack_dir).unready(d);
    let request = Up {
        parsed,
        base: base.clone(),
        file,
        assignment: decided.as_ref(),
        unready: &unready,
    };
    let mut engine = match kernel.as_mut() {
        Some(k) => Engine::open(k, &ctx.state)?,
        None => Engine::planner(&ctx.state),
    };
    if let (Mode::Apply(_), true) = (&mode, root) {
        refuse_another_state_dir(ctx, &stack)?;
    }
    let change = engine.plan_up(&request)?;
    for warning in &change.warnings {
        eprintln!("warning: {warning}");
    }
    let supervision = match mode {
        Mode::DryRun(format) => {
            print_plan(&change.plan, "plumb up", "", format)?;
            if !change.observed {
                eprintln!("note: not running as root, so the kernel was not read: this is the plan from scratch");
            }
            return Ok(());
        }
        Mode::Apply(supervision) => supervision,
    };
    // Images are built (or pulled) before anything changes: a failed build leaves all as it was.
    crate::oci::prepare_images(parsed, &base)?;
    let applied = apply::with_progress(|progress| {
        engine.apply(
            change,
            &mut |c, kernel| {
                // Faults whose time is up end before anything else (a command on the stack is
                // one of their clocks); processes in rebuilt containers are let go.
                for fault in &c.ending {
                    for e in crate::faults::undo(kernel, fault) {
                        eprintln!("plumb: ending fault {}: {e}", fault.id);
                    }
                }
                // Replicas on their way out leave their VIPs and DNS, and their connections
                // end, before they are stopped.
                processes::drain(&stack_dir, &c.rebuilt, kernel).map_err(Failure::into_engine)?;
                processes::release_containers(&stack_dir, &c.rebuilt).map_err(Failure::into_engine)
            },
            progress,
        )
    });
    let change = match applied {
        Ok(change) => change,
        Err(e) => {
            // A drain the failed change began ends: its replicas take connections again.
            let _ = processes::undrain(&stack_dir);
            return Err(e.into());
        }
    };
    let (desired, plan) = (&change.desired, &change.plan);
    for step in &plan.steps {
        match &step.what {
            What::DeleteContainer { container, .. } => events::record(&stack_dir, &stack, container, "removed", ""),
            What::CreateContainer { container, .. } => events::record(&stack_dir, &stack, container, "created", ""),
            _ => {}
        }
    }
    say!("{}", summary(desired, plan));

    let specs = run_specs(desired, &base);
    // The supervisor also runs the stack's DNS server: it is needed while containers are.
    if desired.containers.is_empty() && supervision != Supervision::Foreground {
        return processes::stop_supervisor(&stack_dir);
    }
    if supervision != Supervision::Foreground && plan.is_empty() && supervisor_has(&stack_dir, &specs, desired) {
        // Nothing changed and the supervisor runs this very stack: no new generation to hand
        // over (a no-op `up` stays a few milliseconds); `--wait` still waits for readiness.
        let status = match supervision {
            Supervision::Wait => {
                let run = runfile::read_run(&stack_dir);
                processes::wait_until_ready(&stack_dir, &run, processes::HealthWait::Everything)?
            }
            _ => runfile::read_status(&stack_dir),
        };
        if !specs.is_empty() {
            let running = status.replicas.values().filter(|r| r.pid.is_some()).count();
            say!(
                "{} started, {running} left running (supervisor pid {})",
                count(0, "process"),
                status.supervisor_pid
            );
        }
        return Ok(());
    }
    let run = processes::write_run(&stack_dir, specs, Some(desired))?;
    if supervision == Supervision::Foreground {
        if runfile::live_supervisor(&stack_dir).is_some() {
            return Err(
                Failure::new(format!("stack {stack} is already supervised in the background"))
                    .hint("`plumb logs` follows it; `plumb down` stops it"),
            );
        }
        drop(engine);
        say!(
            "supervising {} process(es) in the foreground; Ctrl-C stops them (`plumb down` removes the network)",
            run.specs.len()
        );
        Supervisor::new(&stack_dir, None)?.run()?;
        say!("stopped");
        return Ok(());
    }
    // What ran before, to tell what this `up` started from what it left running.
    let before = runfile::read_status(&stack_dir);
    // The supervisor takes the lock over while it starts: nothing waits for it here unless
    // there are processes to report.
    let lock = engine.take_lock().and_then(|l| l.downcast::<Lock>().ok()).map(|l| *l);
    drop(engine);
    processes::hand_over(&ctx.state, &stack, &run, lock)?;
    if supervision == Supervision::NoWait || run.specs.is_empty() {
        return Ok(());
    }
    let health = match supervision {
        Supervision::Wait => processes::HealthWait::Everything,
        _ => processes::HealthWait::Dependencies,
    };
    let status = processes::wait_until_ready(&stack_dir, &run, health)?;
    let running: Vec<_> = status.replicas.iter().filter(|(_, r)| r.pid.is_some()).collect();
    let kept = running
        .iter()
        .filter(|(c, r)| before.replicas.get(*c).and_then(|b| b.pid) == r.pid)
        .count();
    say!(
        "{} started, {kept} left running (supervisor pid {})",
        count(running.len() - kept, "process"),
        status.supervisor_pid
    );
    Ok(())
}

/// Hands a changed stack (an attach, a detach) to its supervisor without waiting: its DNS
/// names and VIP endpoints follow the new desired state; its processes are left as they are.
pub fn refresh_supervisor(ctx: &Context, desired: &Desired, base: &Path) -> Result<()> {
    let stack_dir = ctx.state.stack_dir(&desired.stack);
    if desired.containers.is_empty() {
        return processes::stop_supervisor(&stack_dir);
    }
    let run = processes::write_run(&stack_dir, run_specs(desired, base), Some(desired))?;
    processes::hand_over(&ctx.state, &desired.stack, &run, None)
}

/// True if a live supervisor has applied a `run.json` with exactly these processes and this
/// stack (readiness aside: that is the supervisor's own to follow), and every process runs
/// (or was stopped by `plumb stop`).
fn supervisor_has(stack_dir: &Path, specs: &[RunSpec], desired: &Desired) -> bool {
    let run = runfile::read_run(stack_dir);
    let settled = |d: &Desired| Desired {
        unready: Default::default(),
        ..d.clone()
    };
    let status = runfile::read_status(stack_dir);
    // A replica that exited is started again by a new `up`: that needs a new generation.
    let all_running = status
        .replicas
        .values()
        .all(|r| matches!(r.state, runfile::ReplicaState::Running | runfile::ReplicaState::Stopped));
    run.specs == specs
        && run.desired.as_ref().map(settled) == Some(settled(desired))
        && status.generation == run.generation
        && status.replicas.len() == specs.len()
        && all_running
        && runfile::live_supervisor(stack_dir).is_some()
}

/// Prints a plan as a script for people (after `preamble`, see [`render::script`]) or as
/// JSON (steps and their operations) for programs.
pub fn print_plan(plan: &Plan, command: &str, preamble: &str, format: Format) -> Result<()> {
    match format {
        Format::Human => print!("{}", render::script(plan, command, preamble)),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(plan).map_err(|e| Failure::new(e.to_string()))?
        ),
    }
    Ok(())
}

/// A limit the host cannot enforce (a cgroup controller it lacks, swap it does not account)
/// is refused before anything changes, never ignored. Image services' limits are podman's.
fn refuse_unenforceable_limits(parsed: &Parsed, kernel: &mut dyn Kernel) -> Result<()> {
    use plumb_core::cgroup::Limits;
    let mut problems = Vec::new();
    for (name, service) in &parsed.stack.services {
        let Some(process) = service.process.as_ref().filter(|p| p.image.is_none()) else {
            continue;
        };
        let l = process.limits;
        let each = [
            (
                "cpus",
                Limits {
                    cpus: l.cpus,
                    ..Limits::default()
                },
            ),
            (
                "memory",
                Limits {
                    memory: l.memory,
                    ..Limits::default()
                },
            ),
            (
                "memory_swap",
                Limits {
                    memory: l.memory,
                    memory_swap: l.memory_swap,
                    ..Limits::default()
                },
            ),
            (
                "pids",
                Limits {
                    pids: l.pids,
                    ..Limits::default()
                },
            ),
        ];
        for (field, only) in each {
            if only.is_empty() || (field == "memory_swap" && l.memory_swap.is_none()) {
                continue;
            }
            if let Some(why) = kernel.cgroup_unenforceable(&only) {
                problems.push(parsed.error(
                    &format!("services.{name}.{field}"),
                    format!("this host cannot enforce {field}: {why}"),
                    format!(
                        "lower or remove {field}, or run the stack on a host that can enforce it (nothing was changed)"
                    ),
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(plumb_core::Diagnostics(problems).into())
    }
}

/// The kernel's objects are the truth: a stack already run by the supervisor of another state
/// directory (PLUMB_STATE_DIR) is not started a second time from this one, or both would end
/// each other's processes.
fn refuse_another_state_dir(ctx: &Context, stack: &str) -> Result<()> {
    let Some((pid, report)) = crate::supervisor_socket::elsewhere(&ctx.state.stack_dir(stack)) else {
        return Ok(());
    };
    let dir = report
        .state_dir
        .unwrap_or_else(|| "another state directory".to_string());
    Err(Failure::new(format!(
        "stack {stack} is already up from state directory {dir} (its supervisor is pid {pid}), not from {}",
        ctx.state.root.display()
    ))
    .hint(format!(
        "use that directory (PLUMB_STATE_DIR={dir} plumb up), or `PLUMB_STATE_DIR={dir} plumb down {stack}` first"
    )))
}

fn summary(desired: &Desired, plan: &Plan) -> String {
    let created = plan.count(|w| matches!(w, What::CreateContainer { .. }));
    let removed = plan.count(|w| matches!(w, What::DeleteContainer { .. }));
    if plan.is_empty() {
        return format!(
            "stack {}: up to date ({}, {})",
            desired.stack,
            count(desired.containers.len(), "container"),
            count(desired.networks.len(), "network")
        );
    }
    format!(
        "stack {}: {} on {} ({created} created, {removed} removed, {} unchanged)",
        desired.stack,
        count(desired.containers.len(), "container"),
        count(desired.networks.len(), "network"),
        desired.containers.len().saturating_sub(created)
    )
}

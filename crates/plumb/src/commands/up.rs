//! `plumb up`: make the kernel match the stack file (observe, diff, execute), or print the
//! plan as a script with `--dry-run`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use plumb_core::cluster::HostAssignment;
use plumb_core::ipam::subnets_overlap;
use plumb_core::services::{run_specs, SEARCH_PATH};
use plumb_core::spec::Parsed;
use plumb_core::{desired, plan, render, Desired, Diagnostics, Plan, What};
use plumb_engine::observe::{claims, observe, Observed};
use plumb_engine::{ownership, OnError};

use super::{require_nft, require_root, Context, Format};
use crate::apply;
use crate::events;
use crate::failure::{Failure, Result};
use crate::output::{count, say};
use crate::state::StackState;
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

/// Reads a host assignment (`plumb up --assignment FILE`, what the agent passes in-process).
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

pub fn run(ctx: &Context, file: &Path, mode: Mode, assignment: Option<&HostAssignment>) -> Result<()> {
    let parsed = stackfile::load(file)?;
    let stack = parsed.stack.name.clone();
    let root = nix::unistd::geteuid().is_root();
    if let Mode::Apply(_) = mode {
        require_root("up")?;
        require_nft()?;
    }
    let base = match assignment.and_then(|a| a.base.clone()) {
        Some(base) => base,
        None => stackfile::absolute(file)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    check_programs(&parsed, &base)?;
    let lock = if root { Some(ctx.state.lock()?) } else { None };
    if let (Mode::Apply(_), true) = (&mode, root) {
        refuse_another_state_dir(ctx, &stack)?;
    }
    // Without root the state directory (private to root) cannot be read: the plan is then
    // the plan from scratch, as the note below says.
    let state = if root { ctx.state.load(&stack)? } else { None };
    let previous = state.as_ref().map(|s| s.leases.clone()).unwrap_or_default();
    let (mut desired, leases) = match assignment {
        Some(a) => desired::resolve_on_host(&parsed, &previous, a)?,
        None => desired::resolve(&parsed, &previous)?,
    };
    // The load balancer lists the replicas the supervisor reports ready (none before it
    // ran): the plan then matches the chains the supervisor keeps, and it re-applies them
    // from its own view when it takes this run (closing the race with this read).
    desired.unready = runfile::read_status(&ctx.state.stack_dir(&stack)).unready(&desired);
    let others = if root { ctx.state.stacks()? } else { Default::default() };
    check_other_stacks(&parsed, &desired, &others)?;
    let claimed = claims(&others, &stack);
    refuse_taken_names(&desired, &claimed, &Default::default())?;
    let mut kernel = if root { Some(apply::kernel()?) } else { None };
    let observed = match kernel.as_mut() {
        Some(k) => {
            check_host_routes(&parsed, &desired)?;
            let published = state.as_ref().and_then(|s| s.desired.as_ref());
            check_published_ports(&parsed, published)?;
            observe(k, &stack, Some(&desired), state.as_ref(), &claimed)?
        }
        None => Observed::default(),
    };
    refuse_taken_names(&desired, &claimed, &observed.foreign)?;
    let plan = plan::diff(&stack, Some(&desired), &observed.actual);

    let (supervision, mut kernel) = match (mode, kernel) {
        (Mode::DryRun(format), _) => {
            print_plan(&plan, "plumb up", "", format)?;
            if !root {
                eprintln!("note: not running as root, so the kernel was not read: this is the plan from scratch");
            }
            return Ok(());
        }
        (Mode::Apply(supervision), Some(kernel)) => (supervision, kernel),
        (Mode::Apply(_), None) => unreachable!("require_root passed"),
    };

    // Record the intent first: an `up` killed from here on is finished or undone by the next
    // `up` or `down`, which find every namespace and network listed here.
    let mut st = state.unwrap_or_default();
    st.stack = stack.clone();
    st.file = Some(stackfile::absolute(file));
    st.desired = Some(desired.clone());
    st.leases = leases;
    st.namespaces.extend(desired.containers.iter().map(|c| c.netns.clone()));
    st.networks.extend(desired.networks.iter().map(|n| n.name.clone()));
    ctx.state.save(&st)?;

    let stack_dir = ctx.state.stack_dir(&stack);
    // Expired faults end before anything else (a command on the stack is one of their clocks).
    crate::faults::tend(&stack_dir)?;
    let rebuilt: BTreeSet<String> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.what {
            What::DeleteContainer { netns, .. } => Some(netns.clone()),
            _ => None,
        })
        .collect();
    processes::release_containers(&stack_dir, &rebuilt)?;

    if plan.count(|w| *w == What::EnableForwarding) > 0 {
        ctx.state.note_forwarding_enabled()?;
    }
    let (outcome, result) = apply::run(&mut kernel, &plan, OnError::Stop);
    st.record_fingerprints(&observed.fingerprints);
    st.record_firewall(&outcome.firewall);
    if result.is_ok() {
        st.namespaces = desired.containers.iter().map(|c| c.netns.clone()).collect();
        st.networks = desired.networks.iter().map(|n| n.name.clone()).collect();
    }
    ctx.state.save(&st)?;
    result?;
    for step in &plan.steps {
        match &step.what {
            What::DeleteContainer { container, .. } => events::record(&stack_dir, &stack, container, "removed", ""),
            What::CreateContainer { container, .. } => events::record(&stack_dir, &stack, container, "created", ""),
            _ => {}
        }
    }
    say!("{}", summary(&desired, &plan));

    let specs = run_specs(&desired, &base);
    // The supervisor also runs the stack's DNS server: it is needed while containers are.
    if desired.containers.is_empty() && supervision != Supervision::Foreground {
        return processes::stop_supervisor(&stack_dir);
    }
    if supervision != Supervision::Foreground && plan.is_empty() && supervisor_has(&stack_dir, &specs, &desired) {
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
    let run = processes::write_run(&stack_dir, specs, Some(&desired))?;
    if supervision == Supervision::Foreground {
        if runfile::live_supervisor(&stack_dir).is_some() {
            return Err(
                Failure::new(format!("stack {stack} is already supervised in the background"))
                    .hint("`plumb logs` follows it; `plumb down` stops it"),
            );
        }
        drop(lock);
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

/// Refuses an `up` whose container names another stack owns; nothing has been touched yet.
fn refuse_taken_names(
    desired: &Desired,
    claimed: &BTreeMap<String, String>,
    foreign: &BTreeMap<String, String>,
) -> Result<()> {
    let taken = ownership::conflicts(desired, claimed, foreign);
    match ownership::refusal(desired, &taken) {
        Some(e) => Err(Failure::from(e).code(2)),
        None => Ok(()),
    }
}

/// A network must not take an address range the host already routes elsewhere (the host
/// would lose its way there). Routes on plumb's own bridges do not count.
fn check_host_routes(parsed: &Parsed, desired: &Desired) -> Result<()> {
    let mut nl = plumb_linux::Netlink::open()?;
    let mut errors = Vec::new();
    // An overlay network's routes to the other hosts' blocks go through its VXLAN device.
    let own_devices: Vec<&str> = desired
        .networks
        .iter()
        .filter_map(|n| n.overlay.as_ref().map(|o| o.device.as_str()))
        .collect();
    for (route, oif) in plumb_linux::route::list_v4(&mut nl)? {
        let overlapping: Vec<_> = desired
            .networks
            .iter()
            .filter(|net| {
                subnets_overlap(net.subnet, route)
                    || net.overlay.as_ref().is_some_and(|o| subnets_overlap(o.subnet, route))
            })
            .collect();
        if overlapping.is_empty() {
            continue;
        }
        // Only an overlapping route's device is looked up (a dump of every link would cost
        // more than the check itself on a host with many containers).
        let dev = oif
            .and_then(|i| plumb_linux::link::get(&mut nl, plumb_linux::link::LinkRef::Index(i)).ok())
            .map_or_else(|| "?".to_string(), |l| l.name);
        if dev.starts_with(plumb_core::names::BRIDGE_PREFIX) || own_devices.contains(&dev.as_str()) {
            continue;
        }
        for net in overlapping {
            errors.push(parsed.error(
                &format!("networks.{}.subnet", net.name),
                format!("{} overlaps the host's route to {route} via {dev}", net.subnet),
                "pick another address range: the host would lose its way to that network",
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Diagnostics(errors).into())
    }
}

/// A port about to be published must be free on the host: a host process listening there
/// would be shadowed by the DNAT (unreachable on that port until `down`), so it is named
/// instead. Ports the stack already publishes (`previous`) are not asked about again. A port
/// published on one address needs that address on the host.
fn check_published_ports(parsed: &Parsed, previous: Option<&Desired>) -> Result<()> {
    let mut nl = plumb_linux::Netlink::open()?;
    let local: Vec<std::net::Ipv4Addr> = plumb_linux::addr::list_v4(&mut nl)?
        .into_iter()
        .map(|(_, net)| net.addr())
        .collect();
    let mut errors = Vec::new();
    for (svc, spec) in &parsed.stack.services {
        for (i, p) in spec.ports.iter().enumerate() {
            let field = format!("services.{svc}.ports[{i}]");
            if let Some(ip) = p.host_ip.filter(|ip| !local.contains(ip)) {
                let mut known: Vec<String> = local.iter().map(|a| a.to_string()).collect();
                known.dedup();
                errors.push(parsed.error(
                    &field,
                    format!("{ip} is not an address of this host"),
                    format!(
                        "publish on one of {}, or leave the address out for all",
                        known.join(", ")
                    ),
                ));
                continue;
            }
            let Some(listener) = host_listener_on(p)? else { continue };
            let already = previous.is_some_and(|d| d.containers.iter().any(|c| c.ports.contains(p)));
            if already {
                // The stack held the port first: the host process came later, and its clients
                // reach the container. Not an error (the stack is right), but said.
                eprintln!("warning: {}", shadowed(p, &listener));
                continue;
            }
            errors.push(parsed.error(
                &field,
                format!("host port {} is in use: {listener}", p.host_side()),
                "stop that process, publish another host port, or publish on an address it does not use (ADDRESS:HOST:CONTAINER)",
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Diagnostics(errors).into())
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

/// A host process listening where `port` is published (sock_diag in the host's namespace), as
/// "python3 (pid 42) listens on 0.0.0.0:8080".
pub fn host_listener_on(port: &plumb_core::spec::PortSpec) -> Result<Option<String>> {
    use plumb_linux::sockets::{listeners, Transport};
    use std::net::IpAddr;
    let transport = match port.protocol {
        plumb_core::spec::Protocol::Tcp => Transport::Tcp,
        plumb_core::spec::Protocol::Udp => Transport::Udp,
    };
    let clash = listeners(transport, port.host)?.into_iter().find(|l| match l.address {
        IpAddr::V4(a) => a.is_unspecified() || port.host_ip.is_none_or(|ip| ip == a),
        IpAddr::V6(a) => a.is_unspecified(),
    });
    Ok(clash.map(|l| {
        let who = match l.holders.first() {
            Some((pid, command)) => format!("{command} (pid {pid})"),
            None => "a process (not found in /proc)".to_string(),
        };
        format!("{who} listens on {}:{}", l.address, l.port)
    }))
}

/// What a host process listening on a port the stack publishes meets: the stack's DNAT takes
/// its clients first.
pub fn shadowed(port: &plumb_core::spec::PortSpec, listener: &str) -> String {
    format!(
        "host port {} is published by the stack, but {listener}: its clients reach the container instead",
        port.host_side()
    )
}

/// Every command's program must exist before anything is touched.
fn check_programs(parsed: &Parsed, base: &Path) -> std::result::Result<(), Diagnostics> {
    let mut errors = Vec::new();
    for (name, svc) in &parsed.stack.services {
        let Some(p) = &svc.process else { continue };
        let workdir = p.workdir.as_ref().map_or(base.to_path_buf(), |w| base.join(w));
        if !workdir.is_dir() {
            errors.push(parsed.error(
                &format!("services.{name}.workdir"),
                format!("workdir {} does not exist", workdir.display()),
                "create it, or fix workdir (relative to the stack file's folder)",
            ));
            continue;
        }
        let program = &p.command[0];
        let found = if program.contains('/') {
            is_executable(&workdir.join(program))
        } else {
            SEARCH_PATH
                .split(':')
                .any(|dir| is_executable(&Path::new(dir).join(program)))
        };
        if !found {
            errors.push(parsed.error(
                &format!("services.{name}.command"),
                format!("program {program:?} is not installed (or not executable)"),
                "install it, or give its path (relative paths start from the service's workdir)",
            ));
        }
        if let Some(user) = &p.user {
            if nix::unistd::User::from_name(user).ok().flatten().is_none() {
                errors.push(parsed.error(
                    &format!("services.{name}.user"),
                    format!("user {user:?} does not exist on this machine"),
                    "create the user, or remove `user`",
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Diagnostics(errors))
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
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

/// Two stacks must not claim the same addresses or host ports.
fn check_other_stacks(
    parsed: &Parsed,
    desired: &Desired,
    stacks: &BTreeMap<String, StackState>,
) -> std::result::Result<(), Diagnostics> {
    let mut errors = Vec::new();
    for (name, other) in stacks.iter().filter(|(n, _)| **n != desired.stack) {
        let Some(theirs) = &other.desired else {
            continue;
        };
        for net in &desired.networks {
            for t in &theirs.networks {
                if subnets_overlap(net.subnet, t.subnet) {
                    errors.push(parsed.error(
                        &format!("networks.{}.subnet", net.name),
                        format!(
                            "{} overlaps network {:?} ({}) of stack {name:?}, which is up",
                            net.subnet, t.name, t.subnet
                        ),
                        "pick another address range, or `plumb down` the other stack",
                    ));
                }
            }
        }
        let their_ports: Vec<_> = theirs.containers.iter().flat_map(|c| c.ports.iter()).collect();
        for (svc, spec) in &parsed.stack.services {
            for (i, p) in spec.ports.iter().enumerate() {
                if their_ports.iter().any(|theirs| theirs.overlaps(p)) {
                    errors.push(parsed.error(
                        &format!("services.{svc}.ports[{i}]"),
                        format!("host port {} is already published by stack {name:?}", p.host_side()),
                        "pick another host port, or `plumb down` the other stack",
                    ));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Diagnostics(errors))
    }
}

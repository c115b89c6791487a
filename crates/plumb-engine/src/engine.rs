//! The engine's API, what every caller drives (the CLI's commands, the cluster agent, the
//! supervisor, the CNI plugin): bring a stack to its desired state, tear it down,
//! scale a service. Each change is two calls: [`Engine::plan_up`] (or `plan_down`) reads the
//! state and the kernel and returns the [`Change`] with its plan, changing nothing (what
//! `--dry-run` prints); [`Engine::apply`] records the intent, executes the plan and records
//! what it did. An engine holds the state store's lock while it lives, so two changes never
//! interleave (`up`, `down`, `chaos` and the agent all take it).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use plumb_core::chaos::{Fault, Faults};
use plumb_core::cluster::HostAssignment;
use plumb_core::desired::Attachment;
use plumb_core::firewall::Ruleset;
use plumb_core::ipam::subnets_overlap;
use plumb_core::kernel::{Kernel, Transport};
use plumb_core::plan::Step;
use plumb_core::services::SEARCH_PATH;
use plumb_core::spec::{Parsed, PortSpec, Protocol};
use plumb_core::{desired, names, plan, Desired, Diagnostics, Op, Plan, What};

use crate::error::{Error, Result};
use crate::execute::{execute, OnError, Outcome, Progress};
use crate::observe::{claims, observe, Observed};
use crate::ownership;
use crate::state::{RecordedSpec, StackState, StateStore, StoreLock};

/// The engine over one kernel and one state store.
pub struct Engine<'a> {
    /// `None`: planning only, from scratch (a user without root can read neither).
    kernel: Option<&'a mut dyn Kernel>,
    state: &'a dyn StateStore,
    _lock: Option<StoreLock>,
}

/// What to bring up.
pub struct Up<'a> {
    pub parsed: &'a Parsed,
    /// The folder relative paths in the stack start from (the stack file's).
    pub base: PathBuf,
    /// The stack file, recorded for commands that re-read it; `None` when the stack came
    /// from elsewhere (the cluster store).
    pub file: Option<PathBuf>,
    /// On a cluster host: the replicas and overlay blocks this host runs.
    pub assignment: Option<&'a HostAssignment>,
    /// Which containers are not ready (the supervisor's view): the VIPs leave them out.
    pub unready: &'a dyn Fn(&Desired) -> BTreeSet<String>,
}

/// A planned change: what it makes real and how. Nothing is changed until [`Engine::apply`].
#[derive(Debug)]
pub struct Change {
    pub desired: Desired,
    pub plan: Plan,
    /// Said, not refused: a host process on a port the stack already publishes.
    pub warnings: Vec<String>,
    /// Namespaces of containers the plan removes (rebuilt or gone): their processes go first.
    pub rebuilt: BTreeSet<String>,
    /// Whether the kernel was read (false: the plan from scratch).
    pub observed: bool,
    /// Faults whose time is up or whose relay died: the caller ends them (their undo
    /// operations, their relay) in `apply`'s `before`, and the record drops them.
    pub ending: Vec<Fault>,
    /// The attachments before this change: what the record keeps if executing it fails.
    attached_before: Vec<Attachment>,
    record: StackState,
    fingerprints: Vec<(Ruleset, u64)>,
    /// The nftables generation observing read the tables at.
    nft_generation: Option<u32>,
}

/// A planned teardown.
#[derive(Debug)]
pub struct Teardown {
    pub stack: String,
    pub plan: Plan,
    /// A damaged record, set aside: what the kernel shows of the stack is still removed.
    pub warnings: Vec<String>,
    /// False when plumb knows nothing of the stack: no record, nothing in the kernel.
    pub exists: bool,
}

/// What a teardown removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Removed {
    pub containers: usize,
    pub networks: usize,
}

impl Change {
    /// The folder the stack's relative paths start from (its spec's).
    pub fn base(&self) -> &Path {
        self.record.spec.as_ref().map_or(Path::new("/"), |s| s.base.as_path())
    }
}

impl<'a> Engine<'a> {
    /// The engine on a kernel: takes the state store's lock, held until the engine is dropped.
    pub fn open(kernel: &'a mut dyn Kernel, state: &'a dyn StateStore) -> Result<Self> {
        let lock = state.lock()?;
        Ok(Engine {
            kernel: Some(kernel),
            state,
            _lock: Some(lock),
        })
    }

    /// Takes the store's lock out of the engine (which then no longer holds it): for a caller
    /// that hands it on, as `up` hands the state directory's lock to a supervisor it starts.
    pub fn take_lock(&mut self) -> Option<StoreLock> {
        self._lock.take()
    }

    /// An engine that only plans, from scratch: it reads neither the kernel nor the state.
    pub fn planner(state: &'a dyn StateStore) -> Self {
        Engine {
            kernel: None,
            state,
            _lock: None,
        }
    }

    pub fn state(&self) -> &dyn StateStore {
        self.state
    }

    /// The kernel the engine drives (for the reads commands show), `None` for a planner.
    pub fn kernel(&mut self) -> Option<&mut dyn Kernel> {
        match &mut self.kernel {
            Some(k) => Some(&mut **k),
            None => None,
        }
    }

    fn require_kernel(&mut self) -> Result<&mut dyn Kernel> {
        self.kernel()
            .ok_or_else(|| Error::new("this engine only plans: it has no kernel to change"))
    }

    /// Plans bringing a stack up: resolves its desired state (addresses kept from the last
    /// time), checks it against the other stacks and the host, reads the kernel and diffs.
    /// Refusals name the stack file's line; nothing is changed.
    pub fn plan_up(&mut self, up: &Up) -> Result<Change> {
        self.plan(up, None)
    }

    /// Plans attaching a container someone else made (a runtime's: a CNI ADD) to a network of
    /// a stack that is up: the stack as last brought up, plus this container. Refusals (a
    /// name taken, a network or service the stack lacks) are input errors.
    pub fn plan_attach(&mut self, stack: &str, attachment: Attachment) -> Result<Change> {
        self.refuse_foreign_namespace(stack, &attachment)?;
        self.plan_recorded(stack, |parsed, attached| {
            attached.retain(|a| a.name != attachment.name || a.netns_path != attachment.netns_path);
            desired::check_attachment(&parsed.stack, &attachment, attached).map_err(Error::input)?;
            attached.push(attachment);
            Ok(())
        })
    }

    /// An attachment wires a namespace someone else made: never the host's own (its routes
    /// and addresses would be replaced) nor one of plumb's containers (a second way into it,
    /// with a name and an address of its own).
    fn refuse_foreign_namespace(&mut self, stack: &str, attachment: &Attachment) -> Result<()> {
        let stacks = self.state.stacks()?;
        let kernel = self.require_kernel()?;
        let Some(inode) = kernel.netns_inode(&attachment.netns_path) else {
            return Ok(()); // A path that holds no namespace fails when it is bound, undone.
        };
        let refuse = |what: String| {
            Err(Error::input(format!("{} is {what}", attachment.netns_path))
                .hint("give the namespace the runtime made for the container (CNI_NETNS)"))
        };
        if kernel.netns_inode("/proc/self/ns/net") == Some(inode) {
            return refuse("the host's own network namespace".to_string());
        }
        for (owner, record) in &stacks {
            let containers = record.desired.iter().flat_map(|d| d.containers.iter());
            // The container itself, attached again (a repeated ADD, or another network).
            let itself = |c: &&plumb_core::desired::Container| owner == stack && c.name == attachment.name;
            for c in containers.filter(|c| !itself(c)) {
                if kernel.netns_inode(&c.netns) == Some(inode) {
                    return refuse(format!(
                        "the namespace of {owner}/{}, which plumb made or attached",
                        c.name
                    ));
                }
            }
        }
        Ok(())
    }

    /// Plans detaching an attached container (a CNI DEL): its veth and name go, its namespace
    /// and processes stay their owner's. Detaching one that is not attached plans nothing.
    pub fn plan_detach(&mut self, stack: &str, name: &str) -> Result<Change> {
        self.plan_detach_where(stack, |a| a.name == name)
    }

    /// Plans detaching every attached container `doomed` picks (CNI's DEL names one by
    /// container ID and interface, its GC many at once): one change for all of them.
    pub fn plan_detach_where(&mut self, stack: &str, doomed: impl Fn(&Attachment) -> bool) -> Result<Change> {
        self.plan_recorded(stack, |_, attached| {
            attached.retain(|a| !doomed(a));
            Ok(())
        })
    }

    /// Plans the stack as last brought up, with its attachments changed by `edit`.
    fn plan_recorded(
        &mut self,
        stack: &str,
        edit: impl FnOnce(&Parsed, &mut Vec<Attachment>) -> Result<()>,
    ) -> Result<Change> {
        let record = self.state.load(stack)?.ok_or_else(|| {
            Error::input(format!("stack {stack} is not up")).hint("`plumb ps` lists the stacks that are up")
        })?;
        let spec = record.spec.clone().ok_or_else(|| {
            Error::input(format!(
                "stack {stack} was brought up by an older plumb: its record holds no spec"
            ))
            .hint("run `plumb up` for it again")
        })?;
        let parsed = crate::stackfile::parse(&spec.file, &spec.text, &spec.base, &BTreeMap::new())?;
        let mut attached = record.attached.clone();
        edit(&parsed, &mut attached)?;
        let unready = record.desired.as_ref().map(|d| d.unready.clone()).unwrap_or_default();
        let unready = move |_: &Desired| unready.clone();
        let up = Up {
            parsed: &parsed,
            base: spec.base.clone(),
            file: record.file.clone(),
            assignment: spec.assignment.as_ref(),
            unready: &unready,
        };
        self.plan(&up, Some(attached))
    }

    /// Plans `up`, with these attachments (`None`: the record's).
    fn plan(&mut self, up: &Up, attached: Option<Vec<Attachment>>) -> Result<Change> {
        let editing_attachments = attached.is_some();
        let parsed = up.parsed;
        let stack = parsed.stack.name.clone();
        check_programs(parsed, &up.base)?;
        let online = self.kernel.is_some();
        let record = match online {
            true => self.state.load(&stack)?,
            false => None,
        };
        let previous = record.as_ref().map(|s| s.leases.clone()).unwrap_or_default();
        let recorded = record.as_ref().map(|r| r.attached.clone()).unwrap_or_default();
        let attached_before = recorded.clone();
        // The record's attachments whose network or service the stack no longer has are
        // dropped (their containers are unwired), not an error for the `up` that changed it.
        let attached: Vec<Attachment> = match attached {
            Some(a) => a,
            None => recorded
                .into_iter()
                .filter(|a| desired::check_attachment(&parsed.stack, a, &[]).is_ok())
                .collect(),
        };
        let (mut desired, leases) = desired::resolve_attached(parsed, &previous, up.assignment, &attached)?;
        desired.unready = (up.unready)(&desired);
        let others = match online {
            true => self.state.stacks()?,
            false => BTreeMap::new(),
        };
        check_other_stacks(parsed, &desired, &others)?;
        let claimed = claims(&others, &stack);
        refuse_taken_names(&desired, &claimed, &BTreeMap::new())?;
        let mut warnings = Vec::new();
        let observed = match self.kernel() {
            Some(kernel) => {
                check_host_routes(kernel, parsed, &desired)?;
                let published = record.as_ref().and_then(|s| s.desired.as_ref());
                warnings.extend(check_published_ports(kernel, parsed, published)?);
                // An attach or detach trusts the record for the containers it leaves alone.
                let trusted = record
                    .as_ref()
                    .and_then(|r| r.desired.as_ref())
                    .filter(|_| editing_attachments);
                observe(kernel, &stack, Some(&desired), record.as_ref(), &claimed, trusted)?
            }
            None => Observed::default(),
        };
        refuse_taken_names(&desired, &claimed, &observed.foreign)?;
        let mut actual = observed.actual;
        actual.external = external_namespaces(record.as_ref());
        let mut plan = plan::diff(&stack, Some(&desired), &actual);
        let rebuilt = plan
            .steps
            .iter()
            .filter_map(|s| match &s.what {
                What::DeleteContainer { netns, .. } => Some(netns.clone()),
                _ => None,
            })
            .collect();
        let mut record = record.unwrap_or_default();
        record.stack = stack;
        record.file = up.file.clone().or(record.file);
        record.leases = leases;
        record.attached = attached;
        record.spec = Some(RecordedSpec {
            file: parsed.file.clone(),
            text: parsed.text.clone(),
            base: up.base.clone(),
            assignment: up.assignment.cloned(),
        });
        let ending = keep_faults(&mut record.faults, &mut plan, unix_ms());
        Ok(Change {
            desired,
            plan,
            warnings,
            rebuilt,
            observed: online,
            ending,
            attached_before,
            record,
            fingerprints: observed.fingerprints,
            nft_generation: observed.nft_generation,
        })
    }

    /// Makes a planned change real. The intent is recorded first: an `apply` killed half way
    /// is finished or undone by the next `up` or `down`, which find every namespace and
    /// network it may have made. `before` runs once the intent is recorded and before the
    /// kernel is touched (the caller lets go of processes in rebuilt containers there).
    pub fn apply(
        &mut self,
        change: Change,
        before: &mut dyn FnMut(&Change, &mut dyn Kernel) -> Result<()>,
        progress: Progress,
    ) -> Result<Change> {
        self.require_kernel()?;
        let mut change = change;
        let desired = &change.desired;
        let st = &mut change.record;
        st.desired = Some(desired.clone());
        st.namespaces.extend(desired.containers.iter().map(|c| c.netns.clone()));
        st.networks.extend(desired.networks.iter().map(|n| n.name.clone()));
        self.state.save(st)?;
        before(&change, self.require_kernel()?)?;
        if change.plan.count(|w| *w == What::EnableForwarding) > 0 {
            self.state.note_forwarding_enabled()?;
        }
        let kernel = self.require_kernel()?;
        let outcome = execute(kernel, &change.plan, OnError::Stop, progress);
        let st = &mut change.record;
        st.record_fingerprints(&change.fingerprints);
        st.record_firewall(&outcome.firewall);
        st.record_generation(change.nft_generation, &outcome);
        let result = failure(&outcome);
        match result {
            Ok(()) => {
                st.namespaces = change.desired.containers.iter().map(|c| c.netns.clone()).collect();
                st.networks = change.desired.networks.iter().map(|n| n.name.clone()).collect();
            }
            // An attach that failed is not kept (its container was undone); one detached
            // stays detached.
            Err(_) => st
                .attached
                .retain(|a| change.attached_before.iter().any(|b| b.name == a.name)),
        }
        self.state.save(&change.record)?;
        result.map(|_| change)
    }

    /// Plans removing everything a stack made, from its record and from what the kernel
    /// shows of it (a record lost or damaged still leaves the kernel's marks to go by).
    pub fn plan_down(&mut self, stack: &str) -> Result<Teardown> {
        let mut warnings = Vec::new();
        let record = self.state.load(stack).unwrap_or_else(|damaged| {
            warnings.push(format!(
                "{damaged}\n  removing what the kernel shows of stack {stack}, and the record"
            ));
            None
        });
        let stacks = self.state.stacks()?;
        let claimed = claims(&stacks, stack);
        // The last stack going: forwarding goes off again if plumb turned it on (a step of
        // the plan, so --dry-run shows it).
        let last = stacks.keys().all(|s| s == stack);
        let restore = last && self.state.forwarding_enabled_by_plumb()?;
        let kernel = self.require_kernel()?;
        let mut observed = observe(kernel, stack, None, record.as_ref(), &claimed, None)?;
        observed.actual.forwarding_to_restore = restore;
        observed.actual.external = external_namespaces(record.as_ref());
        let plan = plan::diff(stack, None, &observed.actual);
        let exists = plan.steps.iter().any(|s| s.what != What::DisableForwarding) || record.is_some();
        Ok(Teardown {
            stack: stack.to_string(),
            plan,
            warnings,
            exists,
        })
    }

    /// Tears a stack down: goes on past failures and reports them all; with errors the
    /// record stays, so the next `down` finds what is left.
    pub fn down(&mut self, teardown: Teardown, progress: Progress) -> Result<Removed> {
        let kernel = self.require_kernel()?;
        let outcome = execute(kernel, &teardown.plan, OnError::Continue, progress);
        failure(&outcome)?;
        self.state.remove(&teardown.stack)?;
        if self.state.forwarding_enabled_by_plumb()? && self.state.stacks()?.is_empty() {
            // The plan turned it off (or it was off already).
            self.state.forget_forwarding()?;
        }
        let plan = &teardown.plan;
        Ok(Removed {
            containers: plan.count(|w| matches!(w, What::DeleteContainer { .. })),
            networks: plan
                .steps
                .iter()
                .map(|s| match &s.what {
                    What::RemoveLinks { networks, .. } => networks.len(),
                    _ => 0,
                })
                .sum(),
        })
    }

    /// The stack file a stack was last brought up from, parsed again with some services'
    /// replica counts replaced (what `scale` brings up).
    pub fn recorded_stack_file(&self, stack: &str, replicas: &BTreeMap<String, u32>) -> Result<(PathBuf, Parsed)> {
        let record = self.state.load(stack)?.ok_or_else(|| {
            Error::input(format!("stack {stack} is not up")).hint("`plumb ps` lists the stacks that are up")
        })?;
        let file = record.file.ok_or_else(|| {
            Error::input(format!(
                "stack {stack} did not come from a stack file here (a cluster stack?)"
            ))
            .hint("scale a cluster stack with `plumb cluster deploy` of the changed file")
        })?;
        let text =
            std::fs::read_to_string(&file).map_err(|e| Error::new(format!("cannot read {}: {e}", file.display())))?;
        let dir = file.parent().unwrap_or(Path::new("/"));
        let parsed = crate::stackfile::parse(&file.display().to_string(), &text, dir, replicas)?;
        Ok((file, parsed))
    }
}

/// The namespaces the record says are attached (another's: never emptied or deleted).
fn external_namespaces(record: Option<&StackState>) -> BTreeSet<String> {
    (record.and_then(|r| r.desired.as_ref()).iter())
        .flat_map(|d| d.containers.iter())
        .filter(|c| c.external.is_some())
        .map(|c| c.netns.clone())
        .collect()
}

/// Drops the faults that are due from `faults` (returned: the caller ends them), and adds to
/// `plan` the redirects of those kept on the containers the plan makes anew.
fn keep_faults(faults: &mut Faults, plan: &mut Plan, now_ms: u64) -> Vec<Fault> {
    let (ending, kept): (Vec<Fault>, Vec<Fault>) = faults.faults.drain(..).partition(|f| fault_is_due(f, now_ms));
    faults.faults = kept;
    let made: BTreeSet<&str> = plan
        .steps
        .iter()
        .filter_map(|s| match &s.what {
            What::CreateContainer { container, .. } => Some(container.as_str()),
            _ => None,
        })
        .collect();
    let restores: Vec<Step> = faults
        .faults
        .iter()
        .filter(|f| f.containers().iter().any(|c| made.contains(c)))
        .map(|f| Step {
            what: What::RestoreFault {
                fault: f.id,
                target: f.target.clone(),
            },
            ops: f
                .redirect_ops()
                .into_iter()
                .filter(|op| matches!(op, Op::TcRedirect { dev, .. } if rebuilt_dev(f, dev, &made)))
                .collect(),
        })
        .collect();
    plan.steps.extend(restores);
    ending
}

/// Whether the host veth `dev` of a fault's detour belongs to a container the plan makes.
fn rebuilt_dev(fault: &Fault, dev: &str, made: &BTreeSet<&str>) -> bool {
    fault
        .detours
        .iter()
        .any(|d| d.host_veth == dev && made.contains(d.container.as_str()))
}

/// A fault whose time is up, or whose relay is gone (its frames would go nowhere).
pub fn fault_is_due(fault: &Fault, now_ms: u64) -> bool {
    fault.is_expired(now_ms) || (!fault.detours.is_empty() && !fault.relay_pid.is_some_and(is_relay))
}

/// True if `pid` is a running chaos relay (not a PID reused by something else).
pub fn is_relay(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"chaos-relay"))
}

/// Unix milliseconds now.
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One error naming every failed operation, or none.
fn failure(outcome: &Outcome) -> Result<()> {
    match outcome.errors.as_slice() {
        [] => Ok(()),
        [one] => Err(Error::from(one.clone())),
        many => {
            let list: Vec<String> = many.iter().map(|e| format!("  - {e}")).collect();
            Err(
                Error::new(format!("{} operations failed:\n{}", many.len(), list.join("\n")))
                    .hint("run the command again once the cause is fixed; it goes on from where the kernel is"),
            )
        }
    }
}

/// Refuses a stack whose container names another stack owns; nothing has been touched yet.
fn refuse_taken_names(
    desired: &Desired,
    claimed: &BTreeMap<String, String>,
    foreign: &BTreeMap<String, String>,
) -> Result<()> {
    let taken = ownership::conflicts(desired, claimed, foreign);
    match ownership::refusal(desired, &taken) {
        Some(e) => Err(Error { input: true, ..e }),
        None => Ok(()),
    }
}

/// A network must not take an address range the host already routes elsewhere (the host
/// would lose its way there). Routes on plumb's own bridges do not count.
fn check_host_routes(kernel: &mut dyn Kernel, parsed: &Parsed, desired: &Desired) -> Result<()> {
    let mut errors = Vec::new();
    // An overlay network's routes to the other hosts' blocks go through its VXLAN device.
    let own_devices: Vec<&str> = desired
        .networks
        .iter()
        .filter_map(|n| n.overlay.as_ref().map(|o| o.device.as_str()))
        .collect();
    for route in kernel.host_routes()? {
        let overlapping: Vec<_> = desired
            .networks
            .iter()
            .filter(|net| {
                subnets_overlap(net.subnet, route.destination)
                    || net
                        .overlay
                        .as_ref()
                        .is_some_and(|o| subnets_overlap(o.subnet, route.destination))
            })
            .collect();
        if overlapping.is_empty() {
            continue;
        }
        // Only an overlapping route's device is looked up (a dump of every link would cost
        // more than the check itself on a host with many containers).
        let dev = match route.link_index {
            Some(i) => kernel.link_name(i)?,
            None => None,
        }
        .unwrap_or_else(|| "?".to_string());
        if dev.starts_with(names::BRIDGE_PREFIX) || own_devices.contains(&dev.as_str()) {
            continue;
        }
        for net in overlapping {
            errors.push(parsed.error(
                &format!("networks.{}.subnet", net.name),
                format!(
                    "{} overlaps the host's route to {} via {dev}",
                    net.subnet, route.destination
                ),
                "pick another address range: the host would lose its way to that network",
            ));
        }
    }
    match errors.is_empty() {
        true => Ok(()),
        false => Err(Diagnostics(errors).into()),
    }
}

/// A port about to be published must be free on the host: a host process listening there
/// would be shadowed by the DNAT (unreachable on that port until `down`), so it is named
/// instead. Ports the stack already publishes (`previous`) are not refused again, only
/// warned about (returned). A port published on one address needs that address on the host.
fn check_published_ports(kernel: &mut dyn Kernel, parsed: &Parsed, previous: Option<&Desired>) -> Result<Vec<String>> {
    let local = kernel.host_addresses()?;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
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
            let Some(listener) = host_listener_on(kernel, p)? else {
                continue;
            };
            let already = previous.is_some_and(|d| d.containers.iter().any(|c| c.ports.contains(p)));
            if already {
                // The stack held the port first: the host process came later, and its clients
                // reach the container. Not an error (the stack is right), but said.
                warnings.push(shadowed(p, &listener));
                continue;
            }
            errors.push(parsed.error(
                &field,
                format!("host port {} is in use: {listener}", p.host_side()),
                "stop that process, publish another host port, or publish on an address it does not use (ADDRESS:HOST:CONTAINER)",
            ));
        }
    }
    match errors.is_empty() {
        true => Ok(warnings),
        false => Err(Diagnostics(errors).into()),
    }
}

/// A host process listening where `port` is published, as "python3 (pid 42) listens on
/// 0.0.0.0:8080".
pub fn host_listener_on(kernel: &mut dyn Kernel, port: &PortSpec) -> Result<Option<String>> {
    use std::net::IpAddr;
    let transport = match port.protocol {
        Protocol::Tcp => Transport::Tcp,
        Protocol::Udp => Transport::Udp,
    };
    let clash = kernel
        .listeners(transport, port.host)?
        .into_iter()
        .find(|l| match l.address {
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
pub fn shadowed(port: &PortSpec, listener: &str) -> String {
    format!(
        "host port {} is published by the stack, but {listener}: its clients reach the container instead",
        port.host_side()
    )
}

/// Every command's program must exist before anything is touched.
fn check_programs(parsed: &Parsed, base: &Path) -> Result<()> {
    let mut errors = Vec::new();
    for (name, svc) in &parsed.stack.services {
        let Some(p) = &svc.process else { continue };
        if let Some(image) = &svc.image {
            errors.extend(check_image(parsed, base, name, image, on_search_path("podman")));
            continue;
        }
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
    match errors.is_empty() {
        true => Ok(()),
        false => Err(Diagnostics(errors).into()),
    }
}

/// An image service needs podman (`podman_installed`), and the folder and Dockerfile it is
/// built from.
fn check_image(
    parsed: &Parsed,
    base: &Path,
    name: &str,
    image: &plumb_core::spec::Image,
    podman_installed: bool,
) -> Vec<plumb_core::Diagnostic> {
    let mut errors = Vec::new();
    if !podman_installed {
        // At `build` when there is one (a service may have no `image` line).
        let key = if image.build.is_some() { "build" } else { "image" };
        errors.push(parsed.error(
            &format!("services.{name}.{key}"),
            "podman is not installed: an image service's replicas are OCI containers run with it",
            "install it (apt-get install podman runc), or run a host program with command = [...]",
        ));
    }
    if let Some(build) = &image.build {
        let context = base.join(&build.context);
        let dockerfile = context.join(&build.dockerfile);
        if !context.is_dir() {
            errors.push(parsed.error(
                &format!("services.{name}.build"),
                format!("build context {} is not a folder", context.display()),
                "give the folder holding the Dockerfile (relative to the stack file's folder)",
            ));
        } else if !dockerfile.is_file() {
            errors.push(parsed.error(
                &format!("services.{name}.build"),
                format!("there is no Dockerfile at {}", dockerfile.display()),
                "write one there, or name it with build = { context = \"...\", dockerfile = \"...\" } (relative to the context)",
            ));
        }
    }
    errors
}

fn on_search_path(program: &str) -> bool {
    SEARCH_PATH
        .split(':')
        .any(|dir| is_executable(&Path::new(dir).join(program)))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Two stacks must not claim the same addresses or host ports.
fn check_other_stacks(parsed: &Parsed, desired: &Desired, stacks: &BTreeMap<String, StackState>) -> Result<()> {
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
    match errors.is_empty() {
        true => Ok(()),
        false => Err(Diagnostics(errors).into()),
    }
}

#[cfg(test)]
mod image_checks {
    use super::*;

    #[test]
    fn an_image_service_without_podman_or_its_folder_is_named_at_its_line() {
        let text = "name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n[services.web]\nbuild = \"no-such-folder\"\n";
        let parsed = plumb_core::spec::parse("plumb.toml", text).unwrap();
        let image = parsed.stack.services["web"].image.clone().unwrap();
        let errors = check_image(&parsed, Path::new("/nonexistent"), "web", &image, false);
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(
            text[0].starts_with("plumb.toml:5:")
                && text[0].contains("services.web.build: podman is not installed")
                && text[0].contains("apt-get install podman runc"),
            "{}",
            text[0]
        );
        assert!(
            text[1].contains("services.web.build: build context /nonexistent/no-such-folder is not a folder"),
            "{}",
            text[1]
        );
        let dir = std::env::temp_dir().join(format!("plumb-image-check-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("no-such-folder")).unwrap();
        let errors = check_image(&parsed, &dir, "web", &image, true);
        assert!(
            errors[0].to_string().contains("there is no Dockerfile at"),
            "{}",
            errors[0]
        );
        std::fs::write(dir.join("no-such-folder/Dockerfile"), "FROM x\n").unwrap();
        assert!(check_image(&parsed, &dir, "web", &image, true).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

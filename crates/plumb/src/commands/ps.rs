//! `plumb ps`: the containers of every stack that is up, with their namespaces, interfaces,
//! addresses, published ports and, for services with a command, their process (and the
//! processes in the container no supervisor started). A stack whose record is damaged or lost
//! is shown as the kernel holds it; notes on stderr say so, and when a supervisor's status is
//! stale.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use nix::unistd::Pid;
use plumb_core::kernel::Kernel;
use plumb_core::{names, Container};
use plumb_engine::engine;
use serde::{Serialize, Serializer};

use super::{Context, Format};
use crate::census;
use crate::discover::{self, FoundContainer, FoundStack, Known};
use crate::failure::Result;
use crate::output::{count, print_json, table};
use crate::runfile::{self, Health, ReplicaState, ReplicaStatus, StatusFile};
use crate::state::StackState;
use crate::supervisor_socket::{self, Report};

#[derive(Serialize)]
struct Row {
    stack: String,
    /// Where the row comes from: the stack's record, or the kernel's marks.
    record: Record,
    container: String,
    service: String,
    replica: u32,
    namespace: String,
    /// The namespace exists under /run/netns.
    present: bool,
    /// Its file holds the namespace (false: an `up` was interrupted before binding it).
    complete: bool,
    interfaces: Vec<Iface>,
    ports: Vec<String>,
    /// The supervised process, for containers with a command.
    process: Option<Process>,
}

/// The state of a stack's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Record {
    Ok,
    /// Its state file cannot be read: the row is what the kernel holds.
    Damaged,
    /// There is no record: the row is what the kernel holds.
    None,
}

#[derive(Serialize)]
struct Iface {
    name: String,
    network: String,
    address: String,
    host_veth: String,
    bridge: String,
}

#[derive(Serialize)]
struct Process {
    state: ProcessState,
    health: Option<Health>,
    pid: Option<u32>,
    restarts: u32,
    uptime_seconds: Option<u64>,
    /// Processes in the container that its supervisor did not start (a daemon the service
    /// left behind, a shell from `plumb exec`); ended before the service starts again.
    untracked: usize,
    /// The supervisor cannot write its status: what is shown may be out of date.
    stale: bool,
    /// CPU use of its cgroup over a short sample, in percent of one core (a replica with
    /// limits: only those have a cgroup).
    cpu_percent: Option<f64>,
    /// Memory charged to its cgroup.
    memory_bytes: Option<u64>,
    /// An OCI container: every process in its namespace is the container's own.
    #[serde(skip)]
    image: bool,
}

/// What `ps` knows of a process: its supervisor's report, or that none is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProcessState {
    Supervised(ReplicaState),
    NoSupervisor,
}

impl ProcessState {
    fn as_str(self) -> &'static str {
        match self {
            ProcessState::Supervised(state) => state.as_str(),
            ProcessState::NoSupervisor => "no supervisor",
        }
    }
}

/// As the bare name (`"running"`, `"no supervisor"`), like the table shows it.
impl Serialize for ProcessState {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A stack's running supervisor: its PID, its report and the status it last wrote.
struct Supervision {
    pid: Pid,
    report: Report,
    status: StatusFile,
}

pub fn run(ctx: &Context, format: Format) -> Result<()> {
    let records = ctx.state.stacks()?;
    let mut notes = Notes::default();
    let found = found_in_kernel(&records, &mut notes);
    // Whether each container's namespace is there, and whole (one readdir, one statfs each).
    let mut kernel = crate::apply::kernel()?;
    let namespaces: HashSet<String> = kernel.namespaces()?.into_iter().collect();
    let mut rows = Vec::new();
    let mut supervisors = BTreeMap::new();
    let names: BTreeSet<&String> = records.keys().chain(found.keys()).collect();
    for stack in names {
        let dir = ctx.state.stack_dir(stack);
        let supervision = supervisor_socket::report(&dir).map(|(pid, report)| Supervision {
            pid,
            report,
            status: runfile::read_status(&dir),
        });
        let Some((record, containers)) = containers_of(
            ctx,
            &mut kernel,
            stack,
            records.get(stack),
            found.get(stack),
            supervision.as_ref(),
            &mut notes,
        ) else {
            continue;
        };
        if let Some(s) = supervision.as_ref() {
            note_stale(stack, s, &mut notes);
            supervisors.insert(stack.clone(), s.pid);
        }
        rows.extend(containers.into_iter().map(|c| {
            let present = namespaces.contains(&c.netns);
            let complete = present && kernel.netns_bound(&c.netns).unwrap_or(false);
            c.row(stack, record, supervision.as_ref(), (present, complete))
        }));
    }
    count_untracked(&mut kernel, &mut rows, &supervisors);
    measure_usage(&mut kernel, &mut rows);
    notes.print();
    if format == Format::Json {
        print_json(&rows);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no stack is up");
        return Ok(());
    }
    print!("{}", render(&rows));
    Ok(())
}

/// The containers of `stack` and where they come from: its record, or the kernel when the
/// record is damaged or missing (which gets a note).
fn containers_of(
    ctx: &Context,
    kernel: &mut dyn Kernel,
    stack: &str,
    record: Option<&StackState>,
    found: Option<&FoundStack>,
    supervision: Option<&Supervision>,
    notes: &mut Notes,
) -> Option<(Record, Vec<Shown>)> {
    let from_kernel = || found.map(|k| from_kernel(stack, k)).unwrap_or_default();
    match record {
        Some(StackState {
            damaged: None, desired, ..
        }) => {
            let published: BTreeSet<_> = desired
                .iter()
                .flat_map(|d| d.containers.iter())
                .flat_map(|c| c.ports.iter().cloned())
                .collect();
            for port in &published {
                if let Ok(Some(listener)) = engine::host_listener_on(kernel, port) {
                    notes.add(
                        format!("stack {stack}: {}", engine::shadowed(port, &listener)),
                        "move that process to another port, or publish the service on another one".to_string(),
                    );
                }
            }
            let containers = desired.iter().flat_map(|d| d.containers.iter()).map(from_record);
            Some((Record::Ok, containers.collect()))
        }
        Some(StackState { damaged: Some(why), .. }) => {
            notes.add(
                format!(
                    "the record of stack {stack} is damaged ({why}); its containers are shown as the kernel holds them"
                ),
                format!("remove it; `plumb down {stack}` still finds the stack's objects in the kernel"),
            );
            Some((Record::Damaged, from_kernel()))
        }
        None => {
            let found = found?;
            notes.add(
                unrecorded(ctx, stack, found, supervision),
                format!("`plumb down {stack}` removes it; `plumb up` with its stack file takes it over again"),
            );
            Some((Record::None, from_kernel()))
        }
    }
}

/// A container as `ps` shows it, from the record or from the kernel.
struct Shown {
    name: String,
    service: String,
    replica: u32,
    netns: String,
    interfaces: Vec<Iface>,
    ports: Vec<String>,
    /// It has a command (always unknown for a container found in the kernel: then whether the
    /// supervisor's status names it).
    command: Option<bool>,
    /// Its process is an OCI container (an image service's replica).
    image: bool,
}

fn from_record(c: &Container) -> Shown {
    Shown {
        name: c.name.clone(),
        service: c.service.clone(),
        replica: c.replica,
        netns: c.netns.clone(),
        interfaces: c
            .interfaces
            .iter()
            .map(|i| Iface {
                name: i.name.clone(),
                network: i.network.clone(),
                address: i.cidr().to_string(),
                host_veth: i.host_veth.clone(),
                bridge: i.bridge.clone(),
            })
            .collect(),
        ports: c.ports.iter().map(|p| p.to_string()).collect(),
        command: Some(c.process.is_some()),
        image: c.process.as_ref().is_some_and(|p| p.image.is_some()),
    }
}

fn from_kernel(stack: &str, found: &FoundStack) -> Vec<Shown> {
    found.containers.iter().map(|c| found_container(stack, c)).collect()
}

fn found_container(stack: &str, c: &FoundContainer) -> Shown {
    // Container names are SERVICE-REPLICA.
    let (service, replica) = c
        .name
        .rsplit_once('-')
        .and_then(|(s, r)| Some((s.to_string(), r.parse().ok()?)))
        .unwrap_or_else(|| (c.name.clone(), 0));
    Shown {
        name: c.name.clone(),
        service,
        replica,
        netns: c.netns.clone(),
        interfaces: c
            .interfaces
            .iter()
            .map(|i| Iface {
                name: i.name.clone(),
                network: i.network.clone(),
                address: i.address.map_or_else(|| "-".to_string(), |a| a.to_string()),
                host_veth: names::host_veth(stack, &c.name, &i.network),
                bridge: names::bridge(stack, &i.network),
            })
            .collect(),
        ports: Vec::new(),
        command: None,
        image: false,
    }
}

impl Shown {
    /// `namespace`: whether its name is under /run/netns, and whether a namespace is bound there.
    fn row(self, stack: &str, record: Record, supervision: Option<&Supervision>, namespace: (bool, bool)) -> Row {
        let (present, complete) = namespace;
        let status = supervision.and_then(|s| s.status.replicas.get(&self.name));
        let has_process = self.command.unwrap_or(status.is_some());
        let process = has_process.then(|| Process {
            image: self.image,
            ..process(status, supervision)
        });
        Row {
            stack: stack.to_string(),
            record,
            present,
            complete,
            container: self.name,
            service: self.service,
            replica: self.replica,
            namespace: self.netns,
            interfaces: self.interfaces,
            ports: self.ports,
            process,
        }
    }
}

fn process(status: Option<&ReplicaStatus>, supervision: Option<&Supervision>) -> Process {
    let now = runfile::unix_ms();
    let state = match (supervision, status) {
        (None, _) => ProcessState::NoSupervisor,
        (Some(_), Some(s)) => ProcessState::Supervised(s.state),
        // Running, but its status does not name this replica (yet).
        (Some(_), None) => ProcessState::Supervised(ReplicaState::Waiting),
    };
    Process {
        state,
        health: status.and_then(|s| s.health),
        pid: status.and_then(|s| s.pid),
        restarts: status.map_or(0, |s| s.restarts),
        uptime_seconds: status.and_then(|s| s.up_for(now)).map(|d| d.as_secs()),
        untracked: 0,
        stale: supervision.is_some_and(|s| s.report.status_error.is_some()),
        cpu_percent: None,
        memory_bytes: None,
        image: false,
    }
}

/// Fills in each process's count of untracked processes, from one census of the containers.
/// `supervisors`: the PID of each stack's running supervisor.
fn count_untracked(kernel: &mut dyn Kernel, rows: &mut [Row], supervisors: &BTreeMap<String, Pid>) {
    let inode_of: Vec<Option<u64>> = rows
        .iter()
        .map(|r| r.process.as_ref().and_then(|_| kernel.netns_inode(&r.namespace)))
        .collect();
    let residents = kernel.residents(&inode_of.iter().flatten().copied().collect::<HashSet<u64>>());
    for (row, inode) in rows.iter_mut().zip(inode_of) {
        let (Some(p), Some(inode)) = (row.process.as_mut(), inode) else {
            continue;
        };
        // Podman started the container's processes, not the supervisor: they are its own.
        if p.image && p.pid.is_some() {
            continue;
        }
        // Without a supervisor, everything in the container is untracked.
        let supervisor = supervisors.get(&row.stack).map_or(0, |pid| pid.as_raw() as u32);
        let inside = residents.get(&inode).map_or(&[][..], Vec::as_slice);
        p.untracked = census::untracked(inside, supervisor, p.pid).len();
    }
}

/// How long `ps` watches the replicas' cgroups to tell their CPU use (as `docker stats
/// --no-stream` samples twice).
const CPU_SAMPLE: std::time::Duration = std::time::Duration::from_millis(250);

/// Fills in each process's CPU use and memory from its cgroup's counters, read twice.
fn measure_usage(kernel: &mut dyn Kernel, rows: &mut [Row]) {
    let paths: Vec<Option<String>> = rows
        .iter()
        .map(|r| {
            r.process
                .as_ref()
                .map(|_| plumb_core::cgroup::replica_path(&r.stack, &r.container))
        })
        .collect();
    let read = |kernel: &mut dyn Kernel| -> Vec<Option<plumb_core::cgroup::Usage>> {
        paths
            .iter()
            .map(|p| p.as_deref().and_then(|p| kernel.cgroup_usage(p)))
            .collect()
    };
    let before = read(kernel);
    if before.iter().all(Option::is_none) {
        return;
    }
    let started = std::time::Instant::now();
    std::thread::sleep(CPU_SAMPLE);
    let after = read(kernel);
    let elapsed_us = started.elapsed().as_micros() as u64;
    for ((row, before), after) in rows.iter_mut().zip(before).zip(after) {
        let (Some(p), Some(before), Some(after)) = (row.process.as_mut(), before, after) else {
            continue;
        };
        p.cpu_percent = Some(plumb_core::cgroup::cpu_percent(
            before.cpu_usec,
            after.cpu_usec,
            elapsed_us,
        ));
        p.memory_bytes = Some(after.memory_bytes);
    }
}

/// Memory as people read it: `12.3MiB`.
pub fn memory(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        n if n < 1 << 10 => format!("{n}B"),
        n if n < 1 << 20 => format!("{:.1}KiB", b / 1024.0),
        n if n < 1 << 30 => format!("{:.1}MiB", b / (1 << 20) as f64),
        _ => format!("{:.2}GiB", b / (1 << 30) as f64),
    }
}

/// Stacks the kernel holds that have no readable record (none when not root: reading inside
/// namespaces needs it). A failure to read is a note, not the end of `ps`.
fn found_in_kernel(records: &BTreeMap<String, StackState>, notes: &mut Notes) -> BTreeMap<String, FoundStack> {
    if !nix::unistd::geteuid().is_root() {
        return BTreeMap::new();
    }
    let mut known = Known::default();
    for (name, st) in records.iter().filter(|(_, st)| st.damaged.is_none()) {
        known.stacks.insert(name.clone());
        known.namespaces.extend(st.namespaces.iter().cloned());
        known.namespaces.extend(
            st.desired
                .iter()
                .flat_map(|d| d.containers.iter().map(|c| c.netns.clone())),
        );
    }
    let found = crate::apply::kernel().and_then(|mut kernel| Ok(discover::stacks(&mut kernel, &known)?));
    found.unwrap_or_else(|e| {
        notes.add(
            format!("cannot look for stacks without a record in the kernel: {}", e.message),
            "stacks whose record is lost are not shown".to_string(),
        );
        BTreeMap::new()
    })
}

/// The note on a stack found in the kernel with no record.
fn unrecorded(ctx: &Context, stack: &str, found: &FoundStack, supervision: Option<&Supervision>) -> String {
    let mut held = vec![
        count(found.containers.len(), "container"),
        count(found.networks.len(), "network"),
    ];
    if found.nft_table {
        held.push(format!("nft table inet {}", names::nft_table(stack)));
    }
    let supervisor = supervision.map_or(String::new(), |s| {
        format!("; its supervisor (pid {}) still runs", s.pid)
    });
    format!(
        "stack {stack} has no record in {} but the kernel holds it ({}){supervisor}",
        ctx.state.root.display(),
        held.join(", ")
    )
}

/// Notes when a supervisor cannot write its status, so what `ps` shows of it is stale.
fn note_stale(stack: &str, supervision: &Supervision, notes: &mut Notes) {
    let Some(error) = &supervision.report.status_error else {
        return;
    };
    let since = supervision.report.status_written_ms.map_or_else(
        || "has never written its status".to_string(),
        |ms| {
            let ago = runfile::unix_ms().saturating_sub(ms) / 1000;
            format!("last wrote its status {} ago", uptime(ago))
        },
    );
    notes.add(
        format!(
            "stack {stack}: what is shown is stale: its supervisor (pid {}) {since} and now fails: {error}",
            supervision.pid
        ),
        "free space in the state directory: the supervisor writes its status again by itself".to_string(),
    );
}

/// Notes for stderr, each with a hint.
#[derive(Default)]
struct Notes(Vec<(String, String)>);

impl Notes {
    fn add(&mut self, note: String, hint: String) {
        self.0.push((note, hint));
    }

    fn print(&self) {
        for (note, hint) in &self.0 {
            eprintln!("note: {note}\n  hint: {hint}");
        }
    }
}

fn render(rows: &[Row]) -> String {
    let dash = || "-".to_string();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let p = r.process.as_ref();
            let mut state = match (r.present, r.complete, p) {
                (false, _, _) => "missing".to_string(),
                (true, false, _) => "incomplete (run plumb up)".to_string(),
                (true, true, None) => "up".to_string(),
                (true, true, Some(p)) => p.state.as_str().to_string(),
            };
            if let Some(p) = p.filter(|p| p.untracked > 0) {
                state += &format!(", {} untracked", p.untracked);
            }
            if p.is_some_and(|p| p.stale) {
                state += " (stale)";
            }
            let stack = match r.record {
                Record::Ok => r.stack.clone(),
                Record::Damaged => format!("{} (damaged)", r.stack),
                Record::None => format!("{} (no record)", r.stack),
            };
            vec![
                stack,
                r.container.clone(),
                state,
                p.and_then(|p| p.health).map_or_else(dash, |h| h.to_string()),
                p.and_then(|p| p.pid).map_or_else(dash, |p| p.to_string()),
                p.map_or_else(dash, |p| p.restarts.to_string()),
                p.and_then(|p| p.uptime_seconds).map_or_else(dash, uptime),
                p.and_then(|p| p.cpu_percent).map_or_else(dash, |c| format!("{c:.1}%")),
                p.and_then(|p| p.memory_bytes).map_or_else(dash, memory),
                r.namespace.clone(),
                r.interfaces
                    .iter()
                    .map(|i| format!("{} {} ({})", i.name, i.address, i.network))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.ports.join(", "),
            ]
        })
        .collect();
    let headers = [
        "STACK",
        "CONTAINER",
        "STATE",
        "HEALTH",
        "PID",
        "RESTARTS",
        "UPTIME",
        "CPU",
        "MEM",
        "NAMESPACE",
        "INTERFACES",
        "PORTS",
    ];
    table(&headers, &cells)
}

fn uptime(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names_process_states_as_the_table_does() {
        let json = |state| serde_json::to_value(state).unwrap();
        assert_eq!(json(ProcessState::Supervised(ReplicaState::Backoff)), "backoff");
        assert_eq!(json(ProcessState::NoSupervisor), "no supervisor");
        let record = |r| serde_json::to_value(r).unwrap();
        assert_eq!(
            [record(Record::Ok), record(Record::Damaged), record(Record::None)],
            ["ok", "damaged", "none"]
        );
    }
}

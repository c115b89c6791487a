//! A stack's active faults, part of its record in the state store (changed under the
//! store's lock, as `up` and `down` change the stack), and removing them: on request, when they expire (checked by
//! the supervisor every second and by plumb commands on the stack), when their relay died,
//! and all of them at `down`. Whatever removes a fault runs the record's own undo operations.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use plumb_core::chaos::{Fault, Faults};
use plumb_core::firewall::{Family, NftChange, TableId};
use plumb_core::kernel::Kernel;
use plumb_core::{names, Op};

use crate::failure::{Failure, Result};
use crate::runfile;
use crate::state::{write_error, Lock, StackState, StateDir, PRIVATE_FILE};

/// The state store and the stack a stack directory belongs to (`ROOT/stacks/STACK`).
fn locate(stack_dir: &Path) -> (StateDir, String) {
    let stack = stack_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let root = stack_dir
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    (StateDir::new(root), stack)
}

/// The stack's faults as recorded in its state (none without a record).
pub fn read(stack_dir: &Path) -> Result<Faults> {
    let (state, stack) = locate(stack_dir);
    Ok(state.load(&stack)?.map(|st| st.faults).unwrap_or_default())
}

/// The faults, with the state store's lock held (the one `up`, `down` and the agent take:
/// a fault and a change of the stack never interleave).
pub struct Locked {
    _lock: Option<Lock>,
    state: StateDir,
    record: Option<StackState>,
    pub faults: Faults,
}

impl Locked {
    /// Waits for the state store's lock, then reads the faults.
    pub fn open(stack_dir: &Path) -> Result<Locked> {
        let (state, stack) = locate(stack_dir);
        let lock = state.lock()?;
        Locked::read(state, &stack, Some(lock))
    }

    /// The faults, if the lock is free now (`None`: someone is changing the stack; the
    /// supervisor and relays, which tend faults in the background, try again later).
    pub fn try_open(stack_dir: &Path) -> Result<Option<Locked>> {
        let (state, stack) = locate(stack_dir);
        match state.try_lock()? {
            Some(lock) => Locked::read(state, &stack, Some(lock)).map(Some),
            None => Ok(None),
        }
    }

    /// For a caller that holds the lock already (`down`, through its engine). A damaged
    /// record counts as none: `down` still removes the faults the kernel's marks show.
    pub fn held(stack_dir: &Path) -> Result<Locked> {
        let (state, stack) = locate(stack_dir);
        let record = state.load(&stack).ok().flatten();
        Ok(Locked::with(state, record, None))
    }

    fn read(state: StateDir, stack: &str, lock: Option<Lock>) -> Result<Locked> {
        let record = state.load(stack)?;
        Ok(Locked::with(state, record, lock))
    }

    fn with(state: StateDir, record: Option<StackState>, lock: Option<Lock>) -> Locked {
        let faults = record.as_ref().map(|r| r.faults.clone()).unwrap_or_default();
        Locked {
            _lock: lock,
            state,
            record,
            faults,
        }
    }

    /// Writes the faults into the stack's record (a stack with no record has none to keep).
    pub fn save(&mut self) -> Result<()> {
        if let Some(record) = &mut self.record {
            record.faults = self.faults.clone();
            self.state.save(record)?;
        }
        Ok(())
    }

    /// Removes the faults `pick` chooses from the kernel and the record; returns them, with
    /// the errors met (removal goes on past them).
    pub fn remove(&mut self, pick: impl Fn(&Fault) -> bool) -> Result<(Vec<Fault>, Vec<String>)> {
        let (gone, kept): (Vec<Fault>, Vec<Fault>) = self.faults.faults.drain(..).partition(|f| pick(f));
        self.faults.faults = kept;
        let mut errors = Vec::new();
        if !gone.is_empty() {
            let mut kernel = crate::apply::kernel()?;
            for fault in &gone {
                errors.extend(undo(&mut kernel, fault));
            }
        }
        self.save()?;
        Ok((gone, errors))
    }
}

/// Runs a fault's undo operations, then ends its relay (unless that is this process).
pub fn undo(kernel: &mut dyn Kernel, fault: &Fault) -> Vec<String> {
    let mut errors = Vec::new();
    for op in fault.undo_ops() {
        if let Err(e) = kernel.apply(&op) {
            errors.push(e.to_string());
        }
    }
    if let Err(e) = kernel.settle() {
        errors.push(e.to_string());
    }
    if let Some(pid) = fault.relay_pid.filter(|p| *p != std::process::id()) {
        if is_relay(pid) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
    }
    errors
}

pub use plumb_engine::engine::{fault_is_due as is_due, is_relay};

/// Removes the stack's expired faults (and those whose relay died); quiet, cheap when the
/// stack has none, and skipped while someone else holds the state's lock (the supervisor and
/// the relays call it again a second later). Returns what it removed.
pub fn tend(stack_dir: &Path) -> Result<Vec<Fault>> {
    let now = runfile::unix_ms();
    if !read(stack_dir)?.faults.iter().any(|f| is_due(f, now)) {
        return Ok(Vec::new());
    }
    let Some(mut locked) = Locked::try_open(stack_dir)? else {
        return Ok(Vec::new());
    };
    let now = runfile::unix_ms();
    Ok(locked.remove(|f| is_due(f, now))?.0)
}

/// What removes every chaos object of the stack: the recorded faults' undo operations,
/// then [`unrecorded`] ones.
pub fn undo_all(kernel: &mut dyn Kernel, stack: &str, recorded: &Faults) -> Vec<Op> {
    let mut ops: Vec<Op> = recorded.faults.iter().flat_map(Fault::undo_ops).collect();
    ops.extend(unrecorded(kernel, stack, recorded));
    ops
}

/// Chaos objects of the stack no record names (a record lost, a run killed half way): taps
/// marked as the stack's and its chaos tables still in the kernel.
pub fn unrecorded(kernel: &mut dyn Kernel, stack: &str, recorded: &Faults) -> Vec<Op> {
    let taps: Vec<&str> = recorded
        .faults
        .iter()
        .flat_map(|f| f.detours.iter().map(|d| d.tap.as_str()))
        .collect();
    let mut ops = Vec::new();
    let prefix = names::alias(stack, "chaos-");
    for l in kernel.host_links().unwrap_or_default() {
        let ours = l.link.alias.as_deref().is_some_and(|a| a.starts_with(&prefix));
        if ours && !taps.contains(&l.name.as_str()) {
            ops.push(Op::LinkDel { name: l.name });
        }
    }
    let tables: Vec<TableId> = chaos_tables(kernel, stack)
        .into_iter()
        .filter(|t| !recorded.faults.iter().any(|f| f.tables.iter().any(|r| r.table == *t)))
        .collect();
    if !tables.is_empty() {
        ops.push(Op::Nft {
            changes: tables.into_iter().map(|table| NftChange::Delete { table }).collect(),
        });
    }
    ops
}

/// The stack's chaos tables the kernel holds (`nft -j list tables`).
fn chaos_tables(kernel: &mut dyn Kernel, stack: &str) -> Vec<TableId> {
    kernel
        .nft_tables()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(family, name)| {
            let family = match family.as_str() {
                "inet" => Family::Inet,
                "bridge" => Family::Bridge,
                _ => return None,
            };
            names::is_chaos_table(&name, stack).then_some(TableId { family, name })
        })
        .collect()
}

/// `down`: every fault of the stack removed, recorded or left over, relays ended.
pub fn remove_all(kernel: &mut dyn Kernel, stack: &str, stack_dir: &Path) -> Result<Vec<String>> {
    let mut errors = Vec::new();
    // `down` holds the state's lock through its engine.
    let mut locked = Locked::held(stack_dir)?;
    let ops = unrecorded(kernel, stack, &locked.faults);
    errors.extend(locked.remove(|_| true)?.1);
    if ops.is_empty() {
        return Ok(errors);
    }
    for op in &ops {
        if let Err(e) = kernel.apply(op) {
            errors.push(e.to_string());
        }
    }
    if let Err(e) = kernel.settle() {
        errors.push(e.to_string());
    }
    Ok(errors)
}

/// Starts the relay of fault `id` (detached, in its own session, so it outlives this
/// command), and waits until it holds its taps. Its messages go to `chaos.log`.
pub fn start_relay(state_root: &Path, stack: &str, stack_dir: &Path, id: u32) -> Result<u32> {
    let log_path = stack_dir.join("chaos.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(PRIVATE_FILE)
        .open(&log_path)
        .map_err(|e| write_error(&log_path, e))?;
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("--state-dir")
        .arg(state_root)
        .args(["chaos-relay", stack, &id.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
    // SAFETY: setsid is async-signal-safe; it detaches the relay from our terminal and
    // process group, so it outlives this command and Ctrl-C here does not reach it.
    unsafe {
        command.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    let mut child = command
        .spawn()
        .map_err(|e| Failure::new(format!("cannot start the chaos relay: {e}")))?;
    let pid = child.id();
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if line.trim() != "ready" {
        let _ = child.kill();
        let _ = child.wait();
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        let last = log.lines().last().unwrap_or("it said nothing").to_string();
        return Err(Failure::new(format!("the chaos relay did not start: {last}")));
    }
    // The relay runs on in its own session; reap it if it ends while we still run.
    std::thread::spawn(move || child.wait());
    Ok(pid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumb_core::firewall::Ruleset;
    use plumb_engine::fake::FakeKernel;

    /// What `down` removes when the record of the faults is lost: the stack's marked taps and
    /// chaos tables, read through the kernel trait (here the fake), and nothing of another
    /// stack's.
    #[test]
    fn faults_without_a_record_are_found_by_the_kernels_marks() {
        let mut kernel = FakeKernel::default();
        let table = |stack: &str| TableId {
            family: Family::Inet,
            name: names::chaos_table(stack, 3),
        };
        let ops = [
            Op::TapAdd {
                name: "pltapa".into(),
                bridge: "plbr0".into(),
                alias: names::alias("s", "chaos-3/web-1/eth0"),
            },
            Op::TapAdd {
                name: "pltapb".into(),
                bridge: "plbr0".into(),
                alias: names::alias("other", "chaos-1/web-1/eth0"),
            },
            Op::Nft {
                changes: ["s", "other"]
                    .map(|s| NftChange::Replace {
                        ruleset: Ruleset {
                            table: table(s),
                            sets: Vec::new(),
                            chains: Vec::new(),
                        },
                    })
                    .to_vec(),
            },
        ];
        for op in &ops {
            kernel.apply(op).unwrap();
        }
        let found = undo_all(&mut kernel, "s", &Faults::default());
        assert_eq!(
            found,
            [
                Op::LinkDel { name: "pltapa".into() },
                Op::Nft {
                    changes: vec![NftChange::Delete { table: table("s") }]
                }
            ]
        );
        for op in &found {
            kernel.apply(op).unwrap();
        }
        assert!(
            undo_all(&mut kernel, "s", &Faults::default()).is_empty(),
            "nothing of s is left"
        );
        assert_eq!(kernel.world().table_count(), 1, "the other stack's table stays");
    }
}

//! Executes a plan over a [`Kernel`]: each operation in order, consecutive containers on two
//! threads. An `up` stops at the first failure (removing the container it was making); a
//! teardown goes on past failures and reports them all, so one odd object never leaves half
//! a stack behind.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use plumb_core::firewall::{NftChange, TableId};
use plumb_core::kernel::{Kernel, KernelError};
use plumb_core::{Op, Plan, Step, What};

use crate::state::AppliedFirewall;

/// Batches of at least this many containers are wired on two threads.
const PARALLEL_FROM: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Stop at the first failure (making things: the next `up` retries).
    Stop,
    /// Go on with the rest and report every failure (tearing down).
    Continue,
}

/// What executing a plan did.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Every table the plan's nft transaction touched, with what it left (`None`: removed).
    /// Empty if the firewall did not change.
    pub firewall: Vec<(TableId, Option<AppliedFirewall>)>,
    /// The nft transactions the plan committed, and the kernel's nftables generation after
    /// them (see [`crate::state::StackState::record_generation`]).
    pub nft_commits: u32,
    pub nft_generation: Option<u32>,
    pub errors: Vec<KernelError>,
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.errors.is_empty()
    }
}

/// Told how far execution has come: (done, total, what is counted).
pub type Progress<'a> = &'a (dyn Fn(usize, usize, &str) + Sync);

pub fn execute(kernel: &mut dyn Kernel, plan: &Plan, on_error: OnError, progress: Progress) -> Outcome {
    let mut outcome = Outcome::default();
    let total = plan.steps.len();
    let mut done = 0;
    // The nft changes of the operations that ran (after a stop, later ones never did).
    let mut started: Vec<&NftChange> = Vec::new();
    let mut started_ops = 0;
    while done < total && (outcome.ok() || on_error == OnError::Continue) {
        progress(done, total, "steps applied");
        let batch: Vec<&Step> = plan.steps[done..]
            .iter()
            .take_while(|s| matches!(s.what, What::CreateContainer { .. }))
            .collect();
        if batch.is_empty() {
            let step = &plan.steps[done];
            done += 1;
            for op in &step.ops {
                match kernel.apply(op) {
                    Ok(()) => {
                        if let Op::Nft { changes } = op {
                            started.extend(changes);
                            started_ops += 1;
                        }
                    }
                    Err(e) => {
                        outcome.errors.push(e);
                        if on_error == OnError::Stop {
                            break;
                        }
                    }
                }
            }
        } else {
            done += batch.len();
            outcome.errors.extend(create_containers(kernel, &batch, progress));
        }
    }
    // Background work (the nft transaction) completes whatever happened after it started.
    // Each Op::Nft that ran is one transaction.
    let commits = started_ops as u32;
    match kernel.settle() {
        Ok(()) => {
            if commits > 0 {
                outcome.nft_commits = commits;
                outcome.nft_generation = kernel.nft_generation().ok().flatten();
            }
            for change in started {
                let left = change.result().map(|ruleset| AppliedFirewall {
                    ruleset: ruleset.clone(),
                    fingerprint: None,
                });
                outcome.firewall.push((change.table().clone(), left));
            }
        }
        Err(e) => outcome.errors.push(e),
    }
    outcome
}

/// Wires containers, on two threads for larger batches (the kernel serializes most link
/// changes, but namespace creation and the work inside each namespace overlap). A container
/// that fails is removed again; the next `up` retries it.
fn create_containers(kernel: &mut dyn Kernel, batch: &[&Step], progress: Progress) -> Vec<KernelError> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let errors = Mutex::new(Vec::new());
    let work = |k: &mut dyn Kernel| {
        while !failed.load(Ordering::Relaxed) {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(step) = batch.get(i) else { break };
            if let Err(e) = step.ops.iter().try_for_each(|op| k.apply(op)) {
                failed.store(true, Ordering::Relaxed);
                undo(k, step);
                errors.lock().unwrap_or_else(|p| p.into_inner()).push(e);
                break;
            }
            progress(i + 1, batch.len(), "containers wired");
        }
    };
    if batch.len() < PARALLEL_FROM {
        work(kernel);
    } else {
        match kernel.worker() {
            Ok(mut second) => std::thread::scope(|scope| {
                let other = scope.spawn(|| work(second.as_mut()));
                work(kernel);
                if other.join().is_err() {
                    errors.lock().unwrap_or_else(|p| p.into_inner()).push(KernelError {
                        what: "wire containers".into(),
                        detail: "a wiring thread panicked".into(),
                        errno: None,
                    });
                }
            }),
            Err(e) => return vec![e],
        }
    }
    errors.into_inner().unwrap_or_else(|p| p.into_inner())
}

/// Removes what a failed container step made: its namespace (its veths go with it).
fn undo(kernel: &mut dyn Kernel, step: &Step) {
    if let Some(Op::NetnsAttach { name, .. }) = step.ops.first() {
        // Another's namespace stays: only plumb's veths and the name go.
        for op in &step.ops {
            if let Op::VethAdd { name: veth, .. } = op {
                let _ = kernel.apply(&Op::LinkDel { name: veth.clone() });
            }
        }
        let _ = kernel.apply(&Op::EtcNetnsDel { netns: name.clone() });
        let _ = kernel.apply(&Op::NetnsDel { name: name.clone() });
    }
    if let Some(Op::NetnsAdd { name }) = step.ops.first() {
        let _ = kernel.apply(&Op::EtcNetnsDel { netns: name.clone() });
        let _ = kernel.apply(&Op::NetnsDel { name: name.clone() });
    }
}

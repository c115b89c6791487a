//! The binary's side of executing a plan: the real kernel, a progress line for plans that
//! take more than a second, and the engine's outcome turned into one failure that lists
//! every error.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use plumb_core::Plan;
use plumb_engine::{execute, OnError, Outcome};
use plumb_linux::kernel::LinuxKernel;

use crate::failure::{Failure, Result};

pub fn kernel() -> Result<LinuxKernel> {
    Ok(LinuxKernel::new()?)
}

/// Executes `plan`; the outcome, and a failure naming every error if there were any.
pub fn run(kernel: &mut LinuxKernel, plan: &Plan, on_error: OnError) -> (Outcome, Result<()>) {
    let progress = Mutex::new(Progress::new());
    let tick = |done: usize, total: usize, what: &str| {
        progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tick(done, total, what);
    };
    let outcome = execute(kernel, plan, on_error, &tick);
    progress.lock().unwrap_or_else(|p| p.into_inner()).finish();
    let result = match outcome.errors.as_slice() {
        [] => Ok(()),
        [one] => Err(Failure::from(one.clone())),
        many => {
            let list: Vec<String> = many.iter().map(|e| format!("  - {e}")).collect();
            Err(
                Failure::new(format!("{} operations failed:\n{}", many.len(), list.join("\n")))
                    .hint("run the command again once the cause is fixed; it goes on from where the kernel is"),
            )
        }
    };
    (outcome, result)
}

/// A one-line progress report on stderr for plans that take more than a second.
struct Progress {
    start: Instant,
    last: Option<Instant>,
    tty: bool,
}

impl Progress {
    fn new() -> Self {
        Progress {
            start: Instant::now(),
            last: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn tick(&mut self, done: usize, total: usize, what: &str) {
        let now = Instant::now();
        if !self.tty
            || now - self.start < Duration::from_secs(1)
            || self.last.is_some_and(|l| now - l < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(now);
        eprint!("\r\x1b[K  {done}/{total} {what}");
    }

    fn finish(&mut self) {
        if self.last.is_some() {
            eprint!("\r\x1b[K");
        }
    }
}

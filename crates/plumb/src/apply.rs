//! The binary's side of executing a plan: the real kernel (the one place the binary makes
//! it), and a progress line for plans that take more than a second.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use plumb_engine::execute::Progress;
pub use plumb_linux::kernel::LinuxKernel;

use crate::failure::Result;

pub fn kernel() -> Result<LinuxKernel> {
    Ok(LinuxKernel::new()?)
}

/// Where a container's namespace is bound (`/run/netns/NAME`): podman joins it there.
pub fn netns_path(name: &str) -> std::path::PathBuf {
    plumb_linux::netns::path(name)
}

/// A container's resolv.conf (the stack's DNS server), which host programs see over
/// /etc/resolv.conf and podman binds there.
pub fn resolv_conf_path(name: &str) -> std::path::PathBuf {
    plumb_linux::netns::resolv_conf_path(name)
}

/// Runs `f` with a progress callback that draws a one-line report on stderr for work that
/// takes more than a second.
pub fn with_progress<T>(f: impl FnOnce(Progress) -> T) -> T {
    let progress = Mutex::new(ProgressLine::new());
    let tick = |done: usize, total: usize, what: &str| {
        progress
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .tick(done, total, what);
    };
    let result = f(&tick);
    progress.lock().unwrap_or_else(|p| p.into_inner()).finish();
    result
}

/// A one-line progress report on stderr for plans that take more than a second.
struct ProgressLine {
    start: Instant,
    last: Option<Instant>,
    tty: bool,
}

impl ProgressLine {
    fn new() -> Self {
        ProgressLine {
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

//! A stack's supervisor: one process per stack (`plumb supervise STACK`, or `plumb up
//! --foreground`) that starts each replica inside its container in dependency order, restarts
//! it by policy with exponential back-off, runs its health probe, and writes its output to
//! rotated log files.
//!
//! - `event_loop`: the one thread, its events, and carrying out what replicas ask for.
//! - `replica`: one replica's life as a pure state machine (back-off, health, dependencies).
//! - `plan`: which replicas a new `run.json` keeps, restarts, stops, adds or removes (pure).
//! - `spawn`: starting and signalling processes; `probe`: health probes; `logs`: output;
//!   `hosts`: the containers' hosts files; `dns`: the stack's DNS server and its zone.
//! - `status`: writing `status.json` for `plumb` (the socket tells whether that works).
//! - `balancer`: the virtual IPs' port chains follow the replicas' readiness.
//! - `autoscaler`: measures autoscaled services and scales them (through `plumb scale`).

mod autoscaler;
mod balancer;
mod dns;
mod event_loop;
#[cfg(test)]
mod fixtures;
mod hosts;
mod logs;
mod metrics;
mod plan;
mod probe;
mod replica;
mod spawn;
mod status;

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::fcntl::{fcntl, FcntlArg, FdFlag, OFlag};

pub use event_loop::Supervisor;
pub use metrics::read_mesh_stats;

/// Pipes the loop polls must never block it, nor leak into the processes it starts.
fn nonblocking_cloexec(fd: BorrowedFd) {
    let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let _ = fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC));
}

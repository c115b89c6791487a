//! `plumb exec CONTAINER -- CMD ...`: run a command inside a container's network namespace
//! (and, when a service runs there, its hostname, /etc/hosts and /etc/resolv.conf too; in a
//! bare container its resolv.conf); plumb's exit code is the command's.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::Command;

use nix::sched::{setns, CloneFlags};
use plumb_core::kernel::Kernel;

use super::{require_root, Context};
use crate::failure::{Failure, Result};
use crate::runfile;
use crate::stackfile::find_container;

pub fn run(ctx: &Context, container: &str, command: &[String]) -> Result<()> {
    require_root("exec")?;
    let (st, c) = find_container(&ctx.state, container)?;
    let mut kernel = crate::apply::kernel()?;
    if !kernel.netns_bound(&c.netns)? {
        return Err(Failure::new(format!("the namespace of {} is gone", c.name)).hint("run `plumb up` to recreate it"));
    }
    let dir = ctx.state.stack_dir(&st.stack);
    let service_pid =
        runfile::live_supervisor(&dir).and_then(|_| runfile::read_status(&dir).replicas.get(&c.name)?.pid);
    if let Some(pid) = service_pid {
        for (kind, flag) in [("uts", CloneFlags::CLONE_NEWUTS), ("mnt", CloneFlags::CLONE_NEWNS)] {
            if let Ok(ns) = std::fs::File::open(format!("/proc/{pid}/ns/{kind}")) {
                let _ = setns(ns.as_fd(), flag);
            }
        }
    } else {
        // A bare container: its resolv.conf, as `ip netns exec` would give it.
        kernel.bind_resolv_conf(&c.netns)?;
    }
    kernel.enter_netns(&c.netns)?;
    let Some((program, args)) = command.split_first() else {
        return Err(Failure::new("no command given").hint("plumb exec CONTAINER -- CMD ARGS..."));
    };
    let err = Command::new(program).args(args).exec();
    Err(Failure::new(format!("cannot run {program:?} in {}: {err}", c.name)).code(127))
}

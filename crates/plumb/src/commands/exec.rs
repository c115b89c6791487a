//! `plumb exec CONTAINER -- CMD ...`: run a command inside a container's network namespace
//! (and, when a service runs there, its hostname, /etc/hosts and /etc/resolv.conf too; in a
//! bare container its resolv.conf; in an image service's running container, inside it with
//! `podman exec`); plumb's exit code is the command's.

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
    let Some((program, args)) = command.split_first() else {
        return Err(Failure::new("no command given").hint("plumb exec CONTAINER -- CMD ARGS..."));
    };
    let image = c.process.as_ref().is_some_and(|p| p.image.is_some());
    if let (true, Some(_)) = (image, service_pid) {
        // An image service's replica: inside its container (its files, its PID namespace).
        let name = plumb_core::oci::container_name(&st.stack, &c.name);
        let tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
        let mut podman = Command::new("podman");
        podman.args(["exec", "--interactive"]);
        if tty {
            podman.arg("--tty");
        }
        let err = podman.arg(&name).arg(program).args(args).exec();
        return Err(Failure::new(format!("cannot run podman exec in {}: {err}", c.name)).code(127));
    }
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
    let err = Command::new(program).args(args).exec();
    Err(Failure::new(format!("cannot run {program:?} in {}: {err}", c.name)).code(127))
}

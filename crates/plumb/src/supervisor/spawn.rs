//! Starting a replica's process inside its container (network namespace, hostname, hosts
//! file, resolv.conf, user) with the environment services get, and signalling its process group. The only
//! module that creates or signals service processes.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::sys::stat::{umask, Mode};
use nix::unistd::{Pid, User};
use plumb_core::cgroup::Limits;
use plumb_core::kernel::{Confinement, Identity, Kernel};
use plumb_core::services::{RunSpec, SEARCH_PATH};

use super::hosts;
use crate::failure::{Failure, Result};

/// Starts one replica's process inside its container, with its stdout and stderr piped;
/// returns it and the inode of the namespace it runs in. Writes the container's hosts file
/// into `hosts_dir` first. Returns once the program runs (its exec succeeded): that is when
/// `up` reports the replica started; a failed exec or step before it is the error.
pub fn spawn_replica(kernel: &mut dyn Kernel, spec: &RunSpec, hosts_dir: &Path) -> Result<(Child, Option<u64>)> {
    let inode = kernel.netns_inode(&spec.netns);
    let hosts = hosts::write(hosts_dir, &spec.container, &spec.hosts)?;
    if let Some(run) = &spec.oci {
        // An image service's replica: podman (root, unconfined: it makes the container) runs
        // it in the replica's namespace; the container gets the service's restrictions.
        let conmon_dir = hosts_dir.with_file_name(crate::state::CONMON_DIR);
        return Ok((crate::oci::spawn(spec, run, &hosts, &conmon_dir)?, inode));
    }
    let (program, args) = spec
        .command
        .split_first()
        .ok_or_else(|| Failure::new("empty command"))?;
    let program = if program.contains('/') {
        spec.workdir.join(program)
    } else {
        PathBuf::from(program)
    };
    // Its own cgroup (kept across restarts: its OOM count tells what ended a run).
    let cgroup = replica_cgroup(kernel, spec)?;
    let mut command = Command::new(&program);
    command
        .args(args)
        .env_clear()
        .env("PATH", SEARCH_PATH)
        .env("HOME", "/root")
        .env("HOSTNAME", &spec.container)
        // Python buffers output sent to a pipe; logs should show up as they happen.
        .env("PYTHONUNBUFFERED", "1")
        .envs(&spec.env)
        .current_dir(&spec.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    usual_umask(&mut command);
    let identity = spec
        .user
        .as_deref()
        .map(|name| run_as(&mut command, name))
        .transpose()?;
    let how = Confinement {
        netns: &spec.netns,
        hostname: &spec.container,
        hosts: Some(&hosts),
        resolv_conf: true,
        identity,
        capabilities: &spec.capabilities,
        cgroup: cgroup.as_ref().map(|(path, limits)| (path.as_str(), limits)),
    };
    let explain = kernel.confine(&mut command, &how)?;
    let child = command.spawn().map_err(|e| Failure::new(explain(&program, &e)))?;
    Ok((child, inode))
}

/// A host-program replica's cgroup and its limits, made if missing; None where it has no
/// limits (the host has no pids controller and the service sets none).
fn replica_cgroup(kernel: &mut dyn Kernel, spec: &RunSpec) -> Result<Option<(String, Limits)>> {
    let limits = effective_limits(kernel, &spec.limits);
    if limits.is_empty() {
        return Ok(None);
    }
    let path = cgroup_path(spec);
    kernel
        .cgroup_make(&path, &limits)
        .map_err(|e| Failure::new(format!("{}: {e}", spec.container)))?;
    Ok(Some((path, limits)))
}

/// The service's limits, with the default pids limit where it sets none and the host can
/// enforce it (`up` has refused limits the service sets that the host cannot).
fn effective_limits(kernel: &mut dyn Kernel, limits: &Limits) -> Limits {
    if limits.pids.is_some() {
        return *limits;
    }
    let default_only = Limits::default().with_default_pids();
    match kernel.cgroup_unenforceable(&default_only) {
        Some(_) => *limits,
        None => limits.with_default_pids(),
    }
}

/// A replica's cgroup below plumb's root: `STACK/CONTAINER`.
pub fn cgroup_path(spec: &RunSpec) -> String {
    let stack = spec.env.get("PLUMB_STACK").map_or("stack", String::as_str);
    plumb_core::cgroup::replica_path(stack, &spec.container)
}

/// How long a sidecar may take to listen before its replica starts anyway.
const SIDECAR_READY: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts a meshed replica's sidecar proxy (this very program, `plumb proxy`), which enters
/// the replica's namespace itself; returns once it listens (it says so on stdout), so the
/// replica's first connection already finds it.
pub fn spawn_sidecar(kernel: &mut dyn Kernel, stack_dir: &Path, spec: &RunSpec) -> Result<Child> {
    // /proc/self/exe still names the supervisor's program between fork and exec, even if
    // the file was replaced since it started.
    let mut command = Command::new("/proc/self/exe");
    command
        .arg("proxy")
        .arg(stack_dir)
        .arg(&spec.container)
        .env_clear()
        .env("PATH", SEARCH_PATH)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Under its replica's limits: in the replica's cgroup (made here when the sidecar starts
    // first), as a pod's sidecar counts against the pod.
    if let Some((path, limits)) = replica_cgroup(kernel, spec)? {
        kernel
            .cgroup_join(&mut command, &path, &limits)
            .map_err(|e| Failure::new(format!("{}: {e}", spec.container)))?;
    }
    let mut child = command
        .spawn()
        .map_err(|e| Failure::new(format!("cannot start the sidecar: {e}")))?;
    match wait_for_line(&child, "ready", SIDECAR_READY) {
        Ok(()) => Ok(child),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

/// Reads `child`'s stdout a byte at a time (nothing past the line is taken from the pipe)
/// until it says `word`, for at most `within`.
fn wait_for_line(child: &Child, word: &str, within: std::time::Duration) -> Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let out = child
        .stdout
        .as_ref()
        .ok_or_else(|| Failure::new("the sidecar has no stdout"))?;
    let deadline = std::time::Instant::now() + within;
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let millis = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(out.as_fd(), PollFlags::POLLIN)];
        if millis == 0 || poll(&mut fds, PollTimeout::from(millis)).unwrap_or(0) <= 0 {
            return Err(Failure::new(format!("the sidecar did not listen within {within:?}")));
        }
        let mut byte = [0u8; 1];
        match nix::unistd::read(std::os::fd::AsRawFd::as_raw_fd(out), &mut byte) {
            Ok(1) if byte[0] == b'\n' => {
                if line == word.as_bytes() {
                    return Ok(());
                }
                line.clear();
            }
            Ok(1) => line.push(byte[0]),
            _ => {
                return Err(Failure::new(
                    "the sidecar exited before it listened (see the replica's log)",
                ))
            }
        }
    }
}

/// Services start with the usual umask (022), not the supervisor's own (077).
fn usual_umask(command: &mut Command) {
    // SAFETY: only umask(2), which is async-signal-safe, runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            umask(Mode::from_bits_truncate(0o022));
            Ok(())
        });
    }
}

/// The identity to drop to for user `name` (also its HOME).
fn run_as(command: &mut Command, name: &str) -> Result<Identity> {
    let user = User::from_name(name)
        .ok()
        .flatten()
        .ok_or_else(|| Failure::new(format!("unknown user {name:?}")))?;
    command.env("HOME", &user.dir);
    Ok(Identity {
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    })
}

/// Signals a replica's whole process group (it is a session leader: pgid = pid).
pub fn signal_group(child: &Child, signal: Signal) {
    let _ = kill(Pid::from_raw(-(child.id() as i32)), signal);
}

/// Signals each of these processes by PID (what a replica left in its container).
pub fn signal_each(pids: &[i32], signal: Signal) {
    for pid in pids {
        let _ = kill(Pid::from_raw(*pid), signal);
    }
}

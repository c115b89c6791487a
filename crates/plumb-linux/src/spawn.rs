//! Running a program inside a container: after fork and before exec, the child enters the
//! container's network namespace, gets its own UTS namespace (hostname = container name), its
//! own mount namespace with the container's /etc/hosts and /etc/resolv.conf bound over the
//! host's, and its own
//! session, so the whole process tree can be signalled as one group. Last it drops to the
//! service's user and capabilities (`privileges`).

mod privileges;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use nix::mount::{mount, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::SigSet;
use nix::unistd::{sethostname, setsid};
use plumb_core::spec::Capabilities;

pub use privileges::{Identity, Privileges};

/// Files bound over the host's in a container's private mount namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct EtcFiles<'a> {
    /// Over /etc/hosts.
    pub hosts: Option<&'a Path>,
    /// Over /etc/resolv.conf (skipped if it does not exist: a container made by an older plumb).
    pub resolv_conf: Option<&'a Path>,
}

/// The steps between fork and exec, in order: a failed start names the one that failed,
/// instead of blaming the program for a mount's "No such file or directory".
const STEPS: [&str; 9] = [
    "entering the container's network namespace",
    "making the process's own UTS and mount namespaces",
    "setting the hostname",
    "making its mounts private",
    "binding the container's hosts file over /etc/hosts",
    "binding the container's resolv.conf over /etc/resolv.conf",
    "starting a session",
    "dropping to the service's user and capabilities",
    "joining the replica's cgroup",
];

/// What `confine` leaves to explain a failed spawn: the child writes the number of the step
/// that failed into this pipe (closed at exec, so it stays empty when exec is reached).
///
/// Whether exec itself succeeded needs no pipe of ours: `Command::spawn` returns only once the
/// child has executed the program, or with the errno of the failed exec, which std carries
/// back through its own close-on-exec pipe. So a spawn that returns Ok means the program runs.
pub struct Confined {
    failed_step: OwnedFd,
}

impl Confined {
    /// Why the spawn of `program` failed: the step before exec that did, or exec itself.
    pub fn explain(&self, program: &Path, err: &io::Error) -> String {
        let mut byte = [0u8; 1];
        match nix::unistd::read(self.failed_step.as_raw_fd(), &mut byte) {
            Ok(1) => match STEPS.get(usize::from(byte[0])) {
                Some(step) => format!("{step}: {err}"),
                None => err.to_string(),
            },
            _ => match missing_interpreter(program, err) {
                Some(interpreter) => format!(
                    "{}: its interpreter {interpreter} does not exist ({err})",
                    program.display()
                ),
                None => format!("{}: {err}", program.display()),
            },
        }
    }
}

/// The `#!` interpreter of `program`, when exec failed with ENOENT although the program is
/// there: the kernel then could not find the interpreter, and "No such file or directory"
/// alone would seem to name the program.
fn missing_interpreter(program: &Path, err: &io::Error) -> Option<String> {
    if err.raw_os_error() != Some(nix::libc::ENOENT) || !program.is_file() {
        return None;
    }
    let mut head = [0u8; 256];
    let n = std::io::Read::read(&mut std::fs::File::open(program).ok()?, &mut head).ok()?;
    let line = head[..n].strip_prefix(b"#!")?.split(|b| *b == b'\n').next()?;
    let interpreter = String::from_utf8_lossy(line).split_whitespace().next()?.to_string();
    (!Path::new(&interpreter).exists()).then_some(interpreter)
}

/// The files bound over /etc/hosts and /etc/resolv.conf need those files to exist as mount
/// points: a host without them (a minimal root) gets empty ones, which mean what none meant.
fn ensure_mount_point(target: &str) -> io::Result<()> {
    match std::fs::OpenOptions::new().write(true).create_new(true).open(target) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("creating {target} as a mount point: {e}"),
        )),
    }
}

/// Makes `command` join the cgroups whose `cgroup.procs` files are `procs` before exec (a
/// process sharing a replica's limits; [`confine`] does it first for the replica's own).
pub fn join_cgroup(command: &mut Command, procs: Vec<OwnedFd>) {
    // SAFETY: the closure runs in the forked child before exec and only calls write(2) on
    // descriptors opened before the fork.
    unsafe {
        command.pre_exec(move || {
            for file in &procs {
                nix::unistd::write(file, b"0")?;
            }
            Ok(())
        });
    }
}

/// Makes `command` start inside the container whose network namespace is `netns`, as
/// `identity` (root if `None`) with `capabilities`.
pub fn confine(
    command: &mut Command,
    netns: OwnedFd,
    hostname: &str,
    files: EtcFiles,
    identity: Option<Identity>,
    capabilities: &Capabilities,
    cgroup_procs: Vec<OwnedFd>,
) -> io::Result<Confined> {
    // Everything the child needs is prepared here: between fork and exec only system calls run.
    let privileges = Privileges::new(identity, capabilities)?;
    let (report_read, report_write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
    let hostname = hostname.to_string();
    let hosts = files
        .hosts
        .map(|p| CString::new(p.as_os_str().as_bytes()))
        .transpose()?;
    let etc_hosts = CString::new("/etc/hosts")?;
    let resolv = files
        .resolv_conf
        .filter(|p| p.exists())
        .map(|p| CString::new(p.as_os_str().as_bytes()))
        .transpose()?;
    let etc_resolv = CString::new("/etc/resolv.conf")?;
    if hosts.is_some() {
        ensure_mount_point("/etc/hosts")?;
    }
    if resolv.is_some() {
        ensure_mount_point("/etc/resolv.conf")?;
    }
    let root = CString::new("/")?;
    // SAFETY: the closure runs in the forked child before exec; it only makes system calls
    // (setns, unshare, sethostname, mount, setsid, prctl, set*id, capset) on data prepared
    // before the fork.
    unsafe {
        command.pre_exec(move || {
            // Notes which step failed (write(2) only), then fails as that step did.
            let step = |n: u8, result: io::Result<()>| {
                if result.is_err() {
                    let _ = nix::unistd::write(&report_write, &[n]);
                }
                result
            };
            // A supervisor blocks the signals it reads from a signalfd; the mask is inherited.
            SigSet::empty().thread_set_mask()?;
            // First into its cgroup, so every process it makes counts against the limits.
            for procs in &cgroup_procs {
                step(8, nix::unistd::write(procs, b"0").map(drop).map_err(Into::into))?;
            }
            step(0, setns(netns.as_fd(), CloneFlags::CLONE_NEWNET).map_err(Into::into))?;
            step(
                1,
                unshare(CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWNS).map_err(Into::into),
            )?;
            step(2, sethostname(&hostname).map_err(Into::into))?;
            if hosts.is_some() || resolv.is_some() {
                // Private propagation first, so the bind mounts stay in this process's view.
                let private = mount(
                    None::<&str>,
                    root.as_c_str(),
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                );
                step(3, private.map_err(Into::into))?;
            }
            for (n, source, target) in [(4, &hosts, &etc_hosts), (5, &resolv, &etc_resolv)] {
                if let Some(source) = source {
                    let bound = mount(
                        Some(source.as_c_str()),
                        target.as_c_str(),
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    );
                    step(n, bound.map_err(Into::into))?;
                }
            }
            step(6, setsid().map(drop).map_err(Into::into))?;
            step(7, privileges.apply())
        });
    }
    Ok(Confined {
        failed_step: report_read,
    })
}

/// Makes `command` (run in a container by a thread that entered its network namespace, such
/// as a health probe) start with no signal blocked, as `identity` with `capabilities`.
pub fn restrict(command: &mut Command, identity: Option<Identity>, capabilities: &Capabilities) -> io::Result<()> {
    let privileges = Privileges::new(identity, capabilities)?;
    // SAFETY: only sigprocmask and the system calls of `Privileges::apply` run between fork
    // and exec, on masks computed before the fork.
    unsafe {
        command.pre_exec(move || {
            SigSet::empty().thread_set_mask()?;
            privileges.apply()
        });
    }
    Ok(())
}

/// Makes `command` start with no signal blocked (a supervisor's blocked signals would
/// otherwise be inherited, and SIGTERM would be ignored).
pub fn default_signals(command: &mut Command) {
    // SAFETY: only sigprocmask runs between fork and exec.
    unsafe {
        command.pre_exec(|| SigSet::empty().thread_set_mask().map_err(Into::into));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_interpreter_is_named_instead_of_the_program() {
        let dir = std::env::temp_dir().join(format!("plumb-spawn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("s.sh");
        let enoent = io::Error::from_raw_os_error(nix::libc::ENOENT);
        std::fs::write(&script, "#!/nonexistent/sh -e\necho\n").unwrap();
        assert_eq!(
            missing_interpreter(&script, &enoent).as_deref(),
            Some("/nonexistent/sh")
        );
        // An interpreter that exists, another error, a program that is not there: not this.
        std::fs::write(&script, "#!/bin/sh\necho\n").unwrap();
        assert_eq!(missing_interpreter(&script, &enoent), None);
        let eacces = io::Error::from_raw_os_error(nix::libc::EACCES);
        std::fs::write(&script, "#!/nonexistent/sh\n").unwrap();
        assert_eq!(missing_interpreter(&script, &eacces), None);
        assert_eq!(missing_interpreter(&dir.join("gone"), &enoent), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

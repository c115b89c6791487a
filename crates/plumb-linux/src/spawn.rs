//! Running a program inside a container: after fork and before exec, the child enters the
//! container's network namespace, gets its own UTS namespace (hostname = container name), its
//! own mount namespace with the container's /etc/hosts and /etc/resolv.conf bound over the
//! host's, and its own
//! session, so the whole process tree can be signalled as one group. Last it drops to the
//! service's user and capabilities (`privileges`).

mod privileges;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
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

/// Makes `command` start inside the container whose network namespace is `netns`, as
/// `identity` (root if `None`) with `capabilities`.
pub fn confine(
    command: &mut Command,
    netns: OwnedFd,
    hostname: &str,
    files: EtcFiles,
    identity: Option<Identity>,
    capabilities: &Capabilities,
) -> io::Result<()> {
    // Everything the child needs is prepared here: between fork and exec only system calls run.
    let privileges = Privileges::new(identity, capabilities)?;
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
    let root = CString::new("/")?;
    // SAFETY: the closure runs in the forked child before exec; it only makes system calls
    // (setns, unshare, sethostname, mount, setsid, prctl, set*id, capset) on data prepared
    // before the fork.
    unsafe {
        command.pre_exec(move || {
            // A supervisor blocks the signals it reads from a signalfd; the mask is inherited.
            SigSet::empty().thread_set_mask()?;
            setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)?;
            unshare(CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWNS)?;
            sethostname(&hostname)?;
            if hosts.is_some() || resolv.is_some() {
                // Private propagation first, so the bind mounts stay in this process's view.
                mount(
                    None::<&str>,
                    root.as_c_str(),
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )?;
            }
            for (source, target) in [(&hosts, &etc_hosts), (&resolv, &etc_resolv)] {
                if let Some(source) = source {
                    mount(
                        Some(source.as_c_str()),
                        target.as_c_str(),
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )?;
                }
            }
            setsid()?;
            privileges.apply()
        });
    }
    Ok(())
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

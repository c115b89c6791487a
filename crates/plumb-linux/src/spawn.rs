//! Running a program inside a container: after fork and before exec, the child enters the
//! container's network namespace, gets its own UTS namespace (hostname = container name), its
//! own mount namespace with the container's /etc/hosts bound over the host's, and its own
//! session, so the whole process tree can be signalled as one group.

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
use nix::unistd::{setgid, setgroups, sethostname, setsid, setuid, Gid, Uid};

/// Who a confined process runs as, when not root: set last, after the namespaces (which
/// need root).
#[derive(Debug, Clone, Copy)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// Makes `command` start inside the container whose network namespace is `netns`.
pub fn confine(
    command: &mut Command,
    netns: OwnedFd,
    hostname: &str,
    hosts_file: Option<&Path>,
    identity: Option<Identity>,
) -> io::Result<()> {
    // Everything the child needs is prepared here: between fork and exec only system calls run.
    let hostname = hostname.to_string();
    let hosts = hosts_file.map(|p| CString::new(p.as_os_str().as_bytes())).transpose()?;
    let etc_hosts = CString::new("/etc/hosts")?;
    let root = CString::new("/")?;
    // SAFETY: the closure runs in the forked child before exec; it only makes system calls
    // (setns, unshare, sethostname, mount, setsid, set*id) on data prepared before the fork.
    unsafe {
        command.pre_exec(move || {
            // A supervisor blocks the signals it reads from a signalfd; the mask is inherited.
            SigSet::empty().thread_set_mask()?;
            setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)?;
            unshare(CloneFlags::CLONE_NEWUTS | CloneFlags::CLONE_NEWNS)?;
            sethostname(&hostname)?;
            if let Some(hosts) = &hosts {
                // Private propagation first, so the bind mount stays in this process's view.
                mount(
                    None::<&str>,
                    root.as_c_str(),
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )?;
                mount(
                    Some(hosts.as_c_str()),
                    etc_hosts.as_c_str(),
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )?;
            }
            setsid()?;
            if let Some(id) = identity {
                let gid = Gid::from_raw(id.gid);
                setgroups(&[gid])?;
                setgid(gid)?;
                setuid(Uid::from_raw(id.uid))?;
            }
            Ok(())
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

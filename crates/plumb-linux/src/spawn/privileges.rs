//! What a service's process may do, set between fork and exec, last: the capability bounding
//! set, the user, the effective/permitted/inheritable and ambient capabilities, and
//! no_new_privs. Only system calls run in the child, on masks computed before the fork.

use std::io;

use nix::libc;
use nix::sys::prctl;
use nix::unistd::{setgid, setgroups, setuid, Gid, Uid};
use plumb_core::spec::Capabilities;

/// Who a confined process runs as, when not root: set after the namespaces (which need
/// root) and after the bounding set is cut (which needs CAP_SETPCAP).
pub use plumb_core::kernel::Identity;

/// The privileges of one process, as the masks the kernel takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privileges {
    identity: Option<Identity>,
    /// The most the process and its children can ever hold.
    bounding: u64,
    /// Effective and permitted: what it holds now.
    held: u64,
    /// Inheritable and ambient: what survives its exec of a program without file
    /// capabilities. Root needs none (exec gives root the bounding set); another user keeps
    /// only what it was granted.
    ambient: u64,
    /// The highest capability this kernel knows (`/proc/sys/kernel/cap_last_cap`).
    last_cap: u8,
}

impl Privileges {
    /// The privileges of a process running as `identity` (root if `None`) with
    /// `capabilities`, on this kernel.
    pub fn new(identity: Option<Identity>, capabilities: &Capabilities) -> io::Result<Privileges> {
        Ok(Privileges::on_kernel(identity, capabilities, last_cap()?))
    }

    /// As [`Privileges::new`], for a kernel whose highest capability is `last_cap`.
    pub fn on_kernel(identity: Option<Identity>, capabilities: &Capabilities, last_cap: u8) -> Privileges {
        let known = if last_cap >= 63 {
            u64::MAX
        } else {
            (1u64 << (last_cap + 1)) - 1
        };
        let bounding = capabilities.root.mask() & known;
        let runs_as_root = identity.is_none_or(|id| id.uid == 0);
        let (held, ambient) = if runs_as_root {
            (bounding, 0)
        } else {
            let granted = capabilities.user.mask() & bounding;
            (granted, granted)
        };
        Privileges {
            identity,
            bounding,
            held,
            ambient,
            last_cap,
        }
    }

    /// Applies them to the calling process. Made for the child between fork and exec: it
    /// only makes system calls.
    pub fn apply(&self) -> io::Result<()> {
        for cap in (0..=self.last_cap).filter(|cap| self.bounding & (1 << cap) == 0) {
            prctl_call(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0)?;
        }
        if let Some(id) = self.identity {
            // Keep the permitted set across setuid; capset below then trims it.
            prctl::set_keepcaps(true)?;
            let gid = Gid::from_raw(id.gid);
            setgroups(&[gid])?;
            setgid(gid)?;
            setuid(Uid::from_raw(id.uid))?;
        }
        capset(self.held, self.held, self.ambient)?;
        prctl_call(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0)?;
        for cap in (0..=self.last_cap).filter(|cap| self.ambient & (1 << cap) != 0) {
            prctl_call(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                libc::c_ulong::from(cap),
            )?;
        }
        // No exec can gain privileges: setuid programs and file capabilities do nothing.
        prctl::set_no_new_privs()?;
        Ok(())
    }
}

/// The highest capability number this kernel knows.
fn last_cap() -> io::Result<u8> {
    let text = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")?;
    text.trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("cap_last_cap is {text:?}")))
}

fn prctl_call(option: libc::c_int, arg2: libc::c_ulong, arg3: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the options used here (PR_CAPBSET_DROP, PR_CAP_AMBIENT) take integer arguments
    // only; no memory is passed to the kernel.
    let rc = unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `struct __user_cap_header_struct` of linux/capability.h.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct` of linux/capability.h: 32 capabilities.
#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Version 3 of the interface: 64-bit sets, as two `CapData`.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// Sets the calling thread's effective, permitted and inheritable sets.
fn capset(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let half = |shift: u32| CapData {
        effective: (effective >> shift) as u32,
        permitted: (permitted >> shift) as u32,
        inheritable: (inheritable >> shift) as u32,
    };
    let data = [half(0), half(32)];
    // SAFETY: `header` and `data` are valid, properly laid out (repr(C)) values that outlive
    // the call; version 3 reads exactly two CapData; pid 0 is the calling thread.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plumb_core::spec::{parse_name, CapabilityName};

    fn caps(add: &[&str]) -> Capabilities {
        let add: Vec<CapabilityName> = add.iter().filter_map(|n| parse_name(n)).collect();
        Capabilities::docker(&add, &[])
    }

    #[test]
    fn root_holds_its_bounding_set_and_others_only_what_was_added() {
        let root = Privileges::on_kernel(None, &caps(&[]), 40);
        assert_eq!((root.bounding, root.held, root.ambient), (0xa80425fb, 0xa80425fb, 0));
        let nobody = Identity { uid: 65534, gid: 65534 };
        let user = Privileges::on_kernel(Some(nobody), &caps(&[]), 40);
        assert_eq!((user.bounding, user.held, user.ambient), (0xa80425fb, 0, 0));
        let granted = Privileges::on_kernel(Some(nobody), &caps(&["NET_BIND_SERVICE"]), 40);
        assert_eq!((granted.held, granted.ambient), (1 << 10, 1 << 10));
        // user = "root" is root.
        let named_root = Privileges::on_kernel(Some(Identity { uid: 0, gid: 0 }), &caps(&[]), 40);
        assert_eq!(named_root.held, 0xa80425fb);
    }

    #[test]
    fn capabilities_the_kernel_does_not_know_are_left_out() {
        let all = Capabilities::docker(&[CapabilityName::All], &[]);
        let old_kernel = Privileges::on_kernel(None, &all, 37);
        assert_eq!(old_kernel.bounding, (1 << 38) - 1);
    }
}

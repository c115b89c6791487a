//! Persistent taps: making one (as `ip tuntap add dev NAME mode tap` does), and opening one:
//! reading it gives the frames the kernel sends through it, writing to it hands frames to the
//! kernel as received on it.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// `TUNSETIFF`: `_IOW('T', 202, int)`.
const TUNSETIFF: u64 = 0x4004_54ca;
/// `TUNSETPERSIST`: `_IOW('T', 203, int)`.
const TUNSETPERSIST: u64 = 0x4004_54cb;
const IFF_TAP: i16 = 0x0002;
const IFF_NO_PI: i16 = 0x1000;

/// `struct ifreq` as TUNSETIFF reads it: the name, then the flags.
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: i16,
    _pad: [u8; 22],
}

/// Attaches to the tap `name` (non-blocking); its carrier is up while the fd is open.
pub fn open(name: &str) -> io::Result<OwnedFd> {
    attach(name, nix::libc::O_NONBLOCK | nix::libc::O_CLOEXEC)
}

/// `ip tuntap add dev NAME mode tap`: a tap (no packet information header, as `ip` asks by
/// default) that outlives the fd that made it, owned by no particular user or group.
pub fn create_persistent(name: &str) -> io::Result<()> {
    let fd = attach(name, nix::libc::O_CLOEXEC)?;
    // SAFETY: TUNSETPERSIST takes its argument (non-zero: persistent) by value.
    let rc = unsafe { nix::libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST as _, 1 as nix::libc::c_ulong) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Opens /dev/net/tun and attaches it to the tap `name`, making the tap if there is none.
fn attach(name: &str, flags: i32) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() > 15 {
        return Err(io::Error::other(format!("bad interface name {name:?}")));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads a `struct ifreq` (40 bytes: a 16-byte name, then a union whose
    // first member is the short flags); `req` is exactly that, and lives across the call.
    let rc = unsafe { nix::libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(OwnedFd::from(file))
}

//! The one ethtool setting plumb changes: transmit checksum offload, through the SIOCETHTOOL
//! ioctl (what `ethtool -K DEV tx off` sends with the legacy command), so no `ethtool`
//! program is needed. On a VXLAN device it turns off `tx-checksum-ip-generic`: some NICs
//! corrupt the checksums of VXLAN's inner packets and the overlay stalls (calico#3145,
//! flannel#2152); flannel turns it off too.

use std::os::fd::AsRawFd;

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};

use crate::netlink::Result;
use crate::Error;

const SIOCETHTOOL: nix::libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value`
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with `ifr_data` (16 bytes of name, then a 24-byte union on 64-bit).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    data: *mut EthtoolValue,
    _rest: [u8; 16],
}

fn call(link: &str, cmd: u32, data: u32, what: impl Fn() -> String) -> Result<u32> {
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut value,
        _rest: [0; 16],
    };
    let bytes = link.as_bytes();
    if bytes.len() >= req.name.len() {
        return Err(Error::new(what(), std::io::Error::from_raw_os_error(nix::libc::EINVAL)));
    }
    req.name[..bytes.len()].copy_from_slice(bytes);
    let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| Error::new(what(), e.into()))?;
    // SAFETY: `req` is a valid `struct ifreq` whose `ifr_data` points to a live
    // `struct ethtool_value`; both outlive the call, and the kernel writes only into `value`.
    let rc = unsafe { nix::libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(Error::new(what(), std::io::Error::last_os_error()));
    }
    Ok(value.data)
}

/// Turns transmit checksum offload off on `link`.
pub fn tx_checksum_off(link: &str) -> Result<()> {
    call(link, ETHTOOL_STXCSUM, 0, || {
        format!("turn tx checksum offload off on {link}")
    })
    .map(|_| ())
}

/// Whether transmit checksum offload is on.
pub fn tx_checksum(link: &str) -> Result<bool> {
    call(link, ETHTOOL_GTXCSUM, 0, || {
        format!("read tx checksum offload of {link}")
    })
    .map(|d| d != 0)
}

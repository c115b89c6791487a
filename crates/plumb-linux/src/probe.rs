//! One probe connection, as `plumb trace` sends it: a socket made (and bound to a port the
//! kernel picks) in the namespace it starts from, so the tracing rules can be made for its
//! exact source port before it connects. TCP: a connect; UDP: one datagram, then a wait for
//! any reply or an ICMP error.

use std::net::SocketAddrV4;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, connect, getsockname, getsockopt, recv, send, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockType,
    SockaddrIn,
};

use crate::netlink::{Error, Result};

pub struct Probe {
    socket: OwnedFd,
    udp: bool,
    /// The source port the probe's packets carry.
    pub port: u16,
}

pub use plumb_core::kernel::ProbeOutcome as Outcome;

impl Probe {
    /// A socket in the current network namespace, bound to a port the kernel picks.
    pub fn bind(udp: bool) -> Result<Probe> {
        let wrap = |e: Errno| Error::new("make the probe socket", e.into());
        let ty = if udp { SockType::Datagram } else { SockType::Stream };
        let socket = socket(
            AddressFamily::Inet,
            ty,
            SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(wrap)?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            &SockaddrIn::new(0, 0, 0, 0, 0),
        )
        .map_err(wrap)?;
        let local: SockaddrIn = getsockname(std::os::fd::AsRawFd::as_raw_fd(&socket)).map_err(wrap)?;
        Ok(Probe {
            socket,
            udp,
            port: local.port(),
        })
    }

    /// Connects (TCP) or sends one datagram and waits for a reply (UDP), for at most `timeout`.
    pub fn send(&self, to: SocketAddrV4, timeout: Duration) -> Outcome {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.socket);
        match connect(fd, &SockaddrIn::from(to)) {
            Ok(()) | Err(Errno::EINPROGRESS) => {}
            Err(e) => return errno_outcome(e),
        }
        let interest = if self.udp {
            if let Err(e) = send(fd, b"plumb trace probe\n", MsgFlags::empty()) {
                return errno_outcome(e);
            }
            PollFlags::POLLIN
        } else {
            PollFlags::POLLOUT
        };
        let millis = u16::try_from(timeout.as_millis()).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.socket.as_fd(), interest)];
        match poll(&mut fds, PollTimeout::from(millis)) {
            Ok(0) => return Outcome::TimedOut,
            Ok(_) => {}
            Err(e) => return Outcome::Failed(e.to_string()),
        }
        if let Ok(code) = getsockopt(&self.socket, sockopt::SocketError) {
            if code != 0 {
                return errno_outcome(Errno::from_raw(code));
            }
        }
        if self.udp {
            let mut buf = [0u8; 512];
            if let Err(e) = recv(fd, &mut buf, MsgFlags::MSG_DONTWAIT) {
                return errno_outcome(e);
            }
        }
        Outcome::Answered
    }
}

fn errno_outcome(e: Errno) -> Outcome {
    match e {
        Errno::ECONNREFUSED => Outcome::Refused,
        Errno::ETIMEDOUT => Outcome::TimedOut,
        other => Outcome::Failed(other.desc().to_string()),
    }
}

impl plumb_core::kernel::Probe for Probe {
    fn port(&self) -> u16 {
        self.port
    }

    fn send(&self, to: SocketAddrV4, timeout: Duration) -> Outcome {
        Probe::send(self, to, timeout)
    }
}

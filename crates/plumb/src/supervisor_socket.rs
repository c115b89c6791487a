//! The supervisor's socket: an abstract unix socket named after the stack and its state
//! directory. Binding it makes a supervisor its stack's only one (the kernel lets one socket
//! hold a name, and frees it when its process ends, however it ends), whatever happens to the
//! files in the state directory; `plumb` finds the supervisor through it, by the PID the
//! kernel gives (SO_PEERCRED), and reads what it reports.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{connect, getsockopt, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::time::TimeVal;
use nix::unistd::{geteuid, Pid};
use plumb_core::names::fnv1a;
use serde::{Deserialize, Serialize};

use crate::failure::{Failure, Result};

/// How long plumb waits for a supervisor to accept, or to answer.
const PATIENCE: Duration = Duration::from_secs(1);

/// What a supervisor tells whoever connects to its socket.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The generation of `run.json` it has applied.
    pub generation: u64,
    /// Unix milliseconds of its last successful write of `status.json` (None before the first).
    pub status_written_ms: Option<u64>,
    /// Why its last write of `status.json` failed, if it did: the file then tells an old story.
    pub status_error: Option<String>,
    /// The state directory it works for (so another one can name it).
    #[serde(default)]
    pub state_dir: Option<String>,
}

/// The socket's name, `plumb-supervisor/STACK/HASH`: HASH is of the stack folder's absolute
/// path (symlinks resolved), so two state directories never share a supervisor, and a state
/// directory deleted and made again still leads to the supervisor that runs for it.
pub fn name(stack_dir: &Path) -> String {
    let stack = stack_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let path = resolved(stack_dir);
    format!("plumb-supervisor/{stack}/{:016x}", fnv1a(&[&path.to_string_lossy()]))
}

/// `path` made absolute, with symlinks resolved in the part of it that exists.
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut missing = Vec::new();
    let mut existing = absolute.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return missing.iter().rev().fold(real, |path, part| path.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(part)) => {
                missing.push(part.to_owned());
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// The bound socket of a running supervisor: while it is open, no other supervisor of the
/// stack can start.
pub struct Listener(UnixListener);

impl Listener {
    /// Takes the stack's name; fails if another supervisor holds it.
    pub fn bind(stack_dir: &Path) -> Result<Listener> {
        let name = name(stack_dir);
        let addr = SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|e| Failure::new(format!("supervisor socket @{name}: {e}")))?;
        match UnixListener::bind_addr(&addr) {
            Ok(listener) => {
                listener
                    .set_nonblocking(true)
                    .map_err(|e| Failure::new(format!("supervisor socket @{name}: {e}")))?;
                Ok(Listener(listener))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(match find(stack_dir) {
                Some(pid) => Failure::new(format!(
                    "the stack already has a supervisor (pid {pid}, socket @{name})"
                ))
                .hint("`plumb up` hands it new work; `plumb down` stops it"),
                None => Failure::new(format!(
                    "the supervisor socket @{name} is held by a process of another user"
                ))
                .hint("find it with `ss -xlp | grep plumb-supervisor` and end it"),
            }),
            Err(e) => Err(Failure::new(format!("cannot bind the supervisor socket @{name}: {e}"))),
        }
    }

    /// What to poll for connections.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// Answers every connection waiting with `report`, and closes it.
    pub fn answer(&self, report: &Report) {
        let Ok(bytes) = serde_json::to_vec(report) else {
            return;
        };
        while let Ok((mut stream, _)) = self.0.accept() {
            // Only plumb's own user hears anything: the name is in the host's abstract
            // namespace, where any local user may connect.
            let peer = getsockopt(&stream.as_fd(), sockopt::PeerCredentials);
            if !peer.is_ok_and(|p| p.uid() == geteuid().as_raw()) {
                continue;
            }
            // A few hundred bytes fit any socket buffer; a caller that left does not block us.
            let _ = stream.set_nonblocking(true);
            let _ = stream.write_all(&bytes);
        }
    }
}

/// The stack's supervisor, if one runs: its PID, as the kernel tells it.
pub fn find(stack_dir: &Path) -> Option<Pid> {
    connect_to(stack_dir).map(|(_, pid)| pid)
}

/// The stack's supervisor and what it reports (the default when it does not answer in time).
pub fn report(stack_dir: &Path) -> Option<(Pid, Report)> {
    ask(&name(stack_dir))
}

/// A supervisor of the same stack working for another state directory: its PID and what it
/// reports (its state directory among it). Found by the abstract names bound on this host
/// (/proc/net/unix), which name the stack.
pub fn elsewhere(stack_dir: &Path) -> Option<(Pid, Report)> {
    let own = name(stack_dir);
    let stack = own.rsplit_once('/')?.0;
    let table = std::fs::read_to_string("/proc/net/unix").ok()?;
    table
        .lines()
        .filter_map(|line| line.split_whitespace().nth(7)?.strip_prefix('@'))
        .filter(|n| n.strip_prefix(stack).is_some_and(|rest| rest.starts_with('/')) && *n != own)
        .find_map(ask)
}

/// What the supervisor holding the abstract name `name` reports.
fn ask(name: &str) -> Option<(Pid, Report)> {
    let (mut stream, pid) = connect_named(name)?;
    let _ = stream.set_read_timeout(Some(PATIENCE));
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes);
    Some((pid, serde_json::from_slice(&bytes).unwrap_or_default()))
}

fn connect_to(stack_dir: &Path) -> Option<(UnixStream, Pid)> {
    connect_named(&name(stack_dir))
}

fn connect_named(name: &str) -> Option<(UnixStream, Pid)> {
    let fd = socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_CLOEXEC, None).ok()?;
    // A supervisor that does not accept (stopped, say) must not hang plumb: bound the wait.
    let patience = TimeVal::new(PATIENCE.as_secs() as i64, 0);
    setsockopt(&fd, sockopt::SendTimeout, &patience).ok()?;
    let addr = UnixAddr::new_abstract(name.as_bytes()).ok()?;
    connect(fd.as_raw_fd(), &addr).ok()?;
    let peer = getsockopt(&fd, sockopt::PeerCredentials).ok()?;
    // Anyone may bind an abstract name: only a process of plumb's own user is its supervisor.
    (peer.uid() == geteuid().as_raw()).then(|| (UnixStream::from(fd), Pid::from_raw(peer.pid())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_tells_the_stack_and_differs_by_state_directory() {
        let a = name(Path::new("/var/lib/plumb/stacks/shop"));
        assert!(a.starts_with("plumb-supervisor/shop/"), "{a}");
        assert_ne!(a, name(Path::new("/tmp/other/stacks/shop")));
        let here = std::env::temp_dir().join("plumb-name/stacks/shop");
        assert_eq!(
            name(&here),
            name(&std::env::temp_dir().join("./plumb-name/stacks/shop"))
        );
        // Room to spare in an abstract name (107 bytes), with the longest stack name (12).
        assert!(name(Path::new("/a/stacks/abcdefghijkl")).len() < 60);
    }

    #[test]
    fn one_supervisor_holds_the_name_and_is_found_through_it() {
        let dir = std::env::temp_dir().join(format!("plumb-socket-{}/stacks/s", std::process::id()));
        assert_eq!(find(&dir), None);
        let Ok(listener) = Listener::bind(&dir) else {
            panic!("the first supervisor binds its name")
        };
        let second = Listener::bind(&dir).err().map(|e| e.message).unwrap_or_default();
        assert!(second.contains("already has a supervisor"), "{second}");
        assert_eq!(find(&dir), Some(nix::unistd::getpid()));
        drop(listener);
        assert_eq!(find(&dir), None, "the name goes with its socket");
    }
}

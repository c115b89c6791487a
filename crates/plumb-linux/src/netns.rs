//! Network namespaces, named the way `ip netns` names them: a bind mount of the namespace
//! file onto /run/netns/NAME. Creating one happens on the calling thread (unshare, mount,
//! open what is needed inside, return home), so no process is spawned.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use plumb_core::ops::ETC_NETNS;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::netlink::{Error, Netlink, Result};

pub const RUN_DIR: &str = "/run/netns";
const SELF_NS: &str = "/proc/thread-self/ns/net";

pub fn path(name: &str) -> PathBuf {
    PathBuf::from(RUN_DIR).join(name)
}

/// The network namespace the thread started in; every visit elsewhere returns here.
pub struct Home {
    fd: OwnedFd,
}

impl Home {
    pub fn current() -> Result<Self> {
        let fd = File::open(SELF_NS).map_err(|e| Error::new("open own network namespace", e))?;
        Ok(Home { fd: fd.into() })
    }

    /// Opens a netlink socket inside the namespace `ns` (the socket stays bound to it).
    pub fn netlink_in(&self, ns: BorrowedFd) -> Result<Netlink> {
        let _back = self.visit(ns)?;
        Netlink::open()
    }

    /// Runs `f` with the thread inside `ns`, then returns home.
    pub fn within<T>(&self, ns: BorrowedFd, f: impl FnOnce() -> T) -> Result<T> {
        let _back = self.visit(ns)?;
        Ok(f())
    }

    fn visit(&self, ns: BorrowedFd) -> Result<ReturnHome<'_>> {
        setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| Error::new("enter network namespace", e.into()))?;
        Ok(ReturnHome(self))
    }
}

/// Puts the thread back in its home namespace when dropped, even on an early error return.
struct ReturnHome<'a>(&'a Home);

impl Drop for ReturnHome<'_> {
    fn drop(&mut self) {
        // Failing to return would leave every later request in the wrong namespace: abort.
        if setns(self.0.fd.as_fd(), CloneFlags::CLONE_NEWNET).is_err() {
            eprintln!("plumb: cannot return to the host network namespace");
            std::process::abort();
        }
    }
}

/// Makes /run/netns exist and be a shared mount point, as `ip netns add` does, so the
/// namespaces mounted there are visible to `ip netns` in other mount namespaces too.
pub fn prepare_run_dir() -> Result<()> {
    fs::create_dir_all(RUN_DIR).map_err(|e| Error::new(format!("create {RUN_DIR}"), e))?;
    let shared = || {
        mount(
            None::<&str>,
            RUN_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Err(Errno::EINVAL) => {
            mount(
                Some(RUN_DIR),
                RUN_DIR,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| Error::new(format!("bind-mount {RUN_DIR}"), e.into()))?;
            shared().map_err(|e| Error::new(format!("make {RUN_DIR} shared"), e.into()))
        }
        other => other.map_err(|e| Error::new(format!("make {RUN_DIR} shared"), e.into())),
    }
}

/// A namespace just made: its file descriptor and a netlink socket inside it.
pub struct Created {
    pub fd: OwnedFd,
    pub netlink: Netlink,
}

/// Creates the named namespace `/run/netns/NAME`, opening a netlink socket inside it.
pub fn create(home: &Home, name: &str) -> Result<Created> {
    let what = || format!("create network namespace {name}");
    on_new_name(name, what, |target| {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| Error::new(what(), e.into()))?;
        let _back = ReturnHome(home);
        mount(Some(SELF_NS), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| Error::new(what(), e.into()))?;
        let fd: OwnedFd = File::open(SELF_NS).map_err(|e| Error::new(what(), e))?.into();
        let netlink = Netlink::open()?;
        Ok(Created { fd, netlink })
    })
}

/// Gives the namespace at `path` (another's: a runtime's /run/netns/X or /proc/PID/ns/net)
/// the name `name`, as `ip netns attach` does: a bind mount on /run/netns/NAME. Returns a
/// handle on it and a netlink socket inside.
pub fn attach(home: &Home, name: &str, path: &Path) -> Result<Created> {
    let what = || format!("attach network namespace {} as {name}", path.display());
    let fd: OwnedFd = File::open(path).map_err(|e| Error::new(what(), e))?.into();
    if nix::sys::statfs::fstatfs(&fd).map(|s| s.filesystem_type().0) != Ok(NSFS_MAGIC) {
        return Err(Error::new(
            what(),
            io::Error::new(io::ErrorKind::InvalidInput, "not a network namespace"),
        ));
    }
    on_new_name(name, what, |target| {
        mount(Some(path), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| Error::new(what(), e.into()))?;
        let netlink = home.netlink_in(fd.as_fd())?;
        Ok(Created { fd, netlink })
    })
}

/// Makes the file /run/netns/NAME (failing if it exists), then `bind`s a namespace on it;
/// if that fails, the mount point and the file go again.
fn on_new_name(name: &str, what: impl Fn() -> String, bind: impl FnOnce(&Path) -> Result<Created>) -> Result<Created> {
    let target = path(name);
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&target)
        .map_err(|e| Error::new(what(), e))?;
    let made = bind(&target);
    if made.is_err() {
        let _ = umount2(&target, MntFlags::MNT_DETACH);
        let _ = fs::remove_file(&target);
    }
    made
}

/// The filesystem type of a bound namespace file.
const NSFS_MAGIC: nix::libc::__fsword_t = 0x6e73_6673;

/// Opens the named namespace.
pub fn open(name: &str) -> Result<OwnedFd> {
    File::open(path(name))
        .map(Into::into)
        .map_err(|e| Error::new(format!("open network namespace {name}"), e))
}

/// Removes the name; the kernel destroys the namespace (and its veths) once nothing else
/// holds it. Removing a name that does not exist is not an error.
pub fn delete(name: &str) -> Result<()> {
    let target = path(name);
    match umount2(&target, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(Error::new(format!("unmount network namespace {name}"), e.into())),
    }
    match fs::remove_file(&target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::new(format!("remove {}", target.display()), e)),
    }
}

/// /etc/netns/NAME/resolv.conf: what `ip netns exec NAME` binds over /etc/resolv.conf.
pub fn resolv_conf_path(name: &str) -> PathBuf {
    Path::new(ETC_NETNS).join(name).join("resolv.conf")
}

/// As `ip netns exec NAME` does: a private mount namespace for the caller (single-threaded)
/// with /etc/netns/NAME/resolv.conf bound over /etc/resolv.conf; nothing if it is not there.
pub fn bind_resolv_conf(name: &str) -> Result<()> {
    let source = resolv_conf_path(name);
    if !source.exists() {
        return Ok(());
    }
    let fail = |what: &str, e: Errno| Error::new(format!("{what} for {name}"), e.into());
    unshare(CloneFlags::CLONE_NEWNS).map_err(|e| fail("new mount namespace", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail("private mounts", e))?;
    mount(
        Some(&source),
        "/etc/resolv.conf",
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| fail("bind resolv.conf", e))
}

/// Writes /etc/netns/NAME/resolv.conf (readable by all: services may run as any user).
pub fn write_resolv_conf(name: &str, content: &str) -> Result<()> {
    let path = resolv_conf_path(name);
    let dir = Path::new(ETC_NETNS).join(name);
    fs::create_dir_all(&dir).map_err(|e| Error::new(format!("create {}", dir.display()), e))?;
    fs::write(&path, content).map_err(|e| Error::new(format!("write {}", path.display()), e))?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644))
        .map_err(|e| Error::new(format!("chmod {}", path.display()), e))
}

/// Removes /etc/netns/NAME and what it holds; a folder that is not there is not an error.
pub fn remove_etc(name: &str) -> Result<()> {
    let dir = Path::new(ETC_NETNS).join(name);
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::new(format!("remove {}", dir.display()), e)),
    }
}

/// Names of all namespaces under /run/netns.
pub fn list() -> Result<Vec<String>> {
    match fs::read_dir(RUN_DIR) {
        Ok(entries) => Ok(entries.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::new(format!("list {RUN_DIR}"), e)),
    }
}

/// Moves the calling thread into `ns` for good (for a process about to exec).
pub fn enter(ns: BorrowedFd) -> Result<()> {
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(|e| Error::new("enter network namespace", e.into()))
}

/// The inode that identifies the named namespace (the same for every handle on it).
/// Whether the namespace's file holds a namespace: an `up` interrupted between creating the
/// file and bind-mounting the namespace onto it leaves an empty mount point.
pub fn is_bound(name: &str) -> bool {
    nix::sys::statfs::statfs(&path(name)).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC)
}

pub fn inode(name: &str) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(path(name)).ok().map(|m| m.ino())
}

pub use plumb_core::kernel::Resident;

/// The processes inside each of the network namespaces with these inodes, by inode, from one
/// pass over /proc (a zombie has no namespace left to read: it is not counted).
pub fn residents(inodes: &HashSet<u64>) -> BTreeMap<u64, Vec<Resident>> {
    use std::os::unix::fs::MetadataExt;
    let mut out: BTreeMap<u64, Vec<Resident>> = BTreeMap::new();
    if inodes.is_empty() {
        return out;
    }
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        let Ok(ns) = fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if !inodes.contains(&ns.ino()) {
            continue;
        }
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if let Some(resident) = parse_stat(pid, &stat) {
            out.entry(ns.ino()).or_default().push(resident);
        }
    }
    out
}

/// Parent and session from a /proc/PID/stat line (None for a zombie or an unreadable line).
fn parse_stat(pid: i32, stat: &str) -> Option<Resident> {
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    Some(Resident {
        pid,
        parent: fields.get(1)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
    })
}

/// PIDs of the processes living in any of the namespaces with these inodes (what
/// `ip netns pids` finds).
fn processes_in(inodes: &HashSet<u64>) -> Vec<i32> {
    residents(inodes).into_values().flatten().map(|r| r.pid).collect()
}

/// Ends every process living in the named namespaces (anything inside keeps a namespace and
/// its veths alive): SIGTERM, then SIGKILL for those still there after `grace` (at once
/// when `grace` is zero). By PID, never by name. Returns how many processes it found.
pub fn end_processes<'a>(names: impl IntoIterator<Item = &'a str>, grace: Duration) -> usize {
    let inodes: HashSet<u64> = names.into_iter().filter_map(inode).collect();
    let signal_all = |signal| {
        let pids = processes_in(&inodes);
        for pid in &pids {
            let _ = kill(Pid::from_raw(*pid), signal);
        }
        pids.len()
    };
    let first = if grace.is_zero() {
        Signal::SIGKILL
    } else {
        Signal::SIGTERM
    };
    let found = signal_all(first);
    if found == 0 || grace.is_zero() {
        return found;
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        if processes_in(&inodes).is_empty() {
            return found;
        }
    }
    signal_all(Signal::SIGKILL);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_parent_and_session_whatever_the_command_name() {
        let line = "4242 (sh) x) S 100 4242 4242 0 -1 4194560 0 0";
        assert_eq!(
            parse_stat(4242, line),
            Some(Resident {
                pid: 4242,
                parent: 100,
                session: 4242
            })
        );
        assert_eq!(parse_stat(7, "7 (sleep) Z 1 7 7 0"), None);
        assert_eq!(parse_stat(7, "garbage"), None);
    }

    #[test]
    fn this_process_is_a_resident_of_its_namespace() {
        use std::os::unix::fs::MetadataExt;
        let inode = fs::metadata("/proc/self/ns/net").unwrap().ino();
        let found = residents(&HashSet::from([inode]));
        let me = found[&inode]
            .iter()
            .find(|r| r.pid == std::process::id() as i32)
            .copied();
        assert_eq!(me.map(|r| r.parent), Some(std::os::unix::process::parent_id() as i32));
        assert!(processes_in(&HashSet::from([inode])).contains(&(std::process::id() as i32)));
        assert!(residents(&HashSet::new()).is_empty());
    }
}

//! plumb's state: what the kernel cannot tell us (address leases, the rules last applied, the
//! stack file's path), behind the [`StateStore`] trait (lock, load, save, leases). Its one
//! implementation today is [`StateDir`]: one folder per stack, written atomically, and a lock
//! file so two plumb processes never interleave their changes. The directory is private to its
//! owner (`access`). A cluster store (etcd) comes next.

mod access;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use plumb_core::firewall::{Ruleset, TableId};
use plumb_core::ipam::Leases;
use plumb_core::kernel::Kernel;
use plumb_core::{Desired, Op};
use serde::{Deserialize, Serialize};

use crate::error::{Error as Failure, Result};

pub use access::{create_private_dir, read_error, write_error, HOSTS_DIR, PRIVATE_FILE, SHARED_FILE};

/// Present while IPv4 forwarding is on because plumb turned it on.
const FORWARDING_MARK: &str = "ip_forward-enabled-by-plumb";

#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

/// What plumb remembers of one stack.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StackState {
    pub stack: String,
    /// Absolute path of the stack file last brought up.
    pub file: Option<PathBuf>,
    pub desired: Option<Desired>,
    pub leases: Leases,
    /// The tables as plumb last applied them. Unreadable records (from an older plumb)
    /// count as none: the tables are then compared by shape, or re-applied.
    #[serde(default, deserialize_with = "lenient")]
    pub firewall: Vec<AppliedFirewall>,
    /// Every namespace plumb may have made for the stack (written before making them, so an
    /// interrupted `up` is still known to the next `up` or `down`).
    pub namespaces: BTreeSet<String>,
    /// Every network the stack may have wired, to name its veths on the way out.
    pub networks: BTreeSet<String>,
    /// Set only on a record that [`StateStore::stacks`] could not read: why (its state file is
    /// damaged or unreadable). Such a record holds nothing else.
    #[serde(skip)]
    pub damaged: Option<String>,
}

impl StackState {
    /// The stand-in for a record that cannot be read.
    pub fn damaged(stack: &str, why: String) -> Self {
        StackState {
            stack: stack.to_string(),
            damaged: Some(why),
            ..StackState::default()
        }
    }
}

/// The rules plumb applied, and a fingerprint of the kernel's listing of them, so a table
/// changed by anyone else is noticed and re-asserted. The fingerprint is taken by the first
/// observation after applying (which lists the table anyway), not by a listing right after
/// the transaction: until then the table is recognised by its shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppliedFirewall {
    pub ruleset: Ruleset,
    pub fingerprint: Option<u64>,
}

fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Vec<AppliedFirewall>, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(value).unwrap_or_default())
}

impl StackState {
    /// What plumb applied to `table`, if it has a record.
    pub fn applied(&self, table: &TableId) -> Option<&AppliedFirewall> {
        self.firewall.iter().find(|a| &a.ruleset.table == table)
    }

    /// Records what a plan did to the tables: `changed` holds every table the plan's
    /// transaction touched, with what it left (`None`: removed).
    pub fn record_firewall(&mut self, changed: &[(TableId, Option<AppliedFirewall>)]) {
        for (table, after) in changed {
            self.firewall.retain(|a| &a.ruleset.table != table);
            self.firewall.extend(after.clone());
        }
    }

    /// Records fingerprints observing took of tables it recognised (see [`AppliedFirewall`]).
    pub fn record_fingerprints(&mut self, seen: &[(Ruleset, u64)]) {
        for (ruleset, fingerprint) in seen {
            self.firewall.retain(|a| a.ruleset.table != ruleset.table);
            self.firewall.push(AppliedFirewall {
                ruleset: ruleset.clone(),
                fingerprint: Some(*fingerprint),
            });
        }
    }
}

/// Where plumb keeps what the kernel cannot tell it.
pub trait StateStore {
    type Lock;
    /// Waits for, then takes, the store's exclusive lock.
    fn lock(&self) -> Result<Self::Lock>;
    fn load(&self, stack: &str) -> Result<Option<StackState>>;
    fn save(&self, state: &StackState) -> Result<()>;
    fn remove(&self, stack: &str) -> Result<()>;
    /// Every stack the store knows, by name. A record that cannot be read is there too, with
    /// [`StackState::damaged`] set: one bad record harms only its own stack.
    fn stacks(&self) -> Result<BTreeMap<String, StackState>>;
    /// The stack's address leases (empty for a new stack).
    fn leases(&self, stack: &str) -> Result<Leases> {
        Ok(self.load(stack)?.map(|s| s.leases).unwrap_or_default())
    }
}

/// Holds the state directory's lock until dropped.
pub struct Lock(Flock<File>);

impl Lock {
    /// The lock as a plain descriptor of its open file: closing it does not unlock, so a
    /// child process that inherits a copy (the stack's supervisor, while it starts) holds the
    /// lock until it closes its copy too (flock belongs to the open file, not the process).
    pub fn into_fd(self) -> std::os::fd::OwnedFd {
        use std::os::fd::{AsRawFd, FromRawFd};
        let fd = self.0.as_raw_fd();
        // Not dropped: Flock's drop would unlock (LOCK_UN), for every holder of the file.
        std::mem::forget(self);
        // SAFETY: `fd` is the open file the forgotten Flock owned; nothing else closes it.
        unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
    }
}

impl StateDir {
    pub fn new(root: PathBuf) -> Self {
        StateDir { root }
    }

    /// Creates the state directory private, or checks and tightens the one there is.
    fn ensure(&self) -> Result<()> {
        access::prepare(&self.root).map_err(|e| match e.hint {
            Some(_) => e,
            None => e.hint("pass --state-dir DIR or set PLUMB_STATE_DIR to a writable folder"),
        })
    }

    /// Waits for, then takes, the exclusive lock on the state directory.
    pub fn lock(&self) -> Result<Lock> {
        self.ensure()?;
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(PRIVATE_FILE)
            .open(&path)
            .map_err(|e| write_error(&path, e))?;
        Flock::lock(file, FlockArg::LockExclusive)
            .map(Lock)
            .map_err(|(_, e)| Failure::new(format!("cannot lock {}: {e}", path.display())))
    }

    pub fn stack_dir(&self, stack: &str) -> PathBuf {
        self.root.join("stacks").join(stack)
    }

    fn state_file(&self, stack: &str) -> PathBuf {
        self.stack_dir(stack).join("state.json")
    }

    pub fn load(&self, stack: &str) -> Result<Option<StackState>> {
        let path = self.state_file(stack);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                Failure::new(format!("state file {} is damaged: {e}", path.display()))
                    .hint("remove it; `plumb down STACK` still finds the stack's objects in the kernel")
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(read_error(&path, e)),
        }
    }

    /// Writes the state atomically: a temporary file, fsync, rename.
    pub fn save(&self, state: &StackState) -> Result<()> {
        create_private_dir(&self.stack_dir(&state.stack))?;
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| Failure::new(e.to_string()))?;
        write_atomically(&self.state_file(&state.stack), &bytes)
    }

    pub fn remove(&self, stack: &str) -> Result<()> {
        let dir = self.stack_dir(stack);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(write_error(&dir, e)),
            _ => Ok(()),
        }
    }

    /// Records that plumb turned on IPv4 forwarding (it was off), so the last `down` turns
    /// it off again and the machine is left as plumb found it.
    pub fn note_forwarding_enabled(&self) -> Result<()> {
        self.ensure()?;
        write_atomically(
            &self.root.join(FORWARDING_MARK),
            b"net.ipv4.ip_forward was 0 before plumb\n",
        )
    }

    /// When no stack is left and plumb had turned forwarding on, turns it off again.
    pub fn restore_forwarding_if_last(&self, kernel: &mut dyn Kernel) -> Result<()> {
        let mark = self.root.join(FORWARDING_MARK);
        if mark.exists() && self.stacks()?.is_empty() {
            kernel.apply(&Op::Sysctl {
                key: "net.ipv4.ip_forward".into(),
                value: "0".into(),
            })?;
            fs::remove_file(&mark).map_err(|e| write_error(&mark, e))?;
        }
        Ok(())
    }

    /// Every stack with a state file, by name; one that cannot be read is there as
    /// [`StackState::damaged`]. Fails only when the directory itself cannot be read.
    pub fn stacks(&self) -> Result<BTreeMap<String, StackState>> {
        let mut out = BTreeMap::new();
        let folder = self.root.join("stacks");
        let entries = match fs::read_dir(&folder) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(read_error(&folder, e)),
        };
        for entry in entries.flatten() {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            match self.load(&name) {
                Ok(Some(state)) => {
                    out.insert(name, state);
                }
                Ok(None) => {}
                Err(e) => {
                    let damaged = StackState::damaged(&name, e.message);
                    out.insert(name, damaged);
                }
            }
        }
        Ok(out)
    }
}

impl StateStore for StateDir {
    type Lock = Lock;

    fn lock(&self) -> Result<Lock> {
        StateDir::lock(self)
    }

    fn load(&self, stack: &str) -> Result<Option<StackState>> {
        StateDir::load(self, stack)
    }

    fn save(&self, state: &StackState) -> Result<()> {
        StateDir::save(self, state)
    }

    fn remove(&self, stack: &str) -> Result<()> {
        StateDir::remove(self, stack)
    }

    fn stacks(&self) -> Result<BTreeMap<String, StackState>> {
        StateDir::stacks(self)
    }
}

/// Writes `path` (private to its owner) so that readers see the old content or the new, never
/// half: a temporary file, fsync, rename. A failure names `path` and leaves no temporary file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(PRIVATE_FILE)
            .open(&tmp)?;
        // One left by an older plumb keeps its mode through open: set it.
        file.set_permissions(fs::Permissions::from_mode(PRIVATE_FILE))?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    written.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        write_error(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_damaged_record_is_returned_as_damaged_and_the_others_as_they_are() {
        let root = std::env::temp_dir().join(format!("plumb-stacks-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let dir = StateDir::new(root.clone());
        for stack in ["a", "b"] {
            dir.save(&StackState {
                stack: stack.into(),
                ..StackState::default()
            })
            .unwrap();
        }
        fs::write(dir.stack_dir("b").join("state.json"), "{ broken").unwrap();
        let stacks = dir.stacks().unwrap();
        assert_eq!(stacks["a"].damaged, None);
        let why = stacks["b"].damaged.as_deref().unwrap_or_default();
        assert!(why.contains("stacks/b/state.json is damaged"), "{why}");
        assert!(dir.load("b").is_err(), "its own commands still see the damage");
        fs::remove_dir_all(&root).unwrap();
    }
}

//! plumb's state: what the kernel cannot tell us (address leases, the rules last applied, the
//! spec and stack file a stack came from, its faults and attached containers), behind the
//! object-safe [`StateStore`] trait (lock, load, save, leases, the forwarding mark).
//! [`StateDir`] keeps it in one folder per stack, written atomically, with a lock file so two
//! plumb processes never interleave their changes; the directory is private to its owner
//! (`access`). The binary's `cluster::records::EtcdRecords` keeps the same records in etcd.

mod access;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use plumb_core::firewall::{Ruleset, TableId};
use plumb_core::ipam::Leases;
use plumb_core::Desired;
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
    /// The nftables generation at which the kernel held exactly the tables recorded in
    /// `firewall` (every transaction moves it on): while it is still the kernel's, observing
    /// need not list the tables (a listing grows with their elements).
    #[serde(default)]
    pub nft_generation: Option<u32>,
    /// Every namespace plumb may have made for the stack (written before making them, so an
    /// interrupted `up` is still known to the next `up` or `down`).
    pub namespaces: BTreeSet<String>,
    /// Every network the stack may have wired, to name its veths on the way out.
    pub networks: BTreeSet<String>,
    /// Faults made by `plumb chaos` and experiments, active until cleared or expired: part
    /// of what the stack should be, so an `up` that rebuilds a container re-makes its
    /// redirects.
    #[serde(default)]
    pub faults: plumb_core::chaos::Faults,
    /// Containers made by others and attached to the stack's networks (CNI ADD).
    #[serde(default)]
    pub attached: Vec<plumb_core::desired::Attachment>,
    /// The stack file (its text) and host assignment last brought up: what an attach or a
    /// detach plans from, without the file.
    #[serde(default)]
    pub spec: Option<RecordedSpec>,
    /// Set only on a record that [`StateStore::stacks`] could not read: why (its state file is
    /// damaged or unreadable). Such a record holds nothing else.
    #[serde(skip)]
    pub damaged: Option<String>,
}

/// The spec a stack was last brought up from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedSpec {
    /// Its name in messages (the stack file's path).
    pub file: String,
    pub text: String,
    /// The folder its relative paths start from.
    pub base: PathBuf,
    /// On a cluster host: this host's part.
    pub assignment: Option<plumb_core::cluster::HostAssignment>,
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

    /// Records the generation at which the tables are as recorded: the one observing verified
    /// (`observed`) if the plan committed nothing, else the one after the plan's transactions
    /// if they were the only ones since (else none: the next observation lists the tables).
    pub fn record_generation(&mut self, observed: Option<u32>, outcome: &crate::execute::Outcome) {
        self.nft_generation = match (observed, outcome.nft_commits, outcome.nft_generation) {
            _ if !outcome.ok() => None,
            (seen, 0, _) => seen,
            (Some(seen), commits, Some(after)) if seen.wrapping_add(commits) == after => Some(after),
            _ => None,
        };
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

/// Holds a store's exclusive lock until dropped.
pub type StoreLock = Box<dyn std::any::Any + Send>;

/// Where plumb keeps what the kernel cannot tell it: one record per stack (its desired
/// state, address leases, the rules last applied, its faults), a lock, and the mark that
/// plumb turned IPv4 forwarding on. [`StateDir`] keeps them in a private directory; the
/// engine reaches them only through this trait.
pub trait StateStore: Send + Sync {
    /// Waits for, then takes, the store's exclusive lock.
    fn lock(&self) -> Result<StoreLock>;
    /// The lock if it is free now, `None` if someone holds it.
    fn try_lock(&self) -> Result<Option<StoreLock>>;
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
    /// Records that plumb turned on IPv4 forwarding (it was off), so the last `down` turns
    /// it off again and the machine is left as plumb found it.
    fn note_forwarding_enabled(&self) -> Result<()>;
    /// Whether plumb turned IPv4 forwarding on.
    fn forwarding_enabled_by_plumb(&self) -> Result<bool>;
    /// Forgets that plumb turned forwarding on (it was turned off again).
    fn forget_forwarding(&self) -> Result<()>;
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
        self.flock(FlockArg::LockExclusive)?
            .ok_or_else(|| Failure::new("the state directory's lock was refused"))
    }

    /// The lock if it is free now, `None` if someone holds it (for work in the background
    /// that can wait for its next round).
    pub fn try_lock(&self) -> Result<Option<Lock>> {
        self.flock(FlockArg::LockExclusiveNonblock)
    }

    /// The lock file, locked as `how` says; `None` when a non-blocking attempt finds it held.
    fn flock(&self, how: FlockArg) -> Result<Option<Lock>> {
        self.ensure()?;
        let path = self.root.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(PRIVATE_FILE)
            .open(&path)
            .map_err(|e| write_error(&path, e))?;
        match Flock::lock(file, how) {
            Ok(lock) => Ok(Some(Lock(lock))),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(Failure::new(format!("cannot lock {}: {e}", path.display()))),
        }
    }

    pub fn stack_dir(&self, stack: &str) -> PathBuf {
        self.root.join("stacks").join(stack)
    }

    /// The folder itself (what `plumb cni conflist` writes into a configuration).
    pub fn root(&self) -> &Path {
        &self.root
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
    fn lock(&self) -> Result<StoreLock> {
        Ok(Box::new(StateDir::lock(self)?))
    }

    fn try_lock(&self) -> Result<Option<StoreLock>> {
        Ok(StateDir::try_lock(self)?.map(|l| Box::new(l) as StoreLock))
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

    fn note_forwarding_enabled(&self) -> Result<()> {
        StateDir::note_forwarding_enabled(self)
    }

    fn forwarding_enabled_by_plumb(&self) -> Result<bool> {
        Ok(self.root.join(FORWARDING_MARK).exists())
    }

    fn forget_forwarding(&self) -> Result<()> {
        let mark = self.root.join(FORWARDING_MARK);
        match fs::remove_file(&mark) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(write_error(&mark, e)),
            _ => Ok(()),
        }
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

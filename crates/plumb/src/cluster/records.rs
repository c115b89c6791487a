//! The engine's state store kept in etcd instead of a directory: one key per stack record
//! under a prefix (a host's, `/plumb/records/HOST/`), the lock as a key held with a lease
//! (kept alive while held, gone with its holder if the holder dies), the forwarding mark as
//! a key. Any caller of the engine can run on it (`Engine::open(kernel, &records)`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plumb_engine::state::{StackState, StateStore, StoreLock};
use plumb_engine::{Error, Result};

use super::store::{Expect, Store};

/// How long a lock outlives a holder that stopped keeping it alive (died).
const LOCK_TTL_S: i64 = 10;

pub struct EtcdRecords {
    store: Arc<Store>,
    prefix: String,
}

impl EtcdRecords {
    /// The records under `prefix` (ending in `/`).
    pub fn new(store: Arc<Store>, prefix: &str) -> Self {
        EtcdRecords {
            store,
            prefix: prefix.to_string(),
        }
    }

    fn stack_key(&self, stack: &str) -> String {
        format!("{}stacks/{stack}", self.prefix)
    }

    fn lock_key(&self) -> String {
        format!("{}lock", self.prefix)
    }

    fn forwarding_key(&self) -> String {
        format!("{}ip_forward-enabled-by-plumb", self.prefix)
    }

    /// One attempt at the lock: the key created with a fresh lease, or `None` if held.
    fn attempt(&self) -> Result<Option<StoreLock>> {
        let lease = self.store.grant(LOCK_TTL_S).map_err(failure)?;
        let key = self.lock_key();
        let won = self
            .store
            .put_if(&[(&key, Expect::Absent)], &[(&key, "locked")], Some(lease))
            .map_err(failure)?;
        if !won {
            let _ = self.store.revoke(lease);
            return Ok(None);
        }
        let held = Arc::new(AtomicBool::new(true));
        let alive = held.clone();
        self.store
            .keep_alive(lease, Duration::from_secs(2), move |_| alive.load(Ordering::Relaxed));
        Ok(Some(Box::new(EtcdLock {
            store: self.store.clone(),
            lease,
            held,
        })))
    }
}

/// The lock, given back (its lease revoked, so the key goes) when dropped.
struct EtcdLock {
    store: Arc<Store>,
    lease: i64,
    held: Arc<AtomicBool>,
}

impl Drop for EtcdLock {
    fn drop(&mut self) {
        self.held.store(false, Ordering::Relaxed);
        let _ = self.store.revoke(self.lease);
    }
}

fn failure(f: crate::failure::Failure) -> Error {
    f.into_engine()
}

impl StateStore for EtcdRecords {
    fn lock(&self) -> Result<StoreLock> {
        loop {
            if let Some(lock) = self.attempt()? {
                return Ok(lock);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn try_lock(&self) -> Result<Option<StoreLock>> {
        self.attempt()
    }

    fn load(&self, stack: &str) -> Result<Option<StackState>> {
        let key = self.stack_key(stack);
        let snapshot = self.store.get_prefix(&key).map_err(failure)?;
        let Some(entry) = snapshot.entries.get(&key) else {
            return Ok(None);
        };
        serde_json::from_str(&entry.value)
            .map(Some)
            .map_err(|e| Error::new(format!("the record {key} in the store is damaged: {e}")))
    }

    fn save(&self, state: &StackState) -> Result<()> {
        let key = self.stack_key(&state.stack);
        let value = serde_json::to_string(state).map_err(|e| Error::new(e.to_string()))?;
        self.store.put_if(&[], &[(&key, &value)], None).map_err(failure)?;
        Ok(())
    }

    fn remove(&self, stack: &str) -> Result<()> {
        self.store.delete(&self.stack_key(stack)).map_err(failure)
    }

    fn stacks(&self) -> Result<BTreeMap<String, StackState>> {
        let prefix = self.stack_key("");
        let snapshot = self.store.get_prefix(&prefix).map_err(failure)?;
        Ok(snapshot
            .entries
            .iter()
            .filter_map(|(key, entry)| {
                let stack = key.strip_prefix(&prefix)?;
                let record = serde_json::from_str(&entry.value).unwrap_or_else(|e| {
                    StackState::damaged(stack, format!("the record {key} in the store is damaged: {e}"))
                });
                Some((stack.to_string(), record))
            })
            .collect())
    }

    fn note_forwarding_enabled(&self) -> Result<()> {
        let key = self.forwarding_key();
        self.store
            .put_if(&[], &[(&key, "net.ipv4.ip_forward was 0 before plumb")], None)
            .map_err(failure)
            .map(drop)
    }

    fn forwarding_enabled_by_plumb(&self) -> Result<bool> {
        let key = self.forwarding_key();
        Ok(self.store.get_prefix(&key).map_err(failure)?.entries.contains_key(&key))
    }

    fn forget_forwarding(&self) -> Result<()> {
        self.store.delete(&self.forwarding_key()).map_err(failure)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cluster::store::Access;
    use plumb_core::desired::Desired;
    use plumb_engine::fake::FakeKernel;
    use plumb_engine::{Engine, Up};
    use std::collections::BTreeSet;
    use std::process::{Child, Command, Stdio};

    /// An etcd of its own on loopback (Debian's etcd-server), removed when dropped.
    pub(crate) struct Etcd {
        child: Child,
        dir: std::path::PathBuf,
        url: String,
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    impl Etcd {
        pub(crate) fn start() -> Etcd {
            let (client, peer) = (free_port(), free_port());
            // One per test: tests of one process run side by side.
            let dir = std::env::temp_dir().join(format!("plumb-records-etcd-{}-{client}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            let url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = Command::new("etcd")
                .args(["--name", "m", "--data-dir"])
                .arg(&dir)
                .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
                .args([
                    "--listen-peer-urls",
                    &peer_url,
                    "--initial-advertise-peer-urls",
                    &peer_url,
                ])
                .args(["--initial-cluster", &format!("m={peer_url}")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("etcd is not installed: apt-get install etcd-server (scripts/test does)");
            Etcd { child, dir, url }
        }

        pub(crate) fn store(&self) -> Arc<Store> {
            let access = Access {
                urls: self.url.clone(),
                tls: std::path::PathBuf::new(),
                insecure: true,
            };
            for _ in 0..100 {
                if let Ok((store, _)) = Store::connect(&access) {
                    return Arc::new(store);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            panic!("etcd at {} did not answer within 10 s", self.url);
        }
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    const STACK: &str =
        "name = \"s\"\n[networks.n]\nsubnet = \"10.1.0.0/24\"\n[services.web]\nnetworks = [\"n\"]\nreplicas = 2\n";

    /// The engine runs on the etcd store as on the directory: `up` records the stack in etcd,
    /// the lock is one key (held while an engine lives, free after), `down` removes the record.
    #[test]
    fn the_engine_runs_on_records_kept_in_etcd() {
        let etcd = Etcd::start();
        let store = etcd.store();
        let records = EtcdRecords::new(store.clone(), "/plumb/records/h1/");
        let parsed = plumb_core::spec::parse("s.toml", STACK).unwrap();
        let mut kernel = FakeKernel::default();
        let unready = |_: &Desired| BTreeSet::new();
        let up = Up {
            parsed: &parsed,
            base: std::env::temp_dir(),
            file: None,
            assignment: None,
            unready: &unready,
        };
        {
            let mut engine = Engine::open(&mut kernel, &records).unwrap();
            assert!(
                records.try_lock().unwrap().is_none(),
                "the lock is held while the engine lives"
            );
            let change = engine.plan_up(&up).unwrap();
            engine.apply(change, &mut |_, _| Ok(()), &|_, _, _| {}).unwrap();
        }
        let record = records.load("s").unwrap().expect("the record is in etcd");
        assert_eq!(record.namespaces.len(), 2);
        assert_eq!(record.leases, records.leases("s").unwrap());
        assert!(store.get_prefix("/plumb/records/h1/stacks/s").unwrap().entries.len() == 1);
        assert!(records.try_lock().unwrap().is_some(), "free once the engine is gone");
        {
            let mut engine = Engine::open(&mut kernel, &records).unwrap();
            let change = engine.plan_up(&up).unwrap();
            assert!(
                change.plan.is_empty(),
                "the second up reads the record back: {:?}",
                change.plan
            );
            let teardown = engine.plan_down("s").unwrap();
            let removed = engine.down(teardown, &|_, _, _| {}).unwrap();
            assert_eq!(removed.containers, 2);
        }
        assert!(records.load("s").unwrap().is_none());
        assert!(records.stacks().unwrap().is_empty());
        // A damaged record harms only its own stack.
        store
            .put_if(&[], &[("/plumb/records/h1/stacks/bad", "{ broken")], None)
            .unwrap();
        assert!(records.stacks().unwrap()["bad"].damaged.is_some());
        assert!(records.load("bad").is_err());
    }
}

//! The cluster store: etcd, through etcd-client, behind a small blocking API (plumb's engine
//! is synchronous; the client's gRPC channel runs on a one-thread tokio runtime owned here).
//! Every key lives under [`super::keys::ROOT`].

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use tokio::runtime::Runtime;

use crate::failure::{Failure, Result};

/// One key as read: its value and the revisions transactions compare against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: String,
    pub mod_revision: i64,
    /// The lease the key dies with (0: none).
    pub lease: i64,
}

/// Every key under a prefix, at one revision of the store.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub revision: i64,
    pub entries: BTreeMap<String, Entry>,
}

/// What a conditional write expects of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The key does not exist.
    Absent,
    /// The key was last changed at this revision (0: absent).
    ModRevision(i64),
}

pub struct Store {
    runtime: Runtime,
    client: Client,
    pub endpoints: Vec<String>,
}

/// How long one request may take before it fails (a partitioned host must notice).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

impl Store {
    /// Connects to the store at `urls` (`http://10.0.0.1:2379`, comma-separated for several
    /// members).
    pub fn connect(urls: &str) -> Result<Store> {
        let endpoints: Vec<String> = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(Failure::new("no store given").hint("pass --store http://ETCD:2379 (or set PLUMB_STORE)"));
        }
        for e in &endpoints {
            if !e.starts_with("http://") {
                return Err(Failure::new(format!("store address {e:?} is not an http:// URL"))
                    .hint("write --store http://ADDRESS:2379 (TLS is not supported yet)"));
            }
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("plumb-store")
            .build()
            .map_err(|e| Failure::new(format!("cannot start the store client: {e}")))?;
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let client = runtime
            .block_on(Client::connect(&endpoints, Some(options)))
            .map_err(|e| unreachable_store(&endpoints, e))?;
        let store = Store {
            runtime,
            client,
            endpoints,
        };
        // Connecting is lazy: ask once, so a wrong address fails here and says so.
        match store.get_prefix(super::keys::ROOT) {
            Ok(_) => Ok(store),
            Err(e) => Err(Failure::new(format!(
                "cannot reach the store at {}: {}",
                store.endpoints.join(","),
                e.message.rsplit(": ").next().unwrap_or_default()
            ))
            .hint("start etcd (Debian's etcd-server) and pass its client URL, e.g. --store http://10.0.0.1:2379")),
        }
    }

    fn run<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    ) -> Result<T> {
        self.runtime.block_on(async {
            match tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(1), f).await {
                Ok(r) => r.map_err(|e| store_error(what, &self.endpoints, e)),
                Err(_) => Err(Failure::new(format!(
                    "{what}: the store did not answer in time ({})",
                    self.endpoints.join(",")
                ))
                .hint("check that etcd runs and this host reaches it")),
            }
        })
    }

    pub fn get_prefix(&self, prefix: &str) -> Result<Snapshot> {
        let mut c = self.client.clone();
        let resp = self.run("read the store", c.get(prefix, Some(GetOptions::new().with_prefix())))?;
        let entries = resp
            .kvs()
            .iter()
            .filter_map(|kv| {
                Some((
                    kv.key_str().ok()?.to_string(),
                    Entry {
                        value: kv.value_str().ok()?.to_string(),
                        mod_revision: kv.mod_revision(),
                        lease: kv.lease(),
                    },
                ))
            })
            .collect();
        Ok(Snapshot {
            revision: resp.header().map_or(0, |h| h.revision()),
            entries,
        })
    }

    /// Writes every `(key, value)` only if each `expect` holds, in one transaction; false if
    /// one did not (someone else wrote first).
    pub fn put_if(&self, expect: &[(&str, Expect)], writes: &[(&str, &str)], lease: Option<i64>) -> Result<bool> {
        let compares: Vec<Compare> = expect
            .iter()
            .map(|(k, e)| match e {
                Expect::Absent => Compare::create_revision(*k, CompareOp::Equal, 0),
                Expect::ModRevision(r) => Compare::mod_revision(*k, CompareOp::Equal, *r),
            })
            .collect();
        let ops: Vec<TxnOp> = writes
            .iter()
            .map(|(k, v)| TxnOp::put(*k, *v, lease.map(|l| PutOptions::new().with_lease(l))))
            .collect();
        let mut c = self.client.clone();
        let resp = self.run("write to the store", c.txn(Txn::new().when(compares).and_then(ops)))?;
        Ok(resp.succeeded())
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        let mut c = self.client.clone();
        self.run("delete from the store", c.delete(key, None)).map(drop)
    }

    pub fn delete_prefix(&self, prefix: &str) -> Result<()> {
        let mut c = self.client.clone();
        self.run(
            "delete from the store",
            c.delete(prefix, Some(DeleteOptions::new().with_prefix())),
        )
        .map(drop)
    }

    /// A lease of `ttl` seconds; keys written with it vanish when it is not kept alive.
    pub fn grant(&self, ttl: i64) -> Result<i64> {
        let mut c = self.client.clone();
        Ok(self.run("take a lease", c.lease_grant(ttl, None))?.id())
    }

    pub fn revoke(&self, lease: i64) -> Result<()> {
        let mut c = self.client.clone();
        self.run("give the lease back", c.lease_revoke(lease)).map(drop)
    }

    /// Keeps `lease` alive every `every` in the background; `on_reply(ttl)` gets the TTL the
    /// store granted (0: the lease is gone). Ends when `on_reply` returns false.
    pub fn keep_alive(&self, lease: i64, every: Duration, on_reply: impl Fn(Option<i64>) -> bool + Send + 'static) {
        let client = self.client.clone();
        self.runtime.spawn(async move {
            let mut client = client;
            let mut stream = None;
            loop {
                if stream.is_none() {
                    stream = tokio::time::timeout(REQUEST_TIMEOUT, client.lease_keep_alive(lease))
                        .await
                        .ok()
                        .and_then(std::result::Result::ok);
                }
                let ttl = match stream.as_mut() {
                    Some((keeper, replies)) => {
                        let ask = async {
                            keeper.keep_alive().await?;
                            replies.message().await
                        };
                        match tokio::time::timeout(REQUEST_TIMEOUT, ask).await {
                            Ok(Ok(Some(reply))) => Some(reply.ttl()),
                            _ => None,
                        }
                    }
                    None => None,
                };
                if ttl.is_none() {
                    // A broken stream is opened again on the next round.
                    stream = None;
                }
                if !on_reply(ttl) {
                    return;
                }
                tokio::time::sleep(every).await;
            }
        });
    }

    /// Calls `on_change()` (from the store's thread) whenever a key under `prefix` changes
    /// after `revision`; watches again from where it was after an error.
    pub fn watch(&self, prefix: &str, revision: i64, on_change: impl Fn() + Send + 'static) {
        let client = self.client.clone();
        let prefix = prefix.to_string();
        self.runtime.spawn(async move {
            let mut client = client;
            let mut next = revision + 1;
            loop {
                let options = WatchOptions::new().with_prefix().with_start_revision(next);
                if let Ok(mut stream) = client.watch(prefix.as_str(), Some(options)).await {
                    while let Ok(Some(resp)) = stream.message().await {
                        if resp.compact_revision() > 0 {
                            // History is gone: everything may have changed.
                            next = resp.compact_revision();
                            on_change();
                            break;
                        }
                        if let Some(h) = resp.header() {
                            next = h.revision() + 1;
                        }
                        if !resp.events().is_empty() {
                            on_change();
                        }
                    }
                }
                // Lost: whatever happened meanwhile is read again by the caller's resync.
                on_change();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
}

fn unreachable_store(endpoints: &[String], e: etcd_client::Error) -> Failure {
    Failure::new(format!(
        "cannot reach the store at {}: {}",
        endpoints.join(","),
        reason(&e)
    ))
    .hint("start etcd (Debian's etcd-server) and pass its client URL, e.g. --store http://10.0.0.1:2379")
}

fn store_error(what: &str, endpoints: &[String], e: etcd_client::Error) -> Failure {
    Failure::new(format!("{what} at {}: {}", endpoints.join(","), reason(&e)))
        .hint("check that etcd runs and this host reaches it")
}

/// The part of a gRPC error a person can act on.
fn reason(e: &etcd_client::Error) -> String {
    let text = e.to_string();
    for (needle, short) in [
        ("Connection refused", "connection refused"),
        ("No route to host", "no route to host"),
        ("timed out", "timed out"),
        ("deadline", "timed out"),
    ] {
        if text.contains(needle) {
            return short.to_string();
        }
    }
    text
}

//! The cluster store: etcd, through etcd-client, behind a small blocking API (plumb's engine
//! is synchronous; the client's gRPC channel runs on a one-thread tokio runtime owned here).
//! Every key lives under [`super::keys::ROOT`].

use std::collections::BTreeMap;
use std::time::Duration;

use std::path::PathBuf;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, WatchOptions,
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
    /// One client per member: a request that finds its member dead goes to the next one (the
    /// client's own balancing fails a request on a refused connection instead).
    clients: Members,
    pub endpoints: Vec<String>,
}

/// The members' clients and the one that answered last.
#[derive(Clone)]
struct Members {
    clients: std::sync::Arc<Vec<Client>>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Members {
    /// Asks each member in turn, from the one that answered last, until one answers or the
    /// error is not one to ask the next member after ([`after_failure`]).
    async fn ask<T, F, Fut>(&self, repeat: Repeat, f: F) -> std::result::Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len();
        let start = self.current.load(std::sync::atomic::Ordering::Relaxed);
        let mut last = None;
        for k in 0..n {
            let i = (start + k) % n;
            let e = match tokio::time::timeout(REQUEST_TIMEOUT, f(self.clients[i].clone())).await {
                Ok(Ok(v)) => {
                    self.current.store(i, std::sync::atomic::Ordering::Relaxed);
                    return Ok(v);
                }
                Ok(Err(e)) => e,
                Err(_) => etcd_client::Error::InvalidArgs("timed out".into()),
            };
            match after_failure(repeat, &e) {
                Next::Member => last = Some(e),
                Next::Stop => {
                    if unreachable(&e) {
                        // The next request (a read-back, a retry) starts at the next member.
                        self.current.store((i + 1) % n, std::sync::atomic::Ordering::Relaxed);
                    }
                    return Err(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| etcd_client::Error::InvalidArgs("no member".into())))
    }
}

/// What running a request twice does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// The same as running it once: reads, deletes, revokes, keep-alives, watches (and
    /// grants: a second lease nobody keeps alive expires by itself).
    Harmless,
    /// Not the same: a conditional transaction, whose second run sees the first one's write.
    Harmful,
}

/// What to do after a member failed a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Ask the next member.
    Member,
    /// Give the error to the caller.
    Stop,
}

/// Any request goes to the next member when this one could not be reached, except a
/// harmful one that may have been received: after a timeout or a connection lost mid-request
/// the member may have committed it and only the reply was lost, so sending it again could
/// see its own write and fail ([`settle`] finds out instead).
fn after_failure(repeat: Repeat, e: &etcd_client::Error) -> Next {
    match (repeat, unreachable(e)) {
        (_, false) => Next::Stop,
        (Repeat::Harmless, true) => Next::Member,
        (Repeat::Harmful, true) if never_sent(e) => Next::Member,
        (Repeat::Harmful, true) => Next::Stop,
    }
}

/// An error of connecting: the request never left this host.
fn never_sent(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    ["trying to connect", "connect error", "Connection refused"]
        .iter()
        .any(|n| text.contains(n))
}

/// Whether a conditional transaction wrote, when a try may fail without saying whether it
/// committed: `txn()` tries it (true: its conditions held and it wrote), `landed()` reads
/// back whether the keys hold what it writes. After an unsure failure, the keys are read
/// back; only if they do not hold the writes is it tried again (on the next member), and if
/// that try finds its conditions false, the first may have committed meanwhile: the keys
/// decide again.
fn settle(
    tries: usize,
    mut txn: impl FnMut() -> std::result::Result<bool, etcd_client::Error>,
    mut landed: impl FnMut() -> std::result::Result<bool, etcd_client::Error>,
) -> std::result::Result<bool, etcd_client::Error> {
    let mut unsure = None;
    for _ in 0..tries.max(1) {
        match txn() {
            Ok(true) => return Ok(true),
            Ok(false) if unsure.is_some() => return landed(),
            Ok(false) => return Ok(false),
            Err(e) if unreachable(&e) => {
                if landed()? {
                    return Ok(true);
                }
                unsure = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(unsure.unwrap_or_else(|| etcd_client::Error::InvalidArgs("no member".into())))
}

/// An error that says the member could not be reached (another member may answer).
fn unreachable(e: &etcd_client::Error) -> bool {
    let text = e.to_string();
    [
        "unavailable",
        "Unavailable",
        "connect",
        "refused",
        "timed out",
        "deadline",
        "transport",
        "broken pipe",
    ]
    .iter()
    .any(|n| text.contains(n))
}

/// How long one request may take before it fails (a partitioned host must notice).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// How to reach the store: its client URLs, the directory of the client's certificate
/// (`ca.crt`, `client.crt`, `client.key`), and whether plain `http://` is accepted.
#[derive(Debug, Clone)]
pub struct Access {
    pub urls: String,
    pub tls: PathBuf,
    pub insecure: bool,
}

/// What connecting decided: TLS with a client certificate, or (asked for) none at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tls,
    Plain,
}

/// The warning a store without TLS deserves, wherever it is used.
pub const PLAIN_WARNING: &str = "the store is reached over plain http:// without TLS or client certificates: \
     anyone who reaches its port reads and writes the cluster, and what they deploy runs as root on every host";

impl Access {
    /// The URLs, checked: all https:// (TLS, client certificate required), or all http:// with
    /// `--insecure`.
    fn endpoints(&self) -> Result<(Vec<String>, Transport)> {
        let endpoints: Vec<String> = self
            .urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(Failure::new("no store given")
                .hint("pass --store https://ETCD:2379 (or set PLUMB_STORE)")
                .code(2));
        }
        let tls = endpoints.iter().all(|e| e.starts_with("https://"));
        let plain = endpoints.iter().all(|e| e.starts_with("http://"));
        match (tls, plain) {
            (true, _) => Ok((endpoints, Transport::Tls)),
            (_, true) if self.insecure => Ok((endpoints, Transport::Plain)),
            (_, true) => Err(Failure::new(format!(
                "the store {} is plain http://: no TLS, no client certificates",
                endpoints.join(",")
            ))
            .hint(
                "run etcd with TLS and client certificates (`plumb cluster init` makes them; see docs/cluster.md) and \
                 pass --store https://...; or pass --insecure to accept a store anyone who reaches it controls",
            )
            .code(2)),
            _ => Err(Failure::new(format!(
                "store addresses {} are not all https:// URLs",
                endpoints.join(",")
            ))
            .hint("write --store https://ADDRESS:2379[,https://...]")
            .code(2)),
        }
    }
}

impl Store {
    /// Connects to the store (`https://10.0.0.1:2379`, comma-separated for several members),
    /// and says how (so a caller can warn about a store without TLS).
    pub fn connect(access: &Access) -> Result<(Store, Transport)> {
        let (endpoints, transport) = access.endpoints()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .thread_name("plumb-store")
            .build()
            .map_err(|e| Failure::new(format!("cannot start the store client: {e}")))?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        if transport == Transport::Tls {
            let (ca, cert, key) = super::pki::ClientFiles::in_dir(&access.tls).read()?;
            options = options.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .identity(Identity::from_pem(cert, key)),
            );
        }
        let mut clients = Vec::new();
        for e in &endpoints {
            let client = runtime
                .block_on(Client::connect([e], Some(options.clone())))
                .map_err(|err| unreachable_store(&endpoints, err))?;
            clients.push(client);
        }
        let store = Store {
            runtime,
            clients: Members {
                clients: std::sync::Arc::new(clients),
                current: Default::default(),
            },
            endpoints,
        };
        // Connecting is lazy: ask once, so a wrong address fails here and says so.
        match store.get_prefix(super::keys::ROOT) {
            Ok(_) => Ok((store, transport)),
            Err(e) => Err(Failure::new(format!(
                "cannot reach the store at {}: {}",
                store.endpoints.join(","),
                e.message.rsplit(": ").next().unwrap_or_default()
            ))
            .hint(
                "start etcd (Debian's etcd-server) and pass its client URL, e.g. --store https://10.0.0.1:2379, \
                 with a client certificate its CA signed (--tls DIR)",
            )),
        }
    }

    fn run<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        self.runtime
            .block_on(self.clients.ask(Repeat::Harmless, f))
            .map_err(|e| store_error(what, &self.endpoints, e))
    }

    pub fn get_prefix(&self, prefix: &str) -> Result<Snapshot> {
        let resp = self.run("read the store", |mut c: Client| async move {
            c.get(prefix, Some(GetOptions::new().with_prefix())).await
        })?;
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
    /// one did not (someone else wrote first). A try that times out is not simply sent again
    /// (it may have committed, and would then fail its own conditions): see [`settle`].
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
        let txn = Txn::new().when(compares).and_then(ops);
        settle(
            self.clients.clients.len(),
            || self.txn_once(&txn),
            || self.holds(writes, lease.unwrap_or(0)),
        )
        .map_err(|e| store_error("write to the store", &self.endpoints, e))
    }

    /// One try of a transaction (true: its conditions held and it wrote).
    fn txn_once(&self, txn: &Txn) -> std::result::Result<bool, etcd_client::Error> {
        self.runtime
            .block_on(self.clients.ask(Repeat::Harmful, |mut c: Client| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            }))
            .map(|resp| resp.succeeded())
    }

    /// Whether every key holds its value, written with `lease`.
    fn holds(&self, writes: &[(&str, &str)], lease: i64) -> std::result::Result<bool, etcd_client::Error> {
        for (key, value) in writes {
            let resp = self.runtime.block_on(
                self.clients
                    .ask(Repeat::Harmless, |mut c: Client| async move { c.get(*key, None).await }),
            )?;
            let held = resp
                .kvs()
                .first()
                .is_some_and(|kv| kv.value() == value.as_bytes() && kv.lease() == lease);
            if !held {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub fn delete(&self, key: &str) -> Result<()> {
        self.run("delete from the store", |mut c: Client| async move {
            c.delete(key, None).await
        })
        .map(drop)
    }

    pub fn delete_prefix(&self, prefix: &str) -> Result<()> {
        self.run("delete from the store", |mut c: Client| async move {
            c.delete(prefix, Some(DeleteOptions::new().with_prefix())).await
        })
        .map(drop)
    }

    /// A lease of `ttl` seconds; keys written with it vanish when it is not kept alive.
    pub fn grant(&self, ttl: i64) -> Result<i64> {
        Ok(self
            .run(
                "take a lease",
                |mut c: Client| async move { c.lease_grant(ttl, None).await },
            )?
            .id())
    }

    pub fn revoke(&self, lease: i64) -> Result<()> {
        self.run("give the lease back", |mut c: Client| async move {
            c.lease_revoke(lease).await
        })
        .map(drop)
    }

    /// Keeps `lease` alive every `every` in the background; `on_reply(ttl)` gets the TTL the
    /// store granted (0: the lease is gone). Ends when `on_reply` returns false.
    pub fn keep_alive(&self, lease: i64, every: Duration, on_reply: impl Fn(Option<i64>) -> bool + Send + 'static) {
        let members = self.clients.clone();
        self.runtime.spawn(async move {
            let mut stream = None;
            loop {
                if stream.is_none() {
                    stream = members
                        .ask(Repeat::Harmless, |mut c: Client| async move {
                            c.lease_keep_alive(lease).await
                        })
                        .await
                        .ok();
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
        let members = self.clients.clone();
        let prefix = prefix.to_string();
        self.runtime.spawn(async move {
            let mut next = revision + 1;
            loop {
                let options = WatchOptions::new().with_prefix().with_start_revision(next);
                let watch = members.ask(Repeat::Harmless, |mut c: Client| {
                    let (prefix, options) = (prefix.clone(), options.clone());
                    async move { c.watch(prefix, Some(options)).await }
                });
                if let Ok(mut stream) = watch.await {
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
        ("Elapsed", "timed out"),
        (
            "certificate",
            "TLS: the store or this client's certificate was not accepted",
        ),
        (
            "handshake",
            "TLS handshake failed (a client certificate of the store's CA is needed)",
        ),
    ] {
        if text.contains(needle) {
            return short.to_string();
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> etcd_client::Error {
        etcd_client::Error::InvalidArgs(text.to_string())
    }

    const TIMEOUTS: [&str; 4] = [
        "timed out",
        "status: DeadlineExceeded, message: \"context deadline exceeded\"",
        "transport error: broken pipe",
        "status: Unavailable, message: \"transport error\"",
    ];
    const REFUSED: [&str; 2] = [
        "status: Unavailable, message: \"error trying to connect: tcp connect error: Connection refused (os error 111)\"",
        "transport error: error trying to connect: tcp connect error: No route to host (os error 113)",
    ];

    #[test]
    fn a_harmless_request_goes_to_the_next_member_after_any_failure_to_reach_one() {
        for text in TIMEOUTS.iter().chain(&REFUSED) {
            assert_eq!(after_failure(Repeat::Harmless, &error(text)), Next::Member, "{text}");
        }
    }

    #[test]
    fn a_transaction_that_may_have_committed_is_not_sent_again() {
        for text in TIMEOUTS {
            assert_eq!(after_failure(Repeat::Harmful, &error(text)), Next::Stop, "{text}");
        }
    }

    #[test]
    fn a_transaction_no_member_received_goes_to_the_next_member() {
        for text in REFUSED {
            assert_eq!(after_failure(Repeat::Harmful, &error(text)), Next::Member, "{text}");
        }
    }

    /// A scripted store: each try of the transaction gives the next result; `landed` says
    /// what a read-back finds at each read.
    fn settle_with(
        tries: Vec<std::result::Result<bool, &str>>,
        landed: Vec<bool>,
    ) -> (std::result::Result<bool, String>, usize, usize) {
        let (mut t, mut l) = (tries.into_iter(), landed.into_iter());
        let (mut txns, mut reads) = (0, 0);
        let result = settle(
            3,
            || {
                txns += 1;
                t.next().expect("an unexpected try").map_err(error)
            },
            || {
                reads += 1;
                Ok(l.next().expect("an unexpected read-back"))
            },
        );
        (result.map_err(|e| e.to_string()), txns, reads)
    }

    #[test]
    fn a_transaction_that_committed_but_timed_out_is_found_by_reading_back() {
        // put_if(Absent) committed, the reply was lost: the key holds this host's value and lease.
        assert_eq!(settle_with(vec![Err("timed out")], vec![true]), (Ok(true), 1, 1));
    }

    #[test]
    fn a_transaction_that_did_not_commit_is_tried_again() {
        assert_eq!(
            settle_with(vec![Err("timed out"), Ok(true)], vec![false]),
            (Ok(true), 2, 1)
        );
        // Someone else wrote first: its conditions fail, and the keys are not ours.
        assert_eq!(
            settle_with(vec![Err("timed out"), Ok(false)], vec![false, false]),
            (Ok(false), 2, 2)
        );
    }

    #[test]
    fn a_first_try_that_commits_late_fails_the_second_and_is_found() {
        assert_eq!(
            settle_with(vec![Err("timed out"), Ok(false)], vec![false, true]),
            (Ok(true), 2, 2)
        );
    }

    #[test]
    fn a_plain_answer_is_final() {
        assert_eq!(settle_with(vec![Ok(true)], vec![]), (Ok(true), 1, 0));
        assert_eq!(settle_with(vec![Ok(false)], vec![]), (Ok(false), 1, 0));
        let (result, txns, reads) = settle_with(vec![Err("etcdserver: too many operations in txn request")], vec![]);
        assert!(result.is_err());
        assert_eq!((txns, reads), (1, 0));
    }

    #[test]
    fn still_unsure_after_every_member_is_an_error() {
        let (result, txns, reads) = settle_with(vec![Err("timed out"); 3], vec![false; 3]);
        assert!(result.unwrap_err().contains("timed out"));
        assert_eq!((txns, reads), (3, 3));
    }

    /// Against a real etcd: a `put_if(Absent)` that committed but whose reply was lost (its
    /// first try commits for real, then reports a timeout) is found by reading the key back:
    /// true, where trying it again finds the key present and says false. A key holding
    /// another value or another lease is not taken for this write.
    #[test]
    fn a_committed_put_if_whose_reply_was_lost_is_found_in_a_real_etcd() {
        use crate::cluster::records::tests::Etcd;
        let etcd = Etcd::start();
        let store = etcd.store();
        let lease = store.grant(30).unwrap();
        let key = "/plumb/test/ov/blocks/a/10.50.0.0";
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, "h1", Some(PutOptions::new().with_lease(lease)))]);
        let mut tries = 0;
        let lost_reply = || {
            tries += 1;
            let committed = store.txn_once(&txn)?;
            if tries == 1 {
                assert!(committed);
                return Err(error("timed out"));
            }
            Ok(committed)
        };
        let wrote = settle(3, lost_reply, || store.holds(&[(key, "h1")], lease));
        assert!(wrote.unwrap(), "the committed write is found");
        assert_eq!(tries, 1, "and not sent again");
        // What the retry would have said: the key is there, false.
        assert!(!store
            .put_if(&[(key, Expect::Absent)], &[(key, "h1")], Some(lease))
            .unwrap());
        // Someone else's value, or this value under another lease, is not this write.
        assert!(!store.holds(&[(key, "h2")], lease).unwrap());
        assert!(!store.holds(&[(key, "h1")], 0).unwrap());
        assert!(!store.holds(&[("/plumb/test/absent", "h1")], lease).unwrap());
    }

    #[test]
    fn other_errors_stop() {
        let e = error("status: InvalidArgument, message: \"etcdserver: key is not provided\"");
        assert_eq!(after_failure(Repeat::Harmless, &e), Next::Stop);
        assert_eq!(after_failure(Repeat::Harmful, &e), Next::Stop);
    }
}

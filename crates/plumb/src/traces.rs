//! The traces a stack keeps when no collector is configured: the supervisor's OTLP/HTTP
//! receiver (on each of the stack's gateways, port 4318) stores each trace's spans in a file
//! of the stack's state folder (`traces/TRACEID.json`, private to root), the last
//! [`KEEP_TRACES`] traces; `plumb traces` reads them.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use plumb_core::mesh::trace::{decode, Span};

pub use plumb_core::mesh::OTLP_PORT;
/// How many traces a stack keeps: the oldest go first.
pub const KEEP_TRACES: usize = 500;
/// The largest export request taken.
const MAX_BODY: usize = 4 << 20;

pub fn dir(stack_dir: &Path) -> PathBuf {
    stack_dir.join("traces")
}

/// Adds `spans` to their traces' files, then lets the oldest traces go.
pub fn store(stack_dir: &Path, spans: Vec<Span>) -> std::io::Result<()> {
    let dir = dir(stack_dir);
    crate::state::create_private_dir(&dir).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut by_trace: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    for s in spans {
        by_trace.entry(s.trace_id.clone()).or_default().push(s);
    }
    for (id, new) in by_trace {
        let path = dir.join(format!("{id}.json"));
        let mut all = read_file(&path);
        all.extend(new);
        let bytes = serde_json::to_vec(&all).map_err(std::io::Error::other)?;
        write_private(&path, &bytes)?;
    }
    // Listing the folder at every batch would cost more than the batch: now and then.
    if STORES
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .is_multiple_of(PRUNE_EVERY)
    {
        prune(&dir, KEEP_TRACES);
    }
    Ok(())
}

static STORES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Stores between two prunings (the folder holds at most this many batches' traces more).
const PRUNE_EVERY: u64 = 50;

/// Replaces `path` (root's alone) by a rename, without the fsync the state's files get: a
/// trace lost in a crash is not worth a disk flush per batch.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

fn read_file(path: &Path) -> Vec<Span> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Keeps the `keep` most recently written traces.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    if files.len() <= keep {
        return;
    }
    files.sort();
    for (_, path) in &files[..files.len() - keep] {
        let _ = std::fs::remove_file(path);
    }
}

/// Every stored trace's spans.
pub fn all(stack_dir: &Path) -> Vec<Vec<Span>> {
    let Ok(entries) = std::fs::read_dir(dir(stack_dir)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| read_file(&e.path()))
        .filter(|spans| !spans.is_empty())
        .collect()
}

/// One stored trace's spans.
pub fn get(stack_dir: &Path, trace_id: &str) -> Vec<Span> {
    read_file(&dir(stack_dir).join(format!("{trace_id}.json")))
}

/// The receiver: its own thread and runtime, serving OTLP/HTTP on the addresses it is given.
pub struct Receiver {
    runtime: tokio::runtime::Runtime,
    listening: BTreeMap<Ipv4Addr, tokio::task::JoinHandle<()>>,
    stack_dir: PathBuf,
}

impl Receiver {
    pub fn new(stack_dir: &Path) -> std::io::Result<Receiver> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp")
            .enable_all()
            .build()?;
        Ok(Receiver {
            runtime,
            listening: BTreeMap::new(),
            stack_dir: stack_dir.to_path_buf(),
        })
    }

    /// Listens on exactly these addresses (binding those not yet bound); returns the ones
    /// that could not be bound.
    pub fn listen_on(&mut self, addresses: &[Ipv4Addr]) -> Vec<(Ipv4Addr, String)> {
        self.listening.retain(|a, task| {
            let keep = addresses.contains(a) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        let mut failed = Vec::new();
        for a in addresses {
            if self.listening.contains_key(a) {
                continue;
            }
            let at = SocketAddrV4::new(*a, OTLP_PORT);
            let bound = std::net::TcpListener::bind(at).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            });
            match bound {
                Ok(listener) => {
                    let dir = self.stack_dir.clone();
                    let task = self.runtime.spawn(async move {
                        if let Ok(listener) = tokio::net::TcpListener::from_std(listener) {
                            serve(listener, dir).await;
                        }
                    });
                    self.listening.insert(*a, task);
                }
                Err(e) => failed.push((*a, e.to_string())),
            }
        }
        failed
    }
}

async fn serve(listener: tokio::net::TcpListener, dir: PathBuf) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let dir = dir.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let dir = dir.clone();
                async move { Ok::<_, std::convert::Infallible>(export(req, &dir).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn reply(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

/// `POST /v1/traces` with an OTLP protobuf body.
async fn export(req: Request<hyper::body::Incoming>, dir: &Path) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::POST || req.uri().path() != "/v1/traces" {
        return reply(StatusCode::NOT_FOUND, "POST OTLP protobuf to /v1/traces\n");
    }
    let protobuf = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .is_none_or(|v| v.as_bytes().starts_with(b"application/x-protobuf"));
    if !protobuf {
        return reply(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "only application/x-protobuf is taken\n",
        );
    }
    let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, "too large\n"),
    };
    let Ok(spans) = decode(&body) else {
        return reply(StatusCode::BAD_REQUEST, "not an OTLP ExportTraceServiceRequest\n");
    };
    // One store at a time: a trace's file is read, extended and written again.
    let stored = {
        let _guard = STORING.lock();
        store(dir, spans)
    };
    match stored {
        // An empty ExportTraceServiceResponse.
        Ok(()) => {
            let mut r = reply(StatusCode::OK, "");
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/x-protobuf"),
            );
            r
        }
        Err(_) => reply(StatusCode::SERVICE_UNAVAILABLE, "cannot store\n"),
    }
}

static STORING: Mutex<()> = Mutex::new(());

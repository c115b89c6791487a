//! The traces a stack keeps when no collector is configured: the supervisor's OTLP/HTTP
//! receiver (on each of the stack's gateways, port 4318) checks each export request and
//! appends it as it came (protobuf, after its length as 4 bytes) to a segment file of the
//! stack's state folder (`traces/current.otlp`, private to root; full at [`SEGMENT_BYTES`], it
//! is renamed and a new one begun, and only the last [`SEGMENTS`] are kept). One append per
//! export, whatever the number of traces in it, and no re-encoding: a file per trace cost a
//! create, a rename and a delete per request, JSON lines a re-encoding of every span.
//! `plumb traces` reads the segments and shows the last [`KEEP_TRACES`] traces.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use plumb_core::mesh::trace::{decode, Span};

pub use plumb_core::mesh::OTLP_PORT;
/// How many traces `plumb traces` shows at most: the newest.
pub const KEEP_TRACES: usize = 500;
/// A segment this large is closed and a new one begun.
const SEGMENT_BYTES: u64 = 4 << 20;
/// Closed segments kept besides the current one (the disk a stack's traces take is bounded
/// by `(SEGMENTS + 1) * SEGMENT_BYTES`).
const SEGMENTS: usize = 4;
/// The largest export request taken.
const MAX_BODY: usize = 4 << 20;
const CURRENT: &str = "current.otlp";

pub fn dir(stack_dir: &Path) -> PathBuf {
    stack_dir.join("traces")
}

/// Appends an export request (checked) to the current segment; closes it when full and lets
/// the oldest go.
pub fn store(stack_dir: &Path, request: &[u8]) -> std::io::Result<()> {
    let dir = dir(stack_dir);
    crate::state::create_private_dir(&dir).map_err(|e| std::io::Error::other(e.to_string()))?;
    let length = u32::try_from(request.len()).map_err(std::io::Error::other)?;
    let mut lines = Vec::with_capacity(request.len() + 4);
    lines.extend_from_slice(&length.to_be_bytes());
    lines.extend_from_slice(request);
    let current = dir.join(CURRENT);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&current)?;
    // One write: readers see whole records (a partial last one is skipped when read).
    file.write_all(&lines)?;
    if file.metadata()?.len() >= SEGMENT_BYTES {
        let closed = dir.join(format!("{}.otlp", crate::runfile::unix_ms()));
        std::fs::rename(&current, closed)?;
        prune(&dir);
    }
    Ok(())
}

/// The closed segments, oldest first.
fn segments(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            Some((name.strip_suffix(".otlp")?.parse().ok()?, e.path()))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, p)| p).collect()
}

fn prune(dir: &Path) {
    let all = segments(dir);
    for old in all.iter().take(all.len().saturating_sub(SEGMENTS)) {
        let _ = std::fs::remove_file(old);
    }
}

/// The last [`KEEP_TRACES`] traces (by their first span's start), each with its spans.
pub fn all(stack_dir: &Path) -> Vec<Vec<Span>> {
    let dir = dir(stack_dir);
    let mut by_trace: BTreeMap<String, Vec<Span>> = BTreeMap::new();
    for path in segments(&dir).into_iter().chain([dir.join(CURRENT)]) {
        let Ok(bytes) = std::fs::read(&path) else { continue };
        let mut rest = bytes.as_slice();
        while rest.len() >= 4 {
            let length = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let Some(request) = rest.get(4..4 + length) else { break };
            for span in decode(request).unwrap_or_default() {
                by_trace.entry(span.trace_id.clone()).or_default().push(span);
            }
            rest = &rest[4 + length..];
        }
    }
    let mut traces: Vec<Vec<Span>> = by_trace.into_values().collect();
    traces.sort_by_key(|t| std::cmp::Reverse(t.iter().map(|s| s.start_ns).min().unwrap_or(0)));
    traces.truncate(KEEP_TRACES);
    traces
}

/// One kept trace's spans.
pub fn get(stack_dir: &Path, trace_id: &str) -> Vec<Span> {
    all(stack_dir)
        .into_iter()
        .find(|t| t.first().is_some_and(|s| s.trace_id == trace_id))
        .unwrap_or_default()
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
    if decode(&body).is_err() {
        return reply(StatusCode::BAD_REQUEST, "not an OTLP ExportTraceServiceRequest\n");
    }
    // One store at a time: a segment is appended to, and renamed when full.
    let stored = {
        let _guard = STORING.lock();
        store(dir, &body)
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

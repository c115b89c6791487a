//! `plumb ui [STACK] [--listen ADDR:PORT]`: a live web view of one stack, served by plumb
//! itself (hyper on a small tokio runtime; the page, its script and its style are compiled
//! into the binary, nothing is loaded from elsewhere). The page draws the stack's graph (the
//! same model as `plumb graph`) and polls the JSON API every second:
//!
//! - `/api/topology`: `plumb graph --format json`'s value;
//! - `/api/stats`: `plumb top --json`'s rows, `plumb services --json`'s (VIP endpoints,
//!   readiness, connections), the policy denials of each isolated service (with the
//!   isolating policies' stack-file lines), and the host's tracked flows of the stack as
//!   `plumb conns --json` lists them;
//! - `/api/container/NAME`: its status, `plumb conns NAME --json`, the end of its log, its
//!   latest events (`plumb events`);
//! - `/api/capture?container=NAME&seconds=N`: a pcapng file, made by `plumb capture`;
//! - `/api/trace?from=A&to=B:PORT[/udp]`: `plumb trace --json`'s report.
//!
//! Capture and trace run as child processes of the same binary: each owns process-wide
//! signal handling while it runs (Ctrl-C ends a capture, waits for a trace to remove its
//! tracing table), which a long-lived server must keep for itself.
//!
//! Access ([`access`]): loopback unless told otherwise; every request needs the token printed
//! at start (other users of the machine reach loopback too, and the UI shows what only root
//! may read: logs, captures); a Host header other than the listen address is refused (DNS
//! rebinding); only GET.

mod access;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use nix::sys::signal::{SigSet, Signal};
use plumb_core::firewall::{policy_denials, tables_in_listing};
use plumb_core::kernel::Kernel;
use plumb_core::Desired;
use serde_json::{json, Value};

use super::policy::{self, Which};
use super::{conns, logs, require_root, services, top, Context};
use crate::failure::{Failure, Result};
use crate::runfile;
use crate::state::StateDir;
use access::{Access, Verdict};

const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("style.css");

/// The longest capture the page may ask for.
const MAX_CAPTURE_SECONDS: u64 = 60;
/// Log lines shown for a container.
const LOG_LINES: usize = 100;
/// Its latest events shown.
const EVENTS: usize = 20;

type Reply = Response<Full<Bytes>>;

struct Shared {
    stack: String,
    /// Where captures are written before they are sent (root only; removed at the end).
    scratch: PathBuf,
    state_root: PathBuf,
    access: Access,
    /// The last counters `/api/stats` read, and when: rates are over the time between polls.
    last: Mutex<Option<(top::Sample, Instant)>>,
}

impl Shared {
    fn context(&self) -> Context {
        Context {
            state: StateDir::new(self.state_root.clone()),
        }
    }

    fn desired(&self) -> std::result::Result<Desired, ApiError> {
        self.context()
            .state
            .load(&self.stack)
            .ok()
            .flatten()
            .and_then(|s| s.desired)
            .ok_or_else(|| ApiError::gone(&self.stack))
    }
}

/// Where `plumb ui` listens when neither `--listen` nor the stack file's `ui` says: loopback,
/// next to the port the stack file's `metrics` usually takes (9464).
const DEFAULT_LISTEN: &str = "127.0.0.1:9465";

pub fn run(ctx: &Context, stack: Option<&str>, listen: Option<SocketAddr>) -> Result<()> {
    require_root("ui")?;
    let which = stack.map_or(Which::Default, Which::Stack);
    let state = policy::stack(ctx, which)?;
    let stack = state.stack;
    let listen = listen
        .or_else(|| state.desired.and_then(|d| d.ui).map(SocketAddr::V4))
        .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("a socket address"));
    let listener = std::net::TcpListener::bind(listen).map_err(|e| {
        Failure::new(format!("cannot listen on {listen}: {e}"))
            .hint("choose another address with --listen ADDR:PORT (a stack's metrics may use 9464)")
    })?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let token = access::new_token();
    // A name no one can guess ahead (/tmp is everyone's), made only if it does not exist.
    let scratch = std::env::temp_dir().join(format!("plumb-ui-{}-{}", std::process::id(), &access::new_token()[..8]));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&scratch)
        .map_err(|e| Failure::new(format!("cannot make {}: {e}", scratch.display())))?;
    end_on_signal(scratch.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let shared = Arc::new(Shared {
        stack: stack.clone(),
        scratch,
        state_root: ctx.state.root().to_path_buf(),
        access: Access { listen: bound, token },
        last: Mutex::new(None),
    });
    // The address with the token is the whole output: scripts read it from the first line.
    println!("http://{bound}/?token={}", shared.access.token);
    eprintln!(
        "plumb ui: stack {stack} on http://{bound}/ ({}); open the address above, Ctrl-C stops",
        if bound.ip().is_loopback() {
            "this machine only"
        } else {
            "reachable from other machines: the token is needed"
        }
    );
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Out of descriptors and the like: a later accept may work.
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let shared = Arc::clone(&shared);
            tokio::spawn(async move {
                let service = service_fn(move |req| handle(Arc::clone(&shared), req));
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Ctrl-C, TERM and HUP are held in every thread (the runtime's start after this) and taken
/// by one, which removes the scratch folder and ends the server; a capture or trace under
/// way gets TERM as it loses its parent ([`plumb_child`]) and ends as on Ctrl-C.
fn end_on_signal(scratch: PathBuf) -> Result<()> {
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    signals
        .thread_block()
        .map_err(|e| Failure::new(format!("cannot hold signals: {e}")))?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        let _ = signals.wait();
        let _ = std::fs::remove_dir_all(&scratch);
        std::process::exit(0);
    })?;
    Ok(())
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> std::result::Result<Reply, Infallible> {
    let header = |name: header::HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
    let query = req.uri().query().unwrap_or("").to_string();
    let path = req.uri().path().to_string();
    let verdict = shared.access.check(
        header(header::HOST),
        Some(&query),
        header(header::COOKIE),
        header(header::AUTHORIZATION),
    );
    match verdict {
        Verdict::WrongHost => {
            return Ok(text(
                StatusCode::MISDIRECTED_REQUEST,
                &format!(
                    "plumb ui answers only requests for http://{}/ (the Host header names another host)\n",
                    shared.access.listen
                ),
            ))
        }
        Verdict::NoToken => {
            return Ok(text(
                StatusCode::UNAUTHORIZED,
                "plumb ui needs its token: open the address `plumb ui` printed (http://ADDR/?token=...), or send `Authorization: Bearer TOKEN`\n",
            ))
        }
        Verdict::Allowed | Verdict::AllowedByQuery => {}
    }
    if req.method() != Method::GET {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "plumb ui answers GET only\n");
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
        return Ok(r);
    }
    if verdict == Verdict::AllowedByQuery {
        let cookie = format!(
            "{}={}; Path=/; HttpOnly; SameSite=Strict",
            shared.access.cookie(),
            shared.access.token
        );
        // The page: on to the same address without the token (out of the address bar and the
        // history); the API answers at once, for programs.
        let mut r = if path == "/" {
            let rest = access::without_token(&query);
            let to = if rest.is_empty() {
                "/".to_string()
            } else {
                format!("/?{rest}")
            };
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::SEE_OTHER;
            r.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_str(&to).unwrap_or(HeaderValue::from_static("/")),
            );
            r
        } else {
            route(shared, path, query).await
        };
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        return Ok(r);
    }
    Ok(route(shared, path, query).await)
}

async fn route(shared: Arc<Shared>, path: String, query: String) -> Reply {
    let mut reply = match path.as_str() {
        "/" => asset(PAGE, "text/html; charset=utf-8"),
        "/app.js" => asset(SCRIPT, "text/javascript; charset=utf-8"),
        "/style.css" => asset(STYLE, "text/css; charset=utf-8"),
        // Browsers ask for it on their own: no icon, and no error in their console.
        "/favicon.ico" => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        _ if path.starts_with("/api/") => {
            // Netlink, sock_diag, files and child processes: blocking work, off the reactor.
            tokio::task::spawn_blocking(move || api(&shared, &path, &query))
                .await
                .unwrap_or_else(|_| Err(ApiError::internal("the request's worker failed")))
                .unwrap_or_else(ApiError::into_reply)
        }
        _ => text(StatusCode::NOT_FOUND, "no such page\n"),
    };
    let headers = reply.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'"),
    );
    reply
}

fn api(shared: &Shared, path: &str, query: &str) -> std::result::Result<Reply, ApiError> {
    let param = |name| access::query_param(query, name);
    match path {
        "/api/topology" => Ok(json_reply(&json!(plumb_core::graph::topology(&shared.desired()?)))),
        "/api/stats" => Ok(json_reply(&stats(shared)?)),
        "/api/capture" => {
            let name = param("container").ok_or_else(|| ApiError::bad("say which: ?container=NAME"))?;
            let seconds = match param("seconds") {
                None => 10,
                Some(s) => s
                    .parse::<u64>()
                    .ok()
                    .filter(|n| (1..=MAX_CAPTURE_SECONDS).contains(n))
                    .ok_or_else(|| {
                        ApiError::bad(&format!(
                            "seconds={s:?}: a whole number of seconds, 1 to {MAX_CAPTURE_SECONDS}"
                        ))
                    })?,
            };
            capture(shared, &name, seconds)
        }
        "/api/trace" => {
            let from = param("from").ok_or_else(|| ApiError::bad("say from which container: ?from=NAME"))?;
            let to = param("to").ok_or_else(|| ApiError::bad("say to where: ?to=TARGET:PORT[/udp]"))?;
            Ok(json_reply(&trace(shared, &from, &to)?))
        }
        _ => match path.strip_prefix("/api/container/") {
            Some(name) => Ok(json_reply(&container(shared, name)?)),
            None => Err(ApiError {
                status: StatusCode::NOT_FOUND,
                message: format!("no API {path}"),
            }),
        },
    }
}

/// Every container's counters and rates (`plumb top`'s rows), the policies' denials and the
/// stack's tracked flows.
fn stats(shared: &Shared) -> std::result::Result<Value, ApiError> {
    let desired = shared.desired()?;
    let ctx = shared.context();
    let mut kernel = crate::apply::kernel()?;
    let target = Some(shared.stack.as_str());
    let rows = {
        let mut last = shared.last.lock().unwrap_or_else(|e| e.into_inner());
        let (before, at) = match last.take() {
            Some(previous) => previous,
            None => (top::sample(&mut kernel, &ctx, target)?, Instant::now()),
        };
        let rows = top::rows(&mut kernel, &ctx, target, &before, at.elapsed())?;
        *last = Some((top::sample(&mut kernel, &ctx, target)?, Instant::now()));
        rows
    };
    let tables = kernel.nft_ruleset().ok().as_deref().and_then(tables_in_listing);
    let connections = conns::gather(&ctx, &mut kernel, target)?.to_json();
    Ok(json!({
        "stack": shared.stack,
        "containers": rows,
        "services": services::of_stack(&ctx, &desired, tables.as_ref()),
        "denials": policy_denials(&desired, &tables.unwrap_or_default()),
        "flows": connections["flows"],
    }))
}

/// One container: its supervisor status, sockets and flows, and the end of its log.
fn container(shared: &Shared, name: &str) -> std::result::Result<Value, ApiError> {
    let desired = shared.desired()?;
    let c = desired
        .container(name)
        .ok_or_else(|| ApiError::no_container(&shared.stack, name))?;
    let ctx = shared.context();
    let qualified = format!("{}/{}", shared.stack, c.name);
    let mut kernel = crate::apply::kernel()?;
    let connections = conns::gather(&ctx, &mut kernel, Some(&qualified))?.to_json();
    let status = runfile::read_status(&ctx.state.stack_dir(&shared.stack))
        .replicas
        .get(&c.name)
        .cloned();
    let log: Vec<String> = logs::files(&ctx, &qualified)
        .map(|files| {
            files
                .iter()
                .flat_map(|(_, path)| logs::last_lines(path, LOG_LINES))
                .collect()
        })
        .unwrap_or_default();
    let history: Vec<_> = crate::events::read(&ctx.state.stack_dir(&shared.stack))
        .into_iter()
        .filter(|e| e.container == c.name)
        .collect();
    Ok(json!({
        "stack": shared.stack,
        "container": c.name,
        "events": history[history.len().saturating_sub(EVENTS)..],
        "service": c.service,
        "interfaces": c.interfaces.iter().map(|i| json!({"name": i.name, "network": i.network, "address": i.cidr(), "host_veth": i.host_veth})).collect::<Vec<_>>(),
        "ports": c.ports.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "status": status,
        "connections": connections,
        "log": log,
        "has_process": c.process.is_some(),
    }))
}

/// `plumb capture STACK/NAME --duration Ns -w FILE` in a folder only root may read; the file's bytes.
fn capture(shared: &Shared, name: &str, seconds: u64) -> std::result::Result<Reply, ApiError> {
    let desired = shared.desired()?;
    let c = desired
        .container(name)
        .ok_or_else(|| ApiError::no_container(&shared.stack, name))?;
    let dir = shared.scratch.join(access::new_token());
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| ApiError::internal(&format!("cannot make a folder for the capture: {e}")))?;
    let file = dir.join("capture.pcapng");
    let ran = plumb_child(shared)
        .arg("capture")
        .arg("--duration")
        .arg(format!("{seconds}s"))
        .arg("-w")
        .arg(&file)
        .args(["--", &format!("{}/{}", shared.stack, c.name)])
        .output();
    let bytes = std::fs::read(&file);
    let _ = std::fs::remove_dir_all(&dir);
    let out = ran.map_err(|e| ApiError::internal(&format!("cannot run plumb capture: {e}")))?;
    let bytes = match (out.status.success(), bytes) {
        (true, Ok(b)) => b,
        _ => {
            return Err(ApiError::internal(&format!(
                "plumb capture failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    };
    let mut r = Response::new(Full::new(Bytes::from(bytes)));
    let headers = r.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-pcapng"));
    // The name is a container's: letters, digits and '-' only.
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{}-{}.pcapng\"", shared.stack, c.name)) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(r)
}

/// `plumb trace STACK/FROM TO --json`'s report (it exits 1 when the probe was not answered:
/// still a report).
fn trace(shared: &Shared, from: &str, to: &str) -> std::result::Result<Value, ApiError> {
    let desired = shared.desired()?;
    let c = desired
        .container(from)
        .ok_or_else(|| ApiError::no_container(&shared.stack, from))?;
    let out = plumb_child(shared)
        // `--`: TO is the page's text, never an option of `plumb trace`.
        .args(["trace", "--json", "--", &format!("{}/{}", shared.stack, c.name), to])
        .output()
        .map_err(|e| ApiError::internal(&format!("cannot run plumb trace: {e}")))?;
    serde_json::from_slice(&out.stdout).map_err(|_| {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
        match out.status.code() {
            Some(2) => ApiError::bad(&why),
            _ => ApiError::internal(&format!("plumb trace failed: {why}")),
        }
    })
}

/// This same binary, on the same state directory.
fn plumb_child(shared: &Shared) -> Command {
    let exe = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"));
    let mut c = Command::new(exe);
    c.arg("--state-dir").arg(&shared.state_root);
    c.stdin(std::process::Stdio::null());
    // SAFETY: between fork and exec only async-signal-safe calls (prctl, sigprocmask).
    unsafe {
        c.pre_exec(|| {
            // The server holds these signals; the child takes them as the command would.
            let _ = SigSet::all().thread_unblock();
            let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGTERM);
            Ok(())
        });
    }
    c
}

fn asset(body: &'static str, kind: &'static str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    r
}

fn text(status: StatusCode, body: &str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_reply(value: &Value) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(value.to_string())));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// An API request that failed: its status and a message the page shows as it is.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad(message: &str) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            message: message.to_string(),
        }
    }

    fn internal(message: &str) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.to_string(),
        }
    }

    fn gone(stack: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("stack {stack} is not up any more; `plumb up` brings it back"),
        }
    }

    fn no_container(stack: &str, name: &str) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!("stack {stack} has no container {name:?}"),
        }
    }

    fn into_reply(self) -> Reply {
        let mut r = json_reply(&json!({ "error": self.message }));
        *r.status_mut() = self.status;
        r
    }
}

impl From<Failure> for ApiError {
    fn from(f: Failure) -> Self {
        let message = match &f.hint {
            Some(h) => format!("{}; {h}", f.message),
            None => f.message.clone(),
        };
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message,
        }
    }
}

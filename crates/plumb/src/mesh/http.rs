//! The sidecar at L7: HTTP/1.1 and HTTP/2 (prior knowledge) requests served by hyper and
//! sent on. Outbound (the replica calls a service) the sidecar picks the endpoint itself (P2C
//! over latency), bounds each attempt by the route's timeout, retries what the route allows
//! within its budget and ejects endpoints that keep failing. Inbound it hands the request to
//! the replica's own process.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Instant;

use super::state::Shared;
use super::tls::{Conn, MeshTls};
use super::{connect_marked, Direction};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use plumb_core::mesh::balance::Outcome;
use plumb_core::mesh::trace::{hex, Kind, Span, TraceParent};

pub type Body = BoxBody<Bytes, hyper::Error>;

/// What the pooled clients' connector needs of the sidecar's view: where sidecars answer,
/// and the TLS to speak to them.
#[derive(Default)]
pub struct Links {
    pub tls: std::sync::RwLock<Option<Arc<MeshTls>>>,
    pub directory: std::sync::RwLock<Arc<plumb_core::mesh::directory::Directory>>,
}

impl Links {
    /// The TLS to use towards `ip`: `Some` where a sidecar answers.
    pub fn tls_to(&self, ip: Ipv4Addr) -> Option<Arc<MeshTls>> {
        let meshed = self.directory.read().ok()?.meshed_at(ip);
        if !meshed {
            return None;
        }
        self.tls.read().ok()?.clone()
    }
}

/// Connects the pooled clients' connections with the sidecar's mark, over mutual TLS where
/// a sidecar answers.
#[derive(Clone)]
pub struct Marked(pub Arc<Links>);

impl tower_service::Service<Uri> for Marked {
    type Response = Conn;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let links = self.0.clone();
        Box::pin(async move {
            let ip: Ipv4Addr = uri
                .host()
                .and_then(|h| h.parse().ok())
                .ok_or_else(|| std::io::Error::other(format!("not an IPv4 address: {uri}")))?;
            let to = SocketAddrV4::new(ip, uri.port_u16().unwrap_or(80));
            let stream = connect_marked(to).await?;
            Ok(match links.tls_to(ip) {
                Some(tls) => match tls.connect(stream, ip, true).await {
                    Ok(s) => Conn::Tls(Box::new(TokioIo::new(s))),
                    Err(e) => {
                        eprintln!("mutual TLS to {to} failed: {e}");
                        return Err(e);
                    }
                },
                None => Conn::Plain(TokioIo::new(stream)),
            })
        })
    }
}

/// The pooled clients a sidecar sends with: one per HTTP version (a request leaves in the
/// version it came in).
pub struct Clients {
    h1: Client<Marked, Full<Bytes>>,
    h2: Client<Marked, Full<Bytes>>,
}

impl Clients {
    pub fn new(links: Arc<Links>) -> Clients {
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_timer(TokioTimer::new());
        let h1 = b.build(Marked(links.clone()));
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_timer(TokioTimer::new()).http2_only(true);
        let h2 = b.build(Marked(links));
        Clients { h1, h2 }
    }

    pub fn send(&self, req: Request<Full<Bytes>>) -> hyper_util::client::legacy::ResponseFuture {
        if req.version() == Version::HTTP_2 {
            self.h2.request(req)
        } else {
            self.h1.request(req)
        }
    }
}

/// Serves HTTP on a connection the interception brought (from `peer`, over mutual TLS if
/// `mtls`), whose original destination was `target`.
pub async fn serve<I>(
    io: I,
    peer: Option<std::net::SocketAddr>,
    mtls: bool,
    target: SocketAddrV4,
    direction: Direction,
    shared: Arc<Shared>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move {
            let response = match direction {
                Direction::Outbound => outbound(req, target, &shared).await,
                Direction::Inbound => inbound(req, target, peer, mtls, &shared).await,
            };
            Ok::<_, Infallible>(response)
        }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let _ = builder.serve_connection(TokioIo::new(io), service).await;
}

/// A response of the sidecar's own (the upstream gave none).
pub fn own_response(status: StatusCode, text: &str) -> Response<Body> {
    let body = Full::new(Bytes::from(format!("{text}\n")))
        .map_err(|never| match never {})
        .boxed();
    let mut r = Response::new(body);
    *r.status_mut() = status;
    r.headers_mut()
        .insert("x-plumb-proxy", hyper::header::HeaderValue::from_static("error"));
    r
}

/// The request as it will be sent (again) to `to`, with its body.
fn rebuild(parts: &hyper::http::request::Parts, body: &Bytes, to: SocketAddrV4) -> Request<Full<Bytes>> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = format!("http://{to}{path}")
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"));
    let mut req = Request::new(Full::new(body.clone()));
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req
}

/// What one attempt came to.
enum Attempt {
    Answered(Response<Incoming>),
    /// Could not connect, or the connection broke before a response.
    Failed(String),
    TimedOut,
}

async fn attempt(shared: &Shared, req: Request<Full<Bytes>>, timeout: Option<std::time::Duration>) -> Attempt {
    let sent = shared.clients.send(req);
    let result = match timeout {
        Some(t) => match tokio::time::timeout(t, sent).await {
            Ok(r) => r,
            Err(_) => return Attempt::TimedOut,
        },
        None => sent.await,
    };
    match result {
        Ok(r) => Attempt::Answered(r),
        Err(e) => Attempt::Failed(e.to_string()),
    }
}

/// The span of one request through the sidecar: it continues the request's trace (or starts
/// one) and hands its own ID on as the next hop's parent. Off (`tracing = "off"`), it
/// changes nothing and records nothing.
struct SpanScope {
    on: bool,
    trace: TraceParent,
    parent: Option<[u8; 8]>,
    start_ns: u64,
    name: String,
}

impl SpanScope {
    fn begin(parts: &mut hyper::http::request::Parts, on: bool) -> SpanScope {
        if !on {
            return SpanScope {
                on,
                trace: TraceParent {
                    trace_id: [0; 16],
                    span_id: [0; 8],
                    sampled: false,
                },
                parent: None,
                start_ns: 0,
                name: String::new(),
            };
        }
        let incoming = parts
            .headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse);
        let trace = TraceParent {
            trace_id: incoming.map_or_else(|| rand::random::<u128>().to_be_bytes(), |p| p.trace_id),
            span_id: rand::random::<u64>().max(1).to_be_bytes(),
            sampled: true,
        };
        if let Ok(v) = hyper::header::HeaderValue::from_str(&trace.header()) {
            parts.headers.insert(TRACEPARENT, v);
        }
        SpanScope {
            on,
            trace,
            parent: incoming.map(|p| p.span_id),
            start_ns: now_ns(),
            name: format!("{} {}", parts.method, parts.uri.path()),
        }
    }

    fn end(
        self,
        shared: &Shared,
        kind: Kind,
        status: Option<u16>,
        error: Option<String>,
        mut attributes: BTreeMap<String, String>,
    ) {
        if !self.on {
            return;
        }
        if let Some(s) = status {
            attributes.insert("http.response.status_code".into(), s.to_string());
        }
        attributes.insert("plumb.container".into(), shared.container.clone());
        attributes.insert("plumb.stack".into(), shared.stack.clone());
        let error = error.or_else(|| status.filter(|s| *s >= 500).map(|s| format!("HTTP {s}")));
        shared.emit(Span {
            trace_id: hex(&self.trace.trace_id),
            span_id: hex(&self.trace.span_id),
            parent_id: self.parent.map(|p| hex(&p)),
            service: shared.service.clone(),
            name: self.name,
            kind,
            start_ns: self.start_ns,
            end_ns: now_ns(),
            error,
            attributes,
        });
    }
}

const TRACEPARENT: &str = "traceparent";

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The replica calls out: to a service of the stack (balanced here, with the route's
/// timeout, retries and ejection), or elsewhere (sent where it was going).
async fn outbound(req: Request<Incoming>, target: SocketAddrV4, shared: &Shared) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let span = SpanScope::begin(&mut parts, shared.tracing());
    // The service called and the route, looked up once for the request.
    let routed = shared.route_to(*target.ip(), parts.uri.path());
    let mut attributes = BTreeMap::new();
    attributes.insert("server.address".to_string(), target.to_string());
    if let Some((p, _)) = &routed {
        attributes.insert("peer.service".to_string(), p.clone());
    }
    let (peer, route_path) = match &routed {
        Some((s, r)) => (s.clone(), r.path.clone()),
        None => ("outside".to_string(), None),
    };
    let started = Instant::now();
    let (response, retries) = outbound_attempts(parts, body, target, routed, shared).await;
    shared.observe(
        "outbound",
        &peer,
        route_path.as_deref(),
        Some(response.status().as_u16()),
        started.elapsed().as_secs_f64(),
        retries,
    );
    if retries > 0 {
        attributes.insert("plumb.retries".to_string(), retries.to_string());
    }
    let own_error = response.headers().contains_key("x-plumb-proxy");
    let status = response.status().as_u16();
    let error = own_error.then(|| format!("plumb proxy: HTTP {status}"));
    span.end(shared, Kind::Client, Some(status), error, attributes);
    response
}

/// The attempts of one outbound request, and how many of them were retries.
async fn outbound_attempts(
    parts: hyper::http::request::Parts,
    body: Incoming,
    target: SocketAddrV4,
    routed: Option<(String, plumb_core::spec::RouteSpec)>,
    shared: &Shared,
) -> (Response<Body>, u32) {
    let mut retries = 0;
    let response = outbound_inner(parts, body, target, routed, shared, &mut retries).await;
    (response, retries)
}

async fn outbound_inner(
    parts: hyper::http::request::Parts,
    body: Incoming,
    target: SocketAddrV4,
    routed: Option<(String, plumb_core::spec::RouteSpec)>,
    shared: &Shared,
    retries: &mut u32,
) -> Response<Body> {
    // Kept whole: a retry sends it again.
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return own_response(StatusCode::BAD_REQUEST, "the request's body broke off");
    };
    let Some((service, route)) = routed else {
        return match attempt(shared, rebuild(&parts, &body, target), None).await {
            Attempt::Answered(r) => r.map(BodyExt::boxed),
            Attempt::Failed(e) => own_response(StatusCode::BAD_GATEWAY, &format!("{target}: {e}")),
            Attempt::TimedOut => own_response(StatusCode::GATEWAY_TIMEOUT, "timed out"),
        };
    };
    let retryable = route.retry_methods.iter().any(|m| m == parts.method.as_str());
    shared.budget_request(&service, &route);
    let mut tries_left = if retryable { route.retries } else { 0 };
    let mut tried = Vec::new();
    loop {
        let Some(endpoint) = shared.pick(&service, target.port(), &tried) else {
            return own_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("no ready replica of {service}"),
            );
        };
        tried.push(*endpoint.ip());
        let started = Instant::now();
        let result = attempt(shared, rebuild(&parts, &body, endpoint), route.timeout).await;
        let failed = match &result {
            Attempt::Answered(r) => r.status().is_server_error(),
            _ => true,
        };
        let outcome = if failed { Outcome::Failure } else { Outcome::Success };
        shared.record(
            &service,
            endpoint,
            started.elapsed(),
            outcome,
            &route,
            result_status(&result),
        );
        if failed && tries_left > 0 && shared.budget_retry(&service, &route) {
            tries_left -= 1;
            *retries += 1;
            shared.count_retry(&service, &route);
            continue;
        }
        return match result {
            Attempt::Answered(r) => r.map(BodyExt::boxed),
            Attempt::Failed(e) => own_response(StatusCode::BAD_GATEWAY, &format!("{service} ({endpoint}): {e}")),
            Attempt::TimedOut => own_response(
                StatusCode::GATEWAY_TIMEOUT,
                &format!(
                    "{service} did not answer within {:?}",
                    route.timeout.unwrap_or_default()
                ),
            ),
        };
    }
}

fn result_status(result: &Attempt) -> Option<u16> {
    match result {
        Attempt::Answered(r) => Some(r.status().as_u16()),
        _ => None,
    }
}

/// Someone calls the replica: the request goes to its process, where it was going.
async fn inbound(
    req: Request<Incoming>,
    target: SocketAddrV4,
    peer: Option<std::net::SocketAddr>,
    mtls: bool,
    shared: &Shared,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let started = Instant::now();
    let span = SpanScope::begin(&mut parts, shared.tracing());
    let mut attributes = BTreeMap::new();
    if let Some(p) = peer {
        attributes.insert("client.address".to_string(), p.ip().to_string());
    }
    attributes.insert("plumb.mtls".to_string(), mtls.to_string());
    if let Some(std::net::SocketAddr::V4(from)) = peer {
        let verdict = shared.admit(
            *from.ip(),
            target.port(),
            Some(parts.method.as_str()),
            Some(parts.uri.path()),
            mtls,
        );
        if verdict.allowed && !verdict.policies.is_empty() {
            // The L7 rule that let it in, for the trace.
            attributes.insert("plumb.policy".to_string(), verdict.summary.clone());
        }
        if !verdict.allowed {
            let mut r = own_response(StatusCode::FORBIDDEN, &verdict.summary);
            if let Ok(v) = hyper::header::HeaderValue::from_str(&verdict.summary) {
                r.headers_mut().insert("x-plumb-policy", v);
            }
            attributes.insert("plumb.policy".to_string(), verdict.summary.clone());
            shared.observe(
                "inbound",
                &shared.service,
                None,
                Some(403),
                started.elapsed().as_secs_f64(),
                0,
            );
            span.end(
                shared,
                Kind::Server,
                Some(403),
                Some(format!("denied: {}", verdict.summary)),
                attributes,
            );
            return r;
        }
    }
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return own_response(StatusCode::BAD_REQUEST, "the request's body broke off");
    };
    let (response, error) = match attempt(shared, rebuild(&parts, &body, target), None).await {
        Attempt::Answered(r) => (r.map(BodyExt::boxed), None),
        Attempt::Failed(e) => (
            own_response(StatusCode::BAD_GATEWAY, &format!("{target}: {e}")),
            Some(format!("the service: {e}")),
        ),
        Attempt::TimedOut => (
            own_response(StatusCode::GATEWAY_TIMEOUT, "timed out"),
            Some("timed out".into()),
        ),
    };
    let status = response.status().as_u16();
    shared.observe(
        "inbound",
        &shared.service,
        None,
        Some(status),
        started.elapsed().as_secs_f64(),
        0,
    );
    span.end(shared, Kind::Server, Some(status), error, attributes);
    response
}

/// True if a connection's first bytes are HTTP: a request line's method, or HTTP/2's preface.
pub fn looks_like_http(first: &[u8]) -> bool {
    const METHODS: [&[u8]; 10] = [
        b"GET ",
        b"HEAD ",
        b"POST ",
        b"PUT ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"TRACE ",
        b"CONNECT ",
        b"PRI * HTTP/2.0",
    ];
    METHODS.iter().any(|m| {
        let n = m.len().min(first.len());
        n > 0 && first[..n] == m[..n] && (first.len() >= m.len() || n == first.len())
    }) && !first.is_empty()
}

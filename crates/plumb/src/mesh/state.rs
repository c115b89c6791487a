//! What a sidecar holds: its view of the stack (re-read when the supervisor's files change),
//! each service's endpoints as the balancer sees them, retry budgets, and its clients.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use plumb_core::desired::Desired;
use plumb_core::mesh::balance::{pick, Endpoint, Outcome, RetryBudget};
use plumb_core::mesh::directory::Directory;
use plumb_core::mesh::stats::{RouteKey, RouteStats, SidecarStats};
use plumb_core::mesh::trace::Span;
use plumb_core::spec::{route_for, RouteSpec};

use std::sync::Arc;

use super::http::{Clients, Links};
use crate::runfile;

/// How often the sidecar looks whether `run.json` or `status.json` changed.
pub const RELOAD_EVERY: Duration = Duration::from_millis(500);

#[derive(Default)]
pub struct View {
    pub desired: Option<Desired>,
    pub directory: Directory,
    /// The stack's policies compiled, for the L7 rules.
    pub policies: plumb_core::policy::Compiled,
    /// The modification times the view was read at (run, status, the mesh's CA).
    stamps: (Option<SystemTime>, Option<SystemTime>, Option<SystemTime>),
}

pub struct Shared {
    pub dir: PathBuf,
    pub container: String,
    pub service: String,
    pub stack: String,
    pub view: RwLock<View>,
    /// Service → endpoint address → its state.
    endpoints: Mutex<HashMap<String, HashMap<Ipv4Addr, Endpoint>>>,
    budgets: Mutex<HashMap<(String, Option<String>), RetryBudget>>,
    /// Counts per route, written out every [`STATS_EVERY`].
    stats: Mutex<HashMap<RouteKey, RouteStats>>,
    pub clients: Clients,
    /// What the connector uses: where sidecars answer, and the mesh's TLS.
    pub links: Arc<Links>,
    /// Finished spans, for the exporter.
    spans: tokio::sync::mpsc::Sender<Span>,
}

/// Spans waiting for export at most: beyond, new ones are dropped (a collector that is
/// down must not grow the sidecar).
const SPAN_QUEUE: usize = 10_000;
/// Spans go out in batches of at most this many, at least every [`EXPORT_EVERY`].
const EXPORT_BATCH: usize = 512;
const EXPORT_EVERY: Duration = Duration::from_millis(200);
/// How often the counts are written for the supervisor's metrics and `plumb top`.
pub const STATS_EVERY: Duration = Duration::from_secs(1);

/// Where sidecars write their counts: `STACK/mesh-stats/CONTAINER.json`.
pub fn stats_dir(stack_dir: &std::path::Path) -> PathBuf {
    stack_dir.join("mesh-stats")
}

fn route_key(direction: &str, service: &str, route: Option<&str>) -> RouteKey {
    RouteKey {
        direction: direction.to_string(),
        service: service.to_string(),
        route: route.unwrap_or("/").to_string(),
    }
}

impl Shared {
    /// The sidecar's state, and the receiving end of its spans (for [`export`]).
    pub fn new(
        dir: PathBuf,
        container: String,
        service: String,
        stack: String,
    ) -> (Shared, tokio::sync::mpsc::Receiver<Span>) {
        let (spans, queue) = tokio::sync::mpsc::channel(SPAN_QUEUE);
        let links = Arc::new(Links::default());
        let shared = Shared {
            spans,
            clients: Clients::new(links.clone()),
            links,
            dir,
            container,
            service,
            stack,
            view: RwLock::new(View::default()),
            endpoints: Mutex::new(HashMap::new()),
            budgets: Mutex::new(HashMap::new()),
            stats: Mutex::new(HashMap::new()),
        };
        shared.reload();
        (shared, queue)
    }

    /// The L7 policy verdict on a request (or, without method and path, a connection) from
    /// `from` to this sidecar's service on `port`.
    pub fn admit(
        &self,
        from: Ipv4Addr,
        port: u16,
        method: Option<&str>,
        path: Option<&str>,
        mtls: bool,
    ) -> plumb_core::policy::l7::L7Verdict {
        use plumb_core::policy::l7::{evaluate, L7Verdict, Request};
        let Ok(view) = self.view.read() else {
            return L7Verdict {
                allowed: false,
                policies: Vec::new(),
                summary: "the sidecar's view is broken".into(),
            };
        };
        let Some(desired) = view.desired.as_ref() else {
            return L7Verdict {
                allowed: true,
                policies: Vec::new(),
                summary: "no stack yet".into(),
            };
        };
        let req = Request {
            from,
            to_service: &self.service,
            port,
            method,
            path,
            mtls,
        };
        evaluate(desired, &view.policies, &req)
    }

    /// The mesh's TLS, once its files could be read.
    pub fn tls(&self) -> Option<Arc<super::tls::MeshTls>> {
        self.links.tls.read().ok()?.clone()
    }

    pub fn emit(&self, span: Span) {
        let _ = self.spans.try_send(span);
    }

    /// False with `tracing = "off"`: no spans, `traceparent` left as it came.
    pub fn tracing(&self) -> bool {
        self.view
            .read()
            .is_ok_and(|v| v.desired.as_ref().and_then(|d| d.tracing.as_deref()) != Some(plumb_core::spec::TRACING_OFF))
    }

    /// Where spans go: the stack's collector, else the supervisor's receiver on the
    /// container's gateway.
    pub fn export_to(&self) -> Option<SocketAddrV4> {
        let view = self.view.read().ok()?;
        let desired = view.desired.as_ref()?;
        if let Some(url) = &desired.tracing {
            return url.strip_prefix("http://")?.parse().ok().or_else(|| {
                let ip: Ipv4Addr = url.strip_prefix("http://")?.parse().ok()?;
                Some(SocketAddrV4::new(ip, 80))
            });
        }
        let own = desired.containers.iter().find(|c| c.name == self.container)?;
        Some(SocketAddrV4::new(own.gateway?, plumb_core::mesh::OTLP_PORT))
    }

    /// Reads the stack again if the supervisor's files changed since.
    pub fn reload(&self) {
        let mtime = |p: PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let ca = super::pki::dir(&self.dir).join("ca.crt");
        let stamps = (
            mtime(runfile::run_path(&self.dir)),
            mtime(runfile::status_path(&self.dir)),
            mtime(ca),
        );
        if self
            .view
            .read()
            .is_ok_and(|v| v.stamps == stamps && v.desired.is_some())
        {
            return;
        }
        let run = runfile::read_run(&self.dir);
        let status = runfile::read_status(&self.dir);
        let Some(desired) = run.desired else { return };
        let unready = status.unready(&desired);
        let directory = Directory::of(&desired, &unready, &self.container);
        let policies = plumb_core::policy::compile(&desired);
        if let Ok(mut d) = self.links.directory.write() {
            *d = Arc::new(directory.clone());
        }
        if stamps.2 != self.view.read().ok().and_then(|v| v.stamps.2) || self.tls().is_none() {
            match super::tls::MeshTls::load(&super::pki::dir(&self.dir), &self.service) {
                Ok(tls) => {
                    if let Ok(mut t) = self.links.tls.write() {
                        *t = Some(Arc::new(tls));
                    }
                }
                Err(e) => eprintln!("no mutual TLS: {e}"),
            }
        }
        if let Ok(mut v) = self.view.write() {
            *v = View {
                desired: Some(desired),
                directory,
                policies,
                stamps,
            };
        }
    }

    /// The service at `ip` and the route of a request for `path` to it.
    pub fn route_to(&self, ip: Ipv4Addr, path: &str) -> Option<(String, RouteSpec)> {
        let view = self.view.read().ok()?;
        let service = view.directory.service_at(ip)?.to_string();
        let routes = view.desired.as_ref().map_or(&[][..], |d| d.routes.as_slice());
        let route = route_for(routes, &service, path);
        Some((service, route))
    }

    /// The endpoint of `service` the next attempt goes to (on `port`): one not `tried` yet
    /// for this request, if there is one.
    pub fn pick(&self, service: &str, port: u16, tried: &[Ipv4Addr]) -> Option<SocketAddrV4> {
        let mut ready: Vec<Ipv4Addr> = {
            let view = self.view.read().ok()?;
            view.directory.endpoints(service).iter().map(|(_, a)| *a).collect()
        };
        if ready.iter().any(|a| !tried.contains(a)) {
            ready.retain(|a| !tried.contains(a));
        }
        if ready.is_empty() {
            return None;
        }
        let mut all = self.endpoints.lock().ok()?;
        let known = all.entry(service.to_string()).or_default();
        known.retain(|a, _| ready.contains(a));
        let list: Vec<Endpoint> = ready.iter().map(|a| known.entry(*a).or_default().clone()).collect();
        let i = pick(&list, Instant::now(), (rand::random(), rand::random()))?;
        let address = ready[i];
        if let Some(e) = known.get_mut(&address) {
            e.pending += 1;
        }
        Some(SocketAddrV4::new(address, port))
    }

    /// Records how an attempt on `endpoint` went.
    pub fn record(
        &self,
        service: &str,
        endpoint: SocketAddrV4,
        rtt: Duration,
        outcome: Outcome,
        route: &RouteSpec,
        _status: Option<u16>,
    ) {
        let Ok(mut all) = self.endpoints.lock() else { return };
        let Some(e) = all.get_mut(service).and_then(|m| m.get_mut(endpoint.ip())) else {
            return;
        };
        e.pending = e.pending.saturating_sub(1);
        if e.record(Instant::now(), rtt, outcome, route.eject_after, route.eject_for) {
            if let Ok(mut s) = self.stats.lock() {
                s.entry(route_key("outbound", service, route.path.as_deref()))
                    .or_default()
                    .ejections += 1;
            }
            eprintln!(
                "ejected {service} endpoint {} for {:?} after {} failure(s) in a row",
                endpoint.ip(),
                route.eject_for,
                route.eject_after
            );
        }
    }

    /// Counts one request through the sidecar.
    pub fn observe(
        &self,
        direction: &str,
        service: &str,
        route: Option<&str>,
        status: Option<u16>,
        seconds: f64,
        retries: u32,
    ) {
        if let Ok(mut s) = self.stats.lock() {
            let r = s.entry(route_key(direction, service, route)).or_default();
            r.observe(status, seconds);
            r.retries += u64::from(retries);
        }
    }

    /// The replicas this sidecar has ejected, with when each comes back (Unix ms).
    fn ejected(&self) -> std::collections::BTreeMap<String, u64> {
        let now = Instant::now();
        let now_ms = crate::runfile::unix_ms();
        let mut out = std::collections::BTreeMap::new();
        let Ok(view) = self.view.read() else { return out };
        let Ok(all) = self.endpoints.lock() else { return out };
        for (service, endpoints) in all.iter() {
            for (ip, e) in endpoints {
                let Some(until) = e.ejected_until.filter(|u| *u > now) else {
                    continue;
                };
                let container = view
                    .directory
                    .endpoints(service)
                    .iter()
                    .find(|(_, a)| a == ip)
                    .map(|(c, _)| c.clone());
                if let Some(c) = container {
                    out.insert(c, now_ms + until.duration_since(now).as_millis() as u64);
                }
            }
        }
        out
    }

    /// Writes the counts so far.
    pub fn write_stats(&self) {
        let routes: Vec<(RouteKey, RouteStats)> = match self.stats.lock() {
            Ok(s) => s.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            Err(_) => return,
        };
        let out = SidecarStats {
            container: self.container.clone(),
            service: self.service.clone(),
            routes,
            ejected: self.ejected(),
        };
        let dir = stats_dir(&self.dir);
        if crate::state::create_private_dir(&dir).is_ok() {
            if let Ok(bytes) = serde_json::to_vec(&out) {
                let _ = crate::state::write_atomically(&dir.join(format!("{}.json", self.container)), &bytes);
            }
        }
    }

    pub fn budget_request(&self, service: &str, route: &RouteSpec) {
        if let Ok(mut b) = self.budgets.lock() {
            b.entry((service.to_string(), route.path.clone()))
                .or_insert_with(|| RetryBudget::new(route.retry_budget_percent))
                .request();
        }
    }

    pub fn budget_retry(&self, service: &str, route: &RouteSpec) -> bool {
        self.budgets.lock().is_ok_and(|mut b| {
            b.entry((service.to_string(), route.path.clone()))
                .or_insert_with(|| RetryBudget::new(route.retry_budget_percent))
                .try_retry()
        })
    }

    pub fn count_retry(&self, _service: &str, _route: &RouteSpec) {}
}

/// Sends the sidecar's spans as OTLP/HTTP (protobuf) in batches, until the sidecar ends.
pub async fn export(shared: std::sync::Arc<Shared>, mut queue: tokio::sync::mpsc::Receiver<Span>) {
    let mut batch = Vec::new();
    loop {
        let first = match queue.recv().await {
            Some(s) => s,
            None => return,
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + EXPORT_EVERY;
        while batch.len() < EXPORT_BATCH {
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let Some(to) = shared.export_to() else {
            batch.clear();
            continue;
        };
        let body = plumb_core::mesh::trace::encode(&batch);
        batch.clear();
        let mut req = hyper::Request::new(http_body_util::Full::new(bytes::Bytes::from(body)));
        *req.method_mut() = hyper::Method::POST;
        *req.uri_mut() = match format!("http://{to}/v1/traces").parse() {
            Ok(u) => u,
            Err(_) => continue,
        };
        req.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/x-protobuf"),
        );
        // A collector that is down loses this batch: spans are not worth piling up for.
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(5), shared.clients.send(req)).await {
            let _ = http_body_util::BodyExt::collect(r.into_body()).await;
        }
    }
}

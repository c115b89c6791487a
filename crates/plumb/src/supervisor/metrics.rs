//! Prometheus metrics of one stack, served by its supervisor on the address the stack file
//! names (`metrics = "127.0.0.1:9464"`; nothing is served without it) at `GET /metrics`, in the
//! text format, encoded by the `prometheus-client` crate. Each scrape reads what is true now:
//! interface counters (one netlink dump of the host ends of the containers' veths), health and
//! restarts (`status.json`), the last probe's latency, DNS queries, the connections each VIP
//! endpoint received and the packets each policy's default-deny dropped (one listing of the
//! stack's nft table). The HTTP side is the least a scraper needs: one request per connection.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::socket::{shutdown, Shutdown};
use plumb_core::firewall::{self, tables_in_listing};
use plumb_core::kernel::Kernel;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::runfile::{self, Health};

/// The last health probe's duration of each container, in seconds, as the probes report it.
pub type ProbeTimes = Arc<Mutex<BTreeMap<String, f64>>>;

type Labels = Vec<(&'static str, String)>;

/// What a scrape reads besides the files of the stack's folder.
#[derive(Clone)]
pub struct Sources {
    pub stack: String,
    pub dir: PathBuf,
    pub probes: ProbeTimes,
    pub dns: Arc<plumb_dns::Stats>,
}

/// The metrics server, on its own thread.
pub struct Server {
    pub address: SocketAddrV4,
    listener: Arc<TcpListener>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn start(address: SocketAddrV4, sources: Sources) -> io::Result<Server> {
        let listener = Arc::new(TcpListener::bind(address)?);
        let stop = Arc::new(AtomicBool::new(false));
        let (l, s) = (Arc::clone(&listener), Arc::clone(&stop));
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || serve(&l, &s, &sources))?;
        Ok(Server {
            address,
            listener,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept (Linux), so the thread ends and the port is free at once.
        let _ = shutdown(self.listener.as_raw_fd(), Shutdown::Read);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: &TcpListener, stop: &AtomicBool, sources: &Sources) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if let Ok(stream) = stream {
            let _ = answer(stream, sources);
        }
    }
}

/// One request, one response, then the connection closes.
fn answer(mut stream: TcpStream, sources: &Sources) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&request);
    let (status, body) = if line.starts_with("GET /metrics ") || line.starts_with("GET /metrics?") {
        ("200 OK", render(sources))
    } else {
        ("404 Not Found", "metrics are at /metrics\n".to_string())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

/// Registers a family of counters and returns it.
fn counters(registry: &mut Registry, name: &str, help: &str) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    family
}

/// The metrics text of the stack, now.
pub fn render(sources: &Sources) -> String {
    let mut registry = Registry::with_prefix("plumb");
    let run = runfile::read_run(&sources.dir);
    let status = runfile::read_status(&sources.dir);
    let desired = run.desired.unwrap_or_default();
    let mut kernel = crate::apply::kernel().ok();
    let links = kernel.as_mut().and_then(|k| k.link_counters().ok()).unwrap_or_default();

    let rx_bytes = counters(
        &mut registry,
        "container_receive_bytes",
        "Bytes the container received, all interfaces",
    );
    let tx_bytes = counters(
        &mut registry,
        "container_transmit_bytes",
        "Bytes the container sent, all interfaces",
    );
    let rx_packets = counters(
        &mut registry,
        "container_receive_packets",
        "Packets the container received",
    );
    let tx_packets = counters(
        &mut registry,
        "container_transmit_packets",
        "Packets the container sent",
    );
    let drops = counters(
        &mut registry,
        "container_dropped_packets",
        "Packets dropped on the container's veths",
    );
    let healthy = Family::<Labels, Gauge>::default();
    registry.register(
        "container_healthy",
        "1 when the process runs and its health check, if any, passes (always 1 without a process)",
        healthy.clone(),
    );
    let restarts = counters(
        &mut registry,
        "container_restarts",
        "Times the container's process was restarted",
    );
    let probe_seconds = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    registry.register(
        "container_probe_duration_seconds",
        "How long the last health probe took",
        probe_seconds.clone(),
    );
    let probes = sources.probes.lock().map(|p| p.clone()).unwrap_or_default();
    // A replica with limits has a cgroup: its CPU time, memory and OOM kills.
    let cpu_seconds = Family::<Labels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
    registry.register(
        "container_cpu_seconds",
        "CPU time the container's processes used (containers with resource limits)",
        cpu_seconds.clone(),
    );
    let memory_bytes = Family::<Labels, Gauge>::default();
    registry.register(
        "container_memory_bytes",
        "Memory charged to the container's cgroup now (containers with resource limits)",
        memory_bytes.clone(),
    );
    let oom_kills = counters(
        &mut registry,
        "container_oom_kills",
        "Processes of the container the kernel's OOM killer ended (containers with resource limits)",
    );

    for c in &desired.containers {
        let labels: Labels = vec![
            ("stack", sources.stack.clone()),
            ("service", c.service.clone()),
            ("container", c.name.clone()),
        ];
        for stat in c.interfaces.iter().filter_map(|i| links.get(&i.host_veth)) {
            // The host end sends what the container receives.
            rx_bytes.get_or_create(&labels).inc_by(stat.tx_bytes);
            tx_bytes.get_or_create(&labels).inc_by(stat.rx_bytes);
            rx_packets.get_or_create(&labels).inc_by(stat.tx_packets);
            tx_packets.get_or_create(&labels).inc_by(stat.rx_packets);
            drops.get_or_create(&labels).inc_by(stat.rx_dropped + stat.tx_dropped);
        }
        let replica = status.replicas.get(&c.name);
        let up = match replica {
            None => c.process.is_none(),
            Some(r) => r.is_ready() && r.health != Some(Health::Unhealthy),
        };
        healthy.get_or_create(&labels).set(i64::from(up));
        restarts
            .get_or_create(&labels)
            .inc_by(u64::from(replica.map_or(0, |r| r.restarts)));
        if let Some(secs) = probes.get(&c.name) {
            probe_seconds.get_or_create(&labels).set(*secs);
        }
        let path = plumb_core::cgroup::replica_path(&sources.stack, &c.name);
        if let Some(usage) = kernel.as_mut().and_then(|k| k.cgroup_usage(&path)) {
            cpu_seconds.get_or_create(&labels).inc_by(usage.cpu_usec as f64 / 1e6);
            memory_bytes
                .get_or_create(&labels)
                .set(i64::try_from(usage.memory_bytes).unwrap_or(i64::MAX));
            oom_kills.get_or_create(&labels).inc_by(usage.oom_kills);
        }
    }

    let stack: Labels = vec![("stack", sources.stack.clone())];
    // The stack's DNS server's counters, one series each.
    for (name, help, value) in [
        (
            "dns_queries",
            "Queries the stack's DNS server took",
            &sources.dns.queries,
        ),
        (
            "dns_forwarded_queries",
            "Queries sent on to the upstream resolvers",
            &sources.dns.forwarded,
        ),
        (
            "dns_rate_limited_queries",
            "Queries for outside names refused (REFUSED) because their asker was past its rate",
            &sources.dns.rate_limited,
        ),
        (
            "dns_tcp_connections_refused",
            "TCP connections closed as they came: their asker, or everyone, had too many open",
            &sources.dns.tcp_refused,
        ),
    ] {
        counters(&mut registry, name, help)
            .get_or_create(&stack)
            .inc_by(value.load(Ordering::Relaxed));
    }

    let listing = kernel.as_mut().and_then(|k| k.nft_ruleset().ok());
    let table = listing
        .as_deref()
        .and_then(tables_in_listing)
        .and_then(|mut t| t.remove(&firewall::vips::table_of(&sources.stack)))
        .unwrap_or_default();
    let lb = counters(
        &mut registry,
        "lb_backend_connections",
        "Connections a VIP sent to each replica",
    );
    for (container, n) in firewall::vips::endpoint_counts(&table) {
        let service = desired
            .container(&container)
            .map(|c| c.service.clone())
            .unwrap_or_default();
        let labels: Labels = vec![
            ("stack", sources.stack.clone()),
            ("service", service),
            ("container", container),
        ];
        lb.get_or_create(&labels).inc_by(n);
    }
    let denied = counters(
        &mut registry,
        "policy_dropped_packets",
        "Packets a service's default-deny dropped, by direction",
    );
    for ((direction, service), n) in firewall::policy_deny_counts(&table) {
        let labels: Labels = vec![
            ("stack", sources.stack.clone()),
            ("service", service),
            ("direction", direction),
        ];
        denied.get_or_create(&labels).inc_by(n);
    }

    autoscale(&mut registry, sources);
    mesh(&mut registry, sources, &desired);

    let mut text = String::new();
    let _ = encode(&mut text, &registry);
    prometheus_text(&text)
}

/// What the autoscaler saw and decided at its last tick (`autoscale.json`).
fn autoscale(registry: &mut Registry, sources: &Sources) {
    type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;
    let file = runfile::read_autoscale(&sources.dir);
    let current = Family::<Labels, Gauge>::default();
    registry.register(
        "autoscale_current_replicas",
        "Replicas an autoscaled service runs",
        current.clone(),
    );
    let desired = Family::<Labels, Gauge>::default();
    registry.register(
        "autoscale_desired_replicas",
        "Replicas the autoscaler decided at its last tick",
        desired.clone(),
    );
    let value = Family::<Labels, FloatGauge>::default();
    registry.register(
        "autoscale_metric_value",
        "A target's measure per ready replica at the autoscaler's last tick (cpu in percent of the cpus limit)",
        value.clone(),
    );
    let target = Family::<Labels, FloatGauge>::default();
    registry.register(
        "autoscale_metric_target",
        "A target's value per replica",
        target.clone(),
    );
    for s in &file.services {
        let labels: Labels = vec![("stack", sources.stack.clone()), ("service", s.service.clone())];
        current.get_or_create(&labels).set(i64::from(s.current));
        desired.get_or_create(&labels).set(i64::from(s.desired));
        for m in &s.metrics {
            let mut labels = labels.clone();
            labels.push(("metric", m.metric.clone()));
            target.get_or_create(&labels).set(m.target);
            if let Some(v) = m.value {
                value.get_or_create(&labels).set(v);
            }
        }
    }
}

/// The sidecars' counts per route (what they last wrote to `mesh-stats/`).
fn mesh(registry: &mut Registry, sources: &Sources, desired: &plumb_core::Desired) {
    let stats = read_mesh_stats(&sources.dir, desired);
    if stats.is_empty() {
        return;
    }
    let requests = counters(
        registry,
        "mesh_requests",
        "HTTP requests through the sidecars, by route",
    );
    let responses = counters(
        registry,
        "mesh_responses",
        "Responses by status class (none: no response)",
    );
    let retries = counters(registry, "mesh_retries", "Requests the sidecars sent again");
    let ejections = counters(
        registry,
        "mesh_ejections",
        "Times an endpoint was ejected after failures in a row",
    );
    let latency = Family::<Labels, SnapshotHistogram>::default();
    registry.register(
        "mesh_request_duration_seconds",
        "Latency of requests through the sidecars, as the caller saw it",
        latency.clone(),
    );
    for s in &stats {
        for (key, r) in &s.routes {
            let labels: Labels = vec![
                ("stack", sources.stack.clone()),
                ("container", s.container.clone()),
                ("direction", key.direction.clone()),
                ("service", key.service.clone()),
                ("route", key.route.clone()),
            ];
            requests.get_or_create(&labels).inc_by(r.requests);
            retries.get_or_create(&labels).inc_by(r.retries);
            ejections.get_or_create(&labels).inc_by(r.ejections);
            for (class, n) in &r.responses {
                let mut l = labels.clone();
                l.push(("class", class.clone()));
                responses.get_or_create(&l).inc_by(*n);
            }
            latency.get_or_create(&labels).set(r);
        }
    }
}

/// The counts each meshed container's sidecar last wrote.
pub fn read_mesh_stats(
    dir: &std::path::Path,
    desired: &plumb_core::Desired,
) -> Vec<plumb_core::mesh::stats::SidecarStats> {
    let folder = dir.join("mesh-stats");
    desired
        .containers
        .iter()
        .filter(|c| c.mesh)
        .filter_map(|c| std::fs::read(folder.join(format!("{}.json", c.name))).ok())
        .filter_map(|b| serde_json::from_slice(&b).ok())
        .collect()
}

/// A histogram's sum, count and (upper bound, count) per bucket.
type HistogramValues = (f64, u64, Vec<(f64, u64)>);

/// A histogram whose buckets a sidecar counted: set whole at each scrape.
#[derive(Debug, Default)]
struct SnapshotHistogram(Mutex<HistogramValues>);

impl SnapshotHistogram {
    fn set(&self, r: &plumb_core::mesh::stats::RouteStats) {
        use plumb_core::mesh::stats::BUCKETS;
        let bounds = BUCKETS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds.zip(r.latency_buckets.iter().copied()).collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        if let Ok(mut h) = self.0.lock() {
            *h = (r.latency_sum_seconds, count, buckets);
        }
    }
}

impl prometheus_client::metrics::TypedMetric for SnapshotHistogram {
    const TYPE: prometheus_client::metrics::MetricType = prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for SnapshotHistogram {
    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder) -> std::fmt::Result {
        let h = self.0.lock().map_err(|_| std::fmt::Error)?;
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(h.0, h.1, &h.2, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Histogram
    }
}

/// The crate writes OpenMetrics; scrapers and `promtool check metrics` read the Prometheus
/// text format too, where a counter's HELP and TYPE name the series itself (`x_total`), and
/// there is no `# EOF`.
fn prometheus_text(open_metrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 64);
    for line in open_metrics.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{tag}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_are_named_by_their_series_in_the_prometheus_format() {
        let open = "# HELP a_bytes Bytes.\n# TYPE a_bytes counter\na_bytes_total{x=\"1\"} 5\n# HELP g Up.\n# TYPE g gauge\ng 1\n# EOF\n";
        assert_eq!(
            super::prometheus_text(open),
            "# HELP a_bytes_total Bytes.\n# TYPE a_bytes_total counter\na_bytes_total{x=\"1\"} 5\n# HELP g Up.\n# TYPE g gauge\ng 1\n"
        );
    }
}

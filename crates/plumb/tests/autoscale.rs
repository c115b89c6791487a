//! The autoscaler with real load: `plumb bench --rate` from a client container ramps a
//! service with a `requests_per_second` target; the supervisor scales it up to the count the
//! measured rate asks for (new replicas join the VIP once ready), and back down to `min`
//! once the load falls and the scale-down window has passed (removed replicas leave the VIP
//! and drain first). Not one request fails across the scale up and the scale down; the
//! decisions are in `plumb autoscale status` and `plumb events`; `down` leaves nothing.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// One answer per connection ("Connection: close"), saying which replica served it: at L4
/// each request is then a connection the VIP's counters see. Each answer takes 300 ms, so
/// that requests are under way when a replica is removed (SIGTERM ends this server at once:
/// only the drain lets them finish).
const SERVER: &str = r#"
import http.server, os, time
name = "web-" + os.environ["PLUMB_REPLICA"]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        time.sleep(0.3)
        body = name.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.send_header("X-Served-By", name)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 80), Handler).serve_forever()
"#;

const TARGET: f64 = 10.0;
const MIN: u64 = 1;
const MAX: u64 = 5;

fn stack() -> String {
    format!(
        r#"
name = "as"
metrics = "127.0.0.1:9473"
[networks.n]
subnet = "10.89.73.0/24"
[services.web]
expose = [80]
command = ["python3", "-u", "server.py"]
health = {{ tcp = 80, interval = "200ms" }}
stop_grace = "2s"
[services.web.autoscale]
min = {MIN}
max = {MAX}
requests_per_second = {TARGET}
scale_down_window = "5s"
[services.client]
lb = "none"
"#
    )
}

/// `plumb bench` at `rate` for `seconds` from the client to the service's VIP: its report.
fn bench(sb: &Sandbox, rate: u32, seconds: u32) -> Value {
    let (rate, duration) = (rate.to_string(), format!("{seconds}s"));
    bench_with(sb, &["--rate", &rate, "--duration", &duration, "--connections", "16"])
}

/// `plumb bench http://web/ --from client ARGS --json`: its report.
fn bench_with(sb: &Sandbox, more: &[&str]) -> Value {
    let mut args = vec!["bench", "http://web/", "--from", "client"];
    args.extend_from_slice(more);
    args.push("--json");
    let out = sb.plumb(&args);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "plumb {args:?}: {e}\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

/// Every request of the run was answered with 200.
fn assert_no_failure(report: &Value) {
    assert_eq!(report["errors"].as_object().map(|e| e.len()), Some(0), "{report:#}");
    let requests = report["requests"].as_u64().unwrap();
    assert!(requests > 0, "{report:#}");
    assert_eq!(report["responses"]["200"].as_u64(), Some(requests), "{report:#}");
}

/// The service's line of `plumb autoscale status --json`.
fn status(sb: &Sandbox) -> Value {
    let rows: Value = serde_json::from_str(&sb.plumb_ok(&["autoscale", "status", "--json"])).unwrap();
    rows.as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "web")
        .cloned()
        .unwrap_or_else(|| panic!("no autoscaled web in {rows:#}"))
}

/// The replicas of web that run (processes), from `plumb ps`.
fn running(sb: &Sandbox) -> usize {
    sb.ps()
        .iter()
        .filter(|c| c["service"] == "web" && c["process"]["pid"].as_u64().is_some())
        .count()
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root: run scripts/test")]
fn load_scales_the_service_up_to_what_the_rate_asks_and_back_to_min_without_a_failed_request() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("server.py", SERVER);
    sb.write("plumb.toml", &stack());
    sb.plumb_ok(&["up", "--wait"]);
    assert_eq!(running(&sb), MIN as usize);
    let before = status(&sb);
    assert_eq!(before["current"], MIN, "{before:#}");
    assert_eq!(before["min"], MIN);
    assert_eq!(before["max"], MAX);

    // A load step of 2.5 times the target per replica: 3 replicas (ceil(2.5)); at 3 each
    // gets 8.3/s, which asks for ceil(0.83 × 3) = 3 again, so the count settles there.
    let up = bench(&sb, 25, 20);
    assert_no_failure(&up);
    let measured = up["rps"].as_f64().unwrap();
    let expected = ((measured / TARGET).ceil() as u64).clamp(MIN, MAX);
    let after_load = status(&sb);
    assert_eq!(after_load["current"], expected, "measured {measured}/s: {after_load:#}");
    assert_eq!(running(&sb), expected as usize);
    // Up in one step or more (a tick that saw only part of the step asks for less), each
    // applied, none past the count the rate asks for.
    let decisions = after_load["decisions"].as_array().unwrap().clone();
    assert_eq!(decisions[0]["from"].as_u64(), Some(MIN), "{after_load:#}");
    assert!(
        decisions
            .iter()
            .all(|d| d["to"].as_u64() > d["from"].as_u64() && d["outcome"] == "done"),
        "{after_load:#}"
    );
    assert_eq!(
        decisions.last().unwrap()["to"].as_u64(),
        Some(expected),
        "{after_load:#}"
    );
    assert!(
        decisions[0]["reason"].as_str().unwrap().contains("requests_per_second"),
        "{after_load:#}"
    );
    // The new replicas served: the balancer sent them requests once they were ready.
    let served = up["replicas"].as_object().unwrap();
    assert_eq!(served.len() as u64, expected, "{up:#}");
    // `up` of the same file (no replicas: it starts at min) keeps the autoscaled count.
    let plan = sb.plumb_ok(&["up", "--dry-run"]);
    assert!(!plan.contains("remove its namespace"), "{plan}");
    let metric = &after_load["metrics"][0];
    assert_eq!(metric["metric"], "requests_per_second");
    assert_eq!(metric["target"], TARGET);

    // Light load (0.8 of one replica's target): after the 5 s window the service goes back
    // to min while requests still flow; removed replicas leave the VIP and drain first.
    let down = bench(&sb, 8, 15);
    eprintln!("down: {} {}", down["errors"], down["replicas"]);
    assert_no_failure(&down);
    assert!(
        eventually(Duration::from_secs(30), || status(&sb)["current"] == MIN),
        "{:#}",
        status(&sb)
    );
    assert!(eventually(Duration::from_secs(10), || running(&sb) == MIN as usize));
    let last = status(&sb);
    let decisions = last["decisions"].as_array().unwrap();
    let scaled_down = decisions.last().unwrap();
    assert_eq!(scaled_down["to"], MIN, "{last:#}");
    assert!(scaled_down["reason"].as_str().unwrap().contains("scaling"), "{last:#}");

    // The decisions are events too, and the status table shows them.
    let events = sb.plumb_ok(&["events", "as", "--json"]);
    let autoscaled: Vec<Value> = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "autoscaled")
        .collect();
    assert!(autoscaled.len() >= 2, "{events}");
    assert!(
        autoscaled[0]["detail"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{MIN} -> ")),
        "{events}"
    );
    assert!(
        autoscaled
            .iter()
            .any(|e| e["detail"].as_str().unwrap().contains(&format!(" -> {expected}: "))),
        "{events}"
    );
    // The replicas that went drained first: out of the VIP before they were stopped.
    let all: Vec<Value> = events.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    for gone in (MIN + 1)..=expected {
        let name = format!("web-{gone}");
        let of = |kind: &str| {
            all.iter()
                .rposition(|e| e["container"] == name.as_str() && e["event"] == kind)
        };
        let (draining, exited) = (of("draining"), of("exited"));
        assert!(draining.is_some() && draining < exited, "{name}: {events}");
    }
    let table = sb.plumb_ok(&["autoscale", "status"]);
    // And metrics series.
    let metrics = sb.ok("python3 -c 'import urllib.request; print(urllib.request.urlopen(\"http://127.0.0.1:9473/metrics\").read().decode())'");
    for series in [
        "plumb_autoscale_current_replicas{stack=\"as\",service=\"web\"} 1",
        "plumb_autoscale_desired_replicas{stack=\"as\",service=\"web\"} 1",
        "plumb_autoscale_metric_target{stack=\"as\",service=\"web\",metric=\"requests_per_second\"} 10.0",
        "plumb_autoscale_metric_value{stack=\"as\",service=\"web\",metric=\"requests_per_second\"} ",
    ] {
        assert!(metrics.contains(series), "{series} in\n{metrics}");
    }
    eprintln!("up: {measured}/s, down: {}/s\n{table}", down["rps"]);
    assert!(table.contains("requests_per_second"), "{table}");
    assert!(table.contains(&format!(" -> {expected}  ")), "{table}");

    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

/// A `cpu` target reads each replica's cgroup: a busy loop held at its `cpus = 0.05` runs at
/// about 100% of its limit, twice a 50% target, so the service grows to max (and, busy as it
/// stays, is never scaled down); the status shows the measure.
#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root: run scripts/test")]
fn a_busy_service_scales_on_its_cpu_share() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write(
        "plumb.toml",
        r#"
name = "ascpu"
[networks.n]
subnet = "10.89.74.0/24"
[services.spin]
cpus = 0.05
expose = [80]
command = ["/bin/sh", "-c", "while :; do :; done"]
stop_grace = "1s"
[services.spin.autoscale]
max = 2
cpu = "50%"
"#,
    );
    sb.plumb_ok(&["up"]);
    let status = || {
        let rows: Value = serde_json::from_str(&sb.plumb_ok(&["autoscale", "status", "--json"])).unwrap();
        rows[0].clone()
    };
    assert!(
        eventually(Duration::from_secs(30), || status()["current"] == 2),
        "{:#}",
        status()
    );
    let s = status();
    let decision = &s["decisions"][0];
    assert_eq!(
        (decision["from"].as_u64(), decision["to"].as_u64()),
        (Some(1), Some(2)),
        "{s:#}"
    );
    assert!(decision["reason"].as_str().unwrap().starts_with("cpu "), "{s:#}");
    let cpu = s["metrics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["metric"] == "cpu")
        .cloned()
        .unwrap();
    assert_eq!(cpu["target"].as_f64(), Some(50.0));
    // Held near its limit (the host may give it less when busy, never much more).
    let value = cpu["value"].as_f64().unwrap_or_else(|| panic!("{s:#}"));
    assert!(value > 55.0 && value < 150.0, "{s:#}");
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

/// A `connections` target counts each replica's established connections through the VIP
/// (conntrack): 12 keep-alive connections to one replica, 2.4 times a target of 5, ask for
/// 3 replicas; the load keeps flowing without a failure while the service grows.
#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root: run scripts/test")]
fn open_connections_scale_the_service() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write(
        "server.py",
        r#"
import http.server
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 80), Handler).serve_forever()
"#,
    );
    sb.write(
        "plumb.toml",
        r#"
name = "asconn"
[networks.n]
subnet = "10.89.75.0/24"
[services.web]
expose = [80]
command = ["python3", "server.py"]
health = { tcp = 80, interval = "200ms" }
[services.web.autoscale]
max = 4
connections = 5
[services.client]
lb = "none"
"#,
    );
    sb.plumb_ok(&["up", "--wait"]);
    let report = bench_with(&sb, &["--rate", "24", "--duration", "12s", "--connections", "12"]);
    assert_no_failure(&report);
    let s = status(&sb);
    assert_eq!(s["current"], 3, "{s:#}");
    let decisions = s["decisions"].as_array().unwrap();
    assert_eq!(decisions.last().unwrap()["to"], 3, "{s:#}");
    assert!(
        decisions[0]["reason"].as_str().unwrap().starts_with("connections "),
        "{s:#}"
    );
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

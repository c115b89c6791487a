//! The service mesh with real packets: replicas' TCP goes through their sidecars without the
//! application knowing (it connects to the plain name and port), and `down` leaves nothing.

mod common;

use std::time::Duration;

use common::*;

/// Answers each connection with `NAME from PEER` (PEER: the address the connection came from).
const ECHO_PEER: &str = r#"
import socket
name = socket.gethostname()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000)); s.listen(64)
while True:
    c, a = s.accept()
    c.sendall((name + " from " + a[0] + "\n").encode())
    c.close()
"#;

fn stack(dir: &str, mesh: bool) -> String {
    format!(
        "name = \"mt\"\nmesh = {mesh}\n[networks.n]\nsubnet = \"10.62.0.0/24\"\n\
         [services.api]\nexpose = [7000]\ncommand = [\"python3\", \"{dir}/echo.py\"]\n\
         [services.client]\ncommand = [\"sleep\", \"infinity\"]\n"
    )
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn tcp_goes_through_both_sidecars_transparently_and_down_leaves_nothing() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("echo.py", ECHO_PEER);
    let dir = sb.dir.display().to_string();
    let file = sb.write("mt.toml", &stack(&dir, true));
    sb.plumb_ok(&["up", "-f", path_str(&file)]);
    let api_ip = sb.address("api-1", "eth0");
    let client_ip = sb.address("client-1", "eth0");
    let gateway = "10.62.0.1";

    // The client connects to the plain name and port, as it would without a mesh.
    let mut got = None;
    assert!(
        eventually(Duration::from_secs(20), || {
            got = sb.connect(Some("mt-client-1"), "api", 7000);
            got.is_some()
        }),
        "no answer through the mesh"
    );
    // The server's sidecar made the last hop from inside the server's own container: the
    // server sees its own address, not the client's.
    assert_eq!(got.as_deref(), Some(format!("api-1 from {api_ip}").as_str()));

    // The client's connection (to the service's VIP, the name's address) left its container
    // from its sidecar, and each container holds the interception table.
    let vip = sb.vip("mt", "api");
    let held = sb.ok(&format!(
        "ip netns exec mt-client-1 python3 -c \"import socket,time; c=socket.create_connection(('api',7000)); time.sleep(3)\" & sleep 1; ip netns exec mt-client-1 ss -Htnp dst {vip}; wait"
    ));
    assert!(
        held.contains(&format!("{vip}:7000")) && held.contains("\"plumb-proxy\""),
        "{held}"
    );
    // The sidecar runs under its replica's limits: in the replica's cgroup.
    let proxy_pid = held
        .split("\"plumb-proxy\",pid=")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("no sidecar pid in {held}"));
    let cgroups = std::fs::read_to_string(format!("/proc/{proxy_pid}/cgroup")).unwrap();
    assert!(
        cgroups.contains(&format!("{}/mt/client-1\n", sb.cgroup_root)),
        "the sidecar is not in client-1's cgroup: {cgroups}"
    );
    for ns in ["mt-client-1", "mt-api-1"] {
        let table = sb.ok(&format!("ip netns exec {ns} nft list table inet plumb_mesh"));
        assert!(
            table.contains("redirect to :15001") && table.contains("redirect to :15006"),
            "{table}"
        );
    }

    // The mesh off again (the containers are remade without it): the server sees the client
    // (through the VIP's NAT: the network's gateway), or directly the client's address.
    let file = sb.write("mt.toml", &stack(&dir, false));
    sb.plumb_ok(&["up", "-f", path_str(&file)]);
    let expected = format!("api-1 from {gateway}");
    assert!(
        eventually(Duration::from_secs(20), || sb
            .connect(Some("mt-client-1"), "api", 7000)
            .as_deref()
            == Some(expected.as_str())),
        "still proxied after the mesh was turned off: {:?}",
        sb.connect(Some("mt-client-1"), "api", 7000)
    );
    assert!(!sb
        .sh("ip netns exec mt-api-1 nft list table inet plumb_mesh")
        .status
        .success());
    let direct = sb.connect(Some("mt-client-1"), &api_ip, 7000);
    assert_eq!(direct, Some(format!("api-1 from {client_ip}")));

    // On again, then down: nothing left (namespaces, links, tables, sidecars).
    let file = sb.write("mt.toml", &stack(&dir, true));
    sb.plumb_ok(&["up", "-f", path_str(&file)]);
    assert!(eventually(Duration::from_secs(20), || sb
        .connect(Some("mt-client-1"), "api", 7000)
        .is_some()));
    sb.plumb_ok(&["down", "mt"]);
    sb.assert_clean();
}

/// An HTTP server: `/` answers its replica's name (500 while the file `fail-NAME` exists next
/// to it, except `/health`: the failure is one the health check does not see; 50 ms late
/// while `slow-NAME` exists), `/flaky` fails every other request (500, 200, 500, ...), `/slow` answers after 3 s.
/// Each request but `/health` is counted in `hits-NAME`.
const HTTP_SERVER: &str = r#"
import os, socket, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
name = socket.gethostname()
here = os.path.dirname(os.path.abspath(__file__))
lock = threading.Lock()
count = {"flaky": 0, "all": 0}
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        if self.path != "/health":
            with lock:
                count["all"] += 1
                open(os.path.join(here, "hits-" + name), "w").write(str(count["all"]))
        n = int(self.headers.get("content-length") or 0)
        if n:
            self.rfile.read(n)
        status = 200
        if self.path.startswith("/slow"):
            time.sleep(3)
        elif self.path.startswith("/flaky"):
            with lock:
                count["flaky"] += 1
                status = 500 if count["flaky"] % 2 == 1 else 200
        elif os.path.exists(os.path.join(here, "fail-" + name)) and self.path != "/health":
            status = 500
        elif os.path.exists(os.path.join(here, "slow-" + name)) and self.path != "/health":
            time.sleep(0.05)
        body = (name + "\n").encode()
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = answer
    do_POST = answer
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"#;

/// `req.py METHOD URL N`: N requests one after the other on one keep-alive connection (as
/// the application's HTTP client would, unaware of any proxy); prints each status and body.
const REQUEST: &str = r#"
import http.client, json, sys, urllib.parse
method, url, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
u = urllib.parse.urlsplit(url)
out = []
c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=10)
for _ in range(n):
    try:
        c.request(method, u.path or "/", body=b"x" if method == "POST" else None)
        r = c.getresponse()
        out.append([r.status, r.read().decode().strip(), r.getheader("x-plumb-proxy") or ""])
    except Exception as e:
        out.append([0, type(e).__name__, ""])
        c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=10)
print(json.dumps(out))
"#;

/// (status, body, set by the sidecar) of each request.
fn requests(sb: &Sandbox, ns: &str, method: &str, url: &str, n: u32) -> Vec<(u16, String, bool)> {
    let out = sb.ok(&format!(
        "ip netns exec {ns} python3 {}/req.py {method} {url} {n}",
        sb.dir.display()
    ));
    let v: Vec<(u16, String, String)> = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    v.into_iter().map(|(s, b, p)| (s, b, !p.is_empty())).collect()
}

fn statuses(got: &[(u16, String, bool)]) -> Vec<u16> {
    got.iter().map(|g| g.0).collect()
}

fn http_stack(dir: &str, replicas: u32, routes: &str) -> String {
    format!(
        "name = \"mh\"\nmesh = true\nmetrics = \"127.0.0.1:9477\"\n[networks.n]\nsubnet = \"10.63.0.0/24\"\n\
         [services.api]\nreplicas = {replicas}\nexpose = [8080]\ncommand = [\"python3\", \"{dir}/server.py\"]\n\
         health = {{ http = \"/health\", port = 8080, interval = \"300ms\", retries = 1 }}\n\
         [services.client]\ncommand = [\"sleep\", \"infinity\"]\n{routes}"
    )
}

fn up_http(sb: &Sandbox, replicas: u32, routes: &str) {
    sb.write("server.py", HTTP_SERVER);
    sb.write("req.py", REQUEST);
    let dir = sb.dir.display().to_string();
    let file = sb.write("mh.toml", &http_stack(&dir, replicas, routes));
    sb.plumb_ok(&["up", "-f", path_str(&file)]);
    assert!(
        eventually(Duration::from_secs(20), || requests(
            sb,
            "mh-client-1",
            "GET",
            "http://api:8080/health",
            1
        )[0]
        .0 == 200),
        "api never answered through the mesh: {}\n{}",
        sb.sh("cat state/stacks/mh/logs/client-1.log").stdout.escape_ascii(),
        sb.sh("cat state/stacks/mh/logs/api-1.log").stdout.escape_ascii()
    );
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn retries_hide_failures_of_idempotent_requests_only() {
    let Some(sb) = Sandbox::start() else { return };
    up_http(
        &sb,
        2,
        "[[routes]]\nservice = \"api\"\nretries = 1\nretry_budget = \"100%\"\neject_after = 0\n",
    );
    // One replica fails everything: idempotent requests are retried on the other one (a
    // budget of 100%: the failing replica answers fast, so P2C keeps trying it, and the
    // default budget of 20% would rightly let some failures through).
    // (api-1 answers late: the balancer prefers api-2, which fails fast, as a broken replica
    // often does.)
    sb.write("slow-api-1", "");
    sb.write("fail-api-2", "");
    let before = std::fs::read_to_string(sb.dir.join("hits-api-2")).unwrap_or_default();
    let got = requests(&sb, "mh-client-1", "GET", "http://api:8080/", 20);
    assert_eq!(statuses(&got), vec![200; 20], "{got:?}");
    assert!(got.iter().all(|g| g.1 == "api-1"), "{got:?}");
    let after = std::fs::read_to_string(sb.dir.join("hits-api-2")).unwrap_or_default();
    assert_ne!(before, after, "the failing replica was never tried: nothing was hidden");

    // The sidecars counted it: per route, in the Prometheus endpoint and `plumb top`.
    let series = |text: &str, prefix: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let client = "container=\"client-1\",direction=\"outbound\",service=\"api\",route=\"/\"";
    let api2 = "container=\"api-2\",direction=\"inbound\",service=\"api\",route=\"/\",class=\"5xx\"";
    let mut metrics = String::new();
    // (Sidecars write their counts every second: the scrape may come before the last.)
    assert!(
        eventually(Duration::from_secs(10), || {
            metrics = sb.ok("python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9477/metrics').read().decode())\"");
            series(&metrics, "plumb_mesh_retries_total{") > 0
                && series(&metrics, &format!("plumb_mesh_requests_total{{stack=\"mh\",{client}}}")) >= 20
                && series(
                    &metrics,
                    &format!("plumb_mesh_responses_total{{stack=\"mh\",{client},class=\"2xx\"}}"),
                ) >= 20
                && series(&metrics, &format!("plumb_mesh_responses_total{{stack=\"mh\",{api2}}}")) > 0
        }),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("mesh"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        metrics.contains("plumb_mesh_request_duration_seconds_bucket{le=\"0.001\",stack=\"mh\""),
        "{metrics}"
    );
    let top: serde_json::Value = serde_json::from_str(&sb.plumb_ok(&["top", "--once", "--json"])).unwrap();
    let api2 = top
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["container"] == "api-2")
        .unwrap();
    assert!(api2["mesh"]["errors_5xx"].as_u64().unwrap() > 0, "{api2}");
    let table = sb.plumb_ok(&["top", "--once"]);
    assert!(
        table.lines().next().unwrap().contains("REQS") && table.contains("5XX"),
        "{table}"
    );

    // A path that fails every other request: GETs all succeed (the retry is the next one),
    // POSTs are not retried and half of them fail.
    std::fs::remove_file(sb.dir.join("fail-api-2")).unwrap();
    std::fs::remove_file(sb.dir.join("slow-api-1")).unwrap();
    let file = sb.write(
        "mh.toml",
        &http_stack(
            &sb.dir.display().to_string(),
            1,
            "[[routes]]\nservice = \"api\"\nretries = 1\nretry_budget = \"100%\"\neject_after = 0\n",
        ),
    );
    sb.plumb_ok(&["up", "-f", path_str(&file)]);
    assert!(eventually(Duration::from_secs(20), || requests(
        &sb,
        "mh-client-1",
        "GET",
        "http://api:8080/health",
        1
    )[0]
    .0 == 200));
    let gets = requests(&sb, "mh-client-1", "GET", "http://api:8080/flaky", 10);
    assert_eq!(
        statuses(&gets),
        vec![200; 10],
        "{gets:?} {} {}",
        sb.sh("cat state/stacks/mh/logs/client-1.log").stdout.escape_ascii(),
        sb.sh("cat state/stacks/mh/logs/api-1.log").stdout.escape_ascii()
    );
    let posts = requests(&sb, "mh-client-1", "POST", "http://api:8080/flaky", 10);
    assert_eq!(statuses(&posts), [500, 200].repeat(5), "{posts:?}");
    assert!(posts.iter().all(|p| !p.2), "the 500s are the server's own, passed on");
    sb.plumb_ok(&["down", "mh"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_timeout_fires_and_a_circuit_opens_after_failures_and_closes_after_its_time() {
    let Some(sb) = Sandbox::start() else { return };
    let routes = "[[routes]]\nservice = \"api\"\neject_after = 2\neject_for = \"6s\"\n\
                  [[routes]]\nservice = \"api\"\npath = \"/slow\"\ntimeout = \"300ms\"\n\
                  [services.outsider]\nmesh = false\ncommand = [\"sleep\", \"infinity\"]\n";
    up_http(&sb, 2, routes);

    // api-2 fails, fast (api-1 is slow: the balancer prefers api-2 until it is ejected):
    // after 2 failures in a row it is ejected, and only api-1 answers.
    sb.write("slow-api-1", "");
    sb.write("fail-api-2", "");
    let got = requests(&sb, "mh-client-1", "GET", "http://api:8080/", 12);
    let failures = got.iter().filter(|g| g.0 == 500).count();
    assert_eq!(failures, 2, "{got:?}");
    assert!(
        got[got.len() - 6..].iter().all(|g| g.0 == 200 && g.1 == "api-1"),
        "{got:?}"
    );
    // The ejection feeds the VIP's ready set: a client outside the mesh, through the VIP
    // (a new connection each time), reaches only api-1 while it lasts.
    assert!(
        eventually(Duration::from_secs(3), || sb
            .ok("cat state/stacks/mh/supervisor.log")
            .contains("api-2 ejected by a sidecar")),
        "{}",
        sb.ok("cat state/stacks/mh/supervisor.log")
    );
    for _ in 0..6 {
        let got = requests(&sb, "mh-outsider-1", "GET", "http://api:8080/", 1);
        assert_eq!((got[0].0, got[0].1.as_str()), (200, "api-1"), "{got:?}");
    }

    // Its time over, the circuit closes: api-2 gets a trial request again (it still fails,
    // and is ejected again at once).
    std::thread::sleep(Duration::from_millis(6500));
    let got = requests(&sb, "mh-client-1", "GET", "http://api:8080/", 6);
    assert_eq!(got.iter().filter(|g| g.0 == 500).count(), 1, "{got:?}");
    // Healthy again: it answers its share.
    std::fs::remove_file(sb.dir.join("fail-api-2")).unwrap();
    std::thread::sleep(Duration::from_millis(6500));
    let got = requests(&sb, "mh-client-1", "GET", "http://api:8080/", 10);
    assert_eq!(statuses(&got), vec![200; 10], "{got:?}");
    assert!(got.iter().any(|g| g.1 == "api-2"), "{got:?}");

    // The route's timeout: the sidecar answers 504 itself; other paths are not bounded by it.
    let slow = requests(&sb, "mh-client-1", "GET", "http://api:8080/slow", 1);
    assert_eq!((slow[0].0, slow[0].2), (504, true), "{slow:?}");
    sb.plumb_ok(&["down", "mh"]);
    sb.assert_clean();
}

/// `relay.py NEXT`: an HTTP server on 8080 that asks `http://NEXT:8080/` (forwarding the
/// request's `traceparent`, as any service in a traced mesh must) and answers with what it
/// got; with no NEXT it answers its own name.
const RELAY: &str = r#"
import os, socket, sys, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
name = socket.gethostname()
nxt = sys.argv[1] if len(sys.argv) > 1 else ""
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        body = name
        if nxt and self.path != "/health":
            req = urllib.request.Request("http://" + nxt + ":8080" + self.path)
            tp = self.headers.get("traceparent")
            if tp:
                req.add_header("traceparent", tp)
            body = name + " > " + urllib.request.urlopen(req, timeout=10).read().decode()
        data = body.encode()
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass
ThreadingHTTPServer(("0.0.0.0", 8080), H).serve_forever()
"#;

/// A collector of its own: stores each POST's path, content type and body (hex) as a line.
const COLLECTOR: &str = r#"
import os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
out = sys.argv[1]
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with open(out, "a") as f:
            f.write(self.path + " " + (self.headers.get("content-type") or "") + " " + body.hex() + "\n")
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
HTTPServer(("0.0.0.0", 4318), H).serve_forever()
"#;

fn chain_stack(dir: &str, tracing: &str) -> String {
    let svc = |name: &str, next: &str| {
        format!(
            "[services.{name}]\nexpose = [8080]\ncommand = [\"python3\", \"{dir}/relay.py\", \"{next}\"]\n\
             health = {{ http = \"/health\", port = 8080, interval = \"300ms\" }}\n"
        )
    };
    format!(
        "name = \"tr\"\nmesh = true\n{tracing}[networks.n]\nsubnet = \"10.64.0.0/24\"\n{}{}{}\
         [services.client]\ncommand = [\"sleep\", \"infinity\"]\n\
         [services.collector]\nmesh = false\nnetworks = {{ n = {{ ip = \"10.64.0.50\" }} }}\n\
         command = [\"python3\", \"{dir}/collector.py\", \"{dir}/exported\"]\n",
        svc("a", "b"),
        svc("b", "c"),
        svc("c", "")
    )
}

/// A trace's spans as (depth, service, kind), in the waterfall's order.
fn chain_of(spans: &[serde_json::Value]) -> Vec<(u64, &str, &str)> {
    spans
        .iter()
        .map(|s| {
            (
                s["depth"].as_u64().unwrap(),
                s["service"].as_str().unwrap(),
                s["kind"].as_str().unwrap(),
            )
        })
        .collect()
}

/// Each span in the waterfall is the parent of the next one.
fn assert_each_span_is_the_childs_parent(spans: &[serde_json::Value]) {
    for pair in spans.windows(2) {
        assert_eq!(pair[1]["parent_id"], pair[0]["span_id"], "{pair:?}");
    }
}

fn traces_json(sb: &Sandbox, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["traces", "-s", "tr", "--json"];
    all.extend_from_slice(args);
    serde_json::from_str::<serde_json::Value>(&sb.plumb_ok(&all))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_request_across_four_services_is_one_trace_and_exports_to_a_collector() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("relay.py", RELAY);
    sb.write("collector.py", COLLECTOR);
    sb.write("req.py", REQUEST);
    let dir = sb.dir.display().to_string();
    let file = sb.write("tr.toml", &chain_stack(&dir, ""));
    sb.plumb_ok(&["up", "-f", path_str(&file)]);
    let mut got = Vec::new();
    assert!(
        eventually(Duration::from_secs(30), || {
            got = requests(&sb, "tr-client-1", "GET", "http://a:8080/chain", 1);
            got[0].0 == 200
        }),
        "{got:?}"
    );
    assert_eq!(got[0].1, "a-1 > b-1 > c-1");

    // The request's trace: client -> a -> b -> c, a client and a server span per hop, each
    // span the child of the one before.
    let mut listed = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            listed = traces_json(&sb, &["--service", "c"]);
            listed.iter().any(|t| t["spans"] == 6 && t["name"] == "GET /chain")
        }),
        "{listed:?}"
    );
    let trace = listed
        .iter()
        .find(|t| t["spans"] == 6 && t["name"] == "GET /chain")
        .unwrap();
    assert_eq!(trace["service"], "client");
    let id = trace["trace_id"].as_str().unwrap().to_string();
    let shown: serde_json::Value = serde_json::from_str(&sb.plumb_ok(&["traces", "show", &id, "--json"])).unwrap();
    let spans = shown["spans"].as_array().unwrap();
    assert_eq!(
        chain_of(spans),
        [
            (0, "client", "client"),
            (1, "a", "server"),
            (2, "a", "client"),
            (3, "b", "server"),
            (4, "b", "client"),
            (5, "c", "server")
        ]
    );
    assert_each_span_is_the_childs_parent(spans);
    for span in spans {
        assert_eq!(span["trace_id"], id.as_str());
    }
    // A child starts within its parent and ends before it.
    for pair in spans.windows(2) {
        assert!(pair[1]["start_ns"].as_u64() >= pair[0]["start_ns"].as_u64());
        assert!(pair[1]["end_ns"].as_u64() <= pair[0]["end_ns"].as_u64());
    }
    let waterfall = sb.plumb_ok(&["traces", "show", &id]);
    let lines: Vec<&str> = waterfall.lines().collect();
    assert!(lines[0].contains(&id) && lines[1].starts_with("SPAN"), "{waterfall}");
    assert!(
        lines[2].starts_with("client GET /chain") && lines[7].starts_with("          c GET /chain"),
        "{waterfall}"
    );
    assert!(traces_json(&sb, &["--min-duration", "1h"]).is_empty());
    assert!(!sb.plumb(&["traces", "show", "nothex"]).status.success());

    // With a collector configured the sidecars export there (OTLP protobuf), not to plumb.
    let file = sb.write("tr.toml", &chain_stack(&dir, "tracing = \"http://10.64.0.50:4318\"\n"));
    sb.plumb_ok(&["up", "-f", path_str(&file)]);
    assert!(eventually(Duration::from_secs(30), || requests(
        &sb,
        "tr-client-1",
        "GET",
        "http://a:8080/exported",
        1
    )[0]
    .0 == 200));
    let mut exported = String::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            exported = std::fs::read_to_string(sb.dir.join("exported")).unwrap_or_default();
            exported.contains(&hex("GET /exported"))
        }),
        "nothing exported: {exported}"
    );
    let line = exported.lines().find(|l| l.contains(&hex("GET /exported"))).unwrap();
    assert!(line.starts_with("/v1/traces application/x-protobuf "), "{line}");
    assert!(line.contains(&hex("service.name")), "{line}");
    sb.plumb_ok(&["down", "tr"]);
    sb.assert_clean();
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// The shop with `mesh = true`.
fn meshed_shop(sb: &Sandbox) {
    sb.copy_shop();
    let text = std::fs::read_to_string(sb.dir.join("shop/plumb.toml")).unwrap();
    sb.write(
        "shop/plumb.toml",
        &text.replacen("name = \"shop\"\n", "name = \"shop\"\nmesh = true\n", 1),
    );
    sb.plumb_ok(&["up", "-f", "shop/plumb.toml"]);
    assert!(eventually(Duration::from_secs(30), || {
        let rows = sb.ps();
        rows.len() == 6 && rows.iter().all(|r| r["process"]["health"] == "healthy")
    }));
}

/// One request to the catalogue from outside; its trace's spans in waterfall order.
fn catalogue_trace(sb: &Sandbox, seen: &mut std::collections::BTreeSet<String>) -> Vec<serde_json::Value> {
    let out = sb.ok("ip netns exec outside python3 -c \"import urllib.request; print(urllib.request.urlopen('http://203.0.113.1:8080/api/products', timeout=10).status)\"");
    assert_eq!(out.trim(), "200");
    let mut new = None;
    assert!(eventually(Duration::from_secs(10), || {
        let listed: Vec<serde_json::Value> =
            serde_json::from_str(&sb.plumb_ok(&["traces", "-s", "shop", "--json"])).unwrap();
        new = listed
            .iter()
            .filter(|t| t["name"] == "GET /api/products" && t["spans"] == 5)
            .map(|t| t["trace_id"].as_str().unwrap().to_string())
            .find(|id| !seen.contains(id));
        new.is_some()
    }));
    let id = new.unwrap();
    seen.insert(id.clone());
    let shown: serde_json::Value = serde_json::from_str(&sb.plumb_ok(&["traces", "show", &id, "--json"])).unwrap();
    shown["spans"].as_array().unwrap().clone()
}

fn ms(span: &serde_json::Value) -> f64 {
    span["duration_ns"].as_u64().unwrap() as f64 / 1e6
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn the_meshed_shop_traces_a_request_and_places_a_delay_on_product() {
    let Some(sb) = Sandbox::start() else { return };
    meshed_shop(&sb);
    let mut seen = Default::default();
    let spans = catalogue_trace(&sb, &mut seen);
    assert_eq!(
        chain_of(&spans),
        [
            (0, "web", "server"),
            (1, "web", "client"),
            (2, "gateway", "server"),
            (3, "gateway", "client"),
            (4, "product", "server")
        ]
    );
    assert_each_span_is_the_childs_parent(&spans);
    assert_eq!(spans[3]["attributes"]["peer.service"], "product");

    // 100 ms on product: the hop to product (gateway's call and product's own span, whose
    // Redis calls leave product late too) takes it.
    sb.plumb_ok(&["chaos", "product", "--delay", "100ms", "--for", "60s"]);
    let spans = catalogue_trace(&sb, &mut seen);
    let (root, web_call, gateway, product_call) = (ms(&spans[0]), ms(&spans[1]), ms(&spans[2]), ms(&spans[3]));
    assert!(product_call >= 100.0, "the hop to product took {product_call} ms");
    assert!(
        ms(&spans[4]) >= 100.0,
        "product's own span took {} ms (its Redis calls are delayed)",
        ms(&spans[4])
    );
    // Most of the request's time is the hop to product (a relative check: the other hops'
    // own time is a few ms, the hop to product at least the delay; no wall-clock bound).
    let elsewhere = root - product_call;
    assert!(
        elsewhere < product_call && web_call - gateway < product_call && gateway - product_call < product_call,
        "{root} ms in all, {product_call} ms of it the hop to product: {:?}",
        spans
            .iter()
            .map(|s| (
                s["service"].as_str().unwrap().to_string(),
                s["kind"].as_str().unwrap().to_string(),
                ms(s)
            ))
            .collect::<Vec<_>>()
    );
    sb.plumb_ok(&["chaos", "clear", "product"]);
    sb.plumb_ok(&["down", "shop"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn the_receiving_sidecar_enforces_methods_and_paths_and_policy_why_names_the_rule() {
    let Some(sb) = Sandbox::start() else { return };
    let policy =
        "[[policies]]\nfrom = \"client\"\nto = \"api\"\nmethods = [\"GET\"]\npaths = [\"/public\", \"/health\"]\n";
    up_http(&sb, 1, policy);
    let got = requests(&sb, "mh-client-1", "GET", "http://api:8080/public/x", 1);
    assert_eq!((got[0].0, got[0].1.as_str()), (200, "api-1"), "{got:?}");
    // Its trace names the rule that let it in, and where to watch its hops' packets.
    let mut id = None;
    assert!(eventually(Duration::from_secs(10), || {
        let listed: serde_json::Value = serde_json::from_str(&sb.plumb_ok(&["traces", "-s", "mh", "--json"])).unwrap();
        id = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "GET /public/x" && t["spans"] == 2)
            .map(|t| t["trace_id"].as_str().unwrap().to_string());
        id.is_some()
    }));
    let shown = sb.plumb_ok(&["traces", "show", &id.unwrap()]);
    assert!(
        shown.contains("policy at api (api-1): GET /public/x allowed by policies[0] ("),
        "{shown}"
    );
    assert!(shown.contains("mh.toml:13)"), "{shown}");
    assert!(
        shown.contains("packets of its hops: plumb capture mh/api, plumb capture mh/client"),
        "{shown}"
    );
    for (method, path) in [("GET", "/private"), ("POST", "/public")] {
        let got = requests(&sb, "mh-client-1", method, &format!("http://api:8080{path}"), 1);
        assert_eq!((got[0].0, got[0].2), (403, true), "{method} {path}: {got:?}");
        assert!(
            got[0].1.contains("policies[0] (") && got[0].1.contains("mh.toml:"),
            "{got:?}"
        );
    }
    // The same verdicts from `plumb policy why`, which names the rule and its line.
    let out = sb.plumb(&[
        "policy",
        "why",
        "-s",
        "mh",
        "client-1",
        "api-1:8080",
        "--method",
        "GET",
        "--path",
        "/private",
    ]);
    let said = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.starts_with("denied:")
            && said.contains("GET /private")
            && said.contains("policies[0] (")
            && said.contains("paths /public,/health"),
        "{said}"
    );
    let out = sb.plumb(&[
        "policy",
        "why",
        "-s",
        "mh",
        "client-1",
        "api-1:8080",
        "--method",
        "GET",
        "--path",
        "/public",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("sidecar: GET /public allowed by policies[0]"),
        "{}",
        text(&out.stdout)
    );
    sb.plumb_ok(&["down", "mh"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn sidecars_speak_mutual_tls_and_mtls_policies_refuse_plaintext() {
    let Some(sb) = Sandbox::start() else { return };
    let extra = "[services.outsider]\nmesh = false\ncommand = [\"sleep\", \"infinity\"]\n\
                 [[policies]]\nfrom = [\"client\", \"outsider\"]\nto = \"api\"\nmtls = true\n";
    up_http(&sb, 1, extra);
    // The certificates: private to root, one per meshed service, none for the outsider.
    let listing = sb.ok("stat -c '%a %n' state/stacks/mh/mesh state/stacks/mh/mesh/*");
    for want in [
        "700 state/stacks/mh/mesh\n",
        "600 state/stacks/mh/mesh/ca.crt",
        "600 state/stacks/mh/mesh/api.key",
        "600 state/stacks/mh/mesh/client.crt",
    ] {
        assert!(listing.contains(want), "{want}: {listing}");
    }
    assert!(!listing.contains("outsider"), "{listing}");

    // Between sidecars: TLS on the wire, no HTTP in the clear.
    let pcap = sb.dir.join("api.pcapng");
    let child = sb.spawn_plumb(&["capture", "mh/api", "--duration", "4s", "-w", path_str(&pcap)]);
    std::thread::sleep(Duration::from_millis(1500));
    let got = requests(&sb, "mh-client-1", "GET", "http://api:8080/over-tls", 5);
    assert_eq!(statuses(&got), vec![200; 5], "{got:?}");
    let _ = child.wait_with_output();
    // (The client's sidecar keeps its connection to api's from before: no new handshake,
    // TLS application data; tshark reads port 8080 as TLS when told.)
    let read = |filter: &str| {
        sb.ok(&format!(
            "tshark -r {} -d tcp.port==8080,tls -Y '{filter}' 2>/dev/null | wc -l",
            pcap.display()
        ))
    };
    assert_ne!(
        read("tls.record.content_type == 23").trim(),
        "0",
        "no TLS records between the sidecars"
    );
    // (Spans go to plumb's receiver on the gateway in the clear: only port 8080 is the hop.)
    assert_eq!(
        read("tcp.port == 8080 && frame contains \"over-tls\"").trim(),
        "0",
        "the request's path in the clear"
    );
    let plain = sb.ok(&format!(
        "tshark -r {} -Y 'tcp.port == 8080 && tcp.len > 0' 2>/dev/null | wc -l",
        pcap.display()
    ));
    assert_ne!(plain.trim(), "0", "the capture saw no traffic at all");

    // A client outside the mesh speaks plaintext: refused where a policy requires mTLS.
    let plain = requests(&sb, "mh-outsider-1", "GET", "http://api:8080/", 1);
    assert_eq!(plain[0].0, 0, "{plain:?}");
    let said = text(
        &sb.plumb(&["policy", "why", "-s", "mh", "outsider-1", "api-1:8080"])
            .stdout,
    );
    assert!(said.starts_with("denied:") && said.contains("mtls"), "{said}");
    sb.plumb_ok(&["down", "mh"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn http2_with_prior_knowledge_goes_through_the_sidecars_at_l7() {
    let Some(sb) = Sandbox::start() else { return };
    // nginx speaking h2c (HTTP/2 without TLS, prior knowledge) only.
    sb.write("h2/hello.txt", "hello over h2\n");
    let dir = sb.dir.display().to_string();
    sb.write(
        "h2.conf",
        &format!(
            "user root;\nworker_processes 1;\npid {dir}/h2/nginx.pid;\nerror_log stderr;\nevents {{ worker_connections 64; }}\n\
             http {{ access_log off; client_body_temp_path {dir}/h2; proxy_temp_path {dir}/h2; fastcgi_temp_path {dir}/h2; \
             uwsgi_temp_path {dir}/h2; scgi_temp_path {dir}/h2; server {{ listen 8080 http2; root {dir}/h2; }} }}\n"
        ),
    );
    let file = sb.write(
        "h2.toml",
        &format!(
            "name = \"h2\"\nmesh = true\n[networks.n]\nsubnet = \"10.65.0.0/24\"\n\
             [services.web]\nexpose = [8080]\ncommand = [\"/usr/sbin/nginx\", \"-c\", \"{dir}/h2.conf\", \"-e\", \"stderr\", \"-g\", \"daemon off;\"]\n\
             health = {{ tcp = 8080, interval = \"300ms\" }}\n[services.client]\ncommand = [\"sleep\", \"infinity\"]\n"
        ),
    );
    sb.plumb_ok(&["up", "-f", path_str(&file)]);
    let curl = "ip netns exec h2-client-1 curl -s --http2-prior-knowledge -w ' %{http_version} %{http_code}' http://web:8080/hello.txt";
    let mut got = String::new();
    assert!(
        eventually(Duration::from_secs(20), || {
            got = text(&sb.sh(curl).stdout);
            got.ends_with(" 2 200")
        }),
        "{got}"
    );
    assert!(got.starts_with("hello over h2"), "{got}");
    // At L7: the request is a span of both sidecars (an L4 copy would make none).
    let mut listed = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            listed = serde_json::from_str::<serde_json::Value>(&sb.plumb_ok(&["traces", "-s", "h2", "--json"]))
                .unwrap()
                .as_array()
                .unwrap()
                .clone();
            listed.iter().any(|t| t["name"] == "GET /hello.txt" && t["spans"] == 2)
        }),
        "{listed:?}"
    );
    sb.plumb_ok(&["down", "h2"]);
    sb.assert_clean();
}

//! `plumb ui`: the live web view of a stack, checked twice. With curl, its JSON API: every
//! container in the topology, a byte counter that grows with real traffic, a connection the
//! policy denies showing as a denial with the policy's stack-file line, a trace, the token
//! needed (also from another namespace, on a non-loopback listen address), a wrong Host
//! header and a POST refused. Then in a real browser (Debian's chromium, headless, driven by
//! selenium: tests/ui/browser.py): every container in the drawing, a counter moving after
//! traffic, the denial in red, the trace form, the capture button's download read by tshark.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

/// web on both networks (published), api behind a VIP on back, client on both; the policy
/// lets only web reach api:5000, so client -> api is denied by it (networks allow it).
const STACK: &str = r#"name = "ui"
ui = "127.0.0.1:9467"
[networks.front]
subnet = "10.89.61.0/24"
[networks.back]
subnet = "10.89.62.0/24"
[services.web]
networks = ["front", "back"]
command = ["/usr/bin/python3", "-m", "http.server", "80", "--bind", "0.0.0.0"]
health = { tcp = 80, interval = "200ms" }
ports = ["8080:80"]
[services.api]
networks = ["back"]
command = ["/usr/bin/python3", "-m", "http.server", "5000", "--bind", "0.0.0.0"]
expose = [5000]
[services.client]
networks = ["front", "back"]
[[policies]]
from = "web"
to = "api"
ports = [5000]
"#;

const CONTAINERS: [&str; 3] = ["api-1", "client-1", "web-1"];

/// A running `plumb ui`: its PID, address and token (from the first line it prints).
struct Ui {
    pid: String,
    address: String,
    token: String,
}

/// `listen`: `--listen`'s value, if any.
fn start_ui(sb: &Sandbox, listen: Option<&str>, name: &str) -> Ui {
    let listen = listen.map(|l| format!("--listen {l}")).unwrap_or_default();
    let pid = sb.ok(&format!("{PLUMB} ui ui {listen} > {name}.out 2> {name}.err & echo $!"));
    let out = sb.dir.join(format!("{name}.out"));
    let mut url = String::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            url = std::fs::read_to_string(&out).unwrap_or_default();
            url.ends_with('\n')
        }),
        "plumb ui printed no address: {}",
        std::fs::read_to_string(sb.dir.join(format!("{name}.err"))).unwrap_or_default()
    );
    let url = url.trim();
    let (address, token) = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split_once("/?token="))
        .unwrap_or_else(|| panic!("not an address with a token: {url:?}"));
    Ui {
        pid: pid.trim().to_string(),
        address: address.to_string(),
        token: token.to_string(),
    }
}

impl Ui {
    /// `curl` from the sandbox's host: the HTTP status, then the body.
    fn curl(&self, sb: &Sandbox, extra: &str, path: &str) -> (u16, String) {
        let out = sb.ok(&format!(
            "curl -s -m 20 -w '\\n%{{http_code}}' {extra} 'http://{}{path}'",
            self.address
        ));
        let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
        (code.parse().unwrap_or(0), body.to_string())
    }

    fn get(&self, sb: &Sandbox, path: &str) -> Value {
        let (code, body) = self.curl(sb, &format!("-H 'Authorization: Bearer {}'", self.token), path);
        assert_eq!(code, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    fn stop(&self, sb: &Sandbox) {
        sb.ok(&format!(
            "kill {0}; while kill -0 {0} 2>/dev/null; do sleep 0.05; done",
            self.pid
        ));
    }
}

/// Whether a `plumb capture` runs in the sandbox.
fn capturing(sb: &Sandbox) -> bool {
    sb.processes().iter().any(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).split('\0').any(|a| a == "capture"))
    })
}

fn rx_bytes(stats: &Value, container: &str) -> u64 {
    stats["containers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["container"] == container)
        .unwrap_or_else(|| panic!("no {container} in {stats:#}"))["rx_bytes"]
        .as_u64()
        .unwrap()
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn ui_serves_the_stack_live_to_curl_and_to_a_real_browser() {
    let sb = Sandbox::start().unwrap();
    sb.write("plumb.toml", STACK);
    // Nothing to show yet: said, with what to do.
    let none = sb.plumb(&["ui"]);
    assert_eq!(none.status.code(), Some(2));
    assert!(text(&none.stderr).contains("no stack is up"), "{}", text(&none.stderr));
    sb.plumb_ok(&["up", "--wait"]);
    let web = sb.address("web-1", "eth0");
    let api = sb.address("api-1", "eth0");
    // Where the stack file's `ui` says.
    let ui = start_ui(&sb, None, "ui");
    assert_eq!(ui.address, "127.0.0.1:9467");

    // Who may ask: the token, the right Host, GET only.
    assert_eq!(ui.curl(&sb, "", "/api/topology").0, 401);
    assert_eq!(ui.curl(&sb, "", "/").0, 401);
    assert_eq!(
        ui.curl(
            &sb,
            "-H 'Authorization: Bearer 00000000000000000000000000000000'",
            "/api/stats"
        )
        .0,
        401
    );
    let bearer = format!("-H 'Authorization: Bearer {}'", ui.token);
    let (code, body) = ui.curl(
        &sb,
        &format!("{bearer} -H 'Host: rebound.example:9467'"),
        "/api/topology",
    );
    assert_eq!(code, 421, "{body}");
    assert_eq!(ui.curl(&sb, &format!("{bearer} -X POST"), "/api/topology").0, 405);
    // The first load with ?token= sets the cookie and sends the browser on without it.
    let headers = sb.ok(&format!(
        "curl -s -D - -o /dev/null 'http://{}/?token={}&seconds=2'",
        ui.address, ui.token
    ));
    assert!(headers.starts_with("HTTP/1.1 303"), "{headers}");
    assert!(headers.contains("location: /?seconds=2"), "{headers}");
    assert!(
        headers.contains(&format!(
            "set-cookie: plumb_ui_9467={}; Path=/; HttpOnly; SameSite=Strict",
            ui.token
        )),
        "{headers}"
    );
    let (code, page) = ui.curl(&sb, &format!("-H 'Cookie: plumb_ui_9467={}'", ui.token), "/");
    assert_eq!(code, 200);
    assert!(page.contains("<script src=\"/app.js\">"), "{page}");
    // Every asset is plumb's own: nothing is loaded from elsewhere.
    assert!(!page.contains("http://") && !page.contains("https://"), "{page}");

    // The topology: every container, with its addresses; the VIP; the policy with its line.
    let topo = ui.get(&sb, "/api/topology");
    let mut names: Vec<&str> = topo["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["kind"] == "container")
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, CONTAINERS, "{topo:#}");
    let edges = topo["edges"].as_array().unwrap();
    assert!(
        edges
            .iter()
            .any(|e| e["to"] == "ctr_web_1" && e["label"] == format!("eth0 {web}/24")),
        "{topo:#}"
    );
    let policy_line = STACK.lines().position(|l| l == "[[policies]]").unwrap() + 1;
    assert!(
        edges.iter().any(|e| e["label"]
            .as_str()
            .unwrap()
            .ends_with(&format!("plumb.toml:{policy_line})"))),
        "{topo:#}"
    );
    // The same value as `plumb graph --format json`.
    let graph: Value = serde_json::from_str(&sb.plumb_ok(&["graph", "ui", "--format", "json"])).unwrap();
    assert_eq!(graph, topo);

    // A counter that grows with real traffic: client-1 fetches web's page.
    let first = ui.get(&sb, "/api/stats");
    let before = rx_bytes(&first, "client-1");
    sb.ok(&format!(
        "for i in 1 2 3; do ip netns exec ui-client-1 curl -sf -m 2 -o /dev/null http://{web}/; done"
    ));
    let mut stats = Value::Null;
    assert!(
        eventually(Duration::from_secs(10), || {
            stats = ui.get(&sb, "/api/stats");
            rx_bytes(&stats, "client-1") > before + 1000
        }),
        "client-1's rx_bytes stayed near {before}: {stats:#}"
    );
    assert_eq!(stats["stack"], "ui");
    // The services as `plumb services` sees them: api's VIP and its one ready endpoint.
    let api_service = stats["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "api")
        .unwrap_or_else(|| panic!("{stats:#}"));
    assert_eq!(api_service["endpoints"][0]["container"], "api-1", "{api_service:#}");
    assert_eq!(api_service["endpoints"][0]["ready"], true, "{api_service:#}");

    // The policy denies client -> api:5000 (both on back): the connection fails, and the
    // denial shows with the policy's stack-file line.
    assert_eq!(
        sb.connect(Some("ui-client-1"), &api, 5000),
        None,
        "the policy let client reach api"
    );
    assert!(
        sb.connect(Some("ui-web-1"), &api, 5000).is_some()
            || sb
                .sh(&format!(
                    "ip netns exec ui-web-1 curl -sf -m 2 -o /dev/null http://{api}:5000/"
                ))
                .status
                .success(),
        "web cannot reach api"
    );
    let denial = |s: &Value| {
        s["denials"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["service"] == "api" && d["direction"] == "ingress")
            .cloned()
    };
    assert!(
        eventually(Duration::from_secs(5), || {
            stats = ui.get(&sb, "/api/stats");
            denial(&stats).is_some_and(|d| d["packets"].as_u64().unwrap() > 0)
        }),
        "no denial counted: {stats:#}"
    );
    let d = denial(&stats).unwrap();
    assert_eq!(
        d["policies"][0],
        format!("policies[0] plumb.toml:{policy_line}"),
        "{d:#}"
    );

    // One container: its listening socket, its log, its status.
    let c = ui.get(&sb, "/api/container/web-1");
    assert!(
        c["connections"]["sockets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["state"] == "LISTEN" && s["local"] == "0.0.0.0:80"),
        "{c:#}"
    );
    assert_eq!(c["status"]["health"], "healthy", "{c:#}");
    assert!(
        c["events"].as_array().unwrap().iter().any(|e| e["event"] == "started"),
        "{c:#}"
    );
    assert!(
        c["log"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().contains("GET / ")),
        "{c:#}"
    );
    assert_eq!(ui.curl(&sb, &bearer, "/api/container/nosuch").0, 404);
    assert_eq!(ui.curl(&sb, &bearer, "/api/capture?container=web-1&seconds=0").0, 400);
    assert_eq!(ui.curl(&sb, &bearer, "/api/capture?container=../x").0, 404);

    // A trace of the denied flow names the policy's verdict.
    let t = ui.get(&sb, "/api/trace?from=client-1&to=api-1:5000");
    assert_eq!(t["answered"], false, "{t:#}");
    assert_eq!(t["policy"]["allowed"], false, "{t:#}");
    // The page's text reaches `plumb trace` as an argument, never as an option.
    let (code, body) = ui.curl(&sb, &bearer, "/api/trace?from=client-1&to=--state-dir=/tmp");
    assert_eq!(code, 400, "{body}");

    // On a non-loopback address, from another machine (the `outside` namespace): nothing
    // without the token, the page with it.
    let wide = start_ui(&sb, Some("203.0.113.1:9466"), "wide");
    let from_outside = |extra: &str| {
        sb.ok(&format!(
            "ip netns exec outside curl -s -o /dev/null -w '%{{http_code}}' -m 5 {extra} http://203.0.113.1:9466/api/topology"
        ))
    };
    assert_eq!(from_outside(""), "401");
    assert_eq!(from_outside(&format!("-H 'Authorization: Bearer {}'", ui.token)), "401");
    assert_eq!(
        from_outside(&format!("-H 'Authorization: Bearer {}'", wide.token)),
        "200"
    );
    let err = std::fs::read_to_string(sb.dir.join("wide.err")).unwrap();
    assert!(err.contains("reachable from other machines"), "{err}");
    // Stopped while a capture runs: the capture ends with it, and its folder goes.
    sb.ok(&format!(
        "curl -s -o /dev/null -m 40 -H 'Authorization: Bearer {}' 'http://203.0.113.1:9466/api/capture?container=web-1&seconds=30' >/dev/null 2>&1 &",
        wide.token
    ));
    // Its scratch folder: /tmp/plumb-ui-PID-RANDOM.
    let scratch = || {
        let prefix = format!("plumb-ui-{}-", wide.pid);
        std::fs::read_dir("/tmp")
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
    };
    assert!(
        eventually(Duration::from_secs(10), || capturing(&sb)
            && scratch().is_some_and(
                |dir| std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
            )),
        "no capture started"
    );
    wide.stop(&sb);
    assert!(
        eventually(Duration::from_secs(10), || !capturing(&sb)),
        "the capture outlived plumb ui"
    );
    assert_eq!(scratch(), None, "plumb ui's scratch folder left behind");

    // The browser.
    let downloads = sb.dir.join("downloads");
    std::fs::create_dir_all(&downloads).unwrap();
    std::fs::create_dir_all(sb.dir.join("home")).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ui/browser.py");
    let traffic =
        format!("for i in $(seq 5); do ip netns exec ui-client-1 curl -sf -m 2 -o /dev/null http://{web}/; done");
    let out = sb.sh(&format!(
        "HOME={home} XDG_CONFIG_HOME={home} XDG_CACHE_HOME={home} /usr/bin/python3 {script} --url 'http://{addr}/?token={token}' \
         --containers {containers} --watch client-1 --traffic '{traffic}' --capture web-1 --seconds 2 \
         --denied api --trace-from client-1 --trace-to web-1:80 --downloads {downloads}",
        home = sb.dir.join("home").display(),
        addr = ui.address,
        token = ui.token,
        containers = CONTAINERS.join(","),
        downloads = downloads.display(),
    ));
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "the browser check failed:\n{stderr}");
    let seen: Value = serde_json::from_str(text(&out.stdout).trim()).unwrap();
    assert_eq!(seen["containers"], serde_json::json!(CONTAINERS), "{seen:#}");
    assert!(
        seen["counter"]["after"].as_u64() > seen["counter"]["before"].as_u64(),
        "{seen:#}"
    );
    assert!(
        seen["denial"]
            .as_str()
            .unwrap()
            .contains(&format!("plumb.toml:{policy_line}")),
        "{seen:#}"
    );
    assert_eq!(seen["denied_service_red"], true, "{seen:#}");
    assert!(seen["trace"].as_str().unwrap().contains("connected"), "{seen:#}");
    assert_eq!(seen["capture_button"], "capture 2 s", "{seen:#}");
    // web-1's panel shows its log: python's http.server logs each request.
    assert!(
        seen["log"].as_str().unwrap().contains("\"GET / HTTP/1.1\" 200"),
        "{seen:#}"
    );
    // The download is a capture of web-1's interfaces that tshark reads, with the requests
    // the browser script sent to web-1 while it ran.
    let file = seen["download"].as_str().unwrap();
    let packets = sb.ok(&format!(
        "tshark -r {file} -T fields -e frame.interface_name -e ip.dst -e tcp.dstport"
    ));
    assert!(packets.lines().count() > 2, "{packets}");
    assert!(packets.contains("web-1/eth0"), "{packets}");
    assert!(packets.contains(&format!("{web}\t80")), "{packets}");

    // The stack goes down under the page: the API says so.
    sb.plumb_ok(&["down"]);
    let (code, body) = ui.curl(&sb, &bearer, "/api/stats");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("stack ui is not up any more"), "{body}");
    ui.stop(&sb);
    sb.assert_clean();
}

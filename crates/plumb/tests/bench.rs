//! `plumb bench` against nginx replicas that log every request with the client's address:
//! the count it reports is the count the servers logged (closed loop and open loop), it sends
//! from the container named by --from (or from the host), its JSON adds up, replicas are
//! told apart, errors are counted by kind (nothing listening, HTTP 404), the SVG is drawn,
//! and bad input is refused with a hint.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::Value;

const NGINX: &str = r#"
user root;
worker_processes 1;
pid nginx.pid;
error_log stderr;
events { worker_connections 1024; }
http {
    log_format who '$remote_addr $status $request_uri';
    access_log access.log who;
    client_body_temp_path tmp;
    proxy_temp_path tmp;
    fastcgi_temp_path tmp;
    uwsgi_temp_path tmp;
    scgi_temp_path tmp;
    server { listen 80; root ../html; add_header X-Served-By $hostname; }
}
"#;

const STACK: &str = r#"
name = "bn"
[networks.n]
subnet = "10.89.61.0/24"
[services.web]
replicas = 2
expose = [80]
command = ["sh", "-c", "mkdir -p r$PLUMB_REPLICA/tmp && exec /usr/sbin/nginx -p r$PLUMB_REPLICA -c ../nginx.conf -e stderr -g 'daemon off;'"]
health = { tcp = 80, interval = "200ms" }
[services.client]
lb = "none"
"#;

/// The lines replica `k` logged so far: (client address, status, path).
fn logged(sb: &Sandbox, k: u32) -> Vec<(String, String, String)> {
    std::fs::read_to_string(sb.dir.join(format!("r{k}/access.log")))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0].to_string(), f[1].to_string(), f[2].to_string())
        })
        .collect()
}

/// Replica `k`'s lines after the first `before`, once it has logged `expected` of them (nginx
/// writes a request's line just after sending its response: give it a moment).
fn logged_since(sb: &Sandbox, k: u32, before: usize, expected: u64) -> Vec<(String, String, String)> {
    eventually(std::time::Duration::from_secs(2), || {
        logged(sb, k).len() - before >= expected as usize
    });
    logged(sb, k).split_off(before)
}

/// Runs `plumb bench ARGS --json`; its exit code and report.
fn bench(sb: &Sandbox, args: &[&str]) -> (Option<i32>, Value) {
    let mut all = vec!["bench"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = sb.plumb(&all);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "plumb {all:?}: {e}\nstdout: {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    (out.status.code(), report)
}

fn counts(v: &Value) -> BTreeMap<String, u64> {
    v.as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap()))
        .collect()
}

/// The report adds up: requests = responses + errors that are not HTTP statuses, the seconds
/// sum to the requests, the percentiles are ordered.
fn assert_consistent(r: &Value) {
    let requests = r["requests"].as_u64().unwrap();
    let responses: u64 = counts(&r["responses"]).values().sum();
    let errors = counts(&r["errors"]);
    let failures: u64 = errors
        .iter()
        .filter(|(k, _)| !k.starts_with("http_"))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(requests, responses + failures, "{r:#}");
    for (k, n) in &errors {
        if let Some(code) = k.strip_prefix("http_") {
            assert_eq!(r["responses"][code].as_u64(), Some(*n), "{r:#}");
        }
    }
    let per_second: u64 = r["seconds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(per_second, requests, "{r:#}");
    let l = &r["latency_ms"];
    let q: Vec<f64> = ["p50", "p90", "p99", "p999", "max"]
        .iter()
        .map(|k| l[k].as_f64().unwrap())
        .collect();
    assert!(q.windows(2).all(|w| w[0] <= w[1]), "{l:#}");
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn bench_counts_what_the_servers_logged() {
    let sb = Sandbox::start().unwrap();
    sb.write("nginx.conf", NGINX);
    sb.write("html/index.html", "hello\n");
    sb.write("plumb.toml", STACK);
    sb.plumb_ok(&["up"]);
    let client = sb.address("client-1", "eth0");
    let web1 = sb.address("web-1", "eth0");
    let vip = sb.vip("bn", "web");
    for target in [&web1, &vip] {
        let get = format!("ip netns exec bn-client-1 curl -sf -m 1 -o /dev/null http://{target}/");
        assert!(eventually(std::time::Duration::from_secs(10), || sb
            .sh(&get)
            .status
            .success()));
    }

    // Closed loop from client-1 to web-1 by name: web-1 logged exactly the requests, all
    // from client-1's address.
    let before = logged(&sb, 1).len();
    let svg = sb.dir.join("latency.svg");
    let (code, r) = bench(
        &sb,
        &[
            "http://web-1/index.html",
            "-d",
            "1s",
            "-c",
            "4",
            "--from",
            "client-1",
            "--svg",
            path_str(&svg),
        ],
    );
    assert_eq!(code, Some(0), "{r:#}");
    assert_consistent(&r);
    let requests = r["requests"].as_u64().unwrap();
    assert!(requests > 0, "{r:#}");
    assert_eq!(r["mode"], "closed_loop");
    assert_eq!(r["address"], format!("{web1}:80"));
    assert_eq!(counts(&r["responses"]), BTreeMap::from([("200".to_string(), requests)]));
    assert_eq!(counts(&r["errors"]), BTreeMap::new());
    assert_eq!(
        counts(&r["replicas"]),
        BTreeMap::from([("web-1".to_string(), requests)])
    );
    let new = logged_since(&sb, 1, before, requests);
    assert_eq!(
        new.len() as u64,
        requests,
        "web-1 logged {} requests, plumb bench counted {requests}",
        new.len()
    );
    assert!(
        new.iter()
            .all(|(from, status, path)| from == &client && status == "200" && path == "/index.html"),
        "{new:?}"
    );
    let drawn = std::fs::read_to_string(&svg).unwrap();
    assert!(drawn.starts_with("<svg") && drawn.contains(r#"class="p99""#), "{drawn}");

    // Open loop: exactly rate x duration requests, as logged.
    let before = logged(&sb, 1).len();
    let (code, r) = bench(
        &sb,
        &[
            "http://web-1/",
            "--rate",
            "150",
            "-d",
            "1s",
            "-c",
            "3",
            "--from",
            "client-1",
        ],
    );
    assert_eq!(code, Some(0), "{r:#}");
    assert_consistent(&r);
    assert_eq!(
        (r["mode"].as_str(), r["requests"].as_u64()),
        (Some("open_loop"), Some(150)),
        "{r:#}"
    );
    assert_eq!(r["responses"]["200"].as_u64(), Some(150), "{r:#}");
    assert_eq!(logged_since(&sb, 1, before, 150).len(), 150);

    // Through the VIP: both replicas answer; what each logged is what bench saw of it, and the
    // load balancer counted the 4 connections.
    let before = (logged(&sb, 1).len(), logged(&sb, 2).len());
    let (code, r) = bench(&sb, &["http://web/", "-d", "1s", "-c", "4", "--from", "client-1"]);
    assert_eq!(code, Some(0), "{r:#}");
    assert_consistent(&r);
    assert_eq!(r["address"], format!("{vip}:80"));
    let replicas = counts(&r["replicas"]);
    let logged_now = [
        logged_since(&sb, 1, before.0, replicas.get("web-1").copied().unwrap_or(0)).len(),
        logged_since(&sb, 2, before.1, replicas.get("web-2").copied().unwrap_or(0)).len(),
    ];
    assert_eq!(replicas.get("web-1").copied(), Some(logged_now[0] as u64), "{r:#}");
    assert_eq!(replicas.get("web-2").copied(), Some(logged_now[1] as u64), "{r:#}");
    assert_eq!(replicas.values().sum::<u64>(), r["requests"].as_u64().unwrap());
    let lb = counts(&r["vip_connections"]);
    assert!(
        lb["web-1"] >= 1 && lb["web-2"] >= 1 && lb.values().sum::<u64>() >= 4,
        "{r:#}"
    );

    // From the host (the sandbox's own namespace): web-1 sees the network's gateway.
    let before = logged(&sb, 1).len();
    let (code, r) = bench(&sb, &["http://web-1/", "-d", "500ms", "-c", "2"]);
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(r["from"], Value::Null);
    let new = logged_since(&sb, 1, before, r["requests"].as_u64().unwrap());
    assert_eq!(new.len() as u64, r["requests"].as_u64().unwrap());
    assert!(new.iter().all(|(from, _, _)| from == "10.89.61.1"), "{new:?}");
    // ... where the VIP does not answer: said so, with the way to do it.
    let out = sb.plumb(&["bench", "http://web/", "-d", "1s"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("is a service") && err.contains("--from"), "{err}");

    // A path nginx does not have: every request is an HTTP 404, counted as such.
    let (code, r) = bench(
        &sb,
        &["http://web-1/nope", "-d", "500ms", "-c", "2", "--from", "client-1"],
    );
    assert_eq!(code, Some(0), "{r:#}");
    assert_consistent(&r);
    let n = r["requests"].as_u64().unwrap();
    assert!(n > 0);
    assert_eq!(
        counts(&r["errors"]),
        BTreeMap::from([("http_404".to_string(), n)]),
        "{r:#}"
    );

    // Nothing listening: connection refusals, no response, exit 1, no panic.
    let (code, r) = bench(
        &sb,
        &["http://web-1:81/", "-d", "500ms", "-c", "2", "--from", "client-1"],
    );
    assert_eq!(code, Some(1), "{r:#}");
    assert_consistent(&r);
    let n = r["requests"].as_u64().unwrap();
    assert!(n > 0);
    assert_eq!(
        counts(&r["errors"]),
        BTreeMap::from([("connect_refused".to_string(), n)]),
        "{r:#}"
    );
    assert_eq!(counts(&r["responses"]), BTreeMap::new());

    // For people: the report and a progress line on stderr.
    let out = sb.plumb(&["bench", "http://web-1/", "-d", "1s", "-c", "2", "--from", "client-1"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("requests ") && stdout.contains("p99.9") && stdout.contains("replicas   web-1"),
        "{stdout}"
    );
    assert!(
        stderr.contains("from client-1") && stderr.contains("1s") && stderr.contains("p99 so far"),
        "{stderr}"
    );

    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn bench_refuses_bad_input_with_a_hint() {
    let sb = Sandbox::start().unwrap();
    // Host names not in a stack go to the host's resolver: one that refuses at once.
    sb.use_resolv_conf("nameserver 127.0.0.1\n");
    sb.write(
        "plumb.toml",
        "name = \"bb\"\n[networks.n]\nsubnet = \"10.89.62.0/24\"\n[services.client]\n",
    );
    sb.plumb_ok(&["up"]);
    for (args, says) in [
        (vec!["ftp://client-1/"], "\"ftp\""),
        (vec!["client-1/"], "no scheme"),
        (vec!["http://client-1:99999/"], "port"),
        (vec!["http://client-1/", "-c", "0"], "-c"),
        (vec!["http://client-1/", "--rate", "0"], "--rate"),
        (
            vec!["http://client-1/", "--rate", "2", "-d", "100ms"],
            "not one request",
        ),
        (vec!["http://client-1/", "--from", "nosuch"], "no container \"nosuch\""),
        (
            vec!["http://nosuch/", "--from", "client-1"],
            "no container, service or address \"nosuch\"",
        ),
        (vec!["http://nosuch.invalid/"], "cannot resolve"),
        (vec!["http://client-1/", "-s", "other"], "no service or container"),
    ] {
        let mut all = vec!["bench"];
        all.extend(args.iter().copied());
        let out = sb.plumb(&all);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {err}");
        assert!(err.contains(says) && err.contains("hint:"), "{all:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

//! Services inside containers, supervised: the reference shop app end to end with real nginx,
//! Flask and Redis; restarts by policy and on failed health; dependency order; logs; control
//! commands; a dead supervisor replaced without running anything twice.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

fn process<'a>(rows: &'a [serde_json::Value], container: &str) -> &'a serde_json::Value {
    &rows
        .iter()
        .find(|r| r["container"] == container)
        .unwrap_or_else(|| panic!("no {container}"))["process"]
}

fn http(sb: &Sandbox, from: Option<&str>, url: &str) -> String {
    let prefix = from.map(|n| format!("ip netns exec {n} ")).unwrap_or_default();
    sb.ok(&format!("{prefix}curl -sf -m 5 {url}"))
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn the_shop_runs_for_real_and_survives_a_killed_replica() {
    let Some(sb) = Sandbox::start() else { return };
    sb.copy_shop();
    sb.plumb_ok(&["up", "-f", "shop/plumb.toml"]);
    // Everything something waits on is healthy once `up` returns; web (last) soon after.
    assert!(eventually(Duration::from_secs(20), || {
        let rows = sb.ps();
        rows.len() == 6 && rows.iter().all(|r| r["process"]["health"] == "healthy")
    }));

    // The page through the published port, from the outside namespace and from the host.
    assert!(http(&sb, Some("outside"), &format!("http://{HOST_IP}:8080/")).contains("<html"));
    assert!(http(&sb, None, "http://127.0.0.1:8080/").contains("<html"));
    // The catalogue from Redis through nginx -> gateway -> product, spread over all replicas.
    let mut served_by = BTreeSet::new();
    for _ in 0..6 {
        let body: serde_json::Value = serde_json::from_str(&http(
            &sb,
            Some("outside"),
            &format!("http://{HOST_IP}:8080/api/products"),
        ))
        .unwrap();
        assert!(body["products"].as_array().unwrap().len() >= 3, "{body}");
        served_by.insert(body["served_by"].as_str().unwrap().to_string());
    }
    assert_eq!(
        served_by,
        BTreeSet::from(["product-1".into(), "product-2".into(), "product-3".into()])
    );
    // Spread by plumb's VIP balancer, not by the gateway: each replica's connections through
    // product's VIP are counted.
    let services: serde_json::Value = serde_json::from_str(&sb.plumb_ok(&["services", "--json"])).unwrap();
    let product = services
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["service"] == "product")
        .expect("product in services");
    for e in product["endpoints"].as_array().unwrap() {
        assert!(e["connections"].as_u64().unwrap() >= 1, "{product}");
    }
    // Views are counted in Redis.
    let views = |sb: &Sandbox| -> i64 {
        let body: serde_json::Value = serde_json::from_str(&http(
            sb,
            Some("outside"),
            &format!("http://{HOST_IP}:8080/api/products/2"),
        ))
        .unwrap();
        body["product"]["views"].as_i64().unwrap()
    };
    let first = views(&sb);
    assert_eq!(views(&sb), first + 1);
    assert_eq!(
        sb.ok("ip netns exec shop-redis-1 redis-cli get views:2").trim(),
        (first + 1).to_string()
    );
    // Each replica has its own hostname and finds the others by name.
    assert_eq!(
        sb.plumb_ok(&["exec", "product-2", "--", "hostname"]).trim(),
        "product-2"
    );
    // `redis` is the service's VIP (from the default service subnet), `redis-1` the replica.
    let redis = sb.plumb_ok(&["exec", "product-2", "--", "getent", "hosts", "redis"]);
    assert!(redis.starts_with("10.96.0."), "{redis}");
    let redis_1 = sb.plumb_ok(&["exec", "product-2", "--", "getent", "hosts", "redis-1"]);
    assert!(redis_1.starts_with("10.89.0."), "{redis_1}");

    // Logs: the product replicas' output, prefixed.
    let logs = sb.plumb_ok(&["logs", "product", "--tail", "50"]);
    assert!(
        logs.contains("product-1 | ") && logs.contains("product-3 | ") && logs.contains("GET /products"),
        "{logs}"
    );

    // Kill a replica by PID: it comes back and ps counts the restart.
    let rows = sb.ps();
    let pid = process(&rows, "product-2")["pid"].as_u64().unwrap();
    sb.ok(&format!("kill -9 {pid}"));
    assert!(eventually(Duration::from_secs(15), || {
        let rows = sb.ps();
        let p = process(&rows, "product-2");
        p["restarts"] == 1 && p["state"] == "running" && p["pid"].as_u64() != Some(pid)
    }));
    assert!(eventually(Duration::from_secs(15), || process(&sb.ps(), "product-2")
        ["health"]
        == "healthy"));

    sb.plumb_ok(&["down", "-f", "shop/plumb.toml"]);
    sb.assert_clean();
}

const FLAKY: &str = r#"
name = "svc"
[networks.n]
subnet = "10.93.0.0/24"

# Listens on 7000 for two seconds, then stops listening but keeps running.
[services.flaky]
command = ["/usr/bin/python3", "-c", "import socket,time; s=socket.socket(); s.bind(('0.0.0.0',7000)); s.listen(); print('listening', flush=True); time.sleep(2); s.close(); print('deaf now', flush=True); time.sleep(3600)"]
restart = "always"
health = { tcp = 7000, interval = "300ms", timeout = "300ms", retries = 2 }

# Becomes reachable only after 2 seconds.
[services.slow]
command = ["/usr/bin/python3", "-c", "import socket,time; time.sleep(2); s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(('0.0.0.0',7001)); s.listen(); time.sleep(3600)"]
# An exec probe: runs in the container's network namespace.
health = { exec = ["/bin/bash", "-c", "echo > /dev/tcp/127.0.0.1/7001"], interval = "200ms" }

# Runs as an unprivileged user.
[services.unprivileged]
command = "/bin/sleep 3600"
user = "nobody"

# Fails for good (restart = "no") unless slow is already listening when it starts.
[services.eager]
command = ["/usr/bin/python3", "-c", "import socket,time; socket.create_connection(('slow', 7001), 2).close(); print('slow was ready', flush=True); time.sleep(3600)"]
restart = "no"
depends_on = { slow = { condition = "healthy" } }
"#;

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn health_failures_restart_and_dependencies_wait_for_health() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("plumb.toml", FLAKY);
    sb.plumb_ok(&["up"]);
    // eager started only once slow was healthy: it connected by name and keeps running.
    let rows = sb.ps();
    assert_eq!(process(&rows, "eager-1")["state"], "running");
    assert!(sb.plumb_ok(&["logs", "eager"]).contains("slow was ready"));
    assert_eq!(process(&rows, "slow-1")["health"], "healthy");
    let pid = process(&rows, "unprivileged-1")["pid"].as_u64().unwrap();
    assert_eq!(sb.ok(&format!("ps -o user= -p {pid}")).trim(), "nobody");

    // flaky goes deaf: unhealthy, then restarted (restart = "always").
    assert!(eventually(Duration::from_secs(20), || process(&sb.ps(), "flaky-1")
        ["restarts"]
        .as_u64()
        >= Some(1)));
    let logs = sb.plumb_ok(&["logs", "flaky-1"]);
    assert!(
        logs.contains("health: unhealthy") && logs.contains("deaf now"),
        "{logs}"
    );

    // stop / start / restart a service.
    sb.plumb_ok(&["stop", "slow"]);
    assert_eq!(process(&sb.ps(), "slow-1")["state"], "stopped");
    let slow_ip = sb.address("slow-1", "eth0");
    let reachable = |sb: &Sandbox| {
        sb.ok(&format!(
            "ip netns exec svc-eager-1 bash -c 'echo > /dev/tcp/{slow_ip}/7001' 2>/dev/null && echo yes || echo no"
        ))
    };
    assert_eq!(reachable(&sb).trim(), "no", "a stopped service does not answer");
    sb.plumb_ok(&["start", "slow"]);
    assert_eq!(process(&sb.ps(), "slow-1")["state"], "running");
    assert!(
        eventually(Duration::from_secs(10), || reachable(&sb).trim() == "yes"),
        "a started service answers again"
    );
    let before = process(&sb.ps(), "eager-1")["pid"].clone();
    sb.plumb_ok(&["restart", "eager"]);
    assert_ne!(process(&sb.ps(), "eager-1")["pid"], before);

    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_dead_supervisor_is_replaced_without_running_anything_twice() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write(
        "plumb.toml",
        "name = \"adopt\"\n[networks.n]\nsubnet = \"10.94.0.0/24\"\n[services.s]\nreplicas = 3\ncommand = \"/bin/sleep 3600\"\n",
    );
    sb.plumb_ok(&["up"]);
    let status = std::fs::read_to_string(sb.state_dir.join("stacks/adopt/status.json")).unwrap();
    let supervisor = serde_json::from_str::<serde_json::Value>(&status).unwrap()["supervisor_pid"].clone();
    sb.ok(&format!("kill -9 {supervisor}"));
    let states = |sb: &Sandbox| {
        sb.ps()
            .iter()
            .map(|r| r["process"]["state"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    // kill returns before the process is gone: wait for it.
    assert!(
        eventually(Duration::from_secs(5), || states(&sb) == ["no supervisor"; 3]),
        "{:?}",
        states(&sb)
    );
    sb.plumb_ok(&["up"]);
    for ns in ["adopt-s-1", "adopt-s-2", "adopt-s-3"] {
        let pids = sb.ok(&format!("ip netns pids {ns}"));
        assert_eq!(
            pids.split_whitespace().count(),
            1,
            "exactly one process in {ns}: {pids}"
        );
    }
    assert_eq!(states(&sb), ["running"; 3]);
    // A second up changes nothing, processes included.
    let pids = sb.ok("ip netns pids adopt-s-1");
    sb.plumb_ok(&["up"]);
    assert_eq!(sb.ok("ip netns pids adopt-s-1"), pids);
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn bad_services_are_rejected_before_anything_starts() {
    let Some(sb) = Sandbox::start() else { return };
    let base = "name = \"bad\"\n[networks.n]\nsubnet = \"10.95.0.0/24\"\n";
    let cases = [
        (format!("{base}[services.a]\ncommand = [\"no-such-program\", \"x\"]\n"), vec!["plumb.toml:5:", "services.a.command", "\"no-such-program\" is not installed"]),
        (
            format!("{base}[services.a]\ncommand = \"/bin/true\"\ndepends_on = [\"b\"]\n[services.b]\ncommand = \"/bin/true\"\ndepends_on = [\"a\"]\n"),
            vec!["dependency cycle: a -> b -> a"],
        ),
        (format!("{base}[services.a]\ncommand = \"/bin/true\"\nhealth = {{ tcp = 0 }}\n"), vec!["services.a.health.tcp", "outside 1-65535"]),
        (format!("{base}[services.a]\ncommand = \"/bin/true\"\nhealth = {{ http = \"/\", port = 70000 }}\n"), vec!["services.a.health.port", "outside 1-65535"]),
    ];
    for (stack, needles) in cases {
        sb.write("plumb.toml", &stack);
        let out = sb.plumb(&["up"]);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        for n in needles {
            assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
        }
        sb.assert_clean();
    }
}

fn pid_of(sb: &Sandbox, container: &str) -> u64 {
    let rows = sb.ps();
    process(&rows, container)["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("{container} has no pid: {rows:?}"))
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn an_edit_restarts_only_what_changed() {
    let Some(sb) = Sandbox::start() else { return };
    let base = "name = \"edit\"\n[networks.n]\nsubnet = \"10.98.0.0/24\"\n[networks.m]\nsubnet = \"10.98.1.0/24\"\n";
    let a = "[services.a]\nnetworks = [\"n\"]\ncommand = \"/bin/sleep 3600\"\n";
    sb.write(
        "plumb.toml",
        &format!("{base}{a}[services.b]\nnetworks = [\"n\"]\ncommand = \"/bin/sleep 3600\"\n"),
    );
    sb.plumb_ok(&["up"]);
    let (a1, b1) = (pid_of(&sb, "a-1"), pid_of(&sb, "b-1"));

    // Another command for b: only b restarts.
    sb.write(
        "plumb.toml",
        &format!("{base}{a}[services.b]\nnetworks = [\"n\"]\ncommand = \"/bin/sleep 3601\"\n"),
    );
    sb.plumb_ok(&["up"]);
    let b2 = pid_of(&sb, "b-1");
    assert_eq!(pid_of(&sb, "a-1"), a1);
    assert_ne!(b2, b1);

    // A service added: nobody else restarts.
    sb.write("plumb.toml", &format!("{base}{a}[services.b]\nnetworks = [\"n\"]\ncommand = \"/bin/sleep 3601\"\n[services.c]\nnetworks = [\"n\"]\ncommand = \"/bin/sleep 3600\"\n"));
    sb.plumb_ok(&["up"]);
    assert_eq!((pid_of(&sb, "a-1"), pid_of(&sb, "b-1")), (a1, b2));
    assert!(
        sb.plumb_ok(&["exec", "a-1", "--", "getent", "hosts", "c"])
            .contains("10.98.0."),
        "hosts updated in place"
    );

    // b moves to another network: its container is rebuilt and its process runs in the new one.
    sb.write("plumb.toml", &format!("{base}{a}[services.b]\nnetworks = [\"m\"]\ncommand = \"/bin/sleep 3601\"\n[services.c]\nnetworks = [\"n\"]\ncommand = \"/bin/sleep 3600\"\n"));
    sb.plumb_ok(&["up"]);
    assert_eq!(pid_of(&sb, "a-1"), a1);
    let b3 = pid_of(&sb, "b-1");
    assert_ne!(b3, b2);
    assert_eq!(sb.ok("ip netns pids edit-b-1").trim(), b3.to_string());
    assert!(sb
        .ok("ip netns exec edit-b-1 ip -o addr show eth0")
        .contains("10.98.1."));

    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn foreground_supervision_stops_on_ctrl_c() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("plumb.toml", "name = \"fg\"\n[networks.n]\nsubnet = \"10.99.0.0/24\"\n[services.s]\nreplicas = 2\ncommand = \"/bin/sleep 3600\"\n");
    let child = sb.spawn_plumb(&["up", "--foreground"]);
    let running = eventually(Duration::from_secs(10), || {
        let rows = sb.ps();
        rows.len() == 2 && rows.iter().all(|r| r["process"]["state"] == "running")
    });
    assert!(running, "{:?}", sb.ps());
    sb.ok(&format!("kill -INT {}", child.id()));
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?} {}", out.status, text(&out.stderr));
    assert_eq!(sb.ok("ip netns pids fg-s-1"), "", "Ctrl-C stops the services");
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_service_that_keeps_failing_shows_in_ps_and_events_and_fails_up_wait() {
    let Some(sb) = Sandbox::start() else { return };
    let base = "name = \"fail\"\n[networks.n]\nsubnet = \"10.99.1.0/24\"\n";
    sb.write("plumb.toml", &format!("{base}[services.loop]\ncommand = [\"/bin/sh\", \"-c\", \"echo broken config; exit 3\"]\nrestart = \"always\"\n"));
    // `up` reports the replica started once its program runs; what it does next is for `ps`
    // and `events` to tell.
    // (Whether it still runs when `up` counts is a race: the count is not checked.)
    let out = sb.plumb(&["up"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let looping = eventually(Duration::from_secs(10), || {
        process(&sb.ps(), "loop-1")["restarts"].as_u64().unwrap_or(0) >= 2
    });
    assert!(looping, "{:?}", sb.ps());
    let events = sb.plumb_ok(&["events", "fail"]);
    assert!(
        events.contains("exit code 3") && events.contains("restarting"),
        "{events}"
    );
    assert!(sb.plumb_ok(&["logs", "loop"]).contains("broken config"));
    // `up --wait` waits for it to stay up, and says it does not.
    let out = sb.plumb(&["up", "--wait"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("loop-1: keeps exiting (exit code 3") && err.contains("plumb logs loop-1"),
        "{err}"
    );

    sb.write(
        "plumb.toml",
        &format!("{base}[services.once]\ncommand = \"/bin/false\"\nrestart = \"no\"\n"),
    );
    sb.plumb_ok(&["up"]);
    let exited = eventually(Duration::from_secs(5), || {
        process(&sb.ps(), "once-1")["state"] == "exited"
    });
    assert!(exited, "{:?}", sb.ps());
    let events = sb.plumb_ok(&["events", "fail"]);
    assert!(events.contains("exit code 1"), "{events}");
    let out = sb.plumb(&["up", "--wait"]);
    assert!(
        text(&out.stderr).contains("once-1: exited (exit code 1)"),
        "{}",
        text(&out.stderr)
    );
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

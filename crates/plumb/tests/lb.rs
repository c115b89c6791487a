//! Virtual IPs and load balancing with real packets: round robin over ready replicas, health
//! and killed processes taking replicas out (established connections kept), hairpin and
//! same-bridge clients, client-IP affinity, refusals, nothing leaking out of the stack, two
//! stacks on one service subnet, `plumb services` counts, and `down` leaving nothing.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Answers each connection with its replica's name, then echoes lines; a second port answers
/// health checks with 500 while the file `down-NAME` exists next to it.
const SERVER: &str = r#"
import os, socket, sys, threading
from http.server import BaseHTTPRequestHandler, HTTPServer
name = socket.gethostname()
here = os.path.dirname(os.path.abspath(__file__))
def serve(c):
    try:
        c.sendall((name + "\n").encode())
        while True:
            data = c.recv(100)
            if not data:
                break
            c.sendall(data)
    finally:
        c.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8000)); s.listen(512)
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(500 if os.path.exists(os.path.join(here, "down-" + name)) else 200)
        self.end_headers()
    def log_message(self, *a):
        pass
threading.Thread(target=HTTPServer(("0.0.0.0", 8001), H).serve_forever, daemon=True).start()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"#;

/// `count.py IP PORT N`: N connections one after the other; prints which replica answered
/// each (by name) and how each failure failed.
const COUNT: &str = r#"
import json, socket, sys
ip, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
names, errors = {}, {}
for _ in range(n):
    try:
        c = socket.create_connection((ip, port), timeout=2)
        line = c.makefile().readline().strip()
        c.close()
        names[line] = names.get(line, 0) + 1
    except Exception as e:
        errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
print(json.dumps({"names": names, "errors": errors}))
"#;

/// `hold.py IP PORT DIR`: one connection kept open; writes the replica's name to DIR/held,
/// waits for DIR/go, then sends a line and writes what came back to DIR/echo.
const HOLD: &str = r#"
import os, socket, sys, time
ip, port, d = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = socket.create_connection((ip, port), timeout=5)
f = c.makefile()
open(os.path.join(d, "held.tmp"), "w").write(f.readline().strip())
os.rename(os.path.join(d, "held.tmp"), os.path.join(d, "held"))
for _ in range(600):
    if os.path.exists(os.path.join(d, "go")):
        break
    time.sleep(0.05)
try:
    c.sendall(b"still here\n")
    reply = f.readline().strip()
except Exception as e:
    reply = type(e).__name__
open(os.path.join(d, "echo"), "w").write(reply)
"#;

struct Counts {
    names: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
}

fn count(sb: &Sandbox, ns: &str, ip: &str, port: u16, n: u32) -> Counts {
    let script = sb.dir.join("count.py");
    let out = sb.ok(&format!(
        "ip netns exec {ns} python3 {} {ip} {port} {n}",
        script.display()
    ));
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let map = |k: &str| -> BTreeMap<String, u64> {
        v[k].as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap()))
            .collect()
    };
    Counts {
        names: map("names"),
        errors: map("errors"),
    }
}

fn services(sb: &Sandbox, stack: &str) -> Vec<Value> {
    let out = sb.plumb_ok(&["services", "-s", stack, "--json"]);
    serde_json::from_str::<Value>(&out).unwrap().as_array().unwrap().clone()
}

fn service(sb: &Sandbox, stack: &str, name: &str) -> Value {
    services(sb, stack)
        .into_iter()
        .find(|s| s["service"] == name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

/// Replica name → ready, as `plumb services` reports it.
fn readiness(sb: &Sandbox, stack: &str, name: &str) -> BTreeMap<String, bool> {
    service(sb, stack, name)["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["container"].as_str().unwrap().to_string(),
                e["ready"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn setup(sb: &Sandbox) {
    sb.write("server.py", SERVER);
    sb.write("count.py", COUNT);
    sb.write("hold.py", HOLD);
}

fn web_service(replicas: u32, extra: &str, dir: &str) -> String {
    format!(
        "[services.web]\nreplicas = {replicas}\nexpose = [8000]\nrestart = \"no\"\n{extra}\
         command = [\"python3\", \"{dir}/server.py\"]\n\
         health = {{ http = \"/\", port = 8001, interval = \"500ms\", timeout = \"400ms\", retries = 1 }}\n"
    )
}

fn all_ready(sb: &Sandbox, stack: &str, svc: &str, n: usize) -> bool {
    let r = readiness(sb, stack, svc);
    r.len() == n && r.values().all(|ready| *ready)
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn round_robin_follows_readiness_and_keeps_established_connections() {
    let Some(sb) = Sandbox::start() else { return };
    setup(&sb);
    let dir = sb.dir.display().to_string();
    let stack = format!(
        "name = \"lb\"\n[networks.n]\nsubnet = \"10.61.0.0/24\"\n{}[services.client]\nlb = \"none\"\n",
        web_service(3, "", &dir)
    );
    let file = sb.write("lb.toml", &stack);
    sb.plumb_ok(&["up", "-f", path_str(&file)]);
    assert!(
        eventually(Duration::from_secs(20), || all_ready(&sb, "lb", "web", 3)),
        "web never became ready: {:?}",
        readiness(&sb, "lb", "web")
    );
    let vip = sb.vip("lb", "web");
    let client = "lb-client-1";

    // 300 connections from a client on the same bridge: exactly 100 on each replica.
    let c = count(&sb, client, &vip, 8000, 300);
    assert_eq!(c.errors, BTreeMap::new());
    let even: BTreeMap<String, u64> = [("web-1", 100), ("web-2", 100), ("web-3", 100)]
        .map(|(k, v)| (k.to_string(), v))
        .into();
    assert_eq!(c.names, even);
    // ... and `plumb services` counted them per endpoint.
    let counted: BTreeMap<String, u64> = service(&sb, "lb", "web")["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["container"].as_str().unwrap().to_string(),
                e["connections"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(counted, even);
    let table = sb.plumb_ok(&["services", "-s", "lb"]);
    assert!(table.contains(&vip) && table.contains("round-robin"), "{table}");

    // An established connection (to the next replica in turn: web-1).
    let hold_dir = sb.dir.join("hold");
    std::fs::create_dir_all(&hold_dir).unwrap();
    sb.spawn_in(
        client,
        &format!("python3 {dir}/hold.py {vip} 8000 {}", hold_dir.display()),
    );
    assert!(eventually(Duration::from_secs(5), || hold_dir.join("held").exists()));
    let held = std::fs::read_to_string(hold_dir.join("held")).unwrap();
    assert_eq!(held, "web-1");

    // web-2's health check fails: out within one interval (0.5 s) plus 1 s.
    let flagged = Instant::now();
    sb.write("down-web-2", "");
    assert!(eventually(Duration::from_secs(5), || !readiness(&sb, "lb", "web")["web-2"]));
    let took = flagged.elapsed();
    assert!(took < Duration::from_millis(1500 + 500), "took {took:?}");
    let c = count(&sb, client, &vip, 8000, 300);
    assert_eq!(c.errors, BTreeMap::new());
    assert_eq!(c.names.get("web-2"), None, "{:?}", c.names);
    assert_eq!(c.names.values().sum::<u64>(), 300);
    // The supervisor refilled web's slots over netlink; `up --dry-run` renders the same change
    // as nft commands (element edits only), and `nft -f` of them leaves the map as it is.
    let slots = || sb.ok("nft -j list map inet plumb_lb eps_web_6");
    let by_netlink = slots();
    assert!(!by_netlink.contains("ep_web-2"), "{by_netlink}");
    let plan = sb.plumb_ok(&["up", "-f", path_str(&file), "--dry-run"]);
    let start = plan.find("nft -f - <<'EOF'\n").expect("an nft transaction");
    let script = &plan[start + 17..start + plan[start..].find("\nEOF").unwrap()];
    assert!(
        script
            .lines()
            .all(|l| l.starts_with("delete element inet plumb_lb eps_web_6 ")
                || l.starts_with("add element inet plumb_lb eps_web_6 ")),
        "{script}"
    );
    sb.ok(&format!(
        "nft -f {}",
        sb.write("slots.nft", &format!("{script}\n")).display()
    ));
    assert_eq!(slots(), by_netlink);
    // The held connection to web-1 lived through the change.
    sb.write("hold/go", "");
    assert!(eventually(Duration::from_secs(5), || hold_dir.join("echo").exists()));
    assert_eq!(std::fs::read_to_string(hold_dir.join("echo")).unwrap(), "still here");

    // Healthy again: back in the rotation.
    std::fs::remove_file(sb.dir.join("down-web-2")).unwrap();
    assert!(eventually(Duration::from_secs(5), || all_ready(&sb, "lb", "web", 3)));
    let c = count(&sb, client, &vip, 8000, 300);
    assert_eq!(c.errors, BTreeMap::new());
    assert_eq!(c.names.len(), 3, "{:?}", c.names);

    // web-3's process killed by PID (restart = "no"): once the supervisor has noticed, no
    // new connection goes there and none fails.
    let pid = sb
        .ps()
        .into_iter()
        .find(|r| r["container"] == "web-3")
        .and_then(|r| r["process"]["pid"].as_u64())
        .expect("web-3's pid");
    sb.ok(&format!("kill -9 {pid}"));
    assert!(eventually(Duration::from_secs(5), || !readiness(&sb, "lb", "web")["web-3"]));
    let c = count(&sb, client, &vip, 8000, 300);
    assert_eq!(c.errors, BTreeMap::new());
    assert_eq!(c.names.get("web-3"), None, "{:?}", c.names);
    assert_eq!(c.names.values().sum::<u64>(), 300);

    // A replica calling its own service (hairpin), landing on itself too.
    let c = count(&sb, "lb-web-1", &vip, 8000, 30);
    assert_eq!(c.errors, BTreeMap::new());
    assert!(c.names.contains_key("web-1"), "{:?}", c.names);

    // A port the service does not expose is refused at once.
    let c = count(&sb, client, &vip, 9999, 3);
    assert_eq!(c.errors.get("ConnectionRefusedError"), Some(&3), "{:?}", c.errors);

    // After those health changes, `up` again does not replace the table.
    let plan = sb.plumb_ok(&["up", "-f", path_str(&file), "--dry-run", "--json"]);
    assert!(!plan.contains("\"replace\""), "{plan}");
    assert!(!plan.contains("\"create\""), "{plan}");

    sb.plumb_ok(&["down", "-f", path_str(&file)]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn affinity_refusals_nothing_leaks_and_two_stacks_share_a_subnet() {
    let Some(sb) = Sandbox::start() else { return };
    setup(&sb);
    let dir = sb.dir.display().to_string();
    let a = format!(
        "name = \"aff\"\n[networks.n]\nsubnet = \"10.62.0.0/24\"\n{}\
         [services.client]\nreplicas = 2\nlb = \"none\"\n\
         [services.sick]\nexpose = [8000]\ncommand = [\"sleep\", \"600\"]\nrestart = \"no\"\n\
         health = {{ exec = [\"false\"], interval = \"200ms\", retries = 1 }}\n",
        web_service(3, "affinity = \"client-ip\"\n", &dir)
    );
    // The second stack's `web` gets the same VIP as the first one's (same subnet, same order).
    let b = "name = \"other\"\n[networks.n]\nsubnet = \"10.63.0.0/24\"\n\
         [services.aaa]\nexpose = [8000]\n[services.web]\nexpose = [8000]\n\
         [services.client]\nlb = \"none\"\n";
    let fa = sb.write("a.toml", &a);
    let fb = sb.write("b.toml", b);
    sb.plumb_ok(&["up", "-f", path_str(&fa)]);
    sb.plumb_ok(&["up", "-f", path_str(&fb)]);
    assert!(eventually(Duration::from_secs(20), || all_ready(&sb, "aff", "web", 3)));
    let web = sb.vip("aff", "web");
    assert_eq!(sb.vip("other", "web"), web);
    sb.serve("other-web-1", 8000, "other");

    // Each client stays on one replica; the second lands on another one.
    let c1 = count(&sb, "aff-client-1", &web, 8000, 30);
    let c2 = count(&sb, "aff-client-2", &web, 8000, 30);
    assert_eq!((c1.errors.len(), c2.errors.len()), (0, 0));
    assert_eq!(c1.names.len(), 1, "{:?}", c1.names);
    assert_eq!(c2.names.len(), 1, "{:?}", c2.names);
    assert_ne!(c1.names.keys().next(), c2.names.keys().next());
    // Its replica unready: the client moves to another one, and stays there.
    let first = c1.names.keys().next().unwrap().clone();
    sb.write(&format!("down-{first}"), "");
    assert!(eventually(Duration::from_secs(5), || !readiness(&sb, "aff", "web")[&first]));
    let moved = count(&sb, "aff-client-1", &web, 8000, 30);
    assert_eq!(moved.errors.len(), 0, "{:?}", moved.errors);
    assert_eq!(moved.names.len(), 1, "{:?}", moved.names);
    assert_ne!(moved.names.keys().next(), Some(&first));
    std::fs::remove_file(sb.dir.join(format!("down-{first}"))).unwrap();
    assert!(eventually(Duration::from_secs(5), || all_ready(&sb, "aff", "web", 3)));

    // The other stack's clients reach their own service at the same address.
    let other = sb
        .connect(Some("other-client-1"), &web, 8000)
        .expect("other stack's VIP");
    assert!(other.starts_with("other from"), "{other}");

    // Count what reaches the outside namespace for the service subnet (it must stay 0).
    sb.ok("ip netns exec outside nft -f - <<'EOF'\ntable inet watch {\n chain in {\n  type filter hook prerouting priority -300; policy accept;\n  ip daddr 10.96.0.0/12 counter\n }\n}\nEOF");

    // No ready replica: refused at once (a reset, not a timeout).
    assert!(eventually(Duration::from_secs(5), || !readiness(&sb, "aff", "sick")["sick-1"]));
    let sick = sb.vip("aff", "sick");
    let c = count(&sb, "aff-client-1", &sick, 8000, 3);
    assert_eq!(c.errors.get("ConnectionRefusedError"), Some(&3), "{:?}", c.errors);
    // An address of the subnet no service has, and UDP to a VIP: refused, not routed.
    let c = count(&sb, "aff-client-1", "10.96.15.200", 80, 2);
    assert_eq!(c.errors.get("ConnectionRefusedError"), Some(&2), "{:?}", c.errors);
    sb.ok(&format!(
        "ip netns exec aff-client-1 python3 -c \"import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'x', ('{web}', 53))\""
    ));
    std::thread::sleep(Duration::from_millis(200));
    let watch = sb.ok("ip netns exec outside nft list table inet watch");
    assert!(watch.contains("counter packets 0 bytes 0"), "{watch}");
    // The watch itself works: the outside sees a packet sent to it for that range.
    sb.ok("ip netns exec outside bash -c 'ip link set lo up; ip route add 10.96.0.0/12 dev lo 2>/dev/null; true'");
    sb.sh("ip route get 10.96.15.200 >/dev/null && timeout 1 bash -c 'echo > /dev/tcp/10.96.15.200/80' 2>/dev/null");
    let watch = sb.ok("ip netns exec outside nft list table inet watch");
    assert!(!watch.contains("counter packets 0 bytes 0"), "{watch}");
    sb.ok("ip netns exec outside nft delete table inet watch");

    sb.plumb_ok(&["down", "-f", path_str(&fa)]);
    sb.plumb_ok(&["down", "-f", path_str(&fb)]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn services_of_an_unknown_stack_is_an_error() {
    let Some(sb) = Sandbox::start() else { return };
    let out = sb.plumb(&["services", "-s", "nosuch"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no stack called \"nosuch\""),
        "{}",
        text(&out.stderr)
    );
}

/// A client whose first network is another one reaches a service on its second (internal)
/// network through the VIP, by name; a container not on that network is refused.
#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_client_reaches_a_vip_on_its_second_network() {
    let sb = Sandbox::start().unwrap();
    setup(&sb);
    let dir = sb.dir.display().to_string();
    let stack = format!(
        "name = \"side\"\n[networks.front]\nsubnet = \"10.89.53.0/24\"\n[networks.db]\nsubnet = \"10.89.54.0/24\"\ninternal = true\n\
         [services.client]\nnetworks = [\"front\", \"db\"]\n[services.outsider]\nnetworks = [\"front\"]\n{}",
        web_service(2, "networks = [\"db\"]\n", &dir)
    );
    sb.write("plumb.toml", &stack);
    sb.plumb_ok(&["up"]);
    assert!(eventually(Duration::from_secs(15), || all_ready(&sb, "side", "web", 2)));
    let vip = sb.vip("side", "web");
    // The name gives the VIP to the client, whose default route is front.
    let resolved = sb.ok("ip netns exec side-client-1 getent hosts web");
    assert!(resolved.starts_with(&format!("{vip} ")), "{resolved}");
    let counts = count(&sb, "side-client-1", &vip, 8000, 20);
    assert!(counts.errors.is_empty(), "{:?}", counts.errors);
    assert_eq!(counts.names.values().sum::<u64>(), 20);
    assert_eq!(counts.names.len(), 2, "both replicas answer: {:?}", counts.names);
    // A container on front only shares no network with web: refused, and no name either.
    let refused = count(&sb, "side-outsider-1", &vip, 8000, 3);
    assert_eq!(refused.names.len(), 0, "{:?}", refused.names);
    assert!(!sb.sh("ip netns exec side-outsider-1 getent hosts web").status.success());
    // A third replica: the table is edited in place (a new slots map replaces the old one),
    // and once ready the third replica gets its exact third of the connections.
    sb.write("plumb.toml", &stack.replace("replicas = 2", "replicas = 3"));
    let plan = sb.plumb_ok(&["up", "--dry-run", "--json"]);
    assert!(!plan.contains("\"replace\"") && plan.contains("\"update\""), "{plan}");
    sb.plumb_ok(&["up"]);
    assert!(eventually(Duration::from_secs(15), || all_ready(&sb, "side", "web", 3)));
    let counts = count(&sb, "side-client-1", &vip, 8000, 30);
    assert!(counts.errors.is_empty(), "{:?}", counts.errors);
    assert_eq!(
        counts.names.values().collect::<Vec<_>>(),
        [&10, &10, &10],
        "{:?}",
        counts.names
    );
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_scaled_service_without_declared_ports_spreads_its_name_over_every_replica() {
    let Some(sb) = Sandbox::start() else { return };
    setup(&sb);
    let dir = sb.dir.display().to_string();
    let stack = format!(
        "name = \"spread\"\n[networks.n]\nsubnet = \"10.89.55.0/24\"\n[networks.other]\nsubnet = \"10.89.56.0/24\"\n\
         [services.client]\nnetworks = [\"n\"]\n[services.outsider]\nnetworks = [\"other\"]\n{}",
        web_service(3, "networks = [\"n\"]\n", &dir).replace("expose = [8000]\n", "")
    );
    sb.write("plumb.toml", &stack);
    sb.plumb_ok(&["up"]);
    assert!(eventually(Duration::from_secs(15), || all_ready(
        &sb, "spread", "web", 3
    )));
    // No declared ports, three replicas: the name gives a VIP balancing every port.
    let vip = sb.vip("spread", "web");
    let resolved = sb.ok("ip netns exec spread-client-1 getent hosts web");
    assert!(resolved.starts_with(&format!("{vip} ")), "{resolved}");
    assert_eq!(service(&sb, "spread", "web")["ports"], serde_json::json!(["all"]));
    // 300 connections by name land 100 on each replica.
    let counts = count(&sb, "spread-client-1", "web", 8000, 300);
    assert!(counts.errors.is_empty(), "{:?}", counts.errors);
    assert_eq!(
        counts.names.values().collect::<Vec<_>>(),
        [&100, &100, &100],
        "{:?}",
        counts.names
    );
    // Another port of the same replicas goes through the VIP too (the health server's).
    let http = sb.ok(&format!(
        "ip netns exec spread-client-1 curl -s -o /dev/null -w '%{{http_code}}' --max-time 3 http://{vip}:8001/"
    ));
    assert_eq!(http.trim(), "200");
    // A port nothing listens on is refused by the replica, and a client on no network of
    // web's is refused by the VIP.
    assert!(sb.connect(Some("spread-client-1"), &vip, 8999).is_none());
    let refused = count(&sb, "spread-outsider-1", &vip, 8000, 3);
    assert_eq!(refused.names.len(), 0, "{:?}", refused.names);
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

/// The same from a Compose file, as Compose users write it: `deploy.replicas` and no ports.
#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_compose_service_scaled_without_ports_spreads_by_name() {
    let Some(sb) = Sandbox::start() else { return };
    setup(&sb);
    let dir = sb.dir.display().to_string();
    let compose = format!(
        "name: cspread\nnetworks:\n  default:\n    ipam:\n      config:\n        - subnet: 10.89.57.0/24\n\
         services:\n  client:\n    command: [sleep, \"600\"]\n  api:\n    command: [python3, {dir}/server.py]\n\
         \x20   deploy:\n      replicas: 3\n    healthcheck:\n      test: [CMD, python3, -c, \"import socket; socket.create_connection(('127.0.0.1', 8000))\"]\n\
         \x20     interval: 500ms\n"
    );
    sb.write("compose.yaml", &compose);
    sb.plumb_ok(&["up", "-f", "compose.yaml"]);
    assert!(eventually(Duration::from_secs(15), || all_ready(
        &sb, "cspread", "api", 3
    )));
    let counts = count(&sb, "cspread-client-1", "api", 8000, 300);
    assert!(counts.errors.is_empty(), "{:?}", counts.errors);
    assert_eq!(
        counts.names.values().collect::<Vec<_>>(),
        [&100, &100, &100],
        "{:?}",
        counts.names
    );
    sb.plumb_ok(&["down", "-f", "compose.yaml"]);
    sb.assert_clean();
}

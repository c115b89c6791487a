//! Image services: each replica is a real OCI container (podman, runc) joined to the
//! namespace plumb made for it. A host program reaches the service by name and VIP with real
//! requests, spread over the three containers; a policy keeps another host program out, a
//! chaos partition cuts it off; the exec health check and `plumb exec` run inside the
//! container; `down` leaves no namespace, link, table, process or podman container, also
//! after the supervisor was killed.

mod common;

use common::*;

const STACK: &str = r#"
name = "oci"
[networks.n]
subnet = "10.89.120.0/24"
[services.web]
build = "web"
replicas = 3
expose = [8080]
env = { GREETING = "hello" }
cap_drop = ["KILL"]
health = { exec = ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/"], interval = "1s", timeout = "1s" }
[services.client]
command = "sleep infinity"
[services.intruder]
command = "sleep infinity"
[[policies]]
from = "client"
to = "web"
ports = [8080]
"#;

const DOCKERFILE: &str = "FROM localhost/debian:12\nCOPY app.py /app/app.py\nCMD [\"python3\", \"/app/app.py\"]\n";

/// Answers every GET with the container's hostname, the greeting from its environment, and
/// whether it runs in its own root (the image's, which has no /work).
const APP: &str = r#"
import http.server, os, socket
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = "%s %s image-root=%s caps=%s\n" % (socket.gethostname(), os.environ.get("GREETING"),
            not os.path.exists("/work") and os.path.exists("/app/app.py"),
            [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0])
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body.encode())
    def log_message(self, *args):
        pass
http.server.HTTPServer(("0.0.0.0", 8080), Handler).serve_forever()
"#;

/// SIGKILL to the stack's supervisor (by PID), as a crash would end it.
fn kill_supervisor(sb: &Sandbox) {
    let pids: Vec<u32> = sb
        .processes()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"supervise"))
        })
        .collect();
    assert_eq!(pids.len(), 1, "one supervisor");
    sb.ok(&format!("kill -9 {}", pids[0]));
}

fn get(sb: &Sandbox, from: &str, url: &str) -> Option<String> {
    let out = sb.sh(&format!("ip netns exec {from} curl -sS --max-time 2 {url}"));
    out.status.success().then(|| text(&out.stdout).trim().to_string())
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects and podman in a sandbox)")]
fn image_replicas_are_podman_containers_in_plumbs_namespaces() {
    let Some(sb) = Sandbox::start() else { return };
    let _podman = sb.use_podman();
    sb.write("plumb.toml", STACK);
    sb.write("web/Dockerfile", DOCKERFILE);
    sb.write("web/app.py", APP);
    let up = sb.plumb_ok(&["up", "--wait"]);
    assert!(up.contains("5 created"), "{up}");
    assert_eq!(sb.podman_containers(), ["oci-web-1", "oci-web-2", "oci-web-3"]);
    // Healthy through `podman exec` (the image has curl; the check runs in the container).
    let ps = sb.plumb_ok(&["ps"]);
    assert_eq!(ps.matches("healthy").count(), 3, "{ps}");
    assert!(!ps.contains("untracked"), "the container's processes are its own: {ps}");

    // By name (the VIP), spread over the three containers: their own root, env and caps.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..9 {
        let answer = get(&sb, "oci-client-1", "http://web:8080/").expect("client reaches web by name");
        assert!(answer.contains(" hello image-root=True caps="), "{answer}");
        seen.insert(answer.split_whitespace().next().unwrap().to_string());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["web-1", "web-2", "web-3"]);
    // The VIP by address, and a replica by its own address and name.
    let vip = sb
        .ok("ip netns exec oci-client-1 getent ahostsv4 web | head -1 | cut -d' ' -f1")
        .trim()
        .to_string();
    assert!(
        get(&sb, "oci-client-1", &format!("http://{vip}:8080/")).is_some(),
        "VIP {vip}"
    );
    let web2 = sb.address("web-2", "eth0");
    let answer = get(&sb, "oci-client-1", &format!("http://{web2}:8080/")).expect("web-2 by address");
    assert!(answer.starts_with("web-2 "), "{answer}");
    // Podman's default set less cap_drop = ["KILL"]: no KILL (bit 5), no NET_RAW (bit 13).
    let caps = u64::from_str_radix(answer.rsplit('=').next().unwrap(), 16).unwrap();
    assert_eq!(caps & (1 << 5), 0, "cap_drop KILL: {answer}");
    assert_eq!(caps & (1 << 13), 0, "podman's default has no NET_RAW: {answer}");
    assert_ne!(caps & 1, 0, "CHOWN is in podman's default: {answer}");

    // `plumb exec` runs inside the container (the image's files), with the command's exit code.
    assert!(sb
        .plumb_ok(&["exec", "web-2", "--", "cat", "/app/app.py"])
        .contains("HTTPServer"));
    assert_eq!(
        sb.plumb(&["exec", "web-2", "--", "sh", "-c", "exit 7"]).status.code(),
        Some(7)
    );

    // The policy: only client may reach web; the intruder's connect fails (name and address).
    assert_eq!(get(&sb, "oci-intruder-1", "http://web:8080/"), None);
    assert_eq!(get(&sb, "oci-intruder-1", &format!("http://{web2}:8080/")), None);
    assert!(
        get(&sb, "oci-client-1", &format!("http://{web2}:8080/")).is_some(),
        "client still gets in"
    );

    // Chaos applies to a container as to a program: a partition between client and web
    // stops the requests, and clearing it lets them through again.
    sb.plumb_ok(&["chaos", "partition", "client", "web"]);
    assert_eq!(get(&sb, "oci-client-1", &format!("http://{web2}:8080/")), None);
    sb.plumb_ok(&["chaos", "clear", "1"]);
    assert!(
        get(&sb, "oci-client-1", &format!("http://{web2}:8080/")).is_some(),
        "partition cleared"
    );

    // A replica killed inside its container comes back (a new container of the same name).
    sb.ok("podman exec oci-web-1 kill -9 $(podman inspect --format '{{.State.Pid}}' oci-web-1) || true");
    sb.ok("podman kill oci-web-1 >/dev/null");
    let back = (0..100).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        get(&sb, "oci-client-1", "http://web-1:8080/").is_some_and(|a| a.starts_with("web-1 "))
    });
    assert!(back, "web-1 restarted: {}", sb.plumb_ok(&["ps"]));

    sb.plumb_ok(&["down"]);
    assert_eq!(sb.podman_containers(), Vec::<String>::new());
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects and podman in a sandbox)")]
fn containers_a_killed_supervisor_left_are_removed_by_the_next_up_and_by_down() {
    let Some(sb) = Sandbox::start() else { return };
    let _podman = sb.use_podman();
    sb.write("plumb.toml", STACK);
    sb.write("web/Dockerfile", DOCKERFILE);
    sb.write("web/app.py", APP);
    sb.plumb_ok(&["up", "--wait"]);
    kill_supervisor(&sb);
    // The containers run on without it (and without its DNS server: by address); the next up
    // ends them and starts them again (and builds nothing).
    let web2 = sb.address("web-2", "eth0");
    assert!(get(&sb, "oci-client-1", &format!("http://{web2}:8080/")).is_some());
    let up = sb.plumb_ok(&["up", "--wait"]);
    assert!(!up.contains("building"), "{up}");
    assert_eq!(sb.podman_containers(), ["oci-web-1", "oci-web-2", "oci-web-3"]);
    assert!(get(&sb, "oci-client-1", "http://web:8080/").is_some());
    kill_supervisor(&sb);
    sb.plumb_ok(&["down"]);
    assert_eq!(sb.podman_containers(), Vec::<String>::new());
    // The `podman run`s the killed supervisor started end with their containers.
    let gone = (0..50).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        sb.processes().is_empty()
    });
    assert!(gone, "processes left: {:?}", sb.processes());
    sb.assert_clean();
}

//! The stack's DNS server, from inside containers with real queries: getaddrinfo (python),
//! SRV and PTR (dig), scoping by network, upstream names through a DNS server in the
//! sandbox's `outside` namespace, health changes reaching answers, queries during a reload,
//! and nothing left after `down`.

mod common;

use std::time::{Duration, Instant};

use common::*;

const STACK: &str = r#"
name = "d"
[networks.front]
subnet = "10.130.1.0/24"
[networks.back]
subnet = "10.130.2.0/24"
[networks.db]
subnet = "10.130.3.0/24"
internal = true
[services.web]
networks = ["front"]
command = "/bin/sleep 3600"
[services.api]
networks = ["front", "back"]
replicas = 2
expose = [80, "53/udp"]
aliases = ["gateway"]
command = "/bin/sleep 3600"
[services.store]
networks = ["back", "db"]
replicas = 2
lb = "none"
[services.redis]
networks = ["db"]
"#;

/// A DNS server for the `outside` namespace: `*.example.test` is 198.51.100.7, the rest
/// NXDOMAIN. Counts the questions it gets in `COUNT_FILE`.
const UPSTREAM: &str = r#"
import socket, struct, sys
count_file = sys.argv[1]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 53))
n = 0
while True:
    q, a = s.recvfrom(512)
    n += 1
    open(count_file, "w").write(str(n))
    i, labels = 12, []
    while q[i]:
        labels.append(q[i+1:i+1+q[i]].decode()); i += 1 + q[i]
    name, question = ".".join(labels).lower(), q[12:i+5]
    qtype = struct.unpack(">H", q[i+1:i+3])[0]
    if name.endswith("example.test") and qtype == 1:
        head = q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
        rr = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton("198.51.100.7")
        s.sendto(head + question + rr, a)
    else:
        s.sendto(q[:2] + b"\x81\x83\x00\x01\x00\x00\x00\x00\x00\x00" + question, a)
"#;

/// What getaddrinfo gives `name` in namespace `ns` (IPv4, sorted), or the error's text.
fn getaddrinfo(sb: &Sandbox, ns: &str, name: &str) -> Result<Vec<String>, String> {
    let code = format!(
        "import socket\ntry:\n print(' '.join(sorted({{a[4][0] for a in socket.getaddrinfo('{name}', 80, socket.AF_INET)}})))\nexcept socket.gaierror as e:\n print('ERROR', e)\n"
    );
    let out = sb.ok(&format!("ip netns exec {ns} python3 -c \"{code}\""));
    let out = out.trim();
    match out.strip_prefix("ERROR ") {
        Some(e) => Err(e.to_string()),
        None => Ok(out.split_whitespace().map(str::to_string).collect()),
    }
}

/// dig in namespace `ns` (one try, 1 s); its whole output.
fn dig(sb: &Sandbox, ns: &str, args: &str) -> String {
    text(&sb.sh(&format!("ip netns exec {ns} dig +time=1 +tries=1 {args}")).stdout)
}

fn status(dig_output: &str) -> &str {
    dig_output
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no answer")
}

fn short(sb: &Sandbox, ns: &str, args: &str) -> Vec<String> {
    let mut v: Vec<String> = dig(sb, ns, &format!("+short {args}"))
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn start_upstream(sb: &Sandbox) -> std::path::PathBuf {
    let script = sb.write("upstream.py", UPSTREAM);
    let count = sb.dir.join("upstream-count");
    sb.spawn_in("outside", &format!("python3 {} {}", script.display(), count.display()));
    // Until it answers (from the sandbox host, straight to it).
    assert!(
        eventually(Duration::from_secs(10), || sb
            .sh("dig +time=1 +tries=1 +short @203.0.113.2 up.example.test")
            .stdout
            .starts_with(b"198.51.100.7")),
        "the upstream DNS server did not start"
    );
    sb.use_resolv_conf("nameserver 203.0.113.2\noptions timeout:1\n");
    count
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn names_resolve_inside_containers_scoped_by_network_and_the_rest_goes_upstream() {
    let Some(sb) = Sandbox::start() else { return };
    let upstream_count = start_upstream(&sb);
    sb.write("plumb.toml", STACK);
    sb.plumb_ok(&["up"]);
    let a = |c: &str, i: &str| sb.address(c, i);
    let (web, api1) = ("d-web-1", "d-api-1");

    // resolv.conf for `ip netns exec`: the first network's gateway, the stack's domain.
    let conf = sb.ok("cat /etc/netns/d-store-1/resolv.conf");
    assert!(
        conf.contains("nameserver 10.130.2.1\nsearch d\noptions ndots:1"),
        "{conf}"
    );

    // A service's name gives its VIP to an asker that shares a network with it.
    let api_vip = sb.vip("d", "api");
    for name in ["api", "api.d", "gateway", "gateway.d."] {
        assert_eq!(getaddrinfo(&sb, web, name), Ok(vec![api_vip.clone()]), "{name}");
    }
    assert_eq!(getaddrinfo(&sb, web, "api-2"), Ok(vec![a("api-2", "eth0")]));
    assert_eq!(getaddrinfo(&sb, web, "api-2.d"), Ok(vec![a("api-2", "eth0")]));
    // Headless: every ready replica, on the network shared (back for api, db for redis).
    let store_back = vec![a("store-1", "eth0"), a("store-2", "eth0")];
    assert_eq!(getaddrinfo(&sb, api1, "store"), Ok(store_back));
    let store_db = vec![a("store-1", "eth1"), a("store-2", "eth1")];
    assert_eq!(getaddrinfo(&sb, "d-redis-1", "store"), Ok(store_db));

    // Scoping: web shares no network with store or redis; redis none with web or api.
    for (asker, hidden) in [
        (web, "store"),
        (web, "store-1"),
        (web, "redis"),
        ("d-redis-1", "api"),
        ("d-redis-1", "web-1"),
    ] {
        assert!(getaddrinfo(&sb, asker, hidden).is_err(), "{asker} resolves {hidden}");
        assert_eq!(
            status(&dig(&sb, asker, &format!("{hidden}.d"))),
            "NXDOMAIN",
            "{asker} {hidden}"
        );
    }

    // SRV for declared ports, PTR for assigned addresses (scoped too), over UDP and TCP.
    assert_eq!(short(&sb, web, "SRV _80._tcp.api.d"), ["0 100 80 api.d."]);
    assert_eq!(short(&sb, web, "SRV _53._udp.gateway"), ["0 100 53 api.d."]);
    assert_eq!(status(&dig(&sb, web, "SRV _81._tcp.api.d")), "NXDOMAIN");
    assert_eq!(short(&sb, web, &format!("-x {}", a("api-2", "eth0"))), ["api-2.d."]);
    assert_eq!(
        status(&dig(&sb, web, &format!("-x {}", a("api-2", "eth1")))),
        "NXDOMAIN"
    );
    assert_eq!(short(&sb, web, "+tcp web-1.d"), [a("web-1", "eth0")]);

    // Other names go upstream (the `outside` server), for askers on a network that is not
    // internal; redis, on an internal network only, gets NXDOMAIN without asking upstream.
    assert_eq!(
        getaddrinfo(&sb, web, "www.example.test"),
        Ok(vec!["198.51.100.7".into()])
    );
    assert_eq!(
        getaddrinfo(&sb, "d-store-1", "x.example.test"),
        Ok(vec!["198.51.100.7".into()])
    );
    let asked = std::fs::read_to_string(&upstream_count).unwrap();
    assert!(getaddrinfo(&sb, "d-redis-1", "www.example.test").is_err());
    assert_eq!(status(&dig(&sb, "d-redis-1", "db.example.test")), "NXDOMAIN");
    assert_eq!(
        std::fs::read_to_string(&upstream_count).unwrap(),
        asked,
        "redis was forwarded"
    );
    // A second question for a name is answered from the cache (its TTL is 60 s).
    assert_eq!(short(&sb, web, "www.example.test"), ["198.51.100.7"]);
    assert_eq!(std::fs::read_to_string(&upstream_count).unwrap(), asked);

    // Only the own network's gateway answers DNS: web (front) may not ask the back gateway,
    // even though the host is otherwise reachable from front.
    assert_eq!(status(&dig(&sb, web, "@10.130.2.1 web-1.d")), "no answer");
    assert_eq!(short(&sb, web, "@10.130.1.1 web-1.d"), [a("web-1", "eth0")]);
    // Processes plumb starts see the same (their resolv.conf is bound in their mount namespace).
    let from_service = sb.plumb_ok(&["exec", "web-1", "--", "getent", "ahostsv4", "api-1"]);
    assert!(from_service.starts_with(&a("api-1", "eth0")), "{from_service}");
    let conf = sb.plumb_ok(&["exec", "web-1", "--", "cat", "/etc/resolv.conf"]);
    assert!(conf.contains("nameserver 10.130.1.1"), "{conf}");
    // And the hosts file holds the container's own name only.
    let hosts = sb.plumb_ok(&["exec", "web-1", "--", "cat", "/etc/hosts"]);
    assert!(hosts.contains("web-1") && !hosts.contains("api"), "{hosts}");

    sb.plumb_ok(&["down"]);
    assert_eq!(
        sb.ok("ss -Hlnu sport = :53; ss -Hlnt sport = :53").trim(),
        "",
        "DNS left listening"
    );
    sb.assert_clean();
}

/// A poller in a container's namespace: reads the supervisor's status.json and asks the DNS
/// server for `hl.d` in one loop (every 5 ms); prints the milliseconds from the first status
/// saying `CONTAINER` is healthy to the first answer holding its address (negative: the answer
/// came first, the supervisor updates the zone before it writes the status).
const POLLER: &str = r#"
import json, socket, struct, sys, time
stack_dir, container, server = sys.argv[1], sys.argv[2], sys.argv[3]
def ask():
    q = struct.pack(">HHHHHH", 7, 0x100, 1, 0, 0, 0) + b"\x02hl\x01d\x00\x00\x01\x00\x01"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
    s.sendto(q, (server, 53)); r = s.recv(1500); s.close()
    n, out, i = struct.unpack(">H", r[6:8])[0], set(), len(q)
    for _ in range(n):
        rdlen = struct.unpack(">H", r[i+10:i+12])[0]
        out.add(socket.inet_ntoa(r[i+12:i+12+rdlen])); i += 12 + rdlen
    return out
addr, t_status, t_dns, deadline = None, None, None, time.time() + 20
while time.time() < deadline and (t_status is None or t_dns is None):
    try:
        if addr is None:
            run = json.load(open(stack_dir + "/run.json"))
            for c in (run.get("desired") or {}).get("containers", []):
                if c["name"] == container:
                    addr = c["interfaces"][0]["address"]
        st = json.load(open(stack_dir + "/status.json"))
        r = st["replicas"].get(container)
        if t_status is None and r and r.get("health") == "healthy":
            t_status = time.time()
        if t_dns is None and addr and addr in ask():
            t_dns = time.time()
    except (OSError, ValueError, KeyError):
        pass
    time.sleep(0.005)
print("none" if t_status is None or t_dns is None else round((t_dns - t_status) * 1000))
"#;

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn health_changes_reach_the_headless_answer_at_once() {
    let Some(sb) = Sandbox::start() else { return };
    let down = sb.dir.join("down");
    std::fs::write(&down, "").unwrap();
    // Healthy unless its own address is listed in `down` (the probe runs in its namespace).
    let stack = |replicas: u32| {
        format!(
            "name = \"d\"\n[networks.n]\nsubnet = \"10.131.0.0/24\"\n[services.client]\ncommand = \"/bin/sleep 3600\"\n\
             [services.hl]\nlb = \"none\"\nreplicas = {replicas}\ncommand = \"/bin/sleep 3600\"\n\
             health = {{ exec = [\"/bin/sh\", \"-c\", \"! grep -qx \\\"$(hostname -I | tr -d ' ')\\\" {}\"], interval = \"500ms\", retries = 1 }}\n",
            down.display()
        )
    };
    sb.write("plumb.toml", &stack(2));
    sb.plumb_ok(&["up"]);
    let (hl1, hl2) = (sb.address("hl-1", "eth0"), sb.address("hl-2", "eth0"));
    assert!(
        eventually(Duration::from_secs(5), || getaddrinfo(&sb, "d-client-1", "hl")
            == Ok(vec![hl1.clone(), hl2.clone()])),
        "both replicas never answered"
    );

    // hl-1 turns unhealthy: out of the answer within one probe interval (500 ms, retries 1)
    // plus one second, measured from the moment its probe starts failing.
    std::fs::write(&down, format!("{hl1}\n")).unwrap();
    let since = Instant::now();
    assert!(
        eventually(Duration::from_secs(5), || getaddrinfo(&sb, "d-client-1", "hl")
            == Ok(vec![hl2.clone()])),
        "hl-1 stayed in the answer"
    );
    let took = since.elapsed();
    assert!(took <= Duration::from_millis(1500), "took {took:?}");
    // Both unhealthy: the name does not exist (NXDOMAIN), the replicas' own names still do.
    std::fs::write(&down, format!("{hl1}\n{hl2}\n")).unwrap();
    assert!(eventually(Duration::from_secs(3), || getaddrinfo(
        &sb,
        "d-client-1",
        "hl"
    )
    .is_err()));
    assert_eq!(status(&dig(&sb, "d-client-1", "hl.d")), "NXDOMAIN");
    assert_eq!(getaddrinfo(&sb, "d-client-1", "hl-1"), Ok(vec![hl1.clone()]));
    std::fs::write(&down, "").unwrap();

    // A new replica (hl-3, added by `up`): its address joins the answer within 100 ms of the
    // supervisor's status calling it healthy. Method: one poller in the client's namespace
    // reads status.json and asks the server every 5 ms, and prints the difference.
    let poller = sb.write("poller.py", POLLER);
    let stack_dir = sb.state_dir.join("stacks/d");
    let run = format!(
        "ip netns exec d-client-1 python3 {} {} hl-3 10.131.0.1",
        poller.display(),
        stack_dir.display()
    );
    let handle = {
        let out = sb.dir.join("poller.out");
        sb.ok(&format!("{run} > {} 2>&1 & echo $!", out.display()));
        out
    };
    sb.write("plumb.toml", &stack(3));
    sb.plumb_ok(&["up"]);
    assert!(eventually(Duration::from_secs(20), || std::fs::read_to_string(&handle)
        .is_ok_and(|s| !s.trim().is_empty())));
    let result = std::fs::read_to_string(&handle).unwrap();
    let ms: i64 = result.trim().parse().unwrap_or_else(|_| panic!("poller: {result}"));
    eprintln!("hl-3 answered {ms} ms after the status called it healthy");
    assert!(ms <= 100, "hl-3 answered {ms} ms after it was healthy");
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

/// Asks `web-1.d` again and again for SECONDS (1 s timeout each) and prints how many got no
/// answer, the time of the first and of the last question, and how many were asked.
const QUERY_LOOP: &str = r#"
import socket, struct, sys, time
seconds, server, missed, k = float(sys.argv[1]), sys.argv[2], 0, 0
first = time.time()
open(sys.argv[3], "w").write("started")
while time.time() < first + seconds:
    k += 1
    q = struct.pack(">HHHHHH", k & 0xffff, 0x100, 1, 0, 0, 0) + b"\x05web-1\x01d\x00\x00\x01\x00\x01"
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1)
    try:
        s.sendto(q, (server, 53)); r = s.recv(1500)
        if r[:2] != q[:2] or struct.unpack(">H", r[6:8])[0] != 1: missed += 1
    except socket.timeout:
        missed += 1
    s.close()
print(missed, first, time.time(), k)
"#;

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn queries_during_a_reload_are_all_answered() {
    let Some(sb) = Sandbox::start() else { return };
    let base =
        "name = \"d\"\n[networks.n]\nsubnet = \"10.132.0.0/24\"\n[services.web]\ncommand = \"/bin/sleep 3600\"\n";
    sb.write("plumb.toml", base);
    sb.plumb_ok(&["up"]);
    let script = sb.write("loop.py", QUERY_LOOP);
    let out = sb.dir.join("loop.out");
    let started = sb.dir.join("loop.started");
    sb.ok(&format!(
        "ip netns exec d-web-1 python3 {} 8 10.132.0.1 {} > {} 2>&1 & echo $!",
        script.display(),
        started.display(),
        out.display()
    ));
    assert!(
        eventually(Duration::from_secs(5), || started.exists()),
        "the query loop did not start"
    );
    let up_started = std::time::SystemTime::now();
    sb.write(
        "plumb.toml",
        &format!("{base}[services.added]\ncommand = \"/bin/sleep 3600\"\nexpose = [80]\n"),
    );
    sb.plumb_ok(&["up"]);
    let up_ended = std::time::SystemTime::now();
    assert!(eventually(Duration::from_secs(60), || std::fs::read_to_string(&out)
        .is_ok_and(|s| !s.trim().is_empty())));
    let result = std::fs::read_to_string(&out).unwrap();
    let fields: Vec<f64> = result.split_whitespace().map(|f| f.parse().unwrap()).collect();
    let secs = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    // The loop ran across the whole reload, and no question went unanswered.
    assert!(fields[1] < secs(up_started) && fields[2] > secs(up_ended), "{result}");
    assert!(fields[3] > 100.0, "too few questions: {result}");
    assert_eq!(fields[0], 0.0, "queries without an answer: {result}");
    assert_eq!(getaddrinfo(&sb, "d-web-1", "added"), Ok(vec![sb.vip("d", "added")]));
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

/// In a container: opens 70 TCP connections to the DNS server, each sending the start of a
/// query (a 100-byte length, then a byte a second, never the whole query). After a second it
/// writes how many are still open to `HELD`, then keeps trickling for 14 s and prints
/// `open_after_1s ages...` where each age is when a held connection was closed (seconds since
/// it was opened; -1: still open at the end).
const SLOW_TCP: &str = r#"
import select, socket, sys, time
server, held_file = sys.argv[1], sys.argv[2]
conns = []
for _ in range(70):
    s = socket.socket(); s.settimeout(2)
    try:
        s.connect((server, 53)); s.sendall(b"\x00\x64"); conns.append([s, time.time(), None])
    except OSError:
        pass
def poll():
    now = time.time()
    for c in conns:
        if c[2] is not None: continue
        try:
            r, _, _ = select.select([c[0]], [], [], 0)
            if r and c[0].recv(1) == b"": raise OSError("closed")
        except OSError:
            c[2] = now - c[1]
time.sleep(1); poll()
held = [c for c in conns if c[2] is None]
open(held_file, "w").write(str(len(held)))
end = time.time() + 14
while time.time() < end:
    for c in held:
        if c[2] is None:
            try: c[0].send(b"\x00")
            except OSError: c[2] = time.time() - c[1]
    for _ in range(10):
        time.sleep(0.1); poll()
print(len(held), " ".join("%.1f" % (-1 if c[2] is None else c[2]) for c in held))
"#;

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn one_container_cannot_hold_every_tcp_connection_nor_keep_one_forever() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write(
        "plumb.toml",
        "name = \"d\"\n[networks.n]\nsubnet = \"10.133.0.0/24\"\n[services.slow]\ncommand = \"/bin/sleep 3600\"\n\
         [services.client]\ncommand = \"/bin/sleep 3600\"\n",
    );
    sb.plumb_ok(&["up"]);
    let script = sb.write("slow.py", SLOW_TCP);
    let (held, out) = (sb.dir.join("held"), sb.dir.join("slow.out"));
    sb.ok(&format!(
        "ip netns exec d-slow-1 python3 {} 10.133.0.1 {} > {} 2>&1 & echo $!",
        script.display(),
        held.display(),
        out.display()
    ));
    assert!(
        eventually(Duration::from_secs(10), || held.exists()),
        "the slow client did not start"
    );
    // While the slow container holds what it may, another container's TCP query is answered.
    let client = sb.address("client-1", "eth0");
    assert_eq!(short(&sb, "d-client-1", "+tcp client-1.d"), [client.as_str()]);
    // The slow container's own next connection is closed as it comes.
    assert!(!short(&sb, "d-slow-1", "+tcp client-1.d").contains(&client));

    assert!(eventually(Duration::from_secs(30), || std::fs::read_to_string(&out)
        .is_ok_and(|s| !s.trim().is_empty())));
    let result = std::fs::read_to_string(&out).unwrap();
    let mut fields = result.split_whitespace();
    let kept: usize = fields.next().unwrap().parse().unwrap();
    let ages: Vec<f64> = fields.map(|f| f.parse().unwrap()).collect();
    eprintln!("slow container: connections kept, and their ages when closed: {result}");
    // Its extra connections were closed at once: it keeps its share (8), no more.
    assert_eq!(kept, plumb_dns::limits::TCP_PER_ASKER, "{result}");
    // Each kept connection, though never idle (a byte a second), is closed at 10 s of age.
    for age in &ages {
        assert!((9.5..12.0).contains(age), "closed at {age} s: {result}");
    }
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

/// In a container: sends COUNT UDP queries (in bursts of 50, 5 ms apart) for NAME, where `#`
/// becomes the query's number (distinct names miss the cache), and prints how many responses
/// came back with each response code: `noerror nxdomain servfail refused other`.
const FLOOD: &str = r##"
import socket, struct, sys, threading, time
server, count, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
codes, last = [0] * 16, [time.time()]
def receive():
    s.settimeout(0.2)
    while time.time() < last[0] + 3:
        try: r = s.recv(1500)
        except socket.timeout: continue
        codes[r[3] & 15] += 1; last[0] = time.time()
t = threading.Thread(target=receive); t.start()
for k in range(count):
    labels = name.replace("#", str(k)).split(".")
    q = struct.pack(">HHHHHH", k, 0x100, 1, 0, 0, 0) + b"".join(bytes([len(l)]) + l.encode() for l in labels) + b"\x00\x00\x01\x00\x01"
    s.sendto(q, (server, 53)); last[0] = time.time()
    if k % 50 == 49: time.sleep(0.005)
t.join()
print(codes[0], codes[3], codes[2], codes[5], sum(codes) - codes[0] - codes[2] - codes[3] - codes[5])
"##;

/// Runs FLOOD in `ns`: (noerror, nxdomain, servfail, refused, other).
fn flood(sb: &Sandbox, ns: &str, server: &str, count: u32, name: &str) -> [u32; 5] {
    let script = sb.write("flood.py", FLOOD);
    let out = sb.ok(&format!(
        "ip netns exec {ns} python3 {} {server} {count} {name}",
        script.display()
    ));
    let v: Vec<u32> = out.split_whitespace().map(|f| f.parse().unwrap()).collect();
    v.try_into().unwrap_or_else(|v| panic!("flood: {v:?}"))
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn forwarded_queries_are_rate_limited_per_container_and_local_names_are_not() {
    let Some(sb) = Sandbox::start() else { return };
    let upstream_count = start_upstream(&sb);
    sb.write(
        "plumb.toml",
        "name = \"d\"\nmetrics = \"127.0.0.1:9465\"\n[networks.n]\nsubnet = \"10.134.0.0/24\"\n\
         [services.flood]\ncommand = \"/bin/sleep 3600\"\n[services.client]\ncommand = \"/bin/sleep 3600\"\n",
    );
    sb.plumb_ok(&["up"]);
    let asked_before: u32 = std::fs::read_to_string(&upstream_count)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    // 1,000 distinct outside names at once: the bucket's burst (200) and its rate (100/s)
    // reach the upstream server; the rest are REFUSED without asking it.
    let [noerror, nxdomain, servfail, refused, other] = flood(&sb, "d-flood-1", "10.134.0.1", 1000, "q#.example.test");
    let seen = format!("noerror {noerror} nxdomain {nxdomain} servfail {servfail} refused {refused} other {other}");
    eprintln!("a burst of 1,000 outside names from one container: {seen}");
    assert!(refused >= 600, "{seen}");
    assert!((150..=400).contains(&noerror), "{seen}");
    let asked: u32 = std::fs::read_to_string(&upstream_count)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        asked - asked_before <= 400,
        "upstream asked {} times: {seen}",
        asked - asked_before
    );

    // Meanwhile another container's outside name is answered (its bucket is its own).
    assert_eq!(short(&sb, "d-client-1", "other.example.test"), ["198.51.100.7"]);
    // The flooding container's own stack names are not limited: 1,000 at once, all answered.
    let client = sb.address("client-1", "eth0");
    let [local_ok, _, _, local_refused, _] = flood(&sb, "d-flood-1", "10.134.0.1", 1000, "client-1.d");
    assert_eq!(local_refused, 0);
    assert!(
        local_ok >= 950,
        "{local_ok} of 1000 answered (UDP may lose a few, no more)"
    );
    assert_eq!(short(&sb, "d-flood-1", "client-1.d"), [client]);

    // The refusals are counted in the metrics.
    let scrape = sb.ok("curl -sf -m 5 http://127.0.0.1:9465/metrics");
    let limited = scrape
        .lines()
        .find(|l| l.starts_with("plumb_dns_rate_limited_queries_total{"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no rate-limited series: {scrape}"));
    assert!(limited >= f64::from(refused) && limited <= 1000.0, "{limited}: {seen}");
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

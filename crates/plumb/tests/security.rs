//! The attacker's probes, with real packets: a machine routing a stack's subnets via the
//! host, and a container forging addresses, ARP and MACs, or reaching the host from an
//! internal network. Each must fail, while published ports, replies and egress keep working.

mod common;

use common::*;

/// `sec`: `front` (web publishes 8080 -> 80; api, lone), internal `back` (db, and web).
const STACK: &str = r#"
name = "sec"
[networks.front]
subnet = "10.95.1.0/24"
[networks.back]
subnet = "10.95.2.0/24"
internal = true
[services.web]
networks = ["front", "back"]
ports = ["8080:80"]
[services.api]
networks = ["front"]
[services.lone]
networks = ["front"]
[services.db]
networks = ["back"]
"#;

fn up(sb: &Sandbox) {
    sb.write("plumb.toml", STACK);
    sb.plumb_ok(&["up"]);
}

/// Connects from `ns` with source address `source` (bound explicitly); what the server said.
fn connect_from(sb: &Sandbox, ns: &str, source: &str, ip: &str, port: u16) -> Option<String> {
    let code = format!(
        "import socket\ns=socket.socket()\ns.settimeout(2)\ns.bind(('{source}',0))\ns.connect(('{ip}',{port}))\nprint(s.recv(100).decode().strip())"
    );
    let out = sb.sh(&format!("ip netns exec {ns} timeout 3 python3 -c \"{code}\""));
    out.status.success().then(|| text(&out.stdout).trim().to_string())
}

/// A UDP sink in `ns` that writes the source address of every datagram to a file; returns
/// the file, which `udp_sources` reads.
fn udp_sink(sb: &Sandbox, ns: &str, port: u16) -> String {
    let file = format!("udp-{ns}-{port}.log");
    let code = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',{port}))\nopen('{file}','a').write('ready\\n')\nwhile True:\n d,a=s.recvfrom(100)\n f=open('{file}','a'); f.write(a[0]+'\\n'); f.close()\n"
    );
    let path = sb.write(&format!("udp-{ns}-{port}.py"), &code);
    sb.write(&file, "");
    sb.spawn_in(ns, &format!("/usr/bin/python3 {}", path.display()));
    let ready = || sb.ok(&format!("cat {file}")).contains("ready");
    assert!(
        eventually(std::time::Duration::from_secs(10), ready),
        "UDP sink in {ns} did not start"
    );
    file
}

/// Sends three UDP datagrams from `ns`, with source address `source`, to ip:port.
fn udp_send_from(sb: &Sandbox, ns: &str, source: &str, ip: &str, port: u16) {
    let code = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{source}',0))\n[s.sendto(b'x',('{ip}',{port})) for _ in range(3)]"
    );
    sb.ok(&format!("ip netns exec {ns} python3 -c \"{code}\""));
    std::thread::sleep(std::time::Duration::from_millis(300));
}

fn udp_sources(sb: &Sandbox, file: &str) -> String {
    sb.ok(&format!("cat {file}"))
}

fn mac_of(sb: &Sandbox, ns: &str) -> String {
    sb.ok(&format!("ip netns exec {ns} cat /sys/class/net/eth0/address"))
        .trim()
        .to_string()
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn routed_access_from_outside_reaches_only_published_ports() {
    let sb = Sandbox::start().unwrap();
    up(&sb);
    // Any machine on the LAN can route the stack's subnets via the host.
    sb.ok(
        "ip -n outside route add 10.95.1.0/24 via 203.0.113.1 && ip -n outside route add 10.95.2.0/24 via 203.0.113.1",
    );
    let (web, api, db) = (
        sb.address("web-1", "eth0"),
        sb.address("api-1", "eth0"),
        sb.address("db-1", "eth0"),
    );
    sb.serve("sec-web-1", 80, "web");
    sb.serve("sec-api-1", 9000, "api");
    sb.serve("sec-db-1", 5432, "db");
    let host_server = sb.serve_on_host("0.0.0.0", 7000, "host");

    assert_eq!(
        sb.connect(Some("outside"), &api, 9000),
        None,
        "an unpublished port is reachable by routing"
    );
    assert_eq!(
        sb.connect(Some("outside"), &web, 80),
        None,
        "a published container's port is reachable directly"
    );
    assert_eq!(
        sb.connect(Some("outside"), &db, 5432),
        None,
        "an internal network is reachable from outside"
    );
    assert_eq!(
        sb.connect(Some("outside"), "10.95.1.1", 7000),
        None,
        "the gateway answers from outside"
    );
    assert!(!sb.ping("outside", &api), "containers answer pings routed from outside");

    // What must keep working: the published port, replies to egress, the host's own address.
    let published = sb.connect(Some("outside"), HOST_IP, 8080).expect("published port");
    assert!(published.starts_with("web from 203.0.113.2"), "{published}");
    sb.serve("outside", 9100, "internet");
    assert_eq!(
        sb.connect(Some("sec-api-1"), OUTSIDE_IP, 9100).as_deref(),
        Some("internet from 203.0.113.1")
    );
    assert!(sb.connect(Some("outside"), HOST_IP, 7000).is_some());
    sb.ok(&format!("kill {host_server}"));
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_container_cannot_send_from_another_address_or_mac() {
    let sb = Sandbox::start().unwrap();
    up(&sb);
    let (api, lone) = (sb.address("api-1", "eth0"), sb.address("lone-1", "eth0"));
    sb.serve("sec-lone-1", 9000, "lone");
    sb.serve("outside", 9100, "internet");
    // The honest path works, with the container's own address.
    assert_eq!(
        connect_from(&sb, "sec-api-1", &api, &lone, 9000),
        Some(format!("lone from {api}"))
    );

    // api takes web's address: nothing it sends from there arrives (UDP, so that a lost
    // reply cannot hide a delivered packet); from its own address it does.
    let web = sb.address("web-1", "eth0");
    let at_lone = udp_sink(&sb, "sec-lone-1", 9001);
    let at_outside = udp_sink(&sb, "outside", 9101);
    sb.ok(&format!("ip -n sec-api-1 addr add {web}/32 dev eth0"));
    udp_send_from(&sb, "sec-api-1", &web, &lone, 9001);
    // Nor from an address outside its network, towards the outside (it would leave unmasqueraded).
    sb.ok("ip -n sec-api-1 addr add 198.51.100.7/32 dev eth0");
    udp_send_from(&sb, "sec-api-1", "198.51.100.7", OUTSIDE_IP, 9101);
    udp_send_from(&sb, "sec-api-1", &api, &lone, 9001);
    udp_send_from(&sb, "sec-api-1", &api, OUTSIDE_IP, 9101);
    // The honest datagrams arrive (the forged ones were sent first, on the same path).
    let arrived = |file: &str, from: &str| udp_sources(&sb, file).contains(from);
    eventually(std::time::Duration::from_secs(5), || {
        arrived(&at_lone, &api) && arrived(&at_outside, HOST_IP)
    });
    let (got_lone, got_outside) = (udp_sources(&sb, &at_lone), udp_sources(&sb, &at_outside));
    assert!(
        !got_lone.contains(&web),
        "IP spoofing got through: lone received from {got_lone}"
    );
    assert!(got_lone.contains(&api), "api's own datagrams must arrive: {got_lone}");
    assert!(
        !got_outside.contains("198.51.100.7"),
        "an off-subnet source left the host: {got_outside}"
    );
    assert!(
        got_outside.contains(HOST_IP),
        "api's own datagrams leave masqueraded: {got_outside}"
    );

    // ARP: lone knows web's MAC; api's forged ARP reply must not change it.
    assert!(sb.ping("sec-lone-1", &web));
    let web_mac = mac_of(&sb, "sec-web-1");
    // An ARP reply may override an entry only once it is older than locktime (1 s).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let poison = format!(
        "import socket,struct\n\
         s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW)\n\
         s.bind(('eth0',0))\n\
         mac=bytes.fromhex(open('/sys/class/net/eth0/address').read().strip().replace(':',''))\n\
         arp=struct.pack('!HHBBH',1,0x0800,6,4,2)+mac+socket.inet_aton('{web}')+b'\\xff'*6+socket.inet_aton('{lone}')\n\
         [s.send(b'\\xff'*6+mac+b'\\x08\\x06'+arp) for _ in range(5)]\n"
    );
    sb.write("poison.py", &poison);
    sb.ok("ip netns exec sec-api-1 python3 poison.py");
    std::thread::sleep(std::time::Duration::from_millis(200));
    let neigh = sb.ok(&format!("ip -n sec-lone-1 neigh show {web}"));
    assert!(
        neigh.contains(&web_mac),
        "ARP poisoning changed lone's entry for web: {neigh}"
    );

    // MAC cloning: api takes web's MAC; its frames are dropped, web keeps working.
    sb.ok(&format!(
        "ip -n sec-api-1 link set eth0 down && ip -n sec-api-1 link set eth0 address {web_mac} && ip -n sec-api-1 link set eth0 up"
    ));
    assert_eq!(
        connect_from(&sb, "sec-api-1", &api, &lone, 9000),
        None,
        "a cloned MAC got through"
    );
    assert!(
        sb.connect(Some("sec-web-1"), &lone, 9000).is_some(),
        "web was cut off by the clone"
    );

    // The next `up` rebuilds the tampered container (its MAC is not the one plumb gave it).
    assert!(sb.plumb_ok(&["up", "--dry-run"]).contains("ip netns add sec-api-1"));
    sb.plumb_ok(&["up"]);
    assert_eq!(
        connect_from(&sb, "sec-api-1", &api, &lone, 9000),
        Some(format!("lone from {api}"))
    );
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

/// A UDP sink in the sandbox host's own namespace (a host service on 0.0.0.0) that writes
/// the source of every datagram to a file; its PID and the file.
fn udp_sink_on_host(sb: &Sandbox, port: u16) -> (String, String) {
    let file = format!("udp-host-{port}.log");
    let code = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('0.0.0.0',{port}))\nopen('{file}','a').write('ready\\n')\nwhile True:\n d,a=s.recvfrom(100)\n f=open('{file}','a'); f.write(a[0]+'\\n'); f.close()\n"
    );
    let path = sb.write(&format!("udp-host-{port}.py"), &code);
    sb.write(&file, "");
    let pid = sb.ok(&format!("python3 {} >/dev/null 2>&1 & echo $!", path.display()));
    let ready = || sb.ok(&format!("cat {file}")).contains("ready");
    assert!(
        eventually(std::time::Duration::from_secs(10), ready),
        "UDP sink on the host did not start"
    );
    (pid.trim().to_string(), file)
}

/// dig from `ns` at its gateway, one try; the answers.
fn dig(sb: &Sandbox, ns: &str, args: &str) -> String {
    sb.ok(&format!("ip netns exec {ns} dig +time=1 +tries=1 +short {args}"))
        .trim()
        .to_string()
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn containers_reach_nothing_of_the_host_but_plumbs_own_services() {
    let sb = Sandbox::start().unwrap();
    up(&sb);
    // Host services on every address (an sshd, an etcd on 0.0.0.0), TCP and UDP.
    let host_server = sb.serve_on_host("0.0.0.0", 7000, "host");
    let (udp_server, at_host) = udp_sink_on_host(&sb, 7001);
    let api = sb.address("api-1", "eth0");
    // Every address of the host: the own gateway, the other network's, the uplink.
    for address in ["10.95.1.1", "10.95.2.1", HOST_IP] {
        for ns in ["sec-db-1", "sec-api-1", "sec-web-1"] {
            assert_eq!(
                sb.connect(Some(ns), address, 7000),
                None,
                "{ns} reached the host's service at {address}"
            );
        }
        udp_send_from(&sb, "sec-api-1", &api, address, 7001);
    }
    assert!(!sb.ping("sec-db-1", "10.95.2.1"));
    assert!(!sb.ping("sec-api-1", HOST_IP), "the uplink address answers pings");
    // What plumb serves them passes: DNS on the gateway (UDP and TCP), ping of the own
    // gateway, and the host's replies.
    let web = sb.address("web-1", "eth0");
    assert_eq!(dig(&sb, "sec-api-1", "@10.95.1.1 web-1"), web);
    assert_eq!(dig(&sb, "sec-api-1", "+tcp @10.95.1.1 web-1"), web);
    assert!(sb.ping("sec-api-1", "10.95.1.1"), "the gateway does not answer pings");
    sb.serve("sec-db-1", 5432, "db");
    assert!(sb.connect(None, &sb.address("db-1", "eth0"), 5432).is_some());
    sb.serve("outside", 9100, "internet");
    assert!(sb.connect(Some("sec-api-1"), OUTSIDE_IP, 9100).is_some());
    // The datagrams were sent before the host's own one, on the same path.
    sb.ok(
        "python3 -c \"import socket;socket.socket(socket.AF_INET,socket.SOCK_DGRAM).sendto(b'x',('127.0.0.1',7001))\"",
    );
    assert!(eventually(std::time::Duration::from_secs(5), || {
        udp_sources(&sb, &at_host).contains("127.0.0.1")
    }));
    let got = udp_sources(&sb, &at_host);
    assert!(
        !got.contains("10.95."),
        "a container's datagram reached the host: {got}"
    );
    sb.ok(&format!("kill {host_server} {udp_server}"));
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_policy_to_the_host_opens_just_what_it_names() {
    let sb = Sandbox::start().unwrap();
    let policy = "[[policies]]\nfrom = \"api\"\nto = \"host\"\nports = [7000]\n";
    sb.write("plumb.toml", &format!("{STACK}{policy}"));
    sb.plumb_ok(&["up"]);
    let host_server = sb.serve_on_host("0.0.0.0", 7000, "host");
    let other_server = sb.serve_on_host("0.0.0.0", 7002, "other");
    let api = sb.address("api-1", "eth0");
    for address in ["10.95.1.1", HOST_IP] {
        assert_eq!(
            sb.connect(Some("sec-api-1"), address, 7000),
            Some(format!("host from {api}")),
            "the policy lets api reach the host at {address}"
        );
        assert_eq!(sb.connect(Some("sec-api-1"), address, 7002), None, "only port 7000");
        assert_eq!(sb.connect(Some("sec-lone-1"), address, 7000), None, "only api");
    }
    // Policies never open what network isolation closes: an internal network's container.
    assert_eq!(sb.connect(Some("sec-db-1"), "10.95.2.1", 7000), None);
    let why = sb.plumb(&["policy", "why", "lone-1", "host:7000/tcp", "-s", "sec"]);
    assert_eq!(why.status.code(), Some(1), "{why:?}");
    sb.ok(&format!("kill {host_server} {other_server}"));
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_container_cannot_reach_services_the_host_binds_to_its_loopback() {
    let sb = Sandbox::start().unwrap();
    up(&sb);
    // A host service on 127.0.0.1 only (a database, an admin port).
    let pid = sb.serve_on_host("127.0.0.1", 7001, "secret");
    // The container routes 127.0.0.1 to its gateway (route_localnet on the host's bridge
    // would accept it).
    let api = sb.address("api-1", "eth0");
    sb.ok(&format!(
        "ip netns exec sec-api-1 sh -c 'ip addr flush dev lo; ip route flush table local dev lo; \
         sysctl -qw net.ipv4.conf.eth0.route_localnet=1 net.ipv4.conf.all.route_localnet=1; \
         ip route add 127.0.0.1/32 via 10.95.1.1 dev eth0 src {api}'"
    ));
    assert_eq!(
        sb.connect(Some("sec-api-1"), "127.0.0.1", 7001),
        None,
        "a container reached the host's loopback"
    );
    // Published ports still answer on the host's 127.0.0.1 (their replies come back).
    sb.serve("sec-web-1", 80, "web");
    assert!(sb.connect(None, "127.0.0.1", 8080).is_some());
    sb.ok(&format!("kill {pid}"));
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_container_reaches_its_own_published_port_and_so_do_its_neighbours() {
    let sb = Sandbox::start().unwrap();
    up(&sb);
    sb.serve("sec-web-1", 80, "web");
    for (ns, who) in [("sec-web-1", "itself"), ("sec-api-1", "a neighbour")] {
        let reply = sb.connect(Some(ns), HOST_IP, 8080);
        assert!(
            reply.as_deref().is_some_and(|r| r.starts_with("web from")),
            "{who} cannot reach web's published port: {reply:?}"
        );
    }
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

/// Strings that reach the kernel's labels are sanitized: a stack file in a folder whose name
/// holds a newline (and a quote) gives log prefixes and rule comments without them, so a
/// denied packet cannot print a kernel log line of the file's choosing.
#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_newline_in_the_stack_files_path_forges_no_kernel_log_line() {
    let sb = Sandbox::start().unwrap();
    let dir = "evil\nkernel: Out of memory: Killed process 1 \"init\"";
    let file = sb.write(
        &format!("{dir}/plumb.toml"),
        "name = \"logs\"\n[networks.n]\nsubnet = \"10.95.7.0/24\"\n[services.a]\n[services.b]\n\
         [[policies]]\nfrom = \"a\"\nto = \"b\"\nlog = true\n",
    );
    sb.plumb_ok(&["up", "-f", path_str(&file)]);
    let mut prefixes = Vec::new();
    for family in ["inet", "bridge"] {
        let listing = sb.ok(&format!("nft -j list table {family} plumb_logs"));
        let json: serde_json::Value = serde_json::from_str(&listing).unwrap();
        fn strings(v: &serde_json::Value, key: &str, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        match v.as_str() {
                            Some(s) if k == key || k == "comment" => out.push(s.to_string()),
                            _ => strings(v, key, out),
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| strings(v, key, out)),
                _ => {}
            }
        }
        strings(&json, "prefix", &mut prefixes);
    }
    let logged: Vec<&String> = prefixes.iter().filter(|p| p.contains("deny")).collect();
    assert!(
        logged.iter().any(|p| p.contains("evil?kernel: Out of memory")),
        "no log prefix names the file: {prefixes:?}"
    );
    for label in &prefixes {
        assert!(
            !label.chars().any(char::is_control) && !label.contains('"'),
            "a label the kernel prints holds {label:?}"
        );
    }
    sb.plumb_ok(&["down", "logs"]);
    sb.assert_clean();
}

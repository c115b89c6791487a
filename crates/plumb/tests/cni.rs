//! plumb as a CNI plugin, driven as libcni drives plugins (a tiny cnitool below: the
//! environment, the configuration on stdin, the result on stdout, prevResult from plugin to
//! plugin): ADD joins namespaces made elsewhere (`ip netns add`, as a runtime would) to a
//! stack's network with real packets both ways, names, the stack's policies and a service's
//! VIP; CHECK, DEL, STATUS, GC and VERSION answer as the spec says; bad requests get the
//! spec's codes. Then Debian's portmap after plumb in the conflist `plumb cni conflist`
//! prints publishes a port to a container, reached from outside, and gone after DEL.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{json, Value};

/// What a plugin answered: its exit code and its stdout as JSON (Null when empty).
#[derive(Debug)]
struct Answer {
    code: Option<i32>,
    json: Value,
    stderr: String,
}

impl Answer {
    fn ok(self) -> Value {
        assert_eq!(self.code, Some(0), "{}\nstderr: {}", self.json, self.stderr);
        self.json
    }

    /// The CNI error code of a failed call.
    fn error_code(&self) -> u64 {
        assert_ne!(self.code, Some(0), "{self:?}");
        self.json["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no error JSON: {self:?}"))
    }
}

/// One container as the runtime names it.
struct Container<'a> {
    id: &'a str,
    /// Empty: no CNI_NETNS (a DEL after the namespace went).
    netns: String,
    ifname: &'a str,
    args: String,
}

impl<'a> Container<'a> {
    fn new(id: &'a str, netns: &str, args: &str) -> Self {
        Container {
            id,
            netns: if netns.is_empty() {
                String::new()
            } else {
                format!("/run/netns/{netns}")
            },
            ifname: "eth0",
            args: args.to_string(),
        }
    }
}

/// The tiny cnitool: execs `plugin` with the CNI environment and `stdin`, as libcni does.
fn exec_raw(sb: &Sandbox, plugin: &Path, verb: &str, c: &Container, stdin: &[u8]) -> Answer {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let file = sb.dir.join(format!("cni-stdin-{n}.json"));
    std::fs::write(&file, stdin).unwrap();
    let mut vars = format!(
        "CNI_COMMAND={verb} CNI_CONTAINERID={} CNI_IFNAME={} CNI_ARGS='{}' CNI_PATH={}",
        c.id,
        c.ifname,
        c.args,
        plugin.parent().unwrap().display()
    );
    if !c.netns.is_empty() {
        vars += &format!(" CNI_NETNS={}", c.netns);
    }
    let out = sb.sh(&format!("env {vars} {} < {}", plugin.display(), file.display()));
    let stdout = text(&out.stdout);
    let json = match stdout.trim() {
        "" => Value::Null,
        s => serde_json::from_str(s).unwrap_or_else(|e| panic!("{verb}: stdout is not JSON ({e}): {s}")),
    };
    Answer {
        code: out.status.code(),
        json,
        stderr: text(&out.stderr),
    }
}

fn exec(sb: &Sandbox, plugin: &Path, verb: &str, c: &Container, conf: &Value) -> Answer {
    exec_raw(sb, plugin, verb, c, conf.to_string().as_bytes())
}

/// Each plugin's configuration as libcni builds it from a conflist: the list's name and
/// version, the runtime config of the capabilities it declares, the previous result.
fn plugin_conf(list: &Value, i: usize, runtime: &Value, prev: Option<&Value>) -> Value {
    let mut conf = list["plugins"][i].clone();
    conf["name"] = list["name"].clone();
    conf["cniVersion"] = list["cniVersion"].clone();
    let mut rc = serde_json::Map::new();
    if let Some(caps) = conf["capabilities"].as_object() {
        for (cap, on) in caps {
            if on == &json!(true) && !runtime[cap].is_null() {
                rc.insert(cap.clone(), runtime[cap].clone());
            }
        }
    }
    if !rc.is_empty() {
        conf["runtimeConfig"] = Value::Object(rc);
    }
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    conf
}

/// libcni's AddNetworkList: the plugins in order, each given the last one's result.
fn add_list(sb: &Sandbox, dir: &Path, list: &Value, c: &Container, runtime: &Value) -> Value {
    let mut prev: Option<Value> = None;
    for i in 0..list["plugins"].as_array().unwrap().len() {
        let conf = plugin_conf(list, i, runtime, prev.as_ref());
        let plugin = dir.join(conf["type"].as_str().unwrap());
        prev = Some(exec(sb, &plugin, "ADD", c, &conf).ok());
    }
    prev.unwrap()
}

/// libcni's DelNetworkList: DEL in reverse order, each given the cached result of the ADD.
fn del_list(sb: &Sandbox, dir: &Path, list: &Value, c: &Container, runtime: &Value, cached: &Value) {
    let n = list["plugins"].as_array().unwrap().len();
    for i in (0..n).rev() {
        let conf = plugin_conf(list, i, runtime, Some(cached));
        let plugin = dir.join(conf["type"].as_str().unwrap());
        exec(sb, &plugin, "DEL", c, &conf).ok();
    }
}

/// The address (without prefix) of a result's first plumb address.
fn address_of(result: &Value) -> String {
    let ips = result["ips"].as_array().unwrap();
    let cidr = ips.last().unwrap()["address"].as_str().unwrap();
    cidr.split('/').next().unwrap().to_string()
}

fn dig(sb: &Sandbox, ns: &str, server: &str, name: &str) -> String {
    sb.ok(&format!(
        "ip netns exec {ns} dig +time=1 +tries=2 +short @{server} {name}"
    ))
    .trim()
    .to_string()
}

const STACK: &str = r#"
name = "cn"
[networks.n]
subnet = "10.89.92.0/24"
[services.web]
networks = ["n"]
expose = [80]
[services.db]
networks = ["n"]
expose = [5432]
[[policies]]
from = "web"
to = "db"
ports = [5432]
"#;

/// `plumb cni install DIR` into the sandbox's folder: the plugin as runtimes find it.
fn install(sb: &Sandbox) -> PathBuf {
    let dir = sb.dir.join("cni-bin");
    let said = sb.plumb_ok(&["cni", "install", path_str(&dir)]);
    assert!(said.contains("cni-bin/plumb ->"), "{said}");
    let again = sb.plumb_ok(&["cni", "install", path_str(&dir)]);
    assert!(again.contains("already links"), "{again}");
    dir
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn the_plugin_joins_runtime_namespaces_to_a_stack_and_answers_every_verb() {
    let Some(sb) = Sandbox::start() else { return };
    let dir = install(&sb);
    let plumb = dir.join("plumb");
    sb.write("plumb.toml", STACK);
    let conf = |extra: Value| {
        let mut c = json!({"cniVersion": "1.1.0", "name": "cn-n", "type": "plumb", "stack": "cn", "network": "n"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    let none = Container::new("", "", "");

    // VERSION needs nothing but the verb.
    let v = exec_raw(&sb, &plumb, "VERSION", &none, b"").ok();
    assert_eq!(
        v,
        json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );

    // Before `plumb up`: STATUS says 51, ADD fails saying to run `plumb up`, nothing made.
    // c2's namespace has a name that starts as the stack's own (cn-): still the runtime's.
    sb.ok("ip netns add c1; ip netns add cn-rt2; ip netns add c3; ip netns add c4");
    let c1 = Container::new("c1c1c1c1c1c1c1c1c1c1", "c1", "IgnoreUnknown=1;K8S_POD_NAME=c1");
    assert_eq!(exec(&sb, &plumb, "STATUS", &none, &conf(json!({}))).error_code(), 51);
    let down = exec(&sb, &plumb, "ADD", &c1, &conf(json!({})));
    assert_eq!(down.error_code(), 50, "{down:?}");
    assert!(
        down.json["msg"].as_str().unwrap().contains("stack cn is not up"),
        "{down:?}"
    );
    assert!(down.json["details"].as_str().unwrap().contains("plumb up"), "{down:?}");
    assert_eq!(down.json["cniVersion"], "1.1.0");
    assert!(!sb.ok("ip -n c1 -o link").contains("eth0"));

    sb.plumb_ok(&["up"]);
    assert_eq!(exec(&sb, &plumb, "STATUS", &none, &conf(json!({}))).ok(), Value::Null);

    // ADD: c1 by its name, c2 by its short ID, c3 joins service web through its alias.
    let r1 = exec(&sb, &plumb, "ADD", &c1, &conf(json!({}))).ok();
    assert_eq!(r1["cniVersion"], "1.1.0");
    // The veth's host end (no sandbox), then the container's interface.
    let host_end = r1["interfaces"][0]["name"].as_str().unwrap();
    assert!(r1["interfaces"][0]["sandbox"].is_null(), "{r1}");
    assert!(sb.links().iter().any(|l| l == host_end), "{host_end} {:?}", sb.links());
    assert_eq!(r1["interfaces"][1]["name"], "eth0");
    assert_eq!(r1["interfaces"][1]["sandbox"], "/run/netns/c1");
    let mac = r1["interfaces"][1]["mac"].as_str().unwrap();
    assert_eq!(r1["ips"][0]["gateway"], "10.89.92.1");
    assert_eq!(r1["ips"][0]["interface"], 1);
    assert!(
        r1["ips"][0]["address"].as_str().unwrap().starts_with("10.89.92.")
            && r1["ips"][0]["address"].as_str().unwrap().ends_with("/24"),
        "{r1}"
    );
    assert_eq!(r1["routes"], json!([{"dst": "0.0.0.0/0", "gw": "10.89.92.1"}]));
    assert_eq!(r1["dns"]["nameservers"], json!(["10.89.92.1"]));
    assert_eq!(r1["dns"]["search"], json!(["cn"]));
    let ip1 = address_of(&r1);
    let inside = sb.ok("ip -n c1 -o link show eth0; ip -n c1 -4 -o addr show eth0");
    assert!(inside.contains(&ip1) && inside.contains(mac), "{inside}");
    let c2 = Container::new("c2c2c2c2c2c2c2c2c2c2", "cn-rt2", "IgnoreUnknown=1");
    let ip2 = address_of(&exec(&sb, &plumb, "ADD", &c2, &conf(json!({}))).ok());
    let c3 = Container::new("c3c3c3c3c3c3c3c3c3c3", "c3", "K8S_POD_NAME=c3");
    let r3 = exec(
        &sb,
        &plumb,
        "ADD",
        &c3,
        &conf(json!({"runtimeConfig": {"aliases": {"cn-n": ["c3", "web"]}}})),
    )
    .ok();
    let ip3 = address_of(&r3);
    assert!(
        sb.ok("ls /run/netns").contains("cn-rt2"),
        "a later ADD took the runtime's namespace cn-rt2 for the stack's own"
    );
    assert_ne!(ip1, ip2);
    // The same ADD again changes nothing.
    assert_eq!(address_of(&exec(&sb, &plumb, "ADD", &c1, &conf(json!({}))).ok()), ip1);

    // Real packets both ways; names from the stack's DNS server (the result's nameserver).
    assert!(sb.ping("c1", &ip2), "c1 -> c2");
    assert!(sb.ping("cn-rt2", &ip1), "c2 -> c1");
    assert!(sb.ping("cn-rt2", "10.89.92.1"), "c2 -> its gateway");
    assert_eq!(dig(&sb, "cn-rt2", "10.89.92.1", "c1.cn"), ip1);
    assert_eq!(
        dig(&sb, "c1", "10.89.92.1", "c2c2c2c2c2c2.cn"),
        ip2,
        "named by its short ID"
    );
    assert_eq!(dig(&sb, "c1", "10.89.92.1", "c3"), ip3);
    let ps = sb.plumb_ok(&["ps"]);
    assert!(
        ps.contains("c1") && ps.contains("c2c2c2c2c2c2") && ps.contains("c3"),
        "{ps}"
    );

    // The policy: only web reaches db:5432. c3 is web (its alias); c1 is not.
    sb.serve("cn-db-1", 5432, "db");
    assert_eq!(
        sb.connect(Some("c3"), &sb.address("db-1", "eth0"), 5432),
        Some(format!("db from {ip3}"))
    );
    assert_eq!(
        sb.connect(Some("c1"), &sb.address("db-1", "eth0"), 5432),
        None,
        "the policy lets only web reach db"
    );
    // c3 is behind web's VIP and name, beside web-1.
    let vip = sb.vip("cn", "web");
    assert_eq!(dig(&sb, "c1", "10.89.92.1", "web.cn"), vip);
    sb.serve("cn-web-1", 80, "web-1");
    sb.serve("c3", 80, "c3");
    let answers: Vec<String> = (0..6).filter_map(|_| sb.connect(Some("c1"), &vip, 80)).collect();
    assert!(answers.iter().any(|a| a.starts_with("c3 from")), "{answers:?}");
    assert!(answers.iter().any(|a| a.starts_with("web-1 from")), "{answers:?}");

    // CHECK: as made; an unknown container is code 3; an address taken away is noticed.
    exec(&sb, &plumb, "CHECK", &c1, &conf(json!({"prevResult": r1}))).ok();
    let stranger = Container::new("ffffffffffff", "c1", "");
    assert_eq!(exec(&sb, &plumb, "CHECK", &stranger, &conf(json!({}))).error_code(), 3);
    sb.ok("ip -n cn-rt2 addr flush dev eth0");
    let drifted = exec(&sb, &plumb, "CHECK", &c2, &conf(json!({})));
    assert_eq!(drifted.error_code(), 102, "{drifted:?}");

    // Bad requests: not JSON (6), an old version (1), no CNI_NETNS (4), no such network
    // (100): nothing changes.
    let c4 = Container::new("c4c4c4c4c4c4", "c4", "");
    assert_eq!(exec_raw(&sb, &plumb, "ADD", &c4, b"{nope").error_code(), 6);
    let old = exec(&sb, &plumb, "ADD", &c4, &conf(json!({"cniVersion": "0.2.0"})));
    assert_eq!(old.error_code(), 1, "{old:?}");
    let no_netns = Container::new("c4c4c4c4c4c4", "", "");
    assert_eq!(exec(&sb, &plumb, "ADD", &no_netns, &conf(json!({}))).error_code(), 4);
    let wrong = exec(&sb, &plumb, "ADD", &c4, &conf(json!({"network": "nope"})));
    assert_eq!(wrong.error_code(), 100, "{wrong:?}");
    assert!(wrong.json["msg"].as_str().unwrap().contains("no network"), "{wrong:?}");
    // c3's namespace under another container's name: refused, it is c3's.
    let twice = exec(
        &sb,
        &plumb,
        "ADD",
        &Container::new("c5c5c5c5c5c5", "c3", ""),
        &conf(json!({})),
    );
    assert_eq!(twice.error_code(), 100, "{twice:?}");
    assert!(
        twice.json["msg"].as_str().unwrap().contains("the namespace of cn/c3"),
        "{twice:?}"
    );
    assert!(
        !sb.namespaces().iter().any(|n| n.contains("c4c4")),
        "{:?}",
        sb.namespaces()
    );

    // DEL, and DEL again.
    exec(&sb, &plumb, "DEL", &c2, &conf(json!({}))).ok();
    assert!(
        !sb.ok("ip -n cn-rt2 -o link").contains("eth0"),
        "c2's interface is gone"
    );
    assert!(!sb.ping("c1", &ip2));
    exec(&sb, &plumb, "DEL", &c2, &conf(json!({}))).ok();

    // GC: only c1 is valid: c3 goes, c1 stays wired.
    let valid = json!({"cni.dev/valid-attachments": [{"containerID": c1.id, "ifname": "eth0"}]});
    exec(&sb, &plumb, "GC", &none, &conf(valid)).ok();
    assert!(!sb.ok("ip -n c3 -o link").contains("eth0"), "GC removed c3");
    assert!(!sb.plumb_ok(&["ps"]).contains("c3"));
    assert!(sb.ping("c1", "10.89.92.1"), "c1 is valid: kept");

    // DEL after the runtime deleted the namespace, without CNI_NETNS: done, and again.
    sb.ok("ip netns del c1");
    let gone = Container::new(c1.id, "", "");
    exec(&sb, &plumb, "DEL", &gone, &conf(json!({}))).ok();
    exec(&sb, &plumb, "DEL", &gone, &conf(json!({}))).ok();
    assert!(!sb.namespaces().iter().any(|n| n == "cn-c1"), "{:?}", sb.namespaces());

    // Down: STATUS says so, DEL still succeeds, nothing is left.
    sb.plumb_ok(&["down"]);
    assert_eq!(exec(&sb, &plumb, "STATUS", &none, &conf(json!({}))).error_code(), 51);
    exec(&sb, &plumb, "DEL", &c3, &conf(json!({}))).ok();
    sb.ok("ip netns pids c3 | xargs -r kill; ip netns del cn-rt2; ip netns del c3; ip netns del c4");
    sb.assert_clean();
}

/// portmap's own iptables rules (DNAT chains named CNI-DN-..., CNI-HOSTPORT-...), as
/// `iptables-save` lists them in the sandbox.
fn portmap_rules(sb: &Sandbox) -> Vec<String> {
    sb.ok("iptables-save -t nat 2>/dev/null; ip6tables-save -t nat 2>/dev/null; true")
        .lines()
        .filter(|l| l.starts_with("-A") && l.contains("CNI-DN-"))
        .map(str::to_string)
        .collect()
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn portmap_after_plumb_publishes_a_port_until_del() {
    let Some(sb) = Sandbox::start() else { return };
    for tool in ["/usr/lib/cni/portmap", "/usr/sbin/iptables"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: apt-get install containernetworking-plugins iptables (scripts/test does)"
        );
    }
    let dir = install(&sb);
    for plugin in ["portmap", "tuning", "bandwidth"] {
        sb.ok(&format!("ln -s /usr/lib/cni/{plugin} {}/{plugin}", dir.display()));
    }
    sb.write(
        "plumb.toml",
        "name = \"cp\"\n[networks.n]\nsubnet = \"10.89.93.0/24\"\n[services.web]\nnetworks = [\"n\"]\n",
    );
    sb.plumb_ok(&["up"]);
    let mut list: Value =
        serde_json::from_str(&sb.plumb_ok(&["cni", "conflist", "cp", "n", "--name", "cpnet"])).unwrap();
    assert_eq!(list["cniVersion"], "1.0.0");
    // tuning and bandwidth between plumb and portmap, as a user would add them.
    let plugins = list["plugins"].as_array_mut().unwrap();
    plugins.insert(1, json!({"type": "tuning", "sysctl": {"net.core.somaxconn": "511"}}));
    plugins.insert(2, json!({"type": "bandwidth", "capabilities": {"bandwidth": true}}));
    sb.ok("ip netns add p1");
    let p1 = Container::new("p1p1p1p1p1p1p1p1", "p1", "IgnoreUnknown=1;K8S_POD_NAME=p1");
    let runtime = json!({
        "portMappings": [{"hostPort": 8089, "containerPort": 80, "protocol": "tcp"}],
        "aliases": {"cpnet": ["p1"]},
        "bandwidth": {"ingressRate": 8000000, "ingressBurst": 80000, "egressRate": 8000000, "egressBurst": 80000},
    });

    let result = add_list(&sb, &dir, &list, &p1, &runtime);
    // portmap passed plumb's result on, in the list's version.
    assert_eq!(result["cniVersion"], "1.0.0");
    let ip = address_of(&result);
    assert!(ip.starts_with("10.89.93."), "{result}");
    assert!(!portmap_rules(&sb).is_empty(), "portmap made its DNAT");
    assert_eq!(
        sb.ok("ip netns exec p1 sysctl -n net.core.somaxconn").trim(),
        "511",
        "tuning ran inside"
    );
    let host_end = result["interfaces"][0]["name"].as_str().unwrap().to_string();
    let shaped = sb.ok(&format!("tc qdisc show dev {host_end}"));
    assert!(shaped.contains("tbf"), "bandwidth shaped plumb's host end: {shaped}");
    // CHECK of plumb with the chain's final result (portmap 1.1.1's own CHECK fails for an
    // IPv4-only container, looking for ip6tables chains it never made:
    // containernetworking/plugins#819; podman does not call CHECK).
    let plumb_check = plugin_conf(&list, 0, &runtime, Some(&result));
    exec(&sb, &dir.join("plumb"), "CHECK", &p1, &plumb_check).ok();

    // A real connection from outside to the host's published port reaches the container.
    sb.serve("p1", 80, "p1");
    let reply = sb.connect(Some("outside"), HOST_IP, 8089);
    assert!(
        reply.as_deref().is_some_and(|r| r.starts_with("p1 from")),
        "{reply:?}\n{}",
        sb.ok("iptables-save -t nat; nft list ruleset")
    );

    // DEL in reverse order: the port no longer answers, portmap's rules and plumb's wiring go.
    del_list(&sb, &dir, &list, &p1, &runtime, &result);
    assert_eq!(
        sb.connect(Some("outside"), HOST_IP, 8089),
        None,
        "the port is unpublished"
    );
    assert_eq!(portmap_rules(&sb), Vec::<String>::new(), "portmap's DNAT is gone");
    assert!(!sb.ok("ip -n p1 -o link").contains("eth0"));
    del_list(&sb, &dir, &list, &p1, &runtime, &result);

    sb.plumb_ok(&["down"]);
    sb.ok("ip netns pids p1 | xargs -r kill; ip netns del p1");
    // portmap's empty chains and the iptables-nft tables holding them are the runtime's
    // leftovers (its rules went with DEL, checked above), not plumb's: removed here so that
    // what is left of plumb can be checked.
    sb.ok(
        "for ipt in iptables ip6tables; do for t in nat filter mangle; do $ipt -t $t -F 2>/dev/null; $ipt -t $t -X 2>/dev/null; done; done
         nft list tables | while read -r _ family name; do
             case $family/$name in ip/nat|ip/filter|ip/mangle|ip6/nat|ip6/filter|ip6/mangle) nft delete table $family $name;; esac
         done; true",
    );
    sb.assert_clean();
}

/// A runtime starts several containers at once (podman-compose up): concurrent ADDs, then
/// concurrent DELs, each its own plugin process, all succeed (the engine's lock serializes
/// them), with distinct addresses, and leave nothing.
#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn concurrent_adds_and_dels_all_succeed() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write(
        "plumb.toml",
        "name = \"cc\"\n[networks.n]\nsubnet = \"10.89.96.0/24\"\n[services.s]\nnetworks = [\"n\"]\n",
    );
    sb.plumb_ok(&["up"]);
    let conf = sb.write(
        "conf.json",
        r#"{"cniVersion": "1.0.0", "name": "cc-n", "type": "plumb", "stack": "cc", "network": "n"}"#,
    );
    let run_all = |verb: &str| {
        sb.ok(&format!(
            "for i in 1 2 3 4 5 6; do
               (env CNI_COMMAND={verb} CNI_CONTAINERID=id-$i CNI_NETNS=/run/netns/r$i CNI_IFNAME=eth0 \
                    CNI_ARGS=K8S_POD_NAME=r$i {PLUMB} < {conf} > out-{verb}-$i; echo $? > rc-{verb}-$i) &
             done; wait; cat rc-{verb}-*",
            conf = conf.display()
        ))
    };
    sb.ok("for i in 1 2 3 4 5 6; do ip netns add r$i; done");
    assert_eq!(run_all("ADD").split_whitespace().collect::<Vec<_>>(), ["0"; 6]);
    let mut addresses: Vec<String> = (1..=6).map(|i| sb.address(&format!("r{i}"), "eth0")).collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 6, "{addresses:?}");
    for ip in &addresses {
        assert!(sb.ping("r1", ip), "r1 -> {ip}");
    }
    assert_eq!(run_all("DEL").split_whitespace().collect::<Vec<_>>(), ["0"; 6]);
    assert!(!sb.plumb_ok(&["ps"]).contains("r1"));
    sb.plumb_ok(&["down"]);
    sb.ok("for i in 1 2 3 4 5 6; do ip netns del r$i; done");
    sb.assert_clean();
}

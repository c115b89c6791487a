//! A stack over three simulated hosts (tests/common/cluster.rs) with a real etcd: `plumb
//! agent` on each, `plumb deploy` from one, real packets over the overlay; a host killed, an
//! etcd member killed, a host cut off from the store and healed; undeploy leaves nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::cluster::{Cluster, Host};
use common::etcd::Etcd;
use common::*;

/// Answers each connection with its host name (the container's name) and the client's address.
const SERVER: &str = "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
s.bind(('0.0.0.0',7000))\ns.listen(64)\nwhile True:\n c,a=s.accept()\n c.sendall((socket.gethostname()+' from '+a[0]+'\\n').encode())\n c.close()\n";

const STACK: &str = r#"
name = "mh"

[networks.o]
subnet = "10.50.0.0/16"
driver = "overlay"

[networks.p]
subnet = "10.51.0.0/16"
driver = "overlay"

[services.web]
networks = ["o"]
replicas = 3
command = "python3 serve.py"
expose = [7000]
health = { tcp = 7000, interval = "500ms", timeout = "400ms", retries = 1 }

[services.db]
networks = ["o"]
placement = { host = "h3" }
command = "python3 serve.py"
expose = [7000]
health = { tcp = 7000, interval = "500ms", timeout = "400ms", retries = 1 }

[services.vault]
networks = ["o"]
command = "python3 serve.py"
expose = [7000]
health = { tcp = 7000, interval = "500ms", timeout = "400ms", retries = 1 }

# Only db may reach vault, wherever each runs.
[[policies]]
from = "db"
to = "vault"
ports = [7000]

[services.iso]
networks = ["p"]
command = "python3 serve.py"
expose = [7000]
health = { tcp = 7000, interval = "500ms", timeout = "400ms", retries = 1 }
"#;

/// TTL of the agents' leases in these tests.
const TTL: &str = "3s";

struct Deployed {
    cluster: Cluster,
    etcd: Etcd,
    agents: Vec<u32>,
}

impl Deployed {
    /// Three hosts, `members` etcd members, an agent on each host, the stack deployed.
    fn start(members: usize) -> Option<Deployed> {
        let cluster = Cluster::start(3)?;
        let etcd = Etcd::start(&cluster.sandbox, members);
        cluster.sandbox.write("serve.py", SERVER);
        cluster.sandbox.write("stack.toml", STACK);
        // h3 keeps VXLAN checksum offload: traffic to and from it must cross all the same.
        let agents = cluster
            .hosts()
            .iter()
            .map(|h| start_agent(h, &etcd, if h.name == "h3" { "--vxlan-offload" } else { "" }))
            .collect();
        let d = Deployed { cluster, etcd, agents };
        let hosts_up = eventually(Duration::from_secs(15), || {
            d.status()["hosts"].as_array().map(Vec::len) == Some(3)
        });
        assert!(hosts_up, "three hosts did not register: {:#}", d.status());
        let out = d.deploy("stack.toml");
        assert!(out.contains("6/6 replicas ready"), "{out}");
        Some(d)
    }

    /// `plumb deploy` of a file in the sandbox's folder, from h1; its output.
    fn deploy(&self, name: &str) -> String {
        let file = self.cluster.sandbox.dir.join(name).display().to_string();
        self.host(0)
            .plumb_ok(&["deploy", "-f", &file, "--store", &self.etcd.store(), "--wait", "60s"])
    }

    fn host(&self, i: usize) -> &Host {
        self.cluster.host(i)
    }

    fn status(&self) -> serde_json::Value {
        let out = self
            .host(0)
            .plumb(&["cluster", "status", "--store", &self.etcd.store(), "--json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    /// Container → (host, first address, ready), from `plumb cluster status`.
    fn replicas(&self) -> BTreeMap<String, (String, String, bool)> {
        let status = self.status();
        status["replicas"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let address = r["addresses"]
                    .as_object()
                    .and_then(|a| a.values().next())
                    .and_then(|v| v.as_str());
                (
                    r["container"].as_str().unwrap_or_default().to_string(),
                    (
                        r["host"].as_str().unwrap_or_default().to_string(),
                        address.unwrap_or_default().to_string(),
                        r["ready"].as_bool().unwrap_or(false),
                    ),
                )
            })
            .collect()
    }

    fn host_named(&self, name: &str) -> &Host {
        self.cluster.hosts().iter().find(|h| h.name == name).unwrap()
    }

    /// Connects from container `from` (on its host) to `ip:7000`.
    fn connect(&self, from: &str, ip: &str) -> Option<String> {
        let (host, _, _) = &self.replicas()[from];
        self.host_named(host).connect(Some(&format!("mh-{from}")), ip, 7000)
    }

    /// Every replica ready, on a live host, each on exactly one host's kernel.
    fn converged(&self, alive: &[&str]) -> bool {
        self.converged_with(alive, 6)
    }

    /// Every one of `replicas` replicas ready on a live host, each on exactly one host.
    fn converged_with(&self, alive: &[&str], expected: usize) -> bool {
        let replicas = self.replicas();
        let placed_ok = replicas.len() == expected
            && replicas
                .values()
                .all(|(h, a, ready)| *ready && !a.is_empty() && alive.contains(&h.as_str()));
        let mut seen = BTreeMap::new();
        for h in self.cluster.hosts().iter().filter(|h| alive.contains(&h.name.as_str())) {
            for ns in h.namespaces() {
                *seen.entry(ns).or_insert(0) += 1;
            }
        }
        placed_ok && seen.len() == expected && seen.values().all(|n| *n == 1)
    }
}

/// Whether a TCP connection to ip:port opens within 2 s, from namespace `ns` of `host` (its
/// own namespace when empty). Only the handshake: etcd says nothing first.
fn tcp_connects(host: &Host, ns: &str, ip: &str, port: u16) -> bool {
    let exec = if ns.is_empty() {
        String::new()
    } else {
        format!("ip netns exec {ns} ")
    };
    host.sh(&format!(
        "{exec}timeout 3 python3 -c \"import socket; socket.create_connection(('{ip}', {port}), 2)\""
    ))
    .status
    .success()
}

fn start_agent(h: &Host, etcd: &Etcd, extra: &str) -> u32 {
    h.spawn(&format!(
        "{PLUMB} agent --store {} --name {} --ttl {TTL} {extra}",
        etcd.store(),
        h.name
    ))
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_stack_spreads_over_three_hosts_and_talks_over_the_overlay() {
    let Some(d) = Deployed::start(1) else { return };
    let replicas = d.replicas();
    // Spread: one web replica per host; db pinned to h3.
    let web_hosts: BTreeSet<&str> = ["web-1", "web-2", "web-3"]
        .iter()
        .map(|c| replicas[*c].0.as_str())
        .collect();
    assert_eq!(web_hosts.len(), 3, "{replicas:?}");
    assert_eq!(replicas["db-1"].0, "h3");
    // Each host's record of the stack is copied into the store (the engine's etcd store).
    assert_eq!(
        d.etcd.keys(&d.cluster.sandbox, "/plumb-records/"),
        ["h1", "h2", "h3"].map(|h| format!("/plumb-records/{h}/stacks/mh")),
    );
    // A replica of another host: the command says which host to ask.
    let elsewhere = ["web-1", "web-2", "web-3"]
        .into_iter()
        .find(|c| replicas[*c].0 != "h1")
        .unwrap();
    let out = d.host(0).plumb(&["exec", elsewhere, "--", "true"]);
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("runs on host {}", replicas[elsewhere].0)),
        "{err}"
    );
    // By address, across hosts, with the client's own address (no NAT inside the overlay).
    for from in ["web-1", "web-2", "web-3"] {
        for to in ["web-1", "web-2", "web-3", "db-1"] {
            let (from_ip, to_ip) = (&replicas[from].1, &replicas[to].1);
            let reply = d
                .connect(from, to_ip)
                .unwrap_or_else(|| panic!("{from} cannot reach {to} at {to_ip}"));
            assert_eq!(reply, format!("{to} from {from_ip}"), "{from} -> {to}");
        }
    }
    // By name: the VIP of db (on h3) from every web replica, and a replica's own name.
    for from in ["web-1", "web-2", "web-3"] {
        let (host, _, _) = &replicas[from];
        let out = d.host_named(host).ok(&format!(
            "ip netns exec mh-{from} python3 -c \"import socket; c=socket.create_connection(('db', 7000), 2); print(c.recv(100).decode().split()[0])\""
        ));
        assert_eq!(out.trim(), "db-1", "{from} -> db by name");
        let out = d.host_named(host).ok(&format!(
            "ip netns exec mh-{from} python3 -c \"import socket; print(socket.gethostbyname('web-2'))\""
        ));
        assert_eq!(out.trim(), replicas["web-2"].1);
    }
    // A policy holds across hosts: db reaches vault; no web replica does, wherever it runs.
    let vault = &replicas["vault-1"].1;
    assert_ne!(
        replicas["db-1"].0, replicas["vault-1"].0,
        "the policy is to be tested across hosts"
    );
    assert!(d.connect("db-1", vault).is_some(), "db-1 cannot reach vault");
    for c in ["web-1", "web-2", "web-3"] {
        assert_eq!(d.connect(c, vault), None, "{c} (on {}) reached vault", replicas[c].0);
    }
    // Isolation: network p's container reaches no one on o, and no one on o reaches it.
    let iso_ip = &replicas["iso-1"].1;
    for c in ["web-1", "web-2", "web-3", "db-1", "vault-1"] {
        assert_eq!(d.connect("iso-1", &replicas[c].1), None, "iso-1 reached {c}");
        assert_eq!(d.connect(c, iso_ip), None, "{c} reached iso-1");
    }
    // Egress NAT from every host: outside sees the host's underlay address.
    d.cluster.sandbox.serve("outside", 7100, "outside");
    for c in ["web-1", "web-2", "web-3"] {
        let host = d.host_named(&replicas[c].0);
        let reply = host.connect(Some(&format!("mh-{c}")), OUTSIDE_IP, 7100);
        assert_eq!(reply, Some(format!("outside from {}", host.underlay)), "{c} to outside");
    }
    // The store is out of every replica's reach (the hole: `curl STORE:2379/v3/kv/range`
    // from a container), on its client and peer ports, while the agents use it.
    let store = common::cluster::UNDERLAY_GATEWAY;
    for c in ["web-1", "web-2", "web-3", "db-1"] {
        let host = d.host_named(&replicas[c].0);
        for port in [2379, 2380] {
            assert!(
                !tcp_connects(host, &format!("mh-{c}"), store, port),
                "{c} (on {}) reached the store at {store}:{port}",
                host.name
            );
        }
        assert!(
            tcp_connects(host, "", store, 2379),
            "{} cannot reach the store",
            host.name
        );
    }
    // Overlay health as the status shows it: every host wired to its peers.
    let status = d.status();
    for o in status["overlays"].as_array().unwrap() {
        assert_eq!(o["peers"], o["expected_peers"], "{o}");
    }
    undeploy_leaves_nothing(&d);
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_damaged_spec_in_the_store_changes_nothing_and_is_reported() {
    let Some(d) = Deployed::start(1) else { return };
    let before = d.replicas();
    let namespaces: Vec<Vec<String>> = d.cluster.hosts().iter().map(|h| h.namespaces()).collect();
    d.cluster
        .sandbox
        .ok(&format!("{} put /plumb/stacks/mh/spec '{{bad'", d.etcd.ctl()));
    // Reported (in the status, from the store and from each agent's report)...
    let reported = eventually(Duration::from_secs(15), || {
        let errors = d.status()["errors"].to_string();
        errors.contains("its spec (/plumb/stacks/mh/spec) cannot be read")
            && ["h1", "h2", "h3"]
                .iter()
                .all(|h| errors.contains(&format!("mh on {h}: stack mh")))
    });
    assert!(reported, "{:#}", d.status());
    // ... and nothing changed: every replica still runs where it ran, and still answers.
    std::thread::sleep(Duration::from_secs(2));
    let after: Vec<Vec<String>> = d.cluster.hosts().iter().map(|h| h.namespaces()).collect();
    assert_eq!(after, namespaces, "a damaged spec must not remove replicas");
    assert!(
        d.connect("web-1", &before["db-1"].1).is_some(),
        "web-1 no longer reaches db-1"
    );
    // Deployed again: the error is gone, the stack as it was.
    let out = d.deploy("stack.toml");
    assert!(out.contains("6/6 replicas ready"), "{out}");
    assert!(eventually(Duration::from_secs(10), || d.status()["errors"]
        .as_array()
        .is_some_and(Vec::is_empty)));
    undeploy_leaves_nothing(&d);
}

fn undeploy_leaves_nothing(d: &Deployed) {
    d.host(1).plumb_ok(&["undeploy", "mh", "--store", &d.etcd.store()]);
    assert_eq!(d.etcd.keys(&d.cluster.sandbox, "/plumb/stacks/"), Vec::<String>::new());
    for h in d.cluster.hosts() {
        assert!(
            eventually(Duration::from_secs(10), || h.namespaces().is_empty()),
            "{} keeps namespaces",
            h.name
        );
        h.assert_clean();
    }
    assert!(
        eventually(Duration::from_secs(10), || d
            .etcd
            .keys(&d.cluster.sandbox, "/plumb-records/")
            .is_empty()),
        "records left in the store"
    );
    // Agents stop cleanly (TERM) and leave the cluster at once.
    for (h, pid) in d.cluster.hosts().iter().zip(&d.agents) {
        h.ok(&format!(
            "kill -TERM {pid}; while kill -0 {pid} 2>/dev/null; do sleep 0.1; done"
        ));
        h.assert_clean();
    }
    assert_eq!(d.etcd.keys(&d.cluster.sandbox, "/plumb/"), Vec::<String>::new());
}

/// The routes, neighbours and FDB entries a host has for another host's underlay address or block.
fn entries_for(h: &Host, underlay: &str, blocks: &[String]) -> Vec<String> {
    let all = h.ok("ip -4 route show; ip -4 neigh show nud permanent; bridge fdb show | grep dst || true");
    all.lines()
        .filter(|l| l.contains(underlay) || blocks.iter().any(|b| l.contains(b.as_str())))
        .map(str::to_string)
        .collect()
}

fn blocks_of(d: &Deployed, host: &str) -> Vec<String> {
    d.status()["overlays"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["host"] == host)
        .filter_map(|o| o["block"].as_str().map(str::to_string))
        .collect()
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_dead_hosts_replicas_run_elsewhere_and_no_host_keeps_its_entries() {
    let Some(d) = Deployed::start(1) else { return };
    // h2 runs one web replica (spread); h1 and h3 learn its block.
    let victim = d.host(1);
    let blocks = blocks_of(&d, "h2");
    assert!(!blocks.is_empty());
    assert!(
        !entries_for(d.host(0), &victim.underlay, &blocks).is_empty(),
        "h1 has no entries for h2 before"
    );
    victim.kill_all();
    // Within the TTL (3 s) plus a few seconds everything runs on h1 and h3.
    assert!(
        eventually(Duration::from_secs(20), || d.converged(&["h1", "h3"])),
        "did not converge: {:?}",
        d.replicas()
    );
    for survivor in [d.host(0), d.host(2)] {
        assert!(
            eventually(Duration::from_secs(5), || entries_for(
                survivor,
                &victim.underlay,
                &blocks
            )
            .is_empty()),
            "{} keeps entries for h2: {:?}",
            survivor.name,
            entries_for(survivor, &victim.underlay, &blocks)
        );
    }
    // The moved replica answers across the overlay.
    let replicas = d.replicas();
    for c in ["web-1", "web-2", "web-3"] {
        assert!(
            d.connect("vault-1", &replicas[c].1).is_some(),
            "vault-1 cannot reach {c} after failover"
        );
    }
    assert!(d
        .etcd
        .keys(&d.cluster.sandbox, "/plumb/hosts/")
        .iter()
        .all(|k| !k.ends_with("/h2")));
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn with_one_of_three_etcd_members_dead_deploys_and_failover_still_work() {
    let Some(d) = Deployed::start(3) else { return };
    d.etcd.kill(&d.cluster.sandbox, 0);
    // A second stack deploys.
    d.cluster.sandbox.write(
        "two.toml",
        "name = \"two\"\n[networks.o]\nsubnet = \"10.52.0.0/16\"\ndriver = \"overlay\"\n\
         [services.a]\nreplicas = 2\ncommand = \"python3 serve.py\"\nexpose = [7000]\n",
    );
    let out = d.deploy("two.toml");
    assert!(out.contains("2/2 replicas ready"), "{out}");
    // And a host's death is still handled.
    d.host(1).kill_all();
    assert!(
        eventually(Duration::from_secs(25), || d.converged_with(&["h1", "h3"], 8)),
        "did not converge: {:?}",
        d.replicas()
    );
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_host_cut_from_the_store_gives_up_its_replicas_and_rejoins_without_duplicates() {
    let Some(d) = Deployed::start(1) else { return };
    let h2 = d.host(1);
    let before = h2.namespaces();
    assert!(!before.is_empty());
    h2.cut_from(common::cluster::UNDERLAY_GATEWAY);
    // The others take its replicas over; h2 itself removes them once its lease is gone.
    assert!(
        eventually(Duration::from_secs(20), || d.converged(&["h1", "h3"])),
        "did not converge: {:?}",
        d.replicas()
    );
    assert!(
        eventually(Duration::from_secs(10), || h2.namespaces().is_empty()),
        "h2 kept {:?}",
        h2.namespaces()
    );
    h2.assert_clean();
    h2.heal();
    // h2 rejoins; every replica still runs exactly once.
    assert!(eventually(Duration::from_secs(15), || d.status()["hosts"]
        .as_array()
        .map(Vec::len)
        == Some(3)));
    assert!(
        eventually(Duration::from_secs(15), || d.converged(&["h1", "h2", "h3"])),
        "after healing: {:?}",
        d.replicas()
    );
    undeploy_leaves_nothing(&d);
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn cluster_commands_refuse_bad_input_clearly() {
    let Some(cluster) = Cluster::start(1) else { return };
    let h = cluster.host(0);
    let etcd = Etcd::start(&cluster.sandbox, 1);
    // Nothing listens: a clear error, quickly.
    let out = h.plumb(&["cluster", "status", "--store", "https://10.99.0.1:2999"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot reach the store") || err.contains("did not answer"),
        "{err}"
    );
    let out = h.plumb(&["cluster", "status", "--store", "10.99.0.1:2999"]);
    assert!(text(&out.stderr).contains("https://"), "{}", text(&out.stderr));
    // A store without TLS is refused unless the operator says --insecure.
    let plain = etcd.store().replace("https://", "http://");
    let out = h.plumb(&["cluster", "status", "--store", &plain]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("plain http://") && err.contains("--insecure") && err.contains("plumb cluster init"),
        "{err}"
    );
    // The store takes only clients with a certificate of the cluster's CA: none, or one of
    // another CA, gets nothing (plumb and a plain HTTPS client alike).
    let range = "-d '{\"key\":\"L3BsdW1i\",\"range_end\":\"L3BsdW1j\"}'";
    let ca = etcd.pki.join("ca.crt").display().to_string();
    let url = format!("{}/v3/kv/range", etcd.store());
    let admin = etcd.pki.join("clients/admin").display().to_string();
    let with_cert = cluster.sandbox.sh(&format!(
        "curl -sf -m 3 --cacert {ca} --cert {admin}/client.crt --key {admin}/client.key {range} {url}"
    ));
    assert!(with_cert.status.success(), "{}", text(&with_cert.stderr));
    let without = cluster
        .sandbox
        .sh(&format!("curl -sf -m 3 --cacert {ca} {range} {url}"));
    assert!(
        !without.status.success(),
        "a client without a certificate read the store"
    );
    let other = cluster.sandbox.dir.join("other-pki").display().to_string();
    cluster.sandbox.ok(&format!(
        "{PLUMB} cluster init --out {other} --clients admin >/dev/null"
    ));
    let foreign = cluster.sandbox.sh(&format!(
        "curl -sf -m 3 --cacert {ca} --cert {other}/clients/admin/client.crt --key {other}/clients/admin/client.key {range} {url}"
    ));
    assert!(!foreign.status.success(), "another CA's certificate read the store");
    let out = h.plumb(&[
        "cluster",
        "status",
        "--store",
        &etcd.store(),
        "--tls",
        &format!("{other}/clients/admin"),
    ]);
    assert!(
        !out.status.success(),
        "plumb read the store with another CA's certificate"
    );
    let out = h.plumb(&["cluster", "status", "--store", &etcd.store(), "--tls", "/nonexistent"]);
    assert!(
        text(&out.stderr).contains("/nonexistent/ca.crt") && text(&out.stderr).contains("plumb cluster init"),
        "{}",
        text(&out.stderr)
    );
    let out = h.plumb(&["agent", "--store", &etcd.store(), "--name", "bad name"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = h.plumb(&["agent", "--store", &etcd.store(), "--underlay", "192.0.2.77"]);
    assert!(
        text(&out.stderr).contains("not an address of this host"),
        "{}",
        text(&out.stderr)
    );
    // Deploy without hosts says to start agents; a bad file cites its line.
    cluster.sandbox.write("ok.toml", "name = \"s\"\n[services.a]\n");
    let out = h.plumb(&[
        "deploy",
        "-f",
        &cluster.sandbox.dir.join("ok.toml").display().to_string(),
        "--store",
        &etcd.store(),
    ]);
    assert!(text(&out.stderr).contains("plumb agent"), "{}", text(&out.stderr));
    cluster.sandbox.write(
        "bad.toml",
        "name = \"s\"\n[networks.o]\nsubnet = \"10.0.0.0/24\"\ndriver = \"vlan\"\n",
    );
    let out = h.plumb(&[
        "deploy",
        "-f",
        &cluster.sandbox.dir.join("bad.toml").display().to_string(),
        "--store",
        &etcd.store(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("bad.toml:4"), "{}", text(&out.stderr));
    assert_eq!(
        etcd.keys(&cluster.sandbox, "/plumb/"),
        Vec::<String>::new(),
        "a refused deploy wrote nothing"
    );
}

//! Simulated hosts for cluster tests, inside one [`Sandbox`]: an underlay bridge `ul0`
//! (10.99.0.1/24, MTU 1500) in the sandbox's namespace, and hosts `h1..hN` at 10.99.0.11..,
//! each a network namespace joined to `ul0` by a veth (`eth0` inside, `vhN` on the sandbox)
//! with a default route via 10.99.0.1, plus a private mount namespace with its own tmpfs on
//! /run/netns and /etc/netns and its own PLUMB_STATE_DIR. The sandbox forwards between the
//! underlay and `outside` (203.0.113.2, which has a route back to 10.99.0.0/24), so a host's
//! egress NAT reaches "the internet". Dropping the [`Cluster`] ends every process of every
//! host by PID, then the sandbox goes.

use std::cell::RefCell;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use super::{netns_inode, succeeded, text, Sandbox, PLUMB};

/// The underlay bridge's address, in the sandbox's namespace (etcd listens here).
pub const UNDERLAY_GATEWAY: &str = "10.99.0.1";
/// The underlay's subnet.
pub const UNDERLAY: &str = "10.99.0.0/24";
/// The name of the nft table [`Host::cut_from`] uses (not plumb's: [`Host::nft_tables`]
/// leaves it out).
const CUT_TABLE: &str = "plumbtest_cut";

/// A host's namespaces: made by `unshare` inside the sandbox, kept by this process.
const HOST_SETUP: &str = r#"
set -e
mount -t tmpfs tmpfs /run/netns
mount -t tmpfs tmpfs /etc/netns
ip link set lo up
sysctl -qw net.ipv4.ip_forward=1
if [ -n "$PLUMB_TEST_BRIDGE_NF" ] && [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
    sysctl -qw net.bridge.bridge-nf-call-iptables="$PLUMB_TEST_BRIDGE_NF"
fi
echo ready
exec sleep 100000
"#;

pub struct Cluster {
    hosts: Vec<Host>,
    /// The sandbox the hosts live in: `ul0` and the `outside` namespace are its.
    pub sandbox: Sandbox,
}

pub struct Host {
    /// `h1`, `h2`, ...
    pub name: String,
    /// Its address on the underlay: `10.99.0.11`, ...
    pub underlay: String,
    holder: Child,
    /// Its folder (under the sandbox's): state dir and logs of spawned commands.
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    netns_inode: u64,
    /// Its replicas' cgroups, below the sandbox's: hosts run containers of the same names.
    cgroup_root: String,
    /// Processes started with [`Host::spawn`], with their log files.
    spawned: RefCell<Vec<(u32, PathBuf)>>,
}

impl Cluster {
    /// A sandbox with `hosts` simulated hosts on one underlay (see the module's comment).
    pub fn start(hosts: usize) -> Option<Cluster> {
        let sandbox = Sandbox::start()?;
        sandbox.ok(&format!(
            "set -e
             ip link add ul0 type bridge
             ip link set ul0 mtu 1500
             ip addr add {UNDERLAY_GATEWAY}/24 dev ul0
             ip link set ul0 up
             ip -n outside route add {UNDERLAY} via {}",
            super::HOST_IP
        ));
        let mut cluster = Cluster {
            hosts: Vec::new(),
            sandbox,
        };
        for i in 1..=hosts {
            let host = cluster.add_host(i);
            cluster.hosts.push(host);
        }
        Some(cluster)
    }

    fn add_host(&self, i: usize) -> Host {
        let name = format!("h{i}");
        let underlay = format!("10.99.0.{}", 10 + i);
        let dir = self.sandbox.dir.join(&name);
        let state_dir = dir.join("state");
        fs::create_dir_all(&state_dir).unwrap();
        let mut holder = self
            .sandbox
            .enter()
            .args([
                "unshare",
                "--net",
                "--mount",
                "--propagation",
                "private",
                "bash",
                "-c",
                HOST_SETUP,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare a host");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "host {name} setup failed");
        let pid = holder.id();
        let netns_inode = netns_inode(pid).expect("host netns");
        let host = Host {
            name,
            underlay,
            holder,
            dir,
            state_dir,
            netns_inode,
            cgroup_root: format!("{}/{}", self.sandbox.cgroup_root, i),
            spawned: RefCell::new(Vec::new()),
        };
        self.sandbox.ok(&format!(
            "set -e
             ip link add vh{i} mtu 1500 master ul0 type veth peer name eth0 netns {pid} mtu 1500
             ip link set vh{i} up"
        ));
        host.ok(&format!(
            "set -e
             ip addr add {}/24 dev eth0
             ip link set eth0 up
             ip route add default via {UNDERLAY_GATEWAY}",
            host.underlay
        ));
        host
    }

    /// The `i`th host, from 0 (`h1`).
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for host in &mut self.hosts {
            host.kill_all();
            let _ = host.holder.kill();
            let _ = host.holder.wait();
        }
    }
}

impl Host {
    fn enter(&self) -> Command {
        let mut c = Command::new("nsenter");
        let wd = format!("--wd={}", self.dir.display());
        c.args(["-t", &self.holder.id().to_string(), "-n", "-m", &wd, "--"]);
        c.env("PLUMB_STATE_DIR", &self.state_dir);
        c.env("PLUMB_CGROUP_ROOT", &self.cgroup_root);
        // The host's client certificate for the store (made by `Etcd::start`).
        let tls = self.dir.parent().map(|d| d.join("pki/clients").join(&self.name));
        if let Some(tls) = tls {
            c.env("PLUMB_STORE_TLS", tls);
        }
        c
    }

    /// Runs a shell script on the host (its network and mount namespaces).
    pub fn sh(&self, script: &str) -> Output {
        self.enter().args(["bash", "-c", script]).output().unwrap()
    }

    /// Runs a script that must succeed; returns its stdout.
    pub fn ok(&self, script: &str) -> String {
        succeeded(self.sh(script), &format!("[{}] {script}", self.name))
    }

    /// Runs plumb with `args` on the host.
    pub fn plumb(&self, args: &[&str]) -> Output {
        self.enter().arg(PLUMB).args(args).output().unwrap()
    }

    /// Runs plumb, asserting it succeeded; returns stdout.
    pub fn plumb_ok(&self, args: &[&str]) -> String {
        succeeded(self.plumb(args), &format!("[{}] plumb {args:?}", self.name))
    }

    /// Starts `command` (a shell command line) in the background on the host; its output goes
    /// to a log file ([`Host::log`]). Ended by PID when the cluster is dropped (or by
    /// [`Host::kill_all`]).
    pub fn spawn(&self, command: &str) -> u32 {
        let n = self.spawned.borrow().len();
        let log = self.dir.join(format!("spawn-{n}.log"));
        let pid: u32 = self
            .ok(&format!("{command} >{} 2>&1 </dev/null & echo $!", log.display()))
            .trim()
            .parse()
            .expect("a PID");
        self.spawned.borrow_mut().push((pid, log));
        pid
    }

    /// What a process started with [`Host::spawn`] has written so far.
    pub fn log(&self, pid: u32) -> String {
        let spawned = self.spawned.borrow();
        let path = spawned.iter().find(|(p, _)| *p == pid).map(|(_, l)| l.clone());
        path.and_then(|p| fs::read_to_string(p).ok()).unwrap_or_default()
    }

    /// Connects to ip:port from a container namespace of this host (or from the host itself
    /// when `ns` is None); what the server said, or None if the connection failed within 2 s.
    pub fn connect(&self, ns: Option<&str>, ip: &str, port: u16) -> Option<String> {
        super::reply(self.sh(&super::connect_script(ns, ip, port)))
    }

    /// Pings once from namespace `ns` of this host; true if a reply came back within 1 s.
    pub fn ping(&self, ns: &str, ip: &str) -> bool {
        self.sh(&super::ping_script(ns, ip)).status.success()
    }

    /// A tiny TCP server in namespace `ns` of this host answering every connection with
    /// `reply from CLIENT_ADDRESS` (as [`Sandbox::serve`]).
    pub fn serve(&self, ns: &str, port: u16, reply: &str) -> u32 {
        let code = format!(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',{port}))\ns.listen(64)\nwhile True:\n c,a=s.accept()\n c.sendall(('{reply} from '+a[0]+'\\n').encode())\n c.close()\n"
        );
        let path = self.dir.join(format!("serve-{ns}-{port}.py"));
        fs::write(&path, code).unwrap();
        let pid = self.spawn(&format!("ip netns exec {ns} /usr/bin/python3 {}", path.display()));
        let ready = super::eventually(std::time::Duration::from_secs(10), || {
            self.sh(&format!(
                "ip netns exec {ns} bash -c 'echo > /dev/tcp/127.0.0.1/{port}' 2>/dev/null"
            ))
            .status
            .success()
        });
        assert!(ready, "server in {ns} on {} did not start on port {port}", self.name);
        pid
    }

    /// Names under the host's /run/netns.
    pub fn namespaces(&self) -> Vec<String> {
        self.ok("ls /run/netns")
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }

    /// Links of the host other than lo and its underlay `eth0`.
    pub fn links(&self) -> Vec<String> {
        self.ok("ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//'")
            .split_whitespace()
            .filter(|l| *l != "lo" && *l != "eth0")
            .map(str::to_string)
            .collect()
    }

    /// `nft list tables` on the host, without the test's own [`Host::cut_from`] table.
    pub fn nft_tables(&self) -> String {
        self.ok("nft list tables")
            .lines()
            .filter(|l| !l.contains(CUT_TABLE))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Asserts the host holds nothing of any stack: no namespace, /etc/netns file, link or
    /// nft table.
    pub fn assert_clean(&self) {
        assert_eq!(
            self.namespaces(),
            Vec::<String>::new(),
            "{}: namespaces left",
            self.name
        );
        assert_eq!(self.ok("ls -A /etc/netns").trim(), "", "{}: /etc/netns left", self.name);
        assert_eq!(self.links(), Vec::<String>::new(), "{}: links left", self.name);
        assert_eq!(self.nft_tables(), "", "{}: nft tables left", self.name);
    }

    /// PIDs of the host's processes: those in its network namespace (other than the holder)
    /// and those in its containers' namespaces.
    pub fn processes(&self) -> Vec<u32> {
        let mut inodes = vec![self.netns_inode];
        inodes.extend(
            text(
                &self
                    .sh("for n in $(ls /run/netns); do stat -L -c %i /run/netns/$n; done")
                    .stdout,
            )
            .split_whitespace()
            .filter_map(|s| s.parse::<u64>().ok()),
        );
        let mut out = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid != self.holder.id() && netns_inode(pid).is_some_and(|i| inodes.contains(&i)) {
                out.push(pid);
            }
        }
        out
    }

    /// `kill -9` every process of the host (agent, supervisor, services): a host that dies.
    /// Its namespaces stay (the holder lives on), with whatever plumb left in them.
    pub fn kill_all(&self) {
        let mut pids = self.processes();
        pids.extend(self.spawned.borrow().iter().map(|(p, _)| *p));
        for pid in pids {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Drops the host's traffic to and from `ip` (in its own namespace, with an nft table of
    /// the test's own), as a network partition; [`Host::heal`] ends it.
    pub fn cut_from(&self, ip: &str) {
        self.ok(&format!(
            "nft -f - <<'EOF'
table inet {CUT_TABLE} {{
    chain cut_in {{ type filter hook input priority -400; ip saddr {ip} drop; }}
    chain cut_out {{ type filter hook output priority -400; ip daddr {ip} drop; }}
    chain cut_forward {{ type filter hook forward priority -400; ip saddr {ip} drop; ip daddr {ip} drop; }}
}}
EOF"
        ));
    }

    /// Ends a partition made by [`Host::cut_from`].
    pub fn heal(&self) {
        self.ok(&format!("nft delete table inet {CUT_TABLE} 2>/dev/null || true"));
    }
}

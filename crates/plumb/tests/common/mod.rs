//! The test sandbox: every kernel test runs plumb inside a fresh network namespace plus a
//! private mount namespace with its own tmpfs on /run/netns and /etc/netns (the containers'
//! resolv.conf files) and its own state dir. Inside,
//! an `outside` namespace (203.0.113.2, behind the uplink `up0` = 203.0.113.1, the default
//! route) stands for the internet. Dropping the sandbox ends every process left in it (by
//! PID) and the namespace vanishes with its holder process.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub mod cluster;
pub mod etcd;
pub mod podman;
pub mod reachability;

pub const PLUMB: &str = env!("CARGO_BIN_EXE_plumb");
pub const OUTSIDE_IP: &str = "203.0.113.2";
pub const HOST_IP: &str = "203.0.113.1";

const SETUP: &str = r#"
set -e
mount -t tmpfs tmpfs /run/netns
mount -t tmpfs tmpfs /etc/netns
ip link set lo up
sysctl -qw net.ipv4.ip_forward=1
# br_netfilter passes bridged frames through the inet hooks where it is loaded (here it is);
# PLUMB_TEST_BRIDGE_NF=0 runs the suite as on a machine without it.
if [ -n "$PLUMB_TEST_BRIDGE_NF" ] && [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
    sysctl -qw net.bridge.bridge-nf-call-iptables="$PLUMB_TEST_BRIDGE_NF"
fi
ip netns add outside
ip link add up0 type veth peer name eth0 netns outside
ip addr add 203.0.113.1/24 dev up0
ip link set up0 up
ip -n outside addr add 203.0.113.2/24 dev eth0
ip -n outside link set eth0 up
ip -n outside link set lo up
ip route add default via 203.0.113.2
echo ready
exec sleep 100000
"#;

/// Every program (or Python module) the kernel tests run, with the Debian package that has it:
/// the same packages scripts/lib.sh installs for `scripts/test`. A test whose tool is missing
/// must fail naming the package, never pass because a forbidden connect "failed".
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("bridge", "iproute2"),
    ("ss", "iproute2"),
    ("nft", "nftables"),
    ("unshare", "util-linux"),
    ("nsenter", "util-linux"),
    ("sysctl", "procps"),
    ("ping", "iputils-ping"),
    ("curl", "curl"),
    ("python3", "python3"),
    ("/usr/lib/python3/dist-packages/flask", "python3-flask"),
    ("/usr/lib/python3/dist-packages/redis", "python3-redis"),
    ("nginx", "nginx-light"),
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
    ("dig", "bind9-dnsutils"),
    ("tshark", "tshark"),
    ("dot", "graphviz"),
    ("promtool", "prometheus"),
    ("etcd", "etcd-server"),
    ("etcdctl", "etcd-client"),
    ("node", "nodejs"),
    ("npm", "npm"),
    // Run by the scripts `--dry-run` prints for an overlay (tx checksum offload off).
    ("ethtool", "ethtool"),
    // Image services (tests/oci.rs, tests/shop_oci.rs) and their base image.
    ("podman", "podman"),
    ("runc", "runc"),
    ("/usr/libexec/podman/catatonit", "catatonit"),
    ("debootstrap", "debootstrap"),
    ("fuse-overlayfs", "fuse-overlayfs"),
    // The live web view's browser check (tests/ui.rs).
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
    ("/usr/lib/python3/dist-packages/selenium", "python3-selenium"),
];

/// Fails (once per test binary, in every kernel test) naming each missing tool's package.
fn require_tools() {
    static MISSING: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let missing = MISSING.get_or_init(|| {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let dirs: Vec<PathBuf> = std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
            .collect();
        TOOLS
            .iter()
            .filter(|(tool, _)| {
                if tool.starts_with('/') {
                    !Path::new(tool).exists()
                } else {
                    !dirs.iter().any(|d| d.join(tool).is_file())
                }
            })
            .map(|(tool, package)| format!("{tool} (Debian package {package})"))
            .collect()
    });
    assert!(
        missing.is_empty(),
        "the kernel tests need programs this machine lacks: {}.\n\
         Run scripts/test, which installs them (as the README says), or apt-get install the packages named.",
        missing.join(", ")
    );
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

pub struct Sandbox {
    holder: Child,
    pub dir: PathBuf,
    pub state_dir: PathBuf,
    netns_inode: u64,
    /// Where this sandbox's replicas' cgroups go in each hierarchy (`PLUMB_CGROUP_ROOT`):
    /// tests running at once, and the host's own plumb.slice, never share one.
    pub cgroup_root: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Sandbox {
    /// A fresh sandbox. Kernel tests need root: without it they are marked ignored at build
    /// time (see build.rs); one that runs anyway fails here, saying why, instead of passing.
    pub fn start() -> Option<Sandbox> {
        assert!(
            is_root(),
            "kernel tests need root: run `cargo test` as root (CI does); without root they are ignored"
        );
        require_tools();
        Some(Sandbox::new())
    }

    fn new() -> Sandbox {
        fs::create_dir_all("/run/netns").expect("create /run/netns for the sandbox mount point");
        // The containers' resolv.conf files go there: a tmpfs of the sandbox's own.
        fs::create_dir_all("/etc/netns").expect("create /etc/netns for the sandbox mount point");
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("plumb-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let state_dir = dir.join("state");
        fs::create_dir_all(&state_dir).unwrap();
        let mut holder = Command::new("unshare")
            .args(["--net", "--mount", "--propagation", "private", "bash", "-c", SETUP])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("unshare");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "sandbox setup failed");
        let netns_inode = netns_inode(holder.id()).expect("sandbox netns");
        Sandbox {
            holder,
            dir,
            state_dir,
            netns_inode,
            cgroup_root: format!("plumb-test-{}-{n}", std::process::id()),
        }
    }

    fn enter(&self) -> Command {
        let mut c = Command::new("nsenter");
        // Entering a mount namespace resets the working directory: set it again with --wd.
        let wd = format!("--wd={}", self.dir.display());
        c.args(["-t", &self.holder.id().to_string(), "-n", "-m", &wd, "--"]);
        c.env("PLUMB_STATE_DIR", &self.state_dir);
        c.env("PLUMB_CGROUP_ROOT", &self.cgroup_root);
        c
    }

    /// The directories of this sandbox's cgroup root that exist (in the v2 hierarchy or any
    /// v1 one).
    pub fn cgroup_dirs(&self) -> Vec<PathBuf> {
        let mount = Path::new("/sys/fs/cgroup");
        let mut out = vec![mount.join(&self.cgroup_root)];
        for entry in fs::read_dir(mount).into_iter().flatten().flatten() {
            out.push(entry.path().join(&self.cgroup_root));
        }
        out.retain(|d| d.is_dir());
        out
    }

    /// Binds a file with `content` over the sandbox's /etc/resolv.conf (its own mount
    /// namespace: the machine's stays as it is). Before `up`: the supervisor reads it at start.
    pub fn use_resolv_conf(&self, content: &str) {
        let path = self.write("resolv.conf", content);
        self.ok(&format!("mount --bind {} /etc/resolv.conf", path.display()));
    }

    /// Runs a shell script inside the sandbox.
    pub fn sh(&self, script: &str) -> Output {
        self.enter().args(["bash", "-c", script]).output().unwrap()
    }

    /// Runs a script that must succeed; returns its stdout.
    pub fn ok(&self, script: &str) -> String {
        succeeded(self.sh(script), script)
    }

    /// Runs plumb with `args` inside the sandbox.
    pub fn plumb(&self, args: &[&str]) -> Output {
        self.enter().arg(PLUMB).args(args).output().unwrap()
    }

    /// Runs plumb as user nobody, from a copy of the binary nobody can reach (the checkout may
    /// be in /root, which only root may enter).
    pub fn plumb_as_nobody(&self, args: &str) -> Output {
        let copy = self.dir.join("bin/plumb");
        if !copy.exists() {
            fs::create_dir_all(self.dir.join("bin")).unwrap();
            fs::copy(PLUMB, &copy).expect("copy the plumb binary for nobody");
        }
        self.sh(&format!(
            "chmod 0755 {dir} {dir}/bin {copy} && setpriv --reuid=65534 --regid=65534 --clear-groups {copy} {args}",
            dir = self.dir.display(),
            copy = copy.display()
        ))
    }

    /// Runs plumb and asserts it succeeded; returns stdout.
    pub fn plumb_ok(&self, args: &[&str]) -> String {
        succeeded(self.plumb(args), &format!("plumb {args:?}"))
    }

    /// A plumb process left running (for crash and concurrency tests).
    pub fn spawn_plumb(&self, args: &[&str]) -> Child {
        self.enter()
            .arg(PLUMB)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// A plumb process left running in a process group of its own (as a terminal's job is, so
    /// a test can send the group Ctrl-C's SIGINT), its stdout piped to the test.
    pub fn spawn_plumb_group(&self, args: &[&str]) -> Child {
        use std::os::unix::process::CommandExt;
        self.enter()
            .arg(PLUMB)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap()
    }

    /// Copies examples/shop (its stack and compose files, nginx config, page and apps) into `shop/`.
    pub fn copy_shop(&self) {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/shop");
        for f in [
            "plumb.toml",
            "compose.yaml",
            "nginx.conf",
            "html/index.html",
            "gateway.py",
            "product.py",
        ] {
            self.write(
                &format!("shop/{f}"),
                &fs::read_to_string(format!("{root}/{f}")).unwrap(),
            );
        }
        fs::create_dir_all(self.dir.join("shop/run")).unwrap();
    }

    /// Writes a file into the sandbox's folder and returns its path.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap();
        }
        fs::write(&path, content).unwrap();
        path
    }

    /// Starts a background command inside namespace `ns` (of the sandbox); it is ended by PID
    /// when the sandbox is dropped.
    pub fn spawn_in(&self, ns: &str, command: &str) {
        self.ok(&format!("ip netns exec {ns} {command} >/dev/null 2>&1 & echo $!"));
    }

    /// A tiny TCP server in `ns` answering every connection with `reply` and the address the
    /// connection came from (so tests can see NAT at work).
    pub fn serve(&self, ns: &str, port: u16, reply: &str) {
        let code = format!(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',{port}))\ns.listen(64)\nwhile True:\n c,a=s.accept()\n c.sendall(('{reply} from '+a[0]+'\\n').encode())\n c.close()\n"
        );
        let path = self.write(&format!("serve-{ns}-{port}.py"), &code);
        self.spawn_in(ns, &format!("/usr/bin/python3 {}", path.display()));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self
                .sh(&format!(
                    "ip netns exec {ns} bash -c 'echo > /dev/tcp/127.0.0.1/{port}' 2>/dev/null"
                ))
                .status
                .success()
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server in {ns} did not start on port {port}");
    }

    /// A TCP server in the sandbox host's own namespace (a host service) on `address`,
    /// answering `reply from CLIENT`; its PID, to end it before checking that plumb left
    /// nothing behind.
    pub fn serve_on_host(&self, address: &str, port: u16, reply: &str) -> String {
        let code = format!(
            "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('{address}',{port}))\ns.listen(64)\nwhile True:\n c,a=s.accept()\n c.sendall(('{reply} from '+a[0]+'\\n').encode())\n c.close()\n"
        );
        let path = self.write(&format!("host-{port}.py"), &code);
        let pid = self.ok(&format!("python3 {} >/dev/null 2>&1 & echo $!", path.display()));
        let probe = if address == "0.0.0.0" { "127.0.0.1" } else { address };
        assert!(
            eventually(Duration::from_secs(10), || self.connect(None, probe, port).is_some()),
            "host server on {address}:{port} did not start"
        );
        pid.trim().to_string()
    }

    /// Connects to ip:port from `ns` (or from the sandbox host when `ns` is None) and returns
    /// what the server said, or None if the connection failed within 1 s.
    pub fn connect(&self, ns: Option<&str>, ip: &str, port: u16) -> Option<String> {
        reply(self.sh(&connect_script(ns, ip, port)))
    }

    /// Pings once from `ns`; true if a reply came back within 1 s.
    pub fn ping(&self, ns: &str, ip: &str) -> bool {
        self.sh(&ping_script(ns, ip)).status.success()
    }

    /// Names under /run/netns other than `outside`.
    pub fn namespaces(&self) -> Vec<String> {
        self.ok("ls /run/netns")
            .split_whitespace()
            .filter(|n| *n != "outside")
            .map(str::to_string)
            .collect()
    }

    /// Links of the sandbox host other than lo and the uplink.
    pub fn links(&self) -> Vec<String> {
        self.ok("ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//'")
            .split_whitespace()
            .filter(|l| *l != "lo" && *l != "up0")
            .map(str::to_string)
            .collect()
    }

    /// The rows of `plumb ps --json`.
    pub fn ps(&self) -> Vec<serde_json::Value> {
        let rows: serde_json::Value = serde_json::from_str(&self.plumb_ok(&["ps", "--json"])).unwrap();
        rows.as_array().unwrap().clone()
    }

    /// A service's VIP, as `plumb services` shows it.
    pub fn vip(&self, stack: &str, service: &str) -> String {
        let all: serde_json::Value =
            serde_json::from_str(&self.plumb_ok(&["services", "-s", stack, "--json"])).unwrap();
        all.as_array()
            .and_then(|all| all.iter().find(|s| s["service"] == service))
            .and_then(|s| s["vip"].as_str())
            .unwrap_or_else(|| panic!("no VIP for {service} in {all:#}"))
            .to_string()
    }

    /// The IPv4 address (without prefix) of a container's interface, from `plumb ps`.
    pub fn address(&self, container: &str, ifname: &str) -> String {
        let rows = self.ps();
        let row = rows
            .iter()
            .find(|r| r["container"] == container)
            .unwrap_or_else(|| panic!("no {container}"));
        let iface = row["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == ifname)
            .unwrap();
        iface["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string()
    }

    pub fn nft_tables(&self) -> String {
        self.ok("nft list tables").trim().to_string()
    }

    /// PIDs of processes in the sandbox's network namespace, other than the holder.
    pub fn processes(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if pid != self.holder.id() && netns_inode(pid) == Some(self.netns_inode) {
                out.push(pid);
            }
        }
        out
    }

    /// Processes whose network namespace is one named under the sandbox's /run/netns
    /// (containers, and the `outside` namespace).
    pub fn namespace_processes(&self) -> Vec<u32> {
        let inodes: Vec<u64> = self
            .ok("for n in $(ls /run/netns); do stat -L -c %i /run/netns/$n; done")
            .split_whitespace()
            .filter_map(|s| s.parse().ok())
            .collect();
        let mut out = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if netns_inode(pid).is_some_and(|i| inodes.contains(&i)) {
                out.push(pid);
            }
        }
        out
    }

    /// Asserts the sandbox holds nothing of any stack: no namespace, link, nft table or process.
    pub fn assert_clean(&self) {
        assert_eq!(self.namespaces(), Vec::<String>::new(), "namespaces left behind");
        assert_eq!(self.ok("ls -A /etc/netns").trim(), "", "/etc/netns files left behind");
        assert_eq!(self.links(), Vec::<String>::new(), "links left behind");
        assert_eq!(self.nft_tables(), "", "nft tables left behind");
        let procs = self.processes();
        assert!(procs.is_empty(), "processes left behind: {}", describe(&procs));
        assert_eq!(self.cgroup_dirs(), Vec::<PathBuf>::new(), "cgroups left behind");
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Container namespaces are not the sandbox's own: end their processes first.
        let mut pids = self.namespace_processes();
        pids.extend(self.processes());
        for pid in pids {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        // A failed test's cgroups: their processes by PID, then the directories, deepest first.
        for root in self.cgroup_dirs() {
            remove_cgroup_tree(&root);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn remove_cgroup_tree(dir: &Path) {
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.path().is_dir() {
            remove_cgroup_tree(&entry.path());
        }
    }
    for _ in 0..50 {
        let pids = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        if pids.trim().is_empty() {
            break;
        }
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).status();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = fs::remove_dir(dir);
}

fn netns_inode(pid: u32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!("/proc/{pid}/ns/net")).ok().map(|m| m.ino())
}

fn describe(pids: &[u32]) -> String {
    pids.iter()
        .map(|p| {
            format!(
                "{p}({})",
                fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default().trim()
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A script connecting to ip:port from namespace `ns` (or where it runs) and printing what
/// the server says, failing if no connection is made within 2 s.
pub fn connect_script(ns: Option<&str>, ip: &str, port: u16) -> String {
    let prefix = ns.map(|n| format!("ip netns exec {n} ")).unwrap_or_default();
    format!("{prefix}timeout 2 bash -c 'exec 3<>/dev/tcp/{ip}/{port} && head -c 100 <&3'")
}

/// What a [`connect_script`] run got from the server, if it connected.
pub fn reply(out: Output) -> Option<String> {
    out.status.success().then(|| text(&out.stdout).trim().to_string())
}

/// One ping from namespace `ns`, waiting up to 1 s for the reply.
pub fn ping_script(ns: &str, ip: &str) -> String {
    format!("ip netns exec {ns} ping -c1 -W1 {ip}")
}

/// The stdout of a command that must have succeeded.
fn succeeded(out: Output, what: &str) -> String {
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "{what} failed\nstdout: {stdout}\nstderr: {stderr}"
    );
    stdout
}

impl Sandbox {
    /// The kernel state plumb makes, normalized for comparison: namespaces; per namespace
    /// (and the host) each link's name, kind, master, alias, state, hairpin mode and IPv4 addresses (no
    /// MACs or indexes, which differ between runs); IPv4 routes; and every nft table's listing.
    pub fn kernel_state(&self) -> String {
        self.ok(r#"
            set -e
            show() {
                ip "$@" -d -j link show | python3 -c '
import json, sys
for l in sorted(json.load(sys.stdin), key=lambda l: l["ifname"]):
    info = l.get("linkinfo") or {}
    kind = info.get("info_kind", "")
    hairpin = "hairpin" if (info.get("info_slave_data") or {}).get("hairpin") else ""
    print(" ", l["ifname"], kind, l.get("master", ""), l.get("ifalias", ""), "UP" if "UP" in l["flags"] else "DOWN", l.get("group", ""), hairpin)'
                ip "$@" -4 -o addr show | awk '{print "  addr", $2, $4}' | sort
                ip "$@" -4 route show | sed 's/^/  route /' | sort
            }
            echo host; show
            for ns in $(ip netns list | awk '{print $1}' | sort); do
                [ "$ns" = outside ] && continue
                echo "netns $ns"; show -n "$ns"
            done
            nft list tables | sort | while read -r _ family name; do echo "table $family $name"; nft list table "$family" "$name"; done
        "#)
    }
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `check` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

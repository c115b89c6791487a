//! podman (4.x, its CNI backend) driving plumb as a CNI plugin for real: `plumb cni install`
//! into the plugin folder podman searches, the conflist `plumb cni conflist` prints, then
//! `podman run --network NET [--network-alias SVC] -p HOST:CTR`: the containers get the stack's
//! addresses, names, policies and a service's VIP; the published port answers from outside
//! through portmap; `podman rm` takes everything away again.
//!
//! Everything podman writes stays in the sandbox: its storage and run state in the sandbox's
//! folder (`--root`, `--runroot`, `CONTAINERS_CONF`), and private mounts over `/usr/lib/cni`,
//! `/var/lib/cni` (libcni's result cache) and `/dev/shm` (podman's locks) in the sandbox's
//! mount namespace (an empty `/var/lib/cni` is made on the machine if missing, as the mount
//! point: what any CNI runtime makes there anyway). The image is `$PLUMB_TEST_IMAGE` (any reference `podman run` takes, with
//! a `sleep` on its PATH) when set; else a root filesystem of the host's `sleep` and its
//! libraries (`--rootfs`), nothing to pull. The network side is checked from the host's tools
//! entering the container's network namespace.

mod common;

use std::path::Path;

use common::*;

const STACK: &str = r#"
name = "pm"
[networks.n]
subnet = "10.89.95.0/24"
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

struct Podman<'a> {
    sb: &'a Sandbox,
    /// `CONTAINERS_CONF=... podman --root ... --runroot ... --storage-driver vfs`
    command: String,
    /// What follows `run` options: the image (or `--rootfs DIR`) and the command.
    image: String,
}

impl Podman<'_> {
    fn new(sb: &Sandbox) -> Podman<'_> {
        for (tool, package) in [
            ("/usr/bin/podman", "podman"),
            ("/usr/bin/conmon", "conmon"),
            ("/usr/lib/cni/portmap", "containernetworking-plugins"),
            ("/usr/sbin/iptables", "iptables"),
        ] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: apt-get install {package} (scripts/test does)"
            );
        }
        let dir = sb.dir.display().to_string();
        // The plugin folder podman searches, private to the sandbox: portmap copied in, plumb
        // linked by `plumb cni install` as on a real machine.
        sb.ok(&format!(
            "set -e; mkdir -p {dir}/cni-bin {dir}/net.d {dir}/tmp /var/lib/cni
             cp /usr/lib/cni/portmap {dir}/cni-bin/
             mount --bind {dir}/cni-bin /usr/lib/cni
             mount -t tmpfs tmpfs /var/lib/cni
             mount -t tmpfs tmpfs /dev/shm"
        ));
        let said = sb.plumb_ok(&["cni", "install"]);
        assert!(said.contains("/usr/lib/cni/plumb ->"), "{said}");
        // Limits at or below the sandbox's own: podman's defaults need CAP_SYS_RESOURCE.
        let conf = sb.write(
            "containers.conf",
            &format!(
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\
                 [engine]\ntmp_dir = \"{dir}/tmp\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
                 events_logfile_path = \"{dir}/events.log\"\n\
                 [network]\nnetwork_backend = \"cni\"\nnetwork_config_dir = \"{dir}/net.d\"\n"
            ),
        );
        let image = match std::env::var("PLUMB_TEST_IMAGE") {
            Ok(image) if !image.is_empty() => format!("{image} sleep 600"),
            _ => {
                sb.ok(&format!(
                    "set -e; for f in /bin/sleep $(ldd /bin/sleep | grep -o '/[^ ]*'); do
                         mkdir -p {dir}/rootfs$(dirname $f); cp -L $f {dir}/rootfs$f; done"
                ));
                format!("--rootfs {dir}/rootfs /bin/sleep 600")
            }
        };
        Podman {
            sb,
            command: format!(
                "CONTAINERS_CONF={} podman --root {dir}/storage --runroot {dir}/run --storage-driver vfs",
                conf.display()
            ),
            image,
        }
    }

    fn ok(&self, args: &str) -> String {
        self.sb.ok(&format!("{} {args}", self.command))
    }

    /// `podman run -d OPTIONS IMAGE sleep 600`; the container's PID.
    fn run(&self, options: &str) -> String {
        self.ok(&format!("run -d {options} {}", self.image));
        self.ok(&format!("inspect --format '{{{{.State.Pid}}}}' {}", name_of(options)))
            .trim()
            .to_string()
    }
}

fn name_of(options: &str) -> &str {
    options
        .split_whitespace()
        .skip_while(|w| *w != "--name")
        .nth(1)
        .expect("--name NAME")
}

/// A script run in the container's network namespace (host tools, the container's network).
fn inside(pid: &str, script: &str) -> String {
    format!("nsenter -t {pid} -n {script}")
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn podman_runs_containers_on_a_stacks_network_through_the_plugin() {
    let Some(sb) = Sandbox::start() else { return };
    let podman = Podman::new(&sb);
    sb.write("plumb.toml", STACK);
    sb.plumb_ok(&["up"]);
    let list = sb.plumb_ok(&["cni", "conflist", "pm", "n", "--name", "pmnet"]);
    sb.write("net.d/pmnet.conflist", &list);
    let networks = podman.ok("network ls --format '{{.Name}}'");
    assert!(networks.lines().any(|l| l == "pmnet"), "{networks}");

    // box1 joins service web by its alias, and publishes 8091 -> 80; box2 is on its own.
    let pid1 = podman.run("--name box1 --network pmnet --network-alias web -p 8091:80");
    let pid2 = podman.run("--name box2 --network pmnet");
    let (ip1, ip2) = (sb.address("box1", "eth0"), sb.address("box2", "eth0"));
    assert!(
        ip1.starts_with("10.89.95.") && ip2.starts_with("10.89.95."),
        "{ip1} {ip2}"
    );
    let addr = sb.ok(&inside(&pid1, "ip -4 -o addr show eth0"));
    assert!(
        addr.contains(&format!("{ip1}/24")),
        "podman's container holds plumb's address: {addr}"
    );
    let route = sb.ok(&inside(&pid1, "ip -4 route show default"));
    assert!(route.contains("via 10.89.95.1"), "{route}");

    // Real packets both ways between the two that are in no service (web, box1's, may only
    // reach db: the policy makes its egress default-deny); names from the stack's DNS server.
    let pid3 = podman.run("--name box3 --network pmnet");
    let ip3 = sb.address("box3", "eth0");
    let ping = |pid: &str, ip: &str| sb.sh(&inside(pid, &format!("ping -c1 -W1 {ip}"))).status.success();
    assert!(ping(&pid2, &ip3), "box2 -> box3");
    assert!(ping(&pid3, &ip2), "box3 -> box2");
    assert!(!ping(&pid1, &ip2), "web's egress is only to db");
    let named = sb.ok(&inside(&pid2, "dig +time=1 +tries=2 +short @10.89.95.1 box1.pm"));
    assert_eq!(named.trim(), ip1);

    // The policy: only web reaches db:5432; box1 is web through its alias, box2 is not.
    let db = sb.address("db-1", "eth0");
    sb.serve("pm-db-1", 5432, "db");
    let script = |pid: &str| inside(pid, &connect_script(None, &db, 5432));
    assert_eq!(reply(sb.sh(&script(&pid1))), Some(format!("db from {ip1}")));
    assert_eq!(reply(sb.sh(&script(&pid2))), None, "the policy keeps box2 from db");
    let services = sb.plumb_ok(&["services", "-s", "pm"]);
    assert!(services.contains("box1"), "box1 is behind web's VIP: {services}");

    // plumb's tools see podman's containers like its own: trace names the policy that
    // refuses box2, capture records box1's packets, chaos delays box3.
    let traced = sb.plumb(&["trace", "box2", &format!("{db}:5432"), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&traced.stdout).unwrap();
    assert_eq!(traced.status.code(), Some(1), "{report:#}");
    assert_eq!(report["decided_by"]["verdict"], "drop", "{report:#}");
    let traced = sb.plumb(&["trace", "box1", &format!("{db}:5432"), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&traced.stdout).unwrap();
    assert_eq!(report["outcome"], "connected", "{report:#}");
    let captured = sb.sh(&format!(
        "(sleep 0.5; {}) & timeout 10 {PLUMB} capture box1 -c 2",
        inside(&pid2, &format!("ping -c2 -i0.2 -W1 {ip1}"))
    ));
    assert!(captured.status.success(), "{}", text(&captured.stderr));
    assert!(
        text(&captured.stdout).contains("box1/eth0"),
        "{}",
        text(&captured.stdout)
    );
    let rtt = |from: &str, to: &str| -> f64 {
        let out = sb.ok(&inside(from, &format!("ping -c3 -i0.2 -W2 {to}")));
        let avg = out.lines().last().unwrap().split('/').nth(4).unwrap().to_string();
        avg.parse().unwrap()
    };
    sb.plumb_ok(&["chaos", "box3", "--delay", "100ms", "--for", "30s"]);
    assert!(rtt(&pid2, &ip3) >= 100.0, "the delay on box3 holds");
    sb.plumb_ok(&["chaos", "clear"]);
    assert!(rtt(&pid2, &ip3) < 100.0, "cleared");

    // The port podman published (portmap, after plumb) answers from outside.
    let server = sb.write("serve80.py", "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',80))\ns.listen(8)\nwhile True:\n c,a=s.accept()\n c.sendall(('box1 from '+a[0]+'\\n').encode())\n c.close()\n");
    let server_pid = sb.ok(&format!(
        "{} >/dev/null 2>&1 & echo $!",
        inside(&pid1, &format!("python3 {}", server.display()))
    ));
    assert!(
        eventually(std::time::Duration::from_secs(10), || sb
            .connect(Some("outside"), HOST_IP, 8091)
            .is_some_and(|r| r.starts_with("box1 from"))),
        "{}",
        sb.ok("iptables-save -t nat; nft list ruleset")
    );
    // And from box2 inside the network, straight to box1 (web's ingress is open).
    let from_box2 = reply(sb.sh(&inside(&pid2, &connect_script(None, &ip1, 80))));
    assert_eq!(from_box2, Some(format!("box1 from {ip2}")));

    // It would hold the namespace past `podman rm`: ended first, by PID.
    sb.ok(&format!("kill {}", server_pid.trim()));

    // podman rm: DEL through the list, in reverse: plumb's wiring and portmap's port go.
    // (Some DELs come from podman's cleanup when a container exits, run without this
    // test's environment: the conflist's stateDir names the records.)
    podman.ok("rm -t 0 -f box1 box2 box3");
    let ps = sb.plumb_ok(&["ps"]);
    assert!(!ps.contains("box"), "{ps}");
    assert_eq!(
        sb.connect(Some("outside"), HOST_IP, 8091),
        None,
        "the port is unpublished"
    );
    let dnat = sb.ok("iptables-save -t nat | grep -c 'CNI-DN-' || true");
    assert_eq!(dnat.trim(), "0", "portmap's DNAT is gone");

    sb.plumb_ok(&["down"]);
    // portmap's empty chains and tables are the runtime's leftovers, not plumb's.
    sb.ok(
        "for ipt in iptables ip6tables; do for t in nat filter mangle; do $ipt -t $t -F 2>/dev/null; $ipt -t $t -X 2>/dev/null; done; done
         nft list tables | while read -r _ family name; do
             case $family/$name in ip/nat|ip/filter|ip/mangle|ip6/nat|ip6/filter|ip6/mangle) nft delete table $family $name;; esac
         done; true",
    );
    sb.assert_clean();
}

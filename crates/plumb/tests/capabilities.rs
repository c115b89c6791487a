//! What a service may do to the kernel: Docker's default capabilities (no NET_ADMIN, no
//! SYS_ADMIN), `cap_add` / `cap_drop`, no_new_privs, a non-root `user` keeping only what was
//! added, and exec health probes held to the same. Proved with real syscalls and packets.

mod common;

use std::time::Duration;

use common::*;

/// Docker's default set as the kernel shows it (CapBnd of any `docker run`).
const DOCKER_DEFAULT: &str = "00000000a80425fb";

/// The pid of a container's process, once it runs.
fn pid_of(sb: &Sandbox, container: &str) -> u64 {
    let mut pid = None;
    eventually(Duration::from_secs(10), || {
        pid = sb
            .ps()
            .iter()
            .find(|r| r["container"] == container)
            .and_then(|r| r["process"]["pid"].as_u64());
        pid.is_some()
    });
    pid.unwrap_or_else(|| panic!("{container} has no process"))
}

/// The capability and no_new_privs lines of /proc/PID/status, as name → value.
fn status(sb: &Sandbox, pid: u64) -> std::collections::BTreeMap<String, String> {
    sb.ok(&format!("grep -E '^(Cap|NoNewPrivs)' /proc/{pid}/status"))
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

/// Waits until the service's log holds every one of `needles`; returns the log.
fn log_with(sb: &Sandbox, service: &str, needles: &[&str]) -> String {
    // `up` returns once the programs run, so their output may still be on its way; stdout and
    // stderr are two pipes, read in either order: wait for every line the test looks at (as
    // long as a loaded machine needs: CI once saw 10 s pass before the shell's echo).
    let mut logs = String::new();
    eventually(Duration::from_secs(30), || {
        logs = sb.plumb_ok(&["logs", service]);
        needles.iter().all(|n| logs.contains(n))
    });
    logs
}

/// Tries to serve HTTP on port 80, says how that went, then stays up.
const BIND_80: &str = "python3 -m http.server 80; echo bind-rc=$?; exec sleep 3600";

/// Writes `plumb.toml`: stack `caps` with one network and `services` (TOML tables).
fn write_stack(sb: &Sandbox, services: &str) {
    sb.write(
        "plumb.toml",
        &format!("name = \"caps\"\n[networks.n]\nsubnet = \"10.96.0.0/24\"\n{services}"),
    );
}

/// Tries to re-address and re-MAC its own interface, says how that went, then stays up.
const READDRESS: &str = "ip addr add 10.96.0.200/32 dev eth0; echo addr-rc=$?; ip link set eth0 address 02:00:00:00:96:01; echo mac-rc=$?; exec sleep 3600";

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_service_gets_dockers_default_capabilities_and_no_new_privileges() {
    let Some(sb) = Sandbox::start() else { return };
    write_stack(
        &sb,
        &format!(
            r#"
[services.tamper]
command = ["/bin/sh", "-c", "{READDRESS}"]

[services.web]
command = ["/usr/bin/python3", "-m", "http.server", "80"]
"#
        ),
    );
    sb.plumb_ok(&["up"]);

    // No NET_ADMIN: the service cannot change its own interface.
    let logs = log_with(&sb, "tamper", &["mac-rc=", "Operation not permitted"]);
    assert!(
        logs.contains("Operation not permitted") && logs.contains("addr-rc=2") && logs.contains("mac-rc=2"),
        "{logs}"
    );
    let eth0 = sb.ok("ip netns exec caps-tamper-1 ip -o addr show eth0");
    assert!(!eth0.contains("10.96.0.200"), "{eth0}");
    let link = sb.ok("ip netns exec caps-tamper-1 ip -o link show eth0");
    assert!(!link.contains("02:00:00:00:96:01"), "{link}");

    // NET_BIND_SERVICE is kept: port 80 answers, from the sandbox host.
    let web = sb.address("web-1", "eth0");
    assert!(
        eventually(Duration::from_secs(10), || sb
            .sh(&format!("curl -sf -m 2 http://{web}:80/ -o /dev/null"))
            .status
            .success()),
        "web does not answer on port 80"
    );

    // The kernel's view: Docker's set, nothing inheritable or ambient, no new privileges.
    let caps = status(&sb, pid_of(&sb, "web-1"));
    for set in ["CapBnd", "CapEff", "CapPrm"] {
        assert_eq!(caps[set], DOCKER_DEFAULT, "{set}: {caps:?}");
    }
    assert_eq!(caps["CapInh"], "0000000000000000", "{caps:?}");
    assert_eq!(caps["CapAmb"], "0000000000000000", "{caps:?}");
    assert_eq!(caps["NoNewPrivs"], "1", "{caps:?}");

    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn cap_add_and_cap_drop_change_what_a_service_may_do() {
    let Some(sb) = Sandbox::start() else { return };
    write_stack(
        &sb,
        &format!(
            r#"
[services.admin]
command = ["/bin/sh", "-c", "{READDRESS}"]
cap_add = ["CAP_NET_ADMIN"]

# Only KILL: not even port 80.
[services.bare]
command = ["/bin/sh", "-c", "{BIND_80}"]
cap_drop = ["ALL"]
cap_add = ["kill"]

# Not root: nothing by default, even what the bounding set allows.
[services.nobody]
command = ["/bin/sh", "-c", "{BIND_80}"]
user = "nobody"

# Not root, with what it asked for.
[services.granted]
command = ["/usr/bin/python3", "-m", "http.server", "80"]
user = "nobody"
cap_add = ["NET_BIND_SERVICE"]
"#
        ),
    );
    sb.plumb_ok(&["up"]);

    let logs = log_with(&sb, "admin", &["mac-rc="]);
    assert!(logs.contains("addr-rc=0") && logs.contains("mac-rc=0"), "{logs}");
    assert!(sb
        .ok("ip netns exec caps-admin-1 ip -o addr show eth0")
        .contains("10.96.0.200/32"));
    assert!(sb
        .ok("ip netns exec caps-admin-1 ip -o link show eth0")
        .contains("02:00:00:00:96:01"));
    let admin = status(&sb, pid_of(&sb, "admin-1"));
    assert_eq!(admin["CapBnd"], "00000000a80435fb", "{admin:?}");

    // Without NET_BIND_SERVICE, binding port 80 fails, as root or as another user.
    for service in ["bare", "nobody"] {
        let logs = log_with(&sb, service, &["bind-rc=", "Permission denied"]);
        assert!(
            logs.contains("Permission denied") && logs.contains("bind-rc=1"),
            "{service}: {logs}"
        );
    }
    let bare = status(&sb, pid_of(&sb, "bare-1"));
    assert_eq!(bare["CapBnd"], "0000000000000020", "{bare:?}");
    // Docker's rule for another user: the bounding set as for root, nothing held.
    let granted = pid_of(&sb, "granted-1");
    let caps = status(&sb, granted);
    assert_eq!(caps["CapBnd"], "00000000a80425fb", "{caps:?}");
    // What cap_add names is kept through exec, as an ambient capability: it binds port 80.
    for set in ["CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(caps[set], "0000000000000400", "{set}: {caps:?}");
    }
    assert_eq!(sb.ok(&format!("ps -o user= -p {granted}")).trim(), "nobody");
    let ip = sb.address("granted-1", "eth0");
    assert!(
        eventually(Duration::from_secs(10), || sb
            .sh(&format!("curl -sf -m 2 http://{ip}:80/ -o /dev/null"))
            .status
            .success()),
        "granted does not answer on port 80"
    );

    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn an_exec_probe_runs_with_the_services_user_and_capabilities() {
    let Some(sb) = Sandbox::start() else { return };
    // Healthy only if the probe runs as nobody, bounded by Docker's set, with no new privileges.
    let probe = format!(
        "test $(id -u) = 65534 && grep -q 'CapBnd:.*{DOCKER_DEFAULT}' /proc/self/status && grep -q 'NoNewPrivs:.*1' /proc/self/status"
    );
    write_stack(
        &sb,
        &format!(
            r#"
[services.probed]
command = "/bin/sleep 3600"
user = "nobody"
health = {{ exec = ["/bin/sh", "-c", "{probe}"], interval = "200ms" }}
"#
        ),
    );
    sb.plumb_ok(&["up"]);
    let health = |sb: &Sandbox| {
        let rows = sb.ps();
        let probed = rows.iter().find(|r| r["container"] == "probed-1").cloned();
        probed.map(|r| r["process"]["health"].clone()).unwrap_or_default()
    };
    assert!(
        eventually(Duration::from_secs(10), || health(&sb) == "healthy"),
        "the probe did not pass: {}",
        health(&sb)
    );
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

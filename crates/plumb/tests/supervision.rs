//! Supervision under stress: one supervisor per stack whatever happens to the state directory,
//! stacks found from the kernel when their record is lost or damaged, a private state
//! directory, services that leave daemons behind, and a full disk. What `up` waits for: a
//! program that runs (a failed exec is named at once), and readiness with `up --wait`.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn process<'a>(rows: &'a [serde_json::Value], container: &str) -> &'a serde_json::Value {
    &rows
        .iter()
        .find(|r| r["container"] == container)
        .unwrap_or_else(|| panic!("no {container} in {rows:?}"))["process"]
}

/// PIDs of `plumb supervise` processes in the sandbox.
fn supervisors(sb: &Sandbox) -> Vec<u32> {
    sb.processes()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|arg| arg == b"supervise"))
        })
        .collect()
}

/// How many processes in namespace `ns` run exactly `command` (as `ps -o args` shows it).
fn running(sb: &Sandbox, ns: &str, command: &str) -> usize {
    sb.ok(&format!(
        "for p in $(ip netns pids {ns}); do ps -o args= -p $p; done; true"
    ))
    .lines()
    .filter(|l| l.trim() == command)
    .count()
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_stack_has_one_supervisor_even_when_its_state_directory_is_lost() {
    let Some(sb) = Sandbox::start() else { return };
    let state = sb.state_dir.display().to_string();
    sb.write(
        "plumb.toml",
        "name = \"uniq\"\n[networks.n]\nsubnet = \"10.120.0.0/24\"\n[services.s]\nreplicas = 2\ncommand = \"/bin/sleep 3600\"\n",
    );
    sb.plumb_ok(&["up"]);
    let first = supervisors(&sb);
    assert_eq!(first.len(), 1, "{first:?}");
    let one_each = |sb: &Sandbox| {
        for ns in ["uniq-s-1", "uniq-s-2"] {
            assert_eq!(running(sb, ns, "/bin/sleep 3600"), 1, "in {ns}");
        }
    };

    // Whatever sits where an older plumb kept a PID file does not hide the supervisor.
    sb.ok(&format!("echo garbage > {state}/stacks/uniq/supervisor.pid"));
    sb.plumb_ok(&["up"]);
    assert_eq!(supervisors(&sb), first);
    one_each(&sb);

    // The state directory is gone: ps still shows the stack, found in the kernel.
    sb.ok(&format!("rm -rf {state}"));
    let rows = sb.ps();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter().all(|r| r["stack"] == "uniq" && r["record"] == "none"),
        "{rows:?}"
    );
    let out = sb.plumb(&["ps"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stdout.contains("uniq (no record)") && stdout.contains("s-2"),
        "{stdout}"
    );
    assert!(
        stderr.contains("stack uniq has no record") && stderr.contains("plumb down uniq"),
        "{stderr}"
    );

    // up takes the stack and its running supervisor over: nothing runs twice.
    sb.plumb_ok(&["up"]);
    assert_eq!(supervisors(&sb), first);
    one_each(&sb);
    assert!(sb
        .ps()
        .iter()
        .all(|r| r["process"]["state"] == "running" && r["record"] == "ok"));

    // Lost again: down STACK still ends the supervisor and everything of the stack.
    sb.ok(&format!("rm -rf {state}"));
    sb.plumb_ok(&["down", "uniq"]);
    assert!(
        eventually(Duration::from_secs(5), || supervisors(&sb).is_empty()),
        "supervisor left: {:?}",
        supervisors(&sb)
    );
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn the_state_directory_is_private_to_root() {
    let Some(sb) = Sandbox::start() else { return };
    let state = sb.state_dir.display().to_string();
    sb.write(
        "plumb.toml",
        "name = \"priv\"\n[networks.n]\nsubnet = \"10.120.1.0/24\"\n\
         [services.s]\ncommand = \"/bin/sleep 3600\"\nenv = { TOKEN = \"hunter2\" }\n\
         [services.u]\nuser = \"nobody\"\ncommand = [\"/bin/sh\", \"-c\", \"umask; grep -c u-1 /etc/hosts; grep -c 'nameserver 10.120.1.1' /etc/resolv.conf; sleep 3600\"]\n",
    );
    sb.plumb_ok(&["up"]);
    // As an older plumb left it: everything readable by all.
    sb.ok(&format!("chmod -R go+rX {state}"));
    sb.plumb_ok(&["up"]);

    let nobody = |command: &str| sb.sh(&format!("setpriv --reuid=65534 --regid=65534 --clear-groups {command}"));
    for file in [
        "stacks/priv/run.json",
        "stacks/priv/state.json",
        "stacks/priv/logs/s-1.log",
    ] {
        let out = nobody(&format!("cat {state}/{file}"));
        assert!(!out.status.success(), "nobody reads {file}: {}", text(&out.stdout));
    }
    let modes = sb.ok(&format!("find {state} -printf '%m %y %P\\n'"));
    for line in modes.lines() {
        let mut fields = line.split(' ');
        let (mode, kind, path) = (fields.next().unwrap(), fields.next().unwrap(), fields.next().unwrap());
        let want = match kind {
            "d" => "700",
            _ if path.contains("/hosts/") => "644",
            _ => "600",
        };
        assert_eq!(mode, want, "{path} ({kind}) in:\n{modes}");
    }
    for args in ["ps", "logs s"] {
        let out = nobody(&format!("{PLUMB} --state-dir {state} {args}"));
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "plumb {args} as nobody: {}", text(&out.stdout));
        assert!(
            stderr.contains("Permission denied") && stderr.contains("root"),
            "{stderr}"
        );
    }
    // The supervisor's socket (abstract, so any local user may connect) tells them nothing;
    // root hears its report.
    let name = sb.ok("grep -o '@plumb-supervisor/[^ ]*' /proc/net/unix | head -1");
    let name = name.trim().trim_start_matches('@');
    assert!(!name.is_empty(), "no supervisor socket found");
    let ask = format!("/usr/bin/python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.connect('\\0{name}'); s.settimeout(2); print(len(s.recv(4096)))\"");
    let heard = nobody(&ask);
    assert_eq!(
        text(&heard.stdout).trim(),
        "0",
        "another user heard the supervisor's report: {}",
        text(&heard.stderr)
    );
    assert_ne!(sb.ok(&ask).trim(), "0", "root must hear the report");
    // A service running as another user still reads its hosts file and its resolv.conf, and
    // gets the usual umask.
    let logs = sb.plumb_ok(&["logs", "u"]);
    assert!(logs.contains("0022\n1\n1\n"), "{logs}");

    // A state directory whose parent anyone may write is refused before anything is made.
    sb.ok(&format!(
        "mkdir -m 0777 {0}/open && chmod 0777 {0}/open",
        sb.dir.display()
    ));
    sb.write(
        "other.toml",
        "name = \"other\"\n[networks.n]\nsubnet = \"10.120.2.0/24\"\n[services.s]\ncommand = \"/bin/sleep 3600\"\n",
    );
    let open_state = format!("{}/open/state", sb.dir.display());
    let out = sb.plumb(&["--state-dir", &open_state, "up", "-f", "other.toml"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{}/open", sb.dir.display()))
            && stderr.contains("writable by others")
            && stderr.contains("hint:"),
        "{stderr}"
    );
    assert!(!sb.dir.join("open/state").exists());
    assert!(!sb.namespaces().iter().any(|n| n.starts_with("other-")));

    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_damaged_record_harms_only_its_own_stack() {
    let Some(sb) = Sandbox::start() else { return };
    let state = sb.state_dir.display().to_string();
    let stack = |name: &str, subnet: &str, replicas: u32| {
        format!(
            "name = \"{name}\"\n[networks.n]\nsubnet = \"{subnet}\"\n[services.s]\nreplicas = {replicas}\ncommand = \"/bin/sleep 3600\"\n"
        )
    };
    sb.write("a.toml", &stack("a", "10.120.3.0/24", 1));
    sb.write("b.toml", &stack("b", "10.120.4.0/24", 1));
    sb.plumb_ok(&["up", "-f", "a.toml"]);
    sb.plumb_ok(&["up", "-f", "b.toml"]);
    sb.ok(&format!("echo '{{ broken' > {state}/stacks/b/state.json"));

    // ps shows a as it is and b as the kernel holds it, marked damaged, with the way out.
    let rows = sb.ps();
    let record = |stack: &str| {
        rows.iter()
            .filter(|r| r["stack"] == stack)
            .map(|r| r["record"].as_str().unwrap_or("?").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        (record("a"), record("b")),
        (vec!["ok".to_string()], vec!["damaged".to_string()])
    );
    assert_eq!(process(&rows, "s-1")["state"], "running");
    let out = sb.plumb(&["ps"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(text(&out.stdout).contains("b (damaged)"), "{}", text(&out.stdout));
    assert!(
        stderr.contains("the record of stack b is damaged") && stderr.contains("plumb down b"),
        "{stderr}"
    );

    // a can still change.
    sb.write("a.toml", &stack("a", "10.120.3.0/24", 2));
    sb.plumb_ok(&["up", "-f", "a.toml"]);
    assert_eq!(sb.ps().iter().filter(|r| r["stack"] == "a").count(), 2);

    // b's own up names the damage and the way out.
    let out = sb.plumb(&["up", "-f", "b.toml"]);
    assert!(text(&out.stderr).contains("is damaged"), "{}", text(&out.stderr));
    // And b's down removes it all from the kernel's marks, the damaged record too.
    let out = sb.plumb(&["down", "b"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("is damaged"), "{}", text(&out.stderr));
    assert!(!sb.state_dir.join("stacks/b").exists());
    assert!(!sb.namespaces().iter().any(|n| n.starts_with("b-")));
    sb.plumb_ok(&["down", "-f", "a.toml"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn processes_a_service_leaves_behind_are_ended_before_it_starts_again() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write(
        "plumb.toml",
        "name = \"daemon\"\n[networks.n]\nsubnet = \"10.120.5.0/24\"\n\
         [services.always]\ncommand = [\"/bin/sh\", \"-c\", \"sleep 778 & exit 0\"]\nrestart = \"always\"\nstop_grace = \"1s\"\n\
         [services.once]\ncommand = [\"/bin/sh\", \"-c\", \"sleep 779 & exit 0\"]\nrestart = \"on-failure\"\nstop_grace = \"1s\"\n",
    );
    // `always` keeps exiting, which up reports; the supervisor goes on restarting it.
    let _ = sb.plumb(&["up"]);
    let start = Instant::now();
    let mut most = 0;
    while start.elapsed() < Duration::from_secs(8) {
        most = most.max(running(&sb, "daemon-always-1", "sleep 778"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let restarts = process(&sb.ps(), "always-1")["restarts"].as_u64().unwrap_or(0);
    assert!(restarts >= 3, "restarted {restarts} times");
    assert!(most <= 1, "{most} daemons left by {restarts} restarts");

    // on-failure: exited, and ps tells of the process it left.
    let rows = sb.ps();
    let once = process(&rows, "once-1");
    assert_eq!(
        (once["state"].as_str(), once["untracked"].as_u64()),
        (Some("exited"), Some(1)),
        "{once}"
    );
    let table = sb.plumb_ok(&["ps"]);
    assert!(table.contains("exited, 1 untracked"), "{table}");
    // A later up starts it again, ending the one left first.
    let _ = sb.plumb(&["up"]);
    let again = eventually(Duration::from_secs(5), || {
        let rows = sb.ps();
        let once = process(&rows, "once-1");
        once["restarts"] == 1 && once["state"] == "exited"
    });
    assert!(again, "{:?}", process(&sb.ps(), "once-1"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(running(&sb, "daemon-once-1", "sleep 779"), 1);
    // stop ends what it left too.
    sb.plumb_ok(&["stop", "once"]);
    assert!(
        eventually(Duration::from_secs(5), || running(&sb, "daemon-once-1", "sleep 779")
            == 0),
        "stop leaves its daemon"
    );

    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_full_disk_is_named_and_stale_status_is_flagged() {
    let Some(sb) = Sandbox::start() else { return };
    let state = sb.state_dir.display().to_string();
    // The sandbox's own mount namespace: this tmpfs is seen only by what runs inside it.
    sb.ok(&format!("mount -t tmpfs -o size=256k,mode=0700 tmpfs {state}"));
    sb.write(
        "plumb.toml",
        "name = \"full\"\n[networks.n]\nsubnet = \"10.120.6.0/24\"\n[services.s]\ncommand = \"/bin/sleep 3600\"\n",
    );
    sb.plumb_ok(&["up"]);
    let pid = process(&sb.ps(), "s-1")["pid"].as_u64().unwrap();
    sb.ok(&format!("dd if=/dev/zero of={state}/filler bs=4k 2>/dev/null; true"));
    sb.ok(&format!("kill -9 {pid}"));

    // The supervisor restarts it but cannot say so: ps tells that what it shows is stale.
    let stale = eventually(Duration::from_secs(5), || {
        let stderr = text(&sb.plumb(&["ps"]).stderr);
        stderr.contains("stale") && stderr.contains("status.json: No space left on device")
    });
    assert!(stale, "{}", text(&sb.plumb(&["ps"]).stderr));
    assert_eq!(process(&sb.ps(), "s-1")["stale"], true);

    // up names the file it cannot write.
    let out = sb.plumb(&["up"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{state}/stacks/full/state.json")) && stderr.contains("No space left on device"),
        "{stderr}"
    );

    // Space again: the status catches up by itself.
    sb.ok(&format!("rm {state}/filler"));
    let fresh = eventually(Duration::from_secs(5), || {
        let rows = sb.ps();
        let p = process(&rows, "s-1");
        p["stale"] == false && p["state"] == "running" && p["pid"].as_u64().is_some_and(|p| p != pid)
    });
    assert!(fresh, "{:?}", sb.ps());
    assert!(!text(&sb.plumb(&["ps"]).stderr).contains("stale"));

    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_host_without_etc_hosts_runs_services_and_a_failed_mount_is_named() {
    let Some(sb) = Sandbox::start() else { return };
    // The sandbox's own copy of /etc (its mount namespace: the machine's stays as it is), with
    // a directory where /etc/hosts should be: the bind mount over it must fail.
    sb.ok("cp -a /etc etc-copy && rm etc-copy/hosts && mkdir etc-copy/hosts && mount --bind $PWD/etc-copy /etc");
    sb.write(
        "plumb.toml",
        "name = \"eh\"\n[networks.n]\nsubnet = \"10.120.7.0/24\"\n[services.s]\ncommand = \"/bin/sleep 3600\"\n",
    );
    let _ = sb.plumb(&["up"]);
    let named = eventually(Duration::from_secs(10), || {
        sb.plumb_ok(&["events", "eh"])
            .contains("binding the container's hosts file over /etc/hosts: Not a directory")
    });
    assert!(
        named,
        "the failed step is not named:\n{}",
        sb.plumb_ok(&["events", "eh"])
    );
    assert!(!sb.plumb_ok(&["events", "eh"]).contains("/bin/sleep: Not a directory"));

    // No /etc/hosts at all (a minimal root): plumb makes the mount point, the service runs.
    sb.ok("rmdir etc-copy/hosts");
    let runs = eventually(Duration::from_secs(20), || {
        running(&sb, "eh-s-1", "/bin/sleep 3600") == 1
    });
    assert!(runs, "{}", sb.plumb_ok(&["events", "eh"]));
    assert!(sb.plumb_ok(&["exec", "s-1", "--", "cat", "/etc/hosts"]).contains("s-1"));
    sb.plumb_ok(&["down", "eh"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_second_state_directory_finds_the_running_stack_and_refuses() {
    let Some(sb) = Sandbox::start() else { return };
    let state = sb.state_dir.display().to_string();
    sb.write(
        "plumb.toml",
        "name = \"two\"\n[networks.n]\nsubnet = \"10.120.8.0/24\"\n[services.s]\ncommand = \"/bin/sleep 3600\"\n",
    );
    sb.plumb_ok(&["up"]);
    let first = supervisors(&sb);
    let pid = sb.ps()[0]["process"]["pid"].clone();
    let out = sb.sh(&format!("PLUMB_STATE_DIR={state}-other {PLUMB} up"));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("stack two is already up from state directory {state}")),
        "{err}"
    );
    // Nothing changed: one supervisor, the same process, still running.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(supervisors(&sb), first);
    assert_eq!(sb.ps()[0]["process"]["pid"], pid);
    assert_eq!(running(&sb, "two-s-1", "/bin/sleep 3600"), 1);
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn up_names_a_program_that_cannot_be_executed_at_once() {
    let Some(sb) = Sandbox::start() else { return };
    // Executable by its mode (so `up` accepts it), but exec fails: no such interpreter.
    let script = sb.write("broken.sh", "#!/nonexistent/interpreter\necho never\n");
    sb.ok(&format!("chmod 755 {}", path_str(&script)));
    sb.write(
        "plumb.toml",
        "name = \"ex\"\n[networks.n]\nsubnet = \"10.120.9.0/24\"\n\
         [services.ok]\ncommand = \"/bin/sleep 3600\"\n\
         [services.bad]\ncommand = \"./broken.sh\"\n",
    );
    let start = Instant::now();
    let out = sb.plumb(&["up"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("bad-1: cannot start:")
            && err.contains("broken.sh: its interpreter /nonexistent/interpreter does not exist"),
        "{err}"
    );
    // Reported from the failed exec itself, not after a back-off or a timeout.
    assert!(start.elapsed() < Duration::from_secs(5), "{:?}", start.elapsed());
    assert!(!err.contains("ok-1"), "{err}");
    let events = sb.plumb_ok(&["events", "ex"]);
    assert!(events.contains("start_failed"), "{events}");
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn up_wait_waits_for_health_and_names_a_replica_that_never_gets_healthy() {
    let Some(sb) = Sandbox::start() else { return };
    let flag = sb.dir.join("well-is-ready");
    let well = format!(
        "name = \"hw\"\n[networks.n]\nsubnet = \"10.120.10.0/24\"\n\
         [services.well]\ncommand = \"/bin/sleep 3600\"\n\
         health = {{ exec = [\"/bin/test\", \"-e\", \"{}\"], interval = \"200ms\", start_period = \"60s\" }}\n",
        path_str(&flag)
    );
    sb.write("plumb.toml", &well);
    // Without --wait, up returns once the program runs, healthy or not.
    sb.plumb_ok(&["up"]);
    assert_eq!(process(&sb.ps(), "well-1")["health"], "starting", "{:?}", sb.ps());
    // With it (nothing to change), up returns once the replica is healthy.
    sb.ok(&format!("touch {}", path_str(&flag)));
    sb.plumb_ok(&["up", "--wait"]);
    assert_eq!(process(&sb.ps(), "well-1")["health"], "healthy", "{:?}", sb.ps());

    // A service whose check never passes fails `up --wait`, named, while up itself succeeds.
    let sick = format!(
        "{well}[services.sick]\ncommand = \"/bin/sleep 3600\"\n\
         health = {{ exec = [\"/bin/false\"], interval = \"100ms\", retries = 2 }}\n"
    );
    sb.write("plumb.toml", &sick);
    let out = sb.plumb(&["up", "--wait"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("sick-1: unhealthy") && err.contains("plumb logs sick-1"),
        "{err}"
    );
    assert!(!err.contains("well-1:"), "{err}");
    sb.plumb_ok(&["up"]);
    assert_eq!(process(&sb.ps(), "sick-1")["health"], "unhealthy", "{:?}", sb.ps());
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

//! Resource limits with real processes: a fork bomb stays inside `pids`, a process that
//! allocates past `memory` is OOM-killed (an event, and a restart), a busy loop is held near
//! its `cpus`, a limit the host cannot enforce is refused at `up`, and `down` removes every
//! cgroup. Measured from the replica's own cgroup counters, with generous bands.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn stack(name: &str, subnet: &str, service: &str) -> String {
    format!("name = \"{name}\"\n[networks.n]\nsubnet = \"{subnet}\"\n\n[services.s]\nstop_grace = \"1s\"\n{service}")
}

/// The replica's cgroup directory holding `file` (v2: the one directory; v1: the hierarchy
/// of that file's controller).
fn cgroup_file(sb: &Sandbox, stack: &str, container: &str, file: &str) -> PathBuf {
    let relative = format!("{}/{stack}/{container}", sb.cgroup_root);
    let mount = PathBuf::from("/sys/fs/cgroup");
    let controller = file.split('.').next().unwrap();
    [mount.join(&relative), mount.join(controller).join(&relative)]
        .into_iter()
        .map(|d| d.join(file))
        .find(|f| f.exists())
        .unwrap_or_else(|| panic!("no {file} in the cgroup of {container}"))
}

fn read_number(path: &PathBuf) -> u64 {
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

/// CPU time the replica's cgroup has used, in microseconds.
fn cpu_usec(sb: &Sandbox, stack: &str, container: &str) -> u64 {
    let relative = format!("{}/{stack}/{container}", sb.cgroup_root);
    let v2 = PathBuf::from("/sys/fs/cgroup").join(&relative).join("cpu.stat");
    if v2.exists() {
        let text = std::fs::read_to_string(v2).unwrap();
        let line = text.lines().find(|l| l.starts_with("usage_usec ")).unwrap();
        return line[11..].trim().parse().unwrap();
    }
    read_number(&cgroup_file(sb, stack, container, "cpuacct.usage")) / 1000
}

/// The value of the series `name{...container="C"...}`, if the scrape has it.
fn metric(scrape: &str, name: &str, container: &str) -> Option<f64> {
    scrape
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| l.contains(&format!("container=\"{container}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn events(sb: &Sandbox, stack: &str) -> Vec<Value> {
    sb.plumb_ok(&["events", stack, "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_fork_bomb_stays_inside_its_pids_limit_and_down_ends_it() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write(
        "plumb.toml",
        &stack(
            "bomb",
            "10.121.0.0/24",
            "pids = 64\ncommand = [\"/bin/bash\", \"-c\", \"b() { b | b & }; b\"]\n",
        ),
    );
    sb.plumb_ok(&["up"]);
    let current = cgroup_file(&sb, "bomb", "s-1", "pids.current");
    assert_eq!(read_number(&cgroup_file(&sb, "bomb", "s-1", "pids.max")), 64);
    assert!(
        eventually(Duration::from_secs(10), || read_number(&current) >= 60),
        "the bomb never reached its limit: {} pids",
        read_number(&current)
    );
    // Held at the limit for a while, and the host (this test) can still start processes.
    for _ in 0..10 {
        let pids = read_number(&current);
        assert!(pids <= 64, "{pids} processes in a cgroup limited to 64");
        assert_eq!(sb.ok("/bin/echo still forking").trim(), "still forking");
        std::thread::sleep(Duration::from_millis(100));
    }
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_process_past_its_memory_limit_is_oom_killed_and_restarted() {
    let Some(sb) = Sandbox::start() else { return };
    // 200 MB of bytes really written (not lazily mapped zeros); no swap to escape into.
    let hog = "import time; b = b'x' * (200 * 1024 * 1024); print('ALLOC' + 'ATED', flush=True); time.sleep(60)";
    sb.write(
        "plumb.toml",
        &stack(
            "oom\"\nmetrics = \"127.0.0.1:9471",
            "10.121.1.0/24",
            &format!("memory = \"64M\"\nmemory_swap = \"64M\"\nrestart = \"on-failure\"\ncommand = [\"/usr/bin/python3\", \"-c\", \"{hog}\"]\n"),
        ),
    );
    sb.plumb_ok(&["up"]);
    let oom = |sb: &Sandbox| {
        let all = events(sb, "oom");
        let killed = all
            .iter()
            .any(|e| e["event"] == "oom_killed" && e["container"] == "s-1");
        let restarted = all.iter().any(|e| {
            e["event"] == "restarting" && e["detail"].as_str().is_some_and(|d| d.contains("after oom_killed"))
        });
        killed && restarted
    };
    assert!(
        eventually(Duration::from_secs(20), || oom(&sb)),
        "no oom_killed and restart: {:#?}",
        events(&sb, "oom")
    );
    let detail = events(&sb, "oom")
        .into_iter()
        .find(|e| e["event"] == "oom_killed")
        .unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains(&(64u64 << 20).to_string()), "{detail}");
    let log = sb.plumb_ok(&["logs", "oom/s"]);
    assert!(
        !log.contains("ALLOCATED"),
        "the allocation succeeded past the limit:\n{log}"
    );
    // The metrics endpoint counts the OOM kills and shows the memory.
    let scrape = sb.ok("curl -sf -m 5 http://127.0.0.1:9471/metrics");
    let kills = metric(&scrape, "plumb_container_oom_kills_total", "s-1").unwrap_or(0.0);
    assert!(kills >= 1.0, "{scrape}");
    assert!(
        metric(&scrape, "plumb_container_memory_bytes", "s-1").is_some(),
        "{scrape}"
    );
    assert!(
        metric(&scrape, "plumb_container_cpu_seconds_total", "s-1").is_some(),
        "{scrape}"
    );
    let checked = sb.sh(&format!(
        "printf '%s' '{}' | promtool check metrics",
        scrape.replace('\'', "'\\''")
    ));
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        text(&checked.stdout),
        text(&checked.stderr)
    );
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_busy_loop_is_held_near_its_cpus() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write(
        "plumb.toml",
        &stack(
            "cpu",
            "10.121.2.0/24",
            "cpus = 0.2\ncommand = [\"/bin/sh\", \"-c\", \"while :; do :; done\"]\n",
        ),
    );
    sb.plumb_ok(&["up"]);
    // A service that sets no pids limit gets the default one.
    assert_eq!(read_number(&cgroup_file(&sb, "cpu", "s-1", "pids.max")), 2048);
    std::thread::sleep(Duration::from_millis(500));
    let (t0, u0) = (Instant::now(), cpu_usec(&sb, "cpu", "s-1"));
    std::thread::sleep(Duration::from_secs(3));
    let (elapsed, used) = (t0.elapsed(), cpu_usec(&sb, "cpu", "s-1") - u0);
    let percent = used as f64 * 100.0 / elapsed.as_micros() as f64;
    eprintln!("cpus = 0.2: the busy loop used {percent:.1}% of one core over {elapsed:?}");
    assert!((10.0..=35.0).contains(&percent), "{percent:.1}% of one core");

    // ps shows it, from the same counters.
    let rows: Vec<Value> = sb.ps();
    let process = &rows.iter().find(|r| r["container"] == "s-1").unwrap()["process"];
    let cpu = process["cpu_percent"].as_f64().unwrap_or_else(|| panic!("{process}"));
    assert!((3.0..=45.0).contains(&cpu), "ps: {cpu}% ({process})");
    assert!(process["memory_bytes"].as_u64().unwrap() > 0, "{process}");
    let table = sb.plumb_ok(&["ps"]);
    assert!(table.contains("CPU") && table.contains("MEM"), "{table}");
    let rows: Vec<Value> = serde_json::from_str(&sb.plumb_ok(&["top", "--once", "--json"])).unwrap();
    let row = rows.iter().find(|r| r["container"] == "s-1").unwrap();
    let cpu = row["cpu_percent"].as_f64().unwrap_or_else(|| panic!("{row}"));
    assert!((3.0..=45.0).contains(&cpu), "top: {cpu}% ({row})");
    assert!(row["memory_bytes"].as_u64().unwrap() > 0, "{row}");

    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_limit_the_host_cannot_enforce_is_refused_at_up() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write(
        "plumb.toml",
        &stack("refused", "10.121.3.0/24", "pids = 64\ncommand = \"/bin/sleep 3600\"\n"),
    );
    // A cgroup mount with no hierarchy in it: a host without the pids controller.
    let empty = sb.dir.join("no-cgroups");
    std::fs::create_dir_all(&empty).unwrap();
    let out = sb.sh(&format!(
        "PLUMB_CGROUP_MOUNT={} {} up",
        empty.display(),
        env!("CARGO_BIN_EXE_plumb"),
    ));
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("plumb.toml:7") && stderr.contains("services.s.pids: this host cannot enforce pids"),
        "{stderr}"
    );
    assert!(stderr.contains("pids hierarchy"), "{stderr}");
    // Nothing was made.
    sb.assert_clean();
    // More CPUs than the host has would limit nothing.
    let cpus = std::thread::available_parallelism().unwrap().get() + 1;
    sb.write(
        "plumb.toml",
        &stack(
            "refused",
            "10.121.3.0/24",
            &format!("cpus = {cpus}\ncommand = \"/bin/sleep 3600\"\n"),
        ),
    );
    let out = sb.plumb(&["up"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("plumb.toml:7") && stderr.contains("services.s.cpus: this host cannot enforce cpus"),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("more than the {} CPUs", cpus - 1)), "{stderr}");
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn an_oom_kill_that_spares_the_replicas_own_process_is_an_event_too() {
    let Some(sb) = Sandbox::start() else { return };
    // `tail` keeps a line without end whole: 200 MB of zeros past a 64M limit. The shell
    // that runs it lives on.
    sb.write(
        "plumb.toml",
        &stack(
            "worker",
            "10.121.4.0/24",
            "memory = \"64M\"\nmemory_swap = \"64M\"\ncommand = [\"/bin/sh\", \"-c\", \"head -c 200m /dev/zero | tail; sleep 3600\"]\n",
        ),
    );
    sb.plumb_ok(&["up"]);
    let killed = |sb: &Sandbox| {
        events(sb, "worker")
            .into_iter()
            .find(|e| e["event"] == "oom_killed")
            .map(|e| e["detail"].as_str().unwrap().to_string())
    };
    assert!(
        eventually(Duration::from_secs(20), || killed(&sb).is_some()),
        "no oom_killed: {:#?}",
        events(&sb, "worker")
    );
    let detail = killed(&sb).unwrap();
    assert!(detail.contains("still running"), "{detail}");
    let all = events(&sb, "worker");
    assert!(!all.iter().any(|e| e["event"] == "exited"), "{all:#?}");
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

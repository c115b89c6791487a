//! `plumb tour`: the course (plumb_core::tour's steps) run on real kernel objects in a
//! throwaway sandbox the tour makes itself. The sandbox is `unshare --net --mount --pid`:
//! a network namespace of its own (the host's links, routes and nft tables are never seen),
//! a private mount namespace (a tmpfs on /run, holding /run/netns and the tour's files and
//! plumb's state in /run/plumb-tour, and one on /etc/netns) and a PID namespace. When the tour ends, however it ends
//! (done, Ctrl-C, killed), the PID namespace's first process exits and the kernel ends every
//! process in it; with no process left the namespaces, and every link, bridge, nft table and
//! file made in them, are gone. So a crashed tour leaves nothing for a second run to clean.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use plumb_core::kernel::Kernel;
use plumb_core::tour::{self, Assignment, Check, Expect, Step, COURSE};

use crate::apply;
use crate::failure::{Failure, Result};

/// What `plumb tour` was asked.
pub struct Args {
    /// An assignment ("4") or a step ("4.2") to start at.
    pub start: Option<String>,
    pub list: bool,
    pub auto: bool,
    pub json: bool,
    pub slides: Option<PathBuf>,
}

/// Set inside the sandbox: the process there runs the tour instead of making another sandbox.
const INSIDE: &str = "PLUMB_TOUR_SANDBOX";
/// The tour's folder inside the sandbox (a tmpfs of its own): stack files, plumb's state.
const WORK: &str = "/run/plumb-tour";

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn run(args: Args) -> Result<()> {
    if args.list {
        print!("{}", tour::list());
        println!("\n`plumb tour` runs them all; `plumb tour N` starts at assignment N (or step N.M).");
        return Ok(());
    }
    if let Some(dir) = &args.slides {
        return write_slides(dir);
    }
    let start = match &args.start {
        Some(s) => Some(tour::parse_start(s).map_err(|e| Failure::new(e).code(2))?),
        None => None,
    };
    super::require_root("tour")?;
    if std::env::var_os(INSIDE).is_none() {
        require_tools()?;
        return enter_sandbox();
    }
    // Only the sandbox's first process (PID 1 of the PID namespace `enter_sandbox` makes) may
    // run the tour: it mounts over /run, which must never be the machine's own.
    if nix::unistd::getpid().as_raw() != 1 {
        return Err(
            Failure::new(format!("{INSIDE} is set, but this is not the tour's sandbox"))
                .hint(format!("{INSIDE} is plumb's own: unset it and run `plumb tour` again")),
        );
    }
    reap_as_init(|| inside(&args, start))
}

fn write_slides(dir: &Path) -> Result<()> {
    let fail = |e: std::io::Error| {
        Failure::new(format!("cannot write the slides into {}: {e}", dir.display()))
            .hint("give a folder you may write to: plumb tour --slides ./slides")
    };
    std::fs::create_dir_all(dir).map_err(fail)?;
    std::fs::write(dir.join("tour.md"), tour::slides_markdown()).map_err(fail)?;
    std::fs::write(dir.join("tour.html"), tour::slides_html()).map_err(fail)?;
    println!(
        "wrote {0}/tour.md (Markdown, slides separated by ---) and {0}/tour.html (self-contained: open it in a browser, arrows move)",
        dir.display()
    );
    Ok(())
}

/// The programs the steps run, with their Debian packages (those `plumb demo` needs, which
/// scripts/demo installs): missing ones are named before anything starts.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("bridge", "iproute2"),
    ("tc", "iproute2"),
    ("ss", "iproute2"),
    ("nft", "nftables"),
    ("unshare", "util-linux"),
    ("sysctl", "procps"),
    ("ping", "iputils-ping"),
    ("curl", "curl"),
    ("python3", "python3"),
    ("redis-server", "redis-server"),
    ("redis-cli", "redis-tools"),
];

fn require_tools() -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .collect();
    let missing: Vec<&(&str, &str)> = TOOLS
        .iter()
        .filter(|(tool, _)| !dirs.iter().any(|d| d.join(tool).is_file()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    packages.dedup();
    let tools: Vec<&str> = missing.iter().map(|(t, _)| *t).collect();
    Err(
        Failure::new(format!("the tour runs {}, which this machine lacks", tools.join(", ")))
            .hint(format!("apt-get install {}", packages.join(" "))),
    )
}

/// Runs this same command again inside new network, mount and PID namespaces, and waits.
fn enter_sandbox() -> Result<()> {
    // The mount point for the sandbox's own /etc/netns (where `ip netns exec` finds each
    // namespace's resolv.conf): the folder iproute2 itself uses, made empty if missing.
    std::fs::create_dir_all("/etc/netns")
        .map_err(|e| Failure::new(format!("cannot create /etc/netns (the sandbox's mount point): {e}")))?;
    let exe = std::env::current_exe().map_err(|e| Failure::new(format!("cannot find the plumb binary: {e}")))?;
    let mut command = Command::new("unshare");
    command
        .args([
            "--net",
            "--mount",
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--propagation",
            "private",
        ])
        .arg(exe)
        .args(std::env::args_os().skip(1).collect::<Vec<OsString>>())
        .env(INSIDE, "1");
    // The sandbox's replicas get their cgroups below a folder of this tour's own. The kernel
    // ends a killed tour's processes with its PID namespace but not its cgroups' folders:
    // this tour removes its own when the sandbox ends, and those of tours that died before.
    let mut kernel = apply::kernel()?;
    remove_cgroups_of_dead_tours(&mut kernel);
    let cgroups = format!("{TOUR_CGROUP_PREFIX}{}", std::process::id());
    let root = plumb_core::cgroup::root_from(std::env::var("PLUMB_CGROUP_ROOT").ok().as_deref());
    command.env("PLUMB_CGROUP_ROOT", format!("{root}/{cgroups}"));
    // If this process is killed, unshare goes too, and with it (--kill-child) the sandbox.
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    let mut child = command.spawn().map_err(|e| {
        Failure::new(format!("cannot start the tour's sandbox with unshare: {e}"))
            .hint("unshare is in util-linux: apt-get install util-linux")
    })?;
    // Ctrl-C reaches the whole foreground group: the tour inside handles it (and tears down);
    // this process only waits for it.
    ignore_sigint();
    let status = child
        .wait()
        .map_err(|e| Failure::new(format!("waiting for the tour: {e}")));
    remove_cgroups_of(&mut kernel, &cgroups);
    let status = status?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => Err(Failure::silent(code)),
        None => Err(Failure::silent(130)),
    }
}

/// A tour's cgroup folder is this prefix and the PID of the tour outside its sandbox.
const TOUR_CGROUP_PREFIX: &str = "tour-";

/// Removes a tour's cgroup folder once the processes of its ended sandbox have left it (they
/// may still be exiting when unshare returns: a few tries).
fn remove_cgroups_of(kernel: &mut dyn Kernel, folder: &str) {
    for _ in 0..20 {
        kernel.cgroup_remove_tree(folder);
        if !kernel.cgroup_children("").iter().any(|c| c == folder) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Removes the cgroup folders of tours whose process is gone (killed with their sandbox).
fn remove_cgroups_of_dead_tours(kernel: &mut dyn Kernel) {
    for folder in kernel.cgroup_children("") {
        let pid = folder
            .strip_prefix(TOUR_CGROUP_PREFIX)
            .and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            kernel.cgroup_remove_tree(&folder);
        }
    }
}

fn ignore_sigint() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: SIG_IGN installs no handler code.
    let _ = unsafe { signal(Signal::SIGINT, SigHandler::SigIgn) };
}

extern "C" fn on_sigint(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// The tour's process is the PID namespace's first: orphans (a stack's supervisor once `up`
/// returns, daemonized servers) are reparented to it, and must be reaped or they stay zombies
/// that still look alive to `plumb down`. So it forks: the child runs the tour, this process
/// reaps every child until the tour's own ends, and exits with its status (the kernel then
/// ends whatever is left in the namespace).
fn reap_as_init(tour: impl FnOnce() -> Result<()>) -> Result<()> {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult, Pid};
    // SAFETY: nothing has started a thread yet (the tour runs before any runtime); the child
    // goes on as this single-threaded program.
    match unsafe { fork() } {
        Err(e) => Err(Failure::new(format!("cannot fork the tour: {e}"))),
        Ok(ForkResult::Child) => tour(),
        Ok(ForkResult::Parent { child }) => {
            ignore_sigint();
            loop {
                match waitpid(Pid::from_raw(-1), None) {
                    Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                        return if code == 0 { Ok(()) } else { Err(Failure::silent(code)) };
                    }
                    Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                        return Err(Failure::silent(128 + sig as i32));
                    }
                    Err(nix::errno::Errno::ECHILD) => return Err(Failure::silent(1)),
                    _ => {}
                }
            }
        }
    }
}

/// How the tour talks: to a person (interactive or not) or as JSON lines for programs.
struct Runner {
    interactive: bool,
    json: bool,
    env: Vec<(String, String)>,
    passed: usize,
    failed: Vec<String>,
}

fn inside(args: &Args, start: Option<(u8, Option<&'static str>)>) -> Result<()> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    // No SA_RESTART: a read of the terminal returns EINTR, so Ctrl-C at a prompt is seen.
    let action = SigAction::new(SigHandler::Handler(on_sigint), SaFlags::empty(), SigSet::empty());
    // SAFETY: the handler only stores to an atomic.
    unsafe { sigaction(Signal::SIGINT, &action) }.map_err(|e| Failure::new(format!("sigaction: {e}")))?;

    let mut runner = Runner {
        interactive: !args.auto && !args.json && std::io::stdin().is_terminal(),
        json: args.json,
        env: Vec::new(),
        passed: 0,
        failed: Vec::new(),
    };
    if runner.interactive {
        take_the_terminal();
    }
    runner.setup()?;
    let result = runner.course(start);
    runner.teardown();
    result
}

impl Runner {
    fn say(&self, text: &str) {
        if !self.json {
            println!("{text}");
        }
    }

    fn event(&self, value: serde_json::Value) {
        if self.json {
            println!("{value}");
            let _ = std::io::stdout().flush();
        }
    }

    /// The sandbox's inside: private mounts, loopback, and an `outside` namespace standing for
    /// the internet (203.0.113.2, behind the uplink up0 = 203.0.113.1) with a web server
    /// that tells each client the address it saw.
    fn setup(&mut self) -> Result<()> {
        let exe = std::env::current_exe().map_err(|e| Failure::new(format!("cannot find the plumb binary: {e}")))?;
        let script = format!(
            r#"set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/netns
mount -t tmpfs -o mode=0755 tmpfs /etc/netns
mkdir -p {WORK}/bin {WORK}/state
chmod 0700 {WORK}/state
ln -s {exe} {WORK}/bin/plumb
ip link set lo up
ip netns add outside
ip link add up0 type veth peer name eth0 netns outside
ip addr add 203.0.113.1/24 dev up0
ip link set up0 up
ip -n outside addr add 203.0.113.2/24 dev eth0
ip -n outside link set eth0 up
ip -n outside link set lo up
ip route add default via 203.0.113.2
"#,
            exe = exe.display()
        );
        let out = Command::new("bash")
            .args(["-c", &script])
            .output()
            .map_err(|e| Failure::new(format!("cannot run bash: {e}")))?;
        if !out.status.success() {
            return Err(Failure::new(format!(
                "the tour's sandbox could not be set up: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
            .hint("the tour needs iproute2 and a kernel with network namespaces and veth"));
        }
        let path = format!(
            "{WORK}/bin:{}",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        self.env = vec![
            ("PATH".into(), path),
            ("PLUMB_STATE_DIR".into(), format!("{WORK}/state")),
            ("NO_COLOR".into(), "1".into()),
        ];
        std::fs::write(format!("{WORK}/outside.py"), OUTSIDE_SERVER)
            .map_err(|e| Failure::new(format!("cannot write {WORK}/outside.py: {e}")))?;
        Command::new("ip")
            .args(["netns", "exec", "outside", "python3", &format!("{WORK}/outside.py")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                Failure::new(format!("cannot start the outside's web server: {e}")).hint("apt-get install python3")
            })?;
        let inode = |ns: &str| {
            std::fs::metadata(format!("/proc/self/ns/{ns}"))
                .map(|m| m.ino())
                .unwrap_or(0)
        };
        self.event(serde_json::json!({
            "event": "sandbox",
            "pid_namespace": inode("pid"),
            "net_namespace": inode("net"),
            "mount_namespace": inode("mnt"),
        }));
        self.say(&format!(
            "plumb tour: a throwaway sandbox (its own network, mount and PID namespaces) holds everything;\n\
             nothing on this machine is touched, and it all goes when the tour ends (Ctrl-C too).\n\
             Its files are in {WORK}; `plumb` there is this binary.\n"
        ));
        Ok(())
    }

    /// Ends the stacks cleanly (`plumb down`); the rest goes with the namespaces.
    fn teardown(&self) {
        let out = self.shell("plumb ps --json 2>/dev/null");
        let stacks: Vec<String> = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|row| row["stack"].as_str().map(str::to_string))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for stack in &stacks {
            let _ = self.shell(&format!("plumb down {stack}"));
        }
        self.event(serde_json::json!({"event": "teardown", "stacks_down": stacks}));
        self.say("\nThe tour's sandbox is being removed: its namespaces, links, nft tables, processes and files.");
    }

    fn course(&mut self, start: Option<(u8, Option<&'static str>)>) -> Result<()> {
        let (first, first_step) = start.map_or((1, None), |(n, s)| (n, s));
        // Assignments whose state the sandbox holds (shown or set up quietly).
        let mut made: Vec<u8> = Vec::new();
        let mut reached = first_step.is_none();
        for a in COURSE.iter().filter(|a| a.number >= first) {
            for number in tour::prerequisites(a.number) {
                if made.contains(&number) {
                    continue;
                }
                let before = tour::assignment(number).expect("prerequisites name assignments");
                self.say(&format!(
                    "(setting up what assignment {number}, {}, makes: its commands, quietly)",
                    before.title
                ));
                for step in before.steps {
                    self.quietly(step)?;
                }
                made.push(number);
            }
            made.push(a.number);
            if reached || a.steps.iter().all(|s| Some(s.id) != first_step) {
                self.assignment_title(a);
            }
            for step in a.steps {
                if !reached {
                    if Some(step.id) == first_step {
                        reached = true;
                    } else {
                        self.quietly(step)?;
                        continue;
                    }
                }
                if !self.step(step)? {
                    self.say(&format!(
                        "\nYou left the tour at step {}; `plumb tour {}` starts there again.",
                        step.id, step.id
                    ));
                    return Ok(());
                }
                self.interrupted()?;
            }
        }
        let total = self.passed + self.failed.len();
        self.event(serde_json::json!({
            "event": "summary",
            "checks": total,
            "passed": self.passed,
            "failed": self.failed,
        }));
        if self.failed.is_empty() {
            self.say(&format!("\nDone: {total} checks passed."));
            Ok(())
        } else {
            Err(Failure::new(format!(
                "{} of {total} checks failed: {}",
                self.failed.len(),
                self.failed.join("; ")
            )))
        }
    }

    fn assignment_title(&self, a: &Assignment) {
        self.say(&format!(
            "\n══ Assignment {}: {} ══\n\n{}",
            a.number,
            a.title,
            wrap(a.summary, 92)
        ));
    }

    /// A step that only makes the state later ones need: its files, commands and checks,
    /// printing nothing unless a check fails.
    fn quietly(&mut self, step: &Step) -> Result<()> {
        self.write_files(step)?;
        for command in step.commands {
            let _ = self.shell(command);
            self.interrupted()?;
        }
        for check in step.checks {
            if !self.probe(check) {
                return Err(Failure::new(format!(
                    "setting up: step {} ({}) did not work: {} failed (`{}`)",
                    step.id, step.title, check.what, check.run
                )));
            }
        }
        Ok(())
    }

    /// One step, shown; false when the learner quits.
    fn step(&mut self, step: &Step) -> Result<bool> {
        self.say(&format!(
            "\n── {}  {} ──\n\n{}\n{}\n\n",
            step.id,
            step.title,
            wrap(step.explain, 92),
            step.diagram.trim_start_matches('\n')
        ));
        self.write_files(step)?;
        for (name, _) in step.files {
            self.say(&format!("(the tour wrote {WORK}/{name})"));
        }
        self.show_state(step, "before");
        if self.interactive {
            self.say(&format!("Your turn: {}", step.task));
            self.say("The commands:");
            for c in step.commands {
                self.say(&format!("  $ {c}"));
            }
            loop {
                match self.ask("\n[Enter] run them for me · t: type them yourself · s: skip · q: quit > ")? {
                    Answer::Run => {
                        self.run_commands(step)?;
                        break;
                    }
                    Answer::Type => {
                        self.learner_shell(step)?;
                        // The learner waits for the verdict: a few seconds, not the auto mode's 20.
                        let results: Vec<bool> = step
                            .checks
                            .iter()
                            .map(|c| self.probe_for(c, Duration::from_secs(3)))
                            .collect();
                        if results.iter().all(|ok| *ok) {
                            break;
                        }
                        self.say("Not yet. The checks:");
                        for (c, ok) in step.checks.iter().zip(results) {
                            self.say(&format!("  {} {}: `{}`", if ok { "✓" } else { "✗" }, c.what, c.run));
                        }
                        self.say("Try again (t), or let the tour run the commands (Enter).");
                    }
                    Answer::Skip => return Ok(true),
                    Answer::Quit => return Ok(false),
                }
            }
        } else {
            self.run_commands(step)?;
        }
        let mut all = true;
        for check in step.checks {
            self.interrupted()?;
            let ok = self.probe(check);
            all &= ok;
            let verdict = match (check.expect, ok) {
                (Expect::Passes, true) => "passes",
                (Expect::Blocked, true) => "blocked, as it should be",
                (Expect::Passes, false) => "FAILED: it should pass",
                (Expect::Blocked, false) => "FAILED: it got through",
            };
            self.say(&format!(
                "  {} {}: {verdict}\n      check: {}",
                if ok { "✓" } else { "✗" },
                check.what,
                check.run
            ));
            self.event(serde_json::json!({
                "event": "check",
                "step": step.id,
                "check": check.what,
                "run": check.run,
                "expect": if check.expect == Expect::Passes { "passes" } else { "blocked" },
                "passed": ok,
            }));
            if ok {
                self.passed += 1;
            } else {
                self.failed.push(format!("{} {}", step.id, check.what));
            }
        }
        // After the checks, so counters and conntrack show the probes too.
        self.show_state(step, "after (and after the checks)");
        self.event(serde_json::json!({"event": "step", "step": step.id, "title": step.title, "passed": all}));
        Ok(true)
    }

    fn write_files(&self, step: &Step) -> Result<()> {
        for (name, content) in step.files {
            std::fs::write(Path::new(WORK).join(name), content)
                .map_err(|e| Failure::new(format!("cannot write {WORK}/{name}: {e}")))?;
        }
        Ok(())
    }

    fn show_state(&self, step: &Step, when: &str) {
        if step.show.is_empty() || self.json {
            return;
        }
        self.say(&format!("State {when}:"));
        for c in step.show {
            let out = self.shell(c);
            self.say(&format!(
                "  $ {c}\n{}",
                indent(&String::from_utf8_lossy(&out.stdout), "    ")
            ));
        }
    }

    fn run_commands(&self, step: &Step) -> Result<()> {
        for c in step.commands {
            self.interrupted()?;
            let out = self.shell(c);
            if self.json {
                self.event(
                    serde_json::json!({"event": "command", "step": step.id, "run": c, "status": out.status.code()}),
                );
                continue;
            }
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            println!("  $ {c}");
            if !text.trim().is_empty() {
                println!("{}", indent(text.trim_end(), "    "));
            }
            if !out.status.success() {
                println!("    (exit status {})", out.status.code().unwrap_or(-1));
            }
        }
        Ok(())
    }

    /// A shell in the sandbox for the learner to type the step's commands.
    fn learner_shell(&self, step: &Step) -> Result<()> {
        println!("\nA shell in the tour's sandbox ({WORK}). {}\nType `exit` (or Ctrl-D) when done: the tour then checks the effect.", step.task);
        let status = Command::new("bash")
            .args(["--norc", "-i"])
            .current_dir(WORK)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("PS1", format!("(tour {}) \\w# ", step.id))
            .status()
            .map_err(|e| Failure::new(format!("cannot start bash: {e}")))?;
        let _ = status;
        // Ctrl-C typed in that shell is the shell's.
        INTERRUPTED.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Runs a check: one that should pass is tried for up to 20 s (a server may be starting, a
    /// new replica not yet ready; a loaded machine is slow);
    /// one that should be blocked once (its probe has its own timeout).
    fn probe(&self, check: &Check) -> bool {
        self.probe_for(check, Duration::from_secs(20))
    }

    /// The same, trying a check that should pass for up to `patience`.
    fn probe_for(&self, check: &Check, patience: Duration) -> bool {
        let deadline = Instant::now() + patience;
        loop {
            let passed = self.shell(check.run).status.success();
            match check.expect {
                Expect::Blocked => return !passed,
                Expect::Passes if passed => return true,
                Expect::Passes => {}
            }
            if Instant::now() > deadline || INTERRUPTED.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn shell(&self, script: &str) -> std::process::Output {
        Command::new("bash")
            .args(["-c", script])
            .current_dir(WORK)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| std::process::Output {
                status: std::os::unix::process::ExitStatusExt::from_raw(127 << 8),
                stdout: Vec::new(),
                stderr: format!("cannot run bash: {e}").into_bytes(),
            })
    }

    fn interrupted(&self) -> Result<()> {
        if INTERRUPTED.load(Ordering::SeqCst) {
            self.event(serde_json::json!({"event": "interrupted"}));
            self.say("\nInterrupted.");
            return Err(Failure::silent(130));
        }
        Ok(())
    }

    fn ask(&self, prompt: &str) -> Result<Answer> {
        print!("{prompt}");
        let _ = std::io::stdout().flush();
        let line = read_line()?;
        Ok(match line.trim() {
            "t" | "type" => Answer::Type,
            "s" | "skip" => Answer::Skip,
            "q" | "quit" => Answer::Quit,
            _ => Answer::Run,
        })
    }
}

enum Answer {
    Run,
    Type,
    Skip,
    Quit,
}

/// Makes the tour its own process group, in the terminal's foreground. The group it was
/// started in is led by a process outside the PID namespace, which has no number in here: a
/// job-control shell (the learner's) could not hand the terminal back to it when it exits.
fn take_the_terminal() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    use nix::unistd::{getpid, setpgid, tcsetpgrp, Pid};
    let _ = setpgid(Pid::from_raw(0), Pid::from_raw(0));
    // SAFETY: SIG_IGN installs no handler code; a background group's tcsetpgrp would stop on
    // SIGTTOU without it.
    let _ = unsafe { signal(Signal::SIGTTOU, SigHandler::SigIgn) };
    let _ = tcsetpgrp(std::io::stdin(), getpid());
}

/// One line from the terminal. Ctrl-C must end the wait even when it comes between the
/// prompt and the read (the signal is then already handled, and a blocking read(2) would never
/// see EINTR): so the terminal is polled in short slices, checking the flag between them.
fn read_line() -> Result<String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let stdin = std::io::stdin();
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            println!();
            return Err(Failure::silent(130));
        }
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(200u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(Failure::new(format!("waiting for the terminal: {e}"))),
        }
        match nix::unistd::read(0, &mut byte) {
            // End of input (Ctrl-D): as `q`.
            Ok(0) => return Ok("q".to_string()),
            Ok(_) if byte[0] == b'\n' => return Ok(String::from_utf8_lossy(&line).into_owned()),
            Ok(_) => line.push(byte[0]),
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(Failure::new(format!("reading the terminal: {e}"))),
        }
    }
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines()
        .map(|l| format!("{prefix}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split_whitespace() {
        if line > 0 && line + 1 + word.len() > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += word.chars().count();
    }
    out
}

/// The outside's web server: tells each client the address it came from (NAT at work).
const OUTSIDE_SERVER: &str = r#"import http.server
class Outside(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from the outside, you are {self.client_address[0]}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("203.0.113.2", 8000), Outside).serve_forever()
"#;

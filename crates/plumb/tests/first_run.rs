//! A new user's first ten minutes: output piped into `head` ends quietly, the help text
//! describes every argument, the README's walk-through is true of the real CLI (its dry-run
//! sample, the addresses it names, each command it shows), and a second `plumb demo` says
//! the demo was already up.

mod common;

use std::process::{Command, Output};

use common::*;

const README: &str = include_str!("../../../README.md");
const COMMANDS_DOC: &str = include_str!("../../../docs/commands.md");

/// Runs `plumb ARGS` in the sandbox with stdout on a pipe whose reader has already gone, so
/// every write to it fails (EPIPE, or SIGPIPE where that is not ignored).
fn into_closed_pipe(sb: &Sandbox, args: &str) -> Output {
    sb.sh(&format!(
        "exec 3> >(true); wait $!; {PLUMB} {args} >&3; status=$?; exit $status"
    ))
}

/// A command whose reader has gone ends at once (killed by SIGPIPE: 141 in the shell) or
/// finishes its work (0); it never panics.
fn assert_quiet_end(out: &Output, what: &str, allowed: &[i32]) {
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(!err.contains("Broken pipe"), "{what}: {err}");
    let code = out.status.code().unwrap_or(-1);
    assert!(allowed.contains(&code), "{what}: exit {code}\n{err}");
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn commands_that_report_end_quietly_when_the_reader_goes() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("plumb.toml", readme_stack());
    let reporting = ["--help", "ps", "ps --json", "up --dry-run", "up --dry-run --json"];
    for args in reporting {
        assert_quiet_end(&into_closed_pipe(&sb, args), args, &[0, 141]);
    }
    sb.plumb_ok(&["up"]);
    for args in [
        "ps",
        "ps --json",
        "inspect front",
        "inspect web-1 --json",
        "down --dry-run",
    ] {
        assert_quiet_end(&into_closed_pipe(&sb, args), args, &[0, 141]);
    }
    // The shell's own pipes, as a user types them.
    for line in [
        "plumb ps | head -0",
        "plumb --help | head -1",
        "plumb up --dry-run | head -1",
    ] {
        let out = sb.sh(&format!("PATH={}:$PATH; {line}", bin_dir(&sb)));
        assert_quiet_end(&out, line, &[0]);
    }
    sb.plumb_ok(&["down"]);
    sb.assert_clean();
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn a_second_demo_says_it_was_already_up() {
    let Some(sb) = Sandbox::start() else { return };
    // As the issue had it: `head` leaves after two lines, while the demo still has to print.
    let first = sb.sh(&format!(
        "PATH={}:$PATH; plumb demo | head -2; exit ${{PIPESTATUS[0]}}",
        bin_dir(&sb)
    ));
    assert_quiet_end(&first, "plumb demo | head -2", &[0]);
    let pids: Vec<_> = sb.ps().iter().map(|r| r["process"]["pid"].clone()).collect();

    let second = sb.plumb_ok(&["demo"]);
    assert!(second.contains("already up"), "{second}");
    assert!(
        !second.contains("started"),
        "claims to have started something:\n{second}"
    );
    let after: Vec<_> = sb.ps().iter().map(|r| r["process"]["pid"].clone()).collect();
    assert_eq!(pids, after, "a second demo must leave the running processes alone");

    // With nothing to start, the demo only prints what it can drop: a closed pipe is no panic.
    assert_quiet_end(&into_closed_pipe(&sb, "demo"), "plumb demo into a closed pipe", &[0]);

    // The hints it prints work.
    for hint in ["ps", "inspect shop", "down shop --dry-run", "exec web -- ip addr"] {
        assert!(
            second.contains(&format!("plumb {hint}")),
            "hint {hint} missing:\n{second}"
        );
        sb.plumb_ok(&shell_words(hint));
    }
    assert!(
        http(&sb, "http://127.0.0.1:8080/api/products").contains("served_by"),
        "the page the demo points to"
    );
    sb.plumb_ok(&["demo", "--down"]);
    sb.assert_clean();
}

#[test]
fn help_describes_every_argument_and_hides_supervise() {
    let top = help(&[]);
    assert!(!top.contains("supervise"), "the hidden command is listed:\n{top}");
    let commands = subcommands(&top);
    assert!(commands.len() >= 10, "{top}");
    // Every argument and flag of a (sub)command's help has a description.
    let described = |args: &[&str], text: &str| {
        let mut section = "";
        for line in text.lines() {
            if line.ends_with(':') && !line.starts_with(' ') {
                section = line;
                continue;
            }
            if !(section == "Arguments:" || section == "Options:") || line.trim().is_empty() {
                continue;
            }
            // "  <NAME>  what it is" or "  -f, --file <FILE>  what it is": the description
            // is what follows the first run of two or more spaces after the name.
            let entry = line.trim_start();
            let description = entry.split_once("  ").map(|(_, d)| d.trim()).unwrap_or("");
            assert!(
                !description.is_empty(),
                "plumb {} --help: {line:?} has no description",
                args.join(" ")
            );
        }
    };
    // `help` is clap's own (`plumb help --help` is not a thing).
    for command in commands.iter().filter(|c| *c != "help") {
        let text = help(&[command]);
        described(&[command], &text);
        // And their subcommands' (chaos partition, cluster init, experiment list, ...).
        for sub in subcommands(&text).iter().filter(|c| *c != "help") {
            described(&[command, sub], &help(&[command, sub]));
        }
        // docs/commands.md has a row for the command, naming each of its flags.
        let row = COMMANDS_DOC
            .lines()
            .find(|l| {
                // The command's name is in the row's first cell (another row's text may
                // mention it).
                let first = l.split('|').nth(1).unwrap_or("");
                l.starts_with('|')
                    && (first.contains(&format!("`plumb {command} "))
                        || first.contains(&format!("`plumb {command}`"))
                        || first.contains(&format!("`{command} ")))
            })
            .unwrap_or_else(|| panic!("docs/commands.md has no row for plumb {command}"));
        for flag in flags(&text) {
            assert!(
                row.contains(&flag),
                "docs/commands.md's row for {command} lacks {flag}: {row}"
            );
        }
    }
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn the_readme_walk_through_is_what_plumb_does() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write("plumb.toml", readme_stack());

    // The dry-run sample: its lines, in its order, are lines of the real script.
    let sample = code_block(|b| b.starts_with("#!/bin/sh\n# Generated by `plumb up --dry-run`"));
    let script = sb.plumb_ok(&["up", "--dry-run"]);
    let mut real = script.lines();
    for line in sample.lines().filter(|l| *l != "...") {
        assert!(
            real.any(|r| r == line),
            "README's dry-run sample line not in the real script (or out of order): {line:?}\n{script}"
        );
    }

    // Each command of the walk-through, as a user types it; those the README says fail, fail.
    let walk = code_block(|b| b.starts_with("plumb up ") && b.contains("plumb down"));
    let path = format!("PATH={}:$PATH", bin_dir(&sb));
    for line in walk.lines() {
        let (command, comment) = line.split_once('#').unwrap_or((line, ""));
        // Nothing leaves the sandbox: "the internet" is its outside namespace.
        let command = command.trim().replace("1.1.1.1", OUTSIDE_IP);
        let out = sb.sh(&format!("{path}; {command}"));
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        if comment.trim_start().starts_with("fails") {
            assert!(
                !out.status.success(),
                "README says {command:?} fails, it did not:\n{stdout}"
            );
        } else {
            assert!(out.status.success(), "README's {command:?} failed:\n{stdout}{stderr}");
        }
        if command == "plumb up" && comment.contains("up to date") {
            assert!(stdout.contains("up to date"), "{stdout}");
        }
        // The container the README pings is the one it names.
        if let Some(target) = command.strip_prefix("plumb exec web -- ping -c1 ") {
            let named = comment.split_whitespace().find(|w| w.starts_with("api-")).unwrap_or("");
            let named = named.trim_matches(|c: char| !c.is_alphanumeric() && c != '-');
            assert_eq!(sb.address(named, "eth0"), target, "README: {line}");
        }
    }
    sb.assert_clean();
}

/// The first TOML block of the README: the hello stack.
fn readme_stack() -> &'static str {
    // The fence may carry the docs examples' `file=plumb.toml` after the language.
    let fence = README.find("```toml").expect("README has a TOML block");
    let start = fence + README[fence..].find('\n').unwrap() + 1;
    let len = README[start..].find("```").unwrap();
    &README[start..start + len]
}

/// The README's code block whose text satisfies `pick`.
fn code_block(pick: impl Fn(&str) -> bool) -> String {
    README
        .split("```")
        .skip(1)
        .step_by(2)
        .map(|b| b.split_once('\n').map_or("", |(_, body)| body))
        .find(|b| pick(b))
        .expect("README block")
        .to_string()
}

/// A folder holding `plumb` (the binary under test), for commands typed as a user types them.
fn bin_dir(sb: &Sandbox) -> String {
    let dir = sb.dir.join("bin");
    if !dir.join("plumb").exists() {
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(PLUMB, dir.join("plumb")).unwrap();
    }
    path_str(&dir).to_string()
}

fn help(args: &[&str]) -> String {
    let out = Command::new(PLUMB).args(args).arg("--help").output().unwrap();
    assert!(out.status.success());
    text(&out.stdout)
}

/// The subcommands `plumb --help` lists.
fn subcommands(top: &str) -> Vec<String> {
    top.lines()
        .skip_while(|l| *l != "Commands:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The flags of a subcommand's help that are its own (short form if it has one).
fn flags(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| *l != "Options:")
        .skip(1)
        .filter_map(|l| {
            let entry = l.trim_start();
            let names = entry.split("  ").next()?;
            let first = names.split([',', ' ']).next()?;
            (first.starts_with('-') && !["-h", "--state-dir"].contains(&first)).then(|| first.to_string())
        })
        .collect()
}

fn shell_words(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

fn http(sb: &Sandbox, url: &str) -> String {
    sb.ok(&format!("curl -sf -m 5 {url}"))
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn commands_that_change_things_finish_when_the_reader_goes() {
    let Some(sb) = Sandbox::start() else { return };
    sb.write(
        "plumb.toml",
        "name = \"s\"\n[networks.n]\nsubnet = \"10.89.7.0/24\"\n[services.a]\nnetworks = [\"n\"]\ncommand = [\"/bin/sleep\", \"1000\"]\nreplicas = 2\n",
    );
    assert_quiet_end(&into_closed_pipe(&sb, "up"), "up", &[0]);
    let rows = sb.ps();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r["process"]["pid"].is_u64()), "{rows:?}");
    let again = sb.plumb_ok(&["up"]);
    assert!(again.contains("0 processes started, 2 left running"), "{again}");
    assert_quiet_end(&into_closed_pipe(&sb, "restart a"), "restart", &[0]);
    assert_quiet_end(&into_closed_pipe(&sb, "down"), "down", &[0]);
    sb.assert_clean();
}

/// Two stacks with the same service names: the folder's plumb.toml picks one (as in Compose),
/// STACK/NAME picks one anywhere (chaos too), and an unknown or ambiguous name is an input
/// error (exit 2) for every command.
#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn the_folders_stack_wins_and_unknown_names_exit_2_everywhere() {
    let Some(sb) = Sandbox::start() else { return };
    for (name, subnet) in [("sa", "10.89.8.0/24"), ("sb", "10.89.9.0/24")] {
        sb.write(
            &format!("{name}/plumb.toml"),
            &format!(
                "name = \"{name}\"\n[networks.n]\nsubnet = \"{subnet}\"\n[services.web]\ncommand = [\"/bin/sleep\", \"1000\"]\n\
                 [[experiments]]\nname = \"web-dies\"\ndescription = \"web restarts\"\n\
                 [[experiments.checks]]\nservice = \"web\"\n[[experiments.faults]]\nkill = \"web\"\n"
            ),
        );
        sb.plumb_ok(&["up", "-f", &format!("{name}/plumb.toml")]);
    }
    let in_folder = |folder: &str, args: &str| sb.sh(&format!("cd {folder} && {PLUMB} {args}"));
    // Outside both folders: ambiguous, exit 2, saying how to choose.
    for args in [
        "exec web -- true",
        "logs web",
        "inspect web-1",
        "restart web",
        "chaos web --delay 10ms --dry-run",
    ] {
        let out = in_folder(".", args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args}: {err}");
        assert!(
            err.contains("several stacks") && err.contains("STACK/"),
            "{args}: {err}"
        );
    }
    // In a stack's folder, that stack.
    for stack in ["sa", "sb"] {
        let out = in_folder(stack, "inspect web-1 --json");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains(&format!("\"stack\": \"{stack}\"")),
            "{}",
            text(&out.stdout)
        );
        let out = in_folder(stack, "exec web -- cat /proc/sys/kernel/hostname");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = in_folder(stack, "chaos web --delay 10ms --dry-run");
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    // STACK/NAME anywhere, chaos included (it did not take it).
    let dry = in_folder(".", "chaos sb/web --delay 10ms --dry-run");
    assert!(dry.status.success(), "{}", text(&dry.stderr));
    let partition = in_folder(".", "chaos partition sa/web sb/web --dry-run");
    assert_eq!(partition.status.code(), Some(2), "two stacks in one fault: refused");
    // Unknown names: exit 2 for every command that takes one.
    for args in [
        "exec nosuch -- true",
        "logs nosuch",
        "inspect nosuch",
        "restart nosuch",
        "policy why nosuch web-1:80 -s sa",
        "top nosuch --once",
        "capture nosuch -c 1",
        "conns nosuch",
        "chaos nosuch --delay 10ms",
        "chaos kill nosuch",
        "down nosuch",
    ] {
        let out = in_folder(".", args);
        assert_eq!(out.status.code(), Some(2), "{args}: {}", text(&out.stderr));
    }
    // experiment list: what `run` takes from the folder's file.
    let list = in_folder("sa", "experiment list");
    assert!(text(&list.stdout).contains("web-dies") && text(&list.stdout).contains("web restarts"));
    let json: serde_json::Value = serde_json::from_slice(&in_folder("sa", "experiment list --json").stdout).unwrap();
    assert_eq!(json[0]["name"], "web-dies", "{json}");
    // top into a pipe: plain tables, no screen escapes.
    let piped = in_folder(".", "top | head -4");
    assert!(!piped.stdout.contains(&0x1b), "{:?}", text(&piped.stdout));
    assert!(text(&piped.stdout).contains("web-1"), "{}", text(&piped.stdout));
    for stack in ["sa", "sb"] {
        sb.plumb_ok(&["down", stack]);
    }
    sb.assert_clean();
}

//! `plumb docs` (hidden): the parts of the documentation generated from the program itself, so
//! they cannot drift from it: the command reference (from the clap definitions: every command,
//! argument, default and help text) and the course chapter (from the tour's steps).
//! tests/docs.rs fails when docs/commands.md or docs/course.md differ from what this prints;
//! `scripts/docs-generate` writes them again.

use std::fmt::Write as _;

/// The first line of docs/commands.md's generated part: everything from it to the end of the
/// file is `plumb docs commands`'s output.
pub const COMMANDS_MARKER: &str =
    "<!-- Generated from plumb's command line by `plumb docs commands` (scripts/docs-generate); do not edit below. -->";

/// The command reference as Markdown: one section per command (subcommands nested), with its
/// description, usage line and a table of its arguments.
pub fn commands(root: &clap::Command) -> String {
    let mut root = root.clone().bin_name("plumb");
    root.build();
    let globals: Vec<String> = root
        .get_arguments()
        .filter(|a| a.is_global_set())
        .map(|a| format!("`{}` ({})", spelling(a), sentence(&help(a))))
        .collect();
    let mut out = format!(
        "{COMMANDS_MARKER}\n\n## Reference\n\nEvery command and argument, as `plumb COMMAND --help` prints them. \
         Every command also takes {}\n",
        globals.join(", ")
    );
    for sub in visible(&root) {
        command(&mut out, sub, "plumb", 3);
    }
    out
}

fn command(out: &mut String, cmd: &clap::Command, parent: &str, level: usize) {
    let name = format!("{parent} {}", cmd.get_name());
    let about = cmd
        .get_long_about()
        .or(cmd.get_about())
        .map(|s| s.to_string())
        .unwrap_or_default();
    let _ = writeln!(out, "\n{} `{name}`\n\n{}\n", "#".repeat(level.min(6)), sentence(&about));
    let mut usage = cmd.clone().bin_name(&name);
    let usage = usage.render_usage().to_string();
    let usage = usage.trim_start_matches("Usage: ").trim();
    let _ = writeln!(out, "```text\n{usage}\n```\n");
    let args: Vec<&clap::Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set() && !a.is_global_set() && a.get_id() != "help" && a.get_id() != "version")
        .collect();
    if !args.is_empty() {
        out.push_str("| argument | meaning | default |\n|---|---|---|\n");
        for arg in args {
            let mut meaning = sentence(&help(arg));
            let values: Vec<String> = arg
                .get_possible_values()
                .iter()
                .filter(|v| !v.is_hide_set())
                .map(|v| format!("`{}`", v.get_name()))
                .collect();
            if !values.is_empty() && arg.get_action().takes_values() {
                let _ = write!(meaning, " One of {}.", values.join(", "));
            }
            if let Some(env) = arg.get_env() {
                let _ = write!(meaning, " Env `{}`.", env.to_string_lossy());
            }
            let flag = matches!(arg.get_action(), clap::ArgAction::SetTrue | clap::ArgAction::SetFalse);
            let default: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let default = if default.is_empty() || flag {
                String::new()
            } else {
                format!("`{}`", default.join(","))
            };
            let _ = writeln!(
                out,
                "| `{}` | {} | {} |",
                spelling(arg),
                meaning.replace('|', "\\|"),
                default
            );
        }
    }
    for sub in visible(cmd) {
        command(out, sub, &name, level + 1);
    }
}

/// Subcommands a user sees (not clap's own `help`, which repeats them all).
fn visible(cmd: &clap::Command) -> impl Iterator<Item = &clap::Command> {
    cmd.get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
}

/// How an argument is written: `-f, --file <FILE>`, `<TARGET>`, `--json`.
fn spelling(arg: &clap::Arg) -> String {
    let value = || {
        let names: Vec<String> = arg
            .get_value_names()
            .map(|v| v.iter().map(|n| format!("<{n}>")).collect())
            .unwrap_or_else(|| vec![format!("<{}>", arg.get_id().as_str().to_uppercase())]);
        names.join(" ")
    };
    if arg.is_positional() {
        let dots = if matches!(arg.get_action(), clap::ArgAction::Append) {
            "..."
        } else {
            ""
        };
        return format!("{}{dots}", value());
    }
    let mut s = String::new();
    if let Some(short) = arg.get_short() {
        let _ = write!(s, "-{short}");
    }
    if let Some(long) = arg.get_long() {
        if !s.is_empty() {
            s.push_str(", ");
        }
        let _ = write!(s, "--{long}");
    }
    if arg.get_action().takes_values() {
        let _ = write!(s, " {}", value());
    }
    s
}

fn help(arg: &clap::Arg) -> String {
    arg.get_long_help()
        .or(arg.get_help())
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// Help text as a sentence on one line (a table cell): lines joined by spaces, and the full
/// stop clap takes off a one-line help put back.
fn sentence(text: &str) -> String {
    let mut s = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if !s.is_empty() && !s.ends_with(['.', '!', '?', ')', ':']) {
        s.push('.');
    }
    s
}

/// docs/course.md: the course chapter, from the tour's steps.
pub fn course() -> String {
    format!(
        "<!-- Generated from the tour's steps (plumb_core::tour) by `plumb docs course` (scripts/docs-generate); do not edit. -->\n\n\
         # The course: container networking from scratch\n\n\
         The seed's seven assignments, and the bonuses plumb has, as a course you run: \
         `plumb tour` walks through every step below on real kernel objects in a throwaway \
         sandbox of its own (its own network, mount and PID namespaces: nothing on the machine \
         is touched, and everything goes when the tour ends, Ctrl-C included). Each step \
         explains, draws, runs the exact commands (or lets you type them: the tour then checks \
         the effect with real traffic, never what you typed), shows the state before and after, \
         and checks the result with a real probe: a ping, a connection, a DNS query, and the \
         forbidden ones must fail.\n\n\
         ```sh\n\
         sudo plumb tour              # interactive: Enter runs a step, t lets you type it\n\
         sudo plumb tour 4            # start at assignment 4 (what 1-3 make is set up first)\n\
         sudo plumb tour --auto       # straight through, for a talk or CI (--json for programs)\n\
         plumb tour --list            # the steps\n\
         plumb tour --slides slides   # the course as slides: slides/tour.md, slides/tour.html\n\
         ```\n\n\
         The manual assignments (1-3, 6) use `ip`, `bridge` and `nft` literally; the later ones \
         show the manual way, then the plumb way: `plumb up` on a small stack file the tour \
         writes. What the tour needs is what `plumb demo` does (scripts/demo installs it): \
         iproute2, nftables, util-linux, iputils-ping, curl, python3, redis-server and \
         redis-tools; and root.\n\n{}",
        plumb_core::tour::markdown(2)
    )
}

//! `plumb demo`: the reference shop app (services, supervised), from files built into the
//! binary: nginx serving a page and proxying /api/ to a Flask API gateway, which spreads
//! requests over three product replicas backed by Redis. `--segmented` runs the same app
//! split into tiers on three networks (examples/shop-segmented).

use std::path::{Path, PathBuf};

use super::{down, up, Context};
use crate::failure::{Failure, Result};
use crate::output::{count, say};
use crate::processes;
use crate::runfile;

/// The programs both variants run (examples/shop-segmented links to these same files).
const PROGRAMS: [(&str, &str); 4] = [
    ("nginx.conf", include_str!("../../../../examples/shop/nginx.conf")),
    (
        "html/index.html",
        include_str!("../../../../examples/shop/html/index.html"),
    ),
    ("gateway.py", include_str!("../../../../examples/shop/gateway.py")),
    ("product.py", include_str!("../../../../examples/shop/product.py")),
];

/// One way to run the shop: its stack name (also its folder under STATE_DIR/demo) and the
/// files that differ between variants.
struct Variant {
    stack: &'static str,
    stack_file: &'static str,
    readme: &'static str,
    summary: &'static str,
    /// The `plumb inspect` hint: a network of the stack.
    network: &'static str,
    /// The `--segmented` flag, to repeat in hints.
    flag: &'static str,
}

const FLAT: Variant = Variant {
    stack: "shop",
    stack_file: include_str!("../../../../examples/shop/plumb.toml"),
    readme: include_str!("../../../../examples/shop/README.md"),
    summary: "nginx (web) -> API gateway -> 3 product replicas -> Redis.",
    network: "shop",
    flag: "",
};

const SEGMENTED: Variant = Variant {
    stack: "shop-seg",
    stack_file: include_str!("../../../../examples/shop-segmented/plumb.toml"),
    readme: include_str!("../../../../examples/shop-segmented/README.md"),
    summary: "web on frontend, gateway on frontend + backend,\n\
              3 product replicas on backend + database, Redis on database (internal) only.",
    network: "backend",
    flag: " --segmented",
};

impl Variant {
    fn files(&self) -> impl Iterator<Item = (&'static str, &'static str)> {
        [("plumb.toml", self.stack_file), ("README.md", self.readme)]
            .into_iter()
            .chain(PROGRAMS)
    }

    fn dir(&self, ctx: &Context) -> PathBuf {
        ctx.state.root.join("demo").join(self.stack)
    }

    fn other(&self) -> &'static Variant {
        if self.stack == FLAT.stack {
            &SEGMENTED
        } else {
            &FLAT
        }
    }
}

/// What `demo` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Up,
    /// `--down`: remove the demo and its files, whichever variant is up.
    Down,
}

pub fn run(ctx: &Context, action: Action, segmented: bool) -> Result<()> {
    if action == Action::Down {
        return remove(ctx);
    }
    up::say_how_to_recover_if_interrupted();
    let demo = if segmented { &SEGMENTED } else { &FLAT };
    // Both variants publish port 8080: one at a time.
    let other = demo.other();
    if ctx.state.load(other.stack)?.is_some() {
        return Err(Failure::new(format!(
            "the other shop demo (stack {}) is up: both publish port 8080",
            other.stack
        ))
        .hint("`plumb demo --down` removes it; then run this again"));
    }
    let dir = demo.dir(ctx);
    let file: PathBuf = dir.join("plumb.toml");
    let stack_dir = ctx.state.stack_dir(demo.stack);
    if is_up(ctx, demo, &dir)? {
        // Nothing to start: say so rather than claim to have started what was running.
        let run = runfile::read_run(&stack_dir);
        let status = processes::wait_until_ready(&stack_dir, &run, processes::HealthWait::Everything)?;
        let running = status.replicas.values().filter(|r| r.pid.is_some()).count();
        say!(
            "The shop demo (stack {}) was already up; nothing was changed ({} running, supervisor pid {}).",
            demo.stack,
            count(running, "process"),
            status.supervisor_pid
        );
        if !run.stopped.is_empty() {
            let stopped: Vec<&str> = run.stopped.iter().map(String::as_str).collect();
            say!(
                "Stopped with `plumb stop`: {} (`plumb start SVC` starts one again).",
                stopped.join(", ")
            );
        }
        say!(
            "`plumb up -f {}` re-applies it if something was changed by hand.",
            file.display()
        );
    } else {
        write_files(demo, &dir)?;
        up::run(ctx, &file, up::Mode::Apply(up::Supervision::Background), None)?;
        processes::wait_until_ready(
            &stack_dir,
            &runfile::read_run(&stack_dir),
            processes::HealthWait::Everything,
        )?;
        say!("\nThe shop (stack {}) is up and healthy: {}", demo.stack, demo.summary);
    }
    // The descriptions line up in one column, whatever the stack's name.
    let inspect = format!("plumb inspect {}", demo.network);
    let dry_run = format!("plumb down {} --dry-run", demo.stack);
    say!(
        "  files:     {}
  page:      curl http://127.0.0.1:8080/
  the API:   curl http://127.0.0.1:8080/api/products     (see \"served_by\" change)
             curl http://127.0.0.1:8080/api/products/1   (counts a view in Redis)
Try next:
  plumb ps                        containers, addresses, processes, health
  plumb logs product -f           the three replicas' output, prefixed
  plumb exec web -- ip addr       look inside a container
  {inspect:<31} the network: bridge, subnet, members
  {dry_run:<31} what removing it takes, as ip/nft commands
  plumb demo --down               remove it all",
        dir.display(),
    );
    if demo.stack == FLAT.stack {
        say!(
            "Faults on purpose:
  plumb chaos product --delay 100ms --for 30s   every product replica answers 100 ms late
  plumb experiment run product-dies -f {}
                                  kill a product replica: does the catalogue keep answering?",
            file.display()
        );
    }
    if !demo.flag.is_empty() {
        say!("  (`plumb demo` without{} runs the same app on one network)", demo.flag);
    }
    if let Some(note) = path_note() {
        say!("{note}");
    }
    Ok(())
}

/// `--down`: removes whichever variant has a record or files (both, if both do); with
/// neither, the flat one, so the usual "not up" message is said.
fn remove(ctx: &Context) -> Result<()> {
    let present: Vec<&Variant> = [&FLAT, &SEGMENTED]
        .into_iter()
        .filter(|v| matches!(ctx.state.load(v.stack), Ok(Some(_)) | Err(_)) || v.dir(ctx).exists())
        .collect();
    let present = if present.is_empty() { vec![&FLAT] } else { present };
    for demo in present {
        down::run(ctx, demo.stack, down::Mode::Apply)?;
        match std::fs::remove_dir_all(demo.dir(ctx)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
    }
    Ok(())
}

/// True if this demo is up already: its stack was brought up from these very files and its
/// supervisor runs.
fn is_up(ctx: &Context, demo: &Variant, dir: &Path) -> Result<bool> {
    let Some(state) = ctx.state.load(demo.stack)? else {
        return Ok(false);
    };
    let same_files = demo
        .files()
        .all(|(name, content)| std::fs::read_to_string(dir.join(name)).is_ok_and(|c| c == content));
    Ok(state.file.as_deref() == Some(dir.join("plumb.toml").as_path())
        && state.desired.is_some()
        && same_files
        && runfile::live_supervisor(&ctx.state.stack_dir(demo.stack)).is_some())
}

fn write_files(demo: &Variant, dir: &Path) -> Result<()> {
    for (name, content) in demo.files() {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, content)?;
    }
    std::fs::create_dir_all(dir.join("run"))?;
    Ok(())
}

/// The hints say `plumb`: if that is not this program, say how to make it so.
fn path_note() -> Option<String> {
    let this = std::env::current_exe().ok()?.canonicalize().ok()?;
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("plumb"))
            .find(|p| p.is_file())
    });
    match on_path {
        Some(p) if p.canonicalize().ok().as_ref() == Some(&this) => None,
        Some(p) => Some(format!(
            "(`plumb` on your PATH is {}, not this one: {})",
            p.display(),
            this.display()
        )),
        None => Some(format!(
            "(`plumb` is not on your PATH: `install -m 0755 {} /usr/local/bin/plumb` puts it there)",
            this.display()
        )),
    }
}

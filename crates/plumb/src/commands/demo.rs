//! `plumb demo`: the reference shop app (services, supervised), from files built into the
//! binary: nginx serving a page and proxying /api/ to a Flask API gateway, which spreads
//! requests over three product replicas backed by Redis.

use std::path::{Path, PathBuf};

use super::{down, up, Context};
use crate::failure::Result;
use crate::output::{count, say};
use crate::processes;
use crate::runfile;

const FILES: &[(&str, &str)] = &[
    ("plumb.toml", include_str!("../../../../examples/shop/plumb.toml")),
    ("nginx.conf", include_str!("../../../../examples/shop/nginx.conf")),
    (
        "html/index.html",
        include_str!("../../../../examples/shop/html/index.html"),
    ),
    ("gateway.py", include_str!("../../../../examples/shop/gateway.py")),
    ("product.py", include_str!("../../../../examples/shop/product.py")),
    ("README.md", include_str!("../../../../examples/shop/README.md")),
];

/// What `demo` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Up,
    /// `--down`: remove the demo and its files.
    Down,
}

pub fn run(ctx: &Context, action: Action) -> Result<()> {
    let dir = ctx.state.root.join("demo").join("shop");
    if action == Action::Down {
        down::run(ctx, "shop", down::Mode::Apply)?;
        return match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        };
    }
    let file: PathBuf = dir.join("plumb.toml");
    let stack_dir = ctx.state.stack_dir("shop");
    if is_up(ctx, &dir)? {
        // Nothing to start: say so rather than claim to have started what was running.
        let run = runfile::read_run(&stack_dir);
        let status = processes::wait_until_ready(&stack_dir, &run, processes::HealthWait::Everything)?;
        let running = status.replicas.values().filter(|r| r.pid.is_some()).count();
        say!(
            "The shop demo was already up; nothing was changed ({} running, supervisor pid {}).",
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
        write_files(&dir)?;
        up::run(ctx, &file, up::Mode::Apply(up::Supervision::Background))?;
        processes::wait_until_ready(
            &stack_dir,
            &runfile::read_run(&stack_dir),
            processes::HealthWait::Everything,
        )?;
        say!("\nThe shop is up and healthy: nginx (web) -> API gateway -> 3 product replicas -> Redis.");
    }
    say!(
        "  files:     {}
  page:      curl http://127.0.0.1:8080/
  the API:   curl http://127.0.0.1:8080/api/products     (see \"served_by\" change)
             curl http://127.0.0.1:8080/api/products/1   (counts a view in Redis)
Try next:
  plumb ps                        containers, addresses, processes, health
  plumb logs product -f           the three replicas' output, prefixed
  plumb exec web -- ip addr       look inside a container
  plumb inspect shop              the network: bridge, subnet, members
  plumb down shop --dry-run       what removing it takes, as ip/nft commands
  plumb demo --down               remove it all",
        dir.display()
    );
    if let Some(note) = path_note() {
        say!("{note}");
    }
    Ok(())
}

/// True if this demo is up already: its stack was brought up from these very files and its
/// supervisor runs.
fn is_up(ctx: &Context, dir: &Path) -> Result<bool> {
    let Some(state) = ctx.state.load("shop")? else {
        return Ok(false);
    };
    let same_files = FILES
        .iter()
        .all(|(name, content)| std::fs::read_to_string(dir.join(name)).is_ok_and(|c| c == *content));
    Ok(state.file.as_deref() == Some(dir.join("plumb.toml").as_path())
        && state.desired.is_some()
        && same_files
        && runfile::live_supervisor(&ctx.state.stack_dir("shop")).is_some())
}

fn write_files(dir: &Path) -> Result<()> {
    for (name, content) in FILES {
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

//! `plumb demo`: the reference shop app (the seed's assignment 2), from files built into the
//! binary: nginx serving a page and proxying /api/ to a Flask API gateway, which spreads
//! requests over three product replicas backed by Redis.

use std::path::PathBuf;

use super::{down, up, Context};
use crate::failure::Result;
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
    for (name, content) in FILES {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, content)?;
    }
    std::fs::create_dir_all(dir.join("run"))?;
    let file: PathBuf = dir.join("plumb.toml");
    up::run(ctx, &file, up::Mode::Apply(up::Supervision::Background))?;
    let stack_dir = ctx.state.stack_dir("shop");
    processes::wait_until_ready(
        &stack_dir,
        &runfile::read_run(&stack_dir),
        processes::HealthWait::Everything,
    )?;
    println!(
        "
The shop is up and healthy: nginx (web) -> API gateway -> 3 product replicas -> Redis.
  files:     {}
  page:      curl http://127.0.0.1:8080/
  the API:   curl http://127.0.0.1:8080/api/products     (see \"served_by\" change)
             curl http://127.0.0.1:8080/api/products/1   (counts a view in Redis)
Try next:
  plumb ps                        containers, addresses, processes, health
  plumb logs product -f           the three replicas' output, prefixed
  plumb exec web -- ip addr       look inside a container
  plumb up -f {} --dry-run        the network as ip/nft commands
  plumb demo --down               remove it all",
        dir.display(),
        file.display()
    );
    Ok(())
}

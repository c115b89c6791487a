//! One module per subcommand.

pub mod attach;
pub mod autoscale;
pub mod bench;
pub mod capture;
pub mod chaos;
pub mod cluster;
pub mod cni;
pub mod conns;
pub mod control;
pub mod convert;
pub mod demo;
pub mod docs;
pub mod down;
pub mod events;
pub mod exec;
pub mod experiment;
pub mod graph;
pub mod inspect;
pub mod logs;
pub mod policy;
pub mod ps;
pub mod services;
pub mod top;
pub mod tour;
pub mod trace;
pub mod traces;
pub mod ui;
pub mod up;

use crate::failure::{Failure, Result};
use crate::state::StateDir;

/// How a command prints what it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// For people: tables; a plan as a runnable shell script of `ip`, `sysctl` and `nft` commands.
    Human,
    /// For programs (`--json`); a plan as its steps and their operations.
    Json,
}

impl Format {
    /// From a command line's `--json` flag.
    pub fn from_json_flag(json: bool) -> Format {
        if json {
            Format::Json
        } else {
            Format::Human
        }
    }
}

/// What every command gets: where plumb keeps its state.
pub struct Context {
    pub state: StateDir,
}

/// A stack name given on the command line becomes paths under the state directory and kernel
/// names: nothing but a stack name gets that far (`../x` is refused).
pub fn require_stack_name(stack: &str) -> Result<()> {
    if plumb_core::spec::is_stack_name(stack) {
        return Ok(());
    }
    Err(Failure::new(format!("{stack:?} is not a stack name"))
        .hint("stack names are lowercase letters, digits and '-' (up to 12); `plumb ps` lists the stacks that are up")
        .code(2))
}

pub fn require_root(command: &str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "`{command}` needs root: it changes network namespaces, links and nft rules"
        ))
        .hint(format!("run `sudo plumb {command} ...`")))
    }
}

pub fn require_nft() -> Result<()> {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("nft").is_file()));
    if on_path {
        Ok(())
    } else {
        Err(
            Failure::new("the `nft` program is not installed; plumb applies its firewall rules with it")
                .hint("install it: apt-get install nftables"),
        )
    }
}

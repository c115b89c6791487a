//! One module per subcommand.

pub mod control;
pub mod demo;
pub mod down;
pub mod exec;
pub mod inspect;
pub mod logs;
pub mod ps;
pub mod up;

use crate::failure::{Failure, Result};
use crate::state::StateDir;

/// How a plan is printed by `--dry-run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanFormat {
    /// A runnable shell script of `ip`, `sysctl` and `nft` commands.
    Script,
    /// The steps and their operations, for programs.
    Json,
}

impl PlanFormat {
    pub fn from_json_flag(json: bool) -> PlanFormat {
        if json {
            PlanFormat::Json
        } else {
            PlanFormat::Script
        }
    }
}

/// What every command gets: where plumb keeps its state.
pub struct Context {
    pub state: StateDir,
}

pub fn require_root(command: &str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "plumb {command} needs root: it creates network namespaces, links and nft rules"
        ))
        .hint(format!("run `sudo plumb {command} ...`")))
    }
}

pub fn require_nft() -> Result<()> {
    if plumb_linux::nft::available() {
        Ok(())
    } else {
        Err(
            Failure::new("the `nft` program is not installed; plumb applies its firewall rules with it")
                .hint("install it: apt-get install nftables"),
        )
    }
}

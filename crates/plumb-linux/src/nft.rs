//! nftables through the `nft` program: plumb's rules are nft text, applied in one transaction
//! with `nft -f -`, so the text printed by `--dry-run` is exactly what runs. plumb only ever
//! names its own tables. Calls can run in the background ([`Pending`]) so the few
//! milliseconds an `nft` process takes overlap with netlink work on the other core.

use std::io::{self, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use crate::netlink::{Error, Result};

/// True if an `nft` executable is on PATH.
pub fn available() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| Path::new(&dir).join("nft").is_file()))
}

/// An `nft` run in progress.
pub struct Pending {
    child: Child,
    what: &'static str,
}

impl Pending {
    /// Waits for it; its standard output on success.
    pub fn wait(self) -> Result<String> {
        let out = self.child.wait_with_output().map_err(|e| Error::new(self.what, e))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            Err(Error::new(self.what, io::Error::other(stderr)))
        }
    }
}

fn start(program: &str, args: &[&str], stdin: Option<&str>, what: &'static str) -> Result<Pending> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(what, e))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|e| Error::new(what, e))?;
    }
    Ok(Pending { child, what })
}

/// Starts applying an nft script as one atomic transaction, then listing table `inet TABLE`
/// as the kernel holds it afterwards (the listing is what [`Pending::wait`] returns).
pub fn apply_and_list(script: &str, table: &str) -> Result<Pending> {
    let both = format!("nft -f - && exec nft list table inet {table}");
    start("sh", &["-c", &both], Some(script), "apply nftables rules")
}

/// Starts listing table `inet NAME`; see [`listing`] for the result.
pub fn start_list_table(name: &str) -> Result<Pending> {
    start("nft", &["list", "table", "inet", name], None, "list nftables table")
}

/// The result of [`start_list_table`]: the listing, or `None` if the table does not exist.
pub fn listing(pending: Pending) -> Result<Option<String>> {
    match pending.wait() {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.source.to_string().contains("No such file or directory") => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn delete_table(name: &str) -> Result<()> {
    match start("nft", &["delete", "table", "inet", name], None, "delete nftables table")?.wait() {
        Err(e) if e.source.to_string().contains("No such file or directory") => Ok(()),
        other => other.map(drop),
    }
}

//! nftables through the `nft` program: plumb's rules are nft text, applied in one transaction
//! with `nft -f -`, so the text printed by `--dry-run` is exactly what runs. plumb only ever
//! names its own tables.

use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::netlink::{Error, Result};

/// True if an `nft` executable is on PATH.
pub fn available() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| Path::new(&dir).join("nft").is_file()))
}

fn run(args: &[&str], stdin: Option<&str>, what: &str) -> Result<String> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(what, e))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).map_err(|e| Error::new(what, e))?;
    }
    let out = child.wait_with_output().map_err(|e| Error::new(what, e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(Error::new(what, io::Error::other(stderr)))
    }
}

/// Applies an nft script as one atomic transaction.
pub fn apply(script: &str) -> Result<()> {
    run(&["-f", "-"], Some(script), "apply nftables rules").map(drop)
}

/// The listing of table `inet NAME`, or `None` if it does not exist.
pub fn list_table(name: &str) -> Result<Option<String>> {
    match run(&["list", "table", "inet", name], None, "list nftables table") {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.source.to_string().contains("No such file or directory") => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn delete_table(name: &str) -> Result<()> {
    match run(&["delete", "table", "inet", name], None, "delete nftables table") {
        Err(e) if e.source.to_string().contains("No such file or directory") => Ok(()),
        other => other.map(drop),
    }
}

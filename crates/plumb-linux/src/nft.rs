//! nftables through the `nft` program: plumb's rules are nft text, applied in one transaction
//! with `nft -f -`, so the text printed by `--dry-run` is exactly what runs. plumb only ever
//! names its own tables. A transaction can run on a background thread ([`Pending`]) so the
//! few milliseconds an `nft` process takes overlap with netlink work.

use std::io::{self, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;

use plumb_core::firewall::TableId;

use crate::netlink::{Error, Result};

/// True if an `nft` executable is on PATH.
pub fn available() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| Path::new(&dir).join("nft").is_file()))
}

fn run(args: &[&str], stdin: Option<&str>) -> io::Result<Output> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    child.wait_with_output()
}

/// The output of a successful run, or an error carrying nft's own message.
fn checked(what: &str, output: io::Result<Output>) -> Result<String> {
    let out = output.map_err(|e| Error::new(what, e))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(Error::new(what, io::Error::other(stderr)))
    }
}

/// A transaction or listing in progress on a background thread.
pub struct Pending<T>(JoinHandle<Result<T>>);

impl<T> Pending<T> {
    pub fn wait(self) -> Result<T> {
        self.0
            .join()
            .unwrap_or_else(|_| Err(Error::new("nftables", io::Error::other("thread panicked"))))
    }
}

/// Starts applying `script` as one atomic transaction on a background thread.
pub fn apply(script: String) -> Pending<()> {
    Pending(std::thread::spawn(move || {
        checked("apply nftables rules", run(&["-f", "-"], Some(&script))).map(drop)
    }))
}

/// Starts [`list_table`] on a background thread.
pub fn start_list_table(table: TableId) -> Pending<Option<String>> {
    Pending(std::thread::spawn(move || list_table(&table)))
}

/// The table as JSON (`nft -j`), or `None` if there is no such table. Absence is decided
/// from the exit status and the list of tables, not from an error message.
pub fn list_table(table: &TableId) -> Result<Option<String>> {
    let what = "list nftables table";
    let (family, name) = (table.family.as_str(), table.name.as_str());
    let out = run(&["-j", "list", "table", family, name], None).map_err(|e| Error::new(what, e))?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    if table_exists(family, name)? {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(Error::new(what, io::Error::other(stderr)));
    }
    Ok(None)
}

/// True if `nft -j list tables FAMILY` names table `name`.
fn table_exists(family: &str, name: &str) -> Result<bool> {
    let what = "list nftables tables";
    let json = checked(what, run(&["-j", "list", "tables", family], None))?;
    let value: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| Error::new(what, io::Error::other(e.to_string())))?;
    let tables = value["nftables"].as_array().cloned().unwrap_or_default();
    Ok(tables.iter().any(|o| o["table"]["name"] == name))
}

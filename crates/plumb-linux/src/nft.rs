//! nftables through the `nft` program: plumb's rules are nft text, applied in one transaction
//! with `nft -f -`, so the text printed by `--dry-run` is exactly what runs. plumb only ever
//! names its own tables. A transaction can run on a background thread ([`Pending`]) so the
//! few milliseconds an `nft` process takes overlap with netlink work.

use std::io::{self, Write};
use std::process::{Command, Output, Stdio};
use std::thread::JoinHandle;

use crate::netlink::{Error, Result};

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

/// Runs `script` as one transaction inside the network namespace `netns` (its own tables).
pub fn apply_in(netns: &str, script: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let ns = crate::netns::open(netns)?;
    let fd = ns.as_raw_fd();
    let mut command = Command::new("nft");
    command
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only setns(2), async-signal-safe, runs between fork and exec; `ns` outlives
    // the spawn.
    unsafe {
        command.pre_exec(move || {
            if nix::libc::setns(fd, nix::libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.spawn().and_then(|mut child| {
        if let Some(mut pipe) = child.stdin.take() {
            pipe.write_all(script.as_bytes())?;
        }
        child.wait_with_output()
    });
    drop(ns);
    checked(&format!("apply nftables rules in {netns}"), output).map(drop)
}

/// Starts [`list_ruleset`] on a background thread.
pub fn start_list_ruleset() -> Pending<String> {
    Pending(std::thread::spawn(list_ruleset))
}

/// The whole ruleset as JSON (`nft -j list ruleset`): one process for every table of a
/// stack, where a table that does not exist is simply not in it.
pub fn list_ruleset() -> Result<String> {
    checked("list the nftables ruleset", run(&["-j", "list", "ruleset"], None))
}

/// Every table of this network namespace, as (family, name) (`nft -j list tables`).
pub fn list_tables() -> Result<Vec<(String, String)>> {
    let what = "list nftables tables";
    let json = checked(what, run(&["-j", "list", "tables"], None))?;
    tables_of(&json).ok_or_else(|| Error::new(what, io::Error::new(io::ErrorKind::InvalidData, "not nft's JSON")))
}

/// The tables in `nft -j list tables`'s output: `{"nftables": [{"metainfo": ..}, {"table":
/// {"family": "inet", "name": "..", "handle": 1}}, ..]}`.
fn tables_of(json: &str) -> Option<Vec<(String, String)>> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    Some(
        value
            .get("nftables")?
            .as_array()?
            .iter()
            .filter_map(|item| {
                let table = item.get("table")?;
                Some((
                    table.get("family")?.as_str()?.to_string(),
                    table.get("name")?.as_str()?.to_string(),
                ))
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_read_from_nfts_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "inet", "name": "plumb_a", "handle": 3}}, {"table": {"family": "bridge", "name": "plumb_trace_42", "handle": 4}}]}"#;
        assert_eq!(
            tables_of(json).unwrap(),
            [
                ("inet".to_string(), "plumb_a".to_string()),
                ("bridge".to_string(), "plumb_trace_42".to_string())
            ]
        );
        assert_eq!(tables_of(r#"{"nftables": [{"metainfo": {}}]}"#).unwrap(), []);
        assert_eq!(tables_of("table inet plumb_a"), None);
    }
}

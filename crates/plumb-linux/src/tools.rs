//! Operations made by running iproute2's programs (`ip tuntap`, `bridge`, `tc`), for the few
//! kernel objects plumb makes that way: chaos taps, their bridge-port flags, and tc
//! redirects. netlink-packet-route 0.22 encodes neither tc actions (`mirred`) nor u32
//! selectors, and the programs' argument lists are exactly what `--dry-run` prints.

use std::io;
use std::process::{Command, Stdio};

use crate::netlink::{Error, Result};

/// Runs each command in order; the first that fails stops the rest, with its own message.
pub fn run_all(commands: &[Vec<String>]) -> Result<()> {
    for argv in commands {
        run(argv)?;
    }
    Ok(())
}

fn run(argv: &[String]) -> Result<()> {
    let what = argv.join(" ");
    let Some((program, args)) = argv.split_first() else {
        return Ok(());
    };
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Error::new(what.clone(), e))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(Error::new(what, io::Error::other(stderr)))
}

/// `tc qdisc del dev DEV clsact`, where nothing to delete is not an error (as the script's
/// `2>/dev/null || true`).
pub fn clear_clsact(dev: &str) {
    let _ = run(&["tc", "qdisc", "del", "dev", dev, "clsact"].map(str::to_string));
}

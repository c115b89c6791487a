//! Kernel parameters under /proc/sys. Network ones apply to the namespace of the thread that
//! opens the file.

use std::fs;

use crate::netlink::{Error, Result};

fn path(key: &str) -> String {
    format!("/proc/sys/{}", key.replace('.', "/"))
}

/// Sets `key` (dotted, as `sysctl` writes it; interface names must not contain dots).
pub fn set(key: &str, value: &str) -> Result<()> {
    fs::write(path(key), value).map_err(|e| Error::new(format!("set {key}={value}"), e))
}

pub fn get(key: &str) -> Result<String> {
    fs::read_to_string(path(key))
        .map(|v| v.trim().to_string())
        .map_err(|e| Error::new(format!("read {key}"), e))
}

//! What happened to a stack's containers, as JSON lines in `events.jsonl` in its state folder
//! (private to root, like the rest): `up` records containers created and removed, the
//! supervisor processes started, exited, restarting, and health changes. `plumb events` reads
//! them. The file is rotated at [`MAX_BYTES`] (one older file, `events.jsonl.1`, is kept).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::runfile::unix_ms;

/// Where a file is rotated.
pub const MAX_BYTES: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unix time in milliseconds.
    pub ts_ms: u64,
    pub stack: String,
    pub container: String,
    /// `created`, `removed`, `started`, `exited`, `restarting`, `start_failed`, `health`,
    /// `oom_killed`, `draining`, `autoscaled` and `autoscale_failed` (whose `container` is
    /// the service).
    pub event: String,
    /// What more there is to say: a PID, an exit status, the new health.
    #[serde(default)]
    pub detail: String,
}

pub fn path(stack_dir: &Path) -> PathBuf {
    stack_dir.join("events.jsonl")
}

/// Appends one event of `stack` (whose state folder is `stack_dir`). Losing an event (a full
/// disk) never stops what it describes.
pub fn record(stack_dir: &Path, stack: &str, container: &str, event: &str, detail: impl Into<String>) {
    let e = Event {
        ts_ms: unix_ms(),
        stack: stack.to_string(),
        container: container.to_string(),
        event: event.to_string(),
        detail: detail.into(),
    };
    let Ok(mut line) = serde_json::to_string(&e) else {
        return;
    };
    line.push('\n');
    let file = path(stack_dir);
    if fs::metadata(&file).is_ok_and(|m| m.len() >= MAX_BYTES) {
        let _ = fs::rename(&file, file.with_extension("jsonl.1"));
    }
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).mode(0o600).open(&file) {
        let _ = f.write_all(line.as_bytes());
    }
}

/// Every event of one stack still on disk, oldest first (unreadable lines are skipped).
pub fn read(stack_dir: &Path) -> Vec<Event> {
    let file = path(stack_dir);
    let mut text = fs::read_to_string(file.with_extension("jsonl.1")).unwrap_or_default();
    text.push_str(&fs::read_to_string(&file).unwrap_or_default());
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_appended_and_read_back_across_a_rotation() {
        let dir = std::env::temp_dir().join(format!("plumb-events-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        record(&dir, "s", "web-1", "started", "pid 7");
        // Fill the file past the rotation size, then one more: both files are read.
        fs::write(path(&dir), vec![b'\n'; MAX_BYTES as usize]).unwrap();
        record(&dir, "s", "web-1", "exited", "exit code 1");
        let events = read(&dir);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(
            (events[0].event.as_str(), events[0].detail.as_str()),
            ("exited", "exit code 1")
        );
        record(&dir, "s", "web-1", "health", "healthy");
        assert_eq!(read(&dir).len(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }
}

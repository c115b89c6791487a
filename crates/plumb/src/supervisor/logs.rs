//! Per-replica log files in the stack's `logs/` folder: everything a process writes to stdout
//! and stderr, rotated at a fixed size so a chatty service cannot fill the disk (at most two
//! files of `LIMIT` bytes per replica).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

pub const LIMIT: u64 = 1024 * 1024;

pub struct LogWriter {
    path: PathBuf,
    file: Option<File>,
    size: u64,
}

impl LogWriter {
    pub fn new(path: PathBuf) -> Self {
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        LogWriter { path, file: None, size }
    }

    pub fn write(&mut self, bytes: &[u8]) {
        if self.size + bytes.len() as u64 > LIMIT {
            self.file = None;
            let _ = fs::rename(&self.path, self.path.with_extension("log.1"));
            self.size = 0;
        }
        if self.file.is_none() {
            self.file = OpenOptions::new().create(true).append(true).open(&self.path).ok();
        }
        if let Some(f) = &mut self.file {
            if f.write_all(bytes).is_ok() {
                self.size += bytes.len() as u64;
            }
        }
    }

    /// A line from plumb itself (start, exit, restart), marked so it stands out.
    pub fn note(&mut self, text: &str) {
        self.write(format!("[plumb] {text}\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_and_stay_bounded() {
        let dir = std::env::temp_dir().join(format!("plumb-logs-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c-1.log");
        let mut log = LogWriter::new(path.clone());
        let line = vec![b'x'; 1000];
        for _ in 0..3000 {
            log.write(&line);
        }
        let current = fs::metadata(&path).unwrap().len();
        let old = fs::metadata(path.with_extension("log.1")).unwrap().len();
        assert!(
            current <= LIMIT && old <= LIMIT && old > LIMIT - 1000,
            "{current} {old}"
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}

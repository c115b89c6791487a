//! Per-replica log files in the stack's `logs/` folder: everything a process writes to stdout
//! and stderr (read from its pipes here), rotated at a fixed size so a chatty service cannot
//! fill the disk (at most two files of `LIMIT` bytes per replica).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::Child;

use super::nonblocking_cloexec;
use crate::state::PRIVATE_FILE;

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
            self.file = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(PRIVATE_FILE)
                .open(&self.path)
                .ok();
        }
        if let Some(f) = &mut self.file {
            if f.write_all(bytes).is_ok() {
                self.size += bytes.len() as u64;
            }
        }
    }

    /// Opens the file again at the next write (it may have been deleted, with the state
    /// directory, and made again).
    pub fn reopen(&mut self) {
        self.file = None;
        self.size = fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
    }

    /// A line from plumb itself (start, exit, restart), marked so it stands out.
    pub fn note(&mut self, text: &str) {
        self.write(format!("[plumb] {text}\n").as_bytes());
    }
}

/// The output pipes still open, each with the container whose process writes to it.
#[derive(Default)]
pub struct Pipes {
    open: Vec<(OwnedFd, String)>,
}

impl Pipes {
    /// Takes over `child`'s stdout and stderr.
    pub fn add(&mut self, child: &mut Child, container: &str) {
        let fds = [
            child.stdout.take().map(OwnedFd::from),
            child.stderr.take().map(OwnedFd::from),
        ];
        for fd in fds.into_iter().flatten() {
            nonblocking_cloexec(fd.as_fd());
            self.open.push((fd, container.to_string()));
        }
    }

    /// The pipes to poll, in the order `read` expects its `ready` flags.
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.open.iter().map(|(fd, _)| fd.as_fd())
    }

    /// Reads the pipes flagged in `ready`, handing each chunk to `write` with its container;
    /// forgets the pipes that closed.
    pub fn read(&mut self, ready: &[bool], mut write: impl FnMut(&str, &[u8])) {
        let mut buffer = [0u8; 16 * 1024];
        let mut closed = Vec::new();
        for (i, (fd, container)) in self.open.iter().enumerate() {
            if !ready.get(i).copied().unwrap_or(false) {
                continue;
            }
            match nix::unistd::read(fd.as_raw_fd(), &mut buffer) {
                Ok(0) => closed.push(i),
                Ok(n) => write(container, &buffer[..n]),
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(_) => closed.push(i),
            }
        }
        for i in closed.into_iter().rev() {
            self.open.remove(i);
        }
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

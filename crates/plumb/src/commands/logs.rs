//! `plumb logs SVC|CONTAINER [-f] [--tail N]`: the output the supervisor saved for each
//! replica; with several replicas every line is prefixed by its container.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use super::Context;
use crate::failure::{Failure, Result};
use crate::{runfile, stackfile};

/// Whether `logs` keeps printing new output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// Print the past and stop.
    Once,
    /// Then keep printing what is appended.
    New,
}

pub fn run(ctx: &Context, name: &str, follow: Follow, tail: usize) -> Result<()> {
    let files = files(ctx, name)?;
    let prefixed = files.len() > 1;
    let mut out = std::io::stdout().lock();
    let mut followers = Vec::new();
    for (container, path) in &files {
        for line in last_lines(path, tail) {
            print_line(&mut out, prefixed.then_some(container.as_str()), &line);
        }
        followers.push(Follower::at_end(container.clone(), path.clone()));
    }
    let _ = out.flush();
    if follow == Follow::Once {
        return Ok(());
    }
    loop {
        std::thread::sleep(Duration::from_millis(200));
        for f in &mut followers {
            for line in f.new_lines() {
                print_line(&mut out, prefixed.then_some(f.container.as_str()), &line);
            }
        }
        let _ = out.flush();
    }
}

/// The last `n` lines of a replica's log (the rotated file's first, when the current one has fewer).
pub fn last_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let mut text = std::fs::read(path.with_extension("log.1")).unwrap_or_default();
    text.extend(std::fs::read(path).unwrap_or_default());
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

/// The log file of each replica NAME (a service, a container, either as STACK/NAME) names.
pub fn files(ctx: &Context, name: &str) -> Result<Vec<(String, PathBuf)>> {
    let (stack_filter, name) = stackfile::qualified(name);
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    let mut stacks: Vec<String> = Vec::new();
    for stack in ctx
        .state
        .stacks()?
        .into_keys()
        .filter(|s| stack_filter.is_none_or(|f| f == s))
    {
        let dir = ctx.state.stack_dir(&stack);
        for spec in runfile::read_run(&dir).specs {
            if spec.container == name || spec.service == name {
                if !stacks.contains(&stack) {
                    stacks.push(stack.clone());
                }
                files.push((
                    spec.container.clone(),
                    runfile::logs_dir(&dir).join(format!("{}.log", spec.container)),
                ));
            }
        }
    }
    if stacks.len() > 1 {
        // One stack's logs: the current folder's, or the name must say which.
        let stack = stackfile::one_stack(stacks, |s| s.as_str()).map_err(|many| {
            let many: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
            stackfile::in_several_stacks(&format!("{name:?}"), &many)
        })?;
        let dir = runfile::logs_dir(&ctx.state.stack_dir(&stack));
        files.retain(|(_, path)| path.starts_with(&dir));
    }
    if files.is_empty() {
        return Err(Failure::new(format!(
            "no service or container {name:?} with a command in any stack that is up"
        ))
        .hint("`plumb ps` lists them")
        .code(2));
    }
    Ok(files)
}

fn print_line(out: &mut impl Write, prefix: Option<&str>, line: &str) {
    let _ = match prefix {
        Some(p) => writeln!(out, "{p} | {line}"),
        None => writeln!(out, "{line}"),
    };
}

/// Reads what is appended to a log file, following it across rotation.
struct Follower {
    container: String,
    path: PathBuf,
    inode: u64,
    offset: u64,
    partial: String,
}

impl Follower {
    fn at_end(container: String, path: PathBuf) -> Self {
        let meta = std::fs::metadata(&path).ok();
        Follower {
            container,
            path,
            inode: meta.as_ref().map_or(0, |m| m.ino()),
            offset: meta.map_or(0, |m| m.len()),
            partial: String::new(),
        }
    }

    fn new_lines(&mut self) -> Vec<String> {
        let Ok(meta) = std::fs::metadata(&self.path) else {
            return Vec::new();
        };
        if meta.ino() != self.inode || meta.len() < self.offset {
            self.inode = meta.ino();
            self.offset = 0;
        }
        let mut chunk = Vec::new();
        if let Ok(mut file) = File::open(&self.path) {
            if file.seek(SeekFrom::Start(self.offset)).is_ok() {
                let _ = file.read_to_end(&mut chunk);
            }
        }
        self.offset += chunk.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&chunk));
        let mut lines: Vec<String> = self.partial.split('\n').map(str::to_string).collect();
        self.partial = lines.pop().unwrap_or_default();
        lines
    }
}

//! Replicas' control groups: made with their limits, joined between fork and exec, read for
//! usage, removed when the replica is gone. The files and values are
//! `plumb_core::cgroup`'s; this writes and reads them under /sys/fs/cgroup, on a unified
//! (v2) hierarchy or on v1 hierarchies mounted at /sys/fs/cgroup/CONTROLLER. Writing these
//! few files directly is smaller than a crate's whole model of cgroups.

use std::fs;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use plumb_core::cgroup::{self, Limits, Usage, Version};

/// Where the hierarchies are mounted: /sys/fs/cgroup, or `PLUMB_CGROUP_MOUNT` (tests use
/// an empty folder to see limits the host cannot enforce refused).
fn mount() -> PathBuf {
    std::env::var_os("PLUMB_CGROUP_MOUNT")
        .filter(|m| !m.is_empty())
        .map_or_else(|| PathBuf::from("/sys/fs/cgroup"), PathBuf::from)
}

/// The host's hierarchy: v2 if /sys/fs/cgroup is the unified one.
pub fn version() -> Version {
    if mount().join("cgroup.controllers").exists() {
        Version::V2
    } else {
        Version::V1
    }
}

/// Where plumb's cgroups sit under each hierarchy: `PLUMB_CGROUP_ROOT`, or plumb.slice.
pub fn root() -> String {
    cgroup::root_from(std::env::var("PLUMB_CGROUP_ROOT").ok().as_deref())
}

/// The directories of cgroup `path` (below [`root`]): one on v2, one per hierarchy on v1.
fn dirs(version: Version, path: &str, limits: &Limits) -> Vec<(&'static str, PathBuf)> {
    let relative = format!("{}/{path}", root());
    match version {
        Version::V2 => vec![("", mount().join(relative))],
        // The accounting-only hierarchies where the host has them; the limited ones always
        // (`unenforceable` has said whether they are there).
        Version::V1 => {
            let limited = limits.controllers();
            cgroup::v1_hierarchies(limits)
                .into_iter()
                .filter(|h| limited.contains(h) || mount().join(h).join("cgroup.procs").exists())
                .map(|h| (h, mount().join(h).join(&relative)))
                .collect()
        }
    }
}

/// The directory of `controller`'s files among `dirs`.
fn dir_of<'a>(dirs: &'a [(&'static str, PathBuf)], controller: &str) -> Option<&'a Path> {
    dirs.iter()
        .find(|(c, _)| c.is_empty() || *c == controller)
        .map(|(_, d)| d.as_path())
}

/// Why the host cannot enforce `limits`, if it cannot: more CPUs than it has, a controller it
/// lacks, or swap it does not account.
pub fn unenforceable(limits: &Limits) -> Option<String> {
    // A quota above the host's CPUs limits nothing (Docker refuses it too).
    let host_cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(cpus) = limits.cpus.filter(|&c| c > host_cpus as f64) {
        return Some(format!(
            "cpus = {cpus} asks for more than the {host_cpus} CPUs this host has, which would limit nothing"
        ));
    }
    let version = version();
    match version {
        Version::V2 => {
            let available = fs::read_to_string(mount().join("cgroup.controllers")).unwrap_or_default();
            for controller in limits.controllers() {
                if !available.split_whitespace().any(|c| c == controller) {
                    return Some(format!("the host's cgroup v2 hierarchy has no {controller} controller"));
                }
            }
            // Swap is accounted where a child cgroup with memory.max also has memory.swap.max.
            if limits.memory_swap.is_some() {
                let children: Vec<PathBuf> = fs::read_dir(mount())
                    .into_iter()
                    .flatten()
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.join("memory.max").exists())
                    .collect();
                if !children.is_empty() && !children.iter().any(|p| p.join("memory.swap.max").exists()) {
                    return Some("the host does not account swap (boot its kernel with swapaccount=1)".into());
                }
            }
        }
        Version::V1 => {
            for controller in limits.controllers() {
                if !mount().join(controller).join("cgroup.procs").exists() {
                    return Some(format!(
                        "the host has no cgroup v1 {controller} hierarchy at {}",
                        mount().join(controller).display()
                    ));
                }
            }
            if limits.memory_swap.is_some() && !mount().join("memory/memory.memsw.limit_in_bytes").exists() {
                return Some("the host does not account swap (boot its kernel with swapaccount=1)".into());
            }
        }
    }
    None
}

/// Makes cgroup `path` with `limits` (its parents too, with the controllers enabled on v2).
pub fn make(path: &str, limits: &Limits) -> io::Result<()> {
    if let Some(why) = unenforceable(limits) {
        return Err(io::Error::new(io::ErrorKind::Unsupported, why));
    }
    let version = version();
    let dirs = dirs(version, path, limits);
    if version == Version::V2 {
        enable_controllers(&dirs[0].1, limits)?;
    }
    for (_, dir) in &dirs {
        fs::create_dir_all(dir)?;
    }
    for setting in cgroup::settings(limits, version) {
        let Some(dir) = dir_of(&dirs, setting.controller) else {
            continue;
        };
        let file = dir.join(setting.file);
        fs::write(&file, &setting.value).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "{}: writing {} to {}: {e}",
                    setting.field,
                    setting.value,
                    file.display()
                ),
            )
        })?;
    }
    Ok(())
}

/// On v2 a child cgroup has a controller's files only if each ancestor enables it for its
/// children: memory always (for accounting), and the limited ones.
fn enable_controllers(dir: &Path, limits: &Limits) -> io::Result<()> {
    let available = fs::read_to_string(mount().join("cgroup.controllers")).unwrap_or_default();
    let mut wanted: Vec<&str> = limits.controllers();
    if !wanted.contains(&"memory") {
        wanted.push("memory");
    }
    let enable: Vec<String> = wanted
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .map(|c| format!("+{c}"))
        .collect();
    let mount = mount();
    let mut ancestor = mount.clone();
    let relative = dir.strip_prefix(&mount).unwrap_or(dir);
    let parts: Vec<_> = relative.components().collect();
    for part in &parts[..parts.len().saturating_sub(1)] {
        fs::write(ancestor.join("cgroup.subtree_control"), enable.join(" "))?;
        ancestor.push(part);
        fs::create_dir_all(&ancestor)?;
    }
    fs::write(ancestor.join("cgroup.subtree_control"), enable.join(" "))
}

/// The `cgroup.procs` files of cgroup `path`, open for writing: a child writes "0" into each
/// to join it before exec.
pub fn procs_files(path: &str, limits: &Limits) -> io::Result<Vec<OwnedFd>> {
    dirs(version(), path, limits)
        .into_iter()
        .map(|(_, d)| {
            fs::OpenOptions::new()
                .write(true)
                .open(d.join("cgroup.procs"))
                .map(OwnedFd::from)
        })
        .collect()
}

/// What cgroup `path` has counted; None if it does not exist.
pub fn usage(path: &str) -> Option<Usage> {
    let version = version();
    // Accounting lives in the same hierarchies whatever the limits.
    let dirs = dirs(version, path, &Limits::default());
    let read = |(controller, file): (&str, &str)| -> Option<String> {
        fs::read_to_string(dir_of(&dirs, controller)?.join(file)).ok()
    };
    let [cpu, memory, events] = cgroup::usage_files(version);
    let memory = read(memory)?;
    Some(cgroup::parse_usage(
        version,
        &read(cpu).unwrap_or_default(),
        &memory,
        &read(events).unwrap_or_default(),
    ))
}

/// The pids in cgroup `path` (its first hierarchy), for a stop that must leave it empty.
pub fn pids(path: &str) -> Vec<i32> {
    let dirs = dirs(version(), path, &Limits::default());
    let Some((_, dir)) = dirs.first() else {
        return Vec::new();
    };
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Every controller plumb may use, so [`dirs`] names each hierarchy a cgroup can be in.
fn every_controller() -> Limits {
    Limits {
        cpus: Some(1.0),
        memory: Some(1),
        memory_swap: None,
        pids: Some(1),
    }
}

/// Removes `dir`'s parents left empty, up to and including plumb's root (each of its folders,
/// if it has several); busy ones (other replicas, stacks) stay.
fn remove_empty_parents(dir: &Path) {
    let mut parent = dir.parent();
    for _ in 0..1 + root().split('/').filter(|p| !p.is_empty()).count() {
        match parent {
            Some(p) if fs::remove_dir(p).is_ok() => parent = p.parent(),
            _ => break,
        }
    }
}

/// Removes cgroup `path` in every hierarchy, then its parents left empty (the stack's, the
/// root's). A cgroup that still has processes stays: the error says so.
pub fn remove(path: &str) -> io::Result<()> {
    let mut result = Ok(());
    for (_, dir) in dirs(version(), path, &every_controller()) {
        match fs::remove_dir(&dir) {
            Ok(()) => remove_empty_parents(&dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => result = Err(io::Error::new(e.kind(), format!("removing {}: {e}", dir.display()))),
        }
    }
    result
}

/// Removes cgroup `path` with every cgroup below it, deepest first, then its parents left
/// empty, in every hierarchy: what a sandbox killed outright leaves (its processes are gone,
/// its folders are not). Cgroups that still hold processes stay.
pub fn remove_tree(path: &str) {
    fn remove_below(dir: &Path) -> bool {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_below(&entry.path());
            }
        }
        fs::remove_dir(dir).is_ok()
    }
    for (_, dir) in dirs(version(), path, &every_controller()) {
        if remove_below(&dir) {
            remove_empty_parents(&dir);
        }
    }
}

/// The names of cgroup `path`'s child cgroups (below [`root`]; its first hierarchy).
pub fn children(path: &str) -> Vec<String> {
    let dirs = dirs(version(), path, &every_controller());
    let Some((_, dir)) = dirs.first() else {
        return Vec::new();
    };
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

//! Finding and reading stack files, and finding stacks and containers by name.

use std::path::{Path, PathBuf};

use plumb_core::spec::{self, Parsed};
use plumb_core::Container;

use crate::failure::{Failure, Result};
use crate::state::{StackState, StateDir};

/// Compose's own default file names, looked for when there is no `plumb.toml`.
pub const COMPOSE_NAMES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// The stack file to read: `path`, except that the default `plumb.toml`, when missing, gives
/// way to a Compose file of one of Compose's default names in the same folder.
pub fn resolve(path: &Path) -> PathBuf {
    if path != Path::new("plumb.toml") || path.exists() {
        return path.to_path_buf();
    }
    COMPOSE_NAMES
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| path.to_path_buf())
}

/// Reads and validates a stack file: plumb's TOML, or a Compose file (`*.yaml`, `*.yml`).
pub fn load(path: &Path) -> Result<Parsed> {
    let path = resolve(path);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Failure::new(format!("cannot read stack file {}: {e}", path.display()))
            .hint("pass -f FILE, or run plumb in the folder holding plumb.toml (or compose.yaml)")
            .code(2)
    })?;
    let dir = absolute(&path).parent().map(Path::to_path_buf).unwrap_or_default();
    Ok(plumb_engine::stackfile::parse(
        &path.display().to_string(),
        &text,
        &dir,
        &Default::default(),
    )?)
}

/// The stack's name from a file, even a file that no longer validates (so `down -f` still
/// works after a bad edit).
pub fn stack_name(path: &Path) -> Result<String> {
    let path = resolve(path);
    match load(&path) {
        Ok(parsed) => Ok(parsed.stack.name),
        Err(failure) => {
            let text = std::fs::read_to_string(&path).ok();
            let name = match spec::is_compose_file(&path.display().to_string()) {
                true => text.map(|t| compose_name(&t, &absolute(&path))),
                false => text
                    .and_then(|t| t.parse::<toml::Table>().ok())
                    .and_then(|t| t.get("name")?.as_str().map(str::to_string)),
            };
            name.filter(|n| spec::is_stack_name(n)).ok_or(failure)
        }
    }
}

/// A compose file's stack name read loosely: its top-level `name:` line, else its folder's.
fn compose_name(text: &str, path: &Path) -> String {
    let written = text.lines().find_map(|line| {
        let value = line.strip_prefix("name:")?.trim();
        Some(value.trim_matches(|c| c == '"' || c == '\'').to_string())
    });
    written.unwrap_or_else(|| {
        let dir = path.parent().and_then(Path::file_name).and_then(|n| n.to_str());
        spec::stack_name_from(dir.unwrap_or_default())
    })
}

pub fn absolute(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Splits `STACK/NAME` into its stack and name; a plain `NAME` means any stack.
pub fn qualified(name: &str) -> (Option<&str>, &str) {
    name.split_once('/')
        .map_or((None, name), |(stack, rest)| (Some(stack), rest))
}

/// The stack named by `./plumb.toml` (or `./compose.yaml`), if the current folder has one: among several stacks that
/// know a name, it wins (as the project folder does in Compose).
pub fn local_stack() -> Option<String> {
    let file = resolve(Path::new("plumb.toml"));
    file.is_file().then(|| stack_name(&file).ok()).flatten()
}

/// Of the stacks that know a name (`found`, with `stack_of` giving each one's stack), the one to
/// use: the only one, or the current folder's stack among several. `Err` keeps them all.
pub fn one_stack<T>(mut found: Vec<T>, stack_of: impl Fn(&T) -> &str) -> std::result::Result<T, Vec<T>> {
    if found.len() == 1 {
        return Ok(found.remove(0));
    }
    if let Some(local) = local_stack() {
        if let Some(i) = found.iter().position(|f| stack_of(f) == local) {
            return Ok(found.swap_remove(i));
        }
    }
    Err(found)
}

/// A name in several stacks: an input error (exit 2) naming them.
pub fn in_several_stacks(what: &str, stacks: &[&str]) -> Failure {
    Failure::new(format!("{what} exists in several stacks: {}", stacks.join(", ")))
        .hint("name it as STACK/NAME, or run the command in the folder of the stack's plumb.toml")
        .code(2)
}

/// A container named `SVC-k`, `SVC` (replica 1) or `STACK/NAME`, in any stack that is up.
/// Unknown or ambiguous names are input errors (exit 2).
pub fn find_container(state: &StateDir, name: &str) -> Result<(StackState, Container)> {
    let (stack_filter, name) = qualified(name);
    let mut found = Vec::new();
    // In a cluster: replicas of this host's stacks that run on other hosts.
    let mut elsewhere = None;
    for (stack, st) in state.stacks()? {
        if stack_filter.is_some_and(|f| f != stack) {
            continue;
        }
        let Some(desired) = &st.desired else { continue };
        let hit = desired.container_or_first(name);
        if let Some(c) = hit {
            found.push((st.clone(), c.clone()));
        } else if let Some(r) = desired.remote.iter().find(|r| r.name == name) {
            elsewhere = Some(r.host.clone());
        }
    }
    if found.is_empty() {
        return Err(match elsewhere {
            Some(host) => Failure::new(format!("container {name:?} runs on host {host}, not on this one"))
                .hint(format!(
                    "run the command on {host}; `plumb cluster status` shows where each replica runs"
                ))
                .code(2),
            None => Failure::new(format!("no container {name:?} in any stack that is up"))
                .hint("`plumb ps` lists the containers")
                .code(2),
        });
    }
    one_stack(found, |(s, _)| s.stack.as_str()).map_err(|found| {
        let stacks: Vec<_> = found.iter().map(|(s, _)| s.stack.as_str()).collect();
        in_several_stacks(&format!("container {name:?}"), &stacks)
    })
}

/// The containers a command's TARGET names, in every stack that is up: a container (`SVC-k`),
/// every replica of a service (`SVC`), every container of a stack (`STACK`), each also as
/// `STACK/NAME`; no TARGET names them all. Nothing found is an input error (exit 2).
pub fn find_targets(state: &StateDir, target: Option<&str>) -> Result<Vec<(StackState, Container)>> {
    let (stack_filter, name) = match target {
        Some(t) => qualified(t),
        None => (None, ""),
    };
    let mut found = Vec::new();
    for (stack, st) in state.stacks()? {
        if stack_filter.is_some_and(|f| f != stack) {
            continue;
        }
        let Some(desired) = &st.desired else { continue };
        let whole_stack = target.is_none() || (stack_filter.is_none() && name == stack);
        let hits: Vec<&Container> = match desired.container(name) {
            Some(c) if !whole_stack => vec![c],
            _ => desired
                .containers
                .iter()
                .filter(|c| whole_stack || c.service == name)
                .collect(),
        };
        found.extend(hits.into_iter().map(|c| (st.clone(), c.clone())));
    }
    if target.is_some() && stack_filter.is_none() {
        let stacks: std::collections::BTreeSet<String> = found.iter().map(|(s, _)| s.stack.clone()).collect();
        if let Ok(local) = one_stack(stacks.into_iter().collect(), |s| s.as_str()) {
            found.retain(|(s, _)| s.stack == local);
        }
    }
    if found.is_empty() {
        let what = target.map_or("any container".to_string(), |t| format!("{t:?}"));
        return Err(Failure::new(format!("no stack, service or container {what} is up"))
            .hint("`plumb ps` lists the containers of the stacks that are up")
            .code(2));
    }
    Ok(found)
}

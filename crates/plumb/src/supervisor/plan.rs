//! What a new `run.json` changes, replica by replica: which keep running, which restart (their
//! definition changed, `plumb restart` asked, or their container was rebuilt), which stop, go
//! or are added. Pure: the event loop applies the answer.

use std::collections::BTreeMap;

use plumb_core::services::RunSpec;

use super::replica::Replica;
use crate::runfile::RunFile;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// New: start it once its dependencies are ready.
    Add,
    /// Same definition: leave its process alone (start it again if it had stopped or exited).
    Keep,
    /// Stop its process and start a new one.
    Restart,
    /// Stopped by `plumb stop`.
    Stop,
    /// No longer in `run.json`: stop it and forget it.
    Remove,
}

/// The change for every replica, current or wanted. `netns_inode` tells the inode of a
/// namespace now (None if it does not exist).
pub fn changes<'a>(
    current: impl IntoIterator<Item = (&'a String, &'a Replica)>,
    run: &RunFile,
    netns_inode: impl Fn(&str) -> Option<u64>,
) -> BTreeMap<String, Change> {
    let current: BTreeMap<&String, &Replica> = current.into_iter().collect();
    let mut changes: BTreeMap<String, Change> = current.keys().map(|name| (name.to_string(), Change::Remove)).collect();
    for spec in &run.specs {
        let change = match current.get(&spec.container) {
            _ if run.is_stopped(&spec.service) => Change::Stop,
            None => Change::Add,
            Some(r) => {
                let rebuilt = r.has_process() && r.netns_inode() != netns_inode(&spec.netns);
                let asked = r.restart_token() != run.restart_token(&spec.service);
                if rebuilt || asked || !same_definition(r.spec(), spec) {
                    Change::Restart
                } else {
                    Change::Keep
                }
            }
        };
        changes.insert(spec.container.clone(), change);
    }
    changes
}

/// True if two specs run the same thing. Other services' addresses (`PLUMB_ADDRS_*`, the
/// hosts file) do not count: a service added elsewhere must not restart this one. The hosts
/// file is updated in place; the variables take effect at the next start.
pub fn same_definition(a: &RunSpec, b: &RunSpec) -> bool {
    let own_env = |s: &RunSpec| {
        s.env
            .iter()
            .filter(|(k, _)| !k.starts_with("PLUMB_ADDRS_"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    let without_others = |s: &RunSpec| RunSpec {
        hosts: String::new(),
        env: Default::default(),
        ..s.clone()
    };
    without_others(a) == without_others(b) && own_env(a) == own_env(b)
}

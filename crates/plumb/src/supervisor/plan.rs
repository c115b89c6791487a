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
    mut netns_inode: impl FnMut(&str) -> Option<u64>,
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Instant;

    use super::*;
    use crate::supervisor::fixtures::spec;

    const INODE: Option<u64> = Some(4026532000);

    /// Replicas running (in namespaces with inode `INODE`) from the specs of `run`.
    fn running(run: &RunFile) -> BTreeMap<String, Replica> {
        run.specs
            .iter()
            .map(|s| {
                let mut r = Replica::new(s.clone(), run.restart_token(&s.service));
                r.started(Instant::now(), 0, INODE);
                (s.container.clone(), r)
            })
            .collect()
    }

    fn run_of(specs: Vec<RunSpec>) -> RunFile {
        RunFile {
            specs,
            ..RunFile::default()
        }
    }

    fn changes_to(current: &BTreeMap<String, Replica>, run: &RunFile) -> Vec<(String, Change)> {
        changes(current, run, |_| INODE).into_iter().collect()
    }

    fn all(change: Change, names: &[&str]) -> Vec<(String, Change)> {
        names.iter().map(|n| (n.to_string(), change)).collect()
    }

    #[test]
    fn an_unchanged_run_keeps_everything() {
        let run = run_of(vec![spec("a", 1), spec("a", 2), spec("b", 1)]);
        assert_eq!(
            changes_to(&running(&run), &run),
            all(Change::Keep, &["a-1", "a-2", "b-1"])
        );
    }

    #[test]
    fn only_a_changed_definition_restarts() {
        let before = run_of(vec![spec("a", 1), spec("b", 1)]);
        let mut after = before.clone();
        after.specs[1].command.push("--verbose".into());
        let expected = [("a-1".to_string(), Change::Keep), ("b-1".to_string(), Change::Restart)];
        assert_eq!(changes_to(&running(&before), &after), expected);

        let mut after = before.clone();
        after.specs[1].env.insert("MODE".into(), "debug".into());
        assert_eq!(
            changes_to(&running(&before), &after),
            expected,
            "its own variables count"
        );
    }

    #[test]
    fn another_service_coming_or_going_restarts_nobody() {
        let before = run_of(vec![spec("a", 1), spec("b", 1)]);
        let mut after = run_of(vec![spec("a", 1), spec("c", 1)]);
        // a learns c's address, by variable and in its hosts file.
        after.specs[0].env.insert("PLUMB_ADDRS_C".into(), "10.0.0.3".into());
        after.specs[0].hosts = "10.0.0.3\tc-1 c\n".into();
        assert!(same_definition(&before.specs[0], &after.specs[0]));
        let got = changes_to(&running(&before), &after);
        assert_eq!(
            got,
            [
                ("a-1".to_string(), Change::Keep),
                ("b-1".to_string(), Change::Remove),
                ("c-1".to_string(), Change::Add)
            ]
        );
    }

    #[test]
    fn plumb_restart_and_stop_act_on_their_service_only() {
        let before = run_of(vec![spec("a", 1), spec("a", 2), spec("b", 1), spec("c", 1)]);
        let mut after = before.clone();
        after.restarts.insert("a".into(), 1);
        after.stopped = BTreeSet::from(["b".to_string()]);
        after.specs.push(spec("b", 2));
        let got = changes_to(&running(&before), &after);
        let mut expected = all(Change::Restart, &["a-1", "a-2"]);
        expected.extend(all(Change::Stop, &["b-1", "b-2"]));
        expected.extend(all(Change::Keep, &["c-1"]));
        assert_eq!(got, expected);
        // The counter was applied: the next run.json restarts nothing.
        assert_eq!(
            changes_to(&running(&after), &after)[..2],
            all(Change::Keep, &["a-1", "a-2"])
        );
    }

    #[test]
    fn a_process_in_a_rebuilt_namespace_restarts() {
        let run = run_of(vec![spec("a", 1), spec("b", 1)]);
        let mut current = running(&run);
        // b is not running: its next start is in the new namespace anyway.
        current.get_mut("b-1").map(|r| r.exited(Instant::now(), None));
        let got: Vec<_> = changes(&current, &run, |_| Some(1)).into_iter().collect();
        assert_eq!(
            got,
            [("a-1".to_string(), Change::Restart), ("b-1".to_string(), Change::Keep)]
        );
    }
}

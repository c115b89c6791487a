//! Which processes live in which container: one pass over /proc reading each process's
//! network namespace, then the parent and session of those inside a container. A replica's
//! container is its own, so everything inside belongs to it: the supervisor ends what a
//! replica left behind, and `ps` counts what no supervisor started.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::MetadataExt;

/// A process inside a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resident {
    pub pid: i32,
    pub parent: i32,
    pub session: i32,
}

/// The processes inside each of the network namespaces with these inodes, by inode.
pub fn residents(inodes: &HashSet<u64>) -> BTreeMap<u64, Vec<Resident>> {
    let mut out: BTreeMap<u64, Vec<Resident>> = BTreeMap::new();
    if inodes.is_empty() {
        return out;
    }
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
    {
        // A zombie has no namespace left to read: it is not counted.
        let Ok(ns) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
            continue;
        };
        if !inodes.contains(&ns.ino()) {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if let Some(resident) = parse_stat(pid, &stat) {
            out.entry(ns.ino()).or_default().push(resident);
        }
    }
    out
}

/// Parent and session from a /proc/PID/stat line (None for a zombie or an unreadable line).
fn parse_stat(pid: i32, stat: &str) -> Option<Resident> {
    // The command name may hold spaces and parentheses: the fields start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    Some(Resident {
        pid,
        parent: fields.get(1)?.parse().ok()?,
        session: fields.get(3)?.parse().ok()?,
    })
}

/// Of a container's residents, the PIDs its supervisor does not account for: neither the
/// supervisor's own children (the replica's process, health probes) nor the process tree of
/// the replica's process `main` (a session leader: its session).
pub fn untracked(residents: &[Resident], supervisor: u32, main: Option<u32>) -> Vec<i32> {
    let supervisor = supervisor as i32;
    let main_session = main.map(|m| m as i32);
    residents
        .iter()
        .filter(|r| r.parent != supervisor && Some(r.session) != main_session)
        .map(|r| r.pid)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_parent_and_session_whatever_the_command_name() {
        let line = "4242 (sh) x) S 100 4242 4242 0 -1 4194560 0 0";
        assert_eq!(
            parse_stat(4242, line),
            Some(Resident {
                pid: 4242,
                parent: 100,
                session: 4242
            })
        );
        assert_eq!(parse_stat(7, "7 (sleep) Z 1 7 7 0"), None);
        assert_eq!(parse_stat(7, "garbage"), None);
    }

    #[test]
    fn untracked_are_those_outside_the_replicas_tree_and_not_the_supervisors() {
        let r = |pid, parent, session| Resident { pid, parent, session };
        let supervisor = 10;
        let residents = [
            r(20, 10, 20), // the replica's process
            r(21, 20, 20), // its worker
            r(30, 10, 30), // an exec health probe
            r(40, 1, 40),  // a daemon that left the session
            r(41, 1, 20),  // a child whose parent exited, still in the session
        ];
        assert_eq!(untracked(&residents, supervisor, Some(20)), [40]);
        // The replica's process has exited: what is left of its session is untracked too.
        assert_eq!(untracked(&residents[1..], supervisor, None), [21, 40, 41]);
    }
}

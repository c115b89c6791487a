//! Which processes live in which container (`Kernel::residents`: one pass over /proc, shared
//! with the teardown's `ip netns pids`), and which of them no supervisor accounts for. A replica's
//! container is its own, so everything inside belongs to it: the supervisor ends what a
//! replica left behind, and `ps` counts what no supervisor started.

pub use plumb_core::kernel::Resident;

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

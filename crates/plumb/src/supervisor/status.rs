//! `status.json`: what the supervisor tells `plumb` about every replica (state, health, pid,
//! restarts, last exit), naming the generation of `run.json` it has applied. Written after
//! each change; read by `up`, `ps`, `exec` and the control commands.

use std::path::Path;

use super::replica::Replica;
use crate::failure::Result;
use crate::runfile::{self, ReplicaStatus, StatusFile};

/// What `status.json` says of one replica whose process (if any) has `pid`.
pub fn replica_status(replica: &Replica, pid: Option<u32>) -> ReplicaStatus {
    ReplicaStatus {
        service: replica.spec().service.clone(),
        state: replica.state(),
        health: replica.health(),
        pid,
        restarts: replica.restarts(),
        started_at_ms: replica.started_at_ms(),
        last_exit: replica.last_exit(),
        error: replica.error().map(str::to_string),
    }
}

/// Writes `status.json` into the stack folder `dir` (atomically: readers never see half).
pub fn write<'a>(
    dir: &Path,
    generation: u64,
    replicas: impl IntoIterator<Item = (&'a String, ReplicaStatus)>,
) -> Result<()> {
    let status = StatusFile {
        generation,
        supervisor_pid: std::process::id(),
        replicas: replicas.into_iter().map(|(name, r)| (name.clone(), r)).collect(),
    };
    runfile::write_json(&runfile::status_path(dir), &status)
}

//! Run specs for the supervisor's unit tests: no namespace or program behind them.

use std::time::Duration;

use plumb_core::services::RunSpec;
use plumb_core::spec::{Condition, Dependency, HealthSpec, Probe, RestartPolicy};

/// Replica `replica` of `service`, running `sleep 3600` with restart = "always".
pub fn spec(service: &str, replica: u32) -> RunSpec {
    RunSpec {
        container: format!("{service}-{replica}"),
        service: service.to_string(),
        replica,
        netns: format!("t-{service}-{replica}"),
        command: vec!["/bin/sleep".into(), "3600".into()],
        env: Default::default(),
        workdir: "/".into(),
        user: None,
        capabilities: Default::default(),
        limits: Default::default(),
        restart: RestartPolicy::Always,
        health: None,
        depends_on: Vec::new(),
        stop_grace_ms: 2000,
        hosts: String::new(),
        oci: None,
        mesh: false,
    }
}

pub fn with_restart(mut spec: RunSpec, restart: RestartPolicy) -> RunSpec {
    spec.restart = restart;
    spec
}

/// A TCP probe every second, 3 failures to turn unhealthy, no start period.
pub fn with_health(mut spec: RunSpec) -> RunSpec {
    spec.health = Some(HealthSpec {
        probe: Probe::Tcp { port: 80 },
        interval: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        retries: 3,
        start_period: Duration::ZERO,
    });
    spec
}

pub fn depending_on(mut spec: RunSpec, service: &str, condition: Condition) -> RunSpec {
    spec.depends_on.push(Dependency {
        service: service.to_string(),
        condition,
    });
    spec
}

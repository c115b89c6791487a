//! `plumb restart|stop|start SVC`: a new generation of `run.json` for the stack's supervisor.

use std::time::Duration;

use super::{require_root, Context};
use crate::failure::{Failure, Result};
use crate::output::say;
use crate::processes::{self, HealthWait};
use crate::runfile::{self, ReplicaState};
use crate::stackfile;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Restart,
    Stop,
    Start,
}

pub fn run(ctx: &Context, action: Action, service: &str) -> Result<()> {
    require_root(match action {
        Action::Restart => "restart",
        Action::Stop => "stop",
        Action::Start => "start",
    })?;
    let _lock = ctx.state.lock()?;
    let (stack_filter, service) = stackfile::qualified(service);
    let stacks: Vec<String> = ctx
        .state
        .stacks()?
        .into_keys()
        .filter(|s| stack_filter.is_none_or(|f| f == s))
        .filter(|s| {
            runfile::read_run(&ctx.state.stack_dir(s))
                .specs
                .iter()
                .any(|r| r.service == service)
        })
        .collect();
    if stacks.is_empty() {
        return Err(
            Failure::new(format!("no service {service:?} with a command in any stack that is up"))
                .hint("`plumb ps` lists the services")
                .code(2),
        );
    }
    let stack = stackfile::one_stack(stacks, |s| s.as_str()).map_err(|stacks| {
        let stacks: Vec<&str> = stacks.iter().map(|s| s.as_str()).collect();
        stackfile::in_several_stacks(&format!("service {service:?}"), &stacks)
    })?;
    let dir = ctx.state.stack_dir(&stack);
    let pid = runfile::live_supervisor(&dir).ok_or_else(|| {
        Failure::new(format!("stack {stack} has no running supervisor")).hint("`plumb up` starts it again")
    })?;
    let mut run = runfile::read_run(&dir);
    match action {
        Action::Stop => {
            run.stopped.insert(service.to_string());
        }
        Action::Start => {
            run.stopped.remove(service);
        }
        Action::Restart => {
            run.stopped.remove(service);
            *run.restarts.entry(service.to_string()).or_default() += 1;
        }
    }
    run.generation += 1;
    runfile::write_json(&runfile::run_path(&dir), &run)?;
    runfile::signal_and_wait(&dir, pid, run.generation, Duration::from_secs(10))?;
    if action == Action::Stop {
        let grace = run
            .specs
            .iter()
            .filter(|s| s.service == service)
            .map(|s| s.stop_grace_ms)
            .max()
            .unwrap_or(0);
        let stopped = runfile::wait_until(Duration::from_millis(grace) + Duration::from_secs(5), || {
            runfile::read_status(&dir)
                .replicas
                .values()
                .all(|r| r.service != service || r.state == ReplicaState::Stopped)
        });
        if !stopped {
            return Err(Failure::new(format!("{service} did not stop in time")));
        }
        say!("{stack}/{service}: stopped");
    } else {
        processes::wait_until_ready(&dir, &run, HealthWait::Dependencies)?;
        say!(
            "{stack}/{service}: {}",
            if action == Action::Start {
                "started"
            } else {
                "restarted"
            }
        );
    }
    Ok(())
}

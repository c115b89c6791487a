//! The supervisor's autoscaler: every `TICK` it measures each autoscaled service's replicas,
//! hands the samples to its recommender (`plumb_core::autoscale`, Kubernetes' HPA) and, when
//! the count should change, scales the service the way a person would: it runs `plumb scale
//! --stack STACK SERVICE=N` as its child. That command goes through the engine under the
//! state directory's lock, drains replicas on their way out, and hands the new `run.json`
//! back to this supervisor like any other; the supervisor itself never takes the lock (it
//! would wait on a command that waits on it). One scale at a time: while its child runs, the
//! autoscaler measures nothing and decides nothing.
//!
//! What is measured, per replica:
//! - `requests_per_second`: new connections per second its VIP sent it (the endpoint chain's
//!   nft counter, read once per tick for the stack's table). At L4 a request is not visible:
//!   this is the request rate for clients that open a connection per request (HTTP/1.0
//!   servers such as python's http.server close after each answer), less for keep-alive ones.
//! - `connections`: established TCP connections through its VIP (conntrack, once per tick).
//! - `cpu`: CPU time its cgroup used over the tick, in percent of its `cpus` limit.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::SigSet;
use plumb_core::autoscale::{Autoscaler, Decision, ReplicaSample, Tick};
use plumb_core::desired::Desired;
use plumb_core::firewall::vips;
use plumb_core::kernel::{Flow, Kernel};
use plumb_core::services::RunSpec;
use plumb_core::spec::AutoscaleSpec;

use super::event_loop::say;
use crate::events;
use crate::runfile::{self, AutoscaleDecision, AutoscaleFile, AutoscaleMetric, AutoscaleStatus};

/// How often the autoscaler measures and decides (Kubernetes: every 15 s; shorter here so a
/// scale follows a load step within seconds).
pub const TICK: Duration = Duration::from_secs(3);
/// The decisions `plumb autoscale status` keeps per service.
const DECISIONS_KEPT: usize = 10;

/// One replica as the supervisor runs it this tick.
pub struct Running<'a> {
    pub spec: &'a RunSpec,
    /// It has a process and takes connections (as the balancer sees it).
    pub ready: bool,
}

/// Counters read at the previous tick, to turn them into rates.
#[derive(Default)]
struct Seen {
    at: Option<Instant>,
    connections_made: BTreeMap<String, u64>,
    cpu_usec: BTreeMap<String, u64>,
}

struct Scaled {
    recommender: Autoscaler,
    seen: Seen,
    status: AutoscaleStatus,
}

/// The `plumb scale` the autoscaler started, and the decisions it applies.
struct Scaling {
    child: Child,
    services: Vec<String>,
}

pub struct Autoscaling {
    /// The recommender's clock starts here.
    started: Instant,
    next: Option<Instant>,
    services: BTreeMap<String, Scaled>,
    scaling: Option<Scaling>,
    /// The state directory and the stack (what `plumb scale` is told).
    state_root: PathBuf,
    stack: String,
    dir: PathBuf,
}

impl Autoscaling {
    pub fn new(dir: &Path, stack: &str) -> Self {
        Autoscaling {
            started: Instant::now(),
            next: None,
            services: BTreeMap::new(),
            scaling: None,
            // STATE_DIR/stacks/STACK.
            state_root: dir
                .parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .unwrap_or_default(),
            stack: stack.to_string(),
            dir: dir.to_path_buf(),
        }
    }

    /// A new `run.json`: follows which services scale and how (a changed spec starts its
    /// recommender afresh; counters carry over).
    pub fn reload(&mut self, desired: Option<&Desired>) {
        // A cluster stack's count is the store's (`plumb scale` refuses it): not scaled here.
        let local = desired.filter(|d| d.store.is_empty() && d.remote.is_empty());
        let specs: BTreeMap<&str, &AutoscaleSpec> = local
            .iter()
            .flat_map(|d| d.services.iter())
            .filter_map(|s| Some((s.name.as_str(), s.autoscale.as_ref()?)))
            .collect();
        self.services
            .retain(|name, s| specs.get(name.as_str()) == Some(&s.recommender.spec()));
        for (name, spec) in specs {
            self.services.entry(name.to_string()).or_insert_with(|| Scaled {
                recommender: Autoscaler::new(spec.clone()),
                seen: Seen::default(),
                status: AutoscaleStatus {
                    service: name.to_string(),
                    min: spec.min,
                    max: spec.max,
                    ..Default::default()
                },
            });
        }
        if self.services.is_empty() {
            let _ = std::fs::remove_file(runfile::autoscale_path(&self.dir));
        }
    }

    /// When the next tick is due (None: nothing scales).
    pub fn deadline(&self) -> Option<Instant> {
        (!self.services.is_empty() || self.scaling.is_some()).then(|| self.next.unwrap_or_else(Instant::now))
    }

    /// A tick is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        (!self.services.is_empty() || self.scaling.is_some()) && self.next.is_none_or(|t| now >= t)
    }

    /// Measures and decides, if a tick is due; `replicas`: every replica the supervisor runs.
    pub fn tick(&mut self, now: Instant, desired: Option<&Desired>, replicas: &[Running], kernel: &mut dyn Kernel) {
        if !self.due(now) {
            return;
        }
        self.next = Some(now + TICK);
        if !self.scaling_done() {
            self.write();
            return;
        }
        let Some(desired) = desired else { return };
        let wants = |f: fn(&AutoscaleSpec) -> bool| self.services.values().any(|s| f(s.recommender.spec()));
        let counts = if wants(|a| a.requests_per_second.is_some()) {
            endpoint_counts(kernel, &self.stack)
        } else {
            None
        };
        let flows = if wants(|a| a.connections.is_some()) {
            kernel.conntrack().ok()
        } else {
            None
        };
        let clock = now.duration_since(self.started);
        let mut scales = Vec::new();
        for (name, scaled) in self.services.iter_mut() {
            let Some(service) = desired.services.iter().find(|s| &s.name == name) else {
                continue;
            };
            let members: Vec<&Running> = replicas
                .iter()
                .filter(|r| r.spec.service == *name && service.containers.contains(&r.spec.container))
                .collect();
            let current = u32::try_from(members.len()).unwrap_or(u32::MAX);
            let samples = sample(
                &mut scaled.seen,
                now,
                &members,
                desired,
                service.vip,
                counts.as_ref(),
                flows.as_deref(),
                kernel,
            );
            let decision = scaled.recommender.decide(Tick {
                now: clock,
                current,
                replicas: &samples,
            });
            show(&mut scaled.status, &decision);
            if decision.scales() {
                let detail = format!("{} -> {}: {}", decision.current, decision.desired, decision.reason);
                say(&format!("autoscale {name}: {detail}"));
                events::record(&self.dir, &self.stack, name, "autoscaled", detail);
                scaled.status.decisions.push(AutoscaleDecision {
                    ts_ms: runfile::unix_ms(),
                    from: decision.current,
                    to: decision.desired,
                    reason: decision.reason.clone(),
                    outcome: "scaling".into(),
                });
                let excess = scaled.status.decisions.len().saturating_sub(DECISIONS_KEPT);
                scaled.status.decisions.drain(..excess);
                scaled.status.scaling_to = Some(decision.desired);
                scales.push((name.clone(), decision.desired));
            }
        }
        if !scales.is_empty() {
            self.scale(&scales);
        }
        self.write();
    }

    /// Runs `plumb scale` for the decisions of this tick.
    fn scale(&mut self, scales: &[(String, u32)]) {
        let services: Vec<String> = scales.iter().map(|(s, _)| s.clone()).collect();
        let exe = match std::env::current_exe() {
            Ok(exe) => exe,
            Err(e) => return self.finish(&services, &format!("failed: cannot find plumb: {e}")),
        };
        let mut command = Command::new(exe);
        command
            .arg("--state-dir")
            .arg(&self.state_root)
            .args(["scale", "--stack", &self.stack])
            .args(scales.iter().map(|(s, n)| format!("{s}={n}")))
            .stdin(Stdio::null());
        // SAFETY: only sigprocmask runs between fork and exec: the command must not inherit
        // the signals the supervisor blocks (it waits on its own children).
        unsafe {
            command.pre_exec(|| SigSet::empty().thread_set_mask().map_err(Into::into));
        }
        match command.spawn() {
            Ok(child) => self.scaling = Some(Scaling { child, services }),
            Err(e) => self.finish(&services, &format!("failed: cannot run plumb scale: {e}")),
        }
    }

    /// True when no scale is under way (the last one, if any, is told how it went).
    fn scaling_done(&mut self) -> bool {
        let Some(scaling) = self.scaling.as_mut() else {
            return true;
        };
        let outcome = match scaling.child.try_wait() {
            Ok(None) => return false,
            Ok(Some(status)) if status.success() => "done".to_string(),
            Ok(Some(status)) => format!("failed: plumb scale {status} (see supervisor.log)"),
            Err(e) => format!("failed: {e}"),
        };
        let services = std::mem::take(&mut scaling.services);
        self.scaling = None;
        self.finish(&services, &outcome);
        true
    }

    /// Tells how applying the last decisions of `services` went.
    fn finish(&mut self, services: &[String], outcome: &str) {
        for name in services {
            if let Some(s) = self.services.get_mut(name) {
                s.status.scaling_to = None;
                if let Some(d) = s.status.decisions.last_mut() {
                    d.outcome = outcome.to_string();
                }
                if outcome != "done" {
                    events::record(&self.dir, &self.stack, name, "autoscale_failed", outcome);
                }
            }
        }
    }

    /// The supervisor stops: a scale under way is ended (its lock goes with it), so that
    /// nothing starts a supervisor again behind `down`.
    pub fn stop(&mut self) {
        if let Some(mut scaling) = self.scaling.take() {
            let _ = scaling.child.kill();
            let _ = scaling.child.wait();
        }
    }

    fn write(&self) {
        if self.services.is_empty() {
            return;
        }
        let file = AutoscaleFile {
            updated_ms: runfile::unix_ms(),
            services: self.services.values().map(|s| s.status.clone()).collect(),
        };
        if let Err(e) = runfile::write_json(&runfile::autoscale_path(&self.dir), &file) {
            say(&format!("autoscale.json: {}", e.message));
        }
    }
}

/// The connections each endpoint (container) received through the stack's VIPs so far.
fn endpoint_counts(kernel: &mut dyn Kernel, stack: &str) -> Option<BTreeMap<String, u64>> {
    vips::stack_endpoint_counts(&kernel.nft_ruleset().ok()?, stack)
}

/// This tick's sample of each replica, and the counters kept for the next.
#[allow(clippy::too_many_arguments)]
fn sample(
    seen: &mut Seen,
    now: Instant,
    members: &[&Running],
    desired: &Desired,
    vip: Option<Ipv4Addr>,
    counts: Option<&BTreeMap<String, u64>>,
    flows: Option<&[Flow]>,
    kernel: &mut dyn Kernel,
) -> Vec<ReplicaSample> {
    let elapsed = seen
        .at
        .map(|at| now.duration_since(at).as_secs_f64())
        .filter(|s| *s > 0.0);
    let mut next = Seen {
        at: Some(now),
        ..Seen::default()
    };
    let samples = members
        .iter()
        .map(|r| {
            let name = &r.spec.container;
            let requests_per_second = counts.and_then(|counts| {
                let made = counts.get(name).copied().unwrap_or(0);
                next.connections_made.insert(name.clone(), made);
                let before = *seen.connections_made.get(name)?;
                // A counter that went back (its chain made again) is no sample.
                Some((made.checked_sub(before)? as f64) / elapsed?)
            });
            let connections = flows.map(|flows| {
                let addresses: BTreeSet<Ipv4Addr> = desired
                    .container(name)
                    .map(|c| c.interfaces.iter().map(|i| i.address).collect())
                    .unwrap_or_default();
                flows
                    .iter()
                    .filter(|f| f.protocol == "tcp" && f.state == "ESTABLISHED")
                    .filter(|f| Some(f.original.dst) == vip && addresses.contains(&f.reply.src))
                    .count() as f64
            });
            let cpu_percent = r.spec.limits.cpus.and_then(|cpus| {
                let usage = kernel.cgroup_usage(&super::spawn::cgroup_path(r.spec))?;
                next.cpu_usec.insert(name.clone(), usage.cpu_usec);
                let before = *seen.cpu_usec.get(name)?;
                let used = usage.cpu_usec.checked_sub(before)? as f64 / 1e6;
                Some(used / elapsed? / cpus * 100.0)
            });
            ReplicaSample {
                ready: r.ready,
                cpu_percent,
                requests_per_second,
                connections,
            }
        })
        .collect();
    *seen = next;
    samples
}

/// The status lines of a decision.
fn show(status: &mut AutoscaleStatus, decision: &Decision) {
    status.current = decision.current;
    status.desired = decision.desired;
    status.reason = decision.reason.clone();
    status.metrics = decision
        .proposals
        .iter()
        .map(|p| AutoscaleMetric {
            metric: p.metric.as_str().to_string(),
            value: p.average,
            target: p.target,
            replicas: p.replicas,
        })
        .collect();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_directory_is_two_folders_up() {
        let a = Autoscaling::new(Path::new("/var/lib/plumb/stacks/shop"), "shop");
        assert_eq!(a.state_root, Path::new("/var/lib/plumb"));
        assert_eq!(a.deadline(), None);
        assert!(!a.due(Instant::now()));
    }
}

//! `plumb ps`: the containers of every stack that is up, with their namespaces, interfaces,
//! addresses, published ports and, for services with a command, their process.

use plumb_core::Container;
use serde::{Serialize, Serializer};

use super::{Context, Format};
use crate::failure::Result;
use crate::output::{print_json, table};
use crate::runfile::{self, Health, ReplicaState, StatusFile};

#[derive(Serialize)]
struct Row<'a> {
    stack: &'a str,
    container: &'a str,
    service: &'a str,
    replica: u32,
    namespace: &'a str,
    /// The namespace exists under /run/netns.
    present: bool,
    interfaces: Vec<Iface<'a>>,
    ports: Vec<String>,
    /// The supervised process, for containers with a command.
    process: Option<Process>,
}

#[derive(Serialize)]
struct Iface<'a> {
    name: &'a str,
    network: &'a str,
    address: String,
    host_veth: &'a str,
    bridge: &'a str,
}

#[derive(Serialize)]
struct Process {
    state: ProcessState,
    health: Option<Health>,
    pid: Option<u32>,
    restarts: u32,
    uptime_seconds: Option<u64>,
}

/// What `ps` knows of a process: its supervisor's report, or that none is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProcessState {
    Supervised(ReplicaState),
    NoSupervisor,
}

impl ProcessState {
    fn as_str(self) -> &'static str {
        match self {
            ProcessState::Supervised(state) => state.as_str(),
            ProcessState::NoSupervisor => "no supervisor",
        }
    }
}

/// As the bare name (`"running"`, `"no supervisor"`), like the table shows it.
impl Serialize for ProcessState {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

pub fn run(ctx: &Context, format: Format) -> Result<()> {
    let stacks = ctx.state.stacks()?;
    let mut rows = Vec::new();
    for st in stacks.values() {
        let Some(desired) = &st.desired else { continue };
        let dir = ctx.state.stack_dir(&st.stack);
        let status = runfile::live_supervisor(&dir).map(|_| runfile::read_status(&dir));
        rows.extend(desired.containers.iter().map(|c| row(&st.stack, c, status.as_ref())));
    }
    if format == Format::Json {
        print_json(&rows);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no stack is up");
        return Ok(());
    }
    let dash = || "-".to_string();
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let p = r.process.as_ref();
            let state = match (r.present, p) {
                (false, _) => "missing".to_string(),
                (true, None) => "up".to_string(),
                (true, Some(p)) => p.state.as_str().to_string(),
            };
            vec![
                r.stack.to_string(),
                r.container.to_string(),
                state,
                p.and_then(|p| p.health).map_or_else(dash, |h| h.to_string()),
                p.and_then(|p| p.pid).map_or_else(dash, |p| p.to_string()),
                p.map_or_else(dash, |p| p.restarts.to_string()),
                p.and_then(|p| p.uptime_seconds).map_or_else(dash, uptime),
                r.namespace.to_string(),
                r.interfaces
                    .iter()
                    .map(|i| format!("{} {} ({})", i.name, i.address, i.network))
                    .collect::<Vec<_>>()
                    .join(", "),
                r.ports.join(", "),
            ]
        })
        .collect();
    let headers = [
        "STACK",
        "CONTAINER",
        "STATE",
        "HEALTH",
        "PID",
        "RESTARTS",
        "UPTIME",
        "NAMESPACE",
        "INTERFACES",
        "PORTS",
    ];
    print!("{}", table(&headers, &cells));
    Ok(())
}

fn row<'a>(stack: &'a str, c: &'a Container, status: Option<&StatusFile>) -> Row<'a> {
    let now = runfile::unix_ms();
    let process = c.process.as_ref().map(|_| {
        let s = status.and_then(|s| s.replicas.get(&c.name));
        Process {
            state: s.map_or(ProcessState::NoSupervisor, |s| ProcessState::Supervised(s.state)),
            health: s.and_then(|s| s.health),
            pid: s.and_then(|s| s.pid),
            restarts: s.map_or(0, |s| s.restarts),
            uptime_seconds: s.and_then(|s| s.up_for(now)).map(|d| d.as_secs()),
        }
    });
    Row {
        stack,
        container: &c.name,
        service: &c.service,
        replica: c.replica,
        namespace: &c.netns,
        present: plumb_linux::netns::path(&c.netns).exists(),
        interfaces: c
            .interfaces
            .iter()
            .map(|i| Iface {
                name: &i.name,
                network: &i.network,
                address: i.cidr().to_string(),
                host_veth: &i.host_veth,
                bridge: &i.bridge,
            })
            .collect(),
        ports: c.ports.iter().map(|p| p.to_string()).collect(),
        process,
    }
}

fn uptime(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names_process_states_as_the_table_does() {
        let json = |state| serde_json::to_value(state).unwrap();
        assert_eq!(json(ProcessState::Supervised(ReplicaState::Backoff)), "backoff");
        assert_eq!(json(ProcessState::NoSupervisor), "no supervisor");
    }
}

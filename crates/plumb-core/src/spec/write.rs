//! Writing a stack as a plumb stack file (`plumb convert`): TOML that parses back to the same
//! [`Stack`]. Every setting is written out, defaults included, so the file says what runs.

use std::fmt::Write as _;

use super::capabilities::CapabilitySet;
use super::model::*;

/// The stack as plumb's TOML stack file, or why it cannot be written (policies and
/// experiments, which no Compose file holds, are not written yet).
pub fn to_toml(stack: &Stack) -> Result<String, String> {
    if !stack.policies.is_empty() || !stack.experiments.is_empty() {
        return Err("policies and experiments are not written by convert yet".into());
    }
    let mut out = String::new();
    let _ = writeln!(out, "name = {}", quote(&stack.name));
    let _ = writeln!(out, "service_subnet = {}", quote(&stack.service_subnet.to_string()));
    if let Some(m) = stack.metrics {
        let _ = writeln!(out, "metrics = {}", quote(&m.to_string()));
    }
    if let Some(u) = stack.ui {
        let _ = writeln!(out, "ui = {}", quote(&u.to_string()));
    }
    for (name, net) in &stack.networks {
        let _ = writeln!(out, "\n[networks.{name}]");
        let _ = writeln!(out, "subnet = {}", quote(&net.subnet.to_string()));
        let _ = writeln!(out, "gateway = {}", quote(&net.gateway.to_string()));
        if net.internal {
            let _ = writeln!(out, "internal = true");
        }
        if let Some(o) = net.overlay {
            let _ = writeln!(
                out,
                "driver = \"overlay\"\nvni = {}\nhost_prefix = {}",
                o.vni, o.host_prefix
            );
        }
    }
    for (name, svc) in &stack.services {
        service(&mut out, name, svc);
    }
    Ok(out)
}

fn service(out: &mut String, name: &str, svc: &ServiceSpec) {
    let _ = writeln!(out, "\n[services.{name}]");
    if svc.networks.iter().any(|a| a.ip.is_some()) {
        let items: Vec<String> = svc
            .networks
            .iter()
            .map(|a| match a.ip {
                Some(ip) => format!("{} = {{ ip = {} }}", quote(&a.network), quote(&ip.to_string())),
                None => format!("{} = {{}}", quote(&a.network)),
            })
            .collect();
        let _ = writeln!(out, "networks = {{ {} }}", items.join(", "));
    } else {
        let names: Vec<&str> = svc.networks.iter().map(|a| a.network.as_str()).collect();
        let _ = writeln!(out, "networks = {}", list(&names));
    }
    let _ = writeln!(out, "replicas = {}", svc.replicas);
    if !svc.ports.is_empty() {
        let ports: Vec<String> = svc
            .ports
            .iter()
            .map(|p| {
                let ip = p.host_ip.map(|ip| format!("{ip}:")).unwrap_or_default();
                format!("{ip}{}:{}/{}", p.host, p.container, p.protocol.as_str())
            })
            .collect();
        let _ = writeln!(out, "ports = {}", list(&ports));
    }
    if !svc.expose.is_empty() {
        let ports: Vec<String> = svc.expose.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "expose = {}", list(&ports));
    }
    if svc.lb != Balance::RoundRobin {
        let _ = writeln!(out, "lb = {}", quote(svc.lb.as_str()));
    }
    if let Some(a) = svc.affinity {
        let _ = writeln!(out, "affinity = \"client-ip\"\naffinity_timeout = {}", duration(a));
    }
    if !svc.aliases.is_empty() {
        let _ = writeln!(out, "aliases = {}", list(&svc.aliases));
    }
    if let Some(host) = &svc.placement {
        let _ = writeln!(out, "placement = {{ host = {} }}", quote(host));
    }
    if let Some(image) = &svc.image {
        let _ = writeln!(out, "image = {}", quote(&image.name));
        if let Some(b) = &image.build {
            let _ = writeln!(
                out,
                "build = {{ context = {}, dockerfile = {} }}",
                quote(&b.context),
                quote(&b.dockerfile)
            );
        }
    }
    if let Some(a) = &svc.autoscale {
        autoscale(out, a);
    }
    if let Some(p) = &svc.process {
        process(out, p);
    }
}

fn autoscale(out: &mut String, a: &AutoscaleSpec) {
    let mut fields = vec![format!("min = {}", a.min), format!("max = {}", a.max)];
    if let Some(cpu) = a.cpu_percent {
        fields.push(format!("cpu = \"{cpu}%\""));
    }
    if let Some(rps) = a.requests_per_second {
        fields.push(format!("requests_per_second = {rps}"));
    }
    if let Some(c) = a.connections {
        fields.push(format!("connections = {c}"));
    }
    fields.push(format!("scale_down_window = {}", duration(a.scale_down_window)));
    fields.push(format!("scale_up_period = {}", duration(a.scale_up_period)));
    let _ = writeln!(out, "autoscale = {{ {} }}", fields.join(", "));
}

fn process(out: &mut String, p: &ProcessSpec) {
    // An image service without a command runs the image's own.
    if !p.command.is_empty() {
        let _ = writeln!(out, "command = {}", list(&p.command));
    }
    if !p.env.is_empty() {
        let vars: Vec<String> = p
            .env
            .iter()
            .map(|(k, v)| format!("{} = {}", quote(k), quote(v)))
            .collect();
        let _ = writeln!(out, "env = {{ {} }}", vars.join(", "));
    }
    if let Some(w) = &p.workdir {
        let _ = writeln!(out, "workdir = {}", quote(w));
    }
    if let Some(u) = &p.user {
        let _ = writeln!(out, "user = {}", quote(u));
    }
    let restart = match p.restart {
        RestartPolicy::No => "no",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Always => "always",
    };
    let _ = writeln!(out, "restart = {}", quote(restart));
    if let Some(h) = &p.health {
        let probe = match &h.probe {
            Probe::Tcp { port } => format!("tcp = {port}"),
            Probe::Http { path, port } => format!("http = {}, port = {port}", quote(path)),
            Probe::Exec { command } => format!("exec = {}", list(command)),
        };
        let _ = writeln!(
            out,
            "health = {{ {probe}, interval = {}, timeout = {}, retries = {}, start_period = {} }}",
            duration(h.interval),
            duration(h.timeout),
            h.retries,
            duration(h.start_period)
        );
    }
    if !p.depends_on.is_empty() {
        let deps: Vec<String> = p
            .depends_on
            .iter()
            .map(|d| {
                let condition = match d.condition {
                    Condition::Started => "started",
                    Condition::Healthy => "healthy",
                };
                format!("{} = {{ condition = {} }}", quote(&d.service), quote(condition))
            })
            .collect();
        let _ = writeln!(out, "depends_on = {{ {} }}", deps.join(", "));
    }
    let _ = writeln!(out, "stop_grace = {}", duration(p.stop_grace));
    // cap_add is what a non-root user holds; cap_drop what root lacks of Docker's set.
    let caps = p.capabilities;
    let added: Vec<&str> = caps.user.names().collect();
    let dropped: Vec<&str> = (CapabilitySet::docker_default() - caps.root).names().collect();
    if !added.is_empty() {
        let _ = writeln!(out, "cap_add = {}", list(&added));
    }
    if !dropped.is_empty() {
        let _ = writeln!(out, "cap_drop = {}", list(&dropped));
    }
}

/// A TOML basic string: JSON's escapes are TOML's.
fn quote(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn list<S: AsRef<str>>(items: &[S]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s.as_ref())).collect();
    format!("[{}]", quoted.join(", "))
}

fn duration(d: std::time::Duration) -> String {
    quote(&humantime::format_duration(d).to_string())
}

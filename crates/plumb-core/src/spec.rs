//! The stack file: its TOML shape, and validation into a typed [`Stack`].
//! Every check runs before anything touches the kernel, and every problem found is reported
//! with the file, line and field it comes from.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::ops::Range;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::diag::{Diagnostic, Diagnostics, SourceMap};

/// The longest stack name: it prefixes namespace names and nft table names.
pub const MAX_STACK_NAME: usize = 12;
/// The most ports a Linux bridge takes (the kernel's BR_MAX_PORTS, less the reserved port 0).
pub const MAX_BRIDGE_PORTS: u64 = 1023;
/// Container names become hostnames, which the kernel limits to 64 bytes.
pub const MAX_CONTAINER_NAME: usize = 64;

/// A validated stack file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stack {
    pub name: String,
    pub networks: BTreeMap<String, NetworkSpec>,
    pub services: BTreeMap<String, ServiceSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// No egress NAT, no published ports, no forwarding in or out.
    pub internal: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Networks in interface order (`eth0` first), each with an optional static address.
    pub networks: Vec<Attachment>,
    pub replicas: u32,
    pub ports: Vec<PortSpec>,
    /// `None` for a bare container: a namespace wired into its networks, no process.
    pub process: Option<ProcessSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub network: String,
    pub ip: Option<Ipv4Addr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// `HOST:CONTAINER[/udp]`: host port forwarded to the container port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortSpec {
    pub host: u16,
    pub container: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessSpec {
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub restart: RestartPolicy,
    pub health: Option<HealthSpec>,
    pub depends_on: Vec<Dependency>,
    pub stop_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    No,
    OnFailure,
    Always,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    Tcp { port: u16 },
    Http { path: String, port: u16 },
    Exec { command: Vec<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    pub service: String,
    pub condition: Condition,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    /// The dependency's processes have been started.
    Started,
    /// The dependency's health probe passes on every replica.
    Healthy,
}

// ---- The TOML shape, with spans so errors can point into the file. ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStack {
    name: Spanned<String>,
    #[serde(default)]
    networks: BTreeMap<Spanned<String>, RawNetwork>,
    #[serde(default)]
    services: BTreeMap<Spanned<String>, RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    subnet: Spanned<String>,
    gateway: Option<Spanned<String>>,
    internal: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    // Table-valued fields are not `Spanned`: toml 0.8 fails on spanned tables written as
    // `[services.x.networks.y]` headers. Their place is found with `Validator::locate`.
    networks: Option<toml::Value>,
    replicas: Option<Spanned<i64>>,
    ports: Option<Vec<Spanned<String>>>,
    command: Option<Spanned<toml::Value>>,
    env: Option<BTreeMap<String, toml::Value>>,
    workdir: Option<Spanned<String>>,
    user: Option<Spanned<String>>,
    restart: Option<Spanned<String>>,
    health: Option<RawHealth>,
    depends_on: Option<toml::Value>,
    stop_grace: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    tcp: Option<Spanned<i64>>,
    http: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    exec: Option<Spanned<toml::Value>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    retries: Option<Spanned<i64>>,
    start_period: Option<Spanned<String>>,
}

/// The table-valued fields of a service, with the place each was found in the file.
struct Located {
    networks: Option<Spanned<toml::Value>>,
    env: Option<Spanned<BTreeMap<String, toml::Value>>>,
    health: Option<Spanned<RawHealth>>,
    depends_on: Option<Spanned<toml::Value>>,
}

/// A parsed stack together with where each field sits in its file, so later checks that need
/// the machine (is the command installed? is the port free?) can still point at the line.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub stack: Stack,
    pub file: String,
    pub text: String,
    /// Field path (as in diagnostics) → byte range in `text`.
    pub spans: HashMap<String, Range<usize>>,
}

impl Parsed {
    /// A diagnostic about a field of this file, for checks made outside the core.
    pub fn error(&self, field: &str, message: impl Into<String>, hint: impl Into<String>) -> Diagnostic {
        let map = SourceMap {
            file: &self.file,
            text: &self.text,
        };
        map.error(self.spans.get(field).cloned(), field, message, hint)
    }
}

/// Parses and validates a stack file. `file` names it in diagnostics.
pub fn parse(file: &str, text: &str) -> Result<Parsed, Diagnostics> {
    let map = SourceMap { file, text };
    let raw: RawStack = toml::from_str(text).map_err(|e| {
        Diagnostics(vec![map.error(
            e.span(),
            "",
            e.message().trim().to_string(),
            "see docs/stack-file.md for the stack file's fields",
        )])
    })?;
    let mut v = Validator {
        map: &map,
        errors: Vec::new(),
        spans: HashMap::new(),
    };
    let stack = v.stack(raw);
    if v.errors.is_empty() {
        Ok(Parsed {
            stack,
            file: file.to_string(),
            text: text.to_string(),
            spans: v.spans,
        })
    } else {
        Err(Diagnostics(v.errors))
    }
}

struct Validator<'a> {
    map: &'a SourceMap<'a>,
    errors: Vec<Diagnostic>,
    spans: HashMap<String, Range<usize>>,
}

impl Validator<'_> {
    fn err(&mut self, span: Range<usize>, field: &str, message: impl Into<String>, hint: impl Into<String>) {
        let d = self.map.error(Some(span), field, message, hint);
        self.errors.push(d);
    }

    /// Where `word` first appears after the service key at `from` (its field or its
    /// `[services.x.word]` header); the key itself if not found.
    fn locate(&self, from: Range<usize>, word: &str) -> Range<usize> {
        self.map.text[from.start..]
            .find(word)
            .map(|i| from.start + i..from.start + i + word.len())
            .unwrap_or(from)
    }

    fn stack(&mut self, raw: RawStack) -> Stack {
        let name = raw.name.get_ref().clone();
        if !valid_name(&name, MAX_STACK_NAME) {
            self.err(
                raw.name.span(),
                "name",
                format!("stack name {name:?} is not valid"),
                format!("use 1 to {MAX_STACK_NAME} lowercase letters, digits or '-', starting with a letter (it prefixes namespace and nft table names)"),
            );
        }
        let mut networks = BTreeMap::new();
        for (key, raw_net) in raw.networks {
            let net_name = key.get_ref().clone();
            let field = format!("networks.{net_name}");
            self.spans.insert(field.clone(), key.span());
            if !valid_name(&net_name, 32) {
                self.err(
                    key.span(),
                    &field,
                    format!("network name {net_name:?} is not valid"),
                    "use 1 to 32 lowercase letters, digits or '-', starting with a letter",
                );
            }
            if let Some(spec) = self.network(&field, raw_net) {
                networks.insert(net_name, spec);
            }
        }
        self.check_overlaps(&networks);
        let service_names: BTreeSet<String> = raw.services.keys().map(|k| k.get_ref().clone()).collect();
        let mut services = BTreeMap::new();
        let mut dep_spans = BTreeMap::new();
        for (key, mut raw_svc) in raw.services {
            let svc_name = key.get_ref().clone();
            let field = format!("services.{svc_name}");
            self.spans.insert(field.clone(), key.span());
            let replicas = raw_svc.replicas.as_ref().map_or(1, |r| *r.get_ref());
            let longest = format!("{svc_name}-{}", replicas.max(1));
            if !valid_name(&svc_name, 48) {
                self.err(
                    key.span(),
                    &field,
                    format!("service name {svc_name:?} is not valid"),
                    "use lowercase letters, digits or '-', starting with a letter",
                );
            } else if longest.len() > MAX_CONTAINER_NAME {
                self.err(
                    key.span(),
                    &field,
                    format!("container name {longest:?} is longer than the kernel's {MAX_CONTAINER_NAME}-byte hostname limit"),
                    "use a shorter service name",
                );
            }
            let located = Located {
                networks: raw_svc
                    .networks
                    .clone()
                    .map(|v| Spanned::new(self.locate(key.span(), "networks"), v)),
                env: raw_svc
                    .env
                    .clone()
                    .map(|v| Spanned::new(self.locate(key.span(), "env"), v)),
                health: raw_svc
                    .health
                    .take()
                    .map(|v| Spanned::new(self.locate(key.span(), "health"), v)),
                depends_on: raw_svc
                    .depends_on
                    .clone()
                    .map(|v| Spanned::new(self.locate(key.span(), "depends_on"), v)),
            };
            if let Some(dep) = &located.depends_on {
                dep_spans.insert(svc_name.clone(), dep.span());
            }
            let svc = self.service(&field, &svc_name, raw_svc, located, &networks, &service_names);
            services.insert(svc_name, svc);
        }
        self.check_ports(&services, &networks);
        self.check_bridge_ports(&services);
        self.check_static_ips(&services, &networks);
        self.check_cycles(&services, &dep_spans);
        Stack {
            name,
            networks,
            services,
        }
    }

    fn network(&mut self, field: &str, raw: RawNetwork) -> Option<NetworkSpec> {
        let subnet_field = format!("{field}.subnet");
        self.spans.insert(subnet_field.clone(), raw.subnet.span());
        let text = raw.subnet.get_ref();
        let subnet = match text.parse::<Ipv4Net>() {
            Ok(net) => net,
            Err(_) if text.contains(':') => {
                self.err(
                    raw.subnet.span(),
                    &subnet_field,
                    format!("IPv6 subnet {text:?} is not supported yet"),
                    "give an IPv4 subnet such as \"10.89.1.0/24\"",
                );
                return None;
            }
            Err(_) => {
                self.err(
                    raw.subnet.span(),
                    &subnet_field,
                    format!("{text:?} is not a valid IPv4 CIDR"),
                    "write it as ADDRESS/PREFIX, for example \"10.89.1.0/24\"",
                );
                return None;
            }
        };
        if subnet.network() != subnet.addr() {
            self.err(
                raw.subnet.span(),
                &subnet_field,
                format!("{text:?} has host bits set"),
                format!("did you mean \"{}\"?", subnet.trunc()),
            );
            return None;
        }
        if subnet.prefix_len() > 30 {
            self.err(
                raw.subnet.span(),
                &subnet_field,
                format!("{text:?} is too small: it leaves no room for a gateway and a container"),
                "use a prefix of /30 or shorter, for example /24",
            );
            return None;
        }
        let first_host = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let gateway = match &raw.gateway {
            None => first_host,
            Some(gw) => {
                let gw_field = format!("{field}.gateway");
                match gw.get_ref().parse::<Ipv4Addr>() {
                    Ok(ip) if is_host_of(ip, subnet) => ip,
                    Ok(ip) => {
                        self.err(
                            gw.span(),
                            &gw_field,
                            format!("gateway {ip} is not a host address of {subnet}"),
                            format!("pick an address inside {subnet}, such as {first_host}"),
                        );
                        return None;
                    }
                    Err(_) => {
                        self.err(
                            gw.span(),
                            &gw_field,
                            format!("{:?} is not an IPv4 address", gw.get_ref()),
                            format!("for example \"{first_host}\""),
                        );
                        return None;
                    }
                }
            }
        };
        Some(NetworkSpec {
            subnet,
            gateway,
            internal: raw.internal.unwrap_or(false),
        })
    }

    fn check_overlaps(&mut self, networks: &BTreeMap<String, NetworkSpec>) {
        let list: Vec<_> = networks.iter().collect();
        for (i, (a_name, a)) in list.iter().enumerate() {
            for (b_name, b) in &list[i + 1..] {
                if !(a.subnet.contains(&b.subnet.network()) || b.subnet.contains(&a.subnet.network())) {
                    continue;
                }
                // Report it on whichever of the two comes later in the file.
                let field_of = |n: &str| format!("networks.{n}.subnet");
                let (first, second) = if self.spans[&field_of(a_name)].start < self.spans[&field_of(b_name)].start {
                    ((a_name, a), (b_name, b))
                } else {
                    ((b_name, b), (a_name, a))
                };
                let field = field_of(second.0);
                let span = self.spans[&field].clone();
                self.err(
                    span,
                    &field,
                    format!(
                        "{} overlaps network {:?} ({})",
                        second.1.subnet, first.0, first.1.subnet
                    ),
                    "give each network its own address range",
                );
            }
        }
    }

    fn service(
        &mut self,
        field: &str,
        name: &str,
        raw: RawService,
        located: Located,
        networks: &BTreeMap<String, NetworkSpec>,
        service_names: &BTreeSet<String>,
    ) -> ServiceSpec {
        let attachments = match &located.networks {
            Some(value) => self.attachments(field, value, networks),
            // Like compose's default network: with one network there is nothing to choose.
            None if networks.len() <= 1 => networks
                .keys()
                .map(|n| Attachment {
                    network: n.clone(),
                    ip: None,
                })
                .collect(),
            None => {
                let span = self.spans[field].clone();
                let known: Vec<_> = networks.keys().map(String::as_str).collect();
                self.err(
                    span,
                    &format!("{field}.networks"),
                    "the stack has several networks: say which this service joins",
                    format!(
                        "add networks = [...] with some of: {} (or networks = [] for no network)",
                        known.join(", ")
                    ),
                );
                Vec::new()
            }
        };
        let replicas = match &raw.replicas {
            None => 1,
            Some(r) => match u32::try_from(*r.get_ref()) {
                Ok(n) if n <= 65_000 => n,
                _ => {
                    self.err(
                        r.span(),
                        &format!("{field}.replicas"),
                        format!("replicas = {} is out of range", r.get_ref()),
                        "use a number from 0 to 65000",
                    );
                    1
                }
            },
        };
        if replicas > 1 && attachments.iter().any(|a| a.ip.is_some()) {
            let span = located.networks.as_ref().map_or(0..0, |n| n.span());
            self.err(
                span,
                &format!("{field}.networks"),
                format!("a static address cannot be shared by {replicas} replicas"),
                "drop the static ip, or use replicas = 1",
            );
        }
        let mut ports = Vec::new();
        for (i, p) in raw.ports.iter().flatten().enumerate() {
            let pfield = format!("{field}.ports[{i}]");
            self.spans.insert(pfield.clone(), p.span());
            match parse_port(p.get_ref()) {
                Ok(port) => ports.push(port),
                Err(why) => self.err(
                    p.span(),
                    &pfield,
                    format!("{:?} is not a valid port mapping: {why}", p.get_ref()),
                    "write \"HOST:CONTAINER\" or \"HOST:CONTAINER/udp\", ports 1-65535, e.g. \"8080:80\"",
                ),
            }
        }
        let process = self.process(field, name, &raw, &located, service_names);
        ServiceSpec {
            networks: attachments,
            replicas,
            ports,
            process,
        }
    }

    fn attachments(
        &mut self,
        field: &str,
        value: &Spanned<toml::Value>,
        networks: &BTreeMap<String, NetworkSpec>,
    ) -> Vec<Attachment> {
        let nfield = format!("{field}.networks");
        let span = value.span();
        self.spans.insert(nfield.clone(), span.clone());
        let mut out: Vec<Attachment> = Vec::new();
        let mut push = |v: &mut Self, net: &str, ip: Option<&toml::Value>| {
            if !networks.contains_key(net) {
                let known: Vec<_> = networks.keys().map(String::as_str).collect();
                v.err(
                    span.clone(),
                    &nfield,
                    format!("unknown network {net:?}"),
                    format!("declare [networks.{net}] or use one of: {}", known.join(", ")),
                );
                return;
            }
            if out.iter().any(|a| a.network == net) {
                v.err(
                    span.clone(),
                    &nfield,
                    format!("network {net:?} is listed twice"),
                    "list each network once",
                );
                return;
            }
            let ip = match ip {
                None => None,
                Some(toml::Value::String(s)) => match s.parse::<Ipv4Addr>() {
                    Ok(ip) => Some(ip),
                    Err(_) => {
                        v.err(
                            span.clone(),
                            &format!("{nfield}.{net}.ip"),
                            format!("{s:?} is not an IPv4 address"),
                            "for example ip = \"10.89.1.10\"",
                        );
                        None
                    }
                },
                Some(_) => {
                    v.err(
                        span.clone(),
                        &format!("{nfield}.{net}.ip"),
                        "ip must be a string",
                        "for example ip = \"10.89.1.10\"",
                    );
                    None
                }
            };
            out.push(Attachment {
                network: net.to_string(),
                ip,
            });
        };
        match value.get_ref() {
            toml::Value::Array(items) => {
                for item in items {
                    match item.as_str() {
                        Some(net) => push(self, net, None),
                        None => self.err(
                            span.clone(),
                            &nfield,
                            "network names must be strings",
                            "networks = [\"frontend\", \"backend\"]",
                        ),
                    }
                }
            }
            toml::Value::Table(table) => {
                for (net, attach) in table {
                    match attach.as_table() {
                        Some(t) => {
                            if let Some(bad) = t.keys().find(|k| k.as_str() != "ip") {
                                self.err(
                                    span.clone(),
                                    &format!("{nfield}.{net}"),
                                    format!("unknown field {bad:?}"),
                                    "the only field of a network attachment is ip",
                                );
                            }
                            push(self, net, t.get("ip"));
                        }
                        None => self.err(
                            span.clone(),
                            &format!("{nfield}.{net}"),
                            "a network attachment must be a table",
                            "write [services.SVC.networks.NET] ip = \"...\", or networks = [\"NET\"]",
                        ),
                    }
                }
            }
            _ => self.err(
                span.clone(),
                &nfield,
                "networks must be a list or a table",
                "networks = [\"frontend\"]",
            ),
        }
        out
    }

    fn process(
        &mut self,
        field: &str,
        name: &str,
        raw: &RawService,
        located: &Located,
        service_names: &BTreeSet<String>,
    ) -> Option<ProcessSpec> {
        let Some(cmd) = &raw.command else {
            let process_keys = [
                ("env", located.env.as_ref().map(|s| s.span())),
                ("workdir", raw.workdir.as_ref().map(|s| s.span())),
                ("user", raw.user.as_ref().map(|s| s.span())),
                ("restart", raw.restart.as_ref().map(|s| s.span())),
                ("health", located.health.as_ref().map(|s| s.span())),
                ("depends_on", located.depends_on.as_ref().map(|s| s.span())),
                ("stop_grace", raw.stop_grace.as_ref().map(|s| s.span())),
            ];
            for (key, span) in process_keys {
                if let Some(span) = span {
                    self.err(
                        span,
                        &format!("{field}.{key}"),
                        format!("{key} needs a command"),
                        "add command = [\"program\", \"arg\"] or remove this field",
                    );
                }
            }
            return None;
        };
        let cfield = format!("{field}.command");
        self.spans.insert(cfield.clone(), cmd.span());
        let command = match cmd.get_ref() {
            toml::Value::String(s) => split_command(s),
            toml::Value::Array(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("every argument must be a string".to_string()),
            _ => Err("must be a string or a list of strings".to_string()),
        };
        let command = match command {
            Ok(c) if !c.is_empty() && !c[0].is_empty() => c,
            Ok(_) => {
                self.err(
                    cmd.span(),
                    &cfield,
                    "command is empty",
                    "give the program to run, e.g. command = [\"nginx\", \"-g\", \"daemon off;\"]",
                );
                return None;
            }
            Err(why) => {
                self.err(
                    cmd.span(),
                    &cfield,
                    format!("command {why}"),
                    "command = [\"program\", \"arg\"] or command = \"program arg\"",
                );
                return None;
            }
        };
        let mut env = BTreeMap::new();
        if let Some(raw_env) = &located.env {
            for (k, v) in raw_env.get_ref() {
                let value = match v {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Float(f) => f.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    _ => {
                        self.err(
                            raw_env.span(),
                            &format!("{field}.env.{k}"),
                            "environment values must be strings, numbers or booleans",
                            "env = { LEVEL = \"debug\" }",
                        );
                        continue;
                    }
                };
                env.insert(k.clone(), value);
            }
        }
        let restart = match raw.restart.as_ref().map(|r| (r.get_ref().as_str(), r.span())) {
            None | Some(("on-failure", _)) => RestartPolicy::OnFailure,
            Some(("no", _)) => RestartPolicy::No,
            Some(("always", _)) => RestartPolicy::Always,
            Some((other, span)) => {
                self.err(
                    span,
                    &format!("{field}.restart"),
                    format!("unknown restart policy {other:?}"),
                    "use \"no\", \"on-failure\" or \"always\"",
                );
                RestartPolicy::OnFailure
            }
        };
        let health = located
            .health
            .as_ref()
            .and_then(|h| self.health(&format!("{field}.health"), h));
        let depends_on = located
            .depends_on
            .as_ref()
            .map(|d| self.depends_on(field, name, d, service_names))
            .unwrap_or_default();
        let stop_grace = self.duration(
            &format!("{field}.stop_grace"),
            raw.stop_grace.as_ref(),
            Duration::from_secs(10),
        );
        Some(ProcessSpec {
            command,
            env,
            workdir: raw.workdir.as_ref().map(|w| w.get_ref().clone()),
            user: raw.user.as_ref().map(|u| u.get_ref().clone()),
            restart,
            health,
            depends_on,
            stop_grace,
        })
    }

    fn health(&mut self, field: &str, raw: &Spanned<RawHealth>) -> Option<HealthSpec> {
        let h = raw.get_ref();
        let port = |v: &mut Self, p: &Spanned<i64>, name: &str| -> Option<u16> {
            match u16::try_from(*p.get_ref()) {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    v.err(
                        p.span(),
                        &format!("{field}.{name}"),
                        format!("port {} is outside 1-65535", p.get_ref()),
                        "give the port the service listens on, 1-65535",
                    );
                    None
                }
            }
        };
        let probes = [h.tcp.is_some(), h.http.is_some(), h.exec.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if probes != 1 {
            self.err(
                raw.span(),
                field,
                "a health check needs exactly one of tcp, http or exec",
                "e.g. health = { tcp = 6379 } or { http = \"/health\", port = 8080 }",
            );
            return None;
        }
        let probe = if let Some(tcp) = &h.tcp {
            Probe::Tcp {
                port: port(self, tcp, "tcp")?,
            }
        } else if let Some(path) = &h.http {
            let Some(p) = &h.port else {
                self.err(
                    path.span(),
                    &format!("{field}.port"),
                    "an http probe needs a port",
                    "add port = 8080 (the port the service listens on)",
                );
                return None;
            };
            if !path.get_ref().starts_with('/') {
                self.err(
                    path.span(),
                    &format!("{field}.http"),
                    "the http probe path must start with '/'",
                    "e.g. http = \"/health\"",
                );
            }
            Probe::Http {
                path: path.get_ref().clone(),
                port: port(self, p, "port")?,
            }
        } else {
            let exec = h.exec.as_ref()?;
            let command = match exec.get_ref() {
                toml::Value::String(s) => split_command(s).ok(),
                toml::Value::Array(a) => a.iter().map(|i| i.as_str().map(str::to_string)).collect(),
                _ => None,
            };
            match command {
                Some(c) if !c.is_empty() => Probe::Exec { command: c },
                _ => {
                    self.err(
                        exec.span(),
                        &format!("{field}.exec"),
                        "exec must be a non-empty command",
                        "e.g. exec = [\"redis-cli\", \"ping\"]",
                    );
                    return None;
                }
            }
        };
        let retries = match &h.retries {
            None => 3,
            Some(r) => u32::try_from(*r.get_ref()).unwrap_or_else(|_| {
                self.err(
                    r.span(),
                    &format!("{field}.retries"),
                    "retries must be 0 or more",
                    "e.g. retries = 3",
                );
                3
            }),
        };
        Some(HealthSpec {
            probe,
            interval: self.duration(
                &format!("{field}.interval"),
                h.interval.as_ref(),
                Duration::from_secs(2),
            ),
            timeout: self.duration(&format!("{field}.timeout"), h.timeout.as_ref(), Duration::from_secs(1)),
            retries,
            start_period: self.duration(
                &format!("{field}.start_period"),
                h.start_period.as_ref(),
                Duration::ZERO,
            ),
        })
    }

    fn duration(&mut self, field: &str, raw: Option<&Spanned<String>>, default: Duration) -> Duration {
        let Some(raw) = raw else { return default };
        parse_duration(raw.get_ref()).unwrap_or_else(|| {
            self.err(
                raw.span(),
                field,
                format!("{:?} is not a duration", raw.get_ref()),
                "write a number with a unit: \"500ms\", \"2s\", \"1m\"",
            );
            default
        })
    }

    fn depends_on(
        &mut self,
        field: &str,
        name: &str,
        raw: &Spanned<toml::Value>,
        service_names: &BTreeSet<String>,
    ) -> Vec<Dependency> {
        let dfield = format!("{field}.depends_on");
        let span = raw.span();
        let mut entries: Vec<(String, Condition)> = Vec::new();
        match raw.get_ref() {
            toml::Value::Array(items) => {
                for item in items {
                    match item.as_str() {
                        Some(s) => entries.push((s.to_string(), Condition::Started)),
                        None => self.err(
                            span.clone(),
                            &dfield,
                            "dependencies must be service names",
                            "depends_on = [\"redis\"]",
                        ),
                    }
                }
            }
            toml::Value::Table(table) => {
                for (svc, v) in table {
                    let cond = v.as_table().and_then(|t| t.get("condition")).and_then(|c| c.as_str());
                    let bad_key = v
                        .as_table()
                        .and_then(|t| t.keys().find(|k| k.as_str() != "condition").cloned());
                    match (cond, bad_key) {
                        (Some("healthy"), None) => entries.push((svc.clone(), Condition::Healthy)),
                        (Some("started"), None) => entries.push((svc.clone(), Condition::Started)),
                        _ => self.err(
                            span.clone(),
                            &format!("{dfield}.{svc}"),
                            "expected { condition = \"healthy\" } or { condition = \"started\" }",
                            format!("depends_on.{svc} = {{ condition = \"healthy\" }}"),
                        ),
                    }
                }
            }
            _ => self.err(
                span.clone(),
                &dfield,
                "depends_on must be a list or a table",
                "depends_on = [\"redis\"]",
            ),
        }
        let mut out: Vec<Dependency> = Vec::new();
        for (svc, condition) in entries {
            if svc == name {
                self.err(
                    span.clone(),
                    &dfield,
                    format!("service {name:?} depends on itself"),
                    "remove it from its own depends_on",
                );
            } else if !service_names.contains(&svc) {
                self.err(
                    span.clone(),
                    &dfield,
                    format!("unknown service {svc:?}"),
                    format!("declare [services.{svc}] or remove it"),
                );
            } else if out.iter().any(|d| d.service == svc) {
                self.err(
                    span.clone(),
                    &dfield,
                    format!("{svc:?} is listed twice"),
                    "list each dependency once",
                );
            } else {
                out.push(Dependency {
                    service: svc,
                    condition,
                });
            }
        }
        out
    }

    fn check_ports(&mut self, services: &BTreeMap<String, ServiceSpec>, networks: &BTreeMap<String, NetworkSpec>) {
        let mut seen: BTreeMap<(u16, Protocol), String> = BTreeMap::new();
        for (name, svc) in services {
            let reachable = svc
                .networks
                .iter()
                .any(|a| networks.get(&a.network).is_some_and(|n| !n.internal));
            for (i, port) in svc.ports.iter().enumerate() {
                let field = format!("services.{name}.ports[{i}]");
                let span = self.spans[&field].clone();
                if !reachable {
                    self.err(
                        span.clone(),
                        &field,
                        "a port can only be published from a service on a non-internal network",
                        "attach the service to a network without internal = true, or remove the port",
                    );
                }
                if let Some(other) = seen.insert((port.host, port.protocol), field.clone()) {
                    self.err(
                        span,
                        &field,
                        format!(
                            "host port {}/{} is already published by {other}",
                            port.host,
                            port.protocol.as_str()
                        ),
                        "publish each host port once; pick another host port",
                    );
                }
            }
        }
    }

    /// A Linux bridge takes at most 1,023 ports (BR_MAX_PORTS is 1,024 and port 0 is
    /// reserved): one per container interface on the network.
    fn check_bridge_ports(&mut self, services: &BTreeMap<String, ServiceSpec>) {
        let mut ports: BTreeMap<&str, u64> = BTreeMap::new();
        for svc in services.values() {
            for a in &svc.networks {
                *ports.entry(&a.network).or_default() += u64::from(svc.replicas);
            }
        }
        for (net, count) in ports.into_iter().filter(|(_, c)| *c > MAX_BRIDGE_PORTS) {
            let field = format!("networks.{net}");
            let span = self.spans.get(&field).cloned().unwrap_or(0..0);
            self.err(
                span,
                &field,
                format!("{count} containers join network {net:?}, but a Linux bridge takes at most {MAX_BRIDGE_PORTS} ports"),
                "spread the replicas over several networks, or use fewer replicas",
            );
        }
    }

    fn check_static_ips(&mut self, services: &BTreeMap<String, ServiceSpec>, networks: &BTreeMap<String, NetworkSpec>) {
        let mut taken: BTreeMap<Ipv4Addr, String> = networks
            .iter()
            .map(|(n, s)| (s.gateway, format!("the gateway of network {n:?}")))
            .collect();
        for (name, svc) in services {
            for a in &svc.networks {
                let (Some(ip), Some(net)) = (a.ip, networks.get(&a.network)) else {
                    continue;
                };
                let field = format!("services.{name}.networks");
                let span = self.spans[&field].clone();
                if !is_host_of(ip, net.subnet) {
                    self.err(
                        span,
                        &format!("{field}.{}.ip", a.network),
                        format!("{ip} is not a host address of network {:?} ({})", a.network, net.subnet),
                        format!("pick an address inside {}", net.subnet),
                    );
                } else if let Some(owner) = taken.insert(ip, format!("service {name:?}")) {
                    self.err(
                        span,
                        &format!("{field}.{}.ip", a.network),
                        format!("{ip} is already used by {owner}"),
                        "give each container its own address",
                    );
                }
            }
        }
    }

    fn check_cycles(&mut self, services: &BTreeMap<String, ServiceSpec>, spans: &BTreeMap<String, Range<usize>>) {
        if let Some(cycle) = find_cycle(services) {
            let span = spans.get(&cycle[0]).cloned().unwrap_or(0..0);
            self.err(
                span,
                &format!("services.{}.depends_on", cycle[0]),
                format!("dependency cycle: {}", cycle.join(" -> ")),
                "break the cycle: one of these services must start without waiting for the other",
            );
        }
    }
}

/// A cycle in `depends_on`, as the list of services along it (first repeated at the end).
fn find_cycle(services: &BTreeMap<String, ServiceSpec>) -> Option<Vec<String>> {
    fn visit<'a>(
        name: &'a str,
        services: &'a BTreeMap<String, ServiceSpec>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = path.iter().position(|p| *p == name) {
            let mut cycle: Vec<String> = path[pos..].iter().map(|s| s.to_string()).collect();
            cycle.push(name.to_string());
            return Some(cycle);
        }
        if done.contains(name) {
            return None;
        }
        path.push(name);
        let deps = services
            .get(name)
            .and_then(|s| s.process.as_ref())
            .map(|p| p.depends_on.as_slice())
            .unwrap_or_default();
        for dep in deps {
            if let Some(cycle) = visit(&dep.service, services, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(name);
        None
    }
    let mut done = BTreeSet::new();
    services
        .keys()
        .find_map(|name| visit(name, services, &mut Vec::new(), &mut done))
}

/// Lowercase letters, digits and '-', starting with a letter, not ending with '-'.
fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// True if `ip` is inside `net` and is neither its network nor its broadcast address.
pub fn is_host_of(ip: Ipv4Addr, net: Ipv4Net) -> bool {
    net.contains(&ip) && ip != net.network() && ip != net.broadcast()
}

fn parse_port(text: &str) -> Result<PortSpec, String> {
    let (ports, protocol) = match text.split_once('/') {
        None => (text, Protocol::Tcp),
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some((_, other)) => return Err(format!("unknown protocol {other:?}")),
    };
    let (host, container) = ports.split_once(':').ok_or("missing ':'")?;
    let number = |s: &str| match s.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a port number")),
    };
    Ok(PortSpec {
        host: number(host)?,
        container: number(container)?,
        protocol,
    })
}

/// "500ms", "2s", "1.5s", "1m", "1h".
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// Splits a command line into words like a shell would (quotes, backslashes), without running one.
pub fn split_command(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("has an unterminated ' quote".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => word.push(c),
                            None => return Err("ends with a backslash".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("has an unterminated \" quote".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                word.push(chars.next().ok_or("ends with a backslash")?);
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> String {
        match parse("plumb.toml", text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(d) => d.to_string(),
        }
    }

    const NET: &str = "name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n";

    #[test]
    fn a_full_stack_parses() {
        let p = parse(
            "plumb.toml",
            r#"
name = "shop"
[networks.front]
subnet = "10.89.1.0/24"
[networks.back]
subnet = "10.89.2.0/24"
gateway = "10.89.2.254"
internal = true
[services.web]
networks = ["front", "back"]
ports = ["8080:80", "5353:53/udp"]
command = "nginx -g 'daemon off;'"
[services.db.networks.back]
ip = "10.89.2.10"
[services.db]
command = ["redis-server"]
restart = "always"
health = { tcp = 6379, interval = "500ms" }
depends_on = { web = { condition = "healthy" } }
"#,
        )
        .unwrap();
        let s = &p.stack;
        assert_eq!(s.networks["back"].gateway.to_string(), "10.89.2.254");
        assert_eq!(s.networks["front"].gateway.to_string(), "10.89.1.1");
        let web = &s.services["web"];
        assert_eq!(
            web.ports[1],
            PortSpec {
                host: 5353,
                container: 53,
                protocol: Protocol::Udp
            }
        );
        assert_eq!(web.process.as_ref().unwrap().command, ["nginx", "-g", "daemon off;"]);
        let db = &s.services["db"];
        assert_eq!(db.networks[0].ip.unwrap().to_string(), "10.89.2.10");
        let proc = db.process.as_ref().unwrap();
        assert_eq!(proc.restart, RestartPolicy::Always);
        assert_eq!(proc.health.as_ref().unwrap().interval, Duration::from_millis(500));
        assert_eq!(proc.depends_on[0].condition, Condition::Healthy);
    }

    #[test]
    fn invalid_cidr_names_line_field_and_fix() {
        let e = errors("name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/33\"\n");
        assert!(
            e.starts_with("plumb.toml:3:10: networks.n.subnet: \"10.0.0.0/33\" is not a valid IPv4 CIDR"),
            "{e}"
        );
        assert!(e.contains("hint:"), "{e}");
        let e = errors("name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.5/24\"\n");
        assert!(e.contains("host bits set") && e.contains("10.0.0.0/24"), "{e}");
    }

    #[test]
    fn overlapping_subnets_are_rejected() {
        let e = errors(&format!("{NET}[networks.m]\nsubnet = \"10.0.0.128/25\"\n"));
        assert!(
            e.contains("plumb.toml:5:") && e.contains("networks.m.subnet") && e.contains("overlaps network \"n\""),
            "{e}"
        );
    }

    #[test]
    fn static_addresses_must_be_inside_and_unique() {
        let e = errors(&format!("{NET}[services.a.networks.n]\nip = \"10.0.1.5\"\n"));
        assert!(
            e.contains("services.a.networks.n.ip") && e.contains("not a host address"),
            "{e}"
        );
        let e = errors(&format!(
            "{NET}[services.a.networks.n]\nip = \"10.0.0.5\"\n[services.b.networks.n]\nip = \"10.0.0.5\"\n"
        ));
        assert!(e.contains("10.0.0.5 is already used by service \"a\""), "{e}");
        let e = errors(&format!("{NET}[services.a.networks.n]\nip = \"10.0.0.1\"\n"));
        assert!(e.contains("the gateway"), "{e}");
    }

    #[test]
    fn unknown_network_lists_the_known_ones() {
        let e = errors(&format!("{NET}[services.a]\nnetworks = [\"nope\"]\n"));
        assert!(
            e.contains("plumb.toml:5:1: services.a.networks: unknown network \"nope\""),
            "{e}"
        );
        assert!(e.contains("use one of: n"), "{e}");
    }

    #[test]
    fn duplicate_and_too_long_names_are_rejected() {
        let e = errors(&format!("{NET}[networks.n]\nsubnet = \"10.1.0.0/24\"\n"));
        assert!(
            e.contains("plumb.toml:4:") && e.to_lowercase().contains("duplicate"),
            "{e}"
        );
        let e = errors(&format!("{NET}[services.a]\nnetworks = [\"n\", \"n\"]\n"));
        assert!(e.contains("listed twice"), "{e}");
        let e = errors("name = \"thirteen-char\"\n");
        assert!(e.contains("plumb.toml:1:8: name:") && e.contains("1 to 12"), "{e}");
        let long = "s".repeat(48);
        let e = errors(&format!("{NET}[services.{long}]\nreplicas = 100000\n"));
        assert!(e.contains("replicas"), "{e}");
        let e = errors(&format!("{NET}[services.{}]\n", "x".repeat(49)));
        assert!(e.contains("service name"), "{e}");
    }

    #[test]
    fn a_host_port_published_twice_is_rejected() {
        let e = errors(&format!(
            "{NET}[services.a]\nports = [\"80:80\"]\n[services.b]\nports = [\"80:8080\"]\n"
        ));
        assert!(
            e.contains("services.b.ports[0]") && e.contains("already published by services.a.ports[0]"),
            "{e}"
        );
        // The same number over UDP is another port.
        parse(
            "f",
            &format!("{NET}[services.a]\nports = [\"80:80\"]\n[services.b]\nports = [\"80:80/udp\"]\n"),
        )
        .unwrap();
        let e = errors(&format!("{NET}[services.a]\nports = [\"0:80\"]\n"));
        assert!(e.contains("not a valid port mapping"), "{e}");
        let e = errors("name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\ninternal = true\n[services.a]\nports = [\"80:80\"]\n");
        assert!(e.contains("non-internal"), "{e}");
    }

    #[test]
    fn unknown_keys_are_rejected_where_they_are() {
        let e = errors(&format!("{NET}[services.a]\nimage = \"nginx\"\n"));
        assert!(
            e.contains("plumb.toml:5:1") && e.contains("unknown field `image`"),
            "{e}"
        );
        let e = errors("name = \"s\"\nvolumes = 1\n");
        assert!(e.contains("unknown field `volumes`"), "{e}");
        let e = errors(&format!("{NET}[services.a]\nenv = {{ A = \"1\" }}\n"));
        assert!(e.contains("env needs a command"), "{e}");
    }

    #[test]
    fn dependency_cycles_and_bad_probes_are_rejected() {
        let e = errors(&format!(
            "{NET}[services.a]\ncommand = \"x\"\ndepends_on = [\"b\"]\n[services.b]\ncommand = \"x\"\ndepends_on = [\"a\"]\n"
        ));
        assert!(e.contains("dependency cycle: a -> b -> a"), "{e}");
        let e = errors(&format!(
            "{NET}[services.a]\ncommand = \"x\"\nhealth = {{ tcp = 70000 }}\n"
        ));
        assert!(
            e.contains("services.a.health.tcp") && e.contains("outside 1-65535"),
            "{e}"
        );
        let e = errors(&format!(
            "{NET}[services.a]\ncommand = \"x\"\nhealth = {{ http = \"/h\" }}\n"
        ));
        assert!(e.contains("needs a port"), "{e}");
        let e = errors(&format!(
            "{NET}[services.a]\ncommand = \"x\"\nrestart = \"sometimes\"\n"
        ));
        assert!(e.contains("unknown restart policy"), "{e}");
    }

    #[test]
    fn a_bridge_takes_at_most_1023_containers() {
        let stack =
            |n: u32| format!("name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/16\"\n[services.a]\nreplicas = {n}\n");
        parse("f", &stack(1023)).unwrap();
        let e = errors(&stack(1024));
        assert!(
            e.contains("plumb.toml:2:")
                && e.contains("1024 containers join network \"n\"")
                && e.contains("at most 1023"),
            "{e}"
        );
    }

    #[test]
    fn several_networks_need_an_explicit_choice() {
        let e = errors(&format!("{NET}[networks.m]\nsubnet = \"10.1.0.0/24\"\n[services.a]\n"));
        assert!(e.contains("say which this service joins"), "{e}");
        let one = parse("f", &format!("{NET}[services.a]\n")).unwrap();
        assert_eq!(one.stack.services["a"].networks[0].network, "n");
    }

    #[test]
    fn commands_split_like_a_shell() {
        assert_eq!(
            split_command(r#"nginx -g "daemon off;" 'a b' c\ d"#).unwrap(),
            ["nginx", "-g", "daemon off;", "a b", "c d"]
        );
        assert!(split_command("echo 'open").is_err());
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), None);
    }
}

//! Validation: every check a stack file must pass, from the raw TOML shape to the typed
//! model, before anything touches the kernel. All problems are collected, each at the span
//! of the value at fault; the field values' own text formats (ports, durations, commands) too.
//! What a process is given is checked in `process`, reserved address ranges in `addresses`.

mod addresses;
mod autoscale;
mod discovery;
mod experiment;
mod image;
mod mesh;
mod policy;
mod process;

pub use discovery::DEFAULT_AFFINITY;
pub use mesh::TRACING_OFF;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::ops::Range;
use std::time::Duration;

use ipnet::Ipv4Net;
use toml::Spanned;

use super::model::*;
use super::raw::{RawHealth, RawNetwork, RawService, RawStack, RawValue};
use crate::cgroup::{parse_size, Limits, Swap};
use crate::diag::{Diagnostic, Diagnostics, SourceMap};
use crate::ipam::subnets_overlap;

/// The longest stack name: it prefixes namespace names and nft table names.
pub const MAX_STACK_NAME: usize = 12;
/// The most ports a Linux bridge takes (the kernel's BR_MAX_PORTS, less the reserved port 0).
pub const MAX_BRIDGE_PORTS: u64 = 1023;
/// Container names become hostnames, which the kernel limits to 64 bytes.
pub const MAX_CONTAINER_NAME: usize = 64;
/// The most containers a stack holds: four full bridges. Each is a network namespace, and
/// `up` makes them all before it starts anything.
pub const MAX_STACK_CONTAINERS: u32 = 4096;
/// Health probes run at most this often: shorter intervals keep the supervisor busy.
pub const MIN_PROBE_INTERVAL: Duration = Duration::from_millis(100);

/// Field path (as in diagnostics) → byte range in the file.
pub(super) type Spans = HashMap<String, Range<usize>>;

/// Checks a raw stack and builds the typed one, with the span of every field it read.
pub(super) fn validate(map: &SourceMap, raw: RawStack) -> Result<(Stack, Spans), Diagnostics> {
    let mut v = Validator {
        map,
        errors: Vec::new(),
        spans: Spans::new(),
        declared_networks: raw.networks.keys().map(|k| k.get_ref().clone()).collect(),
        stack_name: raw.name.get_ref().clone(),
        stack_mesh: raw.mesh.as_ref().is_some_and(|m| *m.get_ref()),
    };
    if let Some(m) = &raw.mesh {
        v.spans.insert("mesh".into(), m.span());
    }
    let stack = v.stack(raw);
    if v.errors.is_empty() {
        Ok((stack, v.spans))
    } else {
        Err(Diagnostics(v.errors))
    }
}

/// A cluster host's name, as `plumb agent --name` takes it (it goes into etcd keys).
pub fn valid_host_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The span of `field`, or else of the nearest field holding it (`services.a.workdir` falls
/// back to `services.a`).
pub(super) fn span_of(spans: &Spans, field: &str) -> Option<Range<usize>> {
    let mut field = field;
    loop {
        if let Some(span) = spans.get(field) {
            return Some(span.clone());
        }
        field = &field[..field.rfind(['.', '['])?];
    }
}

struct Validator<'a> {
    map: &'a SourceMap<'a>,
    errors: Vec<Diagnostic>,
    spans: Spans,
    /// Every network the file declares, valid or not: a service joining a network whose own
    /// definition is wrong gets that one error, not a second "unknown network".
    declared_networks: BTreeSet<String>,
    /// The stack's name as written (an image built without a name is named after it).
    stack_name: String,
    /// `mesh = true` at the top: services are in the mesh unless they say otherwise.
    stack_mesh: bool,
}

impl Validator<'_> {
    fn err(
        &mut self,
        span: impl Into<Option<Range<usize>>>,
        field: &str,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        let d = self.map.error(span.into(), field, message, hint);
        self.errors.push(d);
    }

    fn stack(&mut self, raw: RawStack) -> Stack {
        let name = raw.name.get_ref().clone();
        self.spans.insert("name".into(), raw.name.span());
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
            if let Some(spec) = self.network(&field, raw_net, &name, &net_name) {
                networks.insert(net_name, spec);
            }
        }
        self.check_overlaps(&networks);
        self.check_vnis(&networks);
        let service_subnet = self.service_subnet(raw.service_subnet.as_ref(), &networks);
        self.check_service_subnet(service_subnet, &networks);
        let metrics = raw.metrics.as_ref().and_then(|m| {
            self.listen_address(
                m,
                "metrics",
                "serve metrics on",
                "write ADDRESS:PORT, e.g. \"127.0.0.1:9464\" (only this host), or leave metrics out to serve none",
            )
        });
        let ui = raw.ui.as_ref().and_then(|u| {
            self.listen_address(
                u,
                "ui",
                "serve `plumb ui` on",
                "write ADDRESS:PORT, e.g. \"127.0.0.1:9465\" (only this host), or leave ui out for plumb ui's default",
            )
        });
        if let (Some(u), Some(m), Some(span)) = (ui, metrics, raw.ui.as_ref().map(|u| u.span())) {
            if u == m {
                self.err(
                    span,
                    "ui",
                    format!("ui and metrics both on {u}"),
                    "give `plumb ui` another port, e.g. the next one",
                );
            }
        }
        let service_names: BTreeSet<String> = raw.services.keys().map(|k| k.get_ref().clone()).collect();
        let mut services = BTreeMap::new();
        for (key, raw_svc) in raw.services {
            let svc_name = key.get_ref().clone();
            let field = format!("services.{svc_name}");
            self.spans.insert(field.clone(), key.span());
            let replicas = raw_svc.replicas.as_ref().map_or(1, |r| *r.get_ref());
            // An autoscaled service may grow to its max.
            let replicas = match raw_svc.autoscale.as_ref().and_then(|a| a.get_ref().max.as_ref()) {
                Some(max) => replicas.max(*max.get_ref()),
                None => replicas,
            };
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
            let svc = self.service(&field, &svc_name, raw_svc, &service_names);
            services.insert(svc_name, svc);
        }
        self.check_ports(&services, &networks);
        self.check_bridge_ports(&services);
        self.check_stack_size(&services);
        self.check_static_ips(&services, &networks);
        self.check_cycles(&services);
        self.check_healthy_dependencies(&services);
        self.check_aliases(&services);
        self.check_sidecar_ports(&services);
        let policies = self.policies(raw.policies, &services);
        let experiments = self.experiments(raw.experiments, &services, &networks);
        let tracing = self.tracing(raw.tracing.as_ref());
        let routes = self.routes(raw.routes, &services);
        Stack {
            tracing,
            routes,
            name,
            service_subnet,
            metrics,
            ui,
            networks,
            services,
            policies,
            experiments,
        }
    }

    /// An `ADDRESS:PORT` to listen on (`metrics`, `ui`): IPv4, a port that is not 0.
    fn listen_address(
        &mut self,
        value: &Spanned<String>,
        field: &str,
        what: &str,
        hint: &str,
    ) -> Option<std::net::SocketAddrV4> {
        self.spans.insert(field.into(), value.span());
        match value.get_ref().parse::<std::net::SocketAddrV4>() {
            Ok(a) if a.port() != 0 => Some(a),
            _ => {
                self.err(
                    value.span(),
                    field,
                    format!("{:?} is not an address and port to {what}", value.get_ref()),
                    hint,
                );
                None
            }
        }
    }

    fn network(&mut self, field: &str, raw: RawNetwork, stack: &str, name: &str) -> Option<NetworkSpec> {
        let subnet_field = format!("{field}.subnet");
        self.spans.insert(subnet_field.clone(), raw.subnet.span());
        if let Some(gw) = &raw.gateway {
            self.spans.insert(format!("{field}.gateway"), gw.span());
        }
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
            let (fixed, addr) = (subnet.trunc(), subnet.addr());
            // The address written may have been meant for the bridge.
            let hint = if is_host_of(addr, fixed) {
                format!("use \"{fixed}\"; to give the bridge {addr}, add gateway = \"{addr}\"")
            } else {
                format!("use \"{fixed}\"")
            };
            self.err(
                raw.subnet.span(),
                &subnet_field,
                format!("{text:?} has host bits set"),
                hint,
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
        if let Some(why) = addresses::reserved_subnet(subnet) {
            self.err(raw.subnet.span(), &subnet_field, why, addresses::USE_PRIVATE);
            return None;
        }
        let first_host = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let gateway = match &raw.gateway {
            None => first_host,
            Some(gw) => {
                let gw_field = format!("{field}.gateway");
                match gw.get_ref().parse::<Ipv4Addr>() {
                    Ok(ip) => {
                        let problem = addresses::reserved_address(ip).or_else(|| {
                            (!is_host_of(ip, subnet)).then(|| format!("gateway {ip} is not a host address of {subnet}"))
                        });
                        if let Some(why) = problem {
                            self.err(
                                gw.span(),
                                &gw_field,
                                why,
                                format!("pick an address inside {subnet}, such as {first_host}"),
                            );
                            return None;
                        }
                        ip
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
        let overlay = self.overlay(field, &raw, subnet, stack, name)?;
        Some(NetworkSpec {
            subnet,
            gateway,
            internal: raw.internal.unwrap_or(false),
            overlay,
        })
    }

    /// `driver`, `vni` and `host_prefix`: `Some(None)` for a bridge network, `None` when a
    /// field is wrong (reported).
    fn overlay(
        &mut self,
        field: &str,
        raw: &RawNetwork,
        subnet: Ipv4Net,
        stack: &str,
        name: &str,
    ) -> Option<Option<OverlaySpec>> {
        let overlay = match raw.driver.as_ref() {
            None => false,
            Some(d) => {
                self.spans.insert(format!("{field}.driver"), d.span());
                match d.get_ref().as_str() {
                    "bridge" => false,
                    "overlay" => true,
                    other => {
                        self.err(
                            d.span(),
                            &format!("{field}.driver"),
                            format!("unknown network driver {other:?}"),
                            "use \"bridge\" (one host, the default) or \"overlay\" (across a cluster's hosts, VXLAN)",
                        );
                        return None;
                    }
                }
            }
        };
        let only_overlay = [
            ("vni", raw.vni.as_ref().map(Spanned::span)),
            ("host_prefix", raw.host_prefix.as_ref().map(Spanned::span)),
        ];
        if !overlay {
            for (key, span) in only_overlay {
                if let Some(span) = span {
                    self.err(
                        span,
                        &format!("{field}.{key}"),
                        format!("{key} is a setting of overlay networks"),
                        "add driver = \"overlay\", or remove it",
                    );
                    return None;
                }
            }
            return Some(None);
        }
        let vni = match &raw.vni {
            None => default_vni(stack, name),
            Some(v) => match u32::try_from(*v.get_ref()) {
                Ok(n) if (1..(1 << 24)).contains(&n) => n,
                _ => {
                    self.err(
                        v.span(),
                        &format!("{field}.vni"),
                        format!("vni = {} is out of range", v.get_ref()),
                        "a VXLAN network identifier is 1 to 16777215; leave it out to derive one from the names",
                    );
                    return None;
                }
            },
        };
        let host_prefix = match &raw.host_prefix {
            None => default_host_prefix(subnet.prefix_len()),
            Some(p) => match u8::try_from(*p.get_ref()) {
                Ok(n) if n > subnet.prefix_len() && n <= 28 => n,
                _ => {
                    self.err(
                        p.span(),
                        &format!("{field}.host_prefix"),
                        format!("host_prefix = {} does not fit {subnet}", p.get_ref()),
                        format!(
                            "each host's block must be smaller than the subnet and hold some containers: use {} to 28",
                            subnet.prefix_len() + 1
                        ),
                    );
                    return None;
                }
            },
        };
        Some(Some(OverlaySpec { vni, host_prefix }))
    }

    /// Two overlay networks of one stack cannot share a VNI.
    fn check_vnis(&mut self, networks: &BTreeMap<String, NetworkSpec>) {
        let mut seen: BTreeMap<u32, &str> = BTreeMap::new();
        for (name, net) in networks {
            let Some(o) = net.overlay else { continue };
            if let Some(first) = seen.insert(o.vni, name) {
                let field = format!("networks.{name}.vni");
                let span = span_of(&self.spans, &field);
                self.err(
                    span,
                    &field,
                    format!("vni {} is also network {first:?}'s", o.vni),
                    "give each overlay network its own vni",
                );
            }
        }
    }

    fn check_overlaps(&mut self, networks: &BTreeMap<String, NetworkSpec>) {
        let list: Vec<_> = networks.iter().collect();
        for (i, (a_name, a)) in list.iter().enumerate() {
            for (b_name, b) in &list[i + 1..] {
                if !subnets_overlap(a.subnet, b.subnet) {
                    continue;
                }
                // Report it on whichever of the two comes later in the file.
                let subnet_span = |n: &str| span_of(&self.spans, &format!("networks.{n}.subnet"));
                let (a_span, b_span) = (subnet_span(a_name), subnet_span(b_name));
                let (first, second, span) = if a_span.as_ref().map(|s| s.start) < b_span.as_ref().map(|s| s.start) {
                    ((*a_name, *a), (*b_name, *b), b_span)
                } else {
                    ((*b_name, *b), (*a_name, *a), a_span)
                };
                self.err(
                    span,
                    &format!("networks.{}.subnet", second.0),
                    format!(
                        "{} overlaps network {:?} ({})",
                        second.1.subnet, first.0, first.1.subnet
                    ),
                    "give each network its own address range",
                );
            }
        }
    }

    fn service(&mut self, field: &str, name: &str, raw: RawService, service_names: &BTreeSet<String>) -> ServiceSpec {
        for (key, span) in raw.fields() {
            if let Some(span) = span {
                self.spans.insert(format!("{field}.{key}"), span);
            }
        }
        let attachments = match &raw.networks {
            Some(value) => self.attachments(field, value),
            // Like compose's default network: with one network there is nothing to choose.
            None if self.declared_networks.len() <= 1 => self
                .declared_networks
                .iter()
                .map(|n| Attachment {
                    network: n.clone(),
                    ip: None,
                })
                .collect(),
            None => {
                let span = span_of(&self.spans, field);
                let known: Vec<_> = self.declared_networks.iter().map(String::as_str).collect();
                let hint = format!(
                    "add networks = [...] with some of: {} (or networks = [] for no network)",
                    known.join(", ")
                );
                self.err(
                    span,
                    &format!("{field}.networks"),
                    "the stack has several networks: say which this service joins",
                    hint,
                );
                Vec::new()
            }
        };
        let given_replicas = raw.replicas.as_ref().map(|r| match u32::try_from(*r.get_ref()) {
            Ok(n) if n <= MAX_STACK_CONTAINERS => n,
            _ => {
                self.err(
                    r.span(),
                    &format!("{field}.replicas"),
                    format!("replicas = {} is out of range", r.get_ref()),
                    format!("use a number from 0 to {MAX_STACK_CONTAINERS}: a stack holds at most {MAX_STACK_CONTAINERS} containers"),
                );
                1
            }
        });
        let mut replicas = given_replicas.unwrap_or(1);
        let static_ip = attachments.iter().any(|a| a.ip.is_some());
        if replicas > 1 && static_ip && raw.autoscale.is_none() {
            let span = raw.networks.as_ref().map(Spanned::span);
            self.err(
                span,
                &format!("{field}.networks"),
                format!("a static address cannot be shared by {replicas} replicas"),
                "drop the static ip, or use replicas = 1",
            );
        }
        let mut ports = Vec::new();
        for (i, p) in raw.ports.iter().flat_map(|p| p.get_ref()).enumerate() {
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
        let image = self.image(field, name, &raw);
        let process = self.process(field, name, &raw, service_names, image.as_ref());
        let discovery = self.discovery(field, &raw);
        let autoscale = self
            .autoscale(field, &raw, given_replicas, discovery.lb, static_ip)
            .map(|(spec, start)| {
                replicas = start;
                spec
            });
        let placement = raw.placement.as_ref().and_then(|p| self.placement(field, p));
        ServiceSpec {
            networks: attachments,
            replicas,
            ports,
            process,
            expose: discovery.expose,
            lb: discovery.lb,
            affinity: discovery.affinity,
            aliases: discovery.aliases,
            placement,
            image,
            autoscale,
            mesh: raw.mesh.as_ref().map_or(self.stack_mesh, |m| *m.get_ref()),
        }
    }

    /// `placement = { host = "h1" }`.
    fn placement(&mut self, field: &str, table: &Spanned<super::raw::RawTable>) -> Option<String> {
        let pfield = format!("{field}.placement");
        let hint = "write placement = { host = \"HOST\" } with the name a host's `plumb agent --name` gave";
        if let Some(key) = table.get_ref().keys().find(|k| k.get_ref() != "host") {
            self.err(
                key.span(),
                &pfield,
                format!("unknown placement field {:?}", key.get_ref()),
                hint,
            );
            return None;
        }
        let Some(host) = table.get_ref().get("host") else {
            self.err(table.span(), &pfield, "placement names no host", hint);
            return None;
        };
        match host.get_ref().as_str() {
            Some(h) if valid_host_name(h) => Some(h.to_string()),
            _ => {
                self.err(
                    host.span(),
                    &format!("{pfield}.host"),
                    "a host name is 1 to 63 letters, digits, '-', '_' or '.'",
                    hint,
                );
                None
            }
        }
    }

    /// `networks = ["a", "b"]`, or a table of attachments `[services.x.networks.a] ip = "..."`.
    fn attachments(&mut self, field: &str, value: &Spanned<RawValue>) -> Vec<Attachment> {
        let nfield = format!("{field}.networks");
        let mut out: Vec<Attachment> = Vec::new();
        match value.get_ref() {
            RawValue::Array(items) => {
                let names = self.names_in(
                    items,
                    &nfield,
                    "network names must be strings",
                    "networks = [\"frontend\", \"backend\"]",
                );
                for (net, span) in names {
                    self.attach(&mut out, &nfield, &net, span, None);
                }
            }
            RawValue::Table(table) => {
                for (net, attach) in table {
                    let afield = format!("{nfield}.{}", net.get_ref());
                    match attach.get_ref() {
                        RawValue::Table(t) => {
                            for key in t.keys().filter(|k| k.get_ref() != "ip") {
                                self.err(
                                    key.span(),
                                    &format!("{afield}.{}", key.get_ref()),
                                    format!("unknown field {:?}", key.get_ref()),
                                    "the only field of a network attachment is ip",
                                );
                            }
                            self.attach(&mut out, &nfield, net.get_ref(), net.span(), t.get("ip"));
                        }
                        _ => self.err(
                            attach.span(),
                            &afield,
                            "a network attachment must be a table",
                            "write [services.SVC.networks.NET] ip = \"...\", or networks = [\"NET\"]",
                        ),
                    }
                }
            }
            _ => self.err(
                value.span(),
                &nfield,
                "networks must be a list or a table",
                "networks = [\"frontend\"]",
            ),
        }
        out
    }

    /// Adds one network to a service's attachments, if it is declared and not there yet.
    fn attach(
        &mut self,
        out: &mut Vec<Attachment>,
        nfield: &str,
        net: &str,
        span: Range<usize>,
        ip: Option<&Spanned<RawValue>>,
    ) {
        if !self.declared_networks.contains(net) {
            let known: Vec<_> = self.declared_networks.iter().map(String::as_str).collect();
            let hint = format!("declare [networks.{net}] or use one of: {}", known.join(", "));
            self.err(span, nfield, format!("unknown network {net:?}"), hint);
            return;
        }
        if out.iter().any(|a| a.network == net) {
            self.err(
                span,
                nfield,
                format!("network {net:?} is listed twice"),
                "list each network once",
            );
            return;
        }
        let ip_field = format!("{nfield}.{net}.ip");
        let ip = match ip {
            None => None,
            Some(ip) => {
                self.spans.insert(ip_field.clone(), ip.span());
                match ip.get_ref().as_str().map(str::parse::<Ipv4Addr>) {
                    Some(Ok(addr)) => match addresses::reserved_address(addr) {
                        Some(why) => {
                            self.err(ip.span(), &ip_field, why, "pick an address inside the network's subnet");
                            None
                        }
                        None => Some(addr),
                    },
                    Some(Err(_)) => {
                        self.err(
                            ip.span(),
                            &ip_field,
                            format!("{:?} is not an IPv4 address", ip.get_ref().as_str().unwrap_or_default()),
                            "for example ip = \"10.89.1.10\"",
                        );
                        None
                    }
                    None => {
                        self.err(
                            ip.span(),
                            &ip_field,
                            "ip must be a string",
                            "for example ip = \"10.89.1.10\"",
                        );
                        None
                    }
                }
            }
        };
        out.push(Attachment {
            network: net.to_string(),
            ip,
        });
    }

    fn process(
        &mut self,
        field: &str,
        name: &str,
        raw: &RawService,
        service_names: &BTreeSet<String>,
        image: Option<&Image>,
    ) -> Option<ProcessSpec> {
        let command = match (&raw.command, image) {
            (Some(cmd), _) => self.command(field, cmd)?,
            // An image service without a command runs its image's CMD/ENTRYPOINT.
            (None, Some(_)) => Vec::new(),
            (None, None) => {
                for (key, span) in raw.process_fields() {
                    if let Some(span) = span {
                        self.err(
                            span,
                            &format!("{field}.{key}"),
                            format!("{key} needs a command"),
                            "add command = [\"program\", \"arg\"] (or image = \"...\") or remove this field",
                        );
                    }
                }
                return None;
            }
        };
        if let (Some(_), Some(w)) = (image, &raw.workdir) {
            if !w.get_ref().starts_with('/') {
                self.err(
                    w.span(),
                    &format!("{field}.workdir"),
                    format!("workdir {:?} is not an absolute path", w.get_ref()),
                    "an image service's workdir is a folder inside its container: write it from /, e.g. workdir = \"/app\"",
                );
            }
        }
        let env = raw
            .env
            .as_ref()
            .map(|e| self.env(field, e.get_ref()))
            .unwrap_or_default();
        for (key, value) in [("workdir", &raw.workdir), ("user", &raw.user)] {
            if let Some(value) = value {
                self.nul_in(value.span(), &format!("{field}.{key}"), key, value.get_ref());
            }
        }
        let capabilities = self.capabilities(field, raw.cap_add.as_ref(), raw.cap_drop.as_ref());
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
        let health = raw
            .health
            .as_ref()
            .and_then(|h| self.health(&format!("{field}.health"), h));
        let depends_on = raw
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
            capabilities,
            limits: self.limits(field, raw),
            image: image.map(|i| i.name.clone()),
        })
    }

    /// A service's `cpus`, `memory`, `memory_swap` and `pids`.
    fn limits(&mut self, field: &str, raw: &RawService) -> Limits {
        let mut limits = Limits::default();
        if let Some(cpus) = &raw.cpus {
            let value = match cpus.get_ref() {
                RawValue::Float(f) => Some(*f),
                RawValue::Integer(i) => Some(*i as f64),
                RawValue::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            };
            match value {
                Some(v) if (0.01..=1024.0).contains(&v) => limits.cpus = Some(v),
                _ => self.err(
                    cpus.span(),
                    &format!("{field}.cpus"),
                    "cpus must be a number of CPUs from 0.01 to 1024",
                    "for example cpus = 0.5 (half of one core) or cpus = 2",
                ),
            }
        }
        let size = |v: &mut Self, raw: &Spanned<RawValue>, name: &str| -> Option<u64> {
            let bytes = match raw.get_ref() {
                RawValue::Integer(i) if *i > 0 => Some(*i as u64),
                RawValue::String(s) => parse_size(s),
                _ => None,
            };
            match bytes {
                // The kernel needs a few pages to start a process at all.
                Some(b) if b >= 1 << 20 => Some(b),
                Some(_) => {
                    v.err(
                        raw.span(),
                        &format!("{field}.{name}"),
                        format!("{name} is under 1M: no process can start in it"),
                        format!("give at least 1M, e.g. {name} = \"64M\""),
                    );
                    None
                }
                None => {
                    v.err(
                        raw.span(),
                        &format!("{field}.{name}"),
                        format!("{name} is not a size"),
                        format!("write bytes or a number with a unit b, k, m or g, e.g. {name} = \"256M\""),
                    );
                    None
                }
            }
        };
        if let Some(memory) = &raw.memory {
            limits.memory = size(self, memory, "memory");
        }
        if let Some(swap) = &raw.memory_swap {
            limits.memory_swap = match swap.get_ref() {
                RawValue::Integer(-1) => Some(Swap::Unlimited),
                RawValue::String(s) if s.trim() == "-1" => Some(Swap::Unlimited),
                _ => size(self, swap, "memory_swap").map(Swap::Total),
            };
            match (limits.memory, limits.memory_swap) {
                (None, Some(_)) if raw.memory.is_none() => self.err(
                    swap.span(),
                    &format!("{field}.memory_swap"),
                    "memory_swap needs memory",
                    "memory_swap is memory and swap together: set memory too, e.g. memory = \"256M\"",
                ),
                (Some(memory), Some(Swap::Total(total))) if total < memory => self.err(
                    swap.span(),
                    &format!("{field}.memory_swap"),
                    "memory_swap is less than memory",
                    "memory_swap counts memory and swap together: give at least memory's size, or -1 for unlimited swap",
                ),
                _ => {}
            }
        }
        if let Some(pids) = &raw.pids {
            match u64::try_from(*pids.get_ref()) {
                Ok(n) if n >= 1 => limits.pids = Some(n),
                _ => self.err(
                    pids.span(),
                    &format!("{field}.pids"),
                    format!("pids {} is not a positive number", pids.get_ref()),
                    "give how many processes and threads a replica may have, e.g. pids = 512",
                ),
            }
        }
        limits
    }

    /// A service's `command`, as a string split like a shell's or a list of strings.
    fn command(&mut self, field: &str, cmd: &Spanned<RawValue>) -> Option<Vec<String>> {
        let cfield = format!("{field}.command");
        let command = match cmd.get_ref() {
            RawValue::String(s) => split_command(s).map_err(|why| (cmd.span(), format!("command {why}"))),
            RawValue::Array(items) => {
                strings(items).map_err(|span| (span, "every argument of command must be a string".to_string()))
            }
            _ => Err((cmd.span(), "command must be a string or a list of strings".to_string())),
        };
        let command = match command {
            Ok(c) if c.first().is_some_and(|program| !program.is_empty()) => c,
            Ok(_) => {
                self.err(
                    cmd.span(),
                    &cfield,
                    "command is empty",
                    "give the program to run, e.g. command = [\"nginx\", \"-g\", \"daemon off;\"]",
                );
                return None;
            }
            Err((span, why)) => {
                self.err(
                    span,
                    &cfield,
                    why,
                    "command = [\"program\", \"arg\"] or command = \"program arg\"",
                );
                return None;
            }
        };
        if self.nul_in_command(&cfield, "command", cmd) {
            return None;
        }
        Some(command)
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
            if self.nul_in_command(&format!("{field}.exec"), "exec", exec) {
                return None;
            }
            let command = match exec.get_ref() {
                RawValue::String(s) => split_command(s).ok(),
                RawValue::Array(items) => strings(items).ok(),
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
        let (interval, timeout) = self.probe_timing(field, h);
        Some(HealthSpec {
            probe,
            interval,
            timeout,
            retries,
            start_period: self.duration(
                &format!("{field}.start_period"),
                h.start_period.as_ref(),
                Duration::ZERO,
            ),
        })
    }

    /// A probe's interval (at least [`MIN_PROBE_INTERVAL`]) and timeout (not zero, and no
    /// longer than the interval, so probes never overlap; by default 1s or the interval).
    fn probe_timing(&mut self, field: &str, h: &RawHealth) -> (Duration, Duration) {
        let interval_field = format!("{field}.interval");
        let interval = self.duration(&interval_field, h.interval.as_ref(), Duration::from_secs(2));
        let default_timeout = interval.min(Duration::from_secs(1));
        let timeout = self.duration(&format!("{field}.timeout"), h.timeout.as_ref(), default_timeout);
        if let Some(raw) = h.interval.as_ref().filter(|_| interval < MIN_PROBE_INTERVAL) {
            self.err(
                raw.span(),
                &interval_field,
                format!(
                    "interval {:?} is too short: probes would keep the supervisor busy",
                    raw.get_ref()
                ),
                "use at least \"100ms\" (the default is \"2s\")",
            );
            return (MIN_PROBE_INTERVAL, default_timeout);
        }
        let Some(raw) = h.timeout.as_ref() else {
            return (interval, timeout);
        };
        let problem = if timeout.is_zero() {
            Some(format!("timeout {:?} leaves a probe no time", raw.get_ref()))
        } else if timeout > interval {
            Some(format!(
                "timeout {:?} is longer than the interval ({})",
                raw.get_ref(),
                humantime::format_duration(interval)
            ))
        } else {
            None
        };
        if let Some(why) = problem {
            self.err(
                raw.span(),
                &format!("{field}.timeout"),
                why,
                format!(
                    "a probe must end before the next one starts: use a timeout from \"1ms\" to \"{}\", or a longer interval",
                    humantime::format_duration(interval)
                ),
            );
        }
        (interval, timeout)
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

    /// The strings of a list of names (`networks = [...]`, `depends_on = [...]`) with their
    /// places; each item that is not a string is reported at `field[i]`.
    fn names_in(
        &mut self,
        items: &[Spanned<RawValue>],
        field: &str,
        message: &str,
        hint: &str,
    ) -> Vec<(String, Range<usize>)> {
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match item.get_ref().as_str() {
                Some(name) => out.push((name.to_string(), item.span())),
                None => self.err(item.span(), &format!("{field}[{i}]"), message, hint),
            }
        }
        out
    }

    /// `depends_on = ["svc"]`, or a table `{ svc = { condition = "healthy" } }`.
    fn depends_on(
        &mut self,
        field: &str,
        name: &str,
        raw: &Spanned<RawValue>,
        service_names: &BTreeSet<String>,
    ) -> Vec<Dependency> {
        let dfield = format!("{field}.depends_on");
        let mut entries: Vec<(String, Condition, Range<usize>)> = Vec::new();
        match raw.get_ref() {
            RawValue::Array(items) => {
                let names = self.names_in(
                    items,
                    &dfield,
                    "dependencies must be service names",
                    "depends_on = [\"redis\"]",
                );
                entries.extend(names.into_iter().map(|(s, span)| (s, Condition::Started, span)));
            }
            RawValue::Table(table) => {
                for (svc, v) in table {
                    let svc_field = format!("{dfield}.{}", svc.get_ref());
                    let condition = match v.get_ref() {
                        RawValue::Table(t) if t.len() == 1 => t.get("condition"),
                        _ => None,
                    };
                    match condition.map(|c| (c.get_ref().as_str(), c.span())) {
                        Some((Some("healthy"), _)) => {
                            entries.push((svc.get_ref().clone(), Condition::Healthy, svc.span()))
                        }
                        Some((Some("started"), _)) => {
                            entries.push((svc.get_ref().clone(), Condition::Started, svc.span()))
                        }
                        other => self.err(
                            other.map_or(v.span(), |(_, span)| span),
                            &svc_field,
                            "expected { condition = \"healthy\" } or { condition = \"started\" }",
                            format!("depends_on.{} = {{ condition = \"healthy\" }}", svc.get_ref()),
                        ),
                    }
                }
            }
            _ => self.err(
                raw.span(),
                &dfield,
                "depends_on must be a list or a table",
                "depends_on = [\"redis\"]",
            ),
        }
        let mut out: Vec<Dependency> = Vec::new();
        for (svc, condition, span) in entries {
            if svc == name {
                self.err(
                    span,
                    &dfield,
                    format!("service {name:?} depends on itself"),
                    "remove it from its own depends_on",
                );
            } else if !service_names.contains(&svc) {
                self.err(
                    span,
                    &dfield,
                    format!("unknown service {svc:?}"),
                    format!("declare [services.{svc}] or remove it"),
                );
            } else if out.iter().any(|d| d.service == svc) {
                self.err(
                    span,
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
        let mut seen: Vec<(PortSpec, String)> = Vec::new();
        for (name, svc) in services {
            // A network that failed its own checks is not in `networks`: it has its error.
            let reachable = svc
                .networks
                .iter()
                .any(|a| networks.get(&a.network).is_none_or(|n| !n.internal));
            for (i, port) in svc.ports.iter().enumerate() {
                let field = format!("services.{name}.ports[{i}]");
                let span = span_of(&self.spans, &field);
                if !reachable {
                    self.err(
                        span.clone(),
                        &field,
                        "a port can only be published from a service on a non-internal network",
                        "attach the service to a network without internal = true, or remove the port",
                    );
                }
                if let Some((_, other)) = seen.iter().find(|(p, _)| p.overlaps(port)) {
                    self.err(
                        span,
                        &field,
                        format!("host port {} is already published by {other}", port.host_side()),
                        "publish each host port once; pick another host port",
                    );
                }
                seen.push((*port, field.clone()));
            }
        }
    }

    /// A Linux bridge takes at most 1,023 ports (BR_MAX_PORTS is 1,024 and port 0 is
    /// reserved): one per container interface on the network.
    fn check_bridge_ports(&mut self, services: &BTreeMap<String, ServiceSpec>) {
        let mut ports: BTreeMap<&str, u64> = BTreeMap::new();
        for svc in services.values() {
            for a in &svc.networks {
                *ports.entry(&a.network).or_default() += u64::from(svc.most_replicas());
            }
        }
        for (net, count) in ports.into_iter().filter(|(_, c)| *c > MAX_BRIDGE_PORTS) {
            let field = format!("networks.{net}");
            let span = span_of(&self.spans, &field);
            self.err(
                span,
                &field,
                format!("{count} containers join network {net:?}, but a Linux bridge takes at most {MAX_BRIDGE_PORTS} ports"),
                "spread the replicas over several networks, or use fewer replicas (an autoscaled service counts at its max)",
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
                let field = format!("services.{name}.networks.{}.ip", a.network);
                let span = span_of(&self.spans, &field);
                if net.overlay.is_some() {
                    self.err(
                        span,
                        &field,
                        format!(
                            "network {:?} is an overlay: each host gives addresses from its own block",
                            a.network
                        ),
                        "drop the static ip; the service's name and VIP find it wherever it runs",
                    );
                } else if !is_host_of(ip, net.subnet) {
                    self.err(
                        span,
                        &field,
                        format!("{ip} is not a host address of network {:?} ({})", a.network, net.subnet),
                        format!("pick an address inside {}", net.subnet),
                    );
                } else if let Some(owner) = taken.insert(ip, format!("service {name:?}")) {
                    self.err(
                        span,
                        &field,
                        format!("{ip} is already used by {owner}"),
                        "give each container its own address",
                    );
                }
            }
        }
    }

    /// A stack holds at most [`MAX_STACK_CONTAINERS`] containers; the error points at the
    /// service with the most replicas.
    fn check_stack_size(&mut self, services: &BTreeMap<String, ServiceSpec>) {
        let total: u64 = services.values().map(|s| u64::from(s.most_replicas())).sum();
        if total <= u64::from(MAX_STACK_CONTAINERS) {
            return;
        }
        let Some((name, svc)) = services.iter().max_by_key(|(_, s)| s.most_replicas()) else {
            return;
        };
        let field = match svc.most_replicas() > svc.replicas {
            true => format!("services.{name}.autoscale.max"),
            false => format!("services.{name}.replicas"),
        };
        let span = span_of(&self.spans, &field);
        self.err(
            span,
            &field,
            format!("the stack has {total} containers, more than the {MAX_STACK_CONTAINERS} plumb runs in one stack"),
            "use fewer replicas (an autoscaled service counts at its max), or split the services over several stacks",
        );
    }

    /// `condition = "healthy"` on a service without a health check could never be met: the
    /// dependent would start at once (or never), against what the file says.
    fn check_healthy_dependencies(&mut self, services: &BTreeMap<String, ServiceSpec>) {
        for (name, service) in services {
            let Some(process) = &service.process else { continue };
            for dep in process.depends_on.iter().filter(|d| d.condition == Condition::Healthy) {
                let target = services.get(&dep.service);
                if target
                    .and_then(|t| t.process.as_ref())
                    .is_some_and(|p| p.health.is_some())
                {
                    continue;
                }
                let field = format!("services.{name}.depends_on");
                let span = span_of(&self.spans, &field);
                let hint = match target.is_some_and(|t| t.process.is_some()) {
                    true => format!(
                        "give [services.{}] a health check (health = {{ tcp = PORT }}), or depend on it being started: depends_on = [\"{}\"]",
                        dep.service, dep.service
                    ),
                    false => format!("{:?} runs no command, so it is never healthy: depend on it without a condition", dep.service),
                };
                self.err(
                    span,
                    &field,
                    format!("{:?} has no health check, so it can never be \"healthy\"", dep.service),
                    hint,
                );
            }
        }
    }

    fn check_cycles(&mut self, services: &BTreeMap<String, ServiceSpec>) {
        if let Some(cycle) = find_cycle(services) {
            let field = format!("services.{}.depends_on", cycle[0]);
            let span = span_of(&self.spans, &field);
            self.err(
                span,
                &field,
                format!("dependency cycle: {}", cycle.join(" -> ")),
                "break the cycle: one of these services must start without waiting for the other",
            );
        }
    }
}

/// The strings of a list, or the span of the first item that is not one.
fn strings(items: &[Spanned<RawValue>]) -> Result<Vec<String>, Range<usize>> {
    items
        .iter()
        .map(|i| i.get_ref().as_str().map(str::to_string).ok_or(i.span()))
        .collect()
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

/// True if `name` can name a stack (so it can name files and kernel objects too).
pub fn is_stack_name(name: &str) -> bool {
    valid_name(name, MAX_STACK_NAME)
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

fn parse_port(text: &str) -> Result<PortSpec, String> {
    let (ports, protocol) = match text.split_once('/') {
        None => (text, Protocol::Tcp),
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some((_, other)) => return Err(format!("unknown protocol {other:?}")),
    };
    if ports.starts_with('[') {
        return Err("IPv6 host addresses are not supported".into());
    }
    let parts: Vec<&str> = ports.split(':').collect();
    let (address, host, container) = match parts.as_slice() {
        [host, container] => (None, *host, *container),
        [address, host, container] => (Some(*address), *host, *container),
        [_] => return Err("missing ':'".into()),
        _ => return Err("too many ':'".into()),
    };
    let host_ip = match address.map(str::parse::<Ipv4Addr>) {
        None => None,
        Some(Ok(ip)) if ip.is_unspecified() => None,
        Some(Ok(ip)) if ip.is_multicast() || ip.is_broadcast() => {
            return Err(format!("{ip} is not a unicast address of the host"))
        }
        Some(Ok(ip)) => Some(ip),
        Some(Err(_)) => return Err(format!("{:?} is not an IPv4 address", address.unwrap_or_default())),
    };
    let number = |s: &str| match s.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{s:?} is not a port number")),
    };
    Ok(PortSpec {
        host_ip,
        host: number(host)?,
        container: number(container)?,
        protocol,
    })
}

/// A duration with a unit: "500ms", "2s", "1.5s", "1m", "1h", also "1m 30s" (humantime's
/// format). A bare number other than 0 has no unit and is refused.
pub fn parse_duration(text: &str) -> Option<Duration> {
    humantime::parse_duration(text.trim()).ok()
}

/// Splits a command line into words like a POSIX shell would (quotes, backslashes, and `#`
/// starting a comment), without running one. The error says what is wrong with the line.
pub fn split_command(line: &str) -> Result<Vec<String>, String> {
    shell_words::split(line).map_err(|_| "has an unterminated quote".to_string())
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    fn errors(text: &str) -> String {
        match parse("plumb.toml", text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(d) => d.to_string(),
        }
    }

    const NET: &str = "name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n";

    #[test]
    fn ui_is_an_address_to_listen_on_apart_from_metrics() {
        let ok = parse(
            "plumb.toml",
            "name = \"s\"\nui = \"127.0.0.1:9465\"\nmetrics = \"127.0.0.1:9464\"\n",
        )
        .unwrap();
        assert_eq!(ok.stack.ui, Some("127.0.0.1:9465".parse().unwrap()));
        let e = errors("name = \"s\"\nui = \"localhost\"\n");
        assert!(
            e.contains("plumb.toml:2") && e.contains("\"localhost\" is not an address and port to serve `plumb ui` on"),
            "{e}"
        );
        let e = errors("name = \"s\"\nmetrics = \"127.0.0.1:9464\"\nui = \"127.0.0.1:9464\"\n");
        assert!(
            e.contains("plumb.toml:3") && e.contains("ui and metrics both on 127.0.0.1:9464"),
            "{e}"
        );
    }

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
health = { tcp = 80 }
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
                host_ip: None,
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
    fn ports_take_a_host_address_as_compose_does() {
        let port = |t: &str| parse_port(t);
        let bound = port("127.0.0.1:8080:80/udp").unwrap();
        assert_eq!(bound.host_ip, Some(Ipv4Addr::LOCALHOST));
        assert_eq!((bound.host, bound.container, bound.protocol), (8080, 80, Protocol::Udp));
        assert_eq!(bound.to_string(), "127.0.0.1:8080->80/udp");
        assert_eq!(
            port("0.0.0.0:8080:80").unwrap().host_ip,
            None,
            "0.0.0.0 means every address"
        );
        assert!(port("[::1]:8080:80").unwrap_err().contains("IPv6"));
        assert!(port("localhost:8080:80").unwrap_err().contains("not an IPv4 address"));
        assert!(port("1:2:3:4").unwrap_err().contains("too many"));
        let any = port("8080:80").unwrap();
        assert!(!any.overlaps(&bound), "tcp and udp do not clash");
        assert!(port("127.0.0.1:8080:80").unwrap().overlaps(&any));
        assert!(!port("127.0.0.1:8080:80")
            .unwrap()
            .overlaps(&port("10.0.0.1:8080:80").unwrap()));
        let e = errors("name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n[services.a]\nports = [\"8080:80\", \"127.0.0.1:8080:81\"]\n");
        assert!(
            e.contains("host port 127.0.0.1:8080/tcp is already published by services.a.ports[0]"),
            "{e}"
        );
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
            e.contains("plumb.toml:5:13: services.a.networks: unknown network \"nope\""),
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
        let e = errors(&format!("{NET}[services.a]\nvolumes = [\"/data\"]\n"));
        assert!(
            e.contains("plumb.toml:5:1") && e.contains("unknown field `volumes`"),
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
            "{NET}[services.a]\ncommand = \"x\"\ndepends_on = {{ b = {{ condition = \"healthy\" }} }}\n[services.b]\ncommand = \"x\"\n"
        ));
        assert!(
            e.contains("services.a.depends_on")
                && e.contains("\"b\" has no health check")
                && e.contains("give [services.b] a health check"),
            "{e}"
        );
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
        assert_eq!(
            split_command(r#"sh -c 'echo $HOME' "say \"hi\"""#).unwrap(),
            ["sh", "-c", "echo $HOME", "say \"hi\""]
        );
        // As in a shell, '#' starts a comment only at the start of a word.
        assert_eq!(
            split_command("redis-server a#b # the port").unwrap(),
            ["redis-server", "a#b"]
        );
        assert_eq!(split_command("   ").unwrap(), Vec::<String>::new());
        assert_eq!(split_command("echo 'open").unwrap_err(), "has an unterminated quote");
        assert!(split_command("echo \"open").is_err());
        let e = errors(&format!("{NET}[services.a]\ncommand = \"echo 'open\"\n"));
        assert!(
            e.contains("services.a.command: command has an unterminated quote"),
            "{e}"
        );
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("3s"), Some(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration(" 1m 30s "), Some(Duration::from_secs(90)));
        for bad in ["5", "soon", "-1s", "", "1e3s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn errors_in_tables_point_at_the_value_at_fault() {
        // "env" also occurs inside "printenv": the error must still point at env's value.
        let e = errors(&format!(
            "{NET}[services.a]\ncommand = \"printenv\"\nenv = {{ A = \"1\", B = [2] }}\n"
        ));
        assert!(
            e.starts_with("plumb.toml:6:22: services.a.env.B: environment values must be"),
            "{e}"
        );
        // A table written as a header, with the bad field two lines below it.
        let e = errors(&format!(
            "{NET}[services.a]\ncommand = \"x\"\n[services.a.health]\ntcp = 80\ninterval = \"soon\"\n"
        ));
        assert!(
            e.starts_with("plumb.toml:8:12: services.a.health.interval: \"soon\" is not a duration"),
            "{e}"
        );
        let e = errors(&format!("{NET}[services.a.health]\nbogus = 1\n"));
        assert!(
            e.starts_with("plumb.toml:5:1: services.a.health.bogus: unknown field `bogus`"),
            "{e}"
        );
        let e = errors(&format!("{NET}[services.a]\ncommand = \"x\"\ndepends_on = [\"a\"]\n"));
        assert!(e.starts_with("plumb.toml:6:15: services.a.depends_on:"), "{e}");
        let e = errors(&format!("{NET}[services.a]\ncommand = [\"x\", 1]\n"));
        assert!(
            e.starts_with("plumb.toml:5:17: services.a.command: every argument of command must be a string"),
            "{e}"
        );
    }

    #[test]
    fn a_subnet_with_host_bits_gets_one_error_and_the_fix() {
        // Service a joins the network by name and publishes a port, b joins it by default.
        let text = "name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.5/24\"\n[services.a]\nnetworks = [\"n\"]\nports = [\"80:80\"]\n[services.b]\n";
        let Err(d) = parse("plumb.toml", text) else {
            panic!("host bits accepted")
        };
        assert_eq!(d.0.len(), 1, "{d}");
        let e = &d.0[0];
        assert_eq!((e.line, e.column, e.field.as_str()), (3, 10, "networks.n.subnet"));
        assert!(e.message.contains("host bits set"), "{d}");
        assert!(
            e.hint.starts_with("use \"10.0.0.0/24\"; to give the bridge 10.0.0.5"),
            "{d}"
        );
        let e = errors("name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.255/24\"\n");
        assert!(e.ends_with("hint: use \"10.0.0.0/24\""), "{e}");
    }

    #[test]
    fn probes_run_at_most_every_100ms_and_end_before_the_next() {
        let health = |h: &str| format!("{NET}[services.a]\ncommand = \"x\"\nhealth = {{ tcp = 80, {h} }}\n");
        for short in ["0s", "1ms", "99ms"] {
            let e = errors(&health(&format!("interval = \"{short}\"")));
            assert!(
                e.starts_with("plumb.toml:6:33: services.a.health.interval: interval")
                    && e.contains("too short")
                    && e.contains("at least \"100ms\""),
                "{e}"
            );
        }
        let e = errors(&health("interval = \"1s\", timeout = \"2s\""));
        assert!(
            e.starts_with(
                "plumb.toml:6:49: services.a.health.timeout: timeout \"2s\" is longer than the interval (1s)"
            ),
            "{e}"
        );
        let e = errors(&health("timeout = \"0s\""));
        assert!(
            e.contains("services.a.health.timeout: timeout \"0s\" leaves a probe no time"),
            "{e}"
        );
        // A short interval shortens the default timeout with it.
        let p = parse("f", &health("interval = \"100ms\"")).unwrap();
        let h = p.stack.services["a"].process.as_ref().unwrap().health.clone().unwrap();
        assert_eq!((h.interval, h.timeout), (MIN_PROBE_INTERVAL, MIN_PROBE_INTERVAL));
    }

    #[test]
    fn a_stack_holds_at_most_4096_containers() {
        let e = errors(&format!("{NET}[services.a]\nnetworks = []\nreplicas = 65000\n"));
        assert!(
            e.starts_with("plumb.toml:6:12: services.a.replicas: replicas = 65000 is out of range")
                && e.contains("at most 4096 containers"),
            "{e}"
        );
        let two = |a: u32, b: u32| {
            format!("{NET}[services.a]\nnetworks = []\nreplicas = {a}\n[services.b]\nnetworks = []\nreplicas = {b}\n")
        };
        parse("f", &two(2048, 2048)).unwrap();
        let e = errors(&two(2048, 2049));
        assert!(
            e.starts_with("plumb.toml:9:12: services.b.replicas: the stack has 4097 containers, more than the 4096"),
            "{e}"
        );
    }

    #[test]
    fn reserved_ranges_are_refused_for_subnets_gateways_and_addresses() {
        for (subnet, range) in [
            ("224.0.0.0/24", "224.0.0.0/4 (multicast)"),
            ("127.0.0.0/24", "127.0.0.0/8 (loopback)"),
            ("169.254.0.0/16", "169.254.0.0/16 (link-local)"),
            ("0.0.0.0/8", "0.0.0.0/8"),
            ("240.0.0.0/24", "240.0.0.0/4"),
        ] {
            let e = errors(&format!("name = \"s\"\n[networks.n]\nsubnet = \"{subnet}\"\n"));
            assert!(
                e.starts_with(&format!(
                    "plumb.toml:3:10: networks.n.subnet: {subnet} is inside {range}"
                )),
                "{e}"
            );
            assert!(e.contains("use a private range"), "{e}");
        }
        let e = errors(&format!("{NET}gateway = \"127.0.0.1\"\n"));
        assert!(
            e.starts_with("plumb.toml:4:11: networks.n.gateway: 127.0.0.1 is in 127.0.0.0/8 (loopback)"),
            "{e}"
        );
        let e = errors(&format!("{NET}[services.a.networks.n]\nip = \"224.0.0.1\"\n"));
        assert!(
            e.starts_with("plumb.toml:5:6: services.a.networks.n.ip: 224.0.0.1 is in 224.0.0.0/4 (multicast)"),
            "{e}"
        );
    }

    #[test]
    fn user_and_workdir_errors_point_at_their_own_line() {
        let p = parse(
            "plumb.toml",
            &format!("{NET}[services.x]\ncommand = \"nope\"\nuser = \"ghost\"\nworkdir = \"srv\"\n"),
        )
        .unwrap();
        let d = p.error("services.x.user", "user \"ghost\" does not exist", "create it");
        assert_eq!((d.line, d.column, d.field.as_str()), (6, 8, "services.x.user"));
        assert_eq!(d.excerpt.as_ref().map(|e| e.text.as_str()), Some("user = \"ghost\""));
        let d = p.error("services.x.workdir", "missing", "create it");
        assert_eq!((d.line, d.column, d.field.as_str()), (7, 11, "services.x.workdir"));
    }

    #[test]
    fn machine_checks_point_at_the_field_or_its_service() {
        let p = parse(
            "plumb.toml",
            &format!("{NET}[services.a]\ncommand = \"nope\"\n[services.a.health]\ntcp = 1\n"),
        )
        .unwrap();
        let d = p.error("services.a.command", "not installed", "install it");
        assert_eq!((d.line, d.column), (5, 11));
        assert_eq!(d.excerpt.as_ref().map(|e| e.text.as_str()), Some("command = \"nope\""));
        let d = p.error("services.a.workdir", "missing", "create it");
        assert_eq!((d.line, d.column), (4, 11));
        let d = p.error("services.a.health", "bad", "fix it");
        assert_eq!((d.line, d.column), (6, 1));
        let d = p.error("elsewhere", "no place", "");
        assert_eq!(d.line, 0);
    }

    #[test]
    fn limits_are_read_and_refused_with_their_place() {
        let text =
            format!("{NET}[services.a]\ncommand = \"x\"\ncpus = 0.5\nmemory = \"256M\"\nmemory_swap = -1\npids = 64\n");
        let stack = parse("plumb.toml", &text).unwrap();
        let limits = stack.stack.services["a"].process.as_ref().unwrap().limits;
        assert_eq!(limits.cpus, Some(0.5));
        assert_eq!(limits.memory, Some(256 << 20));
        assert_eq!(limits.memory_swap, Some(Swap::Unlimited));
        assert_eq!(limits.pids, Some(64));
        for (field, bad, message) in [
            ("cpus", "0", "cpus must be a number of CPUs"),
            ("memory", "\"lots\"", "memory is not a size"),
            ("memory", "\"10k\"", "memory is under 1M"),
            ("pids", "0", "pids 0 is not a positive number"),
            ("memory_swap", "\"64M\"", "memory_swap needs memory"),
        ] {
            let e = errors(&format!("{NET}[services.a]\ncommand = \"x\"\n{field} = {bad}\n"));
            assert!(e.contains(&format!("services.a.{field}: {message}")), "{e}");
        }
        let e = errors(&format!(
            "{NET}[services.a]\ncommand = \"x\"\nmemory = \"128M\"\nmemory_swap = \"64M\"\n"
        ));
        assert!(e.contains("memory_swap is less than memory"), "{e}");
        let e = errors(&format!("{NET}[services.a]\npids = 5\n"));
        assert!(e.contains("services.a.pids: pids needs a command"), "{e}");
    }
}

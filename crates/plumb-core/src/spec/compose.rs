//! Compose files (`compose.yaml`): the subset of the Compose specification plumb can run,
//! read into the same [`RawStack`] the TOML reader makes, every span a byte range of the
//! compose text. `validate` then judges it as it judges a stack file, so every error names the
//! compose file and its line. What is read, what is refused and why: docs/compose.md.
//!
//! Pure: env files are read through the caller's [`ComposeInput::read_env_file`], and
//! `${VAR}` interpolation is refused rather than read from a process environment, so the same
//! text always gives the same stack (plumb parses a stack's recorded file again later).

use std::collections::BTreeMap;
use std::ops::Range;

use ipnet::Ipv4Net;
use saphyr::{LoadableYamlNode, MarkedYaml, Scalar, YamlData};
use toml::Spanned;

use super::raw::{RawAutoscale, RawHealth, RawNetwork, RawService, RawStack, RawTable, RawValue};
use super::validate::{split_command, MAX_STACK_NAME};
use crate::diag::{Diagnostic, SourceMap};

/// What a compose file needs from outside its text.
pub struct ComposeInput<'a> {
    /// The name of the folder holding the file: the stack's name when the file sets no
    /// `name`, as Compose names a project.
    pub dir_name: &'a str,
    /// Reads an `env_file` as the file writes its path (relative to the file's folder).
    pub read_env_file: &'a dyn Fn(&str) -> Result<String, String>,
}

/// True for the names plumb reads as Compose: `*.yaml` and `*.yml`.
pub fn is_compose_file(file: &str) -> bool {
    file.ends_with(".yaml") || file.ends_with(".yml")
}

/// Where networks without an `ipam` subnet get one: a /24 of this range, chosen from the
/// stack's and the network's names.
pub const AUTO_SUBNETS: &str = "10.92.0.0/16";

const SEE_DOCS: &str = "docs/compose.md lists the Compose keys plumb reads";

/// A YAML node with its byte span in the compose text.
#[derive(Debug, Clone)]
struct Node {
    span: Range<usize>,
    value: Value,
}

#[derive(Debug, Clone)]
enum Value {
    Null,
    Bool(bool),
    /// An integer or a float, with its text as written.
    Number(String),
    Str(String),
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

impl Node {
    fn kind(&self) -> &'static str {
        match &self.value {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }

    /// A scalar's text: strings as they are, numbers as written, booleans as `true`/`false`.
    fn text(&self) -> Option<String> {
        match &self.value {
            Value::Str(s) | Value::Number(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }

    fn int(&self) -> Option<i64> {
        match &self.value {
            Value::Number(n) => n.parse().ok(),
            Value::Str(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    fn spanned<T>(&self, value: T) -> Spanned<T> {
        Spanned::new(self.span.clone(), value)
    }
}

/// Reads a compose text into the raw stack, or the problems of its Compose shape.
pub(super) fn read(map: &SourceMap, input: &ComposeInput) -> Result<RawStack, Vec<Diagnostic>> {
    let root = load(map)?;
    let mut reader = Reader {
        map,
        input,
        errors: Vec::new(),
    };
    let stack = reader.stack(root);
    if reader.errors.is_empty() {
        Ok(stack)
    } else {
        Err(reader.errors)
    }
}

/// The compose field path that a diagnostic from `validate` (which names plumb's fields)
/// is about, so the message names the key the user wrote.
pub(super) fn compose_field(field: &str) -> String {
    let mut parts: Vec<String> = field.split('.').map(str::to_string).collect();
    if parts.first().map(String::as_str) == Some("services") && parts.len() > 2 {
        let (head, rest) = split_index(&parts[2]);
        let (head, rest) = (head.to_string(), rest.to_string());
        let renamed = match head.as_str() {
            "health" => "healthcheck",
            "env" => "environment",
            "workdir" => "working_dir",
            "replicas" => "deploy.replicas",
            "stop_grace" => "stop_grace_period",
            "memory" => "mem_limit",
            "memory_swap" => "memswap_limit",
            "pids" => "pids_limit",
            "autoscale" => "x-plumb.autoscale",
            other => other,
        };
        parts[2] = format!("{renamed}{rest}");
        if head == "health" && parts.get(3).is_some_and(|p| p == "exec") {
            parts[3] = "test".into();
        }
        if head == "networks" && parts.get(4).is_some_and(|p| p == "ip") {
            parts[4] = "ipv4_address".into();
        }
    }
    if parts.first().map(String::as_str) == Some("networks")
        && parts.len() == 3
        && matches!(parts[2].as_str(), "subnet" | "gateway")
    {
        parts[2] = format!("ipam.config[0].{}", parts[2]);
    }
    parts.join(".")
}

fn split_index(part: &str) -> (&str, &str) {
    match part.find('[') {
        Some(i) => (&part[..i], &part[i..]),
        None => (part, ""),
    }
}

/// Parses the YAML text into [`Node`]s with byte spans.
fn load(map: &SourceMap) -> Result<Node, Vec<Diagnostic>> {
    let text = map.text;
    // saphyr counts positions in characters; diagnostics and spans are in bytes.
    let offsets: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    let byte = |index: usize| offsets.get(index).copied().unwrap_or(text.len());
    let docs = MarkedYaml::load_from_str(text).map_err(|e| {
        let at = byte(e.marker().index());
        vec![map.error(
            Some(at..at),
            "",
            format!("not valid YAML: {}", e.info()),
            "fix the YAML syntax here (indent with spaces; quote values holding ': ' or '#')",
        )]
    })?;
    if docs.len() > 1 {
        let at = byte(docs[1].span.start.index());
        return Err(vec![map.error(
            Some(at..at),
            "",
            "the file holds several YAML documents",
            "keep one document: remove the `---` and what follows",
        )]);
    }
    let mut errors = Vec::new();
    let mut root = docs
        .first()
        .map(|d| convert(d, text, &byte, &mut errors, map))
        .unwrap_or(Node {
            span: 0..0,
            value: Value::Null,
        });
    dollars(&mut root, "", &mut errors, map);
    if errors.is_empty() {
        Ok(root)
    } else {
        Err(errors)
    }
}

fn convert(
    y: &MarkedYaml,
    text: &str,
    byte: &dyn Fn(usize) -> usize,
    errors: &mut Vec<Diagnostic>,
    map: &SourceMap,
) -> Node {
    let start = byte(y.span.start.index());
    let end = byte(y.span.end.index()).max(start);
    let value = match &y.data {
        YamlData::Value(Scalar::Null) | YamlData::BadValue => Value::Null,
        YamlData::Value(Scalar::Boolean(b)) => Value::Bool(*b),
        YamlData::Value(Scalar::Integer(_) | Scalar::FloatingPoint(_)) => {
            Value::Number(text[start..end].trim().to_string())
        }
        YamlData::Value(Scalar::String(s)) => Value::Str(s.to_string()),
        YamlData::Representation(s, ..) => Value::Str(s.to_string()),
        YamlData::Sequence(items) => Value::Seq(items.iter().map(|i| convert(i, text, byte, errors, map)).collect()),
        YamlData::Mapping(m) => Value::Map(merge_keys(
            m.iter()
                .map(|(k, v)| (convert(k, text, byte, errors, map), convert(v, text, byte, errors, map)))
                .collect(),
        )),
        YamlData::Tagged(tag, _) => {
            errors.push(map.error(
                Some(start..end),
                "",
                format!("YAML tag {tag} is not supported"),
                "remove the tag (Compose's !reset and !override merge files, which plumb does not)",
            ));
            Value::Null
        }
        YamlData::Alias(_) => Value::Null,
    };
    // A mapping or list spans up to where the next one starts: point at its first line.
    let end = match value {
        Value::Map(_) | Value::Seq(_) => text[start..end].find('\n').map_or(end, |i| start + i),
        _ => end,
    };
    Node {
        span: start..end,
        value,
    }
}

/// YAML merge keys (`<<: *anchor`, as Compose files use them to share settings): the
/// anchor's entries join the mapping where the mapping does not set them itself. They keep
/// their spans, so an error in one points at the anchor, where it is written.
fn merge_keys(entries: Vec<(Node, Node)>) -> Vec<(Node, Node)> {
    let is_merge = |k: &Node| matches!(&k.value, Value::Str(s) if s == "<<");
    if !entries.iter().any(|(k, _)| is_merge(k)) {
        return entries;
    }
    let own: Vec<String> = entries
        .iter()
        .filter(|(k, _)| !is_merge(k))
        .filter_map(|(k, _)| k.text())
        .collect();
    let mut out: Vec<(Node, Node)> = Vec::new();
    for (k, v) in entries {
        if !is_merge(&k) {
            out.push((k, v));
            continue;
        }
        let sources = match v.value {
            Value::Seq(items) => items,
            _ => vec![v],
        };
        for source in sources {
            let Value::Map(inner) = source.value else {
                // Not a mapping: left for the reader to report as an unknown key.
                out.push((k.clone(), source));
                continue;
            };
            for (ik, iv) in inner {
                let name = ik.text();
                let taken = name.as_ref().is_some_and(|n| own.contains(n))
                    || out.iter().any(|(ok, _)| ok.text().is_some() && ok.text() == name);
                if !taken {
                    out.push((ik, iv));
                }
            }
        }
    }
    out
}

/// `$$` becomes a literal `$` in every string, as in Compose; any other `$` would be
/// interpolation, refused. Extensions (`x-*`) are skipped, as plumb ignores them: what they
/// lend through `<<` is checked where it lands (merged before this runs).
fn dollars(node: &mut Node, field: &str, errors: &mut Vec<Diagnostic>, map: &SourceMap) {
    match &mut node.value {
        Value::Str(s) => *s = unescape_dollars(s, field, node.span.clone(), errors, map),
        Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                dollars(item, &format!("{field}[{i}]"), errors, map);
            }
        }
        Value::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                let key = k.text().unwrap_or_default();
                if key.starts_with("x-") {
                    continue;
                }
                let field = match field {
                    "" => key,
                    _ => format!("{field}.{key}"),
                };
                dollars(k, &field, errors, map);
                dollars(v, &field, errors, map);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn unescape_dollars(s: &str, field: &str, span: Range<usize>, errors: &mut Vec<Diagnostic>, map: &SourceMap) -> String {
    if !s.contains('$') {
        return s.to_string();
    }
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '$' {
            out.push(c);
        } else if chars.peek() == Some(&'$') {
            chars.next();
            out.push('$');
        } else {
            errors.push(map.error(
                Some(span.clone()),
                field,
                format!("{s:?}: variable interpolation ($VAR, ${{VAR}}) is not supported"),
                "write the value itself, or $$ for a literal $ (plumb reads the file again later, when the shell's variables may differ)",
            ));
            return s.to_string();
        }
    }
    out
}

struct Reader<'a> {
    map: &'a SourceMap<'a>,
    input: &'a ComposeInput<'a>,
    errors: Vec<Diagnostic>,
}

/// Keys plumb refuses, with what to do instead.
fn unsupported_hint(key: &str) -> Option<&'static str> {
    Some(match key {
        "volumes" | "tmpfs" => "plumb runs host programs in network namespaces and mounts nothing: remove it; a host program sees the host's files",
        "secrets" | "configs" => "plumb mounts nothing: remove it, and give the value through environment or a file the program reads",
        "privileged" => "give the capabilities the program needs with cap_add instead",
        "network_mode" => "plumb wires every container into its networks: remove it and use networks",
        "links" | "external_links" => "services find each other by name on a shared network: remove it",
        "extends" | "include" => "write the service out in full: plumb reads one file",
        "profiles" => "remove it: plumb brings up every service of the file",
        "container_name" => "plumb names containers SERVICE-N: remove it",
        "hostname" | "domainname" => "plumb gives each container the hostname SERVICE-N: remove it",
        "dns" | "dns_search" | "dns_opt" | "extra_hosts" => "plumb answers names of the stack itself: remove it",
        "pid" | "ipc" | "uts" | "userns_mode" | "cgroup" | "cgroup_parent" | "isolation" => {
            "plumb shares these namespaces with the host: remove it"
        }
        "mac_address" | "sysctls" | "ulimits" | "devices" | "device_cgroup_rules" | "security_opt" | "shm_size"
        | "cpu_shares" | "oom_score_adj" | "storage_opt"
        | "group_add" | "init" | "tty" | "stdin_open" | "logging" | "platform" | "pull_policy" | "runtime"
        | "read_only" | "stop_signal" | "annotations" | "attach" | "develop" | "post_start" | "pre_stop"
        | "gpus" | "blkio_config" | "cpu_count" | "cpu_percent" | "cpu_period" | "cpu_quota" | "cpu_rt_runtime"
        | "cpu_rt_period" | "cpuset" | "credential_spec" | "mem_reservation" | "mem_swappiness"
        | "oom_kill_disable" | "models" | "provider" | "use_api_socket" | "volumes_from" => {
            "plumb does not set this for host programs: remove it"
        }
        _ => return None,
    })
}

impl Reader<'_> {
    fn err(&mut self, span: Range<usize>, field: &str, message: impl Into<String>, hint: impl Into<String>) {
        let d = self.map.error(Some(span), field, message, hint);
        self.errors.push(d);
    }

    fn unknown_key(&mut self, key: &Node, field: &str, known: &str) {
        let name = key.text().unwrap_or_default();
        match unsupported_hint(&name) {
            Some(hint) => self.err(
                key.span.clone(),
                field,
                format!("{name} is not supported by plumb"),
                hint,
            ),
            None => self.err(
                key.span.clone(),
                field,
                format!("unknown key {name:?}"),
                format!("here plumb reads {known}; {SEE_DOCS}"),
            ),
        }
    }

    /// The entries of a mapping with string keys; `None` (reported) for anything else. Null
    /// (a key with nothing after it) is an empty mapping.
    fn entries(&mut self, node: &Node, field: &str, example: &str) -> Option<Vec<(String, Node, Node)>> {
        match &node.value {
            Value::Null => Some(Vec::new()),
            Value::Map(entries) => Some(
                entries
                    .iter()
                    .map(|(k, v)| (k.text().unwrap_or_default(), k.clone(), v.clone()))
                    .collect(),
            ),
            _ => {
                self.err(
                    node.span.clone(),
                    field,
                    format!("expected a mapping, found {}", node.kind()),
                    format!("write it as a mapping, e.g. {example}"),
                );
                None
            }
        }
    }

    fn string(&mut self, node: &Node, field: &str, example: &str) -> Option<Spanned<String>> {
        match &node.value {
            Value::Str(s) => Some(node.spanned(s.clone())),
            Value::Number(n) => Some(node.spanned(n.clone())),
            _ => {
                self.err(
                    node.span.clone(),
                    field,
                    format!("expected a string, found {}", node.kind()),
                    format!("e.g. {example}"),
                );
                None
            }
        }
    }

    /// A list of strings, or one string as a list of one.
    fn strings(&mut self, node: &Node, field: &str, example: &str) -> Option<Vec<Spanned<String>>> {
        match &node.value {
            Value::Str(_) | Value::Number(_) => self.string(node, field, example).map(|s| vec![s]),
            Value::Seq(items) => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    out.push(self.string(item, &format!("{field}[{i}]"), example)?);
                }
                Some(out)
            }
            _ => {
                self.err(
                    node.span.clone(),
                    field,
                    format!("expected a list of strings, found {}", node.kind()),
                    format!("e.g. {example}"),
                );
                None
            }
        }
    }

    fn stack(&mut self, root: Node) -> RawStack {
        let mut name = None;
        let mut services = None;
        let mut networks = None;
        let mut services_key = 0..0;
        for (key, k, v) in self.entries(&root, "", "services: {...}").unwrap_or_default() {
            match key.as_str() {
                "name" => name = self.string(&v, "name", "name: shop"),
                "services" => {
                    services_key = k.span.clone();
                    services = Some(v);
                }
                "networks" => networks = Some((k, v)),
                // Obsolete in Compose, which ignores it too.
                "version" => {}
                _ if key.starts_with("x-") => {}
                _ => self.unknown_key(&k, &key, "name, services and networks at the top level"),
            }
        }
        let name = name.unwrap_or_else(|| Spanned::new(0..0, stack_name_from(self.input.dir_name)));
        if name.get_ref().is_empty() {
            self.err(
                0..0,
                "name",
                format!("the folder name {:?} gives no stack name", self.input.dir_name),
                "add name: NAME at the top (lowercase letters, digits, '-')",
            );
        }
        let mut raw_networks = BTreeMap::new();
        if let Some((_, v)) = &networks {
            for (net, k, v) in self
                .entries(v, "networks", "networks: { front: {} }")
                .unwrap_or_default()
            {
                if let Some(n) = self.network(&net, &v) {
                    raw_networks.insert(k.spanned(net), (k.span.clone(), n));
                }
            }
        }
        let mut raw_services = BTreeMap::new();
        let mut wants_default = false;
        match &services {
            None => self.err(
                0..0,
                "services",
                "the file has no services",
                "add services: with at least one service",
            ),
            Some(v) => {
                for (svc, k, v) in self
                    .entries(v, "services", "services: { web: {...} }")
                    .unwrap_or_default()
                {
                    let mut service = self.service(&svc, &v);
                    if service.networks.is_none() {
                        wants_default = true;
                        service.networks =
                            Some(k.spanned(RawValue::Array(vec![k.spanned(RawValue::String("default".into()))])));
                    }
                    wants_default |= service.networks.as_ref().is_some_and(|n| joins_default(n.get_ref()));
                    raw_services.insert(k.spanned(svc), service);
                }
            }
        }
        // Compose's `default` network, made when a service joins no other.
        if wants_default && !raw_networks.keys().any(|k: &Spanned<String>| k.get_ref() == "default") {
            let span = networks.as_ref().map_or(services_key.clone(), |(k, _)| k.span.clone());
            raw_networks.insert(
                Spanned::new(span.clone(), "default".to_string()),
                (span, PendingNetwork::default()),
            );
        }
        let networks = self.subnets(name.get_ref(), raw_networks);
        RawStack {
            name,
            service_subnet: None,
            metrics: None,
            ui: None,
            mesh: None,
            tracing: None,
            routes: Vec::new(),
            networks,
            services: raw_services,
            policies: Vec::new(),
            experiments: Vec::new(),
        }
    }

    /// A top-level network: `driver: bridge`, `internal`, `ipam.config[].subnet/gateway`.
    fn network(&mut self, net: &str, node: &Node) -> Option<PendingNetwork> {
        let field = format!("networks.{net}");
        let mut out = PendingNetwork::default();
        for (key, k, v) in self.entries(node, &field, "front: { internal: true }")? {
            let kfield = format!("{field}.{key}");
            match key.as_str() {
                "driver" => match v.text().as_deref() {
                    Some("bridge") => {}
                    other => self.err(
                        v.span.clone(),
                        &kfield,
                        format!("network driver {:?} is not supported", other.unwrap_or_default()),
                        "plumb makes every Compose network a Linux bridge: use driver: bridge, or remove it",
                    ),
                },
                "internal" => match v.value {
                    Value::Bool(b) => out.internal = Some(b),
                    _ => self.err(
                        v.span.clone(),
                        &kfield,
                        "internal must be true or false",
                        "internal: true",
                    ),
                },
                "ipam" => self.ipam(&kfield, &v, &mut out),
                "enable_ipv6" => {
                    if !matches!(v.value, Value::Bool(false)) {
                        self.err(
                            v.span.clone(),
                            &kfield,
                            "IPv6 networks are not supported",
                            "remove enable_ipv6 (plumb's networks are IPv4)",
                        );
                    }
                }
                "attachable" | "labels" => {}
                "external" | "name" => self.err(
                    k.span.clone(),
                    &kfield,
                    format!("{key} is not supported: plumb makes and names the stack's own networks"),
                    "remove it; a network of another stack cannot be joined from a compose file",
                ),
                "driver_opts" => self.err(
                    k.span.clone(),
                    &kfield,
                    "driver_opts are not supported",
                    "remove them: plumb's bridges take no options",
                ),
                _ if key.starts_with("x-") => {}
                _ => self.unknown_key(&k, &kfield, "driver, internal and ipam in a network"),
            }
        }
        Some(out)
    }

    fn ipam(&mut self, field: &str, node: &Node, out: &mut PendingNetwork) {
        for (key, k, v) in self
            .entries(node, field, "ipam: { config: [ { subnet: 10.89.1.0/24 } ] }")
            .unwrap_or_default()
        {
            let kfield = format!("{field}.{key}");
            match key.as_str() {
                "driver" => {
                    if v.text().as_deref() != Some("default") {
                        self.err(
                            v.span.clone(),
                            &kfield,
                            "only the default IPAM driver is supported",
                            "remove driver, or write driver: default",
                        );
                    }
                }
                "config" => {
                    let Value::Seq(items) = &v.value else {
                        self.err(
                            v.span.clone(),
                            &kfield,
                            "config must be a list",
                            "config: [ { subnet: 10.89.1.0/24 } ]",
                        );
                        continue;
                    };
                    if items.len() > 1 {
                        self.err(
                            items[1].span.clone(),
                            &format!("{kfield}[1]"),
                            "a network takes one subnet",
                            "keep one entry in config",
                        );
                    }
                    let Some(item) = items.first() else { continue };
                    let cfield = format!("{kfield}[0]");
                    for (ckey, ck, cv) in self
                        .entries(item, &cfield, "{ subnet: 10.89.1.0/24 }")
                        .unwrap_or_default()
                    {
                        let f = format!("{cfield}.{ckey}");
                        match ckey.as_str() {
                            "subnet" => out.subnet = self.string(&cv, &f, "subnet: 10.89.1.0/24"),
                            "gateway" => out.gateway = self.string(&cv, &f, "gateway: 10.89.1.1"),
                            _ => self.err(
                                ck.span.clone(),
                                &f,
                                format!("{ckey} is not supported"),
                                "plumb hands out addresses from the whole subnet: keep subnet and gateway",
                            ),
                        }
                    }
                }
                "options" => self.err(k.span.clone(), &kfield, "IPAM options are not supported", "remove them"),
                _ => self.unknown_key(&k, &kfield, "driver and config in ipam"),
            }
        }
    }

    /// Networks as the raw stack holds them: those without a subnet get one of
    /// [`AUTO_SUBNETS`] that no other network of the file overlaps.
    fn subnets(
        &mut self,
        stack: &str,
        pending: BTreeMap<Spanned<String>, (Range<usize>, PendingNetwork)>,
    ) -> BTreeMap<Spanned<String>, RawNetwork> {
        let mut taken: Vec<Ipv4Net> = pending
            .values()
            .filter_map(|(_, n)| n.subnet.as_ref()?.get_ref().parse::<Ipv4Net>().ok())
            .collect();
        let mut out = BTreeMap::new();
        for (key, (span, n)) in pending {
            let subnet = match n.subnet {
                Some(s) => s,
                None => {
                    let Some(chosen) = auto_subnet(stack, key.get_ref(), &taken) else {
                        self.err(
                            span,
                            &format!("networks.{}", key.get_ref()),
                            format!("no free /24 is left in {AUTO_SUBNETS} for this network"),
                            "give it a subnet: ipam: { config: [ { subnet: 10.89.1.0/24 } ] }",
                        );
                        continue;
                    };
                    taken.push(chosen);
                    Spanned::new(span, chosen.to_string())
                }
            };
            out.insert(
                key,
                RawNetwork {
                    subnet,
                    gateway: n.gateway,
                    internal: n.internal,
                    driver: None,
                    vni: None,
                    host_prefix: None,
                },
            );
        }
        out
    }

    /// `deploy.resources`: its `limits` (cpus, memory, pids) are the service's limits;
    /// reservations plumb does not make, and says so.
    fn resources(&mut self, field: &str, node: &Node, svc: &mut RawService) {
        let example = "resources: { limits: { cpus: \"0.5\", memory: 256M, pids: 512 } }";
        for (key, k, v) in self.entries(node, field, example).unwrap_or_default() {
            let rfield = format!("{field}.{key}");
            if key != "limits" {
                self.err(
                    k.span.clone(),
                    &rfield,
                    format!("deploy.resources.{key} is not supported"),
                    "plumb sets limits only (deploy.resources.limits): remove it",
                );
                continue;
            }
            for (lkey, lk, lv) in self.entries(&v, &rfield, example).unwrap_or_default() {
                let lfield = format!("{rfield}.{lkey}");
                match lkey.as_str() {
                    "cpus" => svc.cpus = Some(lv.spanned(raw_value(&lv))),
                    "memory" => svc.memory = Some(lv.spanned(raw_value(&lv))),
                    "pids" => svc.pids = self.int(&lv, &lfield, "pids: 512"),
                    _ => self.err(
                        lk.span.clone(),
                        &lfield,
                        format!("deploy.resources.limits.{lkey} is not supported"),
                        "plumb limits cpus, memory and pids: remove it",
                    ),
                }
            }
        }
    }

    fn service(&mut self, name: &str, node: &Node) -> RawService {
        let field = format!("services.{name}");
        let mut svc = RawService::default();
        let mut entrypoint: Option<Node> = None;
        let mut command: Option<Node> = None;
        let mut environment: Option<(Node, Node)> = None;
        let mut env_files: Option<Node> = None;
        let mut runs_on_host = false;
        let mut scale: Option<Spanned<i64>> = None;
        let mut aliases = Vec::new();
        let entries = self
            .entries(node, &field, "web: { command: [\"/usr/sbin/nginx\"] }")
            .unwrap_or_default();
        for (key, k, v) in entries {
            let kfield = format!("{field}.{key}");
            match key.as_str() {
                "image" => svc.image = self.string(&v, &kfield, "image: nginx"),
                "build" => svc.build = Some(v.spanned(raw_value(&v))),
                "x-plumb" => (runs_on_host, svc.autoscale) = self.x_plumb(&kfield, &v),
                "command" => command = Some(v),
                "entrypoint" => entrypoint = Some(v),
                "environment" => environment = Some((k, v)),
                "env_file" => env_files = Some(v),
                "networks" => svc.networks = self.service_networks(&kfield, &k, &v, &mut aliases),
                "ports" => svc.ports = self.ports(&kfield, &k, &v),
                "expose" => svc.expose = self.expose(&kfield, &k, &v),
                "depends_on" => svc.depends_on = self.depends_on(&kfield, &k, &v),
                "healthcheck" => svc.health = self.healthcheck(&kfield, &k, &v),
                "deploy" => {
                    for (dkey, dk, dv) in self.entries(&v, &kfield, "deploy: { replicas: 3 }").unwrap_or_default() {
                        let dfield = format!("{kfield}.{dkey}");
                        match dkey.as_str() {
                            "replicas" => svc.replicas = self.int(&dv, &dfield, "replicas: 3"),
                            "resources" => self.resources(&dfield, &dv, &mut svc),
                            "mode" if dv.text().as_deref() == Some("replicated") => {}
                            _ if dkey.starts_with("x-") => {}
                            _ => self.err(
                                dk.span.clone(),
                                &dfield,
                                format!("deploy.{dkey} is not supported"),
                                "plumb reads deploy.replicas and deploy.resources.limits only: remove it",
                            ),
                        }
                    }
                }
                "scale" => scale = self.int(&v, &kfield, "scale: 3"),
                "cap_add" | "cap_drop" => {
                    let names = self.strings(&v, &kfield, "[NET_ADMIN]").map(|names| {
                        v.spanned(RawValue::Array(
                            names
                                .into_iter()
                                .map(|n| Spanned::new(n.span(), RawValue::String(n.into_inner())))
                                .collect(),
                        ))
                    });
                    if key == "cap_add" {
                        svc.cap_add = names;
                    } else {
                        svc.cap_drop = names;
                    }
                }
                "restart" => svc.restart = self.restart(&kfield, &v),
                "working_dir" => svc.workdir = self.string(&v, &kfield, "working_dir: /srv"),
                "user" => svc.user = self.string(&v, &kfield, "user: nobody"),
                "stop_grace_period" => svc.stop_grace = self.string(&v, &kfield, "stop_grace_period: 10s"),
                "cpus" => svc.cpus = Some(v.spanned(raw_value(&v))),
                "mem_limit" => svc.memory = Some(v.spanned(raw_value(&v))),
                "memswap_limit" => svc.memory_swap = Some(v.spanned(raw_value(&v))),
                "pids_limit" => svc.pids = self.int(&v, &kfield, "pids_limit: 512"),
                // Metadata: nothing to run.
                "labels" => {}
                _ if key.starts_with("x-") => {}
                _ => self.unknown_key(&k, &kfield, "the keys of a service"),
            }
        }
        if runs_on_host {
            svc.image = None;
            svc.build = None;
        }
        match (scale, &svc.replicas) {
            (Some(s), Some(r)) if s.get_ref() != r.get_ref() => self.err(
                s.span(),
                &format!("{field}.scale"),
                format!("scale {} and deploy.replicas {} differ", s.get_ref(), r.get_ref()),
                "keep one of them",
            ),
            (Some(s), None) => svc.replicas = Some(s),
            _ => {}
        }
        svc.command = self.command(&field, entrypoint.as_ref(), command.as_ref());
        svc.env = self.environment(&field, environment.as_ref(), env_files.as_ref());
        if !aliases.is_empty() {
            let span = aliases.first().map_or(0..0, |a: &Spanned<RawValue>| a.span());
            svc.aliases = Some(Spanned::new(span, aliases));
        }
        // Compose restarts nothing unless told; plumb's own default is on-failure.
        if svc.restart.is_none() && svc.command.is_some() {
            svc.restart = Some(Spanned::new(0..0, "no".to_string()));
        }
        svc
    }

    /// `x-plumb: { host: true }`: run `command` on the host, whatever `image` says (it keeps
    /// the file valid for Docker, which needs an image or a build). `x-plumb: { autoscale:
    /// {...} }`: the stack file's `[services.X.autoscale]`.
    fn x_plumb(&mut self, field: &str, node: &Node) -> (bool, Option<Spanned<RawAutoscale>>) {
        let mut host = false;
        let mut autoscale = None;
        for (key, k, v) in self.entries(node, field, "x-plumb: { host: true }").unwrap_or_default() {
            match (key.as_str(), &v.value) {
                ("host", Value::Bool(b)) => host = *b,
                ("autoscale", _) => autoscale = self.autoscale(&format!("{field}.autoscale"), &v),
                ("host", _) => self.err(
                    v.span.clone(),
                    &format!("{field}.host"),
                    "host must be true or false",
                    "x-plumb: { host: true }",
                ),
                _ => self.err(
                    k.span.clone(),
                    &format!("{field}.{key}"),
                    format!("unknown x-plumb key {key:?}"),
                    "x-plumb takes host: true (run command on the host, ignoring image) and autoscale: {...}",
                ),
            }
        }
        (host, autoscale)
    }

    /// `x-plumb: { autoscale: { max: 10, requests_per_second: 200 } }`, with the stack file's
    /// keys (judged as there).
    fn autoscale(&mut self, field: &str, node: &Node) -> Option<Spanned<RawAutoscale>> {
        let mut a = RawAutoscale::default();
        let example = "autoscale: { max: 10, requests_per_second: 200 }";
        for (key, k, v) in self.entries(node, field, example)? {
            let kfield = format!("{field}.{key}");
            match key.as_str() {
                "min" => a.min = self.int(&v, &kfield, "min: 1"),
                "max" => a.max = self.int(&v, &kfield, "max: 10"),
                "requests_per_second" => a.requests_per_second = self.int(&v, &kfield, "requests_per_second: 200"),
                "connections" => a.connections = self.int(&v, &kfield, "connections: 50"),
                "cpu" => a.cpu = self.string(&v, &kfield, "cpu: 70%"),
                "scale_down_window" => a.scale_down_window = self.string(&v, &kfield, "scale_down_window: 30s"),
                "scale_up_period" => a.scale_up_period = self.string(&v, &kfield, "scale_up_period: 15s"),
                _ => self.unknown_key(
                    &k,
                    &kfield,
                    "min, max, requests_per_second, connections, cpu, scale_down_window and scale_up_period",
                ),
            }
        }
        Some(node.spanned(a))
    }

    fn int(&mut self, node: &Node, field: &str, example: &str) -> Option<Spanned<i64>> {
        match (&node.value, node.int()) {
            (Value::Number(_), Some(n)) => Some(node.spanned(n)),
            _ => {
                self.err(
                    node.span.clone(),
                    field,
                    format!("expected a whole number, found {}", node.kind()),
                    format!("e.g. {example}"),
                );
                None
            }
        }
    }

    /// `entrypoint` then `command`, as Docker joins them; a string is split as a shell would.
    fn command(&mut self, field: &str, entrypoint: Option<&Node>, command: Option<&Node>) -> Option<Spanned<RawValue>> {
        let mut words: Vec<Spanned<RawValue>> = Vec::new();
        let mut first: Option<Range<usize>> = None;
        for (key, node) in [("entrypoint", entrypoint), ("command", command)] {
            let Some(node) = node else { continue };
            if matches!(node.value, Value::Null) {
                continue;
            }
            let kfield = format!("{field}.{key}");
            first.get_or_insert(node.span.clone());
            match &node.value {
                Value::Str(s) => match split_command(s) {
                    Ok(split) => words.extend(split.into_iter().map(|w| node.spanned(RawValue::String(w)))),
                    Err(why) => {
                        self.err(
                            node.span.clone(),
                            &kfield,
                            format!("{key} {why}"),
                            format!("{key}: [\"program\", \"arg\"]"),
                        );
                        return None;
                    }
                },
                Value::Seq(_) => {
                    let items = self.strings(node, &kfield, &format!("{key}: [\"program\", \"arg\"]"))?;
                    words.extend(
                        items
                            .into_iter()
                            .map(|w| Spanned::new(w.span(), RawValue::String(w.into_inner()))),
                    );
                }
                _ => {
                    self.err(
                        node.span.clone(),
                        &kfield,
                        format!("{key} must be a string or a list of strings"),
                        format!("{key}: [\"program\", \"arg\"]"),
                    );
                    return None;
                }
            }
        }
        first.map(|span| Spanned::new(span, RawValue::Array(words)))
    }

    /// `env_file` entries first, `environment` over them (as Compose gives precedence).
    fn environment(
        &mut self,
        field: &str,
        environment: Option<&(Node, Node)>,
        env_files: Option<&Node>,
    ) -> Option<Spanned<RawTable>> {
        let mut table = RawTable::new();
        let set = |table: &mut RawTable, key: Spanned<String>, value: Spanned<RawValue>| {
            table.remove(key.get_ref().as_str());
            table.insert(key, value);
        };
        let mut span = None;
        if let Some(files) = env_files {
            span = Some(files.span.clone());
            let efield = format!("{field}.env_file");
            let items: Vec<Node> = match &files.value {
                Value::Seq(items) => items.clone(),
                _ => vec![files.clone()],
            };
            for (i, item) in items.iter().enumerate() {
                let ifield = format!("{efield}[{i}]");
                let (path, required) = match &item.value {
                    Value::Str(p) => (p.clone(), true),
                    Value::Map(_) => {
                        let mut path = None;
                        let mut required = true;
                        for (key, k, v) in self.entries(item, &ifield, "{ path: app.env }").unwrap_or_default() {
                            match (key.as_str(), &v.value) {
                                ("path", Value::Str(p)) => path = Some(p.clone()),
                                ("required", Value::Bool(b)) => required = *b,
                                ("format", _) if v.text().as_deref() == Some("raw") => {}
                                _ => self.err(
                                    k.span.clone(),
                                    &format!("{ifield}.{key}"),
                                    format!("{key} is not understood here"),
                                    "write { path: FILE, required: true|false }",
                                ),
                            }
                        }
                        match path {
                            Some(p) => (p, required),
                            None => {
                                self.err(
                                    item.span.clone(),
                                    &ifield,
                                    "the entry names no path",
                                    "write { path: FILE }",
                                );
                                continue;
                            }
                        }
                    }
                    _ => {
                        self.err(
                            item.span.clone(),
                            &ifield,
                            "env_file takes file names",
                            "env_file: app.env",
                        );
                        continue;
                    }
                };
                match (self.input.read_env_file)(&path) {
                    Ok(text) => match parse_env_file(&text) {
                        Ok(vars) => {
                            for (k, v) in vars {
                                set(&mut table, item.spanned(k), item.spanned(RawValue::String(v)));
                            }
                        }
                        Err((line, why)) => self.err(
                            item.span.clone(),
                            &ifield,
                            format!("{path}:{line}: {why}"),
                            "write one KEY=VALUE a line (# starts a comment)",
                        ),
                    },
                    Err(_) if !required => {}
                    Err(why) => self.err(
                        item.span.clone(),
                        &ifield,
                        format!("cannot read env file {path:?}: {why}"),
                        "give a file next to the compose file, or write { path: FILE, required: false }",
                    ),
                }
            }
        }
        if let Some((k, v)) = environment {
            span.get_or_insert(k.span.clone());
            let efield = format!("{field}.environment");
            let unset = |r: &mut Self, span: Range<usize>, name: &str| {
                r.err(
                    span,
                    &format!("{efield}.{name}"),
                    format!("{name} has no value: Compose would take it from the shell"),
                    format!("write {name}=VALUE: plumb does not pass the shell's variables"),
                );
            };
            match &v.value {
                Value::Map(entries) => {
                    for (key, value) in entries {
                        let name = key.text().unwrap_or_default();
                        match value.text() {
                            Some(text) => set(&mut table, key.spanned(name), value.spanned(RawValue::String(text))),
                            None if matches!(value.value, Value::Null) => unset(self, key.span.clone(), &name),
                            None => self.err(
                                value.span.clone(),
                                &format!("{efield}.{name}"),
                                "a variable's value must be a string, number or boolean",
                                format!("{name}: \"value\""),
                            ),
                        }
                    }
                }
                Value::Seq(items) => {
                    for (i, item) in items.iter().enumerate() {
                        match item.text() {
                            Some(line) => match line.split_once('=') {
                                Some((name, value)) => set(
                                    &mut table,
                                    item.spanned(name.to_string()),
                                    item.spanned(RawValue::String(value.to_string())),
                                ),
                                None => unset(self, item.span.clone(), &line),
                            },
                            None => self.err(
                                item.span.clone(),
                                &format!("{efield}[{i}]"),
                                "write KEY=VALUE",
                                "- KEY=VALUE",
                            ),
                        }
                    }
                }
                Value::Null => {}
                _ => self.err(
                    v.span.clone(),
                    &efield,
                    "environment must be a mapping or a list of KEY=VALUE",
                    "environment: { KEY: value }",
                ),
            }
        }
        span.map(|s| Spanned::new(s, table))
    }

    /// A service's `networks`: a list of names, or a mapping of names to `aliases` and
    /// `ipv4_address`. Aliases go to the service's own (plumb's names are stack-wide).
    fn service_networks(
        &mut self,
        field: &str,
        key: &Node,
        node: &Node,
        aliases: &mut Vec<Spanned<RawValue>>,
    ) -> Option<Spanned<RawValue>> {
        match &node.value {
            Value::Seq(_) => {
                let names = self.strings(node, field, "networks: [front]")?;
                Some(key.spanned(string_array(names)))
            }
            Value::Map(_) => {
                let mut table = RawTable::new();
                for (net, k, v) in self.entries(node, field, "networks: { front: {} }")? {
                    let nfield = format!("{field}.{net}");
                    let mut attach = RawTable::new();
                    for (akey, ak, av) in self
                        .entries(&v, &nfield, "front: { ipv4_address: 10.89.1.10 }")
                        .unwrap_or_default()
                    {
                        let afield = format!("{nfield}.{akey}");
                        match akey.as_str() {
                            "ipv4_address" => {
                                if let Some(ip) = self.string(&av, &afield, "ipv4_address: 10.89.1.10") {
                                    attach.insert(
                                        ak.spanned("ip".to_string()),
                                        Spanned::new(ip.span(), RawValue::String(ip.into_inner())),
                                    );
                                }
                            }
                            "aliases" => {
                                for a in self.strings(&av, &afield, "aliases: [cache]").unwrap_or_default() {
                                    aliases.push(Spanned::new(a.span(), RawValue::String(a.into_inner())));
                                }
                            }
                            _ => self.err(
                                ak.span.clone(),
                                &afield,
                                format!("{akey} is not supported"),
                                "a service's network takes aliases and ipv4_address",
                            ),
                        }
                    }
                    table.insert(k.spanned(net), v.spanned(RawValue::Table(attach)));
                }
                Some(key.spanned(RawValue::Table(table)))
            }
            _ => {
                self.err(
                    node.span.clone(),
                    field,
                    "networks must be a list or a mapping",
                    "networks: [front]",
                );
                None
            }
        }
    }

    /// `ports`, short (`[IP:]HOST:CONTAINER[/PROTO]`, ranges) and long form, as plumb's
    /// `[IP:]HOST:CONTAINER[/PROTO]` strings (one a port).
    fn ports(&mut self, field: &str, key: &Node, node: &Node) -> Option<Spanned<Vec<Spanned<String>>>> {
        let Value::Seq(items) = &node.value else {
            self.err(node.span.clone(), field, "ports must be a list", "ports: [\"8080:80\"]");
            return None;
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let ifield = format!("{field}[{i}]");
            let mapped = match &item.value {
                Value::Map(_) => self.long_port(&ifield, item),
                _ => match item.text() {
                    Some(text) => short_port(&text),
                    None => Err("write \"HOST:CONTAINER\"".to_string()),
                },
            };
            match mapped {
                Ok(ports) => out.extend(ports.into_iter().map(|p| item.spanned(p))),
                Err(why) => self.err(
                    item.span.clone(),
                    &ifield,
                    format!("{} is not a port plumb can publish: {why}", item.text().map_or("this".to_string(), |t| format!("{t:?}"))),
                    "write \"[IP:]HOST:CONTAINER[/udp]\" with the host port, e.g. \"8080:80\" or \"127.0.0.1:8080-8081:80-81\"",
                ),
            }
        }
        Some(key.spanned(out))
    }

    fn long_port(&mut self, field: &str, node: &Node) -> Result<Vec<String>, String> {
        let (mut target, mut published, mut host_ip, mut protocol) = (None, None, None, "tcp".to_string());
        for (key, k, v) in self
            .entries(node, field, "{ target: 80, published: 8080 }")
            .unwrap_or_default()
        {
            match key.as_str() {
                "target" => target = v.text(),
                "published" => published = v.text(),
                "host_ip" => host_ip = v.text(),
                "protocol" => protocol = v.text().unwrap_or_default(),
                "mode" | "name" | "app_protocol" => {}
                _ => self.err(
                    k.span.clone(),
                    &format!("{field}.{key}"),
                    format!("unknown port key {key:?}"),
                    "a port takes target, published, host_ip and protocol",
                ),
            }
        }
        let target = target.ok_or("it names no target (the container port)")?;
        let published = published.ok_or("it names no published (host) port: plumb does not pick one")?;
        let mut short = format!("{published}:{target}/{protocol}");
        if let Some(ip) = host_ip {
            short = format!("{ip}:{short}");
        }
        short_port(&short)
    }

    /// `expose`: container ports, ranges and `/udp` allowed.
    fn expose(&mut self, field: &str, key: &Node, node: &Node) -> Option<Spanned<Vec<Spanned<RawValue>>>> {
        let Value::Seq(items) = &node.value else {
            self.err(node.span.clone(), field, "expose must be a list", "expose: [\"5001\"]");
            return None;
        };
        let mut out = Vec::new();
        for item in items {
            let text = item.text().unwrap_or_default();
            let (ports, proto) = text.split_once('/').unwrap_or((&text, "tcp"));
            match port_range(ports) {
                Some((first, last)) => {
                    for p in first..=last {
                        let value = match proto {
                            "tcp" => RawValue::Integer(i64::from(p)),
                            _ => RawValue::String(format!("{p}/{proto}")),
                        };
                        out.push(item.spanned(value));
                    }
                }
                // Let validation say what a container port is.
                None => out.push(item.spanned(RawValue::String(text.clone()))),
            }
        }
        Some(key.spanned(out))
    }

    /// `depends_on`: a list (started), or a mapping with `condition`.
    fn depends_on(&mut self, field: &str, key: &Node, node: &Node) -> Option<Spanned<RawValue>> {
        match &node.value {
            Value::Seq(_) => {
                let names = self.strings(node, field, "depends_on: [redis]")?;
                Some(key.spanned(string_array(names)))
            }
            Value::Map(_) => {
                let mut table = RawTable::new();
                for (svc, k, v) in self.entries(node, field, "depends_on: { redis: { condition: service_healthy } }")? {
                    let sfield = format!("{field}.{svc}");
                    let mut condition = Spanned::new(k.span.clone(), RawValue::String("started".into()));
                    for (ckey, ck, cv) in self
                        .entries(&v, &sfield, "{ condition: service_healthy }")
                        .unwrap_or_default()
                    {
                        let cfield = format!("{sfield}.{ckey}");
                        match ckey.as_str() {
                            "condition" => match cv.text().as_deref() {
                                Some("service_started") => condition = cv.spanned(RawValue::String("started".into())),
                                Some("service_healthy") => condition = cv.spanned(RawValue::String("healthy".into())),
                                Some("service_completed_successfully") => self.err(
                                    cv.span.clone(),
                                    &cfield,
                                    "service_completed_successfully is not supported: plumb's services are long-running",
                                    "use service_started or service_healthy, or run the one-off step before `plumb up`",
                                ),
                                _ => self.err(
                                    cv.span.clone(),
                                    &cfield,
                                    format!("unknown condition {:?}", cv.text().unwrap_or_default()),
                                    "use service_started or service_healthy",
                                ),
                            },
                            "required" if matches!(cv.value, Value::Bool(true)) => {}
                            _ => self.err(
                                ck.span.clone(),
                                &cfield,
                                format!("{ckey} is not supported here"),
                                "a dependency takes condition (service_started or service_healthy)",
                            ),
                        }
                    }
                    let mut inner = RawTable::new();
                    inner.insert(Spanned::new(condition.span(), "condition".to_string()), condition);
                    table.insert(k.spanned(svc), v.spanned(RawValue::Table(inner)));
                }
                Some(key.spanned(RawValue::Table(table)))
            }
            _ => {
                self.err(
                    node.span.clone(),
                    field,
                    "depends_on must be a list or a mapping",
                    "depends_on: [redis]",
                );
                None
            }
        }
    }

    /// `healthcheck`: `test` (CMD, CMD-SHELL, a string, NONE), `disable`, the timings.
    fn healthcheck(&mut self, field: &str, key: &Node, node: &Node) -> Option<Spanned<RawHealth>> {
        let mut health = RawHealth::default();
        let mut disabled = false;
        let mut test = None;
        for (hkey, k, v) in self.entries(node, field, "healthcheck: { test: [\"CMD\", \"true\"] }")? {
            let hfield = format!("{field}.{hkey}");
            match hkey.as_str() {
                "test" => test = Some(v),
                "disable" => match v.value {
                    Value::Bool(b) => disabled = b,
                    _ => self.err(
                        v.span.clone(),
                        &hfield,
                        "disable must be true or false",
                        "disable: true",
                    ),
                },
                "interval" => health.interval = self.string(&v, &hfield, "interval: 1s"),
                "timeout" => health.timeout = self.string(&v, &hfield, "timeout: 1s"),
                "start_period" => health.start_period = self.string(&v, &hfield, "start_period: 5s"),
                "retries" => health.retries = self.int(&v, &hfield, "retries: 3"),
                _ => self.err(
                    k.span.clone(),
                    &hfield,
                    format!("{hkey} is not supported"),
                    "a healthcheck takes test, interval, timeout, retries, start_period and disable",
                ),
            }
        }
        if disabled {
            return None;
        }
        let tfield = format!("{field}.test");
        let Some(test) = test else {
            self.err(
                key.span.clone(),
                &tfield,
                "the healthcheck has no test",
                "add test: [\"CMD\", \"program\", \"arg\"] (plumb runs no image to take one from)",
            );
            return None;
        };
        let exec = match &test.value {
            Value::Str(s) => vec![
                test.spanned("/bin/sh".to_string()),
                test.spanned("-c".to_string()),
                test.spanned(s.clone()),
            ],
            Value::Seq(_) => {
                let words = self.strings(&test, &tfield, "test: [\"CMD\", \"redis-cli\", \"ping\"]")?;
                match words.first().map(|w| w.get_ref().as_str()) {
                    Some("NONE") => return None,
                    Some("CMD") => words[1..].to_vec(),
                    Some("CMD-SHELL") if words.len() == 2 => {
                        let s = &words[1];
                        vec![
                            Spanned::new(s.span(), "/bin/sh".to_string()),
                            Spanned::new(s.span(), "-c".to_string()),
                            s.clone(),
                        ]
                    }
                    _ => {
                        self.err(
                            test.span.clone(),
                            &tfield,
                            "a test list starts with CMD, CMD-SHELL (and one command line) or NONE",
                            "test: [\"CMD\", \"redis-cli\", \"ping\"] or test: [\"CMD-SHELL\", \"curl -f localhost\"]",
                        );
                        return None;
                    }
                }
            }
            _ => {
                self.err(
                    test.span.clone(),
                    &tfield,
                    "test must be a string or a list",
                    "test: [\"CMD\", \"redis-cli\", \"ping\"]",
                );
                return None;
            }
        };
        health.exec = Some(
            test.spanned(RawValue::Array(
                exec.into_iter()
                    .map(|w| Spanned::new(w.span(), RawValue::String(w.into_inner())))
                    .collect(),
            )),
        );
        Some(key.spanned(health))
    }

    fn restart(&mut self, field: &str, node: &Node) -> Option<Spanned<String>> {
        let text = node.text().unwrap_or_default();
        let policy = match text.as_str() {
            "no" => "no",
            "always" | "unless-stopped" => "always",
            t if t == "on-failure" || t.strip_prefix("on-failure:").is_some_and(|n| n.parse::<u32>().is_ok()) => {
                "on-failure"
            }
            _ => {
                // YAML reads a bare `no` as a string, but `false` as a boolean.
                self.err(
                    node.span.clone(),
                    field,
                    format!("unknown restart policy {text:?}"),
                    "use \"no\", \"always\", \"on-failure\" or \"unless-stopped\" (quote \"no\")",
                );
                return None;
            }
        };
        Some(node.spanned(policy.to_string()))
    }
}

/// True if a service's `networks` names `default` (made even when the file does not
/// declare it, as in Compose).
fn joins_default(networks: &RawValue) -> bool {
    match networks {
        RawValue::Array(items) => items.iter().any(|i| i.get_ref().as_str() == Some("default")),
        RawValue::Table(t) => t.contains_key("default"),
        _ => false,
    }
}

/// A top-level network before its subnet is settled.
#[derive(Default)]
struct PendingNetwork {
    subnet: Option<Spanned<String>>,
    gateway: Option<Spanned<String>>,
    internal: Option<bool>,
}

/// A stack name from a folder name, as Compose makes a project name: lowercase, other
/// characters as '-', starting with a letter, at most [`MAX_STACK_NAME`] long.
pub fn stack_name_from(dir_name: &str) -> String {
    let mut out = String::new();
    for c in dir_name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || (c.is_ascii_digit() && !out.is_empty()) {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(MAX_STACK_NAME);
    out.trim_end_matches('-').to_string()
}

/// The /24 of [`AUTO_SUBNETS`] a network without a subnet gets: the one the names hash to
/// (FNV-1a), or the next free one.
fn auto_subnet(stack: &str, network: &str, taken: &[Ipv4Net]) -> Option<Ipv4Net> {
    let range: Ipv4Net = AUTO_SUBNETS.parse().expect("a valid constant");
    let blocks: Vec<Ipv4Net> = range.subnets(24).expect("a /16 holds /24s").collect();
    let mut h: u32 = 0x811c_9dc5;
    for b in stack.bytes().chain([b'/']).chain(network.bytes()) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let start = h as usize % blocks.len();
    (0..blocks.len())
        .map(|i| blocks[(start + i) % blocks.len()])
        .find(|b| !taken.iter().any(|t| crate::ipam::subnets_overlap(*t, *b)))
}

/// `first-last` or one port.
fn port_range(text: &str) -> Option<(u16, u16)> {
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let (a, b) = (a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?);
    (a > 0 && a <= b).then_some((a, b))
}

/// Compose's short port syntax as plumb's port strings, one per port of a range.
fn short_port(text: &str) -> Result<Vec<String>, String> {
    let (ports, proto) = match text.rsplit_once('/') {
        Some((p, proto)) => (p, Some(proto)),
        None => (text, None),
    };
    let suffix = proto.map(|p| format!("/{p}")).unwrap_or_default();
    if ports.starts_with('[') {
        // IPv6: plumb says it does not take it.
        return Ok(vec![text.to_string()]);
    }
    let parts: Vec<&str> = ports.split(':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [_] => return Err("it names no host port: plumb does not pick one".into()),
        [host, container] => (None, *host, *container),
        [ip, host, container] => (Some(*ip), *host, *container),
        _ => return Err("too many ':'".into()),
    };
    if host.is_empty() {
        return Err("it names no host port: plumb does not pick one".into());
    }
    let prefix = ip.map(|i| format!("{i}:")).unwrap_or_default();
    let (Some(h), Some(c)) = (port_range(host), port_range(container)) else {
        // Not ranges: validation says what is wrong with the numbers.
        return Ok(vec![format!("{prefix}{host}:{container}{suffix}")]);
    };
    if h.1 - h.0 != c.1 - c.0 {
        return Err("the host and container ranges differ in length".into());
    }
    Ok((0..=c.1 - c.0)
        .map(|i| format!("{prefix}{}:{}{suffix}", h.0 + i, c.0 + i))
        .collect())
}

/// An env file's `KEY=VALUE` lines (`#` comments, blank lines, `export`, quotes), or the
/// number of the line at fault and why.
pub fn parse_env_file(text: &str) -> Result<Vec<(String, String)>, (usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err((
                i + 1,
                format!("{line:?} has no '=': plumb does not take values from the shell"),
            ));
        };
        let key = key.trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err((i + 1, format!("{key:?} is not a variable name")));
        }
        let value = value.trim();
        let value = match value.chars().next() {
            Some(q @ ('"' | '\'')) if value.len() >= 2 && value.ends_with(q) => value[1..value.len() - 1].to_string(),
            _ => value.split(" #").next().unwrap_or_default().trim_end().to_string(),
        };
        out.push((key.to_string(), value));
    }
    Ok(out)
}

/// Any node as a raw value (for `build`, judged by validation as a whole).
fn raw_value(node: &Node) -> RawValue {
    match &node.value {
        Value::Null => RawValue::Table(RawTable::new()),
        Value::Bool(b) => RawValue::Boolean(*b),
        Value::Number(n) => n.parse().map(RawValue::Integer).unwrap_or(RawValue::String(n.clone())),
        Value::Str(s) => RawValue::String(s.clone()),
        Value::Seq(items) => RawValue::Array(items.iter().map(|i| i.spanned(raw_value(i))).collect()),
        Value::Map(entries) => RawValue::Table(
            entries
                .iter()
                .map(|(k, v)| (k.spanned(k.text().unwrap_or_default()), v.spanned(raw_value(v))))
                .collect(),
        ),
    }
}

/// Names, each keeping its place, as the raw list the stack file's reader makes of them.
fn string_array(names: Vec<Spanned<String>>) -> RawValue {
    RawValue::Array(
        names
            .into_iter()
            .map(|n| Spanned::new(n.span(), RawValue::String(n.into_inner())))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{parse, parse_compose, to_toml, Condition, Parsed, Probe, RestartPolicy};
    use super::*;

    fn no_files(path: &str) -> Result<String, String> {
        match path {
            "app.env" => Ok("# settings\nA=from-file\nexport B=\"two words\"\nC=3 # count\n".into()),
            "bad.env" => Ok("A=1\nJUST_A_NAME\n".into()),
            _ => Err("No such file or directory".into()),
        }
    }

    fn input() -> ComposeInput<'static> {
        ComposeInput {
            dir_name: "My_Shop.app",
            read_env_file: &no_files,
        }
    }

    fn ok(text: &str) -> Parsed {
        match parse_compose("compose.yaml", text, &input()) {
            Ok(p) => p,
            Err(e) => panic!("{e}\nfor:\n{text}"),
        }
    }

    fn err(text: &str) -> String {
        match parse_compose("compose.yaml", text, &input()) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    /// One service `a` with these lines (indented 4) under it.
    fn svc(lines: &str) -> String {
        format!("name: s\nservices:\n  a:\n{lines}")
    }

    #[test]
    fn the_name_comes_from_the_file_or_its_folder() {
        assert_eq!(ok("services:\n  a: {}\n").stack.name, "my-shop-app");
        assert_eq!(ok("name: shop\nservices:\n  a: {}\n").stack.name, "shop");
        assert_eq!(stack_name_from("2024_Project"), "project");
        assert_eq!(stack_name_from("a-very-long-folder-name"), "a-very-long");
        let e = err("name: My_Shop\nservices:\n  a: {}\n");
        assert!(
            e.contains("compose.yaml:1:7: name: stack name \"My_Shop\" is not valid"),
            "{e}"
        );
        let e = match parse_compose(
            "c.yaml",
            "services:\n  a: {}\n",
            &ComposeInput {
                dir_name: "__",
                read_env_file: &no_files,
            },
        ) {
            Err(e) => e.to_string(),
            Ok(_) => panic!(),
        };
        assert!(e.contains("gives no stack name") && e.contains("add name:"), "{e}");
    }

    #[test]
    fn command_and_entrypoint_join_as_docker_joins_them() {
        let p = ok(&svc(
            "    entrypoint: /usr/bin/env FOO=1\n    command: [\"python3\", \"-c\", \"print('a b')\"]\n",
        ));
        let process = p.stack.services["a"].process.clone().unwrap();
        assert_eq!(
            process.command,
            ["/usr/bin/env", "FOO=1", "python3", "-c", "print('a b')"]
        );
        // Compose restarts nothing unless told.
        assert_eq!(process.restart, RestartPolicy::No);
        let p = ok(&svc("    command: sh -c 'echo \"hi there\"'\n"));
        assert_eq!(
            p.stack.services["a"].process.as_ref().unwrap().command,
            ["sh", "-c", "echo \"hi there\""]
        );
        let e = err(&svc("    command: \"sh -c 'unclosed\"\n"));
        assert!(
            e.contains("compose.yaml:4:14: services.a.command: command has an unterminated quote"),
            "{e}"
        );
        let e = err(&svc("    command: [\"sh\", {}]\n"));
        assert!(
            e.contains("compose.yaml:4:21: services.a.command[1]: expected a string"),
            "{e}"
        );
        // No command: a bare container.
        assert!(ok(&svc("    networks: [default]\n")).stack.services["a"]
            .process
            .is_none());
    }

    #[test]
    fn environment_takes_a_mapping_a_list_and_env_files() {
        let p = ok(&svc(
            "    command: x\n    env_file: [app.env, { path: missing.env, required: false }]\n    environment:\n      A: over\n      N: 1.10\n      T: true\n",
        ));
        let env = &p.stack.services["a"].process.as_ref().unwrap().env;
        assert_eq!(env["A"], "over");
        assert_eq!(env["B"], "two words");
        assert_eq!(env["C"], "3");
        assert_eq!(env["N"], "1.10");
        assert_eq!(env["T"], "true");
        let p = ok(&svc("    command: x\n    environment: [\"K=v=w\", \"E=\"]\n"));
        let env = &p.stack.services["a"].process.as_ref().unwrap().env;
        assert_eq!((env["K"].as_str(), env["E"].as_str()), ("v=w", ""));
        let e = err(&svc("    command: x\n    environment:\n      - FROM_SHELL\n"));
        assert!(
            e.contains("compose.yaml:6:9: services.a.environment.FROM_SHELL: FROM_SHELL has no value"),
            "{e}"
        );
        let e = err(&svc("    command: x\n    env_file: nope.env\n"));
        assert!(
            e.contains("compose.yaml:5:15: services.a.env_file[0]: cannot read env file \"nope.env\""),
            "{e}"
        );
        let e = err(&svc("    command: x\n    env_file: bad.env\n"));
        assert!(e.contains("compose.yaml:5:15") && e.contains("bad.env:2:"), "{e}");
        // Without a command there is no process to give it to.
        let e = err(&svc("    environment: { A: b }\n"));
        assert!(
            e.contains("compose.yaml:4:5: services.a.environment: env needs a command"),
            "{e}"
        );
    }

    #[test]
    fn interpolation_is_refused_and_dollars_escape() {
        let p = ok(&svc("    command: [\"sh\", \"-c\", \"echo $$HOME\"]\n"));
        assert_eq!(p.stack.services["a"].process.as_ref().unwrap().command[2], "echo $HOME");
        let e = err(&svc("    command: [\"echo\", \"${HOME:-x}\"]\n"));
        assert!(
            e.contains("compose.yaml:4:23: services.a.command[1]:") && e.contains("interpolation"),
            "{e}"
        );
        // Extensions are ignored, `$` and all, until merged into a service.
        let lent = "name: s\nx-env: &env\n  environment: { HOME_DIR: \"${HOME}\" }\nservices:\n  a:\n    command: x\n";
        ok(lent);
        let e = err(&format!("{lent}    <<: *env\n"));
        assert!(
            e.contains("compose.yaml:3:28: services.a.environment.HOME_DIR: \"${HOME}\": variable interpolation"),
            "{e}"
        );
    }

    #[test]
    fn services_join_default_or_their_networks() {
        let text = "name: s\nservices:\n  a: {}\n  b:\n    networks:\n      front:\n        ipv4_address: 10.89.1.10\n        aliases: [api, api2]\n      back: {}\nnetworks:\n  front:\n    ipam:\n      config:\n        - subnet: 10.89.1.0/24\n          gateway: 10.89.1.254\n  back:\n    internal: true\n    driver: bridge\n";
        let p = ok(text);
        let s = &p.stack;
        assert_eq!(s.services["a"].networks[0].network, "default");
        let b = &s.services["b"];
        assert_eq!(b.networks.len(), 2);
        let front = b.networks.iter().find(|n| n.network == "front").unwrap();
        assert_eq!(front.ip, Some("10.89.1.10".parse().unwrap()));
        assert_eq!(b.aliases, ["api", "api2"]);
        assert_eq!(s.networks["front"].gateway.to_string(), "10.89.1.254");
        assert!(s.networks["back"].internal);
        // Networks without a subnet get a /24 of 10.92.0.0/16, the same every time, apart.
        let (d, back) = (s.networks["default"].subnet, s.networks["back"].subnet);
        assert!(AUTO_SUBNETS.parse::<Ipv4Net>().unwrap().contains(&d) && d.prefix_len() == 24);
        assert_ne!(d, back);
        assert_eq!(ok(text).stack.networks["default"].subnet, d);
        let e = err(&svc("    networks: [nowhere]\n"));
        assert!(
            e.contains("compose.yaml:4:16: services.a.networks: unknown network \"nowhere\""),
            "{e}"
        );
        let e = err("name: s\nservices:\n  a: {}\nnetworks:\n  n:\n    driver: macvlan\n");
        assert!(
            e.contains("compose.yaml:6:13: networks.n.driver: network driver \"macvlan\" is not supported"),
            "{e}"
        );
        let e = err(
            "name: s\nservices:\n  a: {}\nnetworks:\n  default:\n    ipam:\n      config: [{ subnet: 10.89.1.0/33 }]\n",
        );
        assert!(
            e.contains("compose.yaml:7:26: networks.default.ipam.config[0].subnet:"),
            "{e}"
        );
        let e = err("name: s\nservices:\n  a:\n    networks: { default: { priority: 3 } }\n");
        assert!(
            e.contains("compose.yaml:4:28: services.a.networks.default.priority: priority is not supported"),
            "{e}"
        );
        let e = err("name: s\nservices:\n  a: {}\nnetworks:\n  default:\n    external: true\n");
        assert!(
            e.contains("compose.yaml:6:5") && e.contains("external is not supported"),
            "{e}"
        );
    }

    #[test]
    fn ports_short_long_and_ranges() {
        let p = ok(&svc(
            "    ports:\n      - \"8080:80\"\n      - 127.0.0.1:9000-9001:90-91/udp\n      - target: 443\n        published: \"8443\"\n        host_ip: 127.0.0.2\n        protocol: tcp\n        mode: host\n",
        ));
        let ports: Vec<String> = p.stack.services["a"].ports.iter().map(ToString::to_string).collect();
        assert_eq!(
            ports,
            [
                "8080->80/tcp",
                "127.0.0.1:9000->90/udp",
                "127.0.0.1:9001->91/udp",
                "127.0.0.2:8443->443/tcp"
            ]
        );
        let e = err(&svc("    ports: [\"80\"]\n"));
        assert!(
            e.contains(
                "compose.yaml:4:13: services.a.ports[0]: \"80\" is not a port plumb can publish: it names no host port"
            ),
            "{e}"
        );
        let e = err(&svc("    ports: [\"8080-8082:80-81\"]\n"));
        assert!(e.contains("ranges differ"), "{e}");
        let e = err(&svc("    ports: [\"8080:70000\"]\n"));
        assert!(
            e.contains("compose.yaml:4:13: services.a.ports[0]: \"8080:70000\" is not a valid port mapping"),
            "{e}"
        );
        let e = err(&svc("    ports:\n      - target: 80\n"));
        assert!(e.contains("compose.yaml:5:9") && e.contains("no published"), "{e}");
    }

    #[test]
    fn expose_takes_ports_ranges_and_protocols() {
        let p = ok(&svc("    expose: [5001, \"6000-6001\", \"53/udp\"]\n"));
        let ports: Vec<String> = p.stack.services["a"].expose.iter().map(ToString::to_string).collect();
        assert_eq!(ports, ["5001/tcp", "6000/tcp", "6001/tcp", "53/udp"]);
        let e = err(&svc("    expose: [\"http\"]\n"));
        assert!(
            e.contains("compose.yaml:4:14: services.a.expose[0]: not a container port"),
            "{e}"
        );
    }

    #[test]
    fn depends_on_maps_onto_conditions() {
        let text = "name: s\nservices:\n  db:\n    command: db\n    healthcheck: { test: [\"CMD\", \"true\"] }\n  a:\n    command: a\n    depends_on:\n      db: { condition: service_healthy, required: true }\n  b:\n    command: b\n    depends_on: [a]\n";
        let p = ok(text);
        let a = p.stack.services["a"].process.clone().unwrap();
        assert_eq!(a.depends_on[0].condition, Condition::Healthy);
        let b = p.stack.services["b"].process.clone().unwrap();
        assert_eq!(
            (b.depends_on[0].service.as_str(), b.depends_on[0].condition),
            ("a", Condition::Started)
        );
        let e = err(&text.replace("service_healthy", "service_completed_successfully"));
        assert!(e.contains("compose.yaml:9:24: services.a.depends_on.db.condition: service_completed_successfully is not supported"), "{e}");
        let e = err(&text.replace("depends_on: [a]", "depends_on: [c]"));
        assert!(
            e.contains("compose.yaml:12:18: services.b.depends_on: unknown service \"c\""),
            "{e}"
        );
        let e = err(&text.replace("    healthcheck: { test: [\"CMD\", \"true\"] }\n", ""));
        assert!(
            e.contains("compose.yaml:7:5: services.a.depends_on: \"db\" has no health check"),
            "{e}"
        );
    }

    #[test]
    fn healthchecks_run_as_exec_probes() {
        let p = ok(&svc("    command: x\n    healthcheck:\n      test: [\"CMD\", \"redis-cli\", \"ping\"]\n      interval: 1m30s\n      timeout: 500ms\n      retries: 5\n      start_period: 10s\n"));
        let h = p.stack.services["a"].process.clone().unwrap().health.unwrap();
        assert_eq!(
            h.probe,
            Probe::Exec {
                command: vec!["redis-cli".into(), "ping".into()]
            }
        );
        assert_eq!(
            (h.interval, h.timeout, h.retries, h.start_period),
            (
                Duration::from_secs(90),
                Duration::from_millis(500),
                5,
                Duration::from_secs(10)
            )
        );
        let shell = |test: &str| {
            let p = ok(&svc(&format!("    command: x\n    healthcheck:\n      test: {test}\n")));
            p.stack.services["a"].process.clone().unwrap().health.map(|h| h.probe)
        };
        let sh = Some(Probe::Exec {
            command: vec!["/bin/sh".into(), "-c".into(), "curl -f localhost".into()],
        });
        assert_eq!(shell("[\"CMD-SHELL\", \"curl -f localhost\"]"), sh);
        assert_eq!(shell("curl -f localhost"), sh);
        assert_eq!(shell("[\"NONE\"]"), None);
        let p = ok(&svc(
            "    command: x\n    healthcheck: { test: [\"CMD\", \"x\"], disable: true }\n",
        ));
        assert!(p.stack.services["a"].process.as_ref().unwrap().health.is_none());
        let e = err(&svc("    command: x\n    healthcheck: { interval: 1s }\n"));
        assert!(
            e.contains("compose.yaml:5:5: services.a.healthcheck.test: the healthcheck has no test"),
            "{e}"
        );
        let e = err(&svc("    command: x\n    healthcheck: { test: [\"EXEC\", \"x\"] }\n"));
        assert!(
            e.contains("compose.yaml:5:26: services.a.healthcheck.test: a test list starts with CMD"),
            "{e}"
        );
        let e = err(&svc(
            "    command: x\n    healthcheck:\n      test: [\"CMD\", \"x\"]\n      interval: soon\n",
        ));
        assert!(
            e.contains("compose.yaml:7:17: services.a.healthcheck.interval: \"soon\" is not a duration"),
            "{e}"
        );
        let e = err(&svc(
            "    command: x\n    healthcheck:\n      test: [\"CMD\", \"x\"]\n      start_interval: 1s\n",
        ));
        assert!(
            e.contains("compose.yaml:7:7: services.a.healthcheck.start_interval: start_interval is not supported"),
            "{e}"
        );
    }

    #[test]
    fn replicas_capabilities_restart_and_the_rest() {
        let p = ok(&svc("    command: x\n    deploy: { replicas: 3, mode: replicated }\n    cap_add: [NET_ADMIN]\n    cap_drop: [MKNOD]\n    restart: unless-stopped\n    working_dir: /srv\n    user: nobody\n    stop_grace_period: 3s\n    labels: { a: b }\n    x-note: fine\n"));
        let a = &p.stack.services["a"];
        assert_eq!(a.replicas, 3);
        let process = a.process.clone().unwrap();
        assert_eq!(process.restart, RestartPolicy::Always);
        assert_eq!(process.workdir.as_deref(), Some("/srv"));
        assert_eq!(process.user.as_deref(), Some("nobody"));
        assert_eq!(process.stop_grace, Duration::from_secs(3));
        assert!(process.capabilities.root.contains(12) && !process.capabilities.root.contains(27));
        assert_eq!(ok(&svc("    scale: 2\n")).stack.services["a"].replicas, 2);
        for (r, want) in [
            ("\"no\"", RestartPolicy::No),
            ("on-failure:3", RestartPolicy::OnFailure),
            ("always", RestartPolicy::Always),
        ] {
            let p = ok(&svc(&format!("    command: x\n    restart: {r}\n")));
            assert_eq!(p.stack.services["a"].process.clone().unwrap().restart, want, "{r}");
        }
        let e = err(&svc("    command: x\n    restart: sometimes\n"));
        assert!(
            e.contains("compose.yaml:5:14: services.a.restart: unknown restart policy \"sometimes\""),
            "{e}"
        );
        let e = err(&svc("    scale: 2\n    deploy: { replicas: 3 }\n"));
        assert!(
            e.contains("compose.yaml:4:12: services.a.scale: scale 2 and deploy.replicas 3 differ"),
            "{e}"
        );
        let e = err(&svc("    deploy: { replicas: 3, resources: { reservations: {} } }\n"));
        assert!(
            e.contains("compose.yaml:4:41: services.a.deploy.resources.reservations: deploy.resources.reservations is not supported"),
            "{e}"
        );
        let e = err(&svc("    command: x\n    mem_limit: lots\n"));
        assert!(
            e.contains("compose.yaml:5:16: services.a.mem_limit: memory is not a size"),
            "{e}"
        );
        let e = err(&svc("    deploy: { replicas: 99999 }\n"));
        assert!(
            e.contains("compose.yaml:4:25: services.a.deploy.replicas: replicas = 99999 is out of range"),
            "{e}"
        );
        let e = err(&svc("    command: x\n    cap_add: [NET_ADMINN]\n"));
        assert!(e.contains("compose.yaml:5:15") && e.contains("NET_ADMIN"), "{e}");
        let e = err(&svc("    command: x\n    working_dir: \"a\\0b\"\n"));
        assert!(e.contains("compose.yaml:5:18: services.a.working_dir"), "{e}");
    }

    #[test]
    fn images_run_through_podman_unless_the_service_runs_on_the_host() {
        let p = ok(&svc("    image: redis:7\n"));
        let image = p.stack.services["a"].image.as_ref().unwrap();
        assert_eq!((image.name.as_str(), image.build.is_none()), ("redis:7", true));
        let p = ok(&svc("    build: { context: ., dockerfile: Dockerfile.web }\n"));
        let image = p.stack.services["a"].image.as_ref().unwrap();
        let build = image.build.as_ref().unwrap();
        assert_eq!(
            (build.context.as_str(), build.dockerfile.as_str()),
            (".", "Dockerfile.web")
        );
        let e = err(&svc("    build: { context: \"\" }\n"));
        assert!(e.contains("compose.yaml:4") && e.contains("services.a.build"), "{e}");
        let p = ok(&svc(
            "    image: debian:12\n    x-plumb: { host: true }\n    command: [/usr/bin/true]\n",
        ));
        assert_eq!(
            p.stack.services["a"].process.as_ref().unwrap().command,
            ["/usr/bin/true"]
        );
        let e = err(&svc("    x-plumb: { hots: true }\n"));
        assert!(
            e.contains("compose.yaml:4:16: services.a.x-plumb.hots: unknown x-plumb key"),
            "{e}"
        );
    }

    #[test]
    fn x_plumb_autoscale_is_the_stack_files_autoscale() {
        let p = ok(&svc(
            "    command: [/bin/true]\n    x-plumb:\n      autoscale: { min: 2, max: 6, connections: 50, scale_down_window: 30s }\n",
        ));
        let a = p.stack.services["a"].autoscale.clone().unwrap();
        assert_eq!((a.min, a.max, a.connections), (2, 6, Some(50)));
        assert_eq!(a.scale_down_window, Duration::from_secs(30));
        assert_eq!(p.stack.services["a"].replicas, 2);
        // Judged as in a stack file, named as in the compose file.
        let e = err(&svc(
            "    command: [/bin/true]\n    x-plumb:\n      autoscale:\n        min: 3\n        max: 2\n        connections: 5\n",
        ));
        assert!(
            e.contains("compose.yaml:8:14: services.a.x-plumb.autoscale.max: max = 2 is below min = 3"),
            "{e}"
        );
        let e = err(&svc(
            "    command: [/bin/true]\n    deploy: { replicas: 9 }\n    x-plumb: { autoscale: { max: 3, connections: 5 } }\n",
        ));
        assert!(
            e.contains("services.a.deploy.replicas: replicas = 9 is outside autoscale's"),
            "{e}"
        );
        let e = err(&svc("    x-plumb: { autoscale: { max: 3, conections: 5 } }\n"));
        assert!(
            e.contains("compose.yaml:4:37: services.a.x-plumb.autoscale.conections: unknown key"),
            "{e}"
        );
        let e = err(&svc("    x-plumb: { autoscale: { max: lots, connections: 5 } }\n"));
        assert!(
            e.contains("services.a.x-plumb.autoscale.max: expected a whole number"),
            "{e}"
        );
    }

    #[test]
    fn unsupported_and_unknown_keys_name_their_line() {
        let e = err(&svc(
            "    command: x\n    volumes: [\"./data:/data\"]\n    privileged: true\n    commnd: x\n",
        ));
        assert!(
            e.contains("compose.yaml:5:5: services.a.volumes: volumes is not supported by plumb"),
            "{e}"
        );
        assert!(
            e.contains("compose.yaml:6:5: services.a.privileged: privileged is not supported by plumb")
                && e.contains("cap_add"),
            "{e}"
        );
        assert!(
            e.contains("compose.yaml:7:5: services.a.commnd: unknown key \"commnd\""),
            "{e}"
        );
        let e = err("name: s\nservices:\n  a: {}\nvolumes:\n  data: {}\nsecrets: {}\nx-any: 1\nversion: \"3.8\"\n");
        assert!(e.contains("compose.yaml:4:1: volumes: volumes is not supported"), "{e}");
        assert!(e.contains("compose.yaml:6:1: secrets:"), "{e}");
        for key in [
            "network_mode: host",
            "container_name: web",
            "hostname: web",
            "links: [b]",
            "extends: b",
            "profiles: [x]",
        ] {
            let e = err(&svc(&format!("    {key}\n")));
            assert!(
                e.contains("compose.yaml:4:5:") && e.contains("is not supported by plumb"),
                "{key}: {e}"
            );
        }
        let e = err("name: s\n");
        assert!(e.contains("the file has no services"), "{e}");
    }

    #[test]
    fn yaml_errors_give_line_and_column() {
        let e = err("name: s\nservices:\n  a:\n    command: [x\n  b: {}\n");
        assert!(e.starts_with("compose.yaml:5:") && e.contains("not valid YAML"), "{e}");
        let e = err("name: s\nservices:\n  a: {}\n  a: {}\n");
        assert!(e.contains("compose.yaml:4:") && e.contains("not valid YAML"), "{e}");
        let e = err("name: s\nservices: {}\n---\nname: t\n");
        assert!(
            e.contains("compose.yaml:4:") && e.contains("several YAML documents"),
            "{e}"
        );
        let e = err("- a\n- b\n");
        assert!(
            e.contains("compose.yaml:1:1") && e.contains("expected a mapping"),
            "{e}"
        );
        let e = err("name: s\nservices:\n  a: !reset {}\n");
        assert!(e.contains("compose.yaml:3:") && e.contains("tag"), "{e}");
        // Multi-byte text before a mistake: the column counts characters.
        let e = err("name: s # café\nservices:\n  a:\n    command: [\"é\", {}]\n");
        assert!(e.contains("compose.yaml:4:20"), "{e}");
    }

    #[test]
    fn converting_gives_a_stack_file_of_the_same_stack() {
        let text = "name: conv\nservices:\n  db:\n    command: [/usr/bin/redis-server, --port, \"6379\"]\n    expose: [6379]\n    healthcheck: { test: \"redis-cli ping\", interval: 1s, retries: 2 }\n    cap_drop: [ALL]\n    cap_add: [NET_BIND_SERVICE]\n  web:\n    command: web --flag\n    environment: { QUOTE: \"say \\\"hi\\\"\\n\", EMPTY: \"\" }\n    ports: [\"127.0.0.1:8080:80\", \"53:53/udp\"]\n    depends_on: { db: { condition: service_healthy } }\n    restart: always\n    working_dir: /tmp\n    user: nobody\n    networks:\n      front: { ipv4_address: 10.89.3.7, aliases: [www] }\n      default: {}\n    deploy: { replicas: 1 }\n  idle:\n    scale: 2\n  api:\n    build: { context: api, dockerfile: Dockerfile.api }\n    environment: [MODE=fast]\n  cache:\n    image: localhost/redis:7\n    command: [redis-server]\nnetworks:\n  front:\n    ipam: { config: [ { subnet: 10.89.3.0/24 } ] }\n  back:\n    internal: true\n";
        let compose = ok(text);
        let toml = to_toml(&compose.stack).unwrap();
        let again = parse("plumb.toml", &toml).unwrap_or_else(|e| panic!("{e}\n{toml}"));
        assert_eq!(again.stack, compose.stack, "\n{toml}");
    }

    #[test]
    fn validation_errors_name_compose_keys() {
        assert_eq!(compose_field("services.a.health.exec"), "services.a.healthcheck.test");
        assert_eq!(compose_field("services.a.env"), "services.a.environment");
        assert_eq!(
            compose_field("services.a.networks.n.ip"),
            "services.a.networks.n.ipv4_address"
        );
        assert_eq!(compose_field("networks.n.subnet"), "networks.n.ipam.config[0].subnet");
        assert_eq!(compose_field("services.a.ports[2]"), "services.a.ports[2]");
        let e = err("name: s\nservices:\n  a:\n    command: x\n    networks: { n: { ipv4_address: 10.0.0.300 } }\nnetworks:\n  n: { ipam: { config: [ { subnet: 10.89.1.0/24 } ] } }\n");
        assert!(
            e.contains("compose.yaml:5:36: services.a.networks.n.ipv4_address: \"10.0.0.300\" is not an IPv4 address"),
            "{e}"
        );
    }

    #[test]
    fn env_files_read_as_compose_reads_them() {
        assert_eq!(
            parse_env_file("A=1\n\n# c\nexport B='x y'\nC=\"q\"\nD=v # note\n").unwrap(),
            [
                ("A".into(), "1".into()),
                ("B".into(), "x y".into()),
                ("C".into(), "q".into()),
                ("D".into(), "v".into())
            ]
        );
        assert_eq!(parse_env_file("A=1\nB\n").unwrap_err().0, 2);
    }

    #[test]
    fn resource_limits_map_onto_the_services_limits() {
        use crate::cgroup::{Limits, Swap};
        let p = ok(&svc(
            "    command: x\n    deploy: { resources: { limits: { cpus: \"0.5\", memory: 256M, pids: 100 } } }\n",
        ));
        let limits = p.stack.services["a"].process.clone().unwrap().limits;
        assert_eq!(
            limits,
            Limits {
                cpus: Some(0.5),
                memory: Some(256 << 20),
                memory_swap: None,
                pids: Some(100)
            }
        );
        let p = ok(&svc(
            "    command: x\n    cpus: 1.5\n    mem_limit: 64m\n    memswap_limit: 128m\n    pids_limit: 64\n",
        ));
        let limits = p.stack.services["a"].process.clone().unwrap().limits;
        assert_eq!(
            limits,
            Limits {
                cpus: Some(1.5),
                memory: Some(64 << 20),
                memory_swap: Some(Swap::Total(128 << 20)),
                pids: Some(64)
            }
        );
    }
}

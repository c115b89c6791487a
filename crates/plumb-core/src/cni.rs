//! The CNI protocol (spec 1.1.0), pure: what a runtime hands a plugin (the `CNI_*`
//! environment and the network configuration on stdin) read and checked, and what the plugin
//! answers (a result, an error, its versions) as JSON. The binary's plugin mode does the I/O
//! and drives the engine; everything here is tested without root.
//!
//! Hand-written over serde_json: the Rust CNI crates implement spec 1.0.0 at most (no STATUS,
//! no GC) and bring async runtimes plumb does not need for a dozen JSON fields.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::desired::{Attachment, Interface};
use crate::plan::ObservedNetns;

/// The spec version plumb implements.
pub const SPEC_VERSION: &str = "1.1.0";
/// The configuration versions plumb answers in (0.1.0 and 0.2.0 had another result shape).
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version `plumb cni conflist` writes: the newest Debian's plugins (1.1.1: portmap,
/// tuning, bandwidth) accept, so they can follow plumb in one list.
pub const CONFLIST_VERSION: &str = "1.0.0";

/// The spec's error codes, and plumb's own (100 and up).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const UNKNOWN_CONTAINER: u32 = 3;
    pub const INVALID_ENVIRONMENT: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE_FAILURE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// The plugin cannot service ADD requests (here: the stack is not up).
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: not available, and attached containers may have limited connectivity.
    pub const NOT_AVAILABLE_LIMITED: u32 = 51;
    /// plumb refused the attachment (a name taken, a network or service the stack lacks).
    pub const REFUSED: u32 = 100;
    /// Changing the kernel failed (the attachment was undone).
    pub const KERNEL_FAILED: u32 = 101;
    /// CHECK: the container's interface is not as plumb made it.
    pub const NOT_AS_MADE: u32 = 102;
}

/// What a plugin answers when it fails: printed on stdout as JSON, with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error's JSON, in the version the configuration asked for.
    pub fn to_json(&self, version: &str) -> Value {
        json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Verb {
    fn parse(s: &str) -> Option<Verb> {
        Some(match s {
            "ADD" => Verb::Add,
            "DEL" => Verb::Del,
            "CHECK" => Verb::Check,
            "STATUS" => Verb::Status,
            "GC" => Verb::Gc,
            "VERSION" => Verb::Version,
            _ => return None,
        })
    }
}

/// The `CNI_*` environment, checked for the verb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    pub verb: Verb,
    /// Required for ADD, DEL and CHECK.
    pub container_id: String,
    /// Required for ADD and CHECK; DEL may come without (the namespace may be gone).
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS`: `K=V;K=V`.
    pub args: Vec<(String, String)>,
}

impl Env {
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
}

/// Reads the environment through `var` (`std::env::var` in the plugin).
pub fn parse_env(var: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
    let invalid = |msg: String, details: &str| CniError::new(code::INVALID_ENVIRONMENT, msg, details);
    let command = var("CNI_COMMAND").unwrap_or_default();
    let verb = Verb::parse(&command).ok_or_else(|| {
        invalid(
            format!("CNI_COMMAND {command:?} is not a CNI verb"),
            "ADD, DEL, CHECK, STATUS, GC or VERSION",
        )
    })?;
    let get = |name: &str| var(name).unwrap_or_default();
    let env = Env {
        verb,
        container_id: get("CNI_CONTAINERID"),
        netns: get("CNI_NETNS"),
        ifname: get("CNI_IFNAME"),
        args: parse_args(&get("CNI_ARGS"))?,
    };
    let required: &[(&str, &str)] = match verb {
        Verb::Add | Verb::Check => &[
            ("CNI_CONTAINERID", &env.container_id),
            ("CNI_NETNS", &env.netns),
            ("CNI_IFNAME", &env.ifname),
        ],
        Verb::Del => &[("CNI_CONTAINERID", &env.container_id), ("CNI_IFNAME", &env.ifname)],
        Verb::Status | Verb::Gc | Verb::Version => &[],
    };
    if let Some((name, _)) = required.iter().find(|(_, value)| value.is_empty()) {
        return Err(invalid(
            format!("{name} is not set; {command} needs it"),
            "the runtime sets CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME (see the CNI spec)",
        ));
    }
    Ok(env)
}

/// `CNI_ARGS`, `K=V` pairs joined by `;`.
pub fn parse_args(text: &str) -> Result<Vec<(String, String)>, CniError> {
    text.split(';')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(CniError::new(
                code::INVALID_ENVIRONMENT,
                format!("CNI_ARGS holds {pair:?}, not KEY=VALUE"),
                "CNI_ARGS is KEY=VALUE pairs joined by ';'",
            )),
        })
        .collect()
}

/// One entry of GC's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The network configuration plumb reads (other keys are ignored, as the spec asks).
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    /// The network's name in the runtime (`podman network ls`).
    pub name: String,
    /// The plumb stack, and the network of it containers join.
    pub stack: String,
    pub network: String,
    /// `runtimeConfig.aliases` for this network (the `aliases` capability).
    pub aliases: Vec<String>,
    pub prev_result: Option<Value>,
    /// GC's `cni.dev/valid-attachments`.
    pub valid_attachments: Vec<ValidAttachment>,
    /// plumb's state directory (`stateDir`), written by `plumb cni conflist`: runtimes do not
    /// always pass their environment on (podman's cleanup after a container exits runs the
    /// plugin without it), so the configuration names the stack's records.
    pub state_dir: Option<String>,
}

#[derive(Deserialize)]
struct RawConf {
    #[serde(default)]
    name: String,
    #[serde(default)]
    stack: Option<String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(rename = "runtimeConfig", default)]
    runtime_config: RawRuntimeConfig,
    #[serde(rename = "prevResult", default)]
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    valid_attachments: Vec<ValidAttachment>,
    #[serde(rename = "stateDir", default)]
    state_dir: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawRuntimeConfig {
    /// Podman gives `{"NETWORK": ["alias", ...]}`; a plain list is taken too.
    #[serde(default)]
    aliases: Option<Value>,
}

/// The version a configuration asks for, if it is one plumb speaks (else error 1). Read
/// first, so that every later error answers in it.
pub fn conf_version(stdin: &[u8]) -> Result<String, CniError> {
    let value = decode(stdin)?;
    let version = value.get("cniVersion").and_then(Value::as_str).unwrap_or("");
    if SUPPORTED_VERSIONS.contains(&version) {
        return Ok(version.to_string());
    }
    Err(CniError::new(
        code::INCOMPATIBLE_VERSION,
        format!("cniVersion {version:?} is not supported"),
        format!("plumb answers in {}", SUPPORTED_VERSIONS.join(", ")),
    ))
}

fn decode(stdin: &[u8]) -> Result<Value, CniError> {
    let value: Value = serde_json::from_slice(stdin).map_err(|e| {
        CniError::new(
            code::DECODE_FAILURE,
            format!("the network configuration on stdin is not JSON: {e}"),
            "the runtime passes the network configuration as JSON on stdin",
        )
    })?;
    match value.is_object() {
        true => Ok(value),
        false => Err(CniError::new(
            code::DECODE_FAILURE,
            "the network configuration on stdin is not a JSON object",
            "the runtime passes the network configuration as a JSON object on stdin",
        )),
    }
}

/// The network configuration on stdin, checked: the version, then plumb's own keys.
pub fn parse_conf(stdin: &[u8]) -> Result<NetConf, CniError> {
    let cni_version = conf_version(stdin)?;
    let raw: RawConf = serde_json::from_value(decode(stdin)?).map_err(|e| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("the network configuration is not plumb's: {e}"),
            "`plumb cni conflist STACK NETWORK` prints one",
        )
    })?;
    let missing = |key: &str| {
        CniError::new(
            code::INVALID_CONFIG,
            format!("the network configuration has no {key:?}"),
            "plumb's entry names the stack and its network: {\"type\": \"plumb\", \"stack\": \"shop\", \"network\": \"shop\"} (`plumb cni conflist STACK NETWORK` prints one)",
        )
    };
    let stack = raw.stack.filter(|s| !s.is_empty()).ok_or_else(|| missing("stack"))?;
    let network = raw
        .network
        .filter(|s| !s.is_empty())
        .ok_or_else(|| missing("network"))?;
    if !crate::spec::is_stack_name(&stack) {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("{stack:?} is not a stack name"),
            "stack names are lowercase letters, digits and '-' (up to 12); `plumb ps` lists the stacks that are up",
        ));
    }
    let aliases = aliases_for(raw.runtime_config.aliases.as_ref(), &raw.name);
    Ok(NetConf {
        cni_version,
        name: raw.name,
        stack,
        network,
        aliases,
        prev_result: raw.prev_result,
        valid_attachments: raw.valid_attachments,
        state_dir: raw.state_dir,
    })
}

/// The aliases `runtimeConfig.aliases` gives this network: podman's map by network name (any
/// entry when the name is not there), or a list.
fn aliases_for(aliases: Option<&Value>, network_name: &str) -> Vec<String> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default()
    };
    match aliases {
        Some(Value::Array(_)) => strings(aliases.unwrap_or(&Value::Null)),
        Some(Value::Object(map)) => match map.get(network_name) {
            Some(list) => strings(list),
            None => map.values().flat_map(strings).collect(),
        },
        _ => Vec::new(),
    }
}

/// The container's name in the stack (its DNS name): the name the runtime gives
/// (`K8S_POD_NAME`, podman's container name), else the first 12 characters of its ID; made a
/// label (characters other than letters, digits, '-' and '_' become '-', at most 40).
pub fn container_name(env: &Env) -> String {
    let label = |source: &str, max: usize| -> String {
        let label: String = source
            .chars()
            .take(max)
            .map(|c| match c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                true => c,
                false => '-',
            })
            .collect();
        label.trim_matches('-').to_string()
    };
    match label(env.arg("K8S_POD_NAME").unwrap_or(""), 40) {
        name if name.is_empty() => label(&env.container_id, 12),
        name => name,
    }
}

/// The service of the stack the container joins (its name and VIP): `PLUMB_SERVICE` in
/// `CNI_ARGS`, else the first alias that names one of the stack's services (podman-compose
/// gives each container its service's name as an alias).
pub fn service_for(env: &Env, aliases: &[String], is_service: impl Fn(&str) -> bool) -> Option<String> {
    if let Some(s) = env.arg("PLUMB_SERVICE") {
        return Some(s.to_string());
    }
    aliases.iter().find(|a| is_service(a)).cloned()
}

/// The attachment an ADD asks for.
pub fn attachment(env: &Env, conf: &NetConf, is_service: impl Fn(&str) -> bool) -> Attachment {
    Attachment {
        name: container_name(env),
        network: conf.network.clone(),
        netns_path: env.netns.clone(),
        ifname: env.ifname.clone(),
        service: service_for(env, &conf.aliases, is_service),
        container_id: Some(env.container_id.clone()),
    }
}

/// Whether an attachment is the one CNI names by container ID and interface.
pub fn is_attachment(a: &Attachment, container_id: &str, ifname: &str) -> bool {
    a.container_id.as_deref() == Some(container_id) && a.ifname == ifname
}

/// GC: the attachments made through CNI on this network that the runtime no longer knows.
/// Attachments made by `plumb attach` (no container ID) are not the runtime's to collect.
pub fn garbage<'a>(attached: &'a [Attachment], network: &str, valid: &[ValidAttachment]) -> Vec<&'a Attachment> {
    attached
        .iter()
        .filter(|a| a.network == network)
        .filter(|a| match &a.container_id {
            Some(id) => !valid.iter().any(|v| v.container_id == *id && v.ifname == a.ifname),
            None => false,
        })
        .collect()
}

/// The interface an ADD made, for the result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Made {
    /// The veth's host end (on the network's bridge): listed without a sandbox, as the
    /// bridge plugin does, so that plugins after plumb find it (bandwidth shapes it).
    pub host_ifname: String,
    pub ifname: String,
    pub mac: String,
    /// The namespace path the runtime gave.
    pub sandbox: String,
    pub address: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// The stack's DNS server (the network's gateway) and search domain (the stack).
    pub nameservers: Vec<String>,
    pub search: Vec<String>,
}

/// ADD's result in `version`: plumb's interfaces (the host end, then the container's),
/// address, default route and DNS, after what
/// `prev_result` holds (a plugin before plumb in the list; its DNS is kept if it had one).
pub fn add_result(version: &str, prev_result: Option<&Value>, made: &Made) -> Value {
    let prev = prev_result.and_then(Value::as_object);
    let list = |key: &str| -> Vec<Value> {
        prev.and_then(|p| p.get(key))
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let mut interfaces = list("interfaces");
    let mut ips = list("ips");
    let mut routes = list("routes");
    interfaces.push(json!({"name": made.host_ifname}));
    let index = interfaces.len();
    interfaces.push(json!({"name": made.ifname, "mac": made.mac, "sandbox": made.sandbox}));
    let mut ip = Map::new();
    if !is_v1(version) {
        // Before 1.0.0 each address said its family.
        ip.insert("version".into(), json!("4"));
    }
    ip.insert("address".into(), json!(made.address.to_string()));
    ip.insert("gateway".into(), json!(made.gateway.to_string()));
    ip.insert("interface".into(), json!(index));
    ips.push(Value::Object(ip));
    routes.push(json!({"dst": "0.0.0.0/0", "gw": made.gateway.to_string()}));
    let prev_dns = prev.and_then(|p| p.get("dns")).filter(|d| {
        d.get("nameservers")
            .and_then(Value::as_array)
            .is_some_and(|n| !n.is_empty())
    });
    let dns = prev_dns
        .cloned()
        .unwrap_or_else(|| json!({"nameservers": made.nameservers, "search": made.search, "options": ["ndots:1"]}));
    json!({"cniVersion": version, "interfaces": interfaces, "ips": ips, "routes": routes, "dns": dns})
}

/// Versions 1.x dropped the `version` key of addresses.
fn is_v1(version: &str) -> bool {
    version.starts_with("1.")
}

/// CHECK against `prevResult`: it must hold the address plumb gave (the runtime's cached
/// result of the ADD).
pub fn check_prev_result(prev_result: Option<&Value>, address: Ipv4Net) -> Result<(), CniError> {
    let Some(prev) = prev_result else { return Ok(()) };
    let has = prev.get("ips").and_then(Value::as_array).is_some_and(|ips| {
        ips.iter()
            .any(|ip| ip.get("address").and_then(Value::as_str) == Some(&address.to_string()))
    });
    match has {
        true => Ok(()),
        false => Err(CniError::new(
            code::NOT_AS_MADE,
            format!("prevResult does not hold {address}, the address plumb gave"),
            "the runtime's cached result is not this attachment's: DEL and ADD it again",
        )),
    }
}

/// CHECK against the kernel: the container's namespace (as plumb named it) holds the
/// interface plumb made, up, with the address plumb gave.
pub fn check_interface(expected: &Interface, observed: Option<&ObservedNetns>) -> Result<(), CniError> {
    let drifted = |msg: String| {
        CniError::new(
            code::NOT_AS_MADE,
            msg,
            "something else changed the container's network: DEL and ADD it again",
        )
    };
    let Some(netns) = observed else {
        return Err(CniError::new(
            code::UNKNOWN_CONTAINER,
            "the container's network namespace is gone",
            "DEL it (a DEL of a container whose namespace is gone succeeds)",
        ));
    };
    let Some(link) = netns.links.get(&expected.name) else {
        return Err(drifted(format!("the container has no interface {}", expected.name)));
    };
    if !link.addresses.contains(&expected.cidr()) {
        return Err(drifted(format!(
            "{} does not hold {} (it holds {:?})",
            expected.name,
            expected.cidr(),
            link.addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>()
        )));
    }
    if !link.up {
        return Err(drifted(format!("{} is down", expected.name)));
    }
    Ok(())
}

/// VERSION's answer.
pub fn version_info() -> Value {
    json!({"cniVersion": SPEC_VERSION, "supportedVersions": SUPPORTED_VERSIONS})
}

/// `plumb cni conflist`: plumb first (its capabilities: aliases, for names and services),
/// then portmap for published ports (`podman run -p`).
pub fn conflist(name: &str, stack: &str, network: &str, state_dir: &str) -> Value {
    json!({
        "cniVersion": CONFLIST_VERSION,
        "name": name,
        "plugins": [
            {"type": "plumb", "stack": stack, "network": network, "stateDir": state_dir,
             "capabilities": {"aliases": true}},
            {"type": "portmap", "capabilities": {"portMappings": true}},
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        parse_env(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    fn add_env(args: &str) -> Env {
        env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "0123456789abcdef0123"),
            ("CNI_NETNS", "/run/netns/cni-1"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", args),
        ])
        .unwrap()
    }

    const CONF: &str =
        r#"{"cniVersion": "1.0.0", "name": "shopnet", "type": "plumb", "stack": "shop", "network": "front"}"#;

    #[test]
    fn the_environment_is_read_and_each_verb_needs_its_variables() {
        let e = add_env("IgnoreUnknown=1;K8S_POD_NAME=web_a");
        assert_eq!(e.verb, Verb::Add);
        assert_eq!(e.arg("K8S_POD_NAME"), Some("web_a"));
        assert_eq!(e.arg("IgnoreUnknown"), Some("1"));
        let no_netns = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "x"), ("CNI_IFNAME", "eth0")]).unwrap_err();
        assert_eq!(no_netns.code, code::INVALID_ENVIRONMENT);
        assert!(no_netns.msg.contains("CNI_NETNS"), "{no_netns:?}");
        // DEL may come without a namespace (it may be gone); STATUS, GC, VERSION need nothing.
        assert!(env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "x"), ("CNI_IFNAME", "eth0")]).is_ok());
        for verb in ["STATUS", "GC", "VERSION"] {
            assert!(env(&[("CNI_COMMAND", verb)]).is_ok(), "{verb}");
        }
        let unknown = env(&[("CNI_COMMAND", "PUT")]).unwrap_err();
        assert_eq!(unknown.code, code::INVALID_ENVIRONMENT);
        assert_eq!(env(&[]).unwrap_err().code, code::INVALID_ENVIRONMENT);
    }

    #[test]
    fn cni_args_are_key_value_pairs() {
        assert_eq!(
            parse_args("A=1;B=x=y;;C=").unwrap(),
            [("A", "1"), ("B", "x=y"), ("C", "")].map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(parse_args("").unwrap().is_empty());
        assert_eq!(parse_args("A=1;junk").unwrap_err().code, code::INVALID_ENVIRONMENT);
        assert_eq!(parse_args("=1").unwrap_err().code, code::INVALID_ENVIRONMENT);
    }

    #[test]
    fn the_configuration_is_checked_version_first() {
        let c = parse_conf(CONF.as_bytes()).unwrap();
        assert_eq!(
            (c.stack.as_str(), c.network.as_str(), c.name.as_str()),
            ("shop", "front", "shopnet")
        );
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(parse_conf(b"not json").unwrap_err().code, code::DECODE_FAILURE);
        assert_eq!(parse_conf(b"[1]").unwrap_err().code, code::DECODE_FAILURE);
        let old = parse_conf(br#"{"cniVersion": "0.2.0", "stack": "shop", "network": "n"}"#).unwrap_err();
        assert_eq!(old.code, code::INCOMPATIBLE_VERSION);
        assert!(old.details.contains("1.1.0"), "{old:?}");
        assert_eq!(
            parse_conf(br#"{"stack": "shop", "network": "n"}"#).unwrap_err().code,
            code::INCOMPATIBLE_VERSION
        );
        let no_stack = parse_conf(br#"{"cniVersion": "1.1.0", "network": "n"}"#).unwrap_err();
        assert_eq!(no_stack.code, code::INVALID_CONFIG);
        assert!(no_stack.msg.contains("\"stack\""), "{no_stack:?}");
        let bad_stack = parse_conf(br#"{"cniVersion": "1.1.0", "stack": "../x", "network": "n"}"#).unwrap_err();
        assert_eq!(bad_stack.code, code::INVALID_CONFIG);
        let wrong_type = parse_conf(br#"{"cniVersion": "1.1.0", "stack": 3, "network": "n"}"#).unwrap_err();
        assert_eq!(wrong_type.code, code::INVALID_CONFIG);
        for v in SUPPORTED_VERSIONS {
            assert_eq!(
                conf_version(format!("{{\"cniVersion\": \"{v}\"}}").as_bytes()).unwrap(),
                *v
            );
        }
    }

    #[test]
    fn gc_reads_the_valid_attachments() {
        let c = parse_conf(
            br#"{"cniVersion": "1.1.0", "stack": "s", "network": "n",
                 "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.valid_attachments,
            [ValidAttachment {
                container_id: "a".into(),
                ifname: "eth0".into()
            }]
        );
        let mk = |name: &str, id: Option<&str>, network: &str| Attachment {
            name: name.into(),
            network: network.into(),
            netns_path: "/run/netns/x".into(),
            ifname: "eth0".into(),
            service: None,
            container_id: id.map(str::to_string),
        };
        let attached = [
            mk("kept", Some("a"), "n"),
            mk("gone", Some("b"), "n"),
            mk("other-net", Some("c"), "m"),
            mk("by-hand", None, "n"),
        ];
        let names: Vec<&str> = garbage(&attached, "n", &c.valid_attachments)
            .iter()
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(names, ["gone"]);
    }

    #[test]
    fn the_name_is_the_runtimes_else_the_short_id_and_aliases_pick_the_service() {
        assert_eq!(container_name(&add_env("K8S_POD_NAME=shop_web_1")), "shop_web_1");
        assert_eq!(container_name(&add_env("IgnoreUnknown=1")), "0123456789ab");
        assert_eq!(container_name(&add_env("K8S_POD_NAME=a.b c")), "a-b-c");
        assert_eq!(
            container_name(&add_env(&format!("K8S_POD_NAME={}", "x".repeat(60)))).len(),
            40
        );
        let c = parse_conf(
            br#"{"cniVersion": "1.0.0", "name": "shopnet", "stack": "shop", "network": "front",
                 "runtimeConfig": {"aliases": {"shopnet": ["web1", "web"], "other": ["db"]}}}"#,
        )
        .unwrap();
        assert_eq!(c.aliases, ["web1", "web"]);
        let is_service = |s: &str| s == "web" || s == "db";
        assert_eq!(service_for(&add_env(""), &c.aliases, is_service), Some("web".into()));
        assert_eq!(
            service_for(&add_env("PLUMB_SERVICE=db"), &c.aliases, is_service),
            Some("db".into())
        );
        assert_eq!(service_for(&add_env(""), &["x".into()], is_service), None);
        let listed = parse_conf(
            br#"{"cniVersion": "1.0.0", "stack": "s", "network": "n", "runtimeConfig": {"aliases": ["db"]}}"#,
        )
        .unwrap();
        assert_eq!(listed.aliases, ["db"]);
        let a = attachment(&add_env("K8S_POD_NAME=w"), &c, is_service);
        assert_eq!(a.name, "w");
        assert_eq!(a.service.as_deref(), Some("web"));
        assert_eq!(a.container_id.as_deref(), Some("0123456789abcdef0123"));
        assert!(is_attachment(&a, "0123456789abcdef0123", "eth0"));
        assert!(!is_attachment(&a, "0123456789abcdef0123", "eth1"));
    }

    fn made() -> Made {
        Made {
            host_ifname: "plv-1".into(),
            ifname: "eth0".into(),
            mac: "02:00:00:00:00:01".into(),
            sandbox: "/run/netns/cni-1".into(),
            address: "10.1.0.5/24".parse().unwrap(),
            gateway: "10.1.0.1".parse().unwrap(),
            nameservers: vec!["10.1.0.1".into()],
            search: vec!["shop".into()],
        }
    }

    #[test]
    fn the_result_has_the_interface_address_route_and_dns_in_the_asked_version() {
        let r = add_result("1.0.0", None, &made());
        assert_eq!(r["cniVersion"], "1.0.0");
        assert_eq!(r["interfaces"][0], json!({"name": "plv-1"}), "the host end: no sandbox");
        assert_eq!(r["interfaces"][1]["sandbox"], "/run/netns/cni-1");
        assert_eq!(
            r["ips"][0],
            json!({"address": "10.1.0.5/24", "gateway": "10.1.0.1", "interface": 1})
        );
        assert_eq!(r["routes"][0], json!({"dst": "0.0.0.0/0", "gw": "10.1.0.1"}));
        assert_eq!(r["dns"]["nameservers"], json!(["10.1.0.1"]));
        assert_eq!(r["dns"]["search"], json!(["shop"]));
        let old = add_result("0.4.0", None, &made());
        assert_eq!(old["ips"][0]["version"], "4");
    }

    #[test]
    fn a_previous_result_is_kept_and_plumbs_interface_follows_it() {
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "lo0", "sandbox": "/run/netns/cni-1"}],
            "ips": [{"address": "192.168.9.2/24", "interface": 0}],
            "dns": {"nameservers": ["192.168.9.1"]},
        });
        let r = add_result("1.0.0", Some(&prev), &made());
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(r["ips"][1]["interface"], 2);
        assert_eq!(r["ips"][0]["address"], "192.168.9.2/24");
        assert_eq!(r["dns"]["nameservers"], json!(["192.168.9.1"]));
        assert!(check_prev_result(Some(&r), "10.1.0.5/24".parse().unwrap()).is_ok());
        let wrong = check_prev_result(Some(&prev), "10.1.0.5/24".parse().unwrap()).unwrap_err();
        assert_eq!(wrong.code, code::NOT_AS_MADE);
        assert!(check_prev_result(None, "10.1.0.5/24".parse().unwrap()).is_ok());
    }

    #[test]
    fn check_compares_the_interface_with_what_plumb_made() {
        let expected = Interface {
            name: "eth0".into(),
            network: "n".into(),
            bridge: "br".into(),
            host_veth: "v".into(),
            address: "10.1.0.5".parse().unwrap(),
            prefix_len: 24,
            alias: "plumb:s/c/n".into(),
            mac: Default::default(),
            mtu: None,
        };
        let mut netns = ObservedNetns::default();
        assert_eq!(
            check_interface(&expected, None).unwrap_err().code,
            code::UNKNOWN_CONTAINER
        );
        assert_eq!(
            check_interface(&expected, Some(&netns)).unwrap_err().code,
            code::NOT_AS_MADE
        );
        let link = crate::plan::ObservedLink {
            up: true,
            addresses: vec!["10.1.0.5/24".parse().unwrap()],
            ..Default::default()
        };
        netns.links.insert("eth0".into(), link.clone());
        assert!(check_interface(&expected, Some(&netns)).is_ok());
        netns.links.insert(
            "eth0".into(),
            crate::plan::ObservedLink {
                up: false,
                ..link.clone()
            },
        );
        assert!(check_interface(&expected, Some(&netns))
            .unwrap_err()
            .msg
            .contains("down"));
        let moved = crate::plan::ObservedLink {
            addresses: vec!["10.1.0.9/24".parse().unwrap()],
            ..link
        };
        netns.links.insert("eth0".into(), moved);
        assert!(check_interface(&expected, Some(&netns))
            .unwrap_err()
            .msg
            .contains("10.1.0.9/24"));
    }

    #[test]
    fn errors_versions_and_the_conflist() {
        let e = CniError::new(code::NOT_AVAILABLE, "stack shop is not up", "run `plumb up`").to_json("1.0.0");
        assert_eq!(
            e,
            json!({"cniVersion": "1.0.0", "code": 50, "msg": "stack shop is not up", "details": "run `plumb up`"})
        );
        assert_eq!(
            version_info(),
            json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
        let list = conflist("shopnet", "shop", "front", "/var/lib/plumb");
        assert_eq!(list["cniVersion"], "1.0.0");
        assert_eq!(list["plugins"][0]["type"], "plumb");
        assert_eq!(list["plugins"][0]["capabilities"]["aliases"], true);
        assert_eq!(list["plugins"][1]["type"], "portmap");
        // What the conflist gives the plugin is what the plugin reads.
        let mut entry = list["plugins"][0].clone();
        entry["cniVersion"] = list["cniVersion"].clone();
        entry["name"] = list["name"].clone();
        let c = parse_conf(entry.to_string().as_bytes()).unwrap();
        assert_eq!((c.stack.as_str(), c.network.as_str()), ("shop", "front"));
        assert_eq!(c.state_dir.as_deref(), Some("/var/lib/plumb"));
    }
}

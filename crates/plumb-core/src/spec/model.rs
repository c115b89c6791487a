//! The typed stack: what a valid stack file means, as the rest of plumb uses it. Values here
//! have passed every check in `validate`; nothing in this module parses or judges input.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::capabilities::Capabilities;

/// A validated stack file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stack {
    pub name: String,
    /// Where services' virtual IPs come from. Reached only from the stack's own containers
    /// (the NAT that serves a VIP matches on the stack's bridges), so stacks may share it.
    pub service_subnet: Ipv4Net,
    /// Where the stack's supervisor serves Prometheus metrics (`metrics = "127.0.0.1:9464"`);
    /// off when unset.
    #[serde(default)]
    pub metrics: Option<std::net::SocketAddrV4>,
    /// Where `plumb ui` listens when its `--listen` is not given (`ui = "127.0.0.1:9465"`).
    #[serde(default)]
    pub ui: Option<std::net::SocketAddrV4>,
    pub networks: BTreeMap<String, NetworkSpec>,
    pub services: BTreeMap<String, ServiceSpec>,
    /// `[[policies]]`, in file order.
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
    /// `[[experiments]]`, in file order.
    #[serde(default)]
    pub experiments: Vec<ExperimentSpec>,
    /// `tracing = "http://HOST:PORT"`: the OTLP/HTTP collector sidecars export spans to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<String>,
    /// `[[routes]]`, in file order: how sidecars call a service (see [`RouteSpec`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
}

/// How the mesh's sidecars call a service, or the requests to it under a path prefix: the
/// route with the longest matching prefix applies (see `docs/mesh.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouteSpec {
    pub service: String,
    /// A path prefix (`/api`), or `None` for every request.
    #[serde(default)]
    pub path: Option<String>,
    /// How long one attempt may take before the caller gets 504.
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// How many times a failed request (connect error, 5xx, timeout) is tried again.
    #[serde(default)]
    pub retries: u32,
    /// Retries may add at most this share of requests (percent), so they cannot pile up.
    pub retry_budget_percent: u32,
    /// The methods retried: the idempotent ones unless the file lists others.
    pub retry_methods: Vec<String>,
    /// After this many failures in a row an endpoint is ejected (0: never).
    pub eject_after: u32,
    /// ... for this long.
    pub eject_for: Duration,
}

/// The methods RFC 9110 calls idempotent: retried by default.
pub const IDEMPOTENT_METHODS: [&str; 6] = ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"];

impl RouteSpec {
    /// A service's route where the file says nothing: no timeout, no retries, ejection after
    /// 5 failures in a row for 30 s.
    pub fn default_for(service: &str) -> RouteSpec {
        RouteSpec {
            service: service.to_string(),
            path: None,
            timeout: None,
            retries: 0,
            retry_budget_percent: 20,
            retry_methods: IDEMPOTENT_METHODS.iter().map(|m| m.to_string()).collect(),
            eject_after: 5,
            eject_for: Duration::from_secs(30),
        }
    }

    /// True if this route covers a request for `path` (its prefix matches at a segment edge).
    pub fn covers(&self, path: &str) -> bool {
        match self.path.as_deref() {
            None | Some("/") => true,
            Some(prefix) => {
                path.starts_with(prefix)
                    && (prefix.ends_with('/') || matches!(path.as_bytes().get(prefix.len()), None | Some(b'/' | b'?')))
            }
        }
    }
}

impl Stack {
    /// The route for a request to `service` at `path`: the longest matching prefix.
    pub fn route(&self, service: &str, path: &str) -> RouteSpec {
        route_for(&self.routes, service, path)
    }
}

/// The route of `routes` for a request to `service` at `path`: the longest matching prefix,
/// else the default.
pub fn route_for(routes: &[RouteSpec], service: &str, path: &str) -> RouteSpec {
    routes
        .iter()
        .filter(|r| r.service == service && r.covers(path))
        .max_by_key(|r| r.path.as_ref().map_or(0, String::len))
        .cloned()
        .unwrap_or_else(|| RouteSpec::default_for(service))
}

/// A chaos experiment: a steady-state hypothesis (its checks), faults at given times, and the
/// checks again during and after them (`plumb experiment run NAME`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentSpec {
    pub name: String,
    pub description: Option<String>,
    /// How often the checks run while the faults are on.
    pub interval: Duration,
    /// After the faults: how long the checks may take to pass again.
    pub settle: Duration,
    /// How long the faults phase lasts, if longer than its last fault.
    pub lasts: Option<Duration>,
    pub checks: Vec<CheckSpec>,
    pub faults: Vec<FaultSpec>,
}

impl ExperimentSpec {
    /// When the last fault ends (a kill is instant), from the start of the faults.
    pub fn duration(&self) -> Duration {
        self.faults
            .iter()
            .map(|f| f.at + f.lasts.unwrap_or_default())
            .max()
            .unwrap_or_default()
            .max(self.lasts.unwrap_or_default())
            .max(self.interval)
    }
}

/// One steady-state check, named (as the verdict names a failing one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckSpec {
    pub name: String,
    pub probe: CheckProbe,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CheckProbe {
    /// `GET http://HOST[:PORT]/PATH` answers `status` within `within`; HOST is a service (its
    /// VIP, else its first replica), a container, or an IPv4 address; sent from inside
    /// container `from`, or from the host.
    Http {
        url: String,
        host: String,
        port: u16,
        path: String,
        from: Option<String>,
        status: u16,
        within: Duration,
    },
    /// At least `at_least` replicas of `service` run and pass their health check.
    Healthy { service: String, at_least: u32 },
}

/// A fault of an experiment: what, when (from the start of the faults), for how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultSpec {
    pub at: Duration,
    /// None for a kill, and for a fault lasting until the experiment's faults end.
    pub lasts: Option<Duration>,
    pub action: FaultAction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultAction {
    /// One running replica, chosen at random, killed (SIGKILL to its process group).
    Kill {
        service: String,
    },
    Partition {
        a: String,
        b: String,
    },
    Impair {
        target: String,
        impairment: crate::chaos::Impairment,
    },
}

/// One network policy: traffic from any of `from` to any of `to` on `ports` (all when
/// empty) over `protocol` is allowed; naming a service in `to` makes its ingress default-deny,
/// in `from` its egress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySpec {
    pub from: Vec<Selector>,
    pub to: Vec<Selector>,
    /// Empty: every port.
    pub ports: Vec<PortRange>,
    pub protocol: Protocol,
    /// Log (rate-limited) the drops this policy's targets suffer.
    pub log: bool,
    /// L7, enforced by the receiving sidecar: the HTTP methods allowed (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// L7: the path prefixes allowed (empty: all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Only connections from the mesh's sidecars (mutual TLS) are allowed.
    #[serde(default)]
    pub mtls: bool,
}

/// Who a policy's `from` or `to` names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Selector {
    /// Every replica of a service.
    Service(String),
    /// Every container attached to a network.
    Network(String),
    /// Any address that is neither in the stack's networks nor the host.
    Outside,
    /// The host itself.
    Host,
    /// Any address in this range.
    Cidr(Ipv4Net),
}

impl std::fmt::Display for Selector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selector::Service(s) => write!(f, "service:{s}"),
            Selector::Network(n) => write!(f, "network:{n}"),
            Selector::Outside => f.write_str("outside"),
            Selector::Host => f.write_str("host"),
            Selector::Cidr(c) => write!(f, "{c}"),
        }
    }
}

/// Ports `first` to `last`, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub const ALL: PortRange = PortRange { first: 0, last: 65535 };

    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

/// `5001`, or `6000-6010`, as nft writes a port or a range.
impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// `service_subnet` when the stack file does not set one (the first of
/// [`DEFAULT_SERVICE_SUBNETS`] that no network of the stack overlaps).
pub const DEFAULT_SERVICE_SUBNET: &str = "10.96.0.0/20";
pub const DEFAULT_SERVICE_SUBNETS: [&str; 4] = [
    DEFAULT_SERVICE_SUBNET,
    "10.97.0.0/20",
    "172.31.240.0/20",
    "192.168.240.0/20",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    /// No egress NAT, no published ports, no forwarding in or out.
    pub internal: bool,
    /// `driver = "overlay"`: one network across the cluster's hosts (VXLAN); `None` for a
    /// bridge on one host.
    #[serde(default)]
    pub overlay: Option<OverlaySpec>,
}

/// An overlay network's cluster-wide settings. Each host leases a block of `subnet` (of
/// prefix `host_prefix`) for the containers it runs, as flannel leases a subnet per node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlaySpec {
    /// The VXLAN network identifier, the same on every host.
    pub vni: u32,
    /// The prefix of each host's block.
    pub host_prefix: u8,
}

/// An overlay network's default block prefix: /24 blocks from a /20 or larger, else blocks
/// 4 bits longer than the subnet (16 hosts), at most /28.
pub fn default_host_prefix(subnet_prefix: u8) -> u8 {
    if subnet_prefix <= 20 {
        24
    } else {
        (subnet_prefix + 4).min(28)
    }
}

/// An overlay network's VNI when the file sets none: derived from the stack's and the
/// network's names (FNV-1a), in 4096..2^24 so it keeps clear of small hand-picked ones.
pub fn default_vni(stack: &str, network: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in stack.bytes().chain([b'/']).chain(network.bytes()) {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    4096 + h % ((1 << 24) - 4096)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Networks in interface order (`eth0` first), each with an optional static address.
    pub networks: Vec<Attachment>,
    pub replicas: u32,
    pub ports: Vec<PortSpec>,
    /// `None` for a bare container: a namespace wired into its networks, no process.
    pub process: Option<ProcessSpec>,
    /// Container ports other containers reach through the service's name and VIP, besides the
    /// container side of `ports` (which counts as exposed too).
    pub expose: Vec<ServicePort>,
    pub lb: Balance,
    /// `affinity = "client-ip"`: a client stays on one replica for this long after its last
    /// new connection.
    pub affinity: Option<Duration>,
    /// More names for the service in DNS.
    pub aliases: Vec<String>,
    /// `placement = { host = "h1" }`: in a cluster, every replica runs on this host.
    #[serde(default)]
    pub placement: Option<String>,
    /// `image = "..."` (and `build`): each replica is an OCI container run by podman in the
    /// replica's namespace, rather than a host program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    /// `[services.X.autoscale]`: the replica count follows load between `min` and `max`
    /// (`replicas` is then only the starting count). Nothing applies it yet: the recommender
    /// is `crate::autoscale`, the controller that drives the engine with it comes next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleSpec>,
    /// Its replicas get a sidecar proxy (`mesh = true` on the service or the stack).
    #[serde(default)]
    pub mesh: bool,
}

/// How a service scales with its load, as Kubernetes' HorizontalPodAutoscaler (v2, default
/// behaviour) does: at least one target; each proposes a replica count, the highest wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoscaleSpec {
    /// At least 1 (a service scaled to zero would have no load to measure).
    pub min: u32,
    pub max: u32,
    /// `cpu = "70%"`: average CPU use per ready replica, in percent of its `cpus` limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_percent: Option<u32>,
    /// `requests_per_second = 200`: new connections per second per ready replica, as counted
    /// at the service's VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_second: Option<u32>,
    /// `connections = 50`: open connections per ready replica, as counted at the VIP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u32>,
    /// A scale down takes the highest recommendation of this window (Kubernetes: 300s).
    pub scale_down_window: Duration,
    /// A scale up adds at most max(4 replicas, 100%) per this period (Kubernetes: 15s).
    pub scale_up_period: Duration,
}

/// `scale_down_window` when the file sets none (Kubernetes' default).
pub const DEFAULT_SCALE_DOWN_WINDOW: Duration = Duration::from_secs(300);
/// `scale_up_period` when the file sets none (Kubernetes' default).
pub const DEFAULT_SCALE_UP_PERIOD: Duration = Duration::from_secs(15);

/// The OCI image an image service runs, and how to build it when the stack file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// `localhost/shop-web`: the image's name in podman's store.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
}

/// `build = "DIR"` or `build = { context = "DIR", dockerfile = "FILE" }`: `podman build -t
/// NAME -f DOCKERFILE CONTEXT`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Build {
    /// The build context, relative to the stack file's folder (or absolute).
    pub context: String,
    /// The Dockerfile, relative to the context (Compose's rule); `Dockerfile` when unset.
    pub dockerfile: String,
}

impl ServiceSpec {
    /// The most replicas it may run: its count, or its autoscale max if higher (what the
    /// stack's and the bridges' size limits are checked against).
    pub fn most_replicas(&self) -> u32 {
        self.autoscale
            .as_ref()
            .map_or(self.replicas, |a| a.max.max(self.replicas))
    }

    /// Every port the service answers on: `expose`, then the container side of `ports`,
    /// each once, sorted.
    pub fn service_ports(&self) -> Vec<ServicePort> {
        let mut out: Vec<ServicePort> = self
            .expose
            .iter()
            .copied()
            .chain(self.ports.iter().map(|p| ServicePort {
                port: p.container,
                protocol: p.protocol,
            }))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// A port a service answers on, inside its containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServicePort {
    pub port: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for ServicePort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.port, self.protocol.as_str())
    }
}

/// How connections to a service's VIP are spread over its ready replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Balance {
    /// `numgen inc`: each new connection to the next replica.
    #[default]
    RoundRobin,
    /// `numgen random`.
    Random,
    /// Headless: no VIP; the name gives the ready replicas' addresses.
    None,
}

impl Balance {
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round-robin",
            Balance::Random => "random",
            Balance::None => "none",
        }
    }
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

/// `[ADDRESS:]HOST:CONTAINER[/udp]` (Compose's syntax): the host port, on one host address or
/// on all of them, forwarded to the container port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortSpec {
    /// `None`: every address of the host (as Docker publishes by default).
    #[serde(default)]
    pub host_ip: Option<Ipv4Addr>,
    pub host: u16,
    pub container: u16,
    pub protocol: Protocol,
}

impl PortSpec {
    /// True if both claim the same host port: same protocol and port, and the same address
    /// or one of them on every address.
    pub fn overlaps(&self, other: &PortSpec) -> bool {
        self.protocol == other.protocol
            && self.host == other.host
            && (self.host_ip.is_none() || other.host_ip.is_none() || self.host_ip == other.host_ip)
    }

    /// `8080/tcp`, or `127.0.0.1:8080/tcp`: the host side, as messages name it.
    pub fn host_side(&self) -> String {
        match self.host_ip {
            Some(ip) => format!("{ip}:{}/{}", self.host, self.protocol.as_str()),
            None => format!("{}/{}", self.host, self.protocol.as_str()),
        }
    }
}

/// `8080->80/tcp`, `127.0.0.1:8080->80/tcp`, as `docker ps` shows ports.
impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(f, "{}->{}/{}", self.host, self.container, self.protocol.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Empty only for an image service that runs its image's own command (CMD/ENTRYPOINT).
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub restart: RestartPolicy,
    pub health: Option<HealthSpec>,
    pub depends_on: Vec<Dependency>,
    pub stop_grace: Duration,
    /// What its processes may hold: Docker's default set, with `cap_add` and `cap_drop`.
    pub capabilities: Capabilities,
    /// Its replicas' resource limits (`cpus`, `memory`, `memory_swap`, `pids`), each in its
    /// own cgroup.
    #[serde(default, skip_serializing_if = "crate::cgroup::Limits::is_empty")]
    pub limits: crate::cgroup::Limits,
    /// The image it runs as an OCI container (podman), for an image service; `workdir` and
    /// `user` are then the container's, not the host's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
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

/// True if `ip` is inside `net` and is neither its network nor its broadcast address.
pub fn is_host_of(ip: Ipv4Addr, net: Ipv4Net) -> bool {
    net.contains(&ip) && ip != net.network() && ip != net.broadcast()
}

//! Desired state: what a stack file asks for, fully resolved (every address allocated, every
//! interface named). Pure data, computed without touching the machine.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::cluster::{self, HostAssignment, OverlayPeer, RemoteContainer};
use crate::diag::Diagnostics;
use crate::ipam::{self, Leases, Pool, Request};
use crate::mac::Mac;
use crate::names;
use crate::spec::{Balance, Parsed, PolicySpec, PortSpec, ProcessSpec, ServicePort, ServiceSpec};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Desired {
    pub stack: String,
    pub networks: Vec<Network>,
    pub containers: Vec<Container>,
    /// Each service as others find it: its VIP, ports and replicas.
    #[serde(default)]
    pub services: Vec<Service>,
    /// The stack file's `[[policies]]`, in order, each with where it is written.
    #[serde(default)]
    pub policies: Vec<Policy>,
    /// Where the supervisor serves Prometheus metrics, if anywhere.
    #[serde(default)]
    pub metrics: Option<std::net::SocketAddrV4>,
    /// Where `plumb ui` listens unless told otherwise.
    #[serde(default)]
    pub ui: Option<std::net::SocketAddrV4>,
    /// Containers that may not take new connections through their service's VIP (their
    /// process does not run or fails its health check). Not from the stack file: `plumb up`
    /// fills it from the supervisor's `status.json`, so the load balancer it plans is the one
    /// the supervisor keeps.
    #[serde(default)]
    pub unready: BTreeSet<String>,
    /// Where the VIPs come from (`None` in a state file written before VIPs).
    #[serde(default)]
    pub service_subnet: Option<Ipv4Net>,
    /// In a cluster: this host's name (`None` for a stack brought up with `plumb up`).
    #[serde(default)]
    pub host: Option<String>,
    /// In a cluster: the stack's containers that run on other hosts.
    #[serde(default)]
    pub remote: Vec<RemoteContainer>,
    /// In a cluster: the store's endpoints, which the stack's containers may not reach.
    #[serde(default)]
    pub store: Vec<std::net::SocketAddrV4>,
    /// The mesh's `[[routes]]` and trace collector, for the sidecars.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<crate::spec::RouteSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<String>,
}

/// A service as the stack's containers reach it (DNS and the VIP's load balancer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    /// From the stack's service subnet, kept across edits; `None` for a headless service and
    /// for a single container without ports.
    pub vip: Option<Ipv4Addr>,
    pub ports: Vec<ServicePort>,
    /// No declared ports but several containers: the VIP balances every TCP, UDP and SCTP
    /// port (as Swarm's does), so that clients spread over them instead of all taking the
    /// first address of the name's answer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub every_port: bool,
    pub lb: Balance,
    /// Client-IP affinity timeout, in seconds.
    pub affinity_secs: Option<u64>,
    pub aliases: Vec<String>,
    /// Its containers (`web-1`, `web-2`), in replica order.
    pub containers: Vec<String>,
    /// How the supervisor's autoscaler scales it, if it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<crate::spec::AutoscaleSpec>,
}

/// One policy and its place in the stack file, for `plumb policy why` and drop logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub spec: PolicySpec,
    /// `plumb.toml:42`
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub internal: bool,
    pub bridge: String,
    pub alias: String,
    /// An overlay network in a cluster (then `subnet` is this host's block of it).
    #[serde(default)]
    pub overlay: Option<Overlay>,
}

/// This host's side of an overlay network: a VXLAN device, and one route, neighbour and FDB
/// entry per peer (static entries only, as flannel's vxlan backend: no multicast, no misses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overlay {
    pub vni: u32,
    /// The whole network, across hosts.
    pub subnet: Ipv4Net,
    /// The VXLAN device (`plx…`).
    pub device: String,
    /// Its MAC ([`cluster::vtep_mac`]).
    pub mac: Mac,
    /// This host's underlay address.
    pub local: Ipv4Addr,
    /// The underlay's MTU minus VXLAN's 50 bytes: the bridge, the VXLAN device and the
    /// containers' interfaces on this network all use it.
    pub mtu: u32,
    pub peers: Vec<OverlayPeer>,
    /// Transmit checksum offload stays on (see [`cluster::OverlayAssignment::tx_offload`]).
    #[serde(default)]
    pub tx_offload: bool,
    /// Why it stays on or is turned off ([`crate::firewall::vxlan_nat::decide`]).
    #[serde(default)]
    pub tx_offload_why: String,
}

impl Overlay {
    /// The VTEP MAC of a peer on this network.
    pub fn peer_mac(&self, stack: &str, network: &str, peer: &OverlayPeer) -> Mac {
        cluster::vtep_mac(stack, network, &peer.host)
    }
}

impl Network {
    /// The bridge's MAC address: locally administered, derived from its alias.
    pub fn bridge_mac(&self) -> Mac {
        names::mac(&self.alias)
    }

    /// The MTU of the bridge and its ports when it is not the kernel's default: an overlay's.
    pub fn mtu(&self) -> Option<u32> {
        self.overlay.as_ref().map(|o| o.mtu)
    }

    /// The bridge's own address: the gateway, with the subnet's prefix.
    pub fn gateway_cidr(&self) -> Ipv4Net {
        Ipv4Net::new(self.gateway, self.subnet.prefix_len()).expect("prefix comes from a valid subnet")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Container {
    /// `web-2`
    pub name: String,
    pub service: String,
    pub replica: u32,
    /// `shop-web-2`, under /run/netns.
    pub netns: String,
    pub interfaces: Vec<Interface>,
    /// Default route, via the first network's gateway; `None` without networks.
    pub gateway: Option<Ipv4Addr>,
    pub ports: Vec<PortSpec>,
    pub process: Option<ProcessSpec>,
    /// An attached container: the namespace is another's (a container runtime's), at this
    /// path; plumb wires it and later unwires it, but never makes, empties or deletes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<String>,
    /// In the service mesh: its TCP goes through a sidecar (an interception table inside).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mesh: bool,
}

/// A container made by someone else (a runtime's, as a CNI ADD gives it) joined to one network
/// of a stack: it gets an address, a veth, DNS, the stack's policies, and the VIP of
/// `service` if that names one of the stack's services.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Its name in the stack (DNS, `plumb ps`): a label.
    pub name: String,
    pub network: String,
    /// The namespace, as the runtime gives it (`/run/netns/X`, `/proc/PID/ns/net`).
    pub netns_path: String,
    /// The interface inside (`eth0`).
    pub ifname: String,
    /// A service of the stack whose VIP and name it joins, if any.
    #[serde(default)]
    pub service: Option<String>,
    /// The runtime's container ID when CNI attached it: CNI's DEL and GC name an attachment
    /// by container ID and interface, not by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
}

impl Container {
    /// The address published ports forward to: the one on the first non-internal network.
    pub fn published_address(&self, networks: &[Network]) -> Option<Ipv4Addr> {
        self.interfaces
            .iter()
            .find(|i| networks.iter().any(|n| n.name == i.network && !n.internal))
            .map(|i| i.address)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// `eth0` inside the container.
    pub name: String,
    pub network: String,
    pub bridge: String,
    /// The veth's other end, on the host, attached to `bridge`.
    pub host_veth: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
    /// `plumb:shop/web-2/frontend`: marks the interface (and so the namespace) as the stack's.
    pub alias: String,
    /// Derived from the alias: the only MAC the anti-spoofing rules let it send from. (Absent
    /// only in records older than MACs: then zeros, which nothing executes.)
    #[serde(default)]
    pub mac: Mac,
    /// Both ends' MTU when the network's is not the kernel's default (an overlay's: the
    /// underlay's minus VXLAN's 50 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

impl Interface {
    pub fn cidr(&self) -> Ipv4Net {
        Ipv4Net::new(self.address, self.prefix_len).expect("prefix comes from a valid subnet")
    }
}

impl Desired {
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }

    pub fn container(&self, name: &str) -> Option<&Container> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// A container by name (`web-2`), or a service's first replica (`web`), as commands take
    /// them.
    pub fn container_or_first(&self, name: &str) -> Option<&Container> {
        self.container(name)
            .or_else(|| self.containers.iter().find(|c| c.service == name && c.replica == 1))
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }
}

/// The lease key of a service's VIP; the `@` keeps it apart from `container/network` keys.
pub fn vip_lease(service: &str) -> String {
    format!("@vip/{service}")
}

/// The IPAM pool VIPs come from (no network can take this name).
const VIP_POOL: &str = "@services";

/// Resolves a parsed stack into its desired state, keeping previous address leases. On one
/// host (`plumb up`) an overlay network is a bridge like any other.
pub fn resolve(parsed: &Parsed, previous: &Leases) -> Result<(Desired, Leases), Diagnostics> {
    resolve_with(parsed, previous, None, &[])
}

/// This host's desired state in a cluster: only the replicas `assignment` places here, each
/// overlay network as this host's block of it (with its VXLAN device and peers), and the
/// containers of other hosts for names and VIPs.
pub fn resolve_on_host(
    parsed: &Parsed,
    previous: &Leases,
    assignment: &HostAssignment,
) -> Result<(Desired, Leases), Diagnostics> {
    resolve_with(parsed, previous, Some(assignment), &[])
}

/// The desired state with attached containers too (their addresses leased beside the
/// replicas', so neither takes the other's). Attachments are checked first: see
/// [`check_attachment`].
pub fn resolve_attached(
    parsed: &Parsed,
    previous: &Leases,
    assignment: Option<&HostAssignment>,
    attached: &[Attachment],
) -> Result<(Desired, Leases), Diagnostics> {
    resolve_with(parsed, previous, assignment, attached)
}

/// Why `a` cannot join the stack, if it cannot: a name that is not a label or is taken, a
/// network or service the stack lacks, an interface name the kernel refuses.
pub fn check_attachment(stack: &crate::spec::Stack, a: &Attachment, others: &[Attachment]) -> Result<(), String> {
    if !crate::spec::valid_host_name(&a.name) || a.name.len() > 40 || a.name.contains('.') {
        return Err(format!(
            "{:?} is not a usable container name: 1 to 40 letters, digits, '-' or '_'",
            a.name
        ));
    }
    let replica_name = stack
        .services
        .iter()
        .any(|(svc, spec)| (1..=spec.replicas).any(|r| names::container(svc, r) == a.name));
    if replica_name || stack.services.contains_key(&a.name) && a.service.as_deref() != Some(&a.name) {
        return Err(format!(
            "{:?} is a name of the stack's own services or replicas",
            a.name
        ));
    }
    if others.iter().any(|o| o.name == a.name) {
        return Err(format!("a container {:?} is already attached", a.name));
    }
    match stack.networks.get(&a.network) {
        None => {
            let known: Vec<&str> = stack.networks.keys().map(String::as_str).collect();
            return Err(format!(
                "the stack has no network {:?} (it has {})",
                a.network,
                known.join(", ")
            ));
        }
        Some(n) if n.overlay.is_some() => {
            return Err(format!(
                "{} is an overlay network: attach to a local network",
                a.network
            ));
        }
        Some(_) => {}
    }
    if let Some(service) = &a.service {
        if !stack.services.contains_key(service) {
            return Err(format!("the stack has no service {service:?}"));
        }
    }
    let ifname_ok = !a.ifname.is_empty()
        && a.ifname.len() <= 15
        && a.ifname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !ifname_ok {
        return Err(format!(
            "{:?} is not an interface name (1 to 15 letters, digits, '-', '_', '.')",
            a.ifname
        ));
    }
    Ok(())
}

fn resolve_with(
    parsed: &Parsed,
    previous: &Leases,
    assignment: Option<&HostAssignment>,
    attached: &[Attachment],
) -> Result<(Desired, Leases), Diagnostics> {
    let stack = &parsed.stack;
    let mut networks = Vec::new();
    for (name, spec) in &stack.networks {
        let mut net = Network {
            name: name.clone(),
            subnet: spec.subnet,
            gateway: spec.gateway,
            internal: spec.internal,
            bridge: names::bridge(&stack.name, name),
            alias: names::alias(&stack.name, &format!("net/{name}")),
            overlay: None,
        };
        if let (Some(o), Some(a)) = (spec.overlay, assignment) {
            // No replica here joins it: the network has no part on this host.
            let Some(part) = a.overlays.get(name) else { continue };
            net.subnet = part.block;
            net.gateway = cluster::block_gateway(part.block);
            let mut peers = part.peers.clone();
            peers.sort();
            net.overlay = Some(Overlay {
                vni: o.vni,
                subnet: spec.subnet,
                device: cluster::vxlan_device(&stack.name, name),
                mac: cluster::vtep_mac(&stack.name, name, &a.host),
                local: part.local,
                mtu: part.mtu,
                peers,
                tx_offload: part.tx_offload.unwrap_or(false),
                tx_offload_why: part.tx_offload_why.clone().unwrap_or_else(|| match part.tx_offload {
                    Some(true) => "tx checksum offload kept: the assignment asks for it".into(),
                    _ => "tx checksum offload off (calico#3145 workaround): no NAT check was made on this host".into(),
                }),
            });
        }
        networks.push(net);
    }
    let runs_here = |service: &str, replica: u32| assignment.is_none_or(|a| a.runs(service, replica));
    let pools: BTreeMap<String, Pool> = networks
        .iter()
        .map(|n| {
            (
                n.name.clone(),
                Pool {
                    subnet: n.subnet,
                    gateway: n.gateway,
                },
            )
        })
        .collect();
    let mut requests = Vec::new();
    for (svc_name, svc) in &stack.services {
        for replica in (1..=svc.replicas).filter(|r| runs_here(svc_name, *r)) {
            let container = names::container(svc_name, replica);
            for a in &svc.networks {
                requests.push(Request {
                    key: format!("{container}/{}", a.network),
                    network: a.network.clone(),
                    fixed: a.ip,
                });
            }
        }
    }
    for a in attached {
        requests.push(Request {
            key: format!("{}/{}", a.name, a.network),
            network: a.network.clone(),
            fixed: None,
        });
    }
    // VIPs: the first host address of the service subnet stays free (for the stack's own use).
    let vip_pool = Pool {
        subnet: stack.service_subnet,
        gateway: stack
            .service_subnet
            .hosts()
            .next()
            .unwrap_or(stack.service_subnet.network()),
    };
    let mut pools = pools;
    pools.insert(VIP_POOL.to_string(), vip_pool);
    // A VIP serves the declared ports; a service with none gets one for every port when it
    // has several containers (a name answering addresses in a fixed order puts every client on
    // the first), and a lone container without ports is reached at its own address.
    let members = |name: &str| -> u32 {
        let spec = stack.services.get(name).map_or(0, |s| s.replicas);
        spec + attached.iter().filter(|a| a.service.as_deref() == Some(name)).count() as u32
    };
    let every_port = |name: &str, s: &ServiceSpec| s.service_ports().is_empty() && members(name) > 1;
    for (svc_name, _) in stack
        .services
        .iter()
        .filter(|(name, s)| s.lb != Balance::None && (!s.service_ports().is_empty() || every_port(name, s)))
    {
        requests.push(Request {
            key: vip_lease(svc_name),
            network: VIP_POOL.to_string(),
            fixed: None,
        });
    }
    let leases = ipam::allocate(&pools, &requests, previous).map_err(|e| {
        let (field, hint) = if e.network == VIP_POOL {
            (
                "service_subnet".to_string(),
                "set a larger service_subnet (a shorter prefix)",
            )
        } else {
            (
                format!("networks.{}.subnet", e.network),
                "use a larger subnet (a shorter prefix) or fewer replicas",
            )
        };
        Diagnostics(vec![parsed.error(&field, e.to_string(), hint)])
    })?;
    let services = stack
        .services
        .iter()
        .map(|(name, svc)| Service {
            name: name.clone(),
            vip: leases.get(&vip_lease(name)).copied(),
            ports: svc.service_ports(),
            every_port: svc.lb != Balance::None && every_port(name, svc),
            lb: svc.lb,
            affinity_secs: svc.affinity.map(|d| d.as_secs().max(1)),
            aliases: svc.aliases.clone(),
            containers: (1..=svc.replicas)
                .filter(|r| runs_here(name, *r))
                .map(|r| names::container(name, r))
                .chain(
                    (attached.iter())
                        .filter(|a| a.service.as_deref() == Some(name))
                        .map(|a| a.name.clone()),
                )
                .collect(),
            autoscale: svc.autoscale.clone(),
        })
        .collect();
    let mut containers = Vec::new();
    for (svc_name, svc) in &stack.services {
        for replica in (1..=svc.replicas).filter(|r| runs_here(svc_name, *r)) {
            let name = names::container(svc_name, replica);
            let interfaces: Vec<Interface> = svc
                .networks
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    let net = &pools[&a.network];
                    Interface {
                        name: names::container_ifname(i),
                        network: a.network.clone(),
                        bridge: names::bridge(&stack.name, &a.network),
                        host_veth: names::host_veth(&stack.name, &name, &a.network),
                        address: leases[&format!("{name}/{}", a.network)],
                        prefix_len: net.subnet.prefix_len(),
                        alias: names::alias(&stack.name, &format!("{name}/{}", a.network)),
                        mac: names::mac(&names::alias(&stack.name, &format!("{name}/{}", a.network))),
                        mtu: networks.iter().find(|n| n.name == a.network).and_then(Network::mtu),
                    }
                })
                .collect();
            containers.push(Container {
                netns: names::netns(&stack.name, &name),
                gateway: svc.networks.first().map(|a| pools[&a.network].gateway),
                name,
                service: svc_name.clone(),
                replica,
                interfaces,
                ports: svc.ports.clone(),
                process: svc.process.clone(),
                external: None,
                mesh: svc.mesh && svc.process.is_some(),
            });
        }
    }
    for a in attached {
        let net = &pools[&a.network];
        let alias = names::alias(&stack.name, &format!("{}/{}", a.name, a.network));
        containers.push(Container {
            netns: names::netns(&stack.name, &a.name),
            gateway: Some(net.gateway),
            name: a.name.clone(),
            service: a.service.clone().unwrap_or_else(|| a.name.clone()),
            replica: 0,
            interfaces: vec![Interface {
                name: a.ifname.clone(),
                network: a.network.clone(),
                bridge: names::bridge(&stack.name, &a.network),
                host_veth: names::host_veth(&stack.name, &a.name, &a.network),
                address: leases[&format!("{}/{}", a.name, a.network)],
                prefix_len: net.subnet.prefix_len(),
                mac: names::mac(&alias),
                alias,
                mtu: networks.iter().find(|n| n.name == a.network).and_then(Network::mtu),
            }],
            ports: Vec::new(),
            process: None,
            external: Some(a.netns_path.clone()),
            mesh: false,
        });
    }
    let policies = stack
        .policies
        .iter()
        .enumerate()
        .map(|(i, spec)| Policy {
            spec: spec.clone(),
            source: parsed.place(&format!("policies[{i}]")),
        })
        .collect();
    Ok((
        Desired {
            stack: stack.name.clone(),
            networks,
            containers,
            services,
            policies,
            metrics: stack.metrics,
            ui: stack.ui,
            unready: BTreeSet::new(),
            service_subnet: Some(stack.service_subnet),
            host: assignment.map(|a| a.host.clone()),
            remote: assignment.map(|a| a.remote.clone()).unwrap_or_default(),
            store: assignment.map(|a| a.store.clone()).unwrap_or_default(),
            routes: stack.routes.clone(),
            tracing: stack.tracing.clone(),
        },
        leases,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::parse;

    const NET: &str = "name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n";

    fn desired(text: &str, previous: &Leases) -> (Desired, Leases) {
        let parsed = parse("plumb.toml", text).unwrap_or_else(|e| panic!("{e}"));
        resolve(&parsed, previous).unwrap_or_else(|e| panic!("{e}"))
    }

    /// A record with a malformed MAC is refused when read, not carried on to become
    /// 00:00:00:00:00:00 in the kernel.
    #[test]
    fn a_record_with_a_malformed_mac_is_refused() {
        let (d, _) = desired(&format!("{NET}[services.web]\n"), &Leases::new());
        let mac = d.containers[0].interfaces[0].mac.to_string();
        assert!(mac.starts_with("02:") && mac.len() == 17, "{mac}");
        let json = serde_json::to_string(&d).unwrap();
        assert!(serde_json::from_str::<Desired>(&json).is_ok());
        for bad in [
            "02:00:00:00:00:zz",
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "0200.0000.0000",
        ] {
            let damaged = json.replace(&mac, bad);
            assert!(serde_json::from_str::<Desired>(&damaged).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn services_get_stable_vips_from_the_service_subnet() {
        let (first, leases) = desired(
            &format!("{NET}[services.web]\nexpose = [80]\n[services.db]\nexpose = [5432]\n[services.bare]\n"),
            &Leases::new(),
        );
        let vip = |d: &Desired, s: &str| d.service(s).unwrap().vip.unwrap();
        // The subnet's first host address is kept free.
        assert_eq!(vip(&first, "db"), "10.96.0.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(vip(&first, "web"), "10.96.0.3".parse::<Ipv4Addr>().unwrap());
        // Without ports there is nothing for a VIP to serve: none.
        assert_eq!(first.service("bare").unwrap().vip, None);
        // A service added before them in name order does not renumber them.
        let (second, _) = desired(
            &format!(
                "{NET}[services.web]\nexpose = [80]\n[services.db]\nexpose = [5432]\n[services.api]\nexpose = [80]\n"
            ),
            &leases,
        );
        assert_eq!(vip(&second, "db"), vip(&first, "db"));
        assert_eq!(vip(&second, "web"), vip(&first, "web"));
        assert_eq!(vip(&second, "api"), "10.96.0.4".parse::<Ipv4Addr>().unwrap());
    }

    #[test]
    fn several_containers_without_declared_ports_get_a_vip_for_every_port() {
        let text = "name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n\
            [services.pool]\nreplicas = 3\n[services.lone]\n[services.raw]\nreplicas = 2\nlb = \"none\"\n";
        let (d, _) = desired(text, &Leases::new());
        let pool = d.service("pool").unwrap();
        assert!(
            pool.every_port && pool.vip.is_some() && pool.ports.is_empty(),
            "{pool:?}"
        );
        let lone = d.service("lone").unwrap();
        assert!(!lone.every_port && lone.vip.is_none(), "{lone:?}");
        let raw = d.service("raw").unwrap();
        assert!(!raw.every_port && raw.vip.is_none(), "headless stays headless: {raw:?}");
        // An attached container of the lone service makes two: its VIP balances every port.
        let attached = [Attachment {
            name: "ext".into(),
            network: "n".into(),
            netns_path: "/run/netns/x".into(),
            ifname: "eth0".into(),
            service: Some("lone".into()),
            container_id: None,
        }];
        let parsed = parse("plumb.toml", text).unwrap();
        let (d, _) = resolve_attached(&parsed, &Leases::new(), None, &attached).unwrap();
        let lone = d.service("lone").unwrap();
        assert!(lone.every_port && lone.vip.is_some(), "{lone:?}");
    }

    #[test]
    fn a_headless_service_has_no_vip_and_ports_merge_expose_and_published() {
        let (d, _) = desired(
            "name = \"s\"\nservice_subnet = \"10.97.0.0/24\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n\
             [services.web]\nreplicas = 2\nports = [\"8080:80\"]\nexpose = [\"53/udp\", 80]\naliases = [\"www\"]\n\
             affinity = \"client-ip\"\naffinity_timeout = \"10s\"\n[services.db]\nlb = \"none\"\n",
            &Leases::new(),
        );
        let web = d.service("web").unwrap();
        assert_eq!(web.vip, Some("10.97.0.2".parse().unwrap()));
        let ports: Vec<String> = web.ports.iter().map(ToString::to_string).collect();
        assert_eq!(ports, ["53/udp", "80/tcp"]);
        assert_eq!(web.containers, ["web-1", "web-2"]);
        assert_eq!(web.aliases, ["www"]);
        assert_eq!(web.affinity_secs, Some(10));
        assert_eq!(d.service("db").unwrap().vip, None);
    }

    #[test]
    fn discovery_fields_are_checked() {
        let errors = |text: &str| match parse("plumb.toml", text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        };
        let e = errors(&format!("{NET}[services.a]\nlb = \"fastest\"\n"));
        assert!(e.contains("services.a.lb") && e.contains("round-robin"), "{e}");
        let e = errors(&format!("{NET}[services.a]\nexpose = [0]\n"));
        assert!(e.contains("services.a.expose[0]"), "{e}");
        let e = errors(&format!("{NET}[services.a]\n[services.b]\naliases = [\"a\"]\n"));
        assert!(e.contains("services.b.aliases[0]") && e.contains("service a"), "{e}");
        let e = errors(&format!("{NET}[services.a]\nlb = \"none\"\naffinity = \"client-ip\"\n"));
        assert!(e.contains("headless"), "{e}");
        let e = errors("name = \"s\"\nservice_subnet = \"10.0.0.0/16\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n");
        assert!(
            e.contains("service_subnet") && e.contains("overlaps network \"n\""),
            "{e}"
        );
        // Without service_subnet, a network in the default range moves VIPs to the next one.
        let parsed = parse("plumb.toml", "name = \"s\"\n[networks.n]\nsubnet = \"10.96.1.0/24\"\n").unwrap();
        assert_eq!(parsed.stack.service_subnet.to_string(), "10.97.0.0/20");
        let e = errors("name = \"s\"\nservice_subnet = \"127.0.0.0/24\"\n");
        assert!(e.contains("loopback"), "{e}");
    }

    #[test]
    fn a_host_of_a_cluster_runs_its_replicas_in_its_block() {
        let text = "name = \"s\"\n[networks.o]\nsubnet = \"10.50.0.0/16\"\ndriver = \"overlay\"\n\
                    [services.web]\nreplicas = 3\nexpose = [80]\n";
        let parsed = parse("plumb.toml", text).unwrap();
        let o = parsed.stack.networks["o"].overlay.unwrap();
        assert_eq!(o.host_prefix, 24);
        assert_eq!(o.vni, crate::spec::default_vni("s", "o"));
        let peer = OverlayPeer {
            host: "h1".into(),
            underlay: "192.168.9.11".parse().unwrap(),
            block: "10.50.0.0/24".parse().unwrap(),
        };
        let assignment = HostAssignment {
            host: "h2".into(),
            replicas: [("web".to_string(), [2, 3].into())].into(),
            overlays: [(
                "o".to_string(),
                cluster::OverlayAssignment {
                    block: "10.50.1.0/24".parse().unwrap(),
                    local: "192.168.9.12".parse().unwrap(),
                    mtu: 1450,
                    tx_offload: None,
                    tx_offload_why: None,
                    peers: vec![peer.clone()],
                },
            )]
            .into(),
            remote: vec![RemoteContainer {
                name: "web-1".into(),
                service: "web".into(),
                replica: 1,
                host: "h1".into(),
                addresses: [("o".to_string(), "10.50.0.2".parse().unwrap())].into(),
                ready: true,
            }],
            base: None,
            store: vec![],
        };
        let (d, _) = resolve_on_host(&parsed, &Leases::new(), &assignment).unwrap();
        let names: Vec<_> = d.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["web-2", "web-3"]);
        let net = &d.networks[0];
        assert_eq!(net.subnet.to_string(), "10.50.1.0/24");
        assert_eq!(net.gateway.to_string(), "10.50.1.1");
        assert_eq!(d.containers[0].interfaces[0].address.to_string(), "10.50.1.2");
        assert_eq!(d.containers[0].interfaces[0].prefix_len, 24);
        let overlay = net.overlay.as_ref().unwrap();
        assert_eq!(overlay.subnet.to_string(), "10.50.0.0/16");
        assert_eq!(overlay.peers, [peer]);
        assert_eq!(d.service("web").unwrap().containers, ["web-2", "web-3"]);
        // The replica on h1 is an endpoint of the VIP here, and has a name.
        let balancer = crate::firewall::vips::Balancer::of(&d);
        let endpoints: Vec<_> = balancer.services[0]
            .endpoints
            .iter()
            .map(|e| e.container.as_str())
            .collect();
        assert_eq!(endpoints, ["web-2", "web-3", "web-1"]);
        let zone = crate::zone::Zone::build(&d, &Default::default());
        let asker = d.containers[0].interfaces[0].address;
        let answer = zone.answer(asker, "web-1.s", crate::zone::QueryType::A);
        assert!(format!("{answer:?}").contains("10.50.0.2"), "{answer:?}");
        // On one host (plumb up) the overlay is a bridge over its whole subnet.
        let (alone, _) = resolve(&parsed, &Leases::new()).unwrap();
        assert_eq!(alone.networks[0].subnet.to_string(), "10.50.0.0/16");
        assert!(alone.networks[0].overlay.is_none());
        assert_eq!(alone.containers.len(), 3);
    }

    #[test]
    fn overlay_fields_are_checked() {
        let errors = |text: &str| match parse("plumb.toml", text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.to_string(),
        };
        let e = errors("name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\ndriver = \"macvlan\"\n");
        assert!(e.contains("networks.n.driver") && e.contains("overlay"), "{e}");
        let e = errors("name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\nvni = 7\n");
        assert!(
            e.contains("networks.n.vni") && e.contains("driver = \"overlay\""),
            "{e}"
        );
        let e =
            errors("name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\ndriver = \"overlay\"\nhost_prefix = 24\n");
        assert!(e.contains("networks.n.host_prefix"), "{e}");
        let e = errors(
            "name = \"s\"\n[networks.a]\nsubnet = \"10.0.0.0/24\"\ndriver = \"overlay\"\nvni = 9\n\
             [networks.b]\nsubnet = \"10.0.1.0/24\"\ndriver = \"overlay\"\nvni = 9\n",
        );
        assert!(e.contains("vni 9"), "{e}");
        let e = errors(
            "name = \"s\"\n[networks.a]\nsubnet = \"10.0.0.0/24\"\ndriver = \"overlay\"\n\
             [services.x.networks.a]\nip = \"10.0.0.5\"\n",
        );
        assert!(e.contains("overlay") && e.contains("static ip"), "{e}");
        let e = errors("name = \"s\"\n[services.x]\nplacement = { rack = \"r1\" }\n");
        assert!(e.contains("services.x.placement") && e.contains("rack"), "{e}");
        let e = errors("name = \"s\"\n[services.x]\nplacement = { host = \"a b\" }\n");
        assert!(e.contains("services.x.placement.host"), "{e}");
        let ok = parse(
            "plumb.toml",
            "name = \"s\"\n[services.x]\nplacement = { host = \"h1\" }\n",
        )
        .unwrap();
        assert_eq!(ok.stack.services["x"].placement.as_deref(), Some("h1"));
    }
}

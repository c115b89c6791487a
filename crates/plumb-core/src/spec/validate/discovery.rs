//! The checks on how a service is found and reached: its `expose`d ports, its load balancing
//! (`lb`, `affinity`), its DNS `aliases`, and the stack's `service_subnet` for VIPs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ipnet::Ipv4Net;
use toml::Spanned;

use super::super::model::*;
use super::super::raw::{RawService, RawValue};
use super::addresses::{reserved_subnet, USE_PRIVATE};
use super::{valid_name, Validator};
use crate::ipam::subnets_overlap;

/// How long a client stays on its replica when `affinity_timeout` is not set (as Kubernetes).
pub const DEFAULT_AFFINITY: Duration = Duration::from_secs(3 * 60 * 60);

/// What a service's discovery fields say.
pub(super) struct Discovery {
    pub expose: Vec<ServicePort>,
    pub lb: Balance,
    pub affinity: Option<Duration>,
    pub aliases: Vec<String>,
}

impl Validator<'_> {
    /// The stack's `service_subnet`; without one, the first of [`DEFAULT_SERVICE_SUBNETS`] that
    /// none of the stack's networks overlaps.
    pub(super) fn service_subnet(
        &mut self,
        raw: Option<&Spanned<String>>,
        networks: &BTreeMap<String, NetworkSpec>,
    ) -> Ipv4Net {
        let default: Ipv4Net = DEFAULT_SERVICE_SUBNETS
            .iter()
            .map(|s| s.parse::<Ipv4Net>().expect("a valid constant"))
            .find(|candidate| !networks.values().any(|n| subnets_overlap(*candidate, n.subnet)))
            .unwrap_or_else(|| DEFAULT_SERVICE_SUBNET.parse().expect("a valid constant"));
        let Some(raw) = raw else { return default };
        self.spans.insert("service_subnet".into(), raw.span());
        let why = match raw.get_ref().parse::<Ipv4Net>() {
            Err(_) => format!("{:?} is not an IPv4 subnet in CIDR form", raw.get_ref()),
            Ok(net) if net.trunc() != net => format!("{net} has host bits set: the subnet is {}", net.trunc()),
            Ok(net) if net.prefix_len() > 30 => format!("{net} has no room for virtual IPs"),
            Ok(net) => match reserved_subnet(net) {
                Some(why) => why,
                None => return net,
            },
        };
        self.err(
            raw.span(),
            "service_subnet",
            why,
            format!("{USE_PRIVATE}; the default is {DEFAULT_SERVICE_SUBNET}"),
        );
        default
    }

    /// The service subnet must not take addresses the stack's own networks use.
    pub(super) fn check_service_subnet(&mut self, subnet: Ipv4Net, networks: &BTreeMap<String, NetworkSpec>) {
        for (name, net) in networks {
            if subnets_overlap(subnet, net.subnet) {
                let span = self
                    .spans
                    .get("service_subnet")
                    .or_else(|| self.spans.get(&format!("networks.{name}.subnet")))
                    .cloned();
                self.err(
                    span,
                    "service_subnet",
                    format!("service_subnet {subnet} overlaps network {name:?} ({})", net.subnet),
                    "set service_subnet = \"...\" to a range no network of the stack uses",
                );
            }
        }
    }

    pub(super) fn discovery(&mut self, field: &str, raw: &RawService) -> Discovery {
        let mut expose = Vec::new();
        for (i, item) in raw.expose.iter().flat_map(|e| e.get_ref()).enumerate() {
            let efield = format!("{field}.expose[{i}]");
            self.spans.insert(efield.clone(), item.span());
            match parse_service_port(item.get_ref()) {
                Some(p) => expose.push(p),
                None => self.err(
                    item.span(),
                    &efield,
                    "not a container port",
                    "write a port 1-65535, as a number (5001) or text with a protocol (\"53/udp\")",
                ),
            }
        }
        let lb = match raw.lb.as_ref() {
            None => Balance::RoundRobin,
            Some(lb) => match lb.get_ref().as_str() {
                "round-robin" => Balance::RoundRobin,
                "random" => Balance::Random,
                "none" => Balance::None,
                other => {
                    self.err(
                        lb.span(),
                        &format!("{field}.lb"),
                        format!("lb = {other:?} is not a way to balance"),
                        "use \"round-robin\" (the default), \"random\", or \"none\" (headless: no VIP, DNS gives the replicas)",
                    );
                    Balance::RoundRobin
                }
            },
        };
        let timeout_field = format!("{field}.affinity_timeout");
        let affinity = match raw.affinity.as_ref() {
            None => {
                if let Some(t) = &raw.affinity_timeout {
                    self.err(
                        t.span(),
                        &timeout_field,
                        "affinity_timeout without affinity",
                        "add affinity = \"client-ip\", or drop affinity_timeout",
                    );
                }
                None
            }
            Some(a) => match a.get_ref().as_str() {
                "none" => None,
                "client-ip" => Some(self.duration(&timeout_field, raw.affinity_timeout.as_ref(), DEFAULT_AFFINITY)),
                other => {
                    self.err(
                        a.span(),
                        &format!("{field}.affinity"),
                        format!("affinity = {other:?} is not known"),
                        "use \"client-ip\" (a client stays on one replica) or \"none\"",
                    );
                    None
                }
            },
        };
        if affinity.is_some() && lb == Balance::None {
            let span = raw.affinity.as_ref().map(Spanned::span);
            self.err(
                span,
                &format!("{field}.affinity"),
                "a headless service (lb = \"none\") has no VIP to keep clients on",
                "drop affinity, or use lb = \"round-robin\"",
            );
        }
        let mut aliases = Vec::new();
        for (i, item) in raw.aliases.iter().flat_map(|a| a.get_ref()).enumerate() {
            let afield = format!("{field}.aliases[{i}]");
            self.spans.insert(afield.clone(), item.span());
            match item.get_ref().as_str() {
                Some(name) if valid_name(name, 63) => aliases.push(name.to_string()),
                _ => self.err(
                    item.span(),
                    &afield,
                    "not a valid alias",
                    "use a DNS label: 1 to 63 lowercase letters, digits or '-', starting with a letter",
                ),
            }
        }
        Discovery {
            expose,
            lb,
            affinity,
            aliases,
        }
    }

    /// One name answers for one service: aliases may not take a service's name, nor each
    /// other's.
    pub(super) fn check_aliases(&mut self, services: &BTreeMap<String, ServiceSpec>) {
        let mut taken: BTreeMap<&str, String> = services.keys().map(|s| (s.as_str(), format!("service {s}"))).collect();
        for (svc, spec) in services {
            let mut own = BTreeSet::new();
            for (i, alias) in spec.aliases.iter().enumerate() {
                let field = format!("services.{svc}.aliases[{i}]");
                if let Some(holder) = taken.get(alias.as_str()).filter(|_| !own.contains(alias)) {
                    let span = self.spans.get(&field).cloned();
                    self.err(
                        span,
                        &field,
                        format!("alias {alias:?} is already the name of {holder}"),
                        "give each name to one service",
                    );
                } else {
                    own.insert(alias.clone());
                    taken.insert(alias, format!("an alias of service {svc}"));
                }
            }
        }
    }
}

/// `5001`, `"5001"`, `"53/udp"`, `"80/tcp"`.
fn parse_service_port(value: &RawValue) -> Option<ServicePort> {
    let (port, protocol) = match value {
        RawValue::Integer(n) => (u16::try_from(*n).ok()?, Protocol::Tcp),
        RawValue::String(s) => {
            let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
            let protocol = match proto {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => return None,
            };
            (port.parse().ok()?, protocol)
        }
        _ => return None,
    };
    (port != 0).then_some(ServicePort { port, protocol })
}

//! What a sidecar needs to know of its stack: which service an address belongs to (a VIP or
//! a replica's address) and the ready replicas of each, at the address the sidecar's own
//! container reaches them by.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;

use crate::desired::{Container, Desired};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Directory {
    by_address: HashMap<Ipv4Addr, String>,
    /// Service → its ready replicas (container name, address), in replica order.
    endpoints: BTreeMap<String, Vec<(String, Ipv4Addr)>>,
    /// Container → its service and whether it is in the mesh.
    containers: HashMap<String, (String, bool)>,
    /// Addresses a sidecar answers at.
    meshed: std::collections::HashSet<Ipv4Addr>,
}

impl Directory {
    /// The directory as container `own` sees `desired`, with the `unready` replicas left out
    /// of the endpoints (a service's name still resolves to them by address).
    pub fn of(desired: &Desired, unready: &BTreeSet<String>, own: &str) -> Directory {
        let me = desired.containers.iter().find(|c| c.name == own);
        let mut out = Directory::default();
        for s in &desired.services {
            if let Some(vip) = s.vip {
                out.by_address.insert(vip, s.name.clone());
                let meshed = desired.containers.iter().any(|c| c.service == s.name && c.mesh);
                if meshed {
                    out.meshed.insert(vip);
                }
            }
        }
        for c in &desired.containers {
            out.containers.insert(c.name.clone(), (c.service.clone(), c.mesh));
            for i in &c.interfaces {
                out.by_address.insert(i.address, c.service.clone());
                // Its own process is reached in the clear, from inside.
                if c.mesh && c.name != own {
                    out.meshed.insert(i.address);
                }
            }
            if unready.contains(&c.name) || c.interfaces.is_empty() {
                continue;
            }
            let address = me.and_then(|m| shared_address(m, c)).unwrap_or(c.interfaces[0].address);
            out.endpoints
                .entry(c.service.clone())
                .or_default()
                .push((c.name.clone(), address));
        }
        out
    }

    /// The service whose VIP or replica `ip` is.
    pub fn service_at(&self, ip: Ipv4Addr) -> Option<&str> {
        self.by_address.get(&ip).map(String::as_str)
    }

    /// The ready replicas of `service`.
    pub fn endpoints(&self, service: &str) -> &[(String, Ipv4Addr)] {
        self.endpoints.get(service).map_or(&[], Vec::as_slice)
    }

    /// True if `ip` is another meshed replica's, or the VIP of a service with meshed replicas: a
    /// sidecar answers there, over mutual TLS.
    pub fn meshed_at(&self, ip: Ipv4Addr) -> bool {
        self.meshed.contains(&ip)
    }

    /// The service of a container, if the stack has it.
    pub fn service_of(&self, container: &str) -> Option<&str> {
        self.containers.get(container).map(|(s, _)| s.as_str())
    }
}

/// `to`'s address on the first network `from` shares with it.
fn shared_address(from: &Container, to: &Container) -> Option<Ipv4Addr> {
    to.interfaces
        .iter()
        .find(|t| from.interfaces.iter().any(|f| f.network == t.network))
        .map(|i| i.address)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::resolve;
    use crate::spec::parse;

    #[test]
    fn addresses_name_their_service_and_only_ready_replicas_are_endpoints() {
        let text = "name = \"s\"\nmesh = true\n[networks.a]\nsubnet = \"10.1.0.0/24\"\n[networks.b]\nsubnet = \"10.2.0.0/24\"\n\
                    [services.web]\nnetworks = [\"a\"]\ncommand = \"x\"\n\
                    [services.api]\nnetworks = [\"b\", \"a\"]\nreplicas = 2\nexpose = [80]\ncommand = \"x\"\n";
        let (d, _) = resolve(&parse("f", text).unwrap(), &Default::default()).unwrap();
        let unready: BTreeSet<String> = ["api-2".to_string()].into();
        let dir = Directory::of(&d, &unready, "web-1");
        let vip = d.services.iter().find(|s| s.name == "api").unwrap().vip.unwrap();
        assert_eq!(dir.service_at(vip), Some("api"));
        let eps = dir.endpoints("api");
        assert_eq!(eps.len(), 1);
        assert_eq!(eps[0].0, "api-1");
        // web reaches api over network a (api's second network).
        assert!(eps[0].1.to_string().starts_with("10.1.0."), "{eps:?}");
        assert_eq!(dir.service_at(eps[0].1), Some("api"));
        assert_eq!(dir.service_at("192.0.2.1".parse().unwrap()), None);
        assert_eq!(dir.service_of("api-2"), Some("api"));
        assert!(dir.meshed_at(vip) && dir.meshed_at(eps[0].1));
        assert!(!dir.meshed_at("192.0.2.1".parse().unwrap()));
    }
}

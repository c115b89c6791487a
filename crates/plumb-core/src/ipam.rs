//! IP address management: which address each container interface gets. Pure: the caller
//! passes the previous leases in and stores the result, so addresses stay put across edits
//! (adding a service never renumbers the others).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::spec::is_host_of;

/// Lease key (`container/network`, e.g. `web-1/frontend`) → address.
pub type Leases = BTreeMap<String, Ipv4Addr>;

/// One interface that needs an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub key: String,
    pub network: String,
    pub fixed: Option<Ipv4Addr>,
}

/// The pool of one network.
#[derive(Debug, Clone, Copy)]
pub struct Pool {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("network {network:?} ({subnet}) has no free address left")]
pub struct Exhausted {
    pub network: String,
    pub subnet: Ipv4Net,
}

/// True if the two subnets share at least one address. Two CIDR blocks either nest or are
/// disjoint, so one holds the other's network address exactly when they overlap.
pub fn subnets_overlap(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// Gives every request an address: fixed ones first, then previous leases that are still
/// valid, then the lowest free host address of the network.
pub fn allocate(pools: &BTreeMap<String, Pool>, requests: &[Request], previous: &Leases) -> Result<Leases, Exhausted> {
    let mut used: BTreeMap<&str, BTreeSet<Ipv4Addr>> = pools
        .iter()
        .map(|(n, p)| (n.as_str(), BTreeSet::from([p.gateway])))
        .collect();
    let mut leases = Leases::new();
    for r in requests {
        if let Some(ip) = r.fixed {
            used.entry(&r.network).or_default().insert(ip);
            leases.insert(r.key.clone(), ip);
        }
    }
    for r in requests.iter().filter(|r| r.fixed.is_none()) {
        let (Some(pool), Some(&ip)) = (pools.get(&r.network), previous.get(&r.key)) else {
            continue;
        };
        let taken = used.entry(&r.network).or_default();
        if is_host_of(ip, pool.subnet) && taken.insert(ip) {
            leases.insert(r.key.clone(), ip);
        }
    }
    let mut cursors: BTreeMap<&str, u32> = BTreeMap::new();
    let unplaced: Vec<&Request> = requests.iter().filter(|r| !leases.contains_key(&r.key)).collect();
    for r in unplaced {
        let Some(pool) = pools.get(&r.network) else {
            continue;
        };
        let taken = used.entry(&r.network).or_default();
        let last = u32::from(pool.subnet.broadcast());
        let cursor = cursors
            .entry(&r.network)
            .or_insert(u32::from(pool.subnet.network()) + 1);
        while *cursor < last && taken.contains(&Ipv4Addr::from(*cursor)) {
            *cursor += 1;
        }
        if *cursor >= last {
            return Err(Exhausted {
                network: r.network.clone(),
                subnet: pool.subnet,
            });
        }
        let ip = Ipv4Addr::from(*cursor);
        taken.insert(ip);
        leases.insert(r.key.clone(), ip);
    }
    Ok(leases)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pools() -> BTreeMap<String, Pool> {
        BTreeMap::from([(
            "n".to_string(),
            Pool {
                subnet: "10.0.0.0/29".parse().unwrap(),
                gateway: "10.0.0.1".parse().unwrap(),
            },
        )])
    }

    fn req(key: &str, fixed: Option<&str>) -> Request {
        Request {
            key: key.into(),
            network: "n".into(),
            fixed: fixed.map(|f| f.parse().unwrap()),
        }
    }

    #[test]
    fn subnets_overlap_when_one_holds_the_other() {
        let net = |s: &str| s.parse::<Ipv4Net>().unwrap();
        assert!(subnets_overlap(net("10.0.0.0/24"), net("10.0.0.128/25")));
        assert!(subnets_overlap(net("10.0.0.128/25"), net("10.0.0.0/24")));
        assert!(subnets_overlap(net("10.0.0.0/24"), net("10.0.0.0/24")));
        assert!(subnets_overlap(net("0.0.0.0/0"), net("192.168.1.0/30")));
        assert!(!subnets_overlap(net("10.0.0.0/25"), net("10.0.0.128/25")));
        assert!(!subnets_overlap(net("10.0.1.0/24"), net("10.0.0.0/24")));
        // Host bits set (as in a route's view) do not change the answer.
        assert!(subnets_overlap(net("10.0.0.5/24"), net("10.0.0.200/32")));
    }

    #[test]
    fn allocates_lowest_free_after_gateway_and_fixed() {
        let leases = allocate(
            &pools(),
            &[req("a", None), req("b", Some("10.0.0.2")), req("c", None)],
            &Leases::new(),
        )
        .unwrap();
        assert_eq!(leases["b"].to_string(), "10.0.0.2");
        assert_eq!(leases["a"].to_string(), "10.0.0.3");
        assert_eq!(leases["c"].to_string(), "10.0.0.4");
    }

    #[test]
    fn previous_leases_stay_put() {
        let previous = Leases::from([("z".to_string(), "10.0.0.5".parse().unwrap())]);
        let leases = allocate(&pools(), &[req("a", None), req("z", None)], &previous).unwrap();
        assert_eq!(leases["z"].to_string(), "10.0.0.5");
        assert_eq!(leases["a"].to_string(), "10.0.0.2");
    }

    #[test]
    fn a_fixed_address_evicts_an_old_lease() {
        let previous = Leases::from([("a".to_string(), "10.0.0.2".parse().unwrap())]);
        let leases = allocate(&pools(), &[req("a", None), req("b", Some("10.0.0.2"))], &previous).unwrap();
        assert_eq!(leases["b"].to_string(), "10.0.0.2");
        assert_eq!(leases["a"].to_string(), "10.0.0.3");
    }

    #[test]
    fn exhaustion_is_an_error() {
        // /29: hosts .1-.6, .1 is the gateway: five containers fit, the sixth does not.
        let reqs: Vec<_> = (0..6).map(|i| req(&format!("c{i}"), None)).collect();
        assert!(allocate(&pools(), &reqs[..5], &Leases::new()).is_ok());
        assert_eq!(allocate(&pools(), &reqs, &Leases::new()).unwrap_err().network, "n");
    }
}

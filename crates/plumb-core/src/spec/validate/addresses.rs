//! Address ranges no container network may use: "this network", loopback, link-local,
//! multicast and the reserved class E (with the broadcast address). The kernel refuses some of
//! them only halfway through `up`, or routes them elsewhere; they are refused up front.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::ipam::subnets_overlap;

/// Each reserved range, and what it is for.
const RESERVED: [([u8; 4], u8, &str); 5] = [
    ([0, 0, 0, 0], 8, "\"this network\""),
    ([127, 0, 0, 0], 8, "loopback"),
    ([169, 254, 0, 0], 16, "link-local"),
    ([224, 0, 0, 0], 4, "multicast"),
    ([240, 0, 0, 0], 4, "reserved, with the broadcast address"),
];

/// The hint for any of them: where container networks belong.
pub(super) const USE_PRIVATE: &str =
    "use a private range (10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16), e.g. \"10.89.1.0/24\"";

/// The first reserved range `net` overlaps, and what that range is for.
pub(super) fn reserved_overlap(net: Ipv4Net) -> Option<(Ipv4Net, &'static str)> {
    RESERVED.iter().find_map(|(addr, prefix, what)| {
        let range = Ipv4Net::new(Ipv4Addr::from(*addr), *prefix).ok()?;
        subnets_overlap(range, net).then_some((range, *what))
    })
}

/// Why `net` cannot be a container network, if it cannot.
pub(super) fn reserved_subnet(net: Ipv4Net) -> Option<String> {
    let (range, what) = reserved_overlap(net)?;
    let relation = if range.contains(&net) { "is inside" } else { "overlaps" };
    Some(format!(
        "{net} {relation} {range} ({what}), which a container network cannot use"
    ))
}

/// Why `ip` cannot be a container's or a bridge's address, if it cannot.
pub(super) fn reserved_address(ip: Ipv4Addr) -> Option<String> {
    let (range, what) = reserved_overlap(Ipv4Net::from(ip))?;
    Some(format!(
        "{ip} is in {range} ({what}), which a container network cannot use"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn reserved_ranges_are_found_inside_and_around() {
        for bad in [
            "127.0.0.0/24",
            "224.0.0.0/24",
            "0.0.0.0/8",
            "169.254.1.0/24",
            "240.0.0.0/30",
        ] {
            assert!(reserved_subnet(net(bad)).unwrap().contains("is inside"), "{bad}");
        }
        assert!(reserved_subnet(net("0.0.0.0/0"))
            .unwrap()
            .contains("overlaps 0.0.0.0/8"));
        assert!(reserved_subnet(net("192.0.0.0/2"))
            .unwrap()
            .contains("overlaps 224.0.0.0/4"));
        for good in [
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "100.64.0.0/10",
            "169.253.0.0/16",
        ] {
            assert_eq!(reserved_subnet(net(good)), None, "{good}");
        }
        assert!(reserved_address("255.255.255.255".parse().unwrap())
            .unwrap()
            .contains("240.0.0.0/4"));
        assert_eq!(reserved_address("10.1.2.3".parse().unwrap()), None);
    }
}

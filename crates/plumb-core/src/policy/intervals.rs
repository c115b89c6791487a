//! Closed intervals of numbers (IPv4 addresses as u32, ports) and the disjoint union of
//! boxes built from them: nft's interval sets refuse overlapping elements, so the allowed
//! flows of all policies are cut into disjoint `source . destination . port` boxes before
//! they become set elements.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// `lo..=hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Interval {
    pub lo: u32,
    pub hi: u32,
}

impl Interval {
    pub fn one(v: u32) -> Interval {
        Interval { lo: v, hi: v }
    }

    pub fn of_net(net: Ipv4Net) -> Interval {
        Interval {
            lo: u32::from(net.network()),
            hi: u32::from(net.broadcast()),
        }
    }

    pub fn of_addr(ip: Ipv4Addr) -> Interval {
        Interval::one(u32::from(ip))
    }

    pub fn contains(&self, v: u32) -> bool {
        self.lo <= v && v <= self.hi
    }

    fn covers(&self, other: &Interval) -> bool {
        self.lo <= other.lo && other.hi <= self.hi
    }

    /// As nft writes an address element: `10.0.0.2`, `10.0.0.0/24`, `10.0.0.1-10.0.0.7`.
    pub fn addr_text(&self) -> String {
        let lo = Ipv4Addr::from(self.lo);
        if self.lo == self.hi {
            return lo.to_string();
        }
        let size = u64::from(self.hi) - u64::from(self.lo) + 1;
        if size.is_power_of_two() && u64::from(self.lo) % size == 0 {
            let prefix = 32 - size.trailing_zeros();
            return format!("{lo}/{prefix}");
        }
        format!("{lo}-{}", Ipv4Addr::from(self.hi))
    }

    /// As nft writes a port element: `80`, `6000-6010`.
    pub fn port_text(&self) -> String {
        if self.lo == self.hi {
            self.lo.to_string()
        } else {
            format!("{}-{}", self.lo, self.hi)
        }
    }
}

/// True if one interval of `merged` (sorted, disjoint) covers `piece` (binary search).
fn any_covers(merged: &[Interval], piece: &Interval) -> bool {
    let at = merged.partition_point(|m| m.lo <= piece.lo);
    at > 0 && merged[at - 1].covers(piece)
}

/// Sorted, disjoint, with touching intervals joined.
pub fn merge(mut v: Vec<Interval>) -> Vec<Interval> {
    v.sort();
    let mut out: Vec<Interval> = Vec::with_capacity(v.len());
    for i in v {
        match out.last_mut() {
            Some(last) if u64::from(i.lo) <= u64::from(last.hi) + 1 => last.hi = last.hi.max(i.hi),
            _ => out.push(i),
        }
    }
    out
}

/// Everything in `universe` not in `minus` (both merged first).
pub fn subtract(universe: Interval, minus: &[Interval]) -> Vec<Interval> {
    let mut out = Vec::new();
    let mut next = u64::from(universe.lo);
    for m in merge(minus.to_vec()) {
        if u64::from(m.hi) < next || m.lo > universe.hi {
            continue;
        }
        if u64::from(m.lo) > next {
            out.push(Interval {
                lo: next as u32,
                hi: m.lo - 1,
            });
        }
        next = u64::from(m.hi) + 1;
    }
    if next <= u64::from(universe.hi) {
        out.push(Interval {
            lo: next as u32,
            hi: universe.hi,
        });
    }
    out
}

/// Cuts the line at every boundary of `intervals`: the elementary pieces that lie inside at
/// least one of them, each wholly inside or wholly outside every one.
fn pieces(intervals: &[&Interval]) -> Vec<Interval> {
    let mut cuts: BTreeSet<u64> = BTreeSet::new();
    for i in intervals {
        cuts.insert(u64::from(i.lo));
        cuts.insert(u64::from(i.hi) + 1);
    }
    let cuts: Vec<u64> = cuts.into_iter().collect();
    let covered = merge(intervals.iter().map(|i| **i).collect());
    cuts.windows(2)
        .map(|w| Interval {
            lo: w[0] as u32,
            hi: (w[1] - 1) as u32,
        })
        .filter(|p| any_covers(&covered, p))
        .collect()
}

/// One allowed box: any source in `src`, any destination in `dst`, any port in `ports`.
pub struct Box3 {
    pub src: Vec<Interval>,
    pub dst: Vec<Interval>,
    pub ports: Vec<Interval>,
}

impl Box3 {
    /// A box with its sides merged (sorted, disjoint), as [`disjoint`] needs them.
    pub fn new(src: Vec<Interval>, dst: Vec<Interval>, ports: Vec<Interval>) -> Box3 {
        Box3 {
            src: merge(src),
            dst: merge(dst),
            ports: merge(ports),
        }
    }
}

/// The union of `boxes` as disjoint (source, destination, port) elements: the destination
/// line is cut into pieces, each piece's ports into pieces, and each (destination, port)
/// piece gets the merged sources of the boxes covering it; neighbouring port pieces with the
/// same sources are joined again.
pub fn disjoint(boxes: &[Box3]) -> Vec<(Interval, Interval, Interval)> {
    let all_dst: Vec<&Interval> = boxes.iter().flat_map(|b| b.dst.iter()).collect();
    let mut out = Vec::new();
    for d in pieces(&all_dst) {
        let here: Vec<&Box3> = boxes.iter().filter(|b| any_covers(&b.dst, &d)).collect();
        let all_ports: Vec<&Interval> = here.iter().flat_map(|b| b.ports.iter()).collect();
        let mut runs: Vec<(Interval, Vec<Interval>)> = Vec::new();
        for p in pieces(&all_ports) {
            let src = merge(
                here.iter()
                    .filter(|b| any_covers(&b.ports, &p))
                    .flat_map(|b| b.src.iter().copied())
                    .collect(),
            );
            match runs.last_mut() {
                Some((last, s)) if u64::from(last.hi) + 1 == u64::from(p.lo) && *s == src => last.hi = p.hi,
                _ => runs.push((p, src)),
            }
        }
        for (p, srcs) in runs {
            out.extend(srcs.into_iter().map(|s| (s, d, p)));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(lo: u32, hi: u32) -> Interval {
        Interval { lo, hi }
    }

    #[test]
    fn texts_are_nfts_own() {
        let net: Ipv4Net = "10.0.0.0/24".parse().unwrap();
        assert_eq!(Interval::of_net(net).addr_text(), "10.0.0.0/24");
        assert_eq!(Interval::of_addr("10.0.0.2".parse().unwrap()).addr_text(), "10.0.0.2");
        assert_eq!(iv(0x0a000002, 0x0a000003).addr_text(), "10.0.0.2/31");
        assert_eq!(iv(0x0a000001, 0x0a000007).addr_text(), "10.0.0.1-10.0.0.7");
        assert_eq!(iv(0, u32::MAX).addr_text(), "0.0.0.0/0");
        assert_eq!(iv(0, 65535).port_text(), "0-65535");
        assert_eq!(iv(80, 80).port_text(), "80");
    }

    #[test]
    fn merge_and_subtract() {
        assert_eq!(
            merge(vec![iv(5, 9), iv(1, 4), iv(20, 30), iv(25, 26)]),
            [iv(1, 9), iv(20, 30)]
        );
        assert_eq!(subtract(iv(0, 100), &[iv(10, 19), iv(50, 200)]), [iv(0, 9), iv(20, 49)]);
        assert_eq!(subtract(iv(0, u32::MAX), &[iv(0, u32::MAX)]), []);
    }

    #[test]
    fn overlapping_boxes_become_disjoint_and_cover_the_same_points() {
        let boxes = [
            Box3::new(vec![iv(0, 10)], vec![iv(100, 100), iv(102, 102)], vec![iv(80, 80)]),
            Box3::new(vec![iv(5, 20)], vec![iv(100, 100)], vec![iv(70, 90)]),
            Box3::new(vec![iv(3, 3)], vec![iv(99, 102)], vec![iv(85, 85)]),
        ];
        let out = disjoint(&boxes);
        for s in 0..25 {
            for d in 99..103 {
                for p in 60..95 {
                    let want = boxes.iter().any(|b| {
                        [&b.src, &b.dst, &b.ports]
                            .iter()
                            .zip([s, d, p])
                            .all(|(x, v)| x.iter().any(|i| i.contains(v)))
                    });
                    let hits = out
                        .iter()
                        .filter(|(a, b, c)| a.contains(s) && b.contains(d) && c.contains(p))
                        .count();
                    assert_eq!(hits, usize::from(want), "{s} {d} {p}: {out:?}");
                }
            }
        }
    }
}

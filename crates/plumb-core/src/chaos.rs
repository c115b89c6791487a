//! Faults on purpose, as values: what `plumb chaos` asks for (a network impairment on a
//! container, a service or a link between two services; a partition between two services or
//! networks), resolved against the stack into a [`Fault`] record whose kernel objects are
//! [`Op`]s made by [`Fault::apply_ops`] and removed by [`Fault::undo_ops`]. The record is what
//! the stack's state directory keeps (with its expiry), so whoever clears a fault (a command,
//! the supervisor, `down`) needs nothing but the record.
//!
//! Impairments (delay, jitter, loss, rate, corruption, duplication) act on the frames a
//! container *sends*: its veth's host end redirects them (tc `mirred`) to a tap, a relay
//! process holds, drops, damages or copies them, and writes them to the tap, which is a quiet
//! port of the same bridge. One direction per container, so a delay on a service adds its
//! amount once to every round trip with it (the replies are late), not twice.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::desired::{Container, Desired};
use crate::firewall::{Family, Hook, HookPoint, NftChange, Rule, Ruleset, TableId};
use crate::names;
use crate::ops::Op;

/// A bad fault request: what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChaosError {
    pub message: String,
    pub hint: String,
}

fn error(message: impl Into<String>, hint: impl Into<String>) -> ChaosError {
    ChaosError {
        message: message.into(),
        hint: hint.into(),
    }
}

/// What a relay does to the frames it is given; zero means "not this one".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Impairment {
    pub delay_us: u64,
    /// Each frame's delay varies uniformly by up to this much either way.
    pub jitter_us: u64,
    /// Parts per million of frames dropped, corrupted (one byte of the payload flipped) and
    /// sent twice.
    pub loss_ppm: u32,
    pub corrupt_ppm: u32,
    pub duplicate_ppm: u32,
    /// Bits per second the frames leave at (0: as fast as they come).
    pub rate_bps: u64,
}

impl Impairment {
    pub fn is_none(&self) -> bool {
        *self == Impairment::default()
    }

    /// `delay 100ms ±20ms, loss 5%`: as a person writes it.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        let ms = |us: u64| format_micros(us);
        if self.delay_us > 0 || self.jitter_us > 0 {
            let jitter = if self.jitter_us > 0 {
                format!(" ±{}", ms(self.jitter_us))
            } else {
                String::new()
            };
            parts.push(format!("delay {}{jitter}", ms(self.delay_us)));
        }
        for (name, ppm) in [
            ("loss", self.loss_ppm),
            ("corrupt", self.corrupt_ppm),
            ("duplicate", self.duplicate_ppm),
        ] {
            if ppm > 0 {
                parts.push(format!("{name} {}", format_ppm(ppm)));
            }
        }
        if self.rate_bps > 0 {
            parts.push(format!("rate {}", format_rate(self.rate_bps)));
        }
        parts.join(", ")
    }
}

fn format_micros(us: u64) -> String {
    if us.is_multiple_of(1000) {
        format!("{}ms", us / 1000)
    } else {
        format!("{:.1}ms", us as f64 / 1000.0)
    }
}

fn format_ppm(ppm: u32) -> String {
    let percent = f64::from(ppm) / 10_000.0;
    format!("{}%", (percent * 1000.0).round() / 1000.0)
}

fn format_rate(bps: u64) -> String {
    match bps {
        b if b.is_multiple_of(1_000_000_000) => format!("{}gbit", b / 1_000_000_000),
        b if b.is_multiple_of(1_000_000) => format!("{}mbit", b / 1_000_000),
        b if b.is_multiple_of(1000) => format!("{}kbit", b / 1000),
        b => format!("{b}bit"),
    }
}

/// `5%`, `0.5%` or `5` (percent) as parts per million; more than 0 and at most 100.
pub fn parse_percent(text: &str) -> Option<u32> {
    let number = text.trim().trim_end_matches('%').trim();
    let value: f64 = number.parse().ok()?;
    (value > 0.0 && value <= 100.0).then(|| (value * 10_000.0).round() as u32)
}

/// `1mbit`, `500kbit`, `2gbit`, `800bit`, or bytes per second as `1mbps`, `100kbps`, `10bps`
/// (tc's units), in bits per second.
pub fn parse_rate(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().ok()?;
    let factor = match unit {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        _ => return None,
    };
    let bps = (value * factor).round();
    (bps >= 1.0).then_some(bps as u64)
}

/// A fault as asked for, before it is resolved against the stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FaultKind {
    /// Frames sent by the target's containers (to `to`'s addresses only, for a link `a->b`).
    Impair { impairment: Impairment },
    /// No traffic between the two sides, either way.
    Partition,
}

/// Frames of one container interface that go through a relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Detour {
    pub container: String,
    pub ifname: String,
    /// The veth's host end, whose ingress is redirected.
    pub host_veth: String,
    pub bridge: String,
    pub tap: String,
    /// Only IPv4 packets to these (empty: every frame).
    pub to: Vec<Ipv4Addr>,
}

/// One active fault, as the stack's state directory records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    pub id: u32,
    pub stack: String,
    /// As given: `web-1`, `product`, `web->gateway`, `gateway<->redis`.
    pub target: String,
    pub kind: FaultKind,
    /// Unix milliseconds.
    pub started_ms: u64,
    /// When it ends by itself (Unix milliseconds), if it does.
    pub expires_ms: Option<u64>,
    /// The relay process carrying the detours, once started.
    #[serde(default)]
    pub relay_pid: Option<u32>,
    #[serde(default)]
    pub detours: Vec<Detour>,
    /// A partition's nft tables.
    #[serde(default)]
    pub tables: Vec<Ruleset>,
    /// Who started it: `plumb chaos`, or `experiment NAME`.
    #[serde(default)]
    pub origin: String,
}

impl Fault {
    /// The kernel objects of the fault, in the order they are made. The relay must hold the
    /// taps before the redirects send frames to them: see [`Fault::redirect_ops`].
    pub fn setup_ops(&self) -> Vec<Op> {
        let mut ops: Vec<Op> = self
            .detours
            .iter()
            .map(|d| Op::TapAdd {
                name: d.tap.clone(),
                bridge: d.bridge.clone(),
                alias: names::alias(&self.stack, &format!("chaos-{}/{}/{}", self.id, d.container, d.ifname)),
            })
            .collect();
        if !self.tables.is_empty() {
            ops.push(Op::Nft {
                changes: self
                    .tables
                    .iter()
                    .map(|r| NftChange::Replace { ruleset: r.clone() })
                    .collect(),
            });
        }
        ops
    }

    /// The redirects that send frames through the relay (after it holds the taps).
    pub fn redirect_ops(&self) -> Vec<Op> {
        self.detours
            .iter()
            .map(|d| Op::TcRedirect {
                dev: d.host_veth.clone(),
                tap: d.tap.clone(),
                to: d.to.clone(),
            })
            .collect()
    }

    /// Everything the fault made, removed: redirects first (frames flow straight again), then
    /// the taps and tables. Each tolerates what is already gone.
    pub fn undo_ops(&self) -> Vec<Op> {
        let mut ops: Vec<Op> = self
            .detours
            .iter()
            .map(|d| d.host_veth.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .map(|dev| Op::TcClear { dev })
            .collect();
        ops.extend(self.detours.iter().map(|d| Op::LinkDel { name: d.tap.clone() }));
        if !self.tables.is_empty() {
            ops.push(Op::Nft {
                changes: self
                    .tables
                    .iter()
                    .map(|r| NftChange::Delete { table: r.table.clone() })
                    .collect(),
            });
        }
        ops
    }

    /// `delay 100ms` or `partition`.
    pub fn describe(&self) -> String {
        match &self.kind {
            FaultKind::Impair { impairment } => impairment.describe(),
            FaultKind::Partition => "partition".into(),
        }
    }

    /// Milliseconds left at `now_ms` (None: until cleared).
    pub fn remaining_ms(&self, now_ms: u64) -> Option<u64> {
        self.expires_ms.map(|e| e.saturating_sub(now_ms))
    }

    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| e <= now_ms)
    }

    /// The containers whose frames this fault redirects.
    pub fn containers(&self) -> BTreeSet<&str> {
        self.detours.iter().map(|d| d.container.as_str()).collect()
    }
}

/// The stack's active faults, as its record in the state store holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Faults {
    /// The number the next fault gets (numbers are not reused while the stack is up).
    pub next_id: u32,
    pub faults: Vec<Fault>,
}

impl Faults {
    /// The next fault number, taken.
    pub fn take_id(&mut self) -> u32 {
        self.next_id = self.next_id.max(1);
        let id = self.next_id;
        self.next_id += 1;
        id
    }
}

/// Times of a new fault: when it starts and when it ends by itself (if it does).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub now_ms: u64,
    pub lasts: Option<Duration>,
}

impl Timing {
    fn expires(&self) -> Option<u64> {
        self.lasts
            .map(|d| self.now_ms + u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2))
    }
}

/// A container (`web-1`) or a service's replicas (`web`).
fn containers_named<'a>(desired: &'a Desired, name: &str) -> Vec<&'a Container> {
    match desired.container(name) {
        Some(c) => vec![c],
        None => desired.containers.iter().filter(|c| c.service == name).collect(),
    }
}

fn unknown(desired: &Desired, name: &str, what: &str) -> ChaosError {
    error(
        format!("no {what} {name:?} in stack {}", desired.stack),
        "`plumb ps` lists the containers; a service name means all its replicas",
    )
}

/// The addresses a name stands for: a container's, every replica's and the VIP of a
/// service, or a network's subnet.
fn addresses_of(desired: &Desired, name: &str) -> Option<Vec<Ipv4Net>> {
    let containers = containers_named(desired, name);
    if !containers.is_empty() {
        let mut out: Vec<Ipv4Net> = containers
            .iter()
            .flat_map(|c| c.interfaces.iter().map(|i| Ipv4Net::from(i.address)))
            .collect();
        if let Some(vip) = desired.service(name).and_then(|s| s.vip) {
            out.push(Ipv4Net::from(vip));
        }
        return Some(out);
    }
    desired.network(name).map(|n| vec![n.subnet])
}

/// An impairment on `target`: `web-1`, `web` (every replica) or `web->gateway` (only what
/// web's replicas send to gateway's replicas and VIP).
pub fn plan_impairment(
    desired: &Desired,
    id: u32,
    target: &str,
    impairment: Impairment,
    timing: Timing,
) -> Result<Fault, ChaosError> {
    if impairment.is_none() {
        return Err(error(
            "no impairment given",
            "give at least one of --delay, --jitter (with --delay), --loss, --rate, --corrupt, --duplicate",
        ));
    }
    if impairment.jitter_us > 0 && impairment.delay_us == 0 {
        return Err(error(
            "--jitter varies a delay, but no --delay is given",
            "add --delay, e.g. --delay 100ms --jitter 20ms",
        ));
    }
    let (from, to) = match target.split_once("->") {
        Some((a, b)) => (a.trim(), Some(b.trim())),
        None => (target.trim(), None),
    };
    let sources = containers_named(desired, from);
    if sources.is_empty() {
        return Err(unknown(desired, from, "container or service"));
    }
    let destinations: Vec<Ipv4Addr> = match to {
        None => Vec::new(),
        Some(b) => {
            if containers_named(desired, b).is_empty() {
                return Err(unknown(desired, b, "container or service"));
            }
            addresses_of(desired, b)
                .unwrap_or_default()
                .into_iter()
                .map(|n| n.addr())
                .collect()
        }
    };
    let detours = sources
        .iter()
        .flat_map(|c| {
            let destinations = destinations.clone();
            c.interfaces.iter().map(move |i| Detour {
                container: c.name.clone(),
                ifname: i.name.clone(),
                host_veth: i.host_veth.clone(),
                bridge: i.bridge.clone(),
                tap: names::chaos_tap(&desired.stack, id, &c.name, &i.name),
                to: destinations.clone(),
            })
        })
        .collect();
    Ok(Fault {
        id,
        stack: desired.stack.clone(),
        target: target.trim().to_string(),
        kind: FaultKind::Impair { impairment },
        started_ms: timing.now_ms,
        expires_ms: timing.expires(),
        relay_pid: None,
        detours,
        tables: Vec::new(),
        origin: String::new(),
    })
}

/// A partition between `a` and `b` (services, containers or networks): packets from one to
/// the other are dropped, both ways, whether bridged (same network: the bridge table) or
/// routed (through the host, after a VIP's DNAT: the inet table).
pub fn plan_partition(desired: &Desired, id: u32, a: &str, b: &str, timing: Timing) -> Result<Fault, ChaosError> {
    let side = |name: &str| {
        addresses_of(desired, name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| unknown(desired, name, "service, container or network"))
    };
    let (left, right) = (side(a)?, side(b)?);
    if a == b {
        return Err(error(
            format!("cannot partition {a:?} from itself"),
            "name two different services or networks",
        ));
    }
    let set = |v: &[Ipv4Net]| {
        let items: Vec<String> = v
            .iter()
            .map(|n| {
                if n.prefix_len() == 32 {
                    n.addr().to_string()
                } else {
                    n.to_string()
                }
            })
            .collect();
        format!("{{ {} }}", items.join(", "))
    };
    let (l, r) = (set(&left), set(&right));
    let name = names::chaos_table(&desired.stack, id);
    let tables = [(Family::Inet, 0), (Family::Bridge, 1)]
        .into_iter()
        .map(|(family, _)| {
            let mut rules = Ruleset::new(TableId {
                family,
                name: name.clone(),
            });
            let hook = Hook {
                priority: -10,
                ..Hook::filter(HookPoint::Forward)
            };
            let chain = rules.chain("partition", Some(hook));
            chain.rules.push(Rule::new(
                format!("ip saddr {l} ip daddr {r} drop"),
                format!("chaos {id}: partition {a} -> {b}"),
            ));
            chain.rules.push(Rule::new(
                format!("ip saddr {r} ip daddr {l} drop"),
                format!("chaos {id}: partition {b} -> {a}"),
            ));
            rules
        })
        .collect();
    Ok(Fault {
        id,
        stack: desired.stack.clone(),
        target: format!("{a}<->{b}"),
        kind: FaultKind::Partition,
        started_ms: timing.now_ms,
        expires_ms: timing.expires(),
        relay_pid: None,
        detours: Vec::new(),
        tables,
        origin: String::new(),
    })
}

/// A new impairment may not redirect a container interface another one already redirects
/// (one `clsact` per link): the fault in the way, if any.
pub fn conflict<'a>(active: &'a [Fault], new: &Fault) -> Option<&'a Fault> {
    let veths: BTreeSet<&str> = new.detours.iter().map(|d| d.host_veth.as_str()).collect();
    active
        .iter()
        .find(|f| f.detours.iter().any(|d| veths.contains(d.host_veth.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec;

    fn desired() -> Desired {
        let parsed = spec::parse(
            "t.toml",
            r#"
name = "t"
[networks.n]
subnet = "10.90.0.0/24"
[services.web]
networks = ["n"]
[services.api]
networks = ["n"]
replicas = 2
expose = [80]
"#,
        )
        .expect("valid");
        crate::desired::resolve(&parsed, &Default::default())
            .expect("resolves")
            .0
    }

    const NOW: Timing = Timing {
        now_ms: 1000,
        lasts: None,
    };

    #[test]
    fn units_read_like_tc() {
        assert_eq!(parse_percent("5%"), Some(50_000));
        assert_eq!(parse_percent("0.5"), Some(5_000));
        assert_eq!(parse_percent("0%"), None);
        assert_eq!(parse_percent("101%"), None);
        assert_eq!(parse_rate("1mbit"), Some(1_000_000));
        assert_eq!(parse_rate("100kbps"), Some(800_000));
        assert_eq!(parse_rate("fast"), None);
        assert_eq!(parse_rate("1"), None);
    }

    #[test]
    fn a_service_target_redirects_every_replica_and_a_link_only_to_the_other_side() {
        let d = desired();
        let delay = Impairment {
            delay_us: 100_000,
            ..Default::default()
        };
        let all = plan_impairment(&d, 1, "api", delay, NOW).unwrap();
        assert_eq!(all.containers().into_iter().collect::<Vec<_>>(), ["api-1", "api-2"]);
        assert!(all.detours.iter().all(|d| d.to.is_empty()));
        let link = plan_impairment(&d, 2, "web->api", delay, NOW).unwrap();
        assert_eq!(link.containers().into_iter().collect::<Vec<_>>(), ["web-1"]);
        let vip = d.service("api").unwrap().vip.unwrap();
        assert!(
            link.detours[0].to.contains(&vip),
            "the VIP: DNAT happens on the host, after the redirect"
        );
        assert_eq!(link.detours[0].to.len(), 3);
        let script: Vec<String> = link.redirect_ops().iter().map(Op::command).collect();
        assert!(script[0].starts_with("tc qdisc add dev plv"), "{script:?}");
        assert!(script[0].contains(&format!("match ip dst {vip}/32 action mirred egress redirect dev plc")));
        assert!(conflict(std::slice::from_ref(&all), &link).is_none());
        let again = plan_impairment(&d, 3, "api-2", delay, NOW).unwrap();
        assert_eq!(conflict(std::slice::from_ref(&all), &again).map(|f| f.id), Some(1));
    }

    #[test]
    fn a_partition_drops_both_ways_in_both_tables_and_undoes_them() {
        let d = desired();
        let p = plan_partition(&d, 4, "web", "api", NOW).unwrap();
        assert_eq!(p.tables.len(), 2);
        let text = p.tables[1].print();
        assert!(text.contains("table bridge plumbchaos4_t"), "{text}");
        assert!(text.contains("hook forward priority -10"), "{text}");
        assert_eq!(text.matches(" drop").count(), 2);
        assert!(p.undo_ops()[0].command().contains("delete table inet plumbchaos4_t"));
        assert!(names::is_chaos_table("plumbchaos4_t", "t"));
        assert!(!names::is_chaos_table("plumb_t", "t"));
    }

    #[test]
    fn bad_requests_say_what_to_do() {
        let d = desired();
        let e = plan_impairment(&d, 1, "nope", Impairment::default(), NOW).unwrap_err();
        assert!(e.message.contains("no impairment"));
        let delay = Impairment {
            delay_us: 1,
            ..Default::default()
        };
        let e = plan_impairment(&d, 1, "web->nope", delay, NOW).unwrap_err();
        assert!(e.message.contains("\"nope\""), "{e:?}");
        let e = plan_partition(&d, 1, "web", "web", NOW).unwrap_err();
        assert!(e.message.contains("itself"));
        let timed = Timing {
            now_ms: 1000,
            lasts: Some(Duration::from_secs(2)),
        };
        let f = plan_partition(&d, 1, "web", "n", timed).unwrap();
        assert_eq!(f.expires_ms, Some(3000));
        assert!(f.is_expired(3000) && !f.is_expired(2999));
    }
}

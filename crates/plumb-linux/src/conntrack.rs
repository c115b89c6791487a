//! The connection tracking table of this network namespace, as `conntrack -L` shows it: each
//! flow's original and reply direction, from which the NAT it went through follows (a reply
//! that comes from elsewhere than the original destination was DNATed; one that goes back to
//! elsewhere than the original source was SNATed). Read from /proc/net/nf_conntrack.

use std::net::Ipv4Addr;

/// One direction of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// 0 for protocols without ports (ICMP).
    pub sport: u16,
    pub dport: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// `tcp`, `udp`, `icmp`...
    pub protocol: String,
    /// TCP's state (`ESTABLISHED`, `TIME_WAIT`...), empty for other protocols.
    pub state: String,
    pub original: Tuple,
    pub reply: Tuple,
    /// Seconds until the kernel forgets the flow.
    pub expires: u64,
    /// No packet came back yet.
    pub unreplied: bool,
}

impl Flow {
    /// Where the original destination was translated to, if it was (DNAT: published ports,
    /// VIPs): the reply's source.
    pub fn dnat(&self) -> Option<(Ipv4Addr, u16)> {
        (self.reply.src != self.original.dst || self.reply.sport != self.original.dport)
            .then_some((self.reply.src, self.reply.sport))
    }

    /// What the original source was translated to, if it was (SNAT, masquerade).
    pub fn snat(&self) -> Option<(Ipv4Addr, u16)> {
        (self.reply.dst != self.original.src || self.reply.dport != self.original.sport)
            .then_some((self.reply.dst, self.reply.dport))
    }

    /// Every address the flow names, in either direction.
    pub fn addresses(&self) -> [Ipv4Addr; 4] {
        [self.original.src, self.original.dst, self.reply.src, self.reply.dst]
    }
}

/// The IPv4 flows of this network namespace (empty when conntrack is not loaded).
pub fn flows() -> Vec<Flow> {
    std::fs::read_to_string("/proc/net/nf_conntrack")
        .map(|t| parse(&t))
        .unwrap_or_default()
}

/// Parses /proc/net/nf_conntrack: one flow per line, `ipv4 2 tcp 6 431999 ESTABLISHED
/// src=.. dst=.. sport=.. dport=.. src=.. dst=.. sport=.. dport=.. [ASSURED] mark=0 ...`.
/// Lines it cannot read are skipped.
pub fn parse(text: &str) -> Vec<Flow> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Flow> {
    let words: Vec<&str> = line.split_whitespace().collect();
    if words.first() != Some(&"ipv4") {
        return None;
    }
    let protocol = words.get(2)?.to_string();
    let expires = words.get(4)?.parse().ok()?;
    let mut rest = &words[5..];
    let state = match rest.first() {
        Some(w) if !w.contains('=') && !w.starts_with('[') => {
            rest = &rest[1..];
            w.to_string()
        }
        _ => String::new(),
    };
    let mut tuples = Vec::new();
    let mut current: [Option<&str>; 4] = [None; 4];
    let mut unreplied = false;
    for word in rest {
        if *word == "[UNREPLIED]" {
            unreplied = true;
            continue;
        }
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        let slot = match key {
            "src" => 0,
            "dst" => 1,
            "sport" => 2,
            "dport" => 3,
            _ => continue,
        };
        if slot == 0 && current[0].is_some() {
            tuples.push(current);
            current = [None; 4];
        }
        current[slot] = Some(value);
    }
    tuples.push(current);
    let tuple = |t: &[Option<&str>; 4]| -> Option<Tuple> {
        Some(Tuple {
            src: t[0]?.parse().ok()?,
            dst: t[1]?.parse().ok()?,
            sport: t[2].map_or(Some(0), |p| p.parse().ok())?,
            dport: t[3].map_or(Some(0), |p| p.parse().ok())?,
        })
    };
    Some(Flow {
        protocol,
        state,
        original: tuple(tuples.first()?)?,
        reply: tuple(tuples.get(1)?)?,
        expires,
        unreplied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
ipv4     2 tcp      6 431999 ESTABLISHED src=203.0.113.2 dst=203.0.113.1 sport=40000 dport=8080 src=10.89.0.2 dst=203.0.113.2 sport=80 dport=40000 [ASSURED] mark=0 zone=0 use=2
ipv4     2 udp      17 28 src=10.89.0.2 dst=203.0.113.2 sport=5353 dport=53 [UNREPLIED] src=203.0.113.2 dst=203.0.113.1 sport=53 dport=5353 mark=0 zone=0 use=2
ipv4     2 icmp     1 29 src=10.89.0.2 dst=10.89.0.3 type=8 code=0 id=7 src=10.89.0.3 dst=10.89.0.2 type=0 code=0 id=7 mark=0 zone=0 use=2
ipv6     10 tcp      6 10 CLOSE src=::1 dst=::1 sport=1 dport=2 src=::1 dst=::1 sport=2 dport=1 mark=0 zone=0 use=2
";

    #[test]
    fn flows_show_their_nat() {
        let flows = parse(SAMPLE);
        assert_eq!(flows.len(), 3, "IPv6 lines are skipped: {flows:?}");
        let published = &flows[0];
        assert_eq!(published.protocol, "tcp");
        assert_eq!(published.state, "ESTABLISHED");
        assert_eq!(published.dnat(), Some(("10.89.0.2".parse().unwrap(), 80)));
        assert_eq!(published.snat(), None);
        let masqueraded = &flows[1];
        assert!(masqueraded.unreplied && masqueraded.state.is_empty());
        assert_eq!(masqueraded.snat(), Some(("203.0.113.1".parse().unwrap(), 5353)));
        assert_eq!(masqueraded.dnat(), None);
        let ping = &flows[2];
        assert_eq!((ping.original.sport, ping.dnat(), ping.snat()), (0, None, None));
    }
}

//! Reading nftables' own packet traces (`nft monitor trace`) into the way a probe took: each
//! hook a packet passed (family, table, chain, the interfaces it came in and went out by),
//! each rule it matched with its verdict and the comment saying what plumb made the rule from,
//! and the chain policies that applied. Pure: the lines come in, a [`Path`] comes out.

use serde::Serialize;

/// One line of `nft monitor trace`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TraceLine {
    /// `trace id ID FAMILY TABLE CHAIN packet: iif "x" oif "y" ...`
    Packet {
        at: Hook,
        iif: Option<String>,
        oif: Option<String>,
    },
    /// `trace id ID FAMILY TABLE CHAIN rule EXPR [comment "..."] (verdict V)`
    Rule {
        at: Hook,
        expr: String,
        comment: Option<String>,
        verdict: String,
    },
    /// `trace id ID FAMILY TABLE CHAIN policy accept|drop`
    Policy { at: Hook, verdict: String },
}

/// Where in the ruleset: family, table, chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hook {
    pub family: String,
    pub table: String,
    pub chain: String,
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.family, self.table, self.chain)
    }
}

/// Parses one line; other lines (and traces of tables `skip` names) give `None`.
pub fn parse_line(line: &str) -> Option<TraceLine> {
    let rest = line.trim().strip_prefix("trace id ")?;
    let mut words = rest.splitn(5, ' ');
    let _id = words.next()?;
    let at = Hook {
        family: words.next()?.to_string(),
        table: words.next()?.to_string(),
        chain: words.next()?.to_string(),
    };
    let what = words.next()?;
    if let Some(packet) = what.strip_prefix("packet: ") {
        return Some(TraceLine::Packet {
            iif: quoted_after(packet, "iif "),
            oif: quoted_after(packet, "oif "),
            at,
        });
    }
    if let Some(policy) = what.strip_prefix("policy ") {
        return Some(TraceLine::Policy {
            at,
            verdict: policy.trim().to_string(),
        });
    }
    let rule = what.strip_prefix("rule ")?;
    let (body, verdict) = rule.rsplit_once(" (verdict ")?;
    let (expr, comment) = match body.find(" comment \"") {
        Some(at) => (
            body[..at].to_string(),
            Some(body[at + " comment \"".len()..].trim_end_matches('"').to_string()),
        ),
        None => (body.to_string(), None),
    };
    // The kernel traces a reject as "drop": the sender got a reset or an ICMP error, which
    // is not what a drop does (silence until a timeout).
    let verdict = match verdict.trim().trim_end_matches(')') {
        "drop" if expr.contains("reject with tcp reset") => "reject (TCP reset)".to_string(),
        "drop" if expr.contains("reject") => "reject (ICMP error)".to_string(),
        other => other.to_string(),
    };
    Some(TraceLine::Rule {
        at,
        expr,
        comment,
        verdict,
    })
}

/// The text inside the quotes after `key` (`iif "eth0"` → `eth0`).
fn quoted_after(text: &str, key: &str) -> Option<String> {
    let start = text.find(&format!("{key}\""))? + key.len() + 1;
    let end = text[start..].find('"')? + start;
    Some(text[start..end].to_string())
}

/// One hook a probe packet passed, and what happened there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub at: Hook,
    pub iif: Option<String>,
    pub oif: Option<String>,
    /// Rules that matched with a verdict that is not `continue`, or with a comment.
    pub rules: Vec<Matched>,
    /// The chain's policy, when no rule decided.
    pub policy: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Matched {
    /// The chain the rule is in: the step's base chain, or a chain it jumped to.
    pub chain: String,
    pub expr: String,
    pub comment: Option<String>,
    pub verdict: String,
}

/// What decided a packet's fate: a rule that dropped or rejected it, or a chain policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub at: Hook,
    pub verdict: String,
    /// The rule (none when the chain's policy decided).
    pub rule: Option<Matched>,
}

/// The steps of every traced packet, in order, leaving out the tables named in `skip` (the
/// tracing table itself).
pub fn steps(lines: &[TraceLine], skip: &[&str]) -> Vec<Step> {
    let mut out: Vec<Step> = Vec::new();
    for line in lines {
        let at = match line {
            TraceLine::Packet { at, .. } | TraceLine::Rule { at, .. } | TraceLine::Policy { at, .. } => at,
        };
        if skip.contains(&at.table.as_str()) {
            continue;
        }
        match line {
            TraceLine::Packet { at, iif, oif } => out.push(Step {
                at: at.clone(),
                iif: iif.clone(),
                oif: oif.clone(),
                rules: Vec::new(),
                policy: None,
            }),
            TraceLine::Rule {
                at,
                expr,
                comment,
                verdict,
            } => {
                // A rule of a chain jumped to belongs to the last base chain of its table.
                let same_table = |s: &&mut Step| s.at.family == at.family && s.at.table == at.table;
                if let Some(step) = out.iter_mut().rev().find(same_table) {
                    step.rules.push(Matched {
                        chain: at.chain.clone(),
                        expr: expr.clone(),
                        comment: comment.clone(),
                        verdict: verdict.clone(),
                    });
                }
            }
            TraceLine::Policy { at, verdict } => {
                // Only a base chain's policy decides (a regular chain just returns).
                if let Some(step) = out.iter_mut().rev().find(|s| &s.at == at) {
                    step.policy = Some(verdict.clone());
                }
            }
        }
    }
    out
}

/// Each distinct step once, in first-seen order, with how often it was taken: retransmitted
/// packets take the same way again and would repeat it.
pub fn collapse(steps: Vec<Step>) -> Vec<(Step, usize)> {
    let mut out: Vec<(Step, usize)> = Vec::new();
    for step in steps {
        match out.iter_mut().find(|(s, _)| *s == step) {
            Some((_, n)) => *n += 1,
            None => out.push((step, 1)),
        }
    }
    out
}

/// The first drop or reject among the steps, if any: what stopped the probe. A connection a
/// service's VIP turned away because the client shares none of its networks is decided by that
/// isolation rule (its `return` sends it on to be refused), not by the refusal it leads to.
pub fn decision(steps: &[Step]) -> Option<Decision> {
    let mut turned_away: Option<&Matched> = None;
    for step in steps {
        for rule in &step.rules {
            let isolation = rule
                .comment
                .as_deref()
                .is_some_and(|c| c.ends_with(crate::firewall::vips::ISOLATION_COMMENT));
            if isolation && rule.verdict == "return" {
                turned_away = Some(rule);
            }
            if is_refusal(&rule.verdict) {
                return Some(Decision {
                    at: step.at.clone(),
                    verdict: rule.verdict.clone(),
                    rule: Some(turned_away.unwrap_or(rule).clone()),
                });
            }
        }
        if let Some(policy) = step.policy.as_deref().filter(|p| is_refusal(p)) {
            return Some(Decision {
                at: step.at.clone(),
                verdict: policy.to_string(),
                rule: None,
            });
        }
    }
    None
}

fn is_refusal(verdict: &str) -> bool {
    verdict.starts_with("drop") || verdict.starts_with("reject")
}

/// The tracing tables of one probe (named `name`, in the inet and bridge families): they mark
/// only the probe's packets, both ways, before anything else sees them (priority -350, ahead
/// of conntrack).
pub fn tables(name: &str, protocol: &str, port: u16, sources: &[std::net::Ipv4Addr]) -> Vec<crate::firewall::Ruleset> {
    use crate::firewall::{Chain, ChainKind, Family, Hook, HookPoint, Policy, Rule, Ruleset, TableId};
    let sources: Vec<String> = sources.iter().map(|a| a.to_string()).collect();
    let sources = sources.join(", ");
    let rule = |direction: &str, address: &str| Rule {
        expr: format!("meta l4proto {protocol} th {direction} {port} ip {address} {{ {sources} }} meta nftrace set 1"),
        comment: "plumb trace: this probe's packets".into(),
    };
    [Family::Inet, Family::Bridge]
        .into_iter()
        .map(|family| Ruleset {
            table: TableId {
                family,
                name: name.to_string(),
            },
            sets: Vec::new(),
            chains: vec![Chain {
                name: "prerouting".into(),
                hook: Some(Hook {
                    kind: ChainKind::Filter,
                    point: HookPoint::Prerouting,
                    priority: -350,
                    policy: Policy::Accept,
                }),
                rules: vec![rule("sport", "saddr"), rule("dport", "daddr")],
            }],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MONITOR: &str = r#"trace id 372d8a22 bridge plumb_trace pre packet: iif "plv31a3f1443c" ether saddr 02:9e:c0:97:4f:34 ip saddr 10.89.50.3 ip daddr 203.0.113.2
trace id 372d8a22 bridge plumb_trace pre rule ip saddr 10.89.50.3 meta nftrace set 1 (verdict continue)
trace id 372d8a22 bridge plumb_tr prerouting packet: iif "plv31a3f1443c" ether saddr 02:9e:c0:97:4f:34 ip saddr 10.89.50.3
trace id 372d8a22 bridge plumb_tr prerouting policy accept 
trace id 71354c74 inet plumb_tr forward packet: iif "plbc36b29c3" oif "up0" ip saddr 10.89.50.3 ip daddr 203.0.113.2
trace id 71354c74 inet plumb_tr forward rule iifname "plbc36b29c3" oifname != "plbc36b29c3" drop comment "db: internal, nothing leaves" (verdict drop)
"#;

    #[test]
    fn a_vip_refusal_after_the_isolation_rule_is_decided_by_isolation_and_called_a_reset() {
        let text = "trace id 1 inet t prerouting packet: iif \"b1\" ip saddr 10.0.0.3\n\
                    trace id 1 inet t prerouting rule ip daddr . meta l4proto . th dport vmap @services (verdict goto svc_redis_tcp_6379)\n\
                    trace id 1 inet t svc_redis_tcp_6379 rule iifname != { \"b3\" } return comment \"redis: only from containers on its networks\" (verdict return)\n\
                    trace id 1 inet t vip_refuse packet: iif \"b1\" ip saddr 10.0.0.3\n\
                    trace id 1 inet t vip_refuse rule iifname { \"b1\" } ip daddr 10.96.0.0/20 meta l4proto tcp reject with tcp reset comment \"virtual IPs: no ready replica or port not exposed, refused\" (verdict drop)\n";
        let lines: Vec<TraceLine> = text.lines().filter_map(parse_line).collect();
        let d = decision(&steps(&lines, &[])).unwrap();
        assert_eq!(d.verdict, "reject (TCP reset)");
        assert_eq!(
            d.rule.unwrap().comment.as_deref(),
            Some("redis: only from containers on its networks")
        );
        // Without the isolation rule, the refusal itself decided (no ready replica).
        let lines: Vec<TraceLine> = text
            .lines()
            .filter(|l| !l.contains("return"))
            .filter_map(parse_line)
            .collect();
        let d = decision(&steps(&lines, &[])).unwrap();
        assert!(d
            .rule
            .unwrap()
            .comment
            .unwrap()
            .starts_with("virtual IPs: no ready replica"));
    }

    #[test]
    fn a_rule_in_a_chain_jumped_to_is_part_of_its_base_chain_step() {
        let text = "trace id 1 bridge t policy_forward packet: iif \"v1\" ip saddr 10.0.0.3\n\
                    trace id 1 bridge t policy_forward rule ip daddr vmap @ingress (verdict goto deny_ingress_api)\n\
                    trace id 1 bridge t deny_ingress_api rule counter packets 0 bytes 0 drop comment \"api: ingress default-deny\" (verdict drop)\n";
        let lines: Vec<TraceLine> = text.lines().filter_map(parse_line).collect();
        let steps = steps(&lines, &[]);
        assert_eq!(steps.len(), 1);
        let d = decision(&steps).unwrap();
        let rule = d.rule.unwrap();
        assert_eq!(
            (rule.chain.as_str(), rule.comment.as_deref()),
            ("deny_ingress_api", Some("api: ingress default-deny"))
        );
    }

    #[test]
    fn a_trace_reads_as_steps_and_the_rule_that_decided() {
        let lines: Vec<TraceLine> = MONITOR.lines().filter_map(parse_line).collect();
        assert_eq!(lines.len(), 6);
        let steps = steps(&lines, &["plumb_trace"]);
        assert_eq!(steps.len(), 2, "{steps:#?}");
        assert_eq!(steps[0].at.to_string(), "bridge plumb_tr prerouting");
        assert_eq!(steps[0].iif.as_deref(), Some("plv31a3f1443c"));
        assert_eq!(steps[0].policy.as_deref(), Some("accept"));
        assert_eq!(
            (steps[1].iif.as_deref(), steps[1].oif.as_deref()),
            (Some("plbc36b29c3"), Some("up0"))
        );
        let d = decision(&steps).unwrap();
        assert_eq!(d.verdict, "drop");
        let twice: Vec<Step> = steps.iter().chain(&steps).cloned().collect();
        let collapsed = collapse(twice);
        assert_eq!(collapsed.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [2, 2]);
        let rule = d.rule.unwrap();
        assert_eq!(rule.comment.as_deref(), Some("db: internal, nothing leaves"));
        assert_eq!(rule.expr, "iifname \"plbc36b29c3\" oifname != \"plbc36b29c3\" drop");
    }

    #[test]
    fn a_chain_policy_can_decide() {
        let lines: Vec<TraceLine> = [
            "trace id 1 inet t input packet: iif \"br\" ip saddr 1.2.3.4",
            "trace id 1 inet t input policy drop",
        ]
        .iter()
        .filter_map(|l| parse_line(l))
        .collect();
        let d = decision(&steps(&lines, &[])).unwrap();
        assert_eq!((d.verdict.as_str(), d.rule), ("drop", None));
        assert_eq!(parse_line("not a trace"), None);
    }
}

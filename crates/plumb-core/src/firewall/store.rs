//! The cluster store is out of the containers' reach: in a cluster, nothing a container sends
//! (TCP, routed to another machine or to this host) reaches the store's endpoints that the
//! agent carried into the desired state (`store_endpoints`, address . port), since whoever
//! writes the store runs code as root on every host. Before any other rule of the stack.

use super::{Hook, HookPoint, Rule, Ruleset, Set};
use crate::desired::Desired;

const ENDPOINTS: &str = "store_endpoints";

pub fn contribute(desired: &Desired, rules: &mut Ruleset) {
    if desired.store.is_empty() {
        return;
    }
    let mut set = Set::new(ENDPOINTS, "ipv4_addr . inet_service", None);
    set.elements = desired
        .store
        .iter()
        .map(|e| (format!("{} . {}", e.ip(), e.port()), None))
        .collect();
    rules.set(set);
    let bridges: Vec<String> = desired.networks.iter().map(|n| format!("\"{}\"", n.bridge)).collect();
    let rule = || {
        Rule::new(
            format!(
                "iifname {{ {} }} ip daddr . tcp dport @{ENDPOINTS} counter drop",
                bridges.join(", ")
            ),
            "containers never reach the cluster store",
        )
    };
    for point in [HookPoint::Forward, HookPoint::Input] {
        let chain = rules.chain(point.as_str(), Some(Hook::filter(point)));
        chain.rules.push(rule());
    }
}

#[cfg(test)]
mod tests {
    use crate::cluster::HostAssignment;
    use crate::desired::resolve_on_host;
    use crate::firewall::rulesets;
    use crate::spec::parse;

    #[test]
    fn a_cluster_hosts_table_drops_containers_traffic_to_the_store_first() {
        let text = "name = \"s\"\n[networks.n]\nsubnet = \"10.9.0.0/24\"\n[services.a]\n";
        let parsed = parse("f", text).unwrap();
        let mut assignment = HostAssignment {
            host: "h1".into(),
            replicas: [("a".to_string(), [1].into())].into(),
            ..Default::default()
        };
        let printed = |a: &HostAssignment| {
            let d = resolve_on_host(&parsed, &Default::default(), a).unwrap().0;
            rulesets(&d)[0].print()
        };
        assert!(!printed(&assignment).contains("store_endpoints"));
        assignment.store = crate::cluster::store_endpoints(&["http://10.77.0.1:2379".into()], |_| vec![]);
        let table = printed(&assignment);
        assert!(
            table.contains("elements = { 10.77.0.1 . 2379, 10.77.0.1 . 2380 }"),
            "{table}"
        );
        for chain in ["forward", "input"] {
            let body = table.split(&format!("chain {chain} {{")).nth(1).unwrap();
            let first = body.lines().nth(2).unwrap();
            assert!(
                first.contains("tcp dport @store_endpoints counter drop"),
                "{chain}: {first}"
            );
        }
    }
}

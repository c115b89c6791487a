//! Compilation and the evaluator, without the kernel.

use super::*;
use crate::desired::resolve;
use crate::spec::parse;

/// Three networks, services on them (mid on two), policies appended by each test.
const STACK: &str = r#"name = "p"
[networks.front]
subnet = "10.0.1.0/24"
[networks.back]
subnet = "10.0.2.0/24"
[networks.db]
subnet = "10.0.3.0/24"
[services.web]
networks = ["front"]
replicas = 2
[services.mid]
networks = ["front", "back"]
[services.store]
networks = ["back", "db"]
"#;

fn desired(policies: &str) -> Desired {
    let text = format!("{STACK}{policies}");
    resolve(&parse("plumb.toml", &text).unwrap(), &Default::default())
        .unwrap()
        .0
}

fn addr(d: &Desired, container: &str, net: &str) -> Ipv4Addr {
    let c = d.container(container).unwrap();
    c.interfaces.iter().find(|i| i.network == net).unwrap().address
}

fn why(c: &Compiled, from: Endpoint, to: Endpoint, proto: Protocol, port: u16) -> Verdict {
    evaluate(
        c,
        &Query {
            from,
            to,
            protocol: proto,
            port,
        },
    )
}

#[test]
fn no_policies_compile_to_nothing_and_allow_everything() {
    let d = desired("");
    let c = compile(&d);
    assert!(c.allow.is_empty() && c.ingress.is_empty() && c.egress.is_empty());
    let v = why(
        &c,
        Endpoint::Addr(addr(&d, "web-1", "front")),
        Endpoint::Addr(addr(&d, "mid-1", "front")),
        Protocol::Tcp,
        80,
    );
    assert!(v.allowed && v.reason == Reason::Unrestricted, "{v:?}");
}

#[test]
fn a_policy_isolates_its_targets_and_allows_only_its_flows() {
    let d = desired("[[policies]]\nfrom = \"web\"\nto = \"mid\"\nports = [5000, \"6000-6010\"]\n");
    let c = compile(&d);
    assert_eq!(c.ingress.keys().collect::<Vec<_>>(), ["mid"]);
    assert_eq!(c.egress.keys().collect::<Vec<_>>(), ["web"]);
    // mid is 10.0.1.2 and 10.0.2.2; web-1 and web-2 are 10.0.1.3-4 (not a prefix: a range).
    let texts: Vec<String> = c.allow.iter().map(Flow::text).collect();
    assert_eq!(
        texts,
        [
            "10.0.1.3-10.0.1.4 . 10.0.1.2 . tcp . 5000",
            "10.0.1.3-10.0.1.4 . 10.0.1.2 . tcp . 6000-6010",
            "10.0.1.3-10.0.1.4 . 10.0.2.2 . tcp . 5000",
            "10.0.1.3-10.0.1.4 . 10.0.2.2 . tcp . 6000-6010",
        ]
    );
    let (web, mid) = (addr(&d, "web-2", "front"), addr(&d, "mid-1", "front"));
    let store = addr(&d, "store-1", "back");
    let v = why(&c, Endpoint::Addr(web), Endpoint::Addr(mid), Protocol::Tcp, 6005);
    assert!(
        v.allowed && matches!(v.reason, Reason::Allowed { policy: Some(0), .. }),
        "{v:?}"
    );
    let v = why(&c, Endpoint::Addr(web), Endpoint::Addr(mid), Protocol::Udp, 5000);
    assert_eq!(
        v.reason,
        Reason::IngressDenied {
            service: "mid".into(),
            policies: vec![0]
        }
    );
    // mid's egress is not restricted; web's is.
    assert!(why(&c, Endpoint::Addr(mid), Endpoint::Addr(store), Protocol::Tcp, 1).allowed);
    let v = why(
        &c,
        Endpoint::Addr(web),
        Endpoint::Host(Some("10.0.1.1".parse().unwrap())),
        Protocol::Tcp,
        22,
    );
    assert!(!v.allowed && v.hook == "input", "{v:?}");
    // ... but plumb's DNS on the gateway always answers.
    let v = why(
        &c,
        Endpoint::Addr(web),
        Endpoint::Host(Some("10.0.1.1".parse().unwrap())),
        Protocol::Udp,
        53,
    );
    assert!(v.allowed && v.reason == Reason::Dns, "{v:?}");
    // The host is not isolated, so it reaches mid only if a policy says so.
    assert!(!why(&c, Endpoint::Host(None), Endpoint::Addr(mid), Protocol::Tcp, 5000).allowed);
}

#[test]
fn network_selectors_outside_host_and_cidrs() {
    let d = desired(
        "[[policies]]\nfrom = [\"outside\", \"host\"]\nto = \"network:back\"\nports = [80]\n\
         [[policies]]\nfrom = \"203.0.113.0/24\"\nto = \"store\"\nprotocol = \"udp\"\nlog = true\n",
    );
    let c = compile(&d);
    // Every service with a container on back: mid and store.
    assert_eq!(c.ingress.keys().collect::<Vec<_>>(), ["mid", "store"]);
    assert_eq!(c.ingress["store"].logged, [1]);
    assert!(c.egress.is_empty());
    let store = addr(&d, "store-1", "db");
    let outside: Ipv4Addr = "198.51.100.7".parse().unwrap();
    let ok = |from, port, proto| why(&c, from, Endpoint::Addr(store), proto, port).allowed;
    assert!(ok(Endpoint::Addr(outside), 80, Protocol::Tcp));
    assert!(!ok(Endpoint::Addr(outside), 81, Protocol::Tcp));
    assert!(ok(Endpoint::Host(None), 80, Protocol::Tcp));
    assert!(ok(Endpoint::Addr("203.0.113.9".parse().unwrap()), 4000, Protocol::Udp));
    assert!(!ok(Endpoint::Addr(outside), 4000, Protocol::Udp));
    // A container of the stack is not "outside".
    assert!(!ok(Endpoint::Addr(addr(&d, "web-1", "front")), 80, Protocol::Tcp));
    // The host's set holds the destinations, no flow overlaps another.
    assert_eq!(c.from_host.len(), 3, "{:?}", c.from_host);
    for (i, a) in c.allow.iter().enumerate() {
        for b in &c.allow[i + 1..] {
            let overlap = a.protocol == b.protocol
                && a.src.lo <= b.src.hi
                && b.src.lo <= a.src.hi
                && a.dst.lo <= b.dst.hi
                && b.dst.lo <= a.dst.hi
                && a.ports.lo <= b.ports.hi
                && b.ports.lo <= a.ports.hi;
            assert!(!overlap, "{} overlaps {}", a.text(), b.text());
        }
    }
}

#[test]
fn overlapping_policies_become_disjoint_elements_and_name_the_first_policy() {
    let d = desired(
        "[[policies]]\nfrom = \"10.0.0.0/8\"\nto = \"mid\"\nports = [\"1-100\"]\n\
         [[policies]]\nfrom = \"10.0.1.0/24\"\nto = \"mid\"\nports = [\"50-200\"]\n",
    );
    let c = compile(&d);
    let mid = addr(&d, "mid-1", "back");
    let web = addr(&d, "web-1", "front");
    let v = why(&c, Endpoint::Addr(web), Endpoint::Addr(mid), Protocol::Tcp, 60);
    assert!(matches!(v.reason, Reason::Allowed { policy: Some(0), .. }), "{v:?}");
    let v = why(&c, Endpoint::Addr(web), Endpoint::Addr(mid), Protocol::Tcp, 150);
    assert!(matches!(v.reason, Reason::Allowed { policy: Some(1), .. }), "{v:?}");
    let v = why(
        &c,
        Endpoint::Addr("10.9.9.9".parse().unwrap()),
        Endpoint::Addr(mid),
        Protocol::Tcp,
        150,
    );
    assert!(!v.allowed);
    assert_eq!(d.policies[0].source, "plumb.toml:15");
    assert_eq!(d.policies[1].source, "plumb.toml:19");
}

#[test]
fn ten_thousand_elements_compile_to_the_same_verdicts_as_their_summary() {
    // 5,000 /30s, every other one, times 2 ports: 10,000 elements.
    let cidrs: Vec<String> = (0..5000u32)
        .map(|i| {
            format!(
                "\"{}/30\"",
                Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)) + i * 8)
            )
        })
        .collect();
    let big = desired(&format!(
        "[[policies]]\nfrom = [\"web\", {}]\nto = \"mid\"\nports = [80, 443]\n",
        cidrs.join(", ")
    ));
    let small = desired("[[policies]]\nfrom = \"web\"\nto = \"mid\"\nports = [80, 443]\n");
    let (cb, cs) = (compile(&big), compile(&small));
    assert!(cb.allow.len() >= 10_000, "{}", cb.allow.len());
    let mid = addr(&big, "mid-1", "front");
    for from in [
        addr(&big, "web-1", "front"),
        addr(&big, "mid-1", "back"),
        "10.0.2.9".parse().unwrap(),
    ] {
        for port in [80, 443, 8080] {
            let q = |c: &Compiled| why(c, Endpoint::Addr(from), Endpoint::Addr(mid), Protocol::Tcp, port).allowed;
            assert_eq!(q(&cb), q(&cs), "{from} {port}");
        }
    }
    let in_cidr = why(
        &cb,
        Endpoint::Addr("172.16.0.9".parse().unwrap()),
        Endpoint::Addr(mid),
        Protocol::Tcp,
        443,
    );
    assert!(in_cidr.allowed);
    let between = why(
        &cb,
        Endpoint::Addr("172.16.0.5".parse().unwrap()),
        Endpoint::Addr(mid),
        Protocol::Tcp,
        443,
    );
    assert!(!between.allowed);
}

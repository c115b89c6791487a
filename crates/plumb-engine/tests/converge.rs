//! Without root, over the fake kernel: for creation, edits and teardown, "execute the plan,
//! observe, diff" gives an empty plan, and teardown leaves nothing.

use std::collections::BTreeMap;

use plumb_core::desired::resolve;
use plumb_core::spec::parse;
use plumb_core::{plan, At, Desired, Op, Plan, What};

use plumb_engine::fake::FakeKernel;
use plumb_engine::state::StackState;
use plumb_engine::{execute, observe, OnError};

const BASE: &str = r#"
name = "s"
[networks.front]
subnet = "10.1.0.0/24"
[networks.back]
subnet = "10.2.0.0/24"
internal = true
[services.web]
networks = ["front", "back"]
ports = ["8080:80"]
[services.api]
networks = ["back"]
replicas = 2
"#;

/// One `up` or `down` as the binary does it, with the state kept in memory.
struct Host {
    kernel: FakeKernel,
    state: Option<StackState>,
    /// The nftables generation the last observation read the tables at.
    observed_generation: Option<u32>,
}

impl Host {
    fn new() -> Host {
        Host {
            kernel: FakeKernel::default(),
            state: None,
            observed_generation: None,
        }
    }

    fn plan(&mut self, desired: Option<&Desired>) -> Plan {
        let observed = observe(
            &mut self.kernel,
            "s",
            desired,
            self.state.as_ref(),
            &BTreeMap::new(),
            None,
        )
        .unwrap();
        self.observed_generation = observed.nft_generation;
        plan::diff("s", desired, &observed.actual)
    }

    fn apply(&mut self, text: Option<&str>) -> Plan {
        let desired = text.map(|t| {
            let leases = self.state.as_ref().map(|s| s.leases.clone()).unwrap_or_default();
            let (d, leases) = resolve(&parse("f", t).unwrap(), &leases).unwrap();
            let st = self.state.get_or_insert_with(StackState::default);
            st.stack = "s".into();
            st.leases = leases;
            st.namespaces.extend(d.containers.iter().map(|c| c.netns.clone()));
            st.networks.extend(d.networks.iter().map(|n| n.name.clone()));
            d
        });
        let plan = self.plan(desired.as_ref());
        let mode = if desired.is_some() {
            OnError::Stop
        } else {
            OnError::Continue
        };
        let outcome = execute(&mut self.kernel, &plan, mode, &|_, _, _| {});
        assert!(outcome.ok(), "{:?}", outcome.errors);
        match &desired {
            Some(d) => {
                let st = self.state.as_mut().unwrap();
                st.record_firewall(&outcome.firewall);
                st.record_generation(self.observed_generation, &outcome);
                st.namespaces = d.containers.iter().map(|c| c.netns.clone()).collect();
                st.networks = d.networks.iter().map(|n| n.name.clone()).collect();
            }
            None => self.state = None,
        }
        let again = self.plan(desired.as_ref());
        assert!(again.is_empty(), "not converged: {:#?}", again.steps);
        plan
    }
}

/// The plan's firewall changes only add and delete set elements (no table replaced).
fn only_element_updates(plan: &Plan) -> bool {
    plan.ops().all(|op| match op {
        Op::Nft { changes } => changes
            .iter()
            .all(|c| matches!(c, plumb_core::firewall::NftChange::Elements { .. })),
        _ => true,
    })
}

fn kinds(plan: &Plan) -> Vec<String> {
    plan.steps
        .iter()
        .map(|s| {
            serde_json::to_value(&s.what).unwrap()["step"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

#[test]
fn create_converges() {
    let mut host = Host::new();
    let plan = host.apply(Some(BASE));
    assert_eq!(plan.count(|w| matches!(w, What::CreateContainer { .. })), 3);
    let w = host.kernel.world();
    assert_eq!(w.namespace_names(), ["s-api-1", "s-api-2", "s-web-1"]);
    assert_eq!(w.table_names(), ["inet plumb_s", "bridge plumb_s"]);
}

#[test]
fn adding_and_removing_a_service_converges() {
    let mut host = Host::new();
    host.apply(Some(BASE));
    let with_cache = format!("{BASE}[services.cache]\nnetworks = [\"back\"]\n");
    let plan = host.apply(Some(&with_cache));
    // The new container's port, MAC and address join the anti-spoofing sets: elements only.
    assert_eq!(kinds(&plan), ["apply_firewall", "create_container"]);
    assert!(only_element_updates(&plan));
    let plan = host.apply(Some(BASE));
    assert_eq!(
        kinds(&plan),
        ["stop_processes", "remove_links", "delete_container", "apply_firewall"]
    );
    assert!(only_element_updates(&plan));
    assert_eq!(host.kernel.world().namespace_names(), ["s-api-1", "s-api-2", "s-web-1"]);
}

#[test]
fn changing_a_service_rebuilds_only_it() {
    let mut host = Host::new();
    host.apply(Some(BASE));
    let plan = host.apply(Some(&BASE.replace("replicas = 2", "replicas = 3")));
    assert_eq!(kinds(&plan), ["apply_firewall", "create_container"]);
    let moved = BASE.replace("networks = [\"front\", \"back\"]", "networks = [\"front\"]");
    let plan = host.apply(Some(&moved));
    assert!(plan
        .steps
        .iter()
        .any(|s| matches!(&s.what, What::CreateContainer { container, .. } if container == "web-1")));
    assert_eq!(plan.count(|w| matches!(w, What::CreateContainer { .. })), 1);
}

#[test]
fn changing_a_port_updates_the_table_in_place() {
    let mut host = Host::new();
    host.apply(Some(BASE));
    let plan = host.apply(Some(&BASE.replace("8080:80", "9090:80")));
    assert_eq!(kinds(&plan), ["apply_firewall"]);
    assert!(matches!(
        &plan.steps[0].ops[..],
        [Op::Nft { changes }] if matches!(changes[..], [plumb_core::firewall::NftChange::Update { .. }])
    ));
}

#[test]
fn a_table_changed_by_someone_else_is_replaced() {
    let mut host = Host::new();
    host.apply(Some(BASE));
    host.kernel
        .world()
        .tamper_with_table(&plumb_core::firewall::table_ids("s")[0]);
    let plan = host.apply(Some(BASE));
    assert!(matches!(
        &plan.steps[0].ops[..],
        [Op::Nft { changes }] if matches!(changes[..], [plumb_core::firewall::NftChange::Replace { .. }])
    ));
}

#[test]
fn a_rule_edited_behind_plumbs_back_is_noticed_once_the_table_is_fingerprinted() {
    let mut host = Host::new();
    let d = resolve(&parse("f", BASE).unwrap(), &Default::default()).unwrap().0;
    host.apply(Some(BASE));
    // The first observation that lists the tables after applying (one not trusting the
    // generation: another transaction came between) recognises them by shape and
    // fingerprints them.
    host.state.as_mut().unwrap().nft_generation = None;
    let seen = observe(
        &mut host.kernel,
        "s",
        Some(&d),
        host.state.as_ref(),
        &BTreeMap::new(),
        None,
    )
    .unwrap();
    assert_eq!(seen.fingerprints.len(), 2);
    host.state.as_mut().unwrap().record_fingerprints(&seen.fingerprints);
    // Someone edits a rule, keeping its comment: the shape is the same, the fingerprint is not.
    let inet = plumb_core::firewall::table_ids("s")[0].clone();
    host.kernel.world().edit_a_rule(&inet);
    let plan = host.apply(Some(BASE));
    assert!(matches!(
        &plan.steps[0].ops[..],
        [Op::Nft { changes }] if matches!(changes[..], [plumb_core::firewall::NftChange::Replace { .. }])
    ));
}

#[test]
fn tables_are_listed_only_when_a_transaction_came_between() {
    let mut host = Host::new();
    host.apply(Some(BASE));
    let kernel = host.kernel.clone();
    let listings = || kernel.world().nft_listings;
    // Its own transaction was the only one: the next `up` trusts its record, lists nothing.
    let before = listings();
    assert!(host.apply(Some(BASE)).is_empty());
    assert_eq!(listings(), before);
    // An element edit: applied, and still nothing listed before or after it.
    let with_cache = format!("{BASE}[services.cache]\nnetworks = [\"back\"]\n");
    assert!(only_element_updates(&host.apply(Some(&with_cache))));
    assert!(host.apply(Some(&with_cache)).is_empty());
    assert_eq!(listings(), before);
    // A transaction by anyone else (here: a table emptied) moves the generation: listed again,
    // and the change is seen.
    let inet = plumb_core::firewall::table_ids("s")[0].clone();
    host.kernel.world().tamper_with_table(&inet);
    let plan = host.apply(Some(&with_cache));
    assert!(listings() > before);
    assert!(matches!(
        &plan.steps[0].ops[..],
        [Op::Nft { changes }] if matches!(changes[..], [plumb_core::firewall::NftChange::Replace { .. }])
    ));
    // A plan that fails records no generation: the next observation lists.
    let st = host.state.as_mut().unwrap();
    let failed = plumb_engine::Outcome {
        nft_commits: 1,
        nft_generation: Some(1000),
        errors: vec![plumb_core::kernel::KernelError {
            what: "x".into(),
            detail: "y".into(),
            errno: None,
        }],
        ..Default::default()
    };
    st.record_generation(Some(999), &failed);
    assert_eq!(st.nft_generation, None);
    // Two transactions seen where the plan made one: someone else's came between.
    let raced = plumb_engine::Outcome {
        nft_commits: 1,
        nft_generation: Some(1001),
        ..Default::default()
    };
    st.record_generation(Some(999), &raced);
    assert_eq!(st.nft_generation, None);
}

#[test]
fn down_converges_and_leaves_nothing() {
    let mut host = Host::new();
    host.apply(Some(BASE));
    let plan = host.apply(None);
    assert_eq!(
        kinds(&plan),
        [
            "stop_processes",
            "delete_firewall",
            "remove_links",
            "delete_container",
            "delete_container",
            "delete_container"
        ]
    );
    let w = host.kernel.world();
    assert!(w.namespace_names().is_empty() && w.link_names().is_empty() && w.table_names().is_empty());
}

/// Someone else's link in the interface group the teardown deletes in one request: as on the
/// real kernel, only the stack's links go.
#[test]
fn down_spares_a_foreign_link_in_the_stacks_link_group() {
    let mut host = Host::new();
    host.apply(Some(BASE));
    let plan = host.plan(None);
    let group = plan
        .steps
        .iter()
        .flat_map(|s| &s.ops)
        .find_map(|op| match op {
            Op::LinkDelGroup { group, .. } => Some(*group),
            _ => None,
        })
        .expect("a group delete");
    host.kernel.world().add_foreign_bridge("foreign0", group);
    let outcome = execute(&mut host.kernel, &plan, OnError::Continue, &|_, _, _| {});
    assert!(outcome.ok(), "{:?}", outcome.errors);
    let w = host.kernel.world();
    assert_eq!(w.link_names(), ["foreign0"]);
    assert!(w.namespace_names().is_empty() && w.table_names().is_empty());
}

/// The MTU of a bridge, or of either end of a veth, changed behind plumb's back is noticed and
/// set back, without rebuilding anything.
#[test]
fn a_changed_link_mtu_is_set_back_in_place() {
    let mut host = Host::new();
    host.apply(Some(BASE));
    let bridge = host
        .kernel
        .world()
        .link_names()
        .into_iter()
        .find(|l| l.starts_with("plb"))
        .unwrap();
    let veth = host
        .kernel
        .world()
        .link_names()
        .into_iter()
        .find(|l| l.starts_with("plv"))
        .unwrap();
    host.kernel.world().set_mtu(&At::Host, &bridge, 1400);
    host.kernel.world().set_mtu(&At::Host, &veth, 9000);
    host.kernel.world().set_mtu(&At::Netns("s-api-1".into()), "eth0", 1280);
    let plan = host.apply(Some(BASE));
    assert_eq!(kinds(&plan), ["set_mtu"]);
    assert_eq!(plan.ops().count(), 3);
}

/// An `up` that stops at a failure before its firewall step reports no table as applied: the
/// record must not claim rules that never ran.
#[test]
fn after_a_stop_nft_changes_that_never_ran_are_not_recorded() {
    let mut host = Host::new();
    let (desired, _) = resolve(&parse("f", BASE).unwrap(), &Default::default()).unwrap();
    let mut plan = host.plan(Some(&desired));
    let firewall = plan
        .steps
        .iter()
        .position(|s| matches!(s.what, What::ApplyFirewall { .. }))
        .expect("a firewall step");
    // An operation that fails (a route outside any namespace) in a step before it.
    plan.steps[firewall - 1].ops.insert(
        0,
        Op::DefaultRoute {
            at: At::Host,
            gateway: [10, 0, 0, 1].into(),
        },
    );
    let outcome = execute(&mut host.kernel, &plan, OnError::Stop, &|_, _, _| {});
    assert_eq!(outcome.errors.len(), 1);
    assert!(
        host.kernel.world().table_names().is_empty(),
        "the firewall step never ran"
    );
    let recorded: Vec<String> = outcome.firewall.iter().map(|(t, _)| t.to_string()).collect();
    assert!(recorded.is_empty(), "recorded as applied: {recorded:?}");
}

#[test]
fn teardown_goes_on_past_a_failure_and_reports_it() {
    let mut host = Host::new();
    host.apply(Some(BASE));
    let mut plan = host.plan(None);
    // An operation that fails (a route outside any namespace) in the middle of the teardown.
    plan.steps[1].ops.insert(
        0,
        Op::DefaultRoute {
            at: plumb_core::At::Host,
            gateway: [10, 0, 0, 1].into(),
        },
    );
    let outcome = execute(&mut host.kernel, &plan, OnError::Continue, &|_, _, _| {});
    assert_eq!(outcome.errors.len(), 1);
    let w = host.kernel.world();
    assert!(w.namespace_names().is_empty() && w.link_names().is_empty() && w.table_names().is_empty());
}

/// An `up` killed right after it created a bridge (its alias, the kernel's mark of plumb's
/// objects, comes in the next request): its record names the network, so `down` removes the
/// unmarked bridge, and so does an `up` of a file without that network.
#[test]
fn a_bridge_made_by_a_killed_up_before_its_alias_is_removed() {
    for then in [None, Some("name = \"s\"\n[networks.other]\nsubnet = \"10.3.0.0/24\"\n")] {
        let mut host = Host::new();
        let (desired, leases) = resolve(&parse("f", BASE).unwrap(), &Default::default()).unwrap();
        // What `up` does first: record its intent, then apply its plan, here killed after one op.
        host.state = Some(StackState {
            stack: "s".into(),
            leases,
            namespaces: desired.containers.iter().map(|c| c.netns.clone()).collect(),
            networks: desired.networks.iter().map(|n| n.name.clone()).collect(),
            ..StackState::default()
        });
        let plan = host.plan(Some(&desired));
        let create = plan
            .ops()
            .find(|op| matches!(op, Op::BridgeAdd { .. }))
            .expect("a bridge is made")
            .clone();
        plumb_core::kernel::Kernel::apply(&mut host.kernel, &create).unwrap();
        assert_eq!(host.kernel.world().link_names().len(), 1);
        host.apply(then);
        let w = host.kernel.world();
        let wanted: Vec<String> = then.map_or(vec![], |_| vec![plumb_core::names::bridge("s", "other")]);
        assert_eq!(w.link_names(), wanted, "then {then:?}");
    }
}

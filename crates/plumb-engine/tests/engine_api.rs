//! The engine's API as its callers drive it (CLI `up`/`down`/`scale`, the cluster agent),
//! without root: the fake kernel and a state directory in a temporary folder. Up, edit,
//! scale, down, the host checks (routes, listeners, addresses) and refusals that leave the
//! kernel untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use plumb_core::cluster::{HostAssignment, OverlayAssignment};
use plumb_core::kernel::Transport;
use plumb_core::spec::{parse, parse_scaled, Parsed};
use plumb_core::{Desired, What};
use plumb_engine::fake::FakeKernel;
use plumb_engine::state::StateDir;
use plumb_engine::{Engine, Up};

const STACK: &str = r#"
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

struct Host {
    kernel: FakeKernel,
    state: StateDir,
    dir: PathBuf,
}

impl Host {
    fn new(name: &str) -> Host {
        let dir = std::env::temp_dir().join(format!("plumb-engine-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Host {
            kernel: FakeKernel::default(),
            state: StateDir::new(dir.join("state")),
            dir,
        }
    }

    fn request<'a>(&self, parsed: &'a Parsed, assignment: Option<&'a HostAssignment>) -> Up<'a> {
        Up {
            parsed,
            base: self.dir.clone(),
            file: None,
            assignment,
            unready: &|_: &Desired| BTreeSet::new(),
        }
    }

    /// `up` as the CLI does it: plan, then apply. Returns the plan's steps.
    fn up(&mut self, parsed: &Parsed) -> plumb_engine::Result<Vec<What>> {
        let mut kernel = self.kernel.clone();
        let mut engine = Engine::open(&mut kernel, &self.state)?;
        let change = engine.plan_up(&self.request(parsed, None))?;
        let change = engine.apply(change, &mut |_, _| Ok(()), &|_, _, _| {})?;
        Ok(change.plan.steps.into_iter().map(|s| s.what).collect())
    }

    fn plan_up(&mut self, parsed: &Parsed, assignment: Option<&HostAssignment>) -> plumb_engine::Result<Vec<What>> {
        let mut kernel = self.kernel.clone();
        let mut engine = Engine::open(&mut kernel, &self.state)?;
        let change = engine.plan_up(&self.request(parsed, assignment))?;
        Ok(change.plan.steps.into_iter().map(|s| s.what).collect())
    }

    fn down(&mut self, stack: &str) -> plumb_engine::Result<plumb_engine::Removed> {
        let mut kernel = self.kernel.clone();
        let mut engine = Engine::open(&mut kernel, &self.state)?;
        let teardown = engine.plan_down(stack)?;
        engine.down(teardown, &|_, _, _| {})
    }

    fn namespaces(&self) -> usize {
        use plumb_core::kernel::Kernel;
        self.kernel.clone().namespaces().unwrap().len()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn created(steps: &[What]) -> usize {
    steps
        .iter()
        .filter(|w| matches!(w, What::CreateContainer { .. }))
        .count()
}

fn removed(steps: &[What]) -> usize {
    steps
        .iter()
        .filter(|w| matches!(w, What::DeleteContainer { .. }))
        .count()
}

#[test]
fn up_edit_scale_and_down_through_the_engine() {
    let mut host = Host::new("cycle");
    let parsed = parse("s.toml", STACK).unwrap();
    let steps = host.up(&parsed).unwrap();
    assert_eq!(created(&steps), 3, "{steps:?}");
    assert_eq!(host.namespaces(), 3);
    assert!(host.up(&parsed).unwrap().is_empty(), "a second up changes nothing");
    let record = host.state.load("s").unwrap().unwrap();
    assert_eq!(record.namespaces.len(), 3);

    // An edit: api loses a replica, web stays as it is.
    let edited = parse("s.toml", &STACK.replace("replicas = 2", "replicas = 1")).unwrap();
    let steps = host.up(&edited).unwrap();
    assert_eq!((created(&steps), removed(&steps)), (0, 1), "{steps:?}");
    assert_eq!(host.namespaces(), 2);

    // Scale: the same file with other counts, checked as the file's own.
    let scaled = parse_scaled("s.toml", STACK, &BTreeMap::from([("api".to_string(), 4)])).unwrap();
    let steps = host.up(&scaled).unwrap();
    assert_eq!((created(&steps), removed(&steps)), (3, 0), "{steps:?}");
    assert_eq!(host.namespaces(), 5);
    let refused = parse_scaled("s.toml", STACK, &BTreeMap::from([("nope".to_string(), 2)])).unwrap_err();
    assert!(refused
        .render(plumb_core::diag::Style::Plain)
        .contains("no service \"nope\""));

    let gone = host.down("s").unwrap();
    assert_eq!((gone.containers, gone.networks), (5, 2));
    assert_eq!(host.namespaces(), 0);
    assert!(
        host.state.load("s").unwrap().is_none(),
        "the record goes with the stack"
    );
    assert_eq!(host.kernel.world().table_count(), 0, "no nft table is left");
}

/// plumb turned forwarding on: the last stack's `down` turns it off as a step of its plan
/// (what `--dry-run` shows), an earlier one does not.
#[test]
fn the_last_down_plans_forwarding_off() {
    let mut host = Host::new("forwarding");
    let a = parse("a.toml", STACK).unwrap();
    let b = parse(
        "b.toml",
        "name = \"b\"\n[networks.n]\nsubnet = \"10.3.0.0/24\"\n[services.x]\n",
    )
    .unwrap();
    assert!(host.up(&a).unwrap().contains(&What::EnableForwarding));
    host.up(&b).unwrap();
    assert!(host.kernel.world().ip_forward);
    let plan_down = |host: &mut Host, stack: &str| {
        let mut kernel = host.kernel.clone();
        let mut engine = Engine::open(&mut kernel, &host.state).unwrap();
        let steps: Vec<What> = engine
            .plan_down(stack)
            .unwrap()
            .plan
            .steps
            .into_iter()
            .map(|s| s.what)
            .collect();
        steps
    };
    assert!(
        !plan_down(&mut host, "s").contains(&What::DisableForwarding),
        "b still needs it"
    );
    host.down("s").unwrap();
    assert!(host.kernel.world().ip_forward);
    assert_eq!(plan_down(&mut host, "b").last(), Some(&What::DisableForwarding));
    assert!(host.kernel.world().ip_forward, "planning changes nothing");
    host.down("b").unwrap();
    assert!(!host.kernel.world().ip_forward, "left as plumb found it");
    assert!(!plumb_engine::state::StateStore::forwarding_enabled_by_plumb(&host.state).unwrap());
}

#[test]
fn a_host_route_over_the_subnet_is_refused_before_the_kernel_is_touched() {
    let mut host = Host::new("route");
    host.kernel
        .world()
        .routes
        .push(("10.2.0.0/16".parse().unwrap(), "eth7".to_string()));
    let parsed = parse("s.toml", STACK).unwrap();
    let e = host.up(&parsed).unwrap_err();
    assert!(e.input, "an input error (exit 2)");
    assert!(
        e.message.contains("overlaps the host's route to 10.2.0.0/16 via eth7"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("s.toml:"),
        "it names the file and line: {}",
        e.message
    );
    assert!(
        host.kernel.world().log.is_empty(),
        "nothing was done: {:?}",
        host.kernel.world().log
    );
    // A route on plumb's own bridge is not a clash.
    host.kernel.world().routes[0].1 = format!("{}x", plumb_core::names::BRIDGE_PREFIX);
    assert!(host.up(&parsed).is_ok());
}

#[test]
fn a_host_listener_on_a_published_port_is_refused_then_only_warned_about() {
    let mut host = Host::new("listener");
    let listener = (
        Transport::Tcp,
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        8080,
        (42, "python3".to_string()),
    );
    host.kernel.world().listening.push(listener.clone());
    let parsed = parse("s.toml", STACK).unwrap();
    let e = host.up(&parsed).unwrap_err();
    assert!(
        e.message
            .contains("host port 8080/tcp is in use: python3 (pid 42) listens on 0.0.0.0:8080"),
        "{}",
        e.message
    );
    assert!(host.kernel.world().log.is_empty());
    // Once the stack holds the port, a listener that came later is said, not refused.
    host.kernel.world().listening.clear();
    host.up(&parsed).unwrap();
    host.kernel.world().listening.push(listener);
    let mut kernel = host.kernel.clone();
    let mut engine = Engine::open(&mut kernel, &host.state).unwrap();
    let change = engine.plan_up(&host.request(&parsed, None)).unwrap();
    assert!(change.plan.is_empty());
    assert_eq!(change.warnings.len(), 1, "{:?}", change.warnings);
    assert!(change.warnings[0].contains("its clients reach the container instead"));
}

#[test]
fn a_port_on_an_address_the_host_lacks_is_refused() {
    let mut host = Host::new("address");
    host.kernel.world().addresses.push(Ipv4Addr::new(192, 0, 2, 1));
    let parsed = parse("s.toml", &STACK.replace("\"8080:80\"", "\"192.0.2.9:8080:80\"")).unwrap();
    let e = host.up(&parsed).unwrap_err();
    assert!(
        e.message.contains("192.0.2.9 is not an address of this host"),
        "{}",
        e.message
    );
    assert!(
        e.message.contains("192.0.2.1"),
        "it lists the host's addresses: {}",
        e.message
    );
}

#[test]
fn two_stacks_cannot_share_a_subnet() {
    let mut host = Host::new("two");
    host.up(&parse("s.toml", STACK).unwrap()).unwrap();
    let other = STACK
        .replace("name = \"s\"", "name = \"t\"")
        .replace("8080:80", "8081:80");
    let e = host.up(&parse("t.toml", &other).unwrap()).unwrap_err();
    assert!(e.message.contains("overlaps network \"front\""), "{}", e.message);
    assert_eq!(host.namespaces(), 3, "stack t made nothing");
}

#[test]
fn an_agent_brings_up_only_its_assignment() {
    let mut host = Host::new("agent");
    let text = STACK.replace("replicas = 2", "replicas = 3");
    let parsed = parse("s.toml", &text).unwrap();
    let assignment = HostAssignment {
        host: "h1".into(),
        replicas: BTreeMap::from([("api".to_string(), BTreeSet::from([2]))]),
        overlays: BTreeMap::<String, OverlayAssignment>::new(),
        remote: Default::default(),
        base: None,
        store: Vec::new(),
    };
    let steps = host.plan_up(&parsed, Some(&assignment)).unwrap();
    let containers: Vec<&What> = steps
        .iter()
        .filter(|w| matches!(w, What::CreateContainer { .. }))
        .collect();
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert!(matches!(containers[0], What::CreateContainer { replica: 2, .. }));
}

#[test]
fn a_planner_plans_from_scratch_and_cannot_apply() {
    let host = Host::new("planner");
    let parsed = parse("s.toml", STACK).unwrap();
    let mut engine = Engine::planner(&host.state);
    let change = engine.plan_up(&host.request(&parsed, None)).unwrap();
    assert!(!change.observed);
    assert_eq!(
        created(&change.plan.steps.iter().map(|s| s.what.clone()).collect::<Vec<_>>()),
        3
    );
    let e = engine.apply(change, &mut |_, _| Ok(()), &|_, _, _| {}).unwrap_err();
    assert!(e.message.contains("only plans"), "{}", e.message);
}

/// A process that looks like a chaos relay to [`plumb_engine::engine::is_relay`].
fn fake_relay() -> std::process::Child {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("sleep")
        .arg0("chaos-relay")
        .arg("60")
        .spawn()
        .unwrap()
}

fn fault_on_web(host: &Host, id: u32, relay: u32, expires_ms: Option<u64>) -> plumb_core::chaos::Fault {
    let record = host.state.load("s").unwrap().unwrap();
    let web = record.desired.unwrap();
    let web = web.container("web-1").unwrap();
    let i = &web.interfaces[0];
    plumb_core::chaos::Fault {
        id,
        stack: "s".into(),
        target: "web".into(),
        kind: plumb_core::chaos::FaultKind::Partition,
        started_ms: 1,
        expires_ms,
        relay_pid: Some(relay),
        detours: vec![plumb_core::chaos::Detour {
            container: "web-1".into(),
            ifname: i.name.clone(),
            host_veth: i.host_veth.clone(),
            bridge: i.bridge.clone(),
            tap: format!("pltap{id}"),
            to: Vec::new(),
        }],
        tables: Vec::new(),
        origin: "test".into(),
    }
}

#[test]
fn an_up_that_rebuilds_a_container_re_makes_its_active_faults_redirects() {
    use plumb_core::kernel::Kernel;
    let mut host = Host::new("faults");
    let parsed = parse("s.toml", STACK).unwrap();
    host.up(&parsed).unwrap();
    let mut relay = fake_relay();
    let fault = fault_on_web(&host, 1, relay.id(), None);
    let veth = fault.detours[0].host_veth.clone();
    let mut kernel = host.kernel.clone();
    for op in fault.redirect_ops() {
        kernel.apply(&op).unwrap();
    }
    let mut record = host.state.load("s").unwrap().unwrap();
    record.faults.faults.push(fault);
    host.state.save(&record).unwrap();
    assert_eq!(host.kernel.world().redirect(&veth), Some("pltap1"));

    // web moves off `back`: web-1 is rebuilt, its veths made anew (without the redirect).
    let moved = parse(
        "s.toml",
        &STACK.replace("networks = [\"front\", \"back\"]", "networks = [\"front\"]"),
    )
    .unwrap();
    let steps = host.up(&moved).unwrap();
    assert!(
        steps.iter().any(|w| matches!(w, What::RestoreFault { fault: 1, .. })),
        "{steps:?}"
    );
    assert_eq!(
        host.kernel.world().redirect(&veth),
        Some("pltap1"),
        "the fault still redirects web-1's frames"
    );
    assert_eq!(host.state.load("s").unwrap().unwrap().faults.faults.len(), 1);

    // An up that rebuilds nothing touches no fault.
    assert!(host.up(&moved).unwrap().is_empty());

    // Once its relay is gone, the next up ends the fault instead of re-making it.
    relay.kill().unwrap();
    relay.wait().unwrap();
    let mut kernel = host.kernel.clone();
    let mut engine = Engine::open(&mut kernel, &host.state).unwrap();
    let change = engine.plan_up(&host.request(&moved, None)).unwrap();
    assert_eq!(change.ending.len(), 1, "the fault whose relay died ends");
    engine.apply(change, &mut |_, _| Ok(()), &|_, _, _| {}).unwrap();
    assert!(host.state.load("s").unwrap().unwrap().faults.faults.is_empty());
}

#[test]
fn an_expired_fault_ends_at_the_next_up() {
    let mut host = Host::new("expired");
    let parsed = parse("s.toml", STACK).unwrap();
    host.up(&parsed).unwrap();
    let mut relay = fake_relay();
    let mut record = host.state.load("s").unwrap().unwrap();
    record.faults.faults.push(fault_on_web(&host, 1, relay.id(), Some(2)));
    record.faults.faults.push(fault_on_web(&host, 2, relay.id(), None));
    host.state.save(&record).unwrap();
    let mut kernel = host.kernel.clone();
    let mut engine = Engine::open(&mut kernel, &host.state).unwrap();
    let change = engine.plan_up(&host.request(&parsed, None)).unwrap();
    let ending: Vec<u32> = change.ending.iter().map(|f| f.id).collect();
    assert_eq!(ending, [1]);
    let mut ended = Vec::new();
    engine
        .apply(
            change,
            &mut |c, _| {
                ended.extend(c.ending.iter().map(|f| f.id));
                Ok(())
            },
            &|_, _, _| {},
        )
        .unwrap();
    assert_eq!(ended, [1], "the caller was given the fault to end");
    let left: Vec<u32> = host
        .state
        .load("s")
        .unwrap()
        .unwrap()
        .faults
        .faults
        .iter()
        .map(|f| f.id)
        .collect();
    assert_eq!(left, [2]);
    relay.kill().unwrap();
    relay.wait().unwrap();
}

#[test]
fn the_state_lock_is_one_for_every_change() {
    let host = Host::new("lock");
    let mut kernel = host.kernel.clone();
    let engine = Engine::open(&mut kernel, &host.state).unwrap();
    assert!(
        host.state.try_lock().unwrap().is_none(),
        "chaos and the supervisor wait while an engine is open"
    );
    drop(engine);
    assert!(host.state.try_lock().unwrap().is_some());
}

const CLUSTER: &str = r#"
name = "c"
[networks.o]
subnet = "10.60.0.0/16"
driver = "overlay"
[services.api]
networks = ["o"]
replicas = 4
"#;

/// One cluster host as the agent drives it: its own kernel and state, its assignment from
/// the placement.
fn assignment(
    me: &str,
    placement: &plumb_core::cluster::Placement,
    hosts: &BTreeMap<&str, (Ipv4Addr, ipnet::Ipv4Net)>,
) -> HostAssignment {
    let mut replicas: BTreeMap<String, BTreeSet<u32>> = BTreeMap::new();
    for (container, host) in placement {
        if host == me {
            let (service, replica) = container.rsplit_once('-').unwrap();
            replicas
                .entry(service.to_string())
                .or_default()
                .insert(replica.parse().unwrap());
        }
    }
    let (local, block) = hosts[me];
    let peers = hosts
        .iter()
        .filter(|(h, _)| **h != me)
        .map(|(h, (underlay, block))| plumb_core::cluster::OverlayPeer {
            host: h.to_string(),
            underlay: *underlay,
            block: *block,
        })
        .collect();
    HostAssignment {
        host: me.into(),
        replicas,
        overlays: BTreeMap::from([(
            "o".to_string(),
            OverlayAssignment {
                block,
                local,
                mtu: 1450,
                peers,
                tx_offload: None,
                tx_offload_why: None,
            },
        )]),
        remote: Vec::new(),
        base: None,
        store: Vec::new(),
    }
}

fn apply_assignment(host: &mut Host, parsed: &Parsed, a: &HostAssignment) -> Vec<What> {
    let mut kernel = host.kernel.clone();
    let mut engine = Engine::open(&mut kernel, &host.state).unwrap();
    let change = engine.plan_up(&host.request(parsed, Some(a))).unwrap();
    let change = engine.apply(change, &mut |_, _| Ok(()), &|_, _, _| {}).unwrap();
    change.plan.steps.into_iter().map(|s| s.what).collect()
}

/// Overlay reconcile and failover, as two agents would drive their engines: each host makes
/// only its replicas and a VXLAN device with entries for the other; when h1 dies, h2 takes
/// its replicas and drops h1's entries; a second pass changes nothing.
#[test]
fn overlay_hosts_reconcile_and_a_survivor_takes_a_dead_hosts_replicas() {
    let parsed = parse("c.toml", CLUSTER).unwrap();
    let hosts: BTreeMap<&str, (Ipv4Addr, ipnet::Ipv4Net)> = BTreeMap::from([
        ("h1", (Ipv4Addr::new(192, 0, 2, 1), "10.60.0.0/24".parse().unwrap())),
        ("h2", (Ipv4Addr::new(192, 0, 2, 2), "10.60.1.0/24".parse().unwrap())),
    ]);
    let alive: BTreeSet<String> = hosts.keys().map(|h| h.to_string()).collect();
    let placement = plumb_core::cluster::place(&parsed.stack, &alive, &Default::default());
    let mut h1 = Host::new("h1");
    let mut h2 = Host::new("h2");
    for (name, host) in [("h1", &mut h1), ("h2", &mut h2)] {
        let steps = apply_assignment(host, &parsed, &assignment(name, &placement, &hosts));
        let mine = placement.values().filter(|h| *h == name).count();
        assert_eq!(created(&steps), mine, "{name}: {steps:?}");
        assert!(
            steps.iter().any(|w| matches!(w, What::CreateOverlay { .. })),
            "{steps:?}"
        );
        assert_eq!(host.namespaces(), mine);
    }
    let device = plumb_core::cluster::vxlan_device("c", "o");
    let entries = |host: &Host| {
        use plumb_core::kernel::Kernel;
        host.kernel.clone().vxlan(&device).unwrap().unwrap().entries
    };
    assert!(!entries(&h2).is_empty(), "h2 has entries for h1");

    // h1 dies: the placement moves its replicas to h2, whose assignment has no peer left.
    let survivors = BTreeSet::from(["h2".to_string()]);
    let moved = plumb_core::cluster::place(&parsed.stack, &survivors, &placement);
    assert!(moved.values().all(|h| h == "h2"));
    let only_h2 = BTreeMap::from([("h2", hosts["h2"])]);
    let a = assignment("h2", &moved, &only_h2);
    let steps = apply_assignment(&mut h2, &parsed, &a);
    assert_eq!(
        created(&steps),
        4 - placement.values().filter(|h| *h == "h2").count(),
        "{steps:?}"
    );
    assert_eq!(h2.namespaces(), 4);
    assert!(entries(&h2).is_empty(), "h1's entries are gone: {:?}", entries(&h2));
    assert!(apply_assignment(&mut h2, &parsed, &a).is_empty(), "converged");
}

fn attachment(name: &str, network: &str, service: Option<&str>) -> plumb_core::desired::Attachment {
    plumb_core::desired::Attachment {
        name: name.into(),
        network: network.into(),
        netns_path: format!("/run/netns/runtime-{name}"),
        ifname: "eth0".into(),
        service: service.map(str::to_string),
        container_id: None,
    }
}

fn apply_change(
    host: &mut Host,
    plan: impl FnOnce(&mut Engine) -> plumb_engine::Result<plumb_engine::Change>,
) -> plumb_engine::Result<plumb_engine::Change> {
    let mut kernel = host.kernel.clone();
    let mut engine = Engine::open(&mut kernel, &host.state)?;
    let change = plan(&mut engine)?;
    engine.apply(change, &mut |_, _| Ok(()), &|_, _, _| {})
}

/// Attach and detach (what a CNI ADD and DEL call): the container gets an address of the
/// network beside the replicas', joins the service's VIP, survives an `up` of the stack, and
/// its namespace is never emptied: no StopProcesses for it, ever.
#[test]
fn attach_and_detach_a_container_made_by_someone_else() {
    use plumb_core::Op;
    let mut host = Host::new("attach");
    let parsed = parse("s.toml", STACK).unwrap();
    host.up(&parsed).unwrap();
    let change = apply_change(&mut host, |e| {
        e.plan_attach("s", attachment("ext", "back", Some("api")))
    })
    .unwrap();
    let steps: Vec<&What> = change.plan.steps.iter().map(|s| &s.what).collect();
    assert!(
        steps
            .iter()
            .any(|w| matches!(w, What::CreateContainer { container, .. } if container == "ext")),
        "{steps:?}"
    );
    let ops: Vec<&Op> = change.plan.ops().collect();
    assert!(ops
        .iter()
        .any(|op| matches!(op, Op::NetnsAttach { name, path } if name == "s-ext" && path == "/run/netns/runtime-ext")));
    assert!(!ops.iter().any(|op| matches!(op, Op::NetnsAdd { .. })), "{ops:?}");
    let ext = change.desired.container("ext").unwrap();
    let address = ext.interfaces[0].address;
    let api: Vec<std::net::Ipv4Addr> = ["api-1", "api-2"]
        .iter()
        .map(|c| change.desired.container(c).unwrap().interfaces[0].address)
        .collect();
    assert!(!api.contains(&address), "its own address: {address}");
    assert!(
        change
            .desired
            .service("api")
            .unwrap()
            .containers
            .contains(&"ext".to_string()),
        "it joins api's VIP"
    );
    assert_eq!(host.namespaces(), 4);

    // Bad attachments are input errors and change nothing.
    for (bad, why) in [
        (attachment("web-1", "back", None), "own services or replicas"),
        (attachment("ext2", "nope", None), "no network \"nope\""),
        (attachment("ext2", "back", Some("nope")), "no service \"nope\""),
        (
            plumb_core::desired::Attachment {
                netns_path: "/run/netns/another".into(),
                ..attachment("ext", "back", None)
            },
            "already attached",
        ),
    ] {
        let mut kernel = host.kernel.clone();
        let mut engine = Engine::open(&mut kernel, &host.state).unwrap();
        let e = engine.plan_attach("s", bad).unwrap_err();
        assert!(e.input && e.message.contains(why), "{}", e.message);
    }

    // The same ADD again (a runtime retrying) changes nothing.
    let same = apply_change(&mut host, |e| {
        e.plan_attach("s", attachment("ext", "back", Some("api")))
    })
    .unwrap();
    assert!(same.plan.is_empty(), "{:?}", same.plan);
    // An up of the stack keeps it, at its address.
    assert!(host.up(&parsed).unwrap().is_empty(), "up keeps the attached container");
    // Detach: its veth and name go, no process in it is ended.
    let change = apply_change(&mut host, |e| e.plan_detach("s", "ext")).unwrap();
    let ops: Vec<&Op> = change.plan.ops().collect();
    assert!(
        !ops.iter()
            .any(|op| matches!(op, Op::StopProcesses { namespaces, .. } if namespaces.iter().any(|n| n == "s-ext"))),
        "{ops:?}"
    );
    assert!(ops
        .iter()
        .any(|op| matches!(op, Op::NetnsDel { name } if name == "s-ext")));
    assert_eq!(host.namespaces(), 3);
    assert!(!change
        .desired
        .service("api")
        .unwrap()
        .containers
        .contains(&"ext".to_string()));
    let again = apply_change(&mut host, |e| e.plan_detach("s", "ext")).unwrap();
    assert!(again.plan.is_empty(), "a second DEL does nothing");

    // Down with an attached container ends no process in it either.
    apply_change(&mut host, |e| e.plan_attach("s", attachment("ext", "back", None))).unwrap();
    let mut kernel = host.kernel.clone();
    let mut engine = Engine::open(&mut kernel, &host.state).unwrap();
    let teardown = engine.plan_down("s").unwrap();
    let stopped: Vec<&Op> = teardown
        .plan
        .ops()
        .filter(|op| matches!(op, Op::StopProcesses { .. }))
        .collect();
    assert!(
        stopped
            .iter()
            .all(|op| !matches!(op, Op::StopProcesses { namespaces, .. } if namespaces.iter().any(|n| n == "s-ext"))),
        "{stopped:?}"
    );
    engine.down(teardown, &|_, _, _| {}).unwrap();
    assert_eq!(host.namespaces(), 0);
}

/// An attach whose execution fails (the namespace vanished before plumb bound it) is undone
/// and not kept in the record: the next `up` does not try it again.
#[test]
fn a_failed_attach_is_not_kept() {
    let mut host = Host::new("attach-fails");
    let parsed = parse("s.toml", STACK).unwrap();
    host.up(&parsed).unwrap();
    let gone = attachment("ext", "back", None);
    host.kernel.world().gone_paths.push(gone.netns_path.clone());
    let e = apply_change(&mut host, |e| e.plan_attach("s", gone)).unwrap_err();
    assert!(e.message.contains("runtime-ext"), "{}", e.message);
    let record = host.state.load("s").unwrap().unwrap();
    assert!(record.attached.is_empty(), "{:?}", record.attached);
    assert_eq!(host.namespaces(), 3, "nothing of it is left");
    // The next up does not try it again: it only takes its rules back out of the tables
    // (the transaction ran before the container failed), and the one after finds nothing.
    let steps = host.up(&parsed).unwrap();
    assert_eq!(created(&steps), 0, "{steps:?}");
    assert!(host.up(&parsed).unwrap().is_empty());
}

/// CNI's DEL and GC name attachments by the runtime's container ID: `plan_detach_where`
/// detaches every one it picks in one change, and leaves the others (and those `plumb attach`
/// made, which have no container ID) wired.
#[test]
fn detaching_by_container_id_takes_only_those_picked() {
    use plumb_core::Op;
    let mut host = Host::new("detach-where");
    let parsed = parse("s.toml", STACK).unwrap();
    host.up(&parsed).unwrap();
    let by_cni = |name: &str, id: &str| plumb_core::desired::Attachment {
        container_id: Some(id.into()),
        ..attachment(name, "back", None)
    };
    for a in [
        by_cni("c1", "id-1"),
        by_cni("c2", "id-2"),
        by_cni("c3", "id-3"),
        attachment("hand", "back", None),
    ] {
        apply_change(&mut host, |e| e.plan_attach("s", a)).unwrap();
    }
    assert_eq!(host.namespaces(), 7);
    let keep = ["id-2"];
    let change = apply_change(&mut host, |e| {
        e.plan_detach_where("s", |a| a.container_id.as_deref().is_some_and(|id| !keep.contains(&id)))
    })
    .unwrap();
    let removed: Vec<String> = change
        .plan
        .ops()
        .filter_map(|op| match op {
            Op::NetnsDel { name } => Some(name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(removed, ["s-c1", "s-c3"]);
    let record = host.state.load("s").unwrap().unwrap();
    let left: Vec<&str> = record.attached.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(left, ["c2", "hand"]);
    assert_eq!(host.namespaces(), 5);
}

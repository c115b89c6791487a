//! Executes a plan's steps with in-process netlink, sysctl writes and one nft transaction.

use std::collections::{BTreeSet, HashMap};
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use plumb_core::{Container, Network, Plan, Step};
use plumb_linux::link::LinkRef;
use plumb_linux::netns::Home;
use plumb_linux::{addr, link, netns, nft, route, sysctl, Netlink};

use crate::failure::{Failure, Result};
use crate::observe::listing_hash;
use crate::state::AppliedFirewall;

/// Batches at least this large are wired on two threads.
const PARALLEL_FROM: usize = 8;
/// How long processes found in a namespace being deleted get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long to wait for the kernel to finish destroying deleted namespaces' veths.
const LINK_REMOVAL_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Executor {
    host: Netlink,
    bridges: HashMap<String, u32>,
    /// Set when the plan replaced the nft table.
    pub firewall: Option<AppliedFirewall>,
    /// The nft transaction, running in the background while containers are wired (no
    /// process runs in them yet, so no packet can pass before the rules are in place).
    firewall_pending: Option<(nft::Pending, String)>,
    progress: Progress,
}

impl Executor {
    pub fn new() -> Result<Self> {
        Ok(Executor {
            host: Netlink::open()?,
            bridges: HashMap::new(),
            firewall: None,
            firewall_pending: None,
            progress: Progress::new(),
        })
    }

    pub fn run(&mut self, plan: &Plan) -> Result<()> {
        if plan
            .steps
            .iter()
            .any(|s| matches!(s, Step::CreateContainer(_) | Step::CreateBridge(_)))
        {
            netns::prepare_run_dir()?;
        }
        let total = plan.steps.len();
        let mut result = Ok(());
        let mut done = 0;
        while done < total {
            self.progress.tick(done, total, "steps applied");
            // Consecutive containers are wired together, on two threads.
            let batch: Vec<&Container> = plan.steps[done..]
                .iter()
                .map_while(|s| match s {
                    Step::CreateContainer(c) => Some(c.as_ref()),
                    _ => None,
                })
                .collect();
            result = if batch.is_empty() {
                done += 1;
                self.step(&plan.steps[done - 1])
            } else {
                done += batch.len();
                self.create_containers(&batch)
            };
            if result.is_err() {
                break;
            }
        }
        // The nft transaction started earlier completes whatever happened after it.
        if let Some((pending, ruleset)) = self.firewall_pending.take() {
            match pending.wait() {
                Ok(listing) => {
                    let listing_hash = listing_hash(&listing);
                    self.firewall = Some(AppliedFirewall { ruleset, listing_hash });
                }
                Err(e) => result = result.and(Err(e.into())),
            }
        }
        self.progress.finish();
        result
    }

    fn step(&mut self, step: &Step) -> Result<()> {
        match step {
            Step::EnableForwarding => sysctl::set("net.ipv4.ip_forward", "1")?,
            Step::CreateBridge(net) => self.create_bridge(net)?,
            Step::DeleteBridge { name, .. } => match link::delete(&mut self.host, name) {
                Err(e) if e.errno() == Some(nix::errno::Errno::ENODEV as i32) => {}
                other => other?,
            },
            Step::CreateContainer(c) => self.create_containers(&[c])?,
            Step::StopProcesses { namespaces } => {
                netns::end_processes(namespaces.iter().map(String::as_str), STOP_GRACE);
            }
            Step::DeleteContainer { netns: name, .. } => netns::delete(name)?,
            Step::AwaitLinksGone { links } => self.await_links_gone(links)?,
            Step::ApplyFirewall { table, script } => {
                let ruleset = script
                    .split_once(&format!("delete table inet {table}\n"))
                    .map_or(script.as_str(), |(_, body)| body);
                self.firewall_pending = Some((nft::apply_and_list(script, table)?, ruleset.to_string()));
            }
            Step::DeleteFirewall { table } => nft::delete_table(table)?,
        }
        Ok(())
    }

    fn create_bridge(&mut self, net: &Network) -> Result<()> {
        let br = &net.bridge;
        link::create_bridge(&mut self.host, br, net.bridge_mac())?;
        link::set_alias(&mut self.host, LinkRef::Name(br), &net.alias)?;
        sysctl::set(&format!("net.ipv6.conf.{br}.disable_ipv6"), "1")?;
        sysctl::set(&format!("net.ipv4.conf.{br}.route_localnet"), "1")?;
        let index = link::index_of(&mut self.host, br)?;
        addr::add_v4(&mut self.host, index, net.gateway_cidr())?;
        link::set_up(&mut self.host, LinkRef::Index(index))?;
        self.bridges.insert(br.clone(), index);
        Ok(())
    }

    fn bridge_index(&mut self, name: &str) -> Result<u32> {
        if let Some(i) = self.bridges.get(name) {
            return Ok(*i);
        }
        let index = link::index_of(&mut self.host, name)?;
        self.bridges.insert(name.to_string(), index);
        Ok(index)
    }

    /// Wires containers on up to two threads, each with its own host netlink socket: the
    /// kernel serializes most link changes, but namespace creation and the work inside each
    /// namespace overlap. A container that fails is removed again (the next `up` retries it).
    fn create_containers(&mut self, batch: &[&Container]) -> Result<()> {
        for c in batch {
            for iface in &c.interfaces {
                self.bridge_index(&iface.bridge)?;
            }
        }
        let bridges = &self.bridges;
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let work = || -> Result<()> {
            let home = Home::current()?;
            let mut host = Netlink::open()?;
            while !failed.load(Ordering::Relaxed) {
                let Some(c) = batch.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    break;
                };
                if let Err(e) = create_container(&home, &mut host, bridges, c) {
                    failed.store(true, Ordering::Relaxed);
                    let _ = netns::delete(&c.netns);
                    return Err(e);
                }
            }
            Ok(())
        };
        let threads = if batch.len() >= PARALLEL_FROM { 2 } else { 1 };
        let progress = &mut self.progress;
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads).map(|_| scope.spawn(work)).collect();
            while !handles.iter().all(|h| h.is_finished()) {
                std::thread::sleep(Duration::from_millis(50));
                progress.tick(
                    next.load(Ordering::Relaxed).min(batch.len()),
                    batch.len(),
                    "containers wired",
                );
            }
            // Join every thread before reporting the first error.
            let outcomes: Vec<Result<()>> = handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Failure::new("a wiring thread panicked")))
                })
                .collect();
            outcomes.into_iter().collect::<Result<()>>()
        })
    }

    fn await_links_gone(&mut self, links: &[String]) -> Result<()> {
        let wanted: BTreeSet<&str> = links.iter().map(String::as_str).collect();
        let start = Instant::now();
        loop {
            let left = link::list(&mut self.host)?
                .iter()
                .filter(|l| wanted.contains(l.name.as_str()))
                .count();
            if left == 0 {
                return Ok(());
            }
            if start.elapsed() > LINK_REMOVAL_TIMEOUT {
                return Err(Failure::new(format!("{left} veths were still not removed by the kernel after {LINK_REMOVAL_TIMEOUT:?}"))
                    .hint("something still holds their namespaces open (a process or a file descriptor); `plumb down` again once it is gone"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Makes one container: its namespace, `lo` up, one veth per network, addresses, default route.
fn create_container(home: &Home, host: &mut Netlink, bridges: &HashMap<String, u32>, c: &Container) -> Result<()> {
    let created = netns::create(home, &c.netns)?;
    let mut inner = created.netlink;
    // lo is always index 1 in a new namespace.
    link::set_up(&mut inner, LinkRef::Index(1))?;
    for iface in &c.interfaces {
        let master = bridges[&iface.bridge];
        link::create_veth(host, &iface.host_veth, master, &iface.name, created.fd.as_fd())?;
        // Host ends carry no IPv6: otherwise every new port floods DAD/RS/MLD to all others.
        sysctl::set(&format!("net.ipv6.conf.{}.disable_ipv6", iface.host_veth), "1")?;
        link::set_up(host, LinkRef::Name(&iface.host_veth))?;
        let index = link::index_of(&mut inner, &iface.name)?;
        link::set_alias_without_ipv6(&mut inner, LinkRef::Index(index), &iface.alias)?;
        addr::add_v4(&mut inner, index, iface.cidr())?;
        link::set_up(&mut inner, LinkRef::Index(index))?;
    }
    if let Some(gw) = c.gateway {
        route::add_default_v4(&mut inner, gw)?;
    }
    Ok(())
}

/// A one-line progress report on stderr for plans that take more than a second.
struct Progress {
    start: Instant,
    last: Option<Instant>,
    tty: bool,
}

impl Progress {
    fn new() -> Self {
        Progress {
            start: Instant::now(),
            last: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    fn tick(&mut self, done: usize, total: usize, what: &str) {
        let now = Instant::now();
        if !self.tty
            || now - self.start < Duration::from_secs(1)
            || self.last.is_some_and(|l| now - l < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(now);
        eprint!("\r\x1b[K  {done}/{total} {what}");
    }

    fn finish(&mut self) {
        if self.last.is_some() {
            eprint!("\r\x1b[K");
        }
    }
}

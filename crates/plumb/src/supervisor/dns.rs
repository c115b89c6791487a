//! The stack's DNS server, run by its supervisor: listening on each network's gateway, its
//! zone rebuilt in place whenever the desired state (`run.json`) or a replica's readiness
//! changes. The event loop calls three hooks: [`Dns::reload`] with each new `run.json`,
//! [`Dns::readiness`] after anything that may change who is ready, and [`Dns::keep_listening`]
//! at every turn (a listener that died, or an address that was not there yet, is tried again).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use plumb_core::desired::Desired;
use plumb_core::zone::Zone;
use plumb_dns::upstream::servers_from_resolv_conf;
use plumb_dns::Server;

use super::event_loop::say;

/// Where the host's resolvers are listed (read once, when the supervisor starts).
const RESOLV_CONF: &str = "/etc/resolv.conf";

pub struct Dns {
    server: Server,
    desired: Option<Desired>,
    unready: BTreeSet<String>,
    /// Addresses that could not be listened on, and why, as last said (said once each).
    failing: BTreeSet<String>,
}

impl Dns {
    /// The server's query counts (for metrics).
    pub fn stats(&self) -> std::sync::Arc<plumb_dns::Stats> {
        self.server.stats()
    }

    pub fn start() -> Dns {
        let text = std::fs::read_to_string(RESOLV_CONF).unwrap_or_default();
        let upstreams = servers_from_resolv_conf(&text);
        let empty = Desired::default();
        let server = Server::new(Zone::build(&empty, &BTreeSet::new()), upstreams, plumb_dns::PORT);
        Dns {
            server,
            desired: None,
            unready: BTreeSet::new(),
            failing: BTreeSet::new(),
        }
    }

    /// A new `run.json`: its desired state (services, replicas and networks may have come or
    /// gone) replaces the zone, and the server listens on exactly its networks' gateways.
    pub fn reload(&mut self, desired: Option<&Desired>) {
        self.desired = desired.cloned();
        self.publish();
        self.keep_listening();
    }

    /// The replicas that are not ready now; the zone changes only if that set did.
    pub fn readiness(&mut self, unready: BTreeSet<String>) {
        if unready != self.unready {
            self.unready = unready;
            self.publish();
        }
    }

    /// Listens on every gateway of the stack, restarting what died.
    pub fn keep_listening(&mut self) {
        let gateways: Vec<Ipv4Addr> = self
            .desired
            .iter()
            .filter(|d| !d.containers.is_empty())
            .flat_map(|d| d.networks.iter().map(|n| n.gateway))
            .collect();
        let failed = self.server.listen_on(&gateways);
        let now: BTreeSet<String> = failed
            .iter()
            .map(|(a, e)| format!("dns: cannot listen on {a}:{}: {e}", plumb_dns::PORT))
            .collect();
        for line in now.difference(&self.failing) {
            say(line);
        }
        self.failing = now;
    }

    /// The desired state this server answers for.
    pub fn desired(&self) -> Option<&Desired> {
        self.desired.as_ref()
    }

    fn publish(&self) {
        if let Some(d) = &self.desired {
            self.server.set_zone(Zone::build(d, &self.unready));
        }
    }
}

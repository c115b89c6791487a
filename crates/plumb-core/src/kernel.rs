//! The kernel as the engine sees it: a small trait with one method that performs an
//! [`Op`] and the few reads that observing a stack needs. plumb-linux implements it with
//! netlink, namespaces and `nft`; plumb-engine's recording fake implements it in memory so
//! the engine is tested without root.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::firewall::{Shape, TableId};
use crate::ops::Op;
use crate::plan::{ObservedLink, ObservedNetns, ObservedVxlan};

/// A link in the host's namespace, as read back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostLink {
    pub name: String,
    /// `bridge`, `veth`, ...
    pub kind: Option<String>,
    pub group: u32,
    pub link: ObservedLink,
}

/// An nft table as read back: a fingerprint of the exact listing (compared with what plumb
/// recorded when it applied the table) and its shape (compared when there is no record).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftListing {
    pub fingerprint: u64,
    pub shape: Option<Shape>,
}

/// A route of the host's namespace (IPv4), as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRoute {
    pub destination: ipnet::Ipv4Net,
    pub gateway: Option<std::net::Ipv4Addr>,
    /// The index of the link it goes out of, if it names one.
    pub link_index: Option<u32>,
}

/// TCP or UDP, for [`Kernel::listeners`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transport {
    Tcp,
    Udp,
}

/// A socket of the host's namespace listening (TCP) or bound (UDP) on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub address: std::net::IpAddr,
    pub port: u16,
    /// The processes holding the socket: (pid, command name).
    pub holders: Vec<(u32, String)>,
}

/// One socket, as `ss -tunap` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketInfo {
    pub transport: Transport,
    /// TCP: `LISTEN`, `ESTAB`, `TIME-WAIT`...; UDP: `UNCONN` (bound) or `ESTAB` (connected).
    pub state: &'static str,
    pub local: (std::net::IpAddr, u16),
    pub remote: (std::net::IpAddr, u16),
    /// The kernel's inode of the socket: [`Kernel::socket_holders`] tells who holds it.
    pub inode: u64,
}

/// One direction of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub src: std::net::Ipv4Addr,
    pub dst: std::net::Ipv4Addr,
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
    pub fn dnat(&self) -> Option<(std::net::Ipv4Addr, u16)> {
        (self.reply.src != self.original.dst || self.reply.sport != self.original.dport)
            .then_some((self.reply.src, self.reply.sport))
    }

    /// What the original source was translated to, if it was (SNAT, masquerade).
    pub fn snat(&self) -> Option<(std::net::Ipv4Addr, u16)> {
        (self.reply.dst != self.original.src || self.reply.dport != self.original.sport)
            .then_some((self.reply.dst, self.reply.dport))
    }

    /// Every address the flow names, in either direction.
    pub fn addresses(&self) -> [std::net::Ipv4Addr; 4] {
        [self.original.src, self.original.dst, self.reply.src, self.reply.dst]
    }
}

/// A link's traffic counters (what the kernel keeps as `IFLA_STATS64`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_dropped: u64,
    pub tx_dropped: u64,
}

/// A process found inside a container's namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resident {
    pub pid: i32,
    pub parent: i32,
    pub session: i32,
}

/// A user a process runs as (not root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// How a command is put inside a container before it runs ([`Kernel::confine`]): its
/// network namespace, its own UTS and mount namespaces with the hostname and the /etc files
/// bound, then its user and capabilities.
pub struct Confinement<'a> {
    pub netns: &'a str,
    pub hostname: &'a str,
    /// Bound over /etc/hosts.
    pub hosts: Option<&'a std::path::Path>,
    /// Bound over /etc/resolv.conf (the namespace's own, /etc/netns/NAME/resolv.conf).
    pub resolv_conf: bool,
    pub identity: Option<Identity>,
    pub capabilities: &'a crate::spec::Capabilities,
    /// The cgroup (made by [`Kernel::cgroup_make`]) it joins before anything else.
    pub cgroup: Option<(&'a str, &'a crate::cgroup::Limits)>,
}

/// Says why a confined command did not start: the step before exec that failed, or exec.
pub type SpawnFailure = Box<dyn Fn(&std::path::Path, &std::io::Error) -> String + Send>;

/// What one probe connection met (`plumb trace`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// TCP: the handshake completed. UDP: a reply came back.
    Answered,
    /// A TCP reset or an ICMP port unreachable.
    Refused,
    /// Nothing came back in time (dropped somewhere, or a UDP service that does not answer).
    TimedOut,
    /// Another error the kernel reported (no route, host unreachable...).
    Failed(String),
}

/// A probe socket made inside a namespace and bound to a port the kernel picked, so rules
/// can be made for its exact source port before it sends.
pub trait Probe: Send {
    /// The source port the probe's packets carry.
    fn port(&self) -> u16;
    /// TCP: a connect; UDP: one datagram, then a wait for any reply or an ICMP error.
    fn send(&self, to: std::net::SocketAddrV4, timeout: std::time::Duration) -> ProbeOutcome;
}

/// What went wrong in one kernel operation or read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelError {
    /// What was being done: `create veth plv...`.
    pub what: String,
    pub detail: String,
    pub errno: Option<i32>,
}

impl fmt::Display for KernelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.what, self.detail)
    }
}

impl std::error::Error for KernelError {}

pub type KernelResult<T> = Result<T, KernelError>;

pub trait Kernel: Send {
    /// Performs one operation. Some (nft transactions) may go on in the background until
    /// [`Kernel::settle`].
    fn apply(&mut self, op: &Op) -> KernelResult<()>;

    /// Waits for background work (the nft transaction).
    fn settle(&mut self) -> KernelResult<()>;

    /// Another handle on the same kernel, for a second thread.
    fn worker(&self) -> KernelResult<Box<dyn Kernel>>;

    fn ip_forward(&mut self) -> KernelResult<bool>;

    fn host_links(&mut self) -> KernelResult<Vec<HostLink>>;

    /// Names under /run/netns.
    fn namespaces(&mut self) -> KernelResult<Vec<String>>;

    /// Whether the name under /run/netns holds a namespace: false for a missing name and for
    /// an empty mount point (an `up` killed between creating the name and mounting it).
    /// Cheaper than [`Kernel::netns`]: it does not look inside.
    fn netns_bound(&mut self, name: &str) -> KernelResult<bool>;

    /// The inside of a named namespace; `None` for a name with no namespace mounted on it
    /// (an `up` killed between creating the name and mounting it).
    fn netns(&mut self, name: &str) -> KernelResult<Option<ObservedNetns>>;

    /// A VXLAN device of the host's namespace, its settings and its entries (routes through
    /// it, permanent neighbours on it, its FDB); `None` if there is no link by that name.
    fn vxlan(&mut self, name: &str) -> KernelResult<Option<ObservedVxlan>>;

    /// The table as the kernel lists it, `None` if there is no such table.
    fn nft_table(&mut self, table: &TableId) -> KernelResult<Option<NftListing>>;

    /// The nftables ruleset's generation, which every committed transaction moves on (`None`
    /// where the kernel cannot tell: then the tables are always listed).
    fn nft_generation(&mut self) -> KernelResult<Option<u32>> {
        Ok(None)
    }

    /// The host namespace's IPv4 routes (every table plumb's checks look at: main).
    fn host_routes(&mut self) -> KernelResult<Vec<HostRoute>>;

    /// The gateway of the host namespace's IPv4 default route (main table), if any.
    fn default_gateway(&mut self) -> KernelResult<Option<std::net::Ipv4Addr>>;

    /// The processes inside each of the namespaces with these inodes, by inode.
    fn residents(&mut self, inodes: &std::collections::HashSet<u64>) -> BTreeMap<u64, Vec<Resident>>;

    /// The name of the host link with this index, `None` if there is none.
    fn link_name(&mut self, index: u32) -> KernelResult<Option<String>>;

    /// The host namespace's IPv4 addresses.
    fn host_addresses(&mut self) -> KernelResult<Vec<std::net::Ipv4Addr>>;

    /// Sockets of the host namespace listening (TCP) or bound (UDP) on `port`.
    fn listeners(&mut self, transport: Transport, port: u16) -> KernelResult<Vec<Listener>>;

    /// The traffic counters of every link of the host namespace, by name.
    fn link_counters(&mut self) -> KernelResult<BTreeMap<String, LinkCounters>>;

    /// Every TCP and UDP socket inside a named namespace (IPv4 and IPv6).
    fn sockets_in(&mut self, netns: &str) -> KernelResult<Vec<SocketInfo>>;

    /// Which processes hold each socket, by the socket's inode: (pid, command name).
    fn socket_holders(&mut self) -> BTreeMap<u64, Vec<(u32, String)>>;

    /// The host namespace's tracked IPv4 flows (empty when conntrack is not loaded).
    fn conntrack(&mut self) -> KernelResult<Vec<Flow>>;

    /// The whole nft ruleset as nft's JSON listing.
    fn nft_ruleset(&mut self) -> KernelResult<String>;

    /// The nft tables the kernel holds: (family, name).
    fn nft_tables(&mut self) -> KernelResult<Vec<(String, String)>>;

    /// The inode of a named namespace (what tells two namespaces apart), `None` if the name
    /// holds none.
    fn netns_inode(&mut self, name: &str) -> Option<u64>;

    /// Runs `f` on this thread inside a named namespace, then comes back.
    fn in_netns(&mut self, name: &str, f: &mut dyn FnMut()) -> KernelResult<()>;

    /// Moves this thread into a named namespace for good (before exec, or for a thread that
    /// works there until it ends).
    fn enter_netns(&mut self, name: &str) -> KernelResult<()>;

    /// Bind-mounts the namespace's resolv.conf over /etc/resolv.conf in this process's mount
    /// namespace (what `ip netns exec` does), for a command about to run there.
    fn bind_resolv_conf(&mut self, netns: &str) -> KernelResult<()>;

    /// A probe socket inside a named namespace (TCP, or UDP with `udp`).
    fn bind_probe(&mut self, netns: &str, udp: bool) -> KernelResult<Box<dyn Probe>>;

    /// Sets `command` up to start inside a container (see [`Confinement`]); what it returns
    /// explains a failed spawn.
    fn confine(&mut self, command: &mut std::process::Command, how: &Confinement) -> KernelResult<SpawnFailure>;

    /// Why the host cannot enforce `limits`, if it cannot (checked at `up`).
    fn cgroup_unenforceable(&mut self, _limits: &crate::cgroup::Limits) -> Option<String> {
        None
    }

    /// Makes a replica's cgroup `path` (`STACK/CONTAINER`, below plumb's root in each
    /// hierarchy) with `limits`.
    fn cgroup_make(&mut self, _path: &str, _limits: &crate::cgroup::Limits) -> KernelResult<()> {
        Ok(())
    }

    /// What cgroup `path` has counted; None if there is no such cgroup.
    fn cgroup_usage(&mut self, _path: &str) -> Option<crate::cgroup::Usage> {
        None
    }

    /// The processes still in cgroup `path`.
    fn cgroup_pids(&mut self, _path: &str) -> Vec<i32> {
        Vec::new()
    }

    /// Sets `command` up to join cgroup `path` (made by [`Kernel::cgroup_make`]) before exec,
    /// and nothing else: a helper process sharing a replica's limits (its sidecar).
    fn cgroup_join(
        &mut self,
        _command: &mut std::process::Command,
        _path: &str,
        _limits: &crate::cgroup::Limits,
    ) -> KernelResult<()> {
        Ok(())
    }

    /// Removes cgroup `path` and its parents left empty; fails while processes remain.
    fn cgroup_remove(&mut self, _path: &str) -> KernelResult<()> {
        Ok(())
    }

    /// Removes cgroup `path` with every cgroup below it that holds no process, then its
    /// parents left empty: what a sandbox killed outright leaves.
    fn cgroup_remove_tree(&mut self, _path: &str) {}

    /// The names of cgroup `path`'s child cgroups (`""`: plumb's root's).
    fn cgroup_children(&mut self, _path: &str) -> Vec<String> {
        Vec::new()
    }

    /// Sets `command` up to run with only this identity and these capabilities (in the
    /// namespaces of the thread that spawns it: a health check's).
    fn restrict(
        &mut self,
        command: &mut std::process::Command,
        identity: Option<Identity>,
        capabilities: &crate::spec::Capabilities,
    ) -> KernelResult<()>;

    /// Opens a persistent tap for reading and writing its frames (a chaos relay's end).
    fn open_tap(&mut self, name: &str) -> KernelResult<std::os::fd::OwnedFd>;

    /// Starts reading the tables in the background, for later [`Kernel::nft_table`] calls
    /// (listing runs a program: it overlaps with the netlink reads).
    fn prefetch_nft(&mut self) {}

    /// The host namespace's iptables-legacy tables (`/proc/net/ip_tables_names`: empty where
    /// iptables-legacy was never used), whose rules nftables' listing does not show.
    fn iptables_legacy_tables(&mut self) -> KernelResult<Vec<String>> {
        Err(KernelError {
            what: "read the iptables-legacy tables".into(),
            detail: "not read by this kernel".into(),
            errno: None,
        })
    }
}

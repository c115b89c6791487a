//! The kernel as the engine sees it: a small trait with one method that performs an
//! [`Op`] and the few reads that observing a stack needs. plumb-linux implements it with
//! netlink, namespaces and `nft`; plumb-engine's recording fake implements it in memory so
//! the engine is tested without root.

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

    /// The host namespace's IPv4 routes (every table plumb's checks look at: main).
    fn host_routes(&mut self) -> KernelResult<Vec<HostRoute>>;

    /// The name of the host link with this index, `None` if there is none.
    fn link_name(&mut self, index: u32) -> KernelResult<Option<String>>;

    /// The host namespace's IPv4 addresses.
    fn host_addresses(&mut self) -> KernelResult<Vec<std::net::Ipv4Addr>>;

    /// Sockets of the host namespace listening (TCP) or bound (UDP) on `port`.
    fn listeners(&mut self, transport: Transport, port: u16) -> KernelResult<Vec<Listener>>;

    /// Starts reading the tables in the background, for later [`Kernel::nft_table`] calls
    /// (listing runs a program: it overlaps with the netlink reads).
    fn prefetch_nft(&mut self) {}

    /// The host namespace's whole nftables ruleset as `nft -j list ruleset` prints it, for
    /// [`crate::firewall::vxlan_nat`] (may a NAT rewrite VXLAN?). A kernel that cannot read
    /// it says so, and overlays keep the checksum workaround.
    fn nft_ruleset(&mut self) -> KernelResult<String> {
        Err(KernelError {
            what: "read the nftables ruleset".into(),
            detail: "not read by this kernel".into(),
            errno: None,
        })
    }

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

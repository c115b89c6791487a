//! The kernel as the engine sees it: a small trait with one method that performs an
//! [`Op`] and the few reads that observing a stack needs. plumb-linux implements it with
//! netlink, namespaces and `nft`; plumb-engine's recording fake implements it in memory so
//! the engine is tested without root.

use std::fmt;

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

    /// Starts reading the tables in the background, for later [`Kernel::nft_table`] calls
    /// (listing runs a program: it overlaps with the netlink reads).
    fn prefetch_nft(&mut self) {}
}

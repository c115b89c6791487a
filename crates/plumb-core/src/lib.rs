//! plumb's pure core: the stack file model and its validation, IP address management,
//! naming, the desired state, the diff into a plan, and the plan rendered as a script.
//! Nothing here performs I/O or system calls.

pub mod autoscale;
pub mod bench;
pub mod cgroup;
pub mod chaos;
pub mod cluster;
pub mod cni;
pub mod desired;
pub mod diag;
pub mod firewall;
pub mod graph;
pub mod ipam;
pub mod kernel;
pub mod lower;
pub mod mac;
pub mod mesh;
pub mod names;
pub mod oci;
pub mod ops;
pub mod plan;
pub mod policy;
pub mod render;
pub mod services;
pub mod spec;
pub mod tour;
pub mod trace;
pub mod zone;

pub use desired::{Container, Desired, Interface, Network};
pub use diag::{Diagnostic, Diagnostics};
pub use mac::Mac;
pub use ops::{At, Op};
pub use plan::{
    Actual, ObservedFirewall, ObservedLink, ObservedNetns, ObservedVxlan, OverlayEntries, Plan, Step, What,
};

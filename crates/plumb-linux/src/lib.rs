//! plumb's kernel effects, one small module per mechanism: network namespaces, netlink
//! (links, addresses, routes), nftables, sysctls. Knows nothing about stack files.

pub mod addr;
pub mod cgroup;
pub mod conntrack;
pub mod ethtool;
pub mod kernel;
pub mod link;
pub mod neigh;
pub mod netlink;
pub mod netns;
pub mod nft;
pub mod nft_elements;
pub mod probe;
pub mod route;
pub mod sockets;
pub mod spawn;
pub mod sysctl;
pub mod tap;
pub mod tc;

pub use netlink::{Error, Netlink};

//! Operations: one kernel change each (add a namespace, a veth, an address, an nft
//! transaction ...). A plan's steps lower to operations here, and each operation has exactly
//! one rendering, [`Op::command`], as the shell command that does the same by hand; the engine
//! has exactly one execution for each. Render and execute are two readings of one list.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::firewall::{self, NftChange};
use crate::mac::Mac;

/// Per-namespace files `ip netns exec` binds over /etc (iproute2's convention).
pub const ETC_NETNS: &str = "/etc/netns";

/// Where an operation runs: the host's network namespace or a container's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum At {
    Host,
    Netns(String),
}

impl At {
    /// `ip` or `ip -n NS`.
    fn ip(&self) -> String {
        match self {
            At::Host => "ip".into(),
            At::Netns(ns) => format!("ip -n {ns}"),
        }
    }
}

/// How `LinkAlias` treats IPv6 on the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ipv6 {
    Keep,
    /// `addrgenmode none`: the link makes no IPv6 link-local address (no DAD, RS, MLD noise).
    NoAddresses,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A host kernel parameter.
    Sysctl {
        key: String,
        value: String,
    },
    /// A named network namespace, bind-mounted on /run/netns/NAME.
    NetnsAdd {
        name: String,
    },
    /// A namespace someone else made (a container runtime: a CNI ADD), bind-mounted on
    /// /run/netns/NAME so plumb reaches it by name; `NetnsDel` later removes only the name,
    /// the namespace stays its owner's.
    NetnsAttach {
        name: String,
        path: String,
    },
    /// A bridge with a fixed MAC and multicast snooping off (and an overlay's MTU).
    BridgeAdd {
        name: String,
        mac: Mac,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtu: Option<u32>,
    },
    /// A veth pair in one request: `name` on the host attached to `bridge`, its peer placed
    /// straight into `netns` as `peer`, with MAC address `peer_mac`.
    VethAdd {
        name: String,
        bridge: String,
        peer: String,
        netns: String,
        peer_mac: Mac,
        /// Both ends' MTU (an overlay network's), else the kernel's default.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mtu: Option<u32>,
    },
    /// A VXLAN device with static entries only (no learning, no multicast group): frames go
    /// where its FDB says, from `local`, to UDP port `port`.
    VxlanAdd {
        name: String,
        vni: u32,
        local: Ipv4Addr,
        port: u16,
        mac: Mac,
        mtu: u32,
    },
    /// Transmit checksum offload off on a link (SIOCETHTOOL `ETHTOOL_STXCSUM`): works around
    /// NICs that corrupt the checksums of VXLAN's inner packets (calico#3145, flannel#2152).
    TxChecksumOff {
        link: String,
    },
    /// A route through a link to a next hop the kernel takes as directly reachable on it
    /// (`onlink`): a peer's block via its VTEP address.
    OnlinkRouteAdd {
        destination: Ipv4Net,
        via: Ipv4Addr,
        link: String,
    },
    /// Removes such a route; an absent one is not an error.
    OnlinkRouteDel {
        destination: Ipv4Net,
        via: Ipv4Addr,
        link: String,
    },
    /// A permanent neighbour entry on a host link (a peer's VTEP address → its MAC).
    NeighAdd {
        link: String,
        address: Ipv4Addr,
        mac: Mac,
    },
    /// Removes a neighbour entry; an absent one is not an error.
    NeighDel {
        link: String,
        address: Ipv4Addr,
    },
    /// A permanent FDB entry of a VXLAN device (a peer's VTEP MAC → its underlay address).
    FdbAdd {
        link: String,
        mac: Mac,
        dst: Ipv4Addr,
    },
    /// Removes an FDB entry; an absent one is not an error.
    FdbDel {
        link: String,
        mac: Mac,
        dst: Ipv4Addr,
    },
    /// The link's alias, which records in the kernel who owns it.
    LinkAlias {
        at: At,
        link: String,
        alias: String,
        ipv6: Ipv6,
    },
    LinkUp {
        at: At,
        link: String,
    },
    /// Sets a link's MTU in place (an overlay's MTU followed its underlay's).
    LinkMtu {
        at: At,
        link: String,
        mtu: u32,
    },
    /// A bridge port brought up in hairpin mode (a frame may leave by the port it came in
    /// on), in one request.
    BridgePortUp {
        link: String,
    },
    AddrAdd {
        at: At,
        link: String,
        cidr: Ipv4Net,
    },
    DefaultRoute {
        at: At,
        gateway: Ipv4Addr,
    },
    /// Ends every process in these namespaces, by PID: TERM, then KILL after `grace_ms`.
    StopProcesses {
        namespaces: Vec<String>,
        grace_ms: u64,
    },
    /// Puts a host link into an interface group, so [`Op::LinkDelGroup`] removes a whole
    /// batch in one request (one RCU wait instead of one per link). Absent links are skipped.
    LinkSetGroup {
        link: String,
        group: u32,
    },
    /// Deletes the plan's host links in the group: in one request if every link in the group
    /// is one of `links`, else (another owner's link has the number) the plan's one by one
    /// ([`group_delete`]). An empty group is not an error.
    LinkDelGroup {
        group: u32,
        links: Vec<String>,
    },
    /// Removes a namespace's name; the kernel destroys it once nothing holds it. An absent name
    /// is not an error.
    NetnsDel {
        name: String,
    },
    /// The container's /etc/netns/NETNS/resolv.conf (what `ip netns exec` and the processes
    /// plumb starts see as /etc/resolv.conf).
    ResolvConf {
        netns: String,
        content: String,
    },
    /// Removes /etc/netns/NETNS and what it holds; an absent folder is not an error.
    EtcNetnsDel {
        netns: String,
    },
    /// One nftables transaction changing the stack's tables together.
    Nft {
        changes: Vec<NftChange>,
    },
    /// An nft script run inside a container's namespace (the mesh's interception table,
    /// which goes with the namespace).
    NetnsNft {
        netns: String,
        script: String,
    },
    /// A persistent tap on the host, plugged into `bridge` as a port that neither learns MAC
    /// addresses nor receives floods: frames a chaos relay writes to it enter the bridge as if
    /// the container had just sent them, and nothing else comes out of it.
    TapAdd {
        name: String,
        bridge: String,
        alias: String,
    },
    /// Deletes a host link; an absent one is not an error.
    LinkDel {
        name: String,
    },
    /// Sends the frames a container sends (the ingress of its veth's host end), all of them or
    /// only IPv4 packets to `to`, to a chaos tap instead of the bridge: a `clsact` qdisc and
    /// one u32 filter with a `mirred` redirect per destination.
    TcRedirect {
        dev: String,
        tap: String,
        to: Vec<Ipv4Addr>,
    },
    /// Removes a host link's `clsact` qdisc and its filters; none there is not an error.
    TcClear {
        dev: String,
    },
}

impl Op {
    /// The shell command that performs this operation, as execution performs it.
    pub fn command(&self) -> String {
        match self {
            Op::Sysctl { key, value } => format!("sysctl -qw {key}={value}"),
            Op::NetnsAdd { name } => format!("ip netns add {name}"),
            Op::NetnsAttach { name, path } => format!(
                "mkdir -p /run/netns && touch /run/netns/{name} && mount --bind '{}' /run/netns/{name}",
                path.replace('\'', "'\\''")
            ),
            Op::BridgeAdd { name, mac, mtu } => {
                format!(
                    "ip link add {name} address {mac}{} type bridge mcast_snooping 0",
                    mtu_arg(*mtu)
                )
            }
            Op::VethAdd {
                name,
                bridge,
                peer,
                netns,
                peer_mac,
                mtu,
            } => {
                let mtu = mtu_arg(*mtu);
                format!(
                    "ip link add {name}{mtu} master {bridge} type veth peer name {peer} netns {netns} address {peer_mac}{mtu}"
                )
            }
            Op::VxlanAdd {
                name,
                vni,
                local,
                port,
                mac,
                mtu,
            } => format!(
                "ip link add {name} address {mac} mtu {mtu} type vxlan id {vni} local {local} dstport {port} nolearning"
            ),
            // `tx` is every tx-checksum-* feature; a VXLAN device has tx-checksum-ip-generic.
            Op::TxChecksumOff { link } => format!("ethtool -K {link} tx off"),
            Op::OnlinkRouteAdd { destination, via, link } => {
                format!("ip route add {destination} via {via} dev {link} onlink")
            }
            Op::OnlinkRouteDel { destination, via, link } => {
                format!("ip route del {destination} via {via} dev {link} 2>/dev/null || true")
            }
            Op::NeighAdd { link, address, mac } => {
                format!("ip neigh add {address} lladdr {mac} dev {link} nud permanent")
            }
            Op::NeighDel { link, address } => format!("ip neigh del {address} dev {link} 2>/dev/null || true"),
            Op::FdbAdd { link, mac, dst } => format!("bridge fdb add {mac} dev {link} dst {dst} self permanent"),
            Op::FdbDel { link, mac, dst } => {
                format!("bridge fdb del {mac} dev {link} dst {dst} self 2>/dev/null || true")
            }
            Op::LinkAlias { at, link, alias, ipv6 } => {
                let gen = match ipv6 {
                    Ipv6::Keep => "",
                    Ipv6::NoAddresses => " addrgenmode none",
                };
                format!("{} link set {link} alias {alias}{gen}", at.ip())
            }
            Op::LinkUp { at, link } => format!("{} link set {link} up", at.ip()),
            Op::LinkMtu { at, link, mtu } => format!("{} link set {link} mtu {mtu}", at.ip()),
            Op::BridgePortUp { link } => format!("ip link set {link} up type bridge_slave hairpin on"),
            Op::AddrAdd { at, link, cidr } => format!("{} addr add {cidr} dev {link}", at.ip()),
            Op::DefaultRoute { at, gateway } => format!("{} route add default via {gateway}", at.ip()),
            Op::StopProcesses { namespaces, grace_ms } => stop_processes(namespaces, *grace_ms),
            Op::LinkSetGroup { link, group } => {
                format!("if ip link show {link} >/dev/null 2>&1; then ip link set {link} group {group}; fi")
            }
            Op::LinkDelGroup { group, links } => link_del_group(*group, links),
            Op::NetnsDel { name } => format!("if [ -e /run/netns/{name} ]; then ip netns del {name}; fi"),
            Op::ResolvConf { netns, content } => {
                let text = content.replace('%', "%%").replace('\n', "\\n");
                format!("mkdir -p {ETC_NETNS}/{netns} && printf '{text}' > {ETC_NETNS}/{netns}/resolv.conf")
            }
            Op::EtcNetnsDel { netns } => format!("rm -rf {ETC_NETNS}/{netns}"),
            Op::Nft { changes } => firewall::command(changes),
            Op::NetnsNft { netns, script } => format!("ip netns exec {netns} nft -f - <<'EOF'\n{script}EOF"),
            Op::LinkDel { name } => format!("ip link del {name} 2>/dev/null || true"),
            Op::TcClear { dev } => format!("tc qdisc del dev {dev} clsact 2>/dev/null || true"),
            Op::TapAdd { .. } | Op::TcRedirect { .. } => self
                .tool_commands()
                .iter()
                .map(|argv| argv.join(" "))
                .collect::<Vec<_>>()
                .join(" && "),
        }
    }

    /// The programs (`ip`, `bridge`, `tc`) and arguments that perform a chaos tap or redirect,
    /// in order; empty for the others. Execution (plumb-linux) sends the same requests these
    /// programs send, one command after the other, over netlink and ioctls of its own; a test
    /// (tests/scripts.rs) holds the kernel state each leaves equal.
    pub fn tool_commands(&self) -> Vec<Vec<String>> {
        let argv = |s: &str| s.split(' ').map(str::to_string).collect::<Vec<String>>();
        match self {
            Op::TapAdd { name, bridge, alias } => vec![
                argv(&format!("ip tuntap add dev {name} mode tap")),
                argv(&format!("ip link set {name} alias {alias} master {bridge}")),
                argv(&format!(
                    "bridge link set dev {name} learning off flood off mcast_flood off bcast_flood off"
                )),
                argv(&format!("ip link set {name} up")),
            ],
            Op::TcRedirect { dev, tap, to } => {
                let mut out = vec![argv(&format!("tc qdisc add dev {dev} clsact"))];
                let redirect = format!("action mirred egress redirect dev {tap}");
                if to.is_empty() {
                    out.push(argv(&format!(
                        "tc filter add dev {dev} ingress prio 1 protocol all u32 match u32 0 0 {redirect}"
                    )));
                }
                for ip in to {
                    out.push(argv(&format!(
                        "tc filter add dev {dev} ingress prio 1 protocol ip u32 match ip dst {ip}/32 {redirect}"
                    )));
                }
                out
            }
            _ => Vec::new(),
        }
    }
}

/// ` mtu N`, or nothing for the kernel's default.
/// How [`Op::LinkDelGroup`] deletes, given the links now in its group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupDelete {
    /// The whole group in one request: every member is the plan's.
    Whole,
    /// These members (the plan's), one by one: another owner's link shares the group.
    Each(Vec<String>),
}

/// Whether the group's `members` may go in one request, or only the plan's `links` in it.
pub fn group_delete(members: &[String], links: &[String]) -> GroupDelete {
    if members.iter().all(|m| links.contains(m)) {
        GroupDelete::Whole
    } else {
        GroupDelete::Each(members.iter().filter(|m| links.contains(m)).cloned().collect())
    }
}

/// [`group_delete`] in the shell: the group's members are `ip -o link show group` names.
fn link_del_group(group: u32, links: &[String]) -> String {
    let members = format!("ip -o link show group {group} | sed 's/^[0-9]*: \\([^:@]*\\).*/\\1/'");
    let patterns: String = if links.is_empty() {
        " -e ''".to_string()
    } else {
        links.iter().map(|l| format!(" -e {l}")).collect()
    };
    format!(
        "if [ -z \"$({members} | grep -vxF{patterns})\" ]; then ip link del group {group} 2>/dev/null || true; \
         else for l in $({members} | grep -xF{patterns}); do ip link del \"$l\"; done; fi"
    )
}

fn mtu_arg(mtu: Option<u32>) -> String {
    mtu.map(|m| format!(" mtu {m}")).unwrap_or_default()
}

/// TERM, wait up to the grace period (polling every 100 ms), then KILL what is left.
fn stop_processes(namespaces: &[String], grace_ms: u64) -> String {
    let list = namespaces.join(" ");
    let pids = format!("for ns in {list}; do ip netns pids \"$ns\" 2>/dev/null || true; done");
    let polls = grace_ms.div_ceil(100);
    format!(
        "pids=$({pids}); if [ -n \"$pids\" ]; then kill -TERM $pids 2>/dev/null || true; \
         i=0; while [ $i -lt {polls} ] && [ -n \"$({pids})\" ]; do sleep 0.1; i=$((i+1)); done; \
         pids=$({pids}); [ -z \"$pids\" ] || kill -KILL $pids 2>/dev/null || true; fi"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_group_with_another_owners_link_is_deleted_link_by_link() {
        let v = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(group_delete(&v(&["a", "b"]), &v(&["a", "b", "c"])), GroupDelete::Whole);
        assert_eq!(group_delete(&[], &v(&["a"])), GroupDelete::Whole);
        assert_eq!(
            group_delete(&v(&["a", "theirs", "b"]), &v(&["a", "b", "c"])),
            GroupDelete::Each(v(&["a", "b"]))
        );
    }

    #[test]
    fn each_op_reads_like_the_command_it_replaces() {
        let inside = At::Netns("s-a-1".into());
        let cases = [
            (
                Op::VethAdd {
                    name: "plv1".into(),
                    bridge: "plb1".into(),
                    peer: "eth0".into(),
                    netns: "s-a-1".into(),
                    peer_mac: "02:00:00:00:00:01".parse().unwrap(),
                    mtu: None,
                },
                "ip link add plv1 master plb1 type veth peer name eth0 netns s-a-1 address 02:00:00:00:00:01",
            ),
            (
                Op::VethAdd {
                    name: "plv1".into(),
                    bridge: "plb1".into(),
                    peer: "eth0".into(),
                    netns: "s-a-1".into(),
                    peer_mac: "02:00:00:00:00:01".parse().unwrap(),
                    mtu: Some(1450),
                },
                "ip link add plv1 mtu 1450 master plb1 type veth peer name eth0 netns s-a-1 address 02:00:00:00:00:01 mtu 1450",
            ),
            (
                Op::VxlanAdd {
                    name: "plx1".into(),
                    vni: 42,
                    local: Ipv4Addr::new(10, 99, 0, 11),
                    port: 4789,
                    mac: "02:00:00:00:00:02".parse().unwrap(),
                    mtu: 1450,
                },
                "ip link add plx1 address 02:00:00:00:00:02 mtu 1450 type vxlan id 42 local 10.99.0.11 dstport 4789 nolearning",
            ),
            (
                Op::OnlinkRouteAdd {
                    destination: "10.50.1.0/24".parse().unwrap(),
                    via: Ipv4Addr::new(10, 50, 1, 0),
                    link: "plx1".into(),
                },
                "ip route add 10.50.1.0/24 via 10.50.1.0 dev plx1 onlink",
            ),
            (
                Op::NeighAdd {
                    link: "plx1".into(),
                    address: Ipv4Addr::new(10, 50, 1, 0),
                    mac: "02:00:00:00:00:03".parse().unwrap(),
                },
                "ip neigh add 10.50.1.0 lladdr 02:00:00:00:00:03 dev plx1 nud permanent",
            ),
            (
                Op::FdbAdd {
                    link: "plx1".into(),
                    mac: "02:00:00:00:00:03".parse().unwrap(),
                    dst: Ipv4Addr::new(10, 99, 0, 12),
                },
                "bridge fdb add 02:00:00:00:00:03 dev plx1 dst 10.99.0.12 self permanent",
            ),
            (
                Op::LinkAlias {
                    at: inside.clone(),
                    link: "eth0".into(),
                    alias: "plumb:s/a-1/n".into(),
                    ipv6: Ipv6::NoAddresses,
                },
                "ip -n s-a-1 link set eth0 alias plumb:s/a-1/n addrgenmode none",
            ),
            (
                Op::DefaultRoute {
                    at: inside,
                    gateway: Ipv4Addr::new(10, 0, 0, 1),
                },
                "ip -n s-a-1 route add default via 10.0.0.1",
            ),
        ];
        for (op, command) in cases {
            assert_eq!(op.command(), command);
        }
    }

    #[test]
    fn stopping_processes_waits_the_grace_period_then_kills() {
        let cmd = stop_processes(&["a".into(), "b".into()], 3000);
        assert!(cmd.contains("kill -TERM"));
        assert!(cmd.contains("-lt 30 "));
        assert!(cmd.contains("kill -KILL"));
    }
}

//! plumb: container networks from Linux kernel primitives. The binary is a thin shell: it
//! parses the command line and hands each subcommand to its module.

mod apply;
mod census;
mod cluster;
mod commands;
mod discover;
mod events;
mod failure;
mod faults;
mod load;
mod mesh;
mod oci;
mod output;
mod processes;
mod relay;
mod runfile;
mod stackfile;
mod state;
mod supervisor;
mod supervisor_socket;
mod traces;

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use commands::{Context, Format};
use output::ClosedPipe;
use state::StateDir;

#[derive(Parser)]
#[command(
    name = "plumb",
    version,
    about = "Container networks from Linux kernel primitives: namespaces, veth pairs, bridges, routes, nftables",
    after_help = "First steps:\n  \
        plumb demo           bring up a sample app (nginx, Flask, Redis) and see what to try\n  \
        plumb up --dry-run   what ./plumb.toml would make, as the ip/nft commands you could run by hand"
)]
struct Cli {
    /// Where plumb keeps leases, process ids and logs.
    #[arg(long, global = true, env = "PLUMB_STATE_DIR", default_value = "/var/lib/plumb")]
    state_dir: PathBuf,
    /// None with `CNI_COMMAND` set: plumb runs as a CNI plugin (see `plumb cni`).
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DocsPart {
    Commands,
    Course,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum GraphFormatArg {
    Dot,
    Mermaid,
    Json,
}

#[derive(Subcommand)]
enum TracesAction {
    /// One trace as a waterfall: each span's service, operation, start offset, duration and
    /// status.
    Show {
        /// The trace ID (32 hex digits, as `plumb traces` lists it).
        id: String,
        /// The stack (default: every stack that is up).
        #[arg(short, long)]
        stack: Option<String>,
        /// Print it as JSON, for programs.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Make the kernel match the stack file (idempotent; applies only the difference).
    Up {
        /// The stack file: the networks and services to make.
        #[arg(short, long, default_value = "plumb.toml")]
        file: PathBuf,
        /// Print the plan as a runnable shell script of ip/nft commands and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: print the plan (steps and their operations) as JSON.
        #[arg(long, requires = "dry_run")]
        json: bool,
        /// Supervise the services in this process (Ctrl-C stops them) instead of in the background.
        #[arg(long, conflicts_with = "dry_run")]
        foreground: bool,
        /// Wait until every replica is ready: healthy where it has a health check, else
        /// running (and still running half a second later); fail naming those that are not.
        /// Without it, `up` returns once each replica's program runs.
        #[arg(long, conflicts_with_all = ["dry_run", "foreground"])]
        wait: bool,
        /// Bring up only one host's part of a cluster stack, given by hand as a JSON host
        /// assignment (replicas, overlay blocks and peers): for trying an overlay without the
        /// cluster store. `plumb agent` does the same from the store.
        #[arg(long, value_name = "FILE")]
        assignment: Option<PathBuf>,
    },
    /// Remove everything a stack made, and nothing else.
    Down {
        /// The stack file naming the stack (default: ./plumb.toml when no STACK is given).
        #[arg(short, long, conflicts_with = "stack")]
        file: Option<PathBuf>,
        /// The stack's name, as `plumb ps` shows it (instead of --file).
        stack: Option<String>,
        /// Print the plan as a runnable shell script and change nothing.
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: print the plan (steps and their operations) as JSON.
        #[arg(long, requires = "dry_run")]
        json: bool,
    },
    /// Change how many replicas services of a stack run (until the next `plumb up` of its
    /// file): new replicas are wired and started, removed ones stopped and unwired.
    Scale {
        /// SERVICE=N (or STACK/SERVICE=N), one or more.
        #[arg(required = true, value_name = "SERVICE=N")]
        services: Vec<String>,
        /// The stack (default: the only stack that is up with these services).
        #[arg(short, long)]
        stack: Option<String>,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Join a container someone else made (its network namespace) to a network of a stack
    /// that is up: an address, a veth, DNS, policies, a service's VIP (what a CNI ADD does).
    Attach {
        /// STACK/NAME: the stack, and the container's name in it.
        target: String,
        /// The stack's network to join.
        #[arg(long)]
        network: String,
        /// The container's network namespace (/run/netns/NAME, /proc/PID/ns/net).
        #[arg(long, value_name = "PATH")]
        netns: PathBuf,
        /// The interface's name inside.
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// A service of the stack whose name and VIP it joins.
        #[arg(long)]
        service: Option<String>,
        /// Print the interface (address, gateway, MAC) as JSON, for programs.
        #[arg(long)]
        json: bool,
    },
    /// Take an attached container off its stack: its veth and name go, its namespace and
    /// processes stay (what a CNI DEL does; nothing attached is not an error).
    Detach {
        /// STACK/NAME, as attached.
        target: String,
    },
    /// List the containers of every stack that is up.
    Ps {
        /// Print the containers as JSON, for programs.
        #[arg(long)]
        json: bool,
    },
    /// List each service's virtual IP, ports and endpoints (ready or not, connections received).
    Services {
        /// The stack file naming the stack.
        #[arg(short, long, conflicts_with = "stack")]
        file: Option<PathBuf>,
        /// The stack's name (default: every stack that is up).
        #[arg(short, long)]
        stack: Option<String>,
        /// Print the services as JSON, for programs.
        #[arg(long)]
        json: bool,
    },
    /// Traces a meshed stack kept: a list (newest first), or `plumb traces show ID` as a
    /// waterfall.
    #[command(args_conflicts_with_subcommands = true)]
    Traces {
        #[command(subcommand)]
        action: Option<TracesAction>,
        /// The stack (default: every stack that is up).
        #[arg(short, long)]
        stack: Option<String>,
        /// Only traces through this service.
        #[arg(long)]
        service: Option<String>,
        /// Only traces lasting at least this long (e.g. 100ms).
        #[arg(long, value_parser = humantime::parse_duration)]
        min_duration: Option<std::time::Duration>,
        /// Print them as JSON, for programs.
        #[arg(long)]
        json: bool,
    },
    /// Run a command inside a container's network namespace.
    Exec {
        /// SVC-k, SVC (replica 1) or STACK/SVC-k.
        container: String,
        /// The program to run and its arguments, after `--` (e.g. `-- ip addr`).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Show one network or container, as asked for and as the kernel holds it.
    Inspect {
        /// A network (NET or STACK/NET) or a container (SVC-k, SVC or STACK/SVC-k).
        name: String,
        /// Print it as JSON, for programs.
        #[arg(long)]
        json: bool,
    },
    /// Show a service's or container's output (several replicas: prefixed by container).
    Logs {
        /// SVC or SVC-k (or STACK/...).
        name: String,
        /// Keep printing new output.
        #[arg(short, long)]
        follow: bool,
        /// How many lines of the past to show per container.
        #[arg(long, default_value_t = 100)]
        tail: usize,
    },
    /// Restart every replica of a service.
    Restart {
        /// The service (SVC, or STACK/SVC when several stacks have one of that name).
        service: String,
    },
    /// Stop a service's processes (the containers stay wired).
    Stop {
        /// The service (SVC, or STACK/SVC when several stacks have one of that name).
        service: String,
    },
    /// Start a service stopped with `plumb stop`.
    Start {
        /// The service (SVC, or STACK/SVC when several stacks have one of that name).
        service: String,
    },
    /// Bring up the reference shop app (nginx, API gateway, 3 product replicas, Redis).
    Demo {
        /// Remove the demo (its containers, networks, processes and files) instead, whichever
        /// variant is up.
        #[arg(long)]
        down: bool,
        /// The same app split into tiers on three networks (frontend, backend, database):
        /// stack `shop-seg`, from examples/shop-segmented.
        #[arg(long)]
        segmented: bool,
    },
    /// The course, runnable: the seed's seven assignments (namespaces, veths, bridges, NAT,
    /// services, monitoring, discovery, policies, segmentation, load balancing, Compose,
    /// VXLAN) and the bonuses (scaling, chaos, CNI-style attach), each step's commands run on real kernel
    /// objects in a throwaway sandbox (its own network, mount and PID namespaces) and checked
    /// with real traffic. Interactive on a terminal: run each step, or type it yourself.
    Tour {
        /// Start at this assignment (4) or step (4.2); what the earlier ones make is set up
        /// quietly first.
        start: Option<String>,
        /// List the assignments and steps.
        #[arg(long, conflicts_with_all = ["auto", "slides"])]
        list: bool,
        /// Run straight through without asking (for a talk or CI); exit 1 if a check failed.
        #[arg(long)]
        auto: bool,
        /// Print progress as JSON lines (every command, check and step; a summary at the end);
        /// implies --auto.
        #[arg(long)]
        json: bool,
        /// Write the tour as a slide deck into DIR (tour.md and a self-contained tour.html)
        /// and run nothing.
        #[arg(long, value_name = "DIR", conflicts_with = "auto")]
        slides: Option<PathBuf>,
    },
    /// Network policies: `plumb policy why FROM TO:PORT[/udp]`.
    Policy {
        #[command(subcommand)]
        action: PolicyAction,
    },
    /// Capture packets on a container, a service (every replica) or a network (its bridge).
    Capture {
        /// A container (SVC-k), a service, or a network (each also as STACK/NAME).
        target: String,
        /// One interface of each container (eth0...); default: all of them (also `any`).
        #[arg(short = 'i', long = "interface")]
        interface: Option<String>,
        /// A tcpdump filter expression, compiled to BPF and run in the kernel ("tcp port 80").
        #[arg(long)]
        filter: Option<String>,
        /// Stop after this many packets.
        #[arg(short = 'c', long = "count")]
        count: Option<u64>,
        /// Stop after this long ("10s", "2m").
        #[arg(long, value_parser = humantime::parse_duration)]
        duration: Option<std::time::Duration>,
        /// Write pcapng here (one interface block per CONTAINER/IFACE) instead of printing lines.
        #[arg(short = 'w', long = "write")]
        write: Option<PathBuf>,
    },
    /// What happened: containers created and removed, processes started, exited, restarted,
    /// health changes, with their times.
    Events {
        /// One stack (default: every stack that is up).
        stack: Option<String>,
        /// Keep printing new events.
        #[arg(short, long)]
        follow: bool,
        /// One JSON object per line, for programs.
        #[arg(long)]
        json: bool,
    },
    /// Each container's traffic per second, drops, connections, health and restarts, live.
    Top {
        /// A container, a service or a stack (default: every stack that is up).
        target: Option<String>,
        /// Print one table (rates over one second) and end, for scripts.
        #[arg(long)]
        once: bool,
        /// With --once: print the rows as JSON.
        #[arg(long, requires = "once")]
        json: bool,
    },
    /// A live web view of a stack: its graph with traffic, drops and health each second;
    /// a container's connections, log and a packet capture; traces. Prints the address to open.
    Ui {
        /// The stack (default: the only one that is up, or the current folder's).
        stack: Option<String>,
        /// Where to serve the page (default: the stack file's `ui`, else 127.0.0.1:9465; the
        /// token it prints is needed on every address).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Sockets in containers (with their processes) and the host's tracked flows with their NAT.
    Conns {
        /// A container (SVC-k), a service (all replicas), a stack, each also as STACK/NAME;
        /// default: every container of every stack that is up.
        target: Option<String>,
        /// Print them as JSON, for programs.
        #[arg(long)]
        json: bool,
    },
    /// Send one probe connection from a container and show each hook and nftables rule it met.
    Trace {
        /// The container the probe starts from (SVC-k, SVC or STACK/SVC-k).
        from: String,
        /// TARGET:PORT[/tcp|udp]: TARGET is a container, a service (its VIP) or an IPv4 address.
        to: String,
        /// Print the trace as JSON, for programs.
        #[arg(long)]
        json: bool,
    },
    /// Print a Compose file as the plumb stack file (TOML) of the same stack.
    Convert {
        /// The Compose file (default: ./compose.yaml, compose.yml, docker-compose.yaml or .yml).
        #[arg(conflicts_with = "file_flag")]
        file: Option<PathBuf>,
        /// The same, as -f FILE.
        #[arg(short = 'f', long = "file", value_name = "FILE")]
        file_flag: Option<PathBuf>,
    },
    /// Draw the stack: networks, containers with addresses, published ports, service VIPs.
    Graph {
        /// A stack that is up (instead of --file).
        stack: Option<String>,
        /// The stack file to draw (addresses as `plumb up` gives them).
        #[arg(short, long, default_value = "plumb.toml", conflicts_with = "stack")]
        file: PathBuf,
        /// `dot` for Graphviz (`| dot -Tsvg > stack.svg`), `mermaid` for Markdown, `json` for
        /// programs (the nodes and edges `plumb ui` draws).
        #[arg(long, value_enum, default_value_t = GraphFormatArg::Dot)]
        format: GraphFormatArg,
    },
    /// HTTP/1.1 load through the stack's network: requests/s, latency percentiles, errors by
    /// kind, which replicas answered.
    Bench {
        /// http://HOST[:PORT]/PATH; HOST: a service (its VIP), a container, or an IPv4 address.
        url: String,
        /// Keep-alive connections, each one request at a time.
        #[arg(short = 'c', long = "connections", default_value_t = 10)]
        connections: usize,
        /// How long to send ("10s", "1m").
        #[arg(short = 'd', long = "duration", default_value = "10s", value_parser = humantime::parse_duration)]
        duration: std::time::Duration,
        /// Open loop: this many requests per second at fixed intervals, each timed from when it
        /// was due (default: closed loop, as fast as the server answers).
        #[arg(long)]
        rate: Option<f64>,
        /// Send from this container (SVC-k, SVC or STACK/SVC-k), names resolved as its DNS would.
        #[arg(long)]
        from: Option<String>,
        /// The stack whose names URL and --from use (default: the one that has them).
        #[arg(short, long)]
        stack: Option<String>,
        /// Worker threads (default: one per core, at most one per connection).
        #[arg(long)]
        threads: Option<usize>,
        /// Per connection attempt and per request.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// Also draw latency over time (p50 and p99 of each second) as an SVG here.
        #[arg(long)]
        svg: Option<PathBuf>,
        /// Print the report as JSON, for programs.
        #[arg(long)]
        json: bool,
    },
    /// Faults on purpose: `plumb chaos TARGET --delay 100ms`, `partition A B`, `kill SVC`,
    /// `list`, `clear`.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Chaos {
        #[command(subcommand)]
        action: Option<ChaosAction>,
        #[command(flatten)]
        impair: ImpairArgs,
    },
    /// What the autoscaler of each `[services.X.autoscale]` sees and decides:
    /// `plumb autoscale status`.
    Autoscale {
        #[command(subcommand)]
        action: AutoscaleAction,
    },
    /// Chaos experiments from the stack file's `[[experiments]]`: `plumb experiment run NAME`.
    Experiment {
        #[command(subcommand)]
        action: ExperimentAction,
    },
    /// Hold, drop or damage a fault's frames (started by `plumb chaos`).
    #[command(hide = true)]
    ChaosRelay { stack: String, fault: u32 },
    /// Print the documentation generated from plumb itself: `commands` (the command
    /// reference, docs/commands.md's generated part) or `course` (docs/course.md).
    #[command(hide = true)]
    Docs {
        #[arg(value_enum)]
        what: DocsPart,
    },
    /// Run a meshed replica's sidecar proxy (started by the stack's supervisor).
    #[command(hide = true)]
    Proxy {
        /// The stack's state folder.
        dir: PathBuf,
        /// The replica whose namespace it serves.
        container: String,
    },
    /// Run a stack's supervisor (started by `plumb up`).
    #[command(hide = true)]
    Supervise {
        /// The stack whose processes to run.
        stack: String,
        /// Internal (what `up` passes): an inherited descriptor holding the state directory's
        /// lock, closed once the first `run.json` is applied.
        #[arg(long, hide = true)]
        lock_fd: Option<i32>,
    },
    /// Make this host a member of a cluster: register it in the store (etcd) under a lease,
    /// and run the replicas and overlay entries the cluster places here, until stopped.
    Agent {
        #[command(flatten)]
        store: StoreArgs,
        /// This host's name in the cluster (default: its host name).
        #[arg(long)]
        name: Option<String>,
        /// The link or address other hosts reach this one at (default: the default route's link).
        #[arg(long)]
        underlay: Option<String>,
        /// How long the host stays in the cluster without renewing its lease (e.g. 10s).
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// Keep transmit checksum offload on the VXLAN devices whatever the host's NAT rules.
        /// Without it offload is kept (about 3x the throughput) unless a NAT rule on this host
        /// may rewrite VXLAN, where the checksum workaround is used (calico#3145); a NAT further
        /// along the underlay path is not seen from here.
        #[arg(long)]
        vxlan_offload: bool,
    },
    /// Run a stack across the cluster's hosts: write it into the store, wait until it runs.
    Deploy {
        /// The stack file to run over the cluster.
        #[arg(short, long, default_value = "plumb.toml")]
        file: PathBuf,
        #[command(flatten)]
        store: StoreArgs,
        /// How long to wait for every replica to be ready (0s: do not wait).
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
        /// Print the placement, the ready count and the time taken as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a deployed stack from every host and from the store.
    Undeploy {
        /// The stack's name, as `plumb cluster status` shows it.
        stack: String,
        #[command(flatten)]
        store: StoreArgs,
        /// How long to wait for the hosts to confirm.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        wait: std::time::Duration,
    },
    /// The cluster as its store shows it.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// plumb as a CNI plugin: run with CNI_COMMAND set and no subcommand (as
    /// /usr/lib/cni/plumb), it joins a runtime's containers (podman's) to a stack's network.
    Cni {
        #[command(subcommand)]
        action: CniAction,
    },
}

#[derive(Subcommand)]
enum CniAction {
    /// Print the network configuration list for /etc/cni/net.d/NAME.conflist: plumb (with
    /// the stack and network), then portmap for published ports.
    Conflist {
        /// The stack (it must be up when containers start).
        stack: String,
        /// The stack's network the containers join.
        network: String,
        /// The network's name for the runtime (`podman network ls`); default STACK-NETWORK.
        #[arg(long)]
        name: Option<String>,
    },
    /// Link this plumb binary into the runtime's CNI plugin folder as `plumb`.
    Install {
        /// The CNI plugin folder.
        #[arg(default_value = "/usr/lib/cni")]
        dir: PathBuf,
    },
}

/// How to reach the cluster's store (every cluster command takes these).
#[derive(clap::Args)]
struct StoreArgs {
    /// The store's client URL(s), comma-separated: https://10.0.0.1:2379
    #[arg(long, env = "PLUMB_STORE")]
    store: String,
    /// The folder of this host's client certificate: ca.crt, client.crt, client.key (made by
    /// `plumb cluster init`, as DIR/clients/NAME).
    #[arg(long, env = "PLUMB_STORE_TLS", default_value = "/etc/plumb/tls")]
    tls: PathBuf,
    /// Accept a plain http:// store, without TLS or client certificates: anyone who reaches
    /// it controls the cluster.
    #[arg(long)]
    insecure: bool,
}

impl StoreArgs {
    fn access(self) -> cluster::store::Access {
        cluster::store::Access {
            urls: self.store,
            tls: self.tls,
            insecure: self.insecure,
        }
    }
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Make the cluster's certificates: a CA, the store's (for etcd's --cert-file) and one
    /// client certificate per host or person; files already there are kept.
    Init {
        /// Where to write them (the CA key stays here: keep it off the hosts).
        #[arg(long, default_value = "/etc/plumb/pki")]
        out: PathBuf,
        /// The addresses or names clients reach the store at, comma-separated (its certificate
        /// names them).
        #[arg(long, value_delimiter = ',')]
        store_address: Vec<String>,
        /// Who gets a client certificate (DIR/clients/NAME): host names, and e.g. admin.
        #[arg(long, value_delimiter = ',', default_value = "admin")]
        clients: Vec<String>,
    },
    /// Hosts (alive, underlay, uptime), where each replica runs and whether it is ready, and
    /// each overlay network's blocks with the peers each host has wired.
    Status {
        #[command(flatten)]
        store: StoreArgs,
        /// Print hosts, replicas and overlays as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct ImpairArgs {
    /// A container (web-1), a service (every replica) or a link (web->gateway: only what
    /// web's replicas send to gateway's replicas and VIP).
    #[arg(required = true)]
    target: Option<String>,
    /// Hold each frame the target sends this long ("100ms").
    #[arg(long, value_parser = humantime::parse_duration)]
    delay: Option<std::time::Duration>,
    /// Vary the delay by up to this much either way ("20ms").
    #[arg(long, value_parser = humantime::parse_duration)]
    jitter: Option<std::time::Duration>,
    /// Drop this share of frames ("5%").
    #[arg(long)]
    loss: Option<String>,
    /// Send at most this fast ("1mbit", "500kbit", "100kbps").
    #[arg(long)]
    rate: Option<String>,
    /// Flip a bit in the payload of this share of frames ("1%").
    #[arg(long)]
    corrupt: Option<String>,
    /// Send this share of frames twice ("1%").
    #[arg(long)]
    duplicate: Option<String>,
    #[command(flatten)]
    common: FaultArgs,
}

#[derive(clap::Args)]
struct FaultArgs {
    /// End the fault by itself after this long ("30s"), even if plumb is killed meanwhile.
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    lasts: Option<std::time::Duration>,
    /// The stack (default: the only stack that is up with such a name).
    #[arg(short, long)]
    stack: Option<String>,
    /// Print the tc/ip/nft commands the fault would run, and change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Subcommand)]
enum AutoscaleAction {
    /// Per autoscaled service: its replicas now and the count decided, each target's measure
    /// against the target, and the last decisions with when and why.
    Status {
        /// Only this stack (default: every stack that is up).
        #[arg(short, long)]
        stack: Option<String>,
        /// Print them as JSON, for programs.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ExperimentAction {
    /// Check the steady state, start the faults on schedule, check during and after; print
    /// the timeline and whether the hypothesis held (exit 1 when it did not).
    Run {
        /// The experiment's name in the stack file.
        name: String,
        /// The stack file holding the experiment (its stack must be up).
        #[arg(short, long, default_value = "plumb.toml")]
        file: PathBuf,
        /// Print the timeline and verdict as JSON, for CI.
        #[arg(long)]
        json: bool,
    },
    /// The experiments a stack file holds: name, checks, faults, how long, description.
    List {
        /// The stack file holding the experiments.
        #[arg(short, long, default_value = "plumb.toml")]
        file: PathBuf,
        /// Print them as JSON, for programs.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ChaosAction {
    /// Cut all traffic between two services, containers or networks, both ways.
    Partition {
        /// One side: a service, a container or a network (also as STACK/NAME).
        a: String,
        /// The other side, likewise.
        b: String,
        #[command(flatten)]
        common: FaultArgs,
    },
    /// Kill a running replica of a service at random (by PID); its supervisor restarts it.
    Kill {
        /// The service whose replica to kill (also as STACK/SERVICE).
        service: String,
        /// Kill again this often ("10s"), until --count or Ctrl-C.
        #[arg(long, value_parser = humantime::parse_duration)]
        every: Option<std::time::Duration>,
        /// How many kills (default: 1, or unlimited with --every).
        #[arg(long)]
        count: Option<u32>,
        /// The stack of the service, when several are up.
        #[arg(short, long)]
        stack: Option<String>,
    },
    /// The active faults, with the time each has left.
    List {
        /// Only this stack's faults.
        #[arg(short, long)]
        stack: Option<String>,
        /// Print them as JSON, for programs.
        #[arg(long)]
        json: bool,
    },
    /// Remove faults: one by number, those on a target or service, or all of them.
    Clear {
        /// A fault number, a target as given (`web->gateway`), or a service or container a
        /// fault names; none: every fault.
        target: Option<String>,
        /// Only this stack's faults.
        #[arg(short, long)]
        stack: Option<String>,
    },
}

/// A share given on the command line ("5%") in parts per million; a bad one names its flag.
fn share(flag: &str, value: Option<&str>) -> failure::Result<u32> {
    match value {
        None => Ok(0),
        Some(v) => plumb_core::chaos::parse_percent(v).ok_or_else(|| {
            failure::Failure::new(format!("--{flag} {v:?} is not a share"))
                .hint(format!("give a percentage above 0 and at most 100, e.g. --{flag} 5%"))
                .code(2)
        }),
    }
}

impl ImpairArgs {
    fn impairment(&self) -> failure::Result<plumb_core::chaos::Impairment> {
        let micros = |d: Option<std::time::Duration>| d.map_or(0, |d| d.as_micros() as u64);
        let rate = match self.rate.as_deref() {
            None => 0,
            Some(r) => plumb_core::chaos::parse_rate(r).ok_or_else(|| {
                failure::Failure::new(format!("--rate {r:?} is not a rate"))
                    .hint("give bits per second as tc writes them: 1mbit, 500kbit, 2gbit (or bytes: 100kbps)")
                    .code(2)
            })?,
        };
        Ok(plumb_core::chaos::Impairment {
            delay_us: micros(self.delay),
            jitter_us: micros(self.jitter),
            loss_ppm: share("loss", self.loss.as_deref())?,
            corrupt_ppm: share("corrupt", self.corrupt.as_deref())?,
            duplicate_ppm: share("duplicate", self.duplicate.as_deref())?,
            rate_bps: rate,
        })
    }
}

#[derive(Subcommand)]
enum PolicyAction {
    /// Is FROM -> TO:PORT allowed? Names the deciding rule and the policy's stack-file line.
    /// Exit 0: allowed, 1: denied, 2: bad input.
    Why {
        /// A container (web-1), a service (its first replica), `host`, `outside` or an IPv4 address.
        from: String,
        /// TO:PORT or TO:PORT/udp, TO as for FROM.
        to: String,
        /// The stack file naming the stack.
        #[arg(short, long, conflicts_with = "stack")]
        file: Option<PathBuf>,
        /// The stack's name (default: the only stack that is up).
        #[arg(short, long)]
        stack: Option<String>,
        /// Print the answer as JSON, for programs.
        #[arg(long)]
        json: bool,
        /// An HTTP request's method, for the L7 rules (`methods`) the receiving sidecar
        /// enforces.
        #[arg(long)]
        method: Option<String>,
        /// An HTTP request's path, for the L7 rules (`paths`).
        #[arg(long)]
        path: Option<String>,
        /// The connection comes over mutual TLS from a sidecar of the mesh.
        #[arg(long)]
        mtls: bool,
    },
}

impl Command {
    /// Commands that only report end on a closed pipe; those that change the kernel or run
    /// processes (the supervisor, also in `up --foreground`) carry on and report errors.
    fn on_closed_pipe(&self) -> ClosedPipe {
        match self {
            Command::Up { dry_run: true, .. }
            | Command::Down { dry_run: true, .. }
            | Command::Ps { .. }
            | Command::Services { .. }
            | Command::Autoscale { .. }
            | Command::Traces { .. }
            | Command::Exec { .. }
            | Command::Inspect { .. }
            | Command::Policy { .. }
            | Command::Logs { .. }
            | Command::Graph { .. }
            | Command::Convert { .. }
            | Command::Conns { .. }
            | Command::Events { .. }
            | Command::Top { .. }
            | Command::Capture { .. }
            | Command::Bench { .. } => ClosedPipe::EndsTheCommand,
            Command::Up { .. }
            | Command::Down { .. }
            | Command::Scale { .. }
            | Command::Attach { .. }
            | Command::Detach { .. }
            | Command::Restart { .. }
            | Command::Stop { .. }
            | Command::Start { .. }
            | Command::Demo { .. }
            | Command::Tour { .. }
            | Command::Docs { .. }
            | Command::Trace { .. }
            | Command::Ui { .. }
            | Command::Chaos { .. }
            | Command::Experiment { .. }
            | Command::ChaosRelay { .. }
            | Command::Supervise { .. }
            | Command::Proxy { .. }
            | Command::Agent { .. }
            | Command::Deploy { .. }
            | Command::Undeploy { .. } => ClosedPipe::IsIgnored,
            Command::Cluster { .. } | Command::Cni { .. } => ClosedPipe::EndsTheCommand,
        }
    }
}

/// The descriptor `plumb supervise --lock-fd N` inherited, if it is open.
fn inherited(fd: Option<i32>) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let fd = fd.filter(|fd| *fd > 2)?;
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).ok()?;
    // SAFETY: the descriptor is open (F_GETFD succeeded) and was passed to this process to own.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

fn run_chaos(ctx: &Context, action: Option<ChaosAction>, impair: ImpairArgs) -> failure::Result<()> {
    use commands::chaos::{self, Request};
    match action {
        None => {
            let request = Request::Impair {
                target: impair.target.clone().unwrap_or_default(),
                impairment: impair.impairment()?,
            };
            let c = &impair.common;
            chaos::run(ctx, &request, c.lasts, c.stack.as_deref(), c.dry_run)
        }
        Some(ChaosAction::Partition { a, b, common: c }) => chaos::run(
            ctx,
            &Request::Partition { a, b },
            c.lasts,
            c.stack.as_deref(),
            c.dry_run,
        ),
        Some(ChaosAction::Kill {
            service,
            every,
            count,
            stack,
        }) => chaos::kill(ctx, &service, every, count, stack.as_deref()),
        Some(ChaosAction::List { stack, json }) => chaos::list(ctx, stack.as_deref(), Format::from_json_flag(json)),
        Some(ChaosAction::Clear { target, stack }) => chaos::clear(ctx, target.as_deref(), stack.as_deref()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let ctx = Context {
        state: StateDir::new(cli.state_dir),
    };
    let Some(command) = cli.command else {
        if std::env::var_os("CNI_COMMAND").is_some() {
            return commands::cni::plugin(&ctx);
        }
        use clap::CommandFactory as _;
        let _ = Cli::command().print_help();
        return ExitCode::from(2);
    };
    output::on_closed_pipe(command.on_closed_pipe());
    let result = match command {
        Command::Up {
            file,
            dry_run,
            json,
            foreground,
            wait,
            assignment,
        } => {
            use commands::up::{Mode, Supervision};
            let mode = match (dry_run, foreground, wait) {
                (true, _, _) => Mode::DryRun(Format::from_json_flag(json)),
                (false, true, _) => Mode::Apply(Supervision::Foreground),
                (false, false, true) => Mode::Apply(Supervision::Wait),
                (false, false, false) => Mode::Apply(Supervision::Background),
            };
            if !dry_run {
                commands::up::say_how_to_recover_if_interrupted();
            }
            match assignment.as_deref().map(commands::up::read_assignment).transpose() {
                Ok(assignment) => commands::up::run(&ctx, &file, mode, assignment.as_ref()),
                Err(e) => Err(e),
            }
        }
        Command::Down {
            file,
            stack,
            dry_run,
            json,
        } => {
            use commands::down::Mode;
            let mode = if dry_run {
                Mode::DryRun(Format::from_json_flag(json))
            } else {
                Mode::Apply
            };
            match (file, stack) {
                (_, Some(stack)) => commands::down::run_named(&ctx, &stack, mode),
                (file, None) => stackfile::stack_name(&file.unwrap_or_else(|| PathBuf::from("plumb.toml")))
                    .and_then(|s| commands::down::run(&ctx, &s, mode)),
            }
        }
        Command::Scale {
            services,
            stack,
            dry_run,
        } => commands::up::scale(&ctx, stack.as_deref(), &services, dry_run),
        Command::Attach {
            target,
            network,
            netns,
            ifname,
            service,
            json,
        } => commands::attach::attach(
            &ctx,
            &commands::attach::Request {
                target: &target,
                network: &network,
                netns: &netns,
                ifname: &ifname,
                service: service.as_deref(),
            },
            Format::from_json_flag(json),
        ),
        Command::Detach { target } => commands::attach::detach(&ctx, &target),
        Command::Ps { json } => commands::ps::run(&ctx, Format::from_json_flag(json)),
        Command::Traces {
            action,
            stack,
            service,
            min_duration,
            json,
        } => match action {
            Some(TracesAction::Show { id, stack, json }) => {
                commands::traces::show(&ctx, stack.as_deref(), &id, Format::from_json_flag(json))
            }
            None => commands::traces::list(
                &ctx,
                stack.as_deref(),
                service.as_deref(),
                min_duration,
                Format::from_json_flag(json),
            ),
        },
        Command::Services { file, stack, json } => {
            let format = Format::from_json_flag(json);
            match (file, stack) {
                (Some(file), _) => {
                    stackfile::stack_name(&file).and_then(|s| commands::services::run(&ctx, Some(&s), format))
                }
                (None, stack) => commands::services::run(&ctx, stack.as_deref(), format),
            }
        }
        Command::Exec { container, command } => commands::exec::run(&ctx, &container, &command),
        Command::Inspect { name, json } => commands::inspect::run(&ctx, &name, Format::from_json_flag(json)),
        Command::Logs { name, follow, tail } => {
            let follow = if follow {
                commands::logs::Follow::New
            } else {
                commands::logs::Follow::Once
            };
            commands::logs::run(&ctx, &name, follow, tail)
        }
        Command::Restart { service } => commands::control::run(&ctx, commands::control::Action::Restart, &service),
        Command::Stop { service } => commands::control::run(&ctx, commands::control::Action::Stop, &service),
        Command::Start { service } => commands::control::run(&ctx, commands::control::Action::Start, &service),
        Command::Docs { what } => {
            use clap::CommandFactory as _;
            match what {
                DocsPart::Commands => print!("{}", commands::docs::commands(&Cli::command())),
                DocsPart::Course => print!("{}", commands::docs::course()),
            }
            Ok(())
        }
        Command::Tour {
            start,
            list,
            auto,
            json,
            slides,
        } => commands::tour::run(commands::tour::Args {
            start,
            list,
            auto,
            json,
            slides,
        }),
        Command::Demo { down, segmented } => {
            let action = if down {
                commands::demo::Action::Down
            } else {
                commands::demo::Action::Up
            };
            commands::demo::run(&ctx, action, segmented)
        }
        Command::Policy {
            action:
                PolicyAction::Why {
                    from,
                    to,
                    file,
                    stack,
                    json,
                    method,
                    path,
                    mtls,
                },
        } => {
            use commands::policy::{Which, L7};
            let l7 = L7 {
                method: method.map(|m| m.to_ascii_uppercase()),
                path,
                mtls,
            };
            let which = match (&stack, &file) {
                (Some(s), _) => Which::Stack(s),
                (None, Some(f)) => Which::File(f),
                (None, None) => Which::Default,
            };
            commands::policy::why(&ctx, which, &from, &to, &l7, Format::from_json_flag(json))
        }
        Command::Capture {
            target,
            interface,
            filter,
            count,
            duration,
            write,
        } => commands::capture::run(
            &ctx,
            &target,
            &commands::capture::Options {
                interface: interface.as_deref(),
                filter: filter.as_deref(),
                count,
                duration,
                write: write.as_deref(),
            },
        ),
        Command::Top { target, once, json } => {
            commands::top::run(&ctx, target.as_deref(), once, Format::from_json_flag(json))
        }
        Command::Events { stack, follow, json } => {
            commands::events::run(&ctx, stack.as_deref(), follow, Format::from_json_flag(json))
        }
        Command::Trace { from, to, json } => commands::trace::run(&ctx, &from, &to, Format::from_json_flag(json)),
        Command::Ui { stack, listen } => commands::ui::run(&ctx, stack.as_deref(), listen),
        Command::Conns { target, json } => commands::conns::run(&ctx, target.as_deref(), Format::from_json_flag(json)),
        Command::Convert { file, file_flag } => {
            let default = || {
                let mut names = stackfile::COMPOSE_NAMES.iter().map(PathBuf::from);
                names.clone().find(|p| p.is_file()).or(names.next()).unwrap_or_default()
            };
            let file = file.or(file_flag).unwrap_or_else(default);
            commands::convert::run(&file)
        }
        Command::Graph { stack, file, format } => {
            let format = match format {
                GraphFormatArg::Dot => plumb_core::graph::GraphFormat::Dot,
                GraphFormatArg::Mermaid => plumb_core::graph::GraphFormat::Mermaid,
                GraphFormatArg::Json => plumb_core::graph::GraphFormat::Json,
            };
            commands::graph::run(&ctx, stack.as_deref(), &file, format)
        }
        Command::Bench {
            url,
            connections,
            duration,
            rate,
            from,
            stack,
            threads,
            timeout,
            svg,
            json,
        } => commands::bench::run(
            &ctx,
            &commands::bench::Options {
                url: &url,
                connections,
                duration,
                rate,
                from: from.as_deref(),
                stack: stack.as_deref(),
                threads,
                timeout,
                svg: svg.as_deref(),
                format: Format::from_json_flag(json),
            },
        ),
        Command::Chaos { action, impair } => run_chaos(&ctx, action, impair),
        Command::Autoscale {
            action: AutoscaleAction::Status { stack, json },
        } => commands::autoscale::status(&ctx, stack.as_deref(), Format::from_json_flag(json)),
        Command::Experiment {
            action: ExperimentAction::Run { name, file, json },
        } => commands::experiment::run(&ctx, &name, &file, Format::from_json_flag(json)),
        Command::Experiment {
            action: ExperimentAction::List { file, json },
        } => commands::experiment::list(&file, Format::from_json_flag(json)),
        Command::ChaosRelay { stack, fault } => {
            commands::require_stack_name(&stack).and_then(|()| relay::run(&ctx.state.stack_dir(&stack), fault))
        }
        Command::Proxy { dir, container } => mesh::run(&dir, &container),
        Command::Supervise { stack, lock_fd } => commands::require_stack_name(&stack)
            .and_then(|()| supervisor::Supervisor::new(&ctx.state.stack_dir(&stack), inherited(lock_fd)))
            .and_then(|s| s.run()),
        Command::Agent {
            store,
            name,
            underlay,
            ttl,
            vxlan_offload,
        } => cluster::agent::run(
            &ctx,
            cluster::agent::Options {
                store: store.access(),
                name,
                underlay,
                ttl,
                tx_offload: vxlan_offload,
            },
        ),
        Command::Deploy {
            file,
            store,
            wait,
            json,
        } => commands::cluster::deploy(&store.access(), &file, wait, Format::from_json_flag(json)),
        Command::Undeploy { stack, store, wait } => commands::cluster::undeploy(&store.access(), &stack, wait),
        Command::Cluster {
            action: ClusterAction::Status { store, json },
        } => commands::cluster::status(&store.access(), Format::from_json_flag(json)),
        Command::Cluster {
            action:
                ClusterAction::Init {
                    out,
                    store_address,
                    clients,
                },
        } => commands::cluster::init(&out, &store_address, &clients),
        Command::Cni {
            action: CniAction::Conflist { stack, network, name },
        } => commands::cni::conflist(&ctx, &stack, &network, name.as_deref()),
        Command::Cni {
            action: CniAction::Install { dir },
        } => commands::cni::install(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            // Written, not eprintln!: a closed stderr must not turn a failure into a panic.
            if !failure.message.is_empty() {
                let _ = writeln!(std::io::stderr(), "plumb: {failure}");
            }
            ExitCode::from(u8::try_from(failure.code).unwrap_or(1))
        }
    }
}

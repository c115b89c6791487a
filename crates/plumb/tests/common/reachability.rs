//! A reachability truth table, in the style of the Kubernetes network-policy e2e tests:
//! every source probes every target on every port and protocol with real packets, and the
//! observed matrix is compared with an expected one, printed as two grids (rows = from,
//! columns = to:port/proto, `.` allowed, `X` denied) with the mismatches listed.
//!
//! Each target is a container namespace plus one of its addresses. One server per target
//! namespace listens on every (address, port, protocol) of that namespace's targets (TCP:
//! answers the connection; UDP: echoes a reply) and always answers with the target's label,
//! so a probe counts as allowed only if the *intended* target answered (a DNAT to the wrong
//! container, or a neighbour answering for an address, is a denial here, and is reported).
//! Each source runs one python script that probes all its cells at once (one thread per
//! cell, 1 s timeout). UDP datagrams carry a probe id the server logs, so a datagram that
//! arrived counts as allowed even if its reply was lost: a denial means nothing arrived.
//! The sources run in parallel, so a whole matrix takes about 1-2 s.
//!
//! Use: `Reachability::new(sources, targets, ports, protos)`, `expect(rule)`, `listen(sb)`
//! once, then `assert_matches(sb, &expected)` as often as the rules change.

use super::{text, Sandbox};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Distinguishes the datagrams of one probe run from another's in the servers' logs.
static RUN: AtomicU32 = AtomicU32::new(0);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// How a source addresses a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// The target's own address (containers; or a machine that routes the subnets via the host).
    Direct,
    /// This address instead (a host address, so only published ports can lead to the target),
    /// with the same port number as the column.
    Address(String),
}

/// Where probes start: a namespace of the sandbox (a container, or `outside`).
#[derive(Clone, Debug)]
pub struct Source {
    pub label: String,
    pub ns: String,
    pub via: Via,
}

impl Source {
    /// A container (or any namespace) probing targets at their own addresses.
    pub fn ns(label: &str, ns: &str) -> Source {
        Source {
            label: label.into(),
            ns: ns.into(),
            via: Via::Direct,
        }
    }

    /// The sandbox host itself (plumb's "host"), probing targets at their own addresses.
    pub fn host(label: &str) -> Source {
        Source {
            label: label.into(),
            ns: String::new(),
            via: Via::Direct,
        }
    }

    /// A namespace (e.g. `outside`) probing every target through `address` (e.g. the host's
    /// uplink address): only a published port can lead to the target there.
    pub fn through(label: &str, ns: &str, address: &str) -> Source {
        Source {
            label: label.into(),
            ns: ns.into(),
            via: Via::Address(address.into()),
        }
    }
}

/// A container namespace and one of its addresses.
#[derive(Clone, Debug)]
pub struct Target {
    pub label: String,
    pub ns: String,
    pub addr: String,
}

impl Target {
    pub fn new(label: &str, ns: &str, addr: &str) -> Target {
        Target {
            label: label.into(),
            ns: ns.into(),
            addr: addr.into(),
        }
    }

    /// The target at the IPv4 address of interface `ifname` in namespace `ns`, read from the
    /// kernel (works for any stack, whatever `plumb ps` lists).
    pub fn of(sb: &Sandbox, label: &str, ns: &str, ifname: &str) -> Target {
        let out = sb.ok(&format!("ip -n {ns} -4 -o addr show dev {ifname}"));
        let addr = out
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("no IPv4 address on {ns}/{ifname}: {out}"))
            .to_string();
        Target::new(label, ns, &addr)
    }
}

/// One column: a target on a port and protocol.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Column {
    pub target: usize,
    pub port: u16,
    pub proto: Proto,
}

/// The probes to run: sources x targets x ports x protocols.
pub struct Reachability {
    pub sources: Vec<Source>,
    pub targets: Vec<Target>,
    pub ports: Vec<u16>,
    pub protos: Vec<Proto>,
}

/// Allowed (true) / denied (false), indexed [source][column], plus what each probe saw (the
/// label that answered, or `!` and the error), for the report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Matrix {
    pub cells: Vec<Vec<bool>>,
    pub seen: Vec<Vec<String>>,
}

impl Reachability {
    pub fn new(sources: Vec<Source>, targets: Vec<Target>, ports: &[u16], protos: &[Proto]) -> Self {
        Reachability {
            sources,
            targets,
            ports: ports.to_vec(),
            protos: protos.to_vec(),
        }
    }

    /// Columns in display order: per target, per port, per protocol.
    pub fn columns(&self) -> Vec<Column> {
        let mut cols = Vec::new();
        for target in 0..self.targets.len() {
            for &port in &self.ports {
                for &proto in &self.protos {
                    cols.push(Column { target, port, proto });
                }
            }
        }
        cols
    }

    pub fn column_label(&self, c: &Column) -> String {
        format!("{}:{}/{}", self.targets[c.target].label, c.port, c.proto.name())
    }

    /// The expected matrix from a rule (source, target, port, protocol) -> allowed.
    pub fn expect(&self, rule: impl Fn(&Source, &Target, u16, Proto) -> bool) -> Matrix {
        let cols = self.columns();
        let cells: Vec<Vec<bool>> = self
            .sources
            .iter()
            .map(|s| {
                cols.iter()
                    .map(|c| rule(s, &self.targets[c.target], c.port, c.proto))
                    .collect()
            })
            .collect();
        let seen = cells
            .iter()
            .map(|r| r.iter().map(|_| String::new()).collect())
            .collect();
        Matrix { cells, seen }
    }

    /// Starts the listeners: one server per target namespace, on every (address, port,
    /// protocol) of its targets, answering with the target's label. They live in container
    /// namespaces, so the sandbox ends them by PID when dropped. Returns once all are ready.
    pub fn listen(&self, sb: &Sandbox) {
        let mut by_ns: BTreeMap<&str, Vec<&Target>> = BTreeMap::new();
        for t in &self.targets {
            by_ns.entry(t.ns.as_str()).or_default().push(t);
        }
        let mut ready_files = Vec::new();
        for (ns, targets) in by_ns {
            let mut socks = Vec::new();
            // Broadcast and multicast reach only sockets bound to the wildcard address.
            for &port in &self.ports {
                if self.protos.contains(&Proto::Udp) {
                    socks.push(format!("('0.0.0.0',{port},'udp','{}')", group_label(ns)));
                }
            }
            for t in targets {
                for &port in &self.ports {
                    for &proto in &self.protos {
                        socks.push(format!("('{}',{port},'{}','{}')", t.addr, proto.name(), t.label));
                    }
                }
            }
            let ready = sb.dir.join(format!("reach-ready-{ns}"));
            let log = self.log(sb, ns);
            let code = format!(
                r#"import socket, selectors
sel = selectors.DefaultSelector()
for addr, port, proto, label in [{socks}]:
    if proto == 'tcp':
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
        s.listen(64)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, port))
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, (proto, label.encode()))
log = open('{log}', 'a', buffering=1)
open('{ready}', 'w').write('ready')
while True:
    for key, _ in sel.select():
        proto, label = key.data
        try:
            if proto == 'tcp':
                c, _ = key.fileobj.accept()
                c.setblocking(True)
                c.sendall(label + b'\n')
                c.close()
            else:
                d, a = key.fileobj.recvfrom(200)
                log.write(label.decode() + ' ' + d.decode(errors='replace') + '\n')
                key.fileobj.sendto(label + b'\n', a)
        except OSError:
            pass
"#,
                socks = socks.join(","),
                ready = ready.display(),
                log = log.display()
            );
            let path = sb.write(&format!("reach-serve-{ns}.py"), &code);
            let _ = std::fs::remove_file(&ready);
            sb.spawn_in(ns, &format!("/usr/bin/python3 {}", path.display()));
            ready_files.push((ns.to_string(), ready));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (ns, file) in ready_files {
            while !file.exists() {
                assert!(Instant::now() < deadline, "reachability server in {ns} did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Runs every probe and returns the observed matrix. One python script per source probes
    /// all of its cells in parallel threads (TCP: connect and read the label, 1 s; UDP: a
    /// connected socket sends up to 3 datagrams 300 ms apart and waits for the echoed label);
    /// the sources run in parallel too. A cell is allowed only if the intended target answered,
    /// or (UDP) logged the probe's datagram.
    pub fn probe(&self, sb: &Sandbox) -> Matrix {
        let cols = self.columns();
        let results: Vec<(Vec<bool>, Vec<String>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .sources
                .iter()
                .map(|s| scope.spawn(|| self.probe_from(sb, s, &cols)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let (cells, seen) = results.into_iter().unzip();
        Matrix { cells, seen }
    }

    /// The file where the server in `ns` logs every UDP datagram it received.
    fn log(&self, sb: &Sandbox, ns: &str) -> std::path::PathBuf {
        sb.dir.join(format!("reach-log-{ns}"))
    }

    fn probe_from(&self, sb: &Sandbox, source: &Source, cols: &[Column]) -> (Vec<bool>, Vec<String>) {
        let probes: Vec<String> = cols
            .iter()
            .map(|c| {
                let t = &self.targets[c.target];
                let addr = match &source.via {
                    Via::Direct => t.addr.as_str(),
                    Via::Address(a) => a.as_str(),
                };
                format!("('{addr}',{},'{}')", c.port, c.proto.name())
            })
            .collect();
        let run = RUN.fetch_add(1, Ordering::SeqCst);
        let code = format!(
            r#"import socket, threading, json
probes = [{probes}]
out = [None] * len(probes)
def run(i, addr, port, proto):
    payload = ('{run}:%d' % i).encode()
    try:
        if proto == 'tcp':
            s = socket.create_connection((addr, port), timeout=1)
            s.settimeout(1)
            out[i] = s.recv(100).decode().strip() or '!closed'
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.connect((addr, port))
            s.settimeout(0.3)
            for _ in range(3):
                s.send(payload)
                try:
                    out[i] = s.recv(100).decode().strip()
                    break
                except socket.timeout:
                    pass
            else:
                out[i] = '!timeout'
    except Exception as e:
        out[i] = '!' + type(e).__name__
threads = [threading.Thread(target=run, args=(i,) + p) for i, p in enumerate(probes)]
for t in threads: t.start()
for t in threads: t.join()
print(json.dumps(out))
"#,
            probes = probes.join(",")
        );
        let file: String = source
            .label
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = sb.write(&format!("reach-probe-{file}.py"), &code);
        let netns = if source.ns.is_empty() {
            String::new()
        } else {
            format!("ip netns exec {} ", source.ns)
        };
        let out = sb.sh(&format!("{netns}timeout 10 python3 {}", path.display()));
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "probes from {} failed: {stdout} {}",
            source.label,
            text(&out.stderr)
        );
        let seen: Vec<String> = serde_json::from_str(stdout.trim()).expect("probe output");
        // A UDP datagram that reached its target counts as allowed even if the reply was lost:
        // a denial means nothing arrived, not just that nothing came back.
        let mut seen = seen;
        let allowed = cols
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let t = &self.targets[c.target];
                if seen[i] == t.label {
                    return true;
                }
                let entry = format!("{} {run}:{i}", t.label);
                let arrived =
                    std::fs::read_to_string(self.log(sb, &t.ns)).is_ok_and(|l| l.lines().any(|line| line == entry));
                if arrived {
                    seen[i] = format!("{} (arrived at {}, no reply)", seen[i], t.label);
                }
                arrived
            })
            .collect();
        (allowed, seen)
    }

    /// Broadcast and multicast: every container source (not the host, not through an address)
    /// sends UDP datagrams to each of `groups` on each UDP port; a cell (source, target
    /// namespace, group, port) is allowed if that namespace's wildcard listener logged it
    /// (the sender's own namespace included: the kernel loops its broadcasts back). Compared
    /// with `expected(source, target namespace, group, port)`; the message lists each
    /// mismatch. Call `listen` first.
    pub fn assert_groups(
        &self,
        sb: &Sandbox,
        groups: &[&str],
        expected: impl Fn(&Source, &str, &str, u16) -> bool,
    ) -> String {
        let namespaces: BTreeSet<&str> = self.targets.iter().map(|t| t.ns.as_str()).collect();
        let sources: Vec<&Source> = self
            .sources
            .iter()
            .filter(|s| s.via == Via::Direct && !s.ns.is_empty())
            .collect();
        let run = RUN.fetch_add(1, Ordering::SeqCst);
        std::thread::scope(|scope| {
            for (si, s) in sources.iter().enumerate() {
                let sends: Vec<String> = groups
                    .iter()
                    .enumerate()
                    .flat_map(|(gi, g)| {
                        self.ports
                            .iter()
                            .map(move |p| format!("('{g}',{p},'g{run}:{si}:{gi}:{p}')"))
                    })
                    .collect();
                let code = format!(
                    "import socket, time\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                     s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)\n\
                     for _ in range(3):\n    for g, p, m in [{}]:\n        s.sendto(m.encode(), (g, p))\n    time.sleep(0.2)\n",
                    sends.join(",")
                );
                let path = sb.write(&format!("reach-groups-{run}-{si}.py"), &code);
                let ns = s.ns.clone();
                scope.spawn(move || sb.ok(&format!("ip netns exec {ns} timeout 10 python3 {}", path.display())));
            }
        });
        std::thread::sleep(Duration::from_millis(300));
        let mut mismatches = Vec::new();
        let mut cells = 0;
        for (si, s) in sources.iter().enumerate() {
            for (gi, g) in groups.iter().enumerate() {
                for &port in &self.ports {
                    for ns in &namespaces {
                        let log = std::fs::read_to_string(self.log(sb, ns)).unwrap_or_default();
                        let entry = format!("{} g{run}:{si}:{gi}:{port}", group_label(ns));
                        let got = log.lines().any(|l| l == entry);
                        let want = expected(s, ns, g, port);
                        cells += 1;
                        if got != want {
                            let say = |b: bool| if b { "allowed" } else { "denied" };
                            mismatches.push(format!(
                                "  {} -> {ns} via {g}:{port}/udp: expected {}, observed {}",
                                s.label,
                                say(want),
                                say(got)
                            ));
                        }
                    }
                }
            }
        }
        let report = format!(
            "broadcast and multicast: {cells} probes, {} mismatches\n{}",
            mismatches.len(),
            mismatches.join("\n")
        );
        assert!(mismatches.is_empty(), "{report}");
        report
    }

    /// Both grids, a comparison grid when they differ, and a summary listing each mismatch
    /// with what the probe saw (Kubernetes e2e style).
    pub fn render(&self, expected: &Matrix, observed: &Matrix) -> String {
        let cols = self.columns();
        let per_target = self.ports.len() * self.protos.len();
        let group_width = |t: &Target| t.label.len().max(2 * per_target - 1);
        let row_width = self.sources.iter().map(|s| s.label.len()).max().unwrap_or(0).max(7);
        let order: Vec<String> = self
            .ports
            .iter()
            .flat_map(|p| self.protos.iter().map(move |pr| format!("{p}/{}", pr.name())))
            .collect();
        let mismatches: BTreeSet<(usize, usize)> = (0..self.sources.len())
            .flat_map(|r| (0..cols.len()).map(move |c| (r, c)))
            .filter(|&(r, c)| expected.cells[r][c] != observed.cells[r][c])
            .collect();
        let grid = |out: &mut String, title: &str, m: &Matrix, mark: bool| {
            let _ = writeln!(out, "{title}");
            let _ = write!(out, "{:row_width$}", "from\\to");
            for t in &self.targets {
                let _ = write!(out, " | {:w$}", t.label, w = group_width(t));
            }
            out.truncate(out.trim_end_matches(' ').len());
            let _ = writeln!(out);
            for (r, s) in self.sources.iter().enumerate() {
                let _ = write!(out, "{:row_width$}", s.label);
                for (ti, t) in self.targets.iter().enumerate() {
                    let cells: Vec<&str> = (0..per_target)
                        .map(|k| {
                            let c = ti * per_target + k;
                            if mark && mismatches.contains(&(r, c)) {
                                "*"
                            } else if m.cells[r][c] {
                                "."
                            } else {
                                "X"
                            }
                        })
                        .collect();
                    let _ = write!(out, " | {:w$}", cells.join(" "), w = group_width(t));
                }
                out.truncate(out.trim_end_matches(' ').len());
                let _ = writeln!(out);
            }
        };
        let mut out = String::new();
        let _ = writeln!(
            out,
            "reachability: rows = from, columns = to (each target: {}); . allowed, X denied, * mismatch",
            order.join(" ")
        );
        grid(&mut out, "expected:", expected, false);
        grid(&mut out, "observed:", observed, false);
        if !mismatches.is_empty() {
            grid(
                &mut out,
                "comparison (observed, * where it differs from expected):",
                observed,
                true,
            );
        }
        let _ = writeln!(
            out,
            "summary: {} probes, {} allowed, {} denied, {} mismatches",
            self.sources.len() * cols.len(),
            observed.cells.iter().flatten().filter(|a| **a).count(),
            observed.cells.iter().flatten().filter(|a| !**a).count(),
            mismatches.len()
        );
        for (r, c) in &mismatches {
            let _ = writeln!(
                out,
                "  {} -> {}: expected {}, observed {} (probe saw {:?})",
                self.sources[*r].label,
                self.column_label(&cols[*c]),
                if expected.cells[*r][*c] { "allowed" } else { "denied" },
                if observed.cells[*r][*c] { "allowed" } else { "denied" },
                observed.seen[*r][*c]
            );
        }
        out
    }

    /// Probes and asserts the observed matrix is the expected one; the message prints both
    /// grids. Call `listen` once first (the listeners stay up, so one set of listeners serves
    /// several expectations, e.g. before and after a policy change). Returns the rendering.
    pub fn assert_matches(&self, sb: &Sandbox, expected: &Matrix) -> String {
        let observed = self.probe(sb);
        let report = self.render(expected, &observed);
        assert!(
            expected.cells == observed.cells,
            "reachability differs from expected\n{report}"
        );
        report
    }
}

/// The label a namespace's wildcard UDP listener logs its datagrams under.
fn group_label(ns: &str) -> String {
    format!("group@{ns}")
}

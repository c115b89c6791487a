//! The course as data: the seed's seven assignments (and the bonuses plumb has) as steps, each
//! with its explanation, diagram, the exact commands, the state to show before and after, and
//! the checks that prove the step worked (real probes: ping, a TCP/HTTP request, a DNS query).
//! One source drives `plumb tour` (which runs the steps in a throwaway sandbox), its slide deck
//! (`plumb tour --slides`) and the docs' course chapter (docs/course.md). Pure: no I/O here.

use std::fmt::Write as _;

/// One assignment of the seed (8: the bonuses).
pub struct Assignment {
    pub number: u8,
    pub title: &'static str,
    pub summary: &'static str,
    /// Earlier assignments whose steps make the state this one starts from (`plumb tour N`
    /// runs them first, quietly).
    pub builds_on: &'static [u8],
    pub steps: &'static [Step],
}

/// One step: read, look at the picture, run the commands (or type them), see the effect.
pub struct Step {
    /// "1.3": assignment and step.
    pub id: &'static str,
    pub title: &'static str,
    pub explain: &'static str,
    pub diagram: &'static str,
    /// Files the step writes into the tour's folder before its commands (a stack file...).
    pub files: &'static [(&'static str, &'static str)],
    /// What the learner is asked to do when typing the commands themselves.
    pub task: &'static str,
    /// The commands, run in order by `bash -c` in the tour's folder, inside the sandbox.
    pub commands: &'static [&'static str],
    /// Read-only commands showing the state the step changes, run before and after.
    pub show: &'static [&'static str],
    /// How we know it worked.
    pub checks: &'static [Check],
}

/// A real probe: a shell command (ping, curl, redis-cli, dig...) whose exit status says
/// whether the traffic passed. It is never a match on what the learner typed.
pub struct Check {
    pub what: &'static str,
    pub run: &'static str,
    pub expect: Expect,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The probe succeeds (retried for up to 20 s: a server may still be starting).
    Passes,
    /// The probe fails: the traffic is blocked (tried once; the probe has its own timeout).
    Blocked,
}

/// A step's position in the course, by its id ("4.2").
pub fn find_step(id: &str) -> Option<(&'static Assignment, &'static Step)> {
    COURSE
        .iter()
        .flat_map(|a| a.steps.iter().map(move |s| (a, s)))
        .find(|(_, s)| s.id == id)
}

pub fn assignment(number: u8) -> Option<&'static Assignment> {
    COURSE.iter().find(|a| a.number == number)
}

/// Every assignment `number` needs run before it (transitively), in course order.
pub fn prerequisites(number: u8) -> Vec<u8> {
    let mut needed = Vec::new();
    let mut todo = vec![number];
    while let Some(n) = todo.pop() {
        for &b in assignment(n).map(|a| a.builds_on).unwrap_or(&[]) {
            if !needed.contains(&b) {
                needed.push(b);
                todo.push(b);
            }
        }
    }
    needed.sort_unstable();
    needed
}

/// Where `plumb tour ARG` starts: "4" (an assignment) or "4.2" (a step).
pub fn parse_start(arg: &str) -> Result<(u8, Option<&'static str>), String> {
    if let Some((_, step)) = find_step(arg) {
        let number = arg.split('.').next().and_then(|n| n.parse().ok()).unwrap_or(0);
        return Ok((number, Some(step.id)));
    }
    match arg.parse::<u8>().ok().and_then(assignment) {
        Some(a) => Ok((a.number, None)),
        None => Err(format!(
            "no assignment or step {arg:?}: the tour has assignments 1-{} and steps such as 1.3 (`plumb tour --list`)",
            COURSE.len()
        )),
    }
}

/// The course's table of contents, for `plumb tour --list`.
pub fn list() -> String {
    let mut out = String::new();
    for a in COURSE {
        let _ = writeln!(out, "{}  {}", a.number, a.title);
        for s in a.steps {
            let _ = writeln!(out, "   {:<5} {}", s.id, s.title);
        }
    }
    out
}

/// The course as Markdown: one section per assignment, one subsection per step with its
/// explanation, diagram, commands and checks. `heading` is the level of the assignments' titles
/// (2 for the docs chapter).
pub fn markdown(heading: usize) -> String {
    let h = "#".repeat(heading);
    let mut out = String::new();
    for a in COURSE {
        let _ = writeln!(out, "{h} {}. {}\n\n{}\n", a.number, a.title, a.summary);
        if !a.builds_on.is_empty() {
            let list: Vec<String> = a.builds_on.iter().map(|n| n.to_string()).collect();
            let _ = writeln!(
                out,
                "Builds on assignment {} (`plumb tour {}` runs it first).\n",
                list.join(" and "),
                a.number
            );
        }
        for s in a.steps {
            let _ = writeln!(out, "{h}# {} {}\n\n{}\n", s.id, s.title, s.explain);
            let _ = writeln!(out, "```text\n{}\n```\n", s.diagram.trim_matches('\n'));
            for (name, content) in s.files {
                let lang = if name.ends_with(".toml") {
                    "toml"
                } else if name.ends_with(".py") {
                    "python"
                } else if name.ends_with(".yaml") {
                    "yaml"
                } else {
                    "text"
                };
                let _ = writeln!(out, "`{name}`:\n\n```{lang}\n{}\n```\n", content.trim_end());
            }
            if !s.commands.is_empty() {
                let _ = writeln!(out, "```sh\n{}\n```\n", s.commands.join("\n"));
            }
            if !s.show.is_empty() {
                let _ = writeln!(
                    out,
                    "Look at the state before and after:\n\n```sh\n{}\n```\n",
                    s.show.join("\n")
                );
            }
            let _ = writeln!(out, "The checks (`plumb tour {}` runs them):\n", s.id);
            for c in s.checks {
                let verb = match c.expect {
                    Expect::Passes => "passes",
                    Expect::Blocked => "is blocked",
                };
                let _ = writeln!(out, "- {} ({verb}): `{}`", c.what, c.run);
            }
            out.push('\n');
        }
    }
    out
}

/// The course as a slide deck in Markdown (slides separated by `---`, as Marp, reveal.js
/// and Deckset read them): a title slide, one per assignment, one per step.
pub fn slides_markdown() -> String {
    let mut out = String::from(
        "# Container networking from scratch\n\nThe seed's course, run with `plumb tour`: namespaces, veths, bridges, NAT, services,\nmonitoring, discovery, policies, segmentation, load balancing, Compose, VXLAN, chaos, scaling.\n",
    );
    for a in COURSE {
        let _ = write!(out, "\n---\n\n# {}. {}\n\n{}\n", a.number, a.title, a.summary);
        for s in a.steps {
            let _ = write!(
                out,
                "\n---\n\n## {} {}\n\n{}\n\n```text\n{}\n```\n",
                s.id,
                s.title,
                s.explain,
                s.diagram.trim_matches('\n')
            );
            if !s.commands.is_empty() {
                let _ = write!(out, "\n```sh\n{}\n```\n", s.commands.join("\n"));
            }
            for c in s.checks {
                let mark = match c.expect {
                    Expect::Passes => "✓",
                    Expect::Blocked => "✗",
                };
                let _ = write!(out, "\n- {mark} {}: `{}`", c.what, c.run);
            }
            out.push('\n');
        }
    }
    out
}

/// The same deck as one self-contained HTML file (inline style and script, no external URL):
/// arrow keys, space or a click move between slides; `#7` in the address opens slide 7.
pub fn slides_html() -> String {
    let mut slides = vec![format!(
        "<h1>Container networking from scratch</h1><p>The seed's course, run with <code>plumb tour</code>: namespaces, veths, bridges, NAT, services, monitoring, discovery, policies, segmentation, load balancing, Compose, VXLAN, chaos, scaling.</p><p class=\"hint\">→ / space: next · ←: back</p>"
    )];
    for a in COURSE {
        slides.push(format!(
            "<h1>{}. {}</h1><p>{}</p>",
            a.number,
            escape(a.title),
            escape(a.summary)
        ));
        for s in a.steps {
            // The diagram across the slide (they are wide), then the words and checks beside
            // the commands.
            let mut body = format!(
                "<h2>{} {}</h2><pre class=\"diagram\">{}</pre><div class=\"cols\"><div><p>{}</p><ul>",
                s.id,
                escape(s.title),
                escape(s.diagram.trim_matches('\n')),
                escape(s.explain)
            );
            for c in s.checks {
                let (class, mark) = match c.expect {
                    Expect::Passes => ("pass", "✓"),
                    Expect::Blocked => ("block", "✗"),
                };
                let _ = write!(
                    body,
                    "<li class=\"{class}\">{mark} {} <code>{}</code></li>",
                    escape(c.what),
                    escape(c.run)
                );
            }
            body.push_str("</ul></div>");
            if !s.commands.is_empty() {
                let _ = write!(body, "<pre class=\"cmd\">{}</pre>", escape(&s.commands.join("\n")));
            }
            body.push_str("</div>");
            slides.push(body);
        }
    }
    let sections: String = slides
        .iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "<section id=\"s{}\">{s}<footer>{}/{}</footer></section>\n",
                i + 1,
                i + 1,
                slides.len()
            )
        })
        .collect();
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Container networking from scratch (plumb tour)</title>\n<style>{SLIDES_CSS}</style></head>\n<body>\n{sections}<script>{SLIDES_JS}</script>\n</body></html>\n"
    )
}

const SLIDES_CSS: &str = "body{margin:0;background:#111;color:#eee;font:18px/1.4 system-ui,sans-serif}\
section{display:none;box-sizing:border-box;width:100vw;height:100vh;padding:4vh 5vw;overflow:auto;position:relative}\
section.on{display:block}h1{font-size:2.4em;margin-top:20vh}h2{color:#7cc4ff}\
.cols{display:flex;gap:3vw;align-items:flex-start}.cols>*{flex:1;min-width:0}\
pre{background:#1d1d1d;padding:.8em;border-radius:6px;overflow:auto;font-size:.8em}\
pre.cmd{color:#b5f5a0;margin:0}pre.diagram{color:#ffd479;font-size:.75em;line-height:1.25}code{color:#b5f5a0}\
li.block code{color:#ff9a9a}.hint{color:#888}footer{position:absolute;right:2vw;bottom:2vh;color:#666}";

const SLIDES_JS: &str = "var s=document.querySelectorAll('section'),i=0;\
function go(n){i=Math.max(0,Math.min(s.length-1,n));s.forEach(function(x,k){x.className=k==i?'on':''});history.replaceState(null,'','#'+(i+1))}\
document.addEventListener('keydown',function(e){if(e.key=='ArrowRight'||e.key==' '||e.key=='PageDown')go(i+1);if(e.key=='ArrowLeft'||e.key=='PageUp')go(i-1);if(e.key=='Home')go(0);if(e.key=='End')go(s.length-1)});\
document.addEventListener('click',function(){go(i+1)});go((parseInt(location.hash.slice(1))||1)-1);";

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

// ---------------------------------------------------------------------------------------------
// The course.

/// The web service of the plumb-way stack: answers every GET with its container's name, so a
/// client sees which replica served it.
const HELLO_PY: &str = r#"# Answers every GET with the container's name (its hostname): which replica served you.
import http.server, os

class Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from {os.uname().nodename}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Hello).serve_forever()
"#;

/// The manual load balancer's backends: answer with the name given on the command line.
const WHOAMI_PY: &str = r#"# python3 whoami.py NAME: answers every GET on port 8080 with "hello from NAME".
import http.server, sys

name = sys.argv[1]

class Whoami(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from {name}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Whoami).serve_forever()
"#;

const STACK_BASIC: &str = r#"# The tour's app: a web server and a cache (Redis) on one network.
name = "tour"

[networks.app]
subnet = "10.89.50.0/24"

[services.web]
command = ["/usr/bin/python3", "hello.py"]
expose = [8080]
health = { http = "/", port = 8080, interval = "1s" }

[services.cache]
command = ["/usr/bin/redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no",
           "--save", "", "--appendonly", "no", "--dir", "/tmp", "--daemonize", "no"]
expose = [6379]
health = { tcp = 6379, interval = "1s" }
"#;

const STACK_POLICY: &str = r#"# Assignment 4A: a visitor joins the network; only web may talk to the cache.
name = "tour"

[networks.app]
subnet = "10.89.50.0/24"

[services.web]
command = ["/usr/bin/python3", "hello.py"]
expose = [8080]
health = { http = "/", port = 8080, interval = "1s" }

[services.cache]
command = ["/usr/bin/redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no",
           "--save", "", "--appendonly", "no", "--dir", "/tmp", "--daemonize", "no"]
expose = [6379]
health = { tcp = 6379, interval = "1s" }

# A bare container: a namespace wired into the network, no program of its own.
[services.visitor]

[[policies]]
from = "web"
to = "cache"
ports = [6379]
"#;

const STACK_SEGMENTED: &str = r#"# Assignment 4B: tiers on their own networks, and three web replicas behind one VIP.
name = "tour"

[networks.front]
subnet = "10.89.51.0/24"

# Internal: no way out, nothing in from the host's side.
[networks.back]
subnet = "10.89.52.0/24"
internal = true

[services.web]
networks = ["front", "back"]
replicas = 3
command = ["/usr/bin/python3", "hello.py"]
expose = [8080]
health = { http = "/", port = 8080, interval = "1s" }

[services.cache]
networks = ["back"]
command = ["/usr/bin/redis-server", "--port", "6379", "--bind", "0.0.0.0", "--protected-mode", "no",
           "--save", "", "--appendonly", "no", "--dir", "/tmp", "--daemonize", "no"]
expose = [6379]
health = { tcp = 6379, interval = "1s" }

[services.visitor]
networks = ["front"]

[[policies]]
from = "web"
to = "cache"
ports = [6379]
"#;

const COMPOSE: &str = r#"# The tour's app (assignment 2's stack) as a Compose file: a second stack beside the first.
name: tour-compose

x-host: &host
  image: docker.io/library/debian:12
  x-plumb: { host: true }

services:
  web:
    <<: *host
    command: [/usr/bin/python3, hello.py]
    expose: ["8080"]
  cache:
    <<: *host
    command: [/usr/bin/redis-server, --port, "6379", --bind, 0.0.0.0, --protected-mode, "no",
              --save, "", --appendonly, "no", --dir, /tmp, --daemonize, "no"]
    expose: ["6379"]
"#;

pub static COURSE: &[Assignment] = &[
    Assignment {
        number: 1,
        title: "The basics: namespaces, veths, a bridge, NAT",
        summary: "Everything a container network is, by hand with ip and nft: two namespaces \
                  (red and blue), a bridge joining them, a default route and a masquerade rule \
                  to reach the outside.",
        builds_on: &[],
        steps: &[
            Step {
                id: "1.1",
                title: "The host's own namespace",
                explain: "Every Linux machine starts with one network namespace: its loopback, \
                          its network card and a routing table with a default route. In the \
                          tour's sandbox the card is `up0` (203.0.113.1) and the internet is a \
                          namespace called `outside` (203.0.113.2).",
                diagram: r#"
  ┌──────────── host namespace ────────────┐
  │  lo 127.0.0.1                          │
  │  up0 203.0.113.1 ── default route ─────┼──► outside 203.0.113.2
  └────────────────────────────────────────┘"#,
                files: &[],
                task: "Look around: `ip addr`, `ip route`.",
                commands: &["ip addr", "ip route"],
                show: &[],
                checks: &[Check {
                    what: "the host reaches the outside",
                    run: "ping -c1 -W1 203.0.113.2",
                    expect: Expect::Passes,
                }],
            },
            Step {
                id: "1.2",
                title: "A new namespace: isolation",
                explain: "`ip netns add` makes an empty network stack: only a loopback (down), no \
                          routes. A process in it sees nothing of the host's network and reaches \
                          nothing.",
                diagram: r#"
  host: lo, up0 ──► outside

  ┌─ red ─┐   ┌─ blue ─┐
  │  lo   │   │  lo    │      (no cable, no route)
  └───────┘   └────────┘"#,
                files: &[],
                task: "Make two namespaces, red and blue, with their loopback up.",
                commands: &[
                    "ip netns add red",
                    "ip netns add blue",
                    "ip -n red link set lo up",
                    "ip -n blue link set lo up",
                ],
                show: &["ip netns list", "ip -n red addr", "ip -n red route"],
                checks: &[
                    Check {
                        what: "red reaches its own loopback",
                        run: "ip netns exec red ping -c1 -W1 127.0.0.1",
                        expect: Expect::Passes,
                    },
                    Check {
                        what: "red cannot reach the outside",
                        run: "ip netns exec red ping -c1 -W1 203.0.113.2",
                        expect: Expect::Blocked,
                    },
                ],
            },
            Step {
                id: "1.3",
                title: "A bridge and two veth cables",
                explain: "A veth pair is a virtual cable: what goes in one end comes out the other. \
                          One end goes into the namespace (its eth0), the other stays on the host, \
                          plugged into a bridge (a virtual switch) that learns which MAC is behind \
                          which port. The bridge gets an address too: the namespaces' gateway.",
                diagram: r#"
  ┌─ red ──────────┐                           ┌─ blue ─────────┐
  │ eth0 10.0.0.2  │                           │ eth0 10.0.0.3  │
  └──────┬─────────┘                           └─────────┬──────┘
         │ veth                                     veth │
     veth-red ──────── br0 10.0.0.1/24 ─────────── veth-blue
                       (host namespace)"#,
                files: &[],
                task: "Make blue reach red (10.0.0.2): a bridge br0 (10.0.0.1/24), a veth from each namespace plugged into it, addresses 10.0.0.2 (red) and 10.0.0.3 (blue).",
                commands: &[
                    "ip link add br0 type bridge",
                    "ip addr add 10.0.0.1/24 dev br0",
                    "ip link set br0 up",
                    "ip link add veth-red type veth peer name eth0 netns red",
                    "ip link set veth-red master br0 up",
                    "ip -n red addr add 10.0.0.2/24 dev eth0",
                    "ip -n red link set eth0 up",
                    "ip link add veth-blue type veth peer name eth0 netns blue",
                    "ip link set veth-blue master br0 up",
                    "ip -n blue addr add 10.0.0.3/24 dev eth0",
                    "ip -n blue link set eth0 up",
                ],
                show: &["ip -n red -br addr", "bridge fdb show br br0 | grep -v permanent || true"],
                checks: &[
                    Check {
                        what: "blue reaches red across the bridge",
                        run: "ip netns exec blue ping -c1 -W1 10.0.0.2",
                        expect: Expect::Passes,
                    },
                    Check {
                        what: "red reaches its gateway, the bridge",
                        run: "ip netns exec red ping -c1 -W1 10.0.0.1",
                        expect: Expect::Passes,
                    },
                ],
            },
            Step {
                id: "1.4",
                title: "A way out: default route and masquerade",
                explain: "To leave their subnet the namespaces need a default route via the bridge; \
                          the host must forward; and since 10.0.0.0/24 means nothing outside, an \
                          nftables masquerade rule rewrites their source to the host's address on \
                          the way out (conntrack remembers, and undoes it on the replies). The \
                          outside's server answers with the address it saw.",
                diagram: r#"
  red 10.0.0.2 ──► br0 10.0.0.1 ──► [forward] ──► up0 ──► outside 203.0.113.2:8000
                                      nft postrouting:              sees 203.0.113.1
                                      saddr 10.0.0.0/24 masquerade"#,
                files: &[],
                task: "Give red and blue a way out: a default route via 10.0.0.1, forwarding on, and an nft masquerade rule for 10.0.0.0/24 leaving by up0.",
                commands: &[
                    "ip -n red route add default via 10.0.0.1",
                    "ip -n blue route add default via 10.0.0.1",
                    "sysctl -w net.ipv4.ip_forward=1",
                    "nft add table ip tour",
                    "nft 'add chain ip tour postrouting { type nat hook postrouting priority srcnat; }'",
                    "nft add rule ip tour postrouting ip saddr 10.0.0.0/24 oifname up0 counter masquerade",
                ],
                show: &[
                    "ip -n red route",
                    "nft list table ip tour 2>/dev/null || true",
                    "grep 'dst=203.0.113.2' /proc/net/nf_conntrack 2>/dev/null || true",
                ],
                checks: &[
                    Check {
                        what: "red reaches the outside, masqueraded as the host (203.0.113.1)",
                        run: "ip netns exec red curl -s -m 2 http://203.0.113.2:8000/ | grep -q 'you are 203.0.113.1'",
                        expect: Expect::Passes,
                    },
                    Check {
                        what: "blue reaches the outside too",
                        run: "ip netns exec blue ping -c1 -W1 203.0.113.2",
                        expect: Expect::Passes,
                    },
                ],
            },
        ],
    },
    Assignment {
        number: 2,
        title: "Running services",
        summary: "Programs in the namespaces: a cache (Redis) in blue that red talks to, by hand; \
                  then the same as a plumb stack file: `plumb up` makes the namespaces, veths, \
                  bridge, NAT, DNS and runs the programs, supervised.",
        builds_on: &[1],
        steps: &[
            Step {
                id: "2.1",
                title: "A service in a namespace, by hand",
                explain: "A program started with `ip netns exec` lives in that namespace's network: \
                          Redis in blue listens on blue's 10.0.0.3, and red reaches it over the \
                          bridge. Nobody restarts it if it dies, and red must know its address.",
                diagram: r#"
  ┌─ red ──────────┐                    ┌─ blue ─────────────────┐
  │ redis-cli ─────┼──── br0 ───────────┼─► redis-server :6379   │
  │ 10.0.0.2       │                    │   10.0.0.3             │
  └────────────────┘                    └────────────────────────┘"#,
                files: &[],
                task: "Run redis-server in blue on 10.0.0.3:6379 (daemonized) and make red get a PONG from it.",
                commands: &[
                    "ip netns exec blue redis-server --bind 10.0.0.3 --port 6379 --protected-mode no --save '' --dir /tmp --daemonize yes",
                ],
                show: &["ip netns exec blue ss -tln"],
                checks: &[Check {
                    what: "red gets PONG from Redis in blue",
                    run: "ip netns exec red redis-cli -h 10.0.0.3 ping | grep -q PONG",
                    expect: Expect::Passes,
                }],
            },
            Step {
                id: "2.2",
                title: "The plumb way: a stack file and `plumb up`",
                explain: "The same by declaration: a network, a web service (a small Python HTTP \
                          server answering with its container's name) and a cache. `plumb up` \
                          makes every namespace, veth, bridge and nft rule (`--dry-run` prints them \
                          as the ip/nft commands above), runs each program in its container, \
                          checks its health, restarts it if it dies, and answers DNS: web finds \
                          the cache by name.",
                diagram: r#"
                 ┌───────────── network app 10.89.50.0/24 (bridge) ─────────────┐
  ┌─ tour-web-1 ─┴──────┐                                          ┌─ tour-cache-1 ─┴──────┐
  │ hello.py :8080      │ ─── "cache" (DNS: its VIP) :6379 ──────► │ redis-server :6379    │
  └─────────────────────┘                                          └───────────────────────┘"#,
                files: &[("tour.toml", STACK_BASIC), ("hello.py", HELLO_PY)],
                task: "Bring up tour.toml with `plumb up -f tour.toml --wait`, then ask the cache from web.",
                commands: &[
                    "plumb up -f tour.toml --dry-run | head -20",
                    "plumb up -f tour.toml --wait",
                    "plumb ps",
                ],
                show: &["ip netns list", "ip -br link show type bridge"],
                checks: &[
                    Check {
                        what: "web gets PONG from the cache, by name",
                        run: "plumb exec web -- redis-cli -h cache ping | grep -q PONG",
                        expect: Expect::Passes,
                    },
                    Check {
                        what: "the cache gets web's page, by name",
                        run: "plumb exec cache -- curl -s -m 2 http://web:8080/ | grep -q 'hello from web-1'",
                        expect: Expect::Passes,
                    },
                ],
            },
        ],
    },
    Assignment {
        number: 3,
        title: "Monitoring and debugging",
        summary: "Who listens, which connections the kernel tracks, what a packet meets on its \
                  way: ss and conntrack by hand, then `plumb conns`, `plumb trace` and \
                  `plumb top`.",
        builds_on: &[1, 2],
        steps: &[
            Step {
                id: "3.1",
                title: "Sockets and tracked connections, by hand",
                explain: "`ss` in a namespace lists its sockets; the host's conntrack table holds \
                          every flow it forwarded or NATed, with both directions' addresses: the \
                          masqueraded one shows red's address going out and the host's coming back.",
                diagram: r#"
  red ──► outside        conntrack:  src=10.0.0.2 dst=203.0.113.2 ...
                                     src=203.0.113.2 dst=203.0.113.1 ...  (the reply, NATed)"#,
                files: &[],
                task: "Open a connection from red to the outside (curl http://203.0.113.2:8000/) and find it in /proc/net/nf_conntrack.",
                commands: &[
                    "ip netns exec blue ss -tlnp",
                    "ip netns exec red curl -s http://203.0.113.2:8000/",
                    "grep 'src=10.0.0.2' /proc/net/nf_conntrack || true",
                ],
                show: &[],
                checks: &[Check {
                    what: "the host tracks red's masqueraded flow to the outside",
                    run: "grep -q 'src=10.0.0.2 dst=203.0.113.2 .*dst=203.0.113.1' /proc/net/nf_conntrack",
                    expect: Expect::Passes,
                }],
            },
            Step {
                id: "3.2",
                title: "The plumb way: conns, trace, top, capture",
                explain: "`plumb conns` lists the containers' sockets with their processes and the \
                          host's tracked flows; `plumb trace` sends one probe and shows each hook \
                          and nft rule it met; `plumb top --once` shows each container's traffic, \
                          drops, health and restarts; `plumb capture` is tcpdump for a container, a \
                          service or a network (`-w FILE` writes pcapng for Wireshark). Health \
                          monitoring is built in: plumb probes each service and restarts what dies.",
                diagram: r#"
  plumb trace web cache:6379
     tour-web-1 eth0 ──► bridge ──► [forward: rules...] ──► VIP DNAT ──► tour-cache-1:6379  delivered"#,
                files: &[],
                task: "Run `plumb conns`, `plumb trace web cache:6379`, `plumb top --once`, and capture the cache's packets while web asks it.",
                commands: &[
                    "plumb conns",
                    "plumb trace web cache:6379",
                    "plumb top --once",
                    "plumb capture cache -c 6 --duration 5s & sleep 1; plumb exec web -- redis-cli -h cache ping; wait",
                ],
                show: &[],
                checks: &[Check {
                    what: "a probe from web reaches the cache (plumb trace)",
                    run: "plumb trace web cache:6379",
                    expect: Expect::Passes,
                }],
            },
        ],
    },
    Assignment {
        number: 4,
        title: "Advanced networking: discovery, policies, segmentation, load balancing",
        summary: "Part A: names instead of addresses, and a policy: by hand (one nft rule on \
                  the bridge), then the plumb way (only web may talk to the cache). Part B: a \
                  virtual IP balanced round-robin by hand (nft DNAT), then the plumb way: tiers \
                  on separate networks, and three web replicas behind one virtual IP.",
        builds_on: &[1, 2],
        steps: &[
            Step {
                id: "4.1",
                title: "Service discovery: a name, a virtual IP",
                explain: "Each service gets a virtual IP (VIP) and a DNS name, answered by plumb's \
                          resolver on the network's gateway. A connection to the VIP is DNATed to a \
                          ready replica: clients never learn replica addresses.",
                diagram: r#"
  tour-web-1: getent hosts cache ──► resolver 10.89.50.1:53 ──► cache = VIP 10.96.0.x
  tour-web-1 ──► VIP:6379 ──[nft DNAT to a ready replica]──► tour-cache-1:6379"#,
                files: &[],
                task: "Ask plumb's DNS for cache from web (`plumb exec web -- getent hosts cache`), then list the VIPs (`plumb services`).",
                commands: &["plumb exec web -- getent hosts cache", "plumb services"],
                show: &[],
                checks: &[Check {
                    what: "web resolves the cache's name through plumb's DNS",
                    run: "plumb exec web -- getent hosts cache | grep -q '^10\\.96\\.'",
                    expect: Expect::Passes,
                }],
            },
            Step {
                id: "4.2",
                title: "A policy by hand: an nft rule on the bridge",
                explain: "Back to red and blue: red may ping blue, but not reach its Redis. Frames \
                          between two ports of a bridge pass the `bridge` family's forward hook, \
                          so one nft rule there drops red's connections to blue's 6379 and nothing \
                          else. Its counter shows the packets it dropped: the probe below is one \
                          of them.",
                diagram: r#"
  red 10.0.0.2 ── ping ──────► br0 ──────────────► blue 10.0.0.3          passes
  red 10.0.0.2 ── tcp 6379 ──► br0 [bridge tour_policy forward: drop] ✗   blue's Redis"#,
                files: &[],
                task: "Make red unable to reach blue's Redis (10.0.0.3:6379) while ping still works: an nft table `bridge tour_policy` with a forward chain and a drop rule.",
                commands: &[
                    "nft add table bridge tour_policy",
                    "nft 'add chain bridge tour_policy forward { type filter hook forward priority 0; }'",
                    "nft add rule bridge tour_policy forward ip saddr 10.0.0.2 ip daddr 10.0.0.3 tcp dport 6379 counter drop",
                ],
                show: &["nft list table bridge tour_policy 2>/dev/null || true"],
                checks: &[
                    Check {
                        what: "red still pings blue",
                        run: "ip netns exec red ping -c1 -W1 10.0.0.3",
                        expect: Expect::Passes,
                    },
                    Check {
                        what: "red's connection to blue's Redis is dropped",
                        run: "ip netns exec red timeout 2 redis-cli -h 10.0.0.3 ping | grep -q PONG",
                        expect: Expect::Blocked,
                    },
                ],
            },
            Step {
                id: "4.3",
                title: "Policies: only web may talk to the cache",
                explain: "A visitor joins the network. Without a policy it could reach everything on \
                          it. The policy names the cache in `to`, so the cache's ingress becomes \
                          default-deny: only web, on 6379, gets through. By hand this is an nft \
                          chain per service; `plumb policy why` and `plumb trace` show the rule \
                          that decided.",
                diagram: r#"
  tour-web-1 ─────────── :6379 ──────────► tour-cache-1     allowed (policy web → cache:6379)
  tour-visitor-1 ──────── :6379 ───✗       tour-cache-1     dropped (cache: default-deny)"#,
                files: &[("tour.toml", STACK_POLICY)],
                task: "Add the visitor and the policy (tour.toml is written), `plumb up -f tour.toml --wait`, then see why the visitor is refused.",
                commands: &[
                    "plumb up -f tour.toml --wait",
                    "plumb policy why visitor cache:6379",
                    "plumb trace visitor cache:6379",
                ],
                show: &[],
                checks: &[
                    Check {
                        what: "web still reaches the cache",
                        run: "plumb exec web -- redis-cli -h cache ping | grep -q PONG",
                        expect: Expect::Passes,
                    },
                    Check {
                        what: "the visitor is dropped by the cache's default-deny",
                        run: "plumb exec visitor -- timeout 2 redis-cli -h cache ping | grep -q PONG",
                        expect: Expect::Blocked,
                    },
                ],
            },
            Step {
                id: "4.4",
                title: "Load balancing by hand: a virtual IP in nft",
                explain: "A virtual IP is an address nobody has: 10.0.1.100 is outside the \
                          bridge's subnet, so green sends to its gateway, the host, whose nat \
                          prerouting rule DNATs each new connection to red or blue in turn \
                          (`numgen inc mod 2`). Both answer from the same bridge, so the host also \
                          masquerades these connections: the reply then comes back through it and \
                          is un-NATed, instead of going straight to green from an address green \
                          never asked. plumb's VIPs are the same idea, with a map per service \
                          updated as replicas become ready.",
                diagram: r#"
                                        ┌─► red  10.0.0.2:8080  "hello from red"
  green 10.0.0.4 ──► 10.0.1.100:80 ──► host: DNAT numgen inc mod 2
                                        └─► blue 10.0.0.3:8080  "hello from blue"
                     (and masquerade, so the replies come back through the host)"#,
                files: &[("whoami.py", WHOAMI_PY)],
                task: "Add a client, green (10.0.0.4), start whoami.py in red and blue on 8080, and make 10.0.1.100:80 alternate between them with nft.",
                commands: &[
                    "ip netns add green; ip -n green link set lo up",
                    "ip link add veth-green type veth peer name eth0 netns green; ip link set veth-green master br0 up",
                    "ip -n green addr add 10.0.0.4/24 dev eth0; ip -n green link set eth0 up; ip -n green route add default via 10.0.0.1",
                    "ip netns exec red python3 whoami.py red >/dev/null 2>&1 &",
                    "ip netns exec blue python3 whoami.py blue >/dev/null 2>&1 &",
                    "nft add table ip tour_lb",
                    "nft 'add chain ip tour_lb prerouting { type nat hook prerouting priority dstnat; }'",
                    "nft 'add rule ip tour_lb prerouting ip daddr 10.0.1.100 tcp dport 80 counter dnat to numgen inc mod 2 map { 0 : 10.0.0.2, 1 : 10.0.0.3 } : 8080'",
                    "nft 'add chain ip tour_lb postrouting { type nat hook postrouting priority srcnat; }'",
                    "nft add rule ip tour_lb postrouting ct status dnat ip saddr 10.0.0.0/24 oifname br0 counter masquerade",
                ],
                show: &["nft list table ip tour_lb 2>/dev/null || true"],
                checks: &[Check {
                    what: "four requests to the virtual IP are answered by both red and blue",
                    run: "test \"$(for i in 1 2 3 4; do ip netns exec green curl -s -m 2 http://10.0.1.100/; done | sort -u | wc -l)\" = 2",
                    expect: Expect::Passes,
                }],
            },
            Step {
                id: "4.5",
                title: "The plumb way: segmentation, and a VIP over three replicas",
                explain: "Tiers on their own networks: web on front and back, the cache only on back \
                          (internal: no way out), the visitor only on front. Networks never reach \
                          each other, so the visitor cannot even resolve the cache. Web runs three \
                          replicas; its VIP takes the ready ones in turn.",
                diagram: r#"
        front 10.89.51.0/24                         back 10.89.52.0/24 (internal)
  visitor-1 ──► VIP web:8080 ─┬─► web-1 ──┐
                              ├─► web-2 ──┼────────────────► cache-1 :6379
                              └─► web-3 ──┘
  visitor-1 ──────────────────────── ✗ ───────────────────► cache-1"#,
                files: &[("tour.toml", STACK_SEGMENTED)],
                task: "Apply the segmented tour.toml (`plumb up -f tour.toml --wait`) and ask web six times from the visitor.",
                commands: &[
                    "plumb up -f tour.toml --wait",
                    "plumb services",
                    "plumb exec visitor -- sh -c 'for i in 1 2 3 4 5 6; do curl -s -m 2 http://web:8080/; done'",
                ],
                show: &["ip -br link show type bridge"],
                checks: &[
                    Check {
                        what: "six requests to web's VIP are served by all three replicas",
                        run: "test \"$(plumb exec visitor -- sh -c 'for i in 1 2 3 4 5 6; do curl -s -m 2 http://web:8080/; done' | sort -u | wc -l)\" = 3",
                        expect: Expect::Passes,
                    },
                    Check {
                        what: "every web replica reaches the cache on back",
                        run: "for i in 1 2 3; do plumb exec web-$i -- redis-cli -h cache ping | grep -q PONG || exit 1; done",
                        expect: Expect::Passes,
                    },
                    Check {
                        what: "the visitor (front only) cannot reach the cache",
                        run: "plumb exec visitor -- timeout 2 redis-cli -h cache ping | grep -q PONG",
                        expect: Expect::Blocked,
                    },
                ],
            },
        ],
    },
    Assignment {
        number: 5,
        title: "From Docker Compose to plumb",
        summary: "The same app as a Compose file: `plumb convert` shows the stack file it means, \
                  `plumb up -f compose.yaml` runs it (a second stack beside the first), \
                  `plumb bench` measures it, `plumb down` removes it and only it.",
        builds_on: &[1, 2],
        steps: &[
            Step {
                id: "5.1",
                title: "A Compose file, converted and run",
                explain: "plumb reads Compose files itself (the services, networks, ports, health \
                          checks, replicas it supports; everything else is an error at its line). \
                          Host programs are marked `x-plumb: { host: true }`; a service with an \
                          image runs under podman in the same namespaces. This one is the tour's \
                          app again, as a second stack (`tour-compose`) beside the first.",
                diagram: r#"
  compose.yaml ──► plumb convert ──► stack file (TOML) ──► plumb up ──► namespaces, veths, nft
                                                                        + supervised programs"#,
                files: &[("compose.yaml", COMPOSE), ("hello.py", HELLO_PY)],
                task: "See compose.yaml as a stack file (`plumb convert`), bring it up, and benchmark its web from its cache.",
                commands: &[
                    "plumb convert compose.yaml",
                    "plumb up -f compose.yaml --wait",
                    "plumb bench http://web:8080/ -s tour-compose --from cache -c 2 -d 1s",
                ],
                show: &["plumb ps"],
                checks: &[Check {
                    what: "the Compose stack's cache gets its web's page",
                    run: "plumb exec tour-compose/cache -- curl -s -m 2 http://web:8080/ | grep -q 'hello from web-1'",
                    expect: Expect::Passes,
                }],
            },
            Step {
                id: "5.2",
                title: "Two stacks side by side; down takes only its own",
                explain: "Each stack has its own bridges, nft table, DNS server and names: `web` in \
                          one is not `web` in the other (`STACK/NAME` says which). `plumb down` \
                          removes everything its stack made, and nothing else.",
                diagram: r#"
  stack tour:          web-1, cache-1 (10.89.50.0/24)      stays
  stack tour-compose:  web-1, cache-1 (its own subnet)     plumb down tour-compose: gone"#,
                files: &[],
                task: "Take the Compose stack down (`plumb down tour-compose`).",
                commands: &["plumb down tour-compose"],
                show: &["ip netns list"],
                checks: &[
                    Check {
                        what: "the tour stack still answers",
                        run: "plumb exec tour/web -- redis-cli -h cache ping | grep -q PONG",
                        expect: Expect::Passes,
                    },
                    Check {
                        what: "nothing of the Compose stack is left to reach",
                        run: "ip netns list | grep -q tour-compose",
                        expect: Expect::Blocked,
                    },
                ],
            },
        ],
    },
    Assignment {
        number: 6,
        title: "Multi-host networking: a VXLAN overlay",
        summary: "Two hosts (two namespaces joined by an underlay cable), a container on each, \
                  and one layer-2 network across them: VXLAN wraps the containers' frames in UDP \
                  between the hosts. plumb's cluster mode does this per overlay network \
                  (docs/cluster.md).",
        builds_on: &[],
        steps: &[Step {
            id: "6.1",
            title: "VXLAN between two hosts, by hand",
            explain: "Each host has a bridge with its container's veth and a VXLAN device (VNI 42) \
                      whose remote is the other host's underlay address. A frame from c1 to c2 \
                      enters vx0 on host-a, travels as UDP 4789 over the underlay, and leaves \
                      vx0 on host-b into its bridge. The containers share 10.10.0.0/24 although \
                      their hosts share only 192.168.50.0/24.",
            diagram: r#"
  ┌─ host-a ───────────────────────┐   underlay    ┌─ host-b ───────────────────────┐
  │ c1 10.10.0.1 ─ br0 ─ vx0 (42) ─┼─ eth1 ═══ eth1 ┼─ vx0 (42) ─ br0 ─ c2 10.10.0.2 │
  │               192.168.50.1     │  UDP 4789     │     192.168.50.2               │
  └────────────────────────────────┘               └────────────────────────────────┘"#,
            files: &[],
            task: "Join c1 (on host-a) and c2 (on host-b) with a VXLAN: make c1 reach 10.10.0.2.",
            commands: &[
                "for h in host-a host-b c1 c2; do ip netns add $h; ip -n $h link set lo up; done",
                "ip -n host-a link add eth1 type veth peer name eth1 netns host-b",
                "ip -n host-a addr add 192.168.50.1/24 dev eth1; ip -n host-a link set eth1 up",
                "ip -n host-b addr add 192.168.50.2/24 dev eth1; ip -n host-b link set eth1 up",
                "ip -n host-a link add vx0 type vxlan id 42 remote 192.168.50.2 dstport 4789 dev eth1",
                "ip -n host-b link add vx0 type vxlan id 42 remote 192.168.50.1 dstport 4789 dev eth1",
                "for h in host-a host-b; do ip -n $h link add br0 type bridge; ip -n $h link set vx0 master br0 up; ip -n $h link set br0 up; done",
                "ip -n host-a link add veth-c1 type veth peer name eth0 netns c1; ip -n host-a link set veth-c1 master br0 up",
                "ip -n host-b link add veth-c2 type veth peer name eth0 netns c2; ip -n host-b link set veth-c2 master br0 up",
                "ip -n c1 addr add 10.10.0.1/24 dev eth0; ip -n c1 link set eth0 up",
                "ip -n c2 addr add 10.10.0.2/24 dev eth0; ip -n c2 link set eth0 up",
            ],
            show: &["ip -n host-a -d link show vx0 2>/dev/null | head -3 || true", "bridge -n host-a fdb show dev vx0 2>/dev/null || true"],
            checks: &[Check {
                what: "c1 on host-a reaches c2 on host-b through the VXLAN",
                run: "ip netns exec c1 ping -c1 -W1 10.10.0.2",
                expect: Expect::Passes,
            }],
        }],
    },
    Assignment {
        number: 7,
        title: "Documentation and presentation",
        summary: "The picture of what runs, drawn from the live stack, and this course as slides.",
        builds_on: &[1, 2],
        steps: &[Step {
            id: "7.1",
            title: "Draw the stack, write the slides",
            explain: "`plumb graph` draws a stack that is up (networks, containers with addresses, \
                      VIPs, published ports) as Graphviz dot or Mermaid for Markdown. \
                      `plumb tour --slides DIR` writes this course as a slide deck: Markdown and \
                      one self-contained HTML file.",
            diagram: r#"
  plumb graph tour --format mermaid ──► flowchart of the live stack
  plumb tour --slides slides ─────────► slides/tour.md, slides/tour.html"#,
            files: &[],
            task: "Draw the running stack as Mermaid and write the slide deck into slides/.",
            commands: &["plumb graph tour --format mermaid", "plumb tour --slides slides"],
            show: &[],
            checks: &[
                Check {
                    what: "the drawing shows the live stack's web container",
                    run: "plumb graph tour --format mermaid | grep -q 'web-1'",
                    expect: Expect::Passes,
                },
                Check {
                    what: "the slide deck is written",
                    run: "test -s slides/tour.md && grep -q '<section' slides/tour.html",
                    expect: Expect::Passes,
                },
            ],
        }],
    },
    Assignment {
        number: 8,
        title: "Bonus: scaling, chaos, and containers made by others (CNI)",
        summary: "Change the number of replicas of a running service; break the network on \
                  purpose and watch it heal; join a namespace someone else made to the stack, \
                  as a container runtime does through plumb's CNI plugin.",
        builds_on: &[1, 2],
        steps: &[
            Step {
                id: "8.1",
                title: "Scaling: four web replicas",
                explain: "Back to assignment 2's one-network stack (`up` applies only the \
                          difference). `plumb scale web=4` then wires and starts the new replicas (a \
                          namespace, a veth, an address, a DNS entry, a place behind the VIP) without \
                          touching the running one; the VIP spreads connections over all the ready \
                          ones.",
                diagram: r#"
  cache-1 ──► VIP web:8080 ─┬─► web-1
                            ├─► web-2   (new)
                            ├─► web-3   (new)
                            └─► web-4   (new)"#,
                files: &[("tour.toml", STACK_BASIC)],
                task: "Bring up tour.toml again, scale web to 4 replicas and ask it eight times from the cache.",
                commands: &["plumb up -f tour.toml --wait", "plumb scale web=4", "plumb ps"],
                show: &["plumb services"],
                checks: &[Check {
                    what: "eight requests to web's VIP are served by four replicas",
                    run: "test \"$(plumb exec cache -- sh -c 'for i in 1 2 3 4 5 6 7 8; do curl -s -m 2 http://web:8080/; done' | sort -u | wc -l)\" = 4",
                    expect: Expect::Passes,
                }],
            },
            Step {
                id: "8.2",
                title: "Chaos: cut the cache off",
                explain: "`plumb chaos TARGET --loss 100%` drops every frame the target sends (a tc \
                          netem qdisc on its veth; `--delay`, `--rate`, `--corrupt` too; \
                          `partition A B` and `kill SVC` as well). `--for` ends it by itself \
                          even if plumb is killed.",
                diagram: r#"
  tour-web-1 ──► :6379 ──► tour-cache-1 ──✗ (netem loss 100% on its veth: no reply)"#,
                files: &[],
                task: "Cut the cache off with `plumb chaos cache --loss 100% --for 60s`.",
                commands: &["plumb chaos cache --loss 100% --for 60s", "plumb chaos list"],
                show: &["tc qdisc show | grep netem || true"],
                checks: &[Check {
                    what: "web no longer gets an answer from the cache",
                    run: "plumb exec web -- timeout 2 redis-cli -h cache ping | grep -q PONG",
                    expect: Expect::Blocked,
                }],
            },
            Step {
                id: "8.3",
                title: "Chaos: heal",
                explain: "`plumb chaos clear` removes every fault at once; the connection works again.",
                diagram: r#"
  tour-web-1 ──► :6379 ──► tour-cache-1 ──► PONG"#,
                files: &[],
                task: "Clear the faults (`plumb chaos clear`).",
                commands: &["plumb chaos clear"],
                show: &[],
                checks: &[Check {
                    what: "web gets PONG from the cache again",
                    run: "plumb exec web -- redis-cli -h cache ping | grep -q PONG",
                    expect: Expect::Passes,
                }],
            },
            Step {
                id: "8.4",
                title: "A container someone else made joins the stack (CNI)",
                explain: "A container runtime (podman, containerd) makes its containers' network \
                          namespaces itself and asks a CNI plugin to wire them. plumb is one \
                          (`plumb cni install`): its ADD is `plumb attach`, which gives a namespace \
                          plumb did not make an address on a stack's network, a veth, a default \
                          route, a DNS name, the stack's policies. Here the runtime is you: \
                          `ip netns add guest`. `plumb cni conflist` prints what podman would be \
                          given in /etc/cni/net.d to do the same for its containers.",
                diagram: r#"
  ip netns add guest ──► plumb attach tour/guest --network app --netns /run/netns/guest
                         ┌─ guest (yours) ─┐
                         │ eth0 10.89.50.x │ ── app bridge ── web-1..4, cache-1   (name: guest)
                         └─────────────────┘"#,
                files: &[],
                task: "Make a namespace `guest` and attach it to the stack's network app (`plumb attach tour/guest --network app --netns /run/netns/guest`).",
                commands: &[
                    "ip netns add guest",
                    "plumb attach tour/guest --network app --netns /run/netns/guest",
                    "ip netns exec guest ip -br addr",
                    "plumb cni conflist tour app",
                ],
                show: &[],
                checks: &[
                    Check {
                        what: "the cache reaches the guest by its name",
                        run: "plumb exec cache -- ping -c1 -W1 guest",
                        expect: Expect::Passes,
                    },
                    Check {
                        what: "the guest reaches web's replicas through the stack",
                        run: "plumb exec guest -- curl -s -m 2 http://web:8080/ | grep -q 'hello from web-'",
                        expect: Expect::Passes,
                    },
                ],
            },
        ],
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_ids_are_unique_and_numbered_by_their_assignment() {
        let mut seen = std::collections::HashSet::new();
        for a in COURSE {
            for s in a.steps {
                assert!(seen.insert(s.id), "step {} twice", s.id);
                assert!(
                    s.id.starts_with(&format!("{}.", a.number)),
                    "{} in assignment {}",
                    s.id,
                    a.number
                );
                assert!(!s.checks.is_empty(), "step {} has no check", s.id);
            }
        }
    }

    #[test]
    fn prerequisites_come_first_and_only_from_earlier_assignments() {
        for a in COURSE {
            for p in prerequisites(a.number) {
                assert!(p < a.number, "assignment {} builds on {p}", a.number);
            }
        }
        assert_eq!(prerequisites(3), vec![1, 2]);
        assert_eq!(prerequisites(6), Vec::<u8>::new());
    }

    #[test]
    fn starts_parse_as_assignment_or_step() {
        assert_eq!(parse_start("4").unwrap(), (4, None));
        assert_eq!(parse_start("4.2").unwrap(), (4, Some("4.2")));
        assert!(parse_start("9").unwrap_err().contains("plumb tour --list"));
        assert!(parse_start("1.9").is_err());
    }

    #[test]
    fn the_html_deck_is_self_contained_and_escaped() {
        let html = slides_html();
        for external in ["src=\"", "href=\"", "url(", "@import", "<link"] {
            assert!(!html.contains(external), "the deck loads something: {external}");
        }
        assert!(html.contains("ip link add br0 type bridge"));
        // `<` in a command (none yet) or `&&` must be escaped.
        assert!(html.contains("test -s slides/tour.md &amp;&amp;"));
        let sections = html.matches("<section").count();
        let steps: usize = COURSE.iter().map(|a| a.steps.len() + 1).sum();
        assert_eq!(sections, steps + 1);
    }

    #[test]
    fn the_markdown_holds_every_command_and_check() {
        let md = markdown(2);
        for a in COURSE {
            for s in a.steps {
                for c in s.commands {
                    assert!(md.contains(c), "{c}");
                }
                for c in s.checks {
                    assert!(md.contains(c.run));
                }
            }
        }
        assert_eq!(
            slides_markdown().matches("\n---\n").count(),
            COURSE.iter().map(|a| a.steps.len() + 1).sum::<usize>()
        );
    }
}

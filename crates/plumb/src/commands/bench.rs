//! `plumb bench URL`: HTTP/1.1 load through a stack's network, from a container (`--from`,
//! the load generator's sockets opened in its network namespace) or from the host. URL's
//! host may name a service (its VIP) or a container, resolved from the stack's own record as
//! its DNS would answer. A progress line each second on stderr, then requests/s, latency
//! percentiles, statuses and errors by kind, and which replicas answered.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use plumb_core::bench::{parse_url, svg, Second, Url};
use plumb_core::firewall::vips;
use plumb_core::kernel::Kernel;
use plumb_core::{Container, Desired};
use serde::Serialize;

use super::{require_root, Context, Format};
use crate::failure::{Failure, Result};
use crate::load::{Job, Run, Tally};
use crate::output::print_json;
use crate::stackfile;

pub struct Options<'a> {
    pub url: &'a str,
    pub connections: usize,
    pub duration: Duration,
    pub rate: Option<f64>,
    pub from: Option<&'a str>,
    pub stack: Option<&'a str>,
    pub threads: Option<usize>,
    pub timeout: Duration,
    pub svg: Option<&'a Path>,
    pub format: Format,
}

/// Where the load goes, and from where.
struct Target {
    address: Ipv4Addr,
    /// The source container and its stack's record.
    from: Option<(Container, Desired)>,
    /// When `address` is a service's VIP: its stack and replicas, for the load balancer's
    /// counters.
    vip_of: Option<(String, Vec<String>)>,
}

#[derive(Serialize)]
struct Latency {
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
    mean: f64,
}

#[derive(Serialize)]
struct Report {
    url: String,
    address: String,
    from: Option<String>,
    connections: usize,
    threads: usize,
    /// `closed_loop` (as fast as answered) or `open_loop` (at `rate`).
    mode: &'static str,
    rate: Option<f64>,
    /// From the start until the last response (requests under way at the end are finished).
    duration_s: f64,
    /// requests = Σ responses + Σ errors of kinds that are not `http_*`.
    requests: u64,
    rps: f64,
    /// Responses by HTTP status.
    responses: BTreeMap<String, u64>,
    /// Requests without a response by kind (`connect_refused`, `timeout`, `reset`...), and
    /// responses with a status >= 400 as `http_NNN`.
    errors: BTreeMap<String, u64>,
    latency_ms: Latency,
    /// Responses by the replica that served them, from each response's `X-Served-By` header
    /// or `"served_by"` JSON field (empty when responses do not say).
    replicas: BTreeMap<String, u64>,
    /// For a service's VIP: connections the load balancer sent to each replica during the
    /// run (its per-endpoint nft counters; connections, not requests, and everyone's).
    vip_connections: Option<BTreeMap<String, u64>>,
    seconds: Vec<Second>,
}

pub fn run(ctx: &Context, options: &Options) -> Result<()> {
    let url = parse_url(options.url).map_err(|why| {
        Failure::new(format!("{:?} is not a URL plumb bench can load: {why}", options.url))
            .hint("e.g. `plumb bench http://gateway:5000/api/products --from web-1`")
            .code(2)
    })?;
    check_numbers(options)?;
    let target = resolve(ctx, &url, options.from, options.stack)?;
    let netns = match &target.from {
        Some((container, _)) => {
            require_root("bench --from")?;
            if !crate::apply::kernel()?.netns_bound(&container.netns)? {
                return Err(Failure::new(format!("the namespace of {} is gone", container.name))
                    .hint("run `plumb up` to recreate it"));
            }
            Some(container.netns.clone())
        }
        None => None,
    };
    let threads = options
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .min(options.connections);
    let job = Job {
        address: SocketAddr::V4(SocketAddrV4::new(target.address, url.port)),
        authority: url.authority(),
        path: url.path.clone(),
        connections: options.connections,
        threads,
        duration: options.duration,
        rate: options.rate,
        timeout: options.timeout,
    };
    let from_name = target.from.as_ref().map(|(c, _)| c.name.clone());
    let mode = match options.rate {
        Some(r) => format!("open loop at {r} requests/s"),
        None => "closed loop".to_string(),
    };
    eprintln!(
        "bench {} -> {}:{} from {}: {}, {threads} threads, {mode}, {}",
        options.url,
        target.address,
        url.port,
        from_name.as_deref().unwrap_or("the host"),
        crate::output::count(options.connections, "connection"),
        humantime::format_duration(options.duration)
    );
    let counters_before = target.vip_of.as_ref().and_then(|(stack, _)| vip_counters(stack));
    let run = Run::start(job, netns);
    let (total, seconds, elapsed) = watch(&run);
    run.join()
        .map_err(|e| Failure::new(format!("the load could not run: {e}")))?;
    let vip_connections = match (&target.vip_of, counters_before) {
        (Some((stack, replicas)), Some(before)) => vip_counters(stack).map(|after| {
            let count = |m: &BTreeMap<String, u64>, r: &String| m.get(r).copied().unwrap_or(0);
            replicas
                .iter()
                .map(|r| (r.clone(), count(&after, r).saturating_sub(count(&before, r))))
                .collect()
        }),
        _ => None,
    };
    let report = report(
        options,
        &url,
        &target,
        from_name,
        threads,
        &total,
        seconds,
        elapsed,
        vip_connections,
    );
    if let Some(path) = options.svg {
        let title = format!(
            "plumb bench {} from {}: {} connections, {mode}",
            options.url,
            report.from.as_deref().unwrap_or("the host"),
            options.connections
        );
        std::fs::write(path, svg(&title, &report.seconds)).map_err(|e| {
            Failure::new(format!("cannot write {}: {e}", path.display()))
                .hint("give --svg a path in a folder that exists")
        })?;
    }
    match options.format {
        Format::Json => print_json(&report),
        Format::Human => print_report(&report),
    }
    if total.statuses.is_empty() {
        // Nothing answered at all: say so to scripts too.
        return Err(Failure::silent(1));
    }
    Ok(())
}

fn check_numbers(options: &Options) -> Result<()> {
    let bad =
        |flag: &str, why: &str, hint: &str| Err(Failure::new(format!("{flag}: {why}")).hint(hint.to_string()).code(2));
    if options.connections == 0 {
        return bad(
            "-c",
            "needs at least 1 connection",
            "e.g. -c 10 (10 keep-alive connections)",
        );
    }
    if options.threads == Some(0) {
        return bad(
            "--threads",
            "needs at least 1 thread",
            "leave it out: one thread per core",
        );
    }
    if options.duration.is_zero() {
        return bad("-d", "the duration must be more than 0", "e.g. -d 10s");
    }
    if options.timeout.is_zero() {
        return bad("--timeout", "must be more than 0", "e.g. --timeout 5s");
    }
    if let Some(rate) = options.rate {
        if !(rate.is_finite() && rate > 0.0) {
            return bad(
                "--rate",
                "must be a number of requests per second above 0",
                "e.g. --rate 500",
            );
        }
        if rate * options.duration.as_secs_f64() < 1.0 {
            return bad(
                "--rate",
                "at this rate not one request is due within the duration",
                "raise --rate or -d",
            );
        }
    }
    Ok(())
}

/// The address URL's host names: an IPv4 address as is; else, from a container, what the
/// stack's DNS would answer there (a service's VIP, or a replica's address on a network they
/// share); from the host, a container of a stack that is up (`-s` picks the stack; a VIP
/// answers only inside its stack's networks), else the host's own resolver (`localhost`).
fn resolve(ctx: &Context, url: &Url, from: Option<&str>, stack: Option<&str>) -> Result<Target> {
    if let Some(stack) = stack {
        super::require_stack_name(stack)?;
    }
    let literal = url.host.parse::<Ipv4Addr>().ok();
    if let Some(from) = from {
        let qualified = match (stack, from.contains('/')) {
            (Some(s), false) => format!("{s}/{from}"),
            _ => from.to_string(),
        };
        let (st, source) = stackfile::find_container(&ctx.state, &qualified).map_err(|f| f.code(2))?;
        let desired = st
            .desired
            .ok_or_else(|| Failure::new(format!("stack {} has no record of what it is", st.stack)))?;
        let address = match literal {
            Some(ip) => ip,
            None => super::trace::resolve(&desired, &source, &url.host)?.0,
        };
        let vip_of = vip_service(&desired, address);
        return Ok(Target {
            address,
            from: Some((source, desired)),
            vip_of,
        });
    }
    if let Some(ip) = literal {
        return Ok(Target {
            address: ip,
            from: None,
            vip_of: None,
        });
    }
    let mut found = Vec::new();
    for (name, st) in ctx.state.stacks()? {
        if stack.is_some_and(|s| s != name) {
            continue;
        }
        let Some(desired) = &st.desired else { continue };
        if let Some(c) = desired.container(&url.host) {
            if let Some(i) = c.interfaces.first() {
                found.push((name.clone(), i.address));
            }
        } else if desired.service(&url.host).is_some() {
            return Err(Failure::new(format!(
                "{:?} is a service of stack {name}: its VIP answers only inside the stack's networks",
                url.host
            ))
            .hint(format!(
                "load it from a container with --from CONTAINER, or name one replica from the host (http://{}-1:{}{})",
                url.host, url.port, url.path
            ))
            .code(2));
        }
    }
    match found.len() {
        1 => Ok(Target {
            address: found.remove(0).1,
            from: None,
            vip_of: None,
        }),
        0 if stack.is_some() => Err(Failure::new(format!(
            "no service or container {:?} in stack {}",
            url.host,
            stack.unwrap_or_default()
        ))
        .hint("`plumb ps` lists the containers, `plumb services` the services")
        .code(2)),
        0 => host_resolver(url),
        _ => {
            let stacks: Vec<&str> = found.iter().map(|(s, _)| s.as_str()).collect();
            Err(Failure::new(format!(
                "{:?} names something in several stacks: {}",
                url.host,
                stacks.join(", ")
            ))
            .hint("pick one with -s STACK")
            .code(2))
        }
    }
}

fn host_resolver(url: &Url) -> Result<Target> {
    let address = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut all| {
            all.find_map(|a| match a {
                SocketAddr::V4(v4) => Some(*v4.ip()),
                SocketAddr::V6(_) => None,
            })
        })
        .ok_or_else(|| {
            Failure::new(format!(
                "cannot resolve {:?}: no stack that is up has a service or container of that name, and the host's resolver does not know it",
                url.host
            ))
            .hint("name a service or container of a stack that is up (`plumb ps`), give an IPv4 address, or load from a container with --from")
            .code(2)
        })?;
    Ok(Target {
        address,
        from: None,
        vip_of: None,
    })
}

fn vip_service(desired: &Desired, address: Ipv4Addr) -> Option<(String, Vec<String>)> {
    let service = desired.services.iter().find(|s| s.vip == Some(address))?;
    let replicas = desired
        .containers
        .iter()
        .filter(|c| c.service == service.name)
        .map(|c| c.name.clone())
        .collect();
    Some((desired.stack.clone(), replicas))
}

/// The load balancer's per-endpoint connection counters of a stack (none if unreadable).
fn vip_counters(stack: &str) -> Option<BTreeMap<String, u64>> {
    vips::stack_endpoint_counts(&crate::apply::kernel().ok()?.nft_ruleset().ok()?, stack)
}

/// Takes the threads' tallies once a second until they end, printing progress on stderr.
/// Returns the whole run's tally, its seconds, and its length.
fn watch(run: &Run) -> (Tally, Vec<Second>, Duration) {
    let live = std::io::stderr().is_terminal();
    let mut total = Tally::new();
    let mut seconds = Vec::new();
    let mut next = 1u64;
    loop {
        let boundary = run.start + Duration::from_secs(next);
        while !run.finished() && std::time::Instant::now() < boundary {
            std::thread::sleep(
                Duration::from_millis(20).min(boundary.saturating_duration_since(std::time::Instant::now())),
            );
        }
        let finished = run.finished();
        let elapsed = run.start.elapsed();
        let this = run.take();
        total.add(&this);
        if this.requests() > 0 || !finished {
            seconds.push(Second {
                second: next,
                requests: this.requests(),
                errors: this.errors(),
                p50_ms: ms(this.latency.value_at_quantile(0.5)),
                p99_ms: ms(this.latency.value_at_quantile(0.99)),
            });
            let line = format!(
                "{:>5}s {:>10} requests {:>9}/s {:>7} errors  p99 so far {:.2} ms",
                next,
                total.requests(),
                this.requests(),
                total.errors(),
                ms(total.latency.value_at_quantile(0.99))
            );
            let mut err = std::io::stderr().lock();
            let _ = if live {
                write!(err, "\r\x1b[K{line}")
            } else {
                writeln!(err, "{line}")
            };
        }
        if finished {
            if live {
                let _ = writeln!(std::io::stderr());
            }
            return (total, seconds, elapsed);
        }
        next += 1;
    }
}

fn ms(us: u64) -> f64 {
    (us as f64 / 1000.0 * 1000.0).round() / 1000.0
}

#[allow(clippy::too_many_arguments)]
fn report(
    options: &Options,
    url: &Url,
    target: &Target,
    from: Option<String>,
    threads: usize,
    total: &Tally,
    seconds: Vec<Second>,
    elapsed: Duration,
    vip_connections: Option<BTreeMap<String, u64>>,
) -> Report {
    let mut errors: BTreeMap<String, u64> = total.failures.iter().map(|(k, n)| (k.to_string(), *n)).collect();
    for (status, n) in total.statuses.range(400..) {
        errors.insert(format!("http_{status}"), *n);
    }
    let h = &total.latency;
    let q = |q: f64| if h.is_empty() { 0.0 } else { ms(h.value_at_quantile(q)) };
    Report {
        url: options.url.to_string(),
        address: format!("{}:{}", target.address, url.port),
        from,
        connections: options.connections,
        threads,
        mode: if options.rate.is_some() {
            "open_loop"
        } else {
            "closed_loop"
        },
        rate: options.rate,
        duration_s: (elapsed.as_secs_f64() * 1000.0).round() / 1000.0,
        requests: total.requests(),
        rps: (total.requests() as f64 / elapsed.as_secs_f64().max(1e-9) * 10.0).round() / 10.0,
        responses: total.statuses.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
        errors,
        latency_ms: Latency {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: if h.is_empty() { 0.0 } else { ms(h.max()) },
            mean: (h.mean() / 1000.0 * 1000.0).round() / 1000.0,
        },
        replicas: total.replicas.iter().map(|(k, n)| (k.clone(), *n)).collect(),
        vip_connections,
        seconds,
    }
}

fn print_report(r: &Report) {
    let l = &r.latency_ms;
    println!("requests   {} in {:.2} s: {:.1}/s", r.requests, r.duration_s, r.rps);
    println!(
        "latency    p50 {} ms  p90 {} ms  p99 {} ms  p99.9 {} ms  max {} ms{}",
        l.p50,
        l.p90,
        l.p99,
        l.p999,
        l.max,
        if r.mode == "open_loop" {
            "  (from each request's scheduled time)"
        } else {
            ""
        }
    );
    let list = |m: &BTreeMap<String, u64>| {
        if m.is_empty() {
            "none".to_string()
        } else {
            m.iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    println!("responses  {}", list(&r.responses));
    println!("errors     {}", list(&r.errors));
    let shares = |m: &BTreeMap<String, u64>| {
        let sum: u64 = m.values().sum();
        m.iter()
            .map(|(k, n)| format!("{k} {n} ({:.1} %)", *n as f64 * 100.0 / sum.max(1) as f64))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !r.replicas.is_empty() {
        println!("replicas   {}  (from each response's served_by)", shares(&r.replicas));
    }
    if let Some(v) = &r.vip_connections {
        println!(
            "VIP        {}  (connections the load balancer sent each replica meanwhile)",
            shares(v)
        );
    }
}

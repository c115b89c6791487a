//! Names that are not the stack's: asked of the host's resolvers (from /etc/resolv.conf, read
//! once when the server starts), at most [`FORWARDERS`] at a time, with a small cache that
//! keeps an answer no longer than its TTL. Each asker may send at most
//! [`limits::FORWARD_RATE`] questions a second upstream (a token bucket); past that it gets
//! REFUSED. Cached answers cost nothing.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;

use crate::answer::{self, Outcome, Transport};
use crate::limits::{self, RateLimit};

/// Forwarding threads: the most upstream questions in flight at once.
pub const FORWARDERS: usize = 16;
/// Questions waiting for a forwarder; past that the asker gets SERVFAIL at once.
const QUEUE: usize = 256;
/// How long one upstream server gets before the next is asked.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// Answers kept; when full, expired ones go, then everything.
const CACHE_ENTRIES: usize = 4096;
/// The longest an answer is kept, whatever its TTL.
const CACHE_MAX_TTL: u32 = 300;
/// How long a negative answer without an SOA is kept.
const NEGATIVE_TTL: u32 = 5;
/// At most this many upstream servers are asked (as glibc does).
const MAX_UPSTREAMS: usize = 3;

/// The `nameserver` lines of a resolv.conf, port 53.
pub fn servers_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next())?
        })
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .take(MAX_UPSTREAMS)
        .collect()
}

/// What became of a question for the upstream resolvers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarded {
    /// Answered from the cache.
    Cached,
    /// Asked upstream (or queued to be).
    Asked,
    /// Every forwarder busy and the queue full: SERVFAIL, nothing asked.
    Busy,
    /// The asker was past its rate: REFUSED, nothing asked.
    Limited,
}

/// Where an upstream answer goes.
pub enum ReplyTo {
    Udp(Arc<UdpSocket>, SocketAddr),
}

struct Job {
    request: Message,
    reply_to: ReplyTo,
}

type Key = (String, u16, u16);

struct Cached {
    response: Message,
    stored: Instant,
    ttl: u32,
}

/// The upstream side of a server: its servers, its cache, its forwarding threads.
pub struct Upstream {
    servers: Vec<SocketAddr>,
    cache: Mutex<HashMap<Key, Cached>>,
    queue: Mutex<Option<SyncSender<Job>>>,
    limit: Mutex<RateLimit>,
}

impl Upstream {
    pub fn new(servers: Vec<SocketAddr>) -> Arc<Upstream> {
        Arc::new(Upstream {
            servers,
            cache: Mutex::new(HashMap::new()),
            queue: Mutex::new(None),
            limit: Mutex::new(RateLimit::new(limits::FORWARD_RATE, limits::FORWARD_BURST)),
        })
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// Starts the forwarding threads (once).
    pub fn start(self: &Arc<Self>) {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.is_some() {
            return;
        }
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..FORWARDERS {
            let (me, rx) = (Arc::clone(self), Arc::clone(&rx));
            let _ = thread::Builder::new()
                .name(format!("dns-forward-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || me.forward_loop(&rx));
        }
        *queue = Some(tx);
    }

    /// Whether `asker` may send one more question upstream now.
    fn allow(&self, asker: IpAddr) -> bool {
        let mut limit = self.limit.lock().unwrap_or_else(|p| p.into_inner());
        limit.allow(asker, Instant::now())
    }

    /// Answers a UDP asker from the cache, or hands the question to a forwarder (SERVFAIL if
    /// all are busy and the queue is full; REFUSED if the asker is past its rate).
    pub fn forward_udp(&self, request: Message, socket: &Arc<UdpSocket>, to: SocketAddr) -> Forwarded {
        if let Some(bytes) = self.cached(&request, Transport::Udp) {
            let _ = socket.send_to(&bytes, to);
            return Forwarded::Cached;
        }
        if !self.allow(to.ip()) {
            if let Outcome::Reply(bytes) = refused(&request, Transport::Udp) {
                let _ = socket.send_to(&bytes, to);
            }
            return Forwarded::Limited;
        }
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let job = Job {
            request,
            reply_to: ReplyTo::Udp(Arc::clone(socket), to),
        };
        let turned_away = match queue {
            Some(q) => match q.try_send(job) {
                Ok(()) => None,
                Err(TrySendError::Full(j) | TrySendError::Disconnected(j)) => Some(j),
            },
            None => Some(job),
        };
        let Some(job) = turned_away else {
            return Forwarded::Asked;
        };
        let ReplyTo::Udp(socket, to) = job.reply_to;
        let busy = answer::error(&job.request, ResponseCode::ServFail);
        if let Outcome::Reply(bytes) = answer::reply(&busy, Some(&job.request), Transport::Udp) {
            let _ = socket.send_to(&bytes, to);
        }
        Forwarded::Busy
    }

    /// Answers a TCP asker (on its own connection thread): cache, or upstream now (REFUSED if
    /// the asker is past its rate).
    pub fn forward_blocking(&self, request: &Message, asker: IpAddr) -> (Vec<u8>, Forwarded) {
        if let Some(bytes) = self.cached(request, Transport::Tcp) {
            return (bytes, Forwarded::Cached);
        }
        let (outcome, forwarded) = if self.allow(asker) {
            let response = self.ask(request);
            let outcome = answer::reply(&response, Some(request), Transport::Tcp);
            (outcome, Forwarded::Asked)
        } else {
            (refused(request, Transport::Tcp), Forwarded::Limited)
        };
        match outcome {
            Outcome::Reply(bytes) => (bytes, forwarded),
            _ => (Vec::new(), forwarded),
        }
    }

    fn forward_loop(&self, rx: &Mutex<Receiver<Job>>) {
        loop {
            let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                Ok(job) => job,
                Err(_) => return,
            };
            let response = self.ask(&job.request);
            let ReplyTo::Udp(socket, to) = job.reply_to;
            if let Outcome::Reply(bytes) = answer::reply(&response, Some(&job.request), Transport::Udp) {
                let _ = socket.send_to(&bytes, to);
            }
        }
    }

    /// Asks each upstream server in turn; the first answer wins (and is cached). SERVFAIL
    /// when none answers.
    fn ask(&self, request: &Message) -> Message {
        let mut query = request.clone();
        query.metadata.id = rand::random();
        query.metadata.recursion_desired = true;
        let Ok(bytes) = query.to_vec() else {
            return answer::error(request, ResponseCode::ServFail);
        };
        for server in &self.servers {
            let got = exchange_udp(*server, &bytes, query.metadata.id).and_then(|m| {
                if m.metadata.truncation {
                    exchange_tcp(*server, &bytes)
                } else {
                    Some(m)
                }
            });
            if let Some(mut response) = got {
                self.store(request, &response);
                response.metadata.id = request.metadata.id;
                response.edns = None;
                return response;
            }
        }
        answer::error(request, ResponseCode::ServFail)
    }

    fn key(request: &Message) -> Option<Key> {
        let q = request.queries.first()?;
        Some((
            q.name.to_ascii().to_ascii_lowercase(),
            u16::from(q.query_type),
            u16::from(q.query_class),
        ))
    }

    fn cached(&self, request: &Message, transport: Transport) -> Option<Vec<u8>> {
        let key = Self::key(request)?;
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let entry = cache.get(&key)?;
        let age = u32::try_from(entry.stored.elapsed().as_secs()).unwrap_or(u32::MAX);
        if age >= entry.ttl {
            return None;
        }
        let mut response = entry.response.clone();
        drop(cache);
        response.metadata.id = request.metadata.id;
        for r in response
            .answers
            .iter_mut()
            .chain(response.authorities.iter_mut())
            .chain(response.additionals.iter_mut())
        {
            r.ttl = r.ttl.saturating_sub(age);
        }
        match answer::reply(&response, Some(request), transport) {
            Outcome::Reply(bytes) => Some(bytes),
            _ => None,
        }
    }

    fn store(&self, request: &Message, response: &Message) {
        let Some(key) = Self::key(request) else { return };
        let Some(ttl) = cache_ttl(response) else { return };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, c| c.stored.elapsed().as_secs() < u64::from(c.ttl));
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        let mut response = response.clone();
        response.edns = None;
        cache.insert(
            key,
            Cached {
                response,
                stored: Instant::now(),
                ttl,
            },
        );
    }
}

/// The answer to an asker past its rate.
fn refused(request: &Message, transport: Transport) -> Outcome {
    answer::reply(&answer::error(request, ResponseCode::Refused), Some(request), transport)
}

/// How long an upstream answer may be kept: the least TTL of its records (capped); for a
/// negative answer the SOA's minimum, or a few seconds; never for failures.
fn cache_ttl(response: &Message) -> Option<u32> {
    match response.metadata.response_code {
        ResponseCode::NoError | ResponseCode::NXDomain => {}
        _ => return None,
    }
    let soa = response.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
        _ => None,
    });
    let ttl = if response.answers.is_empty() {
        soa.unwrap_or(NEGATIVE_TTL)
    } else {
        response.answers.iter().map(|r| r.ttl).min().unwrap_or(0)
    };
    (ttl > 0).then_some(ttl.min(CACHE_MAX_TTL))
}

fn exchange_udp(server: SocketAddr, bytes: &[u8], id: u16) -> Option<Message> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(server).ok()?;
    socket.set_read_timeout(Some(UPSTREAM_TIMEOUT)).ok()?;
    socket.send(bytes).ok()?;
    let deadline = Instant::now() + UPSTREAM_TIMEOUT;
    let mut buf = vec![0u8; 4096];
    while Instant::now() < deadline {
        let n = socket.recv(&mut buf).ok()?;
        match Message::from_vec(&buf[..n]) {
            Ok(m) if m.metadata.id == id => return Some(m),
            _ => continue,
        }
    }
    None
}

fn exchange_tcp(server: SocketAddr, bytes: &[u8]) -> Option<Message> {
    let mut stream = TcpStream::connect_timeout(&server, UPSTREAM_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(UPSTREAM_TIMEOUT)).ok()?;
    let len = u16::try_from(bytes.len()).ok()?.to_be_bytes();
    stream.write_all(&len).ok()?;
    stream.write_all(bytes).ok()?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).ok()?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).ok()?;
    Message::from_vec(&buf).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameservers_come_from_resolv_conf_three_at_most() {
        let text = "# comment\nsearch example.org\nnameserver 192.0.2.1\nnameserver   2001:db8::1\nnameserver bogus\n\
                    nameserver 192.0.2.2\nnameserver 192.0.2.3\n";
        let servers: Vec<String> = servers_from_resolv_conf(text).iter().map(ToString::to_string).collect();
        assert_eq!(servers, ["192.0.2.1:53", "[2001:db8::1]:53", "192.0.2.2:53"]);
    }
}

//! plumb's embedded DNS server: one per stack, in the stack's supervisor, listening on port 53
//! (UDP and TCP) of each network's gateway address. The stack's names come from its
//! [`Zone`], swapped in place when replicas come and go (no restart, no re-read, no query
//! dropped); other names go to the host's resolvers (`upstream`).
//!
//! - `answer`: one query to one response (hickory-proto messages; no I/O).
//! - `upstream`: forwarding, its bounded pool of threads, its cache and its rate per asker.
//! - `limits`: what one asker may take (TCP connections, questions upstream per second).
//!
//! Threads: per listening address, [`UDP_THREADS`] reading one UDP socket, one accepting TCP
//! connections and one per open connection (at most [`TCP_CONNECTIONS`], at most
//! [`limits::TCP_PER_ASKER`] from one address, each closed when idle for [`TCP_IDLE`] or at
//! the age of [`limits::TCP_LIFETIME`]).

pub mod answer;
pub mod limits;
pub mod upstream;

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use answer::{Outcome, Transport};
pub use limits::TCP_CONNECTIONS;
use limits::{Connections, TCP_LIFETIME, TCP_PER_ASKER};
use nix::sys::socket::{shutdown, Shutdown};
use plumb_core::zone::Zone;
use upstream::{Forwarded, Upstream};

/// The port the server listens on.
pub const PORT: u16 = 53;
/// Threads reading one address's UDP socket.
pub const UDP_THREADS: usize = 2;
/// How often a blocked UDP reader looks whether it is to stop.
const STOP_POLL: Duration = Duration::from_millis(250);
/// An idle TCP connection is closed after this long.
pub const TCP_IDLE: Duration = Duration::from_secs(5);

/// The most UDP responses remembered per zone.
const MAX_REMEMBERED: usize = 8192;

/// What every thread of the server shares: the zone with its responses (swapped whole),
/// the upstream side, and the counts for metrics.
struct Shared {
    served: RwLock<Arc<Served>>,
    upstream: Arc<Upstream>,
    connections: Mutex<Connections>,
    stats: Arc<Stats>,
}

/// How many queries the server took, and what became of them (for metrics).
#[derive(Debug, Default)]
pub struct Stats {
    /// Every query read, UDP and TCP.
    pub queries: AtomicU64,
    /// Queries for names outside the stack, sent to the upstream resolvers (or answered
    /// from their cache).
    pub forwarded: AtomicU64,
    /// Queries for names outside the stack refused because their asker was past its rate.
    pub rate_limited: AtomicU64,
    /// TCP connections closed as they came: their asker (or everyone) had too many open.
    pub tcp_refused: AtomicU64,
}

impl Shared {
    fn served(&self) -> Arc<Served> {
        Arc::clone(&self.served.read().unwrap_or_else(|p| p.into_inner()))
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, Connections> {
        self.connections.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts what became of a question for upstream.
    fn count(&self, forwarded: Forwarded) {
        let counter = match forwarded {
            Forwarded::Limited => &self.stats.rate_limited,
            Forwarded::Cached | Forwarded::Asked | Forwarded::Busy => &self.stats.forwarded,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A zone and the UDP responses it has given. The zone never changes (a change is a new
/// `Served`), so the same query from the same asker gets the same response but for its ID:
/// hickory parses and writes each distinct question once per zone, not once per query.
struct Served {
    zone: Zone,
    /// The asker's address and the query without its ID → the response without its ID.
    responses: RwLock<HashMap<Vec<u8>, Vec<u8>>>,
}

impl Served {
    fn new(zone: Zone) -> Served {
        Served {
            zone,
            responses: RwLock::new(HashMap::new()),
        }
    }

    /// The remembered response to `query` from `asker`, with the query's ID.
    fn recall(&self, key: &[u8], query: &[u8]) -> Option<Vec<u8>> {
        let responses = self.responses.read().unwrap_or_else(|p| p.into_inner());
        let mut response = responses.get(key)?.clone();
        response[..2].copy_from_slice(&query[..2]);
        Some(response)
    }

    fn remember(&self, key: &[u8], response: &[u8]) {
        let mut responses = self.responses.write().unwrap_or_else(|p| p.into_inner());
        if responses.len() < MAX_REMEMBERED && response.len() >= 12 {
            responses.insert(key.to_vec(), response.to_vec());
        }
    }
}

/// The key a UDP query is remembered by: the asker's address, then the query but its ID.
fn response_key(key: &mut Vec<u8>, asker: Ipv4Addr, query: &[u8]) {
    key.clear();
    key.extend_from_slice(&asker.octets());
    key.extend_from_slice(&query[2..]);
}

/// The threads serving one address.
struct Listener {
    stop: Arc<AtomicBool>,
    udp: Arc<UdpSocket>,
    tcp: Arc<TcpListener>,
    threads: Vec<JoinHandle<()>>,
}

impl Listener {
    fn start(address: Ipv4Addr, port: u16, shared: &Arc<Shared>) -> io::Result<Listener> {
        let udp = Arc::new(UdpSocket::bind((address, port))?);
        udp.set_read_timeout(Some(STOP_POLL))?;
        let tcp = Arc::new(TcpListener::bind((address, port))?);
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for i in 0..UDP_THREADS {
            let (udp, shared, stop) = (Arc::clone(&udp), Arc::clone(shared), Arc::clone(&stop));
            threads.push(
                thread::Builder::new()
                    .name(format!("dns-udp-{i}"))
                    .spawn(move || serve_udp(&udp, &shared, &stop))?,
            );
        }
        let (tcp2, shared2, stop2) = (Arc::clone(&tcp), Arc::clone(shared), Arc::clone(&stop));
        threads.push(
            thread::Builder::new()
                .name("dns-tcp".into())
                .spawn(move || serve_tcp(&tcp2, &shared2, &stop2))?,
        );
        Ok(Listener {
            stop,
            udp,
            tcp,
            threads,
        })
    }

    /// Whether a thread has ended (a panic): then the listener is made again.
    fn is_broken(&self) -> bool {
        self.threads.iter().any(JoinHandle::is_finished)
    }

    /// Stops its threads and closes its sockets (even if its address is gone already).
    fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        // On Linux, shutting a socket down for reading wakes whoever waits in recvfrom or
        // accept on it.
        let _ = shutdown(self.udp.as_raw_fd(), Shutdown::Read);
        let _ = shutdown(self.tcp.as_raw_fd(), Shutdown::Read);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// A running DNS server. Dropping it stops every listener (forwarding threads stay parked).
pub struct Server {
    shared: Arc<Shared>,
    port: u16,
    listeners: BTreeMap<Ipv4Addr, Listener>,
}

impl Server {
    /// A server answering from `zone`, forwarding to `upstreams`, listening nowhere yet.
    pub fn new(zone: Zone, upstreams: Vec<SocketAddr>, port: u16) -> Server {
        let upstream = Upstream::new(upstreams);
        upstream.start();
        Server {
            shared: Arc::new(Shared {
                served: RwLock::new(Arc::new(Served::new(zone))),
                upstream,
                connections: Mutex::new(Connections::new(TCP_CONNECTIONS, TCP_PER_ASKER)),
                stats: Arc::default(),
            }),
            port,
            listeners: BTreeMap::new(),
        }
    }

    /// The server's counts, shared: they keep counting.
    pub fn stats(&self) -> Arc<Stats> {
        Arc::clone(&self.shared.stats)
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        self.shared.upstream.servers()
    }

    /// Answers from `zone` from now on; queries being answered finish with the old one.
    pub fn set_zone(&self, zone: Zone) {
        *self.shared.served.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Served::new(zone));
    }

    /// Listens on exactly `addresses`: starts what is missing or broken, stops the rest.
    /// Returns the addresses it could not listen on, with why (tried again next call).
    pub fn listen_on(&mut self, addresses: &[Ipv4Addr]) -> Vec<(Ipv4Addr, io::Error)> {
        let gone: Vec<Ipv4Addr> = self
            .listeners
            .iter()
            .filter(|(a, l)| !addresses.contains(a) || l.is_broken())
            .map(|(a, _)| *a)
            .collect();
        for a in gone {
            if let Some(l) = self.listeners.remove(&a) {
                l.stop();
            }
        }
        let mut failed = Vec::new();
        for a in addresses {
            if self.listeners.contains_key(a) {
                continue;
            }
            match Listener::start(*a, self.port, &self.shared) {
                Ok(l) => {
                    self.listeners.insert(*a, l);
                }
                Err(e) => failed.push((*a, e)),
            }
        }
        failed
    }

    /// The addresses listened on.
    pub fn addresses(&self) -> Vec<Ipv4Addr> {
        self.listeners.keys().copied().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for (_, l) in std::mem::take(&mut self.listeners) {
            l.stop();
        }
    }
}

fn serve_udp(socket: &Arc<UdpSocket>, shared: &Shared, stop: &AtomicBool) {
    let mut buf = vec![0u8; 4096];
    let mut key = Vec::with_capacity(512);
    while !stop.load(Ordering::Relaxed) {
        let (n, from) = match socket.recv_from(&mut buf) {
            Ok(got) => got,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // ICMP errors of earlier replies (ECONNREFUSED) are not the socket's end.
            Err(_) => continue,
        };
        let SocketAddr::V4(asker) = from else { continue };
        let query = &buf[..n];
        shared.stats.queries.fetch_add(1, Ordering::Relaxed);
        let served = shared.served();
        if n >= 12 {
            response_key(&mut key, *asker.ip(), query);
            if let Some(bytes) = served.recall(&key, query) {
                let _ = socket.send_to(&bytes, from);
                continue;
            }
        }
        match answer::handle(&served.zone, *asker.ip(), query, Transport::Udp) {
            Outcome::Reply(bytes) => {
                if n >= 12 {
                    served.remember(&key, &bytes);
                }
                let _ = socket.send_to(&bytes, from);
            }
            Outcome::Forward(request) => shared.count(shared.upstream.forward_udp(request, socket, from)),
            Outcome::Drop => {}
        }
    }
}

fn serve_tcp(listener: &TcpListener, shared: &Arc<Shared>, stop: &AtomicBool) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        if matches!(&stream, Err(e) if e.kind() == io::ErrorKind::InvalidInput) {
            // Shut down: nothing more will come.
            return;
        }
        let Ok(stream) = stream else { continue };
        let Ok(SocketAddr::V4(peer)) = stream.peer_addr() else {
            continue;
        };
        let asker = *peer.ip();
        if !shared.connections().admit(IpAddr::V4(asker)) {
            // Dropped: closed at once, before anything is read.
            shared.stats.tcp_refused.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let mine = Arc::clone(shared);
        let spawned = thread::Builder::new()
            .name("dns-tcp-conn".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                let _ = serve_connection(stream, asker, &mine);
                mine.connections().release(IpAddr::V4(asker));
            });
        if spawned.is_err() {
            // The thread never ran: its connection is closed, and no longer counted.
            shared.connections().release(IpAddr::V4(asker));
        }
    }
}

/// Length-prefixed messages, one answer each, until the asker closes, goes idle, or the
/// connection reaches [`TCP_LIFETIME`] (however busy it is).
fn serve_connection(mut stream: TcpStream, asker: Ipv4Addr, shared: &Shared) -> io::Result<()> {
    let deadline = Instant::now() + TCP_LIFETIME;
    loop {
        let mut len = [0u8; 2];
        read_before(&mut stream, &mut len, deadline)?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        read_before(&mut stream, &mut buf, deadline)?;
        shared.stats.queries.fetch_add(1, Ordering::Relaxed);
        let bytes = match answer::handle(&shared.served().zone, asker, &buf, Transport::Tcp) {
            Outcome::Reply(bytes) => bytes,
            Outcome::Forward(request) => {
                let (bytes, forwarded) = shared.upstream.forward_blocking(&request, IpAddr::V4(asker));
                shared.count(forwarded);
                bytes
            }
            Outcome::Drop => return Ok(()),
        };
        let Ok(len) = u16::try_from(bytes.len()) else {
            return Ok(());
        };
        stream.set_write_timeout(Some(time_left(deadline)?))?;
        stream.write_all(&len.to_be_bytes())?;
        stream.write_all(&bytes)?;
    }
}

/// The time until `deadline`; an error once it has passed.
fn time_left(deadline: Instant) -> io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|left| !left.is_zero())
        .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "the connection's life is over"))
}

/// Fills `buf`: each read waits at most [`TCP_IDLE`], and all of them end by `deadline` (a
/// byte now and then does not keep a connection open).
fn read_before(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        stream.set_read_timeout(Some(time_left(deadline)?.min(TCP_IDLE)))?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_response_carries_the_new_query_id_and_is_kept_per_asker() {
        let served = Served::new(Zone::build(&Default::default(), &Default::default()));
        let query = [
            0xAB, 0xCD, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 3, b'w', b'e', b'b', 0, 0, 1, 0, 1,
        ];
        let mut key = Vec::new();
        response_key(&mut key, Ipv4Addr::new(10, 0, 0, 2), &query);
        let response = [0xAB, 0xCD, 0x81, 0x83, 0, 1, 0, 0, 0, 0, 0, 0];
        served.remember(&key, &response);
        let mut again = query;
        again[..2].copy_from_slice(&[0x12, 0x34]);
        let recalled = served.recall(&key, &again).unwrap();
        assert_eq!(recalled[..2], [0x12, 0x34]);
        assert_eq!(recalled[2..], response[2..]);
        // Another asker asking the same is answered afresh (its networks may differ).
        let mut other = Vec::new();
        response_key(&mut other, Ipv4Addr::new(10, 0, 1, 2), &query);
        assert_eq!(served.recall(&other, &query), None);
    }

    #[test]
    fn a_connection_trickling_bytes_is_cut_at_its_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let trickler = thread::spawn(move || {
            let mut client = TcpStream::connect(address).unwrap();
            // Never idle: a byte every 50 ms of a 100-byte query, for at most 2 s.
            let _ = client.write_all(&[0, 100]);
            for _ in 0..40 {
                if client.write_all(&[0]).is_err() {
                    break;
                }
                thread::sleep(Duration::from_millis(50));
            }
        });
        let (mut stream, _) = listener.accept().unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 102];
        let err = read_before(&mut stream, &mut buf, started + Duration::from_millis(300)).unwrap_err();
        // The deadline passed between reads (TimedOut), or during one (its timeout).
        assert!(
            matches!(err.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock),
            "{err}"
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(1),
            "{took:?}"
        );
        drop(stream);
        trickler.join().unwrap();
    }
}

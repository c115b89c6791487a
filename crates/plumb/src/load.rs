//! The HTTP/1.1 load generator behind `plumb bench`: keep-alive connections spread over worker
//! threads, each thread a single-threaded tokio runtime driving its connections with hyper's
//! client. A thread that loads from a container enters the container's network namespace
//! first (a thread's namespace is its own), so every socket it opens is the container's.
//! Each thread counts into its own tally; the caller takes the tallies once a second.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONNECTION, HOST, USER_AGENT};
use hyper::Request;
use hyper_util::rt::TokioIo;
use plumb_core::bench::{served_by, Schedule};
use tokio::net::TcpStream;

/// How much of each response body is kept to find which replica served it.
const BODY_PEEK: usize = 4096;
/// A closed-loop connection that could not connect tries again after this long.
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);

/// What to load and how.
pub struct Job {
    pub address: SocketAddr,
    /// The Host header.
    pub authority: String,
    /// Path and query.
    pub path: String,
    pub connections: usize,
    pub threads: usize,
    pub duration: Duration,
    /// Open loop at this many requests per second; none: closed loop, as fast as answered.
    pub rate: Option<f64>,
    /// Per connect and per request (until the whole body has arrived).
    pub timeout: Duration,
}

/// What happened to requests, counted by one thread (and summed over threads by the caller).
pub struct Tally {
    /// Microseconds, of every request that got a response (any status).
    pub latency: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no response, by kind (`connect_refused`, `timeout`, `reset`, ...).
    pub failures: BTreeMap<&'static str, u64>,
    /// Responses by the replica they name (see [`served_by`]).
    pub replicas: HashMap<String, u64>,
}

impl Tally {
    pub fn new() -> Tally {
        Tally {
            // 1 µs to an hour, 3 significant digits.
            latency: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds"),
            statuses: BTreeMap::new(),
            failures: BTreeMap::new(),
            replicas: HashMap::new(),
        }
    }

    pub fn requests(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.failures.values().sum::<u64>()
    }

    /// Requests without a response, plus responses with a status of 400 or more.
    pub fn errors(&self) -> u64 {
        self.failures.values().sum::<u64>() + self.statuses.range(400..).map(|(_, n)| n).sum::<u64>()
    }

    pub fn add(&mut self, other: &Tally) {
        let _ = self.latency.add(&other.latency);
        for (k, n) in &other.statuses {
            *self.statuses.entry(*k).or_default() += n;
        }
        for (k, n) in &other.failures {
            *self.failures.entry(k).or_default() += n;
        }
        for (k, n) in &other.replicas {
            *self.replicas.entry(k.clone()).or_default() += n;
        }
    }

    fn response(&mut self, latency: Duration, status: u16, replica: Option<&str>) {
        self.latency.saturating_record(latency.as_micros().max(1) as u64);
        *self.statuses.entry(status).or_default() += 1;
        if let Some(r) = replica {
            match self.replicas.get_mut(r) {
                Some(n) => *n += 1,
                None => {
                    self.replicas.insert(r.to_string(), 1);
                }
            }
        }
    }

    fn failure(&mut self, kind: &'static str, n: u64) {
        *self.failures.entry(kind).or_default() += n;
    }
}

impl Default for Tally {
    fn default() -> Self {
        Tally::new()
    }
}

/// A run under way: its worker threads and their tallies.
pub struct Run {
    pub start: Instant,
    tallies: Vec<Arc<Mutex<Tally>>>,
    workers: Vec<JoinHandle<Result<(), String>>>,
}

impl Run {
    /// Starts the worker threads; those of a run from a container enter `netns` first.
    pub fn start(job: Job, netns: Option<String>) -> Run {
        let job = Arc::new(job);
        let netns = netns.map(Arc::new);
        let start = Instant::now();
        let mut tallies = Vec::new();
        let mut workers = Vec::new();
        for t in 0..job.threads {
            let tally = Arc::new(Mutex::new(Tally::new()));
            tallies.push(tally.clone());
            let (job, netns) = (job.clone(), netns.clone());
            let connections: Vec<usize> = (t..job.connections).step_by(job.threads).collect();
            workers.push(std::thread::spawn(move || {
                worker(job, start, connections, tally, netns)
            }));
        }
        Run {
            start,
            tallies,
            workers,
        }
    }

    pub fn finished(&self) -> bool {
        self.workers.iter().all(JoinHandle::is_finished)
    }

    /// What the threads counted since the last take.
    pub fn take(&self) -> Tally {
        let mut sum = Tally::new();
        for t in &self.tallies {
            let taken = std::mem::take(&mut *t.lock().unwrap_or_else(|e| e.into_inner()));
            sum.add(&taken);
        }
        sum
    }

    /// Waits for the threads; the first thread's error, if any.
    pub fn join(self) -> Result<(), String> {
        let mut result = Ok(());
        for w in self.workers {
            let r = w.join().unwrap_or_else(|_| Err("a load thread panicked".to_string()));
            result = result.and(r);
        }
        result
    }
}

fn worker(
    job: Arc<Job>,
    start: Instant,
    connections: Vec<usize>,
    tally: Arc<Mutex<Tally>>,
    netns: Option<Arc<String>>,
) -> Result<(), String> {
    if let Some(ns) = &netns {
        // This thread only, for good: it ends with the run.
        use plumb_core::kernel::Kernel;
        let mut kernel = crate::apply::kernel().map_err(|e| e.to_string())?;
        kernel.enter_netns(ns).map_err(|e| e.to_string())?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("start a load thread: {e}"))?;
    runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for c in connections {
            let conn = Connection {
                job: job.clone(),
                start,
                tally: tally.clone(),
                sender: None,
                body: Vec::with_capacity(BODY_PEEK),
            };
            tasks.spawn(conn.run(c));
        }
        while tasks.join_next().await.is_some() {}
    });
    Ok(())
}

/// One keep-alive connection's loop (reconnecting when the server closes it or it fails).
struct Connection {
    job: Arc<Job>,
    start: Instant,
    tally: Arc<Mutex<Tally>>,
    sender: Option<SendRequest<Empty<Bytes>>>,
    body: Vec<u8>,
}

/// What one exchange gave: the status, whether the server is closing the connection, and the
/// `X-Served-By` header.
struct Answer {
    status: u16,
    closing: bool,
    served_by_header: Option<String>,
}

impl Connection {
    async fn run(mut self, index: usize) {
        match self.job.rate {
            None => self.closed_loop().await,
            Some(rate) => {
                let schedule = Schedule::new(rate, self.job.duration, self.job.connections);
                self.open_loop(&schedule, index).await
            }
        }
    }

    /// As fast as the server answers, until the duration is over; requests under way then
    /// are finished and counted.
    async fn closed_loop(&mut self) {
        let deadline = self.start + self.job.duration;
        while Instant::now() < deadline {
            if let Err(kind) = self.ready().await {
                self.lock().failure(kind, 1);
                tokio::time::sleep(RECONNECT_PAUSE).await;
                continue;
            }
            let sent = Instant::now();
            self.exchange(sent).await;
        }
    }

    /// This connection's share of the schedule, each request timed from when it was due.
    async fn open_loop(&mut self, schedule: &Schedule, index: usize) {
        let count = schedule.count(index);
        let give_up = self.start + self.job.duration + self.job.timeout;
        for j in 0..count {
            let due = self.start + schedule.at(index, j);
            tokio::time::sleep_until(due.into()).await;
            if Instant::now() > give_up {
                self.lock().failure("not_sent", count - j);
                return;
            }
            if let Err(kind) = self.ready().await {
                self.lock().failure(kind, 1);
                continue;
            }
            self.exchange(due).await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection ready for a request: the current one, or a new one.
    async fn ready(&mut self) -> Result<(), &'static str> {
        if let Some(sender) = &mut self.sender {
            if sender.ready().await.is_ok() {
                return Ok(());
            }
        }
        self.sender = None;
        let stream = tokio::time::timeout(self.job.timeout, TcpStream::connect(self.job.address))
            .await
            .map_err(|_| "connect_timeout")?
            .map_err(|e| connect_failure(&e))?;
        let _ = stream.set_nodelay(true);
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| "connect_error")?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        sender.ready().await.map_err(|_| "connect_error")?;
        self.sender = Some(sender);
        Ok(())
    }

    /// One request and its whole response, counted with its latency from `since`.
    async fn exchange(&mut self, since: Instant) {
        let outcome = tokio::time::timeout(self.job.timeout, self.send()).await;
        let done = Instant::now();
        match outcome {
            Ok(Ok(answer)) => {
                if answer.closing {
                    self.sender = None;
                }
                let replica = served_by(answer.served_by_header.as_deref(), &self.body);
                let mut tally = self.tally.lock().unwrap_or_else(|e| e.into_inner());
                tally.response(done - since, answer.status, replica);
            }
            Ok(Err(kind)) => {
                self.sender = None;
                self.lock().failure(kind, 1);
            }
            Err(_) => {
                self.sender = None;
                self.lock().failure("timeout", 1);
            }
        }
    }

    async fn send(&mut self) -> Result<Answer, &'static str> {
        let sender = self.sender.as_mut().ok_or("closed")?;
        let request = Request::get(self.job.path.as_str())
            .header(HOST, self.job.authority.as_str())
            .body(Empty::<Bytes>::new())
            .map_err(|_| "bad_request")?;
        let response = sender.send_request(request).await.map_err(|e| request_failure(&e))?;
        let status = response.status().as_u16();
        let headers = response.headers();
        let closing = headers
            .get(CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        let served_by_header = headers
            .get("x-served-by")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut body = response.into_body();
        self.body.clear();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| request_failure(&e))?;
            if let Some(data) = frame.data_ref() {
                let room = BODY_PEEK - self.body.len();
                self.body.extend_from_slice(&data[..data.len().min(room)]);
            }
        }
        Ok(Answer {
            status,
            closing,
            served_by_header,
        })
    }
}

fn connect_failure(e: &std::io::Error) -> &'static str {
    use std::io::ErrorKind;
    match (e.kind(), e.raw_os_error()) {
        (ErrorKind::ConnectionRefused, _) => "connect_refused",
        (ErrorKind::TimedOut, _) => "connect_timeout",
        (_, Some(errno)) if errno == nix::libc::EHOSTUNREACH || errno == nix::libc::ENETUNREACH => {
            "connect_unreachable"
        }
        _ => "connect_error",
    }
}

/// A request that got no (complete) response: reset, closed, unreadable, or other.
fn request_failure(e: &hyper::Error) -> &'static str {
    use std::error::Error as _;
    let mut source = e.source();
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            return match io.kind() {
                ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => "reset",
                ErrorKind::TimedOut => "timeout",
                _ => "io_error",
            };
        }
        source = s.source();
    }
    if e.is_parse() || e.is_parse_status() {
        "bad_response"
    } else if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
        "closed"
    } else {
        "other"
    }
}

/// One `GET path` to `addr` with hyper, on the calling thread (so from its network
/// namespace), all within `within`: the status (after any informational 1xx answers) and how
/// long until it came, or what went wrong. Health checks and experiments' http checks.
pub fn get_once(addr: SocketAddr, host: &str, path: &str, within: Duration) -> Result<(u16, Duration), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("cannot start an HTTP client: {e}"))?;
    let begun = Instant::now();
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = Request::get(path)
            .header(HOST, host)
            .header(CONNECTION, "close")
            .header(USER_AGENT, "plumb")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("cannot ask for {path:?}: {e}"))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| match request_failure(&e) {
                "bad_response" => format!("{addr} answered something that is not HTTP"),
                "closed" => format!("{addr} closed the connection without an answer"),
                _ => format!("read from {addr}: {e}"),
            })?;
        Ok((response.status().as_u16(), begun.elapsed()))
    };
    runtime.block_on(async {
        tokio::time::timeout(within, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer from {addr} within {} ms", within.as_millis())))
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A server on loopback that sends `answer` to its first connection once the request
    /// head has come.
    pub(crate) fn answering(answer: &'static str) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(answer.as_bytes());
        });
        port
    }

    #[test]
    fn one_get_says_the_status_or_what_went_wrong() {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let within = Duration::from_secs(2);
        let ok = "HTTP/1.1 103 Early Hints\r\n\r\nHTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n";
        assert_eq!(get_once(at(answering(ok)), "web", "/", within).map(|(s, _)| s), Ok(204));
        let port = answering("SSH-2.0-OpenSSH\r\n\r\n");
        let not_http = get_once(at(port), "web", "/", within).unwrap_err();
        assert!(not_http.ends_with("answered something that is not HTTP"), "{not_http}");
        let port = answering("");
        let closed = get_once(at(port), "web", "/", within).unwrap_err();
        assert!(closed.ends_with("closed the connection without an answer"), "{closed}");
        // A server that never answers.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = silent.local_addr().unwrap().port();
        let late = get_once(at(port), "web", "/", Duration::from_millis(200)).unwrap_err();
        assert!(
            late.starts_with("no answer from") && late.ends_with("within 200 ms"),
            "{late}"
        );
    }
}

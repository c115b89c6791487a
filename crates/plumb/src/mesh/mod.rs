//! The sidecar proxy (`plumb proxy`, started by the stack's supervisor beside each meshed
//! replica): it enters the replica's namespace, where the interception table sends it every
//! TCP connection the replica makes (outbound port) or receives (inbound port), finds where
//! each was going (`SO_ORIGINAL_DST`) and carries it there on a marked socket (`SO_MARK`,
//! which the interception lets pass). HTTP is proxied at L7 (`http`), other TCP copied as is.

mod http;
pub mod pki;
mod state;
mod tls;

use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use plumb_core::kernel::Kernel;
use plumb_core::mesh::{INBOUND_PORT, OUTBOUND_PORT, SIDECAR_MARK};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::failure::{Failure, Result};
use crate::runfile;
use state::Shared;

/// Which side of the replica a connection is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The replica calls out.
    Outbound,
    /// Someone calls the replica.
    Inbound,
}

/// Runs the sidecar of `container` (of the stack whose state folder is `dir`) until killed.
pub fn run(dir: &Path, container: &str) -> Result<()> {
    // The supervisor blocks the signals it reads from a signalfd, and a spawned program
    // inherits the mask: SIGTERM must end the sidecar.
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
    // It lives and dies with its supervisor: a signal when it dies, and (should that be
    // missed: a supervisor gone before this line) a look at the parent at every reload.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM);
    let supervisor = nix::unistd::getppid();
    // What `ps`, `ss -p` and `plumb conns` show for it.
    let _ = nix::sys::prctl::set_name(c"plumb-proxy");
    let run = runfile::read_run(dir);
    let spec = run
        .specs
        .iter()
        .find(|s| s.container == container)
        .ok_or_else(|| Failure::new(format!("no replica {container} in {}", dir.display())))?;
    // Before any thread starts: every thread made later is inside too.
    crate::apply::kernel()?.enter_netns(&spec.netns)?;
    let service = spec.service.clone();
    let stack = run.desired.as_ref().map(|d| d.stack.clone()).unwrap_or_default();
    let dir = dir.to_path_buf();
    let container = container.to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(format!("cannot start the proxy's runtime: {e}")))?;
    runtime.block_on(async move {
        // The clients need the runtime: made inside it.
        let (shared, spans) = Shared::new(dir, container, service, stack);
        let shared = Arc::new(shared);
        tokio::spawn(state::export(shared.clone(), spans));
        serve(shared, supervisor).await
    })
}

async fn serve(shared: Arc<Shared>, supervisor: nix::unistd::Pid) -> Result<()> {
    // Redirected locally made connections arrive at 127.0.0.1; those from outside at the
    // address of the interface they came in on.
    let outbound = bind(SocketAddrV4::new([127, 0, 0, 1].into(), OUTBOUND_PORT)).await?;
    let inbound = bind(SocketAddrV4::new([0, 0, 0, 0].into(), INBOUND_PORT)).await?;
    // The supervisor starts the replica's process once this line is out.
    let mut stdout = tokio::io::stdout();
    let _ = stdout.write_all(b"ready\n").await;
    let _ = stdout.flush().await;
    let reloader = shared.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(state::RELOAD_EVERY).await;
            if nix::unistd::getppid() != supervisor {
                eprintln!("the supervisor is gone: the sidecar ends");
                std::process::exit(0);
            }
            reloader.reload();
        }
    });
    let writer = shared.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(state::STATS_EVERY).await;
            // The file system is slow next to the proxy's work: off its thread.
            let w = writer.clone();
            let _ = tokio::task::spawn_blocking(move || w.write_stats()).await;
        }
    });
    let out = tokio::spawn(accept_loop(outbound, Direction::Outbound, shared.clone()));
    let inn = tokio::spawn(accept_loop(inbound, Direction::Inbound, shared));
    let _ = out.await;
    let _ = inn.await;
    Ok(())
}

async fn bind(at: SocketAddrV4) -> Result<TcpListener> {
    let socket = TcpSocket::new_v4().map_err(|e| Failure::new(format!("socket: {e}")))?;
    let _ = socket.set_reuseaddr(true);
    socket
        .bind(SocketAddr::V4(at))
        .and_then(|()| socket.listen(1024))
        .map_err(|e| Failure::new(format!("the sidecar cannot listen on {at}: {e}")))
}

async fn accept_loop(listener: TcpListener, direction: Direction, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _peer)) = listener.accept().await else {
            continue;
        };
        let Some(target) = original_destination(&stream) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = handle(stream, target, direction, shared).await;
        });
    }
}

/// Where a redirected connection was going; `None` for one that came to the sidecar's own
/// port (it would loop back into the sidecar).
fn original_destination(stream: &TcpStream) -> Option<SocketAddrV4> {
    let raw = getsockopt(stream, sockopt::OriginalDst).ok()?;
    let target = SocketAddrV4::new(u32::from_be(raw.sin_addr.s_addr).into(), u16::from_be(raw.sin_port));
    if plumb_core::mesh::reserved_port(target.port()) {
        return None;
    }
    Some(target)
}

/// A connection to `to` that the interception lets pass.
pub async fn connect_marked(to: SocketAddrV4) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    setsockopt(&socket, sockopt::Mark, &SIDECAR_MARK).map_err(std::io::Error::from)?;
    let stream = socket.connect(SocketAddr::V4(to)).await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// How long a connection may stay silent before it is taken for a protocol where the server
/// speaks first (then it is copied at L4).
const DETECT_WITHIN: Duration = Duration::from_millis(200);

/// Serves one intercepted connection: HTTP at L7, anything else copied as it is.
async fn handle(
    mut stream: TcpStream,
    target: SocketAddrV4,
    direction: Direction,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    let mut first = [0u8; 512];
    let n = match tokio::time::timeout(DETECT_WITHIN, stream.peek(&mut first)).await {
        Ok(n) => n?,
        Err(_) => 0,
    };
    let peer = stream.peer_addr().ok();
    if direction == Direction::Inbound {
        // Another sidecar: mutual TLS, with what it carries named by ALPN.
        let tls = shared.tls().filter(|_| tls::is_mesh_hello(&first[..n]));
        if let Some(SocketAddr::V4(from)) = peer {
            let verdict = shared.admit(*from.ip(), target.port(), None, None, tls.is_some());
            if !verdict.allowed {
                eprintln!("refused a connection from {from}: {}", verdict.summary);
                return Ok(());
            }
        }
        if let Some(tls) = tls {
            let mut inner = match tls.accept(stream).await {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("a mutual TLS handshake from {peer:?} failed: {e}");
                    return Err(e);
                }
            };
            let is_http = inner.get_ref().1.alpn_protocol() == Some(tls::ALPN_HTTP);
            if is_http {
                http::serve(inner, peer, true, target, direction, shared).await;
            } else {
                let mut upstream = connect_marked(target).await?;
                tokio::io::copy_bidirectional(&mut inner, &mut upstream).await?;
            }
            return Ok(());
        }
    }
    if n > 0 && http::looks_like_http(&first[..n.min(16)]) {
        http::serve(stream, peer, false, target, direction, shared).await;
        return Ok(());
    }
    let upstream = connect_marked(target).await?;
    match shared
        .links
        .tls_to(*target.ip())
        .filter(|_| direction == Direction::Outbound)
    {
        Some(tls) => {
            let mut upstream = tls.connect(upstream, *target.ip(), false).await?;
            tokio::io::copy_bidirectional(&mut stream, &mut upstream).await?;
        }
        None => {
            let mut upstream = upstream;
            tokio::io::copy_bidirectional(&mut stream, &mut upstream).await?;
        }
    }
    Ok(())
}

//! Health probes, each run on a short-lived thread that enters the container's network
//! namespace (setns affects only the calling thread), so a slow probe never stalls the
//! supervisor; results come back through a channel, with a byte on a pipe to wake its loop.
//! An exec probe runs as the service's own processes do: same user, same capabilities.

use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::unistd::{pipe, User};
use plumb_core::kernel::{Identity, Kernel};
use plumb_core::services::RunSpec;
use plumb_core::spec::{Capabilities, HealthSpec, Probe};

use super::nonblocking_cloexec;
use crate::failure::{Failure, Result};

/// A probe thread stack: probes need little, and hundreds may run at once.
const THREAD_STACK: usize = 256 * 1024;

pub struct ProbeResult {
    pub container: String,
    /// The replica's epoch when the probe started: a result for an earlier process is stale.
    pub epoch: u64,
    pub healthy: bool,
    /// How long the probe took.
    pub seconds: f64,
}

/// Launches probes and collects their results.
pub struct Probes {
    tx: Sender<ProbeResult>,
    rx: Receiver<ProbeResult>,
    wake_read: OwnedFd,
    wake_write: Arc<OwnedFd>,
}

impl Probes {
    pub fn new() -> Result<Self> {
        let (wake_read, wake_write) = pipe().map_err(|e| Failure::new(format!("pipe: {e}")))?;
        for fd in [&wake_read, &wake_write] {
            nonblocking_cloexec(fd.as_fd());
        }
        let (tx, rx) = channel();
        Ok(Probes {
            tx,
            rx,
            wake_read,
            wake_write: Arc::new(wake_write),
        })
    }

    /// Readable when results are waiting.
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake_read.as_fd()
    }

    /// Probes `container` (whose process, started from `spec`, is of `epoch`) in its network
    /// namespace on a thread.
    pub fn launch(&self, container: &str, epoch: u64, spec: &RunSpec, health: HealthSpec) -> Result<()> {
        let netns = spec.netns.clone();
        let (tx, wake, container) = (self.tx.clone(), self.wake_write.clone(), container.to_string());
        let run_as = RunAs {
            user: spec.user.clone(),
            capabilities: spec.capabilities,
            container: spec.oci.as_ref().map(|o| o.name.clone()),
        };
        std::thread::Builder::new()
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let began = Instant::now();
                let healthy = check(&netns, &health.probe, health.timeout, &run_as);
                let _ = tx.send(ProbeResult {
                    container,
                    epoch,
                    healthy,
                    seconds: began.elapsed().as_secs_f64(),
                });
                let _ = nix::unistd::write(wake.as_fd(), &[1]);
            })
            .map_err(|e| Failure::new(format!("cannot start a probe thread: {e}")))?;
        Ok(())
    }

    /// The results that came back since the last call.
    pub fn results(&self) -> Vec<ProbeResult> {
        let mut drain = [0u8; 64];
        while matches!(nix::unistd::read(self.wake_read.as_raw_fd(), &mut drain), Ok(n) if n > 0) {}
        self.rx.try_iter().collect()
    }
}

/// Who an exec probe runs as: the service's user (root if `None`) and capabilities.
pub struct RunAs {
    pub user: Option<String>,
    pub capabilities: Capabilities,
    /// The podman container an image service's replica is: its exec checks run inside it.
    pub container: Option<String>,
}

/// Runs `probe` inside the namespace `netns`; true if the service answered as healthy.
/// Probes from inside namespace `netns` (this thread enters it for good).
pub fn check(netns: &str, probe: &Probe, timeout: Duration, run_as: &RunAs) -> bool {
    if let (Probe::Exec { command }, Some(container)) = (probe, &run_as.container) {
        // Inside the container (its files, its user): podman runs it there.
        return crate::oci::exec_probe(container, command, timeout);
    }
    let Ok(mut kernel) = crate::apply::kernel() else {
        return false;
    };
    if kernel.enter_netns(netns).is_err() {
        return false;
    }
    match probe {
        Probe::Tcp { port } => connect(*port, timeout).is_some(),
        Probe::Http { path, port } => http(*port, path, timeout),
        Probe::Exec { command } => exec(&mut kernel, command, timeout, run_as),
    }
}

fn connect(port: u16, timeout: Duration) -> Option<TcpStream> {
    let stream = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    Some(stream)
}

/// Healthy on a 2xx or 3xx answer.
fn http(port: u16, path: &str, timeout: Duration) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    crate::load::get_once(addr, "localhost", path, timeout).is_ok_and(|(status, _)| (200..400).contains(&status))
}

/// Healthy if the command exits 0 within the timeout (it runs in the thread's namespace, as
/// `run_as`).
fn exec(kernel: &mut dyn Kernel, command: &[String], timeout: Duration, run_as: &RunAs) -> bool {
    let Some((program, args)) = command.split_first() else {
        return false;
    };
    let identity = match run_as.user.as_deref().map(User::from_name) {
        None => None,
        Some(Ok(Some(user))) => Some(Identity {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }),
        Some(_) => return false,
    };
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if kernel.restrict(&mut command, identity, &run_as.capabilities).is_err() {
        return false;
    }
    let Ok(mut child) = command.spawn() else {
        return false;
    };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::tests::answering;

    const EARLY_HINTS_THEN_OK: &str = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
                                       HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";

    #[test]
    fn an_informational_answer_before_the_status_is_not_the_status() {
        let timeout = Duration::from_secs(2);
        assert!(http(answering(EARLY_HINTS_THEN_OK), "/healthz", timeout));
        let unhealthy = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        assert!(!http(answering(unhealthy), "/healthz", timeout));
        assert!(!http(answering("SSH-2.0-OpenSSH\r\n\r\n"), "/healthz", timeout));
    }
}

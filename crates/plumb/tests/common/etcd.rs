//! A real etcd (Debian's etcd-server) for cluster tests, in a sandbox's namespace on the
//! underlay's gateway address: one member, or several on consecutive ports. Its processes end
//! with the sandbox (by PID).

use std::time::Duration;

use super::cluster::UNDERLAY_GATEWAY;
use super::{eventually, Sandbox};

pub struct Etcd {
    /// Client URLs, one per member.
    pub urls: Vec<String>,
    pids: Vec<String>,
}

impl Etcd {
    /// `members` etcd members on the sandbox's underlay address (ports 2379, 2479, ...).
    pub fn start(sandbox: &Sandbox, members: usize) -> Etcd {
        let ip = UNDERLAY_GATEWAY;
        let peer = |i: usize| format!("http://{ip}:{}", 2380 + 100 * i);
        let initial: Vec<String> = (0..members).map(|i| format!("m{i}={}", peer(i))).collect();
        let mut urls = Vec::new();
        let mut pids = Vec::new();
        for i in 0..members {
            let client = format!("http://{ip}:{}", 2379 + 100 * i);
            let dir = sandbox.dir.join(format!("etcd-m{i}"));
            let pid = sandbox.ok(&format!(
                "etcd --name m{i} --data-dir {dir} --listen-client-urls {client} --advertise-client-urls {client} \
                 --listen-peer-urls {peer} --initial-advertise-peer-urls {peer} --initial-cluster {initial} \
                 --initial-cluster-state new --initial-cluster-token plumb-test \
                 >{dir}.log 2>&1 </dev/null & echo $!",
                dir = dir.display(),
                peer = peer(i),
                initial = initial.join(","),
            ));
            pids.push(pid.trim().to_string());
            urls.push(client);
        }
        let etcd = Etcd { urls, pids };
        let healthy = eventually(Duration::from_secs(20), || {
            sandbox
                .sh(&format!("etcdctl --endpoints {} endpoint health", etcd.store()))
                .status
                .success()
        });
        assert!(healthy, "etcd did not become healthy");
        etcd
    }

    /// The `--store` argument: every member's URL.
    pub fn store(&self) -> String {
        self.urls.join(",")
    }

    /// Kills member `i` (kill -9, by PID).
    pub fn kill(&self, sandbox: &Sandbox, i: usize) {
        sandbox.ok(&format!("kill -9 {}", self.pids[i]));
    }

    /// Every key under `prefix`, as `etcdctl get --prefix --keys-only` lists them.
    pub fn keys(&self, sandbox: &Sandbox, prefix: &str) -> Vec<String> {
        sandbox
            .ok(&format!(
                "ETCDCTL_API=3 etcdctl --endpoints {} get --prefix --keys-only {prefix}",
                self.store()
            ))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
}

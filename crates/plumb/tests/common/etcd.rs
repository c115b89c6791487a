//! A real etcd (Debian's etcd-server) for cluster tests, in a sandbox's namespace on the
//! underlay's gateway address: one member, or several on consecutive ports. As plumb expects
//! it: TLS for clients and peers, client certificates required, all made by `plumb cluster
//! init` into the sandbox's `pki/` (each simulated host presents `pki/clients/HOST`, see
//! `Host`). Its processes end with the sandbox (by PID).

use std::time::Duration;

use super::cluster::UNDERLAY_GATEWAY;
use super::{eventually, Sandbox, PLUMB};

/// Who gets a client certificate: the simulated hosts, and an operator.
pub const CLIENTS: &str = "h1,h2,h3,h4,h5,admin";

pub struct Etcd {
    /// Client URLs, one per member.
    pub urls: Vec<String>,
    pids: Vec<String>,
    /// The certificates (`plumb cluster init --out`).
    pub pki: std::path::PathBuf,
}

impl Etcd {
    /// `members` etcd members on the sandbox's underlay address (ports 2379, 2479, ...).
    pub fn start(sandbox: &Sandbox, members: usize) -> Etcd {
        let ip = UNDERLAY_GATEWAY;
        let pki = sandbox.dir.join("pki");
        sandbox.ok(&format!(
            "{PLUMB} cluster init --out {} --store-address {ip} --clients {CLIENTS} >/dev/null",
            pki.display()
        ));
        let tls = format!(
            "--cert-file {s}/server.crt --key-file {s}/server.key --trusted-ca-file {s}/ca.crt --client-cert-auth \
             --peer-cert-file {s}/server.crt --peer-key-file {s}/server.key --peer-trusted-ca-file {s}/ca.crt --peer-client-cert-auth",
            s = pki.join("store").display()
        );
        let peer = |i: usize| format!("https://{ip}:{}", 2380 + 100 * i);
        let initial: Vec<String> = (0..members).map(|i| format!("m{i}={}", peer(i))).collect();
        let mut urls = Vec::new();
        let mut pids = Vec::new();
        for i in 0..members {
            let client = format!("https://{ip}:{}", 2379 + 100 * i);
            let dir = sandbox.dir.join(format!("etcd-m{i}"));
            let pid = sandbox.ok(&format!(
                "etcd {tls} --name m{i} --data-dir {dir} --listen-client-urls {client} --advertise-client-urls {client} \
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
        let etcd = Etcd { urls, pids, pki };
        let healthy = eventually(Duration::from_secs(20), || {
            sandbox.sh(&format!("{} endpoint health", etcd.ctl())).status.success()
        });
        assert!(healthy, "etcd did not become healthy");
        etcd
    }

    /// `etcdctl` (v3 API) on every member, as the operator (admin's client certificate).
    pub fn ctl(&self) -> String {
        let admin = self.pki.join("clients/admin");
        format!(
            "ETCDCTL_API=3 etcdctl --endpoints {} --cacert {a}/ca.crt --cert {a}/client.crt --key {a}/client.key",
            self.store(),
            a = admin.display()
        )
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
            .ok(&format!("{} get --prefix --keys-only {prefix}", self.ctl()))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    }
}

//! What the supervisor runs: for each container with a command, the fully resolved process
//! (command, environment, working directory, hosts file). Pure: computed from the desired
//! state and the stack file's folder.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::desired::{Container, Desired};
use crate::spec::{Capabilities, Dependency, HealthSpec, RestartPolicy};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub container: String,
    pub service: String,
    pub replica: u32,
    pub netns: String,
    pub command: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: PathBuf,
    pub user: Option<String>,
    /// What the process (and its exec health probe) may hold, by who it runs as. A run file
    /// written before plumb set capabilities reads as Docker's default set.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Its resource limits: the replica runs in its own cgroup when any is set.
    #[serde(default, skip_serializing_if = "crate::cgroup::Limits::is_empty")]
    pub limits: crate::cgroup::Limits,
    pub restart: RestartPolicy,
    pub health: Option<HealthSpec>,
    pub depends_on: Vec<Dependency>,
    pub stop_grace_ms: u64,
    /// Content of the container's /etc/hosts: localhost and the container's own name (other
    /// names are the stack's DNS server's).
    pub hosts: String,
    /// For an image service: the OCI container that is the replica's process (run by podman).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<crate::oci::OciRun>,
    /// In the service mesh: a sidecar proxy runs beside the process, supervised with it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mesh: bool,
}

/// The PATH every service runs with, and where `plumb up` looks for a command's program.
pub const SEARCH_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Environment variable naming a service's addresses: `PLUMB_ADDRS_MY_API`.
pub fn addrs_variable(service: &str) -> String {
    format!("PLUMB_ADDRS_{}", service.to_uppercase().replace('-', "_"))
}

/// The address `from` should use to reach `to`: `to`'s address on the first network they
/// share. None if they share none: an address `from` has no route to would only turn a
/// clear "unknown host" into a connect timeout (Docker does not resolve such names either).
fn address_for(from: &Container, to: &Container) -> Option<Ipv4Addr> {
    to.interfaces
        .iter()
        .find(|t| from.interfaces.iter().any(|f| f.network == t.network))
        .map(|i| i.address)
}

/// A container's /etc/hosts: localhost, and its own name on its first address (127.0.1.1
/// without a network, as Debian does). Services' names are not here: DNS answers them,
/// scoped, and a service's name gives its VIP.
fn hosts_file(c: &Container) -> String {
    let own = c.interfaces.first().map_or(Ipv4Addr::new(127, 0, 1, 1), |i| i.address);
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{own}\t{}\n",
        c.name
    )
}

/// Run specs for every container that has a command. `base` is the stack file's folder:
/// commands, `workdir` and relative paths are relative to it.
pub fn run_specs(desired: &Desired, base: &Path) -> Vec<RunSpec> {
    let mut by_service: BTreeMap<&str, Vec<&Container>> = BTreeMap::new();
    for c in &desired.containers {
        by_service.entry(&c.service).or_default().push(c);
    }
    desired
        .containers
        .iter()
        .filter_map(|c| {
            let p = c.process.as_ref()?;
            let mut env = BTreeMap::new();
            env.insert("PLUMB_STACK".to_string(), desired.stack.clone());
            env.insert("PLUMB_SERVICE".to_string(), c.service.clone());
            env.insert("PLUMB_REPLICA".to_string(), c.replica.to_string());
            let hosts = hosts_file(c);
            for (service, replicas) in &by_service {
                let addrs: Vec<String> = replicas
                    .iter()
                    .filter_map(|r| address_for(c, r))
                    .map(|a| a.to_string())
                    .collect();
                // Unset rather than empty: the service is not there for this container.
                if !addrs.is_empty() {
                    env.insert(addrs_variable(service), addrs.join(","));
                }
            }
            env.extend(p.env.clone());
            let workdir = match &p.workdir {
                // An image service's workdir is inside its container (see `oci`).
                Some(w) if p.image.is_none() => base.join(w),
                _ => base.to_path_buf(),
            };
            let oci = p.image.as_ref().map(|image| crate::oci::OciRun {
                image: image.clone(),
                stack: desired.stack.clone(),
                name: crate::oci::container_name(&desired.stack, &c.name),
                workdir: p.workdir.clone(),
            });
            Some(RunSpec {
                container: c.name.clone(),
                service: c.service.clone(),
                replica: c.replica,
                netns: c.netns.clone(),
                command: p.command.clone(),
                env,
                workdir,
                user: p.user.clone(),
                capabilities: p.capabilities,
                limits: p.limits,
                restart: p.restart,
                health: p.health.clone(),
                depends_on: p.depends_on.clone(),
                stop_grace_ms: p.stop_grace.as_millis() as u64,
                hosts,
                oci,
                mesh: c.mesh,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::resolve;
    use crate::spec::parse;

    #[test]
    fn each_container_learns_every_service_address_on_a_shared_network() {
        let parsed = parse(
            "f",
            r#"
name = "s"
[networks.a]
subnet = "10.0.1.0/24"
[networks.b]
subnet = "10.0.2.0/24"
[services.web]
networks = ["a", "b"]
command = "nginx"
[services.my-api]
networks = ["b"]
replicas = 2
command = ["api", "--port", "80"]
env = { MODE = "test" }
workdir = "srv"
"#,
        )
        .unwrap();
        let (desired, _) = resolve(&parsed, &Default::default()).unwrap();
        let specs = run_specs(&desired, Path::new("/stack"));
        assert_eq!(specs.len(), 3);
        let api2 = specs.iter().find(|s| s.container == "my-api-2").unwrap();
        assert_eq!(api2.env["PLUMB_REPLICA"], "2");
        assert_eq!(api2.env["MODE"], "test");
        assert_eq!(api2.workdir, PathBuf::from("/stack/srv"));
        // web reaches api on b, and api reaches web on b (not on a, which api is not on).
        assert_eq!(api2.env["PLUMB_ADDRS_WEB"], "10.0.2.4");
        assert_eq!(api2.env["PLUMB_ADDRS_MY_API"], "10.0.2.2,10.0.2.3");
        // The hosts file names the container itself only; DNS answers for the others.
        assert_eq!(
            api2.hosts,
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.0.2.3\tmy-api-2\n"
        );
        let web = specs.iter().find(|s| s.container == "web-1").unwrap();
        assert_eq!(web.env["PLUMB_ADDRS_WEB"], "10.0.1.2");
        assert_eq!(web.workdir, PathBuf::from("/stack"));
    }

    #[test]
    fn a_service_is_known_only_on_networks_the_asker_shares_with_it() {
        // The segmented shop's shape: each tier sees its neighbours, never further.
        let parsed = parse(
            "f",
            r#"
name = "s"
[networks.frontend]
subnet = "10.0.10.0/24"
[networks.backend]
subnet = "10.0.11.0/24"
[networks.database]
subnet = "10.0.12.0/24"
internal = true
[services.redis]
networks = ["database"]
command = "redis"
[services.product]
networks = ["backend", "database"]
replicas = 2
command = "product"
[services.gateway]
networks = ["frontend", "backend"]
command = "gateway"
[services.web]
networks = ["frontend"]
command = "web"
"#,
        )
        .unwrap();
        let (desired, _) = resolve(&parsed, &Default::default()).unwrap();
        let specs = run_specs(&desired, Path::new("/stack"));
        let spec = |name: &str| specs.iter().find(|s| s.container == name).unwrap();
        let on = |container: &str, network: &str| {
            let c = desired.containers.iter().find(|c| c.name == container).unwrap();
            let i = c.interfaces.iter().find(|i| i.network == network).unwrap();
            i.address.to_string()
        };

        // web knows gateway by its frontend address, and nothing behind it.
        let web = spec("web-1");
        let gw_front = on("gateway-1", "frontend");
        assert_eq!(web.env["PLUMB_ADDRS_GATEWAY"], gw_front);
        assert!(!web.env.contains_key("PLUMB_ADDRS_PRODUCT"));
        assert!(!web.env.contains_key("PLUMB_ADDRS_REDIS"));

        // gateway: web on frontend, the products on backend (their first network, shared).
        let gw = spec("gateway-1");
        assert_eq!(gw.env["PLUMB_ADDRS_WEB"], on("web-1", "frontend"));
        let products = format!("{},{}", on("product-1", "backend"), on("product-2", "backend"));
        assert_eq!(gw.env["PLUMB_ADDRS_PRODUCT"], products);
        assert_eq!(gw.env["PLUMB_ADDRS_GATEWAY"], gw_front);
        assert!(!gw.env.contains_key("PLUMB_ADDRS_REDIS"));

        // product: gateway on backend (not frontend), redis on database.
        let p2 = spec("product-2");
        let gw_back = on("gateway-1", "backend");
        assert_eq!(p2.env["PLUMB_ADDRS_GATEWAY"], gw_back);
        assert_eq!(p2.env["PLUMB_ADDRS_REDIS"], on("redis-1", "database"));

        // redis: the products by their database addresses (not their first, backend, ones).
        let redis = spec("redis-1");
        let products = format!("{},{}", on("product-1", "database"), on("product-2", "database"));
        assert_eq!(redis.env["PLUMB_ADDRS_PRODUCT"], products);
        assert!(!redis.env.contains_key("PLUMB_ADDRS_GATEWAY"));
    }
}

//! Image services as OCI containers run by podman: the `podman run` that joins a replica's
//! own namespace (`--network ns:/run/netns/NAME`), the capabilities the container gets, and
//! the names and labels that let `up` and `down` find what a stack left in podman. Pure:
//! the binary runs the commands (`plumb::oci`).

use serde::{Deserialize, Serialize};

use crate::services::RunSpec;
use crate::spec::{Capabilities, CapabilitySet};

/// The label every container plumb runs carries, with its stack's name as the value.
pub const STACK_LABEL: &str = "io.plumb.stack";
/// The label of an image plumb built: a digest of its build context, so an unchanged
/// context is not built again.
pub const CONTEXT_LABEL: &str = "io.plumb.context";

/// Podman 4's default capabilities (containers.conf's `default_capabilities`): Docker's
/// default set without MKNOD, NET_RAW and AUDIT_WRITE.
const PODMAN_DEFAULT: [&str; 11] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

/// What a replica of an image service runs as a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciRun {
    pub image: String,
    /// The stack it belongs to (its label).
    pub stack: String,
    /// The container's name in podman: `STACK-CONTAINER` (`shop-web-2`).
    pub name: String,
    /// `workdir`, inside the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
}

/// Podman's name for a replica's container: `STACK-CONTAINER`.
pub fn container_name(stack: &str, container: &str) -> String {
    format!("{stack}-{container}")
}

/// The capabilities a container gets: podman's default set, less what the service's
/// `cap_drop` removes, plus what its `cap_add` names (as for host programs, whose default is
/// Docker's larger set).
pub fn container_capabilities(caps: &Capabilities) -> CapabilitySet {
    let podman = PODMAN_DEFAULT
        .iter()
        .filter_map(|name| match crate::spec::parse_name(name) {
            Some(crate::spec::CapabilityName::One(n)) => Some(n),
            _ => None,
        })
        .fold(CapabilitySet::EMPTY, CapabilitySet::with);
    caps.root & (podman | caps.user)
}

/// Where a replica's container finds plumb's files for it.
#[derive(Debug, Clone, Copy)]
pub struct Mounts<'a> {
    /// The replica's namespace (`/run/netns/shop-web-2`).
    pub netns: &'a str,
    /// Its hosts file, bound over /etc/hosts.
    pub hosts: &'a str,
    /// Its resolv.conf (the stack's DNS server), bound over /etc/resolv.conf; None if the
    /// container has none (no network).
    pub resolv_conf: Option<&'a str>,
    /// Where podman writes the PID of the container's monitor (conmon), which outlives
    /// `podman run` by a moment: the supervisor waits for it before it calls a stop done.
    pub conmon_pidfile: &'a str,
}

/// The arguments of the `podman` that runs one replica in the foreground: removed when it
/// ends, replacing a container of that name a crash left, in the replica's own network
/// namespace, with an init that passes signals on (`--init`: SIGTERM ends a Python or shell
/// PID 1 too), the service's capabilities, user, workdir and the names of its environment
/// variables (their values travel in podman's environment, not on its command line), the
/// image, and the service's command if it has one.
pub fn run_args(spec: &RunSpec, oci: &OciRun, mounts: Mounts) -> Vec<String> {
    let mut args: Vec<String> = [
        "run",
        "--rm",
        "--replace",
        "--init",
        "--pull=never",
        "--log-driver=none",
    ]
    .map(String::from)
    .to_vec();
    args.push(format!("--name={}", oci.name));
    args.push(format!("--label={STACK_LABEL}={}", oci.stack));
    args.push(format!("--conmon-pidfile={}", mounts.conmon_pidfile));
    args.push(format!("--network=ns:{}", mounts.netns));
    args.push(format!("--hostname={}", spec.container));
    args.push(format!("--volume={}:/etc/hosts:ro", mounts.hosts));
    if let Some(resolv) = mounts.resolv_conf {
        args.push(format!("--volume={resolv}:/etc/resolv.conf:ro"));
    }
    args.push("--cap-drop=all".into());
    let keep: Vec<&str> = container_capabilities(&spec.capabilities).names().collect();
    if !keep.is_empty() {
        args.push(format!("--cap-add={}", keep.join(",")));
    }
    // podman puts the container in a cgroup of its own with these limits.
    let limits = &spec.limits;
    if let Some(cpus) = limits.cpus {
        args.push(format!("--cpus={cpus}"));
    }
    if let Some(memory) = limits.memory {
        args.push(format!("--memory={memory}"));
    }
    match limits.memory_swap {
        Some(crate::cgroup::Swap::Total(total)) => args.push(format!("--memory-swap={total}")),
        Some(crate::cgroup::Swap::Unlimited) => args.push("--memory-swap=-1".into()),
        None => {}
    }
    if let Some(pids) = limits.pids {
        args.push(format!("--pids-limit={pids}"));
    }
    if let Some(user) = &spec.user {
        args.push(format!("--user={user}"));
    }
    if let Some(workdir) = &oci.workdir {
        args.push(format!("--workdir={workdir}"));
    }
    for name in spec.env.keys() {
        args.push(format!("--env={name}"));
    }
    args.push(oci.image.clone());
    args.extend(spec.command.iter().cloned());
    args
}

/// The arguments of `podman build` for an image, labelled with its context's digest.
pub fn build_args(image: &str, dockerfile: &str, context: &str, digest: &str) -> Vec<String> {
    vec![
        "build".into(),
        format!("--tag={image}"),
        format!("--file={dockerfile}"),
        format!("--label={CONTEXT_LABEL}={digest}"),
        context.into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{parse_name, CapabilityName};

    fn names(set: CapabilitySet) -> Vec<&'static str> {
        set.names().collect()
    }

    fn one(name: &str) -> CapabilityName {
        parse_name(name).unwrap()
    }

    #[test]
    fn containers_get_podmans_defaults_less_drops_plus_adds() {
        let default = names(container_capabilities(&Capabilities::default()));
        assert_eq!(default.len(), PODMAN_DEFAULT.len());
        assert!(PODMAN_DEFAULT.iter().all(|c| default.contains(c)), "{default:?}");
        let caps = Capabilities::docker(&[one("NET_ADMIN"), one("NET_RAW")], &[one("KILL")]);
        let got = names(container_capabilities(&caps));
        assert!(
            got.contains(&"NET_ADMIN") && got.contains(&"NET_RAW") && !got.contains(&"KILL"),
            "{got:?}"
        );
        assert!(!got.contains(&"MKNOD"), "Docker's extra default stays out: {got:?}");
        let none = Capabilities::docker(&[], &[CapabilityName::All]);
        assert!(container_capabilities(&none).is_empty());
    }

    fn replica(oci: &OciRun, caps: Capabilities, command: &[&str]) -> RunSpec {
        RunSpec {
            container: "web-2".into(),
            service: "web".into(),
            replica: 2,
            netns: "shop-web-2".into(),
            command: command.iter().map(|c| c.to_string()).collect(),
            env: [("A", "1"), ("PLUMB_STACK", "shop")]
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .into(),
            workdir: "/".into(),
            user: Some("www-data".into()),
            capabilities: caps,
            limits: Default::default(),
            restart: crate::spec::RestartPolicy::Always,
            health: None,
            depends_on: Vec::new(),
            stop_grace_ms: 1000,
            hosts: String::new(),
            oci: Some(oci.clone()),
            mesh: false,
        }
    }

    #[test]
    fn a_replica_runs_in_its_own_namespace_with_plumbs_files() {
        let oci = OciRun {
            image: "localhost/web".into(),
            stack: "shop".into(),
            name: container_name("shop", "web-2"),
            workdir: Some("/srv".into()),
        };
        let mounts = Mounts {
            netns: "/run/netns/shop-web-2",
            hosts: "/var/lib/plumb/stacks/shop/hosts/web-2",
            resolv_conf: Some("/etc/netns/shop-web-2/resolv.conf"),
            conmon_pidfile: "/s/conmon/web-2",
        };
        let caps = Capabilities::docker(&[], &[CapabilityName::All]);
        let args = run_args(&replica(&oci, caps, &["nginx"]), &oci, mounts);
        assert_eq!(
            args.join(" "),
            "run --rm --replace --init --pull=never --log-driver=none --name=shop-web-2 --label=io.plumb.stack=shop \
             --conmon-pidfile=/s/conmon/web-2 --network=ns:/run/netns/shop-web-2 --hostname=web-2 --volume=/var/lib/plumb/stacks/shop/hosts/web-2:/etc/hosts:ro \
             --volume=/etc/netns/shop-web-2/resolv.conf:/etc/resolv.conf:ro --cap-drop=all --user=www-data --workdir=/srv \
             --env=A --env=PLUMB_STACK localhost/web nginx"
        );
        let default = run_args(&replica(&oci, Capabilities::default(), &[]), &oci, mounts);
        assert!(default.iter().any(|a| a.starts_with("--cap-add=CHOWN,")));
        assert_eq!(
            default.last().map(String::as_str),
            Some("localhost/web"),
            "the image's own command"
        );
        // Limits are podman's flags.
        let mut limited = replica(&oci, Capabilities::default(), &[]);
        limited.limits = crate::cgroup::Limits {
            cpus: Some(0.5),
            memory: Some(64 << 20),
            memory_swap: Some(crate::cgroup::Swap::Unlimited),
            pids: Some(100),
        };
        let args = run_args(&limited, &oci, mounts);
        for flag in [
            "--cpus=0.5",
            "--memory=67108864",
            "--memory-swap=-1",
            "--pids-limit=100",
        ] {
            assert!(args.iter().any(|a| a == flag), "{flag} in {args:?}");
        }
    }

    #[test]
    fn builds_are_labelled_with_their_context() {
        assert_eq!(
            build_args("localhost/web", "Dockerfile", "/srv/web", "ab12").join(" "),
            "build --tag=localhost/web --file=Dockerfile --label=io.plumb.context=ab12 /srv/web"
        );
    }
}

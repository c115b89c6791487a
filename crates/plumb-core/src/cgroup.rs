//! Resource limits of a service's replicas as control groups (cgroups), pure: sizes as the
//! stack file and Compose write them, CPU quota arithmetic, where each replica's cgroup
//! sits and which files, with which values, set its limits on cgroup v2 and on v1, and
//! how to read its usage counters. `plumb-linux` writes and reads the files.

use serde::{Deserialize, Serialize};

/// A service's limits (`cpus`, `memory`, `memory_swap`, `pids`); each replica gets them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// CPUs' worth of time per period: 0.5 is half of one core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<f64>,
    /// Bytes of memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<u64>,
    /// Memory and swap together, in bytes (Docker's `--memory-swap`); `Unlimited` swap is
    /// Docker's `-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_swap: Option<Swap>,
    /// Processes and threads the replica may have at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Swap {
    Total(u64),
    Unlimited,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }

    /// The controllers these limits need (`cpu`, `memory`, `pids`).
    pub fn controllers(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.cpus.is_some() {
            out.push("cpu");
        }
        if self.memory.is_some() || self.memory_swap.is_some() {
            out.push("memory");
        }
        if self.pids.is_some() {
            out.push("pids");
        }
        out
    }
}

/// The pids limit of a replica whose service sets none (podman's default `pids_limit`), so
/// that a fork bomb stays in its container; applied where the host has the pids controller.
pub const DEFAULT_PIDS: u64 = 2048;

impl Limits {
    /// These limits with the default pids limit if they set none.
    pub fn with_default_pids(self) -> Limits {
        Limits {
            pids: self.pids.or(Some(DEFAULT_PIDS)),
            ..self
        }
    }
}

/// The CFS period plumb uses (the kernel's default), in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// The smallest quota the kernel accepts, in microseconds.
const CPU_QUOTA_MIN_US: u64 = 1_000;

/// The quota per [`CPU_PERIOD_US`] for `cpus` CPUs.
pub fn cpu_quota_us(cpus: f64) -> u64 {
    ((cpus * CPU_PERIOD_US as f64).round() as u64).max(CPU_QUOTA_MIN_US)
}

/// A size as Docker and Compose write it: bytes (`1048576`), or a number with a unit
/// `b`, `k`, `m`, `g` (powers of 1024, any case, an optional trailing `b`: `256M`,
/// `1gb`, `512k`, `1.5g`).
pub fn parse_size(text: &str) -> Option<u64> {
    let lower = text.trim().to_ascii_lowercase();
    let number_end = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(number_end);
    let scale: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    if number.is_empty() || number.matches('.').count() > 1 {
        return None;
    }
    let value: f64 = number.parse().ok()?;
    let bytes = value * scale as f64;
    (bytes.is_finite() && bytes < u64::MAX as f64).then_some(bytes as u64)
}

/// Which cgroup hierarchy the host has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One unified hierarchy (stock Debian 12).
    V2,
    /// One hierarchy per controller under `/sys/fs/cgroup/NAME` (v1 or hybrid hosts).
    V1,
}

/// Where plumb's cgroups sit under a hierarchy's root unless `PLUMB_CGROUP_ROOT` says
/// otherwise (tests give each sandbox its own).
pub const DEFAULT_ROOT: &str = "plumb.slice";

/// plumb's root given `PLUMB_CGROUP_ROOT`'s value: a relative path without `..`, else
/// [`DEFAULT_ROOT`].
pub fn root_from(configured: Option<&str>) -> String {
    configured
        .filter(|r| !r.is_empty() && !r.contains("..") && !r.starts_with('/'))
        .unwrap_or(DEFAULT_ROOT)
        .to_string()
}

/// A replica's cgroup below plumb's root (`ROOT/STACK/CONTAINER` in each hierarchy).
pub fn replica_path(stack: &str, container: &str) -> String {
    format!("{stack}/{container}")
}

/// The v1 hierarchies a replica's cgroup is made in: each limited controller, and
/// `cpuacct` and `memory` to account CPU time and memory even without a limit.
pub fn v1_hierarchies(limits: &Limits) -> Vec<&'static str> {
    let mut out = vec!["cpuacct", "memory"];
    for c in limits.controllers() {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

/// One file to write in a replica's cgroup: in which controller's hierarchy (v1; on v2
/// the one directory), which file, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub controller: &'static str,
    pub file: &'static str,
    pub value: String,
    /// The stack-file field it comes from, for errors.
    pub field: &'static str,
}

/// The files that set `limits`, in the order they must be written (v1 takes the memory
/// limit before memory+swap).
pub fn settings(limits: &Limits, version: Version) -> Vec<Setting> {
    let set = |controller, file, value: String, field| Setting {
        controller,
        file,
        value,
        field,
    };
    let mut out = Vec::new();
    if let Some(cpus) = limits.cpus {
        let quota = cpu_quota_us(cpus);
        match version {
            Version::V2 => out.push(set("cpu", "cpu.max", format!("{quota} {CPU_PERIOD_US}"), "cpus")),
            Version::V1 => {
                out.push(set("cpu", "cpu.cfs_period_us", CPU_PERIOD_US.to_string(), "cpus"));
                out.push(set("cpu", "cpu.cfs_quota_us", quota.to_string(), "cpus"));
            }
        }
    }
    if let Some(memory) = limits.memory {
        let file = match version {
            Version::V2 => "memory.max",
            Version::V1 => "memory.limit_in_bytes",
        };
        out.push(set("memory", file, memory.to_string(), "memory"));
    }
    if let Some(swap) = limits.memory_swap {
        match version {
            // v2 limits swap alone: the total less the memory.
            Version::V2 => {
                let value = match swap {
                    Swap::Unlimited => "max".to_string(),
                    Swap::Total(total) => total.saturating_sub(limits.memory.unwrap_or(0)).to_string(),
                };
                out.push(set("memory", "memory.swap.max", value, "memory_swap"));
            }
            Version::V1 => {
                let value = match swap {
                    Swap::Unlimited => "-1".to_string(),
                    Swap::Total(total) => total.to_string(),
                };
                out.push(set("memory", "memory.memsw.limit_in_bytes", value, "memory_swap"));
            }
        }
    }
    if let Some(pids) = limits.pids {
        out.push(set("pids", "pids.max", pids.to_string(), "pids"));
    }
    out
}

/// What a replica's cgroup has counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// CPU time used by all its processes, in microseconds.
    pub cpu_usec: u64,
    /// Memory charged to it now, in bytes.
    pub memory_bytes: u64,
    /// Processes the kernel's OOM killer ended in it.
    pub oom_kills: u64,
}

/// The files [`Usage`] is read from: (controller, file).
pub fn usage_files(version: Version) -> [(&'static str, &'static str); 3] {
    match version {
        Version::V2 => [
            ("cpu", "cpu.stat"),
            ("memory", "memory.current"),
            ("memory", "memory.events"),
        ],
        Version::V1 => [
            ("cpuacct", "cpuacct.usage"),
            ("memory", "memory.usage_in_bytes"),
            ("memory", "memory.oom_control"),
        ],
    }
}

/// Reads [`Usage`] from the contents of the three [`usage_files`], in their order.
pub fn parse_usage(version: Version, cpu: &str, memory: &str, events: &str) -> Usage {
    let keyed = |text: &str, key: &str| {
        text.lines()
            .filter_map(|l| l.split_once(' '))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu_usec = match version {
        Version::V2 => keyed(cpu, "usage_usec"),
        Version::V1 => cpu.trim().parse::<u64>().unwrap_or(0) / 1_000,
    };
    Usage {
        cpu_usec,
        memory_bytes: memory.trim().parse().unwrap_or(0),
        oom_kills: keyed(events, "oom_kill"),
    }
}

/// CPU use between two readings `elapsed_us` apart, in percent of one core.
pub fn cpu_percent(before: u64, after: u64, elapsed_us: u64) -> f64 {
    if elapsed_us == 0 {
        return 0.0;
    }
    after.saturating_sub(before) as f64 * 100.0 / elapsed_us as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_a_relative_path_without_dot_dot_or_the_default() {
        assert_eq!(root_from(None), DEFAULT_ROOT);
        assert_eq!(root_from(Some("")), DEFAULT_ROOT);
        assert_eq!(root_from(Some("/abs")), DEFAULT_ROOT);
        assert_eq!(root_from(Some("a/../b")), DEFAULT_ROOT);
        assert_eq!(root_from(Some("plumb-test-1-0/tour-7")), "plumb-test-1-0/tour-7");
    }

    #[test]
    fn sizes_take_docker_units() {
        assert_eq!(parse_size("256M"), Some(256 << 20));
        assert_eq!(parse_size("256m"), Some(256 << 20));
        assert_eq!(parse_size("1gb"), Some(1 << 30));
        assert_eq!(parse_size("1.5g"), Some(3 << 29));
        assert_eq!(parse_size("512k"), Some(512 << 10));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("100b"), Some(100));
        for bad in ["", "M", "12x", "-5m", "1.2.3m", "lots"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_default_pids_limit_fills_in_only_what_is_unset() {
        assert_eq!(Limits::default().with_default_pids().pids, Some(DEFAULT_PIDS));
        let set = Limits {
            pids: Some(64),
            ..Limits::default()
        };
        assert_eq!(set.with_default_pids(), set);
        assert_eq!(set.controllers(), ["pids"]);
        assert!(Limits::default().is_empty() && !set.is_empty());
    }

    #[test]
    fn cpu_quota_is_per_100ms_period() {
        assert_eq!(cpu_quota_us(0.5), 50_000);
        assert_eq!(cpu_quota_us(0.2), 20_000);
        assert_eq!(cpu_quota_us(2.0), 200_000);
        // The kernel refuses quotas under 1 ms.
        assert_eq!(cpu_quota_us(0.001), 1_000);
    }

    #[test]
    fn v2_settings() {
        let limits = Limits {
            cpus: Some(0.5),
            memory: Some(256 << 20),
            memory_swap: Some(Swap::Total(512 << 20)),
            pids: Some(64),
        };
        let files: Vec<_> = settings(&limits, Version::V2)
            .into_iter()
            .map(|s| (s.file, s.value))
            .collect();
        assert_eq!(
            files,
            [
                ("cpu.max", "50000 100000".to_string()),
                ("memory.max", (256u64 << 20).to_string()),
                ("memory.swap.max", (256u64 << 20).to_string()),
                ("pids.max", "64".to_string()),
            ]
        );
    }

    #[test]
    fn v1_settings_put_memory_before_memsw() {
        let limits = Limits {
            cpus: Some(0.2),
            memory: Some(64 << 20),
            memory_swap: Some(Swap::Unlimited),
            pids: None,
        };
        let files: Vec<_> = settings(&limits, Version::V1)
            .into_iter()
            .map(|s| (s.controller, s.file, s.value))
            .collect();
        assert_eq!(
            files,
            [
                ("cpu", "cpu.cfs_period_us", "100000".to_string()),
                ("cpu", "cpu.cfs_quota_us", "20000".to_string()),
                ("memory", "memory.limit_in_bytes", (64u64 << 20).to_string()),
                ("memory", "memory.memsw.limit_in_bytes", "-1".to_string()),
            ]
        );
        assert_eq!(v1_hierarchies(&limits), ["cpuacct", "memory", "cpu"]);
    }

    #[test]
    fn usage_from_either_version() {
        let v2 = parse_usage(
            Version::V2,
            "usage_usec 1500\nuser_usec 1000\n",
            "4096\n",
            "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        );
        assert_eq!(
            v2,
            Usage {
                cpu_usec: 1500,
                memory_bytes: 4096,
                oom_kills: 1
            }
        );
        let v1 = parse_usage(
            Version::V1,
            "2000000\n",
            "8192\n",
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        );
        assert_eq!(
            v1,
            Usage {
                cpu_usec: 2000,
                memory_bytes: 8192,
                oom_kills: 2
            }
        );
        assert_eq!(cpu_percent(0, 200_000, 1_000_000), 20.0);
    }
}

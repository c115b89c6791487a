//! Linux capabilities by name, and the ones a service's process gets: Docker's default set,
//! changed by `cap_add` / `cap_drop` exactly as Docker changes it. Pure: names and bit masks;
//! `plumb_linux::spawn` applies them.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Capability names as in capabilities(7) without `CAP_`, indexed by the kernel's number.
const NAMES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Docker 28's default set (moby's `oci/caps/defaults.go`): no NET_ADMIN, no SYS_ADMIN.
const DOCKER_DEFAULT: [&str; 14] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "NET_RAW",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// A set of capabilities, as the kernel's 64-bit mask (bit n = capability number n).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CapabilitySet(u64);

impl CapabilitySet {
    pub const EMPTY: CapabilitySet = CapabilitySet(0);
    /// Every capability plumb knows (CHOWN .. CHECKPOINT_RESTORE).
    pub const ALL: CapabilitySet = CapabilitySet((1 << NAMES.len()) - 1);

    /// Docker's default set: what a service gets without `cap_add` or `cap_drop`.
    pub fn docker_default() -> CapabilitySet {
        DOCKER_DEFAULT
            .iter()
            .filter_map(|name| number_of(name))
            .fold(CapabilitySet::EMPTY, |set, n| set.with(n))
    }

    pub fn from_mask(mask: u64) -> CapabilitySet {
        CapabilitySet(mask & CapabilitySet::ALL.0)
    }

    /// The kernel's mask: bit n set for capability number n.
    pub fn mask(self) -> u64 {
        self.0
    }

    pub fn with(self, number: u8) -> CapabilitySet {
        CapabilitySet(self.0 | (1 << number)) & CapabilitySet::ALL
    }

    pub fn contains(self, number: u8) -> bool {
        number < 64 && self.0 & (1 << number) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The names in the set, in the kernel's order, without `CAP_`.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        (0u8..)
            .zip(NAMES)
            .filter(move |(n, _)| self.contains(*n))
            .map(|(_, name)| name)
    }
}

impl std::ops::BitOr for CapabilitySet {
    type Output = CapabilitySet;
    fn bitor(self, other: CapabilitySet) -> CapabilitySet {
        CapabilitySet(self.0 | other.0)
    }
}

impl std::ops::BitAnd for CapabilitySet {
    type Output = CapabilitySet;
    fn bitand(self, other: CapabilitySet) -> CapabilitySet {
        CapabilitySet(self.0 & other.0)
    }
}

impl std::ops::Sub for CapabilitySet {
    type Output = CapabilitySet;
    fn sub(self, other: CapabilitySet) -> CapabilitySet {
        CapabilitySet(self.0 & !other.0)
    }
}

impl fmt::Debug for CapabilitySet {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.debug_set().entries(self.names()).finish()
    }
}

/// Written as the list of its names, so run files and `--json` output read as the stack file.
impl Serialize for CapabilitySet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.names())
    }
}

impl<'de> Deserialize<'de> for CapabilitySet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(deserializer)?;
        names
            .iter()
            .try_fold(CapabilitySet::EMPTY, |set, name| match parse_name(name) {
                Some(CapabilityName::One(n)) => Ok(set.with(n)),
                _ => Err(serde::de::Error::custom(format!("unknown capability {name:?}"))),
            })
    }
}

/// One entry of `cap_add` / `cap_drop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapabilityName {
    /// `ALL`: every capability.
    All,
    /// One capability, by its kernel number.
    One(u8),
}

/// Reads a name as Docker does: any case, with or without `CAP_`, or `ALL`.
pub fn parse_name(text: &str) -> Option<CapabilityName> {
    let upper = text.to_ascii_uppercase();
    if upper == "ALL" {
        return Some(CapabilityName::All);
    }
    number_of(upper.strip_prefix("CAP_").unwrap_or(&upper)).map(CapabilityName::One)
}

fn number_of(name: &str) -> Option<u8> {
    (0u8..).zip(NAMES).find(|(_, known)| *known == name).map(|(n, _)| n)
}

/// The known name closest to an unknown one (a typo or a missing `_`), if one is close.
pub fn closest_name(text: &str) -> Option<&'static str> {
    let upper = text.to_ascii_uppercase();
    let wanted = upper.strip_prefix("CAP_").unwrap_or(&upper);
    NAMES
        .iter()
        .map(|name| (edit_distance(wanted, name), *name))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, name)| name)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// What a service's processes may hold, by who they run as (see docs/stack-file.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// The bounding set of every process of the service, and what a process running as root
    /// holds: Docker's default set with `cap_add` and `cap_drop` applied.
    pub root: CapabilitySet,
    /// What a process running as another `user` holds (as ambient capabilities): only what
    /// `cap_add` names. Docker grants such a user nothing; plumb keeps what was asked for.
    pub user: CapabilitySet,
}

impl Default for Capabilities {
    fn default() -> Self {
        Capabilities::docker(&[], &[])
    }
}

impl Capabilities {
    /// The set from `cap_add` and `cap_drop` as Docker computes it: `ALL` in `cap_add` gives
    /// everything but the dropped; `ALL` in `cap_drop` gives only the added; otherwise the
    /// default set less the dropped, plus the added (an added one wins over a dropped one).
    pub fn docker(add: &[CapabilityName], drop: &[CapabilityName]) -> Capabilities {
        let set_of = |names: &[CapabilityName]| {
            names.iter().fold(CapabilitySet::EMPTY, |set, name| match name {
                CapabilityName::All => CapabilitySet::ALL,
                CapabilityName::One(n) => set.with(*n),
            })
        };
        let (added, dropped) = (set_of(add), set_of(drop));
        let root = if add.contains(&CapabilityName::All) {
            CapabilitySet::ALL - dropped
        } else if drop.contains(&CapabilityName::All) {
            added
        } else {
            (CapabilitySet::docker_default() - dropped) | added
        };
        Capabilities {
            root,
            user: added & root,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(set: CapabilitySet) -> Vec<&'static str> {
        set.names().collect()
    }

    fn one(name: &str) -> CapabilityName {
        parse_name(name).unwrap()
    }

    #[test]
    fn the_default_set_is_dockers() {
        // The mask Docker containers show in /proc/self/status as CapBnd.
        assert_eq!(CapabilitySet::docker_default().mask(), 0xa80425fb);
        assert_eq!(Capabilities::default().root, CapabilitySet::docker_default());
        assert!(Capabilities::default().user.is_empty());
        assert_eq!(CapabilitySet::ALL.mask(), 0x1ff_ffff_ffff);
    }

    #[test]
    fn names_are_read_as_docker_reads_them() {
        assert_eq!(parse_name("NET_ADMIN"), Some(CapabilityName::One(12)));
        assert_eq!(parse_name("cap_net_admin"), Some(CapabilityName::One(12)));
        assert_eq!(parse_name("all"), Some(CapabilityName::All));
        assert_eq!(parse_name("CAP_ALL"), None);
        assert_eq!(parse_name("NET_ADMINN"), None);
        assert_eq!(closest_name("NET_ADMINN"), Some("NET_ADMIN"));
        assert_eq!(closest_name("cap_netadmin"), Some("NET_ADMIN"));
        assert_eq!(closest_name("FLY"), None);
    }

    #[test]
    fn add_and_drop_change_the_default_set_as_in_docker() {
        let caps = Capabilities::docker(&[one("NET_ADMIN")], &[one("MKNOD"), one("NET_RAW")]);
        assert!(caps.root.contains(12) && !caps.root.contains(27) && !caps.root.contains(13));
        assert_eq!(names(caps.user), ["NET_ADMIN"]);
        let only = Capabilities::docker(&[one("KILL")], &[CapabilityName::All]);
        assert_eq!(names(only.root), ["KILL"]);
        let all = Capabilities::docker(&[CapabilityName::All], &[one("SYS_ADMIN")]);
        assert_eq!(all.root, CapabilitySet::ALL - CapabilitySet::EMPTY.with(21));
        assert_eq!(all.user, all.root);
        // Added and dropped at once: added wins, as in Docker.
        let both = Capabilities::docker(&[one("NET_RAW")], &[one("NET_RAW")]);
        assert!(both.root.contains(13));
    }

    #[test]
    fn sets_round_trip_as_lists_of_names() {
        let caps = Capabilities::docker(&[one("NET_ADMIN")], &[CapabilityName::All]);
        let json = serde_json::to_string(&caps).unwrap();
        assert_eq!(json, r#"{"root":["NET_ADMIN"],"user":["NET_ADMIN"]}"#);
        assert_eq!(serde_json::from_str::<Capabilities>(&json).unwrap(), caps);
        assert!(serde_json::from_str::<CapabilitySet>(r#"["FLY"]"#).is_err());
    }
}

//! The service mesh's pure parts: how a replica's TCP is steered through its sidecar (the
//! nft table inside its namespace), and the decisions the sidecar takes (which endpoint, when
//! to retry, when to eject), as values and functions without I/O.

pub mod balance;
pub mod directory;
pub mod stats;
pub mod trace;

use std::fmt::Write;

/// The sidecar's port for the replica's outgoing connections (redirected in `output`).
pub const OUTBOUND_PORT: u16 = 15001;
/// The sidecar's port for connections coming into the replica (redirected in `prerouting`).
pub const INBOUND_PORT: u16 = 15006;
/// The socket mark (`SO_MARK`) on the sidecar's own connections: the interception lets them
/// pass. "PLMB".
pub const SIDECAR_MARK: u32 = 0x504c_4d42;
/// The port of the supervisor's OTLP/HTTP trace receiver, on each of the stack's gateways.
pub const OTLP_PORT: u16 = 4318;
/// The table plumb owns inside a meshed replica's namespace (it goes with the namespace).
pub const TABLE: &str = "plumb_mesh";

/// The interception table of a meshed replica's namespace, as an nft script that replaces
/// it: every TCP connection the replica makes goes to the sidecar's outbound port, every one
/// coming in through its interfaces to the inbound port; the sidecar's own connections
/// (marked) and loopback traffic pass untouched.
pub fn interception_script() -> String {
    let mut s = String::new();
    // `add` then `delete` then the table: replaces it whether or not it exists.
    let _ = writeln!(
        s,
        "add table inet {TABLE}\ndelete table inet {TABLE}\ntable inet {TABLE} {{"
    );
    let _ = writeln!(
        s,
        "\tchain outbound {{\n\t\ttype nat hook output priority -100; policy accept;"
    );
    let _ = writeln!(s, "\t\tmeta mark {SIDECAR_MARK:#x} return");
    let _ = writeln!(s, "\t\toifname \"lo\" return");
    let _ = writeln!(s, "\t\tmeta l4proto tcp redirect to :{OUTBOUND_PORT}\n\t}}");
    let _ = writeln!(
        s,
        "\tchain inbound {{\n\t\ttype nat hook prerouting priority -100; policy accept;"
    );
    let _ = writeln!(s, "\t\tiifname \"lo\" return");
    let _ = writeln!(s, "\t\tmeta l4proto tcp redirect to :{INBOUND_PORT}\n\t}}\n}}");
    s
}

/// The ports a meshed service may not use itself: the sidecar's.
pub fn reserved_port(port: u16) -> bool {
    port == OUTBOUND_PORT || port == INBOUND_PORT
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interception_lets_the_sidecar_and_loopback_pass_and_sends_the_rest_to_it() {
        let s = interception_script();
        assert!(
            s.starts_with("add table inet plumb_mesh\ndelete table inet plumb_mesh\n"),
            "{s}"
        );
        let outbound = &s[s.find("chain outbound").unwrap()..s.find("chain inbound").unwrap()];
        assert!(outbound.contains("type nat hook output priority -100"), "{outbound}");
        let mark = outbound.find("meta mark 0x504c4d42 return").unwrap();
        let redirect = outbound.find("redirect to :15001").unwrap();
        assert!(
            mark < redirect,
            "the sidecar's own connections pass before the redirect"
        );
        let inbound = &s[s.find("chain inbound").unwrap()..];
        assert!(
            inbound.contains("hook prerouting") && inbound.contains("redirect to :15006"),
            "{inbound}"
        );
        assert!(inbound.find("iifname \"lo\" return").unwrap() < inbound.find("redirect").unwrap());
    }
}

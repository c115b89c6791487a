//! `TARGET:PORT[/tcp|udp]`: what `plumb trace` and `plumb policy` are asked about, parsed in
//! one place.

use crate::spec::Protocol;

/// A destination: a container, service or address (as written), a port and a protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortTarget<'a> {
    pub name: &'a str,
    pub port: u16,
    pub protocol: Protocol,
}

/// Why text is not `TARGET:PORT[/tcp|udp]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadTarget {
    /// No ':' before a port.
    #[error("{0:?} has no port")]
    NoPort(String),
    /// Nothing before the ':'.
    #[error("{0:?} names nothing before its port")]
    NoName(String),
    /// Not a number from 1 to 65535 (nothing listens on port 0).
    #[error("{0:?} is not a port (1 to 65535)")]
    Port(String),
    /// After the '/', neither tcp nor udp.
    #[error("unknown protocol {0:?}")]
    Protocol(String),
}

/// `TARGET:PORT`, `TARGET:PORT/tcp` or `TARGET:PORT/udp` (tcp when not said).
pub fn parse_target(text: &str) -> Result<PortTarget<'_>, BadTarget> {
    let (name, rest) = text
        .rsplit_once(':')
        .ok_or_else(|| BadTarget::NoPort(text.to_string()))?;
    let (port, protocol) = rest.split_once('/').unwrap_or((rest, "tcp"));
    let protocol = match protocol {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => return Err(BadTarget::Protocol(other.to_string())),
    };
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| BadTarget::Port(port.to_string()))?;
    if name.is_empty() {
        return Err(BadTarget::NoName(text.to_string()));
    }
    Ok(PortTarget { name, port, protocol })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_port_and_protocol() {
        let t = |name, port, protocol| Ok(PortTarget { name, port, protocol });
        assert_eq!(parse_target("api:5000"), t("api", 5000, Protocol::Tcp));
        assert_eq!(parse_target("10.89.0.3:53/udp"), t("10.89.0.3", 53, Protocol::Udp));
        assert_eq!(parse_target("web-1:80/tcp"), t("web-1", 80, Protocol::Tcp));
    }

    #[test]
    fn bad_targets_say_what_is_wrong() {
        assert_eq!(parse_target("api"), Err(BadTarget::NoPort("api".into())));
        assert_eq!(parse_target(":80"), Err(BadTarget::NoName(":80".into())));
        assert_eq!(parse_target("api:0"), Err(BadTarget::Port("0".into())));
        assert_eq!(parse_target("api:0/udp"), Err(BadTarget::Port("0".into())));
        assert_eq!(parse_target("api:65536"), Err(BadTarget::Port("65536".into())));
        assert_eq!(parse_target("api:80/sctp"), Err(BadTarget::Protocol("sctp".into())));
    }
}

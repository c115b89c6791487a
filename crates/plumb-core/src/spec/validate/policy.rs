//! `[[policies]]`: each entry's selectors (`from`, `to`), ports and protocol, checked against
//! the services and networks the file declares. Services and networks share one namespace
//! here: a name that is both must say which (`service:x`, `network:x`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::ops::Range;

use ipnet::Ipv4Net;
use toml::Spanned;

use super::Validator;
use crate::spec::model::{PolicySpec, PortRange, Protocol, Selector, ServiceSpec};
use crate::spec::raw::{RawPolicy, RawValue};

const SELECTOR_FORMS: &str =
    "a service or network name, \"service:NAME\", \"network:NAME\", \"outside\", \"host\" or an IPv4 CIDR such as \"10.1.0.0/16\"";

impl Validator<'_> {
    pub(super) fn policies(
        &mut self,
        raw: Vec<Spanned<RawPolicy>>,
        services: &BTreeMap<String, ServiceSpec>,
    ) -> Vec<PolicySpec> {
        let mut out = Vec::new();
        for (i, p) in raw.iter().enumerate() {
            let field = format!("policies[{i}]");
            self.spans.insert(field.clone(), self.policy_span(p));
            if let Some(spec) = self.policy(&field, p, services) {
                out.push(spec);
            }
        }
        out
    }

    /// Where a policy starts: its `[[policies]]` header (toml's span of an array-of-tables
    /// entry is not its own), or its first field when written inline.
    fn policy_span(&self, p: &Spanned<RawPolicy>) -> Range<usize> {
        let r = p.get_ref();
        let first = [&r.from, &r.to, &r.ports]
            .into_iter()
            .flatten()
            .map(Spanned::span)
            .chain(r.protocol.as_ref().map(Spanned::span))
            .chain(r.log.as_ref().map(Spanned::span))
            .chain(r.methods.as_ref().map(Spanned::span))
            .chain(r.paths.as_ref().map(Spanned::span))
            .chain(r.mtls.as_ref().map(Spanned::span))
            .min_by_key(|s| s.start);
        let Some(first) = first else { return p.span() };
        let before = &self.map.text[..first.start];
        match before.rfind("[[") {
            Some(at) if before[at..].starts_with("[[policies]]") => at..at + "[[policies]]".len(),
            _ => first,
        }
    }

    fn policy(
        &mut self,
        field: &str,
        raw: &Spanned<RawPolicy>,
        services: &BTreeMap<String, ServiceSpec>,
    ) -> Option<PolicySpec> {
        let p = raw.get_ref();
        let mut ok = true;
        let mut sides = Vec::new();
        for (key, value) in [("from", &p.from), ("to", &p.to)] {
            let sfield = format!("{field}.{key}");
            match value {
                None => {
                    self.err(
                        raw.span(),
                        &sfield,
                        format!("a policy needs `{key}`"),
                        format!("add {key} = \"SERVICE\" (or a list; {SELECTOR_FORMS})"),
                    );
                    ok = false;
                }
                Some(v) => {
                    self.spans.insert(sfield.clone(), v.span());
                    match self.selectors(&sfield, v, services) {
                        Some(s) => sides.push(s),
                        None => ok = false,
                    }
                }
            }
        }
        let ports = match &p.ports {
            None => Vec::new(),
            Some(v) => {
                self.spans.insert(format!("{field}.ports"), v.span());
                self.port_ranges(&format!("{field}.ports"), v).unwrap_or_else(|| {
                    ok = false;
                    Vec::new()
                })
            }
        };
        let protocol = match p.protocol.as_ref().map(|r| (r.get_ref().as_str(), r.span())) {
            None | Some(("tcp", _)) => Protocol::Tcp,
            Some(("udp", _)) => Protocol::Udp,
            Some((other, span)) => {
                self.err(
                    span,
                    &format!("{field}.protocol"),
                    format!("unknown protocol {other:?}"),
                    "use \"tcp\" (the default) or \"udp\"; for both, write two policies",
                );
                ok = false;
                Protocol::Tcp
            }
        };
        let methods = match &p.methods {
            None => Vec::new(),
            Some(v) => self.methods(&format!("{field}.methods"), v).unwrap_or_else(|| {
                ok = false;
                Vec::new()
            }),
        };
        let paths = match &p.paths {
            None => Vec::new(),
            Some(v) => self.paths(&format!("{field}.paths"), v).unwrap_or_else(|| {
                ok = false;
                Vec::new()
            }),
        };
        let mtls = p.mtls.as_ref().is_some_and(|m| *m.get_ref());
        if let Some(m) = &p.mtls {
            self.spans.insert(format!("{field}.mtls"), m.span());
        }
        if !ok || sides.len() != 2 {
            return None;
        }
        let to = sides.pop()?;
        let from = sides.pop()?;
        let l7 = [
            ("methods", p.methods.as_ref().map(Spanned::span)),
            ("paths", p.paths.as_ref().map(Spanned::span)),
            ("mtls", p.mtls.as_ref().filter(|m| *m.get_ref()).map(Spanned::span)),
        ];
        if let Some((key, Some(span))) = l7.into_iter().find(|(_, s)| s.is_some()) {
            // Only a receiving sidecar can read methods and paths, or know a peer's identity.
            let outside = to.iter().find(|s| match s {
                Selector::Service(name) => !services.get(name).is_some_and(|svc| svc.mesh),
                _ => true,
            });
            if let Some(sel) = outside {
                self.err(
                    span,
                    &format!("{field}.{key}"),
                    format!("`{key}` is enforced by the receiving sidecar, and {sel} has none"),
                    "name only services in the mesh in `to` (mesh = true at the top or in the service), or drop this field",
                );
                return None;
            }
            if protocol == Protocol::Udp {
                self.err(
                    span,
                    &format!("{field}.{key}"),
                    format!("`{key}` needs protocol = \"tcp\""),
                    "drop protocol = \"udp\" or this field",
                );
                return None;
            }
        }
        Some(PolicySpec {
            from,
            to,
            ports,
            protocol,
            log: p.log.as_ref().is_some_and(|l| *l.get_ref()),
            methods,
            paths,
            mtls,
        })
    }

    /// `"name"` or `["name", "10.0.0.0/8"]`.
    fn selectors(
        &mut self,
        field: &str,
        value: &Spanned<RawValue>,
        services: &BTreeMap<String, ServiceSpec>,
    ) -> Option<Vec<Selector>> {
        let items: Vec<(String, Range<usize>, String)> = match value.get_ref() {
            RawValue::String(s) => vec![(s.clone(), value.span(), field.to_string())],
            RawValue::Array(items) if !items.is_empty() => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.get_ref().as_str() {
                        Some(s) => out.push((s.to_string(), item.span(), format!("{field}[{i}]"))),
                        None => {
                            self.err(
                                item.span(),
                                &format!("{field}[{i}]"),
                                "a selector must be a string",
                                format!("use {SELECTOR_FORMS}"),
                            );
                            return None;
                        }
                    }
                }
                out
            }
            _ => {
                self.err(
                    value.span(),
                    field,
                    "expected a selector or a non-empty list of selectors",
                    format!("use {SELECTOR_FORMS}, e.g. [\"gateway\", \"10.1.0.0/16\"]"),
                );
                return None;
            }
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (text, span, ifield) in items {
            match self.selector(&ifield, &text, span, services) {
                Some(s) => out.push(s),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn selector(
        &mut self,
        field: &str,
        text: &str,
        span: Range<usize>,
        services: &BTreeMap<String, ServiceSpec>,
    ) -> Option<Selector> {
        let is_service = |n: &str| services.contains_key(n);
        let is_network = |n: &str| self.declared_networks.contains(n);
        if let Some(name) = text.strip_prefix("service:") {
            if is_service(name) {
                return Some(Selector::Service(name.into()));
            }
        } else if let Some(name) = text.strip_prefix("network:") {
            if is_network(name) {
                return Some(Selector::Network(name.into()));
            }
        } else if text == "outside" {
            return Some(Selector::Outside);
        } else if text == "host" {
            return Some(Selector::Host);
        } else if text.contains('/') || text.parse::<Ipv4Addr>().is_ok() || looks_like_address(text) {
            return self.cidr(field, text, span);
        } else {
            match (is_service(text), is_network(text)) {
                (true, false) => return Some(Selector::Service(text.into())),
                (false, true) => return Some(Selector::Network(text.into())),
                (true, true) => {
                    self.err(
                        span,
                        field,
                        format!("{text:?} is both a service and a network"),
                        format!("write \"service:{text}\" or \"network:{text}\""),
                    );
                    return None;
                }
                (false, false) => {}
            }
        }
        let services: Vec<&str> = services.keys().map(String::as_str).collect();
        let networks: Vec<&str> = self.declared_networks.iter().map(String::as_str).collect();
        self.err(
            span,
            field,
            format!("unknown selector {text:?}"),
            format!(
                "name a service ({}), a network ({}), \"outside\", \"host\" or an IPv4 CIDR such as \"10.1.0.0/16\"",
                list_or_none(&services),
                list_or_none(&networks)
            ),
        );
        None
    }

    fn cidr(&mut self, field: &str, text: &str, span: Range<usize>) -> Option<Selector> {
        let net = match text.parse::<Ipv4Net>() {
            Ok(n) => n,
            Err(_) => match text.parse::<Ipv4Addr>() {
                Ok(a) => Ipv4Net::from(a),
                Err(_) => {
                    self.err(
                        span,
                        field,
                        format!("{text:?} is not a valid IPv4 CIDR"),
                        "write ADDRESS/PREFIX, e.g. \"10.1.0.0/16\", or one address, e.g. \"203.0.113.7\"",
                    );
                    return None;
                }
            },
        };
        if net.network() != net.addr() {
            self.err(
                span,
                field,
                format!("{text:?} has host bits set"),
                format!("use \"{}\"", net.trunc()),
            );
            return None;
        }
        Some(Selector::Cidr(net))
    }

    /// `5001`, `"6000-6010"`, `"53"`, or a list of them.
    fn port_ranges(&mut self, field: &str, value: &Spanned<RawValue>) -> Option<Vec<PortRange>> {
        const HINT: &str = "ports are numbers 1-65535 or \"FIRST-LAST\" ranges, e.g. ports = [5001, \"6000-6010\"]; leave ports out for every port";
        let RawValue::Array(items) = value.get_ref() else {
            self.err(value.span(), field, "ports must be a list", HINT);
            return None;
        };
        if items.is_empty() {
            self.err(
                value.span(),
                field,
                "ports is empty: the policy would allow nothing",
                HINT,
            );
            return None;
        }
        let mut out = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            let ifield = format!("{field}[{i}]");
            let parsed = match item.get_ref() {
                RawValue::Integer(n) => port(*n).map(|p| PortRange { first: p, last: p }),
                RawValue::String(s) => parse_range(s),
                _ => Err("a port must be a number or a \"FIRST-LAST\" string".to_string()),
            };
            match parsed {
                Ok(r) => out.push(r),
                Err(why) => {
                    self.err(item.span(), &ifield, why, HINT);
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }
}

fn port(n: i64) -> Result<u16, String> {
    match u16::try_from(n) {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("port {n} is outside 1-65535")),
    }
}

/// `"6000-6010"` or `"53"`.
fn parse_range(s: &str) -> Result<PortRange, String> {
    let number = |t: &str| -> Result<u16, String> {
        let n: i64 = t
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not a port or a port range"))?;
        port(n)
    };
    match s.split_once('-') {
        None => number(s).map(|p| PortRange { first: p, last: p }),
        Some((a, b)) => {
            let (first, last) = (number(a)?, number(b)?);
            if first > last {
                return Err(format!("port range {s:?} runs backwards"));
            }
            Ok(PortRange { first, last })
        }
    }
}

/// Digits and dots only: meant as an address, so a bad one is reported as one.
fn looks_like_address(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.')
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none declared".into()
    } else {
        names.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::{parse, PortRange, Protocol, Selector};

    const HEAD: &str =
        "name = \"s\"\n[networks.front]\nsubnet = \"10.0.1.0/24\"\n[networks.back]\nsubnet = \"10.0.2.0/24\"\n\
        [services.web]\nnetworks = [\"front\"]\n[services.api]\nnetworks = [\"front\", \"back\"]\n";

    /// The one error of a stack with `policy` appended, as `file:line:col: field: message / hint`.
    fn error(policy: &str) -> String {
        let err = parse("plumb.toml", &format!("{HEAD}{policy}")).expect_err("should be rejected");
        assert_eq!(err.0.len(), 1, "{err}");
        err.0[0].to_string()
    }

    #[test]
    fn a_valid_policy_reads_into_the_model() {
        let text = format!(
            "{HEAD}[[policies]]\nfrom = [\"web\", \"network:back\", \"outside\", \"10.9.0.0/16\", \"203.0.113.7\"]\nto = \"api\"\nports = [5001, \"6000-6010\"]\nprotocol = \"udp\"\nlog = true\n"
        );
        let p = &parse("plumb.toml", &text).unwrap().stack.policies[0];
        assert_eq!(
            p.from,
            [
                Selector::Service("web".into()),
                Selector::Network("back".into()),
                Selector::Outside,
                Selector::Cidr("10.9.0.0/16".parse().unwrap()),
                Selector::Cidr("203.0.113.7/32".parse().unwrap()),
            ]
        );
        assert_eq!(p.to, [Selector::Service("api".into())]);
        assert_eq!(
            p.ports,
            [
                PortRange {
                    first: 5001,
                    last: 5001
                },
                PortRange {
                    first: 6000,
                    last: 6010
                }
            ]
        );
        assert_eq!((p.protocol, p.log), (Protocol::Udp, true));
    }

    #[test]
    fn an_unknown_selector_lists_the_known_names() {
        let e = error("[[policies]]\nfrom = \"web\"\nto = [\"api\", \"gatway\"]\n");
        assert!(e.starts_with("plumb.toml:12:"), "{e}");
        assert!(e.contains("policies[0].to[1]: unknown selector \"gatway\""), "{e}");
        assert!(e.contains("a service (api, web), a network (back, front)"), "{e}");
    }

    #[test]
    fn a_name_of_a_service_and_a_network_needs_saying_which() {
        let text = HEAD
            .replace("[services.web]", "[services.back]")
            .replace("\"web\"", "\"back\"");
        let err = parse(
            "plumb.toml",
            &format!("{text}[[policies]]\nfrom = \"back\"\nto = \"api\"\n"),
        )
        .err()
        .unwrap();
        let e = err.to_string();
        assert!(
            e.contains("policies[0].from: \"back\" is both a service and a network"),
            "{e}"
        );
        assert!(e.contains("\"service:back\" or \"network:back\""), "{e}");
    }

    #[test]
    fn bad_ports_protocols_and_cidrs_are_each_reported_at_their_value() {
        for (policy, field, message) in [
            ("ports = [\"6010-6000\"]", "policies[0].ports[0]", "runs backwards"),
            ("ports = [0]", "policies[0].ports[0]", "outside 1-65535"),
            ("ports = [\"80-70000\"]", "policies[0].ports[0]", "outside 1-65535"),
            (
                "ports = [\"http\"]",
                "policies[0].ports[0]",
                "is not a port or a port range",
            ),
            ("ports = []", "policies[0].ports", "would allow nothing"),
            (
                "protocol = \"icmp\"",
                "policies[0].protocol",
                "unknown protocol \"icmp\"",
            ),
        ] {
            let e = error(&format!("[[policies]]\nfrom = \"web\"\nto = \"api\"\n{policy}\n"));
            assert!(e.contains("plumb.toml:13:"), "{e}");
            assert!(e.contains(&format!("{field}: ")) && e.contains(message), "{e}");
            assert!(e.contains("hint: "), "{e}");
        }
        let e = error("[[policies]]\nfrom = \"10.1.2.0/33\"\nto = \"api\"\n");
        assert!(
            e.contains("policies[0].from: \"10.1.2.0/33\" is not a valid IPv4 CIDR"),
            "{e}"
        );
        let e = error("[[policies]]\nfrom = \"10.1.2.3/16\"\nto = \"api\"\n");
        assert!(
            e.contains("has host bits set") && e.contains("use \"10.1.0.0/16\""),
            "{e}"
        );
        let e = error("[[policies]]\nfrom = \"10.1.2\"\nto = \"api\"\n");
        assert!(e.contains("is not a valid IPv4 CIDR"), "{e}");
        let e = error("[[policies]]\nto = \"api\"\n");
        assert!(e.contains("policies[0].from: a policy needs `from`"), "{e}");
        let e = error("[[policies]]\nfrom = \"web\"\nto = \"api\"\nport = 80\n");
        assert!(e.contains("unknown field `port`"), "{e}");
    }
}

//! The service mesh's fields: `mesh` and `tracing` at the top, `mesh` per service,
//! `[[routes]]` (timeouts, retries, ejection), and the L7 parts of `[[policies]]` (`methods`,
//! `paths`, `mtls`).

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::{parse_duration, Validator};
use crate::spec::model::{RouteSpec, ServiceSpec};
use crate::spec::raw::{RawRoute, RawValue};

/// `tracing = "off"`: the sidecars make no spans.
pub const TRACING_OFF: &str = "off";

/// The most retries a route may ask for: more only multiplies the load on a failing service.
pub const MAX_RETRIES: i64 = 10;

/// The methods a route or policy may name (RFC 9110's, and PATCH).
const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl Validator<'_> {
    /// `tracing = "http://HOST:PORT"`: an OTLP/HTTP collector (the path `/v1/traces` is added);
    /// `"off"`: no spans at all (`traceparent` passes through untouched).
    pub(super) fn tracing(&mut self, raw: Option<&Spanned<String>>) -> Option<String> {
        let raw = raw?;
        self.spans.insert("tracing".into(), raw.span());
        let text = raw.get_ref().trim_end_matches('/');
        let ok = text.strip_prefix("http://").is_some_and(|rest| {
            let (host, port) = rest.rsplit_once(':').unwrap_or((rest, "80"));
            host.parse::<std::net::Ipv4Addr>().is_ok() && port.parse::<u16>().is_ok_and(|p| p != 0)
        });
        if ok || text == TRACING_OFF {
            Some(text.to_string())
        } else {
            self.err(
                raw.span(),
                "tracing",
                format!("{:?} is not an OTLP/HTTP collector address", raw.get_ref()),
                "write tracing = \"http://ADDRESS:4318\" (plain HTTP, an IPv4 address and a port), \"off\" for no spans, or leave it out to keep traces in plumb (`plumb traces`)",
            );
            None
        }
    }

    /// A meshed service may not answer on the sidecar's own ports.
    pub(super) fn check_sidecar_ports(&mut self, services: &BTreeMap<String, ServiceSpec>) {
        for (name, svc) in services.iter().filter(|(_, s)| s.mesh) {
            if let Some(p) = svc
                .service_ports()
                .into_iter()
                .find(|p| crate::mesh::reserved_port(p.port))
            {
                let field = format!("services.{name}.mesh");
                let span = super::span_of(&self.spans, &field);
                self.err(
                    span,
                    &field,
                    format!(
                        "service {name:?} answers on port {}, which its sidecar takes in the mesh",
                        p.port
                    ),
                    format!(
                        "move the service off ports {} and {}, or leave it out of the mesh (mesh = false)",
                        crate::mesh::OUTBOUND_PORT,
                        crate::mesh::INBOUND_PORT
                    ),
                );
            }
        }
    }

    pub(super) fn routes(
        &mut self,
        raw: Vec<Spanned<RawRoute>>,
        services: &BTreeMap<String, ServiceSpec>,
    ) -> Vec<RouteSpec> {
        let mut out: Vec<RouteSpec> = Vec::new();
        let mut seen: BTreeMap<(String, Option<String>), String> = BTreeMap::new();
        for (i, r) in raw.iter().enumerate() {
            let field = format!("routes[{i}]");
            let span = self.header_span(r.span(), "[[routes]]", r.get_ref().first_span());
            self.spans.insert(field.clone(), span.clone());
            let Some(route) = self.route(&field, span, r.get_ref(), services) else {
                continue;
            };
            let key = (route.service.clone(), route.path.clone());
            if let Some(first) = seen.get(&key) {
                let place = self.spans.get(&field).cloned();
                self.err(
                    place,
                    &field,
                    format!(
                        "{first} already sets the route of service {:?}{}",
                        route.service,
                        match &route.path {
                            Some(p) => format!(" under {p:?}"),
                            None => String::new(),
                        }
                    ),
                    "merge the two [[routes]] entries into one",
                );
                continue;
            }
            seen.insert(key, field);
            out.push(route);
        }
        out
    }

    fn route(
        &mut self,
        field: &str,
        span: Range<usize>,
        r: &RawRoute,
        services: &BTreeMap<String, ServiceSpec>,
    ) -> Option<RouteSpec> {
        let mut ok = true;
        let service = match &r.service {
            None => {
                self.err(
                    span,
                    &format!("{field}.service"),
                    "a route needs `service`",
                    "add service = \"NAME\" (the service its requests go to)",
                );
                return None;
            }
            Some(s) => {
                self.spans.insert(format!("{field}.service"), s.span());
                match services.get(s.get_ref()) {
                    None => {
                        let known: Vec<&str> = services.keys().map(String::as_str).collect();
                        self.err(
                            s.span(),
                            &format!("{field}.service"),
                            format!("unknown service {:?}", s.get_ref()),
                            format!("use one of: {}", known.join(", ")),
                        );
                        ok = false;
                    }
                    Some(svc) if !svc.mesh => {
                        self.err(
                            s.span(),
                            &format!("{field}.service"),
                            format!(
                                "service {:?} is not in the mesh: no sidecar would follow this route",
                                s.get_ref()
                            ),
                            "add mesh = true at the top of the file (or in the service)",
                        );
                        ok = false;
                    }
                    Some(_) => {}
                }
                s.get_ref().clone()
            }
        };
        let mut route = RouteSpec::default_for(&service);
        if let Some(p) = &r.path {
            self.spans.insert(format!("{field}.path"), p.span());
            if !p.get_ref().starts_with('/') || p.get_ref().contains(['?', '#', ' ']) {
                self.err(
                    p.span(),
                    &format!("{field}.path"),
                    format!("{:?} is not a path prefix", p.get_ref()),
                    "write a path starting with '/', without query or spaces, e.g. \"/api\"",
                );
                ok = false;
            }
            route.path = Some(p.get_ref().clone());
        }
        if let Some(t) = &r.timeout {
            route.timeout = self.positive_duration(&format!("{field}.timeout"), t);
            ok &= route.timeout.is_some();
        }
        if let Some(n) = &r.retries {
            self.spans.insert(format!("{field}.retries"), n.span());
            match u32::try_from(*n.get_ref()) {
                Ok(v) if i64::from(v) <= MAX_RETRIES => route.retries = v,
                _ => {
                    self.err(
                        n.span(),
                        &format!("{field}.retries"),
                        format!("retries = {} is out of range", n.get_ref()),
                        format!("use 0 to {MAX_RETRIES}"),
                    );
                    ok = false;
                }
            }
        }
        if let Some(b) = &r.retry_budget {
            let bfield = format!("{field}.retry_budget");
            self.spans.insert(bfield.clone(), b.span());
            match b.get_ref().strip_suffix('%').and_then(|v| v.trim().parse::<u32>().ok()) {
                Some(v) if (1..=100).contains(&v) => route.retry_budget_percent = v,
                _ => {
                    self.err(
                        b.span(),
                        &bfield,
                        format!("{:?} is not a retry budget", b.get_ref()),
                        "write a percentage of requests from 1% to 100%, e.g. \"20%\" (the default)",
                    );
                    ok = false;
                }
            }
        }
        if let Some(m) = &r.retry_methods {
            match self.methods(&format!("{field}.retry_methods"), m) {
                Some(v) => route.retry_methods = v,
                None => ok = false,
            }
        }
        if let Some(n) = &r.eject_after {
            self.spans.insert(format!("{field}.eject_after"), n.span());
            match u32::try_from(*n.get_ref()) {
                Ok(v) if v <= 1000 => route.eject_after = v,
                _ => {
                    self.err(
                        n.span(),
                        &format!("{field}.eject_after"),
                        format!("eject_after = {} is out of range", n.get_ref()),
                        "use 1 to 1000 failures in a row, or 0 never to eject",
                    );
                    ok = false;
                }
            }
        }
        if let Some(t) = &r.eject_for {
            match self.positive_duration(&format!("{field}.eject_for"), t) {
                Some(d) => route.eject_for = d,
                None => ok = false,
            }
        }
        ok.then_some(route)
    }

    fn positive_duration(&mut self, field: &str, raw: &Spanned<String>) -> Option<Duration> {
        self.spans.insert(field.to_string(), raw.span());
        match parse_duration(raw.get_ref()) {
            Some(d) if !d.is_zero() => Some(d),
            _ => {
                self.err(
                    raw.span(),
                    field,
                    format!("{:?} is not a duration above zero", raw.get_ref()),
                    "write a number with a unit: \"500ms\", \"2s\"",
                );
                None
            }
        }
    }

    /// `"GET"` or `["GET", "HEAD"]`, upper case.
    pub(super) fn methods(&mut self, field: &str, value: &Spanned<RawValue>) -> Option<Vec<String>> {
        self.spans.insert(field.to_string(), value.span());
        let hint = format!("use HTTP methods in upper case, from: {}", METHODS.join(", "));
        let mut out = Vec::new();
        for (text, span) in self.string_list(field, value, &hint)? {
            if !METHODS.contains(&text.as_str()) {
                self.err(span, field, format!("{text:?} is not an HTTP method"), hint.clone());
                return None;
            }
            out.push(text);
        }
        Some(out)
    }

    /// `"/api"` or `["/api", "/health"]`: path prefixes.
    pub(super) fn paths(&mut self, field: &str, value: &Spanned<RawValue>) -> Option<Vec<String>> {
        self.spans.insert(field.to_string(), value.span());
        let hint = "write path prefixes starting with '/', e.g. paths = [\"/api\", \"/health\"]";
        let mut out = Vec::new();
        for (text, span) in self.string_list(field, value, hint)? {
            if !text.starts_with('/') || text.contains(['?', '#', ' ']) {
                self.err(span, field, format!("{text:?} is not a path prefix"), hint);
                return None;
            }
            out.push(text);
        }
        Some(out)
    }

    /// A string or a non-empty list of strings, each with its span.
    fn string_list(
        &mut self,
        field: &str,
        value: &Spanned<RawValue>,
        hint: &str,
    ) -> Option<Vec<(String, Range<usize>)>> {
        match value.get_ref() {
            RawValue::String(s) => Some(vec![(s.clone(), value.span())]),
            RawValue::Array(items) if !items.is_empty() => {
                let mut out = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    match item.get_ref().as_str() {
                        Some(s) => out.push((s.to_string(), item.span())),
                        None => {
                            self.err(item.span(), &format!("{field}[{i}]"), "expected a string", hint);
                            return None;
                        }
                    }
                }
                Some(out)
            }
            _ => {
                self.err(
                    value.span(),
                    field,
                    "expected a string or a non-empty list of strings",
                    hint,
                );
                None
            }
        }
    }

    /// Where an array-of-tables entry starts: its `[[header]]` (toml's span of such an entry
    /// is not its own), or its first field when written inline.
    pub(super) fn header_span(&self, whole: Range<usize>, header: &str, first: Option<Range<usize>>) -> Range<usize> {
        let Some(first) = first else { return whole };
        let before = &self.map.text[..first.start];
        match before.rfind("[[") {
            Some(at) if before[at..].starts_with(header) => at..at + header.len(),
            _ => first,
        }
    }
}

impl RawRoute {
    fn first_span(&self) -> Option<Range<usize>> {
        [
            self.service.as_ref().map(Spanned::span),
            self.path.as_ref().map(Spanned::span),
            self.timeout.as_ref().map(Spanned::span),
            self.retries.as_ref().map(Spanned::span),
            self.retry_budget.as_ref().map(Spanned::span),
            self.retry_methods.as_ref().map(Spanned::span),
            self.eject_after.as_ref().map(Spanned::span),
            self.eject_for.as_ref().map(Spanned::span),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|s| s.start)
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::{parse, route_for, Parsed};
    use std::time::Duration;

    const BASE: &str =
        "name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n[services.a]\n[services.b]\nmesh = false\n";

    fn ok(extra: &str) -> Parsed {
        parse("plumb.toml", &format!("mesh = true\n{BASE}{extra}")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn errors(head: &str, extra: &str) -> String {
        match parse("plumb.toml", &format!("{head}{BASE}{extra}")) {
            Ok(_) => panic!("expected an error for {extra}"),
            Err(d) => d.to_string(),
        }
    }

    #[test]
    fn mesh_is_the_stacks_unless_the_service_says() {
        let p = ok("");
        assert!(p.stack.services["a"].mesh);
        assert!(!p.stack.services["b"].mesh);
        let p = parse("plumb.toml", BASE).unwrap();
        assert!(!p.stack.services["a"].mesh);
        assert_eq!(p.stack.tracing, None);
    }

    #[test]
    fn routes_parse_with_defaults_and_the_longest_prefix_wins() {
        let p = ok("[[routes]]\nservice = \"a\"\ntimeout = \"2s\"\nretries = 2\n\n[[routes]]\nservice = \"a\"\npath = \"/api\"\nretry_methods = [\"GET\", \"POST\"]\nretry_budget = \"50%\"\neject_after = 3\neject_for = \"10s\"\n");
        let routes = &p.stack.routes;
        assert_eq!(routes.len(), 2);
        assert_eq!(routes[0].timeout, Some(Duration::from_secs(2)));
        assert_eq!(routes[0].retries, 2);
        assert_eq!(
            routes[0].retry_methods,
            ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"]
        );
        assert_eq!(routes[0].eject_after, 5);
        let api = route_for(routes, "a", "/api/items?x=1");
        assert_eq!(
            (api.eject_after, api.eject_for, api.retry_budget_percent),
            (3, Duration::from_secs(10), 50)
        );
        assert_eq!(api.retry_methods, ["GET", "POST"]);
        assert_eq!(
            route_for(routes, "a", "/apix").path,
            None,
            "a prefix matches whole segments"
        );
        assert_eq!(route_for(routes, "a", "/api").path.as_deref(), Some("/api"));
        assert_eq!(
            route_for(routes, "b", "/").retries,
            0,
            "a service without routes gets the default"
        );
    }

    #[test]
    fn route_errors_point_at_the_field_and_say_what_to_do() {
        let e = errors("mesh = true\n", "[[routes]]\nservice = \"a\"\nretries = 50\n");
        assert!(
            e.contains("plumb.toml:10:11: routes[0].retries: retries = 50 is out of range"),
            "{e}"
        );
        let e = errors("mesh = true\n", "[[routes]]\nservice = \"b\"\n");
        assert!(e.contains("routes[0].service: service \"b\" is not in the mesh"), "{e}");
        let e = errors("mesh = true\n", "[[routes]]\nservice = \"zz\"\n");
        assert!(
            e.contains("unknown service \"zz\"") && e.contains("use one of: a, b"),
            "{e}"
        );
        let e = errors("mesh = true\n", "[[routes]]\ntimeout = \"1s\"\n");
        assert!(
            e.contains("plumb.toml:8:1: routes[0].service: a route needs `service`"),
            "{e}"
        );
        let e = errors("mesh = true\n", "[[routes]]\nservice = \"a\"\ntimeout = \"0s\"\npath = \"api\"\nretry_budget = \"2\"\nretry_methods = \"get\"\n");
        for want in [
            "routes[0].timeout",
            "routes[0].path: \"api\" is not a path prefix",
            "routes[0].retry_budget",
            "\"get\" is not an HTTP method",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = errors(
            "mesh = true\n",
            "[[routes]]\nservice = \"a\"\n[[routes]]\nservice = \"a\"\n",
        );
        assert!(
            e.contains("routes[1]: routes[0] already sets the route of service \"a\""),
            "{e}"
        );
    }

    #[test]
    fn a_meshed_service_may_not_use_the_sidecars_ports() {
        let e = errors("mesh = true\n", "[services.c]\nexpose = [15001]\n");
        assert!(
            e.contains("services.c.mesh: service \"c\" answers on port 15001, which its sidecar takes"),
            "{e}"
        );
        assert!(e.starts_with("plumb.toml:8:11:"), "points at the service: {e}");
    }

    #[test]
    fn tracing_takes_a_plain_http_collector() {
        let p = parse("plumb.toml", &format!("tracing = \"http://10.0.0.9:4318/\"\n{BASE}")).unwrap();
        assert_eq!(p.stack.tracing.as_deref(), Some("http://10.0.0.9:4318"));
        let p = parse("plumb.toml", &format!("tracing = \"off\"\n{BASE}")).unwrap();
        assert_eq!(p.stack.tracing.as_deref(), Some("off"));
        for bad in ["https://10.0.0.9:4318", "http://collector:4318", "http://10.0.0.9:0"] {
            let e = errors(&format!("tracing = \"{bad}\"\n"), "");
            let want = format!("plumb.toml:1:11: tracing: \"{bad}\" is not an OTLP/HTTP collector address");
            assert!(e.contains(&want), "{e}");
        }
    }

    #[test]
    fn l7_policies_need_a_receiving_sidecar() {
        let p = ok("[[policies]]\nfrom = \"b\"\nto = \"a\"\nmethods = [\"GET\"]\npaths = \"/public\"\nmtls = true\n");
        let pol = &p.stack.policies[0];
        assert_eq!(
            (pol.methods.clone(), pol.paths.clone(), pol.mtls),
            (vec!["GET".to_string()], vec!["/public".to_string()], true)
        );
        let e = errors(
            "mesh = true\n",
            "[[policies]]\nfrom = \"a\"\nto = \"b\"\npaths = [\"/x\"]\n",
        );
        assert!(e.contains("plumb.toml:11:9: policies[0].paths: `paths` is enforced by the receiving sidecar, and service:b has none"), "{e}");
        let e = errors(
            "mesh = true\n",
            "[[policies]]\nfrom = \"b\"\nto = \"a\"\nmethods = [\"FETCH\"]\n",
        );
        assert!(
            e.contains("policies[0].methods: \"FETCH\" is not an HTTP method"),
            "{e}"
        );
    }
}

//! The L7 part of policies (`methods`, `paths`, `mtls`), which the receiving sidecar enforces
//! on each HTTP request (and `mtls` on each connection): the same verdict for the sidecar and
//! for `plumb policy why ... --method M --path P`.

use std::net::Ipv4Addr;

use serde::Serialize;

use super::{compile, Compiled};
use crate::desired::Desired;
use crate::spec::Protocol;

/// One request as the receiving sidecar sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    /// The caller's address (its container's).
    pub from: Ipv4Addr,
    /// The service called (the sidecar's own).
    pub to_service: &'a str,
    pub port: u16,
    /// `None` for a connection judged before any request (TCP that is not HTTP).
    pub method: Option<&'a str>,
    pub path: Option<&'a str>,
    /// It came over mutual TLS from a sidecar of the mesh.
    pub mtls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct L7Verdict {
    pub allowed: bool,
    /// The policy that allowed it, or the L7 policies that did not (their indexes).
    pub policies: Vec<usize>,
    pub summary: String,
}

/// Whether a policy's `paths` let `path` through (prefixes, at a segment edge).
fn path_allowed(prefixes: &[String], path: &str) -> bool {
    prefixes.is_empty()
        || prefixes.iter().any(|p| {
            path.starts_with(p.as_str())
                && (p.ends_with('/') || matches!(path.as_bytes().get(p.len()), None | Some(b'/' | b'?')))
        })
}

/// The L7 verdict for one request (or connection).
pub fn evaluate(desired: &Desired, compiled: &Compiled, req: &Request) -> L7Verdict {
    let caller = u32::from(req.from);
    let to_addrs: Vec<Ipv4Addr> = desired
        .containers
        .iter()
        .filter(|c| c.service == req.to_service)
        .flat_map(|c| c.interfaces.iter().map(|i| i.address))
        .collect();
    // The policies that name the service in `to` for this port: those with L7 fields govern.
    let governing: Vec<usize> = compiled
        .grants
        .iter()
        .filter(|g| g.protocol == Protocol::Tcp && g.ports.iter().any(|p| p.contains(u32::from(req.port))))
        .filter(|g| {
            to_addrs
                .iter()
                .any(|a| g.to.addrs.iter().any(|i| i.contains(u32::from(*a))))
        })
        .map(|g| g.index)
        .filter(|i| {
            let s = &desired.policies[*i].spec;
            !s.methods.is_empty() || !s.paths.is_empty() || s.mtls
        })
        .collect();
    if governing.is_empty() {
        return L7Verdict {
            allowed: true,
            policies: Vec::new(),
            summary: format!("no policy sets methods, paths or mtls for service:{}", req.to_service),
        };
    }
    let what = match (req.method, req.path) {
        (Some(m), Some(p)) => format!("{m} {p}"),
        _ => "the connection".to_string(),
    };
    // Policies without L7 fields that admit the caller still admit everything on their ports.
    let open = compiled.grants.iter().find(|g| {
        let s = &desired.policies[g.index].spec;
        s.methods.is_empty()
            && s.paths.is_empty()
            && !s.mtls
            && g.protocol == Protocol::Tcp
            && g.ports.iter().any(|p| p.contains(u32::from(req.port)))
            && g.from.addrs.iter().any(|i| i.contains(caller))
            && to_addrs
                .iter()
                .any(|a| g.to.addrs.iter().any(|i| i.contains(u32::from(*a))))
    });
    if let Some(g) = open {
        return L7Verdict {
            allowed: true,
            policies: vec![g.index],
            summary: format!(
                "{what} allowed by policies[{}] ({}), which sets no L7 rule",
                g.index, g.source
            ),
        };
    }
    for &i in &governing {
        let g = &compiled.grants[i];
        let s = &desired.policies[i].spec;
        let from_ok = g.from.addrs.iter().any(|iv| iv.contains(caller));
        let method_ok = req
            .method
            .is_none_or(|m| s.methods.is_empty() || s.methods.iter().any(|x| x == m));
        let path_ok = req.path.is_none_or(|p| path_allowed(&s.paths, p));
        let mtls_ok = !s.mtls || req.mtls;
        if from_ok && method_ok && path_ok && mtls_ok {
            return L7Verdict {
                allowed: true,
                policies: vec![i],
                summary: format!("{what} allowed by policies[{i}] ({})", desired.policies[i].source),
            };
        }
    }
    let rules: Vec<String> = governing
        .iter()
        .map(|i| {
            let s = &desired.policies[*i].spec;
            let mut parts = Vec::new();
            if !s.methods.is_empty() {
                parts.push(format!("methods {}", s.methods.join(",")));
            }
            if !s.paths.is_empty() {
                parts.push(format!("paths {}", s.paths.join(",")));
            }
            if s.mtls {
                parts.push("mtls".to_string());
            }
            format!("policies[{i}] ({}: {})", desired.policies[*i].source, parts.join(", "))
        })
        .collect();
    L7Verdict {
        allowed: false,
        policies: governing,
        summary: format!(
            "{what} from {} to service:{} denied: no policy allows it; the L7 rules are {}",
            req.from,
            req.to_service,
            rules.join("; ")
        ),
    }
}

/// [`evaluate`] compiling the policies first.
pub fn evaluate_desired(desired: &Desired, req: &Request) -> L7Verdict {
    evaluate(desired, &compile(desired), req)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::desired::resolve;
    use crate::spec::parse;

    fn desired(policies: &str) -> Desired {
        let text = format!(
            "name = \"s\"\nmesh = true\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n\
             [services.web]\ncommand = \"x\"\n[services.api]\nexpose = [80]\ncommand = \"x\"\n\
             [services.admin]\ncommand = \"x\"\n{policies}"
        );
        resolve(&parse("plumb.toml", &text).unwrap(), &Default::default())
            .unwrap()
            .0
    }

    fn addr(d: &Desired, c: &str) -> Ipv4Addr {
        d.containers.iter().find(|x| x.name == c).unwrap().interfaces[0].address
    }

    #[test]
    fn methods_and_paths_allow_and_the_verdict_names_the_rule() {
        let d = desired(
            "[[policies]]\nfrom = \"web\"\nto = \"api\"\nmethods = [\"GET\"]\npaths = [\"/public\"]\n\
             [[policies]]\nfrom = \"admin\"\nto = \"api\"\n",
        );
        let req = |from: &str, m: &'static str, p: &'static str| Request {
            from: addr(&d, from),
            to_service: "api",
            port: 80,
            method: Some(m),
            path: Some(p),
            mtls: false,
        };
        let ok = evaluate_desired(&d, &req("web-1", "GET", "/public/x"));
        assert!(ok.allowed && ok.policies == [0], "{ok:?}");
        assert!(ok.summary.contains("policies[0] (plumb.toml:"), "{}", ok.summary);
        let no = evaluate_desired(&d, &req("web-1", "GET", "/admin"));
        assert!(!no.allowed, "{no:?}");
        assert!(
            no.summary.contains("GET /admin from") && no.summary.contains("paths /public"),
            "{}",
            no.summary
        );
        assert!(!evaluate_desired(&d, &req("web-1", "POST", "/public")).allowed);
        assert!(
            !evaluate_desired(&d, &req("web-1", "GET", "/publicity")).allowed,
            "prefixes end at a segment"
        );
        // A policy without L7 fields admits its caller whole.
        let admin = evaluate_desired(&d, &req("admin-1", "DELETE", "/admin"));
        assert!(admin.allowed && admin.policies == [1], "{admin:?}");
    }

    #[test]
    fn mtls_refuses_plaintext_and_services_without_l7_rules_are_open() {
        let d = desired("[[policies]]\nfrom = \"web\"\nto = \"api\"\nmtls = true\n");
        let mut req = Request {
            from: addr(&d, "web-1"),
            to_service: "api",
            port: 80,
            method: None,
            path: None,
            mtls: false,
        };
        assert!(!evaluate_desired(&d, &req).allowed);
        req.mtls = true;
        assert!(evaluate_desired(&d, &req).allowed);
        req.to_service = "admin";
        let open = evaluate_desired(&d, &req);
        assert!(open.allowed && open.policies.is_empty(), "{open:?}");
    }
}

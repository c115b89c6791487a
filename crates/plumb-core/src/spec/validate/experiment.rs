//! `[[experiments]]`: each experiment's checks (an HTTP answer within a latency, a number of
//! healthy replicas) and faults (a kill, a partition, an impairment, at a time, for a while),
//! checked against the services and networks the file declares.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::time::Duration;

use toml::Spanned;

use super::{parse_duration, Validator};
use crate::chaos::{parse_percent, parse_rate, Impairment};
use crate::spec::model::{CheckProbe, CheckSpec, ExperimentSpec, FaultAction, FaultSpec, NetworkSpec, ServiceSpec};
use crate::spec::raw::{RawCheck, RawExperiment, RawFault};

/// What names the experiment may use: services, their containers, networks.
struct Names<'a> {
    services: &'a BTreeMap<String, ServiceSpec>,
    networks: &'a BTreeMap<String, NetworkSpec>,
}

impl Names<'_> {
    fn container_or_service(&self, name: &str) -> bool {
        self.services.contains_key(name)
            || name.rsplit_once('-').is_some_and(|(svc, k)| {
                let k: u32 = k.parse().unwrap_or(0);
                self.services.get(svc).is_some_and(|s| k >= 1 && k <= s.replicas)
            })
    }
}

impl Validator<'_> {
    pub(super) fn experiments(
        &mut self,
        raw: Vec<Spanned<RawExperiment>>,
        services: &BTreeMap<String, ServiceSpec>,
        networks: &BTreeMap<String, NetworkSpec>,
    ) -> Vec<ExperimentSpec> {
        let names = Names { services, networks };
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for (i, e) in raw.iter().enumerate() {
            let field = format!("experiments[{i}]");
            let span = self.first_span(
                e.span(),
                e.get_ref().name.as_ref().map(Spanned::span),
                "[[experiments]]",
            );
            self.spans.insert(field.clone(), span.clone());
            let Some(spec) = self.experiment(&field, span, e.get_ref(), &names) else {
                continue;
            };
            if !seen.insert(spec.name.clone()) {
                let at = e.get_ref().name.as_ref().map(Spanned::span);
                self.err(
                    at,
                    &format!("{field}.name"),
                    format!("a second experiment is named {:?}", spec.name),
                    "give each experiment its own name",
                );
                continue;
            }
            out.push(spec);
        }
        out
    }

    /// Where an array-of-tables entry starts: its `[[header]]` before its first field (toml's
    /// span of such an entry is not its own), else that field.
    fn first_span(&self, whole: Range<usize>, first: Option<Range<usize>>, header: &str) -> Range<usize> {
        let Some(first) = first else { return whole };
        let before = &self.map.text[..first.start];
        match before.rfind("[[") {
            Some(at) if before[at..].starts_with(header) => at..at + header.len(),
            _ => first,
        }
    }

    fn experiment(
        &mut self,
        field: &str,
        span: Range<usize>,
        raw: &RawExperiment,
        names: &Names,
    ) -> Option<ExperimentSpec> {
        let name = match &raw.name {
            Some(n) if super::valid_name(n.get_ref(), 48) => n.get_ref().clone(),
            Some(n) => {
                self.err(
                    n.span(),
                    &format!("{field}.name"),
                    format!("experiment name {:?} is not valid", n.get_ref()),
                    "use lowercase letters, digits or '-', starting with a letter",
                );
                return None;
            }
            None => {
                self.err(
                    span,
                    &format!("{field}.name"),
                    "an experiment needs a name",
                    "add name = \"product-dies\" (what `plumb experiment run NAME` takes)",
                );
                return None;
            }
        };
        let interval = self.duration(
            &format!("{field}.interval"),
            raw.interval.as_ref(),
            Duration::from_secs(1),
        );
        let settle = self.duration(&format!("{field}.settle"), raw.settle.as_ref(), Duration::from_secs(10));
        let lasts = raw
            .duration
            .as_ref()
            .map(|d| self.duration(&format!("{field}.duration"), Some(d), Duration::ZERO));
        if raw.checks.is_empty() {
            self.err(
                span.clone(),
                &format!("{field}.checks"),
                format!("experiment {name:?} has no checks: nothing would say whether it held"),
                "add [[experiments.checks]] with http = \"http://SERVICE:PORT/PATH\" or service = \"SVC\", healthy = N",
            );
        }
        if raw.faults.is_empty() {
            self.err(
                span,
                &format!("{field}.faults"),
                format!("experiment {name:?} has no faults"),
                "add [[experiments.faults]] with kill = \"SVC\", partition = [\"A\", \"B\"] or target = \"SVC\", delay = \"100ms\"",
            );
        }
        let mut checks = Vec::new();
        for (i, c) in raw.checks.iter().enumerate() {
            checks.extend(self.check(&format!("{field}.checks[{i}]"), c, names));
        }
        let mut faults = Vec::new();
        for (i, f) in raw.faults.iter().enumerate() {
            faults.extend(self.fault(&format!("{field}.faults[{i}]"), f, names));
        }
        (checks.len() == raw.checks.len() && faults.len() == raw.faults.len()).then(|| ExperimentSpec {
            name,
            description: raw.description.as_ref().map(|d| d.get_ref().clone()),
            interval,
            settle,
            lasts,
            checks,
            faults,
        })
    }

    fn check(&mut self, field: &str, raw: &Spanned<RawCheck>, names: &Names) -> Option<CheckSpec> {
        let c = raw.get_ref();
        let named = c.name.as_ref().map(|n| n.get_ref().clone());
        match (&c.http, &c.service) {
            (Some(url), None) => {
                let (host, port, path) = match parse_url(url.get_ref()) {
                    Some(parts) => parts,
                    None => {
                        self.err(
                            url.span(),
                            &format!("{field}.http"),
                            format!("{:?} is not an http URL plumb can send", url.get_ref()),
                            "write http://HOST[:PORT]/PATH, HOST a service, a container or an IPv4 address",
                        );
                        return None;
                    }
                };
                let known = names.container_or_service(&host)
                    || host.parse::<std::net::Ipv4Addr>().is_ok()
                    || host == "localhost";
                if !known {
                    self.err(
                        url.span(),
                        &format!("{field}.http"),
                        format!("the URL's host {host:?} is no service or container of this stack"),
                        "use a service name (its VIP), a container (web-1) or an IPv4 address",
                    );
                    return None;
                }
                if let Some(from) = &c.from {
                    if !names.container_or_service(from.get_ref()) {
                        self.err(
                            from.span(),
                            &format!("{field}.from"),
                            format!("no service or container {:?} to send the request from", from.get_ref()),
                            "name a container (web-1) or a service (its first replica); leave it out to send from the host",
                        );
                        return None;
                    }
                }
                let status = match &c.status {
                    None => 200,
                    Some(s) => match u16::try_from(*s.get_ref()) {
                        Ok(n) if (100..600).contains(&n) => n,
                        _ => {
                            self.err(
                                s.span(),
                                &format!("{field}.status"),
                                format!("{} is not an HTTP status", s.get_ref()),
                                "e.g. status = 200",
                            );
                            return None;
                        }
                    },
                };
                if let Some(h) = &c.healthy {
                    self.err(
                        h.span(),
                        &format!("{field}.healthy"),
                        "`healthy` is for service checks; an http check passes on its status within its time",
                        "move it into a check of its own: { service = \"NAME\", healthy = 2 }",
                    );
                    return None;
                }
                let within = self.duration(&format!("{field}.within"), c.within.as_ref(), Duration::from_secs(1));
                Some(CheckSpec {
                    name: named.unwrap_or_else(|| format!("GET {}", url.get_ref())),
                    probe: CheckProbe::Http {
                        url: url.get_ref().clone(),
                        host,
                        port,
                        path,
                        from: c.from.as_ref().map(|f| f.get_ref().clone()),
                        status,
                        within,
                    },
                })
            }
            (None, Some(service)) => {
                // http's own keys would be ignored here: refused, not silently dropped.
                let http_only = [
                    ("within", c.within.as_ref().map(|w| w.span())),
                    ("status", c.status.as_ref().map(|w| w.span())),
                    ("from", c.from.as_ref().map(|w| w.span())),
                ];
                if let Some((key, Some(span))) = http_only.into_iter().find(|(_, span)| span.is_some()) {
                    self.err(
                        span,
                        &format!("{field}.{key}"),
                        format!("`{key}` is for http checks; a service check counts healthy replicas at each interval"),
                        "remove it, or check the service over HTTP: { http = \"http://SERVICE:PORT/\", within = \"500ms\" }",
                    );
                    return None;
                }
                if !names.services.contains_key(service.get_ref()) {
                    self.err(
                        service.span(),
                        &format!("{field}.service"),
                        format!("no service {:?} in this stack", service.get_ref()),
                        "name a service declared under [services]",
                    );
                    return None;
                }
                let at_least = match &c.healthy {
                    Some(n) if *n.get_ref() >= 0 && *n.get_ref() <= i64::from(u32::MAX) => *n.get_ref() as u32,
                    Some(n) => {
                        self.err(
                            n.span(),
                            &format!("{field}.healthy"),
                            "healthy must be 0 or more",
                            "e.g. healthy = 2 (at least 2 replicas run and pass their health check)",
                        );
                        return None;
                    }
                    None => 1,
                };
                Some(CheckSpec {
                    name: named.unwrap_or_else(|| format!("{} has {at_least} healthy", service.get_ref())),
                    probe: CheckProbe::Healthy {
                        service: service.get_ref().clone(),
                        at_least,
                    },
                })
            }
            _ => {
                self.err(
                    raw.span(),
                    field,
                    "a check needs exactly one of http or service",
                    "e.g. { http = \"http://web:80/\", within = \"500ms\" } or { service = \"product\", healthy = 2 }",
                );
                None
            }
        }
    }

    fn fault(&mut self, field: &str, raw: &Spanned<RawFault>, names: &Names) -> Option<FaultSpec> {
        let f = raw.get_ref();
        let at = self.duration(&format!("{field}.at"), f.at.as_ref(), Duration::ZERO);
        let lasts = f
            .lasts
            .as_ref()
            .map(|l| self.duration(&format!("{field}.for"), Some(l), Duration::from_secs(1)));
        let kinds = [f.kill.is_some(), f.partition.is_some(), f.target.is_some()]
            .iter()
            .filter(|x| **x)
            .count();
        if kinds != 1 {
            self.err(
                raw.span(),
                field,
                "a fault needs exactly one of kill, partition or target",
                "e.g. { kill = \"product\" }, { partition = [\"gateway\", \"redis\"], for = \"5s\" } or { target = \"product\", delay = \"100ms\" }",
            );
            return None;
        }
        let action = if let Some(kill) = &f.kill {
            if !names.services.contains_key(kill.get_ref()) {
                self.err(
                    kill.span(),
                    &format!("{field}.kill"),
                    format!("no service {:?} in this stack", kill.get_ref()),
                    "name a service with a command: one of its running replicas is killed",
                );
                return None;
            }
            FaultAction::Kill {
                service: kill.get_ref().clone(),
            }
        } else if let Some(sides) = &f.partition {
            let items = sides.get_ref();
            let ok_side = |s: &Spanned<String>| {
                names.container_or_service(s.get_ref()) || names.networks.contains_key(s.get_ref())
            };
            if items.len() != 2 || items[0].get_ref() == items[1].get_ref() {
                self.err(
                    sides.span(),
                    &format!("{field}.partition"),
                    "a partition names two different sides",
                    "e.g. partition = [\"gateway\", \"redis\"] (services, containers or networks)",
                );
                return None;
            }
            if let Some(bad) = items.iter().find(|s| !ok_side(s)) {
                self.err(
                    bad.span(),
                    &format!("{field}.partition"),
                    format!("no service, container or network {:?} in this stack", bad.get_ref()),
                    "name services, containers or networks this file declares",
                );
                return None;
            }
            FaultAction::Partition {
                a: items[0].get_ref().clone(),
                b: items[1].get_ref().clone(),
            }
        } else {
            let target = f.target.as_ref()?;
            let text = target.get_ref();
            let sides: Vec<&str> = text.split("->").map(str::trim).collect();
            if sides.len() > 2 || sides.iter().any(|s| !names.container_or_service(s)) {
                self.err(
                    target.span(),
                    &format!("{field}.target"),
                    format!("{text:?} is not a container, a service or a link SVC->SVC of this stack"),
                    "e.g. target = \"product\" (every replica), \"product-1\" or \"gateway->product\"",
                );
                return None;
            }
            let impairment = self.impairment(field, f)?;
            FaultAction::Impair {
                target: text.clone(),
                impairment,
            }
        };
        Some(FaultSpec { at, lasts, action })
    }

    fn impairment(&mut self, field: &str, f: &RawFault) -> Option<Impairment> {
        let mut ok = true;
        let mut micros = |v: &mut Self, name: &str, raw: &Option<Spanned<String>>| -> u64 {
            let Some(r) = raw else { return 0 };
            match parse_duration(r.get_ref()) {
                Some(d) => d.as_micros() as u64,
                None => {
                    v.err(
                        r.span(),
                        &format!("{field}.{name}"),
                        format!("{:?} is not a duration", r.get_ref()),
                        "write a number with a unit: \"100ms\"",
                    );
                    ok = false;
                    0
                }
            }
        };
        let delay_us = micros(self, "delay", &f.delay);
        let jitter_us = micros(self, "jitter", &f.jitter);
        let mut share = |v: &mut Self, name: &str, raw: &Option<Spanned<String>>| -> u32 {
            let Some(r) = raw else { return 0 };
            parse_percent(r.get_ref()).unwrap_or_else(|| {
                v.err(
                    r.span(),
                    &format!("{field}.{name}"),
                    format!("{:?} is not a share", r.get_ref()),
                    "give a percentage above 0 and at most 100, e.g. \"5%\"",
                );
                ok = false;
                0
            })
        };
        let loss_ppm = share(self, "loss", &f.loss);
        let corrupt_ppm = share(self, "corrupt", &f.corrupt);
        let duplicate_ppm = share(self, "duplicate", &f.duplicate);
        let rate_bps = match &f.rate {
            None => 0,
            Some(r) => parse_rate(r.get_ref()).unwrap_or_else(|| {
                self.err(
                    r.span(),
                    &format!("{field}.rate"),
                    format!("{:?} is not a rate", r.get_ref()),
                    "e.g. \"1mbit\", \"500kbit\" (or bytes per second: \"100kbps\")",
                );
                ok = false;
                0
            }),
        };
        let imp = Impairment {
            delay_us,
            jitter_us,
            loss_ppm,
            corrupt_ppm,
            duplicate_ppm,
            rate_bps,
        };
        if ok && imp.is_none() {
            self.err(
                f.target.as_ref().map(Spanned::span),
                field,
                "a target fault needs an impairment",
                "add delay, loss, rate, corrupt or duplicate, e.g. delay = \"100ms\"",
            );
            return None;
        }
        ok.then_some(imp)
    }
}

/// `http://HOST[:PORT][/PATH]` → (host, port, path).
pub fn parse_url(url: &str) -> Option<(String, u16, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().ok().filter(|p| *p > 0)?),
        None => (authority, 80),
    };
    (!host.is_empty() && !path.contains(char::is_whitespace)).then(|| (host.to_string(), port, path))
}

#[cfg(test)]
mod tests {
    use crate::spec::{self, CheckProbe, FaultAction};

    const BASE: &str = r#"
name = "x"
[networks.n]
subnet = "10.90.0.0/24"
[services.web]
networks = ["n"]
[services.api]
networks = ["n"]
replicas = 2
"#;

    fn errors(extra: &str) -> String {
        match spec::parse("x.toml", &format!("{BASE}{extra}")) {
            Ok(_) => String::new(),
            Err(d) => d.to_string(),
        }
    }

    #[test]
    fn an_experiment_reads_its_checks_and_faults() {
        let parsed = spec::parse(
            "x.toml",
            &format!(
                "{BASE}{}",
                r#"
[[experiments]]
name = "api-dies"
interval = "200ms"
[[experiments.checks]]
name = "web answers"
http = "http://api:8080/products"
from = "web"
within = "500ms"
[[experiments.checks]]
service = "api"
healthy = 1
[[experiments.faults]]
kill = "api"
[[experiments.faults]]
at = "1s"
for = "2s"
target = "web->api"
delay = "100ms"
loss = "5%"
"#
            ),
        )
        .unwrap_or_else(|d| panic!("{d}"));
        let e = &parsed.stack.experiments[0];
        assert_eq!(e.name, "api-dies");
        assert_eq!(e.duration(), std::time::Duration::from_secs(3));
        assert!(
            matches!(&e.checks[0].probe, CheckProbe::Http { host, port: 8080, path, .. } if host == "api" && path == "/products")
        );
        assert_eq!(e.checks[1].name, "api has 1 healthy");
        assert!(matches!(&e.faults[1].action, FaultAction::Impair { impairment, .. } if impairment.loss_ppm == 50_000));
    }

    #[test]
    fn a_bad_experiment_is_named_with_its_line_and_field() {
        let e = errors("[[experiments]]\nname = \"e\"\n[[experiments.checks]]\nhttp = \"http://nope/\"\n[[experiments.faults]]\nkill = \"api\"\n");
        assert!(
            e.contains("x.toml:13") && e.contains("experiments[0].checks[0].http") && e.contains("\"nope\""),
            "{e}"
        );
        let e = errors("[[experiments]]\nname = \"e\"\n[[experiments.checks]]\nservice = \"api\"\n[[experiments.faults]]\ntarget = \"api\"\ndelay = \"soon\"\n");
        assert!(
            e.contains("experiments[0].faults[0].delay") && e.contains("not a duration"),
            "{e}"
        );
        let e = errors("[[experiments]]\nname = \"e\"\n[[experiments.checks]]\nservice = \"api\"\n[[experiments.faults]]\npartition = [\"api\", \"db\"]\n");
        assert!(e.contains("no service, container or network \"db\""), "{e}");
        let e = errors("[[experiments]]\nname = \"e\"\n");
        assert!(e.contains("has no checks") && e.contains("has no faults"), "{e}");
        // A key of the other kind of check is refused, never silently ignored.
        let e = errors("[[experiments]]\nname = \"e\"\n[[experiments.checks]]\nservice = \"api\"\nwithin = \"5s\"\n[[experiments.faults]]\nkill = \"api\"\n");
        assert!(
            e.contains("experiments[0].checks[0].within") && e.contains("`within` is for http checks"),
            "{e}"
        );
        let e = errors("[[experiments]]\nname = \"e\"\n[[experiments.checks]]\nhttp = \"http://api:80/\"\nhealthy = 2\n[[experiments.faults]]\nkill = \"api\"\n");
        assert!(
            e.contains("experiments[0].checks[0].healthy") && e.contains("for service checks"),
            "{e}"
        );
    }
}

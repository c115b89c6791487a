//! The checks on `[services.X.autoscale]`: its bounds, its targets and its behaviour, and how
//! it meets `replicas` (the starting count, within `min..max`) and the service's VIP.

use std::time::Duration;

use toml::Spanned;

use super::super::model::*;
use super::super::raw::RawService;
use super::{Validator, MAX_STACK_CONTAINERS};

/// The longest `scale_down_window` (Kubernetes' limit for a stabilization window).
const MAX_SCALE_DOWN_WINDOW: Duration = Duration::from_secs(3600);
/// The longest `scale_up_period` (Kubernetes' limit for a scaling policy's period).
const MAX_SCALE_UP_PERIOD: Duration = Duration::from_secs(1800);

impl Validator<'_> {
    /// The service's autoscaling, if it has any. `replicas` is the count the file (or `plumb
    /// scale`) gave, if any: without one the service starts at `min`; with one it must lie
    /// in `min..=max`. Returns the spec and the starting count.
    pub(super) fn autoscale(
        &mut self,
        field: &str,
        raw: &RawService,
        replicas: Option<u32>,
        lb: Balance,
        static_ip: bool,
    ) -> Option<(AutoscaleSpec, u32)> {
        let table = raw.autoscale.as_ref()?;
        let afield = format!("{field}.autoscale");
        let a = table.get_ref();
        for (key, span) in [
            ("min", a.min.as_ref().map(Spanned::span)),
            ("max", a.max.as_ref().map(Spanned::span)),
            ("cpu", a.cpu.as_ref().map(Spanned::span)),
            ("requests_per_second", a.requests_per_second.as_ref().map(Spanned::span)),
            ("connections", a.connections.as_ref().map(Spanned::span)),
            ("scale_down_window", a.scale_down_window.as_ref().map(Spanned::span)),
            ("scale_up_period", a.scale_up_period.as_ref().map(Spanned::span)),
        ] {
            if let Some(span) = span {
                self.spans.insert(format!("{afield}.{key}"), span);
            }
        }
        let errors_before = self.errors.len();
        let min = match &a.min {
            None => Some(1),
            Some(m) => self.bound(&format!("{afield}.min"), m, 1),
        };
        let max = match &a.max {
            Some(m) => self.bound(&format!("{afield}.max"), m, 1),
            None => {
                self.err(
                    table.span(),
                    &format!("{afield}.max"),
                    "autoscale needs max: the most replicas the service may run",
                    "add max = N, e.g. max = 10",
                );
                None
            }
        };
        if let (Some(min), Some(max), Some(m)) = (min, max, a.max.as_ref()) {
            if min > max {
                self.err(
                    m.span(),
                    &format!("{afield}.max"),
                    format!("max = {max} is below min = {min}"),
                    format!("use a max of at least {min}, or a lower min"),
                );
            }
        }
        if a.cpu.is_none() && a.requests_per_second.is_none() && a.connections.is_none() {
            self.err(
                table.span(),
                &afield,
                "autoscale needs a target to scale on",
                "add one or more of requests_per_second = N (per replica), connections = N (per replica), cpu = \"70%\" (of its cpus limit)",
            );
        }
        let cpu_percent = a
            .cpu
            .as_ref()
            .and_then(|cpu| self.cpu_target(&format!("{afield}.cpu"), cpu, raw));
        let requests_per_second = a
            .requests_per_second
            .as_ref()
            .and_then(|t| self.target(&format!("{afield}.requests_per_second"), t, "requests_per_second = 200"));
        let connections = a
            .connections
            .as_ref()
            .and_then(|t| self.target(&format!("{afield}.connections"), t, "connections = 50"));
        if lb == Balance::None {
            let counted = [
                ("requests_per_second", &a.requests_per_second),
                ("connections", &a.connections),
            ];
            for (key, value) in counted {
                if let Some(value) = value {
                    self.err(
                        value.span(),
                        &format!("{afield}.{key}"),
                        format!(
                            "{key} is counted at the service's VIP, and a headless service (lb = \"none\") has none"
                        ),
                        "drop lb = \"none\" so that the service gets a VIP, or scale on another target",
                    );
                }
            }
        }
        let scale_down_window = self.window(
            &format!("{afield}.scale_down_window"),
            a.scale_down_window.as_ref(),
            DEFAULT_SCALE_DOWN_WINDOW,
            Duration::ZERO,
            MAX_SCALE_DOWN_WINDOW,
        );
        let scale_up_period = self.window(
            &format!("{afield}.scale_up_period"),
            a.scale_up_period.as_ref(),
            DEFAULT_SCALE_UP_PERIOD,
            Duration::from_secs(1),
            MAX_SCALE_UP_PERIOD,
        );
        let (min, max) = (min?, max?);
        if static_ip && max > 1 {
            let span = a.max.as_ref().map(Spanned::span);
            self.err(
                span,
                &format!("{afield}.max"),
                format!("a static address cannot be shared by up to {max} replicas"),
                "drop the static ip, or use max = 1",
            );
        }
        let start = match (replicas, &raw.replicas) {
            // With the bounds themselves wrong (reported above), a count cannot be judged.
            (None, _) => min,
            (Some(n), _) if min > max => n,
            // An out-of-range replicas, reported already.
            (Some(n), Some(r)) if *r.get_ref() != i64::from(n) => n,
            (Some(n), _) if (min..=max).contains(&n) => n,
            (Some(n), span) => {
                self.err(
                    span.as_ref().map(Spanned::span),
                    &format!("{field}.replicas"),
                    format!("replicas = {n} is outside autoscale's min = {min} .. max = {max}"),
                    format!("with autoscale, replicas is only the starting count: use {min} to {max}, or leave it out to start at min"),
                );
                min
            }
        };
        if self.errors.len() > errors_before || min > max {
            return None;
        }
        let spec = AutoscaleSpec {
            min,
            max,
            cpu_percent,
            requests_per_second,
            connections,
            scale_down_window,
            scale_up_period,
        };
        Some((spec, start))
    }

    /// `min` or `max`: a replica count from `least` to the most a stack holds.
    fn bound(&mut self, field: &str, raw: &Spanned<i64>, least: u32) -> Option<u32> {
        match u32::try_from(*raw.get_ref()) {
            Ok(n) if (least..=MAX_STACK_CONTAINERS).contains(&n) => Some(n),
            _ => {
                let key = field.rsplit('.').next().unwrap_or(field);
                self.err(
                    raw.span(),
                    field,
                    format!("{key} = {} is out of range", raw.get_ref()),
                    format!("use a number from {least} to {MAX_STACK_CONTAINERS}"),
                );
                None
            }
        }
    }

    /// A per-replica target: a whole number of at least 1.
    fn target(&mut self, field: &str, raw: &Spanned<i64>, example: &str) -> Option<u32> {
        match u32::try_from(*raw.get_ref()) {
            Ok(n) if n >= 1 => Some(n),
            _ => {
                self.err(
                    raw.span(),
                    field,
                    format!("{} is not a target: it must be 1 or more per replica", raw.get_ref()),
                    format!("e.g. {example}"),
                );
                None
            }
        }
    }

    /// `cpu = "70%"` is a share of the service's `cpus` limit: without one there is nothing
    /// to take a share of (`cpus` itself is checked on its own line). It is measured from the
    /// replica's own cgroup, which an image service's replica (podman's) does not have.
    fn cpu_target(&mut self, field: &str, raw: &Spanned<String>, service: &RawService) -> Option<u32> {
        let text = raw.get_ref();
        let percent = text
            .strip_suffix('%')
            .and_then(|n| n.trim().parse::<u32>().ok())
            .filter(|n| (1..=100).contains(n));
        match percent {
            None => {
                self.err(
                    raw.span(),
                    field,
                    format!("{text:?} is not a CPU target"),
                    "write a percentage of the service's cpus limit from \"1%\" to \"100%\", e.g. cpu = \"70%\"",
                );
                None
            }
            Some(_) if service.image.is_some() => {
                self.err(
                    raw.span(),
                    field,
                    "a cpu target is measured in the replica's cgroup, and an image service's replicas run in podman's",
                    "scale an image service on requests_per_second or connections",
                );
                None
            }
            Some(_) if service.cpus.is_none() => {
                self.err(
                    raw.span(),
                    field,
                    "a cpu target is a percentage of the service's cpus limit, and the service sets none",
                    "add cpus = N to the service (e.g. cpus = 0.5), or scale on requests_per_second or connections",
                );
                None
            }
            Some(n) => Some(n),
        }
    }

    /// A duration from `least` to `most`, or `default` when unset.
    fn window(
        &mut self,
        field: &str,
        raw: Option<&Spanned<String>>,
        default: Duration,
        least: Duration,
        most: Duration,
    ) -> Duration {
        let value = self.duration(field, raw, default);
        if let Some(raw) = raw.filter(|_| value < least || value > most) {
            self.err(
                raw.span(),
                field,
                format!("{:?} is out of range", raw.get_ref()),
                format!(
                    "use \"{}\" to \"{}\" (the default is \"{}\")",
                    humantime::format_duration(least),
                    humantime::format_duration(most),
                    humantime::format_duration(default)
                ),
            );
            return default;
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::super::{parse, parse_scaled, to_toml};
    use super::*;

    const NET: &str = "name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n[services.web]\ncommand = \"x\"\n";

    fn errors(text: &str) -> String {
        match parse("plumb.toml", text) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(d) => d.to_string(),
        }
    }

    #[test]
    fn an_autoscale_table_parses_with_its_defaults() {
        let p = parse(
            "f",
            &format!("{NET}[services.web.autoscale]\nmax = 10\nrequests_per_second = 200\nconnections = 50\n"),
        )
        .unwrap();
        let web = &p.stack.services["web"];
        let a = web.autoscale.clone().unwrap();
        assert_eq!(
            a,
            AutoscaleSpec {
                min: 1,
                max: 10,
                cpu_percent: None,
                requests_per_second: Some(200),
                connections: Some(50),
                scale_down_window: Duration::from_secs(300),
                scale_up_period: Duration::from_secs(15),
            }
        );
        // Without replicas the service starts at min.
        assert_eq!(web.replicas, 1);
        assert_eq!(p.place("services.web.autoscale.max"), "f:7");
        let p = parse(
            "f",
            &format!("{NET}replicas = 3\nautoscale = {{ min = 2, max = 5, connections = 8, scale_down_window = \"30s\", scale_up_period = \"1m\" }}\n"),
        )
        .unwrap();
        let web = &p.stack.services["web"];
        assert_eq!(web.replicas, 3);
        let a = web.autoscale.as_ref().unwrap();
        assert_eq!((a.min, a.max), (2, 5));
        assert_eq!(a.scale_down_window, Duration::from_secs(30));
        assert_eq!(a.scale_up_period, Duration::from_secs(60));
        // Without autoscale, nothing changes.
        assert_eq!(parse("f", NET).unwrap().stack.services["web"].autoscale, None);
    }

    #[test]
    fn autoscale_errors_point_at_their_line() {
        let table = |body: &str| errors(&format!("{NET}[services.web.autoscale]\n{body}"));
        let e = table("min = 5\nmax = 2\nconnections = 1\n");
        assert!(
            e.starts_with("plumb.toml:8:7: services.web.autoscale.max: max = 2 is below min = 5"),
            "{e}"
        );
        // ... and only that: no second error about replicas against bounds that make no sense.
        let e = errors(&format!(
            "{NET}replicas = 8\n[services.web.autoscale]\nmin = 5\nmax = 2\nconnections = 1\n"
        ));
        assert_eq!(e.matches("plumb.toml:").count(), 1, "{e}");
        let e = table("max = 3\n");
        assert!(
            e.starts_with("plumb.toml:6:1: services.web.autoscale: autoscale needs a target to scale on"),
            "{e}"
        );
        assert!(e.contains("requests_per_second = N"), "{e}");
        let e = table("connections = 5\n");
        assert!(e.contains("services.web.autoscale.max: autoscale needs max"), "{e}");
        let e = table("max = 3\nmin = 0\nconnections = 5\n");
        assert!(
            e.starts_with("plumb.toml:8:7: services.web.autoscale.min: min = 0 is out of range"),
            "{e}"
        );
        let e = table("max = 5000\nconnections = 5\n");
        assert!(e.contains("max = 5000 is out of range"), "{e}");
        let e = table("max = 3\nrequests_per_second = 0\n");
        assert!(
            e.starts_with("plumb.toml:8:23: services.web.autoscale.requests_per_second: 0 is not a target"),
            "{e}"
        );
        let e = table("max = 3\nconnections = 5\nscale_down_window = \"soon\"\n");
        assert!(
            e.starts_with("plumb.toml:9:21: services.web.autoscale.scale_down_window: \"soon\" is not a duration"),
            "{e}"
        );
        let e = table("max = 3\nconnections = 5\nscale_up_period = \"0s\"\n");
        assert!(e.contains("scale_up_period: \"0s\" is out of range"), "{e}");
        let e = table("max = 3\nconnections = 5\nscale_down_window = \"2h\"\n");
        assert!(e.contains("use \"0s\" to \"1h\" (the default is \"5m\")"), "{e}");
        let e = table("max = 3\nconnections = 5\nbogus = 1\n");
        assert!(e.contains("services.web.autoscale.bogus: unknown field `bogus`"), "{e}");
    }

    #[test]
    fn a_cpu_target_needs_a_cpus_limit() {
        let table = |cpu: &str| errors(&format!("{NET}[services.web.autoscale]\nmax = 3\ncpu = {cpu}\n"));
        let e = table("\"70%\"");
        assert!(
            e.starts_with(
                "plumb.toml:8:7: services.web.autoscale.cpu: a cpu target is a percentage of the service's cpus limit"
            ),
            "{e}"
        );
        assert!(e.contains("add cpus = N to the service"), "{e}");
        for bad in ["\"70\"", "\"0%\"", "\"150%\"", "\"lots\""] {
            let e = table(bad);
            assert!(e.contains("is not a CPU target"), "{bad}: {e}");
        }
        // With a cpus limit the target is taken.
        let text = format!("{NET}cpus = 0.5\n[services.web.autoscale]\nmax = 3\ncpu = \"70%\"\n");
        let a = parse("f", &text).unwrap().stack.services["web"]
            .autoscale
            .clone()
            .unwrap();
        assert_eq!(a.cpu_percent, Some(70));
    }

    #[test]
    fn replicas_is_the_starting_count_within_min_and_max() {
        let e = errors(&format!(
            "{NET}replicas = 8\n[services.web.autoscale]\nmin = 2\nmax = 5\nconnections = 5\n"
        ));
        assert!(
            e.starts_with(
                "plumb.toml:6:12: services.web.replicas: replicas = 8 is outside autoscale's min = 2 .. max = 5"
            ),
            "{e}"
        );
        // `plumb scale` (and later the controller) goes through the same check.
        let text = format!("{NET}[services.web.autoscale]\nmin = 2\nmax = 5\nconnections = 5\n");
        let scaled = |n: u32| parse_scaled("f", &text, &BTreeMap::from([("web".to_string(), n)]));
        assert_eq!(scaled(4).unwrap().stack.services["web"].replicas, 4);
        let e = scaled(9).err().unwrap().to_string();
        assert!(
            e.contains("replicas = 9 is outside autoscale's min = 2 .. max = 5"),
            "{e}"
        );
    }

    #[test]
    fn vip_counted_targets_need_a_vip_and_growing_needs_no_static_address() {
        let e = errors(&format!(
            "{NET}lb = \"none\"\n[services.web.autoscale]\nmax = 3\nconnections = 5\n"
        ));
        assert!(
            e.starts_with(
                "plumb.toml:9:15: services.web.autoscale.connections: connections is counted at the service's VIP"
            ),
            "{e}"
        );
        let e = errors(
            "name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n[services.web]\nnetworks = { n = { ip = \"10.0.0.5\" } }\n[services.web.autoscale]\nmax = 3\nconnections = 5\n",
        );
        assert!(
            e.starts_with(
                "plumb.toml:7:7: services.web.autoscale.max: a static address cannot be shared by up to 3 replicas"
            ),
            "{e}"
        );
        // The longest container name counts max.
        let long = "a".repeat(48);
        let e = errors(&format!(
            "name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n[services.{long}]\nautoscale = {{ max = 1000000000000000, connections = 5 }}\n"
        ));
        assert!(e.contains("longer than the kernel's 64-byte hostname limit"), "{e}");
    }

    #[test]
    fn size_limits_count_an_autoscaled_service_at_its_max() {
        let e = errors(&format!("{NET}[services.web.autoscale]\nmax = 1024\nconnections = 5\n"));
        assert!(
            e.contains("1024 containers join network \"n\", but a Linux bridge takes at most 1023 ports"),
            "{e}"
        );
        let e = errors(&format!(
            "{NET}networks = []\n[services.web.autoscale]\nmax = 4000\nconnections = 5\n[services.db]\nnetworks = []\nreplicas = 97\n"
        ));
        assert!(
            e.starts_with("plumb.toml:8:7: services.web.autoscale.max: the stack has 4097 containers"),
            "{e}"
        );
        // A replicas out of range gets its one error.
        let e = errors(&format!(
            "{NET}replicas = -1\n[services.web.autoscale]\nmax = 3\nconnections = 5\n"
        ));
        assert_eq!(e.matches("plumb.toml:").count(), 1, "{e}");
    }

    #[test]
    fn the_documented_example_parses_as_documented() {
        let doc = include_str!("../../../../../docs/stack-file.md");
        let section = &doc[doc.find("## Autoscaling").unwrap()..];
        let start = section.find("```toml\n").unwrap() + "```toml\n".len();
        let example = &section[start..start + section[start..].find("```").unwrap()];
        let text = format!("name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/24\"\n{example}");
        let p = parse("f", &text).unwrap();
        let web = &p.stack.services["web"];
        assert_eq!(web.replicas, 2);
        let a = web.autoscale.as_ref().unwrap();
        assert_eq!(
            (a.min, a.max, a.requests_per_second, a.connections),
            (1, 10, Some(200), Some(50))
        );
        assert_eq!(
            (a.scale_down_window, a.scale_up_period),
            (Duration::from_secs(300), Duration::from_secs(15))
        );
        // The commented-out cpu line needs the commented-out cpus limit, as the example says.
        let e = parse("f", &text.replace("# cpu =", "cpu =")).err().unwrap().to_string();
        assert!(e.contains("the service sets none"), "{e}");
        let p = parse("f", &text.replace("# cpu", "cpu")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            p.stack.services["web"].autoscale.as_ref().unwrap().cpu_percent,
            Some(70)
        );
    }

    #[test]
    fn autoscale_is_written_back_as_it_was_read() {
        let text = format!(
            "{NET}replicas = 3\n[services.web.autoscale]\nmin = 2\nmax = 5\nrequests_per_second = 200\nscale_down_window = \"30s\"\n"
        );
        let stack = parse("f", &text).unwrap().stack;
        let written = to_toml(&stack).unwrap();
        assert!(written.contains("autoscale = { min = 2, max = 5, requests_per_second = 200, scale_down_window = \"30s\", scale_up_period = \"15s\" }"), "{written}");
        assert_eq!(parse("f", &written).unwrap().stack, stack);
    }
}

//! The stack file's TOML shape as serde reads it. Every value keeps its byte span (tables
//! too, also when written as `[services.x.health]` headers) so that errors point at it.
//! Nothing here judges values: that is `validate`'s work.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize as DeriveDeserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

#[derive(DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStack {
    pub name: Spanned<String>,
    pub service_subnet: Option<Spanned<String>>,
    pub metrics: Option<Spanned<String>>,
    pub ui: Option<Spanned<String>>,
    /// `mesh = true`: every service's replicas get a sidecar proxy (a service may say false).
    pub mesh: Option<Spanned<bool>>,
    /// `tracing = "http://HOST:4318"`: where sidecars export their spans (OTLP over HTTP).
    pub tracing: Option<Spanned<String>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    pub networks: BTreeMap<Spanned<String>, RawNetwork>,
    #[serde(default)]
    pub services: BTreeMap<Spanned<String>, RawService>,
    #[serde(default)]
    pub policies: Vec<Spanned<RawPolicy>>,
    #[serde(default)]
    pub experiments: Vec<Spanned<RawExperiment>>,
}

/// One `[[routes]]` entry: how sidecars call a service (or a path prefix of it), judged in
/// `validate::mesh`.
#[derive(DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub service: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub retries: Option<Spanned<i64>>,
    pub retry_budget: Option<Spanned<String>>,
    pub retry_methods: Option<Spanned<RawValue>>,
    pub eject_after: Option<Spanned<i64>>,
    pub eject_for: Option<Spanned<String>>,
}

/// One `[[experiments]]` entry, judged in `validate::experiment`.
#[derive(DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawExperiment {
    pub name: Option<Spanned<String>>,
    pub description: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub settle: Option<Spanned<String>>,
    pub duration: Option<Spanned<String>>,
    #[serde(default)]
    pub checks: Vec<Spanned<RawCheck>>,
    #[serde(default)]
    pub faults: Vec<Spanned<RawFault>>,
}

#[derive(DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    pub name: Option<Spanned<String>>,
    pub http: Option<Spanned<String>>,
    pub from: Option<Spanned<String>>,
    pub status: Option<Spanned<i64>>,
    pub within: Option<Spanned<String>>,
    pub service: Option<Spanned<String>>,
    pub healthy: Option<Spanned<i64>>,
}

#[derive(DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFault {
    pub at: Option<Spanned<String>>,
    #[serde(rename = "for")]
    pub lasts: Option<Spanned<String>>,
    pub kill: Option<Spanned<String>>,
    pub partition: Option<Spanned<Vec<Spanned<String>>>>,
    pub target: Option<Spanned<String>>,
    pub delay: Option<Spanned<String>>,
    pub jitter: Option<Spanned<String>>,
    pub loss: Option<Spanned<String>>,
    pub rate: Option<Spanned<String>>,
    pub corrupt: Option<Spanned<String>>,
    pub duplicate: Option<Spanned<String>>,
}

/// One `[[policies]]` entry. `from` and `to` take a name or a list, `ports` numbers and
/// `"A-B"` strings: [`RawValue`]s, judged in `validate::policy`.
#[derive(DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub from: Option<Spanned<RawValue>>,
    pub to: Option<Spanned<RawValue>>,
    pub ports: Option<Spanned<RawValue>>,
    pub protocol: Option<Spanned<String>>,
    pub log: Option<Spanned<bool>>,
    /// L7 (enforced by the receiving sidecar): HTTP methods and path prefixes allowed.
    pub methods: Option<Spanned<RawValue>>,
    pub paths: Option<Spanned<RawValue>>,
    /// Only mutual-TLS connections from the mesh's sidecars.
    pub mtls: Option<Spanned<bool>>,
}

#[derive(DeriveDeserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNetwork {
    pub subnet: Spanned<String>,
    pub gateway: Option<Spanned<String>>,
    pub internal: Option<bool>,
    pub driver: Option<Spanned<String>>,
    pub vni: Option<Spanned<i64>>,
    pub host_prefix: Option<Spanned<i64>>,
}

/// Fields that take several shapes (a list or a table, a string or a list) are
/// [`RawValue`]s, checked by hand so that their messages can say what each shape means.
#[derive(DeriveDeserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub networks: Option<Spanned<RawValue>>,
    pub replicas: Option<Spanned<i64>>,
    pub ports: Option<Spanned<Vec<Spanned<String>>>>,
    pub command: Option<Spanned<RawValue>>,
    pub env: Option<Spanned<RawTable>>,
    pub workdir: Option<Spanned<String>>,
    pub user: Option<Spanned<String>>,
    pub restart: Option<Spanned<String>>,
    pub health: Option<Spanned<RawHealth>>,
    pub depends_on: Option<Spanned<RawValue>>,
    pub stop_grace: Option<Spanned<String>>,
    pub cap_add: Option<Spanned<RawValue>>,
    pub cap_drop: Option<Spanned<RawValue>>,
    pub expose: Option<Spanned<Vec<Spanned<RawValue>>>>,
    pub lb: Option<Spanned<String>>,
    pub affinity: Option<Spanned<String>>,
    pub affinity_timeout: Option<Spanned<String>>,
    pub aliases: Option<Spanned<Vec<Spanned<RawValue>>>>,
    pub placement: Option<Spanned<RawTable>>,
    /// The OCI image its replicas run (with podman), instead of a host program (Compose's
    /// `image`).
    pub image: Option<Spanned<String>>,
    /// How to build that image: a folder (`"web"`) or `{ context, dockerfile }` (Compose's
    /// `build`).
    pub build: Option<Spanned<RawValue>>,
    /// CPUs' worth of time its replicas may use each (`0.5`).
    pub cpus: Option<Spanned<RawValue>>,
    /// Memory each replica may use (`"256M"`).
    pub memory: Option<Spanned<RawValue>>,
    /// Memory and swap together (`"512M"`, or `-1` for unlimited swap).
    pub memory_swap: Option<Spanned<RawValue>>,
    /// Processes and threads each replica may have at once.
    pub pids: Option<Spanned<i64>>,
    /// `[services.X.autoscale]`, judged in `validate::autoscale`.
    pub autoscale: Option<Spanned<RawAutoscale>>,
    /// The stack's `mesh`, for this service alone.
    pub mesh: Option<Spanned<bool>>,
}

impl RawService {
    /// Where each field that only a service with a `command` may have sits, if present.
    pub fn process_fields(&self) -> [(&'static str, Option<Range<usize>>); 13] {
        [
            ("env", self.env.as_ref().map(Spanned::span)),
            ("workdir", self.workdir.as_ref().map(Spanned::span)),
            ("user", self.user.as_ref().map(Spanned::span)),
            ("restart", self.restart.as_ref().map(Spanned::span)),
            ("health", self.health.as_ref().map(Spanned::span)),
            ("depends_on", self.depends_on.as_ref().map(Spanned::span)),
            ("stop_grace", self.stop_grace.as_ref().map(Spanned::span)),
            ("cap_add", self.cap_add.as_ref().map(Spanned::span)),
            ("cap_drop", self.cap_drop.as_ref().map(Spanned::span)),
            ("cpus", self.cpus.as_ref().map(Spanned::span)),
            ("memory", self.memory.as_ref().map(Spanned::span)),
            ("memory_swap", self.memory_swap.as_ref().map(Spanned::span)),
            ("pids", self.pids.as_ref().map(Spanned::span)),
        ]
    }

    /// Where each field sits, if present.
    pub fn fields(&self) -> Vec<(&'static str, Option<Range<usize>>)> {
        let mut out = vec![
            ("networks", self.networks.as_ref().map(Spanned::span)),
            ("replicas", self.replicas.as_ref().map(Spanned::span)),
            ("ports", self.ports.as_ref().map(Spanned::span)),
            ("command", self.command.as_ref().map(Spanned::span)),
            ("expose", self.expose.as_ref().map(Spanned::span)),
            ("lb", self.lb.as_ref().map(Spanned::span)),
            ("affinity", self.affinity.as_ref().map(Spanned::span)),
            ("affinity_timeout", self.affinity_timeout.as_ref().map(Spanned::span)),
            ("aliases", self.aliases.as_ref().map(Spanned::span)),
            ("placement", self.placement.as_ref().map(Spanned::span)),
            ("image", self.image.as_ref().map(Spanned::span)),
            ("build", self.build.as_ref().map(Spanned::span)),
            ("autoscale", self.autoscale.as_ref().map(Spanned::span)),
            ("mesh", self.mesh.as_ref().map(Spanned::span)),
        ];
        out.extend(self.process_fields());
        out
    }
}

#[derive(DeriveDeserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    pub tcp: Option<Spanned<i64>>,
    pub http: Option<Spanned<String>>,
    pub port: Option<Spanned<i64>>,
    pub exec: Option<Spanned<RawValue>>,
    pub interval: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub retries: Option<Spanned<i64>>,
    pub start_period: Option<Spanned<String>>,
}

#[derive(DeriveDeserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAutoscale {
    pub min: Option<Spanned<i64>>,
    pub max: Option<Spanned<i64>>,
    pub cpu: Option<Spanned<String>>,
    pub requests_per_second: Option<Spanned<i64>>,
    pub connections: Option<Spanned<i64>>,
    pub scale_down_window: Option<Spanned<String>>,
    pub scale_up_period: Option<Spanned<String>>,
}

pub(super) type RawTable = BTreeMap<Spanned<String>, Spanned<RawValue>>;

/// Any TOML value, with the span of each of its parts.
pub(super) enum RawValue {
    String(String),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    Array(Vec<Spanned<RawValue>>),
    Table(RawTable),
}

impl RawValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            RawValue::String(s) => Some(s),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for RawValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawValueVisitor)
    }
}

struct RawValueVisitor;

impl<'de> Visitor<'de> for RawValueVisitor {
    type Value = RawValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a TOML value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<RawValue, E> {
        Ok(RawValue::Boolean(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<RawValue, E> {
        Ok(RawValue::Integer(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawValue, E> {
        i64::try_from(v)
            .map(RawValue::Integer)
            .map_err(|_| E::custom("integer number overflowed"))
    }

    fn visit_f64<E>(self, v: f64) -> Result<RawValue, E> {
        Ok(RawValue::Float(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<RawValue, E> {
        Ok(RawValue::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<RawValue, E> {
        Ok(RawValue::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(RawValue::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawValue, A::Error> {
        let mut table = RawTable::new();
        loop {
            // Table keys always carry a span. The one map whose keys do not is how toml hands
            // over a date or time, which no field of a stack file takes.
            let key: Option<Spanned<String>> = map
                .next_key()
                .map_err(|_| de::Error::custom("a date or time is not expected here"))?;
            let Some(key) = key else { break };
            let value = map.next_value()?;
            table.insert(key, value);
        }
        Ok(RawValue::Table(table))
    }
}

/// The dotted path (as in diagnostics) of the innermost key or value at `span`, for errors
/// that toml reports with a place but no field: empty if none is there (or `span` is empty,
/// as for a field missing from the top level), `None` if the text is not valid TOML at all.
pub(super) fn field_at(text: &str, span: &Range<usize>) -> Option<String> {
    let root = DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    if !span.is_empty() && find_in_table(root.get_ref(), span, &mut path) {
        Some(join_path(&path))
    } else {
        Some(String::new())
    }
}

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

fn join_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Key(k) if out.is_empty() => out.push_str(k),
            Segment::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

/// Searches the whole tree: the keys of a `[header]` table sit outside the header's span.
fn find_in_table<'a>(table: &'a DeTable<'a>, span: &Range<usize>, path: &mut Vec<Segment<'a>>) -> bool {
    for (key, value) in table.iter() {
        path.push(Segment::Key(key.get_ref()));
        if find_in_value(value, span, path) || contains(&key.span(), span) {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_value<'a>(value: &'a Spanned<DeValue<'a>>, span: &Range<usize>, path: &mut Vec<Segment<'a>>) -> bool {
    let inside = match value.get_ref() {
        DeValue::Table(table) => find_in_table(table, span, path),
        DeValue::Array(items) => items.iter().enumerate().any(|(i, item)| {
            path.push(Segment::Index(i));
            let found = find_in_value(item, span, path);
            if !found {
                path.pop();
            }
            found
        }),
        _ => false,
    };
    inside || contains(&value.span(), span)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(text: &str, needle: &str) -> String {
        let start = text.find(needle).unwrap();
        field_at(text, &(start..start + needle.len())).unwrap()
    }

    #[test]
    fn fields_are_found_by_span_in_every_table_form() {
        let text = "name = \"s\"\n[services.a]\nimage = 1\nports = [\"1:1\", 7]\n[services.a.health]\ntcp = \"x\"\n";
        assert_eq!(field(text, "image"), "services.a.image");
        assert_eq!(field(text, "7"), "services.a.ports[1]");
        assert_eq!(field(text, "\"x\""), "services.a.health.tcp");
        assert_eq!(field(text, "\"s\""), "name");
        assert_eq!(field_at(text, &(0..0)).unwrap(), "");
        assert_eq!(field_at("a = [", &(0..1)), None);
    }

    #[test]
    fn raw_values_keep_the_span_of_each_part() {
        #[derive(DeriveDeserialize)]
        struct Doc {
            v: Spanned<RawValue>,
        }
        let text = "[v]\nx = [\"a\", 2]\n";
        let doc: Doc = toml::from_str(text).unwrap();
        let RawValue::Table(table) = doc.v.get_ref() else {
            panic!("not a table")
        };
        let (key, value) = table.iter().next().unwrap();
        assert_eq!(&text[key.span()], "x");
        let RawValue::Array(items) = value.get_ref() else {
            panic!("not an array")
        };
        assert_eq!(&text[items[1].span()], "2");
        let err = toml::from_str::<Doc>("v = 1979-05-27\n").err().unwrap();
        assert!(err.message().contains("date or time"), "{err}");
    }
}

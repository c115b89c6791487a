//! Distributed tracing, the pure parts: W3C `traceparent` headers, spans as plumb keeps them,
//! OTLP's protobuf messages (the few the trace export uses, as prost structs: `opentelemetry-proto`
//! would bring tonic's build for five messages), traces summed up and drawn as a waterfall.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

/// `00-TRACEID-SPANID-FLAGS`: where a request sits in its trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    /// The caller's span: the parent of the next span.
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceParent {
    /// Parses a `traceparent` header (version 00, or a later one read as 00 as the spec says);
    /// `None` for anything malformed (all-zero ids included): a new trace starts then.
    pub fn parse(text: &str) -> Option<TraceParent> {
        let text = text.trim();
        let mut parts = text.split('-');
        let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let trace_id: [u8; 16] = hex_bytes(trace)?;
        let span_id: [u8; 8] = hex_bytes(span)?;
        let flags: [u8; 1] = hex_bytes(flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] || !is_lower_hex(version) {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            sampled: flags[0] & 1 == 1,
        })
    }

    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            u8::from(self.sampled)
        )
    }
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N || !is_lower_hex(s) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Parses a trace ID as `plumb traces show` takes it (32 hex digits).
pub fn parse_trace_id(text: &str) -> Option<[u8; 16]> {
    hex_bytes(&text.to_ascii_lowercase())
}

/// A span's kind, as OTLP numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Internal,
    Server,
    Client,
}

/// One span as plumb keeps and shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Span {
    pub trace_id: String,
    pub span_id: String,
    #[serde(default)]
    pub parent_id: Option<String>,
    /// The service (the resource's `service.name`).
    pub service: String,
    /// `GET /api/products`.
    pub name: String,
    pub kind: Kind,
    pub start_ns: u64,
    pub end_ns: u64,
    /// An error (OTLP status code 2), with why.
    #[serde(default)]
    pub error: Option<String>,
    /// Other attributes (`http.response.status_code`, `plumb.container`, ...).
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

impl Span {
    pub fn duration_ns(&self) -> u64 {
        self.end_ns.saturating_sub(self.start_ns)
    }
}

/// OTLP's messages, as far as plumb reads and writes them (opentelemetry/proto/collector/
/// trace/v1 and its imports); unknown fields are skipped by prost.
pub mod otlp {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        #[prost(int32, tag = "3")]
        pub code: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "any_value::Value", tags = "1, 2, 3, 4")]
        pub value: Option<any_value::Value>,
    }
    pub mod any_value {
        #[derive(Clone, PartialEq, prost::Oneof)]
        pub enum Value {
            #[prost(string, tag = "1")]
            StringValue(String),
            #[prost(bool, tag = "2")]
            BoolValue(bool),
            #[prost(int64, tag = "3")]
            IntValue(i64),
            #[prost(double, tag = "4")]
            DoubleValue(f64),
        }
    }
}

const KIND_INTERNAL: i32 = 1;
const KIND_SERVER: i32 = 2;
const KIND_CLIENT: i32 = 3;
const STATUS_ERROR: i32 = 2;

fn string_kv(key: &str, value: &str) -> otlp::KeyValue {
    otlp::KeyValue {
        key: key.to_string(),
        value: Some(otlp::AnyValue {
            value: Some(otlp::any_value::Value::StringValue(value.to_string())),
        }),
    }
}

fn value_text(v: &otlp::AnyValue) -> String {
    use otlp::any_value::Value;
    match &v.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        None => String::new(),
    }
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .filter_map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok())
        .collect()
}

/// The OTLP export request (protobuf) carrying `spans`, one resource per service.
pub fn encode(spans: &[Span]) -> Vec<u8> {
    use prost::Message;
    let mut by_service: BTreeMap<&str, Vec<otlp::Span>> = BTreeMap::new();
    for s in spans {
        let mut attributes: Vec<otlp::KeyValue> = s.attributes.iter().map(|(k, v)| string_kv(k, v)).collect();
        attributes.sort_by(|a, b| a.key.cmp(&b.key));
        by_service.entry(&s.service).or_default().push(otlp::Span {
            trace_id: unhex(&s.trace_id),
            span_id: unhex(&s.span_id),
            parent_span_id: s.parent_id.as_deref().map(unhex).unwrap_or_default(),
            name: s.name.clone(),
            kind: match s.kind {
                Kind::Internal => KIND_INTERNAL,
                Kind::Server => KIND_SERVER,
                Kind::Client => KIND_CLIENT,
            },
            start_time_unix_nano: s.start_ns,
            end_time_unix_nano: s.end_ns,
            attributes,
            status: s.error.as_ref().map(|why| otlp::Status {
                message: why.clone(),
                code: STATUS_ERROR,
            }),
        });
    }
    otlp::ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .map(|(service, spans)| otlp::ResourceSpans {
                resource: Some(otlp::Resource {
                    attributes: vec![string_kv("service.name", service)],
                }),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: Some(otlp::InstrumentationScope {
                        name: "plumb".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                    }),
                    spans,
                }],
            })
            .collect(),
    }
    .encode_to_vec()
}

/// The spans of an OTLP export request (protobuf), from any OTLP client.
pub fn decode(bytes: &[u8]) -> Result<Vec<Span>, String> {
    use prost::Message;
    let request = otlp::ExportTraceServiceRequest::decode(bytes).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for rs in request.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map_or_else(|| "unknown".to_string(), value_text);
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            if span.trace_id.len() != 16 || span.span_id.len() != 8 {
                return Err("a span's trace_id must be 16 bytes and span_id 8".into());
            }
            let attributes = span
                .attributes
                .iter()
                .map(|kv| (kv.key.clone(), kv.value.as_ref().map(value_text).unwrap_or_default()))
                .collect();
            out.push(Span {
                trace_id: hex(&span.trace_id),
                span_id: hex(&span.span_id),
                parent_id: (span.parent_span_id.len() == 8).then(|| hex(&span.parent_span_id)),
                service: service.clone(),
                name: span.name,
                kind: match span.kind {
                    KIND_SERVER => Kind::Server,
                    KIND_CLIENT => Kind::Client,
                    _ => Kind::Internal,
                },
                start_ns: span.start_time_unix_nano,
                end_ns: span.end_time_unix_nano,
                error: span.status.filter(|s| s.code == STATUS_ERROR).map(|s| s.message),
                attributes,
            });
        }
    }
    Ok(out)
}

/// One trace as `plumb traces` lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub trace_id: String,
    /// The root span's service and name (the earliest span's if the root is missing).
    pub service: String,
    pub name: String,
    pub start_ns: u64,
    pub duration_ns: u64,
    pub spans: usize,
    pub services: Vec<String>,
    pub errors: usize,
}

/// Sums up one trace's spans (not empty).
pub fn summarize(spans: &[Span]) -> Option<Summary> {
    let ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let root = spans
        .iter()
        .filter(|s| s.parent_id.as_deref().is_none_or(|p| !ids.contains(&p)))
        .min_by_key(|s| s.start_ns)?;
    let start = spans.iter().map(|s| s.start_ns).min()?;
    let end = spans.iter().map(|s| s.end_ns).max()?;
    let mut services: Vec<String> = spans.iter().map(|s| s.service.clone()).collect();
    services.sort();
    services.dedup();
    Some(Summary {
        trace_id: root.trace_id.clone(),
        service: root.service.clone(),
        name: root.name.clone(),
        start_ns: start,
        duration_ns: end.saturating_sub(start),
        spans: spans.len(),
        services,
        errors: spans.iter().filter(|s| s.error.is_some()).count(),
    })
}

/// A trace's spans in waterfall order: each after its parent, siblings by start time, with
/// their depth.
pub fn tree(spans: &[Span]) -> Vec<(usize, &Span)> {
    let ids: Vec<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut children: BTreeMap<Option<&str>, Vec<&Span>> = BTreeMap::new();
    for s in spans {
        let parent = s.parent_id.as_deref().filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(s);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| (s.start_ns, s.span_id.clone()));
    }
    let mut out = Vec::new();
    fn walk<'a>(
        at: Option<&'a str>,
        depth: usize,
        children: &BTreeMap<Option<&'a str>, Vec<&'a Span>>,
        out: &mut Vec<(usize, &'a Span)>,
    ) {
        for s in children.get(&at).into_iter().flatten() {
            out.push((depth, *s));
            walk(Some(s.span_id.as_str()), depth + 1, children, out);
        }
    }
    walk(None, 0, &children, &mut out);
    out
}

/// The waterfall of a trace, `width` characters of bar: each span's service, operation,
/// start offset, duration and status.
pub fn waterfall(spans: &[Span], width: usize) -> String {
    let Some(start) = spans.iter().map(|s| s.start_ns).min() else {
        return String::new();
    };
    let end = spans.iter().map(|s| s.end_ns).max().unwrap_or(start);
    let total = end.saturating_sub(start).max(1);
    let rows = tree(spans);
    let label = |d: usize, s: &Span| format!("{}{} {}", "  ".repeat(d), s.service, s.name);
    let label_width = rows
        .iter()
        .map(|(d, s)| label(*d, s).chars().count())
        .max()
        .unwrap_or(0)
        .max(9);
    let mut out = format!(
        "{:<label_width$}  {:>9}  {:>9}  {:<6}  {}\n",
        "SPAN", "START", "DURATION", "STATUS", "TIMELINE"
    );
    for (depth, s) in rows {
        let from = ((s.start_ns - start) as u128 * width as u128 / total as u128) as usize;
        let len = ((s.duration_ns() as u128 * width as u128).div_ceil(total as u128) as usize).max(1);
        let bar = format!(
            "{}{}",
            " ".repeat(from.min(width)),
            "█".repeat(len.min(width.saturating_sub(from).max(1)))
        );
        let _ = writeln!(
            out,
            "{:<label_width$}  {:>9}  {:>9}  {:<6}  {}",
            label(depth, s),
            millis(s.start_ns - start),
            millis(s.duration_ns()),
            if s.error.is_some() { "error" } else { "ok" },
            bar
        );
    }
    out
}

/// `12.3ms`.
pub fn millis(ns: u64) -> String {
    format!("{:.1}ms", ns as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_what_the_spec_rejects() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let p = TraceParent::parse(h).unwrap();
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(p.sampled);
        assert_eq!(p.header(), h);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6-00f067aa0ba902b7-01",
            "",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        // A later version is read as 00, extra fields and all.
        assert!(TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-x").is_some());
    }

    fn span(id: &str, parent: Option<&str>, service: &str, start: u64, end: u64) -> Span {
        Span {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: id.into(),
            parent_id: parent.map(str::to_string),
            service: service.into(),
            name: format!("GET /{service}"),
            kind: if parent.is_some() { Kind::Client } else { Kind::Server },
            start_ns: start,
            end_ns: end,
            error: None,
            attributes: [("http.response.status_code".to_string(), "200".to_string())].into(),
        }
    }

    #[test]
    fn otlp_encoding_round_trips() {
        let mut spans = vec![
            span("00f067aa0ba902b7", None, "web", 1_000, 9_000),
            span("00f067aa0ba902b8", Some("00f067aa0ba902b7"), "gateway", 2_000, 8_000),
        ];
        spans[1].error = Some("500".into());
        let back = decode(&encode(&spans)).unwrap();
        let mut back_sorted = back.clone();
        back_sorted.sort_by_key(|s| s.start_ns);
        assert_eq!(back_sorted, spans);
        assert!(decode(b"\x0a\x03abc").is_err(), "garbage is an error, not a panic");
    }

    #[test]
    fn the_waterfall_puts_children_under_parents_in_time_order() {
        let spans = vec![
            span(
                "cccccccccccccccc",
                Some("bbbbbbbbbbbbbbbb"),
                "product",
                3_000_000,
                7_000_000,
            ),
            span("aaaaaaaaaaaaaaaa", None, "web", 0, 10_000_000),
            span(
                "bbbbbbbbbbbbbbbb",
                Some("aaaaaaaaaaaaaaaa"),
                "gateway",
                1_000_000,
                9_000_000,
            ),
        ];
        let order: Vec<(usize, &str)> = tree(&spans).iter().map(|(d, s)| (*d, s.service.as_str())).collect();
        assert_eq!(order, [(0, "web"), (1, "gateway"), (2, "product")]);
        let w = waterfall(&spans, 20);
        let lines: Vec<&str> = w.lines().collect();
        assert!(
            lines[1].starts_with("web GET /web") && lines[1].contains("10.0ms"),
            "{w}"
        );
        assert!(
            lines[3].starts_with("    product GET /product")
                && lines[3].contains("3.0ms")
                && lines[3].contains("4.0ms"),
            "{w}"
        );
        let s = summarize(&spans).unwrap();
        assert_eq!((s.service.as_str(), s.spans, s.duration_ns), ("web", 3, 10_000_000));
    }
}

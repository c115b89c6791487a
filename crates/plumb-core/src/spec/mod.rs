//! The stack file: [`parse`] reads its TOML shape (`raw`), checks it (`validate`) and returns
//! the typed stack (`model`) with the place of every field, so that any later check can
//! still point into the file.

mod capabilities;
mod compose;
mod model;
mod raw;
mod validate;
mod write;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;

pub use capabilities::{closest_name, parse_name, Capabilities, CapabilityName, CapabilitySet};
pub use compose::{is_compose_file, parse_env_file, stack_name_from, ComposeInput, AUTO_SUBNETS};
pub use model::*;
pub use validate::{
    is_stack_name, parse_duration, split_command, valid_host_name, DEFAULT_AFFINITY, MAX_BRIDGE_PORTS,
    MAX_CONTAINER_NAME, MAX_STACK_CONTAINERS, MAX_STACK_NAME, MIN_PROBE_INTERVAL, TRACING_OFF,
};
pub use write::to_toml;

use crate::diag::{Diagnostic, Diagnostics, SourceMap};

/// A parsed stack together with where each field sits in its file, so later checks that need
/// the machine (is the command installed? is the port free?) can still point at the line.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub stack: Stack,
    pub file: String,
    pub text: String,
    /// Field path (as in diagnostics) → byte range in `text`.
    pub spans: HashMap<String, Range<usize>>,
}

impl Parsed {
    /// `FILE:LINE` of a field (or of the nearest field holding it), as messages cite it.
    pub fn place(&self, field: &str) -> String {
        let map = SourceMap {
            file: &self.file,
            text: &self.text,
        };
        match validate::span_of(&self.spans, field) {
            Some(span) => format!("{}:{}", self.file, map.position(span.start).0),
            None => self.file.clone(),
        }
    }

    /// A diagnostic about a field of this file, for checks made outside the core. It points
    /// at the field, or else at the nearest field holding it (`services.a.workdir` falls back
    /// to `services.a` when the file does not set `workdir`).
    pub fn error(&self, field: &str, message: impl Into<String>, hint: impl Into<String>) -> Diagnostic {
        let map = SourceMap {
            file: &self.file,
            text: &self.text,
        };
        map.error(validate::span_of(&self.spans, field), field, message, hint)
    }
}

/// Parses and validates a stack file. `file` names it in diagnostics.
pub fn parse(file: &str, text: &str) -> Result<Parsed, Diagnostics> {
    parse_scaled(file, text, &BTreeMap::new())
}

/// Parses and validates a stack file with some services' replica counts replaced (`plumb
/// scale`): the counts go through the same checks as the file's, pointing at the service.
pub fn parse_scaled(file: &str, text: &str, replicas: &BTreeMap<String, u32>) -> Result<Parsed, Diagnostics> {
    let map = SourceMap { file, text };
    let raw: raw::RawStack = toml::from_str(text).map_err(|e| {
        // toml says where, not which field: find the field at that place.
        let (field, hint) = match raw::field_at(text, &e.span().unwrap_or_default()) {
            Some(field) => (field, "see docs/stack-file.md for the stack file's fields"),
            None if e.message().contains("duplicate") => (String::new(), "give each table and key once"),
            None => (
                String::new(),
                "fix the TOML syntax here (text needs quotes: subnet = \"10.89.1.0/24\")",
            ),
        };
        Diagnostics(vec![map.error(e.span(), field, e.message().trim(), hint)])
    })?;
    judge(&map, raw, replicas)
}

/// Parses and validates a Compose file (see docs/compose.md): the same checks as a stack
/// file's, each error at its line of the compose file and naming its Compose key.
pub fn parse_compose(file: &str, text: &str, input: &ComposeInput) -> Result<Parsed, Diagnostics> {
    parse_compose_scaled(file, text, input, &BTreeMap::new())
}

/// [`parse_compose`] with some services' replica counts replaced (`plumb scale`).
pub fn parse_compose_scaled(
    file: &str,
    text: &str,
    input: &ComposeInput,
    replicas: &BTreeMap<String, u32>,
) -> Result<Parsed, Diagnostics> {
    let map = SourceMap { file, text };
    let raw = compose::read(&map, input).map_err(Diagnostics)?;
    judge(&map, raw, replicas).map_err(|Diagnostics(errors)| {
        Diagnostics(
            errors
                .into_iter()
                .map(|mut d| {
                    d.field = compose::compose_field(&d.field);
                    d
                })
                .collect(),
        )
    })
}

/// A stack file of either kind: Compose for `*.yaml` and `*.yml`, plumb's TOML otherwise.
pub fn parse_any(file: &str, text: &str, input: &ComposeInput) -> Result<Parsed, Diagnostics> {
    parse_any_scaled(file, text, input, &BTreeMap::new())
}

/// [`parse_any`] with some services' replica counts replaced (`plumb scale`).
pub fn parse_any_scaled(
    file: &str,
    text: &str,
    input: &ComposeInput,
    replicas: &BTreeMap<String, u32>,
) -> Result<Parsed, Diagnostics> {
    match is_compose_file(file) {
        true => parse_compose_scaled(file, text, input, replicas),
        false => parse_scaled(file, text, replicas),
    }
}

/// Validates a raw stack, whichever file it came from, with `replicas` replacing some counts.
fn judge(map: &SourceMap, mut raw: raw::RawStack, replicas: &BTreeMap<String, u32>) -> Result<Parsed, Diagnostics> {
    let mut unknown = Vec::new();
    for (service, count) in replicas {
        let found = raw.services.iter_mut().find(|(k, _)| k.get_ref() == service);
        match found {
            Some((key, svc)) => svc.replicas = Some(toml::Spanned::new(key.span(), i64::from(*count))),
            None => unknown.push(map.error(
                None,
                format!("services.{service}"),
                format!("the stack has no service {service:?}"),
                "name a service of the stack file",
            )),
        }
    }
    if !unknown.is_empty() {
        return Err(Diagnostics(unknown));
    }
    let (stack, spans) = validate::validate(map, raw)?;
    Ok(Parsed {
        stack,
        file: map.file.to_string(),
        text: map.text.to_string(),
        spans,
    })
}

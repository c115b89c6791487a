//! `plumb traces`: the traces a meshed stack kept (its sidecars' spans, and any OTLP client's
//! that sent to the stack's receiver): a list, newest first, or one trace as a waterfall.

use std::time::Duration;

use plumb_core::mesh::trace::{millis, parse_trace_id, summarize, tree, waterfall, Span, Summary};
use serde::Serialize;

use super::{require_stack_name, Context, Format};
use crate::failure::{Failure, Result};
use crate::output::{print_json, say, table};

/// How wide the waterfall's timeline is drawn.
const TIMELINE: usize = 40;

/// The stacks to look in: one, or every stack that is up.
fn stacks(ctx: &Context, stack: Option<&str>) -> Result<Vec<String>> {
    let records = ctx.state.stacks()?;
    match stack {
        Some(name) => {
            require_stack_name(name)?;
            if !records.contains_key(name) && !ctx.state.stack_dir(name).join("traces").is_dir() {
                return Err(Failure::new(format!("no stack called {name:?} is up"))
                    .hint("`plumb ps` lists the stacks that are up")
                    .code(2));
            }
            Ok(vec![name.to_string()])
        }
        None => Ok(records.into_keys().collect()),
    }
}

#[derive(Serialize)]
struct Listed {
    stack: String,
    #[serde(flatten)]
    summary: Summary,
}

pub fn list(
    ctx: &Context,
    stack: Option<&str>,
    service: Option<&str>,
    min_duration: Option<Duration>,
    format: Format,
) -> Result<()> {
    let mut rows = Vec::new();
    for name in stacks(ctx, stack)? {
        for spans in crate::traces::all(&ctx.state.stack_dir(&name)) {
            let Some(summary) = summarize(&spans) else { continue };
            if service.is_some_and(|s| !summary.services.iter().any(|x| x == s)) {
                continue;
            }
            if min_duration.is_some_and(|d| u128::from(summary.duration_ns) < d.as_nanos()) {
                continue;
            }
            rows.push(Listed {
                stack: name.clone(),
                summary,
            });
        }
    }
    rows.sort_by_key(|r| std::cmp::Reverse(r.summary.start_ns));
    if format == Format::Json {
        print_json(&rows);
        return Ok(());
    }
    if rows.is_empty() {
        say!(
            "no traces (a meshed stack keeps its last {} traces)",
            crate::traces::KEEP_TRACES
        );
        return Ok(());
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let s = &r.summary;
            vec![
                s.trace_id.clone(),
                r.stack.clone(),
                format!("{} {}", s.service, s.name),
                millis(s.duration_ns),
                s.spans.to_string(),
                s.services.join(","),
                s.errors.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["TRACE", "STACK", "ROOT", "DURATION", "SPANS", "SERVICES", "ERRORS"],
            &cells
        )
    );
    Ok(())
}

#[derive(Serialize)]
struct Shown<'a> {
    stack: String,
    trace_id: String,
    /// In waterfall order, each with its depth and start offset.
    spans: Vec<ShownSpan<'a>>,
}

#[derive(Serialize)]
struct ShownSpan<'a> {
    depth: usize,
    offset_ns: u64,
    duration_ns: u64,
    #[serde(flatten)]
    span: &'a Span,
}

pub fn show(ctx: &Context, stack: Option<&str>, id: &str, format: Format) -> Result<()> {
    let Some(trace_id) = parse_trace_id(id).map(|b| plumb_core::mesh::trace::hex(&b)) else {
        return Err(Failure::new(format!("{id:?} is not a trace ID"))
            .hint("give the 32 hex digits `plumb traces` lists")
            .code(2));
    };
    for name in stacks(ctx, stack)? {
        let spans = crate::traces::get(&ctx.state.stack_dir(&name), &trace_id);
        if spans.is_empty() {
            continue;
        }
        if format == Format::Json {
            let start = spans.iter().map(|s| s.start_ns).min().unwrap_or(0);
            let shown = Shown {
                stack: name,
                trace_id,
                spans: tree(&spans)
                    .into_iter()
                    .map(|(depth, span)| ShownSpan {
                        depth,
                        offset_ns: span.start_ns - start,
                        duration_ns: span.duration_ns(),
                        span,
                    })
                    .collect(),
            };
            print_json(&shown);
        } else {
            say!("trace {trace_id} ({name}, {} spans)", spans.len());
            print!("{}", waterfall(&spans, TIMELINE));
            // What else is known of its hops: the policy verdicts the sidecars gave, and
            // where to watch their packets.
            for (_, s) in tree(&spans) {
                if let Some(v) = s.attributes.get("plumb.policy") {
                    say!(
                        "policy at {} ({}): {v}",
                        s.service,
                        s.attributes.get("plumb.container").map_or("?", String::as_str)
                    );
                }
            }
            let mut services: Vec<&str> = spans.iter().map(|s| s.service.as_str()).collect();
            services.sort();
            services.dedup();
            let captures: Vec<String> = services.iter().map(|s| format!("plumb capture {name}/{s}")).collect();
            say!("packets of its hops: {}", captures.join(", "));
        }
        return Ok(());
    }
    Err(Failure::new(format!("no trace {trace_id} is kept"))
        .hint("`plumb traces` lists the traces kept")
        .code(2))
}

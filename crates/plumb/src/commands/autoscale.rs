//! `plumb autoscale status`: per autoscaled service, the replicas it runs and the count its
//! autoscaler decided, each target's measure against the target, and the last decisions that
//! changed the count, with when and why (what the supervisor wrote in `autoscale.json`).

use serde::Serialize;

use super::{require_stack_name, Context, Format};
use crate::failure::{Failure, Result};
use crate::output::{print_json, table};
use crate::runfile::{self, AutoscaleStatus};

#[derive(Serialize)]
struct Row {
    stack: String,
    /// Unix milliseconds of the autoscaler's last tick.
    updated_ms: u64,
    #[serde(flatten)]
    status: AutoscaleStatus,
}

pub fn status(ctx: &Context, stack: Option<&str>, format: Format) -> Result<()> {
    let records = ctx.state.stacks()?;
    if let Some(name) = stack {
        require_stack_name(name)?;
        if !records.contains_key(name) {
            return Err(Failure::new(format!("no stack called {name:?} is up"))
                .hint("`plumb ps` lists the stacks that are up")
                .code(2));
        }
    }
    let mut rows = Vec::new();
    for name in records.keys().filter(|n| stack.is_none_or(|s| s == n.as_str())) {
        let file = runfile::read_autoscale(&ctx.state.stack_dir(name));
        rows.extend(file.services.into_iter().map(|status| Row {
            stack: name.clone(),
            updated_ms: file.updated_ms,
            status,
        }));
    }
    if format == Format::Json {
        print_json(&rows);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no autoscaled service: none of the stacks that are up has [services.X.autoscale]");
        return Ok(());
    }
    let lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let s = &r.status;
            let metrics: Vec<String> = s
                .metrics
                .iter()
                .map(|m| {
                    let value = m.value.map_or("-".to_string(), |v| show(&m.metric, v));
                    format!("{} {value} (target {})", m.metric, show(&m.metric, m.target))
                })
                .collect();
            vec![
                r.stack.clone(),
                s.service.clone(),
                format!("{}..{}", s.min, s.max),
                s.current.to_string(),
                match s.scaling_to {
                    Some(n) => format!("{} (scaling to {n})", s.desired),
                    None => s.desired.to_string(),
                },
                if metrics.is_empty() {
                    "-".into()
                } else {
                    metrics.join(", ")
                },
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &["STACK", "SERVICE", "MIN..MAX", "CURRENT", "DESIRED", "METRICS"],
            &lines
        )
    );
    for r in &rows {
        let s = &r.status;
        println!("\n{}/{}: {}", r.stack, s.service, s.reason);
        if s.decisions.is_empty() {
            println!("  no scale yet");
        }
        for d in &s.decisions {
            println!(
                "  {}  {} -> {}  {}  ({})",
                super::events::time_text(d.ts_ms),
                d.from,
                d.to,
                d.reason,
                d.outcome
            );
        }
    }
    Ok(())
}

/// A metric's value as the table writes it.
fn show(metric: &str, value: f64) -> String {
    let rounded = (value * 10.0).round() / 10.0;
    match metric {
        "cpu" => format!("{rounded}%"),
        "requests_per_second" => format!("{rounded}/s"),
        _ => rounded.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_their_metric() {
        assert_eq!(show("cpu", 71.04), "71%");
        assert_eq!(show("requests_per_second", 12.345), "12.3/s");
        assert_eq!(show("connections", 3.0), "3");
    }
}

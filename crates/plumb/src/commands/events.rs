//! `plumb events [STACK] [-f] [--json]`: what happened to the containers of the stacks that
//! are up (created, removed, process started, exited, restarting, health changed), oldest
//! first, from each stack's `events.jsonl`; `-f` keeps printing new ones; `--json` gives one
//! JSON object per line.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use super::{require_stack_name, Context, Format};
use crate::events::{self, Event};
use crate::failure::{Failure, Result};

pub fn run(ctx: &Context, stack: Option<&str>, follow: bool, format: Format) -> Result<()> {
    let stacks: Vec<String> = match stack {
        Some(name) => {
            require_stack_name(name)?;
            if ctx.state.load(name)?.is_none() {
                return Err(Failure::new(format!("no stack called {name:?} is up"))
                    .hint("`plumb ps` lists the stacks that are up")
                    .code(2));
            }
            vec![name.to_string()]
        }
        None => ctx.state.stacks()?.into_keys().collect(),
    };
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = std::io::stdout().lock();
    if format == Format::Human {
        let _ = writeln!(
            out,
            "{:<23}  {:<12}  {:<20}  {:<12}  DETAIL",
            "TIME", "STACK", "CONTAINER", "EVENT"
        );
    }
    loop {
        let mut fresh: Vec<Event> = Vec::new();
        for stack in &stacks {
            let all = events::read(&ctx.state.stack_dir(stack));
            let before = seen.entry(stack.clone()).or_insert(0);
            // A rotation shortens the history: start again from what is there.
            let from = if all.len() < *before { 0 } else { *before };
            fresh.extend(all[from..].iter().cloned());
            *before = all.len();
        }
        fresh.sort_by_key(|e| e.ts_ms);
        for e in &fresh {
            let line = match format {
                Format::Json => serde_json::to_string(e).unwrap_or_default(),
                Format::Human => format!(
                    "{:<23}  {:<12}  {:<20}  {:<12}  {}",
                    time_text(e.ts_ms),
                    e.stack,
                    e.container,
                    e.event,
                    e.detail
                ),
            };
            if writeln!(out, "{line}").is_err() {
                return Ok(());
            }
        }
        let _ = out.flush();
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `2026-11-28 06:41:39.123` (UTC).
pub fn time_text(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rest / 3600,
        rest / 60 % 60,
        rest % 60,
        ms % 1000
    )
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's civil_from_days.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_read_as_utc_dates() {
        assert_eq!(super::time_text(0), "1970-01-01 00:00:00.000");
        assert_eq!(super::time_text(1_795_848_099_123), "2026-11-28 06:41:39.123");
    }
}

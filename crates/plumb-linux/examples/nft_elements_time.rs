//! Times element changes sent over netlink, the way plumb sends them (one batch per change,
//! a socket opened for each), for `bench/element-changes`:
//!
//! `nft_elements_time FAMILY TABLE SET KEY VALUE OPTIONS RUNS A.nft B.nft`
//!
//! A.nft and B.nft hold `add element` / `delete element` lines on SET (as `plumb up
//! --dry-run` renders them); they are applied alternately, RUNS times in all, and the time of
//! each is printed in microseconds, one per line. KEY is the set's type (`ipv4_addr . ...`,
//! `typeof numgen inc mod 60`), VALUE a map's value type or `-`, OPTIONS `interval` or `-`.
//! Run it as root, in a sandbox, against a table made there.

use std::time::Instant;

use plumb_core::firewall::{ElementAction, ElementEdit, Family, TableId};
use plumb_linux::nft_elements;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [family, table, set, key, value, options, runs, a, b] = args.as_slice() else {
        eprintln!("usage: nft_elements_time FAMILY TABLE SET KEY VALUE|- interval|- RUNS A.nft B.nft");
        std::process::exit(2);
    };
    let table = TableId {
        family: if family == "bridge" {
            Family::Bridge
        } else {
            Family::Inet
        },
        name: table.clone(),
    };
    let read = |path: &str| {
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        edits(&text, &format!("{table} {set}"), key, value, options)
    };
    let (a, b) = (read(a), read(b));
    let runs: usize = runs.parse().expect("RUNS");
    for i in 0..runs {
        let edits = if i % 2 == 0 { &a } else { &b };
        let start = Instant::now();
        nft_elements::apply(&[(&table, edits)]).unwrap_or_else(|e| panic!("run {i}: {e}"));
        println!("{}", start.elapsed().as_micros());
    }
}

/// The element lines of a rendering on `FAMILY TABLE SET`, as edits of that set.
fn edits(text: &str, target: &str, key: &str, value: &str, options: &str) -> Vec<ElementEdit> {
    let set = target.rsplit(' ').next().unwrap_or_default();
    text.lines()
        .filter_map(|line| {
            let (action, rest) = match line.split_once(" element ")? {
                ("add", rest) => (ElementAction::Add, rest),
                ("delete", rest) => (ElementAction::Delete, rest),
                _ => return None,
            };
            let (head, body) = rest.split_once(" { ")?;
            if head != target {
                return None;
            }
            let body = body.trim_end().strip_suffix('}')?.trim();
            let elements = body
                .split(", ")
                .map(|e| match e.split_once(" : ") {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (e.to_string(), None),
                })
                .collect();
            Some(ElementEdit {
                action,
                set: set.to_string(),
                key: key.to_string(),
                value: (value != "-").then(|| value.to_string()),
                options: if options == "interval" {
                    vec!["flags interval".into()]
                } else {
                    Vec::new()
                },
                elements,
            })
        })
        .collect()
}

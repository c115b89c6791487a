//! Docs that cannot rot: every ```` ```sh run ```` block of README.md and docs/*.md is run, line
//! by line, in a fresh sandbox, after writing the files the page gives in ```` ```LANG file=NAME ````
//! blocks before it (the walk-through's plumb.toml). A line whose comment starts with `fails`
//! must fail; every other line must succeed; and after the block the sandbox must hold nothing
//! (an example ends with its `down`). The course's commands (docs/course.md) are run by
//! tests/tour.rs, which runs the tour they are generated from.

mod common;

use common::*;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

struct Example {
    page: String,
    line: usize,
    files: Vec<(String, String)>,
    commands: Vec<String>,
}

/// The runnable blocks of one page, each with the files written before it on that page.
fn examples(page: &str, text: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut files: Vec<(String, String)> = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        let words: Vec<&str> = info.split_whitespace().collect();
        let body: Vec<&str> = lines
            .by_ref()
            .map(|(_, l)| l)
            .take_while(|l| !l.trim_start().starts_with("```"))
            .collect();
        if let Some(name) = words.iter().find_map(|w| w.strip_prefix("file=")) {
            files.retain(|(f, _)| f != name);
            files.push((name.to_string(), body.join("\n") + "\n"));
        } else if words.first() == Some(&"sh") && words.contains(&"run") {
            out.push(Example {
                page: page.to_string(),
                line: n + 1,
                files: files.clone(),
                commands: body
                    .iter()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .collect(),
            });
        }
    }
    out
}

fn all_examples() -> Vec<Example> {
    let mut pages = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(format!("{ROOT}/docs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
        .iter()
        .flat_map(|p| examples(p, &std::fs::read_to_string(format!("{ROOT}/{p}")).unwrap()))
        .collect()
}

/// A line's expectation: its comment (after two spaces and `#`) starting with "fails".
fn must_fail(command: &str) -> bool {
    command
        .split_once("  #")
        .or_else(|| command.split_once(" # "))
        .is_some_and(|(_, comment)| comment.trim_start().starts_with("fails"))
}

#[test]
fn runnable_blocks_are_found_with_their_files() {
    let found = all_examples();
    let at: Vec<String> = found.iter().map(|e| format!("{}:{}", e.page, e.line)).collect();
    assert!(found.len() >= 3, "the runnable examples went missing: {at:?}");
    let walk = found
        .iter()
        .find(|e| e.commands.iter().any(|c| c.starts_with("plumb down --dry-run")))
        .unwrap();
    assert_eq!(walk.page, "README.md");
    assert!(walk
        .files
        .iter()
        .any(|(name, text)| name == "plumb.toml" && text.contains("name = \"hello\"")));
    assert!(
        walk.commands.iter().any(|c| must_fail(c)),
        "the walk-through shows a failing ping"
    );
    assert!(!must_fail(
        "plumb up                                  # again: \"up to date\""
    ));
}

#[test]
#[cfg_attr(not(plumb_root), ignore = "needs root (kernel objects in a sandbox)")]
fn every_runnable_example_in_the_docs_runs_as_written() {
    for example in all_examples() {
        let sb = Sandbox::start().unwrap();
        for (name, text) in &example.files {
            sb.write(name, text);
        }
        std::fs::create_dir_all(sb.dir.join("bin")).unwrap();
        std::os::unix::fs::symlink(PLUMB, sb.dir.join("bin/plumb")).unwrap();
        for command in &example.commands {
            let out = sb.sh(&format!("export PATH={}/bin:$PATH\n{command}", sb.dir.display()));
            let failed = !out.status.success();
            assert_eq!(
                failed,
                must_fail(command),
                "{}:{}: `{command}` {}\nstdout: {}\nstderr: {}",
                example.page,
                example.line,
                if failed {
                    "failed"
                } else {
                    "succeeded, but its comment says it fails"
                },
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        sb.assert_clean();
    }
}

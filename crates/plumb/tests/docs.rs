//! The documentation generated from plumb itself is current: docs/commands.md's reference part
//! is what `plumb docs commands` prints from the command line's definitions, and
//! docs/course.md what `plumb docs course` prints from the tour's steps. After changing a
//! command or the course, `scripts/docs-generate` writes them again. (No root needed.)

use std::process::Command;

const PLUMB: &str = env!("CARGO_BIN_EXE_plumb");
const DOCS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs");

fn plumb_docs(part: &str) -> String {
    let out = Command::new(PLUMB).args(["docs", part]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn assert_current(file: &str, written: &str, generated: &str) {
    if written != generated {
        let line = written
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| written.lines().count().min(generated.lines().count()));
        panic!(
            "docs/{file} is stale (first difference at line {} of its generated part: {:?} instead of {:?}): run scripts/docs-generate",
            line + 1,
            written.lines().nth(line).unwrap_or("(end)"),
            generated.lines().nth(line).unwrap_or("(end)"),
        );
    }
}

#[test]
fn the_command_reference_is_generated_from_the_command_line() {
    let generated = plumb_docs("commands");
    let marker = generated.lines().next().unwrap();
    let file = std::fs::read_to_string(format!("{DOCS}/commands.md")).unwrap();
    let start = file
        .find(marker)
        .expect("docs/commands.md has the generated part's marker");
    assert_current("commands.md", &file[start..], &generated);
    // Every visible command is in it, the tour included; hidden ones are not.
    for command in [
        "up",
        "down",
        "tour",
        "chaos partition",
        "cluster status",
        "cni conflist",
    ] {
        assert!(generated.contains(&format!("`plumb {command}`")), "{command}");
    }
    for hidden in [
        "plumb supervise",
        "plumb docs",
        "plumb chaos-relay",
        "plumb help",
        "plumb chaos help",
    ] {
        assert!(!generated.contains(&format!("`{hidden}`")), "{hidden}");
    }
    assert!(generated.contains("| `--slides <DIR>` |"), "arguments are listed");
}

#[test]
fn the_course_chapter_is_generated_from_the_tours_steps() {
    let file = std::fs::read_to_string(format!("{DOCS}/course.md")).unwrap();
    assert_current("course.md", &file, &plumb_docs("course"));
}

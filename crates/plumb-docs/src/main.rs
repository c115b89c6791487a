//! `cargo run -p plumb-docs [-- OUT]`: builds the docs site into OUT (default target/site),
//! exit 1 naming every broken link or anchor.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let repo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let out = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo.join("target/site"));
    match plumb_docs::build(&repo, &out) {
        Ok(report) => {
            println!(
                "plumb-docs: {} pages and {} files in {}; {} links checked, none broken",
                report.pages.len(),
                report.files.len(),
                out.display(),
                report.links
            );
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("plumb-docs: {e}");
            }
            eprintln!(
                "plumb-docs: {} broken; fix the links (anchors are GitHub's heading ids)",
                errors.len()
            );
            ExitCode::FAILURE
        }
    }
}

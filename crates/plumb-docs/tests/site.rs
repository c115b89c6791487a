//! The repository's own docs build into a site with no broken link or anchor (this test is
//! the docs build `cargo test --workspace` runs in CI), every page of docs/SUMMARY.md is in
//! it with the table of contents, and nothing in it is fetched from elsewhere.

use std::fs;
use std::path::PathBuf;

#[test]
fn the_docs_build_into_a_site_with_no_broken_link() {
    let repo = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let out = std::env::temp_dir().join(format!("plumb-docs-site-{}", std::process::id()));
    let report = plumb_docs::build(&repo, &out).unwrap_or_else(|errors| panic!("broken links:\n{}", errors.join("\n")));
    let summary = fs::read_to_string(repo.join("docs/SUMMARY.md")).unwrap();
    for page in [
        "README.md",
        "docs/concepts.md",
        "docs/course.md",
        "docs/commands.md",
        "docs/stack-file.md",
        "docs/compose.md",
        "docs/cluster.md",
        "BENCHMARKS.md",
        "docs/architecture.md",
    ] {
        assert!(
            report.pages.iter().any(|p| p == page),
            "{page} is not in the site: {:?}",
            report.pages
        );
    }
    assert!(report.links > 50, "links were checked: {}", report.links);
    let index = fs::read_to_string(out.join("index.html")).unwrap();
    for title in [
        "The course: plumb tour",
        "Commands",
        "The stack file",
        "From Docker Compose to plumb",
        "Architecture",
    ] {
        assert!(
            summary.contains(title) && index.contains(title),
            "{title} in the table of contents"
        );
    }
    let course = fs::read_to_string(out.join("docs/course.html")).unwrap();
    assert!(
        course.contains("id=\"13-a-bridge-and-two-veth-cables\""),
        "the course's steps are headings"
    );
    assert!(course.contains("ip link add br0 type bridge"));
    let commands = fs::read_to_string(out.join("docs/commands.html")).unwrap();
    assert!(
        commands.contains("id=\"plumb-tour\""),
        "the generated reference is in the site"
    );
    // Plots are pages' images, copied into the site.
    assert!(report.files.iter().any(|f| f.ends_with(".svg")), "{:?}", report.files);
    for page in &report.pages {
        let html = page.trim_end_matches(".md").to_string() + ".html";
        let html = if page == "README.md" {
            "index.html".to_string()
        } else {
            html
        };
        let text = fs::read_to_string(out.join(&html)).unwrap();
        for external in ["<script", "<link", "src=\"http", "url(http", "@import"] {
            assert!(!text.contains(external), "{html} fetches something: {external}");
        }
    }
    fs::remove_dir_all(&out).unwrap();
}

//! The docs site: docs/SUMMARY.md lists the pages (mdBook's format: `- [Title](page.md)`,
//! paths relative to docs/); each is rendered with pulldown-cmark into one static HTML page with
//! the table of contents beside it, and every Markdown page they link to is rendered too. Every
//! link is checked while building: a relative link must name a file of the repository (which
//! is copied into the site: SVG plots, example files), a `#fragment` must name a heading of its
//! page (GitHub's ids: lower case, punctuation dropped, spaces as `-`, `-1`, `-2`... for
//! repeats). Any broken one fails the build, naming the page, line and target. The pages keep
//! their place in the repository (docs/concepts.md -> docs/concepts.html; README.md ->
//! index.html), so links that work on GitHub work on the site. No external asset: one inline
//! style sheet per page.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::fs;
use std::path::{Component, Path};

use pulldown_cmark::{html, CowStr, Event, HeadingLevel, Options, Parser, Tag, TagEnd};

/// What a build made.
#[derive(Debug)]
pub struct Report {
    pub pages: Vec<String>,
    pub files: Vec<String>,
    pub links: usize,
}

/// One entry of the table of contents.
#[derive(Debug, Clone)]
struct Entry {
    title: String,
    /// Repository-relative path of the Markdown page.
    page: String,
    depth: usize,
}

/// A page read and parsed once: its headings' ids and its links, each with its line.
struct Page {
    text: String,
    ids: BTreeSet<String>,
    links: Vec<(usize, String)>,
}

/// Builds the site of the repository at `repo` into `out`; the errors name every broken link.
pub fn build(repo: &Path, out: &Path) -> Result<Report, Vec<String>> {
    let summary_path = "docs/SUMMARY.md";
    let summary = fs::read_to_string(repo.join(summary_path))
        .map_err(|e| vec![format!("{summary_path}: cannot read it: {e}")])?;
    let (toc, mut errors) = table_of_contents(&summary, repo);
    let mut pages: BTreeMap<String, Page> = BTreeMap::new();
    let mut files: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = toc.iter().map(|e| e.page.clone()).collect();
    let mut links = 0;
    // Read every page reachable from the table of contents; check that each link's file exists.
    while let Some(page) = todo.pop() {
        if pages.contains_key(&page) {
            continue;
        }
        let text = match fs::read_to_string(repo.join(&page)) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{page}: cannot read it: {e}"));
                continue;
            }
        };
        let parsed = parse(text);
        for (line, target) in &parsed.links {
            links += 1;
            let Some((path, _)) = local(target) else { continue };
            if path.is_empty() {
                continue;
            }
            match resolve(&page, path) {
                None => errors.push(format!("{page}:{line}: link {target:?} leaves the repository")),
                Some(p) if !repo.join(&p).exists() => {
                    errors.push(format!("{page}:{line}: broken link {target:?}: there is no {p}"))
                }
                Some(p) if p.ends_with(".md") => todo.push(p),
                Some(p) if repo.join(&p).is_file() => {
                    files.insert(p);
                }
                Some(_) => {}
            }
        }
        pages.insert(page, parsed);
    }
    // Anchors, now that every page's headings are known.
    for (name, page) in &pages {
        for (line, target) in &page.links {
            let Some((path, Some(fragment))) = local(target) else {
                continue;
            };
            let target_page = if path.is_empty() {
                Some(name.clone())
            } else {
                resolve(name, path)
            };
            let Some(target_page) = target_page else { continue };
            if let Some(other) = pages.get(&target_page) {
                if !other.ids.contains(fragment) {
                    errors.push(format!(
                        "{name}:{line}: broken anchor {target:?}: {target_page} has no heading with id {fragment:?}"
                    ));
                }
            }
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let _ = fs::remove_dir_all(out);
    let write = |path: &Path, content: &[u8]| -> Result<(), Vec<String>> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| vec![format!("{}: {e}", dir.display())])?;
        }
        fs::write(path, content).map_err(|e| vec![format!("{}: {e}", path.display())])
    };
    for (name, page) in &pages {
        let html = render(name, page, &toc);
        write(&out.join(html_path(name)), html.as_bytes())?;
    }
    for file in &files {
        let content = fs::read(repo.join(file)).map_err(|e| vec![format!("{file}: {e}")])?;
        write(&out.join(file), &content)?;
    }
    Ok(Report {
        pages: pages.keys().cloned().collect(),
        files: files.into_iter().collect(),
        links,
    })
}

/// The entries of SUMMARY.md: `[Title](path)` lines, nested by indentation (two spaces).
fn table_of_contents(summary: &str, repo: &Path) -> (Vec<Entry>, Vec<String>) {
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for (n, line) in summary.lines().enumerate() {
        let indent = line.len() - line.trim_start().len();
        // Entries are list items (or mdBook's unnumbered `[Title](page)` lines); links in
        // prose are not.
        let item = line.trim_start().trim_start_matches(['-', '*']).trim_start();
        if !item.starts_with('[') {
            continue;
        }
        let Some(open) = line.find('[') else { continue };
        let Some(close) = line[open..].find("](").map(|i| open + i) else {
            continue;
        };
        let Some(end) = line[close..].find(')').map(|i| close + i) else {
            continue;
        };
        let title = &line[open + 1..close];
        let target = &line[close + 2..end];
        match resolve("docs/SUMMARY.md", target) {
            Some(page) if repo.join(&page).is_file() => entries.push(Entry {
                title: title.to_string(),
                page,
                depth: indent / 2,
            }),
            _ => errors.push(format!("docs/SUMMARY.md:{}: no page {target:?}", n + 1)),
        }
    }
    (entries, errors)
}

fn parse(text: String) -> Page {
    let mut ids = BTreeSet::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut links = Vec::new();
    let mut heading: Option<String> = None;
    let line_of = |offset: usize| text[..offset].matches('\n').count() + 1;
    for (event, range) in Parser::new_ext(&text, options()).into_offset_iter() {
        match event {
            Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
            Event::Text(t) | Event::Code(t) if heading.is_some() => heading.as_mut().unwrap().push_str(&t),
            Event::End(TagEnd::Heading(_)) => {
                let title = heading.take().unwrap_or_default();
                ids.insert(unique_id(&title, &mut seen));
            }
            Event::Start(Tag::Link { dest_url, .. }) | Event::Start(Tag::Image { dest_url, .. }) => {
                links.push((line_of(range.start), dest_url.to_string()));
            }
            _ => {}
        }
    }
    Page { text, ids, links }
}

fn options() -> Options {
    Options::ENABLE_TABLES | Options::ENABLE_STRIKETHROUGH | Options::ENABLE_FOOTNOTES
}

/// GitHub's id for a heading: lower case; letters, digits, `-` and `_` kept, spaces as `-`,
/// everything else dropped.
pub fn slug(title: &str) -> String {
    title
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn unique_id(title: &str, seen: &mut HashMap<String, usize>) -> String {
    let base = slug(title);
    let n = seen.entry(base.clone()).or_insert(0);
    let id = if *n == 0 { base.clone() } else { format!("{base}-{n}") };
    *n += 1;
    id
}

/// A link within the site: its path part (maybe empty) and fragment; None for a URL with a
/// scheme (https:, mailto:), which is not checked.
fn local(target: &str) -> Option<(&str, Option<&str>)> {
    let scheme = target.split_once(':').is_some_and(|(s, _)| {
        !s.is_empty()
            && !s.contains('/')
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '.' || c == '-')
    });
    if scheme || target.starts_with("//") {
        return None;
    }
    Some(match target.split_once('#') {
        Some((path, fragment)) => (path, Some(fragment)),
        None => (target, None),
    })
}

/// `target` (relative to `page`'s folder) as a repository-relative path; None if it leaves
/// the repository or is absolute.
fn resolve(page: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return None;
    }
    let mut parts: Vec<String> = Path::new(page)
        .parent()
        .map(|p| {
            p.components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for c in Path::new(target).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

/// Where a Markdown page goes in the site.
fn html_path(page: &str) -> String {
    if page == "README.md" {
        return "index.html".into();
    }
    format!("{}.html", page.trim_end_matches(".md"))
}

/// `to` (site path) as a link from the page at site path `from`.
fn relative(from: &str, to: &str) -> String {
    let depth = from.matches('/').count();
    format!("{}{to}", "../".repeat(depth))
}

fn render(name: &str, page: &Page, toc: &[Entry]) -> String {
    let here = html_path(name);
    let mut seen = HashMap::new();
    let mut heading: Option<(HeadingLevel, Vec<Event>)> = None;
    let mut events: Vec<Event> = Vec::new();
    for event in Parser::new_ext(&page.text, options()) {
        match event {
            Event::Start(Tag::Heading { level, .. }) => heading = Some((level, Vec::new())),
            Event::End(TagEnd::Heading(_)) => {
                let (level, inner) = heading.take().unwrap();
                let title: String = inner
                    .iter()
                    .filter_map(|e| match e {
                        Event::Text(t) | Event::Code(t) => Some(t.to_string()),
                        _ => None,
                    })
                    .collect();
                let id = unique_id(&title, &mut seen);
                let mut body = String::new();
                html::push_html(&mut body, inner.into_iter());
                events.push(Event::Html(CowStr::from(format!(
                    "<{level} id=\"{id}\"><a class=\"anchor\" href=\"#{id}\">{body}</a></{level}>\n"
                ))));
            }
            Event::Start(Tag::Link {
                link_type,
                dest_url,
                title,
                id,
            }) => {
                let link = Tag::Link {
                    link_type,
                    dest_url: CowStr::from(site_link(name, &dest_url)),
                    title,
                    id,
                };
                push(&mut heading, &mut events, Event::Start(link));
            }
            Event::Start(Tag::Image {
                link_type,
                dest_url,
                title,
                id,
            }) => {
                let image = Tag::Image {
                    link_type,
                    dest_url: CowStr::from(site_link(name, &dest_url)),
                    title,
                    id,
                };
                push(&mut heading, &mut events, Event::Start(image));
            }
            other => push(&mut heading, &mut events, other),
        }
    }
    let mut body = String::new();
    html::push_html(&mut body, events.into_iter());
    let mut nav = String::from("<ul>");
    for e in toc {
        let target = html_path(&e.page);
        let class = if target == here { " class=\"here\"" } else { "" };
        let _ = write!(
            nav,
            "<li style=\"margin-left:{}em\"><a{class} href=\"{}\">{}</a></li>",
            e.depth,
            relative(&here, &target),
            escape(&e.title)
        );
    }
    nav.push_str("</ul>");
    let title = toc
        .iter()
        .find(|e| e.page == name)
        .map_or(name.to_string(), |e| e.title.clone());
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{} · plumb</title><style>{CSS}</style></head>\n<body><nav><p class=\"brand\"><a href=\"{}\">plumb</a></p>{nav}</nav>\n<main>\n{body}</main></body></html>\n",
        escape(&title),
        relative(&here, "index.html"),
    )
}

fn push<'a>(heading: &mut Option<(HeadingLevel, Vec<Event<'a>>)>, events: &mut Vec<Event<'a>>, event: Event<'a>) {
    match heading {
        Some((_, inner)) => inner.push(event),
        None => events.push(event),
    }
}

/// A link as the site has it: `x.md` pages become `x.html` (README.md: index.html); other
/// files keep their path (they are copied); URLs stay.
fn site_link(page: &str, target: &str) -> String {
    let Some((path, fragment)) = local(target) else {
        return target.to_string();
    };
    let fragment = fragment.map(|f| format!("#{f}")).unwrap_or_default();
    if path.is_empty() {
        return fragment;
    }
    let Some(resolved) = resolve(page, path) else {
        return target.to_string();
    };
    let site_target = if resolved.ends_with(".md") {
        html_path(&resolved)
    } else {
        resolved
    };
    format!("{}{fragment}", relative(&html_path(page), &site_target))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const CSS: &str = "body{margin:0;display:flex;font:16px/1.5 system-ui,sans-serif;color:#222}\
nav{width:16em;flex:none;padding:1em;background:#f4f4f4;min-height:100vh;box-sizing:border-box}\
nav ul{list-style:none;padding:0;margin:0}nav li{margin:.2em 0}nav a{color:#333;text-decoration:none}\
nav a.here{font-weight:bold;color:#0550ae}.brand{font-size:1.4em;font-weight:bold;margin-top:0}\
main{max-width:60em;padding:1em 2em;overflow-x:auto}a{color:#0550ae}a.anchor{color:inherit;text-decoration:none}\
pre{background:#f6f8fa;padding:.8em;overflow-x:auto;border-radius:4px}code{font-size:.9em}\
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ddd;padding:.3em .6em;vertical-align:top}\
img{max-width:100%}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_githubs() {
        assert_eq!(slug("`plumb up`"), "plumb-up");
        assert_eq!(
            slug("1.3 A bridge and two veth cables"),
            "13-a-bridge-and-two-veth-cables"
        );
        assert_eq!(
            slug("What's inside? (The \"before\" picture)"),
            "whats-inside-the-before-picture"
        );
        let mut seen = HashMap::new();
        assert_eq!(unique_id("Usage", &mut seen), "usage");
        assert_eq!(unique_id("Usage", &mut seen), "usage-1");
    }

    #[test]
    fn links_resolve_within_the_repository() {
        assert_eq!(resolve("docs/a.md", "b.md").as_deref(), Some("docs/b.md"));
        assert_eq!(
            resolve("docs/a.md", "../examples/x.toml").as_deref(),
            Some("examples/x.toml")
        );
        assert_eq!(resolve("README.md", "../etc/passwd"), None);
        assert_eq!(local("https://example.org/x#y"), None);
        assert_eq!(local("b.md#y"), Some(("b.md", Some("y"))));
        assert_eq!(site_link("docs/a.md", "../README.md#x"), "../index.html#x");
        assert_eq!(site_link("README.md", "docs/a.md"), "docs/a.html");
        assert_eq!(site_link("docs/a.md", "bench/p.svg"), "../docs/bench/p.svg");
    }

    fn repo(files: &[(&str, &str)]) -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "plumb-docs-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&dir);
        for (name, content) in files {
            let path = dir.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, content).unwrap();
        }
        dir
    }

    #[test]
    fn broken_links_and_anchors_fail_the_build_naming_page_and_line() {
        let dir = repo(&[
            (
                "docs/SUMMARY.md",
                "# Summary\n\n- [Intro](../README.md)\n- [A](a.md)\n- [Gone](gone.md)\n",
            ),
            (
                "README.md",
                "# Hi\n\nSee [a](docs/a.md#usage) and [b](docs/a.md#nope).\n",
            ),
            (
                "docs/a.md",
                "# A\n\n## Usage\n\n[missing](missing.md), [plot](p.svg), [web](https://x.org/#q)\n",
            ),
        ]);
        let errors = build(&dir, &dir.join("site")).unwrap_err();
        let all = errors.join("\n");
        assert!(all.contains("docs/SUMMARY.md:5: no page \"gone.md\""), "{all}");
        assert!(
            all.contains("docs/a.md:5: broken link \"missing.md\": there is no docs/missing.md"),
            "{all}"
        );
        assert!(all.contains("docs/a.md:5: broken link \"p.svg\""), "{all}");
        assert!(all.contains("README.md:3: broken anchor \"docs/a.md#nope\""), "{all}");
        assert!(!all.contains("#usage"), "a good anchor is not an error: {all}");
        assert_eq!(errors.len(), 4, "{all}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_good_site_is_written_with_pages_files_and_rewritten_links() {
        let dir = repo(&[
            (
                "docs/SUMMARY.md",
                "Prose with a [link](a.md) is not an entry.\n\n- [Intro](../README.md)\n- [A](a.md)\n",
            ),
            ("README.md", "# Hi\n\nSee [usage](docs/a.md#usage-1).\n"),
            (
                "docs/a.md",
                "# A\n\n## Usage\n\n## Usage\n\n![plot](p.svg) [back](../README.md#hi) [b](b.md)\n",
            ),
            ("docs/b.md", "# B, linked but not in the summary\n"),
            ("docs/p.svg", "<svg/>"),
        ]);
        let out = dir.join("site");
        let report = build(&dir, &out).unwrap();
        assert_eq!(report.pages, ["README.md", "docs/a.md", "docs/b.md"]);
        assert_eq!(report.files, ["docs/p.svg"]);
        let index = fs::read_to_string(out.join("index.html")).unwrap();
        assert!(index.contains("href=\"docs/a.html#usage-1\""), "{index}");
        let a = fs::read_to_string(out.join("docs/a.html")).unwrap();
        assert!(a.contains("<h2 id=\"usage-1\">"), "{a}");
        assert!(
            a.contains("src=\"../docs/p.svg\"") && a.contains("href=\"../index.html#hi\""),
            "{a}"
        );
        assert!(a.contains("class=\"here\" href=\"../docs/a.html\""), "{a}");
        assert_eq!(
            a.matches("<li").count(),
            2,
            "the table of contents has the two list entries: {a}"
        );
        assert!(out.join("docs/b.html").is_file() && out.join("docs/p.svg").is_file());
        fs::remove_dir_all(&dir).unwrap();
    }
}

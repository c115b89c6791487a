//! Input errors that point at the stack file: file, line, column, field, what is wrong and
//! what to do about it. Validation collects all of them so a user fixes a file in one pass.
//! Each keeps the lines it is about, so it can be shown with the offending text underlined.

use std::fmt;
use std::ops::Range;

use annotate_snippets::{AnnotationKind, Group, Level, Origin, Renderer, Snippet};

/// One problem in a stack file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when the problem has no place in the file (for example a missing file).
    pub line: usize,
    /// 1-based, counted in characters (as editors and the rendered report count them).
    pub column: usize,
    /// Dotted path of the offending field, e.g. `services.web.ports[1]`.
    pub field: String,
    pub message: String,
    pub hint: String,
    /// The lines the problem is on, to underline it; `None` when it has no place in the file.
    pub excerpt: Option<Excerpt>,
}

/// The whole lines of a file that a problem spans, and the part of them at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excerpt {
    /// 1-based number of the excerpt's first line in the file.
    pub first_line: usize,
    pub text: String,
    /// Byte range of the offending text, relative to `text`.
    pub span: Range<usize>,
}

/// How a report is drawn: plain text, or with terminal colours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Coloured,
}

/// An excerpt spanning more lines is cut to this many, so one error cannot flood a terminal.
const MAX_EXCERPT_LINES: usize = 6;

impl Diagnostic {
    /// A report like rustc's: the message, `--> file:line:column`, the line with the
    /// offending text underlined, and `= hint: ...`.
    pub fn render(&self, style: Style) -> String {
        renderer(style).render(&[self.group()])
    }

    fn group(&self) -> Group<'_> {
        let title = if self.field.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        };
        let mut group = Level::ERROR.primary_title(title).element(match &self.excerpt {
            Some(excerpt) => Snippet::source(excerpt.text.as_str())
                .line_start(excerpt.first_line)
                .path(self.file.as_str())
                .annotation(AnnotationKind::Primary.span(excerpt.span.clone()))
                .into(),
            None => annotate_snippets::Element::from(Origin::path(self.file.as_str())),
        });
        if !self.hint.is_empty() {
            group = group.element(Level::HELP.with_name(Some("hint")).message(self.hint.as_str()));
        }
        group
    }
}

fn renderer(style: Style) -> Renderer {
    match style {
        Style::Plain => Renderer::plain(),
        Style::Coloured => Renderer::styled(),
    }
}

/// The one-line form, `file:line:column: field: message` and an indented hint: for logs and
/// tests. [`Diagnostic::render`] draws the report a person reads.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        } else {
            write!(f, "{}: ", self.file)?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        write!(f, "{}", self.message)?;
        if !self.hint.is_empty() {
            write!(f, "\n  hint: {}", self.hint)?;
        }
        Ok(())
    }
}

/// All problems found in one stack file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Every problem's report, a blank line between two.
    pub fn render(&self, style: Style) -> String {
        let renderer = renderer(style);
        self.0
            .iter()
            .map(|d| renderer.render(&[d.group()]))
            .collect::<Vec<_>>()
            .join("\n\n")
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// Turns byte offsets of one source text into diagnostics with lines and columns.
pub struct SourceMap<'a> {
    pub file: &'a str,
    pub text: &'a str,
}

impl SourceMap<'_> {
    /// 1-based line and column (in characters) of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let offset = self.floor(offset);
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    /// A diagnostic about `span` (a byte range of the text), or about the file as a whole.
    pub fn error(
        &self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Diagnostic {
        let (line, column) = span.as_ref().map_or((0, 0), |s| self.position(s.start));
        Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            field: field.into(),
            message: message.into(),
            hint: hint.into(),
            excerpt: span.map(|s| self.excerpt(s)),
        }
    }

    /// The whole lines around `span`, at most [`MAX_EXCERPT_LINES`] of them.
    fn excerpt(&self, span: Range<usize>) -> Excerpt {
        let start = self.floor(span.start);
        let end = self.floor(span.end.max(start));
        let first = self.text[..start].rfind('\n').map_or(0, |i| i + 1);
        let mut last = self.text[end..].find('\n').map_or(self.text.len(), |i| end + i);
        if let Some((i, _)) = self.text[first..last].match_indices('\n').nth(MAX_EXCERPT_LINES - 1) {
            last = first + i;
        }
        // A file with CRLF line ends: the '\r' is no part of the line to show.
        if self.text[first..last].ends_with('\r') && start < last {
            last -= 1;
        }
        Excerpt {
            first_line: self.position(start).0,
            text: self.text[first..last].to_string(),
            span: start - first..end.min(last) - first,
        }
    }

    /// The nearest character boundary at or before `offset`, inside the text.
    fn floor(&self, offset: usize) -> usize {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let map = SourceMap {
            file: "f.toml",
            text: "a = 1\nbb = 2\né = 3\n",
        };
        assert_eq!(map.position(0), (1, 1));
        assert_eq!(map.position(6), (2, 1));
        assert_eq!(map.position(9), (2, 4));
        // 'é' is two bytes but one column.
        assert_eq!(map.position(16), (3, 3));
        assert_eq!(map.position(1000), (4, 1));
    }

    #[test]
    fn display_names_file_line_field_and_hint() {
        let map = SourceMap {
            file: "plumb.toml",
            text: "x\ny = 1",
        };
        let d = map.error(Some(2..3), "y", "is wrong", "fix it");
        assert_eq!(d.to_string(), "plumb.toml:2:1: y: is wrong\n  hint: fix it");
    }

    #[test]
    fn a_report_underlines_the_offending_text() {
        let map = SourceMap {
            file: "plumb.toml",
            text: "name = \"s\"\n[networks.n]\nsubnet = \"10.0.0.0/33\"\n",
        };
        let d = map.error(Some(33..46), "networks.n.subnet", "is not valid", "fix it");
        let report = d.render(Style::Plain);
        let expected = [
            "error: networks.n.subnet: is not valid",
            " --> plumb.toml:3:10",
            "  |",
            "3 | subnet = \"10.0.0.0/33\"",
            "  |          ^^^^^^^^^^^^^",
            "  |",
            "  = hint: fix it",
        ];
        assert_eq!(report, expected.join("\n"));
        assert!(d.render(Style::Coloured).contains('\u{1b}'));
    }

    #[test]
    fn a_problem_without_a_place_names_the_file() {
        let map = SourceMap {
            file: "plumb.toml",
            text: "",
        };
        let report = Diagnostics(vec![map.error(None, "", "is missing", "create it")]).render(Style::Plain);
        assert!(
            report.contains("error: is missing") && report.contains("plumb.toml"),
            "{report}"
        );
        assert!(report.contains("hint: create it"), "{report}");
    }

    #[test]
    fn excerpts_keep_whole_lines_and_stay_short() {
        let text = format!("a = [\n{}]\nb = 1\n", "  1,\n".repeat(20));
        let map = SourceMap { file: "f", text: &text };
        let e = map.excerpt(4..text.find(']').unwrap() + 1);
        assert_eq!(e.first_line, 1);
        assert_eq!(e.text.lines().count(), MAX_EXCERPT_LINES);
        assert_eq!(e.span, 4..e.text.len());
        let map = SourceMap {
            file: "f",
            text: "a = 1\r\nb = 2\r\n",
        };
        assert_eq!(map.excerpt(7..8).text, "b = 2");
        // Out-of-range and mid-character spans are clamped, never a panic.
        let map = SourceMap { file: "f", text: "é" };
        let e = map.excerpt(1..50);
        assert_eq!((e.text.as_str(), e.span), ("é", 0..2));
    }
}

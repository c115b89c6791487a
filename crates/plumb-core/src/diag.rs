//! Input errors that point at the stack file: file, line, column, field, what is wrong and
//! what to do about it. Validation collects all of them so a user fixes a file in one pass.

use std::fmt;
use std::ops::Range;

/// One problem in a stack file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    /// 1-based; 0 when the problem has no place in the file (for example a missing file).
    pub line: usize,
    pub column: usize,
    /// Dotted path of the offending field, e.g. `services.web.ports[1]`.
    pub field: String,
    pub message: String,
    pub hint: String,
}

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
    /// 1-based line and column of a byte offset.
    pub fn position(&self, offset: usize) -> (usize, usize) {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        (line, column)
    }

    pub fn error(
        &self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Diagnostic {
        let (line, column) = span.map_or((0, 0), |s| self.position(s.start));
        Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            field: field.into(),
            message: message.into(),
            hint: hint.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based() {
        let map = SourceMap {
            file: "f.toml",
            text: "a = 1\nbb = 2\n",
        };
        assert_eq!(map.position(0), (1, 1));
        assert_eq!(map.position(6), (2, 1));
        assert_eq!(map.position(9), (2, 4));
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
}

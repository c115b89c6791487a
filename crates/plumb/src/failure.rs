//! What a command reports when it fails: a message, a hint saying what to do, an exit code.

use std::fmt;
use std::io::IsTerminal;

use plumb_core::diag::Style;
use plumb_core::Diagnostics;

#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub hint: Option<String>,
    pub code: i32,
}

pub type Result<T> = std::result::Result<T, Failure>;

impl Failure {
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            message: message.into(),
            hint: None,
            code: 1,
        }
    }

    /// A failure whose command has already said what went wrong: only the exit code.
    pub fn silent(code: i32) -> Self {
        Failure::new("").code(code)
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub fn code(mut self, code: i32) -> Self {
        self.code = code;
        self
    }

    /// The same failure as the engine's error (for work the binary does inside an engine
    /// call).
    pub fn into_engine(self) -> plumb_engine::Error {
        let mut e = plumb_engine::Error::new(self.message);
        e.hint = self.hint;
        e.input = self.code == 2;
        e
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// Input errors exit with 2, so scripts can tell them from kernel failures (1). They are
/// drawn like rustc's, the offending text underlined, in colour only on a terminal.
impl From<Diagnostics> for Failure {
    fn from(d: Diagnostics) -> Self {
        Failure::new(d.render(stderr_style())).code(2)
    }
}

/// Failures go to stderr: colours only when it is a terminal and NO_COLOR is not set.
fn stderr_style() -> Style {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    if std::io::stderr().is_terminal() && !no_color {
        Style::Coloured
    } else {
        Style::Plain
    }
}

impl From<plumb_engine::Error> for Failure {
    fn from(e: plumb_engine::Error) -> Self {
        if let Some(d) = e.diagnostics {
            return Failure::from(d);
        }
        let f = Failure::new(e.message).code(if e.input { 2 } else { 1 });
        match e.hint {
            Some(h) => f.hint(h),
            None => f,
        }
    }
}

impl From<plumb_core::kernel::KernelError> for Failure {
    fn from(e: plumb_core::kernel::KernelError) -> Self {
        Failure::from(plumb_engine::Error::from(e))
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::new(e.to_string())
    }
}

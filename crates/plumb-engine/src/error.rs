//! The engine's error: what failed, and what the user can do about it.

use std::fmt;

use plumb_core::kernel::KernelError;
use plumb_core::Diagnostics;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub message: String,
    pub hint: Option<String>,
    /// The input's fault (the stack file, a name asked for), not the machine's: the caller
    /// exits 2. With `diagnostics` the problems point into the stack file.
    pub input: bool,
    pub diagnostics: Option<Diagnostics>,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            hint: None,
            input: false,
            diagnostics: None,
        }
    }

    /// An error in what the caller asked for (exit 2).
    pub fn input(message: impl Into<String>) -> Self {
        Error {
            input: true,
            ..Error::new(message)
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<KernelError> for Error {
    fn from(e: KernelError) -> Self {
        let hint = match e.errno {
            Some(1) | Some(13) => Some("plumb needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN); run it with sudo"),
            Some(17) => {
                Some("an object with that name already exists; `plumb down` the stack, or remove the object by hand")
            }
            _ => None,
        };
        let error = Error::new(e.to_string());
        match hint {
            Some(h) => error.hint(h),
            None => error,
        }
    }
}

impl From<Diagnostics> for Error {
    fn from(d: Diagnostics) -> Self {
        Error {
            input: true,
            diagnostics: Some(d.clone()),
            ..Error::new(d.render(plumb_core::diag::Style::Plain))
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::new(e.to_string())
    }
}

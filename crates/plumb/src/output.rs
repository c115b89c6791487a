//! What commands print: plain-text tables for people (`--json` output is serde's), and what
//! happens when the reader of that output goes away (`plumb ps | head -1`).

use nix::sys::signal::{signal, SigHandler, Signal};

/// What a closed stdout does to this process. Rust ignores SIGPIPE, so a write to a pipe
/// whose reader has gone fails with EPIPE, and `println!` panics on that failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClosedPipe {
    /// End quietly, killed by SIGPIPE as `ls | head -1` is: for commands that only report.
    EndsTheCommand,
    /// Keep going: a command that changes the kernel or runs processes must not stop halfway
    /// because its reader left, and a pipe to a child (nft's stdin, a probe) that closes must
    /// be an error it reports, not its death. Such commands print with [`say!`].
    IsIgnored,
}

/// Sets what a closed pipe does to this process; call it first thing in `main`, before any
/// thread starts (the disposition is process-wide; children start with the default anyway).
pub fn on_closed_pipe(choice: ClosedPipe) {
    let handler = match choice {
        ClosedPipe::EndsTheCommand => SigHandler::SigDfl,
        ClosedPipe::IsIgnored => SigHandler::SigIgn,
    };
    // SAFETY: SIG_DFL and SIG_IGN run no code of ours in signal context.
    let _ = unsafe { signal(Signal::SIGPIPE, handler) };
}

/// `println!` that never panics: when the reader has gone, the line is dropped and the
/// command goes on with its work (see [`ClosedPipe::IsIgnored`]).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}
pub(crate) use say;

/// "1 network", "2 networks", "3 processes".
pub fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}{}", if what.ends_with('s') { "es" } else { "s" })
    }
}

/// Left-aligned columns separated by two spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(headers.to_vec());
    for row in rows {
        out += &line(row.iter().map(String::as_str).collect());
    }
    out
}

pub fn print_json(value: &impl serde::Serialize) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => say!("{text}"),
        Err(e) => eprintln!("plumb: cannot encode JSON: {e}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_align() {
        let t = super::table(&["A", "LONGER"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    LONGER\nxyz  1\n");
    }

    #[test]
    fn counts_are_plural_unless_one() {
        assert_eq!(super::count(1, "network"), "1 network");
        assert_eq!(super::count(0, "container"), "0 containers");
        assert_eq!(super::count(3, "process"), "3 processes");
    }
}

//! What the commands print: output on stdout that stops quietly when its reader goes away, and
//! error chains with each cause once.
//!
//! Commands write their output with [`outln!`] / [`out!`], which return an error instead of
//! panicking the way `println!` does on a closed pipe (`tollgate replay S | head -n 3`). When
//! the reader is gone ([`std::io::ErrorKind::BrokenPipe`]) the command stops without a message
//! and exits with [`BROKEN_PIPE_EXIT`], the status a shell shows for a process killed by SIGPIPE
//! (as `cat` or `grep` would be): the output was cut short, so it is not a success. Any other
//! write error (a full disk behind a redirection) is reported like every other error.

use std::fmt;
use std::io::{self, Write};

/// Exit status when stdout's reader went away: 128 + SIGPIPE (13).
pub const BROKEN_PIPE_EXIT: u8 = 141;

/// Writing to standard output failed.
#[derive(Debug, thiserror::Error)]
#[error("writing to standard output")]
pub struct StdoutError(#[source] pub io::Error);

impl StdoutError {
    /// Whether the reader went away (a closed pipe): stop quietly.
    pub fn is_broken_pipe(&self) -> bool {
        self.0.kind() == io::ErrorKind::BrokenPipe
    }
}

/// Writes formatted output to stdout (locked, so a line is never interleaved).
pub fn write_stdout(args: fmt::Arguments<'_>) -> Result<(), StdoutError> {
    let mut out = io::stdout().lock();
    out.write_fmt(args).map_err(StdoutError)
}

/// Writes to stderr, ignoring failures: a diagnostic that cannot be shown must not turn into a
/// panic or hide the exit status.
pub fn write_stderr(args: fmt::Arguments<'_>) {
    let _ = io::stderr().lock().write_fmt(args);
}

/// `print!` that returns `Result<(), StdoutError>` instead of panicking on a closed pipe.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

/// `println!` that returns `Result<(), StdoutError>` instead of panicking on a closed pipe.
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` that never panics.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::write_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// An error and its causes, `: `-separated, each cause once: a cause whose text the message
/// already carries (`cannot read X: No such file or directory (os error 2)` over the same
/// `io::Error`) is not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    join_chain(std::iter::successors(Some(e), |e| e.source()))
}

/// [`error_chain`] for an `anyhow::Error` (its context messages, then the causes).
pub fn anyhow_chain(e: &anyhow::Error) -> String {
    join_chain(e.chain().map(|c| c as &(dyn std::error::Error + 'static)))
}

fn join_chain<'a>(chain: impl Iterator<Item = &'a (dyn std::error::Error + 'static)>) -> String {
    let mut out = String::new();
    for cause in chain {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Whether `e` is (or was caused by) stdout's reader going away.
pub fn is_broken_stdout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<StdoutError>()
            .is_some_and(StdoutError::is_broken_pipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read policy file /p.yaml: {0}")]
    struct InlineAndSource(#[source] io::Error);

    fn enoent() -> io::Error {
        io::Error::from_raw_os_error(libc::ENOENT)
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let e = InlineAndSource(enoent());
        let text = error_chain(&e);
        assert_eq!(text.matches("os error 2").count(), 1, "{text}");
        assert!(
            text.starts_with("cannot read policy file /p.yaml: "),
            "{text}"
        );

        let a = anyhow::Error::new(InlineAndSource(enoent())).context("loading the policy");
        let text = anyhow_chain(&a);
        assert_eq!(text.matches("os error 2").count(), 1, "{text}");
        assert!(
            text.starts_with("loading the policy: cannot read"),
            "{text}"
        );
    }

    #[test]
    fn distinct_causes_are_all_kept() {
        let a = anyhow::Error::new(enoent())
            .context("reading /x")
            .context("preparing the CA");
        assert_eq!(
            anyhow_chain(&a),
            format!("preparing the CA: reading /x: {}", enoent())
        );
    }

    #[test]
    fn only_stdout_broken_pipes_are_quiet() {
        let pipe = || io::Error::from(io::ErrorKind::BrokenPipe);
        assert!(is_broken_stdout(
            &anyhow::Error::new(StdoutError(pipe())).context("printing")
        ));
        // A peer closing a socket is an error worth reporting.
        assert!(!is_broken_stdout(&anyhow::Error::new(pipe())));
        assert!(!is_broken_stdout(&anyhow::Error::new(StdoutError(
            io::Error::from_raw_os_error(libc::ENOSPC)
        ))));
    }
}

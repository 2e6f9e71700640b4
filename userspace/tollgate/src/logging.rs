//! The log: `tracing` events on stderr, as text (the default) or JSON lines
//! (`--log-format json`), filtered by `RUST_LOG` (default `info` for `tollgate run`, `warn` for
//! the other commands).
//!
//! Text is coloured only when stderr is a terminal (and `NO_COLOR` is not set), so a log
//! redirected to a file or a pipe carries no ANSI escapes. JSON is one object per line with
//! `timestamp`, `level`, `target` and `fields` (the message is `fields.message`), as
//! tracing-subscriber's JSON format writes it. Records of the `log` crate (tollgate-bpf, aya)
//! reach the same output.

use std::io::IsTerminal;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured only on a terminal).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether text logs should carry ANSI colours: only on a terminal, and never with `NO_COLOR`.
fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Installs the subscriber for the process (once; later calls do nothing).
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(colour(
                std::io::stderr().is_terminal(),
                std::env::var_os("NO_COLOR").as_deref(),
            ))
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(!colour(false, None));
        assert!(!colour(true, Some("1".as_ref())));
        // An empty NO_COLOR does not count (no-color.org).
        assert!(colour(true, Some("".as_ref())));
    }
}

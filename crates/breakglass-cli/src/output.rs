//! Standard output for every command, in one place.
//!
//! Rust's `println!` panics when the reader has gone (`breakglass runs
//! list | head -1`: EPIPE, since Rust ignores SIGPIPE). Every command
//! writes through [`outln!`] / [`out!`] instead, which return a
//! [`StdoutClosed`] error; `main` turns that error into a quiet exit with
//! [`CLOSED_EXIT`] (128 + SIGPIPE, what a shell shows for a tool that
//! SIGPIPE ended), with no message, as `cat` or `grep` end.

use std::io::Write;

/// The exit code when standard output was closed early: 141 = 128 +
/// SIGPIPE, so `set -o pipefail` scripts see what other Unix tools give.
pub const CLOSED_EXIT: u8 = 141;

/// Standard output could not be written (the reader went away).
#[derive(Debug)]
pub struct StdoutClosed(pub std::io::Error);

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "writing to standard output: {}", self.0)
    }
}

impl std::error::Error for StdoutClosed {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl From<std::io::Error> for StdoutClosed {
    fn from(err: std::io::Error) -> Self {
        Self(err)
    }
}

/// Writes `args` to standard output (and a newline when `newline`).
pub fn write(args: std::fmt::Arguments<'_>, newline: bool) -> Result<(), StdoutClosed> {
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)?;
    if newline {
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Whether `err` says the reader of standard output went away: the
/// command then ends quietly.
pub fn is_closed_stdout(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<StdoutClosed>()
            .is_some_and(|closed| closed.0.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `println!` that returns `Err(StdoutClosed)` instead of panicking.
macro_rules! outln {
    () => {
        $crate::output::write(format_args!(""), true)
    };
    ($($arg:tt)*) => {
        $crate::output::write(format_args!($($arg)*), true)
    };
}

/// `print!` that returns `Err(StdoutClosed)` instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write(format_args!($($arg)*), false)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_closed_stdout_ends_quietly() {
        let closed = anyhow::Error::new(StdoutClosed(std::io::ErrorKind::BrokenPipe.into()))
            .context("printing the table");
        assert!(is_closed_stdout(&closed));
        // A broken pipe elsewhere (a storage socket) is a real error.
        let other = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(!is_closed_stdout(&other));
        let full = anyhow::Error::new(StdoutClosed(std::io::Error::other("disk full")));
        assert!(!is_closed_stdout(&full));
    }
}

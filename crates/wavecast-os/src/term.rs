//! Whether output may carry colours and other escape codes.
//!
//! Only when it goes to a terminal and the user has not set `NO_COLOR` (no-color.org): logs
//! redirected to a file or a journal, and output piped into another program, stay plain text.

use std::io::IsTerminal as _;

fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

/// Whether standard output may carry escape codes.
pub fn stdout_color() -> bool {
    !no_color() && std::io::stdout().is_terminal()
}

/// Whether standard error (where logs go) may carry escape codes.
pub fn stderr_color() -> bool {
    !no_color() && std::io::stderr().is_terminal()
}

//! Human output: colour only on a terminal (and never with `NO_COLOR`), via
//! anstream, which strips styles when the stream is not a terminal.

use anstyle::{AnsiColor, Style};

const RED: Style = AnsiColor::Red.on_default().bold();
const GREEN: Style = AnsiColor::Green.on_default().bold();
const YELLOW: Style = AnsiColor::Yellow.on_default();
const DIM: Style = Style::new().dimmed();

/// Prints an error line to stderr.
pub(crate) fn error(message: &str) {
    anstream::eprintln!("{RED}error{RED:#}: {message}");
}

/// Prints a warning line to stderr.
pub(crate) fn warn(message: &str) {
    anstream::eprintln!("{YELLOW}warning{YELLOW:#}: {message}");
}

/// `ok` in green.
pub(crate) fn ok() -> String {
    format!("{GREEN}ok{GREEN:#}")
}

/// `failed` in red.
pub(crate) fn failed() -> String {
    format!("{RED}failed{RED:#}")
}

/// `skipped` in yellow.
pub(crate) fn skipped() -> String {
    format!("{YELLOW}skipped{YELLOW:#}")
}

/// Dimmed text.
pub(crate) fn dim(text: &str) -> String {
    format!("{DIM}{text}{DIM:#}")
}

/// Prints a line to stdout.
pub(crate) fn line(text: &str) {
    anstream::println!("{text}");
}

/// Prints a JSON value on stdout (for `--json`).
pub(crate) fn json(value: &serde_json::Value) {
    println!("{value}");
}

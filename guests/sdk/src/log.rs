//! The job log.
//!
//! Every line is masked by the host before it is stored or shown, so a
//! secret placeholder or a [marked](crate::mask::mark) value never shows up
//! in clear. Writing to stdout or stderr also ends up in the job log, but
//! without a level.

use crate::bindings::wrun::recipe::log::{Level, log};

/// Appends a `trace` line to the job log.
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Appends a `debug` line to the job log.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Appends an `info` line to the job log.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Appends a `warn` line to the job log.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Appends an `error` line to the job log.
pub fn error(message: &str) {
    log(Level::Error, message);
}

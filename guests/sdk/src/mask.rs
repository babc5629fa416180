//! Marking values the step computed as sensitive.

/// Marks `value` as sensitive for the rest of the job.
///
/// Use it for credentials the step obtained itself, such as an access token
/// returned by a token endpoint: from now on the host masks the value in
/// logs, outputs, errors and history. Values shorter than four bytes are
/// ignored by the host, since masking them would mangle ordinary text.
///
/// ```no_run
/// let token = String::from("gho_example_token");
/// wrun_sdk::mask::mark(&token);
/// wrun_sdk::log::info(&format!("got token {token}")); // Stored masked.
/// ```
pub fn mark(value: &str) {
    crate::bindings::wrun::recipe::mask::mark(value);
}

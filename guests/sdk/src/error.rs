//! The one error type a step returns.

use core::fmt;

use crate::bindings::wrun::recipe::secrets::SecretError;

/// An error a step returns from an action, or gets from the SDK.
///
/// It is a message, plus the HTTP status when it came from
/// [`Response::error_for_status`](crate::http::Response::error_for_status).
/// When an action returns it, the host records the message as the step's
/// `failed` reason (masked like everything else the guest says).
///
/// Every SDK error converts into it, so `?` works throughout an action:
///
/// ```no_run
/// use wrun_sdk::{Error, http, properties};
///
/// fn ping() -> Result<u16, Error> {
///     let base = properties::require("api")?;
///     let response = http::Request::get(&format!("{base}/ping")).send()?;
///     if response.status() != 204 {
///         return Err(Error::msg(format_args!("unexpected status {}", response.status())));
///     }
///     Ok(response.status())
/// }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Error {
    message: String,
    status: Option<u16>,
}

impl Error {
    /// Creates an error from anything printable.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
            status: None,
        }
    }

    /// Creates an error for an HTTP response with an error status.
    pub(crate) fn with_status(status: u16, message: String) -> Self {
        Self {
            message,
            status: Some(status),
        }
    }

    /// The error's message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The HTTP status, if the error came from an error response.
    pub fn http_status(&self) -> Option<u16> {
        self.status
    }

    /// Prefixes the message with some context, as in `context: message`.
    #[must_use]
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The message is all there is to show; guests never hold secret
        // values, and the host masks placeholders wherever they turn up.
        fmt::Debug::fmt(&self.message, f)
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(error: serde_json::Error) -> Self {
        Self::msg(format_args!("JSON error: {error}"))
    }
}

impl From<SecretError> for Error {
    fn from(error: SecretError) -> Self {
        match error {
            SecretError::NotGranted(message) => {
                Self::msg(format_args!("secret not granted: {message}"))
            }
            SecretError::Unavailable(message) => {
                Self::msg(format_args!("secret unavailable: {message}"))
            }
        }
    }
}

impl From<wasip2::http::types::ErrorCode> for Error {
    fn from(error: wasip2::http::types::ErrorCode) -> Self {
        Self::msg(crate::http::describe_error_code(&error))
    }
}

impl From<std::str::Utf8Error> for Error {
    fn from(error: std::str::Utf8Error) -> Self {
        Self::msg(format_args!("invalid UTF-8: {error}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests may unwrap")]
mod tests {
    use super::*;

    #[test]
    fn context_prefixes_the_message_and_keeps_the_status() {
        let error = Error::with_status(503, "upstream busy".into()).context("fetching the issue");
        assert_eq!(error.to_string(), "fetching the issue: upstream busy");
        assert_eq!(error.http_status(), Some(503));
        assert_eq!(Error::msg("plain").http_status(), None);
    }

    #[test]
    fn debug_shows_only_the_message() {
        let error = Error::with_status(404, "no \"such\" issue".into());
        assert_eq!(format!("{error:?}"), r#""no \"such\" issue""#);
        assert_eq!(error.message(), "no \"such\" issue");
    }

    #[test]
    fn sdk_errors_convert_with_a_prefix_naming_their_kind() {
        let json: Error = serde_json::from_str::<u8>("{").unwrap_err().into();
        assert!(json.message().starts_with("JSON error: "), "{json}");
        let denied: Error = SecretError::NotGranted("alias `gh`".into()).into();
        assert_eq!(denied.message(), "secret not granted: alias `gh`");
        let gone: Error = SecretError::Unavailable("store down".into()).into();
        assert_eq!(gone.message(), "secret unavailable: store down");
        let bytes = [0xff_u8, 0xfe];
        let utf8: Error = std::str::from_utf8(&bytes).unwrap_err().into();
        assert!(utf8.message().starts_with("invalid UTF-8: "), "{utf8}");
    }
}

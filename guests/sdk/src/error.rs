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

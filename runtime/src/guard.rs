//! Per-connection limits: a hook the host gives a job ([`JobOptions::guard`])
//! that egress asks before any request carrying a connection leaves, and
//! tells how the upstream answered.
//!
//! The runtime knows which connections a request carries only after it has
//! resolved the placeholders (URL, headers and the whole body), so that is
//! where the guard is asked: after the grant checks, before the address is
//! resolved. A refusal is an egress refusal like any other (the guest gets
//! an error, the job an event, the observer an audit event); the request
//! never leaves. Limits, counters and alerts are the host's: the daemon's
//! guard keeps token buckets per connection.
//!
//! [`JobOptions::guard`]: crate::JobOptions::guard

use std::time::Duration;

/// A request that carries a connection, as a guard sees it before it leaves.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionUse<'a> {
    /// The workspace of the job.
    pub workspace: &'a str,
    /// The connection's name (as the job's connection source named it).
    pub connection: &'a str,
    /// The recipe of the job.
    pub recipe: &'a str,
    /// The job.
    pub job: &'a str,
    /// The step sending it.
    pub step: &'a str,
    /// Destination host.
    pub host: &'a str,
    /// The request's path (no query: a query may hold data).
    pub path: &'a str,
    /// The request body's length, when known before sending.
    pub request_bytes: u64,
}

/// Decides per connection whether a request may leave, and learns how
/// upstreams answer (for `429` and `Retry-After`).
pub trait ConnectionGuard: Send + Sync {
    /// Whether the request may leave now. The reason of a refusal is shown
    /// to the guest and recorded; it must not hold a secret value.
    ///
    /// # Errors
    ///
    /// The reason the request is refused.
    fn admit(&self, request: &ConnectionUse<'_>) -> Result<(), String>;

    /// The upstream answered `status`, with `retry_after` when it sent a
    /// `Retry-After` header and `response_bytes` when it declared the
    /// body's length (`Content-Length`).
    fn answered(
        &self,
        request: &ConnectionUse<'_>,
        status: u16,
        retry_after: Option<Duration>,
        response_bytes: Option<u64>,
    );
}

/// Reads a `Retry-After` value in seconds (RFC 9110 §10.2.3); an HTTP date
/// is taken relative to `now`. At most a day.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(seconds) = value.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO)
    };
    Some(wait.min(Duration::from_secs(86_400)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date_and_bounded() {
        let now = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after(&httpdate::fmt_http_date(now + Duration::from_secs(30)), now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("99999999", now),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}

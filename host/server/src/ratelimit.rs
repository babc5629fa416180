//! Per-key request rate limits (per API token, per webhook) with a Retry-After.
//!
//! [`RateLimiter`] wraps `governor`'s keyed GCRA limiter (a token bucket
//! without a refill task): each key may make `burst` requests at once and
//! then `per_second` requests a second. A refused request gets the time until
//! its next request would conform, which the API turns into a `Retry-After`
//! header with [`retry_after_secs`].
//!
//! # Keys
//!
//! Keys are short identifiers the daemon already trusts: an API token's id
//! (never the token itself, so no secret sits in the map) once the token has
//! been verified, a webhook's id, or a client network ([`client_key`]).
//! Requests that have not been verified are limited only by client network,
//! so that neither made-up keys nor someone else's token id can spend a
//! budget that is not theirs.
//!
//! # Bounded memory
//!
//! The limiter keeps one small state (a key and eight bytes) per key seen.
//! [`RateLimiter::retain_recent`] drops every key whose bucket has been full
//! again for at least one emission interval (`1 / per_second` seconds), that
//! is, which behaves like a key never seen, and releases spare capacity. The
//! daemon calls it from a background task every [`RETAIN_INTERVAL`], so the
//! map holds at most the keys active within the last minute plus the time a
//! bucket needs to refill (`(burst + 1) / per_second` seconds).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter as Governor};

/// How often the daemon should call [`RateLimiter::retain_recent`].
pub const RETAIN_INTERVAL: Duration = Duration::from_secs(60);

/// A keyed rate limiter: `burst` requests at once, then `per_second` a second, per key.
///
/// The clock is a type parameter so tests can use `governor`'s
/// `FakeRelativeClock`; the daemon uses the default monotonic clock.
pub struct RateLimiter<C: Clock = DefaultClock> {
    /// The underlying limiter, keyed by the caller's key.
    inner: Governor<String, HashMapStateStore<String>, C, NoOpMiddleware<C::Instant>>,
    /// The configured rate, for Debug output.
    per_second: NonZeroU32,
    /// The configured burst, for Debug output.
    burst: NonZeroU32,
}

impl<C: Clock> std::fmt::Debug for RateLimiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are left out: they identify tokens and webhooks.
        f.debug_struct("RateLimiter")
            .field("per_second", &self.per_second)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl RateLimiter {
    /// Creates a limiter allowing `burst` requests at once and `per_second`
    /// requests a second afterwards, for each key separately.
    ///
    /// A zero for either value is taken as one, so a misconfiguration slows
    /// requests down instead of refusing all of them.
    pub fn new(per_second: u32, burst: u32) -> RateLimiter {
        RateLimiter::with_clock(per_second, burst, DefaultClock::default())
    }
}

impl<C: Clock> RateLimiter<C> {
    /// Creates a limiter like [`RateLimiter::new`] that reads time from `clock`.
    pub fn with_clock(per_second: u32, burst: u32, clock: C) -> RateLimiter<C> {
        let per_second = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        RateLimiter {
            inner: Governor::hashmap_with_clock(quota, clock),
            per_second,
            burst,
        }
    }

    /// Counts one request for `key`.
    ///
    /// # Errors
    ///
    /// Returns how long the caller must wait before a request under `key`
    /// would be allowed (always more than zero); pass it to
    /// [`retry_after_secs`] for the `Retry-After` header.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        // `check_key` takes `&String`; one short allocation per request.
        let key = key.to_owned();
        match self.inner.check_key(&key) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.inner.clock().now());
                Err(wait.max(Duration::from_nanos(1)))
            }
        }
    }

    /// Forgets every key whose bucket has been full for one emission interval
    /// (`1 / per_second`), and releases spare memory.
    ///
    /// Call it every [`RETAIN_INTERVAL`]; it locks the map for one pass over
    /// it, which is short next to the interval.
    pub fn retain_recent(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }

    /// Returns how many keys the limiter currently holds state for.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Returns `true` if the limiter holds no key state.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

/// The limiter key of a client address: the address itself for IPv4, its
/// /64 network for IPv6 (one subscriber usually holds a whole /64, so
/// per-address keys would let it rotate through 2^64 budgets).
pub fn client_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", std::net::Ipv6Addr::from(network))
            }
        },
    }
}

/// Rounds a wait up to whole seconds for a `Retry-After` header, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs();
    let secs = if wait.subsec_nanos() > 0 {
        secs.saturating_add(1)
    } else {
        secs
    };
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    /// A limiter on a fake clock, with a handle to advance it.
    fn fake(per_second: u32, burst: u32) -> (RateLimiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (
            RateLimiter::with_clock(per_second, burst, clock.clone()),
            clock,
        )
    }

    #[test]
    fn burst_then_refused_with_retry_after() {
        let (limiter, _clock) = fake(2, 5);
        for i in 0..5 {
            assert_eq!(limiter.check("token-1"), Ok(()), "request {i} of the burst");
        }
        let wait = limiter.check("token-1").unwrap_err();
        assert!(wait > Duration::ZERO);
        // At two a second the next request conforms after half a second.
        assert_eq!(wait, Duration::from_millis(500));
        assert_eq!(retry_after_secs(wait), 1);
        // Refused requests do not use up capacity.
        assert_eq!(limiter.check("token-1").unwrap_err(), wait);
    }

    #[test]
    fn keys_are_independent() {
        let (limiter, _clock) = fake(1, 2);
        assert_eq!(limiter.check("a"), Ok(()));
        assert_eq!(limiter.check("a"), Ok(()));
        assert!(limiter.check("a").is_err());
        assert_eq!(limiter.check("b"), Ok(()));
        assert_eq!(limiter.check("b"), Ok(()));
        assert!(limiter.check("b").is_err());
        assert_eq!(limiter.len(), 2);
    }

    #[test]
    fn refills_after_waiting() {
        let (limiter, clock) = fake(1, 3);
        for _ in 0..3 {
            assert_eq!(limiter.check("hook-9"), Ok(()));
        }
        let wait = limiter.check("hook-9").unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        clock.advance(Duration::from_millis(999));
        let almost = limiter.check("hook-9").unwrap_err();
        assert_eq!(almost, Duration::from_millis(1));
        assert_eq!(retry_after_secs(almost), 1);
        clock.advance(Duration::from_millis(1));
        assert_eq!(limiter.check("hook-9"), Ok(()));
        assert!(limiter.check("hook-9").is_err());
        // After a full refill the whole burst is available again.
        clock.advance(Duration::from_secs(3));
        for _ in 0..3 {
            assert_eq!(limiter.check("hook-9"), Ok(()));
        }
        assert!(limiter.check("hook-9").is_err());
    }

    #[test]
    fn retain_recent_drops_refilled_keys_only() {
        let (limiter, clock) = fake(1, 2);
        for i in 0..100 {
            assert_eq!(limiter.check(&format!("key-{i}")), Ok(()));
        }
        assert_eq!(limiter.len(), 100);
        // Governor keeps a refilled key for one more emission interval (one
        // second here), so right after the refill nothing is dropped yet.
        clock.advance(Duration::from_secs(1));
        limiter.retain_recent();
        assert_eq!(limiter.len(), 100);
        clock.advance(Duration::from_secs(2));
        assert_eq!(limiter.check("busy"), Ok(()));
        assert_eq!(limiter.check("busy"), Ok(()));
        // Three seconds in, the 100 keys are gone; "busy" has not refilled.
        limiter.retain_recent();
        assert_eq!(limiter.len(), 1);
        assert!(limiter.check("busy").is_err());
        clock.advance(Duration::from_secs(5));
        limiter.retain_recent();
        assert!(limiter.is_empty());
    }

    #[test]
    fn zero_configuration_is_taken_as_one() {
        let (limiter, clock) = fake(0, 0);
        assert_eq!(limiter.check("k"), Ok(()));
        assert_eq!(limiter.check("k").unwrap_err(), Duration::from_secs(1));
        clock.advance(Duration::from_secs(1));
        assert_eq!(limiter.check("k"), Ok(()));
    }

    #[test]
    fn retry_after_rounds_up_to_at_least_one_second() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
        assert_eq!(retry_after_secs(Duration::MAX), u64::MAX);
    }

    #[test]
    fn client_keys_group_ipv6_by_64() {
        let key = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(key("203.0.113.7"), "203.0.113.7");
        assert_ne!(key("203.0.113.7"), key("203.0.113.8"));
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_eq!(
            key("2001:db8:1:2:ffff:ffff:ffff:ffff"),
            key("2001:db8:1:2::1")
        );
        assert_ne!(key("2001:db8:1:3::1"), key("2001:db8:1:2::1"));
        assert_eq!(key("::ffff:203.0.113.7"), "203.0.113.7");
    }

    #[test]
    fn real_clock_limiter_works() {
        let limiter = RateLimiter::new(10, 1);
        assert_eq!(limiter.check("k"), Ok(()));
        let wait = limiter.check("k").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(100));
        assert!(format!("{limiter:?}").contains("per_second"));
        assert!(!format!("{limiter:?}").contains("\"k\""));
    }
}

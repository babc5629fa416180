//! Outbound limits per connection: the daemon's [`ConnectionGuard`].
//!
//! Each connection of a workspace may carry [`ConnectionLimits`]: requests
//! per minute as a token bucket (refilled continuously, `burst` at once),
//! request body bytes per minute and distinct paths per minute (fixed
//! one-minute windows). Egress asks [`ConnectionLimiter::admit`] once it
//! knows which connections a request carries; a request past a limit is
//! refused before it leaves. An upstream's `429` blocks the connection for
//! its `Retry-After` (one second without one), for every job of the
//! workspace.
//!
//! The limits are read from the store when a job starts, at most once per
//! [`RELOAD`] per workspace, so a change applies to the next jobs within
//! that time. The state is per process: with several daemon nodes each
//! keeps its own buckets (a shared budget needs the shared store of the
//! PostgreSQL backend).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wrun_runtime::guard::{ConnectionGuard, ConnectionUse};

use crate::storage::{ConnectionLimits, Storage, StorageResult};

/// How stale a workspace's limits may be.
pub const RELOAD: Duration = Duration::from_secs(2);

/// A fixed window of one minute.
const WINDOW: Duration = Duration::from_secs(60);

/// Longest wait an upstream's `Retry-After` imposes.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The state of one connection.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    window_start: Instant,
    bytes: u64,
    paths: BTreeSet<String>,
    blocked_until: Option<Instant>,
}

impl Bucket {
    fn new(now: Instant, limits: &ConnectionLimits) -> Bucket {
        Bucket {
            tokens: f64::from(burst(limits)),
            refilled: now,
            window_start: now,
            bytes: 0,
            paths: BTreeSet::new(),
            blocked_until: None,
        }
    }
}

/// The burst of a request limit: as set, else a tenth of the minute's.
fn burst(limits: &ConnectionLimits) -> u32 {
    limits
        .burst
        .unwrap_or_else(|| limits.requests_per_minute.map_or(1, |r| r / 10))
        .max(1)
}

/// A workspace's limits as last read.
struct Loaded {
    at: Instant,
    limits: Arc<BTreeMap<String, ConnectionLimits>>,
}

/// Token buckets and windows per connection, shared by every job.
pub struct ConnectionLimiter {
    storage: Arc<dyn Storage>,
    loaded: Mutex<HashMap<String, Loaded>>,
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

impl std::fmt::Debug for ConnectionLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionLimiter").finish_non_exhaustive()
    }
}

impl ConnectionLimiter {
    /// A limiter reading limits from `storage`.
    pub fn new(storage: Arc<dyn Storage>) -> ConnectionLimiter {
        ConnectionLimiter {
            storage,
            loaded: Mutex::new(HashMap::new()),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Reads a workspace's limits if they are older than [`RELOAD`]; the
    /// runner calls it before each job of the workspace.
    ///
    /// # Errors
    ///
    /// The store cannot be read.
    pub async fn refresh(&self, workspace: &str) -> StorageResult<()> {
        let fresh = self
            .loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(workspace)
            .is_some_and(|l| l.at.elapsed() < RELOAD);
        if fresh {
            return Ok(());
        }
        let limits = Arc::new(self.storage.connection_limits(workspace).await?);
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                workspace.into(),
                Loaded {
                    at: Instant::now(),
                    limits,
                },
            );
        Ok(())
    }

    fn limits_of(&self, workspace: &str, connection: &str) -> Option<ConnectionLimits> {
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(workspace)
            .and_then(|l| l.limits.get(connection).copied())
    }
}

impl ConnectionGuard for ConnectionLimiter {
    fn admit(&self, r: &ConnectionUse<'_>) -> Result<(), String> {
        let limits = self.limits_of(r.workspace, r.connection);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (r.workspace.to_string(), r.connection.to_string());
        let Some(limits) = limits else {
            // Unlimited: only an upstream's 429 may hold it.
            return match buckets.get(&key).and_then(|b| b.blocked_until) {
                Some(until) if until > now => Err(blocked(r.connection, until - now)),
                _ => Ok(()),
            };
        };
        let bucket = buckets
            .entry(key)
            .or_insert_with(|| Bucket::new(now, &limits));
        if let Some(until) = bucket.blocked_until {
            if until > now {
                return Err(blocked(r.connection, until - now));
            }
            bucket.blocked_until = None;
        }
        if now.duration_since(bucket.window_start) >= WINDOW {
            bucket.window_start = now;
            bucket.bytes = 0;
            bucket.paths.clear();
        }
        let refill = now.duration_since(bucket.refilled).as_secs_f64()
            * f64::from(limits.requests_per_minute.unwrap_or(0))
            / 60.0;
        bucket.tokens = (bucket.tokens + refill).min(f64::from(burst(&limits)));
        bucket.refilled = now;
        if let Some(rpm) = limits.requests_per_minute
            && bucket.tokens < 1.0
        {
            return Err(format!(
                "connection `{}` is over its limit of {rpm} requests per minute (burst {}); the request was not sent",
                r.connection,
                burst(&limits)
            ));
        }
        if let Some(max) = limits.bytes_per_minute
            && bucket.bytes + r.request_bytes > max
        {
            return Err(format!(
                "connection `{}` is over its limit of {max} request bytes per minute; the request was not sent",
                r.connection
            ));
        }
        if let Some(max) = limits.paths_per_minute
            && !bucket.paths.contains(r.path)
            && bucket.paths.len() >= max as usize
        {
            return Err(format!(
                "connection `{}` is over its limit of {max} distinct paths per minute; the request was not sent",
                r.connection
            ));
        }
        if limits.requests_per_minute.is_some() {
            bucket.tokens -= 1.0;
        }
        bucket.bytes += r.request_bytes;
        if limits.paths_per_minute.is_some() {
            bucket.paths.insert(r.path.to_string());
        }
        Ok(())
    }

    fn answered(&self, r: &ConnectionUse<'_>, status: u16, retry_after: Option<Duration>) {
        if status != 429 {
            return;
        }
        let wait = retry_after
            .unwrap_or(Duration::from_secs(1))
            .min(MAX_RETRY_AFTER);
        let now = Instant::now();
        let limits = self
            .limits_of(r.workspace, r.connection)
            .unwrap_or_default();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = buckets
            .entry((r.workspace.to_string(), r.connection.to_string()))
            .or_insert_with(|| Bucket::new(now, &limits));
        let until = now + wait;
        if bucket.blocked_until.is_none_or(|b| b < until) {
            bucket.blocked_until = Some(until);
        }
    }
}

fn blocked(connection: &str, left: Duration) -> String {
    format!(
        "the upstream asked connection `{connection}` to wait (429, Retry-After): {} s left; the request was not sent",
        left.as_secs().max(1)
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn limiter(limits: ConnectionLimits) -> ConnectionLimiter {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::sqlite::SqliteStorage::open(
            &dir.path().join("wrun.db"),
            wrun_store::keys::MasterKey::generate(),
            None,
        )
        .unwrap();
        let limiter = ConnectionLimiter::new(Arc::new(storage));
        limiter.loaded.lock().unwrap().insert(
            "ws".into(),
            Loaded {
                at: Instant::now(),
                limits: Arc::new(BTreeMap::from([("crm".to_string(), limits)])),
            },
        );
        limiter
    }

    fn request<'a>(connection: &'a str, path: &'a str, bytes: u64) -> ConnectionUse<'a> {
        ConnectionUse {
            workspace: "ws",
            connection,
            recipe: "r",
            job: "j",
            step: "s",
            host: "api.crm.test",
            path,
            request_bytes: bytes,
        }
    }

    #[test]
    fn the_burst_goes_then_requests_are_refused() {
        let l = limiter(ConnectionLimits {
            requests_per_minute: Some(60),
            burst: Some(3),
            ..Default::default()
        });
        for _ in 0..3 {
            l.admit(&request("crm", "/a", 0)).unwrap();
        }
        let err = l.admit(&request("crm", "/a", 0)).unwrap_err();
        assert!(err.contains("60 requests per minute (burst 3)"), "{err}");
        // Another connection is not limited.
        l.admit(&request("other", "/a", 0)).unwrap();
        // A second refills one token.
        std::thread::sleep(Duration::from_millis(1100));
        l.admit(&request("crm", "/a", 0)).unwrap();
        assert!(l.admit(&request("crm", "/a", 0)).is_err());
    }

    #[test]
    fn bytes_and_distinct_paths_per_minute() {
        let l = limiter(ConnectionLimits {
            bytes_per_minute: Some(100),
            paths_per_minute: Some(2),
            ..Default::default()
        });
        l.admit(&request("crm", "/a", 60)).unwrap();
        assert!(
            l.admit(&request("crm", "/a", 50))
                .unwrap_err()
                .contains("100 request bytes")
        );
        l.admit(&request("crm", "/b", 10)).unwrap();
        l.admit(&request("crm", "/a", 10)).unwrap();
        let err = l.admit(&request("crm", "/c", 0)).unwrap_err();
        assert!(err.contains("2 distinct paths"), "{err}");
    }

    #[test]
    fn a_429_holds_the_connection_for_its_retry_after() {
        let l = limiter(ConnectionLimits::default());
        l.admit(&request("crm", "/a", 0)).unwrap();
        l.answered(&request("crm", "/a", 0), 429, Some(Duration::from_secs(30)));
        let err = l.admit(&request("crm", "/b", 0)).unwrap_err();
        assert!(err.contains("429"), "{err}");
        // Unlimited connections are held too.
        l.answered(
            &request("free", "/a", 0),
            429,
            Some(Duration::from_millis(1)),
        );
        l.admit(&request("other", "/a", 0)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        l.admit(&request("free", "/a", 0)).unwrap();
    }
}

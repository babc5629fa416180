//! Outbound limits, usage and alerts per connection: the daemon's
//! [`ConnectionGuard`].
//!
//! Each connection of a workspace may carry [`ConnectionLimits`]: requests
//! per minute as a token bucket (refilled continuously, `burst` at once),
//! request body bytes per minute and distinct paths per minute (fixed
//! one-minute windows). Egress asks [`ConnectionLimiter::admit`] once it
//! knows which connections a request carries; a request past a limit, or
//! carrying a suspended connection, is refused before it leaves. An
//! upstream's `429` blocks the connection for its `Retry-After` (one second
//! without one), for every job of the workspace.
//!
//! Every request that leaves is counted per connection, minute, job, step
//! and host (requests, request body bytes, and response bytes as the
//! upstream declared them in `Content-Length`); the counts go to the store every few seconds ([`flush`]) and
//! are the egress trail. Against the connection's last hour (the baseline,
//! read with the limits) an [`Alert`] fires when a minute's attempts (sent
//! or refused by a limit: a burst past the limit is the signal) exceed the
//! baseline by 3 standard deviations or by the connection's
//! `spike_multiple` (at least [`MIN_SPIKE`] requests), and when a recipe's
//! step that never used the connection does. An alert is an audit entry, a
//! metric, a POST to the operator's webhook, and with `suspend_on_alert`
//! suspends the connection at once until an admin resumes it.
//!
//! The limits, baselines and suspensions are read from the store when a job
//! starts, at most once per [`RELOAD`] per workspace. The state is per
//! process: with several daemon nodes each keeps its own buckets (a shared
//! budget needs the shared store of the PostgreSQL backend).
//!
//! [`flush`]: ConnectionLimiter::flush

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::mpsc;
use wrun_runtime::guard::{ConnectionGuard, ConnectionUse};

use crate::audit::{Entry, Outcome};
use crate::storage::{ConnectionLimits, ConnectionUsage, Storage, StorageResult, UsageBaseline};
use wrun_store::UnixMillis;

/// Fewest requests in a minute that count as a spike.
pub const MIN_SPIKE: u64 = 10;

/// How long an alert's suspension is trusted before the store confirms it.
const SUSPENSION_GRACE: Duration = Duration::from_secs(10);

/// An alert on a connection's use.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Workspace.
    pub workspace: String,
    /// Connection.
    pub connection: String,
    /// `spike` or `new_caller`.
    pub kind: &'static str,
    /// The recipe, step and job that sent the request that raised it.
    pub recipe: String,
    /// Step.
    pub step: String,
    /// Job.
    pub job: String,
    /// Requests this minute, and the baseline's mean and threshold.
    pub requests: u64,
    /// Mean requests per minute over the last hour.
    pub baseline: f64,
    /// The threshold that was passed.
    pub threshold: f64,
    /// Whether the connection was suspended.
    pub suspended: bool,
}

/// Mean, standard deviation and threshold of a baseline.
fn threshold(baseline: &[u64], multiple: Option<u32>) -> Option<(f64, f64)> {
    // An hour without a single request is no baseline to compare with.
    if baseline.iter().all(|&n| n == 0) {
        return None;
    }
    let n = baseline.len() as f64;
    let mean = baseline.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = baseline
        .iter()
        .map(|&x| (x as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    let limit = match multiple {
        Some(m) => mean * f64::from(m),
        None => mean + 3.0 * var.sqrt(),
    };
    Some((mean, limit.max(MIN_SPIKE as f64)))
}

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
    /// The minute being counted (start, ms) and its requests.
    minute: i64,
    minute_requests: u64,
    /// The minute a spike was raised for (once per minute).
    alerted: Option<i64>,
    /// Callers (recipe -> steps) seen using the connection in this process.
    seen: BTreeMap<String, BTreeSet<String>>,
    /// Usage not in the store yet.
    usage: Vec<UsageRow>,
}

/// Counts of one minute, job, step and host, not in the store yet.
#[derive(Debug)]
struct UsageRow {
    minute: i64,
    recipe: String,
    step: String,
    job: String,
    host: String,
    requests: u64,
    bytes_out: u64,
    bytes_in: u64,
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
            minute: 0,
            minute_requests: 0,
            alerted: None,
            seen: BTreeMap::new(),
            usage: Vec::new(),
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
    baselines: BTreeMap<String, Arc<UsageBaseline>>,
}

/// Token buckets, windows, usage and alerts per connection, shared by
/// every job.
pub struct ConnectionLimiter {
    storage: Arc<dyn Storage>,
    loaded: Mutex<HashMap<String, Loaded>>,
    /// Workspace -> connection -> its state (looked up without allocating).
    buckets: Mutex<HashMap<String, HashMap<String, Bucket>>>,
    /// Suspended connections, with why and since when this process knows.
    suspended: Mutex<HashMap<(String, String), (String, Instant)>>,
    alerts: mpsc::UnboundedSender<Alert>,
}

impl std::fmt::Debug for ConnectionLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionLimiter").finish_non_exhaustive()
    }
}

impl ConnectionLimiter {
    /// A limiter reading limits from `storage`; its alerts come out of the
    /// returned receiver (see [`handle_alerts`]).
    pub fn new(storage: Arc<dyn Storage>) -> (ConnectionLimiter, mpsc::UnboundedReceiver<Alert>) {
        let (alerts, rx) = mpsc::unbounded_channel();
        (
            ConnectionLimiter {
                storage,
                loaded: Mutex::new(HashMap::new()),
                buckets: Mutex::new(HashMap::new()),
                suspended: Mutex::new(HashMap::new()),
                alerts,
            },
            rx,
        )
    }

    /// Writes the counted usage to the store (the daemon calls it every
    /// few seconds and at shutdown).
    ///
    /// # Errors
    ///
    /// The store refused the write (the counts are dropped).
    pub async fn flush(&self) -> StorageResult<()> {
        let mut per_ws: BTreeMap<String, Vec<ConnectionUsage>> = BTreeMap::new();
        {
            let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
            for (ws, connections) in buckets.iter_mut() {
                for (connection, bucket) in connections.iter_mut() {
                    for u in bucket.usage.drain(..) {
                        per_ws.entry(ws.clone()).or_default().push(ConnectionUsage {
                            connection: connection.clone(),
                            minute: UnixMillis(u.minute),
                            recipe: u.recipe,
                            step: u.step,
                            job: u.job,
                            host: u.host,
                            requests: u.requests,
                            bytes_out: u.bytes_out,
                            bytes_in: u.bytes_in,
                        });
                    }
                }
            }
        }
        for (ws, rows) in per_ws {
            self.storage.record_connection_usage(&ws, rows).await?;
        }
        Ok(())
    }

    /// Whether a connection is suspended in this process's view.
    fn suspension(&self, workspace: &str, connection: &str) -> Option<String> {
        let suspended = self
            .suspended
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if suspended.is_empty() {
            return None;
        }
        suspended
            .get(&(workspace.to_string(), connection.to_string()))
            .map(|(reason, _)| reason.clone())
    }

    /// Runs `f` on a connection's state, created on first use.
    fn with_bucket<T>(
        &self,
        r: &ConnectionUse<'_>,
        limits: &ConnectionLimits,
        f: impl FnOnce(&mut Bucket) -> T,
    ) -> T {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let connections = match buckets.get_mut(r.workspace) {
            Some(c) => c,
            None => buckets.entry(r.workspace.to_string()).or_default(),
        };
        let bucket = match connections.get_mut(r.connection) {
            Some(b) => b,
            None => connections
                .entry(r.connection.to_string())
                .or_insert_with(|| Bucket::new(Instant::now(), limits)),
        };
        f(bucket)
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
        // What was counted but not stored yet belongs to the baseline too.
        self.flush().await?;
        let baselines = self
            .storage
            .usage_baselines(workspace, UnixMillis::now())
            .await?
            .into_iter()
            .map(|(name, b)| (name, Arc::new(b)))
            .collect();
        let stored = self.storage.suspended_connections(workspace).await?;
        {
            let mut suspended = self
                .suspended
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // A suspension raised here stands until the store has it; one
            // the store no longer has was resumed by an admin.
            suspended.retain(|(ws, name), (_, since)| {
                ws != workspace || stored.contains_key(name) || since.elapsed() < SUSPENSION_GRACE
            });
            for (name, reason) in stored {
                suspended
                    .entry((workspace.to_string(), name))
                    .or_insert((reason, Instant::now() - SUSPENSION_GRACE));
            }
        }
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                workspace.into(),
                Loaded {
                    at: Instant::now(),
                    limits,
                    baselines,
                },
            );
        Ok(())
    }

    fn baseline_of(&self, workspace: &str, connection: &str) -> Option<Arc<UsageBaseline>> {
        self.loaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(workspace)
            .and_then(|l| l.baselines.get(connection).cloned())
    }

    /// The trail's row of this minute for the request's job, step and
    /// host (a step sending many requests finds its row at the end).
    fn usage_row<'b>(bucket: &'b mut Bucket, r: &ConnectionUse<'_>) -> &'b mut UsageRow {
        let now_ms = UnixMillis::now().0;
        let minute = now_ms - now_ms.rem_euclid(60_000);
        let at = bucket.usage.iter().rposition(|u| {
            u.minute == minute && u.job == r.job && u.step == r.step && u.host == r.host
        });
        let at = at.unwrap_or_else(|| {
            bucket.usage.push(UsageRow {
                minute,
                recipe: r.recipe.into(),
                step: r.step.into(),
                job: r.job.into(),
                host: r.host.into(),
                requests: 0,
                bytes_out: 0,
                bytes_in: 0,
            });
            bucket.usage.len() - 1
        });
        &mut bucket.usage[at]
    }

    /// Counts an attempt (sent or not: a burst past the limit is the
    /// signal) and raises the alerts it calls for.
    fn observe(&self, r: &ConnectionUse<'_>, limits: &ConnectionLimits, bucket: &mut Bucket) {
        let now_ms = UnixMillis::now().0;
        let minute = now_ms - now_ms.rem_euclid(60_000);
        if bucket.minute != minute {
            bucket.minute = minute;
            bucket.minute_requests = 0;
        }
        bucket.minute_requests += 1;
        let baseline = self.baseline_of(r.workspace, r.connection);
        // A known caller is found without allocating; the first request of
        // a caller in this process looks at the stored history.
        let seen = bucket
            .seen
            .get(r.recipe)
            .is_some_and(|steps| steps.contains(r.step));
        let new_caller = !seen && {
            // A connection nobody used yet is learning its callers.
            let known =
                baseline.as_ref().is_some_and(|b| !b.callers.is_empty()) || !bucket.seen.is_empty();
            let stored = baseline.as_ref().is_some_and(|b| {
                b.callers
                    .contains(&(r.recipe.to_string(), r.step.to_string()))
            });
            bucket
                .seen
                .entry(r.recipe.to_string())
                .or_default()
                .insert(r.step.to_string());
            known && !stored
        };
        let alert = |kind: &'static str, mean: f64, limit: f64| Alert {
            workspace: r.workspace.into(),
            connection: r.connection.into(),
            kind,
            recipe: r.recipe.into(),
            step: r.step.into(),
            job: r.job.into(),
            requests: bucket.minute_requests,
            baseline: mean,
            threshold: limit,
            suspended: limits.suspend_on_alert,
        };
        let mut raised = Vec::new();
        if new_caller {
            raised.push(alert("new_caller", 0.0, 0.0));
        }
        if bucket.alerted != Some(minute)
            && let Some((mean, limit)) = baseline
                .as_ref()
                .and_then(|b| threshold(&b.per_minute, limits.spike_multiple))
            && bucket.minute_requests as f64 > limit
        {
            bucket.alerted = Some(minute);
            raised.push(alert("spike", mean, limit));
        }
        for a in raised {
            if a.suspended {
                self.suspended
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry((a.workspace.clone(), a.connection.clone()))
                    .or_insert_with(|| (format!("{} alert", a.kind), Instant::now()));
            }
            let _ = self.alerts.send(a);
        }
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
        if let Some(reason) = self.suspension(r.workspace, r.connection) {
            return Err(format!(
                "connection `{}` is suspended ({reason}) until an admin resumes it; the request was not sent",
                r.connection
            ));
        }
        let limits = self
            .limits_of(r.workspace, r.connection)
            .unwrap_or_default();
        let now = Instant::now();
        self.with_bucket(r, &limits, |bucket| self.admit_in(r, &limits, bucket, now))
    }

    fn answered(
        &self,
        r: &ConnectionUse<'_>,
        status: u16,
        retry_after: Option<Duration>,
        response_bytes: Option<u64>,
    ) {
        if response_bytes.is_none() && status != 429 {
            return;
        }
        let limits = self
            .limits_of(r.workspace, r.connection)
            .unwrap_or_default();
        self.with_bucket(r, &limits, |bucket| {
            if let Some(bytes) = response_bytes {
                Self::usage_row(bucket, r).bytes_in += bytes;
            }
            if status == 429 {
                let wait = retry_after
                    .unwrap_or(Duration::from_secs(1))
                    .min(MAX_RETRY_AFTER);
                let until = Instant::now() + wait;
                if bucket.blocked_until.is_none_or(|b| b < until) {
                    bucket.blocked_until = Some(until);
                }
            }
        });
    }
}

impl ConnectionLimiter {
    /// [`ConnectionGuard::admit`] on the connection's state.
    fn admit_in(
        &self,
        r: &ConnectionUse<'_>,
        limits: &ConnectionLimits,
        bucket: &mut Bucket,
        now: Instant,
    ) -> Result<(), String> {
        let limits = *limits;
        if let Some(until) = bucket.blocked_until {
            if until > now {
                return Err(blocked(r.connection, until - now));
            }
            bucket.blocked_until = None;
        }
        self.observe(r, &limits, bucket);
        if let Some(reason) = self.suspension(r.workspace, r.connection) {
            // This very request raised the alert that suspended it.
            return Err(format!(
                "connection `{}` is suspended ({reason}) until an admin resumes it; the request was not sent",
                r.connection
            ));
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
        let row = Self::usage_row(bucket, r);
        row.requests += 1;
        row.bytes_out += r.request_bytes;
        Ok(())
    }
}

/// Where alerts go besides the audit log and the metrics.
#[derive(Clone)]
pub struct AlertSinks {
    /// The store (audit entries, suspensions).
    pub storage: Arc<dyn Storage>,
    /// Metrics.
    pub metrics: crate::metrics::Metrics,
    /// The engine whose egress sends the operator's webhook.
    pub engine: wrun_runtime::Engine,
    /// The operator's webhook URL (`[alerts] webhook_url`).
    pub webhook: Arc<std::sync::OnceLock<String>>,
}

/// Handles alerts until the limiter is gone: each is audited (actor
/// `system`), counted, posted to the operator's webhook as JSON, and
/// suspends its connection in the store when asked.
pub async fn handle_alerts(mut rx: mpsc::UnboundedReceiver<Alert>, sinks: AlertSinks) {
    while let Some(a) = rx.recv().await {
        sinks.metrics.connection_alert(a.kind);
        let detail = json!({
            "kind": a.kind, "connection": a.connection, "recipe": a.recipe, "step": a.step,
            "job": a.job, "requests_this_minute": a.requests,
            "baseline_per_minute": (a.baseline * 100.0).round() / 100.0,
            "threshold": (a.threshold * 100.0).round() / 100.0, "suspended": a.suspended,
        });
        let entry = |action: &str, outcome: Outcome| Entry {
            workspace: Some(a.workspace.clone()),
            actor: "system".into(),
            action: action.into(),
            target: format!("connection:{}", a.connection),
            source: None,
            outcome,
            detail: detail.clone(),
        };
        let written = if a.suspended {
            sinks
                .storage
                .suspend_connection(
                    &a.workspace,
                    &a.connection,
                    &format!("{} alert", a.kind),
                    entry("connection.suspend", Outcome::Success),
                )
                .await
        } else {
            Ok(())
        };
        let audited = sinks
            .storage
            .audit(vec![entry("connection.alert", Outcome::Denied)])
            .await;
        for e in [written, audited].into_iter().filter_map(Result::err) {
            tracing::error!(error = %e, connection = %a.connection, "an alert could not be stored");
        }
        if let Some(url) = sinks.webhook.get() {
            let body = json!({ "workspace": a.workspace, "alert": detail });
            let request = http::Request::post(url.as_str())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body.to_string().into_bytes());
            match request {
                Ok(request) => {
                    if let Err(e) = sinks.engine.send_host(request, 4096).await {
                        tracing::warn!(error = %e, "the alert webhook could not be reached");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the alert webhook URL is not valid"),
            }
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

    /// A limiter over an empty store (these tests set its state directly).
    fn bare() -> (ConnectionLimiter, mpsc::UnboundedReceiver<Alert>) {
        let dir = tempfile::tempdir().unwrap();
        let storage = crate::sqlite::SqliteStorage::open(
            &dir.path().join("wrun.db"),
            wrun_store::keys::MasterKey::generate(),
            None,
        )
        .unwrap();
        ConnectionLimiter::new(Arc::new(storage))
    }

    fn limiter(limits: ConnectionLimits) -> ConnectionLimiter {
        let (limiter, _alerts) = bare();
        limiter.loaded.lock().unwrap().insert(
            "ws".into(),
            Loaded {
                at: Instant::now(),
                limits: Arc::new(BTreeMap::from([("crm".to_string(), limits)])),
                baselines: BTreeMap::new(),
            },
        );
        limiter
    }

    #[test]
    fn a_spike_is_three_deviations_or_the_stated_multiple_over_the_baseline() {
        assert_eq!(threshold(&[0; 60], None), None, "no baseline, no spike");
        let steady = [2u64; 60];
        let (mean, limit) = threshold(&steady, None).unwrap();
        assert_eq!(mean, 2.0);
        assert_eq!(limit, MIN_SPIKE as f64, "never below the floor");
        let (_, limit) = threshold(&steady, Some(10)).unwrap();
        assert_eq!(limit, 20.0);
        let mut noisy = [0u64; 60];
        for (i, n) in noisy.iter_mut().enumerate() {
            *n = if i % 2 == 0 { 10 } else { 30 };
        }
        let (mean, limit) = threshold(&noisy, None).unwrap();
        assert_eq!((mean, limit), (20.0, 50.0));
    }

    #[test]
    fn a_new_caller_and_a_spike_raise_alerts_and_may_suspend() {
        let (l, mut alerts) = bare();
        let baseline = UsageBaseline {
            per_minute: vec![2; 60],
            callers: BTreeSet::from([("r".to_string(), "s".to_string())]),
        };
        l.loaded.lock().unwrap().insert(
            "ws".into(),
            Loaded {
                at: Instant::now(),
                limits: Arc::new(BTreeMap::from([(
                    "crm".to_string(),
                    ConnectionLimits {
                        spike_multiple: Some(10),
                        suspend_on_alert: true,
                        ..Default::default()
                    },
                )])),
                baselines: BTreeMap::from([
                    ("crm".to_string(), Arc::new(baseline.clone())),
                    ("crm2".to_string(), Arc::new(baseline)),
                ]),
            },
        );
        // A recipe that never used the connection: an alert (no suspension
        // without `suspend_on_alert`), once.
        let mut copied = request("crm2", "/a", 0);
        copied.recipe = "copied";
        l.admit(&copied).unwrap();
        let alert = alerts.try_recv().unwrap();
        assert_eq!(
            (alert.kind, alert.recipe.as_str(), alert.suspended),
            ("new_caller", "copied", false)
        );
        l.admit(&copied).unwrap();
        assert!(alerts.try_recv().is_err());
        // The known caller, at its usual pace: no alert.
        for _ in 0..5 {
            l.admit(&request("crm", "/a", 0)).unwrap();
        }
        assert!(alerts.try_recv().is_err());
        // Ten times the baseline within the minute: one spike alert, and the
        // connection is suspended from that request on.
        let mut refused = None;
        for _ in 0..30 {
            if let Err(e) = l.admit(&request("crm", "/a", 0)) {
                refused = Some(e);
                break;
            }
        }
        let alert = alerts.try_recv().unwrap();
        assert_eq!((alert.kind, alert.requests), ("spike", 21));
        assert!(refused.unwrap().contains("suspended (spike alert)"));
        assert!(
            l.admit(&request("crm", "/a", 0))
                .unwrap_err()
                .contains("suspended")
        );
        // A connection without history learns its callers.
        let mut other = request("other", "/a", 0);
        other.recipe = "copied";
        l.admit(&other).unwrap();
        assert!(alerts.try_recv().is_err());
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
        l.answered(
            &request("crm", "/a", 0),
            429,
            Some(Duration::from_secs(30)),
            None,
        );
        let err = l.admit(&request("crm", "/b", 0)).unwrap_err();
        assert!(err.contains("429"), "{err}");
        // Unlimited connections are held too.
        l.answered(
            &request("free", "/a", 0),
            429,
            Some(Duration::from_millis(1)),
            None,
        );
        l.admit(&request("other", "/a", 0)).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        l.admit(&request("free", "/a", 0)).unwrap();
    }
}

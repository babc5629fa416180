//! Prometheus metrics for the `wrun serve` daemon.
//!
//! [`Metrics`] owns a `prometheus-client` registry with every metric the
//! daemon exports, offers one method per thing worth counting, and renders
//! the registry in the OpenMetrics text format for `GET /metrics`
//! ([`Metrics::response`], served with [`CONTENT_TYPE`]).
//!
//! Labels are closed enums, so cardinality stays fixed: no recipe, workspace,
//! host or token ever becomes a label value.
//!
//! | Metric | Type | Labels |
//! |---|---|---|
//! | `wrun_jobs_total` | counter | `state`: queued, succeeded, failed, cancelled |
//! | `wrun_jobs_current` | gauge | `state`: queued, running |
//! | `wrun_step_duration_seconds` | histogram, 100 µs to 60 s | `outcome`: succeeded, failed |
//! | `wrun_egress_refusals_total` | counter | |
//! | `wrun_secret_misuse_total` | counter | |
//! | `wrun_auth_failures_total` | counter | `reason`: missing, malformed, invalid, expired, forbidden |
//! | `wrun_http_requests_total` | counter | `status_class`: 1xx to 5xx |
//! | `wrun_webhooks_total` | counter | `outcome`: accepted, rejected, rate_limited |
//! | `wrun_recipe_loads_total` | counter | |
//! | `wrun_oauth_refreshes_total` | counter | `outcome`: refreshed, failed (may pass), needs_reauth |
//! | `wrun_connection_alerts_total` | counter | `kind`: spike, new_caller |
//! | `wrun_backlog_refusals_total` | counter | (webhooks and runs answered 503: `[workers] max_backlog` reached) |
//! | `wrun_job_claims_current` | gauge | (jobs this node holds a claim on: its leases) |
//! | `wrun_job_takeovers_total` | counter | (running jobs this node claimed after another claim lapsed) |
//! | `wrun_lease_losses_total` | counter | (jobs this node stopped because another node claimed them: fenced writes) |

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{CONTENT_TYPE as CONTENT_TYPE_HEADER, HeaderValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The content type of [`Metrics::render`]'s output (OpenMetrics text 1.0).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds, in seconds, of the step-duration histogram's buckets: from
/// 100 µs to 60 s, roughly 1-2.5-5 per decade.
const STEP_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// A label set with one label; keys and values are fixed strings.
type Label = [(&'static str, &'static str); 1];

/// A job state counted by `wrun_jobs_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobEvent {
    /// A job was accepted into the queue.
    Queued,
    /// A job finished successfully.
    Succeeded,
    /// A job finished with an error.
    Failed,
    /// A job was cancelled.
    Cancelled,
}

impl JobEvent {
    /// The label value.
    fn as_str(self) -> &'static str {
        match self {
            JobEvent::Queued => "queued",
            JobEvent::Succeeded => "succeeded",
            JobEvent::Failed => "failed",
            JobEvent::Cancelled => "cancelled",
        }
    }
}

/// A live job state tracked by the `wrun_jobs_current` gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LiveJobState {
    /// Waiting in the queue.
    Queued,
    /// Running now.
    Running,
}

impl LiveJobState {
    /// The label value.
    fn as_str(self) -> &'static str {
        match self {
            LiveJobState::Queued => "queued",
            LiveJobState::Running => "running",
        }
    }
}

/// How a step ended, for `wrun_step_duration_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    /// The step returned successfully.
    Succeeded,
    /// The step returned an error or trapped.
    Failed,
}

impl StepOutcome {
    /// The label value.
    fn as_str(self) -> &'static str {
        match self {
            StepOutcome::Succeeded => "succeeded",
            StepOutcome::Failed => "failed",
        }
    }
}

/// Why a request failed authentication, for `wrun_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credentials were sent.
    Missing,
    /// The credentials were not in the expected form.
    Malformed,
    /// The token or signature is unknown or wrong.
    Invalid,
    /// The token has expired or was revoked.
    Expired,
    /// The token is valid but lacks the permission needed.
    Forbidden,
}

impl AuthFailure {
    /// The label value.
    fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Invalid => "invalid",
            AuthFailure::Expired => "expired",
            AuthFailure::Forbidden => "forbidden",
        }
    }
}

/// What happened to an incoming webhook, for `wrun_webhooks_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// The webhook was verified and a job queued.
    Accepted,
    /// The webhook failed verification or validation.
    Rejected,
    /// The webhook was refused by the rate limiter.
    RateLimited,
}

impl WebhookOutcome {
    /// The label value.
    fn as_str(self) -> &'static str {
        match self {
            WebhookOutcome::Accepted => "accepted",
            WebhookOutcome::Rejected => "rejected",
            WebhookOutcome::RateLimited => "rate_limited",
        }
    }
}

/// The daemon's metrics; cheap to clone (all clones share the same values).
#[derive(Clone)]
pub struct Metrics {
    /// The shared registry and metric handles.
    inner: Arc<Inner>,
}

/// The registry and the handles that update it.
struct Inner {
    /// Owns every metric below, for rendering.
    registry: Registry,
    /// `wrun_jobs_total{state}`.
    jobs_total: Family<Label, Counter>,
    /// `wrun_jobs_current{state}`.
    jobs_current: Family<Label, Gauge>,
    /// `wrun_step_duration_seconds{outcome}`.
    step_duration: Family<Label, Histogram, fn() -> Histogram>,
    /// `wrun_egress_refusals_total`.
    egress_refusals: Counter,
    /// `wrun_secret_misuse_total`.
    secret_misuse: Counter,
    /// `wrun_auth_failures_total{reason}`.
    auth_failures: Family<Label, Counter>,
    /// `wrun_http_requests_total{status_class}`.
    http_requests: Family<Label, Counter>,
    /// `wrun_webhooks_total{outcome}`.
    webhooks: Family<Label, Counter>,
    /// `wrun_recipe_loads_total`.
    recipe_loads: Counter,
    /// `wrun_oauth_refreshes_total{outcome}`, brought up to the refresher's
    /// own counts when rendered.
    oauth_refreshes: Family<Label, Counter>,
    /// The refresher whose counts those are.
    oauth: std::sync::OnceLock<Arc<wrun_store::oauth::Refresher>>,
    /// `wrun_connection_alerts_total{kind}`.
    connection_alerts: Family<Label, Counter>,
    /// `wrun_backlog_refusals_total`.
    backlog_refusals: Counter,
    /// `wrun_job_claims_current`.
    claims: Gauge,
    /// `wrun_job_takeovers_total`.
    takeovers: Counter,
    /// `wrun_lease_losses_total`.
    lease_losses: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

/// A new step-duration histogram with [`STEP_BUCKETS`].
fn step_histogram() -> Histogram {
    Histogram::new(STEP_BUCKETS)
}

impl Metrics {
    /// Creates the registry with every metric at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let jobs_total = Family::<Label, Counter>::default();
        // prometheus-client appends `_total` to counter names and the unit
        // suffix to names registered with a unit.
        registry.register(
            "wrun_jobs",
            "Jobs that entered each state",
            jobs_total.clone(),
        );
        let jobs_current = Family::<Label, Gauge>::default();
        registry.register(
            "wrun_jobs_current",
            "Jobs currently queued or running",
            jobs_current.clone(),
        );
        let step_duration: Family<Label, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(step_histogram);
        registry.register_with_unit(
            "wrun_step_duration",
            "Wall-clock duration of steps, by outcome",
            Unit::Seconds,
            step_duration.clone(),
        );
        let egress_refusals = Counter::default();
        registry.register(
            "wrun_egress_refusals",
            "Outgoing requests refused by egress policy",
            egress_refusals.clone(),
        );
        let secret_misuse = Counter::default();
        registry.register(
            "wrun_secret_misuse",
            "Attempts to use a secret outside its grant",
            secret_misuse.clone(),
        );
        let auth_failures = Family::<Label, Counter>::default();
        registry.register(
            "wrun_auth_failures",
            "API requests refused by authentication, by reason",
            auth_failures.clone(),
        );
        let http_requests = Family::<Label, Counter>::default();
        registry.register(
            "wrun_http_requests",
            "HTTP API responses, by status class",
            http_requests.clone(),
        );
        let webhooks = Family::<Label, Counter>::default();
        registry.register(
            "wrun_webhooks",
            "Incoming webhooks, by outcome",
            webhooks.clone(),
        );
        let recipe_loads = Counter::default();
        registry.register(
            "wrun_recipe_loads",
            "Recipes compiled or read from the compile cache for jobs (a deploy, a restart)",
            recipe_loads.clone(),
        );
        let oauth_refreshes = Family::<Label, Counter>::default();
        registry.register(
            "wrun_oauth_refreshes",
            "OAuth2 token requests of connections, by outcome",
            oauth_refreshes.clone(),
        );
        let connection_alerts = Family::<Label, Counter>::default();
        registry.register(
            "wrun_connection_alerts",
            "Alerts on connection use (spike, new_caller)",
            connection_alerts.clone(),
        );
        let backlog_refusals = Counter::default();
        registry.register(
            "wrun_backlog_refusals",
            "Webhooks and runs refused because [workers] max_backlog jobs were queued or running",
            backlog_refusals.clone(),
        );
        let claims = Gauge::default();
        registry.register(
            "wrun_job_claims_current",
            "Jobs this node holds a claim on (queued for it or running on it)",
            claims.clone(),
        );
        let takeovers = Counter::default();
        registry.register(
            "wrun_job_takeovers",
            "Running jobs this node claimed after their claim lapsed (a node died, stalled or restarted)",
            takeovers.clone(),
        );
        let lease_losses = Counter::default();
        registry.register(
            "wrun_lease_losses",
            "Jobs this node stopped because another node had claimed them (its writes were fenced)",
            lease_losses.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                claims,
                takeovers,
                lease_losses,
                backlog_refusals,
                connection_alerts,
                oauth_refreshes,
                oauth: std::sync::OnceLock::new(),
                registry,
                jobs_total,
                jobs_current,
                step_duration,
                egress_refusals,
                secret_misuse,
                auth_failures,
                http_requests,
                webhooks,
                recipe_loads,
            }),
        }
    }

    /// Counts a job entering `event`'s state (`wrun_jobs_total`).
    pub fn record_job(&self, event: JobEvent) {
        self.inner
            .jobs_total
            .get_or_create(&[("state", event.as_str())])
            .inc();
    }

    /// Sets how many jobs are in `state` now (`wrun_jobs_current`), for
    /// example from the store's counts at startup.
    #[cfg(test)]
    pub fn set_jobs(&self, state: LiveJobState, count: i64) {
        self.inner
            .jobs_current
            .get_or_create(&[("state", state.as_str())])
            .set(count);
    }

    /// Adds `delta` (negative to subtract) to the jobs in `state` now.
    pub fn add_jobs(&self, state: LiveJobState, delta: i64) {
        self.inner
            .jobs_current
            .get_or_create(&[("state", state.as_str())])
            .inc_by(delta);
    }

    /// Records how long a step took (`wrun_step_duration_seconds`).
    pub fn observe_step(&self, outcome: StepOutcome, duration: Duration) {
        self.inner
            .step_duration
            .get_or_create(&[("outcome", outcome.as_str())])
            .observe(duration.as_secs_f64());
    }

    /// Counts a recipe loaded for jobs (`wrun_recipe_loads_total`).
    pub fn record_recipe_load(&self) {
        self.inner.recipe_loads.inc();
    }

    /// Counts an outgoing request refused by egress policy.
    pub fn record_egress_refusal(&self) {
        self.inner.egress_refusals.inc();
    }

    /// Counts an attempt to use a secret outside its grant.
    pub fn record_secret_misuse(&self) {
        self.inner.secret_misuse.inc();
    }

    /// Counts a request refused by authentication.
    pub fn record_auth_failure(&self, reason: AuthFailure) {
        self.inner
            .auth_failures
            .get_or_create(&[("reason", reason.as_str())])
            .inc();
    }

    /// Counts an HTTP response by its status class (`2xx`, `4xx`, ...).
    pub fn record_http_response(&self, status: StatusCode) {
        let class = match status.as_u16() {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.inner
            .http_requests
            .get_or_create(&[("status_class", class)])
            .inc();
    }

    /// Counts an incoming webhook by outcome.
    pub fn record_webhook(&self, outcome: WebhookOutcome) {
        self.inner
            .webhooks
            .get_or_create(&[("outcome", outcome.as_str())])
            .inc();
    }

    /// Reports the OAuth2 refreshes of `refresher`
    /// (`wrun_oauth_refreshes_total`).
    pub fn watch_oauth(&self, refresher: Arc<wrun_store::oauth::Refresher>) {
        let _ = self.inner.oauth.set(refresher);
    }

    /// Renders every metric in the OpenMetrics text format (ending in
    /// `# EOF`); serve it with [`CONTENT_TYPE`].
    pub fn render(&self) -> String {
        if let Some(refresher) = self.inner.oauth.get() {
            let c = &refresher.counters;
            for (outcome, count) in [
                ("refreshed", &c.refreshed),
                ("failed", &c.failed),
                ("needs_reauth", &c.needs_reauth),
            ] {
                let counter = self
                    .inner
                    .oauth_refreshes
                    .get_or_create(&[("outcome", outcome)]);
                let now = count.load(std::sync::atomic::Ordering::Relaxed);
                counter.inc_by(now.saturating_sub(counter.get()));
            }
        }
        let mut out = String::new();
        if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
        {
            // Writing to a String cannot fail; an encoder error is a bug.
            tracing::error!(error = %err, "cannot encode metrics");
        }
        out
    }

    /// The `GET /metrics` response: [`Metrics::render`] with
    /// [`CONTENT_TYPE`].
    pub fn response(&self) -> Response {
        (
            [(CONTENT_TYPE_HEADER, HeaderValue::from_static(CONTENT_TYPE))],
            self.render(),
        )
            .into_response()
    }
}

/// Middleware counting every response by status class; install with
/// `axum::middleware::from_fn_with_state(metrics, count_http_responses)`.
pub async fn count_http_responses(
    State(metrics): State<Metrics>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    metrics.record_http_response(response.status());
    response
}

/// What the runner and the API record, in their own words.
impl Metrics {
    /// A job was committed to the queue.
    pub fn job_queued(&self) {
        self.record_job(JobEvent::Queued);
        self.add_jobs(LiveJobState::Queued, 1);
    }

    /// A queued job started running.
    pub fn job_started(&self) {
        self.add_jobs(LiveJobState::Queued, -1);
        self.add_jobs(LiveJobState::Running, 1);
    }

    /// A running job ended in `state`.
    pub fn job_finished(&self, state: super::storage::JobState) {
        use super::storage::JobState;
        self.add_jobs(LiveJobState::Running, -1);
        match state {
            JobState::Succeeded => self.record_job(JobEvent::Succeeded),
            JobState::Failed => self.record_job(JobEvent::Failed),
            JobState::Cancelled => self.record_job(JobEvent::Cancelled),
            JobState::Queued | JobState::Running => {}
        }
    }

    /// A step ended.
    pub fn step_finished(&self, elapsed: Duration, ok: bool) {
        let outcome = if ok {
            StepOutcome::Succeeded
        } else {
            StepOutcome::Failed
        };
        self.observe_step(outcome, elapsed);
    }

    /// The runtime refused a request.
    pub fn egress_refused(&self) {
        self.record_egress_refusal();
    }

    /// The runtime caught a secret used where it may not go.
    pub fn secret_misuse(&self) {
        self.record_secret_misuse();
    }

    /// An authentication failure, by the error code the client got.
    pub fn auth_failure(&self, code: &str) {
        let reason = if code.starts_with("missing") {
            AuthFailure::Missing
        } else if code.contains("malformed") {
            AuthFailure::Malformed
        } else if code.contains("expired") || code.contains("revoked") {
            AuthFailure::Expired
        } else if code.contains("ip_not_allowed") {
            AuthFailure::Forbidden
        } else {
            AuthFailure::Invalid
        };
        self.record_auth_failure(reason);
    }

    /// A webhook delivery's outcome.
    pub fn webhook(&self, outcome: WebhookOutcome) {
        self.record_webhook(outcome);
    }

    /// New work was refused: the backlog is full.
    pub fn backlog_refused(&self) {
        self.inner.backlog_refusals.inc();
    }

    /// This node holds `n` claims now.
    pub fn claims_held(&self, n: usize) {
        self.inner.claims.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// This node claimed a running job whose claim had lapsed.
    pub fn takeover(&self) {
        self.inner.takeovers.inc();
    }

    /// This node lost a job to another node's claim.
    pub fn lease_lost(&self) {
        self.inner.lease_losses.inc();
    }

    /// The jobs queued in the store and not claimed by this node, as last
    /// counted.
    pub fn queued_now(&self, n: u64) {
        self.inner
            .jobs_current
            .get_or_create(&[("state", LiveJobState::Queued.as_str())])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// An alert on a connection's use (`spike` or `new_caller`).
    pub fn connection_alert(&self, kind: &'static str) {
        self.inner
            .connection_alerts
            .get_or_create(&[("kind", kind)])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt as _;

    #[test]
    fn render_contains_names_and_values() {
        let metrics = Metrics::new();
        metrics.record_job(JobEvent::Queued);
        metrics.record_job(JobEvent::Queued);
        metrics.record_job(JobEvent::Failed);
        metrics.set_jobs(LiveJobState::Running, 3);
        metrics.add_jobs(LiveJobState::Queued, 2);
        metrics.add_jobs(LiveJobState::Queued, -1);
        metrics.observe_step(StepOutcome::Succeeded, Duration::from_micros(50));
        metrics.observe_step(StepOutcome::Succeeded, Duration::from_millis(300));
        metrics.observe_step(StepOutcome::Failed, Duration::from_secs(120));
        metrics.record_egress_refusal();
        metrics.record_secret_misuse();
        metrics.record_secret_misuse();
        metrics.record_auth_failure(AuthFailure::Invalid);
        metrics.record_http_response(StatusCode::OK);
        metrics.record_http_response(StatusCode::NOT_FOUND);
        metrics.record_http_response(StatusCode::SERVICE_UNAVAILABLE);
        metrics.record_webhook(WebhookOutcome::RateLimited);

        let text = metrics.clone().render();
        for line in [
            "# TYPE wrun_jobs counter",
            r#"wrun_jobs_total{state="queued"} 2"#,
            r#"wrun_jobs_total{state="failed"} 1"#,
            "# TYPE wrun_jobs_current gauge",
            r#"wrun_jobs_current{state="running"} 3"#,
            r#"wrun_jobs_current{state="queued"} 1"#,
            "# TYPE wrun_step_duration_seconds histogram",
            "# UNIT wrun_step_duration_seconds seconds",
            r#"wrun_step_duration_seconds_count{outcome="succeeded"} 2"#,
            r#"wrun_step_duration_seconds_bucket{le="0.0001",outcome="succeeded"} 1"#,
            r#"wrun_step_duration_seconds_bucket{le="0.5",outcome="succeeded"} 2"#,
            r#"wrun_step_duration_seconds_bucket{le="60.0",outcome="failed"} 0"#,
            r#"wrun_step_duration_seconds_bucket{le="+Inf",outcome="failed"} 1"#,
            "wrun_egress_refusals_total 1",
            "wrun_secret_misuse_total 2",
            r#"wrun_auth_failures_total{reason="invalid"} 1"#,
            r#"wrun_http_requests_total{status_class="2xx"} 1"#,
            r#"wrun_http_requests_total{status_class="4xx"} 1"#,
            r#"wrun_http_requests_total{status_class="5xx"} 1"#,
            r#"wrun_webhooks_total{outcome="rate_limited"} 1"#,
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing line {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn unlabelled_metrics_render_at_zero() {
        let text = Metrics::new().render();
        assert!(text.contains("wrun_egress_refusals_total 0"), "{text}");
        assert!(text.contains("wrun_secret_misuse_total 0"), "{text}");
    }

    #[tokio::test]
    async fn middleware_and_response() {
        let metrics = Metrics::new();
        let app = Router::new()
            .route(
                "/metrics",
                get({
                    let metrics = metrics.clone();
                    move || async move { metrics.response() }
                }),
            )
            .layer(axum::middleware::from_fn_with_state(
                metrics.clone(),
                count_http_responses,
            ));
        let request = || http::Request::get("/metrics").body(Body::empty()).unwrap();
        let missing = http::Request::get("/nope").body(Body::empty()).unwrap();
        app.clone().oneshot(missing).await.unwrap();
        app.clone().oneshot(request()).await.unwrap();
        let response = app.oneshot(request()).await.unwrap();
        assert_eq!(
            response.headers().get(CONTENT_TYPE_HEADER).unwrap(),
            CONTENT_TYPE
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let text = String::from_utf8(body.to_vec()).unwrap();
        // The 404 and the first scrape were counted before this render.
        assert!(
            text.contains(r#"wrun_http_requests_total{status_class="2xx"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"wrun_http_requests_total{status_class="4xx"} 1"#),
            "{text}"
        );
    }
}

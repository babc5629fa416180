//! What a running step reports: log lines, requests, refusals, and audit
//! events for the host's audit log.
//!
//! Everything here has been masked before it is built: an [`Observer`] may
//! store or print it as it is.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the step survived.
    Warn,
    /// A failure.
    Error,
}

/// Where a log line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogSource {
    /// The guest's `log` interface.
    Guest,
    /// The guest's standard output.
    Stdout,
    /// The guest's standard error.
    Stderr,
    /// The runtime, about the step (refusals, truncation).
    Runtime,
}

/// One event of a step, masked.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A log line.
    Log {
        /// The step.
        step: String,
        /// Severity.
        level: Level,
        /// Origin.
        source: LogSource,
        /// The masked text.
        message: String,
    },
    /// An HTTPS request the step sent, after its checks passed.
    Request {
        /// The step.
        step: String,
        /// HTTP method.
        method: String,
        /// Destination URL, masked, query removed.
        url: String,
        /// Response status, when a response arrived.
        status: Option<u16>,
        /// Connections whose values were injected.
        connections: Vec<String>,
        /// Time to the response head.
        elapsed: Duration,
    },
    /// A request the runtime refused.
    Refused {
        /// The step.
        step: String,
        /// Destination URL, masked, query removed.
        url: String,
        /// Why.
        reason: String,
    },
}

/// A security-relevant event for the host's audit log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct AuditEvent {
    /// What happened.
    pub kind: AuditKind,
    /// The job.
    pub job: String,
    /// The workspace.
    pub workspace: String,
    /// The recipe.
    pub recipe: String,
    /// The step.
    pub step: String,
    /// The connection involved, if any (its name, never its value).
    pub connection: Option<String>,
    /// Destination, masked, query removed.
    pub destination: String,
    /// Why the runtime refused.
    pub reason: String,
}

/// Kinds of audit events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AuditKind {
    /// A request was refused by the egress policy (scheme, host, address).
    EgressRefused,
    /// A request tried to use a secret where, or toward where, it may not go.
    SecretMisuse,
}

/// Receives events and audit events. A step's events arrive when the step
/// ends (those of a step failed for secret misuse are withheld); audit
/// events arrive as they happen. Both methods default to doing nothing.
/// Called from async tasks: keep them quick.
pub trait Observer: Send + Sync {
    /// A step event.
    fn event(&self, event: &Event) {
        let _ = event;
    }

    /// An audit event.
    fn audit(&self, event: &AuditEvent) {
        let _ = event;
    }
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl Observer for NoopObserver {}

/// An observer that keeps everything in memory, for tests and simple hosts.
#[derive(Debug, Default)]
pub struct CollectingObserver {
    events: Mutex<Vec<Event>>,
    audits: Mutex<Vec<AuditEvent>>,
}

impl CollectingObserver {
    /// An empty collector.
    pub fn new() -> Arc<CollectingObserver> {
        Arc::new(CollectingObserver::default())
    }

    /// Events so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Audit events so far.
    pub fn audits(&self) -> Vec<AuditEvent> {
        self.audits.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl Observer for CollectingObserver {
    fn event(&self, event: &Event) {
        if let Ok(mut events) = self.events.lock() {
            events.push(event.clone());
        }
    }

    fn audit(&self, event: &AuditEvent) {
        if let Ok(mut audits) = self.audits.lock() {
            audits.push(event.clone());
        }
    }
}

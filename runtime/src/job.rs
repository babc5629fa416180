//! Jobs and step runs.
//!
//! A [`Job`] is one run of a recipe. It owns what must be the same for all of
//! its steps and different from every other job: the placeholders of its
//! secrets and the set of values to mask (secret values, placeholders,
//! guest-marked values). [`Job::run`] runs one step: a fresh store and
//! instance, the step's grants, its memory and time limits.

use std::collections::HashMap;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use tracing::Instrument;
use wasmtime::component::ResourceTableError;
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi_http::WasiHttpCtx;

use crate::bindings::ActionError;
use crate::budget::{EventLog, Exceeded, Footprint};
use crate::egress::Scope;
use crate::engine::{Engine, Step};
use crate::error::{Error, Result};
use crate::events::{AuditEvent, AuditKind, Event, Level, LogSource, NoopObserver, Observer};
use crate::host_impl::{
    Capture, EgressHooks, GuestScope, MemoryLimitExceeded, StepLimiter, StepState, truncate,
};
use crate::mask::{Masker, mask_pointers};
use crate::misuse::{Channel, Detector, StepIdentity, StepMisuse};
use crate::secrets::{
    ConnectionSource, JobSecret, PlaceholderMatcher, StaticConnections, new_placeholder,
};

/// Values shorter than this are not marked: masking them would mangle text.
const MIN_MARK_LEN: usize = crate::mask::MIN_VALUE_LEN;
/// Most values a job's guests may mark; each mark rebuilds the job's masker.
const MAX_MARKED: usize = 256;
/// Longest value a guest may mark (a token, not a document).
const MAX_MARK_LEN: usize = 4 << 10;
/// Most bytes a job's guests may mark in all: bounds the masker's size and
/// the cost of rebuilding it inside a host call.
const MAX_MARKED_BYTES: usize = 64 << 10;

/// What a job needs from its host.
pub struct JobOptions {
    /// Job identifier, for events and audit records.
    pub id: String,
    /// Workspace the job belongs to.
    pub workspace: String,
    /// Recipe the job runs.
    pub recipe: String,
    /// Where the job's connections come from.
    pub connections: Arc<dyn ConnectionSource>,
    /// Environment properties (non-secret), e.g. API base URLs.
    pub properties: HashMap<String, String>,
    /// Receives events and audit events as they happen.
    pub observer: Arc<dyn Observer>,
    /// The host's per-connection limits, asked before a request carrying a
    /// connection leaves (see [`crate::guard`]).
    pub guard: Option<Arc<dyn crate::guard::ConnectionGuard>>,
}

impl JobOptions {
    /// Options with a random id, no connections, no properties and no observer.
    pub fn new(workspace: impl Into<String>, recipe: impl Into<String>) -> JobOptions {
        JobOptions {
            id: format!("job-{:016x}", rand::random::<u64>()),
            workspace: workspace.into(),
            recipe: recipe.into(),
            connections: Arc::new(StaticConnections::new()),
            properties: HashMap::new(),
            observer: Arc::new(NoopObserver),
            guard: None,
        }
    }

    /// Sets the connection source.
    pub fn connections(mut self, source: Arc<dyn ConnectionSource>) -> JobOptions {
        self.connections = source;
        self
    }

    /// Sets one property.
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> JobOptions {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// Sets the observer.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> JobOptions {
        self.observer = observer;
        self
    }

    /// Sets the per-connection guard.
    pub fn guard(mut self, guard: Arc<dyn crate::guard::ConnectionGuard>) -> JobOptions {
        self.guard = Some(guard);
        self
    }
}

impl std::fmt::Debug for JobOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobOptions")
            .field("id", &self.id)
            .field("workspace", &self.workspace)
            .field("recipe", &self.recipe)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Sensitive {
    /// Secrets loaded so far, by connection name.
    secrets: HashMap<String, Arc<JobSecret>>,
    marked: Vec<String>,
    /// Everything to mask in what is reported.
    mask: Masker,
    /// Secret values only, to scrub responses.
    scrub: Masker,
    /// Secret values, to catch them in what guests produce (misuse).
    detector: Detector,
    placeholders: Option<PlaceholderMatcher>,
}

/// State shared by the steps of one job.
pub(crate) struct JobShared {
    pub(crate) id: String,
    pub(crate) workspace: String,
    pub(crate) recipe: String,
    connections: Arc<dyn ConnectionSource>,
    pub(crate) properties: HashMap<String, String>,
    pub(crate) observer: Arc<dyn Observer>,
    guard: Option<Arc<dyn crate::guard::ConnectionGuard>>,
    sensitive: RwLock<Sensitive>,
    load_lock: tokio::sync::Mutex<()>,
}

impl JobShared {
    /// The sensitive state. Every write replaces whole values, so the state
    /// is consistent even if a writer panicked: a poisoned lock is taken
    /// over rather than answered with an empty (mask-nothing) state.
    fn sensitive(&self) -> std::sync::RwLockReadGuard<'_, Sensitive> {
        self.sensitive
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The masker of everything sensitive in this job.
    pub(crate) fn mask(&self) -> Masker {
        self.sensitive().mask.clone()
    }

    /// Marks a guest-computed value as sensitive for the rest of the job.
    /// Returns why a value was not marked, if it was not.
    pub(crate) fn mark(&self, value: String) -> Result<(), &'static str> {
        if value.len() < MIN_MARK_LEN {
            return Err("values shorter than 4 bytes are not masked");
        }
        if value.len() > MAX_MARK_LEN {
            return Err("values longer than 4 KiB cannot be marked");
        }
        {
            let mut s = self
                .sensitive
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            if s.marked.contains(&value) {
                return Ok(());
            }
            if s.marked.len() >= MAX_MARKED {
                return Err("the job has marked the maximum of 256 values");
            }
            let marked_bytes: usize = s.marked.iter().map(String::len).sum();
            if marked_bytes + value.len() > MAX_MARKED_BYTES {
                return Err("the job has marked the maximum of 64 KiB of values");
            }
            s.mask = s.mask.extend([value.as_bytes()]);
            s.marked.push(value);
        }
        Ok(())
    }

    /// Loads the connections a step's grants name, giving each a placeholder
    /// the first time the job sees it.
    async fn load_secrets(&self, step: &Step) -> Result<HashMap<String, Arc<JobSecret>>> {
        let _guard = self.load_lock.lock().await;
        let mut by_alias = HashMap::new();
        let mut fresh = Vec::new();
        for (alias, name) in step.grants.secrets() {
            let known = self.sensitive().secrets.get(name).cloned();
            let secret = match known {
                Some(secret) => secret,
                None => {
                    let err = |reason: String| Error::Connection {
                        step: step.name().into(),
                        alias: alias.clone(),
                        connection: name.clone(),
                        reason,
                    };
                    let connection = self
                        .connections
                        .connection(name)
                        .await
                        .map_err(err)?
                        .ok_or_else(|| err("no such connection in this workspace".into()))?;
                    let secret = Arc::new(JobSecret {
                        connection,
                        placeholder: new_placeholder(),
                    });
                    fresh.push(secret.clone());
                    secret
                }
            };
            by_alias.insert(alias.clone(), secret);
        }
        if !fresh.is_empty() {
            let mut s = self
                .sensitive
                .write()
                .unwrap_or_else(PoisonError::into_inner);

            for secret in fresh {
                s.secrets
                    .insert(secret.connection.name().to_string(), secret);
            }
            let scrub = Masker::new(
                s.secrets
                    .values()
                    .map(|j| j.connection.value().expose().as_bytes()),
            );
            let everything = Masker::new(
                s.secrets
                    .values()
                    .flat_map(|j| {
                        [
                            j.connection.value().expose().as_bytes(),
                            j.placeholder.as_bytes(),
                        ]
                    })
                    .chain(s.marked.iter().map(|m| m.as_bytes())),
            );
            let placeholders = PlaceholderMatcher::new(s.secrets.values().cloned().collect())
                .map_err(|reason| Error::Internal {
                    step: step.name().into(),
                    reason,
                })?;
            s.detector = Detector::new(scrub.clone(), s.secrets.values().cloned().collect());
            s.scrub = scrub;
            s.mask = everything;
            s.placeholders = Some(placeholders);
        }
        Ok(by_alias)
    }
}

/// One run of a recipe: a set of steps sharing placeholders and masks.
pub struct Job {
    engine: Engine,
    shared: Arc<JobShared>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

/// The result of a successful step.
#[derive(Debug, Clone)]
pub struct StepOutput {
    /// The action's output, with every secret value, placeholder and
    /// guest-marked value masked. This is what later steps receive.
    pub output: serde_json::Value,
    /// The output as it may be stored: `output` with the fields named by the
    /// step's `mask` grant masked too.
    pub stored: serde_json::Value,
    /// The step's events (logs, requests, refusals), masked.
    pub events: Vec<Event>,
    /// Wall-clock time of the step.
    pub elapsed: Duration,
}

/// A failed step: the error and the events up to the failure.
#[derive(Debug)]
pub struct StepFailure {
    /// What went wrong.
    pub error: Error,
    /// The step's events (logs, requests, refusals), masked.
    pub events: Vec<Event>,
    /// Wall-clock time of the step.
    pub elapsed: Duration,
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for StepFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

impl Job {
    pub(crate) fn new(engine: Engine, options: JobOptions) -> Job {
        Job {
            engine,
            shared: Arc::new(JobShared {
                id: options.id,
                workspace: options.workspace,
                recipe: options.recipe,
                connections: options.connections,
                properties: options.properties,
                observer: options.observer,
                guard: options.guard,
                sensitive: RwLock::new(Sensitive::default()),
                load_lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// The job's identifier.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The values the job's guests marked as sensitive so far (with the
    /// `mask` interface). A host that checkpoints a job stores them, sealed,
    /// with the step outputs, and gives them back through
    /// [`Job::restore_marks`] when it resumes the job in a new [`Job`].
    pub fn marked(&self) -> Vec<String> {
        self.shared.sensitive().marked.clone()
    }

    /// Marks values as sensitive for the rest of the job, as if a guest had
    /// marked them (values outside the marking limits are skipped).
    pub fn restore_marks(&self, values: impl IntoIterator<Item = String>) {
        for value in values {
            let _ = self.shared.mark(value);
        }
    }

    /// Masks every secret value, placeholder and marked value of this job in
    /// a text (for hosts that report on the job themselves).
    pub fn mask_text(&self, text: &str) -> String {
        self.shared.mask().mask_str(text).into_owned()
    }

    /// Runs one action of a step on a JSON input, in a fresh instance.
    ///
    /// # Errors
    ///
    /// A [`StepFailure`] with the error ([`Error::UnknownAction`],
    /// [`Error::ActionFailed`], [`Error::Timeout`], [`Error::MemoryLimit`],
    /// [`Error::Trap`], ...) and the events so far. Every text in it is masked.
    pub async fn run(
        &self,
        step: &Step,
        action: &str,
        input: &serde_json::Value,
    ) -> std::result::Result<StepOutput, StepFailure> {
        let span = tracing::info_span!(
            "step",
            job_id = %self.shared.id,
            workspace = %self.shared.workspace,
            recipe = %self.shared.recipe,
            step = %step.name,
            component = %step.component.name,
        );
        let started = Instant::now();
        let events = self.event_log(step);
        let result = self
            .run_inner(step, action, input, events.clone())
            .instrument(span)
            .await;
        let mut events = self.finish_events(step, &events);
        let elapsed = started.elapsed();
        if let Err(Error::SecretMisuse { .. }) = &result {
            // The events, and their order, would point at the candidate.
            events = vec![Event::Log {
                step: step.name().into(),
                level: Level::Error,
                source: LogSource::Runtime,
                message: "the step's events were withheld: a connection value appeared in what it produced".into(),
            }];
        }
        // The observer gets the step's events once it has ended, so that a
        // step caught guessing shows nothing, in any order.
        for event in &events {
            self.shared.observer.event(event);
        }
        match result {
            Ok(output) => {
                let mut stored = output.clone();
                mask_pointers(&mut stored, step.grants.mask());
                Ok(StepOutput {
                    output,
                    stored,
                    events,
                    elapsed,
                })
            }
            Err(error) => Err(StepFailure {
                error,
                events,
                elapsed,
            }),
        }
    }

    /// A step's event log, within the engine's step budget.
    fn event_log(&self, step: &Step) -> Arc<EventLog> {
        Arc::new(EventLog::new(step.name(), self.engine.inner.step_budget))
    }

    /// The step's events with their summaries; refusals that were only
    /// counted get one audit entry saying how many.
    fn finish_events(&self, step: &Step, log: &EventLog) -> Vec<Event> {
        let (events, uncounted) = log.finish();
        if uncounted > 0 {
            let job = &self.shared;
            job.observer.audit(&AuditEvent {
                kind: AuditKind::EgressRefused,
                job: job.id.clone(),
                workspace: job.workspace.clone(),
                recipe: job.recipe.clone(),
                step: step.name().into(),
                connection: None,
                destination: String::new(),
                reason: format!("… and {uncounted} more refused requests in this step"),
            });
        }
        events
    }

    /// What the step's requests are checked against.
    fn scope(
        &self,
        step: &Step,
        secrets: &HashMap<String, Arc<JobSecret>>,
        events: Arc<EventLog>,
        misuse: Arc<StepMisuse>,
    ) -> Result<Arc<Scope>> {
        let job = &self.shared;
        let (scrub, placeholders) = {
            let s = job.sensitive();
            (s.scrub.clone(), s.placeholders.clone().unwrap_or_default())
        };
        let shared_for_mask = job.clone();
        Ok(Arc::new(Scope {
            step: step.name().into(),
            job: job.id.clone(),
            workspace: job.workspace.clone(),
            recipe: job.recipe.clone(),
            net: step.grants.net().clone(),
            granted: secrets
                .iter()
                .map(|(alias, s)| (s.connection.name().to_string(), alias.clone()))
                .collect(),
            placeholders,
            scrub,
            report_mask: Arc::new(move || shared_for_mask.mask()),
            requests: AtomicU32::new(0),
            observer: job.observer.clone(),
            events,
            misuse,
            guard: job.guard.clone(),
        }))
    }

    /// A fresh misuse watch for one run of `step`, over every connection
    /// value the job has loaded so far.
    fn step_misuse(&self, step: &Step) -> Arc<StepMisuse> {
        let job = &self.shared;
        Arc::new(StepMisuse::new(
            job.sensitive().detector.clone(),
            StepIdentity {
                job: job.id.clone(),
                workspace: job.workspace.clone(),
                recipe: job.recipe.clone(),
                step: step.name().into(),
            },
            job.observer.clone(),
        ))
    }

    /// A step's egress as one run of the step holds it, for benchmarks that
    /// send requests through the egress path with no guest.
    #[cfg(feature = "bench-probes")]
    #[doc(hidden)]
    pub async fn __egress_probe<'a>(
        &'a self,
        step: &'a Step,
    ) -> std::result::Result<EgressProbe<'a>, String> {
        let secrets = self
            .shared
            .load_secrets(step)
            .await
            .map_err(|e| e.to_string())?;
        let probe = EgressProbe {
            job: self,
            step,
            scope: std::sync::Mutex::new(None),
            secrets,
        };
        probe.scope()?;
        Ok(probe)
    }

    /// A fresh store for one run of `step`: its WASI context (no preopens,
    /// environment, arguments or sockets; captured stdout and stderr), its
    /// secrets, egress scope, limiter and epoch deadline.
    fn new_store(
        &self,
        step: &Step,
        secrets: HashMap<String, Arc<JobSecret>>,
        events: Arc<EventLog>,
    ) -> Result<(Store<StepState>, Capture, Capture)> {
        let engine = &self.engine.inner;
        let job = &self.shared;
        let step_name = step.name.to_string();

        let misuse = self.step_misuse(step);
        let scope = self.scope(step, &secrets, events.clone(), misuse.clone())?;

        let stdout = Capture::new(engine.log_limit);
        let stderr = Capture::new(engine.log_limit);
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_blocking_current_thread(false)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .build();
        let memory_limit = usize::try_from(step.memory).unwrap_or(usize::MAX);
        let footprint = Footprint::new(&engine.step_budget);
        let state = StepState {
            wasi,
            http: WasiHttpCtx::new(),
            table: footprint.table(),
            hooks: EgressHooks {
                egress: engine.egress.clone(),
                scope,
            },
            limiter: StepLimiter {
                memory_limit,
                memory_used: 0,
                exceeded: false,
                table_elements: 20_000,
                instances: 16,
                tables: 8,
                memories: 4,
            },
            guest: GuestScope {
                step: step_name.clone(),
                job: job.clone(),
                secrets,
                env: step.grants.env().clone(),
                events: events.clone(),
                log_budget: engine.log_limit,
                misuse: misuse.clone(),
            },
            footprint,
        };
        let mut store = Store::new(&engine.wasmtime, state);
        store.limiter(|s| &mut s.limiter);
        // The epoch callback yields to the executor every tick (so a spinning
        // guest does not hold a worker thread) and traps once the step's
        // deadline has passed, misuse was caught or the step is over its host
        // budget; the async timeout below also covers a guest blocked in a
        // host call.
        let deadline = Instant::now() + step.timeout;
        store.epoch_deadline_callback(move |ctx| {
            if misuse.is_caught() {
                Err(wasmtime::Error::msg("secret misuse"))
            } else if ctx.data().footprint.exceeded.is_some() {
                Err(ResourceLimitExceeded.into())
            } else if Instant::now() >= deadline {
                Err(wasmtime::Trap::Interrupt.into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(1);

        Ok((store, stdout, stderr))
    }

    /// The actions a step's component exports, from a fresh instance with
    /// the step's grants but no secrets (for validation: `wrun check`).
    ///
    /// # Errors
    ///
    /// The component traps or times out while answering.
    pub async fn actions(&self, step: &Step) -> Result<Vec<String>> {
        let (mut store, _, _) = self.new_store(step, HashMap::new(), self.event_log(step))?;
        let call = async {
            let instance = step.component.pre.instantiate_async(&mut store).await?;
            instance.wrun_recipe_actions().call_names(&mut store).await
        };
        match tokio::time::timeout(step.timeout, call).await {
            Err(_) => Err(Error::Timeout {
                step: step.name().into(),
                limit: step.timeout,
            }),
            Ok(Err(trap)) => Err(Error::Trap {
                step: step.name().into(),
                message: self
                    .shared
                    .mask()
                    .mask_str(&format!("{trap:#}"))
                    .into_owned(),
            }),
            Ok(Ok(names)) => Ok(names),
        }
    }

    async fn run_inner(
        &self,
        step: &Step,
        action: &str,
        input: &serde_json::Value,
        events: Arc<EventLog>,
    ) -> Result<serde_json::Value> {
        let job = &self.shared;
        let step_name = step.name.to_string();
        let secrets = job.load_secrets(step).await?;
        let (mut store, stdout, stderr) = self.new_store(step, secrets, events.clone())?;

        let input_text = serde_json::to_string(input).map_err(|e| Error::Internal {
            step: step_name.clone(),
            reason: format!("input is not serialisable: {e}"),
        })?;
        let misuse = store.data().guest.misuse.clone();
        misuse.check(Channel::Input, input_text.as_bytes());
        if let Some(error) = misuse.error() {
            return Err(error);
        }
        let call = async {
            let instance = step.component.pre.instantiate_async(&mut store).await?;
            let actions = instance.wrun_recipe_actions();
            match actions.call_call(&mut store, action, &input_text).await? {
                // List what the component does export, for the error.
                Err(ActionError::UnknownAction(_)) => {
                    let names = actions.call_names(&mut store).await?;
                    Ok(Err(ActionError::UnknownAction(names.join(", "))))
                }
                other => Ok::<_, wasmtime::Error>(other),
            }
        };
        let outcome = tokio::time::timeout(step.timeout, call).await;

        // Whatever happened (the call future is gone, so the store is free
        // again), the captured output goes to the job log.
        let stderr_text = log_output(&mut store.data_mut().guest, &stdout, &stderr);
        if let Ok(outcome) = &outcome {
            check_produced(&misuse, outcome);
        }
        if let Some(error) = misuse.error() {
            return Err(error);
        }
        let outcome = match outcome {
            Err(_elapsed) => {
                return Err(Error::Timeout {
                    step: step_name,
                    limit: step.timeout,
                });
            }
            Ok(outcome) => outcome,
        };
        // Over its host budget, the step fails whatever the guest made of
        // the refusals it got after that.
        let over_budget = match &outcome {
            Err(trap) => host_budget_exceeded(store.data(), trap),
            Ok(_) => store.data().footprint.exceeded,
        };
        if let Some(exceeded) = over_budget {
            return Err(Error::ResourceLimit {
                step: step_name,
                what: exceeded.what,
                limit: exceeded.limit,
            });
        }
        let mask_now = || job.mask();
        let masked = |text: &str| mask_now().mask_str(text).into_owned();
        // A Rust guest's panic message, for the trap error: from "panicked
        // at" to the end of stderr, without the backtrace hint.
        let panic_message = stderr_text.find("panicked at").map(|at| {
            stderr_text[at..]
                .lines()
                .filter(|l| !l.starts_with("note: run with `RUST_BACKTRACE"))
                .collect::<Vec<_>>()
                .join(" ")
        });
        match outcome {
            Ok(Ok(output)) => {
                let mut value: serde_json::Value =
                    serde_json::from_str(&output).map_err(|e| Error::InvalidOutput {
                        step: step_name.clone(),
                        action: action.into(),
                        reason: e.to_string(),
                    })?;
                mask_now().mask_json(&mut value);
                Ok(value)
            }
            Ok(Err(ActionError::UnknownAction(available))) => Err(Error::UnknownAction {
                step: step_name,
                action: masked(action),
                available: masked(&available),
            }),
            Ok(Err(ActionError::InvalidInput(reason))) => Err(Error::InvalidInput {
                step: step_name,
                action: action.into(),
                reason: masked(truncate(&reason, 4096)),
            }),
            Ok(Err(ActionError::Failed(message))) => Err(Error::ActionFailed {
                step: step_name,
                action: action.into(),
                message: masked(truncate(&message, 4096)),
            }),
            Err(trap) => {
                if store.data().limiter.exceeded
                    || trap.downcast_ref::<MemoryLimitExceeded>().is_some()
                {
                    return Err(Error::MemoryLimit {
                        step: step_name,
                        limit: step.memory,
                    });
                }
                if let Some(limit) = trap.downcast_ref::<wasmtime::PoolConcurrencyLimitError>() {
                    return Err(Error::Busy {
                        step: step_name,
                        reason: limit.to_string(),
                    });
                }
                if let Some(wasmtime::Trap::Interrupt) = trap.downcast_ref::<wasmtime::Trap>() {
                    return Err(Error::Timeout {
                        step: step_name,
                        limit: step.timeout,
                    });
                }
                let what = match trap.downcast_ref::<wasmtime::Trap>() {
                    Some(wasmtime::Trap::StackOverflow) => "stack overflow".to_string(),
                    Some(wasmtime::Trap::UnreachableCodeReached) if panic_message.is_some() => {
                        "the guest panicked".to_string()
                    }
                    Some(t) => t.to_string(),
                    None => format!("{trap:#}"),
                };
                let message = match panic_message {
                    Some(panic) => format!("{what}: {panic}"),
                    None => what,
                };
                Err(Error::Trap {
                    step: step_name,
                    message: masked(truncate(&message, 4096)),
                })
            }
        }
    }
}

/// The trap a step over its host budget gets at its next epoch tick.
#[derive(Debug, thiserror::Error)]
#[error("host resource budget exceeded")]
struct ResourceLimitExceeded;

/// Which host budget a trap came from, if any: the footprint check found
/// the step over budget, or the resource table refused an entry.
fn host_budget_exceeded(state: &StepState, trap: &wasmtime::Error) -> Option<Exceeded> {
    if let Some(exceeded) = state.footprint.exceeded {
        return Some(exceeded);
    }
    matches!(trap.downcast_ref(), Some(ResourceTableError::Full))
        .then(|| state.footprint.table_full())
}

/// Moves captured stdout and stderr into the job log, masked, a line per
/// event; returns the masked stderr text.
fn log_output(guest: &mut GuestScope, stdout: &Capture, stderr: &Capture) -> String {
    let mut stderr_text = String::new();
    for (capture, source, level) in [
        (stdout, LogSource::Stdout, Level::Info),
        (stderr, LogSource::Stderr, Level::Warn),
    ] {
        let (bytes, truncated) = capture.take();
        if bytes.is_empty() {
            continue;
        }
        let channel = match source {
            LogSource::Stderr => Channel::Stderr,
            _ => Channel::Stdout,
        };
        if guest.misuse.check(channel, &bytes) {
            continue;
        }
        let text = guest
            .job
            .mask()
            .mask_str(&String::from_utf8_lossy(&bytes))
            .into_owned();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            guest.push_log(level, source, line);
        }
        if truncated {
            guest.push_log(
                Level::Warn,
                LogSource::Runtime,
                "output limit reached; the rest was dropped",
            );
        }
        if source == LogSource::Stderr {
            stderr_text = text;
        }
    }
    stderr_text
}

/// Searches what the action returned (output or error) and the trap
/// message for connection values.
fn check_produced(
    misuse: &StepMisuse,
    outcome: &std::result::Result<std::result::Result<String, ActionError>, wasmtime::Error>,
) {
    match outcome {
        Ok(Ok(output)) => {
            misuse.check(Channel::Output, output.as_bytes());
        }
        Ok(Err(
            ActionError::UnknownAction(text)
            | ActionError::InvalidInput(text)
            | ActionError::Failed(text),
        )) => {
            misuse.check(Channel::Error, text.as_bytes());
        }
        Err(trap) => {
            misuse.check(Channel::Error, format!("{trap:#}").as_bytes());
        }
    }
}

/// One step run's egress without a guest: see [`Job::__egress_probe`].
///
/// A run of a step builds its egress scope once, when it is instantiated;
/// the probe does the same, and starts a new run when the current one has
/// used its `max_requests_per_step`, so each request costs what one more
/// request of a step costs.
#[cfg(feature = "bench-probes")]
#[doc(hidden)]
pub struct EgressProbe<'a> {
    job: &'a Job,
    step: &'a Step,
    secrets: HashMap<String, Arc<JobSecret>>,
    scope: std::sync::Mutex<Option<Arc<crate::egress::Scope>>>,
}

#[cfg(feature = "bench-probes")]
impl EgressProbe<'_> {
    /// The current run's scope, or a new run's when it is used up.
    fn scope(&self) -> std::result::Result<Arc<crate::egress::Scope>, String> {
        let mut current = self.scope.lock().unwrap_or_else(PoisonError::into_inner);
        let limit = self.job.engine.inner.egress.max_requests_per_step();
        match current.as_ref() {
            Some(scope) if scope.requests_sent() < limit => Ok(scope.clone()),
            _ => {
                let scope = self
                    .job
                    .scope(
                        self.step,
                        &self.secrets,
                        self.job.event_log(self.step),
                        self.job.step_misuse(self.step),
                    )
                    .map_err(|e| e.to_string())?;
                *current = Some(scope.clone());
                Ok(scope)
            }
        }
    }

    /// The placeholders of the step's secrets in this job, by alias, to
    /// build requests with.
    pub fn placeholders(&self) -> HashMap<String, String> {
        self.secrets
            .iter()
            .map(|(alias, s)| (alias.clone(), s.placeholder.clone()))
            .collect()
    }

    /// Sends one request exactly as the guest's `wasi:http` hook does and
    /// reads the whole (scrubbed) response body.
    ///
    /// # Errors
    ///
    /// The refusal or transport error, as text.
    pub async fn round_trip(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> std::result::Result<(u16, bytes::Bytes), String> {
        use http_body_util::BodyExt;
        let request = request.map(|b| {
            http_body_util::Full::new(b)
                .map_err(|never: std::convert::Infallible| match never {})
                .boxed_unsync()
        });
        let response = self
            .job
            .engine
            .inner
            .egress
            .clone()
            .send(self.scope()?, request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }
}

//! The daemon's job runner: a dispatcher, bounded concurrency per
//! workspace and in all, step-by-step commits, resumption after a crash,
//! cancellation, and the scheduler that turns cron slots into jobs.
//!
//! # Delivery guarantee
//!
//! A job is acknowledged (202) only after it is committed. Each step's
//! masked record and its unmasked output (sealed, for the next steps' pills)
//! are committed before the next step starts. After a crash (`kill -9`, a
//! power loss) the daemon starts every job that was queued or running, and
//! a running job resumes after its last committed step. So every
//! acknowledged job runs to an end, and each step completes **at least
//! once**: a step that was running at the crash runs again, so steps that
//! call non-idempotent APIs should pass an idempotency key upstream (the
//! job id is available as a pill). The unmasked outputs are deleted when the
//! job ends.
//!
//! # The backlog is in the store
//!
//! The runner holds no queue of its own: it claims jobs from the store (see
//! [`wrun_store::claims`]), never more than [`WINDOW`] times what it can run
//! at once (`[workers] concurrency`, and `per_workspace` of one workspace),
//! so its memory does not grow with the backlog. The few claimed ahead wait
//! for a running slot in memory, so a slot that frees starts the next job
//! at once instead of after a claim's round trip to the store. A new job wakes the
//! dispatcher; a poll every second finds jobs that other nodes queued or
//! whose claim lapsed. Every start, step commit and end is fenced by the
//! claim's epoch: a node whose claim lapsed and was taken over stops at its
//! next write and writes nothing.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, oneshot, watch};
use wrun_runtime::events::{AuditEvent, AuditKind, Event, Observer};
use wrun_runtime::manifest::Manifest;
use wrun_runtime::recipe::{Recipe, StepRecord, StepStatus, Stop};
use wrun_runtime::{Engine, JobOptions};
use wrun_store::claims::{Claim, ClaimRequest};

use super::audit::{Entry, Outcome};
use super::metrics::Metrics;
use super::schedule::Schedule;
use super::storage::{JobState, NewJob, StepCommit, Storage, StorageError};
use wrun_store::UnixMillis;

/// How the runner is sized, and under what name it claims jobs.
#[derive(Debug, Clone)]
pub struct RunnerLimits {
    /// Jobs running at once in all (and claimed at once: the window).
    pub concurrency: usize,
    /// Jobs running at once per workspace.
    pub per_workspace: usize,
    /// This node's name in the store (`[workers] node`).
    pub node: String,
    /// How long its claims outlive its last renewal.
    pub lease: Duration,
}

/// How many times its running slots a node claims at most (in all and per
/// workspace): the jobs past its slots wait in memory for one to free.
const WINDOW: usize = 2;

/// How often the dispatcher looks for work it was not woken for (jobs
/// queued by another node, claims that lapsed), and recounts the backlog.
const POLL: Duration = Duration::from_secs(1);

/// A loaded recipe and the deployment (`updated_at`) it was loaded from.
type LoadedRecipe = (UnixMillis, Arc<Recipe>);

/// Held while a recipe is loaded for jobs.
type LoadLock = Arc<tokio::sync::Mutex<()>>;

/// Runs jobs.
pub struct Runner {
    storage: Arc<dyn Storage>,
    engine: Engine,
    metrics: Metrics,
    limits: RunnerLimits,
    /// Wakes the dispatcher: a job was queued or ended.
    wake: Notify,
    /// Claims this node holds, per workspace.
    held: Mutex<HashMap<String, usize>>,
    /// Running slots in all.
    global: Arc<Semaphore>,
    /// Running slots per workspace.
    per_workspace: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// When this node's lease was last renewed.
    renewed: Mutex<Option<tokio::time::Instant>>,
    recipes: Mutex<HashMap<(String, String), LoadedRecipe>>,
    /// One lock per recipe held while it is loaded, so jobs that find it
    /// missing from `recipes` wait for one load instead of each compiling
    /// it again (a burst of webhooks after a deploy or a restart).
    loading: Mutex<HashMap<(String, String), LoadLock>>,
    running: Mutex<HashMap<String, Arc<AtomicBool>>>,
    /// Jobs queued or running in the store, as last counted (every
    /// [`POLL`]) plus those queued through this node since: what
    /// `[workers] max_backlog` bounds.
    backlog: AtomicUsize,
    /// Requests waiting for a job's end (webhooks in response mode).
    waiting: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
    stopping: watch::Sender<bool>,
    /// Outbound limits per connection, shared by every job.
    limiter: Arc<crate::limits::ConnectionLimiter>,
    /// The operator's alert webhook, once configured.
    alert_webhook: Arc<std::sync::OnceLock<String>>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// A job id for a new job.
pub fn new_job_id() -> String {
    format!("job_{:032x}", rand::random::<u128>())
}

/// Reports the runtime's events: refusals and secret misuse go to the audit
/// log and the metrics.
///
/// A guest looping over refused requests must not flood the audit log, yet
/// no refusal may go unrecorded: each kind is written one entry per event up
/// to its cap, and what is past the cap is counted and written as one
/// `*.more` entry with the count when the job ends ([`JobObserver::overflow`]).
struct JobObserver {
    storage: Arc<dyn Storage>,
    metrics: Metrics,
    /// Whose job this is, for the aggregate entries.
    workspace: String,
    /// The job's id.
    job: String,
    /// The job's recipe.
    recipe: String,
    /// Egress refusals (and other runtime refusals).
    refusals: AuditBudget,
    /// Secret misuse: a generous cap, never silently dropped.
    misuses: AuditBudget,
}

/// Most egress refusal entries written one by one per job.
const MAX_REFUSALS_PER_JOB: usize = 100;

/// Most secret misuse entries written one by one per job.
const MAX_MISUSES_PER_JOB: usize = 1000;

/// A per-job cap on audit entries of one kind, counting what is past it.
#[derive(Debug)]
struct AuditBudget {
    /// Entries allowed one by one.
    cap: usize,
    /// Events seen so far.
    seen: AtomicUsize,
}

impl AuditBudget {
    fn new(cap: usize) -> AuditBudget {
        AuditBudget {
            cap,
            seen: AtomicUsize::new(0),
        }
    }

    /// Counts one event; `true` if it gets an entry of its own.
    fn take(&self) -> bool {
        self.seen.fetch_add(1, Ordering::Relaxed) < self.cap
    }

    /// How many events had no entry of their own.
    fn over(&self) -> usize {
        self.seen.load(Ordering::Relaxed).saturating_sub(self.cap)
    }
}

impl JobObserver {
    fn new(storage: Arc<dyn Storage>, metrics: Metrics, job: &super::storage::JobSummary) -> Self {
        JobObserver {
            storage,
            metrics,
            workspace: job.workspace.clone(),
            job: job.id.clone(),
            recipe: job.recipe.clone(),
            refusals: AuditBudget::new(MAX_REFUSALS_PER_JOB),
            misuses: AuditBudget::new(MAX_MISUSES_PER_JOB),
        }
    }

    /// One entry per kind whose cap was passed, with how many events it
    /// stands for; written when the job ends.
    fn overflow(&self) -> Vec<Entry> {
        [
            ("egress.refused.more", &self.refusals),
            ("secret.misuse.more", &self.misuses),
        ]
        .into_iter()
        .filter(|(_, budget)| budget.over() > 0)
        .map(|(action, budget)| Entry {
            workspace: Some(self.workspace.clone()),
            actor: format!("job:{}", self.job),
            action: action.into(),
            target: format!("recipe:{}", self.recipe),
            source: None,
            outcome: Outcome::Denied,
            detail: json!({ "count": budget.over(), "written_singly": budget.cap }),
        })
        .collect()
    }
}

impl Observer for JobObserver {
    fn event(&self, event: &Event) {
        if let Event::Refused { .. } = event {
            self.metrics.egress_refused();
        }
    }

    fn audit(&self, event: &AuditEvent) {
        let (action, budget) = match event.kind {
            AuditKind::SecretMisuse => {
                self.metrics.secret_misuse();
                ("secret.misuse", &self.misuses)
            }
            AuditKind::EgressRefused => ("egress.refused", &self.refusals),
            _ => ("runtime.refused", &self.refusals),
        };
        if !budget.take() {
            return;
        }
        let entry = Entry {
            workspace: Some(event.workspace.clone()),
            actor: format!("job:{}", event.job),
            action: action.into(),
            target: format!("recipe:{}/step:{}", event.recipe, event.step),
            source: None,
            outcome: Outcome::Denied,
            detail: json!({
                "destination": event.destination,
                "connection": event.connection,
                "reason": event.reason,
            }),
        };
        let storage = Arc::clone(&self.storage);
        tokio::spawn(async move {
            if let Err(e) = storage.audit(vec![entry]).await {
                tracing::error!(error = %e, "an audit entry from the runtime was not written");
            }
        });
    }
}

impl Runner {
    /// A runner and its dispatcher task.
    pub fn start(
        storage: Arc<dyn Storage>,
        engine: Engine,
        metrics: Metrics,
        limits: RunnerLimits,
    ) -> Arc<Runner> {
        let (stopping, _) = watch::channel(false);
        let (limiter, alerts) = crate::limits::ConnectionLimiter::new(Arc::clone(&storage));
        let limiter = Arc::new(limiter);
        let alert_webhook = Arc::new(std::sync::OnceLock::new());
        tokio::spawn(crate::limits::handle_alerts(
            alerts,
            crate::limits::AlertSinks {
                storage: Arc::clone(&storage),
                metrics: metrics.clone(),
                engine: engine.clone(),
                webhook: Arc::clone(&alert_webhook),
            },
        ));
        // The egress trail reaches the store every few seconds.
        let flushing = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(limiter) = flushing.upgrade() else {
                    break;
                };
                if let Err(e) = limiter.flush().await {
                    tracing::error!(error = %e, "connection usage could not be stored");
                }
            }
        });
        let global = Arc::new(Semaphore::new(limits.concurrency.max(1)));
        Arc::new(Runner {
            limiter,
            alert_webhook,
            storage,
            engine,
            metrics,
            limits,
            wake: Notify::new(),
            held: Mutex::new(HashMap::new()),
            global,
            per_workspace: Mutex::new(HashMap::new()),
            renewed: Mutex::new(None),
            recipes: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
            backlog: AtomicUsize::new(0),
            waiting: Mutex::new(HashMap::new()),
            stopping,
        })
    }

    /// Starts the lease renewal and the dispatcher, once the claims of this
    /// node's previous run were released ([`Runner::recover`]).
    fn dispatch(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let renew = (self.limits.lease / 4).max(Duration::from_millis(250));
        let mut stopping = self.stopping.subscribe();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(renew);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopping.changed() => return,
                }
                let Some(runner) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = runner.renew().await {
                    tracing::error!(error = %e, "the lease on this node's jobs could not be renewed");
                }
            }
        });
        let weak = Arc::downgrade(self);
        let mut stopping = self.stopping.subscribe();
        tokio::spawn(async move {
            // `recover` has just counted.
            let mut counted = tokio::time::Instant::now();
            loop {
                let Some(runner) = weak.upgrade() else {
                    return;
                };
                if *runner.stopping.borrow() {
                    return;
                }
                if counted.elapsed() >= POLL {
                    counted = tokio::time::Instant::now();
                    runner.count_backlog().await;
                }
                let failed = match runner.claim().await {
                    Ok(()) => false,
                    Err(e) => {
                        tracing::error!(error = %e, "jobs could not be claimed");
                        true
                    }
                };
                let wait = if failed {
                    POLL
                } else {
                    POLL.saturating_sub(counted.elapsed())
                };
                let woken = async {
                    if failed {
                        std::future::pending::<()>().await;
                    }
                    runner.wake.notified().await;
                };
                tokio::select! {
                    () = woken => {}
                    () = tokio::time::sleep(wait) => {}
                    _ = stopping.changed() => return,
                }
            }
        });
    }

    /// Renews this node's lease on its claims.
    async fn renew(&self) -> Result<(), StorageError> {
        let lease_ms = i64::try_from(self.limits.lease.as_millis()).unwrap_or(i64::MAX);
        self.storage.heartbeat(&self.limits.node, lease_ms).await?;
        *self.renewed.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(tokio::time::Instant::now());
        Ok(())
    }

    /// Whether this node's lease is live: renewed within the lease time
    /// (a node that cannot renew may see its jobs taken over).
    pub fn lease_live(&self) -> bool {
        self.renewed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|at| at.elapsed() < self.limits.lease)
    }

    /// Recounts the backlog in the store.
    async fn count_backlog(&self) {
        match self.storage.backlog().await {
            Ok(n) => {
                self.backlog
                    .store(usize::try_from(n).unwrap_or(usize::MAX), Ordering::SeqCst);
                let held = self.held_total();
                self.metrics.queued_now(n.saturating_sub(held as u64));
            }
            Err(e) => tracing::error!(error = %e, "the backlog could not be counted"),
        }
    }

    /// Claims in all held by this node.
    fn held_total(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .sum()
    }

    /// Claims what this node has room for and starts it.
    async fn claim(self: &Arc<Self>) -> Result<(), StorageError> {
        let held = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let total: usize = held.values().sum();
        let max = (self.limits.concurrency * WINDOW).saturating_sub(total);
        // With every running slot busy or spoken for, claim in batches of
        // half the slots: one claim's transaction then serves many jobs.
        if max == 0 || (total >= self.limits.concurrency && max < self.limits.concurrency / 2) {
            return Ok(());
        }
        let request = ClaimRequest {
            max,
            per_workspace: self.limits.per_workspace * WINDOW,
            held,
        };
        let claims = self.storage.claim_jobs(&self.limits.node, request).await?;
        if claims.is_empty() {
            return Ok(());
        }
        {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            for claim in &claims {
                *held.entry(claim.workspace.clone()).or_default() += 1;
            }
            self.metrics.claims_held(held.values().sum());
        }
        for claim in claims {
            if claim.takeover {
                self.metrics.takeover();
            }
            let runner = Arc::clone(self);
            tokio::spawn(async move { runner.run_job(claim).await });
        }
        Ok(())
    }

    /// Where alerts on connection use are posted (`[alerts] webhook_url`);
    /// set once.
    pub fn set_alert_webhook(&self, url: String) {
        let _ = self.alert_webhook.set(url);
    }

    /// Stores the connection usage counted so far (at shutdown).
    ///
    /// # Errors
    ///
    /// The store refused it.
    pub async fn flush_usage(&self) -> Result<(), StorageError> {
        self.limiter.flush().await
    }

    /// Takes this node's lease, releases the claims of its previous run
    /// (jobs it was running when it stopped resume at once, after their
    /// last committed step) and starts claiming jobs. Returns the backlog:
    /// the jobs queued or running in the store.
    pub async fn recover(self: &Arc<Self>) -> Result<u64, StorageError> {
        self.renew().await?;
        let released = self.storage.release_claims(&self.limits.node).await?;
        if released > 0 {
            tracing::info!(
                jobs = released,
                node = %self.limits.node,
                "claims of this node's previous run released"
            );
        }
        let backlog = self.storage.backlog().await?;
        self.backlog.store(
            usize::try_from(backlog).unwrap_or(usize::MAX),
            Ordering::SeqCst,
        );
        self.dispatch();
        Ok(backlog)
    }

    /// Wakes the dispatcher for a job just committed to the store.
    pub fn submit(&self) {
        self.backlog.fetch_add(1, Ordering::SeqCst);
        self.metrics.job_queued();
        self.wake.notify_one();
    }

    /// Jobs queued or running in the store, as last counted plus those
    /// queued through this node since.
    pub fn backlog(&self) -> usize {
        self.backlog.load(Ordering::SeqCst)
    }

    /// Resolves when this runner has finished with job `id` (ended it, or
    /// found it already ended). Register before submitting the job, or
    /// check the job's state after registering, so the end is not missed.
    pub fn watch(&self, id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(id.to_string())
            .or_default()
            .push(tx);
        rx
    }

    /// Drops the watches of a job whose requests have stopped waiting.
    pub fn unwatch(&self, id: &str) {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(list) = waiting.get_mut(id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                waiting.remove(id);
            }
        }
    }

    /// Asks a running job to stop after its current step.
    pub fn cancel(&self, id: &str) {
        if let Some(flag) = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
        {
            flag.store(true, Ordering::SeqCst);
        }
    }

    /// The engine (for checking a recipe before it is deployed).
    pub fn engine(&self) -> Engine {
        self.engine.clone()
    }

    /// Drops a recipe's loaded components (after it was deleted).
    pub fn forget(&self, workspace: &str, recipe: &str) {
        let key = (workspace.to_string(), recipe.to_string());
        self.recipes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
        self.loading
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
    }

    /// The step whose output is a recipe's output (`[recipe] output`), or
    /// `None` for the last step that succeeded. Read from the loaded
    /// recipe, which the job that just ended left in the cache.
    ///
    /// # Errors
    ///
    /// The recipe is no longer deployed or cannot be loaded.
    pub async fn output_step(
        &self,
        workspace: &str,
        recipe: &str,
    ) -> Result<Option<String>, String> {
        Ok(self
            .recipe(workspace, recipe)
            .await?
            .manifest()
            .recipe
            .output
            .clone())
    }

    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Stops starting jobs and waits up to `grace` for running ones to end.
    /// Jobs still running after that stay `running` in the store and
    /// resume, after their last committed step, at the next start.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.stopping.send(true);
        let deadline = tokio::time::Instant::now() + grace;
        while self.running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The loaded recipe, from the cache while its deployment is unchanged.
    async fn recipe(&self, workspace: &str, name: &str) -> Result<Arc<Recipe>, String> {
        let not_deployed = || format!("recipe `{name}` is not deployed");
        // Every job checks the version only; the manifest and components are
        // read when the deployment changed.
        let version = self
            .storage
            .recipe_version(workspace, name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(not_deployed)?;
        let key = (workspace.to_string(), name.to_string());
        let cached = |runner: &Self| {
            runner
                .recipes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&key)
                .filter(|(cached, _)| *cached == version)
                .map(|(_, recipe)| Arc::clone(recipe))
        };
        if let Some(recipe) = cached(self) {
            return Ok(recipe);
        }
        let lock = Arc::clone(
            self.loading
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(key.clone())
                .or_default(),
        );
        let _loading = lock.lock().await;
        // Loaded by the job this one waited for.
        if let Some(recipe) = cached(self) {
            return Ok(recipe);
        }
        let stored = self
            .storage
            .recipe(workspace, name)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(not_deployed)?;
        let manifest = Manifest::parse(&stored.manifest).map_err(|e| e.to_string())?;
        let mut bytes = HashMap::new();
        for (path, sha) in &stored.components {
            let component = self
                .storage
                .component(sha)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| {
                    format!(
                        "component {path} is missing from the store (a recipe imported by \
                         `wrun import` before schema version 3 has none): import or deploy it again"
                    )
                })?;
            bytes.insert(path.clone(), component);
        }
        self.metrics.record_recipe_load();
        let engine = self.engine.clone();
        let recipe = tokio::task::spawn_blocking(move || {
            Recipe::load(&engine, manifest, |path| {
                let key = path.to_string_lossy().replace('\\', "/");
                bytes
                    .get(&key)
                    .cloned()
                    .ok_or_else(|| std::io::Error::other(format!("{key} is not in the deployment")))
            })
        })
        .await
        .map_err(|e| format!("loading the recipe failed: {e}"))?
        .map_err(|e| e.to_string())?;
        let recipe = Arc::new(recipe);
        self.recipes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, (stored.updated_at, Arc::clone(&recipe)));
        Ok(recipe)
    }

    /// Runs (or resumes) one claimed job to its end, or until its claim is
    /// lost.
    async fn run_job(self: Arc<Self>, claim: Claim) {
        let id = claim.id.clone();
        let cancel = Arc::new(AtomicBool::new(false));
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), Arc::clone(&cancel));
        let result = self.run_job_inner(&claim, &cancel).await;
        let _ = self
            .backlog
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(n) = held.get_mut(&claim.workspace) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    held.remove(&claim.workspace);
                }
            }
            self.metrics.claims_held(held.values().sum());
        }
        self.wake.notify_one();
        let waiting = self
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        for tx in waiting.into_iter().flatten() {
            let _ = tx.send(());
        }
        match result {
            Ok(()) => {}
            Err(StorageError::LeaseLost { .. }) => {
                self.metrics.lease_lost();
                tracing::warn!(
                    job = %id,
                    node = %self.limits.node,
                    "another node claimed this job after this node's claim lapsed: stopped here"
                );
            }
            Err(e) => tracing::error!(job = %id, error = %e, "a job could not be run"),
        }
    }

    /// The running slots of a workspace.
    fn workspace_slots(&self, workspace: &str) -> Arc<Semaphore> {
        let mut map = self
            .per_workspace
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            map.entry(workspace.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.limits.per_workspace.max(1)))),
        )
    }

    async fn run_job_inner(&self, claim: &Claim, cancel: &AtomicBool) -> Result<(), StorageError> {
        let ws_slots = self.workspace_slots(&claim.workspace);
        let Ok(_ws_permit) = ws_slots.acquire_owned().await else {
            return Ok(());
        };
        let Ok(_permit) = Arc::clone(&self.global).acquire_owned().await else {
            return Ok(());
        };
        if *self.stopping.borrow() {
            return Ok(());
        }
        let (id, workspace) = (claim.id.as_str(), claim.workspace.as_str());
        let fence = (self.limits.node.as_str(), claim.epoch);
        let Some(started) = self.storage.start_job(&self.limits.node, claim).await? else {
            return Ok(());
        };
        self.metrics.job_started();
        let summary = started.summary;
        let recipe = match self.recipe(&summary.workspace, &summary.recipe).await {
            Ok(r) => r,
            Err(reason) => {
                let end = self
                    .storage
                    .finish_job(
                        fence,
                        workspace,
                        id,
                        JobState::Failed,
                        Some(reason),
                        Vec::new(),
                    )
                    .await?;
                self.metrics.job_finished(end);
                return Ok(());
            }
        };
        let env = self
            .storage
            .environment(&summary.workspace, &summary.environment)
            .await?;
        self.limiter.refresh(&summary.workspace).await?;
        let observer = Arc::new(JobObserver::new(
            Arc::clone(&self.storage),
            self.metrics.clone(),
            &summary,
        ));
        let mut options = JobOptions::new(&summary.workspace, &summary.recipe)
            .guard(Arc::clone(&self.limiter) as Arc<dyn wrun_runtime::guard::ConnectionGuard>)
            .connections(
                self.storage
                    .connections(&summary.workspace, &summary.environment),
            )
            .observer(Arc::clone(&observer) as Arc<dyn Observer>);
        options.id = summary.id.clone();
        for (k, v) in env.properties {
            options = options.property(k, v);
        }
        let job = self.engine.job(options);
        let storage = Arc::clone(&self.storage);
        let metrics = self.metrics.clone();
        let (job_id, workspace) = (summary.id.clone(), summary.workspace.clone());
        let job_ref = &job;
        // Set when a commit was refused because another node holds the job.
        let lost = AtomicBool::new(false);
        let lost_ref = &lost;
        let node = self.limits.node.clone();
        let mut checkpoint = |index: usize, record: &StepRecord, output: Option<&Value>| {
            let commit = StepCommit {
                job: job_id.clone(),
                workspace: workspace.clone(),
                claim: (node.clone(), claim.epoch),
                index,
                step: record.step.clone(),
                status: match record.status {
                    StepStatus::Succeeded => "succeeded",
                    StepStatus::Skipped => "skipped",
                    StepStatus::Failed => "failed",
                }
                .into(),
                history: serde_json::to_value(record).unwrap_or(Value::Null),
                checkpoint: output.map(|o| (o.clone(), job_ref.marked())),
            };
            metrics.step_finished(record.elapsed, record.status == StepStatus::Succeeded);
            let storage = Arc::clone(&storage);
            let cancelled = cancel.load(Ordering::SeqCst);
            async move {
                // A failed commit stops the job: it stays `running` and
                // resumes after its last committed step at the next start.
                // A refused one (another node holds the job) stops it
                // here for good.
                let go_on = storage.commit_step(commit).await.map_err(|e| {
                    if matches!(e, StorageError::LeaseLost { .. }) {
                        lost_ref.store(true, Ordering::SeqCst);
                    } else {
                        tracing::error!(error = %e, "a step could not be committed");
                    }
                    Stop
                })?;
                // Cancelled through this node, or through another (the
                // store says so).
                if !go_on {
                    cancel.store(true, Ordering::SeqCst);
                }
                if cancelled || !go_on {
                    Err(Stop)
                } else {
                    Ok(())
                }
            }
        };
        let report = recipe
            .run_from(&job, &started.payload, started.resume, &mut checkpoint)
            .await;
        if lost.load(Ordering::SeqCst) {
            return Err(StorageError::LeaseLost {
                job: id.to_string(),
            });
        }
        let (state, error) = if report.ok {
            (JobState::Succeeded, None)
        } else if cancel.load(Ordering::SeqCst) {
            (JobState::Cancelled, None)
        } else {
            let error = report
                .steps
                .iter()
                .rev()
                .find_map(|s| s.error.clone())
                .map(|e| job.mask_text(&e));
            match error {
                Some(e) => (JobState::Failed, Some(e)),
                // No step failed: a commit failed; leave it for recovery,
                // but what was past the audit caps is recorded now.
                None => {
                    let overflow = observer.overflow();
                    if !overflow.is_empty() {
                        self.storage.audit(overflow).await?;
                    }
                    return Ok(());
                }
            }
        };
        let end = self
            .storage
            .finish_job(fence, &workspace, id, state, error, observer.overflow())
            .await?;
        self.metrics.job_finished(end);
        Ok(())
    }
}

/// Fires schedules: every `tick`, each schedule whose latest slot is newer
/// than the one it last fired for gets one job for that slot (missed slots
/// while the daemon was down collapse into one run).
pub fn start_scheduler(
    storage: Arc<dyn Storage>,
    runner: Arc<Runner>,
    tick: Duration,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        loop {
            tokio::select! {
                _ = interval.tick() => {}
                _ = stop.changed() => return,
            }
            let schedules = match storage.schedules().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "schedules could not be read");
                    continue;
                }
            };
            let now = UnixMillis::now();
            for trigger in schedules {
                let (Some(cron), Some(tz)) = (&trigger.cron, &trigger.timezone) else {
                    continue;
                };
                let Ok(schedule) = Schedule::parse(cron, tz) else {
                    continue;
                };
                // A new schedule starts from its creation, not from 1970.
                let not_before = trigger.last_slot.unwrap_or(trigger.created_at);
                let Some(slot) = schedule.latest_at_or_before(now, not_before) else {
                    continue;
                };
                let job = NewJob {
                    id: new_job_id(),
                    workspace: trigger.workspace.clone(),
                    recipe: trigger.recipe.clone(),
                    environment: trigger.environment.clone(),
                    trigger_kind: "schedule".into(),
                    payload: json!({
                        "schedule": trigger.id,
                        "slot": slot,
                        "input": trigger.input.clone().unwrap_or(Value::Null),
                    }),
                    idempotency_key: None,
                    rerun_of: None,
                    created_at: UnixMillis::now(),
                };
                match storage.fire_schedule(&trigger.id, slot, job).await {
                    Ok(true) => runner.submit(),
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "a schedule could not fire"),
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_audit_budget_counts_what_is_past_its_cap() {
        let budget = AuditBudget::new(3);
        let singly = (0..10).filter(|_| budget.take()).count();
        assert_eq!(singly, 3);
        assert_eq!(budget.over(), 7);
        let untouched = AuditBudget::new(3);
        assert!(untouched.take());
        assert_eq!(untouched.over(), 0);
    }
}

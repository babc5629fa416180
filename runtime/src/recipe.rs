//! Running a whole recipe: its steps in order, each step's input built from
//! the trigger payload and earlier outputs through data pills, optional
//! conditions, and retries with exponential backoff.
//!
//! [`Recipe::load`] compiles and binds every step up front, so a recipe with
//! a bad component or a missing grant fails before anything runs.
//! [`Recipe::run`] runs the steps in one [`Job`], so they share placeholders
//! and the mask set, and reports each step as it finishes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::engine::{Engine, Step};
use crate::error::Error;
use crate::events::Event;
use crate::job::Job;
use crate::manifest::pills::{PillContext, truthy};
use crate::manifest::{Manifest, RetryPolicy, StepSpec};

/// A recipe whose components are compiled and bound to their steps.
#[derive(Debug, Clone)]
pub struct Recipe {
    manifest: Manifest,
    steps: Vec<(StepSpec, Step)>,
}

/// Why a recipe could not be loaded: one entry per step at fault.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct LoadErrors(pub Vec<Error>);

/// How one step of a run ended.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// The action returned an output.
    Succeeded,
    /// The step's condition was falsy.
    Skipped,
    /// Every attempt failed, or its input could not be built.
    Failed,
}

/// The record of one step of a run, masked: what history stores.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepRecord {
    /// The step.
    pub step: String,
    /// How it ended.
    pub status: StepStatus,
    /// Attempts made (0 when skipped or when its input failed).
    pub attempts: u32,
    /// Wall-clock time, all attempts and backoffs included.
    #[serde(rename = "elapsed_ms", with = "duration_ms")]
    pub elapsed: Duration,
    /// The input the step received, masked.
    pub input: Option<Value>,
    /// The stored output (secrets and `mask` fields masked).
    pub output: Option<Value>,
    /// The error of the last attempt, masked.
    pub error: Option<String>,
    /// Events of all attempts.
    pub events: Vec<Event>,
}

/// The outcome of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunReport {
    /// The recipe's name.
    pub recipe: String,
    /// The job's identifier.
    pub job: String,
    /// Whether every step succeeded or was skipped.
    pub ok: bool,
    /// One record per step that was reached, in order.
    pub steps: Vec<StepRecord>,
    /// Wall-clock time of the run.
    #[serde(rename = "elapsed_ms", with = "duration_ms")]
    pub elapsed: Duration,
}

/// Where [`Recipe::run_from`] starts: the index of the first step to run
/// and the unmasked outputs of the steps before it.
#[derive(Clone, Default)]
pub struct Resume {
    /// Index of the first step to run.
    pub next: usize,
    /// Outputs of completed steps by step name, as the pills see them.
    pub outputs: BTreeMap<String, Value>,
    /// Values the guests of completed steps marked as sensitive
    /// ([`Job::marked`]): restored into the job before it goes on.
    pub marked: Vec<String>,
}

impl std::fmt::Debug for Resume {
    /// Leaves out the outputs and marked values: they are unmasked.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume")
            .field("next", &self.next)
            .field("outputs", &self.outputs.len())
            .field("marked", &self.marked.len())
            .finish()
    }
}

/// Returned by a [`Recipe::run_from`] checkpoint to end the run early (the
/// job was cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stop;

mod duration_ms {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }
}

/// Errors that another attempt may cure: a failure reported by the action
/// (an upstream error), a timeout, a trap, a busy engine. A bad input, an
/// unknown action, a memory limit or a missing connection fail at once.
fn retryable(error: &Error) -> bool {
    matches!(
        error,
        Error::ActionFailed { .. }
            | Error::Timeout { .. }
            | Error::Trap { .. }
            | Error::Busy { .. }
    )
}

/// The pause before attempt `attempt + 1` (`attempt` counts from 1).
fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    policy
        .backoff
        .saturating_mul(factor)
        .min(policy.max_backoff)
}

impl Recipe {
    /// Compiles every step's component (through the engine's cache) and
    /// binds it with the step's grants. `read` returns a component's bytes
    /// for a path of the manifest.
    ///
    /// # Errors
    ///
    /// Every step that fails, at once: unreadable or invalid components,
    /// grants that do not parse, imports without a grant.
    pub fn load(
        engine: &Engine,
        manifest: Manifest,
        mut read: impl FnMut(&Path) -> std::io::Result<Vec<u8>>,
    ) -> Result<Recipe, LoadErrors> {
        let mut errors = Vec::new();
        let mut steps = Vec::new();
        // Steps that run the same component share one compiled copy: it is
        // read and compiled (or fetched from the compile cache) once.
        let mut loaded: BTreeMap<&Path, crate::engine::Component> = BTreeMap::new();
        for spec in &manifest.steps {
            let component = match loaded.get(spec.component.as_path()) {
                Some(component) => component.clone(),
                None => {
                    let bytes = match read(&spec.component) {
                        Ok(bytes) => bytes,
                        Err(e) => {
                            errors.push(Error::Compile {
                                component: spec.component.display().to_string(),
                                reason: format!("cannot read it ({e}); build it with `wrun build`"),
                            });
                            continue;
                        }
                    };
                    match engine.load(&spec.component.display().to_string(), &bytes) {
                        Ok(c) => loaded.entry(spec.component.as_path()).or_insert(c).clone(),
                        Err(e) => {
                            errors.push(e);
                            continue;
                        }
                    }
                }
            };
            let grants = match spec.grants.to_grants() {
                Ok(g) => g,
                Err(e) => {
                    errors.push(Error::InvalidGrant {
                        step: spec.name.clone(),
                        grant: e.grant,
                        reason: e.reason,
                    });
                    continue;
                }
            };
            match engine.step(&spec.name, &component, grants) {
                Ok(step) => steps.push((spec.clone(), step)),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(Recipe { manifest, steps })
        } else {
            Err(LoadErrors(errors))
        }
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The bound steps, in order, with their manifest entries.
    pub fn steps(&self) -> impl Iterator<Item = (&StepSpec, &Step)> {
        self.steps.iter().map(|(spec, step)| (spec, step))
    }

    /// Runs the recipe on a trigger payload within `job`. `progress` is
    /// called after each step with its record.
    pub async fn run(
        &self,
        job: &Job,
        trigger: &Value,
        mut progress: impl FnMut(&StepRecord),
    ) -> RunReport {
        let mut checkpoint = |_: usize, record: &StepRecord, _: Option<&Value>| {
            progress(record);
            std::future::ready(Ok::<(), Stop>(()))
        };
        self.run_from(job, trigger, Resume::default(), &mut checkpoint)
            .await
    }

    /// Runs the recipe from `resume` on: steps before `resume.next` are not
    /// run again, and their outputs (unmasked, as the next steps' pills see
    /// them) come from `resume.outputs`.
    ///
    /// `checkpoint` is awaited after every step that ran or was skipped, with
    /// the step's index, its record (masked) and its unmasked output. This is
    /// how a host makes a job durable step by step: it commits the output
    /// and, after a crash, resumes with [`Resume`] built from what it
    /// committed. A checkpoint that returns [`Stop`] ends the run there (a
    /// cancelled job); the report then has `ok == false` and the steps run
    /// so far.
    pub async fn run_from<F, Fut>(
        &self,
        job: &Job,
        trigger: &Value,
        resume: Resume,
        checkpoint: &mut F,
    ) -> RunReport
    where
        F: FnMut(usize, &StepRecord, Option<&Value>) -> Fut,
        Fut: std::future::Future<Output = Result<(), Stop>>,
    {
        let started = Instant::now();
        job.restore_marks(resume.marked);
        let mut outputs = resume.outputs;
        let mut records = Vec::new();
        let mut ok = true;
        for (index, (spec, step)) in self.steps.iter().enumerate().skip(resume.next) {
            let record = self.run_step(job, spec, step, trigger, &mut outputs).await;
            let failed = record.status == StepStatus::Failed;
            let stop = checkpoint(index, &record, outputs.get(&spec.name)).await;
            records.push(record);
            if failed || stop.is_err() {
                ok = false;
                break;
            }
        }
        RunReport {
            recipe: self.manifest.recipe.name.clone(),
            job: job.id().to_string(),
            ok,
            steps: records,
            elapsed: started.elapsed(),
        }
    }

    async fn run_step(
        &self,
        job: &Job,
        spec: &StepSpec,
        step: &Step,
        trigger: &Value,
        outputs: &mut BTreeMap<String, Value>,
    ) -> StepRecord {
        let started = Instant::now();
        let mut record = StepRecord {
            step: spec.name.clone(),
            status: StepStatus::Failed,
            attempts: 0,
            elapsed: Duration::ZERO,
            input: None,
            output: None,
            error: None,
            events: Vec::new(),
        };
        let ctx = PillContext {
            trigger,
            steps: &*outputs,
        };
        if let Some(condition) = &spec.condition {
            match condition.render(&ctx) {
                Ok(value) if !truthy(&value) => {
                    record.status = StepStatus::Skipped;
                    record.elapsed = started.elapsed();
                    return record;
                }
                Ok(_) => {}
                Err(e) => {
                    record.error = Some(job.mask_text(&format!("step `{}`: {e}", spec.name)));
                    record.elapsed = started.elapsed();
                    return record;
                }
            }
        }
        let input = match spec.input.render(&ctx) {
            Ok(input) => input,
            Err(e) => {
                record.error = Some(job.mask_text(&format!("step `{}`: {e}", spec.name)));
                record.elapsed = started.elapsed();
                return record;
            }
        };
        let attempts = spec.retry.attempts.max(1);
        let mut misuse = false;
        for attempt in 1..=attempts {
            record.attempts = attempt;
            match job.run(step, &spec.action, &input).await {
                Ok(out) => {
                    record.events.extend(out.events);
                    record.output = Some(out.stored);
                    record.status = StepStatus::Succeeded;
                    record.error = None;
                    outputs.insert(spec.name.clone(), out.output);
                    break;
                }
                Err(failure) => {
                    if let Error::SecretMisuse { .. } = failure.error {
                        // The masked input would show which part matched;
                        // earlier attempts' events likewise.
                        misuse = true;
                        record.events.clear();
                    }
                    record.events.extend(failure.events);
                    let again = attempt < attempts && retryable(&failure.error);
                    record.error = Some(failure.error.to_string());
                    if !again {
                        break;
                    }
                    tokio::time::sleep(backoff(&spec.retry, attempt)).await;
                }
            }
        }
        // Masked once the step ran, so that a value it marked is masked in
        // its own input too; a step caught misusing a secret records none.
        record.input = (!misuse).then(|| {
            serde_json::from_str(&job.mask_text(&input.to_string())).unwrap_or(Value::Null)
        });
        record.elapsed = started.elapsed();
        record
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let policy = RetryPolicy {
            attempts: 5,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        };
        let pauses: Vec<_> = (1..=4).map(|a| backoff(&policy, a).as_millis()).collect();
        assert_eq!(pauses, [100, 200, 350, 350]);
    }

    #[test]
    fn only_transient_errors_are_retried() {
        let step = || "s".to_string();
        assert!(retryable(&Error::ActionFailed {
            step: step(),
            action: "a".into(),
            message: "502".into()
        }));
        assert!(retryable(&Error::Timeout {
            step: step(),
            limit: Duration::from_secs(1)
        }));
        assert!(!retryable(&Error::InvalidInput {
            step: step(),
            action: "a".into(),
            reason: "x".into()
        }));
        assert!(!retryable(&Error::MemoryLimit {
            step: step(),
            limit: 1
        }));
    }
}

//! A job's life on PostgreSQL: queued (with its audit entry, deduplicated
//! by idempotency key), started, its steps committed, ended or cancelled.
//! Records are sealed as on every backend ([`crate::sealed`]); the caller
//! passes the workspace's data key and the audit key (the key cache is the
//! storage's, not the SQL layer's). Start, step commits and end are fenced
//! ([`super::claims::fence`]): only the claim's node at the claim's epoch
//! writes, and a refused write changes nothing.

use serde_json::Value;

use super::claims::fence;
use super::{PgStore, audit, pg_error};
use crate::UnixMillis;
use crate::audit::{AuditKey, Entry};
use crate::claims::Claim;
use crate::keys::DataKey;
use crate::sealed::{job_aad, open_json, resume, seal_json};
use crate::storage::{
    Enqueued, JobState, JobSummary, NewJob, StartedJob, StepCommit, StorageError, StorageResult,
};

impl PgStore {
    /// Commits a job and its audit entry in one transaction; a repeated
    /// idempotency key returns the first job instead.
    ///
    /// # Errors
    ///
    /// [`StorageError::NotFound`] if the recipe is not deployed (checked in
    /// the same transaction); the database refusing it.
    pub async fn enqueue(
        &self,
        dk: &DataKey,
        audit_key: &AuditKey,
        job: &NewJob,
        entry: Option<&Entry>,
    ) -> StorageResult<Enqueued> {
        let sealed = seal_json(
            dk,
            &job_aad(&job.workspace, &job.id, "payload"),
            &job.payload,
        )?;
        let doing = format!("queueing job {}", job.id);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error(&doing))?;
        let queued = insert_job(&tx, job, &sealed, None).await?;
        if let Enqueued::Duplicate(_) = queued {
            // The key was seen: the first job stands, nothing is audited.
            return Ok(queued);
        }
        if let Some(entry) = entry {
            audit::append_one(&tx, audit_key, entry).await?;
        }
        tx.commit().await.map_err(pg_error(&doing))?;
        Ok(Enqueued::New(job.id.clone()))
    }

    /// Marks a claimed job running and returns what it needs: its payload
    /// and where to resume. `None` if it has ended (cancelled meanwhile).
    ///
    /// # Errors
    ///
    /// [`StorageError::LeaseLost`] if `node` no longer holds the claim.
    pub async fn start_job(
        &self,
        dk: &DataKey,
        node: &str,
        claim: &Claim,
    ) -> StorageResult<Option<StartedJob>> {
        let doing = format!("starting job {}", claim.id);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error(&doing))?;
        let state = fence(&tx, &claim.id, node, claim.epoch).await?;
        if JobState::parse(&state).is_none_or(JobState::is_final) {
            return Ok(None);
        }
        let at = UnixMillis::now().0;
        let row = tx
            .query_one(
                "UPDATE jobs SET state = 'running', started_at = coalesce(started_at, $2) WHERE id = $1
                 RETURNING id, workspace, recipe, environment, trigger_kind, rerun_of, created_at, started_at, payload",
                &[&claim.id, &at],
            )
            .await
            .map_err(pg_error(&doing))?;
        let steps = tx
            .query(
                "SELECT idx, step, checkpoint FROM job_steps WHERE job = $1 ORDER BY idx",
                &[&claim.id],
            )
            .await
            .map_err(pg_error(&doing))?
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        tx.commit().await.map_err(pg_error(&doing))?;
        let summary = JobSummary {
            id: row.get(0),
            workspace: row.get(1),
            recipe: row.get(2),
            environment: row.get(3),
            state: JobState::Running,
            trigger: row.get(4),
            rerun_of: row.get(5),
            created_at: UnixMillis(row.get(6)),
            started_at: row.get::<_, Option<i64>>(7).map(UnixMillis),
            finished_at: None,
            error: None,
            erased_at: None,
        };
        let payload: Vec<u8> = row.get(8);
        let payload = open_json(
            dk,
            &payload,
            &job_aad(&summary.workspace, &summary.id, "payload"),
            &format!("the payload of job {}", summary.id),
        )?;
        let resume = resume(dk, &summary.workspace, &summary.id, steps)?;
        Ok(Some(StartedJob {
            summary,
            payload,
            resume,
        }))
    }

    /// Commits a completed step; `false` if the job was cancelled
    /// meanwhile (the step is recorded; the job should stop).
    ///
    /// # Errors
    ///
    /// [`StorageError::LeaseLost`] if the committing node no longer holds
    /// the claim: nothing is written.
    pub async fn commit_step(&self, dk: &DataKey, step: &StepCommit) -> StorageResult<bool> {
        let history = seal_json(
            dk,
            &job_aad(
                &step.workspace,
                &step.job,
                &format!("history:{}", step.index),
            ),
            &step.history,
        )?;
        let checkpoint = match &step.checkpoint {
            Some((output, marked)) => Some(seal_json(
                dk,
                &job_aad(
                    &step.workspace,
                    &step.job,
                    &format!("checkpoint:{}", step.index),
                ),
                &serde_json::json!({ "output": output, "marked": marked }),
            )?),
            None => None,
        };
        let doing = format!("committing step {} of job {}", step.index, step.job);
        let index = i64::try_from(step.index).map_err(|_| StorageError::Internal(doing.clone()))?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error(&doing))?;
        let (node, epoch) = &step.claim;
        let state = fence(&tx, &step.job, node, *epoch).await?;
        tx.execute(
            "INSERT INTO job_steps (job, idx, step, status, history, checkpoint) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (job, idx) DO UPDATE SET status = excluded.status, history = excluded.history, checkpoint = excluded.checkpoint",
            &[&step.job, &index, &step.step, &step.status, &history, &checkpoint],
        )
        .await
        .map_err(pg_error(&doing))?;
        tx.commit().await.map_err(pg_error(&doing))?;
        Ok(state != JobState::Cancelled.as_str())
    }

    /// Ends a job held by `node` at `epoch`, deletes its checkpoints and
    /// appends `entries`, in one transaction; returns the state it ended
    /// in (a cancellation that came first wins).
    ///
    /// # Errors
    ///
    /// [`StorageError::LeaseLost`] if `node` no longer holds the claim:
    /// nothing is written.
    #[allow(clippy::too_many_arguments)] // the Storage operation's own shape, plus the two keys
    pub async fn finish_job(
        &self,
        dk: &DataKey,
        audit_key: &AuditKey,
        (node, epoch): (&str, i64),
        workspace: &str,
        id: &str,
        state: JobState,
        error: Option<String>,
        entries: &[Entry],
    ) -> StorageResult<JobState> {
        let error = match error {
            Some(e) => Some(seal_json(
                dk,
                &job_aad(workspace, id, "error"),
                &Value::String(e),
            )?),
            None => None,
        };
        let doing = format!("finishing job {id}");
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error(&doing))?;
        let current = fence(&tx, id, node, epoch).await?;
        let end = match JobState::parse(&current) {
            Some(JobState::Cancelled) => JobState::Cancelled,
            _ => state,
        };
        tx.execute(
            "UPDATE jobs SET state = $2, finished_at = $3, error = $4 WHERE id = $1",
            &[&id, &end.as_str(), &UnixMillis::now().0, &error],
        )
        .await
        .map_err(pg_error(&doing))?;
        tx.execute(
            "UPDATE job_steps SET checkpoint = NULL WHERE job = $1 AND checkpoint IS NOT NULL",
            &[&id],
        )
        .await
        .map_err(pg_error(&doing))?;
        audit::append(&tx, audit_key, UnixMillis::now(), entries).await?;
        tx.commit().await.map_err(pg_error(&doing))?;
        Ok(end)
    }

    /// Fires slot `slot` of schedule `trigger` with `job`, once across all
    /// nodes: the trigger's last slot moves forward only if it is older
    /// (a compare-and-set under the row lock, so nodes racing for one slot
    /// serialise and all but the first find it taken), and the job carries
    /// the slot's unique key. Returns whether this call fired it.
    ///
    /// # Errors
    ///
    /// [`StorageError::NotFound`] if the recipe is no longer deployed; the
    /// database refusing it.
    pub async fn fire_schedule(
        &self,
        dk: &DataKey,
        trigger: &str,
        slot: UnixMillis,
        job: &NewJob,
    ) -> StorageResult<bool> {
        let sealed = seal_json(
            dk,
            &job_aad(&job.workspace, &job.id, "payload"),
            &job.payload,
        )?;
        let doing = format!("firing schedule {trigger}");
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error(&doing))?;
        let moved = tx
            .execute(
                "UPDATE triggers SET last_slot = $2 WHERE id = $1 AND (last_slot IS NULL OR last_slot < $2)",
                &[&trigger, &slot.0],
            )
            .await
            .map_err(pg_error(&doing))?;
        if moved == 0 {
            return Ok(false);
        }
        let key = format!("{trigger}@{}", slot.0);
        if let Enqueued::Duplicate(_) = insert_job(&tx, job, &sealed, Some(&key)).await? {
            return Ok(false);
        }
        tx.commit().await.map_err(pg_error(&doing))?;
        Ok(true)
    }

    /// Cancels a queued or running job, through any node (the node running
    /// it sees it at its next step commit); returns its state after, or
    /// `None` if there is no such job in `workspace`.
    ///
    /// # Errors
    ///
    /// The database refusing it.
    pub async fn cancel_job(
        &self,
        audit_key: &AuditKey,
        workspace: &str,
        id: &str,
        entry: &Entry,
    ) -> StorageResult<Option<JobState>> {
        let doing = format!("cancelling job {id}");
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error(&doing))?;
        let Some(row) = tx
            .query_opt(
                "SELECT state FROM jobs WHERE workspace = $1 AND id = $2 FOR UPDATE",
                &[&workspace, &id],
            )
            .await
            .map_err(pg_error(&doing))?
        else {
            return Ok(None);
        };
        let current = JobState::parse(row.get(0)).ok_or_else(|| StorageError::Damaged {
            what: format!("job {id}"),
            reason: "unknown state".into(),
        })?;
        if current.is_final() {
            return Ok(Some(current));
        }
        tx.execute(
            "UPDATE jobs SET state = 'cancelled', finished_at = $2 WHERE id = $1",
            &[&id, &UnixMillis::now().0],
        )
        .await
        .map_err(pg_error(&doing))?;
        audit::append_one(&tx, audit_key, entry).await?;
        tx.commit().await.map_err(pg_error(&doing))?;
        Ok(Some(JobState::Cancelled))
    }
}

/// Inserts a job in the caller's transaction: the recipe must be deployed
/// (checked here, so a recipe deleted after a webhook was looked up gets no
/// job); a repeated idempotency key, or a slot key already fired, returns
/// the existing job.
async fn insert_job<C: deadpool_postgres::GenericClient>(
    tx: &C,
    job: &NewJob,
    sealed: &[u8],
    slot_key: Option<&str>,
) -> StorageResult<Enqueued> {
    let doing = format!("queueing job {}", job.id);
    let deployed = tx
        .query_opt(
            "SELECT 1 FROM recipes WHERE workspace = $1 AND name = $2 FOR SHARE",
            &[&job.workspace, &job.recipe],
        )
        .await
        .map_err(pg_error(&doing))?
        .is_some();
    if !deployed {
        return Err(StorageError::NotFound {
            what: "recipe",
            name: job.recipe.clone(),
        });
    }
    let inserted = tx
        .query_opt(
            "INSERT INTO jobs (id, workspace, recipe, environment, state, trigger_kind, payload, idempotency_key, rerun_of, created_at, slot_key)
             VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9, $10)
             ON CONFLICT DO NOTHING
             RETURNING id",
            &[
                &job.id,
                &job.workspace,
                &job.recipe,
                &job.environment,
                &job.trigger_kind,
                &sealed,
                &job.idempotency_key,
                &job.rerun_of,
                &job.created_at.0,
                &slot_key,
            ],
        )
        .await
        .map_err(pg_error(&doing))?;
    if inserted.is_some() {
        return Ok(Enqueued::New(job.id.clone()));
    }
    let existing = tx
        .query_opt(
            "SELECT id FROM jobs
             WHERE (workspace = $1 AND recipe = $2 AND idempotency_key = $3) OR slot_key = $4
             LIMIT 1",
            &[&job.workspace, &job.recipe, &job.idempotency_key, &slot_key],
        )
        .await
        .map_err(pg_error(&doing))?
        .ok_or_else(|| StorageError::Conflict(format!("job {} already exists", job.id)))?;
    Ok(Enqueued::Duplicate(existing.get(0)))
}

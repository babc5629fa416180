//! Job claims on PostgreSQL: the same rules as the SQLite backend's
//! ([`crate::claims`]), for several nodes at once.
//!
//! A claim reads candidate rows `FOR UPDATE SKIP LOCKED`: two nodes
//! claiming at the same moment never wait on each other and never get the
//! same job (a row one of them locked is skipped by the other; once
//! committed, its owner's live lease makes it unclaimable). A fenced write
//! locks its job row `FOR UPDATE` while it checks owner and epoch, so no
//! claim can raise the epoch between the check and the write (a claimer
//! skips the locked row), and a cancellation waits for the write.

use std::collections::HashMap;

use deadpool_postgres::GenericClient;

use super::{PgStore, pg_error};
use crate::UnixMillis;
use crate::claims::{Claim, ClaimRequest};
use crate::storage::{StorageError, StorageResult};

/// The condition that node `$2` may claim a job row at time `$1` (see
/// [`crate::claims`]: never its own claims).
const CLAIMABLE: &str = "(owner IS NULL OR (owner <> $2 AND NOT EXISTS (
        SELECT 1 FROM nodes WHERE nodes.id = jobs.owner AND nodes.lease_until >= $1)))";

impl PgStore {
    /// Records that `node` is alive until `lease_ms` from now.
    ///
    /// # Errors
    ///
    /// The database refused it.
    pub async fn heartbeat(&self, node: &str, lease_ms: i64) -> StorageResult<()> {
        let now = UnixMillis::now().0;
        self.client()
            .await?
            .execute(
                "INSERT INTO nodes (id, started_at, lease_until) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET lease_until = GREATEST(nodes.lease_until, excluded.lease_until)",
                &[&node, &now, &now.saturating_add(lease_ms)],
            )
            .await
            .map_err(pg_error(format!("renewing the lease of node `{node}`")))?;
        Ok(())
    }

    /// Gives up every claim of `node` (at its start).
    ///
    /// # Errors
    ///
    /// The database refused it.
    pub async fn release_claims(&self, node: &str) -> StorageResult<usize> {
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE jobs SET owner = NULL WHERE owner = $1 AND state IN ('queued', 'running')",
                &[&node],
            )
            .await
            .map_err(pg_error(format!("releasing the claims of node `{node}`")))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Jobs queued or running, in all workspaces.
    ///
    /// # Errors
    ///
    /// The database cannot be read.
    pub async fn backlog(&self) -> StorageResult<u64> {
        let n: i64 = self
            .client()
            .await?
            .query_one(
                "SELECT count(*) FROM jobs WHERE state IN ('queued', 'running')",
                &[],
            )
            .await
            .map_err(pg_error("counting the jobs queued or running"))?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Claims up to `req.max` jobs for `node`, in one transaction: running
    /// jobs whose claim lapsed first, then queued jobs, the workspaces with
    /// the fewest claims of this node first, a share at a time.
    ///
    /// # Errors
    ///
    /// The database refused it; nothing is claimed.
    pub async fn claim_jobs(&self, node: &str, req: ClaimRequest) -> StorageResult<Vec<Claim>> {
        let doing = format!("claiming jobs for node `{node}`");
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error(&doing))?;
        let now = UnixMillis::now().0;
        let mut held = req.held.clone();
        let room = |held: &HashMap<String, usize>, ws: &str| {
            req.per_workspace
                .saturating_sub(held.get(ws).copied().unwrap_or(0))
        };
        let mut claims = Vec::new();

        let orphans = tx
            .query(
                &format!(
                    "SELECT id, workspace FROM jobs WHERE state = 'running' AND {CLAIMABLE}
                     ORDER BY created_at, id LIMIT $3 FOR UPDATE SKIP LOCKED"
                ),
                &[&now, &node, &(req.max as i64)],
            )
            .await
            .map_err(pg_error(&doing))?;
        let mut take = Vec::new();
        for row in orphans {
            let (id, workspace): (String, String) = (row.get(0), row.get(1));
            if take.len() >= req.max || room(&held, &workspace) == 0 {
                continue;
            }
            *held.entry(workspace.clone()).or_default() += 1;
            take.push((id, workspace, true));
        }

        let mut workspaces: Vec<String> = tx
            .query(crate::claims::QUEUED_WORKSPACES, &[])
            .await
            .map_err(pg_error(&doing))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let next = tx
            .prepare(&format!(
                "SELECT id FROM jobs WHERE state = 'queued' AND workspace = $3 AND {CLAIMABLE}
                   AND NOT (id = ANY($5))
                 ORDER BY created_at, id LIMIT $4 FOR UPDATE SKIP LOCKED"
            ))
            .await
            .map_err(pg_error(&doing))?;
        while take.len() < req.max && !workspaces.is_empty() {
            workspaces.sort_by_key(|ws| (held.get(ws).copied().unwrap_or(0), ws.clone()));
            workspaces.retain(|ws| room(&held, ws) > 0);
            if workspaces.is_empty() {
                break;
            }
            let share = (req.max - take.len()).div_ceil(workspaces.len()).max(1);
            let mut exhausted = Vec::new();
            for ws in &workspaces {
                let left = req.max - take.len();
                if left == 0 {
                    break;
                }
                let want = share.min(room(&held, ws)).min(left);
                let taken: Vec<&str> = take.iter().map(|(id, _, _)| id.as_str()).collect();
                let rows = tx
                    .query(&next, &[&now, &node, ws, &(want as i64), &taken])
                    .await
                    .map_err(pg_error(&doing))?;
                if rows.len() < want {
                    exhausted.push(ws.clone());
                }
                for row in rows {
                    *held.entry(ws.clone()).or_default() += 1;
                    take.push((row.get(0), ws.clone(), false));
                }
            }
            workspaces.retain(|ws| !exhausted.contains(ws));
        }

        if !take.is_empty() {
            let ids: Vec<&str> = take.iter().map(|(id, _, _)| id.as_str()).collect();
            let rows = tx
                .query(
                    "UPDATE jobs SET owner = $2, epoch = epoch + 1 WHERE id = ANY($1) RETURNING id, epoch",
                    &[&ids, &node],
                )
                .await
                .map_err(pg_error(&doing))?;
            let epochs: HashMap<String, i64> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
            for (id, workspace, takeover) in take {
                let Some(&epoch) = epochs.get(&id) else {
                    continue;
                };
                claims.push(Claim {
                    id,
                    workspace,
                    epoch,
                    takeover,
                });
            }
        }
        tx.commit().await.map_err(pg_error(&doing))?;
        Ok(claims)
    }
}

/// Checks that `node` holds `job` at `epoch`, locking the job row against
/// a concurrent claim until the caller's transaction ends; returns the
/// job's state.
///
/// # Errors
///
/// [`StorageError::LeaseLost`] if another node claimed the job since (or
/// it was released), [`StorageError::NotFound`] if it does not exist.
pub async fn fence<C: GenericClient>(
    client: &C,
    job: &str,
    node: &str,
    epoch: i64,
) -> StorageResult<String> {
    let row = client
        .query_opt(
            "SELECT state, owner, epoch FROM jobs WHERE id = $1 FOR UPDATE",
            &[&job],
        )
        .await
        .map_err(pg_error(format!("checking the claim on job {job}")))?;
    let Some(row) = row else {
        return Err(StorageError::NotFound {
            what: "job",
            name: job.to_string(),
        });
    };
    let (state, owner, at): (String, Option<String>, i64) = (row.get(0), row.get(1), row.get(2));
    if owner.as_deref() == Some(node) && at == epoch {
        Ok(state)
    } else {
        Err(StorageError::LeaseLost {
            job: job.to_string(),
        })
    }
}

//! Job claims: which node runs which job, under what lease, at what epoch.
//!
//! The backlog lives in the store, not in a node's memory: a node claims at
//! most as many jobs as it can run at once ([`ClaimRequest::max`]), so its
//! memory does not grow with the number of jobs queued, however many there
//! are.
//!
//! A claim names the node (`jobs.owner`) and raises the job's fencing epoch
//! (`jobs.epoch`). A node's claims live as long as its lease
//! (`nodes.lease_until`), renewed once per node, not per job. A job whose
//! owner's lease lapsed (the node died or stalled) can be claimed by any
//! node, which raises the epoch again. Starting a job, committing a step
//! and ending a job are accepted only from the owner at the current epoch
//! ([`fence`]): a node that lost a job can never overwrite the work of the
//! node that took it over, and learns it has lost it
//! ([`crate::storage::StorageError::LeaseLost`]).
//!
//! A job claimed but not yet started stays `queued`; starting it makes it
//! `running`. Fairness between workspaces: a claim takes jobs from the
//! workspaces holding the fewest claims of this node first, a share at a
//! time, and never more than [`ClaimRequest::per_workspace`] of one
//! workspace at once, so a workspace that floods the queue cannot keep a
//! quiet one waiting behind its backlog.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension as _, params};

use crate::UnixMillis;
use crate::db::Doing as _;
use crate::storage::{StorageError, StorageResult};

/// Schema version 11: job owners and fencing epochs, node leases, and the
/// index a claim reads the queue through (by state, then workspace, then
/// age), so a claim is a few range reads whatever the backlog.
pub(crate) const MIGRATE_V11_CLAIMS: &str = "
ALTER TABLE jobs ADD COLUMN owner TEXT;
ALTER TABLE jobs ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
CREATE TABLE nodes (
    id          TEXT PRIMARY KEY NOT NULL,
    started_at  INTEGER NOT NULL,
    lease_until INTEGER NOT NULL
) STRICT;
CREATE INDEX jobs_queue ON jobs (state, workspace, created_at, id);
";

/// What a node asks for when it claims jobs.
#[derive(Debug, Clone, Default)]
pub struct ClaimRequest {
    /// Jobs to claim at most (the node's free running slots).
    pub max: usize,
    /// Claims of one workspace this node may hold at once.
    pub per_workspace: usize,
    /// Claims this node holds now, per workspace.
    pub held: HashMap<String, usize>,
}

/// A job claimed by a node: only that node, at this epoch, may start it,
/// commit its steps and end it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The job's id.
    pub id: String,
    /// Its workspace.
    pub workspace: String,
    /// The fencing epoch this claim holds.
    pub epoch: i64,
    /// The job was running under another claim (a node that died, stalled
    /// or restarted): it resumes after its last committed step.
    pub takeover: bool,
}

/// The node id a daemon uses when its configuration names none.
pub const DEFAULT_NODE: &str = "local";

/// Records that `node` is alive until `now + lease_ms`.
pub(crate) fn heartbeat(
    conn: &Connection,
    node: &str,
    now: UnixMillis,
    lease_ms: i64,
) -> StorageResult<()> {
    conn.execute(
        "INSERT INTO nodes (id, started_at, lease_until) VALUES (?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET lease_until = MAX(lease_until, excluded.lease_until)",
        params![node, now, now.0.saturating_add(lease_ms)],
    )
    .doing(|| format!("renewing the lease of node `{node}`"))?;
    Ok(())
}

/// Gives up every claim of `node` (it is starting again: whatever it held
/// is from its previous run), so they can be claimed at once.
pub(crate) fn release(conn: &Connection, node: &str) -> StorageResult<usize> {
    let n = conn
        .execute(
            "UPDATE jobs SET owner = NULL WHERE owner = ?1 AND state IN ('queued', 'running')",
            params![node],
        )
        .doing(|| format!("releasing the claims of node `{node}`"))?;
    Ok(n)
}

/// The workspaces with queued jobs: one index seek each (a loose index
/// scan over `jobs_queue`), however many jobs each has queued. The same
/// SQL on both backends.
pub(crate) const QUEUED_WORKSPACES: &str = "WITH RECURSIVE ws(name) AS (
         SELECT (SELECT min(workspace) FROM jobs WHERE state = 'queued')
         UNION ALL
         SELECT (SELECT min(workspace) FROM jobs WHERE state = 'queued' AND workspace > ws.name)
         FROM ws WHERE ws.name IS NOT NULL
     )
     SELECT name FROM ws WHERE name IS NOT NULL";

/// The condition on a job row (`jobs` unaliased) that node `?2` may claim
/// it at time `?1`: unowned, or owned by another node whose lease lapsed.
/// A node never takes over its own claims: it is running them, even when
/// its lease lapsed (it learns of a takeover by being fenced).
const CLAIMABLE: &str = "(owner IS NULL OR (owner <> ?2 AND NOT EXISTS (
        SELECT 1 FROM nodes WHERE nodes.id = jobs.owner AND nodes.lease_until >= ?1)))";

/// Claims up to `req.max` jobs for `node` (in the caller's write
/// transaction). Jobs that were running under a lapsed claim come first,
/// then queued jobs, oldest first within a workspace, the workspaces with
/// the fewest claims first.
pub(crate) fn claim(
    conn: &Connection,
    node: &str,
    now: UnixMillis,
    req: &ClaimRequest,
) -> StorageResult<Vec<Claim>> {
    let doing = || format!("claiming jobs for node `{node}`");
    let mut held = req.held.clone();
    let room = |held: &HashMap<String, usize>, ws: &str| {
        req.per_workspace
            .saturating_sub(held.get(ws).copied().unwrap_or(0))
    };
    let mut claims = Vec::new();
    let take = |id: String,
                workspace: String,
                takeover: bool,
                held: &mut HashMap<String, usize>,
                claims: &mut Vec<Claim>|
     -> StorageResult<()> {
        let epoch: i64 = conn
            .query_row(
                "UPDATE jobs SET owner = ?2, epoch = epoch + 1 WHERE id = ?1 RETURNING epoch",
                params![id, node],
                |r| r.get(0),
            )
            .doing(doing)?;
        *held.entry(workspace.clone()).or_default() += 1;
        claims.push(Claim {
            id,
            workspace,
            epoch,
            takeover,
        });
        Ok(())
    };

    // Running jobs whose claim lapsed: few (at most what the nodes ran at
    // once), and they have work committed already.
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT id, workspace FROM jobs WHERE state = 'running' AND {CLAIMABLE}
             ORDER BY created_at, id LIMIT ?3"
        ))
        .doing(doing)?;
    let orphans = stmt
        .query_map(params![now, node, req.max as i64], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .doing(doing)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .doing(doing)?;
    drop(stmt);
    for (id, workspace) in orphans {
        if claims.len() >= req.max {
            break;
        }
        if room(&held, &workspace) == 0 {
            continue;
        }
        take(id, workspace, true, &mut held, &mut claims)?;
    }

    // Workspaces with queued jobs: one index seek each (a loose index scan
    // over `jobs_queue`), however many jobs each has queued.
    let mut stmt = conn.prepare_cached(QUEUED_WORKSPACES).doing(doing)?;
    let mut workspaces = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .doing(doing)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .doing(doing)?;
    drop(stmt);
    let mut next = conn
        .prepare_cached(&format!(
            "SELECT id FROM jobs WHERE state = 'queued' AND workspace = ?3 AND {CLAIMABLE}
             ORDER BY created_at, id LIMIT ?4"
        ))
        .doing(doing)?;
    // Rounds: each workspace with room gets an equal share of what is
    // left, the least served first; a workspace with nothing left to
    // claim drops out.
    while claims.len() < req.max && !workspaces.is_empty() {
        workspaces.sort_by_key(|ws| (held.get(ws).copied().unwrap_or(0), ws.clone()));
        workspaces.retain(|ws| room(&held, ws) > 0);
        if workspaces.is_empty() {
            break;
        }
        let left = req.max - claims.len();
        let share = left.div_ceil(workspaces.len()).max(1);
        let mut exhausted = Vec::new();
        for ws in &workspaces {
            let left = req.max - claims.len();
            if left == 0 {
                break;
            }
            let want = share.min(room(&held, ws)).min(left);
            let ids = next
                .query_map(params![now, node, ws, want as i64], |r| {
                    r.get::<_, String>(0)
                })
                .doing(doing)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .doing(doing)?;
            if ids.len() < want {
                exhausted.push(ws.clone());
            }
            for id in ids {
                take(id, ws.clone(), false, &mut held, &mut claims)?;
            }
        }
        workspaces.retain(|ws| !exhausted.contains(ws));
    }
    Ok(claims)
}

/// Checks that `node` holds `job` at `epoch` (in the caller's write
/// transaction): the fencing every write of a running job passes. Returns
/// the job's state.
///
/// # Errors
///
/// [`StorageError::LeaseLost`] if another node claimed the job since (or
/// it was released), [`StorageError::NotFound`] if it does not exist.
pub(crate) fn fence(conn: &Connection, job: &str, node: &str, epoch: i64) -> StorageResult<String> {
    let row: Option<(String, Option<String>, i64)> = conn
        .query_row(
            "SELECT state, owner, epoch FROM jobs WHERE id = ?1",
            params![job],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .doing(|| format!("checking the claim on job {job}"))?;
    match row {
        None => Err(StorageError::NotFound {
            what: "job",
            name: job.to_string(),
        }),
        Some((state, owner, at)) if owner.as_deref() == Some(node) && at == epoch => Ok(state),
        Some(_) => Err(StorageError::LeaseLost {
            job: job.to_string(),
        }),
    }
}

/// Jobs queued or running, in all workspaces.
pub(crate) fn backlog(conn: &Connection) -> StorageResult<u64> {
    let n: i64 = conn
        .query_row(
            "SELECT (SELECT count(*) FROM jobs WHERE state = 'queued')
                  + (SELECT count(*) FROM jobs WHERE state = 'running')",
            [],
            |r| r.get(0),
        )
        .doing(|| "counting the jobs queued or running".to_string())?;
    Ok(u64::try_from(n).unwrap_or(0))
}

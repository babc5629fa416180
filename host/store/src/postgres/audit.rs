//! The audit log on PostgreSQL: one MAC chain per workspace (and one,
//! named `""`, for entries of no workspace), so nodes writing for
//! different workspaces never wait on one head row.
//!
//! An entry's MAC is the SQLite backend's ([`crate::audit`]: the same
//! canonical encoding and key), with `seq` its place in its chain. The
//! workspace is under the MAC, so an entry moved to another chain is found:
//! its workspace is not the chain's, and both chains' links break.
//! [`verify`] judges each chain with the same [`ChainCheck`] as the SQLite
//! log.

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;

use super::pg_error;
use crate::UnixMillis;
use crate::audit::{
    AuditKey, ChainCheck, Entry, RowView, VerifyReport, ZERO_MAC, entry_mac, from_hex32,
};
use crate::storage::{StorageError, StorageResult};

/// Rows read per query while verifying, so no chain is held in memory.
const PAGE: i64 = 1_000;

/// The chain an entry belongs to.
pub fn chain_of(entry: &Entry) -> &str {
    entry.workspace.as_deref().unwrap_or("")
}

/// Appends `entries` at time `at`, inside the caller's transaction: each
/// chain's head is locked (`FOR UPDATE`, chains in name order so two
/// writers never deadlock), the entries are chained on, and the head moves
/// to the last one, all committed with the change they record.
///
/// # Errors
///
/// A detail that is not a JSON object (before anything is written), a head
/// that is not 64 hex digits, or the database refusing a statement; the
/// caller's transaction should then roll back.
pub async fn append<C: GenericClient>(
    tx: &C,
    key: &AuditKey,
    at: UnixMillis,
    entries: &[Entry],
) -> StorageResult<()> {
    if entries.iter().any(|e| !e.detail.is_object()) {
        return Err(StorageError::Internal(
            "an audit entry's detail is not a JSON object".into(),
        ));
    }
    let mut chains: BTreeMap<&str, Vec<&Entry>> = BTreeMap::new();
    for entry in entries {
        chains.entry(chain_of(entry)).or_default().push(entry);
    }
    let keyed = key
        .hmac()
        .map_err(|e| StorageError::Internal(e.to_string()))?;
    let doing = "appending to the audit log";
    let insert = tx
        .prepare_cached(
            "INSERT INTO audit (chain, seq, at, workspace, actor, action, target, source, outcome, detail, prev, mac)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .await
        .map_err(pg_error(doing))?;
    for (chain, entries) in chains {
        tx.execute(
            "INSERT INTO audit_heads (chain, seq, mac) VALUES ($1, 0, $2) ON CONFLICT (chain) DO NOTHING",
            &[&chain, &ZERO_MAC],
        )
        .await
        .map_err(pg_error(doing))?;
        let head = tx
            .query_one(
                "SELECT seq, mac FROM audit_heads WHERE chain = $1 FOR UPDATE",
                &[&chain],
            )
            .await
            .map_err(pg_error(doing))?;
        let (mut seq, mut prev): (i64, String) = (head.get(0), head.get(1));
        if seq < 0 || from_hex32(&prev).is_none() {
            return Err(StorageError::Damaged {
                what: format!("the audit head of chain `{chain}`"),
                reason: "not a sequence number and 64 hex digits".into(),
            });
        }
        for entry in entries {
            seq = seq.checked_add(1).ok_or_else(|| {
                StorageError::Internal(format!("the audit chain `{chain}` is full"))
            })?;
            let detail = serde_json::to_string(&entry.detail)
                .map_err(|e| StorageError::Internal(format!("an audit detail: {e}")))?;
            let outcome = entry.outcome.as_str();
            let mac = entry_mac(&keyed, seq.unsigned_abs(), at, entry, &detail, &prev);
            tx.execute(
                &insert,
                &[
                    &chain,
                    &seq,
                    &at.as_millis(),
                    &entry.workspace,
                    &entry.actor,
                    &entry.action,
                    &entry.target,
                    &entry.source,
                    &outcome,
                    &detail,
                    &prev,
                    &mac,
                ],
            )
            .await
            .map_err(pg_error(doing))?;
            prev = mac;
        }
        tx.execute(
            "UPDATE audit_heads SET seq = $2, mac = $3 WHERE chain = $1",
            &[&chain, &seq, &prev],
        )
        .await
        .map_err(pg_error(doing))?;
    }
    Ok(())
}

/// Appends one entry (see [`append`]).
///
/// # Errors
///
/// As [`append`].
pub async fn append_one<C: GenericClient>(
    tx: &C,
    key: &AuditKey,
    entry: &Entry,
) -> StorageResult<()> {
    append(tx, key, UnixMillis::now(), std::slice::from_ref(entry)).await
}

/// Verifies every chain with `key`, from one snapshot (the caller should
/// run it in a `REPEATABLE READ` transaction), reading each chain a page
/// at a time. The report of each chain is keyed by its name.
///
/// # Errors
///
/// The database cannot be read. Tampering is never an error: it is in the
/// reports.
pub async fn verify<C: GenericClient>(
    client: &C,
    key: &AuditKey,
) -> StorageResult<BTreeMap<String, VerifyReport>> {
    let doing = "verifying the audit log";
    let chains: Vec<String> = client
        .query(
            "SELECT chain FROM audit_heads UNION SELECT DISTINCT chain FROM audit ORDER BY 1",
            &[],
        )
        .await
        .map_err(pg_error(doing))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let page = client
        .prepare_cached(
            "SELECT seq, at, workspace, actor, action, target, source, outcome, detail, prev, mac
             FROM audit WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .await
        .map_err(pg_error(doing))?;
    let macs = client
        .prepare_cached(
            "SELECT seq, mac FROM audit WHERE chain = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .await
        .map_err(pg_error(doing))?;
    let mut reports = BTreeMap::new();
    for chain in chains {
        let mut check = ChainCheck::new(key).map_err(|e| StorageError::Internal(e.to_string()))?;
        let mut after = i64::MIN;
        loop {
            let rows = client
                .query(&page, &[&chain, &after, &PAGE])
                .await
                .map_err(pg_error(doing))?;
            for row in &rows {
                let raw: i64 = row.get(0);
                after = raw;
                check.next(raw, |seq| {
                    let workspace: Option<&str> = row.get(2);
                    if workspace.unwrap_or("") != chain {
                        return Err(format!(
                            "it is in chain `{chain}` but was written for workspace `{}`",
                            workspace.unwrap_or("")
                        ));
                    }
                    Ok(RowView {
                        seq,
                        at: row.get(1),
                        workspace,
                        actor: row.get(3),
                        action: row.get(4),
                        target: row.get(5),
                        source: row.get(6),
                        outcome: row.get(7),
                        detail: row.get(8),
                        prev: row.get(9),
                        mac: row.get(10),
                    })
                });
            }
            if (rows.len() as i64) < PAGE {
                break;
            }
        }
        // The second pass, paged the same way (only when a link broke).
        let mut links = check.links();
        if links.needs_scan() {
            let mut after = i64::MIN;
            loop {
                let rows = client
                    .query(&macs, &[&chain, &after, &PAGE])
                    .await
                    .map_err(pg_error(doing))?;
                for row in &rows {
                    let seq: i64 = row.get(0);
                    after = seq;
                    if let Ok(seq) = u64::try_from(seq) {
                        links.visit(seq, row.get(1));
                    }
                }
                if (rows.len() as i64) < PAGE {
                    break;
                }
            }
        }
        links.apply();
        let head = client
            .query_opt(
                "SELECT seq, mac FROM audit_heads WHERE chain = $1",
                &[&chain],
            )
            .await
            .map_err(pg_error(doing))?
            .map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1)));
        check.head(head);
        reports.insert(chain, check.finish());
    }
    Ok(reports)
}

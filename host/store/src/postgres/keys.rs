//! Keys on PostgreSQL: the master key's fingerprint, the audit log's key
//! and each workspace's data key, wrapped by the master key exactly as in
//! the SQLite backend ([`crate::keys`]).
//!
//! Several nodes may ask for a key that does not exist yet at the same
//! moment (a new workspace's first webhooks reaching two nodes). Each
//! generates one, but only the first insert lands (`ON CONFLICT DO
//! NOTHING`) and every node then reads the stored one back, so all nodes
//! seal with the same key.
//!
//! A rotation re-wraps every key and records the new fingerprint in one
//! transaction. The other nodes notice through [`PgStore::master_fingerprint`]
//! (the data keys they cached are unchanged: only their wrapping is) and
//! load the new master key from their key source before wrapping anything.

use base64::Engine as _;

use super::{PgStore, audit, pg_error};
use crate::UnixMillis;
use crate::keys::{self, DataKey, MasterKey};
use crate::storage::{StorageError, StorageResult};

/// The name the audit log's key is wrapped under (as in the SQLite
/// backend: not a valid workspace name).
const AUDIT_KEY_NAME: &str = "!audit";

/// Base64 of wrapped bytes, as `meta` stores them.
fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The audit log's key as `meta` stores it (base64 of its wrapping),
/// unwrapped with `master`; `None` if it does not open.
fn open_audit_key(stored: &str, master: &MasterKey) -> StorageResult<Option<DataKey>> {
    let wrapped = base64::engine::general_purpose::STANDARD
        .decode(stored)
        .map_err(|_| StorageError::Damaged {
            what: "the audit log's key".into(),
            reason: "not base64".into(),
        })?;
    Ok(keys::unwrap_data_key(master, &wrapped, AUDIT_KEY_NAME).ok())
}

/// The refusal of a key that is not the database's.
fn mismatch(expected: String, got: String) -> StorageError {
    StorageError::WrongKey(format!(
        "the master key does not match this database (expected fingerprint {expected}, got {got})"
    ))
}

impl PgStore {
    /// The fingerprint of the master key the database is wrapped with, if
    /// one was recorded.
    ///
    /// # Errors
    ///
    /// The database cannot be read.
    pub async fn master_fingerprint(&self) -> StorageResult<Option<String>> {
        Ok(self
            .client()
            .await?
            .query_opt(
                "SELECT value FROM meta WHERE key = 'master_fingerprint'",
                &[],
            )
            .await
            .map_err(pg_error("reading the master key's fingerprint"))?
            .map(|r| r.get(0)))
    }

    /// Checks that `master` is the database's master key, recording its
    /// fingerprint if none is recorded yet (the first node to start).
    ///
    /// # Errors
    ///
    /// [`StorageError::WrongKey`] naming both fingerprints.
    pub async fn check_key(&self, master: &MasterKey) -> StorageResult<()> {
        let got = master.fingerprint();
        self.client()
            .await?
            .execute(
                "INSERT INTO meta (key, value) VALUES ('master_fingerprint', $1) ON CONFLICT (key) DO NOTHING",
                &[&got],
            )
            .await
            .map_err(pg_error("recording the master key's fingerprint"))?;
        match self.master_fingerprint().await? {
            Some(expected) if expected == got => Ok(()),
            Some(expected) => Err(mismatch(expected, got)),
            None => Err(StorageError::Backend(
                "the master key's fingerprint was not recorded".into(),
            )),
        }
    }

    /// The audit log's key, created (once, whichever node comes first) if
    /// missing.
    ///
    /// # Errors
    ///
    /// [`StorageError::WrongKey`] if `master` does not unwrap it.
    pub async fn audit_key(&self, master: &MasterKey) -> StorageResult<crate::audit::AuditKey> {
        let doing = "reading the audit log's key";
        let fresh = keys::wrap_data_key(master, &DataKey::generate(), AUDIT_KEY_NAME)
            .map_err(|e| StorageError::Internal(format!("wrapping the audit log's key: {e}")))?;
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO meta (key, value) VALUES ('audit_key', $1) ON CONFLICT (key) DO NOTHING",
                &[&b64(&fresh)],
            )
            .await
            .map_err(pg_error(doing))?;
        let stored: String = client
            .query_one("SELECT value FROM meta WHERE key = 'audit_key'", &[])
            .await
            .map_err(pg_error(doing))?
            .get(0);
        let key = open_audit_key(&stored, master)?.ok_or_else(|| {
            StorageError::WrongKey("the master key does not open the audit log's key".into())
        })?;
        Ok(crate::audit::AuditKey::from_bytes(*key.bytes()))
    }

    /// The data key of `workspace`; with `create`, the workspace and its
    /// key are created if missing (once, whichever node comes first).
    /// `None` if it does not exist and `create` is not set.
    ///
    /// # Errors
    ///
    /// [`StorageError::Damaged`] if the stored key does not unwrap under
    /// `master` (altered, or moved from another workspace).
    pub async fn data_key(
        &self,
        workspace: &str,
        master: &MasterKey,
        create: bool,
    ) -> StorageResult<Option<DataKey>> {
        let doing = format!("reading the data key of workspace `{workspace}`");
        let client = self.client().await?;
        if create {
            let fresh = keys::wrap_data_key(master, &DataKey::generate(), workspace)
                .map_err(|e| StorageError::Internal(format!("{doing}: {e}")))?;
            client
                .execute(
                    "INSERT INTO workspaces (name, wrapped_key, created_at) VALUES ($1, $2, $3)
                     ON CONFLICT (name) DO NOTHING",
                    &[&workspace, &fresh, &UnixMillis::now().0],
                )
                .await
                .map_err(pg_error(&doing))?;
        }
        let Some(row) = client
            .query_opt(
                "SELECT wrapped_key FROM workspaces WHERE name = $1",
                &[&workspace],
            )
            .await
            .map_err(pg_error(&doing))?
        else {
            return Ok(None);
        };
        let wrapped: Vec<u8> = row.get(0);
        keys::unwrap_data_key(master, &wrapped, workspace)
            .map(Some)
            .map_err(|_| StorageError::Damaged {
                what: format!("the data key of workspace `{workspace}`"),
                reason: "it does not open under the master key: altered or moved".into(),
            })
    }

    /// Re-wraps every data key and the audit log's key from `old` to `new`
    /// and records `new`'s fingerprint, with `entry` in the audit log, in
    /// one transaction that holds the fingerprint row locked: two rotations
    /// at once cannot interleave, and if anything fails nothing changes.
    /// Returns the number of workspace keys re-wrapped.
    ///
    /// # Errors
    ///
    /// [`StorageError::WrongKey`] if `old` is not the current key or is
    /// `new`; [`StorageError::Damaged`] naming a key that does not unwrap.
    pub async fn rotate_master_key(
        &self,
        old: &MasterKey,
        new: &MasterKey,
        audit_key: &crate::audit::AuditKey,
        entry: &crate::audit::Entry,
    ) -> StorageResult<usize> {
        if old.fingerprint() == new.fingerprint() {
            return Err(StorageError::WrongKey(format!(
                "the new master key is the current one (fingerprint {}); generate a new key to rotate",
                new.fingerprint()
            )));
        }
        let doing = "rotating the master key";
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error(doing))?;
        let expected: Option<String> = tx
            .query_opt(
                "SELECT value FROM meta WHERE key = 'master_fingerprint' FOR UPDATE",
                &[],
            )
            .await
            .map_err(pg_error(doing))?
            .map(|r| r.get(0));
        match expected {
            Some(expected) if expected != old.fingerprint() => {
                return Err(mismatch(expected, old.fingerprint()));
            }
            _ => {}
        }
        let rows = tx
            .query(
                "SELECT name, wrapped_key FROM workspaces ORDER BY name FOR UPDATE",
                &[],
            )
            .await
            .map_err(pg_error(doing))?;
        let mut count = 0;
        for row in rows {
            let (name, wrapped): (String, Vec<u8>) = (row.get(0), row.get(1));
            let key =
                keys::unwrap_data_key(old, &wrapped, &name).map_err(|_| StorageError::Damaged {
                    what: format!("the data key of workspace `{name}`"),
                    reason: "it does not open under the old master key".into(),
                })?;
            let rewrapped = keys::wrap_data_key(new, &key, &name)
                .map_err(|e| StorageError::Internal(format!("{doing}: {e}")))?;
            tx.execute(
                "UPDATE workspaces SET wrapped_key = $2 WHERE name = $1",
                &[&name, &rewrapped],
            )
            .await
            .map_err(pg_error(doing))?;
            count += 1;
        }
        let stored: Option<String> = tx
            .query_opt("SELECT value FROM meta WHERE key = 'audit_key'", &[])
            .await
            .map_err(pg_error(doing))?
            .map(|r| r.get(0));
        if let Some(stored) = stored {
            let key = open_audit_key(&stored, old)?.ok_or_else(|| StorageError::Damaged {
                what: "the audit log's key".into(),
                reason: "it does not open under the old master key".into(),
            })?;
            let rewrapped = keys::wrap_data_key(new, &key, AUDIT_KEY_NAME)
                .map_err(|e| StorageError::Internal(format!("{doing}: {e}")))?;
            tx.execute(
                "UPDATE meta SET value = $1 WHERE key = 'audit_key'",
                &[&b64(&rewrapped)],
            )
            .await
            .map_err(pg_error(doing))?;
        }
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('master_fingerprint', $1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            &[&new.fingerprint()],
        )
        .await
        .map_err(pg_error(doing))?;
        audit::append_one(&tx, audit_key, entry).await?;
        tx.commit().await.map_err(pg_error(doing))?;
        Ok(count)
    }
}

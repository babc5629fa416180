//! Web console sessions: who is signed in to `/ui`, through what, since
//! when.
//!
//! The cookie holds a random secret; the store keeps only its SHA-256
//! ([`ConsoleSession::id_hash`]), so a copy of the database signs nobody in.
//! A session signed in with an API token names the token and is deleted in
//! the transaction that revokes it; every session of a member is deleted
//! in the transaction that removes the member. The idle timeout is a
//! workspace setting (`settings.session_idle_secs`, schema 10).

use rusqlite::{Connection, OptionalExtension as _, Row, params};
use serde::Serialize;

use crate::UnixMillis;
use crate::db::Doing as _;
use crate::storage::StorageResult;

/// The idle timeout of a workspace that set none: 30 minutes.
pub const DEFAULT_IDLE_SECS: u32 = 30 * 60;
/// The shortest idle timeout a workspace may set: one minute.
pub const MIN_IDLE_SECS: u32 = 60;
/// The longest idle timeout a workspace may set: 12 hours.
pub const MAX_IDLE_SECS: u32 = 12 * 3600;

/// How a session's caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum SessionKind {
    /// An API token, checked again (revoked, expired, allowed addresses,
    /// its owner's role) on every request of the session.
    Token {
        /// The token's id.
        token_id: String,
    },
    /// OpenID Connect: the identity provider's claims gave this role.
    Oidc {
        /// The wrun role the claims mapped to.
        role: String,
    },
}

/// A signed-in console session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConsoleSession {
    /// Lowercase hex SHA-256 of the cookie's secret.
    pub id_hash: String,
    /// The one workspace the session acts in.
    pub workspace: String,
    /// The member subject (`oidc:<sub>` for OpenID Connect users).
    pub subject: String,
    /// How the caller signed in.
    pub kind: SessionKind,
    /// When it started.
    pub created_at: UnixMillis,
    /// Its last request (kept to the minute or so: see
    /// [`crate::storage::Storage::touch_session`]).
    pub last_seen: UnixMillis,
    /// When it ends whatever its use.
    pub expires_at: UnixMillis,
    /// The client address it started from.
    pub ip: String,
}

/// Schema version 10: console sessions, the idle timeout setting, and the
/// indexes that keep a filtered job listing (by state, by recipe, by both)
/// a range read however many jobs a workspace has.
pub(crate) const MIGRATE_V10_SESSIONS: &str = "
ALTER TABLE settings ADD COLUMN session_idle_secs INTEGER;
CREATE TABLE console_sessions (
    id_hash    TEXT PRIMARY KEY,
    workspace  TEXT NOT NULL,
    subject    TEXT NOT NULL,
    token_id   TEXT,
    role       TEXT,
    created_at INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    ip         TEXT NOT NULL,
    CHECK ((token_id IS NULL) <> (role IS NULL))
) STRICT;
CREATE INDEX console_sessions_subject ON console_sessions (workspace, subject);
CREATE INDEX console_sessions_token ON console_sessions (token_id);
CREATE INDEX jobs_workspace_state_created ON jobs (workspace, state, created_at);
CREATE INDEX jobs_workspace_recipe_created ON jobs (workspace, recipe, created_at);
CREATE INDEX jobs_workspace_recipe_state_created ON jobs (workspace, recipe, state, created_at);
";

const COLUMNS: &str =
    "id_hash, workspace, subject, token_id, role, created_at, last_seen, expires_at, ip";

fn from_row(r: &Row<'_>) -> rusqlite::Result<ConsoleSession> {
    let token_id: Option<String> = r.get(3)?;
    let role: Option<String> = r.get(4)?;
    let kind = match token_id {
        Some(token_id) => SessionKind::Token { token_id },
        None => SessionKind::Oidc {
            role: role.unwrap_or_default(),
        },
    };
    Ok(ConsoleSession {
        id_hash: r.get(0)?,
        workspace: r.get(1)?,
        subject: r.get(2)?,
        kind,
        created_at: r.get(5)?,
        last_seen: r.get(6)?,
        expires_at: r.get(7)?,
        ip: r.get(8)?,
    })
}

pub(crate) fn insert(conn: &Connection, s: &ConsoleSession) -> StorageResult<()> {
    let (token_id, role) = match &s.kind {
        SessionKind::Token { token_id } => (Some(token_id.as_str()), None),
        SessionKind::Oidc { role } => (None, Some(role.as_str())),
    };
    conn.execute(
        &format!(
            "INSERT INTO console_sessions ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
        ),
        params![
            s.id_hash,
            s.workspace,
            s.subject,
            token_id,
            role,
            s.created_at,
            s.last_seen,
            s.expires_at,
            s.ip
        ],
    )
    .doing(|| "starting a console session".to_string())?;
    Ok(())
}

pub(crate) fn get(conn: &Connection, id_hash: &str) -> StorageResult<Option<ConsoleSession>> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM console_sessions WHERE id_hash = ?1"),
            params![id_hash],
            from_row,
        )
        .optional()
        .doing(|| "reading a console session".to_string())?)
}

pub(crate) fn idle_secs(conn: &Connection, workspace: &str) -> StorageResult<u32> {
    Ok(conn
        .query_row(
            "SELECT session_idle_secs FROM settings WHERE workspace = ?1",
            params![workspace],
            |r| r.get::<_, Option<u32>>(0),
        )
        .optional()
        .doing(|| "reading the session idle timeout".to_string())?
        .flatten()
        .unwrap_or(DEFAULT_IDLE_SECS))
}

pub(crate) fn set_idle_secs(
    conn: &Connection,
    workspace: &str,
    secs: Option<u32>,
) -> StorageResult<()> {
    conn.execute(
        "INSERT INTO settings (workspace, session_idle_secs) VALUES (?1, ?2)
         ON CONFLICT (workspace) DO UPDATE SET session_idle_secs = excluded.session_idle_secs",
        params![workspace, secs],
    )
    .doing(|| "setting the session idle timeout".to_string())?;
    Ok(())
}

/// Ends the sessions signed in with `token_id` (the token was revoked).
pub(crate) fn end_of_token(conn: &Connection, token_id: &str) -> StorageResult<usize> {
    Ok(conn
        .execute(
            "DELETE FROM console_sessions WHERE token_id = ?1",
            params![token_id],
        )
        .doing(|| "ending the console sessions of a revoked token".to_string())?)
}

/// Ends the sessions of a member of `workspace` (the member was removed).
pub(crate) fn end_of_subject(
    conn: &Connection,
    workspace: &str,
    subject: &str,
) -> StorageResult<usize> {
    Ok(conn
        .execute(
            "DELETE FROM console_sessions WHERE workspace = ?1 AND subject = ?2",
            params![workspace, subject],
        )
        .doing(|| "ending the console sessions of a removed member".to_string())?)
}

/// Deletes sessions past their end or their workspace's idle timeout.
pub(crate) fn sweep(conn: &Connection, now: UnixMillis) -> StorageResult<usize> {
    Ok(conn
        .execute(
            "DELETE FROM console_sessions WHERE expires_at <= ?1
                OR last_seen + 1000 * COALESCE(
                    (SELECT session_idle_secs FROM settings s WHERE s.workspace = console_sessions.workspace),
                    ?2) <= ?1",
            params![now, DEFAULT_IDLE_SECS],
        )
        .doing(|| "deleting ended console sessions".to_string())?)
}

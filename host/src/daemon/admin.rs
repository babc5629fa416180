//! What the CLI does on the daemon's database, with or without a running
//! daemon (SQLite serialises the writers): bootstrap members and tokens,
//! verify and stream the audit log. Every change is audited in its own
//! transaction, like the daemon's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use rusqlite::params;
use serde_json::json;
use tokio::sync::watch;

use super::audit::{self, AuditKey, Entry, VerifyReport};
use super::auth::{self, NewToken};
use super::sqlite::last_admin_refusal;
use crate::keys::MasterKey;
use crate::store_sqlite::{OpenMode, Store, check_name, now};

/// Who the CLI acts as in audit entries: the local user.
fn cli_actor() -> String {
    crate::ops::Actor::cli("").name
}

/// Runs `f` in an immediate transaction and appends `entries` to the audit
/// log in it.
fn audited<T>(
    store: &Store,
    key: &MasterKey,
    f: impl FnOnce(&rusqlite::Connection) -> Result<(T, Vec<Entry>)>,
) -> Result<T> {
    let audit_key = AuditKey::from_bytes(*store.audit_key(key)?.bytes());
    let conn = store.conn();
    conn.execute_batch("BEGIN IMMEDIATE")
        .context("starting a transaction")?;
    let result = f(conn).and_then(|(value, entries)| {
        audit::append(
            conn,
            &audit_key,
            crate::daemon::sqlite::now_millis(),
            &entries,
        )?;
        Ok(value)
    });
    match result {
        Ok(value) => {
            conn.execute_batch("COMMIT").context("committing")?;
            Ok(value)
        }
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

/// An audit entry by the CLI.
fn entry(workspace: &str, action: &str, target: String, detail: serde_json::Value) -> Entry {
    crate::ops::Actor::cli(workspace).entry(action, target, detail)
}

/// Adds a member or changes their role (built-in roles or custom ones
/// defined in the workspace).
pub(crate) fn set_member(
    store: &Store,
    key: &MasterKey,
    workspace: &str,
    subject: &str,
    role: &str,
) -> Result<()> {
    store.ensure_workspace(workspace, key)?;
    audited(store, key, |conn| {
        if auth::builtin_role(role).is_none() {
            let custom: i64 = conn.query_row(
                "SELECT count(*) FROM roles WHERE workspace = ?1 AND name = ?2",
                params![workspace, role],
                |r| r.get(0),
            )?;
            if custom == 0 {
                bail!(
                    "role `{role}` does not exist in workspace `{workspace}` (built in: admin, operator, analyst)"
                );
            }
        }
        let before: Option<String> = conn
            .query_row(
                "SELECT role FROM members WHERE workspace = ?1 AND subject = ?2",
                params![workspace, subject],
                |r| r.get(0),
            )
            .ok();
        if let Some(refusal) = last_admin_refusal(conn, workspace, subject, Some(role))? {
            bail!("{refusal}");
        }
        conn.execute(
            "INSERT INTO members (workspace, subject, role, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (workspace, subject) DO UPDATE SET role = excluded.role",
            params![workspace, subject, role, now()],
        )?;
        Ok((
            (),
            vec![entry(
                workspace,
                "member.role",
                format!("member:{subject}"),
                json!({ "from": before, "to": role }),
            )],
        ))
    })
}

/// Removes a member.
pub(crate) fn remove_member(
    store: &Store,
    key: &MasterKey,
    workspace: &str,
    subject: &str,
) -> Result<()> {
    audited(store, key, |conn| {
        if let Some(refusal) = last_admin_refusal(conn, workspace, subject, None)? {
            bail!("{refusal}");
        }
        let n = conn.execute(
            "DELETE FROM members WHERE workspace = ?1 AND subject = ?2",
            params![workspace, subject],
        )?;
        if n == 0 {
            bail!("`{subject}` is not a member of workspace `{workspace}`");
        }
        Ok((
            (),
            vec![entry(
                workspace,
                "member.remove",
                format!("member:{subject}"),
                json!({}),
            )],
        ))
    })
}

/// The members of a workspace: (subject, role).
pub(crate) fn list_members(store: &Store, workspace: &str) -> Result<Vec<(String, String)>> {
    let mut stmt = store
        .conn()
        .prepare("SELECT subject, role FROM members WHERE workspace = ?1 ORDER BY subject")?;
    let rows = stmt.query_map(params![workspace], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// What `wrun token create` asks for.
#[derive(Debug)]
pub(crate) struct TokenRequest<'a> {
    /// Workspace.
    pub(crate) workspace: &'a str,
    /// Label.
    pub(crate) name: &'a str,
    /// Member whose role bounds the token.
    pub(crate) owner: &'a str,
    /// Scopes.
    pub(crate) scopes: &'a [String],
    /// Lifetime.
    pub(crate) expires_in: Duration,
    /// Longest allowed lifetime.
    pub(crate) max_lifetime: Duration,
    /// CIDRs.
    pub(crate) allow_ips: &'a [String],
}

/// Creates a token; returns (id, the token text shown once, expiry).
pub(crate) fn create_token(
    store: &Store,
    key: &MasterKey,
    req: &TokenRequest<'_>,
) -> Result<(String, zeroize::Zeroizing<String>, i64)> {
    check_name("workspace", req.workspace)?;
    let (scopes, allow) = super::api::validate_token_request(
        req.scopes,
        req.expires_in.as_secs(),
        req.max_lifetime.as_secs(),
        req.allow_ips,
    )
    .map_err(|e| anyhow::anyhow!("{} (the lifetime limit is --max-lifetime)", e.message()))?;
    let token = NewToken::generate();
    let created = now();
    let expires_at =
        created.saturating_add(i64::try_from(req.expires_in.as_secs()).unwrap_or(i64::MAX));
    let id = token.id.clone();
    audited(store, key, |conn| {
        let role: Option<String> = conn
            .query_row(
                "SELECT role FROM members WHERE workspace = ?1 AND subject = ?2",
                params![req.workspace, req.owner],
                |r| r.get(0),
            )
            .ok();
        if role.is_none() {
            bail!(
                "`{}` is not a member of workspace `{}`; add them first with `wrun member set`",
                req.owner,
                req.workspace
            );
        }
        conn.execute(
            "INSERT INTO tokens (id, workspace, name, hash, owner, creator, scopes, allow_ips, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                token.id,
                req.workspace,
                req.name,
                token.hash.to_vec(),
                req.owner,
                cli_actor(),
                serde_json::to_string(&scopes.to_strings())?,
                serde_json::to_string(&allow.to_strings())?,
                created,
                expires_at
            ],
        )?;
        Ok((
            (),
            vec![entry(
                req.workspace,
                "token.create",
                format!("token:{}", token.id),
                json!({ "owner": req.owner, "scopes": scopes.to_strings(), "expires_at": expires_at }),
            )],
        ))
    })?;
    Ok((id, token.display, expires_at))
}

/// Revokes a token of a workspace.
pub(crate) fn revoke_token(
    store: &Store,
    key: &MasterKey,
    workspace: &str,
    id: &str,
) -> Result<()> {
    audited(store, key, |conn| {
        let n = conn.execute(
            "UPDATE tokens SET revoked_at = ?3 WHERE workspace = ?1 AND id = ?2 AND revoked_at IS NULL",
            params![workspace, id, now()],
        )?;
        if n == 0 {
            bail!("workspace `{workspace}` has no active token `{id}`");
        }
        Ok((
            (),
            vec![entry(
                workspace,
                "token.revoke",
                format!("token:{id}"),
                json!({}),
            )],
        ))
    })
}

/// A token as the CLI lists it.
#[derive(Debug, serde::Serialize)]
pub(crate) struct TokenLine {
    /// Id.
    pub(crate) id: String,
    /// Label.
    pub(crate) name: String,
    /// Owner.
    pub(crate) owner: String,
    /// Scopes.
    pub(crate) scopes: Vec<String>,
    /// Unix seconds.
    pub(crate) expires_at: i64,
    /// Unix seconds.
    pub(crate) revoked_at: Option<i64>,
    /// Unix seconds.
    pub(crate) last_used_at: Option<i64>,
    /// Address.
    pub(crate) last_used_ip: Option<String>,
}

/// The tokens of a workspace.
pub(crate) fn list_tokens(store: &Store, workspace: &str) -> Result<Vec<TokenLine>> {
    let mut stmt = store.conn().prepare(
        "SELECT id, name, owner, scopes, expires_at, revoked_at, last_used_at, last_used_ip
         FROM tokens WHERE workspace = ?1 ORDER BY created_at, id",
    )?;
    let rows = stmt.query_map(params![workspace], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, i64>(4)?,
            r.get::<_, Option<i64>>(5)?,
            r.get::<_, Option<i64>>(6)?,
            r.get::<_, Option<String>>(7)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, name, owner, scopes, expires_at, revoked_at, last_used_at, last_used_ip) = row?;
        out.push(TokenLine {
            scopes: serde_json::from_str(&scopes).unwrap_or_default(),
            id,
            name,
            owner,
            expires_at,
            revoked_at,
            last_used_at,
            last_used_ip,
        });
    }
    Ok(out)
}

/// Verifies the audit chain with the key.
pub(crate) fn verify_audit(store: &Store, key: &MasterKey) -> Result<VerifyReport> {
    let audit_key = AuditKey::from_bytes(*store.audit_key(key)?.bytes());
    Ok(audit::verify(store.conn(), &audit_key)?)
}

/// Writes audit entries after `after` as JSON lines; with `follow`, keeps
/// polling for new ones until the process is stopped.
pub(crate) fn stream_audit(
    store: &Store,
    out: &mut impl Write,
    mut after: u64,
    workspace: Option<&str>,
    follow: bool,
) -> Result<u64> {
    loop {
        after = audit::stream(store.conn(), after, out, workspace)?;
        out.flush()?;
        if !follow {
            return Ok(after);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The last `seq` in a JSON-lines file written by the stream (0 if none).
fn last_streamed(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .rev()
                .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        })
        .and_then(|v| v.get("seq").and_then(serde_json::Value::as_u64))
        .unwrap_or(0)
}

/// Ships audit entries to `path` as JSON lines (the daemon's
/// `[audit] stream_file`), resuming after the last entry already in it.
pub(crate) fn start_audit_stream(
    db: PathBuf,
    path: PathBuf,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let store = Store::open(&db, OpenMode::MustExist)?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening the audit stream file {}", path.display()))?;
    let mut after = last_streamed(&path);
    std::thread::Builder::new()
        .name("wrun-audit-stream".into())
        .spawn(move || {
            loop {
                match audit::stream(store.conn(), after, &mut file, None) {
                    Ok(seq) => after = seq,
                    Err(e) => tracing::error!(error = %e, "the audit stream failed"),
                }
                let _ = file.flush();
                if stop.has_changed().unwrap_or(true) && *stop.borrow_and_update() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
        .context("starting the audit stream")?;
    Ok(())
}

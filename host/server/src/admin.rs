//! What the CLI does on the daemon's database, with or without a running
//! daemon (SQLite serialises the writers): bootstrap members and tokens,
//! verify and stream the audit log. Every change goes through the store's
//! own operation, the one the API calls, which writes its audit entry in
//! the same transaction.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use serde_json::json;
use tokio::sync::watch;

use super::audit::{Entry, VerifyReport};
use super::auth::NewToken;
use super::storage::{Storage, StorageError, TokenRecord};
use crate::keys::MasterKey;
use crate::store_sqlite::{OpenMode, Store, check_name};
use wrun_store::UnixMillis;

/// An audit entry by the CLI.
fn entry(workspace: &str, action: &str, target: String, detail: serde_json::Value) -> Entry {
    crate::ops::Actor::cli(workspace).entry(action, target, detail)
}

/// Adds a member or changes their role (built-in roles or custom ones
/// defined in the workspace).
pub async fn set_member(
    storage: &dyn Storage,
    workspace: &str,
    subject: &str,
    role: &str,
) -> Result<()> {
    check_name("workspace", workspace)?;
    let before = storage.member_role(workspace, subject).await?;
    let audit = entry(
        workspace,
        "member.role",
        format!("member:{subject}"),
        json!({ "from": before, "to": role }),
    );
    match storage.set_member(workspace, subject, role, audit).await {
        Err(StorageError::NotFound { what: "role", .. }) => bail!(
            "role `{role}` does not exist in workspace `{workspace}` (built in: admin, operator, analyst)"
        ),
        other => Ok(other?),
    }
}

/// Removes a member.
pub async fn remove_member(storage: &dyn Storage, workspace: &str, subject: &str) -> Result<()> {
    let audit = entry(
        workspace,
        "member.remove",
        format!("member:{subject}"),
        json!({}),
    );
    if !storage.remove_member(workspace, subject, audit).await? {
        bail!("`{subject}` is not a member of workspace `{workspace}`");
    }
    Ok(())
}

/// The members of a workspace: (subject, role).
pub async fn list_members(storage: &dyn Storage, workspace: &str) -> Result<Vec<(String, String)>> {
    Ok(storage
        .list_members(workspace)
        .await?
        .into_iter()
        .map(|m| (m.subject, m.role))
        .collect())
}

/// What `wrun token create` asks for.
#[derive(Debug)]
pub struct TokenRequest<'a> {
    /// Workspace.
    pub workspace: &'a str,
    /// Label.
    pub name: &'a str,
    /// Member whose role bounds the token.
    pub owner: &'a str,
    /// Scopes.
    pub scopes: &'a [String],
    /// Lifetime.
    pub expires_in: Duration,
    /// Longest allowed lifetime.
    pub max_lifetime: Duration,
    /// CIDRs.
    pub allow_ips: &'a [String],
}

/// Creates a token; returns (id, the token text shown once, expiry).
pub async fn create_token(
    storage: &dyn Storage,
    req: &TokenRequest<'_>,
) -> Result<(String, zeroize::Zeroizing<String>, UnixMillis)> {
    check_name("workspace", req.workspace)?;
    let (scopes, allow) = super::api::validate_token_request(
        req.scopes,
        req.expires_in.as_secs(),
        req.max_lifetime.as_secs(),
        req.allow_ips,
    )
    .map_err(|e| anyhow::anyhow!("{} (the lifetime limit is --max-lifetime)", e.message()))?;
    if storage
        .member_role(req.workspace, req.owner)
        .await?
        .is_none()
    {
        bail!(
            "`{}` is not a member of workspace `{}`; add them first with `wrun member set`",
            req.owner,
            req.workspace
        );
    }
    let token = NewToken::generate();
    let created = UnixMillis::now();
    let expires_at = created.saturating_add(req.expires_in);
    let audit = entry(
        req.workspace,
        "token.create",
        format!("token:{}", token.id),
        json!({ "owner": req.owner, "scopes": scopes.to_strings(), "expires_at": expires_at }),
    );
    let record = TokenRecord {
        id: token.id.clone(),
        workspace: req.workspace.into(),
        name: req.name.into(),
        hash: token.hash,
        owner: req.owner.into(),
        creator: crate::ops::Actor::cli(req.workspace).name,
        scopes,
        allow_ips: allow.to_strings(),
        created_at: created,
        expires_at,
        revoked_at: None,
        last_used_at: None,
        last_used_ip: None,
    };
    storage.create_token(record, audit).await?;
    Ok((token.id, token.display, expires_at))
}

/// Revokes an active token of a workspace.
pub async fn revoke_token(storage: &dyn Storage, workspace: &str, id: &str) -> Result<()> {
    let active = storage
        .list_tokens(workspace)
        .await?
        .iter()
        .any(|t| t.id == id && t.revoked_at.is_none());
    if !active {
        bail!("workspace `{workspace}` has no active token `{id}`");
    }
    let audit = entry(workspace, "token.revoke", format!("token:{id}"), json!({}));
    storage.revoke_token(workspace, id, audit).await?;
    Ok(())
}

/// A token as the CLI lists it.
#[derive(Debug, serde::Serialize)]
pub struct TokenLine {
    /// Id.
    pub id: String,
    /// Label.
    pub name: String,
    /// Owner.
    pub owner: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// When it expires.
    pub expires_at: UnixMillis,
    /// When it was revoked.
    pub revoked_at: Option<UnixMillis>,
    /// When it was last used.
    pub last_used_at: Option<UnixMillis>,
    /// Address.
    pub last_used_ip: Option<String>,
}

/// The tokens of a workspace.
pub async fn list_tokens(storage: &dyn Storage, workspace: &str) -> Result<Vec<TokenLine>> {
    Ok(storage
        .list_tokens(workspace)
        .await?
        .into_iter()
        .map(|t| TokenLine {
            scopes: t.scopes.to_strings(),
            id: t.id,
            name: t.name,
            owner: t.owner,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
            last_used_at: t.last_used_at,
            last_used_ip: t.last_used_ip,
        })
        .collect())
}

/// Verifies the audit chain with the key.
pub fn verify_audit(store: &Store, key: &MasterKey) -> Result<VerifyReport> {
    Ok(store.verify_audit(key)?)
}

/// Writes audit entries after `after` as JSON lines; with `follow`, keeps
/// polling for new ones until the process is stopped.
pub fn stream_audit(
    store: &Store,
    out: &mut impl Write,
    mut after: u64,
    workspace: Option<&str>,
    follow: bool,
) -> Result<u64> {
    loop {
        after = store.stream_audit(after, out, workspace)?;
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
pub fn start_audit_stream(
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
                match store.stream_audit(after, &mut file, None) {
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

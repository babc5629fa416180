//! OAuth2 connections: the host obtains and refreshes the access token; the
//! guest still sees only a placeholder, and the refresh token and client
//! secret never leave the store but toward the token endpoint.
//!
//! # Data (schema version 6)
//!
//! An OAuth2 connection is a row of `connections` like any other: its hosts
//! and placement, and as its sealed value the current access token (an
//! empty value while it has none). Beside it, `oauth_clients` holds:
//!
//! | column | |
//! |---|---|
//! | `config` | the client's configuration as JSON ([`OAuthClientConfig`]: grant, endpoints, client id, scopes) |
//! | `client_secret`, `refresh_token` | sealed with the workspace data key, associated data `"wrun:oauth:v1:" workspace NUL name NUL field NUL config`: editing the token URL in the database makes them unreadable, so a credential cannot be sent elsewhere behind wrun's back |
//! | `state`, `reason` | `pending` (never authorised), `ready`, `needs_reauth` (a refusal from the provider, with its message) |
//! | `expires_at` | when the access token expires |
//! | `lease_holder`, `lease_until` | who is refreshing, until when |
//!
//! and `oauth_authorizations` the authorization code flows under way:
//! SHA-256 of `state` (single use, 10 minutes), the sealed PKCE verifier and
//! the redirect URI.
//!
//! # Refreshing, once
//!
//! [`fresh_token`] makes sure a connection's access token is valid for at
//! least [`MARGIN`]. At most one refresh runs per connection: in a process,
//! callers queue on a lock of their own; across processes (the CLI and the
//! daemon on one file; later several nodes), the one that takes the
//! **lease** in the store ([`Storage::oauth_lease`], a write transaction
//! that re-reads the credentials) refreshes, and the others wait for the
//! lease to end and read the new token. The new refresh token and access
//! token are committed together, fenced by the lease holder, before the
//! access token is used. A refusal (`invalid_grant`, revoked consent, a bad
//! client) marks the connection `needs_reauth` once, with an audit entry;
//! jobs that need it then fail with that message, and nothing retries until
//! a person authorises it again.
//!
//! A process killed while it refreshes leaves its lease to expire
//! ([`LEASE`]); the next caller refreshes with the stored refresh token. If
//! the provider had already rotated it, it refuses the old one and the
//! connection is marked `needs_reauth` once: never a retry loop.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension as _, params};
use serde::Serialize;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use wrun_runtime::SecretValue;
use wrun_runtime::oauth::{GrantKind, IssuedTokens, OAuthClientConfig, TokenClient, TokenError};

use crate::audit::{Entry, Outcome};
use crate::db::{Doing as _, check_name};
use crate::keys::{self, DataKey};
use crate::storage::{Storage, StorageError, StorageResult};
use crate::time::UnixMillis;

/// An access token is refreshed when it has less than this left (or less
/// than half its lifetime, for tokens that live under two minutes).
pub const MARGIN: Duration = Duration::from_secs(60);
/// How long a refresh lease lasts: twice the longest a token request may
/// take ([`wrun_runtime::oauth::TOKEN_TIMEOUT`]), so that two holders never
/// send the same refresh token.
pub const LEASE: Duration = Duration::from_secs(20);
/// The lifetime assumed when a provider does not say (`expires_in`).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// How long an authorization code flow may take, from its URL to the
/// callback.
pub const AUTHORIZATION_TTL: Duration = Duration::from_secs(600);
/// How often a caller that waits for another's lease looks again.
const POLL: Duration = Duration::from_millis(100);

/// Associated-data prefix of sealed OAuth2 fields.
const OAUTH_AAD_PREFIX: &[u8] = b"wrun:oauth:v1:";
/// Associated-data prefix of a sealed PKCE verifier.
const VERIFIER_AAD_PREFIX: &[u8] = b"wrun:oauth-verifier:v1:";

/// Schema version 6: OAuth2 clients and authorization flows.
pub(crate) const MIGRATE_V6_OAUTH: &str = "
CREATE TABLE oauth_clients (
    workspace     TEXT NOT NULL,
    name          TEXT NOT NULL,
    config        TEXT NOT NULL,
    client_secret BLOB NOT NULL,
    refresh_token BLOB,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'ready', 'needs_reauth')),
    reason        TEXT,
    expires_at    INTEGER,
    refreshed_at  INTEGER,
    lease_holder  TEXT,
    lease_until   INTEGER,
    PRIMARY KEY (workspace, name),
    FOREIGN KEY (workspace, name) REFERENCES connections (workspace, name) ON DELETE CASCADE
) STRICT;
CREATE TABLE oauth_authorizations (
    state_hash   BLOB PRIMARY KEY NOT NULL,
    workspace    TEXT NOT NULL,
    name         TEXT NOT NULL,
    verifier     BLOB NOT NULL,
    redirect_uri TEXT NOT NULL,
    actor        TEXT NOT NULL,
    expires_at   INTEGER NOT NULL,
    FOREIGN KEY (workspace, name) REFERENCES connections (workspace, name) ON DELETE CASCADE
) STRICT;
";

/// Where an OAuth2 connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthState {
    /// Added, never authorised (authorization code grant).
    Pending,
    /// Has a token, or can get one.
    Ready,
    /// The provider refused: a person must authorise it again.
    NeedsReauth,
}

impl OAuthState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthState::Pending => "pending",
            OAuthState::Ready => "ready",
            OAuthState::NeedsReauth => "needs_reauth",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<OAuthState> {
        match text {
            "pending" => Some(OAuthState::Pending),
            "ready" => Some(OAuthState::Ready),
            "needs_reauth" => Some(OAuthState::NeedsReauth),
            _ => None,
        }
    }
}

/// What is shown of an OAuth2 connection: never a token or the secret.
#[derive(Debug, Clone, Serialize)]
pub struct OAuthStatus {
    /// The client's configuration.
    pub config: OAuthClientConfig,
    /// Where it stands.
    pub state: OAuthState,
    /// Why it needs to be authorised again.
    pub reason: Option<String>,
    /// When the current access token expires.
    pub expires_at: Option<UnixMillis>,
    /// When the host last obtained a token.
    pub refreshed_at: Option<UnixMillis>,
}

/// What the lease holder needs to ask the provider for a token.
pub struct OAuthCredentials {
    /// The client's configuration.
    pub config: OAuthClientConfig,
    /// The client secret.
    pub client_secret: SecretValue,
    /// The refresh token, if the connection has one.
    pub refresh_token: Option<SecretValue>,
    /// The access token it holds now, if any: masked out of what the
    /// provider answers, with the others.
    pub current_access: Option<SecretValue>,
}

impl fmt::Debug for OAuthCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthCredentials")
            .field("config", &self.config)
            .field("refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// The answer of [`Storage::oauth_lease`].
#[derive(Debug)]
pub enum Lease {
    /// The access token is valid for at least the margin: use it.
    Fresh,
    /// The caller holds the lease and must refresh with these.
    Acquired(OAuthCredentials),
    /// Another holder is refreshing, until this time.
    Busy(UnixMillis),
    /// The connection cannot get a token without a person: the message.
    NotUsable(String),
    /// The connection is not an OAuth2 connection (or not there).
    Missing,
}

/// How a lease ends without new tokens.
#[derive(Debug, Clone)]
pub enum LeaseEnd {
    /// A failure that may pass (the provider unreachable): nothing changes.
    Release,
    /// The provider refused: the connection needs a person, with this message.
    NeedsReauth(String),
}

/// An authorization code flow being finished: what the callback needs.
pub struct PendingAuthorization {
    /// The workspace of the connection.
    pub workspace: String,
    /// The connection.
    pub name: String,
    /// The PKCE verifier.
    pub verifier: SecretValue,
    /// The redirect URI the flow started with.
    pub redirect_uri: String,
    /// Who started it.
    pub actor: String,
}

impl fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("workspace", &self.workspace)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The SHA-256 of an authorization's `state`, its key in the store.
fn state_hash(state: &str) -> Vec<u8> {
    Sha256::digest(state.as_bytes()).to_vec()
}

fn damaged(reason: String) -> StorageError {
    StorageError::Damaged {
        what: "an OAuth2 connection".into(),
        reason,
    }
}

fn field_aad(workspace: &str, name: &str, field: &str, config: &str) -> Vec<u8> {
    let mut aad = OAUTH_AAD_PREFIX.to_vec();
    for part in [workspace, name, field] {
        aad.extend_from_slice(part.as_bytes());
        aad.push(0);
    }
    aad.extend_from_slice(config.as_bytes());
    aad
}

fn key_error(doing: String) -> impl FnOnce(keys::KeyError) -> StorageError {
    move |e| StorageError::Internal(format!("{doing}: {e}"))
}

/// Seals one secret field of an OAuth2 client.
pub(crate) fn seal_field(
    dk: &DataKey,
    workspace: &str,
    name: &str,
    field: &str,
    config: &str,
    value: &str,
) -> StorageResult<Vec<u8>> {
    keys::seal(
        dk,
        value.as_bytes(),
        &field_aad(workspace, name, field, config),
    )
    .map_err(key_error(format!(
        "sealing the {field} of connection `{name}`"
    )))
}

fn open_field(
    dk: &DataKey,
    workspace: &str,
    name: &str,
    field: &str,
    config: &str,
    sealed: &[u8],
) -> StorageResult<SecretValue> {
    let tampered = || {
        damaged(format!(
            "the {field} of OAuth2 connection `{name}` in workspace `{workspace}` does not open: it was altered, or its configuration was"
        ))
    };
    let plain = keys::open(dk, sealed, &field_aad(workspace, name, field, config))
        .map_err(|_| tampered())?;
    let text = std::str::from_utf8(&plain).map_err(|_| tampered())?;
    Ok(SecretValue::new(text))
}

fn verifier_aad(workspace: &str, name: &str, hash: &[u8]) -> Vec<u8> {
    let mut aad = VERIFIER_AAD_PREFIX.to_vec();
    for part in [workspace, name] {
        aad.extend_from_slice(part.as_bytes());
        aad.push(0);
    }
    aad.extend_from_slice(hash);
    aad
}

/// The OAuth2 columns of a connection, as read with it.
#[derive(Debug, Clone)]
pub(crate) struct OAuthRow {
    pub(crate) state: OAuthState,
    pub(crate) reason: Option<String>,
    pub(crate) expires_at: Option<UnixMillis>,
    pub(crate) refreshed_at: Option<UnixMillis>,
}

impl OAuthRow {
    /// `Some(message)` when a job cannot use the connection as it stands.
    pub(crate) fn unusable(&self, name: &str, grant: Option<GrantKind>) -> Option<String> {
        match self.state {
            OAuthState::Pending => Some(format!(
                "OAuth2 connection `{name}` has not been authorised yet: run `wrun connection authorize {name}` or POST .../connections/{name}/authorize"
            )),
            OAuthState::NeedsReauth => {
                Some(needs_reauth_message(name, grant, self.reason.as_deref()))
            }
            OAuthState::Ready => None,
        }
    }

    /// `true` when the access token has at least [`MARGIN`] (or half its
    /// lifetime, if that is shorter) left.
    pub(crate) fn is_fresh(&self, now: UnixMillis) -> bool {
        let Some(expires_at) = self.expires_at else {
            return false;
        };
        let lifetime = self
            .refreshed_at
            .map_or(i64::MAX, |at| expires_at.0.saturating_sub(at.0));
        let margin = (MARGIN.as_millis() as i64).min(lifetime / 2);
        self.state == OAuthState::Ready && expires_at.0 > now.0.saturating_add(margin)
    }
}

fn needs_reauth_message(name: &str, grant: Option<GrantKind>, reason: Option<&str>) -> String {
    let reason = reason.map(|r| format!(" ({r})")).unwrap_or_default();
    match grant {
        Some(GrantKind::ClientCredentials) => format!(
            "OAuth2 connection `{name}` was refused by its provider{reason}: fix its client and add it again (`wrun connection add {name} --oauth2 client-credentials --replace ...` or PUT .../connections/{name}/oauth2)"
        ),
        _ => format!(
            "OAuth2 connection `{name}` needs to be authorised again{reason}: run `wrun connection authorize {name}` or POST .../connections/{name}/authorize"
        ),
    }
}

/// Reads the OAuth2 columns of a connection; `None` for other connections.
pub(crate) fn read_row(
    conn: &Connection,
    workspace: &str,
    name: &str,
) -> StorageResult<Option<OAuthRow>> {
    let row = conn
        .prepare_cached(
            "SELECT state, reason, expires_at, refreshed_at FROM oauth_clients
             WHERE workspace = ?1 AND name = ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![workspace, name], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })
            .optional()
        })
        .doing(|| format!("reading OAuth2 connection `{name}`"))?;
    row.map(|(state, reason, expires_at, refreshed_at)| {
        Ok(OAuthRow {
            state: OAuthState::parse(&state).ok_or_else(|| {
                damaged(format!(
                    "OAuth2 connection `{name}` has an unknown state `{state}`"
                ))
            })?,
            reason,
            expires_at: expires_at.map(UnixMillis),
            refreshed_at: refreshed_at.map(UnixMillis),
        })
    })
    .transpose()
}

/// The configuration and state of an OAuth2 connection; `None` for others.
pub(crate) fn read_status(
    conn: &Connection,
    workspace: &str,
    name: &str,
) -> StorageResult<Option<OAuthStatus>> {
    check_name("connection", name)?;
    let Some(row) = read_row(conn, workspace, name)? else {
        return Ok(None);
    };
    let config: String = conn
        .query_row(
            "SELECT config FROM oauth_clients WHERE workspace = ?1 AND name = ?2",
            params![workspace, name],
            |r| r.get(0),
        )
        .doing(|| format!("reading OAuth2 connection `{name}`"))?;
    Ok(Some(OAuthStatus {
        config: parse_config(name, &config)?,
        state: row.state,
        reason: row.reason,
        expires_at: row.expires_at,
        refreshed_at: row.refreshed_at,
    }))
}

fn parse_config(name: &str, text: &str) -> StorageResult<OAuthClientConfig> {
    serde_json::from_str(text).map_err(|_| {
        damaged(format!(
            "the OAuth2 configuration of connection `{name}` does not parse"
        ))
    })
}

/// Writes the OAuth2 row of a connection whose `connections` row the caller
/// has just written: a new client, no token yet.
pub(crate) fn put_client(
    conn: &Connection,
    dk: &DataKey,
    workspace: &str,
    name: &str,
    config: &OAuthClientConfig,
    client_secret: &SecretValue,
) -> StorageResult<()> {
    let config_json = serde_json::to_string(config)
        .map_err(|e| StorageError::Internal(format!("encoding an OAuth2 configuration: {e}")))?;
    let sealed = seal_field(
        dk,
        workspace,
        name,
        "client_secret",
        &config_json,
        client_secret.expose(),
    )?;
    conn.execute(
        "INSERT INTO oauth_clients (workspace, name, config, client_secret, refresh_token, state)
         VALUES (?1, ?2, ?3, ?4, NULL, 'pending')
         ON CONFLICT (workspace, name) DO UPDATE SET config = excluded.config,
            client_secret = excluded.client_secret, refresh_token = NULL, state = 'pending',
            reason = NULL, expires_at = NULL, refreshed_at = NULL, lease_holder = NULL,
            lease_until = NULL",
        params![workspace, name, config_json, sealed],
    )
    .doing(|| format!("storing OAuth2 connection `{name}`"))?;
    // Flows started for the client it replaces cannot finish with this one.
    conn.execute(
        "DELETE FROM oauth_authorizations WHERE workspace = ?1 AND name = ?2",
        params![workspace, name],
    )
    .doing(|| format!("storing OAuth2 connection `{name}`"))?;
    Ok(())
}

/// Opens the client secret of a connection.
pub(crate) fn read_client_secret(
    conn: &Connection,
    dk: &DataKey,
    workspace: &str,
    name: &str,
) -> StorageResult<SecretValue> {
    let (config, sealed): (String, Vec<u8>) = conn
        .query_row(
            "SELECT config, client_secret FROM oauth_clients WHERE workspace = ?1 AND name = ?2",
            params![workspace, name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .doing(|| format!("reading OAuth2 connection `{name}`"))?
        .ok_or_else(|| StorageError::NotFound {
            what: "OAuth2 connection",
            name: name.to_string(),
        })?;
    open_field(dk, workspace, name, "client_secret", &config, &sealed)
}

/// Takes the refresh lease of a connection for `holder` (in the caller's
/// write transaction, so the credentials are read under it), or says why
/// not.
pub(crate) fn take_lease(
    conn: &Connection,
    dk: &DataKey,
    workspace: &str,
    name: &str,
    holder: &str,
    now: UnixMillis,
) -> StorageResult<Lease> {
    let row = conn
        .query_row(
            "SELECT config, client_secret, refresh_token, state, reason, expires_at, lease_holder,
                lease_until, refreshed_at
             FROM oauth_clients WHERE workspace = ?1 AND name = ?2",
            params![workspace, name],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Option<Vec<u8>>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<i64>>(7)?,
                    r.get::<_, Option<i64>>(8)?,
                ))
            },
        )
        .optional()
        .doing(|| format!("reading OAuth2 connection `{name}`"))?;
    let Some((
        config_json,
        secret,
        refresh,
        state,
        reason,
        expires_at,
        lease_holder,
        lease_until,
        refreshed_at,
    )) = row
    else {
        return Ok(Lease::Missing);
    };
    let config = parse_config(name, &config_json)?;
    let oauth = OAuthRow {
        state: OAuthState::parse(&state).unwrap_or(OAuthState::NeedsReauth),
        reason,
        expires_at: expires_at.map(UnixMillis),
        refreshed_at: refreshed_at.map(UnixMillis),
    };
    if oauth.is_fresh(now) {
        return Ok(Lease::Fresh);
    }
    // A client-credentials connection can always ask; others need consent.
    if !(oauth.state == OAuthState::Pending && config.grant == GrantKind::ClientCredentials)
        && let Some(message) = oauth.unusable(name, Some(config.grant))
    {
        return Ok(Lease::NotUsable(message));
    }
    if let (Some(other), Some(until)) = (lease_holder, lease_until)
        && other != holder
        && until > now.0
    {
        return Ok(Lease::Busy(UnixMillis(until)));
    }
    let client_secret = open_field(dk, workspace, name, "client_secret", &config_json, &secret)?;
    let refresh_token = refresh
        .map(|sealed| open_field(dk, workspace, name, "refresh_token", &config_json, &sealed))
        .transpose()?;
    let current_access = crate::db::SealedConnection::read(conn, workspace, name)?
        .map(|sealed| sealed.open_value(dk, workspace))
        .transpose()?
        .filter(|value| !value.is_empty())
        .map(|value| SecretValue::new(value.as_str()));
    conn.execute(
        "UPDATE oauth_clients SET lease_holder = ?3, lease_until = ?4 WHERE workspace = ?1 AND name = ?2",
        params![workspace, name, holder, now.0 + LEASE.as_millis() as i64],
    )
    .doing(|| format!("taking the refresh lease of OAuth2 connection `{name}`"))?;
    Ok(Lease::Acquired(OAuthCredentials {
        config,
        client_secret,
        refresh_token,
        current_access,
    }))
}

/// Stores new tokens, if `holder` still holds the lease (or `holder` is
/// `None`: a person's authorization, which replaces whatever is there), and
/// ends the lease: the access token as the connection's sealed value, the
/// refresh token when the provider sent one.
pub(crate) fn store_tokens(
    conn: &Connection,
    dk: &DataKey,
    workspace: &str,
    name: &str,
    holder: Option<&str>,
    tokens: &IssuedTokens,
    now: UnixMillis,
) -> StorageResult<()> {
    let doing = || format!("storing the tokens of OAuth2 connection `{name}`");
    let (config_json, lease_holder): (String, Option<String>) = conn
        .query_row(
            "SELECT config, lease_holder FROM oauth_clients WHERE workspace = ?1 AND name = ?2",
            params![workspace, name],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .doing(doing)?
        .ok_or_else(|| StorageError::NotFound {
            what: "OAuth2 connection",
            name: name.to_string(),
        })?;
    if let Some(holder) = holder
        && lease_holder.as_deref() != Some(holder)
    {
        return Err(StorageError::Conflict(format!(
            "the refresh lease of OAuth2 connection `{name}` was lost; the new tokens are not stored"
        )));
    }
    if tokens.access.expose().len() < wrun_runtime::mask::MIN_VALUE_LEN {
        return Err(StorageError::Invalid {
            code: "weak_connection_value",
            message: format!(
                "the provider issued an access token for connection `{name}` shorter than {} bytes, too short to be masked reliably",
                wrun_runtime::mask::MIN_VALUE_LEN
            ),
        });
    }
    let sealed = crate::db::SealedConnection::read(conn, workspace, name)?
        .ok_or_else(|| StorageError::NotFound {
            what: "connection",
            name: name.to_string(),
        })?
        .reseal(dk, workspace, tokens.access.expose())?;
    conn.execute(
        "UPDATE connections SET sealed = ?3, rotated_at = ?4 WHERE workspace = ?1 AND name = ?2",
        params![workspace, name, sealed, now.0],
    )
    .doing(doing)?;
    let refresh = tokens
        .refresh
        .as_ref()
        .map(|rt| {
            seal_field(
                dk,
                workspace,
                name,
                "refresh_token",
                &config_json,
                rt.expose(),
            )
        })
        .transpose()?;
    let lifetime = tokens.expires_in.unwrap_or(DEFAULT_LIFETIME);
    let expires_at = now
        .0
        .saturating_add(lifetime.as_millis().min(i64::MAX as u128) as i64);
    conn.execute(
        "UPDATE oauth_clients SET refresh_token = COALESCE(?3, refresh_token), state = 'ready',
            reason = NULL, expires_at = ?4, refreshed_at = ?5, lease_holder = NULL, lease_until = NULL
         WHERE workspace = ?1 AND name = ?2",
        params![workspace, name, refresh, expires_at, now.0],
    )
    .doing(doing)?;
    Ok(())
}

/// Ends `holder`'s lease without tokens; returns `false` if it held none.
pub(crate) fn end_lease_in(
    conn: &Connection,
    workspace: &str,
    name: &str,
    holder: &str,
    end: &LeaseEnd,
) -> StorageResult<bool> {
    let n = match end {
        LeaseEnd::Release => conn.execute(
            "UPDATE oauth_clients SET lease_holder = NULL, lease_until = NULL
             WHERE workspace = ?1 AND name = ?2 AND lease_holder = ?3",
            params![workspace, name, holder],
        ),
        LeaseEnd::NeedsReauth(reason) => conn.execute(
            "UPDATE oauth_clients SET lease_holder = NULL, lease_until = NULL,
                state = 'needs_reauth', reason = ?4
             WHERE workspace = ?1 AND name = ?2 AND lease_holder = ?3",
            params![workspace, name, holder, reason],
        ),
    }
    .doing(|| format!("ending the refresh lease of OAuth2 connection `{name}`"))?;
    Ok(n > 0)
}

/// Records the start of an authorization code flow.
#[allow(clippy::too_many_arguments)]
pub(crate) fn begin_authorization(
    conn: &Connection,
    dk: &DataKey,
    workspace: &str,
    name: &str,
    state: &SecretValue,
    verifier: &SecretValue,
    redirect_uri: &str,
    actor: &str,
    now: UnixMillis,
) -> StorageResult<()> {
    let doing = || format!("starting the authorization of OAuth2 connection `{name}`");
    let hash = state_hash(state.expose());
    let sealed = keys::seal(
        dk,
        verifier.expose().as_bytes(),
        &verifier_aad(workspace, name, &hash),
    )
    .map_err(key_error(doing()))?;
    // Flows past their time are of no use to anyone.
    conn.execute(
        "DELETE FROM oauth_authorizations WHERE expires_at <= ?1",
        params![now.0],
    )
    .doing(doing)?;
    conn.execute(
        "INSERT INTO oauth_authorizations (state_hash, workspace, name, verifier, redirect_uri, actor, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            hash,
            workspace,
            name,
            sealed,
            redirect_uri,
            actor,
            now.0 + AUTHORIZATION_TTL.as_millis() as i64
        ],
    )
    .doing(doing)?;
    Ok(())
}

/// A flow taken from the store, its verifier still sealed.
pub(crate) struct TakenAuthorization {
    pub(crate) workspace: String,
    pub(crate) name: String,
    pub(crate) verifier: Vec<u8>,
    pub(crate) redirect_uri: String,
    pub(crate) actor: String,
}

/// Takes (and deletes: a `state` is good once) the flow of `state`; `None`
/// if there is none or it expired. The caller opens the verifier with the
/// workspace's key ([`open_verifier`]).
pub(crate) fn take_authorization(
    conn: &Connection,
    state: &str,
    now: UnixMillis,
) -> StorageResult<Option<TakenAuthorization>> {
    let hash = state_hash(state);
    let doing = || "finishing an OAuth2 authorization".to_string();
    let row = conn
        .query_row(
            "DELETE FROM oauth_authorizations WHERE state_hash = ?1
             RETURNING workspace, name, verifier, redirect_uri, actor, expires_at",
            params![hash],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            },
        )
        .optional()
        .doing(doing)?;
    Ok(row.filter(|row| row.5 > now.0).map(
        |(workspace, name, verifier, redirect_uri, actor, _)| TakenAuthorization {
            workspace,
            name,
            verifier,
            redirect_uri,
            actor,
        },
    ))
}

/// Opens a flow's sealed PKCE verifier.
pub(crate) fn open_verifier(
    dk: &DataKey,
    workspace: &str,
    name: &str,
    state: &str,
    sealed: &[u8],
) -> StorageResult<SecretValue> {
    let plain = keys::open(
        dk,
        sealed,
        &verifier_aad(workspace, name, &state_hash(state)),
    )
    .map_err(|_| {
        damaged(format!(
            "the PKCE verifier of an authorization of connection `{name}` does not open"
        ))
    })?;
    let text =
        std::str::from_utf8(&plain).map_err(|_| damaged("a PKCE verifier is not text".into()))?;
    Ok(SecretValue::new(text))
}

/// Counters of the refreshes this process made, for `/metrics`.
#[derive(Debug, Default)]
pub struct RefreshCounters {
    /// Token requests that gave a token.
    pub refreshed: std::sync::atomic::AtomicU64,
    /// Token requests that failed and may work later.
    pub failed: std::sync::atomic::AtomicU64,
    /// Connections marked `needs_reauth`.
    pub needs_reauth: std::sync::atomic::AtomicU64,
}

/// A lock per (workspace, connection) for the callers of one process.
type LocalLocks = HashMap<(String, String), Arc<tokio::sync::Mutex<()>>>;

/// What a process needs to refresh OAuth2 tokens: the token client (the
/// engine's egress), its lease-holder name, and a lock per connection so
/// that its own callers queue instead of polling the store.
pub struct Refresher {
    tokens: TokenClient,
    holder: String,
    local: Mutex<LocalLocks>,
    /// What it did.
    pub counters: RefreshCounters,
}

impl fmt::Debug for Refresher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refresher")
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl Refresher {
    /// A refresher sending through `tokens`, holding leases under a fresh
    /// random name.
    pub fn new(tokens: TokenClient) -> Refresher {
        let suffix: u64 = rand::random();
        Refresher {
            tokens,
            holder: format!("{}-{suffix:016x}", std::process::id()),
            local: Mutex::new(HashMap::new()),
            counters: RefreshCounters::default(),
        }
    }

    /// The token client.
    pub fn tokens(&self) -> &TokenClient {
        &self.tokens
    }

    fn local_lock(&self, workspace: &str, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            map.entry((workspace.to_string(), name.to_string()))
                .or_default(),
        )
    }
}

/// The audit entry of something the host did on its own.
fn system_entry(
    workspace: &str,
    action: &str,
    name: &str,
    outcome: Outcome,
    detail: serde_json::Value,
) -> Entry {
    Entry {
        workspace: Some(workspace.to_string()),
        actor: "system".into(),
        action: action.into(),
        target: format!("connection:{name}"),
        source: None,
        outcome,
        detail,
    }
}

/// Makes sure OAuth2 connection `name` (the stored name) has an access
/// token valid for at least [`MARGIN`], refreshing it if needed; see the
/// module docs.
///
/// # Errors
///
/// A message for the job: the connection needs a person (`needs_reauth`,
/// never authorised), the provider could not be reached, or the store
/// failed. It never holds a token or a secret.
pub async fn fresh_token(
    storage: &dyn Storage,
    refresher: &Refresher,
    workspace: &str,
    name: &str,
) -> Result<(), String> {
    let local = refresher.local_lock(workspace, name);
    let _queued = local.lock().await;
    let deadline = tokio::time::Instant::now() + LEASE + Duration::from_secs(5);
    loop {
        let lease = storage
            .oauth_lease(workspace, name, &refresher.holder)
            .await
            .map_err(|e| e.to_string())?;
        let credentials = match lease {
            Lease::Fresh | Lease::Missing => return Ok(()),
            Lease::NotUsable(message) => return Err(message),
            Lease::Busy(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(POLL).await;
                continue;
            }
            Lease::Busy(_) => {
                return Err(format!(
                    "OAuth2 connection `{name}`: another process has been refreshing its token for too long"
                ));
            }
            Lease::Acquired(credentials) => credentials,
        };
        let result = match (&credentials.refresh_token, credentials.config.grant) {
            (Some(rt), _) => {
                refresher
                    .tokens
                    .refresh(&credentials.config, &credentials.client_secret, rt)
                    .await
            }
            (None, GrantKind::ClientCredentials) => {
                refresher
                    .tokens
                    .client_credentials(&credentials.config, &credentials.client_secret)
                    .await
            }
            (None, GrantKind::AuthorizationCode) => Err(TokenError::Rejected {
                code: "no_refresh_token".into(),
                description: Some("the provider issued no refresh token".into()),
            }),
        };
        let grant = credentials.config.grant;
        // A provider's message may quote any token it knows: none is kept.
        let masker = wrun_runtime::mask::Masker::new(
            [
                Some(&credentials.client_secret),
                credentials.refresh_token.as_ref(),
                credentials.current_access.as_ref(),
            ]
            .into_iter()
            .flatten()
            .map(|v| v.expose().as_bytes()),
        );
        let result = result.map_err(|e| mask_error(&masker, e));
        drop(credentials);
        let counters = &refresher.counters;
        return match result {
            Ok(tokens) => {
                let audit = system_entry(
                    workspace,
                    "connection.oauth.refresh",
                    name,
                    Outcome::Success,
                    json!({ "rotated_refresh_token": tokens.refresh.is_some() }),
                );
                let stored = storage
                    .oauth_store_tokens(workspace, name, Some(&refresher.holder), tokens, audit)
                    .await;
                match stored {
                    Ok(()) => {
                        counters
                            .refreshed
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Ok(())
                    }
                    Err(StorageError::Invalid { message, .. }) => {
                        let end = LeaseEnd::NeedsReauth(message.clone());
                        finish_lease(storage, refresher, workspace, name, end).await;
                        Err(needs_reauth_message(name, Some(grant), Some(&message)))
                    }
                    Err(e) => Err(format!(
                        "OAuth2 connection `{name}`: the new token could not be stored: {e}"
                    )),
                }
            }
            Err(e) if e.needs_reauthorization() => {
                let reason = e.to_string();
                finish_lease(
                    storage,
                    refresher,
                    workspace,
                    name,
                    LeaseEnd::NeedsReauth(reason.clone()),
                )
                .await;
                Err(needs_reauth_message(name, Some(grant), Some(&reason)))
            }
            Err(e) => {
                counters
                    .failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                finish_lease(storage, refresher, workspace, name, LeaseEnd::Release).await;
                Err(format!("OAuth2 connection `{name}`: {e}"))
            }
        };
    }
}

/// A token error with every known token masked out of its text.
fn mask_error(masker: &wrun_runtime::mask::Masker, error: TokenError) -> TokenError {
    let mask = |text: String| masker.mask_str(&text).into_owned();
    match error {
        TokenError::Rejected { code, description } => TokenError::Rejected {
            code: mask(code),
            description: description.map(mask),
        },
        TokenError::Unavailable(m) => TokenError::Unavailable(mask(m)),
        TokenError::Malformed(m) => TokenError::Malformed(mask(m)),
    }
}

async fn finish_lease(
    storage: &dyn Storage,
    refresher: &Refresher,
    workspace: &str,
    name: &str,
    end: LeaseEnd,
) {
    let audit = match &end {
        LeaseEnd::NeedsReauth(reason) => {
            refresher
                .counters
                .needs_reauth
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%workspace, connection = %name, %reason, "OAuth2 connection needs to be authorised again");
            Some(system_entry(
                workspace,
                "connection.oauth.needs_reauth",
                name,
                Outcome::Failure,
                json!({ "reason": reason }),
            ))
        }
        LeaseEnd::Release => None,
    };
    if let Err(e) = storage
        .oauth_end_lease(workspace, name, &refresher.holder, end, audit)
        .await
    {
        tracing::error!(%workspace, connection = %name, error = %e, "ending an OAuth2 refresh lease failed");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use wrun_runtime::oauth::start_authorization;
    use wrun_runtime::policy::NetGrant;
    use wrun_runtime::{Placement, SecretValue};

    use super::*;
    use crate::keys::MasterKey;
    use crate::sqlite::SqliteStorage;
    use crate::storage::OAuthConnectionWrite;

    const WS: &str = "ws";

    fn entry() -> Entry {
        Entry {
            workspace: Some(WS.into()),
            actor: "test".into(),
            action: "test".into(),
            target: "connection".into(),
            source: None,
            outcome: Outcome::Success,
            detail: json!({}),
        }
    }

    fn write(grant: GrantKind, replace: bool) -> OAuthConnectionWrite {
        OAuthConnectionWrite {
            name: "crm".into(),
            hosts: NetGrant::parse_for_connection(&["api.crm.test".to_string()]).unwrap(),
            placement: Placement::bearer(),
            config: OAuthClientConfig {
                grant,
                token_url: "https://login.crm.test/token".into(),
                authorize_url: Some("https://login.crm.test/authorize".into()),
                client_id: "app".into(),
                scopes: vec![],
            },
            client_secret: SecretValue::new("client-secret-7c1e9b2d4f6a8e0c"),
            replace,
        }
    }

    fn tokens(access: &str, refresh: Option<&str>) -> IssuedTokens {
        IssuedTokens {
            access: SecretValue::new(access),
            refresh: refresh.map(SecretValue::new),
            expires_in: Some(Duration::from_secs(3600)),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_lease_fences_who_may_store_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite =
            SqliteStorage::open(&dir.path().join("wrun.db"), MasterKey::generate(), None).unwrap();
        let storage: &dyn Storage = &sqlite;
        storage
            .put_oauth_connection(WS, write(GrantKind::AuthorizationCode, false), entry())
            .await
            .unwrap();
        // Never authorised: nobody may refresh it.
        let lease = storage.oauth_lease(WS, "crm", "a").await.unwrap();
        assert!(
            matches!(&lease, Lease::NotUsable(m) if m.contains("not been authorised")),
            "{lease:?}"
        );
        // A person's authorization stores tokens without a lease.
        storage
            .oauth_store_tokens(
                WS,
                "crm",
                None,
                tokens("at_first_0123456789abcdef", Some("rt_first_0123456789")),
                entry(),
            )
            .await
            .unwrap();
        assert!(matches!(
            storage.oauth_lease(WS, "crm", "a").await.unwrap(),
            Lease::Fresh
        ));

        // Due for a refresh: the first holder gets the credentials as stored,
        // a second one waits, and only the holder's tokens are kept.
        sqlite
            .write(|ctx| {
                ctx.conn
                    .execute("UPDATE oauth_clients SET expires_at = 0", [])
                    .doing(|| "test".to_string())?;
                Ok(())
            })
            .await
            .unwrap();
        let Lease::Acquired(credentials) = storage.oauth_lease(WS, "crm", "a").await.unwrap()
        else {
            panic!("the first holder gets the lease");
        };
        assert_eq!(
            credentials.refresh_token.as_ref().map(SecretValue::expose),
            Some("rt_first_0123456789")
        );
        assert_eq!(
            credentials.client_secret.expose(),
            "client-secret-7c1e9b2d4f6a8e0c"
        );
        assert!(matches!(
            storage.oauth_lease(WS, "crm", "b").await.unwrap(),
            Lease::Busy(_)
        ));
        let stolen = storage
            .oauth_store_tokens(
                WS,
                "crm",
                Some("b"),
                tokens("at_stolen_0123456789abc", None),
                entry(),
            )
            .await;
        assert!(
            matches!(stolen, Err(StorageError::Conflict(_))),
            "{stolen:?}"
        );
        storage
            .oauth_store_tokens(
                WS,
                "crm",
                Some("a"),
                tokens("at_second_0123456789abc", Some("rt_second_012345678")),
                entry(),
            )
            .await
            .unwrap();
        assert!(matches!(
            storage.oauth_lease(WS, "crm", "b").await.unwrap(),
            Lease::Fresh
        ));
        // A holder that lost its lease cannot mark the connection either.
        storage
            .oauth_end_lease(WS, "crm", "a", LeaseEnd::NeedsReauth("late".into()), None)
            .await
            .unwrap();
        let status = storage.oauth_status(WS, "crm").await.unwrap().unwrap();
        assert_eq!(status.state, OAuthState::Ready);
    }

    #[test]
    fn a_provider_message_quoting_the_current_access_token_is_masked() {
        let access = "at_current_6b2f9d1c4e8a0357";
        let masker = wrun_runtime::mask::Masker::new([access]);
        let error = TokenError::Rejected {
            code: "invalid_grant".into(),
            description: Some(format!("token {access} was revoked")),
        };
        let text = mask_error(&masker, error).to_string();
        assert!(!text.contains(access), "{text}");
        assert!(
            text.contains("invalid_grant") && text.contains("was revoked"),
            "{text}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replacing_or_deleting_a_connection_drops_its_flows() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite =
            SqliteStorage::open(&dir.path().join("wrun.db"), MasterKey::generate(), None).unwrap();
        let storage: &dyn Storage = &sqlite;
        let w = write(GrantKind::AuthorizationCode, false);
        let config = w.config.clone();
        storage.put_oauth_connection(WS, w, entry()).await.unwrap();
        let start = || start_authorization(&config, "http://127.0.0.1:9/callback").unwrap();
        let first = start();
        storage
            .oauth_begin_authorization(WS, "crm", &first, "http://127.0.0.1:9/callback", entry())
            .await
            .unwrap();
        let again = storage
            .put_oauth_connection(WS, write(GrantKind::AuthorizationCode, false), entry())
            .await;
        assert!(matches!(again, Err(StorageError::Conflict(_))), "{again:?}");
        storage
            .put_oauth_connection(WS, write(GrantKind::AuthorizationCode, true), entry())
            .await
            .unwrap();
        assert!(
            storage
                .oauth_take_authorization(first.state.expose())
                .await
                .unwrap()
                .is_none()
        );

        let second = start();
        storage
            .oauth_begin_authorization(WS, "crm", &second, "http://127.0.0.1:9/callback", entry())
            .await
            .unwrap();
        assert!(storage.delete_connection(WS, "crm", entry()).await.unwrap());
        assert!(storage.oauth_status(WS, "crm").await.unwrap().is_none());
        assert!(
            storage
                .oauth_take_authorization(second.state.expose())
                .await
                .unwrap()
                .is_none()
        );
        // A state is good once.
        storage
            .put_oauth_connection(WS, write(GrantKind::AuthorizationCode, false), entry())
            .await
            .unwrap();
        let third = start();
        storage
            .oauth_begin_authorization(WS, "crm", &third, "http://127.0.0.1:9/callback", entry())
            .await
            .unwrap();
        let taken = storage
            .oauth_take_authorization(third.state.expose())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(taken.verifier.expose(), third.verifier.expose());
        assert!(
            storage
                .oauth_take_authorization(third.state.expose())
                .await
                .unwrap()
                .is_none()
        );
    }
}

//! The embedded store of `wrun`: one SQLite database holding workspaces,
//! encrypted connections, environment properties and bindings, and imported
//! recipes.
//!
//! # Files and durability
//!
//! The database is one file (by default `wrun.db`) plus SQLite's `-wal` and
//! `-shm` files next to it. A new database file is created by this module
//! with mode 0600 before SQLite opens it, so SQLite gives its `-wal` and
//! `-shm` files the same mode (they are also set to 0600 explicitly if
//! present). Every connection uses:
//!
//! - `journal_mode=WAL`: readers do not block the writer, and a crash never
//!   leaves a half-written transaction visible;
//! - `synchronous=FULL`: the WAL is synced to disk at every commit, so a
//!   write that `wrun` has acknowledged survives a power loss (`NORMAL` would
//!   keep the database consistent but could lose the last commits);
//! - `foreign_keys=ON`, `secure_delete=ON` (removed records are overwritten,
//!   not left in free pages), and `busy_timeout` of 5 seconds, so a second
//!   `wrun` process waits for the lock instead of failing at once.
//!
//! Opening never overwrites what is not a wrun database: a file that is not
//! SQLite, a SQLite database of another application, a damaged database, or
//! one whose schema is newer than this code are refused with an error that
//! says what is wrong and where, before anything is written.
//!
//! # Schema (version 9, kept in `PRAGMA user_version`)
//!
//! `PRAGMA application_id` is set to `0x7772756e` ("wrun"). Schema changes
//! run inside one `BEGIN IMMEDIATE` transaction together with the
//! `user_version` update, so an interrupted migration leaves the previous
//! version intact.
//!
//! | table | columns | notes |
//! |---|---|---|
//! | `meta` | `key` PK, `value` | `schema` (the version) and `master_fingerprint` (recorded by the first write that uses a master key) |
//! | `workspaces` | `name` PK, `wrapped_key` BLOB, `created_at` | the data key wrapped by the master key (see `keys`) |
//! | `connections` | (`workspace` → `workspaces`, `name`) PK, `sealed` BLOB, `hosts` (JSON array), `placement`, `created_at`, `rotated_at` NULL | the value sealed with the workspace data key |
//! | `properties` | (`workspace`, `environment`, `name`) PK, `value` | non-secret |
//! | `bindings` | (`workspace`, `environment`, `logical`) PK, `connection` | a recipe's connection name → a stored connection |
//! | `recipes` | (`workspace`, `name`) PK, `manifest`, `lock`, `imported_at` | imported or cloned recipes |
//!
//! Version 2 adds the daemon's tables (`members`, `roles`, `tokens`,
//! `components`, `triggers`, `jobs`, `job_steps`, `settings`, see
//! `SCHEMA_V2` and `daemon::sqlite` for what is sealed) and the audit log
//! (`audit`, `audit_head`, see `daemon::audit`); `meta.audit_key` holds the
//! audit MAC key wrapped by the master key. The daemon stores deployed
//! recipes in `recipes` with `lock` holding component path -> SHA-256.
//!
//! Times are milliseconds since the Unix epoch ([`UnixMillis`]); version 4
//! converted the columns that held seconds. Version 6 adds OAuth2 clients
//! and authorization flows (`oauth_clients`, `oauth_authorizations`; see
//! [`crate::oauth`]). Version 7 adds `jobs.erased_at`, the time a job's
//! content was destroyed for a data subject (see [`crate::erase`]).
//! Version 8 adds signed bundles and grant review: `recipes.signed_version`
//! and `signer`, `pending_recipes` (versions waiting for approval),
//! `signing_keys` (keys a workspace trusts or revoked) and the governance
//! flags in `settings`.
//! Version 9 adds `connection_limits` (a connection's outbound limits and
//! alert settings, JSON), `connection_suspensions` and `connection_usage`
//! (requests and bytes per connection, minute, job, step and host: the
//! egress trail and the baseline of alerts).
//!
//! # What is authenticated
//!
//! A connection value is sealed (AES-256-GCM) with its workspace's data key
//! and the associated data
//!
//! ```text
//! "wrun:conn:v1:" workspace NUL name NUL placement NUL hosts-json
//! ```
//!
//! so a sealed value copied to another workspace or connection fails to
//! open, and so do hosts or a placement changed behind `wrun`'s back: a
//! credential cannot be redirected to another host by editing the database.
//! Names are validated (no NUL), the placement has no control characters,
//! and the hosts JSON (last) has no raw NUL, so the encoding is unambiguous.
//! `created_at` and `rotated_at` are not authenticated.
//!
//! # The master key
//!
//! Every method that decrypts or encrypts takes the [`MasterKey`] and first
//! compares its fingerprint with `meta.master_fingerprint`, failing with
//! [`StoreError::KeyMismatch`] before anything is read or written. Methods
//! that touch no secret (listing, properties, bindings, recipes) need no key.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{
    Connection, ErrorCode, OpenFlags, OptionalExtension as _, Transaction, TransactionBehavior,
    params,
};
use zeroize::Zeroizing;

use crate::keys::{self, DataKey, KeyError, MasterKey};
use crate::storage::{ConnectionSummary, EnvironmentView};
use crate::time::UnixMillis;
use wrun_runtime::Placement;
use wrun_runtime::policy::{HostPattern, NetGrant};

/// The schema version this code creates and understands.
pub const SCHEMA_VERSION: i64 = 11;

/// `PRAGMA application_id` of a wrun database: "wrun" in ASCII.
const APPLICATION_ID: i64 = 0x7772_756e;

/// The first 16 bytes of every SQLite 3 database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// How long a connection waits for another process's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Associated-data prefix of a sealed connection value.
const CONNECTION_AAD_PREFIX: &[u8] = b"wrun:conn:v1:";

/// The name the audit log key is wrapped under (not a valid workspace
/// name, so it cannot collide with one).
const AUDIT_KEY_NAME: &str = "!audit";

/// The longest name accepted for a workspace, environment, connection,
/// property, binding or recipe.
const MAX_NAME_LEN: usize = 64;

/// The schema of version 1, applied to an empty database.
const SCHEMA_V1: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) STRICT;
CREATE TABLE workspaces (
    name        TEXT PRIMARY KEY NOT NULL,
    wrapped_key BLOB NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;
CREATE TABLE connections (
    workspace  TEXT NOT NULL REFERENCES workspaces(name) ON DELETE RESTRICT,
    name       TEXT NOT NULL,
    sealed     BLOB NOT NULL,
    hosts      TEXT NOT NULL,
    placement  TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    rotated_at INTEGER,
    PRIMARY KEY (workspace, name)
) STRICT;
CREATE TABLE properties (
    workspace   TEXT NOT NULL,
    environment TEXT NOT NULL,
    name        TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (workspace, environment, name)
) STRICT;
CREATE TABLE bindings (
    workspace   TEXT NOT NULL,
    environment TEXT NOT NULL,
    logical     TEXT NOT NULL,
    connection  TEXT NOT NULL,
    PRIMARY KEY (workspace, environment, logical)
) STRICT;
CREATE TABLE recipes (
    workspace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    lock        TEXT NOT NULL,
    imported_at INTEGER NOT NULL,
    PRIMARY KEY (workspace, name)
) STRICT;
";

/// Version 3: recipes that `wrun import` wrote before the CLI deployed
/// through the store's operation were in the CLI's own form (the whole
/// bundle lock as JSON, the time in seconds, no stored components). They are
/// rewritten to the form every reader expects (the component path → SHA-256
/// map, milliseconds), so they are listed and read like any other; running
/// one reports its missing components until it is imported or deployed
/// again. Rows already in that form are left as they are.
fn migrate_cli_recipes(tx: &Connection) -> Result<(), StoreError> {
    let doing = || "migrating recipes imported by an earlier `wrun import`".to_string();
    let rows: Vec<(String, String, String, i64)> = {
        let mut stmt = tx
            .prepare("SELECT workspace, name, lock, imported_at FROM recipes")
            .doing(doing)?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .doing(doing)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().doing(doing)?
    };
    for (workspace, name, lock, imported_at) in rows {
        let Ok(serde_json::Value::Object(lock)) = serde_json::from_str(&lock) else {
            continue;
        };
        let (true, Some(serde_json::Value::Object(components))) =
            (lock.contains_key("format"), lock.get("components"))
        else {
            continue;
        };
        let components = serde_json::to_string(components).map_err(|e| StoreError::Malformed {
            what: format!("the lock of recipe `{name}` in workspace `{workspace}`"),
            reason: if e.is_data() { "not a map" } else { "not JSON" },
        })?;
        tx.execute(
            "UPDATE recipes SET lock = ?3, imported_at = ?4 WHERE workspace = ?1 AND name = ?2",
            params![
                workspace,
                name,
                components,
                imported_at.saturating_mul(1000)
            ],
        )
        .doing(doing)?;
    }
    Ok(())
}

/// Version 4: one time unit. The columns that held Unix seconds now hold
/// milliseconds like the jobs, recipes and the audit log always did, so
/// every stored instant is a [`UnixMillis`]. (Jobs, recipes and audit rows
/// are untouched; a schedule's slot is an instant like the others.)
const MIGRATE_V4_MILLIS: &str = "
UPDATE workspaces SET created_at = created_at * 1000;
UPDATE connections SET created_at = created_at * 1000, rotated_at = rotated_at * 1000;
UPDATE members SET created_at = created_at * 1000;
UPDATE tokens SET created_at = created_at * 1000, expires_at = expires_at * 1000,
    revoked_at = revoked_at * 1000, last_used_at = last_used_at * 1000;
UPDATE triggers SET created_at = created_at * 1000, last_slot = last_slot * 1000;
";

/// Version 5: a webhook may answer its request with its job's result
/// (`respond`: the JSON of `storage::RespondMode`, NULL for a plain webhook).
const MIGRATE_V5_RESPOND: &str = "ALTER TABLE triggers ADD COLUMN respond TEXT;";

/// Schema version 7: when a job's content was erased for a data subject.
const MIGRATE_V7_ERASED: &str = "ALTER TABLE jobs ADD COLUMN erased_at INTEGER;";

/// Schema version 9: outbound limits, suspensions and usage per connection.
const MIGRATE_V9_LIMITS: &str = "
CREATE TABLE connection_limits (
    workspace TEXT NOT NULL,
    name      TEXT NOT NULL,
    limits    TEXT NOT NULL,
    PRIMARY KEY (workspace, name)
) STRICT;
CREATE TABLE connection_suspensions (
    workspace    TEXT NOT NULL,
    name         TEXT NOT NULL,
    reason       TEXT NOT NULL,
    suspended_at INTEGER NOT NULL,
    PRIMARY KEY (workspace, name)
) STRICT;
CREATE TABLE connection_usage (
    workspace  TEXT NOT NULL,
    connection TEXT NOT NULL,
    minute     INTEGER NOT NULL,
    recipe     TEXT NOT NULL,
    step       TEXT NOT NULL,
    job        TEXT NOT NULL,
    host       TEXT NOT NULL,
    requests   INTEGER NOT NULL,
    bytes_out  INTEGER NOT NULL,
    bytes_in   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace, connection, minute, job, step, host)
) STRICT;
";

/// Schema version 8: signed bundles, grant review, trusted signing keys.
const MIGRATE_V8_SIGNED: &str = "
ALTER TABLE recipes ADD COLUMN signed_version INTEGER;
ALTER TABLE recipes ADD COLUMN signer TEXT;
ALTER TABLE settings ADD COLUMN require_signatures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE settings ADD COLUMN review_grants INTEGER NOT NULL DEFAULT 0;
CREATE TABLE pending_recipes (
    workspace      TEXT NOT NULL,
    name           TEXT NOT NULL,
    id             TEXT NOT NULL,
    manifest       TEXT NOT NULL,
    lock           TEXT NOT NULL,
    signed_version INTEGER,
    signer         TEXT,
    review         TEXT NOT NULL,
    submitted_by   TEXT NOT NULL,
    submitted_at   INTEGER NOT NULL,
    PRIMARY KEY (workspace, name)
) STRICT;
CREATE TABLE signing_keys (
    workspace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    id         TEXT NOT NULL,
    public_key TEXT NOT NULL,
    added_at   INTEGER NOT NULL,
    revoked_at INTEGER,
    PRIMARY KEY (workspace, name),
    UNIQUE (workspace, id)
) STRICT;
";

/// Version 2: the daemon's tables (members, roles, API tokens, stored
/// components, triggers, jobs and their steps, workspace settings) and the
/// audit log. Sealed columns use the workspace data key; see
/// `daemon::storage` for their associated data.
const SCHEMA_V2: &str = "
CREATE TABLE members (
    workspace  TEXT NOT NULL,
    subject    TEXT NOT NULL,
    role       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (workspace, subject)
) STRICT;
CREATE TABLE roles (
    workspace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    permissions TEXT NOT NULL,
    PRIMARY KEY (workspace, name)
) STRICT;
CREATE TABLE tokens (
    id           TEXT PRIMARY KEY NOT NULL,
    workspace    TEXT NOT NULL,
    name         TEXT NOT NULL,
    hash         BLOB NOT NULL,
    owner        TEXT NOT NULL,
    creator      TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    allow_ips    TEXT NOT NULL,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    revoked_at   INTEGER,
    last_used_at INTEGER,
    last_used_ip TEXT
) STRICT;
CREATE INDEX tokens_workspace ON tokens (workspace);
CREATE TABLE components (
    sha256 TEXT PRIMARY KEY NOT NULL,
    bytes  BLOB NOT NULL
) STRICT;
CREATE TABLE triggers (
    id          TEXT PRIMARY KEY NOT NULL,
    workspace   TEXT NOT NULL,
    recipe      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    environment TEXT NOT NULL,
    secret      BLOB,
    cron        TEXT,
    timezone    TEXT,
    input       BLOB,
    last_slot   INTEGER,
    created_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX triggers_recipe ON triggers (workspace, recipe);
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY NOT NULL,
    workspace       TEXT NOT NULL,
    recipe          TEXT NOT NULL,
    environment     TEXT NOT NULL,
    state           TEXT NOT NULL,
    trigger_kind    TEXT NOT NULL,
    payload         BLOB NOT NULL,
    idempotency_key TEXT,
    rerun_of        TEXT,
    created_at      INTEGER NOT NULL,
    started_at      INTEGER,
    finished_at     INTEGER,
    error           BLOB,
    UNIQUE (workspace, recipe, idempotency_key)
) STRICT;
CREATE INDEX jobs_state ON jobs (state);
CREATE INDEX jobs_workspace_created ON jobs (workspace, created_at);
CREATE TABLE job_steps (
    job        TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL,
    step       TEXT NOT NULL,
    status     TEXT NOT NULL,
    history    BLOB NOT NULL,
    checkpoint BLOB,
    PRIMARY KEY (job, idx)
) STRICT;
CREATE TABLE settings (
    workspace      TEXT PRIMARY KEY NOT NULL,
    retention_days INTEGER
) STRICT;
";

/// Whether [`Store::open`] may create a missing database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Create the file (mode 0600) and the schema if the file is missing.
    CreateIfMissing,
    /// Fail with [`StoreError::Missing`] if there is no database at the path.
    MustExist,
}

/// Why a store operation failed. Messages say what was being done and
/// where; none contains a connection value or key material.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// There is no database at the path (or only an empty file).
    #[error(
        "no wrun database at {} (create one with `wrun key init`, or point --db or WRUN_DB at an existing database)",
        path.display()
    )]
    Missing {
        /// The path that was opened.
        path: PathBuf,
    },
    /// The file is not a SQLite database, or its header is damaged.
    #[error("{} is not a SQLite database (or its header is damaged); it was left untouched", path.display())]
    NotSqlite {
        /// The file.
        path: PathBuf,
    },
    /// The file is a SQLite database of another application.
    #[error("{} is a SQLite database of another application, not a wrun database; it was left untouched", path.display())]
    Foreign {
        /// The file.
        path: PathBuf,
    },
    /// The database was written by a newer wrun.
    #[error(
        "the wrun database at {} has schema version {found}, newer than the version {known} this wrun understands; use a newer wrun",
        path.display()
    )]
    TooNew {
        /// The file.
        path: PathBuf,
        /// The version found in the file.
        found: i64,
        /// The newest version this code knows.
        known: i64,
    },
    /// SQLite reports the database as damaged.
    #[error("{doing}: the database is damaged ({source}); restore it from a backup")]
    Corrupt {
        /// What was being done.
        doing: String,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// A file-system operation failed.
    #[error("{doing}: {source}")]
    Io {
        /// What was being done.
        doing: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// A SQL statement failed.
    #[error("{doing}: {source}")]
    Sql {
        /// What was being done.
        doing: String,
        /// SQLite's error.
        source: rusqlite::Error,
    },
    /// The master key is not the one this database was set up with.
    #[error(
        "the master key does not match this database (expected fingerprint {expected}, got {got})"
    )]
    KeyMismatch {
        /// The fingerprint recorded in the database.
        expected: String,
        /// The fingerprint of the key given.
        got: String,
    },
    /// `rotate_master_key` was given the current key as the new one.
    #[error(
        "the new master key is the current one (fingerprint {fingerprint}); generate a new key to rotate"
    )]
    SameKey {
        /// The fingerprint of both keys.
        fingerprint: String,
    },
    /// A name is empty, too long, or has characters outside `A-Za-z0-9-_.`.
    #[error(
        "invalid {what} name `{shown}`: use 1 to 64 characters of letters, digits, `-`, `_` or `.`"
    )]
    InvalidName {
        /// Which kind of name ("workspace", "connection", ...).
        what: &'static str,
        /// The name, escaped and shortened for display.
        shown: String,
    },
    /// An input other than a name is not acceptable.
    #[error("{what}: {reason}")]
    InvalidInput {
        /// Which input.
        what: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A sealed connection value failed to open: altered, or copied from
    /// another record, or its hosts or placement were changed.
    #[error(
        "connection `{name}` in workspace `{workspace}` failed authentication: the stored record was altered or moved"
    )]
    Tampered {
        /// The workspace.
        workspace: String,
        /// The connection.
        name: String,
    },
    /// A wrapped data key failed to unwrap although the master key's
    /// fingerprint matched.
    #[error(
        "the data key of workspace `{workspace}` failed authentication under the master key: the stored record was altered or moved"
    )]
    DataKeyTampered {
        /// The workspace.
        workspace: String,
    },
    /// A stored field cannot be read back (for example hosts that are not a
    /// JSON array of strings).
    #[error("{what} is malformed in the database: {reason}")]
    Malformed {
        /// Which record and field.
        what: String,
        /// What is wrong (never the content).
        reason: &'static str,
    },
    /// The audit log could not be read or verified.
    #[error("the audit log: {0}")]
    Audit(String),
    /// Encryption failed.
    #[error("{doing}: {source}")]
    Key {
        /// What was being done.
        doing: String,
        /// The cause.
        source: KeyError,
    },
}

/// Adds "what was being done" to SQLite errors, and tells damage apart.
pub trait Doing<T> {
    /// Wraps the error with `doing()`.
    fn doing(self, doing: impl FnOnce() -> String) -> Result<T, StoreError>;
}

impl<T> Doing<T> for rusqlite::Result<T> {
    fn doing(self, doing: impl FnOnce() -> String) -> Result<T, StoreError> {
        self.map_err(|source| {
            let doing = doing();
            match source.sqlite_error_code() {
                Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
                    StoreError::Corrupt { doing, source }
                }
                _ => StoreError::Sql { doing, source },
            }
        })
    }
}

/// An open wrun database.
///
/// Methods take `&self`; a `Store` is `Send` but not `Sync`, so share one
/// behind a `Mutex` (or open one per thread: several stores, in one process
/// or several, may use the same file).
pub struct Store {
    conn: Connection,
    path: PathBuf,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Checks a name: 1 to 64 characters of `A-Za-z0-9-_.`.
pub fn check_name(what: &'static str, name: &str) -> Result<(), StoreError> {
    let ok = (1..=MAX_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        return Ok(());
    }
    let mut shown: String = name
        .chars()
        .take(MAX_NAME_LEN)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if name.chars().count() > MAX_NAME_LEN {
        shown.push('…');
    }
    Err(StoreError::InvalidName { what, shown })
}

/// Checks a placement: not empty, no control characters.
pub fn check_placement(placement: &str) -> Result<(), StoreError> {
    if placement.trim().is_empty() {
        return Err(StoreError::InvalidInput {
            what: "connection placement".into(),
            reason: "it is empty",
        });
    }
    if placement.chars().any(char::is_control) {
        return Err(StoreError::InvalidInput {
            what: "connection placement".into(),
            reason: "it contains control characters",
        });
    }
    Ok(())
}

/// The JSON text of a hosts list.
pub(crate) fn hosts_json(hosts: &[String]) -> Result<String, StoreError> {
    serde_json::to_string(hosts).map_err(|_| StoreError::InvalidInput {
        what: "connection hosts".into(),
        reason: "they cannot be written as JSON",
    })
}

/// Parses the stored hosts of a connection.
pub(crate) fn parse_hosts(
    workspace: &str,
    name: &str,
    json: &str,
) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json).map_err(|_| StoreError::Malformed {
        what: format!("the hosts of connection `{name}` in workspace `{workspace}`"),
        reason: "not a JSON array of strings",
    })
}

/// The associated data of a sealed connection value.
pub(crate) fn connection_aad(
    workspace: &str,
    name: &str,
    placement: &str,
    hosts_json: &str,
) -> Vec<u8> {
    let mut aad = Vec::with_capacity(
        CONNECTION_AAD_PREFIX.len()
            + workspace.len()
            + name.len()
            + placement.len()
            + hosts_json.len()
            + 3,
    );
    aad.extend_from_slice(CONNECTION_AAD_PREFIX);
    aad.extend_from_slice(workspace.as_bytes());
    aad.push(0);
    aad.extend_from_slice(name.as_bytes());
    aad.push(0);
    aad.extend_from_slice(placement.as_bytes());
    aad.push(0);
    aad.extend_from_slice(hosts_json.as_bytes());
    aad
}

/// Seals a connection value with its workspace's data key, bound to
/// (workspace, name, placement, hosts): the one sealing path of the CLI
/// store and the daemon.
pub fn seal_connection(
    data_key: &DataKey,
    workspace: &str,
    name: &str,
    value: &str,
    placement: &str,
    hosts_json: &str,
) -> Result<Vec<u8>, StoreError> {
    let aad = connection_aad(workspace, name, placement, hosts_json);
    keys::seal(data_key, value.as_bytes(), &aad).map_err(|source| StoreError::Key {
        doing: format!("sealing connection `{name}` of workspace `{workspace}`"),
        source,
    })
}

/// Opens a sealed connection value and parses its hosts: the one opening
/// path of the CLI store and the daemon. The value is moved out of the
/// decrypted buffer without a copy, so only zeroizing owners hold it.
pub(crate) fn open_connection(
    data_key: &DataKey,
    workspace: &str,
    name: &str,
    sealed: &[u8],
    placement: &str,
    hosts_json: &str,
) -> Result<(Zeroizing<String>, Vec<String>), StoreError> {
    let tampered = || StoreError::Tampered {
        workspace: workspace.into(),
        name: name.into(),
    };
    let aad = connection_aad(workspace, name, placement, hosts_json);
    let mut plain = keys::open(data_key, sealed, &aad).map_err(|_| tampered())?;
    let value = match String::from_utf8(std::mem::take(&mut *plain)) {
        Ok(value) => Zeroizing::new(value),
        Err(e) => {
            drop(Zeroizing::new(e.into_bytes()));
            return Err(tampered());
        }
    };
    Ok((value, parse_hosts(workspace, name, hosts_json)?))
}

/// Parses the stored placement of a connection.
fn parse_placement(workspace: &str, name: &str, text: &str) -> Result<Placement, StoreError> {
    text.parse().map_err(|_| StoreError::Malformed {
        what: format!("the placement of connection `{name}` in workspace `{workspace}`"),
        reason: "it does not parse as a placement",
    })
}

/// Parses the stored hosts of a connection into the runtime's patterns.
fn parse_host_patterns(
    workspace: &str,
    name: &str,
    json: &str,
) -> Result<Vec<HostPattern>, StoreError> {
    parse_hosts(workspace, name, json)?
        .iter()
        .map(|h| HostPattern::parse(h))
        .collect::<Result<_, _>>()
        .map_err(|_| StoreError::Malformed {
            what: format!("the hosts of connection `{name}` in workspace `{workspace}`"),
            reason: "a host does not parse as a host pattern",
        })
}

/// The JSON text a connection's hosts are stored (and sealed) as: the
/// normalised patterns.
pub(crate) fn grant_json(hosts: &NetGrant) -> Result<String, StoreError> {
    let hosts: Vec<String> = hosts.patterns().iter().map(ToString::to_string).collect();
    hosts_json(&hosts)
}

/// The connections of a workspace, by name, without their values: the one
/// listing of the CLI and the daemon.
pub(crate) fn read_connections(
    conn: &Connection,
    workspace: &str,
) -> Result<Vec<ConnectionSummary>, StoreError> {
    check_name("workspace", workspace)?;
    let doing = || format!("listing connections of workspace `{workspace}`");
    let mut stmt = conn
        .prepare_cached(
            "SELECT c.name, c.hosts, c.placement, c.created_at, c.rotated_at, o.state
             FROM connections c
             LEFT JOIN oauth_clients o ON o.workspace = c.workspace AND o.name = c.name
             WHERE c.workspace = ?1 ORDER BY c.name",
        )
        .doing(doing)?;
    let rows = stmt
        .query_map(params![workspace], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get::<_, Option<String>>(5)?,
            ))
        })
        .doing(doing)?;
    let mut out = Vec::new();
    for row in rows {
        let (name, hosts, placement, created_at, rotated_at, oauth) = row.doing(doing)?;
        out.push(ConnectionSummary {
            oauth2: oauth.map(|state| {
                crate::oauth::OAuthState::parse(&state)
                    .unwrap_or(crate::oauth::OAuthState::NeedsReauth)
            }),
            hosts: parse_host_patterns(workspace, &name, &hosts)?,
            placement: parse_placement(workspace, &name, &placement)?,
            name,
            created_at,
            rotated_at,
        });
    }
    Ok(out)
}

/// An environment's properties and bindings: the one reading of the CLI
/// and the daemon.
pub(crate) fn read_environment(
    conn: &Connection,
    workspace: &str,
    environment: &str,
) -> Result<EnvironmentView, StoreError> {
    check_name("workspace", workspace)?;
    check_name("environment", environment)?;
    let doing = || format!("reading environment `{environment}` of workspace `{workspace}`");
    let pairs = |sql: &str| -> Result<BTreeMap<String, String>, StoreError> {
        let mut stmt = conn.prepare_cached(sql).doing(doing)?;
        let rows = stmt
            .query_map(params![workspace, environment], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .doing(doing)?;
        rows.collect::<rusqlite::Result<BTreeMap<String, String>>>()
            .doing(doing)
    };
    Ok(EnvironmentView {
        properties: pairs(
            "SELECT name, value FROM properties WHERE workspace = ?1 AND environment = ?2",
        )?,
        bindings: pairs(
            "SELECT logical, connection FROM bindings WHERE workspace = ?1 AND environment = ?2",
        )?,
    })
}

/// The stored connection a recipe's connection name refers to in an
/// environment: its binding, or the same name when it has none.
pub(crate) fn resolve_in(
    conn: &Connection,
    workspace: &str,
    environment: &str,
    logical: &str,
) -> Result<String, StoreError> {
    check_name("workspace", workspace)?;
    check_name("environment", environment)?;
    check_name("logical connection", logical)?;
    let bound: Option<String> = conn
        .prepare_cached(
            "SELECT connection FROM bindings WHERE workspace = ?1 AND environment = ?2 AND logical = ?3",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![workspace, environment, logical], |r| r.get(0))
                .optional()
        })
        .doing(|| format!("resolving `{logical}` in environment `{environment}` of workspace `{workspace}`"))?;
    Ok(bound.unwrap_or_else(|| logical.to_string()))
}

/// A connection's value (zeroed on drop), hosts and placement as stored.
#[cfg(test)]
type OpenedConnection = (Zeroizing<String>, Vec<String>, String);

/// A stored connection before its value is opened.
pub(crate) struct SealedConnection {
    /// Its name in the workspace.
    name: String,
    /// The sealed value.
    sealed: Vec<u8>,
    /// Hosts JSON, as sealed.
    hosts: String,
    /// Placement, as sealed.
    placement: String,
}

impl SealedConnection {
    /// Reads connection `name` of `workspace`; `None` if there is none.
    pub(crate) fn read(
        conn: &Connection,
        workspace: &str,
        name: &str,
    ) -> Result<Option<SealedConnection>, StoreError> {
        check_name("workspace", workspace)?;
        check_name("connection", name)?;
        conn.prepare_cached(
            "SELECT sealed, hosts, placement FROM connections WHERE workspace = ?1 AND name = ?2",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![workspace, name], |r| {
                Ok(SealedConnection {
                    name: name.to_string(),
                    sealed: r.get(0)?,
                    hosts: r.get(1)?,
                    placement: r.get(2)?,
                })
            })
            .optional()
        })
        .doing(|| format!("reading connection `{name}` of workspace `{workspace}`"))
    }

    /// Reads the connection a recipe's connection name refers to in an
    /// environment (see [`resolve_in`]).
    pub(crate) fn read_bound(
        conn: &Connection,
        workspace: &str,
        environment: &str,
        logical: &str,
    ) -> Result<Option<SealedConnection>, StoreError> {
        let stored = resolve_in(conn, workspace, environment, logical)?;
        SealedConnection::read(conn, workspace, &stored)
    }

    /// The connection's name in its workspace.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Seals `value` for this record's name, hosts and placement (an
    /// OAuth2 connection's new access token).
    pub(crate) fn reseal(
        &self,
        data_key: &DataKey,
        workspace: &str,
        value: &str,
    ) -> Result<Vec<u8>, StoreError> {
        seal_connection(
            data_key,
            workspace,
            &self.name,
            value,
            &self.placement,
            &self.hosts,
        )
    }

    /// Opens the value alone (checking that the record was not altered or
    /// moved), to re-seal it for another target.
    pub(crate) fn open_value(
        &self,
        data_key: &DataKey,
        workspace: &str,
    ) -> Result<Zeroizing<String>, StoreError> {
        open_connection(
            data_key,
            workspace,
            &self.name,
            &self.sealed,
            &self.placement,
            &self.hosts,
        )
        .map(|(value, _)| value)
    }

    /// Opens the value (checking that the record was not altered or moved)
    /// and gives the runtime's connection, known to the recipe as
    /// `known_as`.
    pub(crate) fn open(
        &self,
        data_key: &DataKey,
        workspace: &str,
        known_as: &str,
    ) -> Result<wrun_runtime::Connection, StoreError> {
        let (value, hosts) = open_connection(
            data_key,
            workspace,
            &self.name,
            &self.sealed,
            &self.placement,
            &self.hosts,
        )?;
        let placement = parse_placement(workspace, &self.name, &self.placement)?;
        wrun_runtime::Connection::new(
            known_as,
            wrun_runtime::SecretValue::new(value.as_str()),
            hosts,
            placement,
        )
        .map_err(|_| StoreError::Malformed {
            what: format!("connection `{}` in workspace `{workspace}`", self.name),
            reason: "its hosts, placement or value no longer pass the runtime's checks",
        })
    }
}

/// Makes sure `path` is a regular file, creating it (mode 0600) if allowed.
fn prepare_file(path: &Path, mode: OpenMode) -> Result<(), StoreError> {
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(StoreError::Io {
            doing: format!("opening the wrun database at {}", path.display()),
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => match mode {
            OpenMode::MustExist => Err(StoreError::Missing { path: path.into() }),
            OpenMode::CreateIfMissing => {
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt as _;
                    options.mode(0o600);
                }
                match options.open(path) {
                    // Another process created it first: open theirs.
                    Ok(_) => Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
                    Err(source) => Err(StoreError::Io {
                        doing: format!("creating the wrun database at {}", path.display()),
                        source,
                    }),
                }
            }
        },
        Err(source) => Err(StoreError::Io {
            doing: format!("opening the wrun database at {}", path.display()),
            source,
        }),
    }
}

/// Checks the SQLite header of a non-empty file, without SQLite, so that a
/// foreign file is never handed to SQLite. Returns whether the file is empty.
fn check_header(path: &Path) -> Result<bool, StoreError> {
    let io_err = |source| StoreError::Io {
        doing: format!("reading the wrun database at {}", path.display()),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_err)?;
    let mut header = Vec::with_capacity(SQLITE_HEADER.len());
    file.take(SQLITE_HEADER.len() as u64)
        .read_to_end(&mut header)
        .map_err(io_err)?;
    if header.is_empty() {
        return Ok(true);
    }
    if header != SQLITE_HEADER {
        return Err(StoreError::NotSqlite { path: path.into() });
    }
    Ok(false)
}

/// Sets mode 0600 on the `-wal` and `-shm` files of `path` if they exist
/// and are more open than that while the database file itself is not (an
/// operator who opened up the database file on purpose is not overruled).
fn restrict_side_files(path: &Path) -> Result<(), StoreError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode_of = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
        let main = mode_of(path).map_err(|source| StoreError::Io {
            doing: format!("reading the mode of {}", path.display()),
            source,
        })?;
        if main & 0o077 != 0 {
            return Ok(());
        }
        for suffix in ["-wal", "-shm"] {
            let mut side = path.as_os_str().to_owned();
            side.push(suffix);
            let side = PathBuf::from(side);
            let restrict = match mode_of(&side) {
                Ok(mode) => mode & 0o077 != 0,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(source) => {
                    return Err(StoreError::Io {
                        doing: format!("reading the mode of {}", side.display()),
                        source,
                    });
                }
            };
            if restrict {
                std::fs::set_permissions(&side, std::fs::Permissions::from_mode(0o600)).map_err(
                    |source| StoreError::Io {
                        doing: format!("restricting {} to mode 0600", side.display()),
                        source,
                    },
                )?;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

impl Store {
    /// Opens the wrun database at `path`, creating it if `mode` allows.
    ///
    /// A new file is created with mode 0600 before SQLite opens it. An
    /// existing file is checked before anything is written: it must start
    /// with the SQLite header, carry wrun's `application_id` (or be empty),
    /// and have a schema version this code knows. Then WAL, `synchronous =
    /// FULL`, foreign keys, secure delete and a 5 s busy timeout are set and
    /// the schema is created or migrated in one transaction.
    ///
    /// # Errors
    ///
    /// [`StoreError::Missing`] (with `MustExist` and no file, or an empty
    /// one), [`StoreError::NotSqlite`], [`StoreError::Foreign`],
    /// [`StoreError::Corrupt`], [`StoreError::TooNew`]; I/O and SQL errors
    /// name the path.
    pub fn open(path: &Path, mode: OpenMode) -> Result<Store, StoreError> {
        prepare_file(path, mode)?;
        let empty = check_header(path)?;
        if empty && mode == OpenMode::MustExist {
            return Err(StoreError::Missing { path: path.into() });
        }
        let shown = path.display().to_string();
        let doing = || format!("opening the wrun database at {shown}");
        // No SQLITE_OPEN_CREATE: the file exists (it was checked above), and
        // SQLite must not create one of its own mode if it vanished since.
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .doing(doing)?;
        conn.busy_timeout(BUSY_TIMEOUT).doing(doing)?;

        // Read-only checks first, so a refused file is left as it was.
        let read = |conn: &Connection| -> rusqlite::Result<(i64, i64, i64)> {
            let version = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
            let app = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
            let objects = conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
            Ok((version, app, objects))
        };
        let (version, app, objects) = match read(&conn) {
            Ok(v) => v,
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::NotADatabase) => {
                return Err(StoreError::NotSqlite { path: path.into() });
            }
            Err(e) => return Err(e).doing(doing),
        };
        if app != APPLICATION_ID && (app != 0 || version != 0 || objects != 0) {
            return Err(StoreError::Foreign { path: path.into() });
        }
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.into(),
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if version == 0 && mode == OpenMode::MustExist {
            return Err(StoreError::Missing { path: path.into() });
        }

        let journal: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .doing(doing)?;
        if !journal.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Io {
                doing: doing(),
                source: io::Error::other(format!(
                    "SQLite could not switch to WAL journaling (it kept `{journal}`); is the file system local?"
                )),
            });
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .doing(doing)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .doing(doing)?;
        conn.pragma_update(None, "secure_delete", "ON")
            .doing(doing)?;

        let store = Store {
            conn,
            path: path.into(),
        };
        store.migrate()?;
        restrict_side_files(path)?;
        Ok(store)
    }

    /// Brings the schema to [`SCHEMA_VERSION`] in one transaction.
    fn migrate(&self) -> Result<(), StoreError> {
        let shown = self.path.display().to_string();
        let doing = || format!("creating the schema of the wrun database at {shown}");
        let tx = self.begin(TransactionBehavior::Immediate, doing)?;
        // Read again under the write lock: another process may have migrated.
        let version: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .doing(doing)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if version == SCHEMA_VERSION {
            return Ok(());
        }
        if version < 1 {
            tx.execute_batch(SCHEMA_V1).doing(doing)?;
            tx.pragma_update(None, "application_id", APPLICATION_ID)
                .doing(doing)?;
        }
        if version < 2 {
            tx.execute_batch(SCHEMA_V2).doing(doing)?;
            tx.execute_batch(crate::audit::AUDIT_SCHEMA).doing(doing)?;
        }
        if version < 3 {
            migrate_cli_recipes(&tx)?;
        }
        if version < 4 {
            tx.execute_batch(MIGRATE_V4_MILLIS).doing(doing)?;
        }
        if version < 5 {
            tx.execute_batch(MIGRATE_V5_RESPOND).doing(doing)?;
        }
        if version < 6 {
            tx.execute_batch(crate::oauth::MIGRATE_V6_OAUTH)
                .doing(doing)?;
        }
        if version < 7 {
            tx.execute_batch(MIGRATE_V7_ERASED).doing(doing)?;
        }
        if version < 8 {
            tx.execute_batch(MIGRATE_V8_SIGNED).doing(doing)?;
        }
        if version < 9 {
            tx.execute_batch(MIGRATE_V9_LIMITS).doing(doing)?;
        }
        if version < 10 {
            tx.execute_batch(crate::sessions::MIGRATE_V10_SESSIONS)
                .doing(doing)?;
        }
        if version < 11 {
            tx.execute_batch(crate::claims::MIGRATE_V11_CLAIMS)
                .doing(doing)?;
        }
        // Later versions add their steps here, each guarded by `version < N`.
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('schema', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![SCHEMA_VERSION.to_string()],
        )
        .doing(doing)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .doing(doing)?;
        tx.commit().doing(doing)
    }

    /// The underlying SQLite connection, for the daemon's storage layer.
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The data key of `workspace`, after checking `key`; created with the
    /// workspace when missing and `create` is set.
    ///
    /// # Errors
    ///
    /// [`StoreError::KeyMismatch`], [`StoreError::DataKeyTampered`], name
    /// and SQL errors.
    pub fn data_key(
        &self,
        workspace: &str,
        key: &MasterKey,
        create: bool,
    ) -> Result<Option<DataKey>, StoreError> {
        check_name("workspace", workspace)?;
        let doing = || format!("reading the data key of workspace `{workspace}`");
        let tx = self.begin(TransactionBehavior::Immediate, doing)?;
        Store::check_key_in(&tx, key, create)?;
        let data_key = Store::data_key_in(&tx, workspace, key, create)?;
        tx.commit().doing(doing)?;
        Ok(data_key)
    }

    /// The audit log's MAC key, created (random, wrapped by `key` and kept
    /// in `meta.audit_key`) on first use. Rotation re-wraps it.
    ///
    /// # Errors
    ///
    /// [`StoreError::KeyMismatch`], [`StoreError::DataKeyTampered`] if the
    /// stored key does not unwrap, SQL errors.
    pub fn audit_key(&self, key: &MasterKey) -> Result<DataKey, StoreError> {
        let doing = || "reading the audit log key".to_string();
        let tx = self.begin(TransactionBehavior::Immediate, doing)?;
        Store::check_key_in(&tx, key, true)?;
        let stored: Option<Vec<u8>> = tx
            .query_row("SELECT value FROM meta WHERE key = 'audit_key'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .doing(doing)?
            .map(|b64| {
                use base64::Engine as _;
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .unwrap_or_default()
            });
        let audit_key = match stored {
            Some(wrapped) => {
                keys::unwrap_data_key(key, &wrapped, AUDIT_KEY_NAME).map_err(|_| {
                    StoreError::DataKeyTampered {
                        workspace: "(audit log)".into(),
                    }
                })?
            }
            None => {
                use base64::Engine as _;
                let fresh = DataKey::generate();
                let wrapped =
                    keys::wrap_data_key(key, &fresh, AUDIT_KEY_NAME).map_err(|source| {
                        StoreError::Key {
                            doing: "wrapping the audit log key".into(),
                            source,
                        }
                    })?;
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('audit_key', ?1)",
                    params![base64::engine::general_purpose::STANDARD.encode(wrapped)],
                )
                .doing(doing)?;
                fresh
            }
        };
        tx.commit().doing(doing)?;
        Ok(audit_key)
    }

    /// Verifies the audit chain under `key` (see [`crate::audit::verify`]).
    ///
    /// # Errors
    ///
    /// A wrong master key; a database that cannot be read.
    pub fn verify_audit(&self, key: &MasterKey) -> Result<crate::audit::VerifyReport, StoreError> {
        let audit_key = crate::audit::AuditKey::from_bytes(*self.audit_key(key)?.bytes());
        crate::audit::verify(&self.conn, &audit_key).map_err(|e| StoreError::Audit(e.to_string()))
    }

    /// Writes the audit entries after `after` (of one workspace, or all) to
    /// `out` as JSON lines; returns the last `seq` written.
    ///
    /// # Errors
    ///
    /// A database that cannot be read; `out` failing.
    pub fn stream_audit(
        &self,
        after: u64,
        out: &mut impl std::io::Write,
        workspace: Option<&str>,
    ) -> Result<u64, StoreError> {
        crate::audit::stream(&self.conn, after, out, workspace)
            .map_err(|e| StoreError::Audit(e.to_string()))
    }

    /// The path the store was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Begins a transaction.
    fn begin(
        &self,
        behavior: TransactionBehavior,
        doing: impl FnOnce() -> String,
    ) -> Result<Transaction<'_>, StoreError> {
        Transaction::new_unchecked(&self.conn, behavior).doing(doing)
    }

    /// Checks `key` against the recorded fingerprint; when none is recorded
    /// and `claim` is set, records this key's.
    fn check_key_in(conn: &Connection, key: &MasterKey, claim: bool) -> Result<(), StoreError> {
        let doing = || "checking the master key against the database".to_string();
        let expected: Option<String> = conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'master_fingerprint'",
                [],
                |r| r.get(0),
            )
            .optional()
            .doing(doing)?;
        let got = key.fingerprint();
        match expected {
            Some(expected) if expected == got => Ok(()),
            Some(expected) => Err(StoreError::KeyMismatch { expected, got }),
            None if claim => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('master_fingerprint', ?1)",
                    params![got],
                )
                .doing(doing)?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Checks that `key` is the master key of this database.
    ///
    /// A database that has never used a master key (no workspace yet)
    /// accepts any key; the first write that uses one records it.
    ///
    /// # Errors
    ///
    /// [`StoreError::KeyMismatch`] naming both fingerprints.
    pub fn check_key(&self, key: &MasterKey) -> Result<(), StoreError> {
        Store::check_key_in(&self.conn, key, false)
    }

    /// The data key of `workspace`, created (and the workspace with it) if
    /// missing and `create` is set.
    fn data_key_in(
        conn: &Connection,
        workspace: &str,
        key: &MasterKey,
        create: bool,
    ) -> Result<Option<DataKey>, StoreError> {
        let wrapped: Option<Vec<u8>> = conn
            .query_row(
                "SELECT wrapped_key FROM workspaces WHERE name = ?1",
                params![workspace],
                |r| r.get(0),
            )
            .optional()
            .doing(|| format!("reading the data key of workspace `{workspace}`"))?;
        match wrapped {
            Some(wrapped) => keys::unwrap_data_key(key, &wrapped, workspace)
                .map(Some)
                .map_err(|_| StoreError::DataKeyTampered {
                    workspace: workspace.into(),
                }),
            None if create => {
                let data_key = DataKey::generate();
                let wrapped = keys::wrap_data_key(key, &data_key, workspace).map_err(|source| {
                    StoreError::Key {
                        doing: format!("wrapping the data key of workspace `{workspace}`"),
                        source,
                    }
                })?;
                conn.execute(
                    "INSERT INTO workspaces (name, wrapped_key, created_at) VALUES (?1, ?2, ?3)",
                    params![workspace, wrapped, UnixMillis::now()],
                )
                .doing(|| format!("creating workspace `{workspace}`"))?;
                Ok(Some(data_key))
            }
            None => Ok(None),
        }
    }

    /// The data key of a workspace that has a connection (so it must have a
    /// key). The daemon's connection source has its own cached keys; this
    /// serves the store's own tests.
    #[cfg(test)]
    fn existing_data_key_in(
        conn: &Connection,
        workspace: &str,
        key: &MasterKey,
    ) -> Result<DataKey, StoreError> {
        Store::data_key_in(conn, workspace, key, false)?.ok_or_else(|| StoreError::Malformed {
            what: format!("workspace `{workspace}`"),
            reason: "it has a connection but no data key",
        })
    }

    /// Creates `workspace` with a fresh data key wrapped by `key`, unless it
    /// exists. Records `key`'s fingerprint if the database has none yet.
    ///
    /// # Errors
    ///
    /// [`StoreError::KeyMismatch`], [`StoreError::DataKeyTampered`] if the
    /// workspace exists but its key does not unwrap, name and SQL errors.
    pub fn ensure_workspace(&self, workspace: &str, key: &MasterKey) -> Result<(), StoreError> {
        check_name("workspace", workspace)?;
        let doing = || format!("creating workspace `{workspace}`");
        let tx = self.begin(TransactionBehavior::Immediate, doing)?;
        Store::check_key_in(&tx, key, true)?;
        Store::data_key_in(&tx, workspace, key, true)?;
        tx.commit().doing(doing)
    }

    /// The workspaces, by name.
    ///
    /// # Errors
    ///
    /// SQL errors.
    #[cfg(test)]
    pub fn list_workspaces(&self) -> Result<Vec<String>, StoreError> {
        let doing = || "listing workspaces".to_string();
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM workspaces ORDER BY name")
            .doing(doing)?;
        let rows = stmt.query_map([], |r| r.get(0)).doing(doing)?;
        rows.collect::<rusqlite::Result<Vec<String>>>().doing(doing)
    }

    /// The connections of `workspace`, by name, without their values.
    ///
    /// # Errors
    ///
    /// SQL errors, [`StoreError::Malformed`] for unreadable hosts or
    /// placements.
    pub fn list_connections(&self, workspace: &str) -> Result<Vec<ConnectionSummary>, StoreError> {
        read_connections(&self.conn, workspace)
    }

    /// The connection a recipe's connection name refers to in an
    /// environment (its binding, or the same name), opened for a local run
    /// and known to the runtime by the recipe's name; `None` if there is
    /// none.
    ///
    /// # Errors
    ///
    /// [`StoreError::KeyMismatch`]; [`StoreError::Tampered`] if the sealed
    /// value, its hosts or its placement were altered, or the value was
    /// copied from another record; [`StoreError::DataKeyTampered`]; SQL
    /// errors.
    #[cfg(test)]
    pub fn bound_connection(
        &self,
        workspace: &str,
        environment: &str,
        logical: &str,
        key: &MasterKey,
    ) -> Result<Option<wrun_runtime::Connection>, StoreError> {
        let doing = || format!("reading connection `{logical}` of workspace `{workspace}`");
        // One read transaction: the key check, the data key and the record
        // come from the same snapshot even if a rotation commits meanwhile.
        let tx = self.begin(TransactionBehavior::Deferred, doing)?;
        Store::check_key_in(&tx, key, false)?;
        let Some(sealed) = SealedConnection::read_bound(&tx, workspace, environment, logical)?
        else {
            return Ok(None);
        };
        let data_key = Store::existing_data_key_in(&tx, workspace, key)?;
        let connection = sealed.open(&data_key, workspace, logical)?;
        tx.commit().doing(doing)?;
        Ok(Some(connection))
    }

    /// Decrypts connection `name`: its value (zeroed on drop), hosts and
    /// placement as stored; `None` if there is none.
    #[cfg(test)]
    pub fn connection_value(
        &self,
        workspace: &str,
        name: &str,
        key: &MasterKey,
    ) -> Result<Option<OpenedConnection>, StoreError> {
        let doing = || format!("reading connection `{name}` of workspace `{workspace}`");
        let tx = self.begin(TransactionBehavior::Deferred, doing)?;
        Store::check_key_in(&tx, key, false)?;
        let Some(sealed) = SealedConnection::read(&tx, workspace, name)? else {
            return Ok(None);
        };
        let data_key = Store::existing_data_key_in(&tx, workspace, key)?;
        let (value, hosts) = open_connection(
            &data_key,
            workspace,
            name,
            &sealed.sealed,
            &sealed.placement,
            &sealed.hosts,
        )?;
        tx.commit().doing(doing)?;
        Ok(Some((value, hosts, sealed.placement)))
    }

    /// An environment's properties and bindings.
    ///
    /// # Errors
    ///
    /// Invalid names, SQL errors.
    pub fn environment(
        &self,
        workspace: &str,
        environment: &str,
    ) -> Result<EnvironmentView, StoreError> {
        read_environment(&self.conn, workspace, environment)
    }

    /// The properties of an environment, by name.
    #[cfg(test)]
    pub fn properties(
        &self,
        workspace: &str,
        environment: &str,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        Ok(self.environment(workspace, environment)?.properties)
    }

    /// The bindings of an environment: recipe connection name → stored
    /// connection name.
    #[cfg(test)]
    pub fn bindings(
        &self,
        workspace: &str,
        environment: &str,
    ) -> Result<BTreeMap<String, String>, StoreError> {
        Ok(self.environment(workspace, environment)?.bindings)
    }

    /// Re-wraps every workspace data key from `old` to `new` and records
    /// `new`'s fingerprint, in one `BEGIN IMMEDIATE` transaction: if anything
    /// fails (a wrong `old`, a data key that does not unwrap, a crash), the
    /// database keeps the old state and `old` keeps working. Connection
    /// values are sealed with the data keys and are not touched. Returns the
    /// number of data keys re-wrapped.
    ///
    /// Afterwards the WAL is checkpointed and truncated so the old wrapped
    /// keys do not linger in it (secure delete clears them from the main
    /// file). Copies and backups of the database taken before the rotation
    /// still open with `old`: rotation limits the use of the old key from
    /// now on, it does not re-encrypt the values.
    ///
    /// # Errors
    ///
    /// [`StoreError::KeyMismatch`] if `old` is not the current key,
    /// [`StoreError::SameKey`], [`StoreError::DataKeyTampered`] naming the
    /// workspace whose key does not unwrap, SQL errors. `entry` is appended
    /// to the audit log in the same transaction.
    pub fn rotate_master_key(
        &self,
        old: &MasterKey,
        new: &MasterKey,
        entry: &crate::audit::Entry,
    ) -> Result<usize, StoreError> {
        if old.fingerprint() == new.fingerprint() {
            return Err(StoreError::SameKey {
                fingerprint: new.fingerprint(),
            });
        }
        let doing = || "rotating the master key".to_string();
        let tx = self.begin(TransactionBehavior::Immediate, doing)?;
        Store::check_key_in(&tx, old, false)?;
        let wrapped: Vec<(String, Vec<u8>)> = {
            let mut stmt = tx
                .prepare("SELECT name, wrapped_key FROM workspaces ORDER BY name")
                .doing(doing)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .doing(doing)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().doing(doing)?
        };
        // Unwrap everything before writing anything.
        let mut data_keys = Vec::with_capacity(wrapped.len());
        for (workspace, wrapped) in &wrapped {
            let data_key = keys::unwrap_data_key(old, wrapped, workspace).map_err(|_| {
                StoreError::DataKeyTampered {
                    workspace: workspace.clone(),
                }
            })?;
            data_keys.push((workspace, data_key));
        }
        for (workspace, data_key) in &data_keys {
            let rewrapped = keys::wrap_data_key(new, data_key, workspace).map_err(|source| {
                StoreError::Key {
                    doing: format!("re-wrapping the data key of workspace `{workspace}`"),
                    source,
                }
            })?;
            tx.execute(
                "UPDATE workspaces SET wrapped_key = ?2 WHERE name = ?1",
                params![workspace, rewrapped],
            )
            .doing(|| format!("re-wrapping the data key of workspace `{workspace}`"))?;
        }
        let audit: Option<String> = tx
            .query_row("SELECT value FROM meta WHERE key = 'audit_key'", [], |r| {
                r.get(0)
            })
            .optional()
            .doing(doing)?;
        use base64::Engine as _;
        let b64e = &base64::engine::general_purpose::STANDARD;
        // The audit log's key, re-wrapped under the new key (or created, if
        // nothing was audited yet): the rotation's own entry goes in the
        // same transaction.
        let audit_key = match audit {
            Some(b64) => {
                let tampered = || StoreError::DataKeyTampered {
                    workspace: "(audit log)".into(),
                };
                let wrapped = b64e.decode(b64).map_err(|_| tampered())?;
                keys::unwrap_data_key(old, &wrapped, AUDIT_KEY_NAME).map_err(|_| tampered())?
            }
            None => DataKey::generate(),
        };
        let rewrapped = keys::wrap_data_key(new, &audit_key, AUDIT_KEY_NAME).map_err(|source| {
            StoreError::Key {
                doing: "re-wrapping the audit log key".into(),
                source,
            }
        })?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('audit_key', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![b64e.encode(rewrapped)],
        )
        .doing(doing)?;
        let chain = crate::audit::AuditKey::from_bytes(*audit_key.bytes());
        crate::audit::append(&tx, &chain, UnixMillis::now(), std::slice::from_ref(entry))
            .map_err(|e| StoreError::Audit(e.to_string()))?;
        tx.execute(
            "INSERT INTO meta (key, value) VALUES ('master_fingerprint', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![new.fingerprint()],
        )
        .doing(doing)?;
        tx.commit().doing(doing)?;
        // Best effort: another reader may hold the WAL; the rotation itself
        // is committed either way.
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        Ok(data_keys.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{ConnectionWrite, EnvChange, Storage as _, StorageError};

    /// The audit entry of a rotation in these tests.
    fn rotation() -> crate::audit::Entry {
        crate::audit::Entry {
            workspace: None,
            actor: "test".into(),
            action: "key.rotate".into(),
            target: "master-key".into(),
            source: None,
            outcome: crate::audit::Outcome::Success,
            detail: serde_json::json!({}),
        }
    }

    /// A fresh directory under the system temp dir, removed on drop.
    fn tempdir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("wrun-store-")
            .tempdir()
            .unwrap()
    }

    /// A new store in a new directory, with its key.
    struct Env {
        dir: tempfile::TempDir,
        store: Store,
        key: MasterKey,
    }

    impl Env {
        fn new() -> Env {
            let dir = tempdir();
            let store =
                Store::open(&dir.path().join("wrun.db"), OpenMode::CreateIfMissing).unwrap();
            let key = MasterKey::generate();
            store.ensure_workspace("ws", &key).unwrap();
            Env { dir, store, key }
        }

        fn db(&self) -> PathBuf {
            self.dir.path().join("wrun.db")
        }

        /// The store's operations on this database, with the env's key.
        fn ops(&self) -> Ops {
            Ops::open(&self.db(), &self.key).unwrap()
        }

        /// Connection `a` in workspace `ws` and `b` in `ws2`.
        fn add_a_and_b(&self) {
            self.add("a", "value-a-Vq7Lm2Xz9Rp4Kd8");
            self.ops()
                .create(
                    "ws2",
                    "b",
                    "value-b-Bz4Tq8Lw2Nc6Jy9",
                    &["h.example"],
                    "query:k",
                )
                .unwrap();
        }

        /// Adds connection `name` to workspace `ws` through the operation.
        fn add(&self, name: &str, value: &str) {
            self.ops()
                .create("ws", name, value, &["api.example.com"], BEARER)
                .unwrap();
        }

        fn value(&self, name: &str) -> Result<Option<OpenedConnection>, StoreError> {
            self.store.connection_value("ws", name, &self.key)
        }

        /// Every row of every table, as text, to compare states.
        fn dump(&self) -> Vec<String> {
            dump(&self.store.conn)
        }
    }

    const BEARER: &str = "header:Authorization=Bearer {}";
    /// Connection values strong enough for the store's rule.
    const A: &str = "ghp_Vq7Lm2Xz9Rp4Kd8Wn3Hs6Ty";
    const B: &str = "xoxb-Bz4Tq8Lw2Nc6Jy9Hr3Pv5";
    const C: &str = "sk_live_Jf3Gd9Mn4Qa7Xc2Ve8Rb";

    /// The store's operations ([`crate::storage::Storage`] over SQLite),
    /// driven from these synchronous tests: every change below is made by
    /// the operation the CLI and the daemon call, with its audit entry.
    struct Ops {
        rt: tokio::runtime::Runtime,
        storage: std::sync::Arc<crate::sqlite::SqliteStorage>,
    }

    impl Ops {
        fn open(db: &Path, key: &MasterKey) -> Result<Ops, StorageError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let key = MasterKey::from_base64(&key.to_base64()).unwrap();
            let storage = crate::sqlite::SqliteStorage::open(db, key, None)?;
            Ok(Ops { rt, storage })
        }

        fn audit(&self, action: &str) -> crate::audit::Entry {
            crate::audit::Entry {
                workspace: Some("ws".into()),
                actor: "test".into(),
                action: action.into(),
                target: "t".into(),
                source: None,
                outcome: crate::audit::Outcome::Success,
                detail: serde_json::json!({}),
            }
        }

        fn put(&self, ws: &str, write: ConnectionWrite) -> Result<(), StorageError> {
            let audit = self.audit("connection.put");
            self.rt
                .block_on(self.storage.put_connection(ws, write, audit))
        }

        fn connection(
            name: &str,
            value: &str,
            hosts: &[&str],
            placement: &str,
        ) -> Result<wrun_runtime::Connection, StorageError> {
            let placement = placement
                .parse()
                .map_err(|e: wrun_runtime::ConnectionError| StorageError::Invalid {
                    code: "invalid_placement",
                    message: e.to_string(),
                })?;
            wrun_runtime::Connection::new(
                name,
                wrun_runtime::SecretValue::new(value),
                hosts,
                placement,
            )
            .map_err(|e| StorageError::Invalid {
                code: "invalid_connection",
                message: e.to_string(),
            })
        }

        /// Writes a connection with a value: `kind` is `Create`, `Replace`
        /// or `Put`.
        fn write(
            &self,
            kind: fn(wrun_runtime::Connection) -> ConnectionWrite,
            ws: &str,
            (name, value): (&str, &str),
            hosts: &[&str],
            placement: &str,
        ) -> Result<(), StorageError> {
            let c = Ops::connection(name, value, hosts, placement)?;
            self.put(ws, kind(c))
        }

        fn create(
            &self,
            ws: &str,
            name: &str,
            value: &str,
            hosts: &[&str],
            placement: &str,
        ) -> Result<(), StorageError> {
            self.write(ConnectionWrite::Create, ws, (name, value), hosts, placement)
        }

        fn replace(
            &self,
            ws: &str,
            name: &str,
            value: &str,
            hosts: &[&str],
            placement: &str,
        ) -> Result<(), StorageError> {
            self.write(
                ConnectionWrite::Replace,
                ws,
                (name, value),
                hosts,
                placement,
            )
        }

        fn retarget(
            &self,
            ws: &str,
            name: &str,
            hosts: &[&str],
            placement: &str,
        ) -> Result<(), StorageError> {
            self.put(
                ws,
                ConnectionWrite::Retarget {
                    name: name.into(),
                    hosts: NetGrant::parse(hosts).unwrap(),
                    placement: placement.parse().unwrap(),
                },
            )
        }

        fn delete(&self, ws: &str, name: &str) -> Result<bool, StorageError> {
            let audit = self.audit("connection.delete");
            self.rt
                .block_on(self.storage.delete_connection(ws, name, audit))
        }

        fn change(&self, ws: &str, env: &str, change: EnvChange) -> Result<(), StorageError> {
            let audit = self.audit("environment.change");
            self.rt
                .block_on(self.storage.change_environment(ws, env, change, audit))
        }

        fn set(&self, ws: &str, env: &str, name: &str, value: &str) -> Result<(), StorageError> {
            self.change(ws, env, EnvChange::SetProperty(name.into(), value.into()))
        }

        fn bind(&self, ws: &str, env: &str, logical: &str, to: &str) -> Result<(), StorageError> {
            self.change(ws, env, EnvChange::Bind(logical.into(), to.into()))
        }
    }

    /// The first column of every row a query gives.
    fn column<T: rusqlite::types::FromSql>(conn: &Connection, sql: &str) -> Vec<T> {
        let mut stmt = conn.prepare(sql).unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn dump(conn: &Connection) -> Vec<String> {
        let mut out = Vec::new();
        for table in [
            "meta",
            "workspaces",
            "connections",
            "properties",
            "bindings",
            "recipes",
        ] {
            let mut stmt = conn
                .prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2"))
                .unwrap();
            let n = stmt.column_count();
            let rows = stmt
                .query_map([], |r| {
                    let mut row = format!("{table}:");
                    for i in 0..n {
                        row.push_str(&format!(" {:?}", r.get_ref(i)?));
                    }
                    Ok(row)
                })
                .unwrap();
            out.extend(rows.map(Result::unwrap));
        }
        out
    }

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[cfg(unix)]
    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn side(path: &Path, suffix: &str) -> PathBuf {
        let mut s = path.as_os_str().to_owned();
        s.push(suffix);
        PathBuf::from(s)
    }

    #[test]
    fn types_cross_threads_and_errors_convert_to_anyhow() {
        fn assert_send<T: Send>() {}
        fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send::<Store>();
        assert_send_sync::<std::sync::Mutex<Store>>();
        assert_send_sync::<MasterKey>();
        assert_error::<StoreError>();
        assert_error::<KeyError>();
    }

    #[test]
    fn create_then_reopen() {
        let dir = tempdir();
        let path = dir.path().join("wrun.db");
        let key = MasterKey::generate();
        {
            let store = Store::open(&path, OpenMode::CreateIfMissing).unwrap();
            assert_eq!(store.path(), path);
            store.ensure_workspace("ws", &key).unwrap();
            Ops::open(&path, &key)
                .unwrap()
                .set("ws", "dev", "BASE_URL", "http://x")
                .unwrap();
        }
        let store = Store::open(&path, OpenMode::MustExist).unwrap();
        assert_eq!(store.list_workspaces().unwrap(), vec!["ws".to_string()]);
        assert_eq!(
            store.properties("ws", "dev").unwrap()["BASE_URL"],
            "http://x"
        );
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let journal: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
        let sync: i64 = store
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        let fk: i64 = store
            .conn
            .pragma_query_value(None, "foreign_keys", |r| r.get(0))
            .unwrap();
        assert_eq!(fk, 1);
        // Opening with CreateIfMissing again changes nothing.
        drop(store);
        let again = Store::open(&path, OpenMode::CreateIfMissing).unwrap();
        assert_eq!(again.list_workspaces().unwrap(), vec!["ws".to_string()]);
        again.check_key(&key).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn new_database_and_side_files_are_0600() {
        let env = Env::new();
        env.add("github", A);
        let db = env.db();
        assert_eq!(mode_of(&db), 0o600);
        for suffix in ["-wal", "-shm"] {
            let p = side(&db, suffix);
            assert!(p.exists(), "{suffix} exists while the store is open");
            assert_eq!(mode_of(&p), 0o600, "{suffix}");
        }
    }

    #[test]
    fn must_exist_on_a_missing_path() {
        let dir = tempdir();
        let path = dir.path().join("absent.db");
        let err = Store::open(&path, OpenMode::MustExist).unwrap_err();
        assert!(matches!(err, StoreError::Missing { .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("no wrun database at {}", path.display())),
            "{msg}"
        );
        assert!(msg.contains("wrun key init"), "{msg}");
        assert!(!path.exists(), "nothing was created");
        // An empty file is no database either, and stays empty.
        std::fs::write(&path, b"").unwrap();
        let err = Store::open(&path, OpenMode::MustExist).unwrap_err();
        assert!(matches!(err, StoreError::Missing { .. }), "{err}");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        // CreateIfMissing adopts the empty file.
        Store::open(&path, OpenMode::CreateIfMissing).unwrap();
        Store::open(&path, OpenMode::MustExist).unwrap();
    }

    #[test]
    fn create_in_a_missing_directory_names_the_path() {
        let dir = tempdir();
        let path = dir.path().join("nope").join("wrun.db");
        let err = Store::open(&path, OpenMode::CreateIfMissing).unwrap_err();
        assert!(matches!(err, StoreError::Io { .. }), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        let err = Store::open(dir.path(), OpenMode::CreateIfMissing).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }

    #[test]
    fn non_sqlite_file_is_refused_and_untouched() {
        let dir = tempdir();
        let cases: &[&[u8]] = &[
            b"hello, this is a text file that happens to be long enough\n",
            b"SQLite",
            b"SQLite format 2\0 and more bytes after it",
            &[0u8; 4096],
        ];
        for (i, contents) in cases.iter().enumerate() {
            let path = dir.path().join(format!("file-{i}"));
            std::fs::write(&path, contents).unwrap();
            for mode in [OpenMode::CreateIfMissing, OpenMode::MustExist] {
                let err = Store::open(&path, mode).unwrap_err();
                assert!(matches!(err, StoreError::NotSqlite { .. }), "{i}: {err}");
                assert!(err.to_string().contains("not a SQLite database"), "{err}");
                assert!(
                    err.to_string().contains(&path.display().to_string()),
                    "{err}"
                );
                assert_eq!(&std::fs::read(&path).unwrap(), contents);
                assert!(!side(&path, "-wal").exists());
                assert!(!side(&path, "-shm").exists());
            }
        }
    }

    #[test]
    fn damaged_database_is_refused_and_untouched() {
        let dir = tempdir();
        let path = dir.path().join("damaged.db");
        // A valid header, then garbage where the schema page should be.
        let mut bytes = {
            let env = Env::new();
            env.add("c", A);
            env.store
                .conn
                .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
                .unwrap();
            std::fs::read(env.db()).unwrap()
        };
        for b in bytes.iter_mut().skip(100) {
            *b = 0xa5;
        }
        // Clear the WAL flag (header bytes 18-19) so SQLite does not look for a WAL.
        bytes[18] = 1;
        bytes[19] = 1;
        std::fs::write(&path, &bytes).unwrap();
        let err = Store::open(&path, OpenMode::MustExist).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("damaged"), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn foreign_sqlite_database_is_refused_and_untouched() {
        let dir = tempdir();
        let path = dir.path().join("other.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
                .unwrap();
        }
        let before = std::fs::read(&path).unwrap();
        let err = Store::open(&path, OpenMode::CreateIfMissing).unwrap_err();
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
        assert!(err.to_string().contains("another application"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        // Another application's id is refused too, even with no tables.
        let path2 = dir.path().join("other2.db");
        {
            let conn = Connection::open(&path2).unwrap();
            conn.pragma_update(None, "application_id", 1234).unwrap();
        }
        let err = Store::open(&path2, OpenMode::CreateIfMissing).unwrap_err();
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
    }

    #[test]
    fn a_version_1_database_is_migrated_keeping_its_data() {
        let dir = tempdir();
        let path = dir.path().join("v1.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA_V1).unwrap();
            conn.pragma_update(None, "application_id", APPLICATION_ID)
                .unwrap();
            conn.execute(
                "INSERT INTO properties (workspace, environment, name, value) VALUES ('ws', 'dev', 'base', 'x')",
                [],
            )
            .unwrap();
            conn.pragma_update(None, "user_version", 1).unwrap();
        }
        let store = Store::open(&path, OpenMode::MustExist).unwrap();
        let version: i64 = store
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        assert_eq!(store.properties("ws", "dev").unwrap()["base"], "x");
        for table in [
            "members",
            "tokens",
            "jobs",
            "job_steps",
            "triggers",
            "audit",
        ] {
            let n: i64 = store
                .conn
                .query_row(
                    "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?1",
                    [table],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(n, 1, "{table} was not created");
        }
    }

    #[test]
    fn version_4_turns_the_seconds_columns_into_milliseconds() {
        let env = Env::new();
        env.add("c", "s3cr3t-value-Gc5Jw9Ra2");
        let t = 1_796_459_413_i64;
        for sql in [
            "UPDATE workspaces SET created_at = ?1",
            "UPDATE connections SET created_at = ?1, rotated_at = ?1 + 1",
            "INSERT INTO members (workspace, subject, role, created_at) VALUES ('ws', 'al', 'admin', ?1)",
            "INSERT INTO tokens (id, workspace, name, hash, owner, creator, scopes, allow_ips, created_at, expires_at, revoked_at, last_used_at)
             VALUES ('t1', 'ws', 'n', x'00', 'al', 'al', '[]', '[]', ?1, ?1 + 3600, NULL, ?1 + 5)",
            "INSERT INTO triggers (id, workspace, recipe, kind, environment, last_slot, created_at)
             VALUES ('s1', 'ws', 'r', 'schedule', 'dev', ?1 + 60, ?1)",
            "INSERT INTO jobs (id, workspace, recipe, environment, state, trigger_kind, payload, created_at)
             VALUES ('j1', 'ws', 'r', 'dev', 'queued', 'manual', x'00', ?1 * 1000)",
        ] {
            env.store.conn.execute(sql, [t]).unwrap();
        }
        env.store
            .conn
            .pragma_update(None, "user_version", 3)
            .unwrap();
        // A version 3 file has no `respond` column (version 5 added it), no
        // OAuth2 tables (version 6), no `erased_at` (version 7), nothing of
        // signed bundles (version 8), of connection limits (version 9), of
        // console sessions (version 10) or of job claims (version 11).
        env.store
            .conn
            .execute_batch(
                "ALTER TABLE triggers DROP COLUMN respond;
                 DROP TABLE oauth_authorizations; DROP TABLE oauth_clients;
                 ALTER TABLE jobs DROP COLUMN erased_at;
                 ALTER TABLE recipes DROP COLUMN signed_version; ALTER TABLE recipes DROP COLUMN signer;
                 ALTER TABLE settings DROP COLUMN require_signatures;
                 ALTER TABLE settings DROP COLUMN review_grants;
                 DROP TABLE pending_recipes; DROP TABLE signing_keys;
                 DROP TABLE connection_limits; DROP TABLE connection_suspensions;
                 DROP TABLE connection_usage;
                 ALTER TABLE settings DROP COLUMN session_idle_secs;
                 DROP TABLE console_sessions;
                 DROP INDEX jobs_workspace_state_created;
                 DROP INDEX jobs_workspace_recipe_created;
                 DROP INDEX jobs_workspace_recipe_state_created;
                 DROP INDEX jobs_queue; DROP TABLE nodes;
                 ALTER TABLE jobs DROP COLUMN owner; ALTER TABLE jobs DROP COLUMN epoch;",
            )
            .unwrap();
        let db = env.db();
        drop(env.store);
        let store = Store::open(&db, OpenMode::MustExist).unwrap();
        let ms = t * 1000;
        for (sql, want) in [
            ("SELECT created_at FROM workspaces", Some(ms)),
            ("SELECT created_at FROM connections", Some(ms)),
            ("SELECT rotated_at FROM connections", Some(ms + 1000)),
            ("SELECT created_at FROM members", Some(ms)),
            ("SELECT created_at FROM tokens", Some(ms)),
            ("SELECT expires_at FROM tokens", Some(ms + 3_600_000)),
            ("SELECT revoked_at FROM tokens", None),
            ("SELECT last_used_at FROM tokens", Some(ms + 5000)),
            ("SELECT last_slot FROM triggers", Some(ms + 60_000)),
            ("SELECT created_at FROM triggers", Some(ms)),
            // Already in milliseconds: untouched.
            ("SELECT created_at FROM jobs", Some(ms)),
        ] {
            let got: Option<i64> = store.conn.query_row(sql, [], |r| r.get(0)).unwrap();
            assert_eq!(got, want, "{sql}");
        }
        // Opening again does not multiply again.
        drop(store);
        let store = Store::open(&db, OpenMode::MustExist).unwrap();
        let got: i64 = store
            .conn
            .query_row("SELECT created_at FROM members", [], |r| r.get(0))
            .unwrap();
        assert_eq!(got, ms);
        assert_eq!(
            store.list_connections("ws").unwrap()[0].created_at,
            UnixMillis(ms)
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let env = Env::new();
        env.store
            .conn
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let db = env.db();
        drop(env.store);
        let err = Store::open(&db, OpenMode::MustExist).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::TooNew { found, known, .. }
                    if found == SCHEMA_VERSION + 1 && known == SCHEMA_VERSION
            ),
            "{err}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("schema version {}", SCHEMA_VERSION + 1))
                && msg.contains("newer"),
            "{msg}"
        );
        assert!(msg.contains(&db.display().to_string()), "{msg}");
    }

    #[test]
    fn two_stores_share_one_file() {
        let env = Env::new();
        let other = Store::open(&env.db(), OpenMode::MustExist).unwrap();
        env.add("a", A);
        let (v, _, _) = other
            .connection_value("ws", "a", &env.key)
            .unwrap()
            .unwrap();
        assert_eq!(v.as_str(), A);
        env.ops().set("ws", "dev", "X", "1").unwrap();
        assert_eq!(other.properties("ws", "dev").unwrap()["X"], "1");
    }

    /// Every write of a connection, through the operation: what it stores,
    /// what it refuses, and one audit entry per change (none per refusal).
    #[test]
    fn connection_writes_create_replace_put_retarget_and_delete() {
        let env = Env::new();
        let ops = env.ops();
        let before = UnixMillis::now();
        ops.create("ws", "github", A, &["api.example.com"], BEARER)
            .unwrap();
        ops.create(
            "ws",
            "slack",
            B,
            &["slack.com", "*.slack.com"],
            "query:token",
        )
        .unwrap();

        let list = env.store.list_connections("ws").unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].name, "github");
        let shown = |h: &[HostPattern]| h.iter().map(ToString::to_string).collect::<Vec<_>>();
        assert_eq!(shown(&list[0].hosts), ["api.example.com"]);
        // Stored normalised, as the runtime writes it.
        assert_eq!(
            list[0].placement.to_string(),
            "header:authorization=Bearer {}"
        );
        assert!(list[0].created_at >= before && list[0].created_at <= UnixMillis::now());
        assert_eq!(list[0].rotated_at, None);
        assert_eq!(list[1].name, "slack");
        assert_eq!(shown(&list[1].hosts), ["slack.com", "*.slack.com"]);

        let (value, h, p) = env.value("github").unwrap().unwrap();
        assert_eq!(value.as_str(), A);
        assert_eq!(h, hosts(&["api.example.com"]));
        assert_eq!(p, "header:authorization=Bearer {}");
        assert!(env.value("absent").unwrap().is_none());
        assert!(
            env.store
                .connection_value("no-such-ws", "github", &env.key)
                .unwrap()
                .is_none()
        );

        // Creating a name that exists is refused in the write's own
        // transaction, and changes nothing.
        let err = ops
            .create("ws", "github", C, &["x.example"], "query:x")
            .unwrap_err();
        assert!(matches!(err, StorageError::Conflict(_)), "{err}");
        assert_eq!(
            err.to_string(),
            "connection `github` already exists in workspace `ws`"
        );
        assert_eq!(env.value("github").unwrap().unwrap().0.as_str(), A);

        // Retargeting keeps the value (re-sealed inside the store) and
        // leaves rotated_at unset.
        ops.retarget("ws", "github", &["api.github.com"], BEARER)
            .unwrap();
        let (value, h, _) = env.value("github").unwrap().unwrap();
        assert_eq!(value.as_str(), A);
        assert_eq!(h, hosts(&["api.github.com"]));
        ops.retarget(
            "ws",
            "github",
            &["api.github.com"],
            "header:Authorization=token {}",
        )
        .unwrap();
        let (value, _, p) = env.value("github").unwrap().unwrap();
        assert_eq!(value.as_str(), A);
        assert_eq!(p, "header:authorization=token {}");
        assert_eq!(
            env.store.list_connections("ws").unwrap()[0].rotated_at,
            None
        );

        // A new value sets rotated_at.
        ops.replace("ws", "github", C, &["api.github.com"], BEARER)
            .unwrap();
        assert_eq!(env.value("github").unwrap().unwrap().0.as_str(), C);
        let rotated = env.store.list_connections("ws").unwrap()[0].rotated_at;
        assert!(rotated.is_some_and(|t| t >= before));

        // Replacing or retargeting a connection that does not exist is
        // refused; putting one creates it, then replaces it.
        let err = ops
            .replace("ws", "nope", C, &["x.example"], BEARER)
            .unwrap_err();
        assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
        assert_eq!(err.to_string(), "connection `nope` does not exist");
        let err = ops
            .retarget("ws", "nope", &["x.example"], BEARER)
            .unwrap_err();
        assert!(matches!(err, StorageError::NotFound { .. }), "{err}");
        let put = |value: &str| {
            ops.write(
                ConnectionWrite::Put,
                "ws",
                ("new", value),
                &["new.example"],
                "query:key",
            )
        };
        put(A).unwrap();
        put(B).unwrap();
        assert_eq!(env.value("new").unwrap().unwrap().0.as_str(), B);

        // A value that is long enough but easy to guess is refused by the
        // store's strength rule, whichever way it arrives.
        let err = ops
            .replace(
                "ws",
                "github",
                "aaaaaaaaaaaaaaaaaaaa",
                &["api.github.com"],
                BEARER,
            )
            .unwrap_err();
        assert!(
            matches!(
                err,
                StorageError::Invalid {
                    code: "weak_connection_value",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(env.value("github").unwrap().unwrap().0.as_str(), C);

        assert!(ops.delete("ws", "github").unwrap());
        assert!(env.value("github").unwrap().is_none());
        assert!(!ops.delete("ws", "github").unwrap());
        assert_eq!(env.store.list_connections("ws").unwrap().len(), 2);
        // The name can be reused after removal.
        ops.create("ws", "github", A, &["api.example.com"], BEARER)
            .unwrap();
        assert_eq!(env.value("github").unwrap().unwrap().0.as_str(), A);

        // Two creates, two retargets, a replace, two puts, a delete and a
        // create: nine changes, nine entries; the five refusals wrote none.
        let entries: Vec<String> = column(&env.store.conn, "SELECT action FROM audit ORDER BY seq");
        assert_eq!(entries.len(), 9, "{entries:?}");
        assert_eq!(
            entries.iter().filter(|a| *a == "connection.delete").count(),
            1
        );
        drop(ops);
        assert!(env.store.verify_audit(&env.key).unwrap().is_intact());
    }

    #[test]
    fn a_connection_write_creates_the_workspace() {
        let env = Env::new();
        env.ops()
            .create("fresh", "c", A, &["h.example"], "query:k")
            .unwrap();
        assert_eq!(
            env.store.list_workspaces().unwrap(),
            vec!["fresh".to_string(), "ws".to_string()]
        );
        assert_eq!(
            env.store
                .connection_value("fresh", "c", &env.key)
                .unwrap()
                .unwrap()
                .0
                .as_str(),
            A
        );
        // Same connection name in two workspaces are two records.
        env.add("c", B);
        assert_eq!(env.value("c").unwrap().unwrap().0.as_str(), B);
    }

    #[test]
    fn invalid_inputs_are_refused() {
        let env = Env::new();
        let ops = env.ops();
        let long = "a".repeat(65);
        for bad in [
            "",
            "has space",
            "slash/",
            "nul\0",
            "ü",
            long.as_str(),
            "semi;colon",
        ] {
            let err = ops
                .create("ws", bad, A, &["h.example"], "query:k")
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    StorageError::Invalid {
                        code: "invalid_name",
                        ..
                    }
                ),
                "{bad:?}: {err}"
            );
            assert!(err.to_string().contains("connection"), "{err}");
            let err = ops.set("ws", bad, "n", "v").unwrap_err();
            assert!(
                matches!(
                    err,
                    StorageError::Invalid {
                        code: "invalid_name",
                        ..
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains("environment"), "{err}");
            let err = env.store.ensure_workspace(bad, &env.key).unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::InvalidName {
                        what: "workspace",
                        ..
                    }
                ),
                "{err}"
            );
        }
        let err = ops.bind("ws", "dev", "x", &long).unwrap_err();
        assert!(err.to_string().contains('…'), "{err}");
        ops.create("ws", "a-b_c.1", A, &["h.example"], "query:k")
            .unwrap();
        ops.create("ws", &"z".repeat(64), A, &["h.example"], "query:k")
            .unwrap();
        assert_eq!(env.store.list_connections("ws").unwrap().len(), 2);
        assert!(
            env.store
                .environment("ws", "dev")
                .unwrap()
                .bindings
                .is_empty()
        );
    }

    #[test]
    fn list_never_contains_the_value() {
        let env = Env::new();
        let canary = "canary-list-7d1e0b3a-Xq4Lm";
        env.add("c", canary);
        let list = env.store.list_connections("ws").unwrap();
        let debug = format!("{list:?}");
        let json = serde_json::to_string(&list).unwrap();
        assert!(!debug.contains(canary) && !json.contains(canary));
        assert!(!format!("{:?}", env.store).contains(canary));
    }

    #[test]
    fn canary_is_absent_from_the_database_and_wal_bytes() {
        let env = Env::new();
        let canary = "canary-disk-5b9c2e11f0-Vz8Kp";
        env.add("c", canary);
        let ops = env.ops();
        ops.replace(
            "ws",
            "c",
            &format!("{canary}-2"),
            &["api.example.com"],
            BEARER,
        )
        .unwrap();
        ops.retarget("ws", "c", &["other.example"], BEARER).unwrap();
        drop(ops);
        let db = env.db();
        let wal = side(&db, "-wal");
        // Before a checkpoint the records are in the WAL.
        let wal_bytes = std::fs::read(&wal).unwrap();
        assert!(!wal_bytes.is_empty());
        assert!(
            contains(&wal_bytes, b"other.example"),
            "the WAL holds the records"
        );
        assert!(!contains(&wal_bytes, canary.as_bytes()));
        assert!(!contains(&std::fs::read(&db).unwrap(), canary.as_bytes()));
        // After a checkpoint they are in the main file.
        env.store
            .conn
            .query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))
            .unwrap();
        let db_bytes = std::fs::read(&db).unwrap();
        assert!(
            contains(&db_bytes, b"other.example"),
            "the database holds the records"
        );
        assert!(!contains(&db_bytes, canary.as_bytes()));
        assert!(!contains(&std::fs::read(&wal).unwrap(), canary.as_bytes()));
        // The key is not stored either.
        let key_text = env.key.to_base64();
        assert!(!contains(&db_bytes, key_text.as_bytes()));
        assert!(!contains(&db_bytes, &env.key_bytes()));
        assert_eq!(
            env.value("c").unwrap().unwrap().0.as_str(),
            format!("{canary}-2")
        );
    }

    impl Env {
        fn key_bytes(&self) -> Vec<u8> {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .decode(self.key.to_base64().as_str())
                .unwrap()
        }
    }

    fn assert_tampered(
        result: Result<Option<OpenedConnection>, StoreError>,
        ws: &str,
        name: &str,
        canary: &str,
    ) {
        let err = result.map(|_| ()).unwrap_err();
        assert!(matches!(err, StoreError::Tampered { .. }), "{err}");
        let msg = err.to_string();
        assert_eq!(
            msg,
            format!(
                "connection `{name}` in workspace `{ws}` failed authentication: the stored record was altered or moved"
            )
        );
        assert!(!msg.contains(canary) && !format!("{err:?}").contains(canary));
    }

    #[test]
    fn sealed_value_copied_to_another_record_fails() {
        let env = Env::new();
        env.add("a", "canary-a-value-Qm4Zt8Kx2");
        env.add("b", "canary-b-value-Wd7Ny3Lp6");
        env.ops()
            .create(
                "ws2",
                "a",
                "canary-ws2-value-Rf5Vg9Hc1",
                &["api.example.com"],
                BEARER,
            )
            .unwrap();
        // Another name in the same workspace (same data key, same hosts).
        env.store
            .conn
            .execute(
                "UPDATE connections SET sealed = (SELECT sealed FROM connections WHERE workspace='ws' AND name='a')
                 WHERE workspace='ws' AND name='b'",
                [],
            )
            .unwrap();
        assert_tampered(env.value("b"), "ws", "b", "canary-a-value-Qm4Zt8Kx2");
        assert_eq!(
            env.value("a").unwrap().unwrap().0.as_str(),
            "canary-a-value-Qm4Zt8Kx2"
        );
        // The same name in another workspace.
        env.store
            .conn
            .execute(
                "UPDATE connections SET sealed = (SELECT sealed FROM connections WHERE workspace='ws' AND name='a')
                 WHERE workspace='ws2' AND name='a'",
                [],
            )
            .unwrap();
        assert_tampered(
            env.store.connection_value("ws2", "a", &env.key),
            "ws2",
            "a",
            "canary-a-value-Qm4Zt8Kx2",
        );
        // Retargeting needs the current value, which fails too, and
        // changes nothing.
        let ops = env.ops();
        let before = env.dump();
        let err = ops.retarget("ws", "b", &["x.example"], BEARER).unwrap_err();
        assert!(err.to_string().contains("failed authentication"), "{err}");
        assert!(!err.to_string().contains("canary"), "{err}");
        assert_eq!(env.dump(), before);
        // Replacing the value repairs the record.
        ops.replace("ws", "b", C, &["api.example.com"], BEARER)
            .unwrap();
        assert_eq!(env.value("b").unwrap().unwrap().0.as_str(), C);
    }

    #[test]
    fn flipped_byte_fails_authentication() {
        let env = Env::new();
        let canary = "canary-flip-0c4f-Hn6Rt2Wb";
        env.add("c", canary);
        let sealed: Vec<u8> = env
            .store
            .conn
            .query_row("SELECT sealed FROM connections WHERE name='c'", [], |r| {
                r.get(0)
            })
            .unwrap();
        for i in [0, 1, 13, sealed.len() / 2, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 0x04;
            env.store
                .conn
                .execute(
                    "UPDATE connections SET sealed = ?1 WHERE name='c'",
                    params![bad],
                )
                .unwrap();
            assert_tampered(env.value("c"), "ws", "c", canary);
        }
    }

    #[test]
    fn redirected_hosts_or_placement_fail_authentication() {
        let env = Env::new();
        let canary = "canary-redirect-88aa-Jm3Qx7";
        env.add("c", canary);
        env.store
            .conn
            .execute(
                "UPDATE connections SET hosts = '[\"evil.example\"]' WHERE name='c'",
                [],
            )
            .unwrap();
        assert_tampered(env.value("c"), "ws", "c", canary);
        env.store
            .conn
            .execute(
                "UPDATE connections SET hosts = '[\"api.example.com\"]', placement = 'query:leak' WHERE name='c'",
                [],
            )
            .unwrap();
        assert_tampered(env.value("c"), "ws", "c", canary);
        env.store
            .conn
            .execute("UPDATE connections SET placement = 'header:authorization=Bearer {}' WHERE name='c'", [])
            .unwrap();
        assert_eq!(env.value("c").unwrap().unwrap().0.as_str(), canary);
    }

    #[test]
    fn moved_workspace_key_fails() {
        let env = Env::new();
        env.add("c", "canary-ws-key-Yk8Pd3Nz6");
        env.store.ensure_workspace("ws2", &env.key).unwrap();
        env.store
            .conn
            .execute(
                "UPDATE workspaces SET wrapped_key = (SELECT wrapped_key FROM workspaces WHERE name='ws2') WHERE name='ws'",
                [],
            )
            .unwrap();
        let err = env.value("c").unwrap_err();
        assert!(matches!(err, StoreError::DataKeyTampered { .. }), "{err}");
        assert!(err.to_string().contains("workspace `ws`"), "{err}");
    }

    #[test]
    fn wrong_master_key_is_refused_without_changes() {
        let env = Env::new();
        env.add("c", "canary-wrong-key-Tb2Xs7Mq4");
        env.ops().set("ws", "dev", "P", "1").unwrap();
        let before = env.dump();
        let wrong = MasterKey::generate();
        let expected = format!(
            "the master key does not match this database (expected fingerprint {}, got {})",
            env.key.fingerprint(),
            wrong.fingerprint()
        );
        let errors = [
            env.store.check_key(&wrong).unwrap_err(),
            env.store.ensure_workspace("ws", &wrong).unwrap_err(),
            env.store.ensure_workspace("new-ws", &wrong).unwrap_err(),
            env.store
                .connection_value("ws", "c", &wrong)
                .map(|_| ())
                .unwrap_err(),
            env.store
                .rotate_master_key(&wrong, &MasterKey::generate(), &rotation())
                .unwrap_err(),
        ];
        for err in errors {
            assert!(matches!(err, StoreError::KeyMismatch { .. }), "{err}");
            assert_eq!(err.to_string(), expected);
        }
        // The operations refuse the key before they accept any change.
        let Err(err) = Ops::open(&env.db(), &wrong) else {
            panic!("the operations opened with a wrong key");
        };
        assert_eq!(err.to_string(), expected);
        assert_eq!(env.dump(), before);
        assert_eq!(
            env.value("c").unwrap().unwrap().0.as_str(),
            "canary-wrong-key-Tb2Xs7Mq4"
        );
    }

    #[test]
    fn first_key_is_recorded_and_check_key_accepts_any_before() {
        let dir = tempdir();
        let store = Store::open(&dir.path().join("db"), OpenMode::CreateIfMissing).unwrap();
        let a = MasterKey::generate();
        let b = MasterKey::generate();
        store.check_key(&a).unwrap();
        store.check_key(&b).unwrap();
        store.ensure_workspace("ws", &a).unwrap();
        store.check_key(&a).unwrap();
        assert!(matches!(
            store.check_key(&b),
            Err(StoreError::KeyMismatch { .. })
        ));
        // Idempotent.
        store.ensure_workspace("ws", &a).unwrap();
        assert_eq!(store.list_workspaces().unwrap().len(), 1);
    }

    #[test]
    fn rotation_rewraps_and_refuses_the_old_key() {
        let env = Env::new();
        env.add_a_and_b();
        env.store.ensure_workspace("empty", &env.key).unwrap();
        let sealed_before: Vec<Vec<u8>> =
            column(&env.store.conn, "SELECT sealed FROM connections ORDER BY 1");
        let new = MasterKey::generate();
        assert_eq!(
            env.store
                .rotate_master_key(&env.key, &new, &rotation())
                .unwrap(),
            3
        );
        // Values are readable under the new key, untouched on disk.
        assert_eq!(
            env.store
                .connection_value("ws", "a", &new)
                .unwrap()
                .unwrap()
                .0
                .as_str(),
            "value-a-Vq7Lm2Xz9Rp4Kd8"
        );
        assert_eq!(
            env.store
                .connection_value("ws2", "b", &new)
                .unwrap()
                .unwrap()
                .0
                .as_str(),
            "value-b-Bz4Tq8Lw2Nc6Jy9"
        );
        let sealed_after: Vec<Vec<u8>> =
            column(&env.store.conn, "SELECT sealed FROM connections ORDER BY 1");
        assert_eq!(sealed_before, sealed_after);
        // The old key is refused everywhere.
        let err = env.value("a").unwrap_err();
        assert!(matches!(err, StoreError::KeyMismatch { .. }), "{err}");
        assert!(err.to_string().contains(&new.fingerprint()), "{err}");
        assert!(matches!(
            env.store
                .rotate_master_key(&env.key, &MasterKey::generate(), &rotation()),
            Err(StoreError::KeyMismatch { .. })
        ));
        // New writes work with the new key, and survive reopening.
        Ops::open(&env.db(), &new)
            .unwrap()
            .create(
                "ws",
                "c",
                "value-c-Jf3Gd9Mn4Qa7Xc2",
                &["h.example"],
                "query:k",
            )
            .unwrap();
        let db = env.db();
        drop(env.store);
        let store = Store::open(&db, OpenMode::MustExist).unwrap();
        assert_eq!(
            store
                .connection_value("ws", "c", &new)
                .unwrap()
                .unwrap()
                .0
                .as_str(),
            "value-c-Jf3Gd9Mn4Qa7Xc2"
        );
        assert_eq!(
            store
                .connection_value("ws", "a", &new)
                .unwrap()
                .unwrap()
                .0
                .as_str(),
            "value-a-Vq7Lm2Xz9Rp4Kd8"
        );
        // The same key as old and new is refused.
        assert!(matches!(
            store.rotate_master_key(&new, &new, &rotation()),
            Err(StoreError::SameKey { .. })
        ));
    }

    #[test]
    fn old_wrapped_keys_do_not_linger_after_rotation() {
        let env = Env::new();
        env.add("a", "value-a-Vq7Lm2Xz9Rp4Kd8");
        env.store.ensure_workspace("ws2", &env.key).unwrap();
        let old_wrapped: Vec<Vec<u8>> =
            column(&env.store.conn, "SELECT wrapped_key FROM workspaces");
        let db = env.db();
        // Control: before the rotation the old wrapped keys are on disk.
        env.store
            .conn
            .query_row("PRAGMA wal_checkpoint(FULL)", [], |_| Ok(()))
            .unwrap();
        let before = std::fs::read(&db).unwrap();
        assert!(old_wrapped.iter().all(|w| contains(&before, &w[13..])));
        let new = MasterKey::generate();
        env.store
            .rotate_master_key(&env.key, &new, &rotation())
            .unwrap();
        let files = [
            std::fs::read(&db).unwrap(),
            std::fs::read(side(&db, "-wal")).unwrap(),
        ];
        for wrapped in &old_wrapped {
            // The ciphertext part (after version and nonce) identifies it.
            let needle = &wrapped[13..];
            for bytes in &files {
                assert!(!contains(bytes, needle));
            }
        }
    }

    #[cfg(unix)]
    #[test]
    fn loose_side_files_are_restricted_on_open() {
        use std::os::unix::fs::PermissionsExt as _;
        let env = Env::new();
        env.add("a", A);
        let db = env.db();
        let wal = side(&db, "-wal");
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _again = Store::open(&db, OpenMode::MustExist).unwrap();
        assert_eq!(mode_of(&wal), 0o600);
        // A database file opened up on purpose is respected.
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::set_permissions(&wal, std::fs::Permissions::from_mode(0o640)).unwrap();
        let _third = Store::open(&db, OpenMode::MustExist).unwrap();
        assert_eq!(mode_of(&wal), 0o640);
    }

    #[test]
    fn rotation_with_a_wrong_old_key_changes_nothing() {
        let env = Env::new();
        env.add("a", "value-a-Vq7Lm2Xz9Rp4Kd8");
        let before = env.dump();
        let err = env
            .store
            .rotate_master_key(&MasterKey::generate(), &MasterKey::generate(), &rotation())
            .unwrap_err();
        assert!(matches!(err, StoreError::KeyMismatch { .. }), "{err}");
        assert_eq!(env.dump(), before);
        assert_eq!(
            env.value("a").unwrap().unwrap().0.as_str(),
            "value-a-Vq7Lm2Xz9Rp4Kd8"
        );
    }

    #[test]
    fn rotation_aborts_on_a_damaged_data_key_and_keeps_the_old_state() {
        let env = Env::new();
        env.add("a", "value-a-Vq7Lm2Xz9Rp4Kd8");
        env.ops()
            .create(
                "zz",
                "z",
                "value-z-Hs6Ty1Wn3Pv5Rb8",
                &["h.example"],
                "query:k",
            )
            .unwrap();
        // Damage the last data key in rotation order, so earlier ones were
        // already unwrapped when it fails.
        let wrapped: Vec<u8> = env
            .store
            .conn
            .query_row(
                "SELECT wrapped_key FROM workspaces WHERE name='zz'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let mut bad = wrapped.clone();
        bad[20] ^= 0xff;
        env.store
            .conn
            .execute(
                "UPDATE workspaces SET wrapped_key = ?1 WHERE name='zz'",
                params![bad],
            )
            .unwrap();
        let before = env.dump();
        let new = MasterKey::generate();
        let err = env
            .store
            .rotate_master_key(&env.key, &new, &rotation())
            .unwrap_err();
        assert!(matches!(err, StoreError::DataKeyTampered { .. }), "{err}");
        assert!(err.to_string().contains("workspace `zz`"), "{err}");
        assert_eq!(env.dump(), before);
        assert_eq!(
            env.value("a").unwrap().unwrap().0.as_str(),
            "value-a-Vq7Lm2Xz9Rp4Kd8"
        );
        assert!(matches!(
            env.store.check_key(&new),
            Err(StoreError::KeyMismatch { .. })
        ));
    }

    #[test]
    fn rotation_interrupted_mid_write_rolls_back() {
        let env = Env::new();
        env.add_a_and_b();
        // Fail the second re-wrap write after the first has been made, as a
        // crash or a full disk would.
        env.store
            .conn
            .execute_batch(
                "CREATE TEMP TRIGGER crash BEFORE UPDATE ON workspaces WHEN NEW.name = 'ws2'
                 BEGIN SELECT RAISE(ABORT, 'simulated failure'); END;",
            )
            .unwrap();
        let before = env.dump();
        let new = MasterKey::generate();
        let err = env
            .store
            .rotate_master_key(&env.key, &new, &rotation())
            .unwrap_err();
        assert!(matches!(err, StoreError::Sql { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("re-wrapping the data key of workspace `ws2`"),
            "{err}"
        );
        assert!(
            env.store.conn.is_autocommit(),
            "the transaction was rolled back"
        );
        assert_eq!(env.dump(), before);
        assert_eq!(
            env.value("a").unwrap().unwrap().0.as_str(),
            "value-a-Vq7Lm2Xz9Rp4Kd8"
        );
        assert_eq!(
            env.store
                .connection_value("ws2", "b", &env.key)
                .unwrap()
                .unwrap()
                .0
                .as_str(),
            "value-b-Bz4Tq8Lw2Nc6Jy9"
        );
        // With the fault gone, the rotation goes through.
        env.store.conn.execute_batch("DROP TRIGGER crash").unwrap();
        assert_eq!(
            env.store
                .rotate_master_key(&env.key, &new, &rotation())
                .unwrap(),
            2
        );
        assert_eq!(
            env.store
                .connection_value("ws2", "b", &new)
                .unwrap()
                .unwrap()
                .0
                .as_str(),
            "value-b-Bz4Tq8Lw2Nc6Jy9"
        );
    }

    #[test]
    fn uncommitted_writes_of_a_dropped_store_are_lost_cleanly() {
        // A process that dies inside a transaction: its store is dropped with
        // the transaction open. The next open sees the old state.
        let env = Env::new();
        env.add("a", "value-a-Vq7Lm2Xz9Rp4Kd8");
        let db = env.db();
        let before = env.dump();
        {
            let other = Store::open(&db, OpenMode::MustExist).unwrap();
            other.conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            other.conn.execute("DELETE FROM connections", []).unwrap();
            other
                .conn
                .execute(
                    "UPDATE meta SET value = 'x' WHERE key = 'master_fingerprint'",
                    [],
                )
                .unwrap();
            // Dropped without COMMIT.
        }
        let reopened = Store::open(&db, OpenMode::MustExist).unwrap();
        assert_eq!(dump(&reopened.conn), before);
    }

    #[test]
    fn properties_per_environment() {
        let env = Env::new();
        let ops = env.ops();
        ops.set("ws", "dev", "BASE_URL", "http://dev").unwrap();
        ops.set("ws", "prod", "BASE_URL", "https://prod").unwrap();
        ops.set("ws", "dev", "REGION", "eu").unwrap();
        ops.set("other", "dev", "BASE_URL", "http://other").unwrap();
        let dev = env.store.properties("ws", "dev").unwrap();
        assert_eq!(dev.len(), 2);
        assert_eq!(dev["BASE_URL"], "http://dev");
        assert_eq!(dev["REGION"], "eu");
        assert_eq!(env.store.properties("ws", "prod").unwrap().len(), 1);
        assert_eq!(
            env.store.properties("other", "dev").unwrap()["BASE_URL"],
            "http://other"
        );
        assert!(env.store.properties("ws", "staging").unwrap().is_empty());
        // Replace, remove.
        ops.set("ws", "dev", "BASE_URL", "http://dev2").unwrap();
        assert_eq!(
            env.store.properties("ws", "dev").unwrap()["BASE_URL"],
            "http://dev2"
        );
        let remove = || ops.change("ws", "dev", EnvChange::RemoveProperty("REGION".into()));
        remove().unwrap();
        let err = remove().unwrap_err();
        assert_eq!(err.to_string(), "property `REGION` does not exist");
        assert_eq!(env.store.properties("ws", "dev").unwrap().len(), 1);
        assert_eq!(
            env.store.properties("ws", "prod").unwrap()["BASE_URL"],
            "https://prod"
        );
    }

    #[test]
    fn bindings_per_environment() {
        let env = Env::new();
        env.add("github-prod", A);
        env.add("github-dev", B);
        let ops = env.ops();
        ops.bind("ws", "prod", "github", "github-prod").unwrap();
        ops.bind("ws", "dev", "github", "github-dev").unwrap();
        let resolve = |environment: &str, logical: &str| {
            resolve_in(&env.store.conn, "ws", environment, logical).unwrap()
        };
        assert_eq!(resolve("prod", "github"), "github-prod");
        assert_eq!(resolve("dev", "github"), "github-dev");
        // No binding: the same name.
        assert_eq!(resolve("staging", "github"), "github");
        assert_eq!(resolve("prod", "slack"), "slack");
        let prod = env.store.bindings("ws", "prod").unwrap();
        assert_eq!(prod.len(), 1);
        assert_eq!(prod["github"], "github-prod");
        // Resolution then decryption, as a local run does: the runtime
        // knows the connection by the recipe's name.
        let c = env
            .store
            .bound_connection("ws", "dev", "github", &env.key)
            .unwrap()
            .unwrap();
        assert_eq!(c.name(), "github");
        assert_eq!(c.value().expose(), B);
        assert!(
            env.store
                .bound_connection("ws", "dev", "absent", &env.key)
                .unwrap()
                .is_none()
        );
        // Rebind, unbind.
        ops.bind("ws", "prod", "github", "github-dev").unwrap();
        assert_eq!(resolve("prod", "github"), "github-dev");
        let unbind = || ops.change("ws", "prod", EnvChange::Unbind("github".into()));
        unbind().unwrap();
        assert_eq!(resolve("prod", "github"), "github");
        let err = unbind().unwrap_err();
        assert_eq!(err.to_string(), "binding `github` does not exist");
        assert_eq!(env.store.bindings("ws", "dev").unwrap().len(), 1);
    }

    #[test]
    fn malformed_hosts_are_reported_not_panicked() {
        let env = Env::new();
        env.add("c", A);
        for (set, what) in [
            ("hosts = 'not json'", "hosts of connection `c`"),
            (
                "hosts = '[\"api.example.com\"]', placement = 'header:x:{}'",
                "placement of connection `c`",
            ),
        ] {
            env.store
                .conn
                .execute(&format!("UPDATE connections SET {set} WHERE name='c'"), [])
                .unwrap();
            let err = env.store.list_connections("ws").unwrap_err();
            assert!(matches!(err, StoreError::Malformed { .. }), "{err}");
            assert!(err.to_string().contains(what), "{err}");
        }
    }

    #[test]
    fn sql_errors_say_what_was_being_done() {
        let env = Env::new();
        env.store
            .conn
            .execute_batch("DROP TABLE properties")
            .unwrap();
        let err = env.store.properties("ws", "dev").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("reading environment `dev` of workspace `ws`: "),
            "{err}"
        );
    }
}

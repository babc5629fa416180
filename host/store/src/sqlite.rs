//! The embedded [`Storage`]: the CLI's SQLite database (schema version 2)
//! with one writer thread that commits in groups.
//!
//! # Durability and group commit
//!
//! The database runs in WAL mode. Every write goes to one writer thread as
//! an operation; the thread takes every operation that is waiting (up to
//! [`MAX_BATCH`]), runs each in its own savepoint inside one transaction,
//! commits once, and only then answers each caller. One failing operation
//! rolls back its savepoint only.
//!
//! Each operation says how durable it must be ([`Durability`]). A group
//! holding anything acknowledged to a client (an accepted webhook or run,
//! a job's end, a configuration change, an audit entry) commits with
//! `synchronous = FULL`: the WAL is synced before anyone is answered, so the
//! write survives `kill -9` and a power loss, and so does every commit
//! before it. A group of progress only (step checkpoints, a job marked
//! running, a token's last use) commits with `synchronous = NORMAL`: in the
//! WAL at once (it survives the process being killed), on disk with the
//! next synced group. Syncing every write would cap the daemon at a few
//! hundred jobs per second on this class of disk; grouping gives the
//! throughput back without weakening what a client was told.
//!
//! Reads run on a small pool of read connections on the blocking thread
//! pool; WAL lets them run beside the writer.
//!
//! # Sealed columns
//!
//! With the workspace data key (AES-256-GCM) and associated data
//! `"wrun:job:v1:" workspace NUL job NUL part`: `jobs.payload` (part
//! `payload`), `jobs.error` (`error`), `job_steps.history`
//! (`history:<idx>`), `job_steps.checkpoint` (`checkpoint:<idx>`);
//! `triggers.secret` (`"wrun:trigger:v1:" workspace NUL id`) and
//! `triggers.input` (`"wrun:trigger-input:v1:" workspace NUL id`).
//! Connections use the CLI's sealing (`store_sqlite::seal_connection`,
//! bound to name, hosts and placement). A sealed record moved to another
//! job, step or workspace does not open.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use rusqlite::{Connection, OptionalExtension as _, params};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use wrun_runtime::{ConnectionSource, SecretValue};
use zeroize::Zeroizing;

use crate::access::{self as auth, PermissionSet};
use crate::audit::{self, AuditKey, Entry, Stored};
use crate::db::{
    Doing as _, OpenMode, SealedConnection, Store, StoreError, check_name, check_placement,
    grant_json, read_connections, read_environment, seal_connection,
};
use crate::erase::{self, EraseReport, Subject};
use crate::keys::{self, DataKey, KeySource, MasterKey};
use crate::oauth::{self, Lease, LeaseEnd, OAuthStatus, PendingAuthorization, Refresher};
use crate::sealed::job_aad;
use crate::storage::*;
use crate::time::UnixMillis;

/// Most operations committed in one transaction.
const MAX_BATCH: usize = 512;

/// Most idle read connections kept open.
const MAX_READERS: usize = 8;

/// What an operation tells its caller once the group is committed (or not).
type Completion = Box<dyn FnOnce(Result<(), String>) + Send>;

/// An operation for the writer thread, and whether its caller needs it
/// synced to disk (not just committed) before being answered.
type Op = (
    Durability,
    Box<dyn FnOnce(&WriteCtx<'_>) -> Completion + Send>,
);

/// How durable a write must be when its caller is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Committed and synced (`synchronous = FULL`): survives a power loss.
    /// Everything acknowledged to a client: accepted webhooks and runs,
    /// job ends, configuration changes, audit entries.
    Disk,
    /// Committed to the WAL (`synchronous = NORMAL`): survives the process
    /// being killed, and reaches the disk with the next synced commit.
    /// Progress nobody was promised: step checkpoints, a job marked
    /// running, a token's last use. After a power loss such a job resumes
    /// from an earlier step (steps run at least once in any case).
    Process,
}

/// What an operation can use on the writer thread.
pub struct WriteCtx<'a> {
    /// The writer's connection, inside the group's transaction.
    pub conn: &'a Connection,
    audit_key: &'a AuditKey,
    /// Why the group could not start: its ops answer with it, unrun.
    failed: Option<String>,
}

impl WriteCtx<'_> {
    /// Appends audit entries in the group's transaction.
    fn audit(&self, entries: &[Entry]) -> StorageResult<()> {
        if entries.is_empty() {
            return Ok(());
        }
        audit::append(self.conn, self.audit_key, UnixMillis::now(), entries)?;
        Ok(())
    }
}

/// The master key and where to read it again after an online rotation.
struct KeyCell {
    key: RwLock<Arc<MasterKey>>,
    source: Option<KeySource>,
}

/// The SQLite storage of the daemon.
pub struct SqliteStorage {
    path: PathBuf,
    /// The writer's queue; taken on drop, which ends the writer.
    ops: Option<mpsc::UnboundedSender<Op>>,
    readers: Mutex<Vec<Store>>,
    /// A connection for data-key creation (its own short transactions).
    keys_store: Mutex<Store>,
    master: KeyCell,
    data_keys: RwLock<HashMap<String, Arc<DataKey>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Refreshes OAuth2 tokens for the connection sources, once enabled.
    oauth: std::sync::OnceLock<Arc<Refresher>>,
}

impl Drop for SqliteStorage {
    /// Ends the writer thread and waits for it, so that its connection is
    /// closed before the process exits: the last connection to close
    /// folds the write-ahead log into the database file (a CLI command
    /// leaves the database as one file, as it found it).
    fn drop(&mut self) {
        // With its queue closed, the writer finishes what is queued and ends.
        drop(self.ops.take());
        let handle = self
            .writer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("the database writer thread panicked");
        }
    }
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Maps a serde error on a stored record.
fn damaged(what: impl Into<String>) -> impl FnOnce(serde_json::Error) -> StorageError {
    let what = what.into();
    move |e| StorageError::Damaged {
        what,
        reason: e.to_string(),
    }
}

/// The associated data of a schedule's sealed trigger input.
fn trigger_input_aad(workspace: &str, id: &str) -> Vec<u8> {
    format!("wrun:trigger-input:v1:{workspace}\0{id}").into_bytes()
}

/// The associated data of a sealed webhook secret.
fn trigger_aad(workspace: &str, id: &str) -> Vec<u8> {
    format!("wrun:trigger:v1:{workspace}\0{id}").into_bytes()
}

impl SqliteStorage {
    /// Opens (creating if missing) the database at `path` and starts the
    /// writer thread.
    ///
    /// # Errors
    ///
    /// Store errors (not a wrun database, damaged, wrong master key).
    pub fn open(
        path: &Path,
        master: MasterKey,
        source: Option<KeySource>,
    ) -> StorageResult<Arc<SqliteStorage>> {
        let writer = Store::open(path, OpenMode::CreateIfMissing)?;
        writer.check_key(&master)?;
        let audit_key = writer.audit_key(&master)?;
        let audit_key = AuditKey::from_bytes(*audit_key.bytes());
        let keys_store = Store::open(path, OpenMode::MustExist)?;
        let (tx, rx) = mpsc::unbounded_channel::<Op>();
        let handle = std::thread::Builder::new()
            .name("wrun-db-writer".into())
            .spawn(move || writer_loop(&writer, &audit_key, rx))
            .map_err(|e| StorageError::Internal(format!("cannot start the writer thread: {e}")))?;
        Ok(Arc::new(SqliteStorage {
            path: path.into(),
            ops: Some(tx),
            readers: Mutex::new(Vec::new()),
            keys_store: Mutex::new(keys_store),
            master: KeyCell {
                key: RwLock::new(Arc::new(master)),
                source,
            },
            data_keys: RwLock::new(HashMap::new()),
            writer: Mutex::new(Some(handle)),
            oauth: std::sync::OnceLock::new(),
        }))
    }

    /// Records a use (a token's, a session's) with the next group, not
    /// awaited by the request that made it; a failure is only logged.
    fn note_use<F>(self: &Arc<Self>, f: F)
    where
        F: FnOnce(&Connection) -> Result<usize, StoreError> + Send + 'static,
    {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = this
                .write_with(Durability::Process, move |ctx| Ok(f(ctx.conn)?))
                .await
            {
                tracing::warn!(error = %e, "a use was not recorded");
            }
        });
    }

    /// Runs `f` on the writer thread in the next group; returns once the
    /// group is committed.
    pub async fn write<T, F>(&self, f: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteCtx<'_>) -> StorageResult<T> + Send + 'static,
    {
        self.write_with(Durability::Disk, f).await
    }

    /// Like [`write`](Self::write), with the durability the caller needs.
    pub async fn write_with<T, F>(&self, sync: Durability, f: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&WriteCtx<'_>) -> StorageResult<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<StorageResult<T>>();
        let op: Op = (
            sync,
            Box::new(move |ctx| {
                if let Some(reason) = &ctx.failed {
                    let e =
                        StorageError::Internal(format!("the database refused a write: {reason}"));
                    return Box::new(move |_| {
                        let _ = tx.send(Err(e));
                    });
                }
                if let Err(e) = ctx.conn.execute_batch("SAVEPOINT op") {
                    let e = StorageError::Backend(format!("starting a write: {e}"));
                    return Box::new(move |_| {
                        let _ = tx.send(Err(e));
                    });
                }
                match f(ctx) {
                    Ok(value) => {
                        let _ = ctx.conn.execute_batch("RELEASE op");
                        Box::new(move |committed| {
                            let _ = tx.send(match committed {
                                Ok(()) => Ok(value),
                                Err(e) => Err(StorageError::Internal(format!(
                                    "committing to the database failed: {e}"
                                ))),
                            });
                        })
                    }
                    Err(e) => {
                        let _ = ctx.conn.execute_batch("ROLLBACK TO op; RELEASE op");
                        Box::new(move |_| {
                            let _ = tx.send(Err(e));
                        })
                    }
                }
            }),
        );
        self.ops
            .as_ref()
            .ok_or(StorageError::Closed)?
            .send(op)
            .map_err(|_| StorageError::Closed)?;
        rx.await.map_err(|_| StorageError::Closed)?
    }

    /// Runs `f` with a read connection on the blocking pool.
    pub async fn read<T, F>(self: &Arc<Self>, f: F) -> StorageResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StorageResult<T> + Send + 'static,
    {
        let this = Arc::clone(self);
        let joined = tokio::task::spawn_blocking(move || {
            let pooled = this
                .readers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            let reader = match pooled {
                Some(r) => r,
                None => Store::open(&this.path, OpenMode::MustExist)?,
            };
            let result = f(reader.conn());
            let mut readers = this.readers.lock().unwrap_or_else(PoisonError::into_inner);
            if readers.len() < MAX_READERS {
                readers.push(reader);
            }
            result
        })
        .await;
        joined.map_err(|e| StorageError::Internal(format!("a database read failed: {e}")))?
    }

    /// The data key of a workspace (cached), created with the workspace if
    /// `create` is set. Reloads the master key once if the database has
    /// been rotated to a new one.
    async fn data_key(
        self: &Arc<Self>,
        workspace: &str,
        create: bool,
    ) -> StorageResult<Arc<DataKey>> {
        if let Some(k) = self
            .data_keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(workspace)
        {
            return Ok(Arc::clone(k));
        }
        let this = Arc::clone(self);
        let ws = workspace.to_string();
        let joined = tokio::task::spawn_blocking(move || -> StorageResult<Option<DataKey>> {
            let store = this
                .keys_store
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let key = Arc::clone(
                &this
                    .master
                    .key
                    .read()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            match store.data_key(&ws, &key, create) {
                Err(StoreError::KeyMismatch { .. }) if this.master.source.is_some() => {
                    let reloaded = this
                        .master
                        .source
                        .clone()
                        .map(MasterKey::load)
                        .transpose()
                        .map_err(|e| StorageError::Internal(e.to_string()))?;
                    let Some(reloaded) = reloaded else {
                        return Ok(None);
                    };
                    let dk = store.data_key(&ws, &reloaded, create)?;
                    *this
                        .master
                        .key
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) = Arc::new(reloaded);
                    Ok(dk)
                }
                other => Ok(other?),
            }
        })
        .await
        .map_err(|e| StorageError::Internal(format!("reading a data key failed: {e}")))??;
        let Some(dk) = joined else {
            return Err(StorageError::NotFound {
                what: "workspace",
                name: workspace.into(),
            });
        };
        let dk = Arc::new(dk);
        self.data_keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(workspace.into(), Arc::clone(&dk));
        Ok(dk)
    }

    /// Seals a JSON value for a job part.
    async fn seal_json(
        self: &Arc<Self>,
        workspace: &str,
        aad: &[u8],
        value: &Value,
    ) -> StorageResult<Vec<u8>> {
        let dk = self.data_key(workspace, true).await?;
        crate::sealed::seal_json(&dk, aad, value)
    }

    /// A connection source over this storage for one job.
    fn job_connections(
        self: &Arc<Self>,
        workspace: &str,
        environment: &str,
    ) -> Arc<dyn ConnectionSource> {
        Arc::new(DaemonConnections {
            storage: Arc::clone(self),
            workspace: workspace.into(),
            environment: environment.into(),
        })
    }
}

/// The writer thread: group commits until every sender is gone.
fn writer_loop(store: &Store, audit_key: &AuditKey, mut rx: mpsc::UnboundedReceiver<Op>) {
    let conn = store.conn();
    let mut synchronous = Durability::Disk;
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        // One synced commit covers every op of the group (and every
        // process-durable commit before it: the WAL is synced up to here).
        let wanted = if batch.iter().any(|(s, _)| *s == Durability::Disk) {
            Durability::Disk
        } else {
            Durability::Process
        };
        let mut failed = None;
        if wanted != synchronous {
            let level = if wanted == Durability::Disk {
                "FULL"
            } else {
                "NORMAL"
            };
            match conn.pragma_update(None, "synchronous", level) {
                Ok(()) => synchronous = wanted,
                // A group that must be synced is not committed unsynced.
                Err(e) if wanted == Durability::Disk => failed = Some(e.to_string()),
                Err(_) => {}
            }
        }
        if failed.is_none()
            && let Err(e) = conn.execute_batch("BEGIN IMMEDIATE")
        {
            failed = Some(e.to_string());
        }
        let ops = batch.into_iter().map(|(_, op)| op);
        if let Some(reason) = failed {
            tracing::error!(error = %reason, "a group of writes could not start");
            let ctx = WriteCtx {
                conn,
                audit_key,
                failed: Some(reason.clone()),
            };
            for op in ops {
                op(&ctx)(Err(reason.clone()));
            }
            continue;
        }
        let ctx = WriteCtx {
            conn,
            audit_key,
            failed: None,
        };
        let completions: Vec<Completion> = ops.map(|op| op(&ctx)).collect();
        let committed = conn.execute_batch("COMMIT").map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            e.to_string()
        });
        if let Err(e) = &committed {
            tracing::error!(error = %e, "a group commit failed");
        }
        for done in completions {
            done(committed.clone());
        }
    }
}

/// Connections of one job, resolved through the environment's bindings and
/// opened with the cached workspace key.
struct DaemonConnections {
    storage: Arc<SqliteStorage>,
    workspace: String,
    environment: String,
}

#[async_trait::async_trait]
impl ConnectionSource for DaemonConnections {
    async fn connection(&self, name: &str) -> Result<Option<wrun_runtime::Connection>, String> {
        let read = || {
            let (ws, env, logical) = (
                self.workspace.clone(),
                self.environment.clone(),
                name.to_string(),
            );
            self.storage.read(move |conn| {
                let Some(sealed) = SealedConnection::read_bound(conn, &ws, &env, &logical)? else {
                    return Ok(None);
                };
                let oauth = oauth::read_row(conn, &ws, sealed.name())?;
                Ok(Some((sealed, oauth)))
            })
        };
        let Some((mut sealed, oauth)) = read().await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        // An OAuth2 connection's value is its access token: refreshed
        // first when it is about to expire, then read again.
        if let Some(row) = oauth
            && !row.is_fresh(UnixMillis::now())
        {
            let refresher = self.storage.oauth.get().ok_or_else(|| {
                format!(
                    "connection `{}` is an OAuth2 connection and this process cannot refresh its token",
                    sealed.name()
                )
            })?;
            oauth::fresh_token(&self.storage, refresher, &self.workspace, sealed.name()).await?;
            match read().await.map_err(|e| e.to_string())? {
                Some((again, Some(row))) if row.state == oauth::OAuthState::Ready => sealed = again,
                Some((_, Some(row))) => {
                    return Err(row
                        .unusable(name, None)
                        .unwrap_or_else(|| format!("OAuth2 connection `{name}` has no token")));
                }
                Some((again, None)) => sealed = again,
                None => return Ok(None),
            }
        }
        let dk = self
            .storage
            .data_key(&self.workspace, false)
            .await
            .map_err(|e| e.to_string())?;
        sealed
            .open(&dk, &self.workspace, name)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// Writes a connection's row: added, or replaced in place (`rotated` marks
/// a new value). The one write of `connections` rows, static or OAuth2.
fn upsert_connection(
    conn: &Connection,
    workspace: &str,
    name: &str,
    sealed: &[u8],
    hosts: &str,
    placement: &str,
    rotated: bool,
) -> StorageResult<()> {
    conn.execute(
        "INSERT INTO connections (workspace, name, sealed, hosts, placement, created_at, rotated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)
         ON CONFLICT (workspace, name) DO UPDATE SET sealed = excluded.sealed, hosts = excluded.hosts,
            placement = excluded.placement,
            rotated_at = CASE WHEN ?7 THEN ?6 ELSE rotated_at END",
        params![workspace, name, sealed, hosts, placement, UnixMillis::now(), rotated],
    )
    .doing(|| format!("storing connection `{name}`"))?;
    Ok(())
}

/// The strength rule of connection values ([`wrun_runtime::secrets::check_value_strength`]),
/// applied by the store to every value it seals.
fn check_strength(c: &wrun_runtime::Connection) -> StorageResult<()> {
    wrun_runtime::secrets::check_value_strength(c.name(), c.value(), c.placement()).map_err(|e| {
        StorageError::Invalid {
            code: "weak_connection_value",
            message: e.to_string(),
        }
    })
}

/// Runs a query and collects its rows; `doing` names the work in errors.
fn query_rows<T, P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
    f: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    doing: impl Fn() -> String,
) -> StorageResult<Vec<T>> {
    let mut stmt = conn.prepare(sql).doing(&doing)?;
    let rows = stmt.query_map(params, f).doing(&doing)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>().doing(&doing)?)
}

/// Reads a token row.
fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(TokenRecord, String, String)> {
    let hash: Vec<u8> = r.get(3)?;
    let mut h = [0u8; 32];
    if hash.len() == 32 {
        h.copy_from_slice(&hash);
    }
    Ok((
        TokenRecord {
            id: r.get(0)?,
            workspace: r.get(1)?,
            name: r.get(2)?,
            hash: h,
            owner: r.get(4)?,
            creator: r.get(5)?,
            scopes: PermissionSet::default(),
            allow_ips: Vec::new(),
            created_at: r.get(8)?,
            expires_at: r.get(9)?,
            revoked_at: r.get(10)?,
            last_used_at: r.get(11)?,
            last_used_ip: r.get(12)?,
        },
        r.get(6)?,
        r.get(7)?,
    ))
}

/// Completes a token read from its row.
fn finish_token((mut t, scopes, ips): (TokenRecord, String, String)) -> StorageResult<TokenRecord> {
    let scopes: Vec<String> =
        serde_json::from_str(&scopes).map_err(damaged(format!("the scopes of token {}", t.id)))?;
    t.scopes = PermissionSet::parse(&scopes).map_err(|e| StorageError::Damaged {
        what: format!("the scopes of token {}", t.id),
        reason: e.to_string(),
    })?;
    t.allow_ips = serde_json::from_str(&ips)
        .map_err(damaged(format!("the IP allowlist of token {}", t.id)))?;
    Ok(t)
}

const TOKEN_COLUMNS: &str = "id, workspace, name, hash, owner, creator, scopes, allow_ips, created_at, expires_at, revoked_at, last_used_at, last_used_ip";

const JOB_COLUMNS: &str = "id, workspace, recipe, environment, state, trigger_kind, rerun_of, created_at, started_at, finished_at, error, erased_at";

/// Reads a job summary row.
fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    let state: String = r.get(4)?;
    Ok((
        JobSummary {
            id: r.get(0)?,
            workspace: r.get(1)?,
            recipe: r.get(2)?,
            environment: r.get(3)?,
            state: JobState::Queued,
            trigger: r.get(5)?,
            rerun_of: r.get(6)?,
            created_at: r.get(7)?,
            started_at: r.get(8)?,
            finished_at: r.get(9)?,
            error: None,
            erased_at: r.get(11)?,
        },
        state,
        r.get(10)?,
    ))
}

/// A job row: the summary, its state text, its sealed error.
type JobRow = (JobSummary, String, Option<Vec<u8>>);

/// Completes a job summary from its row.
fn finish_job_row((mut s, state, error): JobRow) -> StorageResult<(JobSummary, Option<Vec<u8>>)> {
    s.state = JobState::parse(&state).ok_or_else(|| StorageError::Damaged {
        what: format!("job {}", s.id),
        reason: format!("unknown state `{state}`"),
    })?;
    Ok((s, error))
}

/// Opens a job's sealed error into its summary.
fn open_error(dk: &DataKey, s: &mut JobSummary, sealed: Option<Vec<u8>>) -> StorageResult<()> {
    if let Some(sealed) = sealed {
        let v = crate::sealed::open_json(
            dk,
            &sealed,
            &job_aad(&s.workspace, &s.id, "error"),
            &format!("the error of job {}", s.id),
        )?;
        s.error = v.as_str().map(String::from);
    }
    Ok(())
}

/// A recipe version as its rows hold it.
struct RecipeRow {
    manifest: String,
    /// Component path -> SHA-256, as JSON.
    lock: String,
    signed_version: Option<i64>,
    signer: Option<String>,
    /// The review, as JSON.
    review: String,
    components: BTreeMap<String, Vec<u8>>,
}

impl RecipeRow {
    fn new(v: RecipeVersion) -> StorageResult<RecipeRow> {
        let hashes: BTreeMap<String, String> = v
            .components
            .iter()
            .map(|(path, bytes)| (path.clone(), crate::sha256_hex(bytes)))
            .collect();
        let signed_version = v
            .signed_version
            .map(|n| {
                i64::try_from(n).map_err(|_| StorageError::Invalid {
                    code: "invalid_version",
                    message: format!("bundle version {n} is too large"),
                })
            })
            .transpose()?;
        Ok(RecipeRow {
            manifest: v.manifest,
            lock: serde_json::to_string(&hashes).map_err(damaged("components"))?,
            signed_version,
            signer: v.signer,
            review: serde_json::to_string(&v.review).map_err(damaged("a review"))?,
            components: v.components,
        })
    }

    /// The version's id: a digest of what it runs.
    fn id(&self) -> String {
        crate::sha256_hex(
            format!(
                "{}\0{}\0{:?}\0{:?}",
                self.manifest, self.lock, self.signed_version, self.signer
            )
            .as_bytes(),
        )
    }

    fn store_components(&self, conn: &Connection) -> StorageResult<()> {
        for (path, bytes) in &self.components {
            insert_component(conn, path, bytes)?;
        }
        Ok(())
    }

    /// Refuses replacing the deployed version by an older signed one, by
    /// other content under the same signed version, or by an unsigned one.
    fn check_not_downgrade(&self, conn: &Connection, ws: &str, name: &str) -> StorageResult<()> {
        let current: Option<(Option<i64>, String, String)> = conn
            .query_row(
                "SELECT signed_version, manifest, lock FROM recipes WHERE workspace = ?1 AND name = ?2",
                params![ws, name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .doing(|| format!("reading the deployed version of recipe `{name}`"))?;
        let Some((Some(deployed), manifest, lock)) = current else {
            return Ok(());
        };
        match self.signed_version {
            None => Err(StorageError::Conflict(format!(
                "recipe `{name}` runs signed version {deployed}; an unsigned bundle cannot replace it"
            ))),
            Some(v) if v < deployed => Err(StorageError::Conflict(format!(
                "downgrade refused: bundle version {v} of recipe `{name}` is older than the deployed signed version {deployed}"
            ))),
            Some(v) if v == deployed && (manifest != self.manifest || lock != self.lock) => {
                Err(StorageError::Conflict(format!(
                    "recipe `{name}` already runs signed version {v} with other content; sign the change with a higher version"
                )))
            }
            Some(_) => Ok(()),
        }
    }

    /// Makes this the deployed version and drops the one waiting.
    fn deploy(&self, conn: &Connection, ws: &str, name: &str) -> StorageResult<()> {
        let doing = || format!("storing recipe `{name}`");
        conn.execute(
            "INSERT INTO recipes (workspace, name, manifest, lock, imported_at, signed_version, signer)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (workspace, name) DO UPDATE SET manifest = excluded.manifest, lock = excluded.lock,
                 imported_at = excluded.imported_at, signed_version = excluded.signed_version, signer = excluded.signer",
            params![ws, name, self.manifest, self.lock, UnixMillis::now(), self.signed_version, self.signer],
        )
        .doing(doing)?;
        conn.execute(
            "DELETE FROM pending_recipes WHERE workspace = ?1 AND name = ?2",
            params![ws, name],
        )
        .doing(doing)?;
        Ok(())
    }
}

/// Stores a component by its SHA-256 (content-addressed, kept once).
fn insert_component(conn: &Connection, path: &str, bytes: &[u8]) -> StorageResult<()> {
    conn.execute(
        "INSERT INTO components (sha256, bytes) VALUES (?1, ?2) ON CONFLICT (sha256) DO NOTHING",
        params![crate::sha256_hex(bytes), bytes],
    )
    .doing(|| format!("storing component {path}"))?;
    Ok(())
}

/// A job read by an erasure's scan: its state and sealed records.
struct ScannedJob {
    id: String,
    state: String,
    payload: Vec<u8>,
    error: Option<Vec<u8>>,
    idempotency_key: Option<String>,
    created_at: i64,
    /// Index, sealed record, sealed checkpoint.
    steps: Vec<(i64, Vec<u8>, Option<Vec<u8>>)>,
}

/// What replaces a matching job's content: a sealed `null` payload, the
/// reduced step records, and whether its idempotency key goes too.
struct ErasedJob {
    id: String,
    payload: Vec<u8>,
    clear_key: bool,
    steps: Vec<(i64, Vec<u8>)>,
}

impl ScannedJob {
    /// Whether any record of the job mentions the subject. Records are
    /// opened one at a time and dropped at once.
    fn mentions(&self, dk: &DataKey, ws: &str, subject: &Subject) -> StorageResult<bool> {
        let id = &self.id;
        let found = |sealed: &[u8], part: &str| {
            let damaged = |reason: String| StorageError::Damaged {
                what: format!("the {part} record of job {id}"),
                reason,
            };
            let plain = keys::open(dk, sealed, &job_aad(ws, id, part))
                .map_err(|e| damaged(e.to_string()))?;
            subject
                .found_in_json(&plain)
                .map_err(|e| damaged(e.to_string()))
        };
        if self
            .idempotency_key
            .as_deref()
            .is_some_and(|k| subject.found_in(&Value::String(k.into())))
            || found(&self.payload, "payload")?
        {
            return Ok(true);
        }
        if let Some(error) = &self.error
            && found(error, "error")?
        {
            return Ok(true);
        }
        for (idx, history, checkpoint) in &self.steps {
            if found(history, &format!("history:{idx}"))? {
                return Ok(true);
            }
            if let Some(c) = checkpoint
                && found(c, &format!("checkpoint:{idx}"))?
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// The sealed replacement of the job's content.
    fn erased(self, dk: &DataKey, ws: &str, subject: &Subject) -> StorageResult<ErasedJob> {
        let clear_key = self
            .idempotency_key
            .is_some_and(|k| subject.found_in(&Value::String(k)));
        let id = self.id;
        let seal = |value: &Value, part: &str| {
            let plain = serde_json::to_vec(value).map_err(damaged("an erased record"))?;
            keys::seal(dk, &plain, &job_aad(ws, &id, part)).map_err(|e| StorageError::Damaged {
                what: format!("the erased records of job {id}"),
                reason: e.to_string(),
            })
        };
        let payload = seal(&Value::Null, "payload")?;
        let steps = self
            .steps
            .iter()
            .map(|(idx, history, _)| {
                let part = format!("history:{idx}");
                let record = crate::sealed::open_json(
                    dk,
                    history,
                    &job_aad(ws, &id, &part),
                    &format!("the {part} record of job {id}"),
                )?;
                Ok((*idx, seal(&erase::erased_step(&record), &part)?))
            })
            .collect::<StorageResult<Vec<_>>>()?;
        Ok(ErasedJob {
            id: id.clone(),
            payload,
            clear_key,
            steps,
        })
    }
}

/// An erasure's audit entry: the caller's, with the counts (never the
/// subject).
fn erase_audit(mut entry: Entry, dry_run: bool, report: &EraseReport) -> Entry {
    if let Some(obj) = entry.detail.as_object_mut() {
        obj.insert("dry_run".into(), dry_run.into());
        obj.insert("scanned".into(), report.scanned.into());
        obj.insert("matched".into(), report.matched.into());
        obj.insert("erased".into(), report.erased.into());
        obj.insert("active".into(), report.active.into());
    }
    entry
}

impl SqliteStorage {
    /// One page of an erasure's scan: up to [`erase::PAGE`] jobs of the
    /// workspace after `after` (by creation time and id, along the
    /// workspace's time index) not erased yet, with their steps, read in
    /// one transaction.
    async fn erase_page(
        self: &Arc<Self>,
        workspace: &str,
        after: &(i64, String),
    ) -> StorageResult<Vec<ScannedJob>> {
        let (ws, (at, id)) = (workspace.to_string(), after.clone());
        self.read(move |conn| {
            let doing = || "reading job history to look for a data subject".to_string();
            let tx = conn.unchecked_transaction().doing(doing)?;
            let mut jobs = query_rows(
                &tx,
                "SELECT id, state, payload, error, idempotency_key, created_at FROM jobs
                 WHERE workspace = ?1 AND (created_at, id) > (?2, ?3) AND erased_at IS NULL
                 ORDER BY created_at, id LIMIT ?4",
                params![ws, at, id, erase::PAGE as i64],
                |r| {
                    Ok(ScannedJob {
                        id: r.get(0)?,
                        state: r.get(1)?,
                        payload: r.get(2)?,
                        error: r.get(3)?,
                        idempotency_key: r.get(4)?,
                        created_at: r.get(5)?,
                        steps: Vec::new(),
                    })
                },
                doing,
            )?;
            let mut stmt = tx
                .prepare_cached(
                    "SELECT idx, history, checkpoint FROM job_steps WHERE job = ?1 ORDER BY idx",
                )
                .doing(doing)?;
            for job in &mut jobs {
                job.steps = stmt
                    .query_map(params![job.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .doing(doing)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .doing(doing)?;
            }
            Ok(jobs)
        })
        .await
    }

    /// Folds the write-ahead log into the database file and empties it,
    /// so that no page image of destroyed records stays in it (with
    /// `secure_delete`, the freed space in the file is zeroed). A reader
    /// in a long transaction can hold it: a few tries, then the next
    /// checkpoint does it.
    async fn clear_log(self: &Arc<Self>) -> bool {
        for _ in 0..20 {
            let busy = self
                .read(|conn| {
                    Ok(conn
                        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                            r.get::<_, i64>(0)
                        })
                        .doing(|| "emptying the write-ahead log".to_string())?)
                })
                .await;
            if matches!(busy, Ok(0)) {
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        false
    }
}

/// A trigger row: the record, its sealed secret, its sealed input.
type TriggerRow = (TriggerRecord, Option<Vec<u8>>, Option<Vec<u8>>);

/// Reads a trigger row (the secret still sealed).
fn trigger_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TriggerRow> {
    let kind: String = r.get(3)?;
    let sealed: Option<Vec<u8>> = r.get(5)?;
    Ok((
        TriggerRecord {
            id: r.get(0)?,
            workspace: r.get(1)?,
            recipe: r.get(2)?,
            kind: if kind == "schedule" {
                TriggerKind::Schedule
            } else {
                TriggerKind::Webhook
            },
            environment: r.get(4)?,
            secret: None,
            signed: sealed.is_some(),
            cron: r.get(6)?,
            timezone: r.get(7)?,
            input: None,
            last_slot: r.get(9)?,
            created_at: r.get(10)?,
            respond: r
                .get::<_, Option<String>>(11)?
                .map(|text| serde_json::from_str(&text))
                .transpose()
                .map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        11,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?,
        },
        sealed,
        r.get(8)?,
    ))
}

const TRIGGER_COLUMNS: &str = "id, workspace, recipe, kind, environment, secret, cron, timezone, input, last_slot, created_at, respond";

impl SqliteStorage {
    /// Completes a trigger read: opens its secret and parses its input.
    async fn finish_trigger(
        self: &Arc<Self>,
        (mut t, sealed, input): TriggerRow,
    ) -> StorageResult<TriggerRecord> {
        if let Some(sealed) = sealed {
            let dk = self.data_key(&t.workspace, false).await?;
            let plain =
                keys::open(&dk, &sealed, &trigger_aad(&t.workspace, &t.id)).map_err(|e| {
                    StorageError::Damaged {
                        what: format!("the secret of webhook {}", t.id),
                        reason: e.to_string(),
                    }
                })?;
            t.secret = Some(Zeroizing::new(plain.to_vec()));
        }
        if let Some(input) = input {
            let dk = self.data_key(&t.workspace, false).await?;
            t.input = Some(crate::sealed::open_json(
                &dk,
                &input,
                &trigger_input_aad(&t.workspace, &t.id),
                &format!("the input of schedule {}", t.id),
            )?);
        }
        Ok(t)
    }
}

/// Inserts a job row (the payload already sealed); `Duplicate` if the
/// idempotency key was seen for this recipe.
fn insert_job(conn: &Connection, job: &NewJob, sealed: &[u8]) -> StorageResult<Enqueued> {
    // Checked in the job's own transaction: a recipe deleted (with its
    // triggers) after a webhook was looked up gets no job.
    let deployed = conn
        .query_row(
            "SELECT 1 FROM recipes WHERE workspace = ?1 AND name = ?2",
            params![job.workspace, job.recipe],
            |_| Ok(()),
        )
        .optional()
        .doing(|| format!("checking recipe `{}`", job.recipe))?
        .is_some();
    if !deployed {
        return Err(StorageError::NotFound {
            what: "recipe",
            name: job.recipe.clone(),
        });
    }
    if let Some(key) = &job.idempotency_key {
        let existing: Option<String> = conn
            .query_row(
                "SELECT id FROM jobs WHERE workspace = ?1 AND recipe = ?2 AND idempotency_key = ?3",
                params![job.workspace, job.recipe, key],
                |r| r.get(0),
            )
            .optional()
            .doing(|| "checking an idempotency key".to_string())?;
        if let Some(id) = existing {
            return Ok(Enqueued::Duplicate(id));
        }
    }
    conn.execute(
        "INSERT INTO jobs (id, workspace, recipe, environment, state, trigger_kind, payload, idempotency_key, rerun_of, created_at)
         VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, ?8, ?9)",
        params![
            job.id,
            job.workspace,
            job.recipe,
            job.environment,
            job.trigger_kind,
            sealed,
            job.idempotency_key,
            job.rerun_of,
            job.created_at
        ],
    )
    .doing(|| format!("queueing job {}", job.id))?;
    Ok(Enqueued::New(job.id.clone()))
}

/// Deletes the rows `sql` matches (parameters: workspace, key) and, if
/// there were any, appends `audit` in the same transaction; whether any
/// were deleted.
fn delete_audited(
    ctx: &WriteCtx<'_>,
    sql: &str,
    workspace: &str,
    key: &str,
    audit: Entry,
) -> StorageResult<bool> {
    let n = ctx
        .conn
        .execute(sql, params![workspace, key])
        .doing(|| format!("deleting `{key}` from workspace `{workspace}`"))?;
    if n > 0 {
        ctx.audit(&[audit])?;
    }
    Ok(n > 0)
}

/// Why removing or demoting the last admin is refused, or `None` if the
/// change keeps an admin: removing `subject` (`new_role` `None`) or giving
/// them `new_role`. Call it in the transaction that makes the change, so two
/// admins demoting each other at once cannot both succeed.
fn last_admin_refusal(
    conn: &Connection,
    workspace: &str,
    subject: &str,
    new_role: Option<&str>,
) -> rusqlite::Result<Option<String>> {
    if new_role == Some("admin") {
        return Ok(None);
    }
    let current: Option<String> = conn
        .query_row(
            "SELECT role FROM members WHERE workspace = ?1 AND subject = ?2",
            params![workspace, subject],
            |r| r.get(0),
        )
        .optional()?;
    if current.as_deref() != Some("admin") {
        return Ok(None);
    }
    let admins: i64 = conn.query_row(
        "SELECT count(*) FROM members WHERE workspace = ?1 AND role = 'admin'",
        params![workspace],
        |r| r.get(0),
    )?;
    Ok((admins <= 1).then(|| {
        format!(
            "`{subject}` is the last admin of workspace `{workspace}`; make another member admin first"
        )
    }))
}

/// Refuses, as a conflict, a change that would leave no admin.
fn keep_an_admin(
    conn: &Connection,
    workspace: &str,
    subject: &str,
    new_role: Option<&str>,
) -> StorageResult<()> {
    match last_admin_refusal(conn, workspace, subject, new_role)
        .doing(|| format!("counting the admins of workspace `{workspace}`"))?
    {
        Some(refusal) => Err(StorageError::Conflict(refusal)),
        None => Ok(()),
    }
}

/// Deletes jobs by id (their steps go by cascade).
fn delete_job_ids(conn: &Connection, ids: &[String]) -> StorageResult<u64> {
    let mut n = 0;
    for id in ids {
        n += conn
            .execute("DELETE FROM jobs WHERE id = ?1", params![id])
            .doing(|| format!("deleting job {id}"))? as u64;
    }
    Ok(n)
}

#[async_trait::async_trait]
impl Storage for Arc<SqliteStorage> {
    fn connections(&self, workspace: &str, environment: &str) -> Arc<dyn ConnectionSource> {
        self.job_connections(workspace, environment)
    }

    async fn token(&self, id: &str) -> StorageResult<Option<TokenRecord>> {
        let id = id.to_string();
        self.read(move |conn| {
            let row = conn
                .query_row(
                    &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE id = ?1"),
                    params![id],
                    token_row,
                )
                .optional()
                .doing(|| "reading a token".to_string())?;
            row.map(finish_token).transpose()
        })
        .await
    }

    async fn create_token(&self, t: TokenRecord, audit: Entry) -> StorageResult<()> {
        let scopes = serde_json::to_string(&t.scopes.to_strings()).map_err(damaged("scopes"))?;
        let ips = serde_json::to_string(&t.allow_ips).map_err(damaged("allowlist"))?;
        self.write(move |ctx| {
            ctx.conn
                .execute(
                    &format!(
                        "INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, NULL, NULL, NULL)"
                    ),
                    params![
                        t.id,
                        t.workspace,
                        t.name,
                        t.hash.to_vec(),
                        t.owner,
                        t.creator,
                        scopes,
                        ips,
                        t.created_at,
                        t.expires_at
                    ],
                )
                .doing(|| "storing a token".to_string())?;
            ctx.audit(&[audit])
        })
        .await
    }

    async fn list_tokens(&self, workspace: &str) -> StorageResult<Vec<TokenRecord>> {
        let ws = workspace.to_string();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {TOKEN_COLUMNS} FROM tokens WHERE workspace = ?1 ORDER BY created_at, id"
                ))
                .doing(|| "listing tokens".to_string())?;
            let rows = stmt
                .query_map(params![ws], token_row)
                .doing(|| "listing tokens".to_string())?;
            rows.map(|r| {
                finish_token(r.doing(|| "listing tokens".to_string())?)
            })
            .collect()
        })
        .await
    }

    async fn revoke_token(&self, workspace: &str, id: &str, audit: Entry) -> StorageResult<bool> {
        let (ws, id) = (workspace.to_string(), id.to_string());
        self.write(move |ctx| {
            let n = ctx
                .conn
                .execute(
                    "UPDATE tokens SET revoked_at = ?3 WHERE workspace = ?1 AND id = ?2 AND revoked_at IS NULL",
                    params![ws, id, UnixMillis::now()],
                )
                .doing(|| "revoking a token".to_string())?;
            let exists = n > 0
                || ctx
                    .conn
                    .query_row(
                        "SELECT 1 FROM tokens WHERE workspace = ?1 AND id = ?2",
                        params![ws, id],
                        |_| Ok(()),
                    )
                    .optional()
                    .doing(|| "revoking a token".to_string())?
                    .is_some();
            if exists {
                crate::sessions::end_of_token(ctx.conn, &id)?;
                ctx.audit(&[audit])?;
            }
            Ok(exists)
        })
        .await
    }

    async fn touch_token(&self, id: &str, at: UnixMillis, ip: &str) -> StorageResult<()> {
        let (id, ip) = (id.to_string(), ip.to_string());
        self.note_use(move |conn| {
            conn.execute(
                "UPDATE tokens SET last_used_at = ?2, last_used_ip = ?3 WHERE id = ?1",
                params![id, at, ip],
            )
            .doing(|| "recording a token's use".to_string())
        });
        Ok(())
    }

    async fn member_role(&self, workspace: &str, subject: &str) -> StorageResult<Option<String>> {
        let (ws, subject) = (workspace.to_string(), subject.to_string());
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT role FROM members WHERE workspace = ?1 AND subject = ?2",
                    params![ws, subject],
                    |r| r.get(0),
                )
                .optional()
                .doing(|| "reading a member".to_string())?)
        })
        .await
    }

    async fn role_permissions(
        &self,
        workspace: &str,
        role: &str,
    ) -> StorageResult<Option<PermissionSet>> {
        if let Some(p) = auth::builtin_role(role) {
            return Ok(Some(p));
        }
        let (ws, role) = (workspace.to_string(), role.to_string());
        self.read(move |conn| {
            let perms: Option<String> = conn
                .query_row(
                    "SELECT permissions FROM roles WHERE workspace = ?1 AND name = ?2",
                    params![ws, role],
                    |r| r.get(0),
                )
                .optional()
                .doing(|| "reading a role".to_string())?;
            perms
                .map(|p| {
                    let list: Vec<String> =
                        serde_json::from_str(&p).map_err(damaged(format!("role `{role}`")))?;
                    PermissionSet::parse(&list).map_err(|e| StorageError::Damaged {
                        what: format!("role `{role}`"),
                        reason: e.to_string(),
                    })
                })
                .transpose()
        })
        .await
    }

    async fn list_members(&self, workspace: &str) -> StorageResult<Vec<Member>> {
        let ws = workspace.to_string();
        self.read(move |conn| {
            let doing = || "listing members".to_string();
            let rows = query_rows(
                conn,
                "SELECT subject, role, created_at
                     FROM members
                     WHERE workspace = ?1
                     ORDER BY subject",
                params![ws],
                |r| {
                    Ok(Member {
                        subject: r.get(0)?,
                        role: r.get(1)?,
                        created_at: r.get(2)?,
                    })
                },
                doing,
            )?;
            Ok(rows)
        })
        .await
    }

    async fn set_member(
        &self,
        workspace: &str,
        subject: &str,
        role: &str,
        audit: Entry,
    ) -> StorageResult<()> {
        self.data_key(workspace, true).await?;
        let (ws, subject, role) = (workspace.to_string(), subject.to_string(), role.to_string());
        self.write(move |ctx| {
            if auth::builtin_role(&role).is_none() {
                let exists = ctx
                    .conn
                    .query_row(
                        "SELECT 1 FROM roles WHERE workspace = ?1 AND name = ?2",
                        params![ws, role],
                        |_| Ok(()),
                    )
                    .optional()
                    .doing(|| "checking a role".to_string())?
                    .is_some();
                if !exists {
                    return Err(StorageError::NotFound {
                        what: "role",
                        name: role,
                    });
                }
            }
            keep_an_admin(ctx.conn, &ws, &subject, Some(&role))?;
            ctx.conn
                .execute(
                    "INSERT INTO members (workspace, subject, role, created_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (workspace, subject) DO UPDATE SET role = excluded.role",
                    params![ws, subject, role, UnixMillis::now()],
                )
                .doing(|| "setting a member".to_string())?;
            ctx.audit(&[audit])
        })
        .await
    }

    async fn remove_member(
        &self,
        workspace: &str,
        subject: &str,
        audit: Entry,
    ) -> StorageResult<bool> {
        let (ws, subject) = (workspace.to_string(), subject.to_string());
        self.write(move |ctx| {
            keep_an_admin(ctx.conn, &ws, &subject, None)?;
            crate::sessions::end_of_subject(ctx.conn, &ws, &subject)?;
            delete_audited(
                ctx,
                "DELETE FROM members WHERE workspace = ?1 AND subject = ?2",
                &ws,
                &subject,
                audit,
            )
        })
        .await
    }

    async fn list_roles(&self, workspace: &str) -> StorageResult<Vec<Role>> {
        let ws = workspace.to_string();
        let mut roles: Vec<Role> = auth::BUILTIN_ROLES
            .iter()
            .filter_map(|name| {
                auth::builtin_role(name).map(|permissions| Role {
                    name: (*name).to_string(),
                    permissions,
                    builtin: true,
                })
            })
            .collect();
        let custom = self
            .read(move |conn| {
                let doing = || "listing roles".to_string();
                let rows = query_rows(
                    conn,
                    "SELECT name, permissions FROM roles WHERE workspace = ?1 ORDER BY name",
                    params![ws],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                    doing,
                )?;

                rows.into_iter()
                    .map(|(name, p)| {
                        let list: Vec<String> =
                            serde_json::from_str(&p).map_err(damaged(format!("role `{name}`")))?;
                        let permissions =
                            PermissionSet::parse(&list).map_err(|e| StorageError::Damaged {
                                what: format!("role `{name}`"),
                                reason: e.to_string(),
                            })?;
                        Ok(Role {
                            name,
                            permissions,
                            builtin: false,
                        })
                    })
                    .collect::<StorageResult<Vec<_>>>()
            })
            .await?;
        roles.extend(custom);
        Ok(roles)
    }

    async fn put_role(
        &self,
        workspace: &str,
        name: &str,
        permissions: PermissionSet,
        audit: Entry,
    ) -> StorageResult<()> {
        if auth::builtin_role(name).is_some() {
            return Err(StorageError::Conflict(format!(
                "`{name}` is a built-in role and cannot be changed"
            )));
        }
        let (ws, name) = (workspace.to_string(), name.to_string());
        let perms =
            serde_json::to_string(&permissions.to_strings()).map_err(damaged("permissions"))?;
        self.write(move |ctx| {
            ctx.conn
                .execute(
                    "INSERT INTO roles (workspace, name, permissions) VALUES (?1, ?2, ?3)
                     ON CONFLICT (workspace, name) DO UPDATE SET permissions = excluded.permissions",
                    params![ws, name, perms],
                )
                .doing(|| "storing a role".to_string())?;
            ctx.audit(&[audit])
        })
        .await
    }

    async fn delete_role(&self, workspace: &str, name: &str, audit: Entry) -> StorageResult<bool> {
        let (ws, name) = (workspace.to_string(), name.to_string());
        self.write(move |ctx| {
            let used = ctx
                .conn
                .query_row(
                    "SELECT count(*) FROM members WHERE workspace = ?1 AND role = ?2",
                    params![ws, name],
                    |r| r.get::<_, i64>(0),
                )
                .doing(|| "deleting a role".to_string())?;
            if used > 0 {
                return Err(StorageError::Conflict(format!(
                    "role `{name}` is held by {used} member(s); change their role first"
                )));
            }
            let n = ctx
                .conn
                .execute(
                    "DELETE FROM roles WHERE workspace = ?1 AND name = ?2",
                    params![ws, name],
                )
                .doing(|| "deleting a role".to_string())?;
            if n > 0 {
                ctx.audit(&[audit])?;
            }
            Ok(n > 0)
        })
        .await
    }

    async fn put_recipe(
        &self,
        workspace: &str,
        name: &str,
        version: RecipeVersion,
        audit: Entry,
    ) -> StorageResult<()> {
        check_name("recipe", name)?;
        self.data_key(workspace, true).await?;
        let (ws, name) = (workspace.to_string(), name.to_string());
        let row = RecipeRow::new(version)?;
        self.write(move |ctx| {
            row.store_components(ctx.conn)?;
            row.check_not_downgrade(ctx.conn, &ws, &name)?;
            row.deploy(ctx.conn, &ws, &name)?;
            ctx.audit(&[audit])
        })
        .await
    }

    async fn submit_recipe(
        &self,
        workspace: &str,
        name: &str,
        version: RecipeVersion,
        submitted_by: &str,
        audit: Entry,
    ) -> StorageResult<String> {
        check_name("recipe", name)?;
        self.data_key(workspace, true).await?;
        let (ws, name, by) = (
            workspace.to_string(),
            name.to_string(),
            submitted_by.to_string(),
        );
        let row = RecipeRow::new(version)?;
        self.write(move |ctx| {
            row.store_components(ctx.conn)?;
            row.check_not_downgrade(ctx.conn, &ws, &name)?;
            let id = row.id();
            ctx.conn
                .execute(
                    "INSERT INTO pending_recipes (workspace, name, id, manifest, lock, signed_version, signer, review, submitted_by, submitted_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (workspace, name) DO UPDATE SET id = excluded.id, manifest = excluded.manifest,
                         lock = excluded.lock, signed_version = excluded.signed_version, signer = excluded.signer,
                         review = excluded.review, submitted_by = excluded.submitted_by, submitted_at = excluded.submitted_at",
                    params![ws, name, id, row.manifest, row.lock, row.signed_version, row.signer, row.review, by, UnixMillis::now()],
                )
                .doing(|| format!("keeping recipe `{name}` for approval"))?;
            let mut audit = audit;
            if let Some(obj) = audit.detail.as_object_mut() {
                obj.insert("pending".into(), id.clone().into());
            }
            ctx.audit(&[audit])?;
            Ok(id)
        })
        .await
    }

    async fn pending_recipe(
        &self,
        workspace: &str,
        name: &str,
    ) -> StorageResult<Option<PendingRecipe>> {
        let (ws, name) = (workspace.to_string(), name.to_string());
        self.read(move |conn| {
            let row = conn
                .query_row(
                    "SELECT id, signed_version, signer, review, submitted_by, submitted_at
                     FROM pending_recipes WHERE workspace = ?1 AND name = ?2",
                    params![ws, name],
                    |r| {
                        Ok((
                            r.get::<_, String>(0)?,
                            r.get::<_, Option<i64>>(1)?,
                            r.get::<_, Option<String>>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, String>(4)?,
                            r.get::<_, UnixMillis>(5)?,
                        ))
                    },
                )
                .optional()
                .doing(|| format!("reading the pending version of recipe `{name}`"))?;
            row.map(
                |(id, version, signer, review, submitted_by, submitted_at)| {
                    Ok(PendingRecipe {
                        id,
                        signed_version: version.and_then(|v| u64::try_from(v).ok()),
                        signer,
                        review: serde_json::from_str(&review)
                            .map_err(damaged(format!("the review of recipe `{name}`")))?,
                        submitted_by,
                        submitted_at,
                    })
                },
            )
            .transpose()
        })
        .await
    }

    async fn approve_recipe(
        &self,
        workspace: &str,
        name: &str,
        id: &str,
        audit: Entry,
    ) -> StorageResult<()> {
        let (ws, name, id) = (workspace.to_string(), name.to_string(), id.to_string());
        self.write(move |ctx| {
            let doing = || format!("approving recipe `{name}`");
            let pending = ctx
                .conn
                .query_row(
                    "SELECT manifest, lock, signed_version, signer, review FROM pending_recipes
                     WHERE workspace = ?1 AND name = ?2 AND id = ?3",
                    params![ws, name, id],
                    |r| {
                        Ok(RecipeRow {
                            manifest: r.get(0)?,
                            lock: r.get(1)?,
                            signed_version: r.get(2)?,
                            signer: r.get(3)?,
                            review: r.get(4)?,
                            components: BTreeMap::new(),
                        })
                    },
                )
                .optional()
                .doing(doing)?;
            let Some(row) = pending else {
                return Err(StorageError::NotFound {
                    what: "pending version",
                    name: id,
                });
            };
            row.check_not_downgrade(ctx.conn, &ws, &name)?;
            row.deploy(ctx.conn, &ws, &name)?;
            ctx.audit(&[audit])
        })
        .await
    }

    async fn governance(&self, workspace: &str) -> StorageResult<Governance> {
        let ws = workspace.to_string();
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT require_signatures, review_grants FROM settings WHERE workspace = ?1",
                    params![ws],
                    |r| {
                        Ok(Governance {
                            require_signatures: r.get(0)?,
                            review_grants: r.get(1)?,
                        })
                    },
                )
                .optional()
                .doing(|| "reading the governance settings".to_string())?
                .unwrap_or_default())
        })
        .await
    }

    async fn set_governance(
        &self,
        workspace: &str,
        settings: Governance,
        audit: Entry,
    ) -> StorageResult<()> {
        let ws = workspace.to_string();
        self.write(move |ctx| {
            ctx.conn
                .execute(
                    "INSERT INTO settings (workspace, require_signatures, review_grants) VALUES (?1, ?2, ?3)
                     ON CONFLICT (workspace) DO UPDATE SET require_signatures = excluded.require_signatures,
                         review_grants = excluded.review_grants",
                    params![ws, settings.require_signatures, settings.review_grants],
                )
                .doing(|| "changing the governance settings".to_string())?;
            ctx.audit(&[audit])
        })
        .await
    }

    async fn signing_keys(&self, workspace: &str) -> StorageResult<Vec<SigningKey>> {
        let ws = workspace.to_string();
        self.read(move |conn| {
            query_rows(
                conn,
                "SELECT name, id, public_key, added_at, revoked_at FROM signing_keys WHERE workspace = ?1 ORDER BY name",
                params![ws],
                |r| {
                    Ok(SigningKey {
                        name: r.get(0)?,
                        id: r.get(1)?,
                        public_key: r.get(2)?,
                        added_at: r.get(3)?,
                        revoked_at: r.get(4)?,
                    })
                },
                || "listing signing keys".to_string(),
            )
        })
        .await
    }

    async fn trust_signing_key(
        &self,
        workspace: &str,
        key: SigningKey,
        audit: Entry,
    ) -> StorageResult<()> {
        check_name("signing key", &key.name)?;
        let ws = workspace.to_string();
        self.write(move |ctx| {
            let doing = || format!("trusting signing key `{}`", key.name);
            let existing: Option<(String, Option<UnixMillis>)> = ctx
                .conn
                .query_row(
                    "SELECT name, revoked_at FROM signing_keys WHERE workspace = ?1 AND (name = ?2 OR id = ?3)",
                    params![ws, key.name, key.id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .doing(doing)?;
            match existing {
                Some((_, Some(_))) => {
                    return Err(StorageError::Conflict(format!(
                        "signing key `{}` (or key {}) was revoked in this workspace; a revoked key stays revoked",
                        key.name, key.id
                    )));
                }
                Some((name, None)) => {
                    return Err(StorageError::Conflict(format!(
                        "a signing key named `{}` or with id {} is already trusted (as `{name}`)",
                        key.name, key.id
                    )));
                }
                None => {}
            }
            ctx.conn
                .execute(
                    "INSERT INTO signing_keys (workspace, name, id, public_key, added_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![ws, key.name, key.id, key.public_key, UnixMillis::now()],
                )
                .doing(doing)?;
            ctx.audit(&[audit])
        })
        .await
    }

    async fn revoke_signing_key(
        &self,
        workspace: &str,
        name: &str,
        audit: Entry,
    ) -> StorageResult<bool> {
        let (ws, name) = (workspace.to_string(), name.to_string());
        self.write(move |ctx| {
            let n = ctx
                .conn
                .execute(
                    "UPDATE signing_keys SET revoked_at = ?3 WHERE workspace = ?1 AND name = ?2 AND revoked_at IS NULL",
                    params![ws, name, UnixMillis::now()],
                )
                .doing(|| format!("revoking signing key `{name}`"))?;
            if n > 0 {
                ctx.audit(&[audit])?;
            }
            Ok(n > 0)
        })
        .await
    }

    async fn recipe(&self, workspace: &str, name: &str) -> StorageResult<Option<StoredRecipe>> {
        let (ws, name) = (workspace.to_string(), name.to_string());
        self.read(move |conn| {
            let row: Option<(String, String, UnixMillis, Option<i64>, Option<String>)> = conn
                .query_row(
                    "SELECT manifest, lock, imported_at, signed_version, signer FROM recipes WHERE workspace = ?1 AND name = ?2",
                    params![ws, name],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                )
                .optional()
                .doing(|| format!("reading recipe `{name}`"))?;
            row.map(|(manifest, lock, updated_at, signed_version, signer)| {
                Ok(StoredRecipe {
                    manifest,
                    components: serde_json::from_str(&lock)
                        .map_err(damaged(format!("the components of recipe `{name}`")))?,
                    updated_at,
                    signed_version: signed_version.and_then(|v| u64::try_from(v).ok()),
                    signer,
                })
            })
            .transpose()
        })
        .await
    }

    async fn recipe_version(
        &self,
        workspace: &str,
        name: &str,
    ) -> StorageResult<Option<UnixMillis>> {
        let (ws, name) = (workspace.to_string(), name.to_string());
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT imported_at FROM recipes WHERE workspace = ?1 AND name = ?2",
                    params![ws, name],
                    |r| r.get(0),
                )
                .optional()
                .doing(|| format!("reading the version of recipe `{name}`"))?)
        })
        .await
    }

    async fn component(&self, sha256: &str) -> StorageResult<Option<Vec<u8>>> {
        let sha = sha256.to_string();
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT bytes FROM components WHERE sha256 = ?1",
                    params![sha],
                    |r| r.get(0),
                )
                .optional()
                .doing(|| format!("reading component {sha}"))?)
        })
        .await
    }

    async fn list_recipes(&self, workspace: &str) -> StorageResult<Vec<RecipeSummary>> {
        let ws = workspace.to_string();
        self.read(move |conn| {
            let doing = || "listing recipes".to_string();
            let rows = query_rows(
                conn,
                "SELECT name, imported_at FROM recipes WHERE workspace = ?1 ORDER BY name",
                params![ws],
                |r| {
                    Ok(RecipeSummary {
                        name: r.get(0)?,
                        updated_at: r.get(1)?,
                    })
                },
                doing,
            )?;
            Ok(rows)
        })
        .await
    }

    async fn delete_recipe(
        &self,
        workspace: &str,
        name: &str,
        audit: Entry,
    ) -> StorageResult<bool> {
        let (ws, name) = (workspace.to_string(), name.to_string());
        self.write(move |ctx| {
            let n = ctx
                .conn
                .execute(
                    "DELETE FROM recipes WHERE workspace = ?1 AND name = ?2",
                    params![ws, name],
                )
                .doing(|| format!("deleting recipe `{name}`"))?;
            ctx.conn
                .execute(
                    "DELETE FROM pending_recipes WHERE workspace = ?1 AND name = ?2",
                    params![ws, name],
                )
                .doing(|| format!("deleting the pending version of recipe `{name}`"))?;
            if n > 0 {
                ctx.conn
                    .execute(
                        "DELETE FROM triggers WHERE workspace = ?1 AND recipe = ?2",
                        params![ws, name],
                    )
                    .doing(|| format!("deleting the triggers of recipe `{name}`"))?;
                ctx.audit(&[audit])?;
            }
            Ok(n > 0)
        })
        .await
    }

    async fn create_trigger(&self, t: TriggerRecord, audit: Entry) -> StorageResult<()> {
        let dk = self.data_key(&t.workspace, true).await?;
        let sealed = match &t.secret {
            Some(secret) => Some(
                keys::seal(&dk, secret, &trigger_aad(&t.workspace, &t.id)).map_err(|e| {
                    StorageError::Damaged {
                        what: "a webhook secret".into(),
                        reason: e.to_string(),
                    }
                })?,
            ),
            None => None,
        };
        let input = match &t.input {
            Some(input) => Some(
                self.seal_json(&t.workspace, &trigger_input_aad(&t.workspace, &t.id), input)
                    .await?,
            ),
            None => None,
        };
        let respond = t
            .respond
            .map(|r| serde_json::to_string(&r))
            .transpose()
            .map_err(|e| {
                StorageError::Internal(format!("writing a webhook's response mode: {e}"))
            })?;
        self.write(move |ctx| {
            let recipe_exists = ctx
                .conn
                .query_row(
                    "SELECT 1 FROM recipes WHERE workspace = ?1 AND name = ?2",
                    params![t.workspace, t.recipe],
                    |_| Ok(()),
                )
                .optional()
                .doing(|| "checking the recipe of a trigger".to_string())?
                .is_some();
            if !recipe_exists {
                return Err(StorageError::NotFound {
                    what: "recipe",
                    name: t.recipe,
                });
            }
            ctx.conn
                .execute(
                    &format!("INSERT INTO triggers ({TRIGGER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"),
                    params![
                        t.id,
                        t.workspace,
                        t.recipe,
                        t.kind.as_str(),
                        t.environment,
                        sealed,
                        t.cron,
                        t.timezone,
                        input,
                        t.last_slot,
                        t.created_at,
                        respond
                    ],
                )
                .doing(|| "storing a trigger".to_string())?;
            ctx.audit(&[audit])
        })
        .await
    }

    async fn trigger(&self, id: &str) -> StorageResult<Option<TriggerRecord>> {
        let id = id.to_string();
        let row = self
            .read(move |conn| {
                Ok(conn
                    .query_row(
                        &format!("SELECT {TRIGGER_COLUMNS} FROM triggers WHERE id = ?1"),
                        params![id],
                        trigger_row,
                    )
                    .optional()
                    .doing(|| "reading a trigger".to_string())?)
            })
            .await?;
        match row {
            Some(row) => Ok(Some(self.finish_trigger(row).await?)),
            None => Ok(None),
        }
    }

    async fn list_triggers(
        &self,
        workspace: &str,
        recipe: &str,
    ) -> StorageResult<Vec<TriggerRecord>> {
        let (ws, recipe) = (workspace.to_string(), recipe.to_string());
        let rows = self
            .read(move |conn| {
                let doing = || "listing triggers".to_string();
                let rows = query_rows(
                    conn,
                    &format!(
                        "SELECT {TRIGGER_COLUMNS}
                     FROM triggers
                     WHERE workspace = ?1
                     AND recipe = ?2
                     ORDER BY created_at, id"
                    ),
                    params![ws, recipe],
                    trigger_row,
                    doing,
                )?;
                Ok(rows)
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let mut t = self.finish_trigger(row).await?;
            t.secret = None;
            out.push(t);
        }
        Ok(out)
    }

    async fn delete_trigger(&self, workspace: &str, id: &str, audit: Entry) -> StorageResult<bool> {
        let (ws, id) = (workspace.to_string(), id.to_string());
        self.write(move |ctx| {
            delete_audited(
                ctx,
                "DELETE FROM triggers WHERE workspace = ?1 AND id = ?2",
                &ws,
                &id,
                audit,
            )
        })
        .await
    }

    async fn schedules(&self) -> StorageResult<Vec<TriggerRecord>> {
        let rows = self
            .read(move |conn| {
                let doing = || "listing schedules".to_string();
                let rows = query_rows(
                    conn,
                    &format!(
                        "SELECT {TRIGGER_COLUMNS} FROM triggers WHERE kind = 'schedule' ORDER BY id"
                    ),
                    [],
                    trigger_row,
                    doing,
                )?;
                Ok(rows)
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            out.push(self.finish_trigger(row).await?);
        }
        Ok(out)
    }

    async fn fire_schedule(
        &self,
        trigger: &str,
        slot: UnixMillis,
        job: NewJob,
    ) -> StorageResult<bool> {
        let sealed = self
            .seal_json(
                &job.workspace,
                &job_aad(&job.workspace, &job.id, "payload"),
                &job.payload,
            )
            .await?;
        let trigger = trigger.to_string();
        self.write(move |ctx| {
            let n = ctx
                .conn
                .execute(
                    "UPDATE triggers SET last_slot = ?2 WHERE id = ?1 AND (last_slot IS NULL OR last_slot < ?2)",
                    params![trigger, slot],
                )
                .doing(|| "recording a schedule slot".to_string())?;
            if n == 0 {
                return Ok(false);
            }
            insert_job(ctx.conn, &job, &sealed)?;
            Ok(true)
        })
        .await
    }

    async fn list_connections(&self, workspace: &str) -> StorageResult<Vec<ConnectionSummary>> {
        let ws = workspace.to_string();
        self.read(move |conn| Ok(read_connections(conn, &ws)?))
            .await
    }

    async fn put_connection(
        &self,
        workspace: &str,
        write: ConnectionWrite,
        audit: Entry,
    ) -> StorageResult<()> {
        check_name("connection", write.name())?;
        let hosts = grant_json(write.hosts())?;
        let placement = write.placement().to_string();
        check_placement(&placement)?;
        if let ConnectionWrite::Create(c) | ConnectionWrite::Replace(c) | ConnectionWrite::Put(c) =
            &write
        {
            check_strength(c)?;
        }
        let dk = self.data_key(workspace, true).await?;
        let ws = workspace.to_string();
        self.write(move |ctx| {
            let name = write.name().to_string();
            let current = SealedConnection::read(ctx.conn, &ws, &name)?;
            let missing = || StorageError::NotFound {
                what: "connection",
                name: name.clone(),
            };
            // The value to seal, and whether it is a new one (rotation).
            let (value, rotated) = match write {
                ConnectionWrite::Create(_) if current.is_some() => {
                    return Err(StorageError::Conflict(format!(
                        "connection `{name}` already exists in workspace `{ws}`"
                    )));
                }
                ConnectionWrite::Replace(_) | ConnectionWrite::Retarget { .. }
                    if current.is_none() =>
                {
                    return Err(missing());
                }
                ConnectionWrite::Create(c)
                | ConnectionWrite::Replace(c)
                | ConnectionWrite::Put(c) => (
                    Zeroizing::new(c.value().expose().to_string()),
                    current.is_some(),
                ),
                ConnectionWrite::Retarget {
                    hosts: grant,
                    placement: new_placement,
                    ..
                } => {
                    let current = current.ok_or_else(missing)?;
                    let value = current.open_value(&dk, &ws)?;
                    // The kept value must pass the checks for its new target.
                    let checked = wrun_runtime::Connection::new(
                        name.as_str(),
                        SecretValue::new(value.as_str()),
                        grant.patterns().iter().map(ToString::to_string),
                        new_placement,
                    )
                    .map_err(|e| StorageError::Invalid {
                        code: "invalid_connection",
                        message: e.to_string(),
                    })?;
                    check_strength(&checked)?;
                    (value, false)
                }
            };
            let sealed = seal_connection(&dk, &ws, &name, &value, &placement, &hosts)?;
            upsert_connection(ctx.conn, &ws, &name, &sealed, &hosts, &placement, rotated)?;
            // A value given by a person makes it a static connection: the
            // host no longer refreshes it (a retarget keeps its kind).
            if rotated {
                ctx.conn
                    .execute(
                        "DELETE FROM oauth_clients WHERE workspace = ?1 AND name = ?2",
                        params![ws, name],
                    )
                    .doing(|| format!("storing connection `{name}`"))?;
            }
            ctx.audit(&[audit])
        })
        .await
    }

    async fn delete_connection(
        &self,
        workspace: &str,
        name: &str,
        audit: Entry,
    ) -> StorageResult<bool> {
        let (ws, name) = (workspace.to_string(), name.to_string());
        self.write(move |ctx| {
            ctx.conn
                .execute(
                    "DELETE FROM connection_limits WHERE workspace = ?1 AND name = ?2",
                    params![ws, name],
                )
                .doing(|| format!("deleting the limits of connection `{name}`"))?;
            ctx.conn
                .execute(
                    "DELETE FROM connection_suspensions WHERE workspace = ?1 AND name = ?2",
                    params![ws, name],
                )
                .doing(|| format!("deleting the suspension of connection `{name}`"))?;
            delete_audited(
                ctx,
                "DELETE FROM connections WHERE workspace = ?1 AND name = ?2",
                &ws,
                &name,
                audit,
            )
        })
        .await
    }

    async fn set_connection_limits(
        &self,
        workspace: &str,
        name: &str,
        limits: ConnectionLimits,
        audit: Entry,
    ) -> StorageResult<()> {
        let (ws, name) = (workspace.to_string(), name.to_string());
        let text = serde_json::to_string(&limits).map_err(damaged("connection limits"))?;
        self.write(move |ctx| {
            let doing = || format!("setting the limits of connection `{name}`");
            let exists = ctx
                .conn
                .query_row(
                    "SELECT 1 FROM connections WHERE workspace = ?1 AND name = ?2",
                    params![ws, name],
                    |_| Ok(()),
                )
                .optional()
                .doing(doing)?
                .is_some();
            if !exists {
                return Err(StorageError::NotFound {
                    what: "connection",
                    name,
                });
            }
            if limits.is_none() {
                ctx.conn
                    .execute(
                        "DELETE FROM connection_limits WHERE workspace = ?1 AND name = ?2",
                        params![ws, name],
                    )
                    .doing(doing)?;
            } else {
                ctx.conn
                    .execute(
                        "INSERT INTO connection_limits (workspace, name, limits) VALUES (?1, ?2, ?3)
                         ON CONFLICT (workspace, name) DO UPDATE SET limits = excluded.limits",
                        params![ws, name, text],
                    )
                    .doing(doing)?;
            }
            ctx.audit(&[audit])
        })
        .await
    }

    async fn record_connection_usage(
        &self,
        workspace: &str,
        rows: Vec<ConnectionUsage>,
    ) -> StorageResult<()> {
        let ws = workspace.to_string();
        self.write_with(Durability::Process, move |ctx| {
            let mut stmt = ctx
                .conn
                .prepare_cached(
                    "INSERT INTO connection_usage (workspace, connection, minute, recipe, step, job, host, requests, bytes_out, bytes_in)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (workspace, connection, minute, job, step, host) DO UPDATE SET
                         requests = requests + excluded.requests, bytes_out = bytes_out + excluded.bytes_out,
                         bytes_in = bytes_in + excluded.bytes_in",
                )
                .doing(|| "recording connection usage".to_string())?;
            for u in &rows {
                stmt.execute(params![
                    ws,
                    u.connection,
                    u.minute,
                    u.recipe,
                    u.step,
                    u.job,
                    u.host,
                    i64::try_from(u.requests).unwrap_or(i64::MAX),
                    i64::try_from(u.bytes_out).unwrap_or(i64::MAX),
                    i64::try_from(u.bytes_in).unwrap_or(i64::MAX)
                ])
                .doing(|| "recording connection usage".to_string())?;
            }
            Ok(())
        })
        .await
    }

    async fn connection_usage(
        &self,
        workspace: &str,
        connection: Option<&str>,
        from: UnixMillis,
        to: UnixMillis,
        limit: usize,
    ) -> StorageResult<Vec<ConnectionUsage>> {
        let (ws, connection) = (workspace.to_string(), connection.map(str::to_string));
        self.read(move |conn| {
            query_rows(
                conn,
                "SELECT connection, minute, recipe, step, job, host, requests, bytes_out, bytes_in FROM connection_usage
                 WHERE workspace = ?1 AND (?2 IS NULL OR connection = ?2) AND minute >= ?3 AND minute < ?4
                 ORDER BY minute, connection, job, step, host LIMIT ?5",
                params![ws, connection, from, to, limit as i64],
                |r| {
                    Ok(ConnectionUsage {
                        connection: r.get(0)?,
                        minute: r.get(1)?,
                        recipe: r.get(2)?,
                        step: r.get(3)?,
                        job: r.get(4)?,
                        host: r.get(5)?,
                        requests: u64::try_from(r.get::<_, i64>(6)?).unwrap_or_default(),
                        bytes_out: u64::try_from(r.get::<_, i64>(7)?).unwrap_or_default(),
                        bytes_in: u64::try_from(r.get::<_, i64>(8)?).unwrap_or_default(),
                    })
                },
                || "reading connection usage".to_string(),
            )
        })
        .await
    }

    async fn usage_baselines(
        &self,
        workspace: &str,
        now: UnixMillis,
    ) -> StorageResult<BTreeMap<String, UsageBaseline>> {
        let ws = workspace.to_string();
        let minute = now.0 - now.0.rem_euclid(60_000);
        let start = minute - 60 * 60_000;
        self.read(move |conn| {
            let doing = || "reading connection baselines".to_string();
            let mut out: BTreeMap<String, UsageBaseline> = BTreeMap::new();
            for (connection, at, requests) in query_rows(
                conn,
                "SELECT connection, minute, SUM(requests) FROM connection_usage
                 WHERE workspace = ?1 AND minute >= ?2 AND minute < ?3 GROUP BY connection, minute",
                params![ws, start, minute],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)),
                doing,
            )? {
                let b = out.entry(connection).or_default();
                if b.per_minute.is_empty() {
                    b.per_minute = vec![0; 60];
                }
                let slot = usize::try_from((at - start) / 60_000).unwrap_or(0).min(59);
                b.per_minute[slot] += u64::try_from(requests).unwrap_or_default();
            }
            for (connection, recipe, step) in query_rows(
                conn,
                "SELECT DISTINCT connection, recipe, step FROM connection_usage WHERE workspace = ?1",
                params![ws],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
                doing,
            )? {
                out.entry(connection).or_default().callers.insert((recipe, step));
            }
            Ok(out)
        })
        .await
    }

    async fn suspend_connection(
        &self,
        workspace: &str,
        name: &str,
        reason: &str,
        audit: Entry,
    ) -> StorageResult<()> {
        let (ws, name, reason) = (workspace.to_string(), name.to_string(), reason.to_string());
        self.write(move |ctx| {
            ctx.conn
                .execute(
                    "INSERT INTO connection_suspensions (workspace, name, reason, suspended_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (workspace, name) DO NOTHING",
                    params![ws, name, reason, UnixMillis::now()],
                )
                .doing(|| format!("suspending connection `{name}`"))?;
            ctx.audit(&[audit])
        })
        .await
    }

    async fn resume_connection(
        &self,
        workspace: &str,
        name: &str,
        audit: Entry,
    ) -> StorageResult<bool> {
        let (ws, name) = (workspace.to_string(), name.to_string());
        self.write(move |ctx| {
            delete_audited(
                ctx,
                "DELETE FROM connection_suspensions WHERE workspace = ?1 AND name = ?2",
                &ws,
                &name,
                audit,
            )
        })
        .await
    }

    async fn suspended_connections(
        &self,
        workspace: &str,
    ) -> StorageResult<BTreeMap<String, String>> {
        let ws = workspace.to_string();
        self.read(move |conn| {
            Ok(query_rows(
                conn,
                "SELECT name, reason FROM connection_suspensions WHERE workspace = ?1",
                params![ws],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                || "reading suspended connections".to_string(),
            )?
            .into_iter()
            .collect())
        })
        .await
    }

    async fn connection_limits(
        &self,
        workspace: &str,
    ) -> StorageResult<BTreeMap<String, ConnectionLimits>> {
        let ws = workspace.to_string();
        self.read(move |conn| {
            let rows = query_rows(
                conn,
                "SELECT name, limits FROM connection_limits WHERE workspace = ?1",
                params![ws],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                || "reading connection limits".to_string(),
            )?;
            rows.into_iter()
                .map(|(name, text)| {
                    let limits = serde_json::from_str(&text)
                        .map_err(damaged(format!("the limits of connection `{name}`")))?;
                    Ok((name, limits))
                })
                .collect()
        })
        .await
    }

    async fn put_oauth_connection(
        &self,
        workspace: &str,
        write: OAuthConnectionWrite,
        audit: Entry,
    ) -> StorageResult<()> {
        check_name("connection", &write.name)?;
        write.config.check().map_err(|e| StorageError::Invalid {
            code: "invalid_oauth",
            message: format!("connection `{}`: {e}", write.name),
        })?;
        let hosts = grant_json(&write.hosts)?;
        let placement = write.placement.to_string();
        check_placement(&placement)?;
        let dk = self.data_key(workspace, true).await?;
        let ws = workspace.to_string();
        self.write(move |ctx| {
            let name = write.name.as_str();
            if !write.replace && SealedConnection::read(ctx.conn, &ws, name)?.is_some() {
                return Err(StorageError::Conflict(format!(
                    "connection `{name}` already exists in workspace `{ws}`"
                )));
            }
            // No token yet: an empty value, sealed to the connection's target.
            let sealed = seal_connection(&dk, &ws, name, "", &placement, &hosts)?;
            upsert_connection(ctx.conn, &ws, name, &sealed, &hosts, &placement, true)?;
            oauth::put_client(
                ctx.conn,
                &dk,
                &ws,
                name,
                &write.config,
                &write.client_secret,
            )?;
            ctx.audit(&[audit])
        })
        .await
    }

    async fn oauth_status(
        &self,
        workspace: &str,
        name: &str,
    ) -> StorageResult<Option<OAuthStatus>> {
        let (ws, name) = (workspace.to_string(), name.to_string());
        self.read(move |conn| oauth::read_status(conn, &ws, &name))
            .await
    }

    async fn oauth_client_secret(&self, workspace: &str, name: &str) -> StorageResult<SecretValue> {
        let dk = self.data_key(workspace, false).await?;
        let (ws, name) = (workspace.to_string(), name.to_string());
        self.read(move |conn| oauth::read_client_secret(conn, &dk, &ws, &name))
            .await
    }

    async fn oauth_lease(&self, workspace: &str, name: &str, holder: &str) -> StorageResult<Lease> {
        let dk = self.data_key(workspace, false).await?;
        let (ws, name, holder) = (workspace.to_string(), name.to_string(), holder.to_string());
        self.write(move |ctx| {
            oauth::take_lease(ctx.conn, &dk, &ws, &name, &holder, UnixMillis::now())
        })
        .await
    }

    async fn oauth_store_tokens(
        &self,
        workspace: &str,
        name: &str,
        holder: Option<&str>,
        tokens: wrun_runtime::oauth::IssuedTokens,
        audit: Entry,
    ) -> StorageResult<()> {
        let dk = self.data_key(workspace, false).await?;
        let (ws, name, holder) = (
            workspace.to_string(),
            name.to_string(),
            holder.map(str::to_string),
        );
        self.write(move |ctx| {
            oauth::store_tokens(
                ctx.conn,
                &dk,
                &ws,
                &name,
                holder.as_deref(),
                &tokens,
                UnixMillis::now(),
            )?;
            ctx.audit(&[audit])
        })
        .await
    }

    async fn oauth_end_lease(
        &self,
        workspace: &str,
        name: &str,
        holder: &str,
        end: LeaseEnd,
        audit: Option<Entry>,
    ) -> StorageResult<()> {
        let (ws, name, holder) = (workspace.to_string(), name.to_string(), holder.to_string());
        self.write(move |ctx| {
            // Only the holder's end counts, and is audited.
            if oauth::end_lease_in(ctx.conn, &ws, &name, &holder, &end)?
                && let Some(audit) = audit
            {
                ctx.audit(&[audit])?;
            }
            Ok(())
        })
        .await
    }

    async fn oauth_begin_authorization(
        &self,
        workspace: &str,
        name: &str,
        start: &wrun_runtime::oauth::AuthorizationStart,
        redirect_uri: &str,
        audit: Entry,
    ) -> StorageResult<()> {
        let dk = self.data_key(workspace, false).await?;
        let (ws, name, redirect) = (
            workspace.to_string(),
            name.to_string(),
            redirect_uri.to_string(),
        );
        let (state, verifier) = (start.state.clone(), start.verifier.clone());
        self.write(move |ctx| {
            if oauth::read_row(ctx.conn, &ws, &name)?.is_none() {
                return Err(StorageError::NotFound {
                    what: "OAuth2 connection",
                    name: name.clone(),
                });
            }
            oauth::begin_authorization(
                ctx.conn,
                &dk,
                &ws,
                &name,
                &state,
                &verifier,
                &redirect,
                &audit.actor,
                UnixMillis::now(),
            )?;
            ctx.audit(&[audit])
        })
        .await
    }

    async fn oauth_take_authorization(
        &self,
        state: &str,
    ) -> StorageResult<Option<PendingAuthorization>> {
        let owned = state.to_string();
        let taken = self
            .write(move |ctx| oauth::take_authorization(ctx.conn, &owned, UnixMillis::now()))
            .await?;
        let Some(oauth::TakenAuthorization {
            workspace,
            name,
            verifier: sealed,
            redirect_uri,
            actor,
        }) = taken
        else {
            return Ok(None);
        };
        let dk = self.data_key(&workspace, false).await?;
        let verifier = oauth::open_verifier(&dk, &workspace, &name, state, &sealed)?;
        Ok(Some(PendingAuthorization {
            workspace,
            name,
            verifier,
            redirect_uri,
            actor,
        }))
    }

    async fn oauth_due(&self, before: UnixMillis) -> StorageResult<Vec<(String, String)>> {
        self.read(move |conn| {
            query_rows(
                conn,
                "SELECT workspace, name FROM oauth_clients
                 WHERE state = 'ready' AND refresh_token IS NOT NULL AND expires_at < ?1
                 ORDER BY expires_at",
                params![before.0],
                |r| Ok((r.get(0)?, r.get(1)?)),
                || "listing OAuth2 connections to refresh".to_string(),
            )
        })
        .await
    }

    fn enable_oauth(&self, refresher: Arc<Refresher>) {
        // The first refresher stays: connection sources already hold it.
        let _ = self.oauth.set(refresher);
    }

    fn oauth_refresher(&self) -> Option<Arc<Refresher>> {
        self.oauth.get().cloned()
    }

    async fn environment(
        &self,
        workspace: &str,
        environment: &str,
    ) -> StorageResult<EnvironmentView> {
        let (ws, env) = (workspace.to_string(), environment.to_string());
        self.read(move |conn| Ok(read_environment(conn, &ws, &env)?))
            .await
    }

    async fn change_environment(
        &self,
        workspace: &str,
        environment: &str,
        change: EnvChange,
        audit: Entry,
    ) -> StorageResult<()> {
        check_name("environment", environment)?;
        let (ws, env) = (workspace.to_string(), environment.to_string());
        self.write(move |ctx| {
            let doing = || format!("changing environment `{env}`");
            let n = match &change {
                EnvChange::SetProperty(name, value) => {
                    check_name("property", name)?;
                    ctx.conn
                        .execute(
                            "INSERT INTO properties (workspace, environment, name, value) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (workspace, environment, name) DO UPDATE SET value = excluded.value",
                            params![ws, env, name, value],
                        )
                        .doing(doing)?
                }
                EnvChange::RemoveProperty(name) => ctx
                    .conn
                    .execute(
                        "DELETE FROM properties WHERE workspace = ?1 AND environment = ?2 AND name = ?3",
                        params![ws, env, name],
                    )
                    .doing(doing)?,
                EnvChange::Bind(logical, connection) => {
                    check_name("logical connection", logical)?;
                    check_name("connection", connection)?;
                    ctx.conn
                        .execute(
                            "INSERT INTO bindings (workspace, environment, logical, connection) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (workspace, environment, logical) DO UPDATE SET connection = excluded.connection",
                            params![ws, env, logical, connection],
                        )
                        .doing(doing)?
                }
                EnvChange::Unbind(logical) => ctx
                    .conn
                    .execute(
                        "DELETE FROM bindings WHERE workspace = ?1 AND environment = ?2 AND logical = ?3",
                        params![ws, env, logical],
                    )
                    .doing(doing)?,
            };
            if n == 0 {
                let (what, name) = match change {
                    EnvChange::RemoveProperty(n) => ("property", n),
                    EnvChange::Unbind(n) => ("binding", n),
                    EnvChange::SetProperty(n, _) | EnvChange::Bind(n, _) => ("entry", n),
                };
                return Err(StorageError::NotFound { what, name });
            }
            ctx.audit(&[audit])
        })
        .await
    }

    async fn enqueue(&self, job: NewJob, audit: Option<Entry>) -> StorageResult<Enqueued> {
        let sealed = self
            .seal_json(
                &job.workspace,
                &job_aad(&job.workspace, &job.id, "payload"),
                &job.payload,
            )
            .await?;
        self.write(move |ctx| {
            let result = insert_job(ctx.conn, &job, &sealed)?;
            if let Some(entry) = audit {
                ctx.audit(&[entry])?;
            }
            Ok(result)
        })
        .await
    }

    async fn heartbeat(&self, node: &str, lease_ms: i64) -> StorageResult<()> {
        let node = node.to_string();
        self.write_with(Durability::Process, move |ctx| {
            crate::claims::heartbeat(ctx.conn, &node, UnixMillis::now(), lease_ms)
        })
        .await
    }

    async fn release_claims(&self, node: &str) -> StorageResult<usize> {
        let node = node.to_string();
        self.write(move |ctx| crate::claims::release(ctx.conn, &node))
            .await
    }

    async fn claim_jobs(
        &self,
        node: &str,
        request: crate::claims::ClaimRequest,
    ) -> StorageResult<Vec<crate::claims::Claim>> {
        let node = node.to_string();
        self.write_with(Durability::Process, move |ctx| {
            crate::claims::claim(ctx.conn, &node, UnixMillis::now(), &request)
        })
        .await
    }

    async fn backlog(&self) -> StorageResult<u64> {
        self.read(crate::claims::backlog).await
    }

    async fn ping(&self) -> StorageResult<()> {
        self.read(|conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))
                .doing(|| "checking the database".to_string())?;
            Ok(())
        })
        .await
    }

    async fn start_job(
        &self,
        node: &str,
        claim: &crate::claims::Claim,
    ) -> StorageResult<Option<StartedJob>> {
        let id_owned = claim.id.clone();
        let (node, epoch) = (node.to_string(), claim.epoch);
        let started = self
            .write_with(Durability::Process, move |ctx| {
                let doing = || format!("starting job {id_owned}");
                crate::claims::fence(ctx.conn, &id_owned, &node, epoch)?;
                let row = ctx
                    .conn
                    .query_row(
                        &format!("SELECT {JOB_COLUMNS}, payload FROM jobs WHERE id = ?1"),
                        params![id_owned],
                        |r| Ok((job_row(r)?, r.get::<_, Vec<u8>>(12)?)),
                    )
                    .optional()
                    .doing(doing)?;
                let Some((row, payload)) = row else {
                    return Ok(None);
                };
                let (mut summary, _) = finish_job_row(row)?;
                if summary.state.is_final() {
                    return Ok(None);
                }
                let at = UnixMillis::now();
                ctx.conn
                    .execute(
                        "UPDATE jobs SET state = 'running', started_at = coalesce(started_at, ?2) WHERE id = ?1",
                        params![id_owned, at],
                    )
                    .doing(doing)?;
                summary.state = JobState::Running;
                summary.started_at.get_or_insert(at);
                let mut stmt = ctx
                    .conn
                    .prepare("SELECT idx, step, checkpoint FROM job_steps WHERE job = ?1 ORDER BY idx")
                    .doing(doing)?;
                let steps = stmt
                    .query_map(params![id_owned], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<Vec<u8>>>(2)?))
                    })
                    .doing(doing)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .doing(doing)?;
                Ok(Some((summary, payload, steps)))
            })
            .await?;
        let Some((summary, payload, steps)) = started else {
            return Ok(None);
        };
        let dk = self.data_key(&summary.workspace, false).await?;
        let payload = crate::sealed::open_json(
            &dk,
            &payload,
            &job_aad(&summary.workspace, &summary.id, "payload"),
            &format!("the payload of job {}", summary.id),
        )?;
        let resume = crate::sealed::resume(&dk, &summary.workspace, &summary.id, steps)?;
        Ok(Some(StartedJob {
            summary,
            payload,
            resume,
        }))
    }

    async fn commit_step(&self, step: StepCommit) -> StorageResult<bool> {
        let history = self
            .seal_json(
                &step.workspace,
                &job_aad(
                    &step.workspace,
                    &step.job,
                    &format!("history:{}", step.index),
                ),
                &step.history,
            )
            .await?;
        let checkpoint = match &step.checkpoint {
            Some((output, marked)) => Some(
                self.seal_json(
                    &step.workspace,
                    &job_aad(
                        &step.workspace,
                        &step.job,
                        &format!("checkpoint:{}", step.index),
                    ),
                    &serde_json::json!({ "output": output, "marked": marked }),
                )
                .await?,
            ),
            None => None,
        };
        self.write_with(Durability::Process, move |ctx| {
            let (node, epoch) = &step.claim;
            let state = crate::claims::fence(ctx.conn, &step.job, node, *epoch)?;
            ctx.conn
                .execute(
                    "INSERT INTO job_steps (job, idx, step, status, history, checkpoint) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (job, idx) DO UPDATE SET status = excluded.status, history = excluded.history, checkpoint = excluded.checkpoint",
                    params![step.job, step.index as i64, step.step, step.status, history, checkpoint],
                )
                .doing(|| format!("committing step {} of job {}", step.index, step.job))?;
            Ok(state != JobState::Cancelled.as_str())
        })
        .await
    }

    async fn finish_job(
        &self,
        (node, epoch): (&str, i64),
        workspace: &str,
        id: &str,
        state: JobState,
        error: Option<String>,
        audit: Vec<Entry>,
    ) -> StorageResult<JobState> {
        let error = match error {
            Some(e) => Some(
                self.seal_json(
                    workspace,
                    &job_aad(workspace, id, "error"),
                    &Value::String(e),
                )
                .await?,
            ),
            None => None,
        };
        let id = id.to_string();
        let node = node.to_string();
        self.write(move |ctx| {
            let doing = || format!("finishing job {id}");
            let current = crate::claims::fence(ctx.conn, &id, &node, epoch)?;
            let end = match JobState::parse(&current) {
                Some(JobState::Cancelled) => JobState::Cancelled,
                _ => state,
            };
            ctx.conn
                .execute(
                    "UPDATE jobs SET state = ?2, finished_at = ?3, error = ?4 WHERE id = ?1",
                    params![id, end.as_str(), UnixMillis::now(), error],
                )
                .doing(doing)?;
            ctx.conn
                .execute(
                    "UPDATE job_steps SET checkpoint = NULL WHERE job = ?1 AND checkpoint IS NOT NULL",
                    params![id],
                )
                .doing(doing)?;
            ctx.audit(&audit)?;
            Ok(end)
        })
        .await
    }

    async fn job(&self, workspace: &str, id: &str) -> StorageResult<Option<JobDetail>> {
        let (ws, id) = (workspace.to_string(), id.to_string());
        let row = self
            .read(move |conn| {
                let doing = || format!("reading job {id}");
                let row = conn
                    .query_row(
                        &format!("SELECT {JOB_COLUMNS}, payload FROM jobs WHERE workspace = ?1 AND id = ?2"),
                        params![ws, id],
                        |r| Ok((job_row(r)?, r.get::<_, Vec<u8>>(12)?)),
                    )
                    .optional()
                    .doing(doing)?;
                let Some((row, payload)) = row else {
                    return Ok(None);
                };
                let mut stmt = conn
                    .prepare("SELECT idx, history FROM job_steps WHERE job = ?1 ORDER BY idx")
                    .doing(doing)?;
                let steps = stmt
                    .query_map(params![id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
                    .doing(doing)?
                    .collect::<rusqlite::Result<Vec<_>>>()
                    .doing(doing)?;
                Ok(Some((finish_job_row(row)?, payload, steps)))
            })
            .await?;
        let Some(((mut summary, error), payload, steps)) = row else {
            return Ok(None);
        };
        let dk = self.data_key(&summary.workspace, false).await?;
        open_error(&dk, &mut summary, error)?;
        let input = crate::sealed::open_json(
            &dk,
            &payload,
            &job_aad(&summary.workspace, &summary.id, "payload"),
            &format!("the payload of job {}", summary.id),
        )?;
        let steps = steps
            .into_iter()
            .map(|(idx, sealed)| {
                crate::sealed::open_json(
                    &dk,
                    &sealed,
                    &job_aad(&summary.workspace, &summary.id, &format!("history:{idx}")),
                    &format!("the history of job {} step {idx}", summary.id),
                )
            })
            .collect::<StorageResult<Vec<_>>>()?;
        Ok(Some(JobDetail {
            summary,
            input,
            steps,
        }))
    }

    async fn list_jobs(
        &self,
        workspace: &str,
        filter: JobFilter,
    ) -> StorageResult<Vec<JobSummary>> {
        let ws = workspace.to_string();
        let rows = self
            .read(move |conn| {
                let doing = || "listing jobs".to_string();
                let limit = filter.limit.unwrap_or(50).clamp(1, 500) as i64;
                // Only the filters given become conditions, so a time range
                // is an index range on (workspace, created_at), not a scan.
                let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE workspace = ?1");
                if filter.recipe.is_some() {
                    sql.push_str(" AND recipe = ?2");
                }
                if filter.state.is_some() {
                    sql.push_str(" AND state = ?3");
                }
                if filter.before.is_some() {
                    sql.push_str(
                        " AND (created_at, id) < (SELECT created_at, id FROM jobs
                           WHERE workspace = ?1 AND id = ?4)",
                    );
                }
                if filter.since.is_some() {
                    sql.push_str(" AND created_at >= ?6");
                }
                if filter.until.is_some() {
                    sql.push_str(" AND created_at < ?7");
                }
                sql.push_str(" ORDER BY created_at DESC, id DESC LIMIT ?5");
                let mut stmt = conn.prepare_cached(&sql).doing(doing)?;
                let values: [(&str, &dyn rusqlite::ToSql); 7] = [
                    ("?1", &ws),
                    ("?2", &filter.recipe),
                    ("?3", &filter.state.map(JobState::as_str)),
                    ("?4", &filter.before),
                    ("?5", &limit),
                    ("?6", &filter.since),
                    ("?7", &filter.until),
                ];
                // Bind only the parameters the statement names.
                for (name, value) in values {
                    if let Some(index) = stmt.parameter_index(name).doing(doing)? {
                        stmt.raw_bind_parameter(index, value).doing(doing)?;
                    }
                }
                let mut rows = Vec::new();
                let mut raw = stmt.raw_query();
                while let Some(row) = raw.next().doing(doing)? {
                    rows.push(job_row(row).doing(doing)?);
                }
                rows.into_iter()
                    .map(finish_job_row)
                    .collect::<StorageResult<Vec<_>>>()
            })
            .await?;
        if rows.iter().all(|(_, e)| e.is_none()) {
            return Ok(rows.into_iter().map(|(s, _)| s).collect());
        }
        let dk = self.data_key(workspace, false).await?;
        rows.into_iter()
            .map(|(mut s, error)| {
                open_error(&dk, &mut s, error)?;
                Ok(s)
            })
            .collect()
    }

    async fn job_stats(
        &self,
        workspace: &str,
        since: UnixMillis,
        bucket_ms: i64,
    ) -> StorageResult<Vec<JobBucket>> {
        let ws = workspace.to_string();
        let bucket = bucket_ms.max(60_000);
        self.read(move |conn| {
            query_rows(
                conn,
                "SELECT (created_at - ?2) / ?3, COUNT(*), SUM(state = 'failed') FROM jobs
                 WHERE workspace = ?1 AND created_at >= ?2 GROUP BY 1 ORDER BY 1",
                params![ws, since, bucket],
                |r| {
                    Ok(JobBucket {
                        start: UnixMillis(
                            since
                                .0
                                .saturating_add(r.get::<_, i64>(0)?.saturating_mul(bucket)),
                        ),
                        total: r.get::<_, i64>(1)?.unsigned_abs(),
                        failed: r.get::<_, Option<i64>>(2)?.unwrap_or(0).unsigned_abs(),
                    })
                },
                || "counting jobs over time".to_string(),
            )
        })
        .await
    }

    async fn cancel_job(
        &self,
        workspace: &str,
        id: &str,
        audit: Entry,
    ) -> StorageResult<Option<JobState>> {
        let (ws, id) = (workspace.to_string(), id.to_string());
        self.write(move |ctx| {
            let doing = || format!("cancelling job {id}");
            let current: Option<String> = ctx
                .conn
                .query_row(
                    "SELECT state FROM jobs WHERE workspace = ?1 AND id = ?2",
                    params![ws, id],
                    |r| r.get(0),
                )
                .optional()
                .doing(doing)?;
            let Some(current) = current.as_deref().and_then(JobState::parse) else {
                return Ok(None);
            };
            if current.is_final() {
                return Ok(Some(current));
            }
            ctx.conn
                .execute(
                    "UPDATE jobs SET state = 'cancelled', finished_at = ?2 WHERE id = ?1",
                    params![id, UnixMillis::now()],
                )
                .doing(doing)?;
            ctx.audit(&[audit])?;
            Ok(Some(JobState::Cancelled))
        })
        .await
    }

    async fn delete_jobs(
        &self,
        workspace: &str,
        criteria: DeleteCriteria,
        audit: Entry,
    ) -> StorageResult<u64> {
        let ws = workspace.to_string();
        let c = criteria.clone();
        let candidates = self
            .read(move |conn| {
                let doing = || "finding jobs to delete".to_string();
                let rows = query_rows(
                    conn,
                    "SELECT id, CASE WHEN ?5 THEN payload ELSE x'' END
                     FROM jobs
                     WHERE workspace = ?1
                     AND (?2 IS NULL OR recipe = ?2)
                     AND (?3 IS NULL OR created_at >= ?3)
                     AND (?4 IS NULL OR created_at < ?4)
                     AND state IN ('succeeded', 'failed', 'cancelled')",
                    params![ws, c.recipe, c.from, c.to, c.field.is_some()],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?)),
                    doing,
                )?;
                Ok(rows)
            })
            .await?;
        let mut ids = Vec::new();
        if let Some(field) = &criteria.field {
            let dk = self.data_key(workspace, false).await?;
            for (id, sealed) in candidates {
                let payload = crate::sealed::open_json(
                    &dk,
                    &sealed,
                    &job_aad(workspace, &id, "payload"),
                    &format!("the payload of job {id}"),
                )?;
                if payload.pointer(field) == criteria.value.as_ref() {
                    ids.push(id);
                }
            }
        } else {
            ids = candidates.into_iter().map(|(id, _)| id).collect();
        }
        self.write(move |ctx| {
            let n = delete_job_ids(ctx.conn, &ids)?;
            let mut audit = audit;
            if let Some(obj) = audit.detail.as_object_mut() {
                obj.insert("deleted".into(), n.into());
            }
            ctx.audit(&[audit])?;
            Ok(n)
        })
        .await
    }

    async fn erase_subject(
        &self,
        workspace: &str,
        subject: &Subject,
        dry_run: bool,
        audit: Entry,
    ) -> StorageResult<EraseReport> {
        let mut report = EraseReport::default();
        let mut found: Vec<ErasedJob> = Vec::new();
        let mut after = (i64::MIN, String::new());
        let mut dk = None;
        loop {
            let page = self.erase_page(workspace, &after).await?;
            let Some(last) = page.last() else { break };
            after = (last.created_at, last.id.clone());
            let dk = match &dk {
                Some(k) => Arc::clone(k),
                None => dk.insert(self.data_key(workspace, false).await?).clone(),
            };
            for job in page {
                report.scanned += 1;
                if !job.mentions(&dk, workspace, subject)? {
                    continue;
                }
                report.matched += 1;
                match JobState::parse(&job.state) {
                    Some(state) if state.is_final() => {
                        found.push(job.erased(&dk, workspace, subject)?)
                    }
                    _ => report.active += 1,
                }
            }
        }
        if dry_run || found.is_empty() {
            self.audit(vec![erase_audit(audit, dry_run, &report)])
                .await?;
            return Ok(report);
        }
        let ws = workspace.to_string();
        let mut counted = report;
        let erased = self
            .write(move |ctx| {
                let now = UnixMillis::now();
                let mut erased = 0u64;
                for job in &found {
                    let doing = || format!("erasing the content of job {}", job.id);
                    let n = ctx
                        .conn
                        .execute(
                            "UPDATE jobs SET payload = ?3, error = NULL, erased_at = ?4,
                                 idempotency_key = CASE WHEN ?5 THEN NULL ELSE idempotency_key END
                             WHERE workspace = ?1 AND id = ?2 AND erased_at IS NULL
                               AND state IN ('succeeded', 'failed', 'cancelled')",
                            params![ws, job.id, job.payload, now, job.clear_key],
                        )
                        .doing(doing)?;
                    if n == 0 {
                        // Deleted (or erased) since the scan.
                        continue;
                    }
                    erased += 1;
                    for (idx, history) in &job.steps {
                        ctx.conn
                            .execute(
                                "UPDATE job_steps SET history = ?3, checkpoint = NULL WHERE job = ?1 AND idx = ?2",
                                params![job.id, idx, history],
                            )
                            .doing(doing)?;
                    }
                }
                counted.erased = erased;
                ctx.audit(&[erase_audit(audit, false, &counted)])?;
                Ok(erased)
            })
            .await?;
        report.erased = erased;
        report.log_cleared = self.clear_log().await;
        Ok(report)
    }

    async fn create_session(
        &self,
        session: crate::sessions::ConsoleSession,
        audit: Entry,
    ) -> StorageResult<()> {
        self.write(move |ctx| {
            crate::sessions::insert(ctx.conn, &session)?;
            ctx.audit(&[audit])
        })
        .await
    }

    async fn session(
        &self,
        id_hash: &str,
    ) -> StorageResult<Option<(crate::sessions::ConsoleSession, u32)>> {
        let id_hash = id_hash.to_string();
        self.read(move |conn| {
            let Some(session) = crate::sessions::get(conn, &id_hash)? else {
                return Ok(None);
            };
            let idle = crate::sessions::idle_secs(conn, &session.workspace)?;
            Ok(Some((session, idle)))
        })
        .await
    }

    async fn touch_session(&self, id_hash: &str, at: UnixMillis) -> StorageResult<()> {
        let id_hash = id_hash.to_string();
        self.note_use(move |conn| {
            conn.execute(
                "UPDATE console_sessions SET last_seen = MAX(last_seen, ?2) WHERE id_hash = ?1",
                params![id_hash, at],
            )
            .doing(|| "recording a console session's use".to_string())
        });
        Ok(())
    }

    async fn end_session(&self, id_hash: &str, audit: Option<Entry>) -> StorageResult<bool> {
        let id_hash = id_hash.to_string();
        self.write(move |ctx| {
            let n = ctx
                .conn
                .execute(
                    "DELETE FROM console_sessions WHERE id_hash = ?1",
                    params![id_hash],
                )
                .doing(|| "ending a console session".to_string())?;
            if n > 0
                && let Some(audit) = audit
            {
                ctx.audit(&[audit])?;
            }
            Ok(n > 0)
        })
        .await
    }

    async fn sweep_sessions(&self, now: UnixMillis) -> StorageResult<usize> {
        self.write(move |ctx| crate::sessions::sweep(ctx.conn, now))
            .await
    }

    async fn session_idle_secs(&self, workspace: &str) -> StorageResult<u32> {
        let ws = workspace.to_string();
        self.read(move |conn| crate::sessions::idle_secs(conn, &ws))
            .await
    }

    async fn set_session_idle_secs(
        &self,
        workspace: &str,
        secs: Option<u32>,
        audit: Entry,
    ) -> StorageResult<()> {
        use crate::sessions::{MAX_IDLE_SECS, MIN_IDLE_SECS};
        if let Some(secs) = secs
            && !(MIN_IDLE_SECS..=MAX_IDLE_SECS).contains(&secs)
        {
            return Err(StorageError::Invalid {
                code: "invalid_session_idle",
                message: format!(
                    "the session idle timeout must be {MIN_IDLE_SECS} to {MAX_IDLE_SECS} seconds, not {secs}"
                ),
            });
        }
        let ws = workspace.to_string();
        self.write(move |ctx| {
            crate::sessions::set_idle_secs(ctx.conn, &ws, secs)?;
            ctx.audit(&[audit])
        })
        .await
    }

    async fn set_retention(
        &self,
        workspace: &str,
        days: Option<u32>,
        audit: Entry,
    ) -> StorageResult<()> {
        let ws = workspace.to_string();
        self.write(move |ctx| {
            ctx.conn
                .execute(
                    "INSERT INTO settings (workspace, retention_days) VALUES (?1, ?2)
                     ON CONFLICT (workspace) DO UPDATE SET retention_days = excluded.retention_days",
                    params![ws, days],
                )
                .doing(|| "setting the retention".to_string())?;
            ctx.audit(&[audit])
        })
        .await
    }

    async fn retention(&self, workspace: &str) -> StorageResult<Option<u32>> {
        let ws = workspace.to_string();
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT retention_days FROM settings WHERE workspace = ?1",
                    params![ws],
                    |r| r.get::<_, Option<u32>>(0),
                )
                .optional()
                .doing(|| "reading the retention".to_string())?
                .flatten())
        })
        .await
    }

    async fn verify_audit(&self) -> StorageResult<audit::VerifyReport> {
        // On the writer's connection, where the chain's key is: no entry
        // is appended while the chain is read.
        self.write(move |ctx| {
            audit::verify(ctx.conn, ctx.audit_key)
                .map_err(|e| StorageError::Internal(e.to_string()))
        })
        .await
    }

    async fn sweep_retention(&self, now: UnixMillis) -> StorageResult<u64> {
        self.write(move |ctx| {
            let doing = || "deleting expired job history".to_string();
            let mut stmt = ctx
                .conn
                .prepare(
                    "SELECT j.id, j.workspace FROM jobs j JOIN settings s ON s.workspace = j.workspace
                     WHERE s.retention_days IS NOT NULL
                       AND j.state IN ('succeeded', 'failed', 'cancelled')
                       AND j.created_at < ?1 - s.retention_days * 86400000",
                )
                .doing(doing)?;
            let rows = stmt
                .query_map(params![now], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .doing(doing)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .doing(doing)?;
            // The egress trail is kept as long as job history.
            ctx.conn
                .execute(
                    "DELETE FROM connection_usage WHERE EXISTS (
                         SELECT 1 FROM settings s WHERE s.workspace = connection_usage.workspace
                         AND s.retention_days IS NOT NULL
                         AND connection_usage.minute < ?1 - s.retention_days * 86400000)",
                    params![now],
                )
                .doing(doing)?;
            let mut per_ws: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (id, ws) in rows {
                per_ws.entry(ws).or_default().push(id);
            }
            let mut total = 0;
            for (ws, ids) in per_ws {
                let n = delete_job_ids(ctx.conn, &ids)?;
                total += n;
                ctx.audit(&[Entry {
                    workspace: Some(ws),
                    actor: "daemon".into(),
                    action: "jobs.retention".into(),
                    target: "jobs".into(),
                    source: None,
                    outcome: audit::Outcome::Success,
                    detail: serde_json::json!({ "deleted": n }),
                }])?;
            }
            Ok(total)
        })
        .await
    }

    async fn audit(&self, entries: Vec<Entry>) -> StorageResult<()> {
        self.write(move |ctx| ctx.audit(&entries)).await
    }

    async fn read_audit(
        &self,
        workspace: &str,
        after: u64,
        limit: usize,
    ) -> StorageResult<Vec<Stored>> {
        let ws = workspace.to_string();
        self.read(move |conn| Ok(audit::read(conn, after, limit, Some(&ws))?))
            .await
    }
}

#[cfg(test)]
mod claim_tests;
#[cfg(test)]
mod erase_tests;
#[cfg(test)]
mod session_tests;

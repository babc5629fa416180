//! The PostgreSQL backend of the store, for several `wrun serve` nodes on
//! one database (`[store] url = "postgres://..."`).
//!
//! This part holds the connection pool (tokio-postgres under
//! deadpool-postgres, TLS through rustls), the schema and its migration,
//! the job claims that let several nodes share one queue
//! ([`PgStore::claim_jobs`] with `FOR UPDATE SKIP LOCKED`, fenced writes)
//! the audit log as one chain per workspace ([`audit`]), keys, a job's
//! life, schedules fired once per slot, and wake-ups between nodes
//! (`LISTEN`/`NOTIFY`, [`PgStore::listen`]).
//! The rest of the [`crate::storage::Storage`] operations follow on the
//! same pool; until they do, the daemon runs on the SQLite backend only.
//!
//! # Where the tables are
//!
//! In a schema of their own, `wrun` (every connection of the pool sets its
//! `search_path` to it), so the database may be shared with other
//! applications. The schema is created, or brought to
//! [`PG_SCHEMA_VERSION`], by the first node that connects, under a
//! transaction-scoped advisory lock: nodes starting together migrate once.
//!
//! # TLS
//!
//! The URL's `sslmode` decides (`disable`, `prefer`, the default, or
//! `require`). The server's certificate is checked by rustls against the
//! CA certificates given ([`PgOptions::ca_pem`]) and the host name of the
//! URL; with none given, only an unencrypted connection can succeed, so
//! `sslmode=require` without a CA fails rather than trusting anyone.

pub mod audit;
pub mod claims;
mod jobs;
mod keys;
mod schema;
mod wake;

use std::str::FromStr as _;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

pub use schema::PG_SCHEMA_VERSION;

use crate::storage::{StorageError, StorageResult};

/// The schema the tables live in.
const SCHEMA_NAME: &str = "wrun";

/// The advisory lock key taken while migrating: "wrun" in ASCII, as the
/// SQLite backend's `application_id`.
const MIGRATION_LOCK: i64 = 0x7772_756e;

/// How the store connects.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Connections in the pool at most.
    pub max_connections: usize,
    /// CA certificates (PEM) the server's certificate must chain to.
    pub ca_pem: Option<String>,
}

impl Default for PgOptions {
    fn default() -> PgOptions {
        PgOptions {
            max_connections: 16,
            ca_pem: None,
        }
    }
}

/// The PostgreSQL store: a pool of connections to one database.
#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
    /// How to open a connection of its own (the listener's), outside the
    /// pool.
    direct: Arc<(
        tokio_postgres::Config,
        tokio_postgres_rustls::MakeRustlsConnect,
    )>,
    /// Set while a wake-up is being sent, so a burst sends one.
    notifying: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for PgStore {
    /// Leaves the URL out: it may hold a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

/// Wraps a PostgreSQL error with what was being done. The message is the
/// server's (or the driver's); it never holds a bound parameter.
pub(crate) fn pg_error(
    doing: impl std::fmt::Display,
) -> impl FnOnce(tokio_postgres::Error) -> StorageError {
    move |e| {
        let detail = e
            .as_db_error()
            .map_or_else(|| e.to_string(), |db| db.message().to_string());
        StorageError::Backend(format!("{doing}: {detail}"))
    }
}

impl PgStore {
    /// Connects to the database at `url`, creating the schema or bringing
    /// it to [`PG_SCHEMA_VERSION`].
    ///
    /// # Errors
    ///
    /// [`StorageError::Invalid`] if `url` is not a PostgreSQL URL or the
    /// CA certificates do not parse; [`StorageError::Backend`] if the
    /// database cannot be reached, or holds a newer schema than this
    /// version of wrun knows, or a `wrun` schema that is not wrun's.
    pub async fn connect(url: &str, options: PgOptions) -> StorageResult<PgStore> {
        let mut config =
            tokio_postgres::Config::from_str(url).map_err(|e| StorageError::Invalid {
                code: "invalid_store_url",
                message: format!("[store] url is not a PostgreSQL URL: {e}"),
            })?;
        config.options(format!("-c search_path={SCHEMA_NAME}"));
        if config.get_application_name().is_none() {
            config.application_name("wrun");
        }
        config.connect_timeout(std::time::Duration::from_secs(10));
        let tls = tls_connector(options.ca_pem.as_deref())?;
        let direct = Arc::new((config.clone(), tls.clone()));
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.max_connections.max(2))
            .build()
            .map_err(|e| StorageError::Internal(format!("the PostgreSQL pool: {e}")))?;
        let store = PgStore {
            pool,
            direct,
            notifying: Arc::default(),
        };
        store.migrate().await?;
        Ok(store)
    }

    /// A connection from the pool.
    pub(crate) async fn client(&self) -> StorageResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| {
            let detail = match &e {
                deadpool_postgres::PoolError::Backend(e) => e
                    .as_db_error()
                    .map_or_else(|| e.to_string(), |db| db.message().to_string()),
                other => other.to_string(),
            };
            StorageError::Backend(format!("connecting to PostgreSQL: {detail}"))
        })
    }

    /// Checks the database answers (for `/readyz`).
    ///
    /// # Errors
    ///
    /// It does not.
    pub async fn ready(&self) -> StorageResult<()> {
        let client = self.client().await?;
        client
            .execute("SELECT 1", &[])
            .await
            .map_err(pg_error("checking the database"))?;
        Ok(())
    }

    /// The schema version of the database.
    ///
    /// # Errors
    ///
    /// The database cannot be read.
    pub async fn schema_version(&self) -> StorageResult<i64> {
        let client = self.client().await?;
        let row = client
            .query_one("SELECT value FROM meta WHERE key = 'schema'", &[])
            .await
            .map_err(pg_error("reading the schema version"))?;
        let value: String = row.get(0);
        value.parse().map_err(|_| StorageError::Damaged {
            what: "the schema version".into(),
            reason: "not a number".into(),
        })
    }

    /// Creates the schema, or checks and migrates it, in one transaction
    /// under an advisory lock.
    async fn migrate(&self) -> StorageResult<()> {
        let doing = "creating the schema of the wrun database";
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(pg_error(doing))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(pg_error(doing))?;
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {SCHEMA_NAME}"))
            .await
            .map_err(pg_error(doing))?;
        let has_meta: bool = tx
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&format!("{SCHEMA_NAME}.meta")],
            )
            .await
            .map_err(pg_error(doing))?
            .get(0);
        if !has_meta {
            let tables: i64 = tx
                .query_one(
                    "SELECT count(*) FROM information_schema.tables WHERE table_schema = $1",
                    &[&SCHEMA_NAME],
                )
                .await
                .map_err(pg_error(doing))?
                .get(0);
            if tables > 0 {
                return Err(StorageError::Backend(format!(
                    "the database's schema `{SCHEMA_NAME}` holds tables that are not wrun's (no meta table): refusing to use it"
                )));
            }
            tx.batch_execute(schema::SCHEMA)
                .await
                .map_err(pg_error(doing))?;
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('application', 'wrun'), ('schema', $1)",
                &[&PG_SCHEMA_VERSION.to_string()],
            )
            .await
            .map_err(pg_error(doing))?;
        } else {
            let rows = tx
                .query(
                    "SELECT key, value FROM meta WHERE key IN ('application', 'schema')",
                    &[],
                )
                .await
                .map_err(pg_error(doing))?;
            let get = |k: &str| {
                rows.iter()
                    .find(|r| r.get::<_, String>(0) == k)
                    .map(|r| r.get::<_, String>(1))
            };
            if get("application").as_deref() != Some("wrun") {
                return Err(StorageError::Backend(format!(
                    "the database's schema `{SCHEMA_NAME}` is not a wrun store (its meta table does not say so)"
                )));
            }
            let version: i64 = get("schema").and_then(|v| v.parse().ok()).ok_or_else(|| {
                StorageError::Damaged {
                    what: "the schema version".into(),
                    reason: "missing or not a number".into(),
                }
            })?;
            if version > PG_SCHEMA_VERSION {
                return Err(StorageError::Backend(format!(
                    "the database has schema version {version}, newer than this wrun knows ({PG_SCHEMA_VERSION}): upgrade wrun"
                )));
            }
            // Versions after 11 add their steps here, each guarded by
            // `version < N`, and set the version below.
        }
        tx.commit().await.map_err(pg_error(doing))
    }
}

/// The TLS connector: rustls, trusting `ca_pem` only.
fn tls_connector(ca_pem: Option<&str>) -> StorageResult<tokio_postgres_rustls::MakeRustlsConnect> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(pem) = ca_pem {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| StorageError::Invalid {
                code: "invalid_store_ca",
                message: format!("[store] ca_file is not PEM certificates: {e}"),
            })?;
        if certs.is_empty() {
            return Err(StorageError::Invalid {
                code: "invalid_store_ca",
                message: "[store] ca_file holds no certificate".into(),
            });
        }
        for cert in certs {
            roots.add(cert).map_err(|e| StorageError::Invalid {
                code: "invalid_store_ca",
                message: format!("[store] ca_file: {e}"),
            })?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StorageError::Internal(format!("TLS to PostgreSQL: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests;

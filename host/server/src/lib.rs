//! `wrun-server`: the operator's daemon (`wrun serve`) as a library, so its
//! logic can be tested in process as well as over HTTPS, and the operations
//! the CLI shares with it.
//!
//! The parts: [`config`] (file + environment), [`tls`] (HTTPS serving with
//! graceful shutdown), [`api`] (the route table with each route's
//! permission, authentication, authorisation, handlers; [`openapi`]),
//! [`auth`] (tokens, JWTs, IP allowlists; the access model comes from
//! `wrun-store`), [`jobs`] (the runner and the scheduler), [`metrics`],
//! [`ratelimit`], [`signature`] (webhook HMAC) and [`schedule`] (cron).
//! The web console under `/ui` renders pages over the same API router,
//! calling it in process as the signed-in caller.
//! [`ops`] holds the changes the API and the CLI both make (connections,
//! environments, recipe deployment), [`admin`] what only the CLI does on the
//! same database (bootstrap members and tokens, audit verification and
//! streaming), and [`bundle`] the recipe bundle format. All data goes
//! through `wrun-store` ([`storage`], [`sqlite`] and [`audit`] are its
//! modules, re-exported).

#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod auth;
pub mod bundle;
pub mod config;
mod console;
pub mod endpoint;
pub mod http_error;
pub mod jobs;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod ops;
pub mod ratelimit;
pub mod review;
pub mod schedule;
pub mod signature;
pub mod signing;
pub mod tls;

pub use wrun_store::{audit, oauth, sqlite, storage};

// The store's modules under the names this crate's modules use.
use wrun_store::db as store_sqlite;
use wrun_store::keys;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};
use tokio::sync::watch;
use wrun_runtime::Engine;

use self::api::AppState;
use self::config::DaemonConfig;
use self::jobs::{Runner, RunnerLimits};
use self::metrics::Metrics;
use self::ratelimit::RateLimiter;
use self::sqlite::SqliteStorage;
use self::storage::Storage;
use wrun_store::keys::{KeySource, MasterKey};

/// The daemon's HTTP application without its listener: the router over
/// the API state, what [`serve`] serves over TLS. Tests drive it in process
/// (a request needs `ConnectInfo<SocketAddr>` in its extensions, as the
/// listener adds it).
pub struct App {
    /// Every route, with its permission check, JSON errors and metrics.
    pub router: axum::Router,
    /// Whether `/readyz` answers ready (set once the listener is up).
    pub ready: Arc<AtomicBool>,
    /// The rate limiters, whose stale entries the caller drops now and then
    /// ([`ratelimit::RateLimiter::retain_recent`]).
    pub limiters: [Arc<RateLimiter>; 4],
}

impl App {
    /// Builds the application over `storage` and `runner`.
    ///
    /// # Errors
    ///
    /// A JWT configuration that does not load.
    pub fn new(
        config: &Arc<DaemonConfig>,
        storage: Arc<dyn Storage>,
        runner: Arc<Runner>,
        metrics: Metrics,
    ) -> Result<App> {
        let jwt = match &config.jwt {
            Some(c) => Some(Arc::new(auth::JwtVerifier::new(c)?)),
            None => None,
        };
        let token_limits = Arc::new(RateLimiter::new(
            config.limits.requests_per_second,
            config.limits.burst,
        ));
        let webhook_limits = Arc::new(RateLimiter::new(
            config.limits.webhook_per_second,
            config.limits.webhook_burst,
        ));
        // Failed authentications and unknown webhooks per client address:
        // past this, 429 without an audit entry each, so nobody fills the
        // audit log from outside.
        let failure_limits = Arc::new(RateLimiter::new(
            config.limits.failures_per_second,
            config.limits.failure_burst,
        ));
        // Every API request per client network, before its credential is
        // verified: the per-token budget is spent only by the token's holder.
        let address_limits = Arc::new(RateLimiter::new(
            config.limits.address_per_second,
            config.limits.address_burst,
        ));
        let ready = Arc::new(AtomicBool::new(false));
        let state = AppState {
            storage,
            runner,
            metrics: metrics.clone(),
            jwt,
            config: Arc::clone(config),
            token_limits: Arc::clone(&token_limits),
            address_limits: Arc::clone(&address_limits),
            webhook_limits: Arc::clone(&webhook_limits),
            failure_limits: Arc::clone(&failure_limits),
            deploys: Arc::new(tokio::sync::Semaphore::new(2)),
            ready: Arc::clone(&ready),
        };
        let api = api::router(config, &state).with_state(state.clone());
        let router = if config.console.enabled {
            api.clone().merge(console::router(api, state)?)
        } else {
            api
        }
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::count_http_responses,
        ));
        Ok(App {
            router,
            ready,
            limiters: [token_limits, webhook_limits, failure_limits, address_limits],
        })
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
///
/// # Errors
///
/// A configuration, TLS, database or key problem at start-up, or a listener
/// that cannot bind.
pub async fn serve(
    config: DaemonConfig,
    db: &Path,
    key: MasterKey,
    key_source: Option<KeySource>,
    engine: Engine,
) -> Result<()> {
    let tls = match (&config.tls.cert, &config.tls.key) {
        (Some(cert), Some(key)) => tls::load_server_config(cert, key)?,
        _ => {
            let host = config.listen.ip().to_string();
            let (tls, pem) = tls::self_signed(&["localhost".to_string(), host])?;
            eprintln!(
                "WARNING: wrun serve is using a SELF-SIGNED certificate (development mode). Do not expose it: clients cannot verify this server."
            );
            tracing::warn!("serving with a self-signed development certificate");
            if let Some(out) = &config.tls.dev_cert_out {
                std::fs::write(out, pem).with_context(|| {
                    format!("writing the development certificate to {}", out.display())
                })?;
            }
            tls
        }
    };

    let sqlite = SqliteStorage::open(db, key, key_source)?;
    let storage: Arc<dyn Storage> = Arc::new(Arc::clone(&sqlite));
    let metrics = Metrics::new();
    let refresher = Arc::new(oauth::Refresher::new(engine.token_client()));
    storage.enable_oauth(Arc::clone(&refresher));
    metrics.watch_oauth(Arc::clone(&refresher));
    let runner = Runner::start(
        Arc::clone(&storage),
        engine,
        metrics.clone(),
        RunnerLimits {
            concurrency: config.workers.concurrency,
            per_workspace: config.workers.per_workspace,
            node: config.workers.node_name(),
            lease: Duration::from_secs(config.workers.lease_secs),
        },
    );
    if let Some(url) = &config.alerts.webhook_url {
        runner.set_alert_webhook(url.clone());
    }
    let recovered = runner.recover().await?;
    if recovered > 0 {
        tracing::info!(
            jobs = recovered,
            "resuming jobs that were queued or running"
        );
    }

    let (stop_tx, stop_rx) = watch::channel(false);
    jobs::start_scheduler(
        Arc::clone(&storage),
        Arc::clone(&runner),
        Duration::from_millis(config.workers.schedule_tick_ms.max(50)),
        stop_rx.clone(),
    );
    start_retention(Arc::clone(&storage), stop_rx.clone());
    start_oauth_refresh(Arc::clone(&storage), refresher, stop_rx.clone());
    if let Some(path) = &config.audit.stream_file {
        admin::start_audit_stream(db.to_path_buf(), path.clone(), stop_rx.clone())?;
    }

    let config = Arc::new(config);
    let App {
        router: app,
        ready,
        limiters,
    } = App::new(&config, storage, Arc::clone(&runner), metrics.clone())?;
    {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(ratelimit::RETAIN_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick.tick() => limiters.iter().for_each(|l| l.retain_recent()),
                    _ = stop.changed() => return,
                }
            }
        });
    }

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let local = listener.local_addr()?;
    // Tests and scripts read this line to find the port.
    println!("wrun serve: listening on https://{local}");
    ready.store(true, Ordering::SeqCst);

    let limits = tls::ServeLimits {
        max_header_bytes: config.limits.max_header_bytes,
        ..tls::ServeLimits::default()
    };
    let ready_for_signal = Arc::clone(&ready);
    let shutdown = async move {
        wait_for_signal().await;
        ready_for_signal.store(false, Ordering::SeqCst);
        tracing::info!("shutting down: no new connections; finishing requests and jobs");
    };
    tls::serve(listener, tls, app, limits, shutdown).await?;
    let _ = stop_tx.send(true);
    runner
        .shutdown(Duration::from_secs(config.workers.shutdown_grace_secs))
        .await;
    if let Err(e) = runner.flush_usage().await {
        tracing::error!(error = %e, "connection usage could not be stored at shutdown");
    }
    drop(sqlite);
    Ok(())
}

/// Resolves at SIGTERM or SIGINT.
async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Deletes expired history and ended console sessions at start and every
/// hour.
fn start_retention(storage: Arc<dyn Storage>, mut stop: watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            match storage.sweep_retention(wrun_store::UnixMillis::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "deleted job history past its retention"),
                Err(e) => tracing::error!(error = %e, "the retention sweep failed"),
            }
            match storage.sweep_sessions(wrun_store::UnixMillis::now()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(sessions = n, "deleted ended console sessions"),
                Err(e) => tracing::error!(error = %e, "the console session sweep failed"),
            }
        }
    });
}

/// Every minute, refreshes the OAuth2 connections whose access token
/// expires within five minutes, so that a connection nobody uses keeps its
/// refresh token alive (providers expire idle ones) and a job finds a fresh
/// token.
fn start_oauth_refresh(
    storage: Arc<dyn Storage>,
    refresher: Arc<oauth::Refresher>,
    mut stop: watch::Receiver<bool>,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            let before = wrun_store::UnixMillis(wrun_store::UnixMillis::now().0 + 5 * 60 * 1000);
            let due = match storage.oauth_due(before).await {
                Ok(due) => due,
                Err(e) => {
                    tracing::error!(error = %e, "listing OAuth2 connections to refresh failed");
                    continue;
                }
            };
            for (workspace, name) in due {
                if let Err(e) =
                    oauth::fresh_token(storage.as_ref(), &refresher, &workspace, &name).await
                {
                    tracing::warn!(%workspace, connection = %name, error = %e, "a periodic OAuth2 refresh failed");
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::SocketAddr;

    use axum::extract::ConnectInfo;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt as _;

    use super::*;

    /// The application over a fresh database, with an admin token and an
    /// analyst token of workspace `team-a`.
    async fn app() -> (tempfile::TempDir, App, String, String) {
        app_with(true).await
    }

    /// [`app`], its runner started (`recover`: its lease taken) or not.
    async fn app_with(recover: bool) -> (tempfile::TempDir, App, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(
            SqliteStorage::open(&dir.path().join("wrun.db"), MasterKey::generate(), None).unwrap(),
        );
        let mut tokens = Vec::new();
        for (subject, role) in [("alice", "admin"), ("bob", "analyst")] {
            admin::set_member(storage.as_ref(), "team-a", subject, role)
                .await
                .unwrap();
            let scopes = ["*:write".to_string()];
            let (_, token, _) = admin::create_token(
                storage.as_ref(),
                &admin::TokenRequest {
                    workspace: "team-a",
                    name: "test",
                    owner: subject,
                    scopes: &scopes,
                    expires_in: Duration::from_secs(3600),
                    max_lifetime: Duration::from_secs(7200),
                    allow_ips: &[],
                },
            )
            .await
            .unwrap();
            tokens.push(token.as_str().to_string());
        }
        let config: DaemonConfig = toml::from_str("[tls]\ndev_self_signed = true\n").unwrap();
        let metrics = Metrics::new();
        let runner = Runner::start(
            Arc::clone(&storage),
            Engine::builder().build().unwrap(),
            metrics.clone(),
            RunnerLimits {
                concurrency: 1,
                per_workspace: 1,
                node: "test".into(),
                lease: Duration::from_secs(10),
            },
        );
        if recover {
            runner.recover().await.unwrap();
        }
        let app = App::new(&Arc::new(config), storage, runner, metrics).unwrap();
        let analyst = tokens.pop().unwrap();
        let admin = tokens.pop().unwrap();
        (dir, app, admin, analyst)
    }

    /// Sends one request through the router, from loopback.
    async fn send(
        app: &App,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> StatusCode {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let mut request = request
            .body(axum::body::Body::from(body.to_string()))
            .unwrap();
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        app.router.clone().oneshot(request).await.unwrap().status()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_without_a_live_lease_is_not_ready() {
        // The listener is up, the store answers, but the runner never took
        // its lease (it would renew it): another node may take its jobs.
        let (_dir, app, _, _) = app_with(false).await;
        app.ready.store(true, Ordering::SeqCst);
        assert_eq!(
            send(&app, "GET", "/readyz", None, "").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        let (_dir, app, _, _) = app_with(true).await;
        app.ready.store(true, Ordering::SeqCst);
        assert_eq!(send(&app, "GET", "/readyz", None, "").await, StatusCode::OK);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn routes_are_authorised_from_the_table_in_process() {
        let (_dir, app, admin, analyst) = app().await;
        let connections = "/v1/workspaces/team-a/connections";
        let put = "/v1/workspaces/team-a/connections/crm";
        let value = r#"{"value":"tok-Vq7Lm2Xz9Rp4Kd8Wn3Hs6","hosts":["api.crm.test"],"placement":"header:Authorization=Bearer {}"}"#;
        // No credential, a reader writing, another workspace.
        assert_eq!(
            send(&app, "GET", connections, None, "").await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            send(&app, "PUT", put, Some(&analyst), value).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            send(
                &app,
                "GET",
                "/v1/workspaces/team-b/connections",
                Some(&admin),
                ""
            )
            .await,
            StatusCode::NOT_FOUND
        );
        // The refusals came before the body was looked at: a malformed one
        // is still refused for the credential, not the JSON.
        assert_eq!(
            send(&app, "PUT", put, Some(&analyst), "{").await,
            StatusCode::FORBIDDEN
        );
        // The shared operation's checks answer the API as they answer the
        // CLI: no host, a public suffix, a value too short to mask.
        for bad in [
            r#"{"value":"tok-Vq7Lm2Xz9Rp4Kd8Wn3Hs6","hosts":[],"placement":"header:Authorization=Bearer {}"}"#,
            r#"{"value":"tok-Vq7Lm2Xz9Rp4Kd8Wn3Hs6","hosts":["*.co.uk"],"placement":"header:Authorization=Bearer {}"}"#,
            r#"{"value":"abc","hosts":["api.crm.test"],"placement":"header:Authorization=Bearer {}"}"#,
        ] {
            assert_eq!(
                send(&app, "PUT", put, Some(&admin), bad).await,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
        // Allowed.
        assert_eq!(
            send(&app, "GET", connections, Some(&analyst), "").await,
            StatusCode::OK
        );
        assert_eq!(
            send(&app, "PUT", put, Some(&admin), value).await,
            StatusCode::OK
        );
        // Without a value the stored one is kept for new hosts; there must
        // be one to keep. A guessable value is refused by the store's rule.
        let keep = r#"{"hosts":["eu.crm.test"],"placement":"header:Authorization=Bearer {}"}"#;
        assert_eq!(
            send(&app, "PUT", put, Some(&admin), keep).await,
            StatusCode::OK
        );
        assert_eq!(
            send(&app, "PUT", &format!("{put}-absent"), Some(&admin), keep).await,
            StatusCode::NOT_FOUND
        );
        let weak = r#"{"value":"aaaaaaaaaaaaaaaaaaaa","hosts":["api.crm.test"]}"#;
        assert_eq!(
            send(&app, "PUT", put, Some(&admin), weak).await,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            send(&app, "GET", "/v1/whoami", Some(&analyst), "").await,
            StatusCode::OK
        );
        // Public routes need nothing; readiness follows the flag.
        assert_eq!(
            send(&app, "GET", "/healthz", None, "").await,
            StatusCode::OK
        );
        assert_eq!(
            send(&app, "GET", "/readyz", None, "").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        app.ready.store(true, Ordering::SeqCst);
        assert_eq!(send(&app, "GET", "/readyz", None, "").await, StatusCode::OK);
    }
}

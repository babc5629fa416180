//! The daemon's HTTPS API: routes, authentication, authorisation.
//!
//! Every route but `/healthz`, `/readyz`, `/metrics`, `/openapi.json` and
//! the webhook receiver `/hooks/{id}` needs `Authorization: Bearer` with an
//! API token (`wrun_pat_...`) or, when configured, a JWT of the issuer.
//! Workspace routes live under `/v1/workspaces/{ws}`: a caller of another
//! workspace gets 404 (the same answer as for a workspace that does not
//! exist), never 403 and never data. Within its workspace, a caller needs
//! the permission of the route (its token's scopes intersected with its
//! role); lacking it is 403.
//!
//! The routes are declared once, in [`api_routes!`]: the same declaration
//! builds the router and the OpenAPI document, so they cannot drift apart.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::audit::{Entry, Outcome};
use super::auth::{self, Access, IpAllowlist, JwtVerifier, NewToken, PermissionSet, Resource};
use super::config::DaemonConfig;
use super::http_error::{ApiError, LazyJson, read_body};
use super::jobs::{Runner, new_job_id};
use super::metrics::{Metrics, WebhookOutcome};
use super::ratelimit::{RateLimiter, client_key, retry_after_secs};
use super::schedule::Schedule;
use super::signature;
use super::storage::{
    DeleteCriteria, Enqueued, EnvChange, JobFilter, JobState, NewJob, RespondMode, Storage,
    StorageError, TokenRecord, TriggerKind, TriggerRecord,
};
use wrun_store::UnixMillis;

/// Everything a handler needs.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub storage: Arc<dyn Storage>,
    /// The job runner.
    pub runner: Arc<Runner>,
    /// Metrics.
    pub metrics: Metrics,
    /// The JWT verifier, when an issuer is configured.
    pub jwt: Option<Arc<JwtVerifier>>,
    /// Configuration.
    pub config: Arc<DaemonConfig>,
    /// Per-token (or per-subject) request limits, counted only once the
    /// credential is verified.
    pub token_limits: Arc<RateLimiter>,
    /// Per-client-address (IPv6: per /64) API request limits, counted before
    /// any credential is verified.
    pub address_limits: Arc<RateLimiter>,
    /// Per-webhook request limits.
    pub webhook_limits: Arc<RateLimiter>,
    /// Per-client-address limits of failed authentications, unknown
    /// webhooks and bad webhook signatures: past it, failures are answered
    /// 429 and not audited one by one, so nobody can fill the audit log
    /// from outside.
    pub failure_limits: Arc<RateLimiter>,
    /// Bundle deployments parsed and compiled at once.
    pub deploys: Arc<tokio::sync::Semaphore>,
    /// Whether the daemon serves jobs (false while starting and stopping).
    pub ready: Arc<AtomicBool>,
}

/// Who is calling, and what they may do in their workspace.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Member subject (the token's owner, or the JWT's subject).
    pub subject: String,
    /// The only workspace the caller acts in.
    pub workspace: String,
    /// Effective permissions.
    pub permissions: PermissionSet,
    /// Whether the caller is an admin of the workspace (may act for others).
    pub admin: bool,
    /// Client address.
    pub ip: IpAddr,
}

impl Principal {
    /// The principal as the actor of a shared operation ([`crate::ops`]).
    fn as_actor(&self) -> crate::ops::Actor {
        crate::ops::Actor {
            workspace: self.workspace.clone(),
            name: self.actor(),
            source: self.ip.to_string(),
        }
    }

    /// The actor of an audit entry.
    fn actor(&self) -> String {
        self.subject.clone()
    }

    /// An audit entry by this principal.
    fn entry(&self, action: &str, target: impl Into<String>, detail: Value) -> Entry {
        Entry {
            workspace: Some(self.workspace.clone()),
            actor: self.actor(),
            action: action.into(),
            target: target.into(),
            source: Some(self.ip.to_string()),
            outcome: Outcome::Success,
            detail,
        }
    }
}

/// The client address, without the IPv4-mapped IPv6 form.
pub(crate) fn client_ip(addr: SocketAddr) -> IpAddr {
    match addr.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    }
}

/// Maps storage errors to API errors (never leaking internals).
fn storage_error(e: StorageError) -> ApiError {
    match e {
        StorageError::NotFound { what, name } => ApiError::not_found(format!("{what} `{name}`")),
        StorageError::Conflict(msg) => ApiError::conflict("conflict", msg),
        StorageError::Invalid { code, message } => ApiError::bad_request(code, message),
        other => {
            tracing::error!(error = %other, "a storage operation failed");
            ApiError::internal()
        }
    }
}

impl AppState {
    /// Records an authentication failure and builds its 401.
    async fn auth_failure(
        &self,
        ip: IpAddr,
        code: &'static str,
        message: &str,
        actor: &str,
    ) -> ApiError {
        self.auth_failure_in(ip, code, message, actor, None).await
    }

    /// Records an authentication failure of a known workspace's credential.
    async fn auth_failure_in(
        &self,
        ip: IpAddr,
        code: &'static str,
        message: &str,
        actor: &str,
        workspace: Option<&str>,
    ) -> ApiError {
        self.metrics.auth_failure(code);
        if let Err(limited) = self.limit_failure(ip) {
            return limited;
        }
        let entry = Entry {
            workspace: workspace.map(String::from),
            actor: actor.into(),
            action: "auth.failure".into(),
            target: "api".into(),
            source: Some(ip.to_string()),
            outcome: Outcome::Denied,
            detail: json!({ "reason": code }),
        };
        if let Err(e) = self.storage.audit(vec![entry]).await {
            tracing::error!(error = %e, "an authentication failure was not audited");
        }
        ApiError::unauthorized(code, message)
    }

    /// Authenticates the caller and checks that they may do `access` on
    /// `resource` in `workspace`.
    async fn authorize(
        &self,
        headers: &HeaderMap,
        addr: SocketAddr,
        workspace: &str,
        resource: Resource,
        access: Access,
    ) -> Result<Principal, ApiError> {
        let principal = self.authenticate(headers, addr).await?;
        Self::permit(principal, workspace, resource, access)
    }

    /// Checks that an authenticated caller may do `access` on `resource` in
    /// `workspace`: another workspace is 404, a missing permission 403.
    fn permit(
        principal: Principal,
        workspace: &str,
        resource: Resource,
        access: Access,
    ) -> Result<Principal, ApiError> {
        if principal.workspace != workspace {
            return Err(ApiError::not_found(format!("workspace `{workspace}`")));
        }
        if !principal.permissions.allows(resource, access) {
            return Err(ApiError::forbidden(format!(
                "this credential may not {} {}",
                match access {
                    Access::Read => "read",
                    Access::Write => "change",
                },
                resource.as_str()
            )));
        }
        Ok(principal)
    }

    /// Refuses new work while the runner holds `[workers] max_backlog`
    /// jobs: 503 with `Retry-After`, before anything is committed.
    fn admit(&self) -> Result<(), ApiError> {
        match self.config.workers.max_backlog {
            Some(max) if self.runner.backlog() >= max => {
                self.metrics.backlog_refused();
                Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "backlog_full",
                    format!("{max} jobs are waiting or running: retry later"),
                )
                .with_retry_after(5))
            }
            _ => Ok(()),
        }
    }

    /// Counts one failure from `ip`'s network.
    ///
    /// # Errors
    ///
    /// 429 once the network is past its failure budget.
    pub(crate) fn limit_failure(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.failure_limits
            .check(&client_key(ip))
            .map_err(|wait| ApiError::too_many_requests(retry_after_secs(wait)))
    }

    /// Authenticates the caller (token or JWT) and applies the rate limits:
    /// the client address's before anything is verified, the credential's
    /// only once it is.
    async fn authenticate(
        &self,
        headers: &HeaderMap,
        addr: SocketAddr,
    ) -> Result<Principal, ApiError> {
        let ip = client_ip(addr);
        self.limit_address(ip)?;
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err(self
                .auth_failure(
                    ip,
                    "missing_credentials",
                    "send `Authorization: Bearer <token>`",
                    "anonymous",
                )
                .await);
        };
        let Some(presented) = value
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
        else {
            return Err(self
                .auth_failure(
                    ip,
                    "malformed_credentials",
                    "the Authorization header is not `Bearer <token>`",
                    "anonymous",
                )
                .await);
        };
        let principal = if presented.starts_with("wrun_pat_") {
            self.authenticate_token(presented, ip).await?
        } else {
            self.authenticate_jwt(presented, ip).await?
        };
        Ok(principal)
    }

    /// The per-client-network request limit, counted before any credential
    /// is verified.
    pub(crate) fn limit_address(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.address_limits
            .check(&client_key(ip))
            .map_err(|wait| ApiError::too_many_requests(retry_after_secs(wait)))
    }

    /// The per-credential rate limit, checked once the credential is
    /// verified (so nobody spends another's budget by naming it).
    pub(crate) fn limit(&self, key: &str) -> Result<(), ApiError> {
        self.token_limits
            .check(key)
            .map_err(|wait| ApiError::too_many_requests(retry_after_secs(wait)))
    }

    /// Authenticates an API token (`wrun_pat_...`) presented from `ip`,
    /// with the same checks, limits and audit as a bearer token.
    pub(crate) async fn authenticate_token(
        &self,
        presented: &str,
        ip: IpAddr,
    ) -> Result<Principal, ApiError> {
        let parsed = match auth::parse_token(presented) {
            Ok(p) => p,
            Err(e) => {
                return Err(self
                    .auth_failure(ip, e.code(), "the token is malformed", "anonymous")
                    .await);
            }
        };
        let actor = format!("token:{}", parsed.id);
        let record = self
            .storage
            .token(&parsed.id)
            .await
            .map_err(storage_error)?;
        let Some(record) = record.filter(|r| auth::hashes_match(&r.hash, &parsed.hash)) else {
            return Err(self
                .auth_failure(ip, "token_unknown", "the token is not valid", &actor)
                .await);
        };
        self.limit(&actor)?;
        self.token_principal(&record, ip).await
    }

    /// The caller a stored token stands for, from `ip`: refused (and
    /// audited) when it is revoked, expired or not allowed from `ip`; its
    /// permissions are its scopes within its owner's current role.
    pub(crate) async fn token_principal(
        &self,
        record: &TokenRecord,
        ip: IpAddr,
    ) -> Result<Principal, ApiError> {
        let actor = format!("token:{}", record.id);
        let now = UnixMillis::now();
        if record.revoked_at.is_some() {
            return Err(self
                .auth_failure_in(
                    ip,
                    "token_revoked",
                    "the token was revoked",
                    &actor,
                    Some(&record.workspace),
                )
                .await);
        }
        if record.expires_at <= now {
            return Err(self
                .auth_failure_in(
                    ip,
                    "token_expired",
                    "the token has expired",
                    &actor,
                    Some(&record.workspace),
                )
                .await);
        }
        let allow = IpAllowlist::parse(&record.allow_ips).map_err(|_| ApiError::internal())?;
        if !allow.allows(ip) {
            return Err(self
                .auth_failure_in(
                    ip,
                    "token_ip_not_allowed",
                    "the token may not be used from this address",
                    &actor,
                    Some(&record.workspace),
                )
                .await);
        }
        let role = self
            .storage
            .member_role(&record.workspace, &record.owner)
            .await
            .map_err(storage_error)?;
        let role_perms = match &role {
            Some(role) => self
                .storage
                .role_permissions(&record.workspace, role)
                .await
                .map_err(storage_error)?
                .unwrap_or_default(),
            None => PermissionSet::default(),
        };
        let _ = self
            .storage
            .touch_token(&record.id, now, &ip.to_string())
            .await;
        Ok(Principal {
            subject: record.owner.clone(),
            workspace: record.workspace.clone(),
            permissions: record.scopes.intersect(role_perms),
            admin: role.as_deref() == Some("admin"),
            ip,
        })
    }

    async fn authenticate_jwt(&self, presented: &str, ip: IpAddr) -> Result<Principal, ApiError> {
        let Some(jwt) = &self.jwt else {
            return Err(self
                .auth_failure(
                    ip,
                    "token_malformed",
                    "the token is not a wrun API token",
                    "anonymous",
                )
                .await);
        };
        let now = u64::try_from(UnixMillis::now().as_secs()).unwrap_or(0);
        let identity = match jwt.verify(presented, now) {
            Ok(identity) => {
                self.limit(&format!("jwt:{}\0{}", identity.workspace, identity.subject))?;
                identity
            }
            Err(e) => {
                return Err(self.auth_failure(ip, e.code(), &e.to_string(), "jwt").await);
            }
        };
        let permissions = self
            .storage
            .role_permissions(&identity.workspace, &identity.role)
            .await
            .map_err(storage_error)?
            .unwrap_or_default();
        Ok(Principal {
            subject: format!("jwt:{}", identity.subject),
            workspace: identity.workspace,
            permissions,
            admin: identity.role == "admin",
            ip,
        })
    }
}

/// Shorthand for handler results.
type ApiResult = Result<Response, ApiError>;

/// A JSON response with a status.
fn reply(status: StatusCode, body: Value) -> ApiResult {
    Ok((status, axum::Json(body)).into_response())
}

// ---------------------------------------------------------------------------
// Routes

/// What a route requires of its caller: declared once per route in
/// [`api_routes!`], checked by [`authorize_route`] before the handler runs
/// (and before its body is read), and shown in the OpenAPI document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Anyone (liveness, metrics, webhooks with their own checks).
    Public,
    /// Any authenticated caller, in their own workspace.
    Caller,
    /// A caller of the path's workspace `{ws}` holding this permission.
    Needs(Resource, Access),
}

impl Permission {
    /// As the OpenAPI document shows it: `recipes:write`, `authenticated`
    /// or `public`.
    pub fn describe(self) -> String {
        match self {
            Permission::Public => "public".into(),
            Permission::Caller => "authenticated".into(),
            Permission::Needs(resource, access) => format!("{}:{}", resource.as_str(), access),
        }
    }
}

/// The permission of a route as written in the table.
macro_rules! permission {
    (public) => {
        Permission::Public
    };
    (caller) => {
        Permission::Caller
    };
    ($resource:ident : read) => {
        Permission::Needs(Resource::$resource, Access::Read)
    };
    ($resource:ident : write) => {
        Permission::Needs(Resource::$resource, Access::Write)
    };
}

/// Authenticates and authorises a request from its route's [`Permission`],
/// before the handler runs: a route cannot be served without the check its
/// table entry names, whatever its handler does. The caller is passed to
/// the handler as [`Authorized`].
async fn authorize_route(
    State((s, permission)): State<(AppState, Permission)>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    params: axum::extract::RawPathParams,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    // The web console's calls carry the caller its session stands for (an
    // extension: nothing a client sends can set it); they are checked
    // against the route's permission exactly as a bearer's are.
    let console = request
        .extensions()
        .get::<ConsoleCaller>()
        .map(|c| c.0.clone());
    let principal = match permission {
        Permission::Public => return next.run(request).await,
        Permission::Caller => match console {
            Some(principal) => Ok(principal),
            None => s.authenticate(headers, addr).await,
        },
        Permission::Needs(resource, access) => {
            let workspace = params
                .iter()
                .find(|(name, _)| *name == "ws")
                .map(|(_, value)| value.to_string());
            match (workspace, console) {
                (Some(ws), Some(principal)) => AppState::permit(principal, &ws, resource, access),
                (Some(ws), None) => s.authorize(headers, addr, &ws, resource, access).await,
                (None, _) => {
                    tracing::error!(
                        path = %request.uri().path(),
                        "a route that needs a permission has no {{ws}} parameter"
                    );
                    Err(ApiError::internal())
                }
            }
        }
    };
    match principal {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(e) => e.into_response(),
    }
}

/// The caller of a web console request, as its session stands for it: put
/// in the extensions of the API request the console makes on the caller's
/// behalf, in place of an `Authorization` header.
#[derive(Debug, Clone)]
pub(crate) struct ConsoleCaller(pub(crate) Principal);

/// The caller of a route, as [`authorize_route`] authorised it from the
/// route's permission.
#[derive(Debug, Clone)]
pub struct Authorized(pub Principal);

impl axum::extract::FromRequestParts<AppState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &AppState,
    ) -> Result<Authorized, ApiError> {
        match parts.extensions.get::<Principal>() {
            Some(p) => Ok(Authorized(p.clone())),
            None => {
                // A handler of a public route asked for a caller.
                tracing::error!(path = %parts.uri.path(), "a public route's handler needs a caller");
                Err(ApiError::internal())
            }
        }
    }
}

macro_rules! api_routes {
    ($( $method:ident $path:literal => $handler:ident ($($permission:tt)*) [$tag:literal] $summary:literal; )*) => {
        /// The API router for `state`: each route checks its permission
        /// (see [`authorize_route`]) before its handler runs.
        pub fn router(config: &DaemonConfig, state: &AppState) -> Router<AppState> {
            let mut router = Router::new();
            $(
                let (limit, read_secs) = if $path == "/v1/workspaces/{ws}/recipes/{name}" {
                    (config.limits.max_bundle_bytes, config.limits.bundle_read_timeout_secs)
                } else {
                    (config.limits.max_body_bytes, config.limits.body_read_timeout_secs)
                };
                router = router.route(
                    $path,
                    axum::routing::$method($handler)
                        .layer(DefaultBodyLimit::max(limit))
                        .layer(axum::middleware::from_fn_with_state(
                            std::time::Duration::from_secs(read_secs),
                            super::http_error::body_deadline,
                        ))
                        .layer(axum::middleware::from_fn_with_state(
                            (state.clone(), permission!($($permission)*)),
                            authorize_route,
                        )),
                );
            )*
            super::http_error::with_json_errors(router)
        }

        /// Every route: method, path, permission, tag, summary (the OpenAPI
        /// document is built from this).
        pub const ROUTES: &[(&str, &str, Permission, &str, &str)] = &[
            $( (stringify!($method), $path, permission!($($permission)*), $tag, $summary), )*
        ];
    };
}

api_routes! {
    get "/healthz" => healthz (public) ["operations"] "Liveness: the process answers.";
    get "/readyz" => readyz (public) ["operations"] "Readiness: the store and the runner are up.";
    get "/metrics" => metrics (public) ["operations"] "Prometheus metrics.";
    get "/openapi.json" => openapi (public) ["operations"] "This OpenAPI document.";
    post "/hooks/{id}" => webhook (public) ["webhooks"] "Deliver a webhook: the payload is committed before 202 (in response mode, the answer is the job's result).";
    get "/v1/whoami" => whoami (caller) ["identity"] "The caller's subject, workspace and permissions.";
    get "/v1/workspaces/{ws}/recipes" => list_recipes (Recipes: read) ["recipes"] "List deployed recipes.";
    put "/v1/workspaces/{ws}/recipes/{name}" => put_recipe (Recipes: write) ["recipes"] "Deploy a recipe from a bundle (`wrun export`), as application/gzip.";
    get "/v1/workspaces/{ws}/recipes/{name}" => get_recipe (Recipes: read) ["recipes"] "A deployed recipe's manifest and components.";
    delete "/v1/workspaces/{ws}/recipes/{name}" => delete_recipe (Recipes: write) ["recipes"] "Remove a recipe and its triggers.";
    get "/v1/workspaces/{ws}/recipes/{name}/pending" => get_pending_recipe (Recipes: read) ["recipes"] "The version of a recipe waiting for approval, with its grant review.";
    post "/v1/workspaces/{ws}/recipes/{name}/approve" => approve_recipe (Members: write) ["recipes"] "Approve the waiting version named by `pending` (its id from the review): it runs from now on.";
    get "/v1/workspaces/{ws}/recipes/{name}/triggers" => list_triggers (Recipes: read) ["recipes"] "Webhooks and schedules of a recipe.";
    post "/v1/workspaces/{ws}/recipes/{name}/webhooks" => create_webhook (Recipes: write) ["recipes"] "Create a webhook (its URL and signing secret are shown once); `respond` makes it answer with its job's result.";
    post "/v1/workspaces/{ws}/recipes/{name}/schedules" => create_schedule (Recipes: write) ["recipes"] "Create a cron schedule with a time zone.";
    delete "/v1/workspaces/{ws}/triggers/{id}" => delete_trigger (Recipes: write) ["recipes"] "Delete a webhook or schedule.";
    post "/v1/workspaces/{ws}/recipes/{name}/runs" => run_recipe (Jobs: write) ["jobs"] "Run a recipe now (202 with the job id).";
    get "/v1/workspaces/{ws}/jobs" => list_jobs (Jobs: read) ["jobs"] "List jobs, newest first.";
    post "/v1/workspaces/{ws}/jobs/delete" => delete_jobs (Jobs: write) ["jobs"] "Delete job history by criteria (recipe, time range, a field value).";
    post "/v1/workspaces/{ws}/jobs/erase" => erase_jobs (Jobs: write) ["jobs"] "Erase a data subject: destroy the content of every ended job that mentions it (any field, any case), keep ids, times and states; `dry_run` only counts.";
    get "/v1/workspaces/{ws}/jobs/stats" => job_stats (Jobs: read) ["jobs"] "How many jobs were created, and how many failed, per `bucket_ms` (at least a minute) from `since` (ms).";
    get "/v1/workspaces/{ws}/jobs/{id}" => get_job (Jobs: read) ["jobs"] "A job with its masked history.";
    post "/v1/workspaces/{ws}/jobs/{id}/cancel" => cancel_job (Jobs: write) ["jobs"] "Cancel a queued or running job.";
    post "/v1/workspaces/{ws}/jobs/{id}/rerun" => rerun_job (Jobs: write) ["jobs"] "Run a job again with the same input.";
    get "/v1/workspaces/{ws}/connections" => list_connections (Connections: read) ["connections"] "List connections (never their values).";
    put "/v1/workspaces/{ws}/connections/{name}" => put_connection (Connections: write) ["connections"] "Create or replace a connection; the value is write-only (without one, the stored value is kept for the new hosts and placement).";
    delete "/v1/workspaces/{ws}/connections/{name}" => delete_connection (Connections: write) ["connections"] "Delete a connection.";
    get "/v1/workspaces/{ws}/connections/{name}/limits" => get_connection_limits (Connections: read) ["connections"] "A connection's outbound limits.";
    put "/v1/workspaces/{ws}/connections/{name}/limits" => put_connection_limits (Connections: write) ["connections"] "Set a connection's outbound limits (`requests_per_minute`, `burst`, `bytes_per_minute`, `paths_per_minute`; `{}` removes them): requests past them are refused before they leave.";
    get "/v1/workspaces/{ws}/connections/{name}/usage" => connection_usage (Connections: read) ["connections"] "The egress trail: which job, step and recipe sent the connection to which host, per minute (`from`, `to` in ms; `limit`).";
    post "/v1/workspaces/{ws}/connections/{name}/resume" => resume_connection (Members: write) ["connections"] "Resume a connection an alert suspended.";
    put "/v1/workspaces/{ws}/connections/{name}/oauth2" => put_oauth_connection (Connections: write) ["connections"] "Create or replace an OAuth2 connection: the host obtains and refreshes its access token; the client secret is write-only.";
    get "/v1/workspaces/{ws}/connections/{name}/oauth2" => get_oauth_connection (Connections: read) ["connections"] "An OAuth2 connection's client and state (never a token or the secret).";
    post "/v1/workspaces/{ws}/connections/{name}/authorize" => authorize_connection (Connections: write) ["connections"] "Start an OAuth2 authorization code flow (PKCE): the provider URL to open; the provider redirects to /oauth/callback.";
    get "/oauth/callback" => oauth_callback (public) ["connections"] "The OAuth2 redirect target: finishes an authorization (its state is checked and used once).";
    get "/v1/workspaces/{ws}/environments/{env}" => get_environment (Environments: read) ["environments"] "An environment's properties and bindings.";
    put "/v1/workspaces/{ws}/environments/{env}/properties/{name}" => set_property (Environments: write) ["environments"] "Set a property.";
    delete "/v1/workspaces/{ws}/environments/{env}/properties/{name}" => remove_property (Environments: write) ["environments"] "Remove a property.";
    put "/v1/workspaces/{ws}/environments/{env}/bindings/{logical}" => bind (Environments: write) ["environments"] "Bind a recipe's connection name to a connection.";
    delete "/v1/workspaces/{ws}/environments/{env}/bindings/{logical}" => unbind (Environments: write) ["environments"] "Remove a binding.";
    get "/v1/workspaces/{ws}/tokens" => list_tokens (Tokens: read) ["tokens"] "List API tokens (never their secrets).";
    post "/v1/workspaces/{ws}/tokens" => create_token (Tokens: write) ["tokens"] "Create an API token (shown once).";
    delete "/v1/workspaces/{ws}/tokens/{id}" => revoke_token (Tokens: write) ["tokens"] "Revoke an API token (effective at the next request).";
    get "/v1/workspaces/{ws}/members" => list_members (Members: read) ["members"] "List members and their roles.";
    put "/v1/workspaces/{ws}/members/{subject}" => set_member (Members: write) ["members"] "Add a member or change their role.";
    delete "/v1/workspaces/{ws}/members/{subject}" => remove_member (Members: write) ["members"] "Remove a member.";
    get "/v1/workspaces/{ws}/roles" => list_roles (Members: read) ["members"] "Built-in and custom roles.";
    put "/v1/workspaces/{ws}/roles/{name}" => put_role (Members: write) ["members"] "Create or replace a custom role (a named permission set).";
    delete "/v1/workspaces/{ws}/roles/{name}" => delete_role (Members: write) ["members"] "Delete a custom role.";
    get "/v1/workspaces/{ws}/settings" => get_settings (Members: read) ["members"] "Workspace settings (history retention).";
    put "/v1/workspaces/{ws}/settings" => put_settings (Members: write) ["members"] "Change workspace settings.";
    get "/v1/workspaces/{ws}/governance" => get_governance (Members: read) ["members"] "Whether bundles must be signed and grant widenings approved.";
    put "/v1/workspaces/{ws}/governance" => put_governance (Members: write) ["members"] "Require signed bundles (`require_signatures`) and approval of versions that widen grants (`review_grants`).";
    get "/v1/workspaces/{ws}/signing-keys" => list_signing_keys (Members: read) ["members"] "Bundle signing keys the workspace trusts or revoked.";
    put "/v1/workspaces/{ws}/signing-keys/{name}" => trust_signing_key (Members: write) ["members"] "Trust a bundle signing key (`public_key`, as `wrun signing-key new` prints it).";
    delete "/v1/workspaces/{ws}/signing-keys/{name}" => revoke_signing_key (Members: write) ["members"] "Revoke a signing key: bundles it signed are refused from now on.";
    get "/v1/workspaces/{ws}/audit" => read_audit (Audit: read) ["audit"] "Audit entries of the workspace.";
    get "/v1/workspaces/{ws}/audit/verify" => verify_audit (Audit: read) ["audit"] "Verify the audit log's MAC chain: how many entries, how many verified, the positions of problems.";
}

async fn healthz() -> ApiResult {
    reply(StatusCode::OK, json!({ "status": "ok" }))
}

/// How long `/readyz` waits for the store.
const READY_STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

async fn readyz(State(s): State<AppState>) -> ApiResult {
    let unavailable = |code, message| {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            message,
        ))
    };
    if !s.ready.load(Ordering::SeqCst) {
        return unavailable("not_ready", "the daemon is starting or stopping");
    }
    match tokio::time::timeout(READY_STORE_TIMEOUT, s.storage.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "the store does not answer a readiness check");
            return unavailable("store_unavailable", "the store does not answer");
        }
        Err(_) => return unavailable("store_unavailable", "the store did not answer in time"),
    }
    if !s.runner.lease_live() {
        return unavailable(
            "lease_lapsed",
            "this node could not renew its lease on its jobs: another node may take them over",
        );
    }
    // Nothing about the node (its name is often the host's) to an
    // anonymous caller.
    reply(StatusCode::OK, json!({ "status": "ready", "store": "ok" }))
}

async fn metrics(State(s): State<AppState>) -> Response {
    s.metrics.response()
}

async fn openapi() -> ApiResult {
    reply(StatusCode::OK, super::openapi::document())
}

async fn whoami(Authorized(p): Authorized) -> ApiResult {
    reply(
        StatusCode::OK,
        json!({ "subject": p.subject, "workspace": p.workspace, "permissions": p.permissions.to_strings() }),
    )
}

/// Headers of a webhook delivery.
const IDEMPOTENCY_HEADER: &str = "idempotency-key";

async fn webhook(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult {
    let ip = client_ip(addr);
    let well_formed =
        id.len() == 35 && id.starts_with("wh_") && id[3..].bytes().all(|b| b.is_ascii_hexdigit());
    let trigger = if well_formed {
        s.storage.trigger(&id).await.map_err(storage_error)?
    } else {
        None
    };
    let Some(trigger) = trigger.filter(|t| t.kind == TriggerKind::Webhook) else {
        s.metrics.webhook(WebhookOutcome::Rejected);
        // Guessing webhook ids is limited per client address.
        s.limit_failure(ip)?;
        return Err(ApiError::not_found("webhook"));
    };
    // An unsigned webhook has nothing to verify: its budget is counted now.
    // A signed one's is counted only once the signature holds, so nobody
    // without the secret can spend the real sender's budget.
    if trigger.secret.is_none() {
        s.limit_webhook(&trigger.id)?;
    }
    let body = read_body(body, s.config.limits.max_body_bytes).await?;
    let verified = match &trigger.secret {
        Some(secret) => {
            let verified = verify_delivery(&s, &trigger, secret, &headers, &body, ip).await?;
            s.limit_webhook(&trigger.id)?;
            Some(verified)
        }
        None => None,
    };
    let payload: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request("malformed_json", format!("the payload is not JSON: {e}"))
        })?
    };
    let idempotency_key = match verified {
        Some(verified) => Some(delivery_key(&trigger.id, &verified)),
        None => idempotency_header(&headers)?,
    };
    s.admit()?;
    let job = NewJob {
        id: new_job_id(),
        workspace: trigger.workspace.clone(),
        recipe: trigger.recipe.clone(),
        environment: trigger.environment.clone(),
        trigger_kind: "webhook".into(),
        payload,
        idempotency_key,
        rerun_of: None,
        created_at: UnixMillis::now(),
    };
    let (id, new) = match s.storage.enqueue(job, None).await.map_err(storage_error)? {
        Enqueued::New(id) => (id, true),
        Enqueued::Duplicate(id) => (id, false),
    };
    // In response mode the request waits for the job: watched before it is
    // submitted (or, for a duplicate, before its state is read), so its end
    // cannot be missed.
    let watch = trigger.respond.map(|mode| (mode, s.runner.watch(&id)));
    if new {
        s.metrics.webhook(WebhookOutcome::Accepted);
        s.runner.submit();
    }
    match watch {
        Some((mode, rx)) => Ok(crate::endpoint::answer(
            &s,
            &trigger.workspace,
            &id,
            mode,
            rx,
            &public_id(&trigger.id),
        )
        .await),
        None if new => reply(StatusCode::ACCEPTED, json!({ "job": id })),
        None => reply(StatusCode::OK, json!({ "job": id, "duplicate": true })),
    }
}

impl AppState {
    /// Counts one delivery against a webhook's budget.
    fn limit_webhook(&self, id: &str) -> Result<(), ApiError> {
        // Keyed by an id that exists: the limiter's map stays bounded.
        self.webhook_limits.check(id).map_err(|wait| {
            self.metrics.webhook(WebhookOutcome::RateLimited);
            ApiError::too_many_requests(retry_after_secs(wait))
        })
    }
}

/// Checks a signed delivery's signature.
///
/// # Errors
///
/// 401 with the signature error's code; a failure is audited unless the
/// client address is past its failure budget, which answers 429 instead.
async fn verify_delivery(
    s: &AppState,
    trigger: &TriggerRecord,
    secret: &[u8],
    headers: &HeaderMap,
    body: &[u8],
    ip: IpAddr,
) -> Result<signature::Verified, ApiError> {
    let header = headers
        .get(signature::HEADER_NAME)
        .and_then(|v| v.to_str().ok());
    let window = s.config.webhooks.signature_window_secs;
    let e = match signature::verify(secret, header, body, UnixMillis::now().as_secs(), window) {
        Ok(verified) => return Ok(verified),
        Err(e) => e,
    };
    s.metrics.webhook(WebhookOutcome::Rejected);
    s.metrics.auth_failure(e.code());
    s.limit_failure(ip)?;
    let entry = Entry {
        workspace: Some(trigger.workspace.clone()),
        actor: "webhook".into(),
        action: "webhook.signature".into(),
        target: format!(
            "recipe:{}/webhook:{}",
            trigger.recipe,
            public_id(&trigger.id)
        ),
        source: Some(ip.to_string()),
        outcome: Outcome::Denied,
        detail: json!({ "reason": e.code() }),
    };
    if let Err(err) = s.storage.audit(vec![entry]).await {
        tracing::error!(error = %err, "a webhook signature failure was not audited");
    }
    Err(ApiError::unauthorized(e.code(), e.to_string()))
}

/// The deduplication key of a signed delivery: its canonical form (webhook,
/// `t`, the MAC that matched), so every spelling of one signed request, which
/// a replayer can vary at will, finds the job the first one made. The
/// `Idempotency-Key` header is not signed, so it is not used.
fn delivery_key(webhook: &str, verified: &signature::Verified) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::new()
        .chain_update(webhook.as_bytes())
        .chain_update(b"\0")
        .chain_update(verified.t.to_be_bytes())
        .chain_update(verified.mac)
        .finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sig:{hex}")
}

/// The `Idempotency-Key` of an unsigned delivery, if it sent one.
fn idempotency_header(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 256)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 256 visible ASCII characters",
            )
        })?;
    Ok(Some(key.to_string()))
}

async fn list_recipes(State(s): State<AppState>, Path(ws): Path<String>) -> ApiResult {
    let list = s.storage.list_recipes(&ws).await.map_err(storage_error)?;
    reply(StatusCode::OK, json!({ "recipes": list }))
}

async fn put_recipe(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((_ws, name)): Path<(String, String)>,
    body: axum::body::Body,
) -> ApiResult {
    // The body is read only once the caller is known to be allowed.
    let body = read_body(body, s.config.limits.max_bundle_bytes).await?;
    let _deploying = s
        .deploys
        .acquire()
        .await
        .map_err(|_| ApiError::internal())?;
    let deployment = crate::ops::deploy_recipe(
        s.storage.as_ref(),
        s.runner.engine(),
        &p.as_actor(),
        Some(&name),
        body.to_vec(),
    )
    .await
    .map_err(storage_error)?;
    let lock = deployment.lock();
    let mut answer = json!({
        "recipe": name, "components": lock.components, "connections": lock.connections,
        "properties": lock.properties, "version": lock.version, "review": deployment.review(),
    });
    match &deployment {
        crate::ops::Deployment::Running { .. } => {
            answer["status"] = json!("running");
            reply(StatusCode::OK, answer)
        }
        crate::ops::Deployment::Pending { id, .. } => {
            answer["status"] = json!("pending_approval");
            answer["pending"] = json!(id);
            reply(StatusCode::ACCEPTED, answer)
        }
    }
}

async fn get_pending_recipe(
    State(s): State<AppState>,
    Path((ws, name)): Path<(String, String)>,
) -> ApiResult {
    match s
        .storage
        .pending_recipe(&ws, &name)
        .await
        .map_err(storage_error)?
    {
        Some(pending) => reply(StatusCode::OK, json!(pending)),
        None => Err(ApiError::not_found(format!(
            "a version of recipe `{name}` waiting for approval"
        ))),
    }
}

/// Body of an approval.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    /// The id of the waiting version, as its review shows it.
    pending: String,
}

async fn approve_recipe(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((_ws, name)): Path<(String, String)>,
    body: LazyJson<ApproveBody>,
) -> ApiResult {
    let body = body.read(s.config.limits.max_body_bytes).await?;
    crate::ops::approve_recipe(s.storage.as_ref(), &p.as_actor(), &name, &body.pending)
        .await
        .map_err(storage_error)?;
    reply(
        StatusCode::OK,
        json!({ "recipe": name, "status": "running", "approved": body.pending }),
    )
}

async fn get_connection_limits(
    State(s): State<AppState>,
    Path((ws, name)): Path<(String, String)>,
) -> ApiResult {
    let known = s
        .storage
        .list_connections(&ws)
        .await
        .map_err(storage_error)?
        .into_iter()
        .any(|c| c.name == name);
    if !known {
        return Err(ApiError::not_found(format!("connection `{name}`")));
    }
    let limits = s
        .storage
        .connection_limits(&ws)
        .await
        .map_err(storage_error)?
        .remove(&name)
        .unwrap_or_default();
    let suspended = s
        .storage
        .suspended_connections(&ws)
        .await
        .map_err(storage_error)?
        .remove(&name);
    reply(
        StatusCode::OK,
        json!({ "limits": limits, "suspended": suspended }),
    )
}

/// Query of the egress trail.
#[derive(Debug, Deserialize)]
struct UsageQuery {
    /// From (ms since the epoch; default: a day ago).
    from: Option<i64>,
    /// To, excluded (default: now).
    to: Option<i64>,
    /// At most this many rows (default 1000, at most 10000).
    limit: Option<usize>,
}

async fn connection_usage(
    State(s): State<AppState>,
    Path((ws, name)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<UsageQuery>,
) -> ApiResult {
    let now = wrun_store::UnixMillis::now().0;
    let rows = s
        .storage
        .connection_usage(
            &ws,
            Some(&name),
            wrun_store::UnixMillis(q.from.unwrap_or(now - 86_400_000)),
            wrun_store::UnixMillis(q.to.unwrap_or(now + 60_000)),
            q.limit.unwrap_or(1000).min(10_000),
        )
        .await
        .map_err(storage_error)?;
    reply(StatusCode::OK, json!({ "usage": rows }))
}

async fn resume_connection(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((_ws, name)): Path<(String, String)>,
) -> ApiResult {
    if crate::ops::resume_connection(s.storage.as_ref(), &p.as_actor(), &name)
        .await
        .map_err(storage_error)?
    {
        reply(
            StatusCode::OK,
            json!({ "connection": name, "suspended": false }),
        )
    } else {
        Err(ApiError::not_found(format!(
            "a suspension of connection `{name}`"
        )))
    }
}

async fn put_connection_limits(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((_ws, name)): Path<(String, String)>,
    body: LazyJson<crate::storage::ConnectionLimits>,
) -> ApiResult {
    let limits = body.read(s.config.limits.max_body_bytes).await?;
    crate::ops::set_connection_limits(s.storage.as_ref(), &p.as_actor(), &name, limits)
        .await
        .map_err(storage_error)?;
    reply(StatusCode::OK, json!(limits))
}

async fn get_governance(State(s): State<AppState>, Path(ws): Path<String>) -> ApiResult {
    let g = s.storage.governance(&ws).await.map_err(storage_error)?;
    reply(StatusCode::OK, json!(g))
}

async fn put_governance(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path(_ws): Path<String>,
    body: LazyJson<crate::storage::Governance>,
) -> ApiResult {
    let g = body.read(s.config.limits.max_body_bytes).await?;
    crate::ops::set_governance(s.storage.as_ref(), &p.as_actor(), g)
        .await
        .map_err(storage_error)?;
    reply(StatusCode::OK, json!(g))
}

async fn list_signing_keys(State(s): State<AppState>, Path(ws): Path<String>) -> ApiResult {
    let keys = s.storage.signing_keys(&ws).await.map_err(storage_error)?;
    reply(StatusCode::OK, json!({ "keys": keys }))
}

/// Body of a signing key to trust.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustKeyBody {
    /// `wrun-ed25519:<base64>`.
    public_key: String,
}

async fn trust_signing_key(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((_ws, name)): Path<(String, String)>,
    body: LazyJson<TrustKeyBody>,
) -> ApiResult {
    let body = body.read(s.config.limits.max_body_bytes).await?;
    let key =
        crate::ops::trust_signing_key(s.storage.as_ref(), &p.as_actor(), &name, &body.public_key)
            .await
            .map_err(storage_error)?;
    reply(StatusCode::OK, json!(key))
}

async fn revoke_signing_key(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((_ws, name)): Path<(String, String)>,
) -> ApiResult {
    if crate::ops::revoke_signing_key(s.storage.as_ref(), &p.as_actor(), &name)
        .await
        .map_err(storage_error)?
    {
        reply(StatusCode::OK, json!({ "name": name, "revoked": true }))
    } else {
        Err(ApiError::not_found(format!("signing key `{name}`")))
    }
}

async fn get_recipe(
    State(s): State<AppState>,
    Path((ws, name)): Path<(String, String)>,
) -> ApiResult {
    let Some(r) = s.storage.recipe(&ws, &name).await.map_err(storage_error)? else {
        return Err(ApiError::not_found(format!("recipe `{name}`")));
    };
    let pending = s
        .storage
        .pending_recipe(&ws, &name)
        .await
        .map_err(storage_error)?
        .map(|p| p.id);
    reply(
        StatusCode::OK,
        json!({ "recipe": name, "manifest": r.manifest, "components": r.components, "updated_at": r.updated_at,
                "signed_version": r.signed_version, "signer": r.signer, "pending": pending }),
    )
}

async fn delete_recipe(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((ws, name)): Path<(String, String)>,
) -> ApiResult {
    let audit = p.entry("recipe.delete", format!("recipe:{name}"), json!({}));
    if s.storage
        .delete_recipe(&ws, &name, audit)
        .await
        .map_err(storage_error)?
    {
        s.runner.forget(&ws, &name);
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!("recipe `{name}`")))
    }
}

async fn list_triggers(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((ws, name)): Path<(String, String)>,
) -> ApiResult {
    let list = s
        .storage
        .list_triggers(&ws, &name)
        .await
        .map_err(storage_error)?;
    // A webhook id is its URL, a capability to start jobs: readers who may
    // not change recipes see only its first characters.
    let mut list = list;
    if !p.permissions.allows(Resource::Recipes, Access::Write) {
        for t in &mut list {
            if t.kind == TriggerKind::Webhook {
                t.id = public_id(&t.id);
            }
        }
    }
    reply(StatusCode::OK, json!({ "triggers": list }))
}

/// The part of a webhook id that may be shown to readers and written to
/// the audit log: the id is the webhook's URL, a capability, in full.
fn public_id(id: &str) -> String {
    format!("{}…", id.get(..11).unwrap_or(id))
}

/// A random id for a webhook URL or schedule: 128 bits.
fn trigger_id(prefix: &str) -> String {
    format!("{prefix}_{:032x}", rand::random::<u128>())
}

/// Body of webhook creation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookBody {
    /// Environment the jobs run in.
    environment: String,
    /// Whether deliveries must carry an HMAC signature (default true).
    #[serde(default = "yes")]
    signed: bool,
    /// Answer each delivery with its job's result (an endpoint recipe)
    /// instead of 202.
    #[serde(default)]
    respond: Option<RespondBody>,
}

/// How a webhook in response mode waits; see [`crate::endpoint`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RespondBody {
    /// Milliseconds to wait for the job (default 10 s, at most the
    /// operator's `max_respond_timeout_ms`).
    #[serde(default = "default_respond_ms")]
    timeout_ms: u64,
    /// `continue` (default: the job goes on, its result is in the history)
    /// or `cancel`.
    #[serde(default)]
    on_timeout: OnTimeout,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum OnTimeout {
    #[default]
    Continue,
    Cancel,
}

fn default_respond_ms() -> u64 {
    10_000
}

fn yes() -> bool {
    true
}

/// Checks that a recipe is deployed in the workspace.
async fn require_recipe(s: &AppState, ws: &str, name: &str) -> Result<(), ApiError> {
    match s.storage.recipe(ws, name).await.map_err(storage_error)? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found(format!("recipe `{name}`"))),
    }
}

async fn create_webhook(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((ws, name)): Path<(String, String)>,
    body: LazyJson<WebhookBody>,
) -> ApiResult {
    let body = body.read(s.config.limits.max_body_bytes).await?;
    require_recipe(&s, &ws, &name).await?;
    crate::store_sqlite::check_name("environment", &body.environment)
        .map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))?;
    let respond = match &body.respond {
        None => None,
        Some(r) => {
            let max = s.config.webhooks.max_respond_timeout_ms;
            if r.timeout_ms == 0 || r.timeout_ms > max {
                return Err(ApiError::bad_request(
                    "invalid_timeout",
                    format!(
                        "respond.timeout_ms must be between 1 and {max} (the operator's limit)"
                    ),
                ));
            }
            Some(RespondMode {
                timeout_ms: r.timeout_ms,
                cancel_on_timeout: r.on_timeout == OnTimeout::Cancel,
            })
        }
    };
    let id = trigger_id("wh");
    let secret = body.signed.then(|| {
        let bytes: [u8; 32] = rand::random();
        Zeroizing::new(bytes.to_vec())
    });
    let secret_hex = secret
        .as_ref()
        .map(|s| Zeroizing::new(s.iter().map(|b| format!("{b:02x}")).collect::<String>()));
    let record = TriggerRecord {
        id: id.clone(),
        workspace: ws.clone(),
        recipe: name.clone(),
        kind: TriggerKind::Webhook,
        environment: body.environment,
        // The secret is the hex text: what the sender configures.
        secret: secret_hex
            .as_ref()
            .map(|h| Zeroizing::new(h.as_bytes().to_vec())),
        signed: body.signed,
        cron: None,
        timezone: None,
        input: None,
        last_slot: None,
        created_at: UnixMillis::now(),
        respond,
    };
    let audit = p.entry(
        "webhook.create",
        format!("recipe:{name}/webhook:{}", public_id(&id)),
        json!({ "signed": body.signed, "respond": respond }),
    );
    s.storage
        .create_trigger(record, audit)
        .await
        .map_err(storage_error)?;
    let url = format!("{}/hooks/{id}", s.config.public_url.trim_end_matches('/'));
    reply(
        StatusCode::CREATED,
        json!({
            "id": id,
            "url": url,
            "secret": secret_hex.as_ref().map(|h| h.as_str()),
            "signature_header": signature::HEADER_NAME,
            "respond": respond,
        }),
    )
}

/// Body of schedule creation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleBody {
    /// Cron expression (5 or 6 fields).
    cron: String,
    /// IANA time zone (default UTC).
    #[serde(default = "utc")]
    timezone: String,
    /// Environment the jobs run in.
    environment: String,
    /// The trigger input of each job.
    #[serde(default)]
    input: Value,
}

fn utc() -> String {
    "UTC".into()
}

async fn create_schedule(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((ws, name)): Path<(String, String)>,
    body: LazyJson<ScheduleBody>,
) -> ApiResult {
    let body = body.read(s.config.limits.max_body_bytes).await?;
    require_recipe(&s, &ws, &name).await?;
    crate::store_sqlite::check_name("environment", &body.environment)
        .map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))?;
    let schedule = Schedule::parse(&body.cron, &body.timezone)
        .map_err(|e| ApiError::bad_request("invalid_schedule", e.to_string()))?;
    let now = UnixMillis::now();
    // The shortest gap over the next slots (irregular expressions too).
    let min = s.config.workers.min_schedule_interval_secs;
    let mut slot = schedule.next_after(now);
    for _ in 0..64 {
        let (Some(a), Some(b)) = (slot, slot.and_then(|a| schedule.next_after(a))) else {
            break;
        };
        let gap = i64::try_from(b.since(a).as_secs()).unwrap_or(i64::MAX);
        if gap < min {
            return Err(ApiError::bad_request(
                "schedule_too_frequent",
                format!(
                    "`{}` fires {} s apart; the operator allows at least {min} s",
                    body.cron, gap
                ),
            ));
        }
        slot = Some(b);
    }
    let id = trigger_id("sch");
    let record = TriggerRecord {
        id: id.clone(),
        workspace: ws.clone(),
        recipe: name.clone(),
        kind: TriggerKind::Schedule,
        environment: body.environment,
        secret: None,
        signed: false,
        cron: Some(body.cron.clone()),
        timezone: Some(body.timezone.clone()),
        input: Some(body.input),
        last_slot: None,
        created_at: now,
        respond: None,
    };
    let audit = p.entry(
        "schedule.create",
        format!("recipe:{name}/schedule:{id}"),
        json!({ "cron": body.cron, "timezone": body.timezone }),
    );
    s.storage
        .create_trigger(record, audit)
        .await
        .map_err(storage_error)?;
    reply(
        StatusCode::CREATED,
        json!({ "id": id, "next": schedule.next_after(now) }),
    )
}

async fn delete_trigger(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((ws, id)): Path<(String, String)>,
) -> ApiResult {
    let audit = p.entry("trigger.delete", format!("trigger:{id}"), json!({}));
    if s.storage
        .delete_trigger(&ws, &id, audit)
        .await
        .map_err(storage_error)?
    {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("trigger"))
    }
}

/// Body of a manual run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunBody {
    /// Environment to run in.
    environment: String,
    /// The trigger payload.
    #[serde(default)]
    input: Value,
}

async fn run_recipe(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((ws, name)): Path<(String, String)>,
    body: LazyJson<RunBody>,
) -> ApiResult {
    let body = body.read(s.config.limits.max_body_bytes).await?;
    require_recipe(&s, &ws, &name).await?;
    crate::store_sqlite::check_name("environment", &body.environment)
        .map_err(|e| ApiError::bad_request("invalid_name", e.to_string()))?;
    s.admit()?;
    let job = NewJob {
        id: new_job_id(),
        workspace: ws.clone(),
        recipe: name.clone(),
        environment: body.environment,
        trigger_kind: "manual".into(),
        payload: body.input,
        idempotency_key: None,
        rerun_of: None,
        created_at: UnixMillis::now(),
    };
    let audit = p.entry(
        "job.run",
        format!("recipe:{name}/job:{}", job.id),
        json!({}),
    );
    let (Enqueued::New(id) | Enqueued::Duplicate(id)) = s
        .storage
        .enqueue(job, Some(audit))
        .await
        .map_err(storage_error)?;
    s.runner.submit();
    reply(StatusCode::ACCEPTED, json!({ "job": id }))
}

async fn list_jobs(
    State(s): State<AppState>,
    Path(ws): Path<String>,
    Query(filter): Query<JobFilter>,
) -> ApiResult {
    let jobs = s
        .storage
        .list_jobs(&ws, filter)
        .await
        .map_err(storage_error)?;
    reply(StatusCode::OK, json!({ "jobs": jobs }))
}

/// Query of job statistics.
#[derive(Debug, Deserialize)]
struct StatsQuery {
    since: i64,
    #[serde(default = "hour_ms")]
    bucket_ms: i64,
}

fn hour_ms() -> i64 {
    3_600_000
}

async fn job_stats(
    State(s): State<AppState>,
    Path(ws): Path<String>,
    Query(q): Query<StatsQuery>,
) -> ApiResult {
    let buckets = s
        .storage
        .job_stats(&ws, UnixMillis(q.since), q.bucket_ms)
        .await
        .map_err(storage_error)?;
    reply(StatusCode::OK, json!({ "buckets": buckets }))
}

async fn get_job(State(s): State<AppState>, Path((ws, id)): Path<(String, String)>) -> ApiResult {
    match s.storage.job(&ws, &id).await.map_err(storage_error)? {
        Some(job) => reply(
            StatusCode::OK,
            serde_json::to_value(job).map_err(|_| ApiError::internal())?,
        ),
        None => Err(ApiError::not_found(format!("job `{id}`"))),
    }
}

async fn cancel_job(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((ws, id)): Path<(String, String)>,
) -> ApiResult {
    let audit = p.entry("job.cancel", format!("job:{id}"), json!({}));
    match s
        .storage
        .cancel_job(&ws, &id, audit)
        .await
        .map_err(storage_error)?
    {
        Some(state) => {
            s.runner.cancel(&id);
            reply(StatusCode::OK, json!({ "job": id, "state": state }))
        }
        None => Err(ApiError::not_found(format!("job `{id}`"))),
    }
}

async fn rerun_job(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((ws, id)): Path<(String, String)>,
) -> ApiResult {
    let Some(old) = s.storage.job(&ws, &id).await.map_err(storage_error)? else {
        return Err(ApiError::not_found(format!("job `{id}`")));
    };
    if !old.summary.state.is_final() {
        return Err(ApiError::conflict(
            "job_not_ended",
            "the job has not ended; cancel it first or wait",
        ));
    }
    if old.summary.erased_at.is_some() {
        return Err(ApiError::conflict(
            "job_erased",
            "the job's content was erased for a data subject; there is no input to run again",
        ));
    }
    s.admit()?;
    let job = NewJob {
        id: new_job_id(),
        workspace: ws.clone(),
        recipe: old.summary.recipe.clone(),
        environment: old.summary.environment.clone(),
        trigger_kind: "rerun".into(),
        payload: old.input,
        idempotency_key: None,
        rerun_of: Some(id.clone()),
        created_at: UnixMillis::now(),
    };
    let audit = p.entry(
        "job.rerun",
        format!("job:{id}"),
        json!({ "new_job": job.id }),
    );
    let (Enqueued::New(new_id) | Enqueued::Duplicate(new_id)) = s
        .storage
        .enqueue(job, Some(audit))
        .await
        .map_err(storage_error)?;
    s.runner.submit();
    reply(
        StatusCode::ACCEPTED,
        json!({ "job": new_id, "rerun_of": id }),
    )
}

async fn delete_jobs(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path(ws): Path<String>,
    criteria: LazyJson<DeleteCriteria>,
) -> ApiResult {
    let criteria = criteria.read(s.config.limits.max_body_bytes).await?;
    if criteria.recipe.is_none()
        && criteria.from.is_none()
        && criteria.to.is_none()
        && criteria.field.is_none()
    {
        return Err(ApiError::bad_request(
            "no_criteria",
            "give at least one of recipe, from, to, field (deleting everything needs an explicit range)",
        ));
    }
    if criteria.field.is_some() != criteria.value.is_some() {
        return Err(ApiError::bad_request(
            "invalid_criteria",
            "`field` and `value` go together",
        ));
    }
    if let Some(field) = &criteria.field
        && !field.starts_with('/')
    {
        return Err(ApiError::bad_request(
            "invalid_criteria",
            "`field` is a JSON pointer into the trigger payload, like /customer/email",
        ));
    }
    // The audit entry names the criteria but not the value searched for
    // (it is personal data by definition).
    let audit = p.entry(
        "jobs.delete",
        "jobs",
        json!({ "recipe": criteria.recipe, "from": criteria.from, "to": criteria.to, "field": criteria.field }),
    );
    let n = s
        .storage
        .delete_jobs(&ws, criteria, audit)
        .await
        .map_err(storage_error)?;
    reply(StatusCode::OK, json!({ "deleted": n }))
}

/// The body of `POST .../jobs/erase`. Not `Debug`: the subject is
/// personal data and stays out of every log.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EraseRequest {
    /// The data subject: an e-mail address, a name, an identifier.
    subject: String,
    /// A request or ticket id kept in the audit entry.
    reference: Option<String>,
    /// Only count what would be erased.
    #[serde(default)]
    dry_run: bool,
}

async fn erase_jobs(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path(_ws): Path<String>,
    request: LazyJson<EraseRequest>,
) -> ApiResult {
    let request = request.read(s.config.limits.max_body_bytes).await?;
    let report = crate::ops::erase_subject(
        s.storage.as_ref(),
        &p.as_actor(),
        &request.subject,
        request.reference.as_deref(),
        request.dry_run,
    )
    .await
    .map_err(storage_error)?;
    reply(StatusCode::OK, json!(report))
}

async fn list_connections(State(s): State<AppState>, Path(ws): Path<String>) -> ApiResult {
    let list = s
        .storage
        .list_connections(&ws)
        .await
        .map_err(storage_error)?;
    reply(StatusCode::OK, json!({ "connections": list }))
}

/// Body of a connection write. `Debug` never shows the value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionBody {
    /// The new value; without one, the stored value is kept and re-sealed
    /// for the new hosts and placement.
    #[serde(default)]
    value: Option<Zeroizing<String>>,
    hosts: Vec<String>,
    #[serde(default = "bearer")]
    placement: String,
}

fn bearer() -> String {
    "header:Authorization=Bearer {}".into()
}

async fn put_connection(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((_ws, name)): Path<(String, String)>,
    body: LazyJson<ConnectionBody>,
) -> ApiResult {
    let body = body.read(s.config.limits.max_body_bytes).await?;
    let value = match body.value {
        Some(value) => crate::ops::ValueChange::Put(value),
        None => crate::ops::ValueChange::Keep,
    };
    crate::ops::put_connection(
        s.storage.as_ref(),
        &p.as_actor(),
        &name,
        &body.hosts,
        &body.placement,
        value,
    )
    .await
    .map_err(storage_error)?;
    reply(StatusCode::OK, json!({ "connection": name }))
}

async fn delete_connection(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((_ws, name)): Path<(String, String)>,
) -> ApiResult {
    if crate::ops::delete_connection(s.storage.as_ref(), &p.as_actor(), &name)
        .await
        .map_err(storage_error)?
    {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!("connection `{name}`")))
    }
}

/// Body of an OAuth2 connection write. `Debug` never shows the secret.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OAuthConnectionBody {
    hosts: Vec<String>,
    #[serde(default = "bearer")]
    placement: String,
    grant: String,
    token_url: String,
    #[serde(default)]
    authorize_url: Option<String>,
    client_id: String,
    client_secret: Zeroizing<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

async fn put_oauth_connection(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((ws, name)): Path<(String, String)>,
    body: LazyJson<OAuthConnectionBody>,
) -> ApiResult {
    let body = body.read(s.config.limits.max_body_bytes).await?;
    let grant = wrun_runtime::oauth::GrantKind::parse(&body.grant).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_oauth",
            format!(
                "grant `{}` is not supported: use `client_credentials` or `authorization_code`",
                body.grant.escape_debug()
            ),
        )
    })?;
    let input = crate::ops::OAuthConnectionInput {
        name: &name,
        hosts: &body.hosts,
        placement: &body.placement,
        config: wrun_runtime::oauth::OAuthClientConfig {
            grant,
            token_url: body.token_url.clone(),
            authorize_url: body.authorize_url.clone(),
            client_id: body.client_id.clone(),
            scopes: body.scopes.clone(),
        },
        client_secret: body.client_secret,
        replace: true,
    };
    crate::ops::put_oauth_connection(s.storage.as_ref(), &p.as_actor(), input)
        .await
        .map_err(storage_error)?;
    // A client-credentials connection gets its first token now, so a wrong
    // client or endpoint shows here rather than in a job.
    let mut answer = json!({ "connection": name });
    if grant == wrun_runtime::oauth::GrantKind::ClientCredentials
        && let Some(refresher) = s.storage.oauth_refresher()
        && let Err(e) = crate::oauth::fresh_token(s.storage.as_ref(), &refresher, &ws, &name).await
    {
        answer["error"] = json!(e);
    }
    let status = s
        .storage
        .oauth_status(&ws, &name)
        .await
        .map_err(storage_error)?;
    answer["oauth2"] = serde_json::to_value(status).map_err(|_| ApiError::internal())?;
    reply(StatusCode::OK, answer)
}

async fn get_oauth_connection(
    State(s): State<AppState>,
    Path((ws, name)): Path<(String, String)>,
) -> ApiResult {
    let status = s
        .storage
        .oauth_status(&ws, &name)
        .await
        .map_err(storage_error)?
        .ok_or_else(|| ApiError::not_found(format!("OAuth2 connection `{name}`")))?;
    reply(
        StatusCode::OK,
        json!({ "connection": name, "oauth2": status }),
    )
}

/// The daemon's OAuth2 redirect URI.
fn oauth_redirect_uri(config: &DaemonConfig) -> String {
    format!("{}/oauth/callback", config.public_url.trim_end_matches('/'))
}

async fn authorize_connection(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((_ws, name)): Path<(String, String)>,
) -> ApiResult {
    let redirect = oauth_redirect_uri(&s.config);
    let url = crate::ops::start_authorization(s.storage.as_ref(), &p.as_actor(), &name, &redirect)
        .await
        .map_err(storage_error)?;
    reply(
        StatusCode::OK,
        json!({ "connection": name, "authorize_url": url, "redirect_uri": redirect }),
    )
}

/// Query of the OAuth2 redirect.
#[derive(Deserialize)]
struct OAuthCallback {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

async fn oauth_callback(
    State(s): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Query(query): Query<OAuthCallback>,
) -> ApiResult {
    let ip = client_ip(addr);
    let Some(state) = query.state.filter(|st| !st.is_empty() && st.len() <= 512) else {
        s.limit_failure(ip)?;
        return Err(ApiError::bad_request(
            "invalid_callback",
            "this is not an OAuth2 redirect: it has no state",
        ));
    };
    let Some(refresher) = s.storage.oauth_refresher() else {
        return Err(ApiError::internal());
    };
    let result = crate::ops::finish_authorization(
        s.storage.as_ref(),
        refresher.tokens(),
        &ip.to_string(),
        &state,
        query.code.as_deref(),
        query.error.as_deref(),
    )
    .await;
    match result {
        Ok((workspace, name)) => reply(
            StatusCode::OK,
            json!({ "workspace": workspace, "connection": name, "state": "ready" }),
        ),
        Err(crate::ops::CallbackError::UnknownState) => {
            // Guessing states is limited per client address; past the
            // budget, refusals are answered 429 and not audited one by one.
            s.limit_failure(ip)?;
            crate::ops::audit_refused_callback(s.storage.as_ref(), &ip.to_string())
                .await
                .map_err(storage_error)?;
            Err(ApiError::bad_request(
                "invalid_state",
                crate::ops::CallbackError::UnknownState.to_string(),
            ))
        }
        Err(crate::ops::CallbackError::Storage(e)) => Err(storage_error(e)),
        Err(e) => Err(ApiError::bad_request("authorization_failed", e.to_string())),
    }
}

async fn get_environment(
    State(s): State<AppState>,
    Path((ws, env)): Path<(String, String)>,
) -> ApiResult {
    let view = s
        .storage
        .environment(&ws, &env)
        .await
        .map_err(storage_error)?;
    reply(
        StatusCode::OK,
        serde_json::to_value(view).map_err(|_| ApiError::internal())?,
    )
}

/// Applies an environment change for a principal with write access.
async fn change_env(s: &AppState, p: &Principal, env: &str, change: EnvChange) -> ApiResult {
    crate::ops::change_environment(s.storage.as_ref(), &p.as_actor(), env, change)
        .await
        .map_err(storage_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Body of a property write.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PropertyBody {
    value: String,
}

async fn set_property(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((_ws, env, name)): Path<(String, String, String)>,
    body: LazyJson<PropertyBody>,
) -> ApiResult {
    let limit = s.config.limits.max_body_bytes;
    let body = body.read(limit).await?;
    change_env(&s, &p, &env, EnvChange::SetProperty(name, body.value)).await
}

async fn remove_property(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((_ws, env, name)): Path<(String, String, String)>,
) -> ApiResult {
    change_env(&s, &p, &env, EnvChange::RemoveProperty(name)).await
}

/// Body of a binding.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BindBody {
    connection: String,
}

async fn bind(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((_ws, env, logical)): Path<(String, String, String)>,
    body: LazyJson<BindBody>,
) -> ApiResult {
    let limit = s.config.limits.max_body_bytes;
    let body = body.read(limit).await?;
    change_env(&s, &p, &env, EnvChange::Bind(logical, body.connection)).await
}

async fn unbind(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((_ws, env, logical)): Path<(String, String, String)>,
) -> ApiResult {
    change_env(&s, &p, &env, EnvChange::Unbind(logical)).await
}

async fn list_tokens(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path(ws): Path<String>,
) -> ApiResult {
    let mut tokens = s.storage.list_tokens(&ws).await.map_err(storage_error)?;
    if !p.admin {
        tokens.retain(|t| t.owner == p.subject);
    }
    reply(StatusCode::OK, json!({ "tokens": tokens }))
}

/// Body of token creation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    /// A label.
    name: String,
    /// Scopes like `jobs:read`, `recipes:write`, `*:read`.
    scopes: Vec<String>,
    /// Lifetime in seconds (mandatory, bounded by the operator).
    expires_in: u64,
    /// CIDRs the token may be used from.
    #[serde(default)]
    allow_ips: Vec<String>,
    /// Owner (admins only; default: the caller).
    owner: Option<String>,
}

/// Checks a token request (scopes, lifetime within the operator's bound,
/// allowlist); shared by the API and `wrun token create`.
pub fn validate_token_request(
    scopes: &[String],
    expires_in: u64,
    max_lifetime: u64,
    allow_ips: &[String],
) -> Result<(PermissionSet, IpAllowlist), ApiError> {
    let scopes = PermissionSet::parse(scopes)
        .map_err(|e| ApiError::bad_request("invalid_scopes", e.to_string()))?;
    if expires_in == 0 || expires_in > max_lifetime {
        return Err(ApiError::bad_request(
            "invalid_expiry",
            format!("expires_in must be between 1 and {max_lifetime} seconds"),
        ));
    }
    let allow = IpAllowlist::parse(allow_ips)
        .map_err(|e| ApiError::bad_request("invalid_allowlist", e.to_string()))?;
    Ok((scopes, allow))
}

async fn create_token(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path(ws): Path<String>,
    body: LazyJson<TokenBody>,
) -> ApiResult {
    let body = body.read(s.config.limits.max_body_bytes).await?;
    let owner = body.owner.clone().unwrap_or_else(|| p.subject.clone());
    if owner != p.subject && !p.admin {
        return Err(ApiError::forbidden(
            "only an admin may create a token for another member",
        ));
    }
    if s.storage
        .member_role(&ws, &owner)
        .await
        .map_err(storage_error)?
        .is_none()
    {
        return Err(ApiError::bad_request(
            "unknown_member",
            format!("`{owner}` is not a member of this workspace"),
        ));
    }
    let (scopes, allow) = validate_token_request(
        &body.scopes,
        body.expires_in,
        s.config.limits.token_max_lifetime_secs,
        &body.allow_ips,
    )?;
    // A token cannot carry more than its creator may do.
    if !scopes.is_subset_of(p.permissions) {
        return Err(ApiError::forbidden(
            "a token cannot have scopes its creator lacks",
        ));
    }
    let token = NewToken::generate();
    let now = UnixMillis::now();
    let record = TokenRecord {
        id: token.id.clone(),
        workspace: ws.clone(),
        name: body.name.clone(),
        hash: token.hash,
        owner: owner.clone(),
        creator: p.subject.clone(),
        scopes,
        allow_ips: allow.to_strings(),
        created_at: now,
        expires_at: now.saturating_add(std::time::Duration::from_secs(body.expires_in)),
        revoked_at: None,
        last_used_at: None,
        last_used_ip: None,
    };
    let audit = p.entry(
        "token.create",
        format!("token:{}", token.id),
        json!({ "owner": owner, "scopes": scopes.to_strings(), "expires_at": record.expires_at, "allow_ips": record.allow_ips }),
    );
    let expires_at = record.expires_at;
    s.storage
        .create_token(record, audit)
        .await
        .map_err(storage_error)?;
    reply(
        StatusCode::CREATED,
        json!({ "id": token.id, "token": token.display.as_str(), "owner": owner, "expires_at": expires_at, "scopes": scopes.to_strings() }),
    )
}

async fn revoke_token(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((ws, id)): Path<(String, String)>,
) -> ApiResult {
    let tokens = s.storage.list_tokens(&ws).await.map_err(storage_error)?;
    let Some(t) = tokens.iter().find(|t| t.id == id) else {
        return Err(ApiError::not_found("token"));
    };
    if t.owner != p.subject && !p.admin {
        return Err(ApiError::not_found("token"));
    }
    let audit = p.entry(
        "token.revoke",
        format!("token:{id}"),
        json!({ "owner": t.owner }),
    );
    s.storage
        .revoke_token(&ws, &id, audit)
        .await
        .map_err(storage_error)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list_members(State(s): State<AppState>, Path(ws): Path<String>) -> ApiResult {
    let list = s.storage.list_members(&ws).await.map_err(storage_error)?;
    reply(StatusCode::OK, json!({ "members": list }))
}

/// Body of a member change.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberBody {
    role: String,
}

async fn set_member(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((ws, subject)): Path<(String, String)>,
    body: LazyJson<MemberBody>,
) -> ApiResult {
    let body = body.read(s.config.limits.max_body_bytes).await?;
    if subject.is_empty() || subject.len() > 256 || subject.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_subject",
            "a subject is 1 to 256 printable characters",
        ));
    }
    // Nobody hands out more than they hold: the role's permissions must be
    // within the caller's, and only an admin makes admins.
    let granted = s
        .storage
        .role_permissions(&ws, &body.role)
        .await
        .map_err(storage_error)?
        .ok_or_else(|| {
            ApiError::bad_request(
                "unknown_role",
                format!("role `{}` does not exist", body.role),
            )
        })?;
    if !granted.is_subset_of(p.permissions) || (body.role == "admin" && !p.admin) {
        return Err(ApiError::forbidden(
            "a member cannot be given a role with permissions the caller lacks",
        ));
    }
    // Nor takes a role away from someone who holds more than they do.
    let before = current_role_within_reach(&s, &p, &ws, &subject).await?;
    let audit = p.entry(
        "member.role",
        format!("member:{subject}"),
        json!({ "from": before, "to": body.role }),
    );
    s.storage
        .set_member(&ws, &subject, &body.role, audit)
        .await
        .map_err(member_change_error)?;
    reply(
        StatusCode::OK,
        json!({ "subject": subject, "role": body.role }),
    )
}

async fn remove_member(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((ws, subject)): Path<(String, String)>,
) -> ApiResult {
    if current_role_within_reach(&s, &p, &ws, &subject)
        .await?
        .is_none()
    {
        return Err(ApiError::not_found("member"));
    }
    let audit = p.entry("member.remove", format!("member:{subject}"), json!({}));
    if s.storage
        .remove_member(&ws, &subject, audit)
        .await
        .map_err(member_change_error)?
    {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("member"))
    }
}

/// The current role of `subject`, if a member, after checking that the
/// caller holds everything that role grants (and is an admin to touch an
/// admin): nobody removes or demotes someone who outranks them.
///
/// # Errors
///
/// 403 if the member's role grants more than the caller holds.
async fn current_role_within_reach(
    s: &AppState,
    p: &Principal,
    ws: &str,
    subject: &str,
) -> Result<Option<String>, ApiError> {
    let Some(role) = s
        .storage
        .member_role(ws, subject)
        .await
        .map_err(storage_error)?
    else {
        return Ok(None);
    };
    let held = s
        .storage
        .role_permissions(ws, &role)
        .await
        .map_err(storage_error)?
        .unwrap_or(PermissionSet::ALL);
    if !held.is_subset_of(p.permissions) || (role == "admin" && !p.admin) {
        return Err(ApiError::forbidden(format!(
            "`{subject}` has role `{role}`, which grants more than this credential holds"
        )));
    }
    Ok(Some(role))
}

/// Maps a member change's storage error; a conflict is the last admin.
fn member_change_error(e: StorageError) -> ApiError {
    match e {
        StorageError::Conflict(msg) => ApiError::conflict("last_admin", msg),
        other => storage_error(other),
    }
}

async fn list_roles(State(s): State<AppState>, Path(ws): Path<String>) -> ApiResult {
    let roles = s.storage.list_roles(&ws).await.map_err(storage_error)?;
    reply(StatusCode::OK, json!({ "roles": roles }))
}

/// Body of a custom role.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    permissions: Vec<String>,
}

async fn put_role(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((ws, name)): Path<(String, String)>,
    body: LazyJson<RoleBody>,
) -> ApiResult {
    let body = body.read(s.config.limits.max_body_bytes).await?;
    if !auth::valid_role_name(&name) {
        return Err(ApiError::bad_request(
            "invalid_name",
            "a role name is 1 to 64 of a-z 0-9 _ -",
        ));
    }
    let perms = PermissionSet::parse(&body.permissions)
        .map_err(|e| ApiError::bad_request("invalid_scopes", e.to_string()))?;
    if !perms.is_subset_of(p.permissions) {
        return Err(ApiError::forbidden(
            "a role cannot have permissions the caller lacks",
        ));
    }
    let audit = p.entry(
        "role.put",
        format!("role:{name}"),
        json!({ "permissions": perms.to_strings() }),
    );
    s.storage
        .put_role(&ws, &name, perms, audit)
        .await
        .map_err(storage_error)?;
    reply(
        StatusCode::OK,
        json!({ "role": name, "permissions": perms.to_strings() }),
    )
}

async fn delete_role(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path((ws, name)): Path<(String, String)>,
) -> ApiResult {
    let audit = p.entry("role.delete", format!("role:{name}"), json!({}));
    if s.storage
        .delete_role(&ws, &name, audit)
        .await
        .map_err(storage_error)?
    {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found(format!("role `{name}`")))
    }
}

async fn get_settings(State(s): State<AppState>, Path(ws): Path<String>) -> ApiResult {
    settings_of(&s, &ws).await
}

/// A workspace's settings as the API shows them.
async fn settings_of(s: &AppState, ws: &str) -> ApiResult {
    let days = s.storage.retention(ws).await.map_err(storage_error)?;
    let idle = s
        .storage
        .session_idle_secs(ws)
        .await
        .map_err(storage_error)?;
    reply(
        StatusCode::OK,
        json!({ "retention_days": days, "session_idle_secs": idle }),
    )
}

/// Body of a settings change: a field left out is left as it is; `null`
/// sets the default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SettingsBody {
    /// Days to keep ended jobs (`null`: forever).
    #[serde(default, deserialize_with = "present")]
    retention_days: Option<Option<u32>>,
    /// Seconds a console session may stay unused (`null`: 30 minutes).
    #[serde(default, deserialize_with = "present")]
    session_idle_secs: Option<Option<u32>>,
}

/// A field that is present (even as `null`) is `Some`.
fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

async fn put_settings(
    State(s): State<AppState>,
    Authorized(p): Authorized,
    Path(ws): Path<String>,
    body: LazyJson<SettingsBody>,
) -> ApiResult {
    let body = body.read(s.config.limits.max_body_bytes).await?;
    if let Some(days) = body.retention_days {
        if days == Some(0) {
            return Err(ApiError::bad_request(
                "invalid_retention",
                "retention_days is at least 1, or null",
            ));
        }
        let audit = p.entry(
            "settings.retention",
            "settings",
            json!({ "retention_days": days }),
        );
        s.storage
            .set_retention(&ws, days, audit)
            .await
            .map_err(storage_error)?;
    }
    if let Some(secs) = body.session_idle_secs {
        let audit = p.entry(
            "settings.session_idle",
            "settings",
            json!({ "session_idle_secs": secs }),
        );
        s.storage
            .set_session_idle_secs(&ws, secs, audit)
            .await
            .map_err(storage_error)?;
    }
    settings_of(&s, &ws).await
}

/// Query of an audit read.
#[derive(Debug, Deserialize)]
struct AuditQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

async fn read_audit(
    State(s): State<AppState>,
    Path(ws): Path<String>,
    Query(q): Query<AuditQuery>,
) -> ApiResult {
    let entries = s
        .storage
        .read_audit(&ws, q.after, q.limit.unwrap_or(100).clamp(1, 1000))
        .await
        .map_err(storage_error)?;
    reply(StatusCode::OK, json!({ "entries": entries }))
}

async fn verify_audit(State(s): State<AppState>) -> ApiResult {
    let report = s.storage.verify_audit().await.map_err(storage_error)?;
    reply(
        StatusCode::OK,
        json!({
            "intact": report.is_intact(),
            "entries": report.entries,
            "verified": report.verified,
            "problems": report.problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "omitted": report.omitted,
        }),
    )
}

/// Keeps `JobState` in the document's vocabulary.
#[allow(dead_code, reason = "documents the job states the API returns")]
const JOB_STATES: [JobState; 5] = [
    JobState::Queued,
    JobState::Running,
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
];

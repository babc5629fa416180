//! The web console under `/ui`: server-rendered pages over the API.
//!
//! The console holds no authority of its own. A page or a form turns into
//! requests to the API's own router, made in process on the caller's
//! behalf: the session stands for a [`Principal`], passed to the API as a
//! [`ConsoleCaller`] extension in place of a bearer token, and the API's
//! route table checks its permission, runs the same handler and writes the
//! same audit entry as for any client. A button a role may not use is not
//! shown, but hiding it is a courtesy: the API refuses the request anyway.
//!
//! Sessions ([`wrun_store::sessions`]): the cookie `__Host-wrun_session`
//! (`HttpOnly`, `Secure`, `SameSite=Strict`, path `/`) holds 32 random
//! bytes; the store keeps their SHA-256. A session signed in with an API
//! token re-checks the token on every request (revoked, expired, allowed
//! addresses, its owner still a member) and is deleted with the token or
//! the member; every session ends after its workspace's idle timeout and
//! after `[console] session_max_hours`. Every form carries a CSRF token
//! derived from the session secret (never stored), and a request whose
//! `Sec-Fetch-Site` or `Origin` says it comes from another site is refused.
//! Pages are sent with a Content-Security-Policy that allows no script at
//! all and styles only from `/ui/static/`, `Cache-Control: no-store`, and
//! `Server-Timing` with the time spent on the server.

mod oidc;
mod views;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Form, Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use maud::Markup;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tower::ServiceExt as _;
use wrun_store::UnixMillis;
use wrun_store::audit::{Entry, Outcome};
use wrun_store::sessions::{ConsoleSession, SessionKind};

use crate::api::{AppState, ConsoleCaller, Principal, client_ip};
use crate::auth::Access;
use crate::auth::Resource;

/// The session cookie.
const SESSION_COOKIE: &str = "__Host-wrun_session";
/// The cookie binding a sign-in form to the browser that loaded it.
const LOGIN_COOKIE: &str = "__Host-wrun_login";
/// How often a session's last use is written (its idle timeout is counted
/// from there, so it is at most this much early).
const TOUCH_EVERY: Duration = Duration::from_secs(15);
/// The largest API answer the console reads.
const MAX_API_ANSWER: usize = 64 << 20;

/// Content-Security-Policy of every console response: no script, no
/// frame, no plugin; styles and images only from the daemon; forms post
/// only to it.
const CSP: &str = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
                   frame-ancestors 'none'; base-uri 'none'";

/// The console's state: the API router it calls, the daemon's state.
pub(crate) struct Console {
    api: Router,
    state: AppState,
    oidc: Option<oidc::Oidc>,
}

/// A signed-in caller of a console request.
pub(crate) struct Ctx {
    /// Who the session stands for.
    pub(crate) principal: Principal,
    /// The CSRF token forms of this session carry.
    pub(crate) csrf: String,
    /// The client.
    addr: SocketAddr,
}

impl Ctx {
    /// Whether the caller holds `access` on `resource` (to show a form; the
    /// API decides).
    pub(crate) fn may(&self, resource: Resource, access: Access) -> bool {
        self.principal.permissions.allows(resource, access)
    }
}

/// What every console handler starts from: the console, the request's
/// headers and its client.
pub(crate) struct Visit {
    /// The console.
    pub(crate) c: Arc<Console>,
    /// The request's headers (cookies, `Sec-Fetch-Site`, `Origin`).
    pub(crate) headers: HeaderMap,
    /// The client.
    pub(crate) addr: SocketAddr,
}

impl axum::extract::FromRequestParts<Arc<Console>> for Visit {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<Console>,
    ) -> Result<Visit, Response> {
        let Some(ConnectInfo(addr)) = parts.extensions.get::<ConnectInfo<SocketAddr>>().copied()
        else {
            return Err(error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the request has no client address",
            ));
        };
        Ok(Visit {
            c: Arc::clone(state),
            headers: parts.headers.clone(),
            addr,
        })
    }
}

/// A page's signed-in caller: a request without a valid session is sent
/// to the sign-in page before the handler runs.
pub(crate) struct Signed {
    /// The console.
    pub(crate) c: Arc<Console>,
    /// The caller.
    pub(crate) ctx: Ctx,
}

impl axum::extract::FromRequestParts<Arc<Console>> for Signed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &Arc<Console>,
    ) -> Result<Signed, Response> {
        let Visit { c, headers, addr } = Visit::from_request_parts(parts, state).await?;
        let ctx = c.caller(&headers, addr).await?;
        Ok(Signed { c, ctx })
    }
}

/// A refused or failed API call, as the page shows it.
#[derive(Debug)]
pub(crate) struct Failure {
    status: StatusCode,
    message: String,
}

/// The console's routes, over `api` (the API router with its state).
///
/// # Errors
///
/// An OpenID Connect configuration that is not usable (its client secret
/// variable unset).
pub(crate) fn router(api: Router, state: AppState) -> anyhow::Result<Router> {
    let oidc = match &state.config.console.oidc {
        Some(config) => Some(oidc::Oidc::new(config, &state.config.public_url)?),
        None => None,
    };
    let limits = state.config.limits.clone();
    let deadline = |secs: u64| {
        axum::middleware::from_fn_with_state(
            Duration::from_secs(secs),
            crate::http_error::body_deadline,
        )
    };
    let console = Arc::new(Console { api, state, oidc });
    Ok(Router::new()
        .route("/ui", get(|| async { redirect("/ui/jobs") }))
        .route("/ui/", get(|| async { redirect("/ui/jobs") }))
        .route("/ui/static/console.css", get(stylesheet))
        .route("/ui/static/icon.svg", get(icon))
        .route("/ui/login", get(login_page).post(login_token))
        .route("/ui/login/oidc", get(oidc::start))
        .route("/ui/login/oidc/callback", get(oidc::callback))
        .route("/ui/logout", post(logout))
        .route("/ui/jobs", get(views::jobs))
        .route("/ui/jobs/chart.svg", get(views::jobs_chart))
        .route("/ui/jobs/{id}", get(views::job))
        .route("/ui/jobs/{id}/{action}", post(job_action))
        .route("/ui/recipes/{name}", get(views::recipe))
        .route("/ui/recipes/{name}/run", post(run_recipe))
        .route(
            "/ui/connections",
            get(views::connections).post(put_connection),
        )
        .route("/ui/environments", get(views::environments))
        .route("/ui/environments/{env}", post(change_environment))
        .route("/ui/audit", get(views::audit))
        .route("/ui/tokens", get(views::tokens).post(create_token))
        .route("/ui/tokens/{id}/revoke", post(revoke_token))
        .route("/ui/members", get(views::members).post(set_member))
        .route("/ui/members/{subject}/remove", post(remove_member))
        .route("/ui/settings", post(put_settings))
        // Forms are as large and as slow as an API body may be...
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(deadline(limits.body_read_timeout_secs))
        // ...and a bundle upload as a bundle deployment through the API.
        .route(
            "/ui/recipes",
            get(views::recipes).post(deploy).layer((
                DefaultBodyLimit::max(limits.max_bundle_bytes.saturating_add(64 << 10)),
                deadline(limits.bundle_read_timeout_secs),
            )),
        )
        .layer(axum::middleware::from_fn(secure_headers))
        .with_state(console))
}

/// Adds the security headers and the server time to every console
/// response.
async fn secure_headers(request: Request<Body>, next: axum::middleware::Next) -> Response {
    let started = Instant::now();
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    headers.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={ms:.2}")) {
        headers.insert("server-timing", v);
    }
    response
}

async fn stylesheet() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("console.css"),
    )
        .into_response()
}

async fn icon() -> Response {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        include_str!("icon.svg"),
    )
        .into_response()
}

/// A 303 to `to`.
pub(crate) fn redirect(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// A cookie of the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for a `__Host-` cookie.
fn set_cookie(name: &str, value: &str, same_site: &str, max_age: Option<u64>) -> HeaderValue {
    let age = max_age
        .map(|s| format!("; Max-Age={s}"))
        .unwrap_or_default();
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite={same_site}{age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=1; Max-Age=0"))
}

/// 32 random bytes, base64url.
fn random_secret() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn sha256_hex(text: &str) -> String {
    wrun_store::sha256_hex(text.as_bytes())
}

/// The CSRF token of a session: derived from its secret, which only the
/// cookie holds (the store has another hash of it).
fn csrf_of(secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"wrun console csrf\n");
    h.update(secret.as_bytes());
    URL_SAFE_NO_PAD.encode(h.finalize())
}

/// Whether a state-changing request comes from the console's own pages:
/// `Sec-Fetch-Site` (sent by every current browser) same-origin or absent,
/// and an `Origin`, when sent, naming this host.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && site != "same-origin"
        && site != "none"
    {
        return false;
    }
    match headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
        None => true,
        Some(origin) => {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            origin.strip_prefix("https://") == Some(host)
        }
    }
}

/// Characters of a path segment sent to the API as they are.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `text` as one path segment.
pub(crate) fn seg(text: &str) -> String {
    utf8_percent_encode(text, SEGMENT).to_string()
}

/// The body of an API call.
enum ApiBody {
    None,
    Json(Value),
    Gzip(Vec<u8>),
}

impl Console {
    /// The signed-in caller of a request, or the answer that sends the
    /// browser to the sign-in page (the session ended, timed out, or its
    /// credential is no longer valid).
    async fn caller(&self, headers: &HeaderMap, addr: SocketAddr) -> Result<Ctx, Response> {
        let ip = client_ip(addr);
        self.state.limit_address(ip).map_err(too_many)?;
        let Some(secret) = cookie(headers, SESSION_COOKIE) else {
            return Err(redirect("/ui/login"));
        };
        let id_hash = sha256_hex(secret);
        let storage = &self.state.storage;
        let Ok(found) = storage.session(&id_hash).await else {
            return Err(error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the store did not answer",
            ));
        };
        let Some((session, idle_secs)) = found else {
            return Err(redirect("/ui/login?ended=1"));
        };
        let now = UnixMillis::now();
        let idle = Duration::from_secs(u64::from(idle_secs));
        let end = |reason: &'static str| self.end(&session, &id_hash, ip, reason);
        if now >= session.expires_at {
            return Err(end("expired").await);
        }
        if now.since(session.last_seen) >= idle {
            return Err(end("idle").await);
        }
        let principal = match &session.kind {
            SessionKind::Token { token_id } => {
                let record = match storage.token(token_id).await {
                    Ok(Some(r)) if r.workspace == session.workspace => r,
                    _ => return Err(end("token_gone").await),
                };
                // A member's removal deleted their sessions in its own
                // transaction; a role change is read by `token_principal`.
                match self.state.token_principal(&record, ip).await {
                    Ok(p) => p,
                    Err(_) => return Err(end("token_refused").await),
                }
            }
            SessionKind::Oidc { role } => {
                let permissions = storage
                    .role_permissions(&session.workspace, role)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                Principal {
                    subject: session.subject.clone(),
                    workspace: session.workspace.clone(),
                    permissions,
                    admin: role == "admin",
                    ip,
                }
            }
        };
        // The session spends its credential's request budget, as a bearer
        // of the same token or identity would.
        let budget = match &session.kind {
            SessionKind::Token { token_id } => format!("token:{token_id}"),
            SessionKind::Oidc { .. } => {
                format!("jwt:{}\0{}", session.workspace, session.subject)
            }
        };
        self.state.limit(&budget).map_err(too_many)?;
        if now.since(session.last_seen) >= TOUCH_EVERY {
            let _ = storage.touch_session(&id_hash, now).await;
        }
        Ok(Ctx {
            principal,
            csrf: csrf_of(secret),
            addr,
        })
    }

    /// Ends a session that may no longer be used, audited, and sends the
    /// browser to the sign-in page.
    async fn end(
        &self,
        session: &ConsoleSession,
        id_hash: &str,
        ip: IpAddr,
        reason: &'static str,
    ) -> Response {
        let entry = Entry {
            workspace: Some(session.workspace.clone()),
            actor: session.subject.clone(),
            action: "console.session_end".into(),
            target: "console".into(),
            source: Some(ip.to_string()),
            outcome: Outcome::Success,
            detail: json!({ "reason": reason }),
        };
        let _ = self.state.storage.end_session(id_hash, Some(entry)).await;
        let mut r = redirect(&format!("/ui/login?ended={reason}"));
        r.headers_mut().insert(
            header::SET_COOKIE,
            set_cookie(SESSION_COOKIE, "", "Strict", Some(0)),
        );
        r
    }

    /// The caller of a form post: signed in, from the console's own page,
    /// with the session's CSRF token.
    async fn poster(
        &self,
        headers: &HeaderMap,
        addr: SocketAddr,
        csrf: &str,
    ) -> Result<Ctx, Response> {
        if !same_origin(headers) {
            return Err(error_page(
                StatusCode::FORBIDDEN,
                "this form was sent from another site",
            ));
        }
        let ctx = self.caller(headers, addr).await?;
        if !bool::from(ctx.csrf.as_bytes().ct_eq(csrf.as_bytes())) {
            return Err(error_page(
                StatusCode::FORBIDDEN,
                "this form is stale or was not made by the console: reload the page",
            ));
        }
        Ok(ctx)
    }

    /// Calls the API route `path` (after `/v1/workspaces/{ws}/`) as the
    /// session's caller; the answer's JSON, or what went wrong.
    async fn call(
        &self,
        ctx: &Ctx,
        method: Method,
        path: &str,
        body: ApiBody,
    ) -> Result<Value, Failure> {
        let uri = format!("/v1/workspaces/{}/{path}", seg(&ctx.principal.workspace));
        let builder = Request::builder()
            .method(method)
            .uri(uri)
            .extension(ConnectInfo(ctx.addr))
            .extension(ConsoleCaller(ctx.principal.clone()));
        let request = match body {
            ApiBody::None => builder.body(Body::empty()),
            ApiBody::Json(v) => builder
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(v.to_string())),
            ApiBody::Gzip(bytes) => builder
                .header(header::CONTENT_TYPE, "application/gzip")
                .body(Body::from(bytes)),
        };
        let internal = |what: &str| Failure {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: what.to_string(),
        };
        let request = request.map_err(|_| internal("the request could not be built"))?;
        let response = match self.api.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), MAX_API_ANSWER)
            .await
            .map_err(|_| internal("the answer was too large"))?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|_| internal("the answer was not JSON"))?
        };
        if status.is_success() {
            Ok(value)
        } else {
            let message = value
                .pointer("/error/message")
                .and_then(Value::as_str)
                .unwrap_or("the request was refused")
                .to_string();
            Err(Failure { status, message })
        }
    }

    /// Reads an API route as the caller.
    pub(crate) async fn get(&self, ctx: &Ctx, path: &str) -> Result<Value, Failure> {
        self.call(ctx, Method::GET, path, ApiBody::None).await
    }

    /// Audits and starts a session for `principal`; the answer sets its
    /// cookie and sends the browser to `to` (with a page, not a redirect,
    /// when the request came from the identity provider: a `SameSite=Strict`
    /// cookie is not sent on a navigation another site started).
    async fn start_session(
        &self,
        principal: &Principal,
        kind: SessionKind,
        method: &str,
        through_page: bool,
    ) -> Response {
        let secret = random_secret();
        let now = UnixMillis::now();
        let max = Duration::from_secs(self.state.config.console.session_max_hours.max(1) * 3600);
        let session = ConsoleSession {
            id_hash: sha256_hex(&secret),
            workspace: principal.workspace.clone(),
            subject: principal.subject.clone(),
            kind,
            created_at: now,
            last_seen: now,
            expires_at: now.saturating_add(max),
            ip: principal.ip.to_string(),
        };
        let entry = Entry {
            workspace: Some(principal.workspace.clone()),
            actor: principal.subject.clone(),
            action: "console.sign_in".into(),
            target: "console".into(),
            source: Some(principal.ip.to_string()),
            outcome: Outcome::Success,
            detail: json!({ "method": method }),
        };
        if self
            .state
            .storage
            .create_session(session, entry)
            .await
            .is_err()
        {
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "the session was not stored",
            );
        }
        let mut r = if through_page {
            views::continue_page("/ui/jobs")
        } else {
            redirect("/ui/jobs")
        };
        r.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(SESSION_COOKIE, &secret, "Strict", None),
        );
        r.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(LOGIN_COOKIE, "", "Strict", Some(0)),
        );
        r
    }
}

/// The answer to a request past a rate limit.
fn too_many(e: crate::http_error::ApiError) -> Response {
    let mut r = error_page(
        StatusCode::TOO_MANY_REQUESTS,
        "too many requests: wait a little and try again",
    );
    if let Some(v) = e
        .into_response()
        .headers()
        .get(header::RETRY_AFTER)
        .cloned()
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}

/// A page that says what went wrong.
pub(crate) fn error_page(status: StatusCode, message: &str) -> Response {
    let mut r = html(views::bare_page("Refused", views::message_markup(message)));
    *r.status_mut() = status;
    r
}

/// An HTML response.
pub(crate) fn html(markup: Markup) -> Response {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

// ---------------------------------------------------------------------------
// Sign-in and sign-out

#[derive(Deserialize)]
struct LoginQuery {
    ended: Option<String>,
    error: Option<String>,
}

async fn login_page(State(c): State<Arc<Console>>, Query(q): Query<LoginQuery>) -> Response {
    let nonce = random_secret();
    let notice = match (q.ended.as_deref(), q.error.as_deref()) {
        (Some("idle"), _) => Some("Your session timed out: sign in again.".to_string()),
        (Some("expired"), _) => Some("Your session reached its end: sign in again.".to_string()),
        (Some(_), _) => Some("Your session has ended: sign in again.".to_string()),
        (None, Some(code)) => Some(
            match code {
                "token" => "The token was not accepted: it is unknown, revoked, expired, or not allowed from this address.",
                "not_token" => "That is not a wrun API token (they start with wrun_pat_).",
                "not_member" => "The token's owner is not a member of its workspace.",
                "busy" => "Too many attempts: wait a little and try again.",
                "sso_flow" => "This sign-in is unknown, already used or too old: start again.",
                "sso_browser" => "This sign-in was started in another browser: start again here.",
                "sso_role" => "Your identity provider gave you a role this workspace does not have.",
                "sso_down" => "The identity provider could not be reached: try again later.",
                _ => "Single sign-on did not succeed; the audit log has the reason.",
            }
            .to_string(),
        ),
        (None, None) => None,
    };
    let oidc_label = c.oidc.as_ref().map(|o| o.label().to_string());
    let mut r = views::login(&csrf_of(&nonce), notice.as_deref(), oidc_label.as_deref());
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &nonce, "Strict", Some(1800)),
    );
    r
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    csrf: String,
}

async fn login_token(Visit { c, headers, addr }: Visit, Form(form): Form<LoginForm>) -> Response {
    let bound = cookie(&headers, LOGIN_COOKIE)
        .is_some_and(|nonce| bool::from(csrf_of(nonce).as_bytes().ct_eq(form.csrf.as_bytes())));
    if !same_origin(&headers) || !bound {
        return error_page(
            StatusCode::FORBIDDEN,
            "this sign-in form is stale or was not made by the console: reload the page",
        );
    }
    let ip = client_ip(addr);
    if let Err(e) = c.state.limit_address(ip) {
        return too_many(e);
    }
    let presented = form.token.trim();
    if !presented.starts_with("wrun_pat_") {
        return redirect("/ui/login?error=not_token");
    }
    let principal = match c.state.authenticate_token(presented, ip).await {
        Ok(p) => p,
        Err(e) if e.status() == StatusCode::TOO_MANY_REQUESTS => {
            return redirect("/ui/login?error=busy");
        }
        Err(_) => return redirect("/ui/login?error=token"),
    };
    let Ok(parsed) = crate::auth::parse_token(presented) else {
        return redirect("/ui/login?error=token");
    };
    match c
        .state
        .storage
        .member_role(&principal.workspace, &principal.subject)
        .await
    {
        Ok(Some(_)) => {}
        _ => return redirect("/ui/login?error=not_member"),
    }
    c.start_session(
        &principal,
        SessionKind::Token {
            token_id: parsed.id,
        },
        "token",
        false,
    )
    .await
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(Visit { c, headers, addr }: Visit, Form(form): Form<CsrfForm>) -> Response {
    let ctx = match c.poster(&headers, addr, &form.csrf).await {
        Ok(ctx) => ctx,
        Err(r) => return r,
    };
    if let Some(secret) = cookie(&headers, SESSION_COOKIE) {
        let entry = Entry {
            workspace: Some(ctx.principal.workspace.clone()),
            actor: ctx.principal.subject.clone(),
            action: "console.sign_out".into(),
            target: "console".into(),
            source: Some(client_ip(addr).to_string()),
            outcome: Outcome::Success,
            detail: json!({}),
        };
        let _ = c
            .state
            .storage
            .end_session(&sha256_hex(secret), Some(entry))
            .await;
    }
    let mut r = redirect("/ui/login");
    r.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", "Strict", Some(0)),
    );
    r
}

// ---------------------------------------------------------------------------
// Actions: each a form post that becomes one API call.

/// Runs a form action: checks the poster, calls the API, and sends the
/// browser to `back` (with the API's refusal shown when it refused).
async fn act(
    c: &Console,
    headers: &HeaderMap,
    addr: SocketAddr,
    csrf: &str,
    call: impl AsyncFnOnce(&Console, &Ctx) -> Result<String, Failure>,
    back: &str,
) -> Response {
    let ctx = match c.poster(headers, addr, csrf).await {
        Ok(ctx) => ctx,
        Err(r) => return r,
    };
    match call(c, &ctx).await {
        Ok(to) => redirect(&to),
        Err(f) => views::refused(&ctx, f.status, &f.message, back),
    }
}

/// A form that is one API call and then back to the page `to`.
async fn forward(
    Visit { c, headers, addr }: Visit,
    csrf: &str,
    method: Method,
    path: &str,
    body: ApiBody,
    to: &str,
) -> Response {
    act(
        &c,
        &headers,
        addr,
        csrf,
        async |c, ctx| {
            c.call(ctx, method, path, body).await?;
            Ok(to.to_string())
        },
        to,
    )
    .await
}

async fn job_action(
    Visit { c, headers, addr }: Visit,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let back = format!("/ui/jobs/{}", seg(&id));
    if action != "cancel" && action != "rerun" {
        return error_page(StatusCode::NOT_FOUND, "no such action");
    }
    act(
        &c,
        &headers,
        addr,
        &form.csrf,
        async |c, ctx| {
            let v = c
                .call(
                    ctx,
                    Method::POST,
                    &format!("jobs/{}/{action}", seg(&id)),
                    ApiBody::None,
                )
                .await?;
            Ok(match v.get("job").and_then(Value::as_str) {
                Some(new) => format!("/ui/jobs/{}", seg(new)),
                None => format!("/ui/jobs/{}", seg(&id)),
            })
        },
        &back,
    )
    .await
}

async fn deploy(Visit { c, headers, addr }: Visit, mut multipart: Multipart) -> Response {
    let mut csrf = String::new();
    let mut name = String::new();
    let mut bundle = Vec::new();
    let limit = c.state.config.limits.max_bundle_bytes;
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => {
                return error_page(StatusCode::BAD_REQUEST, &format!("the upload failed: {e}"));
            }
        };
        let field_name = field.name().unwrap_or_default().to_string();
        let Ok(bytes) = field.bytes().await else {
            return error_page(StatusCode::BAD_REQUEST, "the upload did not arrive whole");
        };
        match field_name.as_str() {
            "csrf" => csrf = String::from_utf8_lossy(&bytes).into_owned(),
            "name" => name = String::from_utf8_lossy(&bytes).trim().to_string(),
            "bundle" if bytes.len() <= limit => bundle = bytes.to_vec(),
            "bundle" => {
                return error_page(StatusCode::PAYLOAD_TOO_LARGE, "the bundle is too large");
            }
            _ => {}
        }
    }
    act(
        &c,
        &headers,
        addr,
        &csrf,
        async |c, ctx| {
            if name.is_empty() || bundle.is_empty() {
                return Err(Failure {
                    status: StatusCode::BAD_REQUEST,
                    message: "name the recipe and choose a bundle (wrun export)".into(),
                });
            }
            c.call(
                ctx,
                Method::PUT,
                &format!("recipes/{}", seg(&name)),
                ApiBody::Gzip(bundle),
            )
            .await?;
            Ok(format!("/ui/recipes/{}", seg(&name)))
        },
        "/ui/recipes",
    )
    .await
}

#[derive(Deserialize)]
struct RunForm {
    csrf: String,
    environment: String,
    #[serde(default)]
    input: String,
}

async fn run_recipe(
    Visit { c, headers, addr }: Visit,
    Path(name): Path<String>,
    Form(form): Form<RunForm>,
) -> Response {
    let back = format!("/ui/recipes/{}", seg(&name));
    act(
        &c,
        &headers,
        addr,
        &form.csrf,
        async |c, ctx| {
            let input: Value = if form.input.trim().is_empty() {
                Value::Null
            } else {
                serde_json::from_str(&form.input).map_err(|e| Failure {
                    status: StatusCode::BAD_REQUEST,
                    message: format!("the input is not JSON: {e}"),
                })?
            };
            let v = c
                .call(
                    ctx,
                    Method::POST,
                    &format!("recipes/{}/runs", seg(&name)),
                    ApiBody::Json(json!({ "environment": form.environment, "input": input })),
                )
                .await?;
            let job = v.get("job").and_then(Value::as_str).unwrap_or_default();
            Ok(format!("/ui/jobs/{}", seg(job)))
        },
        &back,
    )
    .await
}

#[derive(Deserialize)]
struct ConnectionForm {
    csrf: String,
    name: String,
    hosts: String,
    #[serde(default)]
    placement: String,
    #[serde(default)]
    value: String,
}

async fn put_connection(
    Visit { c, headers, addr }: Visit,
    Form(form): Form<ConnectionForm>,
) -> Response {
    // The value is wiped from memory once sent on (the API seals it).
    let value = zeroize::Zeroizing::new(form.value);
    act(
        &c,
        &headers,
        addr,
        &form.csrf,
        async |c, ctx| {
            let hosts: Vec<&str> = form
                .hosts
                .split([',', ' ', '\n'])
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .collect();
            let mut body = json!({ "hosts": hosts });
            if !form.placement.trim().is_empty() {
                body["placement"] = json!(form.placement.trim());
            }
            if !value.is_empty() {
                body["value"] = json!(value.as_str());
            }
            c.call(
                ctx,
                Method::PUT,
                &format!("connections/{}", seg(form.name.trim())),
                ApiBody::Json(body),
            )
            .await?;
            Ok("/ui/connections".into())
        },
        "/ui/connections",
    )
    .await
}

#[derive(Deserialize)]
struct EnvForm {
    csrf: String,
    /// `property`, `remove_property`, `bind`, `unbind`.
    op: String,
    name: String,
    #[serde(default)]
    value: String,
}

async fn change_environment(
    Visit { c, headers, addr }: Visit,
    Path(env): Path<String>,
    Form(form): Form<EnvForm>,
) -> Response {
    let back = format!("/ui/environments?env={}", seg(&env));
    act(
        &c,
        &headers,
        addr,
        &form.csrf,
        async |c, ctx| {
            let base = format!("environments/{}", seg(&env));
            let name = seg(form.name.trim());
            let (method, path, body) = match form.op.as_str() {
                "property" => (
                    Method::PUT,
                    format!("{base}/properties/{name}"),
                    ApiBody::Json(json!({ "value": form.value })),
                ),
                "remove_property" => (
                    Method::DELETE,
                    format!("{base}/properties/{name}"),
                    ApiBody::None,
                ),
                "bind" => (
                    Method::PUT,
                    format!("{base}/bindings/{name}"),
                    ApiBody::Json(json!({ "connection": form.value.trim() })),
                ),
                "unbind" => (
                    Method::DELETE,
                    format!("{base}/bindings/{name}"),
                    ApiBody::None,
                ),
                _ => {
                    return Err(Failure {
                        status: StatusCode::BAD_REQUEST,
                        message: "unknown change".into(),
                    });
                }
            };
            c.call(ctx, method, &path, body).await?;
            Ok(format!("/ui/environments?env={}", seg(&env)))
        },
        &back,
    )
    .await
}

#[derive(Deserialize)]
struct TokenForm {
    csrf: String,
    name: String,
    scopes: String,
    #[serde(default)]
    expires_in: String,
}

async fn create_token(Visit { c, headers, addr }: Visit, Form(form): Form<TokenForm>) -> Response {
    let ctx = match c.poster(&headers, addr, &form.csrf).await {
        Ok(ctx) => ctx,
        Err(r) => return r,
    };
    let scopes: Vec<&str> = form
        .scopes
        .split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let days: u64 = match form.expires_in.trim() {
        "" => 30,
        d => match d.parse() {
            Ok(d) => d,
            Err(_) => {
                return views::refused(
                    &ctx,
                    StatusCode::BAD_REQUEST,
                    "the lifetime is a whole number of days",
                    "/ui/tokens",
                );
            }
        },
    };
    let body = json!({
        "name": form.name.trim(),
        "scopes": scopes,
        "expires_in": days.saturating_mul(86_400),
    });
    match c
        .call(&ctx, Method::POST, "tokens", ApiBody::Json(body))
        .await
    {
        // The token is shown once, on this answer, never stored by the
        // console.
        Ok(v) => views::token_created(&ctx, &v),
        Err(f) => views::refused(&ctx, f.status, &f.message, "/ui/tokens"),
    }
}

async fn revoke_token(v: Visit, Path(id): Path<String>, Form(form): Form<CsrfForm>) -> Response {
    let path = format!("tokens/{}", seg(&id));
    forward(
        v,
        &form.csrf,
        Method::DELETE,
        &path,
        ApiBody::None,
        "/ui/tokens",
    )
    .await
}

#[derive(Deserialize)]
struct MemberForm {
    csrf: String,
    subject: String,
    role: String,
}

async fn set_member(v: Visit, Form(form): Form<MemberForm>) -> Response {
    let path = format!("members/{}", seg(form.subject.trim()));
    let body = ApiBody::Json(json!({ "role": form.role.trim() }));
    forward(v, &form.csrf, Method::PUT, &path, body, "/ui/members").await
}

async fn remove_member(
    v: Visit,
    Path(subject): Path<String>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let path = format!("members/{}", seg(&subject));
    forward(
        v,
        &form.csrf,
        Method::DELETE,
        &path,
        ApiBody::None,
        "/ui/members",
    )
    .await
}

#[derive(Deserialize)]
struct SettingsForm {
    csrf: String,
    idle_minutes: String,
}

async fn put_settings(
    Visit { c, headers, addr }: Visit,
    Form(form): Form<SettingsForm>,
) -> Response {
    act(
        &c,
        &headers,
        addr,
        &form.csrf,
        async |c, ctx| {
            let minutes: Option<u32> = match form.idle_minutes.trim() {
                "" => None,
                m => Some(m.parse().map_err(|_| Failure {
                    status: StatusCode::BAD_REQUEST,
                    message: "the idle timeout is a whole number of minutes".into(),
                })?),
            };
            c.call(
                ctx,
                Method::PUT,
                "settings",
                ApiBody::Json(
                    json!({ "session_idle_secs": minutes.map(|m| m.saturating_mul(60)) }),
                ),
            )
            .await?;
            Ok("/ui/members".into())
        },
        "/ui/members",
    )
    .await
}

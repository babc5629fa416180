//! Sign-in through the operator's OpenID Connect provider: the
//! authorization code flow with PKCE (S256), a `state` bound to the browser
//! by a cookie and used once, a `nonce` checked in the ID token, the ID
//! token's signature checked against the provider's published keys, and
//! its claims mapped to a workspace and a role as the API maps JWTs
//! ([`crate::auth::JwtVerifier`]).
//!
//! The provider is reached through the egress rules of the daemon's own
//! requests ([`wrun_runtime::Engine::send_host`]): HTTPS only, the
//! operator's CAs, no redirect followed; a provider on a private address
//! needs an allowed range, as an alert webhook does.
//!
//! Flows in progress live in memory for ten minutes (at most
//! [`MAX_PENDING`]); a sign-in started on one daemon node must finish on
//! the same node.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use percent_encoding::utf8_percent_encode;
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq as _;
use wrun_store::UnixMillis;
use wrun_store::audit::{Entry, Outcome};
use wrun_store::sessions::SessionKind;

use super::{
    Console, SEGMENT, Visit, client_ip, cookie, random_secret, redirect, set_cookie, sha256_hex,
};
use crate::api::Principal;
use crate::auth::{JwtConfig, JwtVerifier};
use crate::config::OidcConfig;

/// The cookie binding a flow to the browser that started it (`SameSite=Lax`:
/// it must come back on the provider's redirect).
const FLOW_COOKIE: &str = "__Host-wrun_oidc";
/// How long a flow may take.
const FLOW_TTL: Duration = Duration::from_secs(600);
/// Flows in progress at most; past it, new ones are refused.
pub(crate) const MAX_PENDING: usize = 10_000;
/// The largest answer read from the provider.
const MAX_ANSWER: usize = 1 << 20;
/// How long the discovery document and keys are kept.
const METADATA_TTL: Duration = Duration::from_secs(3600);

/// A flow in progress.
struct Pending {
    nonce: String,
    verifier: String,
    binding: String,
    started: Instant,
}

/// What the discovery document says, and the keys.
#[derive(Clone)]
struct Metadata {
    authorization_endpoint: String,
    token_endpoint: String,
    keys: Vec<jsonwebtoken::jwk::Jwk>,
    fetched: Instant,
}

/// The provider and the flows in progress.
pub(crate) struct Oidc {
    config: OidcConfig,
    client_secret: zeroize::Zeroizing<String>,
    redirect_uri: String,
    pending: Mutex<HashMap<String, Pending>>,
    metadata: tokio::sync::Mutex<Option<Metadata>>,
}

impl Oidc {
    /// The provider of `config`; the callback is under `public_url`.
    ///
    /// # Errors
    ///
    /// The client secret's variable is unset, or the issuer is not HTTPS.
    pub(crate) fn new(config: &OidcConfig, public_url: &str) -> anyhow::Result<Oidc> {
        let secret = std::env::var(&config.client_secret_env).map_err(|_| {
            anyhow::anyhow!(
                "[console.oidc] client_secret_env names `{}`, which is not set",
                config.client_secret_env
            )
        })?;
        if !config.issuer.starts_with("https://") {
            anyhow::bail!("[console.oidc] issuer must be an https:// URL");
        }
        Ok(Oidc {
            config: config.clone(),
            client_secret: zeroize::Zeroizing::new(secret),
            redirect_uri: format!(
                "{}/ui/login/oidc/callback",
                public_url.trim_end_matches('/')
            ),
            pending: Mutex::new(HashMap::new()),
            metadata: tokio::sync::Mutex::new(None),
        })
    }

    /// The sign-in button's label.
    pub(crate) fn label(&self) -> &str {
        &self.config.label
    }

    /// Sends a request to the provider; the answer's JSON.
    async fn fetch(&self, c: &Console, request: http::Request<Vec<u8>>) -> Result<Value, String> {
        let url = request.uri().to_string();
        let response = c
            .state
            .runner
            .engine()
            .send_host(request, MAX_ANSWER)
            .await
            .map_err(|e| format!("the identity provider did not answer ({e})"))?;
        if !response.status().is_success() {
            return Err(format!(
                "the identity provider answered {} to {url}",
                response.status().as_u16()
            ));
        }
        serde_json::from_slice(response.body())
            .map_err(|_| format!("the identity provider's answer from {url} is not JSON"))
    }

    /// The discovery document and keys, fetched again after an hour or
    /// when `refresh` (a key id nobody knows).
    async fn metadata(&self, c: &Console, refresh: bool) -> Result<Metadata, String> {
        let mut cached = self.metadata.lock().await;
        if let Some(m) = cached.as_ref()
            && !refresh
            && m.fetched.elapsed() < METADATA_TTL
        {
            return Ok(m.clone());
        }
        let issuer = self.config.issuer.trim_end_matches('/');
        let get = |url: &str| {
            http::Request::get(url)
                .header(header::ACCEPT, "application/json")
                .body(Vec::new())
                .map_err(|_| format!("`{url}` is not a URL"))
        };
        let doc = self
            .fetch(
                c,
                get(&format!("{issuer}/.well-known/openid-configuration"))?,
            )
            .await?;
        let field = |name: &str| {
            doc.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("the discovery document has no `{name}`"))
        };
        if field("issuer")? != self.config.issuer {
            return Err("the discovery document names another issuer".into());
        }
        let jwks_uri = field("jwks_uri")?;
        let jwks = self.fetch(c, get(&jwks_uri)?).await?;
        let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks)
            .map_err(|_| "the provider's key set does not parse".to_string())?;
        let m = Metadata {
            authorization_endpoint: field("authorization_endpoint")?,
            token_endpoint: field("token_endpoint")?,
            keys: set.keys,
            fetched: Instant::now(),
        };
        *cached = Some(m.clone());
        Ok(m)
    }

    /// Checks an ID token: signature with the provider's key of its `kid`,
    /// then the claims; returns the identity and every claim.
    async fn verify(
        &self,
        c: &Console,
        id_token: &str,
    ) -> Result<(crate::auth::JwtIdentity, serde_json::Map<String, Value>), String> {
        let header = jsonwebtoken::decode_header(id_token)
            .map_err(|_| "the ID token is malformed".to_string())?;
        let mut metadata = self.metadata(c, false).await?;
        let find = |m: &Metadata| {
            m.keys
                .iter()
                .find(|k| header.kid.is_none() || k.common.key_id == header.kid)
                .cloned()
        };
        let jwk = match find(&metadata) {
            Some(k) => k,
            None => {
                metadata = self.metadata(c, true).await?;
                find(&metadata).ok_or("the ID token is signed with an unknown key")?
            }
        };
        // The algorithm is the key's when it names one, else the token's
        // (never `none` or HMAC: `from_jwk` refuses both).
        let algorithm = match jwk.common.key_algorithm {
            Some(a) => format!("{a:?}"),
            None => format!("{:?}", header.alg),
        };
        let config = JwtConfig {
            issuer: self.config.issuer.clone(),
            audience: self.config.client_id.clone(),
            algorithm,
            key_file: None,
            secret_env: None,
            max_lifetime_secs: 24 * 3600,
            leeway_secs: 60,
            subject_claim: self.config.subject_claim.clone(),
            workspace_claim: self.config.workspace_claim.clone(),
            role_claim: self.config.role_claim.clone(),
            role_map: self.config.role_map.clone(),
        };
        let verifier = JwtVerifier::from_jwk(config, &jwk).map_err(|e| e.to_string())?;
        let now = u64::try_from(UnixMillis::now().as_secs()).unwrap_or(0);
        verifier
            .verify_with_claims(id_token, now)
            .map_err(|e| e.to_string())
    }
}

/// `GET /ui/login/oidc`: starts a flow and sends the browser to the
/// provider.
pub(crate) async fn start(
    State(c): State<Arc<Console>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
) -> Response {
    let Some(oidc) = &c.oidc else {
        return super::error_page(StatusCode::NOT_FOUND, "single sign-on is not configured");
    };
    // Each flow holds memory for ten minutes: starting them is limited per
    // client network like any request before authentication.
    if let Err(e) = c.state.limit_address(client_ip(addr)) {
        return super::too_many(e);
    }
    let metadata = match oidc.metadata(&c, false).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "OpenID Connect discovery failed");
            return failed("sso_down");
        }
    };
    let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
    let state = random_secret();
    let nonce = random_secret();
    let binding = random_secret();
    {
        let mut pending = oidc.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.retain(|_, p| p.started.elapsed() < FLOW_TTL);
        if pending.len() >= MAX_PENDING {
            return super::error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many sign-ins in progress: try again in a few minutes",
            );
        }
        pending.insert(
            state.clone(),
            Pending {
                nonce: nonce.clone(),
                verifier: verifier.secret().clone(),
                binding: sha256_hex(&binding),
                started: Instant::now(),
            },
        );
    }
    let mut scopes = vec!["openid".to_string()];
    scopes.extend(
        oidc.config
            .scopes
            .iter()
            .filter(|s| *s != "openid")
            .cloned(),
    );
    let enc = |v: &str| utf8_percent_encode(v, SEGMENT).to_string();
    let separator = if metadata.authorization_endpoint.contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!(
        "{}{separator}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}&code_challenge={}&code_challenge_method=S256",
        metadata.authorization_endpoint,
        enc(&oidc.config.client_id),
        enc(&oidc.redirect_uri),
        enc(&scopes.join(" ")),
        enc(&state),
        enc(&nonce),
        enc(challenge.as_str()),
    );
    let mut r = redirect(&url);
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(FLOW_COOKIE, &binding, "Lax", Some(FLOW_TTL.as_secs())),
    );
    r
}

/// The provider's redirect back.
#[derive(Deserialize)]
pub(crate) struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// Back to the sign-in page with one of the error codes it knows (never
/// text from the request: a link cannot make the page say anything else).
fn failed(code: &'static str) -> Response {
    redirect(&format!("/ui/login?error={code}"))
}

/// `GET /ui/login/oidc/callback`: finishes a flow and starts a session.
pub(crate) async fn callback(
    Visit { c, headers, addr }: Visit,
    Query(q): Query<Callback>,
) -> Response {
    let Some(oidc) = &c.oidc else {
        return super::error_page(StatusCode::NOT_FOUND, "single sign-on is not configured");
    };
    let ip = client_ip(addr);
    let refuse = async |code: &'static str, reason: &str| {
        let entry = Entry {
            workspace: None,
            actor: "oidc".into(),
            action: "auth.failure".into(),
            target: "console".into(),
            source: Some(ip.to_string()),
            outcome: Outcome::Denied,
            detail: json!({ "reason": reason }),
        };
        if c.state.limit_failure(ip).is_ok() {
            let _ = c.state.storage.audit(vec![entry]).await;
        }
        c.state.metrics.auth_failure("oidc");
        failed(code)
    };
    if let Some(error) = &q.error {
        let shown: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(40)
            .collect();
        return refuse("sso", &format!("the identity provider answered {shown}")).await;
    }
    let (Some(code), Some(state)) = (&q.code, &q.state) else {
        return refuse("sso", "the identity provider's answer has no code or state").await;
    };
    let flow = oidc
        .pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(state);
    let Some(flow) = flow.filter(|f| f.started.elapsed() < FLOW_TTL) else {
        return refuse("sso_flow", "this sign-in is unknown, used or too old").await;
    };
    let bound = cookie(&headers, FLOW_COOKIE)
        .is_some_and(|b| bool::from(sha256_hex(b).as_bytes().ct_eq(flow.binding.as_bytes())));
    if !bound {
        return refuse("sso_browser", "this sign-in was started in another browser").await;
    }
    let metadata = match oidc.metadata(&c, false).await {
        Ok(m) => m,
        Err(e) => return refuse("sso_down", &e).await,
    };
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "authorization_code")
        .append_pair("code", code)
        .append_pair("redirect_uri", &oidc.redirect_uri)
        .append_pair("code_verifier", &flow.verifier)
        .finish();
    let basic = STANDARD.encode(format!(
        "{}:{}",
        utf8_percent_encode(&oidc.config.client_id, SEGMENT),
        utf8_percent_encode(&oidc.client_secret, SEGMENT)
    ));
    let request = http::Request::post(&metadata.token_endpoint)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .header(header::AUTHORIZATION, format!("Basic {basic}"))
        .body(form.into_bytes());
    let Ok(request) = request else {
        return refuse("sso", "the token endpoint is not a URL").await;
    };
    let answer = match oidc.fetch(&c, request).await {
        Ok(v) => v,
        Err(e) => return refuse("sso_down", &e).await,
    };
    let Some(id_token) = answer.get("id_token").and_then(Value::as_str) else {
        return refuse("sso", "the identity provider sent no ID token").await;
    };
    let (identity, claims) = match oidc.verify(&c, id_token).await {
        Ok(v) => v,
        Err(e) => return refuse("sso", &format!("the ID token was refused: {e}")).await,
    };
    let nonce_ok = claims
        .get("nonce")
        .and_then(Value::as_str)
        .is_some_and(|n| bool::from(n.as_bytes().ct_eq(flow.nonce.as_bytes())));
    if !nonce_ok {
        return refuse(
            "sso",
            "the ID token was refused: its nonce is not this sign-in's",
        )
        .await;
    }
    let permissions = match c
        .state
        .storage
        .role_permissions(&identity.workspace, &identity.role)
        .await
    {
        Ok(Some(p)) => p,
        _ => {
            return refuse(
                "sso_role",
                "the role the identity provider gave is not a role of the workspace",
            )
            .await;
        }
    };
    let principal = Principal {
        subject: format!("oidc:{}", identity.subject),
        workspace: identity.workspace,
        permissions,
        admin: identity.role == "admin",
        ip,
    };
    let mut r = c
        .start_session(
            &principal,
            SessionKind::Oidc {
                role: identity.role,
            },
            "oidc",
            true,
        )
        .await;
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(FLOW_COOKIE, "", "Lax", Some(0)),
    );
    r
}

//! A local OAuth 2.0 provider and a protected API, on loopback HTTPS.
//!
//! [`OAuthServer`] imitates strict providers (Google, Microsoft Entra ID,
//! Salesforce) closely enough that a test can prove a client does OAuth 2.0
//! right: the authorization code grant with PKCE, refresh token rotation with
//! reuse detection, the client credentials grant and a bearer-protected
//! resource. It registers one confidential client, binds `127.0.0.1:0`,
//! serves HTTP/1.1 over TLS with [`TestPki`]'s server certificate and stops
//! when dropped. Knobs and counters are methods on the server, usable while
//! it runs.
//!
//! # Routes
//!
//! | Method and path | Response |
//! |-----------------|----------|
//! | `GET /authorize?response_type=code&client_id&redirect_uri&state&code_challenge&code_challenge_method=S256[&scope]` | approves at once (no UI): 302 to `redirect_uri` with `code` and `state` added to its query; 400 JSON `{error, error_description}` for a bad request |
//! | `POST /token` | a form-encoded token request (grants `authorization_code`, `refresh_token`, `client_credentials`): 200 JSON `{access_token, token_type: "Bearer", expires_in, refresh_token?, scope?}` with `Cache-Control: no-store`; 400 or 401 JSON `{error, error_description}` |
//! | `GET /api/me` | 200 JSON `{ok: true, client_id, token_number}` for a current bearer token; 401 `{"error":"invalid_token"}` with `WWW-Authenticate: Bearer error="invalid_token"` otherwise |
//! | another method on these paths | 405 |
//! | anything else | 404 |
//!
//! `token_number` is the access token's place in issue order, from 1.
//!
//! # Strictness
//!
//! What a lenient provider lets through and this one refuses:
//!
//! - A parameter given twice (RFC 6749 3.1); an empty value counts as absent.
//! - On `/authorize`: an unknown `client_id` (`invalid_client`); a
//!   `redirect_uri` that is neither `https://` nor `http://` on a loopback
//!   host (`127.0.0.1`, `localhost`, `[::1]`; any port, RFC 8252 7.3), or has
//!   a fragment; a `response_type` other than `code`
//!   (`unsupported_response_type`); no `state`; no PKCE, PKCE `plain`, or a
//!   challenge that is not 43 base64url characters (`invalid_request`).
//! - On `/token`: a body that is not `application/x-www-form-urlencoded`;
//!   client authentication by more than one method, or by neither. HTTP Basic
//!   must carry `base64(urlencode(id):urlencode(secret))` (RFC 6749 2.3.1): a
//!   `+` sent as it is reads as a space and fails. The alternative is
//!   `client_id` and `client_secret` in the body.
//! - Codes live 60 s and are spent by the first request that presents them,
//!   even a failed one. They are bound to the client, to the `redirect_uri`
//!   (compared as a string) and to the S256 challenge. Presenting a redeemed
//!   code again revokes the tokens it produced (RFC 6749 4.1.2).
//! - Each refresh returns a new refresh token and retires the one presented.
//!   Presenting a retired one revokes its whole family, every refresh and
//!   access token descending from the same authorization (OAuth 2.0 Security
//!   BCP 4.14.2), so the newest refresh token fails too.
//! - A refresh may narrow the scope, never widen it (`invalid_scope`).
//! - A bearer token anywhere but the `Authorization` header (RFC 6750 2.1).
//!
//! Access tokens stay valid after a refresh until they expire, unless their
//! family is revoked. Client credentials tokens belong to no family.
//!
//! # Timing
//!
//! `/token` carries out the grant as soon as the request body has arrived;
//! [`OAuthServer::set_token_delay`] holds back only the answer. A client
//! killed during the delay has therefore lost tokens the provider already
//! rotated, as with a real provider and a dropped connection: its next
//! refresh with the old token is a reuse.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use wrun_tests::TestPki;
//! use wrun_tests::oauth::{OAuthServer, s256_challenge};
//!
//! let pki = TestPki::new(&["oauth.example.test"]);
//! let server = OAuthServer::start(&pki, "app", "s3cret").await;
//! let challenge = s256_challenge("a-verifier-of-at-least-43-characters-0123456789");
//! let url = format!(
//!     "{}?response_type=code&client_id=app&redirect_uri=http://127.0.0.1:8765/cb\
//!      &state=xyz&code_challenge={challenge}&code_challenge_method=S256",
//!     server.url("/authorize"),
//! );
//! let location = server.authorize(&url).await?;
//! assert!(location.starts_with("http://127.0.0.1:8765/cb?code="));
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::header::{
    ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, LOCATION, WWW_AUTHENTICATE,
};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use rand::Rng as _;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use url::Url;

use crate::client::DirectClient;
use crate::mock::{bind_loopback, spawn_https};
use crate::pki::TestPki;

/// How long an authorization code can be redeemed.
const CODE_TTL: Duration = Duration::from_secs(60);

/// The access token lifetime until [`OAuthServer::set_access_ttl`] changes it.
const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(3600);

/// Random characters after a token's prefix (`at_`, `rt_`, `ac_`).
const TOKEN_CHARS: usize = 40;

/// The length of an S256 code challenge: 32 bytes in unpadded base64url.
const S256_CHALLENGE_LEN: usize = 43;

/// The `WWW-Authenticate` value of a refused resource request.
const BEARER_CHALLENGE: &str = r#"Bearer error="invalid_token""#;

/// The response body type of every route.
pub(crate) type ResponseBody = Full<Bytes>;

/// Counts of `/token` answers, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCalls {
    /// Successful `authorization_code` grants.
    pub authorization_code: usize,
    /// Successful `refresh_token` grants.
    pub refresh_token: usize,
    /// Successful `client_credentials` grants.
    pub client_credentials: usize,
    /// Error answers, whatever the grant (or none).
    pub failed: usize,
}

/// A running OAuth 2.0 provider and resource API on `127.0.0.1`; see the
/// [module docs](self) for routes and behaviour.
///
/// The server stops when this value is dropped.
pub struct OAuthServer {
    addr: SocketAddr,
    ca_pem: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl OAuthServer {
    /// Starts an HTTPS server presenting `pki`'s server certificate, with one
    /// registered client, `client_id` with `client_secret`.
    ///
    /// Defaults: access tokens live 3600 s, `/token` answers without delay.
    ///
    /// # Panics
    ///
    /// Panics if no loopback port can be bound, or if called outside a tokio
    /// runtime.
    pub async fn start(pki: &TestPki, client_id: &str, client_secret: &str) -> OAuthServer {
        let shared = Arc::new(Shared {
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            token_requests_started: AtomicUsize::new(0),
            state: Mutex::new(State::new()),
        });
        let (listener, addr) = bind_loopback().await;
        let serving = Arc::clone(&shared);
        let acceptor = TlsAcceptor::from(pki.server_config());
        let task = spawn_https(listener, acceptor, move |request| {
            let shared = Arc::clone(&serving);
            async move { handle(&shared, request).await }
        });
        OAuthServer {
            addr,
            ca_pem: pki.ca_pem(),
            shared,
            task,
        }
    }

    /// The address the server listens on (always on `127.0.0.1`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// A URL for `path` (with its query, if any) on this server, such as
    /// `https://127.0.0.1:41234/token`.
    ///
    /// The host is the IP address because [`TestPki`] certifies `127.0.0.1`
    /// always, and `localhost` only when a test names it.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// Sends a GET to `authorize_url` (a full `/authorize` URL on this server,
    /// as the client under test built it) and returns the `Location` it
    /// redirected to, such as `http://127.0.0.1:8765/cb?code=ac_…&state=xyz`.
    ///
    /// This is the browser's part: the test then delivers the redirect to
    /// the client's callback itself. The connection goes to this server and
    /// verifies its certificate for the URL's host against the PKI's CA.
    ///
    /// # Errors
    ///
    /// Fails if the URL is not `https://` on this server's port, if the
    /// connection fails, or if the answer is not a redirect with a
    /// `Location` (the error then holds the status and body, such as an
    /// `invalid_request` about a missing `state`).
    pub async fn authorize(&self, authorize_url: &str) -> anyhow::Result<String> {
        follow_authorize(self.addr, &self.ca_pem, authorize_url).await
    }

    /// Sets the lifetime of access tokens issued from now on, which is also
    /// the `expires_in` reported (in seconds, rounded up).
    pub fn set_access_ttl(&self, ttl: Duration) {
        self.state().access_ttl = ttl;
    }

    /// Makes every access token issued so far expire now, so that the next
    /// resource call with any of them is refused; tokens issued later are
    /// not affected.
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for token in self.state().access.values_mut() {
            token.expires_at = token.expires_at.min(now);
        }
    }

    /// Makes `/token` hold back each answer for `delay` (see the module docs'
    /// Timing section: the grant itself is carried out at once).
    pub fn set_token_delay(&self, delay: Duration) {
        self.state().token_delay = delay;
    }

    /// How many `/token` requests arrived, counted before their body is read
    /// and before any delay, whatever their outcome.
    pub fn token_requests_started(&self) -> usize {
        self.shared.token_requests_started.load(Ordering::SeqCst)
    }

    /// Revokes every token family, as when the user withdraws consent: each
    /// of their refresh and access tokens is refused from now on. Client
    /// credentials tokens are not affected. Not counted in
    /// [`family_revocations`](Self::family_revocations).
    pub fn revoke_all(&self) {
        for family in &mut self.state().families {
            family.revoke();
        }
    }

    /// Counts of `/token` answers by grant and outcome.
    pub fn token_calls(&self) -> TokenCalls {
        self.state().calls
    }

    /// How many `/token` answers were `invalid_grant`.
    pub fn invalid_grant_count(&self) -> usize {
        self.state().invalid_grants
    }

    /// How many token families were revoked because a retired refresh token
    /// or a redeemed authorization code was presented again.
    pub fn family_revocations(&self) -> usize {
        self.state().family_revocations
    }

    /// Every access token issued, in order, for canary scans.
    pub fn issued_access_tokens(&self) -> Vec<String> {
        self.state().issued_access.clone()
    }

    /// Every refresh token issued, in order, for canary scans.
    pub fn issued_refresh_tokens(&self) -> Vec<String> {
        self.state().issued_refresh.clone()
    }

    /// The one refresh token that works now in the newest family (the one
    /// from the latest code redemption); `None` when no code was redeemed or
    /// that family is revoked.
    pub fn current_refresh_token(&self) -> Option<String> {
        let state = self.state();
        state
            .families
            .last()
            .and_then(|family| family.live_refresh.clone())
    }

    /// Counts of `/api/me` answers: `(ok, unauthorized)`.
    pub fn api_calls(&self) -> (usize, usize) {
        let state = self.state();
        (state.api_ok, state.api_unauthorized)
    }

    /// Locks the provider's state.
    fn state(&self) -> MutexGuard<'_, State> {
        self.shared.state()
    }
}

impl fmt::Debug for OAuthServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthServer")
            .field("addr", &self.addr)
            .field("client_id", &self.shared.client_id)
            .finish_non_exhaustive()
    }
}

impl Drop for OAuthServer {
    fn drop(&mut self) {
        // Dropping the accept loop drops its `JoinSet`, which aborts every
        // connection task as well.
        self.task.abort();
    }
}

/// Sends a GET to `authorize_url`, an `/authorize` URL on the server at
/// `addr` whose certificate chains to `ca_pem`, and returns the `Location` of
/// the redirect it answered: the browser's part of a sign-in (see
/// [`OAuthServer::authorize`]).
pub(crate) async fn follow_authorize(
    addr: SocketAddr,
    ca_pem: &str,
    authorize_url: &str,
) -> anyhow::Result<String> {
    let url = Url::parse(authorize_url)
        .with_context(|| format!("authorize URL {authorize_url:?} does not parse"))?;
    if url.scheme() != "https" {
        bail!("authorize URL {authorize_url:?} is not https");
    }
    if url.port_or_known_default() != Some(addr.port()) {
        bail!(
            "authorize URL {authorize_url:?} is not on this server's port {}",
            addr.port()
        );
    }
    let server_name = match url.host() {
        Some(url::Host::Domain(domain)) => domain.to_owned(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => bail!("authorize URL {authorize_url:?} has no host"),
    };
    let mut client = DirectClient::connect(addr, &server_name, ca_pem).await?;
    let request = Request::get(url.as_str())
        .body(Full::default())
        .context("build the authorize request")?;
    let (status, headers, body) = client.send(request).await?;
    match headers.get(LOCATION) {
        Some(location) if status == StatusCode::FOUND => Ok(location
            .to_str()
            .context("Location is not visible ASCII")?
            .to_owned()),
        _ => bail!(
            "authorize answered {status} without a redirect: {}",
            String::from_utf8_lossy(&body)
        ),
    }
}

/// The S256 PKCE challenge of `verifier`: BASE64URL-no-pad(SHA-256(verifier))
/// (RFC 7636 4.2), for tests that build authorize URLs themselves.
pub fn s256_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// State shared between the [`OAuthServer`] handle and its tasks.
struct Shared {
    client_id: String,
    client_secret: String,
    token_requests_started: AtomicUsize,
    state: Mutex<State>,
}

impl Shared {
    /// Locks the state, ignoring poisoning: a panicking test must not hide
    /// the counters from the next assertion.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything the provider has issued, and its knobs and counters.
struct State {
    access_ttl: Duration,
    token_delay: Duration,
    /// Codes not yet presented to `/token`.
    codes: HashMap<String, PendingCode>,
    /// Codes presented once, with the family the redemption started, if it
    /// succeeded.
    spent_codes: HashMap<String, Option<usize>>,
    /// Token families, indexed by [`AccessToken::family`] and
    /// [`RefreshToken::family`], oldest first.
    families: Vec<Family>,
    access: HashMap<String, AccessToken>,
    refresh: HashMap<String, RefreshToken>,
    issued_access: Vec<String>,
    issued_refresh: Vec<String>,
    calls: TokenCalls,
    invalid_grants: usize,
    family_revocations: usize,
    api_ok: usize,
    api_unauthorized: usize,
}

impl State {
    /// Nothing issued, the default access token lifetime, no delay.
    fn new() -> State {
        State {
            access_ttl: DEFAULT_ACCESS_TTL,
            token_delay: Duration::ZERO,
            codes: HashMap::new(),
            spent_codes: HashMap::new(),
            families: Vec::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            issued_access: Vec::new(),
            issued_refresh: Vec::new(),
            calls: TokenCalls::default(),
            invalid_grants: 0,
            family_revocations: 0,
            api_ok: 0,
            api_unauthorized: 0,
        }
    }

    /// Issues an access token (in `family`, if any) and returns the token
    /// response fields `access_token`, `token_type` and `expires_in`.
    fn issue_access(
        &mut self,
        client_id: &str,
        family: Option<usize>,
    ) -> serde_json::Map<String, Value> {
        let token = random_token("at_");
        self.issued_access.push(token.clone());
        let ttl = self.access_ttl;
        self.access.insert(
            token.clone(),
            AccessToken {
                client_id: client_id.to_owned(),
                family,
                number: self.issued_access.len(),
                expires_at: Instant::now() + ttl,
            },
        );
        let expires_in = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let mut fields = serde_json::Map::new();
        fields.insert("access_token".to_owned(), Value::from(token));
        fields.insert("token_type".to_owned(), Value::from("Bearer"));
        fields.insert("expires_in".to_owned(), Value::from(expires_in));
        fields
    }

    /// Issues a refresh token as the live one of `family`.
    fn issue_refresh(&mut self, family: usize) -> String {
        let token = random_token("rt_");
        self.issued_refresh.push(token.clone());
        self.refresh.insert(token.clone(), RefreshToken { family });
        if let Some(family) = self.families.get_mut(family) {
            family.live_refresh = Some(token.clone());
        }
        token
    }

    /// Revokes `family` after a replayed credential, counting it if it was
    /// still alive.
    fn revoke_for_reuse(&mut self, family: usize) {
        if let Some(family) = self.families.get_mut(family)
            && !family.revoked
        {
            family.revoke();
            self.family_revocations += 1;
        }
    }

    /// Whether `token` is a current access token: issued, not expired, not
    /// revoked.
    fn current_access(&self, token: &str) -> Option<&AccessToken> {
        let access = self.access.get(token)?;
        let revoked = access
            .family
            .and_then(|family| self.families.get(family))
            .is_some_and(|family| family.revoked);
        (Instant::now() < access.expires_at && !revoked).then_some(access)
    }
}

/// An authorization code waiting for its redemption.
pub(crate) struct PendingCode {
    client_id: String,
    redirect_uri: String,
    code_challenge: String,
    /// The scope of the authorization request, if it named one.
    pub(crate) scope: Option<String>,
    expires_at: Instant,
}

impl PendingCode {
    /// A code for `request` by `client_id`, redeemable for [`CODE_TTL`].
    pub(crate) fn new(client_id: &str, request: &AuthorizeRequest) -> PendingCode {
        PendingCode {
            client_id: client_id.to_owned(),
            redirect_uri: request.redirect_uri.clone(),
            code_challenge: request.code_challenge.clone(),
            scope: request.scope.clone(),
            expires_at: Instant::now() + CODE_TTL,
        }
    }

    /// Checks a redemption of this (just spent) code by `client_id`: not
    /// expired, issued to that client, the same `redirect_uri` (as a string)
    /// and a `code_verifier` matching the S256 challenge.
    pub(crate) fn check(
        &self,
        client_id: &str,
        redirect_uri: &str,
        code_verifier: &str,
    ) -> Result<(), OAuthError> {
        if Instant::now() >= self.expires_at {
            return Err(OAuthError::invalid_grant("authorization code expired"));
        }
        if self.client_id != client_id {
            return Err(OAuthError::invalid_grant(
                "authorization code was issued to another client",
            ));
        }
        if self.redirect_uri != redirect_uri {
            return Err(OAuthError::invalid_grant(
                "redirect_uri differs from the authorization request",
            ));
        }
        let verifier_ok = (43..=128).contains(&code_verifier.len())
            && code_verifier
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
        if !verifier_ok || s256_challenge(code_verifier) != self.code_challenge {
            return Err(OAuthError::invalid_grant("code_verifier does not match"));
        }
        Ok(())
    }
}

/// The checked parameters of an authorization request, common to OAuth 2.0
/// and OpenID Connect.
pub(crate) struct AuthorizeRequest {
    /// `redirect_uri` parsed, to which the answer's parameters are added.
    pub(crate) location: Url,
    /// `redirect_uri` as given, which the redemption must repeat.
    pub(crate) redirect_uri: String,
    /// `state`, echoed in the redirect.
    pub(crate) state: String,
    /// The S256 `code_challenge`.
    pub(crate) code_challenge: String,
    /// `scope`, if given.
    pub(crate) scope: Option<String>,
}

impl AuthorizeRequest {
    /// The answer's redirect target: `redirect_uri` with `name=value` and
    /// `state` added to its query.
    pub(crate) fn answer(mut self, name: &str, value: &str) -> String {
        self.location
            .query_pairs_mut()
            .append_pair(name, value)
            .append_pair("state", &self.state);
        self.location.into()
    }
}

/// The tokens descending from one authorization code.
struct Family {
    client_id: String,
    scope: Option<String>,
    /// The refresh token that works now; `None` once revoked.
    live_refresh: Option<String>,
    revoked: bool,
}

impl Family {
    /// Revokes every refresh and access token of the family.
    fn revoke(&mut self) {
        self.revoked = true;
        self.live_refresh = None;
    }
}

/// What the provider knows of an access token.
struct AccessToken {
    client_id: String,
    family: Option<usize>,
    /// Place in issue order, from 1.
    number: usize,
    expires_at: Instant,
}

/// What the provider knows of a refresh token; it is live while it is its
/// family's [`Family::live_refresh`], retired otherwise.
struct RefreshToken {
    family: usize,
}

/// A refusal in OAuth's error format (RFC 6749 5.2).
pub(crate) struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    /// A 400 answer with `error`.
    pub(crate) fn bad_request(error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
        }
    }

    /// A 400 `invalid_request`.
    pub(crate) fn invalid_request(description: impl Into<String>) -> OAuthError {
        OAuthError::bad_request("invalid_request", description)
    }

    /// A 400 `invalid_grant`.
    pub(crate) fn invalid_grant(description: impl Into<String>) -> OAuthError {
        OAuthError::bad_request("invalid_grant", description)
    }

    /// A 401 `invalid_client`.
    pub(crate) fn invalid_client(description: impl Into<String>) -> OAuthError {
        OAuthError {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: description.into(),
        }
    }

    /// The JSON response; a 401 challenges for HTTP Basic (RFC 6749 5.2).
    pub(crate) fn into_response(self) -> Response<ResponseBody> {
        let mut response = json_response(
            self.status,
            &json!({ "error": self.error, "error_description": self.description }),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="wrun-test-oauth""#),
            );
        }
        response
    }
}

/// Answers a request from the route table.
async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<ResponseBody> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let allowed = match path {
        "/authorize" | "/api/me" => (Method::GET, "GET"),
        "/token" => (Method::POST, "POST"),
        _ => {
            return json_response(StatusCode::NOT_FOUND, &json!({ "error": "not_found" }));
        }
    };
    if path == "/token" {
        shared.token_requests_started.fetch_add(1, Ordering::SeqCst);
    }
    if parts.method != allowed.0 {
        return method_not_allowed(allowed.1);
    }
    match path {
        "/authorize" => authorize(shared, parts.uri.query()),
        "/api/me" => api_me(shared, &parts.headers, parts.uri.query()),
        _ => {
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    return OAuthError::invalid_request("unreadable body").into_response();
                }
            };
            let (response, delay) = token(shared, &parts.headers, &body);
            tokio::time::sleep(delay).await;
            response
        }
    }
}

/// A 405 answer naming the `allow`ed method.
pub(crate) fn method_not_allowed(allow: &'static str) -> Response<ResponseBody> {
    let mut response = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({ "error": "method_not_allowed" }),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// `GET /authorize`: checks the request and redirects with a fresh code.
fn authorize(shared: &Shared, query: Option<&str>) -> Response<ResponseBody> {
    redirect_response(authorize_location(shared, query))
}

/// A 302 to `location` (not to be stored), or the refusal.
pub(crate) fn redirect_response(location: Result<String, OAuthError>) -> Response<ResponseBody> {
    match location.map(HeaderValue::try_from) {
        Ok(Ok(location)) => {
            let mut response = with_body(StatusCode::FOUND, "text/plain", "redirecting");
            response.headers_mut().insert(LOCATION, location);
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Ok(Err(_)) => {
            OAuthError::invalid_request("redirect_uri is not a valid header value").into_response()
        }
        Err(error) => error.into_response(),
    }
}

/// The redirect target of a valid authorization request, with a new code
/// stored for it; the refusal otherwise.
fn authorize_location(shared: &Shared, query: Option<&str>) -> Result<String, OAuthError> {
    let params = parse_params(query.unwrap_or_default().as_bytes())?;
    let request = check_authorize(&params, &shared.client_id)?;
    let code = random_token("ac_");
    shared
        .state()
        .codes
        .insert(code.clone(), PendingCode::new(&shared.client_id, &request));
    Ok(request.answer("code", &code))
}

/// Checks what every authorization request of `client_id` needs: the
/// client, the redirect target, `response_type=code`, a `state` and an S256
/// PKCE challenge.
pub(crate) fn check_authorize(
    params: &HashMap<String, String>,
    client_id: &str,
) -> Result<AuthorizeRequest, OAuthError> {
    let required = |name: &str| {
        params
            .get(name)
            .ok_or_else(|| OAuthError::invalid_request(format!("missing {name}")))
    };
    // The client and the redirect target first: a provider never redirects
    // to an unverified target (RFC 6749 4.1.2.1).
    if *required("client_id")? != client_id {
        return Err(OAuthError::bad_request(
            "invalid_client",
            "unknown client_id",
        ));
    }
    let redirect_uri = required("redirect_uri")?;
    let location = checked_redirect_uri(redirect_uri)?;
    match required("response_type")?.as_str() {
        "code" => {}
        _ => {
            return Err(OAuthError::bad_request(
                "unsupported_response_type",
                "only response_type=code is supported",
            ));
        }
    }
    let state = required("state")?;
    let code_challenge = required("code_challenge")
        .map_err(|_| OAuthError::invalid_request("code challenge required (PKCE)"))?;
    if params.get("code_challenge_method").map(String::as_str) != Some("S256") {
        return Err(OAuthError::invalid_request(
            "code_challenge_method must be S256",
        ));
    }
    let well_formed = code_challenge.len() == S256_CHALLENGE_LEN
        && code_challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        return Err(OAuthError::invalid_request(
            "code_challenge must be 43 base64url characters",
        ));
    }
    Ok(AuthorizeRequest {
        location,
        redirect_uri: redirect_uri.clone(),
        state: state.clone(),
        code_challenge: code_challenge.clone(),
        scope: params.get("scope").cloned(),
    })
}

/// Parses `redirect_uri`, accepting `https://` anywhere and `http://` on a
/// loopback host only, without fragment.
fn checked_redirect_uri(redirect_uri: &str) -> Result<Url, OAuthError> {
    let refuse = |why: &str| OAuthError::invalid_request(format!("redirect_uri {why}"));
    let url = Url::parse(redirect_uri).map_err(|_| refuse("is not an absolute URL"))?;
    if url.fragment().is_some() {
        return Err(refuse("must not have a fragment"));
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(domain)) => domain == "localhost",
        Some(url::Host::Ipv4(ip)) => ip == Ipv4Addr::LOCALHOST,
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(refuse("has no host")),
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if loopback => Ok(url),
        _ => Err(refuse("must be https, or http on a loopback host")),
    }
}

/// `POST /token`: the answer, and how long to hold it back.
fn token(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> (Response<ResponseBody>, Duration) {
    let outcome = token_grant(shared, headers, body);
    let mut state = shared.state();
    let delay = state.token_delay;
    let mut response = match outcome {
        Ok(fields) => json_response(StatusCode::OK, &Value::Object(fields)),
        Err(error) => {
            state.calls.failed += 1;
            if error.error == "invalid_grant" {
                state.invalid_grants += 1;
            }
            error.into_response()
        }
    };
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    (response, delay)
}

/// Authenticates the client and carries out the grant; the token response
/// fields on success.
fn token_grant(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<serde_json::Map<String, Value>, OAuthError> {
    let params = authenticated_form(&shared.client_id, &shared.client_secret, headers, body)?;
    let client_id = shared.client_id.as_str();
    let required = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| OAuthError::invalid_request(format!("missing {name}")))
    };
    let mut state = shared.state();
    match required("grant_type")? {
        "authorization_code" => {
            let fields = redeem_code(
                &mut state,
                client_id,
                required("code")?,
                required("redirect_uri")?,
                required("code_verifier")?,
            )?;
            state.calls.authorization_code += 1;
            Ok(fields)
        }
        "refresh_token" => {
            let scope = params.get("scope").map(String::as_str);
            let fields = refresh(&mut state, client_id, required("refresh_token")?, scope)?;
            state.calls.refresh_token += 1;
            Ok(fields)
        }
        "client_credentials" => {
            let mut fields = state.issue_access(client_id, None);
            if let Some(scope) = params.get("scope") {
                fields.insert("scope".to_owned(), Value::from(scope.as_str()));
            }
            state.calls.client_credentials += 1;
            Ok(fields)
        }
        _ => Err(OAuthError::bad_request(
            "unsupported_grant_type",
            "grant_type must be authorization_code, refresh_token or client_credentials",
        )),
    }
}

/// The parameters of a token request of `client_id` with `client_secret`:
/// checks that the body is form-encoded, parses it and authenticates the
/// client.
pub(crate) fn authenticated_form(
    client_id: &str,
    client_secret: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<HashMap<String, String>, OAuthError> {
    let form_encoded = headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form_encoded {
        return Err(OAuthError::invalid_request(
            "Content-Type must be application/x-www-form-urlencoded",
        ));
    }
    let params = parse_params(body)?;
    authenticate(client_id, client_secret, headers, &params)?;
    Ok(params)
}

/// Checks the client's credentials: HTTP Basic (each part form-urlencoded,
/// RFC 6749 2.3.1) or `client_id` and `client_secret` in the body, not both.
fn authenticate(
    client_id: &str,
    client_secret: &str,
    headers: &HeaderMap,
    params: &HashMap<String, String>,
) -> Result<(), OAuthError> {
    let (id, secret) = match headers.get(AUTHORIZATION) {
        Some(value) => {
            if params.contains_key("client_secret") {
                return Err(OAuthError::invalid_request(
                    "more than one client authentication method",
                ));
            }
            let (id, secret) = basic_credentials(value)
                .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?;
            if params
                .get("client_id")
                .is_some_and(|form_id| *form_id != id)
            {
                return Err(OAuthError::invalid_request(
                    "client_id differs from the Basic credentials",
                ));
            }
            (id, secret)
        }
        None => match (params.get("client_id"), params.get("client_secret")) {
            (Some(id), Some(secret)) => (id.clone(), secret.clone()),
            _ => return Err(OAuthError::invalid_client("client authentication required")),
        },
    };
    if id == client_id && secret == client_secret {
        Ok(())
    } else {
        Err(OAuthError::invalid_client("unknown client or wrong secret"))
    }
}

/// Decodes `Basic base64(urlencode(id):urlencode(secret))`.
fn basic_credentials(value: &HeaderValue) -> Option<(String, String)> {
    let (scheme, encoded) = value.to_str().ok()?.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
fn form_decode(text: &str) -> Option<String> {
    percent_encoding::percent_decode_str(&text.replace('+', " "))
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

/// The `authorization_code` grant: spends the code, checks its bindings and
/// PKCE, and starts a token family.
fn redeem_code(
    state: &mut State,
    client_id: &str,
    code: &str,
    redirect_uri: &str,
    code_verifier: &str,
) -> Result<serde_json::Map<String, Value>, OAuthError> {
    let Some(pending) = state.codes.remove(code) else {
        if let Some(&produced) = state.spent_codes.get(code) {
            if let Some(family) = produced {
                state.revoke_for_reuse(family);
            }
            return Err(OAuthError::invalid_grant("authorization code already used"));
        }
        return Err(OAuthError::invalid_grant("unknown authorization code"));
    };
    state.spent_codes.insert(code.to_owned(), None);
    pending.check(client_id, redirect_uri, code_verifier)?;

    let family = state.families.len();
    state.families.push(Family {
        client_id: client_id.to_owned(),
        scope: pending.scope.clone(),
        live_refresh: None,
        revoked: false,
    });
    state.spent_codes.insert(code.to_owned(), Some(family));
    let mut fields = state.issue_access(client_id, Some(family));
    let refresh_token = state.issue_refresh(family);
    fields.insert("refresh_token".to_owned(), Value::from(refresh_token));
    if let Some(scope) = pending.scope {
        fields.insert("scope".to_owned(), Value::from(scope));
    }
    Ok(fields)
}

/// The `refresh_token` grant with rotation and reuse detection.
fn refresh(
    state: &mut State,
    client_id: &str,
    refresh_token: &str,
    requested_scope: Option<&str>,
) -> Result<serde_json::Map<String, Value>, OAuthError> {
    let Some(&RefreshToken { family: index }) = state.refresh.get(refresh_token) else {
        return Err(OAuthError::invalid_grant("unknown refresh token"));
    };
    let Some(family) = state.families.get(index) else {
        return Err(OAuthError::invalid_grant("unknown refresh token"));
    };
    if family.client_id != client_id {
        return Err(OAuthError::invalid_grant(
            "refresh token was issued to another client",
        ));
    }
    if family.revoked {
        return Err(OAuthError::invalid_grant("refresh token revoked"));
    }
    if family.live_refresh.as_deref() != Some(refresh_token) {
        state.revoke_for_reuse(index);
        return Err(OAuthError::invalid_grant(
            "refresh token reused; every token of its grant is revoked",
        ));
    }
    let granted = family.scope.clone();
    let scope = match requested_scope {
        None => granted,
        Some(requested) => {
            let allowed: Vec<&str> = granted.as_deref().unwrap_or_default().split(' ').collect();
            if !requested.split(' ').all(|item| allowed.contains(&item)) {
                return Err(OAuthError::bad_request(
                    "invalid_scope",
                    "scope exceeds the one granted",
                ));
            }
            Some(requested.to_owned())
        }
    };

    let mut fields = state.issue_access(client_id, Some(index));
    let new_refresh = state.issue_refresh(index);
    fields.insert("refresh_token".to_owned(), Value::from(new_refresh));
    if let Some(scope) = scope {
        fields.insert("scope".to_owned(), Value::from(scope));
    }
    Ok(fields)
}

/// `GET /api/me`: the resource, for a current bearer token in the header.
fn api_me(shared: &Shared, headers: &HeaderMap, query: Option<&str>) -> Response<ResponseBody> {
    let in_query = query.is_some_and(|query| {
        url::form_urlencoded::parse(query.as_bytes()).any(|(key, _)| key == "access_token")
    });
    let bearer = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let mut state = shared.state();
    let found = bearer
        .filter(|_| !in_query)
        .and_then(|token| state.current_access(token))
        .map(|access| (access.client_id.clone(), access.number));
    match found {
        Some((client_id, number)) => {
            state.api_ok += 1;
            json_response(
                StatusCode::OK,
                &json!({ "ok": true, "client_id": client_id, "token_number": number }),
            )
        }
        None => {
            state.api_unauthorized += 1;
            let mut response = json_response(
                StatusCode::UNAUTHORIZED,
                &json!({ "error": "invalid_token" }),
            );
            response
                .headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static(BEARER_CHALLENGE));
            response
        }
    }
}

/// Parses form-urlencoded parameters, refusing a name given twice; a
/// parameter with an empty value counts as absent (RFC 6749 3.1).
pub(crate) fn parse_params(input: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut params = HashMap::new();
    for (name, value) in url::form_urlencoded::parse(input) {
        if value.is_empty() {
            continue;
        }
        match params.entry(name.into_owned()) {
            Entry::Occupied(entry) => {
                return Err(OAuthError::invalid_request(format!(
                    "parameter {} given more than once",
                    entry.key()
                )));
            }
            Entry::Vacant(entry) => {
                entry.insert(value.into_owned());
            }
        }
    }
    Ok(params)
}

/// `prefix` followed by random alphanumeric characters.
pub(crate) fn random_token(prefix: &str) -> String {
    let suffix: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(TOKEN_CHARS)
        .map(char::from)
        .collect();
    format!("{prefix}{suffix}")
}

/// A response with a JSON body.
pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response<ResponseBody> {
    with_body(status, "application/json", &body.to_string())
}

/// A response with the given status, content type and body.
pub(crate) fn with_body(
    status: StatusCode,
    content_type: &'static str,
    body: &str,
) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Helpers for the tests of this provider and of the OpenID Connect one.
#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
pub(crate) mod test_support {
    use super::*;

    /// A secret with characters that form-urlencoding changes.
    pub(crate) const SECRET: &str = "s3cr+t/é:x%";
    /// The PKCE verifier of the standard authorization requests.
    pub(crate) const VERIFIER: &str = "verifier-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEF";
    /// Changes to the standard authorize parameters: `(name, None)` drops
    /// a parameter, `(name, Some(value))` sets it.
    pub(crate) type Changes<'a> = &'a [(&'a str, Option<&'a str>)];

    /// The standard authorize parameters of `client_id`: `response_type`
    /// `code`, `redirect_uri`, `scope`, `state` `st-1` and the S256
    /// challenge of [`VERIFIER`].
    pub(crate) fn standard_params(
        client_id: &str,
        redirect_uri: &str,
        scope: &str,
    ) -> Vec<(&'static str, String)> {
        vec![
            ("response_type", "code".to_owned()),
            ("client_id", client_id.to_owned()),
            ("redirect_uri", redirect_uri.to_owned()),
            ("scope", scope.to_owned()),
            ("state", "st-1".to_owned()),
            ("code_challenge", s256_challenge(VERIFIER)),
            ("code_challenge_method", "S256".to_owned()),
        ]
    }

    /// `endpoint` with `params`, changed, as its query.
    pub(crate) fn changed_url<'a>(
        endpoint: &str,
        mut params: Vec<(&'a str, String)>,
        changes: Changes<'a>,
    ) -> String {
        for (name, value) in changes {
            params.retain(|(key, _)| key != name);
            if let Some(value) = value {
                params.push((name, (*value).to_owned()));
            }
        }
        let mut url = Url::parse(endpoint).unwrap();
        url.query_pairs_mut().extend_pairs(params);
        url.into()
    }

    /// The query parameters of a redirect `location`.
    pub(crate) fn redirect_params(location: &str) -> HashMap<String, String> {
        Url::parse(location)
            .unwrap()
            .query_pairs()
            .into_owned()
            .collect()
    }

    /// Checks that `refusal`, the error of an authorize request that was
    /// not redirected, is a 400 with `error`.
    pub(crate) fn assert_refused(refusal: &str, error: &str, case: &dyn fmt::Debug) {
        assert!(refusal.contains("400 Bad Request"), "{case:?}: {refusal}");
        assert!(
            refusal.contains(&format!(r#""error":"{error}""#)),
            "{case:?}: {refusal}"
        );
    }

    /// `Basic` credentials encoded as RFC 6749 2.3.1 says.
    pub(crate) fn basic(id: &str, secret: &str) -> String {
        let encode =
            |text: &str| url::form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", encode(id), encode(secret)))
        )
    }

    /// The form redeeming `code` with `redirect_uri` and [`VERIFIER`], plus
    /// `extra` pairs.
    pub(crate) fn redemption_form(
        code: &str,
        redirect_uri: &str,
        extra: &[(&str, &str)],
    ) -> String {
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("code_verifier", VERIFIER)
            .extend_pairs(extra)
            .finish()
    }

    /// POSTs `form` to `/token` with `authorization`, if any.
    pub(crate) async fn token_request(
        client: &mut DirectClient,
        authorization: Option<&str>,
        form: &str,
    ) -> (StatusCode, HeaderMap, Value) {
        let mut request = Request::post("/token")
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form.to_owned())))
            .unwrap();
        if let Some(value) = authorization {
            request
                .headers_mut()
                .insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        let (status, headers, body) = client.send(request).await.unwrap();
        (status, headers, serde_json::from_slice(&body).unwrap())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::test_support::*;
    use super::*;

    const CLIENT_ID: &str = "app";
    const REDIRECT: &str = "http://127.0.0.1:8765/callback";

    /// A server and a client connected to it.
    async fn setup() -> (OAuthServer, DirectClient) {
        let pki = TestPki::new(&["oauth.example.test"]);
        let server = OAuthServer::start(&pki, CLIENT_ID, SECRET).await;
        let client = DirectClient::connect(server.addr(), "127.0.0.1", &pki.ca_pem())
            .await
            .unwrap();
        (server, client)
    }

    /// An authorize URL for `server` with the standard parameters, changed.
    fn authorize_url(server: &OAuthServer, changes: Changes<'_>) -> String {
        let params = standard_params(CLIENT_ID, REDIRECT, "read write");
        changed_url(&server.url("/authorize"), params, changes)
    }

    /// Authorizes with the standard parameters and returns the code.
    async fn code(server: &OAuthServer) -> String {
        let location = server.authorize(&authorize_url(server, &[])).await.unwrap();
        redirect_params(&location)["code"].clone()
    }

    /// POSTs `form` to `/token` with correct Basic credentials.
    async fn token(client: &mut DirectClient, form: &str) -> (StatusCode, Value) {
        let (status, _, body) = token_request(client, Some(&basic(CLIENT_ID, SECRET)), form).await;
        (status, body)
    }

    /// The form redeeming `code` with the standard redirect and verifier.
    fn code_form(code: &str) -> String {
        redemption_form(code, REDIRECT, &[])
    }

    /// The form refreshing with `refresh_token`.
    fn refresh_form(refresh_token: &str) -> String {
        format!("grant_type=refresh_token&refresh_token={refresh_token}")
    }

    /// GETs `/api/me` with `token` as bearer token.
    async fn api_me(client: &mut DirectClient, token: &str) -> (StatusCode, HeaderMap, Value) {
        let request = Request::get("/api/me")
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .body(Full::default())
            .unwrap();
        let (status, headers, body) = client.send(request).await.unwrap();
        (status, headers, serde_json::from_slice(&body).unwrap())
    }

    fn str_field<'a>(body: &'a Value, name: &str) -> &'a str {
        body[name].as_str().unwrap()
    }

    #[tokio::test]
    async fn authorization_code_with_pkce_issues_tokens() {
        let (server, mut client) = setup().await;
        assert!(server.url("/token").starts_with("https://127.0.0.1:"));
        let state = "a b&c=d/é+%";
        let url = authorize_url(&server, &[("state", Some(state))]);
        let location = server.authorize(&url).await.unwrap();
        assert!(location.starts_with(&format!("{REDIRECT}?code=ac_")));
        let params = redirect_params(&location);
        assert_eq!(params["state"], state);
        let code = &params["code"];
        assert_eq!(code.len(), 3 + TOKEN_CHARS);

        let (status, headers, grant) = token_request(
            &mut client,
            Some(&basic(CLIENT_ID, SECRET)),
            &code_form(code),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{grant}");
        assert_eq!(headers[CACHE_CONTROL], "no-store");
        assert_eq!(grant["token_type"], "Bearer");
        assert_eq!(grant["expires_in"], 3600);
        assert_eq!(grant["scope"], "read write");
        let access = str_field(&grant, "access_token");
        let refresh = str_field(&grant, "refresh_token");
        assert!(access.starts_with("at_") && access.len() == 3 + TOKEN_CHARS);
        assert!(refresh.starts_with("rt_") && refresh.len() == 3 + TOKEN_CHARS);
        assert_eq!(server.issued_access_tokens(), [access]);
        assert_eq!(server.issued_refresh_tokens(), [refresh]);
        assert_eq!(server.current_refresh_token().as_deref(), Some(refresh));

        let (status, _, me) = api_me(&mut client, access).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            me,
            json!({ "ok": true, "client_id": CLIENT_ID, "token_number": 1 })
        );
        assert_eq!(server.api_calls(), (1, 0));
        assert_eq!(
            server.token_calls(),
            TokenCalls {
                authorization_code: 1,
                ..TokenCalls::default()
            }
        );
    }

    #[tokio::test]
    async fn redirect_keeps_the_query_of_redirect_uri() {
        let (server, _client) = setup().await;
        let redirect = "https://app.example.test/cb?tenant=x";
        let url = authorize_url(&server, &[("redirect_uri", Some(redirect))]);
        let location = server.authorize(&url).await.unwrap();
        assert!(location.starts_with("https://app.example.test/cb?tenant=x&code=ac_"));
        assert_eq!(redirect_params(&location)["state"], "st-1");
    }

    #[tokio::test]
    async fn authorize_refuses_bad_requests() {
        let (server, _client) = setup().await;
        let cases: &[(Changes<'_>, &str)] = &[
            (&[("client_id", None)], "invalid_request"),
            (&[("client_id", Some("other"))], "invalid_client"),
            (&[("redirect_uri", None)], "invalid_request"),
            (
                &[("redirect_uri", Some("http://app.example.test/cb"))],
                "invalid_request",
            ),
            (
                &[("redirect_uri", Some("https://app.example.test/cb#frag"))],
                "invalid_request",
            ),
            (&[("redirect_uri", Some("/cb"))], "invalid_request"),
            (
                &[("response_type", Some("token"))],
                "unsupported_response_type",
            ),
            (&[("response_type", None)], "invalid_request"),
            (&[("state", None)], "invalid_request"),
            (&[("state", Some(""))], "invalid_request"),
            (&[("code_challenge", None)], "invalid_request"),
            (&[("code_challenge", Some("short"))], "invalid_request"),
            (&[("code_challenge_method", None)], "invalid_request"),
            (
                &[("code_challenge_method", Some("plain"))],
                "invalid_request",
            ),
        ];
        for (changes, error) in cases {
            let url = authorize_url(&server, changes);
            let refusal = server.authorize(&url).await.unwrap_err().to_string();
            assert_refused(&refusal, error, changes);
        }
        // A parameter given twice.
        let twice = format!("{}&state=again", authorize_url(&server, &[]));
        let refusal = server.authorize(&twice).await.unwrap_err().to_string();
        assert!(refusal.contains("more than once"), "{refusal}");
        // Loopback redirect targets by name and IPv6 address are fine.
        for redirect in ["http://localhost:1/cb", "http://[::1]:2/cb"] {
            let url = authorize_url(&server, &[("redirect_uri", Some(redirect))]);
            assert!(server.authorize(&url).await.unwrap().starts_with(redirect));
        }
    }

    #[tokio::test]
    async fn code_redemption_refuses_wrong_verifier_redirect_and_reuse() {
        let (server, mut client) = setup().await;
        let wrong_verifier =
            code_form(&code(&server).await).replace("verifier-0123", "verifier-9999");
        let wrong_redirect = code_form(&code(&server).await).replace("callback", "other");
        for form in [wrong_verifier, wrong_redirect] {
            let (status, body) = token(&mut client, &form).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(body["error"], "invalid_grant");
            assert!(body["error_description"].is_string());
        }

        // A code is spent by a failed attempt too.
        let spent = code(&server).await;
        let wrong = code_form(&spent).replace("verifier-0123", "verifier-9999");
        assert_eq!(token(&mut client, &wrong).await.0, StatusCode::BAD_REQUEST);
        let (status, body) = token(&mut client, &code_form(&spent)).await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_grant"))
        );

        // Reusing a redeemed code is refused and revokes what it produced.
        let code = code(&server).await;
        let (status, grant) = token(&mut client, &code_form(&code)).await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = token(&mut client, &code_form(&code)).await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_grant"))
        );
        let (status, _, _) = api_me(&mut client, str_field(&grant, "access_token")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(server.current_refresh_token(), None);
        assert_eq!(server.family_revocations(), 1);

        assert_eq!(server.invalid_grant_count(), 5);
        assert_eq!(
            server.token_calls(),
            TokenCalls {
                authorization_code: 1,
                failed: 5,
                ..TokenCalls::default()
            }
        );
    }

    #[tokio::test]
    async fn refresh_rotates_and_reuse_revokes_the_family() {
        let (server, mut client) = setup().await;
        let (_, first) = token(&mut client, &code_form(&code(&server).await)).await;
        let rt1 = str_field(&first, "refresh_token");

        let (status, second) = token(&mut client, &refresh_form(rt1)).await;
        assert_eq!(status, StatusCode::OK, "{second}");
        let rt2 = str_field(&second, "refresh_token");
        assert_ne!(rt1, rt2);
        assert_eq!(second["scope"], "read write");
        assert_eq!(server.current_refresh_token().as_deref(), Some(rt2));
        let (status, _, me) = api_me(&mut client, str_field(&second, "access_token")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(me["token_number"], 2);

        // Narrowing the scope is allowed, widening is not.
        let (status, third) =
            token(&mut client, &format!("{}&scope=read", refresh_form(rt2))).await;
        assert_eq!((status, &third["scope"]), (StatusCode::OK, &json!("read")));
        let rt3 = str_field(&third, "refresh_token");
        let (status, body) =
            token(&mut client, &format!("{}&scope=admin", refresh_form(rt3))).await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_scope"))
        );

        // Reusing the first refresh token revokes the whole family.
        let (status, body) = token(&mut client, &refresh_form(rt1)).await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_grant"))
        );
        assert_eq!(server.family_revocations(), 1);
        assert_eq!(server.current_refresh_token(), None);
        let (status, body) = token(&mut client, &refresh_form(rt3)).await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_grant"))
        );
        for access in [&first, &second, &third].map(|grant| str_field(grant, "access_token")) {
            assert_eq!(
                api_me(&mut client, access).await.0,
                StatusCode::UNAUTHORIZED
            );
        }
        assert_eq!(server.family_revocations(), 1);
        assert_eq!(server.issued_refresh_tokens(), [rt1, rt2, rt3]);
        assert_eq!(
            server.token_calls(),
            TokenCalls {
                authorization_code: 1,
                refresh_token: 2,
                client_credentials: 0,
                failed: 3
            }
        );
        assert_eq!(server.invalid_grant_count(), 2);
        assert_eq!(server.api_calls(), (1, 3));
    }

    #[tokio::test]
    async fn revoke_all_ends_every_family() {
        let (server, mut client) = setup().await;
        let (_, grant) = token(&mut client, &code_form(&code(&server).await)).await;
        server.revoke_all();
        let (status, body) = token(
            &mut client,
            &refresh_form(str_field(&grant, "refresh_token")),
        )
        .await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_grant"))
        );
        assert_eq!(
            api_me(&mut client, str_field(&grant, "access_token"))
                .await
                .0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(server.current_refresh_token(), None);
        assert_eq!(server.family_revocations(), 0);
    }

    #[tokio::test]
    async fn client_credentials_issue_an_access_token_only() {
        let (server, mut client) = setup().await;
        server.set_access_ttl(Duration::from_millis(1500));
        let (status, grant) = token(&mut client, "grant_type=client_credentials&scope=read").await;
        assert_eq!(status, StatusCode::OK, "{grant}");
        assert_eq!(grant["expires_in"], 2);
        assert_eq!(grant["scope"], "read");
        assert!(grant.get("refresh_token").is_none());
        assert_eq!(server.issued_refresh_tokens(), Vec::<String>::new());
        assert_eq!(server.current_refresh_token(), None);
        assert_eq!(
            api_me(&mut client, str_field(&grant, "access_token"))
                .await
                .0,
            StatusCode::OK
        );
        assert_eq!(
            server.token_calls(),
            TokenCalls {
                client_credentials: 1,
                ..TokenCalls::default()
            }
        );
    }

    #[tokio::test]
    async fn client_authentication_is_strict() {
        let (server, mut client) = setup().await;
        let form = "grant_type=client_credentials";
        // Credentials in the body work.
        let body_credentials = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", CLIENT_ID)
            .append_pair("client_secret", SECRET)
            .finish();
        assert_eq!(
            token_request(&mut client, None, &body_credentials).await.0,
            StatusCode::OK
        );

        let unencoded = format!("Basic {}", STANDARD.encode(format!("{CLIENT_ID}:{SECRET}")));
        let refused = [
            (
                Some(basic(CLIENT_ID, "wrong")),
                form.to_owned(),
                StatusCode::UNAUTHORIZED,
                "invalid_client",
            ),
            (
                Some(basic("other", SECRET)),
                form.to_owned(),
                StatusCode::UNAUTHORIZED,
                "invalid_client",
            ),
            (
                Some(unencoded),
                form.to_owned(),
                StatusCode::UNAUTHORIZED,
                "invalid_client",
            ),
            (
                None,
                form.to_owned(),
                StatusCode::UNAUTHORIZED,
                "invalid_client",
            ),
            (
                Some(basic(CLIENT_ID, SECRET)),
                body_credentials,
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Some(basic(CLIENT_ID, SECRET)),
                "grant_type=password".to_owned(),
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
            ),
            (
                Some(basic(CLIENT_ID, SECRET)),
                String::new(),
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
        ];
        for (authorization, form, status, error) in refused {
            let (got, headers, body) =
                token_request(&mut client, authorization.as_deref(), &form).await;
            assert_eq!((got, &body["error"]), (status, &json!(error)), "{form}");
            if got == StatusCode::UNAUTHORIZED {
                assert!(headers.contains_key(WWW_AUTHENTICATE));
            }
        }

        // Not form-encoded.
        let json_body = Request::post("/token")
            .header(CONTENT_TYPE, "application/json")
            .header(AUTHORIZATION, basic(CLIENT_ID, SECRET))
            .body(Full::new(Bytes::from_static(
                br#"{"grant_type":"client_credentials"}"#,
            )))
            .unwrap();
        let (status, _, _) = client.send(json_body).await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST);

        assert_eq!(
            server.token_calls(),
            TokenCalls {
                client_credentials: 1,
                failed: 8,
                ..TokenCalls::default()
            }
        );
        assert_eq!(server.invalid_grant_count(), 0);
        assert_eq!(server.token_requests_started(), 9);
    }

    #[tokio::test]
    async fn api_refuses_expired_unknown_and_misplaced_tokens() {
        let (server, mut client) = setup().await;
        let (_, grant) = token(&mut client, "grant_type=client_credentials").await;
        let access = str_field(&grant, "access_token");
        assert_eq!(api_me(&mut client, access).await.0, StatusCode::OK);

        server.expire_access_tokens();
        let (status, headers, body) = api_me(&mut client, access).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(headers[WWW_AUTHENTICATE], BEARER_CHALLENGE);
        assert_eq!(body, json!({ "error": "invalid_token" }));
        assert_eq!(
            api_me(&mut client, "at_unknown").await.0,
            StatusCode::UNAUTHORIZED
        );

        // A token issued after the expiry works; in the query it does not.
        let (_, grant) = token(&mut client, "grant_type=client_credentials").await;
        let fresh = str_field(&grant, "access_token");
        let (status, _, me) = api_me(&mut client, fresh).await;
        assert_eq!((status, &me["token_number"]), (StatusCode::OK, &json!(2)));
        let in_query = Request::get(format!("/api/me?access_token={fresh}"))
            .body(Full::default())
            .unwrap();
        assert_eq!(
            client.send(in_query).await.unwrap().0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(server.api_calls(), (2, 3));

        let (status, _, _) = client
            .send(Request::get("/elsewhere").body(Full::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, headers, _) = client
            .send(Request::get("/token").body(Full::default()).unwrap())
            .await
            .unwrap();
        assert_eq!(
            (status, &headers[ALLOW]),
            (
                StatusCode::METHOD_NOT_ALLOWED,
                &HeaderValue::from_static("POST")
            )
        );
    }

    #[tokio::test]
    async fn token_delay_holds_the_answer_after_counting_the_arrival() {
        let (server, mut client) = setup().await;
        let delay = Duration::from_secs(1);
        server.set_token_delay(delay);
        let started = Instant::now();
        let request =
            tokio::spawn(async move { token(&mut client, "grant_type=client_credentials").await });
        // The grant is carried out on arrival; only the answer waits.
        while server.issued_access_tokens().is_empty() {
            assert!(
                started.elapsed() < delay,
                "no token issued before the delay ran out"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(server.token_requests_started(), 1);
        assert!(!request.is_finished());
        let (status, grant) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(started.elapsed() >= delay);
        assert_eq!(
            server.issued_access_tokens(),
            [str_field(&grant, "access_token")]
        );
    }
}

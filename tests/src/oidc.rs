//! A local OpenID Connect provider on loopback HTTPS.
//!
//! [`OidcProvider`] signs users in to a relying party under test (the
//! daemon's web console) with the authorization code flow and PKCE. It
//! registers one confidential client, binds `127.0.0.1:0`, serves HTTP/1.1
//! over TLS with [`TestPki`]'s server certificate (which always covers
//! `127.0.0.1`) and stops when dropped. Its issuer is
//! `https://127.0.0.1:PORT`, exactly, without a trailing slash.
//!
//! There is no sign-in page: `/authorize` signs in whoever the test set with
//! [`OidcProvider::set_user`], and refuses with `access_denied` while nobody
//! is set. [`OidcProvider::set_tamper`] spoils the id tokens issued from then
//! on, in one of the ways a relying party must notice ([`IdTokenTamper`]).
//!
//! The checks of requests, clients and codes are the ones of the OAuth 2.0
//! provider in [`oauth`](crate::oauth) (see its Strictness section), plus
//! those OpenID Connect adds.
//!
//! # Routes
//!
//! | Method and path | Response |
//! |-----------------|----------|
//! | `GET /.well-known/openid-configuration` | the discovery document |
//! | `GET /authorize?response_type=code&client_id&redirect_uri&scope&state&nonce&code_challenge&code_challenge_method=S256` | 302 to `redirect_uri` with `code` and `state`; with `error=access_denied` and `state` when no user is set; 400 JSON `{error, error_description}` for a bad request |
//! | `POST /token` | a form-encoded `authorization_code` grant: 200 JSON `{access_token, token_type: "Bearer", expires_in: 300, id_token, scope}` with `Cache-Control: no-store`; 400 or 401 JSON `{error, error_description}` |
//! | `GET /jwks` | the provider's one public key: `{"keys":[{"kty":"EC","crv":"P-256","x","y","kid","alg":"ES256","use":"sig"}]}` |
//! | another method on these paths | 405 |
//! | anything else | 404 |
//!
//! # Strictness
//!
//! On top of [`oauth`](crate::oauth)'s rules for `/authorize` and `/token`:
//!
//! - `scope` must be given and hold `openid` (`invalid_scope`), and `nonce`
//!   must be given (`invalid_request`).
//! - `/token` knows the `authorization_code` grant only; there are no
//!   refresh tokens.
//!
//! # The id token
//!
//! A compact JWS signed with ES256 (header `{alg, typ: "JWT", kid}`), whose
//! claims are every claim of the user object, then `iss` (the issuer), `aud`
//! (the client id), `iat`, `exp` (`iat` + 300), `nonce` (the authorization
//! request's) and `auth_time` (when `/authorize` signed the user in), which
//! replace user claims of the same names. The user is read when `/authorize`
//! answers: changing it later does not change the codes issued before.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use wrun_tests::TestPki;
//! use wrun_tests::oidc::OidcProvider;
//!
//! let pki = TestPki::new(&["idp.example.test"]);
//! let idp = OidcProvider::start(&pki, "console", "s3cret").await;
//! idp.set_user(serde_json::json!({
//!     "sub": "alice",
//!     "email": "alice@example.test",
//!     "wrun_workspace": "acme",
//!     "wrun_role": "admin",
//! }));
//! // Configure the daemon with issuer `idp.issuer()`, trusting `pki.ca_pem()`.
//! assert!(idp.issuer().starts_with("https://127.0.0.1:"));
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::header::{CACHE_CONTROL, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::mock::{bind_loopback, spawn_https};
use crate::oauth::{
    OAuthError, PendingCode, ResponseBody, authenticated_form, check_authorize, follow_authorize,
    json_response, method_not_allowed, parse_params, random_token, redirect_response,
};
use crate::pki::TestPki;

/// The lifetime of id tokens and access tokens, in seconds.
const TOKEN_TTL_SECS: u64 = 300;

/// How the id tokens issued from now on are spoiled, so that a test can show
/// the relying party refuses each kind; set with [`OidcProvider::set_tamper`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IdTokenTamper {
    /// Sound id tokens.
    #[default]
    None,
    /// A `nonce` other than the authorization request's.
    WrongNonce,
    /// An `aud` other than the client id (`another-client`).
    WrongAudience,
    /// An `iss` other than the issuer: the issuer with a trailing `/`, which
    /// only an exact comparison (as OpenID Connect requires) refuses.
    WrongIssuer,
    /// Issued 600 s ago, so `exp` was 300 s ago: beyond any usual leeway.
    Expired,
    /// Signed by a key that is not in the JWKS, under the published key's `kid`.
    ForeignKey,
    /// Header `alg` `none` and an empty signature (`header.claims.`).
    AlgNone,
}

/// A running OpenID Connect provider on `127.0.0.1`; see the
/// [module docs](self) for routes and behaviour.
///
/// The server stops when this value is dropped.
pub struct OidcProvider {
    addr: SocketAddr,
    ca_pem: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl OidcProvider {
    /// Starts an HTTPS server presenting `pki`'s server certificate, with one
    /// registered client, `client_id` with `client_secret`, and a new P-256
    /// signing key. Nobody is signed in until [`set_user`](Self::set_user).
    ///
    /// # Panics
    ///
    /// Panics if no loopback port can be bound, if key generation fails, or
    /// if called outside a tokio runtime.
    pub async fn start(pki: &TestPki, client_id: &str, client_secret: &str) -> OidcProvider {
        let (listener, addr) = bind_loopback().await;
        let shared = Arc::new(Shared {
            issuer: format!("https://{addr}"),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            key: SigningKey::generate(),
            foreign_key: SigningKey::generate(),
            token_requests: AtomicUsize::new(0),
            state: Mutex::new(State::default()),
        });
        let serving = Arc::clone(&shared);
        let acceptor = TlsAcceptor::from(pki.server_config());
        let task = spawn_https(listener, acceptor, move |request| {
            let shared = Arc::clone(&serving);
            async move { handle(&shared, request).await }
        });
        OidcProvider {
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

    /// The issuer identifier, `https://127.0.0.1:PORT`: the `iss` of the id
    /// tokens and the `issuer` of the discovery document, character for
    /// character. [`TestPki`] certificates always cover `127.0.0.1`.
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// A URL for `path` (with its query, if any) on this server, such as
    /// `https://127.0.0.1:41234/jwks`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.shared.issuer)
    }

    /// Signs in `claims` at every `/authorize` from now on, until changed
    /// or [cleared](Self::clear_user). `claims` is a JSON object with a
    /// string `sub`, such as `{"sub": "alice", "email":
    /// "alice@example.test", "wrun_workspace": "acme", "wrun_role":
    /// "admin"}`; every member becomes a claim of the id token.
    ///
    /// # Panics
    ///
    /// Panics if `claims` is not an object with a non-empty string `sub`: a
    /// mistake in the test.
    pub fn set_user(&self, claims: Value) {
        let Value::Object(claims) = claims else {
            panic!("set_user takes a JSON object of claims");
        };
        assert!(
            claims
                .get("sub")
                .and_then(Value::as_str)
                .is_some_and(|sub| !sub.is_empty()),
            "set_user's claims need a non-empty string `sub`"
        );
        self.shared.state().user = Some(claims);
    }

    /// Signs nobody in: `/authorize` redirects with `error=access_denied`,
    /// as when the user declines.
    pub fn clear_user(&self) {
        self.shared.state().user = None;
    }

    /// Spoils the id tokens issued from now on as `tamper` says, until set
    /// back to [`IdTokenTamper::None`].
    pub fn set_tamper(&self, tamper: IdTokenTamper) {
        self.shared.state().tamper = tamper;
    }

    /// How many `GET /authorize` requests arrived, whatever their outcome.
    pub fn authorize_requests(&self) -> usize {
        self.shared.state().authorize_params.len()
    }

    /// The query parameters of every `GET /authorize` request, in order of
    /// arrival, each in the order sent.
    pub fn authorize_params(&self) -> Vec<Vec<(String, String)>> {
        self.shared.state().authorize_params.clone()
    }

    /// How many `POST /token` requests arrived, counted before their body
    /// is read, whatever their outcome.
    pub fn token_requests(&self) -> usize {
        self.shared.token_requests.load(Ordering::SeqCst)
    }

    /// Every id token issued, in order, for canary scans.
    pub fn issued_id_tokens(&self) -> Vec<String> {
        self.shared.state().issued_id.clone()
    }

    /// Every access token issued, in order, for canary scans.
    pub fn issued_access_tokens(&self) -> Vec<String> {
        self.shared.state().issued_access.clone()
    }

    /// Sends a GET to `authorize_url` (a full `/authorize` URL on this
    /// server, as the relying party built it) and returns the `Location` it
    /// redirected to: the browser's part, for tests without a browser.
    ///
    /// # Errors
    ///
    /// As [`OAuthServer::authorize`](crate::oauth::OAuthServer::authorize):
    /// the URL is not `https://` on this server's port, the connection
    /// fails, or the answer is not a redirect (the error then holds the
    /// status and body).
    pub async fn authorize(&self, authorize_url: &str) -> anyhow::Result<String> {
        follow_authorize(self.addr, &self.ca_pem, authorize_url).await
    }
}

impl fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.shared.issuer)
            .field("client_id", &self.shared.client_id)
            .finish_non_exhaustive()
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        // Dropping the accept loop drops its `JoinSet`, which aborts every
        // connection task as well.
        self.task.abort();
    }
}

/// An ECDSA P-256 key signing with SHA-256, in JWS's fixed-size `r || s`
/// form.
///
/// ring rather than jsonwebtoken: ring is already built for rustls, signs
/// in the fixed form directly, and lets the tampered tokens (a foreign key,
/// `alg: none`) be assembled by hand, which a JWT library would refuse to do.
struct SigningKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl SigningKey {
    /// A new random key.
    fn generate() -> SigningKey {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("generate a P-256 key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("a generated P-256 key parses");
        SigningKey { pair, rng }
    }

    /// The signature of `message`, base64url-encoded.
    fn sign(&self, message: &[u8]) -> String {
        let signature = self
            .pair
            .sign(&self.rng, message)
            .expect("ECDSA signing does not fail");
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    }

    /// The public key's coordinates, base64url-encoded: `(x, y)`.
    fn coordinates(&self) -> (String, String) {
        // The uncompressed point: 0x04 || x || y, 32 bytes each.
        let point = self.pair.public_key().as_ref();
        let (x, y) = point.get(1..).expect("an uncompressed point").split_at(32);
        (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y))
    }

    /// The key's JWK thumbprint (RFC 7638), used as its `kid`.
    fn thumbprint(&self) -> String {
        let (x, y) = self.coordinates();
        let canonical = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
    }
}

/// State shared between the [`OidcProvider`] handle and its tasks.
struct Shared {
    issuer: String,
    client_id: String,
    client_secret: String,
    key: SigningKey,
    /// Signs [`IdTokenTamper::ForeignKey`] tokens; never published.
    foreign_key: SigningKey,
    token_requests: AtomicUsize,
    state: Mutex<State>,
}

impl Shared {
    /// Locks the state, ignoring poisoning: a panicking test must not hide
    /// the counters from the next assertion.
    fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The discovery document.
    fn discovery(&self) -> Value {
        let issuer = &self.issuer;
        json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/authorize"),
            "token_endpoint": format!("{issuer}/token"),
            "jwks_uri": format!("{issuer}/jwks"),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": ["openid", "email", "profile"],
        })
    }

    /// The JSON Web Key Set: the signing key's public half.
    fn jwks(&self) -> Value {
        let (x, y) = self.key.coordinates();
        json!({
            "keys": [{
                "kty": "EC",
                "crv": "P-256",
                "x": x,
                "y": y,
                "kid": self.key.thumbprint(),
                "alg": "ES256",
                "use": "sig",
            }]
        })
    }

    /// A new id token for `sign_in`, spoiled as `tamper` says.
    fn id_token(&self, sign_in: &SignIn, tamper: IdTokenTamper) -> String {
        let now = unix_now();
        let iat = match tamper {
            IdTokenTamper::Expired => now.saturating_sub(2 * TOKEN_TTL_SECS),
            _ => now,
        };
        let mut claims = sign_in.claims.clone();
        let issuer = match tamper {
            IdTokenTamper::WrongIssuer => format!("{}/", self.issuer),
            _ => self.issuer.clone(),
        };
        let audience = match tamper {
            IdTokenTamper::WrongAudience => "another-client".to_owned(),
            _ => self.client_id.clone(),
        };
        let nonce = match tamper {
            IdTokenTamper::WrongNonce => random_token("n_"),
            _ => sign_in.nonce.clone(),
        };
        claims.insert("iss".to_owned(), Value::from(issuer));
        claims.insert("aud".to_owned(), Value::from(audience));
        claims.insert("iat".to_owned(), Value::from(iat));
        claims.insert("exp".to_owned(), Value::from(iat + TOKEN_TTL_SECS));
        claims.insert("nonce".to_owned(), Value::from(nonce));
        claims.insert(
            "auth_time".to_owned(),
            Value::from(sign_in.auth_time.min(iat)),
        );

        let alg = match tamper {
            IdTokenTamper::AlgNone => "none",
            _ => "ES256",
        };
        let header = json!({ "alg": alg, "typ": "JWT", "kid": self.key.thumbprint() });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(Value::Object(claims).to_string())
        );
        let signature = match tamper {
            IdTokenTamper::AlgNone => String::new(),
            IdTokenTamper::ForeignKey => self.foreign_key.sign(signing_input.as_bytes()),
            _ => self.key.sign(signing_input.as_bytes()),
        };
        format!("{signing_input}.{signature}")
    }
}

/// The provider's knobs, pending codes and records.
#[derive(Default)]
struct State {
    user: Option<Map<String, Value>>,
    tamper: IdTokenTamper,
    /// Codes not yet presented to `/token`, with the sign-in they stand for.
    codes: HashMap<String, (PendingCode, SignIn)>,
    /// Codes presented once, whatever the outcome.
    spent_codes: HashSet<String>,
    authorize_params: Vec<Vec<(String, String)>>,
    issued_id: Vec<String>,
    issued_access: Vec<String>,
}

/// What an authorization code stands for beyond OAuth: who signed in, when,
/// and the relying party's nonce.
struct SignIn {
    claims: Map<String, Value>,
    nonce: String,
    auth_time: u64,
}

/// Locks `mutex`, ignoring poisoning.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Seconds since the Unix epoch.
fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Answers a request from the route table.
async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<ResponseBody> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path();
    let allowed = match path {
        "/.well-known/openid-configuration" | "/jwks" | "/authorize" => (Method::GET, "GET"),
        "/token" => (Method::POST, "POST"),
        _ => return json_response(StatusCode::NOT_FOUND, &json!({ "error": "not_found" })),
    };
    if path == "/token" {
        shared.token_requests.fetch_add(1, Ordering::SeqCst);
    }
    if parts.method != allowed.0 {
        return method_not_allowed(allowed.1);
    }
    match path {
        "/.well-known/openid-configuration" => json_response(StatusCode::OK, &shared.discovery()),
        "/jwks" => json_response(StatusCode::OK, &shared.jwks()),
        "/authorize" => redirect_response(authorize_location(shared, parts.uri.query())),
        _ => {
            let mut response = match body.collect().await {
                Ok(collected) => token(shared, &parts.headers, &collected.to_bytes())
                    .map_or_else(OAuthError::into_response, |fields| {
                        json_response(StatusCode::OK, &Value::Object(fields))
                    }),
                Err(_) => OAuthError::invalid_request("unreadable body").into_response(),
            };
            response
                .headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
    }
}

/// The redirect target of a valid authorization request: with a new code
/// when a user is set, with `error=access_denied` otherwise; the refusal of
/// an invalid one.
fn authorize_location(shared: &Shared, query: Option<&str>) -> Result<String, OAuthError> {
    let query = query.unwrap_or_default();
    shared.state().authorize_params.push(
        url::form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect(),
    );
    let params = parse_params(query.as_bytes())?;
    let request = check_authorize(&params, &shared.client_id)?;
    let openid = request
        .scope
        .as_deref()
        .is_some_and(|scope| scope.split(' ').any(|item| item == "openid"));
    if !openid {
        return Err(OAuthError::bad_request(
            "invalid_scope",
            "scope must include openid",
        ));
    }
    let nonce = params
        .get("nonce")
        .ok_or_else(|| OAuthError::invalid_request("missing nonce"))?;

    let mut state = shared.state();
    let Some(claims) = state.user.clone() else {
        return Ok(request.answer("error", "access_denied"));
    };
    let code = random_token("ac_");
    let sign_in = SignIn {
        claims,
        nonce: nonce.clone(),
        auth_time: unix_now(),
    };
    state.codes.insert(
        code.clone(),
        (PendingCode::new(&shared.client_id, &request), sign_in),
    );
    drop(state);
    Ok(request.answer("code", &code))
}

/// `POST /token`: authenticates the client, redeems the code and issues an
/// access token and an id token.
fn token(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Map<String, Value>, OAuthError> {
    let params = authenticated_form(&shared.client_id, &shared.client_secret, headers, body)?;
    let required = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .ok_or_else(|| OAuthError::invalid_request(format!("missing {name}")))
    };
    if required("grant_type")? != "authorization_code" {
        return Err(OAuthError::bad_request(
            "unsupported_grant_type",
            "grant_type must be authorization_code",
        ));
    }
    let code = required("code")?;
    let mut state = shared.state();
    let Some((pending, sign_in)) = state.codes.remove(code) else {
        return Err(OAuthError::invalid_grant(
            if state.spent_codes.contains(code) {
                "authorization code already used"
            } else {
                "unknown authorization code"
            },
        ));
    };
    state.spent_codes.insert(code.to_owned());
    pending.check(
        &shared.client_id,
        required("redirect_uri")?,
        required("code_verifier")?,
    )?;

    let id_token = shared.id_token(&sign_in, state.tamper);
    let access_token = random_token("at_");
    state.issued_id.push(id_token.clone());
    state.issued_access.push(access_token.clone());
    let mut fields = Map::new();
    fields.insert("access_token".to_owned(), Value::from(access_token));
    fields.insert("token_type".to_owned(), Value::from("Bearer"));
    fields.insert("expires_in".to_owned(), Value::from(TOKEN_TTL_SECS));
    fields.insert("id_token".to_owned(), Value::from(id_token));
    fields.insert(
        "scope".to_owned(),
        Value::from(pending.scope.unwrap_or_default()),
    );
    Ok(fields)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use http_body_util::Full;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    use super::*;
    use crate::client::DirectClient;
    use crate::oauth::test_support::*;

    const CLIENT_ID: &str = "console";
    const REDIRECT: &str = "https://127.0.0.1:9443/console/callback";
    const NONCE: &str = "n-0S6_WzA2Mj";

    /// A provider with alice as the user, and a client connected to it.
    async fn setup() -> (OidcProvider, DirectClient) {
        let pki = TestPki::new(&["idp.example.test"]);
        let provider = OidcProvider::start(&pki, CLIENT_ID, SECRET).await;
        provider.set_user(alice());
        let client = DirectClient::connect(provider.addr(), "127.0.0.1", &pki.ca_pem())
            .await
            .unwrap();
        (provider, client)
    }

    fn alice() -> Value {
        json!({
            "sub": "alice",
            "email": "alice@example.test",
            "wrun_workspace": "acme",
            "wrun_role": "admin",
        })
    }

    /// An authorize URL with the standard parameters, changed.
    fn authorize_url(provider: &OidcProvider, changes: Changes<'_>) -> String {
        let mut params = standard_params(CLIENT_ID, REDIRECT, "openid email");
        params.push(("nonce", NONCE.to_owned()));
        changed_url(&provider.url("/authorize"), params, changes)
    }

    /// Signs in with the standard parameters and returns the code.
    async fn code(provider: &OidcProvider) -> String {
        let location = provider
            .authorize(&authorize_url(provider, &[]))
            .await
            .unwrap();
        redirect_params(&location)["code"].clone()
    }

    /// The form redeeming `code` with the standard redirect and verifier,
    /// plus `extra` pairs.
    fn code_form(code: &str, extra: &[(&str, &str)]) -> String {
        redemption_form(code, REDIRECT, extra)
    }

    /// Redeems `code` with correct Basic credentials.
    async fn redeem(client: &mut DirectClient, code: &str) -> (StatusCode, Value) {
        let basic = basic(CLIENT_ID, SECRET);
        let (status, _, body) = token_request(client, Some(&basic), &code_form(code, &[])).await;
        (status, body)
    }

    /// GETs `path` and parses the JSON answer.
    async fn get_json(client: &mut DirectClient, path: &str) -> (StatusCode, Value) {
        let request = Request::get(path).body(Full::default()).unwrap();
        let (status, _, body) = client.send(request).await.unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    /// A compact JWS taken apart: header, claims, signing input, signature.
    struct Jws {
        header: Value,
        claims: Value,
        signing_input: String,
        signature: Vec<u8>,
    }

    fn decode(token: &str) -> Jws {
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3, "{token}");
        let json = |part: &str| serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap());
        Jws {
            header: json(parts[0]).unwrap(),
            claims: json(parts[1]).unwrap(),
            signing_input: format!("{}.{}", parts[0], parts[1]),
            signature: URL_SAFE_NO_PAD.decode(parts[2]).unwrap(),
        }
    }

    /// Whether `jws` verifies with the (only) key of `jwks`, as a relying
    /// party checks it.
    fn verifies(jws: &Jws, jwks: &Value) -> bool {
        let key = &jwks["keys"][0];
        let coordinate = |name: &str| URL_SAFE_NO_PAD.decode(key[name].as_str().unwrap()).unwrap();
        let mut point = vec![4_u8];
        point.extend(coordinate("x"));
        point.extend(coordinate("y"));
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            .verify(jws.signing_input.as_bytes(), &jws.signature)
            .is_ok()
    }

    #[tokio::test]
    async fn discovery_and_jwks_describe_the_provider() {
        let (provider, mut client) = setup().await;
        let issuer = provider.issuer();
        assert_eq!(issuer, format!("https://127.0.0.1:{}", provider.port()));
        let (status, discovery) = get_json(&mut client, "/.well-known/openid-configuration").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(discovery["issuer"], issuer);
        assert_eq!(
            discovery["authorization_endpoint"],
            format!("{issuer}/authorize")
        );
        assert_eq!(discovery["token_endpoint"], format!("{issuer}/token"));
        assert_eq!(discovery["jwks_uri"], provider.url("/jwks"));
        assert_eq!(discovery["response_types_supported"], json!(["code"]));
        assert_eq!(discovery["subject_types_supported"], json!(["public"]));
        assert_eq!(
            discovery["id_token_signing_alg_values_supported"],
            json!(["ES256"])
        );
        assert_eq!(
            discovery["code_challenge_methods_supported"],
            json!(["S256"])
        );
        assert_eq!(
            discovery["token_endpoint_auth_methods_supported"],
            json!(["client_secret_basic", "client_secret_post"])
        );
        assert_eq!(
            discovery["scopes_supported"],
            json!(["openid", "email", "profile"])
        );

        let (status, jwks) = get_json(&mut client, "/jwks").await;
        assert_eq!(status, StatusCode::OK);
        let keys = jwks["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1);
        let key = &keys[0];
        for (name, value) in [
            ("kty", "EC"),
            ("crv", "P-256"),
            ("alg", "ES256"),
            ("use", "sig"),
        ] {
            assert_eq!(key[name], value);
        }
        for coordinate in ["x", "y"] {
            let bytes = URL_SAFE_NO_PAD
                .decode(key[coordinate].as_str().unwrap())
                .unwrap();
            assert_eq!(bytes.len(), 32);
        }
        assert_eq!(key["kid"].as_str().unwrap().len(), 43);

        // A second provider has its own key.
        let other = OidcProvider::start(&TestPki::new(&[]), CLIENT_ID, SECRET).await;
        assert_ne!(other.shared.jwks()["keys"][0]["x"], key["x"]);
        assert_eq!(
            get_json(&mut client, "/userinfo").await.0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            get_json(&mut client, "/token").await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }

    #[tokio::test]
    async fn sign_in_issues_an_id_token_that_verifies_against_the_jwks() {
        let (provider, mut client) = setup().await;
        let before = unix_now();
        let state = "a b&c=d/é+%";
        let location = provider
            .authorize(&authorize_url(&provider, &[("state", Some(state))]))
            .await
            .unwrap();
        assert!(location.starts_with(&format!("{REDIRECT}?code=ac_")));
        let params = redirect_params(&location);
        assert_eq!(params["state"], state);
        assert_eq!(provider.authorize_requests(), 1);
        let sent = &provider.authorize_params()[0];
        assert!(sent.contains(&("nonce".to_owned(), NONCE.to_owned())));

        let (status, headers, grant) = token_request(
            &mut client,
            Some(&basic(CLIENT_ID, SECRET)),
            &code_form(&params["code"], &[]),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{grant}");
        assert_eq!(headers[CACHE_CONTROL], "no-store");
        assert_eq!(grant["token_type"], "Bearer");
        assert_eq!(grant["expires_in"], 300);
        assert_eq!(grant["scope"], "openid email");
        assert!(grant["access_token"].as_str().unwrap().starts_with("at_"));
        let id_token = grant["id_token"].as_str().unwrap();
        assert_eq!(provider.issued_id_tokens(), [id_token]);
        assert_eq!(
            provider.issued_access_tokens(),
            [grant["access_token"].as_str().unwrap()]
        );

        let (_, jwks) = get_json(&mut client, "/jwks").await;
        let jws = decode(id_token);
        assert_eq!(
            jws.header,
            json!({ "alg": "ES256", "typ": "JWT", "kid": jwks["keys"][0]["kid"] })
        );
        assert!(verifies(&jws, &jwks));
        let claims = &jws.claims;
        assert_eq!(claims["iss"], provider.issuer());
        assert_eq!(claims["aud"], CLIENT_ID);
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["nonce"], NONCE);
        assert_eq!(claims["email"], "alice@example.test");
        assert_eq!(claims["wrun_workspace"], "acme");
        assert_eq!(claims["wrun_role"], "admin");
        let iat = claims["iat"].as_u64().unwrap();
        assert!(iat >= before && iat <= unix_now());
        assert_eq!(claims["exp"].as_u64().unwrap(), iat + 300);
        let auth_time = claims["auth_time"].as_u64().unwrap();
        assert!(auth_time >= before && auth_time <= iat);
        // A changed signature no longer verifies.
        let mut forged = decode(id_token);
        forged.signing_input = forged.signing_input.replace('.', ".e30");
        assert!(!verifies(&forged, &jwks));

        // Credentials in the body work too; a code is spent once.
        let code = code(&provider).await;
        let post = code_form(
            &code,
            &[("client_id", CLIENT_ID), ("client_secret", SECRET)],
        );
        let (status, _, grant) = token_request(&mut client, None, &post).await;
        assert_eq!(status, StatusCode::OK, "{grant}");
        let (status, body) = redeem(&mut client, &code).await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_grant"))
        );
        assert_eq!(body["error_description"], "authorization code already used");
        assert_eq!(provider.token_requests(), 3);
        assert_eq!(provider.issued_id_tokens().len(), 2);
    }

    #[tokio::test]
    async fn authorize_refuses_bad_requests_and_denies_without_a_user() {
        let (provider, _client) = setup().await;
        let cases: &[(Changes<'_>, &str)] = &[
            (&[("client_id", Some("other"))], "invalid_client"),
            (&[("client_id", None)], "invalid_request"),
            (
                &[("redirect_uri", Some("http://app.example.test/cb"))],
                "invalid_request",
            ),
            (
                &[("response_type", Some("id_token"))],
                "unsupported_response_type",
            ),
            (&[("state", None)], "invalid_request"),
            (&[("nonce", None)], "invalid_request"),
            (&[("code_challenge", None)], "invalid_request"),
            (
                &[("code_challenge_method", Some("plain"))],
                "invalid_request",
            ),
            (&[("scope", Some("email profile"))], "invalid_scope"),
            (&[("scope", Some("openidx"))], "invalid_scope"),
            (&[("scope", None)], "invalid_scope"),
        ];
        for (changes, error) in cases {
            let url = authorize_url(&provider, changes);
            let refusal = provider.authorize(&url).await.unwrap_err().to_string();
            assert_refused(&refusal, error, changes);
        }
        assert_eq!(provider.authorize_requests(), cases.len());

        // Without a user: access_denied, with the state, and no code.
        provider.clear_user();
        let location = provider
            .authorize(&authorize_url(&provider, &[]))
            .await
            .unwrap();
        assert!(location.starts_with(REDIRECT), "{location}");
        let params = redirect_params(&location);
        assert_eq!(params["error"], "access_denied");
        assert_eq!(params["state"], "st-1");
        assert!(!params.contains_key("code"));
        assert_eq!(provider.authorize_requests(), cases.len() + 1);
        assert!(provider.shared.state().codes.is_empty());
    }

    #[tokio::test]
    async fn token_refuses_wrong_bindings_and_client_authentication() {
        let (provider, mut client) = setup().await;
        let basic_right = basic(CLIENT_ID, SECRET);

        let wrong_verifier =
            code_form(&code(&provider).await, &[]).replace("verifier-0123", "verifier-9999");
        let wrong_redirect = code_form(&code(&provider).await, &[]).replace("callback", "other");
        for form in [wrong_verifier, wrong_redirect] {
            let (status, _, body) = token_request(&mut client, Some(&basic_right), &form).await;
            assert_eq!(
                (status, &body["error"]),
                (StatusCode::BAD_REQUEST, &json!("invalid_grant")),
                "{form}"
            );
        }
        let (status, body) = redeem(&mut client, "ac_unknown").await;
        assert_eq!(
            (status, &body["error"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_grant"))
        );

        let code = code(&provider).await;
        let both = code_form(
            &code,
            &[("client_id", CLIENT_ID), ("client_secret", SECRET)],
        );
        let refused = [
            (
                Some(basic(CLIENT_ID, "wrong")),
                code_form(&code, &[]),
                StatusCode::UNAUTHORIZED,
                "invalid_client",
            ),
            (
                None,
                code_form(&code, &[]),
                StatusCode::UNAUTHORIZED,
                "invalid_client",
            ),
            (
                Some(basic_right.clone()),
                both,
                StatusCode::BAD_REQUEST,
                "invalid_request",
            ),
            (
                Some(basic_right.clone()),
                code_form(&code, &[]).replace("authorization_code", "refresh_token"),
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
            ),
        ];
        for (authorization, form, status, error) in refused {
            let (got, _, body) = token_request(&mut client, authorization.as_deref(), &form).await;
            assert_eq!((got, &body["error"]), (status, &json!(error)), "{form}");
        }
        // The code survived refusals before its redemption was attempted.
        assert_eq!(redeem(&mut client, &code).await.0, StatusCode::OK);
        assert_eq!(provider.token_requests(), 8);
        assert_eq!(provider.issued_id_tokens().len(), 1);
    }

    #[tokio::test]
    async fn tamper_knobs_spoil_the_next_id_tokens() {
        let (provider, mut client) = setup().await;
        let (_, jwks) = get_json(&mut client, "/jwks").await;
        let kid = jwks["keys"][0]["kid"].clone();
        let mut issue = async |tamper| {
            provider.set_tamper(tamper);
            let code = code(&provider).await;
            let (status, grant) = redeem(&mut client, &code).await;
            assert_eq!(status, StatusCode::OK, "{tamper:?}: {grant}");
            decode(grant["id_token"].as_str().unwrap())
        };

        let sound = issue(IdTokenTamper::None).await;
        assert!(verifies(&sound, &jwks));

        let jws = issue(IdTokenTamper::WrongNonce).await;
        assert!(verifies(&jws, &jwks));
        assert_ne!(jws.claims["nonce"], NONCE);

        let jws = issue(IdTokenTamper::WrongAudience).await;
        assert!(verifies(&jws, &jwks));
        assert_eq!(jws.claims["aud"], "another-client");

        let jws = issue(IdTokenTamper::WrongIssuer).await;
        assert!(verifies(&jws, &jwks));
        assert_eq!(jws.claims["iss"], format!("{}/", provider.issuer()));

        let jws = issue(IdTokenTamper::Expired).await;
        assert!(verifies(&jws, &jwks));
        let exp = jws.claims["exp"].as_u64().unwrap();
        assert!(exp + 290 <= unix_now(), "exp {exp}");
        assert_eq!(jws.claims["iat"].as_u64().unwrap() + 300, exp);

        let jws = issue(IdTokenTamper::ForeignKey).await;
        assert_eq!(jws.header["kid"], kid);
        assert_eq!(jws.header["alg"], "ES256");
        assert_eq!(jws.signature.len(), 64);
        assert!(!verifies(&jws, &jwks));

        let jws = issue(IdTokenTamper::AlgNone).await;
        assert_eq!(jws.header["alg"], "none");
        assert!(jws.signature.is_empty());
        assert!(provider.issued_id_tokens().last().unwrap().ends_with('.'));

        // Every other claim stays sound, and None restores sound tokens.
        assert_eq!(jws.claims["nonce"], NONCE);
        assert_eq!(jws.claims["sub"], "alice");
        let jws = issue(IdTokenTamper::None).await;
        assert!(verifies(&jws, &jwks));
        assert_eq!(jws.claims["iss"], provider.issuer());
    }

    #[test]
    fn set_user_wants_an_object_with_a_subject() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let provider = runtime.block_on(OidcProvider::start(&TestPki::new(&[]), CLIENT_ID, SECRET));
        for claims in [json!("alice"), json!({ "email": "a@example.test" })] {
            let refused = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                provider.set_user(claims.clone());
            }));
            assert!(refused.is_err(), "{claims}");
        }
        let debug = format!("{provider:?}");
        assert!(debug.contains(CLIENT_ID) && !debug.contains("s3cr"));
    }
}

//! A mock upstream API on loopback: HTTPS (or plain HTTP) with canned routes.
//!
//! [`MockServer`] binds `127.0.0.1:0`, serves HTTP/1.1 with keep-alive on a
//! tokio task and records everything it receives: each request as a
//! [`Recorded`], and each connection's plaintext bytes for canary searches.
//! Dropping the server stops it, including connections held open by `/hang`.
//!
//! # Routes
//!
//! Routes ignore the method unless noted.
//!
//! | Path | Response |
//! |------|----------|
//! | `/echo…` | 200 JSON `{method, path, query, headers, body}` describing the request; the request's `authorization` comes back in `x-echo-authorization` |
//! | `/echo-b64…` | the same document, base64-encoded (standard alphabet) as a `text/plain` body |
//! | `/reflect/{form}` | reflects the bearer token (the `Authorization` value without `Bearer `) in one `form` of [`REFLECT_FORMS`]: in a header name, behind codings the client did not ask for, escaped or cut |
//! | `/redirect?to=URL` | 302 to `URL` |
//! | `/status/NNN` | status `NNN` (200 to 599) |
//! | `/slow?ms=N` | 200 `late` after waiting `N` ms (at most 600000) |
//! | `/hang` | never answers |
//! | `/big?bytes=N` | 200 with `N` bytes of `a`, streamed |
//! | `/trickle?chunks=N&ms=M` | 200 with `N` chunks of `a`, the head at once, then one chunk every `M` ms (at most 600000) |
//! | `/repos/{owner}/{repo}/issues/{number}` | GitHub-like issue, bearer token required |
//! | `/api/chat.postMessage` | Slack-like, POST JSON `{channel, text}`, bearer token required |
//! | `/oauth/token` | OAuth client-credentials grant, POST form |
//! | anything else | 404 |
//!
//! A bearer token is accepted if it equals the one set with
//! [`MockServer::set_expected_bearer`], or was issued by `/oauth/token`; when
//! no token was set, any non-empty bearer token is accepted.

use std::convert::Infallible;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, LOCATION};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rand::Rng as _;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::pki::TestPki;

/// The longest delay `/slow` accepts, in milliseconds.
const MAX_SLOW_MS: u64 = 600_000;

/// The response body type of every route.
type ResponseBody = BoxBody<Bytes, Infallible>;

/// One request as the mock server received it.
///
/// `Debug` shows the method, the path, the header names and the body length,
/// but no header value or body byte: those may be the secrets a test injected.
#[derive(Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The request method, such as `GET`.
    pub method: String,
    /// The request target's path and query, such as `/echo?x=1`.
    pub path_and_query: String,
    /// The headers in the order received; names are lowercase and values
    /// that are not UTF-8 are converted lossily.
    pub headers: Vec<(String, String)>,
    /// The request body.
    pub body: Vec<u8>,
}

impl Recorded {
    /// Returns the value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

impl fmt::Debug for Recorded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("Recorded")
            .field("method", &self.method)
            .field("path_and_query", &self.path_and_query)
            .field("header_names", &names)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// A running mock API server on `127.0.0.1`; see the [module docs](self) for routes.
///
/// The server stops when this value is dropped.
pub struct MockServer {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl MockServer {
    /// Starts an HTTPS server presenting `pki`'s server certificate.
    ///
    /// # Panics
    ///
    /// Panics if no loopback port can be bound, or if called outside a tokio
    /// runtime.
    pub async fn start(pki: &TestPki) -> MockServer {
        MockServer::spawn(Some(TlsAcceptor::from(pki.server_config()))).await
    }

    /// Starts a plain HTTP server.
    ///
    /// It serves the same routes and records connections, so a test can show
    /// that a request to an `http://` URL was refused before any byte left:
    /// [`connection_count`](Self::connection_count) stays 0.
    ///
    /// # Panics
    ///
    /// Panics if no loopback port can be bound, or if called outside a tokio
    /// runtime.
    pub async fn start_plain() -> MockServer {
        MockServer::spawn(None).await
    }

    /// Binds the listener and spawns the accept loop.
    async fn spawn(acceptor: Option<TlsAcceptor>) -> MockServer {
        let (listener, addr) = bind_loopback().await;
        let shared = Arc::new(Shared::default());
        let tls = acceptor.is_some();
        let serving = Arc::clone(&shared);
        let task = tokio::spawn(accept_loop(listener, move |stream| {
            serving.connections.fetch_add(1, Ordering::SeqCst);
            serve_connection(stream, acceptor.clone(), Arc::clone(&serving))
        }));
        MockServer {
            addr,
            tls,
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

    /// A URL for `path_and_query` on this server by IP address, with the
    /// right scheme, such as `https://127.0.0.1:41234/echo`.
    pub fn url(&self, path_and_query: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{path_and_query}", self.addr)
    }

    /// Every request received so far, in the order their bodies completed.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// Whether the plaintext received on any one connection (request lines,
    /// headers and bodies; after TLS decryption) contains `needle`.
    pub fn raw_bytes_contain(&self, needle: &[u8]) -> bool {
        if needle.is_empty() {
            return true;
        }
        lock(&self.shared.raw).iter().any(|buffer| {
            lock(buffer)
                .windows(needle.len())
                .any(|window| window == needle)
        })
    }

    /// All plaintext received so far, one connection after the other in
    /// accept order; for [`assert_absent`](crate::assert_absent).
    pub fn raw_bytes(&self) -> Vec<u8> {
        let buffers = lock(&self.shared.raw);
        let mut all = Vec::new();
        for buffer in buffers.iter() {
            all.extend_from_slice(&lock(buffer));
        }
        all
    }

    /// How many TCP connections the server accepted, whether or not a TLS
    /// handshake or a request followed.
    pub fn connection_count(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// How many bytes arrived on the wire, before TLS decryption (so TLS
    /// handshakes count).
    pub fn wire_bytes_received(&self) -> u64 {
        self.shared.wire_bytes.load(Ordering::SeqCst)
    }

    /// The TLS server name (SNI) each completed handshake asked for, in
    /// order; `None` where the client sent none (as for an IP address).
    pub fn tls_server_names(&self) -> Vec<Option<String>> {
        lock(&self.shared.server_names).clone()
    }

    /// Requires `Authorization: Bearer <token>` on the GitHub-like and
    /// Slack-like routes (tokens issued by `/oauth/token` stay valid too).
    pub fn set_expected_bearer(&self, token: impl Into<String>) {
        *lock(&self.shared.expected_bearer) = Some(token.into());
    }

    /// Sets the `client_secret` that `/oauth/token` accepts; until it is set,
    /// any non-empty secret is accepted.
    pub fn set_expected_client_secret(&self, secret: impl Into<String>) {
        *lock(&self.shared.expected_client_secret) = Some(secret.into());
    }

    /// The access tokens `/oauth/token` issued, in order.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.shared.issued_tokens).clone()
    }
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .finish_non_exhaustive()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        // Dropping the accept loop drops its `JoinSet`, which aborts every
        // connection task as well.
        self.task.abort();
    }
}

/// State shared between the [`MockServer`] handle and its tasks.
#[derive(Default)]
struct Shared {
    requests: Mutex<Vec<Recorded>>,
    raw: Mutex<Vec<Arc<Mutex<Vec<u8>>>>>,
    connections: AtomicUsize,
    wire_bytes: Arc<AtomicU64>,
    server_names: Mutex<Vec<Option<String>>>,
    expected_bearer: Mutex<Option<String>>,
    expected_client_secret: Mutex<Option<String>>,
    issued_tokens: Mutex<Vec<String>>,
}

/// Locks `mutex`, ignoring poisoning: a panicking test must not hide the
/// recorded state from the next assertion.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Binds a listener on `127.0.0.1` with a port the system picks.
///
/// # Panics
///
/// Panics if no loopback port can be bound.
pub(crate) async fn bind_loopback() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .expect("bind a loopback port");
    let addr = listener
        .local_addr()
        .expect("bound listener has an address");
    (listener, addr)
}

/// Accepts connections until the task running it is aborted, and serves each
/// on a task of its own with `serve`.
///
/// Aborting the task drops its `JoinSet`, which aborts every connection task
/// as well: the accept loop of this crate's test servers.
pub(crate) async fn accept_loop<S, F>(listener: TcpListener, serve: S)
where
    S: Fn(TcpStream) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    // Like a production server: no Nagle delay on responses.
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve(stream));
                }
                // Accept errors such as running out of file descriptors are
                // transient; back off briefly rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Serves HTTPS on `listener` on a new task: TLS with `acceptor`, then
/// HTTP/1.1 with keep-alive, every request answered by `handler`. Aborting
/// the task stops the server and ends its connections.
///
/// A failed handshake (such as a client that does not trust the CA) simply
/// ends that connection; the test sees it on the client side.
///
/// # Panics
///
/// Panics if called outside a tokio runtime.
pub(crate) fn spawn_https<H, F, B>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handler: H,
) -> JoinHandle<()>
where
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let handler = Arc::new(handler);
    tokio::spawn(accept_loop(listener, move |stream| {
        let acceptor = acceptor.clone();
        let handler = Arc::clone(&handler);
        async move {
            if let Ok(tls) = acceptor.accept(stream).await {
                serve_http1(tls, move |request| handler(request)).await;
            }
        }
    }))
}

/// Serves one accepted connection, with TLS when an acceptor is given.
async fn serve_connection(stream: TcpStream, acceptor: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let plaintext = Arc::new(Mutex::new(Vec::new()));
    lock(&shared.raw).push(Arc::clone(&plaintext));
    let wire = Arc::clone(&shared.wire_bytes);
    match acceptor {
        Some(acceptor) => {
            let counted = Tap::new(stream, Some(wire), None);
            // A failed handshake (such as a client that does not trust the CA)
            // simply ends the connection; the test sees it on the client side.
            let Ok(tls) = acceptor.accept(counted).await else {
                return;
            };
            let server_name = tls.get_ref().1.server_name().map(str::to_owned);
            lock(&shared.server_names).push(server_name);
            serve_http(Tap::new(tls, None, Some(plaintext)), shared).await;
        }
        None => serve_http(Tap::new(stream, Some(wire), Some(plaintext)), shared).await,
    }
}

/// Runs hyper's HTTP/1.1 server (keep-alive on) over `io`, answering with
/// this mock's route table.
async fn serve_http<S>(io: S, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_http1(io, move |request| {
        let shared = Arc::clone(&shared);
        async move { handle(&shared, request).await }
    })
    .await;
}

/// Runs hyper's HTTP/1.1 server (keep-alive on) over `io`, answering every
/// request with `handler`: the serving loop of this crate's test servers.
pub(crate) async fn serve_http1<S, H, F, B>(io: S, handler: H)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let handler = Arc::new(handler);
    let service = service_fn(move |request| {
        let handler = Arc::clone(&handler);
        async move { Ok::<_, Infallible>(handler(request).await) }
    });
    // Connection errors (a client going away mid-request) end this connection only.
    let _ = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// Records a request and answers it from the route table.
async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<ResponseBody> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return text(StatusCode::BAD_REQUEST, "unreadable body"),
    };
    lock(&shared.requests).push(Recorded {
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), ToString::to_string),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    });

    let path = parts.uri.path();
    let query = parts.uri.query();
    if path.starts_with("/echo-b64") {
        echo(&parts.method, path, query, &parts.headers, &body, true)
    } else if path.starts_with("/echo") {
        echo(&parts.method, path, query, &parts.headers, &body, false)
    } else if path == "/encoded" || path == "/partial" {
        // The echo, labelled as compressed or as a byte range: a response a
        // scrubbing proxy cannot read as it is.
        let mut response = echo(&parts.method, path, query, &parts.headers, &body, false);
        if path == "/encoded" {
            response.headers_mut().insert(
                hyper::header::CONTENT_ENCODING,
                hyper::header::HeaderValue::from_static("gzip"),
            );
        } else {
            *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        }
        response
    } else if let Some(form) = path.strip_prefix("/reflect/") {
        reflect(form, &parts.headers)
    } else if path == "/redirect" {
        redirect(query)
    } else if let Some(code) = path.strip_prefix("/status/") {
        let mut response = status(code);
        // `/status/429?retry_after=N` asks the client to wait N seconds.
        if let Some(wait) = query
            .unwrap_or_default()
            .split('&')
            .find_map(|kv| kv.strip_prefix("retry_after="))
            .and_then(|v| http::HeaderValue::from_str(v).ok())
        {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, wait);
        }
        response
    } else if path == "/slow" {
        slow(query).await
    } else if path == "/hang" {
        std::future::pending().await
    } else if path == "/big" {
        big(query)
    } else if path == "/trickle" {
        trickle(query)
    } else if let Some(rest) = path.strip_prefix("/repos/") {
        github_issue(shared, rest, &parts.headers)
    } else if path == "/api/chat.postMessage" {
        slack_post_message(shared, &parts.method, &parts.headers, &body)
    } else if path == "/oauth/token" {
        oauth_token(shared, &parts.method, &parts.headers, &body)
    } else {
        text(StatusCode::NOT_FOUND, "not found")
    }
}

/// `/echo…` and `/echo-b64…`: describes the request back to the client.
fn echo(
    method: &Method,
    path: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    base64: bool,
) -> Response<ResponseBody> {
    let mut header_object = serde_json::Map::new();
    for (name, value) in headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match header_object.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                header_object.insert(name.as_str().to_owned(), Value::String(value));
            }
        }
    }
    let document = json!({
        "method": method.as_str(),
        "path": path,
        "query": query,
        "headers": header_object,
        "body": String::from_utf8_lossy(body),
    })
    .to_string();
    let mut response = if base64 {
        text(StatusCode::OK, &STANDARD.encode(document))
    } else {
        with_body(StatusCode::OK, "application/json", document)
    };
    if let Some(authorization) = headers.get(AUTHORIZATION) {
        response
            .headers_mut()
            .insert("x-echo-authorization", authorization.clone());
    }
    response
}

/// The forms in which `/reflect/{form}` reflects the bearer token, as common
/// stacks do (debug endpoints, error pages, echo APIs).
pub const REFLECT_FORMS: &[&str] = &[
    "header-name",
    "reason-phrase",
    "two-content-encodings",
    "content-encoding-list",
    "content-encoding-case",
    "content-encoding-unknown",
    "transfer-encoding",
    "json-escaped-lower",
    "json-escaped-upper",
    "json-escaped-some",
    "html-decimal",
    "html-hex",
    "html-named",
    "cut",
    "percent",
    "percent-keep-slash",
    "percent-lower",
    "trimmed",
];

/// `/reflect/{form}`: the bearer token reflected in `form` (see
/// [`REFLECT_FORMS`]); 404 for an unknown form, 400 without a bearer token.
fn reflect(form: &str, headers: &HeaderMap) -> Response<ResponseBody> {
    let Some(token) = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(|value| value.strip_prefix("Bearer ").unwrap_or(value).to_owned())
    else {
        return text(StatusCode::BAD_REQUEST, "no bearer token");
    };
    match form {
        "header-name" => {
            let mut response = text(StatusCode::OK, "reflected in a header name");
            if let Ok(name) = hyper::header::HeaderName::try_from(format!("x-echo-{token}")) {
                response
                    .headers_mut()
                    .insert(name, HeaderValue::from_static("1"));
            }
            response
        }
        "reason-phrase" => {
            let mut response = text(StatusCode::UNAUTHORIZED, "reflected in the reason phrase");
            if let Ok(reason) = hyper::ext::ReasonPhrase::try_from(format!("Bad token {token}")) {
                response.extensions_mut().insert(reason);
            }
            response
        }
        "two-content-encodings"
        | "content-encoding-list"
        | "content-encoding-case"
        | "content-encoding-unknown"
        | "transfer-encoding" => compressed(form, &token),
        // The echo goes into the body as it is, one level of escaping, as
        // the upstream's encoder wrote it.
        _ => match reflected(form, &token) {
            Some(echo) => with_body(
                StatusCode::FORBIDDEN,
                "application/json",
                format!(r#"{{"error":"bad token","echo":"{echo}"}}"#),
            ),
            None => text(StatusCode::NOT_FOUND, "unknown form"),
        },
    }
}

/// The text `/reflect/{form}` puts, as it is, in its JSON body's `echo`
/// field for `token`, for the forms that reflect in the body; `None` for the
/// other forms. The token should hold no `"` or `\`, which would end or
/// escape the JSON string.
pub fn reflected(form: &str, token: &str) -> Option<String> {
    let escaped = |escape: &dyn Fn(char) -> Option<String>| -> String {
        token
            .chars()
            .map(|c| escape(c).unwrap_or_else(|| c.to_string()))
            .collect()
    };
    let percent = |text: &str| {
        percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    Some(match form {
        "json-escaped-lower" => escaped(&|c| Some(utf16_escape(c, false))),
        "json-escaped-upper" => escaped(&|c| Some(utf16_escape(c, true))),
        // As .NET's encoder: `-`, `+`, `'`, `&` and non-ASCII escaped.
        "json-escaped-some" => escaped(&|c| {
            (matches!(c, '-' | '+' | '\'' | '&') || !c.is_ascii()).then(|| utf16_escape(c, true))
        }),
        "html-decimal" => escaped(&|c| Some(format!("&#{};", u32::from(c)))),
        "html-hex" => escaped(&|c| Some(format!("&#x{:x};", u32::from(c)))),
        "html-named" => escaped(&|c| {
            let name = match c {
                '&' => "amp",
                '\'' => "apos",
                '+' => "plus",
                '/' => "sol",
                '=' => "equals",
                '_' => "lowbar",
                '.' => "period",
                '-' => return Some("&#45;".to_owned()),
                _ => return None,
            };
            Some(format!("&{name};"))
        }),
        "cut" => {
            let cut: String = format!("Bearer {token}").chars().take(7 + 20).collect();
            format!("header `authorization` is too long: '{cut}...'")
        }
        "percent" => percent(token),
        "percent-keep-slash" => token.split('/').map(percent).collect::<Vec<_>>().join("/"),
        "percent-lower" => percent(token).to_lowercase(),
        "trimmed" => format!("token <{}>", token.trim()),
        _ => return None,
    })
}

/// `\uXXXX` escapes of `c` (a surrogate pair outside the BMP).
fn utf16_escape(c: char, upper: bool) -> String {
    let mut units = [0_u16; 2];
    c.encode_utf16(&mut units)
        .iter()
        .map(|unit| {
            if upper {
                format!("\\u{unit:04X}")
            } else {
                format!("\\u{unit:04x}")
            }
        })
        .collect()
}

/// A gzip body holding `token`, announced in the way `form` names.
fn compressed(form: &str, token: &str) -> Response<ResponseBody> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let gzipped = encoder
        .write_all(format!("{{\"echo\":\"{token}\"}}").as_bytes())
        .and_then(|()| encoder.finish());
    let Ok(gzipped) = gzipped else {
        return text(StatusCode::INTERNAL_SERVER_ERROR, "gzip failed");
    };
    let mut response = Response::new(Full::new(Bytes::from(gzipped)).boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    let encoding = hyper::header::CONTENT_ENCODING;
    match form {
        "two-content-encodings" => {
            headers.append(encoding.clone(), HeaderValue::from_static("identity"));
            headers.append(encoding, HeaderValue::from_static("gzip"));
        }
        "content-encoding-list" => {
            headers.insert(encoding, HeaderValue::from_static("gzip, identity"));
        }
        "content-encoding-case" => {
            headers.insert(encoding, HeaderValue::from_static("GZip"));
        }
        "content-encoding-unknown" => {
            headers.insert(encoding, HeaderValue::from_static("x-wrun-unknown"));
        }
        // hyper adds `chunked` after the coding and frames the body.
        _ => {
            headers.insert(
                hyper::header::TRANSFER_ENCODING,
                HeaderValue::from_static("gzip"),
            );
        }
    }
    response
}

/// `/redirect?to=URL`: a 302 to `URL`.
fn redirect(query: Option<&str>) -> Response<ResponseBody> {
    let Some(target) = query_param(query, "to") else {
        return text(StatusCode::BAD_REQUEST, "missing to");
    };
    let Ok(location) = HeaderValue::try_from(target) else {
        return text(StatusCode::BAD_REQUEST, "bad to");
    };
    let mut response = text(StatusCode::FOUND, "redirecting");
    response.headers_mut().insert(LOCATION, location);
    response
}

/// `/status/NNN`: that status with a short body (none where HTTP forbids one).
fn status(code: &str) -> Response<ResponseBody> {
    let status = code
        .parse::<u16>()
        .ok()
        .filter(|code| (200..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok());
    match status {
        Some(
            status
            @ (StatusCode::NO_CONTENT | StatusCode::RESET_CONTENT | StatusCode::NOT_MODIFIED),
        ) => {
            let mut response = Response::new(Full::new(Bytes::new()).boxed());
            *response.status_mut() = status;
            response
        }
        Some(status) => text(status, &format!("status {}", status.as_u16())),
        None => text(StatusCode::BAD_REQUEST, "bad status"),
    }
}

/// `/slow?ms=N`: waits, then answers `late`.
async fn slow(query: Option<&str>) -> Response<ResponseBody> {
    let Some(ms) = query_param(query, "ms").and_then(|ms| ms.parse::<u64>().ok()) else {
        return text(StatusCode::BAD_REQUEST, "bad ms");
    };
    tokio::time::sleep(Duration::from_millis(ms.min(MAX_SLOW_MS))).await;
    text(StatusCode::OK, "late")
}

/// `/big?bytes=N`: `N` bytes of `a`, streamed in 64 KiB frames.
fn big(query: Option<&str>) -> Response<ResponseBody> {
    let Some(bytes) = query_param(query, "bytes").and_then(|n| n.parse::<u64>().ok()) else {
        return text(StatusCode::BAD_REQUEST, "bad bytes");
    };
    let mut response = Response::new(RepeatBody { remaining: bytes }.boxed());
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response
}

/// `/trickle?chunks=N&ms=M`: the head at once, then a byte every `M` ms.
fn trickle(query: Option<&str>) -> Response<ResponseBody> {
    let number = |name| query_param(query, name).and_then(|n| n.parse::<u64>().ok());
    let (Some(chunks), Some(ms)) = (number("chunks"), number("ms")) else {
        return text(StatusCode::BAD_REQUEST, "bad chunks or ms");
    };
    let interval = Duration::from_millis(ms.min(MAX_SLOW_MS));
    let body = TrickleBody {
        remaining: chunks,
        interval,
        timer: Box::pin(tokio::time::sleep(interval)),
    };
    Response::new(body.boxed())
}

/// `/repos/{owner}/{repo}/issues/{number}`: a GitHub-like issue.
fn github_issue(shared: &Shared, rest: &str, headers: &HeaderMap) -> Response<ResponseBody> {
    if !bearer_accepted(shared, headers) {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({ "message": "Bad credentials" }),
        );
    }
    let not_found = || json_response(StatusCode::NOT_FOUND, &json!({ "message": "Not Found" }));
    let segments: Vec<&str> = rest.split('/').collect();
    let [owner, repo, "issues", number] = segments.as_slice() else {
        return not_found();
    };
    let Ok(number) = number.parse::<u64>() else {
        return not_found();
    };
    if owner.is_empty() || repo.is_empty() || number == 404 {
        return not_found();
    }
    json_response(
        StatusCode::OK,
        &json!({
            "number": number,
            "title": format!("Issue {number} title"),
            "body": format!("Body of issue {number}."),
            "state": "open",
            "user": { "login": "octocat" },
            "labels": [{ "name": "bug" }],
            "html_url": format!("https://github.example/{owner}/{repo}/issues/{number}"),
        }),
    )
}

/// `/api/chat.postMessage`: a Slack-like message post.
///
/// Slack reports errors with status 200 and `ok: false`; so does this route,
/// with `invalid_auth`, `invalid_arguments` (body not JSON or no channel) or
/// `channel_not_found` (channel `#missing`).
fn slack_post_message(
    shared: &Shared,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Response<ResponseBody> {
    if method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    }
    let slack_error =
        |error: &str| json_response(StatusCode::OK, &json!({ "ok": false, "error": error }));
    if !bearer_accepted(shared, headers) {
        return slack_error("invalid_auth");
    }
    let Ok(message) = serde_json::from_slice::<Value>(body) else {
        return slack_error("invalid_arguments");
    };
    let Some(channel) = message.get("channel").and_then(Value::as_str) else {
        return slack_error("invalid_arguments");
    };
    if channel == "#missing" {
        return slack_error("channel_not_found");
    }
    let text = message
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or_default();
    json_response(
        StatusCode::OK,
        &json!({
            "ok": true,
            "channel": channel,
            "ts": "1700000000.000100",
            "message": { "text": text },
        }),
    )
}

/// `/oauth/token`: the OAuth 2.0 client-credentials grant.
///
/// The client credentials come from the form body or, as RFC 6749 prefers,
/// from an `Authorization: Basic` header. Any failure is 401 `invalid_client`.
fn oauth_token(
    shared: &Shared,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Response<ResponseBody> {
    if method != Method::POST {
        return text(StatusCode::METHOD_NOT_ALLOWED, "use POST");
    }
    let mut grant_type = None;
    let mut client_id = None;
    let mut client_secret = None;
    for (key, value) in url::form_urlencoded::parse(body) {
        match key.as_ref() {
            "grant_type" => grant_type = Some(value.into_owned()),
            "client_id" => client_id = Some(value.into_owned()),
            "client_secret" => client_secret = Some(value.into_owned()),
            _ => {}
        }
    }
    if let Some((id, secret)) = basic_credentials(headers) {
        client_id = Some(id);
        client_secret = Some(secret);
    }

    let secret_ok = match (client_secret, &*lock(&shared.expected_client_secret)) {
        (Some(given), Some(expected)) => given == *expected,
        (Some(given), None) => !given.is_empty(),
        (None, _) => false,
    };
    let accepted = grant_type.as_deref() == Some("client_credentials")
        && client_id.is_some_and(|id| !id.is_empty())
        && secret_ok;
    if !accepted {
        return json_response(
            StatusCode::UNAUTHORIZED,
            &json!({ "error": "invalid_client" }),
        );
    }

    let suffix: String = rand::rng()
        .sample_iter(Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    let token = format!("at-{suffix}");
    lock(&shared.issued_tokens).push(token.clone());
    let mut response = json_response(
        StatusCode::OK,
        &json!({ "access_token": token, "token_type": "Bearer", "expires_in": 3600 }),
    );
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    response
}

/// Whether the request carries an acceptable `Authorization: Bearer` token.
fn bearer_accepted(shared: &Shared, headers: &HeaderMap) -> bool {
    let Some(token) = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .filter(|token| !token.is_empty())
    else {
        return false;
    };
    if lock(&shared.issued_tokens)
        .iter()
        .any(|issued| issued == token)
    {
        return true;
    }
    match &*lock(&shared.expected_bearer) {
        Some(expected) => expected == token,
        None => true,
    }
}

/// Decodes `Authorization: Basic base64(id:secret)`, if present and well formed.
fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let encoded = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))?;
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

/// The first value of `name` in a form-urlencoded query string.
fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// A response with a `text/plain` body.
fn text(status: StatusCode, body: &str) -> Response<ResponseBody> {
    with_body(status, "text/plain", body.to_owned())
}

/// A response with a JSON body.
fn json_response(status: StatusCode, body: &Value) -> Response<ResponseBody> {
    with_body(status, "application/json", body.to_string())
}

/// A response with the given status, content type and in-memory body.
fn with_body(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<ResponseBody> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed());
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// One frame's worth of the `/big` body; frames borrow from it without copying.
static CHUNK: [u8; 64 * 1024] = [b'a'; 64 * 1024];

/// A body of `remaining` bytes of `a`, produced a frame at a time so that a
/// large body is never held in memory.
struct RepeatBody {
    remaining: u64,
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let len = usize::try_from(self.remaining).map_or(CHUNK.len(), |n| n.min(CHUNK.len()));
        self.remaining -= len as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..len])))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// A body of `remaining` one-byte chunks, each after a pause of `interval`.
struct TrickleBody {
    remaining: u64,
    interval: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
}

impl Body for TrickleBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        if self.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.remaining -= 1;
        let next = tokio::time::Instant::now() + self.interval;
        self.timer.as_mut().reset(next);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"a")))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
}

/// A stream wrapper that counts the bytes read and/or keeps a copy of them.
///
/// Under TLS the server uses two: one below TLS counting wire bytes, one
/// above it recording the plaintext.
struct Tap<S> {
    inner: S,
    count: Option<Arc<AtomicU64>>,
    record: Option<Arc<Mutex<Vec<u8>>>>,
}

impl<S> Tap<S> {
    /// Wraps `inner`, adding to `count` and appending to `record` on each read.
    fn new(inner: S, count: Option<Arc<AtomicU64>>, record: Option<Arc<Mutex<Vec<u8>>>>) -> Self {
        Tap {
            inner,
            count,
            record,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Tap<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            if let Some(count) = &self.count {
                count.fetch_add(read.len() as u64, Ordering::SeqCst);
            }
            if let Some(record) = &self.record {
                lock(record).extend_from_slice(read);
            }
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tap<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::client::DirectClient;

    const NAME: &str = "api.example.test";

    /// Starts an HTTPS mock server and connects a client to it by DNS name.
    async fn setup() -> (TestPki, MockServer, DirectClient) {
        let pki = TestPki::new(&[NAME]);
        let server = MockServer::start(&pki).await;
        let client = DirectClient::connect(server.addr(), NAME, &pki.ca_pem())
            .await
            .unwrap();
        (pki, server, client)
    }

    fn get(path: &str) -> Request<Full<Bytes>> {
        Request::get(path).body(Full::default()).unwrap()
    }

    fn post(path: &str, content_type: &str, body: &str) -> Request<Full<Bytes>> {
        Request::post(path)
            .header(CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    }

    fn with_auth(mut request: Request<Full<Bytes>>, value: &str) -> Request<Full<Bytes>> {
        request
            .headers_mut()
            .insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        request
    }

    fn json_body(body: &[u8]) -> Value {
        serde_json::from_slice(body).unwrap()
    }

    #[tokio::test]
    async fn echo_describes_the_request_and_records_it() {
        let (_pki, server, mut client) = setup().await;
        let request = with_auth(
            post("/echo/sub?x=1&y=two", "text/plain", "hello body"),
            "Bearer sekrit",
        );
        let (status, headers, body) = client.send(request).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        assert_eq!(headers["x-echo-authorization"], "Bearer sekrit");
        let echoed = json_body(&body);
        assert_eq!(echoed["method"], "POST");
        assert_eq!(echoed["path"], "/echo/sub");
        assert_eq!(echoed["query"], "x=1&y=two");
        assert_eq!(echoed["headers"]["authorization"], "Bearer sekrit");
        assert_eq!(
            echoed["headers"]["host"],
            format!("{NAME}:{}", server.port())
        );
        assert_eq!(echoed["body"], "hello body");

        // A second request reuses the kept-alive connection.
        let (status, _, body) = client.send(get("/echo")).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json_body(&body)["query"], Value::Null);
        assert_eq!(server.connection_count(), 1);

        let requests = server.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].method, "POST");
        assert_eq!(requests[0].path_and_query, "/echo/sub?x=1&y=two");
        assert_eq!(requests[0].header("Authorization"), Some("Bearer sekrit"));
        assert_eq!(requests[0].body, b"hello body");
        assert_eq!(requests[1].path_and_query, "/echo");
        assert_eq!(server.tls_server_names(), [Some(NAME.to_owned())]);
    }

    #[tokio::test]
    async fn echo_b64_encodes_the_document() {
        let (_pki, _server, mut client) = setup().await;
        let (status, headers, body) = client.send(get("/echo-b64?q=1")).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "text/plain");
        let echoed = json_body(&STANDARD.decode(&body).unwrap());
        assert_eq!(echoed["path"], "/echo-b64");
        assert_eq!(echoed["query"], "q=1");
    }

    #[tokio::test]
    async fn raw_bytes_contain_sees_headers_and_body_after_tls() {
        let (_pki, server, mut client) = setup().await;
        let request = with_auth(
            post("/nowhere", "text/plain", "body-canary"),
            "Bearer header-canary",
        );
        let (status, _, _) = client.send(request).await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(server.raw_bytes_contain(b"POST /nowhere HTTP/1.1"));
        assert!(server.raw_bytes_contain(b"header-canary"));
        assert!(server.raw_bytes_contain(b"body-canary"));
        assert!(!server.raw_bytes_contain(b"never-sent"));
        let raw = server.raw_bytes();
        crate::assert_absent(&raw, &["never-sent-canary"], "mock input");
        assert!(crate::find_encoded(&raw, &["header-canary"]).is_some());
        // TLS framing and the handshake make the wire larger than the plaintext.
        assert!(server.wire_bytes_received() > raw.len() as u64);
    }

    #[tokio::test]
    async fn redirect_status_and_unknown_routes() {
        let (_pki, _server, mut client) = setup().await;
        let (status, headers, body) = client
            .send(get(
                "/redirect?to=https%3A%2F%2Fother.example.test%2Fx%3Fa%3Db",
            ))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::FOUND);
        assert_eq!(headers[LOCATION], "https://other.example.test/x?a=b");
        assert_eq!(body, "redirecting");

        let (status, _, body) = client.send(get("/status/418")).await.unwrap();
        assert_eq!(status, StatusCode::IM_A_TEAPOT);
        assert_eq!(body, "status 418");
        let (status, _, body) = client.send(get("/status/204")).await.unwrap();
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(body.is_empty());
        let (status, _, _) = client.send(get("/status/abc")).await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, _) = client.send(get("/redirect")).await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _, _) = client.send(get("/elsewhere")).await.unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn big_streams_the_requested_length() {
        let (_pki, _server, mut client) = setup().await;
        let size = 8 * 1024 * 1024 + 7;
        let (status, headers, body) = client
            .send(get(&format!("/big?bytes={size}")))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers[http::header::CONTENT_LENGTH],
            size.to_string().as_str()
        );
        assert_eq!(body.len(), size);
        assert!(body.iter().all(|&b| b == b'a'));
        let (status, _, body) = client.send(get("/big?bytes=0")).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_empty());
    }

    #[tokio::test]
    async fn slow_waits_before_answering() {
        let (_pki, _server, mut client) = setup().await;
        let started = Instant::now();
        let (status, _, body) = client.send(get("/slow?ms=100")).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "late");
    }

    #[tokio::test]
    async fn hang_never_answers_until_the_server_is_dropped() {
        let (_pki, server, mut client) = setup().await;
        let pending = tokio::spawn(async move { client.send(get("/hang")).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!pending.is_finished());
        assert_eq!(server.requests().len(), 1);
        let addr = server.addr();
        drop(server);
        let result = tokio::time::timeout(Duration::from_secs(10), pending)
            .await
            .expect("dropping the server closes the hanging connection")
            .unwrap();
        assert!(result.is_err());
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn github_issue_checks_the_bearer_token() {
        let (_pki, server, mut client) = setup().await;
        let path = "/repos/octo/hello/issues/7";

        // Without a configured token, any bearer token is accepted.
        let (status, _, _) = client
            .send(with_auth(get(path), "Bearer anything"))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);

        server.set_expected_bearer("ghp-right");
        let (status, _, body) = client.send(get(path)).await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(json_body(&body), json!({ "message": "Bad credentials" }));
        let (status, _, _) = client
            .send(with_auth(get(path), "Bearer ghp-wrong"))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _, _) = client
            .send(with_auth(get(path), "Basic Z2hwLXJpZ2h0"))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        let (status, headers, body) = client
            .send(with_auth(get(path), "Bearer ghp-right"))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "application/json");
        let issue = json_body(&body);
        assert_eq!(issue["number"], 7);
        assert_eq!(issue["title"], "Issue 7 title");
        assert_eq!(issue["state"], "open");
        assert_eq!(issue["user"]["login"], "octocat");
        assert_eq!(issue["labels"][0]["name"], "bug");
        assert_eq!(
            issue["html_url"],
            "https://github.example/octo/hello/issues/7"
        );

        let (status, _, body) = client
            .send(with_auth(
                get("/repos/octo/hello/issues/404"),
                "Bearer ghp-right",
            ))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(json_body(&body), json!({ "message": "Not Found" }));
        let (status, _, _) = client
            .send(with_auth(
                get("/repos/octo/hello/pulls/1"),
                "Bearer ghp-right",
            ))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn slack_post_message_reports_errors_in_the_body() {
        let (_pki, server, mut client) = setup().await;
        server.set_expected_bearer("xoxb-right");
        let message = |channel: &str, token: &str| {
            let body = json!({ "channel": channel, "text": "hi there" }).to_string();
            with_auth(
                post("/api/chat.postMessage", "application/json", &body),
                &format!("Bearer {token}"),
            )
        };

        let (status, _, body) = client
            .send(message("#general", "xoxb-wrong"))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            json_body(&body),
            json!({ "ok": false, "error": "invalid_auth" })
        );
        let (_, _, body) = client
            .send(message("#missing", "xoxb-right"))
            .await
            .unwrap();
        assert_eq!(
            json_body(&body),
            json!({ "ok": false, "error": "channel_not_found" })
        );
        let (_, _, body) = client
            .send(message("#general", "xoxb-right"))
            .await
            .unwrap();
        assert_eq!(
            json_body(&body),
            json!({
                "ok": true,
                "channel": "#general",
                "ts": "1700000000.000100",
                "message": { "text": "hi there" },
            })
        );
        let (status, _, _) = client.send(get("/api/chat.postMessage")).await.unwrap();
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn oauth_token_flow() {
        let (_pki, server, mut client) = setup().await;
        server.set_expected_client_secret("cs-right");
        server.set_expected_bearer("some-other-token");
        let form = "application/x-www-form-urlencoded";

        let bad = "grant_type=client_credentials&client_id=app&client_secret=cs-wrong";
        let (status, _, body) = client.send(post("/oauth/token", form, bad)).await.unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(json_body(&body), json!({ "error": "invalid_client" }));
        let wrong_grant = "grant_type=password&client_id=app&client_secret=cs-right";
        let (status, _, _) = client
            .send(post("/oauth/token", form, wrong_grant))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(server.issued_tokens().is_empty());

        let good = "grant_type=client_credentials&client_id=app&client_secret=cs-right";
        let (status, _, body) = client.send(post("/oauth/token", form, good)).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        let grant = json_body(&body);
        let token = grant["access_token"].as_str().unwrap().to_owned();
        let suffix = token.strip_prefix("at-").unwrap();
        assert_eq!(suffix.len(), 24);
        assert!(suffix.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(grant["token_type"], "Bearer");
        assert_eq!(grant["expires_in"], 3600);
        assert_eq!(server.issued_tokens(), std::slice::from_ref(&token));

        // Credentials in a Basic header work too ("app:cs-right").
        let basic = with_auth(
            post("/oauth/token", form, "grant_type=client_credentials"),
            "Basic YXBwOmNzLXJpZ2h0",
        );
        let (status, _, _) = client.send(basic).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(server.issued_tokens().len(), 2);

        // An issued token is a valid bearer token on the API routes.
        let (status, _, _) = client
            .send(with_auth(
                get("/repos/o/r/issues/1"),
                &format!("Bearer {token}"),
            ))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);

        let (status, _, _) = client.send(get("/oauth/token")).await.unwrap();
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn untrusted_ca_is_refused_after_the_tcp_connection() {
        let pki = TestPki::new(&[NAME]);
        let impostor = MockServer::start(&pki.other_ca()).await;
        let result = DirectClient::connect(impostor.addr(), NAME, &pki.ca_pem()).await;
        assert!(result.is_err());
        assert_eq!(impostor.connection_count(), 1);
        assert!(impostor.requests().is_empty());
        assert!(impostor.raw_bytes().is_empty());
    }

    #[tokio::test]
    async fn certificate_is_valid_for_loopback_ips() {
        let pki = TestPki::new(&[NAME]);
        let server = MockServer::start(&pki).await;
        let mut client = DirectClient::connect(server.addr(), "127.0.0.1", &pki.ca_pem())
            .await
            .unwrap();
        let (status, _, _) = client.send(get(&server.url("/echo"))).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        // rustls sends no SNI for an IP address.
        assert_eq!(server.tls_server_names(), [None]);
        assert_eq!(server.requests()[0].path_and_query, "/echo");
    }

    #[tokio::test]
    async fn plain_server_records_connections() {
        let server = MockServer::start_plain().await;
        assert_eq!(server.connection_count(), 0);
        assert_eq!(server.wire_bytes_received(), 0);
        assert!(server.url("/x").starts_with("http://127.0.0.1:"));
        let mut client = DirectClient::connect_plain(server.addr()).await.unwrap();
        let (status, _, body) = client.send(get("/echo")).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json_body(&body)["method"], "GET");
        assert_eq!(server.connection_count(), 1);
        assert_eq!(
            server.wire_bytes_received(),
            server.raw_bytes().len() as u64
        );
        assert!(server.raw_bytes_contain(b"GET /echo HTTP/1.1"));
    }

    #[test]
    fn recorded_debug_hides_values() {
        let recorded = Recorded {
            method: "GET".to_owned(),
            path_and_query: "/echo".to_owned(),
            headers: vec![("authorization".to_owned(), "Bearer hidden-value".to_owned())],
            body: b"hidden-body".to_vec(),
        };
        let debug = format!("{recorded:?}");
        assert!(debug.contains("authorization"));
        assert!(!debug.contains("hidden"));
    }
}

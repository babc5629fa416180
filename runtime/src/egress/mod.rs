//! Egress: the only code in wrun that opens a socket.
//!
//! Every request a guest sends through `wasi:http/outgoing-handler` arrives
//! in [`Egress::send`] (via the store's `WasiHttpHooks`). In order:
//!
//! 1. the per-step request budget;
//! 2. scheme: HTTPS only;
//! 3. destination: host and port must match the step's `net` grant (numeric
//!    hosts in any spelling are normalised first, see [`addr`]);
//! 4. secrets: every placeholder of the job in the URL, headers and body is
//!    checked and swapped for its value (see [`crate::secrets`]);
//! 5. resolution through the pluggable [`Resolver`], and every resolved
//!    address classified by the [`AddressPolicy`]: one non-public address
//!    refuses the request, before any connection is attempted; the guest
//!    is told only that the host is not reachable, whether it resolved to a
//!    refused address or not at all (the operator's audit entry says which);
//! 6. connection through the pluggable [`Connector`] to the very address that
//!    was checked (no second resolution: DNS rebinding cannot work), TLS 1.2
//!    or 1.3 with rustls against the platform roots plus operator CAs;
//! 7. the response head and body are scrubbed of every secret value of the
//!    job (raw and encoded) before the guest can read them: header names
//!    carrying a value are dropped, values and body masked, and a body in any
//!    coding other than identity refused (see `scrub_head`); redirects are
//!    not followed, so the guest sees the 3xx.
//!
//! Sizes, counts and timeouts are bounded by [`EgressLimits`]. Refusals are
//! recorded for the first few of a step and counted after that (see
//! [`crate::StepBudget`]).

pub mod addr;

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

use self::addr::{AddressPolicy, Host};
use crate::budget::{EventLog, clip};
use crate::events::{AuditEvent, AuditKind, Event};
use crate::mask::{Masker, StreamMasker};
use crate::misuse::{Channel, MISUSE_REFUSAL, StepMisuse};
use crate::policy::NetGrant;
use crate::secrets::{BodyInjector, Injector, PlaceholderMatcher, Refusal};

/// Resolves host names to addresses. The runtime never resolves a name any
/// other way.
#[async_trait::async_trait]
pub trait Resolver: Send + Sync {
    /// All addresses of `name`.
    ///
    /// # Errors
    ///
    /// The name does not resolve.
    async fn resolve(&self, name: &str) -> io::Result<Vec<IpAddr>>;
}

/// The operating system's resolver.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

#[async_trait::async_trait]
impl Resolver for SystemResolver {
    async fn resolve(&self, name: &str) -> io::Result<Vec<IpAddr>> {
        Ok(tokio::net::lookup_host((name, 0))
            .await?
            .map(|a| a.ip())
            .collect())
    }
}

/// A fixed table of names, for tests and for pinning on-premises targets.
/// Names it does not know fail to resolve, unless a fallback resolver is set.
#[derive(Clone, Default)]
pub struct StaticResolver {
    names: HashMap<String, Vec<IpAddr>>,
    fallback: Option<Arc<dyn Resolver>>,
}

impl fmt::Debug for StaticResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticResolver")
            .field("names", &self.names)
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl StaticResolver {
    /// An empty table.
    pub fn new() -> StaticResolver {
        StaticResolver::default()
    }

    /// Maps a name (case-insensitive) to addresses.
    pub fn with(mut self, name: &str, addrs: impl IntoIterator<Item = IpAddr>) -> StaticResolver {
        self.names.insert(
            name.trim_end_matches('.').to_ascii_lowercase(),
            addrs.into_iter().collect(),
        );
        self
    }

    /// Resolves names missing from the table with `fallback`.
    pub fn fallback(mut self, fallback: Arc<dyn Resolver>) -> StaticResolver {
        self.fallback = Some(fallback);
        self
    }
}

#[async_trait::async_trait]
impl Resolver for StaticResolver {
    async fn resolve(&self, name: &str) -> io::Result<Vec<IpAddr>> {
        if let Some(addrs) = self.names.get(name) {
            return Ok(addrs.clone());
        }
        match &self.fallback {
            Some(fallback) => fallback.resolve(name).await,
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("unknown host `{name}`"),
            )),
        }
    }
}

/// A byte stream to an upstream.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Opens connections to addresses the policy has already checked.
#[async_trait::async_trait]
pub trait Connector: Send + Sync {
    /// Connects to exactly this address.
    ///
    /// # Errors
    ///
    /// The connection failed.
    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn Stream>>;
}

/// Plain TCP connections.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

#[async_trait::async_trait]
impl Connector for TcpConnector {
    async fn connect(&self, addr: SocketAddr) -> io::Result<Box<dyn Stream>> {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Box::new(stream))
    }
}

/// Bounds on what one step may send and receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EgressLimits {
    /// Largest request body a guest may send (default 10 MiB).
    pub max_request_body: u64,
    /// Largest response body a guest may receive (default 50 MiB).
    pub max_response_body: u64,
    /// Requests one step may send (default 100).
    pub max_requests_per_step: u32,
    /// Time to establish TCP and TLS (default 10 s).
    pub connect_timeout: Duration,
    /// Time from sending the request to the response head (default 30 s).
    pub first_byte_timeout: Duration,
    /// Longest pause between two chunks of a response body (default 30 s).
    pub between_bytes_timeout: Duration,
    /// Whole request, from the hook to the end of the response body (default 120 s).
    pub total_timeout: Duration,
}

impl Default for EgressLimits {
    fn default() -> Self {
        EgressLimits {
            max_request_body: 10 << 20,
            max_response_body: 50 << 20,
            max_requests_per_step: 100,
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(30),
            between_bytes_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(120),
        }
    }
}

/// How much of a request body is read and checked before connecting. A body
/// no larger than this is refused before any byte leaves the host.
const PREFETCH: usize = 64 << 10;
/// Idle connections kept per destination.
const POOL_PER_KEY: usize = 8;
/// Idle connections kept in all.
const POOL_TOTAL: usize = 256;

type Sender = hyper::client::conn::http1::SendRequest<RequestBody>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    host: String,
    port: u16,
    ip: IpAddr,
}

/// The engine-wide egress: TLS settings, address policy, resolver, connector,
/// limits and a keep-alive pool. Shared by all steps of an engine.
pub(crate) struct Egress {
    pub(crate) tls: Arc<rustls::ClientConfig>,
    pub(crate) policy: AddressPolicy,
    pub(crate) resolver: Arc<dyn Resolver>,
    pub(crate) connector: Arc<dyn Connector>,
    pub(crate) limits: EgressLimits,
    pool: Mutex<HashMap<PoolKey, Vec<Sender>>>,
}

impl fmt::Debug for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Egress")
            .field("policy", &self.policy)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Builds the rustls client configuration: TLS 1.2 and 1.3 only, the webpki
/// roots (unless disabled) plus the operator's CAs.
pub(crate) fn client_config(
    extra_roots: &[CertificateDer<'static>],
    webpki_roots: bool,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    if webpki_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    for (i, cert) in extra_roots.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|e| format!("operator CA #{} is not a usable certificate: {e}", i + 1))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What one step's requests are checked against. Built per step.
pub(crate) struct Scope {
    pub(crate) step: String,
    pub(crate) job: String,
    pub(crate) workspace: String,
    pub(crate) recipe: String,
    pub(crate) net: NetGrant,
    /// Connection name -> step alias, for the secrets granted to the step.
    pub(crate) granted: HashMap<String, String>,
    pub(crate) placeholders: PlaceholderMatcher,
    /// Secret values of the job, to scrub responses.
    pub(crate) scrub: Masker,
    /// Everything sensitive of the job, to mask what is reported.
    pub(crate) report_mask: Arc<dyn Fn() -> Masker + Send + Sync>,
    pub(crate) requests: AtomicU32,
    pub(crate) observer: Arc<dyn crate::events::Observer>,
    /// The step's events, within its budget.
    pub(crate) events: Arc<EventLog>,
    /// The step's misuse watch: connection values in the guest's requests.
    pub(crate) misuse: Arc<StepMisuse>,
    /// The host's per-connection limits.
    pub(crate) guard: Option<Arc<dyn crate::guard::ConnectionGuard>>,
}

impl Scope {
    /// A request of this step carrying `connection`, for the guard.
    fn connection_use<'a>(
        &'a self,
        connection: &'a str,
        host: &'a str,
        path: &'a str,
        request_bytes: u64,
    ) -> crate::guard::ConnectionUse<'a> {
        crate::guard::ConnectionUse {
            workspace: &self.workspace,
            connection,
            recipe: &self.recipe,
            job: &self.job,
            step: &self.step,
            host,
            path,
            request_bytes,
        }
    }

    /// Requests this step run has sent or tried to send.
    #[cfg(feature = "bench-probes")]
    pub(crate) fn requests_sent(&self) -> u32 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Searches the guest's URL and headers for connection values, before
    /// anything about the request is reported (a reported URL holding a
    /// value would be masked, which would answer a guess). After a catch,
    /// every request of the step is refused.
    fn check_misuse(&self, parts: &http::request::Parts) -> Result<(), HttpError> {
        let caught = self
            .misuse
            .check(Channel::Request, parts.uri.to_string().as_bytes())
            || parts.headers.iter().any(|(name, value)| {
                self.misuse
                    .check(Channel::Request, name.as_str().as_bytes())
                    || self.misuse.check(Channel::Request, value.as_bytes())
            });
        if caught {
            Err(misuse_refusal())
        } else {
            Ok(())
        }
    }

    /// A refusal of the body: misuse was recorded by the body's watch
    /// already; anything else is refused as usual.
    fn refuse_body(&self, url: &str, refusal: Refusal) -> HttpError {
        if self.misuse.is_caught() {
            return misuse_refusal();
        }
        self.refuse(url, refusal, AuditKind::EgressRefused)
    }
    /// Adds an event to the step's record (the observer gets it when the
    /// step ends, see `Job::run`).
    fn report(&self, event: Event) {
        self.events.push(event);
    }

    /// Records a refusal and builds the guest-visible error, which says why.
    fn refuse(&self, url: &str, refusal: Refusal, kind: AuditKind) -> HttpError {
        let reason = (self.report_mask)().mask_str(&refusal.reason).into_owned();
        let reason = clip(reason, self.events.text_len());
        self.record(url, refusal, kind);
        refused(&reason)
    }

    /// Records a refusal whose reason would map the internal network for the
    /// guest (a refused address, a name that does not resolve): the guest
    /// gets one message for all of them, the operator the reason.
    fn refuse_unreachable(&self, url: &str, host: &Host, port: u16, reason: String) -> HttpError {
        self.record(url, Refusal::egress(reason), AuditKind::EgressRefused);
        let host = clip(host.to_string(), self.events.text_len());
        refused(&format!("{host}:{port} is not reachable from this step"))
    }

    /// The first refusals of a step get an event, an audit entry and a log
    /// line, masked and clipped; later ones are only counted (the step's
    /// events end with "... and N more").
    /// Secret misuse is always audited: each one needs a request of the
    /// step's bounded count (`max_requests_per_step`), so it stays bounded.
    fn record(&self, url: &str, refusal: Refusal, kind: AuditKind) {
        let misuse = refusal.connection.is_some() || kind == AuditKind::SecretMisuse;
        if !misuse && !self.events.admit_refusal() {
            return;
        }
        let mask = (self.report_mask)();
        let max = self.events.text_len();
        let url = clip(mask.mask_str(url).into_owned(), max);
        let reason = clip(mask.mask_str(&refusal.reason).into_owned(), max);
        tracing::warn!(step = %self.step, %url, %reason, "egress refused");
        self.observer.audit(&AuditEvent {
            kind: if misuse {
                AuditKind::SecretMisuse
            } else {
                kind
            },
            job: self.job.clone(),
            workspace: self.workspace.clone(),
            recipe: self.recipe.clone(),
            step: self.step.clone(),
            connection: refusal.connection,
            destination: url.clone(),
            reason: reason.clone(),
        });
        self.report(Event::Refused {
            step: self.step.clone(),
            url,
            reason,
        });
    }
}

/// What the guest gets for a request refused for misuse (recorded already).
fn misuse_refusal() -> HttpError {
    refused(MISUSE_REFUSAL)
}

/// The error a guest gets for a refused request.
fn refused(reason: &str) -> HttpError {
    HttpError::InternalError(Some(format!("wrun egress refused: {reason}")))
}

/// The URL as it may be reported: scheme, authority and path, no query.
fn reportable_url(uri: &http::Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("https"),
        uri.authority().map(|a| a.as_str()).unwrap_or(""),
        uri.path()
    )
}

impl Egress {
    pub(crate) fn new(
        tls: rustls::ClientConfig,
        policy: AddressPolicy,
        resolver: Arc<dyn Resolver>,
        connector: Arc<dyn Connector>,
        limits: EgressLimits,
    ) -> Egress {
        Egress {
            tls: Arc::new(tls),
            policy,
            resolver,
            connector,
            limits,
            pool: Mutex::new(HashMap::new()),
        }
    }

    /// How many requests one step run may send.
    #[cfg(feature = "bench-probes")]
    pub(crate) fn max_requests_per_step(&self) -> u32 {
        self.limits.max_requests_per_step
    }

    /// Checks, rewrites and sends one guest request; see the module docs.
    pub(crate) async fn send(
        self: Arc<Self>,
        scope: Arc<Scope>,
        request: Request<WasiBody>,
    ) -> Result<Response<WasiBody>, HttpError> {
        let started = Instant::now();
        let (mut parts, body) = request.into_parts();
        if let Err(e) = scope.check_misuse(&parts) {
            drain_in_background(body);
            return Err(e);
        }
        let url = reportable_url(&parts.uri);
        let refuse_egress =
            |reason: String| scope.refuse(&url, Refusal::egress(reason), AuditKind::EgressRefused);

        let n = scope.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if n > self.limits.max_requests_per_step {
            drain_in_background(body);
            return Err(refuse_egress(format!(
                "step `{}` has used its {} requests",
                scope.step, self.limits.max_requests_per_step
            )));
        }
        if parts.uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
            drain_in_background(body);
            return Err(refuse_egress(format!(
                "only https:// is allowed, not {}://",
                parts.uri.scheme_str().unwrap_or("")
            )));
        }
        let authority = parts.uri.authority().map(|a| a.as_str()).unwrap_or("");
        let (host, port) = match addr::parse_authority(authority, 443) {
            Ok(hp) => hp,
            Err(e) => {
                drain_in_background(body);
                return Err(refuse_egress(format!("invalid destination: {e}")));
            }
        };
        if !scope.net.allows(&host, port) {
            drain_in_background(body);
            return Err(refuse_egress(format!(
                "{host}:{port} is not in the `net` grant of step `{}` (granted: {})",
                scope.step, scope.net
            )));
        }

        let injector = Injector {
            matcher: &scope.placeholders,
            granted: &scope.granted,
            host: &host,
            port,
        };
        let mut used = Vec::new();
        let checked = injector.inject_uri(&parts.uri).and_then(|(uri, u)| {
            if let Some(uri) = uri {
                parts.uri = uri;
            }
            used.extend(u);
            injector
                .inject_headers(&mut parts.headers)
                .map(|u| used.extend(u))
        });
        if let Err(refusal) = checked {
            drain_in_background(body);
            return Err(scope.refuse(&url, refusal, AuditKind::SecretMisuse));
        }

        // Methods that reflect the request (TRACE) or tunnel past the egress
        // (CONNECT) are never sent.
        if matches!(parts.method, http::Method::TRACE | http::Method::CONNECT) {
            drain_in_background(body);
            return Err(refuse_egress(format!(
                "the {} method is not allowed",
                parts.method
            )));
        }
        // A response is scrubbed of the job's secret values before the guest
        // reads it, which only works on the whole, uncompressed body: no
        // compression, no byte ranges (a 3-byte slice of an echoed value is
        // below what can be masked). `Expect` is dropped so that no upstream
        // can answer before the body is complete.
        if !scope.scrub.is_empty() {
            parts.headers.insert(
                http::header::ACCEPT_ENCODING,
                http::HeaderValue::from_static("identity"),
            );
            parts.headers.remove(http::header::RANGE);
            parts.headers.remove(http::header::IF_RANGE);
        }
        parts.headers.remove(http::header::EXPECT);

        // Bodies: GET and HEAD without a length are sent empty (hyper would
        // drop the stream anyway); the guest's writes are drained.
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bodiless = matches!(parts.method, http::Method::GET | http::Method::HEAD)
            && !parts.headers.contains_key(http::header::CONTENT_LENGTH);
        let refusal_slot = Arc::new(Mutex::new(None::<Refusal>));
        let body = if bodiless {
            drain_in_background(body);
            RequestBody::empty()
        } else {
            let injector = injector
                .body(content_type.as_deref())
                .watched(scope.misuse.clone());
            match RequestBody::prefetch(
                body,
                injector,
                self.limits.max_request_body,
                refusal_slot.clone(),
            )
            .await
            {
                Ok(body) => body,
                Err(PrefetchError::Refused(refusal)) => {
                    return Err(scope.refuse_body(&url, refusal));
                }
                Err(PrefetchError::Http(e)) => return Err(e),
            }
        };
        match body.exact_len() {
            // A bodiless GET or HEAD keeps having no length header.
            Some(_) if bodiless => {}
            Some(len) => {
                parts
                    .headers
                    .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
            }
            None => {
                if body.may_change_length() {
                    parts.headers.remove(http::header::CONTENT_LENGTH);
                }
            }
        }
        used.extend(body.injected_so_far());
        used.sort();
        used.dedup();

        // The host's per-connection limits, now that it is known which
        // connections the request carries.
        // Only a job with a guard pays for what the guard is shown.
        let guarded = scope.guard.as_ref().map(|guard| {
            (
                guard,
                host.to_string(),
                parts.uri.path().to_string(),
                body.exact_len().unwrap_or(0),
            )
        });
        if let Some((guard, host_text, path, request_bytes)) = &guarded {
            for connection in &used {
                let request = scope.connection_use(connection, host_text, path, *request_bytes);
                if let Err(reason) = guard.admit(&request) {
                    return Err(refuse_egress(reason));
                }
            }
        }

        // Resolve, classify every address, and connect to a checked one.
        let addrs = match self.checked_addresses(&host).await {
            Ok(addrs) => addrs,
            Err(why) => return Err(scope.refuse_unreachable(&url, &host, port, why)),
        };

        // Origin-form URI; the Host header was set by wasi-http.
        parts.uri = origin_form(&parts.uri).ok_or(HttpError::HttpRequestUriInvalid)?;
        let method = parts.method.to_string();
        let request = Request::from_parts(parts, body);

        let deadline = tokio::time::Instant::now() + self.limits.total_timeout;
        // One timer serves the whole exchange: the wait for the response
        // head, then (moved into the body) the pauses and the deadline, so
        // a request allocates and registers one timer instead of three.
        let mut timer = Box::pin(tokio::time::sleep_until(deadline));
        let response = self
            .clone()
            .round_trip(&host, port, &addrs, request, deadline, timer.as_mut())
            .await;
        let report_url = (scope.report_mask)().mask_str(&url).into_owned();
        let response = match response {
            Ok(r) => r,
            Err(e) => {
                let refused = refusal_slot.lock().ok().and_then(|mut s| s.take());
                if let Some(refusal) = refused {
                    return Err(scope.refuse_body(&url, refusal));
                }
                // The request may have left with a value in it: record it,
                // without a status.
                scope.report(Event::Request {
                    step: scope.step.clone(),
                    method,
                    url: report_url,
                    status: None,
                    connections: used,
                    elapsed: started.elapsed(),
                });
                return Err(e);
            }
        };
        if let Some((guard, host_text, path, request_bytes)) = &guarded {
            let retry_after = response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| crate::guard::parse_retry_after(v, std::time::SystemTime::now()));
            let response_bytes = response
                .headers()
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            for connection in &used {
                let request = scope.connection_use(connection, host_text, path, *request_bytes);
                guard.answered(
                    &request,
                    response.status().as_u16(),
                    retry_after,
                    response_bytes,
                );
            }
        }
        scope.report(Event::Request {
            step: scope.step.clone(),
            method,
            url: report_url,
            status: Some(response.status().as_u16()),
            connections: used,
            elapsed: started.elapsed(),
        });

        // Scrub the response before the guest sees it.
        let (head, incoming) = response.into_parts();
        let head = scrub_head(&scope, head).map_err(refuse_egress)?;
        let body = ResponseBody {
            incoming,
            masker: (!scope.scrub.is_empty()).then(|| scope.scrub.stream()),
            limit: self.limits.max_response_body,
            received: 0,
            idle: self.limits.between_bytes_timeout,
            deadline_at: deadline,
            idle_at: tokio::time::Instant::now() + self.limits.between_bytes_timeout,
            timer,
            done: false,
        };
        Ok(Response::from_parts(head, body.boxed_unsync()))
    }

    /// Resolves `host` through the pluggable resolver (within the connect
    /// timeout) and classifies every address with the [`AddressPolicy`]:
    /// one refused address refuses the destination, before any connection.
    /// The one place both guest and host requests get their addresses.
    async fn checked_addresses(&self, host: &Host) -> Result<Vec<IpAddr>, String> {
        let addrs = match host {
            Host::Ip(ip) => vec![*ip],
            Host::Name(name) => {
                match tokio::time::timeout(self.limits.connect_timeout, self.resolver.resolve(name))
                    .await
                {
                    Ok(Ok(addrs)) if !addrs.is_empty() => addrs,
                    Ok(Ok(_)) => return Err(format!("{name} resolves to no address")),
                    Ok(Err(e)) => return Err(format!("{name} does not resolve: {e}")),
                    Err(_) => return Err(format!("resolving {name} timed out")),
                }
            }
        };
        for ip in &addrs {
            if let Err(blocked) = self.policy.check(*ip) {
                return Err(format!("{host} resolves to a refused address: {blocked}"));
            }
        }
        Ok(addrs)
    }

    /// Sends over a pooled connection, or a new one to the first checked
    /// address that accepts.
    async fn round_trip(
        self: Arc<Self>,
        host: &Host,
        port: u16,
        addrs: &[IpAddr],
        request: Request<RequestBody>,
        deadline: tokio::time::Instant,
        mut timer: Pin<&mut tokio::time::Sleep>,
    ) -> Result<Response<hyper::body::Incoming>, HttpError> {
        let host_key = host.to_string();
        let mut sender = None;
        for ip in addrs {
            if let Some(s) = self.checkout(&PoolKey {
                host: host_key.clone(),
                port,
                ip: *ip,
            }) {
                sender = Some((s, *ip));
                break;
            }
        }
        let (mut sender, ip) = match sender {
            Some(s) => s,
            None => self.connect(host, port, addrs).await?,
        };
        let first_byte = tokio::time::Instant::now() + self.limits.first_byte_timeout;
        timer.as_mut().reset(first_byte.min(deadline));
        let response = tokio::select! {
            biased;
            response = sender.send_request(request) => response.map_err(HttpError::Hyper)?,
            () = timer => return Err(HttpError::ConnectionReadTimeout),
        };
        self.checkin(
            PoolKey {
                host: host_key,
                port,
                ip,
            },
            sender,
        );
        Ok(response)
    }

    fn checkout(&self, key: &PoolKey) -> Option<Sender> {
        let mut pool = self.pool.lock().ok()?;
        let idle = pool.get_mut(key)?;
        let mut found = None;
        idle.retain(|s| !s.is_closed());
        if let Some(i) = idle.iter().position(|s| s.is_ready()) {
            found = Some(idle.swap_remove(i));
        }
        found
    }

    fn checkin(&self, key: PoolKey, sender: Sender) {
        if let Ok(mut pool) = self.pool.lock() {
            // Closed connections and empty destinations go first, then the
            // total is capped, so a step cannot pin sockets without bound.
            pool.retain(|_, idle| {
                idle.retain(|s| !s.is_closed());
                !idle.is_empty()
            });
            let total: usize = pool.values().map(Vec::len).sum();
            let idle = pool.entry(key).or_default();
            if idle.len() < POOL_PER_KEY && total < POOL_TOTAL {
                idle.push(sender);
            }
        }
    }

    async fn connect(
        &self,
        host: &Host,
        port: u16,
        addrs: &[IpAddr],
    ) -> Result<(Sender, IpAddr), HttpError> {
        let server_name = match host {
            Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
            Host::Name(name) => {
                ServerName::try_from(name.clone()).map_err(|_| HttpError::HttpRequestUriInvalid)?
            }
        };
        let mut last = HttpError::ConnectionRefused;
        for ip in addrs {
            let addr = SocketAddr::new(*ip, port);
            let attempt = async {
                let tcp = self
                    .connector
                    .connect(addr)
                    .await
                    .map_err(HttpError::Connect)?;
                let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(|e| {
                        if e.get_ref()
                            .is_some_and(|inner| inner.to_string().contains("certificate"))
                        {
                            HttpError::TlsCertificateError
                        } else {
                            HttpError::Tls(e)
                        }
                    })?;
                let (sender, conn) = hyper::client::conn::http1::Builder::new()
                    .handshake(TokioIo::new(tls))
                    .await
                    .map_err(HttpError::Hyper)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!("upstream connection ended: {e}");
                    }
                });
                Ok::<_, HttpError>(sender)
            };
            match tokio::time::timeout(self.limits.connect_timeout, attempt).await {
                Ok(Ok(sender)) => return Ok((sender, *ip)),
                Ok(Err(e)) => last = e,
                Err(_) => last = HttpError::ConnectionTimeout,
            }
        }
        Err(last)
    }
}

/// The origin form of `uri` (its path and query), as sent on a connection
/// to the checked address.
fn origin_form(uri: &http::Uri) -> Option<http::Uri> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    http::Uri::builder().path_and_query(path).build().ok()
}

/// Why a request the host itself sends (see [`Egress::send_host`]) got no
/// answer. The message names the host and never carries a body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HostRequestError(pub String);

impl Egress {
    /// Sends a request on the host's own behalf (an OAuth2 token request,
    /// not a guest's) under the same rules as a guest request: HTTPS only,
    /// every resolved address classified by the [`AddressPolicy`] before a
    /// connection, TLS against the same roots and operator CAs, the same
    /// connect and first-byte timeouts and the total deadline. Redirects
    /// are not followed. The response body is read whole, up to `max_body`
    /// bytes.
    pub(crate) async fn send_host(
        self: &Arc<Self>,
        request: Request<Vec<u8>>,
        max_body: usize,
    ) -> Result<Response<Vec<u8>>, HostRequestError> {
        let fail = |why: String| HostRequestError(why);
        let (mut parts, body) = request.into_parts();
        if parts.uri.scheme() != Some(&http::uri::Scheme::HTTPS) {
            return Err(fail(format!(
                "only https:// is allowed, not {}://",
                parts.uri.scheme_str().unwrap_or("")
            )));
        }
        let authority = parts
            .uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_default();
        let (host, port) = addr::parse_authority(&authority, 443)
            .map_err(|e| fail(format!("invalid destination: {e}")))?;
        let addrs = self.checked_addresses(&host).await.map_err(fail)?;
        let host_header = http::HeaderValue::from_str(&authority)
            .map_err(|_| fail("invalid destination".into()))?;
        parts.headers.insert(http::header::HOST, host_header);
        parts.headers.remove(http::header::EXPECT);
        parts.headers.insert(
            http::header::ACCEPT_ENCODING,
            http::HeaderValue::from_static("identity"),
        );
        parts.uri = origin_form(&parts.uri).ok_or_else(|| fail("invalid destination".into()))?;
        let body = RequestBody::full(Bytes::from(body));
        if let Some(len) = body.exact_len().filter(|len| *len > 0) {
            parts
                .headers
                .insert(http::header::CONTENT_LENGTH, http::HeaderValue::from(len));
        }
        let deadline = tokio::time::Instant::now() + self.limits.total_timeout;
        let mut timer = Box::pin(tokio::time::sleep_until(deadline));
        let response = self
            .clone()
            .round_trip(
                &host,
                port,
                &addrs,
                Request::from_parts(parts, body),
                deadline,
                timer.as_mut(),
            )
            .await
            .map_err(|e| fail(format!("{host}:{port}: {e}")))?;
        let (head, mut incoming) = response.into_parts();
        let mut out = Vec::new();
        loop {
            let frame = tokio::select! {
                biased;
                frame = incoming.frame() => frame,
                () = tokio::time::sleep_until(deadline) => {
                    return Err(fail(format!("{host}:{port}: the response did not end in time")));
                }
            };
            match frame {
                None => break,
                Some(Err(e)) => return Err(fail(format!("{host}:{port}: {e}"))),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if out.len() + data.len() > max_body {
                            return Err(fail(format!(
                                "{host}:{port}: the response exceeds {max_body} bytes"
                            )));
                        }
                        out.extend_from_slice(&data);
                    }
                }
            }
        }
        Ok(Response::from_parts(head, out))
    }
}

/// Scrubs a response head of the job's secret values, or says why the
/// response cannot be scrubbed.
///
/// While the job holds secret values, the guest gets nothing the masker has
/// not read in the clear: every header whose name carries a value (in any
/// letter case: names arrive lowercased) is dropped, since a name cannot hold
/// [`crate::mask::MASK`]; every header value is masked; and a body that is
/// not in identity coding is refused. The status reaches the guest as a
/// number only (wasi-http has no reason phrase, and hyper's copy is
/// removed), and trailers never do (see [`ResponseBody`]).
///
/// # Errors
///
/// The reason, for the guest and the audit log, when the response is
/// partial (206) or its body is in a content or transfer coding other than
/// identity and hyper's own `chunked`, in any header, list or letter case.
fn scrub_head(
    scope: &Scope,
    mut head: http::response::Parts,
) -> Result<http::response::Parts, String> {
    let masker = &scope.scrub;
    if masker.is_empty() {
        return Ok(head);
    }
    if head.status == http::StatusCode::PARTIAL_CONTENT {
        return Err("the response is partial (206), so it cannot be scrubbed of secrets".into());
    }
    let codings = [
        (http::header::CONTENT_ENCODING, "identity", "content"),
        (http::header::TRANSFER_ENCODING, "chunked", "transfer"),
    ];
    for (header, allowed, kind) in codings {
        if !only_coding(&head.headers, &header, allowed) {
            return Err(format!(
                "the response body is in a {kind} coding other than {allowed} ({header}), so it \
                 cannot be scrubbed of secrets; only {allowed} is accepted while the job holds secrets"
            ));
        }
    }
    let mut scrubbed = http::HeaderMap::with_capacity(head.headers.len());
    let mut dropped = 0_usize;
    for (name, value) in head.headers.iter() {
        if masker.contains_any_case(name.as_str().as_bytes()) {
            dropped += 1;
            continue;
        }
        match http::HeaderValue::from_bytes(&masker.mask_bytes(value.as_bytes())) {
            Ok(value) => {
                scrubbed.append(name.clone(), value);
            }
            Err(_) => dropped += 1,
        }
    }
    if dropped > 0 {
        tracing::warn!(
            step = %scope.step,
            dropped,
            "response headers carrying a secret value in their name were dropped"
        );
    }
    scrubbed.remove(http::header::CONTENT_LENGTH);
    head.headers = scrubbed;
    // wasi-http passes only the status code on; the reason phrase hyper
    // keeps is removed as well, so that no later change can expose it.
    head.extensions.remove::<hyper::ext::ReasonPhrase>();
    Ok(head)
}

/// Returns `true` when every coding listed in the `header` fields (any
/// number of fields, comma-separated lists, any letter case) is `allowed`.
fn only_coding(headers: &http::HeaderMap, header: &http::HeaderName, allowed: &str) -> bool {
    headers.get_all(header).iter().all(|value| {
        value.to_str().is_ok_and(|list| {
            list.split(',')
                .map(|coding| coding.trim_matches([' ', '\t']))
                .all(|coding| coding.is_empty() || coding.eq_ignore_ascii_case(allowed))
        })
    })
}

/// Reads and drops a guest body in the background, so that a guest writing
/// it concurrently is not cut off (which it would report as a reset).
///
/// A body that has already ended (a GET's, nearly always) is dropped here:
/// a task per request would cost a spawn and a cross-thread wake-up on the
/// hot path. Only a body that is still being written gets a task.
fn drain_in_background(mut body: WasiBody) {
    if body.is_end_stream() {
        return;
    }
    let mut cx = Context::from_waker(std::task::Waker::noop());
    // What the guest wrote already is at most the host's small body buffer
    // (`budget::BODY_CHUNK`), so few frames are ready; a bound keeps this
    // loop short whatever the body.
    for _ in 0..16 {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(_))) => continue,
            Poll::Ready(_) => return,
            Poll::Pending => break,
        }
    }
    tokio::spawn(async move { while let Some(Ok(_)) = body.frame().await {} });
}

enum PrefetchError {
    Refused(Refusal),
    Http(HttpError),
}

/// A request body on its way out: the checked prefix read before connecting,
/// then the rest of the guest's stream through the same [`BodyInjector`].
pub(crate) struct RequestBody {
    prefix: Option<Bytes>,
    rest: Option<(WasiBody, BodyInjector)>,
    limit: u64,
    sent: u64,
    refusal: Arc<Mutex<Option<Refusal>>>,
    exact: Option<u64>,
    may_inject: bool,
    injected: Vec<String>,
}

impl RequestBody {
    fn empty() -> RequestBody {
        RequestBody {
            prefix: None,
            rest: None,
            limit: 0,
            sent: 0,
            refusal: Arc::new(Mutex::new(None)),
            exact: Some(0),
            may_inject: false,
            injected: Vec::new(),
        }
    }

    /// A body the host has whole (its own requests).
    fn full(bytes: Bytes) -> RequestBody {
        RequestBody {
            exact: Some(bytes.len() as u64),
            limit: bytes.len() as u64,
            prefix: Some(bytes),
            rest: None,
            sent: 0,
            refusal: Arc::new(Mutex::new(None)),
            may_inject: false,
            injected: Vec::new(),
        }
    }

    async fn prefetch(
        mut body: WasiBody,
        mut injector: BodyInjector,
        limit: u64,
        refusal: Arc<Mutex<Option<Refusal>>>,
    ) -> Result<RequestBody, PrefetchError> {
        let mut prefix = Vec::new();
        let mut read: u64 = 0;
        loop {
            match body.frame().await {
                None => {
                    prefix.extend_from_slice(&injector.finish().map_err(PrefetchError::Refused)?);
                    let injected = injector.used().to_vec();
                    return Ok(RequestBody {
                        exact: Some(prefix.len() as u64),
                        prefix: Some(Bytes::from(prefix)),
                        rest: None,
                        limit,
                        sent: read,
                        refusal,
                        may_inject: false,
                        injected,
                    });
                }
                Some(Err(e)) => return Err(PrefetchError::Http(e)),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    read += data.len() as u64;
                    if read > limit {
                        return Err(PrefetchError::Refused(Refusal::egress(format!(
                            "request body exceeds the limit of {limit} bytes"
                        ))));
                    }
                    prefix
                        .extend_from_slice(&injector.push(&data).map_err(PrefetchError::Refused)?);
                    if prefix.len() >= PREFETCH {
                        let injected = injector.used().to_vec();
                        return Ok(RequestBody {
                            prefix: Some(Bytes::from(prefix)),
                            may_inject: injector.may_inject(),
                            rest: Some((body, injector)),
                            limit,
                            sent: read,
                            refusal,
                            exact: None,
                            injected,
                        });
                    }
                }
            }
        }
    }

    fn exact_len(&self) -> Option<u64> {
        self.exact
    }

    fn may_change_length(&self) -> bool {
        self.may_inject
    }

    fn injected_so_far(&self) -> Vec<String> {
        self.injected.clone()
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Some(prefix) = this.prefix.take()
            && !prefix.is_empty()
        {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        loop {
            let Some((body, injector)) = this.rest.as_mut() else {
                return Poll::Ready(None);
            };
            let Poll::Ready(frame) = Pin::new(&mut *body).poll_frame(cx) else {
                return Poll::Pending;
            };
            let step = match frame {
                None => {
                    let tail = injector.finish();
                    this.rest = None;
                    tail
                }
                Some(Err(e)) => {
                    this.rest = None;
                    return Poll::Ready(Some(Err(io::Error::other(format!("guest body: {e}")))));
                }
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    this.sent += data.len() as u64;
                    if this.sent > this.limit {
                        this.rest = None;
                        let refusal = Refusal::egress(format!(
                            "request body exceeds the limit of {} bytes",
                            this.limit
                        ));
                        if let Ok(mut slot) = this.refusal.lock() {
                            *slot = Some(refusal);
                        }
                        return Poll::Ready(Some(Err(io::Error::other("request body too large"))));
                    }
                    injector.push(&data)
                }
            };
            match step {
                Ok(bytes) if bytes.is_empty() => continue,
                Ok(bytes) => return Poll::Ready(Some(Ok(Frame::data(bytes)))),
                Err(refusal) => {
                    if let Ok(mut slot) = this.refusal.lock() {
                        *slot = Some(refusal);
                    }
                    this.rest = None;
                    return Poll::Ready(Some(Err(io::Error::other(
                        "request refused by wrun egress",
                    ))));
                }
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rest.is_none() && self.prefix.as_ref().is_none_or(|p| p.is_empty())
    }
}

/// A response body on its way to the guest: scrubbed, bounded in size, and
/// cut off after an idle pause or at the request's deadline. Only data frames
/// are passed on: trailers never reach the guest, so they need no scrubbing.
struct ResponseBody {
    incoming: hyper::body::Incoming,
    masker: Option<StreamMasker>,
    limit: u64,
    received: u64,
    idle: Duration,
    /// When the body must be complete.
    deadline_at: tokio::time::Instant,
    /// When the next chunk must have arrived.
    idle_at: tokio::time::Instant,
    /// One timer for both, armed only while the body waits for the
    /// upstream: a body that is already buffered costs no timer
    /// registration, and a chunk only moves `idle_at`.
    timer: Pin<Box<tokio::time::Sleep>>,
    done: bool,
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.incoming).poll_frame(cx) {
                Poll::Pending => {
                    let wake_at = this.idle_at.min(this.deadline_at);
                    if this.timer.deadline() != wake_at {
                        this.timer.as_mut().reset(wake_at);
                    }
                    if this.timer.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    this.done = true;
                    return Poll::Ready(Some(Err(
                        if tokio::time::Instant::now() >= this.deadline_at {
                            HttpError::HttpResponseTimeout
                        } else {
                            HttpError::ConnectionReadTimeout
                        },
                    )));
                }
                Poll::Ready(None) => {
                    this.done = true;
                    let mut tail = Vec::new();
                    if let Some(m) = this.masker.as_mut() {
                        m.finish(&mut tail);
                    }
                    return Poll::Ready(
                        (!tail.is_empty()).then(|| Ok(Frame::data(Bytes::from(tail)))),
                    );
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(HttpError::Hyper(e))));
                }
                Poll::Ready(Some(Ok(frame))) => {
                    // A body that never pauses is still bounded in time.
                    let now = tokio::time::Instant::now();
                    if now >= this.deadline_at {
                        this.done = true;
                        return Poll::Ready(Some(Err(HttpError::HttpResponseTimeout)));
                    }
                    this.idle_at = now + this.idle;
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    this.received += data.len() as u64;
                    if this.received > this.limit {
                        this.done = true;
                        return Poll::Ready(Some(Err(HttpError::HttpResponseBodySize(Some(
                            this.limit,
                        )))));
                    }
                    let out = match this.masker.as_mut() {
                        Some(m) => {
                            let mut out = Vec::with_capacity(data.len());
                            m.push(&data, &mut out);
                            Bytes::from(out)
                        }
                        None => data,
                    };
                    if out.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(out))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_static_resolver_falls_back_only_for_unknown_names() {
        let pinned: IpAddr = "10.1.2.3".parse().unwrap();
        let other: IpAddr = "203.0.113.9".parse().unwrap();
        let fallback = StaticResolver::new().with("other.example", [other]);
        let resolver = StaticResolver::new().with("Pinned.Example.", [pinned]);
        assert!(resolver.resolve("other.example").await.is_err());
        let resolver = resolver.fallback(Arc::new(fallback));
        assert_eq!(resolver.resolve("pinned.example").await.unwrap(), [pinned]);
        assert_eq!(resolver.resolve("other.example").await.unwrap(), [other]);
        assert!(resolver.resolve("missing.example").await.is_err());
    }
}

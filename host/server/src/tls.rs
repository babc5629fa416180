//! HTTPS serving for the `wrun serve` daemon.
//!
//! [`load_server_config`] reads a certificate chain and private key from PEM
//! files into a rustls [`ServerConfig`] (TLS 1.2 and 1.3, ring provider, ALPN
//! `http/1.1`); [`self_signed`] makes a throwaway certificate for development.
//! [`serve`] runs the accept loop: a TLS handshake with a deadline, then a
//! hyper HTTP/1.1 connection serving an axum [`Router`], with a bound on
//! concurrent connections and a graceful drain when the shutdown future
//! resolves.
//!
//! Handlers see the peer address as
//! [`ConnectInfo<SocketAddr>`](axum::extract::ConnectInfo): [`serve`] inserts
//! it into every request's extensions.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;
use zeroize::Zeroizing;

/// The smallest read buffer hyper accepts (`http1::Builder::max_buf_size`
/// panics below it).
const MIN_HYPER_BUF: usize = 8192;

/// How long the accept loop pauses after an accept error that is not about a
/// single connection (for example, the process ran out of file descriptors).
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(500);

/// Why a TLS configuration could not be built.
///
/// Messages name the file at fault and never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read (missing, unreadable).
    #[error("cannot read TLS {what} file {}: {source}", path.display())]
    Read {
        /// Which file this is: `certificate` or `private key`.
        what: &'static str,
        /// The file that could not be read.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The certificate file holds no PEM `CERTIFICATE` section.
    #[error("TLS certificate file {} contains no PEM certificate", path.display())]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The certificate file holds a malformed PEM section.
    #[error("TLS certificate file {} is not valid PEM: {reason}", path.display())]
    BadCertificatePem {
        /// The certificate file.
        path: PathBuf,
        /// What the PEM parser reported.
        reason: String,
    },
    /// The key file holds no PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[error(
        "TLS key file {} contains no PEM private key (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
        path.display()
    )]
    NoPrivateKey {
        /// The key file.
        path: PathBuf,
    },
    /// The key file holds a malformed PEM section.
    ///
    /// The parser's own message is left out: it could quote key bytes.
    #[error("TLS key file {} is not valid PEM", path.display())]
    BadKeyPem {
        /// The key file.
        path: PathBuf,
    },
    /// The private key does not belong to the certificate's public key.
    #[error(
        "the private key in {} does not match the certificate in {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the certificate or key (unsupported key type, bad DER).
    #[error("TLS certificate {} / key {} rejected: {source}", cert.display(), key.display())]
    Rejected {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// The rustls error (it names the problem, not the key bytes).
        source: rustls::Error,
    },
    /// A self-signed development certificate could not be generated.
    #[error("cannot generate a self-signed TLS certificate for {hosts:?}: {source}")]
    SelfSigned {
        /// The names the certificate was for.
        hosts: Vec<String>,
        /// The rcgen error.
        source: rcgen::Error,
    },
    /// rustls refused a configuration built from a generated certificate.
    #[error("cannot build a TLS configuration from the self-signed certificate: {0}")]
    SelfSignedConfig(#[source] rustls::Error),
}

/// Loads the certificate chain in `cert_pem` and the private key in `key_pem`
/// into a server configuration: TLS 1.2 and 1.3 with the ring provider's
/// default cipher suites, no client authentication, ALPN `http/1.1`.
///
/// The certificate file lists the end-entity certificate first, then any
/// intermediates. The key file may be the same file as the certificate.
///
/// # Errors
///
/// Returns a [`TlsError`] naming the file when a file is missing or
/// unreadable, holds no certificate or no private key, is malformed PEM, or
/// when the key does not match the certificate.
pub fn load_server_config(cert_pem: &Path, key_pem: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_bytes = std::fs::read(cert_pem).map_err(|source| TlsError::Read {
        what: "certificate",
        path: cert_pem.to_owned(),
        source,
    })?;
    let chain = CertificateDer::pem_slice_iter(&cert_bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| TlsError::BadCertificatePem {
            path: cert_pem.to_owned(),
            reason: err.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert_pem.to_owned(),
        });
    }

    let key_bytes = Zeroizing::new(std::fs::read(key_pem).map_err(|source| TlsError::Read {
        what: "private key",
        path: key_pem.to_owned(),
        source,
    })?);
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|err| match err {
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::NoPrivateKey {
            path: key_pem.to_owned(),
        },
        _ => TlsError::BadKeyPem {
            path: key_pem.to_owned(),
        },
    })?;

    build_config(chain, key).map_err(|source| match source {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch {
                cert: cert_pem.to_owned(),
                key: key_pem.to_owned(),
            }
        }
        source => TlsError::Rejected {
            cert: cert_pem.to_owned(),
            key: key_pem.to_owned(),
            source,
        },
    })
}

/// Generates a self-signed certificate for `hosts` (DNS names or IP
/// addresses; `localhost`, `127.0.0.1` and `::1` when empty) and a server
/// configuration using it, for development only.
///
/// Returns the configuration and the certificate in PEM, which clients must
/// trust explicitly. The private key lives only in the returned
/// configuration. The caller should log a loud warning: anyone can mint a
/// certificate like this one, so clients that trust it are only as safe as
/// the channel the PEM reached them through.
///
/// # Errors
///
/// Returns [`TlsError::SelfSigned`] if a name is not usable in a certificate.
pub fn self_signed(hosts: &[String]) -> Result<(Arc<ServerConfig>, String), TlsError> {
    let hosts: Vec<String> = if hosts.is_empty() {
        ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec()
    } else {
        hosts.to_vec()
    };
    let certified = rcgen::generate_simple_self_signed(hosts.clone())
        .map_err(|source| TlsError::SelfSigned { hosts, source })?;
    let cert_pem = certified.cert.pem();
    let chain = vec![certified.cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let config = build_config(chain, key).map_err(TlsError::SelfSignedConfig)?;
    Ok((config, cert_pem))
}

/// Builds the server configuration shared by [`load_server_config`] and
/// [`self_signed`].
fn build_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Limits and timeouts for [`serve`].
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// How long a client has to complete the TLS handshake. Default 10 s.
    pub handshake_timeout: Duration,
    /// The largest request head (request line and headers) accepted; larger
    /// ones get `431 Request Header Fields Too Large`. Default 16 KiB; values
    /// under 8 KiB are raised to 8 KiB (hyper's minimum).
    pub max_header_bytes: usize,
    /// How long a client has to send a complete request head, on a new
    /// connection and between kept-alive requests. Default 10 s.
    pub header_read_timeout: Duration,
    /// How long shutdown waits for in-flight requests. Default 30 s.
    pub drain_timeout: Duration,
    /// The most connections open at once (including those in the TLS
    /// handshake); further clients wait in the listen backlog. Default 4096.
    pub max_connections: usize,
}

impl Default for ServeLimits {
    fn default() -> ServeLimits {
        ServeLimits {
            handshake_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
            max_connections: 4096,
        }
    }
}

/// Serves `app` over HTTPS on `listener` until `shutdown` resolves.
///
/// Each connection does a TLS handshake (bounded by
/// [`ServeLimits::handshake_timeout`]) and is then served as HTTP/1.1 with
/// keep-alive; handlers can extract the peer address as
/// `ConnectInfo<SocketAddr>`. A failed handshake (for example plain HTTP sent
/// to this port) closes only that connection and is logged at debug level.
///
/// When `shutdown` resolves, the listener is closed, every open connection
/// finishes its in-flight request and closes, and `serve` returns once they
/// are all gone or [`ServeLimits::drain_timeout`] has passed, whichever comes
/// first; connections still open then are dropped.
///
/// # Errors
///
/// Fails only if the listener's local address cannot be read. Accept errors
/// are logged and retried, so one bad moment (say, running out of file
/// descriptors) does not stop the daemon.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    app: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut tasks = JoinSet::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HYPER_BUF))
        .keep_alive(true);
    tracing::info!(%local, "serving HTTPS");

    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            biased;
            () = shutdown.as_mut() => break,
            Some(ended) = tasks.join_next() => {
                log_task_end(ended);
                continue;
            }
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                // The semaphore is never closed; stop rather than spin.
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            biased;
            () = shutdown.as_mut() => break,
            Some(ended) = tasks.join_next() => {
                log_task_end(ended);
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) if is_connection_error(&err) => {
                    tracing::debug!(error = %err, "accept failed for one connection");
                    continue;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed; pausing before retrying");
                    tokio::select! {
                        () = shutdown.as_mut() => break,
                        () = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                    }
                }
            },
        };
        tasks.spawn(serve_connection(Connection {
            tcp,
            peer,
            acceptor: acceptor.clone(),
            http: http.clone(),
            app: app.clone(),
            handshake_timeout: limits.handshake_timeout,
            watcher: graceful.watcher(),
            permit,
        }));
    }

    drop(listener);
    tracing::info!(
        open = graceful.count(),
        "stopped accepting connections; draining"
    );
    if tokio::time::timeout(limits.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            drain_timeout = ?limits.drain_timeout,
            "connections still open after the drain timeout; closing them"
        );
    }
    tasks.shutdown().await;
    tracing::info!(%local, "HTTPS server stopped");
    Ok(())
}

/// Everything one connection task needs.
struct Connection {
    /// The accepted socket.
    tcp: TcpStream,
    /// The client's address.
    peer: SocketAddr,
    /// The TLS acceptor.
    acceptor: TlsAcceptor,
    /// The HTTP/1.1 connection settings.
    http: http1::Builder,
    /// The application.
    app: Router,
    /// The handshake deadline.
    handshake_timeout: Duration,
    /// Tells the connection to finish up when the server shuts down; while it
    /// is alive, shutdown waits for this connection.
    watcher: Watcher,
    /// This connection's slot under `max_connections`, freed on drop.
    permit: OwnedSemaphorePermit,
}

/// Runs one connection: TLS handshake, then HTTP/1.1 until the client or the
/// server closes it.
async fn serve_connection(conn: Connection) {
    let Connection {
        tcp,
        peer,
        acceptor,
        http,
        app,
        handshake_timeout,
        watcher,
        permit: _permit,
    } = conn;
    if let Err(err) = tcp.set_nodelay(true) {
        tracing::debug!(%peer, error = %err, "cannot set TCP_NODELAY");
    }
    let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            tracing::debug!(%peer, error = %err, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let service = app.map_request(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    });
    let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
    if let Err(err) = watcher.watch(connection).await {
        tracing::debug!(%peer, error = %err, "HTTP connection ended with an error");
    }
}

/// Logs a connection task that panicked (a bug: handlers' panics are not
/// caught elsewhere).
fn log_task_end(ended: Result<(), JoinError>) {
    if let Err(err) = ended
        && err.is_panic()
    {
        tracing::error!("an HTTP connection task panicked");
    }
}

/// Whether an accept error concerns only the one connection being accepted.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::routing::get;
    use bytes::Bytes;
    use http::StatusCode;
    use http_body_util::{BodyExt as _, Empty};
    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::sync::{Notify, oneshot};
    use tokio::task::JoinHandle;

    /// A running test server.
    struct TestServer {
        addr: SocketAddr,
        ca_pem: String,
        stop: Option<oneshot::Sender<()>>,
        handle: JoinHandle<io::Result<()>>,
    }

    impl TestServer {
        async fn start(app: Router, limits: ServeLimits) -> TestServer {
            let (config, ca_pem) = self_signed(&[]).unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let handle = tokio::spawn(serve(listener, config, app, limits, async move {
                let _ = stopped.await;
            }));
            TestServer {
                addr,
                ca_pem,
                stop: Some(stop),
                handle,
            }
        }

        fn stop(&mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
        }
    }

    fn app() -> Router {
        Router::new().route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
    }

    /// Opens a TLS connection to the test server, trusting only its cert.
    async fn tls_connect(
        addr: SocketAddr,
        ca_pem: &str,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
    }

    /// Sends one GET over a fresh HTTPS connection; returns the status and
    /// body, the client's local address, or the error.
    async fn https_get(
        addr: SocketAddr,
        ca_pem: &str,
        path: &str,
        extra_header: Option<(&str, String)>,
    ) -> Result<(StatusCode, String, SocketAddr), String> {
        let stream = tls_connect(addr, ca_pem).await.map_err(|e| e.to_string())?;
        let local = stream.get_ref().0.local_addr().unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let mut request = Request::get(path).header("host", "localhost");
        if let Some((name, value)) = extra_header {
            request = request.header(name, value);
        }
        let response = sender
            .send_request(request.body(Empty::<Bytes>::new()).unwrap())
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, String::from_utf8(body.to_vec()).unwrap(), local))
    }

    #[tokio::test]
    async fn serves_https_with_peer_address() {
        let server = TestServer::start(app(), ServeLimits::default()).await;
        let (status, body, local) = https_get(server.addr, &server.ca_pem, "/peer", None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, local.to_string());
    }

    #[tokio::test]
    async fn negotiates_http11_alpn() {
        let server = TestServer::start(app(), ServeLimits::default()).await;
        let stream = tls_connect(server.addr, &server.ca_pem).await.unwrap();
        // The client offered h2 first; the server only speaks HTTP/1.1.
        assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
        assert_eq!(
            stream.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
    }

    #[tokio::test]
    async fn plain_http_fails_and_server_survives() {
        let server = TestServer::start(app(), ServeLimits::default()).await;
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(b"GET /peer HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        // The server closes the connection (possibly after a TLS alert); it
        // never answers in HTTP.
        let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
            .await
            .unwrap();
        assert!(!buf.starts_with(b"HTTP/"), "got an HTTP answer: {buf:?}");

        let (status, _, _) = https_get(server.addr, &server.ca_pem, "/peer", None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn oversized_header_is_refused_and_server_survives() {
        let server = TestServer::start(app(), ServeLimits::default()).await;
        let big = "a".repeat(32 * 1024);
        match https_get(server.addr, &server.ca_pem, "/peer", Some(("x-big", big))).await {
            Ok((status, _, _)) => assert_eq!(status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
            Err(closed) => eprintln!("oversized header: connection closed: {closed}"),
        }
        let (status, _, _) = https_get(server.addr, &server.ca_pem, "/peer", None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn handshake_timeout_closes_idle_connection() {
        let limits = ServeLimits {
            handshake_timeout: Duration::from_millis(200),
            ..ServeLimits::default()
        };
        let server = TestServer::start(app(), limits).await;
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("server should close the silent connection");
        assert!(matches!(read, Ok(0) | Err(_)));
    }

    #[tokio::test]
    async fn connection_limit_queues_extra_clients() {
        let limits = ServeLimits {
            max_connections: 1,
            handshake_timeout: Duration::from_millis(300),
            ..ServeLimits::default()
        };
        let server = TestServer::start(app(), limits).await;
        // A silent connection holds the only slot until its handshake times
        // out; the HTTPS request behind it still succeeds afterwards.
        let _silent = TcpStream::connect(server.addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = std::time::Instant::now();
        let (status, _, _) = https_get(server.addr, &server.ca_pem, "/peer", None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn graceful_shutdown_finishes_in_flight_request() {
        let started = Arc::new(Notify::new());
        let app = Router::new().route(
            "/slow",
            get({
                let started = Arc::clone(&started);
                move || async move {
                    started.notify_one();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    "done"
                }
            }),
        );
        let mut server = TestServer::start(app, ServeLimits::default()).await;
        let (addr, ca_pem) = (server.addr, server.ca_pem.clone());
        let request = tokio::spawn(async move { https_get(addr, &ca_pem, "/slow", None).await });
        started.notified().await;
        server.stop();

        let (status, body, _) = request.await.unwrap().unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "done");
        tokio::time::timeout(Duration::from_secs(5), &mut server.handle)
            .await
            .expect("serve should return after draining")
            .unwrap()
            .unwrap();
        // The listener is closed: new connections are refused.
        assert!(TcpStream::connect(server.addr).await.is_err());
    }

    #[tokio::test]
    async fn drain_timeout_bounds_shutdown() {
        let started = Arc::new(Notify::new());
        let app = Router::new().route(
            "/stuck",
            get({
                let started = Arc::clone(&started);
                move || async move {
                    started.notify_one();
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    "late"
                }
            }),
        );
        let limits = ServeLimits {
            drain_timeout: Duration::from_millis(200),
            ..ServeLimits::default()
        };
        let mut server = TestServer::start(app, limits).await;
        let (addr, ca_pem) = (server.addr, server.ca_pem.clone());
        let request = tokio::spawn(async move { https_get(addr, &ca_pem, "/stuck", None).await });
        started.notified().await;
        server.stop();
        tokio::time::timeout(Duration::from_secs(5), &mut server.handle)
            .await
            .expect("serve should return after the drain timeout")
            .unwrap()
            .unwrap();
        assert!(request.await.unwrap().is_err());
    }

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir().join(format!(
                "wrun-tls-test-{name}-{}-{}",
                std::process::id(),
                rand_suffix()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn write(&self, name: &str, contents: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, contents).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn rand_suffix() -> u128 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    }

    fn generate() -> (String, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (certified.cert.pem(), certified.key_pair.serialize_pem())
    }

    #[test]
    fn loads_pem_files() {
        let dir = Scratch::new("ok");
        let (cert, key) = generate();
        let cert_path = dir.write("cert.pem", &cert);
        let key_path = dir.write("key.pem", &key);
        let config = load_server_config(&cert_path, &key_path).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);

        // The key may also sit in the certificate file.
        let both = dir.write("both.pem", &format!("{cert}{key}"));
        load_server_config(&both, &both).unwrap();
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = Scratch::new("errors");
        let (cert, key) = generate();
        let (_, other_key) = generate();
        let cert_path = dir.write("cert.pem", &cert);
        let key_path = dir.write("key.pem", &key);
        let other_key_path = dir.write("other-key.pem", &other_key);
        let empty = dir.write("empty.pem", "");
        let missing = dir.0.join("missing.pem");

        let err = load_server_config(&missing, &key_path).unwrap_err();
        assert!(matches!(
            err,
            TlsError::Read {
                what: "certificate",
                ..
            }
        ));
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let err = load_server_config(&cert_path, &missing).unwrap_err();
        assert!(matches!(
            err,
            TlsError::Read {
                what: "private key",
                ..
            }
        ));
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let err = load_server_config(&empty, &key_path).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }));
        assert!(err.to_string().contains("empty.pem"), "{err}");

        let err = load_server_config(&cert_path, &cert_path).unwrap_err();
        assert!(matches!(err, TlsError::NoPrivateKey { .. }));
        assert!(err.to_string().contains("cert.pem"), "{err}");

        let err = load_server_config(&cert_path, &other_key_path).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains("other-key.pem") && message.contains("cert.pem"));
        // No key material in the message.
        assert!(!message.contains("PRIVATE KEY"));
    }
}

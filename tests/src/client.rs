//! A direct HTTPS client: hyper over tokio-rustls, one kept-alive connection.
//!
//! [`DirectClient`] is the baseline a benchmark compares wrun's egress with
//! (the same request sent straight to the mock server, with no sandbox in
//! between), and the client the mock server's own tests use.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::header::HOST;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

/// An HTTP/1.1 client bound to one connection, reused for every request.
///
/// The connection is closed when the client is dropped.
pub struct DirectClient {
    sender: SendRequest<Full<Bytes>>,
    host: HeaderValue,
    connection: JoinHandle<()>,
}

impl DirectClient {
    /// Connects to `addr` over TLS, verifying the server's certificate for
    /// `server_name` (a DNS name or an IP address) against the CA certificates
    /// in `ca_pem` only.
    ///
    /// # Errors
    ///
    /// Fails if `ca_pem` holds no valid certificate, `server_name` is not a
    /// valid name, or the TCP connection, TLS handshake or HTTP handshake fails
    /// (for example because the server's certificate does not chain to the CA).
    pub async fn connect(
        addr: SocketAddr,
        server_name: &str,
        ca_pem: &str,
    ) -> anyhow::Result<DirectClient> {
        let config = client_config(ca_pem)?;
        let name = ServerName::try_from(server_name.to_owned())
            .with_context(|| format!("invalid server name {server_name:?}"))?;
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        tcp.set_nodelay(true).context("set TCP_NODELAY")?;
        let tls = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        DirectClient::handshake(tls, &authority(server_name, addr.port())).await
    }

    /// Connects to `addr` over plain HTTP, for the mock server's
    /// [`start_plain`](crate::MockServer::start_plain) mode.
    ///
    /// # Errors
    ///
    /// Fails if the TCP connection or the HTTP handshake fails.
    pub async fn connect_plain(addr: SocketAddr) -> anyhow::Result<DirectClient> {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connect to {addr}"))?;
        tcp.set_nodelay(true).context("set TCP_NODELAY")?;
        DirectClient::handshake(tcp, &addr.to_string()).await
    }

    /// Runs the HTTP/1.1 handshake over `io` and spawns the connection task.
    async fn handshake<S>(io: S, authority: &str) -> anyhow::Result<DirectClient>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let host = HeaderValue::try_from(authority).context("host header")?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .context("HTTP/1.1 handshake")?;
        let connection = tokio::spawn(async move {
            // The error, if any, reaches the caller through the next `send`.
            let _ = connection.await;
        });
        Ok(DirectClient {
            sender,
            host,
            connection,
        })
    }

    /// Waits until the connection can take a request; `false` if it has
    /// closed (the server closed it while idle, or it broke), so the next
    /// [`send`](DirectClient::send) would fail.
    pub async fn ready(&mut self) -> bool {
        self.sender.ready().await.is_ok()
    }

    /// Sends `request` on the connection and reads the whole response.
    ///
    /// An absolute URI is rewritten to origin form (path and query), and a
    /// `Host` header is added when missing: from the URI's authority if it
    /// has one, else from the name and port given at connect time.
    ///
    /// # Errors
    ///
    /// Fails if the connection was closed or breaks before the whole
    /// response arrived.
    pub async fn send(
        &mut self,
        mut request: Request<Full<Bytes>>,
    ) -> anyhow::Result<(StatusCode, HeaderMap, Bytes)> {
        let uri = request.uri().clone();
        if !request.headers().contains_key(HOST) {
            let host = match uri.authority() {
                Some(authority) => {
                    HeaderValue::try_from(authority.as_str()).context("host header")?
                }
                None => self.host.clone(),
            };
            request.headers_mut().insert(HOST, host);
        }
        if uri.authority().is_some() || uri.scheme().is_some() {
            let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
            *request.uri_mut() = Uri::try_from(path_and_query).context("origin-form URI")?;
        }
        self.sender
            .ready()
            .await
            .context("connection is not ready")?;
        let response = self
            .sender
            .send_request(request)
            .await
            .context("send request")?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.context("read body")?.to_bytes();
        Ok((parts.status, parts.headers, body))
    }
}

impl fmt::Debug for DirectClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DirectClient")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Drop for DirectClient {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// Builds a rustls client configuration that trusts only the CA
/// certificates in `ca_pem` (ring provider, TLS 1.2 and 1.3, ALPN `http/1.1`).
///
/// # Errors
///
/// Fails if `ca_pem` holds no certificate or a certificate rustls rejects.
pub fn client_config(ca_pem: &str) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.context("parse CA PEM")?)
            .context("add CA certificate")?;
    }
    if roots.is_empty() {
        bail!("no CA certificate in PEM input");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Formats `name:port`, bracketing IPv6 addresses.
fn authority(name: &str, port: u16) -> String {
    if name.contains(':') {
        format!("[{name}]:{port}")
    } else {
        format!("{name}:{port}")
    }
}

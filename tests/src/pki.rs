//! A throwaway certificate authority and server certificate for loopback TLS.
//!
//! [`TestPki`] plays the part of an operator's private CA: the mock server
//! presents the server certificate, and wrun's egress is told to trust the CA.
//! Every call generates fresh keys, so two `TestPki` values never trust each
//! other; [`TestPki::other_ca`] names that property for tests of refusal.

use std::fmt;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The IP addresses every server certificate carries as subject alternative names.
const LOOPBACK_SANS: [&str; 2] = ["127.0.0.1", "::1"];

/// A test CA (ECDSA P-256) and one server certificate it signed.
///
/// The server certificate's subject alternative names are the DNS names given
/// to [`TestPki::new`] plus the IP addresses `127.0.0.1` and `::1`. The
/// certificates are valid from 1975 to 4096, so tests never hit expiry.
///
/// `Debug` prints the names only, never key material.
pub struct TestPki {
    names: Vec<String>,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    server_der: CertificateDer<'static>,
    server_pem: String,
    server_key_pem: String,
    server_config: Arc<ServerConfig>,
}

impl TestPki {
    /// Generates a new CA and a server certificate for `names` (DNS names or IP
    /// addresses) and the loopback addresses.
    ///
    /// # Panics
    ///
    /// Panics if a name is not a valid DNS name or if key generation fails;
    /// both are mistakes in the test, not conditions a test checks.
    pub fn new(names: &[&str]) -> TestPki {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate CA key");
        let mut ca_params = CertificateParams::default();
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "wrun test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");

        let mut sans: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        for ip in LOOPBACK_SANS {
            if !sans.iter().any(|san| san == ip) {
                sans.push(ip.to_owned());
            }
        }
        let server_key =
            KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate server key");
        let mut server_params =
            CertificateParams::new(sans).expect("server names are valid DNS names or IPs");
        server_params.distinguished_name = rcgen::DistinguishedName::new();
        server_params
            .distinguished_name
            .push(DnType::CommonName, "wrun test server");
        server_params.is_ca = IsCa::ExplicitNoCa;
        server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        server_params.use_authority_key_identifier_extension = true;
        let server_cert = server_params
            .signed_by(&server_key, &ca_cert, &ca_key)
            .expect("sign server certificate");

        let server_der = server_cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
        let server_config = build_server_config(vec![server_der.clone()], key);

        TestPki {
            names: names.iter().map(|name| (*name).to_owned()).collect(),
            ca_der: ca_cert.der().clone(),
            ca_pem: ca_cert.pem(),
            server_der,
            server_pem: server_cert.pem(),
            server_key_pem: server_key.serialize_pem(),
            server_config,
        }
    }

    /// The server certificate (PEM), for servers configured by file.
    pub fn server_cert_pem(&self) -> String {
        self.server_pem.clone()
    }

    /// The server's private key (PKCS#8 PEM), for servers configured by file.
    pub fn server_key_pem(&self) -> String {
        self.server_key_pem.clone()
    }

    /// Generates a second, unrelated CA and server certificate for the same names.
    ///
    /// A server using the result presents a certificate that is valid for the
    /// right names but chains to a CA that nobody trusts, so a client trusting
    /// only `self`'s CA must refuse it.
    pub fn other_ca(&self) -> TestPki {
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        TestPki::new(&names)
    }

    /// The DNS names (or IP addresses) this PKI was created for, without the
    /// loopback addresses that are always added.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// The CA certificate in PEM form, as an operator would configure it.
    pub fn ca_pem(&self) -> String {
        self.ca_pem.clone()
    }

    /// The CA certificate in DER form.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }

    /// The server (leaf) certificate in DER form.
    pub fn server_cert_der(&self) -> CertificateDer<'static> {
        self.server_der.clone()
    }

    /// A rustls server configuration presenting the server certificate.
    ///
    /// It uses the ring provider, offers TLS 1.2 and 1.3, asks for no client
    /// certificate and advertises ALPN `http/1.1` only.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.server_config)
    }
}

impl fmt::Debug for TestPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestPki")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// Builds the server configuration described on [`TestPki::server_config`].
fn build_server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("generated key matches certificate");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    #[test]
    fn ca_pem_is_a_certificate() {
        let pki = TestPki::new(&["api.example.test"]);
        let pem = pki.ca_pem();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(pki.names(), ["api.example.test".to_owned()]);
        assert_eq!(
            pki.server_config().alpn_protocols,
            vec![b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn other_ca_differs() {
        let pki = TestPki::new(&["api.example.test"]);
        let other = pki.other_ca();
        assert_ne!(pki.ca_der(), other.ca_der());
        assert_eq!(pki.names(), other.names());
    }

    #[test]
    fn debug_shows_no_key_material() {
        let pki = TestPki::new(&["api.example.test"]);
        let debug = format!("{pki:?}");
        assert!(debug.contains("api.example.test"));
        assert!(!debug.contains("BEGIN"));
    }
}

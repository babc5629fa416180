//! Shared harness for wrun's integration tests.
//!
//! - [`pki`]: a throwaway CA and server certificate, standing in for an
//!   operator's private CA.
//! - [`mock`]: [`MockServer`], a loopback HTTPS API (echo, redirects, slow and
//!   hanging routes, large bodies, GitHub-, Slack- and OAuth-like endpoints)
//!   that records everything it receives.
//! - [`client`]: [`DirectClient`], the same requests sent straight with hyper,
//!   as a baseline for benchmarks.
//! - [`canary`](mod@canary): random secret-like values and [`assert_absent`],
//!   which searches for them in raw and encoded forms.
//!
//! Everything listens on and connects to `127.0.0.1` only.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use wrun_tests::{DirectClient, MockServer, TestPki};
//!
//! let pki = TestPki::new(&["api.example.test"]);
//! let server = MockServer::start(&pki).await;
//! let mut client = DirectClient::connect(server.addr(), "api.example.test", &pki.ca_pem()).await?;
//! let request = http::Request::get("/echo?x=1").body(Default::default())?;
//! let (status, _headers, _body) = client.send(request).await?;
//! assert_eq!(status, 200);
//! assert_eq!(server.requests().len(), 1);
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

pub mod canary;
pub mod client;
pub mod mock;
pub mod pki;

pub use canary::{assert_absent, canary, find_encoded};
pub use client::DirectClient;
pub use mock::{MockServer, REFLECT_FORMS, Recorded, reflected};
pub use pki::TestPki;

/// Directory of the guest components built for these tests (release,
/// wasm32-wasip2), e.g. `github_issue.wasm`.
pub fn guests_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("WRUN_GUESTS"))
}

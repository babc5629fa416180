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
//! - [`greet`]: a grant-free step in each language, written over a scaffold.
//! - [`oidc`]: [`OidcProvider`](oidc::OidcProvider), a local OpenID Connect
//!   provider (authorization code with PKCE, ES256 id tokens) with knobs that
//!   spoil its id tokens.
//! - [`browser`]: [`Browser`](browser::Browser), headless Chromium driven
//!   through chromedriver, reading the browser's console log.
//! - [`postgres`]: [`PgServer`], a throwaway PostgreSQL server in a temporary
//!   directory, with a fresh database per test.
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

pub mod browser;
pub mod canary;
pub mod client;
pub mod greet;
pub mod mock;
pub mod oauth;
pub mod oidc;
pub mod pki;
pub mod postgres;

pub use canary::{assert_absent, canary, find_encoded};
pub use client::DirectClient;
pub use greet::{GREET_STEPS, greet_project};
pub use mock::{MockServer, REFLECT_FORMS, Recorded, reflected};
pub use pki::TestPki;
pub use postgres::PgServer;

/// Directory of the Rust guest components built for these tests (release,
/// wasm32-wasip2), e.g. `github_issue.wasm`, by `cargo xtask guests`.
///
/// # Panics
///
/// When the guests have not been built: the message says how to build them.
pub fn guests_dir() -> std::path::PathBuf {
    built(
        &target_dir()
            .join("guests")
            .join("wasm32-wasip2")
            .join("release"),
    )
}

/// Directory of the JavaScript guest components (`noop.wasm`, ...).
///
/// # Panics
///
/// As [`guests_dir`].
pub fn guests_js_dir() -> std::path::PathBuf {
    built(&target_dir().join("guests").join("js"))
}

/// Directory of the Python guest components (`noop.wasm`, ...).
///
/// # Panics
///
/// As [`guests_dir`].
pub fn guests_py_dir() -> std::path::PathBuf {
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(
            || std::path::PathBuf::from("."),
            std::path::Path::to_path_buf,
        );
    built(&repo.join("guests").join("python").join("build"))
}

/// A `WRUN_HOME` for tests that scaffold and build steps: under the target
/// directory, so the toolkit's npm and pip installs are made once per
/// target directory, not once per test run.
pub fn wrun_home() -> std::path::PathBuf {
    target_dir().join("wrun-home")
}

/// The target directory this test or bench binary was built into: it lives
/// in `<target>/<profile>/deps/` (or `examples/`), and the guests are built
/// into `<target>/guests/` by `cargo xtask guests`. Tests keep what should
/// outlive one run (tool installs, builds) under it.
pub fn target_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .skip(1)
        .find(|dir| dir.join("guests").is_dir())
        .or_else(|| exe.ancestors().nth(3))
        .map_or_else(
            || std::path::PathBuf::from("target"),
            std::path::Path::to_path_buf,
        )
}

/// `dir`, if it holds components; otherwise a panic that says what to run.
fn built(dir: &std::path::Path) -> std::path::PathBuf {
    let has_components = std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.path().extension().is_some_and(|x| x == "wasm"))
    });
    assert!(
        has_components,
        "no guest components in {}: build them with `cargo xtask guests` \
         (or run the whole suite with `cargo xtask test`)",
        dir.display()
    );
    dir.to_path_buf()
}

//! Headless Chromium, driven through WebDriver, for tests of the web console.
//!
//! [`Browser::start`] runs chromedriver on a free loopback port, in a
//! process group of its own, and opens a session in a headless Chromium with
//! a throwaway profile. The session accepts any certificate (the daemon
//! under test presents one from a test CA) and keeps the browser's console
//! log, which [`Browser::console_messages`] and [`Browser::errors`] read:
//! script errors and Content Security Policy violations are `SEVERE`
//! entries there.
//!
//! Dropping a [`Browser`] (also while a test panics) kills chromedriver's
//! whole process group, Chromium included, and removes the profile, so no
//! browser outlives its test. [`Browser::close`] ends the session first.
//!
//! chromedriver and Chromium are found through `WRUN_CHROMEDRIVER` and
//! `WRUN_CHROMIUM`, else on `PATH`, else in `/usr/bin`; Debian packages them
//! as `chromium-driver` and `chromium`.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use wrun_tests::browser::Browser;
//!
//! let browser = Browser::start().await?;
//! browser.client().goto("https://127.0.0.1:8443/console/").await?;
//! assert!(browser.errors().await?.is_empty());
//! browser.close().await?;
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::fs::File;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use fantoccini::wd::{Capabilities, WebDriverCompatibleCommand};
use fantoccini::{Client, ClientBuilder};
use http::Method;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tempfile::TempDir;

/// How long chromedriver may take to answer `/status` ready.
const DRIVER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long opening a session (starting Chromium) may take.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);

/// The Chromium window size, which a test can change with
/// [`Browser::set_window_size`].
const WINDOW_SIZE: &str = "--window-size=1280,900";

/// One entry of the browser's console log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleMessage {
    /// The level as chromedriver reports it: `SEVERE` (`console.error`,
    /// uncaught exceptions, CSP violations, failed loads), `WARNING`,
    /// `INFO` or `DEBUG`.
    pub level: String,
    /// Where it came from, such as `console-api`, `javascript` (an
    /// uncaught exception), `security` (a CSP violation) or `network`.
    pub source: String,
    /// The text, such as `https://127.0.0.1:8443/app.js 0:8 "boom"`, or
    /// for a CSP violation `https://127.0.0.1:8443/ 3 Executing inline script
    /// violates the following Content Security Policy directive …`.
    pub message: String,
}

/// A headless Chromium with a WebDriver session; see the [module docs](self).
pub struct Browser {
    client: Client,
    /// Every console entry read so far: chromedriver hands each one out once.
    seen: Mutex<Vec<ConsoleMessage>>,
    /// Dropped after the client: kills the processes, removes the profile.
    driver: Driver,
}

impl Browser {
    /// Starts chromedriver and opens a session in a new headless Chromium.
    ///
    /// Chromium runs with `--headless=new --no-sandbox --disable-gpu
    /// --disable-dev-shm-usage --window-size=1280,900` and a fresh
    /// `--user-data-dir`; the session accepts insecure certificates and
    /// logs every browser console level.
    ///
    /// # Errors
    ///
    /// Fails if chromedriver or Chromium cannot be found (the message names
    /// the Debian packages), if chromedriver does not become ready within
    /// 30 s, or if the session cannot be opened within 60 s; the message
    /// then holds the end of chromedriver's log.
    pub async fn start() -> anyhow::Result<Browser> {
        let chromedriver = find_program("WRUN_CHROMEDRIVER", "chromedriver", "chromium-driver")?;
        let chromium = find_program("WRUN_CHROMIUM", "chromium", "chromium")?;
        let mut driver = Driver::launch(&chromedriver)?;
        driver.wait_ready().await?;

        let mut capabilities = Capabilities::new();
        capabilities.insert("browserName".to_owned(), json!("chrome"));
        capabilities.insert("acceptInsecureCerts".to_owned(), json!(true));
        capabilities.insert("goog:loggingPrefs".to_owned(), json!({ "browser": "ALL" }));
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    WINDOW_SIZE,
                    format!("--user-data-dir={}", driver.profile().display()),
                ],
            }),
        );
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities);
        let client = match tokio::time::timeout(SESSION_TIMEOUT, builder.connect(&driver.url)).await
        {
            Ok(Ok(client)) => client,
            Ok(Err(error)) => bail!(
                "chromedriver could not open a Chromium session: {error}\n{}",
                driver.log_tail()
            ),
            Err(_) => bail!(
                "Chromium did not start within {SESSION_TIMEOUT:?}\n{}",
                driver.log_tail()
            ),
        };
        Ok(Browser {
            client,
            seen: Mutex::new(Vec::new()),
            driver,
        })
    }

    /// The WebDriver client: navigation, elements, scripts, cookies.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Every entry of the browser's console log since the session started,
    /// in order.
    ///
    /// chromedriver hands out each entry once (`POST /session/{id}/se/log`
    /// with `{"type":"browser"}`); the browser keeps what it read, so that
    /// calls after one another see the same entries and more.
    ///
    /// # Errors
    ///
    /// Fails if chromedriver does not answer or answers something else than
    /// a list of log entries.
    pub async fn console_messages(&self) -> anyhow::Result<Vec<ConsoleMessage>> {
        let entries = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .context("read the browser log")?;
        let Value::Array(entries) = entries else {
            bail!("the browser log is not a list: {entries}");
        };
        let text = |entry: &Value, name: &str| {
            entry
                .get(name)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.extend(entries.iter().map(|entry| ConsoleMessage {
            level: text(entry, "level"),
            source: text(entry, "source"),
            message: text(entry, "message"),
        }));
        Ok(seen.clone())
    }

    /// The `SEVERE` entries of [`console_messages`](Self::console_messages):
    /// `console.error` calls, uncaught exceptions, Content Security Policy
    /// violations and failed loads (a missing `/favicon.ico`, which Chromium
    /// asks for on its own, is one).
    ///
    /// # Errors
    ///
    /// As [`console_messages`](Self::console_messages).
    pub async fn errors(&self) -> anyhow::Result<Vec<ConsoleMessage>> {
        let mut messages = self.console_messages().await?;
        messages.retain(|message| message.level == "SEVERE");
        Ok(messages)
    }

    /// Resizes the browser window to `width` by `height` pixels.
    ///
    /// # Errors
    ///
    /// Fails if chromedriver refuses or does not answer.
    pub async fn set_window_size(&self, width: u32, height: u32) -> anyhow::Result<()> {
        self.client
            .set_window_size(width, height)
            .await
            .context("set the window size")
    }

    /// A PNG screenshot of the current page's viewport.
    ///
    /// # Errors
    ///
    /// Fails if chromedriver refuses or does not answer.
    pub async fn screenshot_png(&self) -> anyhow::Result<Vec<u8>> {
        self.client.screenshot().await.context("take a screenshot")
    }

    /// Ends the WebDriver session (Chromium quits), then stops chromedriver
    /// and removes the profile as dropping does.
    ///
    /// # Errors
    ///
    /// Fails if chromedriver did not end the session; the processes are
    /// killed and the profile removed all the same.
    pub async fn close(self) -> anyhow::Result<()> {
        let Browser { client, driver, .. } = self;
        let closed = client.close().await;
        drop(driver);
        closed.context("end the WebDriver session")
    }
}

impl fmt::Debug for Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Browser")
            .field("webdriver", &self.driver.url)
            .field("profile", &self.driver.profile())
            .finish_non_exhaustive()
    }
}

/// chromedriver's browser log command, which fantoccini does not have:
/// `POST /session/{id}/se/log` with `{"type":"browser"}`. In W3C mode
/// chromedriver 148 refuses the legacy `GET /session/{id}/log`.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        let session_id = session_id.unwrap_or_default();
        base_url.join(&format!("session/{session_id}/se/log"))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (Method, Option<String>) {
        (Method::POST, Some(json!({ "type": "browser" }).to_string()))
    }
}

/// A running chromedriver, leader of its own process group, and the
/// directory holding the Chromium profile and chromedriver's log.
///
/// Dropping it kills the group and removes the directory.
struct Driver {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    url: String,
    dir: TempDir,
}

impl Driver {
    /// Starts `chromedriver` on a free loopback port.
    fn launch(chromedriver: &Path) -> anyhow::Result<Driver> {
        let dir = tempfile::Builder::new()
            .prefix("wrun-browser-")
            .tempdir()
            .context("create the browser's temporary directory")?;
        let log = File::create(dir.path().join("chromedriver.log"))
            .context("create chromedriver's log")?;
        // The port is free now; chromedriver binds it a moment later.
        let port = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|listener| listener.local_addr())
            .context("find a free loopback port")?
            .port();
        // Chromium keeps its crash reports and certificate database under
        // the home directory: a throwaway one keeps them out of the real
        // home and names the directory in the crash handler's command line,
        // which lets `kill_stragglers` find it (it leaves the group).
        let home = dir.path().join("home");
        std::fs::create_dir(&home).context("create the browser's home directory")?;
        let child = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .env("HOME", &home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_CACHE_HOME")
            .env_remove("XDG_DATA_HOME")
            .env_remove("XDG_STATE_HOME")
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("share chromedriver's log")?)
            .stderr(log)
            // A group of its own, so that dropping kills Chromium too.
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {}", chromedriver.display()))?;
        Ok(Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        })
    }

    /// The Chromium profile directory (created by Chromium).
    fn profile(&self) -> PathBuf {
        self.dir.path().join("profile")
    }

    /// Waits until `GET /status` says chromedriver is ready.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .build::<_, Empty<Bytes>>(HttpConnector::new());
        let status_url: http::Uri = format!("{}/status", self.url)
            .parse()
            .context("chromedriver's status URL")?;
        let deadline = Instant::now() + DRIVER_READY_TIMEOUT;
        loop {
            let ready = async {
                let response = http.get(status_url.clone()).await.ok()?;
                let body = response.into_body().collect().await.ok()?.to_bytes();
                let status: Value = serde_json::from_slice(&body).ok()?;
                status["value"]["ready"].as_bool()
            };
            if ready.await == Some(true) {
                return Ok(());
            }
            if self.child.try_wait().ok().flatten().is_some() {
                bail!(
                    "chromedriver exited before it was ready\n{}",
                    self.log_tail()
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "chromedriver was not ready within {DRIVER_READY_TIMEOUT:?}\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of chromedriver's log, for error messages.
    fn log_tail(&self) -> String {
        let log =
            std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines.get(lines.len().saturating_sub(20)..).unwrap_or(&[]);
        format!("chromedriver's log ends:\n{}", tail.join("\n"))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // SIGKILL to the whole group: chromedriver and the Chromium it
        // started, which stays in its group (but for its crash handlers,
        // which start sessions of their own).
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Should the kill program be missing, chromedriver at least.
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_stragglers(self.dir.path());
        // `dir` is removed when its `TempDir` drops, after this.
    }
}

/// SIGKILLs any process still running whose command line names `dir`, by
/// process id: the processes that left the group, such as Chromium's crash
/// handlers (`--database=<dir>/home/.config/chromium/Crash Reports`). Waits
/// (up to 2 s) until none is left, so that a test may check.
fn kill_stragglers(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids = processes_naming(dir);
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg("--")
            .args(&pids)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The ids of the running processes whose command line contains `dir`
/// (zombies have none).
fn processes_naming(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = dir.as_os_str().as_encoded_bytes();
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().into_string().ok())
        .filter(|name| name.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline.windows(needle.len()).any(|window| window == needle))
        })
        .collect()
}

/// The program named by the environment variable `env`, else `name` on
/// `PATH`, else `/usr/bin/{name}`; an error naming the Debian `package`.
fn find_program(env: &str, name: &str, package: &str) -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        let path = PathBuf::from(path);
        if is_executable(&path) {
            return Ok(path);
        }
        bail!("{env} names {}, which is not an executable", path.display());
    }
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(name))
        .chain([Path::new("/usr/bin").join(name)])
        .find(|candidate| is_executable(candidate))
        .with_context(|| {
            format!(
                "{name} not found: the browser tests need Debian's packages `chromium` and \
                 `chromium-driver` (apt-get install chromium chromium-driver), or {env} \
                 naming the program (this one is in the package `{package}`)"
            )
        })
}

/// Whether `path` is a file someone may execute.
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use std::sync::Arc;

    use http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderValue};
    use http::{Response, StatusCode};
    use http_body_util::Full;
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::mock::{bind_loopback, spawn_https};
    use crate::pki::TestPki;

    const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>wrun harness check</title>
<script src="/app.js"></script>
<script>document.title = "the inline script ran";</script>
</head><body><p>harness check</p></body></html>"#;

    /// A page whose external script logs an error and whose inline script
    /// the CSP blocks.
    fn page(path: &str) -> Response<Full<Bytes>> {
        let (content_type, body) = match path {
            "/" => ("text/html; charset=utf-8", PAGE),
            "/app.js" => ("text/javascript", r#"console.error("boom");"#),
            _ => {
                let mut response = Response::new(Full::new(Bytes::from_static(b"not found")));
                *response.status_mut() = StatusCode::NOT_FOUND;
                return response;
            }
        };
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'self'; script-src 'self'"),
        );
        response
    }

    #[tokio::test]
    async fn browser_sees_console_errors_and_csp_violations() {
        let started = Instant::now();
        let pki = TestPki::new(&[]);
        let (listener, addr) = bind_loopback().await;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        let server = spawn_https(
            listener,
            TlsAcceptor::from(pki.server_config()),
            move |request: http::Request<hyper::body::Incoming>| {
                let path = request.uri().path().to_owned();
                seen.lock().unwrap().push(path.clone());
                async move { page(&path) }
            },
        );

        let browser = Browser::start().await.unwrap();
        let dir = browser.driver.dir.path().to_path_buf();
        assert!(
            !processes_naming(&dir).is_empty(),
            "Chromium runs with the profile"
        );
        browser
            .client()
            .goto(&format!("https://{addr}/"))
            .await
            .unwrap();
        // The inline script was blocked, so the title is the page's own.
        assert_eq!(
            browser.client().title().await.unwrap(),
            "wrun harness check"
        );
        assert_eq!(
            requests.lock().unwrap()[..2],
            ["/".to_owned(), "/app.js".to_owned()]
        );

        let deadline = Instant::now() + Duration::from_secs(10);
        let errors = loop {
            let errors = browser.errors().await.unwrap();
            let boom = errors.iter().any(|e| e.message.contains(r#""boom""#));
            let csp = errors
                .iter()
                .any(|e| e.message.contains("Content Security Policy"));
            if (boom && csp) || Instant::now() >= deadline {
                break errors;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            errors
                .iter()
                .any(|e| e.source == "console-api" && e.message.contains(r#""boom""#)),
            "{errors:#?}"
        );
        assert!(
            errors.iter().any(|e| e.source == "security"
                && e.message
                    .contains("violates the following Content Security Policy directive")),
            "{errors:#?}"
        );
        // Entries read once stay visible.
        let again = browser.console_messages().await.unwrap();
        assert!(again.len() >= errors.len());

        browser.set_window_size(800, 600).await.unwrap();
        let png = browser.screenshot_png().await.unwrap();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));

        browser.close().await.unwrap();
        assert!(!dir.exists(), "the profile is removed");
        assert_eq!(
            processes_naming(&dir),
            Vec::<String>::new(),
            "no browser outlives the test"
        );
        server.abort();
        eprintln!("browser test took {:?}", started.elapsed());
    }

    #[tokio::test]
    async fn dropping_kills_the_browser() {
        let browser = Browser::start().await.unwrap();
        let dir = browser.driver.dir.path().to_path_buf();
        browser.client().goto("about:blank").await.unwrap();
        drop(browser);
        assert!(!dir.exists());
        assert_eq!(processes_naming(&dir), Vec::<String>::new());
    }

    #[test]
    fn missing_programs_name_the_debian_packages() {
        let error = find_program("WRUN_TEST_NO_SUCH_VARIABLE", "no-such-chromedriver", "x")
            .unwrap_err()
            .to_string();
        assert!(error.contains("chromium-driver"), "{error}");
        assert!(error.contains("WRUN_TEST_NO_SUCH_VARIABLE"), "{error}");
    }
}

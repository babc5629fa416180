//! Running the real `wrun serve` on loopback and talking to it over HTTPS.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use wrun_tests::{DirectClient, TestPki, guests_dir};

/// A fresh directory under the system temp dir.
pub(crate) fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wrun-daemon-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A daemon's files: database, key, TLS certificate, configuration.
pub(crate) struct Site {
    /// The directory holding everything.
    pub(crate) dir: PathBuf,
    /// The CA the daemon's certificate chains to.
    pub(crate) ca_pem: String,
}

impl Site {
    /// A new site: key and database initialised, a CA-signed certificate
    /// for 127.0.0.1, and `config` (TOML) appended to a base configuration
    /// that listens on a random loopback port.
    pub(crate) fn new(config: &str) -> Site {
        let dir = tempdir();
        let pki = TestPki::new(&["localhost"]);
        std::fs::write(dir.join("tls.crt"), pki.server_cert_pem()).unwrap();
        std::fs::write(dir.join("tls.key"), pki.server_key_pem()).unwrap();
        let base = format!(
            "listen = \"127.0.0.1:0\"\npublic_url = \"https://127.0.0.1\"\n\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n\n",
            dir.join("tls.crt").display(),
            dir.join("tls.key").display()
        );
        std::fs::write(dir.join("wrun.toml"), format!("{base}{config}")).unwrap();
        let site = Site {
            dir,
            ca_pem: pki.ca_pem(),
        };
        site.ok(site.wrun().args(["key", "init"]));
        site
    }

    /// The database.
    pub(crate) fn db(&self) -> PathBuf {
        self.dir.join("wrun.db")
    }

    /// The `wrun` binary with this site's database and key.
    pub(crate) fn wrun(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wrun"));
        cmd.current_dir(&self.dir)
            .env("WRUN_DB", self.db())
            .env("WRUN_KEY_FILE", self.dir.join("master.key"))
            .env(
                "WRUN_CACHE_DIR",
                std::env::temp_dir().join("wrun-daemon-test-cache"),
            )
            .env("NO_COLOR", "1")
            .env_remove("WRUN_MASTER_KEY")
            .env_remove("WRUN_WORKSPACE")
            .env_remove("RUST_LOG")
            .env_remove("WRUN_LOG");
        cmd
    }

    /// Runs a command that must succeed; returns its stdout.
    pub(crate) fn ok(&self, cmd: &mut Command) -> String {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Adds a member with a role in a workspace (through the CLI).
    pub(crate) fn member(&self, workspace: &str, subject: &str, role: &str) {
        self.ok(self
            .wrun()
            .args(["--workspace", workspace, "member", "set", subject, role]));
    }

    /// Creates a token through the CLI; returns its text.
    pub(crate) fn token(&self, workspace: &str, owner: &str, scopes: &str) -> String {
        self.ok(self.wrun().args([
            "--workspace",
            workspace,
            "token",
            "create",
            "--name",
            "test",
            "--owner",
            owner,
            "--scope",
            scopes,
            "--expires-in",
            "1h",
        ]))
        .trim()
        .to_string()
    }

    /// Starts the daemon and waits until it listens.
    pub(crate) fn start(&self) -> Daemon {
        self.start_with(&[])
    }

    /// Starts the daemon with extra environment variables.
    pub(crate) fn start_with(&self, env: &[(&str, &str)]) -> Daemon {
        let log = std::fs::File::create(
            self.dir
                .join(format!("serve-{:08x}.log", rand::random::<u32>())),
        )
        .unwrap();
        let mut cmd = self.wrun();
        cmd.args(["serve", "--config"])
            .arg(self.dir.join("wrun.toml"))
            .env("WRUN_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            while let Some(Ok(line)) = lines.next() {
                if let Some(addr) = line.strip_prefix("wrun serve: listening on https://") {
                    let _ = tx.send(addr.to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the daemon did not start; see the logs in {}",
                    self.dir.display()
                );
            }
        };
        Daemon {
            child: Some(child),
            addr: addr.parse().unwrap(),
            ca_pem: self.ca_pem.clone(),
        }
    }

    /// The whole audit log, through `wrun audit stream`, one entry a value.
    pub(crate) fn audit_entries(&self) -> Vec<Value> {
        self.ok(self.wrun().args(["audit", "stream"]))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Every log file the daemon wrote in this site.
    pub(crate) fn logs(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for entry in std::fs::read_dir(&self.dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") {
                all.extend(std::fs::read(path).unwrap());
            }
        }
        all
    }

    /// The database, its WAL and shared-memory files, concatenated.
    pub(crate) fn db_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.db().into_os_string();
            p.push(suffix);
            if let Ok(b) = std::fs::read(Path::new(&p)) {
                all.extend(b);
            }
        }
        all
    }
}

/// A running daemon.
pub(crate) struct Daemon {
    child: Option<Child>,
    /// Where it listens.
    pub(crate) addr: std::net::SocketAddr,
    ca_pem: String,
}

impl Daemon {
    /// A client on a new connection.
    pub(crate) async fn client(&self) -> Api {
        Api {
            client: DirectClient::connect(self.addr, "127.0.0.1", &self.ca_pem)
                .await
                .unwrap(),
            addr: self.addr,
            ca_pem: self.ca_pem.clone(),
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("the daemon was stopped").id()
    }

    /// Kills the process with SIGKILL (no chance to clean up).
    pub(crate) fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub(crate) fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().unwrap()
    }
}

/// The resident memory of process `pid` in KiB (`VmRSS` in
/// `/proc/<pid>/status`).
pub(crate) fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status:\n{status}"))
}

impl Drop for Site {
    /// Removes the site's directory (database, logs, bundles).
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An HTTPS client of the daemon on one kept-alive connection, opened again
/// when the daemon has closed it (it closes idle connections).
pub(crate) struct Api {
    client: DirectClient,
    addr: std::net::SocketAddr,
    ca_pem: String,
}

/// A response: status, headers and the body as JSON (`Null` if empty or
/// not JSON).
pub(crate) struct Reply {
    /// Status.
    pub(crate) status: StatusCode,
    /// Headers.
    pub(crate) headers: http::HeaderMap,
    /// Raw body.
    pub(crate) raw: Bytes,
    /// Body as JSON.
    pub(crate) json: Value,
}

impl Api {
    /// Sends a request with an optional bearer token and JSON body.
    pub(crate) async fn send(
        &mut self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header("content-type", "application/json");
                Bytes::from(serde_json::to_vec(b).unwrap())
            }
            None => Bytes::new(),
        };
        self.raw(req.body(Full::new(body)).unwrap()).await
    }

    /// Sends a prepared request.
    pub(crate) async fn raw(&mut self, req: Request<Full<Bytes>>) -> Reply {
        // A connection the daemon closed while a test was busy elsewhere (its
        // idle timeout) is opened again; the daemon's idle handling has tests
        // of its own.
        if !self.client.ready().await {
            self.client = DirectClient::connect(self.addr, "127.0.0.1", &self.ca_pem)
                .await
                .unwrap();
        }
        let (status, headers, raw) = self.client.send(req).await.unwrap();
        let json = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            raw,
            json,
        }
    }

    /// GET with a token.
    pub(crate) async fn get(&mut self, path: &str, token: &str) -> Reply {
        self.send(Method::GET, path, Some(token), None).await
    }

    /// POST JSON with a token.
    pub(crate) async fn post(&mut self, path: &str, token: &str, body: &Value) -> Reply {
        self.send(Method::POST, path, Some(token), Some(body)).await
    }

    /// PUT JSON with a token.
    pub(crate) async fn put(&mut self, path: &str, token: &str, body: &Value) -> Reply {
        self.send(Method::PUT, path, Some(token), Some(body)).await
    }

    /// Deploys a bundle file.
    pub(crate) async fn deploy(
        &mut self,
        workspace: &str,
        name: &str,
        token: &str,
        bundle: &Path,
    ) -> Reply {
        let req = Request::builder()
            .method(Method::PUT)
            .uri(format!("/v1/workspaces/{workspace}/recipes/{name}"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/gzip")
            .body(Full::new(Bytes::from(std::fs::read(bundle).unwrap())))
            .unwrap();
        self.raw(req).await
    }

    /// Deploys a bundle and creates a webhook for it in `environment`
    /// `prod`; returns the webhook creation's JSON (`id`, `url`, `secret`).
    pub(crate) async fn deploy_with_webhook(
        &mut self,
        workspace: &str,
        name: &str,
        token: &str,
        bundle: &Path,
        signed: bool,
    ) -> Value {
        let r = self.deploy(workspace, name, token, bundle).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        let r = self
            .post(
                &format!("/v1/workspaces/{workspace}/recipes/{name}/webhooks"),
                token,
                &serde_json::json!({ "environment": "prod", "signed": signed }),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
        r.json
    }

    /// Waits until a job has ended; returns its detail.
    pub(crate) async fn wait_job(&mut self, workspace: &str, id: &str, token: &str) -> Value {
        for _ in 0..600 {
            let r = self
                .get(&format!("/v1/workspaces/{workspace}/jobs/{id}"), token)
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.json);
            let state = r.json["state"].as_str().unwrap_or_default().to_string();
            if ["succeeded", "failed", "cancelled"].contains(&state.as_str()) {
                return r.json;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("job {id} did not end in 30 s");
    }
}

/// Writes a recipe directory holding `component` (from the built guests)
/// and the manifest `text`, and exports it as a bundle; returns its path.
pub(crate) fn bundle(site: &Site, name: &str, component: &str, text: &str) -> PathBuf {
    bundle_of(site, name, &guests_dir().join(component), text)
}

/// As [`bundle`], with the component at `component` (any language's build).
pub(crate) fn bundle_of(site: &Site, name: &str, component: &Path, text: &str) -> PathBuf {
    let dir = site.dir.join(format!("recipe-{name}"));
    std::fs::create_dir_all(dir.join("components")).unwrap();
    std::fs::copy(
        component,
        dir.join("components").join(component.file_name().unwrap()),
    )
    .unwrap();
    std::fs::write(dir.join("recipe.toml"), text).unwrap();
    let out = site.dir.join(format!("{name}.tgz"));
    site.ok(site
        .wrun()
        .args(["export"])
        .arg(dir.join("recipe.toml"))
        .arg("-o")
        .arg(&out));
    out
}

/// Writes a recipe of `steps` no-op steps (each passing `value` on) and
/// exports it as a bundle; returns the bundle's path.
pub(crate) fn noop_bundle(site: &Site, name: &str, steps: usize) -> PathBuf {
    let mut text = format!("[recipe]\nname = \"{name}\"\n\n[trigger]\nkind = \"webhook\"\n");
    for i in 0..steps {
        let input = if i == 0 {
            "{ value = \"{{ trigger.value }}\", step = 0 }".to_string()
        } else {
            format!(
                "{{ value = \"{{{{ steps.s{}.value }}}}\", step = {i} }}",
                i - 1
            )
        };
        text.push_str(&format!(
            "\n[[steps]]\nname = \"s{i}\"\ncomponent = \"components/noop.wasm\"\naction = \"noop\"\ninput = {input}\n"
        ));
    }
    bundle(site, name, "noop.wasm", &text)
}

/// Runs a `wrun` command with `stdin` as its input; returns (success,
/// stdout and stderr).
pub(crate) fn with_stdin(cmd: &mut Command, stdin: &str) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command may refuse before it reads its input.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

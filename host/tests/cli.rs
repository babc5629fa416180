//! End-to-end tests of the `wrun` binary: every command against loopback
//! HTTPS mocks, every error case a recipe author meets, and canary scans
//! of the database, bundles and output.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Output;

use assert_cmd::Command;
use serde_json::Value;
use wrun_tests::{MockServer, TestPki, assert_absent, canary, guests_dir};

/// A temporary author setup: database, key, two mock APIs, a recipe.
struct Setup {
    dir: PathBuf,
    github: MockServer,
    slack: MockServer,
    github_token: String,
    slack_token: String,
}

fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("wrun-cli-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Setup {
    async fn new() -> Setup {
        let dir = tempdir();
        let pki = TestPki::new(&["api.github.test", "slack.test"]);
        std::fs::write(dir.join("ca.pem"), pki.ca_pem()).unwrap();
        let github = MockServer::start(&pki).await;
        let slack = MockServer::start(&pki).await;
        let github_token = canary("github");
        let slack_token = canary("slack");
        github.set_expected_bearer(github_token.clone());
        slack.set_expected_bearer(slack_token.clone());
        let setup = Setup {
            dir,
            github,
            slack,
            github_token,
            slack_token,
        };
        setup.write_recipe("recipe", &setup.recipe_text());
        setup
    }

    fn db(&self) -> PathBuf {
        self.dir.join("wrun.db")
    }

    fn key(&self) -> PathBuf {
        self.dir.join("master.key")
    }

    /// The `wrun` binary with this setup's database, key and egress settings.
    fn wrun(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wrun"));
        cmd.current_dir(&self.dir)
            .env("WRUN_DB", self.db())
            .env("WRUN_KEY_FILE", self.key())
            .env("WRUN_CA_FILE", self.dir.join("ca.pem"))
            .env("WRUN_ALLOW_RANGES", "127.0.0.0/8")
            .env(
                "WRUN_RESOLVE",
                "api.github.test=127.0.0.1,slack.test=127.0.0.1",
            )
            .env(
                "WRUN_CACHE_DIR",
                std::env::temp_dir().join("wrun-cli-test-cache"),
            )
            .env("NO_COLOR", "1")
            .env("WRUN_HOME", wrun_tests::wrun_home())
            .env_remove("WRUN_MASTER_KEY")
            .env_remove("WRUN_WORKSPACE")
            .env_remove("RUST_LOG");
        cmd
    }

    fn recipe_text(&self) -> String {
        r##"[recipe]
name = "issue-to-slack"

[trigger]
kind = "webhook"

[[steps]]
name = "fetch-issue"
component = "components/github-issue.wasm"
action = "get-issue"
input = { owner = "{{ trigger.owner }}", repo = "{{ trigger.repo }}", number = "{{ trigger.number }}" }

[steps.grants]
net = ["api.github.test:*"]
secrets = { github = "github" }
env = ["github_api"]

[[steps]]
name = "notify"
component = "components/slack-post.wasm"
action = "post-message"
input = { channel = "{{ trigger.channel | default: \"#general\" }}", text = "{{ steps.fetch-issue.title }} by {{ steps.fetch-issue.author }}" }

[steps.grants]
net = ["slack.test:*"]
secrets = { slack = "slack" }
env = ["slack_api"]
"##
        .to_string()
    }

    /// Writes `DIR/NAME/recipe.toml` with the example components beside it.
    fn write_recipe(&self, name: &str, text: &str) -> PathBuf {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(dir.join("components")).unwrap();
        for (from, to) in [
            ("github_issue.wasm", "github-issue.wasm"),
            ("slack_post.wasm", "slack-post.wasm"),
        ] {
            std::fs::copy(guests_dir().join(from), dir.join("components").join(to)).unwrap();
        }
        std::fs::write(dir.join("recipe.toml"), text).unwrap();
        std::fs::write(
            dir.join("input.json"),
            r##"{"owner": "octo", "repo": "hello", "number": 7, "channel": "#triage"}"##,
        )
        .unwrap();
        dir.join("recipe.toml")
    }

    fn recipe(&self) -> PathBuf {
        self.dir.join("recipe").join("recipe.toml")
    }

    fn input(&self) -> PathBuf {
        self.dir.join("recipe").join("input.json")
    }

    /// Key, both connections (values through stdin) and both properties.
    fn bind_all(&self, workspace: &str) {
        self.ok(self
            .wrun()
            .args([
                "--workspace",
                workspace,
                "connection",
                "add",
                "github",
                "--host",
                "api.github.test:*",
            ])
            .write_stdin(self.github_token.clone()));
        self.ok(self
            .wrun()
            .args([
                "--workspace",
                workspace,
                "connection",
                "add",
                "slack",
                "--host",
                "slack.test:*",
            ])
            .write_stdin(self.slack_token.clone()));
        let github_api = format!("github_api=https://api.github.test:{}", self.github.port());
        let slack_api = format!("slack_api=https://slack.test:{}", self.slack.port());
        self.ok(self
            .wrun()
            .args(["--workspace", workspace, "env", "set", &github_api]));
        self.ok(self
            .wrun()
            .args(["--workspace", workspace, "env", "set", &slack_api]));
    }

    fn init(&self) {
        self.ok(self.wrun().args(["key", "init"]));
    }

    fn ok(&self, cmd: &mut Command) -> Output {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "command failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    /// Runs a command that must fail with `code`; returns stdout + stderr.
    fn fails(&self, cmd: &mut Command, code: i32) -> String {
        let out = cmd.output().unwrap();
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert_eq!(
            out.status.code(),
            Some(code),
            "expected exit {code}, got {}:\n{all}",
            out.status
        );
        all
    }

    fn secrets(&self) -> [&str; 2] {
        [&self.github_token, &self.slack_token]
    }

    /// The database and its WAL, as raw bytes.
    fn db_bytes(&self) -> Vec<u8> {
        let mut bytes = std::fs::read(self.db()).unwrap();
        if let Ok(wal) = std::fs::read(self.dir.join("wrun.db-wal")) {
            bytes.extend(wal);
        }
        bytes
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_author_adds_connections_checks_and_runs_a_recipe() {
    let s = Setup::new().await;
    s.init();
    s.bind_all("default");

    let list = s.ok(s.wrun().args(["connection", "list"]));
    let listed = text(&list.stdout);
    assert!(
        listed.contains("github")
            && listed.contains("api.github.test:*")
            && listed.contains("Bearer {}"),
        "{listed}"
    );
    let json_list: Value =
        serde_json::from_slice(&s.ok(s.wrun().args(["--json", "connection", "list"])).stdout)
            .unwrap();
    assert_eq!(json_list.as_array().unwrap().len(), 2);

    let check = s.ok(s.wrun().args(["check"]).arg(s.recipe()));
    assert!(text(&check.stdout).contains("ok"));

    let run = s.ok(s
        .wrun()
        .arg("run")
        .arg(s.recipe())
        .arg("--input")
        .arg(s.input()));
    let out = text(&run.stdout);
    assert!(
        out.contains("[1/2] fetch-issue ok") && out.contains("[2/2] notify ok"),
        "{out}"
    );
    assert!(out.contains("Issue 7 title"), "{out}");

    let json_run = s.ok(s
        .wrun()
        .args(["--json", "run"])
        .arg(s.recipe())
        .arg("--input")
        .arg(s.input()));
    let report: Value = serde_json::from_slice(&json_run.stdout).unwrap();
    assert_eq!(report["ok"], true);
    assert_eq!(report["steps"][1]["output"]["channel"], "#triage");

    // The upstreams got the values; nothing the author sees or the database
    // holds contains them.
    assert_eq!(
        s.github.requests()[0].header("authorization"),
        Some(format!("Bearer {}", s.github_token).as_str())
    );
    for output in [&run, &json_run, &list] {
        assert_absent(&output.stdout, &s.secrets(), "wrun output");
        assert_absent(&output.stderr, &s.secrets(), "wrun errors");
    }
    assert_absent(&s.db_bytes(), &s.secrets(), "the database file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_takes_its_components_from_the_compile_cache() {
    let s = Setup::new().await;
    s.init();
    s.bind_all("default");
    let cache = s.dir.join("cache");
    let mut stats = Vec::new();
    for _ in 0..2 {
        let out = s.ok(s
            .wrun()
            .env("WRUN_CACHE_DIR", &cache)
            .args(["--json", "run"])
            .arg(s.recipe())
            .arg("--input")
            .arg(s.input()));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        stats.push(report["compile_cache"].clone());
    }
    assert_eq!(stats[0]["misses"], 2, "{stats:?}");
    assert_eq!(
        stats[1]["misses"], 0,
        "the second run recompiled: {stats:?}"
    );
    assert_eq!(stats[1]["hits"], 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_values_never_come_from_the_command_line() {
    let s = Setup::new().await;
    s.init();
    let all = s.fails(
        s.wrun().args([
            "connection",
            "add",
            "x",
            "--host",
            "a.example.com",
            "--value",
            "secret",
        ]),
        2,
    );
    assert!(all.contains("--value"), "{all}");
    let all = s.fails(
        s.wrun()
            .args(["connection", "add", "x", "--host", "a.example.com"])
            .write_stdin(""),
        2,
    );
    assert!(all.contains("empty"), "{all}");
    let all = s.fails(
        s.wrun()
            .args(["connection", "add", "x", "--host", "a.example.com"])
            .write_stdin("abc"),
        2,
    );
    assert!(all.contains("too short"), "{all}");
    let all = s.fails(
        s.wrun()
            .args([
                "connection",
                "add",
                "x",
                "--host",
                "https://a.example.com",
                "--apply",
                "basic",
            ])
            .write_stdin("v"),
        2,
    );
    assert!(all.contains("without a scheme"), "{all}");
    let all = s.fails(
        s.wrun()
            .args([
                "connection",
                "add",
                "x",
                "--host",
                "a.example.com",
                "--apply",
                "cookie:x",
            ])
            .write_stdin("v"),
        2,
    );
    assert!(all.contains("placement"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessable_connection_values_are_refused_with_the_rule() {
    let s = Setup::new().await;
    s.init();
    let add = |name: &str, apply: &str, value: &str| {
        let mut cmd = s.wrun();
        cmd.args(["connection", "add", name, "--host", "a.example.com"])
            .args(["--apply", apply])
            .write_stdin(value.to_string());
        cmd
    };
    let bearer = "header:Authorization=Bearer {}";
    for (apply, weak) in [
        (bearer, "pin-4817"),
        (bearer, "password1234"),
        ("basic", "admin:password1234"),
        ("basic", "ghp_R8fK2pQ9vX3mZ7wR1tY5uJ6nB4cL0sD2eH8a"),
    ] {
        let all = s.fails(&mut add("weak", apply, weak), 2);
        assert!(
            all.contains("10^12 guesses") || all.contains("user:password"),
            "{weak}: {all}"
        );
        assert!(!all.contains(weak), "{all}");
    }
    let listed = text(&s.ok(s.wrun().args(["connection", "list"])).stdout);
    assert!(!listed.contains("weak"), "{listed}");
    s.ok(&mut add("strong", bearer, &canary("strong")));
    s.ok(&mut add(
        "svc",
        "basic",
        "svc-user:Zk9QwErTy8UiOpAs7DfGhJkL",
    ));
    // Rotating to a guessable value is refused as well.
    let all = s.fails(
        s.wrun()
            .args(["connection", "update", "strong"])
            .write_stdin("pin-4817"),
        2,
    );
    assert!(all.contains("10^12 guesses"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environments_hold_their_own_properties_and_bindings() {
    let s = Setup::new().await;
    s.init();
    s.bind_all("default");
    s.ok(s.wrun().args([
        "env",
        "set",
        "--env",
        "prod",
        "github_api=https://prod.example",
    ]));
    s.ok(s
        .wrun()
        .args(["env", "bind", "--env", "prod", "github", "github-prod"]));
    let show: Value = serde_json::from_slice(
        &s.ok(s.wrun().args(["--json", "env", "show", "--env", "prod"]))
            .stdout,
    )
    .unwrap();
    assert_eq!(show["properties"]["github_api"], "https://prod.example");
    assert_eq!(show["bindings"]["github"], "github-prod");
    let dev: Value =
        serde_json::from_slice(&s.ok(s.wrun().args(["--json", "env", "show"])).stdout).unwrap();
    assert!(
        dev["properties"]["github_api"]
            .as_str()
            .unwrap()
            .starts_with("https://api.github.test:")
    );
    // prod lacks slack_api and its github binding points nowhere: the same
    // recipe is refused there, and runs in dev.
    let all = s.fails(
        s.wrun()
            .args(["run", "--env", "prod"])
            .arg(s.recipe())
            .arg("--input")
            .arg(s.input()),
        2,
    );
    assert!(
        all.contains("github-prod") && all.contains("property slack_api"),
        "{all}"
    );
    s.ok(s
        .wrun()
        .arg("run")
        .arg(s.recipe())
        .arg("--input")
        .arg(s.input()));
    s.ok(s.wrun().args(["env", "unset", "slack_api"]));
    let all = s.fails(
        s.wrun()
            .arg("run")
            .arg(s.recipe())
            .arg("--input")
            .arg(s.input()),
        2,
    );
    assert!(all.contains("property slack_api"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_rotates_and_rm_removes_connections() {
    let s = Setup::new().await;
    s.init();
    s.bind_all("default");
    let new_token = canary("rotated");
    s.github.set_expected_bearer(new_token.clone());
    s.ok(s
        .wrun()
        .args(["connection", "update", "github"])
        .write_stdin(new_token.clone()));
    let listed = text(&s.ok(s.wrun().args(["connection", "list"])).stdout);
    assert!(listed.contains("rotated"), "{listed}");
    s.ok(s
        .wrun()
        .arg("run")
        .arg(s.recipe())
        .arg("--input")
        .arg(s.input()));
    s.ok(s.wrun().args(["connection", "rm", "slack"]));
    let all = s.fails(
        s.wrun()
            .arg("run")
            .arg(s.recipe())
            .arg("--input")
            .arg(s.input()),
        2,
    );
    assert!(all.contains("connection slack"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_keys_and_databases_are_clear_errors() {
    let s = Setup::new().await;
    s.init();
    s.bind_all("default");
    let before = s.db_bytes();

    // Another key.
    let other = s.dir.join("other.key");
    s.ok(s
        .wrun()
        .args(["--key-file"])
        .arg(&other)
        .args(["--db"])
        .arg(s.dir.join("other.db"))
        .args(["key", "init"]));
    let all = s.fails(
        s.wrun()
            .args(["--key-file"])
            .arg(&other)
            .arg("run")
            .arg(s.recipe())
            .arg("--input")
            .arg(s.input()),
        2,
    );
    assert!(all.contains("master key does not match"), "{all}");
    // No key.
    let all = s.fails(
        s.wrun()
            .env_remove("WRUN_KEY_FILE")
            .arg("run")
            .arg(s.recipe())
            .arg("--input")
            .arg(s.input()),
        2,
    );
    assert!(all.contains("no master key"), "{all}");
    // A missing database.
    let all = s.fails(
        s.wrun()
            .env("WRUN_DB", s.dir.join("nope.db"))
            .args(["connection", "list"]),
        2,
    );
    assert!(all.contains("no wrun database at"), "{all}");
    assert!(!s.dir.join("nope.db").exists());
    // A file that is not a database is not touched.
    let bogus = s.dir.join("bogus.db");
    std::fs::write(&bogus, b"this is not sqlite, and it must stay this way").unwrap();
    let all = s.fails(
        s.wrun().env("WRUN_DB", &bogus).args(["connection", "list"]),
        2,
    );
    assert!(
        all.to_lowercase().contains("not a wrun database")
            || all.contains("not a SQLite")
            || all.contains("database"),
        "{all}"
    );
    assert_eq!(
        std::fs::read(&bogus).unwrap(),
        b"this is not sqlite, and it must stay this way"
    );
    // Nothing changed, and the right key still works.
    assert_eq!(s.db_bytes(), before);
    s.ok(s
        .wrun()
        .arg("run")
        .arg(s.recipe())
        .arg("--input")
        .arg(s.input()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_ciphertext_fails_authentication_without_leaking() {
    let s = Setup::new().await;
    s.init();
    s.bind_all("default");
    // Move slack's sealed value onto github's record.
    let db = rusqlite::Connection::open(s.db()).unwrap();
    db.execute(
        "UPDATE connections SET sealed = (SELECT sealed FROM connections WHERE name = 'slack') WHERE name = 'github'",
        [],
    )
    .unwrap();
    drop(db);
    let out = s
        .wrun()
        .arg("run")
        .arg(s.recipe())
        .arg("--input")
        .arg(s.input())
        .output()
        .unwrap();
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("failed authentication"), "{all}");
    assert_absent(all.as_bytes(), &s.secrets(), "error output");
    assert!(s.github.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_every_problem_with_its_location() {
    let s = Setup::new().await;
    s.init();
    let broken = s
        .recipe_text()
        .replace(
            "kind = \"webhook\"",
            "kind = \"webhook\"\ncolour = \"blue\"",
        )
        .replace("{{ trigger.owner }}", "{{ steps.notify.title }}")
        .replace(
            "env = [\"slack_api\"]",
            "env = [\"slack_api\"]\ntimeout = \"soon\"",
        );
    let path = s.write_recipe("broken", &broken);
    let all = s.fails(s.wrun().arg("check").arg(&path), 1);
    assert!(all.contains("colour"), "{all}");
    assert!(
        all.contains("input.owner") && all.contains("notify"),
        "{all}"
    );
    assert!(all.contains("timeout"), "{all}");
    assert!(all.matches("error").count() >= 3, "{all}");

    // Grants too narrow for the components, and nothing bound yet.
    let narrow = s.recipe_text().replace("env = [\"github_api\"]\n", "");
    let path = s.write_recipe("narrow", &narrow);
    let all = s.fails(s.wrun().arg("check").arg(&path), 1);
    assert!(
        all.contains("fetch-issue")
            && all.contains("wrun:recipe/properties")
            && all.contains("`env` grant"),
        "{all}"
    );
    assert!(
        all.contains("connection `github` is not available"),
        "{all}"
    );
    assert!(all.contains("property `slack_api` is not set"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_fails_the_run_with_a_clear_message() {
    let s = Setup::new().await;
    s.init();
    s.bind_all("default");
    let input = s.dir.join("missing-channel.json");
    std::fs::write(
        &input,
        r##"{"owner": "octo", "repo": "hello", "number": 7, "channel": "#missing"}"##,
    )
    .unwrap();
    let all = s.fails(
        s.wrun()
            .arg("run")
            .arg(s.recipe())
            .arg("--input")
            .arg(&input),
        1,
    );
    assert!(
        all.contains("[2/2] notify failed") && all.contains("channel_not_found"),
        "{all}"
    );
    // A pill that points at a field the trigger lacks.
    std::fs::write(&input, r#"{"owner": "octo", "repo": "hello"}"#).unwrap();
    let all = s.fails(
        s.wrun()
            .arg("run")
            .arg(s.recipe())
            .arg("--input")
            .arg(&input),
        1,
    );
    assert!(
        all.contains("input.number") && all.contains("trigger.number"),
        "{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_import_bind_and_run_round_trip_without_credentials() {
    let s = Setup::new().await;
    s.init();
    s.bind_all("default");
    let bundle = s.dir.join("issue-to-slack.wrun");
    s.ok(s
        .wrun()
        .arg("export")
        .arg(s.recipe())
        .arg("-o")
        .arg(&bundle));

    // The bundle carries no value: neither in its bytes nor unpacked.
    let raw = std::fs::read(&bundle).unwrap();
    assert_absent(&raw, &s.secrets(), "the bundle");
    let mut unpacked = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&raw[..]), &mut unpacked).unwrap();
    assert_absent(&unpacked, &s.secrets(), "the unpacked bundle");

    // Another workspace imports it: nothing is bound there yet.
    let into = s.dir.join("imported");
    let out = s.ok(s
        .wrun()
        .args(["--workspace", "team-b", "import"])
        .arg(&bundle)
        .arg("--into")
        .arg(&into));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        all.contains("connection github") && all.contains("property slack_api"),
        "{all}"
    );
    let all = s.fails(
        s.wrun()
            .args(["--workspace", "team-b", "run"])
            .arg(into.join("recipe.toml"))
            .arg("--input")
            .arg(s.input()),
        2,
    );
    assert!(
        all.contains("cannot run") && all.contains("connection github"),
        "{all}"
    );

    // Bind under other names through environment bindings, then run.
    s.ok(s
        .wrun()
        .args([
            "--workspace",
            "team-b",
            "connection",
            "add",
            "gh-b",
            "--host",
            "api.github.test:*",
        ])
        .write_stdin(s.github_token.clone()));
    s.ok(s
        .wrun()
        .args([
            "--workspace",
            "team-b",
            "connection",
            "add",
            "slack-b",
            "--host",
            "slack.test:*",
        ])
        .write_stdin(s.slack_token.clone()));
    s.ok(s
        .wrun()
        .args(["--workspace", "team-b", "env", "bind", "github", "gh-b"]));
    s.ok(s
        .wrun()
        .args(["--workspace", "team-b", "env", "bind", "slack", "slack-b"]));
    s.ok(s
        .wrun()
        .args(["--workspace", "team-b", "env", "set"])
        .arg(format!(
            "github_api=https://api.github.test:{}",
            s.github.port()
        )));
    s.ok(s
        .wrun()
        .args(["--workspace", "team-b", "env", "set"])
        .arg(format!("slack_api=https://slack.test:{}", s.slack.port())));
    let run = s.ok(s
        .wrun()
        .args(["--workspace", "team-b", "run"])
        .arg(into.join("recipe.toml"))
        .arg("--input")
        .arg(s.input()));
    assert!(text(&run.stdout).contains("recipe `issue-to-slack` ok"));

    // An imported recipe whose component was changed is refused.
    let component = into.join("components").join("fetch-issue.wasm");
    let mut bytes = std::fs::read(&component).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&component, bytes).unwrap();
    let all = s.fails(
        s.wrun()
            .args(["--workspace", "team-b", "run"])
            .arg(into.join("recipe.toml"))
            .arg("--input")
            .arg(s.input()),
        2,
    );
    assert!(all.contains("does not match"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_bundle_is_refused_and_leaves_nothing() {
    let s = Setup::new().await;
    s.init();
    let bundle = s.dir.join("b.wrun");
    s.ok(s
        .wrun()
        .arg("export")
        .arg(s.recipe())
        .arg("-o")
        .arg(&bundle));
    // Rebuild the archive with one component byte flipped.
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(&bundle).unwrap(),
    ));
    let tampered = s.dir.join("tampered.wrun");
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        std::fs::File::create(&tampered).unwrap(),
        flate2::Compression::default(),
    ));
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if name.ends_with("notify.wasm") {
            data[100] ^= 0xff;
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder.append_data(&mut header, &name, &data[..]).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
    let into = s.dir.join("should-not-exist");
    let all = s.fails(
        s.wrun()
            .arg("import")
            .arg(&tampered)
            .arg("--into")
            .arg(&into),
        2,
    );
    assert!(all.contains("does not match the lock"), "{all}");
    assert!(!into.exists());
    let all = s.fails(
        s.wrun()
            .arg("import")
            .arg(s.recipe())
            .arg("--into")
            .arg(&into),
        2,
    );
    assert!(all.contains("not a") || all.contains("bundle"), "{all}");
    assert!(!into.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_keeps_every_connection_readable() {
    let s = Setup::new().await;
    s.init();
    s.bind_all("default");
    s.bind_all("team-b");
    let new_key = s.dir.join("new.key");
    let out = s.ok(s
        .wrun()
        .args(["key", "rotate", "--new-key-file"])
        .arg(&new_key));
    assert!(
        text(&out.stdout).contains("re-wrapped 2"),
        "{}",
        text(&out.stdout)
    );
    let all = s.fails(
        s.wrun()
            .arg("run")
            .arg(s.recipe())
            .arg("--input")
            .arg(s.input()),
        2,
    );
    assert!(all.contains("master key does not match"), "{all}");
    for ws in ["default", "team-b"] {
        s.ok(s
            .wrun()
            .env("WRUN_KEY_FILE", &new_key)
            .args(["--workspace", ws, "run"])
            .arg(s.recipe())
            .arg("--input")
            .arg(s.input()));
    }
    assert_absent(&s.db_bytes(), &s.secrets(), "the database after rotation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_file_and_database_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new().await;
    s.init();
    for path in [s.key(), s.db()] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    let all = s.fails(s.wrun().args(["key", "init"]), 2);
    assert!(all.contains("exists"), "{all}");
}

/// A scaffolded project builds from the toolkit inside the binary: no file
/// of it names the repository's SDKs or WIT, which an installed `wrun` on
/// another machine would not have.
fn assert_nothing_points_into_the_checkout(project: &Path) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .canonicalize()
        .unwrap();
    let forbidden = [repo.join("guests"), repo.join("wit")].map(|p| p.display().to_string());
    let mut stack = vec![project.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned();
            for f in &forbidden {
                assert!(!text.contains(f.as_str()), "{} names {f}", path.display());
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_scaffolds_a_step_that_builds_and_checks() {
    let s = Setup::new().await;
    s.init();
    s.ok(s.wrun().args(["new", "status-check"]));
    let recipe = s.dir.join("status-check").join("recipe.toml");
    assert!(recipe.exists());
    assert_nothing_points_into_the_checkout(&s.dir.join("status-check"));
    let target = std::env::temp_dir().join("wrun-cli-test-build");
    s.ok(s
        .wrun()
        .env("CARGO_TARGET_DIR", &target)
        .arg("build")
        .arg(&recipe));
    assert!(
        s.dir
            .join("status-check/components/status-check.wasm")
            .exists()
    );
    // The scaffold needs a connection and a property to be bound.
    let all = s.fails(s.wrun().arg("check").arg(&recipe), 1);
    assert!(
        all.contains("connection `api-token`") && all.contains("property `api_base`"),
        "{all}"
    );
    let all = s.fails(s.wrun().args(["new", "Bad Name"]), 2);
    assert!(all.contains("not a valid name"), "{all}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_scaffolds_javascript_and_python_steps_that_build_and_check() {
    let s = Setup::new().await;
    s.init();
    for (name, lang) in [("js-check", "js"), ("py-check", "python")] {
        s.ok(s.wrun().args(["new", name, "--lang", lang]));
        assert_nothing_points_into_the_checkout(&s.dir.join(name));
        let recipe = s.dir.join(name).join("recipe.toml");
        s.ok(s.wrun().arg("build").arg(&recipe));
        assert!(
            s.dir
                .join(name)
                .join(format!("components/{name}.wasm"))
                .exists(),
            "{lang}"
        );
        // The component, its grants and its action check out; only the
        // connection and the property are still to be bound.
        let all = s.fails(s.wrun().arg("check").arg(&recipe), 1);
        assert!(
            all.contains("connection `api-token`") && all.contains("property `api_base`"),
            "{lang}: {all}"
        );
        assert!(
            !all.contains("has no action") && !all.contains("grant"),
            "{lang}: {all}"
        );
    }
    let all = s.fails(s.wrun().args(["new", "x", "--lang", "cobol"]), 2);
    assert!(all.contains("cobol"), "{all}");
}

/// JavaScript and Python steps that call nothing of the host: built from
/// a scaffold, they load, check and run with no grant at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaffolded_steps_that_use_nothing_need_no_grant() {
    let s = Setup::new().await;
    s.init();
    for (name, lang) in [("plain-js", "js"), ("plain-py", "python")] {
        s.ok(s.wrun().args(["new", name, "--lang", lang]));
        let dir = s.dir.join(name);
        wrun_tests::greet_project(&dir, name, lang);
        let recipe = dir.join("recipe.toml");
        s.ok(s.wrun().arg("build").arg(&recipe));
        // No grant at all: the component imports neither HTTP nor secrets
        // nor properties, so it loads, checks and runs.
        s.ok(s.wrun().arg("check").arg(&recipe));
        let out = s.ok(s
            .wrun()
            .arg("run")
            .arg(&recipe)
            .arg("--input")
            .arg(dir.join("input.json"))
            .arg("--json"));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            report["steps"][0]["output"]["hello"], "Ada",
            "{lang}: {report}"
        );
    }
}

/// A Python step that reaches `wrun_sdk.http` in a way the build cannot
/// see is built without HTTP: it loads with no grant, and its request fails
/// with an error that says why and what to do, not a missing import.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_step_built_without_http_says_so() {
    let s = Setup::new().await;
    s.init();
    let py = "import importlib\n\nfrom wrun_sdk import Actions, action\n\n__all__ = [\"Actions\"]\n\n\n\
              @action(\"fetch\")\ndef fetch(data):\n    http = importlib.import_module(\"wrun_sdk.\" + \"http\")\n    return http.get(\"https://api.github.test/\").json()\n";
    s.ok(s.wrun().args(["new", "hidden-http", "--lang", "python"]));
    let dir = s.dir.join("hidden-http");
    std::fs::write(dir.join("steps/hidden-http/step.py"), py).unwrap();
    std::fs::write(
        dir.join("recipe.toml"),
        "[recipe]\nname = \"hidden-http\"\n\n[[steps]]\nname = \"fetch\"\ncomponent = \"components/hidden-http.wasm\"\nbuild = \"steps/hidden-http\"\naction = \"fetch\"\ninput = {}\n",
    )
    .unwrap();
    let recipe = dir.join("recipe.toml");
    s.ok(s.wrun().arg("build").arg(&recipe));
    s.ok(s.wrun().arg("check").arg(&recipe));
    let all = s.fails(s.wrun().arg("run").arg(&recipe), 1);
    assert!(
        all.contains("built without wasi:http") && all.contains("`net` grant"),
        "{all}"
    );
}

#[test]
fn the_readme_main_job_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new("bash")
        .arg(root.join("guests/recipes/run-examples.sh"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("recipe `issue-to-slack` ok") && all.contains("recipe `issue-triage` ok"),
        "{all}"
    );
    assert!(all.contains("[3/3] audit ok"), "{all}");
}

#[test]
fn paths_are_what_the_tests_expect() {
    assert!(guests_dir().join("github_issue.wasm").exists());
    assert!(Path::new(env!("CARGO_BIN_EXE_wrun")).exists());
}

/// Sends a plain HTTP GET of `path` to 127.0.0.1:`port`; returns the status.
async fn loopback_get(port: u16, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let head = text(&answer);
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_connections_are_added_authorised_on_loopback_and_used_by_run() {
    use std::io::{BufRead as _, BufReader, Write as _};
    use wrun_tests::oauth::OAuthServer;

    let dir = tempdir();
    let pki = TestPki::new(&["oauth.test"]);
    std::fs::write(dir.join("ca.pem"), pki.ca_pem()).unwrap();
    let client_secret = canary("oauth-client");
    let server = OAuthServer::start(&pki, "wrun-cli", &client_secret).await;
    let port = server.port();
    let base = format!("https://oauth.test:{port}");
    let wrun = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_wrun"));
        cmd.current_dir(&dir)
            .env("WRUN_DB", dir.join("wrun.db"))
            .env("WRUN_KEY_FILE", dir.join("master.key"))
            .env("WRUN_CA_FILE", dir.join("ca.pem"))
            .env("WRUN_ALLOW_RANGES", "127.0.0.0/8")
            .env("WRUN_RESOLVE", "oauth.test=127.0.0.1")
            .env(
                "WRUN_CACHE_DIR",
                std::env::temp_dir().join("wrun-cli-test-cache"),
            )
            .env("NO_COLOR", "1")
            .env_remove("WRUN_MASTER_KEY")
            .env_remove("WRUN_WORKSPACE")
            .env_remove("RUST_LOG");
        cmd
    };
    let run_ok = |cmd: &mut std::process::Command, stdin: &str| -> String {
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
        assert!(out.status.success(), "{cmd:?}: {all}");
        all
    };
    let mut outputs = Vec::new();
    outputs.push(run_ok(wrun().args(["key", "init"]), ""));

    // Client credentials: the first token is fetched when it is added.
    let host = format!("oauth.test:{port}");
    let token_url = format!("{base}/token");
    let added = run_ok(
        wrun().args([
            "connection",
            "add",
            "api",
            "--host",
            &host,
            "--oauth2",
            "client-credentials",
            "--token-url",
            &token_url,
            "--client-id",
            "wrun-cli",
            "--scope",
            "read",
        ]),
        &client_secret,
    );
    assert!(added.contains("connection `api` has a token"), "{added}");
    assert_eq!(server.token_calls().client_credentials, 1);
    outputs.push(added);

    // A step that calls the provider's API with the connection.
    let project = dir.join("me");
    std::fs::create_dir_all(project.join("components")).unwrap();
    std::fs::copy(
        guests_dir().join("hostile.wasm"),
        project.join("components/hostile.wasm"),
    )
    .unwrap();
    let recipe = |secret: &str| {
        format!(
            "[recipe]\nname = \"me\"\n\n[[steps]]\nname = \"call\"\ncomponent = \"components/hostile.wasm\"\naction = \"auth\"\ninput = {{ url = \"{base}/api/me\", secret = \"{secret}\" }}\n\n[steps.grants]\nnet = [\"{host}\"]\nsecrets = {{ {secret} = \"{secret}\" }}\nenv = [\"unused\"]\n"
        )
    };
    std::fs::write(project.join("recipe.toml"), recipe("api")).unwrap();
    run_ok(wrun().args(["env", "set", "unused=1"]), "");
    let run = run_ok(
        wrun()
            .args(["--json", "run"])
            .arg(project.join("recipe.toml")),
        "",
    );
    assert!(run.contains("\"status\":200"), "{run}");
    assert_eq!(server.api_calls(), (1, 0));
    outputs.push(run);

    // Authorization code: the command prints the provider's URL, waits on
    // a loopback port, refuses a forged redirect and takes the real one.
    let authorize_url = format!("{base}/authorize");
    let mut child = wrun()
        .args([
            "connection",
            "add",
            "user",
            "--host",
            &host,
            "--oauth2",
            "authorization-code",
            "--token-url",
            &token_url,
            "--authorize-url",
            &authorize_url,
            "--client-id",
            "wrun-cli",
            "--scope",
            "offline_access",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(client_secret.as_bytes())
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut url = String::new();
    while !url.starts_with("https://") {
        url.clear();
        assert!(stdout.read_line(&mut url).unwrap() > 0, "no URL printed");
    }
    let location = server.authorize(url.trim()).await.unwrap();
    let callback = location
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("{location} is not a loopback redirect"));
    let (cb_port, path) = callback.split_once('/').unwrap();
    let cb_port: u16 = cb_port.parse().unwrap();
    let forged = "/callback?code=stolen&state=forged-0123456789abcdef";
    assert_eq!(loopback_get(cb_port, forged).await, 400);
    assert_eq!(loopback_get(cb_port, &format!("/{path}")).await, 200);
    let out = child.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let all = format!("{url}{rest}{}", text(&out.stderr));
    assert!(out.status.success(), "{all}");
    assert!(all.contains("connection `user` is authorised"), "{all}");
    assert!(all.contains("unknown state was refused"), "{all}");
    assert_eq!(server.token_calls().authorization_code, 1);
    outputs.push(all);
    std::fs::write(project.join("recipe.toml"), recipe("user")).unwrap();
    let run = run_ok(
        wrun()
            .args(["--json", "run"])
            .arg(project.join("recipe.toml")),
        "",
    );
    assert!(run.contains("\"status\":200"), "{run}");
    outputs.push(run);
    let list = run_ok(wrun().args(["connection", "list"]), "");
    assert_eq!(list.matches(", oauth2 ready").count(), 2, "{list}");
    outputs.push(list);
    let audit = run_ok(wrun().args(["audit", "stream"]), "");
    for action in [
        "connection.oauth.put",
        "connection.oauth.authorize",
        "connection.oauth.authorized",
        "connection.oauth.refresh",
    ] {
        assert!(
            audit.contains(&format!("\"{action}\"")),
            "{action}: {audit}"
        );
    }
    assert!(audit.contains("\"outcome\":\"denied\""), "{audit}");
    outputs.push(audit);

    let mut needles = vec![client_secret.clone()];
    needles.extend(server.issued_access_tokens());
    needles.extend(server.issued_refresh_tokens());
    let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
    let mut db = std::fs::read(dir.join("wrun.db")).unwrap();
    if let Ok(wal) = std::fs::read(dir.join("wrun.db-wal")) {
        db.extend(wal);
    }
    assert_absent(&db, &needles, "the database");
    assert_absent(outputs.join("\n").as_bytes(), &needles, "wrun's output");
    let _ = std::fs::remove_dir_all(&dir);
}

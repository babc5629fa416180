//! `wrun run` of the three-step example recipe (`issue-triage`: fetch an
//! issue, post it, post an audit line) against the loopback mock APIs, as a
//! whole process, split into its parts:
//!
//! - `process_start`: `wrun --version`, the floor of any command;
//! - `wrun_run_process`: the whole `wrun run` (open the store, decrypt the
//!   connections, build the engine, load both components from the warm
//!   compile cache, run three steps, print);
//! - `load_cache_hit`: a fresh engine loading the two components from the
//!   on-disk cache (what each process pays instead of compiling);
//! - `run_in_process`: the three steps in an already loaded recipe (fresh
//!   instance per step, HTTPS through the egress, data pills).
//!
//! The bench builds the release `wrun` binary first. Run with
//! `cargo bench -p wrun-benches --bench recipe`.

use std::hint::black_box;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use criterion::{Criterion, criterion_main};
use serde_json::json;
use wrun_runtime::egress::StaticResolver;
use wrun_runtime::manifest::Manifest;
use wrun_runtime::recipe::Recipe;
use wrun_runtime::{Connection, Engine, JobOptions, Placement, SecretValue, StaticConnections};
use wrun_tests::{MockServer, TestPki};

const GITHUB_TOKEN: &str = "ghp_bench_0123456789abcdefghijklmnopqrstuv";
const SLACK_TOKEN: &str = "xoxb-bench-0123456789-abcdefghijklmnop";

/// The release `wrun` binary next to this bench's own executable, or the
/// one `WRUN_BENCH_WRUN` names (to compare two builds back to back).
fn wrun_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("WRUN_BENCH_WRUN") {
        return PathBuf::from(bin);
    }
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-q", "-p", "wrun", "--bin", "wrun"])
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building the release wrun binary failed");
    let exe = std::env::current_exe().expect("bench executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/release/deps")
        .join("wrun")
}

struct Fixture {
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl Fixture {
    fn recipe(&self) -> PathBuf {
        self.dir.join("issue-triage").join("recipe.toml")
    }

    fn input(&self) -> PathBuf {
        self.dir.join("issue-triage").join("input.json")
    }

    fn wrun(&self, bin: &Path) -> Command {
        let mut cmd = Command::new(bin);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        cmd
    }
}

/// A store with both connections and properties, and the recipe with its
/// components, in a temporary directory.
fn fixture(bin: &Path, github_port: u16, slack_port: u16, ca: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("wrun-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guests/recipes");
    let guests = wrun_tests::guests_dir();
    std::fs::create_dir_all(dir.join("issue-to-slack/components")).expect("dirs");
    std::fs::create_dir_all(dir.join("issue-triage")).expect("dirs");
    for (from, to) in [
        ("github_issue.wasm", "github-issue.wasm"),
        ("slack_post.wasm", "slack-post.wasm"),
    ] {
        std::fs::copy(
            guests.join(from),
            dir.join("issue-to-slack/components").join(to),
        )
        .expect("component");
    }
    for file in ["recipe.toml", "input.json"] {
        std::fs::copy(
            repo.join("issue-triage").join(file),
            dir.join("issue-triage").join(file),
        )
        .expect("recipe");
    }
    std::fs::write(dir.join("ca.pem"), ca).expect("ca");
    let fixture = Fixture {
        env: vec![
            ("WRUN_DB", dir.join("wrun.db").display().to_string()),
            (
                "WRUN_KEY_FILE",
                dir.join("master.key").display().to_string(),
            ),
            ("WRUN_CA_FILE", dir.join("ca.pem").display().to_string()),
            ("WRUN_ALLOW_RANGES", "127.0.0.0/8".into()),
            (
                "WRUN_RESOLVE",
                "api.github.test=127.0.0.1,slack.test=127.0.0.1".into(),
            ),
            ("WRUN_CACHE_DIR", dir.join("cache").display().to_string()),
        ],
        dir,
    };
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut cmd = fixture.wrun(bin);
        cmd.args(args).stdin(Stdio::piped());
        let mut child = cmd.spawn().expect("wrun starts");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("stdin");
        }
        drop(child.stdin.take());
        assert!(
            child.wait().expect("wrun ends").success(),
            "wrun {args:?} failed"
        );
    };
    run(&["key", "init"], None);
    run(
        &["connection", "add", "github", "--host", "api.github.test:*"],
        Some(GITHUB_TOKEN),
    );
    run(
        &["connection", "add", "slack", "--host", "slack.test:*"],
        Some(SLACK_TOKEN),
    );
    run(
        &[
            "env",
            "set",
            &format!("github_api=https://api.github.test:{github_port}"),
        ],
        None,
    );
    run(
        &[
            "env",
            "set",
            &format!("slack_api=https://slack.test:{slack_port}"),
        ],
        None,
    );
    // Warm the compile cache.
    run(
        &[
            "run",
            &fixture.recipe().display().to_string(),
            "--input",
            &fixture.input().display().to_string(),
        ],
        None,
    );
    fixture
}

fn recipe_run(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pki = TestPki::new(&["api.github.test", "slack.test"]);
    let github = rt.block_on(MockServer::start(&pki));
    let slack = rt.block_on(MockServer::start(&pki));
    github.set_expected_bearer(GITHUB_TOKEN);
    slack.set_expected_bearer(SLACK_TOKEN);
    let bin = wrun_binary();
    let fx = fixture(&bin, github.port(), slack.port(), &pki.ca_pem());

    let mut group = c.benchmark_group("recipe_3_steps");
    group.sample_size(20);
    group.bench_function("process_start", |b| {
        b.iter(|| {
            let status = fx.wrun(&bin).arg("--version").status().expect("wrun");
            assert!(status.success());
        })
    });
    group.bench_function("wrun_run_process", |b| {
        b.iter(|| {
            let status = fx
                .wrun(&bin)
                .arg("run")
                .arg(fx.recipe())
                .arg("--input")
                .arg(fx.input())
                .status()
                .expect("wrun");
            assert!(status.success());
        })
    });

    // In process, with the same engine settings as the CLI.
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let build_engine = || {
        Engine::builder()
            .cache_dir(fx.dir.join("cache"))
            .add_ca_pem(pki.ca_pem().as_bytes())
            .expect("ca")
            .allow_range("127.0.0.0/8".parse().expect("net"))
            .resolver(Arc::new(
                StaticResolver::new()
                    .with("api.github.test", [loopback])
                    .with("slack.test", [loopback]),
            ))
            .build()
            .expect("engine")
    };
    let components = [
        std::fs::read(fx.dir.join("issue-to-slack/components/github-issue.wasm"))
            .expect("component"),
        std::fs::read(fx.dir.join("issue-to-slack/components/slack-post.wasm")).expect("component"),
    ];
    group.bench_function("load_cache_hit", |b| {
        b.iter(|| {
            let engine = build_engine();
            for bytes in &components {
                black_box(engine.load("c", bytes).expect("load"));
            }
        })
    });

    let engine = build_engine();
    let manifest =
        Manifest::parse(&std::fs::read_to_string(fx.recipe()).expect("recipe")).expect("manifest");
    let base = fx.recipe().parent().expect("dir").to_path_buf();
    let recipe = Recipe::load(&engine, manifest, |p| std::fs::read(base.join(p))).expect("recipe");
    let connections = StaticConnections::new()
        .with(
            Connection::new(
                "github",
                SecretValue::new(GITHUB_TOKEN),
                ["api.github.test:*"],
                Placement::bearer(),
            )
            .expect("connection"),
        )
        .with(
            Connection::new(
                "slack",
                SecretValue::new(SLACK_TOKEN),
                ["slack.test:*"],
                Placement::bearer(),
            )
            .expect("connection"),
        );
    let connections = Arc::new(connections);
    let trigger = json!({ "owner": "octo", "repo": "hello", "number": 7 });
    group.bench_function("run_in_process", |b| {
        b.to_async(&rt).iter(|| async {
            let job = engine.job(
                JobOptions::new("bench", "issue-triage")
                    .connections(connections.clone())
                    .property(
                        "github_api",
                        format!("https://api.github.test:{}", github.port()),
                    )
                    .property("slack_api", format!("https://slack.test:{}", slack.port())),
            );
            let report = recipe.run(&job, &trigger, |_| {}).await;
            assert!(report.ok);
            black_box(report);
        })
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&fx.dir);
}

/// Runs the benchmarks of this file; written out instead of
/// `criterion_group!`, whose generated function has no doc comment.
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    recipe_run(&mut c);
}

criterion_main!(benches);

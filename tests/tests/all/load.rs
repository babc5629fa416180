//! Loading components and binding them to steps: every import is checked
//! against the step's grants before anything runs.

use std::time::Duration;

use serde_json::json;
use wrun_runtime::{Error, Grants};

use crate::common::*;

#[tokio::test]
async fn bytes_that_are_not_a_component_are_refused() {
    let env = TestEnv::new().await;
    for (bytes, what) in [
        (b"not wasm at all".to_vec(), "garbage"),
        (b"\0asm\x01\0\0\0".to_vec(), "core module"),
        (guest_bytes("noop")[..100].to_vec(), "truncated component"),
    ] {
        match env.engine.load("bad", &bytes) {
            Err(Error::Compile { component, reason }) => {
                assert_eq!(component, "bad");
                assert!(!reason.is_empty(), "{what}");
            }
            other => panic!("{what}: expected a compile error, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn each_import_needs_its_grant() {
    let env = TestEnv::new().await;
    let component = env.load("github-issue");
    assert!(
        component
            .imports()
            .iter()
            .any(|i| i.starts_with("wrun:recipe/secrets@"))
    );
    let full = || {
        Grants::builder()
            .net(env.host(API))
            .secret("github", "api-token")
            .env("github_api")
    };
    env.engine
        .step("fetch", &component, full().build().unwrap())
        .unwrap();

    let cases = [
        (
            Grants::builder()
                .secret("github", "api-token")
                .env("github_api"),
            "wasi:http/outgoing-handler",
            "net",
        ),
        (
            Grants::builder().net(env.host(API)).env("github_api"),
            "wrun:recipe/secrets",
            "secrets",
        ),
        (
            Grants::builder()
                .net(env.host(API))
                .secret("github", "api-token"),
            "wrun:recipe/properties",
            "env",
        ),
    ];
    for (grants, want_import, want_grant) in cases {
        match env
            .engine
            .step("fetch", &component, grants.build().unwrap())
        {
            Err(e @ Error::MissingGrant { .. }) => {
                let Error::MissingGrant {
                    step,
                    import,
                    grant,
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!(step, "fetch");
                assert!(import.starts_with(want_import), "{import}");
                assert_eq!(*grant, want_grant);
                let text = e.to_string();
                assert!(
                    text.contains("fetch")
                        && text.contains(want_import)
                        && text.contains(want_grant),
                    "{text}"
                );
            }
            other => panic!("expected MissingGrant for {want_grant}, got {other:?}"),
        }
    }
}

/// Language runtimes import `wasi:sockets` whether or not a step uses it,
/// so the import links; every socket operation is refused at run time.
#[tokio::test]
async fn sockets_link_but_every_socket_operation_is_refused() {
    let env = TestEnv::new().await;
    let component = env.load("sockets");
    assert!(
        component
            .imports()
            .iter()
            .any(|i| i.starts_with("wasi:sockets/"))
    );
    let step = env.engine.step("raw", &component, Grants::none()).unwrap();
    let target = format!("127.0.0.1:{}", env.server.port());
    let input = json!({ "addr": target, "host": format!("{API}:443") });
    let out = success(env.job().run(&step, "connect", &input).await);
    for probe in ["tcp", "udp", "resolve"] {
        let result = out.output[probe].as_str().unwrap_or_default();
        assert!(result.starts_with("err"), "{probe}: {result}");
    }
    assert_eq!(
        env.server.connection_count(),
        0,
        "a raw socket reached the server"
    );
    assert_eq!(
        env.connector
            .attempts
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn limits_above_the_operator_maximum_are_refused() {
    let env = TestEnv::new().await;
    let component = env.load("noop");
    let too_much = Grants::builder().memory(8 << 30).build().unwrap();
    assert!(matches!(
        env.engine.step("big", &component, too_much),
        Err(Error::InvalidGrant {
            grant: "memory",
            ..
        })
    ));
    let too_long = Grants::builder()
        .timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    assert!(matches!(
        env.engine.step("long", &component, too_long),
        Err(Error::InvalidGrant {
            grant: "timeout",
            ..
        })
    ));
}

#[tokio::test]
async fn unknown_actions_and_bad_input_are_typed_errors() {
    let env = TestEnv::new().await;
    let step = env.github_step();
    let job = env.job();
    let err = job.run(&step, "delete-repo", &json!({})).await.unwrap_err();
    match &err.error {
        Error::UnknownAction {
            step,
            action,
            available,
        } => {
            assert_eq!(
                (step.as_str(), action.as_str()),
                ("fetch-issue", "delete-repo")
            );
            assert!(available.contains("get-issue"), "{available}");
        }
        other => panic!("expected UnknownAction, got {other:?}"),
    }
    let err = job
        .run(&step, "get-issue", &json!({"owner": 1}))
        .await
        .unwrap_err();
    assert!(
        matches!(err.error, Error::InvalidInput { .. }),
        "{:?}",
        err.error
    );
}

#[tokio::test]
async fn a_missing_connection_names_step_alias_and_connection() {
    let env = TestEnv::new().await;
    let grants = env.hostile_grants().secret("ghost", "no-such-connection");
    let (text, f) = failure(env.hostile(grants, "noop-ish", json!({})).await);
    assert!(matches!(f.error, Error::Connection { .. }), "{text}");
    assert!(
        text.contains("ghost") && text.contains("no-such-connection"),
        "{text}"
    );
}

#[tokio::test]
async fn every_step_starts_from_a_fresh_instance() {
    let env = TestEnv::new().await;
    let component = env.load("hostile");
    let step = env
        .engine
        .step("count", &component, env.hostile_grants().build().unwrap())
        .unwrap();
    let job = env.job();
    for _ in 0..3 {
        let out = success(job.run(&step, "counter", &json!({})).await);
        assert_eq!(
            out.output,
            json!({"count": 1}),
            "state carried over between runs"
        );
    }
}

#[tokio::test]
async fn the_compiled_artifact_cache_is_hit_on_a_second_load() {
    let env = TestEnv::new().await;
    let bytes = guest_bytes("slack-post");
    env.engine.load("first", &bytes).unwrap();
    let (hits_before, _) = env.engine.cache_stats().unwrap();
    let fresh = wrun_runtime::Engine::builder()
        .cache_dir(cache_dir())
        .build()
        .unwrap();
    fresh.load("second", &bytes).unwrap();
    let (hits, misses) = fresh.cache_stats().unwrap();
    assert_eq!(
        (hits, misses),
        (1, 0),
        "a fresh engine must reuse the artifact compiled before"
    );
    let _ = hits_before;
}

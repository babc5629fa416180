//! Limits: memory, time, stack, traps. Each ends the step with an error that
//! names the step and the limit; the host goes on running steps.

use std::time::{Duration, Instant};

use serde_json::json;
use wrun_runtime::Error;

use crate::common::*;

#[tokio::test]
async fn a_memory_bomb_hits_the_memory_limit() {
    let env = TestEnv::new().await;
    let grants = env.hostile_grants().memory(32 << 20);
    let (text, f) = failure(env.hostile(grants, "memory-bomb", json!({})).await);
    match f.error {
        Error::MemoryLimit { step, limit } => {
            assert_eq!(step, "hostile");
            assert_eq!(limit, 32 << 20);
        }
        other => panic!("expected MemoryLimit, got {other:?}"),
    }
    assert!(text.contains("memory limit of 33554432 bytes"), "{text}");
    // Within the limit the same code completes.
    let grants = env.hostile_grants().memory(64 << 20);
    let out = success(
        env.hostile(grants, "memory-bomb", json!({ "mib": 8 }))
            .await,
    );
    assert_eq!(out.output["allocated_mib"], 8);
}

#[tokio::test]
async fn an_infinite_loop_is_stopped_by_the_timeout() {
    let env = TestEnv::new().await;
    let grants = env.hostile_grants().timeout(Duration::from_millis(300));
    let started = Instant::now();
    let (text, f) = failure(env.hostile(grants, "spin", json!({})).await);
    assert!(matches!(f.error, Error::Timeout { .. }), "{text}");
    assert!(text.contains("hostile") && text.contains("300ms"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_guest_blocked_in_a_host_call_is_stopped_by_the_timeout() {
    let env = TestEnv::new().await;
    let grants = || env.hostile_grants().timeout(Duration::from_millis(300));
    let (text, f) = failure(
        env.hostile(grants(), "sleep", json!({ "ms": 60_000 }))
            .await,
    );
    assert!(matches!(f.error, Error::Timeout { .. }), "{text}");
    let (text, f) = failure(
        env.hostile(grants(), "http", http(&env.url(API, "/hang")))
            .await,
    );
    assert!(matches!(f.error, Error::Timeout { .. }), "{text}");
}

#[tokio::test]
async fn stack_overflow_panics_and_traps_end_the_step_not_the_host() {
    let env = TestEnv::new().await;
    let (text, f) = failure(
        env.hostile(env.hostile_grants(), "recurse", json!({}))
            .await,
    );
    assert!(matches!(f.error, Error::Trap { .. }), "{text}");
    // Rust keeps its frames on a shadow stack in linear memory: running off
    // its end traps as an out-of-bounds access before wasm's own stack limit.
    assert!(
        text.contains("stack overflow") || text.contains("out of bounds memory access"),
        "{text}"
    );

    let (text, f) = failure(
        env.hostile(
            env.hostile_grants(),
            "panic",
            json!({ "message": "boom 42" }),
        )
        .await,
    );
    assert!(matches!(f.error, Error::Trap { .. }), "{text}");
    assert!(text.contains("boom 42"), "{text}");

    // The engine is still healthy.
    let component = env.load("noop");
    let step = env
        .engine
        .step("noop", &component, wrun_runtime::Grants::none())
        .unwrap();
    let out = success(
        env.job()
            .run(&step, "noop", &json!({ "still": "alive" }))
            .await,
    );
    assert_eq!(out.output, json!({ "still": "alive" }));
}

#[tokio::test]
async fn many_steps_run_concurrently_each_in_its_own_instance() {
    let env = TestEnv::new().await;
    let component = env.load("noop");
    let step = env
        .engine
        .step("noop", &component, wrun_runtime::Grants::none())
        .unwrap();
    let job = env.job();
    let runs = (0..32).map(|i| {
        let job = &job;
        let step = &step;
        async move { job.run(step, "noop", &json!({ "i": i })).await }
    });
    let results = futures::future::join_all(runs).await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(success(r).output, json!({ "i": i }));
    }
}

#[tokio::test]
async fn a_full_instance_pool_is_a_clear_busy_error() {
    let env = TestEnv::with(|b| {
        b.allow_range("127.0.0.0/8".parse().unwrap())
            .max_concurrent_steps(1)
    })
    .await;
    let component = env.load("hostile");
    let step = env
        .engine
        .step("hold", &component, env.hostile_grants().build().unwrap())
        .unwrap();
    let job = env.job();
    let hold = json!({ "ms": 1500 });
    let holder = job.run(&step, "sleep", &hold);
    let second = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        job.run(&step, "counter", &json!({})).await
    };
    let (held, refused) = tokio::join!(holder, second);
    success(held);
    let (text, f) = failure(refused);
    assert!(matches!(f.error, Error::Busy { .. }), "{text}");
    assert!(text.contains("concurrency limit"), "{text}");
}

#[tokio::test]
async fn the_job_log_is_bounded_per_step() {
    let env = TestEnv::with(|b| b.allow_range("127.0.0.0/8".parse().unwrap()).log_limit(600)).await;
    let input = json!({ "url": env.url(API, "/echo/a-long-path-to-make-the-echo-longer"), "secret": "api", "how": "all" });
    let out = success(env.hostile(env.hostile_grants(), "leak", input).await);
    let text = logs(&out.events);
    assert!(text.contains("log limit reached"), "{text}");
    assert!(text.len() < 2000, "{} bytes of log kept", text.len());
}

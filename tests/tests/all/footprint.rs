//! A step's host-side footprint is bounded. Each flood from the hostile
//! guest ends with a clear error or with bounded, summarised events, and a
//! process running all of them in a row stays within a stated peak
//! resident memory (see ARCHITECTURE.md, "a step's host-side footprint is
//! bounded").

use std::process::Command;

use serde_json::{Value, json};
use wrun_runtime::{Error, Event, StepFailure, StepOutput};

use crate::common::*;

/// Set in the child process that runs the floods alone.
const CHILD: &str = "WRUN_FOOTPRINT_CHILD";
/// Largest growth of the peak resident memory the floods may cause, over
/// the same process after a small run of each (engine, component and mock
/// already loaded). Measured here: about 11 MiB, also with a cold cache, a
/// loaded machine and the whole suite beside it; one CI machine once saw
/// 156 MiB that could not be reproduced (the child prints each flood's peak
/// so that the next failure names its flood). Before the budget, the first
/// two floods alone kept about 1.5 GiB: the bound sits well below that.
const PEAK_GROWTH_BOUND: u64 = 256 << 20;

/// Refused requests with 60 KB paths; `count` refusals, 20 recorded.
async fn refused_flood(env: &TestEnv, count: u64) -> StepOutput {
    let input = json!({ "base": format!("https://{}", env.host(EVIL)), "count": count, "path_len": 60_000 });
    let out = success(
        env.hostile(env.hostile_grants(), "refused-flood", input)
            .await,
    );
    assert_eq!(out.output["refused"], count, "{}", out.output);
    let refused: Vec<_> = out
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Refused { url, reason, .. } => Some((url, reason)),
            _ => None,
        })
        .collect();
    assert_eq!(refused.len(), 21, "the first 20 and a summary");
    let full_len = format!(
        "({} bytes)",
        "https://".len() + env.host(EVIL).len() + 60_001
    );
    for (url, reason) in &refused[..20] {
        assert!(url.len() < 600 && url.ends_with(&full_len), "{url}");
        assert!(reason.contains("not in the `net` grant"), "{reason}");
    }
    let summary = refused[20].1;
    assert!(
        summary.contains(&format!("… and {} more refused requests", count - 20)),
        "{summary}"
    );
    out
}

/// `wasi:http` objects created and never dropped: the step fails with the
/// host budget named.
async fn held_flood(env: &TestEnv, kind: &str, count: u64, value_len: usize) -> StepFailure {
    let input = json!({ "kind": kind, "count": count, "value_len": value_len });
    let (text, f) = failure(
        env.hostile(env.hostile_grants(), "fields-flood", input)
            .await,
    );
    match &f.error {
        Error::ResourceLimit { step, what, limit } => {
            assert_eq!(step, "hostile");
            if value_len == 0 {
                assert_eq!((*what, *limit), ("resource table entries", 4096));
            } else {
                assert!(what.contains("wasi:http"), "{text}");
                assert_eq!(*limit, 4 << 20);
            }
        }
        other => panic!("{kind}: expected ResourceLimit, got {other:?}"),
    }
    assert!(text.contains("exceeded its host resource budget"), "{text}");
    f
}

/// Empty log lines, each an event: the events stop at the budget.
async fn log_flood(env: &TestEnv, count: u64) -> StepOutput {
    let input = json!({ "count": count });
    let out = success(env.hostile(env.hostile_grants(), "log-flood", input).await);
    assert_eq!(out.events.len(), 10_001, "10,000 events and a summary");
    let last = logs(&out.events[10_000..]);
    assert!(
        last.contains(&format!("… and {} more events dropped", count - 10_000)),
        "{last}"
    );
    out
}

#[tokio::test]
async fn a_refused_request_flood_keeps_twenty_clipped_refusals_and_a_count() {
    let env = TestEnv::new().await;
    refused_flood(&env, 300).await;
    let audits = env.observer.audits();
    assert_eq!(audits.len(), 21, "20 audited refusals and a summary");
    assert!(audits.iter().all(|a| a.destination.len() < 600));
    assert!(audits[20].reason.contains("280 more refused requests"));
}

#[tokio::test]
async fn fields_requests_and_bodies_held_in_the_host_fail_the_step() {
    let env = TestEnv::new().await;
    held_flood(&env, "fields", 2000, 120_000).await;
    held_flood(&env, "requests", 2000, 60_000).await;
    held_flood(&env, "bodies", 2000, 32 << 10).await;
}

#[tokio::test]
async fn a_resource_table_flood_fails_the_step() {
    let env = TestEnv::new().await;
    held_flood(&env, "fields", 100_000, 0).await;
}

#[tokio::test]
async fn a_log_flood_keeps_ten_thousand_events_and_a_count() {
    let env = TestEnv::new().await;
    log_flood(&env, 30_000).await;
}

/// Runs every flood, full size, in a child process of this test binary (the
/// test threads of this process would blur its peak), and checks the
/// child's peak resident memory.
#[test]
fn floods_keep_the_host_within_its_memory_bound() {
    if std::env::var_os(CHILD).is_some() {
        return run_floods_and_report();
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args([
            "footprint::floods_keep_the_host_within_its_memory_bound",
            "--exact",
            "--test-threads=1",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |key: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.split_once(key).map(|(_, value)| value))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {key} in: {stdout}"))
    };
    let (before, after) = (read("peak_before_kib="), read("peak_after_kib="));
    let growth = (after.saturating_sub(before)) << 10;
    println!("peak resident memory: {before} KiB after warm-up, {after} KiB after the floods");
    for line in stdout.lines().filter(|l| l.starts_with("after ")) {
        println!("  {line}");
    }
    assert!(
        growth <= PEAK_GROWTH_BOUND,
        "the floods grew the peak resident memory by {} MiB (bound {} MiB)",
        growth >> 20,
        PEAK_GROWTH_BOUND >> 20
    );
}

/// The child's part: warm up with one small run of each action, then the
/// full floods one after the other, printing the peak before and after.
fn run_floods_and_report() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // A long step timeout: the rest of the suite may be loading the machine.
        let env = TestEnv::with(|b| {
            b.allow_range("127.0.0.0/8".parse().unwrap())
                .default_timeout(std::time::Duration::from_secs(180))
        })
        .await;
        let warm: [(&str, Value); 3] = [
            (
                "refused-flood",
                json!({ "base": env.url(EVIL, ""), "count": 1, "path_len": 10 }),
            ),
            ("fields-flood", json!({ "count": 1, "value_len": 10 })),
            ("log-flood", json!({ "count": 1 })),
        ];
        for (action, input) in warm {
            success(env.hostile(env.hostile_grants(), action, input).await);
        }
        println!("peak_before_kib={}", peak_rss_kib());
        // Each flood's peak is printed too, so that a failure names the flood.
        let after = |flood: &str| println!("after {flood}: {} KiB", peak_rss_kib());
        refused_flood(&env, 2_000).await;
        after("refused requests");
        held_flood(&env, "fields", 10_000, 120_000).await;
        after("held fields");
        held_flood(&env, "requests", 10_000, 60_000).await;
        after("held requests");
        held_flood(&env, "bodies", 10_000, 32 << 10).await;
        after("held bodies");
        held_flood(&env, "fields", 1_000_000, 0).await;
        after("table entries");
        log_flood(&env, 200_000).await;
        after("log lines");
        println!("peak_after_kib={}", peak_rss_kib());
    });
}

/// `VmHWM` of this process, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

//! Job claims in the store: a bounded, fair claim; fencing of a node whose
//! claim lapsed and was taken over; release at a node's start; a
//! cancellation seen at the next commit; the backlog count.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::audit::Outcome;
use crate::claims::{Claim, ClaimRequest};

const LONG: i64 = 60_000;

fn new_store() -> (tempfile::TempDir, Arc<SqliteStorage>) {
    let dir = tempfile::tempdir().unwrap();
    let storage =
        SqliteStorage::open(&dir.path().join("wrun.db"), MasterKey::generate(), None).unwrap();
    (dir, storage)
}

async fn queue(s: &dyn Storage, workspace: &str, id: &str) {
    if s.recipe_version(workspace, "r").await.unwrap().is_none() {
        s.put_recipe(
            workspace,
            "r",
            RecipeVersion {
                manifest: "[recipe]\nname = \"r\"\n".into(),
                components: BTreeMap::default(),
                signed_version: None,
                signer: None,
                review: json!({}),
            },
            entry("recipe.deploy"),
        )
        .await
        .unwrap();
    }
    s.enqueue(
        NewJob {
            id: id.into(),
            workspace: workspace.into(),
            recipe: "r".into(),
            environment: "prod".into(),
            trigger_kind: "api".into(),
            payload: json!({ "n": id }),
            idempotency_key: None,
            rerun_of: None,
            created_at: UnixMillis::now(),
        },
        None,
    )
    .await
    .unwrap();
}

fn request(max: usize, per_workspace: usize) -> ClaimRequest {
    ClaimRequest {
        max,
        per_workspace,
        held: HashMap::new(),
    }
}

fn step(claim: &Claim, node: &str, index: usize) -> StepCommit {
    StepCommit {
        job: claim.id.clone(),
        workspace: claim.workspace.clone(),
        claim: (node.into(), claim.epoch),
        index,
        step: format!("s{index}"),
        status: "succeeded".into(),
        history: json!({ "step": format!("s{index}") }),
        checkpoint: Some((json!({ "done": index }), vec![])),
    }
}

fn entry(action: &str) -> Entry {
    Entry {
        workspace: Some("ws".into()),
        actor: "alice".into(),
        action: action.into(),
        target: "job".into(),
        source: None,
        outcome: Outcome::Success,
        detail: json!({}),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_bounded_and_a_flood_does_not_starve_a_quiet_workspace() {
    let (_dir, storage) = new_store();
    let s: &dyn Storage = &storage;
    for i in 0..50 {
        queue(s, "flood", &format!("job_f{i:03}")).await;
    }
    queue(s, "quiet", "job_q").await;
    assert_eq!(s.backlog().await.unwrap(), 51);
    s.heartbeat("a", LONG).await.unwrap();

    let claims = s.claim_jobs("a", request(4, 3)).await.unwrap();
    assert_eq!(claims.len(), 4, "{claims:?}");
    assert!(claims.iter().any(|c| c.id == "job_q"), "{claims:?}");
    let flood: Vec<_> = claims.iter().filter(|c| c.workspace == "flood").collect();
    assert_eq!(flood.len(), 3, "per_workspace bounds one workspace");
    // Oldest first within a workspace; a first claim is epoch 1.
    assert_eq!(flood[0].id, "job_f000");
    assert!(claims.iter().all(|c| c.epoch == 1 && !c.takeover));

    // The node says what it holds: it gets no more of a full workspace.
    let held = HashMap::from([("flood".to_string(), 3), ("quiet".to_string(), 1)]);
    let more = s
        .claim_jobs(
            "a",
            ClaimRequest {
                max: 10,
                per_workspace: 3,
                held,
            },
        )
        .await
        .unwrap();
    assert!(more.is_empty(), "{more:?}");

    // Another live node gets other jobs, never one held by `a`.
    s.heartbeat("b", LONG).await.unwrap();
    let b = s.claim_jobs("b", request(5, 5)).await.unwrap();
    assert_eq!(b.len(), 5);
    for claim in &b {
        assert!(!claims.iter().any(|c| c.id == claim.id), "{claim:?}");
    }
    // Claimed jobs are still queued: the backlog counts them.
    assert_eq!(s.backlog().await.unwrap(), 51);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_claim_lapsed_is_fenced_and_the_new_owner_resumes_its_work() {
    let (_dir, storage) = new_store();
    let s: &dyn Storage = &storage;
    queue(s, "ws", "job_1").await;
    // `a` claims with a lease that lapses at once.
    s.heartbeat("a", 1).await.unwrap();
    let a = s.claim_jobs("a", request(1, 1)).await.unwrap().remove(0);
    let started = s.start_job("a", &a).await.unwrap().unwrap();
    assert_eq!(started.resume.next, 0);
    assert!(s.commit_step(step(&a, "a", 0)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(20)).await;

    // `a` never takes over its own job, even with its lease lapsed.
    assert!(s.claim_jobs("a", request(1, 1)).await.unwrap().is_empty());

    // `b` takes it over at the next epoch and resumes after step 0.
    s.heartbeat("b", LONG).await.unwrap();
    let b = s.claim_jobs("b", request(1, 1)).await.unwrap().remove(0);
    assert_eq!(b.id, "job_1");
    assert!(b.takeover);
    assert_eq!(b.epoch, a.epoch + 1);
    let resumed = s.start_job("b", &b).await.unwrap().unwrap();
    assert_eq!(resumed.resume.next, 1);
    assert_eq!(resumed.resume.outputs["s0"], json!({ "done": 0 }));

    // Every late write of `a` is refused and changes nothing.
    let late = s.commit_step(step(&a, "a", 1)).await.unwrap_err();
    assert!(
        matches!(late, StorageError::LeaseLost { ref job } if job == "job_1"),
        "{late}"
    );
    assert!(matches!(
        s.start_job("a", &a).await.unwrap_err(),
        StorageError::LeaseLost { .. }
    ));
    let end = s
        .finish_job(
            ("a", a.epoch),
            "ws",
            "job_1",
            JobState::Failed,
            Some("late".into()),
            vec![],
        )
        .await
        .unwrap_err();
    assert!(matches!(end, StorageError::LeaseLost { .. }), "{end}");
    // The same name at the old epoch is refused too (a restarted node
    // under the same name does not revive an old claim).
    s.heartbeat("a", LONG).await.unwrap();
    assert!(matches!(
        s.commit_step(step(&a, "a", 1)).await.unwrap_err(),
        StorageError::LeaseLost { .. }
    ));
    let detail = s.job("ws", "job_1").await.unwrap().unwrap();
    assert_eq!(detail.summary.state, JobState::Running);
    assert_eq!(detail.steps.len(), 1, "a's late step was not written");

    // `b` ends it; the job is finished once, by `b`.
    assert!(s.commit_step(step(&b, "b", 1)).await.unwrap());
    let end = s
        .finish_job(
            ("b", b.epoch),
            "ws",
            "job_1",
            JobState::Succeeded,
            None,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(end, JobState::Succeeded);
    assert_eq!(s.backlog().await.unwrap(), 0);
    // An ended job is never claimed again.
    s.heartbeat("c", LONG).await.unwrap();
    assert!(s.claim_jobs("c", request(5, 5)).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_claim_is_kept_and_a_restarted_node_releases_its_own() {
    let (_dir, storage) = new_store();
    let s: &dyn Storage = &storage;
    queue(s, "ws", "job_1").await;
    queue(s, "ws", "job_2").await;
    s.heartbeat("a", LONG).await.unwrap();
    let a = s.claim_jobs("a", request(2, 2)).await.unwrap();
    assert_eq!(a.len(), 2);
    s.start_job("a", &a[0]).await.unwrap().unwrap();
    // `b` finds nothing: a's lease is live.
    s.heartbeat("b", LONG).await.unwrap();
    assert!(s.claim_jobs("b", request(5, 5)).await.unwrap().is_empty());
    // `a` starts again (a crash, a restart): it gives its claims up, and
    // the running one comes back as a takeover at a new epoch.
    assert_eq!(s.release_claims("a").await.unwrap(), 2);
    let again = s.claim_jobs("a", request(5, 5)).await.unwrap();
    assert_eq!(again.len(), 2);
    let running = again.iter().find(|c| c.id == a[0].id).unwrap();
    assert!(running.takeover);
    assert_eq!(running.epoch, a[0].epoch + 1);
    let queued = again.iter().find(|c| c.id == a[1].id).unwrap();
    assert!(!queued.takeover);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_through_any_node_is_seen_at_the_next_commit() {
    let (_dir, storage) = new_store();
    let s: &dyn Storage = &storage;
    queue(s, "ws", "job_1").await;
    s.heartbeat("a", LONG).await.unwrap();
    let a = s.claim_jobs("a", request(1, 1)).await.unwrap().remove(0);
    s.start_job("a", &a).await.unwrap().unwrap();
    assert!(s.commit_step(step(&a, "a", 0)).await.unwrap());
    s.cancel_job("ws", "job_1", entry("job.cancel"))
        .await
        .unwrap();
    assert!(!s.commit_step(step(&a, "a", 1)).await.unwrap());
    let end = s
        .finish_job(
            ("a", a.epoch),
            "ws",
            "job_1",
            JobState::Succeeded,
            None,
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(end, JobState::Cancelled, "the cancellation wins");
}

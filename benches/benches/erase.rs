//! Erasure by data subject over 100,000 sealed jobs of two steps, a subject
//! in 1,000 of them: the scan alone (a dry run: every record opened and
//! searched, page by page) and a whole erasure (scan, one transaction that
//! rewrites the 1,000 jobs, the write-ahead log emptied), each on the
//! daemon's `SqliteStorage` filled through its own job operations. Run
//! with `cargo bench -p wrun-benches --bench erase`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_main};
use serde_json::json;
use wrun_store::UnixMillis;
use wrun_store::audit::{Entry, Outcome};
use wrun_store::claims::ClaimRequest;
use wrun_store::erase::Subject;
use wrun_store::keys::MasterKey;
use wrun_store::sqlite::SqliteStorage;
use wrun_store::storage::{JobState, NewJob, RecipeVersion, StepCommit, Storage};

const WS: &str = "bench";
/// The node the jobs are claimed under.
const NODE: &str = "bench";
const JOBS: usize = 100_000;
const EVERY: usize = 100;
const SUBJECT: &str = "alice.liddell@wonder.test";

fn entry() -> Entry {
    Entry {
        workspace: Some(WS.into()),
        actor: "bench".into(),
        action: "jobs.erase".into(),
        target: "jobs".into(),
        source: None,
        outcome: Outcome::Success,
        detail: json!({}),
    }
}

/// Accepts, runs (two step commits) and ends job `i`, as the daemon does.
async fn one_job(storage: Arc<dyn Storage>, i: usize) {
    let email = if i % EVERY == 7 {
        SUBJECT.to_uppercase()
    } else {
        format!("user{i}@mail.test")
    };
    let id = format!("job_{i:07}");
    let job = NewJob {
        id: id.clone(),
        workspace: WS.into(),
        recipe: "sync".into(),
        environment: "prod".into(),
        trigger_kind: "webhook".into(),
        payload: json!({ "order": i, "email": email, "items": [1, 2, 3] }),
        idempotency_key: None,
        rerun_of: None,
        created_at: UnixMillis::now(),
    };
    storage.enqueue(job, None).await.expect("enqueue");
    let request = ClaimRequest {
        max: 1,
        per_workspace: 1,
        ..ClaimRequest::default()
    };
    let claims = storage.claim_jobs(NODE, request).await.expect("claim");
    let claim = claims.first().expect("the job just queued is claimed");
    assert_eq!(claim.id, id);
    storage.start_job(NODE, claim).await.expect("start");
    for index in 0..2 {
        let history = json!({
            "step": format!("s{index}"), "status": "succeeded", "attempts": 1, "elapsed_ms": 3,
            "input": { "email": email }, "output": { "id": i, "ok": true }, "error": null,
            "events": [{ "kind": "log", "line": format!("synced contact {i}") }]
        });
        storage
            .commit_step(StepCommit {
                job: id.clone(),
                workspace: WS.into(),
                claim: (NODE.into(), claim.epoch),
                index,
                step: format!("s{index}"),
                status: "succeeded".into(),
                history,
                checkpoint: Some((json!({ "id": i }), vec![])),
            })
            .await
            .expect("commit");
    }
    storage
        .finish_job(
            (NODE, claim.epoch),
            WS,
            &id,
            JobState::Succeeded,
            None,
            vec![],
        )
        .await
        .expect("finish");
}

/// A database of [`JOBS`] ended jobs, written once and copied per run.
fn fill(rt: &tokio::runtime::Runtime, dir: &Path, key: &MasterKey) -> PathBuf {
    let path = dir.join("template.db");
    let key = MasterKey::from_base64(&key.to_base64()).expect("key");
    let sqlite = SqliteStorage::open(&path, key, None).expect("store");
    let storage: Arc<dyn Storage> = Arc::new(sqlite);
    rt.block_on(async {
        // Jobs belong to a deployed recipe.
        storage
            .put_recipe(
                WS,
                "sync",
                RecipeVersion {
                    manifest: "[recipe]\nname = \"sync\"\n".into(),
                    components: Default::default(),
                    signed_version: None,
                    signer: None,
                    review: json!({}),
                },
                entry(),
            )
            .await
            .expect("recipe");
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..JOBS {
            if tasks.len() >= 512 {
                tasks.join_next().await.expect("task").expect("join");
            }
            tasks.spawn(one_job(Arc::clone(&storage), i));
        }
        while let Some(r) = tasks.join_next().await {
            r.expect("join");
        }
    });
    // Dropping the last handle folds the log into the file.
    drop(storage);
    path
}

/// A fresh copy of the template, opened; the copy is removed when the
/// returned storage has been dropped and [`remove`] is called.
fn open_copy(template: &Path, dir: &Path, key: &MasterKey) -> (Arc<dyn Storage>, PathBuf) {
    let path = dir.join(format!("run-{:x}.db", rand::random::<u64>()));
    std::fs::copy(template, &path).expect("copy");
    let key = MasterKey::from_base64(&key.to_base64()).expect("key");
    (
        Arc::new(SqliteStorage::open(&path, key, None).expect("store")),
        path,
    )
}

fn remove(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn erase(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = std::env::temp_dir().join(format!("wrun-bench-erase-{:x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("dir");
    let key = MasterKey::generate();
    let template = fill(&rt, &dir, &key);
    let subject = Subject::new(SUBJECT).expect("subject");

    let mut group = c.benchmark_group("erase");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    let (storage, scanned) = open_copy(&template, &dir, &key);
    group.bench_function("scan 100k jobs (dry run)", |b| {
        b.to_async(&rt).iter(|| async {
            let report = storage
                .erase_subject(WS, &subject, true, entry())
                .await
                .expect("scan");
            assert_eq!(report.matched, (JOBS / EVERY) as u64);
        });
    });
    drop(storage);
    remove(&scanned);
    group.bench_function("erase 1k of 100k jobs", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (storage, path) = open_copy(&template, &dir, &key);
                let start = Instant::now();
                let report = rt
                    .block_on(storage.erase_subject(WS, &subject, false, entry()))
                    .expect("erase");
                total += start.elapsed();
                assert_eq!(report.erased, (JOBS / EVERY) as u64);
                assert!(report.log_cleared);
                drop(storage);
                remove(&path);
            }
            total
        });
    });
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

fn benches() {
    let mut c = Criterion::default().configure_from_args();
    erase(&mut c);
}

criterion_main!(benches);

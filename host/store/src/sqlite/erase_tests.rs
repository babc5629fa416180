//! Erasure by data subject against a real database file: a subject in
//! 1,000 of 100,000 jobs, in every kind of record and encoding.
#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;
use crate::audit::Outcome;

const WS: &str = "ws";
const JOBS: usize = 100_000;
/// Every hundredth job mentions the subject, in one of the forms below.
const EVERY: usize = 100;
const SUBJECT: &str = "Alice.Liddell@Wonder.test";

fn entry() -> Entry {
    Entry {
        workspace: Some(WS.into()),
        actor: "test".into(),
        action: "jobs.erase".into(),
        target: "jobs".into(),
        source: None,
        outcome: Outcome::Success,
        detail: json!({ "reference": "DSR-1" }),
    }
}

/// Job `i`'s records: (state, payload, error, idempotency key, step
/// records with checkpoints). One job in [`EVERY`] mentions the subject,
/// each time somewhere else and written differently.
#[allow(clippy::type_complexity)]
fn records(
    i: usize,
) -> (
    &'static str,
    Value,
    Option<Value>,
    Option<String>,
    Vec<(Value, Option<Value>)>,
) {
    let person = format!("user{i}@mail.test");
    let mut payload = json!({ "order": i, "email": person, "note": "n/a" });
    let mut error = None;
    let mut key = Some(format!("evt-{i}"));
    let mut step = json!({
        "step": "sync", "status": "succeeded", "attempts": 1, "elapsed_ms": 12,
        "input": { "email": person }, "output": { "id": i },
        "error": null,
        "events": [{ "kind": "log", "line": format!("synced {person}") },
                   { "kind": "http", "url": format!("https://crm.test/contacts/{i}") }]
    });
    let mut checkpoint = None;
    let mut state = if i.is_multiple_of(3) {
        "failed"
    } else {
        "succeeded"
    };
    if i % EVERY == 7 {
        match (i / EVERY) % 8 {
            0 => payload["email"] = json!("ALICE.LIDDELL@wonder.test"),
            1 => payload["note"] = json!(format!("call {SUBJECT} back")),
            2 => step["events"][0]["line"] = json!("synced alice.liddell@wonder.test"),
            3 => {
                step["events"][1]["url"] =
                    json!("https://crm.test/contacts?email=alice.liddell%40wonder.test")
            }
            4 => {
                step["output"] = json!({ "body": "{\"mail\":\"alice.liddell\\u0040wonder.test\"}" })
            }
            5 => {
                state = "failed";
                error = Some(json!(
                    "step `sync`: crm.test said 409 for Alice.Liddell@Wonder.test"
                ));
            }
            6 => key = Some(format!("alice.liddell@wonder.test-{i}")),
            _ => step["input"] = json!({ "alice.liddell@wonder.test": true }),
        }
    }
    if i >= JOBS {
        // The extra jobs still running: their checkpoint names the subject.
        state = if i.is_multiple_of(2) {
            "running"
        } else {
            "queued"
        };
        checkpoint = Some(json!({ "output": { "to": SUBJECT }, "marked": [] }));
    }
    (state, payload, error, key, vec![(step, checkpoint)])
}

fn mentions(i: usize) -> bool {
    i % EVERY == 7 || i >= JOBS
}

/// Writes jobs `range` in one transaction, sealed as the storage seals them.
async fn insert(storage: &Arc<SqliteStorage>, range: std::ops::Range<usize>) {
    let dk = storage.data_key(WS, true).await.unwrap();
    storage
        .write(move |ctx| {
            for i in range {
                let id = format!("job_{i:07}");
                let (state, payload, error, key, steps) = records(i);
                let seal = |v: &Value, part: &str| {
                    keys::seal(&dk, &serde_json::to_vec(v).unwrap(), &job_aad(WS, &id, part)).unwrap()
                };
                ctx.conn
                    .execute(
                        "INSERT INTO jobs (id, workspace, recipe, environment, state, trigger_kind, payload,
                                           idempotency_key, created_at, started_at, finished_at, error)
                         VALUES (?1, ?2, 'sync', 'prod', ?3, 'webhook', ?4, ?5, ?6, ?6, ?6, ?7)",
                        params![
                            id,
                            WS,
                            state,
                            seal(&payload, "payload"),
                            key,
                            i as i64,
                            error.as_ref().map(|e| seal(e, "error"))
                        ],
                    )
                    .unwrap();
                for (idx, (history, checkpoint)) in steps.iter().enumerate() {
                    ctx.conn
                        .execute(
                            "INSERT INTO job_steps (job, idx, step, status, history, checkpoint)
                             VALUES (?1, ?2, 'sync', 'succeeded', ?3, ?4)",
                            params![
                                id,
                                idx as i64,
                                seal(history, &format!("history:{idx}")),
                                checkpoint.as_ref().map(|c| seal(c, &format!("checkpoint:{idx}")))
                            ],
                        )
                        .unwrap();
                }
            }
            Ok(())
        })
        .await
        .unwrap();
}

/// Every sealed blob of the jobs that satisfy `which`, by job id.
async fn blobs(
    storage: &Arc<SqliteStorage>,
    which: fn(usize) -> bool,
) -> BTreeMap<String, Vec<Vec<u8>>> {
    storage
        .read(move |conn| {
            let mut out: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
            let rows = query_rows(
                conn,
                "SELECT j.id, j.payload, j.error, s.history, s.checkpoint
                 FROM jobs j LEFT JOIN job_steps s ON s.job = j.id ORDER BY j.id",
                [],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        [
                            r.get::<_, Option<Vec<u8>>>(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                        ],
                    ))
                },
                String::new,
            )?;
            for (id, parts) in rows {
                let i: usize = id["job_".len()..].parse().unwrap();
                if which(i) {
                    out.entry(id)
                        .or_default()
                        .extend(parts.into_iter().flatten());
                }
            }
            Ok(out)
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_in_1000_of_100000_jobs_is_destroyed_and_nothing_else_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wrun.db");
    let storage = SqliteStorage::open(&path, MasterKey::generate(), None).unwrap();
    let dyn_storage: &dyn Storage = &storage;
    insert(&storage, 0..JOBS + 6).await;
    let subject = Subject::new(&format!("  {}  ", SUBJECT.to_uppercase())).unwrap();

    let matching_before = blobs(&storage, |i| i % EVERY == 7).await;
    let others_before = blobs(&storage, |i| !mentions(i)).await;
    assert_eq!(matching_before.len(), JOBS / EVERY);

    // A dry run counts and changes nothing.
    let dry = dyn_storage
        .erase_subject(WS, &subject, true, entry())
        .await
        .unwrap();
    assert_eq!(
        (dry.scanned, dry.matched, dry.erased, dry.active),
        (JOBS as u64 + 6, JOBS as u64 / EVERY as u64 + 6, 0, 6),
        "{dry:?}"
    );
    assert_eq!(blobs(&storage, |i| i % EVERY == 7).await, matching_before);

    let report = dyn_storage
        .erase_subject(WS, &subject, false, entry())
        .await
        .unwrap();
    assert_eq!(
        (report.scanned, report.matched, report.erased, report.active),
        (
            JOBS as u64 + 6,
            JOBS as u64 / EVERY as u64 + 6,
            JOBS as u64 / EVERY as u64,
            6
        ),
        "{report:?}"
    );
    assert!(report.log_cleared, "{report:?}");

    // The rest is byte for byte what it was.
    assert_eq!(blobs(&storage, |i| !mentions(i)).await, others_before);

    // An erased job keeps its id, recipe, state and times, nothing else.
    let failed = format!("job_{:07}", 5 * EVERY + 7);
    let job = dyn_storage.job(WS, &failed).await.unwrap().unwrap();
    assert_eq!(job.summary.state, JobState::Failed);
    assert_eq!(job.summary.created_at, UnixMillis((5 * EVERY + 7) as i64));
    assert!(job.summary.erased_at.is_some());
    assert_eq!(job.summary.error, None);
    assert_eq!(job.input, Value::Null);
    assert_eq!(
        job.steps,
        vec![
            json!({"step": "sync", "status": "succeeded", "attempts": 1, "elapsed_ms": 12,
                    "input": null, "output": null, "error": null, "events": [], "erased": true})
        ]
    );
    // An idempotency key that named the subject is gone.
    let keyed = format!("job_{:07}", 6 * EVERY + 7);
    let key: Option<String> = storage
        .read(move |conn| {
            Ok(conn
                .query_row(
                    "SELECT idempotency_key FROM jobs WHERE id = ?1",
                    [keyed],
                    |r| r.get(0),
                )
                .unwrap())
        })
        .await
        .unwrap();
    assert_eq!(key, None);
    // A job that never mentioned the subject still reads in full.
    let other = dyn_storage.job(WS, "job_0000008").await.unwrap().unwrap();
    assert_eq!(other.input["email"], "user8@mail.test");
    assert_eq!(other.summary.erased_at, None);

    // Searching again finds only the jobs still running.
    let again = dyn_storage
        .erase_subject(WS, &subject, true, entry())
        .await
        .unwrap();
    assert_eq!((again.matched, again.active), (6, 6), "{again:?}");

    // The audit log has the counts and never the subject.
    let audit = dyn_storage.read_audit(WS, 0, 100).await.unwrap();
    let erasures: Vec<_> = audit.iter().filter(|e| e.action == "jobs.erase").collect();
    assert_eq!(erasures.len(), 3);
    assert_eq!(erasures[1].detail["erased"], JOBS / EVERY);
    assert_eq!(erasures[1].detail["reference"], "DSR-1");
    assert_eq!(erasures[0].detail["dry_run"], true);
    let text = serde_json::to_string(&audit).unwrap().to_lowercase();
    assert!(!text.contains("liddell"), "{text}");

    // The destroyed ciphertexts are in neither the database file nor its
    // write-ahead log: overwritten (secure_delete), not merely unlinked.
    let needles: Vec<Vec<u8>> = matching_before.values().flatten().cloned().collect();
    let finder = aho_corasick::AhoCorasick::new(&needles).unwrap();
    let mut files = vec![std::fs::read(&path).unwrap()];
    if let Ok(wal) = std::fs::read(path.with_extension("db-wal")) {
        files.push(wal);
    }
    for bytes in &files {
        assert!(
            finder.find(bytes.as_slice()).is_none(),
            "an erased record is still on disk"
        );
    }
    // The check itself sees a record that is still there.
    let kept: Vec<Vec<u8>> = others_before.values().take(3).flatten().cloned().collect();
    let kept = aho_corasick::AhoCorasick::new(&kept).unwrap();
    assert!(files.iter().any(|b| kept.find(b.as_slice()).is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_record_stops_the_erasure_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let storage =
        SqliteStorage::open(&dir.path().join("wrun.db"), MasterKey::generate(), None).unwrap();
    let dyn_storage: &dyn Storage = &storage;
    insert(&storage, 0..300).await;
    // A record moved to another job does not open (its associated data
    // names the job).
    storage
        .write(|ctx| {
            ctx.conn
                .execute(
                    "UPDATE jobs SET payload = (SELECT payload FROM jobs WHERE id = 'job_0000001') WHERE id = 'job_0000250'",
                    [],
                )
                .unwrap();
            Ok(())
        })
        .await
        .unwrap();
    let before = blobs(&storage, |_| true).await;
    let subject = Subject::new(SUBJECT).unwrap();
    let err = dyn_storage
        .erase_subject(WS, &subject, false, entry())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("job_0000250"), "{err}");
    assert!(!err.to_lowercase().contains("liddell"), "{err}");
    assert_eq!(blobs(&storage, |_| true).await, before);
    let audit = dyn_storage.read_audit(WS, 0, 100).await.unwrap();
    assert!(audit.iter().all(|e| e.action != "jobs.erase"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_workspace_erases_nothing_and_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let storage =
        SqliteStorage::open(&dir.path().join("wrun.db"), MasterKey::generate(), None).unwrap();
    let dyn_storage: &dyn Storage = &storage;
    let report = dyn_storage
        .erase_subject(WS, &Subject::new(SUBJECT).unwrap(), false, entry())
        .await
        .unwrap();
    assert_eq!(report, EraseReport::default());
    let audit = dyn_storage.read_audit(WS, 0, 10).await.unwrap();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0].detail["matched"], 0);
}

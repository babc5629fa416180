//! The PostgreSQL store against a real server (started by the test in a
//! temporary directory): the schema created once by nodes starting
//! together, a newer or foreign schema refused, two nodes sharing one queue
//! without a job claimed twice, and fencing of a node whose claim lapsed.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use wrun_tests::PgServer;

use super::*;
use crate::UnixMillis;
use crate::claims::{Claim, ClaimRequest};

const LONG: i64 = 60_000;

/// A server and a fresh database on it.
async fn database(name: &str) -> (PgServer, String) {
    let server = tokio::task::spawn_blocking(PgServer::start)
        .await
        .unwrap()
        .unwrap();
    let url = server.create_database(name).unwrap();
    (server, url)
}

async fn queue(store: &PgStore, prefix: &str, jobs: i64, workspaces: i64) {
    store
        .client()
        .await
        .unwrap()
        .execute(
            "INSERT INTO jobs (id, workspace, recipe, environment, state, trigger_kind, payload, created_at)
             SELECT $3 || lpad(i::text, 6, '0'), 'ws' || (i % $2), 'r', 'prod', 'queued', 'api', '\\x00'::bytea, i
             FROM generate_series(1::bigint, $1::bigint) AS i",
            &[&jobs, &workspaces, &prefix],
        )
        .await
        .unwrap();
}

/// Ends a claimed job through the fence, as a node does.
async fn finish(store: &PgStore, node: &str, claim: &Claim) -> StorageResult<()> {
    let mut client = store.client().await?;
    let tx = client.transaction().await.unwrap();
    claims::fence(&tx, &claim.id, node, claim.epoch).await?;
    tx.execute(
        "UPDATE jobs SET state = 'succeeded' WHERE id = $1",
        &[&claim.id],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    Ok(())
}

fn request(max: usize, per_workspace: usize) -> ClaimRequest {
    ClaimRequest {
        max,
        per_workspace,
        held: HashMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_starting_together_create_the_schema_once_and_a_foreign_or_newer_one_is_refused() {
    let (server, url) = database("schema").await;
    // Three nodes start at once: one creates the schema, the others find it.
    let (a, b, c) = tokio::join!(
        PgStore::connect(&url, PgOptions::default()),
        PgStore::connect(&url, PgOptions::default()),
        PgStore::connect(&url, PgOptions::default()),
    );
    let (a, _b, _c) = (a.unwrap(), b.unwrap(), c.unwrap());
    assert_eq!(a.schema_version().await.unwrap(), PG_SCHEMA_VERSION);
    a.ready().await.unwrap();

    // The audit log is append-only in the database itself.
    let client = a.client().await.unwrap();
    client
        .execute(
            "INSERT INTO audit (chain, seq, at, actor, action, target, outcome, detail, prev, mac)
             VALUES ('', 1, 0, 'x', 'y', 'z', 'success', '{}', repeat('0', 64), repeat('0', 64))",
            &[],
        )
        .await
        .unwrap();
    let refused = client
        .execute("UPDATE audit SET actor = 'mallory'", &[])
        .await
        .unwrap_err();
    assert!(
        refused
            .as_db_error()
            .unwrap()
            .message()
            .contains("append-only"),
        "{refused}"
    );
    assert!(client.execute("DELETE FROM audit", &[]).await.is_err());

    // A database of a newer wrun is refused, saying so.
    client
        .execute("UPDATE meta SET value = '99' WHERE key = 'schema'", &[])
        .await
        .unwrap();
    let e = PgStore::connect(&url, PgOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("schema version 99"), "{e}");

    // A `wrun` schema that some other application filled is not taken over.
    let other = server.create_database("foreign").unwrap();
    let (raw, conn) = tokio_postgres::connect(&other, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    raw.batch_execute("CREATE SCHEMA wrun; CREATE TABLE wrun.accounts (id int)")
        .await
        .unwrap();
    let e = PgStore::connect(&other, PgOptions::default())
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not wrun's"), "{e}");

    // A URL that is not one, and a CA file that holds no certificate, are
    // refused before anything is attempted, without echoing a password.
    let e = PgStore::connect("postgres://u:hunter2@[::1", PgOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            StorageError::Invalid {
                code: "invalid_store_url",
                ..
            }
        ),
        "{e}"
    );
    assert!(!e.to_string().contains("hunter2"), "{e}");
    let e = PgStore::connect(
        &url,
        PgOptions {
            ca_pem: Some("not a certificate".into()),
            ..PgOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            StorageError::Invalid {
                code: "invalid_store_ca",
                ..
            }
        ),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_drain_one_queue_and_no_job_is_claimed_twice() {
    let (_server, url) = database("queue").await;
    let a = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let b = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    queue(&a, "job_", 600, 3).await;
    assert_eq!(a.backlog().await.unwrap(), 600);
    a.heartbeat("a", LONG).await.unwrap();
    b.heartbeat("b", LONG).await.unwrap();

    // Both nodes claim and end jobs as fast as they can, side by side.
    let drain = async |store: &PgStore, node: &'static str| {
        let mut mine = Vec::new();
        loop {
            let claims = store.claim_jobs(node, request(7, 7)).await.unwrap();
            if claims.is_empty() {
                if store.backlog().await.unwrap() == 0 {
                    return mine;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
            for claim in claims {
                assert!(!claim.takeover);
                finish(store, node, &claim).await.unwrap();
                mine.push(claim.id);
            }
        }
    };
    let (from_a, from_b) = tokio::join!(drain(&a, "a"), drain(&b, "b"));
    assert!(
        !from_a.is_empty() && !from_b.is_empty(),
        "both nodes worked"
    );
    let all: HashSet<&String> = from_a.iter().chain(&from_b).collect();
    assert_eq!(all.len(), 600, "every job once");
    assert_eq!(from_a.len() + from_b.len(), 600, "no job twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_claim_lapsed_is_fenced_and_fairness_holds() {
    let (_server, url) = database("fencing").await;
    let a = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let b = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    queue(&a, "job_", 1, 1).await;

    // `a` claims with a lease that lapses at once and starts the job.
    a.heartbeat("a", 1).await.unwrap();
    let claim = a.claim_jobs("a", request(1, 1)).await.unwrap().remove(0);
    assert_eq!(claim.epoch, 1);
    a.client()
        .await
        .unwrap()
        .execute(
            "UPDATE jobs SET state = 'running' WHERE id = $1",
            &[&claim.id],
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // `a` never takes over its own claim.
    assert!(a.claim_jobs("a", request(1, 1)).await.unwrap().is_empty());
    // `b` does, at the next epoch.
    b.heartbeat("b", LONG).await.unwrap();
    let taken = b.claim_jobs("b", request(1, 1)).await.unwrap().remove(0);
    assert!(taken.takeover);
    assert_eq!(taken.epoch, 2);
    // `a`'s late end is refused; `b`'s goes through.
    let late = finish(&a, "a", &claim).await.unwrap_err();
    assert!(matches!(late, StorageError::LeaseLost { .. }), "{late}");
    finish(&b, "b", &taken).await.unwrap();
    assert_eq!(a.backlog().await.unwrap(), 0);

    // Restarting under its name, `a` releases what it held.
    a.client()
        .await
        .unwrap()
        .execute(
            "INSERT INTO jobs (id, workspace, recipe, environment, state, trigger_kind, payload, created_at)
             VALUES ('job_x', 'ws0', 'r', 'prod', 'queued', 'api', '\\x00'::bytea, 1)",
            &[],
        )
        .await
        .unwrap();
    a.heartbeat("a", LONG).await.unwrap();
    let held = a.claim_jobs("a", request(1, 1)).await.unwrap();
    assert_eq!(held.len(), 1);
    assert!(b.claim_jobs("b", request(1, 1)).await.unwrap().is_empty());
    assert_eq!(a.release_claims("a").await.unwrap(), 1);
    assert_eq!(b.claim_jobs("b", request(1, 1)).await.unwrap().len(), 1);

    // A flood in one workspace does not keep a quiet one waiting.
    queue(&a, "flood_", 400, 1).await; // all in ws0
    a.client()
        .await
        .unwrap()
        .execute(
            "INSERT INTO jobs (id, workspace, recipe, environment, state, trigger_kind, payload, created_at)
             VALUES ('job_quiet', 'quiet', 'r', 'prod', 'queued', 'api', '\\x00'::bytea, 100000)",
            &[],
        )
        .await
        .unwrap();
    let claims = a.claim_jobs("a", request(4, 3)).await.unwrap();
    assert_eq!(claims.len(), 4, "{claims:?}");
    assert!(claims.iter().any(|c| c.id == "job_quiet"), "{claims:?}");
}

fn audit_entry(workspace: Option<&str>, n: usize) -> crate::audit::Entry {
    crate::audit::Entry {
        workspace: workspace.map(str::to_string),
        actor: "alice".into(),
        action: "job.run".into(),
        target: format!("job_{n}"),
        source: Some("127.0.0.1".into()),
        outcome: crate::audit::Outcome::Success,
        detail: serde_json::json!({ "n": n }),
    }
}

/// Appends `per_writer` transactions of one entry from each of `writers`
/// writers at once, writer `i` to `workspace(i)`; returns the time taken.
async fn append_concurrently(
    store: &PgStore,
    key: &crate::audit::AuditKey,
    writers: usize,
    per_writer: usize,
    workspace: impl Fn(usize) -> Option<String>,
) -> Duration {
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..writers {
        let (store, key, ws) = (store.clone(), key.clone(), workspace(i));
        tasks.spawn(async move {
            for n in 0..per_writer {
                let mut client = store.client().await.unwrap();
                let tx = client.transaction().await.unwrap();
                audit::append(
                    &tx,
                    &key,
                    UnixMillis::now(),
                    &[audit_entry(ws.as_deref(), n)],
                )
                .await
                .unwrap();
                tx.commit().await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    started.elapsed()
}

async fn verify_all(
    store: &PgStore,
    key: &crate::audit::AuditKey,
) -> std::collections::BTreeMap<String, crate::audit::VerifyReport> {
    let mut client = store.client().await.unwrap();
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .unwrap();
    let reports = audit::verify(&tx, key).await.unwrap();
    tx.commit().await.unwrap();
    reports
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_chains_per_workspace_take_concurrent_writers_and_find_tampering() {
    let (_server, url) = database("audit").await;
    let store = PgStore::connect(
        &url,
        PgOptions {
            max_connections: 16,
            ..PgOptions::default()
        },
    )
    .await
    .unwrap();
    let key = crate::audit::AuditKey::from_bytes([9; 32]);
    let (writers, each) = (8, 40);
    // Eight writers on eight workspaces: eight chains, no shared head row.
    let spread = append_concurrently(&store, &key, writers, each, |i| Some(format!("ws{i}"))).await;
    // Eight writers on one workspace: one chain, every append waits its turn.
    let one = append_concurrently(&store, &key, writers, each, |_| Some("busy".into())).await;
    // And entries of no workspace, in their own chain.
    append_concurrently(&store, &key, 1, 5, |_| None).await;
    eprintln!(
        "audit appends, {writers} writers x {each} commits: per-workspace chains {spread:?}, one chain {one:?} ({:.2}x)",
        one.as_secs_f64() / spread.as_secs_f64()
    );

    let reports = verify_all(&store, &key).await;
    assert_eq!(reports.len(), writers + 2, "{reports:?}");
    for (chain, report) in &reports {
        assert!(report.is_intact(), "{chain}: {report}");
    }
    assert_eq!(reports["busy"].entries, (writers * each) as u64);
    assert_eq!(reports["ws3"].entries, each as u64);
    assert_eq!(reports[""].entries, 5);

    // A wrong key verifies nothing.
    let wrong = verify_all(&store, &crate::audit::AuditKey::from_bytes([8; 32])).await;
    assert_eq!(wrong["ws0"].verified, 0);

    // Tampering, by someone who can write the database (and drops the
    // append-only trigger first): each change is found in its chain only.
    let client = store.client().await.unwrap();
    client
        .batch_execute(
            "ALTER TABLE audit DISABLE TRIGGER audit_no_change;
             UPDATE audit SET actor = 'mallory' WHERE chain = 'ws1' AND seq = 7;
             DELETE FROM audit WHERE chain = 'ws2' AND seq = 3;
             UPDATE audit SET chain = 'ws5', seq = 1000 WHERE chain = 'ws4' AND seq = 2;
             ALTER TABLE audit ENABLE TRIGGER audit_no_change;",
        )
        .await
        .unwrap();
    let reports = verify_all(&store, &key).await;
    let problems = |chain: &str| -> Vec<String> {
        reports[chain]
            .problems
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(
        problems("ws1"),
        vec!["entry 7 was edited: its MAC does not match its content"]
    );
    assert!(
        problems("ws2")[0].contains("entry 3 was removed"),
        "{:?}",
        problems("ws2")
    );
    assert!(
        problems("ws4")[0].contains("entry 2 was removed"),
        "{:?}",
        problems("ws4")
    );
    assert!(
        problems("ws5")
            .iter()
            .any(|p| p.contains("written for workspace `ws4`")),
        "{:?}",
        problems("ws5")
    );
    for untouched in ["ws0", "ws3", "ws6", "ws7", "busy", ""] {
        assert!(
            reports[untouched].is_intact(),
            "{untouched}: {}",
            reports[untouched]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_racing_for_a_new_key_share_one_and_a_rotation_reaches_every_node() {
    use crate::keys::{self, MasterKey};
    let (_server, url) = database("keys").await;
    let a = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let b = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let old = MasterKey::generate();
    let old_b = MasterKey::from_base64(&old.to_base64()).unwrap();
    // Both nodes start at once with the same key: one fingerprint recorded.
    let (ra, rb) = tokio::join!(a.check_key(&old), b.check_key(&old_b));
    ra.unwrap();
    rb.unwrap();
    let stranger = MasterKey::generate();
    let e = b.check_key(&stranger).await.unwrap_err();
    assert!(matches!(e, StorageError::WrongKey(_)), "{e}");
    assert!(e.to_string().contains(&old.fingerprint()), "{e}");

    // A new workspace's key, asked for by both nodes at once: one key.
    let (ka, kb) = tokio::join!(a.data_key("ws", &old, true), b.data_key("ws", &old_b, true));
    let (ka, kb) = (ka.unwrap().unwrap(), kb.unwrap().unwrap());
    let sealed = keys::seal(&ka, b"order 42", b"aad").unwrap();
    assert_eq!(&keys::open(&kb, &sealed, b"aad").unwrap()[..], b"order 42");
    assert!(a.data_key("nobody", &old, false).await.unwrap().is_none());
    // The audit key too: what one node chains, the other verifies.
    let (aa, ab) = tokio::join!(a.audit_key(&old), b.audit_key(&old_b));
    let (aa, ab) = (aa.unwrap(), ab.unwrap());
    append_concurrently(&a, &aa, 1, 3, |_| Some("ws".into())).await;
    assert!(verify_all(&b, &ab).await["ws"].is_intact());

    // A rotation on node a, with its audit entry in the same transaction.
    let new = MasterKey::generate();
    let wrong = a
        .rotate_master_key(&stranger, &new, &aa, &audit_entry(None, 0))
        .await
        .unwrap_err();
    assert!(matches!(wrong, StorageError::WrongKey(_)), "{wrong}");
    assert_eq!(
        a.master_fingerprint().await.unwrap(),
        Some(old.fingerprint())
    );
    let n = a
        .rotate_master_key(&old, &new, &aa, &audit_entry(None, 1))
        .await
        .unwrap();
    assert_eq!(n, 1);
    // Node b sees the new fingerprint, and its old key is refused now.
    assert_eq!(
        b.master_fingerprint().await.unwrap(),
        Some(new.fingerprint())
    );
    assert!(matches!(
        b.check_key(&old_b).await.unwrap_err(),
        StorageError::WrongKey(_)
    ));
    assert!(matches!(
        b.data_key("ws", &old_b, false).await.unwrap_err(),
        StorageError::Damaged { .. }
    ));
    // With the new key it reads the same data key and the same audit key.
    let again = b.data_key("ws", &new, false).await.unwrap().unwrap();
    assert_eq!(
        &keys::open(&again, &sealed, b"aad").unwrap()[..],
        b"order 42"
    );
    let audit_new = b.audit_key(&new).await.unwrap();
    let reports = verify_all(&b, &audit_new).await;
    assert!(reports["ws"].is_intact(), "{}", reports["ws"]);
    assert!(
        reports[""].is_intact(),
        "the rotation's entry: {}",
        reports[""]
    );
    assert_eq!(reports[""].entries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_moves_between_nodes_sealed_fenced_and_audited() {
    use crate::keys::MasterKey;
    use crate::storage::{Enqueued, JobState, NewJob, StepCommit};
    let (_server, url) = database("jobs").await;
    let a = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let b = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let master = MasterKey::generate();
    a.check_key(&master).await.unwrap();
    let dk = a.data_key("ws", &master, true).await.unwrap().unwrap();
    let audit_key = a.audit_key(&master).await.unwrap();
    let new_job = |id: &str, key: Option<&str>| NewJob {
        id: id.into(),
        workspace: "ws".into(),
        recipe: "sync".into(),
        environment: "prod".into(),
        trigger_kind: "webhook".into(),
        payload: serde_json::json!({ "order": 42, "email": "ada@example.test" }),
        idempotency_key: key.map(String::from),
        rerun_of: None,
        created_at: UnixMillis::now(),
    };
    // No recipe deployed: refused, nothing written.
    let e = a
        .enqueue(
            &dk,
            &audit_key,
            &new_job("job_0", None),
            Some(&audit_entry(Some("ws"), 0)),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, StorageError::NotFound { what: "recipe", .. }),
        "{e}"
    );
    a.client()
        .await
        .unwrap()
        .execute(
            "INSERT INTO recipes (workspace, name, manifest, lock, imported_at) VALUES ('ws', 'sync', '', '{}', 0)",
            &[],
        )
        .await
        .unwrap();
    let first = a
        .enqueue(
            &dk,
            &audit_key,
            &new_job("job_1", Some("delivery-7")),
            Some(&audit_entry(Some("ws"), 1)),
        )
        .await
        .unwrap();
    assert_eq!(first, Enqueued::New("job_1".into()));
    // The same delivery through the other node: the first job stands.
    let again = b
        .enqueue(
            &dk,
            &audit_key,
            &new_job("job_2", Some("delivery-7")),
            Some(&audit_entry(Some("ws"), 2)),
        )
        .await
        .unwrap();
    assert_eq!(again, Enqueued::Duplicate("job_1".into()));
    assert_eq!(a.backlog().await.unwrap(), 1);
    // The payload is sealed at rest.
    let raw: Vec<u8> = a
        .client()
        .await
        .unwrap()
        .query_one("SELECT payload FROM jobs WHERE id = 'job_1'", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!String::from_utf8_lossy(&raw).contains("ada@example.test"));

    // Node a claims (its lease lapses at once), starts, commits step 0.
    a.heartbeat("a", 1).await.unwrap();
    let claim = a.claim_jobs("a", request(1, 1)).await.unwrap().remove(0);
    let started = a.start_job(&dk, "a", &claim).await.unwrap().unwrap();
    assert_eq!(started.payload["email"], "ada@example.test");
    assert_eq!(started.resume.next, 0);
    let step = |node: &str, epoch: i64, index: usize| StepCommit {
        job: "job_1".into(),
        workspace: "ws".into(),
        claim: (node.into(), epoch),
        index,
        step: format!("s{index}"),
        status: "succeeded".into(),
        history: serde_json::json!({ "step": format!("s{index}") }),
        checkpoint: Some((
            serde_json::json!({ "id": index }),
            vec!["tok-secret".into()],
        )),
    };
    assert!(
        a.commit_step(&dk, &step("a", claim.epoch, 0))
            .await
            .unwrap()
    );
    tokio::time::sleep(Duration::from_millis(20)).await;

    // Node b takes it over and resumes after step 0, with its marks.
    b.heartbeat("b", LONG).await.unwrap();
    let taken = b.claim_jobs("b", request(1, 1)).await.unwrap().remove(0);
    assert!(taken.takeover);
    let resumed = b.start_job(&dk, "b", &taken).await.unwrap().unwrap();
    assert_eq!(resumed.resume.next, 1);
    assert_eq!(resumed.resume.outputs["s0"], serde_json::json!({ "id": 0 }));
    assert_eq!(resumed.resume.marked, vec!["tok-secret".to_string()]);

    // Node a wakes up: its step and its end are refused and write nothing.
    let late = a
        .commit_step(&dk, &step("a", claim.epoch, 1))
        .await
        .unwrap_err();
    assert!(matches!(late, StorageError::LeaseLost { .. }), "{late}");
    let late = a
        .finish_job(
            &dk,
            &audit_key,
            ("a", claim.epoch),
            "ws",
            "job_1",
            JobState::Failed,
            Some("late".into()),
            &[],
        )
        .await
        .unwrap_err();
    assert!(matches!(late, StorageError::LeaseLost { .. }), "{late}");
    let steps: i64 = a
        .client()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM job_steps WHERE job = 'job_1'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(steps, 1);

    // Cancelled through node a while b runs it: b sees it at its next commit.
    assert_eq!(
        a.cancel_job(&audit_key, "ws", "job_1", &audit_entry(Some("ws"), 3))
            .await
            .unwrap(),
        Some(JobState::Cancelled)
    );
    assert!(
        !b.commit_step(&dk, &step("b", taken.epoch, 1))
            .await
            .unwrap()
    );
    let end = b
        .finish_job(
            &dk,
            &audit_key,
            ("b", taken.epoch),
            "ws",
            "job_1",
            JobState::Succeeded,
            None,
            &[audit_entry(Some("ws"), 4)],
        )
        .await
        .unwrap();
    assert_eq!(end, JobState::Cancelled, "the cancellation wins");
    let checkpoints: i64 = b
        .client()
        .await
        .unwrap()
        .query_one(
            "SELECT count(*) FROM job_steps WHERE job = 'job_1' AND checkpoint IS NOT NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(checkpoints, 0, "unmasked outputs are deleted at the end");
    assert_eq!(b.backlog().await.unwrap(), 0);
    assert_eq!(
        a.cancel_job(&audit_key, "ws", "job_1", &audit_entry(Some("ws"), 5))
            .await
            .unwrap(),
        Some(JobState::Cancelled)
    );
    assert_eq!(
        a.cancel_job(&audit_key, "other", "job_1", &audit_entry(Some("ws"), 6))
            .await
            .unwrap(),
        None
    );

    // Queued, cancelled and ended: three entries (a duplicate delivery and
    // a second cancellation record nothing), one chain, intact.
    let reports = verify_all(&a, &audit_key).await;
    assert_eq!(reports["ws"].entries, 3, "{}", reports["ws"]);
    assert!(reports["ws"].is_intact(), "{}", reports["ws"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_fire_each_schedule_slot_once() {
    use crate::keys::MasterKey;
    use crate::storage::NewJob;
    let (_server, url) = database("schedules").await;
    let master = MasterKey::generate();
    let mut nodes = Vec::new();
    for _ in 0..3 {
        nodes.push(PgStore::connect(&url, PgOptions::default()).await.unwrap());
    }
    let dk = std::sync::Arc::new(
        nodes[0]
            .data_key("ws", &master, true)
            .await
            .unwrap()
            .unwrap(),
    );
    nodes[0]
        .client()
        .await
        .unwrap()
        .batch_execute(
            "INSERT INTO recipes (workspace, name, manifest, lock, imported_at) VALUES ('ws', 'nightly', '', '{}', 0);
             INSERT INTO triggers (id, workspace, recipe, kind, environment, cron, timezone, created_at)
             VALUES ('sch_1', 'ws', 'nightly', 'schedule', 'prod', '0 * * * *', 'UTC', 0);",
        )
        .await
        .unwrap();
    let job = |n: usize, slot: i64| NewJob {
        id: format!("job_{slot}_{n}"),
        workspace: "ws".into(),
        recipe: "nightly".into(),
        environment: "prod".into(),
        trigger_kind: "schedule".into(),
        payload: serde_json::json!({ "schedule": "sch_1", "slot": slot }),
        idempotency_key: None,
        rerun_of: None,
        created_at: UnixMillis::now(),
    };
    // Every node's scheduler ticks at once, several times, for each slot;
    // a stale tick for an older slot comes late.
    let mut fired_per_slot = Vec::new();
    for slot in [3_600_000_i64, 7_200_000, 3_600_000, 10_800_000] {
        let mut tasks = tokio::task::JoinSet::new();
        for (n, node) in nodes.iter().enumerate() {
            for tick in 0..4 {
                let (node, dk, job) = (
                    node.clone(),
                    std::sync::Arc::clone(&dk),
                    job(n * 10 + tick, slot),
                );
                tasks.spawn(async move {
                    node.fire_schedule(&dk, "sch_1", UnixMillis(slot), &job)
                        .await
                        .unwrap()
                });
            }
        }
        let mut fired = 0;
        while let Some(done) = tasks.join_next().await {
            fired += usize::from(done.unwrap());
        }
        fired_per_slot.push(fired);
    }
    assert_eq!(
        fired_per_slot,
        vec![1, 1, 0, 1],
        "each new slot once, the late tick never"
    );
    let keys: Vec<String> = nodes[0]
        .client()
        .await
        .unwrap()
        .query("SELECT slot_key FROM jobs ORDER BY slot_key", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        keys,
        vec!["sch_1@10800000", "sch_1@3600000", "sch_1@7200000"],
        "one job per slot, none for the late tick of an older slot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_woken_by_work_queued_through_another_and_its_listener_comes_back() {
    let (_server, url) = database("wake").await;
    let a = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let b = PgStore::connect(&url, PgOptions::default()).await.unwrap();
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    b.listen(std::sync::Arc::clone(&wake));
    let woken = async |what: &str| {
        tokio::time::timeout(Duration::from_secs(10), wake.notified())
            .await
            .unwrap_or_else(|_| panic!("no wake-up: {what}"));
    };
    // The first wake-up says the listener is (re)connected.
    woken("listening").await;
    a.notify_jobs().await.unwrap();
    woken("work queued through node a").await;

    // The listener's connection is cut (a failover, a restart of the
    // server's backend): it comes back, says so, and hears the next one.
    let cut: i64 = a
        .client()
        .await
        .unwrap()
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cut, 1);
    woken("reconnected").await;
    a.notify_jobs().await.unwrap();
    woken("work queued after the reconnection").await;
}

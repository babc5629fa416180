//! Job history and the audit log: secrets never stored or shown, history
//! sealed at rest, deletion by criteria, retention, and tampering with the
//! audit log detected by `wrun audit verify`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{Value, json};
use wrun_tests::{MockServer, TestPki, assert_absent, canary, guests_dir};

use crate::support::{Api, Reply, Site, noop_bundle, with_stdin};

/// Keeps every response body a test saw, for the canary scan.
#[derive(Default)]
struct Seen(Vec<u8>);

impl Seen {
    fn keep(&mut self, r: Reply) -> Reply {
        self.0.extend_from_slice(&r.raw);
        self.0.push(b'\n');
        r
    }
}

/// Exports a recipe that fetches an issue from the mock GitHub with the
/// connection `github`; returns the bundle's path.
fn issue_bundle(site: &Site) -> PathBuf {
    let dir = site.dir.join("recipe-issue");
    std::fs::create_dir_all(dir.join("components")).unwrap();
    std::fs::copy(
        guests_dir().join("github_issue.wasm"),
        dir.join("components/github-issue.wasm"),
    )
    .unwrap();
    std::fs::write(
        dir.join("recipe.toml"),
        r#"[recipe]
name = "issue"

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
"#,
    )
    .unwrap();
    let bundle = site.dir.join("issue.tgz");
    site.ok(site
        .wrun()
        .args(["export"])
        .arg(dir.join("recipe.toml"))
        .arg("-o")
        .arg(&bundle));
    bundle
}

/// The whole audit log, through `wrun audit stream`.
fn audit_stream(site: &Site) -> String {
    site.ok(site.wrun().args(["audit", "stream"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_trigger_data_stay_out_of_responses_logs_and_disk() {
    let pki = TestPki::new(&["api.github.test"]);
    let github = MockServer::start(&pki).await;
    let secret = canary("daemon");
    let personal = canary("trigger");
    github.set_expected_bearer(secret.clone());

    let site = Site::new("");
    std::fs::write(site.dir.join("ca.pem"), pki.ca_pem()).unwrap();
    site.member("team-a", "alice", "admin");
    let token = site.token("team-a", "alice", "*:write");
    let bundle = issue_bundle(&site);
    let ca = site.dir.join("ca.pem");
    let mut daemon = site.start_with(&[
        ("WRUN_CA_FILE", ca.to_str().unwrap()),
        ("WRUN_ALLOW_RANGES", "127.0.0.0/8"),
        ("WRUN_RESOLVE", "api.github.test=127.0.0.1"),
    ]);
    let mut api = daemon.client().await;
    let mut seen = Seen::default();
    let ws = "/v1/workspaces/team-a";

    let r = seen.keep(api.deploy("team-a", "issue", &token, &bundle).await);
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = seen.keep(
        api.put(
            &format!("{ws}/connections/gh"),
            &token,
            &json!({ "value": secret, "hosts": ["api.github.test:*"] }),
        )
        .await,
    );
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    // Refused connections do not echo the value.
    for body in [
        json!({ "value": secret, "hosts": ["not a host at all"] }),
        json!({ "value": secret, "hosts": ["api.github.test:*"], "placement": "header:X={value}" }),
        json!({ "value": secret, "hosts": "api.github.test" }),
    ] {
        let r = seen.keep(
            api.put(&format!("{ws}/connections/bad"), &token, &body)
                .await,
        );
        assert!(r.status.is_client_error(), "{}", r.json);
    }
    // A guessable value is refused with the rule, without the value.
    for (value, placement) in [
        ("pin-4817", "header:Authorization=Bearer {}"),
        ("admin:password1234", "basic"),
    ] {
        let body =
            json!({ "value": value, "hosts": ["api.github.test:*"], "placement": placement });
        let r = api
            .put(&format!("{ws}/connections/weak"), &token, &body)
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);
        assert_eq!(
            r.json["error"]["code"], "weak_connection_value",
            "{}",
            r.json
        );
        let message = r.json["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("10^12 guesses"), "{message}");
        assert!(!r.json.to_string().contains(value), "{}", r.json);
    }
    let r = seen.keep(
        api.put(
            &format!("{ws}/environments/prod/bindings/github"),
            &token,
            &json!({ "connection": "gh" }),
        )
        .await,
    );
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.json);
    let r = seen.keep(
        api.put(
            &format!("{ws}/environments/prod/properties/github_api"),
            &token,
            &json!({ "value": format!("https://api.github.test:{}", github.port()) }),
        )
        .await,
    );
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.json);

    // Listing connections shows names and hosts, never a value.
    let r = seen.keep(api.get(&format!("{ws}/connections"), &token).await);
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let list = r.json["connections"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{}", r.json);
    assert_eq!(list[0]["name"], "gh");
    assert_eq!(list[0]["hosts"], json!(["api.github.test:*"]));
    assert!(list[0].get("value").is_none(), "{}", r.json);

    // A job that uses the secret.
    let input = json!({ "owner": personal, "repo": "hello", "number": 7 });
    let r = seen.keep(
        api.post(
            &format!("{ws}/recipes/issue/runs"),
            &token,
            &json!({ "environment": "prod", "input": input }),
        )
        .await,
    );
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let ok_job = r.json["job"].as_str().unwrap().to_string();
    let detail = api.wait_job("team-a", &ok_job, &token).await;
    assert_eq!(detail["state"], "succeeded", "{detail}");
    assert_eq!(
        github.requests()[0].header("authorization"),
        Some(format!("Bearer {secret}").as_str()),
        "the step did not send the connection"
    );
    // The trigger data is shown to whoever may read the job.
    let r = seen_personal(&mut api, &format!("{ws}/jobs/{ok_job}"), &token).await;
    assert_eq!(r.json["input"]["owner"], personal.as_str(), "{}", r.json);
    assert!(String::from_utf8_lossy(&r.raw).contains(&personal));
    seen.0.extend(strip(&r.raw, &personal));

    // A job that fails: the upstream now refuses the token.
    github.set_expected_bearer("something-else");
    let r = seen.keep(
        api.post(
            &format!("{ws}/recipes/issue/runs"),
            &token,
            &json!({ "environment": "prod", "input": { "owner": "octo", "repo": "hello", "number": 8 } }),
        )
        .await,
    );
    let bad_job = r.json["job"].as_str().unwrap().to_string();
    let detail = api.wait_job("team-a", &bad_job, &token).await;
    assert_eq!(detail["state"], "failed", "{detail}");
    seen.0.extend(detail.to_string().into_bytes());
    // A rerun of the failed job fails the same way.
    let r = seen.keep(
        api.send(
            Method::POST,
            &format!("{ws}/jobs/{bad_job}/rerun"),
            Some(&token),
            None,
        )
        .await,
    );
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let rerun = r.json["job"].as_str().unwrap().to_string();
    let detail = api.wait_job("team-a", &rerun, &token).await;
    assert_eq!(detail["state"], "failed", "{detail}");
    seen.0.extend(detail.to_string().into_bytes());
    for path in [
        format!("{ws}/jobs"),
        format!("{ws}/environments/prod"),
        format!("{ws}/recipes/issue"),
        format!("{ws}/audit"),
        format!("{ws}/tokens"),
        "/metrics".to_string(),
    ] {
        let r = seen.keep(api.get(&path, &token).await);
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.json);
    }

    assert_eq!(daemon.terminate().code(), Some(0));
    assert_absent(&seen.0, &[&secret], "API responses");
    assert_absent(&site.logs(), &[&secret, &personal], "the daemon's logs");
    assert_absent(
        audit_stream(&site).as_bytes(),
        &[&secret, &personal],
        "the audit log",
    );
    assert_absent(&site.db_bytes(), &[&secret, &personal], "the database");
    // Sanity: the scan does find what is there.
    assert!(wrun_tests::find_encoded(&seen.0, &["gh"]).is_some());
}

/// GETs a path whose body is allowed to hold `personal` (a trigger value).
async fn seen_personal(api: &mut Api, path: &str, token: &str) -> Reply {
    let r = api.get(path, token).await;
    assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.json);
    r
}

/// `raw` without the occurrences of `needle` (which may appear there).
fn strip(raw: &[u8], needle: &str) -> Vec<u8> {
    String::from_utf8_lossy(raw)
        .replace(needle, "")
        .into_bytes()
}

/// Runs `recipe` with `{"value": value}` and waits for the end.
async fn run(api: &mut Api, token: &str, ws: &str, recipe: &str, value: &str) -> String {
    let r = api
        .post(
            &format!("/v1/workspaces/{ws}/recipes/{recipe}/runs"),
            token,
            &json!({ "environment": "prod", "input": { "value": value } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let id = r.json["job"].as_str().unwrap().to_string();
    let detail = api.wait_job(ws, &id, token).await;
    assert_eq!(detail["state"], "succeeded", "{detail}");
    id
}

/// The ids of a workspace's jobs, sorted.
async fn job_ids(api: &mut Api, token: &str, ws: &str) -> Vec<String> {
    let r = api.get(&format!("/v1/workspaces/{ws}/jobs"), token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let mut ids: Vec<String> = r.json["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids
}

fn sorted(ids: &[&String]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| (*s).clone()).collect();
    v.sort();
    v
}

fn now_millis() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_deleted_by_value_recipe_and_time() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    let token = site.token("team-a", "alice", "*:write");
    let three = noop_bundle(&site, "three", 1);
    let other = noop_bundle(&site, "other", 1);
    let daemon = site.start();
    let mut api = daemon.client().await;
    for (name, bundle) in [("three", &three), ("other", &other)] {
        let r = api.deploy("team-a", name, &token, bundle).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    }
    let email = canary("email");
    let a = run(&mut api, &token, "team-a", "three", &email).await;
    let b = run(&mut api, &token, "team-a", "three", &email).await;
    let c = run(&mut api, &token, "team-a", "three", "b2").await;
    let d = run(&mut api, &token, "team-a", "other", "b2").await;
    let e = run(&mut api, &token, "team-a", "other", "c3").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mid = now_millis();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let f = run(&mut api, &token, "team-a", "three", "z9").await;
    assert_eq!(
        job_ids(&mut api, &token, "team-a").await,
        sorted(&[&a, &b, &c, &d, &e, &f])
    );

    let delete = "/v1/workspaces/team-a/jobs/delete";
    let r = api.post(delete, &token, &json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);
    assert_eq!(r.json["error"]["code"], "no_criteria");
    let r = api
        .post(delete, &token, &json!({ "field": "/value" }))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);
    let r = api
        .post(delete, &token, &json!({ "field": "value", "value": "b2" }))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);
    assert_eq!(job_ids(&mut api, &token, "team-a").await.len(), 6);

    let r = api
        .post(
            delete,
            &token,
            &json!({ "field": "/value", "value": email }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["deleted"], 2);
    assert_eq!(
        job_ids(&mut api, &token, "team-a").await,
        sorted(&[&c, &d, &e, &f])
    );
    let r = api
        .get(&format!("/v1/workspaces/team-a/jobs/{a}"), &token)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.json);

    let r = api
        .post(delete, &token, &json!({ "recipe": "other" }))
        .await;
    assert_eq!(r.json["deleted"], 2, "{}", r.json);
    assert_eq!(job_ids(&mut api, &token, "team-a").await, sorted(&[&c, &f]));
    let r = api.post(delete, &token, &json!({ "from": mid })).await;
    assert_eq!(r.json["deleted"], 1, "{}", r.json);
    assert_eq!(job_ids(&mut api, &token, "team-a").await, sorted(&[&c]));
    let r = api.post(delete, &token, &json!({ "to": mid })).await;
    assert_eq!(r.json["deleted"], 1, "{}", r.json);
    assert!(job_ids(&mut api, &token, "team-a").await.is_empty());

    // Each deletion is audited with its count and criteria, never the value.
    let r = api.get("/v1/workspaces/team-a/audit", &token).await;
    let deletions: Vec<&Value> = r.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "jobs.delete")
        .collect();
    let counts: Vec<i64> = deletions
        .iter()
        .map(|e| e["detail"]["deleted"].as_i64().unwrap())
        .collect();
    assert_eq!(counts, [2, 2, 1, 1], "{}", r.json);
    assert_eq!(deletions[0]["detail"]["field"], "/value");
    assert_eq!(deletions[1]["detail"]["recipe"], "other");
    assert_eq!(deletions[0]["actor"], "alice");
    assert_absent(&r.raw, &[&email], "the audit log");
    assert_absent(
        audit_stream(&site).as_bytes(),
        &[&email],
        "the audit stream",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_history_older_than_the_setting() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    site.member("team-b", "bob", "admin");
    let alice = site.token("team-a", "alice", "*:write");
    let bob = site.token("team-b", "bob", "*:write");
    let bundle = noop_bundle(&site, "three", 1);
    let mut daemon = site.start();
    let mut api = daemon.client().await;
    for (ws, token) in [("team-a", &alice), ("team-b", &bob)] {
        let r = api.deploy(ws, "three", token, &bundle).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    }
    let settings = "/v1/workspaces/team-a/settings";
    let r = api.get(settings, &alice).await;
    assert_eq!(
        r.json,
        json!({ "retention_days": null, "session_idle_secs": 1800 })
    );
    let r = api
        .put(settings, &alice, &json!({ "retention_days": 0 }))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);
    let r = api
        .put(settings, &alice, &json!({ "retention_days": 1 }))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api.get(settings, &alice).await;
    assert_eq!(
        r.json,
        json!({ "retention_days": 1, "session_idle_secs": 1800 })
    );
    // A change of one setting leaves the others as they are.
    let r = api
        .put(settings, &alice, &json!({ "session_idle_secs": 600 }))
        .await;
    assert_eq!(
        r.json,
        json!({ "retention_days": 1, "session_idle_secs": 600 })
    );
    let r = api
        .put(settings, &alice, &json!({ "session_idle_secs": 5 }))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);

    let old = run(&mut api, &alice, "team-a", "three", "old").await;
    let recent = run(&mut api, &alice, "team-a", "three", "recent").await;
    let old_b = run(&mut api, &bob, "team-b", "three", "old").await;
    drop(api);
    assert_eq!(daemon.terminate().code(), Some(0));

    // Two days pass for two of the jobs (there is no fake clock: the rows
    // are aged in the database, as the sweep reads `created_at`).
    let db = rusqlite::Connection::open(site.db()).unwrap();
    let n = db
        .execute(
            "UPDATE jobs SET created_at = created_at - 2 * 86400000 WHERE id IN (?1, ?2)",
            rusqlite::params![old, old_b],
        )
        .unwrap();
    assert_eq!(n, 2);
    drop(db);

    // The sweep runs when the daemon starts.
    let daemon = site.start();
    let mut api = daemon.client().await;
    let mut gone = false;
    for _ in 0..100 {
        if !job_ids(&mut api, &alice, "team-a").await.contains(&old) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(gone, "the old job of team-a was not swept");
    assert_eq!(job_ids(&mut api, &alice, "team-a").await, [recent]);
    // team-b keeps its history forever (no retention set).
    assert_eq!(job_ids(&mut api, &bob, "team-b").await, [old_b]);
    let r = api.get("/v1/workspaces/team-a/audit", &alice).await;
    let sweep: Vec<&Value> = r.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "jobs.retention")
        .collect();
    assert_eq!(sweep.len(), 1, "{}", r.json);
    assert_eq!(sweep[0]["detail"]["deleted"], 1);
    assert_eq!(sweep[0]["actor"], "daemon");
}

/// Copies the database (consistently) to `name` in the site's directory.
fn copy_db(site: &Site, name: &str) -> PathBuf {
    let to = site.dir.join(name);
    let db = rusqlite::Connection::open(site.db()).unwrap();
    db.execute("VACUUM INTO ?1", [to.to_str().unwrap()])
        .unwrap();
    to
}

/// Runs `wrun audit verify` on a database; returns (exit code, output).
fn verify(site: &Site, db: &Path) -> (i32, String) {
    let out = site
        .wrun()
        .env("WRUN_DB", db)
        .args(["audit", "verify"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_with_the_audit_log_is_detected() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    let token = site.token("team-a", "alice", "*:write");
    let bundle = noop_bundle(&site, "three", 1);
    let mut daemon = site.start();
    let mut api = daemon.client().await;
    let r = api.deploy("team-a", "three", &token, &bundle).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    for i in 0..3 {
        let r = api
            .put(
                &format!("/v1/workspaces/team-a/environments/prod/properties/p{i}"),
                &token,
                &json!({ "value": "v" }),
            )
            .await;
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.json);
    }
    let r = api
        .get("/v1/workspaces/team-a/recipes", "wrun_pat_bad")
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    drop(api);
    assert_eq!(daemon.terminate().code(), Some(0));

    let (code, text) = verify(&site, &site.db());
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("intact"), "{text}");
    let entries = audit_stream(&site).lines().count();
    assert!(entries >= 6, "{entries} entries");

    // The triggers stop a careless UPDATE or DELETE.
    let copy = copy_db(&site, "careless.db");
    let db = rusqlite::Connection::open(&copy).unwrap();
    assert!(
        db.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 3", [])
            .is_err()
    );
    assert!(db.execute("DELETE FROM audit WHERE seq = 3", []).is_err());
    drop(db);
    assert_eq!(verify(&site, &copy).0, 0);

    // An attacker drops them and edits an entry.
    let copy = copy_db(&site, "edited.db");
    let db = rusqlite::Connection::open(&copy).unwrap();
    db.execute_batch(
        "DROP TRIGGER audit_no_update;
         UPDATE audit SET actor = 'mallory' WHERE seq = 3;",
    )
    .unwrap();
    drop(db);
    let (code, text) = verify(&site, &copy);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("entry 3 was edited"), "{text}");
    assert!(!text.contains("entry 2 "), "{text}");

    // Removes an entry in the middle.
    let copy = copy_db(&site, "removed.db");
    let db = rusqlite::Connection::open(&copy).unwrap();
    db.execute_batch(
        "DROP TRIGGER audit_no_delete;
         DELETE FROM audit WHERE seq = 3;",
    )
    .unwrap();
    drop(db);
    let (code, text) = verify(&site, &copy);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("entry 3 was removed"), "{text}");

    // Swaps two entries.
    let copy = copy_db(&site, "swapped.db");
    let db = rusqlite::Connection::open(&copy).unwrap();
    db.execute_batch(
        "DROP TRIGGER audit_no_delete;
         CREATE TEMP TABLE moved AS SELECT * FROM audit WHERE seq IN (3, 4);
         DELETE FROM audit WHERE seq IN (3, 4);
         INSERT INTO audit SELECT 7 - seq, at, workspace, actor, action, target, source,
             outcome, detail, prev, mac FROM moved;",
    )
    .unwrap();
    drop(db);
    let (code, text) = verify(&site, &copy);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("entry 3 "), "{text}");
    assert!(text.contains("entry 4 "), "{text}");

    // Cuts the tail and leaves the head alone.
    let copy = copy_db(&site, "tail.db");
    let db = rusqlite::Connection::open(&copy).unwrap();
    let last: i64 = db
        .query_row("SELECT max(seq) FROM audit", [], |r| r.get(0))
        .unwrap();
    db.execute_batch(&format!(
        "DROP TRIGGER audit_no_delete; DELETE FROM audit WHERE seq = {last};"
    ))
    .unwrap();
    drop(db);
    let (code, text) = verify(&site, &copy);
    assert_eq!(code, 1, "{text}");

    // The original is still intact.
    assert_eq!(verify(&site, &site.db()).0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_subject_is_erased_through_the_api_and_the_cli() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    site.member("team-a", "rita", "analyst");
    let token = site.token("team-a", "alice", "*:write");
    let reader = site.token("team-a", "rita", "*:read");
    let three = noop_bundle(&site, "three", 2);
    let daemon = site.start();
    let mut api = daemon.client().await;
    let r = api.deploy("team-a", "three", &token, &three).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    // The subject reaches the payload, both steps' inputs and outputs.
    let person = canary("person");
    let a = run(&mut api, &token, "team-a", "three", &person).await;
    let b = run(
        &mut api,
        &token,
        "team-a",
        "three",
        &format!("Dear {},", person.to_uppercase()),
    )
    .await;
    let c = run(&mut api, &token, "team-a", "three", "someone-else").await;
    let job_path = |id: &str| format!("/v1/workspaces/team-a/jobs/{id}");
    let before = api.get(&job_path(&a), &token).await;
    assert!(String::from_utf8_lossy(&before.raw).contains(&person));

    let erase = "/v1/workspaces/team-a/jobs/erase";
    let body = json!({ "subject": person, "reference": "DSR-7" });
    // Nobody without the right may erase, or even search.
    let r = api.send(Method::POST, erase, None, Some(&body)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.json);
    let r = api.post(erase, &reader, &body).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    // A subject that would match too much is refused without being echoed.
    let r = api.post(erase, &token, &json!({ "subject": " q7" })).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);
    assert_eq!(r.json["error"]["code"], "invalid_subject");
    assert!(
        !String::from_utf8_lossy(&r.raw).contains("q7"),
        "{}",
        r.json
    );
    let r = api
        .post(erase, &token, &json!({ "subject": person, "extra": 1 }))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.json);

    let dry = json!({ "subject": person.to_uppercase(), "dry_run": true });
    let r = api.post(erase, &token, &dry).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(
        (&r.json["matched"], &r.json["erased"]),
        (&json!(2), &json!(0)),
        "{}",
        r.json
    );
    assert_eq!(api.get(&job_path(&a), &token).await.raw, before.raw);

    let r = api.post(erase, &token, &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["erased"], 2, "{}", r.json);
    assert_eq!(r.json["scanned"], 3, "{}", r.json);
    for id in [&a, &b] {
        let r = api.get(&job_path(id), &token).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.json);
        assert_eq!(r.json["state"], "succeeded", "{}", r.json);
        assert_eq!(r.json["input"], Value::Null, "{}", r.json);
        assert!(r.json["erased_at"].is_i64(), "{}", r.json);
        let steps = r.json["steps"].as_array().unwrap();
        assert_eq!(steps.len(), 2, "{}", r.json);
        assert!(
            steps
                .iter()
                .all(|s| s["erased"] == true && s["output"].is_null())
        );
        assert_absent(&r.raw, &[&person, &person.to_uppercase()], "an erased job");
        // There is nothing left to run again.
        let r = api
            .post(&format!("{}/rerun", job_path(id)), &token, &json!({}))
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.json);
        assert_eq!(r.json["error"]["code"], "job_erased");
    }
    let kept = api.get(&job_path(&c), &token).await;
    assert_eq!(kept.json["input"]["value"], "someone-else", "{}", kept.json);
    assert!(kept.json.get("erased_at").is_none(), "{}", kept.json);
    // The jobs stay listed: ids, recipe, states and times identify nobody.
    assert_eq!(
        job_ids(&mut api, &token, "team-a").await,
        sorted(&[&a, &b, &c])
    );

    // The command line runs the same operation on the same database, with
    // the subject on stdin (out of the shell history and process list).
    let d = run(&mut api, &token, "team-a", "three", &person).await;
    let (ok, out) = with_stdin(
        site.wrun().args([
            "--workspace",
            "team-a",
            "jobs",
            "erase",
            "--reference",
            "DSR-8",
        ]),
        &format!("{person}\n"),
    );
    assert!(ok, "{out}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["erased"], 1, "{out}");
    let r = api.get(&job_path(&d), &token).await;
    assert!(r.json["erased_at"].is_i64(), "{}", r.json);

    // Each erasure (and the dry run) is audited with its counts and
    // reference, never with the subject.
    let r = api.get("/v1/workspaces/team-a/audit", &token).await;
    let erasures: Vec<&Value> = r.json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "jobs.erase")
        .collect();
    assert_eq!(erasures.len(), 3, "{}", r.json);
    assert_eq!(erasures[0]["detail"]["dry_run"], true);
    assert_eq!(erasures[1]["detail"]["erased"], 2);
    assert_eq!(erasures[1]["detail"]["reference"], "DSR-7");
    assert_eq!(erasures[1]["actor"], "alice");
    assert!(
        erasures[2]["actor"].as_str().unwrap().starts_with("cli:"),
        "{}",
        r.json
    );
    let upper = person.to_uppercase();
    assert_absent(&r.raw, &[&person, &upper], "the audit log");
    assert_absent(
        audit_stream(&site).as_bytes(),
        &[&person, &upper],
        "the audit stream",
    );
    assert_absent(&site.logs(), &[&person, &upper], "the daemon's logs");
}

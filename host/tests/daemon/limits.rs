//! Outbound limits per connection, from the guest side: a step that uses
//! its connection far past the limit gets its extra requests refused before
//! they leave (the upstream sees only the allowed ones), and an upstream's
//! `429` with `Retry-After` holds the connection for every later request.

use http::StatusCode;
use serde_json::json;
use wrun_tests::{MockServer, TestPki, canary};

use crate::crash::{WS, deploy, site};
use crate::support::{Api, bundle};

/// A recipe `name` of one hostile step sending `count` requests to `path`
/// on the mock with connection `crm` applied.
fn drill_bundle(
    site: &crate::support::Site,
    name: &str,
    port: u16,
    path: &str,
    count: u32,
    vary: bool,
) -> std::path::PathBuf {
    let text = format!(
        "[recipe]\nname = \"{name}\"\n\n[trigger]\nkind = \"manual\"\n\n[[steps]]\nname = \"send\"\n\
         component = \"components/hostile.wasm\"\naction = \"many-requests\"\n\
         input = {{ url = \"https://api.crm.test:{port}{path}\", count = {count}, keep_going = true, auth = \"api\", vary_path = {vary} }}\n\n\
         [steps.grants]\nnet = [\"api.crm.test:{port}\"]\nsecrets = {{ api = \"crm\" }}\nenv = [\"unused\"]\ntimeout = \"60s\"\n"
    );
    bundle(site, name, "hostile.wasm", &text)
}

/// Adds connection `crm` for the mock's host.
async fn add_crm(api: &mut Api, token: &str, secret: &str, port: u16) {
    let r = api
        .put(
            &format!("/v1/workspaces/{WS}/connections/crm"),
            token,
            &json!({ "value": secret, "hosts": [format!("api.crm.test:{port}")] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
}

async fn run(api: &mut Api, token: &str, recipe: &str) -> serde_json::Value {
    let r = api
        .post(
            &format!("/v1/workspaces/{WS}/recipes/{recipe}/runs"),
            token,
            &json!({ "environment": "prod", "input": {} }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let job = r.json["job"].as_str().unwrap().to_string();
    let detail = api.wait_job(WS, &job, token).await;
    assert_eq!(detail["state"], "succeeded", "{detail}");
    detail["steps"][0]["output"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_a_connections_limit_are_refused_before_they_leave() {
    let (site, token) = site("");
    let pki = TestPki::new(&["api.crm.test"]);
    let ca = site.dir.join("crm-ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let crm = MockServer::start(&pki).await;
    let secret = canary("crm-token");
    let daemon = site.start_with(&[
        ("WRUN_CA_FILE", ca.to_str().unwrap()),
        ("WRUN_ALLOW_RANGES", "127.0.0.0/8"),
        ("WRUN_RESOLVE", "api.crm.test=127.0.0.1"),
    ]);
    let mut api = daemon.client().await;
    let port = crm.port();
    add_crm(&mut api, &token, &secret, port).await;
    let limits = format!("/v1/workspaces/{WS}/connections/crm/limits");
    let r = api.put(&limits, &token, &json!({ "burst": 5 })).await;
    assert_eq!(
        r.status,
        StatusCode::BAD_REQUEST,
        "a burst alone means nothing: {}",
        r.json
    );
    let r = api
        .put(&limits, &token, &json!({ "requests_per_minute": 0 }))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.json);
    let r = api
        .put(
            &limits,
            &token,
            &json!({ "requests_per_minute": 6, "burst": 5, "paths_per_minute": 100 }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api.get(&limits, &token).await;
    assert_eq!(r.json["limits"]["burst"], 5, "{}", r.json);
    assert_eq!(r.json["suspended"], serde_json::Value::Null);

    // A step that suddenly sends 40 requests to 40 paths: the burst goes,
    // the rest is refused before it leaves.
    deploy(
        &mut api,
        &token,
        "drill",
        &drill_bundle(&site, "drill", port, "/contacts", 40, true),
    )
    .await;
    let out = run(&mut api, &token, "drill").await;
    let sent = out["ok"].as_u64().unwrap();
    assert!((5..=6).contains(&sent), "{out}");
    assert_eq!(out["failed"].as_u64().unwrap() + sent, 40, "{out}");
    let reason = out["first_error"].as_str().unwrap();
    assert!(
        reason.contains("over its limit of 6 requests per minute"),
        "{reason}"
    );
    let seen = crm
        .requests()
        .iter()
        .filter(|r| r.path_and_query.starts_with("/contacts"))
        .count();
    assert_eq!(seen as u64, sent, "the upstream saw only what was allowed");
    // Every request that left carried the connection.
    for r in crm.requests() {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {secret}").as_str())
        );
    }

    // The refusals are in the audit log, without the value.
    let r = api
        .get(&format!("/v1/workspaces/{WS}/audit?limit=500"), &token)
        .await;
    let text = String::from_utf8_lossy(&r.raw);
    assert!(text.contains("over its limit"), "{}", r.json);
    assert!(!text.contains(&secret));
    assert!(text.contains("connection.limits"));

    // Without limits, an upstream's 429 holds the connection for its
    // Retry-After: one request reaches it, the next ones wait (refused).
    let r = api.put(&limits, &token, &json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let before = crm.requests().len();
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await; // limits reload
    deploy(
        &mut api,
        &token,
        "polite",
        &drill_bundle(
            &site,
            "polite",
            port,
            "/status/429?retry_after=30",
            4,
            false,
        ),
    )
    .await;
    let out = run(&mut api, &token, "polite").await;
    assert_eq!(out["ok"], 1, "{out}");
    assert_eq!(out["failed"], 3, "{out}");
    assert!(
        out["first_error"].as_str().unwrap().contains("429"),
        "{out}"
    );
    assert_eq!(crm.requests().len() - before, 1);
}

/// An hour of usage of connection `crm` by recipe `sync`'s step `send`:
/// `per_minute` requests each minute (the baseline alerts compare with).
fn seed_baseline(db: &std::path::Path, per_minute: i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let minute = now - now % 60_000;
    for k in 1..=60 {
        conn.execute(
            "INSERT INTO connection_usage (workspace, connection, minute, recipe, step, job, host, requests, bytes_out)
             VALUES (?1, 'crm', ?2, 'sync', 'send', ?3, 'api.crm.test', ?4, 0)",
            rusqlite::params![WS, minute - k * 60_000, format!("job_old_{k}"), per_minute],
        )
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_token_drill_is_refused_alerted_suspended_and_traced() {
    let (site, token) = site("");
    site.member(WS, "olaf", "operator");
    let operator = site.token(WS, "olaf", "*:write");
    let pki = TestPki::new(&["api.crm.test", "hooks.ops.test"]);
    let ca = site.dir.join("crm-ca.pem");
    std::fs::write(&ca, pki.ca_pem()).unwrap();
    let crm = MockServer::start(&pki).await;
    let ops = MockServer::start(&pki).await;
    let secret = canary("crm-token");
    // The connection's usual pace: 3 requests a minute by `sync`/`send`.
    seed_baseline(&site.db(), 3);
    let hook = format!("https://hooks.ops.test:{}/alerts", ops.port());
    let daemon = site.start_with(&[
        ("WRUN_CA_FILE", ca.to_str().unwrap()),
        ("WRUN_ALLOW_RANGES", "127.0.0.0/8"),
        (
            "WRUN_RESOLVE",
            "api.crm.test=127.0.0.1,hooks.ops.test=127.0.0.1",
        ),
        ("WRUN_ALERT_WEBHOOK_URL", hook.as_str()),
    ]);
    let mut api = daemon.client().await;
    let port = crm.port();
    add_crm(&mut api, &token, &secret, port).await;
    let limits = format!("/v1/workspaces/{WS}/connections/crm/limits");
    let r = api
        .put(
            &limits,
            &token,
            &json!({ "requests_per_minute": 120, "burst": 40, "spike_multiple": 10, "suspend_on_alert": true }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);

    // The usual caller turns hostile: 60 requests at once to new paths,
    // twenty times its pace. Ten times the baseline (30) go, the 31st
    // raises the alert and suspends the connection; nothing else leaves.
    deploy(
        &mut api,
        &token,
        "sync",
        &drill_bundle(&site, "sync", port, "/export", 60, true),
    )
    .await;
    let out = run(&mut api, &token, "sync").await;
    assert_eq!(out["ok"], 30, "{out}");
    assert_eq!(out["failed"], 30, "{out}");
    assert!(
        out["first_error"]
            .as_str()
            .unwrap()
            .contains("suspended (spike alert)"),
        "{out}"
    );
    let exported = |crm: &MockServer| {
        crm.requests()
            .iter()
            .filter(|r| r.path_and_query.starts_with("/export"))
            .count()
    };
    assert_eq!(exported(&crm), 30);

    // The alert is in the audit log with the suspension, and reached the
    // operator's webhook, all within seconds.
    let mut alert = None;
    for _ in 0..100 {
        let r = api
            .get(&format!("/v1/workspaces/{WS}/audit?limit=1000"), &token)
            .await;
        let entries = r.json["entries"].as_array().unwrap().clone();
        let found = entries
            .iter()
            .find(|e| e["action"] == "connection.alert")
            .cloned();
        let suspended = entries.iter().any(|e| e["action"] == "connection.suspend");
        if let (Some(found), true) = (found, suspended) {
            assert!(!r.json.to_string().contains(&secret));
            alert = Some(found);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let alert = alert.expect("an alert and a suspension in the audit log");
    assert_eq!(alert["detail"]["kind"], "spike", "{alert}");
    assert_eq!(alert["detail"]["recipe"], "sync");
    assert_eq!(alert["detail"]["baseline_per_minute"], 3.0);
    assert_eq!(alert["actor"], "system");
    let mut posted = false;
    for _ in 0..100 {
        if ops.requests().iter().any(|r| {
            r.path_and_query == "/alerts" && String::from_utf8_lossy(&r.body).contains("\"spike\"")
        }) {
            posted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(posted, "the operator's webhook got the alert");
    assert!(!ops.raw_bytes_contain(secret.as_bytes()));
    let r = api.get(&limits, &token).await;
    assert_eq!(r.json["suspended"], "spike alert", "{}", r.json);

    // Suspended: the next job sends nothing at all.
    let out = run(&mut api, &token, "sync").await;
    assert_eq!(out["ok"], 0, "{out}");
    assert_eq!(exported(&crm), 30);

    // Only an admin resumes it.
    let resume = format!("/v1/workspaces/{WS}/connections/crm/resume");
    let r = api.post(&resume, &operator, &json!({})).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    let r = api.post(&resume, &token, &json!({})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);

    // The egress trail names the job, step, recipe and host of every
    // request that left.
    let mut rows = Vec::new();
    for _ in 0..100 {
        let r = api
            .get(
                &format!("/v1/workspaces/{WS}/connections/crm/usage"),
                &token,
            )
            .await;
        rows = r.json["usage"].as_array().unwrap().clone();
        if rows.iter().any(|u| u["requests"] == 30) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let row = rows
        .iter()
        .find(|u| u["requests"] == 30)
        .unwrap_or_else(|| panic!("no trail of the drill: {rows:?}"));
    assert_eq!(row["recipe"], "sync");
    assert_eq!(row["step"], "send");
    assert_eq!(row["host"], "api.crm.test");
    assert!(row["bytes_in"].as_u64().unwrap() > 0, "{row}");
    assert!(row["job"].as_str().unwrap().starts_with("job_"), "{row}");
    let job = row["job"].as_str().unwrap().to_string();
    let cli = site.ok(site.wrun().args([
        "--workspace",
        WS,
        "connection",
        "usage",
        "crm",
        "--since",
        "2h",
    ]));
    assert!(cli.contains(&job), "{cli}");

    // All of it is in the audit log: limits, alert, suspension, resumption.
    let r = api
        .get(&format!("/v1/workspaces/{WS}/audit?limit=1000"), &token)
        .await;
    for action in [
        "connection.limits",
        "connection.alert",
        "connection.suspend",
        "connection.resume",
    ] {
        assert!(
            r.json["entries"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["action"] == action),
            "{action} missing"
        );
    }
}

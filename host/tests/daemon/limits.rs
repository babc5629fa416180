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
    let r = api
        .put(
            &format!("/v1/workspaces/{WS}/connections/crm"),
            &token,
            &json!({ "value": secret, "hosts": [format!("api.crm.test:{port}")] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
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
    assert_eq!(r.json["burst"], 5, "{}", r.json);

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

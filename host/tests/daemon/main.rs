//! End-to-end tests of `wrun serve`: the real daemon on loopback, a real
//! HTTPS client, the access matrix, attacks on credentials, webhooks, crash
//! recovery, the audit log and canary scans.

#![allow(clippy::unwrap_used)]

mod access;
mod backlog;
mod claims;
mod console;
mod crash;
mod credentials;
mod edges;
mod endpoints;
mod governance;
mod history;
mod limits;
mod oauth;
mod one_store;
mod requests;
mod support;

use http::StatusCode;
use serde_json::json;
use support::{Site, noop_bundle};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_runs_a_three_step_job_end_to_end() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    let token = site.token("team-a", "alice", "*:write");
    let bundle = noop_bundle(&site, "three", 3);
    let daemon = site.start();
    let mut api = daemon.client().await;
    let webhook = api
        .deploy_with_webhook("team-a", "three", &token, &bundle, false)
        .await;
    let hook = webhook["id"].as_str().unwrap().to_string();
    let r = api
        .send(
            http::Method::POST,
            &format!("/hooks/{hook}"),
            None,
            Some(&json!({ "value": "hello" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let job = r.json["job"].as_str().unwrap().to_string();
    let detail = api.wait_job("team-a", &job, &token).await;
    assert_eq!(detail["state"], "succeeded", "{detail}");
    assert_eq!(detail["steps"].as_array().unwrap().len(), 3);
    assert_eq!(detail["steps"][2]["output"]["value"], "hello");

    // A redeployment replaces what the next job runs (the runner's cache
    // follows the deployment).
    let two = noop_bundle(&site, "three", 2);
    let r = api.deploy("team-a", "three", &token, &two).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api
        .send(
            http::Method::POST,
            &format!("/hooks/{hook}"),
            None,
            Some(&json!({ "value": "again" })),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let job = r.json["job"].as_str().unwrap().to_string();
    let detail = api.wait_job("team-a", &job, &token).await;
    assert_eq!(detail["state"], "succeeded", "{detail}");
    assert_eq!(detail["steps"].as_array().unwrap().len(), 2, "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_master_key_rotates_while_the_daemon_runs() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    let alice = site.token("team-a", "alice", "*:write");
    let daemon = site.start();
    let mut api = daemon.client().await;
    let conn = |value: &str| json!({ "value": value, "hosts": ["api.example.com"] });
    let r = api
        .put(
            "/v1/workspaces/team-a/connections/one",
            &alice,
            &conn("value-one-3f2b8c1e7a4d4e9bb6c25d8e"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);

    // Rotate with the daemon running, then put the new key where the
    // daemon reads it.
    site.ok(site
        .wrun()
        .args(["key", "rotate", "--new-key-file"])
        .arg(site.dir.join("new.key")));
    std::fs::rename(site.dir.join("new.key"), site.dir.join("master.key")).unwrap();

    // A workspace created under the new key: the daemon reloads the key.
    site.member("team-b", "bob", "admin");
    let bob = site.token("team-b", "bob", "*:write");
    let r = api
        .put(
            "/v1/workspaces/team-b/connections/two",
            &bob,
            &conn("value-two-7a4d4e9bb6c25d8e1f0a9c73"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    // The workspace it knew keeps working.
    let r = api
        .put(
            "/v1/workspaces/team-a/connections/three",
            &alice,
            &conn("value-three-b6c25d8e1f0a9c733f2b8c1e"),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    drop(api);
    drop(daemon);

    // Everything opens with the new key, and the audit chain is intact.
    let listed = site.ok(site
        .wrun()
        .args(["--workspace", "team-a", "connection", "list"]));
    assert!(
        listed.contains("one") && listed.contains("three"),
        "{listed}"
    );
    let verify = site.ok(site.wrun().args(["audit", "verify"]));
    assert!(verify.contains("intact"), "{verify}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_bounded_and_their_inputs_sealed() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    let token = site.token("team-a", "alice", "*:write");
    let bundle = noop_bundle(&site, "three", 1);
    let daemon = site.start();
    let mut api = daemon.client().await;
    let r = api.deploy("team-a", "three", &token, &bundle).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let path = "/v1/workspaces/team-a/recipes/three/schedules";
    let secret_input = wrun_tests::canary("schedule-input");
    let body = |cron: &str| json!({ "cron": cron, "environment": "prod", "input": { "customer": secret_input } });
    // Every second, and an irregular expression with a 10-second gap once an hour.
    for cron in ["* * * * * *", "0,10 0 * * * *"] {
        let r = api.post(path, &token, &body(cron)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{cron}: {}", r.json);
        assert_eq!(
            r.json["error"]["code"], "schedule_too_frequent",
            "{}",
            r.json
        );
    }
    let r = api.post(path, &token, &body("*/5 * * * *")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let r = api
        .get("/v1/workspaces/team-a/recipes/three/triggers", &token)
        .await;
    assert_eq!(
        r.json["triggers"][0]["input"]["customer"],
        secret_input.as_str(),
        "{}",
        r.json
    );
    drop(api);
    drop(daemon);
    wrun_tests::assert_absent(&site.db_bytes(), &[secret_input.as_str()], "the database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_checked_before_a_body_is_read() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    let token = site.token("team-a", "alice", "*:write");
    let daemon = site.start();
    let mut api = daemon.client().await;
    let bad = |auth: Option<&str>| {
        let mut req = http::Request::builder()
            .method(http::Method::POST)
            .uri("/v1/workspaces/team-a/tokens")
            .header("content-type", "text/plain");
        if let Some(token) = auth {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        req.body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"{not json",
        )))
        .unwrap()
    };
    let r = api.raw(bad(None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.json);
    let r = api.raw(bad(Some(&token))).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{}", r.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_from_one_address_are_limited_before_they_are_audited() {
    let site = Site::new("[limits]\nfailures_per_second = 1\nfailure_burst = 3\n");
    site.member("team-a", "alice", "admin");
    let daemon = site.start();
    let mut api = daemon.client().await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let r = api.get("/v1/whoami", "not-a-token").await;
        statuses.push(r.status.as_u16());
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
        }
    }
    assert_eq!(statuses, [401, 401, 401, 429, 429]);
    // Guessing webhook ids from the same address is limited by the same budget.
    let r = api
        .send(
            http::Method::POST,
            "/hooks/wh_00000000000000000000000000000000",
            None,
            Some(&json!({})),
        )
        .await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.json);
    drop(api);
    drop(daemon);
    let stream = site.ok(site.wrun().args(["audit", "stream"]));
    let audited = stream
        .lines()
        .filter(|l| l.contains("\"auth.failure\""))
        .count();
    assert_eq!(audited, 3, "{stream}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_hammering_refused_hosts_cannot_flood_the_audit_log() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    let token = site.token("team-a", "alice", "*:write");
    let text = "[recipe]\nname = \"hammer\"\n\n[trigger]\nkind = \"webhook\"\n\n[[steps]]\nname = \"hammer\"\ncomponent = \"components/hostile.wasm\"\naction = \"many-requests\"\ninput = { url = \"https://not-granted.example/x\", count = 150, keep_going = true }\n\n[steps.grants]\nnet = [\"api.example.com\"]\nsecrets = { api = \"api\" }\nenv = [\"unused\"]\n";
    let hammer = support::bundle(&site, "hammer", "hostile.wasm", text);
    let daemon = site.start();
    let mut api = daemon.client().await;
    let r = api.deploy("team-a", "hammer", &token, &hammer).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api
        .put(
            "/v1/workspaces/team-a/connections/api",
            &token,
            &json!({ "value": "unused-value-1f0a9c733f2b8c1e7a4d4e9b", "hosts": ["api.example.com"] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api
        .post(
            "/v1/workspaces/team-a/recipes/hammer/runs",
            &token,
            &json!({ "environment": "prod" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let job = r.json["job"].as_str().unwrap().to_string();
    let detail = api.wait_job("team-a", &job, &token).await;
    assert_eq!(detail["steps"][0]["output"]["failed"], 150, "{detail}");
    drop(api);
    drop(daemon);
    let stream = site.ok(site.wrun().args(["audit", "stream"]));
    let refused = stream
        .lines()
        .filter(|l| l.contains("\"egress.refused\""))
        .count();
    // The runtime records a step's first 20 refusals and one summary of
    // the rest; the daemon caps a job at 100 runtime entries on top.
    assert_eq!(
        refused, 21,
        "the runtime's audit entries are capped per step"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guessing_step_fails_is_audited_and_counted_without_naming_the_candidate() {
    let site = Site::new("");
    site.member("team-a", "alice", "admin");
    let token = site.token("team-a", "alice", "*:write");
    let text = "[recipe]\nname = \"guess\"\n\n[trigger]\nkind = \"webhook\"\n\n[[steps]]\nname = \"guess\"\ncomponent = \"components/hostile.wasm\"\naction = \"guess\"\ninput = { candidates = \"{{ trigger.candidates }}\", how = \"{{ trigger.how }}\" }\n\n[steps.grants]\nnet = [\"api.example.com\"]\nsecrets = { api = \"api\" }\nenv = [\"unused\"]\n";
    let bundle = support::bundle(&site, "guess", "hostile.wasm", text);
    let daemon = site.start();
    let mut api = daemon.client().await;
    let r = api.deploy("team-a", "guess", &token, &bundle).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let value = wrun_tests::canary("guess");
    let r = api
        .put(
            "/v1/workspaces/team-a/connections/api",
            &token,
            &json!({ "value": value, "hosts": ["api.example.com"] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let mut candidates: Vec<String> = (0..20).map(|_| wrun_tests::canary("guess")).collect();
    candidates[7] = value.clone();
    let backwards: Vec<String> = candidates
        .iter()
        .map(|c| c.chars().rev().collect())
        .collect();
    // Through the guest's log (it turns the candidates around), and through
    // the step's input itself.
    for (list, how, channel) in [(&backwards, "log", "log"), (&candidates, "output", "input")] {
        let r = api
            .post(
                "/v1/workspaces/team-a/recipes/guess/runs",
                &token,
                &json!({ "environment": "prod", "input": { "candidates": list, "how": how } }),
            )
            .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
        let job = r.json["job"].as_str().unwrap().to_string();
        let detail = api.wait_job("team-a", &job, &token).await;
        assert_eq!(detail["state"], "failed", "{detail}");
        let step = &detail["steps"][0];
        let error = step["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("secret misuse") && error.contains(&format!("in its {channel},")),
            "{detail}"
        );
        // The record names no candidate and masks none.
        let record = step.to_string();
        assert!(!record.contains("***"), "{record}");
        for c in candidates.iter().chain(&backwards) {
            assert!(!record.contains(c.as_str()), "{record}");
        }
    }
    let r = api.send(http::Method::GET, "/metrics", None, None).await;
    let metrics = String::from_utf8_lossy(&r.raw).into_owned();
    assert!(
        metrics.lines().any(|l| l == "wrun_secret_misuse_total 2"),
        "{metrics}"
    );
    drop(api);
    drop(daemon);
    let stream = site.ok(site.wrun().args(["audit", "stream"]));
    let misuse: Vec<&str> = stream
        .lines()
        .filter(|l| l.contains("\"secret.misuse\""))
        .collect();
    assert_eq!(misuse.len(), 2, "{stream}");
    assert!(!stream.contains(&value), "the audit log holds the value");
}

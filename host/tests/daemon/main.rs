//! End-to-end tests of `wrun serve`: the real daemon on loopback, a real
//! HTTPS client, the access matrix, attacks on credentials, webhooks, crash
//! recovery, the audit log and canary scans.

#![allow(clippy::unwrap_used)]

mod access;
mod crash;
mod credentials;
mod history;
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
    let r = api.deploy("team-a", "three", &token, &bundle).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api
        .post(
            "/v1/workspaces/team-a/recipes/three/webhooks",
            &token,
            &json!({ "environment": "prod", "signed": false }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let hook = r.json["id"].as_str().unwrap().to_string();
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
}

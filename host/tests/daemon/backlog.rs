//! `[workers] max_backlog`: past it, webhooks and runs are answered 503 with
//! `Retry-After` and nothing is committed; once jobs finish, work is
//! accepted again.

use http::{Method, StatusCode};
use serde_json::json;

use crate::support::{Site, bundle};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_backlog_answers_503_and_commits_nothing() {
    let site = Site::new("[workers]\nconcurrency = 1\nper_workspace = 1\nmax_backlog = 3\n");
    site.member("team-a", "alice", "admin");
    let token = site.token("team-a", "alice", "*:write");
    let manifest = "[recipe]\nname = \"slow\"\n\n[trigger]\nkind = \"webhook\"\n\n\
        [[steps]]\nname = \"wait\"\ncomponent = \"components/hostile.wasm\"\naction = \"sleep\"\n\
        input = { ms = 1500 }\n\n[steps.grants]\nnet = [\"api.example.com\"]\n\
        secrets = { api = \"api\" }\nenv = [\"unused\"]\ntimeout = \"30s\"\n";
    let slow = bundle(&site, "slow", "hostile.wasm", manifest);
    let daemon = site.start();
    let mut api = daemon.client().await;
    let r = api.deploy("team-a", "slow", &token, &slow).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api
        .put(
            "/v1/workspaces/team-a/connections/api",
            &token,
            &json!({ "value": "tok-Jb5Tc8Ny2Gf7Qm4Zr9Lw1", "hosts": ["api.example.com"] }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let hook = api
        .post(
            "/v1/workspaces/team-a/recipes/slow/webhooks",
            &token,
            &json!({ "environment": "prod", "signed": false }),
        )
        .await;
    let hook = hook.json["id"].as_str().unwrap().to_string();
    let deliver = async |api: &mut crate::support::Api| {
        api.send(
            Method::POST,
            &format!("/hooks/{hook}"),
            None,
            Some(&json!({})),
        )
        .await
    };

    let mut jobs = Vec::new();
    for _ in 0..3 {
        let r = deliver(&mut api).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
        jobs.push(r.json["job"].as_str().unwrap().to_string());
    }
    // The fourth delivery and a run by hand are refused before anything is
    // committed.
    let r = deliver(&mut api).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.json);
    assert_eq!(r.json["error"]["code"], "backlog_full");
    assert_eq!(r.headers["retry-after"], "5");
    let r = api
        .post(
            "/v1/workspaces/team-a/recipes/slow/runs",
            &token,
            &json!({ "environment": "prod" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.json);
    let listed = api.get("/v1/workspaces/team-a/jobs", &token).await;
    assert_eq!(listed.json["jobs"].as_array().unwrap().len(), 3);

    // Once they are done, work is accepted again.
    for job in &jobs {
        let detail = api.wait_job("team-a", job, &token).await;
        assert_eq!(detail["state"], "succeeded", "{detail}");
    }
    let mut accepted = false;
    for _ in 0..50 {
        let r = deliver(&mut api).await;
        if r.status == StatusCode::ACCEPTED {
            accepted = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(accepted, "work is accepted again once the backlog drains");
    let metrics = api.send(Method::GET, "/metrics", None, None).await;
    let text = String::from_utf8_lossy(&metrics.raw);
    assert!(text.contains("wrun_backlog_refusals_total 2"), "{text}");
}

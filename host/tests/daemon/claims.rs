//! Tests that each daemon guarantee ARCHITECTURE.md claims is really there:
//! another workspace's ids are not found through the caller's own workspace
//! (storage-level filtering, not only the route check), a demoted member
//! loses the permission at the next request, a value a step marked stays
//! masked after a crash and resume, and a job still running past the
//! shutdown grace resumes at the next start.

use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::access::fixture;
use crate::crash::{Upstream, WS, deploy, deploy_slow, job, run_slow, site, wait_in_slow};
use crate::support::bundle;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_of_another_workspace_are_not_found_through_ones_own() {
    let f = fixture().await;
    let mut api = f.daemon.client().await;
    let (token_id, ann_token) = f.tokens[&("ann".to_string(), "write".to_string())].clone();
    // team-b's admin, in team-b's own routes, with team-a's ids: the route
    // check passes (right workspace, admin), so only the storage can say no.
    let b = "/v1/workspaces/team-b";
    let probes = [
        (Method::GET, format!("{b}/jobs/{}", f.job), None),
        (Method::POST, format!("{b}/jobs/{}/cancel", f.job), None),
        (Method::POST, format!("{b}/jobs/{}/rerun", f.job), None),
        (Method::DELETE, format!("{b}/triggers/{}", f.trigger), None),
        (Method::DELETE, format!("{b}/tokens/{token_id}"), None),
        (
            Method::DELETE,
            format!("{b}/connections/{}", f.connection),
            None,
        ),
        (Method::DELETE, format!("{b}/members/alice"), None),
        (
            Method::POST,
            format!("{b}/jobs/delete"),
            Some(json!({ "recipe": "three" })),
        ),
    ];
    for (method, path, body) in probes {
        let r = api
            .send(method.clone(), &path, Some(&f.other_admin), body.as_ref())
            .await;
        let text = String::from_utf8_lossy(&r.raw).into_owned();
        if path.ends_with("/jobs/delete") {
            // A bulk delete by recipe name deletes nothing of team-a.
            assert!(
                r.status.is_success() || r.status == StatusCode::NOT_FOUND,
                "{text}"
            );
        } else {
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {path}: {text}");
            assert_eq!(r.json["error"]["code"], "not_found", "{method} {path}");
        }
        assert!(!text.contains("fixture"), "{method} {path} leaks: {text}");
    }
    // team-b's listings do not hold team-a's objects.
    for list in ["jobs", "tokens", "connections", "members", "audit"] {
        let r = api.get(&format!("{b}/{list}"), &f.other_admin).await;
        assert_eq!(r.status, StatusCode::OK, "{list}: {}", r.json);
        let text = String::from_utf8_lossy(&r.raw);
        for id in [
            f.job.as_str(),
            &token_id,
            &f.connection,
            &f.trigger,
            "alice",
        ] {
            assert!(!text.contains(id), "team-b's {list} show `{id}`: {text}");
        }
    }

    // Nothing of team-a changed: the job (not cancelled, not rerun, not
    // deleted), the webhook, ann's token, the connection, alice.
    let a = "/v1/workspaces/team-a";
    let r = api.get(&format!("{a}/jobs/{}", f.job), &f.admin).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    assert_eq!(r.json["state"], "succeeded", "{}", r.json);
    let r = api.get(&format!("{a}/jobs"), &f.admin).await;
    assert_eq!(r.json["jobs"].as_array().unwrap().len(), 1, "{}", r.json);
    let r = api
        .get(&format!("{a}/recipes/three/triggers"), &f.admin)
        .await;
    assert!(
        r.raw
            .windows(f.trigger.len())
            .any(|w| w == f.trigger.as_bytes())
    );
    let r = api.get(&format!("{a}/jobs"), &ann_token).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "ann's token was revoked: {}",
        r.json
    );
    let r = api.get(&format!("{a}/connections"), &f.admin).await;
    assert!(
        r.raw
            .windows(f.connection.len())
            .any(|w| w == f.connection.as_bytes())
    );
    let r = api.get(&format!("{a}/members"), &f.admin).await;
    assert!(
        r.json["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["subject"] == "alice")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_member_loses_the_permission_at_the_next_request() {
    let f = fixture().await;
    let mut api = f.daemon.client().await;
    let members = "/v1/workspaces/team-a/members";
    let r = api
        .put(
            &format!("{members}/dave"),
            &f.admin,
            &json!({ "role": "admin" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api
        .post(
            "/v1/workspaces/team-a/tokens",
            &f.admin,
            &json!({ "name": "dave", "scopes": ["*:write"], "expires_in": 3600, "owner": "dave" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.json);
    let dave = r.json["token"].as_str().unwrap().to_string();
    let write = |n: usize| {
        (
            format!("/v1/workspaces/team-a/connections/dave-{n}"),
            json!({ "value": "tok-Pw3Nx8Qe5Rt2Yu7Ia9So4", "hosts": ["api.example.com"] }),
        )
    };
    // As admin, dave writes.
    let (path, body) = write(1);
    let r = api.put(&path, &dave, &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);

    // Demoted to analyst (not revoked): the very next write is refused,
    // reads still work, and dave cannot promote himself back.
    let r = api
        .put(
            &format!("{members}/dave"),
            &f.admin,
            &json!({ "role": "analyst" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let (path, body) = write(2);
    let r = api.put(&path, &dave, &body).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    let r = api
        .put(
            &format!("{members}/dave"),
            &dave,
            &json!({ "role": "admin" }),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.json);
    let r = api.get("/v1/workspaces/team-a/jobs", &dave).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.json);
    let r = api.get("/v1/workspaces/team-a/connections", &f.admin).await;
    assert!(
        !String::from_utf8_lossy(&r.raw).contains("dave-2"),
        "{}",
        r.json
    );
}

/// A recipe `marks` of three hostile steps: `mark` marks the trigger's
/// `token`, `slow` waits in the upstream's `/slow` (tagged), `echo` gets the
/// same token from the trigger, unmarked, and leaks it every way at once.
fn marks_bundle(up: &Upstream, site: &crate::support::Site) -> std::path::PathBuf {
    let port = up.mock.port();
    let grants = format!(
        "\n[steps.grants]\nnet = [\"mock.test:{port}\"]\nsecrets = {{ api = \"api\" }}\nenv = [\"unused\"]\ntimeout = \"60s\"\n"
    );
    let text = format!(
        r#"[recipe]
name = "marks"

[trigger]
kind = "manual"

[[steps]]
name = "mark"
component = "components/hostile.wasm"
action = "reveal"
input = {{ value = "{{{{ trigger.token }}}}", mark = true, how = "output" }}
{grants}
[[steps]]
name = "slow"
component = "components/hostile.wasm"
action = "http"
input = {{ url = "https://mock.test:{port}/slow?ms={{{{ trigger.ms }}}}&tag={{{{ trigger.tag }}}}" }}
{grants}
[[steps]]
name = "echo"
component = "components/hostile.wasm"
action = "reveal"
input = {{ value = "{{{{ trigger.token }}}}", how = "all" }}
{grants}"#
    );
    bundle(site, "marks", "hostile.wasm", &text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_marked_value_stays_masked_after_a_crash_and_resume() {
    let (site, token) = site("");
    let up = Upstream::new(&site).await;
    let marks = marks_bundle(&up, &site);
    let mut daemon = up.start(&site);
    let mut api = daemon.client().await;
    // The `api` connection the grants name, and the recipe.
    deploy_slow(&mut api, &token, &up.slow_bundle(&site)).await;
    deploy(&mut api, &token, "marks", &marks).await;
    let value = wrun_tests::canary("marked");
    let r = api
        .post(
            &format!("/v1/workspaces/{WS}/recipes/marks/runs"),
            &token,
            &json!({ "environment": "prod", "input": { "token": value, "ms": 3000, "tag": "marks" } }),
        )
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.json);
    let id = r.json["job"].as_str().unwrap().to_string();

    // Step `mark` is committed, `slow` under way: kill.
    wait_in_slow(&up, &mut api, &token, &id, "marks").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while job(&mut api, &token, &id).await["steps"]
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "step 1 not committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(api);
    daemon.kill9();

    // A new process resumes at `slow`; `echo` leaks the value step 1 marked.
    let daemon = up.start(&site);
    let mut api = daemon.client().await;
    let after = api.wait_job(WS, &id, &token).await;
    assert_eq!(after["state"], "succeeded", "{after}");
    assert_eq!(up.hits("/slow", "marks"), 2, "the job did not resume");
    let echo = &after["steps"][2];
    assert_eq!(echo["step"], "echo", "{after}");
    assert_eq!(echo["output"]["body"], "marked=*** ", "{after}");
    let steps = after["steps"].to_string();
    wrun_tests::assert_absent(steps.as_bytes(), &[&value], "the resumed job's history");
    drop(api);
    drop(daemon);
    let logs = site.logs();
    wrun_tests::assert_absent(&logs, &[&value], "the daemon's logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_running_past_the_shutdown_grace_resumes_at_the_next_start() {
    let (site, token) = site("[workers]\nshutdown_grace_secs = 1\n");
    let up = Upstream::new(&site).await;
    let mut daemon = up.start(&site);
    let mut api = daemon.client().await;
    deploy_slow(&mut api, &token, &up.slow_bundle(&site)).await;
    let id = run_slow(&mut api, &token, "grace", 6000).await;
    wait_in_slow(&up, &mut api, &token, &id, "grace").await;
    drop(api);

    // SIGTERM: the daemon waits one second for the job, then exits without
    // finishing it.
    let stopping = Instant::now();
    let status = tokio::task::spawn_blocking(move || {
        let status = daemon.terminate();
        drop(daemon);
        status
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "the grace was not applied"
    );
    assert_eq!(up.hits("/echo?step=last", "grace"), 0);

    // The next start resumes it after its last committed step.
    let daemon = up.start(&site);
    let mut api = daemon.client().await;
    let after: Value = api.wait_job(WS, &id, &token).await;
    assert_eq!(after["state"], "succeeded", "{after}");
    assert_eq!(after["steps"].as_array().unwrap().len(), 3, "{after}");
    assert_eq!(up.hits("/echo?step=first", "grace"), 1);
    assert_eq!(up.hits("/slow", "grace"), 2);
    assert_eq!(up.hits("/echo?step=last", "grace"), 1);
}

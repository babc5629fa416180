//! The example steps in `guests/examples`, run against the mock API as a
//! recipe author would.

use serde_json::json;
use wrun_runtime::{Error, Grants};

use crate::common::*;

#[tokio::test]
async fn github_issue_fetches_with_the_token() {
    let env = TestEnv::new().await;
    let step = env.github_step();
    let job = env.job();
    let result = job
        .run(
            &step,
            "get-issue",
            &json!({ "owner": "octo", "repo": "hello", "number": 7 }),
        )
        .await;
    env.assert_no_leak(&result);
    let out = success(result);
    assert_eq!(out.output["title"], "Issue 7 title");
    assert_eq!(out.output["author"], "octocat");
    assert_eq!(out.output["labels"], json!(["bug"]));

    let err = job
        .run(
            &step,
            "get-issue",
            &json!({ "owner": "octo", "repo": "hello", "number": 404 }),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err.error, Error::ActionFailed { .. }),
        "{}",
        err.error
    );
    assert!(err.to_string().contains("not found"), "{}", err);
}

#[tokio::test]
async fn slack_post_sends_a_message() {
    let env = TestEnv::new().await;
    let component = env.load("slack-post");
    let grants = Grants::builder()
        .net(env.host(API))
        .secret("slack", "api-token")
        .env("slack_api")
        .build()
        .unwrap();
    let step = env.engine.step("notify", &component, grants).unwrap();
    let job = env.job();
    let out = success(
        job.run(
            &step,
            "post-message",
            &json!({ "channel": "#triage", "text": "Issue 7 opened" }),
        )
        .await,
    );
    assert_eq!(out.output["ok"], true);
    assert_eq!(out.output["channel"], "#triage");
    let err = job
        .run(
            &step,
            "post-message",
            &json!({ "channel": "#missing", "text": "x" }),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("channel_not_found"), "{err}");
}

#[tokio::test]
async fn oauth_client_credentials_uses_the_body_placement_and_masks_the_token() {
    let mut env = TestEnv::new().await;
    let client_secret = wrun_tests::canary("client");
    env.server.set_expected_client_secret(client_secret.clone());
    env.connection(
        "oauth-client",
        &client_secret,
        &[env.host(AUTH)],
        "body:client_secret",
    );
    let component = env.load("oauth-token");
    let grants = Grants::builder()
        .net(env.host(AUTH))
        .secret("client", "oauth-client")
        .mask("/access_token")
        .build()
        .unwrap();
    let step = env.engine.step("token", &component, grants).unwrap();
    let input = json!({ "token_url": env.url(AUTH, "/oauth/token"), "client_id": "wrun-test" });
    let result = env.job().run(&step, "client-credentials", &input).await;
    let out = success(result);
    assert_eq!(out.output["token_type"], "Bearer");
    let issued = env.server.issued_tokens();
    assert_eq!(
        issued.len(),
        1,
        "the token endpoint accepted the injected client secret"
    );
    // The guest marked the token it received: it is masked everywhere.
    assert_eq!(out.output["access_token"], "***");
    let seen = format!("{}{}{:?}", out.output, out.stored, out.events);
    wrun_tests::assert_absent(
        seen.as_bytes(),
        &[&client_secret, &issued[0]],
        "output, history and logs",
    );
}

/// Retries and conditions of a recipe, with real guests: a step that keeps
/// failing is attempted as often as its policy says, with its backoff, and a
/// falsy condition skips a step.
#[tokio::test]
async fn retries_and_conditions_run_as_the_manifest_says() {
    use wrun_runtime::manifest::Manifest;
    use wrun_runtime::recipe::{Recipe, StepStatus};

    let env = TestEnv::new().await;
    let grants = format!(
        "[steps.grants]\nnet = [\"{}\"]\nsecrets = {{ slack = \"api-token\" }}\nenv = [\"slack_api\"]\n",
        env.host(API)
    );
    let manifest = format!(
        r##"[recipe]
name = "retry-and-skip"

[[steps]]
name = "skipped"
component = "slack.wasm"
action = "post-message"
condition = "{{{{ trigger.notify | default: false }}}}"
input = {{ channel = "#triage", text = "never sent" }}
{grants}
[[steps]]
name = "flaky"
component = "slack.wasm"
action = "post-message"
retry = {{ attempts = 3, backoff = "50ms", max_backoff = "80ms" }}
input = {{ channel = "#missing", text = "fails every time" }}
{grants}"##
    );
    let manifest = Manifest::parse(&manifest).unwrap_or_else(|e| panic!("{e}"));
    let recipe = Recipe::load(&env.engine, manifest, |_| Ok(guest_bytes("slack-post"))).unwrap();
    let started = std::time::Instant::now();
    let report = recipe.run(&env.job(), &json!({}), |_| {}).await;
    assert!(!report.ok);
    assert_eq!(report.steps[0].status, StepStatus::Skipped);
    assert_eq!(report.steps[0].attempts, 0);
    assert_eq!(report.steps[1].status, StepStatus::Failed);
    assert_eq!(report.steps[1].attempts, 3);
    assert!(
        report.steps[1]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("channel_not_found")
    );
    // Two pauses: 50 ms, then 80 ms (doubled, capped).
    assert!(started.elapsed() >= std::time::Duration::from_millis(130));
    // The skipped step sent nothing; the flaky one tried three times.
    assert_eq!(env.server.requests().len(), 3);
}

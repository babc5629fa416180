//! Guessing a connection's value: a guest that produces candidates must
//! not learn which one is the value. A connection value in anything a guest
//! produces fails the step without saying which candidate it was, is
//! audited as secret misuse, and withholds the step's events; values the
//! guest marked itself are masked as before. And a `body:FIELD` connection
//! goes only into that top-level field of a JSON or form body.

use serde_json::{Value, json};
use wrun_runtime::{AuditKind, Error, Event, Grants, LogSource, StepFailure, StepOutput};
use wrun_tests::canary;

use crate::common::*;

/// Where the real value sits among the candidates.
const AT: usize = 23;

/// 50 candidates shaped like the value, the value itself at [`AT`]. The
/// wrong ones carry another label: sharing a run of 12 bytes with the value
/// (`canary-api-` and one hex digit) would make them a cut echo of it.
fn candidates(env: &TestEnv) -> Vec<String> {
    let mut all: Vec<String> = (0..50).map(|_| canary("miss")).collect();
    all[AT] = env.canary.clone();
    all
}

/// The `guess` action's input: the candidates written backwards (the guest
/// turns them around), so that the step's input holds no value.
fn guess(candidates: &[String], how: &str) -> Value {
    let backwards: Vec<String> = candidates
        .iter()
        .map(|c| c.chars().rev().collect())
        .collect();
    json!({ "candidates": backwards, "how": how })
}

/// Asserts that the step failed for secret misuse on `channel`, and that
/// nothing reported (error, record, observer events, audit) names a
/// candidate or masks one.
fn assert_caught(
    env: &TestEnv,
    result: Result<StepOutput, StepFailure>,
    channel: &str,
    candidates: &[String],
) {
    let (text, f) = failure(result);
    match &f.error {
        Error::SecretMisuse { step, channel: c } => {
            assert_eq!((step.as_str(), *c), ("hostile", channel), "{text}");
        }
        other => panic!("{channel}: expected secret misuse, got {other:?}"),
    }
    assert!(
        text.contains("step `hostile`") && text.contains(channel) && text.contains("secret misuse"),
        "{text}"
    );
    // One runtime line says the events were withheld; nothing else.
    assert_eq!(f.events.len(), 1, "{channel}: {:?}", f.events);
    assert!(matches!(
        &f.events[0],
        Event::Log { source: LogSource::Runtime, message, .. } if message.contains("withheld")
    ));
    let audits = env.observer.audits();
    let misuse: Vec<_> = audits
        .iter()
        .filter(|a| a.kind == AuditKind::SecretMisuse)
        .collect();
    assert_eq!(misuse.len(), 1, "{channel}: {audits:?}");
    assert_eq!(misuse[0].connection.as_deref(), Some("api-token"));
    assert_eq!(misuse[0].destination, channel);
    let reported = format!(
        "{text}{:?}{:?}{:?}{audits:?}",
        f.error,
        f.events,
        env.observer.events()
    );
    assert!(!reported.contains("***"), "{channel}: {reported}");
    let needles: Vec<&str> = candidates.iter().map(String::as_str).collect();
    wrun_tests::assert_absent(reported.as_bytes(), &needles, channel);
}

#[tokio::test]
async fn guessing_through_output_logs_stdio_errors_or_panics_fails_the_step() {
    for (how, channel) in [
        ("output", "output"),
        ("log", "log"),
        ("stdout", "stdout"),
        ("stderr", "stderr"),
        ("error", "error message"),
        // A panic message is caught on stderr, where the guest prints it.
        ("panic", "stderr"),
    ] {
        let env = TestEnv::new().await;
        let candidates = candidates(&env);
        let result = env
            .hostile(env.hostile_grants(), "guess", guess(&candidates, how))
            .await;
        assert_caught(&env, result, channel, &candidates);
    }
}

#[tokio::test]
async fn a_value_in_the_step_input_is_misuse_before_the_guest_runs() {
    let env = TestEnv::new().await;
    let candidates = candidates(&env);
    // In clear: the recipe's author or the trigger put them there.
    let input = json!({ "candidates": candidates, "how": "output" });
    let result = env.hostile(env.hostile_grants(), "guess", input).await;
    assert_caught(&env, result, "input", &candidates);
}

#[tokio::test]
async fn guessing_through_requests_fails_the_step_and_sends_no_value() {
    for how in ["path", "header", "body"] {
        let env = TestEnv::new().await;
        let candidates = candidates(&env);
        // `evil.test` is granted to the step; the connection is not bound
        // to it.
        let grants = env.hostile_grants().net(env.host(EVIL));
        let mut input = guess(&candidates, how);
        input["url"] = json!(env.url(EVIL, "/echo/guess"));
        let result = env.hostile(grants, "guess", input).await;
        assert_caught(&env, result, "request", &candidates);
        assert!(
            !env.server.raw_bytes_contain(env.canary.as_bytes()),
            "{how}: the value reached the upstream"
        );
        // Nothing goes out after the catch: at most the candidates before.
        assert!(env.server.requests().len() <= AT, "{how}");
    }
}

#[tokio::test]
async fn marked_values_are_masked_but_a_marked_guess_is_still_misuse() {
    // The guest's own values, marked: masked, and the step succeeds.
    let env = TestEnv::new().await;
    let own: Vec<String> = (0..5).map(|_| canary("own")).collect();
    let mut input = guess(&own, "log");
    input["mark"] = json!(true);
    let out = success(env.hostile(env.hostile_grants(), "guess", input).await);
    assert_eq!(logs(&out.events), ["***"; 5].join("\n"));
    // Marking a guess does not turn it into the guest's own value.
    let env = TestEnv::new().await;
    let candidates = candidates(&env);
    let mut input = guess(&candidates, "log");
    input["mark"] = json!(true);
    let result = env.hostile(env.hostile_grants(), "guess", input).await;
    assert_caught(&env, result, "log", &candidates);
}

#[tokio::test]
async fn wrong_guesses_are_only_text() {
    let env = TestEnv::new().await;
    let mut candidates = candidates(&env);
    candidates.remove(AT);
    let input = guess(&candidates, "output");
    let out = success(env.hostile(env.hostile_grants(), "guess", input).await);
    assert_eq!(out.output["candidates"], json!(candidates));
    assert!(env.observer.audits().is_empty());
}

/// A `body:client_secret` connection bound to `auth.test`, and the step's
/// grants for it.
fn body_env(env: &mut TestEnv) -> (String, Grants) {
    let value = canary("client");
    env.connection(
        "oauth-client",
        &value,
        &[env.host(AUTH)],
        "body:client_secret",
    );
    let grants = Grants::builder()
        .net(env.host(AUTH))
        .secret("client", "oauth-client")
        .env("api_base")
        .build()
        .unwrap();
    (value, grants)
}

fn post(env: &TestEnv, content_type: &str, body: &str) -> Value {
    json!({
        "method": "POST",
        "url": env.url(AUTH, "/echo/token"),
        "secret": "client",
        "headers": [["content-type", content_type]],
        "body": body,
    })
}

#[tokio::test]
async fn a_body_placement_is_the_named_top_level_field_and_nothing_else() {
    let mut env = TestEnv::new().await;
    let (value, grants) = body_env(&mut env);
    let component = env.load("hostile");
    let step = env.engine.step("hostile", &component, grants).unwrap();
    let run = |input: Value| {
        let job = env.job();
        let step = step.clone();
        async move { job.run(&step, "http", &input).await }
    };
    let json = "application/json";
    let form = "application/x-www-form-urlencoded";
    let multipart = "multipart/form-data; boundary=json";
    // A part that looks like the field, in a body that is not JSON.
    let part = "--json\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n{\"client_secret\": \"{secret}\"}\r\n--json--\r\n";
    for (ct, body) in [
        (multipart, part),
        (json, r#"{"data": {"client_secret": "{secret}"}}"#),
        (json, r#"{"client_secret": ["{secret}"]}"#),
        (json, r#"[{"client_secret": "{secret}"}]"#),
        (json, r#"{"{secret}": "client_secret"}"#),
        (json, r#"{"client_id": "{secret}"}"#),
        (json, r#"{"note": "\"client_secret\": \"{secret}"}"#),
        ("text/json", r#"{"client_secret": "{secret}"}"#),
        ("application/jsonp", r#"{"client_secret": "{secret}"}"#),
        (form, "client_id={secret}"),
        (form, "note=client_secret={secret}"),
    ] {
        let (text, _) = failure(run(post(&env, ct, body)).await);
        assert!(text.contains("wrun egress refused"), "{ct} {body}: {text}");
    }
    assert!(!env.server.raw_bytes_contain(value.as_bytes()));

    // The named top-level field itself works, in JSON and in a form.
    for (ct, body) in [
        (
            "application/json; charset=utf-8",
            r#"{"nested": {"a": [1]}, "client_secret": "{secret}"}"#,
        ),
        (
            "application/vnd.api+json",
            r#"{"client_secret": "{secret}"}"#,
        ),
        (form, "grant_type=client_credentials&client_secret={secret}"),
    ] {
        success(run(post(&env, ct, body)).await);
    }
    assert!(env.server.raw_bytes_contain(value.as_bytes()));
}

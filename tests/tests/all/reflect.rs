//! Reflected secrets: an upstream bound to a secret echoes it back in a
//! header name, behind a coding the host did not ask for, escaped or cut.
//! A hostile guest forwards everything it received to another granted host,
//! which must never see the value in any form.

use serde_json::{Value, json};
use wrun_runtime::mask::Masker;
use wrun_tests::{REFLECT_FORMS, reflected};

use crate::common::*;

/// What the forwarding host received for each reflecting URL, and the step's
/// output.
struct Reflected {
    env: TestEnv,
    output: Value,
    forwarded: Vec<Vec<u8>>,
}

/// Binds `value` to the API host as connection `reflect-token`, then has the
/// guest fetch `/reflect/{form}` for each form with it and forward
/// everything it got to the other host.
async fn reflect_and_forward(value: &str, forms: &[&str]) -> Reflected {
    let mut env = TestEnv::new().await;
    env.connection(
        "reflect-token",
        value,
        &[env.host(API)],
        "header:Authorization=Bearer {}",
    );
    let grants = env
        .hostile_grants()
        .net(env.host(OTHER))
        .secret("reflect", "reflect-token");
    let urls: Vec<String> = forms
        .iter()
        .map(|form| env.url(API, &format!("/reflect/{form}")))
        .collect();
    let input = json!({
        "secret": "reflect",
        "urls": urls,
        "forward": env.url(OTHER, "/collect"),
    });
    let result = env.hostile(grants, "reflect-forward", input).await;
    env.assert_no_leak(&result);
    let output = success(result).output;
    let forwarded: Vec<Vec<u8>> = env
        .server
        .requests()
        .into_iter()
        .filter(|request| request.path_and_query == "/collect")
        .map(|request| request.body)
        .collect();
    assert_eq!(forwarded.len(), forms.len(), "one forward per form");
    Reflected {
        env,
        output,
        forwarded,
    }
}

/// Asserts that `forwarded` holds no form of `value`: not the value or its
/// usual encodings (an independent search), not `reflected` (what the
/// upstream sent) or any 16-byte run of it, and nothing the masker would
/// find in any letter case.
fn assert_never_forwarded(
    forwarded: &[u8],
    (value, canary): (&str, &str),
    reflected: Option<&str>,
    form: &str,
) {
    // The canary part of the value (lower-case) is searched on its own too.
    wrun_tests::assert_absent(forwarded, &[value, canary], form);
    if let Some(reflected) = reflected {
        for run in reflected.as_bytes().windows(16) {
            assert!(
                !forwarded.windows(run.len()).any(|w| w == run),
                "{form}: part of the reflection reached the other host"
            );
        }
    }
    let masker = Masker::new([value]);
    assert!(!masker.contains_any_case(forwarded), "{form}: forwarded");
}

/// A canary, and the canary with characters that encoders escape and
/// upper-case letters appended.
fn tricky_value() -> (String, String) {
    let canary = wrun_tests::canary("reflect");
    (format!("{canary}+'&_.=/AbC"), canary)
}

#[tokio::test]
async fn escaped_cut_and_percent_encoded_echoes_reach_the_guest_masked() {
    let (value, canary) = tricky_value();
    let forms = [
        "json-escaped-lower",
        "json-escaped-upper",
        "json-escaped-some",
        "html-decimal",
        "html-hex",
        "html-named",
        "cut",
        "percent",
        "percent-keep-slash",
        "percent-lower",
        "trimmed",
    ];
    let run = reflect_and_forward(&value, &forms).await;
    for (i, form) in forms.iter().enumerate() {
        let result = &run.output["results"][i];
        assert_eq!(result["status"], 403, "{form}: {result}");
        assert_eq!(result["masked"], true, "{form}: {result}");
        let forwarded = &run.forwarded[i];
        assert!(String::from_utf8_lossy(forwarded).contains("***"), "{form}");
        assert_never_forwarded(
            forwarded,
            (&value, &canary),
            // The cut echo quotes the header: only the value's part counts.
            Some(if *form == "cut" {
                value[..20].to_owned()
            } else {
                reflected(form, &value).unwrap()
            })
            .as_deref(),
            form,
        );
    }
}

#[tokio::test]
async fn a_header_name_carrying_the_value_is_dropped() {
    // Header names are lower-cased on the way: the upper-case letters of the
    // value arrive folded.
    let canary = wrun_tests::canary("name");
    let value = format!("{canary}-AbC+'&_.~");
    let run = reflect_and_forward(&value, &["header-name"]).await;
    let result = &run.output["results"][0];
    assert_eq!(result["status"], 200, "{result}");
    let names = result["headers"].as_array().unwrap();
    assert!(
        names
            .iter()
            .all(|n| !n.as_str().unwrap().starts_with("x-echo-")),
        "{result}"
    );
    assert!(names.iter().any(|n| n == "content-type"), "{result}");
    assert_never_forwarded(&run.forwarded[0], (&value, &canary), None, "header-name");
}

#[tokio::test]
async fn a_body_in_any_coding_but_identity_is_refused() {
    let (value, canary) = tricky_value();
    let forms = [
        "two-content-encodings",
        "content-encoding-list",
        "content-encoding-case",
        "content-encoding-unknown",
        "transfer-encoding",
    ];
    let run = reflect_and_forward(&value, &forms).await;
    for (i, form) in forms.iter().enumerate() {
        let result = &run.output["results"][i];
        let error = result["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("coding other than") && error.contains("cannot be scrubbed"),
            "{form}: {result}"
        );
        assert_never_forwarded(&run.forwarded[i], (&value, &canary), None, form);
    }
    let refused = run
        .env
        .observer
        .audits()
        .iter()
        .filter(|audit| audit.reason.contains("coding other than"))
        .count();
    assert_eq!(refused, forms.len());
}

#[tokio::test]
async fn the_reason_phrase_never_reaches_the_guest() {
    let (value, canary) = tricky_value();
    let run = reflect_and_forward(&value, &["reason-phrase"]).await;
    assert_eq!(run.output["results"][0]["status"], 401);
    assert_never_forwarded(&run.forwarded[0], (&value, &canary), None, "reason-phrase");
}

#[tokio::test]
async fn a_value_trimmed_by_the_upstream_is_masked() {
    // Shorter than a cut run once trimmed: only the trimmed form matches.
    let value = " \tsk-Tr1m-9 ";
    let run = reflect_and_forward(value, &["trimmed"]).await;
    let result = &run.output["results"][0];
    assert_eq!(result["masked"], true, "{result}");
    let forwarded = String::from_utf8_lossy(&run.forwarded[0]).into_owned();
    assert!(forwarded.contains("token <***>"), "{forwarded}");
    assert!(!forwarded.contains("sk-Tr1m-9"), "{forwarded}");
}

#[tokio::test]
async fn every_reflecting_form_is_covered() {
    let covered = [
        "header-name",
        "reason-phrase",
        "two-content-encodings",
        "content-encoding-list",
        "content-encoding-case",
        "content-encoding-unknown",
        "transfer-encoding",
        "json-escaped-lower",
        "json-escaped-upper",
        "json-escaped-some",
        "html-decimal",
        "html-hex",
        "html-named",
        "cut",
        "percent",
        "percent-keep-slash",
        "percent-lower",
        "trimmed",
    ];
    assert_eq!(REFLECT_FORMS, covered);
}

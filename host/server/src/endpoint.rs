//! Endpoint recipes: a webhook in response mode answers its request with
//! the result of the job it started, instead of `202 Accepted`.
//!
//! The job is committed and run like any other (history, audit, limits,
//! resumption after a crash); only the request waits for it, up to the
//! webhook's timeout. The answer is built from the job's history, which is
//! masked, so a secret the recipe used never reaches the caller.
//!
//! What answers is the output of the step the manifest names
//! (`[recipe] output`), or else of the last step that succeeded:
//! - an object with exactly `status` and `body`, and optionally `headers`,
//!   sets the status (200 to 599), the headers (at most [`MAX_HEADERS`],
//!   names from [`ALLOWED_HEADERS`] or `x-…` except `x-forwarded-…`, values
//!   of at most [`MAX_HEADER_VALUE`] bytes) and the body (a string is sent
//!   as text when the recipe sets a `content-type`, anything else as JSON);
//! - any other output is the JSON body of a 200;
//! - no output (every step skipped, or the named step skipped) answers 204.
//!
//! A failed job answers 502 (`job_failed`, with its masked error), a
//! cancelled one 502 (`job_cancelled`), an output whose status or headers
//! break the limits 502 (`invalid_response`: the recipe's fault, not the
//! caller's), a job still running at the timeout 504 (`timeout`; it goes on,
//! or is cancelled if the webhook says so). Every answer carries the job's
//! id in `wrun-job`.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::time::{Instant, timeout_at};
use wrun_store::audit::{Entry, Outcome};
use wrun_store::storage::{JobDetail, JobState, RespondMode};

use crate::api::AppState;
use crate::http_error::ApiError;

/// The most headers a recipe may set on its answer.
pub const MAX_HEADERS: usize = 16;

/// The longest value of a header a recipe sets.
pub const MAX_HEADER_VALUE: usize = 1024;

/// Headers a recipe may set besides `x-…` ones. Framing, connection and
/// cookie headers are the daemon's: a recipe cannot set cookies on the
/// daemon's origin or change how the response is framed.
pub const ALLOWED_HEADERS: &[&str] = &[
    "content-type",
    "cache-control",
    "content-language",
    "etag",
    "last-modified",
    "location",
    "retry-after",
];

/// The header naming the job behind an answer.
pub const JOB_HEADER: &str = "wrun-job";

/// Waits for job `id` (watched with `watch` before it was submitted) and
/// answers with its result, or 504 at the webhook's timeout.
pub async fn answer(
    s: &AppState,
    workspace: &str,
    id: &str,
    mode: RespondMode,
    watch: oneshot::Receiver<()>,
    webhook: &str,
) -> Response {
    let deadline = Instant::now() + Duration::from_millis(mode.timeout_ms);
    let mut watch = Some(watch);
    let detail = loop {
        match s.storage.job(workspace, id).await {
            Ok(Some(detail)) if detail.summary.state.is_final() => break Some(detail),
            Ok(Some(_)) => {}
            Ok(None) => {
                return with_job(ApiError::not_found(format!("job `{id}`")), id);
            }
            Err(e) => {
                tracing::error!(job = %id, error = %e, "the job of an endpoint could not be read");
                return with_job(ApiError::internal(), id);
            }
        }
        let waited = match watch.take() {
            Some(rx) => timeout_at(deadline, async {
                let _ = rx.await;
            })
            .await
            .is_ok(),
            // The runner let go of the job without ending it (the daemon is
            // stopping): look again now and then until the deadline.
            None => timeout_at(deadline, tokio::time::sleep(Duration::from_millis(50)))
                .await
                .is_ok(),
        };
        if !waited {
            break None;
        }
    };
    // Dropped first, so the runner forgets this watch even when the job
    // had ended before it was made (a repeated delivery).
    drop(watch);
    s.runner.unwatch(id);
    match detail {
        Some(detail) => match result(&detail, output_step(s, &detail).await.as_deref()) {
            Ok(response) => with_job(response, id),
            Err(e) => with_job(e, id),
        },
        None => {
            if mode.cancel_on_timeout {
                let entry = Entry {
                    workspace: Some(workspace.to_string()),
                    actor: format!("webhook:{webhook}"),
                    action: "job.cancel".into(),
                    target: format!("job:{id}"),
                    source: None,
                    outcome: Outcome::Success,
                    detail: json!({ "reason": "respond_timeout" }),
                };
                match s.storage.cancel_job(workspace, id, entry).await {
                    Ok(_) => s.runner.cancel(id),
                    Err(e) => {
                        tracing::error!(job = %id, error = %e, "a timed-out job could not be cancelled")
                    }
                }
            }
            let what = if mode.cancel_on_timeout {
                "it was cancelled"
            } else {
                "it goes on; its result will be in the history"
            };
            with_job(
                ApiError::new(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!("job {id} did not end within {} ms; {what}", mode.timeout_ms),
                ),
                id,
            )
        }
    }
}

/// The step the job's recipe answers with, if it names one. A recipe that
/// can no longer be loaded (deleted since) answers with its last step.
async fn output_step(s: &AppState, detail: &JobDetail) -> Option<String> {
    if detail.summary.state != JobState::Succeeded {
        return None;
    }
    let (workspace, recipe) = (&detail.summary.workspace, &detail.summary.recipe);
    s.runner
        .output_step(workspace, recipe)
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(job = %detail.summary.id, error = %e, "the recipe of an ended endpoint job could not be read; it answers with its last step");
            None
        })
}

/// Adds the job's id to an answer.
fn with_job(response: impl IntoResponse, id: &str) -> Response {
    let mut response = response.into_response();
    if let Ok(value) = HeaderValue::from_str(id) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(JOB_HEADER), value);
    }
    response
}

/// The answer of an ended job, from its (masked) history: the output of
/// step `output_step` when given, else of the last step that succeeded.
///
/// # Errors
///
/// 502 for a failed or cancelled job, or an output whose status or
/// headers break the limits.
pub fn result(detail: &JobDetail, output_step: Option<&str>) -> Result<Response, ApiError> {
    match detail.summary.state {
        JobState::Succeeded => {}
        JobState::Cancelled => {
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "job_cancelled",
                "the job was cancelled before it answered",
            ));
        }
        _ => {
            let error = detail
                .summary
                .error
                .clone()
                .unwrap_or_else(|| "the job failed".into());
            return Err(ApiError::new(StatusCode::BAD_GATEWAY, "job_failed", error));
        }
    }
    let output = match output_step {
        Some(name) => detail
            .steps
            .iter()
            .find(|step| step["step"] == name && step["status"] == "succeeded"),
        None => detail
            .steps
            .iter()
            .rev()
            .find(|step| step["status"] == "succeeded"),
    }
    .map(|step| &step["output"]);
    let Some(output) = output else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    match envelope(output)? {
        Some((status, headers, body)) => {
            let text = body
                .as_str()
                .filter(|_| headers.contains_key(header::CONTENT_TYPE));
            Ok(match text {
                Some(text) => (status, headers, text.to_string()).into_response(),
                None => (status, headers, axum::Json(body.clone())).into_response(),
            })
        }
        None => Ok((StatusCode::OK, axum::Json(output.clone())).into_response()),
    }
}

/// Reads a `{status, headers, body}` output; `None` for any other output.
fn envelope(output: &Value) -> Result<Option<(StatusCode, HeaderMap, &Value)>, ApiError> {
    let Value::Object(map) = output else {
        return Ok(None);
    };
    let known = map
        .keys()
        .all(|k| matches!(k.as_str(), "status" | "headers" | "body"));
    let (Some(status), Some(body), true) = (map.get("status"), map.get("body"), known) else {
        return Ok(None);
    };
    let invalid =
        |message: String| ApiError::new(StatusCode::BAD_GATEWAY, "invalid_response", message);
    let status = status
        .as_u64()
        .filter(|s| (200..=599).contains(s))
        .and_then(|s| StatusCode::from_u16(u16::try_from(s).ok()?).ok())
        .ok_or_else(|| {
            invalid(format!(
                "the recipe answered with status {status}; it must be 200 to 599"
            ))
        })?;
    let mut headers = HeaderMap::new();
    match map.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(given)) => {
            if given.len() > MAX_HEADERS {
                return Err(invalid(format!(
                    "the recipe set {} headers; at most {MAX_HEADERS}",
                    given.len()
                )));
            }
            for (name, value) in given {
                let lower = name.to_ascii_lowercase();
                let allowed = ALLOWED_HEADERS.contains(&lower.as_str())
                    || (lower.starts_with("x-") && !lower.starts_with("x-forwarded-"));
                let header_name = HeaderName::from_bytes(lower.as_bytes())
                    .ok()
                    .filter(|_| allowed);
                let Some(header_name) = header_name else {
                    return Err(invalid(format!(
                        "the recipe may not set header `{}`",
                        name.escape_debug()
                    )));
                };
                let value = value
                    .as_str()
                    .filter(|v| v.len() <= MAX_HEADER_VALUE)
                    .and_then(|v| HeaderValue::from_str(v).ok())
                    .ok_or_else(|| {
                        invalid(format!(
                            "header `{lower}` must be a string of at most {MAX_HEADER_VALUE} visible characters"
                        ))
                    })?;
                headers.insert(header_name, value);
            }
        }
        Some(_) => return Err(invalid("`headers` must be an object of strings".into())),
    }
    Ok(Some((status, headers, body)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use wrun_store::UnixMillis;
    use wrun_store::storage::JobSummary;

    fn job(state: JobState, steps: Vec<Value>) -> JobDetail {
        JobDetail {
            summary: JobSummary {
                id: "job_1".into(),
                workspace: "ws".into(),
                recipe: "r".into(),
                environment: "prod".into(),
                state,
                trigger: "webhook".into(),
                rerun_of: None,
                created_at: UnixMillis(0),
                started_at: None,
                finished_at: None,
                error: (state == JobState::Failed).then(|| "step `b`: upstream said 500".into()),
                erased_at: None,
            },
            input: Value::Null,
            steps,
        }
    }

    fn step(status: &str, output: Value) -> Value {
        named("s", status, output)
    }

    fn named(name: &str, status: &str, output: Value) -> Value {
        json!({ "step": name, "status": status, "output": output })
    }

    async fn body(response: Response) -> (StatusCode, HeaderMap, Vec<u8>) {
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, headers, bytes.to_vec())
    }

    #[tokio::test]
    async fn the_last_successful_output_answers() {
        let detail = job(
            JobState::Succeeded,
            vec![
                step("succeeded", json!({"first": true})),
                step("succeeded", json!({"id": 7, "status": "open"})),
                step("skipped", Value::Null),
            ],
        );
        let (status, headers, bytes) = body(result(&detail, None).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            serde_json::from_slice::<Value>(&bytes).unwrap(),
            json!({"id": 7, "status": "open"})
        );
        let skipped = job(JobState::Succeeded, vec![step("skipped", Value::Null)]);
        assert_eq!(
            result(&skipped, None).unwrap().status(),
            StatusCode::NO_CONTENT
        );
    }

    #[tokio::test]
    async fn the_named_step_answers() {
        let detail = job(
            JobState::Succeeded,
            vec![
                named("reply", "succeeded", json!({"answer": 42})),
                named("audit", "succeeded", json!({"logged": true})),
                named("maybe", "skipped", Value::Null),
            ],
        );
        let (status, _, bytes) = body(result(&detail, Some("reply")).unwrap()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            serde_json::from_slice::<Value>(&bytes).unwrap(),
            json!({"answer": 42})
        );
        // The named step was skipped: no output, even though others have one.
        let response = result(&detail, Some("maybe")).unwrap();
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
    }

    #[tokio::test]
    async fn an_envelope_sets_status_headers_and_body() {
        let detail = job(
            JobState::Succeeded,
            vec![step(
                "succeeded",
                json!({"status": 201, "headers": {"Location": "/orders/9", "x-trace": "a1"}, "body": {"id": 9}}),
            )],
        );
        let (status, headers, bytes) = body(result(&detail, None).unwrap()).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(headers["location"], "/orders/9");
        assert_eq!(headers["x-trace"], "a1");
        assert_eq!(
            serde_json::from_slice::<Value>(&bytes).unwrap(),
            json!({"id": 9})
        );
        // A string body with a content type is sent as text.
        let detail = job(
            JobState::Succeeded,
            vec![step(
                "succeeded",
                json!({"status": 200, "headers": {"content-type": "text/csv"}, "body": "a,b\n1,2\n"}),
            )],
        );
        let (_, headers, bytes) = body(result(&detail, None).unwrap()).await;
        assert_eq!(headers[header::CONTENT_TYPE], "text/csv");
        assert_eq!(bytes, b"a,b\n1,2\n");
    }

    #[test]
    fn envelopes_past_the_limits_are_the_recipes_fault() {
        let many: serde_json::Map<String, Value> = (0..=MAX_HEADERS)
            .map(|i| (format!("x-h{i}"), json!("v")))
            .collect();
        for output in [
            json!({"status": 101, "body": null}),
            json!({"status": 700, "body": null}),
            json!({"status": "200", "body": null}),
            json!({"status": 200, "headers": {"set-cookie": "s=1"}, "body": null}),
            json!({"status": 200, "headers": {"transfer-encoding": "chunked"}, "body": null}),
            json!({"status": 200, "headers": {"x-forwarded-for": "1.2.3.4"}, "body": null}),
            json!({"status": 200, "headers": {"x-a": "line\r\nbreak"}, "body": null}),
            json!({"status": 200, "headers": {"x-a": "v".repeat(MAX_HEADER_VALUE + 1)}, "body": null}),
            json!({"status": 200, "headers": {"x-a": 1}, "body": null}),
            json!({"status": 200, "headers": ["x-a"], "body": null}),
            json!({"status": 200, "headers": many, "body": null}),
        ] {
            let detail = job(JobState::Succeeded, vec![step("succeeded", output.clone())]);
            let e = result(&detail, None).unwrap_err();
            assert_eq!(e.status(), StatusCode::BAD_GATEWAY, "{output}");
            assert_eq!(e.code(), "invalid_response", "{output}");
        }
        // Not an envelope (other keys, or no body): the whole output is the body.
        for output in [
            json!({"status": 201, "body": 1, "extra": true}),
            json!({"status": 201}),
        ] {
            let detail = job(JobState::Succeeded, vec![step("succeeded", output.clone())]);
            assert_eq!(
                result(&detail, None).unwrap().status(),
                StatusCode::OK,
                "{output}"
            );
        }
    }

    #[test]
    fn failed_and_cancelled_jobs_answer_502() {
        let e = result(&job(JobState::Failed, vec![]), None).unwrap_err();
        assert_eq!(
            (e.status(), e.code()),
            (StatusCode::BAD_GATEWAY, "job_failed")
        );
        assert!(e.message().contains("upstream said 500"));
        let e = result(&job(JobState::Cancelled, vec![]), None).unwrap_err();
        assert_eq!(e.code(), "job_cancelled");
    }
}

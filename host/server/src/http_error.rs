//! The daemon's one JSON error format.
//!
//! Every error the HTTP API returns has the body
//! `{"error":{"code":"...","message":"..."}}` with
//! `content-type: application/json`. `code` is a stable, machine-readable
//! snake_case word; `message` is for people and may change. [`ApiError`] is
//! that response; [`LazyJson`] is a JSON extractor whose rejections use it;
//! [`with_json_errors`] makes unknown routes (404) and wrong methods (405)
//! answer in it too.
//!
//! Request bodies are read by [`read_body`] only, under a deadline that
//! [`body_deadline`] sets when the request head has arrived: a client that
//! sends its headers and then trickles or stalls the body gets
//! `408 body_timeout` with `Connection: close` once the deadline passes, so
//! slow bodies cannot hold connections (and their slots) forever.
//!
//! Messages never carry internals ([`ApiError::internal`] is generic) and
//! never quote string values from a request body: serde's messages are
//! redacted, because a secret sent in the wrong field would otherwise be
//! echoed back.

use std::fmt;
use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{
    CONNECTION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE,
};
use http_body::{Frame, SizeHint};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// An error response in the daemon's JSON format.
///
/// Build one with a constructor ([`ApiError::not_found`],
/// [`ApiError::bad_request`], ...) and return it from a handler; it turns
/// into the response through [`IntoResponse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The HTTP status.
    status: StatusCode,
    /// The machine-readable code, in snake_case.
    code: &'static str,
    /// The human-readable message.
    message: String,
    /// Seconds for the `Retry-After` header, if any.
    retry_after: Option<u64>,
}

impl ApiError {
    /// Builds an error from its parts; prefer the named constructors.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 404 `not_found`: `what` (for example `job 42`) does not exist.
    pub fn not_found(what: impl fmt::Display) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 400 with a caller-chosen `code`, for a request that is well-formed
    /// JSON but wrong (for example `invalid_recipe`).
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401 with a caller-chosen `code` (for example `missing_token`); the
    /// response carries `WWW-Authenticate: Bearer`.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, code, message)
    }

    /// 403 `forbidden`: the caller is known but may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 409 with a caller-chosen `code` (for example `already_exists` or
    /// `job_finished`): the request conflicts with the current state.
    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::CONFLICT, code, message)
    }

    /// 413 `body_too_large`: the body is over `limit` bytes.
    #[cfg(test)]
    pub fn payload_too_large(limit: usize) -> Self {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than the limit of {limit} bytes"),
        )
    }

    /// 429 `rate_limited`, with `Retry-After: retry_after_secs`.
    pub fn too_many_requests(retry_after_secs: u64) -> Self {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests; retry after {retry_after_secs} s"),
        )
        .with_retry_after(retry_after_secs)
    }

    /// 415 `unsupported_media_type`: the body is not of type `expected`
    /// (for example `application/json`).
    pub fn unsupported_media_type(expected: &str) -> Self {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("request body must have content-type {expected}"),
        )
    }

    /// 405 `method_not_allowed`: the route exists but not for this method
    /// (axum adds the `Allow` header).
    pub fn method_not_allowed() -> Self {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not accept this HTTP method",
        )
    }

    /// 500 `internal` with a generic message. Log the cause (without secret
    /// values) before returning this; the client learns nothing about it.
    pub fn internal() -> Self {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    }

    /// Adds a `Retry-After: secs` header (for 429 and 503 responses).
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The machine-readable code.
    #[cfg(test)]
    pub fn code(&self) -> &'static str {
        self.code
    }
}

impl ApiError {
    /// The human-readable message (what the client reads after the code).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

/// The JSON body of an error response.
#[derive(Serialize)]
struct ErrorBody<'a> {
    /// The error.
    error: ErrorDetail<'a>,
}

/// The `error` object of an error response.
#[derive(Serialize)]
struct ErrorDetail<'a> {
    /// The machine-readable code.
    code: &'a str,
    /// The human-readable message.
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of a late body is not read: the connection ends here.
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// A JSON request body read only when asked ([`LazyJson::read`]), so a
/// handler checks credentials before it reads or parses anything: an
/// unauthenticated request gets 401 whatever its body. Reading refuses:
///
/// - a content type other than `application/json` (or `application/*+json`):
///   415 `unsupported_media_type`;
/// - a body over the limit: 413 `body_too_large`;
/// - a body that is not JSON (including an empty one or trailing data):
///   400 `malformed_json`, with the line and column;
/// - JSON of the wrong shape (missing field, wrong type, unknown variant):
///   422 `invalid_body`, with the field path, line and column.
pub struct LazyJson<T> {
    body: axum::body::Body,
    json: bool,
    _type: std::marker::PhantomData<fn() -> T>,
}

impl<S, T> FromRequest<S> for LazyJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let json = is_json_content_type(request.headers());
        Ok(LazyJson {
            body: request.into_body(),
            json,
            _type: std::marker::PhantomData,
        })
    }
}

impl<T: DeserializeOwned> LazyJson<T> {
    /// Reads at most `limit` bytes and parses them.
    ///
    /// # Errors
    ///
    /// 415, 413, 400 `malformed_json` or 422 `invalid_body`, as listed on
    /// [`LazyJson`].
    pub async fn read(self, limit: usize) -> Result<T, ApiError> {
        if !self.json {
            return Err(ApiError::unsupported_media_type("application/json"));
        }
        let bytes = read_body(self.body, limit).await?;
        parse_json(&bytes)
    }
}

/// Reads a whole request body of at most `limit` bytes.
///
/// # Errors
///
/// 413 `body_too_large` past `limit`, 408 `body_timeout` (with
/// `Connection: close`) when the deadline set by [`body_deadline`] passes
/// first, and 400 `invalid_body` when the body breaks off.
pub async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let inner = e.into_inner();
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&*inner);
        while let Some(error) = cause {
            if error.is::<http_body_util::LengthLimitError>() {
                return ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "body_too_large",
                    format!("request body is larger than the {limit} bytes the server accepts"),
                );
            }
            if error.is::<BodyTimeout>() {
                return ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    "the request body did not arrive in time",
                );
            }
            cause = error.source();
        }
        ApiError::bad_request("invalid_body", "the request body could not be read")
    })
}

/// The body deadline passed before the whole body arrived.
#[derive(Debug)]
struct BodyTimeout;

impl fmt::Display for BodyTimeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request body did not arrive before its deadline")
    }
}

impl std::error::Error for BodyTimeout {}

/// Middleware: the request's body must arrive completely within `timeout`
/// of the request head (see [`read_body`]).
pub async fn body_deadline(
    State(timeout): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    let request = request.map(|inner| {
        Body::new(DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        })
    });
    next.run(request).await
}

/// A request body that fails with [`BodyTimeout`] once its deadline passes.
///
/// Written by hand because `tower-http`'s `TimeoutBody` restarts its timer
/// at every frame, so a client trickling one byte at a time would never be
/// cut off; this deadline is for the whole body.
struct DeadlineBody {
    /// The body as received.
    inner: Body,
    /// When the whole body must have arrived.
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        // Data already received is handed on; the deadline counts only
        // while the body keeps the reader waiting.
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(axum::Error::new(BodyTimeout)))),
                Poll::Pending => Poll::Pending,
            },
            ready => ready,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether the request says its body is JSON: `application/json` or
/// `application/<something>+json`, with any parameters.
fn is_json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.strip_prefix("application/") {
        Some(subtype) => subtype == "json" || subtype.ends_with("+json"),
        None => false,
    }
}

/// Deserializes `bytes` as a `T`, mapping serde errors to `malformed_json`
/// or `invalid_body` with a redacted message saying where.
fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|err| {
        let path = err.path().to_string();
        json_error(err.inner(), Some(&path))
    })?;
    deserializer.end().map_err(|err| json_error(&err, None))?;
    Ok(value)
}

/// Turns a serde_json error (and the path where it happened, `.` for the
/// top level) into an [`ApiError`].
fn json_error(err: &serde_json::Error, path: Option<&str>) -> ApiError {
    let full = err.to_string();
    let location = format!(" at line {} column {}", err.line(), err.column());
    let reason = redact_values(full.strip_suffix(&location).unwrap_or(&full));
    let (line, column) = (err.line(), err.column());
    match err.classify() {
        serde_json::error::Category::Data => {
            let place = match path {
                Some(path) if path != "." => format!("field `{path}`"),
                _ => "top level".to_owned(),
            };
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_body",
                format!(
                    "request body does not match the expected shape at {place} (line {line}, column {column}): {reason}"
                ),
            )
        }
        _ => ApiError::bad_request(
            "malformed_json",
            format!("request body is not valid JSON (line {line}, column {column}): {reason}"),
        ),
    }
}

/// Removes request values that serde quotes in its messages: `string "..."`
/// becomes `a string`, and `` variant `...` `` becomes `variant`.
fn redact_values(message: &str) -> String {
    const STRING: &str = "string \"";
    const VARIANT: &str = "variant `";
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    loop {
        let next = [
            rest.find(STRING).map(|at| (at, STRING)),
            rest.find(VARIANT).map(|at| (at, VARIANT)),
        ]
        .into_iter()
        .flatten()
        .min_by_key(|(at, _)| *at);
        let Some((at, marker)) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..at]);
        let value = &rest[at + marker.len()..];
        let end = if marker == STRING {
            out.push_str("a string");
            closing_quote(value)
        } else {
            out.push_str("variant");
            value.find('`')
        };
        match end {
            // Skip the value and its closing delimiter (one byte either way).
            Some(end) => rest = &value[end + 1..],
            None => return out,
        }
    }
}

/// The byte index of the first unescaped `"` in a Rust-`Debug`-escaped
/// string body.
fn closing_quote(escaped: &str) -> Option<usize> {
    let mut backslash = false;
    for (index, byte) in escaped.bytes().enumerate() {
        match byte {
            b'\\' => backslash = !backslash,
            b'"' if !backslash => return Some(index),
            _ => backslash = false,
        }
    }
    None
}

/// The fallback for unknown routes: 404 `not_found`.
///
/// The path is not echoed: it may carry a token (webhook URLs do).
pub async fn not_found_fallback() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// The fallback for a known route called with the wrong method: 405
/// `method_not_allowed`.
pub async fn method_not_allowed_fallback() -> ApiError {
    ApiError::method_not_allowed()
}

/// Makes `router` answer unknown routes with 404 `not_found` and wrong
/// methods with 405 `method_not_allowed` in the JSON format (axum still adds
/// the `Allow` header).
///
/// Call it after every route is added: the 405 fallback applies only to the
/// routes already registered.
pub fn with_json_errors<S>(router: Router<S>) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    router
        .fallback(not_found_fallback)
        .method_not_allowed_fallback(method_not_allowed_fallback)
}

#[cfg(test)]
mod tests {
    use super::*;

    use axum::body::Body;
    use axum::extract::DefaultBodyLimit;
    use axum::routing::{get, post};
    use http::header::ALLOW;
    use serde::Deserialize;
    use tower::ServiceExt as _;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        name: String,
        count: u32,
        #[serde(default)]
        #[allow(dead_code, reason = "parsed to check the error paths, never read")]
        kind: Option<Kind>,
        #[serde(default)]
        nested: Vec<Nested>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Small,
    }

    #[derive(Debug, Deserialize)]
    struct Nested {
        #[allow(dead_code, reason = "parsed to check the error paths, never read")]
        size: u64,
    }

    fn app() -> Router {
        let router = Router::new()
            .route(
                "/items",
                post(|body: LazyJson<Item>| async move {
                    let item = body.read(256).await?;
                    Ok::<_, ApiError>(format!(
                        "{}:{}:{}",
                        item.name,
                        item.count,
                        item.nested.len()
                    ))
                }),
            )
            .route("/missing", get(|| async { ApiError::not_found("job 42") }))
            .route(
                "/auth",
                get(|| async { ApiError::unauthorized("invalid_token", "token is not valid") }),
            )
            .route(
                "/slow-down",
                get(|| async { ApiError::too_many_requests(7) }),
            )
            .route("/boom", get(|| async { ApiError::internal() }))
            .route("/big", get(|| async { ApiError::payload_too_large(1024) }))
            .layer(DefaultBodyLimit::max(256));
        with_json_errors(router)
    }

    /// Sends a request; returns the response and its body parsed as JSON.
    async fn send(request: http::Request<Body>) -> (Response, serde_json::Value) {
        let response = app().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (Response::from_parts(parts, Body::empty()), json)
    }

    fn post_json(content_type: &str, body: impl Into<Body>) -> http::Request<Body> {
        http::Request::post("/items")
            .header(CONTENT_TYPE, content_type)
            .body(body.into())
            .unwrap()
    }

    fn get_req(path: &str) -> http::Request<Body> {
        http::Request::get(path).body(Body::empty()).unwrap()
    }

    /// Checks the response is the JSON error format with `status` and
    /// `code`, and returns the message.
    fn check(
        response: &Response,
        json: &serde_json::Value,
        status: StatusCode,
        code: &str,
    ) -> String {
        assert_eq!(response.status(), status, "{json}");
        assert_eq!(
            response.headers().get(CONTENT_TYPE).unwrap(),
            "application/json"
        );
        assert_eq!(json["error"]["code"], code, "{json}");
        json["error"]["message"].as_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn valid_json_is_accepted() {
        let response = app()
            .oneshot(post_json(
                "application/json; charset=utf-8",
                r#"{"name":"a","count":2,"nested":[{"size":1}]}"#,
            ))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        assert_eq!(&body[..], b"a:2:1");

        let response = app()
            .oneshot(post_json(
                "application/merge-patch+json",
                r#"{"name":"a","count":2}"#,
            ))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn malformed_json() {
        let (response, json) = send(post_json("application/json", "{\"name\": ")).await;
        let message = check(&response, &json, StatusCode::BAD_REQUEST, "malformed_json");
        assert!(message.contains("line 1, column 9"), "{message}");

        let (response, json) = send(post_json("application/json", "")).await;
        check(&response, &json, StatusCode::BAD_REQUEST, "malformed_json");

        let (response, json) =
            send(post_json("application/json", r#"{"name":"a","count":2} x"#)).await;
        let message = check(&response, &json, StatusCode::BAD_REQUEST, "malformed_json");
        assert!(message.contains("trailing characters"), "{message}");
    }

    #[tokio::test]
    async fn wrong_shape_names_the_field() {
        let (response, json) = send(post_json(
            "application/json",
            r#"{"name":"a","count":1,"nested":[{"size":"hunter2-secret"}]}"#,
        ))
        .await;
        let message = check(
            &response,
            &json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        );
        assert!(message.contains("field `nested[0].size`"), "{message}");
        assert!(message.contains("line 1, column"), "{message}");
        assert!(
            message.contains("invalid type: a string, expected u64"),
            "{message}"
        );
        assert!(!message.contains("hunter2"), "{message}");

        let (response, json) = send(post_json(
            "application/json",
            r#"{"name":"a","count":1,"kind":"s3cr\"et"}"#,
        ))
        .await;
        let message = check(
            &response,
            &json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        );
        assert!(message.contains("field `kind`"), "{message}");
        assert!(
            message.contains("unknown variant, expected `small`"),
            "{message}"
        );
        assert!(!message.contains("s3cr"), "{message}");

        let (response, json) = send(post_json("application/json", r#"{"name":"a"}"#)).await;
        let message = check(
            &response,
            &json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        );
        assert!(message.contains("missing field `count`"), "{message}");

        let (response, json) = send(post_json("application/json", "42")).await;
        let message = check(
            &response,
            &json,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
        );
        assert!(message.contains("top level"), "{message}");
    }

    #[tokio::test]
    async fn wrong_content_type() {
        let (response, json) = send(post_json("text/plain", r#"{"name":"a","count":1}"#)).await;
        check(
            &response,
            &json,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );

        let request = http::Request::post("/items")
            .body(Body::from(r#"{"name":"a","count":1}"#))
            .unwrap();
        let (response, json) = send(request).await;
        check(
            &response,
            &json,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        );
    }

    #[tokio::test]
    async fn oversized_body() {
        let body = format!(r#"{{"name":"{}","count":1}}"#, "x".repeat(1000));
        let (response, json) = send(post_json("application/json", body)).await;
        check(
            &response,
            &json,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        );
    }

    /// A body that sends a first chunk and then nothing, forever.
    struct Stalled(bool);

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if self.0 {
                return Poll::Pending;
            }
            self.0 = true;
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"{\"name\"")))))
        }
    }

    #[tokio::test]
    async fn a_stalled_body_times_out_with_408_and_closes() {
        let app = app().layer(axum::middleware::from_fn_with_state(
            Duration::from_millis(100),
            body_deadline,
        ));
        let request = http::Request::post("/items")
            .header("content-type", "application/json")
            .body(Body::new(Stalled(false)))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(5), app.oneshot(request))
            .await
            .expect("the deadline cut the body off")
            .unwrap();
        assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
        assert_eq!(response.headers().get(CONNECTION).unwrap(), "close");
        let bytes = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["error"]["code"], "body_timeout", "{json}");
    }

    #[tokio::test]
    async fn unknown_route_and_wrong_method() {
        let (response, json) = send(get_req("/nope/secret-token")).await;
        let message = check(&response, &json, StatusCode::NOT_FOUND, "not_found");
        assert!(!message.contains("secret-token"));

        let (response, json) = send(get_req("/items")).await;
        check(
            &response,
            &json,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );
        assert_eq!(response.headers().get(ALLOW).unwrap(), "POST");
    }

    #[tokio::test]
    async fn constructors_render_in_the_format() {
        let (response, json) = send(get_req("/missing")).await;
        let message = check(&response, &json, StatusCode::NOT_FOUND, "not_found");
        assert_eq!(message, "job 42 not found");

        let (response, json) = send(get_req("/auth")).await;
        check(&response, &json, StatusCode::UNAUTHORIZED, "invalid_token");
        assert_eq!(response.headers().get(WWW_AUTHENTICATE).unwrap(), "Bearer");

        let (response, json) = send(get_req("/slow-down")).await;
        check(
            &response,
            &json,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
        );
        assert_eq!(response.headers().get(RETRY_AFTER).unwrap(), "7");

        let (response, json) = send(get_req("/boom")).await;
        let message = check(
            &response,
            &json,
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
        );
        assert_eq!(message, "internal server error");

        let (response, json) = send(get_req("/big")).await;
        let message = check(
            &response,
            &json,
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        );
        assert!(message.contains("1024"));
    }

    #[test]
    fn other_constructors() {
        assert_eq!(ApiError::forbidden("no").status(), StatusCode::FORBIDDEN);
        let conflict = ApiError::conflict("already_exists", "connection `x` exists");
        assert_eq!(conflict.status(), StatusCode::CONFLICT);
        assert_eq!(conflict.code(), "already_exists");
        assert_eq!(
            ApiError::bad_request("invalid_recipe", "m").to_string(),
            "400 invalid_recipe: m"
        );
    }

    #[test]
    fn redaction() {
        let cases = [
            (
                r#"invalid type: string "a\"b\\", expected u64"#,
                "invalid type: a string, expected u64",
            ),
            (
                "unknown variant `x`, expected `a` or `b`",
                "unknown variant, expected `a` or `b`",
            ),
            ("missing field `name`", "missing field `name`"),
            (
                r#"invalid type: string "unterminated"#,
                "invalid type: a string",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(redact_values(input), expected, "{input}");
        }
    }
}

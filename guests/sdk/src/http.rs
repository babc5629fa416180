//! A small blocking HTTP client over `wasi:http/outgoing-handler`.
//!
//! Build a [`Request`], optionally give it a body and a secret, and
//! [`send`](Request::send) it; the answer is a [`Response`] read into memory
//! (at most [`MAX_RESPONSE_BYTES`]).
//!
//! ```no_run
//! use wrun_sdk::{http::Request, secrets};
//!
//! #[derive(serde::Serialize)]
//! struct Message<'a> {
//!     channel: &'a str,
//!     text: &'a str,
//! }
//!
//! let slack = secrets::get("slack")?;
//! let response = Request::post("https://slack.com/api/chat.postMessage")
//!     .json(&Message { channel: "#ops", text: "deployed" })
//!     .auth(&slack)
//!     .send()?
//!     .error_for_status()?;
//! let answer: serde_json::Value = response.json()?;
//! # Ok::<(), wrun_sdk::Error>(())
//! ```
//!
//! The host checks every request before it leaves: HTTPS only, to a host
//! the step's `net` grant names, with any secret placeholder exactly where
//! the connection allows it. A refused request fails with the host's reason
//! in the error message, for example
//! `request to https://evil.example/ failed: wrun egress refused: ...`.
//! Redirects are not followed.

use std::fmt::Write as _;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, FutureIncomingResponse, HeaderError, IncomingResponse, Method, OutgoingBody,
    OutgoingRequest, Scheme,
};
use wasip2::io::streams::StreamError;

use crate::Error;
use crate::secrets::Secret;

/// The most a response body may hold; a longer one fails the request.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// The most `blocking-write-and-flush` accepts in one call.
const WRITE_CHUNK: usize = 4096;

/// How much to ask for per read of the response body.
const READ_CHUNK: u64 = 64 * 1024;

/// How many bytes of an error response's body an error message quotes.
const EXCERPT_CHARS: usize = 200;

/// An HTTP request being built.
///
/// Builder methods never fail; a problem (say, a value that cannot be
/// serialised to JSON) is reported by [`send`](Request::send).
#[derive(Debug)]
#[must_use = "a request does nothing until it is sent"]
pub struct Request {
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Body,
    auth: Vec<Auth>,
    error: Option<Error>,
}

/// The body of a request before it is encoded.
#[derive(Debug)]
enum Body {
    Empty,
    Raw(Vec<u8>),
    Json(Value),
    Form(Vec<(String, String)>),
}

/// A secret to apply at send time.
#[derive(Debug)]
struct Auth {
    placement: String,
    placeholder: String,
}

/// Where a secret's placeholder goes, parsed from its placement string.
#[derive(Debug, PartialEq, Eq)]
enum Placement<'a> {
    /// A header whose value is the template with `{}` replaced.
    Header { name: &'a str, template: &'a str },
    /// `Authorization: Basic <placeholder>`.
    Basic,
    /// A query parameter.
    Query(&'a str),
    /// A body field: a member of the top-level JSON object, or a form field.
    Body(&'a str),
}

/// A request ready for the wire.
#[derive(Debug, PartialEq, Eq)]
struct Prepared {
    method: String,
    scheme: String,
    authority: String,
    path_with_query: String,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    /// The URL without its query, for messages.
    display_url: String,
}

impl Request {
    /// Starts a request with any method (`GET`, `POST`, or an extension
    /// method) to an absolute `https://` URL.
    pub fn new(method: &str, url: &str) -> Self {
        Self {
            method: method.to_owned(),
            url: url.to_owned(),
            headers: Vec::new(),
            body: Body::Empty,
            auth: Vec::new(),
            error: None,
        }
    }

    /// Starts a `GET` request.
    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }

    /// Starts a `POST` request.
    pub fn post(url: &str) -> Self {
        Self::new("POST", url)
    }

    /// Starts a `PUT` request.
    pub fn put(url: &str) -> Self {
        Self::new("PUT", url)
    }

    /// Starts a `PATCH` request.
    pub fn patch(url: &str) -> Self {
        Self::new("PATCH", url)
    }

    /// Starts a `DELETE` request.
    pub fn delete(url: &str) -> Self {
        Self::new("DELETE", url)
    }

    /// Adds a header. Adding the same name twice sends it twice.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets a JSON body, and `Content-Type: application/json` unless a
    /// content type was given with [`header`](Request::header).
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_value(value) {
            Ok(value) => self.body = Body::Json(value),
            Err(error) => self.error = Some(Error::from(error).context("request body")),
        }
        self
    }

    /// Sets a form body (`application/x-www-form-urlencoded`), encoding
    /// names and values, and sets the content type unless one was given.
    pub fn form<K: AsRef<str>, V: AsRef<str>>(mut self, fields: &[(K, V)]) -> Self {
        let fields = fields
            .iter()
            .map(|(name, value)| (name.as_ref().to_owned(), value.as_ref().to_owned()))
            .collect();
        self.body = Body::Form(fields);
        self
    }

    /// Sets a raw body. Set the content type with [`header`](Request::header).
    pub fn body(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.body = Body::Raw(bytes.into());
        self
    }

    /// Applies a secret where its connection's placement says it belongs.
    ///
    /// - `header:NAME=TEMPLATE`: header `NAME` is set to the template with
    ///   `{}` replaced by the placeholder (any header of that name given
    ///   earlier is dropped);
    /// - `basic`: `Authorization: Basic <placeholder>`; the host swaps in the
    ///   encoded `user:password`;
    /// - `query:PARAM`: `PARAM=<placeholder>` is appended to the query;
    /// - `body:FIELD`: field `FIELD` of the [`json`](Request::json) or
    ///   [`form`](Request::form) body is set to the placeholder (for JSON,
    ///   a member of the top-level object).
    ///
    /// The placement is applied when the request is sent, so the order of
    /// `auth` and the body methods does not matter.
    pub fn auth(mut self, secret: &Secret) -> Self {
        self.auth.push(Auth {
            placement: secret.placement(),
            placeholder: secret.placeholder(),
        });
        self
    }

    /// Sends the request and reads the whole response.
    ///
    /// # Errors
    ///
    /// Fails if the request cannot be built (a bad URL, a header the host
    /// forbids, a body placement without a body), if the host refuses it
    /// (the message carries the host's reason), if the connection fails, or
    /// if the response body is longer than [`MAX_RESPONSE_BYTES`]. An error
    /// status is *not* an error here: see [`Response::error_for_status`].
    pub fn send(self) -> Result<Response, Error> {
        let prepared = self.prepare()?;
        transport(prepared)
    }

    /// Applies secrets, encodes the body and splits the URL.
    fn prepare(self) -> Result<Prepared, Error> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let mut url = strip_fragment(&self.url).to_owned();
        let mut headers = self.headers;
        let mut body = self.body;
        for auth in &self.auth {
            apply_auth(auth, &mut url, &mut headers, &mut body)?;
        }
        let parts = split_url(&url)?;
        let content_type = match body {
            Body::Json(_) => Some("application/json"),
            Body::Form(_) => Some("application/x-www-form-urlencoded"),
            Body::Empty | Body::Raw(_) => None,
        };
        if let Some(content_type) = content_type
            && !has_header(&headers, "content-type")
        {
            headers.push(("content-type".to_owned(), content_type.to_owned()));
        }
        let body = match body {
            Body::Empty => None,
            Body::Raw(bytes) => Some(bytes),
            Body::Json(value) => Some(serde_json::to_vec(&value)?),
            Body::Form(fields) => Some(encode_form(&fields).into_bytes()),
        };
        if let Some(body) = &body
            && !has_header(&headers, "content-length")
        {
            headers.push(("content-length".to_owned(), body.len().to_string()));
        }
        Ok(Prepared {
            method: self.method,
            scheme: parts.scheme.to_owned(),
            authority: parts.authority.to_owned(),
            display_url: format!("{}://{}{}", parts.scheme, parts.authority, parts.path),
            path_with_query: parts.path_with_query,
            headers,
            body,
        })
    }
}

/// An HTTP response, read into memory.
#[derive(Debug, Clone)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    url: String,
}

impl Response {
    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// All headers in the order received, names in lower case. A value that
    /// is not UTF-8 is converted lossily.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body.
    pub fn bytes(&self) -> &[u8] {
        &self.body
    }

    /// The body, taking it out of the response.
    pub fn into_bytes(self) -> Vec<u8> {
        self.body
    }

    /// The body as text.
    ///
    /// # Errors
    ///
    /// Fails if the body is not UTF-8.
    pub fn text(&self) -> Result<&str, Error> {
        std::str::from_utf8(&self.body)
            .map_err(|error| Error::from(error).context(format_args!("response from {}", self.url)))
    }

    /// The body parsed as JSON.
    ///
    /// # Errors
    ///
    /// Fails if the body is not JSON of the shape `T` needs.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|error| Error::from(error).context(format_args!("response from {}", self.url)))
    }

    /// Turns a response with status 400 or above into an error.
    ///
    /// # Errors
    ///
    /// For status 400 and above: an error whose message has the status, the
    /// URL (without its query) and the start of the body, and whose
    /// [`Error::http_status`] is the status.
    pub fn error_for_status(self) -> Result<Self, Error> {
        if self.status < 400 {
            return Ok(self);
        }
        let mut message = format!("HTTP {} from {}", self.status, self.url);
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        if !text.is_empty() {
            let excerpt: String = text.chars().take(EXCERPT_CHARS).collect();
            let ellipsis = if excerpt.len() < text.len() {
                "..."
            } else {
                ""
            };
            let _ = write!(message, ": {excerpt}{ellipsis}");
        }
        Err(Error::with_status(self.status, message))
    }
}

/// Describes a `wasi:http` error code.
///
/// `internal-error` with a message carries the host's refusal reason and is
/// shown verbatim; anything else is shown in its debug form.
pub(crate) fn describe_error_code(error: &ErrorCode) -> String {
    match error {
        ErrorCode::InternalError(Some(message)) => message.clone(),
        other => format!("{other:?}"),
    }
}

/// Sends a prepared request and reads the response.
fn transport(request: Prepared) -> Result<Response, Error> {
    let url = request.display_url.clone();
    let fail = |reason: String| Error::msg(format_args!("request to {url} failed: {reason}"));

    let headers = wasip2::http::types::Fields::new();
    for (name, value) in &request.headers {
        headers
            .append(name, value.as_bytes())
            .map_err(|error| fail(describe_header_error(name, &error)))?;
    }
    let outgoing = OutgoingRequest::new(headers);
    outgoing
        .set_method(&to_method(&request.method))
        .map_err(|()| fail(format!("invalid method `{}`", request.method)))?;
    outgoing
        .set_scheme(Some(&to_scheme(&request.scheme)))
        .map_err(|()| fail(format!("invalid scheme `{}`", request.scheme)))?;
    outgoing
        .set_authority(Some(&request.authority))
        .map_err(|()| fail(format!("invalid authority `{}`", request.authority)))?;
    outgoing
        .set_path_with_query(Some(&request.path_with_query))
        .map_err(|()| fail("invalid path or query".to_owned()))?;
    let body = outgoing
        .body()
        .map_err(|()| fail("the request body is unavailable".to_owned()))?;

    let future = outgoing_handler::handle(outgoing, None)
        .map_err(|error| fail(describe_error_code(&error)))?;
    // Write the body after `handle`: the host reads it while it sends, so a
    // large body written before would block forever.
    let written = write_body(body, request.body.as_deref());
    let response = wait_for_response(&future);
    drop(future);
    // The response's error wins: on a refusal the write usually fails too,
    // and the response carries the host's reason.
    let response = response.map_err(&fail)?;
    written.map_err(&fail)?;
    read_response(&response, url.clone()).map_err(&fail)
}

/// Writes the body in chunks the stream accepts, then finishes it.
fn write_body(body: OutgoingBody, bytes: Option<&[u8]>) -> Result<(), String> {
    if let Some(bytes) = bytes.filter(|bytes| !bytes.is_empty()) {
        let stream = body
            .write()
            .map_err(|()| "the request body stream is unavailable".to_owned())?;
        for chunk in bytes.chunks(WRITE_CHUNK) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|error| describe_stream_error(error, "writing the request body"))?;
        }
        // The stream is a child of the body: it must go before `finish`.
        drop(stream);
    }
    OutgoingBody::finish(body, None).map_err(|error| describe_error_code(&error))
}

/// Blocks until the response head arrives.
fn wait_for_response(future: &FutureIncomingResponse) -> Result<IncomingResponse, String> {
    loop {
        match future.get() {
            Some(Ok(Ok(response))) => return Ok(response),
            Some(Ok(Err(error))) => return Err(describe_error_code(&error)),
            Some(Err(())) => return Err("the response was already taken".to_owned()),
            None => future.subscribe().block(),
        }
    }
}

/// Reads the status, headers and whole body of a response.
fn read_response(response: &IncomingResponse, url: String) -> Result<Response, String> {
    let status = response.status();
    let headers = response
        .headers()
        .entries()
        .into_iter()
        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
        .collect();
    let incoming = response
        .consume()
        .map_err(|()| "the response body is unavailable".to_owned())?;
    let stream = incoming
        .stream()
        .map_err(|()| "the response body stream is unavailable".to_owned())?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(READ_CHUNK) {
            Ok(chunk) => {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Err(format!(
                        "the response body exceeds {} MiB",
                        MAX_RESPONSE_BYTES / (1024 * 1024)
                    ));
                }
                body.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(error) => return Err(describe_stream_error(error, "reading the response body")),
        }
    }
    // The stream is a child of the body: it must go before `finish`.
    drop(stream);
    drop(wasip2::http::types::IncomingBody::finish(incoming));
    Ok(Response {
        status,
        headers,
        body,
        url,
    })
}

/// Describes a stream error, preferring the HTTP error code inside it.
fn describe_stream_error(error: StreamError, doing: &str) -> String {
    match error {
        StreamError::Closed => format!("{doing}: the stream was closed"),
        StreamError::LastOperationFailed(error) => {
            match wasip2::http::types::http_error_code(&error) {
                Some(code) => describe_error_code(&code),
                None => format!("{doing}: {}", error.to_debug_string()),
            }
        }
    }
}

/// Describes why a header was refused.
fn describe_header_error(name: &str, error: &HeaderError) -> String {
    let why = match error {
        HeaderError::InvalidSyntax => "has invalid syntax",
        HeaderError::Forbidden => "is forbidden",
        HeaderError::Immutable => "cannot be changed",
    };
    format!("header `{name}` {why}")
}

/// Maps a method name to its `wasi:http` form; known names ignore case.
fn to_method(method: &str) -> Method {
    match method.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "CONNECT" => Method::Connect,
        "OPTIONS" => Method::Options,
        "TRACE" => Method::Trace,
        "PATCH" => Method::Patch,
        _ => Method::Other(method.to_owned()),
    }
}

/// Maps a scheme to its `wasi:http` form.
fn to_scheme(scheme: &str) -> Scheme {
    if scheme.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else if scheme.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else {
        Scheme::Other(scheme.to_owned())
    }
}

/// Applies one secret to the request's parts.
fn apply_auth(
    auth: &Auth,
    url: &mut String,
    headers: &mut Vec<(String, String)>,
    body: &mut Body,
) -> Result<(), Error> {
    let placeholder = auth.placeholder.as_str();
    match parse_placement(&auth.placement)? {
        Placement::Header { name, template } => {
            let value = template.replace("{}", placeholder);
            set_header(headers, name, value);
        }
        Placement::Basic => set_header(headers, "authorization", format!("Basic {placeholder}")),
        Placement::Query(param) => {
            let separator = if url.contains('?') { '&' } else { '?' };
            url.push(separator);
            encode_key(param, url);
            url.push('=');
            encode_component(placeholder, url);
        }
        Placement::Body(field) => set_body_field(body, field, placeholder, &auth.placement)?,
    }
    Ok(())
}

/// Parses a placement string.
fn parse_placement(placement: &str) -> Result<Placement<'_>, Error> {
    let invalid = || Error::msg(format_args!("unsupported secret placement `{placement}`"));
    if placement == "basic" {
        return Ok(Placement::Basic);
    }
    let (kind, rest) = placement.split_once(':').ok_or_else(invalid)?;
    if rest.is_empty() {
        return Err(invalid());
    }
    match kind {
        "header" => match rest.split_once('=') {
            Some((name, template)) if !name.is_empty() && template.contains("{}") => {
                Ok(Placement::Header { name, template })
            }
            Some(_) => Err(invalid()),
            None => Ok(Placement::Header {
                name: rest,
                template: "{}",
            }),
        },
        "query" => Ok(Placement::Query(rest)),
        "body" => Ok(Placement::Body(rest)),
        _ => Err(invalid()),
    }
}

/// Puts the placeholder into a body field.
fn set_body_field(
    body: &mut Body,
    field: &str,
    placeholder: &str,
    placement: &str,
) -> Result<(), Error> {
    match body {
        Body::Json(value) => {
            let object = value.as_object_mut().ok_or_else(|| {
                Error::msg(format_args!(
                    "secret placement `{placement}` needs a JSON object body"
                ))
            })?;
            let slot = object.entry(field.to_owned()).or_insert(Value::Null);
            *slot = Value::String(placeholder.to_owned());
        }
        Body::Form(fields) => {
            fields.retain(|(key, _)| key != field);
            fields.push((field.to_owned(), placeholder.to_owned()));
        }
        Body::Empty | Body::Raw(_) => {
            return Err(Error::msg(format_args!(
                "secret placement `{placement}` needs a .json(..) or .form(..) body"
            )));
        }
    }
    Ok(())
}

/// Replaces every header called `name` (ignoring case) with one value.
fn set_header(headers: &mut Vec<(String, String)>, name: &str, value: String) {
    headers.retain(|(key, _)| !key.eq_ignore_ascii_case(name));
    headers.push((name.to_owned(), value));
}

/// Whether a header called `name` (ignoring case) is present.
fn has_header(headers: &[(String, String)], name: &str) -> bool {
    headers
        .iter()
        .any(|(key, _)| key.eq_ignore_ascii_case(name))
}

/// The parts of an absolute URL that `wasi:http` wants.
#[derive(Debug, PartialEq, Eq)]
struct UrlParts<'a> {
    scheme: &'a str,
    authority: &'a str,
    /// The path alone, for messages.
    path: &'a str,
    /// The path and query, starting with `/`.
    path_with_query: String,
}

/// Drops a `#fragment`, which is never sent.
fn strip_fragment(url: &str) -> &str {
    url.split_once('#').map_or(url, |(before, _)| before)
}

/// Splits `scheme://authority/path?query` (without a fragment).
fn split_url(url: &str) -> Result<UrlParts<'_>, Error> {
    let invalid = |why: &str| Error::msg(format_args!("invalid URL `{url}`: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| invalid("expected an absolute URL such as https://host/path"))?;
    let scheme_ok = scheme
        .chars()
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !scheme_ok {
        return Err(invalid("bad scheme"));
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.is_empty() {
        return Err(invalid("no host"));
    }
    if tail
        .chars()
        .any(|c| c.is_ascii_whitespace() || c.is_ascii_control())
    {
        return Err(invalid("whitespace or control characters in the path"));
    }
    let path = tail.split_once('?').map_or(tail, |(path, _)| path);
    let path = if path.is_empty() { "/" } else { path };
    let path_with_query = if tail.starts_with('/') {
        tail.to_owned()
    } else {
        format!("/{tail}")
    };
    Ok(UrlParts {
        scheme,
        authority,
        path,
        path_with_query,
    })
}

/// Encodes form fields as `application/x-www-form-urlencoded`.
fn encode_form(fields: &[(String, String)]) -> String {
    let mut out = String::new();
    for (index, (name, value)) in fields.iter().enumerate() {
        if index > 0 {
            out.push('&');
        }
        encode_key(name, &mut out);
        out.push('=');
        encode_component(value, &mut out);
    }
    out
}

/// Percent-encodes everything but unreserved characters (`A-Z a-z 0-9 - . _
/// ~`), with a space as `+`, as forms and query strings expect.
fn encode_component(text: &str, out: &mut String) {
    encode(text, b"", out);
}

/// Encodes a form field or query parameter name like
/// [`encode_component`], but keeps `[` and `]` as they are: bracketed names
/// (`client[secret]`) are common, every server accepts them raw, and the
/// host matches a placement's field name literally.
fn encode_key(text: &str, out: &mut String) {
    encode(text, b"[]", out);
}

/// Percent-encodes `text`, keeping unreserved characters and `keep`.
fn encode(text: &str, keep: &[u8], out: &mut String) {
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte));
            }
            _ if keep.contains(&byte) => out.push(char::from(byte)),
            b' ' => out.push('+'),
            _ => {
                let _ = write!(out, "%{byte:02X}");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests may unwrap")]
mod tests {
    use super::*;

    fn with_auth(request: Request, placement: &str) -> Request {
        let mut request = request;
        request.auth.push(Auth {
            placement: placement.to_owned(),
            placeholder: "PH".to_owned(),
        });
        request
    }

    fn header<'a>(prepared: &'a Prepared, name: &str) -> Option<&'a str> {
        prepared
            .headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    #[test]
    fn splits_urls() {
        let check = |url: &str, scheme: &str, authority: &str, path: &str, pq: &str| {
            let parts = split_url(url).unwrap();
            assert_eq!(
                (
                    parts.scheme,
                    parts.authority,
                    parts.path,
                    parts.path_with_query.as_str()
                ),
                (scheme, authority, path, pq),
                "{url}"
            );
        };
        check("https://example.com", "https", "example.com", "/", "/");
        check("https://example.com/", "https", "example.com", "/", "/");
        check(
            "https://example.com:8443/a/b?c=d&e",
            "https",
            "example.com:8443",
            "/a/b",
            "/a/b?c=d&e",
        );
        check(
            "https://example.com?x=1",
            "https",
            "example.com",
            "/",
            "/?x=1",
        );
        check("http://[::1]:80/p", "http", "[::1]:80", "/p", "/p");
        for bad in [
            "example.com/x",
            "https:///x",
            "://x",
            "1x://h/",
            "https://h/a b",
        ] {
            assert!(split_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn strips_fragments() {
        assert_eq!(strip_fragment("https://h/p?q#f"), "https://h/p?q");
        assert_eq!(strip_fragment("https://h/p"), "https://h/p");
    }

    #[test]
    fn encodes_forms() {
        let fields = vec![
            ("grant_type".to_owned(), "client_credentials".to_owned()),
            ("scope".to_owned(), "read write/all&more=é".to_owned()),
            ("a[b] c".to_owned(), "[x]".to_owned()),
        ];
        assert_eq!(
            encode_form(&fields),
            "grant_type=client_credentials&scope=read+write%2Fall%26more%3D%C3%A9&a[b]+c=%5Bx%5D"
        );
    }

    #[test]
    fn parses_placements() {
        assert_eq!(
            parse_placement("header:Authorization=Bearer {}").unwrap(),
            Placement::Header {
                name: "Authorization",
                template: "Bearer {}"
            }
        );
        assert_eq!(
            parse_placement("header:X-Api-Key").unwrap(),
            Placement::Header {
                name: "X-Api-Key",
                template: "{}"
            }
        );
        assert_eq!(parse_placement("basic").unwrap(), Placement::Basic);
        assert_eq!(
            parse_placement("query:api_key").unwrap(),
            Placement::Query("api_key")
        );
        assert_eq!(
            parse_placement("body:client_secret").unwrap(),
            Placement::Body("client_secret")
        );
        for bad in [
            "",
            "header:",
            "header:X=no-slot",
            "header:=Bearer {}",
            "query:",
            "path:x",
            "cookie:a",
        ] {
            assert!(parse_placement(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn applies_header_placement_over_existing_header() {
        let request = Request::get("https://api.example/x").header("authorization", "old");
        let prepared = with_auth(request, "header:Authorization=Bearer {}")
            .prepare()
            .unwrap();
        assert_eq!(header(&prepared, "authorization"), Some("Bearer PH"));
        assert_eq!(prepared.headers.len(), 1);
        assert_eq!(prepared.body, None);
    }

    #[test]
    fn applies_basic_placement() {
        let prepared = with_auth(Request::get("https://h/"), "basic")
            .prepare()
            .unwrap();
        assert_eq!(header(&prepared, "Authorization"), Some("Basic PH"));
    }

    #[test]
    fn applies_query_placement() {
        let prepared = with_auth(Request::get("https://h/p?a=1#frag"), "query:api_key")
            .prepare()
            .unwrap();
        assert_eq!(prepared.path_with_query, "/p?a=1&api_key=PH");
        assert_eq!(prepared.display_url, "https://h/p");
        let prepared = with_auth(Request::get("https://h"), "query:k")
            .prepare()
            .unwrap();
        assert_eq!(prepared.path_with_query, "/?k=PH");
    }

    #[test]
    fn applies_body_placement_to_forms_and_json() {
        let request = Request::post("https://h/token")
            .form(&[("client_id", "abc"), ("client_secret", "stale")]);
        let prepared = with_auth(request, "body:client_secret").prepare().unwrap();
        assert_eq!(
            prepared.body.as_deref(),
            Some(&b"client_id=abc&client_secret=PH"[..])
        );
        assert_eq!(
            header(&prepared, "content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(header(&prepared, "content-length"), Some("30"));

        // The order of `auth` and the body does not matter.
        let request = with_auth(Request::post("https://h/t"), "body:secret")
            .json(&serde_json::json!({"id": 1}));
        let prepared = request.prepare().unwrap();
        let body: Value = serde_json::from_slice(prepared.body.as_deref().unwrap()).unwrap();
        assert_eq!(body, serde_json::json!({"id": 1, "secret": "PH"}));
        assert_eq!(header(&prepared, "content-type"), Some("application/json"));
    }

    #[test]
    fn refuses_body_placement_without_a_body() {
        let error = with_auth(Request::post("https://h/t"), "body:secret")
            .prepare()
            .unwrap_err();
        assert!(
            error
                .message()
                .contains("needs a .json(..) or .form(..) body")
        );
        let error = with_auth(Request::post("https://h/t").json(&[1, 2]), "body:secret")
            .prepare()
            .unwrap_err();
        assert!(error.message().contains("JSON object"));
    }

    #[test]
    fn keeps_a_given_content_type() {
        let prepared = Request::post("https://h/")
            .header("Content-Type", "application/vnd.api+json")
            .json(&serde_json::json!({}))
            .prepare()
            .unwrap();
        assert_eq!(
            header(&prepared, "content-type"),
            Some("application/vnd.api+json")
        );
        assert_eq!(
            prepared
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case("content-type"))
                .count(),
            1
        );
    }

    #[test]
    fn error_for_status_quotes_the_body() {
        let response = Response {
            status: 404,
            headers: Vec::new(),
            body: b"  {\"message\":\"Not Found\"}\n".to_vec(),
            url: "https://h/x".to_owned(),
        };
        let error = response.error_for_status().unwrap_err();
        assert_eq!(
            error.message(),
            "HTTP 404 from https://h/x: {\"message\":\"Not Found\"}"
        );
        assert_eq!(error.http_status(), Some(404));

        let long = Response {
            status: 500,
            headers: Vec::new(),
            body: vec![b'x'; 1000],
            url: "https://h/".to_owned(),
        };
        let error = long.error_for_status().unwrap_err();
        assert!(error.message().ends_with("..."));
        assert!(error.message().len() < 300);

        let ok = Response {
            status: 302,
            headers: vec![("location".to_owned(), "/y".to_owned())],
            body: Vec::new(),
            url: "https://h/".to_owned(),
        };
        let ok = ok.error_for_status().unwrap();
        assert_eq!(ok.header("Location"), Some("/y"));
    }

    #[test]
    fn describes_host_refusals_verbatim() {
        let refusal =
            ErrorCode::InternalError(Some("wrun egress refused: host not granted".into()));
        assert_eq!(
            describe_error_code(&refusal),
            "wrun egress refused: host not granted"
        );
        assert_eq!(
            describe_error_code(&ErrorCode::HttpRequestDenied),
            "ErrorCode::HttpRequestDenied"
        );
    }
}

//! Connections, placeholders and the send-time swap of placeholder for value.
//!
//! A guest never holds a secret value. It asks for a handle by alias and gets
//! a placeholder: `wrun_ph_` followed by 128 random bits in hex, fresh for
//! every job. At send time [`Injector`] checks every occurrence of a
//! placeholder of the job in the outgoing request: the secret must be granted
//! to the step, the destination must be one the connection is bound to, and
//! the placeholder must sit exactly where the connection's [`Placement`]
//! says. Only then is it replaced by the value; any other occurrence refuses
//! the whole request.
//!
//! Request bodies are streamed through [`BodyInjector`], which finds
//! placeholders across chunk boundaries while holding back at most one
//! placeholder's length of data.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::egress::addr::Host;
use crate::misuse::{Channel, MISUSE_REFUSAL, StepMisuse};
use crate::policy::NetGrant;

mod body;

use self::body::{BodyKind, FieldScanner};

/// Prefix of every placeholder; the rest is 128 random bits in hex.
pub(crate) const PLACEHOLDER_PREFIX: &str = "wrun_ph_";
/// Length of every placeholder.
pub(crate) const PLACEHOLDER_LEN: usize = PLACEHOLDER_PREFIX.len() + 32;

/// A secret value. It is never printed: `Debug` and `Display` show `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Arc<str>);

impl SecretValue {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> SecretValue {
        SecretValue(Arc::from(value.into()))
    }

    /// The value itself, for the host code that must send or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue(***)")
    }
}

/// Where a connection's value may be placed in a request.
///
/// Written as text in manifests and the CLI:
/// `header:Authorization=Bearer {}`, `basic`, `query:api_key`,
/// `body:client_secret`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Placement {
    /// One header whose whole value is `template` with `{}` replaced.
    Header {
        /// The header name.
        name: HeaderName,
        /// The value template, containing `{}` exactly once.
        template: String,
    },
    /// `Authorization: Basic <placeholder>`; the value is `user:password`
    /// and is sent base64-encoded.
    Basic,
    /// One query parameter whose whole value is the placeholder.
    Query {
        /// The parameter name.
        param: String,
    },
    /// One field of a JSON or form-encoded body whose whole value is the
    /// placeholder (token endpoints).
    Body {
        /// The field name.
        field: String,
    },
}

impl Placement {
    /// `Authorization: Bearer {}`, the most common placement.
    pub fn bearer() -> Placement {
        Placement::Header {
            name: http::header::AUTHORIZATION,
            template: "Bearer {}".into(),
        }
    }
}

/// A placement or connection that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConnectionError(String);

impl FromStr for Placement {
    type Err = ConnectionError;

    fn from_str(s: &str) -> Result<Placement, ConnectionError> {
        let err = |m: &str| ConnectionError(format!("placement `{s}`: {m}"));
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        match kind {
            "basic" if rest.is_empty() => Ok(Placement::Basic),
            "header" => {
                let (name, template) = rest.split_once('=').ok_or_else(|| {
                    err("write `header:NAME=TEMPLATE`, e.g. `header:Authorization=Bearer {}`")
                })?;
                let name = HeaderName::from_bytes(name.trim().as_bytes())
                    .map_err(|_| err("invalid header name"))?;
                if template.matches("{}").count() != 1 {
                    return Err(err("the template must contain `{}` exactly once"));
                }
                if HeaderValue::from_str(template).is_err() {
                    return Err(err("the template is not a valid header value"));
                }
                Ok(Placement::Header {
                    name,
                    template: template.to_string(),
                })
            }
            "query" | "body" => {
                if rest.is_empty()
                    || !rest
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.[]".contains(&b))
                {
                    return Err(err("needs a field name of letters, digits, `-`, `_`, `.`"));
                }
                Ok(if kind == "query" {
                    Placement::Query { param: rest.into() }
                } else {
                    Placement::Body { field: rest.into() }
                })
            }
            _ => Err(err(
                "expected `header:NAME=TEMPLATE`, `basic`, `query:PARAM` or `body:FIELD`",
            )),
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Placement::Header { name, template } => write!(f, "header:{name}={template}"),
            Placement::Basic => f.write_str("basic"),
            Placement::Query { param } => write!(f, "query:{param}"),
            Placement::Body { field } => write!(f, "body:{field}"),
        }
    }
}

impl serde::Serialize for Placement {
    /// As written ([`fmt::Display`]), so a listing shows what parses back.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A credential kept by the host: its value, the hosts it may be sent to and
/// where in a request it belongs.
#[derive(Debug, Clone)]
pub struct Connection {
    name: String,
    value: SecretValue,
    hosts: NetGrant,
    placement: Placement,
}

impl Connection {
    /// Creates a connection.
    ///
    /// # Errors
    ///
    /// An invalid host pattern, no host at all (a connection bound to no host
    /// could never be used), or an empty value.
    pub fn new<I, S>(
        name: impl Into<String>,
        value: SecretValue,
        hosts: I,
        placement: Placement,
    ) -> Result<Connection, ConnectionError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let name = name.into();
        let hosts = NetGrant::parse_for_connection(hosts)
            .map_err(|e| ConnectionError(format!("connection `{name}`: {e}")))?;
        if hosts.is_empty() {
            return Err(ConnectionError(format!(
                "connection `{name}` is bound to no host"
            )));
        }
        if value.expose().len() < crate::mask::MIN_VALUE_LEN {
            return Err(ConnectionError(format!(
                "connection `{name}` has a value shorter than {} bytes, too short to be masked reliably",
                crate::mask::MIN_VALUE_LEN
            )));
        }
        Ok(Connection {
            name,
            value,
            hosts,
            placement,
        })
    }

    /// The connection's name in its workspace.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The hosts the value may be sent to.
    pub fn hosts(&self) -> &NetGrant {
        &self.hosts
    }

    /// Where the value may be placed.
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The value.
    pub fn value(&self) -> &SecretValue {
        &self.value
    }
}

/// The fewest guesses, as estimated by zxcvbn, that a new connection value
/// (for `basic`, its password) must take: 10^12.
pub const MIN_GUESSES_LOG10: f64 = 12.0;

/// How much of a value the strength estimate reads: a longer value is at
/// least as hard to guess as its first this many characters.
const STRENGTH_PREFIX: usize = 128;

/// Checks that a connection value given by an operator resists guessing.
///
/// The rule: the zxcvbn estimate (dictionaries of common passwords, words
/// and names, keyboard patterns, repeats, sequences, dates, then brute
/// force) of the number of guesses needed to find the value must be at
/// least 10^12 ([`MIN_GUESSES_LOG10`]). For `basic` the value is
/// `user:password` and the rule applies to the password. Values longer than
/// 128 characters are judged by their first 128. Random API tokens pass
/// (`ghp_` and 36 letters and digits, Slack `xoxb-…`, 32 hex digits, a
/// UUID, a JWT); `pin-1234` and `password1234` do not.
///
/// Why: a guest may produce candidate values; the runtime fails such a
/// step without saying which candidate matched (secret misuse), but each
/// failed job still answers "one of these"; a value that takes 10^12
/// guesses makes that useless. Values already stored are not checked again,
/// so old stores keep working: [`Connection::new`] does not apply this rule.
///
/// # Errors
///
/// The value is too easy to guess, or a `basic` value has no `:`. The
/// message states the rule, never the value or its estimate.
pub fn check_value_strength(
    name: &str,
    value: &SecretValue,
    placement: &Placement,
) -> Result<(), ConnectionError> {
    let secret = match placement {
        Placement::Basic => match value.expose().split_once(':') {
            Some((_, password)) => password,
            None => {
                return Err(ConnectionError(format!(
                    "connection `{name}`: a `basic` value is `user:password`"
                )));
            }
        },
        _ => value.expose(),
    };
    let end = secret
        .char_indices()
        .nth(STRENGTH_PREFIX)
        .map_or(secret.len(), |(i, _)| i);
    let guesses = if secret.is_empty() {
        0.0
    } else {
        zxcvbn::zxcvbn(&secret[..end], &[name]).guesses_log10()
    };
    if guesses < MIN_GUESSES_LOG10 {
        let what = if matches!(placement, Placement::Basic) {
            "the password of"
        } else {
            "the value of"
        };
        return Err(ConnectionError(format!(
            "connection `{name}`: {what} the connection is too easy to guess: a value must take at least 10^12 guesses by the zxcvbn estimate (use a random token, e.g. 24 or more random letters and digits)"
        )));
    }
    Ok(())
}

/// Where the runtime gets connections from. The CLI and the daemon implement
/// it over their encrypted stores; [`StaticConnections`] serves tests and
/// simple embeddings.
#[async_trait::async_trait]
pub trait ConnectionSource: Send + Sync {
    /// Looks a connection up by name; `Ok(None)` when there is none.
    ///
    /// # Errors
    ///
    /// A message saying why the connection cannot be had (the store
    /// failed; an OAuth2 connection needs to be authorised again), shown
    /// to the recipe's author as it is. It must not contain the value.
    async fn connection(&self, name: &str) -> Result<Option<Connection>, String>;
}

/// Connections held in memory.
#[derive(Debug, Clone, Default)]
pub struct StaticConnections {
    by_name: HashMap<String, Connection>,
}

impl StaticConnections {
    /// No connections.
    pub fn new() -> StaticConnections {
        StaticConnections::default()
    }

    /// Adds (or replaces) a connection.
    pub fn with(mut self, connection: Connection) -> StaticConnections {
        self.by_name.insert(connection.name.clone(), connection);
        self
    }
}

#[async_trait::async_trait]
impl ConnectionSource for StaticConnections {
    async fn connection(&self, name: &str) -> Result<Option<Connection>, String> {
        Ok(self.by_name.get(name).cloned())
    }
}

/// A fresh, unguessable placeholder.
pub(crate) fn new_placeholder() -> String {
    format!("{PLACEHOLDER_PREFIX}{:032x}", rand::random::<u128>())
}

/// A connection as one job sees it: the connection and its job placeholder.
#[derive(Debug)]
pub(crate) struct JobSecret {
    pub(crate) connection: Connection,
    pub(crate) placeholder: String,
}

/// Why a request was refused. The reason names hosts, aliases and places,
/// never a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// Whether a secret was involved (audited as secret misuse).
    pub(crate) connection: Option<String>,
    pub(crate) reason: String,
}

impl Refusal {
    pub(crate) fn egress(reason: impl Into<String>) -> Refusal {
        Refusal {
            connection: None,
            reason: reason.into(),
        }
    }

    fn secret(secret: &JobSecret, reason: String) -> Refusal {
        Refusal {
            connection: Some(secret.connection.name.clone()),
            reason,
        }
    }
}

/// What a request may hold: the secrets of the job, the ones granted to the
/// step, and the destination. Built per request.
pub(crate) struct Injector<'a> {
    /// Every placeholder of the job, matched in one pass.
    pub(crate) matcher: &'a PlaceholderMatcher,
    /// Aliases granted to the step, by connection name.
    pub(crate) granted: &'a HashMap<String, String>,
    pub(crate) host: &'a Host,
    pub(crate) port: u16,
}

/// An Aho-Corasick automaton over all placeholders of a job.
#[derive(Debug, Clone, Default)]
pub(crate) struct PlaceholderMatcher {
    /// `None` while the job has no secrets.
    ac: Option<Arc<AhoCorasick>>,
    secrets: Arc<[Arc<JobSecret>]>,
}

impl PlaceholderMatcher {
    /// Builds the automaton.
    ///
    /// # Errors
    ///
    /// Only if the automaton exceeds aho-corasick's size limits, which a set
    /// of fixed-length placeholders cannot reach in practice.
    pub(crate) fn new(secrets: Vec<Arc<JobSecret>>) -> Result<PlaceholderMatcher, String> {
        if secrets.is_empty() {
            return Ok(PlaceholderMatcher::default());
        }
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostFirst)
            .build(secrets.iter().map(|s| s.placeholder.as_bytes()))
            .map_err(|e| format!("placeholder matcher: {e}"))?;
        Ok(PlaceholderMatcher {
            ac: Some(Arc::new(ac)),
            secrets: secrets.into(),
        })
    }

    /// The first placeholder in `text`: its span and its secret.
    fn find(&self, text: &[u8]) -> Option<(usize, usize, Arc<JobSecret>)> {
        let m = self.ac.as_ref()?.find(text)?;
        Some((
            m.start(),
            m.end(),
            self.secrets[m.pattern().as_usize()].clone(),
        ))
    }

    fn contains(&self, text: &[u8]) -> bool {
        self.ac.as_ref().is_some_and(|ac| ac.is_match(text))
    }
}

impl Injector<'_> {
    /// Checks that a secret may go to this destination at all.
    fn check_use(&self, secret: &JobSecret) -> Result<(), Refusal> {
        if !self.granted.contains_key(secret.connection.name()) {
            return Err(Refusal::secret(
                secret,
                format!(
                    "the request holds the placeholder of connection `{}`, which is not granted to this step",
                    secret.connection.name()
                ),
            ));
        }
        if !secret.connection.hosts.allows(self.host, self.port) {
            return Err(Refusal::secret(
                secret,
                format!(
                    "connection `{}` may not be sent to {}:{} (it is bound to {})",
                    secret.connection.name(),
                    self.host,
                    self.port,
                    secret.connection.hosts
                ),
            ));
        }
        Ok(())
    }

    fn misplaced(&self, secret: &JobSecret, place: &str) -> Refusal {
        Refusal::secret(
            secret,
            format!(
                "the placeholder of connection `{}` is in {place}, but the connection allows only `{}`",
                secret.connection.name(),
                secret.connection.placement
            ),
        )
    }

    /// Rewrites the path and query: placeholders are allowed only as the
    /// whole value of the query parameter the connection names.
    pub(crate) fn inject_uri(
        &self,
        uri: &http::Uri,
    ) -> Result<(Option<http::Uri>, Vec<String>), Refusal> {
        let Some(pq) = uri.path_and_query() else {
            return Ok((None, Vec::new()));
        };
        if !self.matcher.contains(pq.as_str().as_bytes()) {
            return Ok((None, Vec::new()));
        }
        if let Some((_, _, secret)) = self.matcher.find(pq.path().as_bytes()) {
            return Err(self.misplaced(&secret, "the URL path"));
        }
        let query = pq.query().unwrap_or("");
        let mut used = Vec::new();
        let mut out = String::with_capacity(query.len() + 64);
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if let Some((_, _, secret)) = self.matcher.find(key.as_bytes()) {
                return Err(self.misplaced(&secret, "a query parameter name"));
            }
            let Some((start, end, secret)) = self.matcher.find(value.as_bytes()) else {
                out.push_str(pair);
                continue;
            };
            self.check_use(&secret)?;
            let allowed =
                matches!(&secret.connection.placement, Placement::Query { param } if param == key);
            if !allowed || start != 0 || end != value.len() {
                return Err(self.misplaced(&secret, &format!("query parameter `{key}`")));
            }
            out.push_str(key);
            out.push('=');
            out.extend(utf8_percent_encode(
                secret.connection.value.expose(),
                QUERY_VALUE,
            ));
            used.push(secret.connection.name.clone());
        }
        let rebuilt = format!("{}?{}", pq.path(), out);
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(
            rebuilt
                .parse()
                .map_err(|_| Refusal::egress("the request URI is invalid after substitution"))?,
        );
        let uri = http::Uri::from_parts(parts)
            .map_err(|_| Refusal::egress("the request URI is invalid after substitution"))?;
        Ok((Some(uri), used))
    }

    /// Rewrites headers: a placeholder is allowed only as the connection's
    /// header template (or `Authorization: Basic <placeholder>`).
    pub(crate) fn inject_headers(
        &self,
        headers: &mut http::HeaderMap,
    ) -> Result<Vec<String>, Refusal> {
        let mut used = Vec::new();
        for (name, value) in headers.iter_mut() {
            if let Some((_, _, secret)) = self.matcher.find(name.as_str().as_bytes()) {
                return Err(self.misplaced(&secret, "a header name"));
            }
            let Some((_, _, secret)) = self.matcher.find(value.as_bytes()) else {
                continue;
            };
            self.check_use(&secret)?;
            let raw = secret.connection.value.expose();
            let replacement = match &secret.connection.placement {
                Placement::Header {
                    name: allowed,
                    template,
                } if allowed == name
                    && value.as_bytes()
                        == template.replace("{}", &secret.placeholder).as_bytes() =>
                {
                    template.replace("{}", raw)
                }
                Placement::Basic
                    if name == http::header::AUTHORIZATION
                        && value.as_bytes()
                            == format!("Basic {}", secret.placeholder).as_bytes() =>
                {
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(raw)
                    )
                }
                _ => return Err(self.misplaced(&secret, &format!("header `{name}`"))),
            };
            let mut new_value = HeaderValue::from_str(&replacement).map_err(|_| {
                Refusal::secret(
                    &secret,
                    format!(
                        "the value of connection `{}` cannot be sent in a header (it holds characters a header may not)",
                        secret.connection.name()
                    ),
                )
            })?;
            new_value.set_sensitive(true);
            *value = new_value;
            used.push(secret.connection.name.clone());
        }
        Ok(used)
    }

    /// Prepares the streaming body check for a request with this content type.
    pub(crate) fn body(&self, content_type: Option<&str>) -> BodyInjector {
        let kind = BodyKind::of(content_type);
        let decisions = self
            .matcher
            .secrets
            .iter()
            .map(|secret| {
                self.check_use(secret)?;
                let Placement::Body { field } = &secret.connection.placement else {
                    return Err(self.misplaced(secret, "the request body"));
                };
                let raw = secret.connection.value.expose();
                let encoded = match kind {
                    BodyKind::Json => {
                        let quoted = serde_json::to_string(raw).unwrap_or_default();
                        quoted[1..quoted.len().saturating_sub(1).max(1)].to_string()
                    }
                    BodyKind::Form => utf8_percent_encode(raw, FORM_VALUE)
                        .to_string()
                        .replace("%20", "+"),
                    BodyKind::Other => {
                        return Err(self.misplaced(
                            secret,
                            "a body whose content type is neither `application/json` (or `+json`) nor `application/x-www-form-urlencoded`",
                        ));
                    }
                };
                Ok(BodyUse {
                    field: field.clone(),
                    encoded: Bytes::from(encoded),
                    connection: secret.connection.name.clone(),
                })
            })
            .collect();
        BodyInjector {
            matcher: self.matcher.clone(),
            decisions,
            scanner: FieldScanner::new(kind),
            pending: Vec::new(),
            used: Vec::new(),
            watch: None,
        }
    }
}

/// Characters percent-encoded in a query value: everything but RFC 3986
/// unreserved characters.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');
/// Form values use the same set (space becomes `+` afterwards).
const FORM_VALUE: &AsciiSet = QUERY_VALUE;

struct BodyUse {
    field: String,
    /// The value, encoded for the body: never printed.
    encoded: Bytes,
    connection: String,
}

impl fmt::Debug for BodyUse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BodyUse")
            .field("field", &self.field)
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

/// The streaming half of [`Injector`]: checks and rewrites a request body
/// chunk by chunk.
///
/// It holds back the last [`PLACEHOLDER_LEN`] bytes of input (a placeholder
/// may start there, and the byte after a placeholder must be seen to check
/// its place) and feeds everything before to a [`FieldScanner`], which knows
/// whether a placeholder starts the whole value of its top-level field (see
/// [`body`]). Memory use is bounded whatever the body size.
#[derive(Debug)]
pub(crate) struct BodyInjector {
    matcher: PlaceholderMatcher,
    decisions: Vec<Result<BodyUse, Refusal>>,
    scanner: FieldScanner,
    pending: Vec<u8>,
    used: Vec<String>,
    /// Watches the guest's bytes for connection values (misuse).
    watch: Option<BodyWatch>,
}

impl BodyInjector {
    /// Also watches the guest's bytes for a connection value: one found
    /// refuses the request and is recorded as misuse of the step.
    pub(crate) fn watched(mut self, misuse: Arc<StepMisuse>) -> BodyInjector {
        self.watch = Some(BodyWatch::new(misuse));
        self
    }

    /// Feeds a chunk; returns the bytes that may be sent now.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Result<Bytes, Refusal> {
        if let Some(watch) = &mut self.watch {
            watch.check(chunk)?;
        }
        self.pending.extend_from_slice(chunk);
        self.drain(false)
    }

    /// Ends the body; returns the remaining bytes.
    pub(crate) fn finish(&mut self) -> Result<Bytes, Refusal> {
        self.drain(true)
    }

    /// Connections whose values were put into the body.
    pub(crate) fn used(&self) -> &[String] {
        &self.used
    }

    /// Whether some placeholder could still be replaced (which changes the
    /// body's length); otherwise any placeholder refuses the request and
    /// the body goes out byte for byte.
    pub(crate) fn may_inject(&self) -> bool {
        self.decisions.iter().any(Result::is_ok)
    }

    fn drain(&mut self, last: bool) -> Result<Bytes, Refusal> {
        let mut out = Vec::with_capacity(self.pending.len());
        let mut pos = 0;
        let mut undecided = None;
        let matches: Vec<(usize, usize, usize)> = match &self.matcher.ac {
            Some(ac) => ac
                .find_iter(&self.pending)
                .map(|m| (m.start(), m.end(), m.pattern().as_usize()))
                .collect(),
            None => Vec::new(),
        };
        for (start, end, index) in matches {
            if end >= self.pending.len() && !last {
                // The byte after the placeholder has not arrived yet.
                undecided = Some(start);
                break;
            }
            let (field, encoded, connection) = match &self.decisions[index] {
                Ok(u) => (u.field.clone(), u.encoded.clone(), u.connection.clone()),
                Err(refusal) => return Err(refusal.clone()),
            };
            self.scanner.feed(&self.pending[pos..start]);
            let after = self.pending.get(end).copied();
            if !self.scanner.whole_value_of(&field, after) {
                let secret = &self.matcher.secrets[index];
                return Err(Refusal::secret(
                    secret,
                    format!(
                        "the placeholder of connection `{}` is in the request body, but not as the whole value of top-level field `{}`",
                        secret.connection.name(),
                        field
                    ),
                ));
            }
            // The scanner sees the guest's bytes, never the value.
            self.scanner.feed(&self.pending[start..end]);
            out.extend_from_slice(&self.pending[pos..start]);
            out.extend_from_slice(&encoded);
            if !self.used.contains(&connection) {
                self.used.push(connection);
            }
            pos = end;
        }
        let keep_from = match undecided {
            Some(start) => start,
            None if last => self.pending.len(),
            None => self.pending.len().saturating_sub(PLACEHOLDER_LEN).max(pos),
        };
        self.scanner.feed(&self.pending[pos..keep_from]);
        out.extend_from_slice(&self.pending[pos..keep_from]);
        self.pending.drain(..keep_from);
        Ok(Bytes::from(out))
    }
}

/// The misuse watch of a request body: each chunk is searched together with
/// the end of the one before, so a value split across chunks is found.
#[derive(Debug)]
struct BodyWatch {
    misuse: Arc<StepMisuse>,
    tail: Vec<u8>,
}

impl BodyWatch {
    fn new(misuse: Arc<StepMisuse>) -> BodyWatch {
        BodyWatch {
            misuse,
            tail: Vec::new(),
        }
    }

    fn check(&mut self, chunk: &[u8]) -> Result<(), Refusal> {
        let keep = self.misuse.max_pattern_len().saturating_sub(1);
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(chunk);
        if self.misuse.check(Channel::Request, &window) {
            return Err(Refusal::egress(MISUSE_REFUSAL));
        }
        let cut = window.len().saturating_sub(keep);
        window.drain(..cut);
        self.tail = window;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_secret(name: &str, value: &str, host: &str, placement: &str) -> Arc<JobSecret> {
        Arc::new(JobSecret {
            connection: Connection::new(
                name,
                SecretValue::new(value),
                [host],
                placement.parse().unwrap(),
            )
            .unwrap(),
            placeholder: new_placeholder(),
        })
    }

    struct Fixture {
        matcher: PlaceholderMatcher,
        granted: HashMap<String, String>,
        host: Host,
        secrets: Vec<Arc<JobSecret>>,
    }

    impl Fixture {
        fn new(host: &str) -> Fixture {
            let secrets = vec![
                job_secret(
                    "gh",
                    "ghp_VALUE\"quoted",
                    "api.example.com",
                    "header:Authorization=Bearer {}",
                ),
                job_secret("basic", "user:pa ss", "api.example.com", "basic"),
                job_secret("key", "k&y=1 2", "api.example.com", "query:api_key"),
                job_secret(
                    "client",
                    "s3cr\"et&x",
                    "auth.example.com",
                    "body:client_secret",
                ),
                job_secret(
                    "other",
                    "not-granted-value",
                    "api.example.com",
                    "header:X-Key={}",
                ),
            ];
            let granted = ["gh", "basic", "key", "client"]
                .iter()
                .map(|n| (n.to_string(), n.to_string()))
                .collect();
            Fixture {
                matcher: PlaceholderMatcher::new(secrets.clone()).unwrap(),
                granted,
                host: crate::egress::addr::parse_host(host).unwrap(),
                secrets,
            }
        }
        fn injector(&self) -> Injector<'_> {
            Injector {
                matcher: &self.matcher,
                granted: &self.granted,
                host: &self.host,
                port: 443,
            }
        }
        fn ph(&self, i: usize) -> &str {
            &self.secrets[i].placeholder
        }
    }

    #[test]
    fn placements_parse_and_print() {
        for (s, shown) in [
            (
                "header:Authorization=Bearer {}",
                "header:authorization=Bearer {}",
            ),
            ("basic", "basic"),
            ("query:api_key", "query:api_key"),
            ("body:client_secret", "body:client_secret"),
        ] {
            assert_eq!(s.parse::<Placement>().unwrap().to_string(), shown);
        }
        for bad in [
            "",
            "header:Authorization",
            "header:X=no-slot",
            "header:X={}{}",
            "query:",
            "cookie:x",
            "basic:x",
        ] {
            assert!(bad.parse::<Placement>().is_err(), "{bad}");
        }
    }

    #[test]
    fn values_too_short_to_mask_are_refused() {
        let short = Connection::new(
            "c",
            SecretValue::new("abc"),
            ["a.example.com"],
            Placement::bearer(),
        );
        assert!(short.unwrap_err().to_string().contains("too short"));
    }

    #[test]
    fn guessable_values_are_refused_and_random_tokens_accepted() {
        let check = |value: &str, placement: &str| {
            check_value_strength("c", &SecretValue::new(value), &placement.parse().unwrap())
        };
        let bearer = "header:Authorization=Bearer {}";
        for weak in [
            "pin-1234",
            "pin-9071",
            "password1234",
            "Password1234!",
            "correcthorse",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "abcdefghijklmnopqrstuvwxyz",
            "1234567890123456",
            "qwertyuiopasdfgh",
            "",
        ] {
            let err = check(weak, bearer).unwrap_err().to_string();
            assert!(
                err.contains("too easy to guess") && err.contains("10^12"),
                "{err}"
            );
            assert!(weak.is_empty() || !err.contains(weak), "{err}");
        }
        for weak in [
            "admin:password1234",
            "svc:pin-1234",
            "no-colon-8fK2pQ9vX3mZ7wR1tY5u",
        ] {
            assert!(check(weak, "basic").is_err(), "{weak}");
        }
        for strong in [
            "ghp_R8fK2pQ9vX3mZ7wR1tY5uJ6nB4cL0sD2eH8a",
            "xoxb-2718281828-3141592653589-Zk9QwErTy8UiOpAs7DfGhJkL",
            "9f86d081884c7d659a2feaa0c55ad015",
            "3f2b8c1e-7a4d-4e9b-b6c2-5d8e1f0a9c73",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ3cnVuIn0.dGhpcyBpcyBub3QgYSByZWFsIHNpZw",
            "canary-api-5e1c0a7f3b9d2e6a8c4f1b0d7e3a9c52",
        ] {
            check(strong, bearer).unwrap();
        }
        check("svc-user:Zk9QwErTy8UiOpAs7DfGhJkL", "basic").unwrap();
        // A long value is judged by its start, in linear time.
        let long = format!("9f86d081884c7d659a2feaa0c55ad015{}", "a".repeat(1 << 20));
        check(&long, bearer).unwrap();
    }

    #[test]
    fn placeholders_are_fresh_and_long() {
        let a = new_placeholder();
        assert_eq!(a.len(), PLACEHOLDER_LEN);
        assert_ne!(a, new_placeholder());
    }

    #[test]
    fn header_template_is_replaced_only_in_its_place() {
        let f = Fixture::new("api.example.com");
        let mut h = http::HeaderMap::new();
        h.insert(
            "authorization",
            format!("Bearer {}", f.ph(0)).parse().unwrap(),
        );
        let used = f.injector().inject_headers(&mut h).unwrap();
        assert_eq!(used, ["gh"]);
        assert_eq!(h["authorization"], "Bearer ghp_VALUE\"quoted");

        for (name, value) in [
            ("x-other", format!("Bearer {}", f.ph(0))),
            ("authorization", format!("Bearer {}x", f.ph(0))),
            ("authorization", format!("token {}", f.ph(0))),
            ("x-key", f.ph(4).to_string()),
        ] {
            let mut h = http::HeaderMap::new();
            h.insert(HeaderName::from_static(name), value.parse().unwrap());
            assert!(
                f.injector().inject_headers(&mut h).is_err(),
                "{name}: {value}"
            );
        }
    }

    #[test]
    fn basic_auth_is_encoded_by_the_host() {
        let f = Fixture::new("api.example.com");
        let mut h = http::HeaderMap::new();
        h.insert(
            "authorization",
            format!("Basic {}", f.ph(1)).parse().unwrap(),
        );
        f.injector().inject_headers(&mut h).unwrap();
        assert_eq!(h["authorization"], "Basic dXNlcjpwYSBzcw==");
    }

    #[test]
    fn secret_is_refused_toward_a_host_it_is_not_bound_to() {
        let f = Fixture::new("evil.example.com");
        let mut h = http::HeaderMap::new();
        h.insert(
            "authorization",
            format!("Bearer {}", f.ph(0)).parse().unwrap(),
        );
        let err = f.injector().inject_headers(&mut h).unwrap_err();
        assert!(
            err.reason.contains("may not be sent to evil.example.com"),
            "{}",
            err.reason
        );
        assert!(!err.reason.contains("ghp_VALUE"));
    }

    #[test]
    fn query_placement() {
        let f = Fixture::new("api.example.com");
        let uri: http::Uri = format!("https://api.example.com/v1?q=1&api_key={}&z", f.ph(2))
            .parse()
            .unwrap();
        let (uri, used) = f.injector().inject_uri(&uri).unwrap();
        assert_eq!(used, ["key"]);
        assert_eq!(
            uri.unwrap().path_and_query().unwrap().as_str(),
            "/v1?q=1&api_key=k%26y%3D1%202&z"
        );

        for bad in [
            format!("https://api.example.com/{}/x", f.ph(2)),
            format!("https://api.example.com/x?other={}", f.ph(2)),
            format!("https://api.example.com/x?api_key=a{}", f.ph(2)),
            format!("https://api.example.com/x?{}=1", f.ph(2)),
            format!("https://api.example.com/x?api_key={}", f.ph(0)),
        ] {
            let uri: http::Uri = bad.parse().unwrap();
            assert!(f.injector().inject_uri(&uri).is_err(), "{bad}");
        }
    }

    fn run_body(inj: &mut BodyInjector, body: &[u8], chunk: usize) -> Result<Vec<u8>, Refusal> {
        let mut out = Vec::new();
        for c in body.chunks(chunk.max(1)) {
            out.extend_from_slice(&inj.push(c)?);
        }
        out.extend_from_slice(&inj.finish()?);
        Ok(out)
    }

    #[test]
    fn body_field_is_replaced_across_chunk_boundaries() {
        let f = Fixture::new("auth.example.com");
        let form = format!(
            "grant_type=client_credentials&client_secret={}&scope=a+b",
            f.ph(3)
        );
        let json = format!(
            "{{\"client_id\": \"x\", \"client_secret\" : \"{}\"}}",
            f.ph(3)
        );
        for chunk in 1..form.len() + 1 {
            let mut inj = f.injector().body(Some("application/x-www-form-urlencoded"));
            let out = run_body(&mut inj, form.as_bytes(), chunk).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "grant_type=client_credentials&client_secret=s3cr%22et%26x&scope=a+b"
            );
            assert_eq!(inj.used(), ["client"]);
            let mut inj = f.injector().body(Some("application/json; charset=utf-8"));
            let out = run_body(&mut inj, json.as_bytes(), chunk).unwrap();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "{\"client_id\": \"x\", \"client_secret\" : \"s3cr\\\"et&x\"}"
            );
        }
    }

    #[test]
    fn body_placeholder_elsewhere_is_refused() {
        let f = Fixture::new("auth.example.com");
        let cases = [
            (
                "application/json",
                format!("{{\"other\": \"{}\"}}", f.ph(3)),
            ),
            (
                "application/json",
                format!("{{\"client_secret\": \"x{}\"}}", f.ph(3)),
            ),
            (
                "application/json",
                format!("{{\"client_secret\": \"{}x\"}}", f.ph(3)),
            ),
            (
                "application/x-www-form-urlencoded",
                format!("xclient_secret={}", f.ph(3)),
            ),
            ("text/plain", format!("client_secret={}", f.ph(3))),
            (
                "multipart/form-data; boundary=json",
                format!(
                    "--json\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n{{\"client_secret\": \"{}\"}}\r\n--json--",
                    f.ph(3)
                ),
            ),
            (
                "application/json",
                format!("{{\"data\": {{\"client_secret\": \"{}\"}}}}", f.ph(3)),
            ),
            (
                "application/json",
                format!("{{\"client_secret\": [\"{}\"]}}", f.ph(3)),
            ),
            (
                "application/json",
                format!("[{{\"client_secret\": \"{}\"}}]", f.ph(3)),
            ),
            (
                "application/json",
                format!("{{\"{}\": \"client_secret\"}}", f.ph(3)),
            ),
            (
                "application/jsonp",
                format!("{{\"client_secret\": \"{}\"}}", f.ph(3)),
            ),
            (
                "application/x-www-form-urlencoded",
                format!("client_secret=x&other={}", f.ph(3)),
            ),
            (
                "application/json",
                format!("{{\"client_secret\": \"{}\"}}", f.ph(0)),
            ),
        ];
        for (ct, body) in cases {
            for chunk in [1, 7, 4096] {
                let mut inj = f.injector().body(Some(ct));
                assert!(
                    run_body(&mut inj, body.as_bytes(), chunk).is_err(),
                    "{ct} {body}"
                );
            }
        }
        let f = Fixture::new("api.example.com");
        let mut inj = f.injector().body(Some("application/x-www-form-urlencoded"));
        let body = format!("client_secret={}", f.ph(3));
        let err = run_body(&mut inj, body.as_bytes(), 5).unwrap_err();
        assert!(err.reason.contains("may not be sent"), "{}", err.reason);
    }

    #[test]
    fn body_without_placeholders_passes_unchanged() {
        let f = Fixture::new("api.example.com");
        let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for chunk in [1, 3, 40, 41, 4096, 100_000] {
            let mut inj = f.injector().body(None);
            assert_eq!(run_body(&mut inj, &body, chunk).unwrap(), body);
        }
    }
}

#[cfg(test)]
#[path = "proptests/secrets.rs"]
mod proptests;

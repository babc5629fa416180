//! Recipe manifests: the TOML file a recipe author writes, parsed and
//! checked into value types.
//!
//! A manifest names a trigger and the steps that run after it, in order.
//! Each step names a component and one of its actions, builds the action's
//! input from the trigger payload and earlier outputs through data pills
//! (see [`pills`]), and lists its grants. A manifest holds names of
//! connections, never their values.
//!
//! ```toml
//! [recipe]
//! name = "issue-to-slack"
//! description = "Post new GitHub issues to Slack"
//! output = "fetch-issue"    # optional: the step whose output is the recipe's
//!
//! [trigger]
//! kind = "webhook"          # "manual" (the default), "webhook" or "schedule"
//!
//! [[steps]]
//! name = "fetch-issue"
//! component = "components/github_issue.wasm"   # relative to the manifest
//! build = "steps/github-issue"                  # optional: a step crate
//! action = "get-issue"
//! input = { number = "{{ trigger.issue.number }}" }
//! condition = "{{ trigger.issue.open }}"         # optional
//! retry = { attempts = 3, backoff = "2s", max_backoff = "30s" }  # optional
//!
//! [steps.grants]
//! net = ["api.github.com"]
//! secrets = { github = "github" }   # step-local alias -> connection name
//! mask = ["/token"]
//! timeout = "10s"
//! memory = "64MiB"
//! env = ["github_api"]
//! ```
//!
//! [`Manifest::parse`] reports every problem at once, each with where it is
//! (`steps[1] (notify).grants.net[0] at 12:7`) and what is wrong. It never
//! panics on bad input. [`Manifest::to_toml`] writes a manifest back, for
//! export.

pub mod pills;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::grants::{GrantError, Grants};

pub use pills::{PillContext, PillError, PillRef, PillSyntaxError, Root, Template, truthy};

/// The most attempts a step's retry policy may ask for.
pub const MAX_ATTEMPTS: u32 = 100;

/// A parsed and checked recipe manifest.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Manifest {
    /// The `[recipe]` table: name, description, answering step.
    pub recipe: RecipeInfo,
    /// What starts a run.
    pub trigger: Trigger,
    /// The steps, in the order they run. There is at least one.
    pub steps: Vec<StepSpec>,
}

/// The `[recipe]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecipeInfo {
    /// The recipe's name: 1 to 64 characters of `a-z`, `0-9`, `-`, `_`.
    pub name: String,
    /// A sentence for people browsing recipes.
    pub description: Option<String>,
    /// The step whose output is the recipe's output: what an endpoint
    /// recipe answers its webhook with. `None` means the last step that
    /// succeeded. When set, it names a step of the manifest.
    pub output: Option<String>,
}

/// What starts a run of the recipe (the `[trigger]` table).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Trigger {
    /// Started by hand (`wrun run`, the API). The default.
    #[default]
    Manual,
    /// Started by an HTTP request to the recipe's webhook.
    Webhook {
        /// How requests are signed, such as `hmac-sha256`; kept as written.
        signature: Option<String>,
    },
    /// Started on a schedule.
    Schedule {
        /// A five-field cron expression: minute, hour, day of month, month,
        /// day of week. Only the number of fields is checked here.
        cron: String,
        /// The time zone the expression is read in; `UTC` unless set.
        timezone: String,
    },
}

/// One step of a recipe (an entry of `[[steps]]`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct StepSpec {
    /// The step's name, unique in the recipe: 1 to 64 characters of `a-z`,
    /// `0-9`, `-`, `_`.
    pub name: String,
    /// The component's `.wasm` file, relative to the manifest file.
    pub component: PathBuf,
    /// A step crate directory, relative to the manifest file, that
    /// `wrun build` compiles into [`StepSpec::component`].
    pub build: Option<PathBuf>,
    /// The action of the component to call.
    pub action: String,
    /// The action's input: a JSON object, array or string whose strings may
    /// hold pills (a string that is one pill passes a whole value).
    /// Named `input` in errors.
    pub input: Template,
    /// When set, the step runs only if this renders to a [`truthy`] value.
    /// Named `condition` in errors.
    pub condition: Option<Template>,
    /// How often, and how patiently, a failing step is tried again.
    pub retry: RetryPolicy,
    /// What the step may do.
    pub grants: GrantsSpec,
}

/// How a failing step is tried again: at most `attempts` tries, pausing
/// `backoff` after the first failure, doubling each time up to
/// `max_backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Tries in all, from 1 (no retry, the default) to [`MAX_ATTEMPTS`].
    pub attempts: u32,
    /// The pause after the first failed try; one second by default.
    pub backoff: Duration,
    /// The longest pause; sixty seconds by default, or `backoff` when only
    /// that is set and it is longer.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// One attempt, a one-second backoff, a sixty-second cap.
    fn default() -> Self {
        RetryPolicy {
            attempts: 1,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// A step's grants as written in the manifest (`[steps.grants]`). Turned
/// into checked [`Grants`] by [`GrantsSpec::to_grants`]. Everything is
/// denied unless listed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct GrantsSpec {
    /// Host patterns the step may reach over HTTPS.
    pub net: Vec<String>,
    /// Step-local secret aliases and the workspace connections they name.
    pub secrets: BTreeMap<String, String>,
    /// JSON pointers of output fields stored masked.
    pub mask: Vec<String>,
    /// The step's wall-clock limit; the operator's default when unset.
    pub timeout: Option<Duration>,
    /// The step's memory limit in bytes; the operator's default when unset.
    pub memory: Option<u64>,
    /// Environment properties the step may read.
    pub env: Vec<String>,
}

impl GrantsSpec {
    /// Checks the grants and builds them.
    ///
    /// # Errors
    ///
    /// The [`GrantError`] of [`crate::GrantsBuilder::build`], naming
    /// the grant at fault.
    pub fn to_grants(&self) -> Result<Grants, GrantError> {
        let mut builder = Grants::builder();
        for pattern in &self.net {
            builder = builder.net(pattern.clone());
        }
        for (alias, connection) in &self.secrets {
            builder = builder.secret(alias.clone(), connection.clone());
        }
        for pointer in &self.mask {
            builder = builder.mask(pointer.clone());
        }
        if let Some(timeout) = self.timeout {
            builder = builder.timeout(timeout);
        }
        if let Some(memory) = self.memory {
            builder = builder.memory(memory);
        }
        for name in &self.env {
            builder = builder.env(name.clone());
        }
        builder.build()
    }

    fn is_empty(&self) -> bool {
        self == &GrantsSpec::default()
    }
}

/// One problem in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {message}")]
#[non_exhaustive]
pub struct ManifestError {
    /// Where the problem is: a path such as `steps[1] (notify).grants.net[0]`
    /// followed by ` at line:column` (both from 1, the column in
    /// characters), as in `steps[1] (notify).grants.net[0] at 12:7`. A TOML
    /// syntax error has only `line:column`; a missing `[recipe]` or
    /// `[[steps]]`, which has no place in the text, only its path.
    pub location: String,
    /// What is wrong, and often how to fix it.
    pub message: String,
}

impl ManifestError {
    /// A problem at a location.
    pub fn new(location: impl Into<String>, message: impl Into<String>) -> Self {
        ManifestError {
            location: location.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in a manifest, in the order they appear in the text.
/// Never empty when returned by [`Manifest::parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestErrors(pub Vec<ManifestError>);

impl fmt::Display for ManifestErrors {
    /// One problem per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ManifestErrors {}

impl Manifest {
    /// Parses and checks a manifest.
    ///
    /// # Errors
    ///
    /// Every problem at once: TOML syntax errors (only those, when there
    /// are any, since the rest of the document cannot be trusted), unknown
    /// keys, missing or mistyped fields, bad recipe or step names, duplicate
    /// step names, absolute component paths, bad durations and sizes,
    /// invalid grants, a cron expression without five fields, pills that do
    /// not parse, pills that use a step that does not exist, the step itself
    /// or a later step, and retry policies with no attempts.
    pub fn parse(text: &str) -> Result<Manifest, ManifestErrors> {
        let (document, syntax) = DeTable::parse_recoverable(text);
        let mut checker = Checker::new(text);
        if !syntax.is_empty() {
            // One error per line: recovery after the first error on a line
            // tends to report the same mistake several times.
            let mut lines = BTreeSet::new();
            for error in syntax {
                let start = error.span().map_or(0, |s| s.start);
                let (line, column) = line_col(text, start);
                if lines.insert(line) {
                    checker.errors.push((
                        start,
                        ManifestError::new(
                            format!("{line}:{column}"),
                            format!("invalid TOML: {}", error.message()),
                        ),
                    ));
                }
            }
            return Err(checker.finish());
        }
        let manifest = checker.manifest(document.get_ref());
        match manifest {
            Some(manifest) if checker.errors.is_empty() => Ok(manifest),
            _ => Err(checker.finish()),
        }
    }

    /// The step with this name.
    pub fn step(&self, name: &str) -> Option<&StepSpec> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// Every workspace connection some step needs (the values of all
    /// `secrets` grants).
    pub fn connections(&self) -> BTreeSet<String> {
        self.steps
            .iter()
            .flat_map(|s| s.grants.secrets.values().cloned())
            .collect()
    }

    /// Every environment property some step may read (all `env` grants).
    pub fn properties(&self) -> BTreeSet<String> {
        self.steps
            .iter()
            .flat_map(|s| s.grants.env.iter().cloned())
            .collect()
    }

    /// Writes the manifest as TOML that [`Manifest::parse`] reads back to an
    /// equal manifest. Defaults are left out (no `retry` table for the
    /// default policy, no empty grants), durations are written as `"1m 30s"`
    /// and memory sizes with the largest exact unit (`"64MiB"`). TOML dates
    /// in an input were already read as strings and are written as strings.
    ///
    /// # Errors
    ///
    /// A value TOML cannot hold, which only a manifest changed in code can
    /// contain: a JSON `null` or an integer above `i64::MAX` in an input or
    /// condition, or a path that is not UTF-8.
    pub fn to_toml(&self) -> Result<String, ManifestError> {
        let mut steps = Vec::with_capacity(self.steps.len());
        for (index, step) in self.steps.iter().enumerate() {
            let label = step_label(index, Some(&step.name));
            if !matches!(
                step.input.source(),
                Value::Object(_) | Value::Array(_) | Value::String(_)
            ) {
                return Err(ManifestError::new(
                    format!("{label}.input"),
                    "the input must be a JSON object, array or string (a TOML table, array or string)",
                ));
            }
            tomlable(step.input.source(), &format!("{label}.input"))?;
            if let Some(condition) = &step.condition
                && !condition.source().is_string()
            {
                return Err(ManifestError::new(
                    format!("{label}.condition"),
                    "the condition must be a string",
                ));
            }
            let input = match step.input.source() {
                Value::Object(map) if map.is_empty() => None,
                other => Some(other),
            };
            let retry = (step.retry != RetryPolicy::default()).then(|| TomlRetry {
                attempts: step.retry.attempts,
                backoff: humantime::format_duration(step.retry.backoff).to_string(),
                max_backoff: humantime::format_duration(step.retry.max_backoff).to_string(),
            });
            let g = &step.grants;
            let grants = (!g.is_empty()).then(|| TomlGrants {
                net: &g.net,
                mask: &g.mask,
                env: &g.env,
                timeout: g.timeout.map(|t| humantime::format_duration(t).to_string()),
                memory: g.memory.map(format_size),
                secrets: &g.secrets,
            });
            steps.push(TomlStep {
                name: &step.name,
                component: utf8_path(&step.component, || format!("{label}.component"))?,
                build: match &step.build {
                    Some(build) => Some(utf8_path(build, || format!("{label}.build"))?),
                    None => None,
                },
                action: &step.action,
                condition: step.condition.as_ref().map(Template::source),
                retry,
                input,
                grants,
            });
        }
        let trigger = match &self.trigger {
            Trigger::Manual => TomlTrigger {
                kind: "manual",
                ..TomlTrigger::default()
            },
            Trigger::Webhook { signature } => TomlTrigger {
                kind: "webhook",
                signature: signature.as_deref(),
                ..TomlTrigger::default()
            },
            Trigger::Schedule { cron, timezone } => TomlTrigger {
                kind: "schedule",
                cron: Some(cron),
                timezone: Some(timezone),
                ..TomlTrigger::default()
            },
        };
        let doc = TomlManifest {
            recipe: TomlRecipe {
                name: &self.recipe.name,
                description: self.recipe.description.as_deref(),
                output: self.recipe.output.as_deref(),
            },
            trigger,
            steps,
        };
        toml::to_string(&doc).map_err(|e| ManifestError::new("manifest", e.to_string()))
    }
}

// The shapes `to_toml` writes. Plain values come before tables in each, as
// TOML wants them.

#[derive(Serialize)]
struct TomlManifest<'a> {
    recipe: TomlRecipe<'a>,
    trigger: TomlTrigger<'a>,
    steps: Vec<TomlStep<'a>>,
}

#[derive(Serialize)]
struct TomlRecipe<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    output: Option<&'a str>,
}

#[derive(Serialize, Default)]
struct TomlTrigger<'a> {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    signature: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cron: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timezone: Option<&'a str>,
}

#[derive(Serialize)]
struct TomlStep<'a> {
    name: &'a str,
    component: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    build: Option<&'a str>,
    action: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    condition: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry: Option<TomlRetry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    input: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    grants: Option<TomlGrants<'a>>,
}

#[derive(Serialize)]
struct TomlRetry {
    attempts: u32,
    backoff: String,
    max_backoff: String,
}

#[derive(Serialize)]
struct TomlGrants<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    net: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    mask: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    env: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    memory: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    secrets: &'a BTreeMap<String, String>,
}

/// A path as UTF-8 text, for TOML.
fn utf8_path(path: &Path, location: impl FnOnce() -> String) -> Result<&str, ManifestError> {
    path.to_str()
        .ok_or_else(|| ManifestError::new(location(), "the path is not valid UTF-8"))
}

/// Checks that a JSON value can be written as TOML.
fn tomlable(value: &Value, path: &str) -> Result<(), ManifestError> {
    match value {
        Value::Null => Err(ManifestError::new(path, "TOML has no `null`")),
        Value::Number(n) if n.is_u64() && n.as_i64().is_none() => Err(ManifestError::new(
            path,
            "the integer is too large for TOML (at most i64::MAX)",
        )),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| tomlable(v, &pills::child_index(path, i))),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| tomlable(v, &pills::child_key(path, k))),
        Value::Bool(_) | Value::Number(_) | Value::String(_) => Ok(()),
    }
}

/// Memory units: binary (powers of 1024) and decimal (powers of 1000), as
/// written in manifests. Exact case only.
const SIZE_UNITS: &[(&str, u64)] = &[
    ("TiB", 1 << 40),
    ("TB", 1_000_000_000_000),
    ("GiB", 1 << 30),
    ("GB", 1_000_000_000),
    ("MiB", 1 << 20),
    ("MB", 1_000_000),
    ("KiB", 1 << 10),
    ("KB", 1_000),
    ("B", 1),
];

/// Parses a byte size: a whole number, optionally followed (spaces allowed)
/// by one of `B`, `KB`, `MB`, `GB`, `TB` (powers of 1000) or `KiB`, `MiB`,
/// `GiB`, `TiB` (powers of 1024), in exactly that case. A bare number is
/// bytes. `"64MiB"` is 67108864 bytes.
///
/// # Errors
///
/// A message when the text is not a size or the size overflows `u64`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits = trimmed.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = trimmed.split_at(digits);
    let unit = unit.trim_start();
    let hint = "write a whole number of bytes with an optional unit, such as \"64MiB\", \"512KiB\" or \"1GB\"";
    let Ok(number) = number.parse::<u64>() else {
        return Err(format!("invalid size `{text}`: {hint}"));
    };
    let factor = if unit.is_empty() {
        1
    } else {
        match SIZE_UNITS.iter().find(|(name, _)| *name == unit) {
            Some((_, factor)) => *factor,
            None => {
                return Err(format!(
                    "invalid size `{text}`: unknown unit `{unit}`; {hint}"
                ));
            }
        }
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("invalid size `{text}`: too large"))
}

/// Writes a byte size with the largest unit that divides it exactly.
fn format_size(bytes: u64) -> String {
    SIZE_UNITS
        .iter()
        .find(|(_, factor)| bytes != 0 && bytes.is_multiple_of(*factor))
        .map_or_else(
            || format!("{bytes}B"),
            |(unit, factor)| format!("{}{unit}", bytes / factor),
        )
}

/// The line and column (both from 1, the column in characters) of a byte
/// offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let bytes = text.as_bytes();
    let offset = offset.min(bytes.len());
    let before = &bytes[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&before[line_start..])
        .chars()
        .count()
        + 1;
    (line, column)
}

/// `steps[1] (notify)`, or `steps[1]` when the step has no usable name.
fn step_label(index: usize, name: Option<&str>) -> String {
    match name {
        Some(name) => format!("steps[{index}] ({name})"),
        None => format!("steps[{index}]"),
    }
}

/// Whether a recipe or step name is valid: 1 to 64 of `a-z0-9-_`.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

const TOP_KEYS: &[&str] = &["recipe", "trigger", "steps"];
const RECIPE_KEYS: &[&str] = &["name", "description", "output"];
const STEP_KEYS: &[&str] = &[
    "name",
    "component",
    "build",
    "action",
    "input",
    "condition",
    "retry",
    "grants",
];
const RETRY_KEYS: &[&str] = &["attempts", "backoff", "max_backoff"];
const GRANT_KEYS: &[&str] = &["net", "secrets", "mask", "timeout", "memory", "env"];

type Item<'i> = Spanned<DeValue<'i>>;

/// Where a step is: its index, its label for errors and the names of all
/// steps (to check the steps its pills use).
struct StepPlace<'a> {
    index: usize,
    label: String,
    names: &'a [Option<String>],
}

/// Walks a parsed TOML document, collecting every problem.
struct Checker<'t> {
    text: &'t str,
    /// Problems with the byte offset they sort by.
    errors: Vec<(usize, ManifestError)>,
}

impl<'t> Checker<'t> {
    fn new(text: &'t str) -> Self {
        Checker {
            text,
            errors: Vec::new(),
        }
    }

    fn finish(mut self) -> ManifestErrors {
        self.errors.sort_by_key(|(offset, _)| *offset);
        ManifestErrors(self.errors.into_iter().map(|(_, e)| e).collect())
    }

    /// Records a problem at a path and a span of the text.
    fn error(&mut self, path: &str, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = line_col(self.text, span.start);
        self.errors.push((
            span.start,
            ManifestError::new(format!("{path} at {line}:{column}"), message),
        ));
    }

    /// Records a problem that has no place in the text (a missing
    /// top-level table).
    fn error_nowhere(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push((0, ManifestError::new(path, message)));
    }

    fn type_error(&mut self, path: &str, item: &Item<'_>, expected: &str) {
        let found = match item.get_ref() {
            DeValue::String(_) => "a string",
            DeValue::Integer(_) => "an integer",
            DeValue::Float(_) => "a float",
            DeValue::Boolean(_) => "a boolean",
            DeValue::Datetime(_) => "a date-time",
            DeValue::Array(_) => "an array",
            DeValue::Table(_) => "a table",
        };
        self.error(
            path,
            item.span(),
            format!("expected {expected}, found {found}"),
        );
    }

    /// Reports every key of `table` not in `allowed`.
    fn check_keys(&mut self, table: &DeTable<'_>, path: &str, allowed: &[&str]) {
        for (key, _) in table.iter() {
            let name: &str = key.get_ref();
            if !allowed.contains(&name) {
                let list = allowed
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                let (location, place) = if path.is_empty() {
                    (
                        pills::child_key("", name)
                            .trim_start_matches('.')
                            .to_string(),
                        "at the top level".to_string(),
                    )
                } else {
                    (pills::child_key(path, name), format!("in `{path}`"))
                };
                self.error(
                    &location,
                    key.span(),
                    format!("unknown key `{name}` {place}; expected one of {list}"),
                );
            }
        }
    }

    fn table<'a, 'i>(&mut self, item: &'a Item<'i>, path: &str) -> Option<&'a DeTable<'i>> {
        match item.get_ref() {
            DeValue::Table(table) => Some(table),
            _ => {
                self.type_error(path, item, "a table");
                None
            }
        }
    }

    fn string<'a>(&mut self, item: &'a Item<'_>, path: &str) -> Option<&'a str> {
        match item.get_ref() {
            DeValue::String(s) => Some(s),
            _ => {
                self.type_error(path, item, "a string");
                None
            }
        }
    }

    /// A required field of `table`, whose own span is `span`.
    fn required<'a, 'i>(
        &mut self,
        table: &'a DeTable<'i>,
        span: &Range<usize>,
        path: &str,
        key: &str,
    ) -> Option<&'a Item<'i>> {
        let item = table.get(key);
        if item.is_none() {
            self.error(
                path,
                span.clone(),
                format!("missing required field `{key}`"),
            );
        }
        item
    }

    /// An array of strings; `None` after reporting any item that is not one.
    fn strings(&mut self, item: &Item<'_>, path: &str) -> Option<Vec<(String, Range<usize>)>> {
        let DeValue::Array(items) = item.get_ref() else {
            self.type_error(path, item, "an array of strings");
            return None;
        };
        let mut out = Vec::new();
        let mut ok = true;
        for (i, entry) in items.iter().enumerate() {
            match self.string(entry, &pills::child_index(path, i)) {
                Some(s) => out.push((s.to_string(), entry.span())),
                None => ok = false,
            }
        }
        ok.then_some(out)
    }

    fn duration(&mut self, item: &Item<'_>, path: &str) -> Option<Duration> {
        let text = self.string(item, path)?;
        match humantime::parse_duration(text.trim()) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    path,
                    item.span(),
                    format!(
                        "invalid duration `{text}`: {e}; write for example \"10s\", \"500ms\" or \"1m 30s\""
                    ),
                );
                None
            }
        }
    }

    fn size(&mut self, item: &Item<'_>, path: &str) -> Option<u64> {
        let parsed = match item.get_ref() {
            DeValue::String(text) => parse_size(text),
            DeValue::Integer(i) => u64::from_str_radix(i.as_str(), i.radix())
                .map_err(|_| format!("invalid size `{i}`: expected a whole number of bytes")),
            _ => {
                self.type_error(path, item, "a size such as \"64MiB\"");
                return None;
            }
        };
        parsed.map_err(|e| self.error(path, item.span(), e)).ok()
    }

    fn relative_path(&mut self, item: &Item<'_>, path: &str) -> Option<PathBuf> {
        let text = self.string(item, path)?;
        let bytes = text.as_bytes();
        let drive = bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':';
        if text.trim().is_empty() {
            self.error(path, item.span(), "the path is empty");
            None
        } else if text.starts_with('/')
            || text.starts_with('\\')
            || drive
            || Path::new(text).is_absolute()
        {
            self.error(
                path,
                item.span(),
                format!("`{text}` is absolute; write a path relative to the manifest file"),
            );
            None
        } else {
            Some(PathBuf::from(text))
        }
    }

    fn manifest(&mut self, root: &DeTable<'_>) -> Option<Manifest> {
        self.check_keys(root, "", TOP_KEYS);
        let recipe = match root.get("recipe") {
            Some(item) => self.recipe(item),
            None => {
                self.error_nowhere("recipe", "missing required table `[recipe]`");
                None
            }
        };
        let trigger = match root.get("trigger") {
            Some(item) => self.trigger(item),
            None => Some(Trigger::Manual),
        };
        let steps = match root.get("steps") {
            Some(item) => self.steps(item),
            None => {
                self.error_nowhere(
                    "steps",
                    "missing required `[[steps]]`: a recipe needs at least one step",
                );
                None
            }
        };
        let (recipe, steps) = (recipe?, steps?);
        if let Some(output) = &recipe.output
            && !steps.iter().any(|s: &StepSpec| &s.name == output)
        {
            let span = root
                .get("recipe")
                .and_then(|r| match r.get_ref() {
                    DeValue::Table(t) => t.get("output"),
                    _ => None,
                })
                .map_or(0..0, |o| o.span());
            self.error(
                "recipe.output",
                span,
                format!("`{output}` is not a step of this recipe: name the step whose output the recipe answers with"),
            );
        }
        Some(Manifest {
            recipe,
            trigger: trigger?,
            steps,
        })
    }

    fn recipe(&mut self, item: &Item<'_>) -> Option<RecipeInfo> {
        let table = self.table(item, "recipe")?;
        self.check_keys(table, "recipe", RECIPE_KEYS);
        let name = self.required(table, &item.span(), "recipe", "name").and_then(|n| {
            let name = self.string(n, "recipe.name")?;
            if valid_name(name) {
                Some(name.to_string())
            } else {
                self.error(
                    "recipe.name",
                    n.span(),
                    format!("invalid recipe name `{name}`: use 1 to 64 characters of `a-z`, `0-9`, `-` and `_`"),
                );
                None
            }
        });
        let description = match table.get("description") {
            Some(d) => Some(Some(self.string(d, "recipe.description")?.to_string())),
            None => Some(None),
        };
        let output = match table.get("output") {
            Some(o) => Some(Some(self.string(o, "recipe.output")?.to_string())),
            None => Some(None),
        };
        Some(RecipeInfo {
            name: name?,
            description: description?,
            output: output?,
        })
    }

    fn trigger(&mut self, item: &Item<'_>) -> Option<Trigger> {
        let table = self.table(item, "trigger")?;
        let kind = match table.get("kind") {
            Some(k) => self.string(k, "trigger.kind")?,
            None => "manual",
        };
        let optional_string = |checker: &mut Self, key: &str| match table.get(key) {
            Some(v) => checker
                .string(v, &format!("trigger.{key}"))
                .map(|s| Some(s.to_string())),
            None => Some(None),
        };
        match kind {
            "manual" => {
                self.check_keys(table, "trigger", &["kind"]);
                Some(Trigger::Manual)
            }
            "webhook" => {
                self.check_keys(table, "trigger", &["kind", "signature"]);
                let signature = optional_string(self, "signature")?;
                Some(Trigger::Webhook { signature })
            }
            "schedule" => {
                self.check_keys(table, "trigger", &["kind", "cron", "timezone"]);
                let timezone = optional_string(self, "timezone");
                let cron = self
                    .required(table, &item.span(), "trigger", "cron")
                    .and_then(|c| {
                        let cron = self.string(c, "trigger.cron")?;
                        let fields = cron.split_whitespace().count();
                        if fields == 5 {
                            Some(cron.to_string())
                        } else {
                            self.error(
                                "trigger.cron",
                                c.span(),
                                format!(
                                    "cron expression `{cron}` has {fields} field{}; expected 5 (minute, hour, day of month, month, day of week)",
                                    if fields == 1 { "" } else { "s" }
                                ),
                            );
                            None
                        }
                    });
                let timezone = match timezone? {
                    Some(tz) if tz.trim().is_empty() => {
                        if let Some(t) = table.get("timezone") {
                            self.error("trigger.timezone", t.span(), "the time zone is empty");
                        }
                        return None;
                    }
                    Some(tz) => tz,
                    None => "UTC".to_string(),
                };
                Some(Trigger::Schedule {
                    cron: cron?,
                    timezone,
                })
            }
            other => {
                if let Some(k) = table.get("kind") {
                    self.error(
                        "trigger.kind",
                        k.span(),
                        format!("unknown trigger kind `{other}`; expected `manual`, `webhook` or `schedule`"),
                    );
                }
                None
            }
        }
    }

    fn steps(&mut self, item: &Item<'_>) -> Option<Vec<StepSpec>> {
        let DeValue::Array(items) = item.get_ref() else {
            self.type_error("steps", item, "an array of tables (`[[steps]]`)");
            return None;
        };
        if items.is_empty() {
            self.error("steps", item.span(), "a recipe needs at least one step");
            return None;
        }
        // Names first, so that pills can be checked against every step.
        let names: Vec<Option<String>> = items
            .iter()
            .map(|step| match step.get_ref() {
                DeValue::Table(t) => t
                    .get("name")
                    .and_then(|n| n.get_ref().as_str())
                    .map(str::to_string),
                _ => None,
            })
            .collect();
        let mut steps = Some(Vec::with_capacity(items.len()));
        for (index, step) in items.iter().enumerate() {
            let spec = self.step(index, step, &names);
            steps = steps.zip(spec).map(|(mut all, spec)| {
                all.push(spec);
                all
            });
        }
        steps
    }

    fn step(
        &mut self,
        index: usize,
        item: &Item<'_>,
        names: &[Option<String>],
    ) -> Option<StepSpec> {
        let label = step_label(index, names.get(index).and_then(Option::as_deref));
        let place = StepPlace {
            index,
            label: label.clone(),
            names,
        };
        let table = self.table(item, &label)?;
        let span = item.span();
        self.check_keys(table, &label, STEP_KEYS);

        let name = self.required(table, &span, &label, "name").and_then(|n| {
            let path = format!("{label}.name");
            let name = self.string(n, &path)?;
            if !valid_name(name) {
                self.error(
                    &path,
                    n.span(),
                    format!("invalid step name `{name}`: use 1 to 64 characters of `a-z`, `0-9`, `-` and `_`"),
                );
                return None;
            }
            if let Some(first) = names[..index].iter().position(|m| m.as_deref() == Some(name)) {
                self.error(
                    &path,
                    n.span(),
                    format!("duplicate step name `{name}`: steps[{first}] has it too"),
                );
                return None;
            }
            Some(name.to_string())
        });
        let component = self
            .required(table, &span, &label, "component")
            .and_then(|c| self.relative_path(c, &format!("{label}.component")));
        let build = match table.get("build") {
            Some(b) => self.relative_path(b, &format!("{label}.build")).map(Some),
            None => Some(None),
        };
        let action = self.required(table, &span, &label, "action").and_then(|a| {
            let path = format!("{label}.action");
            let action = self.string(a, &path)?;
            if action.trim().is_empty() {
                self.error(&path, a.span(), "the action name is empty");
                return None;
            }
            Some(action.to_string())
        });
        let input = match table.get("input") {
            Some(i) => self.input(i, &place),
            None => Template::parse("input", Value::Object(serde_json::Map::new())).ok(),
        };
        let condition = match table.get("condition") {
            Some(c) => self.condition(c, &place).map(Some),
            None => Some(None),
        };
        let retry = match table.get("retry") {
            Some(r) => self.retry(r, &format!("{label}.retry")),
            None => Some(RetryPolicy::default()),
        };
        let grants = match table.get("grants") {
            Some(g) => self.grants(g, &format!("{label}.grants")),
            None => Some(GrantsSpec::default()),
        };
        Some(StepSpec {
            name: name?,
            component: component?,
            build: build?,
            action: action?,
            input: input?,
            condition: condition?,
            retry: retry?,
            grants: grants?,
        })
    }

    /// A step's input: a table whose strings may hold pills, an array, or
    /// one string, typically a single pill that passes a whole value
    /// (`input = "{{ trigger }}"`, `input = "{{ steps.fetch.output }}"`).
    fn input(&mut self, item: &Item<'_>, place: &StepPlace<'_>) -> Option<Template> {
        let label = &place.label;
        if !matches!(
            item.get_ref(),
            DeValue::Table(_) | DeValue::Array(_) | DeValue::String(_)
        ) {
            self.type_error(
                &format!("{label}.input"),
                item,
                "a table, an array or a string (such as \"{{ trigger }}\")",
            );
            return None;
        }
        let mut spans = BTreeMap::new();
        let value = self.json_of(item, "input", label, &mut spans)?;
        self.template("input", value, place, &spans, item.span())
    }

    fn condition(&mut self, item: &Item<'_>, place: &StepPlace<'_>) -> Option<Template> {
        let text = self.string(item, &format!("{}.condition", place.label))?;
        let spans = BTreeMap::from([("condition".to_string(), item.span())]);
        let value = Value::String(text.to_string());
        self.template("condition", value, place, &spans, item.span())
    }

    /// Parses a template and checks that its pills only use earlier steps.
    /// `spans` maps field paths (`input.number`) to their place in the text.
    fn template(
        &mut self,
        field: &str,
        value: Value,
        place: &StepPlace<'_>,
        spans: &BTreeMap<String, Range<usize>>,
        fallback: Range<usize>,
    ) -> Option<Template> {
        let StepPlace {
            index,
            label,
            names,
        } = place;
        let index = *index;
        let span_of = |field: &str| {
            spans
                .get(field)
                .cloned()
                .unwrap_or_else(|| fallback.clone())
        };
        let (template, errors) = Template::parse_partial(field, value);
        let mut ok = errors.is_empty();
        for e in errors {
            self.error(
                &format!("{label}.{}", e.field),
                span_of(&e.field),
                e.to_string(),
            );
        }
        for r in template.references() {
            let Root::Step(target) = &r.root else {
                continue;
            };
            let problem = match names
                .iter()
                .position(|n| n.as_deref() == Some(target.as_str()))
            {
                None => format!("uses step `{target}`, which this recipe does not have"),
                Some(j) if j == index => format!(
                    "uses step `{target}`, the step itself; a pill can only use the trigger and earlier steps"
                ),
                Some(j) if j > index => format!(
                    "uses step `{target}`, which runs later (steps[{j}]); a pill can only use the trigger and earlier steps"
                ),
                Some(_) => continue,
            };
            ok = false;
            self.error(
                &format!("{label}.{}", r.field),
                span_of(&r.field),
                format!("in `{}`, pill `{}` {problem}", r.field, r.pill),
            );
        }
        ok.then_some(template)
    }

    /// Converts a TOML value of an input to JSON, recording the span of
    /// every field path in `spans`.
    fn json_of(
        &mut self,
        item: &Item<'_>,
        field: &str,
        label: &str,
        spans: &mut BTreeMap<String, Range<usize>>,
    ) -> Option<Value> {
        spans.insert(field.to_string(), item.span());
        let path = || format!("{label}.{field}");
        match item.get_ref() {
            DeValue::String(s) => Some(Value::String(s.to_string())),
            DeValue::Boolean(b) => Some(Value::Bool(*b)),
            DeValue::Datetime(d) => Some(Value::String(d.to_string())),
            DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                Ok(n) => Some(Value::from(n)),
                Err(_) => {
                    self.error(
                        &path(),
                        item.span(),
                        format!("the integer `{i}` does not fit in 64 bits"),
                    );
                    None
                }
            },
            DeValue::Float(f) => {
                let number = f
                    .as_str()
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64);
                match number {
                    Some(n) => Some(Value::Number(n)),
                    None => {
                        self.error(
                            &path(),
                            item.span(),
                            format!(
                                "the float `{f}` has no JSON form (JSON has no `inf` or `nan`)"
                            ),
                        );
                        None
                    }
                }
            }
            DeValue::Array(items) => {
                let mut out = Some(Vec::with_capacity(items.len()));
                for (i, entry) in items.iter().enumerate() {
                    let value = self.json_of(entry, &pills::child_index(field, i), label, spans);
                    out = out.zip(value).map(|(mut all, v)| {
                        all.push(v);
                        all
                    });
                }
                out.map(Value::Array)
            }
            DeValue::Table(table) => {
                let mut out = Some(serde_json::Map::new());
                for (key, entry) in table.iter() {
                    let key: &str = key.get_ref();
                    let value = self.json_of(entry, &pills::child_key(field, key), label, spans);
                    out = out.zip(value).map(|(mut all, v)| {
                        all.insert(key.to_string(), v);
                        all
                    });
                }
                out.map(Value::Object)
            }
        }
    }

    fn retry(&mut self, item: &Item<'_>, path: &str) -> Option<RetryPolicy> {
        let table = self.table(item, path)?;
        self.check_keys(table, path, RETRY_KEYS);
        let defaults = RetryPolicy::default();
        let attempts = match table.get("attempts") {
            None => Some(defaults.attempts),
            Some(a) => {
                let path = format!("{path}.attempts");
                match a.get_ref() {
                    DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
                        Ok(n) if n < 1 => {
                            self.error(
                                &path,
                                a.span(),
                                format!("{n} attempts would never run the step; use at least 1"),
                            );
                            None
                        }
                        Ok(n) if n <= i64::from(MAX_ATTEMPTS) => u32::try_from(n).ok(),
                        _ => {
                            self.error(
                                &path,
                                a.span(),
                                format!("at most {MAX_ATTEMPTS} attempts are allowed"),
                            );
                            None
                        }
                    },
                    _ => {
                        self.type_error(&path, a, "an integer");
                        None
                    }
                }
            }
        };
        let backoff = match table.get("backoff") {
            Some(b) => self.duration(b, &format!("{path}.backoff")),
            None => Some(defaults.backoff),
        };
        let max_backoff = match table.get("max_backoff") {
            Some(m) => self.duration(m, &format!("{path}.max_backoff")).map(Some),
            None => Some(None),
        };
        let (attempts, backoff, max_backoff) = (attempts?, backoff?, max_backoff?);
        let max_backoff = match max_backoff {
            Some(max) if max < backoff => {
                if let Some(b) = table.get("backoff") {
                    self.error(
                        &format!("{path}.backoff"),
                        b.span(),
                        format!(
                            "the backoff ({}) is longer than `max_backoff` ({})",
                            humantime::format_duration(backoff),
                            humantime::format_duration(max)
                        ),
                    );
                }
                return None;
            }
            Some(max) => max,
            None => defaults.max_backoff.max(backoff),
        };
        Some(RetryPolicy {
            attempts,
            backoff,
            max_backoff,
        })
    }

    fn grants(&mut self, item: &Item<'_>, path: &str) -> Option<GrantsSpec> {
        let table = self.table(item, path)?;
        self.check_keys(table, path, GRANT_KEYS);
        let before = self.errors.len();
        let mut spec = GrantsSpec::default();
        // Each entry is checked on its own, so that an error points at it.
        if let Some(net) = table.get("net") {
            let at = format!("{path}.net");
            for (i, (pattern, span)) in self.strings(net, &at).into_iter().flatten().enumerate() {
                let result = Grants::builder().net(pattern.clone()).build();
                check_grant(self, &pills::child_index(&at, i), span, result);
                spec.net.push(pattern);
            }
        }
        if let Some(secrets) = table.get("secrets") {
            let at = format!("{path}.secrets");
            if let Some(map) = self.table(secrets, &at) {
                for (alias, connection) in map.iter() {
                    let alias_text: &str = alias.get_ref();
                    let entry = pills::child_key(&at, alias_text);
                    if let Some(connection) = self.string(connection, &entry) {
                        let result = Grants::builder().secret(alias_text, connection).build();
                        check_grant(self, &entry, alias.span(), result);
                        spec.secrets
                            .insert(alias_text.to_string(), connection.to_string());
                    }
                }
            }
        }
        if let Some(mask) = table.get("mask") {
            let at = format!("{path}.mask");
            for (i, (pointer, span)) in self.strings(mask, &at).into_iter().flatten().enumerate() {
                let result = Grants::builder().mask(pointer.clone()).build();
                check_grant(self, &pills::child_index(&at, i), span, result);
                spec.mask.push(pointer);
            }
        }
        if let Some(timeout) = table.get("timeout") {
            let at = format!("{path}.timeout");
            if let Some(limit) = self.duration(timeout, &at) {
                check_grant(
                    self,
                    &at,
                    timeout.span(),
                    Grants::builder().timeout(limit).build(),
                );
                spec.timeout = Some(limit);
            }
        }
        if let Some(memory) = table.get("memory") {
            let at = format!("{path}.memory");
            if let Some(bytes) = self.size(memory, &at) {
                check_grant(
                    self,
                    &at,
                    memory.span(),
                    Grants::builder().memory(bytes).build(),
                );
                spec.memory = Some(bytes);
            }
        }
        if let Some(env) = table.get("env") {
            let at = format!("{path}.env");
            for (i, (name, span)) in self.strings(env, &at).into_iter().flatten().enumerate() {
                let result = Grants::builder().env(name.clone()).build();
                check_grant(self, &pills::child_index(&at, i), span, result);
                spec.env.push(name);
            }
        }
        if self.errors.len() > before {
            return None;
        }
        // The entries are fine one by one; check them together.
        if let Err(e) = spec.to_grants() {
            self.error(path, item.span(), e.to_string());
            return None;
        }
        Some(spec)
    }
}

/// Reports the error of a grant checked on its own.
fn check_grant(
    checker: &mut Checker<'_>,
    at: &str,
    span: Range<usize>,
    result: Result<Grants, GrantError>,
) {
    if let Err(e) = result {
        checker.error(at, span, e.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The example of the module documentation, with a second step.
    const FULL: &str = r##"
[recipe]
name = "issue-to-slack"            # required; [a-z0-9-_], 1..64
description = "Post new GitHub issues to Slack"   # optional
output = "fetch-issue"             # optional

[trigger]
kind = "webhook"
signature = "hmac-sha256"

[[steps]]
name = "fetch-issue"
component = "components/github_issue.wasm"
build = "steps/github-issue"
action = "get-issue"
input = { owner = "{{ trigger.repository.owner }}", repo = "{{ trigger.repository.name }}", number = "{{ trigger.issue.number }}" }
condition = "{{ trigger.issue.open }}"
retry = { attempts = 3, backoff = "2s", max_backoff = "30s" }

[steps.grants]
net = ["api.github.com"]
secrets = { github = "github" }
mask = ["/token"]
timeout = "10s"
memory = "64MiB"
env = ["github_api"]

[[steps]]
name = "notify"
component = "components/slack.wasm"
action = "post-message"

[steps.input]
channel = "#triage"
text = "#{{ steps.fetch-issue.number }}: {{ steps.fetch-issue.title }} by {{ trigger.issue.assignee | default: \"nobody\" }}"
blocks = [{ type = "section", text = "{{ steps.fetch-issue.body }}" }, { type = "divider" }]
extra = { "key with space" = 1.5, when = 1979-05-27T07:32:00Z, flags = [true, false], n = -7, hex = 0xff }

[steps.grants]
net = ["slack.com", "*.slack.com:8443"]
secrets = { slack = "slack-bot", github = "github" }
env = ["slack_channel", "github_api"]
"##;

    /// The smallest valid manifest, to build bad ones from.
    const HEAD: &str = "[recipe]\nname = \"r\"\n\n";
    const STEP_A: &str = "[[steps]]\nname = \"a\"\ncomponent = \"a.wasm\"\naction = \"run\"\n";

    /// `line:column` of the first occurrence of `needle` in `text`.
    fn at(text: &str, needle: &str) -> String {
        let offset = text
            .find(needle)
            .unwrap_or_else(|| panic!("`{needle}` not in the text"));
        let (line, column) = line_col(text, offset);
        format!("{line}:{column}")
    }

    fn errors_of(text: &str) -> Vec<ManifestError> {
        match Manifest::parse(text) {
            Ok(m) => panic!("parsed: {m:?}"),
            Err(e) => e.0,
        }
    }

    /// Asserts that `text` fails with exactly one error, at `location`
    /// (where `@needle` stands for the `line:column` of `needle`), whose
    /// message contains `message`.
    fn check(text: &str, location: &str, message: &str) {
        let errors = errors_of(text);
        assert_eq!(errors.len(), 1, "{text}\n{errors:#?}");
        let expected = match location.split_once(" @") {
            Some((path, needle)) => format!("{path} at {}", at(text, needle)),
            None => location.to_string(),
        };
        assert_eq!(errors[0].location, expected, "{text}");
        assert!(
            errors[0].message.contains(message),
            "{text}\nmessage {:?} lacks {message:?}",
            errors[0].message
        );
    }

    #[test]
    fn the_full_example_parses() {
        let m = Manifest::parse(FULL).unwrap();
        assert_eq!(m.recipe.name, "issue-to-slack");
        assert_eq!(
            m.recipe.description.as_deref(),
            Some("Post new GitHub issues to Slack")
        );
        assert_eq!(m.recipe.output.as_deref(), Some("fetch-issue"));
        assert_eq!(
            m.trigger,
            Trigger::Webhook {
                signature: Some("hmac-sha256".into())
            }
        );
        assert_eq!(m.steps.len(), 2);

        let fetch = &m.steps[0];
        assert_eq!(fetch.name, "fetch-issue");
        assert_eq!(
            fetch.component,
            PathBuf::from("components/github_issue.wasm")
        );
        assert_eq!(fetch.build, Some(PathBuf::from("steps/github-issue")));
        assert_eq!(fetch.action, "get-issue");
        assert_eq!(
            fetch.input.source(),
            &json!({
                "owner": "{{ trigger.repository.owner }}",
                "repo": "{{ trigger.repository.name }}",
                "number": "{{ trigger.issue.number }}"
            })
        );
        assert_eq!(fetch.input.field(), "input");
        let condition = fetch.condition.as_ref().unwrap();
        assert_eq!(condition.source(), &json!("{{ trigger.issue.open }}"));
        assert_eq!(condition.field(), "condition");
        assert_eq!(
            fetch.retry,
            RetryPolicy {
                attempts: 3,
                backoff: Duration::from_secs(2),
                max_backoff: Duration::from_secs(30),
            }
        );
        let g = &fetch.grants;
        assert_eq!(g.net, ["api.github.com"]);
        assert_eq!(
            g.secrets,
            BTreeMap::from([("github".to_string(), "github".to_string())])
        );
        assert_eq!(g.mask, ["/token"]);
        assert_eq!(g.timeout, Some(Duration::from_secs(10)));
        assert_eq!(g.memory, Some(64 << 20));
        assert_eq!(g.env, ["github_api"]);
        let grants = g.to_grants().unwrap();
        assert_eq!(grants.memory(), Some(64 << 20));
        assert_eq!(grants.timeout(), Some(Duration::from_secs(10)));

        let notify = m.step("notify").unwrap();
        assert_eq!(notify.build, None);
        assert_eq!(notify.condition, None);
        assert_eq!(notify.retry, RetryPolicy::default());
        assert_eq!(notify.grants.timeout, None);
        assert_eq!(
            notify.input.source()["extra"],
            json!({"key with space": 1.5, "when": "1979-05-27T07:32:00Z", "flags": [true, false], "n": -7, "hex": 255})
        );
        assert!(m.step("nope").is_none());

        assert_eq!(
            m.connections(),
            BTreeSet::from(["github".to_string(), "slack-bot".to_string()])
        );
        assert_eq!(
            m.properties(),
            BTreeSet::from(["github_api".to_string(), "slack_channel".to_string()])
        );
    }

    #[test]
    fn the_parsed_input_renders() {
        let m = Manifest::parse(FULL).unwrap();
        let trigger = json!({
            "repository": {"owner": "octo", "name": "hello"},
            "issue": {"number": 7, "open": true, "assignee": null}
        });
        let mut steps = BTreeMap::new();
        let ctx = PillContext::new(&trigger, &steps);
        assert!(truthy(
            &m.steps[0].condition.as_ref().unwrap().render(&ctx).unwrap()
        ));
        assert_eq!(
            m.steps[0].input.render(&ctx).unwrap(),
            json!({"owner": "octo", "repo": "hello", "number": 7})
        );
        let e = m.steps[1].input.render(&ctx).unwrap_err();
        assert!(e.reason.contains("step `fetch-issue` has not run"), "{e}");
        steps.insert(
            "fetch-issue".to_string(),
            json!({"number": 7, "title": "Crash", "body": "It crashes."}),
        );
        let ctx = PillContext::new(&trigger, &steps);
        let input = m.steps[1].input.render(&ctx).unwrap();
        assert_eq!(input["text"], json!("#7: Crash by nobody"));
        assert_eq!(input["blocks"][0]["text"], json!("It crashes."));
    }

    #[test]
    fn an_input_may_be_one_pill_passing_a_whole_value() {
        let text = format!(
            "{HEAD}{STEP_A}input = \"{{{{ trigger }}}}\"\n\n[[steps]]\nname = \"b\"\ncomponent = \"b.wasm\"\naction = \"run\"\ninput = [\"{{{{ steps.a.items }}}}\", \"x\"]\n"
        );
        let m = Manifest::parse(&text).unwrap();
        let trigger = json!({"customer": {"id": 7, "tags": ["a", "b"]}, "n": 1});
        let mut steps = BTreeMap::new();
        let ctx = PillContext::new(&trigger, &steps);
        assert_eq!(m.steps[0].input.render(&ctx).unwrap(), trigger);
        steps.insert("a".to_string(), json!({"items": [1, 2]}));
        let ctx = PillContext::new(&trigger, &steps);
        assert_eq!(m.steps[1].input.render(&ctx).unwrap(), json!([[1, 2], "x"]));
        // Written back as it was read.
        let again = Manifest::parse(&m.to_toml().unwrap()).unwrap();
        assert_eq!(again.steps[0].input.source(), &json!("{{ trigger }}"));
        assert_eq!(again.steps[1].input.source(), m.steps[1].input.source());
        // A whole-value pill is checked like any other: no later step.
        let text = format!(
            "{HEAD}{STEP_A}input = \"{{{{ steps.b.id }}}}\"\n\n[[steps]]\nname = \"b\"\ncomponent = \"b.wasm\"\naction = \"run\"\n"
        );
        let errors = Manifest::parse(&text).unwrap_err().to_string();
        assert!(errors.contains("which runs later"), "{errors}");
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let m = Manifest::parse(&format!("{HEAD}{STEP_A}")).unwrap();
        assert_eq!(m.trigger, Trigger::Manual);
        assert_eq!(m.recipe.description, None);
        let step = &m.steps[0];
        assert_eq!(step.input.source(), &json!({}));
        assert_eq!(step.retry, RetryPolicy::default());
        assert_eq!(
            RetryPolicy::default(),
            RetryPolicy {
                attempts: 1,
                backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(60),
            }
        );
        assert_eq!(step.grants, GrantsSpec::default());
        assert!(m.connections().is_empty());
        assert!(m.properties().is_empty());

        // Only `backoff` set, longer than the default cap: the cap follows.
        let text = format!("{HEAD}{STEP_A}retry = {{ backoff = \"2m\" }}\n");
        let retry = Manifest::parse(&text).unwrap().steps[0].retry;
        assert_eq!(retry.backoff, Duration::from_secs(120));
        assert_eq!(retry.max_backoff, Duration::from_secs(120));
        // Memory as a plain number of bytes.
        let text = format!("{HEAD}{STEP_A}grants = {{ memory = 1048576 }}\n");
        assert_eq!(
            Manifest::parse(&text).unwrap().steps[0].grants.memory,
            Some(1 << 20)
        );
        // Steps written as an inline array of tables.
        let text =
            format!("steps = [{{ name = \"a\", component = \"a.wasm\", action = \"x\" }}]\n{HEAD}");
        assert_eq!(Manifest::parse(&text).unwrap().steps[0].name, "a");
    }

    #[test]
    fn triggers() {
        let parse = |trigger: &str| {
            Manifest::parse(&format!("{HEAD}[trigger]\n{trigger}\n{STEP_A}")).map(|m| m.trigger)
        };
        assert_eq!(parse("").unwrap(), Trigger::Manual);
        assert_eq!(parse("kind = \"manual\"").unwrap(), Trigger::Manual);
        assert_eq!(
            parse("kind = \"webhook\"").unwrap(),
            Trigger::Webhook { signature: None }
        );
        assert_eq!(
            parse("kind = \"schedule\"\ncron = \"*/15 * * * *\"").unwrap(),
            Trigger::Schedule {
                cron: "*/15 * * * *".into(),
                timezone: "UTC".into()
            }
        );
        assert_eq!(
            parse("kind = \"schedule\"\ncron = \"0 9 * * 1-5\"\ntimezone = \"Europe/Berlin\"")
                .unwrap(),
            Trigger::Schedule {
                cron: "0 9 * * 1-5".into(),
                timezone: "Europe/Berlin".into()
            }
        );
    }

    #[test]
    fn toml_syntax_errors_have_line_and_column() {
        let text = "[recipe]\nname = \"r\"\nbroken = \n";
        let errors = errors_of(text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].location, "3:10");
        assert!(
            errors[0].message.starts_with("invalid TOML: "),
            "{}",
            errors[0].message
        );

        // Several lines in error: one error per line, in order.
        let text = "[recipe]\nname = \nx = 1\ny = [1,\n";
        let errors = errors_of(text);
        let lines: Vec<&str> = errors
            .iter()
            .map(|e| e.location.split(':').next().unwrap())
            .collect();
        assert!(lines.len() >= 2, "{errors:?}");
        assert_eq!(lines[0], "2");
        assert!(lines.windows(2).all(|w| w[0] < w[1]), "{errors:?}");

        // A key defined twice is a syntax error too.
        let text = "[recipe]\nname = \"r\"\nname = \"s\"\n";
        assert_eq!(errors_of(text)[0].location, "3:1");
    }

    #[test]
    fn unknown_keys_are_named_with_where_they_are() {
        let cases: Vec<(String, &str, &str)> = vec![
            (
                format!("colour = 1\n{HEAD}{STEP_A}"),
                "colour @colour",
                "unknown key `colour` at the top level; expected one of `recipe`, `trigger`, `steps`",
            ),
            (
                format!("[recipe]\nname = \"r\"\ntitle = \"x\"\n{STEP_A}"),
                "recipe.title @title",
                "unknown key `title` in `recipe`",
            ),
            (
                format!("{HEAD}[trigger]\nkind = \"webhook\"\ncron = \"* * * * *\"\n{STEP_A}"),
                "trigger.cron @cron",
                "unknown key `cron` in `trigger`; expected one of `kind`, `signature`",
            ),
            (
                format!("{HEAD}[trigger]\nsignature = \"x\"\n{STEP_A}"),
                "trigger.signature @signature",
                "expected one of `kind`",
            ),
            (
                format!("{HEAD}{STEP_A}inputs = {{}}\n"),
                "steps[0] (a).inputs @inputs",
                "unknown key `inputs` in `steps[0] (a)`",
            ),
            (
                format!("{HEAD}{STEP_A}retry = {{ tries = 2 }}\n"),
                "steps[0] (a).retry.tries @tries",
                "unknown key `tries` in `steps[0] (a).retry`",
            ),
            (
                format!("{HEAD}{STEP_A}[steps.grants]\nfs = [\"/\"]\n"),
                "steps[0] (a).grants.fs @fs",
                "unknown key `fs` in `steps[0] (a).grants`; expected one of `net`, `secrets`, `mask`, `timeout`, `memory`, `env`",
            ),
            (
                format!("{HEAD}{STEP_A}[steps.grants]\n\"odd key\" = 1\n"),
                "steps[0] (a).grants[\"odd key\"] @\"odd key\"",
                "unknown key `odd key`",
            ),
        ];
        for (text, location, message) in cases {
            check(&text, location, message);
        }
    }

    #[test]
    fn missing_fields_are_reported() {
        check(STEP_A, "recipe", "missing required table `[recipe]`");
        check(HEAD, "steps", "a recipe needs at least one step");
        check(
            &format!("steps = []\n{HEAD}"),
            "steps @[]",
            "a recipe needs at least one step",
        );
        check(
            &format!("[recipe]\n{STEP_A}"),
            "recipe @[recipe]",
            "missing required field `name`",
        );
        let text = format!("{HEAD}[[steps]]\nname = \"a\"\naction = \"run\"\n");
        check(
            &text,
            "steps[0] (a) @[[steps]]",
            "missing required field `component`",
        );
        let text = format!("{HEAD}[[steps]]\nname = \"a\"\ncomponent = \"a.wasm\"\n");
        check(
            &text,
            "steps[0] (a) @[[steps]]",
            "missing required field `action`",
        );
        let text = format!("{HEAD}[[steps]]\ncomponent = \"a.wasm\"\naction = \"run\"\n");
        check(
            &text,
            "steps[0] @[[steps]]",
            "missing required field `name`",
        );
        let text = format!("{HEAD}[trigger]\nkind = \"schedule\"\n{STEP_A}");
        check(&text, "trigger @[trigger]", "missing required field `cron`");
    }

    #[test]
    fn wrong_types_are_reported() {
        let cases: Vec<(String, &str, &str)> = vec![
            (
                format!("recipe = 1\n{STEP_A}"),
                "recipe @1",
                "expected a table, found an integer",
            ),
            (
                format!("{HEAD}[steps]\nname = \"a\"\n"),
                "steps @[steps]",
                "expected an array of tables (`[[steps]]`), found a table",
            ),
            (
                format!("steps = [1]\n{HEAD}"),
                "steps[0] @1",
                "expected a table, found an integer",
            ),
            (
                format!("{HEAD}[[steps]]\nname = \"a\"\ncomponent = 3\naction = \"run\"\n"),
                "steps[0] (a).component @3",
                "expected a string, found an integer",
            ),
            (
                format!("{HEAD}{STEP_A}input = 7\n"),
                "steps[0] (a).input @7",
                "expected a table, an array or a string (such as \"{{ trigger }}\"), found an integer",
            ),
            (
                format!("{HEAD}{STEP_A}condition = true\n"),
                "steps[0] (a).condition @true",
                "expected a string, found a boolean",
            ),
            (
                format!("{HEAD}{STEP_A}retry = {{ attempts = \"3\" }}\n"),
                "steps[0] (a).retry.attempts @\"3\"",
                "expected an integer, found a string",
            ),
            (
                format!("{HEAD}{STEP_A}grants = {{ net = [\"a.example\", 5] }}\n"),
                "steps[0] (a).grants.net[1] @5",
                "expected a string, found an integer",
            ),
            (
                format!("{HEAD}{STEP_A}grants = {{ net = \"a.example\" }}\n"),
                "steps[0] (a).grants.net @\"a.example\"",
                "expected an array of strings, found a string",
            ),
            (
                format!("{HEAD}{STEP_A}grants = {{ secrets = {{ gh = 1 }} }}\n"),
                "steps[0] (a).grants.secrets.gh @1",
                "expected a string, found an integer",
            ),
            (
                format!("{HEAD}{STEP_A}grants = {{ memory = true }}\n"),
                "steps[0] (a).grants.memory @true",
                "expected a size such as \"64MiB\", found a boolean",
            ),
            (
                format!("{HEAD}{STEP_A}grants = {{ timeout = 10 }}\n"),
                "steps[0] (a).grants.timeout @10",
                "expected a string, found an integer",
            ),
            (
                format!("{HEAD}{STEP_A}input = {{ big = inf }}\n"),
                "steps[0] (a).input.big @inf",
                "has no JSON form",
            ),
        ];
        for (text, location, message) in cases {
            check(&text, location, message);
        }
    }

    #[test]
    fn bad_names_are_reported() {
        check(
            &format!("[recipe]\nname = \"Issue To Slack\"\n{STEP_A}"),
            "recipe.name @\"Issue",
            "invalid recipe name `Issue To Slack`: use 1 to 64 characters of `a-z`, `0-9`, `-` and `_`",
        );
        check(
            &format!("[recipe]\nname = \"\"\n{STEP_A}"),
            "recipe.name @\"\"",
            "invalid recipe name ``",
        );
        let long = "x".repeat(65);
        check(
            &format!("[recipe]\nname = \"{long}\"\n{STEP_A}"),
            "recipe.name @\"xx",
            "invalid recipe name",
        );
        check(
            &format!(
                "{HEAD}[[steps]]\nname = \"Fetch Issue\"\ncomponent = \"a.wasm\"\naction = \"x\"\n"
            ),
            "steps[0] (Fetch Issue).name @\"Fetch",
            "invalid step name `Fetch Issue`",
        );
        assert!(valid_name("fetch-issue_2"));
        assert!(valid_name(&"x".repeat(64)));
        assert!(!valid_name("a.b"));
    }

    #[test]
    fn the_output_step_must_be_a_step() {
        let text = "[recipe]\nname = \"r\"\noutput = \"nope\"\n\n[[steps]]\nname = \"a\"\ncomponent = \"a.wasm\"\naction = \"x\"\n";
        let errors = Manifest::parse(text).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert_eq!(errors.0[0].location, "recipe.output at 3:10");
        assert!(
            errors.0[0].message.contains("`nope` is not a step"),
            "{errors}"
        );
        let errors = Manifest::parse(&text.replace("\"nope\"", "1")).unwrap_err();
        assert!(errors.to_string().contains("recipe.output"), "{errors}");
        let m = Manifest::parse(&text.replace("nope", "a")).unwrap();
        assert_eq!(m.recipe.output.as_deref(), Some("a"));
        assert_eq!(Manifest::parse(&m.to_toml().unwrap()).unwrap(), m);
    }

    #[test]
    fn duplicate_step_names_are_reported() {
        let text = format!(
            "{HEAD}{STEP_A}\n[[steps]]\nname = \"b\"\ncomponent = \"b.wasm\"\naction = \"x\"\n\n{STEP_A}"
        );
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let third = text.rfind("name = \"a\"").unwrap() + "name = ".len();
        let (line, column) = line_col(&text, third);
        assert_eq!(
            errors[0].location,
            format!("steps[2] (a).name at {line}:{column}")
        );
        assert_eq!(
            errors[0].message,
            "duplicate step name `a`: steps[0] has it too"
        );
    }

    #[test]
    fn paths_must_be_relative_and_actions_named() {
        for component in ["/opt/a.wasm", "\\\\server\\a.wasm", "C:\\a.wasm"] {
            let text = format!(
                "{HEAD}[[steps]]\nname = \"a\"\ncomponent = '{component}'\naction = \"x\"\n"
            );
            check(
                &text,
                "steps[0] (a).component @'",
                "is absolute; write a path relative to the manifest file",
            );
        }
        check(
            &format!("{HEAD}{STEP_A}build = \"/src/step\"\n"),
            "steps[0] (a).build @\"/src",
            "is absolute",
        );
        check(
            &format!("{HEAD}[[steps]]\nname = \"a\"\ncomponent = \" \"\naction = \"x\"\n"),
            "steps[0] (a).component @\" \"",
            "the path is empty",
        );
        check(
            &format!("{HEAD}[[steps]]\nname = \"a\"\ncomponent = \"a.wasm\"\naction = \"\"\n"),
            "steps[0] (a).action @\"\"",
            "the action name is empty",
        );
        let text = format!(
            "{HEAD}[[steps]]\nname = \"a\"\ncomponent = \"../shared/a.wasm\"\naction = \"x\"\n"
        );
        assert_eq!(
            Manifest::parse(&text).unwrap().steps[0].component,
            PathBuf::from("../shared/a.wasm")
        );
    }

    #[test]
    fn bad_durations_and_sizes_are_reported() {
        let cases: Vec<(String, &str, &str)> = vec![
            (
                format!("{HEAD}{STEP_A}grants = {{ timeout = \"10 parsecs\" }}\n"),
                "steps[0] (a).grants.timeout @\"10",
                "invalid duration `10 parsecs`",
            ),
            (
                format!("{HEAD}{STEP_A}retry = {{ backoff = \"fast\" }}\n"),
                "steps[0] (a).retry.backoff @\"fast\"",
                "invalid duration `fast`",
            ),
            (
                format!("{HEAD}{STEP_A}retry = {{ max_backoff = \"\" }}\n"),
                "steps[0] (a).retry.max_backoff @\"\"",
                "invalid duration ``",
            ),
            (
                format!("{HEAD}{STEP_A}grants = {{ memory = \"64 MiBs\" }}\n"),
                "steps[0] (a).grants.memory @\"64",
                "invalid size `64 MiBs`: unknown unit `MiBs`",
            ),
            (
                format!("{HEAD}{STEP_A}grants = {{ memory = \"lots\" }}\n"),
                "steps[0] (a).grants.memory @\"lots\"",
                "invalid size `lots`",
            ),
            (
                format!("{HEAD}{STEP_A}grants = {{ memory = -1 }}\n"),
                "steps[0] (a).grants.memory @-1",
                "invalid size `-1`",
            ),
            (
                format!("{HEAD}{STEP_A}grants = {{ memory = \"99999999TiB\" }}\n"),
                "steps[0] (a).grants.memory @\"9",
                "too large",
            ),
            (
                format!("{HEAD}{STEP_A}retry = {{ backoff = \"10s\", max_backoff = \"1s\" }}\n"),
                "steps[0] (a).retry.backoff @\"10s\"",
                "the backoff (10s) is longer than `max_backoff` (1s)",
            ),
        ];
        for (text, location, message) in cases {
            check(&text, location, message);
        }
    }

    #[test]
    fn retry_attempts_must_be_at_least_one() {
        check(
            &format!("{HEAD}{STEP_A}retry = {{ attempts = 0 }}\n"),
            "steps[0] (a).retry.attempts @0",
            "0 attempts would never run the step; use at least 1",
        );
        check(
            &format!("{HEAD}{STEP_A}retry = {{ attempts = -2 }}\n"),
            "steps[0] (a).retry.attempts @-2",
            "use at least 1",
        );
        check(
            &format!("{HEAD}{STEP_A}retry = {{ attempts = 101 }}\n"),
            "steps[0] (a).retry.attempts @101",
            "at most 100 attempts",
        );
        let text = format!("{HEAD}{STEP_A}retry = {{ attempts = 100 }}\n");
        assert_eq!(
            Manifest::parse(&text).unwrap().steps[0].retry.attempts,
            MAX_ATTEMPTS
        );
    }

    #[test]
    fn invalid_grants_are_reported_where_they_are() {
        let cases: Vec<(String, &str, &str)> = vec![
            (
                format!(
                    "{HEAD}{STEP_A}[steps.grants]\nnet = [\"api.example.com\", \"https://api.example.com\"]\n"
                ),
                "steps[0] (a).grants.net[1] @\"https",
                "invalid `net` grant",
            ),
            (
                format!("{HEAD}{STEP_A}[steps.grants]\nnet = [\"*\"]\n"),
                "steps[0] (a).grants.net[0] @\"*\"",
                "invalid `net` grant",
            ),
            (
                format!("{HEAD}{STEP_A}[steps.grants]\nsecrets = {{ \"a b\" = \"conn\" }}\n"),
                "steps[0] (a).grants.secrets[\"a b\"] @\"a b\"",
                "invalid `secrets` grant: alias `a b`",
            ),
            (
                format!("{HEAD}{STEP_A}[steps.grants]\nsecrets = {{ gh = \" \" }}\n"),
                "steps[0] (a).grants.secrets.gh @gh",
                "invalid `secrets` grant: alias `gh` names no connection",
            ),
            (
                format!("{HEAD}{STEP_A}[steps.grants]\nmask = [\"token\"]\n"),
                "steps[0] (a).grants.mask[0] @\"token\"",
                "invalid `mask` grant: JSON pointer `token`",
            ),
            (
                format!("{HEAD}{STEP_A}[steps.grants]\ntimeout = \"0s\"\n"),
                "steps[0] (a).grants.timeout @\"0s\"",
                "invalid `timeout` grant: must be greater than zero",
            ),
            (
                format!("{HEAD}{STEP_A}[steps.grants]\nmemory = \"0MiB\"\n"),
                "steps[0] (a).grants.memory @\"0MiB\"",
                "invalid `memory` grant: must be greater than zero",
            ),
            (
                format!("{HEAD}{STEP_A}[steps.grants]\nenv = [\"has space\"]\n"),
                "steps[0] (a).grants.env[0] @\"has",
                "invalid `env` grant: property `has space`",
            ),
        ];
        for (text, location, message) in cases {
            check(&text, location, message);
        }
    }

    #[test]
    fn cron_needs_five_fields() {
        for (cron, fields) in [
            ("*/15 * * *", "4 fields"),
            ("* * * * * *", "6 fields"),
            ("@daily", "1 field;"),
        ] {
            let text = format!("{HEAD}[trigger]\nkind = \"schedule\"\ncron = \"{cron}\"\n{STEP_A}");
            check(
                &text,
                &format!("trigger.cron @\"{cron}"),
                &format!("has {fields}"),
            );
        }
        check(
            &format!("{HEAD}[trigger]\nkind = \"cron\"\n{STEP_A}"),
            "trigger.kind @\"cron\"",
            "unknown trigger kind `cron`; expected `manual`, `webhook` or `schedule`",
        );
        check(
            &format!(
                "{HEAD}[trigger]\nkind = \"schedule\"\ncron = \"* * * * *\"\ntimezone = \"\"\n{STEP_A}"
            ),
            "trigger.timezone @\"\"",
            "the time zone is empty",
        );
    }

    #[test]
    fn pills_that_do_not_parse_are_reported() {
        let text =
            format!("{HEAD}{STEP_A}input = {{ number = \"{{{{ trigger.issue.number }}\" }}\n");
        check(
            &text,
            "steps[0] (a).input.number @\"{{",
            "in `input.number`, pill `{{ trigger.issue.number }`: a pill ends with `}}`, found a single `}`",
        );
        let text = format!(
            "{HEAD}{STEP_A}[steps.input]\nlist = [1, {{ deep = \"x {{{{ env.HOME }}}}\" }}]\n"
        );
        check(
            &text,
            "steps[0] (a).input.list[1].deep @\"x",
            "in `input.list[1].deep`, pill `{{ env.HOME }}`: unknown root `env`",
        );
        let text = format!("{HEAD}{STEP_A}condition = \"{{{{ trigger.a | default: nope }}}}\"\n");
        check(
            &text,
            "steps[0] (a).condition @\"{{",
            "the default is not a JSON value",
        );
    }

    #[test]
    fn pills_may_only_use_earlier_steps() {
        let step_b = |input: &str| {
            format!(
                "{HEAD}{STEP_A}\n[[steps]]\nname = \"b\"\ncomponent = \"b.wasm\"\naction = \"x\"\n{input}\n\n[[steps]]\nname = \"c\"\ncomponent = \"c.wasm\"\naction = \"x\"\n"
            )
        };
        // Earlier steps and the trigger are fine.
        let ok = step_b("input = { n = \"{{ steps.a.n }}\", t = \"{{ trigger.t }}\" }");
        assert!(Manifest::parse(&ok).is_ok());
        check(
            &step_b("input = { number = \"{{ steps.ghost.n }}\" }"),
            "steps[1] (b).input.number @\"{{ steps.ghost",
            "in `input.number`, pill `{{ steps.ghost.n }}` uses step `ghost`, which this recipe does not have",
        );
        check(
            &step_b("input = { number = \"{{ steps.b.n }}\" }"),
            "steps[1] (b).input.number @\"{{ steps.b",
            "in `input.number`, pill `{{ steps.b.n }}` uses step `b`, the step itself",
        );
        check(
            &step_b("input = { number = \"#{{ steps.c.n }}\" }"),
            "steps[1] (b).input.number @\"#{{",
            "in `input.number`, pill `{{ steps.c.n }}` uses step `c`, which runs later (steps[2])",
        );
        check(
            &step_b("condition = \"{{ steps[\\\"c\\\"].ok }}\""),
            "steps[1] (b).condition @\"{{",
            "in `condition`, pill `{{ steps[\"c\"].ok }}` uses step `c`, which runs later",
        );
        // A bad pill does not hide a bad reference next to it.
        let text = step_b("input = { x = \"{{ bad }}\", y = \"{{ steps.c.n }}\" }");
        let messages: Vec<String> = errors_of(&text).into_iter().map(|e| e.message).collect();
        assert_eq!(messages.len(), 2, "{messages:?}");
        assert!(messages[0].contains("unknown root `bad`"));
        assert!(messages[1].contains("uses step `c`"));
    }

    #[test]
    fn every_problem_is_reported_at_once_in_text_order() {
        let text = r#"
[recipe]
name = "Bad Name"
colour = "blue"

[trigger]
kind = "schedule"
cron = "* * *"

[[steps]]
name = "fetch"
component = "/abs.wasm"
action = "get"
input = { n = "{{ steps.notify.ts }}", p = "{{ env.HOME }}" }
retry = { attempts = 0 }

[steps.grants]
net = ["https://api.github.com"]
timeout = "soon"
memory = "64 MiBs"

[[steps]]
name = "fetch"
action = "x"

[[steps]]
name = "notify"
component = "n.wasm"
action = "x"
"#;
        let errors = errors_of(text);
        let got: Vec<(&str, &str)> = errors
            .iter()
            .map(|e| (e.location.as_str(), e.message.as_str()))
            .collect();
        let expected_paths = [
            "recipe.name",
            "recipe.colour",
            "trigger.cron",
            "steps[0] (fetch).component",
            "steps[0] (fetch).input.n",
            "steps[0] (fetch).input.p",
            "steps[0] (fetch).retry.attempts",
            "steps[0] (fetch).grants.net[0]",
            "steps[0] (fetch).grants.timeout",
            "steps[0] (fetch).grants.memory",
            "steps[1] (fetch)",
            "steps[1] (fetch).name",
        ];
        assert_eq!(got.len(), expected_paths.len(), "{got:#?}");
        for ((location, _), path) in got.iter().zip(expected_paths) {
            assert!(
                location.starts_with(&format!("{path} at ")),
                "{location} is not at {path}"
            );
        }
        // Display lists them one per line.
        let shown = ManifestErrors(errors.clone()).to_string();
        assert_eq!(shown.lines().count(), errors.len());
        assert_eq!(shown.lines().next(), Some(errors[0].to_string().as_str()));
        assert!(
            shown.starts_with("recipe.name at 3:8: invalid recipe name `Bad Name`"),
            "{shown}"
        );
    }

    #[test]
    fn round_trip_parse_to_toml_parse() {
        let m = Manifest::parse(FULL).unwrap();
        let text = m.to_toml().unwrap();
        let again = Manifest::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(again, m);
        assert_eq!(again.to_toml().unwrap(), text);
        // Defaults are left out.
        assert!(!text.contains("[steps.retry]\nattempts = 1"));
        assert!(text.contains("memory = \"64MiB\""), "{text}");

        let minimal = Manifest::parse(&format!("{HEAD}{STEP_A}")).unwrap();
        let text = minimal.to_toml().unwrap();
        assert!(
            !text.contains("grants") && !text.contains("retry") && !text.contains("input"),
            "{text}"
        );
        assert_eq!(Manifest::parse(&text).unwrap(), minimal);

        let schedule = format!(
            "{HEAD}[trigger]\nkind = \"schedule\"\ncron = \"0 9 * * 1-5\"\n{STEP_A}retry = {{ attempts = 2, backoff = \"1m 30s 5ms\" }}\ngrants = {{ memory = 1000, timeout = \"1h\" }}\ncondition = \"\\\\{{{{ literal\"\n"
        );
        let m = Manifest::parse(&schedule).unwrap();
        let again = Manifest::parse(&m.to_toml().unwrap()).unwrap();
        assert_eq!(again, m);
        assert_eq!(
            m.steps[0].condition.as_ref().unwrap().source(),
            &json!("\\{{ literal")
        );
    }

    #[test]
    fn to_toml_refuses_what_toml_cannot_hold() {
        let mut m = Manifest::parse(&format!("{HEAD}{STEP_A}")).unwrap();
        m.steps[0].input = Template::parse("input", json!({"a": [1, null]})).unwrap();
        let e = m.to_toml().unwrap_err();
        assert_eq!(e.location, "steps[0] (a).input.a[1]");
        assert_eq!(e.message, "TOML has no `null`");
        m.steps[0].input = Template::parse("input", json!({"big": u64::MAX})).unwrap();
        assert!(m.to_toml().unwrap_err().message.contains("too large"));
        m.steps[0].input = Template::parse("input", json!(5)).unwrap();
        assert_eq!(m.to_toml().unwrap_err().location, "steps[0] (a).input");
        m.steps[0].input = Template::parse("input", json!({})).unwrap();
        m.steps[0].condition = Some(Template::parse("condition", json!(true)).unwrap());
        assert_eq!(
            m.to_toml().unwrap_err().message,
            "the condition must be a string"
        );
    }

    #[test]
    fn exported_manifests_keep_only_names() {
        // A changed component path and no build directory, as export writes.
        let mut m = Manifest::parse(FULL).unwrap();
        for step in &mut m.steps {
            step.component = PathBuf::from(format!("components/{}.wasm", step.name));
            step.build = None;
        }
        let text = m.to_toml().unwrap();
        assert!(text.contains("component = \"components/fetch-issue.wasm\""));
        assert!(!text.contains("build ="));
        assert_eq!(Manifest::parse(&text).unwrap(), m);
    }

    #[test]
    fn damaged_manifests_never_panic() {
        // Remove each character of the full example in turn, then cut it
        // at each character: every result parses or fails cleanly.
        let chars: Vec<(usize, char)> = FULL.char_indices().collect();
        for (at, c) in &chars {
            let damaged = format!("{}{}", &FULL[..*at], &FULL[at + c.len_utf8()..]);
            if let Err(errors) = Manifest::parse(&damaged) {
                assert!(!errors.0.is_empty());
            }
            if let Err(errors) = Manifest::parse(&FULL[..*at]) {
                assert!(!errors.0.is_empty());
            }
        }
    }

    #[test]
    fn sizes_parse_and_format() {
        let good: &[(&str, u64)] = &[
            ("0", 0),
            ("1", 1),
            ("512B", 512),
            ("512 B", 512),
            ("1KB", 1000),
            ("1KiB", 1024),
            ("64MiB", 64 << 20),
            (" 64 MiB ", 64 << 20),
            ("2MB", 2_000_000),
            ("1GiB", 1 << 30),
            ("3GB", 3_000_000_000),
            ("1TiB", 1 << 40),
            ("2TB", 2_000_000_000_000),
        ];
        for (text, bytes) in good {
            assert_eq!(parse_size(text), Ok(*bytes), "{text}");
        }
        for bad in [
            "",
            "MiB",
            "1.5MiB",
            "-1",
            "64mib",
            "64 M",
            "1 2",
            "99999999999999999999",
            "20000000TiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        let formats: &[(u64, &str)] = &[
            (0, "0B"),
            (1, "1B"),
            (1000, "1KB"),
            (1024, "1KiB"),
            (64 << 20, "64MiB"),
            (64_000_000, "64MB"),
            (1 << 40, "1TiB"),
            (1500, "1500B"),
        ];
        for (bytes, text) in formats {
            assert_eq!(format_size(*bytes), *text);
            assert_eq!(parse_size(text), Ok(*bytes));
        }
    }

    #[test]
    fn line_and_column_count_characters() {
        let text = "ab\nçé = 1\n\nx";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 2), (1, 3));
        assert_eq!(line_col(text, 3), (2, 1));
        // `ç` and `é` take two bytes each: ` =` is the third character.
        assert_eq!(line_col(text, 7), (2, 3));
        assert_eq!(line_col(text, text.len()), (4, 2));
        assert_eq!(line_col(text, 999), (4, 2));
    }

    #[test]
    fn errors_never_hold_secret_looking_values_of_inputs() {
        // Error messages quote keys, paths and pills, but an input's plain
        // values only appear when they are pills.
        let text = format!(
            "{HEAD}{STEP_A}input = {{ token = \"hunter2\", n = \"{{{{ steps.z.x }}}}\" }}\n"
        );
        let shown = Manifest::parse(&text).unwrap_err().to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

#[cfg(test)]
#[path = "../proptests/manifest.rs"]
mod proptests;

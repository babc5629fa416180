//! The daemon's storage boundary: everything the API layer, the workers and
//! the scheduler read or write goes through [`Storage`], so a backend for
//! several nodes (PostgreSQL) can follow without touching them. The embedded
//! default is [`crate::sqlite::SqliteStorage`].
//!
//! Every method that changes something takes the audit entries that record
//! the change and commits them in the same transaction: an acknowledged
//! change is always audited, and an audit entry never describes a change
//! that did not happen.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use wrun_runtime::policy::{HostPattern, NetGrant};
use wrun_runtime::recipe::Resume;
use wrun_runtime::{Connection, Placement, SecretValue};
use zeroize::Zeroizing;

use crate::access::PermissionSet;
use crate::audit::{AuditError, Entry, Stored};
use crate::db::StoreError;
use crate::oauth::{Lease, LeaseEnd, OAuthStatus, PendingAuthorization, Refresher};
use crate::time::UnixMillis;
use wrun_runtime::oauth::{IssuedTokens, OAuthClientConfig};

/// What a storage operation can fail with, whatever the backend: callers
/// match these kinds, never a database's own errors, which arrive as the
/// message of [`StorageError::Backend`] (saying what was being done).
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The backend failed: a statement, a transaction, the file system, a
    /// database that cannot be opened or is of the wrong version, the audit
    /// log's own bookkeeping.
    #[error("{0}")]
    Backend(String),
    /// The master key does not open this store (not its key, or the new
    /// key of a rotation given as the old one).
    #[error("{0}")]
    WrongKey(String),
    /// A referenced object does not exist (in this workspace).
    #[error("{what} `{name}` does not exist")]
    NotFound {
        /// The kind of object.
        what: &'static str,
        /// Its name or id.
        name: String,
    },
    /// The input is not valid; the message says what and where, and the
    /// code names the rule for API clients (`invalid_host`, ...).
    #[error("{message}")]
    Invalid {
        /// A stable, machine-readable name of the rule.
        code: &'static str,
        /// What was wrong, for a person.
        message: String,
    },
    /// The change conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// A stored record cannot be decrypted or parsed.
    #[error("{what} cannot be read: {reason}")]
    Damaged {
        /// Which record.
        what: String,
        /// Why.
        reason: String,
    },
    /// An internal failure (logged; clients get a generic error).
    #[error("{0}")]
    Internal(String),
    /// The writer thread has stopped (the daemon is shutting down).
    #[error("the storage writer has stopped")]
    Closed,
    /// This node no longer holds the job: its claim lapsed and another
    /// node claimed it (or it was released). The write was refused
    /// (fencing); the node must stop working on the job.
    #[error("job {job} is no longer held by this node: its claim lapsed and it was claimed again")]
    LeaseLost {
        /// The job.
        job: String,
    },
}

impl From<AuditError> for StorageError {
    fn from(e: AuditError) -> StorageError {
        StorageError::Backend(e.to_string())
    }
}

impl From<StoreError> for StorageError {
    /// Each failure of the SQLite store becomes its backend-neutral kind:
    /// refused input [`StorageError::Invalid`], key trouble
    /// [`StorageError::WrongKey`], records that fail authentication or do
    /// not parse [`StorageError::Damaged`], the rest
    /// [`StorageError::Backend`].
    fn from(e: StoreError) -> StorageError {
        match e {
            StoreError::InvalidName { what, shown } => StorageError::Invalid {
                code: "invalid_name",
                message: format!(
                    "{what} `{shown}` is not a valid name: use 1 to 64 of A-Z a-z 0-9 - _ ."
                ),
            },
            StoreError::InvalidInput { what, reason } => StorageError::Invalid {
                code: "invalid_input",
                message: format!("{what}: {reason}"),
            },
            StoreError::KeyMismatch { .. } | StoreError::SameKey { .. } => {
                StorageError::WrongKey(e.to_string())
            }
            StoreError::Tampered { .. }
            | StoreError::DataKeyTampered { .. }
            | StoreError::Malformed { .. }
            | StoreError::Corrupt { .. } => StorageError::Damaged {
                what: "stored data".into(),
                reason: e.to_string(),
            },
            other => StorageError::Backend(other.to_string()),
        }
    }
}

/// Shorthand for storage results.
pub type StorageResult<T> = Result<T, StorageError>;

/// An API token as stored (the secret itself is never stored: only its
/// SHA-256).
#[derive(Debug, Clone, Serialize)]
pub struct TokenRecord {
    /// The public id (the part after `wrun_pat_`).
    pub id: String,
    /// Workspace the token acts in.
    pub workspace: String,
    /// A label chosen by its creator.
    pub name: String,
    /// SHA-256 of the secret part.
    #[serde(skip)]
    pub hash: [u8; 32],
    /// The member whose role bounds the token.
    pub owner: String,
    /// Who created it (an admin may create one for a member).
    pub creator: String,
    /// What the token may do (intersected with the owner's role).
    pub scopes: PermissionSet,
    /// CIDRs the token may be used from (empty: anywhere).
    pub allow_ips: Vec<String>,
    /// When it was created.
    pub created_at: UnixMillis,
    /// When it expires; mandatory.
    pub expires_at: UnixMillis,
    /// When it was revoked, if it was.
    pub revoked_at: Option<UnixMillis>,
    /// When it was last used to authenticate.
    pub last_used_at: Option<UnixMillis>,
    /// Client address of the last authenticated use.
    pub last_used_ip: Option<String>,
}

/// A member of a workspace.
#[derive(Debug, Clone, Serialize)]
pub struct Member {
    /// The member's subject (a user id, or a JWT `sub`).
    pub subject: String,
    /// Role name (built in or custom).
    pub role: String,
    /// When the subject became a member.
    pub created_at: UnixMillis,
}

/// A custom role: a named permission set.
#[derive(Debug, Clone, Serialize)]
pub struct Role {
    /// Role name.
    pub name: String,
    /// Its permissions.
    pub permissions: PermissionSet,
    /// Whether it is one of the built-in roles.
    pub builtin: bool,
}

/// A deployed recipe: its manifest and the components it names.
#[derive(Debug, Clone)]
pub struct StoredRecipe {
    /// The manifest (TOML).
    pub manifest: String,
    /// Component path (as the manifest names it) -> SHA-256 (hex).
    pub components: BTreeMap<String, String>,
    /// The last deployment: a version for caches.
    pub updated_at: UnixMillis,
    /// The signed bundle version deployed.
    pub signed_version: Option<u64>,
    /// The key that signed it.
    pub signer: Option<String>,
}

/// A recipe version to deploy or to keep for approval.
#[derive(Debug, Clone)]
pub struct RecipeVersion {
    /// The manifest (TOML).
    pub manifest: String,
    /// Component path -> bytes.
    pub components: BTreeMap<String, Vec<u8>>,
    /// The signed bundle version, when the bundle was signed by a trusted
    /// key.
    pub signed_version: Option<u64>,
    /// The id of the key that signed it.
    pub signer: Option<String>,
    /// The grant review shown to the approver (JSON).
    pub review: Value,
}

/// A recipe version waiting for an admin's approval.
#[derive(Debug, Clone, Serialize)]
pub struct PendingRecipe {
    /// Its id: what an approval names.
    pub id: String,
    /// The signed bundle version.
    pub signed_version: Option<u64>,
    /// The key that signed it.
    pub signer: Option<String>,
    /// What each step may do and what widens.
    pub review: Value,
    /// Who submitted it.
    pub submitted_by: String,
    /// When.
    pub submitted_at: UnixMillis,
}

/// A workspace's governance settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Governance {
    /// Deploy only bundles signed by a key the workspace trusts.
    #[serde(default)]
    pub require_signatures: bool,
    /// A version that widens a step's grants waits for an admin's approval.
    #[serde(default)]
    pub review_grants: bool,
}

/// A bundle signing key of a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SigningKey {
    /// The name the workspace gave it.
    pub name: String,
    /// Its id (first 16 hex digits of the SHA-256 of the key).
    pub id: String,
    /// The public key (`wrun-ed25519:...`).
    pub public_key: String,
    /// When it was trusted.
    pub added_at: UnixMillis,
    /// When it was revoked.
    pub revoked_at: Option<UnixMillis>,
}

/// A deployed recipe as listed.
#[derive(Debug, Clone, Serialize)]
pub struct RecipeSummary {
    /// Recipe name.
    pub name: String,
    /// The last deployment.
    pub updated_at: UnixMillis,
}

/// What starts jobs of a recipe besides manual runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerKind {
    /// `POST /hooks/{id}`.
    Webhook,
    /// A cron schedule.
    Schedule,
}

impl TriggerKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerKind::Webhook => "webhook",
            TriggerKind::Schedule => "schedule",
        }
    }
}

/// A webhook or schedule of a recipe.
#[derive(Clone, Serialize)]
pub struct TriggerRecord {
    /// Unguessable id (the webhook URL's last segment).
    pub id: String,
    /// Workspace.
    pub workspace: String,
    /// Recipe it starts.
    pub recipe: String,
    /// Webhook or schedule.
    pub kind: TriggerKind,
    /// Environment the jobs run in.
    pub environment: String,
    /// HMAC secret of a signed webhook (decrypted; never serialised).
    #[serde(skip)]
    pub secret: Option<Zeroizing<Vec<u8>>>,
    /// Whether the webhook checks signatures.
    pub signed: bool,
    /// Cron expression of a schedule.
    pub cron: Option<String>,
    /// Time zone of a schedule.
    pub timezone: Option<String>,
    /// Trigger payload of a schedule's jobs.
    pub input: Option<Value>,
    /// A webhook that answers its request with the job's result (an
    /// endpoint recipe); `None` answers 202 at once.
    pub respond: Option<RespondMode>,
    /// The last slot a schedule fired for.
    pub last_slot: Option<UnixMillis>,
    /// When it was created.
    pub created_at: UnixMillis,
}

/// How a webhook in response mode waits for its job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondMode {
    /// How long the request waits for the job to end.
    pub timeout_ms: u64,
    /// Whether a job still running at the timeout is cancelled (otherwise
    /// it goes on, and its result is in the history).
    pub cancel_on_timeout: bool,
}

impl std::fmt::Debug for TriggerRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TriggerRecord")
            .field("id", &self.id)
            .field("workspace", &self.workspace)
            .field("recipe", &self.recipe)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// The life of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Accepted, durable, not started.
    Queued,
    /// A worker runs it (or ran it when the daemon stopped).
    Running,
    /// Every step succeeded or was skipped.
    Succeeded,
    /// A step failed (after its retries).
    Failed,
    /// Cancelled through the API.
    Cancelled,
}

impl JobState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<JobState> {
        Some(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            _ => return None,
        })
    }

    /// Whether the job has ended.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }
}

/// A job to enqueue.
#[derive(Clone)]
pub struct NewJob {
    /// Its id.
    pub id: String,
    /// Workspace.
    pub workspace: String,
    /// Recipe.
    pub recipe: String,
    /// Environment.
    pub environment: String,
    /// `webhook`, `schedule`, `manual` or `rerun`.
    pub trigger_kind: String,
    /// The trigger payload (sealed at rest).
    pub payload: Value,
    /// Deduplicates webhook deliveries per recipe.
    pub idempotency_key: Option<String>,
    /// The job this one reruns.
    pub rerun_of: Option<String>,
    /// When it was accepted.
    pub created_at: UnixMillis,
}

impl std::fmt::Debug for NewJob {
    /// Leaves out payloads and outputs: they are unmasked.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewJob")
            .field("id", &self.id)
            .field("workspace", &self.workspace)
            .field("recipe", &self.recipe)
            .finish_non_exhaustive()
    }
}

/// Whether [`Storage::enqueue`] created a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// A new job with this id.
    New(String),
    /// The idempotency key was seen before: the existing job's id.
    Duplicate(String),
}

/// A job as listed.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    /// Job id.
    pub id: String,
    /// Workspace.
    pub workspace: String,
    /// Recipe.
    pub recipe: String,
    /// Environment.
    pub environment: String,
    /// State.
    pub state: JobState,
    /// What started it.
    pub trigger: String,
    /// The job it reruns.
    pub rerun_of: Option<String>,
    /// When it was accepted.
    pub created_at: UnixMillis,
    /// When a worker (last) started it.
    pub started_at: Option<UnixMillis>,
    /// When it ended.
    pub finished_at: Option<UnixMillis>,
    /// The failure, masked.
    pub error: Option<String>,
    /// When its content was erased (a data subject's erasure): the input,
    /// error and step records are gone, the times and states remain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub erased_at: Option<UnixMillis>,
}

/// A job with its history.
#[derive(Debug, Clone, Serialize)]
pub struct JobDetail {
    /// The summary.
    #[serde(flatten)]
    pub summary: JobSummary,
    /// The trigger payload.
    pub input: Value,
    /// One record per step that ran (masked: inputs, outputs, logs, errors,
    /// timings).
    pub steps: Vec<Value>,
}

/// A job a worker starts or resumes.
#[derive(Clone)]
pub struct StartedJob {
    /// The summary.
    pub summary: JobSummary,
    /// The trigger payload.
    pub payload: Value,
    /// Where to resume (step outputs committed before a crash).
    pub resume: Resume,
}

impl std::fmt::Debug for StartedJob {
    /// Leaves out payloads and outputs: they are unmasked.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StartedJob")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

/// What a completed step leaves behind.
#[derive(Clone)]
pub struct StepCommit {
    /// Job id.
    pub job: String,
    /// Workspace (for the seal).
    pub workspace: String,
    /// The node committing it and its claim's epoch (see
    /// [`crate::claims`]): any other is refused.
    pub claim: (String, i64),
    /// Step index in the recipe.
    pub index: usize,
    /// Step name.
    pub step: String,
    /// `succeeded`, `skipped` or `failed`.
    pub status: String,
    /// The masked record for history.
    pub history: Value,
    /// The unmasked output and the job's marked values, to resume from;
    /// deleted when the job ends.
    pub checkpoint: Option<(Value, Vec<String>)>,
}

impl std::fmt::Debug for StepCommit {
    /// Leaves out payloads and outputs: they are unmasked.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepCommit")
            .field("job", &self.job)
            .field("index", &self.index)
            .field("step", &self.step)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Jobs created in one time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct JobBucket {
    /// The bucket's start.
    pub start: UnixMillis,
    /// Jobs created in it.
    pub total: u64,
    /// Of which failed.
    pub failed: u64,
}

/// Filters of a job listing.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct JobFilter {
    /// Only this recipe.
    pub recipe: Option<String>,
    /// Only this state.
    pub state: Option<JobState>,
    /// Only jobs listed after this job id (paging; jobs are listed newest
    /// first, so pass the last id of the previous page).
    pub before: Option<String>,
    /// At most this many (default 50, at most 500).
    pub limit: Option<usize>,
    /// Only jobs created at or after this time.
    pub since: Option<UnixMillis>,
    /// Only jobs created before this time.
    pub until: Option<UnixMillis>,
}

/// Which jobs a deletion (a GDPR request) removes. At least one criterion
/// is required.
#[derive(Debug, Clone, Default, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteCriteria {
    /// Jobs of this recipe.
    pub recipe: Option<String>,
    /// Created at or after.
    pub from: Option<UnixMillis>,
    /// Created before.
    pub to: Option<UnixMillis>,
    /// A JSON pointer into the trigger payload (`/customer/email`).
    pub field: Option<String>,
    /// The value the field must equal.
    pub value: Option<Value>,
}

/// A connection as listed: never its value.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionSummary {
    /// Connection name.
    pub name: String,
    /// Hosts it may be sent to (normalised patterns).
    pub hosts: Vec<HostPattern>,
    /// Where it goes in a request.
    pub placement: Placement,
    /// When it was added.
    pub created_at: UnixMillis,
    /// When its value was last replaced (for OAuth2, the last new token).
    pub rotated_at: Option<UnixMillis>,
    /// For an OAuth2 connection, where it stands; absent for a static one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<crate::oauth::OAuthState>,
}

/// Outbound limits of one connection, enforced in egress once the request
/// is known to carry it. Unset fields do not limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionLimits {
    /// Requests per minute, refilled continuously.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u32>,
    /// Requests that may go at once (default: a tenth of the minute's, at
    /// least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// Request body bytes per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_minute: Option<u64>,
    /// Distinct request paths per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths_per_minute: Option<u32>,
    /// Alert when a minute's requests exceed this multiple of the
    /// connection's baseline (default: 3 standard deviations above it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spike_multiple: Option<u32>,
    /// Suspend the connection when an alert fires, until an admin resumes
    /// it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend_on_alert: bool,
}

/// Requests of one connection in one minute by one job's step to one host:
/// a row of the egress trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionUsage {
    /// The connection.
    pub connection: String,
    /// The minute (start, milliseconds since the epoch).
    pub minute: UnixMillis,
    /// Recipe.
    pub recipe: String,
    /// Step.
    pub step: String,
    /// Job.
    pub job: String,
    /// Destination host.
    pub host: String,
    /// Requests sent.
    pub requests: u64,
    /// Request body bytes sent.
    pub bytes_out: u64,
    /// Response bytes received, as the upstream declared them
    /// (`Content-Length`; a response without one is not counted).
    pub bytes_in: u64,
}

/// What the alerts of a connection compare against: requests per minute
/// over the last hour and the callers seen using it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageBaseline {
    /// Requests in each of the last 60 whole minutes (oldest first; zero
    /// where none).
    pub per_minute: Vec<u64>,
    /// `(recipe, step)` pairs that ever used the connection.
    pub callers: std::collections::BTreeSet<(String, String)>,
}

impl ConnectionLimits {
    /// Whether nothing is limited.
    pub fn is_none(&self) -> bool {
        *self == ConnectionLimits::default()
    }
}

/// A write of a connection. The runtime's types carry the checks: a
/// [`Connection`] exists only with a parsed, non-empty, non-public-suffix
/// host list, a parsed placement and a value long enough to be masked; the
/// store adds the value's strength rule and seals it.
pub enum ConnectionWrite {
    /// Adds a connection; [`StorageError::Conflict`] if the name is taken.
    Create(Connection),
    /// Replaces a connection, value included; [`StorageError::NotFound`] if
    /// there is none.
    Replace(Connection),
    /// Adds a connection or replaces one, value included.
    Put(Connection),
    /// Moves an existing connection to other hosts or another placement and
    /// keeps its value, re-sealed for the new target inside the store (the
    /// value is never read out); [`StorageError::NotFound`] if there is none.
    Retarget {
        /// Connection name.
        name: String,
        /// The new hosts.
        hosts: NetGrant,
        /// The new placement.
        placement: Placement,
    },
}

impl ConnectionWrite {
    /// The connection's name.
    pub fn name(&self) -> &str {
        match self {
            ConnectionWrite::Create(c) | ConnectionWrite::Replace(c) | ConnectionWrite::Put(c) => {
                c.name()
            }
            ConnectionWrite::Retarget { name, .. } => name,
        }
    }

    /// The hosts it will be bound to.
    pub fn hosts(&self) -> &NetGrant {
        match self {
            ConnectionWrite::Create(c) | ConnectionWrite::Replace(c) | ConnectionWrite::Put(c) => {
                c.hosts()
            }
            ConnectionWrite::Retarget { hosts, .. } => hosts,
        }
    }

    /// The placement it will have.
    pub fn placement(&self) -> &Placement {
        match self {
            ConnectionWrite::Create(c) | ConnectionWrite::Replace(c) | ConnectionWrite::Put(c) => {
                c.placement()
            }
            ConnectionWrite::Retarget { placement, .. } => placement,
        }
    }
}

impl std::fmt::Debug for ConnectionWrite {
    /// Never the value.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            ConnectionWrite::Create(_) => "Create",
            ConnectionWrite::Replace(_) => "Replace",
            ConnectionWrite::Put(_) => "Put",
            ConnectionWrite::Retarget { .. } => "Retarget",
        };
        f.debug_struct(kind)
            .field("name", &self.name())
            .field("placement", &self.placement().to_string())
            .finish_non_exhaustive()
    }
}

/// A write of an OAuth2 connection.
pub struct OAuthConnectionWrite {
    /// Connection name.
    pub name: String,
    /// Hosts the access token may be sent to.
    pub hosts: NetGrant,
    /// Where the access token goes in a request.
    pub placement: Placement,
    /// The client's configuration (checked).
    pub config: OAuthClientConfig,
    /// The client secret.
    pub client_secret: SecretValue,
    /// Replace a connection of that name (its tokens are dropped).
    pub replace: bool,
}

impl std::fmt::Debug for OAuthConnectionWrite {
    /// Never the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthConnectionWrite")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// An environment's properties and bindings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EnvironmentView {
    /// Non-secret properties.
    pub properties: BTreeMap<String, String>,
    /// Recipe connection name -> stored connection.
    pub bindings: BTreeMap<String, String>,
}

/// A change to an environment.
#[derive(Debug, Clone)]
pub enum EnvChange {
    /// Set a property.
    SetProperty(String, String),
    /// Remove a property.
    RemoveProperty(String),
    /// Bind a recipe's connection name to a stored connection.
    Bind(String, String),
    /// Remove a binding.
    Unbind(String),
}

/// The storage of the daemon.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + 'static {
    // -- Identity ---------------------------------------------------------

    /// The connections of a job: names resolved through the environment's
    /// bindings, values decrypted when a step asks for them.
    fn connections(
        &self,
        workspace: &str,
        environment: &str,
    ) -> std::sync::Arc<dyn wrun_runtime::ConnectionSource>;

    /// The token with this id, in any workspace.
    async fn token(&self, id: &str) -> StorageResult<Option<TokenRecord>>;
    /// Stores a new token.
    async fn create_token(&self, token: TokenRecord, audit: Entry) -> StorageResult<()>;
    /// The tokens of a workspace.
    async fn list_tokens(&self, workspace: &str) -> StorageResult<Vec<TokenRecord>>;
    /// Revokes a token of the workspace; `false` if there is none.
    async fn revoke_token(&self, workspace: &str, id: &str, audit: Entry) -> StorageResult<bool>;
    /// Records a token's last use (batched; not awaited by requests).
    async fn touch_token(&self, id: &str, at: UnixMillis, ip: &str) -> StorageResult<()>;
    /// The role of a member, if the subject is one.
    async fn member_role(&self, workspace: &str, subject: &str) -> StorageResult<Option<String>>;
    /// The permissions of a role (built in or custom) in a workspace.
    async fn role_permissions(
        &self,
        workspace: &str,
        role: &str,
    ) -> StorageResult<Option<PermissionSet>>;
    /// The members of a workspace.
    async fn list_members(&self, workspace: &str) -> StorageResult<Vec<Member>>;
    /// Adds a member or changes their role.
    async fn set_member(
        &self,
        workspace: &str,
        subject: &str,
        role: &str,
        audit: Entry,
    ) -> StorageResult<()>;
    /// Removes a member; `false` if there is none.
    async fn remove_member(
        &self,
        workspace: &str,
        subject: &str,
        audit: Entry,
    ) -> StorageResult<bool>;
    /// Built-in and custom roles of a workspace.
    async fn list_roles(&self, workspace: &str) -> StorageResult<Vec<Role>>;
    /// Creates or replaces a custom role.
    async fn put_role(
        &self,
        workspace: &str,
        name: &str,
        permissions: PermissionSet,
        audit: Entry,
    ) -> StorageResult<()>;
    /// Deletes a custom role; `false` if there is none.
    async fn delete_role(&self, workspace: &str, name: &str, audit: Entry) -> StorageResult<bool>;

    // -- Recipes and triggers --------------------------------------------

    /// Deploys (creates or replaces) a recipe with its components, and
    /// drops a version of it that waited for approval. Refuses a downgrade
    /// in the same transaction: a signed version lower than the deployed
    /// one, the same version with other content, or an unsigned version
    /// over a signed one ([`StorageError::Conflict`]).
    async fn put_recipe(
        &self,
        workspace: &str,
        name: &str,
        version: RecipeVersion,
        audit: Entry,
    ) -> StorageResult<()>;
    /// Keeps a version that widens grants until an admin approves it (one
    /// per recipe: a newer submission replaces it); the deployed version
    /// keeps running. Returns the pending version's id.
    async fn submit_recipe(
        &self,
        workspace: &str,
        name: &str,
        version: RecipeVersion,
        submitted_by: &str,
        audit: Entry,
    ) -> StorageResult<String>;
    /// The version of a recipe waiting for approval.
    async fn pending_recipe(
        &self,
        workspace: &str,
        name: &str,
    ) -> StorageResult<Option<PendingRecipe>>;
    /// Deploys the pending version `id` (the one the approver reviewed),
    /// with the checks of [`Storage::put_recipe`]; `NotFound` when there is
    /// no pending version or it is another one now.
    async fn approve_recipe(
        &self,
        workspace: &str,
        name: &str,
        id: &str,
        audit: Entry,
    ) -> StorageResult<()>;
    /// A workspace's governance settings.
    async fn governance(&self, workspace: &str) -> StorageResult<Governance>;
    /// Changes a workspace's governance settings.
    async fn set_governance(
        &self,
        workspace: &str,
        settings: Governance,
        audit: Entry,
    ) -> StorageResult<()>;
    /// The signing keys a workspace trusts or has revoked.
    async fn signing_keys(&self, workspace: &str) -> StorageResult<Vec<SigningKey>>;
    /// Trusts a bundle signing key under a name; `Conflict` if the name is
    /// taken or the key was revoked here (a revoked key stays revoked).
    async fn trust_signing_key(
        &self,
        workspace: &str,
        key: SigningKey,
        audit: Entry,
    ) -> StorageResult<()>;
    /// Sets (or, with no limit, removes) a connection's outbound limits;
    /// `NotFound` if there is no such connection.
    async fn set_connection_limits(
        &self,
        workspace: &str,
        name: &str,
        limits: ConnectionLimits,
        audit: Entry,
    ) -> StorageResult<()>;
    /// The outbound limits of a workspace's connections, by name.
    async fn connection_limits(
        &self,
        workspace: &str,
    ) -> StorageResult<BTreeMap<String, ConnectionLimits>>;
    /// Adds usage rows (counts add up per connection, minute, job, step
    /// and host).
    async fn record_connection_usage(
        &self,
        workspace: &str,
        rows: Vec<ConnectionUsage>,
    ) -> StorageResult<()>;
    /// The egress trail: which job, step and recipe sent `connection` (all
    /// when `None`) to which host, per minute in `[from, to)`, oldest first,
    /// at most `limit` rows.
    async fn connection_usage(
        &self,
        workspace: &str,
        connection: Option<&str>,
        from: UnixMillis,
        to: UnixMillis,
        limit: usize,
    ) -> StorageResult<Vec<ConnectionUsage>>;
    /// Each connection's baseline before minute `now`.
    async fn usage_baselines(
        &self,
        workspace: &str,
        now: UnixMillis,
    ) -> StorageResult<BTreeMap<String, UsageBaseline>>;
    /// Suspends a connection (after an alert): requests carrying it are
    /// refused until [`Storage::resume_connection`].
    async fn suspend_connection(
        &self,
        workspace: &str,
        name: &str,
        reason: &str,
        audit: Entry,
    ) -> StorageResult<()>;
    /// Resumes a suspended connection; `false` if it was not suspended.
    async fn resume_connection(
        &self,
        workspace: &str,
        name: &str,
        audit: Entry,
    ) -> StorageResult<bool>;
    /// The suspended connections of a workspace and why.
    async fn suspended_connections(
        &self,
        workspace: &str,
    ) -> StorageResult<BTreeMap<String, String>>;
    /// Revokes a trusted key by name: bundles it signed are refused from
    /// now on; `false` if there is no such key.
    async fn revoke_signing_key(
        &self,
        workspace: &str,
        name: &str,
        audit: Entry,
    ) -> StorageResult<bool>;
    /// A deployed recipe.
    async fn recipe(&self, workspace: &str, name: &str) -> StorageResult<Option<StoredRecipe>>;
    /// The deployment time of a recipe (its version), without its content:
    /// what a runner checks its cache against on every job.
    async fn recipe_version(
        &self,
        workspace: &str,
        name: &str,
    ) -> StorageResult<Option<UnixMillis>>;
    /// A stored component by SHA-256.
    async fn component(&self, sha256: &str) -> StorageResult<Option<Vec<u8>>>;
    /// The deployed recipes of a workspace.
    async fn list_recipes(&self, workspace: &str) -> StorageResult<Vec<RecipeSummary>>;
    /// Removes a recipe and its triggers; `false` if there is none.
    async fn delete_recipe(&self, workspace: &str, name: &str, audit: Entry)
    -> StorageResult<bool>;
    /// Stores a webhook or schedule.
    async fn create_trigger(&self, trigger: TriggerRecord, audit: Entry) -> StorageResult<()>;
    /// A trigger by id, in any workspace (the id is the webhook's capability).
    async fn trigger(&self, id: &str) -> StorageResult<Option<TriggerRecord>>;
    /// The triggers of a recipe.
    async fn list_triggers(
        &self,
        workspace: &str,
        recipe: &str,
    ) -> StorageResult<Vec<TriggerRecord>>;
    /// Deletes a trigger of the workspace; `false` if there is none.
    async fn delete_trigger(&self, workspace: &str, id: &str, audit: Entry) -> StorageResult<bool>;
    /// Every schedule, for the scheduler.
    async fn schedules(&self) -> StorageResult<Vec<TriggerRecord>>;
    /// Records that a schedule fired for `slot` and enqueues its job, in one
    /// transaction; `false` (and no job) if that slot already fired.
    async fn fire_schedule(
        &self,
        trigger: &str,
        slot: UnixMillis,
        job: NewJob,
    ) -> StorageResult<bool>;

    // -- Connections and environments -------------------------------------

    /// The connections of a workspace (never their values).
    async fn list_connections(&self, workspace: &str) -> StorageResult<Vec<ConnectionSummary>>;
    /// Creates, replaces or retargets a connection (the value is sealed).
    async fn put_connection(
        &self,
        workspace: &str,
        write: ConnectionWrite,
        audit: Entry,
    ) -> StorageResult<()>;
    /// Removes a connection; `false` if there is none.
    async fn delete_connection(
        &self,
        workspace: &str,
        name: &str,
        audit: Entry,
    ) -> StorageResult<bool>;
    /// Adds (or, with `replace`, replaces) an OAuth2 connection: its hosts
    /// and placement, its client (the secret sealed) and no token yet.
    async fn put_oauth_connection(
        &self,
        workspace: &str,
        write: OAuthConnectionWrite,
        audit: Entry,
    ) -> StorageResult<()>;
    /// The OAuth2 configuration and state of a connection (never a token);
    /// `None` if it is not an OAuth2 connection.
    async fn oauth_status(&self, workspace: &str, name: &str)
    -> StorageResult<Option<OAuthStatus>>;
    /// The client secret of OAuth2 connection `name`, for a code exchange.
    async fn oauth_client_secret(&self, workspace: &str, name: &str) -> StorageResult<SecretValue>;
    /// Takes the refresh lease of OAuth2 connection `name` for `holder`, in
    /// a write transaction that re-reads the credentials, or says why not
    /// (see [`crate::oauth`]).
    async fn oauth_lease(&self, workspace: &str, name: &str, holder: &str) -> StorageResult<Lease>;
    /// Stores new tokens of an OAuth2 connection and ends the lease, only
    /// if `holder` still holds it ([`StorageError::Conflict`] if not);
    /// `holder` `None` is a person's authorization.
    async fn oauth_store_tokens(
        &self,
        workspace: &str,
        name: &str,
        holder: Option<&str>,
        tokens: IssuedTokens,
        audit: Entry,
    ) -> StorageResult<()>;
    /// Ends `holder`'s lease without tokens (and marks the connection
    /// `needs_reauth` if the provider refused).
    async fn oauth_end_lease(
        &self,
        workspace: &str,
        name: &str,
        holder: &str,
        end: LeaseEnd,
        audit: Option<Entry>,
    ) -> StorageResult<()>;
    /// Records the start of an authorization code flow.
    async fn oauth_begin_authorization(
        &self,
        workspace: &str,
        name: &str,
        start: &wrun_runtime::oauth::AuthorizationStart,
        redirect_uri: &str,
        audit: Entry,
    ) -> StorageResult<()>;
    /// Takes the flow a callback's `state` belongs to (once); `None` if
    /// there is none or it expired.
    async fn oauth_take_authorization(
        &self,
        state: &str,
    ) -> StorageResult<Option<PendingAuthorization>>;
    /// OAuth2 connections with a refresh token whose access token expires
    /// before `before`: what a periodic refresh keeps alive.
    async fn oauth_due(&self, before: UnixMillis) -> StorageResult<Vec<(String, String)>>;
    /// Lets this store's connection sources refresh OAuth2 tokens through
    /// `refresher`; without it, a job that needs a refresh fails saying so.
    fn enable_oauth(&self, refresher: std::sync::Arc<Refresher>);
    /// The refresher set with [`Storage::enable_oauth`].
    fn oauth_refresher(&self) -> Option<std::sync::Arc<Refresher>>;
    /// An environment's properties and bindings.
    async fn environment(
        &self,
        workspace: &str,
        environment: &str,
    ) -> StorageResult<EnvironmentView>;
    /// Changes an environment.
    async fn change_environment(
        &self,
        workspace: &str,
        environment: &str,
        change: EnvChange,
        audit: Entry,
    ) -> StorageResult<()>;

    // -- Jobs -------------------------------------------------------------

    /// Commits a job (and its audit entry) durably; returns once it is on
    /// disk.
    async fn enqueue(&self, job: NewJob, audit: Option<Entry>) -> StorageResult<Enqueued>;
    /// Renews the lease of `node` on its claims until `lease_ms` from now
    /// (once per node, not per job: see [`crate::claims`]).
    async fn heartbeat(&self, node: &str, lease_ms: i64) -> StorageResult<()>;
    /// Gives up every claim of `node` (at its start: what it held is from
    /// its previous run), so they can be claimed at once; returns how many.
    async fn release_claims(&self, node: &str) -> StorageResult<usize>;
    /// Claims jobs for `node` (see [`crate::claims::claim`] for the order
    /// and the fairness between workspaces).
    async fn claim_jobs(
        &self,
        node: &str,
        request: crate::claims::ClaimRequest,
    ) -> StorageResult<Vec<crate::claims::Claim>>;
    /// Jobs queued or running, in all workspaces (the backlog).
    async fn backlog(&self) -> StorageResult<u64>;
    /// Checks that the store answers a read (for readiness probes).
    async fn ping(&self) -> StorageResult<()>;
    /// Marks a claimed job running and returns what it needs; `None` if it
    /// has ended (cancelled meanwhile) or does not exist.
    ///
    /// # Errors
    ///
    /// [`StorageError::LeaseLost`] if `node` no longer holds the claim.
    async fn start_job(
        &self,
        node: &str,
        claim: &crate::claims::Claim,
    ) -> StorageResult<Option<StartedJob>>;
    /// Commits a completed step; returns `false` if the job was cancelled
    /// meanwhile (the step is recorded; the job should stop).
    ///
    /// # Errors
    ///
    /// [`StorageError::LeaseLost`] if the committing node no longer holds
    /// the claim: nothing is written.
    async fn commit_step(&self, step: StepCommit) -> StorageResult<bool>;
    /// Ends a job held by `node` at `epoch` and deletes its checkpoints;
    /// returns the state it ended in (a cancellation that raced the end
    /// wins).
    ///
    /// # Errors
    ///
    /// [`StorageError::LeaseLost`] if `node` no longer holds the claim:
    /// nothing is written.
    async fn finish_job(
        &self,
        claim: (&str, i64),
        workspace: &str,
        id: &str,
        state: JobState,
        error: Option<String>,
        audit: Vec<Entry>,
    ) -> StorageResult<JobState>;
    /// A job with its history.
    async fn job(&self, workspace: &str, id: &str) -> StorageResult<Option<JobDetail>>;
    /// Jobs of a workspace, newest first.
    async fn list_jobs(&self, workspace: &str, filter: JobFilter)
    -> StorageResult<Vec<JobSummary>>;
    /// How many jobs of a workspace were created per `bucket_ms` from
    /// `since` on, and how many of them failed (buckets without jobs are
    /// left out).
    async fn job_stats(
        &self,
        workspace: &str,
        since: UnixMillis,
        bucket_ms: i64,
    ) -> StorageResult<Vec<JobBucket>>;
    /// Cancels a queued or running job; returns its state after, or `None`
    /// if there is no such job.
    async fn cancel_job(
        &self,
        workspace: &str,
        id: &str,
        audit: Entry,
    ) -> StorageResult<Option<JobState>>;
    /// Deletes the jobs matching `criteria`; returns how many.
    async fn delete_jobs(
        &self,
        workspace: &str,
        criteria: DeleteCriteria,
        audit: Entry,
    ) -> StorageResult<u64>;
    /// Destroys the content of every ended job of `workspace` that
    /// mentions `subject` (see [`crate::erase`]), in one transaction with
    /// `audit` (which gets the counts); with `dry_run`, only counts (and
    /// still audits: looking a person up is itself recorded).
    async fn erase_subject(
        &self,
        workspace: &str,
        subject: &crate::erase::Subject,
        dry_run: bool,
        audit: Entry,
    ) -> StorageResult<crate::erase::EraseReport>;
    /// Sets a workspace's history retention (`None`: keep forever).
    async fn set_retention(
        &self,
        workspace: &str,
        days: Option<u32>,
        audit: Entry,
    ) -> StorageResult<()>;
    /// A workspace's history retention in days.
    async fn retention(&self, workspace: &str) -> StorageResult<Option<u32>>;
    /// Deletes ended jobs older than their workspace's retention.
    async fn sweep_retention(&self, now: UnixMillis) -> StorageResult<u64>;

    // -- Console sessions -------------------------------------------------

    /// Starts a web console session, audited with `audit` in the same
    /// transaction.
    async fn create_session(
        &self,
        session: crate::sessions::ConsoleSession,
        audit: Entry,
    ) -> StorageResult<()>;
    /// The session whose cookie secret hashes to `id_hash`, with its
    /// workspace's idle timeout in seconds.
    async fn session(
        &self,
        id_hash: &str,
    ) -> StorageResult<Option<(crate::sessions::ConsoleSession, u32)>>;
    /// Records a session's use at `at` (batched, not awaited: callers touch
    /// a session at most once a minute or so).
    async fn touch_session(&self, id_hash: &str, at: UnixMillis) -> StorageResult<()>;
    /// Ends a session (sign-out, idle timeout, a credential no longer
    /// valid); `false` if there was none. The audit entry is written only
    /// when a session ended.
    async fn end_session(&self, id_hash: &str, audit: Option<Entry>) -> StorageResult<bool>;
    /// Deletes sessions past their end or their idle timeout; how many.
    async fn sweep_sessions(&self, now: UnixMillis) -> StorageResult<usize>;
    /// A workspace's console idle timeout in seconds.
    async fn session_idle_secs(&self, workspace: &str) -> StorageResult<u32>;
    /// Sets a workspace's console idle timeout (`None`: the default), from
    /// [`crate::sessions::MIN_IDLE_SECS`] to
    /// [`crate::sessions::MAX_IDLE_SECS`].
    async fn set_session_idle_secs(
        &self,
        workspace: &str,
        secs: Option<u32>,
        audit: Entry,
    ) -> StorageResult<()>;

    // -- Audit ------------------------------------------------------------

    /// Appends entries (authentication failures, refusals reported by the
    /// runtime); committed with the next group.
    async fn audit(&self, entries: Vec<Entry>) -> StorageResult<()>;
    /// Verifies the whole audit chain (every workspace's entries are links
    /// of one chain; the report names positions, never entries' content).
    async fn verify_audit(&self) -> StorageResult<crate::audit::VerifyReport>;
    /// Audit entries after `after`, of one workspace.
    async fn read_audit(
        &self,
        workspace: &str,
        after: u64,
        limit: usize,
    ) -> StorageResult<Vec<Stored>>;
}

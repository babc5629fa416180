//! The daemon's configuration: a TOML file, then environment variables.
//!
//! ```toml
//! listen = "0.0.0.0:8443"
//! public_url = "https://wrun.example.com"   # the base of webhook URLs
//! log = "error"                             # production: errors only
//!
//! [tls]
//! cert = "/etc/wrun/tls.crt"
//! key = "/etc/wrun/tls.key"
//! # dev_self_signed = true                 # development only, said loudly
//!
//! [limits]
//! max_body_bytes = 1048576
//! max_bundle_bytes = 67108864
//! max_header_bytes = 16384
//! token_max_lifetime_secs = 7776000         # 90 days
//! requests_per_second = 50                  # per token (or JWT subject)
//! burst = 100
//! webhook_per_second = 500                  # per webhook
//! webhook_burst = 1000
//! failures_per_second = 10                  # failed logins per client address
//! failure_burst = 100
//! address_per_second = 100                  # API requests per client address
//! address_burst = 200                       #   (IPv6: per /64), before verification
//! body_read_timeout_secs = 10               # a whole request body must arrive in this
//! bundle_read_timeout_secs = 300            # ... and a recipe bundle in this
//!
//! [workers]
//! concurrency = 64
//! per_workspace = 16
//! shutdown_grace_secs = 30
//! min_schedule_interval_secs = 60          # shortest gap between two slots
//!
//! [webhooks]
//! signature_window_secs = 300
//!
//! [audit]
//! stream_file = "/var/log/wrun/audit.jsonl" # JSON lines for a SIEM
//!
//! [jwt]                                      # optional; see auth::JwtConfig
//! issuer = "https://idp.example.com"
//! audience = "wrun"
//! algorithm = "RS256"
//! key_file = "/etc/wrun/idp.pem"
//! ```
//!
//! Environment variables override the file: `WRUN_LISTEN`,
//! `WRUN_PUBLIC_URL`, `WRUN_LOG`, `WRUN_TLS_CERT`, `WRUN_TLS_KEY`,
//! `WRUN_DEV_SELF_SIGNED` (`1`), `WRUN_WORKERS`, `WRUN_AUDIT_STREAM_FILE`,
//! `WRUN_ALERT_WEBHOOK_URL`.
//! The database, the master key, the compile cache and egress options are
//! the global options of `wrun` (`--db`, `--key-file`, ...).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::auth::JwtConfig;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Base URL clients reach the daemon at (webhook URLs start with it).
    #[serde(default = "default_public_url")]
    pub public_url: String,
    /// Log level: `error` in production, `info` or `debug` to investigate.
    #[serde(default = "default_log")]
    pub log: String,
    /// TLS.
    #[serde(default)]
    pub tls: TlsConfig,
    /// Request limits.
    #[serde(default)]
    pub limits: Limits,
    /// The job runner.
    #[serde(default)]
    pub workers: Workers,
    /// Webhooks.
    #[serde(default)]
    pub webhooks: Webhooks,
    /// The audit log.
    #[serde(default)]
    pub audit: AuditConfig,
    /// JWTs of an identity provider.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Alerts on connection use.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// The web console under `/ui`.
    #[serde(default)]
    pub console: ConsoleConfig,
}

/// The web console (`/ui`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Serve the console (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The longest a session lasts, however active (default 8 hours); the
    /// idle timeout is a workspace setting.
    #[serde(default = "default_session_hours")]
    pub session_max_hours: u64,
    /// Sign-in through an OpenID Connect provider.
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
}

impl Default for ConsoleConfig {
    fn default() -> ConsoleConfig {
        ConsoleConfig {
            enabled: true,
            session_max_hours: default_session_hours(),
            oidc: None,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_session_hours() -> u64 {
    8
}

/// The operator's OpenID Connect provider (authorization code with PKCE).
/// Its discovery document, keys and token endpoint are fetched through the
/// egress rules (HTTPS, the operator's CAs; a private address needs an
/// allowed range).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL; `{issuer}/.well-known/openid-configuration` is read.
    pub issuer: String,
    /// The client id registered with the provider.
    pub client_id: String,
    /// The environment variable holding the client secret.
    pub client_secret_env: String,
    /// The label of the sign-in button.
    #[serde(default = "default_oidc_label")]
    pub label: String,
    /// Scopes asked for besides `openid`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// The claim holding the subject. Default `sub`.
    #[serde(default = "crate::auth::default_subject_claim")]
    pub subject_claim: String,
    /// The claim holding the workspace name. Default `wrun_workspace`.
    #[serde(default = "crate::auth::default_workspace_claim")]
    pub workspace_claim: String,
    /// The claim holding the role. Default `wrun_role`.
    #[serde(default = "crate::auth::default_role_claim")]
    pub role_claim: String,
    /// Maps role claim values to wrun role names (as `[jwt] role_map`).
    #[serde(default)]
    pub role_map: std::collections::BTreeMap<String, String>,
}

fn default_oidc_label() -> String {
    "Sign in with single sign-on".into()
}

/// Alerts on connection use (spikes, new callers).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// An HTTPS URL each alert is POSTed to as JSON (through the egress
    /// rules: a private address needs an allowed range).
    pub webhook_url: Option<String>,
}

/// TLS settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Private key (PEM).
    pub key: Option<PathBuf>,
    /// Generate a self-signed certificate (development only).
    #[serde(default)]
    pub dev_self_signed: bool,
    /// Where to write the generated certificate for clients to trust.
    pub dev_cert_out: Option<PathBuf>,
}

/// Request limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest JSON request body.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Largest recipe bundle upload.
    #[serde(default = "default_max_bundle")]
    pub max_bundle_bytes: usize,
    /// Largest request head.
    #[serde(default = "default_max_header")]
    pub max_header_bytes: usize,
    /// Longest lifetime of an API token.
    #[serde(default = "default_token_lifetime")]
    pub token_max_lifetime_secs: u64,
    /// Requests per second per token or JWT subject.
    #[serde(default = "default_rps")]
    pub requests_per_second: u32,
    /// Burst per token.
    #[serde(default = "default_burst")]
    pub burst: u32,
    /// Deliveries per second per webhook.
    #[serde(default = "default_webhook_rps")]
    pub webhook_per_second: u32,
    /// Burst per webhook.
    #[serde(default = "default_webhook_burst")]
    pub webhook_burst: u32,
    /// Failed authentications (and unknown webhooks) per second per client
    /// address before they are answered 429 and no longer audited singly.
    #[serde(default = "default_failures")]
    pub failures_per_second: u32,
    /// Burst of failures per client address.
    #[serde(default = "default_failure_burst")]
    pub failure_burst: u32,
    /// API requests per second per client address (IPv6: per /64), counted
    /// before any credential is verified.
    #[serde(default = "default_address_rps")]
    pub address_per_second: u32,
    /// Burst of API requests per client address.
    #[serde(default = "default_address_burst")]
    pub address_burst: u32,
    /// Seconds a whole request body may take to arrive after the head.
    #[serde(default = "default_body_read_timeout")]
    pub body_read_timeout_secs: u64,
    /// Seconds a recipe bundle upload may take to arrive after the head.
    #[serde(default = "default_bundle_read_timeout")]
    pub bundle_read_timeout_secs: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body_bytes: default_max_body(),
            max_bundle_bytes: default_max_bundle(),
            max_header_bytes: default_max_header(),
            token_max_lifetime_secs: default_token_lifetime(),
            requests_per_second: default_rps(),
            burst: default_burst(),
            webhook_per_second: default_webhook_rps(),
            webhook_burst: default_webhook_burst(),
            failures_per_second: default_failures(),
            failure_burst: default_failure_burst(),
            address_per_second: default_address_rps(),
            address_burst: default_address_burst(),
            body_read_timeout_secs: default_body_read_timeout(),
            bundle_read_timeout_secs: default_bundle_read_timeout(),
        }
    }
}

/// The job runner.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workers {
    /// Jobs running at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Jobs running at once per workspace.
    #[serde(default = "default_per_workspace")]
    pub per_workspace: usize,
    /// How long a shutdown waits for running jobs.
    #[serde(default = "default_grace")]
    pub shutdown_grace_secs: u64,
    /// How often schedules are checked.
    #[serde(default = "default_schedule_tick")]
    pub schedule_tick_ms: u64,
    /// Shortest interval between two slots of a schedule.
    #[serde(default = "default_min_schedule_interval")]
    pub min_schedule_interval_secs: i64,
    /// Jobs queued or running at most: past it, webhooks and runs are
    /// answered 503 with `Retry-After` and nothing is accepted (default: no
    /// limit). Schedules still fire.
    #[serde(default)]
    pub max_backlog: Option<usize>,
    /// This node's name in the store: its claims on jobs are held under it
    /// (default: the host's name). Nodes sharing a store need distinct
    /// names; a node restarted under the same name resumes its jobs at
    /// once, one under a new name after the old claims' lease lapses.
    #[serde(default)]
    pub node: Option<String>,
    /// How long a node's claims on jobs outlive its last renewal (renewed
    /// every quarter of it): a node that dies has its jobs taken over by
    /// another after at most this long. 3 to 300 seconds.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
}

impl Workers {
    /// This node's name: `node`, else the host's name, else `local`.
    pub fn node_name(&self) -> String {
        self.node
            .clone()
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
                    .filter(|h| valid_node_name(h))
            })
            .unwrap_or_else(|| wrun_store::claims::DEFAULT_NODE.to_string())
    }
}

/// A node name: 1 to 64 of `A-Z a-z 0-9 - _ .`.
fn valid_node_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Default for Workers {
    fn default() -> Workers {
        Workers {
            concurrency: default_concurrency(),
            per_workspace: default_per_workspace(),
            shutdown_grace_secs: default_grace(),
            schedule_tick_ms: default_schedule_tick(),
            min_schedule_interval_secs: default_min_schedule_interval(),
            max_backlog: None,
            node: None,
            lease_secs: default_lease(),
        }
    }
}

/// Webhooks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhooks {
    /// Accepted clock difference of a signature's timestamp.
    #[serde(default = "default_window")]
    pub signature_window_secs: i64,
    /// The longest a webhook in response mode may keep its request open
    /// waiting for its job.
    #[serde(default = "default_max_respond_ms")]
    pub max_respond_timeout_ms: u64,
}

impl Default for Webhooks {
    fn default() -> Webhooks {
        Webhooks {
            signature_window_secs: default_window(),
            max_respond_timeout_ms: default_max_respond_ms(),
        }
    }
}

fn default_max_respond_ms() -> u64 {
    60_000
}

/// The audit log.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Append every entry to this file as a JSON line (for a SIEM).
    pub stream_file: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8443))
}
fn default_public_url() -> String {
    "https://127.0.0.1:8443".into()
}
fn default_log() -> String {
    "error".into()
}
fn default_max_body() -> usize {
    1 << 20
}
fn default_max_bundle() -> usize {
    64 << 20
}
fn default_max_header() -> usize {
    16 << 10
}
fn default_token_lifetime() -> u64 {
    90 * 86_400
}
fn default_rps() -> u32 {
    50
}
fn default_burst() -> u32 {
    100
}
fn default_webhook_rps() -> u32 {
    500
}
fn default_webhook_burst() -> u32 {
    1000
}
fn default_failures() -> u32 {
    10
}
fn default_failure_burst() -> u32 {
    100
}
fn default_address_rps() -> u32 {
    100
}
fn default_address_burst() -> u32 {
    200
}
fn default_body_read_timeout() -> u64 {
    10
}
fn default_bundle_read_timeout() -> u64 {
    300
}
fn default_concurrency() -> usize {
    64
}
fn default_per_workspace() -> usize {
    16
}
fn default_lease() -> u64 {
    10
}
fn default_grace() -> u64 {
    30
}
fn default_schedule_tick() -> u64 {
    1000
}
fn default_min_schedule_interval() -> i64 {
    60
}
fn default_window() -> i64 {
    super::signature::DEFAULT_WINDOW_SECS
}

/// What was wrong with the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading the configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("the configuration {path} is invalid: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What and where (line and column).
        message: String,
    },
    /// An environment variable is not valid.
    #[error("environment variable {name}: {message}")]
    Env {
        /// The variable.
        name: &'static str,
        /// Why.
        message: String,
    },
    /// Settings that do not go together.
    #[error("the configuration is not usable: {0}")]
    Inconsistent(String),
}

impl DaemonConfig {
    /// Reads the file (if any), then applies the environment.
    ///
    /// # Errors
    ///
    /// A file that cannot be read or parsed (with line and column), an
    /// invalid variable, or settings that do not go together.
    pub fn load(path: Option<&Path>) -> Result<DaemonConfig, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.into(),
                source,
            })?,
            None => String::new(),
        };
        let mut config: DaemonConfig = toml::from_str(&text).map_err(|e| ConfigError::Invalid {
            path: path.map(Path::to_path_buf).unwrap_or_default(),
            message: e.to_string(),
        })?;
        config.apply_env(|name| std::env::var(name).ok())?;
        config.check()?;
        Ok(config)
    }

    /// Applies environment overrides read through `get`.
    fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = get("WRUN_LISTEN") {
            self.listen = v.parse().map_err(|_| ConfigError::Env {
                name: "WRUN_LISTEN",
                message: format!("`{v}` is not an address like 0.0.0.0:8443"),
            })?;
        }
        if let Some(v) = get("WRUN_PUBLIC_URL") {
            self.public_url = v;
        }
        if let Some(v) = get("WRUN_LOG") {
            self.log = v;
        }
        if let Some(v) = get("WRUN_TLS_CERT") {
            self.tls.cert = Some(v.into());
        }
        if let Some(v) = get("WRUN_TLS_KEY") {
            self.tls.key = Some(v.into());
        }
        if let Some(v) = get("WRUN_DEV_SELF_SIGNED") {
            self.tls.dev_self_signed = matches!(v.as_str(), "1" | "true" | "yes");
        }
        if let Some(v) = get("WRUN_WORKERS") {
            self.workers.concurrency = v.parse().map_err(|_| ConfigError::Env {
                name: "WRUN_WORKERS",
                message: format!("`{v}` is not a number"),
            })?;
        }
        if let Some(v) = get("WRUN_NODE") {
            self.workers.node = Some(v);
        }
        if let Some(v) = get("WRUN_AUDIT_STREAM_FILE") {
            self.audit.stream_file = Some(v.into());
        }
        if let Some(v) = get("WRUN_ALERT_WEBHOOK_URL") {
            self.alerts.webhook_url = Some(v);
        }
        Ok(())
    }

    /// Checks settings that do not go together.
    fn check(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.alerts.webhook_url
            && !url.starts_with("https://")
        {
            return Err(ConfigError::Inconsistent(
                "[alerts] webhook_url must be an https:// URL".into(),
            ));
        }
        let has_cert = self.tls.cert.is_some() && self.tls.key.is_some();
        if !has_cert && !self.tls.dev_self_signed {
            return Err(ConfigError::Inconsistent(
                "HTTPS needs [tls] cert and key (or WRUN_TLS_CERT and WRUN_TLS_KEY); for development only, set dev_self_signed = true".into(),
            ));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(ConfigError::Inconsistent(
                "[tls] needs both cert and key".into(),
            ));
        }
        if self.workers.concurrency == 0 || self.workers.per_workspace == 0 {
            return Err(ConfigError::Inconsistent(
                "[workers] concurrency and per_workspace must be at least 1".into(),
            ));
        }
        if !(3..=300).contains(&self.workers.lease_secs) {
            return Err(ConfigError::Inconsistent(
                "[workers] lease_secs must be 3 to 300".into(),
            ));
        }
        if let Some(node) = &self.workers.node
            && !valid_node_name(node)
        {
            return Err(ConfigError::Inconsistent(
                "[workers] node must be 1 to 64 of A-Z a-z 0-9 - _ .".into(),
            ));
        }
        if self.limits.body_read_timeout_secs == 0 || self.limits.bundle_read_timeout_secs == 0 {
            return Err(ConfigError::Inconsistent(
                "[limits] body_read_timeout_secs and bundle_read_timeout_secs must be at least 1"
                    .into(),
            ));
        }
        if self.limits.token_max_lifetime_secs == 0 {
            return Err(ConfigError::Inconsistent(
                "[limits] token_max_lifetime_secs must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_and_the_environment_combine() {
        let mut c: DaemonConfig = toml::from_str(
            "listen = \"127.0.0.1:9000\"\n[tls]\ndev_self_signed = true\n[workers]\nconcurrency = 4\n",
        )
        .unwrap();
        c.apply_env(|n| (n == "WRUN_WORKERS").then(|| "8".to_string()))
            .unwrap();
        c.check().unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.workers.concurrency, 8);
        assert_eq!(c.limits.max_body_bytes, 1 << 20);
    }

    #[test]
    fn errors_say_what_and_where() {
        let e = toml::from_str::<DaemonConfig>("listen = \"x\"\n[tls]\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("line"), "{e}");
        let c: DaemonConfig = toml::from_str("").unwrap();
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("HTTPS needs"), "{e}");
        let mut c: DaemonConfig = toml::from_str("[tls]\ndev_self_signed = true").unwrap();
        let e = c
            .apply_env(|n| (n == "WRUN_LISTEN").then(|| "nope".to_string()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("WRUN_LISTEN") && e.contains("nope"), "{e}");
    }

    #[test]
    fn a_node_name_and_a_lease_are_checked() {
        let tls = "[tls]\ndev_self_signed = true\n";
        let c: DaemonConfig = toml::from_str(&format!("{tls}[workers]\nlease_secs = 2\n")).unwrap();
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("lease_secs must be 3 to 300"), "{e}");
        let c: DaemonConfig = toml::from_str(&format!("{tls}[workers]\nnode = \"a b\"\n")).unwrap();
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains("[workers] node"), "{e}");
        // The environment's name is checked like the file's.
        let mut c: DaemonConfig = toml::from_str(tls).unwrap();
        c.apply_env(|n| (n == "WRUN_NODE").then(|| "node/1".to_string()))
            .unwrap();
        assert!(c.check().is_err());
        let mut c: DaemonConfig = toml::from_str(tls).unwrap();
        c.apply_env(|n| (n == "WRUN_NODE").then(|| "node-1.eu".to_string()))
            .unwrap();
        c.check().unwrap();
        assert_eq!(c.workers.node_name(), "node-1.eu");
        // Unnamed, a node takes the host's name (or `local`), always valid.
        let c: DaemonConfig = toml::from_str(tls).unwrap();
        assert!(valid_node_name(&c.workers.node_name()));
    }
}

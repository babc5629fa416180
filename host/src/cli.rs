//! Command-line arguments and what each command does.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};
use wrun_runtime::recipe::{Recipe, RunReport, StepRecord, StepStatus};
use wrun_runtime::{Engine, JobOptions};
use zeroize::Zeroizing;

use crate::daemon::oauth::Refresher;
use crate::daemon::sqlite::SqliteStorage;
use crate::daemon::storage::{EnvChange, Storage};
use crate::keys::{KeySource, MasterKey};
use crate::ops;
use crate::store_sqlite::{OpenMode, Store};
use crate::{bundle, output, scaffold};

/// wrun: run integration recipes as sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "wrun", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
struct Global {
    /// The embedded database (connections, properties, imported recipes).
    #[arg(long, global = true, env = "WRUN_DB", default_value = "wrun.db")]
    db: PathBuf,
    /// File holding the master key (base64). Alternatively set WRUN_MASTER_KEY.
    #[arg(long, global = true, env = "WRUN_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Workspace to act in.
    #[arg(long, global = true, env = "WRUN_WORKSPACE", default_value = "default")]
    workspace: String,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    /// Directory of the compiled-component cache.
    #[arg(long, global = true, env = "WRUN_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Trust an extra CA (PEM file) for egress, e.g. an on-premises or test API.
    #[arg(
        long = "ca-file",
        global = true,
        env = "WRUN_CA_FILE",
        value_delimiter = ','
    )]
    ca_files: Vec<PathBuf>,
    /// Allow egress to a non-public range (CIDR), e.g. 127.0.0.0/8 for a local mock.
    #[arg(
        long = "allow-range",
        global = true,
        env = "WRUN_ALLOW_RANGES",
        value_delimiter = ','
    )]
    allow_ranges: Vec<String>,
    /// Resolve HOST to IP instead of asking DNS (repeatable): `api.example.test=127.0.0.1`.
    #[arg(
        long = "resolve",
        global = true,
        env = "WRUN_RESOLVE",
        value_delimiter = ','
    )]
    resolve: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Scaffold a step crate (using the guest SDK) and a recipe.
    New {
        /// Name of the recipe and its first step.
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Language of the step.
        #[arg(long, value_enum, default_value = "rust")]
        lang: scaffold::Lang,
    },
    /// Build a recipe's step crates into components.
    Build {
        /// The recipe manifest.
        recipe: PathBuf,
    },
    /// Validate a recipe: manifest, components, grants, pills, bindings.
    Check {
        /// The recipe manifest.
        recipe: PathBuf,
        /// Environment whose bindings and properties to check.
        #[arg(long, default_value = "dev")]
        env: String,
    },
    /// Run a recipe locally.
    Run {
        /// The recipe manifest.
        recipe: PathBuf,
        /// JSON file with the trigger payload (`-` for stdin).
        #[arg(long)]
        input: Option<PathBuf>,
        /// Environment to run in.
        #[arg(long, default_value = "dev")]
        env: String,
    },
    /// Write a recipe and its components into one bundle, without credentials.
    Export {
        /// The recipe manifest.
        recipe: PathBuf,
        /// The bundle file to write.
        #[arg(short, long)]
        output: PathBuf,
        /// Sign the bundle's lock with this key file (`wrun signing-key new`).
        #[arg(long)]
        sign: Option<PathBuf>,
        /// The bundle's version (default: now, in milliseconds); a
        /// workspace refuses a signed version lower than the one it runs.
        #[arg(long = "bundle-version")]
        bundle_version: Option<u64>,
    },
    /// Unpack a bundle into a recipe directory and list what must be bound.
    Import {
        /// The bundle file.
        bundle: PathBuf,
        /// Directory to create (default: ./RECIPE-NAME).
        #[arg(long)]
        into: Option<PathBuf>,
        /// Environment whose bindings to report.
        #[arg(long, default_value = "dev")]
        env: String,
    },
    /// Manage connections (credentials).
    #[command(subcommand)]
    Connection(ConnectionCommand),
    /// Manage environment properties and connection bindings.
    #[command(subcommand)]
    Env(EnvCommand),
    /// Manage the master key.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Run the daemon: the HTTPS API, webhooks, schedules and the job runner.
    Serve {
        /// Configuration file (TOML); environment variables override it.
        #[arg(long, env = "WRUN_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Manage the daemon's API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage the members of a workspace and their roles.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Verify or stream the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Job history: erase a data subject.
    #[command(subcommand)]
    Jobs(JobsCommand),
    /// Bundle signing keys: create one, trust or revoke one in a workspace.
    #[command(subcommand, name = "signing-key")]
    SigningKey(SigningKeyCommand),
}

#[derive(Debug, Subcommand)]
enum SigningKeyCommand {
    /// Create an author's signing key file (0600); prints its public key.
    New {
        /// The key file to create (never overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Trust a public key in the workspace: bundles it signs may deploy.
    Trust {
        /// A name for the key.
        name: String,
        /// The public key (`wrun-ed25519:...`).
        public_key: String,
    },
    /// Revoke a trusted key: bundles it signed are refused from now on.
    Revoke {
        /// The key's name.
        name: String,
    },
    /// List the workspace's keys.
    List,
    /// Set the workspace's rules: deploy only signed bundles, and keep
    /// versions that widen grants for an admin's approval.
    Require {
        /// Refuse unsigned bundles.
        #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
        signatures: bool,
        /// Keep versions that widen a step's grants for approval.
        #[arg(long, action = clap::ArgAction::Set, value_name = "true|false")]
        grant_review: bool,
    },
}

#[derive(Debug, Subcommand)]
enum JobsCommand {
    /// Destroy the content of every ended job of the workspace that
    /// mentions a data subject (any field, any case); ids, recipes, times
    /// and states stay. Prints the counts as JSON.
    Erase {
        /// The subject (an e-mail address, a name, an identifier); read
        /// from stdin when left out, which keeps it out of the shell
        /// history and the process list.
        #[arg(long)]
        subject: Option<String>,
        /// A request or ticket id kept in the audit entry.
        #[arg(long)]
        reference: Option<String>,
        /// Only count what would be erased.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create an API token (printed once; only its hash is stored).
    Create {
        /// A label for the token.
        #[arg(long)]
        name: String,
        /// The member whose role bounds the token.
        #[arg(long)]
        owner: String,
        /// Scopes: `jobs:read`, `recipes:write`, `*:read`, ... (comma-separated or repeated).
        #[arg(long = "scope", required = true, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Lifetime, like `30d` or `12h` (mandatory).
        #[arg(long)]
        expires_in: humantime::Duration,
        /// Longest lifetime the operator allows.
        #[arg(long, default_value = "90d")]
        max_lifetime: humantime::Duration,
        /// CIDR the token may be used from (repeatable; default anywhere).
        #[arg(long = "allow-ip", value_delimiter = ',')]
        allow_ips: Vec<String>,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token: refused from the next request on.
    Revoke {
        /// Token id (the part after `wrun_pat_`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum MemberCommand {
    /// Add a member or change their role (admin, operator, analyst, or a custom role).
    Set {
        /// The member's subject (user id, or a JWT `sub`).
        subject: String,
        /// Role.
        role: String,
    },
    /// Remove a member.
    Rm {
        /// The member's subject.
        subject: String,
    },
    /// List members.
    List,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the MAC chain: finds removed, edited or reordered entries.
    Verify,
    /// Print entries as JSON lines (for a SIEM).
    Stream {
        /// Start after this entry.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Keep printing new entries as they are written.
        #[arg(long)]
        follow: bool,
        /// Only this workspace's entries.
        #[arg(long = "only-workspace")]
        only_workspace: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConnectionCommand {
    /// Add a connection. The value is read from stdin, or prompted for
    /// without echo on a terminal; never from the command line.
    Add {
        /// Connection name.
        name: String,
        /// Host the value may be sent to (repeatable): `api.example.com`, `*.example.com`, `host:8443`.
        #[arg(long = "host", required = true)]
        hosts: Vec<String>,
        /// Where it goes: `header:Authorization=Bearer {}`, `basic`, `query:PARAM`, `body:FIELD`.
        #[arg(long = "apply", default_value = "header:Authorization=Bearer {}")]
        apply: String,
        #[command(flatten)]
        oauth: crate::oauth_cli::OAuthArgs,
    },
    /// Authorise an OAuth2 connection (authorization code with PKCE): prints
    /// the provider's URL and waits for its redirect on a loopback port.
    Authorize {
        /// Connection name.
        name: String,
    },
    /// List connections (names, hosts, placement, dates; never values).
    List,
    /// Set a connection's outbound limits (none given: remove them).
    /// Requests past them are refused before they leave.
    Limit {
        /// Connection name.
        name: String,
        /// Requests per minute.
        #[arg(long)]
        requests_per_minute: Option<u32>,
        /// Requests that may go at once (default: a tenth of the minute's).
        #[arg(long)]
        burst: Option<u32>,
        /// Request body bytes per minute.
        #[arg(long)]
        bytes_per_minute: Option<u64>,
        /// Distinct request paths per minute.
        #[arg(long)]
        paths_per_minute: Option<u32>,
        /// Alert when a minute's requests pass this multiple of the
        /// connection's baseline (default: 3 standard deviations above it).
        #[arg(long)]
        spike_multiple: Option<u32>,
        /// Suspend the connection when an alert fires.
        #[arg(long)]
        suspend_on_alert: bool,
    },
    /// The egress trail: which job, step and recipe sent a connection to
    /// which host, per minute (JSON lines).
    Usage {
        /// Connection name.
        name: String,
        /// How far back, like `1h` or `7d`.
        #[arg(long, default_value = "24h")]
        since: humantime::Duration,
    },
    /// Resume a connection an alert suspended.
    Resume {
        /// Connection name.
        name: String,
    },
    /// Remove a connection.
    Rm {
        /// Connection name.
        name: String,
    },
    /// Rotate a connection's value (read like `add`) and/or change its hosts or placement.
    Update {
        /// Connection name.
        name: String,
        /// Replace the hosts (repeatable).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Replace the placement.
        #[arg(long = "apply")]
        apply: Option<String>,
        /// Keep the value; change only hosts or placement.
        #[arg(long)]
        keep_value: bool,
    },
}

#[derive(Debug, Subcommand)]
enum EnvCommand {
    /// Set a property: `wrun env set --env prod github_api=https://api.github.com`.
    Set {
        /// Environment.
        #[arg(long, default_value = "dev")]
        env: String,
        /// NAME=VALUE.
        assignment: String,
    },
    /// Remove a property.
    Unset {
        /// Environment.
        #[arg(long, default_value = "dev")]
        env: String,
        /// Property name.
        name: String,
    },
    /// Bind a recipe's connection name to a stored connection in an environment.
    Bind {
        /// Environment.
        #[arg(long, default_value = "dev")]
        env: String,
        /// The name the recipe uses.
        logical: String,
        /// The stored connection.
        connection: String,
    },
    /// Show an environment's properties and bindings.
    Show {
        /// Environment.
        #[arg(long, default_value = "dev")]
        env: String,
    },
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Create a master key file (mode 0600) and the database.
    Init,
    /// Re-wrap every workspace key under a new master key, in one transaction.
    Rotate {
        /// Where to write the new master key (must not exist).
        #[arg(long)]
        new_key_file: PathBuf,
    },
}

impl Global {
    fn key_source(&self) -> Result<KeySource> {
        if let Some(path) = &self.key_file {
            return Ok(KeySource::File(path.clone()));
        }
        if std::env::var_os("WRUN_MASTER_KEY").is_some() {
            return Ok(KeySource::Env("WRUN_MASTER_KEY".into()));
        }
        bail!(
            "no master key: pass --key-file, set WRUN_KEY_FILE or WRUN_MASTER_KEY (create one with `wrun key init --key-file PATH`)"
        )
    }

    fn key(&self) -> Result<MasterKey> {
        Ok(MasterKey::load(self.key_source()?)?)
    }

    fn store(&self) -> Result<Store> {
        Ok(Store::open(&self.db, OpenMode::MustExist)?)
    }

    /// The database's audited operations, as the daemon uses them: every
    /// change the CLI makes goes through them (see [`crate::ops`]), so it
    /// is stored in the daemon's form and written with its audit entry.
    fn storage(&self) -> Result<Arc<dyn Storage>> {
        // Says clearly when there is no database yet.
        self.store()?;
        let source = self.key_source()?;
        let key = MasterKey::load(source.clone())?;
        Ok(Arc::new(SqliteStorage::open(&self.db, key, Some(source))?))
    }

    fn engine(&self) -> Result<Engine> {
        let cache = match &self.cache_dir {
            Some(dir) => dir.clone(),
            None => default_cache_dir(),
        };
        let mut builder = Engine::builder().cache_dir(cache);
        for path in &self.ca_files {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading CA file {}", path.display()))?;
            builder = builder
                .add_ca_pem(&pem)
                .with_context(|| format!("CA file {}", path.display()))?;
        }
        for range in &self.allow_ranges {
            let net = range.parse().with_context(|| {
                format!("--allow-range `{range}` is not a CIDR range like 127.0.0.0/8")
            })?;
            builder = builder.allow_range(net);
        }
        if !self.resolve.is_empty() {
            let mut resolver = wrun_runtime::egress::StaticResolver::new()
                .fallback(Arc::new(wrun_runtime::egress::SystemResolver));
            for entry in &self.resolve {
                let (host, ip) = entry
                    .split_once('=')
                    .with_context(|| format!("--resolve `{entry}` is not HOST=IP"))?;
                let ip: std::net::IpAddr = ip
                    .parse()
                    .with_context(|| format!("--resolve `{entry}`: `{ip}` is not an IP address"))?;
                resolver = resolver.with(host, [ip]);
            }
            builder = builder.resolver(Arc::new(resolver));
        }
        Ok(builder.build()?)
    }
}

fn default_cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("wrun");
    }
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join(".cache").join("wrun");
    }
    std::env::temp_dir().join("wrun-cache")
}

/// Runs a parsed command line; returns the process exit code.
pub(crate) async fn run(cli: Cli) -> Result<ExitCode> {
    let g = &cli.global;
    match cli.command {
        Command::New { name, dir, lang } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from(&name));
            scaffold::new_recipe(&name, &dir, lang)?;
            output::line(&format!("created recipe `{name}` in {}", dir.display()));
            output::line(&format!(
                "next: wrun build {0}/recipe.toml && wrun check {0}/recipe.toml",
                dir.display()
            ));
            Ok(ExitCode::SUCCESS)
        }
        Command::Build { recipe } => {
            let built = scaffold::build(&recipe)?;
            for (step, path) in built {
                output::line(&format!("built step `{step}` -> {}", path.display()));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { recipe, env } => check(g, &recipe, &env).await,
        Command::Run { recipe, input, env } => run_recipe(g, &recipe, input.as_deref(), &env).await,
        Command::Export {
            recipe,
            output,
            sign,
            bundle_version,
        } => {
            let key = sign
                .as_deref()
                .map(crate::daemon::signing::AuthorKey::load)
                .transpose()?;
            let lock = bundle::export(&recipe, &output, bundle_version, key.as_ref())?;
            if let Some(key) = &key {
                output::line(&format!("signed with {}", key.public()));
            }
            if g.json {
                println!("{}", json!({ "bundle": output, "lock": lock }));
            } else {
                output::line(&format!(
                    "wrote {} ({} components)",
                    output.display(),
                    lock.components.len()
                ));
                output::line(&format!(
                    "it needs connections [{}] and properties [{}] bound where it is imported",
                    lock.connections.join(", "),
                    lock.properties.join(", ")
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Import {
            bundle: path,
            into,
            env,
        } => import(g, &path, into, &env).await,
        Command::Connection(cmd) => connection(g, cmd).await,
        Command::Env(cmd) => env_command(g, cmd).await,
        Command::Key(cmd) => key_command(g, cmd),
        Command::Serve { config } => {
            let config = crate::daemon::config::DaemonConfig::load(config.as_deref())?;
            let key = g.key()?;
            let source = g.key_source().ok();
            crate::daemon::serve(config, &g.db, key, source, g.engine()?).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token(cmd) => token_command(g, cmd).await,
        Command::Member(cmd) => member_command(g, cmd).await,
        Command::Audit(cmd) => audit_command(g, cmd),
        Command::Jobs(cmd) => jobs_command(g, cmd).await,
        Command::SigningKey(cmd) => signing_key_command(g, cmd).await,
    }
}

impl Cli {
    /// Whether the command is `serve` (which logs errors by default).
    pub(crate) fn is_serve(&self) -> bool {
        matches!(self.command, Command::Serve { .. })
    }
}

async fn token_command(g: &Global, cmd: TokenCommand) -> Result<ExitCode> {
    use crate::daemon::admin;
    match cmd {
        TokenCommand::Create {
            name,
            owner,
            scopes,
            expires_in,
            max_lifetime,
            allow_ips,
        } => {
            let (id, token, expires_at) = admin::create_token(
                g.storage()?.as_ref(),
                &admin::TokenRequest {
                    workspace: &g.workspace,
                    name: &name,
                    owner: &owner,
                    scopes: &scopes,
                    expires_in: expires_in.into(),
                    max_lifetime: max_lifetime.into(),
                    allow_ips: &allow_ips,
                },
            )
            .await?;
            if g.json {
                output::json(
                    &json!({ "id": id, "token": token.as_str(), "expires_at": expires_at }),
                );
            } else {
                println!("{}", token.as_str());
                eprintln!("token {id} created; it is shown only this once");
            }
        }
        TokenCommand::List => {
            let tokens = admin::list_tokens(g.storage()?.as_ref(), &g.workspace).await?;
            if g.json {
                output::json(&json!({ "tokens": tokens }));
            } else {
                for t in tokens {
                    let state = if t.revoked_at.is_some() {
                        "revoked"
                    } else if t.expires_at <= wrun_store::UnixMillis::now() {
                        "expired"
                    } else {
                        "active"
                    };
                    println!(
                        "{}  {}  owner={}  scopes={}  expires={}  {}",
                        t.id,
                        t.name,
                        t.owner,
                        t.scopes.join(","),
                        t.expires_at.rfc3339(),
                        state
                    );
                }
            }
        }
        TokenCommand::Revoke { id } => {
            admin::revoke_token(g.storage()?.as_ref(), &g.workspace, &id).await?;
            eprintln!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn member_command(g: &Global, cmd: MemberCommand) -> Result<ExitCode> {
    use crate::daemon::admin;
    match cmd {
        MemberCommand::Set { subject, role } => {
            Store::open(&g.db, OpenMode::CreateIfMissing)?;
            admin::set_member(g.storage()?.as_ref(), &g.workspace, &subject, &role).await?;
            eprintln!("{subject} is now {role} in workspace {}", g.workspace);
        }
        MemberCommand::Rm { subject } => {
            admin::remove_member(g.storage()?.as_ref(), &g.workspace, &subject).await?;
            eprintln!("{subject} removed from workspace {}", g.workspace);
        }
        MemberCommand::List => {
            for (subject, role) in admin::list_members(g.storage()?.as_ref(), &g.workspace).await? {
                println!("{subject}  {role}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn signing_key_command(g: &Global, cmd: SigningKeyCommand) -> Result<ExitCode> {
    use crate::daemon::signing::AuthorKey;
    match cmd {
        SigningKeyCommand::New { out } => {
            let key = AuthorKey::generate();
            key.write_new(&out)?;
            eprintln!(
                "wrote signing key {} (keep it secret; trust the public key below)",
                out.display()
            );
            println!("{}", key.public());
        }
        SigningKeyCommand::Trust { name, public_key } => {
            let key = ops::trust_signing_key(
                g.storage()?.as_ref(),
                &ops::Actor::cli(&g.workspace),
                &name,
                &public_key,
            )
            .await?;
            eprintln!("workspace {} trusts key `{name}` ({})", g.workspace, key.id);
        }
        SigningKeyCommand::Revoke { name } => {
            let revoked = ops::revoke_signing_key(
                g.storage()?.as_ref(),
                &ops::Actor::cli(&g.workspace),
                &name,
            )
            .await?;
            ensure!(
                revoked,
                "no trusted signing key `{name}` in workspace {}",
                g.workspace
            );
            eprintln!("signing key `{name}` revoked in workspace {}", g.workspace);
        }
        SigningKeyCommand::Require {
            signatures,
            grant_review,
        } => {
            let settings = crate::daemon::storage::Governance {
                require_signatures: signatures,
                review_grants: grant_review,
            };
            ops::set_governance(
                g.storage()?.as_ref(),
                &ops::Actor::cli(&g.workspace),
                settings,
            )
            .await?;
            eprintln!(
                "workspace {}: signatures required {signatures}, grant review {grant_review}",
                g.workspace
            );
        }
        SigningKeyCommand::List => {
            for k in g.storage()?.signing_keys(&g.workspace).await? {
                let state = if k.revoked_at.is_some() {
                    "revoked"
                } else {
                    "trusted"
                };
                println!("{}  {}  {}  {state}", k.name, k.id, k.public_key);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn jobs_command(g: &Global, cmd: JobsCommand) -> Result<ExitCode> {
    match cmd {
        JobsCommand::Erase {
            subject,
            reference,
            dry_run,
        } => {
            let subject = match subject {
                Some(s) => zeroize::Zeroizing::new(s),
                None => {
                    let mut line = zeroize::Zeroizing::new(String::new());
                    std::io::stdin()
                        .read_line(&mut line)
                        .context("reading the subject from stdin")?;
                    line
                }
            };
            let report = crate::daemon::ops::erase_subject(
                g.storage()?.as_ref(),
                &crate::daemon::ops::Actor::cli(&g.workspace),
                subject.trim(),
                reference.as_deref(),
                dry_run,
            )
            .await?;
            output::json(&serde_json::json!(report));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn audit_command(g: &Global, cmd: AuditCommand) -> Result<ExitCode> {
    use crate::daemon::admin;
    let store = g.store()?;
    match cmd {
        AuditCommand::Verify => {
            let report = admin::verify_audit(&store, &g.key()?)?;
            if g.json {
                output::json(&json!({
                    "entries": report.entries,
                    "intact": report.is_intact(),
                    "problems": report.problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
                }));
            } else {
                println!("{report}");
            }
            Ok(if report.is_intact() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        AuditCommand::Stream {
            after,
            follow,
            only_workspace,
        } => {
            let mut out = std::io::stdout().lock();
            admin::stream_audit(&store, &mut out, after, only_workspace.as_deref(), follow)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Reads a connection value from stdin, or prompts for it without echo.
/// Whether it is long and strong enough is checked by the operation that
/// stores it ([`ops::put_connection`]).
pub(crate) fn read_secret_value(name: &str) -> Result<Zeroizing<String>> {
    let value = if std::io::stdin().is_terminal() {
        Zeroizing::new(
            rpassword::prompt_password(format!("value of connection `{name}`: "))
                .context("reading the value")?,
        )
    } else {
        let mut buf = Zeroizing::new(String::new());
        std::io::stdin()
            .take(1 << 20)
            .read_to_string(&mut buf)
            .context("reading the value from stdin")?;
        buf
    };
    let value = Zeroizing::new(value.trim_end_matches(['\n', '\r']).to_string());
    ensure!(
        !value.is_empty(),
        "the value of connection `{name}` is empty"
    );
    Ok(value)
}

async fn connection(g: &Global, cmd: ConnectionCommand) -> Result<ExitCode> {
    let store = g.store()?;
    let actor = ops::Actor::cli(&g.workspace);
    match cmd {
        ConnectionCommand::Add {
            name,
            hosts,
            apply,
            oauth,
        } if oauth.grant.is_some() => {
            let storage = g.storage()?;
            let engine = g.engine()?;
            crate::oauth_cli::add(&storage, &engine, &actor, &name, &hosts, &apply, oauth).await?;
        }
        ConnectionCommand::Authorize { name } => {
            let storage = g.storage()?;
            let engine = g.engine()?;
            crate::oauth_cli::authorize(&storage, &engine, &actor, &name).await?;
        }
        ConnectionCommand::Add {
            name, hosts, apply, ..
        } => {
            // Checked before the value is asked for; the store refuses a
            // name that exists in the same transaction as the write.
            ops::check_connection_target(&name, &hosts, &apply)?;
            ensure!(
                !store
                    .list_connections(&g.workspace)?
                    .iter()
                    .any(|c| c.name == name),
                "connection `{name}` already exists in workspace `{}`; use `wrun connection update`",
                g.workspace
            );
            let storage = g.storage()?;
            let value = read_secret_value(&name)?;
            ops::put_connection(
                storage.as_ref(),
                &actor,
                &name,
                &hosts,
                &apply,
                ops::ValueChange::Create(value),
            )
            .await?;
            output::line(&format!(
                "added connection `{name}` in workspace `{}`",
                g.workspace
            ));
        }
        ConnectionCommand::Limit {
            name,
            requests_per_minute,
            burst,
            bytes_per_minute,
            paths_per_minute,
            spike_multiple,
            suspend_on_alert,
        } => {
            let limits = crate::daemon::storage::ConnectionLimits {
                requests_per_minute,
                burst,
                bytes_per_minute,
                paths_per_minute,
                spike_multiple,
                suspend_on_alert,
            };
            ops::set_connection_limits(
                g.storage()?.as_ref(),
                &ops::Actor::cli(&g.workspace),
                &name,
                limits,
            )
            .await?;
            output::line(&format!(
                "connection `{name}` limits: {}",
                serde_json::to_string(&limits)?
            ));
        }
        ConnectionCommand::Usage { name, since } => {
            let now = wrun_store::UnixMillis::now();
            let back = i64::try_from(since.as_millis()).unwrap_or(i64::MAX);
            let rows = g
                .storage()?
                .connection_usage(
                    &g.workspace,
                    Some(&name),
                    wrun_store::UnixMillis(now.0.saturating_sub(back)),
                    wrun_store::UnixMillis(now.0 + 60_000),
                    usize::MAX >> 1,
                )
                .await?;
            for row in rows {
                println!("{}", serde_json::to_string(&row)?);
            }
        }
        ConnectionCommand::Resume { name } => {
            let resumed = ops::resume_connection(
                g.storage()?.as_ref(),
                &ops::Actor::cli(&g.workspace),
                &name,
            )
            .await?;
            ensure!(
                resumed,
                "connection `{name}` is not suspended in workspace {}",
                g.workspace
            );
            output::line(&format!("connection `{name}` resumed"));
        }
        ConnectionCommand::List => {
            let list = store.list_connections(&g.workspace)?;
            if g.json {
                let rows: Vec<Value> = list
                    .iter()
                    .map(|c| {
                        json!({ "name": c.name, "hosts": c.hosts, "placement": c.placement,
                                "created_at": c.created_at, "rotated_at": c.rotated_at,
                                "oauth2": c.oauth2 })
                    })
                    .collect();
                println!("{}", Value::Array(rows));
            } else if list.is_empty() {
                output::line(&format!("no connections in workspace `{}`", g.workspace));
            } else {
                for c in list {
                    output::line(&format!(
                        "{:<24} {:<40} {:<34} created {}{}{}",
                        c.name,
                        c.hosts
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(","),
                        c.placement,
                        c.created_at.rfc3339(),
                        c.rotated_at
                            .map(|t| format!(", rotated {}", t.rfc3339()))
                            .unwrap_or_default(),
                        c.oauth2
                            .map(|state| format!(", oauth2 {}", state.as_str()))
                            .unwrap_or_default()
                    ));
                }
            }
        }
        ConnectionCommand::Rm { name } => {
            let storage = g.storage()?;
            ensure!(
                ops::delete_connection(storage.as_ref(), &actor, &name).await?,
                "no connection `{name}` in workspace `{}`",
                g.workspace
            );
            output::line(&format!("removed connection `{name}`"));
        }
        ConnectionCommand::Update {
            name,
            hosts,
            apply,
            keep_value,
        } => {
            let current = store
                .list_connections(&g.workspace)?
                .into_iter()
                .find(|c| c.name == name)
                .with_context(|| {
                    format!("no connection `{name}` in workspace `{}`", g.workspace)
                })?;
            let hosts = if hosts.is_empty() {
                current.hosts.iter().map(ToString::to_string).collect()
            } else {
                hosts
            };
            let placement = apply.unwrap_or_else(|| current.placement.to_string());
            ops::check_connection_target(&name, &hosts, &placement)?;
            let storage = g.storage()?;
            let value = if keep_value {
                ops::ValueChange::Keep
            } else {
                ops::ValueChange::Replace(read_secret_value(&name)?)
            };
            ops::put_connection(storage.as_ref(), &actor, &name, &hosts, &placement, value).await?;
            output::line(&format!("updated connection `{name}`"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn env_command(g: &Global, cmd: EnvCommand) -> Result<ExitCode> {
    let store = g.store()?;
    let actor = ops::Actor::cli(&g.workspace);
    match cmd {
        EnvCommand::Set { env, assignment } => {
            let (name, value) = assignment
                .split_once('=')
                .with_context(|| format!("`{assignment}` is not NAME=VALUE"))?;
            let change = EnvChange::SetProperty(name.into(), value.into());
            ops::change_environment(g.storage()?.as_ref(), &actor, &env, change).await?;
            output::line(&format!("set `{name}` in environment `{env}`"));
        }
        EnvCommand::Unset { env, name } => {
            let change = EnvChange::RemoveProperty(name.clone());
            ops::change_environment(g.storage()?.as_ref(), &actor, &env, change).await?;
            output::line(&format!("removed `{name}` from environment `{env}`"));
        }
        EnvCommand::Bind {
            env,
            logical,
            connection,
        } => {
            let change = EnvChange::Bind(logical.clone(), connection.clone());
            ops::change_environment(g.storage()?.as_ref(), &actor, &env, change).await?;
            output::line(&format!(
                "`{logical}` -> connection `{connection}` in environment `{env}`"
            ));
        }
        EnvCommand::Show { env } => {
            let view = store.environment(&g.workspace, &env)?;
            let (properties, bindings) = (view.properties, view.bindings);
            if g.json {
                println!(
                    "{}",
                    json!({ "environment": env, "properties": properties, "bindings": bindings })
                );
            } else {
                output::line(&format!(
                    "environment `{env}` of workspace `{}`",
                    g.workspace
                ));
                for (k, v) in properties {
                    output::line(&format!("  property {k} = {v}"));
                }
                for (k, v) in bindings {
                    output::line(&format!("  binding  {k} -> {v}"));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn key_command(g: &Global, cmd: KeyCommand) -> Result<ExitCode> {
    match cmd {
        KeyCommand::Init => {
            let path = g.key_file.clone().context(
                "pass --key-file PATH (or set WRUN_KEY_FILE) to say where the new key goes",
            )?;
            let key = MasterKey::generate();
            crate::keys::write_key_file(&path, &key)?;
            let store = Store::open(&g.db, OpenMode::CreateIfMissing)?;
            store.ensure_workspace(&g.workspace, &key)?;
            output::line(&format!(
                "master key written to {} (fingerprint {}); database {}",
                path.display(),
                key.fingerprint(),
                g.db.display()
            ));
            output::line(
                "keep the key file out of the database's backups: whoever has both can read every connection",
            );
        }
        KeyCommand::Rotate { new_key_file } => {
            let store = g.store()?;
            let old = g.key()?;
            let new = MasterKey::generate();
            crate::keys::write_key_file(&new_key_file, &new)?;
            let audit = ops::Actor::cli(&g.workspace).entry_for_all_workspaces(
                "key.rotate",
                "master-key",
                json!({ "from": old.fingerprint(), "to": new.fingerprint() }),
            );
            match store.rotate_master_key(&old, &new, &audit) {
                Ok(n) => output::line(&format!(
                    "re-wrapped {n} workspace keys; the database now needs {} (fingerprint {})",
                    new_key_file.display(),
                    new.fingerprint()
                )),
                Err(e) => {
                    let _ = std::fs::remove_file(&new_key_file);
                    return Err(e.into());
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What a recipe needs from a workspace environment, and what is missing.
struct Bindings {
    missing_connections: Vec<String>,
    missing_properties: Vec<String>,
    properties: BTreeMap<String, String>,
}

fn bindings_of(
    store: &Store,
    workspace: &str,
    env: &str,
    manifest: &wrun_runtime::manifest::Manifest,
) -> Result<Bindings> {
    let stored: Vec<String> = store
        .list_connections(workspace)?
        .into_iter()
        .map(|c| c.name)
        .collect();
    let view = store.environment(workspace, env)?;
    let mut missing_connections = Vec::new();
    for logical in manifest.connections() {
        // Its binding, or the same name (as a run resolves it).
        let target = view.bindings.get(&logical).unwrap_or(&logical).clone();
        if !stored.contains(&target) {
            missing_connections.push(if target == logical {
                logical
            } else {
                format!("{logical} (bound to `{target}`, which does not exist)")
            });
        }
    }
    let properties = view.properties;
    let missing_properties = manifest
        .properties()
        .into_iter()
        .filter(|p| !properties.contains_key(p))
        .collect();
    Ok(Bindings {
        missing_connections,
        missing_properties,
        properties,
    })
}

async fn check(g: &Global, path: &Path, env: &str) -> Result<ExitCode> {
    let mut problems = Vec::new();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading recipe {}", path.display()))?;
    let manifest = match wrun_runtime::manifest::Manifest::parse(&text) {
        Ok(m) => m,
        Err(errors) => {
            for e in errors.0 {
                problems.push(format!("{}: {e}", path.display()));
            }
            return report_problems(g, path, problems);
        }
    };
    if let Err(e) = bundle::verify_dir(path) {
        problems.push(format!("{e:#}"));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    let engine = g.engine()?;
    match Recipe::load(&engine, manifest.clone(), |p| std::fs::read(base.join(p))) {
        Ok(recipe) => {
            let job = engine.job(JobOptions::new(&g.workspace, &manifest.recipe.name));
            for (spec, step) in recipe.steps() {
                match job.actions(step).await {
                    Ok(names) if !names.contains(&spec.action) => problems.push(format!(
                        "steps.{}: component {} has no action `{}` (it exports: {})",
                        spec.name,
                        spec.component.display(),
                        spec.action,
                        names.join(", ")
                    )),
                    Ok(_) => {}
                    Err(e) => problems.push(format!("steps.{}: {e}", spec.name)),
                }
            }
        }
        Err(errors) => {
            for e in errors.0 {
                problems.push(e.to_string());
            }
        }
    }
    match g.store() {
        Ok(store) => {
            let b = bindings_of(&store, &g.workspace, env, &manifest)?;
            for c in b.missing_connections {
                problems.push(format!(
                    "connection `{c}` is not available in workspace `{}` (environment `{env}`): add it with `wrun connection add` or bind it with `wrun env bind`",
                    g.workspace
                ));
            }
            for p in b.missing_properties {
                problems.push(format!("property `{p}` is not set in environment `{env}`: `wrun env set --env {env} {p}=...`"));
            }
        }
        Err(e) => problems.push(format!("{e:#}")),
    }
    report_problems(g, path, problems)
}

fn report_problems(g: &Global, path: &Path, problems: Vec<String>) -> Result<ExitCode> {
    if g.json {
        println!(
            "{}",
            json!({ "recipe": path, "ok": problems.is_empty(), "problems": problems })
        );
    } else if problems.is_empty() {
        output::line(&format!("{}: {}", path.display(), output::ok()));
    } else {
        for p in &problems {
            output::error(p);
        }
        output::line(&format!(
            "{}: {} problem(s)",
            path.display(),
            problems.len()
        ));
    }
    Ok(if problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn run_recipe(g: &Global, path: &Path, input: Option<&Path>, env: &str) -> Result<ExitCode> {
    let manifest = bundle::read_manifest(path)?;
    bundle::verify_dir(path)?;
    let trigger: Value = match input {
        None => json!({}),
        Some(p) if p == Path::new("-") => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            serde_json::from_str(&text).context("the input on stdin is not JSON")?
        }
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading input {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", p.display()))?
        }
    };
    let store = g.store()?;
    let b = bindings_of(&store, &g.workspace, env, &manifest)?;
    if !b.missing_connections.is_empty() || !b.missing_properties.is_empty() {
        let mut message = format!(
            "recipe `{}` cannot run in workspace `{}`, environment `{env}` until these are bound:",
            manifest.recipe.name, g.workspace
        );
        for c in &b.missing_connections {
            message.push_str(&format!("\n  connection {c}"));
        }
        for p in &b.missing_properties {
            message.push_str(&format!("\n  property {p}"));
        }
        bail!(message);
    }
    let key = g.key()?;
    store.check_key(&key)?;
    let engine = g.engine()?;
    let base = path.parent().unwrap_or(Path::new("."));
    let recipe = Recipe::load(&engine, manifest.clone(), |p| std::fs::read(base.join(p)))
        .map_err(|e| anyhow::anyhow!("recipe `{}` cannot be loaded:\n{e}", manifest.recipe.name))?;
    drop(store);
    // The daemon's reading of connections, OAuth2 refreshes included.
    let storage = g.storage()?;
    storage.enable_oauth(Arc::new(Refresher::new(engine.token_client())));
    let mut options = JobOptions::new(&g.workspace, &manifest.recipe.name)
        .connections(storage.connections(&g.workspace, env));
    for (k, v) in b.properties {
        options = options.property(k, v);
    }
    let job = engine.job(options);
    let total = recipe.manifest().steps.len();
    let mut index = 0;
    let json_mode = g.json;
    let report: RunReport = recipe
        .run(&job, &trigger, |record| {
            index += 1;
            if !json_mode {
                print_step(index, total, record);
            }
        })
        .await;
    if g.json {
        let mut value = serde_json::to_value(&report)?;
        if let Some((hits, misses)) = engine.cache_stats() {
            value["compile_cache"] = json!({ "hits": hits, "misses": misses });
        }
        println!("{value}");
    } else {
        let status = if report.ok {
            output::ok()
        } else {
            output::failed()
        };
        output::line(&format!(
            "recipe `{}` {status} in {:.1?} (job {})",
            report.recipe, report.elapsed, report.job
        ));
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_step(index: usize, total: usize, record: &StepRecord) {
    let status = match record.status {
        StepStatus::Succeeded => output::ok(),
        StepStatus::Skipped => output::skipped(),
        StepStatus::Failed => output::failed(),
    };
    let attempts = if record.attempts > 1 {
        format!(" after {} attempts", record.attempts)
    } else {
        String::new()
    };
    output::line(&format!(
        "[{index}/{total}] {} {status}{attempts} {}",
        record.step,
        output::dim(&format!("{:.1?}", record.elapsed))
    ));
    for event in &record.events {
        if let wrun_runtime::Event::Log {
            level,
            source,
            message,
            ..
        } = event
        {
            let origin = format!("{source:?}/{level:?}").to_lowercase();
            output::line(&output::dim(&format!("      {origin}: {message}")));
        }
    }
    if let Some(out) = &record.output {
        output::line(&format!("      output: {out}"));
    }
    if let Some(err) = &record.error {
        output::line(&format!("      error: {err}"));
    }
}

/// Prints what each step of an imported version may do and what changed.
fn show_review(deployment: &ops::Deployment) {
    let review = deployment.review();
    output::line("what each step may do:");
    for (step, g) in &review.steps {
        let list = |set: &std::collections::BTreeSet<String>| {
            if set.is_empty() {
                "-".to_string()
            } else {
                set.iter().cloned().collect::<Vec<_>>().join(", ")
            }
        };
        let widened = review.changes.get(step).is_some_and(|c| c.widens);
        output::line(&format!(
            "  {step}{}: hosts {}; secrets {}; properties {}; memory {}; time {}",
            if widened { " (widened)" } else { "" },
            list(&g.hosts),
            list(&g.secrets),
            list(&g.properties),
            g.memory
                .map_or("default".into(), |m| format!("{} MiB", m >> 20)),
            g.timeout_ms.map_or("default".into(), |t| format!("{t} ms")),
        ));
    }
    if let ops::Deployment::Pending { id, .. } = deployment {
        output::warn(&format!(
            "this version widens grants: it waits for an admin's approval (pending {id}); the deployed version keeps running"
        ));
    }
}

async fn import(g: &Global, path: &Path, into: Option<PathBuf>, env: &str) -> Result<ExitCode> {
    let staging = into
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!(".wrun-import-{}", std::process::id())));
    let (manifest, lock) = bundle::import(path, &staging)?;
    let dir = match into {
        Some(dir) => dir,
        None => {
            let dir = PathBuf::from(&manifest.recipe.name);
            ensure!(
                !dir.exists(),
                "{} already exists; choose a directory with --into",
                dir.display()
            );
            std::fs::rename(&staging, &dir)?;
            dir
        }
    };
    // Deployed exactly as `PUT /v1/workspaces/{ws}/recipes/{name}` deploys
    // it: checked, compiled, stored with its components, audited.
    let store = g.store()?;
    let bundle =
        std::fs::read(path).with_context(|| format!("reading bundle {}", path.display()))?;
    let deployment = ops::deploy_recipe(
        g.storage()?.as_ref(),
        g.engine()?,
        &ops::Actor::cli(&g.workspace),
        Some(&manifest.recipe.name),
        bundle,
    )
    .await?;
    if !g.json {
        show_review(&deployment);
    }
    let b = bindings_of(&store, &g.workspace, env, &manifest)?;
    if g.json {
        println!(
            "{}",
            json!({ "recipe": manifest.recipe.name, "dir": dir, "connections": lock.connections,
                    "properties": lock.properties, "missing_connections": b.missing_connections,
                    "missing_properties": b.missing_properties, "review": deployment.review(),
                    "pending": match &deployment { ops::Deployment::Pending { id, .. } => Some(id), _ => None } })
        );
    } else {
        output::line(&format!(
            "imported recipe `{}` into {} (components verified)",
            manifest.recipe.name,
            dir.display()
        ));
        if b.missing_connections.is_empty() && b.missing_properties.is_empty() {
            output::line(&format!(
                "everything it needs is bound in environment `{env}`"
            ));
        } else {
            output::warn(&format!("before it can run in environment `{env}`, bind:"));
            for c in &b.missing_connections {
                output::line(&format!(
                    "  connection {c}   (wrun connection add {c} ... or wrun env bind --env {env} {c} EXISTING)"
                ));
            }
            for p in &b.missing_properties {
                output::line(&format!(
                    "  property {p}     (wrun env set --env {env} {p}=...)"
                ));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

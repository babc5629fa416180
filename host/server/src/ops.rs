//! The changes of data that both the API and the CLI make, in one place:
//! each checks its input, builds its audit entry and calls the one storage
//! operation that writes the change and the entry in the same transaction.
//!
//! A handler or a command only says who acts ([`Actor`]) and maps the
//! result to its own output; it never builds a change of its own, so a
//! recipe deployed or a connection written from the shell is stored in the
//! same form, checked by the same rules and audited like one from the API.

use std::collections::BTreeMap;

use serde_json::json;
use wrun_runtime::policy::NetGrant;
use wrun_runtime::{Engine, Placement};
use zeroize::Zeroizing;

use crate::audit::{Entry, Outcome};
use crate::bundle::Lock;
use crate::review::Review;
use crate::storage::{
    ConnectionWrite, EnvChange, Governance, RecipeVersion, Storage, StorageError, StorageResult,
};

/// Who makes a change, as its audit entry names them.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The workspace acted in.
    pub workspace: String,
    /// A member's subject, or `cli:<user>` for the local command line.
    pub name: String,
    /// The client address, or `local` for the command line.
    pub source: String,
}

impl Actor {
    /// The local user of the command line, acting in `workspace`.
    pub fn cli(workspace: &str) -> Actor {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("USERNAME"))
            .unwrap_or_else(|_| "unknown".into());
        Actor {
            workspace: workspace.into(),
            name: format!("cli:{user}"),
            source: "local".into(),
        }
    }

    /// A successful action's audit entry for the whole database rather
    /// than one workspace (a master-key rotation).
    pub fn entry_for_all_workspaces(
        &self,
        action: &str,
        target: impl Into<String>,
        detail: serde_json::Value,
    ) -> Entry {
        Entry {
            workspace: None,
            ..self.entry(action, target, detail)
        }
    }

    /// A successful action's audit entry.
    pub fn entry(
        &self,
        action: &str,
        target: impl Into<String>,
        detail: serde_json::Value,
    ) -> Entry {
        Entry {
            workspace: Some(self.workspace.clone()),
            actor: self.name.clone(),
            action: action.into(),
            target: target.into(),
            source: Some(self.source.clone()),
            outcome: Outcome::Success,
            detail,
        }
    }
}

/// A refusal of the input, with a stable code for API clients.
fn invalid(code: &'static str, message: impl Into<String>) -> StorageError {
    StorageError::Invalid {
        code,
        message: message.into(),
    }
}

/// Parses where a connection may go and how it is applied, with the
/// runtime's own parsers: at least one host pattern, none covering a public
/// suffix, and a valid placement. The CLI calls it before asking for the
/// value; [`put_connection`] calls it for every write.
///
/// # Errors
///
/// [`StorageError::Invalid`] naming the host or placement that is wrong.
pub fn check_connection_target(
    name: &str,
    hosts: &[String],
    placement: &str,
) -> StorageResult<(NetGrant, Placement)> {
    let placement = placement
        .parse()
        .map_err(|e: wrun_runtime::ConnectionError| invalid("invalid_placement", e.to_string()))?;
    let grant = NetGrant::parse_for_connection(hosts)
        .map_err(|e| invalid("invalid_host", format!("connection `{name}`: hosts: {e}")))?;
    if grant.is_empty() {
        return Err(invalid(
            "invalid_host",
            format!("connection `{name}` needs at least one host"),
        ));
    }
    Ok((grant, placement))
}

/// What a connection write does with the value.
pub enum ValueChange {
    /// A new connection with this value; refused if the name is taken.
    Create(Zeroizing<String>),
    /// A new value for an existing connection.
    Replace(Zeroizing<String>),
    /// This value, whether the connection exists or not.
    Put(Zeroizing<String>),
    /// The stored value, re-sealed inside the store for the new hosts and
    /// placement (it never leaves the store).
    Keep,
}

/// Writes a connection: the hosts and placement are parsed with the
/// runtime's parsers, a new value is checked for length here and for
/// strength by the store, and the change is audited with the normalised
/// hosts and placement (never the value).
///
/// # Errors
///
/// [`StorageError::Invalid`] for a bad name, host pattern (including one
/// that covers a public suffix), placement, or a value that is empty, too
/// short to be masked or too easy to guess; [`StorageError::Conflict`] when
/// creating a name that exists; [`StorageError::NotFound`] when replacing
/// or keeping the value of one that does not; storage failures.
pub async fn put_connection(
    storage: &dyn Storage,
    actor: &Actor,
    name: &str,
    hosts: &[String],
    placement: &str,
    value: ValueChange,
) -> StorageResult<()> {
    let (grant, placement) = check_connection_target(name, hosts, placement)?;
    let connection = |value: Zeroizing<String>| {
        if value.len() < wrun_runtime::mask::MIN_VALUE_LEN {
            return Err(invalid(
                "weak_connection_value",
                format!(
                    "the value of connection `{name}` is shorter than {} bytes, too short to be masked reliably",
                    wrun_runtime::mask::MIN_VALUE_LEN
                ),
            ));
        }
        wrun_runtime::Connection::new(
            name,
            wrun_runtime::SecretValue::new(value.as_str()),
            hosts,
            placement.clone(),
        )
        .map_err(|e| invalid("invalid_connection", e.to_string()))
    };
    let write = match value {
        ValueChange::Create(v) => ConnectionWrite::Create(connection(v)?),
        ValueChange::Replace(v) => ConnectionWrite::Replace(connection(v)?),
        ValueChange::Put(v) => ConnectionWrite::Put(connection(v)?),
        ValueChange::Keep => ConnectionWrite::Retarget {
            name: name.to_string(),
            hosts: grant.clone(),
            placement: placement.clone(),
        },
    };
    let shown_hosts: Vec<String> = grant.patterns().iter().map(ToString::to_string).collect();
    let audit = actor.entry(
        "connection.put",
        format!("connection:{name}"),
        json!({ "hosts": shown_hosts, "placement": placement.to_string() }),
    );
    storage.put_connection(&actor.workspace, write, audit).await
}

/// Removes a connection; `false` if there is none (nothing is audited).
///
/// # Errors
///
/// Storage failures.
pub async fn delete_connection(
    storage: &dyn Storage,
    actor: &Actor,
    name: &str,
) -> StorageResult<bool> {
    let audit = actor.entry("connection.delete", format!("connection:{name}"), json!({}));
    storage
        .delete_connection(&actor.workspace, name, audit)
        .await
}

/// Sets or removes a property, or binds or unbinds a connection, in one
/// environment.
///
/// # Errors
///
/// Invalid names (from the storage); storage failures.
pub async fn change_environment(
    storage: &dyn Storage,
    actor: &Actor,
    environment: &str,
    change: EnvChange,
) -> StorageResult<()> {
    let (action, target) = match &change {
        EnvChange::SetProperty(n, _) => ("environment.property.set", n),
        EnvChange::RemoveProperty(n) => ("environment.property.remove", n),
        EnvChange::Bind(n, _) => ("environment.bind", n),
        EnvChange::Unbind(n) => ("environment.unbind", n),
    };
    let detail = match &change {
        EnvChange::Bind(_, c) => json!({ "connection": c }),
        _ => json!({}),
    };
    let audit = actor.entry(
        action,
        format!("environment:{environment}/{target}"),
        detail,
    );
    storage
        .change_environment(&actor.workspace, environment, change, audit)
        .await
}

/// What a deployment did.
#[derive(Debug, Clone)]
pub enum Deployment {
    /// The version runs from now on.
    Running {
        /// The bundle's lock.
        lock: Lock,
        /// What each step may do, and what changed.
        review: Review,
    },
    /// The version widens grants and waits for an admin's approval; the
    /// deployed version keeps running.
    Pending {
        /// The bundle's lock.
        lock: Lock,
        /// What each step may do, and what widens.
        review: Review,
        /// The id an approval names.
        id: String,
    },
}

impl Deployment {
    /// The lock.
    pub fn lock(&self) -> &Lock {
        match self {
            Deployment::Running { lock, .. } | Deployment::Pending { lock, .. } => lock,
        }
    }

    /// The review.
    pub fn review(&self) -> &Review {
        match self {
            Deployment::Running { review, .. } | Deployment::Pending { review, .. } => review,
        }
    }
}

/// Checks a bundle's signature against the workspace's keys: returns the
/// signed version and the signer's id, `None` for an unsigned bundle the
/// workspace accepts.
async fn check_signature(
    storage: &dyn Storage,
    workspace: &str,
    governance: Governance,
    lock: &Lock,
    entries: &BTreeMap<String, Vec<u8>>,
) -> StorageResult<Option<(u64, String)>> {
    let Some(sig) = entries.get(crate::bundle::SIGNATURE_ENTRY) else {
        if governance.require_signatures {
            return Err(invalid(
                "signature_required",
                "this workspace deploys only signed bundles (`wrun export --sign KEY`)",
            ));
        }
        return Ok(None);
    };
    let refuse = |e: anyhow::Error| invalid("invalid_signature", format!("{e:#}"));
    let sig: crate::signing::BundleSignature = serde_json::from_slice(sig).map_err(|e| {
        invalid(
            "invalid_signature",
            format!("the bundle's signature entry is invalid: {e}"),
        )
    })?;
    let key = crate::signing::PublicKey::parse(&sig.key).map_err(refuse)?;
    let trusted = storage
        .signing_keys(workspace)
        .await?
        .into_iter()
        .find(|k| k.id == key.id);
    match trusted {
        None => {
            return Err(invalid(
                "untrusted_key",
                format!(
                    "the bundle is signed by key {}, which this workspace does not trust",
                    key.id
                ),
            ));
        }
        Some(k) if k.revoked_at.is_some() => {
            return Err(invalid(
                "revoked_key",
                format!(
                    "the bundle is signed by key `{}` ({}), which this workspace revoked",
                    k.name, k.id
                ),
            ));
        }
        Some(_) => {}
    }
    let lock_bytes = entries
        .get(crate::bundle::LOCK_ENTRY)
        .ok_or_else(|| invalid("invalid_bundle", "the bundle has no lock"))?;
    key.verify(lock_bytes, &sig).map_err(refuse)?;
    let version = lock
        .version
        .ok_or_else(|| invalid("invalid_signature", "a signed lock must carry a version"))?;
    Ok(Some((version, key.id)))
}

/// Deploys a recipe bundle: verified (hashes, and the signature against
/// the workspace's trusted keys; unsigned bundles are refused when the
/// workspace requires signatures), compiled, reviewed against the version
/// running now, then stored with its audit entry; or, when the workspace
/// reviews grants and this version widens any, kept for an admin's
/// approval while the running version goes on. A refused signature or
/// downgrade is audited as denied.
///
/// # Errors
///
/// [`StorageError::Invalid`] for a bundle that is not valid, holds another
/// recipe than `expected`, does not load, or whose signature is missing,
/// untrusted, revoked or does not verify; [`StorageError::Conflict`] for a
/// downgrade; storage failures.
pub async fn deploy_recipe(
    storage: &dyn Storage,
    engine: Engine,
    actor: &Actor,
    expected: Option<&str>,
    bundle: Vec<u8>,
) -> StorageResult<Deployment> {
    let parsed = tokio::task::spawn_blocking(move || {
        crate::bundle::read(&bundle[..], "the bundle").map_err(|e| format!("{e:#}"))
    })
    .await
    .map_err(|e| StorageError::Internal(format!("reading the bundle failed: {e}")))?;
    let (manifest, lock, entries) = match parsed {
        Ok(parsed) => parsed,
        Err(e) => {
            // A bundle altered on its way is a security event, not only bad
            // input.
            let e = invalid("invalid_bundle", e);
            refused_deploy(storage, actor, expected.unwrap_or("?"), &e).await;
            return Err(e);
        }
    };
    let name = manifest.recipe.name.clone();
    if let Some(expected) = expected
        && expected != name
    {
        return Err(invalid(
            "name_mismatch",
            format!("the bundle holds recipe `{name}`, not `{expected}`"),
        ));
    }
    let governance = storage.governance(&actor.workspace).await?;
    let signed = match check_signature(storage, &actor.workspace, governance, &lock, &entries).await
    {
        Ok(signed) => signed,
        Err(e) => {
            refused_deploy(storage, actor, &name, &e).await;
            return Err(e);
        }
    };
    let components: BTreeMap<String, Vec<u8>> = entries
        .into_iter()
        .filter(|(k, _)| k.starts_with("components/"))
        .collect();
    // Compile before storing: a recipe that does not load is refused whole.
    let check_manifest = manifest.clone();
    let (loaded, components) = tokio::task::spawn_blocking(move || {
        let loaded = wrun_runtime::recipe::Recipe::load(&engine, check_manifest, |path| {
            let key = path.to_string_lossy().replace('\\', "/");
            components
                .get(&key)
                .cloned()
                .ok_or_else(|| std::io::Error::other(format!("{key} is not in the bundle")))
        })
        .map(|_| ())
        .map_err(|errors| errors.to_string());
        (loaded, components)
    })
    .await
    .map_err(|e| StorageError::Internal(format!("compiling the recipe failed: {e}")))?;
    loaded.map_err(|e| invalid("invalid_recipe", e))?;
    let text = manifest
        .to_toml()
        .map_err(|e| invalid("invalid_recipe", e.to_string()))?;

    // What each step may do, against the version running now.
    let running = storage.recipe(&actor.workspace, &name).await?;
    let before = running.as_ref().and_then(|r| {
        let old = wrun_runtime::manifest::Manifest::parse(&r.manifest).ok()?;
        Some(crate::review::grants(&old, &r.components))
    });
    let review = crate::review::review(
        crate::review::grants(&manifest, &lock.components),
        before.as_ref(),
    );
    let review_json = serde_json::to_value(&review)
        .map_err(|e| StorageError::Internal(format!("serialising a review: {e}")))?;
    let (signed_version, signer) = signed.unzip();
    let version = RecipeVersion {
        manifest: text,
        components,
        signed_version,
        signer: signer.clone(),
        review: review_json,
    };
    let detail = json!({
        "components": lock.components, "connections": lock.connections,
        "signed_version": signed_version, "signer": signer, "widens": review.widens,
    });
    let result = if governance.review_grants && review.widens {
        let audit = actor.entry("recipe.submit", format!("recipe:{name}"), detail);
        storage
            .submit_recipe(&actor.workspace, &name, version, &actor.name, audit)
            .await
            .map(|id| Deployment::Pending { lock, review, id })
    } else {
        let audit = actor.entry("recipe.deploy", format!("recipe:{name}"), detail);
        storage
            .put_recipe(&actor.workspace, &name, version, audit)
            .await
            .map(|()| Deployment::Running { lock, review })
    };
    if let Err(e @ StorageError::Conflict(_)) = &result {
        refused_deploy(storage, actor, &name, e).await;
    }
    result
}

/// Audits a deployment refused for its signature or as a downgrade.
async fn refused_deploy(storage: &dyn Storage, actor: &Actor, name: &str, e: &StorageError) {
    let mut entry = actor.entry(
        "recipe.deploy",
        format!("recipe:{name}"),
        json!({ "reason": e.to_string() }),
    );
    entry.outcome = Outcome::Denied;
    if let Err(err) = storage.audit(vec![entry]).await {
        tracing::error!(error = %err, "a refused deployment could not be audited");
    }
}

/// Approves the version of a recipe that waits for it (the one with id
/// `id`, as the approver reviewed it): it runs from now on.
///
/// # Errors
///
/// `NotFound` when no version with that id waits; `Conflict` for a
/// downgrade against what was deployed meanwhile; storage failures.
pub async fn approve_recipe(
    storage: &dyn Storage,
    actor: &Actor,
    name: &str,
    id: &str,
) -> StorageResult<()> {
    let audit = actor.entry(
        "recipe.approve",
        format!("recipe:{name}"),
        json!({ "pending": id }),
    );
    storage
        .approve_recipe(&actor.workspace, name, id, audit)
        .await
}

/// Trusts a bundle signing key in the actor's workspace.
///
/// # Errors
///
/// `Invalid` for a key that is not a wrun public key; `Conflict` for a
/// name taken or a key revoked before.
pub async fn trust_signing_key(
    storage: &dyn Storage,
    actor: &Actor,
    name: &str,
    public_key: &str,
) -> StorageResult<wrun_store::storage::SigningKey> {
    let key = crate::signing::PublicKey::parse(public_key)
        .map_err(|e| invalid("invalid_key", format!("{e:#}")))?;
    let record = wrun_store::storage::SigningKey {
        name: name.into(),
        id: key.id.clone(),
        public_key: key.text,
        added_at: wrun_store::UnixMillis::now(),
        revoked_at: None,
    };
    let audit = actor.entry(
        "signing_key.trust",
        format!("signing_key:{name}"),
        json!({ "id": key.id }),
    );
    storage
        .trust_signing_key(&actor.workspace, record.clone(), audit)
        .await?;
    Ok(record)
}

/// Revokes a trusted signing key; `false` if there is none by that name.
///
/// # Errors
///
/// Storage failures.
pub async fn revoke_signing_key(
    storage: &dyn Storage,
    actor: &Actor,
    name: &str,
) -> StorageResult<bool> {
    let audit = actor.entry(
        "signing_key.revoke",
        format!("signing_key:{name}"),
        json!({}),
    );
    storage
        .revoke_signing_key(&actor.workspace, name, audit)
        .await
}

/// What `wrun connection add --oauth2` and the API's OAuth2 connection put
/// carry.
pub struct OAuthConnectionInput<'a> {
    /// Connection name.
    pub name: &'a str,
    /// Hosts the access token may be sent to.
    pub hosts: &'a [String],
    /// Where it goes (`header:Authorization=Bearer {}`).
    pub placement: &'a str,
    /// The client.
    pub config: wrun_runtime::oauth::OAuthClientConfig,
    /// The client secret.
    pub client_secret: Zeroizing<String>,
    /// Replace a connection of that name.
    pub replace: bool,
}

/// Adds an OAuth2 connection: target and client checked with the runtime's
/// rules, the secret sealed, audited with the client's configuration (never
/// the secret). It has no token yet: a client-credentials connection gets
/// one at its first use (the API and the CLI ask for it at once), an authorization-code one
/// after [`start_authorization`] and [`finish_authorization`].
///
/// # Errors
///
/// [`StorageError::Invalid`] for a bad target, endpoint, client id, scope
/// or an empty secret; [`StorageError::Conflict`] when the name is taken
/// and `replace` is not set; storage failures.
pub async fn put_oauth_connection(
    storage: &dyn Storage,
    actor: &Actor,
    input: OAuthConnectionInput<'_>,
) -> StorageResult<()> {
    let (grant, placement) = check_connection_target(input.name, input.hosts, input.placement)?;
    input
        .config
        .check()
        .map_err(|e| invalid("invalid_oauth", format!("connection `{}`: {e}", input.name)))?;
    if input.client_secret.is_empty() {
        return Err(invalid(
            "invalid_oauth",
            format!("connection `{}`: the client secret is empty", input.name),
        ));
    }
    let shown_hosts: Vec<String> = grant.patterns().iter().map(ToString::to_string).collect();
    let audit = actor.entry(
        "connection.oauth.put",
        format!("connection:{}", input.name),
        json!({
            "hosts": shown_hosts,
            "placement": placement.to_string(),
            "grant": input.config.grant.as_str(),
            "token_url": input.config.token_url,
            "authorize_url": input.config.authorize_url,
            "client_id": input.config.client_id,
            "scopes": input.config.scopes,
        }),
    );
    let write = crate::storage::OAuthConnectionWrite {
        name: input.name.to_string(),
        hosts: grant,
        placement,
        config: input.config,
        client_secret: wrun_runtime::SecretValue::new(input.client_secret.as_str()),
        replace: input.replace,
    };
    storage
        .put_oauth_connection(&actor.workspace, write, audit)
        .await
}

/// Starts an authorization code flow for OAuth2 connection `name`: a fresh
/// `state` and PKCE verifier are kept in the store (10 minutes, once), the
/// start is audited, and the provider's URL to send the user to is
/// returned.
///
/// # Errors
///
/// [`StorageError::NotFound`] if there is no such OAuth2 connection;
/// [`StorageError::Invalid`] if it has no authorization endpoint or the
/// redirect URI is not a URL; storage failures.
pub async fn start_authorization(
    storage: &dyn Storage,
    actor: &Actor,
    name: &str,
    redirect_uri: &str,
) -> StorageResult<String> {
    let status = storage
        .oauth_status(&actor.workspace, name)
        .await?
        .ok_or_else(|| StorageError::NotFound {
            what: "OAuth2 connection",
            name: name.to_string(),
        })?;
    if status.config.grant != wrun_runtime::oauth::GrantKind::AuthorizationCode {
        return Err(invalid(
            "invalid_oauth",
            format!(
                "connection `{name}` uses the client credentials grant: it needs no authorization"
            ),
        ));
    }
    let start = wrun_runtime::oauth::start_authorization(&status.config, redirect_uri)
        .map_err(|e| invalid("invalid_oauth", format!("connection `{name}`: {e}")))?;
    let audit = actor.entry(
        "connection.oauth.authorize",
        format!("connection:{name}"),
        json!({ "redirect_uri": redirect_uri }),
    );
    storage
        .oauth_begin_authorization(&actor.workspace, name, &start, redirect_uri, audit)
        .await?;
    Ok(start.url)
}

/// Why a callback did not finish an authorization.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    /// No flow has this `state` (forged, replayed or expired): refused and
    /// audited.
    #[error(
        "the authorization callback's state matches no authorization under way (it was forged, used already or expired)"
    )]
    UnknownState,
    /// The provider said no (`error=access_denied`, ...).
    #[error("the provider did not authorise connection `{name}`: {reason}")]
    Denied {
        /// The connection.
        name: String,
        /// The provider's error code.
        reason: String,
    },
    /// The code exchange failed.
    #[error("connection `{name}`: {reason}")]
    Exchange {
        /// The connection.
        name: String,
        /// Why.
        reason: String,
    },
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Audits a callback whose `state` matched no authorization, as a
/// daemon-wide denial from `source` (never the state itself). The daemon
/// calls it only within the address's failure budget, so that nobody can
/// fill the audit log from outside.
///
/// # Errors
///
/// Storage failures.
pub async fn audit_refused_callback(storage: &dyn Storage, source: &str) -> StorageResult<()> {
    let audit = Entry {
        workspace: None,
        actor: "anonymous".into(),
        action: "connection.oauth.callback".into(),
        target: "connection:?".into(),
        source: Some(source.to_string()),
        outcome: Outcome::Denied,
        detail: json!({ "reason": "unknown state" }),
    };
    storage.audit(vec![audit]).await
}

/// Finishes an authorization code flow from the provider's callback
/// (`code`, `state`, or `error`): the `state` must match a flow under way
/// (it is used up either way), the code is exchanged with its PKCE verifier
/// through the egress, and the tokens are stored. Every outcome of a known
/// `state` is audited; an unknown one is the caller's to audit
/// ([`audit_refused_callback`]) within its failure budget. Returns the
/// workspace and connection authorised.
///
/// # Errors
///
/// See [`CallbackError`].
pub async fn finish_authorization(
    storage: &dyn Storage,
    tokens: &wrun_runtime::oauth::TokenClient,
    source: &str,
    state: &str,
    code: Option<&str>,
    error: Option<&str>,
) -> Result<(String, String), CallbackError> {
    let Some(pending) = storage.oauth_take_authorization(state).await? else {
        return Err(CallbackError::UnknownState);
    };
    let actor = Actor {
        workspace: pending.workspace.clone(),
        name: pending.actor.clone(),
        source: source.to_string(),
    };
    let name = pending.name.clone();
    let fail = |reason: String| {
        let mut entry = actor.entry(
            "connection.oauth.callback",
            format!("connection:{name}"),
            json!({ "reason": reason }),
        );
        entry.outcome = Outcome::Failure;
        entry
    };
    let result = match (code, error) {
        (_, Some(error)) => {
            let reason: String = error
                .chars()
                .filter(char::is_ascii_graphic)
                .take(64)
                .collect();
            Err(CallbackError::Denied {
                name: name.clone(),
                reason,
            })
        }
        (None, None) => Err(CallbackError::Denied {
            name: name.clone(),
            reason: "no code".into(),
        }),
        (Some(code), None) => match storage.oauth_status(&pending.workspace, &name).await? {
            None => Err(CallbackError::Exchange {
                name: name.clone(),
                reason: "it is no longer an OAuth2 connection".into(),
            }),
            Some(status) => {
                let secret = storage
                    .oauth_client_secret(&pending.workspace, &name)
                    .await?;
                tokens
                    .exchange_code(
                        &status.config,
                        &secret,
                        code,
                        &pending.verifier,
                        &pending.redirect_uri,
                    )
                    .await
                    .map_err(|e| CallbackError::Exchange {
                        name: name.clone(),
                        reason: e.to_string(),
                    })
            }
        },
    };
    match result {
        Ok(issued) => {
            let audit = actor.entry(
                "connection.oauth.authorized",
                format!("connection:{name}"),
                json!({ "refresh_token": issued.refresh.is_some() }),
            );
            storage
                .oauth_store_tokens(&pending.workspace, &name, None, issued, audit)
                .await?;
            Ok((pending.workspace, name))
        }
        Err(e) => {
            storage.audit(vec![fail(e.to_string())]).await?;
            Err(e)
        }
    }
}

/// Longest reference (a ticket id) an erasure may carry into the audit log.
const MAX_ERASE_REFERENCE: usize = 200;

/// Destroys a data subject's records in the actor's workspace (see
/// [`wrun_store::erase`]): checks the subject, then runs the one storage
/// operation, which audits the erasure with its counts and the caller's
/// `reference` (a request or ticket id), never with the subject.
///
/// # Errors
///
/// [`StorageError::Invalid`] for a subject that is too short, too long or
/// has control characters, or a reference that is too long; storage errors
/// (a record that cannot be opened stops the erasure before anything is
/// written).
pub async fn erase_subject(
    storage: &dyn Storage,
    actor: &Actor,
    subject: &str,
    reference: Option<&str>,
    dry_run: bool,
) -> StorageResult<wrun_store::erase::EraseReport> {
    let subject = wrun_store::erase::Subject::new(subject)?;
    if let Some(r) = reference
        && (r.chars().count() > MAX_ERASE_REFERENCE || r.chars().any(char::is_control))
    {
        return Err(invalid(
            "invalid_reference",
            format!(
                "the reference must have at most {MAX_ERASE_REFERENCE} characters and no control characters"
            ),
        ));
    }
    let entry = actor.entry("jobs.erase", "jobs", json!({ "reference": reference }));
    storage
        .erase_subject(&actor.workspace, &subject, dry_run, entry)
        .await
}

/// Largest limit accepted in any field (requests, paths or bytes per minute).
const MAX_LIMIT: u64 = 1 << 40;

/// Sets a connection's outbound limits (all unset: no limit), audited with
/// the limits.
///
/// # Errors
///
/// `Invalid` for a zero or absurd limit, or a burst without a request
/// limit; `NotFound` for an unknown connection; storage failures.
pub async fn set_connection_limits(
    storage: &dyn Storage,
    actor: &Actor,
    name: &str,
    limits: crate::storage::ConnectionLimits,
) -> StorageResult<()> {
    let fields = [
        (
            "requests_per_minute",
            limits.requests_per_minute.map(u64::from),
        ),
        ("burst", limits.burst.map(u64::from)),
        ("bytes_per_minute", limits.bytes_per_minute),
        ("paths_per_minute", limits.paths_per_minute.map(u64::from)),
        ("spike_multiple", limits.spike_multiple.map(u64::from)),
    ];
    for (field, value) in fields {
        if let Some(v) = value
            && (v == 0 || v > MAX_LIMIT)
        {
            return Err(invalid(
                "invalid_limits",
                format!("`{field}` must be between 1 and {MAX_LIMIT} (leave it out for no limit)"),
            ));
        }
    }
    if limits.burst.is_some() && limits.requests_per_minute.is_none() {
        return Err(invalid(
            "invalid_limits",
            "`burst` needs `requests_per_minute`",
        ));
    }
    let audit = actor.entry(
        "connection.limits",
        format!("connection:{name}"),
        json!(limits),
    );
    storage
        .set_connection_limits(&actor.workspace, name, limits, audit)
        .await
}

/// Resumes a connection an alert suspended; `false` if it was not
/// suspended.
///
/// # Errors
///
/// Storage failures.
pub async fn resume_connection(
    storage: &dyn Storage,
    actor: &Actor,
    name: &str,
) -> StorageResult<bool> {
    let audit = actor.entry("connection.resume", format!("connection:{name}"), json!({}));
    storage
        .resume_connection(&actor.workspace, name, audit)
        .await
}

/// Changes a workspace's governance settings (signed bundles required,
/// grant widenings approved), audited with the new settings.
///
/// # Errors
///
/// Storage failures.
pub async fn set_governance(
    storage: &dyn Storage,
    actor: &Actor,
    settings: Governance,
) -> StorageResult<()> {
    let audit = actor.entry("settings.governance", "settings", json!(settings));
    storage
        .set_governance(&actor.workspace, settings, audit)
        .await
}

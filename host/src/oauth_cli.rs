//! `wrun connection add --oauth2 ...` and `wrun connection authorize`: the
//! command line's side of OAuth2 connections. The changes are the shared
//! operations of [`crate::ops`]; this module only reads the client secret,
//! and for the authorization code grant listens on a loopback port for the
//! provider's redirect (RFC 8252's loopback redirect for native apps).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::response::Html;
use wrun_runtime::Engine;
use wrun_runtime::oauth::{GrantKind, OAuthClientConfig, TokenClient};

use crate::daemon::oauth::{AUTHORIZATION_TTL, Refresher};
use crate::daemon::storage::Storage;
use crate::ops;
use crate::output;

/// The OAuth2 options of `wrun connection add`.
#[derive(Debug, clap::Args)]
pub(crate) struct OAuthArgs {
    /// Make it an OAuth2 connection whose access token wrun obtains and
    /// refreshes itself: `client-credentials` or `authorization-code`
    /// (with PKCE). The client secret is read like a value: from stdin, or
    /// prompted for without echo.
    #[arg(long = "oauth2", value_name = "GRANT")]
    pub(crate) grant: Option<String>,
    /// The provider's token endpoint (https://).
    #[arg(long, requires = "grant")]
    token_url: Option<String>,
    /// The provider's authorization endpoint (https://), for
    /// `authorization-code`.
    #[arg(long, requires = "grant")]
    authorize_url: Option<String>,
    /// The client id.
    #[arg(long, requires = "grant")]
    client_id: Option<String>,
    /// A scope to ask for (repeatable).
    #[arg(long = "scope", requires = "grant")]
    scopes: Vec<String>,
    /// Replace a connection of the same name (its tokens are dropped).
    #[arg(long, requires = "grant")]
    replace: bool,
}

/// Adds an OAuth2 connection; a client-credentials one gets its first token
/// at once, an authorization-code one is authorised right after.
pub(crate) async fn add(
    storage: &Arc<dyn Storage>,
    engine: &Engine,
    actor: &ops::Actor,
    name: &str,
    hosts: &[String],
    placement: &str,
    args: OAuthArgs,
) -> Result<()> {
    let grant_text = args.grant.unwrap_or_default();
    let Some(grant) = GrantKind::parse(&grant_text) else {
        bail!(
            "--oauth2 `{grant_text}` is not a grant wrun supports: use `client-credentials` or `authorization-code`"
        );
    };
    let config = OAuthClientConfig {
        grant,
        token_url: args.token_url.context("--oauth2 needs --token-url")?,
        authorize_url: args.authorize_url,
        client_id: args.client_id.context("--oauth2 needs --client-id")?,
        scopes: args.scopes,
    };
    ops::check_connection_target(name, hosts, placement)?;
    config
        .check()
        .map_err(|e| anyhow::anyhow!("connection `{name}`: {e}"))?;
    let client_secret = crate::cli::read_secret_value(name)?;
    ops::put_oauth_connection(
        storage.as_ref(),
        actor,
        ops::OAuthConnectionInput {
            name,
            hosts,
            placement,
            config,
            client_secret,
            replace: args.replace,
        },
    )
    .await?;
    output::line(&format!(
        "added OAuth2 connection `{name}` in workspace `{}`",
        actor.workspace
    ));
    match grant {
        GrantKind::ClientCredentials => {
            let refresher = Refresher::new(engine.token_client());
            crate::daemon::oauth::fresh_token(storage.as_ref(), &refresher, &actor.workspace, name)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("connection `{name}` was added, but its first token: {e}")
                })?;
            output::line(&format!("connection `{name}` has a token"));
        }
        GrantKind::AuthorizationCode => authorize(storage, engine, actor, name).await?,
    }
    Ok(())
}

/// What the callback hands back to the waiting command.
type Done = Arc<Mutex<Option<tokio::sync::oneshot::Sender<Result<(), String>>>>>;

#[derive(Clone)]
struct Callback {
    storage: Arc<dyn Storage>,
    tokens: TokenClient,
    done: Done,
}

/// Authorises an authorization-code connection: a loopback listener on
/// 127.0.0.1 (any free port), the provider's URL printed on stdout, then
/// the redirect is checked (`state`, once), the code exchanged with the PKCE
/// verifier and the tokens stored. A callback with a wrong `state` is
/// refused and audited, and the command keeps waiting, up to 10 minutes.
pub(crate) async fn authorize(
    storage: &Arc<dyn Storage>,
    engine: &Engine,
    actor: &ops::Actor,
    name: &str,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("listening on a loopback port for the provider's redirect")?;
    let port = listener.local_addr()?.port();
    let redirect = format!("http://127.0.0.1:{port}/callback");
    let url = ops::start_authorization(storage.as_ref(), actor, name, &redirect).await?;
    eprintln!("open this URL in a browser to authorise connection `{name}`:");
    println!("{url}");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let state = Callback {
        storage: Arc::clone(storage),
        tokens: engine.token_client(),
        done: Arc::new(Mutex::new(Some(tx))),
    };
    let app = axum::Router::new()
        .route("/callback", axum::routing::get(callback))
        .with_state(state);
    let server = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    );
    let outcome = tokio::select! {
        served = server => {
            served.context("the loopback listener failed")?;
            bail!("the loopback listener stopped before the provider's redirect");
        }
        done = tokio::time::timeout(AUTHORIZATION_TTL, rx) => done,
    };
    match outcome {
        Ok(Ok(Ok(()))) => {
            output::line(&format!("connection `{name}` is authorised"));
            Ok(())
        }
        Ok(Ok(Err(message))) => bail!(message),
        Ok(Err(_)) => bail!("the loopback listener stopped before the provider's redirect"),
        Err(_) => bail!(
            "connection `{name}` was not authorised within {} minutes",
            AUTHORIZATION_TTL.as_secs() / 60
        ),
    }
}

async fn callback(
    State(cb): State<Callback>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
) -> (StatusCode, Html<&'static str>) {
    let Some(state) = query.get("state") else {
        return (
            StatusCode::BAD_REQUEST,
            Html("<p>wrun: this is not an authorization redirect (no state).</p>"),
        );
    };
    let result = ops::finish_authorization(
        cb.storage.as_ref(),
        &cb.tokens,
        &peer.ip().to_string(),
        state,
        query.get("code").map(String::as_str),
        query.get("error").map(String::as_str),
    )
    .await;
    match result {
        Err(ops::CallbackError::UnknownState) => {
            if let Err(e) =
                ops::audit_refused_callback(cb.storage.as_ref(), &peer.ip().to_string()).await
            {
                output::warn(&format!("a refused redirect was not audited: {e}"));
            }
            output::warn("a redirect with an unknown state was refused; still waiting");
            (
                StatusCode::BAD_REQUEST,
                Html("<p>wrun: this redirect does not belong to an authorization under way.</p>"),
            )
        }
        other => {
            let ok = other.is_ok();
            let message = other.map(|_| ()).map_err(|e| e.to_string());
            if let Some(tx) = cb.done.lock().ok().and_then(|mut d| d.take()) {
                let _ = tx.send(message);
            }
            if ok {
                (
                    StatusCode::OK,
                    Html("<p>wrun: the connection is authorised. You can close this tab.</p>"),
                )
            } else {
                (
                    StatusCode::BAD_REQUEST,
                    Html("<p>wrun: the authorization failed; the command says why.</p>"),
                )
            }
        }
    }
}

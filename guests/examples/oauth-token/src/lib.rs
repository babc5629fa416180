//! Example step: gets an OAuth 2 access token with the client-credentials
//! grant.
//!
//! Action `client-credentials`, input `{token_url, client_id, scope?}`.
//! Needs the secret alias `client`, whose connection places the client
//! secret in the form field `client_secret` (placement `body:client_secret`),
//! and a `net` grant for the token endpoint's host.
//!
//! The step marks the access token it receives as sensitive, so the host
//! masks it in the log and in the stored history; a following step gets the
//! real value in its input.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use wrun_sdk::{Error, http, log, mask, secrets, step};

/// Where to get a token, and for which client.
#[derive(Deserialize)]
struct Input {
    token_url: String,
    client_id: String,
    scope: Option<String>,
}

/// The token, for the next steps.
#[derive(Serialize)]
struct Output {
    token_type: String,
    expires_in: Option<u64>,
    access_token: String,
}

/// The token endpoint's answer (RFC 6749, section 5.1).
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    token_type: String,
    expires_in: Option<u64>,
}

/// Requests a token from the token endpoint.
fn client_credentials(input: Input) -> Result<Output, Error> {
    let client = secrets::get("client")?;
    let mut form = vec![
        ("grant_type", "client_credentials"),
        ("client_id", input.client_id.as_str()),
    ];
    if let Some(scope) = input.scope.as_deref() {
        form.push(("scope", scope));
    }

    // `auth` puts the secret's placeholder in the `client_secret` field,
    // since that is where the connection's placement says it goes.
    let answer: TokenAnswer = http::Request::post(&input.token_url)
        .header("Accept", "application/json")
        .form(&form)
        .auth(&client)
        .send()?
        .error_for_status()?
        .json()?;
    mask::mark(&answer.access_token);
    log::info(&format!(
        "got a {} token for client {}",
        answer.token_type, input.client_id
    ));
    Ok(Output {
        token_type: answer.token_type,
        expires_in: answer.expires_in,
        access_token: answer.access_token,
    })
}

step!("client-credentials" => client_credentials);

//! Example step: posts a message to a Slack channel.
//!
//! Action `post-message`, input `{channel, text}`. Needs the property
//! `slack_api` (such as `https://slack.com`), the secret alias `slack` (a
//! bot token placed as `Authorization: Bearer {}`) and a `net` grant for the
//! API host.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use wrun_sdk::{Error, http, properties, secrets, step};

/// The message to post.
#[derive(Deserialize, Serialize)]
struct Input {
    channel: String,
    text: String,
}

/// Where the message went.
#[derive(Serialize)]
struct Output {
    ok: bool,
    channel: String,
    ts: String,
}

/// Slack's answer. Slack reports failures as `200 {"ok": false, "error": ..}`.
#[derive(Deserialize)]
struct Answer {
    ok: bool,
    error: Option<String>,
    channel: Option<String>,
    ts: Option<String>,
}

/// Posts the message with `chat.postMessage`.
fn post_message(input: Input) -> Result<Output, Error> {
    let base = properties::require("slack_api")?;
    let slack = secrets::get("slack")?;
    let url = format!("{}/api/chat.postMessage", base.trim_end_matches('/'));

    let answer: Answer = http::Request::post(&url)
        .header("Content-Type", "application/json; charset=utf-8")
        .json(&input)
        .auth(&slack)
        .send()?
        .error_for_status()?
        .json()?;
    if !answer.ok {
        let error = answer
            .error
            .unwrap_or_else(|| "unknown Slack error".to_owned());
        return Err(Error::msg(error));
    }
    Ok(Output {
        ok: true,
        channel: answer.channel.unwrap_or(input.channel),
        ts: answer.ts.unwrap_or_default(),
    })
}

step!("post-message" => post_message);

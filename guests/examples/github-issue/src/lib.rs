//! Example step: fetches one GitHub issue.
//!
//! Action `get-issue`, input `{owner, repo, number}`. Needs the property
//! `github_api` (the API base URL, such as `https://api.github.com`), the
//! secret alias `github` (a token placed as `Authorization: Bearer {}`) and
//! a `net` grant for the API host.

#![forbid(unsafe_code)]

use serde::{Deserialize, Serialize};
use wrun_sdk::{Error, http, log, properties, secrets, step};

/// Which issue to fetch.
#[derive(Deserialize)]
struct Input {
    owner: String,
    repo: String,
    number: u64,
}

/// The parts of the issue a recipe usually needs.
#[derive(Serialize)]
struct Output {
    number: u64,
    title: String,
    body: Option<String>,
    state: String,
    author: String,
    labels: Vec<String>,
    url: String,
}

/// The fields read from GitHub's issue object.
#[derive(Deserialize)]
struct Issue {
    number: u64,
    title: String,
    body: Option<String>,
    state: String,
    user: User,
    #[serde(default)]
    labels: Vec<Label>,
    html_url: String,
}

/// An issue's author.
#[derive(Deserialize)]
struct User {
    login: String,
}

/// An issue label.
#[derive(Deserialize)]
struct Label {
    name: String,
}

/// Fetches the issue and reshapes it.
fn get_issue(input: Input) -> Result<Output, Error> {
    let base = properties::require("github_api")?;
    let github = secrets::get("github")?;
    let Input {
        owner,
        repo,
        number,
    } = input;
    let url = format!(
        "{}/repos/{owner}/{repo}/issues/{number}",
        base.trim_end_matches('/')
    );
    log::info(&format!("fetching issue {owner}/{repo}#{number}"));

    let response = http::Request::get(&url)
        .header("Accept", "application/vnd.github+json")
        .header("User-Agent", "wrun-github-issue/0.1")
        .header("X-GitHub-Api-Version", "2022-11-28")
        .auth(&github)
        .send()?;
    if response.status() == 404 {
        return Err(Error::msg(format_args!(
            "issue {owner}/{repo}#{number} not found"
        )));
    }
    let issue: Issue = response.error_for_status()?.json()?;
    Ok(Output {
        number: issue.number,
        title: issue.title,
        body: issue.body,
        state: issue.state,
        author: issue.user.login,
        labels: issue.labels.into_iter().map(|label| label.name).collect(),
        url: issue.html_url,
    })
}

step!("get-issue" => get_issue);

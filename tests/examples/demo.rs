//! A two-step run end to end: fetch an issue from a GitHub-like API with a
//! token the guest never sees, then post it to a Slack-like API. Both APIs
//! are the loopback HTTPS mock; the engine trusts its CA as an operator CA.
//!
//! Run with `cargo run -p wrun-tests --example demo`.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use serde_json::json;
use wrun_runtime::egress::StaticResolver;
use wrun_runtime::{
    CollectingObserver, Connection, Engine, Event, Grants, JobOptions, Placement, SecretValue,
    StaticConnections,
};
use wrun_tests::{MockServer, TestPki};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let pki = TestPki::new(&["api.github.test", "slack.test"]);
    let github_api = MockServer::start(&pki).await;
    let slack_api = MockServer::start(&pki).await;
    let github_token = "ghp_demo_0123456789abcdefghijklmnopqrstuv";
    let slack_token = "xoxb-demo-0123456789-abcdefghijklmnop";
    github_api.set_expected_bearer(github_token);
    slack_api.set_expected_bearer(slack_token);

    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let engine = Engine::builder()
        .cache_dir(std::env::temp_dir().join("wrun-demo-cache"))
        .webpki_roots(false)
        .add_ca_pem(pki.ca_pem().as_bytes())?
        .allow_range("127.0.0.0/8".parse()?)
        .resolver(Arc::new(
            StaticResolver::new()
                .with("api.github.test", [loopback])
                .with("slack.test", [loopback]),
        ))
        .build()?;

    let guests = wrun_tests::guests_dir();
    let github = engine.load(
        "github-issue",
        &std::fs::read(guests.join("github_issue.wasm"))?,
    )?;
    let slack = engine.load(
        "slack-post",
        &std::fs::read(guests.join("slack_post.wasm"))?,
    )?;
    let github_host = format!("api.github.test:{}", github_api.port());
    let slack_host = format!("slack.test:{}", slack_api.port());
    let fetch = engine.step(
        "fetch-issue",
        &github,
        Grants::builder()
            .net(&github_host)
            .secret("github", "github-demo")
            .env("github_api")
            .build()?,
    )?;
    let notify = engine.step(
        "notify",
        &slack,
        Grants::builder()
            .net(&slack_host)
            .secret("slack", "slack-demo")
            .env("slack_api")
            .build()?,
    )?;

    let connections = StaticConnections::new()
        .with(Connection::new(
            "github-demo",
            SecretValue::new(github_token),
            [&github_host],
            Placement::bearer(),
        )?)
        .with(Connection::new(
            "slack-demo",
            SecretValue::new(slack_token),
            [&slack_host],
            Placement::bearer(),
        )?);
    let observer = CollectingObserver::new();
    let job = engine.job(
        JobOptions::new("demo-workspace", "issue-to-slack")
            .connections(Arc::new(connections))
            .property("github_api", format!("https://{github_host}"))
            .property("slack_api", format!("https://{slack_host}"))
            .observer(observer.clone()),
    );

    let issue = job
        .run(
            &fetch,
            "get-issue",
            &json!({ "owner": "octo", "repo": "hello", "number": 42 }),
        )
        .await?;
    println!("fetch-issue  {:>6.1?}  {}", issue.elapsed, issue.stored);
    let text = format!(
        "New issue: {} ({})",
        issue.output["title"], issue.output["url"]
    );
    let posted = job
        .run(
            &notify,
            "post-message",
            &json!({ "channel": "#triage", "text": text }),
        )
        .await?;
    println!("notify       {:>6.1?}  {}", posted.elapsed, posted.stored);

    println!("\nevents:");
    for event in observer.events() {
        match event {
            Event::Request {
                step,
                method,
                url,
                status,
                connections,
                elapsed,
            } => println!(
                "  {step}: {method} {url} -> {} in {elapsed:.1?}, injected {connections:?}",
                status.map_or("-".into(), |s| s.to_string())
            ),
            other => println!("  {other:?}"),
        }
    }
    let received = github_api.requests().len() + slack_api.requests().len();
    println!(
        "\nthe upstreams received {received} requests with the real tokens; the guests only ever held placeholders"
    );
    Ok(())
}

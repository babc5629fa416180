//! `wrun-mock`: the loopback HTTPS mock API (GitHub-, Slack- and OAuth-like
//! routes, echo, redirects) as a process, for running example recipes with
//! the `wrun` CLI on a machine without network.
//!
//! It listens on 127.0.0.1, writes its CA certificate to `--ca-out`, prints
//! `port=N` on stdout, and serves until it is killed.
//!
//! ```sh
//! wrun-mock --name api.github.test --name slack.test --ca-out ca.pem \
//!     --bearer ghp_example --port-file port.txt
//! ```

use std::path::PathBuf;

use anyhow::{Context, Result};
use wrun_tests::{MockServer, TestPki};

#[tokio::main]
async fn main() -> Result<()> {
    let mut names = Vec::new();
    let mut ca_out = None;
    let mut port_file = None;
    let mut bearer = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--name" => names.push(value()?),
            "--ca-out" => ca_out = Some(PathBuf::from(value()?)),
            "--port-file" => port_file = Some(PathBuf::from(value()?)),
            "--bearer" => bearer = Some(value()?),
            "--help" | "-h" => {
                println!(
                    "usage: wrun-mock --name HOST... --ca-out FILE [--port-file FILE] [--bearer TOKEN]"
                );
                return Ok(());
            }
            other => anyhow::bail!("unknown argument `{other}` (see --help)"),
        }
    }
    let ca_out = ca_out.context("--ca-out FILE is required")?;
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let pki = TestPki::new(&names);
    std::fs::write(&ca_out, pki.ca_pem())
        .with_context(|| format!("writing {}", ca_out.display()))?;
    let server = MockServer::start(&pki).await;
    if let Some(token) = bearer {
        server.set_expected_bearer(token);
    }
    if let Some(path) = port_file {
        std::fs::write(&path, server.port().to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("port={}", server.port());
    // Serve until the process is killed.
    std::future::pending::<()>().await;
    Ok(())
}

//! `wrun`: the command-line tool of wrun, a thin crate over `wrun-server`
//! (the daemon, `wrun serve`, and the operations the CLI shares with it) and
//! `wrun-store` (all data): commands, scaffolding, output.
//!
//! It keeps connections (encrypted) and environment properties in an
//! embedded SQLite database, and runs recipes locally with the same runtime
//! the daemon uses. See `wrun --help` and README.md.

#![forbid(unsafe_code)]

mod cli;
mod oauth_cli;
mod output;
mod scaffold;
mod toolkit;

// The daemon, the shared operations and the store, under the names the
// CLI uses.
use wrun_server as daemon;
use wrun_server::{bundle, ops};
use wrun_store::db as store_sqlite;
use wrun_store::keys;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // `wrun serve` logs errors by default (structured JSON lines); the
    // other commands are silent unless RUST_LOG asks.
    let default = if args.is_serve() { "error" } else { "off" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| {
            tracing_subscriber::EnvFilter::try_new(std::env::var("WRUN_LOG").unwrap_or_default())
        })
        .unwrap_or_else(|_| default.into());
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.is_serve() {
        subscriber.json().init();
    } else {
        subscriber.init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            output::error(&format!("{e:#}"));
            ExitCode::from(2)
        }
    }
}

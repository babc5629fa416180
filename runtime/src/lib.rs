//! wrun-runtime: run integration-recipe steps as sandboxed WebAssembly
//! components.
//!
//! A step is a component of the `wrun:recipe/step` world (see `wit/`). The
//! host loads it once, binds it to a step with [`Grants`], and runs its
//! actions inside a [`Job`]: each run gets a fresh instance, only the hosts,
//! secrets and properties it was granted, and its memory and time limits.
//! The guest never sees a secret value: it gets a placeholder, which the
//! egress swaps for the value at send time after checking the request.
//!
//! ```no_run
//! use std::sync::Arc;
//! use wrun_runtime::{Connection, Engine, Grants, JobOptions, Placement, SecretValue, StaticConnections};
//!
//! # async fn example(wasm: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! let engine = Engine::builder().cache_dir("/var/cache/wrun").build()?;
//! let component = engine.load("github-issue", wasm)?;
//! let grants = Grants::builder()
//!     .net("api.github.com")
//!     .secret("github", "github-prod")
//!     .env("github_api")
//!     .build()?;
//! let step = engine.step("fetch-issue", &component, grants)?;
//!
//! let token = Connection::new(
//!     "github-prod",
//!     SecretValue::new("ghp_..."),
//!     ["api.github.com"],
//!     Placement::bearer(),
//! )?;
//! let job = engine.job(
//!     JobOptions::new("team-a", "triage")
//!         .connections(Arc::new(StaticConnections::new().with(token)))
//!         .property("github_api", "https://api.github.com"),
//! );
//! let input = serde_json::json!({"owner": "octo", "repo": "hello", "number": 1});
//! let out = job.run(&step, "get-issue", &input).await?;
//! println!("{}", out.stored);
//! # Ok(()) }
//! ```
//!
//! There is no global state: everything hangs off an [`Engine`], and every
//! per-job value (placeholders, masks) off a [`Job`].

#![forbid(unsafe_code)]

mod bindings;
mod budget;
pub mod egress;
mod engine;
mod error;
pub mod events;
mod grants;
pub mod guard;
mod host_impl;
mod job;
pub mod manifest;
pub mod mask;
mod misuse;
pub mod oauth;
pub mod policy;
pub mod recipe;
pub mod secrets;

pub use budget::StepBudget;
pub use engine::{Component, Engine, EngineBuilder, Step};
pub use error::{Error, Result};
pub use events::{
    AuditEvent, AuditKind, CollectingObserver, Event, Level, LogSource, NoopObserver, Observer,
};
pub use grants::{GrantError, Grants, GrantsBuilder};
#[cfg(feature = "bench-probes")]
#[doc(hidden)]
pub use job::EgressProbe;
pub use job::{Job, JobOptions, StepFailure, StepOutput};
pub use secrets::{
    Connection, ConnectionError, ConnectionSource, Placement, SecretValue, StaticConnections,
};

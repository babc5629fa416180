//! `wrun-store`: the one owner of wrun's data.
//!
//! Every table, migration and SQL statement of wrun lives here, and so do
//! the sealing of values at rest (a master key wrapping one data key per
//! workspace, AES-256-GCM with associated data naming each record) and the
//! MAC-chained audit log. The CLI and the daemon change data only through
//! this crate's operations, each of which writes its audit entry in the
//! same transaction as the change.
//!
//! The parts: [`keys`] (master and data keys), [`db`] (opening, schema,
//! migrations, sealing helpers, reads used by local runs), [`storage`]
//! (the operations, backend-neutral, with their error type), [`sqlite`]
//! (their embedded implementation with group commit), [`postgres`] (the
//! backend for several nodes, in progress: pool, schema, claims), [`audit`] (the
//! chain: append, read, verify, stream) and [`access`] (the permission
//! model that roles and token scopes are stored as); [`claims`] has which
//! node runs which job (leases and fencing epochs); [`sessions`] has the
//! web console's sessions; [`time`] has the one
//! time unit of stored data, [`UnixMillis`].

#![forbid(unsafe_code)]

pub mod access;
pub mod audit;
pub mod claims;
pub mod db;
pub mod erase;
pub mod keys;
pub mod oauth;
pub mod postgres;
mod sealed;
pub mod sessions;
pub mod sqlite;
pub mod storage;
pub mod time;

pub use time::UnixMillis;

use sha2::{Digest as _, Sha256};

/// Lowercase hex SHA-256 of `bytes`: how components are named and locked.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

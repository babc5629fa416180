//! Tamper-evident audit log of the `wrun serve` daemon, stored in SQLite.
//!
//! Every security-relevant action of the daemon (a token created, a job
//! started, a request denied) becomes one [`Entry`]. Entries are numbered
//! without gaps and chained to each other by a keyed MAC, so that an edited,
//! removed or reordered entry is found by [`verify`].
//!
//! # Tables
//!
//! [`AUDIT_SCHEMA`] creates two STRICT tables:
//!
//! - `audit(seq, at, workspace, actor, action, target, source, outcome,
//!   detail, prev, mac)`: one row per entry. `seq` counts 1, 2, 3, ... without
//!   gaps; `at` is the time in unix milliseconds; `workspace` and `source`
//!   (the client IP) may be NULL; `outcome` is `success`, `failure` or
//!   `denied`; `detail` is a JSON object; `prev` is the hex MAC of the
//!   previous entry (64 zeros for entry 1) and `mac` the hex MAC of this one.
//! - `audit_head(id = 1, seq, mac)`: a single row naming the last entry
//!   written. [`append`] updates it in the same transaction as the entries, so
//!   removing entries from the end of the log is detected unless the head is
//!   rolled back as well.
//!
//! The schema also installs triggers that refuse `UPDATE` and `DELETE` on the
//! log and `DELETE` on the head. They catch mistakes in the daemon's own SQL;
//! they are no defence against someone who can write the database file, who
//! can drop them. The MAC chain is that defence.
//!
//! # The chain
//!
//! `mac_i = HMAC-SHA256(key, canonical(entry_i))`, with `canonical` the
//! following unambiguous byte string:
//!
//! ```text
//! "wrun-audit-v1\n"
//! seq      u64 big-endian
//! at       i64 big-endian
//! workspace, source:                 0x00 if NULL, else 0x01 then a string
//! actor, action, target, outcome,
//! detail, prev:                      a string
//! string = length in bytes as u64 big-endian, then the UTF-8 bytes
//! ```
//!
//! Fields appear in the order seq, at, workspace, actor, action, target,
//! source, outcome, detail, prev. `detail` is MACed as the exact JSON text
//! stored in the row and `prev` as its lowercase hex text, so verification
//! never depends on how a JSON value is re-serialised.
//!
//! The MAC is keyed by an [`AuditKey`] that is kept outside the database. A
//! writer with access to the database alone therefore cannot produce a valid
//! MAC: every row it edits, inserts or moves fails verification.
//!
//! # What verification finds, and what it cannot
//!
//! [`verify`] reads the whole log in `seq` order, one row at a time, and
//! reports each [`Problem`]: an entry whose MAC does not match its content
//! ([`ProblemKind::Edited`]), a gap in the sequence
//! ([`ProblemKind::Removed`]), an entry that verifies but is not chained to
//! its predecessor ([`ProblemKind::Unlinked`]), an entry chained to another
//! entry than its predecessor ([`ProblemKind::Reordered`]), entries missing at
//! the end of the log ([`ProblemKind::TailRemoved`]) and a head that is
//! missing or does not match the last entry ([`ProblemKind::HeadMissing`],
//! [`ProblemKind::HeadMismatch`]).
//!
//! Limits:
//!
//! - Someone who deletes the last `n` entries *and* rolls the head back to the
//!   entry before them (or restores an older copy of the database) leaves a
//!   log that verifies: it is a true prefix of the real log. The defence is to
//!   ship entries off the machine as they are written, for instance to a SIEM
//!   through [`stream`] in follow mode; the SIEM then holds entries (and MACs)
//!   that the local log no longer has.
//! - Whoever holds the key (the daemon process, or anyone who reads its key
//!   file) can rewrite the chain from any point. The key must not be stored in
//!   the database, and a SIEM copy again bounds what such a rewrite can hide.
//! - Verification proves integrity, not that the daemon recorded the truth.
//!
//! # Transactions
//!
//! [`append`] must run inside a transaction owned by the caller (the daemon's
//! group-commit transaction), so entries and the head commit together with
//! the change they record. On SQLite that transaction should be `IMMEDIATE`,
//! because [`append`] reads the head before it writes. [`verify`] reads the
//! log and the head from one snapshot: its own read transaction, or the
//! caller's if one is open.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;

use hmac::{Hmac, Mac};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::time::UnixMillis;

/// HMAC-SHA256, the MAC of the chain.
pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Expands to the `prev` value of entry 1: 64 zeros, as a string literal.
macro_rules! zero_mac {
    () => {
        "0000000000000000000000000000000000000000000000000000000000000000"
    };
}

/// The `prev` value of the first entry, and the head's MAC of an empty log.
pub const ZERO_MAC: &str = zero_mac!();

/// Domain separator that starts every canonical encoding; the version lets a
/// later encoding be told apart.
const DOMAIN: &[u8] = b"wrun-audit-v1\n";

/// How many problems a [`VerifyReport`] lists; further ones are only counted.
pub const MAX_PROBLEMS: usize = 10_000;

/// How many entries [`stream`] reads per query, so that no read snapshot is
/// held while a slow client consumes a long log.
const STREAM_PAGE: usize = 1_000;

/// SQL that creates the audit log tables, index and append-only triggers.
///
/// Every statement is idempotent (`IF NOT EXISTS`, `INSERT OR IGNORE`), so the
/// schema can be applied at every start. The head row starts at `(0, zeros)`;
/// if it has been deleted, applying the schema again recreates it at 0, which
/// [`verify`] then reports as a head that does not match the log.
pub const AUDIT_SCHEMA: &str = concat!(
    "CREATE TABLE IF NOT EXISTS audit (
    seq       INTEGER PRIMARY KEY CHECK (seq > 0),
    at        INTEGER NOT NULL,
    workspace TEXT,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    source    TEXT,
    outcome   TEXT NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
    detail    TEXT NOT NULL CHECK (json_type(detail) = 'object'),
    prev      TEXT NOT NULL CHECK (length(prev) = 64),
    mac       TEXT NOT NULL CHECK (length(mac) = 64)
) STRICT;
CREATE INDEX IF NOT EXISTS audit_workspace_seq ON audit (workspace, seq);
CREATE TABLE IF NOT EXISTS audit_head (
    id  INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL CHECK (seq >= 0),
    mac TEXT NOT NULL CHECK (length(mac) = 64)
) STRICT;
INSERT OR IGNORE INTO audit_head (id, seq, mac) VALUES (1, 0, '",
    zero_mac!(),
    "');
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN SELECT RAISE(ABORT, 'audit entries are append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_head_no_delete BEFORE DELETE ON audit_head
BEGIN SELECT RAISE(ABORT, 'the audit head cannot be deleted'); END;
"
);

/// Columns of `audit` in the order every query here selects them.
const COLUMNS: &str =
    "seq, at, workspace, actor, action, target, source, outcome, detail, prev, mac";

/// Errors of the audit log. Messages name the operation and the entry; they
/// never contain the key.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A query on the audit tables failed.
    #[error("audit log database error while {context}")]
    Database {
        /// What was being done, for example "reading the audit head".
        context: &'static str,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// Writing one entry failed, for example on a duplicate `seq`.
    #[error("could not insert audit entry {seq}")]
    Insert {
        /// The entry's sequence number.
        seq: u64,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// [`append`] was called outside a transaction.
    #[error("audit entries must be appended inside a transaction owned by the caller")]
    NotInTransaction,
    /// The `audit_head` row does not exist, so the chain cannot be continued.
    #[error(
        "the audit head row is missing: the audit schema was not applied or the log was \
         tampered with; run an audit verification"
    )]
    HeadMissing,
    /// The `audit_head` row holds a value that cannot be used.
    #[error("the audit head row is corrupt: {reason}")]
    HeadCorrupt {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An entry of a batch has a `detail` that is not a JSON object.
    #[error(
        "audit entry {index} of the batch (counting from 0) has a detail that is not a JSON object"
    )]
    DetailNotObject {
        /// Position of the entry in the batch given to [`append`].
        index: usize,
    },
    /// The sequence number would leave the range SQLite can store.
    #[error("the audit sequence number cannot grow past {seq}")]
    SeqOverflow {
        /// The last sequence number that fits.
        seq: u64,
    },
    /// A stored row cannot be turned into a [`Stored`] entry.
    #[error("audit entry {seq} is malformed: {reason}")]
    Malformed {
        /// The row's sequence number.
        seq: i64,
        /// What is wrong with it.
        reason: String,
    },
    /// An entry could not be encoded as JSON.
    #[error("could not encode audit entry {seq} as JSON")]
    Encode {
        /// The entry's sequence number.
        seq: u64,
        /// The serde_json error.
        #[source]
        source: serde_json::Error,
    },
    /// The output of [`stream`] failed.
    #[error("could not write audit entry {seq} to the stream")]
    Write {
        /// The entry being written; all entries before it were written.
        seq: u64,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The HMAC implementation refused the key (it accepts every length, so
    /// this does not happen in practice).
    #[error("the audit key was rejected by HMAC-SHA256")]
    KeyRejected,
}

/// Returns a closure that wraps a SQLite error with what was being done.
fn db(context: &'static str) -> impl FnOnce(rusqlite::Error) -> AuditError {
    move |source| AuditError::Database { context, source }
}

/// The 32-byte secret key of the MAC chain.
///
/// The bytes are zeroized on drop and never printed: `Debug` shows only the
/// type name.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct AuditKey {
    /// The key bytes.
    bytes: [u8; 32],
}

impl AuditKey {
    /// Wraps 32 key bytes. The caller should zeroize its own copy.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self { bytes }
    }

    /// Returns an HMAC-SHA256 instance keyed with this key, ready to clone
    /// once per entry.
    pub(crate) fn hmac(&self) -> Result<HmacSha256, AuditError> {
        HmacSha256::new_from_slice(&self.bytes).map_err(|_| AuditError::KeyRejected)
    }
}

impl fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditKey").finish_non_exhaustive()
    }
}

/// How the audited action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The action was carried out.
    Success,
    /// The action was allowed but failed.
    Failure,
    /// The action was refused (authentication, scope, role, IP allowlist).
    Denied,
}

impl Outcome {
    /// The stored (and MACed) spelling: `success`, `failure` or `denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Denied => "denied",
        }
    }

    /// Parses the stored spelling; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "success" => Some(Self::Success),
            "failure" => Some(Self::Failure),
            "denied" => Some(Self::Denied),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One audit entry to append. The sequence number, time and MACs are added
/// by [`append`].
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The workspace the action belongs to; `None` for daemon-wide actions.
    pub workspace: Option<String>,
    /// Who acted: a member, a token id, or `system`. Never a token value.
    pub actor: String,
    /// What was done, for example `token.create` or `job.start`.
    pub action: String,
    /// What it was done to, for example a job or token id.
    pub target: String,
    /// The client IP address, if the action came over the network.
    pub source: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Further facts as a JSON object. Never a secret value.
    pub detail: serde_json::Value,
}

/// An entry as stored, also the JSON line format for SIEMs.
///
/// Serialised as one JSON object with exactly these fields; `workspace` and
/// `source` are `null` when absent, and `time` is `at` as an RFC 3339 UTC
/// string with milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stored {
    /// Sequence number, from 1 without gaps.
    pub seq: u64,
    /// When it was written.
    pub at: UnixMillis,
    /// `at` as RFC 3339, for example `2023-11-14T22:13:20.123Z`.
    pub time: String,
    /// The workspace, if any.
    pub workspace: Option<String>,
    /// Who acted.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// What it was done to.
    pub target: String,
    /// The client IP address, if any.
    pub source: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// Further facts, a JSON object.
    pub detail: serde_json::Value,
    /// Hex MAC of the previous entry (64 zeros for entry 1).
    pub prev: String,
    /// Hex MAC of this entry.
    pub mac: String,
}

/// The fields that the MAC covers, borrowed from an entry or a row.
pub(crate) struct Fields<'a> {
    /// Sequence number.
    pub(crate) seq: u64,
    /// Unix milliseconds.
    pub(crate) at: i64,
    /// Workspace, if any.
    pub(crate) workspace: Option<&'a str>,
    /// Actor.
    pub(crate) actor: &'a str,
    /// Action.
    pub(crate) action: &'a str,
    /// Target.
    pub(crate) target: &'a str,
    /// Client IP, if any.
    pub(crate) source: Option<&'a str>,
    /// Outcome as stored.
    pub(crate) outcome: &'a str,
    /// Detail JSON text as stored.
    pub(crate) detail: &'a str,
    /// Hex MAC of the previous entry.
    pub(crate) prev: &'a str,
}

/// Feeds a length-prefixed string into the MAC.
fn feed_str(mac: &mut HmacSha256, text: &str) {
    mac.update(&(text.len() as u64).to_be_bytes());
    mac.update(text.as_bytes());
}

/// Feeds an optional string into the MAC: a presence byte, then the string.
fn feed_opt(mac: &mut HmacSha256, text: Option<&str>) {
    match text {
        None => mac.update(&[0]),
        Some(text) => {
            mac.update(&[1]);
            feed_str(mac, text);
        }
    }
}

/// Feeds the canonical encoding of `fields` (see the module docs) into a
/// clone of `keyed` and returns it, ready to finalise or verify.
pub(crate) fn canonical_mac(keyed: &HmacSha256, fields: &Fields<'_>) -> HmacSha256 {
    let mut mac = keyed.clone();
    mac.update(DOMAIN);
    mac.update(&fields.seq.to_be_bytes());
    mac.update(&fields.at.to_be_bytes());
    feed_opt(&mut mac, fields.workspace);
    feed_str(&mut mac, fields.actor);
    feed_str(&mut mac, fields.action);
    feed_str(&mut mac, fields.target);
    feed_opt(&mut mac, fields.source);
    feed_str(&mut mac, fields.outcome);
    feed_str(&mut mac, fields.detail);
    feed_str(&mut mac, fields.prev);
    mac
}

/// The hex MAC of `entry` as entry `seq` written at `at`, with its detail
/// serialised as `detail` and chained to `prev` (the one encoding of every
/// backend).
pub(crate) fn entry_mac(
    keyed: &HmacSha256,
    seq: u64,
    at: UnixMillis,
    entry: &Entry,
    detail: &str,
    prev: &str,
) -> String {
    let fields = Fields {
        seq,
        at: at.as_millis(),
        workspace: entry.workspace.as_deref(),
        actor: &entry.actor,
        action: &entry.action,
        target: &entry.target,
        source: entry.source.as_deref(),
        outcome: entry.outcome.as_str(),
        detail,
        prev,
    };
    to_hex(&canonical_mac(keyed, &fields).finalize().into_bytes())
}

/// Lowercase hex of `bytes`.
fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// Decodes 64 lowercase hex digits into 32 bytes; `None` for anything else.
pub(crate) fn from_hex32(text: &str) -> Option<[u8; 32]> {
    fn nibble(digit: u8) -> Option<u8> {
        match digit {
            b'0'..=b'9' => Some(digit - b'0'),
            b'a'..=b'f' => Some(digit - b'a' + 10),
            _ => None,
        }
    }
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        let [high, low] = pair else { return None };
        *byte = (nibble(*high)? << 4) | nibble(*low)?;
    }
    Some(out)
}

/// Reads the head row: `(seq, mac)`, or `None` when it is missing.
fn read_head(conn: &Connection) -> Result<Option<(i64, String)>, AuditError> {
    conn.query_row("SELECT seq, mac FROM audit_head WHERE id = 1", [], |row| {
        Ok((row.get(0)?, row.get(1)?))
    })
    .optional()
    .map_err(db("reading the audit head"))
}

/// Appends `entries` to the log at time `at` and returns the sequence
/// number of the last entry (the current last one if `entries` is empty).
///
/// Must run inside a transaction the caller owns and commits: the entries
/// and the new head become visible together with whatever they record.
///
/// # Errors
///
/// [`AuditError::NotInTransaction`] outside a transaction;
/// [`AuditError::DetailNotObject`] before anything is written if a detail is
/// not a JSON object; [`AuditError::HeadMissing`] or
/// [`AuditError::HeadCorrupt`] if the head cannot be read;
/// [`AuditError::Insert`] or [`AuditError::Database`] if SQLite fails. On an
/// error the caller should roll its transaction back.
pub fn append(
    conn: &Connection,
    key: &AuditKey,
    at: UnixMillis,
    entries: &[Entry],
) -> Result<u64, AuditError> {
    if conn.is_autocommit() {
        return Err(AuditError::NotInTransaction);
    }
    if let Some(index) = entries.iter().position(|entry| !entry.detail.is_object()) {
        return Err(AuditError::DetailNotObject { index });
    }
    let (head_seq, head_mac) = read_head(conn)?.ok_or(AuditError::HeadMissing)?;
    let mut seq = u64::try_from(head_seq).map_err(|_| AuditError::HeadCorrupt {
        reason: "its sequence number is negative",
    })?;
    if from_hex32(&head_mac).is_none() {
        return Err(AuditError::HeadCorrupt {
            reason: "its MAC is not 64 lowercase hex digits",
        });
    }
    if entries.is_empty() {
        return Ok(seq);
    }
    let keyed = key.hmac()?;
    let mut insert = conn
        .prepare_cached(&format!(
            "INSERT INTO audit ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
        ))
        .map_err(db("preparing the audit insert"))?;
    let mut prev = head_mac;
    let mut seq_sql = head_seq;
    for entry in entries {
        seq = seq
            .checked_add(1)
            .filter(|next| i64::try_from(*next).is_ok())
            .ok_or(AuditError::SeqOverflow { seq })?;
        seq_sql = seq_sql.saturating_add(1);
        let detail = serde_json::to_string(&entry.detail)
            .map_err(|source| AuditError::Encode { seq, source })?;
        let outcome = entry.outcome.as_str();
        let mac = entry_mac(&keyed, seq, at, entry, &detail, &prev);
        insert
            .execute(params![
                seq_sql,
                at.as_millis(),
                entry.workspace,
                entry.actor,
                entry.action,
                entry.target,
                entry.source,
                outcome,
                detail,
                prev,
                mac,
            ])
            .map_err(|source| AuditError::Insert { seq, source })?;
        prev = mac;
    }
    conn.execute(
        "UPDATE audit_head SET seq = ?1, mac = ?2 WHERE id = 1",
        params![seq_sql, prev],
    )
    .map_err(db("updating the audit head"))?;
    Ok(seq)
}

/// A row of `audit` borrowed from SQLite, with the stored text unchanged.
pub(crate) struct RowView<'r> {
    /// Sequence number.
    pub(crate) seq: u64,
    /// Unix milliseconds.
    pub(crate) at: i64,
    /// Workspace, if any.
    pub(crate) workspace: Option<&'r str>,
    /// Actor.
    pub(crate) actor: &'r str,
    /// Action.
    pub(crate) action: &'r str,
    /// Target.
    pub(crate) target: &'r str,
    /// Client IP, if any.
    pub(crate) source: Option<&'r str>,
    /// Outcome text.
    pub(crate) outcome: &'r str,
    /// Detail JSON text.
    pub(crate) detail: &'r str,
    /// Hex MAC of the previous entry.
    pub(crate) prev: &'r str,
    /// Hex MAC of this entry.
    pub(crate) mac: &'r str,
}

impl RowView<'_> {
    /// The fields the MAC covers.
    fn fields(&self) -> Fields<'_> {
        Fields {
            seq: self.seq,
            at: self.at,
            workspace: self.workspace,
            actor: self.actor,
            action: self.action,
            target: self.target,
            source: self.source,
            outcome: self.outcome,
            detail: self.detail,
            prev: self.prev,
        }
    }
}

/// Reads column `index` (named `name`) as text, or NULL as `None`.
fn opt_text<'r>(row: &'r Row<'_>, index: usize, name: &str) -> Result<Option<&'r str>, String> {
    match row.get_ref(index) {
        Ok(ValueRef::Null) => Ok(None),
        Ok(ValueRef::Text(bytes)) => std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|_| format!("column {name} is not valid UTF-8")),
        Ok(_) => Err(format!("column {name} is not text")),
        Err(error) => Err(format!("column {name} cannot be read: {error}")),
    }
}

/// Reads column `index` (named `name`) as non-NULL text.
fn text<'r>(row: &'r Row<'_>, index: usize, name: &str) -> Result<&'r str, String> {
    opt_text(row, index, name)?.ok_or_else(|| format!("column {name} is NULL"))
}

/// Reads column `index` (named `name`) as an integer.
fn integer(row: &Row<'_>, index: usize, name: &str) -> Result<i64, String> {
    match row.get_ref(index) {
        Ok(ValueRef::Integer(value)) => Ok(value),
        Ok(_) => Err(format!("column {name} is not an integer")),
        Err(error) => Err(format!("column {name} cannot be read: {error}")),
    }
}

/// Borrows the columns of a row selected with [`COLUMNS`], given its
/// already checked sequence number.
fn view<'r>(row: &'r Row<'_>, seq: u64) -> Result<RowView<'r>, String> {
    Ok(RowView {
        seq,
        at: integer(row, 1, "at")?,
        workspace: opt_text(row, 2, "workspace")?,
        actor: text(row, 3, "actor")?,
        action: text(row, 4, "action")?,
        target: text(row, 5, "target")?,
        source: opt_text(row, 6, "source")?,
        outcome: text(row, 7, "outcome")?,
        detail: text(row, 8, "detail")?,
        prev: text(row, 9, "prev")?,
        mac: text(row, 10, "mac")?,
    })
}

/// Reads the row's sequence number as `(raw, checked)`: `checked` is `None`
/// when it is not a positive integer.
fn row_seq(row: &Row<'_>) -> (i64, Option<u64>) {
    let raw = integer(row, 0, "seq").unwrap_or(0);
    (raw, u64::try_from(raw).ok().filter(|seq| *seq > 0))
}

/// Converts a row selected with [`COLUMNS`] into a [`Stored`] entry.
fn stored(row: &Row<'_>) -> Result<Stored, AuditError> {
    let (raw, seq) = row_seq(row);
    let malformed = |reason: String| AuditError::Malformed { seq: raw, reason };
    let seq = seq.ok_or_else(|| malformed("its sequence number is not positive".into()))?;
    let view = view(row, seq).map_err(malformed)?;
    let outcome = Outcome::parse(view.outcome)
        .ok_or_else(|| malformed(format!("unknown outcome {:?}", view.outcome)))?;
    let detail = serde_json::from_str(view.detail)
        .map_err(|error| malformed(format!("its detail is not JSON: {error}")))?;
    Ok(Stored {
        seq,
        at: UnixMillis(view.at),
        time: UnixMillis(view.at).rfc3339(),
        workspace: view.workspace.map(str::to_owned),
        actor: view.actor.to_owned(),
        action: view.action.to_owned(),
        target: view.target.to_owned(),
        source: view.source.map(str::to_owned),
        outcome,
        detail,
        prev: view.prev.to_owned(),
        mac: view.mac.to_owned(),
    })
}

/// Returns up to `limit` entries with `seq > after_seq`, in `seq` order,
/// only those of `workspace` if one is given.
///
/// # Errors
///
/// [`AuditError::Database`] if the query fails; [`AuditError::Malformed`] if
/// a row cannot be decoded (which the schema's checks prevent unless the
/// database was altered).
pub fn read(
    conn: &Connection,
    after_seq: u64,
    limit: usize,
    workspace: Option<&str>,
) -> Result<Vec<Stored>, AuditError> {
    let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let sql = match workspace {
        None => format!("SELECT {COLUMNS} FROM audit WHERE seq > ?1 ORDER BY seq LIMIT ?2"),
        Some(_) => format!(
            "SELECT {COLUMNS} FROM audit WHERE workspace = ?3 AND seq > ?1 ORDER BY seq LIMIT ?2"
        ),
    };
    let mut statement = conn
        .prepare_cached(&sql)
        .map_err(db("preparing the audit listing"))?;
    let mut rows = match workspace {
        None => statement.query(params![after, limit]),
        Some(workspace) => statement.query(params![after, limit, workspace]),
    }
    .map_err(db("listing audit entries"))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(db("listing audit entries"))? {
        out.push(stored(row)?);
    }
    Ok(out)
}

/// Writes every entry with `seq > after_seq` (of `workspace` only, if given)
/// to `out` as JSON lines, one [`Stored`] object per line, and returns the
/// sequence number of the last entry written, or `after_seq` if there was
/// none. Follow mode is the caller's loop: call again with the returned
/// value.
///
/// Entries are read in pages, so no read snapshot stays open while `out`
/// is slow. `out` is flushed at the end.
///
/// # Errors
///
/// As [`read`], plus [`AuditError::Write`] when `out` fails (every entry
/// before the one named was written) and [`AuditError::Encode`].
pub fn stream(
    conn: &Connection,
    after_seq: u64,
    out: &mut impl Write,
    workspace: Option<&str>,
) -> Result<u64, AuditError> {
    let mut last = after_seq;
    let mut line = Vec::new();
    loop {
        let page = read(conn, last, STREAM_PAGE, workspace)?;
        for entry in &page {
            line.clear();
            serde_json::to_writer(&mut line, entry).map_err(|source| AuditError::Encode {
                seq: entry.seq,
                source,
            })?;
            line.push(b'\n');
            out.write_all(&line).map_err(|source| AuditError::Write {
                seq: entry.seq,
                source,
            })?;
            last = entry.seq;
        }
        if page.len() < STREAM_PAGE {
            break;
        }
    }
    out.flush()
        .map_err(|source| AuditError::Write { seq: last, source })?;
    Ok(last)
}

/// What is wrong at one place of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProblemKind {
    /// The entry's MAC does not match its content: a field, the MAC itself,
    /// or the entry's position was changed.
    Edited,
    /// Entries `seq..=last` are missing: the sequence has a gap.
    Removed {
        /// The last missing sequence number.
        last: u64,
    },
    /// The entry verifies, and so does its predecessor, but its `prev` is not
    /// its predecessor's MAC and matches no other entry: entries between them
    /// were removed or replaced by someone holding the key.
    Unlinked,
    /// The entry's `prev` is the MAC of another entry than its predecessor:
    /// entries were moved.
    Reordered {
        /// The position of the entry it is chained to; 0 when it was written
        /// as the first entry of the log.
        chained_to: u64,
    },
    /// Entries `seq..=last` were removed from the end of the log: the head
    /// names a later entry than the last one stored.
    TailRemoved {
        /// The sequence number the head records.
        last: u64,
    },
    /// The head names an earlier entry than the last one stored, or the same
    /// entry with a different MAC.
    HeadMismatch {
        /// The sequence number the head records.
        head_seq: u64,
    },
    /// The head row is missing, so truncation of the end cannot be ruled out.
    HeadMissing,
    /// The row cannot be read as an entry (wrong column types, a sequence
    /// number that is not positive); only possible if the schema was altered.
    Malformed {
        /// What is wrong with it.
        reason: String,
    },
}

/// One problem found by [`verify`], at entry `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The entry where the problem is (for head problems, the last entry;
    /// 0 when no entry applies).
    pub seq: u64,
    /// What is wrong.
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seq = self.seq;
        match &self.kind {
            ProblemKind::Edited => write!(
                f,
                "entry {seq} was edited: its MAC does not match its content"
            ),
            ProblemKind::Removed { last } => {
                if *last == seq {
                    write!(f, "entry {seq} was removed")?;
                } else {
                    write!(f, "entries {seq} to {last} were removed")?;
                }
                if seq <= 1 {
                    write!(f, ": the log starts at entry {}", last.saturating_add(1))
                } else {
                    write!(
                        f,
                        ": the sequence jumps from entry {} to entry {}",
                        seq - 1,
                        last.saturating_add(1)
                    )
                }
            }
            ProblemKind::Unlinked => write!(
                f,
                "entry {seq} is not chained to entry {}: the entries it followed were removed \
                 or replaced by someone holding the audit key",
                seq.saturating_sub(1)
            ),
            ProblemKind::Reordered { chained_to: 0 } => write!(
                f,
                "entry {seq} is out of order: it was written as the first entry of the log"
            ),
            ProblemKind::Reordered { chained_to } => write!(
                f,
                "entry {seq} is out of order: it is chained to the entry now at position \
                 {chained_to}, not to entry {}",
                seq.saturating_sub(1)
            ),
            ProblemKind::TailRemoved { last } => {
                if *last == seq {
                    write!(f, "entry {seq} was removed from the end of the log")?;
                } else {
                    write!(
                        f,
                        "entries {seq} to {last} were removed from the end of the log"
                    )?;
                }
                write!(f, ": the audit head records entry {last}")
            }
            ProblemKind::HeadMismatch { head_seq } if *head_seq == seq => write!(
                f,
                "the audit head records entry {seq} with another MAC than the stored entry \
                 {seq}: the last entry or the head was replaced"
            ),
            ProblemKind::HeadMismatch { head_seq } => write!(
                f,
                "the audit head records entry {head_seq}, but the log ends at entry {seq}: the \
                 head was rolled back or changed, or entries were added outside the daemon"
            ),
            ProblemKind::HeadMissing => write!(
                f,
                "the audit head is missing (the log ends at entry {seq}): removal of entries \
                 from the end cannot be ruled out"
            ),
            ProblemKind::Malformed { reason } => {
                write!(f, "entry {seq} is malformed: {reason}")
            }
        }
    }
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// How many rows the log holds.
    pub entries: u64,
    /// How many of them match their MAC.
    pub verified: u64,
    /// The problems found, in `seq` order, at most [`MAX_PROBLEMS`].
    pub problems: Vec<Problem>,
    /// How many further problems were found but not listed.
    pub omitted: u64,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn is_intact(&self) -> bool {
        self.problems.is_empty() && self.omitted == 0
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_intact() {
            return write!(f, "audit log intact: {} entries verified", self.entries);
        }
        let total = (self.problems.len() as u64).saturating_add(self.omitted);
        write!(
            f,
            "audit log NOT intact: {} entries, {} verified, {total} problems",
            self.entries, self.verified
        )?;
        if self.entries > 0 && self.verified == 0 {
            write!(
                f,
                "\nno entry matches its MAC: the audit key is probably not the one the log \
                 was written with"
            )?;
        }
        for problem in &self.problems {
            write!(f, "\n{problem}")?;
        }
        if self.omitted > 0 {
            write!(f, "\n... and {} more problems", self.omitted)?;
        }
        Ok(())
    }
}

/// The second pass of a [`ChainCheck`] (see [`ChainCheck::links`]).
pub(crate) struct Links<'c> {
    /// The check whose problems it refines.
    check: &'c mut ChainCheck,
    /// Per candidate, the row its `prev` names, once found.
    chained_to: Vec<Option<u64>>,
    /// Candidates by the MAC their `prev` names.
    wanted: HashMap<String, Vec<usize>>,
}

impl Links<'_> {
    /// Whether rows must be fed at all.
    pub(crate) fn needs_scan(&self) -> bool {
        !self.wanted.is_empty()
    }

    /// One row of the chain, in any order.
    pub(crate) fn visit(&mut self, seq: u64, mac: &str) {
        if let Some(indices) = self.wanted.get(mac) {
            for &index in indices {
                if self.chained_to[index].is_none() && self.check.candidates[index].seq != seq {
                    self.chained_to[index] = Some(seq);
                }
            }
        }
    }

    /// Marks what was found.
    pub(crate) fn apply(self) {
        let check = self.check;
        for (candidate, target) in check.candidates.iter().zip(self.chained_to) {
            if let (Some(chained_to), Some(problem)) =
                (target, check.found.problems.get_mut(candidate.problem))
            {
                problem.kind = ProblemKind::Reordered { chained_to };
            }
        }
    }
}

/// A row whose `prev` does not match its predecessor's MAC, to be looked up
/// among all MACs in the second pass of [`verify`].
struct Candidate {
    /// Index of its problem in the report.
    problem: usize,
    /// The row's position.
    seq: u64,
    /// The row's `prev` text.
    prev: String,
}

/// Collects problems up to [`MAX_PROBLEMS`] and counts the rest.
struct Collector {
    /// The listed problems.
    problems: Vec<Problem>,
    /// Problems found beyond the limit.
    omitted: u64,
}

impl Collector {
    /// Records a problem; returns its index, or `None` if it was only counted.
    fn push(&mut self, seq: u64, kind: ProblemKind) -> Option<usize> {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem { seq, kind });
            Some(self.problems.len() - 1)
        } else {
            self.omitted = self.omitted.saturating_add(1);
            None
        }
    }
}

/// Verifies the whole log with `key` and reports every problem found.
///
/// Rows are streamed in `seq` order; memory grows with the number of
/// problems (capped at [`MAX_PROBLEMS`]), not with the size of the log. A
/// second pass over the MACs runs only when some entry's `prev` does not
/// match its predecessor, to tell [`ProblemKind::Reordered`] from
/// [`ProblemKind::Edited`] and [`ProblemKind::Unlinked`]. Both passes and the
/// head read share one snapshot: a read transaction opened here, or the
/// caller's transaction if one is open.
///
/// Classification, for the row at position `p`:
/// - a gap before `p` is [`ProblemKind::Removed`];
/// - a MAC that does not match is [`ProblemKind::Edited`], unless `prev`
///   also differs from the predecessor's MAC and names another row, which
///   makes it [`ProblemKind::Reordered`];
/// - a MAC that matches, with a predecessor that also matches but whose MAC
///   is not `prev`, is [`ProblemKind::Reordered`] if `prev` names another
///   row and [`ProblemKind::Unlinked`] otherwise. When the predecessor itself
///   failed, the broken link is the predecessor's problem and not reported
///   again.
///
/// # Errors
///
/// [`AuditError::Database`] if SQLite fails. Tampering is never an error: it
/// is reported in the [`VerifyReport`].
pub fn verify(conn: &Connection, key: &AuditKey) -> Result<VerifyReport, AuditError> {
    let _snapshot = if conn.is_autocommit() {
        Some(
            conn.unchecked_transaction()
                .map_err(db("opening a read transaction for verification"))?,
        )
    } else {
        None
    };
    let mut check = ChainCheck::new(key)?;
    let mut statement = conn
        .prepare(&format!("SELECT {COLUMNS} FROM audit ORDER BY seq"))
        .map_err(db("preparing the audit verification"))?;
    let mut rows = statement
        .query([])
        .map_err(db("reading the audit log for verification"))?;
    while let Some(row) = rows
        .next()
        .map_err(db("reading the audit log for verification"))?
    {
        let (raw, _) = row_seq(row);
        check.next(raw, |seq| view(row, seq));
    }
    drop(rows);
    drop(statement);

    let mut links = check.links();
    if links.needs_scan() {
        let mut statement = conn
            .prepare("SELECT seq, mac FROM audit ORDER BY seq")
            .map_err(db("preparing the audit MAC lookup"))?;
        let mut rows = statement
            .query([])
            .map_err(db("reading audit MACs for verification"))?;
        while let Some(row) = rows
            .next()
            .map_err(db("reading audit MACs for verification"))?
        {
            let (_, Some(seq)) = row_seq(row) else {
                continue;
            };
            let Ok(Some(mac)) = opt_text(row, 1, "mac") else {
                continue;
            };
            links.visit(seq, mac);
        }
    }
    links.apply();
    check.head(read_head(conn)?);
    Ok(check.finish())
}

/// The checks of one chain, fed its rows in `seq` order, whatever database
/// they come from: the SQLite log's one chain ([`verify`]) and each
/// workspace's chain in the PostgreSQL backend go through the same
/// classification (see [`verify`]).
pub(crate) struct ChainCheck {
    /// The keyed MAC, cloned per row.
    keyed: HmacSha256,
    /// Problems so far.
    found: Collector,
    /// Rows whose `prev` is to be looked up among all MACs.
    candidates: Vec<Candidate>,
    /// Rows seen.
    entries: u64,
    /// Rows that match their MAC.
    verified: u64,
    /// The previous row's MAC (the virtual entry 0 has the zero MAC).
    pred_mac: String,
    /// Whether the previous row verified.
    pred_ok: bool,
    /// The previous row's position.
    last_seq: u64,
}

impl ChainCheck {
    /// A check of a chain, with `key`.
    ///
    /// # Errors
    ///
    /// The key is not accepted by HMAC.
    pub(crate) fn new(key: &AuditKey) -> Result<ChainCheck, AuditError> {
        Ok(ChainCheck {
            keyed: key.hmac()?,
            found: Collector {
                problems: Vec::new(),
                omitted: 0,
            },
            candidates: Vec::new(),
            entries: 0,
            verified: 0,
            pred_mac: String::from(ZERO_MAC),
            pred_ok: true,
            last_seq: 0,
        })
    }

    /// Checks the next row: its stored sequence number `raw`, and its
    /// columns, read by `view` once the number is known to be positive.
    pub(crate) fn next<'r>(
        &mut self,
        raw: i64,
        view: impl FnOnce(u64) -> Result<RowView<'r>, String>,
    ) {
        self.entries = self.entries.saturating_add(1);
        let Some(seq) = u64::try_from(raw).ok().filter(|seq| *seq > 0) else {
            self.found.push(
                0,
                ProblemKind::Malformed {
                    reason: format!("sequence number {raw} is not positive"),
                },
            );
            self.pred_ok = false;
            self.pred_mac.clear();
            return;
        };
        let expected = self.last_seq.saturating_add(1);
        let gap = seq > expected;
        if gap {
            self.found
                .push(expected, ProblemKind::Removed { last: seq - 1 });
        }
        self.last_seq = seq;
        let view = match view(seq) {
            Ok(view) => view,
            Err(reason) => {
                self.found.push(seq, ProblemKind::Malformed { reason });
                self.pred_ok = false;
                self.pred_mac.clear();
                return;
            }
        };
        let row_ok = from_hex32(view.mac).is_some_and(|stored| {
            canonical_mac(&self.keyed, &view.fields())
                .verify_slice(&stored)
                .is_ok()
        });
        if row_ok {
            self.verified = self.verified.saturating_add(1);
        }
        let link_ok = view.prev == self.pred_mac;
        if !row_ok || (!link_ok && !gap && self.pred_ok) {
            let kind = if row_ok {
                ProblemKind::Unlinked
            } else {
                ProblemKind::Edited
            };
            if let Some(problem) = self.found.push(seq, kind)
                && !link_ok
            {
                self.candidates.push(Candidate {
                    problem,
                    seq,
                    prev: view.prev.to_owned(),
                });
            }
        }
        self.pred_ok = row_ok;
        self.pred_mac.clear();
        self.pred_mac.push_str(view.mac);
    }

    /// Second pass, only when some row's `prev` did not match its
    /// predecessor: the caller feeds every row's `(seq, mac)` to the
    /// returned [`Links`] if it [`needs a scan`](Links::needs_scan), then
    /// [`applies`](Links::apply) it, which marks each such row
    /// [`ProblemKind::Reordered`] if its `prev` names another row. Memory is
    /// bounded by the number of such rows, not by the log.
    pub(crate) fn links(&mut self) -> Links<'_> {
        let mut chained_to: Vec<Option<u64>> = vec![None; self.candidates.len()];
        let mut wanted: HashMap<String, Vec<usize>> = HashMap::new();
        for (index, candidate) in self.candidates.iter().enumerate() {
            if candidate.prev == ZERO_MAC {
                // Written as entry 1, but found elsewhere (entry 1 itself
                // never becomes a candidate through a zero `prev`).
                chained_to[index] = Some(0);
            } else {
                wanted
                    .entry(candidate.prev.clone())
                    .or_default()
                    .push(index);
            }
        }
        Links {
            check: self,
            chained_to,
            wanted,
        }
    }

    /// Checks the head against the last row: `(seq, mac)` as stored, or
    /// `None` if the head is missing.
    pub(crate) fn head(&mut self, head: Option<(i64, String)>) {
        let last_seq = self.last_seq;
        match head {
            None => {
                self.found.push(last_seq, ProblemKind::HeadMissing);
            }
            Some((head_seq, head_mac)) => match u64::try_from(head_seq) {
                Err(_) => {
                    self.found.push(
                        last_seq,
                        ProblemKind::Malformed {
                            reason: format!(
                                "the audit head's sequence number {head_seq} is negative"
                            ),
                        },
                    );
                }
                Ok(head_seq) if head_seq > last_seq => {
                    self.found.push(
                        last_seq.saturating_add(1),
                        ProblemKind::TailRemoved { last: head_seq },
                    );
                }
                Ok(head_seq) if head_seq < last_seq || head_mac != self.pred_mac => {
                    self.found
                        .push(last_seq, ProblemKind::HeadMismatch { head_seq });
                }
                Ok(_) => {}
            },
        }
    }

    /// The report.
    pub(crate) fn finish(self) -> VerifyReport {
        VerifyReport {
            entries: self.entries,
            verified: self.verified,
            problems: self.found.problems,
            omitted: self.found.omitted,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: [u8; 32] = [7; 32];

    fn key() -> AuditKey {
        AuditKey::from_bytes(KEY)
    }

    fn open() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(AUDIT_SCHEMA).unwrap();
        conn
    }

    fn entry(n: usize) -> Entry {
        Entry {
            workspace: Some(
                if n.is_multiple_of(2) {
                    "acme"
                } else {
                    "globex"
                }
                .to_owned(),
            ),
            actor: format!("member-{n}"),
            action: "job.start".to_owned(),
            target: format!("job-{n}"),
            source: if n.is_multiple_of(3) {
                None
            } else {
                Some("10.0.0.7".to_owned())
            },
            outcome: Outcome::Success,
            detail: json!({ "n": n, "recipe": "sync" }),
        }
    }

    /// Appends `count` entries (1, 2, ... at times 1000, 2000, ...) in
    /// batches of `batch`, one transaction per batch.
    fn append_n(conn: &mut Connection, key: &AuditKey, count: usize, batch: usize) -> u64 {
        let mut last = 0;
        let mut n = 0;
        while n < count {
            let entries: Vec<Entry> = (n..(n + batch).min(count)).map(|i| entry(i + 1)).collect();
            let tx = conn.transaction().unwrap();
            last = append(&tx, key, UnixMillis(1000 * (n as i64 + 1)), &entries).unwrap();
            tx.commit().unwrap();
            n += entries.len();
        }
        last
    }

    fn chain(count: usize) -> Connection {
        let mut conn = open();
        assert_eq!(append_n(&mut conn, &key(), count, 3), count as u64);
        conn
    }

    /// What an attacker with database access does first.
    fn drop_triggers(conn: &Connection) {
        conn.execute_batch(
            "DROP TRIGGER audit_no_update; DROP TRIGGER audit_no_delete;
             DROP TRIGGER audit_head_no_delete;",
        )
        .unwrap();
    }

    fn tamper(conn: &Connection, sql: &str) {
        drop_triggers(conn);
        conn.execute_batch(sql).unwrap();
    }

    fn problems(conn: &Connection) -> Vec<Problem> {
        verify(conn, &key()).unwrap().problems
    }

    fn problem(seq: u64, kind: ProblemKind) -> Problem {
        Problem { seq, kind }
    }

    /// Recomputes the MAC of row `seq` over its current content, as someone
    /// holding `key` could.
    fn resign(conn: &Connection, key: &AuditKey, seq: u64) {
        let row = &read(conn, seq - 1, 1, None).unwrap()[0];
        let detail: String = conn
            .query_row(
                "SELECT detail FROM audit WHERE seq = ?1",
                [seq as i64],
                |r| r.get(0),
            )
            .unwrap();
        let fields = Fields {
            seq,
            at: row.at.as_millis(),
            workspace: row.workspace.as_deref(),
            actor: &row.actor,
            action: &row.action,
            target: &row.target,
            source: row.source.as_deref(),
            outcome: row.outcome.as_str(),
            detail: &detail,
            prev: &row.prev,
        };
        let mac = to_hex(
            &canonical_mac(&key.hmac().unwrap(), &fields)
                .finalize()
                .into_bytes(),
        );
        conn.execute(
            "UPDATE audit SET mac = ?1 WHERE seq = ?2",
            params![mac, seq as i64],
        )
        .unwrap();
    }

    #[test]
    fn empty_log_verifies() {
        let report = verify(&open(), &key()).unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.entries, 0);
    }

    #[test]
    fn chain_verifies_and_links() {
        let conn = chain(10);
        let report = verify(&conn, &key()).unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!((report.entries, report.verified), (10, 10));
        let rows = read(&conn, 0, 100, None).unwrap();
        assert_eq!(rows.len(), 10);
        assert_eq!(rows[0].prev, ZERO_MAC);
        for (i, pair) in rows.windows(2).enumerate() {
            assert_eq!(pair[0].seq, i as u64 + 1);
            assert_eq!(pair[1].prev, pair[0].mac);
        }
        let head = read_head(&conn).unwrap().unwrap();
        assert_eq!(head, (10, rows[9].mac.clone()));
    }

    #[test]
    fn append_across_calls_continues_the_chain() {
        let mut conn = open();
        let key = key();
        for (batch, expected_last) in [(1, 1), (4, 5), (2, 7)] {
            let entries: Vec<Entry> = (0..batch).map(entry).collect();
            let tx = conn.transaction().unwrap();
            assert_eq!(
                append(&tx, &key, UnixMillis(5), &entries).unwrap(),
                expected_last
            );
            tx.commit().unwrap();
        }
        let tx = conn.transaction().unwrap();
        assert_eq!(append(&tx, &key, UnixMillis(5), &[]).unwrap(), 7);
        drop(tx);
        let report = verify(&conn, &key).unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.entries, 7);
    }

    #[test]
    fn append_rolled_back_with_its_transaction() {
        let mut conn = chain(2);
        let tx = conn.transaction().unwrap();
        assert_eq!(append(&tx, &key(), UnixMillis(1), &[entry(1)]).unwrap(), 3);
        tx.rollback().unwrap();
        let report = verify(&conn, &key()).unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.entries, 2);
    }

    #[test]
    fn append_requires_a_transaction() {
        let conn = open();
        let error = append(&conn, &key(), UnixMillis(1), &[entry(1)]).unwrap_err();
        assert!(matches!(error, AuditError::NotInTransaction), "{error}");
    }

    #[test]
    fn append_refuses_a_detail_that_is_not_an_object() {
        let mut conn = open();
        let mut bad = entry(2);
        bad.detail = json!([1, 2]);
        let tx = conn.transaction().unwrap();
        let error = append(&tx, &key(), UnixMillis(1), &[entry(1), bad]).unwrap_err();
        assert!(
            matches!(error, AuditError::DetailNotObject { index: 1 }),
            "{error}"
        );
        assert_eq!(read(&tx, 0, 10, None).unwrap().len(), 0, "nothing written");
    }

    #[test]
    fn append_without_head_fails() {
        let mut conn = chain(2);
        tamper(&conn, "DELETE FROM audit_head");
        let tx = conn.transaction().unwrap();
        let error = append(&tx, &key(), UnixMillis(1), &[entry(1)]).unwrap_err();
        assert!(matches!(error, AuditError::HeadMissing), "{error}");
    }

    #[test]
    fn triggers_refuse_update_and_delete() {
        let conn = chain(2);
        assert!(conn.execute("UPDATE audit SET actor = 'x'", []).is_err());
        assert!(conn.execute("DELETE FROM audit", []).is_err());
        assert!(conn.execute("DELETE FROM audit_head", []).is_err());
    }

    #[test]
    fn schema_is_idempotent_and_has_the_zero_mac() {
        let conn = chain(3);
        conn.execute_batch(AUDIT_SCHEMA).unwrap();
        assert!(verify(&conn, &key()).unwrap().is_intact());
        assert!(AUDIT_SCHEMA.contains(ZERO_MAC));
    }

    #[test]
    fn edited_fields_are_found_at_their_entry() {
        for change in [
            "UPDATE audit SET actor = 'mallory' WHERE seq = 4",
            "UPDATE audit SET detail = '{\"n\":999}' WHERE seq = 4",
            "UPDATE audit SET outcome = 'denied' WHERE seq = 4",
            "UPDATE audit SET at = at + 1 WHERE seq = 4",
            "UPDATE audit SET workspace = NULL WHERE seq = 4",
            "UPDATE audit SET source = '10.9.9.9' WHERE seq = 4",
            "UPDATE audit SET action = 'job.cancel' WHERE seq = 4",
            "UPDATE audit SET target = 'job-x' WHERE seq = 4",
            "UPDATE audit SET mac = CASE WHEN substr(mac, 1, 1) = 'f' THEN '0' ELSE 'f' END
             || substr(mac, 2) WHERE seq = 4",
        ] {
            let conn = chain(8);
            tamper(&conn, change);
            assert_eq!(
                problems(&conn),
                vec![problem(4, ProblemKind::Edited)],
                "after {change}"
            );
        }
    }

    #[test]
    fn edited_first_and_last_entries() {
        let conn = chain(5);
        tamper(
            &conn,
            "UPDATE audit SET actor = 'x' WHERE seq = 1;
             UPDATE audit SET actor = 'y' WHERE seq = 5;",
        );
        assert_eq!(
            problems(&conn),
            vec![
                problem(1, ProblemKind::Edited),
                problem(5, ProblemKind::Edited)
            ]
        );
    }

    #[test]
    fn edited_prev_is_found() {
        let conn = chain(6);
        tamper(
            &conn,
            &format!(
                "UPDATE audit SET prev = '{}' WHERE seq = 3",
                "ab".repeat(32)
            ),
        );
        assert_eq!(problems(&conn), vec![problem(3, ProblemKind::Edited)]);
    }

    #[test]
    fn removed_middle_entries_are_found() {
        let conn = chain(10);
        tamper(&conn, "DELETE FROM audit WHERE seq = 5");
        let found = problems(&conn);
        assert_eq!(found, vec![problem(5, ProblemKind::Removed { last: 5 })]);
        assert_eq!(
            found[0].to_string(),
            "entry 5 was removed: the sequence jumps from entry 4 to entry 6"
        );

        let conn = chain(10);
        tamper(&conn, "DELETE FROM audit WHERE seq BETWEEN 1 AND 3");
        let found = problems(&conn);
        assert_eq!(found, vec![problem(1, ProblemKind::Removed { last: 3 })]);
        assert_eq!(
            found[0].to_string(),
            "entries 1 to 3 were removed: the log starts at entry 4"
        );
    }

    #[test]
    fn removed_tail_is_found() {
        let conn = chain(10);
        tamper(&conn, "DELETE FROM audit WHERE seq > 7");
        let found = problems(&conn);
        assert_eq!(
            found,
            vec![problem(8, ProblemKind::TailRemoved { last: 10 })]
        );
        assert_eq!(
            found[0].to_string(),
            "entries 8 to 10 were removed from the end of the log: the audit head records entry 10"
        );

        let conn = chain(3);
        tamper(&conn, "DELETE FROM audit");
        assert_eq!(
            problems(&conn),
            vec![problem(1, ProblemKind::TailRemoved { last: 3 })]
        );
    }

    #[test]
    fn tail_and_head_rolled_back_together_is_not_detectable() {
        // The documented limit: a true prefix of the log verifies.
        let conn = chain(10);
        tamper(
            &conn,
            "DELETE FROM audit WHERE seq > 7;
             UPDATE audit_head SET seq = 7, mac = (SELECT mac FROM audit WHERE seq = 7);",
        );
        assert!(problems(&conn).is_empty());
    }

    #[test]
    fn head_problems_are_found() {
        let conn = chain(4);
        tamper(&conn, "DELETE FROM audit_head");
        let found = problems(&conn);
        assert_eq!(found, vec![problem(4, ProblemKind::HeadMissing)]);
        assert!(found[0].to_string().contains("head is missing"));

        // Reapplying the schema recreates the head at 0, which is reported.
        conn.execute_batch(AUDIT_SCHEMA).unwrap();
        assert_eq!(
            problems(&conn),
            vec![problem(4, ProblemKind::HeadMismatch { head_seq: 0 })]
        );

        let conn = chain(4);
        tamper(
            &conn,
            &format!("UPDATE audit_head SET mac = '{}'", "cd".repeat(32)),
        );
        assert_eq!(
            problems(&conn),
            vec![problem(4, ProblemKind::HeadMismatch { head_seq: 4 })]
        );
    }

    #[test]
    fn swapped_rows_are_reordered() {
        let conn = chain(8);
        tamper(
            &conn,
            "CREATE TEMP TABLE t AS SELECT * FROM audit WHERE seq IN (3, 4);
             UPDATE audit SET
                 at = (SELECT at FROM t WHERE t.seq = 7 - audit.seq),
                 workspace = (SELECT workspace FROM t WHERE t.seq = 7 - audit.seq),
                 actor = (SELECT actor FROM t WHERE t.seq = 7 - audit.seq),
                 action = (SELECT action FROM t WHERE t.seq = 7 - audit.seq),
                 target = (SELECT target FROM t WHERE t.seq = 7 - audit.seq),
                 source = (SELECT source FROM t WHERE t.seq = 7 - audit.seq),
                 outcome = (SELECT outcome FROM t WHERE t.seq = 7 - audit.seq),
                 detail = (SELECT detail FROM t WHERE t.seq = 7 - audit.seq),
                 prev = (SELECT prev FROM t WHERE t.seq = 7 - audit.seq),
                 mac = (SELECT mac FROM t WHERE t.seq = 7 - audit.seq)
             WHERE seq IN (3, 4);",
        );
        let found = problems(&conn);
        assert_eq!(
            found,
            vec![
                problem(3, ProblemKind::Reordered { chained_to: 4 }),
                problem(4, ProblemKind::Reordered { chained_to: 2 }),
            ]
        );
        assert_eq!(
            found[0].to_string(),
            "entry 3 is out of order: it is chained to the entry now at position 4, not to entry 2"
        );
    }

    #[test]
    fn first_entry_moved_is_reordered() {
        let conn = chain(5);
        tamper(
            &conn,
            "UPDATE audit SET prev = (SELECT prev FROM audit WHERE seq = 1) WHERE seq = 3",
        );
        assert_eq!(
            problems(&conn),
            vec![problem(3, ProblemKind::Reordered { chained_to: 0 })]
        );
    }

    #[test]
    fn rewrites_by_the_key_holder_are_reordered_or_unlinked() {
        let conn = chain(8);
        drop_triggers(&conn);
        conn.execute(
            "UPDATE audit SET prev = (SELECT mac FROM audit WHERE seq = 2) WHERE seq = 5",
            [],
        )
        .unwrap();
        resign(&conn, &key(), 5);
        let found = problems(&conn);
        assert_eq!(
            found,
            vec![
                problem(5, ProblemKind::Reordered { chained_to: 2 }),
                problem(6, ProblemKind::Unlinked),
            ]
        );
        assert!(
            found[1]
                .to_string()
                .starts_with("entry 6 is not chained to entry 5")
        );
    }

    #[test]
    fn mac_recomputed_with_another_key_is_edited() {
        let conn = chain(8);
        drop_triggers(&conn);
        conn.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 6", [])
            .unwrap();
        resign(&conn, &AuditKey::from_bytes([9; 32]), 6);
        assert_eq!(problems(&conn), vec![problem(6, ProblemKind::Edited)]);
    }

    #[test]
    fn wrong_key_fails_from_entry_1() {
        let conn = chain(5);
        let report = verify(&conn, &AuditKey::from_bytes([8; 32])).unwrap();
        assert_eq!(report.verified, 0);
        assert_eq!(report.problems.len(), 5);
        assert_eq!(report.problems[0], problem(1, ProblemKind::Edited));
        assert!(report.to_string().contains("audit key is probably not"));
    }

    #[test]
    fn problems_are_capped() {
        let mut conn = open();
        append_n(&mut conn, &key(), MAX_PROBLEMS + 5, 1000);
        let report = verify(&conn, &AuditKey::from_bytes([8; 32])).unwrap();
        assert_eq!(report.problems.len(), MAX_PROBLEMS);
        assert_eq!(report.omitted, 5);
        assert!(!report.is_intact());
    }

    #[test]
    fn verify_of_100k_entries() {
        let mut conn = open();
        let key = key();
        append_n(&mut conn, &key, 100_000, 5_000);
        let report = verify(&conn, &key).unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.entries, 100_000);
    }

    #[test]
    fn json_lines_parse_back_with_exactly_the_fields() {
        let conn = chain(5);
        let mut out = Vec::new();
        assert_eq!(stream(&conn, 1, &mut out, None).unwrap(), 5);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        let expected = read(&conn, 1, 10, None).unwrap();
        let fields = [
            "seq",
            "at",
            "time",
            "workspace",
            "actor",
            "action",
            "target",
            "source",
            "outcome",
            "detail",
            "prev",
            "mac",
        ];
        for (line, stored) in lines.iter().zip(&expected) {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let mut keys: Vec<&str> = value
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort_unstable();
            let mut want = fields.to_vec();
            want.sort_unstable();
            assert_eq!(keys, want);
            let back: Stored = serde_json::from_str(line).unwrap();
            assert_eq!(&back, stored);
        }
        let first: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(first["seq"], 2);
        assert_eq!(first["time"], "1970-01-01T00:00:01.000Z");
        assert_eq!(first["outcome"], "success");
        assert_eq!(first["detail"]["n"], 2);

        // Nothing new: the position stays.
        let mut out = Vec::new();
        assert_eq!(stream(&conn, 5, &mut out, None).unwrap(), 5);
        assert!(out.is_empty());
    }

    #[test]
    fn stream_pages_through_long_logs() {
        let mut conn = open();
        append_n(&mut conn, &key(), 2 * STREAM_PAGE + 10, 500);
        let mut out = Vec::new();
        assert_eq!(
            stream(&conn, 0, &mut out, None).unwrap(),
            2 * STREAM_PAGE as u64 + 10
        );
        assert_eq!(
            out.iter().filter(|b| **b == b'\n').count(),
            2 * STREAM_PAGE + 10
        );
    }

    #[test]
    fn workspace_filter() {
        let conn = chain(7);
        let acme = read(&conn, 0, 100, Some("acme")).unwrap();
        assert_eq!(
            acme.iter().map(|s| s.seq).collect::<Vec<_>>(),
            vec![2, 4, 6]
        );
        assert_eq!(read(&conn, 2, 1, Some("globex")).unwrap()[0].seq, 3);
        let mut out = Vec::new();
        assert_eq!(stream(&conn, 0, &mut out, Some("acme")).unwrap(), 6);
        assert_eq!(String::from_utf8(out).unwrap().lines().count(), 3);
        let mut out = Vec::new();
        assert_eq!(stream(&conn, 0, &mut out, Some("nobody")).unwrap(), 0);
    }

    #[test]
    fn write_errors_name_the_entry() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::other("peer went away"))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let conn = chain(3);
        let error = stream(&conn, 1, &mut Broken, None).unwrap_err();
        assert_eq!(
            error.to_string(),
            "could not write audit entry 2 to the stream"
        );
    }

    #[test]
    fn canonical_encoding_separates_fields() {
        // Moving a character from one field into the next changes the MAC.
        let keyed = key().hmac().unwrap();
        let base = Fields {
            seq: 1,
            at: 0,
            workspace: Some("ab"),
            actor: "c",
            action: "a",
            target: "t",
            source: None,
            outcome: "success",
            detail: "{}",
            prev: ZERO_MAC,
        };
        let shifted = Fields {
            workspace: Some("a"),
            actor: "bc",
            ..base
        };
        let none_vs_empty = Fields {
            workspace: Some(""),
            ..base
        };
        let absent = Fields {
            workspace: None,
            ..base
        };
        let macs: Vec<_> = [&base, &shifted, &none_vs_empty, &absent]
            .iter()
            .map(|f| canonical_mac(&keyed, f).finalize().into_bytes())
            .collect();
        for i in 0..macs.len() {
            for j in i + 1..macs.len() {
                assert_ne!(macs[i], macs[j], "{i} vs {j}");
            }
        }
    }

    #[test]
    fn key_debug_shows_nothing() {
        let shown = format!("{:?}", AuditKey::from_bytes([0xab; 32]));
        assert_eq!(shown, "AuditKey { .. }");
    }

    #[test]
    fn hex_round_trip_and_rejects() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(from_hex32(&to_hex(&bytes)), Some(bytes));
        assert_eq!(from_hex32(&"AB".repeat(32)), None);
        assert_eq!(from_hex32("00"), None);
        assert_eq!(from_hex32(&"zz".repeat(32)), None);
    }

    #[test]
    fn rfc3339_formatting() {
        for (millis, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_700_000_000_123, "2023-11-14T22:13:20.123Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
            (253_402_300_799_999, "9999-12-31T23:59:59.999Z"),
        ] {
            assert_eq!(UnixMillis(millis).rfc3339(), text);
        }
        // Extremes do not panic.
        UnixMillis(i64::MIN).rfc3339();
        UnixMillis(i64::MAX).rfc3339();
    }
}

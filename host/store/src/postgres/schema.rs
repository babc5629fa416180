//! The PostgreSQL schema: the same tables and columns as the SQLite
//! backend's (see [`crate::db`]), in PostgreSQL's types, with two
//! differences that several writers need:
//!
//! - the audit log is one chain **per workspace** (and one for entries of
//!   no workspace): `audit_heads` has a row per chain, so nodes writing to
//!   different workspaces never wait on one head row; every entry names its
//!   chain and its place in it (`chain`, `seq`), and `audit.id` orders the
//!   whole log for reading;
//! - schedules fire once per slot across nodes: a job of a schedule carries
//!   its slot key (`jobs.slot_key`, unique).
//!
//! Integers are `BIGINT` (milliseconds since the epoch, as in SQLite),
//! sealed values `BYTEA`, JSON kept as `TEXT` exactly as written (the audit
//! chain's MACs are over those bytes).

/// The schema version this code creates and understands; the same
/// numbering as the SQLite backend's [`crate::db::SCHEMA_VERSION`].
pub const PG_SCHEMA_VERSION: i64 = 11;

/// The whole schema at [`PG_SCHEMA_VERSION`], applied to an empty
/// database. Later versions add migrations beside it.
pub(crate) const SCHEMA: &str = "
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE workspaces (
    name        TEXT PRIMARY KEY,
    wrapped_key BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE TABLE connections (
    workspace  TEXT NOT NULL REFERENCES workspaces(name) ON DELETE RESTRICT,
    name       TEXT NOT NULL,
    sealed     BYTEA NOT NULL,
    hosts      TEXT NOT NULL,
    placement  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    rotated_at BIGINT,
    PRIMARY KEY (workspace, name)
);
CREATE TABLE properties (
    workspace   TEXT NOT NULL,
    environment TEXT NOT NULL,
    name        TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (workspace, environment, name)
);
CREATE TABLE bindings (
    workspace   TEXT NOT NULL,
    environment TEXT NOT NULL,
    logical     TEXT NOT NULL,
    connection  TEXT NOT NULL,
    PRIMARY KEY (workspace, environment, logical)
);
CREATE TABLE recipes (
    workspace      TEXT NOT NULL,
    name           TEXT NOT NULL,
    manifest       TEXT NOT NULL,
    lock           TEXT NOT NULL,
    imported_at    BIGINT NOT NULL,
    signed_version BIGINT,
    signer         TEXT,
    PRIMARY KEY (workspace, name)
);
CREATE TABLE members (
    workspace  TEXT NOT NULL,
    subject    TEXT NOT NULL,
    role       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (workspace, subject)
);
CREATE TABLE roles (
    workspace   TEXT NOT NULL,
    name        TEXT NOT NULL,
    permissions TEXT NOT NULL,
    PRIMARY KEY (workspace, name)
);
CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    workspace    TEXT NOT NULL,
    name         TEXT NOT NULL,
    hash         BYTEA NOT NULL,
    owner        TEXT NOT NULL,
    creator      TEXT NOT NULL,
    scopes       TEXT NOT NULL,
    allow_ips    TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    revoked_at   BIGINT,
    last_used_at BIGINT,
    last_used_ip TEXT
);
CREATE INDEX tokens_workspace ON tokens (workspace);
CREATE TABLE components (
    sha256 TEXT PRIMARY KEY,
    bytes  BYTEA NOT NULL
);
CREATE TABLE triggers (
    id          TEXT PRIMARY KEY,
    workspace   TEXT NOT NULL,
    recipe      TEXT NOT NULL,
    kind        TEXT NOT NULL,
    environment TEXT NOT NULL,
    secret      BYTEA,
    cron        TEXT,
    timezone    TEXT,
    input       BYTEA,
    last_slot   BIGINT,
    created_at  BIGINT NOT NULL,
    respond     TEXT
);
CREATE INDEX triggers_recipe ON triggers (workspace, recipe);
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    workspace       TEXT NOT NULL,
    recipe          TEXT NOT NULL,
    environment     TEXT NOT NULL,
    state           TEXT NOT NULL
        CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    trigger_kind    TEXT NOT NULL,
    payload         BYTEA NOT NULL,
    idempotency_key TEXT,
    rerun_of        TEXT,
    created_at      BIGINT NOT NULL,
    started_at      BIGINT,
    finished_at     BIGINT,
    error           BYTEA,
    erased_at       BIGINT,
    owner           TEXT,
    epoch           BIGINT NOT NULL DEFAULT 0,
    slot_key        TEXT UNIQUE,
    UNIQUE (workspace, recipe, idempotency_key)
);
CREATE INDEX jobs_workspace_created ON jobs (workspace, created_at);
CREATE INDEX jobs_workspace_state_created ON jobs (workspace, state, created_at);
CREATE INDEX jobs_workspace_recipe_created ON jobs (workspace, recipe, created_at);
CREATE INDEX jobs_workspace_recipe_state_created ON jobs (workspace, recipe, state, created_at);
-- The queue: only unfinished jobs, so it stays small however long the
-- history is.
CREATE INDEX jobs_queue ON jobs (state, workspace, created_at, id)
    WHERE state IN ('queued', 'running');
CREATE TABLE job_steps (
    job        TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    idx        BIGINT NOT NULL,
    step       TEXT NOT NULL,
    status     TEXT NOT NULL,
    history    BYTEA NOT NULL,
    checkpoint BYTEA,
    PRIMARY KEY (job, idx)
);
CREATE TABLE settings (
    workspace          TEXT PRIMARY KEY,
    retention_days     BIGINT,
    require_signatures BIGINT NOT NULL DEFAULT 0,
    review_grants      BIGINT NOT NULL DEFAULT 0,
    session_idle_secs  BIGINT
);
CREATE TABLE audit (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    chain     TEXT NOT NULL,
    seq       BIGINT NOT NULL CHECK (seq > 0),
    at        BIGINT NOT NULL,
    workspace TEXT,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    target    TEXT NOT NULL,
    source    TEXT,
    outcome   TEXT NOT NULL CHECK (outcome IN ('success', 'failure', 'denied')),
    detail    TEXT NOT NULL,
    prev      TEXT NOT NULL CHECK (length(prev) = 64),
    mac       TEXT NOT NULL CHECK (length(mac) = 64),
    UNIQUE (chain, seq)
);
CREATE INDEX audit_workspace_id ON audit (workspace, id);
CREATE TABLE audit_heads (
    chain TEXT PRIMARY KEY,
    seq   BIGINT NOT NULL CHECK (seq >= 0),
    mac   TEXT NOT NULL CHECK (length(mac) = 64)
);
CREATE FUNCTION wrun_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit entries are append-only';
END;
$$;
CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION wrun_audit_append_only();
CREATE FUNCTION wrun_audit_head_kept() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'an audit head cannot be deleted';
END;
$$;
CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_heads
    FOR EACH ROW EXECUTE FUNCTION wrun_audit_head_kept();
CREATE TABLE oauth_clients (
    workspace     TEXT NOT NULL,
    name          TEXT NOT NULL,
    config        TEXT NOT NULL,
    client_secret BYTEA NOT NULL,
    refresh_token BYTEA,
    state         TEXT NOT NULL CHECK (state IN ('pending', 'ready', 'needs_reauth')),
    reason        TEXT,
    expires_at    BIGINT,
    refreshed_at  BIGINT,
    lease_holder  TEXT,
    lease_until   BIGINT,
    PRIMARY KEY (workspace, name),
    FOREIGN KEY (workspace, name) REFERENCES connections (workspace, name) ON DELETE CASCADE
);
CREATE TABLE oauth_authorizations (
    state_hash   BYTEA PRIMARY KEY,
    workspace    TEXT NOT NULL,
    name         TEXT NOT NULL,
    verifier     BYTEA NOT NULL,
    redirect_uri TEXT NOT NULL,
    actor        TEXT NOT NULL,
    expires_at   BIGINT NOT NULL,
    FOREIGN KEY (workspace, name) REFERENCES connections (workspace, name) ON DELETE CASCADE
);
CREATE TABLE pending_recipes (
    workspace      TEXT NOT NULL,
    name           TEXT NOT NULL,
    id             TEXT NOT NULL,
    manifest       TEXT NOT NULL,
    lock           TEXT NOT NULL,
    signed_version BIGINT,
    signer         TEXT,
    review         TEXT NOT NULL,
    submitted_by   TEXT NOT NULL,
    submitted_at   BIGINT NOT NULL,
    PRIMARY KEY (workspace, name)
);
CREATE TABLE signing_keys (
    workspace  TEXT NOT NULL,
    name       TEXT NOT NULL,
    id         TEXT NOT NULL,
    public_key TEXT NOT NULL,
    added_at   BIGINT NOT NULL,
    revoked_at BIGINT,
    PRIMARY KEY (workspace, name),
    UNIQUE (workspace, id)
);
CREATE TABLE connection_limits (
    workspace TEXT NOT NULL,
    name      TEXT NOT NULL,
    limits    TEXT NOT NULL,
    PRIMARY KEY (workspace, name)
);
CREATE TABLE connection_suspensions (
    workspace    TEXT NOT NULL,
    name         TEXT NOT NULL,
    reason       TEXT NOT NULL,
    suspended_at BIGINT NOT NULL,
    PRIMARY KEY (workspace, name)
);
CREATE TABLE connection_usage (
    workspace  TEXT NOT NULL,
    connection TEXT NOT NULL,
    minute     BIGINT NOT NULL,
    recipe     TEXT NOT NULL,
    step       TEXT NOT NULL,
    job        TEXT NOT NULL,
    host       TEXT NOT NULL,
    requests   BIGINT NOT NULL,
    bytes_out  BIGINT NOT NULL,
    bytes_in   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (workspace, connection, minute, job, step, host)
);
CREATE TABLE console_sessions (
    id_hash    TEXT PRIMARY KEY,
    workspace  TEXT NOT NULL,
    subject    TEXT NOT NULL,
    token_id   TEXT,
    role       TEXT,
    created_at BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    ip         TEXT NOT NULL,
    CHECK ((token_id IS NULL) <> (role IS NULL))
);
CREATE INDEX console_sessions_subject ON console_sessions (workspace, subject);
CREATE INDEX console_sessions_token ON console_sessions (token_id);
CREATE TABLE nodes (
    id          TEXT PRIMARY KEY,
    started_at  BIGINT NOT NULL,
    lease_until BIGINT NOT NULL
);
";

//! Errors at the library boundary.
//!
//! Every variant carries what the user must fix and where: the step, the
//! component, the grant. Text that came from a guest or an upstream has been
//! masked before it is put into an error, so no secret value, placeholder or
//! guest-marked value can reach a log line through an error message.

use std::time::Duration;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when loading, granting or running a step.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The engine configuration is invalid (for example a limit of zero).
    #[error("invalid engine configuration: {0}")]
    Config(String),

    /// The bytes are not a valid WebAssembly component, or compiling failed.
    #[error("component `{component}` could not be compiled: {reason}")]
    Compile {
        /// Name the component was loaded under.
        component: String,
        /// What the compiler said.
        reason: String,
    },

    /// The component does not fit the `wrun:recipe/step` world: it imports
    /// something wrun does not provide, or lacks the `actions` export.
    #[error("component `{component}` does not match the wrun:recipe/step world: {reason}")]
    WitMismatch {
        /// Name the component was loaded under.
        component: String,
        /// The import or export at fault.
        reason: String,
    },

    /// A grant could not be parsed.
    #[error("step `{step}`: invalid `{grant}` grant: {reason}")]
    InvalidGrant {
        /// The step whose grants are at fault.
        step: String,
        /// The grant (`net`, `secrets`, `mask`, `timeout`, `memory`, `env`).
        grant: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The component imports an interface that the step has no grant for.
    #[error("step `{step}`: component imports `{import}` but the step has no `{grant}` grant")]
    MissingGrant {
        /// The step.
        step: String,
        /// The import, for example `wrun:recipe/secrets@0.1.0`.
        import: String,
        /// The grant that would allow it.
        grant: &'static str,
    },

    /// A connection named by the step's `secrets` grant could not be had.
    #[error("step `{step}`: secret alias `{alias}` (connection `{connection}`): {reason}")]
    Connection {
        /// The step.
        step: String,
        /// The step-local alias.
        alias: String,
        /// The workspace connection it is bound to.
        connection: String,
        /// What went wrong (never the value).
        reason: String,
    },

    /// The action is not exported by the component.
    #[error("step `{step}`: component has no action `{action}` (it exports: {available})")]
    UnknownAction {
        /// The step.
        step: String,
        /// The requested action.
        action: String,
        /// The actions the component exports, comma separated.
        available: String,
    },

    /// The step's input was not accepted by the action.
    #[error("step `{step}`: action `{action}` rejected its input: {reason}")]
    InvalidInput {
        /// The step.
        step: String,
        /// The action.
        action: String,
        /// What the guest said (masked).
        reason: String,
    },

    /// The action ran and reported a failure.
    #[error("step `{step}`: action `{action}` failed: {message}")]
    ActionFailed {
        /// The step.
        step: String,
        /// The action.
        action: String,
        /// What the guest said (masked).
        message: String,
    },

    /// The action returned something that is not a JSON document.
    #[error("step `{step}`: action `{action}` returned invalid JSON: {reason}")]
    InvalidOutput {
        /// The step.
        step: String,
        /// The action.
        action: String,
        /// The JSON parser's message.
        reason: String,
    },

    /// The step tried to grow its memories beyond the `memory` limit.
    #[error("step `{step}` exceeded its memory limit of {limit} bytes")]
    MemoryLimit {
        /// The step.
        step: String,
        /// The limit in bytes, all memories of the step together.
        limit: u64,
    },

    /// The step made the host hold more than its [`crate::StepBudget`]
    /// allows: resource-table entries, or bytes held by `wasi:http` fields,
    /// requests and request bodies.
    #[error("step `{step}` exceeded its host resource budget: more than {limit} {what}")]
    ResourceLimit {
        /// The step.
        step: String,
        /// Which resource, for example `resource table entries`.
        what: &'static str,
        /// The budget for it.
        limit: u64,
    },

    /// The step ran longer than its `timeout`.
    #[error("step `{step}` exceeded its time limit of {limit:?}")]
    Timeout {
        /// The step.
        step: String,
        /// The limit.
        limit: Duration,
    },

    /// The guest trapped: a panic, a stack overflow, an invalid operation.
    #[error("step `{step}` trapped: {message}")]
    Trap {
        /// The step.
        step: String,
        /// The trap, and the guest's panic message when there was one (masked).
        message: String,
    },

    /// A connection value appeared in the step's input or in something the
    /// guest produced (its output, a log line, stdout or stderr, an error or
    /// panic message, a request). A guest never holds a connection value, so
    /// this is a guess or a leak: the step fails, its input and events are
    /// withheld from its record, and the message says where, never what or
    /// which candidate.
    #[error(
        "step `{step}`: a connection value appeared in its {channel}, where none belongs: secret misuse (the step's events were withheld)"
    )]
    SecretMisuse {
        /// The step.
        step: String,
        /// Where: `input`, `output`, `log`, `stdout`, `stderr`,
        /// `error message` or `request`.
        channel: &'static str,
    },

    /// The engine is running as many steps as its instance pool holds
    /// ([`crate::EngineBuilder::max_concurrent_steps`]); retry later.
    #[error("step `{step}` could not start: the engine is at its concurrency limit ({reason})")]
    Busy {
        /// The step.
        step: String,
        /// Which pool is full.
        reason: String,
    },

    /// An unexpected failure of the runtime itself.
    #[error("step `{step}`: runtime failure: {reason}")]
    Internal {
        /// The step.
        step: String,
        /// What failed (masked).
        reason: String,
    },
}

impl Error {
    /// The step this error is about, when it is about one.
    pub fn step(&self) -> Option<&str> {
        match self {
            Error::Config(_) | Error::Compile { .. } | Error::WitMismatch { .. } => None,
            Error::InvalidGrant { step, .. }
            | Error::MissingGrant { step, .. }
            | Error::Connection { step, .. }
            | Error::UnknownAction { step, .. }
            | Error::InvalidInput { step, .. }
            | Error::ActionFailed { step, .. }
            | Error::InvalidOutput { step, .. }
            | Error::MemoryLimit { step, .. }
            | Error::ResourceLimit { step, .. }
            | Error::Timeout { step, .. }
            | Error::Trap { step, .. }
            | Error::SecretMisuse { step, .. }
            | Error::Busy { step, .. }
            | Error::Internal { step, .. } => Some(step),
        }
    }
}

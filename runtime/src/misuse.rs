//! Secret misuse: a connection value in anything a guest produces.
//!
//! A guest never holds a connection's value: it gets a placeholder, and
//! responses are scrubbed before it reads them. So a value in what a guest
//! produces (its output, a log line, stdout or stderr, an error or panic
//! message, a request it sends) can only be a guess or a leak. Masking it
//! would answer the guess (the one candidate shown as `***` is the value),
//! so it is not masked: the step fails with [`Error::SecretMisuse`], which
//! says where but not what, the step's events are withheld from its record
//! (their order would point at the candidate), and one
//! [`AuditKind::SecretMisuse`] event is reported. Values a guest marked
//! itself (`mask.mark`) and placeholders are masked as before: the guest
//! knows them already.
//!
//! [`StepMisuse`] is the one owner of this per step: it searches with the
//! job's [`Masker`] over connection values (the same encodings the masker
//! knows), records the first catch, and is shared by the log interface,
//! stdout and stderr capture, the output and error mapping, the egress and
//! the epoch callback (which stops the guest once a catch is recorded).

use std::sync::{Arc, OnceLock};

use crate::error::Error;
use crate::events::{AuditEvent, AuditKind, Observer};
use crate::mask::Masker;
use crate::secrets::JobSecret;

/// What the guest is told when a request of it is refused for misuse.
pub(crate) const MISUSE_REFUSAL: &str =
    "the request holds the value of a connection (secret misuse); the step is stopped";

/// Where a guest produced a connection value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    /// The step's input (its masked record would show which part matched).
    Input,
    /// The JSON the action returned.
    Output,
    /// A line of the `log` interface (or a name the guest passed to a host
    /// call that logs it).
    Log,
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
    /// An error, panic or trap message.
    Error,
    /// An outgoing request: URL, headers or body.
    Request,
}

impl Channel {
    /// The channel as named in errors and audit entries.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Channel::Input => "input",
            Channel::Output => "output",
            Channel::Log => "log",
            Channel::Stdout => "stdout",
            Channel::Stderr => "stderr",
            Channel::Error => "error message",
            Channel::Request => "request",
        }
    }
}

/// The connection values of a job, to search for.
#[derive(Clone, Default)]
pub(crate) struct Detector {
    /// Every connection value of the job and its encodings.
    values: Masker,
    /// The job's secrets, to name the connection once a value is found.
    secrets: Vec<Arc<JobSecret>>,
}

impl Detector {
    /// A detector for these secrets, whose values `values` searches for.
    pub(crate) fn new(values: Masker, secrets: Vec<Arc<JobSecret>>) -> Detector {
        Detector { values, secrets }
    }

    /// The name of a connection whose value is in `text`, if any.
    fn find(&self, text: &[u8]) -> Option<String> {
        if !self.values.contains(text) {
            return None;
        }
        // Rare: build one masker per connection to name the one found.
        let named = self
            .secrets
            .iter()
            .find(|s| Masker::new([s.connection.value().expose().as_bytes()]).contains(text));
        Some(named.map_or_else(String::new, |s| s.connection.name().to_string()))
    }
}

/// The first misuse caught in a step.
#[derive(Debug, Clone)]
struct Caught {
    channel: Channel,
}

/// Who a step is, for the audit event.
pub(crate) struct StepIdentity {
    pub(crate) job: String,
    pub(crate) workspace: String,
    pub(crate) recipe: String,
    pub(crate) step: String,
}

/// The misuse watch of one step.
pub(crate) struct StepMisuse {
    detector: Detector,
    who: StepIdentity,
    observer: Arc<dyn Observer>,
    caught: OnceLock<Caught>,
}

impl std::fmt::Debug for StepMisuse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepMisuse")
            .field("step", &self.who.step)
            .field("caught", &self.caught.get())
            .finish_non_exhaustive()
    }
}

impl StepMisuse {
    /// A watch over `detector`'s values for one step.
    pub(crate) fn new(
        detector: Detector,
        who: StepIdentity,
        observer: Arc<dyn Observer>,
    ) -> StepMisuse {
        StepMisuse {
            detector,
            who,
            observer,
            caught: OnceLock::new(),
        }
    }

    /// The longest byte pattern searched for (a streamed text must be
    /// searched with this much of what came before, less one byte).
    pub(crate) fn max_pattern_len(&self) -> usize {
        self.detector.values.max_pattern_len()
    }

    /// Searches what the guest produced on `channel`. Returns `true` when
    /// the step is caught (now or before): the text must then go nowhere.
    pub(crate) fn check(&self, channel: Channel, text: &[u8]) -> bool {
        if self.caught.get().is_some() {
            return true;
        }
        let Some(connection) = self.detector.find(text) else {
            return false;
        };
        if self.caught.set(Caught { channel }).is_ok() {
            self.record(channel, connection);
        }
        true
    }

    /// Whether misuse was caught in this step.
    pub(crate) fn is_caught(&self) -> bool {
        self.caught.get().is_some()
    }

    /// The step's error, once misuse was caught.
    pub(crate) fn error(&self) -> Option<Error> {
        self.caught.get().map(|c| Error::SecretMisuse {
            step: self.who.step.clone(),
            channel: c.channel.name(),
        })
    }

    /// Reports the audit event: the channel and the connection's name,
    /// never the text.
    fn record(&self, channel: Channel, connection: String) {
        tracing::warn!(
            step = %self.who.step,
            channel = channel.name(),
            connection = %connection,
            "secret misuse: a connection value in what the guest produced"
        );
        self.observer.audit(&AuditEvent {
            kind: AuditKind::SecretMisuse,
            job: self.who.job.clone(),
            workspace: self.who.workspace.clone(),
            recipe: self.who.recipe.clone(),
            step: self.who.step.clone(),
            connection: (!connection.is_empty()).then_some(connection),
            destination: channel.name().to_string(),
            reason: format!(
                "a connection value appeared in the step's {}, where none belongs: the step was failed and its events withheld",
                channel.name()
            ),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::CollectingObserver;
    use crate::secrets::{Connection, Placement, SecretValue};

    const VALUE: &str = "ghp_Zq8VwX2mK4tR7yB1nC5dF9hJ3lP6sA0eGiUo";

    fn watch() -> (StepMisuse, Arc<CollectingObserver>) {
        let secret = Arc::new(JobSecret {
            connection: Connection::new(
                "gh",
                SecretValue::new(VALUE),
                ["api.example.com"],
                Placement::bearer(),
            )
            .unwrap(),
            placeholder: crate::secrets::new_placeholder(),
        });
        let observer = CollectingObserver::new();
        let who = StepIdentity {
            job: "j".into(),
            workspace: "w".into(),
            recipe: "r".into(),
            step: "s".into(),
        };
        let detector = Detector::new(Masker::new([VALUE]), vec![secret]);
        (StepMisuse::new(detector, who, observer.clone()), observer)
    }

    #[test]
    fn a_value_in_any_encoding_is_caught_once_and_named_by_connection_only() {
        let (watch, observer) = watch();
        assert!(!watch.check(Channel::Log, b"candidate ghp_0000 and others"));
        assert!(watch.error().is_none());
        // Base64 of the value, among other candidates.
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode(VALUE);
        let candidates = format!("[\"ghp_a\", \"{encoded}\", \"ghp_b\"]");
        assert!(watch.check(Channel::Output, candidates.as_bytes()));
        // Caught: every later text is refused too, without a second audit.
        assert!(watch.check(Channel::Log, b"harmless"));
        let error = watch.error().unwrap().to_string();
        assert_eq!(
            error,
            "step `s`: a connection value appeared in its output, where none belongs: secret misuse (the step's events were withheld)"
        );
        let audits = observer.audits();
        assert_eq!(audits.len(), 1);
        assert_eq!(audits[0].kind, AuditKind::SecretMisuse);
        assert_eq!(audits[0].connection.as_deref(), Some("gh"));
        let all = format!("{error}{audits:?}");
        assert!(!all.contains(VALUE) && !all.contains("ghp_a"), "{all}");
    }
}

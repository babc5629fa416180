//! Erasure by data subject: finding one person's data in job history and
//! destroying the content of the records that hold it.
//!
//! A subject (an e-mail address, a name, an identifier) is looked for,
//! case-insensitively, in every string, object key and number of a job's
//! trigger payload, error, step records (inputs, outputs, logs, errors,
//! request lines) and checkpoints, as the records decode: JSON escapes
//! (`\u0040`) are already undone, percent-encoding in URLs and form bodies
//! (`alice%40example.com`, `Alice+Smith`) is decoded, and a string that is
//! itself a JSON document (a response body kept as text) is searched as one.
//!
//! A matching job that has ended loses its content: the payload becomes
//! `null`, the error and checkpoints are dropped, each step record keeps
//! only its name, status, attempts and time, and an idempotency key that
//! names the subject is cleared. What identifies nobody (job id, recipe,
//! environment, trigger kind, states, times) stays, with the time of the
//! erasure. A job still queued or running is counted, not touched: its
//! payload is what it runs on, so the caller erases again once it ends.
//!
//! The storage scans a workspace's jobs in pages ([`PAGE`] jobs with their
//! steps), decrypting one page at a time, so memory stays bounded by a page
//! plus the list of matches; the rewrite is one transaction.

use aho_corasick::AhoCorasick;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::storage::StorageError;

/// Jobs read and decrypted at a time.
pub(crate) const PAGE: usize = 500;

/// Shortest subject accepted: anything shorter matches too much history.
pub const MIN_SUBJECT_CHARS: usize = 3;

/// Longest subject accepted.
pub const MAX_SUBJECT_CHARS: usize = 256;

/// A data subject to look for, case-insensitively.
#[derive(Clone)]
pub struct Subject {
    lower: String,
    /// The lowercase subject, matched ignoring ASCII case: the search in
    /// ASCII text and the first look at a whole record.
    ascii: AhoCorasick,
}

impl std::fmt::Debug for Subject {
    /// Leaves the subject out: it is personal data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subject").finish_non_exhaustive()
    }
}

impl Subject {
    /// Checks and normalises a subject: trimmed, [`MIN_SUBJECT_CHARS`] to
    /// [`MAX_SUBJECT_CHARS`] characters, no control characters.
    ///
    /// # Errors
    ///
    /// [`StorageError::Invalid`] with code `invalid_subject`; the message
    /// does not repeat the subject.
    pub fn new(subject: &str) -> Result<Subject, StorageError> {
        let trimmed = subject.trim();
        let chars = trimmed.chars().count();
        let refuse = |message: String| StorageError::Invalid {
            code: "invalid_subject",
            message,
        };
        if chars < MIN_SUBJECT_CHARS {
            return Err(refuse(format!(
                "the subject must have at least {MIN_SUBJECT_CHARS} characters (a shorter one would match too much history)"
            )));
        }
        if chars > MAX_SUBJECT_CHARS {
            return Err(refuse(format!(
                "the subject must have at most {MAX_SUBJECT_CHARS} characters"
            )));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(refuse(
                "the subject must not contain control characters".into(),
            ));
        }
        let lower = trimmed.to_lowercase();
        let ascii = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build([&lower])
            .map_err(|e| refuse(format!("the subject cannot be searched for: {e}")))?;
        Ok(Subject { lower, ascii })
    }

    /// Whether the subject occurs anywhere in a record given as the JSON
    /// text it is stored as.
    ///
    /// Most records do not mention the subject and are plain: ASCII, no
    /// escape, nothing percent-encoded. Such a record's strings, keys and
    /// numbers read exactly as they are written, so one search of the
    /// text settles it without building the document. Every other record
    /// (a hit to confirm, escapes, `%`, `+`, non-ASCII text) is parsed and
    /// searched value by value.
    ///
    /// # Errors
    ///
    /// The text is not JSON.
    pub fn found_in_json(&self, text: &[u8]) -> Result<bool, serde_json::Error> {
        let plain = text.is_ascii() && !text.iter().any(|b| matches!(b, b'\\' | b'%' | b'+'));
        if plain && !self.ascii.is_match(text) {
            return Ok(false);
        }
        Ok(self.found_in(&serde_json::from_slice(text)?))
    }

    /// Whether the subject occurs anywhere in `value`.
    pub fn found_in(&self, value: &Value) -> bool {
        self.found_at_depth(value, 0)
    }

    fn found_at_depth(&self, value: &Value, depth: usize) -> bool {
        match value {
            Value::Null | Value::Bool(_) => false,
            Value::Number(n) => self.found_in_text(&n.to_string(), depth),
            Value::String(s) => self.found_in_text(s, depth),
            Value::Array(items) => items.iter().any(|v| self.found_at_depth(v, depth)),
            Value::Object(map) => map
                .iter()
                .any(|(k, v)| self.found_in_text(k, depth) || self.found_at_depth(v, depth)),
        }
    }

    /// Plain text, its percent-decoded form, and a JSON document inside it.
    fn found_in_text(&self, text: &str, depth: usize) -> bool {
        if text.len() < self.lower.len() / 4 {
            // No lowercase form of a string this short holds the subject
            // (lowercasing grows a character by at most a factor of 3).
            return false;
        }
        let hit = if text.is_ascii() {
            self.ascii.is_match(text)
        } else {
            text.to_lowercase().contains(&self.lower)
        };
        if hit {
            return true;
        }
        if text.contains('%') || text.contains('+') {
            let plus = text.replace('+', " ");
            let decoded = percent_encoding::percent_decode_str(&plus).decode_utf8_lossy();
            if decoded.to_lowercase().contains(&self.lower) {
                return true;
            }
        }
        // A response body or a logged document kept as a string; nested
        // documents are followed a few levels deep only.
        let trimmed = text.trim_start();
        if depth < 4
            && (trimmed.starts_with('{') || trimmed.starts_with('['))
            && let Ok(inner) = serde_json::from_str::<Value>(text)
        {
            return self.found_at_depth(&inner, depth + 1);
        }
        false
    }
}

/// What an erasure found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct EraseReport {
    /// Jobs of the workspace looked at.
    pub scanned: u64,
    /// Jobs that mention the subject.
    pub matched: u64,
    /// Jobs whose content was destroyed now.
    pub erased: u64,
    /// Matching jobs still queued or running, left untouched: erase again
    /// once they end.
    pub active: u64,
    /// Whether the write-ahead log was emptied afterwards, so that no copy
    /// of the destroyed records stays in it (false when nothing was erased,
    /// or when a long reader kept it: the next checkpoint overwrites it).
    pub log_cleared: bool,
}

/// A step record reduced to what identifies nobody: its name, status,
/// attempts and time, marked as erased.
pub(crate) fn erased_step(record: &Value) -> Value {
    let mut kept = Map::new();
    for key in ["step", "status", "attempts", "elapsed_ms"] {
        if let Some(v) = record.get(key) {
            kept.insert(key.into(), v.clone());
        }
    }
    kept.insert("input".into(), Value::Null);
    kept.insert("output".into(), Value::Null);
    kept.insert("error".into(), Value::Null);
    kept.insert("events".into(), Value::Array(Vec::new()));
    kept.insert("erased".into(), Value::Bool(true));
    Value::Object(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn subject(s: &str) -> Subject {
        Subject::new(s).expect("a valid subject")
    }

    #[test]
    fn found_in_any_case_key_number_and_nesting() {
        let s = subject("Alice@Example.com");
        assert!(s.found_in(&json!({"to": "ALICE@example.COM"})));
        assert!(s.found_in(&json!({"alice@example.com": 1})));
        assert!(s.found_in(&json!([[{"deep": ["x", "mail alice@example.com now"]}]])));
        assert!(!s.found_in(&json!({"to": "bob@example.com", "n": 5, "b": true})));
        let id = subject("4711");
        assert!(id.found_in(&json!({"customer": 994711})));
        assert!(!id.found_in(&json!({"customer": 4710})));
    }

    #[test]
    fn found_through_escapes_percent_encoding_forms_and_inner_documents() {
        let s = subject("alice@example.com");
        // A JSON escape is undone by parsing.
        let escaped: Value =
            serde_json::from_str(r#"{"v": "alice\u0040example.com"}"#).expect("json");
        assert!(s.found_in(&escaped));
        assert!(s.found_in(&json!({"url": "https://api.test/users/alice%40Example.com"})));
        assert!(s.found_in(&json!({"body": "{\"email\":\"alice\\u0040example.com\"}"})));
        let name = subject("Alice Smith");
        assert!(name.found_in(&json!({"form": "name=alice+smith&x=1"})));
        assert!(name.found_in(&json!({"form": "name=Alice%20Smith"})));
        // Unicode case folding, not only ASCII.
        let ü = subject("JÜRGEN");
        assert!(ü.found_in(&json!({"n": "jürgen"})));
    }

    #[test]
    fn a_record_text_is_searched_like_its_document() {
        let s = subject("Alice@Example.com");
        let cases = [
            json!({"to": "bob@example.com", "n": 12.5, "list": [1, 2]}),
            json!({"to": "ALICE@example.com"}),
            json!({"url": "https://x.test/u/alice%40example.com"}),
            json!({"body": "{\"m\":\"alice\\u0040example.com\"}"}),
            json!({"name": "Jürgen", "to": "alice@example.com"}),
            json!({"name": "Jürgen"}),
            json!({"phone": "+49 30 1234"}),
        ];
        for value in cases {
            let text = serde_json::to_vec(&value).expect("json");
            assert_eq!(
                s.found_in_json(&text).expect("parsed"),
                s.found_in(&value),
                "{value}"
            );
        }
        assert!(s.found_in_json(b"{\\not json").is_err());
    }

    #[test]
    fn short_or_control_subjects_are_refused_without_echoing_them() {
        for bad in ["", "  a ", "ab", "x\u{0}y\nz"] {
            let err = Subject::new(bad).expect_err("refused");
            assert!(matches!(
                err,
                StorageError::Invalid {
                    code: "invalid_subject",
                    ..
                }
            ));
        }
        let long = "q".repeat(MAX_SUBJECT_CHARS + 1);
        let err = Subject::new(&long).expect_err("too long").to_string();
        assert!(!err.contains("qqq"), "{err}");
        assert_eq!(format!("{:?}", subject("secret-person")), "Subject { .. }");
    }

    #[test]
    fn an_erased_step_keeps_timing_and_status_only() {
        let record = json!({
            "step": "send", "status": "succeeded", "attempts": 2, "elapsed_ms": 31,
            "input": {"email": "alice@example.com"}, "output": {"id": 1},
            "error": null, "events": [{"log": "alice"}]
        });
        let erased = erased_step(&record);
        assert_eq!(
            erased,
            json!({"step": "send", "status": "succeeded", "attempts": 2, "elapsed_ms": 31,
                   "input": null, "output": null, "error": null, "events": [], "erased": true})
        );
        assert!(!subject("alice").found_in(&erased));
    }
}

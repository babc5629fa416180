//! A step's host-side footprint, bounded.
//!
//! A guest's linear memory is capped by its `memory` grant, but what it makes
//! the host hold is not in that memory: resource-table entries, `wasi:http`
//! fields and requests, buffered request bodies, and the events, log lines
//! and refusals the step reports. [`StepBudget`] bounds each of them per
//! step:
//!
//! - [`Footprint`] caps the resource table (`ResourceTable::set_max_capacity`)
//!   and counts the bytes held by the step's `wasi:http` objects (see
//!   [`held_bytes`]); above the budget the step's table is emptied (freeing
//!   everything at once), the guest traps at its next resource call or epoch
//!   tick, and the step fails with [`crate::Error::ResourceLimit`];
//! - [`EventLog`] keeps the step's events within a count and a byte budget,
//!   keeps only the first refusals, cuts long URLs and reasons
//!   ([`clip`]), and ends with one "... and N more" summary for what it
//!   dropped.

use std::sync::{Mutex, PoisonError};

use wasmtime::component::ResourceTable;
use wasmtime_wasi_http::FieldMap;
use wasmtime_wasi_http::p2::types::{HostIncomingResponse, HostOutgoingRequest};

use crate::events::{Event, Level, LogSource};

/// Bounds on what one step may make the host hold.
///
/// Defaults, as set by [`StepBudget::default`]:
/// - 4096 live resource-table entries;
/// - 4 MiB held by the step's `wasi:http` objects (header names and values
///   of every live `fields`, outgoing request and incoming response, the
///   path and authority of unsent requests, and 32 KiB for the buffer of
///   each unsent request body);
/// - 10,000 events and 4 MiB of event text per step (logs, requests and
///   refusals together, each event also charged 160 bytes);
/// - the first 20 refusals of a step recorded, the rest counted;
/// - URLs and refusal reasons in events cut at 512 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepBudget {
    /// Live entries of the step's resource table.
    pub table_entries: usize,
    /// Bytes held by the step's `wasi:http` objects.
    pub http_bytes: usize,
    /// Events kept per step.
    pub events: usize,
    /// Bytes of events kept per step.
    pub event_bytes: usize,
    /// Refusals recorded (event, audit entry, log line) per step.
    pub refusals: usize,
    /// Longest URL or refusal reason kept in an event, in bytes.
    pub text_len: usize,
}

impl Default for StepBudget {
    fn default() -> Self {
        StepBudget {
            table_entries: 4096,
            http_bytes: 4 << 20,
            events: 10_000,
            event_bytes: 4 << 20,
            refusals: 20,
            text_len: 512,
        }
    }
}

impl StepBudget {
    /// Checks that every bound is usable.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let zero = [
            ("table_entries", self.table_entries < 64),
            ("http_bytes", self.http_bytes < 64 << 10),
            ("events", self.events == 0),
            ("event_bytes", self.event_bytes < 4096),
            ("text_len", self.text_len < 64),
        ];
        match zero.iter().find(|(_, bad)| *bad) {
            Some((name, _)) => Err(format!(
                "step budget: `{name}` is too small (at least 64 entries, 64 KiB of \
                 http bytes, 1 event, 4 KiB of events and 64 bytes of text)"
            )),
            None => Ok(()),
        }
    }
}

/// Largest write the guest may make to a request body stream; wasi-http
/// buffers at most two of them per unsent body.
pub(crate) const BODY_CHUNK: usize = 16 << 10;
/// What an unsent request body may hold in its channel.
const BODY_BUFFER: usize = 2 * BODY_CHUNK;
/// The accounting is done every this many host calls: between two checks a
/// call adds at most one `fields` (128 KiB, wasi-http's per-fields limit), a
/// path or an authority (64 KiB, the `http` crate's URI limit), so the
/// budget is overshot by at most 8 × 128 KiB = 1 MiB.
const CHECK_EVERY: u32 = 8;
/// Per-header overhead counted on top of name and value bytes (the sizes of
/// `HeaderName` and `HeaderValue`, as wasi-http counts them).
const HEADER_OVERHEAD: usize = 64;
/// Per-event overhead counted on top of its text.
const EVENT_OVERHEAD: usize = 160;

/// Which host resource a step exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exceeded {
    pub(crate) what: &'static str,
    pub(crate) limit: u64,
}

/// What the step's resource table may hold; lives in the store data.
pub(crate) struct Footprint {
    http_bytes: usize,
    table_entries: usize,
    calls: u32,
    pub(crate) exceeded: Option<Exceeded>,
}

impl Footprint {
    pub(crate) fn new(budget: &StepBudget) -> Footprint {
        Footprint {
            http_bytes: budget.http_bytes,
            table_entries: budget.table_entries,
            calls: 0,
            exceeded: None,
        }
    }

    /// A fresh table with the entry cap applied.
    pub(crate) fn table(&self) -> ResourceTable {
        let mut table = ResourceTable::new();
        table.set_max_capacity(self.table_entries);
        table
    }

    /// Called before every host call that may touch the table. Every
    /// [`CHECK_EVERY`] calls, sums what the table holds; over budget, the
    /// table is replaced by an empty one that accepts nothing, which frees
    /// it all and makes the guest's next resource call trap.
    pub(crate) fn check(&mut self, table: &mut ResourceTable) {
        if self.exceeded.is_some() {
            return;
        }
        self.calls = self.calls.wrapping_add(1);
        if !self.calls.is_multiple_of(CHECK_EVERY) {
            return;
        }
        if held_bytes(table, self.http_bytes) > self.http_bytes {
            self.exceeded = Some(Exceeded {
                what: "bytes held by wasi:http fields, requests and bodies",
                limit: self.http_bytes as u64,
            });
            *table = ResourceTable::new();
            table.set_max_capacity(0);
        }
    }

    /// The error for a trap caused by a full table (a push beyond the cap
    /// fails inside wasmtime, which traps).
    pub(crate) fn table_full(&self) -> Exceeded {
        Exceeded {
            what: "resource table entries",
            limit: self.table_entries as u64,
        }
    }
}

/// The bytes the table's `wasi:http` objects hold, counted until above
/// `stop_above`. The walk costs at most one step per table entry (capped)
/// plus one per header counted (each header counts at least
/// [`HEADER_OVERHEAD`] bytes, so at most `stop_above / 64` of them).
fn held_bytes(table: &mut ResourceTable, stop_above: usize) -> usize {
    let mut bytes = 0usize;
    for entry in table.iter_mut() {
        if bytes > stop_above {
            break;
        }
        let entry: &dyn std::any::Any = entry;
        if let Some(fields) = entry.downcast_ref::<FieldMap>() {
            bytes += fields_bytes(fields);
        } else if let Some(request) = entry.downcast_ref::<HostOutgoingRequest>() {
            bytes += fields_bytes(&request.headers)
                + request.path_with_query.as_ref().map_or(0, String::len)
                + request.authority.as_ref().map_or(0, String::len)
                + if request.body.is_some() {
                    BODY_BUFFER
                } else {
                    0
                };
        } else if let Some(response) = entry.downcast_ref::<HostIncomingResponse>() {
            bytes += fields_bytes(&response.headers);
        }
    }
    bytes
}

fn fields_bytes(fields: &FieldMap) -> usize {
    fields
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + HEADER_OVERHEAD)
        .sum()
}

/// Cuts a reported text (a URL, a reason) at a character boundary at or
/// below `max` bytes, saying how long it was.
pub(crate) fn clip(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let cut = crate::host_impl::truncate(&text, max);
    format!("{cut}… ({} bytes)", text.len())
}

#[derive(Default)]
struct Kept {
    events: Vec<Event>,
    bytes: usize,
    dropped: usize,
    refusals: usize,
    refusals_dropped: usize,
}

/// The events of one step, within the step's budget. The observer gets them
/// when the step has ended (`Job::run`), so that a step caught misusing a
/// secret can have them withheld.
pub(crate) struct EventLog {
    step: String,
    budget: StepBudget,
    kept: Mutex<Kept>,
}

impl EventLog {
    pub(crate) fn new(step: &str, budget: StepBudget) -> EventLog {
        EventLog {
            step: step.into(),
            budget,
            kept: Mutex::new(Kept::default()),
        }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The longest URL or reason an event keeps.
    pub(crate) fn text_len(&self) -> usize {
        self.budget.text_len
    }

    /// Counts a refusal; whether it is among the first ones, which are
    /// recorded (the rest are only counted).
    pub(crate) fn admit_refusal(&self) -> bool {
        let mut kept = self.kept();
        kept.refusals += 1;
        if kept.refusals > self.budget.refusals {
            kept.refusals_dropped += 1;
            return false;
        }
        true
    }

    /// Keeps an event, unless the step's
    /// event budget is spent. A request's URL is clipped here; a refusal
    /// comes clipped (its audit entry is built from the same text).
    pub(crate) fn push(&self, mut event: Event) {
        if let Event::Request { url, .. } = &mut event {
            *url = clip(std::mem::take(url), self.budget.text_len);
        }
        let size = EVENT_OVERHEAD + self.step.len() + event_text_len(&event);
        {
            let mut kept = self.kept();
            if kept.events.len() >= self.budget.events
                || kept.bytes + size > self.budget.event_bytes
            {
                kept.dropped += 1;
                return;
            }
            kept.bytes += size;
            kept.events.push(event);
        }
    }

    /// The step's events, ending with a summary of what was dropped; the
    /// number of refusals that were only counted.
    pub(crate) fn finish(&self) -> (Vec<Event>, usize) {
        let mut kept = self.kept();
        let refusals_dropped = kept.refusals_dropped;
        let mut summaries = Vec::new();
        if refusals_dropped > 0 {
            summaries.push(Event::Refused {
                step: self.step.clone(),
                url: String::new(),
                reason: format!(
                    "… and {refusals_dropped} more refused requests (only the first {} are recorded)",
                    self.budget.refusals
                ),
            });
        }
        if kept.dropped > 0 {
            summaries.push(Event::Log {
                step: self.step.clone(),
                level: Level::Warn,
                source: LogSource::Runtime,
                message: format!(
                    "… and {} more events dropped (the step's budget is {} events, {} bytes)",
                    kept.dropped, self.budget.events, self.budget.event_bytes
                ),
            });
        }
        let mut events = std::mem::take(&mut kept.events);
        events.extend(summaries);
        (events, refusals_dropped)
    }
}

fn event_text_len(event: &Event) -> usize {
    match event {
        Event::Log { message, .. } => message.len(),
        Event::Request {
            method,
            url,
            connections,
            ..
        } => method.len() + url.len() + connections.iter().map(String::len).sum::<usize>(),
        Event::Refused { url, reason, .. } => url.len() + reason.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> Event {
        Event::Refused {
            step: "s".into(),
            url: url.into(),
            reason: clip("r".repeat(10_000), 512),
        }
    }

    #[test]
    fn clip_keeps_short_text_and_cuts_long_text_at_a_char_boundary() {
        assert_eq!(clip("short".into(), 8), "short");
        assert_eq!(clip("0123456789".into(), 4), "0123… (10 bytes)");
        // "é" is two bytes: a cut inside it moves back.
        assert_eq!(clip("aé".repeat(4), 4), "aéa… (12 bytes)");
    }

    #[test]
    fn refusals_beyond_the_first_are_counted_and_summarised() {
        let budget = StepBudget {
            refusals: 3,
            ..StepBudget::default()
        };
        let log = EventLog::new("s", budget);
        let long = format!("https://x.test/{}", "p".repeat(60_000));
        for _ in 0..1000 {
            if log.admit_refusal() {
                log.push(refused(&clip(long.clone(), 512)));
            }
        }
        let (events, dropped) = log.finish();
        assert_eq!(dropped, 997);
        assert_eq!(events.len(), 4);
        for event in &events[..3] {
            let Event::Refused { url, reason, .. } = event else {
                panic!("{event:?}");
            };
            assert!(url.len() < 600 && url.ends_with("(60015 bytes)"), "{url}");
            assert!(reason.len() < 600 && reason.ends_with("(10000 bytes)"));
        }
        let Event::Refused { reason, .. } = &events[3] else {
            panic!("{:?}", events[3]);
        };
        assert!(
            reason.contains("… and 997 more refused requests"),
            "{reason}"
        );
    }

    #[test]
    fn events_beyond_the_count_or_byte_budget_are_dropped_and_summarised() {
        let log_line = |message: &str| Event::Log {
            step: "s".into(),
            level: Level::Info,
            source: LogSource::Guest,
            message: message.into(),
        };
        let budget = StepBudget {
            events: 10,
            ..StepBudget::default()
        };
        let log = EventLog::new("s", budget);
        for _ in 0..100_000 {
            log.push(log_line(""));
        }
        let (events, _) = log.finish();
        assert_eq!(events.len(), 11);
        assert_eq!(
            events[10],
            Event::Log {
                step: "s".into(),
                level: Level::Warn,
                source: LogSource::Runtime,
                message: "… and 99990 more events dropped (the step's budget is 10 events, \
                          4194304 bytes)"
                    .into(),
            }
        );

        let budget = StepBudget {
            event_bytes: 8192,
            ..StepBudget::default()
        };
        let log = EventLog::new("s", budget);
        for _ in 0..100 {
            log.push(log_line(&"x".repeat(1000)));
        }
        let (events, _) = log.finish();
        // 1000 + 160 + 1 bytes each: seven fit in 8192.
        assert_eq!(events.len(), 8, "{events:?}");
    }

    #[test]
    fn budgets_below_the_minimums_are_refused() {
        assert!(StepBudget::default().validate().is_ok());
        let tiny = StepBudget {
            http_bytes: 100,
            ..StepBudget::default()
        };
        assert!(tiny.validate().unwrap_err().contains("http_bytes"));
    }
}

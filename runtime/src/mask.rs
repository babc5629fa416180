//! Masking of secret values in text, bytes, JSON documents and streamed bodies.
//!
//! A job collects the values that must never be shown: resolved secret
//! values, job placeholders and values the guest marked as sensitive. A
//! [`Masker`] built from them replaces every occurrence with [`MASK`] in logs,
//! guest stdout and stderr, step outputs, errors, trap messages and history,
//! and in the headers and body of each HTTP response before it reaches the
//! guest. Bodies are streamed through a [`StreamMasker`], which works across
//! chunk boundaries with a bounded buffer.
//!
//! # What is matched
//!
//! The masker searches the *canonical* form of its input, in which one level
//! of escapes is decoded (see [`canonical`]): JSON and JavaScript `\uXXXX`
//! escapes of any character in either case (surrogate pairs joined) and the
//! short escapes such as `\/`, percent-encoding `%XX` of any byte in either
//! case, and HTML and XML character references (decimal, hex and the named
//! references of printable ASCII characters). A value written with some or
//! all of its characters escaped, in any mix of these forms, is found, and the
//! whole source text of the match is replaced.
//!
//! For every value of at least [`MIN_VALUE_LEN`] bytes these patterns are
//! searched in the canonical form (duplicates once):
//!
//! - the value, its canonical form (for a value that itself contains
//!   escape-like text, echoed as it is), the value with surrounding ASCII
//!   whitespace trimmed, and the value with spaces written as `+` (HTML
//!   forms);
//! - every run of [`CUT_LEN`] consecutive bytes of a longer value, so that an
//!   echo cut to its first (or any) `N >= CUT_LEN` characters is found;
//! - standard and URL-safe base64, both as the whole encoding (padded and
//!   unpadded) and as the fragment that depends only on the value at each of
//!   the three byte alignments, so the value is found inside a longer base64
//!   string such as the one in `Authorization: Basic base64("user:" + value)`;
//!   the few bits at the edges of such a fragment stay visible. Base64 that
//!   is itself percent-encoded is found too.
//!
//! [`Masker::contains_any_case`] also finds these patterns in any ASCII letter
//! case, for text that was case-folded on the way (HTTP header names).
//!
//! Not matched: values shorter than [`MIN_VALUE_LEN`] (masking them would
//! mangle ordinary text), in their raw or decoded form (a value made of
//! escape sequences, such as `%\\+`, decodes to fewer bytes), other letter cases of the value (except with
//! `contains_any_case`), hex encoding, line-wrapped (MIME) base64, escapes
//! nested more than one level deep (`%255C` or `\\u0041`), and references to
//! non-ASCII named HTML entities.
//!
//! # Semantics
//!
//! Matching is leftmost-longest and non-overlapping: scanning from the left,
//! the earliest match wins and, among the matches that start there, the
//! longest; each match is replaced by one [`MASK`]. When one value is a prefix
//! of another, the longer value is masked whole. [`StreamMasker`] produces
//! exactly the output of [`Masker::mask_bytes`] on the whole input, however
//! the input is split into chunks.
//!
//! No value ever appears in a `Debug` representation of the types here.

mod canonical;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use aho_corasick::{AhoCorasick, AhoCorasickKind, Anchored, Input, Match, MatchKind, StartKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::Value;

use self::canonical::{Canonical, MAX_ESCAPE_LEN};

/// The text that replaces every masked occurrence.
pub const MASK: &str = "***";

/// The shortest value that is masked, in bytes; shorter values are ignored.
pub const MIN_VALUE_LEN: usize = 4;

/// The shortest base64 fragment that is searched for, in characters.
///
/// With [`MIN_VALUE_LEN`] at 4, every alignment of every value yields at least
/// this many characters, so no value loses its base64 forms.
const MIN_BASE64_FRAGMENT_LEN: usize = 4;

/// The length of the windows the prefilter hashes, in bytes; no pattern is
/// shorter.
const GRAM_LEN: usize = 4;

const _: () = assert!(MIN_VALUE_LEN >= GRAM_LEN && MIN_BASE64_FRAGMENT_LEN >= GRAM_LEN);

/// The length of the runs of a value that are masked on their own, in bytes:
/// an error message that quotes a long header cut to its first `N >= CUT_LEN`
/// characters still has the cut value masked. Values up to this long are
/// matched whole only.
pub const CUT_LEN: usize = 12;

/// The largest distance between two windows the prefilter checks.
const MAX_STEP: usize = 8;

/// Anchored verifications a search may make for free before the budget
/// ([`VERIFY_PER_BYTE`]) applies.
const VERIFY_FREE: usize = 16;

/// One anchored verification is allowed per this many bytes scanned; beyond
/// that the prefilter is not paying off and the search continues with the
/// unanchored automaton, which is linear in the input whatever it contains.
const VERIFY_PER_BYTE: usize = 4;

/// Replaces secret values, and their common encodings, with [`MASK`].
///
/// Cloning is cheap: the automaton is shared behind an [`Arc`]. A masker is
/// immutable; [`Masker::extend`] returns a new one with more values.
///
/// # Examples
///
/// ```
/// use wrun_runtime::mask::Masker;
///
/// let masker = Masker::new(["hunter2-hunter2"]);
/// assert_eq!(masker.mask_str("password=hunter2-hunter2"), "password=***");
/// // The value is also found in its encodings, here base64("user:" + value).
/// assert_eq!(masker.mask_str("Basic dXNlcjpodW50ZXIyLWh1bnRlcjI="), "Basic dXNlcjp***I=");
/// ```
#[derive(Clone, Default)]
pub struct Masker {
    /// The compiled matcher, or `None` when there is nothing to mask.
    inner: Option<Arc<Inner>>,
}

/// The shared, immutable part of a [`Masker`].
struct Inner {
    /// The matcher over all patterns.
    matcher: Matcher,
    /// The distinct values (each at least [`MIN_VALUE_LEN`] bytes), kept so
    /// that [`Masker::extend`] can rebuild the pattern set.
    values: BTreeSet<Box<[u8]>>,
    /// The number of distinct patterns derived from `values`.
    pattern_count: usize,
    /// The length of the longest pattern, in bytes; at least 4.
    max_pattern_len: usize,
    /// The same patterns, matched in any ASCII letter case; `None` when the
    /// automaton could not be built (then everything counts as a match).
    /// Built at the first use: most maskers never need it, and building
    /// it for every job cost more than the job's step (a case-insensitive
    /// DFA over every pattern of a 43-byte value took about 2 ms).
    any_case: std::sync::OnceLock<Option<AhoCorasick>>,
}

/// How an [`Inner`] finds matches.
enum Matcher {
    /// A leftmost-longest search over all patterns.
    Search(Searcher),
    /// The automaton could not be built (the pattern set exceeds the
    /// automaton's size limits), so every non-empty input is replaced by a
    /// single [`MASK`]: masking fails closed.
    RedactAll,
}

impl Masker {
    /// Builds a masker for `values` and their encodings.
    ///
    /// Values shorter than [`MIN_VALUE_LEN`] bytes are ignored and duplicates
    /// are merged. This never fails: should the pattern set ever exceed the
    /// automaton's limits, the masker replaces every non-empty input with
    /// [`MASK`] instead of letting a value through.
    pub fn new<I, V>(values: I) -> Masker
    where
        I: IntoIterator<Item = V>,
        V: AsRef<[u8]>,
    {
        Masker::build(collect_values(values, BTreeSet::new()))
    }

    /// Returns a masker that masks nothing.
    pub fn empty() -> Masker {
        Masker { inner: None }
    }

    /// Returns a new masker that masks this masker's values and `more`.
    ///
    /// This is how values a guest marks as sensitive during a job are added.
    /// When `more` adds no new value of at least [`MIN_VALUE_LEN`] bytes, the
    /// result shares this masker's automaton.
    pub fn extend<I, V>(&self, more: I) -> Masker
    where
        I: IntoIterator<Item = V>,
        V: AsRef<[u8]>,
    {
        let current = self.inner.as_ref().map(|inner| &inner.values);
        let known = current.map_or(0, BTreeSet::len);
        let values = collect_values(more, current.cloned().unwrap_or_default());
        if values.len() == known {
            return self.clone();
        }
        Masker::build(values)
    }

    /// Returns `true` when the masker has no value to mask.
    pub fn is_empty(&self) -> bool {
        self.inner.is_none()
    }

    /// Returns the number of distinct byte patterns searched for (each value
    /// contributes its raw form and its distinct encodings).
    pub fn pattern_count(&self) -> usize {
        self.inner.as_ref().map_or(0, |inner| inner.pattern_count)
    }

    /// Returns the length of the longest pattern in bytes, or 0 when empty.
    ///
    /// A [`StreamMasker`] holds back fewer canonical bytes than this (see
    /// [`StreamMasker::max_held`] for the bound in input bytes).
    pub fn max_pattern_len(&self) -> usize {
        self.inner.as_ref().map_or(0, |inner| inner.max_pattern_len)
    }

    /// Returns `true` if `haystack` contains any value in any encoding.
    pub fn contains(&self, haystack: &[u8]) -> bool {
        match self.inner.as_deref().map(|inner| &inner.matcher) {
            None => false,
            Some(Matcher::Search(searcher)) if canonical::has_escape(haystack) => {
                let canon = Canonical::new(haystack, true);
                searcher.find(&canon.text, 0).is_some()
            }
            Some(Matcher::Search(searcher)) => searcher.find(haystack, 0).is_some(),
            Some(Matcher::RedactAll) => !haystack.is_empty(),
        }
    }

    /// Returns `true` if `haystack` contains any value in any encoding, in
    /// any ASCII letter case.
    ///
    /// This is for text that was case-folded before the masker saw it, such
    /// as HTTP header names (which the HTTP stack lowercases): a value found
    /// there cannot be masked in place, so the caller drops the text.
    pub fn contains_any_case(&self, haystack: &[u8]) -> bool {
        let Some(inner) = self.inner.as_deref() else {
            return false;
        };
        let any_case = inner.any_case.get_or_init(|| {
            let mut patterns = BTreeSet::new();
            let mut runs = BTreeMap::new();
            for (index, value) in inner.values.iter().enumerate() {
                add_patterns(value, &mut patterns);
                add_runs(index, value, &mut runs);
            }
            patterns.extend(runs.into_keys());
            AhoCorasick::builder()
                .ascii_case_insensitive(true)
                .kind(Some(AhoCorasickKind::ContiguousNFA))
                .build(&patterns)
                .ok()
        });
        match any_case {
            Some(automaton) => automaton.is_match(canonical::decode(haystack).as_slice()),
            None => !haystack.is_empty(),
        }
    }

    /// Masks every occurrence in `input`.
    ///
    /// Returns the input borrowed, without allocating, when nothing matched.
    pub fn mask_bytes<'a>(&self, input: &'a [u8]) -> Cow<'a, [u8]> {
        let searcher = match self.inner.as_deref().map(|inner| &inner.matcher) {
            None => return Cow::Borrowed(input),
            Some(Matcher::Search(searcher)) => searcher,
            Some(Matcher::RedactAll) if input.is_empty() => return Cow::Borrowed(input),
            Some(Matcher::RedactAll) => return Cow::Owned(MASK.as_bytes().to_vec()),
        };
        if !canonical::has_escape(input) {
            if searcher.find(input, 0).is_none() {
                return Cow::Borrowed(input);
            }
            let mut out = Vec::with_capacity(input.len());
            scan_plain(searcher, 0, input, true, &mut out);
            return Cow::Owned(out);
        }
        let canon = Canonical::new(input, true);
        if searcher.find(&canon.text, 0).is_none() {
            return Cow::Borrowed(input);
        }
        let mut out = Vec::with_capacity(input.len());
        scan_canonical(searcher, 0, input, &canon, true, &mut out);
        Cow::Owned(out)
    }

    /// Masks every occurrence in `input`.
    ///
    /// Returns the input borrowed, without allocating, when nothing matched.
    /// If a value that is not valid UTF-8 matched inside a multi-byte
    /// character, the broken remainder of that character becomes U+FFFD.
    pub fn mask_str<'a>(&self, input: &'a str) -> Cow<'a, str> {
        match self.mask_bytes(input.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(input),
            Cow::Owned(bytes) => Cow::Owned(match String::from_utf8(bytes) {
                Ok(text) => text,
                Err(err) => String::from_utf8_lossy(err.as_bytes()).into_owned(),
            }),
        }
    }

    /// Masks every string, every object key and every number in `value`,
    /// recursively.
    ///
    /// A number whose decimal text contains a value is replaced by the string
    /// [`MASK`]. When masking makes two keys of one object equal, the later
    /// one gets a `#2`, `#3`, ... suffix so that no entry is lost. Deeply
    /// nested documents are walked without recursion.
    pub fn mask_json(&self, value: &mut Value) {
        if self.is_empty() {
            return;
        }
        let mut pending = vec![value];
        while let Some(value) = pending.pop() {
            match value {
                Value::String(text) => {
                    if let Cow::Owned(masked) = self.mask_str(text) {
                        *text = masked;
                    }
                }
                Value::Number(number) => {
                    if self.contains(number.to_string().as_bytes()) {
                        *value = Value::String(MASK.to_owned());
                    }
                }
                Value::Array(items) => pending.extend(items.iter_mut()),
                Value::Object(map) => {
                    if map.keys().any(|key| self.contains(key.as_bytes())) {
                        *map = self.mask_keys(std::mem::take(map));
                    }
                    pending.extend(map.values_mut());
                }
                Value::Null | Value::Bool(_) => {}
            }
        }
    }

    /// Returns `map` with its keys masked, renaming keys that would collide.
    fn mask_keys(&self, map: serde_json::Map<String, Value>) -> serde_json::Map<String, Value> {
        let mut masked = serde_json::Map::new();
        for (key, item) in map {
            let key = match self.mask_str(&key) {
                Cow::Borrowed(_) => key,
                Cow::Owned(replaced) => replaced,
            };
            let mut unique = key.clone();
            let mut suffix = 2_u64;
            while masked.contains_key(&unique) {
                unique = format!("{key}#{suffix}");
                suffix += 1;
            }
            masked.insert(unique, item);
        }
        masked
    }

    /// Returns a streaming masker that owns a clone of this masker.
    pub fn stream(&self) -> StreamMasker {
        StreamMasker {
            masker: self.clone(),
            pending: Vec::new(),
            redacted: false,
        }
    }

    /// Builds the automaton for a set of distinct values.
    fn build(values: BTreeSet<Box<[u8]>>) -> Masker {
        if values.is_empty() {
            return Masker::empty();
        }
        let mut patterns = BTreeSet::new();
        let mut runs = BTreeMap::new();
        for (index, value) in values.iter().enumerate() {
            add_patterns(value, &mut patterns);
            add_runs(index, value, &mut runs);
        }
        patterns.extend(runs.keys().cloned());
        let max_pattern_len = patterns.iter().map(Vec::len).max().unwrap_or(0);
        let continued = patterns.iter().map(|p| runs.get(p).copied()).collect();
        let matcher = Searcher::new(&patterns, continued, values.iter().cloned().collect())
            .map_or(Matcher::RedactAll, Matcher::Search);
        Masker {
            inner: Some(Arc::new(Inner {
                matcher,
                values,
                pattern_count: patterns.len(),
                max_pattern_len,
                any_case: std::sync::OnceLock::new(),
            })),
        }
    }
}

impl fmt::Debug for Masker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field(
                "values",
                &self.inner.as_ref().map_or(0, |inner| inner.values.len()),
            )
            .field("patterns", &self.pattern_count())
            .finish()
    }
}

/// Masks a byte stream chunk by chunk.
///
/// Created by [`Masker::stream`]. Feed chunks to [`StreamMasker::push`], then
/// call [`StreamMasker::finish`] once at the end. The concatenated output
/// equals [`Masker::mask_bytes`] of the concatenated input for any chunking.
/// Output is released as soon as it is decided: fewer than
/// `max_pattern_len` canonical bytes, plus an escape cut by the chunk end,
/// are held back between calls, however large the chunks are (at most
/// [`StreamMasker::max_held`] input bytes).
///
/// # Examples
///
/// ```
/// use wrun_runtime::mask::Masker;
///
/// let masker = Masker::new(["s3cr3t-value"]);
/// let mut stream = masker.stream();
/// let mut out = Vec::new();
/// stream.push(b"token: s3cr3", &mut out);
/// stream.push(b"t-value, done", &mut out);
/// stream.finish(&mut out);
/// assert_eq!(out, b"token: ***, done");
/// ```
pub struct StreamMasker {
    /// The masker whose values are masked.
    masker: Masker,
    /// Input received but not yet released: it may begin a match.
    pending: Vec<u8>,
    /// Whether input arrived while the masker fails closed
    /// ([`Matcher::RedactAll`]), so that `finish` emits one [`MASK`].
    redacted: bool,
}

impl StreamMasker {
    /// Takes the next chunk and appends the output that is now decided to
    /// `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        let Some(inner) = self.masker.inner.as_deref() else {
            out.extend_from_slice(chunk);
            return;
        };
        let searcher = match &inner.matcher {
            Matcher::Search(searcher) => searcher,
            Matcher::RedactAll => {
                self.redacted |= !chunk.is_empty();
                return;
            }
        };
        let max_len = inner.max_pattern_len;
        let bound = max_held(max_len);
        let mut rest = chunk;
        if !self.pending.is_empty() {
            // Resolve the held-back bytes using at most `bound` bytes of
            // the chunk, so that a large chunk is then scanned in place
            // instead of being copied behind them.
            let held = self.pending.len();
            let head = rest.len().min(bound);
            self.pending.extend_from_slice(&rest[..head]);
            let used = scan(searcher, max_len, &self.pending, false, out);
            if head == rest.len() {
                self.pending.drain(..used);
                return;
            }
            match used.checked_sub(held) {
                // All held-back bytes are decided, which is always the case
                // once `bound` chunk bytes follow them: continue in the
                // chunk itself.
                Some(in_chunk) => {
                    self.pending.clear();
                    rest = &rest[in_chunk..];
                }
                // Not reachable (see above); fall back to buffering.
                None => {
                    self.pending.drain(..used);
                    self.pending.extend_from_slice(&rest[head..]);
                    let used = scan(searcher, max_len, &self.pending, false, out);
                    self.pending.drain(..used);
                    return;
                }
            }
        }
        let used = scan(searcher, max_len, rest, false, out);
        self.pending.extend_from_slice(&rest[used..]);
    }

    /// Ends the stream: appends the masked remainder to `out`.
    ///
    /// The stream masker is then empty and can be reused for a new stream.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(inner) = self.masker.inner.as_deref() {
            match &inner.matcher {
                Matcher::Search(searcher) => {
                    scan(searcher, inner.max_pattern_len, &self.pending, true, out);
                }
                Matcher::RedactAll if self.redacted => out.extend_from_slice(MASK.as_bytes()),
                Matcher::RedactAll => {}
            }
        }
        self.pending.clear();
        self.redacted = false;
    }

    /// Returns the number of input bytes held back, not yet released.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Returns the most input bytes this stream holds back between calls.
    pub fn max_held(&self) -> usize {
        max_held(self.masker.max_pattern_len())
    }
}

impl fmt::Debug for StreamMasker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamMasker")
            .field("masker", &self.masker)
            .field("pending_len", &self.pending.len())
            .finish()
    }
}

/// Replaces each field of `value` named by a JSON pointer with the string
/// [`MASK`].
///
/// Pointers follow RFC 6901 (`/token`, `/items/0/secret`, `~1` for `/` and
/// `~0` for `~` inside a name), as written in a step's `mask` grant; the
/// empty pointer names the whole document. A pointer that does not resolve is
/// ignored.
///
/// # Examples
///
/// ```
/// use wrun_runtime::mask::mask_pointers;
///
/// let mut output = serde_json::json!({"token": "abc", "items": [{"secret": 1}]});
/// mask_pointers(&mut output, &["/token", "/items/0/secret", "/missing"]);
/// assert_eq!(output, serde_json::json!({"token": "***", "items": [{"secret": "***"}]}));
/// ```
pub fn mask_pointers<P: AsRef<str>>(value: &mut Value, pointers: &[P]) {
    for pointer in pointers {
        if let Some(field) = value.pointer_mut(pointer.as_ref()) {
            *field = Value::String(MASK.to_owned());
        }
    }
}

/// Checks that `pointer` is a well-formed JSON pointer (RFC 6901).
///
/// # Errors
///
/// Returns a message naming the pointer when it is neither empty nor starts
/// with `/`, or when a `~` is not followed by `0` or `1`.
pub fn validate_pointer(pointer: &str) -> Result<(), String> {
    if pointer.is_empty() {
        return Ok(());
    }
    if !pointer.starts_with('/') {
        return Err(format!(
            "JSON pointer `{pointer}` must be empty or start with `/` (for example `/token` or `/items/0/secret`)"
        ));
    }
    let mut chars = pointer.char_indices();
    while let Some((at, c)) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some((_, '0' | '1'))) {
            return Err(format!(
                "JSON pointer `{pointer}` has an invalid escape at byte {at}: `~` must be followed by `0` (for `~`) or `1` (for `/`)"
            ));
        }
    }
    Ok(())
}

/// Adds the values of at least [`MIN_VALUE_LEN`] bytes to `set`.
fn collect_values<I, V>(values: I, mut set: BTreeSet<Box<[u8]>>) -> BTreeSet<Box<[u8]>>
where
    I: IntoIterator<Item = V>,
    V: AsRef<[u8]>,
{
    for value in values {
        let value = value.as_ref();
        if value.len() >= MIN_VALUE_LEN && !set.contains(value) {
            set.insert(value.into());
        }
    }
    set
}

/// Returns the most input bytes a stream holds back for patterns of at most
/// `max_len` bytes: `max_len - 1` canonical bytes, each from an escape of up
/// to [`MAX_ESCAPE_LEN`] bytes, and an incomplete escape.
fn max_held(max_len: usize) -> usize {
    max_len.max(1) * MAX_ESCAPE_LEN
}

/// Scans `buf` and appends the decided output to `out`; returns how many
/// bytes of `buf` were consumed.
///
/// With `at_end` the whole buffer is decided. Otherwise a match starting at
/// canonical position `p` is final when `p + max_len` is within the decoded
/// text, because no longer match and no match starting earlier can depend on
/// later input; text before the first position that does not satisfy this
/// and is not inside a final match is released, and the rest (fewer than
/// [`max_held`] bytes) is left.
fn scan(searcher: &Searcher, max_len: usize, buf: &[u8], at_end: bool, out: &mut Vec<u8>) -> usize {
    if canonical::has_escape(buf) {
        let canon = Canonical::new(buf, at_end);
        scan_canonical(searcher, max_len, buf, &canon, at_end, out)
    } else {
        scan_plain(searcher, max_len, buf, at_end, out)
    }
}

/// [`scan`] for a buffer without escapes, which is its own canonical form.
fn scan_plain(
    searcher: &Searcher,
    max_len: usize,
    buf: &[u8],
    at_end: bool,
    out: &mut Vec<u8>,
) -> usize {
    let limit = if at_end {
        buf.len()
    } else {
        (buf.len() + 1).saturating_sub(max_len)
    };
    let mut released = 0;
    while let Some(found) = searcher.find(buf, released) {
        if found.start() >= limit {
            break;
        }
        out.extend_from_slice(&buf[released..found.start()]);
        out.extend_from_slice(MASK.as_bytes());
        released = found.end();
    }
    if released < limit {
        out.extend_from_slice(&buf[released..limit]);
        released = limit;
    }
    released
}

/// [`scan`] over `canon`, the canonical form of `buf`: each match replaces
/// the source of every token it touches, and the search resumes after the
/// last token of the match.
fn scan_canonical(
    searcher: &Searcher,
    max_len: usize,
    buf: &[u8],
    canon: &Canonical,
    at_end: bool,
    out: &mut Vec<u8>,
) -> usize {
    let text = &canon.text;
    let limit = if at_end {
        text.len()
    } else {
        (text.len() + 1).saturating_sub(max_len)
    };
    // `at` is a token start in the canonical text, `released` its source.
    let (mut at, mut released) = (0, 0);
    while let Some(found) = searcher.find(text, at) {
        if found.start() >= limit {
            break;
        }
        let (start, _, _) = canon.token_at(found.start());
        let (_, end, next) = canon.token_at(found.end() - 1);
        out.extend_from_slice(&buf[released..start]);
        out.extend_from_slice(MASK.as_bytes());
        (at, released) = (next, end);
    }
    if at < limit {
        let until = if limit == text.len() {
            canon.decoded
        } else {
            canon.token_at(limit).0
        };
        out.extend_from_slice(&buf[released..until]);
        released = until;
    }
    released
}

/// Finds leftmost-longest matches of a pattern set.
///
/// Scanning with the automaton alone runs at 0.3 to 0.6 GB/s, because each
/// byte waits for the previous transition. Instead a prefilter hashes one
/// 4-byte window every `step` bytes and looks it up in a bitmap of the
/// windows that patterns begin with; only at a hit are the possible match
/// starts verified, in order, with an anchored search of the automaton. This
/// scans a typical body several times faster and finds exactly the matches
/// of an unanchored leftmost-longest search. When verifications exceed a
/// budget (input full of near-matches), the search falls back to the
/// unanchored automaton, so the worst case stays linear.
struct Searcher {
    /// A leftmost-longest automaton over all patterns that supports both
    /// anchored and unanchored searches.
    automaton: AhoCorasick,
    /// The hashed windows, one bit per slot.
    bitmap: Box<[u64]>,
    /// The right shift that turns a multiplied window into a slot.
    shift: u32,
    /// The distance between checked windows: every pattern is at least
    /// `step + 3` bytes long, so every match covers a checked window that
    /// lies inside its first `step + 3` bytes.
    step: usize,
    /// For each pattern that is a run of a value, where the value continues:
    /// a match of the run is extended over as much of the rest of the value
    /// as follows it, so a cut echo is masked whole.
    continued: Vec<Option<Run>>,
    /// The values, indexed as in `continued`.
    values: Vec<Box<[u8]>>,
}

impl Searcher {
    /// Builds the searcher for `patterns`, each at least [`GRAM_LEN`] bytes.
    ///
    /// Returns `None` when there are no patterns, a pattern is shorter than
    /// [`GRAM_LEN`] (which [`MIN_VALUE_LEN`] rules out), or no automaton kind
    /// can hold them.
    fn new(
        patterns: &BTreeSet<Vec<u8>>,
        continued: Vec<Option<Run>>,
        values: Vec<Box<[u8]>>,
    ) -> Option<Searcher> {
        let min_len = patterns.iter().map(Vec::len).min()?;
        let step = (min_len + 1)
            .checked_sub(GRAM_LEN)
            .filter(|&step| step > 0)?
            .min(MAX_STEP);
        let build = |kind| {
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .start_kind(StartKind::Both)
                .kind(kind)
                .build(patterns)
                .ok()
        };
        let automaton = build(Some(AhoCorasickKind::ContiguousNFA)).or_else(|| build(None))?;
        // About 64 slots per window keep false hits near 1.5%.
        let slots = patterns
            .len()
            .saturating_mul(step)
            .saturating_mul(64)
            .clamp(1 << 12, 1 << 22)
            .next_power_of_two();
        let mut searcher = Searcher {
            automaton,
            bitmap: vec![0; slots / 64].into_boxed_slice(),
            shift: 32 - slots.trailing_zeros(),
            step,
            continued,
            values,
        };
        for pattern in patterns {
            for at in 0..step {
                if let Some(window) = pattern.get(at..at + GRAM_LEN) {
                    let slot = searcher.slot(window);
                    searcher.bitmap[slot / 64] |= 1 << (slot % 64);
                }
            }
        }
        Some(searcher)
    }

    /// Returns the bitmap slot of a window of [`GRAM_LEN`] bytes.
    #[inline]
    fn slot(&self, window: &[u8]) -> usize {
        let word = u32::from_le_bytes([window[0], window[1], window[2], window[3]]);
        // Fibonacci hashing: the top bits of the product mix all input bits.
        (word.wrapping_mul(0x9e37_79b1) >> self.shift) as usize
    }

    /// Returns the leftmost-longest match in `haystack` that starts at or
    /// after `start`.
    ///
    /// A match of a run of a value extends over the rest of that value as
    /// far as the haystack follows it.
    fn find(&self, haystack: &[u8], start: usize) -> Option<Match> {
        let found = match self.find_filtered(haystack, start) {
            Ok(found) => found,
            Err(resume) => self.automaton.find(Input::new(haystack).range(resume..)),
        }?;
        let Some(&Some((value, from))) = self.continued.get(found.pattern().as_usize()) else {
            return Some(found);
        };
        let rest = self.values.get(value).map_or(&[][..], |v| &v[from..]);
        let more = rest
            .iter()
            .zip(&haystack[found.end()..])
            .take_while(|(a, b)| a == b)
            .count();
        Some(Match::new(
            found.pattern(),
            found.start()..found.end() + more,
        ))
    }

    /// Searches with the prefilter; returns `Err(resume)` when the
    /// verification budget runs out, with no match starting in
    /// `start..resume`.
    fn find_filtered(&self, haystack: &[u8], start: usize) -> Result<Option<Match>, usize> {
        // Starts below `next` are ruled out.
        let mut next = start;
        let mut verified = 0_usize;
        let mut at = start;
        while let Some(window) = haystack.get(at..at + GRAM_LEN) {
            let slot = self.slot(window);
            if self.bitmap[slot / 64] & (1 << (slot % 64)) != 0 {
                // A match covering this window starts in `at + 1 - step..=at`.
                for candidate in next.max((at + 1).saturating_sub(self.step))..=at {
                    if verified >= VERIFY_FREE + (at - start) / VERIFY_PER_BYTE {
                        return Err(candidate);
                    }
                    verified += 1;
                    let input = Input::new(haystack)
                        .range(candidate..)
                        .anchored(Anchored::Yes);
                    if let Some(found) = self.automaton.find(input) {
                        return Ok(Some(found));
                    }
                }
                next = at + 1;
            }
            at += self.step;
        }
        Ok(None)
    }
}

/// Adds the patterns of `value` (see the module docs) to `patterns`. Every
/// pattern is in canonical form and at least [`GRAM_LEN`] bytes long.
fn add_patterns(value: &[u8], patterns: &mut BTreeSet<Vec<u8>>) {
    let mut add = |pattern: Vec<u8>| {
        if pattern.len() >= GRAM_LEN {
            patterns.insert(pattern);
        }
    };
    add(canonical::decode(value));
    for form in [value, value.trim_ascii()] {
        add(form.to_vec());
        if form.contains(&b' ') {
            add(form
                .iter()
                .map(|&b| if b == b' ' { b'+' } else { b })
                .collect());
        }
    }
    add_base64(value, patterns);
}

/// Where a run of [`CUT_LEN`] bytes continues: the value's index and the
/// offset just past the run.
type Run = (usize, usize);

/// Adds every run of [`CUT_LEN`] bytes of `value` (the value at `index`) when
/// the value is longer, with where it continues; a run that occurs more than
/// once keeps its first place.
fn add_runs(index: usize, value: &[u8], runs: &mut BTreeMap<Vec<u8>, Run>) {
    if value.len() > CUT_LEN {
        for (at, run) in value.windows(CUT_LEN).enumerate() {
            runs.entry(run.to_vec()).or_insert((index, at + CUT_LEN));
        }
    }
}

/// Adds the base64 forms of `value`: the whole encoding, padded and unpadded,
/// and for each of the three byte alignments the characters that depend only
/// on the value's bits.
fn add_base64(value: &[u8], patterns: &mut BTreeSet<Vec<u8>>) {
    patterns.insert(STANDARD.encode(value).into_bytes());
    patterns.insert(URL_SAFE.encode(value).into_bytes());
    for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        patterns.insert(engine.encode(value).into_bytes());
        for filler in 0..3 {
            // Encode the value behind `filler` zero bytes. Character `i`
            // covers bits `6i..6i + 6` and the value occupies bits
            // `8 * filler..8 * (filler + len)`.
            let mut input = vec![0_u8; filler];
            input.extend_from_slice(value);
            let encoded = engine.encode(&input).into_bytes();
            let first = (8 * filler).div_ceil(6);
            let end = 8 * input.len() / 6;
            if end >= first + MIN_BASE64_FRAGMENT_LEN {
                patterns.insert(encoded[first..end].to_vec());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A small deterministic PRNG (xorshift64*), so that the property tests
    /// need no extra crate and always see the same inputs.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }
    }

    fn masked(masker: &Masker, input: &str) -> String {
        masker.mask_str(input).into_owned()
    }

    /// Streams `input` in chunks of the given sizes (the last chunk takes the
    /// rest) and checks the held-back bound after every push.
    fn stream_chunks(masker: &Masker, input: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut stream = masker.stream();
        let mut out = Vec::new();
        let mut rest = input;
        for &size in sizes {
            let (chunk, tail) = rest.split_at(size.min(rest.len()));
            stream.push(chunk, &mut out);
            assert!(stream.pending_len() < stream.max_held());
            rest = tail;
        }
        stream.push(rest, &mut out);
        stream.finish(&mut out);
        assert_eq!(stream.pending_len(), 0);
        out
    }

    #[test]
    fn empty_masker_masks_nothing() {
        for masker in [
            Masker::empty(),
            Masker::default(),
            Masker::new(Vec::<&str>::new()),
        ] {
            assert!(masker.is_empty());
            assert_eq!(masker.pattern_count(), 0);
            assert_eq!(masker.max_pattern_len(), 0);
            assert!(!masker.contains(b"anything"));
            assert!(matches!(
                masker.mask_str("anything"),
                Cow::Borrowed("anything")
            ));
            assert_eq!(stream_chunks(&masker, b"abcdef", &[2, 0, 3]), b"abcdef");
            let mut doc = json!({"k": "v"});
            masker.mask_json(&mut doc);
            assert_eq!(doc, json!({"k": "v"}));
        }
    }

    #[test]
    fn values_shorter_than_four_bytes_are_ignored() {
        let masker = Masker::new(["", "a", "ab", "abc"]);
        assert!(masker.is_empty());
        let masker = Masker::new(["abc", "abcd"]);
        assert!(!masker.is_empty());
        assert_eq!(masked(&masker, "abc abcd abcde"), "abc *** ***e");
    }

    #[test]
    fn no_match_borrows_and_match_owns() {
        let masker = Masker::new(["correct-horse"]);
        assert!(matches!(
            masker.mask_bytes(b"nothing here"),
            Cow::Borrowed(b"nothing here")
        ));
        assert!(matches!(
            masker.mask_str("nothing here"),
            Cow::Borrowed("nothing here")
        ));
        assert!(matches!(masker.mask_bytes(b""), Cow::Borrowed(b"")));
        assert!(matches!(masker.mask_str("a correct-horse"), Cow::Owned(_)));
    }

    #[test]
    fn raw_values_are_masked_everywhere() {
        let masker = Masker::new([b"correct-horse".as_slice(), b"battery\xff"]);
        assert_eq!(
            masked(&masker, "correct-horsecorrect-horse x correct-horse."),
            "****** x ***."
        );
        assert_eq!(masker.mask_bytes(b"[battery\xff]").as_ref(), b"[***]");
        assert!(masker.contains(b"..correct-horse.."));
        assert!(!masker.contains(b"correct-hor"));
    }

    #[test]
    fn duplicate_values_share_patterns() {
        let once = Masker::new(["correct-horse"]);
        let twice = Masker::new(["correct-horse", "correct-horse"]);
        assert_eq!(once.pattern_count(), twice.pattern_count());
        assert_eq!(format!("{twice:?}"), format!("{once:?}"));
    }

    #[test]
    fn longer_overlapping_value_wins() {
        let masker = Masker::new(["secretvalue", "secretvalue-long", "value-long-tail"]);
        assert_eq!(masked(&masker, "a secretvalue-long b"), "a *** b");
        assert_eq!(masked(&masker, "a secretvalue! b"), "a ***! b");
        // A run of `CUT_LEN` bytes or more of the longer value is a cut echo.
        assert_eq!(masked(&masker, "a secretvalue-lon b"), "a *** b");
        // Leftmost first, then longest: the match at the earlier position
        // wins even though a longer value starts inside it.
        assert_eq!(masked(&masker, "secretvalue-long-tail"), "***-tail");
    }

    #[test]
    fn base64_inside_basic_auth_is_masked() {
        let masker = Masker::new(["hunter2-hunter2"]);
        let header = format!("Basic {}", STANDARD.encode("user:hunter2-hunter2"));
        assert_eq!(header, "Basic dXNlcjpodW50ZXIyLWh1bnRlcjI=");
        assert_eq!(masked(&masker, &header), "Basic dXNlcjp***I=");
    }

    #[test]
    fn base64_is_masked_at_every_alignment_and_alphabet() {
        // The value produces `+` and `/` (`-` and `_` in URL-safe base64).
        let value: &[u8] = b"\xfb\xff\xbf-tok\xfe\xef-\xfa\xfb";
        let masker = Masker::new([value]);
        for prefix_len in 0..7 {
            for suffix_len in 0..4 {
                let mut input = b"user:pad".repeat(2)[..prefix_len].to_vec();
                input.extend_from_slice(value);
                input.extend_from_slice(&b":xyz"[..suffix_len]);
                for engine in [&STANDARD, &URL_SAFE, &STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                    let encoded = engine.encode(&input);
                    let out = masked(&masker, &encoded);
                    assert!(out.contains(MASK), "{prefix_len}/{suffix_len}: {out}");
                    // At most the characters of the filler plus one partial
                    // character at each edge of the value stay visible.
                    let visible = out.len() - MASK.len();
                    let around = (prefix_len * 8).div_ceil(6) + (suffix_len * 8).div_ceil(6) + 4;
                    assert!(visible <= around, "{prefix_len}/{suffix_len}: {out}");
                }
            }
        }
        // A standalone encoding is masked whole, padding included.
        assert_eq!(masked(&masker, &STANDARD.encode(value)), MASK);
        assert_eq!(masked(&masker, &URL_SAFE_NO_PAD.encode(value)), MASK);
    }

    #[test]
    fn percent_encodings_are_masked() {
        let value = "p@ss w/rd+x~1*é";
        let masker = Masker::new([value]);
        let encodings = [
            "p%40ss%20w%2Frd%2Bx~1%2A%C3%A9",   // RFC 3986, upper-case hex
            "p%40ss%20w%2frd%2bx~1%2a%c3%a9",   // RFC 3986, lower-case hex
            "p%40ss+w%2Frd%2Bx~1%2A%C3%A9",     // form, RFC 3986 flavour
            "p%40ss+w%2Frd%2Bx%7E1*%C3%A9",     // form, WHATWG flavour
            "p%40ss%20w%2Frd%2Bx~1*%C3%A9",     // encodeURIComponent
            "p%40ss%20w%2Frd%2Bx%7E1%2A%C3%A9", // everything but letters and digits
        ];
        for encoded in encodings {
            let url = format!("https://api.example/cb?user=me&pw={encoded}&x=1");
            assert_eq!(
                masked(&masker, &url),
                "https://api.example/cb?user=me&pw=***&x=1",
                "{encoded}"
            );
        }
    }

    #[test]
    fn json_escaped_values_are_masked() {
        let value = "a\"b\\c\nd\t/é€😀<&>\u{1}\u{2028}";
        let masker = Masker::new([value]);
        // The serde_json form, checked against serde_json itself.
        let document = serde_json::to_string(&json!({"echo": value, "n": 1})).unwrap();
        assert_eq!(masked(&masker, &document), r#"{"echo":"***","n":1}"#);
        let encodings = [
            r#"a\"b\\c\nd\t\/é€😀<&>\u0001"#.to_owned() + "\u{2028}",
            r#"a\"b\\c\nd\t/\u00e9\u20ac\ud83d\ude00<&>\u0001\u2028"#.to_owned(),
            r#"a\"b\\c\nd\t\/\u00e9\u20ac\ud83d\ude00<&>\u0001\u2028"#.to_owned(),
            r#"a\"b\\c\nd\t/é€😀\u003c\u0026\u003e\u0001\u2028"#.to_owned(),
        ];
        for encoded in encodings {
            let text = format!("{{\"echo\":\"{encoded}\"}}");
            assert_eq!(masked(&masker, &text), r#"{"echo":"***"}"#, "{encoded}");
        }
    }

    #[test]
    fn json_escaped_bytes_of_a_non_utf8_value_are_masked() {
        let masker = Masker::new([b"bin\"\xff/x".as_slice()]);
        assert_eq!(
            masker.mask_bytes(b"{\"v\":\"bin\\\"\xff/x\"}").as_ref(),
            b"{\"v\":\"***\"}"
        );
        assert_eq!(
            masker.mask_bytes(b"{\"v\":\"bin\\\"\xff\\/x\"}").as_ref(),
            b"{\"v\":\"***\"}"
        );
    }

    #[test]
    fn counts_describe_the_pattern_set() {
        let masker = Masker::new(["abcd"]);
        // `abcd`, `YWJjZA==`, `YWJjZA` and the fragments `YWJjZ`, `FiY2` and
        // `hYmNk`; the URL-safe forms are duplicates.
        assert_eq!(masker.pattern_count(), 6);
        assert_eq!(masker.max_pattern_len(), "YWJjZA==".len());
        // A long value adds its runs of `CUT_LEN` bytes.
        let value = "a-value-of-twenty-bytes";
        let masker = Masker::new([value]);
        assert!(masker.pattern_count() > 6 + value.len() - CUT_LEN);
        assert_eq!(masker.max_pattern_len(), STANDARD.encode(value).len());
    }

    /// Checks that `value` is masked in each of `forms`, each placed inside
    /// surrounding text.
    fn check_forms(value: &str, forms: &[String]) {
        let masker = Masker::new([value]);
        for form in forms {
            let text = format!("{{\"error\":\"bad token '{form}'\",\"n\":1}}");
            assert_eq!(
                masked(&masker, &text),
                "{\"error\":\"bad token '***'\",\"n\":1}",
                "{form}"
            );
            assert!(masker.contains(text.as_bytes()), "{form}");
            let chunked = stream_chunks(&masker, text.as_bytes(), &[1; 200]);
            assert_eq!(
                chunked,
                masker.mask_bytes(text.as_bytes()).as_ref(),
                "{form}"
            );
        }
    }

    /// Writes `value` with the characters for which `pick` returns `true`
    /// escaped by `escape`.
    fn escaped(
        value: &str,
        pick: impl Fn(char) -> bool,
        escape: impl Fn(char) -> String,
    ) -> String {
        value
            .chars()
            .map(|c| if pick(c) { escape(c) } else { c.to_string() })
            .collect()
    }

    fn utf16(c: char, upper: bool) -> String {
        let mut units = [0_u16; 2];
        c.encode_utf16(&mut units)
            .iter()
            .map(|u| {
                if upper {
                    format!("\\u{u:04X}")
                } else {
                    format!("\\u{u:04x}")
                }
            })
            .collect()
    }

    fn percent(c: char, upper: bool) -> String {
        let mut utf8 = [0_u8; 4];
        c.encode_utf8(&mut utf8)
            .bytes()
            .map(|b| {
                if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    }

    #[test]
    fn every_escape_form_of_a_value_is_masked() {
        let value = "Tok-en+'/&x_9.Z~é😀";
        let all = |_| true;
        let odd = |c: char| (c as u32) % 2 == 1;
        let dotnet = |c: char| matches!(c, '-' | '+' | '\'' | '&') || !c.is_ascii();
        let forms = [
            value.to_owned(),
            escaped(value, all, |c| utf16(c, false)),
            escaped(value, all, |c| utf16(c, true)),
            escaped(value, odd, |c| utf16(c, true)),
            escaped(value, dotnet, |c| utf16(c, false)),
            escaped(value, all, |c| format!("&#{};", c as u32)),
            escaped(value, all, |c| format!("&#x{:x};", c as u32)),
            escaped(value, all, |c| format!("&#X{:X}", c as u32)),
            escaped(
                value,
                |c| "+'/&".contains(c),
                |c| match c {
                    '+' => "&plus;".into(),
                    '\'' => "&apos;".into(),
                    '/' => "&sol;".into(),
                    _ => "&amp;".into(),
                },
            ),
            escaped(value, all, |c| percent(c, true)),
            escaped(value, all, |c| percent(c, false)),
            escaped(
                value,
                |c| !c.is_ascii_alphanumeric() && c != '/',
                |c| percent(c, true),
            ),
            // Mixed: each character in another form.
            value
                .chars()
                .enumerate()
                .map(|(i, c)| match i % 4 {
                    0 => utf16(c, i % 8 == 0),
                    1 => percent(c, false),
                    2 => format!("&#x{:x};", c as u32),
                    _ => c.to_string(),
                })
                .collect(),
            r"Tok-en+'\/&x_9.Z~\u00e9\ud83d\ude00".to_owned(),
        ];
        check_forms(value, &forms);
    }

    #[test]
    fn a_cut_echo_is_masked_whole() {
        let value = "abcdefghijklmnopqrstuvwxyz0123456789ABCD";
        let masker = Masker::new([value]);
        for len in CUT_LEN..value.len() {
            let text = format!("header too long: '{}...'", &value[..len]);
            assert_eq!(masked(&masker, &text), "header too long: '***...'", "{len}");
            // A run from the middle, also when escaped.
            let run = &value[7..7 + len.min(value.len() - 7)];
            assert_eq!(masked(&masker, &format!("<{run}>")), "<***>", "{len}");
            let run = escaped(run, |c| c.is_ascii_digit(), |c| utf16(c, true));
            assert_eq!(masked(&masker, &format!("<{run}>")), "<***>", "{len}");
        }
        // Shorter runs are ordinary text.
        let short = &value[..CUT_LEN - 1];
        assert_eq!(masked(&masker, short), short);
        // A value of at most `CUT_LEN` bytes is matched whole only.
        let masker = Masker::new(["abcdefghijkl"]);
        assert_eq!(masked(&masker, "abcdefghijk"), "abcdefghijk");
    }

    #[test]
    fn trimmed_and_form_encoded_values_are_masked() {
        let value = "  pass word-1\t\n";
        check_forms(
            value,
            &[
                "pass word-1".to_owned(),
                "pass+word-1".to_owned(),
                "pass%20word-1".to_owned(),
                "++pass+word%2D1%09%0A".to_owned(),
            ],
        );
    }

    #[test]
    fn escape_like_text_in_a_value_is_masked_raw_and_escaped() {
        let value = r"a%41b\u0043&amp;d";
        check_forms(
            value,
            &[value.to_owned(), r"a%2541b%5Cu0043%26amp%3Bd".to_owned()],
        );
        let value = r"pass\word\u";
        check_forms(value, &[value.to_owned(), r"pass\\word\\u".to_owned()]);
    }

    #[test]
    fn contains_any_case_finds_values_in_lowercased_text() {
        let masker = Masker::new(["Secret-Token-XYZ", "0123456789AbCdEfGhIj"]);
        assert!(masker.contains_any_case(b"x-echo-secret-token-xyz"));
        assert!(masker.contains_any_case(b"x-secret%2dtoken-xyz"));
        // A cut run of a longer value, lowercased.
        assert!(masker.contains_any_case(b"x-0123456789abc"));
        assert!(!masker.contains_any_case(b"x-secret-toke"));
        assert!(!masker.contains_any_case(b"content-type"));
        assert!(!Masker::empty().contains_any_case(b"anything"));
    }

    #[test]
    fn non_utf8_value_inside_text_yields_valid_utf8() {
        // The value ends in the first two bytes of "€" (E2 82 AC).
        let masker = Masker::new([b"price\xe2\x82".as_slice()]);
        assert_eq!(masked(&masker, "price€ ok"), "***\u{fffd} ok");
    }

    #[test]
    fn mask_json_masks_keys_strings_and_numbers() {
        let masker = Masker::new(["tok-123456", "20250101"]);
        let mut doc = json!({
            "plain": "nothing",
            "token": "Bearer tok-123456",
            "tok-123456": {"nested": ["x", "tok-123456", {"deeper": "tok-123456!"}]},
            "count": 20250101,
            "other": 42,
            "flags": [true, null],
        });
        masker.mask_json(&mut doc);
        assert_eq!(
            doc,
            json!({
                "plain": "nothing",
                "token": "Bearer ***",
                "***": {"nested": ["x", "***", {"deeper": "***!"}]},
                "count": "***",
                "other": 42,
                "flags": [true, null],
            })
        );
    }

    #[test]
    fn mask_json_keeps_entries_whose_masked_keys_collide() {
        let masker = Masker::new(["secret-one", "secret-two"]);
        let mut doc = json!({"secret-one": 1, "secret-two": 2, "***": 0});
        masker.mask_json(&mut doc);
        let map = doc.as_object().unwrap();
        assert_eq!(map.len(), 3);
        let mut values: Vec<i64> = map.values().map(|v| v.as_i64().unwrap()).collect();
        values.sort_unstable();
        assert_eq!(values, [0, 1, 2]);
        assert!(map.keys().all(|key| key.starts_with(MASK)));
    }

    #[test]
    fn mask_json_handles_deep_nesting_without_recursion() {
        let mut doc = json!("tok-123456");
        for _ in 0..100_000 {
            doc = Value::Array(vec![doc]);
        }
        Masker::new(["tok-123456"]).mask_json(&mut doc);
        let mut inner = &doc;
        while let Value::Array(items) = inner {
            inner = &items[0];
        }
        assert_eq!(inner, &json!(MASK));
        // Dismantle iteratively: dropping a deep value recurses.
        let mut next = Some(doc);
        while let Some(Value::Array(mut items)) = next {
            next = items.pop();
        }
    }

    #[test]
    fn mask_pointers_replaces_named_fields() {
        let mut doc = json!({
            "token": "abc",
            "items": [{"secret": 1}, {"secret": {"a": 2}}],
            "a/b": {"c~d": "x", "keep": "y"},
            "kept": "z",
        });
        mask_pointers(
            &mut doc,
            &[
                "/token",
                "/items/1/secret",
                "/a~1b/c~0d",
                "/missing",
                "/items/9",
                "/items/01",
                "no-slash",
            ],
        );
        assert_eq!(
            doc,
            json!({
                "token": "***",
                "items": [{"secret": 1}, {"secret": "***"}],
                "a/b": {"c~d": "***", "keep": "y"},
                "kept": "z",
            })
        );
        let pointers = vec![String::from("/items/0")];
        mask_pointers(&mut doc, &pointers);
        assert_eq!(doc["items"][0], json!(MASK));
        mask_pointers(&mut doc, &[""]);
        assert_eq!(doc, json!(MASK));
    }

    #[test]
    fn validate_pointer_accepts_rfc_6901_pointers() {
        for ok in [
            "",
            "/",
            "/token",
            "/items/0/secret",
            "/a~1b/c~0d",
            "//",
            "/~01",
        ] {
            assert_eq!(validate_pointer(ok), Ok(()), "{ok}");
        }
        let err = validate_pointer("token").unwrap_err();
        assert!(
            err.contains("`token`") && err.contains("start with `/`"),
            "{err}"
        );
        let err = validate_pointer("/a~2b").unwrap_err();
        assert!(err.contains("`/a~2b`") && err.contains("byte 2"), "{err}");
        assert!(validate_pointer("/a~").is_err());
    }

    #[test]
    fn debug_output_never_shows_values() {
        let masker = Masker::new(["visible-secret-value"]);
        let text = format!("{masker:?} {:?} {masker:#?}", masker.stream());
        assert!(!text.contains("visible"), "{text}");
        assert!(text.contains("values: 1"), "{text}");
        assert_eq!(
            format!("{:?}", Masker::empty()),
            "Masker { values: 0, patterns: 0 }"
        );
    }

    #[test]
    fn extend_adds_values_without_changing_the_original() {
        let base = Masker::new(["first-secret"]);
        let more = base.extend(["second-secret", "abc"]);
        assert_eq!(
            masked(&base, "first-secret second-secret"),
            "*** second-secret"
        );
        assert_eq!(masked(&more, "first-secret second-secret"), "*** ***");
        let same = more.extend(["first-secret", "xyz"]);
        assert!(Arc::ptr_eq(
            same.inner.as_ref().unwrap(),
            more.inner.as_ref().unwrap()
        ));
        let from_empty = Masker::empty().extend(["third-secret"]);
        assert_eq!(masked(&from_empty, "third-secret"), MASK);
        assert!(Masker::empty().extend(["ab"]).is_empty());
    }

    #[test]
    fn types_can_be_shared_across_threads() {
        fn assert_send_sync<T: Send + Sync + 'static>() {}
        assert_send_sync::<Masker>();
        assert_send_sync::<StreamMasker>();
    }

    #[test]
    fn stream_masks_across_chunk_boundaries() {
        let masker = Masker::new(["s3cr3t-value"]);
        let input = b"token: s3cr3t-value, again s3cr3t-value.";
        let expected = b"token: ***, again ***.";
        for split in 0..=input.len() {
            assert_eq!(stream_chunks(&masker, input, &[split]), expected, "{split}");
        }
        assert_eq!(stream_chunks(&masker, input, &[1; 64]), expected);
    }

    #[test]
    fn stream_releases_output_early_and_can_be_reused() {
        let masker = Masker::new(["s3cr3t-value"]);
        let keep = masker.max_pattern_len() - 1;
        let mut stream = masker.stream();
        let mut out = Vec::new();
        let input = vec![b'x'; 1000];
        stream.push(&input, &mut out);
        assert_eq!(out.len(), 1000 - keep);
        assert_eq!(stream.pending_len(), keep);
        stream.push(&input, &mut out);
        assert_eq!(out.len(), 2000 - keep);
        stream.finish(&mut out);
        assert_eq!(out, vec![b'x'; 2000]);
        out.clear();
        stream.push(b"s3cr3t-val", &mut out);
        stream.push(b"ue", &mut out);
        stream.finish(&mut out);
        assert_eq!(out, MASK.as_bytes());
    }

    /// Returns masker values chosen to stress leftmost-longest decisions:
    /// prefixes of each other, self-overlapping, sharing bytes with the
    /// encodings of the others, and with characters that every encoding
    /// changes.
    fn tricky_values() -> Vec<Vec<u8>> {
        [
            &b"aaaa"[..],
            b"aaaab",
            b"abab-abab",
            b"tok-1234",
            b"tok-1234-5678-extra",
            b"p@ss w/rd+\"q\"\\\n",
            "é€😀-value".as_bytes(),
            b"\xfb\xff\xbf-bin\xfe",
            b"dG9rLTEy", // base64 of "tok-12"
        ]
        .iter()
        .map(|v| v.to_vec())
        .collect()
    }

    /// Builds a random input from the patterns of `values`, their prefixes
    /// and suffixes, base64 of values inside longer strings, and filler.
    fn random_input(rng: &mut Rng, values: &[Vec<u8>], patterns: &[Vec<u8>]) -> Vec<u8> {
        let mut input = Vec::new();
        let pieces = rng.below(12);
        for _ in 0..pieces {
            match rng.below(8) {
                0 => input.extend_from_slice(rng.pick(patterns).as_slice()),
                1 => {
                    let pattern = rng.pick(patterns);
                    let end = rng.below(pattern.len() + 1);
                    input.extend_from_slice(&pattern[..end]);
                }
                2 => {
                    let pattern = rng.pick(patterns);
                    let start = rng.below(pattern.len() + 1);
                    input.extend_from_slice(&pattern[start..]);
                }
                3 => {
                    let mut inner = b"user:".to_vec()[..rng.below(6)].to_vec();
                    inner.extend_from_slice(rng.pick(values).as_slice());
                    inner.extend_from_slice(&b"tail"[..rng.below(5)]);
                    input.extend_from_slice(STANDARD.encode(inner).as_bytes());
                }
                4 | 5 => {
                    let value = rng.pick(values).clone();
                    input.extend(random_escapes(rng, &value));
                }
                _ => {
                    for _ in 0..rng.below(8) {
                        input.push(*rng.pick(b"ab-t0k12 x\"\\%+/=A&#;u"));
                    }
                }
            }
        }
        input
    }

    /// Writes `value` (or a cut of it) with each byte or character randomly
    /// escaped in one of the decoded forms.
    fn random_escapes(rng: &mut Rng, value: &[u8]) -> Vec<u8> {
        let value = &value[..value.len() - rng.below(value.len().min(6))];
        let mut out = Vec::new();
        let Ok(text) = std::str::from_utf8(value) else {
            for &b in value {
                match rng.below(3) {
                    0 => out.push(b),
                    1 => out.extend(format!("%{b:02x}").bytes()),
                    _ => out.extend(format!("%{b:02X}").bytes()),
                }
            }
            return out;
        };
        for c in text.chars() {
            let form = match rng.below(7) {
                0 => utf16(c, rng.below(2) == 0),
                1 => percent(c, rng.below(2) == 0),
                2 => format!("&#{};", c as u32),
                3 => format!("&#x{:x}", c as u32),
                _ => c.to_string(),
            };
            out.extend(form.bytes());
        }
        out
    }

    #[test]
    fn stream_equals_mask_bytes_for_any_chunking() {
        let values = tricky_values();
        let masker = Masker::new(&values);
        let patterns: Vec<Vec<u8>> = patterns_of(&values).into_iter().collect();
        let mut rng = Rng(0x5eed_1234_abcd_ef01);
        let mut masked_inputs = 0;
        for round in 0..1500 {
            let input = random_input(&mut rng, &values, &patterns);
            let expected = masker.mask_bytes(&input).into_owned();
            masked_inputs += usize::from(expected != input);
            // Every single split point.
            for split in 0..=input.len() {
                let out = stream_chunks(&masker, &input, &[split]);
                assert_eq!(out, expected, "round {round}, split {split}");
            }
            // Random chunk sizes, including empty chunks.
            for _ in 0..8 {
                let mut sizes = Vec::new();
                let mut total = 0;
                while total < input.len() {
                    let size = rng.below(2 * masker.max_pattern_len() + 2);
                    sizes.push(size);
                    total += size;
                }
                let out = stream_chunks(&masker, &input, &sizes);
                assert_eq!(out, expected, "round {round}, sizes {sizes:?}");
            }
        }
        // The generator must exercise masking, not only pass-through.
        assert!(masked_inputs > 1000, "{masked_inputs}");
    }

    #[test]
    fn redact_all_fallback_fails_closed() {
        let masker = Masker {
            inner: Some(Arc::new(Inner {
                matcher: Matcher::RedactAll,
                values: BTreeSet::new(),
                pattern_count: 0,
                max_pattern_len: 4,
                any_case: std::sync::OnceLock::from(None),
            })),
        };
        assert!(matches!(masker.mask_bytes(b""), Cow::Borrowed(b"")));
        assert_eq!(masker.mask_str("anything"), MASK);
        assert!(masker.contains(b"x"));
        assert_eq!(stream_chunks(&masker, b"abc", &[1]), MASK.as_bytes());
        assert_eq!(stream_chunks(&masker, b"", &[0]), b"");
    }

    /// Masks `input` by trying every pattern, and every run of at least
    /// `CUT_LEN` bytes of every value, at every position of the canonical
    /// text: the definition of leftmost-longest masking, without any
    /// automaton. A match replaces the source of every token it touches.
    fn reference_mask(patterns: &BTreeSet<Vec<u8>>, values: &[Vec<u8>], input: &[u8]) -> Vec<u8> {
        let canon = Canonical::new(input, true);
        let text = &canon.text;
        let (mut out, mut at, mut released) = (Vec::new(), 0, 0);
        while at < text.len() {
            let rest = &text[at..];
            let pattern = patterns
                .iter()
                .filter(|pattern| rest.starts_with(pattern))
                .map(Vec::len)
                .max();
            let run = values
                .iter()
                .filter(|value| value.len() > CUT_LEN)
                .flat_map(|value| (0..value.len()).map(move |k| &value[k..]))
                .map(|tail| tail.iter().zip(rest).take_while(|(a, b)| a == b).count())
                .filter(|&len| len >= CUT_LEN)
                .max();
            match pattern.max(run) {
                Some(len) => {
                    let (start, _, _) = canon.token_at(at);
                    let (_, end, next) = canon.token_at(at + len - 1);
                    out.extend_from_slice(&input[released..start]);
                    out.extend_from_slice(MASK.as_bytes());
                    (at, released) = (next, end);
                }
                None => at += 1,
            }
        }
        out.extend_from_slice(&input[released..]);
        out
    }

    fn patterns_of(values: &[Vec<u8>]) -> BTreeSet<Vec<u8>> {
        let mut patterns = BTreeSet::new();
        let mut runs = BTreeMap::new();
        for (index, value) in values.iter().enumerate() {
            add_patterns(value, &mut patterns);
            add_runs(index, value, &mut runs);
        }
        patterns.extend(runs.into_keys());
        patterns
    }

    #[test]
    fn searcher_matches_the_definition() {
        let mut rng = Rng(0x0dd_ba11_cafe_f00d);
        let all = tricky_values();
        for round in 0..300 {
            // Random subsets change the shortest pattern, hence the step.
            let values: Vec<Vec<u8>> = all.iter().filter(|_| rng.below(2) == 0).cloned().collect();
            if values.is_empty() {
                continue;
            }
            let masker = Masker::new(&values);
            let patterns = patterns_of(&values);
            let list: Vec<Vec<u8>> = patterns.iter().cloned().collect();
            for _ in 0..20 {
                let input = random_input(&mut rng, &all, &list);
                let expected = reference_mask(&patterns, &values, &input);
                assert_eq!(masker.mask_bytes(&input), expected, "round {round}");
                assert_eq!(masker.contains(&input), expected != input, "round {round}");
            }
        }
    }

    #[test]
    fn prefilter_step_follows_the_shortest_pattern() {
        let step = |masker: &Masker| match masker.inner.as_deref().map(|inner| &inner.matcher) {
            Some(Matcher::Search(searcher)) => searcher.step,
            _ => 0,
        };
        assert_eq!(step(&Masker::new(["abcd"])), 1);
        assert_eq!(step(&Masker::new(["abcdefg"])), 4);
        assert_eq!(
            step(&Masker::new(["a-forty-byte-value-a-forty-byte-value-40"])),
            MAX_STEP
        );
    }

    #[test]
    fn near_matches_fall_back_to_the_automaton() {
        let values = vec![b"abcdefgh-XYZ".to_vec()];
        let masker = Masker::new(&values);
        let Some(Matcher::Search(searcher)) = masker.inner.as_deref().map(|inner| &inner.matcher)
        else {
            panic!("expected a searcher");
        };
        // Every window hits the prefilter and no candidate verifies.
        let mut input = b"abcdefgh-".repeat(500);
        assert!(searcher.find_filtered(&input, 0).is_err());
        input.extend_from_slice(b"abcdefgh-XYZ!");
        let expected = reference_mask(&patterns_of(&values), &values, &input);
        assert!(expected.ends_with(b"***!"));
        assert_eq!(masker.mask_bytes(&input), expected);
        assert_eq!(stream_chunks(&masker, &input, &[7, 100, 3, 1000]), expected);
    }
}

#[cfg(test)]
#[path = "proptests/mask.rs"]
mod proptests;

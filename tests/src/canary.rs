//! Canary secrets and the search that proves they did not leak.
//!
//! A test stores a [`canary`] as a secret, runs a step, then calls
//! [`assert_absent`] on every place the value must not reach (guest memory,
//! logs, history, bytes a server received). The search also looks for the
//! usual encodings of each canary, because a leak in base64 or hex is still a
//! leak. Failure messages name the canary by index and never print it.

use aho_corasick::{AhoCorasick, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};

/// Encoded forms shorter than this are not searched: they would match by chance.
const MIN_ENCODED_LEN: usize = 8;

/// Makes a recognisable, random, secret-like value: `canary-<label>-<32 hex digits>`.
///
/// The 128 random bits make an accidental match impossible in practice, and
/// the label tells a reader of a dump which secret they are looking at.
pub fn canary(label: &str) -> String {
    let bytes: [u8; 16] = rand::random();
    format!("canary-{label}-{}", hex_lower(&bytes))
}

/// Where and in which form a needle was found by [`find_encoded`].
///
/// It holds the needle's index, never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The index of the needle in the slice that was searched for.
    pub needle: usize,
    /// The byte offset in the haystack where the match starts.
    pub offset: usize,
    /// The form that matched, such as `"raw"` or `"base64 (url-safe, alignment 1)"`.
    pub encoding: &'static str,
}

/// Searches `haystack` for each needle and its encoded forms, and returns the
/// earliest match.
///
/// The forms are: the raw bytes; standard and url-safe base64 at each of the
/// three byte alignments (so a needle embedded in a larger encoded blob is
/// found, with or without padding); percent-encoding of non-alphanumerics and
/// of every byte, in upper- and lowercase hex; form-urlencoding; JSON string
/// escaping as serde_json writes it and with every character `\u`-escaped; and
/// hex in both cases. Encoded forms shorter than 8 bytes are skipped, so
/// needles should be at least 8 bytes long ([`canary`] values are about 45).
///
/// # Panics
///
/// Panics if a needle is empty, since it would match everywhere.
pub fn find_encoded(haystack: &[u8], needles: &[&str]) -> Option<Found> {
    let mut patterns: Vec<Vec<u8>> = Vec::new();
    let mut owners: Vec<(usize, &'static str)> = Vec::new();
    for (index, needle) in needles.iter().enumerate() {
        assert!(!needle.is_empty(), "needle #{index} is empty");
        for (encoding, pattern) in encoded_forms(needle) {
            if encoding != "raw" && pattern.len() < MIN_ENCODED_LEN {
                continue;
            }
            if patterns.contains(&pattern) {
                continue;
            }
            patterns.push(pattern);
            owners.push((index, encoding));
        }
    }
    // Leftmost matching reports the match that starts first, whatever its length.
    let searcher = AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostFirst)
        .build(&patterns)
        .expect("needle patterns are small");
    let found = searcher.find(haystack)?;
    let (needle, encoding) = owners[found.pattern().as_usize()];
    Some(Found {
        needle,
        offset: found.start(),
        encoding,
    })
}

/// Panics unless `haystack` contains none of `needles` in any form
/// [`find_encoded`] knows.
///
/// `what` names the haystack in the message, for example `"guest memory"`.
/// The message gives the needle's index, the offset and the encoding, such
/// as `canary #0 found in history at offset 120 (hex, lowercase)`, and never
/// the needle or the bytes around it.
pub fn assert_absent(haystack: &[u8], needles: &[&str], what: &str) {
    if let Some(found) = find_encoded(haystack, needles) {
        panic!(
            "canary #{} found in {what} at offset {} ({})",
            found.needle, found.offset, found.encoding
        );
    }
}

/// Lists the forms of `needle` that [`find_encoded`] searches for.
fn encoded_forms(needle: &str) -> Vec<(&'static str, Vec<u8>)> {
    let bytes = needle.as_bytes();
    let mut forms = vec![("raw", bytes.to_vec())];

    const STANDARD_NAMES: [&str; 3] = [
        "base64 (standard, alignment 0)",
        "base64 (standard, alignment 1)",
        "base64 (standard, alignment 2)",
    ];
    const URL_SAFE_NAMES: [&str; 3] = [
        "base64 (url-safe, alignment 0)",
        "base64 (url-safe, alignment 1)",
        "base64 (url-safe, alignment 2)",
    ];
    for shift in 0..3 {
        forms.push((STANDARD_NAMES[shift], base64_core(bytes, shift, false)));
        forms.push((URL_SAFE_NAMES[shift], base64_core(bytes, shift, true)));
    }

    let percent = utf8_percent_encode(needle, NON_ALPHANUMERIC).to_string();
    forms.push(("percent-encoded", percent.clone().into_bytes()));
    forms.push((
        "percent-encoded, lowercase hex",
        lowercase_percent_escapes(&percent).into_bytes(),
    ));
    let every_byte_upper: String = bytes.iter().map(|b| format!("%{b:02X}")).collect();
    let every_byte_lower: String = bytes.iter().map(|b| format!("%{b:02x}")).collect();
    forms.push(("percent-encoded, every byte", every_byte_upper.into_bytes()));
    forms.push((
        "percent-encoded, every byte, lowercase hex",
        every_byte_lower.into_bytes(),
    ));
    let form: String = url::form_urlencoded::byte_serialize(bytes).collect();
    forms.push(("form-urlencoded", form.into_bytes()));

    let json = serde_json::to_string(needle).expect("a string always serializes");
    let json_inner = json
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
        .unwrap_or(&json);
    forms.push(("JSON-escaped", json_inner.as_bytes().to_vec()));
    let unicode_lower: String = needle
        .encode_utf16()
        .map(|unit| format!("\\u{unit:04x}"))
        .collect();
    let unicode_upper: String = needle
        .encode_utf16()
        .map(|unit| format!("\\u{unit:04X}"))
        .collect();
    forms.push(("JSON \\u-escaped", unicode_lower.into_bytes()));
    forms.push((
        "JSON \\u-escaped, uppercase hex",
        unicode_upper.into_bytes(),
    ));

    forms.push(("hex, lowercase", hex_lower(bytes).into_bytes()));
    forms.push((
        "hex, uppercase",
        hex_lower(bytes).to_uppercase().into_bytes(),
    ));
    forms
}

/// Returns the base64 characters that depend only on `bytes` when they sit
/// `shift` bytes (0 to 2) into a larger encoded message.
///
/// The characters that mix in bits of the surrounding bytes are cut off at
/// both ends, so the result matches wherever the needle is embedded, with or
/// without padding.
fn base64_core(bytes: &[u8], shift: usize, url_safe: bool) -> Vec<u8> {
    let mut shifted = vec![0u8; shift];
    shifted.extend_from_slice(bytes);
    let encoded = if url_safe {
        URL_SAFE_NO_PAD.encode(&shifted)
    } else {
        STANDARD_NO_PAD.encode(&shifted)
    };
    // Character i covers bits 6i to 6i+6 of the shifted message.
    let first = (8 * shift).div_ceil(6);
    let end = (8 * (shift + bytes.len())) / 6;
    encoded.as_bytes()[first..end.max(first)].to_vec()
}

/// Rewrites the hex digits of each `%XX` escape in lowercase.
fn lowercase_percent_escapes(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut digits_left = 0;
    for ch in encoded.chars() {
        if digits_left > 0 {
            out.push(ch.to_ascii_lowercase());
            digits_left -= 1;
        } else {
            if ch == '%' {
                digits_left = 2;
            }
            out.push(ch);
        }
    }
    out
}

/// Formats bytes as lowercase hex.
fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests fail loudly on unexpected errors")]
mod tests {
    use super::*;

    /// Returns what `find_encoded` reports for `needle` inside `haystack`.
    fn check(haystack: &[u8], needle: &str) -> Option<&'static str> {
        find_encoded(haystack, &[needle]).map(|found| found.encoding)
    }

    #[test]
    fn canary_shape() {
        let value = canary("github");
        let hex = value.strip_prefix("canary-github-").unwrap();
        assert_eq!(hex.len(), 32);
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(value, canary("github"));
    }

    #[test]
    fn finds_raw_with_offset() {
        let secret = canary("raw");
        let haystack = format!("0123{secret}tail");
        let found = find_encoded(haystack.as_bytes(), &["unrelated-needle", &secret]).unwrap();
        assert_eq!(
            found,
            Found {
                needle: 1,
                offset: 4,
                encoding: "raw"
            }
        );
    }

    #[test]
    fn finds_base64_at_every_alignment_and_alphabet() {
        // Bytes 0xfb and 0xff produce '+' and '/' (or '-' and '_') in base64,
        // so the two alphabets really differ for this needle.
        let secret = format!("{}\u{00fb}\u{00ff}?>?>", canary("b64"));
        for prefix in ["", "x", "xy", "xyz"] {
            let message = format!("{prefix}{secret}suffix");
            let standard = base64::engine::general_purpose::STANDARD.encode(&message);
            let url_safe = base64::engine::general_purpose::URL_SAFE.encode(&message);
            let embedded = format!("Authorization: Basic {standard}\r\n");
            assert!(
                check(embedded.as_bytes(), &secret)
                    .unwrap()
                    .contains("standard")
            );
            assert!(
                check(url_safe.as_bytes(), &secret)
                    .unwrap()
                    .contains("url-safe")
            );
        }
    }

    #[test]
    fn finds_percent_json_and_hex_forms() {
        let secret = format!("{} with \"quote\" & space/slash", canary("enc"));
        let percent = utf8_percent_encode(&secret, NON_ALPHANUMERIC).to_string();
        assert_eq!(check(percent.as_bytes(), &secret), Some("percent-encoded"));
        let lower = lowercase_percent_escapes(&percent);
        assert_eq!(
            check(lower.as_bytes(), &secret),
            Some("percent-encoded, lowercase hex")
        );
        let form: String = url::form_urlencoded::byte_serialize(secret.as_bytes()).collect();
        assert_eq!(check(form.as_bytes(), &secret), Some("form-urlencoded"));
        let json = serde_json::json!({ "token": secret }).to_string();
        assert_eq!(check(json.as_bytes(), &secret), Some("JSON-escaped"));
        let hex = hex_lower(secret.as_bytes());
        assert_eq!(check(hex.as_bytes(), &secret), Some("hex, lowercase"));
        assert_eq!(
            check(hex.to_uppercase().as_bytes(), &secret),
            Some("hex, uppercase")
        );
        let escaped: String = secret
            .encode_utf16()
            .map(|unit| format!("\\u{unit:04x}"))
            .collect();
        assert_eq!(check(escaped.as_bytes(), &secret), Some("JSON \\u-escaped"));
    }

    #[test]
    fn absent_passes_and_present_panics_without_the_value() {
        let secret = canary("panic");
        assert_absent(b"nothing to see here", &[&secret], "log");
        let haystack = format!("log line {secret}");
        let panic = std::panic::catch_unwind(|| {
            assert_absent(haystack.as_bytes(), &[&secret], "log");
        })
        .unwrap_err();
        let message = panic.downcast_ref::<String>().unwrap();
        assert_eq!(message, "canary #0 found in log at offset 9 (raw)");
        assert!(!message.contains(&secret));
    }
}

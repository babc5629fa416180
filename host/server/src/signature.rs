//! HMAC-SHA256 signatures on incoming webhook requests, with a timestamp window.
//!
//! A sender signs each request and puts the result in one header:
//!
//! ```text
//! X-Wrun-Signature: t=1735689600,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd
//! ```
//!
//! `t` is the sending time in Unix seconds and each `v1` is the lowercase or
//! uppercase hex HMAC-SHA256, keyed with the webhook secret, of the bytes
//! `<t>.<raw body>` (the decimal `t`, a full stop, then the body exactly as
//! received). A header may carry several `v1` entries, so a sender can sign
//! with the old and the new secret while a secret is being rotated; one
//! matching entry suffices. Entries with other keys (such as a future `v2`)
//! are ignored, so the scheme can grow.
//!
//! [`verify`] compares MACs in constant time (`hmac`'s `verify_slice`), checks
//! the MAC before the timestamp (so only an authentic but stale or early
//! request is told [`SignatureError::OutsideWindow`]), and never puts the
//! secret, the expected MAC or the header's MACs into an error.
//!
//! # Replays
//!
//! One delivery can be spelled many ways that all verify: an extra unknown
//! entry, upper-case hex, spaces, a leading zero in `t` (the MAC covers the
//! decimal `t` as the sender meant it), the `v1` entry repeated. [`verify`]
//! therefore returns the canonical [`Verified`] form, the parsed `t` and the
//! MAC that matched, and the daemon deduplicates deliveries on that, never on
//! the raw header.

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The name of the request header that carries the signature.
pub const HEADER_NAME: &str = "X-Wrun-Signature";

/// The default allowed distance between `t` and the server clock, in seconds.
pub const DEFAULT_WINDOW_SECS: i64 = 300;

/// The longest header value [`verify`] parses, in bytes.
const MAX_HEADER_LEN: usize = 1024;

/// The most `v1` entries [`verify`] accepts in one header.
const MAX_SIGNATURES: usize = 8;

/// The length of an HMAC-SHA256 output, in bytes.
const MAC_LEN: usize = 32;

/// The SHA-256 block size, which is also the HMAC key block size.
const BLOCK_LEN: usize = 64;

/// Why a webhook request's signature was refused.
///
/// No variant carries the secret, the expected MAC or a MAC from the header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The request has no signature header, or it is empty.
    #[error("missing {HEADER_NAME} header")]
    Missing,
    /// The header does not follow `t=<unix secs>,v1=<hex>[,v1=<hex>...]`.
    #[error("malformed {HEADER_NAME} header: {reason}")]
    Malformed {
        /// What is wrong with the header, without echoing it.
        reason: &'static str,
    },
    /// The MAC matched but `t` is further than the window from the server clock.
    #[error(
        "{HEADER_NAME} timestamp is {skew_secs} s from the server clock, beyond the allowed {window_secs} s"
    )]
    OutsideWindow {
        /// `now - t`: positive when the request is old, negative when it is early.
        skew_secs: i128,
        /// The allowed distance, in seconds.
        window_secs: i64,
    },
    /// No `v1` entry matches the body and timestamp under this secret.
    #[error("{HEADER_NAME} does not match the request body")]
    Mismatch,
}

impl SignatureError {
    /// Returns a stable machine-readable code for API error bodies and logs.
    pub fn code(&self) -> &'static str {
        match self {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed { .. } => "signature_malformed",
            SignatureError::OutsideWindow { .. } => "signature_outside_window",
            SignatureError::Mismatch => "signature_mismatch",
        }
    }
}

/// Returns the `X-Wrun-Signature` header value for `body` sent at `t`.
#[cfg(test)]
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> String {
    let tag = mac(secret, t, body).finalize().into_bytes();
    let mut out = String::with_capacity(24 + 2 * MAC_LEN);
    out.push_str("t=");
    out.push_str(&t.to_string());
    out.push_str(",v1=");
    for byte in tag {
        out.push(HEX[usize::from(byte >> 4)] as char);
        out.push(HEX[usize::from(byte & 0x0f)] as char);
    }
    out
}

/// A verified delivery in canonical form: equal for every spelling of one
/// signed request, whatever else its header carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The signing time, in Unix seconds, as parsed (leading zeros gone).
    pub t: i64,
    /// The MAC that matched, as bytes (hex case and position forgotten).
    pub mac: [u8; MAC_LEN],
}

/// Checks a request's signature header against `body`, at server time `now`.
///
/// `header` is the raw `X-Wrun-Signature` value, or `None` if the request had
/// none. `window_secs` is how far `t` may lie from `now`, in either direction
/// ([`DEFAULT_WINDOW_SECS`] unless configured).
///
/// # Errors
///
/// [`SignatureError::Missing`] without a header, [`SignatureError::Malformed`]
/// if it does not parse, [`SignatureError::Mismatch`] if no `v1` entry matches,
/// and [`SignatureError::OutsideWindow`] if one matches but `t` is too old or
/// too far in the future.
pub fn verify(
    secret: &[u8],
    header: Option<&str>,
    body: &[u8],
    now: i64,
    window_secs: i64,
) -> Result<Verified, SignatureError> {
    let header = match header.map(str::trim) {
        None | Some("") => return Err(SignatureError::Missing),
        Some(h) => h,
    };
    let parsed = parse_header(header)?;
    let expected = mac(secret, parsed.t, body);
    let mut matched = false;
    for candidate in &parsed.signatures[..parsed.count] {
        // `verify_slice` compares in constant time; every entry is checked so
        // the time taken does not depend on which entry matched.
        matched |= expected.clone().verify_slice(candidate).is_ok();
    }
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    let skew = i128::from(now) - i128::from(parsed.t);
    if skew.abs() > i128::from(window_secs.max(0)) {
        return Err(SignatureError::OutsideWindow {
            skew_secs: skew,
            window_secs,
        });
    }
    // A matching entry equals the expected MAC, so the expected MAC is the
    // canonical form of whichever entry matched.
    Ok(Verified {
        t: parsed.t,
        mac: expected.finalize().into_bytes().into(),
    })
}

/// A parsed signature header.
struct ParsedHeader {
    /// The signing time, in Unix seconds.
    t: i64,
    /// The decoded `v1` MACs; the first `count` are filled.
    signatures: [[u8; MAC_LEN]; MAX_SIGNATURES],
    /// How many `v1` entries the header had.
    count: usize,
}

/// Parses `t=<secs>,v1=<hex>[,...]`, ignoring entries with unknown keys.
fn parse_header(header: &str) -> Result<ParsedHeader, SignatureError> {
    let malformed = |reason| Err(SignatureError::Malformed { reason });
    if header.len() > MAX_HEADER_LEN {
        return malformed("longer than 1024 bytes");
    }
    let mut t = None;
    let mut signatures = [[0u8; MAC_LEN]; MAX_SIGNATURES];
    let mut count = 0;
    for entry in header.split(',') {
        let Some((key, value)) = entry.trim().split_once('=') else {
            return malformed("an entry is not of the form key=value");
        };
        match key.trim() {
            "t" => {
                if t.is_some() {
                    return malformed("more than one t= entry");
                }
                let value = value.trim();
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                    return malformed("t= is not a non-negative whole number of seconds");
                }
                let Ok(secs) = value.parse::<i64>() else {
                    return malformed("t= is out of range");
                };
                t = Some(secs);
            }
            "v1" => {
                let Some(slot) = signatures.get_mut(count) else {
                    return malformed("more than 8 v1= entries");
                };
                decode_hex(value.trim(), slot)?;
                count += 1;
            }
            _ => {}
        }
    }
    let Some(t) = t else {
        return malformed("no t= entry");
    };
    if count == 0 {
        return malformed("no v1= entry");
    }
    Ok(ParsedHeader {
        t,
        signatures,
        count,
    })
}

/// Decodes 64 hex digits into `out`.
fn decode_hex(hex: &str, out: &mut [u8; MAC_LEN]) -> Result<(), SignatureError> {
    let bytes = hex.as_bytes();
    if !bytes.len().is_multiple_of(2) {
        return Err(SignatureError::Malformed {
            reason: "a v1= value has an odd number of hex digits",
        });
    }
    if bytes.len() != 2 * MAC_LEN {
        return Err(SignatureError::Malformed {
            reason: "a v1= value is not 64 hex digits (32 bytes)",
        });
    }
    for (byte, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        let (Some(hi), Some(lo)) = (hex_value(pair[0]), hex_value(pair[1])) else {
            return Err(SignatureError::Malformed {
                reason: "a v1= value contains a character that is not a hex digit",
            });
        };
        *byte = (hi << 4) | lo;
    }
    Ok(())
}

/// Returns the value of one hex digit, either case.
fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Lowercase hex digits.
#[cfg(test)]
const HEX: &[u8; 16] = b"0123456789abcdef";

/// Returns an HMAC-SHA256 state keyed with `secret` that has absorbed `<t>.<body>`.
fn mac(secret: &[u8], t: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new(&key_block(secret).into());
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Pads or hashes `secret` into one 64-byte block, as RFC 2104 does.
///
/// HMAC itself hashes a key longer than a block and pads a shorter one with
/// zeros, so keying with this block gives the same MAC as keying with the
/// secret, and the infallible constructor avoids an impossible error path.
fn key_block(secret: &[u8]) -> [u8; BLOCK_LEN] {
    let mut block = [0u8; BLOCK_LEN];
    if secret.len() > BLOCK_LEN {
        block[..MAC_LEN].copy_from_slice(&Sha256::digest(secret));
    } else {
        block[..secret.len()].copy_from_slice(secret);
    }
    block
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_canary_7f3a9c";
    const BODY: &[u8] = br#"{"event":"order.created","id":42}"#;
    const NOW: i64 = 1_735_689_600;

    /// Checks `header` against `BODY` signed with `SECRET`, at `NOW`.
    fn check(header: &str) -> Result<(), SignatureError> {
        verify(SECRET, Some(header), BODY, NOW, DEFAULT_WINDOW_SECS).map(drop)
    }

    /// Asserts that no error message or Debug output contains the secret or a MAC.
    fn assert_clean(err: &SignatureError, header: &str) {
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains("canary"), "{shown}");
        for part in header.split(',') {
            if let Some(hex) = part.trim().strip_prefix("v1=")
                && hex.len() > 8
            {
                assert!(!shown.contains(hex), "{shown}");
            }
        }
        let good = sign(SECRET, NOW, BODY);
        let good_hex = good.rsplit("v1=").next().unwrap();
        assert!(!shown.contains(good_hex), "{shown}");
    }

    #[test]
    fn rfc_4231_vectors_match() {
        // Test case 2 (short key) and test case 6 (131-byte key) of RFC 4231,
        // which check that the key block construction equals plain HMAC.
        let short = <Hmac<Sha256> as KeyInit>::new(&key_block(b"Jefe").into())
            .chain_update(b"what do ya want for nothing?")
            .finalize()
            .into_bytes();
        assert_eq!(
            hex(&short),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let long = <Hmac<Sha256> as KeyInit>::new(&key_block(&[0xaa; 131]).into())
            .chain_update(b"Test Using Larger Than Block-Size Key - Hash Key First")
            .finalize()
            .into_bytes();
        assert_eq!(
            hex(&long),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    /// Lowercase hex of `bytes`, for the tests.
    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn sign_format_and_known_value() {
        let header = sign(b"secret", 1_700_000_000, b"{}");
        // HMAC-SHA256("secret", "1700000000.{}"), computed independently with
        // `printf '1700000000.{}' | openssl dgst -sha256 -hmac secret`.
        assert_eq!(
            header,
            "t=1700000000,v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
        assert_eq!(header.len(), "t=1700000000,v1=".len() + 64);
    }

    #[test]
    fn good_signature_verifies() {
        assert_eq!(check(&sign(SECRET, NOW, BODY)), Ok(()));
        // Within the window on either side, and with spaces and upper case.
        assert_eq!(check(&sign(SECRET, NOW - 300, BODY)), Ok(()));
        assert_eq!(check(&sign(SECRET, NOW + 300, BODY)), Ok(()));
        let spaced = sign(SECRET, NOW, BODY).replace(',', " , ").to_uppercase();
        assert_eq!(
            check(&spaced.replace("T=", "t=").replace("V1=", "v1=")),
            Ok(())
        );
        // Empty body and empty secret are still well defined.
        assert_eq!(
            verify(b"", Some(&sign(b"", NOW, b"")), b"", NOW, 10).map(drop),
            Ok(())
        );
        // A secret longer than one block.
        let long = [7u8; 200];
        assert_eq!(
            verify(&long, Some(&sign(&long, NOW, BODY)), BODY, NOW, 10).map(drop),
            Ok(())
        );
    }

    #[test]
    fn wrong_secret_is_a_mismatch() {
        let header = sign(b"whsec_other", NOW, BODY);
        let err = check(&header).unwrap_err();
        assert_eq!(err, SignatureError::Mismatch);
        assert_eq!(err.code(), "signature_mismatch");
        assert_clean(&err, &header);
    }

    #[test]
    fn body_changed_by_one_byte_is_a_mismatch() {
        let header = sign(SECRET, NOW, BODY);
        let mut body = BODY.to_vec();
        body[10] ^= 0x01;
        let err = verify(SECRET, Some(&header), &body, NOW, 300).unwrap_err();
        assert_eq!(err, SignatureError::Mismatch);
        // A timestamp changed after signing breaks the MAC too.
        let moved = header.replacen(&NOW.to_string(), &(NOW + 1).to_string(), 1);
        assert_eq!(check(&moved), Err(SignatureError::Mismatch));
    }

    #[test]
    fn old_timestamp_is_outside_the_window() {
        let header = sign(SECRET, NOW - 301, BODY);
        let err = check(&header).unwrap_err();
        assert_eq!(
            err,
            SignatureError::OutsideWindow {
                skew_secs: 301,
                window_secs: 300
            }
        );
        assert_eq!(err.code(), "signature_outside_window");
        assert_clean(&err, &header);
    }

    #[test]
    fn future_timestamp_is_outside_the_window() {
        let err = check(&sign(SECRET, NOW + 3600, BODY)).unwrap_err();
        assert!(
            matches!(
                err,
                SignatureError::OutsideWindow {
                    skew_secs: -3600,
                    ..
                }
            ),
            "{err:?}"
        );
        // Extreme values do not overflow.
        let far = sign(SECRET, i64::MAX, BODY);
        assert!(matches!(
            verify(SECRET, Some(&far), BODY, i64::MIN, 300),
            Err(SignatureError::OutsideWindow { .. })
        ));
    }

    #[test]
    fn missing_header() {
        for header in [None, Some(""), Some("   ")] {
            let err = verify(SECRET, header, BODY, NOW, 300).unwrap_err();
            assert_eq!(err, SignatureError::Missing);
            assert_eq!(err.code(), "signature_missing");
        }
    }

    #[test]
    fn malformed_headers() {
        let good = sign(SECRET, NOW, BODY);
        let mac = good.rsplit("v1=").next().unwrap().to_owned();
        let cases = [
            (format!("v1={mac}"), "no t="),
            (format!("t=abc,v1={mac}"), "whole number"),
            (format!("t=-5,v1={mac}"), "whole number"),
            (format!("t=1.5,v1={mac}"), "whole number"),
            (format!("t=,v1={mac}"), "whole number"),
            (format!("t=99999999999999999999,v1={mac}"), "out of range"),
            (format!("t={NOW}"), "no v1="),
            (format!("t={NOW},v0={mac}"), "no v1="),
            (format!("t={NOW},v1={}", &mac[..63]), "odd number"),
            (format!("t={NOW},v1={}", &mac[..62]), "64 hex digits"),
            (format!("t={NOW},v1={}zz", &mac[..62]), "not a hex digit"),
            (format!("t={NOW},v1={mac},garbage"), "key=value"),
            (format!("t={NOW},t={NOW},v1={mac}"), "more than one t="),
            (
                format!("t={NOW}{}", format!(",v1={mac}").repeat(9)),
                "more than 8",
            ),
            (format!("t={NOW},x={}", "a".repeat(2000)), "longer than"),
        ];
        for (header, reason) in cases {
            let err = check(&header).unwrap_err();
            assert!(
                matches!(err, SignatureError::Malformed { .. }),
                "{header}: {err:?}"
            );
            assert!(err.to_string().contains(reason), "{header}: {err}");
            assert_eq!(err.code(), "signature_malformed");
            assert_clean(&err, &header);
        }
    }

    #[test]
    fn any_matching_v1_suffices() {
        let good = sign(SECRET, NOW, BODY);
        let good_mac = good.rsplit("v1=").next().unwrap();
        let stale = sign(b"whsec_previous", NOW, BODY);
        let stale_mac = stale.rsplit("v1=").next().unwrap();
        assert_eq!(
            check(&format!("t={NOW},v1={stale_mac},v1={good_mac}")),
            Ok(())
        );
        assert_eq!(
            check(&format!("t={NOW},v1={good_mac},v1={stale_mac}")),
            Ok(())
        );
        // Unknown schemes are ignored alongside.
        assert_eq!(check(&format!("t={NOW},v2=xyz,v1={good_mac}")), Ok(()));
        // Two wrong ones are still a mismatch.
        assert_eq!(
            check(&format!("t={NOW},v1={stale_mac},v1={stale_mac}")),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn every_spelling_of_one_delivery_has_one_canonical_form() {
        let good = sign(SECRET, NOW, BODY);
        let mac = good.rsplit("v1=").next().unwrap().to_owned();
        let stale = sign(b"whsec_previous", NOW, BODY);
        let stale_mac = stale.rsplit("v1=").next().unwrap().to_owned();
        let canonical = verify(SECRET, Some(&good), BODY, NOW, 300).unwrap();
        assert_eq!(canonical.t, NOW);
        let spellings = [
            format!("{good},x=1"),
            format!("t={NOW},v1={}", mac.to_uppercase()),
            format!("t={NOW}, v1={mac}"),
            format!("t=0{NOW},v1={mac}"),
            format!("t={NOW},v1={mac},v1={mac}"),
            format!("t={NOW},v1={stale_mac},v1={mac}"),
        ];
        for header in spellings {
            let verified = verify(SECRET, Some(&header), BODY, NOW, 300).unwrap();
            assert_eq!(verified, canonical, "{header}");
        }
        // Another delivery (another time) has another canonical form.
        let later = verify(SECRET, Some(&sign(SECRET, NOW + 1, BODY)), BODY, NOW, 300).unwrap();
        assert_ne!(later, canonical);
    }
}

#[cfg(test)]
#[path = "proptests/signature.rs"]
mod proptests;

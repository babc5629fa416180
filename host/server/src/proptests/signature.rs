//! Property tests of webhook signature checking: no header, body, clock or
//! window makes `verify` panic; a signed request verifies; any change of
//! body, secret or timestamp is refused; no error echoes the header.

use proptest::prelude::*;

use super::*;

/// Header values around the real format: `t=`, `v1=`, hex, separators,
/// spaces, signs and digits, with arbitrary text mixed in.
fn header() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("t=".to_string()),
        Just("v1=".to_string()),
        Just("v2=".to_string()),
        Just(",".to_string()),
        Just(" ".to_string()),
        Just("=".to_string()),
        "[0-9a-fA-F]{0,70}",
        "[+-]?[0-9]{0,25}",
        "\\PC{0,6}",
    ];
    prop::collection::vec(piece, 0..12).prop_map(|p| p.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn verify_never_panics_and_never_echoes_the_header(
        header in prop_oneof![header(), "\\PC{0,1100}"],
        secret in prop::collection::vec(any::<u8>(), 0..80),
        body in prop::collection::vec(any::<u8>(), 0..64),
        now in any::<i64>(),
        window in any::<i64>(),
    ) {
        if let Err(e) = verify(&secret, Some(&header), &body, now, window) {
            let text = e.to_string();
            let mac_like = header
                .split([',', '=', ' '])
                .filter(|p| p.len() >= 16)
                .any(|p| text.contains(p));
            prop_assert!(!mac_like, "{}", text);
        }
    }

    #[test]
    fn a_signed_request_verifies_and_any_change_is_refused(
        secret in prop::collection::vec(any::<u8>(), 1..100),
        other in prop::collection::vec(any::<u8>(), 1..100),
        body in prop::collection::vec(any::<u8>(), 0..128),
        t in 0..4_000_000_000i64,
        skew in -300..=300i64,
        flip in any::<prop::sample::Index>(),
        extra in prop::option::of("v2=[0-9a-f]{8}"),
    ) {
        let mut header = sign(&secret, t, &body);
        if let Some(extra) = extra {
            header = format!("{header},{extra}");
        }
        let now = t + skew;
        prop_assert!(verify(&secret, Some(&header), &body, now, DEFAULT_WINDOW_SECS).is_ok());
        // Another secret.
        if other != secret {
            prop_assert_eq!(
                verify(&other, Some(&header), &body, now, DEFAULT_WINDOW_SECS),
                Err(SignatureError::Mismatch)
            );
        }
        // Another body: one bit flipped, or a byte appended.
        let mut changed = body.clone();
        match changed.len() {
            0 => changed.push(0),
            n => changed[flip.index(n)] ^= 1,
        }
        prop_assert_eq!(
            verify(&secret, Some(&header), &changed, now, DEFAULT_WINDOW_SECS),
            Err(SignatureError::Mismatch)
        );
        // Another timestamp in the header, with the same MAC.
        let moved = header.replacen(&format!("t={t},"), &format!("t={},", t + 1), 1);
        prop_assert_eq!(
            verify(&secret, Some(&moved), &body, now, DEFAULT_WINDOW_SECS),
            Err(SignatureError::Mismatch)
        );
    }

    /// An authentic request outside the window is refused as such.
    #[test]
    fn a_signed_request_outside_the_window_is_refused(
        secret in prop::collection::vec(any::<u8>(), 1..64),
        t in 0..4_000_000_000i64,
        skew in prop_oneof![301..100_000i64, -100_000..-300i64],
    ) {
        let header = sign(&secret, t, b"{}");
        let outcome = verify(&secret, Some(&header), b"{}", t + skew, DEFAULT_WINDOW_SECS);
        let outside = matches!(outcome, Err(SignatureError::OutsideWindow { .. }));
        prop_assert!(outside, "{:?}", outcome);
    }
}

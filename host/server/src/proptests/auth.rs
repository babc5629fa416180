//! Property tests of API token parsing: no input makes it panic or echoes a
//! secret into an error; a generated token parses back to its id and hash;
//! any one-character change of a token is refused (checksum, alphabet or
//! shape).

use proptest::prelude::*;

use super::*;

/// Strings shaped like tokens: the prefix, then the right length of
/// characters from the alphabets involved (and a few others).
fn token_like() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(&b"abcxyz234567ABCZ019-_=+/."[..]),
        TOKEN_LEN - TOKEN_PREFIX.len(),
    )
    .prop_map(|tail| format!("{TOKEN_PREFIX}{}", String::from_utf8_lossy(&tail)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn token_parsing_never_panics_nor_echoes_the_secret(
        presented in prop_oneof![token_like(), "\\PC{0,80}", "wrun_pat_\\PC{0,80}"],
    ) {
        if let Err(e) = parse_token(&presented) {
            let text = format!("{e} {e:?}");
            let secret = presented.get(TOKEN_SEP1 + 1..TOKEN_SEP2).unwrap_or("");
            prop_assert!(secret.is_empty() || !text.contains(secret), "{}", text);
        }
    }

    #[test]
    fn a_generated_token_round_trips_and_any_change_is_refused(
        at in any::<prop::sample::Index>(),
        with in prop::sample::select(&b"abcdefghijklmnopqrstuvwxyz234567ABCXYZ01-_"[..]),
    ) {
        let token = NewToken::generate();
        let parsed = parse_token(&token.display)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&parsed.id, &token.id);
        prop_assert!(hashes_match(&parsed.hash, &token.hash));

        let mut changed = token.display.as_bytes().to_vec();
        let i = at.index(changed.len());
        prop_assume!(changed[i] != with);
        changed[i] = with;
        let changed = String::from_utf8(changed).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(parse_token(&changed).is_err(), "position {} accepted", i);
    }
}

//! Property tests of the stream masker: any chunking of any body gives
//! [`Masker::mask_bytes`] of the whole body, for values found raw and in
//! their encodings.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use proptest::prelude::*;

use super::*;

/// A value: short, from an alphabet that makes values overlap each other
/// and their own encodings.
fn value() -> impl Strategy<Value = String> {
    "[ab+/=%\"\\\\é<]{4,10}"
}

/// A piece of a body: filler, or value `i` in one of its forms.
#[derive(Debug, Clone)]
enum Piece {
    Filler(Vec<u8>),
    Raw(usize),
    /// base64 of a prefix of `n` bytes of filler, then the value.
    Base64(usize, usize),
    UrlSafe(usize),
    Percent(usize),
    Json(usize),
    /// The first `n` bytes of the value.
    Partial(usize, usize),
}

fn piece() -> impl Strategy<Value = Piece> {
    let i = 0..4usize;
    prop_oneof![
        prop::collection::vec(prop::sample::select(&b"ab+/=%\"\\<*YWJ \xc3\xa9"[..]), 0..8)
            .prop_map(Piece::Filler),
        i.clone().prop_map(Piece::Raw),
        (i.clone(), 0..3usize).prop_map(|(i, n)| Piece::Base64(i, n)),
        i.clone().prop_map(Piece::UrlSafe),
        i.clone().prop_map(Piece::Percent),
        i.clone().prop_map(Piece::Json),
        (i, 1..10usize).prop_map(|(i, n)| Piece::Partial(i, n)),
    ]
}

fn render(pieces: &[Piece], values: &[String]) -> Vec<u8> {
    let value = |i: usize| values[i % values.len()].as_str();
    let mut out = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Filler(bytes) => out.extend_from_slice(bytes),
            Piece::Raw(i) => out.extend_from_slice(value(*i).as_bytes()),
            Piece::Base64(i, n) => {
                let text = format!("{}{}", &"user:"[..*n], value(*i));
                out.extend_from_slice(STANDARD.encode(text).as_bytes());
            }
            Piece::UrlSafe(i) => {
                out.extend_from_slice(URL_SAFE_NO_PAD.encode(value(*i)).as_bytes())
            }
            Piece::Percent(i) => {
                let encoded = utf8_percent_encode(value(*i), NON_ALPHANUMERIC).to_string();
                out.extend_from_slice(encoded.as_bytes());
            }
            Piece::Json(i) => {
                let quoted = serde_json::to_string(value(*i)).unwrap_or_default();
                out.extend_from_slice(quoted.as_bytes());
            }
            Piece::Partial(i, n) => {
                let bytes = value(*i).as_bytes();
                out.extend_from_slice(&bytes[..(*n).min(bytes.len())]);
            }
        }
    }
    out
}

/// Streams `input` cut at `cuts` (taken modulo its length).
fn streamed(masker: &Masker, input: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    at.push(0);
    at.push(input.len());
    at.sort_unstable();
    let mut stream = masker.stream();
    let mut out = Vec::new();
    for w in at.windows(2) {
        stream.push(&input[w[0]..w[1]], &mut out);
    }
    stream.finish(&mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_chunking_equals_masking_the_whole(
        values in prop::collection::vec(value(), 1..4),
        pieces in prop::collection::vec(piece(), 0..16),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let masker = Masker::new(&values);
        let input = render(&pieces, &values);
        let whole = masker.mask_bytes(&input).into_owned();
        prop_assert_eq!(streamed(&masker, &input, &cuts), whole);
    }

    /// A raw value with filler around it that cannot extend a match is
    /// always masked.
    #[test]
    fn a_raw_value_between_spaces_is_masked(
        values in prop::collection::vec(value(), 1..4),
        i in 0..4usize,
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let masker = Masker::new(&values);
        let value = &values[i % values.len()];
        // Documented limit: a value that decodes to fewer than
        // `MIN_VALUE_LEN` bytes is not matched.
        prop_assume!(canonical::decode(value.as_bytes()).len() >= MIN_VALUE_LEN);
        let input = format!("  {value}  ");
        let out = streamed(&masker, input.as_bytes(), &cuts);
        prop_assert!(!out.windows(value.len()).any(|w| w == value.as_bytes()));
    }

    #[test]
    fn masking_arbitrary_bytes_never_panics(
        values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), 0..4),
        input in prop::collection::vec(any::<u8>(), 0..256),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let masker = Masker::new(&values);
        let whole = masker.mask_bytes(&input).into_owned();
        prop_assert_eq!(streamed(&masker, &input, &cuts), whole);
    }
}

//! Property tests of the body injector: however a guest splits its body
//! into chunks, the result is the one of a single chunk, and no placeholder
//! or value ever leaves toward a host its connection is not bound to.

use proptest::prelude::*;

use super::*;
use crate::egress::addr::parse_host;

/// The host the body connections are bound to, and one they are not.
const BOUND: &str = "auth.example.com";
const UNBOUND: &str = "evil.example.com";

/// The job's secrets: two body connections (values that need escaping in
/// JSON and in a form) and one header connection, all granted.
fn secrets() -> Vec<Arc<JobSecret>> {
    [
        ("client", "S3CR\"ET&X Y", BOUND, "body:client_secret"),
        ("form", "P@SS WORD+1", BOUND, "body:password"),
        (
            "gh",
            "GHP_VALUE_1",
            "api.example.com",
            "header:Authorization=Bearer {}",
        ),
    ]
    .into_iter()
    .map(|(name, value, host, placement)| {
        let connection = Connection::new(
            name,
            SecretValue::new(value),
            [host],
            placement.parse().expect("a valid placement"),
        )
        .expect("a valid connection");
        Arc::new(JobSecret {
            connection,
            placeholder: new_placeholder(),
        })
    })
    .collect()
}

/// A piece of a generated body.
#[derive(Debug, Clone)]
enum Piece {
    /// Guest text: lower case, digits and the characters that matter to the
    /// JSON and form checks (never a value: values are upper case).
    Text(String),
    /// A whole placeholder of secret `i`.
    Placeholder(usize),
    /// The first `n` bytes of a placeholder.
    Partial(usize, usize),
    /// `"field": "<ph>"`.
    JsonField(&'static str, usize),
    /// `field=<ph>`.
    FormField(&'static str, usize),
}

fn piece() -> impl Strategy<Value = Piece> {
    let field = prop::sample::select(&["client_secret", "password", "other", ""][..]);
    let secret = 0..3usize;
    prop_oneof![
        "[a-z0-9 \"\\\\:=&{},_]{0,12}".prop_map(Piece::Text),
        secret.clone().prop_map(Piece::Placeholder),
        (secret.clone(), 1..PLACEHOLDER_LEN).prop_map(|(i, n)| Piece::Partial(i, n)),
        (field.clone(), secret.clone()).prop_map(|(f, i)| Piece::JsonField(f, i)),
        (field, secret).prop_map(|(f, i)| Piece::FormField(f, i)),
    ]
}

fn render(pieces: &[Piece], secrets: &[Arc<JobSecret>]) -> Vec<u8> {
    let ph = |i: usize| secrets[i].placeholder.as_str();
    let mut body = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(text) => body.push_str(text),
            Piece::Placeholder(i) => body.push_str(ph(*i)),
            Piece::Partial(i, n) => body.push_str(&ph(*i)[..*n]),
            Piece::JsonField(field, i) => body.push_str(&format!("\"{field}\": \"{}\"", ph(*i))),
            Piece::FormField(field, i) => body.push_str(&format!("{field}={}", ph(*i))),
        }
    }
    body.into_bytes()
}

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop::sample::select(
        &[
            Some("application/json"),
            Some("application/x-www-form-urlencoded"),
            Some("text/plain"),
            None,
        ][..],
    )
}

/// Splits `body` at `cuts` (taken modulo its length).
fn chunks<'a>(body: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (body.len() + 1)).collect();
    at.push(0);
    at.push(body.len());
    at.sort_unstable();
    at.windows(2).map(|w| &body[w[0]..w[1]]).collect()
}

/// Feeds the chunks through a fresh body injector: the bytes it released,
/// and how it ended.
fn run(
    secrets: &[Arc<JobSecret>],
    host: &str,
    content_type: Option<&str>,
    chunks: &[&[u8]],
) -> (Vec<u8>, Result<(), Refusal>) {
    let matcher = PlaceholderMatcher::new(secrets.to_vec()).expect("a matcher");
    let granted = secrets
        .iter()
        .map(|s| {
            (
                s.connection.name().to_string(),
                s.connection.name().to_string(),
            )
        })
        .collect();
    let host = parse_host(host).expect("a host");
    let injector = Injector {
        matcher: &matcher,
        granted: &granted,
        host: &host,
        port: 443,
    };
    let mut body = injector.body(content_type);
    let mut sent = Vec::new();
    for chunk in chunks {
        match body.push(chunk) {
            Ok(bytes) => sent.extend_from_slice(&bytes),
            Err(refusal) => return (sent, Err(refusal)),
        }
    }
    match body.finish() {
        Ok(bytes) => sent.extend_from_slice(&bytes),
        Err(refusal) => return (sent, Err(refusal)),
    }
    (sent, Ok(()))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any chunking gives the outcome of one chunk; when the body is
    /// accepted, the same bytes.
    #[test]
    fn any_chunking_gives_the_result_of_one_chunk(
        pieces in prop::collection::vec(piece(), 0..12),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        content_type in content_type(),
        bound in any::<bool>(),
    ) {
        let secrets = secrets();
        let body = render(&pieces, &secrets);
        let host = if bound { BOUND } else { UNBOUND };
        let (whole, whole_end) = run(&secrets, host, content_type, &[&body]);
        let (split, split_end) = run(&secrets, host, content_type, &chunks(&body, &cuts));
        prop_assert_eq!(&whole_end, &split_end);
        if whole_end.is_ok() {
            prop_assert_eq!(whole, split);
        }
    }

    /// Whatever a body holds and however it is split, nothing released
    /// holds a placeholder; toward a host no connection is bound to, no
    /// value either, and a body with a placeholder is refused.
    #[test]
    fn no_placeholder_or_value_leaves_toward_an_unbound_host(
        pieces in prop::collection::vec(piece(), 0..12),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        content_type in content_type(),
        bound in any::<bool>(),
    ) {
        let secrets = secrets();
        let body = render(&pieces, &secrets);
        let host = if bound { BOUND } else { UNBOUND };
        let (sent, end) = run(&secrets, host, content_type, &chunks(&body, &cuts));
        for secret in &secrets {
            prop_assert!(!contains(&sent, secret.placeholder.as_bytes()));
        }
        if !bound {
            // Values are upper case and guest text is not: any value byte
            // run released would have been injected.
            prop_assert!(!sent.iter().any(u8::is_ascii_uppercase));
            let holds_placeholder = secrets
                .iter()
                .any(|s| contains(&body, s.placeholder.as_bytes()));
            prop_assert_eq!(end.is_err(), holds_placeholder);
        }
    }
}

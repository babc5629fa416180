//! The canonical form of text: one level of escapes decoded, with a map back
//! to the source.
//!
//! Upstreams echo a value in many spellings: a JSON encoder may write any
//! character as `\uXXXX` (in either case, .NET escapes `-`, `+`, `'` and
//! `&`), an HTML or XML page writes `&#45;`, `&#x2d;` or `&amp;`, a URL writes
//! `%2d` or `%2D`, and one value may mix escaped and plain characters. These
//! cannot be enumerated as patterns, so the masker searches the *canonical*
//! stream instead: each escape below is replaced by the bytes it stands for,
//! everything else is copied, and every decoded escape is recorded with its
//! source span so that a match is replaced over the whole source text it came
//! from.
//!
//! Decoded (one level, never recursively):
//!
//! - JSON and JavaScript string escapes: `\uXXXX` with hex digits in either
//!   case (UTF-16 surrogate pairs are joined; a lone surrogate stays as it
//!   is), `\"`, `\\`, `\/`, `\'`, `\b`, `\f`, `\n`, `\r` and `\t`;
//! - percent-encoding `%XX` of any byte, hex digits in either case;
//! - HTML and XML character references: decimal `&#DDD;` and hex `&#xHH;`
//!   (`x` in either case, leading zeros allowed up to [`MAX_REF_DIGITS`]
//!   digits, the `;` optional as HTML parsers allow), and the named
//!   references in [`NAMED`], which are every HTML5 named reference that
//!   stands for one printable ASCII character, tab or newline. Secret values
//!   are tokens, passwords and keys made of such characters; a reference to a
//!   non-ASCII character (`&eacute;`) is not decoded.
//!
//! Everything here is hand-written because no maintained crate decodes mixed
//! escape forms while keeping a map back to source spans, and the scan must
//! stop at an incomplete escape at the end of a streamed chunk.

/// The bytes that may start an escape.
pub(super) const ESCAPE_STARTS: [u8; 3] = [b'\\', b'%', b'&'];

/// The longest escape that is decoded, in source bytes, rounded up: `&#` with
/// [`MAX_REF_DIGITS`] digits and `;` is 13 bytes, a surrogate pair 12.
pub(super) const MAX_ESCAPE_LEN: usize = 16;

/// The most digits a numeric character reference may have to be decoded.
const MAX_REF_DIGITS: usize = 10;

/// Named character references decoded, with the byte each stands for: every
/// HTML5 named reference to one printable ASCII character, tab or newline
/// whose name has at most 8 letters (longer synonyms such as
/// `&VerticalLine;` are not produced by any encoder).
const NAMED: &[(&[u8], u8)] = &[
    (b"amp", b'&'),
    (b"AMP", b'&'),
    (b"lt", b'<'),
    (b"LT", b'<'),
    (b"gt", b'>'),
    (b"GT", b'>'),
    (b"quot", b'"'),
    (b"QUOT", b'"'),
    (b"apos", b'\''),
    (b"excl", b'!'),
    (b"num", b'#'),
    (b"dollar", b'$'),
    (b"percnt", b'%'),
    (b"lpar", b'('),
    (b"rpar", b')'),
    (b"ast", b'*'),
    (b"midast", b'*'),
    (b"plus", b'+'),
    (b"comma", b','),
    (b"period", b'.'),
    (b"sol", b'/'),
    (b"colon", b':'),
    (b"semi", b';'),
    (b"equals", b'='),
    (b"quest", b'?'),
    (b"commat", b'@'),
    (b"lsqb", b'['),
    (b"lbrack", b'['),
    (b"bsol", b'\\'),
    (b"rsqb", b']'),
    (b"rbrack", b']'),
    (b"Hat", b'^'),
    (b"lowbar", b'_'),
    (b"UnderBar", b'_'),
    (b"grave", b'`'),
    (b"lcub", b'{'),
    (b"lbrace", b'{'),
    (b"verbar", b'|'),
    (b"vert", b'|'),
    (b"rcub", b'}'),
    (b"rbrace", b'}'),
    (b"Tab", b'\t'),
    (b"NewLine", b'\n'),
];

/// The longest name in [`NAMED`].
const MAX_NAME_LEN: usize = 8;

/// What the bytes at one position of the source are.
#[derive(Debug, PartialEq, Eq)]
enum Token {
    /// An escape of `len` source bytes standing for `bytes[..count]`.
    Decoded {
        len: usize,
        bytes: [u8; 4],
        count: usize,
    },
    /// The byte is not the start of an escape.
    Literal,
    /// The source ends inside what may still become an escape.
    Incomplete,
}

/// One decoded escape: where its bytes are in the canonical text and where
/// the escape is in the source.
#[derive(Debug, Clone, Copy)]
struct Span {
    canon: usize,
    canon_len: usize,
    src: usize,
    src_len: usize,
}

/// The canonical form of a source buffer.
#[derive(Debug, Default)]
pub(super) struct Canonical {
    /// The canonical bytes.
    pub(super) text: Vec<u8>,
    /// The decoded escapes, in order.
    escapes: Vec<Span>,
    /// How many source bytes `text` covers: all of them, unless the source
    /// ended inside an incomplete escape.
    pub(super) decoded: usize,
}

impl Canonical {
    /// Decodes `source`. Without `at_end`, decoding stops before an escape
    /// that the next bytes could still complete.
    pub(super) fn new(source: &[u8], at_end: bool) -> Canonical {
        let mut canon = Canonical {
            text: Vec::with_capacity(source.len()),
            escapes: Vec::new(),
            decoded: source.len(),
        };
        let mut at = 0;
        while let Some(found) = memchr::memchr3(
            ESCAPE_STARTS[0],
            ESCAPE_STARTS[1],
            ESCAPE_STARTS[2],
            &source[at..],
        ) {
            let start = at + found;
            canon.text.extend_from_slice(&source[at..start]);
            match token(source, start, at_end) {
                Token::Decoded { len, bytes, count } => {
                    canon.escapes.push(Span {
                        canon: canon.text.len(),
                        canon_len: count,
                        src: start,
                        src_len: len,
                    });
                    canon.text.extend_from_slice(&bytes[..count]);
                    at = start + len;
                }
                Token::Literal => {
                    canon.text.push(source[start]);
                    at = start + 1;
                }
                Token::Incomplete => {
                    canon.decoded = start;
                    return canon;
                }
            }
        }
        canon.text.extend_from_slice(&source[at..]);
        canon
    }

    /// Returns the source range of the token that produced canonical byte
    /// `at`, and the canonical index just past that token.
    pub(super) fn token_at(&self, at: usize) -> (usize, usize, usize) {
        let index = self.escapes.partition_point(|span| span.canon <= at);
        match index.checked_sub(1).map(|i| self.escapes[i]) {
            Some(span) if at < span.canon + span.canon_len => (
                span.src,
                span.src + span.src_len,
                span.canon + span.canon_len,
            ),
            Some(span) => {
                let src = span.src + span.src_len + (at - span.canon - span.canon_len);
                (src, src + 1, at + 1)
            }
            None => (at, at + 1, at + 1),
        }
    }
}

/// Returns `true` if `source` holds a byte that may start an escape.
pub(super) fn has_escape(source: &[u8]) -> bool {
    memchr::memchr3(ESCAPE_STARTS[0], ESCAPE_STARTS[1], ESCAPE_STARTS[2], source).is_some()
}

/// Decodes `source` whole (see [`Canonical::new`]) and returns the bytes.
pub(super) fn decode(source: &[u8]) -> Vec<u8> {
    Canonical::new(source, true).text
}

/// Reads the token at `source[at]`, which is one of [`ESCAPE_STARTS`].
fn token(source: &[u8], at: usize, at_end: bool) -> Token {
    let rest = &source[at..];
    // A read past the end is `Incomplete` mid-stream and `Literal` at the end.
    let short = if at_end {
        Token::Literal
    } else {
        Token::Incomplete
    };
    let found = match rest[0] {
        b'\\' => backslash(rest),
        b'%' => percent(rest),
        _ => reference(rest),
    };
    match found {
        Err(Short) => short,
        Ok(None) => Token::Literal,
        Ok(Some((len, c))) => decoded(len, c),
    }
}

/// The source ended before the token could be decided.
struct Short;

/// A decoded escape: its source length and the character it stands for.
type Read = Result<Option<(usize, Char)>, Short>;

/// What an escape stands for.
#[derive(Clone, Copy)]
enum Char {
    Byte(u8),
    Unicode(char),
}

fn decoded(len: usize, c: Char) -> Token {
    let mut bytes = [0_u8; 4];
    let count = match c {
        Char::Byte(b) => {
            bytes[0] = b;
            1
        }
        Char::Unicode(c) => c.encode_utf8(&mut bytes).len(),
    };
    Token::Decoded { len, bytes, count }
}

/// Returns the byte at `at`, or [`Short`] past the end.
fn byte(rest: &[u8], at: usize) -> Result<u8, Short> {
    rest.get(at).copied().ok_or(Short)
}

/// Reads `count` hex digits at `at`; `None` when one is not a hex digit.
fn hex(rest: &[u8], at: usize, count: usize) -> Result<Option<u32>, Short> {
    let mut value = 0;
    for i in at..at + count {
        let Some(digit) = char::from(byte(rest, i)?).to_digit(16) else {
            return Ok(None);
        };
        value = value * 16 + digit;
    }
    Ok(Some(value))
}

/// `%XX`.
fn percent(rest: &[u8]) -> Read {
    Ok(hex(rest, 1, 2)?.map(|b| (3, Char::Byte(b as u8))))
}

/// JSON and JavaScript escapes.
fn backslash(rest: &[u8]) -> Read {
    let c = match byte(rest, 1)? {
        b @ (b'"' | b'\\' | b'/' | b'\'') => b,
        b'b' => 0x08,
        b'f' => 0x0c,
        b'n' => b'\n',
        b'r' => b'\r',
        b't' => b'\t',
        b'u' => return unicode(rest),
        _ => return Ok(None),
    };
    Ok(Some((2, Char::Byte(c))))
}

/// `\uXXXX`, joining a surrogate pair.
fn unicode(rest: &[u8]) -> Read {
    let Some(unit) = hex(rest, 2, 4)? else {
        return Ok(None);
    };
    if !(0xd800..0xdc00).contains(&unit) {
        return Ok(char::from_u32(unit).map(|c| (6, Char::Unicode(c))));
    }
    // A high surrogate: decoded only with the low one that follows.
    if byte(rest, 6)? != b'\\' || byte(rest, 7)? != b'u' {
        return Ok(None);
    }
    match hex(rest, 8, 4)? {
        Some(low @ 0xdc00..0xe000) => {
            let code = 0x10000 + ((unit - 0xd800) << 10) + (low - 0xdc00);
            Ok(char::from_u32(code).map(|c| (12, Char::Unicode(c))))
        }
        _ => Ok(None),
    }
}

/// `&#DDD;`, `&#xHH;` and the named references of [`NAMED`].
fn reference(rest: &[u8]) -> Read {
    if byte(rest, 1)? != b'#' {
        return named(rest);
    }
    let (radix, first) = match byte(rest, 2)? {
        b'x' | b'X' => (16, 3),
        _ => (10, 2),
    };
    let mut value: u32 = 0;
    let mut at = first;
    loop {
        let b = byte(rest, at)?;
        let Some(digit) = char::from(b).to_digit(radix) else {
            break;
        };
        if at - first == MAX_REF_DIGITS {
            return Ok(None);
        }
        value = value.saturating_mul(radix).saturating_add(digit);
        at += 1;
    }
    if at == first || value == 0 {
        return Ok(None);
    }
    let len = if rest[at] == b';' { at + 1 } else { at };
    Ok(char::from_u32(value).map(|c| (len, Char::Unicode(c))))
}

/// `&name;` for the names in [`NAMED`].
fn named(rest: &[u8]) -> Read {
    let mut at = 1;
    loop {
        let b = byte(rest, at)?;
        if b == b';' {
            break;
        }
        if !b.is_ascii_alphabetic() || at > MAX_NAME_LEN {
            return Ok(None);
        }
        at += 1;
    }
    let name = &rest[1..at];
    Ok(NAMED
        .iter()
        .find(|(known, _)| *known == name)
        .map(|&(_, b)| (at + 1, Char::Byte(b))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `source` and checks the canonical text and how much of the
    /// source it covers.
    fn check(source: &str, at_end: bool, text: &[u8], decoded: usize) {
        let canon = Canonical::new(source.as_bytes(), at_end);
        assert_eq!(canon.text, text, "{source}");
        assert_eq!(canon.decoded, decoded, "{source}");
    }

    #[test]
    fn every_escape_form_is_decoded() {
        for (source, text) in [
            ("plain text", "plain text"),
            (
                r"\u0041\u00e9\u00E9\u20AC\ud83d\ude00\uD83D\uDE00",
                "Aéé€😀😀",
            ),
            (r#"\"\\\/\'\b\f\n\r\t"#, "\"\\/'\u{8}\u{c}\n\r\t"),
            ("%41%2d%2D%2f%2F%e2%82%ac", "A--//€"),
            ("&#65;&#x41;&#X41;&#0000000065;&#45&#x2d;", "AAAA--"),
            (
                "&amp;&lt;&gt;&quot;&apos;&plus;&sol;&equals;&UnderBar;",
                "&<>\"'+/=_",
            ),
            ("a\\u002Db%2dc&#45;d", "a-b-c-d"),
        ] {
            check(source, true, text.as_bytes(), source.len());
        }
    }

    #[test]
    fn non_escapes_stay_as_they_are() {
        for source in [
            r"\x41 \u00 \uZZZZ \q",
            r"\ud83d alone \ude00 alone \ud83d\u0041",
            "%4 %zz 100% a&b &#; &#x; &#0; &#xD800; &unknown; &amp no-semicolon",
            "&#12345678901; &#x110000;",
            "&verylongname;",
        ] {
            let canon = Canonical::new(source.as_bytes(), true);
            // `\u0041` after a lone high surrogate is decoded on its own.
            let expected = source.replace(r"\u0041", "A");
            assert_eq!(canon.text, expected.as_bytes(), "{source}");
        }
    }

    #[test]
    fn an_incomplete_escape_at_the_end_stops_decoding_mid_stream() {
        for source in [
            "ab\\",
            "ab\\u00",
            "ab%4",
            "ab&#12",
            "ab&#x",
            "ab&am",
            "ab\\ud83d\\u",
        ] {
            check(source, false, b"ab", 2);
            let canon = Canonical::new(source.as_bytes(), true);
            assert_eq!(canon.decoded, source.len(), "{source}");
        }
        // Complete escapes and escapes that cannot complete are decided.
        check("ab%41", false, b"abA", 5);
        check("ab%4z", false, b"ab%4z", 5);
        check("ab&#65;", false, b"abA", 7);
    }

    #[test]
    fn tokens_map_back_to_their_source() {
        let source = "x%41\\u20acy";
        let canon = Canonical::new(source.as_bytes(), true);
        assert_eq!(canon.text, "xA€y".as_bytes());
        assert_eq!(canon.token_at(0), (0, 1, 1));
        assert_eq!(canon.token_at(1), (1, 4, 2));
        for at in 2..5 {
            assert_eq!(canon.token_at(at), (4, 10, 5));
        }
        assert_eq!(canon.token_at(5), (10, 11, 6));
    }
}

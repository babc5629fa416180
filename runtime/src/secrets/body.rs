//! Where a `body:FIELD` value may go: the media types whose bodies are
//! parsed, and streaming scanners that know, byte by byte, whether the next
//! string is the whole value of a named top-level field.
//!
//! The rule: a placeholder is replaced in a body only when the request's
//! `Content-Type` is exactly `application/json`, `application/<name>+json`
//! or `application/x-www-form-urlencoded` (parameters ignored, case
//! insensitive), and only as the whole string value of the named member of
//! the top-level JSON object (depth 1: not nested, not a key, not in an
//! array), or as the whole value of the named form field. The field name is
//! compared with the bytes as written (an escaped or percent-encoded spelling
//! of the name is not the name). Anything else refuses the request.
//!
//! The scanners are written by hand rather than taken from a JSON parser:
//! they must run over a stream in constant memory, never hold a value, and
//! answer one question at each byte; a full parser would build what they
//! never need.

/// Longest field name the scanners keep; a longer name matches nothing.
const MAX_FIELD: usize = 256;

/// The body formats a body placement understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKind {
    /// `application/json` or `application/<name>+json`.
    Json,
    /// `application/x-www-form-urlencoded`.
    Form,
    /// Anything else, or no content type: no placement is possible.
    Other,
}

impl BodyKind {
    /// The kind of a `Content-Type` header value: its media type (before the
    /// first `;`) must be one of the types above exactly.
    pub(crate) fn of(content_type: Option<&str>) -> BodyKind {
        let Some(essence) = content_type.and_then(|ct| ct.split(';').next()) else {
            return BodyKind::Other;
        };
        let essence = essence.trim().to_ascii_lowercase();
        let Some((kind, subtype)) = essence.split_once('/') else {
            return BodyKind::Other;
        };
        let token = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
        };
        if kind != "application" || !token(subtype) {
            return BodyKind::Other;
        }
        match subtype {
            "json" => BodyKind::Json,
            "x-www-form-urlencoded" => BodyKind::Form,
            s if s.len() > "+json".len() && s.ends_with("+json") => BodyKind::Json,
            _ => BodyKind::Other,
        }
    }
}

/// A streaming scanner for one body kind.
#[derive(Debug, Clone)]
pub(crate) enum FieldScanner {
    /// A JSON body.
    Json(JsonScanner),
    /// A form body.
    Form(FormScanner),
    /// Any other body: no byte is a place.
    Other,
}

impl FieldScanner {
    /// A scanner at the start of a body of `kind`.
    pub(crate) fn new(kind: BodyKind) -> FieldScanner {
        match kind {
            BodyKind::Json => FieldScanner::Json(JsonScanner::default()),
            BodyKind::Form => FieldScanner::Form(FormScanner::default()),
            BodyKind::Other => FieldScanner::Other,
        }
    }

    /// Consumes body bytes, in order.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        match self {
            FieldScanner::Json(s) => bytes.iter().for_each(|&b| s.feed(b)),
            FieldScanner::Form(s) => bytes.iter().for_each(|&b| s.feed(b)),
            FieldScanner::Other => {}
        }
    }

    /// Whether a token starting at the next byte, followed by `after`, would
    /// be the whole value of `field`.
    pub(crate) fn whole_value_of(&self, field: &str, after: Option<u8>) -> bool {
        match self {
            FieldScanner::Json(s) => after == Some(b'"') && s.at_value_start_of(field),
            FieldScanner::Form(s) => {
                matches!(after, None | Some(b'&')) && s.at_value_start_of(field)
            }
            FieldScanner::Other => false,
        }
    }
}

/// Where the scanner is among the members of the top-level object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Member {
    /// After `{` or `,`: a key comes next.
    #[default]
    Key,
    /// After a key: `:` comes next.
    Colon,
    /// After `:`: the value comes next.
    Value,
    /// After a value: `,` or `}` comes next.
    Next,
}

/// Tracks a JSON body just enough to know whether the next byte starts the
/// string value of a top-level member, and the member's key.
#[derive(Debug, Clone, Default)]
pub(crate) struct JsonScanner {
    /// Containers open.
    depth: usize,
    /// The top-level value is an object.
    top_object: bool,
    /// The body can no longer hold a place: the top-level value ended, or
    /// something other than an object or array came first.
    closed: bool,
    member: Member,
    in_string: bool,
    escaped: bool,
    /// The open string is a key of the top-level object.
    string_is_key: bool,
    /// The open string is the value of a top-level member.
    string_is_value: bool,
    /// Bytes of the open string so far.
    string_len: usize,
    /// The last top-level key as written, unless longer than [`MAX_FIELD`].
    key: Option<Vec<u8>>,
}

impl JsonScanner {
    fn at_top(&self) -> bool {
        self.depth == 1 && self.top_object && !self.closed
    }

    fn feed(&mut self, b: u8) {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
                if self.string_is_key {
                    self.member = Member::Colon;
                } else if self.string_is_value {
                    self.member = Member::Next;
                }
                return;
            }
            self.string_len += 1;
            if self.string_is_key
                && let Some(key) = &mut self.key
            {
                if key.len() < MAX_FIELD {
                    key.push(b);
                } else {
                    self.key = None;
                }
            }
            return;
        }
        match b {
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'"' => {
                let top = self.at_top();
                self.in_string = true;
                self.string_len = 0;
                self.string_is_key = top && self.member == Member::Key;
                self.string_is_value = top && self.member == Member::Value;
                if self.string_is_key {
                    self.key = Some(Vec::new());
                }
                if self.depth == 0 {
                    self.closed = true;
                }
            }
            b'{' | b'[' => {
                // (A second top-level value is not one JSON document: it
                // stays `closed`.)
                if self.depth == 0 && !self.closed {
                    self.top_object = b == b'{';
                    self.member = Member::Key;
                } else if self.at_top() {
                    // A nested container is the member's value.
                    self.member = Member::Next;
                }
                self.depth = self.depth.saturating_add(1);
            }
            b'}' | b']' => {
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 0 {
                    self.closed = true;
                }
            }
            b':' if self.at_top() && self.member == Member::Colon => self.member = Member::Value,
            b',' if self.at_top() => self.member = Member::Key,
            _ => {
                if self.depth == 0 {
                    self.closed = true;
                } else if self.at_top() {
                    // A number, literal or stray byte: the member's value,
                    // or a malformed member; either way not a place.
                    self.member = Member::Next;
                }
            }
        }
    }

    fn at_value_start_of(&self, field: &str) -> bool {
        self.in_string
            && self.string_is_value
            && self.string_len == 0
            && !self.escaped
            && self.at_top()
            && self.key.as_deref() == Some(field.as_bytes())
    }
}

/// Tracks a form body: the name of the current field and where its value
/// starts.
#[derive(Debug, Clone)]
pub(crate) struct FormScanner {
    /// The current field's name as written, or `None` once it is longer
    /// than [`MAX_FIELD`].
    name: Option<Vec<u8>>,
    in_value: bool,
    value_len: usize,
}

impl Default for FormScanner {
    fn default() -> FormScanner {
        FormScanner {
            name: Some(Vec::new()),
            in_value: false,
            value_len: 0,
        }
    }
}

impl FormScanner {
    fn feed(&mut self, b: u8) {
        if b == b'&' {
            *self = FormScanner::default();
        } else if self.in_value {
            self.value_len += 1;
        } else if b == b'=' {
            self.in_value = true;
        } else if let Some(name) = &mut self.name {
            if name.len() < MAX_FIELD {
                name.push(b);
            } else {
                self.name = None;
            }
        }
    }

    fn at_value_start_of(&self, field: &str) -> bool {
        self.in_value && self.value_len == 0 && self.name.as_deref() == Some(field.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_are_parsed_exactly() {
        for (ct, kind) in [
            ("application/json", BodyKind::Json),
            ("Application/JSON; charset=utf-8", BodyKind::Json),
            ("application/vnd.api+json", BodyKind::Json),
            ("application/x-www-form-urlencoded", BodyKind::Form),
            (
                "application/x-www-form-urlencoded;charset=UTF-8",
                BodyKind::Form,
            ),
            ("multipart/form-data; boundary=json", BodyKind::Other),
            ("text/json", BodyKind::Other),
            ("application/jsonp", BodyKind::Other),
            ("application/json-seq", BodyKind::Other),
            ("application/+json", BodyKind::Other),
            ("application/x-json-stream", BodyKind::Other),
            ("text/plain; x=application/json", BodyKind::Other),
            ("application/x-www-form-urlencoded-json", BodyKind::Other),
            ("json", BodyKind::Other),
            ("", BodyKind::Other),
        ] {
            assert_eq!(BodyKind::of(Some(ct)), kind, "{ct}");
        }
        assert_eq!(BodyKind::of(None), BodyKind::Other);
    }

    /// Scans `body` up to the first `@`, then asks whether the value of
    /// `field` starts there (the `@` stands for the placeholder).
    fn place(kind: BodyKind, body: &str, field: &str) -> bool {
        let (before, rest) = body.split_once('@').unwrap();
        let after = rest.bytes().next();
        // Byte by byte and in one piece: the answer must not depend on it.
        let mut one = FieldScanner::new(kind);
        one.feed(before.as_bytes());
        let mut each = FieldScanner::new(kind);
        before.bytes().for_each(|b| each.feed(&[b]));
        let answer = one.whole_value_of(field, after);
        assert_eq!(answer, each.whole_value_of(field, after), "{body}");
        answer
    }

    #[test]
    fn json_places_are_top_level_string_values_of_the_field() {
        let f = "client_secret";
        for ok in [
            r#"{"client_secret":"@"}"#,
            r#" { "client_id" : "a\"b", "n": [1, {"x": "y"}], "client_secret" : "@" , "z": 1}"#,
            r#"{"a": {"client_secret": "x"}, "client_secret": "@"}"#,
        ] {
            assert!(place(BodyKind::Json, ok, f), "{ok}");
        }
        for bad in [
            r#"{"data": {"client_secret": "@"}}"#,
            r#"{"client_secret": ["@"]}"#,
            r#"[{"client_secret": "@"}]"#,
            r#"{"@": "client_secret"}"#,
            r#"{"other": "@"}"#,
            r#"{"client_secret": "x@"}"#,
            r#"{"client_secret": "@x"}"#,
            r#"{"x": "\"client_secret\": \"@"}"#,
            r#"{"x": "a", "b\", \"client_secret\": \"@"}"#,
            r#"{"client_secret" "@"}"#,
            r#"{"client\u005fsecret": "@"}"#,
            r#"{"x_client_secret": "@"}"#,
            r#"{"a": 1}{"client_secret": "@"}"#,
            r#"x{"client_secret": "@"}"#,
            r#"{"client_secret": 1, "@": 2}"#,
        ] {
            assert!(!place(BodyKind::Json, bad, f), "{bad}");
        }
    }

    #[test]
    fn form_places_are_whole_values_of_the_field() {
        let f = "client_secret";
        for ok in [
            "client_secret=@",
            "a=1&client_secret=@&b=2",
            "a=x%26client_secret%3D&client_secret=@",
        ] {
            assert!(place(BodyKind::Form, ok, f), "{ok}");
        }
        for bad in [
            "other=@",
            "xclient_secret=@",
            "a=1&client_secret=x@",
            "a=client_secret=@",
            "client_secret=@x",
            "client%5Fsecret=@",
            "a=1;client_secret=@",
        ] {
            assert!(!place(BodyKind::Form, bad, f), "{bad}");
        }
        assert!(!place(BodyKind::Other, "client_secret=@", f));
    }
}

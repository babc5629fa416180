//! Data pills: how a step's input is built from the trigger payload and the
//! outputs of earlier steps, without running any code.
//!
//! A [`Template`] is a JSON value (a step's `input` table, or its
//! `condition` string) whose strings, at any depth, may hold pills. Object
//! keys are never parsed. A pill is a path with an optional default:
//!
//! ```text
//! {{ trigger.issue.number }}
//! {{ steps.fetch-issue.labels[0] }}
//! {{ trigger["key with space"] }}
//! {{ trigger.issue.assignee | default: "nobody" }}
//! ```
//!
//! The grammar, whitespace allowed only where shown as ` `:
//!
//! ```text
//! pill    = "{{" ws path ws [ "|" ws "default" ws ":" ws json ws ] "}}"
//! path    = "trigger" segment*
//!         | "steps" ( "." name | "[" ws quoted ws "]" ) segment*
//! segment = "." name | "[" ws index ws "]" | "[" ws quoted ws "]"
//! name    = 1*( ASCII letter | digit | "_" | "-" )
//! index   = 1*digit
//! quoted  = a JSON string, such as "key with space"
//! json    = any JSON value: string, number, boolean, null, array, object
//! ```
//!
//! `\{{` is a literal `{{` and starts no pill. There are no functions, no
//! arithmetic and no access to anything but the trigger payload and the
//! outputs of completed steps.
//!
//! **Rendering.** A string that is exactly one pill (surrounding whitespace
//! allowed) becomes the referenced JSON value, its type preserved: a number
//! stays a number, an object stays an object. Any other string with pills is
//! interpolated: strings are inserted as they are, `null` as nothing, and
//! numbers, booleans, arrays and objects as compact JSON.
//!
//! A pill's default is used when the path leads nowhere (a missing field, an
//! index out of range, a step that has not run) or to `null`. Without a
//! default, a path that leads nowhere is a [`PillError`]; one that leads to
//! `null` renders `null`.
//!
//! Error messages name fields, pills and JSON types, never the values of the
//! trigger payload or of step outputs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

/// A JSON value whose strings may hold data pills, parsed once.
///
/// Built with [`Template::parse`]; rendered with [`Template::render`] for
/// each run.
#[derive(Debug, Clone)]
pub struct Template {
    field: String,
    source: Value,
    node: Node,
}

impl PartialEq for Template {
    /// Two templates are equal when their names and sources are: the parsed
    /// form follows from those.
    fn eq(&self, other: &Self) -> bool {
        self.field == other.field && self.source == other.source
    }
}

/// Where a pill's path starts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Root {
    /// The trigger payload: `trigger...`.
    Trigger,
    /// The output of the named step: `steps.<name>...`.
    Step(String),
}

/// One pill of a template, for validation: which field holds it and where
/// its path starts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PillRef {
    /// The field holding the pill, such as `input.number` or `condition`.
    pub field: String,
    /// The pill as written, braces included: `{{ trigger.issue.number }}`.
    pub pill: String,
    /// Where the pill's path starts.
    pub root: Root,
}

/// What a template is rendered against: the trigger payload and the outputs
/// of the steps that completed so far.
#[derive(Debug, Clone, Copy)]
pub struct PillContext<'a> {
    /// The trigger payload.
    pub trigger: &'a Value,
    /// The outputs of completed steps, by step name. A step that was skipped
    /// or failed is absent.
    pub steps: &'a BTreeMap<String, Value>,
}

impl<'a> PillContext<'a> {
    /// A context over a trigger payload and completed steps' outputs.
    pub fn new(trigger: &'a Value, steps: &'a BTreeMap<String, Value>) -> Self {
        PillContext { trigger, steps }
    }
}

/// A pill that could not be rendered: its path leads nowhere and it has no
/// default.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("in `{field}`, pill `{pill}`: {reason}")]
#[non_exhaustive]
pub struct PillError {
    /// The field holding the pill, such as `input.number` or `condition`.
    pub field: String,
    /// The pill as written, braces included.
    pub pill: String,
    /// Why it has no value, such as ``trigger has no field `issue` ``.
    pub reason: String,
}

/// A pill that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("in `{field}`, pill `{pill}`: {reason}")]
#[non_exhaustive]
pub struct PillSyntaxError {
    /// The field holding the pill, such as `input.number` or `condition`.
    pub field: String,
    /// The pill as written, from its `{{` to its `}}` (or to the end of the
    /// string when it is not closed).
    pub pill: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Whether a value counts as true for a step's `condition`.
///
/// Falsy: `null`, `false`, the number zero, the empty string, the string
/// `"false"` (exactly, as interpolation produces it), the empty array and
/// the empty object. Everything else is truthy, including `"0"`, `"no"` and
/// `"False"`.
pub fn truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !(s.is_empty() || s == "false"),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// The parsed form of a template, mirroring its JSON value.
#[derive(Debug, Clone, PartialEq)]
enum Node {
    /// A value without any pill or escape below it, rendered as it is.
    Literal(Value),
    /// A string that is exactly one pill (with optional whitespace around
    /// it): renders to the referenced value, its type preserved.
    Single { field: String, pill: Pill },
    /// A string of text and pills, rendered to a string.
    Text { field: String, parts: Vec<Part> },
    /// An array with pills in it.
    Array(Vec<Node>),
    /// An object with pills in it.
    Object(Vec<(String, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Pill(Pill),
}

#[derive(Debug, Clone, PartialEq)]
struct Pill {
    /// As written, braces included.
    text: String,
    root: Root,
    path: Vec<Segment>,
    default: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

impl Template {
    /// Parses every pill in `source`. `field` names the template in errors
    /// (`input`, `condition`); its members are named after it, as in
    /// `input.number`, `input.labels[0]` or `input["a b"]`.
    ///
    /// # Errors
    ///
    /// Every pill that does not parse, each with its field, its text and
    /// the reason: an unclosed `{{`, an empty pill, a root other than
    /// `trigger` or `steps.<step>`, a bad index, text after the path, a
    /// default that is not JSON.
    pub fn parse(
        field: impl Into<String>,
        source: Value,
    ) -> Result<Template, Vec<PillSyntaxError>> {
        let (template, errors) = Template::parse_partial(field, source);
        if errors.is_empty() {
            Ok(template)
        } else {
            Err(errors)
        }
    }

    /// Like [`Template::parse`], but also returns the template made of the
    /// pills that did parse, so that their references can still be checked.
    pub(crate) fn parse_partial(
        field: impl Into<String>,
        source: Value,
    ) -> (Template, Vec<PillSyntaxError>) {
        let field = field.into();
        let mut errors = Vec::new();
        let node = parse_node(&field, &source, &mut errors);
        let template = Template {
            field,
            source,
            node,
        };
        (template, errors)
    }

    /// The name of the template, as given to [`Template::parse`].
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The template as written, pills unrendered.
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// Whether the template holds at least one pill.
    pub fn has_pills(&self) -> bool {
        !self.references().is_empty()
    }

    /// Every pill of the template, in document order (object members in
    /// the order of the JSON map).
    pub fn references(&self) -> Vec<PillRef> {
        let mut refs = Vec::new();
        collect_refs(&self.node, &mut refs);
        refs
    }

    /// Renders the template against the trigger payload and the outputs of
    /// completed steps. See the [module documentation](self) for the rules.
    ///
    /// # Errors
    ///
    /// A [`PillError`] for the first pill whose path leads nowhere and that
    /// has no default: a missing field, an index out of range, a value of
    /// the wrong type on the way, or a step missing from the completed steps.
    pub fn render(&self, ctx: &PillContext<'_>) -> Result<Value, PillError> {
        render_node(&self.node, ctx)
    }
}

/// Appends an object member to a field path: `.name` when the key is a
/// plain name, `["key"]` (a JSON string) otherwise.
pub(crate) fn child_key(parent: &str, key: &str) -> String {
    let mut path = parent.to_string();
    if !key.is_empty() && key.bytes().all(is_name_byte) {
        path.push('.');
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&Value::String(key.to_string()).to_string());
        path.push(']');
    }
    path
}

/// Appends an array index to a field path: `[3]`.
pub(crate) fn child_index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn parse_node(field: &str, value: &Value, errors: &mut Vec<PillSyntaxError>) -> Node {
    match value {
        Value::String(s) => parse_string(field, s, errors),
        Value::Array(items) => {
            let nodes: Vec<Node> = items
                .iter()
                .enumerate()
                .map(|(i, v)| parse_node(&child_index(field, i), v, errors))
                .collect();
            if nodes.iter().all(|n| matches!(n, Node::Literal(_))) {
                Node::Literal(value.clone())
            } else {
                Node::Array(nodes)
            }
        }
        Value::Object(map) => {
            let members: Vec<(String, Node)> = map
                .iter()
                .map(|(k, v)| (k.clone(), parse_node(&child_key(field, k), v, errors)))
                .collect();
            if members.iter().all(|(_, n)| matches!(n, Node::Literal(_))) {
                Node::Literal(value.clone())
            } else {
                Node::Object(members)
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => Node::Literal(value.clone()),
    }
}

fn parse_string(field: &str, s: &str, errors: &mut Vec<PillSyntaxError>) -> Node {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut escaped = false;
    let mut at = 0;
    while at < s.len() {
        let rest = &s[at..];
        if rest.starts_with("\\{{") {
            text.push_str("{{");
            escaped = true;
            at += 3;
        } else if rest.starts_with("{{") {
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            match parse_pill(s, at) {
                Ok((pill, end)) => {
                    parts.push(Part::Pill(pill));
                    at = end;
                }
                Err(reason) => {
                    // Resume after the next `}}`, so that later pills of the
                    // same string are checked too.
                    let end = s[at + 2..].find("}}").map_or(s.len(), |i| at + 2 + i + 2);
                    errors.push(PillSyntaxError {
                        field: field.to_string(),
                        pill: s[at..end].to_string(),
                        reason,
                    });
                    at = end;
                }
            }
        } else {
            // `rest` is not empty and `at` is on a character boundary.
            let next = rest.chars().next().map_or(1, char::len_utf8);
            text.push_str(&rest[..next]);
            at += next;
        }
    }
    if !text.is_empty() {
        parts.push(Part::Text(text));
    }
    if !escaped && !parts.iter().any(|p| matches!(p, Part::Pill(_))) {
        return Node::Literal(Value::String(s.to_string()));
    }
    let meaningful: Vec<&Part> = parts
        .iter()
        .filter(|p| !matches!(p, Part::Text(t) if t.trim().is_empty()))
        .collect();
    if let [Part::Pill(pill)] = meaningful.as_slice() {
        return Node::Single {
            field: field.to_string(),
            pill: (*pill).clone(),
        };
    }
    Node::Text {
        field: field.to_string(),
        parts,
    }
}

/// A cursor over the text of one pill.
struct Cursor<'s> {
    s: &'s str,
    at: usize,
}

impl<'s> Cursor<'s> {
    fn rest(&self) -> &'s str {
        &self.s[self.at..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.at += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn skip_ws(&mut self) {
        let rest = self.rest();
        self.at += rest.len() - rest.trim_start().len();
    }

    fn name(&mut self) -> &'s str {
        let rest = self.rest();
        let len = rest.bytes().take_while(|b| is_name_byte(*b)).count();
        self.at += len;
        &rest[..len]
    }

    /// Reads one JSON value at the cursor.
    fn json(&mut self) -> Result<Value, serde_json::Error> {
        let mut stream = serde_json::Deserializer::from_str(self.rest()).into_iter::<Value>();
        match stream.next() {
            Some(Ok(value)) => {
                self.at += stream.byte_offset();
                Ok(value)
            }
            Some(Err(e)) => Err(e),
            None => Err(serde::de::Error::custom("expected a JSON value")),
        }
    }

    /// Reads a `"quoted"` key (a JSON string) at the cursor.
    fn quoted(&mut self) -> Result<String, String> {
        match self.json() {
            Ok(Value::String(key)) => Ok(key),
            Ok(_) | Err(_) => {
                Err("a quoted key must be a JSON string, such as `[\"key with space\"]`".into())
            }
        }
    }

    /// Describes what is at the cursor, for error messages.
    fn found(&self) -> String {
        match self.peek() {
            Some(c) => format!("`{c}`"),
            None => "the end of the string".into(),
        }
    }
}

const UNCLOSED: &str = "unclosed `{{`: end the pill with `}}`, or write `\\{{` for a literal `{{`";

/// Parses the pill whose `{{` is at `start`; returns it and the position
/// after its `}}`.
fn parse_pill(s: &str, start: usize) -> Result<(Pill, usize), String> {
    let mut c = Cursor { s, at: start + 2 };
    c.skip_ws();
    if c.rest().is_empty() {
        return Err(UNCLOSED.into());
    }
    if c.rest().starts_with("}}") {
        return Err(
            "empty pill: write a path such as `trigger.field` or `steps.<step>.field`".into(),
        );
    }
    let root = match c.name() {
        "trigger" => Root::Trigger,
        "steps" => {
            if c.eat('.') {
                let name = c.name();
                if name.is_empty() {
                    return Err(format!(
                        "expected a step name after `steps.`, found {}",
                        c.found()
                    ));
                }
                Root::Step(name.to_string())
            } else if c.eat('[') {
                c.skip_ws();
                let name = c.quoted()?;
                c.skip_ws();
                if !c.eat(']') {
                    return Err(format!(
                        "expected `]` after the step name, found {}",
                        c.found()
                    ));
                }
                Root::Step(name)
            } else {
                return Err(
                    "`steps` must be followed by a step name, as in `steps.<step>.field`".into(),
                );
            }
        }
        "" => {
            return Err(format!(
                "expected `trigger` or `steps.<step>` at the start of the pill, found {}",
                c.found()
            ));
        }
        other => {
            return Err(format!(
                "unknown root `{other}`: a pill starts with `trigger` or `steps.<step>`"
            ));
        }
    };
    let mut path = Vec::new();
    loop {
        if c.eat('.') {
            let name = c.name();
            if name.is_empty() {
                return Err(format!(
                    "expected a field name after `.`, found {} (write `[\"...\"]` for other keys)",
                    c.found()
                ));
            }
            path.push(Segment::Key(name.to_string()));
        } else if c.eat('[') {
            c.skip_ws();
            let segment = if c.peek() == Some('"') {
                Segment::Key(c.quoted()?)
            } else {
                let digits = c.rest().bytes().take_while(u8::is_ascii_digit).count();
                let text = &c.rest()[..digits];
                let index = text.parse::<usize>().map_err(|_| {
                    format!(
                        "bad index: expected a non-negative number such as `[0]` or a quoted key such as `[\"a b\"]`, found {}",
                        c.found()
                    )
                })?;
                c.at += digits;
                Segment::Index(index)
            };
            c.skip_ws();
            if !c.eat(']') {
                return Err(format!("bad index: expected `]`, found {}", c.found()));
            }
            path.push(segment);
        } else {
            break;
        }
    }
    c.skip_ws();
    let mut default = None;
    if c.eat('|') {
        c.skip_ws();
        if c.name() != "default" {
            return Err("expected `default: <JSON>` after `|` (the only filter there is)".into());
        }
        c.skip_ws();
        if !c.eat(':') {
            return Err(format!("expected `:` after `default`, found {}", c.found()));
        }
        c.skip_ws();
        if c.rest().is_empty() {
            return Err(UNCLOSED.into());
        }
        default = Some(
            c.json()
                .map_err(|e| format!("the default is not a JSON value: {e}"))?,
        );
        c.skip_ws();
    }
    if c.rest().starts_with("}}") {
        let end = c.at + 2;
        let pill = Pill {
            text: s[start..end].to_string(),
            root,
            path,
            default,
        };
        return Ok((pill, end));
    }
    if c.rest().is_empty() {
        return Err(UNCLOSED.into());
    }
    if c.rest().starts_with('}') {
        return Err("a pill ends with `}}`, found a single `}`".into());
    }
    Err(format!(
        "unexpected {} in the pill: expected `}}}}`, `.field`, `[index]` or `| default: <JSON>`",
        c.found()
    ))
}

fn collect_refs(node: &Node, refs: &mut Vec<PillRef>) {
    let push = |refs: &mut Vec<PillRef>, field: &str, pill: &Pill| {
        refs.push(PillRef {
            field: field.to_string(),
            pill: pill.text.clone(),
            root: pill.root.clone(),
        });
    };
    match node {
        Node::Literal(_) => {}
        Node::Single { field, pill } => push(refs, field, pill),
        Node::Text { field, parts } => {
            for part in parts {
                if let Part::Pill(pill) = part {
                    push(refs, field, pill);
                }
            }
        }
        Node::Array(nodes) => nodes.iter().for_each(|n| collect_refs(n, refs)),
        Node::Object(members) => members.iter().for_each(|(_, n)| collect_refs(n, refs)),
    }
}

fn render_node(node: &Node, ctx: &PillContext<'_>) -> Result<Value, PillError> {
    match node {
        Node::Literal(value) => Ok(value.clone()),
        Node::Single { field, pill } => evaluate(field, pill, ctx),
        Node::Text { field, parts } => {
            let mut out = String::new();
            for part in parts {
                match part {
                    Part::Text(text) => out.push_str(text),
                    Part::Pill(pill) => match evaluate(field, pill, ctx)? {
                        Value::String(s) => out.push_str(&s),
                        Value::Null => {}
                        // Compact JSON; writing to a String cannot fail.
                        other => {
                            let _ = write!(out, "{other}");
                        }
                    },
                }
            }
            Ok(Value::String(out))
        }
        Node::Array(nodes) => nodes
            .iter()
            .map(|n| render_node(n, ctx))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Node::Object(members) => {
            let mut map = serde_json::Map::new();
            for (key, n) in members {
                map.insert(key.clone(), render_node(n, ctx)?);
            }
            Ok(Value::Object(map))
        }
    }
}

/// The value of one pill: the value its path leads to, or its default when
/// the path leads nowhere or to `null`.
fn evaluate(field: &str, pill: &Pill, ctx: &PillContext<'_>) -> Result<Value, PillError> {
    match (resolve(pill, ctx), &pill.default) {
        (Ok(Value::Null), Some(default)) | (Err(_), Some(default)) => Ok(default.clone()),
        (Ok(value), _) => Ok(value.clone()),
        (Err(reason), None) => Err(PillError {
            field: field.to_string(),
            pill: pill.text.clone(),
            reason,
        }),
    }
}

fn resolve<'v>(pill: &Pill, ctx: &PillContext<'v>) -> Result<&'v Value, String> {
    let (mut current, mut label) = match &pill.root {
        Root::Trigger => (ctx.trigger, "trigger".to_string()),
        Root::Step(name) => match ctx.steps.get(name) {
            Some(output) => (output, child_key("steps", name)),
            None => {
                return Err(format!(
                    "step `{name}` has not run: it is missing from the completed steps (it was skipped, failed, or comes later)"
                ));
            }
        },
    };
    for segment in &pill.path {
        match segment {
            Segment::Key(key) => {
                let Value::Object(map) = current else {
                    return Err(format!(
                        "{label} is {}, not an object, so it has no field `{key}`",
                        kind(current)
                    ));
                };
                current = map
                    .get(key)
                    .ok_or_else(|| format!("{label} has no field `{key}`"))?;
                label = child_key(&label, key);
            }
            Segment::Index(index) => {
                let Value::Array(items) = current else {
                    return Err(format!(
                        "{label} is {}, not an array, so it has no item [{index}]",
                        kind(current)
                    ));
                };
                current = items.get(*index).ok_or_else(|| {
                    format!(
                        "{label} has no item [{index}]: it has {} item{}",
                        items.len(),
                        if items.len() == 1 { "" } else { "s" }
                    )
                })?;
                label = child_index(&label, *index);
            }
        }
    }
    Ok(current)
}

/// The JSON type of a value, with its article, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx_values() -> (Value, BTreeMap<String, Value>) {
        let trigger = json!({
            "issue": {
                "number": 42,
                "title": "Crash on start",
                "open": true,
                "assignee": null,
                "labels": ["bug", "p1"],
                "user": {"login": "octo"},
                "score": 1.5
            },
            "repository": {"owner": "octo", "name": "hello"},
            "key with space": "spaced",
            "a.b": "dotted"
        });
        let mut steps = BTreeMap::new();
        steps.insert(
            "fetch-issue".to_string(),
            json!({"title": "Crash", "labels": [{"name": "bug"}], "count": 0}),
        );
        (trigger, steps)
    }

    fn render_str(s: &str) -> Result<Value, PillError> {
        let (trigger, steps) = ctx_values();
        let t = Template::parse("input.x", json!(s)).unwrap();
        t.render(&PillContext::new(&trigger, &steps))
    }

    fn syntax_error(s: &str) -> Option<String> {
        Template::parse("input.x", json!(s)).err().map(|e| {
            e.into_iter()
                .map(|e| e.reason)
                .collect::<Vec<_>>()
                .join(" / ")
        })
    }

    #[test]
    fn valid_pills_parse() {
        let cases: &[(&str, Root, usize, Option<Value>)] = &[
            ("{{ trigger }}", Root::Trigger, 0, None),
            ("{{trigger.issue.number}}", Root::Trigger, 2, None),
            ("{{ trigger.issue.labels[0] }}", Root::Trigger, 3, None),
            ("{{ trigger[\"key with space\"] }}", Root::Trigger, 1, None),
            ("{{ trigger[ \"a.b\" ] }}", Root::Trigger, 1, None),
            (
                "{{ steps.fetch-issue }}",
                Root::Step("fetch-issue".into()),
                0,
                None,
            ),
            (
                "{{ steps.fetch-issue.labels[0].name }}",
                Root::Step("fetch-issue".into()),
                3,
                None,
            ),
            (
                "{{ steps[\"fetch-issue\"].title }}",
                Root::Step("fetch-issue".into()),
                1,
                None,
            ),
            (
                "{{ trigger.a | default: \"nobody\" }}",
                Root::Trigger,
                1,
                Some(json!("nobody")),
            ),
            (
                "{{ trigger.a|default:3 }}",
                Root::Trigger,
                1,
                Some(json!(3)),
            ),
            (
                "{{ trigger.a | default: -1.5 }}",
                Root::Trigger,
                1,
                Some(json!(-1.5)),
            ),
            (
                "{{ trigger.a | default: true }}",
                Root::Trigger,
                1,
                Some(json!(true)),
            ),
            (
                "{{ trigger.a | default: null }}",
                Root::Trigger,
                1,
                Some(json!(null)),
            ),
            (
                "{{ trigger.a | default: [1, \"}}\"] }}",
                Root::Trigger,
                1,
                Some(json!([1, "}}"])),
            ),
            (
                "{{ trigger.a | default: {\"b\": {\"c\": 1}} }}",
                Root::Trigger,
                1,
                Some(json!({"b": {"c": 1}})),
            ),
            (
                "{{ trigger.a | default: {\"b\":{\"c\":1}}}}",
                Root::Trigger,
                1,
                Some(json!({"b": {"c": 1}})),
            ),
            ("{{ trigger.x_y-z.0 }}", Root::Trigger, 2, None),
        ];
        for (text, root, depth, default) in cases {
            let t =
                Template::parse("input.x", json!(text)).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            let Node::Single { pill, .. } = &t.node else {
                panic!("{text}: not a single pill: {:?}", t.node)
            };
            assert_eq!(&pill.root, root, "{text}");
            assert_eq!(pill.path.len(), *depth, "{text}");
            assert_eq!(&pill.default, default, "{text}");
            assert_eq!(pill.text, *text, "{text}");
        }
    }

    #[test]
    fn invalid_pills_are_refused_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("{{ trigger.a", "unclosed `{{`"),
            ("text {{", "unclosed `{{`"),
            ("{{ trigger.a | default: 1", "unclosed `{{`"),
            ("{{ trigger.a | default:", "unclosed `{{`"),
            ("{{}}", "empty pill"),
            ("{{   }}", "empty pill"),
            ("{{ env.HOME }}", "unknown root `env`"),
            ("{{ secrets.github }}", "unknown root `secrets`"),
            ("{{ triggers.a }}", "unknown root `triggers`"),
            ("{{ .a }}", "expected `trigger` or `steps.<step>`"),
            ("{{ steps }}", "`steps` must be followed by a step name"),
            ("{{ steps. }}", "expected a step name after `steps.`"),
            ("{{ steps[1] }}", "a quoted key must be a JSON string"),
            ("{{ steps[\"a\" }}", "expected `]` after the step name"),
            ("{{ trigger. }}", "expected a field name after `.`"),
            ("{{ trigger.a..b }}", "expected a field name after `.`"),
            ("{{ trigger.a[-1] }}", "bad index"),
            ("{{ trigger.a[x] }}", "bad index"),
            ("{{ trigger.a[] }}", "bad index"),
            ("{{ trigger.a[1.5] }}", "bad index: expected `]`"),
            ("{{ trigger.a[1 }}", "bad index: expected `]`"),
            ("{{ trigger.a[99999999999999999999999] }}", "bad index"),
            ("{{ trigger['a'] }}", "bad index"),
            ("{{ trigger.a b }}", "unexpected `b` in the pill"),
            ("{{ trigger.a + 1 }}", "unexpected `+` in the pill"),
            (
                "{{ trigger.a }",
                "a pill ends with `}}`, found a single `}`",
            ),
            (
                "{{ trigger.a } }}",
                "a pill ends with `}}`, found a single `}`",
            ),
            ("{{ trigger.a() }}", "unexpected `(` in the pill"),
            (
                "{{ trigger.a | upper }}",
                "expected `default: <JSON>` after `|`",
            ),
            (
                "{{ trigger.a | default \"x\" }}",
                "expected `:` after `default`",
            ),
            (
                "{{ trigger.a | default: nobody }}",
                "the default is not a JSON value",
            ),
            (
                "{{ trigger.a | default: 'x' }}",
                "the default is not a JSON value",
            ),
            (
                "{{ trigger.a | default: \"x\" \"y\" }}",
                "unexpected `\"` in the pill",
            ),
            (
                "{{ {{ trigger.a }} }}",
                "expected `trigger` or `steps.<step>`",
            ),
        ];
        for (text, expected) in cases {
            let reason = syntax_error(text).unwrap_or_else(|| panic!("{text} parsed"));
            assert!(
                reason.contains(expected),
                "{text}: got {reason:?}, expected {expected:?}"
            );
        }
    }

    #[test]
    fn syntax_errors_name_field_and_pill_and_are_all_reported() {
        let source = json!({
            "a": "{{ env.X }} and {{ trigger.ok }} and {{ }}",
            "list": ["fine", "{{ trigger[x] }}"],
        });
        let errors = Template::parse("input", source).unwrap_err();
        let got: Vec<(String, String)> = errors
            .iter()
            .map(|e| (e.field.clone(), e.pill.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("input.a".to_string(), "{{ env.X }}".to_string()),
                ("input.a".to_string(), "{{ }}".to_string()),
                ("input.list[1]".to_string(), "{{ trigger[x] }}".to_string()),
            ]
        );
        assert_eq!(
            errors[0].to_string(),
            "in `input.a`, pill `{{ env.X }}`: unknown root `env`: a pill starts with `trigger` or `steps.<step>`"
        );
        // An unclosed pill runs to the end of the string.
        let errors = Template::parse("condition", json!("x {{ trigger.a")).unwrap_err();
        assert_eq!(errors[0].pill, "{{ trigger.a");
        assert_eq!(errors[0].field, "condition");
    }

    #[test]
    fn a_single_pill_preserves_the_type() {
        let cases: &[(&str, Value)] = &[
            ("{{ trigger.issue.number }}", json!(42)),
            ("  {{ trigger.issue.number }}\n", json!(42)),
            ("{{ trigger.issue.score }}", json!(1.5)),
            ("{{ trigger.issue.open }}", json!(true)),
            ("{{ trigger.issue.assignee }}", json!(null)),
            ("{{ trigger.issue.labels }}", json!(["bug", "p1"])),
            ("{{ trigger.issue.user }}", json!({"login": "octo"})),
            ("{{ trigger.issue.labels[1] }}", json!("p1")),
            ("{{ trigger[\"key with space\"] }}", json!("spaced")),
            ("{{ trigger[\"a.b\"] }}", json!("dotted")),
            ("{{ steps.fetch-issue.labels[0].name }}", json!("bug")),
            ("{{ steps.fetch-issue.count }}", json!(0)),
            ("{{ steps[\"fetch-issue\"].title }}", json!("Crash")),
        ];
        for (text, expected) in cases {
            assert_eq!(&render_str(text).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn text_around_pills_is_interpolated() {
        let cases: &[(&str, &str)] = &[
            (
                "#{{ trigger.issue.number }}: {{ trigger.issue.title }}",
                "#42: Crash on start",
            ),
            ("x{{ trigger.issue.number }}", "x42"),
            (
                "{{ trigger.issue.number }}{{ trigger.issue.number }}",
                "4242",
            ),
            ("open={{ trigger.issue.open }}", "open=true"),
            ("by [{{ trigger.issue.assignee }}]", "by []"),
            (
                "labels={{ trigger.issue.labels }}",
                "labels=[\"bug\",\"p1\"]",
            ),
            ("user={{ trigger.issue.user }}", "user={\"login\":\"octo\"}"),
            ("score {{ trigger.issue.score }}", "score 1.5"),
            ("no pills at all", "no pills at all"),
            ("closing }} alone is text", "closing }} alone is text"),
            ("ünïcödé {{ trigger.repository.name }} ✓", "ünïcödé hello ✓"),
        ];
        for (text, expected) in cases {
            assert_eq!(render_str(text).unwrap(), json!(expected), "{text}");
        }
    }

    #[test]
    fn escapes_make_literal_braces() {
        let cases: &[(&str, &str)] = &[
            ("\\{{ trigger.issue.number }}", "{{ trigger.issue.number }}"),
            ("a \\{{ b", "a {{ b"),
            ("\\{{ {{ trigger.issue.number }}", "{{ 42"),
            ("back\\slash", "back\\slash"),
            ("\\{ single", "\\{ single"),
        ];
        for (text, expected) in cases {
            assert_eq!(render_str(text).unwrap(), json!(expected), "{text}");
        }
        // An escaped pill is text: nothing to reference.
        let t = Template::parse("input", json!("\\{{ steps.nope.x }}")).unwrap();
        assert!(t.references().is_empty());
        assert!(!t.has_pills());
    }

    #[test]
    fn defaults_apply_when_missing_or_null() {
        let cases: &[(&str, Value)] = &[
            (
                "{{ trigger.issue.assignee | default: \"nobody\" }}",
                json!("nobody"),
            ),
            ("{{ trigger.issue.missing | default: 7 }}", json!(7)),
            ("{{ trigger.issue.labels[9] | default: [] }}", json!([])),
            (
                "{{ trigger.issue.number.x | default: {\"a\": 1} }}",
                json!({"a": 1}),
            ),
            ("{{ steps.not-run.title | default: null }}", json!(null)),
            ("{{ trigger.issue.number | default: 0 }}", json!(42)),
            ("{{ steps.fetch-issue.count | default: 5 }}", json!(0)),
            (
                "by {{ trigger.issue.assignee | default: \"nobody\" }}",
                json!("by nobody"),
            ),
            ("n={{ trigger.nope | default: 3 }}", json!("n=3")),
        ];
        for (text, expected) in cases {
            assert_eq!(&render_str(text).unwrap(), expected, "{text}");
        }
    }

    #[test]
    fn missing_values_are_errors_that_name_field_pill_and_reason() {
        let cases: &[(&str, &str)] = &[
            ("{{ trigger.nope }}", "trigger has no field `nope`"),
            (
                "{{ trigger.issue.nope }}",
                "trigger.issue has no field `nope`",
            ),
            (
                "{{ trigger.issue.labels[5] }}",
                "trigger.issue.labels has no item [5]: it has 2 items",
            ),
            (
                "{{ trigger.issue.number.x }}",
                "trigger.issue.number is a number, not an object",
            ),
            (
                "{{ trigger.issue.user[0] }}",
                "trigger.issue.user is an object, not an array",
            ),
            (
                "{{ trigger.issue.labels.first }}",
                "trigger.issue.labels is an array, not an object",
            ),
            (
                "{{ trigger.issue.assignee.login }}",
                "trigger.issue.assignee is null, not an object",
            ),
            ("{{ trigger[\"a b\"].c }}", "trigger has no field `a b`"),
            (
                "{{ steps.fetch-issue.labels[0].x }}",
                "steps.fetch-issue.labels[0] has no field `x`",
            ),
            (
                "{{ steps.notify.ts }}",
                "step `notify` has not run: it is missing from the completed steps",
            ),
            ("text {{ steps.notify.ts }}", "step `notify` has not run"),
        ];
        for (text, expected) in cases {
            let e = render_str(text).unwrap_err();
            assert!(e.reason.contains(expected), "{text}: got {:?}", e.reason);
            assert_eq!(e.field, "input.x");
            assert_eq!(e.pill, text.trim_start_matches("text "));
        }
        let e = render_str("{{ trigger.issue.nope }}").unwrap_err();
        assert_eq!(
            e.to_string(),
            "in `input.x`, pill `{{ trigger.issue.nope }}`: trigger.issue has no field `nope`"
        );
    }

    #[test]
    fn nested_templates_render_in_arrays_and_objects() {
        let (trigger, steps) = ctx_values();
        let source = json!({
            "owner": "{{ trigger.repository.owner }}",
            "number": "{{ trigger.issue.number }}",
            "constant": 5,
            "flag": false,
            "nothing": null,
            "{{ keys are not pills }}": "kept",
            "blocks": [
                {"type": "section", "text": "#{{ trigger.issue.number }} {{ steps.fetch-issue.title }}"},
                ["{{ trigger.issue.open }}", 1, "plain"]
            ]
        });
        let t = Template::parse("input", source).unwrap();
        let out = t.render(&PillContext::new(&trigger, &steps)).unwrap();
        assert_eq!(
            out,
            json!({
                "owner": "octo",
                "number": 42,
                "constant": 5,
                "flag": false,
                "nothing": null,
                "{{ keys are not pills }}": "kept",
                "blocks": [
                    {"type": "section", "text": "#42 Crash"},
                    [true, 1, "plain"]
                ]
            })
        );
        let mut fields: Vec<String> = t.references().into_iter().map(|r| r.field).collect();
        fields.sort();
        assert_eq!(
            fields,
            [
                "input.blocks[0].text",
                "input.blocks[0].text",
                "input.blocks[1][0]",
                "input.number",
                "input.owner"
            ]
        );
        let e = Template::parse("input", json!({"a": [{"b c": "{{ trigger.zz }}"}]}))
            .unwrap()
            .render(&PillContext::new(&trigger, &steps))
            .unwrap_err();
        assert_eq!(e.field, "input.a[0][\"b c\"]");
    }

    #[test]
    fn references_list_roots_in_order() {
        let t = Template::parse(
            "condition",
            json!("{{ trigger.a }} {{ steps.one.x }} {{ steps[\"two\"] | default: 1 }}"),
        )
        .unwrap();
        let refs = t.references();
        assert_eq!(
            refs.iter().map(|r| r.root.clone()).collect::<Vec<_>>(),
            [
                Root::Trigger,
                Root::Step("one".into()),
                Root::Step("two".into())
            ]
        );
        assert_eq!(refs[1].pill, "{{ steps.one.x }}");
        assert!(refs.iter().all(|r| r.field == "condition"));
        assert!(t.has_pills());
        let plain = Template::parse("input", json!({"a": [1, "b"]})).unwrap();
        assert!(plain.references().is_empty());
        assert!(!plain.has_pills());
        assert_eq!(plain.source(), &json!({"a": [1, "b"]}));
        assert_eq!(plain.field(), "input");
    }

    #[test]
    fn truthiness() {
        let falsy = [
            json!(null),
            json!(false),
            json!(0),
            json!(0.0),
            json!(""),
            json!("false"),
            json!([]),
            json!({}),
        ];
        let truthy_values = [
            json!(true),
            json!(1),
            json!(-1),
            json!(0.5),
            json!("0"),
            json!("no"),
            json!("False"),
            json!(" "),
            json!([0]),
            json!({"a": null}),
        ];
        for v in &falsy {
            assert!(!truthy(v), "{v} should be falsy");
        }
        for v in &truthy_values {
            assert!(truthy(v), "{v} should be truthy");
        }
    }

    #[test]
    fn conditions_render_then_test_truthiness() {
        let (trigger, steps) = ctx_values();
        let ctx = PillContext::new(&trigger, &steps);
        let cases: &[(&str, bool)] = &[
            ("{{ trigger.issue.open }}", true),
            ("{{ trigger.issue.assignee }}", false),
            ("{{ steps.fetch-issue.count }}", false),
            ("{{ trigger.issue.labels }}", true),
            ("{{ trigger.issue.missing | default: false }}", false),
            (
                "{{ trigger.issue.assignee }}{{ trigger.issue.assignee }}",
                false,
            ),
            ("{{ trigger.issue.open }} ", true),
            ("false", false),
            ("yes", true),
        ];
        for (text, expected) in cases {
            let t = Template::parse("condition", json!(text)).unwrap();
            assert_eq!(truthy(&t.render(&ctx).unwrap()), *expected, "{text}");
        }
    }

    #[test]
    fn no_short_string_makes_parsing_or_rendering_panic() {
        // Every string of up to four pieces from an alphabet of the
        // grammar's delimiters, with a multi-byte character among them (the
        // empty piece makes the shorter strings).
        let alphabet = [
            "", "{{", "}}", "{", "}", "\\", "\"", "[", "]", ".", "|", " ", "trigger", "steps.",
            "é", "0", "default:",
        ];
        let (trigger, steps) = ctx_values();
        let ctx = PillContext::new(&trigger, &steps);
        for a in alphabet {
            for b in alphabet {
                for c in alphabet {
                    for d in alphabet {
                        let text = format!("{a}{b}{c}{d}");
                        if let Ok(t) = Template::parse("x", json!(text)) {
                            let _ = t.render(&ctx);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn field_paths_quote_unusual_keys() {
        assert_eq!(child_key("input", "number"), "input.number");
        assert_eq!(child_key("input", "fetch-issue_2"), "input.fetch-issue_2");
        assert_eq!(child_key("input", "a b"), "input[\"a b\"]");
        assert_eq!(child_key("input", "a.b"), "input[\"a.b\"]");
        assert_eq!(child_key("input", ""), "input[\"\"]");
        assert_eq!(child_key("input", "q\""), "input[\"q\\\"\"]");
        assert_eq!(child_index("input.a", 3), "input.a[3]");
    }
}

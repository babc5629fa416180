//! Property tests of the manifest and data-pill parsers: no input makes them
//! panic, a manifest that parses prints back to itself, and pill errors never
//! carry a value of the payload.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

/// A value of the trigger payload that must never appear in an error.
const CANARY: &str = "canary-7Hq2-payload-value";

/// A pill path: a root, then members, indices and quoted keys.
fn path() -> impl Strategy<Value = String> {
    let root = prop_oneof![
        Just("trigger".to_string()),
        "[a-z_-]{1,6}".prop_map(|s| format!("steps.{s}")),
        Just("steps[\"a b\"]".to_string()),
        "[a-z.\\[\\]\"0-9 ]{0,8}",
    ];
    let segment = prop_oneof![
        "[a-zA-Z0-9_-]{1,6}".prop_map(|s| format!(".{s}")),
        (0..4u32).prop_map(|i| format!("[{i}]")),
        "[a-z ]{0,4}".prop_map(|s| format!("[\"{s}\"]")),
        "[\\[\\]. \"0-9a]{1,4}",
    ];
    (root, prop::collection::vec(segment, 0..4)).prop_map(|(r, s)| format!("{r}{}", s.concat()))
}

/// A string that may hold pills, broken pills and escapes.
fn pill_text() -> impl Strategy<Value = String> {
    let default = prop_oneof![
        Just(String::new()),
        Just(" | default: \"x\"".to_string()),
        Just(" | default: 3".to_string()),
        Just(" | default: null".to_string()),
        Just(" | default: {\"a\": [1]}".to_string()),
        Just(" | default: ".to_string()),
        Just(" | nope: 1".to_string()),
    ];
    let piece = prop_oneof![
        "[a-z {}|:\\\\]{0,8}",
        (path(), default).prop_map(|(p, d)| format!("{{{{ {p}{d} }}}}")),
        Just("\\{{".to_string()),
        Just("{{".to_string()),
        Just("}}".to_string()),
    ];
    prop::collection::vec(piece, 0..4).prop_map(|p| p.concat())
}

/// A trigger payload whose every string is the canary.
fn payload() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::String(CANARY.to_string())),
        Just(Value::Null),
        any::<i64>().prop_map(Value::from),
        any::<bool>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z ]{1,4}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A manifest assembled from parts that are mostly valid, sometimes broken.
fn manifest_text() -> impl Strategy<Value = String> {
    let name = prop_oneof![9 => "[a-z][a-z0-9_-]{0,8}", 1 => "[A-Za-z .]{0,6}"];
    let duration = prop_oneof![9 => "[1-9][0-9]{0,1}(ms|s)", 1 => "[a-z0-9]{0,4}"];
    let size = prop_oneof![9 => "(16|32|64)MiB", 1 => "[a-z0-9]{0,4}"];
    let trigger = prop_oneof![
        3 => Just(String::new()),
        3 => Just("[trigger]\nkind = \"manual\"\n".to_string()),
        3 => Just("[trigger]\nkind = \"webhook\"\nsignature = \"hmac-sha256\"\n".to_string()),
        1 => "[0-9* ]{0,14}".prop_map(|c| format!("[trigger]\nkind = \"schedule\"\ncron = \"{c}\"\n")),
        1 => "[a-z]{0,6}".prop_map(|k| format!("[trigger]\nkind = \"{k}\"\n")),
    ];
    let host = prop_oneof![9 => "[a-z]{1,8}\\.example(:[1-9][0-9]{0,3})?", 1 => "[a-z.*:]{0,10}"];
    let grants = (
        prop::collection::vec(host, 0..3),
        prop::collection::vec("[a-z_]{1,6}", 0..2),
        prop::collection::vec(prop_oneof![9 => "/[a-z]{1,4}", 1 => "[a-z~/]{0,4}"], 0..2),
        duration.clone(),
        size,
    )
        .prop_map(|(net, env, mask, timeout, memory)| {
            format!(
                "[steps.grants]\nnet = {net:?}\nenv = {env:?}\nmask = {mask:?}\nsecrets = {{ s = \"conn\" }}\ntimeout = \"{timeout}\"\nmemory = \"{memory}\"\n"
            )
        });
    let text = prop_oneof![3 => "[a-z ]{0,8}", 1 => pill_text()];
    let step = (
        name.clone(),
        prop_oneof![9 => "components/[a-z]{1,8}\\.wasm", 1 => "[a-z./]{1,10}"],
        "[a-z-]{1,8}",
        text.clone(),
        prop::option::of(text),
        prop::option::of((1..5u32, duration)),
        grants,
    )
        .prop_map(|(name, component, action, input, condition, retry, grants)| {
            let mut step = format!(
                "[[steps]]\nname = \"{name}\"\ncomponent = \"{component}\"\naction = \"{action}\"\ninput = {{ text = {input:?}, n = 1, list = [true, 2.5] }}\n"
            );
            if let Some(condition) = condition {
                step.push_str(&format!("condition = {condition:?}\n"));
            }
            if let Some((attempts, backoff)) = retry {
                step.push_str(&format!(
                    "retry = {{ attempts = {attempts}, backoff = \"{backoff}\" }}\n"
                ));
            }
            step.push_str(&grants);
            step
        });
    (name, trigger, prop::collection::vec(step, 0..3)).prop_map(|(name, trigger, steps)| {
        format!(
            "[recipe]\nname = \"{name}\"\n\n{trigger}\n{}",
            steps.join("\n")
        )
    })
}

/// The generator is not vacuous: a good share of what it makes parses, so
/// the round trip below is exercised.
#[test]
fn the_manifest_generator_makes_valid_manifests() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = manifest_text();
    let valid = (0..200)
        .filter(|_| {
            let text = strategy
                .new_tree(&mut runner)
                .expect("a manifest")
                .current();
            Manifest::parse(&text).is_ok()
        })
        .count();
    assert!(valid >= 20, "only {valid} of 200 generated manifests parse");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn arbitrary_text_never_panics_the_manifest_parser(text in "\\PC{0,200}") {
        if let Err(errors) = Manifest::parse(&text) {
            prop_assert!(!errors.0.is_empty());
        }
    }

    /// A structured manifest parses or is refused with at least one error;
    /// one that parses prints back to a manifest that parses to itself.
    #[test]
    fn a_manifest_that_parses_prints_back_to_itself(text in manifest_text()) {
        match Manifest::parse(&text) {
            Ok(manifest) => {
                let printed = manifest.to_toml().map_err(|e| TestCaseError::fail(e.to_string()))?;
                let again = Manifest::parse(&printed)
                    .map_err(|e| TestCaseError::fail(format!("{e}\n{printed}")))?;
                prop_assert_eq!(again, manifest);
            }
            Err(errors) => prop_assert!(!errors.0.is_empty()),
        }
    }

    /// Any template parses or is refused without panicking; rendering it
    /// against any payload never panics and never puts a payload value in
    /// an error message.
    #[test]
    fn pills_never_panic_and_errors_carry_no_value(
        text in pill_text(),
        trigger in payload(),
        step_output in payload(),
    ) {
        let source = json!({ "text": text, "nested": [text.clone()] });
        let mut steps = BTreeMap::new();
        steps.insert("a b".to_string(), step_output.clone());
        steps.insert("fetch".to_string(), step_output);
        let ctx = PillContext::new(&trigger, &steps);
        match Template::parse("input", source) {
            Ok(template) => {
                let _ = template.references();
                if let Err(e) = template.render(&ctx) {
                    prop_assert!(!e.to_string().contains(CANARY), "{}", e);
                    let debug = format!("{e:?}");
                    prop_assert!(!debug.contains(CANARY), "{}", debug);
                }
            }
            Err(errors) => {
                prop_assert!(!errors.is_empty());
            }
        }
        if let Ok(condition) = Template::parse("condition", Value::String(text))
            && let Err(e) = condition.render(&ctx)
        {
            prop_assert!(!e.to_string().contains(CANARY), "{}", e);
        }
    }
}

//! A step that greets the `name` of its input, in each language `wrun new`
//! scaffolds. It uses only the SDK's log, so it needs no grant: the tests of
//! the author tooling write it over a scaffold and run it.

use std::path::Path;

/// (language as `wrun new --lang` takes it, the step's source file, its
/// source).
pub const GREET_STEPS: [(&str, &str, &str); 3] = [
    (
        "rust",
        "src/lib.rs",
        "use serde_json::{Value, json};\nuse wrun_sdk::{Error, log, step};\n\n\
         fn greet(input: Value) -> Result<Value, Error> {\n    log::info(\"greeting\");\n    Ok(json!({ \"hello\": input[\"name\"] }))\n}\n\n\
         step!(\"greet\" => greet);\n",
    ),
    (
        "js",
        "step.js",
        "import { log, step } from './sdk/wrun.js';\n\n\
         export const actions = step({\n  greet: (input) => { log.info('greeting'); return { hello: input.name }; },\n});\n",
    ),
    (
        "python",
        "step.py",
        "from wrun_sdk import Actions, action, log\n\n__all__ = [\"Actions\"]\n\n\n\
         @action(\"greet\")\ndef greet(data):\n    log.info(\"greeting\")\n    return {\"hello\": data[\"name\"]}\n",
    ),
];

/// Turns the project `wrun new <name> --lang <lang>` scaffolded in `dir`
/// into the greet step: its source, a recipe that runs its `greet` action on
/// the whole trigger (`input = "{{ trigger }}"`, no grant) and an
/// `input.json` of `{"name": "Ada"}`.
///
/// # Panics
///
/// On an unknown language or a file that cannot be written (a test helper).
pub fn greet_project(dir: &Path, name: &str, lang: &str) {
    let (_, file, source) = GREET_STEPS
        .iter()
        .find(|(l, _, _)| *l == lang)
        .unwrap_or_else(|| panic!("no greet step in {lang}"));
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    };
    write(&dir.join("steps").join(name).join(file), source);
    write(
        &dir.join("recipe.toml"),
        &format!(
            "[recipe]\nname = \"{name}\"\n\n[[steps]]\nname = \"greet\"\ncomponent = \"components/{name}.wasm\"\nbuild = \"steps/{name}\"\naction = \"greet\"\ninput = \"{{{{ trigger }}}}\"\n"
        ),
    );
    write(&dir.join("input.json"), "{\"name\": \"Ada\"}");
}

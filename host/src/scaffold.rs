//! `wrun new` (a step crate and a recipe that uses it) and `wrun build`
//! (compile each step crate to a component where the manifest expects it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

use crate::bundle::read_manifest;
use crate::toolkit;

/// The language a step is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Lang {
    /// A Rust crate using the `wrun-sdk` crate.
    Rust,
    /// A JavaScript module built with componentize-js.
    Js,
    /// A Python module built with componentize-py.
    Python,
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
}

/// Creates `dir` with `recipe.toml` and `steps/NAME/` (a step crate).
///
/// # Errors
///
/// An invalid name, an existing `dir`, or an I/O error.
pub(crate) fn new_recipe(name: &str, dir: &Path, lang: Lang) -> Result<()> {
    ensure!(
        valid_name(name),
        "`{name}` is not a valid name: use 1 to 64 lowercase letters, digits and `-`"
    );
    ensure!(!dir.exists(), "{} already exists", dir.display());
    let step_dir = dir.join("steps").join(name);
    std::fs::create_dir_all(&step_dir)
        .with_context(|| format!("creating {}", step_dir.display()))?;
    let mut files = vec![
        (dir.join("recipe.toml"), RECIPE.replace("NAME", name)),
        (dir.join("input.json"), INPUT.to_string()),
        (dir.join(".gitignore"), "/target\n/components\n".to_string()),
    ];
    match lang {
        Lang::Rust => {
            let sdk = toolkit::root()?.join(toolkit::RUST_SDK);
            std::fs::create_dir_all(step_dir.join("src"))?;
            files.push((
                step_dir.join("Cargo.toml"),
                CARGO
                    .replace("NAME", name)
                    .replace("SDK", &sdk.display().to_string()),
            ));
            files.push((step_dir.join("src").join("lib.rs"), LIB.to_string()));
        }
        Lang::Js => {
            // The SDK is copied next to the step: componentize-js resolves
            // relative imports only.
            let sdk_dir = step_dir.join("sdk");
            std::fs::create_dir_all(&sdk_dir)?;
            let js = toolkit::root()?.join(toolkit::JS);
            for file in ["wrun.js", "imports.js"] {
                let from = js.join("sdk").join(file);
                std::fs::copy(&from, sdk_dir.join(file))
                    .with_context(|| format!("copying {}", from.display()))?;
            }
            files.push((step_dir.join("step.js"), STEP_JS.to_string()));
        }
        Lang::Python => files.push((step_dir.join("step.py"), STEP_PY.to_string())),
    }
    for (path, text) in files {
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

const STEP_JS: &str = r#"// A wrun step: fetch a JSON document with the `api` connection.
import { auth, errorForStatus, fetch, log, properties, secrets, step } from './sdk/wrun.js';

async function fetchDocument({ path }) {
  const base = properties.require('api_base');
  const token = secrets.get('api');
  log.info(`fetching ${path}`);
  const response = await fetch(`${base}${path}`, auth({ headers: { accept: 'application/json' } }, token));
  return (await errorForStatus(response)).json();
}

export const actions = step({ fetch: fetchDocument });
"#;

const STEP_PY: &str = r#""""A wrun step: fetch a JSON document with the `api` connection."""

from dataclasses import dataclass

from wrun_sdk import Actions, action, http, log, properties, secrets

__all__ = ["Actions"]


@dataclass
class Input:
    """The input of ``fetch``."""

    path: str


@action("fetch", input=Input)
def fetch(data: Input) -> dict:
    """Fetches ``api_base + path`` with the ``api`` secret."""
    base = properties.require("api_base")
    token = secrets.get("api")
    log.info(f"fetching {data.path}")
    response = http.get(f"{base}{data.path}", headers={"Accept": "application/json"}, auth=token)
    return response.raise_for_status().json()
"#;

const RECIPE: &str = r#"# A recipe: a trigger, then steps. See the manifest reference in wrun's README.
[recipe]
name = "NAME"
description = "Fetch a JSON document from an API with a token"

[trigger]
kind = "manual"

[[steps]]
name = "fetch"
component = "components/NAME.wasm"
build = "steps/NAME"
action = "fetch"
input = { path = "{{ trigger.path }}" }

[steps.grants]
net = ["api.example.com"]
secrets = { api = "api-token" }   # alias used in the code -> connection name
env = ["api_base"]                 # e.g. https://api.example.com
timeout = "10s"
memory = "64MiB"
"#;

const INPUT: &str = "{ \"path\": \"/v1/status\" }\n";

const CARGO: &str = r#"[package]
name = "NAME"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
wrun-sdk = { path = "SDK" }
serde = { version = "1", features = ["derive"] }
serde_json = "1"

[profile.release]
opt-level = "s"
lto = true
strip = true
codegen-units = 1

# A standalone crate, even inside another workspace.
[workspace]
"#;

const LIB: &str = r#"//! A wrun step: fetch a JSON document with the `api` connection.

use serde::Deserialize;
use serde_json::Value;
use wrun_sdk::{Error, http, log, properties, secrets, step};

#[derive(Deserialize)]
struct Input {
    path: String,
}

fn fetch(input: Input) -> Result<Value, Error> {
    let base = properties::require("api_base")?;
    let token = secrets::get("api")?;
    log::info(&format!("fetching {}", input.path));
    let response = http::Request::get(&format!("{base}{}", input.path))
        .header("accept", "application/json")
        .auth(&token)
        .send()?
        .error_for_status()?;
    response.json()
}

step!("fetch" => fetch);
"#;

/// Builds every step of `recipe` that names a `build` crate, and copies the
/// component to the step's `component` path. Returns (step, component path).
///
/// # Errors
///
/// An invalid manifest, a failing `cargo build`, or no component produced.
pub(crate) fn build(recipe: &Path) -> Result<Vec<(String, PathBuf)>> {
    let manifest = read_manifest(recipe)?;
    let base = recipe
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // An existing CARGO_TARGET_DIR is honoured (shared builds); otherwise the
    // step crates share `target/` next to the recipe.
    // Cargo runs in each crate's directory, so the path must be absolute.
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| base.join("target"));
    let target_dir = cwd.join(target_dir);
    let mut built = Vec::new();
    for step in &manifest.steps {
        let Some(crate_dir) = &step.build else {
            continue;
        };
        let crate_dir = base.join(crate_dir);
        let dest = cwd.join(base.join(&step.component));
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        if crate_dir.join("step.js").exists() {
            build_js(&step.name, &cwd.join(&crate_dir), &dest)?;
            built.push((step.name.clone(), dest));
            continue;
        }
        if crate_dir.join("step.py").exists() {
            build_python(&step.name, &cwd.join(&crate_dir), &dest)?;
            built.push((step.name.clone(), dest));
            continue;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let output = Command::new(cargo)
            .current_dir(&crate_dir)
            .args([
                "build",
                "--release",
                "--target",
                "wasm32-wasip2",
                "--message-format=json-render-diagnostics",
            ])
            .env("CARGO_TARGET_DIR", &target_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| {
                format!(
                    "step `{}`: running cargo in {}",
                    step.name,
                    crate_dir.display()
                )
            })?;
        if !output.status.success() {
            bail!(
                "step `{}`: `cargo build` failed in {} (see cargo's output above)",
                step.name,
                crate_dir.display()
            );
        }
        let artifact = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact")
            .filter_map(|m| {
                m["filenames"]
                    .as_array()?
                    .iter()
                    .filter_map(|f| f.as_str())
                    .find(|f| f.ends_with(".wasm"))
                    .map(PathBuf::from)
            })
            .next_back()
            .with_context(|| {
                format!(
                    "step `{}`: cargo produced no .wasm (is it a cdylib?)",
                    step.name
                )
            })?;
        let dest = base.join(&step.component);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::copy(&artifact, &dest)
            .with_context(|| format!("copying {} to {}", artifact.display(), dest.display()))?;
        built.push((step.name.clone(), dest));
    }
    ensure!(
        !built.is_empty(),
        "no step of {} names a `build` crate",
        recipe.display()
    );
    Ok(built)
}

/// Runs a toolchain command for a step, with a clear error when it fails.
fn run_tool(step: &str, cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| {
        format!(
            "step `{step}`: cannot start {what} ({:?})",
            cmd.get_program()
        )
    })?;
    ensure!(
        status.success(),
        "step `{step}`: {what} failed (see its output above)"
    );
    Ok(())
}

/// `step.js` -> component with componentize-js (installed from npm, at the
/// toolkit's pinned versions, into the toolkit on first use).
fn build_js(step: &str, dir: &Path, dest: &Path) -> Result<()> {
    let js = toolkit::root()?.join(toolkit::JS);
    // Beside node_modules, not in it: `npm ci` empties node_modules first.
    let installed = js.join(".npm-installed");
    toolkit::install_once(&installed, || {
        run_tool(
            step,
            Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund"])
                .current_dir(&js),
            "installing componentize-js (npm ci; is node with npm installed?)",
        )
    })?;
    // componentize-js prepares its engine on a first use in a way two
    // concurrent builds can tear: JS builds of one toolkit take turns.
    toolkit::exclusive(&js.join(".build.lock"), || {
        run_tool(
            step,
            Command::new("node")
                .arg(js.join("build.mjs"))
                .arg(dir.join("step.js"))
                .arg(dest)
                // The world is trimmed to what the step uses (build.mjs knows
                // the SDK copy `wrun new` puts next to it), so a step needs only
                // the grants of what it calls.
                .current_dir(&js),
            "componentize-js",
        )
    })
}

/// `step.py` -> component with componentize-py (installed from PyPI, at the
/// toolkit's pinned version, into a virtual environment of the toolkit on
/// first use).
fn build_python(step: &str, dir: &Path, dest: &Path) -> Result<()> {
    let root = toolkit::root()?;
    let py = root.join(toolkit::PYTHON);
    let venv = py.join(".venv");
    let tool = venv.join("bin").join("componentize-py");
    toolkit::install_once(&py.join(".venv-installed"), || {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        run_tool(
            step,
            Command::new(&python).arg("-m").arg("venv").arg(&venv),
            "creating a Python virtual environment (is python3 with venv installed?)",
        )?;
        run_tool(
            step,
            Command::new(venv.join("bin").join("pip"))
                .args(["install", "--quiet", "--disable-pip-version-check", "-r"])
                .arg(py.join("requirements.txt")),
            "installing componentize-py (pip)",
        )
    })?;
    // The world is trimmed to what the step imports from `wrun_sdk`, so it
    // needs only the grants of what it uses (as build.mjs does for JS).
    let needs = python_needs(dir)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let work = std::env::temp_dir().join(format!("wrun-py-{}-{nanos}", std::process::id()));
    let world = trimmed_world(&root.join(toolkit::WIT), &work, &needs)?;
    let result = run_tool(
        step,
        Command::new(&tool)
            .arg("-q")
            .arg("-d")
            .arg(work.join("wit"))
            .args(["-w", &world, "componentize", "step", "-p"])
            .arg(dir)
            .arg("-p")
            .arg(py.join("sdk"))
            .arg("-o")
            .arg(dest),
        "componentize-py",
    );
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// The grants a Python step's modules use, from what they import of
/// `wrun_sdk`: `http` needs `net`, `secrets` needs `secrets`, `properties`
/// needs `env`; `import wrun_sdk` or `from wrun_sdk import *` may use
/// anything.
fn python_needs(dir: &Path) -> Result<Vec<&'static str>> {
    const ALL: [&str; 3] = ["net", "secrets", "env"];
    let need_of = |name: &str| match name {
        "http" => Some("net"),
        "secrets" => Some("secrets"),
        "properties" => Some("env"),
        _ => None,
    };
    let mut needs = std::collections::BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "py") {
                continue;
            }
            let source = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            // Comments out; parenthesised import lists onto one line.
            let mut code = String::new();
            let mut depth = 0usize;
            for line in source.lines() {
                let line = line.split('#').next().unwrap_or("");
                depth =
                    (depth + line.matches('(').count()).saturating_sub(line.matches(')').count());
                code.push_str(line);
                code.push(if depth > 0 { ' ' } else { '\n' });
            }
            for statement in code.lines().flat_map(|l| l.split(';')) {
                let words: Vec<&str> = statement
                    .split(|c: char| c.is_whitespace() || c == ',' || c == '(' || c == ')')
                    .filter(|w| !w.is_empty())
                    .collect();
                match words.as_slice() {
                    ["import", modules @ ..] => {
                        for m in modules {
                            match m.strip_prefix("wrun_sdk") {
                                Some("") => needs.extend(ALL),
                                Some(sub) => needs.extend(sub.strip_prefix('.').and_then(need_of)),
                                None => {}
                            }
                        }
                    }
                    ["from", "wrun_sdk", "import", names @ ..] => {
                        if names.contains(&"*") {
                            needs.extend(ALL);
                        }
                        needs.extend(names.iter().filter_map(|n| need_of(n)));
                    }
                    ["from", module, "import", ..] => {
                        if let Some(sub) = module.strip_prefix("wrun_sdk.") {
                            needs.extend(need_of(sub.split('.').next().unwrap_or("")));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    Ok(ALL.into_iter().filter(|n| needs.contains(n)).collect())
}

/// Writes a copy of the WIT package under `work/wit` whose world
/// `step-trimmed` imports only what `needs` lists (`log` and `mask` need no
/// grant and are always there); returns the world's name. With every need,
/// the package's own `step` world is used.
fn trimmed_world(wit: &Path, work: &Path, needs: &[&str]) -> Result<String> {
    let out = work.join("wit");
    let mut stack = vec![(wit.to_path_buf(), out.clone())];
    while let Some((from, to)) = stack.pop() {
        std::fs::create_dir_all(&to).with_context(|| format!("creating {}", to.display()))?;
        for entry in
            std::fs::read_dir(&from).with_context(|| format!("reading {}", from.display()))?
        {
            let path = entry?.path();
            let target = to.join(path.file_name().unwrap_or_default());
            if path.is_dir() {
                stack.push((path, target));
            } else {
                std::fs::copy(&path, &target)
                    .with_context(|| format!("copying {}", path.display()))?;
            }
        }
    }
    if needs.len() == 3 {
        return Ok("step".into());
    }
    let recipe = out.join("recipe.wit");
    let mut text = std::fs::read_to_string(&recipe)
        .with_context(|| format!("reading {}", recipe.display()))?;
    // The `step` world's own lines, less the imports whose grant is not
    // needed, so the trimmed world follows the package's world.
    let granted = |line: &str| {
        let import = line.trim().strip_prefix("import ").unwrap_or("");
        let need = if import.starts_with("wasi:http/outgoing-handler") {
            "net"
        } else if import.starts_with("secrets;") {
            "secrets"
        } else if import.starts_with("properties;") {
            "env"
        } else {
            return true;
        };
        needs.contains(&need)
    };
    let body: Vec<&str> = text
        .split_once("\nworld step {\n")
        .and_then(|(_, rest)| rest.split_once("\n}"))
        .with_context(|| format!("{} has no `world step`", recipe.display()))?
        .0
        .lines()
        .filter(|line| granted(line))
        .collect();
    let trimmed = format!(
        "\n/// The `step` world trimmed to what one Python step uses.\nworld step-trimmed {{\n{}\n}}\n",
        body.join("\n")
    );
    text.push_str(&trimmed);
    std::fs::write(&recipe, text).with_context(|| format!("writing {}", recipe.display()))?;
    Ok("step-trimmed".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("wrun-scaffold-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    }

    fn needs_of(files: &[(&str, &str)]) -> Vec<&'static str> {
        let dir = scratch(&format!("needs-{}", files.len()));
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().expect("a parent")).expect("parent");
            std::fs::write(path, text).expect("write");
        }
        let needs = python_needs(&dir).expect("scan");
        let _ = std::fs::remove_dir_all(&dir);
        needs
    }

    #[test]
    fn python_needs_follow_the_import_forms() {
        assert!(needs_of(&[("step.py", "import json\nfrom wrun_sdk import log\n")]).is_empty());
        assert_eq!(
            needs_of(&[(
                "step.py",
                "from wrun_sdk import (\n  log,\n  http,  # client\n)\n"
            )]),
            ["net"]
        );
        assert_eq!(
            needs_of(&[("a/b.py", "import os; import wrun_sdk.secrets as s\n")]),
            ["secrets"]
        );
        assert_eq!(
            needs_of(&[("step.py", "from wrun_sdk.properties import get\n")]),
            ["env"]
        );
        assert_eq!(
            needs_of(&[("step.py", "import wrun_sdk\n")]),
            ["net", "secrets", "env"]
        );
        assert_eq!(
            needs_of(&[("step.py", "from wrun_sdk import *\n")]),
            ["net", "secrets", "env"]
        );
        // A comment or another package's module is not a use.
        assert!(
            needs_of(&[(
                "step.py",
                "# from wrun_sdk import http\nfrom mylib.http import x\n"
            )])
            .is_empty()
        );
    }

    #[test]
    fn the_trimmed_world_is_the_step_world_less_the_unneeded_imports() {
        let wit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let work = scratch("world");
        let world = trimmed_world(&wit, &work, &["secrets"]).expect("trimmed");
        assert_eq!(world, "step-trimmed");
        let text = std::fs::read_to_string(work.join("wit/recipe.wit")).expect("recipe.wit");
        let trimmed = text
            .split_once("world step-trimmed {")
            .expect("the trimmed world")
            .1;
        assert!(trimmed.contains("import secrets;"), "{trimmed}");
        assert!(trimmed.contains("import log;") && trimmed.contains("export actions;"));
        assert!(!trimmed.contains("outgoing-handler") && !trimmed.contains("properties"));
        let all = scratch("world-all");
        assert_eq!(
            trimmed_world(&wit, &all, &["net", "secrets", "env"]).expect("all"),
            "step"
        );
        let _ = std::fs::remove_dir_all(&work);
        let _ = std::fs::remove_dir_all(&all);
    }
}

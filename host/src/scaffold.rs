//! `wrun new` (a step crate and a recipe that uses it) and `wrun build`
//! (compile each step crate to a component where the manifest expects it).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};

use crate::bundle::read_manifest;

/// The guest SDK this binary was built with, for scaffolded crates.
fn sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("guests")
        .join("sdk")
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
pub(crate) fn new_recipe(name: &str, dir: &Path) -> Result<()> {
    ensure!(
        valid_name(name),
        "`{name}` is not a valid name: use 1 to 64 lowercase letters, digits and `-`"
    );
    ensure!(!dir.exists(), "{} already exists", dir.display());
    let sdk = sdk_path();
    let sdk = sdk.canonicalize().unwrap_or(sdk);
    let crate_dir = dir.join("steps").join(name);
    std::fs::create_dir_all(crate_dir.join("src"))
        .with_context(|| format!("creating {}", crate_dir.display()))?;
    let files = [
        (dir.join("recipe.toml"), RECIPE.replace("NAME", name)),
        (dir.join("input.json"), INPUT.to_string()),
        (dir.join(".gitignore"), "/target\n/components\n".to_string()),
        (
            crate_dir.join("Cargo.toml"),
            CARGO
                .replace("NAME", name)
                .replace("SDK", &sdk.display().to_string()),
        ),
        (crate_dir.join("src").join("lib.rs"), LIB.to_string()),
    ];
    for (path, text) in files {
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

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

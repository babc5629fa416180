//! Project tasks of wrun, run with `cargo xtask <task>` (an alias in
//! `.cargo/config.toml`):
//!
//! - `guests`: builds the guest components the tests and benchmarks run,
//!   once, outside any cargo build script: the Rust guest workspace for
//!   wasm32-wasip2 (into `<target>/guests`), the JavaScript guests with
//!   componentize-js from npm (into `<target>/guests/js`) and the Python
//!   guests with componentize-py from PyPI (into `guests/python/build`).
//!   Cargo's freshness check skips unchanged Rust guests; JavaScript and
//!   Python guests are rebuilt only when their sources are newer than the
//!   components.
//! - `test [ARGS]`: installs what a fresh Debian machine lacks (the
//!   wasm32-wasip2 target; node with npm, python3 with venv and the `kill`
//!   program through apt-get, as root), builds the guests, then runs
//!   `cargo test --workspace --locked ARGS`.
//!
//! No dependencies: this must build before anything else is installed.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::SystemTime;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("guests") => build_guests(),
        Some("test") => prerequisites()
            .and_then(|()| build_guests())
            .and_then(|()| test(&args[1..])),
        _ => Err("usage: cargo xtask guests | cargo xtask test [ARGS for cargo test]".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (this crate sits in `xtask/` below it).
fn root() -> PathBuf {
    // `cargo xtask` runs this binary with the manifest directory of the
    // checkout it was started from; the path compiled in is only a fallback
    // (a target directory shared by several checkouts may hold a binary
    // built in another one).
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest
        .parent()
        .map_or(manifest.clone(), Path::to_path_buf)
}

/// The workspace's target directory: `CARGO_TARGET_DIR`, else `target/`.
fn target_dir() -> PathBuf {
    let root = root();
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"))
}

/// Runs a command; the error says what failed.
fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot start {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// Whether a program runs (`--version` answers).
fn has(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Installs what the test suite needs and a fresh machine lacks.
fn prerequisites() -> Result<(), String> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("wasm32-wasip2"))
        .unwrap_or(false);
    if !installed {
        run(
            Command::new("rustup").args(["target", "add", "wasm32-wasip2"]),
            "adding the wasm32-wasip2 target (rustup target add wasm32-wasip2)",
        )?;
    }
    let mut missing: Vec<&str> = Vec::new();
    if !has("node", &["--version"]) || !has("npm", &["--version"]) {
        missing.extend(["nodejs", "npm"]);
    }
    if !has("python3", &["-c", "import venv, ensurepip"]) {
        missing.extend(["python3", "python3-venv"]);
    }
    // The daemon tests stop `wrun serve` with SIGTERM through `kill`.
    if !Path::new("/usr/bin/kill").exists() && !Path::new("/bin/kill").exists() {
        missing.push("procps");
    }
    if missing.is_empty() {
        return Ok(());
    }
    let root_user = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !root_user || !has("apt-get", &["--version"]) {
        return Err(format!(
            "the tests need these packages, which are missing: {} (install them, then run again)",
            missing.join(" ")
        ));
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    run(
        Command::new("apt-get").args(["update", "-qq"]),
        "apt-get update",
    )?;
    run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
        "apt-get install",
    )
}

/// `cargo test --workspace --locked` with the caller's arguments.
fn test(args: &[String]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(
        Command::new(cargo)
            .current_dir(root())
            .args(["test", "--workspace", "--locked"])
            .args(args),
        "the test suite",
    )
}

/// Builds every guest component.
fn build_guests() -> Result<(), String> {
    let target = target_dir().join("guests");
    build_rust(&target)?;
    build_js(&target)?;
    build_python()
}

/// The newest modification time of the files under `paths`.
fn newest(paths: &[PathBuf]) -> Option<SystemTime> {
    let mut newest = None;
    let mut stack: Vec<PathBuf> = paths.to_vec();
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if path
                .file_name()
                .is_some_and(|n| n == "node_modules" || n == "build" || n == ".venv")
            {
                continue;
            }
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.filter_map(Result::ok).map(|e| e.path()));
            }
        } else if let Ok(modified) = meta.modified() {
            newest = newest.max(Some(modified));
        }
    }
    newest
}

/// Whether every output exists and is newer than every input.
fn fresh(inputs: &[PathBuf], outputs: &[PathBuf]) -> bool {
    let Some(input) = newest(inputs) else {
        return false;
    };
    outputs.iter().all(|out| {
        std::fs::metadata(out)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t > input)
    })
}

fn build_rust(target: &Path) -> Result<(), String> {
    let guests = root().join("guests");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&guests)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            "wasm32-wasip2",
            "--workspace",
        ])
        .env("CARGO_TARGET_DIR", target);
    // Settings of an outer build must not leak into the guest build.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_PROFILE_RELEASE_DEBUG",
        "CARGO_LLVM_COV",
    ] {
        cmd.env_remove(var);
    }
    run(
        &mut cmd,
        "building the Rust guests (is the target installed? `rustup target add wasm32-wasip2`)",
    )?;
    let out = target.join("wasm32-wasip2").join("release");
    let count = std::fs::read_dir(&out)
        .map_err(|e| format!("no guest output in {}: {e}", out.display()))?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "wasm"))
        .count();
    if count == 0 {
        return Err(format!("no guest component was built in {}", out.display()));
    }
    Ok(())
}

fn build_js(target: &Path) -> Result<(), String> {
    let js = root().join("guests").join("js");
    let out = target.join("js");
    let components = [
        ("examples/fetch-record.js", "fetch-record"),
        ("fixtures/hostile.js", "hostile"),
        ("fixtures/noop.js", "noop"),
    ];
    let mut inputs: Vec<PathBuf> = [
        "sdk",
        "examples",
        "fixtures",
        "build.mjs",
        "package.json",
        "package-lock.json",
    ]
    .iter()
    .map(|e| js.join(e))
    .collect();
    inputs.push(root().join("wit"));
    let outputs: Vec<PathBuf> = components
        .iter()
        .map(|(_, name)| out.join(format!("{name}.wasm")))
        .collect();
    if fresh(&inputs, &outputs) {
        return Ok(());
    }
    if !js
        .join("node_modules")
        .join("@bytecodealliance")
        .join("componentize-js")
        .exists()
    {
        // `npm ci` trips over optional platform packages jco lists but never
        // published; `npm install --no-save` installs from the lock file
        // without rewriting it (a plain `npm install` adds the other
        // platforms' optional packages to it).
        run(
            Command::new("npm")
                .args(["install", "--no-save", "--no-audit", "--no-fund"])
                .current_dir(&js),
            "installing componentize-js (npm install in guests/js; is node with npm installed?)",
        )?;
    }
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    for ((entry, _), component) in components.iter().zip(&outputs) {
        run(
            Command::new("node")
                .arg("build.mjs")
                .arg(entry)
                .arg(component)
                .current_dir(&js),
            &format!("building the JavaScript guest {entry}"),
        )?;
    }
    Ok(())
}

fn build_python() -> Result<(), String> {
    let py = root().join("guests").join("python");
    let mut inputs: Vec<PathBuf> = [
        "sdk",
        "examples",
        "fixtures",
        "build.sh",
        "requirements.txt",
    ]
    .iter()
    .map(|e| py.join(e))
    .collect();
    inputs.push(root().join("wit"));
    let built = py.join("build");
    let outputs: Vec<PathBuf> = std::fs::read_dir(&built)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
                .collect()
        })
        .unwrap_or_default();
    if !outputs.is_empty() && fresh(&inputs, &outputs) {
        return Ok(());
    }
    run(
        Command::new("bash").arg("build.sh").current_dir(&py),
        "building the Python guests (guests/python/build.sh; is python3 with venv installed?)",
    )
}

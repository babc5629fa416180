//! Builds the guests for the build scripts of the `tests` and `benches`
//! crates (included with `#[path]`): the Rust guest workspace for
//! wasm32-wasip2, and for the tests also the JavaScript and Python guests.
//!
//! Guests are built with their own target directory (`target/guests`), so
//! the nested cargo does not wait on the outer build's lock, and cargo's own
//! freshness check means unchanged guests are not rebuilt.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds every Rust guest and tells rustc where the components are, through
/// the `WRUN_GUESTS` environment variable (read with `env!`).
#[allow(
    dead_code,
    reason = "each build script including this file uses one of `build` and `build_all`"
)]
pub(crate) fn build() {
    build_rust();
}

/// Builds the Rust guests, then the JavaScript guests (componentize-js from
/// npm, into `WRUN_GUESTS_JS`) and the Python guests (componentize-py from
/// PyPI, into `WRUN_GUESTS_PY`). Needs node with npm, and python3 with venv.
#[allow(
    dead_code,
    reason = "each build script including this file uses one of `build` and `build_all`"
)]
pub(crate) fn build_all() {
    let target = build_rust();
    let root = workspace_root();
    // The build scripts of several crates may run at once: one npm install
    // and one venv at a time.
    let lock_path = target.join("polyglot.lock");
    let lock = std::fs::File::create(&lock_path).expect("creating the guest build lock");
    lock.lock().expect("taking the guest build lock");
    build_js(&root, &target);
    build_python(&root);
    drop(lock);
}

fn workspace_root() -> PathBuf {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("crate sits in the workspace root")
        .to_path_buf()
}

/// Runs a command, failing the build with `what` when it does not succeed.
fn run(cmd: &mut Command, what: &str) {
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("{what}: cannot start {:?}: {e}", cmd.get_program()));
    assert!(status.success(), "{what} failed ({status})");
}

fn build_js(root: &Path, target: &Path) {
    let js = root.join("guests").join("js");
    for entry in [
        "sdk",
        "examples",
        "fixtures",
        "build.mjs",
        "package.json",
        "package-lock.json",
    ] {
        println!("cargo:rerun-if-changed={}", js.join(entry).display());
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
        );
    }
    let out = target.join("js");
    std::fs::create_dir_all(&out).expect("creating the JavaScript output directory");
    for (entry, name) in [
        ("examples/fetch-record.js", "fetch-record"),
        ("fixtures/hostile.js", "hostile"),
        ("fixtures/noop.js", "noop"),
    ] {
        run(
            Command::new("node")
                .arg("build.mjs")
                .arg(entry)
                .arg(out.join(format!("{name}.wasm")))
                .current_dir(&js),
            &format!("building the JavaScript guest {entry}"),
        );
    }
    println!("cargo:rustc-env=WRUN_GUESTS_JS={}", out.display());
}

fn build_python(root: &Path) {
    let py = root.join("guests").join("python");
    for entry in [
        "sdk",
        "examples",
        "fixtures",
        "build.sh",
        "requirements.txt",
    ] {
        println!("cargo:rerun-if-changed={}", py.join(entry).display());
    }
    run(
        Command::new("bash").arg("build.sh").current_dir(&py),
        "building the Python guests (guests/python/build.sh; is python3 with venv installed?)",
    );
    println!(
        "cargo:rustc-env=WRUN_GUESTS_PY={}",
        py.join("build").display()
    );
}

fn build_rust() -> PathBuf {
    let root = workspace_root();
    let guests = root.join("guests");
    // The guests get their own directory inside the outer target directory.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|t| if t.is_absolute() { t } else { root.join(t) })
        .unwrap_or_else(|| root.join("target"))
        .join("guests");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");
    for dir in ["sdk", "examples", "fixtures", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", guests.join(dir).display());
    }
    println!("cargo:rerun-if-changed={}", root.join("wit").display());

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
        .env("CARGO_TARGET_DIR", &target);
    // Settings of the outer build must not leak into the guest build.
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
    let status = cmd
        .status()
        .expect("cargo can be started to build the guests");
    if !status.success() {
        panic!(
            "building the guests failed ({status}); is the target installed? run `rustup target add wasm32-wasip2`"
        );
    }
    let out = target.join("wasm32-wasip2").join("release");
    check_components(&out);
    println!("cargo:rustc-env=WRUN_GUESTS={}", out.display());
    target
}

fn check_components(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        panic!("no guest output in {}", dir.display());
    };
    let count = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "wasm"))
        .count();
    assert!(
        count > 0,
        "no guest component was built in {}",
        dir.display()
    );
}

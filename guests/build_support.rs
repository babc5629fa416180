//! Builds the guest workspace for wasm32-wasip2, for the build scripts of
//! the `tests` and `benches` crates (included with `#[path]`).
//!
//! Guests are built with their own target directory (`target/guests`), so
//! the nested cargo does not wait on the outer build's lock, and cargo's own
//! freshness check means unchanged guests are not rebuilt.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Builds every guest and tells rustc where the components are, through the
/// `WRUN_GUESTS` environment variable (read with `env!`).
pub(crate) fn build() {
    let manifest =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .expect("crate sits in the workspace root")
        .to_path_buf();
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

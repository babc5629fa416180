//! The guest SDKs' own unit tests, run as part of the test command: the
//! Rust SDK (`guests/sdk`, its own workspace, so not reached by
//! `cargo test --workspace`) on the host target, and the Python SDK's
//! `unittest` suite on the host's CPython.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository's `guests/` directory.
fn guests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("guests")
}

/// Runs a command; returns its stdout and stderr together, after checking
/// that it succeeded.
fn run(cmd: &mut Command, what: &str) -> String {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    assert!(status.success(), "{what} failed ({status}):\n{text}");
    text
}

/// The number in `text` right before `suffix` on the line starting with
/// `prefix`, summed over every such line.
fn count(text: &str, prefix: &str, suffix: &str) -> usize {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(prefix))
        .filter_map(|rest| {
            let at = rest.find(suffix)?;
            rest[..at].trim().rsplit(' ').next()?.parse::<usize>().ok()
        })
        .sum()
}

#[test]
fn the_rust_guest_sdk_unit_tests_pass() {
    // Its own target directory inside this build's, so the outer build's
    // lock is not needed.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest-sdk");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(guests())
        .args(["test", "--locked", "-p", "wrun-sdk", "--lib"])
        .env("CARGO_TARGET_DIR", &target);
    for var in ["CARGO_BUILD_TARGET", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    let text = run(&mut cmd, "cargo test -p wrun-sdk");
    let passed = count(&text, "test result: ok.", "passed");
    assert!(passed >= 10, "too few SDK tests ran ({passed}):\n{text}");
}

#[test]
fn the_python_guest_sdk_unit_tests_pass() {
    let text = run(
        Command::new("bash")
            .arg("build.sh")
            .arg("unit")
            .current_dir(guests().join("python")),
        "guests/python/build.sh unit",
    );
    let ran = count(&text, "Ran", "test");
    assert!(ran >= 10, "too few Python SDK tests ran ({ran}):\n{text}");
    assert!(text.lines().any(|l| l.trim() == "OK"), "{text}");
}

//! An installed `wrun`, as someone who ran `cargo install` has it: built
//! from a copy of the repository that is deleted before the binary is used,
//! so nothing of a checkout is left to find. In an empty directory it
//! scaffolds, builds and runs a step in each language.
//!
//! Its own test binary, so the install (which compiles `wrun` again, from
//! another path) does not share the two cores with other tests.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use wrun_tests::{GREET_STEPS, greet_project};

/// The repository this test was built from.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}:\n{}", text(&out));
    out
}

/// Copies the repository's tracked files (what a clone or a published
/// crate has: no build output, no installed toolchains) to `to`.
fn copy_checkout(to: &Path) {
    let listed = ok(Command::new("git").current_dir(repo()).args([
        "ls-files",
        "-z",
        "--cached",
        "--others",
        "--exclude-standard",
    ]));
    for name in listed.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = std::str::from_utf8(name).unwrap();
        let from = repo().join(name);
        let dest = to.join(name);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let meta = std::fs::symlink_metadata(&from);
        match meta {
            Ok(m) if m.file_type().is_symlink() => {
                std::os::unix::fs::symlink(std::fs::read_link(&from).unwrap(), &dest).unwrap();
            }
            Ok(_) => {
                std::fs::copy(&from, &dest).unwrap();
            }
            // Listed but deleted in the working tree.
            Err(_) => {}
        }
    }
}

/// The environment of someone with the toolchains on their `PATH` and no
/// repository: nothing that cargo sets for tests, and none of wrun's
/// variables but its home.
fn clean<'a>(cmd: &'a mut Command, home: &Path) -> &'a mut Command {
    cmd.env_clear();
    for var in [
        "PATH",
        "HOME",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
        "TMPDIR",
        "LANG",
    ] {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    cmd.env("WRUN_HOME", home).env("NO_COLOR", "1")
}

#[test]
fn an_installed_wrun_scaffolds_builds_and_runs_steps_without_the_checkout() {
    // Kept between runs, like any cargo target directory, so a second run
    // compiles only wrun's own crates again.
    let scratch = wrun_tests::target_dir().join("installed-wrun");
    let checkout = scratch.join("checkout");
    let root = scratch.join("root");
    let _ = std::fs::remove_dir_all(&checkout);
    let _ = std::fs::remove_dir_all(&root);
    copy_checkout(&checkout);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    ok(Command::new(&cargo)
        .current_dir(&checkout)
        .env("CARGO_TARGET_DIR", scratch.join("target"))
        // No debug information: the binary links in seconds, not minutes.
        .env("CARGO_PROFILE_DEV_DEBUG", "false")
        .args(["install", "--debug", "--locked", "--offline", "--quiet"])
        .args(["--path", "host", "--root"])
        .arg(&root));
    std::fs::remove_dir_all(&checkout).unwrap();
    let wrun = root.join("bin").join("wrun");
    assert!(wrun.is_file(), "{}", wrun.display());

    let work = std::env::temp_dir().join(format!("wrun-installed-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&work).unwrap();
    let home = wrun_tests::wrun_home();
    let run = |args: &[&str], dir: &Path| {
        let mut cmd = Command::new(&wrun);
        clean(&mut cmd, &home)
            .current_dir(dir)
            .env("WRUN_DB", work.join("wrun.db"))
            .env("WRUN_KEY_FILE", work.join("master.key"))
            .env("WRUN_CACHE_DIR", work.join("cache"))
            // The Rust step's own build, kept between runs.
            .env("CARGO_TARGET_DIR", scratch.join("steps"))
            .args(args);
        ok(&mut cmd)
    };
    run(&["key", "init"], &work);
    for (lang, _, _) in GREET_STEPS {
        let name = format!("greet-{lang}");
        run(&["new", &name, "--lang", lang], &work);
        let dir = work.join(&name);
        greet_project(&dir, &name, lang);
        run(&["build", "recipe.toml"], &dir);
        run(&["check", "recipe.toml"], &dir);
        let out = run(
            &["run", "recipe.toml", "--input", "input.json", "--json"],
            &dir,
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            report["steps"][0]["output"]["hello"], "Ada",
            "{lang}: {report}"
        );
        let logged = report["steps"][0]["events"].to_string();
        assert!(logged.contains("greeting"), "{lang}: {report}");
    }
    let _ = std::fs::remove_dir_all(&work);
}

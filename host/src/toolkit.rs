//! The author toolkit that travels inside the `wrun` binary: the guest
//! SDKs (Rust, JavaScript, Python), the WIT package and the JavaScript build
//! script, so `wrun new` and `wrun build` work from an installed binary on a
//! machine without the repository.
//!
//! On first use the files are written to
//! `$WRUN_HOME/toolkit/<version>-<digest>/` (`WRUN_HOME` defaults to
//! `$XDG_DATA_HOME/wrun`, then `~/.local/share/wrun`), in the repository's
//! layout so the relative paths inside them hold. The digest
//! covers every file, so a binary with other SDKs never uses a stale copy;
//! the directory is written under a temporary name and renamed, so a
//! half-written toolkit is never used. The language toolchains
//! (componentize-js from npm, componentize-py from PyPI, at the versions
//! pinned here) are installed into it on the first build that needs them.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};

/// Embeds files of the repository by their path from its root.
macro_rules! embedded {
    ($($path:literal,)*) => {
        &[$(($path, include_str!(concat!("../../", $path))),)*]
    };
}

/// Every file of the toolkit, by its path in the repository, verbatim.
const FILES: &[(&str, &str)] = embedded!(
    "guests/js/sdk/imports.js",
    "guests/js/sdk/wrun.js",
    "guests/js/build.mjs",
    "guests/js/package.json",
    "guests/js/package-lock.json",
    "guests/python/requirements.txt",
    "guests/python/sdk/wrun_sdk/__init__.py",
    "guests/python/sdk/wrun_sdk/_actions.py",
    "guests/python/sdk/wrun_sdk/_prepare.py",
    "guests/python/sdk/wrun_sdk/errors.py",
    "guests/python/sdk/wrun_sdk/http.py",
    "guests/python/sdk/wrun_sdk/log.py",
    "guests/python/sdk/wrun_sdk/mask.py",
    "guests/python/sdk/wrun_sdk/properties.py",
    "guests/python/sdk/wrun_sdk/secrets.py",
    "guests/sdk/src/error.rs",
    "guests/sdk/src/http.rs",
    "guests/sdk/src/lib.rs",
    "guests/sdk/src/log.rs",
    "guests/sdk/src/mask.rs",
    "guests/sdk/src/properties.rs",
    "guests/sdk/src/secrets.rs",
    "wit/deps/cli.wit",
    "wit/deps/clocks.wit",
    "wit/deps/filesystem.wit",
    "wit/deps/http.wit",
    "wit/deps/io.wit",
    "wit/deps/random.wit",
    "wit/deps/sockets.wit",
    "wit/recipe.wit",
);

/// The Rust SDK's manifest inherits from the guests' workspace; the toolkit
/// writes it standalone, with the workspace's values filled in.
const SDK_MANIFEST: &str = include_str!("../../guests/sdk/Cargo.toml");
/// The guests' workspace manifest: where the inherited values come from.
const GUESTS_WORKSPACE: &str = include_str!("../../guests/Cargo.toml");

/// The Rust SDK crate's directory in a toolkit.
pub(crate) const RUST_SDK: &str = "guests/sdk";
/// The JavaScript SDK and build script's directory in a toolkit.
pub(crate) const JS: &str = "guests/js";
/// The Python SDK's directory in a toolkit.
pub(crate) const PYTHON: &str = "guests/python";
/// The WIT package's directory in a toolkit.
pub(crate) const WIT: &str = "wit";

/// Where wrun keeps its per-user files.
fn home() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("WRUN_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("wrun"));
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".local/share/wrun")),
        None => bail!("cannot place wrun's toolkit: set WRUN_HOME (or HOME)"),
    }
}

/// The files to write: the embedded ones, the WIT package again inside the
/// Rust SDK crate (which carries it, as a published crate must; in the
/// repository `guests/sdk/wit` is a link to `wit`) and the standalone SDK
/// manifest.
fn contents() -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = FILES
        .iter()
        .map(|(p, t)| (p.to_string(), t.to_string()))
        .collect();
    for (path, text) in FILES {
        if path.starts_with("wit/") {
            all.push((format!("{RUST_SDK}/{path}"), text.to_string()));
        }
    }
    all.push((format!("{RUST_SDK}/Cargo.toml"), standalone_manifest()));
    all
}

/// A digest of every path and text of the toolkit.
fn digest(files: &[(String, String)]) -> String {
    let mut all = Vec::new();
    for (path, text) in files {
        all.extend_from_slice(path.as_bytes());
        all.push(0);
        all.extend_from_slice(&text.len().to_le_bytes());
        all.extend_from_slice(text.as_bytes());
    }
    let mut hex = wrun_store::sha256_hex(&all);
    hex.truncate(12);
    hex
}

/// The toolkit's directory, written on first use.
///
/// # Errors
///
/// No place for it, or an I/O error writing it.
pub(crate) fn root() -> Result<PathBuf> {
    root_in(&home()?)
}

/// The toolkit's directory under `home`, written on first use.
fn root_in(home: &Path) -> Result<PathBuf> {
    let files = contents();
    let dir =
        home.join("toolkit")
            .join(format!("{}-{}", env!("CARGO_PKG_VERSION"), digest(&files)));
    if dir.join(".complete").exists() {
        return Ok(dir);
    }
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let staging = parent.join(format!(".staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    for (path, text) in &files {
        let file = staging.join(path);
        if let Some(up) = file.parent() {
            std::fs::create_dir_all(up).with_context(|| format!("creating {}", up.display()))?;
        }
        std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    }
    std::fs::write(staging.join(".complete"), "")
        .with_context(|| format!("writing {}", staging.display()))?;
    match std::fs::rename(&staging, &dir) {
        Ok(()) => Ok(dir),
        // Another wrun wrote it meanwhile: theirs is as good as ours.
        Err(_) if dir.join(".complete").exists() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(dir)
        }
        Err(e) => Err(e).with_context(|| format!("writing the toolkit to {}", dir.display())),
    }
}

/// Runs `install` once for `marker`: unless the marker file exists, under
/// [`exclusive`]; the marker is written only when `install` succeeds, so a
/// failed or interrupted install runs again next time.
///
/// # Errors
///
/// The install's error, or an I/O error on the lock or marker.
pub(crate) fn install_once(marker: &Path, install: impl FnOnce() -> Result<()>) -> Result<()> {
    if marker.exists() {
        return Ok(());
    }
    exclusive(&marker.with_extension("lock"), || {
        if marker.exists() {
            return Ok(());
        }
        install()?;
        std::fs::write(marker, "").with_context(|| format!("writing {}", marker.display()))
    })
}

/// Runs `f` while holding `lock`, a directory other `wrun` processes wait
/// for (one left by a killed process is taken over after ten minutes).
///
/// # Errors
///
/// `f`'s error, or an I/O error on the lock.
pub(crate) fn exclusive<T>(lock: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let parent = lock.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    loop {
        match std::fs::create_dir(lock) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let stale = std::fs::metadata(lock)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(600));
                if stale {
                    let _ = std::fs::remove_dir(lock);
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("locking {}", lock.display()));
            }
        }
    }
    let result = f();
    let _ = std::fs::remove_dir(lock);
    result
}

/// The SDK's manifest with `x.workspace = true` replaced by the guests'
/// workspace value of `x`, and without the workspace's lint table.
fn standalone_manifest() -> String {
    let inherited = |section: &str, key: &str| -> Option<String> {
        let mut inside = false;
        for line in GUESTS_WORKSPACE.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                inside = line == section;
            } else if inside
                && let Some((k, v)) = line.split_once('=')
                && k.trim() == key
            {
                return Some(v.trim().to_string());
            }
        }
        None
    };
    let mut out = String::new();
    let mut section = String::new();
    for line in SDK_MANIFEST.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            section = trimmed.to_string();
            if section == "[lints]" {
                continue;
            }
        } else if section == "[lints]" {
            continue;
        }
        let replaced = trimmed.strip_suffix(".workspace = true").and_then(|key| {
            let from = if section == "[dependencies]" {
                "[workspace.dependencies]"
            } else {
                "[workspace.package]"
            };
            inherited(from, key).map(|v| format!("{key} = {v}"))
        });
        out.push_str(replaced.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out.push_str("\n# A standalone crate, even inside another workspace.\n[workspace]\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sdk_manifest_stands_alone() {
        let text = standalone_manifest();
        assert!(!text.contains(".workspace"), "{text}");
        assert!(!text.contains("[lints]"), "{text}");
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(parsed["package"]["name"].as_str(), Some("wrun-sdk"));
        assert_eq!(parsed["package"]["edition"].as_str(), Some("2024"));
        let deps = parsed["dependencies"].as_table().unwrap();
        for dep in ["wit-bindgen", "wasip2", "serde", "serde_json"] {
            assert!(deps.contains_key(dep), "{dep}: {text}");
        }
        assert_eq!(
            deps["wit-bindgen"]["default-features"].as_bool(),
            Some(false)
        );
    }

    #[test]
    fn the_toolkit_is_written_once_whole_and_named_by_its_contents() {
        let home = std::env::temp_dir().join(format!(
            "wrun-toolkit-test-{}-{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        let dir = root_in(&home).unwrap();
        assert!(dir.starts_with(&home));
        for (path, _) in FILES {
            assert!(dir.join(path).is_file(), "{path}");
        }
        assert!(dir.join("guests/sdk/Cargo.toml").is_file());
        // The repository's relative layout holds: ../../wit from the SDKs.
        assert!(dir.join(RUST_SDK).join("../../wit/recipe.wit").is_file());
        assert!(dir.join(JS).join("../../wit/recipe.wit").is_file());
        // The Rust SDK crate carries the WIT package itself, the same text.
        assert_eq!(
            std::fs::read_to_string(dir.join(RUST_SDK).join("wit/recipe.wit")).unwrap(),
            std::fs::read_to_string(dir.join(WIT).join("recipe.wit")).unwrap()
        );
        let again = root_in(&home).unwrap();
        assert_eq!(dir, again);
        let other = digest(&[("x".to_string(), "y".to_string())]);
        assert_ne!(
            dir.file_name().unwrap().to_string_lossy(),
            format!("{}-{other}", env!("CARGO_PKG_VERSION"))
        );
        std::fs::remove_dir_all(&home).unwrap();
    }
}

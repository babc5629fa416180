//! Recipe bundles: one file that carries a recipe to another workspace or
//! machine without a single credential.
//!
//! A bundle is a gzip-compressed tar archive with exactly these entries:
//!
//! - `wrun-lock.json`: format version, recipe name, the SHA-256 of the
//!   manifest and of every component, the bundle's version, and the *names*
//!   of the connections and properties the recipe needs (see [`Lock`]);
//! - `wrun-lock.sig` (when signed, `wrun export --sign KEY`): the author's
//!   ed25519 signature of the lock's exact bytes (see [`crate::signing`]);
//! - `recipe.toml`: the manifest, with component paths rewritten to
//!   `components/…` and `build` entries dropped;
//! - `components/<step>.wasm`: one component per step.
//!
//! No connection value, placeholder or property value is ever written: the
//! manifest only holds names. Import verifies every hash and refuses any
//! other entry (no path traversal), then writes the recipe into a fresh
//! directory through a temporary one, so a failed import leaves nothing.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};

use wrun_runtime::manifest::Manifest;

/// Bundle format written by this version. Format 1 (no manifest hash, no
/// version, never signed) is still read.
pub const FORMAT: u32 = 2;
/// The signature entry of a signed bundle.
pub const SIGNATURE_ENTRY: &str = "wrun-lock.sig";
/// The lock entry.
pub const LOCK_ENTRY: &str = "wrun-lock.json";
/// Largest bundle entry read on import.
const MAX_ENTRY: u64 = 64 << 20;
/// Largest total size of all entries read on import.
const MAX_TOTAL: u64 = 512 << 20;

/// The lock of a bundle (or of an imported recipe directory).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// The lock format's version (1).
    pub format: u32,
    /// The recipe's name.
    pub recipe: String,
    /// `components/<step>.wasm` -> lowercase hex SHA-256.
    pub components: BTreeMap<String, String>,
    /// Connection names the recipe needs bound.
    pub connections: Vec<String>,
    /// Property names the recipe needs set.
    pub properties: Vec<String>,
    /// Lowercase hex SHA-256 of `recipe.toml` (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// The bundle's version (format 2): the author's `--version`, else the
    /// export time in milliseconds. A signed version lower than the one
    /// deployed is a downgrade and is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

/// Lowercase hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    wrun_store::sha256_hex(bytes)
}

/// Reads and validates a manifest file.
pub fn read_manifest(path: &Path) -> Result<Manifest> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading recipe {}", path.display()))?;
    Manifest::parse(&text)
        .map_err(|errors| anyhow::anyhow!("{}: invalid recipe:\n{errors}", path.display()))
}

/// Writes `recipe` (a manifest file) and its components to a bundle at
/// `out`, with `version` (default: now, in milliseconds), signed with
/// `sign` when given.
///
/// # Errors
///
/// An invalid manifest, a component that cannot be read (not built yet), or
/// an I/O error writing `out` (which is then left untouched).
pub fn export(
    recipe: &Path,
    out: &Path,
    version: Option<u64>,
    sign: Option<&crate::signing::AuthorKey>,
) -> Result<Lock> {
    let mut manifest = read_manifest(recipe)?;
    let base = recipe.parent().unwrap_or(Path::new("."));
    let mut components = BTreeMap::new();
    let mut blobs = Vec::new();
    for step in &mut manifest.steps {
        let source = base.join(&step.component);
        let bytes = std::fs::read(&source).with_context(|| {
            format!(
                "step `{}`: reading component {} (run `wrun build` first)",
                step.name,
                source.display()
            )
        })?;
        let entry = format!("components/{}.wasm", step.name);
        components.insert(entry.clone(), sha256_hex(&bytes));
        blobs.push((entry.clone(), bytes));
        step.component = PathBuf::from(entry);
        step.build = None;
    }
    let manifest_text = manifest.to_toml().context("serialising the manifest")?;
    let version = version
        .unwrap_or_else(|| u64::try_from(wrun_store::UnixMillis::now().0).unwrap_or_default());
    let lock = Lock {
        format: FORMAT,
        recipe: manifest.recipe.name.clone(),
        components,
        connections: manifest.connections().into_iter().collect(),
        properties: manifest.properties().into_iter().collect(),
        manifest: Some(sha256_hex(manifest_text.as_bytes())),
        version: Some(version),
    };
    let lock_text = serde_json::to_vec_pretty(&lock)?;
    let signature = sign
        .map(|key| serde_json::to_vec_pretty(&key.sign(&lock_text)))
        .transpose()?;

    // Write next to the destination, then rename: no partial bundle.
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    {
        let gz = flate2::write::GzEncoder::new(tmp.as_file(), flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        let mut add = |name: &str, data: &[u8]| -> Result<()> {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_cksum();
            tar.append_data(&mut header, name, data)
                .with_context(|| format!("writing {name} into the bundle"))
        };
        add(LOCK_ENTRY, &lock_text)?;
        if let Some(signature) = &signature {
            add(SIGNATURE_ENTRY, signature)?;
        }
        add("recipe.toml", manifest_text.as_bytes())?;
        for (name, bytes) in &blobs {
            add(name, bytes)?;
        }
        tar.into_inner()?.finish()?;
    }
    tmp.persist(out)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(lock)
}

/// Reads a bundle, verifies it, and writes it as a recipe directory `into`
/// (which must not exist yet). Returns the manifest and the lock.
///
/// # Errors
///
/// Not a bundle, an unknown format, an entry that is not expected, a hash
/// mismatch, a component the manifest names but the bundle lacks (or the
/// reverse), an invalid manifest, or `into` already existing.
pub fn import(bundle: &Path, into: &Path) -> Result<(Manifest, Lock)> {
    ensure!(
        !into.exists(),
        "{} already exists; choose another directory with --into",
        into.display()
    );
    let file = std::fs::File::open(bundle)
        .with_context(|| format!("opening bundle {}", bundle.display()))?;
    let (manifest, lock, entries) = read(file, &bundle.display().to_string())?;

    // Write into a temporary sibling, then rename into place.
    let parent = into
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(".wrun-import-")
        .tempdir_in(parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    std::fs::create_dir(tmp.path().join("components"))?;
    for (name, bytes) in &entries {
        std::fs::write(tmp.path().join(name), bytes).with_context(|| format!("writing {name}"))?;
    }
    let tmp_path = tmp.keep();
    std::fs::rename(&tmp_path, into)
        .with_context(|| format!("moving the recipe into {}", into.display()))?;
    Ok((manifest, lock))
}

/// Checks the components of a recipe directory against its `wrun-lock.json`,
/// when it has one (an imported recipe). Returns whether a lock was found.
///
/// # Errors
///
/// A component that is missing or does not match its hash.
pub fn verify_dir(recipe: &Path) -> Result<bool> {
    let base = recipe.parent().unwrap_or(Path::new("."));
    let lock_path = base.join("wrun-lock.json");
    if !lock_path.exists() {
        return Ok(false);
    }
    let lock: Lock = serde_json::from_slice(&std::fs::read(&lock_path)?)
        .with_context(|| format!("{} is invalid", lock_path.display()))?;
    for (name, hash) in &lock.components {
        let bytes = std::fs::read(base.join(name)).with_context(|| format!("reading {name}"))?;
        ensure!(
            &sha256_hex(&bytes) == hash,
            "{name} does not match {} (it was changed after import)",
            lock_path.display()
        );
    }
    Ok(true)
}

/// A bundle read into memory and verified: the manifest, the lock, and
/// every entry by name (`recipe.toml`, `wrun-lock.json`,
/// `components/<step>.wasm`).
pub type BundleContents = (Manifest, Lock, BTreeMap<String, Vec<u8>>);

/// Reads a bundle from `source` (named `shown` in errors) and verifies it:
/// only expected entries, sizes bounded, the lock's format and hashes, and a
/// component for every step.
///
/// # Errors
///
/// As [`import`], without the directory.
pub fn read(source: impl Read, shown: &str) -> Result<BundleContents> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(source));
    let mut entries: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut total = 0u64;
    for entry in archive
        .entries()
        .with_context(|| format!("{} is not a wrun bundle", shown))?
    {
        let mut entry = entry.with_context(|| format!("{} is not a valid wrun bundle", shown))?;
        let name = entry.path()?.to_string_lossy().into_owned();
        let allowed = name == LOCK_ENTRY
            || name == SIGNATURE_ENTRY
            || name == "recipe.toml"
            || name
                .strip_prefix("components/")
                .and_then(|f| f.strip_suffix(".wasm"))
                .is_some_and(|stem| {
                    !stem.is_empty()
                        && stem
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
        ensure!(
            allowed,
            "the bundle holds an unexpected entry `{name}`; refusing it"
        );
        ensure!(
            entry.header().entry_type().is_file(),
            "bundle entry `{name}` is not a regular file"
        );
        let size = entry.size();
        ensure!(
            size <= MAX_ENTRY,
            "bundle entry `{name}` is too large ({size} bytes)"
        );
        total += size;
        ensure!(
            total <= MAX_TOTAL,
            "the bundle is larger than {MAX_TOTAL} bytes"
        );
        let mut data = Vec::with_capacity(size as usize);
        entry.by_ref().take(MAX_ENTRY).read_to_end(&mut data)?;
        ensure!(
            entries.insert(name.clone(), data).is_none(),
            "bundle entry `{name}` appears twice"
        );
    }
    let lock: Lock = serde_json::from_slice(
        entries
            .get("wrun-lock.json")
            .context("the bundle has no wrun-lock.json")?,
    )
    .context("the bundle's wrun-lock.json is invalid")?;
    ensure!(
        lock.format == 1 || lock.format == FORMAT,
        "bundle format {} is not supported by this wrun (it reads formats 1 to {FORMAT})",
        lock.format
    );
    let manifest_bytes = entries
        .get("recipe.toml")
        .context("the bundle has no recipe.toml")?;
    match (&lock.manifest, lock.format) {
        (Some(hash), _) => {
            let actual = sha256_hex(manifest_bytes);
            ensure!(
                &actual == hash,
                "recipe.toml does not match the lock (sha256 {actual}, expected {hash}): the bundle was altered"
            );
        }
        (None, 1) => ensure!(
            !entries.contains_key(SIGNATURE_ENTRY),
            "a format 1 bundle cannot be signed (its lock does not cover the manifest)"
        ),
        (None, _) => bail!("the bundle's lock has no manifest hash"),
    }
    let text =
        std::str::from_utf8(manifest_bytes).context("the bundle's recipe.toml is not UTF-8")?;
    let manifest = Manifest::parse(text)
        .map_err(|e| anyhow::anyhow!("the bundle's recipe.toml is invalid:\n{e}"))?;
    for step in &manifest.steps {
        let name = step.component.to_string_lossy();
        ensure!(
            lock.components.contains_key(name.as_ref()),
            "step `{}` names component `{name}`, which the lock does not list",
            step.name
        );
    }
    for (name, hash) in &lock.components {
        let bytes = entries.get(name).with_context(|| {
            format!("the lock lists `{name}` but the bundle does not contain it")
        })?;
        let actual = sha256_hex(bytes);
        if &actual != hash {
            bail!(
                "`{name}` does not match the lock (sha256 {actual}, expected {hash}): the bundle was altered"
            );
        }
    }
    let component_entries = entries
        .keys()
        .filter(|k| k.starts_with("components/"))
        .count();
    ensure!(
        component_entries == lock.components.len(),
        "the bundle holds components the lock does not list"
    );

    Ok((manifest, lock, entries))
}

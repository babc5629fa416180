//! The master key, the per-workspace data keys, and the encryption of
//! connection values at rest.
//!
//! Keys form two levels:
//!
//! - The **master key** (32 random bytes) is supplied by the operator from a
//!   file or an environment variable, never from the database. Its text form
//!   is the standard base64 of the 32 bytes. The database records only its
//!   [fingerprint](MasterKey::fingerprint), so a wrong key is refused before
//!   anything is decrypted or written.
//! - Each workspace has a **data key** (32 random bytes) stored *wrapped*:
//!   encrypted with the master key, bound to the workspace name. Rotating the
//!   master key re-wraps the data keys and leaves the values untouched.
//!
//! Connection values are sealed with the workspace data key.
//!
//! # Formats
//!
//! Both wrapped data keys and sealed values are AES-256-GCM with a fresh
//! random 96-bit nonce per encryption, laid out as
//!
//! ```text
//! version (1 byte, 0x01) | nonce (12 bytes) | ciphertext | tag (16 bytes)
//! ```
//!
//! The version byte lets a later format be told apart from this one. The
//! associated data of a wrapped key is `b"wrun:dk:v1:" + workspace`, so a
//! wrapped key copied to another workspace fails to unwrap; the associated
//! data of a sealed value is chosen by the caller (see `store_sqlite`).
//!
//! Random nonces are safe here: a data key encrypts one value per connection
//! write, far below the 2^32 encryptions per key that random 96-bit GCM
//! nonces allow.
//!
//! # Secrets in memory and in messages
//!
//! Key bytes live in heap boxes that are zeroed on drop, decrypted plaintext
//! is returned as [`Zeroizing`] buffers, and no `Debug` output or error
//! message contains key material or plaintext: a [`MasterKey`] prints only
//! its fingerprint and a [`DataKey`] prints nothing.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore as _;
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Length in bytes of a master key and of a data key.
pub const KEY_LEN: usize = 32;

/// Length in bytes of an AES-GCM nonce.
const NONCE_LEN: usize = 12;

/// Length in bytes of an AES-GCM authentication tag.
const TAG_LEN: usize = 16;

/// The version byte that starts every wrapped key and sealed value.
const FORMAT_V1: u8 = 1;

/// The shortest well-formed wrapped key or sealed value (empty plaintext).
const MIN_SEALED_LEN: usize = 1 + NONCE_LEN + TAG_LEN;

/// Associated-data prefix of a wrapped data key; the workspace name follows.
const DATA_KEY_AAD_PREFIX: &[u8] = b"wrun:dk:v1:";

/// Domain-separation prefix hashed before the key to compute a fingerprint.
const FINGERPRINT_DOMAIN: &[u8] = b"wrun:master-key-fingerprint:v1\0";

/// A key file larger than this cannot hold a master key and is not read.
const MAX_KEY_FILE_LEN: u64 = 4096;

/// Why a key could not be loaded, written, or used.
///
/// No variant carries key material or plaintext: the messages say what is
/// wrong and where (a path, an environment variable name), never the value.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file does not exist.
    #[error("no master key file at {}", path.display())]
    MissingFile {
        /// The path that was looked up.
        path: PathBuf,
    },
    /// The key file exists but cannot be read.
    #[error("cannot read the master key file {}: {source}", path.display())]
    Unreadable {
        /// The key file.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// The key file can be read by other users.
    #[error(
        "the master key file {} can be read by other users (mode {mode:03o}); \
         restrict it with `chmod 600 {}`",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The key file is too large to hold a master key.
    #[error("the master key file {} is {len} bytes, too large to hold a master key", path.display())]
    FileTooLarge {
        /// The key file.
        path: PathBuf,
        /// Its size in bytes.
        len: u64,
    },
    /// The named environment variable is not set.
    #[error("the environment variable {var} that should hold the master key is not set")]
    EnvMissing {
        /// The variable's name.
        var: String,
    },
    /// The key text is empty or only whitespace.
    #[error("the master key in {origin} is empty")]
    Empty {
        /// Where the key was read from ("file PATH", "environment variable X").
        origin: String,
    },
    /// The key text is not standard base64.
    #[error(
        "the master key in {origin} is not standard base64 text (expected 44 characters such as `wrun key init` writes)"
    )]
    NotBase64 {
        /// Where the key was read from.
        origin: String,
    },
    /// The key text decodes to the wrong number of bytes.
    #[error("the master key in {origin} decodes to {len} bytes; a master key is {KEY_LEN} bytes")]
    WrongLength {
        /// Where the key was read from.
        origin: String,
        /// The decoded length.
        len: usize,
    },
    /// `write_key_file` was asked to write over an existing file.
    #[error("{} already exists; refusing to overwrite a key file (move it away or choose another path)", path.display())]
    FileExists {
        /// The path that exists.
        path: PathBuf,
    },
    /// Writing a new key file failed.
    #[error("cannot write the master key file {}: {source}", path.display())]
    Write {
        /// The key file.
        path: PathBuf,
        /// The operating system's reason.
        source: io::Error,
    },
    /// Encrypted data is too short or starts with an unknown version byte.
    #[error("encrypted data is malformed: {reason}")]
    Malformed {
        /// What is wrong with it (never its content).
        reason: &'static str,
    },
    /// Decryption failed: wrong key, altered data, or data moved to another
    /// record (different associated data).
    #[error("decryption failed: the data was altered, moved, or encrypted with another key")]
    Authentication,
    /// Encryption failed (the plaintext is too large for AES-GCM).
    #[error("encryption failed: the plaintext is too large")]
    Encryption,
}

/// Where the master key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file holding the base64 text of the key (mode 0600 on unix).
    File(PathBuf),
    /// An environment variable, by name, holding the base64 text of the key.
    Env(String),
}

/// The operator's master key: 32 random bytes, zeroed on drop.
///
/// It never prints: `Debug` shows only the [fingerprint](Self::fingerprint).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    // Boxed so that moving the key does not leave copies of it on the stack.
    bytes: Box<[u8; KEY_LEN]>,
}

impl MasterKey {
    /// Generates a new key from the thread-local CSPRNG (seeded by the
    /// operating system).
    pub fn generate() -> MasterKey {
        let mut bytes = Box::new([0u8; KEY_LEN]);
        rand::rng().fill_bytes(&mut bytes[..]);
        MasterKey { bytes }
    }

    /// Parses the text form of a key: the standard base64 (with padding) of
    /// its 32 bytes. Surrounding whitespace, such as a final newline, is
    /// ignored.
    ///
    /// # Errors
    ///
    /// [`KeyError::Empty`], [`KeyError::NotBase64`] or
    /// [`KeyError::WrongLength`]; the messages name the text as "the given
    /// text".
    pub fn from_base64(text: &str) -> Result<MasterKey, KeyError> {
        MasterKey::parse(text, "the given text")
    }

    /// Parses key text, naming `origin` in errors.
    fn parse(text: &str, origin: &str) -> Result<MasterKey, KeyError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(KeyError::Empty {
                origin: origin.into(),
            });
        }
        // The decode error of the base64 crate names the offending byte,
        // which is key material: it is dropped, not shown.
        let decoded = Zeroizing::new(STANDARD.decode(text).map_err(|_| KeyError::NotBase64 {
            origin: origin.into(),
        })?);
        if decoded.len() != KEY_LEN {
            return Err(KeyError::WrongLength {
                origin: origin.into(),
                len: decoded.len(),
            });
        }
        let mut bytes = Box::new([0u8; KEY_LEN]);
        bytes.copy_from_slice(&decoded);
        Ok(MasterKey { bytes })
    }

    /// The text form of the key (standard base64 of the 32 bytes), for `wrun
    /// key init` to write once. The returned string is zeroed on drop.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(&self.bytes[..]))
    }

    /// A short identifier of the key that does not reveal it: the first 16
    /// hex characters of SHA-256 over a fixed domain-separation prefix and
    /// the key bytes.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(FINGERPRINT_DOMAIN);
        hasher.update(&self.bytes[..]);
        let digest = hasher.finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Loads the key from a file or an environment variable.
    ///
    /// A key file must be a regular file of at most 4 KiB; on unix it must
    /// not be accessible to group or others (`mode & 0o077 == 0`).
    ///
    /// # Errors
    ///
    /// A [`KeyError`] saying what is wrong and where: a missing or unreadable
    /// file, a file others can read (with the `chmod` that fixes it), an
    /// unset variable, empty text, text that is not base64, or a key of the
    /// wrong length. No error contains key material.
    pub fn load(source: KeySource) -> Result<MasterKey, KeyError> {
        match source {
            KeySource::File(path) => MasterKey::load_file(&path),
            KeySource::Env(var) => {
                let origin = format!("environment variable {var}");
                match std::env::var_os(&var) {
                    None => Err(KeyError::EnvMissing { var }),
                    // `into_string` keeps the buffer, so both arms can zero it.
                    Some(value) => match value.into_string() {
                        Ok(text) => MasterKey::parse(&Zeroizing::new(text), &origin),
                        Err(raw) => {
                            drop(Zeroizing::new(raw.into_encoded_bytes()));
                            Err(KeyError::NotBase64 { origin })
                        }
                    },
                }
            }
        }
    }

    /// Reads and parses a key file, checking its permissions on the opened
    /// file itself so the check and the read see the same file.
    fn load_file(path: &Path) -> Result<MasterKey, KeyError> {
        let mut file = std::fs::File::open(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound => KeyError::MissingFile { path: path.into() },
            _ => KeyError::Unreadable {
                path: path.into(),
                source,
            },
        })?;
        let meta = file.metadata().map_err(|source| KeyError::Unreadable {
            path: path.into(),
            source,
        })?;
        if !meta.is_file() {
            return Err(KeyError::Unreadable {
                path: path.into(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            });
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions {
                    path: path.into(),
                    mode,
                });
            }
        }
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(KeyError::FileTooLarge {
                path: path.into(),
                len: meta.len(),
            });
        }
        // Reserve the whole file up front so the buffer is never reallocated,
        // which would leave an unzeroed copy of the key text behind.
        let capacity = usize::try_from(MAX_KEY_FILE_LEN).unwrap_or(4096) + 1;
        let mut raw = Zeroizing::new(Vec::with_capacity(capacity));
        (&mut file)
            .take(MAX_KEY_FILE_LEN + 1)
            .read_to_end(&mut raw)
            .map_err(|source| KeyError::Unreadable {
                path: path.into(),
                source,
            })?;
        let origin = format!("file {}", path.display());
        match std::str::from_utf8(&raw) {
            Ok(text) => MasterKey::parse(text, &origin),
            Err(_) => Err(KeyError::NotBase64 { origin }),
        }
    }

    /// An AES-256-GCM instance keyed with this key.
    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&*self.bytes).into())
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKey")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// Writes `key` in its text form (base64 and a newline) to a new file at
/// `path`, created with mode 0600 on unix.
///
/// The file is created with `create_new`, so an existing file, including one
/// created concurrently, is never overwritten; the contents are flushed to
/// disk before returning. If writing fails, the partial file is removed.
///
/// # Errors
///
/// [`KeyError::FileExists`] if `path` exists, [`KeyError::Write`] for any
/// other failure (missing directory, permissions, disk full).
pub fn write_key_file(path: &Path, key: &MasterKey) -> Result<(), KeyError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|source| match source.kind() {
        io::ErrorKind::AlreadyExists => KeyError::FileExists { path: path.into() },
        _ => KeyError::Write {
            path: path.into(),
            source,
        },
    })?;
    let mut text = key.to_base64();
    text.push('\n');
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(source) = written {
        drop(file);
        // The file is ours (create_new succeeded): remove the partial key.
        let _ = std::fs::remove_file(path);
        return Err(KeyError::Write {
            path: path.into(),
            source,
        });
    }
    Ok(())
}

/// A workspace data key: 32 random bytes, zeroed on drop, never printed.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct DataKey {
    bytes: Box<[u8; KEY_LEN]>,
}

impl DataKey {
    /// Generates a new data key from the thread-local CSPRNG.
    pub fn generate() -> DataKey {
        let mut bytes = Box::new([0u8; KEY_LEN]);
        rand::rng().fill_bytes(&mut bytes[..]);
        DataKey { bytes }
    }

    /// An AES-256-GCM instance keyed with this key.
    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new((&*self.bytes).into())
    }

    /// The key's bytes, for keys that are not AES keys (the audit log's MAC
    /// key is stored as a wrapped data key). Never log or print them.
    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// The associated data that binds a wrapped data key to its workspace.
fn data_key_aad(workspace: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(DATA_KEY_AAD_PREFIX.len() + workspace.len());
    aad.extend_from_slice(DATA_KEY_AAD_PREFIX);
    aad.extend_from_slice(workspace.as_bytes());
    aad
}

/// Encrypts `plaintext` in the versioned nonce-prefixed format.
fn encrypt(cipher: &Aes256Gcm, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rng().fill_bytes(&mut nonce);
    let ciphertext = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| KeyError::Encryption)?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    out.push(FORMAT_V1);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Decrypts data in the versioned nonce-prefixed format.
fn decrypt(cipher: &Aes256Gcm, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    if sealed.len() < MIN_SEALED_LEN {
        return Err(KeyError::Malformed {
            reason: "shorter than a version byte, a nonce and a tag",
        });
    }
    let (version, rest) = sealed.split_at(1);
    if version != [FORMAT_V1] {
        return Err(KeyError::Malformed {
            reason: "unknown format version",
        });
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| KeyError::Authentication)
}

/// Wraps (encrypts) `data_key` with `master` for `workspace`.
///
/// # Errors
///
/// [`KeyError::Encryption`] only if AES-GCM refuses the input, which does not
/// happen for a 32-byte key.
pub fn wrap_data_key(
    master: &MasterKey,
    data_key: &DataKey,
    workspace: &str,
) -> Result<Vec<u8>, KeyError> {
    encrypt(
        &master.cipher(),
        &data_key.bytes[..],
        &data_key_aad(workspace),
    )
}

/// Unwraps (decrypts) a data key wrapped by [`wrap_data_key`] for the same
/// `workspace` with the same `master`.
///
/// # Errors
///
/// [`KeyError::Authentication`] if the key is not the one it was wrapped
/// with, the bytes were altered, or they were wrapped for another
/// workspace; [`KeyError::Malformed`] if they are not in the wrapped format.
pub fn unwrap_data_key(
    master: &MasterKey,
    wrapped: &[u8],
    workspace: &str,
) -> Result<DataKey, KeyError> {
    let plain = decrypt(&master.cipher(), wrapped, &data_key_aad(workspace))?;
    if plain.len() != KEY_LEN {
        return Err(KeyError::Malformed {
            reason: "a wrapped data key does not decrypt to 32 bytes",
        });
    }
    let mut bytes = Box::new([0u8; KEY_LEN]);
    bytes.copy_from_slice(&plain);
    Ok(DataKey { bytes })
}

/// Seals (encrypts and authenticates) `plaintext` with `data_key`, binding
/// it to `aad`: [`open`] succeeds only with the same key and the same `aad`.
///
/// # Errors
///
/// [`KeyError::Encryption`] if the plaintext is too large for AES-GCM
/// (more than 64 GiB).
pub fn seal(data_key: &DataKey, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, KeyError> {
    encrypt(&data_key.cipher(), plaintext, aad)
}

/// Opens data sealed by [`seal`]. The plaintext is zeroed on drop.
///
/// # Errors
///
/// [`KeyError::Authentication`] if the key or `aad` differ from sealing or
/// the bytes were altered; [`KeyError::Malformed`] if they are not in the
/// sealed format.
pub fn open(data_key: &DataKey, sealed: &[u8], aad: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    decrypt(&data_key.cipher(), sealed, aad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh empty directory under the system temp dir, removed on drop.
    fn tempdir() -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix("wrun-keys-")
            .tempdir()
            .unwrap()
    }

    #[cfg(unix)]
    fn mode_of(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[cfg(unix)]
    fn set_mode(path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn base64_round_trip_and_whitespace() {
        let key = MasterKey::generate();
        let text = key.to_base64();
        assert_eq!(text.len(), 44);
        let again = MasterKey::from_base64(&format!("  \n{}\r\n\t", text.as_str())).unwrap();
        assert_eq!(again.bytes, key.bytes);
        assert_eq!(again.fingerprint(), key.fingerprint());
    }

    #[test]
    fn generated_keys_differ() {
        let a = MasterKey::generate();
        let b = MasterKey::generate();
        assert_ne!(a.bytes, b.bytes);
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn fingerprint_is_16_hex_and_not_a_prefix_of_the_key() {
        let key = MasterKey::from_base64(&STANDARD.encode([7u8; 32])).unwrap();
        let fp = key.fingerprint();
        assert_eq!(fp.len(), 16);
        assert!(
            fp.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(fp, "0707070707070707");
        // Stable across calls and builds: the domain prefix is fixed.
        let mut h = Sha256::new();
        h.update(FINGERPRINT_DOMAIN);
        h.update([7u8; 32]);
        let expected: String = h.finalize()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(fp, expected);
    }

    #[test]
    fn debug_shows_only_the_fingerprint() {
        let key = MasterKey::generate();
        let debug = format!("{key:?}");
        assert!(debug.contains(&key.fingerprint()));
        assert!(!debug.contains(key.to_base64().as_str()));
        let hex: String = key.bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!debug.contains(&hex));
        assert!(!debug.contains("bytes"), "{debug}");
        let dk = DataKey::generate();
        assert_eq!(format!("{dk:?}"), "DataKey(..)");
    }

    #[test]
    fn from_base64_errors_name_no_key_material() {
        let cases: &[(&str, &str)] = &[
            ("", "is empty"),
            ("   \n", "is empty"),
            ("not base64 at all!!", "not standard base64"),
            ("AAAA", "decodes to 3 bytes"),
            (&STANDARD.encode([1u8; 31]), "decodes to 31 bytes"),
            (&STANDARD.encode([1u8; 33]), "decodes to 33 bytes"),
            // URL-safe alphabet is not the standard one.
            (
                &base64::engine::general_purpose::URL_SAFE.encode([0xfbu8; 32]),
                "not standard base64",
            ),
        ];
        for (text, expected) in cases {
            let err = MasterKey::from_base64(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
            if !text.trim().is_empty() {
                assert!(!err.contains(text.trim()), "{err}");
            }
        }
    }

    #[test]
    fn write_then_load_file_with_mode_0600() {
        let dir = tempdir();
        let path = dir.path().join("master.key");
        let key = MasterKey::generate();
        write_key_file(&path, &key).unwrap();
        #[cfg(unix)]
        assert_eq!(mode_of(&path), 0o600);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", key.to_base64().as_str()));
        let loaded = MasterKey::load(KeySource::File(path)).unwrap();
        assert_eq!(loaded.fingerprint(), key.fingerprint());
    }

    #[test]
    fn write_key_file_refuses_to_overwrite() {
        let dir = tempdir();
        let path = dir.path().join("master.key");
        std::fs::write(&path, b"keep me").unwrap();
        let err = write_key_file(&path, &MasterKey::generate()).unwrap_err();
        assert!(matches!(err, KeyError::FileExists { .. }), "{err}");
        assert!(err.to_string().contains("refusing to overwrite"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    }

    #[test]
    fn write_key_file_into_missing_directory_fails_cleanly() {
        let dir = tempdir();
        let path = dir.path().join("no-such-dir").join("master.key");
        let err = write_key_file(&path, &MasterKey::generate()).unwrap_err();
        assert!(matches!(err, KeyError::Write { .. }), "{err}");
        assert!(err.to_string().contains("no-such-dir"), "{err}");
    }

    #[test]
    fn load_missing_file() {
        let dir = tempdir();
        let path = dir.path().join("absent.key");
        let err = MasterKey::load(KeySource::File(path.clone())).unwrap_err();
        assert!(matches!(err, KeyError::MissingFile { .. }), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }

    #[cfg(unix)]
    #[test]
    fn load_refuses_a_file_readable_by_group_or_others() {
        let dir = tempdir();
        let path = dir.path().join("master.key");
        let key = MasterKey::generate();
        write_key_file(&path, &key).unwrap();
        for mode in [0o640, 0o604, 0o644, 0o660, 0o610] {
            set_mode(&path, mode);
            let err = MasterKey::load(KeySource::File(path.clone())).unwrap_err();
            assert!(matches!(err, KeyError::Permissions { .. }), "{err}");
            let msg = err.to_string();
            assert!(
                msg.contains(&format!("chmod 600 {}", path.display())),
                "{msg}"
            );
            assert!(msg.contains(&format!("{mode:03o}")), "{msg}");
            assert!(!msg.contains(key.to_base64().as_str()), "{msg}");
        }
        set_mode(&path, 0o400);
        assert!(MasterKey::load(KeySource::File(path)).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn load_unreadable_file() {
        let dir = tempdir();
        let path = dir.path().join("master.key");
        write_key_file(&path, &MasterKey::generate()).unwrap();
        set_mode(&path, 0o000);
        // Root reads any file; the check only means something for others.
        if std::fs::read(&path).is_err() {
            let err = MasterKey::load(KeySource::File(path.clone())).unwrap_err();
            assert!(matches!(err, KeyError::Unreadable { .. }), "{err}");
        }
        // A directory is not a key file.
        let err = MasterKey::load(KeySource::File(dir.path().to_path_buf())).unwrap_err();
        assert!(matches!(err, KeyError::Unreadable { .. }), "{err}");
    }

    /// Writes `contents` as a key file with mode 0600.
    fn private_file(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        #[cfg(unix)]
        set_mode(&path, 0o600);
        path
    }

    #[test]
    fn load_file_content_errors() {
        let dir = tempdir();
        let secretish = STANDARD.encode([9u8; 31]);
        let cases: Vec<(&str, Vec<u8>, &str)> = vec![
            ("empty", vec![], "is empty"),
            ("blank", b"\n\n  ".to_vec(), "is empty"),
            (
                "short",
                secretish.clone().into_bytes(),
                "decodes to 31 bytes",
            ),
            ("garbage", b"hello, world".to_vec(), "not standard base64"),
            (
                "binary",
                vec![0xff, 0xfe, 0x00, 0x41],
                "not standard base64",
            ),
        ];
        for (name, contents, expected) in cases {
            let path = private_file(dir.path(), name, &contents);
            let err = MasterKey::load(KeySource::File(path.clone()))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{name}: {err}");
            assert!(err.contains(&path.display().to_string()), "{name}: {err}");
            assert!(!err.contains(&secretish), "{err}");
        }
        let big = private_file(dir.path(), "big", &vec![b'A'; 5000]);
        let err = MasterKey::load(KeySource::File(big)).unwrap_err();
        assert!(
            matches!(err, KeyError::FileTooLarge { len: 5000, .. }),
            "{err}"
        );
    }

    /// Environment variables read by [`load_from_environment_child`].
    const ENV_EXPECT: &str = "WRUN_KEYS_TEST_EXPECT_FP";
    const ENV_SET: &str = "WRUN_KEYS_TEST_SET";
    const ENV_EMPTY: &str = "WRUN_KEYS_TEST_EMPTY";
    const ENV_BAD: &str = "WRUN_KEYS_TEST_BAD";
    const ENV_UNSET: &str = "WRUN_KEYS_TEST_UNSET";

    /// Setting variables in this process needs `unsafe` in edition 2024, so
    /// the test binary runs [`load_from_environment_child`] in a child
    /// process with the variables set.
    #[test]
    fn load_from_environment() {
        let key = MasterKey::generate();
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "keys::tests::load_from_environment_child",
                "--test-threads=1",
            ])
            .env(ENV_EXPECT, key.fingerprint())
            .env(ENV_SET, format!("{}\n", key.to_base64().as_str()))
            .env(ENV_EMPTY, " ")
            .env(ENV_BAD, "%%%not-base64%%%")
            .env_remove(ENV_UNSET)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&status.stdout);
        assert!(
            status.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&status.stderr)
        );
        // The child really ran the test (the filter matched one test).
        assert!(stdout.contains("1 passed"), "{stdout}");
    }

    /// The half of [`load_from_environment`] that runs in the child; it does
    /// nothing when run directly.
    #[test]
    fn load_from_environment_child() {
        let Ok(expected) = std::env::var(ENV_EXPECT) else {
            return;
        };
        let key = MasterKey::load(KeySource::Env(ENV_SET.into())).unwrap();
        assert_eq!(key.fingerprint(), expected);
        let err = MasterKey::load(KeySource::Env(ENV_EMPTY.into())).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("the master key in environment variable {ENV_EMPTY} is empty")
        );
        let err = MasterKey::load(KeySource::Env(ENV_BAD.into())).unwrap_err();
        assert!(matches!(err, KeyError::NotBase64 { .. }), "{err}");
        assert!(
            err.to_string().contains(ENV_BAD) && !err.to_string().contains("not-base64%"),
            "{err}"
        );
        let err = MasterKey::load(KeySource::Env(ENV_UNSET.into())).unwrap_err();
        assert!(matches!(err, KeyError::EnvMissing { .. }), "{err}");
        assert!(err.to_string().contains(ENV_UNSET), "{err}");
    }

    #[test]
    fn wrap_unwrap_round_trip() {
        let master = MasterKey::generate();
        let dk = DataKey::generate();
        let wrapped = wrap_data_key(&master, &dk, "team-a").unwrap();
        assert_eq!(wrapped.len(), 1 + NONCE_LEN + KEY_LEN + TAG_LEN);
        assert_eq!(wrapped[0], FORMAT_V1);
        assert!(!wrapped.windows(KEY_LEN).any(|w| w == &dk.bytes[..]));
        let back = unwrap_data_key(&master, &wrapped, "team-a").unwrap();
        assert_eq!(back.bytes, dk.bytes);
        // A fresh nonce each time.
        let again = wrap_data_key(&master, &dk, "team-a").unwrap();
        assert_ne!(again, wrapped);
    }

    #[test]
    fn unwrap_fails_for_another_workspace_key_or_altered_bytes() {
        let master = MasterKey::generate();
        let dk = DataKey::generate();
        let wrapped = wrap_data_key(&master, &dk, "team-a").unwrap();
        let err = unwrap_data_key(&master, &wrapped, "team-b").unwrap_err();
        assert!(matches!(err, KeyError::Authentication), "{err}");
        let other = MasterKey::generate();
        assert!(matches!(
            unwrap_data_key(&other, &wrapped, "team-a"),
            Err(KeyError::Authentication)
        ));
        for i in 1..wrapped.len() {
            let mut bad = wrapped.clone();
            bad[i] ^= 0x01;
            assert!(
                matches!(
                    unwrap_data_key(&master, &bad, "team-a"),
                    Err(KeyError::Authentication)
                ),
                "flipped byte {i}"
            );
        }
    }

    #[test]
    fn seal_open_round_trip_and_aad_binding() {
        let dk = DataKey::generate();
        let canary = b"canary-4f1d9e7a-secret";
        let sealed = seal(&dk, canary, b"aad-1").unwrap();
        assert_eq!(sealed[0], FORMAT_V1);
        assert!(!sealed.windows(canary.len()).any(|w| w == canary));
        assert_eq!(&open(&dk, &sealed, b"aad-1").unwrap()[..], canary);
        assert!(matches!(
            open(&dk, &sealed, b"aad-2"),
            Err(KeyError::Authentication)
        ));
        assert!(matches!(
            open(&DataKey::generate(), &sealed, b"aad-1"),
            Err(KeyError::Authentication)
        ));
        // The empty plaintext is allowed and still authenticated.
        let empty = seal(&dk, b"", b"").unwrap();
        assert_eq!(empty.len(), MIN_SEALED_LEN);
        assert!(open(&dk, &empty, b"").unwrap().is_empty());
    }

    #[test]
    fn open_rejects_malformed_input() {
        let dk = DataKey::generate();
        let sealed = seal(&dk, b"value", b"").unwrap();
        for len in 0..MIN_SEALED_LEN {
            assert!(matches!(
                open(&dk, &sealed[..len], b""),
                Err(KeyError::Malformed { .. })
            ));
        }
        let mut future = sealed.clone();
        future[0] = 2;
        let err = open(&dk, &future, b"").unwrap_err();
        assert!(err.to_string().contains("unknown format version"), "{err}");
        let mut truncated = sealed.clone();
        truncated.pop();
        assert!(matches!(
            open(&dk, &truncated, b""),
            Err(KeyError::Authentication)
        ));
        let mut flipped = sealed;
        let last = flipped.len() - 1;
        flipped[last] ^= 0x80;
        assert!(matches!(
            open(&dk, &flipped, b""),
            Err(KeyError::Authentication)
        ));
    }
}

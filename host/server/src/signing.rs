//! Signed bundles: an author's ed25519 key signs a bundle's lock, which
//! names the SHA-256 of the manifest and of every component and the
//! bundle's version; a workspace trusts a list of public keys.
//!
//! Formats (all text, so that keys travel in a terminal, a config file or
//! an API body):
//!
//! - secret key file (mode 0600): `wrun-signing-key-v1:` + base64 of the
//!   32-byte ed25519 seed;
//! - public key: `wrun-ed25519:` + base64 of the 32-byte public key; its
//!   id is the first 16 hex digits of the SHA-256 of those 32 bytes;
//! - signature (`wrun-lock.sig` in the bundle): JSON
//!   `{"key": "<public key>", "signature": "<base64 of 64 bytes>"}`, an
//!   ed25519 signature (RFC 8032) of [`CONTEXT`] followed by the exact bytes
//!   of `wrun-lock.json`.
//!
//! ed25519 comes from `ed25519-dalek`; the wrapping is written here because
//! no crate signs a wrun lock: it is a few lines of encoding around it.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use zeroize::Zeroizing;

/// What a signature covers before the lock's bytes: a signature made for
/// anything else does not verify as a bundle signature.
pub const CONTEXT: &[u8] = b"wrun bundle lock v1\n";

const SECRET_PREFIX: &str = "wrun-signing-key-v1:";
const PUBLIC_PREFIX: &str = "wrun-ed25519:";

/// A bundle's signature entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSignature {
    /// The signer's public key (`wrun-ed25519:...`).
    pub key: String,
    /// base64 of the 64-byte ed25519 signature.
    pub signature: String,
}

/// An author's signing key, read from its file.
pub struct AuthorKey(SigningKey);

impl std::fmt::Debug for AuthorKey {
    /// Shows the public half only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("AuthorKey").field(&self.public()).finish()
    }
}

impl AuthorKey {
    /// A new random key.
    pub fn generate() -> AuthorKey {
        let seed = Zeroizing::new(rand::random::<[u8; 32]>());
        AuthorKey(SigningKey::from_bytes(&seed))
    }

    /// Writes the key to a new file (mode 0600); refuses to overwrite.
    ///
    /// # Errors
    ///
    /// The file exists or cannot be written.
    pub fn write_new(&self, path: &Path) -> Result<()> {
        use std::io::Write as _;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).with_context(|| {
            format!(
                "creating signing key file {} (it must not exist)",
                path.display()
            )
        })?;
        let text = Zeroizing::new(format!(
            "{SECRET_PREFIX}{}\n",
            B64.encode(self.0.to_bytes())
        ));
        file.write_all(text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Reads a key file written by [`AuthorKey::write_new`].
    ///
    /// # Errors
    ///
    /// The file cannot be read or is not a wrun signing key (the message
    /// never quotes its content).
    pub fn load(path: &Path) -> Result<AuthorKey> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading signing key {}", path.display()))?,
        );
        let bad = || {
            anyhow::anyhow!(
                "{} is not a wrun signing key (create one with `wrun signing-key new`)",
                path.display()
            )
        };
        let encoded = text.trim().strip_prefix(SECRET_PREFIX).ok_or_else(bad)?;
        let bytes = Zeroizing::new(B64.decode(encoded).map_err(|_| bad())?);
        let seed: &[u8; 32] = bytes.as_slice().try_into().map_err(|_| bad())?;
        Ok(AuthorKey(SigningKey::from_bytes(seed)))
    }

    /// The public key, as workspaces trust it.
    pub fn public(&self) -> String {
        public_text(&self.0.verifying_key())
    }

    /// Signs a lock's exact bytes.
    pub fn sign(&self, lock: &[u8]) -> BundleSignature {
        let mut message = CONTEXT.to_vec();
        message.extend_from_slice(lock);
        BundleSignature {
            key: self.public(),
            signature: B64.encode(self.0.sign(&message).to_bytes()),
        }
    }
}

fn public_text(key: &VerifyingKey) -> String {
    format!("{PUBLIC_PREFIX}{}", B64.encode(key.as_bytes()))
}

/// A parsed public key: its canonical text and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    /// The canonical text (`wrun-ed25519:...`).
    pub text: String,
    /// First 16 hex digits of the SHA-256 of the key bytes.
    pub id: String,
}

impl PublicKey {
    /// Parses `wrun-ed25519:<base64>`.
    ///
    /// # Errors
    ///
    /// Not in that form, or not a valid ed25519 point.
    pub fn parse(text: &str) -> Result<PublicKey> {
        let Some(encoded) = text.trim().strip_prefix(PUBLIC_PREFIX) else {
            bail!(
                "a public key looks like `wrun-ed25519:<base64>` (printed by `wrun signing-key new`)"
            );
        };
        let bytes = B64
            .decode(encoded)
            .context("the public key is not valid base64")?;
        let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            anyhow::anyhow!("an ed25519 public key has 32 bytes, not {}", bytes.len())
        })?;
        let key = VerifyingKey::from_bytes(&bytes).context("not a valid ed25519 public key")?;
        ensure!(!key.is_weak(), "a weak ed25519 public key is refused");
        Ok(PublicKey {
            text: public_text(&key),
            id: wrun_store::sha256_hex(key.as_bytes())[..16].to_string(),
            key,
        })
    }

    /// Verifies a signature of a lock's exact bytes (strict RFC 8032
    /// verification: no malleable or small-order signatures).
    ///
    /// # Errors
    ///
    /// The signature does not verify.
    pub fn verify(&self, lock: &[u8], signature: &BundleSignature) -> Result<()> {
        let bytes = B64
            .decode(&signature.signature)
            .context("the bundle's signature is not valid base64")?;
        let signature =
            Signature::from_slice(&bytes).context("the bundle's signature is malformed")?;
        let mut message = CONTEXT.to_vec();
        message.extend_from_slice(lock);
        self.key
            .verify_strict(&message, &signature)
            .map_err(|_| anyhow::anyhow!("the bundle's signature does not match its lock: the bundle was altered after signing"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_signature_verifies_once_and_breaks_with_any_change() {
        let key = AuthorKey::generate();
        let public = PublicKey::parse(&key.public()).unwrap();
        let lock = br#"{"format":2,"recipe":"r"}"#;
        let signature = key.sign(lock);
        assert_eq!(signature.key, public.text);
        public.verify(lock, &signature).unwrap();
        let mut changed = lock.to_vec();
        changed[12] ^= 1;
        assert!(public.verify(&changed, &signature).is_err());
        let other = PublicKey::parse(&AuthorKey::generate().public()).unwrap();
        assert!(other.verify(lock, &signature).is_err());
    }

    #[test]
    fn key_files_round_trip_and_bad_ones_are_refused_without_quoting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("author.key");
        let key = AuthorKey::generate();
        key.write_new(&path).unwrap();
        assert!(key.write_new(&path).is_err(), "never overwritten");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(AuthorKey::load(&path).unwrap().public(), key.public());
        std::fs::write(&path, "wrun-signing-key-v1:c2VjcmV0LXZhbHVl").unwrap();
        let err = format!("{:#}", AuthorKey::load(&path).unwrap_err());
        assert!(!err.contains("c2VjcmV0"), "{err}");
        assert!(PublicKey::parse("ssh-ed25519 AAAA").is_err());
        assert!(PublicKey::parse("wrun-ed25519:AAAA").is_err());
    }
}

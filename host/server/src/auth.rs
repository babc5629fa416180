//! Identity and access primitives of the `wrun serve` daemon.
//!
//! This module is pure logic: it reads no database and speaks no HTTP. The
//! API layer uses it to turn what a client presents (an API token or a JWT,
//! and the address it connects from) into an identity, and to decide what
//! that identity may do.
//!
//! # Permissions
//!
//! A [`PermissionSet`] is a small bitset over ([`Resource`], [`Access`])
//! pairs, written as strings such as `recipes:read`, `jobs:write`, `*:read`
//! or `*:write`. Write access implies read access. Roles map to permission
//! sets; the built-in ones are returned by [`builtin_role`].
//!
//! # API token format
//!
//! An API token is 72 ASCII characters:
//!
//! ```text
//! wrun_pat_<id>_<secret>_<checksum>
//! ```
//!
//! - `wrun_pat_` is a fixed prefix so that secret scanners can recognise a
//!   wrun token with the regular expression
//!   `wrun_pat_[a-z2-7]{12}_[A-Za-z0-9_-]{43}_[a-z2-7]{6}`.
//! - `<id>` is 12 characters of lowercase RFC 4648 base32 (`a-z`, `2-7`)
//!   drawn from the CSPRNG (60 bits). It is not secret: the store looks the
//!   token up by it, and logs and the audit trail may name it.
//! - `<secret>` is 32 bytes from the CSPRNG, encoded as base64url without
//!   padding (43 characters). Because that alphabet contains `_`, the token
//!   is split at fixed offsets, never at underscores.
//! - `<checksum>` is the low 30 bits of the CRC-32 (IEEE) of the 65
//!   characters before the last `_` (`wrun_pat_<id>_<secret>`), as 6
//!   characters of lowercase base32, most significant first. It lets a
//!   client, a scanner or the daemon reject a mistyped or truncated token
//!   offline, without a database lookup. It is not a security control.
//!
//! The daemon stores only the token id and SHA-256 of the 32 secret bytes;
//! the full token is shown to the user once, at creation.
//!
//! # JWTs
//!
//! A [`JwtVerifier`] accepts JWTs from one configured issuer. The algorithm
//! and key are pinned by configuration, never taken from the token; every
//! time-based and identity claim is checked here against an explicit `now`.
//!
//! # IP allowlists
//!
//! An [`IpAllowlist`] limits the addresses a token may be used from.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ipnet::{IpNet, Ipv4Net};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Everything that can go wrong while parsing permissions, tokens, allowlists
/// or JWTs, or while loading the JWT configuration.
///
/// Messages say what was wrong without echoing a token, a secret or a key.
/// [`AuthError::code`] gives a stable machine-readable code for API replies.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A permission or resource name is not part of the access model.
    #[error(transparent)]
    Access(#[from] wrun_store::access::AccessError),

    /// An API token does not have the `wrun_pat_` shape.
    #[error("malformed API token: {reason}")]
    TokenMalformed {
        /// What is wrong with the shape, without any part of the token.
        reason: &'static str,
    },

    /// An API token has the right shape but its checksum does not match,
    /// which means it was mistyped or truncated.
    #[error("API token checksum does not match: the token was mistyped or altered")]
    TokenChecksum,

    /// An IP allowlist entry is not an address or a CIDR network.
    #[error("invalid IP allowlist entry `{value}`: {reason}")]
    IpInvalid {
        /// The entry as given (cut to 64 characters).
        value: String,
        /// What is wrong with it.
        reason: String,
    },

    /// The JWT configuration is inconsistent or incomplete.
    #[error("invalid JWT configuration: {reason}")]
    JwtConfig {
        /// What must be fixed in the configuration.
        reason: String,
    },

    /// The JWT public key file could not be read.
    #[error("cannot read JWT key file {}: {source}", path.display())]
    JwtKeyFile {
        /// The configured path.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The JWT key material is not a usable key for the configured algorithm.
    #[error("invalid JWT key for {algorithm}: {reason}")]
    JwtKeyInvalid {
        /// The configured algorithm.
        algorithm: String,
        /// What is wrong with the key (never the key itself).
        reason: String,
    },

    /// The environment variable that should hold the HMAC secret is unset,
    /// empty or not valid UTF-8.
    #[error("environment variable {var} (jwt secret_env) is not set or not valid UTF-8")]
    JwtSecretMissing {
        /// The name of the environment variable.
        var: String,
    },

    /// The HMAC secret is shorter than 32 bytes.
    #[error("the JWT HMAC secret is {len} bytes long; at least {min} bytes are required")]
    JwtSecretTooShort {
        /// The length of the secret that was given.
        len: usize,
        /// The minimum length.
        min: usize,
    },

    /// A presented JWT is not three base64url parts with a JSON header and
    /// a JSON object as payload.
    #[error("malformed JWT: {reason}")]
    JwtMalformed {
        /// What is wrong with the shape, without any part of the token.
        reason: &'static str,
    },

    /// The JWT header names an algorithm other than the configured one
    /// (this includes `none`).
    #[error("JWT algorithm `{found}` is not accepted: this server only accepts {expected}")]
    JwtAlgorithmMismatch {
        /// The configured algorithm.
        expected: String,
        /// The algorithm named by the token header, reduced to at most 16
        /// alphanumeric characters.
        found: String,
    },

    /// The JWT header lists critical extensions this server does not
    /// implement.
    #[error("JWT header has a `crit` parameter; no JWS extensions are supported")]
    JwtUnsupportedCrit,

    /// The JWT signature does not verify with the configured key.
    #[error("JWT signature is invalid for the configured key")]
    JwtInvalidSignature,

    /// The JWT `exp` is in the past, beyond the configured leeway.
    #[error("JWT has expired")]
    JwtExpired,

    /// The JWT `nbf` or `iat` is in the future, beyond the configured leeway.
    #[error("JWT is not valid yet (`{claim}` is in the future)")]
    JwtNotYetValid {
        /// `nbf` or `iat`.
        claim: &'static str,
    },

    /// The JWT lives longer than the configured maximum lifetime.
    #[error("JWT lifetime of {lifetime_secs}s exceeds the maximum of {max_secs}s")]
    JwtLifetimeTooLong {
        /// `exp - iat`, or `exp - now` when the token has no `iat`.
        lifetime_secs: u64,
        /// The configured `max_lifetime_secs`.
        max_secs: u64,
    },

    /// A required JWT claim is absent.
    #[error("JWT is missing the required claim `{claim}`")]
    JwtMissingClaim {
        /// The claim name.
        claim: String,
    },

    /// A JWT claim has the wrong JSON type or an empty value.
    #[error("JWT claim `{claim}` must be {expected}")]
    JwtClaimInvalid {
        /// The claim name.
        claim: String,
        /// A description of the accepted values.
        expected: &'static str,
    },

    /// The JWT `aud` does not name this server's audience.
    #[error("JWT audience does not match the configured audience")]
    JwtWrongAudience,

    /// The JWT `iss` is not the configured issuer.
    #[error("JWT issuer does not match the configured issuer")]
    JwtWrongIssuer,

    /// The JWT role claim has no entry in the role map.
    #[error("JWT role claim value is not mapped to a wrun role")]
    JwtRoleUnmapped,
}

impl AuthError {
    /// Returns a stable, machine-readable code for this error, suitable for
    /// an API error body and for metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Access(wrun_store::access::AccessError::PermissionUnknown { .. }) => {
                "permission_unknown"
            }
            Self::Access(wrun_store::access::AccessError::ResourceUnknown { .. }) => {
                "resource_unknown"
            }
            Self::TokenMalformed { .. } => "token_malformed",
            Self::TokenChecksum => "token_checksum_mismatch",
            Self::IpInvalid { .. } => "ip_allowlist_invalid",
            Self::JwtConfig { .. } => "jwt_config_invalid",
            Self::JwtKeyFile { .. } => "jwt_key_unreadable",
            Self::JwtKeyInvalid { .. } => "jwt_key_invalid",
            Self::JwtSecretMissing { .. } => "jwt_secret_missing",
            Self::JwtSecretTooShort { .. } => "jwt_secret_too_short",
            Self::JwtMalformed { .. } => "jwt_malformed",
            Self::JwtAlgorithmMismatch { .. } => "jwt_algorithm_mismatch",
            Self::JwtUnsupportedCrit => "jwt_unsupported_crit",
            Self::JwtInvalidSignature => "jwt_invalid_signature",
            Self::JwtExpired => "jwt_expired",
            Self::JwtNotYetValid { .. } => "jwt_not_yet_valid",
            Self::JwtLifetimeTooLong { .. } => "jwt_lifetime_too_long",
            Self::JwtMissingClaim { .. } => "jwt_missing_claim",
            Self::JwtClaimInvalid { .. } => "jwt_claim_invalid",
            Self::JwtWrongAudience => "jwt_wrong_audience",
            Self::JwtWrongIssuer => "jwt_wrong_issuer",
            Self::JwtRoleUnmapped => "jwt_role_unmapped",
        }
    }
}

/// Cuts user input that is echoed in an error message to a bounded length,
/// so that a huge value cannot flood a log line.
fn echo(value: &str) -> String {
    const MAX: usize = 64;
    if value.chars().count() <= MAX {
        value.to_owned()
    } else {
        let mut cut: String = value.chars().take(MAX).collect();
        cut.push('…');
        cut
    }
}

// Permissions: the access model is stored data, owned by the store.
pub use wrun_store::access::{Access, BUILTIN_ROLES, PermissionSet, Resource, valid_role_name};

// ---------------------------------------------------------------------------
// API tokens
// ---------------------------------------------------------------------------

/// The fixed prefix of every API token.
const TOKEN_PREFIX: &str = "wrun_pat_";
/// Length of the token id, in base32 characters.
const TOKEN_ID_LEN: usize = 12;
/// Length of the encoded secret: 32 bytes as unpadded base64url.
const TOKEN_SECRET_LEN: usize = 43;
/// Length of the checksum, in base32 characters.
const TOKEN_CHECKSUM_LEN: usize = 6;
/// Offset of the `_` between id and secret.
const TOKEN_SEP1: usize = TOKEN_PREFIX.len() + TOKEN_ID_LEN;
/// Offset of the `_` between secret and checksum.
const TOKEN_SEP2: usize = TOKEN_SEP1 + 1 + TOKEN_SECRET_LEN;
/// Total length of a token.
const TOKEN_LEN: usize = TOKEN_SEP2 + 1 + TOKEN_CHECKSUM_LEN;
/// Lowercase RFC 4648 base32 alphabet used for ids and checksums.
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

/// Returns whether `b` is in the lowercase base32 alphabet.
fn is_base32(b: u8) -> bool {
    BASE32.contains(&b)
}

/// Returns whether `b` is in the base64url alphabet.
fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Computes the 6-character checksum of the token body (everything before
/// the last `_`).
fn token_checksum(body: &[u8]) -> [u8; TOKEN_CHECKSUM_LEN] {
    let crc = crc32fast::hash(body) & 0x3fff_ffff;
    let mut out = [0u8; TOKEN_CHECKSUM_LEN];
    for (i, slot) in out.iter_mut().enumerate() {
        let shift = 5 * (TOKEN_CHECKSUM_LEN - 1 - i);
        // The index is masked to five bits, so it is always in range.
        *slot = BASE32[((crc >> shift) & 31) as usize];
    }
    out
}

/// Hashes the raw secret bytes of a token.
///
/// SHA-256 without salt or stretching is the right choice here: the secret
/// is 256 bits from a CSPRNG, so there is nothing to brute-force and no
/// dictionary to precompute, unlike a password. A slow hash (argon2, bcrypt)
/// would only make every API request expensive.
fn hash_secret(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// A freshly generated API token.
///
/// `display` is the full token; it is shown to the user once and must never
/// be stored or logged. The store keeps `id` and `hash`.
pub struct NewToken {
    /// The public token id (12 base32 characters).
    pub id: String,
    /// The full token string, `wrun_pat_…`, shown once.
    pub display: Zeroizing<String>,
    /// SHA-256 of the 32 secret bytes.
    pub hash: [u8; 32],
}

impl NewToken {
    /// Generates a new token from the thread-local CSPRNG (ChaCha, seeded
    /// and periodically reseeded from the operating system).
    pub fn generate() -> NewToken {
        let mut rng = rand::rng();

        let mut id_bytes = [0u8; TOKEN_ID_LEN];
        rng.fill_bytes(&mut id_bytes);
        // 256 is a multiple of 32, so masking to five bits is unbiased.
        let id: String = id_bytes
            .iter()
            .map(|b| char::from(BASE32[usize::from(b & 31)]))
            .collect();

        let mut secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(secret.as_mut());

        let mut display = Zeroizing::new(String::with_capacity(TOKEN_LEN));
        display.push_str(TOKEN_PREFIX);
        display.push_str(&id);
        display.push('_');
        // Encoding straight into the zeroizing string leaves no stray copy.
        URL_SAFE_NO_PAD.encode_string(secret.as_ref(), &mut display);
        let checksum = token_checksum(display.as_bytes());
        display.push('_');
        display.extend(checksum.iter().map(|&b| char::from(b)));

        NewToken {
            id,
            display,
            hash: hash_secret(secret.as_ref()),
        }
    }
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("id", &self.id)
            .field("display", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// An API token as presented by a client, reduced to what the store needs
/// to check it: the id to look up and the hash to compare with
/// [`hashes_match`].
#[derive(Clone)]
pub struct PresentedToken {
    /// The public token id.
    pub id: String,
    /// SHA-256 of the presented secret bytes.
    pub hash: [u8; 32],
}

impl fmt::Debug for PresentedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PresentedToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Parses a presented API token, checking its prefix, length, separators,
/// alphabets and checksum, and hashes its secret.
///
/// The input must be the token exactly (no surrounding whitespace).
///
/// # Errors
///
/// [`AuthError::TokenMalformed`] if the shape is wrong, and
/// [`AuthError::TokenChecksum`] if the shape is right but the checksum does
/// not match.
pub fn parse_token(presented: &str) -> Result<PresentedToken, AuthError> {
    let malformed = |reason| AuthError::TokenMalformed { reason };
    let bytes = presented.as_bytes();
    if !presented.starts_with(TOKEN_PREFIX) {
        return Err(malformed("it does not start with `wrun_pat_`"));
    }
    if bytes.len() != TOKEN_LEN {
        return Err(malformed("it does not have the length of a wrun API token"));
    }
    // From here on the length is exact, so every slice below is in range;
    // `get` keeps that reasoning out of the panic path all the same.
    let part = |from: usize, to: usize| bytes.get(from..to).unwrap_or_default();
    if bytes.get(TOKEN_SEP1) != Some(&b'_') || bytes.get(TOKEN_SEP2) != Some(&b'_') {
        return Err(malformed("its parts are not separated by `_`"));
    }
    let id = part(TOKEN_PREFIX.len(), TOKEN_SEP1);
    let secret = part(TOKEN_SEP1 + 1, TOKEN_SEP2);
    let checksum = part(TOKEN_SEP2 + 1, TOKEN_LEN);
    if !id.iter().all(|&b| is_base32(b)) {
        return Err(malformed("its id has characters outside base32"));
    }
    if !secret.iter().all(|&b| is_base64url(b)) {
        return Err(malformed("its secret has characters outside base64url"));
    }
    if !checksum.iter().all(|&b| is_base32(b)) {
        return Err(malformed("its checksum has characters outside base32"));
    }
    if token_checksum(part(0, TOKEN_SEP2)) != checksum {
        return Err(AuthError::TokenChecksum);
    }
    let mut raw = Zeroizing::new([0u8; 32]);
    match URL_SAFE_NO_PAD.decode_slice(secret, raw.as_mut()) {
        Ok(32) => {}
        _ => return Err(malformed("its secret is not 32 canonically encoded bytes")),
    }
    // The id is ASCII base32 (checked above), so this conversion is lossless.
    let id = String::from_utf8_lossy(id).into_owned();
    Ok(PresentedToken {
        id,
        hash: hash_secret(raw.as_ref()),
    })
}

/// Compares two token hashes in constant time.
pub fn hashes_match(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

// ---------------------------------------------------------------------------
// IP allowlists
// ---------------------------------------------------------------------------

/// A list of networks a client address must fall in. An empty list allows
/// every address.
///
/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a dual-stack socket
/// reports for an IPv4 client) is matched as the IPv4 address, and
/// IPv4-mapped entries are stored as IPv4 networks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpAllowlist(Vec<IpNet>);

impl IpAllowlist {
    /// Parses entries that are CIDR networks (`10.0.0.0/8`, `2001:db8::/32`)
    /// or plain addresses (`192.0.2.7`, `::1`).
    ///
    /// # Errors
    ///
    /// [`AuthError::IpInvalid`] naming the first entry that is neither, or a
    /// CIDR network with host bits set (`10.1.2.3/8`), which is most likely a
    /// typo.
    pub fn parse(items: &[impl AsRef<str>]) -> Result<IpAllowlist, AuthError> {
        let mut nets = Vec::with_capacity(items.len());
        for item in items {
            let item = item.as_ref();
            let net = if let Ok(addr) = IpAddr::from_str(item) {
                IpNet::from(addr)
            } else {
                let net = IpNet::from_str(item).map_err(|_| AuthError::IpInvalid {
                    value: echo(item),
                    reason: "expected an IP address or a CIDR network such as 10.0.0.0/8"
                        .to_owned(),
                })?;
                if net.addr() != net.network() {
                    return Err(AuthError::IpInvalid {
                        value: echo(item),
                        reason: format!("host bits are set; did you mean {}?", net.trunc()),
                    });
                }
                net
            };
            nets.push(unmap_net(net));
        }
        Ok(IpAllowlist(nets))
    }

    /// Returns whether `addr` may connect.
    pub fn allows(&self, addr: IpAddr) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let addr = unmap_addr(addr);
        self.0.iter().any(|net| net.contains(&addr))
    }

    /// Returns whether the list is empty (allows everything).
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Returns the entries as strings: a plain address for a single-host
    /// network, CIDR notation otherwise.
    pub fn to_strings(&self) -> Vec<String> {
        self.0
            .iter()
            .map(|net| {
                if net.prefix_len() == net.max_prefix_len() {
                    net.addr().to_string()
                } else {
                    net.to_string()
                }
            })
            .collect()
    }
}

impl Serialize for IpAllowlist {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_strings().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for IpAllowlist {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let items = Vec::<String>::deserialize(deserializer)?;
        IpAllowlist::parse(&items).map_err(serde::de::Error::custom)
    }
}

/// Turns an IPv4-mapped IPv6 address into the IPv4 address.
fn unmap_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Turns a network inside `::ffff:0:0/96` into the IPv4 network it maps.
fn unmap_net(net: IpNet) -> IpNet {
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(v4net) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(v4net);
    }
    net
}

// ---------------------------------------------------------------------------
// JWTs
// ---------------------------------------------------------------------------

/// The minimum length of an HMAC secret, in bytes (the output size of
/// SHA-256, as RFC 7518 section 3.2 requires for HS256).
const MIN_HMAC_SECRET_LEN: usize = 32;
/// The minimum RSA modulus size accepted for RS*/PS* keys, in bits.
const MIN_RSA_BITS: usize = 2048;
/// The longest JWT accepted, in bytes; longer input is refused before any
/// decoding work.
const MAX_JWT_LEN: usize = 16 * 1024;

/// Returns the default `max_lifetime_secs`.
fn default_max_lifetime_secs() -> u64 {
    3600
}
/// Returns the default `leeway_secs`.
fn default_leeway_secs() -> u64 {
    30
}
/// Returns the default `subject_claim`.
pub(crate) fn default_subject_claim() -> String {
    "sub".to_owned()
}
/// Returns the default `workspace_claim`.
pub(crate) fn default_workspace_claim() -> String {
    "wrun_workspace".to_owned()
}
/// Returns the default `role_claim`.
pub(crate) fn default_role_claim() -> String {
    "wrun_role".to_owned()
}

/// Configuration of the one JWT issuer the daemon trusts.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The exact `iss` value required.
    pub issuer: String,
    /// The audience that `aud` must name (exactly, or as one element of an
    /// array).
    pub audience: String,
    /// The one accepted algorithm, such as `RS256`, `ES256`, `EdDSA` or
    /// `HS256`. `none` is refused.
    pub algorithm: String,
    /// A PEM public key (SPKI `PUBLIC KEY`, `RSA PUBLIC KEY` or a
    /// certificate) for RS*, PS*, ES* and EdDSA.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The name of the environment variable holding the HMAC secret for HS*
    /// (at least 32 bytes).
    #[serde(default)]
    pub secret_env: Option<String>,
    /// The longest lifetime accepted: `exp - iat`, or `exp - now` when the
    /// token has no `iat`. Default 3600.
    #[serde(default = "default_max_lifetime_secs")]
    pub max_lifetime_secs: u64,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`. Default 30.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// The claim holding the subject. Default `sub`.
    #[serde(default = "default_subject_claim")]
    pub subject_claim: String,
    /// The claim holding the workspace name. Default `wrun_workspace`.
    #[serde(default = "default_workspace_claim")]
    pub workspace_claim: String,
    /// The claim holding the role. Default `wrun_role`.
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// Maps role claim values to wrun role names. When empty, the claim
    /// value is used as is, and only built-in role names are accepted.
    #[serde(default)]
    pub role_map: BTreeMap<String, String>,
}

impl JwtConfig {
    /// Returns a configuration with the given issuer, audience and algorithm
    /// and every other field at its default (no key file, no secret variable,
    /// 3600 s lifetime, 30 s leeway, claims `sub`, `wrun_workspace`,
    /// `wrun_role`, empty role map).
    #[cfg(test)]
    pub fn new(issuer: &str, audience: &str, algorithm: &str) -> JwtConfig {
        JwtConfig {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            algorithm: algorithm.to_owned(),
            key_file: None,
            secret_env: None,
            max_lifetime_secs: default_max_lifetime_secs(),
            leeway_secs: default_leeway_secs(),
            subject_claim: default_subject_claim(),
            workspace_claim: default_workspace_claim(),
            role_claim: default_role_claim(),
            role_map: BTreeMap::new(),
        }
    }
}

/// Who a verified JWT says the caller is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwtIdentity {
    /// The subject (from `subject_claim`).
    pub subject: String,
    /// The workspace (from `workspace_claim`).
    pub workspace: String,
    /// The wrun role name, after the role map.
    pub role: String,
}

/// Verifies JWTs from the configured issuer with a pinned algorithm and key.
pub struct JwtVerifier {
    /// The configuration, validated.
    config: JwtConfig,
    /// The parsed algorithm.
    algorithm: Algorithm,
    /// The verification key.
    key: DecodingKey,
    /// The `jsonwebtoken` validation, reduced to signature checking.
    validation: Validation,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.config.issuer)
            .field("audience", &self.config.audience)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Parses the configured algorithm name, refusing `none` and unknown names.
fn parse_algorithm(name: &str) -> Result<Algorithm, AuthError> {
    if name.eq_ignore_ascii_case("none") {
        return Err(AuthError::JwtConfig {
            reason: "algorithm `none` is never accepted".to_owned(),
        });
    }
    Algorithm::from_str(name).map_err(|_| AuthError::JwtConfig {
        reason: format!(
            "unknown algorithm `{}`: expected one of HS256, HS384, HS512, RS256, RS384, RS512, \
             PS256, PS384, PS512, ES256, ES384, EdDSA",
            echo(name)
        ),
    })
}

impl JwtVerifier {
    /// Builds a verifier from configuration, reading the key file or the
    /// HMAC secret environment variable.
    ///
    /// # Errors
    ///
    /// [`AuthError::JwtConfig`] if the algorithm is `none` or unknown, if an
    /// HS* algorithm is configured with a `key_file` or another one with a
    /// `secret_env`, or if the needed one is missing;
    /// [`AuthError::JwtKeyFile`], [`AuthError::JwtSecretMissing`] if the key
    /// cannot be read; and every error of [`JwtVerifier::from_parts`].
    pub fn new(config: &JwtConfig) -> Result<JwtVerifier, AuthError> {
        let algorithm = parse_algorithm(&config.algorithm)?;
        let material: Zeroizing<Vec<u8>> = if algorithm.family() == AlgorithmFamily::Hmac {
            if config.key_file.is_some() {
                return Err(AuthError::JwtConfig {
                    reason: format!(
                        "{} is an HMAC algorithm: set secret_env, not key_file",
                        config.algorithm
                    ),
                });
            }
            let var = config
                .secret_env
                .as_deref()
                .ok_or_else(|| AuthError::JwtConfig {
                    reason: format!(
                        "{} needs secret_env naming the variable that holds the secret",
                        config.algorithm
                    ),
                })?;
            let value = std::env::var(var).map_err(|_| AuthError::JwtSecretMissing {
                var: var.to_owned(),
            })?;
            Zeroizing::new(value.into_bytes())
        } else {
            if config.secret_env.is_some() {
                return Err(AuthError::JwtConfig {
                    reason: format!(
                        "{} is a public-key algorithm: set key_file, not secret_env",
                        config.algorithm
                    ),
                });
            }
            let path = config
                .key_file
                .as_deref()
                .ok_or_else(|| AuthError::JwtConfig {
                    reason: format!("{} needs key_file (a PEM public key)", config.algorithm),
                })?;
            Zeroizing::new(std::fs::read(path).map_err(|source| AuthError::JwtKeyFile {
                path: path.to_owned(),
                source,
            })?)
        };
        JwtVerifier::from_parts(config.clone(), &material)
    }

    /// Builds a verifier from configuration and key material given directly:
    /// the HMAC secret for HS*, the PEM public key otherwise. `key_file` and
    /// `secret_env` in `config` are ignored.
    ///
    /// # Errors
    ///
    /// [`AuthError::JwtConfig`] if the configuration is inconsistent (empty
    /// issuer or audience, zero lifetime, empty or equal claim names, a role
    /// map target that is not a valid role name, a PEM block given as HMAC
    /// secret); [`AuthError::JwtSecretTooShort`];
    /// [`AuthError::JwtKeyInvalid`] if the PEM key does not fit the
    /// algorithm.
    pub fn from_parts(config: JwtConfig, key_material: &[u8]) -> Result<JwtVerifier, AuthError> {
        let algorithm = parse_algorithm(&config.algorithm)?;
        check_config(&config)?;
        let key = load_key(algorithm, &config.algorithm, key_material)?;

        Ok(JwtVerifier {
            config,
            algorithm,
            key,
            validation: signature_only(algorithm),
        })
    }

    /// Verifies a JWT at time `now` (seconds since the Unix epoch) and
    /// returns the identity it carries.
    ///
    /// Checks, in order: size and shape; the header `alg` equals the
    /// configured algorithm exactly (so `none` and HS256-with-the-public-key
    /// are refused before any cryptography); no `crit` header; the
    /// signature; `exp` present and `now <= exp + leeway`; `nbf` and `iat`,
    /// if present, not after `now + leeway`; the lifetime (`exp - iat`, or
    /// `exp - now - leeway` without `iat`) at most `max_lifetime_secs`;
    /// `iss` equal to the issuer; `aud` equal to the audience or an array
    /// containing it; the subject, workspace and role claims non-empty
    /// strings; the role mapped through the role map.
    ///
    /// # Errors
    ///
    /// One `AuthError::Jwt*` variant per failed check; see the list above.
    pub fn verify(&self, token: &str, now: u64) -> Result<JwtIdentity, AuthError> {
        self.verify_with_claims(token, now)
            .map(|(identity, _)| identity)
    }

    /// Builds a verifier whose key is a JSON Web Key (an OpenID Connect
    /// provider's, from its `jwks_uri`); the algorithm is the configured
    /// one, checked against the key's type by `jsonwebtoken`.
    ///
    /// # Errors
    ///
    /// As [`JwtVerifier::from_parts`]; [`AuthError::JwtKeyInvalid`] if the
    /// key is not one `jsonwebtoken` can verify with, or is symmetric.
    pub fn from_jwk(
        config: JwtConfig,
        jwk: &jsonwebtoken::jwk::Jwk,
    ) -> Result<JwtVerifier, AuthError> {
        let algorithm = parse_algorithm(&config.algorithm)?;
        check_config(&config)?;
        let invalid = |reason: &str| AuthError::JwtKeyInvalid {
            algorithm: config.algorithm.clone(),
            reason: reason.to_owned(),
        };
        if algorithm.family() == AlgorithmFamily::Hmac
            || matches!(
                jwk.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
            )
        {
            return Err(invalid("a provider's key must be asymmetric"));
        }
        let key =
            DecodingKey::from_jwk(jwk).map_err(|_| invalid("the JSON Web Key does not load"))?;
        Ok(JwtVerifier {
            config,
            algorithm,
            key,
            validation: signature_only(algorithm),
        })
    }

    /// As [`JwtVerifier::verify`], also returning every claim (an OpenID
    /// Connect ID token's `nonce` is checked by its caller).
    ///
    /// # Errors
    ///
    /// As [`JwtVerifier::verify`].
    pub fn verify_with_claims(
        &self,
        token: &str,
        now: u64,
    ) -> Result<(JwtIdentity, serde_json::Map<String, serde_json::Value>), AuthError> {
        let malformed = |reason| AuthError::JwtMalformed { reason };
        if token.len() > MAX_JWT_LEN {
            return Err(malformed("it is longer than 16 KiB"));
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("it does not have three dot-separated parts"));
        };

        self.check_header(header_b64)?;

        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &self.key,
            &self.validation,
        )
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => AuthError::JwtInvalidSignature,
                K::InvalidAlgorithm | K::InvalidAlgorithmName => AuthError::JwtAlgorithmMismatch {
                    expected: self.config.algorithm.clone(),
                    found: "unrecognised".to_owned(),
                },
                K::Json(_) => malformed("its payload is not a JSON object"),
                K::Base64(_) | K::Utf8(_) | K::InvalidToken => {
                    malformed("a part is not valid base64url")
                }
                // Any other failure (a key the backend cannot use) means the
                // signature could not be verified.
                _ => AuthError::JwtInvalidSignature,
            }
        })?;
        let identity = self.check_claims(&data.claims, now)?;
        Ok((identity, data.claims))
    }

    /// Checks the raw JOSE header: `alg` must equal the configured name and
    /// `crit` must be absent.
    fn check_header(&self, header_b64: &str) -> Result<(), AuthError> {
        let malformed = |reason| AuthError::JwtMalformed { reason };
        let raw = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| malformed("its header is not valid base64url"))?;
        let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&raw)
            .map_err(|_| malformed("its header is not a JSON object"))?;
        let alg = match header.get("alg") {
            Some(serde_json::Value::String(alg)) => alg.as_str(),
            Some(_) => return Err(malformed("its header `alg` is not a string")),
            None => return Err(malformed("its header has no `alg`")),
        };
        if alg != self.config.algorithm {
            return Err(AuthError::JwtAlgorithmMismatch {
                expected: self.config.algorithm.clone(),
                found: alg
                    .chars()
                    .filter(char::is_ascii_alphanumeric)
                    .take(16)
                    .collect(),
            });
        }
        if header.contains_key("crit") {
            return Err(AuthError::JwtUnsupportedCrit);
        }
        Ok(())
    }

    /// Checks the claims of a token whose signature has been verified.
    fn check_claims(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
        now: u64,
    ) -> Result<JwtIdentity, AuthError> {
        let cfg = &self.config;
        let leeway = cfg.leeway_secs;

        let exp = numeric_date(claims, "exp", Rounding::Down)?.ok_or_else(|| {
            AuthError::JwtMissingClaim {
                claim: "exp".to_owned(),
            }
        })?;
        if now > exp.saturating_add(leeway) {
            return Err(AuthError::JwtExpired);
        }
        let nbf = numeric_date(claims, "nbf", Rounding::Up)?;
        if nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
            return Err(AuthError::JwtNotYetValid { claim: "nbf" });
        }
        let iat = numeric_date(claims, "iat", Rounding::Up)?;
        if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
            return Err(AuthError::JwtNotYetValid { claim: "iat" });
        }
        let (lifetime, allowed) = match iat {
            Some(iat) => (exp.saturating_sub(iat), cfg.max_lifetime_secs),
            // Without `iat` the remaining lifetime is measured against our
            // clock, so the issuer's clock skew is tolerated.
            None => (
                exp.saturating_sub(now),
                cfg.max_lifetime_secs.saturating_add(leeway),
            ),
        };
        if lifetime > allowed {
            return Err(AuthError::JwtLifetimeTooLong {
                lifetime_secs: lifetime,
                max_secs: cfg.max_lifetime_secs,
            });
        }

        match claims.get("iss") {
            None => {
                return Err(AuthError::JwtMissingClaim {
                    claim: "iss".to_owned(),
                });
            }
            Some(serde_json::Value::String(iss)) if *iss == cfg.issuer => {}
            Some(_) => return Err(AuthError::JwtWrongIssuer),
        }

        match claims.get("aud") {
            None => {
                return Err(AuthError::JwtMissingClaim {
                    claim: "aud".to_owned(),
                });
            }
            Some(serde_json::Value::String(aud)) if *aud == cfg.audience => {}
            Some(serde_json::Value::Array(auds))
                if auds
                    .iter()
                    .any(|a| a.as_str() == Some(cfg.audience.as_str())) => {}
            Some(_) => return Err(AuthError::JwtWrongAudience),
        }

        let subject = string_claim(claims, &cfg.subject_claim)?;
        let workspace = string_claim(claims, &cfg.workspace_claim)?;
        let role_value = string_claim(claims, &cfg.role_claim)?;
        let role = if cfg.role_map.is_empty() {
            if BUILTIN_ROLES.contains(&role_value.as_str()) {
                role_value
            } else {
                return Err(AuthError::JwtRoleUnmapped);
            }
        } else {
            cfg.role_map
                .get(&role_value)
                .cloned()
                .ok_or(AuthError::JwtRoleUnmapped)?
        };

        Ok(JwtIdentity {
            subject,
            workspace,
            role,
        })
    }
}

/// A `jsonwebtoken` validation reduced to signature checking: every claim
/// check happens in [`JwtVerifier::verify`] against the caller's `now`, so
/// that the crate's own clock and defaults (60 s leeway, optional `aud`) can
/// neither reject nor admit a token on their own.
fn signature_only(algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    validation
}

/// Validates the parts of a [`JwtConfig`] that do not depend on the key.
fn check_config(config: &JwtConfig) -> Result<(), AuthError> {
    let bad = |reason: String| Err(AuthError::JwtConfig { reason });
    if config.issuer.is_empty() {
        return bad("issuer must not be empty".to_owned());
    }
    if config.audience.is_empty() {
        return bad("audience must not be empty".to_owned());
    }
    if config.max_lifetime_secs == 0 {
        return bad("max_lifetime_secs must be greater than zero".to_owned());
    }
    let claims = [
        ("subject_claim", &config.subject_claim),
        ("workspace_claim", &config.workspace_claim),
        ("role_claim", &config.role_claim),
    ];
    for (field, name) in claims {
        if name.is_empty() {
            return bad(format!("{field} must not be empty"));
        }
        if ["exp", "nbf", "iat", "iss", "aud"].contains(&name.as_str()) {
            return bad(format!("{field} must not be the registered claim `{name}`"));
        }
    }
    if config.subject_claim == config.workspace_claim
        || config.subject_claim == config.role_claim
        || config.workspace_claim == config.role_claim
    {
        return bad("subject_claim, workspace_claim and role_claim must differ".to_owned());
    }
    for (from, to) in &config.role_map {
        if !valid_role_name(to) {
            return bad(format!(
                "role_map maps `{}` to `{}`, which is not a valid role name \
                 (1 to 64 of a-z, 0-9, _ and -)",
                echo(from),
                echo(to)
            ));
        }
    }
    Ok(())
}

/// Turns key material into a decoding key for `algorithm`, checking that the
/// key is usable so that a bad key fails at startup, not on every request.
fn load_key(algorithm: Algorithm, name: &str, material: &[u8]) -> Result<DecodingKey, AuthError> {
    let invalid = |reason: &str| AuthError::JwtKeyInvalid {
        algorithm: name.to_owned(),
        reason: reason.to_owned(),
    };
    let looks_pem = material.trim_ascii_start().starts_with(b"-----BEGIN");
    match algorithm.family() {
        AlgorithmFamily::Hmac => {
            if looks_pem {
                // Configuring a public key as an HMAC secret is exactly the
                // algorithm-confusion attack; refuse it outright.
                return Err(AuthError::JwtConfig {
                    reason: format!("{name} needs a shared secret, but a PEM block was given"),
                });
            }
            if material.len() < MIN_HMAC_SECRET_LEN {
                return Err(AuthError::JwtSecretTooShort {
                    len: material.len(),
                    min: MIN_HMAC_SECRET_LEN,
                });
            }
            Ok(DecodingKey::from_secret(material))
        }
        AlgorithmFamily::Rsa => {
            use rsa::pkcs1::DecodeRsaPublicKey as _;
            use rsa::traits::PublicKeyParts as _;
            let key = DecodingKey::from_rsa_pem(material)
                .map_err(|_| invalid("expected a PEM RSA public key"))?;
            let der = key
                .try_get_as_bytes()
                .map_err(|_| invalid("expected a PEM RSA public key"))?;
            let public = rsa::RsaPublicKey::from_pkcs1_der(der)
                .map_err(|_| invalid("the PEM block is not a valid RSA public key"))?;
            if public.size() * 8 < MIN_RSA_BITS {
                return Err(invalid("the RSA key is shorter than 2048 bits"));
            }
            Ok(key)
        }
        AlgorithmFamily::Ec => {
            let key = DecodingKey::from_ec_pem(material)
                .map_err(|_| invalid("expected a PEM EC public key"))?;
            check_key_with_backend(&key, algorithm)
                .map_err(|_| invalid("the key is not on the curve this algorithm uses"))?;
            Ok(key)
        }
        AlgorithmFamily::Ed => {
            let key = DecodingKey::from_ed_pem(material)
                .map_err(|_| invalid("expected a PEM Ed25519 public key"))?;
            // The backend slices the first 32 bytes without a length check;
            // make sure it never sees a shorter key.
            if key.try_get_as_bytes().map(<[u8]>::len).ok() != Some(32) {
                return Err(invalid("an Ed25519 public key is 32 bytes"));
            }
            check_key_with_backend(&key, algorithm)
                .map_err(|_| invalid("the key is not a valid Ed25519 point"))?;
            Ok(key)
        }
    }
}

/// Lets the crypto backend build its verifier for `key`; it parses the key
/// while doing so and fails if the key is unusable. The dummy signature
/// itself is irrelevant: only an `Err` (as opposed to `Ok(false)`) matters.
fn check_key_with_backend(
    key: &DecodingKey,
    algorithm: Algorithm,
) -> Result<(), jsonwebtoken::errors::Error> {
    jsonwebtoken::crypto::verify("AAAA", b"wrun.key.check", key, algorithm).map(|_| ())
}

/// How to round a fractional NumericDate.
#[derive(Clone, Copy)]
enum Rounding {
    /// Towards the past (for `exp`: never extends validity).
    Down,
    /// Towards the future (for `nbf` and `iat`: never starts validity early).
    Up,
}

/// Reads an optional NumericDate claim (seconds since the epoch, integer or
/// fractional, non-negative).
fn numeric_date(
    claims: &serde_json::Map<String, serde_json::Value>,
    name: &str,
    rounding: Rounding,
) -> Result<Option<u64>, AuthError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    let invalid = || AuthError::JwtClaimInvalid {
        claim: name.to_owned(),
        expected: "a non-negative number of seconds since the Unix epoch",
    };
    let serde_json::Value::Number(n) = value else {
        return Err(invalid());
    };
    if let Some(v) = n.as_u64() {
        return Ok(Some(v));
    }
    // 2^53: beyond it f64 is not exact, and such dates are nonsense anyway.
    const MAX_EXACT: f64 = 9_007_199_254_740_992.0;
    match n.as_f64() {
        Some(f) if f.is_finite() && (0.0..MAX_EXACT).contains(&f) => {
            let rounded = match rounding {
                Rounding::Down => f.floor(),
                Rounding::Up => f.ceil(),
            };
            // The range check above makes this cast exact.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            Ok(Some(rounded as u64))
        }
        _ => Err(invalid()),
    }
}

/// Reads a required, non-empty string claim.
fn string_claim(
    claims: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<String, AuthError> {
    match claims.get(name) {
        None => Err(AuthError::JwtMissingClaim {
            claim: name.to_owned(),
        }),
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(AuthError::JwtClaimInvalid {
            claim: name.to_owned(),
            expected: "a non-empty string",
        }),
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    // --- API tokens ------------------------------------------------------

    #[test]
    fn generated_token_has_documented_shape() {
        let t = NewToken::generate();
        let s: &str = &t.display;
        assert_eq!(s.len(), 72);
        assert!(s.starts_with("wrun_pat_"));
        assert_eq!(&s[9..21], t.id);
        assert_eq!(&s[21..22], "_");
        assert_eq!(&s[65..66], "_");
        assert!(t.id.bytes().all(is_base32));
        assert!(s[22..65].bytes().all(is_base64url));
        assert!(s[66..].bytes().all(is_base32));
        let p = parse_token(s).unwrap();
        assert_eq!(p.id, t.id);
        assert!(hashes_match(&p.hash, &t.hash));
        let raw = URL_SAFE_NO_PAD.decode(&s[22..65]).unwrap();
        assert_eq!(<[u8; 32]>::from(Sha256::digest(&raw)), t.hash);
    }

    #[test]
    fn generated_tokens_differ() {
        let a = NewToken::generate();
        let b = NewToken::generate();
        assert_ne!(a.id, b.id);
        assert_ne!(*a.display, *b.display);
        assert!(!hashes_match(&a.hash, &b.hash));
    }

    #[test]
    fn checksum_is_crc32_of_body() {
        let t = NewToken::generate();
        let body = &t.display[..65];
        let crc = crc32fast::hash(body.as_bytes()) & 0x3fff_ffff;
        let mut expect = String::new();
        for i in (0..6).rev() {
            expect.push(char::from(BASE32[((crc >> (5 * i)) & 31) as usize]));
        }
        assert_eq!(&t.display[66..], expect);
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = NewToken::generate();
        let secret = &t.display[22..65];
        let dbg = format!("{t:?}");
        assert!(dbg.contains(&t.id));
        assert!(!dbg.contains(secret));
        assert!(!dbg.contains(t.display.as_str()));
        let p = parse_token(&t.display).unwrap();
        let dbg = format!("{p:?}");
        assert!(!dbg.contains(secret));
        // The hash is not printed either.
        assert!(!dbg.contains("hash"));
    }

    #[test]
    fn parse_rejects_malformed_tokens() {
        let t = NewToken::generate();
        let good = t.display.as_str();
        let mut cases: Vec<(String, &str)> = vec![
            (String::new(), "token_malformed"),
            ("Bearer x".into(), "token_malformed"),
            (
                good.replacen("wrun_pat_", "wrun_pas_", 1),
                "token_malformed",
            ),
            (good.to_uppercase(), "token_malformed"),
            (good[..71].to_owned(), "token_malformed"),
            (format!("{good}a"), "token_malformed"),
            (format!(" {}", &good[1..]), "token_malformed"),
            (format!("{} ", &good[..71]), "token_malformed"),
        ];
        // Separators replaced.
        let mut s = good.to_owned().into_bytes();
        s[21] = b'x';
        cases.push((String::from_utf8(s).unwrap(), "token_malformed"));
        let mut s = good.to_owned().into_bytes();
        s[65] = b'x';
        cases.push((String::from_utf8(s).unwrap(), "token_malformed"));
        // Characters outside the alphabets.
        let mut s = good.to_owned().into_bytes();
        s[10] = b'1';
        cases.push((String::from_utf8(s).unwrap(), "token_malformed"));
        let mut s = good.to_owned().into_bytes();
        s[30] = b'+';
        cases.push((String::from_utf8(s).unwrap(), "token_malformed"));
        let mut s = good.to_owned().into_bytes();
        s[70] = b'A';
        cases.push((String::from_utf8(s).unwrap(), "token_malformed"));
        // A multi-byte character at the right byte length.
        let mut s = good[..70].to_owned();
        s.push('é');
        assert_eq!(s.len(), 72);
        cases.push((s, "token_malformed"));

        for (case, code) in &cases {
            let err = parse_token(case).unwrap_err();
            assert_eq!(err.code(), *code, "{case:?}");
            let msg = err.to_string();
            assert!(!msg.contains(&good[22..65]), "message echoes the secret");
        }
    }

    #[test]
    fn parse_detects_typos_by_checksum() {
        let t = NewToken::generate();
        let good = t.display.as_str();
        // Change one character in the id, the secret and the checksum.
        for pos in [12, 40, 68] {
            let mut s = good.to_owned().into_bytes();
            s[pos] = if s[pos] == b'a' { b'b' } else { b'a' };
            let err = parse_token(std::str::from_utf8(&s).unwrap()).unwrap_err();
            assert_eq!(err.code(), "token_checksum_mismatch", "pos {pos}");
        }
        // Two swapped adjacent characters in the secret.
        let mut s = good.to_owned().into_bytes();
        if let Some(i) = (22..64).find(|&i| s[i] != s[i + 1]) {
            s.swap(i, i + 1);
            let err = parse_token(std::str::from_utf8(&s).unwrap()).unwrap_err();
            assert_eq!(err.code(), "token_checksum_mismatch");
        }
    }

    #[test]
    fn parse_rejects_non_canonical_secret_with_valid_checksum() {
        // The last base64url character of 32 bytes carries two unused bits;
        // a token whose secret sets them is not one we issued.
        let t = NewToken::generate();
        let mut body = t.display[..65].to_owned().into_bytes();
        let last = body[64];
        // Flip the lowest bit of the last sextet (always one of the unused bits).
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let pos = alphabet.iter().position(|&c| c == last).unwrap();
        body[64] = alphabet[pos ^ 1];
        let checksum = token_checksum(&body);
        let mut s = String::from_utf8(body).unwrap();
        s.push('_');
        s.push_str(std::str::from_utf8(&checksum).unwrap());
        let err = parse_token(&s).unwrap_err();
        assert_eq!(err.code(), "token_malformed");
    }

    #[test]
    fn constant_time_compare() {
        let a = [7u8; 32];
        let mut b = a;
        assert!(hashes_match(&a, &b));
        b[31] ^= 1;
        assert!(!hashes_match(&a, &b));
        b = a;
        b[0] ^= 0x80;
        assert!(!hashes_match(&a, &b));
    }

    // --- IP allowlists ---------------------------------------------------

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn empty_allowlist_allows_all() {
        let empty: [&str; 0] = [];
        let list = IpAllowlist::parse(&empty).unwrap();
        assert!(list.is_empty());
        assert!(list.allows(ip("203.0.113.9")));
        assert!(list.allows(ip("2001:db8::1")));
    }

    #[test]
    fn allowlist_matches_networks_and_addresses() {
        let list =
            IpAllowlist::parse(&["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1"]).unwrap();
        assert!(list.allows(ip("10.255.0.1")));
        assert!(!list.allows(ip("11.0.0.1")));
        assert!(list.allows(ip("192.0.2.7")));
        assert!(!list.allows(ip("192.0.2.8")));
        assert!(list.allows(ip("2001:db8:ffff::1")));
        assert!(!list.allows(ip("2001:db9::1")));
        assert!(list.allows(ip("::1")));
        assert!(!list.allows(ip("127.0.0.1")));
        assert_eq!(
            list.to_strings(),
            ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1"]
        );
    }

    #[test]
    fn ipv4_mapped_addresses_match_as_ipv4() {
        let list = IpAllowlist::parse(&["10.0.0.0/8"]).unwrap();
        assert!(list.allows(ip("::ffff:10.1.2.3")));
        assert!(!list.allows(ip("::ffff:11.1.2.3")));
        // An IPv4-compatible (deprecated, not mapped) address is not IPv4.
        assert!(!list.allows(ip("::10.1.2.3")));
        // Mapped entries become IPv4 entries.
        let list = IpAllowlist::parse(&["::ffff:192.0.2.0/120", "::ffff:198.51.100.1"]).unwrap();
        assert_eq!(list.to_strings(), ["192.0.2.0/24", "198.51.100.1"]);
        assert!(list.allows(ip("192.0.2.200")));
        assert!(list.allows(ip("::ffff:192.0.2.200")));
        assert!(list.allows(ip("198.51.100.1")));
    }

    #[test]
    fn allowlist_rejects_bad_entries() {
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0",
            "example.com",
            "10.1.2.3/8",
            " 10.0.0.1",
            "2001:db8::1/32",
        ] {
            let err = IpAllowlist::parse(&["127.0.0.1", bad]).unwrap_err();
            assert_eq!(err.code(), "ip_allowlist_invalid", "{bad:?}");
        }
        let err = IpAllowlist::parse(&["10.1.2.3/8"]).unwrap_err();
        assert!(err.to_string().contains("10.0.0.0/8"), "{err}");
    }

    #[test]
    fn allowlist_serde() {
        let list: IpAllowlist = serde_json::from_str(r#"["10.0.0.0/8","::1"]"#).unwrap();
        assert_eq!(
            serde_json::to_string(&list).unwrap(),
            r#"["10.0.0.0/8","::1"]"#
        );
        assert!(serde_json::from_str::<IpAllowlist>(r#"["nope"]"#).is_err());
    }

    // --- JWTs ------------------------------------------------------------

    const NOW: u64 = 1_700_000_000;
    const ISS: &str = "https://idp.example";
    const AUD: &str = "wrun";
    const HMAC_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-test";

    fn claims() -> serde_json::Value {
        json!({
            "iss": ISS,
            "aud": AUD,
            "sub": "alice@example",
            "iat": NOW - 10,
            "exp": NOW + 600,
            "wrun_workspace": "payments",
            "wrun_role": "operator",
        })
    }

    fn with(mut base: serde_json::Value, key: &str, value: serde_json::Value) -> serde_json::Value {
        base[key] = value;
        base
    }

    fn without(mut base: serde_json::Value, key: &str) -> serde_json::Value {
        base.as_object_mut().unwrap().remove(key);
        base
    }

    fn hs_verifier() -> JwtVerifier {
        JwtVerifier::from_parts(JwtConfig::new(ISS, AUD, "HS256"), HMAC_SECRET).unwrap()
    }

    fn hs_sign(claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(HMAC_SECRET),
        )
        .unwrap()
    }

    /// An ECDSA P-256 key pair: (private PKCS#8 PEM, public SPKI PEM).
    fn es256_keys() -> (String, String) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        (kp.serialize_pem(), kp.public_key_pem())
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Builds `header.payload` from raw JSON values, for hand-crafted tokens.
    fn unsigned(header: &serde_json::Value, claims: &serde_json::Value) -> String {
        format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        )
    }

    fn code(result: Result<JwtIdentity, AuthError>) -> &'static str {
        result.unwrap_err().code()
    }

    #[test]
    fn hs256_good_token() {
        let v = hs_verifier();
        let id = v.verify(&hs_sign(&claims()), NOW).unwrap();
        assert_eq!(
            id,
            JwtIdentity {
                subject: "alice@example".into(),
                workspace: "payments".into(),
                role: "operator".into(),
            }
        );
    }

    #[test]
    fn es256_good_token_and_wrong_key() {
        let (private, public) = es256_keys();
        let v =
            JwtVerifier::from_parts(JwtConfig::new(ISS, AUD, "ES256"), public.as_bytes()).unwrap();
        let key = EncodingKey::from_ec_pem(private.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(), &key).unwrap();
        assert_eq!(v.verify(&token, NOW).unwrap().role, "operator");

        let (other_private, _) = es256_keys();
        let other = EncodingKey::from_ec_pem(other_private.as_bytes()).unwrap();
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims(), &other).unwrap();
        assert_eq!(code(v.verify(&token, NOW)), "jwt_invalid_signature");
    }

    #[test]
    fn eddsa_good_token() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let v = JwtVerifier::from_parts(
            JwtConfig::new(ISS, AUD, "EdDSA"),
            kp.public_key_pem().as_bytes(),
        )
        .unwrap();
        let key = EncodingKey::from_ed_pem(kp.serialize_pem().as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims(), &key).unwrap();
        assert_eq!(v.verify(&token, NOW).unwrap().subject, "alice@example");
    }

    /// An RSA-2048 key pair: (private PKCS#1 PEM, public SPKI PEM).
    fn rsa_keys() -> (String, String) {
        use rsa::pkcs1::EncodeRsaPrivateKey as _;
        use rsa::pkcs8::{EncodePublicKey as _, LineEnding};
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let public = private.to_public_key();
        (
            private.to_pkcs1_pem(LineEnding::LF).unwrap().to_string(),
            public.to_public_key_pem(LineEnding::LF).unwrap(),
        )
    }

    #[test]
    fn rs256_good_token_and_algorithm_confusion() {
        let (private, public) = rsa_keys();
        let v =
            JwtVerifier::from_parts(JwtConfig::new(ISS, AUD, "RS256"), public.as_bytes()).unwrap();
        let key = EncodingKey::from_rsa_pem(private.as_bytes()).unwrap();
        let token = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(), &key).unwrap();
        assert_eq!(v.verify(&token, NOW).unwrap().workspace, "payments");

        // HS256 signed with the public key PEM as the HMAC secret.
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(public.as_bytes()),
        )
        .unwrap();
        assert_eq!(code(v.verify(&forged, NOW)), "jwt_algorithm_mismatch");

        // The same HMAC signature under a header that claims RS256.
        let message = unsigned(&json!({"alg": "RS256", "typ": "JWT"}), &claims());
        let sig = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(public.as_bytes()),
            Algorithm::HS256,
        )
        .unwrap();
        let forged = format!("{message}.{sig}");
        assert_eq!(code(v.verify(&forged, NOW)), "jwt_invalid_signature");

        // A short RSA key is refused at configuration time.
        use rsa::pkcs8::{EncodePublicKey as _, LineEnding};
        let small = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).unwrap();
        let small_pem = small
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        let err = JwtVerifier::from_parts(JwtConfig::new(ISS, AUD, "RS256"), small_pem.as_bytes())
            .unwrap_err();
        assert_eq!(err.code(), "jwt_key_invalid");
    }

    #[test]
    fn hs256_forged_with_es256_public_key_is_refused() {
        let (_, public) = es256_keys();
        let v =
            JwtVerifier::from_parts(JwtConfig::new(ISS, AUD, "ES256"), public.as_bytes()).unwrap();
        let forged = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(public.as_bytes()),
        )
        .unwrap();
        assert_eq!(code(v.verify(&forged, NOW)), "jwt_algorithm_mismatch");
    }

    #[test]
    fn alg_none_is_refused() {
        let v = hs_verifier();
        for alg in ["none", "None", "NONE", "nOnE"] {
            let token = format!(
                "{}.",
                unsigned(&json!({"alg": alg, "typ": "JWT"}), &claims())
            );
            let err = v.verify(&token, NOW).unwrap_err();
            assert_eq!(err.code(), "jwt_algorithm_mismatch", "{alg}");
        }
        // Also with a signature part that is present but garbage.
        let token = format!("{}.AAAA", unsigned(&json!({"alg": "none"}), &claims()));
        assert_eq!(code(v.verify(&token, NOW)), "jwt_algorithm_mismatch");
    }

    #[test]
    fn other_hmac_algorithm_is_refused() {
        let v = hs_verifier();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims(),
            &EncodingKey::from_secret(HMAC_SECRET),
        )
        .unwrap();
        assert_eq!(code(v.verify(&token, NOW)), "jwt_algorithm_mismatch");
    }

    #[test]
    fn wrong_hmac_key() {
        let v = hs_verifier();
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims(),
            &EncodingKey::from_secret(b"another-secret-that-is-long-enough!!"),
        )
        .unwrap();
        assert_eq!(code(v.verify(&token, NOW)), "jwt_invalid_signature");
    }

    #[test]
    fn tampered_payload() {
        let v = hs_verifier();
        let token = hs_sign(&claims());
        let mut parts: Vec<&str> = token.split('.').collect();
        let evil = b64(with(claims(), "wrun_role", json!("admin"))
            .to_string()
            .as_bytes());
        parts[1] = &evil;
        assert_eq!(
            code(v.verify(&parts.join("."), NOW)),
            "jwt_invalid_signature"
        );
    }

    #[test]
    fn expiry_and_leeway() {
        let v = hs_verifier();
        let token = hs_sign(&claims()); // exp = NOW + 600, leeway 30
        assert!(v.verify(&token, NOW + 600).is_ok());
        assert!(v.verify(&token, NOW + 630).is_ok(), "within leeway");
        assert_eq!(code(v.verify(&token, NOW + 631)), "jwt_expired");
        assert_eq!(code(v.verify(&token, NOW + 100_000)), "jwt_expired");
    }

    #[test]
    fn expiry_is_checked_against_given_now_not_system_clock() {
        // A token that expired long ago by the real clock is valid at `now`
        // (proves the crate's own clock check is off) ...
        let v = hs_verifier();
        let old = json!({
            "iss": ISS, "aud": AUD, "sub": "a", "wrun_workspace": "w", "wrun_role": "admin",
            "iat": 1000, "exp": 2000,
        });
        assert!(v.verify(&hs_sign(&old), 1500).is_ok());
        // ... and a token valid by the real clock is expired at a later `now`.
        assert_eq!(code(v.verify(&hs_sign(&claims()), u64::MAX)), "jwt_expired");
    }

    #[test]
    fn missing_exp() {
        let v = hs_verifier();
        let token = hs_sign(&without(claims(), "exp"));
        let err = v.verify(&token, NOW).unwrap_err();
        assert_eq!(err.code(), "jwt_missing_claim");
        assert!(err.to_string().contains("`exp`"));
    }

    #[test]
    fn lifetime_too_long() {
        let v = hs_verifier(); // max 3600
        let ok = with(claims(), "exp", json!(NOW - 10 + 3600));
        assert!(v.verify(&hs_sign(&ok), NOW).is_ok());
        let long = with(claims(), "exp", json!(NOW - 10 + 3601));
        let err = v.verify(&hs_sign(&long), NOW).unwrap_err();
        assert_eq!(err.code(), "jwt_lifetime_too_long");
        // Without iat: exp - now, with leeway for clock skew.
        let no_iat = without(claims(), "iat");
        let ok = with(no_iat.clone(), "exp", json!(NOW + 3600 + 30));
        assert!(v.verify(&hs_sign(&ok), NOW).is_ok());
        let long = with(no_iat, "exp", json!(NOW + 3600 + 31));
        assert_eq!(
            code(v.verify(&hs_sign(&long), NOW)),
            "jwt_lifetime_too_long"
        );
        // A token issued long ago with a far exp is refused even though
        // little of its lifetime remains.
        let old = with(
            with(claims(), "iat", json!(NOW - 86_400)),
            "exp",
            json!(NOW + 60),
        );
        assert_eq!(code(v.verify(&hs_sign(&old), NOW)), "jwt_lifetime_too_long");
    }

    #[test]
    fn nbf_and_iat_in_future() {
        let v = hs_verifier();
        let ok = with(claims(), "nbf", json!(NOW + 30));
        assert!(v.verify(&hs_sign(&ok), NOW).is_ok(), "within leeway");
        let future = with(claims(), "nbf", json!(NOW + 31));
        let err = v.verify(&hs_sign(&future), NOW).unwrap_err();
        assert_eq!(err.code(), "jwt_not_yet_valid");
        assert!(v.verify(&hs_sign(&future), NOW + 1).is_ok());
        let future_iat = with(claims(), "iat", json!(NOW + 120));
        assert_eq!(
            code(v.verify(&hs_sign(&future_iat), NOW)),
            "jwt_not_yet_valid"
        );
    }

    #[test]
    fn fractional_dates_are_rounded_safely() {
        let v = hs_verifier();
        let t = with(claims(), "exp", json!((NOW + 600) as f64 + 0.9));
        assert!(v.verify(&hs_sign(&t), NOW + 630).is_ok());
        assert_eq!(code(v.verify(&hs_sign(&t), NOW + 631)), "jwt_expired");
        let t = with(claims(), "nbf", json!((NOW + 30) as f64 + 0.1));
        assert_eq!(code(v.verify(&hs_sign(&t), NOW)), "jwt_not_yet_valid");
    }

    #[test]
    fn audience() {
        let v = hs_verifier();
        for good in [json!(AUD), json!(["other", AUD])] {
            assert!(
                v.verify(&hs_sign(&with(claims(), "aud", good)), NOW)
                    .is_ok()
            );
        }
        for bad in [
            json!("wrun2"),
            json!("WRUN"),
            json!(" wrun"),
            json!(["other"]),
            json!([]),
            json!(42),
            json!(null),
            json!({"aud": AUD}),
        ] {
            let t = hs_sign(&with(claims(), "aud", bad.clone()));
            assert_eq!(code(v.verify(&t, NOW)), "jwt_wrong_audience", "{bad}");
        }
        assert_eq!(
            code(v.verify(&hs_sign(&without(claims(), "aud")), NOW)),
            "jwt_missing_claim"
        );
    }

    #[test]
    fn issuer() {
        let v = hs_verifier();
        for bad in [
            json!("https://idp.example/"),
            json!("https://evil.example"),
            json!([ISS]),
            json!(1),
        ] {
            let t = hs_sign(&with(claims(), "iss", bad.clone()));
            assert_eq!(code(v.verify(&t, NOW)), "jwt_wrong_issuer", "{bad}");
        }
        assert_eq!(
            code(v.verify(&hs_sign(&without(claims(), "iss")), NOW)),
            "jwt_missing_claim"
        );
    }

    #[test]
    fn wrong_claim_types() {
        let v = hs_verifier();
        let cases = [
            ("exp", json!("1700000600")),
            ("exp", json!(-1)),
            ("exp", json!(null)),
            ("nbf", json!("soon")),
            ("iat", json!(true)),
            ("sub", json!(42)),
            ("sub", json!("")),
            ("wrun_workspace", json!(7)),
            ("wrun_workspace", json!(["payments"])),
            ("wrun_role", json!(["admin"])),
            ("wrun_role", json!({"name": "admin"})),
        ];
        for (claim, value) in cases {
            let t = hs_sign(&with(claims(), claim, value.clone()));
            let err = v.verify(&t, NOW).unwrap_err();
            assert_eq!(err.code(), "jwt_claim_invalid", "{claim}={value}");
            assert!(err.to_string().contains(claim));
        }
        for claim in ["sub", "wrun_workspace", "wrun_role"] {
            let t = hs_sign(&without(claims(), claim));
            assert_eq!(code(v.verify(&t, NOW)), "jwt_missing_claim", "{claim}");
        }
    }

    #[test]
    fn role_mapping() {
        // Empty map: builtin names only.
        let v = hs_verifier();
        for role in BUILTIN_ROLES {
            let t = hs_sign(&with(claims(), "wrun_role", json!(role)));
            assert_eq!(v.verify(&t, NOW).unwrap().role, role);
        }
        for role in ["Admin", "root", "release-managers"] {
            let t = hs_sign(&with(claims(), "wrun_role", json!(role)));
            assert_eq!(code(v.verify(&t, NOW)), "jwt_role_unmapped", "{role}");
        }

        // With a map: only mapped values, even builtin names.
        let mut cfg = JwtConfig::new(ISS, AUD, "HS256");
        cfg.role_map.insert("wrun-admins".into(), "admin".into());
        cfg.role_map
            .insert("release".into(), "release-managers".into());
        let v = JwtVerifier::from_parts(cfg, HMAC_SECRET).unwrap();
        let t = hs_sign(&with(claims(), "wrun_role", json!("wrun-admins")));
        assert_eq!(v.verify(&t, NOW).unwrap().role, "admin");
        let t = hs_sign(&with(claims(), "wrun_role", json!("release")));
        assert_eq!(v.verify(&t, NOW).unwrap().role, "release-managers");
        let t = hs_sign(&with(claims(), "wrun_role", json!("admin")));
        assert_eq!(code(v.verify(&t, NOW)), "jwt_role_unmapped");
    }

    #[test]
    fn custom_claim_names() {
        let mut cfg = JwtConfig::new(ISS, AUD, "HS256");
        cfg.subject_claim = "email".into();
        cfg.workspace_claim = "team".into();
        cfg.role_claim = "groups_role".into();
        let v = JwtVerifier::from_parts(cfg, HMAC_SECRET).unwrap();
        let c = json!({
            "iss": ISS, "aud": AUD, "exp": NOW + 60,
            "email": "bob@example", "team": "ops", "groups_role": "analyst",
        });
        let id = v.verify(&hs_sign(&c), NOW).unwrap();
        assert_eq!(
            (id.subject.as_str(), id.workspace.as_str(), id.role.as_str()),
            ("bob@example", "ops", "analyst")
        );
    }

    #[test]
    fn malformed_jwts() {
        let v = hs_verifier();
        let good = hs_sign(&claims());
        let cases = [
            String::new(),
            "abc".to_owned(),
            "a.b".to_owned(),
            format!("{good}.extra"),
            "!!!.e30.".to_owned(),
            format!("{}.e30.", b64(b"not json")),
            format!("{}.e30.", b64(b"[]")),
            format!("{}.e30.", b64(br#"{"typ":"JWT"}"#)),
            format!("{}.e30.", b64(br#"{"alg":256}"#)),
            "x".repeat(MAX_JWT_LEN + 1),
        ];
        for case in &cases {
            let err = v.verify(case, NOW).unwrap_err();
            assert_eq!(err.code(), "jwt_malformed", "{case:.40}");
        }
        // A payload that is not an object, correctly signed.
        let message = format!("{}.{}", b64(br#"{"alg":"HS256"}"#), b64(b"[1,2]"));
        let sig = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(HMAC_SECRET),
            Algorithm::HS256,
        )
        .unwrap();
        assert_eq!(
            code(v.verify(&format!("{message}.{sig}"), NOW)),
            "jwt_malformed"
        );
    }

    #[test]
    fn crit_header_is_refused() {
        let v = hs_verifier();
        let message = unsigned(
            &json!({"alg": "HS256", "crit": ["b64"], "b64": false}),
            &claims(),
        );
        let sig = jsonwebtoken::crypto::sign(
            message.as_bytes(),
            &EncodingKey::from_secret(HMAC_SECRET),
            Algorithm::HS256,
        )
        .unwrap();
        assert_eq!(
            code(v.verify(&format!("{message}.{sig}"), NOW)),
            "jwt_unsupported_crit"
        );
    }

    #[test]
    fn error_messages_do_not_echo_tokens() {
        let v = hs_verifier();
        let token = hs_sign(&with(claims(), "aud", json!("elsewhere")));
        let err = v.verify(&token, NOW).unwrap_err();
        let msg = format!("{err} {err:?}");
        for part in token.split('.') {
            assert!(!msg.contains(part));
        }
        // The algorithm echoed from the header is reduced to a short name.
        let long_alg = "A".repeat(100) + "<script>";
        let t = format!("{}.", unsigned(&json!({"alg": long_alg}), &claims()));
        let err = v.verify(&t, NOW).unwrap_err();
        assert!(!err.to_string().contains("<script>"));
        assert!(!err.to_string().contains(&"A".repeat(17)));
    }

    #[test]
    fn verifier_debug_hides_key() {
        let v = hs_verifier();
        let dbg = format!("{v:?}");
        assert!(!dbg.contains("0123456789abcdef"));
        assert!(dbg.contains("HS256"));
    }

    // --- JWT configuration -------------------------------------------------

    #[test]
    fn config_defaults_from_json() {
        let cfg: JwtConfig = serde_json::from_value(json!({
            "issuer": ISS, "audience": AUD, "algorithm": "ES256", "key_file": "/k.pem",
        }))
        .unwrap();
        assert_eq!(cfg.max_lifetime_secs, 3600);
        assert_eq!(cfg.leeway_secs, 30);
        assert_eq!(cfg.subject_claim, "sub");
        assert_eq!(cfg.workspace_claim, "wrun_workspace");
        assert_eq!(cfg.role_claim, "wrun_role");
        assert!(cfg.role_map.is_empty());
        assert!(
            serde_json::from_value::<JwtConfig>(json!({
                "issuer": ISS, "audience": AUD, "algorithm": "ES256", "key_fle": "/k.pem",
            }))
            .is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn config_refuses_none_and_unknown_algorithms() {
        for alg in ["none", "None", "HS1", "rs256", ""] {
            let err =
                JwtVerifier::from_parts(JwtConfig::new(ISS, AUD, alg), HMAC_SECRET).unwrap_err();
            assert_eq!(err.code(), "jwt_config_invalid", "{alg}");
        }
    }

    #[test]
    fn config_refuses_mismatched_key_kinds() {
        let (_, public) = es256_keys();
        // HS256 with a PEM key as secret.
        let err = JwtVerifier::from_parts(JwtConfig::new(ISS, AUD, "HS256"), public.as_bytes())
            .unwrap_err();
        assert_eq!(err.code(), "jwt_config_invalid");
        // ES256 / RS256 / EdDSA with a plain secret.
        for alg in ["ES256", "RS256", "EdDSA"] {
            let err =
                JwtVerifier::from_parts(JwtConfig::new(ISS, AUD, alg), HMAC_SECRET).unwrap_err();
            assert_eq!(err.code(), "jwt_key_invalid", "{alg}");
        }
        // An EC key for RS256 and for EdDSA, a P-256 key for ES384.
        for alg in ["RS256", "EdDSA", "ES384"] {
            let err = JwtVerifier::from_parts(JwtConfig::new(ISS, AUD, alg), public.as_bytes())
                .unwrap_err();
            assert_eq!(err.code(), "jwt_key_invalid", "{alg}");
        }
        // Through `new`: key_file with HS*, secret_env with ES*, neither.
        let mut cfg = JwtConfig::new(ISS, AUD, "HS256");
        cfg.key_file = Some("/nonexistent.pem".into());
        assert_eq!(
            JwtVerifier::new(&cfg).unwrap_err().code(),
            "jwt_config_invalid"
        );
        let mut cfg = JwtConfig::new(ISS, AUD, "ES256");
        cfg.secret_env = Some("WRUN_TEST_NOPE".into());
        assert_eq!(
            JwtVerifier::new(&cfg).unwrap_err().code(),
            "jwt_config_invalid"
        );
        for alg in ["HS256", "ES256"] {
            let cfg = JwtConfig::new(ISS, AUD, alg);
            assert_eq!(
                JwtVerifier::new(&cfg).unwrap_err().code(),
                "jwt_config_invalid"
            );
        }
    }

    #[test]
    fn config_new_reads_key_file_and_env() {
        let (_, public) = es256_keys();
        let dir = std::env::temp_dir().join(format!("wrun-auth-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("es256.pem");
        std::fs::write(&path, &public).unwrap();
        let mut cfg = JwtConfig::new(ISS, AUD, "ES256");
        cfg.key_file = Some(path.clone());
        assert!(JwtVerifier::new(&cfg).is_ok());
        cfg.key_file = Some(dir.join("missing.pem"));
        assert_eq!(
            JwtVerifier::new(&cfg).unwrap_err().code(),
            "jwt_key_unreadable"
        );
        std::fs::remove_dir_all(&dir).unwrap();

        // The variable name is unique to this test and never set, so reading
        // it is safe without touching the process environment.
        let mut cfg = JwtConfig::new(ISS, AUD, "HS256");
        cfg.secret_env = Some("WRUN_AUTH_TEST_UNSET_VARIABLE_7F3A".into());
        let err = JwtVerifier::new(&cfg).unwrap_err();
        assert_eq!(err.code(), "jwt_secret_missing");
        assert!(
            err.to_string()
                .contains("WRUN_AUTH_TEST_UNSET_VARIABLE_7F3A")
        );
    }

    #[test]
    fn config_refuses_short_secret_and_bad_fields() {
        let err =
            JwtVerifier::from_parts(JwtConfig::new(ISS, AUD, "HS256"), &[b'k'; 31]).unwrap_err();
        assert_eq!(err.code(), "jwt_secret_too_short");
        assert!(!err.to_string().contains("kkkk"));
        assert!(JwtVerifier::from_parts(JwtConfig::new(ISS, AUD, "HS256"), &[b'k'; 32]).is_ok());

        let mut bad: Vec<JwtConfig> = Vec::new();
        bad.push(JwtConfig::new("", AUD, "HS256"));
        bad.push(JwtConfig::new(ISS, "", "HS256"));
        let mut c = JwtConfig::new(ISS, AUD, "HS256");
        c.max_lifetime_secs = 0;
        bad.push(c);
        let mut c = JwtConfig::new(ISS, AUD, "HS256");
        c.role_claim = "sub".into();
        bad.push(c);
        let mut c = JwtConfig::new(ISS, AUD, "HS256");
        c.workspace_claim = "aud".into();
        bad.push(c);
        let mut c = JwtConfig::new(ISS, AUD, "HS256");
        c.subject_claim = String::new();
        bad.push(c);
        let mut c = JwtConfig::new(ISS, AUD, "HS256");
        c.role_map.insert("x".into(), "Not A Role".into());
        bad.push(c);
        for cfg in bad {
            let err = JwtVerifier::from_parts(cfg.clone(), HMAC_SECRET).unwrap_err();
            assert_eq!(err.code(), "jwt_config_invalid", "{cfg:?}");
        }
    }

    #[test]
    fn every_error_has_a_distinct_code() {
        let errors = [
            AuthError::Access(wrun_store::access::AccessError::PermissionUnknown {
                value: String::new(),
            }),
            AuthError::Access(wrun_store::access::AccessError::ResourceUnknown {
                value: String::new(),
            }),
            AuthError::TokenMalformed { reason: "" },
            AuthError::TokenChecksum,
            AuthError::IpInvalid {
                value: String::new(),
                reason: String::new(),
            },
            AuthError::JwtConfig {
                reason: String::new(),
            },
            AuthError::JwtKeyFile {
                path: PathBuf::new(),
                source: std::io::Error::other("x"),
            },
            AuthError::JwtKeyInvalid {
                algorithm: String::new(),
                reason: String::new(),
            },
            AuthError::JwtSecretMissing { var: String::new() },
            AuthError::JwtSecretTooShort { len: 0, min: 0 },
            AuthError::JwtMalformed { reason: "" },
            AuthError::JwtAlgorithmMismatch {
                expected: String::new(),
                found: String::new(),
            },
            AuthError::JwtUnsupportedCrit,
            AuthError::JwtInvalidSignature,
            AuthError::JwtExpired,
            AuthError::JwtNotYetValid { claim: "nbf" },
            AuthError::JwtLifetimeTooLong {
                lifetime_secs: 0,
                max_secs: 0,
            },
            AuthError::JwtMissingClaim {
                claim: String::new(),
            },
            AuthError::JwtClaimInvalid {
                claim: String::new(),
                expected: "",
            },
            AuthError::JwtWrongAudience,
            AuthError::JwtWrongIssuer,
            AuthError::JwtRoleUnmapped,
        ];
        let codes: std::collections::BTreeSet<_> = errors.iter().map(AuthError::code).collect();
        assert_eq!(codes.len(), errors.len());
    }
}

#[cfg(test)]
#[path = "proptests/auth.rs"]
mod proptests;

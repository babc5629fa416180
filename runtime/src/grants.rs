//! What one step may do: its grants, parsed once into value types.
//!
//! A step gets nothing it was not granted. An empty grant means deny, never
//! "allow all". Grants are checked when a component is bound to a step
//! (see [`crate::Engine::step`]) and again at every call.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::mask::validate_pointer;
use crate::policy::NetGrant;

/// A grant that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{grant}` grant: {reason}")]
pub struct GrantError {
    /// The grant at fault (`net`, `secrets`, `mask`, `timeout`, `memory`, `env`).
    pub grant: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// The parsed grants of one step.
///
/// Built with [`Grants::builder`]. The defaults are: no hosts, no secrets,
/// no masked fields, no properties, and the operator's timeout and memory
/// limits ([`crate::EngineBuilder::default_timeout`],
/// [`crate::EngineBuilder::default_memory`]).
#[derive(Debug, Clone, Default)]
pub struct Grants {
    pub(crate) net: NetGrant,
    pub(crate) secrets: BTreeMap<String, String>,
    pub(crate) mask: Vec<String>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) memory: Option<u64>,
    pub(crate) env: BTreeSet<String>,
}

impl Grants {
    /// Starts an empty (deny-everything) set of grants.
    pub fn builder() -> GrantsBuilder {
        GrantsBuilder::default()
    }

    /// Grants nothing at all.
    pub fn none() -> Grants {
        Grants::default()
    }

    /// The hosts the step may reach.
    pub fn net(&self) -> &NetGrant {
        &self.net
    }

    /// Step-local secret aliases and the workspace connections they name.
    pub fn secrets(&self) -> &BTreeMap<String, String> {
        &self.secrets
    }

    /// JSON pointers of output fields stored masked.
    pub fn mask(&self) -> &[String] {
        &self.mask
    }

    /// The step's own time limit, if it set one.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The step's own memory limit in bytes, if it set one.
    pub fn memory(&self) -> Option<u64> {
        self.memory
    }

    /// Names of the environment properties the step may read.
    pub fn env(&self) -> &BTreeSet<String> {
        &self.env
    }
}

/// Builds [`Grants`]; every value is checked in [`GrantsBuilder::build`].
#[derive(Debug, Clone, Default)]
pub struct GrantsBuilder {
    net: Vec<String>,
    secrets: Vec<(String, String)>,
    mask: Vec<String>,
    timeout: Option<Duration>,
    memory: Option<u64>,
    env: Vec<String>,
}

impl GrantsBuilder {
    /// Allows HTTPS requests to a host pattern: `api.example.com`,
    /// `*.example.com`, `api.example.com:8443`. Port 443 unless one is named.
    pub fn net(mut self, pattern: impl Into<String>) -> Self {
        self.net.push(pattern.into());
        self
    }

    /// Binds a step-local secret alias to a workspace connection name.
    pub fn secret(mut self, alias: impl Into<String>, connection: impl Into<String>) -> Self {
        self.secrets.push((alias.into(), connection.into()));
        self
    }

    /// Stores the output field at this JSON pointer masked in history.
    pub fn mask(mut self, pointer: impl Into<String>) -> Self {
        self.mask.push(pointer.into());
        self
    }

    /// Sets the step's wall-clock limit (at most the operator's maximum).
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Sets the step's memory limit in bytes, all its memories together (at
    /// most the operator's maximum).
    pub fn memory(mut self, bytes: u64) -> Self {
        self.memory = Some(bytes);
        self
    }

    /// Allows the step to read an environment property.
    pub fn env(mut self, name: impl Into<String>) -> Self {
        self.env.push(name.into());
        self
    }

    /// Checks and parses the grants.
    ///
    /// # Errors
    ///
    /// A [`GrantError`] naming the grant: an invalid host pattern, an empty
    /// or duplicated secret alias, a JSON pointer that does not start with
    /// `/`, a zero timeout or memory limit, an empty property name.
    pub fn build(self) -> Result<Grants, GrantError> {
        let net = NetGrant::parse(&self.net).map_err(|e| GrantError {
            grant: "net",
            reason: e.to_string(),
        })?;
        let mut secrets = BTreeMap::new();
        for (alias, connection) in self.secrets {
            let err = |reason: String| GrantError {
                grant: "secrets",
                reason,
            };
            if !is_identifier(&alias) {
                return Err(err(format!(
                    "alias `{alias}` must be 1 to 64 characters of letters, digits, `-` or `_`"
                )));
            }
            if connection.trim().is_empty() {
                return Err(err(format!("alias `{alias}` names no connection")));
            }
            if secrets.insert(alias.clone(), connection).is_some() {
                return Err(err(format!("alias `{alias}` is granted twice")));
            }
        }
        for pointer in &self.mask {
            validate_pointer(pointer).map_err(|reason| GrantError {
                grant: "mask",
                reason,
            })?;
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(GrantError {
                grant: "timeout",
                reason: "must be greater than zero".into(),
            });
        }
        if self.memory == Some(0) {
            return Err(GrantError {
                grant: "memory",
                reason: "must be greater than zero".into(),
            });
        }
        let mut env = BTreeSet::new();
        for name in self.env {
            if !is_identifier(&name) {
                return Err(GrantError {
                    grant: "env",
                    reason: format!(
                        "property `{name}` must be 1 to 64 characters of letters, digits, `-` or `_`"
                    ),
                });
            }
            env.insert(name);
        }
        Ok(Grants {
            net,
            secrets,
            mask: self.mask,
            timeout: self.timeout,
            memory: self.memory,
            env,
        })
    }
}

fn is_identifier(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant_of(b: GrantsBuilder) -> Result<Grants, &'static str> {
        b.build().map_err(|e| e.grant)
    }

    #[test]
    fn empty_grants_deny_everything() {
        let g = Grants::none();
        assert!(g.net().is_empty());
        assert!(g.secrets().is_empty());
        assert!(g.env().is_empty());
    }

    #[test]
    fn bad_grants_name_the_grant() {
        let cases: Vec<(GrantsBuilder, &str)> = vec![
            (Grants::builder().net("https://api.example.com"), "net"),
            (Grants::builder().net("*"), "net"),
            (Grants::builder().secret("", "conn"), "secrets"),
            (Grants::builder().secret("a b", "conn"), "secrets"),
            (Grants::builder().secret("gh", " "), "secrets"),
            (
                Grants::builder().secret("gh", "one").secret("gh", "two"),
                "secrets",
            ),
            (Grants::builder().mask("token"), "mask"),
            (Grants::builder().timeout(Duration::ZERO), "timeout"),
            (Grants::builder().memory(0), "memory"),
            (Grants::builder().env("has space"), "env"),
        ];
        for (builder, grant) in cases {
            assert_eq!(grant_of(builder).err(), Some(grant));
        }
    }

    #[test]
    fn good_grants_parse() {
        let g = Grants::builder()
            .net("api.example.com")
            .net("*.slack.example:8443")
            .secret("gh", "github-prod")
            .mask("/token")
            .timeout(Duration::from_secs(5))
            .memory(64 << 20)
            .env("github_api")
            .build()
            .unwrap();
        assert_eq!(g.net().patterns().len(), 2);
        assert_eq!(
            g.secrets().get("gh").map(String::as_str),
            Some("github-prod")
        );
        assert_eq!(g.memory(), Some(64 << 20));
    }
}

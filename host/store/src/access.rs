//! The access model: resources, access levels, permission sets and the
//! built-in roles. Roles and token scopes are stored as these sets, so the
//! store owns their definition; the daemon authorises with them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A permission or resource name that is not part of the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// A permission string is not `<resource>:<access>` with a known
    /// resource (or `*`) and access.
    #[error(
        "unknown permission `{value}`: expected `<resource>:read` or `<resource>:write` \
         where resource is one of {} or `*`",
        Resource::names_for_message()
    )]
    PermissionUnknown {
        /// The permission string as given (cut to 64 characters).
        value: String,
    },
    /// A resource name is not one of [`Resource::ALL`].
    #[error(
        "unknown resource `{value}`: expected one of {}",
        Resource::names_for_message()
    )]
    ResourceUnknown {
        /// The resource name as given (cut to 64 characters).
        value: String,
    },
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

// ---------------------------------------------------------------------------
// Permissions
// ---------------------------------------------------------------------------

/// A kind of object in a workspace that permissions are granted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    /// Recipes and their versions.
    Recipes,
    /// Connections (credentials); read access covers metadata only, never
    /// secret values.
    Connections,
    /// Environments.
    Environments,
    /// Jobs: starting, cancelling and reading runs and their history.
    Jobs,
    /// API tokens.
    Tokens,
    /// Workspace members and their roles.
    Members,
    /// The audit log.
    Audit,
}

impl Resource {
    /// Every resource, in canonical order.
    pub const ALL: [Resource; 7] = [
        Resource::Recipes,
        Resource::Connections,
        Resource::Environments,
        Resource::Jobs,
        Resource::Tokens,
        Resource::Members,
        Resource::Audit,
    ];

    /// Returns the resource's name as used in permission strings.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Recipes => "recipes",
            Resource::Connections => "connections",
            Resource::Environments => "environments",
            Resource::Jobs => "jobs",
            Resource::Tokens => "tokens",
            Resource::Members => "members",
            Resource::Audit => "audit",
        }
    }

    /// Returns the position of this resource in [`Resource::ALL`].
    fn index(self) -> u32 {
        match self {
            Resource::Recipes => 0,
            Resource::Connections => 1,
            Resource::Environments => 2,
            Resource::Jobs => 3,
            Resource::Tokens => 4,
            Resource::Members => 5,
            Resource::Audit => 6,
        }
    }

    /// Lists the resource names for an error message.
    pub fn names_for_message() -> String {
        Resource::ALL
            .iter()
            .map(|r| format!("`{}`", r.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Resource {
    type Err = AccessError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Resource::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| AccessError::ResourceUnknown { value: echo(s) })
    }
}

/// The level of access to a [`Resource`]. Write implies read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Access {
    /// List and read.
    Read,
    /// Create, change and delete (and, by implication, read).
    Write,
}

impl Access {
    /// Returns the access level's name as used in permission strings.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of ([`Resource`], [`Access`]) grants, stored as a bitset.
///
/// Each resource has a read bit and a write bit; granting write always sets
/// read too, so the invariant "write implies read" holds for every value.
/// It serializes as its canonical list of strings (see
/// [`PermissionSet::to_strings`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PermissionSet(u16);

impl PermissionSet {
    /// The set that grants nothing.
    pub const EMPTY: PermissionSet = PermissionSet(0);

    /// The set that grants read and write on every resource.
    pub const ALL: PermissionSet = PermissionSet((1 << (2 * Resource::ALL.len())) - 1);

    /// Returns the bit for one resource and access level.
    fn bit(resource: Resource, access: Access) -> u16 {
        let shift = 2 * resource.index()
            + match access {
                Access::Read => 0,
                Access::Write => 1,
            };
        1 << shift
    }

    /// Returns this set with `access` on `resource` added (write adds read).
    pub fn with(self, resource: Resource, access: Access) -> PermissionSet {
        let mut bits = self.0 | Self::bit(resource, Access::Read);
        if access == Access::Write {
            bits |= Self::bit(resource, Access::Write);
        }
        PermissionSet(bits)
    }

    /// Parses permission strings such as `recipes:read`, `jobs:write`,
    /// `*:read` and `*:write`. Duplicates are allowed; an empty list gives
    /// [`PermissionSet::EMPTY`].
    ///
    /// # Errors
    ///
    /// [`AccessError::PermissionUnknown`] naming the first string that is not a
    /// known permission. Matching is exact and case-sensitive.
    pub fn parse(items: &[impl AsRef<str>]) -> Result<PermissionSet, AccessError> {
        let mut set = PermissionSet::EMPTY;
        for item in items {
            let item = item.as_ref();
            let unknown = || AccessError::PermissionUnknown { value: echo(item) };
            let (resource, access) = item.split_once(':').ok_or_else(unknown)?;
            let access = match access {
                "read" => Access::Read,
                "write" => Access::Write,
                _ => return Err(unknown()),
            };
            if resource == "*" {
                for r in Resource::ALL {
                    set = set.with(r, access);
                }
            } else {
                let r = Resource::from_str(resource).map_err(|_| unknown())?;
                set = set.with(r, access);
            }
        }
        Ok(set)
    }

    /// Returns whether the set grants `access` on `resource`.
    pub fn allows(self, resource: Resource, access: Access) -> bool {
        self.0 & Self::bit(resource, access) != 0
    }

    /// Returns the grants present in both sets (a token's effective
    /// permissions are its scopes intersected with its owner's role).
    pub fn intersect(self, other: PermissionSet) -> PermissionSet {
        PermissionSet(self.0 & other.0)
    }

    /// Returns whether every grant in `self` is also in `other`.
    pub fn is_subset_of(self, other: PermissionSet) -> bool {
        self.0 & !other.0 == 0
    }

    /// Returns whether the set grants nothing.
    #[cfg(test)]
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Returns the canonical list of permission strings: one entry per
    /// resource with any access, in [`Resource::ALL`] order, `x:write` when
    /// write is granted (it implies read) and `x:read` otherwise. Wildcards
    /// are expanded, so a stored set never grows when a resource is added.
    pub fn to_strings(self) -> Vec<String> {
        Resource::ALL
            .into_iter()
            .filter_map(|r| {
                if self.allows(r, Access::Write) {
                    Some(format!("{}:write", r.as_str()))
                } else if self.allows(r, Access::Read) {
                    Some(format!("{}:read", r.as_str()))
                } else {
                    None
                }
            })
            .collect()
    }
}

impl fmt::Debug for PermissionSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.to_strings()).finish()
    }
}

impl Serialize for PermissionSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_strings().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PermissionSet {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let items = Vec::<String>::deserialize(deserializer)?;
        PermissionSet::parse(&items).map_err(serde::de::Error::custom)
    }
}

/// The names of the built-in roles, from most to least powerful.
pub const BUILTIN_ROLES: [&str; 3] = ["admin", "operator", "analyst"];

/// Returns the permissions of a built-in role, or `None` if `name` is not
/// one of [`BUILTIN_ROLES`].
///
/// - `admin`: read and write on everything.
/// - `operator`: write on recipes, connections, environments and jobs;
///   write on tokens, where the caller must also enforce that an operator
///   only manages their own tokens; read on members; no audit log.
/// - `analyst`: read on recipes, environments and jobs; read on connections
///   (metadata only: no secret value is ever readable through the API).
pub fn builtin_role(name: &str) -> Option<PermissionSet> {
    use Access::{Read, Write};
    use Resource::*;
    let e = PermissionSet::EMPTY;
    match name {
        "admin" => Some(PermissionSet::ALL),
        "operator" => Some(
            e.with(Recipes, Write)
                .with(Connections, Write)
                .with(Environments, Write)
                .with(Jobs, Write)
                .with(Tokens, Write)
                .with(Members, Read),
        ),
        "analyst" => Some(
            e.with(Recipes, Read)
                .with(Environments, Read)
                .with(Jobs, Read)
                .with(Connections, Read),
        ),
        _ => None,
    }
}

/// Returns whether `name` is a valid role name: 1 to 64 characters from
/// `a-z`, `0-9`, `_` and `-`.
pub fn valid_role_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    // --- Permissions -----------------------------------------------------

    #[test]
    fn resource_round_trips() {
        for r in Resource::ALL {
            assert_eq!(Resource::from_str(r.as_str()).unwrap(), r);
        }
        let err = Resource::from_str("Recipes").unwrap_err();
        assert!(matches!(err, AccessError::ResourceUnknown { .. }));
    }

    #[test]
    fn parse_single_permissions() {
        let set = PermissionSet::parse(&["recipes:read", "jobs:write"]).unwrap();
        assert!(set.allows(Resource::Recipes, Access::Read));
        assert!(!set.allows(Resource::Recipes, Access::Write));
        assert!(
            set.allows(Resource::Jobs, Access::Read),
            "write implies read"
        );
        assert!(set.allows(Resource::Jobs, Access::Write));
        assert!(!set.allows(Resource::Audit, Access::Read));
        assert_eq!(set.to_strings(), ["recipes:read", "jobs:write"]);
    }

    #[test]
    fn parse_wildcards() {
        let read = PermissionSet::parse(&["*:read"]).unwrap();
        let write = PermissionSet::parse(&["*:write"]).unwrap();
        assert_eq!(write, PermissionSet::ALL);
        for r in Resource::ALL {
            assert!(read.allows(r, Access::Read));
            assert!(!read.allows(r, Access::Write));
        }
        assert!(read.is_subset_of(write));
        assert!(!write.is_subset_of(read));
        assert_eq!(
            PermissionSet::parse(&["*:read", "jobs:write"])
                .unwrap()
                .to_strings(),
            [
                "recipes:read",
                "connections:read",
                "environments:read",
                "jobs:write",
                "tokens:read",
                "members:read",
                "audit:read"
            ]
        );
    }

    #[test]
    fn parse_rejects_unknown_and_names_it() {
        for bad in [
            "",
            "recipes",
            "recipes:",
            ":read",
            "recipes:admin",
            "Recipes:read",
            "recipes:read ",
            "*:*",
            "widgets:read",
            "recipes:read:write",
        ] {
            let err = PermissionSet::parse(&["jobs:read", bad]).unwrap_err();
            assert!(
                matches!(err, AccessError::PermissionUnknown { .. }),
                "{bad:?}"
            );
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
        let long = "x".repeat(10_000);
        let err = PermissionSet::parse(&[long.as_str()]).unwrap_err();
        assert!(err.to_string().len() < 400, "echo is bounded");
    }

    #[test]
    fn empty_list_is_empty_set() {
        let empty: [&str; 0] = [];
        let set = PermissionSet::parse(&empty).unwrap();
        assert!(set.is_empty());
        assert!(set.to_strings().is_empty());
        assert!(set.is_subset_of(PermissionSet::EMPTY));
    }

    #[test]
    fn intersect_keeps_write_implies_read() {
        let a = PermissionSet::parse(&["jobs:write", "recipes:write", "audit:read"]).unwrap();
        let b = PermissionSet::parse(&["jobs:read", "recipes:write", "tokens:write"]).unwrap();
        let both = a.intersect(b);
        assert_eq!(both.to_strings(), ["recipes:write", "jobs:read"]);
        assert!(both.is_subset_of(a) && both.is_subset_of(b));
        // Every subset of bits produced by `with` keeps the invariant.
        for r in Resource::ALL {
            if both.allows(r, Access::Write) {
                assert!(both.allows(r, Access::Read));
            }
        }
    }

    #[test]
    fn to_strings_round_trips_through_parse() {
        for bits in 0..=PermissionSet::ALL.0 {
            // Only values that keep "write implies read" are reachable.
            let set = PermissionSet(bits);
            let valid = Resource::ALL
                .iter()
                .all(|&r| !set.allows(r, Access::Write) || set.allows(r, Access::Read));
            if valid {
                assert_eq!(PermissionSet::parse(&set.to_strings()).unwrap(), set);
            }
        }
    }

    #[test]
    fn serde_as_list_of_strings() {
        let set = PermissionSet::parse(&["tokens:write", "audit:read"]).unwrap();
        let json = serde_json::to_string(&set).unwrap();
        assert_eq!(json, r#"["tokens:write","audit:read"]"#);
        let back: PermissionSet = serde_json::from_str(&json).unwrap();
        assert_eq!(back, set);
        let back: PermissionSet = serde_json::from_str(r#"["*:write"]"#).unwrap();
        assert_eq!(back, PermissionSet::ALL);
        let err = serde_json::from_str::<PermissionSet>(r#"["nope:read"]"#).unwrap_err();
        assert!(err.to_string().contains("nope:read"));
        assert_eq!(format!("{set:?}"), r#"{"tokens:write", "audit:read"}"#);
    }

    #[test]
    fn builtin_roles() {
        let admin = builtin_role("admin").unwrap();
        let operator = builtin_role("operator").unwrap();
        let analyst = builtin_role("analyst").unwrap();
        assert_eq!(admin, PermissionSet::ALL);
        assert_eq!(
            operator.to_strings(),
            [
                "recipes:write",
                "connections:write",
                "environments:write",
                "jobs:write",
                "tokens:write",
                "members:read"
            ]
        );
        assert_eq!(
            analyst.to_strings(),
            [
                "recipes:read",
                "connections:read",
                "environments:read",
                "jobs:read"
            ]
        );
        assert!(!operator.allows(Resource::Audit, Access::Read));
        assert!(!analyst.allows(Resource::Audit, Access::Read));
        assert!(!analyst.allows(Resource::Tokens, Access::Read));
        assert!(analyst.is_subset_of(operator) && operator.is_subset_of(admin));
        for name in BUILTIN_ROLES {
            assert!(builtin_role(name).is_some());
            assert!(valid_role_name(name));
        }
        assert!(builtin_role("Admin").is_none());
        assert!(builtin_role("root").is_none());
    }

    #[test]
    fn role_names() {
        assert!(valid_role_name("a"));
        assert!(valid_role_name("release-managers_2"));
        assert!(valid_role_name(&"x".repeat(64)));
        assert!(!valid_role_name(""));
        assert!(!valid_role_name(&"x".repeat(65)));
        assert!(!valid_role_name("Admin"));
        assert!(!valid_role_name("a b"));
        assert!(!valid_role_name("a.b"));
        assert!(!valid_role_name("rôle"));
    }
}

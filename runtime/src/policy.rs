//! The `net` grant: which hosts a step may reach.
//!
//! A grant is a list of host patterns, each parsed once into a
//! [`HostPattern`]:
//!
//! - an exact name, `api.example.com`;
//! - a wildcard, `*.example.com`, matching any name with at least one more
//!   label (`a.example.com`, `a.b.example.com`) but not `example.com` itself;
//! - an IP literal, `203.0.113.7` or `[2001:db8::1]`;
//!
//! each optionally followed by a port (`api.example.com:8443`) or by `:*`
//! for any port (for local and on-premises targets on ephemeral ports). Egress is
//! always HTTPS, so a pattern never names a scheme, and the port is 443
//! unless the pattern names another. An empty grant denies everything.
//!
//! Patterns match the normalised [`Host`] that [`crate::egress::addr`]
//! parses from a request, so an IP pattern matches however the request
//! spells the address (`127.0.0.1` matches `2130706433`). A grant says which
//! hosts a step may name; whether the address actually connected to may be
//! reached is a separate check ([`crate::egress::addr::AddressPolicy`]).
//!
//! The hosts of a connection (where a credential may be sent) are parsed
//! with [`NetGrant::parse_for_connection`], which also refuses a wildcard
//! over a public suffix (`*.co.uk`, `*.herokuapp.com`,
//! `*.s3.amazonaws.com`): the names under one belong to unrelated owners,
//! so any of them could receive the credential. The Public Suffix List comes
//! from the `psl` crate, compiled in, so no file or network is read. A step's
//! `net` grant may still name such a wildcard: it is broad, but it sends no
//! credential anywhere that the connection does not allow.

use std::fmt;
use std::str::FromStr;

use crate::egress::addr::{self, Host, HostError};

/// The port a pattern without one allows: HTTPS.
pub const DEFAULT_PORT: u16 = 443;

/// One parsed entry of a `net` grant.
///
/// Displays normalised, as it would be written: `*.example.com`,
/// `api.example.com:8443`, `[2001:db8::1]:8443`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPattern {
    target: Target,
    port: Option<u16>,
    /// `host:*`: any port, written out explicitly by the author.
    any_port: bool,
}

/// What a pattern matches, besides the port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Target {
    /// Exactly this host.
    Exact(Host),
    /// Any name ending in `.` followed by this normalised suffix, which has
    /// at least two labels.
    Wildcard(String),
}

impl HostPattern {
    /// Parses one `net` grant entry: `host`, `host:port`, `*.domain` or
    /// `*.domain:port`, where the host is a DNS name or an IP literal (IPv6
    /// in brackets).
    ///
    /// Names are normalised (lowercase, no trailing dot) and IP literals are
    /// parsed by [`addr::parse_host`], so every IPv4 spelling is the same
    /// address.
    ///
    /// # Errors
    ///
    /// A [`PatternError`] naming the entry if it is empty, names a scheme,
    /// a path, query or user information, is a wildcard other than a leading
    /// `*.` followed by at least two labels, puts a wildcard on an IP
    /// address, has a port outside 1 to 65535, or has a host
    /// [`addr::parse_host`] refuses.
    pub fn parse(input: &str) -> Result<HostPattern, PatternError> {
        if input.is_empty() {
            return Err(PatternError::Empty);
        }
        if let Some(rest) = after_scheme(input) {
            return Err(PatternError::Scheme {
                input: redacted(input),
                suggestion: addr::shown(suggested_host(rest)),
            });
        }
        if input.contains(['/', '?', '#']) {
            return Err(PatternError::Path {
                input: redacted(input),
            });
        }
        if input.contains('@') {
            return Err(PatternError::Userinfo {
                input: redacted(input),
            });
        }
        if input.starts_with("*.[") {
            return Err(PatternError::WildcardOnIp {
                input: addr::shown(input),
            });
        }
        let host_error = |reason| PatternError::Host {
            input: addr::shown(input),
            reason,
        };
        let (host, port) = addr::split_authority(input).map_err(host_error)?;
        let any_port = port == Some("*");
        let port = match port {
            None => None,
            Some("*") => None,
            Some(port) => Some(
                addr::parse_port(port, input).map_err(|_| PatternError::Port {
                    input: addr::shown(input),
                    port: addr::shown(port),
                })?,
            ),
        };
        let target = if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.contains('*') {
                return Err(PatternError::WildcardPosition {
                    input: addr::shown(input),
                });
            }
            match addr::parse_host(suffix).map_err(host_error)? {
                Host::Ip(_) => {
                    return Err(PatternError::WildcardOnIp {
                        input: addr::shown(input),
                    });
                }
                Host::Name(name) if !name.contains('.') => {
                    return Err(PatternError::WildcardTooBroad {
                        input: addr::shown(input),
                    });
                }
                Host::Name(name) => Target::Wildcard(name),
            }
        } else if host == "*" {
            return Err(PatternError::WildcardTooBroad {
                input: addr::shown(input),
            });
        } else if host.contains('*') {
            return Err(PatternError::WildcardPosition {
                input: addr::shown(input),
            });
        } else {
            Target::Exact(addr::parse_host(host).map_err(host_error)?)
        };
        Ok(HostPattern {
            target,
            port,
            any_port,
        })
    }

    /// Whether a request to `host` on `port` matches this pattern.
    ///
    /// The port must equal the pattern's, or 443 if it names none. An exact
    /// pattern matches only the same host; a wildcard `*.example.com`
    /// matches a name that ends in `.example.com` and has at least one label
    /// before it, never an IP address. `host` must be normalised, as
    /// [`addr::parse_host`] returns it; a name that is not never matches a
    /// wildcard.
    pub fn matches(&self, host: &Host, port: u16) -> bool {
        if !self.any_port && port != self.effective_port() {
            return false;
        }
        match (&self.target, host) {
            (Target::Exact(exact), host) => exact == host,
            (Target::Wildcard(suffix), Host::Name(name)) => {
                let below = name
                    .strip_suffix(suffix.as_str())
                    .and_then(|rest| rest.strip_suffix('.'));
                below.is_some_and(|below| !below.is_empty()) && addr::is_normalised_name(name)
            }
            (Target::Wildcard(_), Host::Ip(_)) => false,
        }
    }

    /// The port the pattern names, if any.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// The port the pattern allows: the one it names, or 443.
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or(DEFAULT_PORT)
    }

    /// Whether the pattern is a `*.` wildcard.
    pub fn is_wildcard(&self) -> bool {
        matches!(self.target, Target::Wildcard(_))
    }

    /// Whether the pattern is a wildcard directly over a public suffix of
    /// the Public Suffix List (ICANN or private section): `*.co.uk`,
    /// `*.herokuapp.com`, `*.s3.amazonaws.com`. Exact hosts never are.
    pub fn covers_public_suffix(&self) -> bool {
        match &self.target {
            Target::Wildcard(base) => psl::suffix(base.as_bytes())
                .is_some_and(|suffix| suffix.is_known() && suffix.as_bytes() == base.as_bytes()),
            Target::Exact(_) => false,
        }
    }
}

impl FromStr for HostPattern {
    type Err = PatternError;

    fn from_str(s: &str) -> Result<HostPattern, PatternError> {
        HostPattern::parse(s)
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Exact(host) => write!(f, "{host}")?,
            Target::Wildcard(suffix) => write!(f, "*.{suffix}")?,
        }
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None if self.any_port => f.write_str(":*"),
            None => Ok(()),
        }
    }
}

impl serde::Serialize for HostPattern {
    /// Normalised, as written ([`fmt::Display`]).
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The parsed `net` grant of a step: the hosts it may reach.
///
/// The default is empty, which denies every host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetGrant {
    patterns: Vec<HostPattern>,
}

impl NetGrant {
    /// Parses every entry of a `net` grant with [`HostPattern::parse`].
    ///
    /// # Errors
    ///
    /// The [`PatternError`] of the first entry that does not parse.
    pub fn parse<I, S>(items: I) -> Result<NetGrant, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let patterns = items
            .into_iter()
            .map(|item| HostPattern::parse(item.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(NetGrant { patterns })
    }

    /// Parses the hosts of a connection: like [`NetGrant::parse`], and
    /// refuses a wildcard over a public suffix
    /// ([`HostPattern::covers_public_suffix`]).
    ///
    /// # Errors
    ///
    /// The [`PatternError`] of the first entry that does not parse, or
    /// [`PatternError::PublicSuffix`] for the first one over a public suffix.
    pub fn parse_for_connection<I, S>(items: I) -> Result<NetGrant, PatternError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let grant = NetGrant::parse(items)?;
        if let Some(broad) = grant.patterns.iter().find(|p| p.covers_public_suffix()) {
            return Err(PatternError::PublicSuffix {
                input: broad.to_string(),
            });
        }
        Ok(grant)
    }

    /// Whether the grant lists no host, and so denies every request.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether some pattern matches a request to `host` on `port`
    /// (see [`HostPattern::matches`]). An empty grant allows nothing.
    pub fn allows(&self, host: &Host, port: u16) -> bool {
        self.patterns
            .iter()
            .any(|pattern| pattern.matches(host, port))
    }

    /// The patterns, in the order they were written.
    pub fn patterns(&self) -> &[HostPattern] {
        &self.patterns
    }
}

/// A `net` grant entry that could not be parsed.
///
/// Messages repeat the entry (shortened if very long), except for user
/// information and anything after a path, which are left out in case they
/// hold a credential.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PatternError {
    /// The entry is empty.
    #[error("net grant entry is empty")]
    Empty,
    /// The entry names a scheme, such as `https://`.
    #[error(
        "net grant {input:?} names a scheme; write the host without a scheme, as in {suggestion:?} (egress is always HTTPS)"
    )]
    Scheme {
        /// The entry, without user information or path.
        input: String,
        /// The entry without its scheme.
        suggestion: String,
    },
    /// The entry has a path, query or fragment.
    #[error(
        "net grant {input:?} has a path, query or fragment; write only the host and an optional port"
    )]
    Path {
        /// The entry, with the path left out.
        input: String,
    },
    /// The entry has user information (`user@host`).
    #[error(
        "net grant {input:?} has user information before '@'; write only the host and an optional port"
    )]
    Userinfo {
        /// The entry, with the user information left out.
        input: String,
    },
    /// The wildcard would match too much: `*` alone, or `*.` followed by a
    /// single label (`*.com`).
    #[error(
        "net grant {input:?} is too broad: a wildcard needs at least two labels after `*.`, as in `*.example.com`"
    )]
    WildcardTooBroad {
        /// The entry as written.
        input: String,
    },
    /// A connection host wildcard over a public suffix (`*.co.uk`,
    /// `*.herokuapp.com`): names under it belong to unrelated owners.
    #[error(
        "connection host {input:?} covers a public suffix, whose names belong to unrelated owners; name the hosts exactly (as in `myapp.herokuapp.com`) or a wildcard under your own domain"
    )]
    PublicSuffix {
        /// The entry, normalised.
        input: String,
    },
    /// A `*` somewhere other than a leading `*.` label.
    #[error(
        "net grant {input:?} has a `*` that is not a leading `*.` label; only wildcards like `*.example.com` are allowed"
    )]
    WildcardPosition {
        /// The entry as written.
        input: String,
    },
    /// A wildcard in front of an IP address.
    #[error("net grant {input:?} puts a wildcard on an IP address; list each address instead")]
    WildcardOnIp {
        /// The entry as written.
        input: String,
    },
    /// The port is not a number from 1 to 65535.
    #[error("net grant {input:?} has port {port:?}, which is not a number from 1 to 65535")]
    Port {
        /// The entry as written.
        input: String,
        /// The port as written.
        port: String,
    },
    /// The host is not a valid name or IP literal.
    #[error("net grant {input:?} is invalid: {reason}")]
    Host {
        /// The entry as written.
        input: String,
        /// What is wrong with the host.
        reason: HostError,
    },
}

/// What follows the scheme, if the entry starts with one: anything before
/// `://`, or `http:` / `https:` not followed by a port number.
fn after_scheme(input: &str) -> Option<&str> {
    if let Some((_, rest)) = input.split_once("://") {
        return Some(rest);
    }
    let (scheme, rest) = input.split_once(':')?;
    let is_web = scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http");
    let is_port = !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit());
    (is_web && !is_port).then_some(rest)
}

/// The host and port of what follows a scheme: no user information, no
/// path.
fn suggested_host(rest: &str) -> &str {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// The entry as an error message may repeat it: user information and
/// whatever follows a path are replaced by `...`, and a very long entry is
/// shortened.
fn redacted(input: &str) -> String {
    let (scheme, rest) = match input.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), input),
    };
    let (authority, has_path) = match rest.find(['/', '?', '#']) {
        Some(at) => (&rest[..at], true),
        None => (rest, false),
    };
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("...@{host}"),
        None => authority.to_owned(),
    };
    let path = if has_path { "/..." } else { "" };
    addr::shown(&format!("{scheme}{authority}{path}"))
}

impl fmt::Display for NetGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.patterns.is_empty() {
            return f.write_str("no host");
        }
        for (i, pattern) in self.patterns.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{pattern}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks `HostPattern::parse(input)`: `expected` is the pattern's
    /// display, or `error: <part of the message>`.
    #[track_caller]
    fn check_parse(input: &str, expected: &str) {
        let actual = match HostPattern::parse(input) {
            Ok(pattern) => pattern.to_string(),
            Err(err) => format!("error: {err}"),
        };
        match expected.strip_prefix("error: ") {
            Some(part) => assert!(
                actual.starts_with("error: ") && actual.contains(part),
                "parse({input:?}) = {actual:?}, want an error containing {part:?}"
            ),
            None => assert_eq!(actual, expected, "parse({input:?})"),
        }
    }

    #[test]
    fn accepted_patterns() {
        for (input, expected) in [
            ("api.example.com", "api.example.com"),
            ("API.Example.COM.", "api.example.com"),
            ("api.example.com:8443", "api.example.com:8443"),
            ("api.example.com:443", "api.example.com:443"),
            ("api.example.com:08443", "api.example.com:8443"),
            ("localhost", "localhost"),
            ("*.example.com", "*.example.com"),
            ("*.Example.COM.", "*.example.com"),
            ("*.example.com:8443", "*.example.com:8443"),
            ("*.co.uk", "*.co.uk"),
            ("203.0.113.7", "203.0.113.7"),
            ("203.0.113.7:8443", "203.0.113.7:8443"),
            ("2130706433", "127.0.0.1"),
            ("0x7f.1:8443", "127.0.0.1:8443"),
            ("[2001:db8::1]", "[2001:db8::1]"),
            ("[2001:DB8::1]:8443", "[2001:db8::1]:8443"),
            ("[::ffff:7f00:1]", "[::ffff:127.0.0.1]"),
        ] {
            check_parse(input, expected);
        }
    }

    #[test]
    fn refused_patterns() {
        for (input, expected) in [
            ("", "error: net grant entry is empty"),
            (
                "https://api.example.com",
                "error: write the host without a scheme, as in \"api.example.com\"",
            ),
            (
                "http://api.example.com:8443/v1",
                "error: as in \"api.example.com:8443\"",
            ),
            ("HTTPS://api.example.com", "error: without a scheme"),
            ("https:api.example.com", "error: without a scheme"),
            ("wss://api.example.com", "error: without a scheme"),
            ("://api.example.com", "error: without a scheme"),
            ("api.example.com/v1", "error: has a path"),
            ("api.example.com?x=1", "error: has a path"),
            ("api.example.com#x", "error: has a path"),
            ("user@api.example.com", "error: user information"),
            ("*", "error: too broad"),
            ("*:443", "error: too broad"),
            ("*.com", "error: too broad"),
            ("*.com.", "error: too broad"),
            ("*.localhost:8443", "error: too broad"),
            ("a.*.com", "error: not a leading `*.` label"),
            ("*example.com", "error: not a leading `*.` label"),
            ("**.example.com", "error: not a leading `*.` label"),
            ("*.*.example.com", "error: not a leading `*.` label"),
            ("api.example.*", "error: not a leading `*.` label"),
            ("*.", "error: empty"),
            ("*..example.com", "error: empty label"),
            ("*.127.0.0.1", "error: wildcard on an IP address"),
            ("*.1.2", "error: wildcard on an IP address"),
            ("*.[::1]", "error: wildcard on an IP address"),
            ("*.example.123", "error: not a valid IPv4 address"),
            ("api.example.com:0", "error: port \"0\""),
            ("api.example.com:65536", "error: port \"65536\""),
            ("api.example.com:", "error: port \"\""),
            ("api.example.com:https", "error: port \"https\""),
            ("api.example.com:-1", "error: port \"-1\""),
            ("[::1]:0", "error: port \"0\""),
            ("2001:db8::1", "error: without brackets"),
            ("[::1", "error: without a matching ']'"),
            ("[fe80::1%eth0]", "error: zone identifier"),
            ("api example.com", "error: the character ' '"),
            (" api.example.com", "error: the character ' '"),
            ("api_.example.com", "api_.example.com"),
            ("-api.example.com", "error: starts or ends with '-'"),
            ("bücher.example", "error: non-ASCII"),
            ("1.2.3.4.5", "error: more than four parts"),
            ("256.1.1.1", "error: too large"),
        ] {
            check_parse(input, expected);
        }
    }

    #[test]
    fn errors_do_not_repeat_credentials() {
        for input in [
            "https://admin:hunter2@api.example.com",
            "admin:hunter2@api.example.com",
            "api.example.com/?token=hunter2",
            "https://api.example.com/path?token=hunter2",
        ] {
            let err = HostPattern::parse(input)
                .expect_err("these entries are refused")
                .to_string();
            assert!(!err.contains("hunter2"), "{err}");
            assert!(err.contains("api.example.com"), "{err}");
        }
    }

    /// Checks whether `pattern` matches a request to `authority` (port 443
    /// unless the authority names one).
    #[track_caller]
    fn check_match(pattern: &str, authority: &str, expected: bool) {
        let pattern = HostPattern::parse(pattern).expect("test patterns are valid");
        let (host, port) =
            addr::parse_authority(authority, DEFAULT_PORT).expect("test authorities are valid");
        assert_eq!(
            pattern.matches(&host, port),
            expected,
            "{pattern} against {authority}"
        );
    }

    #[test]
    fn exact_names() {
        for (pattern, authority, expected) in [
            ("api.example.com", "api.example.com", true),
            ("api.example.com", "API.EXAMPLE.COM.", true),
            ("api.example.com", "api.example.com:443", true),
            ("api.example.com", "api.example.com:8443", false),
            ("api.example.com", "example.com", false),
            ("api.example.com", "x.api.example.com", false),
            ("api.example.com", "api.example.com.evil.com", false),
            ("example.com", "example.com.evil.com", false),
            ("example.com", "evilexample.com", false),
            ("example.com", "a.example.com", false),
            ("api.example.com", "api-example.com", false),
        ] {
            check_match(pattern, authority, expected);
        }
    }

    #[test]
    fn wildcards() {
        for (pattern, authority, expected) in [
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "A.Example.Com.", true),
            ("*.example.com", "a.b.example.com", true),
            ("*.example.com", "_dmarc.example.com", true),
            ("*.example.com", "example.com", false),
            ("*.example.com", "evilexample.com", false),
            ("*.example.com", "a.evilexample.com", false),
            ("*.example.com", "example.com.evil.com", false),
            ("*.example.com", "a.example.com.evil.com", false),
            ("*.example.com", "a.example.co", false),
            ("*.example.com", "a.example.com:8443", false),
            ("*.example.com:8443", "a.example.com:8443", true),
            ("*.example.com:8443", "a.example.com", false),
            ("*.example.com:8443", "example.com:8443", false),
            ("*.co.uk", "example.co.uk", true),
        ] {
            check_match(pattern, authority, expected);
        }
    }

    #[test]
    fn ip_literals() {
        for (pattern, authority, expected) in [
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "2130706433", true),
            ("127.0.0.1", "0x7f000001", true),
            ("127.0.0.1", "0177.0.0.1", true),
            ("127.0.0.1", "127.1", true),
            ("127.0.0.1", "0x7f.1", true),
            ("127.0.0.1", "017700000001", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("127.0.0.1", "127.0.0.1:8443", false),
            ("127.0.0.1:8443", "2130706433:8443", true),
            ("127.0.0.1", "[::ffff:127.0.0.1]", false),
            ("127.0.0.1", "[::1]", false),
            ("127.0.0.1", "localhost", false),
            ("[::ffff:127.0.0.1]", "[::ffff:7f00:1]", true),
            ("[2001:db8::1]:8443", "[2001:DB8:0::1]:8443", true),
            ("[2001:db8::1]:8443", "[2001:db8::1]", false),
            ("[2001:db8::1]", "[2001:db8::2]", false),
            ("203.0.113.7", "203.0.113.7", true),
        ] {
            check_match(pattern, authority, expected);
        }
    }

    #[test]
    fn wildcards_never_match_addresses_or_unnormalised_names() {
        let pattern = HostPattern::parse("*.example.com").expect("valid pattern");
        let ip = Host::Ip("127.0.0.1".parse().expect("valid address"));
        assert!(!pattern.matches(&ip, 443));
        for name in [
            "A.example.com",
            "a.example.com.",
            ".example.com",
            "a..example.com",
            "a b.example.com",
            "a/.example.com",
        ] {
            assert!(
                !pattern.matches(&Host::Name(name.to_owned()), 443),
                "{name:?}"
            );
        }
    }

    #[test]
    fn pattern_accessors() {
        let plain = HostPattern::parse("api.example.com").expect("valid pattern");
        assert_eq!(plain.port(), None);
        assert_eq!(plain.effective_port(), 443);
        assert!(!plain.is_wildcard());
        let wild: HostPattern = "*.example.com:8443".parse().expect("valid pattern");
        assert_eq!(wild.port(), Some(8443));
        assert_eq!(wild.effective_port(), 8443);
        assert!(wild.is_wildcard());
    }

    #[test]
    fn grants() {
        let empty = NetGrant::parse(Vec::<String>::new()).expect("empty grant");
        assert!(empty.is_empty());
        assert_eq!(empty, NetGrant::default());
        let host = |s: &str| addr::parse_host(s).expect("valid host");
        assert!(!empty.allows(&host("api.example.com"), 443));
        assert!(!empty.allows(&host("127.0.0.1"), 443));

        let grant = NetGrant::parse(["api.example.com", "*.slack.example:8443", "[::1]:9443"])
            .expect("valid grant");
        assert!(!grant.is_empty());
        let shown: Vec<String> = grant.patterns().iter().map(|p| p.to_string()).collect();
        assert_eq!(
            shown,
            ["api.example.com", "*.slack.example:8443", "[::1]:9443"]
        );
        for (h, port, expected) in [
            ("api.example.com", 443, true),
            ("api.example.com", 8443, false),
            ("hooks.slack.example", 8443, true),
            ("hooks.slack.example", 443, false),
            ("slack.example", 8443, false),
            ("[::1]", 9443, true),
            ("127.0.0.1", 9443, false),
            ("other.example.com", 443, false),
        ] {
            assert_eq!(grant.allows(&host(h), port), expected, "{h}:{port}");
        }

        let owned = vec![String::from("a.example"), String::from("b.example")];
        assert_eq!(
            NetGrant::parse(&owned)
                .expect("valid grant")
                .patterns()
                .len(),
            2
        );

        let err = NetGrant::parse(["ok.example", "https://bad.example", "*"])
            .expect_err("the first bad entry is reported");
        assert!(
            matches!(err, PatternError::Scheme { ref suggestion, .. } if suggestion == "bad.example"),
            "{err}"
        );
    }

    #[test]
    fn connection_hosts_refuse_wildcards_over_public_suffixes() {
        for input in [
            "*.herokuapp.com",
            "*.co.uk",
            "*.s3.amazonaws.com",
            "*.github.io",
            "*.CO.UK.",
            "*.co.uk:8443",
        ] {
            let err = NetGrant::parse_for_connection(["api.example.com", input]).expect_err(input);
            assert!(
                matches!(err, PatternError::PublicSuffix { .. }),
                "{input}: {err:?}"
            );
            assert!(err.to_string().contains("public suffix"), "{err}");
            // A step's net grant may still name it.
            assert!(NetGrant::parse([input]).is_ok(), "{input}");
        }
        // `*.com` is refused for being a single label already.
        assert!(matches!(
            NetGrant::parse_for_connection(["*.com"]),
            Err(PatternError::WildcardTooBroad { .. })
        ));
        for input in [
            "*.example.com",
            "*.myapp.herokuapp.com",
            "*.example.co.uk",
            "myapp.herokuapp.com",
            "co.uk",
            "*.corp.internal",
            "127.0.0.1:*",
        ] {
            assert!(NetGrant::parse_for_connection([input]).is_ok(), "{input}");
        }
    }

    #[test]
    fn an_explicit_any_port_pattern_matches_every_port() {
        let pattern = HostPattern::parse("api.example.com:*").unwrap();
        let host = crate::egress::addr::parse_host("api.example.com").unwrap();
        assert!(pattern.matches(&host, 443));
        assert!(pattern.matches(&host, 8443));
        assert_eq!(pattern.to_string(), "api.example.com:*");
        let other = crate::egress::addr::parse_host("evil.example.com").unwrap();
        assert!(!pattern.matches(&other, 443));
        assert!(HostPattern::parse("api.example.com:**").is_err());
    }
}

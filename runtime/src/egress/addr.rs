//! Host names and IP addresses as egress sees them.
//!
//! [`parse_host`] turns the host part of a URL authority into a [`Host`]: a
//! normalised DNS name or an IP address. Every spelling of an IPv4 address
//! that `inet_aton` or a WHATWG URL parser accepts (`2130706433`, `0x7f.1`,
//! `0177.0.0.1`, ...) becomes an [`IpAddr`], so an IP literal can never pass
//! as a name. [`parse_authority`] does the same for `host[:port]`.
//!
//! [`classify`] says whether an address is public. The non-public ranges are
//! one table per address family ([`Range`] names the one that matched), and
//! every IPv6 form that embeds an IPv4 address (IPv4-mapped, NAT64, 6to4,
//! Teredo, ...) is non-public whatever it embeds. [`AddressPolicy`] refuses a
//! non-public address unless the operator allowed a range containing it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The longest accepted DNS name, in bytes, without the trailing dot.
const MAX_NAME_LEN: usize = 253;

/// The longest accepted DNS label, in bytes.
const MAX_LABEL_LEN: usize = 63;

/// The most characters of an input that an error message repeats.
const MAX_SHOWN_CHARS: usize = 256;

/// A host a request is addressed to: a DNS name or an IP address.
///
/// Values built by [`parse_host`] and [`parse_authority`] are normalised: a
/// name is lowercase ASCII without a trailing dot and is never an IPv4
/// address in disguise. Code that compares hosts relies on this, so build
/// hosts from untrusted input only through those functions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name, such as `api.example.com`.
    Name(String),
    /// An IP address literal, such as `203.0.113.7` or `[2001:db8::1]`.
    Ip(IpAddr),
}

impl Host {
    /// The name, if this host is a DNS name.
    pub fn as_name(&self) -> Option<&str> {
        match self {
            Host::Name(name) => Some(name),
            Host::Ip(_) => None,
        }
    }

    /// The address, if this host is an IP literal.
    pub fn as_ip(&self) -> Option<IpAddr> {
        match self {
            Host::Name(_) => None,
            Host::Ip(ip) => Some(*ip),
        }
    }
}

/// Writes a name as it is, an IPv4 address in dotted decimal and an IPv6
/// address in brackets (`[2001:db8::1]`), as in a URL.
impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// A host or authority that could not be parsed.
///
/// Messages repeat the offending input (shortened if very long), except for
/// user information, which may hold a password and is never repeated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// The host is empty.
    #[error("host is empty")]
    Empty,
    /// The host has a character outside ASCII.
    #[error(
        "host {input:?} contains a non-ASCII character; write an internationalised name in its ASCII (punycode) form"
    )]
    NotAscii {
        /// The host as given.
        input: String,
    },
    /// The host has a character that no host name may contain.
    #[error("host {input:?} contains the character {ch:?}, which is not allowed in a host name")]
    InvalidCharacter {
        /// The host as given.
        input: String,
        /// The first character at fault.
        ch: char,
    },
    /// The name has an empty label (`a..b`, `.a`, or a lone `.`).
    #[error("host {input:?} has an empty label")]
    EmptyLabel {
        /// The host as given.
        input: String,
    },
    /// A label of the name is longer than 63 characters.
    #[error("host {input:?} has a label longer than 63 characters")]
    LabelTooLong {
        /// The host as given.
        input: String,
    },
    /// A label of the name starts or ends with `-`.
    #[error("host {input:?} has a label that starts or ends with '-'")]
    LabelHyphen {
        /// The host as given.
        input: String,
    },
    /// The name is longer than 253 characters.
    #[error("host {input:?} is longer than 253 characters")]
    NameTooLong {
        /// The host as given.
        input: String,
    },
    /// The host ends in a number, so it can only be an IPv4 address, and it
    /// is not a valid one.
    #[error("host {input:?} ends in a number but is not a valid IPv4 address: {reason}")]
    InvalidIpv4 {
        /// The host as given.
        input: String,
        /// What is wrong with it.
        reason: Ipv4Error,
    },
    /// The host looks like an IPv6 address and is not a valid one.
    #[error("host {input:?} is not a valid IPv6 address")]
    InvalidIpv6 {
        /// The host as given.
        input: String,
    },
    /// The IPv6 address has a zone identifier (`%eth0`).
    #[error("host {input:?} has an IPv6 zone identifier ('%'), which is not allowed")]
    ZoneId {
        /// The host as given.
        input: String,
    },
    /// A `[` has no matching `]`.
    #[error("host {input:?} has a '[' without a matching ']'")]
    UnclosedBracket {
        /// The host or authority as given.
        input: String,
    },
    /// Something other than `:port` follows a bracketed IPv6 address.
    #[error("{input:?} has unexpected text after ']'")]
    TextAfterBracket {
        /// The host or authority as given.
        input: String,
    },
    /// An authority holds an IPv6 address without brackets.
    #[error(
        "authority {input:?} has an IPv6 address without brackets; write it as [address] or [address]:port"
    )]
    UnbracketedIpv6 {
        /// The authority as given.
        input: String,
    },
    /// The authority has user information (`user:password@host`).
    #[error(
        "the authority for host {host:?} has user information before '@', which is not allowed (it is not shown)"
    )]
    Userinfo {
        /// What follows the last `@`; the user information is left out.
        host: String,
    },
    /// The port is not a number from 1 to 65535.
    #[error("port {port:?} in {input:?} is not a number from 1 to 65535")]
    InvalidPort {
        /// The authority as given.
        input: String,
        /// The port as given.
        port: String,
    },
}

/// Why a host that ends in a number is not a valid IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Ipv4Error {
    /// More than four dot-separated parts.
    #[error("it has more than four parts")]
    TooManyParts,
    /// An empty part (`1..2`).
    #[error("it has an empty part")]
    EmptyPart,
    /// A part is not a decimal, octal (leading `0`) or hexadecimal (`0x`)
    /// number.
    #[error("a part is not a decimal, octal (leading 0) or hexadecimal (0x) number")]
    InvalidNumber,
    /// A part is too large: above 255, or for the last part above what the
    /// remaining bytes hold.
    #[error("a part is too large for its place in the address")]
    Overflow,
}

/// Parses the host part of a URL authority (no port) into a normalised
/// [`Host`].
///
/// - `[...]` must hold an IPv6 address; an IPv6 address without brackets is
///   accepted too. Zone identifiers (`%eth0`) are refused.
/// - A host whose last label starts with a digit "ends in a number" and must
///   be an IPv4 address in one of the spellings that `inet_aton` and WHATWG
///   URL parsers accept: one to four parts separated by dots, each decimal,
///   octal (leading `0`) or hexadecimal (`0x`), the last part filling the
///   remaining bytes (`127.1`, `0x7f000001`, `0177.0.0.1`). Anything else
///   ending in a number is an error, never a name.
/// - Anything else is a DNS name: ASCII, lowercased, one trailing dot
///   removed, labels of 1 to 63 characters from `a-z`, `0-9`, `-` and `_`,
///   not starting or ending with `-`, 253 characters at most.
///
/// # Errors
///
/// A [`HostError`] naming the input if it is none of the above.
pub fn parse_host(raw: &str) -> Result<Host, HostError> {
    if raw.is_empty() {
        return Err(HostError::Empty);
    }
    if let Some((_, host)) = raw.rsplit_once('@') {
        return Err(HostError::Userinfo { host: shown(host) });
    }
    if let Some(inner) = raw.strip_prefix('[') {
        return match inner.strip_suffix(']') {
            Some(inner) => parse_ipv6(inner, raw).map(|ip| Host::Ip(IpAddr::V6(ip))),
            None if inner.contains(']') => Err(HostError::TextAfterBracket { input: shown(raw) }),
            None => Err(HostError::UnclosedBracket { input: shown(raw) }),
        };
    }
    if !raw.is_ascii() {
        return Err(HostError::NotAscii { input: shown(raw) });
    }
    if raw.contains(':') {
        return match parse_ipv6(raw, raw) {
            Ok(ip) => Ok(Host::Ip(IpAddr::V6(ip))),
            Err(HostError::InvalidIpv6 { input }) => {
                Err(HostError::InvalidCharacter { input, ch: ':' })
            }
            Err(other) => Err(other),
        };
    }
    let lower = raw.to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.is_empty() {
        return Err(HostError::EmptyLabel { input: shown(raw) });
    }
    let last_label = name.rsplit_once('.').map_or(name, |(_, last)| last);
    if last_label.starts_with(|c: char| c.is_ascii_digit()) {
        return parse_ipv4(name)
            .map(|ip| Host::Ip(IpAddr::V4(ip)))
            .map_err(|reason| HostError::InvalidIpv4 {
                input: shown(raw),
                reason,
            });
    }
    validate_name(name, raw)?;
    Ok(Host::Name(name.to_owned()))
}

/// Splits a URL authority, `host[:port]`, into its host and port.
///
/// The host is parsed by [`parse_host`]; an IPv6 host must be in brackets
/// (`[2001:db8::1]:8443`). Without a port, `default_port` is returned as it
/// is.
///
/// # Errors
///
/// A [`HostError`] if the authority has user information (`user@host`), an
/// IPv6 address without brackets, a port that is empty or not a number from
/// 1 to 65535, or a host [`parse_host`] refuses.
pub fn parse_authority(authority: &str, default_port: u16) -> Result<(Host, u16), HostError> {
    let (host, port) = split_authority(authority)?;
    let host = parse_host(host)?;
    let port = match port {
        Some(port) => parse_port(port, authority)?,
        None => default_port,
    };
    Ok((host, port))
}

/// Splits `host[:port]` without parsing either part.
///
/// The host keeps its brackets; the port is `None` when there is no `:`. An
/// authority with user information or an unbracketed IPv6 address is
/// refused.
pub(crate) fn split_authority(authority: &str) -> Result<(&str, Option<&str>), HostError> {
    if authority.is_empty() {
        return Err(HostError::Empty);
    }
    if let Some((_, host)) = authority.rsplit_once('@') {
        return Err(HostError::Userinfo { host: shown(host) });
    }
    if authority.starts_with('[') {
        let Some(close) = authority.find(']') else {
            return Err(HostError::UnclosedBracket {
                input: shown(authority),
            });
        };
        let (host, rest) = authority.split_at(close + 1);
        if rest.is_empty() {
            return Ok((host, None));
        }
        return match rest.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None => Err(HostError::TextAfterBracket {
                input: shown(authority),
            }),
        };
    }
    match authority.split_once(':') {
        None => Ok((authority, None)),
        Some((_, port)) if port.contains(':') => Err(HostError::UnbracketedIpv6 {
            input: shown(authority),
        }),
        Some((host, port)) => Ok((host, Some(port))),
    }
}

/// Parses a port: ASCII digits only (leading zeros allowed), 1 to 65535.
pub(crate) fn parse_port(port: &str, authority: &str) -> Result<u16, HostError> {
    let invalid = || HostError::InvalidPort {
        input: shown(authority),
        port: shown(port),
    };
    if port.is_empty() {
        return Err(invalid());
    }
    let mut value: u32 = 0;
    for c in port.chars() {
        let digit = c.to_digit(10).ok_or_else(invalid)?;
        value = value
            .checked_mul(10)
            .and_then(|v| v.checked_add(digit))
            .ok_or_else(invalid)?;
    }
    match u16::try_from(value) {
        Ok(0) | Err(_) => Err(invalid()),
        Ok(port) => Ok(port),
    }
}

/// Whether `name` is a DNS name exactly as [`parse_host`] would return it.
pub(crate) fn is_normalised_name(name: &str) -> bool {
    matches!(parse_host(name), Ok(Host::Name(parsed)) if parsed == name)
}

/// Parses the inside of `[...]` (or an unbracketed host with a `:`).
fn parse_ipv6(inner: &str, raw: &str) -> Result<Ipv6Addr, HostError> {
    if inner.contains('%') {
        return Err(HostError::ZoneId { input: shown(raw) });
    }
    inner
        .parse::<Ipv6Addr>()
        .map_err(|_| HostError::InvalidIpv6 { input: shown(raw) })
}

/// Parses an IPv4 address the way the WHATWG URL standard (and
/// `inet_aton`) does. The input is lowercase and has no trailing dot.
fn parse_ipv4(name: &str) -> Result<Ipv4Addr, Ipv4Error> {
    let mut parts = [0_u64; 4];
    let mut count = 0;
    for part in name.split('.') {
        let slot = parts.get_mut(count).ok_or(Ipv4Error::TooManyParts)?;
        if part.is_empty() {
            return Err(Ipv4Error::EmptyPart);
        }
        *slot = parse_ipv4_number(part)?;
        count += 1;
    }
    let (leading, last) = match parts.get(..count).and_then(<[u64]>::split_last) {
        Some((last, leading)) => (leading, *last),
        None => return Err(Ipv4Error::EmptyPart),
    };
    let mut address: u32 = 0;
    for (index, part) in leading.iter().enumerate() {
        let byte = u8::try_from(*part).map_err(|_| Ipv4Error::Overflow)?;
        address |= u32::from(byte) << (8 * (3 - index));
    }
    // The last part fills the bytes the leading parts left: 32 bits for one
    // part, 8 bits for four.
    let last_bits = 8 * (4 - leading.len());
    if last >= 1_u64 << last_bits {
        return Err(Ipv4Error::Overflow);
    }
    let last = u32::try_from(last).map_err(|_| Ipv4Error::Overflow)?;
    Ok(Ipv4Addr::from(address | last))
}

/// Parses one part of an IPv4 address: `0x` hexadecimal (an empty `0x` is
/// zero, as in WHATWG), leading-`0` octal, or decimal.
fn parse_ipv4_number(part: &str) -> Result<u64, Ipv4Error> {
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if part.len() > 1
            && let Some(octal) = part.strip_prefix('0')
        {
            (octal, 8)
        } else {
            (part, 10)
        };
    let mut value: u64 = 0;
    for c in digits.chars() {
        let digit = c.to_digit(radix).ok_or(Ipv4Error::InvalidNumber)?;
        value = value
            .checked_mul(u64::from(radix))
            .and_then(|v| v.checked_add(u64::from(digit)))
            .ok_or(Ipv4Error::Overflow)?;
    }
    Ok(value)
}

/// Checks a lowercase name without its trailing dot; `raw` is for messages.
fn validate_name(name: &str, raw: &str) -> Result<(), HostError> {
    let allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_');
    if let Some(ch) = name.chars().find(|&c| c != '.' && !allowed(c)) {
        return Err(HostError::InvalidCharacter {
            input: shown(raw),
            ch,
        });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(HostError::NameTooLong { input: shown(raw) });
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(HostError::EmptyLabel { input: shown(raw) });
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(HostError::LabelTooLong { input: shown(raw) });
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(HostError::LabelHyphen { input: shown(raw) });
        }
    }
    Ok(())
}

/// The input as an error message repeats it: at most [`MAX_SHOWN_CHARS`]
/// characters, with `...` when shortened.
pub(crate) fn shown(input: &str) -> String {
    match input.char_indices().nth(MAX_SHOWN_CHARS) {
        Some((cut, _)) => format!("{}...", &input[..cut]),
        None => input.to_owned(),
    }
}

/// Whether an address is public, and if not, which range it is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrClass {
    /// A global unicast address outside every non-public range.
    Public,
    /// An address in a non-public range.
    NonPublic(Range),
}

impl AddrClass {
    /// Whether the address is public.
    pub fn is_public(&self) -> bool {
        matches!(self, AddrClass::Public)
    }
}

/// Writes `public` or `non-public: <range>`.
impl fmt::Display for AddrClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrClass::Public => f.write_str("public"),
            AddrClass::NonPublic(range) => write!(f, "non-public: {range}"),
        }
    }
}

/// A non-public address range, as [`classify`] found it.
///
/// Displays as its name and network, such as `loopback (127.0.0.0/8)`, and
/// for IPv6 forms that embed an IPv4 address, the embedded address too:
/// `IPv4-mapped (::ffff:0.0.0.0/96, embeds 127.0.0.1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Range {
    name: &'static str,
    net: IpNet,
    embedded: Option<Ipv4Addr>,
}

impl Range {
    /// The human name of the range, such as `loopback`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The network of the range, such as `127.0.0.0/8`.
    pub fn net(&self) -> IpNet {
        self.net
    }

    /// The IPv4 address embedded in the classified IPv6 address, for the
    /// ranges whose addresses embed one at a fixed place (IPv4-mapped,
    /// IPv4-compatible, IPv4-translated, NAT64 `64:ff9b::/96`, 6to4, and the
    /// Teredo client).
    pub fn embedded_ipv4(&self) -> Option<Ipv4Addr> {
        self.embedded
    }
}

impl Range {
    /// The range as a message puts it inside parentheses, such as
    /// `private-use 10.0.0.0/8`.
    fn inline(&self) -> String {
        match self.embedded {
            Some(v4) => format!("{} {}, embeds {v4}", self.name, self.net),
            None => format!("{} {}", self.name, self.net),
        }
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.embedded {
            Some(v4) => write!(f, "{} ({}, embeds {v4})", self.name, self.net),
            None => write!(f, "{} ({})", self.name, self.net),
        }
    }
}

/// Where an IPv6 range embeds an IPv4 address.
#[derive(Debug, Clone, Copy)]
enum Embedding {
    /// No IPv4 address at a fixed place.
    None,
    /// The last 32 bits (IPv4-mapped, IPv4-compatible, NAT64).
    Last32,
    /// Bits 16 to 48 (6to4, RFC 3056).
    SixToFour,
    /// The last 32 bits inverted (the Teredo client, RFC 4380).
    TeredoClient,
}

impl Embedding {
    fn extract(self, ip: Ipv6Addr) -> Option<Ipv4Addr> {
        let s = ip.segments();
        let join = |high: u16, low: u16| Ipv4Addr::from((u32::from(high) << 16) | u32::from(low));
        match self {
            Embedding::None => None,
            Embedding::Last32 => Some(join(s[6], s[7])),
            Embedding::SixToFour => Some(join(s[1], s[2])),
            Embedding::TeredoClient => Some(join(!s[6], !s[7])),
        }
    }
}

/// One row of a range table.
#[derive(Debug, Clone, Copy)]
struct Entry {
    net: IpNet,
    name: &'static str,
    embedding: Embedding,
}

/// A row for an IPv4 range.
const fn v4(octets: [u8; 4], prefix: u8, name: &'static str) -> Entry {
    let [a, b, c, d] = octets;
    Entry {
        net: IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)),
        name,
        embedding: Embedding::None,
    }
}

/// A row for an IPv6 range whose addresses embed an IPv4 address as
/// `embedding` says.
const fn v6(segments: [u16; 8], prefix: u8, name: &'static str, embedding: Embedding) -> Entry {
    let [a, b, c, d, e, f, g, h] = segments;
    Entry {
        net: IpNet::V6(Ipv6Net::new_assert(
            Ipv6Addr::new(a, b, c, d, e, f, g, h),
            prefix,
        )),
        name,
        embedding,
    }
}

/// A row for an IPv6 range that starts with the 16-bit `first` segment.
const fn v6_block(first: u16, prefix: u8, name: &'static str) -> Entry {
    v6([first, 0, 0, 0, 0, 0, 0, 0], prefix, name, Embedding::None)
}

/// The non-public IPv4 ranges (IANA special-purpose registry, RFC 6890 and
/// successors). The most specific matching row names the range; an address
/// in no row is public.
#[rustfmt::skip]
const IPV4_RANGES: &[Entry] = &[
    v4([0, 0, 0, 0],         8,  "this network"),
    v4([0, 0, 0, 0],         32, "unspecified"),
    v4([10, 0, 0, 0],        8,  "private-use"),
    v4([100, 64, 0, 0],      10, "shared address space (CGNAT)"),
    v4([127, 0, 0, 0],       8,  "loopback"),
    v4([169, 254, 0, 0],     16, "link-local"),
    v4([169, 254, 169, 254], 32, "link-local (cloud metadata service)"),
    v4([172, 16, 0, 0],      12, "private-use"),
    v4([192, 0, 0, 0],       24, "IETF protocol assignments"),
    v4([192, 0, 2, 0],       24, "documentation (TEST-NET-1)"),
    v4([192, 88, 99, 0],     24, "6to4 relay anycast (deprecated)"),
    v4([192, 168, 0, 0],     16, "private-use"),
    v4([198, 18, 0, 0],      15, "benchmarking"),
    v4([198, 51, 100, 0],    24, "documentation (TEST-NET-2)"),
    v4([203, 0, 113, 0],     24, "documentation (TEST-NET-3)"),
    v4([224, 0, 0, 0],       4,  "multicast"),
    v4([240, 0, 0, 0],       4,  "reserved"),
    v4([255, 255, 255, 255], 32, "limited broadcast"),
];

/// The non-public IPv6 ranges. Besides the special-purpose ranges, the
/// table lists every IANA block outside global unicast (`2000::/3`), so an
/// address in no row is global unicast and public.
#[rustfmt::skip]
const IPV6_RANGES: &[Entry] = &[
    // Special-purpose ranges inside ::/8.
    v6([0, 0, 0, 0, 0, 0, 0, 0],           128, "unspecified", Embedding::None),
    v6([0, 0, 0, 0, 0, 0, 0, 1],           128, "loopback", Embedding::None),
    v6([0, 0, 0, 0, 0, 0, 0, 0],           96,  "IPv4-compatible (deprecated)", Embedding::Last32),
    v6([0, 0, 0, 0, 0, 0xffff, 0, 0],      96,  "IPv4-mapped", Embedding::Last32),
    v6([0, 0, 0, 0, 0xffff, 0, 0, 0],      96,  "IPv4-translated", Embedding::Last32),
    v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0],   96,  "NAT64", Embedding::Last32),
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0],   48,  "NAT64 (local use)", Embedding::None),
    // Special-purpose range inside 100::/8.
    v6([0x100, 0, 0, 0, 0, 0, 0, 0],       64,  "discard-only", Embedding::None),
    // Special-purpose ranges inside global unicast (2000::/3).
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0],      32,  "Teredo", Embedding::TeredoClient),
    v6([0x2001, 2, 0, 0, 0, 0, 0, 0],      48,  "benchmarking", Embedding::None),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],  32,  "documentation", Embedding::None),
    v6([0x2002, 0, 0, 0, 0, 0, 0, 0],      16,  "6to4", Embedding::SixToFour),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0],      20,  "documentation", Embedding::None),
    // Every block outside global unicast (IANA IPv6 address space).
    v6_block(0x0000, 8,  "reserved by IETF"),
    v6_block(0x0100, 8,  "reserved by IETF"),
    v6_block(0x0200, 7,  "reserved by IETF"),
    v6_block(0x0400, 6,  "reserved by IETF"),
    v6_block(0x0800, 5,  "reserved by IETF"),
    v6_block(0x1000, 4,  "reserved by IETF"),
    v6_block(0x4000, 3,  "reserved by IETF"),
    v6_block(0x6000, 3,  "reserved by IETF"),
    v6_block(0x8000, 3,  "reserved by IETF"),
    v6_block(0xa000, 3,  "reserved by IETF"),
    v6_block(0xc000, 3,  "reserved by IETF"),
    v6_block(0xe000, 4,  "reserved by IETF"),
    v6_block(0xf000, 5,  "reserved by IETF"),
    v6_block(0xf800, 6,  "reserved by IETF"),
    v6_block(0xfc00, 7,  "unique local"),
    v6_block(0xfe00, 9,  "reserved by IETF"),
    v6_block(0xfe80, 10, "link-local"),
    v6_block(0xfec0, 10, "site-local (deprecated)"),
    v6_block(0xff00, 8,  "multicast"),
];

/// Says whether `ip` is public, and if not, names the most specific
/// non-public range it is in.
///
/// Only global unicast addresses outside every special-purpose range are
/// public. An IPv6 address that embeds an IPv4 address (IPv4-mapped,
/// IPv4-compatible, NAT64, 6to4, Teredo) is non-public whatever it embeds:
/// connecting to it reaches the IPv4 address through a translator the
/// operator did not vet.
pub fn classify(ip: IpAddr) -> AddrClass {
    let table = match ip {
        IpAddr::V4(_) => IPV4_RANGES,
        IpAddr::V6(_) => IPV6_RANGES,
    };
    let best = table
        .iter()
        .filter(|entry| entry.net.contains(&ip))
        .max_by_key(|entry| entry.net.prefix_len());
    match best {
        None => AddrClass::Public,
        Some(entry) => AddrClass::NonPublic(Range {
            name: entry.name,
            net: entry.net,
            embedded: match ip {
                IpAddr::V4(_) => None,
                IpAddr::V6(v6) => entry.embedding.extract(v6),
            },
        }),
    }
}

/// Which addresses egress may connect to.
///
/// Public addresses are always allowed. Non-public ones are refused unless
/// they lie in a range the operator allowed explicitly (for tests and
/// on-premises targets). Ranges are matched per address family: allowing
/// `127.0.0.0/8` does not allow `::ffff:127.0.0.1`; allow `::ffff:127.0.0.0/104`
/// for that.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    allowed: Vec<IpNet>,
}

impl AddressPolicy {
    /// The default policy: public addresses only, no range allowed.
    pub fn deny_non_public() -> AddressPolicy {
        AddressPolicy::default()
    }

    /// Also allows every address in `net` (stored truncated to its network
    /// address, so `10.1.2.3/16` allows `10.1.0.0/16`).
    pub fn allow(mut self, net: IpNet) -> AddressPolicy {
        self.allowed.push(net.trunc());
        self
    }

    /// The ranges the operator allowed.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allowed
    }

    /// Checks the address egress is about to connect to.
    ///
    /// # Errors
    ///
    /// [`BlockedAddress`] if `ip` is non-public and in no allowed range.
    pub fn check(&self, ip: IpAddr) -> Result<(), BlockedAddress> {
        match classify(ip) {
            AddrClass::Public => Ok(()),
            AddrClass::NonPublic(_) if self.allowed.iter().any(|net| net.contains(&ip)) => Ok(()),
            AddrClass::NonPublic(range) => Err(BlockedAddress { address: ip, range }),
        }
    }
}

/// An address egress refused to connect to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[error(
    "address {address} is in a non-public range ({}) and the operator has not allowed it",
    .range.inline()
)]
pub struct BlockedAddress {
    address: IpAddr,
    range: Range,
}

impl BlockedAddress {
    /// The refused address.
    pub fn address(&self) -> IpAddr {
        self.address
    }

    /// The non-public range it is in.
    pub fn range(&self) -> Range {
        self.range
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn describe(result: Result<Host, HostError>) -> String {
        match result {
            Ok(Host::Name(name)) => format!("name {name}"),
            Ok(host @ Host::Ip(_)) => format!("ip {host}"),
            Err(err) => format!("error: {err}"),
        }
    }

    /// Checks `parse_host(input)`. `expected` is `name <name>`, `ip <host>`,
    /// or `error: <part of the message>`.
    #[track_caller]
    fn check_host(input: &str, expected: &str) {
        let actual = describe(parse_host(input));
        match expected.strip_prefix("error: ") {
            Some(part) => assert!(
                actual.starts_with("error: ") && actual.contains(part),
                "parse_host({input:?}) = {actual:?}, want an error containing {part:?}"
            ),
            None => assert_eq!(actual, expected, "parse_host({input:?})"),
        }
    }

    #[test]
    fn names_are_normalised() {
        for (input, expected) in [
            ("example.com", "name example.com"),
            ("API.Example.COM", "name api.example.com"),
            ("example.com.", "name example.com"),
            ("localhost", "name localhost"),
            ("a_b.example.com", "name a_b.example.com"),
            ("xn--bcher-kva.example", "name xn--bcher-kva.example"),
            ("a-b.c-d.example", "name a-b.c-d.example"),
            ("1.2.3.example.com", "name 1.2.3.example.com"),
            ("0x7f.example.com", "name 0x7f.example.com"),
            ("123abc.example", "name 123abc.example"),
            ("x", "name x"),
        ] {
            check_host(input, expected);
        }
    }

    #[test]
    fn name_lengths() {
        let label63 = "a".repeat(63);
        let label64 = "a".repeat(64);
        check_host(&format!("{label63}.com"), &format!("name {label63}.com"));
        check_host(&format!("{label64}.com"), "error: longer than 63");
        // 4 labels of 63 plus 3 dots is 255; trim to exactly 253 and 254.
        let name253 = format!("{label63}.{label63}.{label63}.{}", "a".repeat(61));
        assert_eq!(name253.len(), 253);
        check_host(&name253, &format!("name {name253}"));
        check_host(&format!("{name253}."), &format!("name {name253}"));
        let name254 = format!("{name253}a");
        check_host(&name254, "error: longer than 253");
    }

    #[test]
    fn bad_names_are_errors() {
        for (input, expected) in [
            ("", "error: host is empty"),
            (".", "error: empty label"),
            ("..", "error: empty label"),
            ("example.com..", "error: empty label"),
            (".example.com", "error: empty label"),
            ("a..example.com", "error: empty label"),
            ("-a.example.com", "error: starts or ends with '-'"),
            ("a-.example.com", "error: starts or ends with '-'"),
            ("a b.example.com", "error: the character ' '"),
            (" example.com", "error: the character ' '"),
            ("example.com ", "error: the character ' '"),
            ("exa\tmple.com", "error: the character '\\t'"),
            ("a%2e.example.com", "error: the character '%'"),
            ("ex*mple.com", "error: the character '*'"),
            ("*.example.com", "error: the character '*'"),
            ("example.com/path", "error: the character '/'"),
            ("example.com\\", "error: the character '\\\\'"),
            ("bücher.example", "error: non-ASCII"),
            ("xn--bcher-kva.exämple", "error: non-ASCII"),
            ("example.com:443", "error: the character ':'"),
            ("user@example.com", "error: user information"),
            ("user:secret@example.com", "error: user information"),
        ] {
            check_host(input, expected);
        }
    }

    #[test]
    fn userinfo_is_never_repeated() {
        let err = describe(parse_host("user:hunter2@example.com"));
        assert!(err.contains("example.com"), "{err}");
        assert!(!err.contains("hunter2") && !err.contains("user:"), "{err}");
    }

    #[test]
    fn long_inputs_are_shortened_in_messages() {
        let long = "a ".repeat(1000);
        let err = describe(parse_host(&long));
        assert!(err.len() < 400, "{err}");
        assert!(err.contains("..."), "{err}");
    }

    #[test]
    fn every_ipv4_spelling_is_an_address() {
        for (input, expected) in [
            ("127.0.0.1", "ip 127.0.0.1"),
            ("127.0.0.1.", "ip 127.0.0.1"),
            ("2130706433", "ip 127.0.0.1"),
            ("0x7f000001", "ip 127.0.0.1"),
            ("0X7F000001", "ip 127.0.0.1"),
            ("0x7F000001", "ip 127.0.0.1"),
            ("017700000001", "ip 127.0.0.1"),
            ("0177.0.0.1", "ip 127.0.0.1"),
            ("0177.0.0.01", "ip 127.0.0.1"),
            ("127.1", "ip 127.0.0.1"),
            ("127.0.1", "ip 127.0.0.1"),
            ("0x7f.1", "ip 127.0.0.1"),
            ("0x7f.0.0.1", "ip 127.0.0.1"),
            ("0x7f.0x0.0x0.0x1", "ip 127.0.0.1"),
            ("0x7F.0X00.0.00001", "ip 127.0.0.1"),
            ("127.0x1", "ip 127.0.0.1"),
            ("127.00000000000000000000000000000000001", "ip 127.0.0.1"),
            ("0127.0.0.1", "ip 87.0.0.1"),
            ("0", "ip 0.0.0.0"),
            ("0x", "ip 0.0.0.0"),
            ("0x.0x.0x.0x", "ip 0.0.0.0"),
            ("00", "ip 0.0.0.0"),
            ("4294967295", "ip 255.255.255.255"),
            ("0xffffffff", "ip 255.255.255.255"),
            ("037777777777", "ip 255.255.255.255"),
            ("1.0xffffff", "ip 1.255.255.255"),
            ("1.16777215", "ip 1.255.255.255"),
            ("1.2.0xffff", "ip 1.2.255.255"),
            ("1.2.65535", "ip 1.2.255.255"),
            ("1.2.3.255", "ip 1.2.3.255"),
            ("169.254.169.254", "ip 169.254.169.254"),
            ("0xa9fea9fe", "ip 169.254.169.254"),
            ("2852039166", "ip 169.254.169.254"),
            ("10.1", "ip 10.0.0.1"),
        ] {
            check_host(input, expected);
        }
    }

    #[test]
    fn bad_ipv4_is_an_error_not_a_name() {
        for (input, expected) in [
            ("4294967296", "error: too large"),
            ("0x100000000", "error: too large"),
            ("040000000000", "error: too large"),
            ("99999999999999999999999999999", "error: too large"),
            ("0xffffffffffffffffffffffff", "error: too large"),
            ("256.0.0.1", "error: too large"),
            ("1.256.0.1", "error: too large"),
            ("1.2.256.1", "error: too large"),
            ("1.2.3.256", "error: too large"),
            ("1.2.65536", "error: too large"),
            ("1.16777216", "error: too large"),
            ("0x100.1", "error: too large"),
            ("0400.0.0.1", "error: too large"),
            ("1.2.3.4.5", "error: more than four parts"),
            ("127.0.0.0.1", "error: more than four parts"),
            ("1.2.3.4.5.6.7.8", "error: more than four parts"),
            ("1..2.3", "error: empty part"),
            ("08.0.0.1", "error: not a decimal, octal"),
            ("09", "error: not a decimal, octal"),
            ("0x1g", "error: not a decimal, octal"),
            ("0xg", "error: not a decimal, octal"),
            ("1e3", "error: not a decimal, octal"),
            ("example.123", "error: not a decimal, octal"),
            ("example.0x7f", "error: not a decimal, octal"),
            ("foo.1", "error: not a decimal, octal"),
            ("127.0.0.1 ", "error: not a decimal, octal"),
            ("127.0.0.1x", "error: not a decimal, octal"),
            ("-1.2.3.4", "error: not a decimal, octal"),
            ("1.2.3.-4", "error: starts or ends with '-'"),
            ("1.2.3.+4", "error: the character '+'"),
            ("127.0.0.1..", "error: empty label"),
        ] {
            check_host(input, expected);
        }
    }

    #[test]
    fn ipv6_literals() {
        for (input, expected) in [
            ("[::1]", "ip [::1]"),
            ("::1", "ip [::1]"),
            ("[::]", "ip [::]"),
            ("[2001:DB8::1]", "ip [2001:db8::1]"),
            ("[2001:db8:0:0:0:0:0:1]", "ip [2001:db8::1]"),
            ("[::ffff:127.0.0.1]", "ip [::ffff:127.0.0.1]"),
            ("[::ffff:7f00:1]", "ip [::ffff:127.0.0.1]"),
            ("[::127.0.0.1]", "ip [::7f00:1]"),
            ("[64:ff9b::7f00:1]", "ip [64:ff9b::7f00:1]"),
            ("[64:ff9b::127.0.0.1]", "ip [64:ff9b::7f00:1]"),
            ("[2002:7f00:1::]", "ip [2002:7f00:1::]"),
            ("[fe80::1%25eth0]", "error: zone identifier"),
            ("[fe80::1%eth0]", "error: zone identifier"),
            ("fe80::1%eth0", "error: zone identifier"),
            ("[::1", "error: without a matching ']'"),
            ("[::1]x", "error: unexpected text after ']'"),
            ("[::1]:443", "error: unexpected text after ']'"),
            ("[]", "error: not a valid IPv6"),
            ("[127.0.0.1]", "error: not a valid IPv6"),
            ("[example.com]", "error: not a valid IPv6"),
            ("[::1::2]", "error: not a valid IPv6"),
            ("[12345::1]", "error: not a valid IPv6"),
            ("[::ffff:0177.0.0.1]", "error: not a valid IPv6"),
            ("[ ::1]", "error: not a valid IPv6"),
            (":::", "error: the character ':'"),
        ] {
            check_host(input, expected);
        }
    }

    /// Checks `parse_authority(input, 443)`. `expected` is `<host> <port>`
    /// or `error: <part of the message>`.
    #[track_caller]
    fn check_authority(input: &str, expected: &str) {
        let actual = match parse_authority(input, 443) {
            Ok((host, port)) => format!("{host} {port}"),
            Err(err) => format!("error: {err}"),
        };
        match expected.strip_prefix("error: ") {
            Some(part) => assert!(
                actual.starts_with("error: ") && actual.contains(part),
                "parse_authority({input:?}) = {actual:?}, want an error containing {part:?}"
            ),
            None => assert_eq!(actual, expected, "parse_authority({input:?})"),
        }
    }

    #[test]
    fn authorities() {
        for (input, expected) in [
            ("example.com", "example.com 443"),
            ("EXAMPLE.com.", "example.com 443"),
            ("example.com:8443", "example.com 8443"),
            ("example.com:443", "example.com 443"),
            ("example.com:00443", "example.com 443"),
            ("example.com:1", "example.com 1"),
            ("example.com:65535", "example.com 65535"),
            ("127.1", "127.0.0.1 443"),
            ("2130706433:8443", "127.0.0.1 8443"),
            ("[::1]", "[::1] 443"),
            ("[::1]:8443", "[::1] 8443"),
            ("[::ffff:7f00:1]:443", "[::ffff:127.0.0.1] 443"),
            ("", "error: host is empty"),
            (":443", "error: host is empty"),
            ("example.com:", "error: port \"\""),
            ("example.com:0", "error: port \"0\""),
            ("example.com:65536", "error: port \"65536\""),
            ("example.com:99999999999", "error: port \"99999999999\""),
            ("example.com:+443", "error: port \"+443\""),
            ("example.com:-1", "error: port \"-1\""),
            ("example.com:44a", "error: port \"44a\""),
            ("example.com: 443", "error: port \" 443\""),
            ("::1", "error: without brackets"),
            ("2001:db8::1:443", "error: without brackets"),
            ("[::1", "error: without a matching ']'"),
            ("[::1]x", "error: unexpected text after ']'"),
            ("[::1]443", "error: unexpected text after ']'"),
            ("[::1]:", "error: port \"\""),
            ("[::1]:0", "error: port \"0\""),
            ("[::1%eth0]:443", "error: zone identifier"),
            ("[127.0.0.1]:443", "error: not a valid IPv6"),
            ("user@example.com", "error: user information"),
            ("user:pw@example.com:443", "error: user information"),
            ("a@b@example.com", "error: user information"),
            ("1.2.3.4.5:443", "error: more than four parts"),
            ("exa mple.com:443", "error: the character ' '"),
        ] {
            check_authority(input, expected);
        }
        // Without a port, the default is returned as it is.
        assert_eq!(
            parse_authority("example.com", 80),
            Ok((Host::Name("example.com".into()), 80))
        );
    }

    #[test]
    fn authority_userinfo_is_never_repeated() {
        let err = parse_authority("admin:hunter2@example.com:443", 443)
            .expect_err("userinfo must be refused")
            .to_string();
        assert!(!err.contains("hunter2") && !err.contains("admin"), "{err}");
        assert!(err.contains("example.com:443"), "{err}");
    }

    #[test]
    fn normalised_names() {
        assert!(is_normalised_name("api.example.com"));
        assert!(!is_normalised_name("API.example.com"));
        assert!(!is_normalised_name("api.example.com."));
        assert!(!is_normalised_name("127.0.0.1"));
        assert!(!is_normalised_name("a..b"));
        assert!(!is_normalised_name(""));
    }

    /// Checks `classify(input)`: `public` or the range's display.
    #[track_caller]
    fn check_class(input: &str, expected: &str) {
        let ip: IpAddr = input.parse().expect("test addresses are valid");
        let actual = match classify(ip) {
            AddrClass::Public => "public".to_owned(),
            AddrClass::NonPublic(range) => range.to_string(),
        };
        assert_eq!(actual, expected, "classify({input})");
    }

    #[test]
    fn ipv4_ranges() {
        for (input, expected) in [
            ("0.0.0.0", "unspecified (0.0.0.0/32)"),
            ("0.1.2.3", "this network (0.0.0.0/8)"),
            ("0.255.255.255", "this network (0.0.0.0/8)"),
            ("1.0.0.0", "public"),
            ("9.255.255.255", "public"),
            ("10.0.0.0", "private-use (10.0.0.0/8)"),
            ("10.0.0.5", "private-use (10.0.0.0/8)"),
            ("10.255.255.255", "private-use (10.0.0.0/8)"),
            ("11.0.0.0", "public"),
            ("100.63.255.255", "public"),
            ("100.64.0.0", "shared address space (CGNAT) (100.64.0.0/10)"),
            (
                "100.127.255.255",
                "shared address space (CGNAT) (100.64.0.0/10)",
            ),
            ("100.128.0.0", "public"),
            ("126.255.255.255", "public"),
            ("127.0.0.1", "loopback (127.0.0.0/8)"),
            ("127.255.255.254", "loopback (127.0.0.0/8)"),
            ("128.0.0.0", "public"),
            ("169.253.255.255", "public"),
            ("169.254.0.1", "link-local (169.254.0.0/16)"),
            (
                "169.254.169.254",
                "link-local (cloud metadata service) (169.254.169.254/32)",
            ),
            ("169.254.169.253", "link-local (169.254.0.0/16)"),
            ("169.255.0.0", "public"),
            ("172.15.255.255", "public"),
            ("172.16.0.0", "private-use (172.16.0.0/12)"),
            ("172.31.255.255", "private-use (172.16.0.0/12)"),
            ("172.32.0.0", "public"),
            ("191.255.255.255", "public"),
            ("192.0.0.0", "IETF protocol assignments (192.0.0.0/24)"),
            ("192.0.0.170", "IETF protocol assignments (192.0.0.0/24)"),
            ("192.0.1.0", "public"),
            ("192.0.2.1", "documentation (TEST-NET-1) (192.0.2.0/24)"),
            ("192.0.3.0", "public"),
            ("192.88.98.255", "public"),
            (
                "192.88.99.1",
                "6to4 relay anycast (deprecated) (192.88.99.0/24)",
            ),
            ("192.88.100.0", "public"),
            ("192.167.255.255", "public"),
            ("192.168.0.1", "private-use (192.168.0.0/16)"),
            ("192.168.255.255", "private-use (192.168.0.0/16)"),
            ("192.169.0.0", "public"),
            ("198.17.255.255", "public"),
            ("198.18.0.0", "benchmarking (198.18.0.0/15)"),
            ("198.19.255.255", "benchmarking (198.18.0.0/15)"),
            ("198.20.0.0", "public"),
            ("198.51.99.255", "public"),
            (
                "198.51.100.7",
                "documentation (TEST-NET-2) (198.51.100.0/24)",
            ),
            ("198.51.101.0", "public"),
            ("203.0.112.255", "public"),
            ("203.0.113.7", "documentation (TEST-NET-3) (203.0.113.0/24)"),
            ("203.0.114.0", "public"),
            ("223.255.255.255", "public"),
            ("224.0.0.1", "multicast (224.0.0.0/4)"),
            ("239.255.255.255", "multicast (224.0.0.0/4)"),
            ("240.0.0.0", "reserved (240.0.0.0/4)"),
            ("255.255.255.254", "reserved (240.0.0.0/4)"),
            ("255.255.255.255", "limited broadcast (255.255.255.255/32)"),
            ("8.8.8.8", "public"),
            ("1.1.1.1", "public"),
            ("93.184.215.14", "public"),
        ] {
            check_class(input, expected);
        }
    }

    #[test]
    fn ipv6_ranges() {
        for (input, expected) in [
            ("::", "unspecified (::/128)"),
            ("::1", "loopback (::1/128)"),
            (
                "::2",
                "IPv4-compatible (deprecated) (::/96, embeds 0.0.0.2)",
            ),
            (
                "::127.0.0.1",
                "IPv4-compatible (deprecated) (::/96, embeds 127.0.0.1)",
            ),
            (
                "::ffff:127.0.0.1",
                "IPv4-mapped (::ffff:0.0.0.0/96, embeds 127.0.0.1)",
            ),
            (
                "::ffff:7f00:1",
                "IPv4-mapped (::ffff:0.0.0.0/96, embeds 127.0.0.1)",
            ),
            (
                "::ffff:0:a00:5",
                "IPv4-translated (::ffff:0:0:0/96, embeds 10.0.0.5)",
            ),
            ("::1:0:0:1", "reserved by IETF (::/8)"),
            ("64:ff9b::7f00:1", "NAT64 (64:ff9b::/96, embeds 127.0.0.1)"),
            ("64:ff9b::1:0:0", "reserved by IETF (::/8)"),
            ("64:ff9b:1::1", "NAT64 (local use) (64:ff9b:1::/48)"),
            ("64:ff9b:2::1", "reserved by IETF (::/8)"),
            ("100::1", "discard-only (100::/64)"),
            ("100:0:0:1::1", "reserved by IETF (100::/8)"),
            ("1fff:ffff::1", "reserved by IETF (1000::/4)"),
            (
                "2001:0:4136:e378:8000:63bf:3fff:fdd2",
                "Teredo (2001::/32, embeds 192.0.2.45)",
            ),
            ("2001:1::1", "public"),
            ("2001:2::1", "benchmarking (2001:2::/48)"),
            ("2001:2:1::1", "public"),
            ("2001:db7:ffff::1", "public"),
            ("2001:db8::1", "documentation (2001:db8::/32)"),
            ("2001:db9::1", "public"),
            ("2002:7f00:1::", "6to4 (2002::/16, embeds 127.0.0.1)"),
            ("2002:c000:22a::1", "6to4 (2002::/16, embeds 192.0.2.42)"),
            ("2003::1", "public"),
            ("2001:ffff::1", "public"),
            ("3ffe:ffff::1", "public"),
            ("3fff::1", "documentation (3fff::/20)"),
            ("3fff:fff::1", "documentation (3fff::/20)"),
            ("3fff:1000::1", "public"),
            ("4000::1", "reserved by IETF (4000::/3)"),
            ("5f00::1", "reserved by IETF (4000::/3)"),
            ("fbff::1", "reserved by IETF (f800::/6)"),
            ("fc00::1", "unique local (fc00::/7)"),
            ("fd00:ec2::254", "unique local (fc00::/7)"),
            ("fdff:ffff::1", "unique local (fc00::/7)"),
            ("fe00::1", "reserved by IETF (fe00::/9)"),
            ("fe80::1", "link-local (fe80::/10)"),
            ("febf:ffff::1", "link-local (fe80::/10)"),
            ("fec0::1", "site-local (deprecated) (fec0::/10)"),
            ("ff02::1", "multicast (ff00::/8)"),
            (
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
                "multicast (ff00::/8)",
            ),
            ("2606:4700::1111", "public"),
            ("2606:4700:4700::1111", "public"),
            ("2001:4860:4860::8888", "public"),
            ("2a00:1450:4001::1", "public"),
        ] {
            check_class(input, expected);
        }
    }

    #[test]
    fn ipv6_embedding_a_public_ipv4_is_still_non_public() {
        for input in [
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "::ffff:0:808:808",
            "64:ff9b::8.8.8.8",
            "64:ff9b:1::808:808",
            "2002:808:808::1",
            "2001:0:1:2:0:0:f7f7:f7f7",
        ] {
            let ip: IpAddr = input.parse().expect("test addresses are valid");
            match classify(ip) {
                AddrClass::Public => panic!("{input} classified public"),
                AddrClass::NonPublic(range) => {
                    if let Some(v4) = range.embedded_ipv4() {
                        assert_eq!(v4, Ipv4Addr::new(8, 8, 8, 8), "{input}: {range}");
                    }
                }
            }
        }
    }

    #[test]
    fn only_global_unicast_can_be_public() {
        // The table covers every IPv6 block outside 2000::/3.
        for first in 0..=u16::MAX {
            for rest in [0, 1, 0xffff] {
                let ip = Ipv6Addr::new(first, rest, rest, rest, rest, rest, rest, rest);
                if !(0x2000..0x4000).contains(&first) {
                    assert!(
                        !classify(IpAddr::V6(ip)).is_public(),
                        "{ip} outside 2000::/3 classified public"
                    );
                }
            }
        }
    }

    #[test]
    fn tables_are_well_formed() {
        for entry in IPV4_RANGES.iter().chain(IPV6_RANGES) {
            assert_eq!(entry.net, entry.net.trunc(), "{} not truncated", entry.net);
            assert!(!entry.name.is_empty());
        }
        for (i, a) in IPV4_RANGES.iter().chain(IPV6_RANGES).enumerate() {
            for b in IPV4_RANGES.iter().chain(IPV6_RANGES).skip(i + 1) {
                assert_ne!(a.net, b.net, "{} listed twice", a.net);
            }
        }
    }

    #[test]
    fn classification_of_parsed_hosts() {
        // Every spelling of loopback ends up non-public.
        for input in [
            "2130706433",
            "0x7f000001",
            "0177.0.0.1",
            "127.1",
            "0x7f.1",
            "017700000001",
            "[::ffff:127.0.0.1]",
            "[::ffff:7f00:1]",
            "[::127.0.0.1]",
            "[64:ff9b::7f00:1]",
            "[2002:7f00:1::]",
            "[2001:0:4136:e378:8000:63bf:80ff:fffe]",
            "[::1]",
            "0",
            "0x0",
        ] {
            let ip = parse_host(input)
                .expect("test hosts are valid")
                .as_ip()
                .expect("test hosts are addresses");
            assert!(!classify(ip).is_public(), "{input} classified public");
        }
    }

    #[test]
    fn address_policy() {
        let ip = |s: &str| -> IpAddr { s.parse().expect("test addresses are valid") };
        let net = |s: &str| -> IpNet { s.parse().expect("test networks are valid") };

        let deny = AddressPolicy::deny_non_public();
        assert!(deny.allowed().is_empty());
        assert_eq!(deny, AddressPolicy::default());
        for public in ["8.8.8.8", "1.1.1.1", "2606:4700::1111"] {
            assert_eq!(deny.check(ip(public)), Ok(()), "{public}");
        }
        let err = deny.check(ip("10.0.0.5")).expect_err("private is refused");
        assert_eq!(
            err.to_string(),
            "address 10.0.0.5 is in a non-public range (private-use 10.0.0.0/8) \
             and the operator has not allowed it"
        );
        assert_eq!(err.address(), ip("10.0.0.5"));
        assert_eq!(err.range().name(), "private-use");
        assert_eq!(err.range().net(), net("10.0.0.0/8"));
        let err = deny
            .check(ip("::ffff:127.0.0.1"))
            .expect_err("mapped is refused");
        assert_eq!(
            err.to_string(),
            "address ::ffff:127.0.0.1 is in a non-public range \
             (IPv4-mapped ::ffff:0.0.0.0/96, embeds 127.0.0.1) \
             and the operator has not allowed it"
        );
        assert!(deny.check(ip("169.254.169.254")).is_err());

        let loopback = AddressPolicy::deny_non_public().allow(net("127.0.0.0/8"));
        assert_eq!(loopback.check(ip("127.0.0.1")), Ok(()));
        assert_eq!(loopback.check(ip("127.255.0.9")), Ok(()));
        assert_eq!(loopback.check(ip("8.8.8.8")), Ok(()));
        for refused in [
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "::1",
            "64:ff9b::7f00:1",
            "10.0.0.1",
        ] {
            assert!(loopback.check(ip(refused)).is_err(), "{refused}");
        }

        let both = loopback
            .clone()
            .allow(net("::1/128"))
            .allow(net("::ffff:127.0.0.0/104"));
        assert_eq!(both.check(ip("::1")), Ok(()));
        assert_eq!(both.check(ip("::ffff:127.0.0.1")), Ok(()));
        assert!(both.check(ip("::ffff:10.0.0.1")).is_err());

        let narrow = AddressPolicy::deny_non_public().allow(net("10.1.2.3/16"));
        assert_eq!(narrow.allowed(), &[net("10.1.0.0/16")]);
        assert_eq!(narrow.check(ip("10.1.200.1")), Ok(()));
        assert!(narrow.check(ip("10.2.0.1")).is_err());
    }

    #[test]
    fn host_display_and_accessors() {
        let name = Host::Name("api.example.com".into());
        assert_eq!(name.to_string(), "api.example.com");
        assert_eq!(name.as_name(), Some("api.example.com"));
        assert_eq!(name.as_ip(), None);
        let v4 = Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(v4.to_string(), "127.0.0.1");
        assert_eq!(v4.as_name(), None);
        let v6 = Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert_eq!(v6.to_string(), "[::1]");
        assert_eq!(v6.as_ip(), Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(AddrClass::Public.to_string(), "public");
        assert_eq!(
            classify(IpAddr::V4(Ipv4Addr::LOCALHOST)).to_string(),
            "non-public: loopback (127.0.0.0/8)"
        );
    }
}

#[cfg(test)]
#[path = "../proptests/addr.rs"]
mod proptests;

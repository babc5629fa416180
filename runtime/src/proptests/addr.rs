//! Property tests of host parsing and address classification: every
//! spelling of a non-public address (IPv4 in one to four parts, each in
//! decimal, octal or hexadecimal; IPv6 in any case, with or without zero
//! compression, leading zeros or a dotted IPv4 tail, bracketed or not) parses
//! to that address and is refused; nothing panics on arbitrary input.

use std::net::{Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;

use super::*;

/// An address in a random row of `table`, with random host bits.
fn in_table(table: &'static [Entry]) -> impl Strategy<Value = IpAddr> {
    (prop::sample::select(table), any::<u128>()).prop_map(|(entry, bits)| match entry.net {
        IpNet::V4(net) => {
            let host = u32::from(net.hostmask()) & (bits as u32);
            IpAddr::V4(Ipv4Addr::from(u32::from(net.network()) | host))
        }
        IpNet::V6(net) => {
            let host = u128::from(net.hostmask()) & bits;
            IpAddr::V6(Ipv6Addr::from(u128::from(net.network()) | host))
        }
    })
}

/// How one IPv4 part is written.
#[derive(Debug, Clone, Copy)]
enum Radix {
    Decimal,
    /// Leading `0`, with this many extra zeros.
    Octal(usize),
    /// `0x` or `0X`, upper-case digits or not, this many leading zeros.
    Hex {
        upper_x: bool,
        upper: bool,
        zeros: usize,
    },
}

fn radix() -> impl Strategy<Value = Radix> {
    prop_oneof![
        Just(Radix::Decimal),
        (0..3usize).prop_map(Radix::Octal),
        (any::<bool>(), any::<bool>(), 0..3usize).prop_map(|(upper_x, upper, zeros)| Radix::Hex {
            upper_x,
            upper,
            zeros
        }),
    ]
}

fn write_part(value: u32, radix: Radix) -> String {
    match radix {
        Radix::Decimal => value.to_string(),
        Radix::Octal(zeros) => format!("0{}{value:o}", "0".repeat(zeros)),
        Radix::Hex {
            upper_x,
            upper,
            zeros,
        } => {
            let x = if upper_x { "0X" } else { "0x" };
            let digits = if upper {
                format!("{value:X}")
            } else {
                format!("{value:x}")
            };
            format!("{x}{}{digits}", "0".repeat(zeros))
        }
    }
}

/// `ip` in `parts` parts (the last one takes the remaining bytes), each
/// written in its radix, with a trailing dot or not.
fn spell_ipv4(ip: Ipv4Addr, parts: usize, radixes: &[Radix], dot: bool) -> String {
    let bytes = ip.octets();
    let leading = parts - 1;
    let mut written: Vec<String> = bytes[..leading]
        .iter()
        .zip(radixes)
        .map(|(b, r)| write_part(u32::from(*b), *r))
        .collect();
    let last = bytes[leading..]
        .iter()
        .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
    written.push(write_part(last, radixes[leading]));
    let mut text = written.join(".");
    if dot {
        text.push('.');
    }
    text
}

/// How an IPv6 address is written.
#[derive(Debug, Clone)]
struct V6Style {
    /// Which run of zero groups to compress, among all runs (modulo).
    compress: Option<usize>,
    /// Upper-case hex digits per group.
    upper: [bool; 8],
    /// Leading zeros per group (up to four digits in all).
    zeros: [usize; 8],
    /// Write the last 32 bits as a dotted quad when possible.
    dotted: bool,
}

fn v6_style() -> impl Strategy<Value = V6Style> {
    (
        prop::option::of(any::<usize>()),
        any::<[bool; 8]>(),
        prop::array::uniform8(0..4usize),
        any::<bool>(),
    )
        .prop_map(|(compress, upper, zeros, dotted)| V6Style {
            compress,
            upper,
            zeros,
            dotted,
        })
}

fn spell_ipv6(ip: Ipv6Addr, style: &V6Style) -> String {
    let groups = ip.segments();
    // Every run of consecutive zero groups, as (start, end).
    let mut runs = Vec::new();
    for start in 0..8 {
        for end in start + 1..=8 {
            if groups[start..end].iter().all(|g| *g == 0) {
                runs.push((start, end));
            }
        }
    }
    let run = match style.compress {
        Some(i) if !runs.is_empty() => Some(runs[i % runs.len()]),
        _ => None,
    };
    let dotted = style.dotted && run.is_none_or(|(_, end)| end <= 6);
    let count = if dotted { 6 } else { 8 };
    let group = |i: usize| {
        let digits = if style.upper[i] {
            format!("{:X}", groups[i])
        } else {
            format!("{:x}", groups[i])
        };
        let pad = style.zeros[i].min(4 - digits.len());
        format!("{}{digits}", "0".repeat(pad))
    };
    let mut text = match run {
        Some((start, end)) => {
            let head: Vec<String> = (0..start).map(group).collect();
            let tail: Vec<String> = (end..count).map(group).collect();
            format!("{}::{}", head.join(":"), tail.join(":"))
        }
        None => (0..count).map(group).collect::<Vec<_>>().join(":"),
    };
    if dotted {
        let [a, b, c, d] = [
            groups[6] >> 8,
            groups[6] & 0xff,
            groups[7] >> 8,
            groups[7] & 0xff,
        ];
        if !text.ends_with(':') {
            text.push(':');
        }
        text.push_str(&format!("{a}.{b}.{c}.{d}"));
    }
    text
}

/// Asserts that `spelling` parses to `ip` and that the default policy
/// refuses it, alone and as a URL authority.
fn assert_blocked(spelling: &str, authority: &str, ip: IpAddr) -> Result<(), TestCaseError> {
    prop_assert_eq!(parse_host(spelling), Ok(Host::Ip(ip)), "{}", spelling);
    prop_assert_eq!(
        parse_authority(authority, 443),
        Ok((Host::Ip(ip), 443)),
        "{}",
        authority
    );
    prop_assert!(!classify(ip).is_public(), "{} is public", ip);
    prop_assert!(
        AddressPolicy::deny_non_public().check(ip).is_err(),
        "{} allowed",
        ip
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_spelling_of_a_non_public_ipv4_address_is_refused(
        ip in in_table(IPV4_RANGES),
        parts in 1..=4usize,
        radixes in prop::array::uniform4(radix()),
        dot in any::<bool>(),
    ) {
        let IpAddr::V4(v4) = ip else { unreachable!() };
        let spelling = spell_ipv4(v4, parts, &radixes, dot);
        assert_blocked(&spelling, &format!("{spelling}:443"), ip)?;
    }

    #[test]
    fn every_spelling_of_a_non_public_ipv6_address_is_refused(
        ip in in_table(IPV6_RANGES),
        style in v6_style(),
    ) {
        let IpAddr::V6(v6) = ip else { unreachable!() };
        let spelling = spell_ipv6(v6, &style);
        assert_blocked(&format!("[{spelling}]"), &format!("[{spelling}]:443"), ip)?;
        prop_assert_eq!(parse_host(&spelling), Ok(Host::Ip(ip)));
    }

    /// Any IPv4 address, public or not, embedded in IPv6 the ways a
    /// translator reads (mapped, compatible, translated, NAT64, 6to4,
    /// Teredo) is refused.
    #[test]
    fn every_ipv4_embedded_in_ipv6_is_refused(
        v4 in any::<u32>(),
        how in 0..6usize,
        prefix_bits in any::<u64>(),
        style in v6_style(),
    ) {
        let v4 = u128::from(v4);
        let bits = match how {
            0 => (0xffff_u128 << 32) | v4,
            1 => v4,
            2 => (0xffff_u128 << 48) | v4,
            3 => (0x64_u128 << 112) | (0xff9b_u128 << 96) | v4,
            4 => (0x2002_u128 << 112) | (v4 << 80) | u128::from(prefix_bits),
            _ => (0x2001_u128 << 112) | (u128::from(prefix_bits) << 32) | (!v4 & 0xffff_ffff),
        };
        let ip = IpAddr::V6(Ipv6Addr::from(bits));
        let IpAddr::V6(v6) = ip else { unreachable!() };
        let spelling = spell_ipv6(v6, &style);
        assert_blocked(&format!("[{spelling}]"), &format!("[{spelling}]:443"), ip)?;
    }

    #[test]
    fn host_parsing_never_panics(raw in "\\PC{0,40}", port in any::<u16>()) {
        if let Ok(Host::Name(name)) = parse_host(&raw) {
            // A name is normalised and never a numeric spelling.
            prop_assert!(is_normalised_name(&name), "{}", name);
        }
        let _ = parse_authority(&raw, port);
        let _ = parse_authority(&format!("{raw}:{port}"), 443);
    }

    #[test]
    fn numeric_looking_hosts_never_parse_as_names(
        raw in "[0-9a-fA-FxX.]{1,30}",
    ) {
        if let Ok(Host::Name(name)) = parse_host(&raw) {
            let last = name.rsplit('.').next().unwrap_or("");
            prop_assert!(!last.starts_with(|c: char| c.is_ascii_digit()), "{}", raw);
        }
    }
}

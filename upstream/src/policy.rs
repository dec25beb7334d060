//! The policy itself: what a tenant's URL may name, parsed from the operator's
//! `LEARNSYNC_UPSTREAM_ALLOW`, and the address classes it refuses by default.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// The environment variable the server and the worker read the policy's exceptions from.
pub const ENV: &str = "LEARNSYNC_UPSTREAM_ALLOW";

/// A kind of address that is not a public unicast address, refused unless the operator admits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918 (`10/8`, `172.16/12`, `192.168/16`).
    Private,
    /// `169.254/16` (cloud metadata services among them), `fe80::/10`.
    LinkLocal,
    /// `100.64/10`, carrier-grade NAT (RFC 6598).
    SharedNat,
    /// `fc00::/7` (and the deprecated site-local `fec0::/10`).
    UniqueLocal,
    /// `0.0.0.0/8`, `::`.
    Unspecified,
    /// `224/4`, `ff00::/8`.
    Multicast,
    /// `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// Everything else not routed on the internet: `192.0.0/24`, `198.18/15` (benchmarking),
    /// `240/4` and the broadcast address, `100::/64` (discard).
    Reserved,
}

impl Class {
    /// How messages name the class.
    pub fn name(self) -> &'static str {
        match self {
            Class::Loopback => "loopback",
            Class::Private => "private",
            Class::LinkLocal => "link-local",
            Class::SharedNat => "shared (carrier-grade NAT)",
            Class::UniqueLocal => "unique-local",
            Class::Unspecified => "unspecified",
            Class::Multicast => "multicast",
            Class::Documentation => "documentation",
            Class::Reserved => "reserved",
        }
    }
}

/// The class of an address that is not public, or `None` for a public unicast address. An IPv6
/// address that embeds an IPv4 one (mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4
/// `2002::/16`) is classed as the IPv4 address it reaches.
pub fn classify(ip: IpAddr) -> Option<Class> {
    match ip {
        IpAddr::V4(ip) => classify_v4(ip),
        IpAddr::V6(ip) => classify_v6(ip),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

fn classify_v4(ip: Ipv4Addr) -> Option<Class> {
    const TABLE: &[([u8; 4], u32, Class)] = &[
        ([0, 0, 0, 0], 8, Class::Unspecified),
        ([10, 0, 0, 0], 8, Class::Private),
        ([100, 64, 0, 0], 10, Class::SharedNat),
        ([127, 0, 0, 0], 8, Class::Loopback),
        ([169, 254, 0, 0], 16, Class::LinkLocal),
        ([172, 16, 0, 0], 12, Class::Private),
        ([192, 0, 0, 0], 24, Class::Reserved),
        ([192, 0, 2, 0], 24, Class::Documentation),
        ([192, 168, 0, 0], 16, Class::Private),
        ([198, 18, 0, 0], 15, Class::Reserved),
        ([198, 51, 100, 0], 24, Class::Documentation),
        ([203, 0, 113, 0], 24, Class::Documentation),
        ([224, 0, 0, 0], 4, Class::Multicast),
        ([240, 0, 0, 0], 4, Class::Reserved),
    ];
    TABLE
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, class)| *class)
}

fn classify_v6(ip: Ipv6Addr) -> Option<Class> {
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    const TABLE: &[(Ipv6Addr, u32, Class)] = &[
        (Ipv6Addr::UNSPECIFIED, 128, Class::Unspecified),
        (Ipv6Addr::LOCALHOST, 128, Class::Loopback),
        (
            Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0),
            64,
            Class::Reserved,
        ),
        (
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0),
            32,
            Class::Documentation,
        ),
        (
            Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0),
            20,
            Class::Documentation,
        ),
        (
            Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
            7,
            Class::UniqueLocal,
        ),
        (
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
            10,
            Class::LinkLocal,
        ),
        (
            Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0),
            10,
            Class::UniqueLocal,
        ),
        (
            Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
            8,
            Class::Multicast,
        ),
    ];
    TABLE
        .iter()
        .find(|(net, prefix, _)| in_v6(ip, *net, *prefix))
        .map(|(_, _, class)| *class)
}

/// The IPv4 address an IPv6 address reaches, when it embeds one.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let bits = u128::from(ip);
    let low = Ipv4Addr::from((bits & 0xffff_ffff) as u32);
    if let Some(v4) = ip.to_ipv4_mapped() {
        Some(v4)
    } else if in_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96) {
        Some(low)
    } else if in_v6(ip, Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16) {
        Some(Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32))
    } else {
        None
    }
}

/// An address range the operator admits (`10.0.0.0/8`, or one address).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Net {
    ip: IpAddr,
    prefix: u32,
}

impl Net {
    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.ip, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => in_v4(ip, net.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => in_v6(ip, net, self.prefix),
            _ => false,
        }
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = if self.ip.is_ipv4() { 32 } else { 128 };
        if self.prefix == whole {
            write!(f, "{}", self.ip)
        } else {
            write!(f, "{}/{}", self.ip, self.prefix)
        }
    }
}

/// A host name the operator admits: exactly, or every name under a domain (`*.example.com`).
#[derive(Clone, Debug, PartialEq, Eq)]
enum HostRule {
    Exact(String),
    Under(String),
}

impl HostRule {
    fn matches(&self, host: &str) -> bool {
        match self {
            HostRule::Exact(name) => host == name,
            HostRule::Under(domain) => host
                .strip_suffix(domain.as_str())
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
        }
    }
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostRule::Exact(name) => f.write_str(name),
            HostRule::Under(domain) => write!(f, "*.{domain}"),
        }
    }
}

/// Which upstream URLs tenants may configure and the workers may call.
///
/// By default ([`Policy::strict`]): `https` only, and every address a host resolves to must be a
/// public unicast address (see [`classify`]). The operator's exceptions
/// (`LEARNSYNC_UPSTREAM_ALLOW`, parsed by [`Policy::from_str`]) are a comma-separated list of:
///
/// - `http`: plain `http://` URLs are allowed too (to hosts the rest of the policy allows);
/// - an address, `127.0.0.1` or `::1`: that address is allowed;
/// - a range, `10.0.0.0/8` or `fd00::/8`: every address in it is allowed;
/// - a host name, `localhost` or `sf.internal.example`: that name is allowed whatever it
///   resolves to;
/// - `*.internal.example`: every name under `internal.example` (not the domain itself) is
///   allowed whatever it resolves to.
///
/// Spaces around entries and empty entries are ignored; anything else is refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    http: bool,
    nets: Vec<Net>,
    hosts: Vec<HostRule>,
}

/// A malformed `LEARNSYNC_UPSTREAM_ALLOW`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{ENV}: {entry:?} is not an allowed entry: {reason}")]
pub struct ParseError {
    /// The entry.
    pub entry: String,
    /// Why.
    pub reason: String,
}

/// Why a URL or an address is refused. Its `Display` is what the tenant reads.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a URL with a host.
    #[error("must be an absolute https URL with a host")]
    NotUrl,
    /// A scheme the policy does not allow.
    #[error("must use https (plain {0} is not allowed by this service)")]
    Scheme(String),
    /// A name that means this machine (`localhost`, `*.localhost`).
    #[error("{host} names this machine, which this service does not allow")]
    LocalName {
        /// The host.
        host: String,
    },
    /// An address of a refused class (an address literal, or what a name resolved to).
    #[error("{host} {how} a {} address, which this service does not allow", class.name())]
    Address {
        /// The host as written.
        host: String,
        /// "is" for an address literal, "resolves to" for a name.
        how: &'static str,
        /// The address.
        ip: IpAddr,
        /// Its class.
        class: Class,
    },
}

impl Policy {
    /// The default: https only, public addresses only.
    pub fn strict() -> Policy {
        Policy::default()
    }

    /// The policy `LEARNSYNC_UPSTREAM_ALLOW` describes (strict when it is unset or empty).
    pub fn from_env() -> Result<Policy, ParseError> {
        match std::env::var(ENV) {
            Ok(text) => text.parse(),
            Err(std::env::VarError::NotPresent) => Ok(Policy::strict()),
            Err(std::env::VarError::NotUnicode(_)) => Err(ParseError {
                entry: String::new(),
                reason: "not UTF-8".into(),
            }),
        }
    }

    /// Whether plain http is allowed.
    pub fn allows_http(&self) -> bool {
        self.http
    }

    /// Whether the operator admits this host by name.
    pub fn admits_host(&self, host: &str) -> bool {
        let host = normal_host(host);
        self.hosts.iter().any(|rule| rule.matches(&host))
    }

    /// Checks what a URL says before anything is sent: the scheme, an address literal's class and
    /// names of this machine. What a name resolves to is checked at connect time
    /// ([`crate::Http`]'s resolver).
    pub fn check_url(&self, url: &str) -> Result<reqwest::Url, Refusal> {
        let parsed = reqwest::Url::parse(url.trim()).map_err(|_| Refusal::NotUrl)?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.http => {}
            other => return Err(Refusal::Scheme(other.to_string())),
        }
        let host = parsed.host_str().map(normal_host).unwrap_or_default();
        if host.is_empty() {
            return Err(Refusal::NotUrl);
        }
        let literal = host
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'));
        if let Ok(ip) = literal.unwrap_or(&host).parse::<IpAddr>() {
            return self.check_ip("", ip).map(|()| parsed);
        }
        let local = host == "localhost" || host.ends_with(".localhost");
        if local && !self.admits_host(&host) {
            return Err(Refusal::LocalName { host });
        }
        Ok(parsed)
    }

    /// Checks one address `host` resolved to (`host` empty for an address literal).
    pub fn check_ip(&self, host: &str, ip: IpAddr) -> Result<(), Refusal> {
        if !host.is_empty() && self.admits_host(host) {
            return Ok(());
        }
        if self.nets.iter().any(|net| net.contains(ip)) {
            return Ok(());
        }
        match classify(ip) {
            None => Ok(()),
            Some(class) => Err(Refusal::Address {
                host: if host.is_empty() {
                    ip.to_string()
                } else {
                    host.to_string()
                },
                how: if host.is_empty() { "is" } else { "resolves to" },
                ip,
                class,
            }),
        }
    }
}

/// A host as rules compare it: lower case, without a trailing dot.
fn normal_host(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Reads one address or range entry.
fn parse_net(entry: &str) -> Result<Option<Net>, String> {
    let (address, prefix) = match entry.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (entry, None),
    };
    let address = address
        .strip_prefix('[')
        .and_then(|rest| rest.strip_suffix(']'))
        .unwrap_or(address);
    let Ok(ip) = address.parse::<IpAddr>() else {
        return match prefix {
            Some(_) => Err("a range is an address, a slash and a prefix length: 10.0.0.0/8".into()),
            None => Ok(None),
        };
    };
    let whole = if ip.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => whole,
        Some(text) => match text.parse::<u32>() {
            Ok(prefix) if prefix <= whole => prefix,
            _ => return Err(format!("the prefix length must be 0 to {whole}")),
        },
    };
    let net = Net { ip, prefix };
    let host_bits = match ip {
        IpAddr::V4(v4) => u32::from(v4) & !u32::MAX.checked_shl(32 - prefix).unwrap_or(0) != 0,
        IpAddr::V6(v6) => u128::from(v6) & !u128::MAX.checked_shl(128 - prefix).unwrap_or(0) != 0,
    };
    if host_bits {
        return Err(format!(
            "the address has bits set beyond /{prefix}: write the range's first address"
        ));
    }
    Ok(Some(net))
}

/// Whether `name` is a host name (labels of letters, digits and hyphens, not all digits at the
/// end, so that a mistyped address is not taken for a name).
fn is_host_name(name: &str) -> bool {
    let labels: Vec<&str> = name.split('.').collect();
    name.len() <= 253
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
        && labels
            .last()
            .is_some_and(|last| !last.chars().all(|c| c.is_ascii_digit()))
}

fn parse_entry(policy: &mut Policy, raw: &str) -> Result<(), String> {
    let entry = raw.trim().to_ascii_lowercase();
    if entry == "http" {
        policy.http = true;
        return Ok(());
    }
    if entry == "https" {
        return Err("https is always allowed: list only exceptions".into());
    }
    if entry.contains("://") {
        return Err("write a host, an address or a range, not a URL".into());
    }
    if let Some(net) = parse_net(&entry)? {
        policy.nets.push(net);
        return Ok(());
    }
    if entry.contains(':') {
        return Err("write a host without a port".into());
    }
    let entry = entry.trim_end_matches('.');
    if let Some(domain) = entry.strip_prefix("*.") {
        if !is_host_name(domain) {
            return Err("a wildcard is `*.` followed by a domain, e.g. *.internal.example".into());
        }
        policy.hosts.push(HostRule::Under(domain.to_string()));
        return Ok(());
    }
    if entry.contains('*') {
        return Err("a wildcard is `*.` followed by a domain, e.g. *.internal.example".into());
    }
    if !is_host_name(entry) {
        return Err(
            "not `http`, an address, a range (10.0.0.0/8), a host name or `*.domain`".into(),
        );
    }
    policy.hosts.push(HostRule::Exact(entry.to_string()));
    Ok(())
}

impl FromStr for Policy {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Policy, ParseError> {
        let mut policy = Policy::strict();
        for raw in text.split(',').filter(|entry| !entry.trim().is_empty()) {
            parse_entry(&mut policy, raw).map_err(|reason| ParseError {
                entry: raw.trim().to_string(),
                reason,
            })?;
        }
        Ok(policy)
    }
}

impl fmt::Display for Policy {
    /// The exceptions as `LEARNSYNC_UPSTREAM_ALLOW` writes them (`strict` when there are none).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut entries: Vec<String> = Vec::new();
        if self.http {
            entries.push("http".into());
        }
        entries.extend(self.nets.iter().map(Net::to_string));
        entries.extend(self.hosts.iter().map(HostRule::to_string));
        if entries.is_empty() {
            f.write_str("strict")
        } else {
            f.write_str(&entries.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn class(ip: &str) -> Option<Class> {
        classify(ip.parse().unwrap())
    }

    #[test]
    fn classes_every_non_public_range() {
        for (ip, expected) in [
            ("127.0.0.1", Class::Loopback),
            ("127.8.9.10", Class::Loopback),
            ("::1", Class::Loopback),
            ("10.0.0.5", Class::Private),
            ("172.16.0.1", Class::Private),
            ("172.31.255.255", Class::Private),
            ("192.168.1.1", Class::Private),
            ("169.254.169.254", Class::LinkLocal),
            ("fe80::1", Class::LinkLocal),
            ("100.64.0.1", Class::SharedNat),
            ("100.127.255.254", Class::SharedNat),
            ("fd00::1", Class::UniqueLocal),
            ("fc00::1", Class::UniqueLocal),
            ("0.0.0.0", Class::Unspecified),
            ("::", Class::Unspecified),
            ("224.0.0.1", Class::Multicast),
            ("ff02::1", Class::Multicast),
            ("192.0.2.1", Class::Documentation),
            ("198.51.100.7", Class::Documentation),
            ("203.0.113.9", Class::Documentation),
            ("2001:db8::1", Class::Documentation),
            ("255.255.255.255", Class::Reserved),
            ("198.18.0.1", Class::Reserved),
            // IPv6 forms that reach an IPv4 address are that address.
            ("::ffff:10.0.0.5", Class::Private),
            ("::ffff:169.254.169.254", Class::LinkLocal),
            ("64:ff9b::7f00:1", Class::Loopback),
            ("2002:a9fe:a9fe::1", Class::LinkLocal),
        ] {
            assert_eq!(class(ip), Some(expected), "{ip}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(class(public), None, "{public}");
        }
    }

    #[test]
    fn the_default_allows_https_to_public_hosts_only() {
        let strict = Policy::strict();
        assert_eq!(strict.to_string(), "strict");
        assert!(strict.check_url("https://acme.docebosaas.com").is_ok());
        assert!(strict.check_url("https://8.8.8.8/x").is_ok());
        for (url, expected) in [
            ("http://acme.docebosaas.com", "must use https (plain http"),
            ("ftp://acme.docebosaas.com", "must use https (plain ftp"),
            ("http://10.0.0.5", "must use https"),
            ("https://10.0.0.5", "10.0.0.5 is a private address"),
            (
                "https://169.254.169.254",
                "169.254.169.254 is a link-local address",
            ),
            ("https://[::1]:8443", "::1 is a loopback address"),
            ("https://[::ffff:127.0.0.1]", "is a loopback address"),
            ("https://2130706433", "127.0.0.1 is a loopback address"),
            ("https://0x7f.1", "127.0.0.1 is a loopback address"),
            ("https://localhost", "localhost names this machine"),
            ("https://LOCALHOST.", "localhost names this machine"),
            ("https://api.localhost", "api.localhost names this machine"),
            ("https://100.64.1.1", "shared (carrier-grade NAT)"),
            ("not a url", "must be an absolute https URL"),
        ] {
            let refusal = strict.check_url(url).unwrap_err().to_string();
            assert!(refusal.contains(expected), "{url}: {refusal}");
        }
        let resolved = strict
            .check_ip("rebind.example", "10.1.2.3".parse().unwrap())
            .unwrap_err();
        assert_eq!(
            resolved.to_string(),
            "rebind.example resolves to a private address, which this service does not allow"
        );
    }

    #[test]
    fn exceptions_admit_what_they_name_and_nothing_else() {
        let policy: Policy = " http, 127.0.0.1 ,10.0.0.0/8,fd00::/8, localhost,*.internal.example,"
            .parse()
            .unwrap();
        assert_eq!(
            policy.to_string(),
            "http,127.0.0.1,10.0.0.0/8,fd00::/8,localhost,*.internal.example"
        );
        assert!(policy.allows_http());
        for allowed in [
            "http://127.0.0.1:8080/x",
            "http://10.0.0.5",
            "https://10.255.0.1",
            "https://[fd00::1]",
            "http://localhost:3000",
            "https://sf.internal.example",
        ] {
            assert!(policy.check_url(allowed).is_ok(), "{allowed}");
        }
        for refused in [
            "http://127.0.0.2",
            "https://169.254.169.254",
            "https://192.168.0.1",
            "https://api.localhost",
        ] {
            assert!(policy.check_url(refused).is_err(), "{refused}");
        }
        // A name admitted by the operator may resolve anywhere; others are checked.
        let private = "10.9.9.9".parse().unwrap();
        let metadata = "169.254.169.254".parse().unwrap();
        assert!(policy.check_ip("a.b.internal.example", metadata).is_ok());
        assert!(policy.check_ip("internal.example", metadata).is_err());
        assert!(policy.check_ip("evilinternal.example", metadata).is_err());
        assert!(policy.check_ip("anything.example", private).is_ok());
        assert!(policy.check_ip("anything.example", metadata).is_err());
        // An address entry admits it, not its neighbours, and not http on its own.
        let one: Policy = "127.0.0.1".parse().unwrap();
        assert!(one.check_url("https://127.0.0.1").is_ok());
        assert!(one.check_url("http://127.0.0.1").is_err());
        assert!(one.check_url("https://127.0.0.2").is_err());
        assert_eq!("".parse::<Policy>().unwrap(), Policy::strict());
    }

    #[test]
    fn a_malformed_setting_is_refused_with_its_entry() {
        for (text, entry, reason) in [
            (
                "http,10.0.0.0/33",
                "10.0.0.0/33",
                "prefix length must be 0 to 32",
            ),
            ("10.0.0.5/8", "10.0.0.5/8", "bits set beyond /8"),
            ("https", "https", "always allowed"),
            ("http://10.0.0.1", "http://10.0.0.1", "not a URL"),
            ("localhost:8080", "localhost:8080", "without a port"),
            ("*", "*", "wildcard"),
            ("*.", "*.", "wildcard"),
            ("a.*.example", "a.*.example", "wildcard"),
            ("10.0.0", "10.0.0", "not `http`"),
            ("under_score.example", "under_score.example", "not `http`"),
            ("fd00::/129", "fd00::/129", "0 to 128"),
            ("foo/8", "foo/8", "a range is an address"),
        ] {
            let error = text.parse::<Policy>().unwrap_err();
            assert_eq!(error.entry, entry, "{text}");
            assert!(error.reason.contains(reason), "{text}: {error}");
            assert!(error.to_string().starts_with(ENV), "{error}");
        }
    }
}

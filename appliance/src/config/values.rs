//! Typed configuration values, each parsed from its TOML form.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// The longest duration any setting takes: ten years, so that adding one
/// to a clock reading never overflows.
const MAX_DURATION: Duration = Duration::from_secs(3650 * 86_400);

/// Parses `"30s"`, `"1h 30m"`, `"1d"` or an integer number of seconds, at
/// most [`MAX_DURATION`].
pub(super) fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(u64),
        Text(String),
    }
    let (duration, text) = match Raw::deserialize(deserializer)? {
        Raw::Seconds(seconds) => (Duration::from_secs(seconds), seconds.to_string()),
        Raw::Text(text) => (
            humantime::parse_duration(&text).map_err(|err| {
                de::Error::custom(format!(
                    "`{text}` is not a duration ({err}); try \"30s\" or \"5m\""
                ))
            })?,
            text,
        ),
    };
    if duration > MAX_DURATION {
        return Err(de::Error::custom(format!(
            "`{text}` is longer than the 10 years a setting may last"
        )));
    }
    Ok(duration)
}

/// Parses `"32MiB"`, `"500kB"` or an integer number of bytes.
/// Writes a duration in the form `duration` reads ("1h 30m").
pub(super) fn serialize_duration<S: serde::Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&humantime::format_duration(*duration))
}

/// Serializes a value as its `Display` text, the form it is parsed from.
macro_rules! serialize_as_text {
    ($($kind:ty),*) => {$(
        impl Serialize for $kind {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }
    )*};
}
serialize_as_text!(SourceLocation, NameRule);

/// Parses `"32MiB"`, `"500kB"` or an integer number of bytes.
pub(super) fn byte_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    byte_size_opt(deserializer).map(Option::unwrap_or_default)
}

pub(super) fn byte_size_opt<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    let bytes = match Raw::deserialize(deserializer)? {
        Raw::Bytes(bytes) => bytes,
        Raw::Text(text) => parse_byte_size(&text).ok_or_else(|| {
            de::Error::custom(format!(
                "`{text}` is not a size; try \"32MiB\" or \"500kB\""
            ))
        })?,
    };
    Ok(Some(bytes))
}

fn parse_byte_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    number.parse::<u64>().ok()?.checked_mul(multiplier)
}

/// A share in percent, written `"10%"` or `10`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percent(pub u8);

impl<'de> Deserialize<'de> for Percent {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        let number = match Raw::deserialize(deserializer)? {
            Raw::Number(number) => Some(number),
            Raw::Text(text) => text.trim().trim_end_matches('%').trim().parse().ok(),
        };
        match number {
            Some(number @ 0..=100) => Ok(Self(number as u8)),
            _ => Err(de::Error::custom("expected a percentage from 0% to 100%")),
        }
    }
}

/// How queries are spread over upstreams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Ask the two best upstreams at once; the first good answer wins.
    Parallel,
    /// Take turns.
    RoundRobin,
    /// Ask the one with the lowest smoothed latency.
    Fastest,
}

/// What happens to a query when its policy plugin faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailMode {
    /// Answer as if there were no policy.
    Open,
    /// Answer SERVFAIL.
    Closed,
}

/// One blocklist source (hosts, domains, Adblock or dnsmasq syntax).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BlocklistSource {
    /// A local path or an `http(s)://` URL.
    pub source: SourceLocation,
    /// The syntax its lines are in; detected from them when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ListFormat>,
    /// Which names each of its rules covers, whatever its syntax says
    /// (`*.name` rules keep covering only the names below).
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matching: Option<ListMatch>,
    /// How often a URL is downloaded again (local files are read at every
    /// start and reload).
    #[serde(
        default = "default_refresh",
        deserialize_with = "duration",
        serialize_with = "serialize_duration"
    )]
    pub refresh: Duration,
}

/// The syntax of a blocklist source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ListFormat {
    /// `/etc/hosts` lines: an address, then names.
    Hosts,
    /// One name a line.
    Domains,
    /// Adblock-style DNS rules (`||name^`, `@@||name^`), as AdGuard Home reads them.
    Adblock,
    /// dnsmasq `address=`, `local=` and `server=` lines.
    Dnsmasq,
    /// A Pi-hole regex list: one POSIX extended regex a line, with its
    /// `;querytype=` and `;invert` options.
    Regex,
}

impl fmt::Display for ListFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hosts => "hosts",
            Self::Domains => "domains",
            Self::Adblock => "adblock",
            Self::Dnsmasq => "dnsmasq",
            Self::Regex => "regex",
        })
    }
}

/// Which names a source's rules cover, overriding its syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ListMatch {
    /// The name only.
    Exact,
    /// The name and every name below it.
    Subtree,
}

fn default_refresh() -> Duration {
    Duration::from_secs(86_400)
}

/// Where a blocklist comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceLocation {
    /// A file on this appliance.
    Path(std::path::PathBuf),
    /// A list to download.
    Url(String),
}

impl fmt::Display for SourceLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(path) => write!(f, "{}", path.display()),
            Self::Url(url) => f.write_str(url),
        }
    }
}

impl<'de> Deserialize<'de> for SourceLocation {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.starts_with("http://") || text.starts_with("https://") {
            url::Url::parse(&text).map_err(|err| de::Error::custom(format!("`{text}`: {err}")))?;
            return Ok(Self::Url(text));
        }
        if text.is_empty() {
            return Err(de::Error::custom("empty path"));
        }
        Ok(Self::Path(text.into()))
    }
}

/// How a blocked name is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockedResponse {
    /// NXDOMAIN with an SOA.
    Nxdomain,
    /// 0.0.0.0 for A, :: for AAAA, NODATA otherwise.
    Null,
    /// REFUSED.
    Refused,
    /// NOERROR with no answer and an SOA.
    Nodata,
    /// These addresses (A from the IPv4 ones, AAAA from the IPv6 ones).
    Custom(Vec<IpAddr>),
}

impl Serialize for BlockedResponse {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Nxdomain => serializer.serialize_str("nxdomain"),
            Self::Null => serializer.serialize_str("null"),
            Self::Refused => serializer.serialize_str("refused"),
            Self::Nodata => serializer.serialize_str("nodata"),
            Self::Custom(addresses) => serializer.collect_seq(addresses),
        }
    }
}

impl<'de> Deserialize<'de> for BlockedResponse {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Mode(String),
            Addresses(Vec<String>),
        }
        match Raw::deserialize(deserializer)? {
            Raw::Mode(mode) => match mode.as_str() {
                "nxdomain" => Ok(Self::Nxdomain),
                "null" => Ok(Self::Null),
                "refused" => Ok(Self::Refused),
                "nodata" => Ok(Self::Nodata),
                other => other.parse().map(|ip| Self::Custom(vec![ip])).map_err(|_| {
                    de::Error::custom(format!(
                        "`{other}` is not one of nxdomain, null, refused, nodata, or an IP address"
                    ))
                }),
            },
            Raw::Addresses(addresses) => {
                let addresses = addresses
                    .iter()
                    .map(|text| {
                        text.parse().map_err(|_| {
                            de::Error::custom(format!("`{text}` is not an IP address"))
                        })
                    })
                    .collect::<Result<Vec<IpAddr>, D::Error>>()?;
                if addresses.is_empty() {
                    return Err(de::Error::custom("the list of addresses is empty"));
                }
                Ok(Self::Custom(addresses))
            }
        }
    }
}

/// A name rule: `example.com` matches that name only; `*.example.com`
/// matches it and every name below it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NameRule {
    /// Lower-case name without the trailing dot.
    pub name: String,
    /// Whether names below `name` match too.
    pub subdomains: bool,
}

impl FromStr for NameRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (subdomains, rest) = match text.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let name = rest.trim_end_matches('.').to_ascii_lowercase();
        let valid_label = |label: &str| {
            (1..=63).contains(&label.len())
                && label
                    .bytes()
                    .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
            return Err(format!(
                "`{text}` is not a domain name or `*.suffix` (letters, digits, '-', '_')"
            ));
        }
        Ok(Self { name, subdomains })
    }
}

impl fmt::Display for NameRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.subdomains {
            f.write_str("*.")?;
        }
        f.write_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for NameRule {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(de::Error::custom)
    }
}

/// The wire protocol of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Transport {
    /// Plain DNS over UDP, retried over TCP when truncated.
    Udp,
    /// Plain DNS over TCP.
    Tcp,
    /// DNS over TLS (RFC 7858).
    Tls,
    /// DNS over HTTPS (RFC 8484).
    Https,
}

/// An upstream resolver: `udp://IP[:PORT]`, `tcp://IP[:PORT]`,
/// `tls://HOST[:PORT]` or `https://HOST[:PORT]/PATH`, with `?trusted` when
/// its AD bit is believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// Protocol.
    pub transport: Transport,
    /// Host as written (an IP address for udp and tcp).
    pub host: String,
    /// Port, defaulted per transport.
    pub port: u16,
    /// Whether its AD bit is passed on (`?trusted`); otherwise AD is cleared.
    pub trusted: bool,
    /// The URL as written.
    pub url: String,
    /// The URL without Moat's options: where DoH requests go.
    pub endpoint: String,
}

impl FromStr for UpstreamUrl {
    type Err = String;

    /// A bare `IP` or `IP:PORT` (AdGuard Home's form) is plain DNS.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(addr) = bare_address(text) {
            return Ok(Self {
                transport: Transport::Udp,
                host: addr.ip().to_string(),
                port: addr.port(),
                trusted: false,
                url: text.to_owned(),
                endpoint: text.to_owned(),
            });
        }
        let mut url =
            url::Url::parse(text).map_err(|err| format!("`{text}` is not a URL: {err}"))?;
        let (transport, default_port) = match url.scheme() {
            "udp" => (Transport::Udp, 53),
            "tcp" => (Transport::Tcp, 53),
            "tls" => (Transport::Tls, 853),
            "https" => (Transport::Https, 443),
            other => {
                return Err(format!(
                    "`{text}`: scheme `{other}` is not one of udp, tcp, tls, https"
                ));
            }
        };
        let host = match url.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => return Err(format!("`{text}` has no host")),
        };
        if matches!(transport, Transport::Udp | Transport::Tcp) && host.parse::<IpAddr>().is_err() {
            return Err(format!(
                "`{text}`: a udp or tcp upstream needs an IP address"
            ));
        }
        let plain = url.query().is_none();
        let trusted = take_trusted(text, transport, &mut url)?;
        Ok(Self {
            transport,
            host,
            port: url.port().unwrap_or(default_port),
            trusted,
            url: text.to_owned(),
            endpoint: if plain { text.to_owned() } else { url.into() },
        })
    }
}

/// Takes Moat's `trusted` option (`?trusted`, `?trusted=true`,
/// `?trusted=false`) out of `url`'s query. Other query pairs belong to a
/// DoH URL and are kept; on any other transport they are refused.
fn take_trusted(text: &str, transport: Transport, url: &mut url::Url) -> Result<bool, String> {
    let mut trusted = None;
    let mut kept = Vec::new();
    for (key, value) in url.query_pairs() {
        match (&*key, &*value) {
            ("trusted", "" | "true") if trusted.is_none() => trusted = Some(true),
            ("trusted", "false") if trusted.is_none() => trusted = Some(false),
            ("trusted", _) => {
                return Err(format!(
                    "`{text}`: write `?trusted` once (or `?trusted=false`), not `trusted={value}`"
                ));
            }
            _ if transport == Transport::Https => kept.push((key.into_owned(), value.into_owned())),
            _ => return Err(format!("`{text}`: unknown option `{key}` (only `trusted`)")),
        }
    }
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok(trusted.unwrap_or(false))
}

/// `IP` (port 53) or `IP:PORT`, as AdGuard Home writes a plain upstream.
fn bare_address(text: &str) -> Option<std::net::SocketAddr> {
    text.parse()
        .ok()
        .or_else(|| Some(std::net::SocketAddr::new(text.parse().ok()?, 53)))
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

impl<'de> Deserialize<'de> for UpstreamUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(de::Error::custom)
    }
}

impl Serialize for UpstreamUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.url)
    }
}

/// A set of client addresses, as `[tuning.server]` names them: `lan`
/// (loopback, private, shared, link-local and unique-local addresses),
/// `loopback`, `any`, an address, or a prefix `ADDRESS/LENGTH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRange {
    /// Addresses of the local network.
    Lan,
    /// 127.0.0.0/8 and ::1.
    Loopback,
    /// Every address.
    Any,
    /// The addresses that share the first `length` bits with `address`.
    Prefix {
        /// The network address (bits past `length` are zero).
        address: IpAddr,
        /// Prefix length in bits.
        length: u8,
    },
}

impl ClientRange {
    /// Whether `client` is in the range.
    pub(crate) fn contains(&self, client: IpAddr) -> bool {
        let client = client.to_canonical();
        match *self {
            Self::Any => true,
            Self::Loopback => client.is_loopback(),
            Self::Lan => is_lan(client),
            Self::Prefix { address, length } => {
                address.is_ipv4() == client.is_ipv4() && masked(client, length) == address
            }
        }
    }
}

/// Whether `ip` belongs to a local network: loopback, RFC 1918, shared
/// (100.64.0.0/10), link-local, or IPv6 unique-local.
pub(crate) fn is_lan(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || (a == 100 && b & 0xc0 == 64)
        }
        IpAddr::V6(v6) => v6.is_loopback() || v6.is_unique_local() || v6.is_unicast_link_local(),
    }
}

/// `ip` with every bit past the first `length` cleared.
pub(crate) fn masked(ip: IpAddr, length: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = u32::MAX
                .checked_shl(32 - u32::from(length.min(32)))
                .unwrap_or(0);
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = u128::MAX
                .checked_shl(128 - u32::from(length.min(128)))
                .unwrap_or(0);
            IpAddr::V6((bits & mask).into())
        }
    }
}

impl FromStr for ClientRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "lan" => return Ok(Self::Lan),
            "loopback" => return Ok(Self::Loopback),
            "any" => return Ok(Self::Any),
            _ => {}
        }
        let bad =
            || format!("`{text}` is not `lan`, `loopback`, `any`, an IP address or ADDRESS/LENGTH");
        let (address, length) = match text.split_once('/') {
            Some((address, length)) => (address, Some(length)),
            None => (text, None),
        };
        let address: IpAddr = address.parse().map_err(|_| bad())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let length = match length {
            Some(length) => length
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(bad)?,
            None => max,
        };
        let address = address.to_canonical();
        if masked(address, length) != address {
            return Err(format!("`{text}` has bits set past its prefix length"));
        }
        Ok(Self::Prefix { address, length })
    }
}

impl fmt::Display for ClientRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lan => f.write_str("lan"),
            Self::Loopback => f.write_str("loopback"),
            Self::Any => f.write_str("any"),
            Self::Prefix { address, length } => write!(f, "{address}/{length}"),
        }
    }
}

impl<'de> Deserialize<'de> for ClientRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(de::Error::custom)
    }
}

impl Serialize for ClientRange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let udp: UpstreamUrl = "udp://127.0.0.1".parse().unwrap();
        assert_eq!((udp.transport, udp.port), (Transport::Udp, 53));
        let tls: UpstreamUrl = "tls://[::1]:8853".parse().unwrap();
        assert_eq!(
            (tls.transport, tls.host.as_str(), tls.port),
            (Transport::Tls, "::1", 8853)
        );
        assert!("udp://dns.example".parse::<UpstreamUrl>().is_err());
        assert!("ftp://1.2.3.4".parse::<UpstreamUrl>().is_err());
        let bare: UpstreamUrl = "[::1]:5353".parse().unwrap();
        assert_eq!(
            (bare.transport, bare.host.as_str(), bare.port),
            (Transport::Udp, "::1", 5353)
        );
        assert_eq!("192.168.1.1".parse::<UpstreamUrl>().unwrap().port, 53);
    }

    #[test]
    fn trusted_upstreams() {
        let plain: UpstreamUrl = "tls://1.1.1.1".parse().unwrap();
        assert!(!plain.trusted);
        assert_eq!(plain.endpoint, "tls://1.1.1.1");
        let tls: UpstreamUrl = "tls://1.1.1.1?trusted".parse().unwrap();
        assert!(tls.trusted);
        assert_eq!((tls.port, tls.url.as_str()), (853, "tls://1.1.1.1?trusted"));
        assert!(
            "udp://[::1]:53?trusted=true"
                .parse::<UpstreamUrl>()
                .unwrap()
                .trusted
        );
        assert!(
            !"udp://[::1]:53?trusted=false"
                .parse::<UpstreamUrl>()
                .unwrap()
                .trusted
        );
        let doh: UpstreamUrl = "https://dns.example/q?trusted&x=1".parse().unwrap();
        assert!(doh.trusted);
        assert_eq!(doh.endpoint, "https://dns.example/q?x=1");
        let doh: UpstreamUrl = "https://dns.example/q?trusted".parse().unwrap();
        assert_eq!(doh.endpoint, "https://dns.example/q");
        for bad in [
            "tls://1.1.1.1?trusted=yes",
            "udp://1.1.1.1?fast",
            "tcp://1.1.1.1?trusted&trusted",
        ] {
            assert!(bad.parse::<UpstreamUrl>().is_err(), "{bad}");
        }
    }

    #[test]
    fn name_rules() {
        let rule: NameRule = "*.Ads.Example.".parse().unwrap();
        assert_eq!((rule.name.as_str(), rule.subdomains), ("ads.example", true));
        assert!("bad name".parse::<NameRule>().is_err());
        assert!("".parse::<NameRule>().is_err());
    }

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_byte_size("32MiB"), Some(32 << 20));
        assert_eq!(parse_byte_size("10 kB"), Some(10_000));
        assert_eq!(parse_byte_size("lots"), None);
    }

    #[test]
    fn client_ranges() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let lan: ClientRange = "lan".parse().unwrap();
        for inside in [
            "127.0.0.2",
            "10.1.2.3",
            "192.168.1.9",
            "172.31.0.1",
            "100.64.0.1",
            "169.254.3.4",
            "::1",
            "fd00::5",
            "fe80::1",
            "::ffff:192.168.1.2",
        ] {
            assert!(lan.contains(ip(inside)), "{inside} is on the LAN");
        }
        for outside in ["8.8.8.8", "100.128.0.1", "172.32.0.1", "2001:db8::1"] {
            assert!(!lan.contains(ip(outside)), "{outside} is not on the LAN");
        }
        let net: ClientRange = "192.0.2.0/24".parse().unwrap();
        assert!(net.contains(ip("192.0.2.77")) && !net.contains(ip("192.0.3.1")));
        assert!(!net.contains(ip("::1")));
        let six: ClientRange = "2001:db8::/32".parse().unwrap();
        assert!(six.contains(ip("2001:db8:1::1")));
        assert_eq!(six.to_string(), "2001:db8::/32");
        assert!(
            "192.0.2.1/24"
                .parse::<ClientRange>()
                .unwrap_err()
                .contains("bits set")
        );
        assert!("192.0.2.0/33".parse::<ClientRange>().is_err());
        assert!("everyone".parse::<ClientRange>().is_err());
        assert_eq!(
            masked(ip("2001:db8:1:2ff:3::4"), 56),
            ip("2001:db8:1:200::")
        );
        assert_eq!(masked(ip("10.1.2.3"), 0), ip("0.0.0.0"));
    }

    #[test]
    fn durations_are_capped() {
        #[derive(Debug, Deserialize)]
        struct Holder {
            #[serde(deserialize_with = "duration")]
            value: Duration,
        }
        let read = |text: &str| toml::from_str::<Holder>(&format!("value = {text}"));
        assert_eq!(read("\"3650d\"").unwrap().value, MAX_DURATION);
        for huge in ["\"300000000000y\"", "\"11y\"", "9000000000000000000"] {
            let err = read(huge).unwrap_err().to_string();
            assert!(err.contains("10 years"), "{huge}: {err}");
        }
    }
}

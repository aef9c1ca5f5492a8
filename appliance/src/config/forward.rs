//! Conditional forwarding and local domains: which names go to which
//! upstreams, parsed from `[policy]`'s `upstreams` entries (AdGuard Home's
//! `[/domain/]upstream` form), its `[[policy.forward]]` tables and its
//! `local_domains`.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

use super::{NameRule, UpstreamUrl};

/// A domain that covers itself and every name below it: lower case,
/// dotted, without the trailing dot (`lan`, `168.192.in-addr.arpa`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DomainSuffix(String);

impl DomainSuffix {
    /// The dotted name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name in DNS wire form (lower case, ending with the root label).
    pub(crate) fn to_wire(&self) -> Vec<u8> {
        let mut wire = Vec::with_capacity(self.0.len() + 2);
        for label in self.0.split('.') {
            wire.push(label.len() as u8);
            wire.extend_from_slice(label.as_bytes());
        }
        wire.push(0);
        wire
    }
}

impl FromStr for DomainSuffix {
    type Err = String;

    /// A name by the rules of [`NameRule`], without `*.`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.parse::<NameRule>() {
            Ok(rule) if !rule.subdomains => Ok(Self(rule.name)),
            _ => Err(format!(
                "`{text}` is not a domain name (letters, digits, '-', '_', no `*.`)"
            )),
        }
    }
}

impl fmt::Display for DomainSuffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DomainSuffix {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(de::Error::custom)
    }
}

impl Serialize for DomainSuffix {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Where the names of a forward zone go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardTarget {
    /// These upstreams, in the policy's strategy.
    Upstreams(Vec<UpstreamUrl>),
    /// The general upstreams (AdGuard Home's `#`): takes the names out of
    /// a shorter forward zone, a local domain or a private reverse zone.
    General,
}

/// Domains whose names (the domains themselves and every name below them)
/// go to their own upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardZone {
    /// The domains.
    pub domains: Vec<DomainSuffix>,
    /// Where their names go.
    pub target: ForwardTarget,
}

/// One entry of `[policy] upstreams`: a general upstream, or AdGuard
/// Home's `[/domain1/domain2/]upstream1 upstream2` (or `#`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamEntry {
    /// Asked for every name no forward zone or local domain takes.
    General(UpstreamUrl),
    /// Asked for the names of its domains only; the text as written.
    Forward(ForwardZone, String),
}

impl FromStr for UpstreamEntry {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let Some(rest) = text.trim().strip_prefix("[/") else {
            return text.parse().map(Self::General);
        };
        let bad = |why: &str| format!("`{text}`: {why}; write `[/domain1/domain2/]upstream`");
        let (domains, upstreams) = rest.split_once("/]").ok_or_else(|| bad("no `/]`"))?;
        let domains = domains
            .split('/')
            .map(str::parse)
            .collect::<Result<Vec<DomainSuffix>, String>>()
            .map_err(|why| bad(&why))?;
        let target = match upstreams.split_whitespace().collect::<Vec<_>>()[..] {
            [] => return Err(bad("no upstream after `]`")),
            ["#"] => ForwardTarget::General,
            ref urls => ForwardTarget::Upstreams(
                urls.iter()
                    .map(|url| url.parse())
                    .collect::<Result<_, String>>()
                    .map_err(|why| bad(&why))?,
            ),
        };
        Ok(Self::Forward(
            ForwardZone { domains, target },
            text.to_owned(),
        ))
    }
}

impl fmt::Display for UpstreamEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::General(url) => write!(f, "{url}"),
            Self::Forward(_, text) => f.write_str(text),
        }
    }
}

impl<'de> Deserialize<'de> for UpstreamEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(de::Error::custom)
    }
}

impl Serialize for UpstreamEntry {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A `[[policy.forward]]` table: `domain` (one name or a list) and the
/// `upstreams` its names go to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "RawForward", into = "RawForward")]
pub struct ForwardTable(pub ForwardZone);

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawForward {
    domain: OneOrMany,
    upstreams: Vec<UpstreamUrl>,
}

#[derive(Deserialize, Serialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl TryFrom<RawForward> for ForwardTable {
    type Error = String;

    fn try_from(raw: RawForward) -> Result<Self, String> {
        let domains = match raw.domain {
            OneOrMany::One(domain) => vec![domain],
            OneOrMany::Many(domains) if domains.is_empty() => {
                return Err("`domain` lists no domain".into());
            }
            OneOrMany::Many(domains) => domains,
        };
        let domains = domains
            .iter()
            .map(|domain| domain.parse())
            .collect::<Result<Vec<DomainSuffix>, String>>()
            .map_err(|why| format!("`domain`: {why}"))?;
        if raw.upstreams.is_empty() {
            return Err("`upstreams` lists no upstream".into());
        }
        Ok(Self(ForwardZone {
            domains,
            target: ForwardTarget::Upstreams(raw.upstreams),
        }))
    }
}

impl From<ForwardTable> for RawForward {
    fn from(ForwardTable(zone): ForwardTable) -> Self {
        let upstreams = match zone.target {
            ForwardTarget::Upstreams(urls) => urls,
            ForwardTarget::General => Vec::new(),
        };
        Self {
            domain: OneOrMany::Many(zone.domains.iter().map(ToString::to_string).collect()),
            upstreams,
        }
    }
}

/// The default `local_domains`: names that never reach the general
/// upstreams (RFC 6762's `local` is mDNS's, not listed).
pub(crate) fn default_local_domains() -> Vec<DomainSuffix> {
    ["lan", "home.arpa", "internal", "localhost"]
        .iter()
        .map(|name| name.parse().expect("default local domain parses"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adguard_entries_parse_into_zones() {
        let entry: UpstreamEntry = "[/lan/168.192.in-addr.arpa/]udp://192.168.1.1 192.168.1.2:5353"
            .parse()
            .unwrap();
        let UpstreamEntry::Forward(zone, _) = &entry else {
            panic!("{entry:?}")
        };
        let domains: Vec<_> = zone.domains.iter().map(DomainSuffix::as_str).collect();
        assert_eq!(domains, ["lan", "168.192.in-addr.arpa"]);
        let ForwardTarget::Upstreams(urls) = &zone.target else {
            panic!("{zone:?}")
        };
        assert_eq!(urls[1].port, 5353, "a bare address is plain DNS");
        assert_eq!(entry.to_string().parse::<UpstreamEntry>().unwrap(), entry);
        let general: UpstreamEntry = "[/public.lan/]#".parse().unwrap();
        assert!(matches!(
            general,
            UpstreamEntry::Forward(
                ForwardZone {
                    target: ForwardTarget::General,
                    ..
                },
                _
            )
        ));
    }

    #[test]
    fn malformed_entries_say_what_is_wrong() {
        for (text, says) in [
            ("[/lan]udp://1.2.3.4", "no `/]`"),
            ("[/lan/]", "no upstream"),
            ("[/bad name/]udp://1.2.3.4", "bad name"),
            ("[//]udp://1.2.3.4", "is not a domain"),
            ("[/lan/]gopher://x", "gopher"),
        ] {
            let err = text.parse::<UpstreamEntry>().unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn suffixes_have_a_wire_form() {
        let suffix: DomainSuffix = "Home.Arpa.".parse().unwrap();
        assert_eq!(suffix.as_str(), "home.arpa");
        assert_eq!(suffix.to_wire(), b"\x04home\x04arpa\x00");
        assert!("*.lan".parse::<DomainSuffix>().is_err());
    }
}

//! Local DNS records, parsed into typed data as the configuration is read:
//! a record whose value does not fit its type is refused there, naming its
//! key. Each serializes back to the form it is read from
//! (`name`, `type`, `value`, `ttl`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::NameRule;

/// A local DNS record: `name` (or `*.suffix`) answers with `data`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "RawRecord", into = "RawRecord")]
pub struct LocalRecord {
    /// Owner name, or `*.suffix` for every name below the suffix.
    pub name: NameRule,
    /// The record's type and value.
    pub data: RecordData,
    /// TTL in seconds.
    pub ttl: u32,
}

/// The value of a local record, by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordData {
    /// IPv4 address.
    A(Ipv4Addr),
    /// IPv6 address.
    Aaaa(Ipv6Addr),
    /// Alias.
    Cname(RecordName),
    /// Reverse pointer.
    Ptr(RecordName),
    /// Text.
    Txt(String),
    /// Mail exchanger.
    Mx {
        /// Lower is preferred.
        preference: u16,
        /// The mail server.
        exchange: RecordName,
    },
    /// Service location.
    Srv {
        /// Lower is tried first.
        priority: u16,
        /// Share among equal priorities.
        weight: u16,
        /// The service's port.
        port: u16,
        /// The server.
        target: RecordName,
    },
}

/// Types a local record can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum RecordKind {
    /// IPv4 address.
    A,
    /// IPv6 address.
    Aaaa,
    /// Alias.
    Cname,
    /// Reverse pointer.
    Ptr,
    /// Text.
    Txt,
    /// Mail exchanger.
    Mx,
    /// Service location.
    Srv,
}

/// A name a record points at: lower case, dotted, without the trailing
/// dot, never a wildcard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordName(String);

/// Why a local record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("local record `{name}` {kind:?}: {reason}")]
pub struct RecordError {
    /// The record's name.
    pub name: String,
    /// Its type.
    pub kind: RecordKind,
    /// What is wrong with its value.
    pub reason: String,
}

/// A record as written in the configuration.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawRecord {
    name: NameRule,
    #[serde(rename = "type")]
    kind: RecordKind,
    value: String,
    #[serde(default = "default_local_ttl")]
    ttl: u32,
}

fn default_local_ttl() -> u32 {
    300
}

impl TryFrom<RawRecord> for LocalRecord {
    type Error = RecordError;

    fn try_from(raw: RawRecord) -> Result<Self, Self::Error> {
        let data = RecordData::parse(raw.kind, &raw.value).map_err(|reason| RecordError {
            name: raw.name.to_string(),
            kind: raw.kind,
            reason,
        })?;
        Ok(Self {
            name: raw.name,
            data,
            ttl: raw.ttl,
        })
    }
}

impl From<LocalRecord> for RawRecord {
    fn from(record: LocalRecord) -> Self {
        Self {
            kind: record.data.kind(),
            value: record.data.to_string(),
            name: record.name,
            ttl: record.ttl,
        }
    }
}

impl RecordData {
    /// The record's type.
    pub(crate) fn kind(&self) -> RecordKind {
        match self {
            Self::A(_) => RecordKind::A,
            Self::Aaaa(_) => RecordKind::Aaaa,
            Self::Cname(_) => RecordKind::Cname,
            Self::Ptr(_) => RecordKind::Ptr,
            Self::Txt(_) => RecordKind::Txt,
            Self::Mx { .. } => RecordKind::Mx,
            Self::Srv { .. } => RecordKind::Srv,
        }
    }

    /// Parses a configured value of type `kind`: an address, a name, text,
    /// `PRIORITY NAME` (MX) or `PRIORITY WEIGHT PORT NAME` (SRV). The error
    /// says what is wrong.
    fn parse(kind: RecordKind, value: &str) -> Result<Self, String> {
        let value = value.trim();
        let name = |text: &str| {
            text.parse::<RecordName>()
                .map_err(|()| format!("`{text}` is not a name"))
        };
        Ok(match kind {
            RecordKind::A => match value.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) => Self::A(v4),
                _ => return Err(format!("`{value}` is not an IPv4 address")),
            },
            RecordKind::Aaaa => match value.parse::<IpAddr>() {
                Ok(IpAddr::V6(v6)) => Self::Aaaa(v6),
                _ => return Err(format!("`{value}` is not an IPv6 address")),
            },
            RecordKind::Cname => Self::Cname(name(value)?),
            RecordKind::Ptr => Self::Ptr(name(value)?),
            RecordKind::Txt => Self::Txt(value.to_owned()),
            RecordKind::Mx => {
                let ([preference], exchange) = numbers_and_name(value)?;
                Self::Mx {
                    preference,
                    exchange: name(exchange)?,
                }
            }
            RecordKind::Srv => {
                let ([priority, weight, port], target) = numbers_and_name(value)?;
                Self::Srv {
                    priority,
                    weight,
                    port,
                    target: name(target)?,
                }
            }
        })
    }
}

/// `N` numbers 0-65535 and a name, separated by white space.
fn numbers_and_name<const N: usize>(value: &str) -> Result<([u16; N], &str), String> {
    let fields: Vec<&str> = value.split_whitespace().collect();
    if fields.len() != N + 1 {
        return Err(format!("expected {N} numbers and a name, got `{value}`"));
    }
    let mut numbers = [0; N];
    for (number, field) in numbers.iter_mut().zip(&fields) {
        *number = field
            .parse()
            .map_err(|_| format!("`{field}` is not a number 0-65535"))?;
    }
    Ok((numbers, fields[N]))
}

impl fmt::Display for RecordData {
    /// The value as the configuration writes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::A(v4) => write!(f, "{v4}"),
            Self::Aaaa(v6) => write!(f, "{v6}"),
            Self::Cname(name) | Self::Ptr(name) => write!(f, "{name}"),
            Self::Txt(text) => f.write_str(text),
            Self::Mx {
                preference,
                exchange,
            } => write!(f, "{preference} {exchange}"),
            Self::Srv {
                priority,
                weight,
                port,
                target,
            } => write!(f, "{priority} {weight} {port} {target}"),
        }
    }
}

impl RecordName {
    /// The dotted name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for RecordName {
    type Err = ();

    /// A name by the rules of [`NameRule`], without `*.`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.parse::<NameRule>() {
            Ok(rule) if !rule.subdomains => Ok(Self(rule.name)),
            _ => Err(()),
        }
    }
}

impl fmt::Display for RecordName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: &str, value: &str) -> Result<LocalRecord, String> {
        let text = format!("name = \"nas.lan\"\ntype = \"{kind}\"\nvalue = \"{value}\"\n");
        toml::from_str(&text).map_err(|err| err.message().to_owned())
    }

    #[test]
    fn every_type_parses_into_its_data_and_back() {
        for (kind, value, data) in [
            ("A", "192.168.1.2", RecordData::A([192, 168, 1, 2].into())),
            (
                "AAAA",
                "fd00::2",
                RecordData::Aaaa("fd00::2".parse().unwrap()),
            ),
            (
                "CNAME",
                "Box.LAN.",
                RecordData::Cname("box.lan".parse().unwrap()),
            ),
            (
                "PTR",
                "box.lan",
                RecordData::Ptr("box.lan".parse().unwrap()),
            ),
            (
                "TXT",
                " v=spf1 -all ",
                RecordData::Txt("v=spf1 -all".to_owned()),
            ),
            (
                "MX",
                "10 mail.lan",
                RecordData::Mx {
                    preference: 10,
                    exchange: "mail.lan".parse().unwrap(),
                },
            ),
            (
                "SRV",
                "1 2 8080 web.lan",
                RecordData::Srv {
                    priority: 1,
                    weight: 2,
                    port: 8080,
                    target: "web.lan".parse().unwrap(),
                },
            ),
        ] {
            let parsed = record(kind, value).unwrap();
            assert_eq!(parsed.data, data, "{kind} {value}");
            assert_eq!(parsed.ttl, 300, "the default TTL");
            let written = toml::to_string(&parsed).unwrap();
            assert!(written.contains(&format!("type = \"{kind}\"")), "{written}");
            assert_eq!(toml::from_str::<LocalRecord>(&written).unwrap(), parsed);
            let json = serde_json::to_value(&parsed).unwrap();
            assert_eq!(json["type"], kind);
            assert_eq!(json["value"], data.to_string());
            assert_eq!(serde_json::from_value::<LocalRecord>(json).unwrap(), parsed);
        }
    }

    #[test]
    fn a_value_that_does_not_fit_its_type_is_refused() {
        for (kind, value, reason) in [
            ("A", "fd00::1", "`fd00::1` is not an IPv4 address"),
            ("AAAA", "10.0.0.1", "`10.0.0.1` is not an IPv6 address"),
            ("CNAME", "*.lan", "`*.lan` is not a name"),
            (
                "MX",
                "mail.lan",
                "expected 1 numbers and a name, got `mail.lan`",
            ),
            (
                "SRV",
                "1 2 99999 web.lan",
                "`99999` is not a number 0-65535",
            ),
        ] {
            let err = record(kind, value).unwrap_err();
            assert!(err.contains(reason), "{kind} {value}: {err}");
            assert!(err.contains("local record `nas.lan`"), "{err}");
        }
    }
}

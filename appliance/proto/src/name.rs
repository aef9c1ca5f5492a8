//! An appliance's name: one DNS label, so it can serve as `<name>.local`.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest name, in characters (a DNS label's limit).
pub const MAX_NAME_LEN: usize = 63;

/// An appliance's name: 1 to [`MAX_NAME_LEN`] ASCII letters, digits and
/// hyphens, neither starting nor ending with a hyphen (an RFC 1123 host
/// label). Case is kept as given.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ApplianceName(String);

/// Why a text is not an appliance name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{0:?} is not an appliance name: use 1 to {MAX_NAME_LEN} letters, digits and hyphens \
     (no spaces; not starting or ending with a hyphen), like \"living-room\""
)]
pub struct NameError(pub String);

impl ApplianceName {
    /// Parses a name.
    pub fn parse(text: &str) -> Result<Self, NameError> {
        let allowed = text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-');
        let edges = !text.starts_with('-') && !text.ends_with('-');
        if allowed && edges && (1..=MAX_NAME_LEN).contains(&text.len()) {
            Ok(Self(text.to_owned()))
        } else {
            Err(NameError(text.to_owned()))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ApplianceName {
    /// The name of an appliance nobody named: `moat`.
    fn default() -> Self {
        Self("moat".to_owned())
    }
}

impl fmt::Display for ApplianceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ApplianceName {
    type Err = NameError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl Borrow<str> for ApplianceName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ApplianceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ApplianceName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ApplianceName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl Serialize for ApplianceName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ApplianceName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for good in ["hq", "branch-1", "r01", "A", "living-room", &"x".repeat(63)] {
            assert_eq!(ApplianceName::parse(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "living room",
            "tab\there",
            "bad\nname",
            "-lead",
            "trail-",
            "dot.ted",
            "under_score",
            "café",
            &"x".repeat(64),
        ] {
            assert_eq!(ApplianceName::parse(bad), Err(NameError(bad.to_owned())));
        }
    }

    #[test]
    fn names_are_strings_in_json_and_checked_when_read() {
        let name = ApplianceName::parse("kitchen").unwrap();
        assert_eq!(serde_json::to_string(&name).unwrap(), "\"kitchen\"");
        assert_eq!(
            serde_json::from_str::<ApplianceName>("\"kitchen\"").unwrap(),
            name
        );
        let err = serde_json::from_str::<ApplianceName>("\"living room\"").unwrap_err();
        assert!(err.to_string().contains("not an appliance name"), "{err}");
    }
}

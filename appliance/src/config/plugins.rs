//! `[[policy.plugins]]`: policy plugins of the user's own, each a `.wasm`
//! module on the primary, its place in the chain, its fail mode and a
//! `config` table the plugin reads as `key=value` lines
//! (`moat_plugin_abi::ConfigLines`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// Longest plugin name.
pub(crate) const PLUGIN_NAME_MAX: usize = 32;

/// Most plugins a policy may configure (a bundle carries at most 64 parts).
pub(crate) const MAX_PLUGINS: usize = 16;

/// Most bytes a plugin's configuration lines may take.
pub(crate) const PLUGIN_CONFIG_MAX: usize = 64 << 10;

/// A plugin's name: 1 to 32 of `a-z`, `0-9` and `-`, starting with a
/// letter. Copy, so bundle parts can carry it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PluginName {
    bytes: [u8; PLUGIN_NAME_MAX],
    len: u8,
}

impl PluginName {
    /// The name.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl FromStr for PluginName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let fits = (1..=PLUGIN_NAME_MAX).contains(&text.len())
            && text.starts_with(|c: char| c.is_ascii_lowercase())
            && text
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
        if !fits {
            return Err(format!(
                "`{text}` is not a plugin name (1 to {PLUGIN_NAME_MAX} of a-z, 0-9 and '-', starting with a letter)"
            ));
        }
        let mut bytes = [0; PLUGIN_NAME_MAX];
        bytes[..text.len()].copy_from_slice(text.as_bytes());
        Ok(Self {
            bytes,
            len: text.len() as u8,
        })
    }
}

impl fmt::Display for PluginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for PluginName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl<'de> Deserialize<'de> for PluginName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(de::Error::custom)
    }
}

impl Serialize for PluginName {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// Where a plugin sits in the chain; plugins of one place go in the
/// order they are configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginPlace {
    /// Before the local records.
    First,
    /// After the local records, before the blocklist.
    #[default]
    BeforeBlocklist,
    /// After the blocklist: decides what no built-in rule decided.
    Last,
}

/// What a query gets when this plugin faults (a trap, a timeout, a bad
/// verdict), or while it is switched off after repeated faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginFailMode {
    /// The question goes through: no later plugin blocks it.
    Open,
    /// SERVFAIL.
    Closed,
    /// As if the plugin were not there: the rest of the chain decides.
    #[default]
    Skip,
}

/// One `[[policy.plugins]]` table.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginSpec {
    /// Its name, unique in the policy.
    pub name: PluginName,
    /// The `.wasm` file on the primary (inside the directories local
    /// sources may be read from).
    pub module: PathBuf,
    /// Its place in the chain.
    #[serde(default)]
    pub place: PluginPlace,
    /// What a fault means for the query.
    #[serde(default)]
    pub fail_mode: PluginFailMode,
    /// Its configuration, as the plugin reads it.
    #[serde(default, deserialize_with = "config_table")]
    pub config: toml::Table,
}

impl PluginSpec {
    /// The configuration as `key=value` lines (checked when parsed).
    pub(crate) fn config_lines(&self) -> String {
        let mut lines = String::new();
        // Checked when parsed; a table that got here cannot fail.
        let _ = write_lines(&mut lines, "", &self.config);
        lines
    }
}

fn config_table<'de, D: Deserializer<'de>>(deserializer: D) -> Result<toml::Table, D::Error> {
    let table = toml::Table::deserialize(deserializer)?;
    let mut lines = String::new();
    write_lines(&mut lines, "", &table).map_err(de::Error::custom)?;
    if lines.len() > PLUGIN_CONFIG_MAX {
        return Err(de::Error::custom(format!(
            "{} bytes of configuration; a plugin takes at most {PLUGIN_CONFIG_MAX}",
            lines.len()
        )));
    }
    Ok(table)
}

/// Writes `table` as lines, its keys under `prefix`.
fn write_lines(out: &mut String, prefix: &str, table: &toml::Table) -> Result<(), String> {
    for (key, value) in table {
        if key.is_empty() || key.contains(['=', '\n', '.']) {
            return Err(format!("config key `{key}`: no '=', '.' or newline"));
        }
        let key = format!("{prefix}{key}");
        match value {
            toml::Value::Table(inner) => write_lines(out, &format!("{key}."), inner)?,
            toml::Value::Array(items) => {
                for item in items {
                    write_scalar(out, &key, item)?;
                }
            }
            scalar => write_scalar(out, &key, scalar)?,
        }
    }
    Ok(())
}

fn write_scalar(out: &mut String, key: &str, value: &toml::Value) -> Result<(), String> {
    let text = match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Table(_) | toml::Value::Array(_) => {
            return Err(format!(
                "config key `{key}`: an array holds strings, numbers, booleans or dates"
            ));
        }
        other => other.to_string(),
    };
    if text.contains('\n') {
        return Err(format!("config key `{key}`: a value has no newline"));
    }
    out.push_str(key);
    out.push('=');
    out.push_str(&text);
    out.push('\n');
    Ok(())
}

/// At most [`MAX_PLUGINS`], with distinct names.
pub(super) fn check_names(plugins: &[PluginSpec]) -> Result<(), String> {
    if plugins.len() > MAX_PLUGINS {
        return Err(format!(
            "key `policy.plugins`: {} plugins; a policy may have at most {MAX_PLUGINS}",
            plugins.len()
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for plugin in plugins {
        if !seen.insert(plugin.name) {
            return Err(format!(
                "key `policy.plugins`: plugin `{}` is configured twice",
                plugin.name
            ));
        }
    }
    Ok(())
}

/// Local tuning of the plugins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PluginTuning {
    /// Seconds added to the time plugins are fed (Unix seconds in the
    /// query buffer); 0 in service. Lets a test or a dry run see what a
    /// schedule does at another time without changing the clock.
    pub clock_offset_secs: i64,
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn a_plugin_table_becomes_lines_and_survives_the_toml_form() {
        let text = r#"[[policy.plugins]]
name = "bedtime"
module = "/srv/plugins/schedule.wasm"
place = "last"
fail_mode = "closed"
[policy.plugins.config]
names = ["social.example", "video.example"]
from = "21:00"
utc_offset_minutes = 60
strict = true
[policy.plugins.config.extra]
note = "kids"
"#;
        let policy = Config::parse(text, "x.toml").unwrap().policy;
        let plugin = &policy.plugins[0];
        assert_eq!(plugin.name.as_str(), "bedtime");
        assert_eq!(
            plugin.config_lines(),
            "extra.note=kids\nfrom=21:00\nnames=social.example\nnames=video.example\nstrict=true\nutc_offset_minutes=60\n"
        );
        let written = policy.to_toml();
        assert_eq!(
            crate::config::Policy::from_toml(&written, "bundle").unwrap(),
            policy,
            "{written}"
        );
    }

    #[test]
    fn bad_plugin_tables_are_refused_naming_the_key() {
        for (bad, says) in [
            ("name = \"Bed Time\"\nmodule = \"a.wasm\"", "plugin name"),
            ("name = \"a\"", "module"),
            (
                "name = \"a\"\nmodule = \"a.wasm\"\nplace = \"middle\"",
                "middle",
            ),
            (
                "name = \"a\"\nmodule = \"a.wasm\"\nfail_mode = \"maybe\"",
                "maybe",
            ),
            (
                "name = \"a\"\nmodule = \"a.wasm\"\nconfig = { a = \"x\\ny\" }",
                "newline",
            ),
            (
                "name = \"a\"\nmodule = \"a.wasm\"\nconfig = { a = [[1]] }",
                "array",
            ),
        ] {
            let err = Config::parse(&format!("[[policy.plugins]]\n{bad}\n"), "x.toml")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("policy.plugins") && err.contains(says),
                "{bad}: {err}"
            );
        }
        let twice = "[[policy.plugins]]\nname = \"a\"\nmodule = \"a.wasm\"\n".repeat(2);
        let err = Config::parse(&twice, "x.toml").unwrap_err().to_string();
        assert!(err.contains("configured twice"), "{err}");
        let many: String = (0..=super::MAX_PLUGINS)
            .map(|index| format!("[[policy.plugins]]\nname = \"p{index}\"\nmodule = \"a.wasm\"\n"))
            .collect();
        let err = Config::parse(&many, "x.toml").unwrap_err().to_string();
        assert!(err.contains("at most 16"), "{err}");
        let big = format!(
            "[[policy.plugins]]\nname = \"a\"\nmodule = \"a.wasm\"\nconfig = {{ a = \"{}\" }}\n",
            "x".repeat(super::PLUGIN_CONFIG_MAX)
        );
        let err = Config::parse(&big, "x.toml").unwrap_err().to_string();
        assert!(err.contains("at most"), "{err}");
    }
}

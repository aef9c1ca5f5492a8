//! First-boot settings: the `moat.toml` a user puts on the boot partition,
//! read once into `/data` and from then on read from there.
//!
//! The file is an ordinary Moat configuration plus two tables only the
//! image reads: `[network]` (`mode = "dhcp"` or `"static"`, `address =
//! "IP/PREFIX"`, `gateway`, `ntp = ["IP[:PORT]", …]`) and, for a replica,
//! `[join]` (`primary = "HOST:PORT"`, `code`). Both are taken out before the
//! rest becomes the daemon's configuration, whose data directory is forced
//! to `/data/moat` and which listens on port 53 and answers mDNS unless it
//! says otherwise.
//! On the image the DNS rate limit defaults to Pi-hole's, 1,000 queries a
//! minute per client, unless `[tuning.server]` says otherwise, and the
//! control plane is served over HTTPS on port 443 with port 80 redirecting
//! to it. `[instance] admin_password` is taken out too: init keeps only its
//! hash, and removes the line from the boot partition's copy.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use thiserror::Error;

use crate::config::Config;

/// Where the daemon keeps its state on the image.
pub(crate) const DAEMON_DATA_DIR: &str = "/data/moat";

/// Why first-boot settings were refused.
#[derive(Debug, Error)]
#[non_exhaustive]
pub(crate) enum SettingsError {
    /// Not TOML.
    #[error("moat.toml: {0}")]
    Toml(#[from] toml::de::Error),
    /// A `[network]` or `[join]` key is wrong.
    #[error("moat.toml: key `{key}`: {reason}")]
    Invalid {
        /// Dotted key.
        key: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The daemon's part does not parse as a Moat configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// How the network interface gets its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Network {
    /// Ask a DHCP server (the default).
    Dhcp,
    /// A fixed address.
    Static {
        /// Our address.
        address: Ipv4Addr,
        /// Subnet prefix length.
        prefix_len: u8,
        /// Default gateway.
        gateway: Option<Ipv4Addr>,
    },
}

/// The primary a replica pairs with on its first start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Join {
    /// The primary's sync address, `HOST:PORT`.
    pub primary: String,
    /// The one-time pairing code.
    pub code: String,
}

/// Everything init needs from the settings file.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The appliance's name (the host name too).
    pub name: String,
    /// Address configuration.
    pub network: Network,
    /// SNTP servers, in order of preference.
    pub ntp: Vec<SocketAddr>,
    /// Set for a replica: whom to pair with.
    pub join: Option<Join>,
    /// The first admin password, if the file gives one.
    pub admin_password: Option<AdminPassword>,
    /// The daemon's configuration file, as TOML text.
    pub daemon_config: String,
}

/// A password from the settings file; its `Debug` form hides it.
#[derive(Clone)]
pub(crate) struct AdminPassword(pub String);

impl std::fmt::Debug for AdminPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminPassword(****)")
    }
}

/// The settings text without its `admin_password` line, if it has one.
pub(crate) fn without_admin_password(text: &str) -> Option<String> {
    let is_password = |line: &str| {
        line.trim_start()
            .strip_prefix("admin_password")
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    if !text.lines().any(is_password) {
        return None;
    }
    Some(
        text.lines()
            .filter(|line| !is_password(line))
            .flat_map(|line| [line, "\n"])
            .collect(),
    )
}

/// What to do with the settings at boot.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Provisioning<'a> {
    /// The first boot with a settings file: keep this text in `/data`.
    Consume(&'a str),
    /// Already provisioned: the copy in `/data` rules; the boot file is ignored.
    Stored(&'a str),
    /// No settings anywhere: run on the defaults.
    Defaults,
}

/// Decides which settings text rules this boot.
pub(crate) fn decide<'a>(stored: Option<&'a str>, boot_file: Option<&'a str>) -> Provisioning<'a> {
    match (stored, boot_file) {
        (Some(stored), _) => Provisioning::Stored(stored),
        (None, Some(boot)) => Provisioning::Consume(boot),
        (None, None) => Provisioning::Defaults,
    }
}

impl Settings {
    /// Parses a settings file (empty text: every default).
    pub(crate) fn parse(text: &str) -> Result<Self, SettingsError> {
        let mut table: toml::Table = text.parse()?;
        let network_table = take_table(&mut table, "network")?;
        let join_table = take_table(&mut table, "join")?;

        let network = match network_table.get("mode").and_then(toml::Value::as_str) {
            None | Some("dhcp") => Network::Dhcp,
            Some("static") => {
                let address = str_key(&network_table, "address", "network.address")?
                    .ok_or_else(|| invalid("network.address", "required for mode = \"static\""))?;
                let (ip, prefix) = address.split_once('/').unwrap_or((address, "24"));
                Network::Static {
                    address: ip
                        .parse()
                        .map_err(|err| invalid("network.address", format!("`{ip}`: {err}")))?,
                    prefix_len: prefix
                        .parse()
                        .ok()
                        .filter(|len| *len <= 32)
                        .ok_or_else(|| invalid("network.address", "bad prefix length"))?,
                    gateway: str_key(&network_table, "gateway", "network.gateway")?
                        .map(|gw| {
                            gw.parse()
                                .map_err(|err| invalid("network.gateway", format!("`{gw}`: {err}")))
                        })
                        .transpose()?,
                }
            }
            Some(other) => {
                return Err(invalid(
                    "network.mode",
                    format!("`{other}` is not \"dhcp\" or \"static\""),
                ));
            }
        };
        let ntp_given: Vec<SocketAddr> = match network_table.get("ntp") {
            None => Vec::new(),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|item| {
                    let text = item.as_str().unwrap_or_default();
                    socket_addr(text, 123)
                        .ok_or_else(|| invalid("network.ntp", format!("`{text}` is not IP[:PORT]")))
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(invalid("network.ntp", "a list of addresses")),
        };
        let join = if join_table.is_empty() {
            None
        } else {
            let primary = str_key(&join_table, "primary", "join.primary")?
                .ok_or_else(|| invalid("join.primary", "required"))?;
            let code = str_key(&join_table, "code", "join.code")?
                .ok_or_else(|| invalid("join.code", "required"))?;
            Some(Join {
                primary: primary.to_owned(),
                code: code.to_owned(),
            })
        };

        let instance = table
            .entry("instance")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(instance) = instance.as_table_mut() else {
            return Err(invalid("instance", "must be a table"));
        };
        let admin_password = match instance.remove("admin_password") {
            None => None,
            Some(toml::Value::String(password)) => Some(AdminPassword(password)),
            Some(_) => return Err(invalid("instance.admin_password", "must be a string")),
        };
        image_https(instance);
        instance.insert("data_dir".into(), DAEMON_DATA_DIR.into());
        instance
            .entry("listen")
            .or_insert_with(|| toml::Value::Array(vec!["0.0.0.0:53".into()]));
        instance.entry("mdns").or_insert(true.into());
        image_rate_limit(&mut table)?;
        let daemon_config = toml::to_string(&table).map_err(|err| invalid("", err.to_string()))?;
        let config = Config::parse(&daemon_config, "moat.toml")?;

        // Without servers of its own, ask the upstreams' hosts, then the primary.
        let mut ntp = ntp_given;
        if ntp.is_empty() {
            ntp.extend(
                config
                    .policy
                    .general_upstreams()
                    .iter()
                    .filter_map(|upstream| upstream.host.parse::<IpAddr>().ok())
                    .map(|ip| SocketAddr::new(ip, 123)),
            );
            if let Some(primary) = join
                .as_ref()
                .and_then(|join| join.primary.parse::<SocketAddr>().ok())
            {
                ntp.push(SocketAddr::new(primary.ip(), 123));
            }
        }
        Ok(Self {
            name: config.instance.name.to_string(),
            network,
            ntp,
            join,
            admin_password,
            daemon_config,
        })
    }
}

/// The image's control plane: HTTPS on 443 and redirects on 80, unless
/// the file says otherwise.
fn image_https(instance: &mut toml::Table) {
    for (key, addr) in [("https", "0.0.0.0:443"), ("http_redirect", "0.0.0.0:80")] {
        instance.entry(key).or_insert_with(|| addr.into());
    }
}

/// The image's rate limit, unless the file sets one.
fn image_rate_limit(table: &mut toml::Table) -> Result<(), SettingsError> {
    let mut server = table;
    for key in ["tuning", "server"] {
        server = server
            .entry(key)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| invalid(key, "must be a table"))?;
    }
    server
        .entry("rate_limit_queries")
        .or_insert(toml::Value::Integer(IMAGE_RATE_LIMIT));
    Ok(())
}

/// Queries per client per minute on the image (Pi-hole's `dns.rateLimit`).
const IMAGE_RATE_LIMIT: i64 = 1_000;

fn take_table(table: &mut toml::Table, key: &'static str) -> Result<toml::Table, SettingsError> {
    match table.remove(key) {
        None => Ok(toml::Table::new()),
        Some(toml::Value::Table(inner)) => Ok(inner),
        Some(_) => Err(invalid(key, "must be a table")),
    }
}

fn str_key<'a>(
    table: &'a toml::Table,
    name: &str,
    key: &'static str,
) -> Result<Option<&'a str>, SettingsError> {
    match table.get(name) {
        None => Ok(None),
        Some(toml::Value::String(text)) => Ok(Some(text)),
        Some(_) => Err(invalid(key, "must be a string")),
    }
}

fn socket_addr(text: &str, default_port: u16) -> Option<SocketAddr> {
    text.parse().ok().or_else(|| {
        text.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, default_port))
    })
}

fn invalid(key: &'static str, reason: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        key,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_copy_wins_over_the_boot_file() {
        assert_eq!(decide(Some("a"), Some("b")), Provisioning::Stored("a"));
        assert_eq!(decide(None, Some("b")), Provisioning::Consume("b"));
        assert_eq!(decide(None, None), Provisioning::Defaults);
    }

    #[test]
    fn defaults_are_dhcp_port_53_and_the_upstreams_as_time_servers() {
        let settings = Settings::parse("").unwrap();
        assert_eq!(settings.network, Network::Dhcp);
        assert_eq!(settings.join, None);
        let config = Config::parse(&settings.daemon_config, "t").unwrap();
        assert_eq!(config.instance.data_dir.to_str(), Some(DAEMON_DATA_DIR));
        assert_eq!(config.instance.listen, ["0.0.0.0:53".parse().unwrap()]);
        assert_eq!(config.instance.https, Some("0.0.0.0:443".parse().unwrap()));
        assert_eq!(
            config.instance.http_redirect,
            Some("0.0.0.0:80".parse().unwrap())
        );
        assert!(settings.admin_password.is_none());
        assert_eq!(config.tuning.server.rate_limit_queries, 1_000);
        assert_eq!(
            config.tuning.server.allow_clients,
            [crate::config::ClientRange::Lan]
        );
        assert_eq!(
            settings.ntp,
            [
                "9.9.9.9:123".parse().unwrap(),
                "1.1.1.1:123".parse().unwrap()
            ]
        );
    }

    #[test]
    fn a_replica_with_a_static_address() {
        let settings = Settings::parse(
            r#"
[network]
mode = "static"
address = "192.168.1.9/24"
gateway = "192.168.1.1"

[join]
primary = "192.168.1.2:8853"
code = "7KQ2-M9XD"

[instance]
name = "branch-1"
data_dir = "elsewhere"

[policy]
upstreams = ["udp://192.168.1.1:53"]
deny = ["ads.example"]
"#,
        )
        .unwrap();
        assert_eq!(
            settings.network,
            Network::Static {
                address: Ipv4Addr::new(192, 168, 1, 9),
                prefix_len: 24,
                gateway: Some(Ipv4Addr::new(192, 168, 1, 1)),
            }
        );
        assert_eq!(settings.name, "branch-1");
        assert_eq!(settings.join.unwrap().code, "7KQ2-M9XD");
        assert_eq!(
            settings.ntp,
            [
                "192.168.1.1:123".parse().unwrap(),
                "192.168.1.2:123".parse().unwrap()
            ]
        );
        let config = Config::parse(&settings.daemon_config, "t").unwrap();
        assert_eq!(config.instance.data_dir.to_str(), Some(DAEMON_DATA_DIR));
    }

    #[test]
    fn an_admin_password_is_taken_out_of_the_daemon_config_and_the_file() {
        let text =
            "[instance]\nname = \"den\"\n  admin_password = \"hunter2 hunter2\"\n\n[policy]\n";
        let settings = Settings::parse(text).unwrap();
        assert_eq!(
            settings.admin_password.as_ref().map(|p| p.0.as_str()),
            Some("hunter2 hunter2")
        );
        assert!(!settings.daemon_config.contains("hunter2"));
        assert!(!format!("{settings:?}").contains("hunter2"));
        let kept = without_admin_password(text).unwrap();
        assert_eq!(kept, "[instance]\nname = \"den\"\n\n[policy]\n");
        assert!(Settings::parse(&kept).unwrap().admin_password.is_none());
        assert_eq!(without_admin_password(&kept), None);
        let err = Settings::parse("[instance]\nadmin_password = 1\n").unwrap_err();
        assert!(err.to_string().contains("instance.admin_password"), "{err}");
    }

    #[test]
    fn mistakes_are_named() {
        let err = Settings::parse("[network]\nmode = \"wifi\"\n").unwrap_err();
        assert!(err.to_string().contains("network.mode"), "{err}");
        let err = Settings::parse("[network]\nmode = \"static\"\n").unwrap_err();
        assert!(err.to_string().contains("network.address"), "{err}");
        let err = Settings::parse("[join]\nprimary = \"x:1\"\n").unwrap_err();
        assert!(err.to_string().contains("join.code"), "{err}");
        let err = Settings::parse("[instance]\nnope = 1\n").unwrap_err();
        assert!(matches!(err, SettingsError::Config(_)), "{err}");
        let err = Settings::parse("[network]\nntp = [\"time.example\"]\n").unwrap_err();
        assert!(err.to_string().contains("network.ntp"), "{err}");
    }
}

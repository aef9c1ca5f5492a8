//! Configuration: the three kinds of settings (instance, tuning, policy) kept
//! apart, parsed from TOML into typed values.
//!
//! Parsing is the only validation: every value is turned into its typed form
//! while the file is read, so an error always names the file, the line, the
//! key and the reason.

mod forward;
mod plugins;
mod records;
mod values;

use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use moat_proto::ApplianceName;
use serde::{Deserialize, Serialize};

pub(crate) use forward::{DomainSuffix, ForwardTable, ForwardTarget, ForwardZone, UpstreamEntry};
pub(crate) use plugins::PluginTuning;
pub use plugins::{PluginFailMode, PluginName, PluginPlace, PluginSpec};
pub(crate) use records::{LocalRecord, RecordData, RecordName};
pub(crate) use values::{
    BlockedResponse, BlocklistSource, ClientRange, FailMode, NameRule, Percent, SourceLocation,
    Strategy, Transport, UpstreamUrl, is_lan, masked,
};
pub(crate) use values::{ListFormat, ListMatch};

/// The configuration Moat runs with when no `--config` is given.
pub(crate) const DEFAULT_TOML: &str = include_str!("default.toml");

/// A complete configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Settings that belong to this appliance alone.
    pub instance: Instance,
    /// Local performance settings; never synced.
    pub tuning: Tuning,
    /// DNS policy; owned by the primary.
    pub policy: Policy,
}

/// Settings of one appliance: where it listens and keeps its data.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Instance {
    /// This appliance's name: one DNS label (see [`ApplianceName`]).
    pub name: ApplianceName,
    /// Addresses served on both UDP and TCP.
    pub listen: Vec<SocketAddr>,
    /// Address of the control endpoint (HTTP).
    pub control: SocketAddr,
    /// Address serving the same control plane over HTTPS, if any.
    pub https: Option<SocketAddr>,
    /// Address of a plain HTTP listener that only redirects to `https`.
    pub http_redirect: Option<SocketAddr>,
    /// A PEM certificate chain for `https`, replacing the one made here.
    pub https_cert: Option<PathBuf>,
    /// The PEM private key of `https_cert`.
    pub https_key: Option<PathBuf>,
    /// Address (UDP) of the primary's sync endpoint (QUIC) that replicas
    /// pair with and dial.
    pub sync: SocketAddr,
    /// Directory holding the token, pause state and query log.
    pub data_dir: PathBuf,
    /// Extra PEM CA certificates trusted for DoT/DoH upstreams.
    pub upstream_ca_file: Option<PathBuf>,
    /// Directories local blocklist sources may be read from, besides the
    /// data directory and the configuration file's own (read at start).
    pub source_dirs: Vec<PathBuf>,
    /// Whether to answer mDNS on every link (`<name>.local`) and advertise
    /// the control plane and, on a primary, the sync endpoint by DNS-SD.
    pub mdns: bool,
}

impl Default for Instance {
    fn default() -> Self {
        Self {
            name: ApplianceName::default(),
            listen: vec![
                SocketAddr::from(([127, 0, 0, 1], 5353)),
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 5353)),
            ],
            control: SocketAddr::from(([127, 0, 0, 1], 8053)),
            https: None,
            http_redirect: None,
            https_cert: None,
            https_key: None,
            sync: SocketAddr::from(([0, 0, 0, 0], 8853)),
            data_dir: PathBuf::from("moat-data"),
            upstream_ca_file: None,
            source_dirs: Vec::new(),
            mdns: false,
        }
    }
}

/// Local tuning, grouped by subsystem.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Tuning {
    /// The answer cache.
    pub cache: CacheTuning,
    /// Talking to upstream resolvers.
    pub upstream: UpstreamTuning,
    /// The listeners.
    pub server: ServerTuning,
    /// The query log.
    pub query_log: QueryLogTuning,
    /// The policy plugins.
    pub plugins: PluginTuning,
}

/// Cache sizing, TTL clamping, serve-stale and refresh of hot names.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheTuning {
    /// Bound in entries; exclusive with `max_bytes`. Without either, the
    /// cache holds 32 MiB of answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<usize>,
    /// Bound in bytes of cached answers (`"32MiB"`); exclusive with `max_entries`.
    #[serde(
        deserialize_with = "values::byte_size_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_bytes: Option<u64>,
    /// Lowest TTL an answer is cached for.
    #[serde(
        deserialize_with = "values::duration",
        serialize_with = "values::serialize_duration"
    )]
    pub min_ttl: Duration,
    /// Highest TTL an answer is cached for.
    #[serde(
        deserialize_with = "values::duration",
        serialize_with = "values::serialize_duration"
    )]
    pub max_ttl: Duration,
    /// Highest TTL of a negative answer (RFC 2308), and its TTL without SOA.
    #[serde(
        deserialize_with = "values::duration",
        serialize_with = "values::serialize_duration"
    )]
    pub negative_ttl: Duration,
    /// Answer from an expired entry when upstreams fail (RFC 8767).
    pub serve_stale: bool,
    /// How long past expiry an entry may still be served stale.
    #[serde(
        deserialize_with = "values::duration",
        serialize_with = "values::serialize_duration"
    )]
    pub stale_ttl: Duration,
    /// TTL written into a stale answer.
    #[serde(
        deserialize_with = "values::duration",
        serialize_with = "values::serialize_duration"
    )]
    pub stale_answer_ttl: Duration,
    /// How long a client waits for upstreams before a stale answer is sent.
    #[serde(
        deserialize_with = "values::duration",
        serialize_with = "values::serialize_duration"
    )]
    pub stale_answer_timeout: Duration,
    /// Refresh hot names before they expire.
    pub refresh: bool,
    /// Refresh once this share of the TTL remains.
    pub refresh_before: Percent,
    /// Window in which hits are counted to call a name hot.
    #[serde(
        deserialize_with = "values::duration",
        serialize_with = "values::serialize_duration"
    )]
    pub refresh_hit_window: Duration,
    /// Hits within the window that make a name hot.
    pub refresh_hot_hits: u32,
}

/// How the cache is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CacheBound {
    /// At most this many answers.
    Entries(u64),
    /// At most this many bytes of answers.
    Bytes(u64),
}

impl CacheTuning {
    /// The bound in force: bytes if set, entries if set, else 32 MiB.
    pub(crate) fn bound(&self) -> CacheBound {
        match (self.max_bytes, self.max_entries) {
            (Some(bytes), _) => CacheBound::Bytes(bytes),
            (None, Some(entries)) => CacheBound::Entries(entries as u64),
            (None, None) => CacheBound::Bytes(DEFAULT_CACHE_BYTES),
        }
    }
}

/// The cache's size when neither bound is set.
const DEFAULT_CACHE_BYTES: u64 = 32 << 20;

impl Default for CacheTuning {
    fn default() -> Self {
        Self {
            max_entries: None,
            max_bytes: None,
            min_ttl: (Duration::ZERO),
            max_ttl: (Duration::from_secs(86_400)),
            negative_ttl: (Duration::from_secs(3600)),
            serve_stale: true,
            stale_ttl: (Duration::from_secs(86_400)),
            stale_answer_ttl: (Duration::from_secs(30)),
            stale_answer_timeout: (Duration::from_millis(1800)),
            refresh: true,
            refresh_before: Percent(10),
            refresh_hit_window: (Duration::from_secs(300)),
            refresh_hot_hits: 3,
        }
    }
}

/// Timeouts and health of upstream resolvers.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamTuning {
    /// How long one upstream gets to answer one query.
    #[serde(
        deserialize_with = "values::duration",
        serialize_with = "values::serialize_duration"
    )]
    pub timeout: Duration,
    /// First pause after an upstream fails; doubles per failure up to 16×.
    #[serde(
        deserialize_with = "values::duration",
        serialize_with = "values::serialize_duration"
    )]
    pub failure_backoff: Duration,
}

impl Default for UpstreamTuning {
    fn default() -> Self {
        Self {
            timeout: (Duration::from_secs(2)),
            failure_backoff: (Duration::from_secs(5)),
        }
    }
}

/// Listener limits.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerTuning {
    /// UDP sockets (and threads serving them) per listen address, sharing
    /// its port; the number of CPUs unless given, at most 64. Read at start.
    pub threads: usize,
    /// Largest UDP answer sent, whatever the client advertises.
    pub udp_max_payload: u16,
    /// A TCP connection with no query for this long is closed.
    #[serde(
        deserialize_with = "values::duration",
        serialize_with = "values::serialize_duration"
    )]
    pub tcp_idle_timeout: Duration,
    /// Open TCP connections at most; more wait to be accepted.
    pub tcp_max_connections: usize,
    /// Open TCP connections from one client address at most; more are
    /// closed as soon as they are accepted.
    pub tcp_max_connections_per_client: usize,
    /// Queries one TCP connection may have unanswered; reading pauses
    /// beyond.
    pub tcp_max_queries_per_connection: usize,
    /// Questions asked upstream at once. A miss beyond this is shed: it
    /// gets its stale answer or SERVFAIL at once, while cache hits and
    /// local names are still answered. Each takes a socket.
    pub max_misses_in_flight: usize,
    /// Queries one client address may have waiting for upstreams; its
    /// misses beyond are shed, other clients' are not.
    pub max_misses_per_client: usize,
    /// Who may ask (`lan`, `loopback`, `any`, addresses, `ADDRESS/LENGTH`);
    /// everyone else is answered REFUSED.
    pub allow_clients: Vec<ClientRange>,
    /// UDP queries one client may ask per `rate_limit_interval`; 0 is no
    /// limit. A client is one address on the LAN, a /24 or /56 beyond it.
    /// Past the limit, answers are empty with TC set: a real client asks
    /// again over TCP (not counted; bounded by the TCP caps), a spoofed
    /// victim gets nothing larger than the query.
    pub rate_limit_queries: u32,
    /// The window `rate_limit_queries` counts over.
    #[serde(
        deserialize_with = "values::duration",
        serialize_with = "values::serialize_duration"
    )]
    pub rate_limit_interval: Duration,
    /// Clients the rate limit never applies to.
    pub rate_limit_exempt: Vec<ClientRange>,
}

/// The most UDP threads per listen address.
const MAX_THREADS: usize = 64;

impl Default for ServerTuning {
    fn default() -> Self {
        Self {
            threads: std::thread::available_parallelism()
                .map_or(1, |cpus| cpus.get().min(MAX_THREADS)),
            udp_max_payload: 1232,
            tcp_idle_timeout: (Duration::from_secs(10)),
            tcp_max_connections: 512,
            tcp_max_connections_per_client: 32,
            tcp_max_queries_per_connection: 16,
            max_misses_in_flight: 512,
            max_misses_per_client: 128,
            allow_clients: vec![ClientRange::Lan],
            rate_limit_queries: 20_000,
            rate_limit_interval: Duration::from_secs(60),
            rate_limit_exempt: vec![ClientRange::Loopback],
        }
    }
}

/// The in-memory query log and its copy in the data directory.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryLogTuning {
    /// Record queries at all.
    pub enabled: bool,
    /// Entries kept in memory.
    pub memory_entries: usize,
    /// How often new entries are appended to the data directory.
    #[serde(
        deserialize_with = "values::duration",
        serialize_with = "values::serialize_duration"
    )]
    pub flush_interval: Duration,
    /// How long flushed log files are kept.
    #[serde(
        deserialize_with = "values::duration",
        serialize_with = "values::serialize_duration"
    )]
    pub retention: Duration,
    /// Bytes all log files may hold together (`"256MiB"`); the oldest
    /// days go first. The log also always leaves max(64 MiB, 5 %) of the
    /// data directory's file system free.
    #[serde(deserialize_with = "values::byte_size")]
    pub max_bytes: u64,
}

impl Default for QueryLogTuning {
    fn default() -> Self {
        Self {
            enabled: true,
            memory_entries: 10_000,
            flush_interval: (Duration::from_secs(10)),
            retention: (Duration::from_secs(7 * 86_400)),
            max_bytes: 256 << 20,
        }
    }
}

/// DNS policy: what is forwarded where, and what is blocked. Serializes
/// to the TOML it is read from, which is how it travels in a bundle.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Upstream resolvers: general ones, and `[/domain/]upstream` entries
    /// that take the names of their domains.
    pub upstreams: Vec<UpstreamEntry>,
    /// Domains with upstreams of their own, as tables.
    pub forward: Vec<ForwardTable>,
    /// Domains whose names never reach the general upstreams: only a
    /// forward zone takes them, else they are answered locally.
    pub local_domains: Vec<DomainSuffix>,
    /// How upstreams are chosen.
    pub strategy: Strategy,
    /// What a blocked name is answered with.
    pub blocked_response: BlockedResponse,
    /// TTL of blocked answers.
    #[serde(
        deserialize_with = "values::duration",
        serialize_with = "values::serialize_duration"
    )]
    pub blocked_ttl: Duration,
    /// Names never blocked by blocklists (`name` or `*.suffix`).
    pub allow: Vec<NameRule>,
    /// Names always blocked, over every allow rule (`name` or `*.suffix`).
    pub deny: Vec<NameRule>,
    /// Blocklist sources; a listed name blocks itself and every name below it.
    pub blocklists: Vec<BlocklistSource>,
    /// What a query gets when the policy plugin faults.
    pub fail_mode: FailMode,
    /// Names answered locally.
    pub local_records: Vec<LocalRecord>,
    /// Make PTR records from local A and AAAA records.
    pub local_ptr: bool,
    /// Policy plugins of the user's own (`[[policy.plugins]]`).
    pub plugins: Vec<PluginSpec>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            upstreams: ["udp://9.9.9.9:53", "udp://1.1.1.1:53"]
                .iter()
                .map(|url| url.parse().expect("default upstream parses"))
                .collect(),
            forward: Vec::new(),
            local_domains: forward::default_local_domains(),
            strategy: Strategy::Parallel,
            blocked_response: BlockedResponse::Null,
            blocked_ttl: (Duration::from_secs(60)),
            allow: Vec::new(),
            deny: Vec::new(),
            blocklists: Vec::new(),
            fail_mode: FailMode::Open,
            local_records: Vec::new(),
            local_ptr: true,
            plugins: Vec::new(),
        }
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file was read but a key is wrong.
    #[error("{origin}:{line}: key `{key}`: {reason}")]
    Invalid {
        /// The file (or `<embedded>`).
        origin: String,
        /// 1-based line of the offending key or value.
        line: usize,
        /// Dotted path of the key.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A rule spanning several keys is broken.
    #[error("{origin}: {reason}")]
    Inconsistent {
        /// The file (or `<embedded>`).
        origin: String,
        /// What is wrong.
        reason: String,
    },
}

impl Config {
    /// Reads and parses a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The embedded default configuration.
    pub fn embedded() -> Self {
        Self::parse(DEFAULT_TOML, "<embedded>").expect("embedded default config parses")
    }

    /// Parses TOML text; `origin` names the text in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let invalid =
            |span: Option<Range<usize>>, key: String, reason: String| ConfigError::Invalid {
                origin: origin.to_owned(),
                line: span.map_or(1, |span| line_of(text, span.start)),
                key,
                reason,
            };
        let deserializer = toml::de::Deserializer::parse(text)
            .map_err(|err| invalid(err.span(), String::new(), err.message().to_owned()))?;
        let config: Self = serde_path_to_error::deserialize(deserializer).map_err(|err| {
            let key = err.path().to_string();
            let inner = err.into_inner();
            invalid(inner.span(), key, inner.message().to_owned())
        })?;
        config.check().map_err(|reason| ConfigError::Inconsistent {
            origin: origin.to_owned(),
            reason,
        })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if self.instance.listen.is_empty() {
            return Err("key `instance.listen`: at least one address is needed".into());
        }
        self.check_https()?;
        if self.policy.general_upstreams().is_empty() {
            return Err(
                "key `policy.upstreams`: at least one general upstream (not `[/domain/]`) is needed"
                    .into(),
            );
        }
        self.policy.check_forward_zones()?;
        plugins::check_names(&self.policy.plugins)?;
        let cache = &self.tuning.cache;
        if cache.min_ttl > cache.max_ttl {
            return Err(format!(
                "key `tuning.cache.min_ttl`: {:?} is above max_ttl {:?}",
                cache.min_ttl, cache.max_ttl
            ));
        }
        if cache.max_entries.is_some() && cache.max_bytes.is_some() {
            return Err(
                "keys `tuning.cache.max_entries` and `max_bytes`: set one bound, not both".into(),
            );
        }
        if !(1..=MAX_THREADS).contains(&self.tuning.server.threads) {
            return Err(format!(
                "key `tuning.server.threads`: {} is not between 1 and {MAX_THREADS}",
                self.tuning.server.threads
            ));
        }
        if self.tuning.query_log.memory_entries == 0 && self.tuning.query_log.enabled {
            return Err("key `tuning.query_log.memory_entries`: must be above 0".into());
        }
        Ok(())
    }
}

impl Config {
    fn check_https(&self) -> Result<(), String> {
        let instance = &self.instance;
        if instance.https_cert.is_some() != instance.https_key.is_some() {
            return Err("keys `instance.https_cert` and `https_key`: set both or neither".into());
        }
        if instance.https.is_none() {
            for (key, set) in [
                ("http_redirect", instance.http_redirect.is_some()),
                ("https_cert", instance.https_cert.is_some()),
            ] {
                if set {
                    return Err(format!("key `instance.{key}`: needs `instance.https`"));
                }
            }
        }
        Ok(())
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&byte| byte == b'\n')
        .count()
        + 1
}

impl Config {
    /// Replaces `[policy]` and `[tuning]` by the sections saved through the
    /// control API in the data directory, where there are such files.
    pub(crate) fn with_saved_sections(mut self) -> Result<Self, ConfigError> {
        let dir = &self.instance.data_dir;
        if let Some(saved) = read_saved(&dir.join(crate::store::files::POLICY_SETTINGS))? {
            self.policy = saved.policy;
        }
        if let Some(saved) = read_saved(&dir.join(crate::store::files::TUNING_SETTINGS))? {
            self.tuning = saved.tuning;
        }
        self.check().map_err(|reason| ConfigError::Inconsistent {
            origin: format!("{} with saved sections", dir.display()),
            reason,
        })?;
        Ok(self)
    }
}

fn read_saved(path: &Path) -> Result<Option<Config>, ConfigError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Config::parse(&text, &path.display().to_string()).map(Some),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(ConfigError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

impl Tuning {
    /// The tuning as a `[tuning]` TOML table, read back by `Config::parse`.
    pub(crate) fn to_toml(&self) -> String {
        #[derive(Serialize)]
        struct Wrapper<'a> {
            tuning: &'a Tuning,
        }
        toml::to_string(&Wrapper { tuning: self })
            .unwrap_or_else(|err| unreachable!("every tuning value has a TOML form: {err}"))
    }
}

impl Policy {
    /// The upstreams asked for names no forward zone or local domain takes.
    pub(crate) fn general_upstreams(&self) -> Vec<UpstreamUrl> {
        self.upstreams
            .iter()
            .filter_map(|entry| match entry {
                UpstreamEntry::General(url) => Some(url.clone()),
                UpstreamEntry::Forward(..) => None,
            })
            .collect()
    }

    /// The forward zones: the `[/domain/]` entries of `upstreams`, then
    /// the `[[policy.forward]]` tables.
    pub(crate) fn forward_zones(&self) -> impl Iterator<Item = &ForwardZone> {
        let entries = self.upstreams.iter().filter_map(|entry| match entry {
            UpstreamEntry::Forward(zone, _) => Some(zone),
            UpstreamEntry::General(_) => None,
        });
        entries.chain(self.forward.iter().map(|table| &table.0))
    }

    /// A domain may be forwarded once.
    fn check_forward_zones(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for domain in self.forward_zones().flat_map(|zone| &zone.domains) {
            if !seen.insert(domain) {
                return Err(format!(
                    "keys `policy.upstreams` and `policy.forward`: domain `{domain}` is forwarded twice"
                ));
            }
        }
        Ok(())
    }

    /// The policy as a `[policy]` TOML table: the form it travels in inside
    /// a bundle, read back by `Policy::from_toml`.
    pub(crate) fn to_toml(&self) -> String {
        #[derive(Serialize)]
        struct Wrapper<'a> {
            policy: &'a Policy,
        }
        toml::to_string(&Wrapper { policy: self })
            .unwrap_or_else(|err| unreachable!("every policy value has a TOML form: {err}"))
    }

    /// Reads a policy written by `to_toml`, with the checks a configuration
    /// file gets.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ConfigError> {
        Config::parse(text, origin).map(|config| config.policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_survives_its_toml_form() {
        let text = r#"[policy]
upstreams = ["udp://127.0.0.1:5353", "tls://[::1]:853", "https://dns.example/dns-query"]
strategy = "fastest"
blocked_response = ["0.0.0.0", "::"]
blocked_ttl = "90s"
allow = ["ok.example", "*.fine.example"]
deny = ["*.bad.example"]
fail_mode = "closed"
local_ptr = false
[[policy.blocklists]]
source = "/lists/hosts.txt"
refresh = "6h"
[[policy.blocklists]]
source = "https://lists.example/ads.txt"
[[policy.local_records]]
name = "*.lan"
type = "A"
value = "192.168.1.2"
ttl = 60
"#;
        let policy = Config::parse(text, "x.toml").unwrap().policy;
        let written = policy.to_toml();
        assert_eq!(
            Policy::from_toml(&written, "bundle").unwrap(),
            policy,
            "{written}"
        );
        let default = Policy::default();
        assert_eq!(
            Policy::from_toml(&default.to_toml(), "bundle").unwrap(),
            default
        );
    }

    #[test]
    fn tuning_survives_its_toml_and_json_forms() {
        let text = r#"[tuning.cache]
max_bytes = "32MiB"
min_ttl = "30s"
refresh_before = "20%"
stale_answer_timeout = "1s 500ms"
[tuning.query_log]
retention = "3days"
"#;
        let tuning = Config::parse(text, "x.toml").unwrap().tuning;
        let written = tuning.to_toml();
        assert_eq!(
            Config::parse(&written, "saved").unwrap().tuning,
            tuning,
            "{written}"
        );
        let json = serde_json::to_string(&tuning).unwrap();
        assert_eq!(serde_json::from_str::<Tuning>(&json).unwrap(), tuning);
        assert_eq!(tuning.cache.max_bytes, Some(32 << 20));
    }

    #[test]
    fn saved_sections_replace_the_files() {
        let dir = std::env::temp_dir().join(format!("moat-saved-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let base = Config::parse(
            &format!("[instance]\ndata_dir = {:?}\n", dir.display().to_string()),
            "x.toml",
        )
        .unwrap();
        assert_eq!(base.clone().with_saved_sections().unwrap(), base);
        let saved = "[tuning.cache]\nmin_ttl = \"5m\"\nmax_ttl = \"1m\"\n";
        std::fs::write(dir.join(crate::store::files::TUNING_SETTINGS), saved).unwrap();
        let err = base.clone().with_saved_sections().unwrap_err().to_string();
        assert!(err.contains(crate::store::files::TUNING_SETTINGS), "{err}");
        assert!(err.contains("min_ttl"), "{err}");
        let saved = "[policy]\ndeny = [\"ads.example\"]\n";
        std::fs::remove_file(dir.join(crate::store::files::TUNING_SETTINGS)).unwrap();
        std::fs::write(dir.join(crate::store::files::POLICY_SETTINGS), saved).unwrap();
        let config = base.with_saved_sections().unwrap();
        assert_eq!(config.policy.deny.len(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn embedded_file_matches_defaults() {
        assert_eq!(Config::embedded(), Config::default());
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = "[instance]\nname = \"a\"\n\n[tuning.cache]\nmax_ttl = \"1h\"\nbogus = 3\n";
        let err = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(err.starts_with("x.toml:6: key `tuning.cache"), "{err}");
        assert!(err.contains("bogus"), "{err}");
    }

    #[test]
    fn a_name_that_is_no_dns_label_is_refused_naming_the_key() {
        let text = "[instance]\nname = \"living room\"\n";
        let err = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(err.starts_with("x.toml:2: key `instance.name`"), "{err}");
        assert!(err.contains("living room"), "{err}");
        let config = Config::parse("[instance]\nname = \"living-room\"\n", "x.toml").unwrap();
        assert_eq!(config.instance.name, "living-room");
    }

    #[test]
    fn bad_value_names_line_key_and_reason() {
        let text = "[policy]\nupstreams = [\"udp://1.2.3.4\", \"gopher://x\"]\n";
        let err = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(err.starts_with("x.toml:2: key `policy.upstreams"), "{err}");
        assert!(err.contains("gopher"), "{err}");
        let text = "[policy]\nupstreams = [\"tls://1.1.1.1?trusted=maybe\"]\n";
        let err = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(err.starts_with("x.toml:2: key `policy.upstreams"), "{err}");
        assert!(err.contains("trusted=maybe"), "{err}");
    }

    #[test]
    fn forward_zones_survive_the_toml_form_and_bad_ones_name_their_key() {
        let text = r#"[policy]
upstreams = ["udp://192.0.2.53", "[/lan/168.192.in-addr.arpa/]192.168.1.1", "[/public.lan/]#"]
local_domains = ["lan", "corp.example"]
[[policy.forward]]
domain = "fritz.box"
upstreams = ["udp://192.168.178.1"]
"#;
        let policy = Config::parse(text, "x.toml").unwrap().policy;
        assert_eq!(policy.general_upstreams().len(), 1);
        assert_eq!(policy.forward_zones().count(), 3);
        let written = policy.to_toml();
        assert_eq!(
            Policy::from_toml(&written, "bundle").unwrap(),
            policy,
            "{written}"
        );
        for (bad, key, says) in [
            (
                "upstreams = [\"udp://1.2.3.4\", \"[/lan]1.2.3.4\"]",
                "policy.upstreams",
                "/]",
            ),
            (
                "upstreams = [\"[/lan/]1.2.3.4\"]",
                "policy.upstreams",
                "general upstream",
            ),
            (
                "local_domains = [\"bad name\"]",
                "policy.local_domains",
                "bad name",
            ),
            (
                "[[policy.forward]]\ndomain = \"bad name\"\nupstreams = [\"udp://1.2.3.4\"]",
                "policy.forward",
                "bad name",
            ),
            (
                "upstreams = [\"udp://1.2.3.4\", \"[/lan/]1.2.3.4\"]\n\
                 [[policy.forward]]\ndomain = \"lan\"\nupstreams = [\"udp://1.2.3.5\"]",
                "policy.forward",
                "forwarded twice",
            ),
        ] {
            let err = Config::parse(&format!("[policy]\n{bad}\n"), "x.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn wrong_type_is_refused() {
        let text = "[tuning.cache]\nrefresh_hot_hits = \"many\"\n";
        let err = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(
            err.starts_with("x.toml:2: key `tuning.cache.refresh_hot_hits`"),
            "{err}"
        );
    }

    #[test]
    fn both_cache_bounds_are_refused() {
        let text = "[tuning.cache]\nmax_entries = 10\nmax_bytes = \"1MiB\"\n";
        assert!(Config::parse(text, "x.toml").is_err());
    }

    #[test]
    fn udp_threads_outside_one_to_sixty_four_are_refused_naming_the_key() {
        for threads in [0, 65] {
            let text = format!("[tuning.server]\nthreads = {threads}\n");
            let err = Config::parse(&text, "x.toml").unwrap_err().to_string();
            assert!(err.contains("tuning.server.threads"), "{err}");
        }
        let config = Config::parse("[tuning.server]\nthreads = 64\n", "x.toml").unwrap();
        assert_eq!(config.tuning.server.threads, 64);
    }

    #[test]
    fn min_above_max_ttl_is_refused() {
        let text = "[tuning.cache]\nmin_ttl = \"2h\"\nmax_ttl = \"1h\"\n";
        let err = Config::parse(text, "x.toml").unwrap_err().to_string();
        assert!(err.contains("min_ttl"), "{err}");
    }
}

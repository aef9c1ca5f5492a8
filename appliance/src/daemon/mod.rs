//! The running appliance: builds every subsystem from the configuration,
//! binds the sockets, and applies reloads, pauses and shutdown.

mod fleet;
mod policy;
mod settings;

pub use fleet::{FleetError, PrimaryStatus, join_offline};
pub use settings::{PolicyView, SyncedFrom};

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::bundle::{Bundle, BundleError, BundleStore, PublicKey, SigningKey, VerifiedBundle};
use crate::clock;
use crate::compile::{CompileError, record_download, store_download};
use crate::config::{BlocklistSource, Config, ConfigError, SourceLocation};
use crate::dns::cache::Cache;
use crate::dns::handler::{Live, QueryHandler};
use crate::dns::listen::{ListenError, Listeners};
use crate::dns::upstream::{UpstreamError, UpstreamStatus, Upstreams};
use crate::policy::{Chain, Pause, PauseState, PluginError};
use crate::stats::QueryLog;
use crate::store::{Access, DataDir, StoreError, files};
use crate::sync::pairing::PrimaryPin;
use policy::OpenedBundle;

/// Where the configuration comes from, so a reload can read it again.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// The embedded default.
    Embedded,
    /// A TOML file.
    File(PathBuf),
}

impl ConfigSource {
    /// Reads and parses the configuration, with the sections saved through
    /// the control API.
    pub fn load(&self) -> Result<Config, ConfigError> {
        match self {
            Self::Embedded => Ok(Config::embedded()),
            Self::File(path) => Config::load(path),
        }?
        .with_saved_sections()
    }
}

/// Why the daemon could not start or apply a change.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A listener could not be bound.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// An upstream could not be set up.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The upstream CA file is unusable.
    #[error("instance.upstream_ca_file {path}: {reason}")]
    UpstreamCa {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The policy could not be compiled.
    #[error(transparent)]
    Compile(#[from] CompileError),
    /// The policy module could not be loaded.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// A policy bundle is unusable.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// This appliance is a replica: its policy comes from its primary.
    #[error(
        "policy is synced from primary `{primary}` ({address}); change it there (tuning and instance settings stay local)"
    )]
    SyncedPolicy {
        /// The primary's name.
        primary: String,
        /// Where it is.
        address: String,
    },
    /// Pairing or sync failed.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// Another I/O failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What `status` reports.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Status {
    /// Appliance name.
    pub name: String,
    /// Moat version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: u64,
    /// Blocking pause state.
    pub pause: PauseState,
    /// Bound UDP addresses.
    #[schema(value_type = Vec<String>)]
    pub udp: Vec<SocketAddr>,
    /// Bound TCP addresses.
    #[schema(value_type = Vec<String>)]
    pub tcp: Vec<SocketAddr>,
    /// Answers in the cache.
    pub cache_entries: usize,
    /// Upstream health.
    pub upstreams: Vec<UpstreamStatus>,
    /// Times the configuration was applied since start.
    pub config_generation: u64,
    /// Query log entries dropped because the log could not keep up.
    pub query_log_lost: u64,
    /// Policy plugin faults since the policy in force was loaded.
    pub policy_faults: u64,
    /// `primary` or `replica`.
    pub role: String,
    /// Version of the policy bundle in force.
    pub bundle_version: Option<u64>,
    /// When that bundle expires, Unix seconds.
    pub bundle_expires_unix: Option<u64>,
    /// On a replica: its primary and the sync link's health.
    pub primary: Option<PrimaryStatus>,
    /// On the primary: its replicas.
    pub replicas: Vec<crate::fleet::ReplicaView>,
}

/// The configuration and policy in force.
#[derive(Debug)]
struct Current {
    config: Config,
    generation: u64,
    role: Role,
    bundle: Option<VerifiedBundle>,
    opened: Arc<OpenedBundle>,
}

/// What this appliance is in its fleet.
#[derive(Debug, Clone)]
pub enum Role {
    /// Owns the policy and signs its bundles with this key.
    Primary(Arc<SigningKey>),
    /// Runs the bundles of the primary pinned at pairing.
    Replica(PrimaryPin),
}

impl Role {
    /// A replica when a primary is pinned in `data`, otherwise a primary.
    fn load(data: &DataDir) -> Result<Self, DaemonError> {
        match data.read_json::<PrimaryPin>(files::PRIMARY)? {
            Some(pin) => Ok(Self::Replica(pin)),
            None => Ok(Self::Primary(Arc::new(SigningKey::load_or_create(data)?))),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Primary(_) => "primary",
            Self::Replica(_) => "replica",
        }
    }
}

/// The bundle `role` runs with `config`, opened. A replica without a
/// usable bundle from its primary yet serves without blocking, with its
/// own upstreams, until the first one arrives.
fn policy_for(
    config: &Config,
    data: &DataDir,
    role: &Role,
    starting: bool,
) -> Result<(Option<VerifiedBundle>, OpenedBundle), DaemonError> {
    let now = clock::unix_now();
    let bundle = match role {
        Role::Primary(key) => Some(policy::seal_for_primary(config, data, key, starting, now)?),
        Role::Replica(pin) => policy::stored(data, &PublicKey(pin.signing_key), now)
            .inspect_err(|err| tracing::error!(error = %err, "stored bundle unusable"))
            .ok()
            .flatten(),
    };
    match bundle {
        Some(bundle) => {
            let opened = policy::open(&bundle)?;
            Ok((Some(bundle), opened))
        }
        None => {
            tracing::warn!(
                "no bundle from the primary yet; serving without blocking until it arrives"
            );
            let opened = OpenedBundle {
                policy: config.policy.clone(),
                plugins: Arc::new(Chain(Vec::new())),
            };
            Ok((None, opened))
        }
    }
}

/// A running appliance.
#[derive(Debug)]
pub struct Daemon {
    source: ConfigSource,
    current: Mutex<Current>,
    fleet: fleet::FleetLinks,
    handler: Arc<QueryHandler>,
    data: DataDir,
    started: Instant,
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
    shutdown: Arc<AtomicBool>,
    query_log_loss_reported: AtomicBool,
    /// Held while a settings change is saved and applied.
    settings_writer: Mutex<()>,
}

impl Daemon {
    /// Loads the configuration, binds every socket and starts serving.
    /// Must run inside a multi-threaded tokio runtime.
    pub fn start(source: ConfigSource) -> Result<Arc<Self>, DaemonError> {
        let config = source.load()?;
        let data = DataDir::open(&config.instance.data_dir)?;
        let role = Role::load(&data)?;
        let (bundle, opened) = policy_for(&config, &data, &role, true)?;
        let pause = match data.read_json::<PauseState>(files::PAUSE) {
            Ok(state) => state.unwrap_or_default(),
            Err(err) => {
                tracing::error!(error = %err, "pause state unreadable; blocking stays on");
                PauseState::Blocking
            }
        };
        let handler = QueryHandler::new(
            build_live(&config, &opened)?,
            Cache::new(config.tuning.cache.clone()),
            Pause::new(pause),
            QueryLog::new(config.tuning.query_log.memory_entries),
        );
        let listeners = Listeners::bind(&config.instance.listen)?;
        let (udp, tcp) = (listeners.udp_addrs(), listeners.tcp_addrs());
        let shutdown = Arc::new(AtomicBool::new(false));
        listeners.serve(&handler, &config.tuning.server, &shutdown)?;
        tracing::info!(name = %config.instance.name, ?udp, ?tcp, "serving DNS");
        let fleet = fleet::FleetLinks::new(&config, &data)?;
        let daemon = Arc::new(Self {
            source,
            current: Mutex::new(Current {
                config,
                generation: 1,
                role,
                bundle,
                opened: Arc::new(opened),
            }),
            fleet,
            handler,
            data,
            started: clock::now(),
            udp,
            tcp,
            shutdown,
            query_log_loss_reported: AtomicBool::new(false),
            settings_writer: Mutex::new(()),
        });
        tokio::spawn(Arc::clone(&daemon).flush_query_log_periodically());
        tokio::spawn(Arc::clone(&daemon).download_lists_periodically());
        daemon.start_sync()?;
        tokio::spawn(Arc::clone(&daemon).reseal_periodically());
        Ok(daemon)
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.current.lock().config.clone()
    }

    /// The data directory.
    pub fn data(&self) -> &DataDir {
        &self.data
    }

    /// The query path.
    pub fn handler(&self) -> &Arc<QueryHandler> {
        &self.handler
    }

    /// Re-reads the configuration and applies it without dropping a query;
    /// an invalid configuration is refused and the running one stays.
    pub fn reload(&self) -> Result<u64, DaemonError> {
        let new = self.source.load()?;
        let mut current = self.current.lock();
        let (bundle, opened) = match &current.role {
            Role::Primary(_) => {
                let (bundle, opened) = policy_for(&new, &self.data, &current.role, false)?;
                (bundle, Arc::new(opened))
            }
            Role::Replica(pin) if new.policy != current.config.policy => {
                return Err(DaemonError::SyncedPolicy {
                    primary: pin.name.to_string(),
                    address: pin.address.clone(),
                });
            }
            Role::Replica(_) => (current.bundle.clone(), Arc::clone(&current.opened)),
        };
        let live = build_live(&new, &opened)?;
        if new.instance != current.config.instance {
            tracing::warn!("changes to [instance] take effect at the next start");
        }
        if new.tuning.query_log.memory_entries != current.config.tuning.query_log.memory_entries {
            tracing::warn!("tuning.query_log.memory_entries takes effect at the next start");
        }
        self.handler.cache().retune(new.tuning.cache.clone());
        self.handler.replace_live(live);
        current.generation += 1;
        current.config = new;
        current.opened = opened;
        if let Some(bundle) = &bundle
            && matches!(current.role, Role::Primary(_))
        {
            self.fleet.publish(bundle);
        }
        current.bundle = bundle;
        tracing::info!(generation = current.generation, "configuration reloaded");
        Ok(current.generation)
    }

    /// Applies a bundle sent by the primary: verified with the pinned key,
    /// newer than the one in force, then stored and swapped in.
    pub fn apply_bundle(&self, bytes: &[u8]) -> Result<u64, DaemonError> {
        let mut current = self.current.lock();
        let Role::Replica(pin) = current.role.clone() else {
            return Err(DaemonError::Bundle(BundleError::Malformed(
                "a primary takes no bundles".into(),
            )));
        };
        let running = current.bundle.as_ref().map(VerifiedBundle::version);
        let bundle = Bundle::parse(bytes)?.verify(
            &PublicKey(pin.signing_key),
            running,
            clock::unix_now(),
        )?;
        let opened = Arc::new(policy::open(&bundle)?);
        let live = build_live(&current.config, &opened)?;
        BundleStore::new(self.data.clone()).save(&bundle)?;
        self.handler.replace_live(live);
        let version = bundle.version();
        current.bundle = Some(bundle);
        current.opened = opened;
        tracing::info!(version, primary = %pin.name, "applied a bundle from the primary");
        Ok(version)
    }

    /// On the primary, seals a new version of the bundle before the one in
    /// force expires, so replicas never freeze on an expired policy.
    async fn reseal_periodically(self: Arc<Self>) {
        const CHECK_EVERY: Duration = Duration::from_secs(3600);
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            let due = {
                let current = self.current.lock();
                matches!(current.role, Role::Primary(_))
                    && current.bundle.as_ref().is_some_and(|bundle| {
                        bundle.expires_unix() < clock::unix_now() + policy::RESEAL_BEFORE.as_secs()
                    })
            };
            if due {
                let daemon = Arc::clone(&self);
                match tokio::task::spawn_blocking(move || daemon.reload()).await {
                    Ok(Ok(_)) => tracing::info!("bundle re-sealed before expiry"),
                    Ok(Err(err)) => tracing::error!(error = %err, "cannot re-seal the bundle"),
                    Err(err) => tracing::error!(error = %err, "re-seal task failed"),
                }
            }
        }
    }

    /// The version of the bundle in force.
    pub fn bundle_version(&self) -> Option<u64> {
        self.current
            .lock()
            .bundle
            .as_ref()
            .map(VerifiedBundle::version)
    }

    /// Pauses blocking, for `duration` or until resumed; kept across restarts.
    pub fn pause(&self, duration: Option<Duration>) -> Result<PauseState, DaemonError> {
        self.set_pause(PauseState::for_duration(duration))
    }

    /// Resumes blocking.
    pub fn resume(&self) -> Result<PauseState, DaemonError> {
        self.set_pause(PauseState::Blocking)
    }

    fn set_pause(&self, state: PauseState) -> Result<PauseState, DaemonError> {
        self.data.write_json(files::PAUSE, &state, Access::Public)?;
        self.handler.pause().set(state);
        tracing::info!(?state, "blocking pause changed");
        Ok(state)
    }

    /// A status report.
    pub fn status(&self) -> Status {
        let current = self.current.lock();
        let (config, generation) = (current.config.clone(), current.generation);
        let bundle = current.bundle.as_ref();
        let (bundle_version, bundle_expires_unix) = (
            bundle.map(VerifiedBundle::version),
            bundle.map(VerifiedBundle::expires_unix),
        );
        let role = current.role.clone();
        drop(current);
        Status {
            role: role.name().into(),
            bundle_version,
            bundle_expires_unix,
            primary: match &role {
                Role::Replica(pin) => Some(self.fleet.primary_status(pin)),
                Role::Primary(_) => None,
            },
            replicas: self.replicas(),
            name: config.instance.name.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: clock::now()
                .saturating_duration_since(self.started)
                .as_secs(),
            pause: self.handler.pause().state(),
            udp: self.udp.clone(),
            tcp: self.tcp.clone(),
            cache_entries: self.handler.cache().len(),
            upstreams: self.handler.live().upstreams.status(),
            config_generation: generation,
            query_log_lost: self.handler.query_log().lost(),
            policy_faults: self.handler.live().policy.faults(),
        }
    }

    /// On the primary: its replicas, their status and their pushed stats.
    pub fn replicas(&self) -> Vec<crate::fleet::ReplicaView> {
        self.fleet.replicas()
    }

    /// Stops the listeners and writes the query log out.
    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
        self.fleet.close();
        self.flush_query_log();
    }

    fn flush_query_log(&self) {
        let retention = self.current.lock().config.tuning.query_log.retention;
        let dir = self.data.path(files::QUERY_LOG);
        match self
            .handler
            .query_log()
            .flush(&dir, clock::unix_now_ms(), retention)
        {
            Ok(report)
                if report.lost > 0
                    && !self.query_log_loss_reported.swap(true, Ordering::Relaxed) =>
            {
                tracing::warn!(
                    lost = report.lost,
                    "query log cannot keep up; entries it drops are counted in status (reported once)"
                );
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(error = %err, dir = %dir.display(), "query log flush failed")
            }
        }
    }

    /// Flushes the query log every `flush_interval`. Under a flood the
    /// ring overwrites what it cannot hold; those entries are counted, so
    /// the log costs bounded CPU and memory whatever the query rate.
    async fn flush_query_log_periodically(self: Arc<Self>) {
        loop {
            let interval = self.current.lock().config.tuning.query_log.flush_interval;
            let interval = interval.max(Duration::from_millis(100));
            tokio::time::sleep(interval).await;
            if self.shutdown.load(Ordering::Relaxed) {
                return;
            }
            let daemon = Arc::clone(&self);
            let _ = tokio::task::spawn_blocking(move || daemon.flush_query_log()).await;
        }
    }
}

/// Largest blocklist downloaded.
const MAX_LIST_BYTES: usize = 256 << 20;
/// How long one download may take.
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);

impl Daemon {
    /// Downloads every URL blocklist now and then at its refresh interval;
    /// a changed list is kept and the policy recompiled. A failed download
    /// keeps the last good copy.
    async fn download_lists_periodically(self: Arc<Self>) {
        let mut client = None;
        loop {
            let config = self.config();
            let sources: Vec<_> = config
                .policy
                .blocklists
                .iter()
                .filter(|source| matches!(source.source, SourceLocation::Url(_)))
                .collect();
            let wait = sources
                .iter()
                .map(|source| source.refresh)
                .min()
                .unwrap_or(Duration::from_secs(60));
            if client.is_none() && !sources.is_empty() {
                client = download_client(&config)
                    .inspect_err(
                        |err| tracing::warn!(error = %err, "no HTTP client for blocklists"),
                    )
                    .ok();
            }
            let mut changed = false;
            for source in sources {
                let Some(client) = &client else { break };
                changed |= self.download(client, source).await;
            }
            if changed {
                let daemon = Arc::clone(&self);
                match tokio::task::spawn_blocking(move || daemon.reload()).await {
                    Ok(Ok(generation)) => {
                        tracing::info!(generation, "policy rebuilt from downloaded lists")
                    }
                    Ok(Err(err)) => tracing::error!(error = %err, "downloaded lists not applied"),
                    Err(err) => tracing::error!(error = %err, "reload task failed"),
                }
            }
            if self.shutdown.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(wait.max(Duration::from_millis(500))).await;
        }
    }

    /// Downloads one list; true when its content changed.
    async fn download(&self, client: &reqwest::Client, source: &BlocklistSource) -> bool {
        let SourceLocation::Url(url) = &source.source else {
            return false;
        };
        let fetched = async {
            let response = client
                .get(url)
                .timeout(DOWNLOAD_TIMEOUT)
                .send()
                .await?
                .error_for_status()?;
            if response
                .content_length()
                .is_some_and(|len| len > MAX_LIST_BYTES as u64)
            {
                return Ok(None);
            }
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((body.len() <= MAX_LIST_BYTES).then_some(body))
        };
        let (changed, outcome) = match fetched.await {
            Ok(Some(body)) => match store_download(source, &self.data, &body) {
                Ok(changed) => (changed, Ok(())),
                Err(err) => {
                    tracing::warn!(%url, error = %err, "cannot keep the downloaded list");
                    (false, Err(format!("cannot keep the download: {err}")))
                }
            },
            Ok(None) => {
                tracing::warn!(%url, limit = MAX_LIST_BYTES, "list too large; keeping the last good copy");
                (false, Err(format!("larger than {MAX_LIST_BYTES} bytes")))
            }
            Err(err) => {
                tracing::warn!(%url, error = %err, "list download failed; keeping the last good copy");
                (false, Err(format!("download failed: {err}")))
            }
        };
        record_download(&self.data, url, outcome, clock::unix_now());
        changed
    }
}

/// The client lists are downloaded with: the same trust as DoH upstreams.
fn download_client(config: &Config) -> Result<reqwest::Client, DaemonError> {
    let tls = upstream_tls(config)?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|err| DaemonError::Io(std::io::Error::other(err)))
}

/// Builds the reloadable part of the query path: policy from a bundle,
/// tuning and instance settings from the local configuration.
fn build_live(config: &Config, bundle: &OpenedBundle) -> Result<Live, DaemonError> {
    static POLICY_VERSIONS: AtomicU64 = AtomicU64::new(1);
    let tls = Arc::new(upstream_tls(config)?);
    let policy = &bundle.policy;
    let plugins = Arc::clone(&bundle.plugins);
    let policy_stamp = (!plugins.reads_client())
        .then(|| NonZeroU64::new(POLICY_VERSIONS.fetch_add(1, Ordering::Relaxed)))
        .flatten();
    Ok(Live {
        policy: plugins,
        fail_mode: policy.fail_mode,
        policy_stamp,
        upstreams: Upstreams::new(
            &policy.upstreams,
            policy.strategy,
            config.tuning.upstream.clone(),
            &tls,
        )?,
        blocked_response: policy.blocked_response.clone(),
        blocked_ttl: u32::try_from(policy.blocked_ttl.as_secs()).unwrap_or(u32::MAX),
        udp_max_payload: config.tuning.server.udp_max_payload,
        query_log: config.tuning.query_log.enabled,
    })
}

/// TLS settings for DoT and DoH upstreams: the public web roots plus any
/// CA in `instance.upstream_ca_file`.
fn upstream_tls(config: &Config) -> Result<rustls::ClientConfig, DaemonError> {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &config.instance.upstream_ca_file {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let ca_error = |reason: String| DaemonError::UpstreamCa {
            path: path.clone(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|err| ca_error(err.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| ca_error(err.to_string()))?;
        if certs.is_empty() {
            return Err(ca_error("no PEM certificate in it".into()));
        }
        for cert in certs {
            roots.add(cert).map_err(|err| ca_error(err.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| DaemonError::UpstreamCa {
            path: PathBuf::new(),
            reason: err.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

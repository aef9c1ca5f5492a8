//! The running appliance: builds every subsystem from the configuration,
//! binds the sockets, and applies reloads, pauses and shutdown.

use std::net::SocketAddr;
use std::num::NonZeroU64;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;

use crate::clock;
use crate::compile::{CompileError, compile_policy, inputs_digest, store_download};
use crate::config::{BlocklistSource, Config, ConfigError, SourceLocation};
use crate::dns::cache::Cache;
use crate::dns::handler::{Live, QueryHandler};
use crate::dns::listen::{ListenError, Listeners};
use crate::dns::upstream::{UpstreamError, UpstreamStatus, Upstreams};
use crate::policy::{Chain, Pause, PauseState, PluginError, Policy, WasmPolicy};
use crate::stats::QueryLog;
use crate::store::{Access, DataDir, StoreError, files};

/// Where the configuration comes from, so a reload can read it again.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// The embedded default.
    Embedded,
    /// A TOML file.
    File(PathBuf),
}

impl ConfigSource {
    /// Reads and parses the configuration.
    pub fn load(&self) -> Result<Config, ConfigError> {
        match self {
            Self::Embedded => Ok(Config::embedded()),
            Self::File(path) => Config::load(path),
        }
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
    /// Another I/O failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What `status` reports.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
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
    pub udp: Vec<SocketAddr>,
    /// Bound TCP addresses.
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
}

/// A running appliance.
#[derive(Debug)]
pub struct Daemon {
    source: ConfigSource,
    config: Mutex<(Config, u64)>,
    handler: Arc<QueryHandler>,
    data: DataDir,
    started: Instant,
    udp: Vec<SocketAddr>,
    tcp: Vec<SocketAddr>,
    shutdown: Arc<AtomicBool>,
    query_log_loss_reported: AtomicBool,
}

impl Daemon {
    /// Loads the configuration, binds every socket and starts serving.
    /// Must run inside a multi-threaded tokio runtime.
    pub fn start(source: ConfigSource) -> Result<Arc<Self>, DaemonError> {
        let config = source.load()?;
        let data = DataDir::open(&config.instance.data_dir)?;
        let pause = match data.read_json::<PauseState>(files::PAUSE) {
            Ok(state) => state.unwrap_or_default(),
            Err(err) => {
                tracing::error!(error = %err, "pause state unreadable; blocking stays on");
                PauseState::Blocking
            }
        };
        let handler = QueryHandler::new(
            build_live(&config, &data, true)?,
            Cache::new(config.tuning.cache.clone()),
            Pause::new(pause),
            QueryLog::new(config.tuning.query_log.memory_entries),
        );
        let listeners = Listeners::bind(&config.instance.listen)?;
        let (udp, tcp) = (listeners.udp_addrs(), listeners.tcp_addrs());
        let shutdown = Arc::new(AtomicBool::new(false));
        listeners.serve(&handler, &config.tuning.server, &shutdown)?;
        tracing::info!(name = %config.instance.name, ?udp, ?tcp, "serving DNS");
        let daemon = Arc::new(Self {
            source,
            config: Mutex::new((config, 1)),
            handler,
            data,
            started: clock::now(),
            udp,
            tcp,
            shutdown,
            query_log_loss_reported: AtomicBool::new(false),
        });
        tokio::spawn(Arc::clone(&daemon).flush_query_log_periodically());
        tokio::spawn(Arc::clone(&daemon).download_lists_periodically());
        Ok(daemon)
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.config.lock().0.clone()
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
        let live = build_live(&new, &self.data, false)?;
        let mut current = self.config.lock();
        if new.instance != current.0.instance {
            tracing::warn!("changes to [instance] take effect at the next start");
        }
        if new.tuning.query_log.memory_entries != current.0.tuning.query_log.memory_entries {
            tracing::warn!("tuning.query_log.memory_entries takes effect at the next start");
        }
        self.handler.cache().retune(new.tuning.cache.clone());
        self.handler.replace_live(live);
        let generation = current.1 + 1;
        *current = (new, generation);
        tracing::info!(generation, "configuration reloaded");
        Ok(generation)
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
        let (config, generation) = self.config.lock().clone();
        Status {
            name: config.instance.name,
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

    /// Stops the listeners and writes the query log out.
    pub fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Relaxed);
        self.flush_query_log();
    }

    fn flush_query_log(&self) {
        let retention = self.config.lock().0.tuning.query_log.retention;
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
            let interval = self.config.lock().0.tuning.query_log.flush_interval;
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
        match fetched.await {
            Ok(Some(body)) => match store_download(source, &self.data, &body) {
                Ok(changed) => changed,
                Err(err) => {
                    tracing::warn!(%url, error = %err, "cannot keep the downloaded list");
                    false
                }
            },
            Ok(None) => {
                tracing::warn!(%url, limit = MAX_LIST_BYTES, "list too large; keeping the last good copy");
                false
            }
            Err(err) => {
                tracing::warn!(%url, error = %err, "list download failed; keeping the last good copy");
                false
            }
        }
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

/// Builds the reloadable part of the query path from a configuration.
fn build_live(config: &Config, data: &DataDir, starting: bool) -> Result<Live, DaemonError> {
    static POLICY_VERSIONS: AtomicU64 = AtomicU64::new(1);
    let tls = Arc::new(upstream_tls(config)?);
    let policy = &config.policy;
    let plugins = build_policy(config, data, starting)?;
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

/// The policy in force for `config`: local records, then the blocklist.
fn build_policy(
    config: &Config,
    data: &DataDir,
    starting: bool,
) -> Result<Arc<dyn Policy>, DaemonError> {
    let (local_records, blocklist) = policy_modules(config, data, starting)?;
    Ok(Arc::new(Chain(vec![
        WasmPolicy::new(&local_records)?,
        WasmPolicy::new(&blocklist)?,
    ])))
}

/// The policy modules for `config`: the persisted ones when they were
/// compiled from the same inputs, otherwise freshly compiled and persisted.
/// At start, a policy that cannot be compiled falls back to the persisted
/// modules, so a restart never serves without policy.
fn policy_modules(
    config: &Config,
    data: &DataDir,
    starting: bool,
) -> Result<(Vec<u8>, Vec<u8>), DaemonError> {
    let digest = inputs_digest(&config.policy, data);
    if data.read(files::POLICY_INPUTS)?.as_deref() == Some(&digest[..])
        && let Some(modules) = persisted_modules(data)?
    {
        tracing::info!("policy inputs unchanged; using the persisted modules");
        return Ok(modules);
    }
    match compile_policy(&config.policy, data) {
        Ok(compiled) => {
            tracing::info!(summary = ?compiled.summary, sources = ?compiled.sources, "policy compiled");
            // The digest goes last, so modules half-written by a crash are never taken as current.
            data.write(files::POLICY_INPUTS, b"", Access::Public)?;
            data.write(
                files::LOCAL_RECORDS_MODULE,
                &compiled.local_records,
                Access::Public,
            )?;
            data.write(files::BLOCKLIST_MODULE, &compiled.blocklist, Access::Public)?;
            data.write(files::POLICY_INPUTS, &digest, Access::Public)?;
            Ok((compiled.local_records, compiled.blocklist))
        }
        Err(err) if starting => {
            let Some(modules) = persisted_modules(data)? else {
                return Err(err.into());
            };
            tracing::error!(error = %err, "policy cannot be compiled; serving the persisted one");
            Ok(modules)
        }
        Err(err) => Err(err.into()),
    }
}

/// The modules persisted last time, if both are there.
fn persisted_modules(data: &DataDir) -> Result<Option<(Vec<u8>, Vec<u8>)>, DaemonError> {
    Ok(data
        .read(files::LOCAL_RECORDS_MODULE)?
        .zip(data.read(files::BLOCKLIST_MODULE)?))
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

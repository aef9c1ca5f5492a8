//! The composition root: [`App::build`] loads the configuration, builds
//! every subsystem and binds every socket; [`App::spawn`] starts them and
//! returns the [`Running`] handle that drains them at shutdown. One thread,
//! the policy owner (`owner.rs`), holds the policy state and applies every
//! change to it; [`Daemon`] is what the control plane and the CLI call.

mod fleet;
mod live;
mod owner;
mod policy;
mod power;
mod role;
mod settings;
mod tasks;

pub use fleet::join_offline;
pub(crate) use fleet::{FleetError, PrimaryStatus};
pub(crate) use role::RoleError;
pub(crate) use settings::PolicyView;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::bundle::{BundleError, VerifiedBundle};
use crate::clock;
use crate::compile::CompileError;
use crate::config::{Config, ConfigError};
use crate::control;
use crate::dns::cache::Cache;
use crate::dns::clock::SystemClock;
use crate::dns::handler::QueryHandler;
use crate::dns::listen::{ListenError, Listeners, Serving, UdpThread};
use crate::dns::upstream::{UpstreamError, UpstreamStatus};
use crate::policy::{Chain, Pause, PauseState, PluginError, PolicyEngine};
use crate::stats::QueryLog;
use crate::store::{DataDir, StoreError, files};
use live::LiveBuilder;
use owner::{Command, Commands, PolicyOwner, Snapshot};
use policy::OpenedBundle;
use role::{FleetParts, Role, RoleSetup};

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

    /// Reads and parses the configuration alone, ignoring the saved
    /// sections: what safe mode runs on.
    fn load_without_saved(&self) -> Result<Config, ConfigError> {
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
    /// A policy bundle is unusable.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The request does not fit this appliance's role.
    #[error(transparent)]
    Role(#[from] RoleError),
    /// Pairing or sync failed.
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// The HTTPS certificate is unusable.
    #[error(transparent)]
    Https(#[from] crate::control::HttpsError),
    /// Another I/O failure.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The daemon is shutting down.
    #[error("the daemon is shutting down")]
    Stopped,
    /// Only the appliance image, where init supervises the daemon, can.
    #[error("{0} works on the appliance image only, where Moat's init runs the daemon")]
    NotOnImage(&'static str),
}

/// What kind of failure an error is, for whoever answers for it (the
/// control API maps each to an HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The request or configuration is invalid; the message names the key.
    Invalid,
    /// The request does not fit this appliance's role.
    WrongRole,
    /// A pairing code was wrong, used or expired.
    Refused,
    /// Something on this appliance failed.
    Internal,
}

impl DaemonError {
    /// What kind of failure this is.
    pub(crate) fn cause(&self) -> Cause {
        match self {
            Self::Config(_) | Self::Upstream(_) | Self::UpstreamCa { .. } | Self::Compile(_) => {
                Cause::Invalid
            }
            Self::Role(_) | Self::NotOnImage(_) => Cause::WrongRole,
            Self::Fleet(err) => err.cause(),
            _ => Cause::Internal,
        }
    }
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
    /// Upstream health: the general upstreams, then each forward zone's.
    pub upstreams: Vec<UpstreamStatus>,
    /// Times the configuration was applied since start.
    pub config_generation: u64,
    /// Query log entries dropped because the log could not keep up.
    pub query_log_lost: u64,
    /// Policy plugin faults since the policy in force was loaded.
    pub policy_faults: u64,
    /// Each configured plugin (`[[policy.plugins]]`) of the policy in force.
    #[serde(default)]
    pub plugins: Vec<crate::policy::PluginStatus>,
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
    /// On the primary: the last failed pairings, with the address each
    /// came from (a code burned by wrong attempts says who burned it).
    #[serde(default)]
    pub failed_pairings: Vec<crate::sync::server::FailedPairing>,
    /// Why it runs in safe mode (saved settings ignored, the last bundle
    /// served), or none when it runs normally.
    #[serde(default)]
    pub safe_mode: Option<String>,
    /// Why the query log stopped writing to disk, while it has.
    #[serde(default)]
    pub query_log_disk_limit: Option<String>,
    /// The HTTPS control endpoint and its certificate's fingerprint.
    #[serde(default)]
    pub https: Option<crate::control::HttpsView>,
}

/// A running appliance, as the control plane and the CLI see it: reads
/// come from the latest snapshot without waiting, changes go to the policy
/// owner.
#[derive(Debug)]
pub struct Daemon {
    commands: Commands,
    snapshot: ArcSwap<Snapshot>,
    role: Mutex<Role>,
    fleet: FleetParts,
    handler: Arc<QueryHandler>,
    data: DataDir,
    started: Instant,
    udp: Vec<SocketAddr>,
    udp_threads: Vec<Arc<UdpThread>>,
    tcp: Vec<SocketAddr>,
    query_log_loss_reported: AtomicBool,
    safe_mode: Option<String>,
    https: Option<crate::control::HttpsView>,
}

impl Daemon {
    /// The configuration in force.
    pub fn config(&self) -> Config {
        self.snapshot.load().config.clone()
    }

    /// The data directory.
    pub fn data(&self) -> &DataDir {
        &self.data
    }

    /// The UDP listener threads, for their counters.
    pub(crate) fn udp_threads(&self) -> &[Arc<UdpThread>] {
        &self.udp_threads
    }

    /// The query path.
    pub(crate) fn handler(&self) -> &Arc<QueryHandler> {
        &self.handler
    }

    /// Re-reads the configuration and applies it without dropping a query;
    /// an invalid configuration is refused and the running one stays.
    /// Returns the new configuration generation.
    pub async fn reload(&self) -> Result<u64, DaemonError> {
        self.commands.call(Command::Reload).await
    }

    /// Pauses blocking, for `duration` or until resumed; kept across restarts.
    pub async fn pause(&self, duration: Option<Duration>) -> Result<PauseState, DaemonError> {
        let state = PauseState::for_duration(duration);
        self.commands
            .call(|reply| Command::Pause(state, reply))
            .await
    }

    /// Resumes blocking.
    pub async fn resume(&self) -> Result<PauseState, DaemonError> {
        self.commands
            .call(|reply| Command::Pause(PauseState::Blocking, reply))
            .await
    }

    /// A status report; never waits for a change being applied.
    pub fn status(&self) -> Status {
        let snapshot = self.snapshot.load_full();
        let (role, primary, replicas, failed_pairings) = {
            let role = self.role.lock();
            let failed = role.failed_pairings();
            (role.name(), role.primary_status(), role.replicas(), failed)
        };
        let live = self.handler.live();
        Status {
            role: role.into(),
            bundle_version: snapshot.bundle.map(|(version, _)| version),
            bundle_expires_unix: snapshot.bundle.map(|(_, expires)| expires),
            primary,
            replicas,
            failed_pairings,
            name: snapshot.config.instance.name.to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: clock::now()
                .saturating_duration_since(self.started)
                .as_secs(),
            pause: self.handler.pause().state(),
            udp: self.udp.clone(),
            tcp: self.tcp.clone(),
            cache_entries: self.handler.cache().len(),
            upstreams: std::iter::once(&live.upstreams)
                .chain(&live.forwarders)
                .flat_map(|upstreams| upstreams.status())
                .collect(),
            config_generation: snapshot.generation,
            query_log_lost: self.handler.query_log().lost(),
            policy_faults: live.policy.faults(),
            plugins: live.policy.plugins(),
            safe_mode: self.safe_mode.clone(),
            query_log_disk_limit: self
                .handler
                .query_log()
                .disk_limit()
                .map(|limit| limit.to_string()),
            https: self.https.clone(),
        }
    }

    /// What mDNS advertises now: the control plane (over HTTPS when it is
    /// served so, else on `control`), and the sync endpoint while this
    /// appliance is a primary with it bound.
    fn advertised(&self, control: SocketAddr) -> crate::mdns::Advertised {
        let sync_port = self.role.lock().sync_port();
        let https = self.https.as_ref().map(|https| https.addr.port());
        crate::mdns::Advertised {
            name: self.fleet.name.clone(),
            control_port: https.unwrap_or(control.port()),
            control_tls: https.is_some(),
            sync: sync_port.map(|port| crate::mdns::SyncEndpoint {
                port,
                fingerprint: self.fleet.identity.fingerprint(),
            }),
        }
    }

    /// On the primary: its replicas, their status and their pushed stats.
    pub fn replicas(&self) -> Vec<crate::fleet::ReplicaView> {
        self.role.lock().replicas()
    }
}

/// The real addresses an [`App`] bound.
#[derive(Debug, Clone)]
pub struct BoundAddrs {
    /// DNS over UDP.
    pub udp: Vec<SocketAddr>,
    /// DNS over TCP.
    pub tcp: Vec<SocketAddr>,
    /// The control plane.
    pub control: SocketAddr,
}

/// Every subsystem built and every socket bound; nothing served yet.
#[derive(Debug)]
pub struct App {
    daemon: Arc<Daemon>,
    owner: PolicyOwner,
    inbox: mpsc::Receiver<Command>,
    listeners: Listeners,
    control: control::Endpoints,
    tuning: crate::config::ServerTuning,
}

/// Raises the soft limit on open descriptors to the hard one: every miss
/// under way and every TCP client holds one, and the default soft limit
/// (1,024) is below what the listeners' bounds allow.
fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the descriptor limit"),
            Err(err) => tracing::warn!(error = %err, soft, "cannot raise the descriptor limit"),
        },
        Ok(_) => {}
        Err(err) => tracing::warn!(error = %err, "cannot read the descriptor limit"),
    }
}

impl App {
    /// Loads the configuration and the data directory, opens the policy in
    /// force and binds DNS, the control plane and (on a primary) the sync
    /// endpoint. Must run inside a multi-threaded tokio runtime.
    pub fn build(source: ConfigSource) -> Result<Self, DaemonError> {
        Self::build_in(source, None)
    }

    /// As [`App::build`], in safe mode for `reason`: the saved policy and
    /// tuning files are ignored, the last bundle held is served (on the
    /// primary its policy becomes the one in force), and an unreadable
    /// replicas file is set aside. Status reports the reason.
    pub fn build_safe(source: ConfigSource, reason: String) -> Result<Self, DaemonError> {
        tracing::warn!(
            %reason,
            "SAFE MODE: saved settings ({}, {}) ignored; serving the last policy bundle held",
            files::POLICY_SETTINGS,
            files::TUNING_SETTINGS
        );
        Self::build_in(source, Some(reason))
    }

    fn build_in(source: ConfigSource, safe_mode: Option<String>) -> Result<Self, DaemonError> {
        let safe = safe_mode.is_some();
        let mut config = if safe {
            source.load_without_saved()?
        } else {
            source.load()?
        };
        raise_descriptor_limit();
        let config_file = match &source {
            ConfigSource::File(path) => Some(path.as_path()),
            ConfigSource::Embedded => None,
        };
        let data = DataDir::open(&config.instance.data_dir)?
            .allow_sources_from(crate::compile::source_dirs(config_file, &config));
        if safe {
            set_aside_unreadable_replicas(&data);
        }
        let fleet = FleetParts::load(&data, &config.instance.name)?;
        let role = RoleSetup::load(&data, &fleet, config.instance.sync)?;
        let engine = PolicyEngine::start()?;
        let (bundle, opened) = policy_for(&config, &data, &role, &engine, safe)?;
        if safe && bundle.is_some() && matches!(role, RoleSetup::Primary { .. }) {
            // Re-sealing then keeps the last bundle's policy, not the file's.
            config.policy = opened.policy.clone();
        }
        let opened = Arc::new(opened);
        let mut live = LiveBuilder::default();
        let handler = QueryHandler::new(
            live.build(&config, &opened)?,
            Cache::new(config.tuning.cache.clone()),
            Pause::new(stored_pause(&data)),
            QueryLog::new(config.tuning.query_log.memory_entries),
            SystemClock,
        );
        let listeners = Listeners::bind(&config.instance.listen, config.tuning.server.threads)?;
        let control = control::bind(&config.instance, &data)?;
        let https = control.https_view()?;
        let (commands, inbox) = Commands::channel();
        let daemon = Arc::new_cyclic(|daemon| Daemon {
            commands,
            snapshot: ArcSwap::from_pointee(Snapshot::of(&config, 1, &opened, bundle.as_ref())),
            role: Mutex::new(role.start(&fleet, fleet::replica_hooks(daemon.clone()))),
            fleet,
            handler,
            data,
            started: clock::now(),
            udp: listeners.udp_addrs(),
            udp_threads: listeners.udp_threads(),
            tcp: listeners.tcp_addrs(),
            query_log_loss_reported: AtomicBool::new(false),
            safe_mode,
            https,
        });
        if let Some(bundle) = &bundle {
            daemon.role.lock().publish(bundle);
        }
        let tuning = config.tuning.server.clone();
        let owner = PolicyOwner::new(
            source,
            config,
            bundle,
            opened,
            live,
            engine,
            Arc::clone(&daemon),
        );
        Ok(Self {
            daemon,
            owner,
            inbox,
            listeners,
            control,
            tuning,
        })
    }

    /// The addresses bound.
    pub fn addrs(&self) -> Result<BoundAddrs, DaemonError> {
        Ok(BoundAddrs {
            udp: self.daemon.udp.clone(),
            tcp: self.daemon.tcp.clone(),
            control: self.control.control_addr()?,
        })
    }

    /// Starts serving: DNS, the control plane, the policy owner and the
    /// background tasks (query-log flushes, re-sealing, list downloads).
    pub fn spawn(self) -> Result<Running, DaemonError> {
        let Self {
            daemon,
            owner,
            inbox,
            listeners,
            control,
            tuning,
        } = self;
        // The owner starts replica links and closes sync endpoints: tasks
        // of this runtime.
        let runtime = tokio::runtime::Handle::current();
        let owner = std::thread::Builder::new()
            .name("moat-policy".into())
            .spawn(move || {
                let _runtime = runtime.enter();
                owner.run(inbox);
            })?;
        let dns = listeners.serve(&daemon.handler, &tuning)?;
        let control_addr = control.control_addr()?;
        tracing::info!(name = %daemon.config().instance.name, udp = ?daemon.udp, tcp = ?daemon.tcp, "serving DNS");
        let (stop_control, control_stopped) = oneshot::channel::<()>();
        let control = control::serve(Arc::clone(&daemon), control, async {
            let _ = control_stopped.await;
        })?;
        let mut background = JoinSet::new();
        background.spawn(tasks::flush_query_log_periodically(Arc::clone(&daemon)));
        background.spawn(tasks::reseal_periodically(Arc::clone(&daemon)));
        background.spawn(tasks::close_idle_sync_periodically(Arc::clone(&daemon)));
        background.spawn(tasks::download_lists_periodically(Arc::clone(&daemon))?);
        background.spawn(tasks::follow_own_addrs(Arc::clone(&daemon)));
        if daemon.config().instance.mdns {
            let advertising = Arc::clone(&daemon);
            background.spawn(async move {
                let advertised = move || advertising.advertised(control_addr);
                if let Err(err) = crate::mdns::serve(advertised).await {
                    tracing::error!(error = %err, "mDNS is off");
                }
            });
        }
        Ok(Running {
            daemon,
            owner,
            dns,
            control,
            stop_control,
            background,
        })
    }
}

/// A serving appliance; [`Running::shutdown`] drains it.
#[derive(Debug)]
pub struct Running {
    daemon: Arc<Daemon>,
    owner: std::thread::JoinHandle<()>,
    dns: Serving,
    control: tokio::task::JoinHandle<()>,
    stop_control: oneshot::Sender<()>,
    background: JoinSet<()>,
}

/// How long shutdown waits for open control connections to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

impl Running {
    /// The running daemon.
    pub fn daemon(&self) -> &Arc<Daemon> {
        &self.daemon
    }

    /// Stops taking queries and requests, lets the policy owner finish the
    /// change it is applying, tells the fleet peers, and writes the query
    /// log out.
    pub async fn shutdown(self) {
        let Self {
            daemon,
            owner,
            dns,
            control,
            stop_control,
            mut background,
        } = self;
        dns.stop().await;
        let _ = stop_control.send(());
        if tokio::time::timeout(DRAIN_TIMEOUT, control).await.is_err() {
            tracing::warn!("control connections still open at shutdown; closing them");
        }
        background.shutdown().await;
        let _ = daemon.commands.call(Command::Stop).await;
        let _ = tokio::task::spawn_blocking(move || owner.join()).await;
        let closing = daemon.role.lock().close();
        closing.await;
        let flushing = Arc::clone(&daemon);
        let _ = tokio::task::spawn_blocking(move || tasks::flush_query_log(&flushing)).await;
    }
}

/// The pause state kept in `data`; blocking when none or unreadable.
fn stored_pause(data: &DataDir) -> PauseState {
    match data.read_json::<PauseState>(files::PAUSE) {
        Ok(state) => state.unwrap_or_default(),
        Err(err) => {
            tracing::error!(error = %err, "pause state unreadable; blocking stays on");
            PauseState::Blocking
        }
    }
}

/// In safe mode, moves a replicas file that does not load aside (kept
/// for inspection, renamed with the time), so the appliance comes up; the
/// replicas it listed must pair again.
fn set_aside_unreadable_replicas(data: &DataDir) {
    let Err(err) = crate::fleet::Fleet::load(data) else {
        return;
    };
    let path = data.path(files::REPLICAS);
    let aside = path.with_extension(format!("json.unreadable-{}", clock::unix_now()));
    match std::fs::rename(&path, &aside) {
        Ok(()) => tracing::error!(
            error = %err,
            kept = %aside.display(),
            "SAFE MODE: the replicas file does not load; set aside, replicas must pair again"
        ),
        Err(rename) => tracing::error!(error = %err, %rename, "cannot set the replicas file aside"),
    }
}

/// The bundle `role` starts with, opened. A replica without a usable
/// bundle from its primary yet serves without blocking, with its own
/// upstreams, until the first one arrives. In `safe` mode the primary
/// serves the bundle it stored last, sealing only if it has none.
fn policy_for(
    config: &Config,
    data: &DataDir,
    role: &RoleSetup,
    engine: &PolicyEngine,
    safe: bool,
) -> Result<(Option<VerifiedBundle>, OpenedBundle), DaemonError> {
    let now = clock::unix_now();
    let bundle = match role {
        RoleSetup::Primary { key, .. } if safe => {
            Some(policy::last_sealed(config, data, key, engine, now)?)
        }
        RoleSetup::Primary { key, .. } => Some(policy::seal_for_primary(
            config, data, key, engine, true, now,
        )?),
        RoleSetup::Replica(pin) => {
            policy::stored(data, &crate::bundle::PublicKey(pin.signing_key), now)
                .inspect_err(|err| tracing::error!(error = %err, "stored bundle unusable"))
                .ok()
                .flatten()
        }
    };
    match bundle {
        Some(bundle) => {
            let opened = policy::open(&bundle, engine)?;
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

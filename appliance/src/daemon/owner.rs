//! The one owner of the policy state: the configuration in force, the
//! bundle and what it opened to. It takes typed commands one at a time on
//! a thread of its own, so a compile holds nothing a reader waits for, and
//! after each change publishes a [`Snapshot`] that status and the API read
//! without waiting.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::live::LiveBuilder;
use super::policy::{self, OpenedBundle};
use super::role::Role;
use super::{ConfigSource, Daemon, DaemonError};
use crate::bundle::{Bundle, BundleStore, PublicKey, VerifiedBundle};
use crate::clock;
use crate::config::{self, Config, Policy, Tuning};
use crate::dns::handler::Live;
use crate::policy::{PauseState, PolicyEngine};
use crate::store::{Access, DataDir, files};
use crate::sync::pairing::PrimaryPin;

/// Where a command's outcome goes.
pub(super) type Reply<T> = oneshot::Sender<Result<T, DaemonError>>;

/// How many commands may wait for the owner; senders wait beyond that.
const COMMAND_QUEUE: usize = 64;

/// A change to the policy state.
#[derive(Debug)]
pub(super) enum Command {
    /// Read the configuration source again and apply all of it; replies
    /// with the new configuration generation.
    Reload(Reply<u64>),
    /// Replace the policy (the primary only) and keep it in the data
    /// directory over the configuration file's section.
    SetPolicy(Box<Policy>, Reply<u64>),
    /// Replace this appliance's tuning, kept the same way.
    SetTuning(Box<Tuning>, Reply<u64>),
    /// Seal a new bundle version if the one in force expires soon; replies
    /// with the version in force.
    Reseal(Reply<Option<u64>>),
    /// Downloaded lists changed: compile them into a new bundle.
    SourcesChanged(Reply<Option<u64>>),
    /// Apply a bundle the primary sent; replies with its version.
    ApplyBundle(Vec<u8>, Reply<u64>),
    /// Pause or resume blocking; kept across restarts.
    Pause(PauseState, Reply<PauseState>),
    /// Paired: run the bundles of this primary from now on.
    BecomeReplica(Box<PrimaryPin>, Reply<()>),
    /// Stop taking commands once the one before is done.
    Stop(Reply<()>),
}

/// What readers see of the policy state; replaced whole after each change.
#[derive(Debug)]
pub(super) struct Snapshot {
    /// The local configuration in force.
    pub(super) config: Config,
    /// Times the configuration was applied since start.
    pub(super) generation: u64,
    /// The policy in force: the bundle's settings.
    pub(super) policy: config::Policy,
    /// Version and expiry (Unix seconds) of the bundle in force.
    pub(super) bundle: Option<(u64, u64)>,
}

impl Snapshot {
    /// The snapshot of this state.
    pub(super) fn of(
        config: &Config,
        generation: u64,
        opened: &OpenedBundle,
        bundle: Option<&VerifiedBundle>,
    ) -> Self {
        Self {
            config: config.clone(),
            generation,
            policy: opened.policy.clone(),
            bundle: bundle.map(|bundle| (bundle.version(), bundle.expires_unix())),
        }
    }
}

/// The policy state and the only code that changes it.
#[derive(Debug)]
pub(super) struct PolicyOwner {
    source: ConfigSource,
    config: Config,
    generation: u64,
    bundle: Option<VerifiedBundle>,
    opened: Arc<OpenedBundle>,
    live: LiveBuilder,
    /// The process's WASM engine, which every policy module runs on.
    engine: PolicyEngine,
    daemon: Arc<Daemon>,
}

impl PolicyOwner {
    /// Takes over the state `App::build` loaded (and published as the
    /// first snapshot).
    pub(super) fn new(
        source: ConfigSource,
        config: Config,
        bundle: Option<VerifiedBundle>,
        opened: Arc<OpenedBundle>,
        live: LiveBuilder,
        engine: PolicyEngine,
        daemon: Arc<Daemon>,
    ) -> Self {
        Self {
            source,
            config,
            generation: 1,
            bundle,
            opened,
            live,
            engine,
            daemon,
        }
    }

    /// Serves commands until told to stop or every sender is gone.
    pub(super) fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        while let Some(command) = commands.blocking_recv() {
            if !self.handle(command) {
                return;
            }
        }
    }

    /// Carries out one command; false once told to stop.
    fn handle(&mut self, command: Command) -> bool {
        match command {
            Command::Reload(reply) => answer(reply, self.reload()),
            Command::SetPolicy(policy, reply) => answer(reply, self.set_policy(&policy)),
            Command::SetTuning(tuning, reply) => answer(reply, self.set_tuning(&tuning)),
            Command::Reseal(reply) => answer(reply, self.reseal_if_due()),
            Command::SourcesChanged(reply) => answer(reply, self.recompile()),
            Command::ApplyBundle(bytes, reply) => answer(reply, self.apply_bundle(&bytes)),
            Command::Pause(state, reply) => answer(reply, self.set_pause(state)),
            Command::BecomeReplica(pin, reply) => answer(reply, self.become_replica(*pin)),
            Command::Stop(reply) => {
                answer(reply, Ok(()));
                return false;
            }
        }
        true
    }

    fn data(&self) -> &DataDir {
        &self.daemon.data
    }

    /// Re-reads the configuration and applies it without dropping a query;
    /// an invalid configuration is refused and the running one stays.
    fn reload(&mut self) -> Result<u64, DaemonError> {
        let new = self.source.load()?;
        self.apply_config(new)
    }

    fn set_policy(&mut self, policy: &Policy) -> Result<u64, DaemonError> {
        self.daemon.role.lock().refuse_policy_edits()?;
        let text = policy.to_toml();
        let checked = Config::parse(&text, "the request")?;
        let new = Config {
            policy: checked.policy,
            ..self.config.clone()
        };
        self.save_and_apply(files::POLICY_SETTINGS, &text, new)
    }

    fn set_tuning(&mut self, tuning: &Tuning) -> Result<u64, DaemonError> {
        let text = tuning.to_toml();
        let checked = Config::parse(&text, "the request")?;
        let new = Config {
            tuning: checked.tuning,
            ..self.config.clone()
        };
        self.save_and_apply(files::TUNING_SETTINGS, &text, new)
    }

    /// Saves `text` as `file`, the section that from now on replaces the
    /// configuration file's, and applies `new`; a refused change puts back
    /// the file it replaced.
    fn save_and_apply(&mut self, file: &str, text: &str, new: Config) -> Result<u64, DaemonError> {
        let before = self.data().read(file)?;
        self.data().write(file, text.as_bytes(), Access::Public)?;
        let applied = self.apply_config(new);
        if applied.is_err() {
            match &before {
                Some(bytes) => self.data().write(file, bytes, Access::Public)?,
                None => self.data().remove(file)?,
            }
        }
        applied
    }

    /// Makes `new` the configuration in force: on the primary its policy
    /// is sealed into a bundle first; a replica refuses a policy change.
    fn apply_config(&mut self, new: Config) -> Result<u64, DaemonError> {
        let primary = self.daemon.role.lock().is_primary();
        if !primary && new.policy != self.config.policy {
            self.daemon.role.lock().refuse_policy_edits()?;
        }
        let sealed = if primary {
            let bundle = self.seal(&new)?;
            let (opened, live) = self.open(&new, &bundle)?;
            Some((bundle, opened, live))
        } else {
            None
        };
        if new.instance != self.config.instance {
            tracing::warn!("changes to [instance] take effect at the next start");
        }
        if new.tuning.query_log.memory_entries != self.config.tuning.query_log.memory_entries {
            tracing::warn!("tuning.query_log.memory_entries takes effect at the next start");
        }
        self.daemon.handler.cache().retune(new.tuning.cache.clone());
        match sealed {
            Some((bundle, opened, live)) => {
                self.config = new;
                self.swap_in(bundle, opened, live);
            }
            None => {
                let live = self.live.build(&new, &self.opened)?;
                self.daemon.handler.replace_live(live);
                self.config = new;
            }
        }
        self.generation += 1;
        self.publish_snapshot();
        tracing::info!(generation = self.generation, "configuration applied");
        Ok(self.generation)
    }

    /// On the primary, seals the configuration in force again when its
    /// bundle expires soon, so replicas never freeze on an expired policy.
    fn reseal_if_due(&mut self) -> Result<Option<u64>, DaemonError> {
        let due = self.bundle.as_ref().is_some_and(|bundle| {
            bundle.expires_unix() < clock::unix_now() + policy::RESEAL_BEFORE.as_secs()
        });
        if due {
            self.recompile()?;
            tracing::info!("bundle re-sealed before expiry");
        }
        Ok(self.version())
    }

    /// On the primary, seals the configuration in force into a new bundle
    /// when its inputs (the downloaded lists, the expiry) call for one, and
    /// swaps in only the policy: tuning and upstreams stay as they are.
    fn recompile(&mut self) -> Result<Option<u64>, DaemonError> {
        if !self.daemon.role.lock().is_primary() {
            return Ok(self.version());
        }
        let config = self.config.clone();
        let bundle = self.seal(&config)?;
        if self.version() != Some(bundle.version()) {
            let (opened, live) = self.open(&config, &bundle)?;
            self.swap_in(bundle, opened, live);
            self.publish_snapshot();
        }
        Ok(self.version())
    }

    /// Applies a bundle sent by the primary: verified with the pinned key,
    /// newer than the one in force and opened, then stored and swapped in.
    fn apply_bundle(&mut self, bytes: &[u8]) -> Result<u64, DaemonError> {
        let pin = self.daemon.role.lock().pinned_primary()?;
        let bundle = Bundle::parse(bytes)?.verify(
            &PublicKey(pin.signing_key),
            self.version(),
            clock::unix_now(),
        )?;
        let version = bundle.version();
        let config = self.config.clone();
        let (opened, live) = self.open(&config, &bundle)?;
        BundleStore::new(self.data().clone()).save(&bundle)?;
        self.swap_in(bundle, opened, live);
        self.publish_snapshot();
        tracing::info!(version, primary = %pin.name, "applied a bundle from the primary");
        Ok(version)
    }

    fn version(&self) -> Option<u64> {
        self.bundle.as_ref().map(VerifiedBundle::version)
    }

    /// Seals `config`'s policy with the primary's key.
    fn seal(&self, config: &Config) -> Result<VerifiedBundle, DaemonError> {
        let key = self.daemon.role.lock().signing_key()?;
        policy::seal_for_primary(
            config,
            self.data(),
            &key,
            &self.engine,
            false,
            clock::unix_now(),
        )
    }

    /// Opens `bundle` and builds the query path's settings for it under
    /// `config`; nothing changes yet.
    fn open(
        &mut self,
        config: &Config,
        bundle: &VerifiedBundle,
    ) -> Result<(Arc<OpenedBundle>, Live), DaemonError> {
        let opened = Arc::new(policy::open(bundle, &self.engine)?);
        let live = self.live.build(config, &opened)?;
        Ok((opened, live))
    }

    /// Makes an opened bundle the policy in force and, on the primary,
    /// sends it to the replicas.
    fn swap_in(&mut self, bundle: VerifiedBundle, opened: Arc<OpenedBundle>, live: Live) {
        self.daemon.handler.replace_live(live);
        self.daemon.role.lock().publish(&bundle);
        self.bundle = Some(bundle);
        self.opened = opened;
    }

    fn set_pause(&mut self, state: PauseState) -> Result<PauseState, DaemonError> {
        self.data()
            .write_json(files::PAUSE, &state, Access::Public)?;
        self.daemon.handler.pause().set(state);
        tracing::info!(?state, "blocking pause changed");
        Ok(state)
    }

    /// Pins the primary, forgets this appliance's own bundle and starts the
    /// link; until the primary's first bundle arrives the policy in force
    /// stays.
    fn become_replica(&mut self, pin: PrimaryPin) -> Result<(), DaemonError> {
        super::fleet::become_replica(self.data(), &pin)?;
        // The link reports the version it runs as soon as it starts: none.
        self.bundle = None;
        self.publish_snapshot();
        let replica = super::fleet::replica_hooks(Arc::downgrade(&self.daemon));
        let mut role = self.daemon.role.lock();
        tokio::spawn(role.close());
        *role = Role::replica(pin, &self.daemon.fleet, replica);
        Ok(())
    }

    fn publish_snapshot(&self) {
        let snapshot = Snapshot::of(
            &self.config,
            self.generation,
            &self.opened,
            self.bundle.as_ref(),
        );
        self.daemon.snapshot.store(Arc::new(snapshot));
    }
}

fn answer<T>(reply: Reply<T>, outcome: Result<T, DaemonError>) {
    if let Err(Err(err)) = reply.send(outcome) {
        tracing::error!(error = %err, "a policy change failed after its caller left");
    }
}

/// The owner's inbox, held by the daemon and its background tasks.
#[derive(Debug, Clone)]
pub(super) struct Commands(mpsc::Sender<Command>);

impl Commands {
    /// A queue and its receiving end, for `PolicyOwner::run`.
    pub(super) fn channel() -> (Self, mpsc::Receiver<Command>) {
        let (sender, receiver) = mpsc::channel(COMMAND_QUEUE);
        (Self(sender), receiver)
    }

    /// Sends the command `make` builds around a reply channel and waits
    /// for its outcome.
    pub(super) async fn call<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, DaemonError> {
        let (reply, outcome) = oneshot::channel();
        self.0
            .send(make(reply))
            .await
            .map_err(|_| DaemonError::Stopped)?;
        outcome.await.map_err(|_| DaemonError::Stopped)?
    }

    /// `call` from a thread outside the runtime (the sync link's blocking
    /// apply).
    pub(super) fn call_blocking<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, DaemonError> {
        let (reply, outcome) = oneshot::channel();
        self.0
            .blocking_send(make(reply))
            .map_err(|_| DaemonError::Stopped)?;
        outcome.blocking_recv().map_err(|_| DaemonError::Stopped)?
    }
}

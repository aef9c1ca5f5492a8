//! The daemon's side of the fleet: the sync endpoint on a primary, the
//! link to the primary on a replica, pairing codes, joining, revoking.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use moat_proto::{ApplianceName, Fingerprint};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::{Daemon, DaemonError, Role};
use crate::bundle::VerifiedBundle;
use crate::clock;
use crate::config::Config;
use crate::fleet::{Fleet, ReplicaView};
use crate::store::{Access, DataDir, StoreError, files};
use crate::sync::identity::{Identity, IdentityError};
use crate::sync::link::{LinkHealth, Replica, ReplicaLink};
use crate::sync::pairing::{
    self, CodeParseError, DEFAULT_CODE_TTL, PairError, PairingCode, PrimaryPin,
};
use crate::sync::protocol::ReplicaStats;
use crate::sync::server::{ServerError, SyncServer};
use crate::sync::tls;

/// Why a fleet operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The appliance's identity is unusable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The sync endpoint could not start.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// Pairing failed.
    #[error(transparent)]
    Pairing(#[from] PairError),
    /// The code is not a pairing code.
    #[error(transparent)]
    Code(#[from] CodeParseError),
    /// State could not be stored.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The primary's address cannot be used.
    #[error("primary address `{0}`: {1}")]
    Address(String, String),
    /// The request does not fit this appliance's role.
    #[error("{0}")]
    Role(&'static str),
}

/// A replica's view of its primary, for status.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PrimaryStatus {
    /// The primary's name.
    #[schema(value_type = String)]
    pub name: ApplianceName,
    /// Where it is reached.
    pub address: String,
    /// Its certificate fingerprint.
    #[schema(value_type = String)]
    pub fingerprint: Fingerprint,
    /// The sync link's health.
    #[serde(flatten)]
    pub health: LinkHealth,
}

/// The fleet parts of a running daemon.
#[derive(Debug)]
pub(super) struct FleetLinks {
    identity: Identity,
    name: ApplianceName,
    sync_addr: SocketAddr,
    fleet: Arc<Mutex<Fleet>>,
    server: Mutex<Option<SyncServer>>,
    link: Mutex<Option<ReplicaLink>>,
}

impl FleetLinks {
    /// Loads the identity (made on first start) and the replica list.
    pub(super) fn new(config: &Config, data: &DataDir) -> Result<Self, FleetError> {
        Ok(Self {
            identity: Identity::load_or_create(data, config.instance.name.as_str())?,
            name: config.instance.name.clone(),
            sync_addr: config.instance.sync,
            fleet: Arc::new(Mutex::new(Fleet::load(data)?)),
            server: Mutex::new(None),
            link: Mutex::new(None),
        })
    }

    /// Closes the sync endpoint or link, telling the peers at once.
    pub(super) fn close(&self) {
        if let Some(server) = self.server.lock().take() {
            server.close();
        }
        self.link.lock().take();
    }

    /// Pushes the primary's new bundle to its replicas.
    pub(super) fn publish(&self, bundle: &VerifiedBundle) {
        if let Some(server) = &*self.server.lock() {
            server.publish(bundle.version(), Bytes::from(bundle.to_bytes()));
        }
    }

    /// A replica's view of its primary.
    pub(super) fn primary_status(&self, pin: &PrimaryPin) -> PrimaryStatus {
        PrimaryStatus {
            name: pin.name.clone(),
            address: pin.address.clone(),
            fingerprint: pin.fingerprint,
            health: self
                .link
                .lock()
                .as_ref()
                .map(ReplicaLink::health)
                .unwrap_or_default(),
        }
    }

    /// The primary's replicas (none on a replica).
    pub(super) fn replicas(&self) -> Vec<ReplicaView> {
        self.server
            .lock()
            .as_ref()
            .map(SyncServer::replicas)
            .unwrap_or_default()
    }
}

/// Lets the replica link reach the daemon without keeping it alive.
struct DaemonReplica(Weak<Daemon>);

impl Replica for DaemonReplica {
    fn running_version(&self) -> Option<u64> {
        self.0.upgrade().and_then(|daemon| daemon.bundle_version())
    }

    fn apply(&self, bundle: &[u8]) -> Result<u64, String> {
        let daemon = self.0.upgrade().ok_or("shutting down")?;
        daemon.apply_bundle(bundle).map_err(|err| err.to_string())
    }

    fn stats(&self) -> ReplicaStats {
        let Some(daemon) = self.0.upgrade() else {
            return ReplicaStats::default();
        };
        let handler = daemon.handler();
        let mut stats = ReplicaStats::from(&handler.stats().snapshot(0));
        stats.cache_entries = handler.cache().len() as u64;
        stats.uptime_secs = clock::now()
            .saturating_duration_since(daemon.started)
            .as_secs();
        stats
    }
}

impl Daemon {
    /// Starts the fleet part of the role in force: the sync endpoint on a
    /// primary, the link to the primary on a replica.
    pub(super) fn start_sync(self: &Arc<Self>) -> Result<(), DaemonError> {
        let (role, bundle) = {
            let current = self.current.lock();
            (current.role.clone(), current.bundle.clone())
        };
        let links = &self.fleet;
        match role {
            Role::Primary(key) => {
                let server = SyncServer::start(
                    links.sync_addr,
                    links.identity.clone(),
                    &links.name,
                    key.public().0,
                    Arc::clone(&links.fleet),
                )
                .map_err(FleetError::from)?;
                let bound = server.local_addr()?;
                self.data.write(
                    files::SYNC_ADDR,
                    bound.to_string().as_bytes(),
                    Access::Public,
                )?;
                tracing::info!(%bound, "sync endpoint listening");
                if let Some(bundle) = &bundle {
                    server.publish(bundle.version(), Bytes::from(bundle.to_bytes()));
                }
                *links.server.lock() = Some(server);
            }
            Role::Replica(pin) => {
                tracing::info!(primary = %pin.name, address = %pin.address, "replica of this primary");
                let replica = Arc::new(DaemonReplica(Arc::downgrade(self)));
                let link =
                    ReplicaLink::start(pin, links.identity.clone(), links.name.clone(), replica);
                *links.link.lock() = Some(link);
            }
        }
        Ok(())
    }

    /// Issues a one-time pairing code valid for `valid` (default 10 minutes).
    pub fn issue_pairing_code(
        &self,
        valid: Option<Duration>,
    ) -> Result<(String, Duration), DaemonError> {
        let server = self.fleet.server.lock();
        let server = server.as_ref().ok_or(FleetError::Role(
            "only a primary issues pairing codes; this appliance is a replica",
        ))?;
        let valid = valid.unwrap_or(DEFAULT_CODE_TTL);
        Ok((server.issue_code(valid).to_string(), valid))
    }

    /// Revokes replica `name`; false when there is none.
    pub fn revoke(&self, name: &str) -> Result<bool, DaemonError> {
        let server = self.fleet.server.lock();
        let server = server
            .as_ref()
            .ok_or(FleetError::Role("only a primary has replicas to revoke"))?;
        Ok(server.revoke(name).map_err(FleetError::from)?)
    }

    /// Pairs this running appliance with the primary at `address` and
    /// becomes its replica at once.
    pub async fn join(
        self: &Arc<Self>,
        address: &str,
        code: &str,
    ) -> Result<PrimaryPin, DaemonError> {
        let pin = pair(&self.fleet.identity, &self.fleet.name, address, code).await?;
        become_replica(&self.data, &pin)?;
        if let Some(server) = self.fleet.server.lock().take() {
            server.close();
        }
        {
            let mut current = self.current.lock();
            current.role = Role::Replica(pin.clone());
            current.bundle = None;
        }
        self.start_sync()?;
        Ok(pin)
    }
}

/// Pairs the stopped appliance configured by `config` with the primary at
/// `address`; its next start runs as that primary's replica.
pub async fn join_offline(
    config: &Config,
    address: &str,
    code: &str,
) -> Result<PrimaryPin, DaemonError> {
    let data = DataDir::open(&config.instance.data_dir)?;
    let identity =
        Identity::load_or_create(&data, config.instance.name.as_str()).map_err(FleetError::from)?;
    let pin = pair(&identity, &config.instance.name, address, code).await?;
    become_replica(&data, &pin)?;
    Ok(pin)
}

async fn pair(
    identity: &Identity,
    name: &ApplianceName,
    address: &str,
    code: &str,
) -> Result<PrimaryPin, FleetError> {
    let code = PairingCode::parse(code)?;
    let bad_address = |reason: String| FleetError::Address(address.to_owned(), reason);
    let primary = tokio::net::lookup_host(address)
        .await
        .map_err(|err| bad_address(err.to_string()))?
        .next()
        .ok_or_else(|| bad_address("no address found".into()))?;
    let endpoint = tls::client_endpoint(primary).map_err(|err| bad_address(err.to_string()))?;
    let pin = pairing::pair_as_replica(&endpoint, primary, address, &code, identity, name).await?;
    endpoint.close(0u32.into(), b"paired");
    Ok(pin)
}

/// Pins the primary and forgets this appliance's own bundle: from now on
/// only the primary's bundles are policy here.
fn become_replica(data: &DataDir, pin: &PrimaryPin) -> Result<(), FleetError> {
    data.write_json(files::PRIMARY, pin, Access::Public)?;
    for stale in [files::BUNDLE, files::POLICY_INPUTS] {
        match std::fs::remove_file(data.path(stale)) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(FleetError::Store(StoreError::Io {
                    path: data.path(stale),
                    source,
                }));
            }
        }
    }
    tracing::info!(primary = %pin.name, address = %pin.address, "paired; now a replica");
    Ok(())
}

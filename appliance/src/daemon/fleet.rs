//! The daemon's side of the fleet: pairing codes, joining, revoking, and
//! the hooks the replica link calls.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use moat_proto::{ApplianceName, Fingerprint};
use serde::{Deserialize, Serialize};

use super::owner::Command;
use super::{Cause, Daemon, DaemonError};
use crate::clock;
use crate::config::Config;
use crate::mdns;
use crate::store::{Access, DataDir, StoreError, files};
use crate::sync::identity::{Identity, IdentityError};
use crate::sync::link::{LinkHealth, Replica};
use crate::sync::pairing::{
    self, CodeParseError, DEFAULT_CODE_TTL, PairError, PairingCode, PrimaryPin,
};
use crate::sync::protocol::ReplicaStats;
use crate::sync::server::ServerError;
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
    /// No address was given and mDNS found no single primary to pair with.
    #[error("no primary address given, and {0}; give the primary's HOST:PORT")]
    Discovery(String),
}

impl FleetError {
    /// What kind of failure this is.
    pub(crate) fn cause(&self) -> Cause {
        match self {
            Self::Pairing(_) | Self::Code(_) => Cause::Refused,
            _ => Cause::Internal,
        }
    }
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

/// What the replica link asks of the daemon: the version in force, to
/// apply a bundle (through the policy owner), and the stats it pushes.
struct DaemonReplica(Weak<Daemon>);

impl Replica for DaemonReplica {
    fn running_version(&self) -> Option<u64> {
        let shared = self.0.upgrade()?;
        shared.snapshot.load().bundle.map(|(version, _)| version)
    }

    fn apply(&self, bundle: &[u8]) -> Result<u64, String> {
        let shared = self.0.upgrade().ok_or("shutting down")?;
        let bytes = bundle.to_vec();
        shared
            .commands
            .call_blocking(|reply| Command::ApplyBundle(bytes, reply))
            .map_err(|err| err.to_string())
    }

    fn stats(&self) -> ReplicaStats {
        let Some(shared) = self.0.upgrade() else {
            return ReplicaStats::default();
        };
        let handler = &shared.handler;
        let mut stats = ReplicaStats::from(&handler.stats().snapshot(0));
        stats.cache_entries = handler.cache().len() as u64;
        stats.uptime_secs = clock::now()
            .saturating_duration_since(shared.started)
            .as_secs();
        stats
    }
}

/// The hooks a replica link of `daemon` calls.
pub(super) fn replica_hooks(daemon: Weak<Daemon>) -> Arc<dyn Replica> {
    Arc::new(DaemonReplica(daemon))
}

impl Daemon {
    /// Issues a one-time pairing code valid for `valid` (default 10 minutes).
    pub(crate) fn issue_pairing_code(
        &self,
        valid: Option<Duration>,
    ) -> Result<(String, Duration), DaemonError> {
        let role = self.role.lock();
        let server = role.server("issues pairing codes")?;
        super::role::bind_sync(server, &self.data)?;
        let valid = valid.unwrap_or(DEFAULT_CODE_TTL);
        Ok((server.issue_code(valid).to_string(), valid))
    }

    /// Revokes replica `name`; false when there is none.
    pub fn revoke(&self, name: &str) -> Result<bool, DaemonError> {
        let role = self.role.lock();
        let server = role.server("has replicas to revoke")?;
        Ok(server.revoke(name).map_err(FleetError::from)?)
    }

    /// Pairs this running appliance with the primary at `address` (found
    /// by mDNS when none is given) and becomes its replica at once.
    pub async fn join(&self, address: Option<&str>, code: &str) -> Result<PrimaryPin, DaemonError> {
        let fleet = &self.fleet;
        let pin = pair(&fleet.identity, &fleet.name, address, code).await?;
        let owned = Box::new(pin.clone());
        self.commands
            .call(|reply| Command::BecomeReplica(owned, reply))
            .await?;
        Ok(pin)
    }
}

/// Pairs the stopped appliance configured by `config` with the primary at
/// `address` (found by mDNS when none is given); its next start runs as
/// that primary's replica.
pub async fn join_offline(
    config: &Config,
    address: Option<&str>,
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
    address: Option<&str>,
    code: &str,
) -> Result<PrimaryPin, FleetError> {
    let code = PairingCode::parse(code)?;
    let discovered;
    let address = match address {
        Some(address) => address,
        None => {
            discovered = discover_primary(identity.fingerprint()).await?;
            discovered.as_str()
        }
    };
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

/// How long a join without an address listens for primaries.
const DISCOVERY_WAIT: Duration = Duration::from_secs(2);

/// The address of the one primary other than this appliance that
/// advertises its sync endpoint on the LAN (`_moat-sync._udp`).
async fn discover_primary(own: Fingerprint) -> Result<String, FleetError> {
    let own = own.to_string();
    let found = mdns::browse(mdns::SYNC_SERVICE, DISCOVERY_WAIT)
        .await
        .map_err(|err| FleetError::Discovery(err.to_string()))?;
    let primaries: Vec<_> = found
        .into_iter()
        .filter(|primary| primary.txt("fp") != Some(own.as_str()))
        .collect();
    match primaries.as_slice() {
        [] => Err(FleetError::Discovery(
            "no primary with a pairing code answered on the LAN by mDNS".into(),
        )),
        [primary] => Ok(SocketAddr::new(primary.addrs[0], primary.port).to_string()),
        many => Err(FleetError::Discovery(format!(
            "{} primaries answered ({})",
            many.len(),
            many.iter()
                .map(|primary| primary.instance.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Pins the primary and forgets this appliance's own bundle: from now on
/// only the primary's bundles are policy here.
pub(super) fn become_replica(data: &DataDir, pin: &PrimaryPin) -> Result<(), FleetError> {
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

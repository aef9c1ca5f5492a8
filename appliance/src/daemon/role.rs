//! What this appliance is in its fleet, with what that role runs: the
//! primary's signing key and sync endpoint, or the replica's pin and its
//! link to the primary.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use moat_proto::ApplianceName;
use parking_lot::Mutex;

use super::DaemonError;
use super::fleet::{FleetError, PrimaryStatus};
use crate::bundle::{SigningKey, VerifiedBundle};
use crate::fleet::{Fleet, ReplicaView};
use crate::store::{Access, DataDir, files};
use crate::sync::identity::Identity;
use crate::sync::link::{Replica, ReplicaLink};
use crate::sync::pairing::PrimaryPin;
use crate::sync::server::{FailedPairing, SyncServer};

/// Why a request does not fit this appliance's role.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
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
    /// Only a primary does this.
    #[error("only a primary {0}; this appliance is a replica")]
    NotPrimary(&'static str),
    /// Only a replica does this.
    #[error("only a replica {0}; this appliance is the primary")]
    NotReplica(&'static str),
}

/// What every role shares: who this appliance is and whom it has paired.
#[derive(Debug)]
pub(super) struct FleetParts {
    /// This appliance's key and certificate.
    pub(super) identity: Identity,
    /// This appliance's name.
    pub(super) name: ApplianceName,
    /// The primary's replica list.
    pub(super) registry: Arc<Mutex<Fleet>>,
}

impl FleetParts {
    /// Loads the identity (made on first start) and the replica list.
    pub(super) fn load(data: &DataDir, name: &ApplianceName) -> Result<Self, FleetError> {
        Ok(Self {
            identity: Identity::load_or_create(data, name.as_str())?,
            name: name.clone(),
            registry: Arc::new(Mutex::new(Fleet::load(data)?)),
        })
    }
}

/// The role as loaded at start, before anything runs.
#[derive(Debug)]
pub(super) enum RoleSetup {
    /// Owns the policy: its signing key and its bound sync endpoint.
    Primary {
        /// Signs the bundles.
        key: Arc<SigningKey>,
        /// Serves pairing and sync.
        server: SyncServer,
    },
    /// Runs the bundles of the primary pinned at pairing.
    Replica(PrimaryPin),
}

impl RoleSetup {
    /// A replica when a primary is pinned in `data`; otherwise the primary,
    /// with its sync endpoint for `sync_addr`, bound if it has replicas.
    pub(super) fn load(
        data: &DataDir,
        fleet: &FleetParts,
        sync_addr: SocketAddr,
    ) -> Result<Self, DaemonError> {
        if let Some(pin) = data.read_json::<PrimaryPin>(files::PRIMARY)? {
            return Ok(Self::Replica(pin));
        }
        let key = Arc::new(SigningKey::load_or_create(data)?);
        let server = SyncServer::new(
            sync_addr,
            fleet.identity.clone(),
            &fleet.name,
            key.public().0,
            Arc::clone(&fleet.registry),
        )
        .map_err(FleetError::from)?;
        let _ = std::fs::remove_file(data.path(files::SYNC_ADDR));
        if fleet.registry.lock().has_replicas() {
            bind_sync(&server, data)?;
        }
        Ok(Self::Primary { key, server })
    }

    /// Starts what the role runs: a replica's link to its primary.
    pub(super) fn start(self, fleet: &FleetParts, replica: Arc<dyn Replica>) -> Role {
        match self {
            Self::Primary { key, server } => Role::Primary { key, server },
            Self::Replica(pin) => Role::replica(pin, fleet, replica),
        }
    }
}

/// Binds the primary's sync endpoint if it is not yet, and says where in
/// the data directory (`sync.addr`).
pub(super) fn bind_sync(server: &SyncServer, data: &DataDir) -> Result<SocketAddr, DaemonError> {
    let bound = server.bind().map_err(FleetError::from)?;
    if !data.path(files::SYNC_ADDR).exists() {
        data.write(
            files::SYNC_ADDR,
            bound.to_string().as_bytes(),
            Access::Public,
        )?;
        tracing::info!(%bound, "sync endpoint listening");
    }
    Ok(bound)
}

/// What this appliance is in its fleet, running.
#[derive(Debug)]
pub(super) enum Role {
    /// Owns the policy, signs its bundles and serves them.
    Primary {
        /// Signs the bundles.
        key: Arc<SigningKey>,
        /// Serves pairing and sync.
        server: SyncServer,
    },
    /// Runs the bundles of the primary pinned at pairing.
    Replica {
        /// The primary.
        pin: PrimaryPin,
        /// Keeps this replica in sync; stops when dropped.
        link: ReplicaLink,
    },
}

impl Role {
    /// A replica of `pin`, its link started.
    pub(super) fn replica(pin: PrimaryPin, fleet: &FleetParts, replica: Arc<dyn Replica>) -> Self {
        tracing::info!(primary = %pin.name, address = %pin.address, "replica of this primary");
        let link = ReplicaLink::start(
            pin.clone(),
            fleet.identity.clone(),
            fleet.name.clone(),
            replica,
        );
        Self::Replica { pin, link }
    }

    /// `primary` or `replica`.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Self::Primary { .. } => "primary",
            Self::Replica { .. } => "replica",
        }
    }

    /// Whether this is the primary.
    /// On a primary whose sync endpoint is bound: its port.
    pub(super) fn sync_port(&self) -> Option<u16> {
        match self {
            Self::Primary { server, .. } => server.bound_addr().map(|addr| addr.port()),
            Self::Replica { .. } => None,
        }
    }

    pub(super) fn is_primary(&self) -> bool {
        matches!(self, Self::Primary { .. })
    }

    /// Refuses a policy change on a replica, naming its primary.
    pub(super) fn refuse_policy_edits(&self) -> Result<(), RoleError> {
        match self {
            Self::Primary { .. } => Ok(()),
            Self::Replica { pin, .. } => Err(RoleError::SyncedPolicy {
                primary: pin.name.to_string(),
                address: pin.address.clone(),
            }),
        }
    }

    /// The signing key, on the primary.
    pub(super) fn signing_key(&self) -> Result<Arc<SigningKey>, RoleError> {
        match self {
            Self::Primary { key, .. } => Ok(Arc::clone(key)),
            Self::Replica { .. } => Err(RoleError::NotPrimary("signs bundles")),
        }
    }

    /// The pinned primary, on a replica.
    pub(super) fn pinned_primary(&self) -> Result<PrimaryPin, RoleError> {
        match self {
            Self::Replica { pin, .. } => Ok(pin.clone()),
            Self::Primary { .. } => Err(RoleError::NotReplica("takes bundles")),
        }
    }

    /// The sync endpoint, on the primary; `what` names the request refused
    /// on a replica.
    pub(super) fn server(&self, what: &'static str) -> Result<&SyncServer, RoleError> {
        match self {
            Self::Primary { server, .. } => Ok(server),
            Self::Replica { .. } => Err(RoleError::NotPrimary(what)),
        }
    }

    /// Pushes the primary's new bundle to its replicas.
    pub(super) fn publish(&self, bundle: &VerifiedBundle) {
        if let Self::Primary { server, .. } = self {
            server.publish(bundle.version(), Bytes::from(bundle.to_bytes()));
        }
    }

    /// The primary's replicas (none on a replica).
    pub(super) fn replicas(&self) -> Vec<ReplicaView> {
        match self {
            Self::Primary { server, .. } => server.replicas(),
            Self::Replica { .. } => Vec::new(),
        }
    }

    /// On a primary: its last failed pairings.
    pub(super) fn failed_pairings(&self) -> Vec<FailedPairing> {
        match self {
            Self::Primary { server, .. } => server.failed_pairings(),
            Self::Replica { .. } => Vec::new(),
        }
    }

    /// A replica's view of its primary.
    pub(super) fn primary_status(&self) -> Option<PrimaryStatus> {
        match self {
            Self::Replica { pin, link } => Some(PrimaryStatus {
                name: pin.name.clone(),
                address: pin.address.clone(),
                fingerprint: pin.fingerprint,
                health: link.health(),
            }),
            Self::Primary { .. } => None,
        }
    }

    /// Stops serving the role and tells the peers at once; the future ends
    /// when they have been told (or could not be).
    pub(super) fn close(&self) -> impl Future<Output = ()> + Send + 'static {
        let closing = match self {
            Self::Primary { server, .. } => Some(server.close()),
            Self::Replica { link, .. } => {
                link.stop();
                None
            }
        };
        async move {
            if let Some(closing) = closing {
                closing.await;
            }
        }
    }
}

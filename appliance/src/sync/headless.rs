//! A replica without a DNS daemon, for the fleet simulator
//! (`benches/fleet.rs`): it pairs with a one-time code over the real SPAKE2
//! exchange, then runs the real link, verifying every bundle with the
//! pinned key as a daemon does (signature, every part's hash, version,
//! expiry), and notes when it put each version in force. Many run in one
//! process, each dialing from its own local address.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use moat_proto::ApplianceName;
use moat_proto::sync::ReplicaStats;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::identity::{Identity, IdentityError};
use super::link::{LinkHealth, Replica, ReplicaLink};
use super::pairing::{self, CodeParseError, PairError, PairingCode};
use crate::bundle::{Bundle, PublicKey};
use crate::clock;

/// Why a headless replica could not start.
#[derive(Debug, thiserror::Error)]
pub enum HeadlessError {
    /// The name is not an appliance name.
    #[error("bad replica name: {0}")]
    Name(String),
    /// The code is not a pairing code.
    #[error(transparent)]
    Code(#[from] CodeParseError),
    /// No identity could be made.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The local endpoint could not be bound.
    #[error("bind {0}: {1}")]
    Bind(IpAddr, std::io::Error),
    /// Pairing failed.
    #[error(transparent)]
    Pair(#[from] PairError),
}

/// The bundle version in force and when it was applied.
pub type Applied = Option<(u64, Instant)>;

/// A paired replica keeping in sync; its link stops when dropped.
#[derive(Debug)]
pub struct HeadlessReplica {
    link: ReplicaLink,
    applied: watch::Receiver<Applied>,
}

impl HeadlessReplica {
    /// Pairs as `name` with the primary's sync port at `primary` using the
    /// one-time `code`, dialing from `local` (pairing and sync alike), and
    /// starts its link. Must run inside a tokio runtime.
    pub async fn pair(
        primary: SocketAddr,
        code: &str,
        name: &str,
        local: IpAddr,
    ) -> Result<Self, HeadlessError> {
        let code = PairingCode::parse(code)?;
        let name =
            ApplianceName::parse(name).map_err(|err| HeadlessError::Name(err.to_string()))?;
        let identity = Identity::generate(name.as_str())?;
        let endpoint = quinn::Endpoint::client(SocketAddr::new(local, 0))
            .map_err(|err| HeadlessError::Bind(local, err))?;
        let address = primary.to_string();
        let pin =
            pairing::pair_as_replica(&endpoint, primary, &address, &code, &identity, &name).await;
        endpoint.close(0u32.into(), b"paired");
        let pin = pin?;
        let (applied_tx, applied) = watch::channel(None);
        let verifier = Arc::new(Verifier {
            key: PublicKey(pin.signing_key),
            applied: Mutex::new(applied_tx),
        });
        let link = ReplicaLink::start_from(pin, identity, name, verifier, Some(local));
        Ok(Self { link, applied })
    }

    /// The version in force and when it was applied; changes are seen
    /// through [`watch::Receiver::changed`].
    pub fn applied(&self) -> watch::Receiver<Applied> {
        self.applied.clone()
    }

    /// How the link is doing.
    pub fn health(&self) -> LinkHealth {
        self.link.health()
    }
}

/// What a headless replica does with a bundle: verify it, keep its version.
struct Verifier {
    key: PublicKey,
    applied: Mutex<watch::Sender<Applied>>,
}

impl Replica for Verifier {
    fn running_version(&self) -> Option<u64> {
        self.applied.lock().borrow().map(|(version, _)| version)
    }

    fn apply(&self, bytes: &[u8]) -> Result<u64, String> {
        let applied = self.applied.lock();
        let running = applied.borrow().map(|(version, _)| version);
        let bundle = Bundle::parse(bytes)
            .and_then(|bundle| bundle.verify(&self.key, running, clock::unix_now()))
            .map_err(|err| err.to_string())?;
        let version = bundle.version();
        applied.send_replace(Some((version, clock::now())));
        Ok(version)
    }

    fn stats(&self) -> ReplicaStats {
        ReplicaStats::default()
    }
}

//! The primary's sync endpoint: pairs replicas that bring the one-time
//! code, and keeps every paired replica on the newest bundle. A thin async
//! shell: `pairing` and the sync protocol's `PrimarySession`, each run by
//! the one driver.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use moat_proto::ApplianceName;
use moat_proto::sync::{PrimaryMessage, PrimarySession, ReplicaMessage, ReplicaUpdate};
use parking_lot::Mutex;
use rand::TryRngCore;
use rand::rngs::OsRng;
use tokio::sync::watch;

use super::driver::{self, Session, StreamError};
use super::identity::Identity;
use super::pairing::{self, CodeBook, PairingCode, ReplicaPin};
use super::tls::{self, Admission, CLOSE_REFUSED, ClientPins, TlsError};
use crate::clock;
use crate::fleet::{Fleet, ReplicaView};
use crate::limits::Places;
use crate::store::StoreError;

/// Why the sync endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The address could not be bound.
    #[error("instance.sync {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Why one replica's sync connection ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("refused: {0}")]
    Refused(String),
}

/// The running endpoint.
#[derive(Debug)]
pub(crate) struct SyncServer {
    addr: SocketAddr,
    config: Arc<quinn::ServerConfig>,
    /// Bound only once the appliance has replicas or a pairing code.
    endpoint: Mutex<Option<quinn::Endpoint>>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    identity: Identity,
    name: ApplianceName,
    signing_key: [u8; 32],
    codes: Mutex<CodeBook>,
    fleet: Arc<Mutex<Fleet>>,
    published: watch::Sender<Option<(u64, Bytes)>>,
    connections: Mutex<HashMap<ApplianceName, quinn::Connection>>,
    failed_pairings: Mutex<VecDeque<FailedPairing>>,
    /// Connections in the handshake or pairing, by peer address.
    unauthenticated: Places<IpAddr>,
}

/// A pairing that failed, as status shows it: a code burned by wrong
/// attempts says from where they came.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct FailedPairing {
    /// The address the attempt came from.
    pub from: String,
    /// When, Unix milliseconds.
    pub unix_ms: u64,
    /// Why it failed.
    pub reason: String,
}

/// Failed pairings kept for status, newest last.
const FAILED_PAIRINGS_KEPT: usize = 8;

impl SyncServer {
    /// Prepares the endpoint for `addr`, unbound: an appliance with no
    /// replicas and no pairing code has no sync port open.
    pub(crate) fn new(
        addr: SocketAddr,
        identity: Identity,
        name: &ApplianceName,
        signing_key: [u8; 32],
        fleet: Arc<Mutex<Fleet>>,
    ) -> Result<Self, ServerError> {
        let config = Arc::new(tls::server_config(&identity)?);
        let shared = Arc::new(Shared {
            identity,
            name: name.clone(),
            signing_key,
            codes: Mutex::new(CodeBook::new()),
            fleet,
            published: watch::Sender::new(None),
            connections: Mutex::default(),
            failed_pairings: Mutex::default(),
            unauthenticated: Places::new(MAX_UNAUTHENTICATED, MAX_UNAUTHENTICATED_PER_ADDRESS),
        });
        Ok(Self {
            addr,
            config,
            endpoint: Mutex::new(None),
            shared,
        })
    }

    /// Binds the endpoint, if it is not bound yet, and starts accepting
    /// pairing and sync connections; the address bound. Must run inside a
    /// tokio runtime.
    pub(crate) fn bind(&self) -> Result<SocketAddr, ServerError> {
        let mut endpoint = self.endpoint.lock();
        let bound = match &*endpoint {
            Some(bound) => bound.clone(),
            None => {
                let addr = self.addr;
                let bound = quinn::Endpoint::server((*self.config).clone(), addr)
                    .map_err(|source| ServerError::Bind { addr, source })?;
                tokio::spawn(accept_loop(bound.clone(), Arc::clone(&self.shared)));
                endpoint.insert(bound).clone()
            }
        };
        bound.local_addr().map_err(|source| ServerError::Bind {
            addr: self.addr,
            source,
        })
    }

    /// The address the endpoint is bound to, while it is.
    pub(crate) fn bound_addr(&self) -> Option<SocketAddr> {
        let endpoint = self.endpoint.lock();
        endpoint.as_ref()?.local_addr().ok()
    }

    /// Closes the endpoint when nothing needs it any more: no replica, no
    /// pairing code that can still be tried, no pairing under way. True
    /// when it was bound and is closed now.
    pub(crate) fn close_if_idle(&self) -> bool {
        let mut endpoint = self.endpoint.lock();
        let shared = &self.shared;
        let idle = endpoint.is_some()
            && shared.codes.lock().expires(clock::now()).is_none()
            && shared.unauthenticated.held() == 0
            && !shared.fleet.lock().has_replicas();
        match endpoint.take_if(|_| idle) {
            Some(closing) => {
                closing.close(0u32.into(), b"no pairing code and no replicas");
                true
            }
            None => false,
        }
    }

    /// Issues a one-time pairing code valid for `valid` (replacing any
    /// earlier one).
    pub(crate) fn issue_code(&self, valid: Duration) -> PairingCode {
        let mut rng = OsRng.unwrap_err();
        self.shared
            .codes
            .lock()
            .issue(clock::now(), valid, &mut rng)
            .0
    }

    /// Makes `bundle` the one every replica should run, and pushes it to
    /// the connected ones.
    pub(crate) fn publish(&self, version: u64, bundle: Bytes) {
        self.shared.fleet.lock().set_published(version);
        self.shared.published.send_replace(Some((version, bundle)));
    }

    /// The replicas as the primary sees them.
    pub(crate) fn replicas(&self) -> Vec<ReplicaView> {
        self.shared.fleet.lock().list(clock::unix_now_ms())
    }

    /// The last failed pairings, oldest first.
    pub(crate) fn failed_pairings(&self) -> Vec<FailedPairing> {
        self.shared.failed_pairings.lock().iter().cloned().collect()
    }

    /// Refuses replica `name` from now on and closes its connection; false
    /// when no replica has that name.
    pub(crate) fn revoke(&self, name: &str) -> Result<bool, StoreError> {
        let revoked = self.shared.fleet.lock().revoke(name)?;
        if let Some(connection) = self.shared.connections.lock().remove(name) {
            connection.close(CLOSE_REFUSED, b"revoked by the primary");
        }
        Ok(revoked)
    }

    /// Stops accepting and closes every connection; the future ends when
    /// the peers have been told, or after a second.
    pub(crate) fn close(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let endpoint = self.endpoint.lock().clone();
        if let Some(endpoint) = &endpoint {
            endpoint.close(0u32.into(), b"primary shutting down");
        }
        async move {
            if let Some(endpoint) = endpoint {
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            }
        }
    }
}

/// Connections not yet authenticated (in the handshake, or pairing) at
/// most, in all and from one address. Past `RETRY_ABOVE` of them, a new
/// peer must first prove its address (a QUIC Retry) before it costs a
/// handshake.
const MAX_UNAUTHENTICATED: usize = 64;
const MAX_UNAUTHENTICATED_PER_ADDRESS: usize = 4;
const RETRY_ABOVE: usize = 16;

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    let unauthenticated = &shared.unauthenticated;
    while let Some(incoming) = endpoint.accept().await {
        if unauthenticated.held() >= RETRY_ABOVE
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            let _ = incoming.retry();
            continue;
        }
        let peer = incoming.remote_address().ip().to_canonical();
        let place = match unauthenticated.take(peer) {
            Ok(place) => place,
            Err(refused) => {
                tracing::debug!(%peer, ?refused, "sync connection refused: too many unauthenticated");
                incoming.refuse();
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(err) => {
                    tracing::debug!(error = %err, "sync handshake failed");
                    return;
                }
            };
            let fleet = Arc::clone(&shared.fleet);
            let pins =
                ClientPins::new(move |fingerprint| fleet.lock().admit(fingerprint).is_some());
            match tls::admit(&connection, &pins) {
                Ok(Admission::Pairing) => {
                    shared.pair(&connection).await;
                    drop(place);
                }
                Ok(Admission::Sync { replica }) => {
                    drop(place);
                    let name = shared.fleet.lock().admit(&replica);
                    if let Some(name) = name {
                        shared.serve(connection, name).await;
                    }
                }
                Err(err) => {
                    tracing::warn!(peer = %connection.remote_address(), error = %err, "sync connection refused")
                }
            }
        });
    }
}

impl Shared {
    async fn pair(&self, connection: &quinn::Connection) {
        let peer = connection.remote_address();
        let paired = pairing::accept_pairing(
            connection,
            &self.codes,
            &self.identity,
            &self.name,
            self.signing_key,
            |pin| self.pin(pin),
        )
        .await;
        match paired {
            Ok(pin) => tracing::info!(replica = %pin.name, %peer, "paired a replica"),
            Err(err) => {
                tracing::warn!(%peer, error = %err, "pairing failed");
                let mut failed = self.failed_pairings.lock();
                if failed.len() == FAILED_PAIRINGS_KEPT {
                    failed.pop_front();
                }
                failed.push_back(FailedPairing {
                    from: peer.to_string(),
                    unix_ms: clock::unix_now_ms(),
                    reason: err.to_string(),
                });
            }
        }
    }

    /// Pins a replica that proved the code; on failure, the reason the
    /// replica is told.
    fn pin(&self, pin: &ReplicaPin) -> Result<(), String> {
        self.fleet
            .lock()
            .pin(pin.name.clone(), pin.fingerprint)
            .map_err(|err| {
                tracing::error!(replica = %pin.name, error = %err, "cannot pin the replica");
                format!("cannot store the pin: {err}")
            })
    }

    async fn serve(&self, connection: quinn::Connection, name: ApplianceName) {
        let address = connection.remote_address().to_string();
        self.fleet
            .lock()
            .connected(name.as_str(), address, clock::unix_now_ms());
        let replaced = self
            .connections
            .lock()
            .insert(name.clone(), connection.clone());
        if let Some(old) = replaced {
            old.close(0u32.into(), b"replaced by a newer connection");
        }
        tracing::info!(replica = %name, "replica connected");
        let ended = self.sync(&connection, &name).await;
        let mut connections = self.connections.lock();
        if connections
            .get(&name)
            .is_some_and(|current| current.stable_id() == connection.stable_id())
        {
            connections.remove(&name);
        }
        drop(connections);
        let error = ended.err().map(|err| err.to_string());
        tracing::info!(replica = %name, error = ?error, "replica disconnected");
        if let Err(err) = self
            .fleet
            .lock()
            .disconnected(name.as_str(), error, clock::unix_now_ms())
        {
            tracing::error!(error = %err, "cannot record the replica's state");
        }
    }

    async fn sync(
        &self,
        connection: &quinn::Connection,
        name: &ApplianceName,
    ) -> Result<(), SessionError> {
        let (mut send, mut recv) = connection.accept_bi().await?;
        let mut side = PrimarySide::new(name.clone(), self.published.subscribe(), &self.fleet);
        driver::drive(&mut side, &mut send, &mut recv).await
    }
}

/// The primary's end of one replica's sync stream, as the driver runs it:
/// records what the replica reports in the fleet, and hands every newly
/// published bundle to the session.
pub(crate) struct PrimarySide<'a> {
    session: PrimarySession,
    published: watch::Receiver<Option<(u64, Bytes)>>,
    fleet: &'a Mutex<Fleet>,
    failed: Option<SessionError>,
    unpublished: bool,
}

impl<'a> PrimarySide<'a> {
    /// The session of replica `name`, which starts from the bundle
    /// published now and follows `published`.
    pub(crate) fn new(
        name: ApplianceName,
        mut published: watch::Receiver<Option<(u64, Bytes)>>,
        fleet: &'a Mutex<Fleet>,
    ) -> Self {
        let session = PrimarySession::new(name, published.borrow_and_update().clone());
        Self {
            session,
            published,
            fleet,
            failed: None,
            unpublished: false,
        }
    }
}

impl Session for PrimarySide<'_> {
    type Incoming = ReplicaMessage;
    type Outgoing = PrimaryMessage;
    type Output = ();
    type Error = SessionError;

    fn poll_transmit(&mut self) -> Option<PrimaryMessage> {
        self.session.poll_transmit()
    }

    fn poll_done(&mut self) -> Option<Result<(), SessionError>> {
        if let Some(failed) = self.failed.take() {
            return Some(Err(failed));
        }
        if self.session.is_refused() {
            return Some(Err(SessionError::Refused(
                "the session refused the replica".into(),
            )));
        }
        self.unpublished.then_some(Ok(()))
    }

    async fn handle(&mut self, message: ReplicaMessage) {
        if let Some(update) = self.session.handle(message, clock::now())
            && let Err(err) = record(&mut self.fleet.lock(), self.session.name(), update)
        {
            self.failed = Some(err.into());
        }
    }

    fn handle_end(&mut self) -> Result<(), SessionError> {
        Ok(())
    }

    async fn outside(&mut self) {
        if self.published.changed().await.is_err() {
            self.unpublished = true;
            return;
        }
        if let Some((version, bundle)) = self.published.borrow_and_update().clone() {
            self.session.publish(version, bundle);
        }
    }
}

/// Records what replica `name` reported in the fleet.
fn record(
    fleet: &mut Fleet,
    name: &ApplianceName,
    update: ReplicaUpdate,
) -> Result<(), StoreError> {
    let name = name.as_str();
    match update {
        ReplicaUpdate::Hello { bundle_version } => fleet.hello(name, bundle_version),
        ReplicaUpdate::Applied { version } => fleet.applied(name, version)?,
        ReplicaUpdate::Rejected { version, reason } => {
            tracing::warn!(replica = %name, version, %reason, "replica rejected a bundle");
            fleet.rejected(name, version, &reason)?;
        }
        ReplicaUpdate::Heartbeat {
            stats,
            bundle_version,
        } => fleet.heartbeat(name, stats, bundle_version, clock::unix_now_ms()),
        ReplicaUpdate::Refused { reason } => {
            tracing::warn!(replica = %name, %reason, "replica refused");
        }
    }
    Ok(())
}

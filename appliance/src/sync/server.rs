//! The primary's sync endpoint: pairs replicas that bring the one-time
//! code, and keeps every paired replica on the newest bundle. A thin async
//! shell over `pairing` and `protocol::PrimarySession`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::watch;

use super::identity::Identity;
use super::pairing::{self, CodeBook, PairingCode};
use super::protocol::{
    FrameDecoder, PrimarySession, ProtocolError, ReplicaMessage, ReplicaUpdate, encode_frame,
};
use super::tls::{self, Admission, CLOSE_REFUSED, ClientPins, TlsError};
use crate::clock;
use crate::fleet::{Fleet, ReplicaView};
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
enum SessionError {
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("refused: {0}")]
    Refused(String),
}

/// The running endpoint.
#[derive(Debug)]
pub struct SyncServer {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    identity: Identity,
    name: String,
    signing_key: [u8; 32],
    codes: Mutex<CodeBook>,
    fleet: Arc<Mutex<Fleet>>,
    published: watch::Sender<Option<(u64, Bytes)>>,
    connections: Mutex<HashMap<String, quinn::Connection>>,
}

impl SyncServer {
    /// Binds `addr` and starts accepting pairing and sync connections.
    /// Must run inside a tokio runtime.
    pub fn start(
        addr: SocketAddr,
        identity: Identity,
        name: &str,
        signing_key: [u8; 32],
        fleet: Arc<Mutex<Fleet>>,
    ) -> Result<Self, ServerError> {
        let config = tls::server_config(&identity)?;
        let endpoint = quinn::Endpoint::server(config, addr)
            .map_err(|source| ServerError::Bind { addr, source })?;
        let shared = Arc::new(Shared {
            identity,
            name: name.to_owned(),
            signing_key,
            codes: Mutex::new(CodeBook::new()),
            fleet,
            published: watch::Sender::new(None),
            connections: Mutex::default(),
        });
        tokio::spawn(accept_loop(endpoint.clone(), Arc::clone(&shared)));
        Ok(Self { endpoint, shared })
    }

    /// The address bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Issues a one-time pairing code valid for `valid` (replacing any
    /// earlier one).
    pub fn issue_code(&self, valid: Duration) -> PairingCode {
        self.shared.codes.lock().issue(clock::now(), valid).0
    }

    /// Makes `bundle` the one every replica should run, and pushes it to
    /// the connected ones.
    pub fn publish(&self, version: u64, bundle: Bytes) {
        self.shared.fleet.lock().set_published(version);
        self.shared.published.send_replace(Some((version, bundle)));
    }

    /// The replicas as the primary sees them.
    pub fn replicas(&self) -> Vec<ReplicaView> {
        self.shared.fleet.lock().list(clock::unix_now_ms())
    }

    /// Refuses replica `name` from now on and closes its connection; false
    /// when no replica has that name.
    pub fn revoke(&self, name: &str) -> Result<bool, StoreError> {
        let revoked = self.shared.fleet.lock().revoke(name)?;
        if let Some(connection) = self.shared.connections.lock().remove(name) {
            connection.close(CLOSE_REFUSED, b"revoked by the primary");
        }
        Ok(revoked)
    }

    /// Stops accepting and closes every connection; the future ends when
    /// the peers have been told, or after a second.
    pub fn close(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.endpoint.close(0u32.into(), b"primary shutting down");
        let endpoint = self.endpoint.clone();
        async move {
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
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
            let pins = ClientPins::new(move |fingerprint| {
                fleet.lock().admit(&fingerprint.to_string()).is_some()
            });
            match tls::admit(&connection, &pins) {
                Ok(Admission::Pairing) => shared.pair(&connection).await,
                Ok(Admission::Sync { replica }) => {
                    let name = shared.fleet.lock().admit(&replica.to_string());
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
        )
        .await;
        match paired {
            Ok(pin) => match self
                .fleet
                .lock()
                .pin(&pin.name, &pin.fingerprint.to_string())
            {
                Ok(()) => tracing::info!(replica = %pin.name, %peer, "paired a replica"),
                Err(err) => {
                    tracing::error!(replica = %pin.name, error = %err, "cannot pin the replica")
                }
            },
            Err(err) => tracing::warn!(%peer, error = %err, "pairing failed"),
        }
    }

    async fn serve(&self, connection: quinn::Connection, name: String) {
        let address = connection.remote_address().to_string();
        self.fleet
            .lock()
            .connected(&name, address, clock::unix_now_ms());
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
            .disconnected(&name, error, clock::unix_now_ms())
        {
            tracing::error!(error = %err, "cannot record the replica's state");
        }
    }

    async fn sync(&self, connection: &quinn::Connection, name: &str) -> Result<(), SessionError> {
        let (mut send, mut recv) = connection.accept_bi().await?;
        let mut published = self.published.subscribe();
        let mut session = PrimarySession::new(name, published.borrow_and_update().clone());
        let mut decoder = FrameDecoder::<ReplicaMessage>::new();
        let mut buffer = vec![0; 16 << 10];
        loop {
            while let Some(message) = session.poll_transmit() {
                send.write_all(&encode_frame(&message)?).await?;
            }
            if session.is_refused() {
                let _ = send.finish();
                return Err(SessionError::Refused(
                    "the session refused the replica".into(),
                ));
            }
            tokio::select! {
                read = recv.read(&mut buffer) => {
                    let Some(len) = read? else {
                        return Ok(());
                    };
                    let mut next = decoder.push(&buffer[..len])?;
                    while let Some(message) = next {
                        if let Some(update) = session.handle(message, clock::now()) {
                            self.record(name, update)?;
                        }
                        next = decoder.next_message()?;
                    }
                }
                changed = published.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                    if let Some((version, bundle)) = published.borrow_and_update().clone() {
                        session.publish(version, bundle);
                    }
                }
            }
        }
    }

    fn record(&self, name: &str, update: ReplicaUpdate) -> Result<(), SessionError> {
        let mut fleet = self.fleet.lock();
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
}

//! A replica's link to its primary: dials it (so it works behind NAT),
//! keeps one QUIC connection open, applies every bundle it is sent, and
//! sends heartbeats with its stats; reconnects with backoff and jitter
//! when the primary is away. A thin async shell over
//! `protocol::ReplicaSession`.

use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::identity::Identity;
use super::pairing::PrimaryPin;
use super::protocol::{
    Backoff, FrameDecoder, HEARTBEAT_INTERVAL, PrimaryMessage, ProtocolError, ReplicaEvent,
    ReplicaSession, ReplicaStats, encode_frame,
};
use super::tls::{self, Pins, TlsError};
use crate::clock;

/// What the link needs from the appliance it serves.
pub trait Replica: Send + Sync + 'static {
    /// The bundle version in force.
    fn running_version(&self) -> Option<u64>;
    /// Verifies and applies a bundle; its version, or why it was refused.
    fn apply(&self, bundle: &[u8]) -> Result<u64, String>;
    /// The counters sent with each heartbeat.
    fn stats(&self) -> ReplicaStats;
}

/// How the link is doing, for status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LinkHealth {
    /// Connected to the primary now.
    pub connected: bool,
    /// Why the last connection failed or ended.
    pub last_error: Option<String>,
    /// When a bundle was last applied, Unix milliseconds.
    pub last_sync_unix_ms: Option<u64>,
}

/// Why a connection to the primary ended.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    #[error("the primary closed the sync stream")]
    Closed,
    #[error("the primary refused this replica: {0}")]
    Refused(String),
}

/// The running link; stops when dropped.
#[derive(Debug)]
pub struct ReplicaLink {
    stop: watch::Sender<bool>,
    health: Arc<Mutex<LinkHealth>>,
}

impl ReplicaLink {
    /// Starts keeping this replica (`identity`, `name`) in sync with the
    /// primary in `pin`. Must run inside a tokio runtime.
    pub fn start(
        pin: PrimaryPin,
        identity: Identity,
        name: String,
        replica: Arc<dyn Replica>,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let health = Arc::new(Mutex::new(LinkHealth::default()));
        let link = Link {
            pin,
            identity,
            name,
            replica,
            health: Arc::clone(&health),
        };
        tokio::spawn(link.run(stopped));
        Self { stop, health }
    }

    /// How the link is doing.
    pub fn health(&self) -> LinkHealth {
        self.health.lock().clone()
    }

    /// Stops the link (as dropping it does).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }
}

impl Drop for ReplicaLink {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Link {
    pin: PrimaryPin,
    identity: Identity,
    name: String,
    replica: Arc<dyn Replica>,
    health: Arc<Mutex<LinkHealth>>,
}

impl Link {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        loop {
            let ended = tokio::select! {
                ended = self.connect_and_sync(&mut backoff) => ended,
                _ = stopped.changed() => return,
            };
            let error = ended.err().map(|err| err.to_string());
            tracing::warn!(primary = %self.pin.name, address = %self.pin.address, error = ?error, "sync link down; retrying");
            {
                let mut health = self.health.lock();
                health.connected = false;
                health.last_error = error;
            }
            let delay = backoff.next_delay(clock::now(), &mut rand::rng());
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = stopped.changed() => return,
            }
        }
    }

    async fn connect_and_sync(&self, backoff: &mut Backoff) -> Result<(), LinkError> {
        let address = tokio::net::lookup_host(&self.pin.address)
            .await?
            .next()
            .ok_or_else(|| LinkError::Resolve(self.pin.address.clone()))?;
        let endpoint = tls::client_endpoint(address)?;
        let config = tls::client_config(&self.identity, Pins::only(self.pin.fingerprint))?;
        let connection = endpoint
            .connect_with(config, address, tls::SERVER_NAME)?
            .await?;
        backoff.connected(clock::now());
        {
            let mut health = self.health.lock();
            health.connected = true;
            health.last_error = None;
        }
        tracing::info!(primary = %self.pin.name, %address, "sync link up");
        let (mut send, mut recv) = connection.open_bi().await?;
        let mut session = ReplicaSession::new(&self.name, self.replica.running_version());
        send.write_all(&encode_frame(&session.connected(clock::now()))?)
            .await?;
        let mut decoder = FrameDecoder::<PrimaryMessage>::new();
        let mut buffer = vec![0; 64 << 10];
        loop {
            while let Some(message) = session.poll_transmit() {
                send.write_all(&encode_frame(&message)?).await?;
            }
            let deadline = session
                .poll_timeout()
                .unwrap_or_else(|| clock::now() + HEARTBEAT_INTERVAL);
            tokio::select! {
                read = recv.read(&mut buffer) => {
                    let Some(len) = read? else {
                        decoder.finish()?;
                        return Err(LinkError::Closed);
                    };
                    let mut next = decoder.push(&buffer[..len])?;
                    while let Some(message) = next {
                        for event in session.handle(message, clock::now()) {
                            self.on_event(&mut session, event).await?;
                        }
                        next = decoder.next_message()?;
                    }
                }
                () = tokio::time::sleep_until(deadline.into()) => {
                    session.handle_timeout(clock::now(), self.replica.stats());
                }
            }
        }
    }

    async fn on_event(
        &self,
        session: &mut ReplicaSession,
        event: ReplicaEvent,
    ) -> Result<(), LinkError> {
        match event {
            ReplicaEvent::Apply { version, bytes } => {
                let replica = Arc::clone(&self.replica);
                let applied = tokio::task::spawn_blocking(move || replica.apply(&bytes)).await;
                match applied {
                    Ok(Ok(applied)) => {
                        session.applied(applied);
                        self.health.lock().last_sync_unix_ms = Some(clock::unix_now_ms());
                    }
                    Ok(Err(reason)) => {
                        tracing::error!(version, %reason, "bundle from the primary refused");
                        session.rejected(version, reason);
                    }
                    Err(err) => session.rejected(version, err.to_string()),
                }
                Ok(())
            }
            ReplicaEvent::Refused { reason } => Err(LinkError::Refused(reason)),
        }
    }
}

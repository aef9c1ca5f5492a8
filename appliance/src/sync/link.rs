//! A replica's link to its primary: dials it (so it works behind NAT),
//! keeps one QUIC connection open, applies every bundle it is sent, and
//! sends heartbeats with its stats; reconnects with backoff and jitter
//! when the primary is away; asks only hourly once the primary has refused
//! it (revoked, or not paired with it). A thin async shell: the sync
//! protocol's `ReplicaSession`, run by the one driver.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moat_proto::ApplianceName;
use moat_proto::backoff::Backoff;
use moat_proto::sync::{
    PrimaryMessage, ReplicaEvent, ReplicaMessage, ReplicaSession, ReplicaStats,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::driver::{self, Session, StreamError};
use super::identity::Identity;
use super::pairing::PrimaryPin;
use super::tls::{self, Pins, TlsError};
use crate::clock;
use crate::stats::StatsSnapshot;

/// What the link needs from the appliance it serves.
pub(crate) trait Replica: Send + Sync + 'static {
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
    /// The primary refused this replica (revoked it, or never paired it):
    /// it serves its last bundle and asks again only hourly.
    #[serde(default)]
    pub revoked: bool,
}

/// How long a replica its primary refused waits before asking again.
const REFUSED_RETRY: Duration = Duration::from_secs(60 * 60);

/// Why a connection to the primary ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
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
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("the primary closed the sync stream")]
    Closed,
    #[error("the primary refused this replica: {0}")]
    Refused(String),
}

/// The running link; stops when dropped.
#[derive(Debug)]
pub(crate) struct ReplicaLink {
    stop: watch::Sender<bool>,
    health: Arc<Mutex<LinkHealth>>,
}

impl ReplicaLink {
    /// Starts keeping this replica (`identity`, `name`) in sync with the
    /// primary in `pin`. Must run inside a tokio runtime.
    pub(crate) fn start(
        pin: PrimaryPin,
        identity: Identity,
        name: ApplianceName,
        replica: Arc<dyn Replica>,
    ) -> Self {
        Self::start_from(pin, identity, name, replica, None)
    }

    /// As [`Self::start`], dialing from `local` when given (the fleet
    /// simulator gives each replica its own loopback address).
    pub(crate) fn start_from(
        pin: PrimaryPin,
        identity: Identity,
        name: ApplianceName,
        replica: Arc<dyn Replica>,
        local: Option<std::net::IpAddr>,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let health = Arc::new(Mutex::new(LinkHealth::default()));
        let link = Link {
            pin,
            identity,
            name,
            replica,
            health: Arc::clone(&health),
            local,
        };
        tokio::spawn(link.run(stopped));
        Self { stop, health }
    }

    /// How the link is doing.
    pub(crate) fn health(&self) -> LinkHealth {
        self.health.lock().clone()
    }

    /// Stops the link (as dropping it does).
    pub(crate) fn stop(&self) {
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
    name: ApplianceName,
    replica: Arc<dyn Replica>,
    health: Arc<Mutex<LinkHealth>>,
    local: Option<std::net::IpAddr>,
}

impl Link {
    async fn run(self, mut stopped: watch::Receiver<bool>) {
        let mut backoff = Backoff::new();
        loop {
            let ended = tokio::select! {
                ended = self.connect_and_sync(&mut backoff) => ended,
                _ = stopped.changed() => return,
            };
            let revoked = matches!(ended, Err(LinkError::Refused(_)));
            let error = ended.err().map(|err| err.to_string());
            let delay = if revoked {
                REFUSED_RETRY
            } else {
                backoff.next_delay(clock::now(), &mut rand::rng())
            };
            tracing::warn!(primary = %self.pin.name, address = %self.pin.address, error = ?error, ?delay, "sync link down; retrying");
            {
                let mut health = self.health.lock();
                health.connected = false;
                health.last_error = error;
                health.revoked = revoked;
            }
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
        let endpoint = match self.local {
            Some(local) => quinn::Endpoint::client(std::net::SocketAddr::new(local, 0))?,
            None => tls::client_endpoint(address)?,
        };
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
        let ended = self.sync_over(&connection).await;
        match refusal(&connection) {
            Some(reason) => Err(LinkError::Refused(reason)),
            None => ended,
        }
    }

    async fn sync_over(&self, connection: &quinn::Connection) -> Result<(), LinkError> {
        let (mut send, mut recv) = connection.open_bi().await?;
        let session = ReplicaSession::new(self.name.clone(), self.replica.running_version());
        let mut side = ReplicaSide::new(session, Arc::clone(&self.replica), &self.health);
        driver::drive(&mut side, &mut send, &mut recv).await
    }
}

/// Why the primary closed `connection` refusing this replica, if it did.
fn refusal(connection: &quinn::Connection) -> Option<String> {
    match connection.close_reason()? {
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == tls::CLOSE_REFUSED =>
        {
            Some(String::from_utf8_lossy(&close.reason).into_owned())
        }
        _ => None,
    }
}

/// The replica's end of the sync stream, as the driver runs it: applies
/// every bundle offered (off the async threads), and sends heartbeats with
/// the appliance's stats.
pub(crate) struct ReplicaSide<'a> {
    session: ReplicaSession,
    hello: Option<ReplicaMessage>,
    replica: Arc<dyn Replica>,
    health: &'a Mutex<LinkHealth>,
    refused: Option<String>,
}

impl<'a> ReplicaSide<'a> {
    /// Starts `session` (its hello goes first) for `replica`, reporting in
    /// `health`.
    pub(crate) fn new(
        mut session: ReplicaSession,
        replica: Arc<dyn Replica>,
        health: &'a Mutex<LinkHealth>,
    ) -> Self {
        let hello = session.connected(tokio::time::Instant::now().into_std());
        Self {
            session,
            hello: Some(hello),
            replica,
            health,
            refused: None,
        }
    }

    async fn apply(&mut self, version: u64, bytes: bytes::Bytes) {
        let replica = Arc::clone(&self.replica);
        let applied = tokio::task::spawn_blocking(move || replica.apply(&bytes)).await;
        match applied {
            Ok(Ok(applied)) => {
                self.session.applied(applied);
                self.health.lock().last_sync_unix_ms = Some(clock::unix_now_ms());
            }
            Ok(Err(reason)) => {
                tracing::error!(version, %reason, "bundle from the primary refused");
                self.session.rejected(version, reason);
            }
            Err(err) => self.session.rejected(version, err.to_string()),
        }
    }
}

impl Session for ReplicaSide<'_> {
    type Incoming = PrimaryMessage;
    type Outgoing = ReplicaMessage;
    type Output = ();
    type Error = LinkError;

    fn poll_transmit(&mut self) -> Option<ReplicaMessage> {
        self.hello.take().or_else(|| self.session.poll_transmit())
    }

    fn poll_done(&mut self) -> Option<Result<(), LinkError>> {
        self.refused
            .take()
            .map(|reason| Err(LinkError::Refused(reason)))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.session.poll_timeout()
    }

    async fn handle(&mut self, message: PrimaryMessage) {
        for event in self.session.handle(message, clock::now()) {
            match event {
                ReplicaEvent::Apply { version, bytes } => self.apply(version, bytes).await,
                ReplicaEvent::Refused { reason } => self.refused = Some(reason),
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.session.handle_timeout(now, self.replica.stats());
    }

    fn handle_end(&mut self) -> Result<(), LinkError> {
        Err(LinkError::Closed)
    }
}

/// The counters of a stats snapshot; the shell adds the cache size and
/// uptime.
impl From<&StatsSnapshot> for ReplicaStats {
    fn from(snapshot: &StatsSnapshot) -> Self {
        Self {
            queries: snapshot.queries,
            blocked: snapshot.blocked,
            local: snapshot.local,
            forwarded: snapshot.forwarded,
            failed: snapshot.failed,
            rejected: snapshot.rejected,
            cache_hits: snapshot.cache_hits,
            cache_misses: snapshot.cache_misses,
            stale_served: snapshot.stale_served,
            upstream_errors: snapshot.upstream_errors,
            shed: snapshot.shed,
            limited: snapshot.limited,
            cache_entries: 0,
            uptime_secs: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_come_from_a_snapshot() {
        let snapshot: StatsSnapshot = serde_json::from_value(serde_json::json!({
            "queries": 10, "by_type": [], "by_rcode": [], "cache_hits": 4,
            "cache_misses": 6, "stale_served": 1, "forwarded": 3, "blocked": 2,
            "rejected": 0, "failed": 1, "local": 1, "shed": 7, "limited": 8, "upstream_errors": 5,
            "upstream_latency": {"bounds_us": [], "counts": [], "sum_us": 0},
            "top_names": [], "top_blocked": [], "top_clients": []
        }))
        .unwrap();
        let stats = ReplicaStats::from(&snapshot);
        assert_eq!(
            (
                stats.queries,
                stats.blocked,
                stats.cache_hits,
                stats.upstream_errors,
                stats.shed,
                stats.limited
            ),
            (10, 2, 4, 5, 7, 8)
        );
    }
}

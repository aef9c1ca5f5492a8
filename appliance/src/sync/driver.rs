//! The one driver: runs any session (either side of sync, either side of
//! pairing) over a stream pair — a quinn `SendStream`/`RecvStream`, or
//! `tokio::io::duplex` in tests. It moves frames both ways, arms the
//! session's timer, and waits on the session's outside events; the
//! session decides everything else.

use std::future::Future;
use std::time::Instant;

use moat_proto::frame::{FrameDecoder, FrameError, Message, encode_frame};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes read from the stream at a time.
const READ_CHUNK_BYTES: usize = 64 << 10;

/// Why a stream carrying a session failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading or writing failed (the connection was lost, reset, ...).
    #[error("stream: {0}")]
    Io(#[from] std::io::Error),
    /// A frame could not be encoded or decoded.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// A sans-IO session with its shell's duties, as the driver runs it.
///
/// The driver's order: send every [`Self::poll_transmit`] message; if
/// [`Self::poll_done`] has a result, end the stream and return it;
/// otherwise wait for a message ([`Self::handle`]), the end of the stream
/// ([`Self::handle_end`]), the deadline ([`Self::handle_timeout`]) or an
/// outside event ([`Self::outside`]), and start over.
pub(crate) trait Session {
    /// What the peer sends.
    type Incoming: Message;
    /// What this side sends.
    type Outgoing: Message;
    /// What a finished session yields.
    type Output;
    /// Why a session failed.
    type Error: From<StreamError>;

    /// The next message to send, if any.
    fn poll_transmit(&mut self) -> Option<Self::Outgoing>;

    /// The session's result, once it is over.
    fn poll_done(&mut self) -> Option<Result<Self::Output, Self::Error>>;

    /// When [`Self::handle_timeout`] is next due, if ever.
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    /// A message from the peer.
    fn handle(&mut self, message: Self::Incoming) -> impl Future<Output = ()> + Send;

    /// The deadline of [`Self::poll_timeout`] passed.
    fn handle_timeout(&mut self, _now: Instant) {}

    /// The peer ended the stream between frames.
    fn handle_end(&mut self) -> Result<Self::Output, Self::Error>;

    /// Resolves when something outside the stream needs the session (a
    /// published bundle); never, by default.
    fn outside(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

/// Runs `session` over `send` and `recv` until it is done, the peer ends
/// the stream, or the stream fails. The write half is shut down when the
/// session finishes.
pub(crate) async fn drive<S, W, R>(
    session: &mut S,
    send: &mut W,
    recv: &mut R,
) -> Result<S::Output, S::Error>
where
    S: Session,
    W: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    let mut decoder = FrameDecoder::<S::Incoming>::new();
    let mut buffer = vec![0; READ_CHUNK_BYTES];
    loop {
        while let Some(message) = session.poll_transmit() {
            let frame = encode_frame(&message).map_err(StreamError::from)?;
            send.write_all(&frame).await.map_err(StreamError::from)?;
        }
        if let Some(done) = session.poll_done() {
            let _ = send.shutdown().await;
            return done;
        }
        let deadline = session.poll_timeout();
        tokio::select! {
            read = recv.read(&mut buffer) => {
                let len = read.map_err(StreamError::from)?;
                if len == 0 {
                    decoder.finish().map_err(StreamError::from)?;
                    return session.handle_end();
                }
                let mut next = decoder.push(&buffer[..len]).map_err(StreamError::from)?;
                while let Some(message) = next {
                    session.handle(message).await;
                    next = decoder.next_message().map_err(StreamError::from)?;
                }
            }
            () = sleep_until(deadline) => session.handle_timeout(tokio_now()),
            () = session.outside() => {}
        }
    }
}

/// Now on tokio's clock: the real one, unless a test paused it (then the
/// deadlines the driver sleeps to are what a session sees as now).
fn tokio_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use moat_proto::sync::{PrimaryMessage, ReplicaSession, ReplicaStats};
    use moat_proto::{ApplianceName, Fingerprint};
    use parking_lot::Mutex;
    use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
    use tokio::sync::watch;

    use super::*;
    use crate::fleet::{Fleet, ReplicaView};
    use crate::store::DataDir;
    use crate::sync::link::{LinkError, LinkHealth, Replica, ReplicaSide};
    use crate::sync::server::PrimarySide;

    /// Bytes the in-memory pipe holds each way: frames often cross it in
    /// pieces, yet every message here fits, so neither side blocks writing
    /// while the other does.
    const PIPE_BYTES: usize = 64;
    const HEARTBEAT: Duration = Duration::from_millis(20);
    const LIMIT: Duration = Duration::from_secs(20);

    fn kitchen() -> ApplianceName {
        ApplianceName::parse("kitchen").unwrap()
    }

    /// A replica appliance whose bundles are `v<version>`; `bad` fails to
    /// verify.
    #[derive(Default)]
    struct FakeReplica {
        applied: Mutex<Vec<u64>>,
    }

    impl Replica for FakeReplica {
        fn running_version(&self) -> Option<u64> {
            self.applied.lock().last().copied()
        }

        fn apply(&self, bundle: &[u8]) -> Result<u64, String> {
            let version = std::str::from_utf8(bundle)
                .ok()
                .and_then(|text| text.strip_prefix('v')?.parse().ok())
                .ok_or("bad signature")?;
            self.applied.lock().push(version);
            Ok(version)
        }

        fn stats(&self) -> ReplicaStats {
            ReplicaStats {
                queries: 42,
                ..ReplicaStats::default()
            }
        }
    }

    type Halves = (ReadHalf<DuplexStream>, WriteHalf<DuplexStream>);

    fn pipe() -> (Halves, Halves) {
        let (a, b) = tokio::io::duplex(PIPE_BYTES);
        (tokio::io::split(a), tokio::io::split(b))
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let waited = tokio::time::timeout(LIMIT, async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        waited
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
    }

    fn view(fleet: &Mutex<Fleet>) -> ReplicaView {
        fleet
            .lock()
            .view("kitchen", crate::clock::unix_now_ms())
            .unwrap()
    }

    #[tokio::test]
    async fn one_driver_runs_a_primary_and_a_replica_session() {
        let root = std::env::temp_dir().join(format!("moat-driver-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let fleet = Mutex::new(Fleet::load(&DataDir::open(&root).unwrap()).unwrap());
        fleet.lock().pin(kitchen(), Fingerprint([2; 32])).unwrap();
        let (publish, published) = watch::channel(Some((1, Bytes::from_static(b"v1"))));
        let ((mut replica_recv, mut replica_send), (mut primary_recv, mut primary_send)) = pipe();

        let replica = Arc::new(FakeReplica::default());
        let health = Mutex::new(LinkHealth::default());
        let session = ReplicaSession::new(kitchen(), None).with_heartbeat_interval(HEARTBEAT);
        let mut replica_side = ReplicaSide::new(session, replica.clone(), &health);
        let mut primary_side = PrimarySide::new(kitchen(), published, &fleet);

        let script = async {
            until("the offered bundle to apply", || {
                *replica.applied.lock() == [1]
            })
            .await;
            until("the primary to hear it", || {
                view(&fleet).bundle_version == Some(1)
            })
            .await;
            assert!(health.lock().last_sync_unix_ms.is_some());

            until("a heartbeat with stats", || {
                view(&fleet).stats.is_some_and(|stats| stats.queries == 42)
            })
            .await;

            publish.send_replace(Some((2, Bytes::from_static(b"v2"))));
            until("the published update to apply", || {
                *replica.applied.lock() == [1, 2]
            })
            .await;
            until("the primary to hear it", || {
                view(&fleet).bundle_version == Some(2)
            })
            .await;

            publish.send_replace(Some((3, Bytes::from_static(b"bad"))));
            until("the bad bundle to be reported", || {
                view(&fleet)
                    .last_error
                    .is_some_and(|error| error.contains("rejected bundle 3: bad signature"))
            })
            .await;
            assert_eq!(replica.running_version(), Some(2), "the good one is kept");

            publish.send_replace(Some((4, Bytes::from_static(b"v4"))));
            until("the fixed bundle to apply", || {
                *replica.applied.lock() == [1, 2, 4]
            })
            .await;
        };
        tokio::select! {
            ended = drive(&mut primary_side, &mut primary_send, &mut primary_recv) => {
                panic!("the primary's session ended: {ended:?}")
            }
            ended = drive(&mut replica_side, &mut replica_send, &mut replica_recv) => {
                panic!("the replica's session ended: {ended:?}")
            }
            () = script => {}
        }
        let _ = std::fs::remove_dir_all(root);
    }

    #[tokio::test]
    async fn a_revoked_replica_hears_why_and_the_session_ends() {
        let ((mut replica_recv, mut replica_send), (_primary_recv, mut primary_send)) = pipe();
        let replica = Arc::new(FakeReplica::default());
        let health = Mutex::new(LinkHealth::default());
        let session = ReplicaSession::new(kitchen(), None);
        let mut replica_side = ReplicaSide::new(session, replica, &health);
        let refused = PrimaryMessage::Refused {
            reason: "revoked".into(),
        };
        let frame = encode_frame(&refused).unwrap();
        let primary = async {
            primary_send.write_all(&frame).await.unwrap();
            std::future::pending::<()>().await;
        };
        let ended = tokio::select! {
            ended = drive(&mut replica_side, &mut replica_send, &mut replica_recv) => ended,
            () = primary => unreachable!(),
        };
        assert!(
            matches!(&ended, Err(LinkError::Refused(reason)) if reason == "revoked"),
            "{ended:?}"
        );
    }

    #[tokio::test]
    async fn a_broken_frame_ends_the_session_with_a_stream_error() {
        let ((mut replica_recv, mut replica_send), (_primary_recv, mut primary_send)) = pipe();
        let health = Mutex::new(LinkHealth::default());
        let session = ReplicaSession::new(kitchen(), None);
        let mut replica_side = ReplicaSide::new(session, Arc::new(FakeReplica::default()), &health);
        let primary = async {
            primary_send
                .write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
                .await
                .unwrap();
            std::future::pending::<()>().await;
        };
        let ended = tokio::select! {
            ended = drive(&mut replica_side, &mut replica_send, &mut replica_recv) => ended,
            () = primary => unreachable!(),
        };
        assert!(
            matches!(
                &ended,
                Err(LinkError::Stream(StreamError::Frame(
                    FrameError::Malformed(_)
                )))
            ),
            "{ended:?}"
        );
    }
}

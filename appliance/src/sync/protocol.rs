//! The sync protocol between a replica and its primary, as two sans-IO state
//! machines: messages and time in; messages to send, events and the next
//! timer deadline out. The quinn shell owns the one bidirectional stream.
//!
//! On that stream each message is a frame: a `u32` big-endian length, then
//! the message in postcard. The replica speaks first with [`ReplicaMessage::Hello`]
//! (its protocol version is the first field of the first variant, so any
//! later version can still read it); the primary answers with the newest
//! bundle if the replica runs an older one, pushes every later bundle, and
//! never answers heartbeats.
//!
//! Replica call order: [`ReplicaSession::connected`] once the stream is open
//! (send what it returns), then for each decoded message
//! [`ReplicaSession::handle`]; after verifying or failing a bundle
//! [`ReplicaSession::applied`] or [`ReplicaSession::rejected`]; drain
//! [`ReplicaSession::poll_transmit`] after every call; arm a timer at
//! [`ReplicaSession::poll_timeout`] and call
//! [`ReplicaSession::handle_timeout`] when it fires.
//!
//! Primary call order: [`PrimarySession::handle`] for each decoded message,
//! [`PrimarySession::publish`] for every new bundle, and drain
//! [`PrimarySession::poll_transmit`] after every call.

use std::collections::VecDeque;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::stats::StatsSnapshot;

/// Version of this protocol; a primary refuses a replica with another one.
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest frame body a replica accepts from its primary (bundles can be
/// around 10 MB).
pub const MAX_MESSAGE_BYTES: usize = 128 << 20;

/// Largest frame body a primary accepts from a replica.
pub const MAX_REPLICA_MESSAGE_BYTES: usize = 64 << 10;

/// How often a replica sends a heartbeat with its stats.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// First reconnect delay ceiling.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);

/// Largest reconnect delay ceiling.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// How long a connection must stay up for the backoff to start over.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);

/// Bytes in a frame's length prefix.
const LENGTH_PREFIX_BYTES: usize = 4;

/// Buffer capacity a decoder keeps between messages (after a bundle, the
/// rest is given back).
const RETAINED_BUFFER_BYTES: usize = 64 << 10;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A frame is longer than the receiver accepts.
    #[error("message of {length} bytes is over the {limit}-byte limit")]
    TooLarge {
        /// Length announced or needed.
        length: u64,
        /// The limit for this kind of message.
        limit: usize,
    },
    /// A frame's body is not a valid message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The stream ended inside a frame.
    #[error("stream ended inside a message ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes received of the unfinished frame.
        buffered: usize,
    },
}

/// A message kind carried in frames, with the largest body accepted.
pub trait Message: Serialize + DeserializeOwned {
    /// Largest frame body accepted for this kind of message.
    const MAX_BYTES: usize;
}

/// What a replica sends to its primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaMessage {
    /// First message on a connection.
    Hello {
        /// The replica's [`PROTOCOL_VERSION`]; keep it the first field.
        protocol: u16,
        /// The replica's own name (informational: the primary knows it
        /// from the pinned certificate).
        name: String,
        /// Bundle version the replica runs, if any.
        bundle_version: Option<u64>,
    },
    /// A bundle was verified and is now in force.
    Applied {
        /// Its version.
        version: u64,
    },
    /// A bundle was refused; the replica keeps its previous one.
    Rejected {
        /// Its version.
        version: u64,
        /// Why, for the primary's view.
        reason: String,
    },
    /// Periodic liveness and stats.
    Heartbeat {
        /// The replica's counters.
        stats: ReplicaStats,
        /// Bundle version the replica runs, if any.
        bundle_version: Option<u64>,
    },
}

impl Message for ReplicaMessage {
    const MAX_BYTES: usize = MAX_REPLICA_MESSAGE_BYTES;
}

/// What a primary sends to a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PrimaryMessage {
    /// A signed bundle file, opaque here; the replica verifies it.
    Bundle {
        /// Its version, as the primary published it.
        version: u64,
        /// The bundle file.
        #[serde(with = "payload")]
        bytes: Bytes,
    },
    /// The primary will not serve this replica; it closes the connection.
    Refused {
        /// Why (wrong protocol version, revoked, ...).
        reason: String,
    },
}

impl Message for PrimaryMessage {
    const MAX_BYTES: usize = MAX_MESSAGE_BYTES;
}

/// A replica's counters, as sent in heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaStats {
    /// Queries answered.
    pub queries: u64,
    /// Blocked by policy.
    pub blocked: u64,
    /// Answered from local records.
    pub local: u64,
    /// Answered from upstream.
    pub forwarded: u64,
    /// Failed (every upstream failed, or policy faulted closed).
    pub failed: u64,
    /// Refused or malformed.
    pub rejected: u64,
    /// Answered from the cache.
    pub cache_hits: u64,
    /// Questions the cache did not hold.
    pub cache_misses: u64,
    /// Answered from expired cache entries.
    pub stale_served: u64,
    /// Failed upstream attempts.
    pub upstream_errors: u64,
    /// Entries in the cache (not in [`StatsSnapshot`]: the shell sets it).
    pub cache_entries: u64,
    /// Seconds the daemon has run (not in [`StatsSnapshot`]: the shell sets it).
    pub uptime_secs: u64,
}

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
            cache_entries: 0,
            uptime_secs: 0,
        }
    }
}

/// Encodes `message` as one frame: length prefix, then postcard.
pub fn encode_frame<M: Message>(message: &M) -> Result<Vec<u8>, ProtocolError> {
    let mut frame = postcard::to_extend(message, vec![0; LENGTH_PREFIX_BYTES])
        .map_err(|err| ProtocolError::Malformed(err.to_string()))?;
    let body = frame.len() - LENGTH_PREFIX_BYTES;
    let length = u32::try_from(body)
        .ok()
        .filter(|_| body <= M::MAX_BYTES)
        .ok_or(ProtocolError::TooLarge {
            length: body as u64,
            limit: M::MAX_BYTES,
        })?;
    frame[..LENGTH_PREFIX_BYTES].copy_from_slice(&length.to_be_bytes());
    Ok(frame)
}

/// Reassembles frames of `M` from chunks of a stream.
///
/// A length over `M::MAX_BYTES` is refused as soon as its prefix arrives,
/// without waiting for (or reserving room for) the body. After an error
/// the decoder drops its buffer and repeats that error: framing is lost,
/// so the shell closes the stream.
#[derive(Debug)]
pub struct FrameDecoder<M> {
    buffer: Vec<u8>,
    failure: Option<ProtocolError>,
    message: PhantomData<fn() -> M>,
}

impl<M: Message> Default for FrameDecoder<M> {
    fn default() -> Self {
        Self::new()
    }
}

impl<M: Message> FrameDecoder<M> {
    /// An empty decoder.
    pub fn new() -> Self {
        Self {
            buffer: Vec::new(),
            failure: None,
            message: PhantomData,
        }
    }

    /// Adds a chunk and returns the next complete message, if any. Call
    /// [`Self::next_message`] until it returns `None` to drain the others.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Option<M>, ProtocolError> {
        if self.failure.is_none() {
            self.buffer.extend_from_slice(chunk);
        }
        self.next_message()
    }

    /// The next complete message already buffered, if any.
    pub fn next_message(&mut self) -> Result<Option<M>, ProtocolError> {
        if let Some(failure) = &self.failure {
            return Err(failure.clone());
        }
        self.decode_buffered().inspect_err(|err| {
            self.buffer = Vec::new();
            self.failure = Some(err.clone());
        })
    }

    /// Bytes received but not yet decoded.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// Checks that the stream ended between frames.
    pub fn finish(&self) -> Result<(), ProtocolError> {
        match (&self.failure, self.buffer.len()) {
            (Some(failure), _) => Err(failure.clone()),
            (None, 0) => Ok(()),
            (None, buffered) => Err(ProtocolError::Truncated { buffered }),
        }
    }

    fn decode_buffered(&mut self) -> Result<Option<M>, ProtocolError> {
        let Some(prefix) = self.buffer.first_chunk::<LENGTH_PREFIX_BYTES>() else {
            return Ok(None);
        };
        let length = u32::from_be_bytes(*prefix) as usize;
        if length > M::MAX_BYTES {
            return Err(ProtocolError::TooLarge {
                length: length as u64,
                limit: M::MAX_BYTES,
            });
        }
        let end = LENGTH_PREFIX_BYTES + length;
        if self.buffer.len() < end {
            return Ok(None);
        }
        let message = decode_body(&self.buffer[LENGTH_PREFIX_BYTES..end])?;
        self.buffer.drain(..end);
        if self.buffer.len() <= RETAINED_BUFFER_BYTES {
            self.buffer.shrink_to(RETAINED_BUFFER_BYTES);
        }
        Ok(Some(message))
    }
}

fn decode_body<M: Message>(body: &[u8]) -> Result<M, ProtocolError> {
    let (message, rest) =
        postcard::take_from_bytes(body).map_err(|err| ProtocolError::Malformed(err.to_string()))?;
    if !rest.is_empty() {
        return Err(ProtocolError::Malformed(format!(
            "{} bytes after the message",
            rest.len()
        )));
    }
    Ok(message)
}

/// What the replica's shell must act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaEvent {
    /// Verify this bundle and, if it passes, put it in force; then call
    /// [`ReplicaSession::applied`] or [`ReplicaSession::rejected`].
    Apply {
        /// Version the primary announced (the verified manifest decides).
        version: u64,
        /// The bundle file.
        bytes: Bytes,
    },
    /// The primary refused this replica; close the connection and back off.
    Refused {
        /// The primary's reason.
        reason: String,
    },
}

/// The replica's end of one sync connection.
#[derive(Debug)]
pub struct ReplicaSession {
    name: String,
    running_version: Option<u64>,
    outgoing: VecDeque<ReplicaMessage>,
    next_heartbeat: Option<Instant>,
}

impl ReplicaSession {
    /// A session for replica `name` running `running_version`.
    pub fn new(name: impl Into<String>, running_version: Option<u64>) -> Self {
        Self {
            name: name.into(),
            running_version,
            outgoing: VecDeque::new(),
            next_heartbeat: None,
        }
    }

    /// The stream is open: returns the Hello to send first and starts the
    /// heartbeat timer. Anything queued for an earlier connection is dropped.
    pub fn connected(&mut self, now: Instant) -> ReplicaMessage {
        self.outgoing.clear();
        self.next_heartbeat = Some(now + HEARTBEAT_INTERVAL);
        ReplicaMessage::Hello {
            protocol: PROTOCOL_VERSION,
            name: self.name.clone(),
            bundle_version: self.running_version,
        }
    }

    /// Handles a message from the primary.
    pub fn handle(&mut self, message: PrimaryMessage, _now: Instant) -> Vec<ReplicaEvent> {
        match message {
            PrimaryMessage::Bundle { version, bytes } => self.offered(version, bytes),
            PrimaryMessage::Refused { reason } => {
                self.outgoing.clear();
                self.next_heartbeat = None;
                vec![ReplicaEvent::Refused { reason }]
            }
        }
    }

    /// The shell verified bundle `version` and put it in force.
    pub fn applied(&mut self, version: u64) {
        self.running_version = self.running_version.max(Some(version));
        self.outgoing.push_back(ReplicaMessage::Applied { version });
    }

    /// The shell refused bundle `version`; the previous one stays in force.
    pub fn rejected(&mut self, version: u64, reason: impl Into<String>) {
        self.outgoing.push_back(ReplicaMessage::Rejected {
            version,
            reason: reason.into(),
        });
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<ReplicaMessage> {
        self.outgoing.pop_front()
    }

    /// When [`Self::handle_timeout`] is next due, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_heartbeat
    }

    /// Queues a heartbeat with `stats` if one is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant, stats: ReplicaStats) {
        let Some(due) = self.next_heartbeat else {
            return;
        };
        if now < due {
            return;
        }
        self.next_heartbeat = Some(now + HEARTBEAT_INTERVAL);
        self.outgoing.push_back(ReplicaMessage::Heartbeat {
            stats,
            bundle_version: self.running_version,
        });
    }

    /// Bundle version in force, as far as this session knows.
    pub fn running_version(&self) -> Option<u64> {
        self.running_version
    }

    fn offered(&mut self, version: u64, bytes: Bytes) -> Vec<ReplicaEvent> {
        if let Some(running) = self.running_version.filter(|&running| version <= running) {
            self.rejected(
                version,
                format!("version {version} is not above the running version {running}"),
            );
            return Vec::new();
        }
        vec![ReplicaEvent::Apply { version, bytes }]
    }
}

/// What a primary learned from one replica message, for the fleet view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicaUpdate {
    /// The replica greeted, running this version.
    Hello {
        /// Bundle version it runs.
        bundle_version: Option<u64>,
    },
    /// The replica put a bundle in force.
    Applied {
        /// Its version.
        version: u64,
    },
    /// The replica refused a bundle.
    Rejected {
        /// Its version.
        version: u64,
        /// The replica's reason.
        reason: String,
    },
    /// Liveness and stats.
    Heartbeat {
        /// The replica's counters.
        stats: ReplicaStats,
        /// Bundle version it runs.
        bundle_version: Option<u64>,
    },
    /// The session refused the replica; send what is queued, then close.
    Refused {
        /// Why, as sent to the replica.
        reason: String,
    },
}

/// The primary's end of one sync connection, for one authenticated replica.
#[derive(Debug)]
pub struct PrimarySession {
    name: String,
    published: Option<(u64, Bytes)>,
    replica_version: Option<u64>,
    sent_version: Option<u64>,
    greeted: bool,
    refused: bool,
    last_heard: Option<Instant>,
    outgoing: VecDeque<PrimaryMessage>,
}

impl PrimarySession {
    /// A session for replica `name` (from its pinned certificate), with the
    /// bundle currently published, if any.
    pub fn new(name: impl Into<String>, published: Option<(u64, Bytes)>) -> Self {
        Self {
            name: name.into(),
            published,
            replica_version: None,
            sent_version: None,
            greeted: false,
            refused: false,
            last_heard: None,
            outgoing: VecDeque::new(),
        }
    }

    /// Handles a message from the replica; `None` once the session refused it.
    pub fn handle(&mut self, message: ReplicaMessage, now: Instant) -> Option<ReplicaUpdate> {
        if self.refused {
            return None;
        }
        self.last_heard = Some(now);
        match message {
            ReplicaMessage::Hello {
                protocol,
                bundle_version,
                ..
            } => Some(self.greet(protocol, bundle_version)),
            _ if !self.greeted => Some(self.refuse("the first message must be a hello")),
            ReplicaMessage::Applied { version } => {
                self.replica_version = self.replica_version.max(Some(version));
                Some(ReplicaUpdate::Applied { version })
            }
            ReplicaMessage::Rejected { version, reason } => {
                Some(ReplicaUpdate::Rejected { version, reason })
            }
            ReplicaMessage::Heartbeat {
                stats,
                bundle_version,
            } => {
                self.replica_version = self.replica_version.max(bundle_version);
                Some(ReplicaUpdate::Heartbeat {
                    stats,
                    bundle_version,
                })
            }
        }
    }

    /// A new bundle is published: queue it for this replica if newer than
    /// what it runs or was sent. A queued, unsent older bundle is dropped.
    pub fn publish(&mut self, version: u64, bytes: Bytes) {
        if self
            .published
            .as_ref()
            .is_some_and(|(newest, _)| *newest >= version)
        {
            return;
        }
        self.published = Some((version, bytes));
        if self.greeted && !self.refused {
            self.send_published_if_newer();
        }
    }

    /// Refuses the replica (for example, it was revoked): queues a
    /// `Refused` message and ignores everything after it.
    pub fn refuse(&mut self, reason: impl Into<String>) -> ReplicaUpdate {
        let reason = reason.into();
        self.refused = true;
        self.outgoing.clear();
        self.outgoing.push_back(PrimaryMessage::Refused {
            reason: reason.clone(),
        });
        ReplicaUpdate::Refused { reason }
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<PrimaryMessage> {
        self.outgoing.pop_front()
    }

    /// The replica's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Bundle version the replica last said it runs.
    pub fn replica_version(&self) -> Option<u64> {
        self.replica_version
    }

    /// When the replica last sent anything.
    pub fn last_heard(&self) -> Option<Instant> {
        self.last_heard
    }

    /// Whether the session refused the replica.
    pub fn is_refused(&self) -> bool {
        self.refused
    }

    fn greet(&mut self, protocol: u16, bundle_version: Option<u64>) -> ReplicaUpdate {
        if protocol != PROTOCOL_VERSION {
            return self.refuse(format!(
                "protocol version {protocol} is not supported (this primary speaks {PROTOCOL_VERSION})"
            ));
        }
        if self.greeted {
            return self.refuse("a second hello on one connection");
        }
        self.greeted = true;
        self.replica_version = bundle_version;
        self.send_published_if_newer();
        ReplicaUpdate::Hello { bundle_version }
    }

    fn send_published_if_newer(&mut self) {
        let Some((version, bytes)) = &self.published else {
            return;
        };
        let known = self.replica_version.max(self.sent_version);
        if known >= Some(*version) {
            return;
        }
        self.outgoing
            .retain(|message| !matches!(message, PrimaryMessage::Bundle { .. }));
        self.outgoing.push_back(PrimaryMessage::Bundle {
            version: *version,
            bytes: bytes.clone(),
        });
        self.sent_version = Some(*version);
    }
}

/// Reconnect delays: exponential from [`BACKOFF_INITIAL`], doubling to
/// [`BACKOFF_MAX`], with full jitter (each delay drawn in `[0, ceiling]`).
/// It starts over once a connection stayed up [`BACKOFF_RESET_AFTER`].
#[derive(Debug, Clone)]
pub struct Backoff {
    ceiling: Duration,
    up_since: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// A backoff at its first step.
    pub fn new() -> Self {
        Self {
            ceiling: BACKOFF_INITIAL,
            up_since: None,
        }
    }

    /// A connection came up at `now`.
    pub fn connected(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// The connection failed or dropped at `now`: how long to wait before
    /// the next attempt.
    pub fn next_delay(&mut self, now: Instant, rng: &mut impl Rng) -> Duration {
        if let Some(up_since) = self.up_since.take()
            && now.saturating_duration_since(up_since) >= BACKOFF_RESET_AFTER
        {
            self.ceiling = BACKOFF_INITIAL;
        }
        let ceiling_ms = self.ceiling.as_millis() as u64;
        let delay = Duration::from_millis(rng.random_range(0..=ceiling_ms));
        self.ceiling = (self.ceiling * 2).min(BACKOFF_MAX);
        delay
    }

    /// The largest delay the next attempt can draw (before any reset).
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }
}

/// Serde for a bundle payload: postcard bytes (length, then raw), not a
/// sequence of numbers, and no copy when encoding.
mod payload {
    use std::fmt;

    use bytes::Bytes;
    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        bytes: &Bytes,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Bytes, D::Error> {
        deserializer.deserialize_byte_buf(PayloadVisitor)
    }

    struct PayloadVisitor;

    impl<'de> Visitor<'de> for PayloadVisitor {
        type Value = Bytes;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("bundle bytes")
        }

        fn visit_bytes<E>(self, bytes: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(bytes))
        }

        fn visit_byte_buf<E>(self, bytes: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(bytes))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
            let mut bytes = Vec::new();
            while let Some(byte) = seq.next_element::<u8>()? {
                bytes.push(byte);
            }
            Ok(Bytes::from(bytes))
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::clock;

    fn bundle(version: u64, bytes: &'static [u8]) -> PrimaryMessage {
        PrimaryMessage::Bundle {
            version,
            bytes: Bytes::from_static(bytes),
        }
    }

    fn stats(queries: u64) -> ReplicaStats {
        ReplicaStats {
            queries,
            ..ReplicaStats::default()
        }
    }

    fn drain<M>(mut poll: impl FnMut() -> Option<M>) -> Vec<M> {
        std::iter::from_fn(&mut poll).collect()
    }

    fn sample_replica_messages() -> Vec<ReplicaMessage> {
        vec![
            ReplicaMessage::Hello {
                protocol: PROTOCOL_VERSION,
                name: "kitchen".into(),
                bundle_version: Some(7),
            },
            ReplicaMessage::Applied { version: 8 },
            ReplicaMessage::Rejected {
                version: 9,
                reason: "bad signature".into(),
            },
            ReplicaMessage::Heartbeat {
                stats: stats(42),
                bundle_version: None,
            },
        ]
    }

    #[test]
    fn frames_round_trip() {
        let mut decoder = FrameDecoder::<ReplicaMessage>::new();
        for message in sample_replica_messages() {
            let frame = encode_frame(&message).unwrap();
            assert_eq!(decoder.push(&frame).unwrap(), Some(message));
        }
        let mut decoder = FrameDecoder::<PrimaryMessage>::new();
        let large = Bytes::from(vec![0xa5; 3 << 20]);
        for message in [
            bundle(3, b"signed bundle"),
            PrimaryMessage::Bundle {
                version: u64::MAX,
                bytes: large,
            },
            PrimaryMessage::Refused {
                reason: "revoked".into(),
            },
        ] {
            let frame = encode_frame(&message).unwrap();
            assert_eq!(decoder.push(&frame).unwrap(), Some(message));
        }
        decoder.finish().unwrap();
    }

    #[test]
    fn bundle_payload_is_raw_bytes() {
        let frame = encode_frame(&bundle(1, &[7; 1000])).unwrap();
        let overhead = frame.len() - 1000;
        assert!(overhead <= 4 + 1 + 1 + 2, "{overhead} bytes of framing");
    }

    #[test]
    fn frames_fed_one_byte_at_a_time() {
        let messages = sample_replica_messages();
        let stream: Vec<u8> = messages
            .iter()
            .flat_map(|message| encode_frame(message).unwrap())
            .collect();
        let mut decoder = FrameDecoder::<ReplicaMessage>::new();
        let mut decoded = Vec::new();
        for byte in stream {
            if let Some(message) = decoder.push(&[byte]).unwrap() {
                decoded.push(message);
            }
        }
        assert_eq!(decoded, messages);
        assert_eq!(decoder.buffered(), 0);
    }

    #[test]
    fn several_frames_in_one_chunk_are_drained() {
        let messages = sample_replica_messages();
        let stream: Vec<u8> = messages
            .iter()
            .flat_map(|message| encode_frame(message).unwrap())
            .collect();
        let mut decoder = FrameDecoder::<ReplicaMessage>::new();
        let mut decoded = vec![decoder.push(&stream).unwrap().unwrap()];
        decoded.extend(std::iter::from_fn(|| decoder.next_message().unwrap()));
        assert_eq!(decoded, messages);
    }

    #[test]
    fn oversized_length_is_refused_before_its_body() {
        let mut decoder = FrameDecoder::<ReplicaMessage>::new();
        let length = (MAX_REPLICA_MESSAGE_BYTES as u32 + 1).to_be_bytes();
        let err = decoder.push(&length).unwrap_err();
        assert!(matches!(err, ProtocolError::TooLarge { .. }), "{err}");
        assert_eq!(decoder.buffered(), 0);
        assert_eq!(
            decoder.push(&[0; 100]).unwrap_err(),
            err,
            "the error sticks"
        );
        assert_eq!(decoder.buffered(), 0, "nothing buffered after the error");

        let mut decoder = FrameDecoder::<PrimaryMessage>::new();
        let err = decoder.push(&u32::MAX.to_be_bytes()).unwrap_err();
        assert!(matches!(err, ProtocolError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn oversized_message_is_not_encoded() {
        let message = ReplicaMessage::Rejected {
            version: 1,
            reason: "x".repeat(MAX_REPLICA_MESSAGE_BYTES),
        };
        let err = encode_frame(&message).unwrap_err();
        assert!(matches!(err, ProtocolError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut decoder = FrameDecoder::<PrimaryMessage>::new();
        let err = decoder.push(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(matches!(err, ProtocolError::Malformed(_)), "{err}");

        let mut decoder = FrameDecoder::<ReplicaMessage>::new();
        assert!(decoder.push(&[0, 0, 0, 0]).is_err(), "empty body");

        let mut frame = encode_frame(&ReplicaMessage::Applied { version: 1 }).unwrap();
        frame.push(0);
        frame[3] += 1;
        let err = FrameDecoder::<ReplicaMessage>::new()
            .push(&frame)
            .unwrap_err();
        assert!(
            matches!(err, ProtocolError::Malformed(_)),
            "trailing: {err}"
        );

        let mut rng = StdRng::seed_from_u64(4);
        for _ in 0..2000 {
            let length = rng.random_range(0..64u32);
            let mut chunk = length.to_be_bytes().to_vec();
            chunk.extend((0..length).map(|_| rng.random::<u8>()));
            let _ = FrameDecoder::<ReplicaMessage>::new().push(&chunk);
            let _ = FrameDecoder::<PrimaryMessage>::new().push(&chunk);
        }
    }

    #[test]
    fn truncated_stream_is_reported_at_the_end() {
        let frame = encode_frame(&bundle(2, b"bundle")).unwrap();
        let mut decoder = FrameDecoder::<PrimaryMessage>::new();
        assert_eq!(decoder.push(&frame[..frame.len() - 1]).unwrap(), None);
        let err = decoder.finish().unwrap_err();
        assert_eq!(
            err,
            ProtocolError::Truncated {
                buffered: frame.len() - 1
            }
        );
    }

    #[test]
    fn stats_come_from_a_snapshot() {
        let snapshot: StatsSnapshot = serde_json::from_value(serde_json::json!({
            "queries": 10, "by_type": [], "by_rcode": [], "cache_hits": 4,
            "cache_misses": 6, "stale_served": 1, "forwarded": 3, "blocked": 2,
            "rejected": 0, "failed": 1, "local": 1, "upstream_errors": 5,
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
                stats.upstream_errors
            ),
            (10, 2, 4, 5)
        );
    }

    #[test]
    fn replica_hello_carries_the_running_version() {
        let now = clock::now();
        let mut replica = ReplicaSession::new("kitchen", Some(7));
        assert_eq!(
            replica.connected(now),
            ReplicaMessage::Hello {
                protocol: PROTOCOL_VERSION,
                name: "kitchen".into(),
                bundle_version: Some(7),
            }
        );
        let mut fresh = ReplicaSession::new("attic", None);
        assert!(matches!(
            fresh.connected(now),
            ReplicaMessage::Hello {
                bundle_version: None,
                ..
            }
        ));
    }

    #[test]
    fn replica_applies_only_newer_bundles() {
        let now = clock::now();
        let mut replica = ReplicaSession::new("kitchen", Some(7));
        replica.connected(now);
        assert_eq!(
            replica.handle(bundle(8, b"v8"), now),
            vec![ReplicaEvent::Apply {
                version: 8,
                bytes: Bytes::from_static(b"v8")
            }]
        );
        assert_eq!(replica.poll_transmit(), None, "nothing until verified");
        replica.applied(8);
        assert_eq!(
            replica.poll_transmit(),
            Some(ReplicaMessage::Applied { version: 8 })
        );
        assert_eq!(replica.running_version(), Some(8));

        for stale in [8, 3] {
            assert_eq!(replica.handle(bundle(stale, b"old"), now), vec![]);
            let Some(ReplicaMessage::Rejected { version, reason }) = replica.poll_transmit() else {
                panic!("a stale bundle is rejected");
            };
            assert_eq!(version, stale);
            assert!(reason.contains("not above"), "{reason}");
        }
    }

    #[test]
    fn replica_reports_a_bundle_the_shell_refused() {
        let now = clock::now();
        let mut replica = ReplicaSession::new("kitchen", None);
        replica.connected(now);
        assert_eq!(replica.handle(bundle(1, b"forged"), now).len(), 1);
        replica.rejected(1, "bad signature");
        assert_eq!(
            replica.poll_transmit(),
            Some(ReplicaMessage::Rejected {
                version: 1,
                reason: "bad signature".into()
            })
        );
        assert_eq!(replica.running_version(), None);
    }

    #[test]
    fn replica_heartbeats_every_interval() {
        let start = clock::now();
        let mut replica = ReplicaSession::new("kitchen", Some(2));
        assert_eq!(replica.poll_timeout(), None, "no timer before connecting");
        replica.connected(start);
        assert_eq!(replica.poll_timeout(), Some(start + HEARTBEAT_INTERVAL));

        replica.handle_timeout(start + HEARTBEAT_INTERVAL / 2, stats(1));
        assert_eq!(replica.poll_transmit(), None, "not due yet");

        let mut now = start;
        for beat in 1..=3 {
            now = replica.poll_timeout().unwrap();
            replica.handle_timeout(now, stats(beat));
            assert_eq!(
                replica.poll_transmit(),
                Some(ReplicaMessage::Heartbeat {
                    stats: stats(beat),
                    bundle_version: Some(2)
                })
            );
            assert_eq!(replica.poll_timeout(), Some(now + HEARTBEAT_INTERVAL));
        }
        assert_eq!(now, start + 3 * HEARTBEAT_INTERVAL);
    }

    #[test]
    fn replica_stops_after_being_refused() {
        let now = clock::now();
        let mut replica = ReplicaSession::new("kitchen", None);
        replica.connected(now);
        let events = replica.handle(
            PrimaryMessage::Refused {
                reason: "revoked".into(),
            },
            now,
        );
        assert_eq!(
            events,
            vec![ReplicaEvent::Refused {
                reason: "revoked".into()
            }]
        );
        assert_eq!(replica.poll_timeout(), None);
    }

    fn hello(bundle_version: Option<u64>) -> ReplicaMessage {
        ReplicaMessage::Hello {
            protocol: PROTOCOL_VERSION,
            name: "kitchen".into(),
            bundle_version,
        }
    }

    fn published(version: u64) -> Option<(u64, Bytes)> {
        Some((version, Bytes::from_static(b"published")))
    }

    #[test]
    fn primary_sends_the_bundle_to_an_older_replica() {
        let now = clock::now();
        for replica_version in [None, Some(4)] {
            let mut primary = PrimarySession::new("kitchen", published(5));
            assert_eq!(
                primary.handle(hello(replica_version), now),
                Some(ReplicaUpdate::Hello {
                    bundle_version: replica_version
                })
            );
            assert_eq!(
                drain(|| primary.poll_transmit()),
                vec![bundle(5, b"published")]
            );
        }
    }

    #[test]
    fn primary_sends_nothing_to_an_up_to_date_replica() {
        let now = clock::now();
        for replica_version in [Some(5), Some(6)] {
            let mut primary = PrimarySession::new("kitchen", published(5));
            primary.handle(hello(replica_version), now);
            assert_eq!(primary.poll_transmit(), None);
        }
        let mut primary = PrimarySession::new("kitchen", None);
        primary.handle(hello(None), now);
        assert_eq!(primary.poll_transmit(), None, "nothing published");
    }

    #[test]
    fn primary_pushes_what_it_publishes() {
        let now = clock::now();
        let mut primary = PrimarySession::new("kitchen", published(5));
        primary.publish(6, Bytes::from_static(b"v6"));
        assert_eq!(primary.poll_transmit(), None, "not before the hello");
        primary.handle(hello(Some(5)), now);
        assert_eq!(drain(|| primary.poll_transmit()), vec![bundle(6, b"v6")]);

        primary.publish(6, Bytes::from_static(b"v6"));
        primary.publish(4, Bytes::from_static(b"v4"));
        assert_eq!(
            primary.poll_transmit(),
            None,
            "not newer than what was sent"
        );

        primary.publish(7, Bytes::from_static(b"v7"));
        primary.publish(8, Bytes::from_static(b"v8"));
        assert_eq!(
            drain(|| primary.poll_transmit()),
            vec![bundle(8, b"v8")],
            "an unsent older bundle is superseded"
        );
    }

    #[test]
    fn primary_refuses_another_protocol_version() {
        let now = clock::now();
        let mut primary = PrimarySession::new("kitchen", published(5));
        let update = primary.handle(
            ReplicaMessage::Hello {
                protocol: PROTOCOL_VERSION + 1,
                name: "kitchen".into(),
                bundle_version: None,
            },
            now,
        );
        assert!(matches!(update, Some(ReplicaUpdate::Refused { .. })));
        let sent = drain(|| primary.poll_transmit());
        assert!(
            matches!(&sent[..], [PrimaryMessage::Refused { reason }] if reason.contains("protocol")),
            "{sent:?}"
        );
        assert!(primary.is_refused());
        assert_eq!(primary.handle(hello(None), now), None);
        primary.publish(9, Bytes::from_static(b"v9"));
        assert_eq!(primary.poll_transmit(), None);
    }

    #[test]
    fn primary_refuses_messages_before_hello_and_a_second_hello() {
        let now = clock::now();
        let mut primary = PrimarySession::new("kitchen", None);
        let update = primary.handle(ReplicaMessage::Applied { version: 1 }, now);
        assert!(matches!(update, Some(ReplicaUpdate::Refused { .. })));

        let mut primary = PrimarySession::new("kitchen", None);
        primary.handle(hello(None), now);
        let update = primary.handle(hello(None), now);
        assert!(matches!(update, Some(ReplicaUpdate::Refused { .. })));
    }

    #[test]
    fn primary_reports_updates_for_the_fleet() {
        let now = clock::now();
        let mut primary = PrimarySession::new("kitchen", published(5));
        primary.handle(hello(Some(4)), now);
        assert_eq!(
            primary.handle(ReplicaMessage::Applied { version: 5 }, now),
            Some(ReplicaUpdate::Applied { version: 5 })
        );
        assert_eq!(primary.replica_version(), Some(5));
        let rejected = ReplicaMessage::Rejected {
            version: 6,
            reason: "expired".into(),
        };
        assert_eq!(
            primary.handle(rejected, now),
            Some(ReplicaUpdate::Rejected {
                version: 6,
                reason: "expired".into()
            })
        );
        let later = now + HEARTBEAT_INTERVAL;
        let heartbeat = ReplicaMessage::Heartbeat {
            stats: stats(3),
            bundle_version: Some(5),
        };
        assert_eq!(
            primary.handle(heartbeat, later),
            Some(ReplicaUpdate::Heartbeat {
                stats: stats(3),
                bundle_version: Some(5)
            })
        );
        assert_eq!(primary.last_heard(), Some(later));
        assert_eq!(primary.name(), "kitchen");
    }

    #[test]
    fn revoked_replica_is_refused_mid_connection() {
        let now = clock::now();
        let mut primary = PrimarySession::new("kitchen", published(5));
        primary.handle(hello(None), now);
        primary.refuse("revoked");
        assert_eq!(
            drain(|| primary.poll_transmit()),
            vec![PrimaryMessage::Refused {
                reason: "revoked".into()
            }],
            "the pending bundle is dropped"
        );
    }

    /// A replica and a primary joined through the framing, with a shell on
    /// each side and a virtual clock.
    struct Link {
        now: Instant,
        replica: ReplicaSession,
        primary: PrimarySession,
        at_primary: FrameDecoder<ReplicaMessage>,
        at_replica: FrameDecoder<PrimaryMessage>,
        updates: Vec<ReplicaUpdate>,
        refused: Vec<String>,
        running: Option<(u64, Bytes)>,
    }

    impl Link {
        fn new(running: Option<(u64, Bytes)>, published: Option<(u64, Bytes)>) -> Self {
            let now = clock::now();
            let mut replica =
                ReplicaSession::new("kitchen", running.as_ref().map(|(version, _)| *version));
            let hello = replica.connected(now);
            let mut link = Self {
                now,
                replica,
                primary: PrimarySession::new("kitchen", published),
                at_primary: FrameDecoder::new(),
                at_replica: FrameDecoder::new(),
                updates: Vec::new(),
                refused: Vec::new(),
                running,
            };
            link.deliver_to_primary(&hello);
            link
        }

        /// Moves frames both ways, in 7-byte chunks, until both are quiet.
        fn settle(&mut self) {
            loop {
                let mut moved = false;
                while let Some(message) = self.primary.poll_transmit() {
                    self.deliver_to_replica(&message);
                    moved = true;
                }
                while let Some(message) = self.replica.poll_transmit() {
                    self.deliver_to_primary(&message);
                    moved = true;
                }
                if !moved {
                    return;
                }
            }
        }

        fn deliver_to_primary(&mut self, message: &ReplicaMessage) {
            let frame = encode_frame(message).unwrap();
            for chunk in frame.chunks(7) {
                let mut decoded = self.at_primary.push(chunk).unwrap();
                while let Some(message) = decoded {
                    let update = self.primary.handle(message, self.now);
                    self.updates.extend(update);
                    decoded = self.at_primary.next_message().unwrap();
                }
            }
        }

        fn deliver_to_replica(&mut self, message: &PrimaryMessage) {
            let frame = encode_frame(message).unwrap();
            for chunk in frame.chunks(7) {
                let mut decoded = self.at_replica.push(chunk).unwrap();
                while let Some(message) = decoded {
                    for event in self.replica.handle(message, self.now) {
                        self.replica_shell(event);
                    }
                    decoded = self.at_replica.next_message().unwrap();
                }
            }
        }

        /// The replica's shell: a bundle whose bytes say "bad" fails to verify.
        fn replica_shell(&mut self, event: ReplicaEvent) {
            match event {
                ReplicaEvent::Apply { version, bytes } if bytes.as_ref() == b"bad" => {
                    self.replica.rejected(version, "bad signature");
                }
                ReplicaEvent::Apply { version, bytes } => {
                    self.running = Some((version, bytes));
                    self.replica.applied(version);
                }
                ReplicaEvent::Refused { reason } => self.refused.push(reason),
            }
        }

        /// Jumps the clock to the replica's next deadline and fires it.
        fn fire_timer(&mut self, queries: u64) {
            self.now = self.replica.poll_timeout().unwrap();
            self.replica.handle_timeout(self.now, stats(queries));
            self.settle();
        }

        fn running_version(&self) -> Option<u64> {
            self.running.as_ref().map(|(version, _)| *version)
        }
    }

    #[test]
    fn replica_and_primary_sync_end_to_end() {
        let start_bundle = Bytes::from(vec![1; 100_000]);
        let mut link = Link::new(None, Some((1, start_bundle.clone())));
        link.settle();
        assert_eq!(link.running, Some((1, start_bundle)));
        assert_eq!(
            link.updates,
            vec![
                ReplicaUpdate::Hello {
                    bundle_version: None
                },
                ReplicaUpdate::Applied { version: 1 },
            ]
        );
        link.updates.clear();

        link.primary.publish(2, Bytes::from_static(b"second"));
        link.settle();
        assert_eq!(link.running_version(), Some(2));
        assert_eq!(link.updates, vec![ReplicaUpdate::Applied { version: 2 }]);
        link.updates.clear();

        let start = link.now;
        link.fire_timer(10);
        link.fire_timer(20);
        assert_eq!(link.now, start + 2 * HEARTBEAT_INTERVAL);
        assert_eq!(
            link.updates,
            vec![
                ReplicaUpdate::Heartbeat {
                    stats: stats(10),
                    bundle_version: Some(2)
                },
                ReplicaUpdate::Heartbeat {
                    stats: stats(20),
                    bundle_version: Some(2)
                },
            ]
        );
        assert_eq!(link.primary.last_heard(), Some(link.now));
        assert!(link.refused.is_empty());
    }

    #[test]
    fn a_bad_bundle_is_reported_and_the_good_one_kept() {
        let mut link = Link::new(Some((3, Bytes::from_static(b"good"))), None);
        link.settle();
        link.primary.publish(4, Bytes::from_static(b"bad"));
        link.settle();
        assert_eq!(link.running_version(), Some(3));
        assert!(
            link.updates
                .iter()
                .any(|update| matches!(update, ReplicaUpdate::Rejected { version: 4, .. })),
            "{:?}",
            link.updates
        );
        link.primary.publish(5, Bytes::from_static(b"fixed"));
        link.settle();
        assert_eq!(link.running_version(), Some(5));
    }

    #[test]
    fn a_revoked_replica_hears_why() {
        let mut link = Link::new(None, None);
        link.settle();
        link.primary.refuse("revoked");
        link.settle();
        assert_eq!(link.refused, vec!["revoked".to_owned()]);
        assert_eq!(link.replica.poll_timeout(), None);
    }

    #[test]
    fn backoff_grows_to_its_cap() {
        let now = clock::now();
        let mut backoff = Backoff::new();
        let mut rng = StdRng::seed_from_u64(1);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(backoff.ceiling().as_secs());
            backoff.next_delay(now, &mut rng);
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
    }

    #[test]
    fn backoff_delays_stay_within_the_ceiling() {
        let now = clock::now();
        let mut rng = StdRng::seed_from_u64(2);
        let mut backoff = Backoff::new();
        let mut longest = Duration::ZERO;
        for _ in 0..500 {
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay(now, &mut rng);
            assert!(delay <= ceiling, "{delay:?} over {ceiling:?}");
            longest = longest.max(delay);
        }
        assert!(
            longest > BACKOFF_MAX / 2,
            "jitter spreads delays: {longest:?}"
        );
        assert!(longest <= BACKOFF_MAX);
    }

    #[test]
    fn backoff_starts_over_after_a_stable_connection() {
        let start = clock::now();
        let mut rng = StdRng::seed_from_u64(3);
        let mut backoff = Backoff::new();
        for _ in 0..5 {
            backoff.next_delay(start, &mut rng);
        }
        backoff.connected(start);
        backoff.next_delay(start + BACKOFF_RESET_AFTER / 2, &mut rng);
        assert_eq!(
            backoff.ceiling(),
            BACKOFF_MAX,
            "a short connection keeps it"
        );

        backoff.connected(start);
        let delay = backoff.next_delay(start + BACKOFF_RESET_AFTER, &mut rng);
        assert!(delay <= BACKOFF_INITIAL);
        assert_eq!(backoff.ceiling(), BACKOFF_INITIAL * 2);
    }
}

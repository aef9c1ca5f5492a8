//! The sync protocol between a replica and its primary, as two sans-IO state
//! machines: messages and time in; messages to send, events and the next
//! timer deadline out. The shell owns the one bidirectional stream and moves
//! frames ([`crate::frame`]) over it.
//!
//! The replica speaks first with [`ReplicaMessage::Hello`] (its protocol
//! version is the first field of the first variant, so any later version can
//! still read it); the primary answers with the newest bundle if the replica
//! runs an older one, pushes every later bundle, and never answers
//! heartbeats.
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
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::frame::Message;
use crate::name::ApplianceName;

/// Version of this protocol; a primary refuses a replica with another one.
/// 2: heartbeats carry the shed and rate-limited counters.
pub const PROTOCOL_VERSION: u16 = 2;

/// Largest frame body a replica accepts from its primary (bundles can be
/// around 10 MB).
pub const MAX_MESSAGE_BYTES: usize = 128 << 20;

/// Largest frame body a primary accepts from a replica.
pub const MAX_REPLICA_MESSAGE_BYTES: usize = 64 << 10;

/// How often a replica sends a heartbeat with its stats.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);

/// What a replica sends to its primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaMessage {
    /// First message on a connection.
    Hello {
        /// The replica's [`PROTOCOL_VERSION`]; keep it the first field.
        protocol: u16,
        /// The replica's own name (informational: the primary knows it
        /// from the pinned certificate).
        name: ApplianceName,
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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
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
    /// Misses answered stale or SERVFAIL because too many were under way.
    pub shed: u64,
    /// Queries over their client's rate limit.
    pub limited: u64,
    /// Entries in the cache (set by the shell).
    pub cache_entries: u64,
    /// Seconds the daemon has run (set by the shell).
    pub uptime_secs: u64,
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
    name: ApplianceName,
    running_version: Option<u64>,
    heartbeat_interval: Duration,
    outgoing: VecDeque<ReplicaMessage>,
    next_heartbeat: Option<Instant>,
}

impl ReplicaSession {
    /// A session for replica `name` running `running_version`.
    pub fn new(name: ApplianceName, running_version: Option<u64>) -> Self {
        Self {
            name,
            running_version,
            heartbeat_interval: HEARTBEAT_INTERVAL,
            outgoing: VecDeque::new(),
            next_heartbeat: None,
        }
    }

    /// Sends heartbeats every `interval` instead of [`HEARTBEAT_INTERVAL`].
    pub fn with_heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// The stream is open: returns the Hello to send first and starts the
    /// heartbeat timer. Anything queued for an earlier connection is dropped.
    pub fn connected(&mut self, now: Instant) -> ReplicaMessage {
        self.outgoing.clear();
        self.next_heartbeat = Some(now + self.heartbeat_interval);
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
        self.next_heartbeat = Some(now + self.heartbeat_interval);
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
    name: ApplianceName,
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
    pub fn new(name: ApplianceName, published: Option<(u64, Bytes)>) -> Self {
        Self {
            name,
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
    pub fn name(&self) -> &ApplianceName {
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
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::frame::{FrameDecoder, FrameError, encode_frame};
    use crate::test_now;

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

    fn kitchen() -> ApplianceName {
        ApplianceName::parse("kitchen").unwrap()
    }

    fn drain<M>(mut poll: impl FnMut() -> Option<M>) -> Vec<M> {
        std::iter::from_fn(&mut poll).collect()
    }

    fn sample_replica_messages() -> Vec<ReplicaMessage> {
        vec![
            ReplicaMessage::Hello {
                protocol: PROTOCOL_VERSION,
                name: kitchen(),
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
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
        assert_eq!(decoder.buffered(), 0);
        assert_eq!(
            decoder.push(&[0; 100]).unwrap_err(),
            err,
            "the error sticks"
        );
        assert_eq!(decoder.buffered(), 0, "nothing buffered after the error");

        let mut decoder = FrameDecoder::<PrimaryMessage>::new();
        let err = decoder.push(&u32::MAX.to_be_bytes()).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn oversized_message_is_not_encoded() {
        let message = ReplicaMessage::Rejected {
            version: 1,
            reason: "x".repeat(MAX_REPLICA_MESSAGE_BYTES),
        };
        let err = encode_frame(&message).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut decoder = FrameDecoder::<PrimaryMessage>::new();
        let err = decoder.push(&[0, 0, 0, 3, 0xff, 0xff, 0xff]).unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "{err}");

        let mut decoder = FrameDecoder::<ReplicaMessage>::new();
        assert!(decoder.push(&[0, 0, 0, 0]).is_err(), "empty body");

        let mut frame = encode_frame(&ReplicaMessage::Applied { version: 1 }).unwrap();
        frame.push(0);
        frame[3] += 1;
        let err = FrameDecoder::<ReplicaMessage>::new()
            .push(&frame)
            .unwrap_err();
        assert!(matches!(err, FrameError::Malformed(_)), "trailing: {err}");

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
            FrameError::Truncated {
                buffered: frame.len() - 1
            }
        );
    }

    #[test]
    fn replica_hello_carries_the_running_version() {
        let now = test_now();
        let mut replica = ReplicaSession::new(kitchen(), Some(7));
        assert_eq!(
            replica.connected(now),
            ReplicaMessage::Hello {
                protocol: PROTOCOL_VERSION,
                name: kitchen(),
                bundle_version: Some(7),
            }
        );
        let mut fresh = ReplicaSession::new(ApplianceName::parse("attic").unwrap(), None);
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
        let now = test_now();
        let mut replica = ReplicaSession::new(kitchen(), Some(7));
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
        let now = test_now();
        let mut replica = ReplicaSession::new(kitchen(), None);
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
        let start = test_now();
        let mut replica = ReplicaSession::new(kitchen(), Some(2));
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
        let now = test_now();
        let mut replica = ReplicaSession::new(kitchen(), None);
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
            name: kitchen(),
            bundle_version,
        }
    }

    fn published(version: u64) -> Option<(u64, Bytes)> {
        Some((version, Bytes::from_static(b"published")))
    }

    #[test]
    fn primary_sends_the_bundle_to_an_older_replica() {
        let now = test_now();
        for replica_version in [None, Some(4)] {
            let mut primary = PrimarySession::new(kitchen(), published(5));
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
        let now = test_now();
        for replica_version in [Some(5), Some(6)] {
            let mut primary = PrimarySession::new(kitchen(), published(5));
            primary.handle(hello(replica_version), now);
            assert_eq!(primary.poll_transmit(), None);
        }
        let mut primary = PrimarySession::new(kitchen(), None);
        primary.handle(hello(None), now);
        assert_eq!(primary.poll_transmit(), None, "nothing published");
    }

    #[test]
    fn primary_pushes_what_it_publishes() {
        let now = test_now();
        let mut primary = PrimarySession::new(kitchen(), published(5));
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
        let now = test_now();
        let mut primary = PrimarySession::new(kitchen(), published(5));
        let update = primary.handle(
            ReplicaMessage::Hello {
                protocol: PROTOCOL_VERSION + 1,
                name: kitchen(),
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
        let now = test_now();
        let mut primary = PrimarySession::new(kitchen(), None);
        let update = primary.handle(ReplicaMessage::Applied { version: 1 }, now);
        assert!(matches!(update, Some(ReplicaUpdate::Refused { .. })));

        let mut primary = PrimarySession::new(kitchen(), None);
        primary.handle(hello(None), now);
        let update = primary.handle(hello(None), now);
        assert!(matches!(update, Some(ReplicaUpdate::Refused { .. })));
    }

    #[test]
    fn primary_reports_updates_for_the_fleet() {
        let now = test_now();
        let mut primary = PrimarySession::new(kitchen(), published(5));
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
        let now = test_now();
        let mut primary = PrimarySession::new(kitchen(), published(5));
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
}

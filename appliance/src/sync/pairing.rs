//! Pairing with a one-time code: the primary issues a short code, the
//! replica connects over QUIC (channel `moat-pair/1`) and both run SPAKE2
//! keyed by the code, then pin each other.
//!
//! The exchange is bound to the TLS session: a [`Transcript`] made of a TLS
//! exporter value and both certificate fingerprints, as each side saw them
//! in its own handshake, enters every key confirmation and MAC. A man in the
//! middle terminates two TLS sessions with different exporters (and shows
//! its own certificates), so confirmation fails on both sides; all he gains
//! is one online guess at the code, which the [`CodeBook`] counts.
//!
//! The flow, replica (SPAKE2 side A) to primary (side B), one bidirectional
//! stream, each message length-prefixed:
//!
//! 1. replica → `Start` (SPAKE2 message A)
//! 2. primary → `Challenge` (SPAKE2 message B, primary's key confirmation),
//!    or `Refused` if no code can be tried
//! 3. replica → `Confirm` (replica's key confirmation), or `Refused`
//! 4. primary → `Welcome` (name and bundle-signing key, MAC'd); the code is
//!    consumed here
//! 5. replica → `Joined` (name, MAC'd); the primary pins, then ends the
//!    stream, which the replica waits for before it pins.
//!
//! [`ReplicaPairing`] and [`PrimaryPairing`] are the pure state machines
//! (messages and time in, messages and results out); [`pair_as_replica`]
//! and [`accept_pairing`] are the quinn shell. Note that the `spake2` crate
//! has had no independent audit.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use ring::hmac;
use serde::{Deserialize, Serialize};
use spake2::{Ed25519Group, Spake2};

use crate::sync::identity::{Fingerprint, Identity};
use crate::sync::tls::{self, TlsError};

/// How long an issued code stays valid unless told otherwise.
pub const DEFAULT_CODE_TTL: Duration = Duration::from_secs(10 * 60);
/// Attempts allowed on one code; then it is burned.
pub const MAX_ATTEMPTS: u32 = 3;
/// Version of the pairing messages, the first byte of each.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest pairing message accepted, in bytes.
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Longest appliance name accepted from a peer, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// How long each step (connect, each message) may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS exporter label the transcript is derived with.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-moat-pairing";

const CODE_LEN: usize = 8;
const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

const LABEL_PRIMARY_CONFIRM: &[u8] = b"moat-pair/1 primary confirms";
const LABEL_REPLICA_CONFIRM: &[u8] = b"moat-pair/1 replica confirms";
const LABEL_WELCOME: &[u8] = b"moat-pair/1 primary welcome";
const LABEL_JOINED: &[u8] = b"moat-pair/1 replica joined";

/// Why pairing failed. Nothing is pinned after any of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PairingError {
    /// Primary side: the code could not be tried, or was wrong.
    #[error(transparent)]
    Code(#[from] CodeError),
    /// Replica side: the code does not match the primary's, or someone is
    /// in the middle of the connection.
    #[error(
        "wrong pairing code (or someone in the middle of the connection): \
         check the code and try again"
    )]
    WrongCode,
    /// Replica side: the primary has no code to try (none issued, expired,
    /// used, or burned by wrong attempts).
    #[error("the pairing code expired or was already used: issue a new one on the primary")]
    CodeUnavailable,
    /// The peer sent something that does not fit the protocol.
    #[error("pairing protocol error: {0}")]
    Protocol(&'static str),
    /// The peer speaks another version of the pairing protocol.
    #[error("the peer speaks pairing protocol version {0}, this appliance {PROTOCOL_VERSION}")]
    Version(u8),
    /// A message over [`MAX_MESSAGE_LEN`].
    #[error("pairing message of {0} bytes is over the {MAX_MESSAGE_LEN}-byte limit")]
    TooLarge(usize),
    /// A step took longer than [`STEP_TIMEOUT`].
    #[error("pairing timed out while {0}")]
    Timeout(&'static str),
    /// The QUIC connection or stream failed.
    #[error("pairing connection failed: {0}")]
    Connection(String),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// This appliance's own name cannot be sent.
    #[error("cannot pair as {0:?}: a name has 1 to {MAX_NAME_LEN} bytes and no control characters")]
    InvalidName(String),
}

/// Why the primary could not try, or did not accept, a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CodeError {
    /// No code has been issued (or it was withdrawn).
    #[error("no pairing code is active: issue one first")]
    NoActiveCode,
    /// The code's time ran out.
    #[error("the pairing code expired")]
    Expired,
    /// The code already paired a replica.
    #[error("the pairing code was already used")]
    Used,
    /// Too many attempts were made with the code.
    #[error("the pairing code was burned after {MAX_ATTEMPTS} attempts")]
    Burned,
    /// The replica's code was not this one (or someone is in the middle).
    #[error(
        "wrong pairing code, or someone in the middle of the connection \
         ({attempts_left} attempts left)"
    )]
    WrongCode {
        /// Attempts still allowed on the code.
        attempts_left: u32,
    },
}

/// Why a typed pairing code was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeParseError {
    /// Not eight characters once spaces and dashes are dropped.
    #[error("a pairing code has 8 characters, like ABCD-1234; this one has {found}")]
    Length {
        /// How many characters were given.
        found: usize,
    },
    /// A character outside the code alphabet.
    #[error("'{found}' cannot be in a pairing code (it uses digits and letters, without U)")]
    Character {
        /// The character.
        found: char,
    },
}

/// A one-time pairing code: 8 Crockford base32 characters (40 random bits),
/// shown as `XXXX-XXXX`. Its `Debug` form hides it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PairingCode([u8; CODE_LEN]);

impl PairingCode {
    /// A fresh code from the operating system's random source.
    pub fn generate() -> Self {
        use rand::{RngCore, TryRngCore};
        let mut bytes = [0; 8];
        rand::rngs::OsRng.unwrap_err().fill_bytes(&mut bytes[..5]);
        Self::from_bits(u64::from_le_bytes(bytes))
    }

    /// The code spelling the low 40 bits of `bits`.
    pub fn from_bits(bits: u64) -> Self {
        let mut chars = [0; CODE_LEN];
        for (index, char) in chars.iter_mut().enumerate() {
            let shift = 5 * (CODE_LEN - 1 - index);
            *char = CROCKFORD[((bits >> shift) & 0x1f) as usize];
        }
        Self(chars)
    }

    /// Reads a typed code: any case, spaces and dashes ignored, `I`/`L`
    /// read as `1` and `O` as `0`.
    pub fn parse(text: &str) -> Result<Self, CodeParseError> {
        let mut chars = [0; CODE_LEN];
        let mut found = 0;
        for typed in text.chars().filter(|c| !c.is_whitespace() && *c != '-') {
            let char = normalize(typed)?;
            if let Some(slot) = chars.get_mut(found) {
                *slot = char;
            }
            found += 1;
        }
        if found != CODE_LEN {
            return Err(CodeParseError::Length { found });
        }
        Ok(Self(chars))
    }

    /// The eight characters, upper case, no dash: the SPAKE2 password.
    pub fn normalized(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

fn normalize(typed: char) -> Result<u8, CodeParseError> {
    let upper = match typed.to_ascii_uppercase() {
        'I' | 'L' => '1',
        'O' => '0',
        other => other,
    };
    u8::try_from(upper)
        .ok()
        .filter(|byte| CROCKFORD.contains(byte))
        .ok_or(CodeParseError::Character { found: typed })
}

impl fmt::Display for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (head, tail) = self.normalized().split_at(CODE_LEN / 2);
        write!(f, "{head}-{tail}")
    }
}

impl fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairingCode(****-****)")
    }
}

impl FromStr for PairingCode {
    type Err = CodeParseError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

/// The primary's pairing codes: at most one active, single use, expiring,
/// burned after [`MAX_ATTEMPTS`] attempts. Pure: time comes in as `now`.
#[derive(Debug, Default)]
pub struct CodeBook {
    active: Option<ActiveCode>,
    issued: u64,
}

#[derive(Debug)]
struct ActiveCode {
    code: PairingCode,
    expires: Instant,
    attempts: u32,
    used: bool,
    generation: u64,
}

/// One try of the active code, counted when it begins.
#[derive(Debug)]
pub struct Attempt {
    code: PairingCode,
    generation: u64,
}

impl CodeBook {
    /// A book with no code.
    pub fn new() -> Self {
        Self::default()
    }

    /// Issues a fresh random code valid for `ttl`, replacing any other;
    /// returns it with its expiry.
    pub fn issue(&mut self, now: Instant, ttl: Duration) -> (PairingCode, Instant) {
        let code = PairingCode::generate();
        (code, self.issue_code(code, now, ttl))
    }

    /// Makes `code` the active code for `ttl` (a code chosen elsewhere, or
    /// a fixed one in tests); returns its expiry.
    pub fn issue_code(&mut self, code: PairingCode, now: Instant, ttl: Duration) -> Instant {
        self.issued += 1;
        let expires = now + ttl;
        self.active = Some(ActiveCode {
            code,
            expires,
            attempts: 0,
            used: false,
            generation: self.issued,
        });
        expires
    }

    /// Withdraws the active code.
    pub fn withdraw(&mut self) {
        self.active = None;
    }

    /// When the active code expires, if one can still be tried at `now`.
    pub fn expires(&self, now: Instant) -> Option<Instant> {
        let active = self.active.as_ref()?;
        active.check(now).ok().map(|()| active.expires)
    }

    /// Begins an attempt, counting it against the code.
    pub fn begin(&mut self, now: Instant) -> Result<Attempt, CodeError> {
        let active = self.active.as_mut().ok_or(CodeError::NoActiveCode)?;
        active.check(now)?;
        active.attempts += 1;
        Ok(Attempt {
            code: active.code,
            generation: active.generation,
        })
    }

    /// The error for a failed attempt, with what is left of its code.
    pub fn failed(&self, attempt: &Attempt) -> CodeError {
        let attempts_left = self
            .current(attempt)
            .map_or(0, |active| MAX_ATTEMPTS.saturating_sub(active.attempts));
        CodeError::WrongCode { attempts_left }
    }

    /// Consumes the code of a successful attempt; fails if the code was
    /// replaced or used meanwhile.
    pub fn consume(&mut self, attempt: &Attempt) -> Result<(), CodeError> {
        let active = self
            .active
            .as_mut()
            .filter(|active| active.generation == attempt.generation)
            .ok_or(CodeError::NoActiveCode)?;
        if active.used {
            return Err(CodeError::Used);
        }
        active.used = true;
        Ok(())
    }

    fn current(&self, attempt: &Attempt) -> Option<&ActiveCode> {
        self.active
            .as_ref()
            .filter(|active| active.generation == attempt.generation)
    }
}

impl ActiveCode {
    fn check(&self, now: Instant) -> Result<(), CodeError> {
        if self.used {
            Err(CodeError::Used)
        } else if now >= self.expires {
            Err(CodeError::Expired)
        } else if self.attempts >= MAX_ATTEMPTS {
            Err(CodeError::Burned)
        } else {
            Ok(())
        }
    }
}

/// What the replica pins: its primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrimaryPin {
    /// Where the primary was reached (as given to `moat join`).
    pub address: String,
    /// The primary's name.
    pub name: String,
    /// The primary's certificate fingerprint.
    pub fingerprint: Fingerprint,
    /// The primary's bundle-signing key (raw ed25519).
    #[serde(with = "hex32")]
    pub signing_key: [u8; 32],
}

/// What the primary pins: a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaPin {
    /// The replica's name.
    pub name: String,
    /// The replica's certificate fingerprint.
    pub fingerprint: Fingerprint,
}

/// What both sides bind the exchange to, as each saw it in its own TLS
/// handshake: a TLS exporter value and both certificate fingerprints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transcript {
    /// TLS exporter output ([`EXPORTER_LABEL`], empty context, 32 bytes).
    pub exporter: [u8; 32],
    /// The replica's certificate fingerprint.
    pub replica: Fingerprint,
    /// The primary's certificate fingerprint.
    pub primary: Fingerprint,
}

impl Transcript {
    /// Reads the exporter value of `connection`.
    pub fn of_connection(
        connection: &quinn::Connection,
        replica: Fingerprint,
        primary: Fingerprint,
    ) -> Result<Self, PairingError> {
        let mut exporter = [0; 32];
        connection
            .export_keying_material(&mut exporter, EXPORTER_LABEL, b"")
            .map_err(|_| PairingError::Connection("no TLS exporter".to_owned()))?;
        Ok(Self {
            exporter,
            replica,
            primary,
        })
    }

    fn mac(&self, key: &hmac::Key, label: &[u8], payload: &[u8]) -> [u8; 32] {
        let mut tag = [0; 32];
        tag.copy_from_slice(hmac::sign(key, &self.mac_input(label, payload)).as_ref());
        tag
    }

    fn verify(&self, key: &hmac::Key, label: &[u8], payload: &[u8], tag: &[u8; 32]) -> bool {
        hmac::verify(key, &self.mac_input(label, payload), tag).is_ok()
    }

    fn mac_input(&self, label: &[u8], payload: &[u8]) -> Vec<u8> {
        [
            label,
            &[0],
            &self.exporter,
            self.replica.as_bytes(),
            self.primary.as_bytes(),
            payload,
        ]
        .concat()
    }
}

/// Why a side refused the exchange (told to the peer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The primary has no code that can be tried.
    CodeUnavailable,
    /// Key confirmation failed: wrong code, or someone in the middle.
    WrongCode,
    /// A message did not fit the protocol.
    Protocol,
}

/// A pairing message. On the wire: [`PROTOCOL_VERSION`], then postcard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Message {
    /// Replica → primary: SPAKE2 message A.
    Start {
        /// The SPAKE2 message.
        spake: Vec<u8>,
    },
    /// Primary → replica: SPAKE2 message B and the primary's confirmation.
    Challenge {
        /// The SPAKE2 message.
        spake: Vec<u8>,
        /// HMAC proving the primary derived the key.
        confirm: [u8; 32],
    },
    /// Replica → primary: the replica's confirmation.
    Confirm {
        /// HMAC proving the replica derived the key.
        confirm: [u8; 32],
    },
    /// Primary → replica: what the replica pins.
    Welcome {
        /// The primary's name.
        name: String,
        /// The primary's bundle-signing key.
        signing_key: [u8; 32],
        /// HMAC over both.
        mac: [u8; 32],
    },
    /// Replica → primary: the replica's name.
    Joined {
        /// The replica's name.
        name: String,
        /// HMAC over it.
        mac: [u8; 32],
    },
    /// Either way: the exchange is over.
    Refused {
        /// Why.
        reason: Refusal,
    },
}

impl Message {
    /// The message's bytes: version, then postcard.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![PROTOCOL_VERSION];
        // Serializing into a Vec fails only on out-of-memory.
        bytes.extend(postcard::to_allocvec(self).unwrap_or_default());
        bytes
    }

    /// Reads a message, refusing other versions and trailing bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, PairingError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(PairingError::TooLarge(bytes.len()));
        }
        let (&version, body) = bytes
            .split_first()
            .ok_or(PairingError::Protocol("empty message"))?;
        if version != PROTOCOL_VERSION {
            return Err(PairingError::Version(version));
        }
        match postcard::take_from_bytes(body) {
            Ok((message, [])) => Ok(message),
            Ok(_) => Err(PairingError::Protocol("trailing bytes after a message")),
            Err(_) => Err(PairingError::Protocol("malformed message")),
        }
    }
}

/// The replica's side of pairing, sans IO. Call order: [`Self::new`], then
/// send every [`Self::poll_transmit`] message, feed each received message
/// to [`Self::handle_message`] and send what it queued, until it returns
/// the pin or an error (after an error, still send what is queued: it tells
/// the primary why).
#[derive(Debug)]
pub struct ReplicaPairing {
    state: ReplicaState,
    transcript: Transcript,
    name: String,
    address: String,
    outbox: VecDeque<Message>,
}

#[derive(Debug)]
enum ReplicaState {
    AwaitChallenge(Spake2<Ed25519Group>),
    AwaitWelcome(hmac::Key),
    Paired,
    Failed,
}

impl ReplicaPairing {
    /// Starts pairing as `name` with the primary reached at `address`.
    pub fn new(code: &PairingCode, transcript: Transcript, name: &str, address: &str) -> Self {
        let (spake, message) = Spake2::<Ed25519Group>::start_a(
            &spake2::Password::new(code.normalized()),
            &spake2::Identity::new(transcript.replica.as_bytes()),
            &spake2::Identity::new(transcript.primary.as_bytes()),
        );
        Self {
            state: ReplicaState::AwaitChallenge(spake),
            transcript,
            name: name.to_owned(),
            address: address.to_owned(),
            outbox: VecDeque::from([Message::Start { spake: message }]),
        }
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.outbox.pop_front()
    }

    /// Handles a message from the primary: `Some` pin once paired.
    pub fn handle_message(&mut self, message: Message) -> Result<Option<PrimaryPin>, PairingError> {
        let state = std::mem::replace(&mut self.state, ReplicaState::Failed);
        match (state, message) {
            (_, Message::Refused { reason }) => Err(refused_by_primary(reason)),
            (
                ReplicaState::AwaitChallenge(spake),
                Message::Challenge {
                    spake: theirs,
                    confirm,
                },
            ) => self.handle_challenge(spake, &theirs, &confirm),
            (
                ReplicaState::AwaitWelcome(key),
                Message::Welcome {
                    name,
                    signing_key,
                    mac,
                },
            ) => self.handle_welcome(&key, name, signing_key, &mac).map(Some),
            _ => Err(self.refuse(Refusal::Protocol, "unexpected message")),
        }
    }

    fn handle_challenge(
        &mut self,
        spake: Spake2<Ed25519Group>,
        theirs: &[u8],
        confirm: &[u8; 32],
    ) -> Result<Option<PrimaryPin>, PairingError> {
        let Ok(secret) = spake.finish(theirs) else {
            return Err(self.refuse(Refusal::Protocol, "bad SPAKE2 message"));
        };
        let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        if !self
            .transcript
            .verify(&key, LABEL_PRIMARY_CONFIRM, &[], confirm)
        {
            self.outbox.push_back(Message::Refused {
                reason: Refusal::WrongCode,
            });
            return Err(PairingError::WrongCode);
        }
        let confirm = self.transcript.mac(&key, LABEL_REPLICA_CONFIRM, &[]);
        self.outbox.push_back(Message::Confirm { confirm });
        self.state = ReplicaState::AwaitWelcome(key);
        Ok(None)
    }

    fn handle_welcome(
        &mut self,
        key: &hmac::Key,
        name: String,
        signing_key: [u8; 32],
        mac: &[u8; 32],
    ) -> Result<PrimaryPin, PairingError> {
        let payload = welcome_payload(&name, &signing_key);
        if !self.transcript.verify(key, LABEL_WELCOME, &payload, mac) {
            return Err(self.refuse(Refusal::Protocol, "unauthenticated welcome"));
        }
        if !valid_name(&name) {
            return Err(self.refuse(Refusal::Protocol, "invalid primary name"));
        }
        let mac = self.transcript.mac(key, LABEL_JOINED, self.name.as_bytes());
        self.outbox.push_back(Message::Joined {
            name: self.name.clone(),
            mac,
        });
        self.state = ReplicaState::Paired;
        Ok(PrimaryPin {
            address: self.address.clone(),
            name,
            fingerprint: self.transcript.primary,
            signing_key,
        })
    }

    fn refuse(&mut self, reason: Refusal, why: &'static str) -> PairingError {
        self.outbox.push_back(Message::Refused { reason });
        PairingError::Protocol(why)
    }
}

fn refused_by_primary(reason: Refusal) -> PairingError {
    match reason {
        Refusal::CodeUnavailable => PairingError::CodeUnavailable,
        Refusal::WrongCode => PairingError::WrongCode,
        Refusal::Protocol => PairingError::Protocol("the primary refused a message"),
    }
}

/// The primary's side of pairing, sans IO. Call order: [`Self::new`], then
/// feed each received message to [`Self::handle_message`] and send every
/// [`Self::poll_transmit`] message, until it returns the pin or an error
/// (after an error, still send what is queued: it tells the replica why).
#[derive(Debug)]
pub struct PrimaryPairing {
    state: PrimaryState,
    transcript: Transcript,
    name: String,
    signing_key: [u8; 32],
    outbox: VecDeque<Message>,
}

#[derive(Debug)]
enum PrimaryState {
    AwaitStart,
    AwaitConfirm { key: hmac::Key, attempt: Attempt },
    AwaitJoined(hmac::Key),
    Failed,
}

impl PrimaryPairing {
    /// Starts pairing as `name`, offering `signing_key` to pin.
    pub fn new(transcript: Transcript, name: &str, signing_key: [u8; 32]) -> Self {
        Self {
            state: PrimaryState::AwaitStart,
            transcript,
            name: name.to_owned(),
            signing_key,
            outbox: VecDeque::new(),
        }
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.outbox.pop_front()
    }

    /// Handles a message from the replica at `now`: `Some` pin once paired.
    pub fn handle_message(
        &mut self,
        message: Message,
        codes: &mut CodeBook,
        now: Instant,
    ) -> Result<Option<ReplicaPin>, PairingError> {
        let state = std::mem::replace(&mut self.state, PrimaryState::Failed);
        match (state, message) {
            (PrimaryState::AwaitConfirm { attempt, .. }, Message::Refused { reason }) => {
                Err(match reason {
                    Refusal::WrongCode => codes.failed(&attempt).into(),
                    _ => PairingError::Protocol("the replica refused a message"),
                })
            }
            (_, Message::Refused { .. }) => {
                Err(PairingError::Protocol("the replica refused a message"))
            }
            (PrimaryState::AwaitStart, Message::Start { spake }) => {
                self.handle_start(&spake, codes, now).map(|()| None)
            }
            (PrimaryState::AwaitConfirm { key, attempt }, Message::Confirm { confirm }) => self
                .handle_confirm(key, &attempt, &confirm, codes)
                .map(|()| None),
            (PrimaryState::AwaitJoined(key), Message::Joined { name, mac }) => {
                self.handle_joined(&key, name, &mac).map(Some)
            }
            _ => Err(self.refuse(Refusal::Protocol, "unexpected message")),
        }
    }

    fn handle_start(
        &mut self,
        theirs: &[u8],
        codes: &mut CodeBook,
        now: Instant,
    ) -> Result<(), PairingError> {
        let attempt = codes.begin(now).inspect_err(|_| {
            self.outbox.push_back(Message::Refused {
                reason: Refusal::CodeUnavailable,
            });
        })?;
        let (spake, ours) = Spake2::<Ed25519Group>::start_b(
            &spake2::Password::new(attempt.code.normalized()),
            &spake2::Identity::new(self.transcript.replica.as_bytes()),
            &spake2::Identity::new(self.transcript.primary.as_bytes()),
        );
        let Ok(secret) = spake.finish(theirs) else {
            return Err(self.refuse(Refusal::Protocol, "bad SPAKE2 message"));
        };
        let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
        let confirm = self.transcript.mac(&key, LABEL_PRIMARY_CONFIRM, &[]);
        self.outbox.push_back(Message::Challenge {
            spake: ours,
            confirm,
        });
        self.state = PrimaryState::AwaitConfirm { key, attempt };
        Ok(())
    }

    fn handle_confirm(
        &mut self,
        key: hmac::Key,
        attempt: &Attempt,
        confirm: &[u8; 32],
        codes: &mut CodeBook,
    ) -> Result<(), PairingError> {
        if !self
            .transcript
            .verify(&key, LABEL_REPLICA_CONFIRM, &[], confirm)
        {
            self.outbox.push_back(Message::Refused {
                reason: Refusal::WrongCode,
            });
            return Err(codes.failed(attempt).into());
        }
        if let Err(err) = codes.consume(attempt) {
            self.outbox.push_back(Message::Refused {
                reason: Refusal::CodeUnavailable,
            });
            return Err(err.into());
        }
        let payload = welcome_payload(&self.name, &self.signing_key);
        let mac = self.transcript.mac(&key, LABEL_WELCOME, &payload);
        self.outbox.push_back(Message::Welcome {
            name: self.name.clone(),
            signing_key: self.signing_key,
            mac,
        });
        self.state = PrimaryState::AwaitJoined(key);
        Ok(())
    }

    fn handle_joined(
        &mut self,
        key: &hmac::Key,
        name: String,
        mac: &[u8; 32],
    ) -> Result<ReplicaPin, PairingError> {
        if !self
            .transcript
            .verify(key, LABEL_JOINED, name.as_bytes(), mac)
        {
            return Err(self.refuse(Refusal::Protocol, "unauthenticated name"));
        }
        if !valid_name(&name) {
            return Err(self.refuse(Refusal::Protocol, "invalid replica name"));
        }
        Ok(ReplicaPin {
            name,
            fingerprint: self.transcript.replica,
        })
    }

    fn refuse(&mut self, reason: Refusal, why: &'static str) -> PairingError {
        self.outbox.push_back(Message::Refused { reason });
        PairingError::Protocol(why)
    }
}

fn welcome_payload(name: &str, signing_key: &[u8; 32]) -> Vec<u8> {
    [signing_key.as_slice(), name.as_bytes()].concat()
}

fn check_own_name(name: &str) -> Result<(), PairingError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(PairingError::InvalidName(name.to_owned()))
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && !name.chars().any(char::is_control)
}

/// Pairs this appliance as a replica of the primary at `primary` (`address`
/// is how the user named it, kept in the pin). Opens its own connection
/// from `endpoint` (see [`tls::client_endpoint`]) and closes it after.
pub async fn pair_as_replica(
    endpoint: &quinn::Endpoint,
    primary: SocketAddr,
    address: &str,
    code: &PairingCode,
    identity: &Identity,
    replica_name: &str,
) -> Result<PrimaryPin, PairingError> {
    check_own_name(replica_name)?;
    let config = tls::pairing_client_config(identity)?;
    let connecting = endpoint
        .connect_with(config, primary, tls::SERVER_NAME)
        .map_err(|err| PairingError::Connection(err.to_string()))?;
    let connection = within("connecting to the primary", connecting)
        .await?
        .map_err(connection_error)?;
    let result = run_replica(&connection, address, code, identity, replica_name).await;
    connection.close(quinn::VarInt::from_u32(0), b"pairing over");
    result
}

async fn run_replica(
    connection: &quinn::Connection,
    address: &str,
    code: &PairingCode,
    identity: &Identity,
    replica_name: &str,
) -> Result<PrimaryPin, PairingError> {
    let primary = tls::peer_fingerprint(connection)
        .ok_or(PairingError::Protocol("the primary showed no certificate"))?;
    let transcript = Transcript::of_connection(connection, identity.fingerprint(), primary)?;
    let (mut send, mut recv) = within("opening a stream", connection.open_bi())
        .await?
        .map_err(connection_error)?;
    let mut pairing = ReplicaPairing::new(code, transcript, replica_name, address);
    loop {
        flush(&mut send, || pairing.poll_transmit()).await?;
        let message = recv_message(&mut recv)
            .await?
            .ok_or(PairingError::Protocol(
                "the primary ended the exchange early",
            ))?;
        match pairing.handle_message(message) {
            Ok(None) => {}
            Ok(Some(pin)) => return finish_replica(&mut send, &mut recv, &mut pairing, pin).await,
            Err(err) => {
                return Err(refuse_and_end(&mut send, || pairing.poll_transmit(), err).await);
            }
        }
    }
}

/// Sends `Joined` and waits for the primary to end the stream, its sign
/// that it pinned this replica; only then is the pin returned.
async fn finish_replica(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    pairing: &mut ReplicaPairing,
    pin: PrimaryPin,
) -> Result<PrimaryPin, PairingError> {
    flush(send, || pairing.poll_transmit()).await?;
    let _ = send.finish();
    match recv_message(recv).await? {
        None => Ok(pin),
        Some(message) => Err(pairing
            .handle_message(message)
            .err()
            .unwrap_or(PairingError::Protocol("unexpected message after pairing"))),
    }
}

/// Runs the primary's side of pairing on an accepted connection whose
/// channel is pairing (see [`tls::admit`]); `codes` is locked only briefly.
/// Returns the replica to pin.
pub async fn accept_pairing(
    connection: &quinn::Connection,
    codes: &parking_lot::Mutex<CodeBook>,
    identity: &Identity,
    primary_name: &str,
    signing_key: [u8; 32],
) -> Result<ReplicaPin, PairingError> {
    check_own_name(primary_name)?;
    let replica = tls::peer_fingerprint(connection)
        .ok_or(PairingError::Protocol("the replica showed no certificate"))?;
    let transcript = Transcript::of_connection(connection, replica, identity.fingerprint())?;
    let (mut send, mut recv) = within("waiting for the replica", connection.accept_bi())
        .await?
        .map_err(connection_error)?;
    let mut pairing = PrimaryPairing::new(transcript, primary_name, signing_key);
    loop {
        let message = recv_message(&mut recv)
            .await?
            .ok_or(PairingError::Protocol(
                "the replica ended the exchange early",
            ))?;
        let handled = pairing.handle_message(message, &mut codes.lock(), crate::clock::now());
        match handled {
            Ok(None) => flush(&mut send, || pairing.poll_transmit()).await?,
            Ok(Some(pin)) => {
                let _ = send.finish();
                let _ = within("ending the exchange", send.stopped()).await;
                return Ok(pin);
            }
            Err(err) => {
                return Err(refuse_and_end(&mut send, || pairing.poll_transmit(), err).await);
            }
        }
    }
}

async fn flush(
    send: &mut quinn::SendStream,
    mut next: impl FnMut() -> Option<Message>,
) -> Result<(), PairingError> {
    while let Some(message) = next() {
        send_message(send, &message).await?;
    }
    Ok(())
}

/// Best effort: tells the peer why (queued messages), ends the stream and
/// waits briefly for it to arrive; returns `err`.
async fn refuse_and_end(
    send: &mut quinn::SendStream,
    next: impl FnMut() -> Option<Message>,
    err: PairingError,
) -> PairingError {
    if flush(send, next).await.is_ok() && send.finish().is_ok() {
        let _ = within("ending the exchange", send.stopped()).await;
    }
    err
}

async fn send_message(send: &mut quinn::SendStream, message: &Message) -> Result<(), PairingError> {
    let body = message.encode();
    let len = u32::try_from(body.len()).map_err(|_| PairingError::TooLarge(body.len()))?;
    let frame = [len.to_be_bytes().as_slice(), &body].concat();
    within("sending", send.write_all(&frame))
        .await?
        .map_err(|err| PairingError::Connection(err.to_string()))
}

/// The next message; `None` if the peer ended the stream between messages.
async fn recv_message(recv: &mut quinn::RecvStream) -> Result<Option<Message>, PairingError> {
    let mut len = [0; 4];
    match within("waiting for the peer", recv.read_exact(&mut len)).await? {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(err) => return Err(read_error(err)),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE_LEN {
        return Err(PairingError::TooLarge(len));
    }
    let mut body = vec![0; len];
    within("reading a message", recv.read_exact(&mut body))
        .await?
        .map_err(read_error)?;
    Message::decode(&body).map(Some)
}

fn read_error(err: quinn::ReadExactError) -> PairingError {
    match err {
        quinn::ReadExactError::FinishedEarly(_) => PairingError::Protocol("truncated message"),
        quinn::ReadExactError::ReadError(err) => PairingError::Connection(err.to_string()),
    }
}

fn connection_error(err: quinn::ConnectionError) -> PairingError {
    PairingError::Connection(err.to_string())
}

async fn within<T>(step: &'static str, future: impl Future<Output = T>) -> Result<T, PairingError> {
    tokio::time::timeout(STEP_TIMEOUT, future)
        .await
        .map_err(|_| PairingError::Timeout(step))
}

/// Serde for a 32-byte key as lowercase hex.
mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::sync::identity::Fingerprint;

    pub(super) fn serialize<S: Serializer>(
        bytes: &[u8; 32],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&Fingerprint(*bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(deserializer)?;
        Fingerprint::from_hex(&text)
            .map(|fingerprint| fingerprint.0)
            .map_err(|_| serde::de::Error::custom("a key is 64 hexadecimal digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];

    fn code(text: &str) -> PairingCode {
        PairingCode::parse(text).unwrap()
    }

    fn transcript() -> Transcript {
        Transcript {
            exporter: [1; 32],
            replica: Fingerprint([2; 32]),
            primary: Fingerprint([3; 32]),
        }
    }

    struct Run {
        replica: Result<PrimaryPin, PairingError>,
        primary: Result<ReplicaPin, PairingError>,
    }

    /// Runs both machines in memory until each has a result.
    fn run(
        typed: &PairingCode,
        replica_view: Transcript,
        primary_view: Transcript,
        codes: &mut CodeBook,
        now: Instant,
    ) -> Run {
        let mut replica = ReplicaPairing::new(typed, replica_view, "kitchen", "primary.lan");
        let mut primary = PrimaryPairing::new(primary_view, "basement", KEY);
        let (mut replica_result, mut primary_result) = (None, None);
        while replica_result.is_none() || primary_result.is_none() {
            let mut moved = false;
            while let Some(message) = replica.poll_transmit() {
                moved = true;
                if primary_result.is_none() {
                    primary_result = primary.handle_message(message, codes, now).transpose();
                }
            }
            while let Some(message) = primary.poll_transmit() {
                moved = true;
                if replica_result.is_none() {
                    replica_result = replica.handle_message(message).transpose();
                }
            }
            assert!(moved, "stalled: {replica_result:?} {primary_result:?}");
        }
        Run {
            replica: replica_result.unwrap(),
            primary: primary_result.unwrap(),
        }
    }

    fn book_with(code: &PairingCode, now: Instant) -> CodeBook {
        let mut codes = CodeBook::new();
        codes.issue_code(*code, now, DEFAULT_CODE_TTL);
        codes
    }

    #[test]
    fn the_right_code_pairs_both_sides() {
        let now = crate::clock::now();
        let issued = code("ABCD-2345");
        let mut codes = book_with(&issued, now);
        let run = run(
            &code("abcd 2345"),
            transcript(),
            transcript(),
            &mut codes,
            now,
        );
        let primary = run.replica.unwrap();
        assert_eq!(
            primary,
            PrimaryPin {
                address: "primary.lan".into(),
                name: "basement".into(),
                fingerprint: Fingerprint([3; 32]),
                signing_key: KEY,
            }
        );
        let replica = run.primary.unwrap();
        assert_eq!(replica.name, "kitchen");
        assert_eq!(replica.fingerprint, Fingerprint([2; 32]));
    }

    #[test]
    fn a_code_is_single_use() {
        let now = crate::clock::now();
        let issued = code("ABCD-2345");
        let mut codes = book_with(&issued, now);
        assert!(
            run(&issued, transcript(), transcript(), &mut codes, now)
                .replica
                .is_ok()
        );
        let again = run(&issued, transcript(), transcript(), &mut codes, now);
        assert!(matches!(again.replica, Err(PairingError::CodeUnavailable)));
        assert!(matches!(
            again.primary,
            Err(PairingError::Code(CodeError::Used))
        ));
    }

    #[test]
    fn wrong_codes_fail_both_sides_and_three_burn_the_code() {
        let now = crate::clock::now();
        let issued = code("ABCD-2345");
        let mut codes = book_with(&issued, now);
        for attempts_left in [2, 1, 0] {
            let run = run(
                &code("ABCD-2346"),
                transcript(),
                transcript(),
                &mut codes,
                now,
            );
            assert!(
                matches!(run.replica, Err(PairingError::WrongCode)),
                "{:?}",
                run.replica
            );
            let err = run.primary.unwrap_err();
            assert!(
                matches!(err, PairingError::Code(CodeError::WrongCode { attempts_left: left }) if left == attempts_left),
                "{err}"
            );
        }
        let burned = run(&issued, transcript(), transcript(), &mut codes, now);
        assert!(matches!(burned.replica, Err(PairingError::CodeUnavailable)));
        assert!(matches!(
            burned.primary,
            Err(PairingError::Code(CodeError::Burned))
        ));
    }

    #[test]
    fn an_expired_code_fails_and_a_new_code_replaces_the_old() {
        let now = crate::clock::now();
        let issued = code("ABCD-2345");
        let mut codes = book_with(&issued, now);
        let later = now + DEFAULT_CODE_TTL;
        let run1 = run(&issued, transcript(), transcript(), &mut codes, later);
        assert!(matches!(run1.replica, Err(PairingError::CodeUnavailable)));
        assert!(matches!(
            run1.primary,
            Err(PairingError::Code(CodeError::Expired))
        ));

        let (fresh, expires) = codes.issue(later, Duration::from_secs(60));
        assert_eq!(expires, later + Duration::from_secs(60));
        assert_eq!(codes.expires(later), Some(expires));
        let old = run(&issued, transcript(), transcript(), &mut codes, later);
        assert!(matches!(old.replica, Err(PairingError::WrongCode)));
        assert!(
            run(&fresh, transcript(), transcript(), &mut codes, later)
                .primary
                .is_ok()
        );
        assert_eq!(codes.expires(later), None, "used");
    }

    #[test]
    fn no_code_issued_is_refused() {
        let mut codes = CodeBook::new();
        let run = run(
            &code("ABCD-2345"),
            transcript(),
            transcript(),
            &mut codes,
            crate::clock::now(),
        );
        assert!(matches!(run.replica, Err(PairingError::CodeUnavailable)));
        assert!(matches!(
            run.primary,
            Err(PairingError::Code(CodeError::NoActiveCode))
        ));
    }

    #[test]
    fn a_man_in_the_middle_fails_both_sides() {
        let now = crate::clock::now();
        let issued = code("ABCD-2345");
        let other_session = Transcript {
            exporter: [9; 32],
            ..transcript()
        };
        let relay_certificate = Transcript {
            primary: Fingerprint([8; 32]),
            ..transcript()
        };
        for replica_view in [other_session, relay_certificate] {
            let mut codes = book_with(&issued, now);
            let run = run(&issued, replica_view, transcript(), &mut codes, now);
            assert!(matches!(run.replica, Err(PairingError::WrongCode)));
            assert!(matches!(
                run.primary,
                Err(PairingError::Code(CodeError::WrongCode {
                    attempts_left: 2
                }))
            ));
        }
    }

    #[test]
    fn concurrent_success_consumes_the_code_once() {
        let now = crate::clock::now();
        let mut codes = book_with(&code("ABCD-2345"), now);
        let first = codes.begin(now).unwrap();
        let second = codes.begin(now).unwrap();
        assert_eq!(codes.consume(&first), Ok(()));
        assert_eq!(codes.consume(&second), Err(CodeError::Used));
        codes.issue(now, DEFAULT_CODE_TTL);
        assert_eq!(codes.consume(&first), Err(CodeError::NoActiveCode));
        assert_eq!(
            codes.failed(&first),
            CodeError::WrongCode { attempts_left: 0 }
        );
    }

    #[test]
    fn forged_or_misplaced_messages_are_refused() {
        let now = crate::clock::now();
        let issued = code("ABCD-2345");
        let mut codes = book_with(&issued, now);
        let mut primary = PrimaryPairing::new(transcript(), "basement", KEY);
        let confirm = Message::Confirm { confirm: [0; 32] };
        assert!(matches!(
            primary.handle_message(confirm, &mut codes, now),
            Err(PairingError::Protocol(_))
        ));
        assert_eq!(
            primary.poll_transmit(),
            Some(Message::Refused {
                reason: Refusal::Protocol
            })
        );

        let mut primary = PrimaryPairing::new(transcript(), "basement", KEY);
        let garbage = Message::Start { spake: vec![0; 3] };
        assert!(primary.handle_message(garbage, &mut codes, now).is_err());

        let mut replica = ReplicaPairing::new(&issued, transcript(), "kitchen", "p");
        let _start = replica.poll_transmit();
        let welcome = Message::Welcome {
            name: "evil".into(),
            signing_key: [0; 32],
            mac: [0; 32],
        };
        assert!(replica.handle_message(welcome).is_err());
    }

    #[test]
    fn messages_are_versioned_and_bounded() {
        let message = Message::Joined {
            name: "kitchen".into(),
            mac: [5; 32],
        };
        let bytes = message.encode();
        assert_eq!(bytes.first(), Some(&PROTOCOL_VERSION));
        assert_eq!(Message::decode(&bytes).unwrap(), message);
        let mut newer = bytes.clone();
        newer[0] = 2;
        assert!(matches!(
            Message::decode(&newer),
            Err(PairingError::Version(2))
        ));
        assert!(Message::decode(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Message::decode(&longer).is_err());
        assert!(Message::decode(&[]).is_err());
        assert!(matches!(
            Message::decode(&vec![1; MAX_MESSAGE_LEN + 1]),
            Err(PairingError::TooLarge(_))
        ));
        assert!(Message::decode(&[1, 200, 200, 200]).is_err());
    }

    #[test]
    fn codes_parse_forgivingly_and_print_grouped() {
        let parsed = code(" abcd-2345 ");
        assert_eq!(parsed.to_string(), "ABCD-2345");
        assert_eq!(parsed.normalized(), "ABCD2345");
        assert_eq!(code("1O1L-iolI").normalized(), "10111011");
        assert_eq!(code("AB CD 23 45"), parsed);
        assert_eq!("abcd2345".parse::<PairingCode>(), Ok(parsed));
        assert_eq!(
            PairingCode::parse("ABCD-234"),
            Err(CodeParseError::Length { found: 7 })
        );
        assert_eq!(
            PairingCode::parse("ABCD-23456"),
            Err(CodeParseError::Length { found: 9 })
        );
        assert_eq!(
            PairingCode::parse("ABCU-2345"),
            Err(CodeParseError::Character { found: 'U' })
        );
        assert_eq!(
            PairingCode::parse("ABC!-2345"),
            Err(CodeParseError::Character { found: '!' })
        );
        assert_eq!(
            PairingCode::parse("ABCÉ-2345"),
            Err(CodeParseError::Character { found: 'É' })
        );
        assert!(
            !format!("{parsed:?}").contains("ABCD"),
            "Debug hides the code"
        );
    }

    #[test]
    fn generated_codes_cover_the_alphabet_and_round_trip() {
        assert_eq!(PairingCode::from_bits(0).to_string(), "0000-0000");
        assert_eq!(
            PairingCode::from_bits((1 << 40) - 1).to_string(),
            "ZZZZ-ZZZZ"
        );
        let codes: Vec<PairingCode> = (0..32).map(|_| PairingCode::generate()).collect();
        for generated in &codes {
            assert_eq!(code(&generated.to_string()), *generated);
        }
        let distinct: std::collections::HashSet<&str> =
            codes.iter().map(PairingCode::normalized).collect();
        assert!(distinct.len() > 30, "random: {distinct:?}");
    }

    #[test]
    fn pins_are_json_with_hex_keys() {
        let pin = PrimaryPin {
            address: "primary.lan:853".into(),
            name: "basement".into(),
            fingerprint: Fingerprint([0xab; 32]),
            signing_key: [0x01; 32],
        };
        let json = serde_json::to_string(&pin).unwrap();
        assert!(json.contains(&"01".repeat(32)), "{json}");
        assert_eq!(serde_json::from_str::<PrimaryPin>(&json).unwrap(), pin);
    }

    mod quic {
        use std::sync::Arc;

        use super::*;
        use crate::sync::tls::{self, Admission, Pins};

        struct Primary {
            endpoint: quinn::Endpoint,
            identity: Identity,
            codes: Arc<parking_lot::Mutex<CodeBook>>,
        }

        fn primary(code: &PairingCode) -> Primary {
            let identity = Identity::generate("basement").unwrap();
            let config = tls::server_config(&identity).unwrap();
            let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
            let mut codes = CodeBook::new();
            codes.issue_code(*code, crate::clock::now(), DEFAULT_CODE_TTL);
            Primary {
                endpoint,
                identity,
                codes: Arc::new(parking_lot::Mutex::new(codes)),
            }
        }

        /// Accepts one connection and runs pairing on it.
        fn serve_one(
            primary: &Primary,
        ) -> tokio::task::JoinHandle<Result<ReplicaPin, PairingError>> {
            let endpoint = primary.endpoint.clone();
            let identity = primary.identity.clone();
            let codes = primary.codes.clone();
            tokio::spawn(async move {
                let connection = endpoint.accept().await.unwrap().await.unwrap();
                let admission = tls::admit(&connection, &Pins::new(|_| false)).unwrap();
                assert_eq!(admission, Admission::Pairing);
                let pin = accept_pairing(&connection, &codes, &identity, "basement", KEY).await;
                connection.closed().await;
                pin
            })
        }

        async fn join(
            primary: &Primary,
            typed: &PairingCode,
            replica: &Identity,
        ) -> Result<PrimaryPin, PairingError> {
            let address = primary.endpoint.local_addr().unwrap();
            let endpoint = tls::client_endpoint(address).unwrap();
            let pin =
                pair_as_replica(&endpoint, address, "primary.lan", typed, replica, "kitchen").await;
            endpoint.wait_idle().await;
            pin
        }

        #[tokio::test]
        async fn pairing_over_quic_pins_both_sides() {
            let issued = code("ABCD-2345");
            let primary = primary(&issued);
            let server = serve_one(&primary);
            let replica = Identity::generate("kitchen").unwrap();
            let pinned_primary = join(&primary, &issued, &replica).await.unwrap();
            let pinned_replica = server.await.unwrap().unwrap();
            assert_eq!(pinned_primary.fingerprint, primary.identity.fingerprint());
            assert_eq!(pinned_primary.name, "basement");
            assert_eq!(pinned_primary.signing_key, KEY);
            assert_eq!(pinned_primary.address, "primary.lan");
            assert_eq!(pinned_replica.fingerprint, replica.fingerprint());
            assert_eq!(pinned_replica.name, "kitchen");
        }

        #[tokio::test]
        async fn an_unsendable_own_name_is_refused_before_connecting() {
            let replica = Identity::generate("kitchen").unwrap();
            let endpoint = tls::client_endpoint("127.0.0.1:9".parse().unwrap()).unwrap();
            let address = "127.0.0.1:9".parse().unwrap();
            let long = "x".repeat(MAX_NAME_LEN + 1);
            for name in ["", "bad\nname", &long] {
                let err =
                    pair_as_replica(&endpoint, address, "p", &code("ABCD-2345"), &replica, name)
                        .await
                        .unwrap_err();
                assert!(matches!(err, PairingError::InvalidName(_)), "{err}");
            }
        }

        #[tokio::test]
        async fn a_wrong_code_over_quic_pins_nothing() {
            let primary = primary(&code("ABCD-2345"));
            let server = serve_one(&primary);
            let replica = Identity::generate("kitchen").unwrap();
            let err = join(&primary, &code("ABCD-2346"), &replica)
                .await
                .unwrap_err();
            assert!(matches!(err, PairingError::WrongCode), "{err}");
            let err = server.await.unwrap().unwrap_err();
            assert!(
                matches!(
                    err,
                    PairingError::Code(CodeError::WrongCode { attempts_left: 2 })
                ),
                "{err}"
            );

            primary.codes.lock().withdraw();
            let server = serve_one(&primary);
            let err = join(&primary, &code("ABCD-2345"), &replica)
                .await
                .unwrap_err();
            assert!(matches!(err, PairingError::CodeUnavailable), "{err}");
            let err = server.await.unwrap().unwrap_err();
            assert!(
                matches!(err, PairingError::Code(CodeError::NoActiveCode)),
                "{err}"
            );
        }

        /// A relay with its own certificate between replica and primary,
        /// copying the pairing stream both ways untouched.
        fn relay(primary: SocketAddr) -> (SocketAddr, tokio::task::JoinHandle<()>) {
            let identity = Identity::generate("relay").unwrap();
            let config = tls::server_config(&identity).unwrap();
            let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
            let address = endpoint.local_addr().unwrap();
            let task = tokio::spawn(async move {
                let downstream = endpoint.accept().await.unwrap().await.unwrap();
                let client = tls::client_endpoint(primary).unwrap();
                let config = tls::pairing_client_config(&identity).unwrap();
                let connecting = client.connect_with(config, primary, tls::SERVER_NAME);
                let upstream = connecting.unwrap().await.unwrap();
                let (mut down_send, mut down_recv) = downstream.accept_bi().await.unwrap();
                let (mut up_send, mut up_recv) = upstream.open_bi().await.unwrap();
                let _ = tokio::join!(
                    tokio::io::copy(&mut down_recv, &mut up_send),
                    tokio::io::copy(&mut up_recv, &mut down_send),
                );
            });
            (address, task)
        }

        #[tokio::test]
        async fn a_relay_in_the_middle_is_detected() {
            let issued = code("ABCD-2345");
            let primary = primary(&issued);
            let server = serve_one(&primary);
            let (relay_address, relay) = relay(primary.endpoint.local_addr().unwrap());
            let replica = Identity::generate("kitchen").unwrap();
            let endpoint = tls::client_endpoint(relay_address).unwrap();
            let pairing = pair_as_replica(
                &endpoint,
                relay_address,
                "primary.lan",
                &issued,
                &replica,
                "kitchen",
            );
            let err = pairing.await.unwrap_err();
            assert!(matches!(err, PairingError::WrongCode), "{err}");
            let err = server.await.unwrap().unwrap_err();
            assert!(
                matches!(
                    err,
                    PairingError::Code(CodeError::WrongCode { attempts_left: 2 })
                ),
                "{err}"
            );
            relay.abort();
        }
    }
}

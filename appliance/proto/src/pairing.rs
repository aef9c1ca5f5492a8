//! Pairing with a one-time code, sans-IO: the primary issues a short code,
//! the replica connects (channel `moat-pair/1`) and both run SPAKE2 keyed by
//! the code, then pin each other.
//!
//! The exchange is bound to the TLS session: a [`Transcript`] made of a TLS
//! exporter value and both certificate fingerprints, as each side saw them
//! in its own handshake, enters every key confirmation and MAC. A man in the
//! middle terminates two TLS sessions with different exporters (and shows
//! its own certificates), so confirmation fails on both sides; all he gains
//! is one online guess at the code, which the [`CodeBook`] counts. The
//! shell reads the exporter ([`EXPORTER_LABEL`]) and hands it in.
//!
//! The flow, replica (SPAKE2 side A) to primary (side B), one bidirectional
//! stream of [`PairingMessage`] frames:
//!
//! 1. replica → `Start` (SPAKE2 message A)
//! 2. primary → `Challenge` (SPAKE2 message B, primary's key confirmation),
//!    or `Refused` if no code can be tried
//! 3. replica → `Confirm` (replica's key confirmation), or `Refused`
//! 4. primary → `Welcome` (name and bundle-signing key, MAC'd); the code is
//!    consumed here
//! 5. replica → `Joined` (name, MAC'd); the primary pins the replica, then
//!    ends the stream, or, if it cannot pin it, says why with `Refused`.
//!    The replica pins its primary only once the stream ended cleanly.
//!
//! Note that the `spake2` crate has had no independent audit.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use rand::CryptoRng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use spake2::{Ed25519Group, Spake2};

use crate::fingerprint::Fingerprint;
use crate::frame::{FrameError, Message};
use crate::name::ApplianceName;

/// How long an issued code stays valid unless told otherwise.
pub const DEFAULT_CODE_TTL: Duration = Duration::from_secs(10 * 60);
/// Attempts allowed on one code; then it is burned.
pub const MAX_ATTEMPTS: u32 = 3;
/// Version of the pairing messages, the first byte of each body.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest pairing message accepted, in bytes.
pub const MAX_MESSAGE_LEN: usize = 4096;
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
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// The code was right, but the primary could not pin the replica.
    #[error("the primary could not pin this replica: {0}")]
    NotPinned(String),
    /// The peer sent something that does not fit the protocol.
    #[error("pairing protocol error: {0}")]
    Protocol(&'static str),
    /// A frame could not be read.
    #[error("pairing: {0}")]
    Frame(#[from] FrameError),
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
    /// A fresh code drawn from `rng`.
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        let mut bytes = [0; 8];
        rng.fill_bytes(&mut bytes[..5]);
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

    /// Issues a fresh code from `rng`, valid for `ttl`, replacing any
    /// other; returns it with its expiry.
    pub fn issue(
        &mut self,
        now: Instant,
        ttl: Duration,
        rng: &mut impl CryptoRng,
    ) -> (PairingCode, Instant) {
        let code = PairingCode::generate(rng);
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
    pub name: ApplianceName,
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
    pub name: ApplianceName,
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

/// The key both sides derive from SPAKE2, for MACs.
type MacKey = Hmac<Sha256>;

impl Transcript {
    fn mac(&self, key: &MacKey, label: &[u8], payload: &[u8]) -> [u8; 32] {
        self.keyed(key, label, payload)
            .finalize()
            .into_bytes()
            .into()
    }

    fn verify(&self, key: &MacKey, label: &[u8], payload: &[u8], tag: &[u8; 32]) -> bool {
        self.keyed(key, label, payload).verify_slice(tag).is_ok()
    }

    fn keyed(&self, key: &MacKey, label: &[u8], payload: &[u8]) -> MacKey {
        let mut mac = key.clone();
        for part in [
            label,
            &[0],
            &self.exporter,
            self.replica.as_bytes(),
            self.primary.as_bytes(),
            payload,
        ] {
            mac.update(part);
        }
        mac
    }
}

/// Why a side refused the exchange (told to the peer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The primary has no code that can be tried.
    CodeUnavailable,
    /// Key confirmation failed: wrong code, or someone in the middle.
    WrongCode,
    /// A message did not fit the protocol.
    Protocol,
    /// The primary could not pin the replica.
    NotPinned {
        /// Why, for the replica's user.
        reason: String,
    },
}

/// A pairing message, framed with the version byte [`PROTOCOL_VERSION`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PairingMessage {
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

impl Message for PairingMessage {
    const MAX_BYTES: usize = MAX_MESSAGE_LEN;
    const VERSION: Option<u8> = Some(PROTOCOL_VERSION);
}

/// The replica's side of pairing, sans IO. Call order: [`Self::new`], then
/// send every [`Self::poll_transmit`] message, feed each received message
/// to [`Self::handle_message`] and send what it queued; when the primary
/// ends the stream, [`Self::handle_end`] gives the pin. After an error,
/// still send what is queued: it tells the primary why.
#[derive(Debug)]
pub struct ReplicaPairing {
    state: ReplicaState,
    transcript: Transcript,
    name: ApplianceName,
    address: String,
    outbox: VecDeque<PairingMessage>,
}

#[derive(Debug)]
enum ReplicaState {
    AwaitChallenge(Spake2<Ed25519Group>),
    AwaitWelcome(MacKey),
    AwaitEnd(PrimaryPin),
    Failed,
}

impl ReplicaPairing {
    /// Starts pairing as `name` with the primary reached at `address`.
    pub fn new(
        code: &PairingCode,
        transcript: Transcript,
        name: ApplianceName,
        address: &str,
        rng: &mut impl CryptoRng,
    ) -> Self {
        let (spake, message) = Spake2::<Ed25519Group>::start_a_with_rng(
            &spake2::Password::new(code.normalized()),
            &spake2::Identity::new(transcript.replica.as_bytes()),
            &spake2::Identity::new(transcript.primary.as_bytes()),
            Compat(rng),
        );
        Self {
            state: ReplicaState::AwaitChallenge(spake),
            transcript,
            name,
            address: address.to_owned(),
            outbox: VecDeque::from([PairingMessage::Start { spake: message }]),
        }
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<PairingMessage> {
        self.outbox.pop_front()
    }

    /// Whether the exchange is over on this side: `Joined` was sent and
    /// only the primary's verdict is awaited (end of stream, or `Refused`).
    pub fn is_joined(&self) -> bool {
        matches!(self.state, ReplicaState::AwaitEnd(_))
    }

    /// Handles a message from the primary.
    pub fn handle_message(&mut self, message: PairingMessage) -> Result<(), PairingError> {
        let state = std::mem::replace(&mut self.state, ReplicaState::Failed);
        match (state, message) {
            (_, PairingMessage::Refused { reason }) => Err(refused_by_primary(reason)),
            (
                ReplicaState::AwaitChallenge(spake),
                PairingMessage::Challenge {
                    spake: theirs,
                    confirm,
                },
            ) => self.handle_challenge(spake, &theirs, &confirm),
            (
                ReplicaState::AwaitWelcome(key),
                PairingMessage::Welcome {
                    name,
                    signing_key,
                    mac,
                },
            ) => self.handle_welcome(&key, &name, signing_key, &mac),
            _ => Err(self.refuse("unexpected message")),
        }
    }

    /// The primary ended the stream: the pin, if it did so after `Joined`
    /// (its sign that it pinned this replica).
    pub fn handle_end(&mut self) -> Result<PrimaryPin, PairingError> {
        match std::mem::replace(&mut self.state, ReplicaState::Failed) {
            ReplicaState::AwaitEnd(pin) => Ok(pin),
            _ => Err(PairingError::Protocol(
                "the primary ended the exchange early",
            )),
        }
    }

    fn handle_challenge(
        &mut self,
        spake: Spake2<Ed25519Group>,
        theirs: &[u8],
        confirm: &[u8; 32],
    ) -> Result<(), PairingError> {
        let Some(key) = spake.finish(theirs).ok().and_then(mac_key) else {
            return Err(self.refuse("bad SPAKE2 message"));
        };
        if !self
            .transcript
            .verify(&key, LABEL_PRIMARY_CONFIRM, &[], confirm)
        {
            self.outbox.push_back(PairingMessage::Refused {
                reason: Refusal::WrongCode,
            });
            return Err(PairingError::WrongCode);
        }
        let confirm = self.transcript.mac(&key, LABEL_REPLICA_CONFIRM, &[]);
        self.outbox.push_back(PairingMessage::Confirm { confirm });
        self.state = ReplicaState::AwaitWelcome(key);
        Ok(())
    }

    fn handle_welcome(
        &mut self,
        key: &MacKey,
        name: &str,
        signing_key: [u8; 32],
        mac: &[u8; 32],
    ) -> Result<(), PairingError> {
        let payload = welcome_payload(name, &signing_key);
        if !self.transcript.verify(key, LABEL_WELCOME, &payload, mac) {
            return Err(self.refuse("unauthenticated welcome"));
        }
        let Ok(name) = ApplianceName::parse(name) else {
            return Err(self.refuse("invalid primary name"));
        };
        let mac = self
            .transcript
            .mac(key, LABEL_JOINED, self.name.as_str().as_bytes());
        self.outbox.push_back(PairingMessage::Joined {
            name: self.name.to_string(),
            mac,
        });
        self.state = ReplicaState::AwaitEnd(PrimaryPin {
            address: self.address.clone(),
            name,
            fingerprint: self.transcript.primary,
            signing_key,
        });
        Ok(())
    }

    fn refuse(&mut self, why: &'static str) -> PairingError {
        self.outbox.push_back(PairingMessage::Refused {
            reason: Refusal::Protocol,
        });
        PairingError::Protocol(why)
    }
}

fn refused_by_primary(reason: Refusal) -> PairingError {
    match reason {
        Refusal::CodeUnavailable => PairingError::CodeUnavailable,
        Refusal::WrongCode => PairingError::WrongCode,
        Refusal::Protocol => PairingError::Protocol("the primary refused a message"),
        Refusal::NotPinned { reason } => PairingError::NotPinned(reason),
    }
}

/// The primary's side of pairing, sans IO. Call order: [`Self::new`], then
/// feed each received message to [`Self::handle_message`] and send every
/// [`Self::poll_transmit`] message. When it returns the replica to pin,
/// pin it, then call [`Self::pinned`] (and end the stream) or
/// [`Self::pin_failed`] (and send what it queued). After an error, still
/// send what is queued: it tells the replica why.
#[derive(Debug)]
pub struct PrimaryPairing {
    state: PrimaryState,
    transcript: Transcript,
    name: ApplianceName,
    signing_key: [u8; 32],
    outbox: VecDeque<PairingMessage>,
}

#[derive(Debug)]
enum PrimaryState {
    AwaitStart,
    AwaitConfirm { key: MacKey, attempt: Attempt },
    AwaitJoined(MacKey),
    AwaitPin,
    Paired,
    Failed,
}

impl PrimaryPairing {
    /// Starts pairing as `name`, offering `signing_key` to pin.
    pub fn new(transcript: Transcript, name: ApplianceName, signing_key: [u8; 32]) -> Self {
        Self {
            state: PrimaryState::AwaitStart,
            transcript,
            name,
            signing_key,
            outbox: VecDeque::new(),
        }
    }

    /// The next message to send, if any.
    pub fn poll_transmit(&mut self) -> Option<PairingMessage> {
        self.outbox.pop_front()
    }

    /// Whether the replica was pinned ([`Self::pinned`]): end the stream.
    pub fn is_paired(&self) -> bool {
        matches!(self.state, PrimaryState::Paired)
    }

    /// Handles a message from the replica at `now` (`rng` draws this side's
    /// SPAKE2 secret): `Some` replica to pin once the exchange is done.
    pub fn handle_message(
        &mut self,
        message: PairingMessage,
        codes: &mut CodeBook,
        now: Instant,
        rng: &mut impl CryptoRng,
    ) -> Result<Option<ReplicaPin>, PairingError> {
        let state = std::mem::replace(&mut self.state, PrimaryState::Failed);
        match (state, message) {
            (PrimaryState::AwaitConfirm { attempt, .. }, PairingMessage::Refused { reason }) => {
                Err(match reason {
                    Refusal::WrongCode => codes.failed(&attempt).into(),
                    _ => PairingError::Protocol("the replica refused a message"),
                })
            }
            (_, PairingMessage::Refused { .. }) => {
                Err(PairingError::Protocol("the replica refused a message"))
            }
            (PrimaryState::AwaitStart, PairingMessage::Start { spake }) => {
                self.handle_start(&spake, codes, now, rng).map(|()| None)
            }
            (PrimaryState::AwaitConfirm { key, attempt }, PairingMessage::Confirm { confirm }) => {
                self.handle_confirm(key, &attempt, &confirm, codes)
                    .map(|()| None)
            }
            (PrimaryState::AwaitJoined(key), PairingMessage::Joined { name, mac }) => {
                self.handle_joined(&key, &name, &mac).map(Some)
            }
            _ => Err(self.refuse("unexpected message")),
        }
    }

    /// The replica returned by [`Self::handle_message`] is pinned.
    pub fn pinned(&mut self) {
        if matches!(self.state, PrimaryState::AwaitPin) {
            self.state = PrimaryState::Paired;
        }
    }

    /// The replica could not be pinned: tells it `reason`.
    pub fn pin_failed(&mut self, reason: impl Into<String>) -> PairingError {
        let reason = reason.into();
        self.state = PrimaryState::Failed;
        self.outbox.push_back(PairingMessage::Refused {
            reason: Refusal::NotPinned {
                reason: reason.clone(),
            },
        });
        PairingError::NotPinned(reason)
    }

    fn handle_start(
        &mut self,
        theirs: &[u8],
        codes: &mut CodeBook,
        now: Instant,
        rng: &mut impl CryptoRng,
    ) -> Result<(), PairingError> {
        let attempt = codes.begin(now).inspect_err(|_| {
            self.outbox.push_back(PairingMessage::Refused {
                reason: Refusal::CodeUnavailable,
            });
        })?;
        let (spake, ours) = Spake2::<Ed25519Group>::start_b_with_rng(
            &spake2::Password::new(attempt.code.normalized()),
            &spake2::Identity::new(self.transcript.replica.as_bytes()),
            &spake2::Identity::new(self.transcript.primary.as_bytes()),
            Compat(rng),
        );
        let Some(key) = spake.finish(theirs).ok().and_then(mac_key) else {
            return Err(self.refuse("bad SPAKE2 message"));
        };
        let confirm = self.transcript.mac(&key, LABEL_PRIMARY_CONFIRM, &[]);
        self.outbox.push_back(PairingMessage::Challenge {
            spake: ours,
            confirm,
        });
        self.state = PrimaryState::AwaitConfirm { key, attempt };
        Ok(())
    }

    fn handle_confirm(
        &mut self,
        key: MacKey,
        attempt: &Attempt,
        confirm: &[u8; 32],
        codes: &mut CodeBook,
    ) -> Result<(), PairingError> {
        if !self
            .transcript
            .verify(&key, LABEL_REPLICA_CONFIRM, &[], confirm)
        {
            self.outbox.push_back(PairingMessage::Refused {
                reason: Refusal::WrongCode,
            });
            return Err(codes.failed(attempt).into());
        }
        if let Err(err) = codes.consume(attempt) {
            self.outbox.push_back(PairingMessage::Refused {
                reason: Refusal::CodeUnavailable,
            });
            return Err(err.into());
        }
        let name = self.name.as_str();
        let mac = self.transcript.mac(
            &key,
            LABEL_WELCOME,
            &welcome_payload(name, &self.signing_key),
        );
        self.outbox.push_back(PairingMessage::Welcome {
            name: name.to_owned(),
            signing_key: self.signing_key,
            mac,
        });
        self.state = PrimaryState::AwaitJoined(key);
        Ok(())
    }

    fn handle_joined(
        &mut self,
        key: &MacKey,
        name: &str,
        mac: &[u8; 32],
    ) -> Result<ReplicaPin, PairingError> {
        if !self
            .transcript
            .verify(key, LABEL_JOINED, name.as_bytes(), mac)
        {
            return Err(self.refuse("unauthenticated name"));
        }
        let name = ApplianceName::parse(name).map_err(|err| self.pin_failed(err.to_string()))?;
        self.state = PrimaryState::AwaitPin;
        Ok(ReplicaPin {
            name,
            fingerprint: self.transcript.replica,
        })
    }

    fn refuse(&mut self, why: &'static str) -> PairingError {
        self.outbox.push_back(PairingMessage::Refused {
            reason: Refusal::Protocol,
        });
        PairingError::Protocol(why)
    }
}

fn mac_key(secret: Vec<u8>) -> Option<MacKey> {
    MacKey::new_from_slice(&secret).ok()
}

fn welcome_payload(name: &str, signing_key: &[u8; 32]) -> Vec<u8> {
    [signing_key.as_slice(), name.as_bytes()].concat()
}

/// The caller's RNG, as the older `rand_core` that `spake2` takes.
struct Compat<'a, R>(&'a mut R);

impl<R: CryptoRng> rand_core_06::RngCore for Compat<'_, R> {
    fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.0.fill_bytes(dest);
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core_06::Error> {
        self.0.fill_bytes(dest);
        Ok(())
    }
}

impl<R: CryptoRng> rand_core_06::CryptoRng for Compat<'_, R> {}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::fingerprint::Fingerprint;

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
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::frame::{FrameDecoder, decode_body, encode_frame};
    use crate::test_now;

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

    fn name(text: &str) -> ApplianceName {
        ApplianceName::parse(text).unwrap()
    }

    struct Run {
        replica: Result<PrimaryPin, PairingError>,
        primary: Result<ReplicaPin, PairingError>,
    }

    /// Runs both machines in memory until each has a result; the primary
    /// pins with `pin`.
    fn run_pinning(
        typed: &PairingCode,
        views: (Transcript, Transcript),
        codes: &mut CodeBook,
        now: Instant,
        pin: impl FnOnce(&ReplicaPin) -> Result<(), String>,
    ) -> Run {
        let mut rng = StdRng::seed_from_u64(7);
        let mut replica =
            ReplicaPairing::new(typed, views.0, name("kitchen"), "primary.lan", &mut rng);
        let mut primary = PrimaryPairing::new(views.1, name("basement"), KEY);
        let (mut replica_result, mut primary_result) = (None, None);
        let mut pin = Some(pin);
        let mut moved = true;
        while moved {
            moved = false;
            while let Some(message) = replica.poll_transmit() {
                moved = true;
                if primary_result.is_none() {
                    primary_result = match primary.handle_message(message, codes, now, &mut rng) {
                        Ok(None) => None,
                        Ok(Some(replica_pin)) => Some(match pin.take().unwrap()(&replica_pin) {
                            Ok(()) => {
                                primary.pinned();
                                Ok(replica_pin)
                            }
                            Err(reason) => Err(primary.pin_failed(reason)),
                        }),
                        Err(err) => Some(Err(err)),
                    };
                }
            }
            while let Some(message) = primary.poll_transmit() {
                moved = true;
                if replica_result.is_none() {
                    replica_result = replica.handle_message(message).err().map(Err);
                }
            }
        }
        let replica_result = replica_result.unwrap_or_else(|| replica.handle_end());
        Run {
            replica: replica_result,
            primary: primary_result.expect("the primary finished"),
        }
    }

    fn run(
        typed: &PairingCode,
        replica_view: Transcript,
        primary_view: Transcript,
        codes: &mut CodeBook,
        now: Instant,
    ) -> Run {
        run_pinning(typed, (replica_view, primary_view), codes, now, |_| Ok(()))
    }

    fn book_with(code: &PairingCode, now: Instant) -> CodeBook {
        let mut codes = CodeBook::new();
        codes.issue_code(*code, now, DEFAULT_CODE_TTL);
        codes
    }

    #[test]
    fn the_right_code_pairs_both_sides() {
        let now = test_now();
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
                name: name("basement"),
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
        let now = test_now();
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
        let now = test_now();
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
        let now = test_now();
        let issued = code("ABCD-2345");
        let mut codes = book_with(&issued, now);
        let later = now + DEFAULT_CODE_TTL;
        let run1 = run(&issued, transcript(), transcript(), &mut codes, later);
        assert!(matches!(run1.replica, Err(PairingError::CodeUnavailable)));
        assert!(matches!(
            run1.primary,
            Err(PairingError::Code(CodeError::Expired))
        ));

        let (fresh, expires) = codes.issue(
            later,
            Duration::from_secs(60),
            &mut StdRng::seed_from_u64(1),
        );
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
            test_now(),
        );
        assert!(matches!(run.replica, Err(PairingError::CodeUnavailable)));
        assert!(matches!(
            run.primary,
            Err(PairingError::Code(CodeError::NoActiveCode))
        ));
    }

    #[test]
    fn a_man_in_the_middle_fails_both_sides() {
        let now = test_now();
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
        let now = test_now();
        let mut codes = book_with(&code("ABCD-2345"), now);
        let first = codes.begin(now).unwrap();
        let second = codes.begin(now).unwrap();
        assert_eq!(codes.consume(&first), Ok(()));
        assert_eq!(codes.consume(&second), Err(CodeError::Used));
        codes.issue(now, DEFAULT_CODE_TTL, &mut StdRng::seed_from_u64(2));
        assert_eq!(codes.consume(&first), Err(CodeError::NoActiveCode));
        assert_eq!(
            codes.failed(&first),
            CodeError::WrongCode { attempts_left: 0 }
        );
    }

    #[test]
    fn forged_or_misplaced_messages_are_refused() {
        let now = test_now();
        let mut rng = StdRng::seed_from_u64(3);
        let issued = code("ABCD-2345");
        let mut codes = book_with(&issued, now);
        let mut primary = PrimaryPairing::new(transcript(), name("basement"), KEY);
        let confirm = PairingMessage::Confirm { confirm: [0; 32] };
        assert!(matches!(
            primary.handle_message(confirm, &mut codes, now, &mut rng),
            Err(PairingError::Protocol(_))
        ));
        assert_eq!(
            primary.poll_transmit(),
            Some(PairingMessage::Refused {
                reason: Refusal::Protocol
            })
        );

        let mut primary = PrimaryPairing::new(transcript(), name("basement"), KEY);
        let garbage = PairingMessage::Start { spake: vec![0; 3] };
        assert!(
            primary
                .handle_message(garbage, &mut codes, now, &mut rng)
                .is_err()
        );

        let mut replica =
            ReplicaPairing::new(&issued, transcript(), name("kitchen"), "p", &mut rng);
        let _start = replica.poll_transmit();
        let welcome = PairingMessage::Welcome {
            name: "evil".into(),
            signing_key: [0; 32],
            mac: [0; 32],
        };
        assert!(replica.handle_message(welcome).is_err());
    }

    #[test]
    fn messages_are_versioned_and_bounded() {
        let message = PairingMessage::Joined {
            name: "kitchen".into(),
            mac: [5; 32],
        };
        let frame = encode_frame(&message).unwrap();
        let bytes = &frame[4..];
        assert_eq!(bytes.first(), Some(&PROTOCOL_VERSION));
        assert_eq!(decode_body::<PairingMessage>(bytes).unwrap(), message);
        let mut newer = bytes.to_vec();
        newer[0] = 2;
        assert!(matches!(
            decode_body::<PairingMessage>(&newer),
            Err(FrameError::Version { found: 2, .. })
        ));
        assert!(decode_body::<PairingMessage>(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.to_vec();
        longer.push(0);
        assert!(decode_body::<PairingMessage>(&longer).is_err());
        assert!(decode_body::<PairingMessage>(&[]).is_err());
        let length = (MAX_MESSAGE_LEN as u32 + 1).to_be_bytes();
        assert!(matches!(
            FrameDecoder::<PairingMessage>::new().push(&length),
            Err(FrameError::TooLarge { .. })
        ));
        assert!(decode_body::<PairingMessage>(&[1, 200, 200, 200]).is_err());
    }

    #[test]
    fn a_failed_pin_fails_both_sides_and_says_why() {
        let now = test_now();
        let issued = code("ABCD-2345");
        let mut codes = book_with(&issued, now);
        let views = (transcript(), transcript());
        let run = run_pinning(&issued, views, &mut codes, now, |pin| {
            assert_eq!(pin.name, "kitchen");
            Err("the disk is full".into())
        });
        assert_eq!(
            run.replica,
            Err(PairingError::NotPinned("the disk is full".into()))
        );
        assert_eq!(
            run.primary,
            Err(PairingError::NotPinned("the disk is full".into()))
        );
        let err = run.replica.unwrap_err().to_string();
        assert!(
            err.contains("could not pin") && err.contains("disk is full"),
            "{err}"
        );
    }

    #[test]
    fn the_replica_pins_only_after_the_primary_ended_the_stream() {
        let mut rng = StdRng::seed_from_u64(5);
        let mut replica = ReplicaPairing::new(
            &code("ABCD-2345"),
            transcript(),
            name("kitchen"),
            "p",
            &mut rng,
        );
        assert!(!replica.is_joined());
        assert!(matches!(
            replica.handle_end(),
            Err(PairingError::Protocol(_))
        ));
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
        let mut rng = StdRng::seed_from_u64(4);
        let codes: Vec<PairingCode> = (0..32).map(|_| PairingCode::generate(&mut rng)).collect();
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
            name: name("basement"),
            fingerprint: Fingerprint([0xab; 32]),
            signing_key: [0x01; 32],
        };
        let json = serde_json::to_string(&pin).unwrap();
        assert!(json.contains(&"01".repeat(32)), "{json}");
        assert_eq!(serde_json::from_str::<PrimaryPin>(&json).unwrap(), pin);
    }
}

//! Moat's protocols without I/O: the sync protocol between a primary and
//! its replicas, pairing with a one-time code, the one framing both use,
//! reconnect backoff, and the types they carry (appliance names, certificate
//! fingerprints).
//!
//! Every state machine here is fed bytes, time (`now`) and randomness (an
//! RNG) by its caller and never touches a socket, clock or OS random
//! source: `moat`'s `sync` shell does that. CI builds this crate for
//! `wasm32-unknown-unknown` to prove it.

pub mod backoff;
pub mod fingerprint;
pub mod frame;
pub mod name;
pub mod pairing;
pub mod sync;

pub use fingerprint::{Fingerprint, FingerprintError};
pub use frame::{FrameDecoder, FrameError, Message, decode_body, encode_frame};
pub use name::{ApplianceName, NameError};

/// A monotonic instant for tests: the one place they read the clock.
#[cfg(test)]
#[allow(clippy::disallowed_methods, reason = "tests need a starting instant")]
fn test_now() -> std::time::Instant {
    std::time::Instant::now()
}

//! Identity, pairing and sync: each appliance's key and certificate, the
//! one-time-code pairing (SPAKE2 over QUIC), and the sync protocol between a
//! primary and its replicas. The protocols themselves are sans-IO, in the
//! `moat-proto` crate; this module is their shell: QUIC and TLS, and the one
//! driver that runs every session over a stream pair.

mod driver;
pub mod headless;
pub mod identity;
pub(crate) mod link;
pub(crate) mod pairing;
pub(crate) mod server;
pub mod tls;

/// The sync protocol's messages and sessions, and the framing they travel
/// in (from `moat-proto`).
pub mod protocol {
    pub use moat_proto::frame::{FrameDecoder, FrameError, encode_frame};
    pub use moat_proto::sync::*;
}

//! Identity, pairing and sync: each appliance's key and certificate, the
//! one-time-code pairing (SPAKE2 over QUIC), and the sync protocol between a
//! primary and its replicas (a sans-IO state machine under a quinn shell).

pub mod identity;
pub mod link;
pub mod pairing;
pub mod protocol;
pub mod server;
pub mod tls;

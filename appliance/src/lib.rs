//! Moat: a DNS appliance that blocks ads and trackers, answers local names,
//! caches and forwards the rest.
//!
//! One folder per subsystem, each owning its state: `config` (the three
//! kinds of settings), `dns` (listeners, the query path, cache, upstreams),
//! `policy` (the block/allow seam and pause switch), `stats` (counters and
//! the query log), `store` (the data directory), `control` (the HTTP
//! control endpoint and its client), `bundle` (signed policy bundles),
//! `sync` (identity, pairing, the QUIC shell around `moat-proto`), `fleet`
//! (the primary's view of its replicas), `lists` (blocklist downloads),
//! `limits` (bounded connection places keyed by peer),
//! `daemon` (the composition root), `init` (process 1 on the appliance
//! image) and `update` (signed image updates). `ARCHITECTURE.md` at the repository root is the map.

pub mod bundle;
pub mod clock;
pub mod compile;
pub mod config;
pub mod control;
pub mod daemon;
mod dns;
mod fleet;
pub mod init;
pub(crate) mod limits;
mod links;
mod lists;
mod mdns;
pub mod policy;
pub mod recent_log;
mod stats;
pub mod store;
pub mod sync;
pub mod update;

/// The request path as one function over bytes, for `cargo fuzz`.
#[cfg(any(fuzzing, test))]
pub mod fuzz;

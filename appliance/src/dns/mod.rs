//! The DNS core: wire format, listeners, the query path, cache and upstreams.

pub(crate) mod access;
pub(crate) mod cache;
pub(crate) mod clock;
pub(crate) mod handler;
pub(crate) mod listen;
pub(crate) mod upstream;
pub(crate) mod verdict;
pub(crate) mod wire;
pub(crate) mod zones;

/// The UDP payload size Moat advertises, to clients and upstreams alike
/// (the DNS flag day 2020 value: no IP fragmentation).
pub(crate) const SERVER_UDP_PAYLOAD: u16 = 1232;

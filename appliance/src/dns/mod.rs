//! The DNS core: wire format, listeners, the query path, cache and upstreams.

pub mod cache;
pub mod clock;
#[cfg(any(fuzzing, test))]
pub mod fuzz;
pub mod handler;
pub mod listen;
pub mod upstream;
pub mod verdict;
pub mod wire;

/// The UDP payload size Moat advertises, to clients and upstreams alike
/// (the DNS flag day 2020 value: no IP fragmentation).
pub const SERVER_UDP_PAYLOAD: u16 = 1232;

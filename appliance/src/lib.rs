//! Moat: a DNS appliance that blocks ads and trackers, answers local names,
//! caches and forwards the rest.
//!
//! One folder per subsystem, each owning its state: `config` (the three
//! kinds of settings), `dns` (listeners, the query path, cache, upstreams),
//! `policy` (the block/allow seam and pause switch), `stats` (counters and
//! the query log), `store` (the data directory), `control` (the HTTP
//! control endpoint and its client), and `daemon` (wiring them together).

pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod dns;
pub mod policy;
pub mod stats;
pub mod store;

/// Checks one request against the query path without a socket or upstream:
/// parses it and writes whatever answer the fast path gives. For fuzzing.
pub fn fuzz_query_path(request: &[u8]) {
    if let Ok(query) = dns::wire::Query::parse(request) {
        let mut out = Vec::new();
        dns::wire::begin_response(&query, dns::wire::rcode::NOERROR, &mut out);
        dns::wire::finish_response(
            &query,
            Some(query.udp_limit(dns::SERVER_UDP_PAYLOAD)),
            &mut out,
        );
        assert!(
            dns::wire::ttl_offsets(&out).is_some(),
            "our own answer must be readable"
        );
    } else if let Err(rejection) = dns::wire::Query::parse(request) {
        let mut out = Vec::new();
        dns::wire::write_rejection(request, rejection, &mut out);
    }
}

//! Who may ask, and how fast: the client ACL and the per-client rate limit,
//! checked before anything else a query costs. The rate limit counts UDP
//! only, as BIND's RRL does: a limited client gets an empty truncated answer
//! and asks again over TCP, which cannot be spoofed and has bounds of its
//! own (connections per client, unanswered queries per connection).
//!
//! The rate limit counts in a fixed table of windows indexed by a keyed
//! hash of the client, so its memory is fixed whatever the number of
//! sources (spoofed ones included); two clients that share a slot share a
//! budget, and the random key keeps an attacker from choosing whose.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::config::{ClientRange, ServerTuning};

/// Rate-limit slots: 512 KiB, whatever the load.
const SLOTS: usize = 1 << 16;

/// What a client's query gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Answered.
    Served,
    /// Outside the ACL: REFUSED.
    Refused,
    /// Over its rate over UDP: an empty truncated answer.
    Limited,
}

/// The ACL and rate limit in force.
#[derive(Debug)]
pub(crate) struct Gate {
    allowed: Vec<ClientRange>,
    limit: Option<RateLimit>,
}

#[derive(Debug)]
struct RateLimit {
    queries: u32,
    interval_ms: u64,
    exempt: Vec<ClientRange>,
    hasher: foldhash::fast::RandomState,
    /// Per slot: the window number in the high 32 bits, its count in the low.
    slots: Box<[AtomicU64]>,
}

impl Gate {
    /// The gate `tuning` describes.
    pub(crate) fn new(tuning: &ServerTuning) -> Self {
        let interval_ms = u64::try_from(
            tuning
                .rate_limit_interval
                .max(Duration::from_millis(1))
                .as_millis(),
        )
        .unwrap_or(u64::MAX);
        let limit = (tuning.rate_limit_queries > 0).then(|| RateLimit {
            queries: tuning.rate_limit_queries,
            interval_ms,
            exempt: tuning.rate_limit_exempt.clone(),
            hasher: foldhash::fast::RandomState::default(),
            slots: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
        });
        Self {
            allowed: tuning.allow_clients.clone(),
            limit,
        }
    }

    /// Lets everyone in, without limit (tests).
    #[cfg(test)]
    pub(crate) fn open() -> Self {
        Self {
            allowed: vec![ClientRange::Any],
            limit: None,
        }
    }

    /// What a query from `client` at `unix_ms` gets; a query `over_udp`
    /// counts against its rate.
    pub(crate) fn check(&self, client: IpAddr, over_udp: bool, unix_ms: u64) -> Access {
        if !self.allowed.iter().any(|range| range.contains(client)) {
            return Access::Refused;
        }
        match &self.limit {
            Some(limit) if over_udp && !limit.admit(client, unix_ms) => Access::Limited,
            _ => Access::Served,
        }
    }
}

impl RateLimit {
    fn admit(&self, client: IpAddr, unix_ms: u64) -> bool {
        if self.exempt.iter().any(|range| range.contains(client)) {
            return true;
        }
        let slot = &self.slots[self.hasher.hash_one(rate_key(client)) as usize % SLOTS];
        let window = (unix_ms / self.interval_ms) as u32;
        let mut admitted = false;
        let _ = slot.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
            let (seen, count) = ((packed >> 32) as u32, packed as u32);
            let count = if seen == window { count } else { 0 };
            admitted = count < self.queries;
            admitted.then(|| (u64::from(window) << 32) | u64::from(count + 1))
        });
        admitted
    }
}

/// Whose budget a query counts against: the address itself on the LAN
/// (each device its own), else its /24 or /56 (one site, one budget).
fn rate_key(client: IpAddr) -> IpAddr {
    let client = client.to_canonical();
    if crate::config::is_lan(client) {
        return client;
    }
    let length = if client.is_ipv4() { 24 } else { 56 };
    crate::config::masked(client, length)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuning(text: &str) -> ServerTuning {
        toml::from_str(text).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn clients_outside_the_acl_are_refused() {
        let gate = Gate::new(&ServerTuning::default());
        assert_eq!(gate.check(ip("192.168.1.4"), true, 0), Access::Served);
        assert_eq!(gate.check(ip("fd00::4"), true, 0), Access::Served);
        assert_eq!(gate.check(ip("203.0.113.9"), true, 0), Access::Refused);
        let gate = Gate::new(&tuning("allow_clients = [\"127.0.0.3\"]"));
        assert_eq!(gate.check(ip("127.0.0.2"), true, 0), Access::Refused);
        assert_eq!(gate.check(ip("127.0.0.3"), true, 0), Access::Served);
    }

    #[test]
    fn a_client_over_its_rate_is_limited_until_the_next_window_and_others_are_not() {
        let gate = Gate::new(&tuning(
            "allow_clients = [\"any\"]\nrate_limit_queries = 3\nrate_limit_interval = \"1s\"\nrate_limit_exempt = [\"10.9.9.9\"]",
        ));
        for _ in 0..3 {
            assert_eq!(gate.check(ip("192.168.1.4"), true, 5_000), Access::Served);
        }
        assert_eq!(gate.check(ip("192.168.1.4"), true, 5_999), Access::Limited);
        assert_eq!(
            gate.check(ip("192.168.1.5"), true, 5_999),
            Access::Served,
            "its own budget"
        );
        assert_eq!(
            gate.check(ip("192.168.1.4"), true, 6_000),
            Access::Served,
            "a new window"
        );
        for _ in 0..10 {
            assert_eq!(
                gate.check(ip("10.9.9.9"), true, 5_000),
                Access::Served,
                "exempt"
            );
        }
    }

    #[test]
    fn beyond_the_lan_a_prefix_shares_one_budget() {
        assert_eq!(rate_key(ip("203.0.113.9")), ip("203.0.113.0"));
        assert_eq!(rate_key(ip("2001:db8:1:2ff::1")), ip("2001:db8:1:200::"));
        assert_eq!(rate_key(ip("192.168.1.9")), ip("192.168.1.9"));
        let gate = Gate::new(&tuning(
            "allow_clients = [\"any\"]\nrate_limit_queries = 2\nrate_limit_exempt = []",
        ));
        assert_eq!(gate.check(ip("203.0.113.1"), true, 0), Access::Served);
        assert_eq!(gate.check(ip("203.0.113.2"), true, 0), Access::Served);
        assert_eq!(gate.check(ip("203.0.113.3"), true, 0), Access::Limited);
    }
}

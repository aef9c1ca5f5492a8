//! What bounds password logins: failures counted per client (an IPv4
//! address or an IPv6 /64) and in all, each attempt recorded before its
//! hash is computed, and at most [`HASHES_AT_ONCE`] argon2 hashes at once
//! with a short queue in front of them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Password hashes computed at once, at most (each takes ~19 MiB).
pub(super) const HASHES_AT_ONCE: usize = 2;
/// Logins that may wait for a hash slot; more are refused at once.
pub(super) const HASH_QUEUE: usize = 8;

/// Whom failures are counted against: an IPv4 address, or the /64 of an
/// IPv6 address (one LAN host holds a whole /64 with SLAAC privacy
/// addresses). IPv4-mapped IPv6 addresses count as their IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct ClientKey(IpAddr);

impl ClientKey {
    /// The key of a client address.
    pub(super) fn of(addr: IpAddr) -> Self {
        let addr = addr.to_canonical();
        let length = if addr.is_ipv4() { 32 } else { 64 };
        Self(crate::config::masked(addr, length))
    }
}

/// Failed-login bookkeeping per client and in all: a pure state machine
/// fed with the time, so its rules are tested without waiting.
#[derive(Debug, Default)]
pub(super) struct LoginThrottle {
    clients: HashMap<ClientKey, Failures>,
    budget: Budget,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    blocked_until_ms: u64,
    last_ms: u64,
}

impl LoginThrottle {
    /// Wrong passwords allowed before each further one locks the client out.
    const FREE_FAILURES: u32 = 5;
    /// The longest lockout.
    pub(super) const MAX_LOCKOUT_MS: u64 = 15 * 60 * 1000;
    /// Clients tracked at most; the longest-quiet one is forgotten first.
    pub(super) const MAX_CLIENTS: usize = 4096;

    /// Admits an attempt from `client` and records it as a failure before
    /// its password is hashed, so concurrent attempts see each other; a
    /// right password takes it back ([`Self::succeeded`]). Refused with
    /// the time to wait while the client is locked out or the global
    /// budget is spent.
    pub(super) fn attempt(&mut self, client: IpAddr, now_ms: u64) -> Result<ClientKey, Duration> {
        let key = ClientKey::of(client);
        if let Some(wait) = self.wait(key, now_ms) {
            return Err(wait);
        }
        self.budget.take(now_ms)?;
        self.failed(key, now_ms);
        Ok(key)
    }

    /// How long `key` must still wait before trying, if at all.
    fn wait(&self, key: ClientKey, now_ms: u64) -> Option<Duration> {
        let failures = self.clients.get(&key)?;
        (failures.blocked_until_ms > now_ms).then(|| {
            Duration::from_millis((failures.blocked_until_ms - now_ms).min(Self::MAX_LOCKOUT_MS))
        })
    }

    /// Counts a failure: the sixth and later ones lock the client out for
    /// 1, 2, 4 … seconds, up to 15 minutes.
    fn failed(&mut self, key: ClientKey, now_ms: u64) {
        if self.clients.len() >= Self::MAX_CLIENTS && !self.clients.contains_key(&key) {
            self.forget_quietest();
        }
        let failures = self.clients.entry(key).or_insert(Failures {
            count: 0,
            blocked_until_ms: 0,
            last_ms: now_ms,
        });
        failures.count = failures.count.saturating_add(1);
        failures.last_ms = now_ms;
        if failures.count > Self::FREE_FAILURES {
            let doublings = (failures.count - Self::FREE_FAILURES - 1).min(20);
            let lockout = (1000u64 << doublings).min(Self::MAX_LOCKOUT_MS);
            failures.blocked_until_ms = now_ms.saturating_add(lockout);
        }
    }

    fn forget_quietest(&mut self) {
        let quietest = self
            .clients
            .iter()
            .min_by_key(|(_, failures)| failures.last_ms)
            .map(|(key, _)| *key);
        if let Some(quietest) = quietest {
            self.clients.remove(&quietest);
        }
    }

    /// Forgets a client's failures after a right password, and gives its
    /// attempt back to the global budget.
    pub(super) fn succeeded(&mut self, key: ClientKey) {
        self.clients.remove(&key);
        self.budget.refund();
    }

    /// Clients tracked now.
    #[cfg(test)]
    pub(super) fn tracked(&self) -> usize {
        self.clients.len()
    }
}

/// The failures all clients together may spend: a bucket of
/// [`Budget::BURST`] that refills one every [`Budget::REFILL_MS`], so a
/// botnet of many addresses gets at most ~20 guesses a minute.
#[derive(Debug, Default)]
struct Budget {
    spent: u32,
    refilled_ms: u64,
}

impl Budget {
    /// Failures allowed in a burst.
    const BURST: u32 = 20;
    /// How long each spent failure takes to come back.
    const REFILL_MS: u64 = 3_000;

    fn take(&mut self, now_ms: u64) -> Result<(), Duration> {
        self.refill(now_ms);
        if self.spent >= Self::BURST {
            let since = now_ms.saturating_sub(self.refilled_ms);
            return Err(Duration::from_millis(Self::REFILL_MS.saturating_sub(since)));
        }
        self.spent += 1;
        Ok(())
    }

    fn refill(&mut self, now_ms: u64) {
        if now_ms < self.refilled_ms || self.spent == 0 {
            self.refilled_ms = now_ms;
            return;
        }
        let periods = (now_ms - self.refilled_ms) / Self::REFILL_MS;
        self.spent = self
            .spent
            .saturating_sub(u32::try_from(periods).unwrap_or(u32::MAX));
        self.refilled_ms += periods * Self::REFILL_MS;
    }

    fn refund(&mut self) {
        self.spent = self.spent.saturating_sub(1);
    }
}

/// Counts of what happened to login attempts since start, for `/metrics`.
#[derive(Debug, Default)]
pub(super) struct LoginCounters {
    /// Passwords hashed (logins and first setups).
    pub(super) hashed: AtomicU64,
    /// Attempts refused by the per-client lockout or the global budget.
    pub(super) throttled: AtomicU64,
    /// Attempts refused because the hash queue was full.
    pub(super) busy: AtomicU64,
    /// Hashes running now.
    running: AtomicUsize,
    /// Most hashes ever running at once.
    pub(super) peak_running: AtomicUsize,
}

/// The argon2 slots: [`HASHES_AT_ONCE`] running, [`HASH_QUEUE`] waiting.
#[derive(Debug)]
pub(super) struct HashSlots {
    running: Arc<Semaphore>,
    admitted: Arc<AtomicUsize>,
    counters: Arc<LoginCounters>,
}

impl Default for HashSlots {
    fn default() -> Self {
        Self {
            running: Arc::new(Semaphore::new(HASHES_AT_ONCE)),
            admitted: Arc::new(AtomicUsize::new(0)),
            counters: Arc::new(LoginCounters::default()),
        }
    }
}

/// A place in the hash queue, given back when dropped.
#[derive(Debug)]
pub(super) struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HashSlots {
    /// The counters.
    pub(super) fn counters(&self) -> &LoginCounters {
        &self.counters
    }

    /// A place in the queue, or `None` when it is full.
    pub(super) fn admit(&self) -> Option<Admitted> {
        let before = self.admitted.fetch_add(1, Ordering::AcqRel);
        let place = Admitted(Arc::clone(&self.admitted));
        if before >= HASHES_AT_ONCE + HASH_QUEUE {
            self.counters.busy.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(place)
    }

    /// Runs `hash` on the blocking pool once a slot is free. The slot goes
    /// with the work, so a caller that gives up does not free it early.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        _admitted: &Admitted,
        hash: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let permit = Arc::clone(&self.running).acquire_owned().await.ok()?;
        let counters = Arc::clone(&self.counters);
        tokio::task::spawn_blocking(move || {
            let _running = Running::start(permit, &counters);
            hash()
        })
        .await
        .ok()
    }
}

/// A hash being computed, counted while it lasts.
struct Running<'a> {
    _permit: OwnedSemaphorePermit,
    counters: &'a LoginCounters,
}

impl<'a> Running<'a> {
    fn start(permit: OwnedSemaphorePermit, counters: &'a LoginCounters) -> Self {
        counters.hashed.fetch_add(1, Ordering::Relaxed);
        let now = counters.running.fetch_add(1, Ordering::AcqRel) + 1;
        counters.peak_running.fetch_max(now, Ordering::AcqRel);
        Self {
            _permit: permit,
            counters,
        }
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.counters.running.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn five_free_failures_then_doubling_lockouts() {
        let mut throttle = LoginThrottle::default();
        for attempt in 0..6 {
            assert!(throttle.attempt(CLIENT, attempt).is_ok(), "{attempt}");
        }
        assert_eq!(
            throttle.attempt(CLIENT, 10),
            Err(Duration::from_millis(995)),
            "the sixth failure locks the client out for a second"
        );
        assert!(throttle.attempt(CLIENT, 1006).is_ok());
        assert_eq!(throttle.attempt(CLIENT, 1006), Err(Duration::from_secs(2)));
        let other = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 8));
        assert!(throttle.attempt(other, 1010).is_ok(), "others are not hit");
        let key = ClientKey::of(CLIENT);
        for _ in 0..40 {
            throttle.failed(key, 5000);
        }
        assert_eq!(
            throttle.attempt(CLIENT, 5000),
            Err(Duration::from_millis(LoginThrottle::MAX_LOCKOUT_MS))
        );
        throttle.succeeded(key);
        assert!(throttle.attempt(CLIENT, 5000).is_ok());
    }

    #[test]
    fn an_ipv6_client_is_its_64() {
        let mut throttle = LoginThrottle::default();
        let host = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 0, 0, 0, last));
        for index in 0..6 {
            assert!(throttle.attempt(host(index), 0).is_ok());
        }
        assert!(
            throttle.attempt(host(999), 1).is_err(),
            "another address of the same /64 is locked out too"
        );
        let neighbour = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 3, 0, 0, 0, 1));
        assert!(
            throttle.attempt(neighbour, 1).is_ok(),
            "the next /64 is not"
        );
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 7).to_ipv6_mapped());
        assert_eq!(ClientKey::of(mapped), ClientKey::of(CLIENT));
        assert_ne!(
            ClientKey::of(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9))),
            ClientKey::of(CLIENT),
            "IPv4 clients are counted by address"
        );
    }

    #[test]
    fn many_clients_share_one_budget() {
        let mut throttle = LoginThrottle::default();
        let client = |index: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + index));
        for index in 0..Budget::BURST {
            assert!(throttle.attempt(client(index), 0).is_ok());
        }
        assert_eq!(
            throttle.attempt(client(100), 1000),
            Err(Duration::from_millis(2000)),
            "the budget is spent whatever the address"
        );
        assert!(throttle.attempt(client(100), 3000).is_ok(), "one came back");
        assert!(throttle.attempt(client(101), 3000).is_err());
        throttle.succeeded(ClientKey::of(client(0)));
        assert!(
            throttle.attempt(client(101), 3000).is_ok(),
            "a right password gives its attempt back"
        );
        assert!(
            throttle.attempt(client(102), 2000).is_err(),
            "a clock stepping back refills nothing"
        );
    }

    #[test]
    fn the_throttle_stays_bounded() {
        let mut throttle = LoginThrottle::default();
        for index in 0..(LoginThrottle::MAX_CLIENTS as u32 + 100) {
            throttle.failed(ClientKey::of(IpAddr::V4(index.into())), u64::from(index));
        }
        assert_eq!(throttle.tracked(), LoginThrottle::MAX_CLIENTS);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_hashes_at_once_and_a_short_queue() {
        let slots = Arc::new(HashSlots::default());
        let (release, gate) = std::sync::mpsc::channel::<()>();
        let gate = Arc::new(parking_lot::Mutex::new(gate));
        let mut admitted: Vec<Admitted> = (0..HASHES_AT_ONCE + HASH_QUEUE)
            .map(|_| slots.admit().expect("room in the queue"))
            .collect();
        assert!(slots.admit().is_none(), "the queue is full");
        let mut work = tokio::task::JoinSet::new();
        for place in admitted.drain(..) {
            let (slots, gate) = (Arc::clone(&slots), Arc::clone(&gate));
            work.spawn(async move {
                slots
                    .run(&place, move || {
                        let _ = gate.lock().recv();
                    })
                    .await
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..HASHES_AT_ONCE + HASH_QUEUE {
            release.send(()).unwrap();
        }
        while let Some(done) = work.join_next().await {
            assert!(done.unwrap().is_some());
        }
        let counters = slots.counters();
        assert_eq!(
            counters.peak_running.load(Ordering::Relaxed),
            HASHES_AT_ONCE
        );
        assert_eq!(counters.busy.load(Ordering::Relaxed), 1);
        assert!(slots.admit().is_some(), "places come back");
    }
}

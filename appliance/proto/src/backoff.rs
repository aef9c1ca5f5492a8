//! Reconnect delays: exponential with full jitter, starting over after a
//! stable connection. Time and randomness are the caller's.

use std::time::{Duration, Instant};

use rand::Rng;

/// First reconnect delay ceiling.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);

/// Largest reconnect delay ceiling.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// How long a connection must stay up for the backoff to start over.
pub const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(30);

/// Reconnect delays: exponential from [`BACKOFF_INITIAL`], doubling to
/// [`BACKOFF_MAX`], with full jitter (each delay drawn in `[0, ceiling]`).
/// It starts over once a connection stayed up [`BACKOFF_RESET_AFTER`].
#[derive(Debug, Clone)]
pub struct Backoff {
    ceiling: Duration,
    up_since: Option<Instant>,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

impl Backoff {
    /// A backoff at its first step.
    pub fn new() -> Self {
        Self {
            ceiling: BACKOFF_INITIAL,
            up_since: None,
        }
    }

    /// A connection came up at `now`.
    pub fn connected(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// The connection failed or dropped at `now`: how long to wait before
    /// the next attempt.
    pub fn next_delay(&mut self, now: Instant, rng: &mut impl Rng) -> Duration {
        if let Some(up_since) = self.up_since.take()
            && now.saturating_duration_since(up_since) >= BACKOFF_RESET_AFTER
        {
            self.ceiling = BACKOFF_INITIAL;
        }
        let ceiling_ms = self.ceiling.as_millis() as u64;
        let delay = Duration::from_millis(rng.random_range(0..=ceiling_ms));
        self.ceiling = (self.ceiling * 2).min(BACKOFF_MAX);
        delay
    }

    /// The largest delay the next attempt can draw (before any reset).
    pub fn ceiling(&self) -> Duration {
        self.ceiling
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;
    use crate::test_now;

    #[test]
    fn backoff_grows_to_its_cap() {
        let now = test_now();
        let mut backoff = Backoff::new();
        let mut rng = StdRng::seed_from_u64(1);
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(backoff.ceiling().as_secs());
            backoff.next_delay(now, &mut rng);
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]);
    }

    #[test]
    fn backoff_delays_stay_within_the_ceiling() {
        let now = test_now();
        let mut rng = StdRng::seed_from_u64(2);
        let mut backoff = Backoff::new();
        let mut longest = Duration::ZERO;
        for _ in 0..500 {
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay(now, &mut rng);
            assert!(delay <= ceiling, "{delay:?} over {ceiling:?}");
            longest = longest.max(delay);
        }
        assert!(
            longest > BACKOFF_MAX / 2,
            "jitter spreads delays: {longest:?}"
        );
        assert!(longest <= BACKOFF_MAX);
    }

    #[test]
    fn backoff_starts_over_after_a_stable_connection() {
        let start = test_now();
        let mut rng = StdRng::seed_from_u64(3);
        let mut backoff = Backoff::new();
        for _ in 0..5 {
            backoff.next_delay(start, &mut rng);
        }
        backoff.connected(start);
        backoff.next_delay(start + BACKOFF_RESET_AFTER / 2, &mut rng);
        assert_eq!(
            backoff.ceiling(),
            BACKOFF_MAX,
            "a short connection keeps it"
        );

        backoff.connected(start);
        let delay = backoff.next_delay(start + BACKOFF_RESET_AFTER, &mut rng);
        assert!(delay <= BACKOFF_INITIAL);
        assert_eq!(backoff.ceiling(), BACKOFF_INITIAL * 2);
    }
}

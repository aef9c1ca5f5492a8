//! Time as the query path reads it: the system clock in service, a manual
//! one in tests, so TTL expiry and serve-stale are tested without waiting.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The query path's clock (like quinn's runtime `now`): every age, deadline
/// and log time of a query comes from here.
pub(crate) trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Monotonic now, for ages and deadlines.
    fn now(&self) -> Instant;

    /// Wall-clock milliseconds since the Unix epoch, for the query log.
    fn unix_now_ms(&self) -> u64;

    /// Completes once `duration` has passed on this clock.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send;
}

/// The system clock (`crate::clock`), with tokio's timer.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        crate::clock::now()
    }

    fn unix_now_ms(&self) -> u64 {
        crate::clock::unix_now_ms()
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        tokio::time::sleep(duration)
    }
}

impl<C: Clock> Clock for Arc<C> {
    fn now(&self) -> Instant {
        (**self).now()
    }

    fn unix_now_ms(&self) -> u64 {
        (**self).unix_now_ms()
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
        (**self).sleep(duration)
    }
}

#[cfg(test)]
pub(crate) use manual::ManualClock;

#[cfg(test)]
mod manual {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};
    use std::time::{Duration, Instant};

    use parking_lot::Mutex;

    use super::Clock;

    /// A clock that moves only when told to.
    #[derive(Debug)]
    pub(crate) struct ManualClock {
        start: Instant,
        state: Arc<Mutex<State>>,
    }

    #[derive(Debug, Default)]
    struct State {
        elapsed: Duration,
        sleepers: Vec<Waker>,
    }

    impl ManualClock {
        /// A clock standing at the time it was made.
        pub(crate) fn new() -> Arc<Self> {
            Arc::new(Self {
                start: crate::clock::now(),
                state: Arc::default(),
            })
        }

        /// Moves the clock forward, waking every sleeper to check its deadline.
        pub(crate) fn advance(&self, by: Duration) {
            let sleepers = {
                let mut state = self.state.lock();
                state.elapsed += by;
                std::mem::take(&mut state.sleepers)
            };
            sleepers.into_iter().for_each(Waker::wake);
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            self.start + self.state.lock().elapsed
        }

        fn unix_now_ms(&self) -> u64 {
            1_700_000_000_000 + self.state.lock().elapsed.as_millis() as u64
        }

        fn sleep(&self, duration: Duration) -> impl Future<Output = ()> + Send {
            Sleep {
                until: self.state.lock().elapsed + duration,
                state: Arc::clone(&self.state),
            }
        }
    }

    struct Sleep {
        until: Duration,
        state: Arc<Mutex<State>>,
    }

    impl Future for Sleep {
        type Output = ();

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let mut state = self.state.lock();
            if state.elapsed >= self.until {
                return Poll::Ready(());
            }
            state.sleepers.push(cx.waker().clone());
            Poll::Pending
        }
    }
}

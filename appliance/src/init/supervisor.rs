//! When init starts `moat run` again, and how: a pure state machine over
//! the daemon's exits and failed spawns, with the time as an argument.
//!
//! Each restart waits twice as long as the one before (1 s up to 5 min); a
//! daemon that ran for a minute resets that. After three exits in a row
//! each within a minute of its start (a daemon that cannot start), the
//! next start is in safe mode, which ignores the saved settings; safe mode
//! lasts until the next boot. A spawn that failed is retried with the same
//! backoff and does not count towards safe mode (the same binary would be
//! spawned).

use std::time::{Duration, Instant};

/// The first restart's pause.
const INITIAL: Duration = Duration::from_secs(1);
/// The longest pause between restarts.
const MAX: Duration = Duration::from_secs(300);
/// A daemon that ran at least this long started fine.
const STABLE: Duration = Duration::from_secs(60);
/// Quick exits in a row that switch to safe mode.
const QUICK_EXITS_FOR_SAFE: u32 = 3;

/// How the daemon is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// With every saved setting.
    Normal,
    /// `moat run --safe-mode`: saved settings ignored, the last bundle served.
    Safe,
}

/// What init does next: start the daemon in `mode` after `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Restart {
    /// The pause before the start.
    pub(crate) after: Duration,
    /// The mode it starts in.
    pub(crate) mode: Mode,
}

/// The restart policy's state.
#[derive(Debug, Clone)]
pub(crate) struct Supervisor {
    mode: Mode,
    backoff: Duration,
    quick_exits: u32,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self {
            mode: Mode::Normal,
            backoff: INITIAL,
            quick_exits: 0,
        }
    }
}

impl Supervisor {
    /// The mode the next start uses.
    pub(crate) fn mode(&self) -> Mode {
        self.mode
    }

    /// Why the daemon runs in safe mode, as it reports it.
    pub(crate) fn safe_mode_reason() -> String {
        format!(
            "the daemon exited {QUICK_EXITS_FOR_SAFE} times in a row within {} s of starting",
            STABLE.as_secs()
        )
    }

    /// The daemon started at `started` ended at `ended`.
    pub(crate) fn exited(&mut self, started: Instant, ended: Instant) -> Restart {
        if ended.saturating_duration_since(started) >= STABLE {
            self.quick_exits = 0;
            self.backoff = INITIAL;
        } else {
            self.quick_exits += 1;
        }
        if self.mode == Mode::Normal && self.quick_exits >= QUICK_EXITS_FOR_SAFE {
            self.mode = Mode::Safe;
            self.quick_exits = 0;
            self.backoff = INITIAL;
        }
        self.next()
    }

    /// Starting the daemon failed.
    pub(crate) fn spawn_failed(&mut self) -> Restart {
        self.next()
    }

    fn next(&mut self) -> Restart {
        let after = self.backoff;
        self.backoff = (self.backoff * 2).min(MAX);
        Restart {
            after,
            mode: self.mode,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn wait(after: u64, mode: Mode) -> Restart {
        Restart {
            after: secs(after),
            mode,
        }
    }

    #[test]
    fn failing_starts_back_off_then_switch_to_safe_mode() {
        let mut supervisor = Supervisor::default();
        let mut now = crate::clock::now();
        let mut fail = |supervisor: &mut Supervisor, pause: Duration| {
            let started = now + pause;
            now = started + Duration::from_millis(300);
            supervisor.exited(started, now)
        };
        assert_eq!(fail(&mut supervisor, secs(0)), wait(1, Mode::Normal));
        assert_eq!(fail(&mut supervisor, secs(1)), wait(2, Mode::Normal));
        assert_eq!(
            fail(&mut supervisor, secs(2)),
            wait(1, Mode::Safe),
            "the third quick exit: safe mode, at once"
        );
        assert_eq!(supervisor.mode(), Mode::Safe);
        let pauses: Vec<u64> = (0..12)
            .map(|_| fail(&mut supervisor, secs(1)).after.as_secs())
            .collect();
        assert_eq!(
            pauses,
            [2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300, 300],
            "safe mode failing too: doubling to 5 min, never giving up"
        );
        assert_eq!(supervisor.mode(), Mode::Safe, "safe until the next boot");
    }

    #[test]
    fn a_daemon_that_ran_a_minute_resets_the_backoff_and_the_count() {
        let mut supervisor = Supervisor::default();
        let start = crate::clock::now();
        assert_eq!(supervisor.exited(start, start), wait(1, Mode::Normal));
        assert_eq!(supervisor.exited(start, start), wait(2, Mode::Normal));
        assert_eq!(
            supervisor.exited(start, start + secs(60)),
            wait(1, Mode::Normal),
            "a crash after a minute of service is not a failed start"
        );
        assert_eq!(supervisor.exited(start, start), wait(2, Mode::Normal));
        assert_eq!(supervisor.exited(start, start), wait(4, Mode::Normal));
        assert_eq!(supervisor.exited(start, start), wait(1, Mode::Safe));
    }

    #[test]
    fn failed_spawns_are_retried_with_backoff_and_do_not_mean_safe_mode() {
        let mut supervisor = Supervisor::default();
        let pauses: Vec<Restart> = (0..4).map(|_| supervisor.spawn_failed()).collect();
        assert_eq!(
            pauses,
            [
                wait(1, Mode::Normal),
                wait(2, Mode::Normal),
                wait(4, Mode::Normal),
                wait(8, Mode::Normal)
            ]
        );
        let start = crate::clock::now();
        assert_eq!(
            supervisor.exited(start, start + secs(3600)),
            wait(1, Mode::Normal)
        );
    }
}

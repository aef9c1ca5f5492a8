//! Pausing blocking, for a while or until resumed: an instance setting.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock;

const NOT_PAUSED: u64 = 0;
const FOREVER: u64 = u64::MAX;

/// The pause setting as stored and reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum PauseState {
    /// Blocking is on.
    #[default]
    Blocking,
    /// Blocking is off until resumed.
    Paused,
    /// Blocking is off until this Unix time (seconds).
    PausedUntil {
        /// When blocking resumes by itself.
        unix_secs: u64,
    },
}

/// The live pause switch, read on every query.
#[derive(Debug, Default)]
pub(crate) struct Pause {
    until: AtomicU64,
}

impl Pause {
    /// A switch starting in `state`.
    pub(crate) fn new(state: PauseState) -> Self {
        let pause = Self::default();
        pause.set(state);
        pause
    }

    /// Whether blocking is paused now.
    pub(crate) fn is_paused(&self) -> bool {
        match self.until.load(Ordering::Relaxed) {
            NOT_PAUSED => false,
            FOREVER => true,
            until => clock::unix_now() < until,
        }
    }

    /// Sets the switch.
    pub(crate) fn set(&self, state: PauseState) {
        let until = match state {
            PauseState::Blocking => NOT_PAUSED,
            PauseState::Paused => FOREVER,
            PauseState::PausedUntil { unix_secs } => unix_secs.clamp(1, FOREVER - 1),
        };
        self.until.store(until, Ordering::Relaxed);
    }

    /// The state now (an elapsed pause reads as blocking).
    pub(crate) fn state(&self) -> PauseState {
        match self.until.load(Ordering::Relaxed) {
            NOT_PAUSED => PauseState::Blocking,
            FOREVER => PauseState::Paused,
            until if clock::unix_now() >= until => PauseState::Blocking,
            unix_secs => PauseState::PausedUntil { unix_secs },
        }
    }
}

impl PauseState {
    /// A pause for `duration` from now, or until resumed.
    pub(crate) fn for_duration(duration: Option<Duration>) -> Self {
        match duration {
            None => Self::Paused,
            Some(duration) => Self::PausedUntil {
                unix_secs: clock::unix_now().saturating_add(duration.as_secs().max(1)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_pause_elapses() {
        let pause = Pause::new(PauseState::PausedUntil {
            unix_secs: clock::unix_now() + 100,
        });
        assert!(pause.is_paused());
        pause.set(PauseState::PausedUntil {
            unix_secs: clock::unix_now() - 1,
        });
        assert!(!pause.is_paused());
        assert_eq!(pause.state(), PauseState::Blocking);
        pause.set(PauseState::Paused);
        assert!(pause.is_paused());
    }
}

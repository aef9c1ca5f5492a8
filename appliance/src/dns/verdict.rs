//! The verdict memo: when a policy's verdicts do not depend on who asks, a
//! question it let through once is not asked again while its answer stays
//! cached, until the policy changes.

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::policy::Policy;

/// The memo of one installed policy: it issues that policy's stamp and
/// checks the stamps kept with cached answers.
#[derive(Debug)]
pub(crate) struct VerdictMemo {
    /// `None` when verdicts depend on the client and cannot be kept.
    stamp: Option<NonZeroU64>,
}

/// Where a cached answer keeps the stamp of the last policy that let its
/// question through (0: none).
#[derive(Debug, Default)]
pub(crate) struct VerdictSlot(AtomicU64);

impl VerdictMemo {
    /// The memo for `policy`, just installed: its stamp is one no earlier
    /// policy had, so no answer starts out passed.
    pub(crate) fn issue(policy: &dyn Policy) -> Self {
        static ISSUED: AtomicU64 = AtomicU64::new(1);
        let stamp = (!policy.reads_client())
            .then(|| NonZeroU64::new(ISSUED.fetch_add(1, Ordering::Relaxed)))
            .flatten();
        Self { stamp }
    }

    /// Whether this policy already let the question of `slot`'s answer
    /// through.
    pub(crate) fn passed(&self, slot: &VerdictSlot) -> bool {
        self.stamp
            .is_some_and(|stamp| slot.0.load(Ordering::Relaxed) == stamp.get())
    }

    /// Notes that this policy lets the question of `slot`'s answer through.
    pub(crate) fn mark_passed(&self, slot: &VerdictSlot) {
        if let Some(stamp) = self.stamp {
            slot.0.store(stamp.get(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Decision, Question};

    #[derive(Debug)]
    struct Fixed {
        reads_client: bool,
    }

    impl Policy for Fixed {
        fn decide(&self, _: &Question<'_>) -> Decision {
            Decision::NoOpinion
        }

        fn reads_client(&self) -> bool {
            self.reads_client
        }
    }

    const BY_NAME: Fixed = Fixed {
        reads_client: false,
    };

    #[test]
    fn a_pass_holds_until_another_policy_is_installed() {
        let slot = VerdictSlot::default();
        let memo = VerdictMemo::issue(&BY_NAME);
        assert!(!memo.passed(&slot), "nothing passed yet");
        memo.mark_passed(&slot);
        assert!(memo.passed(&slot));
        let next = VerdictMemo::issue(&BY_NAME);
        assert!(!next.passed(&slot), "a new policy asks again");
        assert!(memo.passed(&slot), "the slot still holds the old stamp");
    }

    #[test]
    fn verdicts_by_client_are_never_kept() {
        let slot = VerdictSlot::default();
        let memo = VerdictMemo::issue(&Fixed { reads_client: true });
        memo.mark_passed(&slot);
        assert!(!memo.passed(&slot));
    }
}

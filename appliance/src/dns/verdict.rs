//! The verdict memo: a question the policy let through is not asked again
//! while its answer stays cached, the policy stays in force and the
//! verdict holds: until the boundary the plugins named (a time-dependent
//! plugin's `moat_valid_until`), and, when verdicts depend on who asks,
//! for the client that asked only.

use std::net::IpAddr;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering, fence};

use crate::policy::{Policy, Ruling};

/// The memo of one installed policy: it issues that policy's stamp and
/// checks the stamps kept with cached answers.
#[derive(Debug)]
pub(crate) struct VerdictMemo {
    stamp: NonZeroU64,
    /// Whether a pass holds only for the client that asked.
    by_client: bool,
}

/// Where a cached answer keeps the last pass of its question: the stamp
/// of the policy (0: none), until when it holds (plugins' Unix seconds)
/// and for which client (0 when for every client). A sequence lock keeps
/// the three together: a reader that meets a write under way sees no pass,
/// and a writer that meets another gives way (a pass not kept is only
/// asked again).
#[derive(Debug, Default)]
pub(crate) struct VerdictSlot {
    sequence: AtomicU64,
    stamp: AtomicU64,
    until: AtomicU64,
    client: [AtomicU64; 2],
}

/// A pass as a slot keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pass {
    stamp: u64,
    until: u64,
    client: u128,
}

impl VerdictSlot {
    fn read(&self) -> Option<Pass> {
        let before = self.sequence.load(Ordering::Acquire);
        if before & 1 == 1 {
            return None;
        }
        let pass = Pass {
            stamp: self.stamp.load(Ordering::Relaxed),
            until: self.until.load(Ordering::Relaxed),
            client: u128::from(self.client[0].load(Ordering::Relaxed)) << 64
                | u128::from(self.client[1].load(Ordering::Relaxed)),
        };
        fence(Ordering::Acquire);
        (self.sequence.load(Ordering::Relaxed) == before).then_some(pass)
    }

    fn write(&self, pass: Pass) {
        let before = self.sequence.load(Ordering::Relaxed);
        if before & 1 == 1
            || self
                .sequence
                .compare_exchange(before, before + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        fence(Ordering::Release);
        self.stamp.store(pass.stamp, Ordering::Relaxed);
        self.until.store(pass.until, Ordering::Relaxed);
        self.client[0].store((pass.client >> 64) as u64, Ordering::Relaxed);
        self.client[1].store(pass.client as u64, Ordering::Relaxed);
        self.sequence.store(before + 2, Ordering::Release);
    }
}

impl VerdictMemo {
    /// The memo for `policy`, just installed: its stamp is one no earlier
    /// policy had, so no answer starts out passed.
    pub(crate) fn issue(policy: &dyn Policy) -> Self {
        static ISSUED: AtomicU64 = AtomicU64::new(1);
        let stamp =
            NonZeroU64::new(ISSUED.fetch_add(1, Ordering::Relaxed)).unwrap_or(NonZeroU64::MIN);
        Self {
            stamp,
            by_client: policy.reads_client(),
        }
    }

    /// Whether this policy let the question of `slot`'s answer through in
    /// a verdict that still holds at `unix_time` (the plugins' clock) for
    /// `client`.
    pub(crate) fn passed(&self, slot: &VerdictSlot, client: IpAddr, unix_time: u64) -> bool {
        slot.read().is_some_and(|pass| {
            pass.stamp == self.stamp.get()
                && unix_time < pass.until
                && pass.client == self.client_key(client)
        })
    }

    /// Notes that this policy lets the question of `slot`'s answer through
    /// for `client` in `ruling`, while it holds.
    pub(crate) fn mark_passed(&self, slot: &VerdictSlot, client: IpAddr, ruling: &Ruling) {
        if ruling.holds_until == 0 {
            return;
        }
        slot.write(Pass {
            stamp: self.stamp.get(),
            until: ruling.holds_until,
            client: self.client_key(client),
        });
    }

    fn client_key(&self, client: IpAddr) -> u128 {
        match (self.by_client, client) {
            (false, _) => 0,
            (true, IpAddr::V4(v4)) => u128::from(v4.to_ipv6_mapped()),
            (true, IpAddr::V6(v6)) => u128::from(v6),
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
        fn rule(&self, _: &Question<'_>) -> Ruling {
            Ruling::lasting(Decision::NoOpinion)
        }

        fn reads_client(&self) -> bool {
            self.reads_client
        }
    }

    const BY_NAME: Fixed = Fixed {
        reads_client: false,
    };
    const ONE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 1, 7));
    const OTHER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 1, 8));

    fn until(holds_until: u64) -> Ruling {
        Ruling {
            holds_until,
            ..Ruling::lasting(Decision::NoOpinion)
        }
    }

    #[test]
    fn a_pass_holds_until_another_policy_is_installed() {
        let slot = VerdictSlot::default();
        let memo = VerdictMemo::issue(&BY_NAME);
        assert!(!memo.passed(&slot, ONE, 0), "nothing passed yet");
        memo.mark_passed(&slot, ONE, &until(Ruling::FOREVER));
        assert!(memo.passed(&slot, ONE, 0));
        assert!(
            memo.passed(&slot, OTHER, u64::MAX - 1),
            "any client, any time"
        );
        let next = VerdictMemo::issue(&BY_NAME);
        assert!(!next.passed(&slot, ONE, 0), "a new policy asks again");
        assert!(
            memo.passed(&slot, ONE, 0),
            "the slot still holds the old stamp"
        );
    }

    #[test]
    fn a_pass_holds_until_the_boundary_the_plugins_named() {
        let slot = VerdictSlot::default();
        let memo = VerdictMemo::issue(&BY_NAME);
        memo.mark_passed(&slot, ONE, &until(1_000));
        assert!(memo.passed(&slot, ONE, 999));
        assert!(
            !memo.passed(&slot, ONE, 1_000),
            "the boundary is where it may change"
        );
        memo.mark_passed(&slot, ONE, &until(0));
        assert!(
            memo.passed(&slot, ONE, 999),
            "a ruling for one query is not kept"
        );
    }

    #[test]
    fn verdicts_by_client_are_kept_for_the_client_that_asked() {
        let slot = VerdictSlot::default();
        let memo = VerdictMemo::issue(&Fixed { reads_client: true });
        memo.mark_passed(&slot, ONE, &until(Ruling::FOREVER));
        assert!(memo.passed(&slot, ONE, 0));
        assert!(!memo.passed(&slot, OTHER, 0));
        let v6: IpAddr = "fd00::7".parse().unwrap();
        memo.mark_passed(&slot, v6, &until(Ruling::FOREVER));
        assert!(memo.passed(&slot, v6, 0) && !memo.passed(&slot, ONE, 0));
    }

    #[test]
    fn a_pass_is_never_read_torn_while_threads_write() {
        let slot = VerdictSlot::default();
        let memo = VerdictMemo::issue(&Fixed { reads_client: true });
        std::thread::scope(|scope| {
            for client in [ONE, OTHER] {
                let (slot, memo) = (&slot, &memo);
                scope.spawn(move || {
                    for round in 0..20_000u64 {
                        memo.mark_passed(
                            slot,
                            client,
                            &until(if client == ONE { 10 } else { round + 100 }),
                        );
                    }
                });
            }
            for _ in 0..20_000 {
                if let Some(pass) = slot.read().filter(|pass| pass.stamp != 0) {
                    let one = pass.client == memo.client_key(ONE);
                    assert!(
                        (one && pass.until == 10) || (!one && pass.until >= 100),
                        "{pass:?}"
                    );
                }
            }
        });
    }
}

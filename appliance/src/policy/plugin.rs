//! A configured plugin (`[[policy.plugins]]`) in the chain: its faults are
//! contained by its fail mode, and a plugin that keeps faulting is switched
//! off, so it never takes the other plugins down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Decision, Policy, Question, Ruling, WasmPolicy};
use crate::config::{PluginFailMode, PluginName};

/// Faults, each within [`STRIKE_WINDOW`] of the one before, that switch a
/// plugin off.
pub(crate) const SWITCH_OFF_FAULTS: u32 = 8;
/// A fault further than this from the one before starts the count again.
const STRIKE_WINDOW: Duration = Duration::from_secs(60);

/// A configured plugin as status reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct PluginStatus {
    /// Its name.
    pub name: String,
    /// `open`, `closed` or `skip`.
    pub fail_mode: String,
    /// Faults since the policy in force was loaded.
    pub faults: u64,
    /// Switched off after repeated faults: its fail mode decides every
    /// question until the next policy.
    pub switched_off: bool,
    /// Times it was asked since the policy in force was loaded.
    pub calls: u64,
    /// What it answered, by kind, since then.
    pub verdicts: PluginVerdicts,
    /// Nanoseconds its calls took in all.
    pub decision_ns: u64,
}

/// A plugin's verdicts counted by kind.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct PluginVerdicts {
    /// No opinion: the next in the chain decided.
    pub no_opinion: u64,
    /// Allowed.
    pub allow: u64,
    /// Blocked.
    pub block: u64,
    /// Answered with records.
    pub answer: u64,
    /// Refused.
    pub refuse: u64,
    /// Faulted (a trap, a timeout, a bad verdict), or decided by its fail
    /// mode while switched off.
    pub fault: u64,
}

impl PluginVerdicts {
    /// Each kind's name (as `/metrics` labels it) and count.
    pub fn by_kind(&self) -> [(&'static str, u64); 6] {
        [
            ("no_opinion", self.no_opinion),
            ("allow", self.allow),
            ("block", self.block),
            ("answer", self.answer),
            ("refuse", self.refuse),
            ("fault", self.fault),
        ]
    }
}

/// The kinds of [`PluginVerdicts`], as indices of a counter array.
const VERDICT_KINDS: usize = 6;

fn kind_index(decision: &Decision) -> usize {
    match decision {
        Decision::NoOpinion => 0,
        Decision::Allow => 1,
        Decision::Block => 2,
        Decision::Answer(_) => 3,
        Decision::Refuse => 4,
        Decision::Fault | Decision::FailClosed => 5,
    }
}

/// A configured plugin: its module, its name and its fail mode.
#[derive(Debug)]
pub(crate) struct Configured {
    name: PluginName,
    fail_mode: PluginFailMode,
    module: Arc<WasmPolicy>,
    loaded: Instant,
    /// Milliseconds after `loaded` of the last fault.
    last_fault_ms: AtomicU64,
    strikes: AtomicU32,
    switched_off: AtomicBool,
    calls: AtomicU64,
    verdicts: [AtomicU64; VERDICT_KINDS],
    decision_ns: AtomicU64,
}

impl Configured {
    /// `module` under `name`, faulting per `fail_mode`.
    pub(crate) fn new(
        name: PluginName,
        fail_mode: PluginFailMode,
        module: Arc<WasmPolicy>,
    ) -> Self {
        Self {
            name,
            fail_mode,
            module,
            loaded: crate::clock::now(),
            last_fault_ms: AtomicU64::new(0),
            strikes: AtomicU32::new(0),
            switched_off: AtomicBool::new(false),
            calls: AtomicU64::new(0),
            verdicts: Default::default(),
            decision_ns: AtomicU64::new(0),
        }
    }

    /// What the fail mode makes of a fault: a ruling for this question only.
    fn failed(&self) -> Ruling {
        let decision = match self.fail_mode {
            PluginFailMode::Open => Decision::Allow,
            PluginFailMode::Closed => Decision::FailClosed,
            PluginFailMode::Skip => Decision::NoOpinion,
        };
        Ruling {
            decision,
            holds_until: 0,
            by: Some(self.name),
        }
    }

    /// Asks the module, or its fail mode when it faults or is switched off.
    fn ask(&self, question: &Question<'_>) -> (Ruling, usize) {
        if self.switched_off.load(Ordering::Relaxed) {
            return (self.failed(), kind_index(&Decision::Fault));
        }
        let ruling = self.module.rule(question);
        match ruling.decision {
            Decision::Fault => {
                self.strike();
                (self.failed(), kind_index(&Decision::Fault))
            }
            Decision::NoOpinion => (ruling, kind_index(&Decision::NoOpinion)),
            _ => {
                let kind = kind_index(&ruling.decision);
                let by = Some(self.name);
                (Ruling { by, ..ruling }, kind)
            }
        }
    }

    /// Counts a fault toward switching off.
    fn strike(&self) {
        let now = crate::clock::now()
            .saturating_duration_since(self.loaded)
            .as_millis() as u64;
        let before = self.last_fault_ms.swap(now, Ordering::Relaxed);
        let strikes = if now.saturating_sub(before) > STRIKE_WINDOW.as_millis() as u64 {
            self.strikes.store(1, Ordering::Relaxed);
            1
        } else {
            self.strikes.fetch_add(1, Ordering::Relaxed) + 1
        };
        if strikes >= SWITCH_OFF_FAULTS && !self.switched_off.swap(true, Ordering::Relaxed) {
            tracing::error!(
                plugin = %self.name,
                faults = strikes,
                fail_mode = ?self.fail_mode,
                "policy plugin switched off after repeated faults; its fail mode decides until the next policy"
            );
        }
    }
}

impl Policy for Configured {
    fn rule(&self, question: &Question<'_>) -> Ruling {
        let started = crate::clock::now();
        let (ruling, kind) = self.ask(question);
        let took = crate::clock::now().saturating_duration_since(started);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.verdicts[kind].fetch_add(1, Ordering::Relaxed);
        self.decision_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
        ruling
    }

    fn faults(&self) -> u64 {
        self.module.faults()
    }

    fn reads_client(&self) -> bool {
        self.module.reads_client()
    }

    fn plugins(&self) -> Vec<PluginStatus> {
        let fail_mode = match self.fail_mode {
            PluginFailMode::Open => "open",
            PluginFailMode::Closed => "closed",
            PluginFailMode::Skip => "skip",
        };
        vec![PluginStatus {
            name: self.name.to_string(),
            fail_mode: fail_mode.to_owned(),
            faults: self.module.faults(),
            switched_off: self.switched_off.load(Ordering::Relaxed),
            calls: self.calls.load(Ordering::Relaxed),
            verdicts: {
                let count = |kind: usize| self.verdicts[kind].load(Ordering::Relaxed);
                PluginVerdicts {
                    no_opinion: count(0),
                    allow: count(1),
                    block: count(2),
                    answer: count(3),
                    refuse: count(4),
                    fault: count(5),
                }
            },
            decision_ns: self.decision_ns.load(Ordering::Relaxed),
        }]
    }
}

//! A configured plugin (`[[policy.plugins]]`) in the chain: its faults are
//! contained by its fail mode, and a plugin that keeps faulting is switched
//! off, so it never takes the other plugins down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::{Decision, Policy, Question, WasmPolicy};
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
        }
    }

    /// What the fail mode makes of a fault.
    fn failed(&self) -> Decision {
        match self.fail_mode {
            PluginFailMode::Open => Decision::Allow,
            PluginFailMode::Closed => Decision::FailClosed,
            PluginFailMode::Skip => Decision::NoOpinion,
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
    fn decide(&self, question: &Question<'_>) -> Decision {
        if self.switched_off.load(Ordering::Relaxed) {
            return self.failed();
        }
        match self.module.decide(question) {
            Decision::Fault => {
                self.strike();
                self.failed()
            }
            decided => decided,
        }
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
        }]
    }
}

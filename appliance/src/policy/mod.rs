//! The policy seam: for each question, allow, block, or have no opinion.
//! Policy runs as WASM modules compiled from the configured sources (see
//! `compile`), hosted by `wasm`.

mod pause;
mod plugin;
mod template;
mod wasm;

use std::net::IpAddr;
use std::sync::Arc;

pub use moat_plugin_abi::ABI_VERSION;
pub(crate) use moat_plugin_abi::RuleKind;
pub(crate) use pause::{Pause, PauseState};
pub(crate) use plugin::Configured;
#[cfg(test)]
pub(crate) use plugin::SWITCH_OFF_FAULTS;
pub use plugin::{PluginStatus, PluginVerdicts};
pub use template::{TemplateError, new_plugin};
pub(crate) use wasm::PluginError;
pub use wasm::{PolicyEngine, WasmPolicy};

use crate::config::PluginName;

/// The text (WAT) of the smallest module that says it speaks plugin ABI
/// `abi`: `pages` of exported memory, every export a plugin must have,
/// `extra` fields, and `decide` as the body of `moat_decide`. What the
/// tests load in place of a plugin someone else wrote.
pub fn plugin_module_wat(abi: i32, pages: u32, extra: &str, decide: &str) -> String {
    format!(
        r#"(module {extra}
            (memory (export "memory") {pages})
            (func (export "moat_abi_version") (result i32) i32.const {abi})
            (func (export "moat_query_buffer") (result i32) i32.const 1024)
            (func (export "moat_answer_buffer") (result i32) i32.const 2048)
            (func (export "moat_explain") (param i32 i32) (result i32) i32.const 0)
            (func (export "moat_decide") (param i32 i32) (result i32) {decide}))"#
    )
}

/// A question as policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    /// The name, lower case, dotted, without the trailing dot.
    pub name: &'a [u8],
    /// The query type.
    pub qtype: u16,
    /// Who asked.
    pub client: IpAddr,
    /// When, in Unix seconds, as plugins are told (the clock plus
    /// `tuning.plugins.clock_offset_secs`).
    pub unix_time: u64,
}

/// What policy decided for a question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Policy has nothing to say: resolve normally.
    NoOpinion,
    /// Explicitly allowed: resolve normally, never block.
    Allow,
    /// Blocked: answer with the configured blocked response.
    Block,
    /// Policy failed (a trap, a timeout, a bad verdict): the configured
    /// fail mode decides between answering as if there were no policy and
    /// SERVFAIL.
    Fault,
    /// Answer locally with these records (see `LocalAnswer`).
    Answer(LocalAnswer),
    /// A plugin whose fail mode is `closed` faulted: SERVFAIL, whatever
    /// the policy's fail mode.
    FailClosed,
    /// Refused by a plugin: answer REFUSED.
    Refuse,
}

/// A decision, how long it holds and who made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruling {
    /// What was decided.
    pub decision: Decision,
    /// The plugins' Unix second from which the same question may be
    /// decided otherwise: [`Ruling::FOREVER`] until the policy changes, a
    /// time not after the question's for this question only.
    pub holds_until: u64,
    /// The configured plugin (`[[policy.plugins]]`) that decided, if one did.
    pub by: Option<PluginName>,
}

impl Ruling {
    /// `holds_until` of a decision that holds until the policy changes.
    pub const FOREVER: u64 = u64::MAX;

    /// A decision of a built-in policy, holding until the policy changes.
    pub(crate) fn lasting(decision: Decision) -> Self {
        Self {
            decision,
            holds_until: Self::FOREVER,
            by: None,
        }
    }
}

/// Which rule decided a question, as the plugin that holds it tells it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// What kind of rule.
    pub kind: RuleKind,
    /// The rule as written (`ads.example`, `*.ads.example`).
    pub pattern: String,
    /// Where it came from: `policy.deny`, `policy.allow`,
    /// `policy.local_records`, or a blocklist source's path or URL.
    pub origin: String,
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} `{}` from {}", self.kind, self.pattern, self.origin)
    }
}

/// Records a policy answers with: a big-endian record count, then per
/// record its type (u16), TTL (u32), RDATA length (u16) and RDATA, all in
/// DNS wire order. No records means the name exists without that type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAnswer(pub Vec<u8>);

impl LocalAnswer {
    /// The records as (type, TTL, RDATA).
    pub fn records(&self) -> impl Iterator<Item = (u16, u32, &[u8])> {
        let count = self
            .0
            .get(..2)
            .map_or(0, |count| u16::from_be_bytes([count[0], count[1]]));
        let mut at = 2;
        (0..count).map_while(move |_| {
            let fixed = self.0.get(at..at + 8)?;
            let kind = u16::from_be_bytes([fixed[0], fixed[1]]);
            let ttl = u32::from_be_bytes([fixed[2], fixed[3], fixed[4], fixed[5]]);
            let len = u16::from_be_bytes([fixed[6], fixed[7]]) as usize;
            let rdata = self.0.get(at + 8..at + 8 + len)?;
            at += 8 + len;
            Some((kind, ttl, rdata))
        })
    }

    /// Bytes the count and records take, if they are well formed.
    pub(crate) fn checked_len(bytes: &[u8]) -> Option<usize> {
        let count = u16::from_be_bytes([*bytes.first()?, *bytes.get(1)?]);
        let mut at = 2;
        for _ in 0..count {
            let fixed = bytes.get(at..at + 8)?;
            at += 8 + u16::from_be_bytes([fixed[6], fixed[7]]) as usize;
        }
        (at <= bytes.len()).then_some(at)
    }
}

/// Policies asked in turn; the first with an opinion decides (local
/// records, then the blocklist).
#[derive(Debug)]
pub(crate) struct Chain(pub Vec<Arc<dyn Policy>>);

impl Policy for Chain {
    /// The first opinion, holding as long as every verdict asked for it.
    fn rule(&self, question: &Question<'_>) -> Ruling {
        let mut holds_until = Ruling::FOREVER;
        for policy in &self.0 {
            let ruling = policy.rule(question);
            holds_until = holds_until.min(ruling.holds_until);
            if ruling.decision != Decision::NoOpinion {
                return Ruling {
                    holds_until,
                    ..ruling
                };
            }
        }
        Ruling {
            holds_until,
            ..Ruling::lasting(Decision::NoOpinion)
        }
    }

    fn faults(&self) -> u64 {
        self.0.iter().map(|policy| policy.faults()).sum()
    }

    fn reads_client(&self) -> bool {
        self.0.iter().any(|policy| policy.reads_client())
    }

    fn plugins(&self) -> Vec<PluginStatus> {
        self.0.iter().flat_map(|policy| policy.plugins()).collect()
    }
}

/// Decides what happens to each question. Implementations are called on
/// the hot path from several threads and must not block.
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// Decides for one question, saying how long the decision holds.
    fn rule(&self, question: &Question<'_>) -> Ruling;

    /// Decides for one question.
    fn decide(&self, question: &Question<'_>) -> Decision {
        self.rule(question).decision
    }

    /// Faults (traps, timeouts, bad verdicts) since this policy was loaded.
    fn faults(&self) -> u64 {
        0
    }

    /// Whether decisions depend on who asks. A decision to let a question
    /// through is kept with its cached answer while it holds (see
    /// [`Ruling::holds_until`]), and cache hits skip the policy; when
    /// decisions depend on who asks, only for the client that asked.
    fn reads_client(&self) -> bool;

    /// The state of each configured plugin (`[[policy.plugins]]`) in it.
    fn plugins(&self) -> Vec<PluginStatus> {
        Vec::new()
    }
}

//! The policy seam: for each question, allow, block, answer locally, or
//! have no opinion. The configured allow/deny lists fill it for now; the
//! WASM policy host plugs in behind the same trait.

mod pause;
mod rules;

use std::net::IpAddr;

pub use pause::{Pause, PauseState};
pub use rules::NameRules;

/// A question as policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Question<'a> {
    /// The name, lower case, dotted, without the trailing dot.
    pub name: &'a [u8],
    /// The query type.
    pub qtype: u16,
    /// Who asked.
    pub client: IpAddr,
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
}

/// Decides what happens to each question. Implementations are called on
/// the hot path from several threads and must not block.
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// Decides for one question.
    fn decide(&self, question: &Question<'_>) -> Decision;
}

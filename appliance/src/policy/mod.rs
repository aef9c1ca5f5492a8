//! The policy seam: for each question, allow, block, or have no opinion.
//! Policy runs as WASM modules compiled from the configured sources (see
//! `compile`), hosted by `wasm`.

mod pause;
mod wasm;

use std::net::IpAddr;

pub use pause::{Pause, PauseState};
pub use wasm::{PluginError, WasmPolicy};

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
    /// Policy failed and the fail mode is closed: answer SERVFAIL.
    Fault,
}

/// Decides what happens to each question. Implementations are called on
/// the hot path from several threads and must not block.
pub trait Policy: Send + Sync + std::fmt::Debug {
    /// Decides for one question.
    fn decide(&self, question: &Question<'_>) -> Decision;
}

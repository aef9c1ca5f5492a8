//! The plugin's exports: the ABI's glue around [`crate::decide`].

use moat_plugin_abi::{Explanation, RuleKind, Verdict};

use crate::Kiosk;

moat_plugin_abi::configured_plugin_glue!();

/// Refuses or answers a kiosk client's question for a name not listed.
#[unsafe(no_mangle)]
pub extern "C" fn moat_decide(len: i32, qtype: i32) -> i32 {
    let Some(config) = config() else {
        return Verdict::NoOpinion as i32;
    };
    (match crate::decide(config, &query(len)) {
        Kiosk::Pass => Verdict::NoOpinion,
        Kiosk::Refuse { .. } => Verdict::Refuse,
        Kiosk::Answer { .. } => {
            crate::write_answer(config, qtype as u16, answer());
            Verdict::Answer
        }
    }) as i32
}

/// Names the client range that made the question a kiosk's.
#[unsafe(no_mangle)]
pub extern "C" fn moat_explain(len: i32, _qtype: i32) -> i32 {
    let range = match config().map(|config| crate::decide(config, &query(len))) {
        Some(Kiosk::Refuse { range } | Kiosk::Answer { range }) => range,
        Some(Kiosk::Pass) | None => return 0,
    };
    let explanation = Explanation {
        kind: RuleKind::Plugin,
        name: range,
        origin: b"kiosk",
    };
    explanation.encode(answer()) as i32
}

/// Verdicts depend on the client.
#[unsafe(no_mangle)]
pub extern "C" fn moat_decides_by_client() -> i32 {
    1
}

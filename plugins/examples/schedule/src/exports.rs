//! The plugin's exports: the ABI's glue around [`crate::decide`].

use moat_plugin_abi::{
    ANSWER_CAPACITY, ConfigLines, DATA_BASE, Explanation, QUERY_CAPACITY, Query, RuleKind, Verdict,
};

moat_plugin_abi::plugin_glue!();

/// Blocks the question in the query buffer when the schedule says so.
#[unsafe(no_mangle)]
pub extern "C" fn moat_decide(len: i32, _qtype: i32) -> i32 {
    let blocked = config().is_some_and(|config| crate::decide(config, &query(len)));
    (if blocked {
        Verdict::Block
    } else {
        Verdict::NoOpinion
    }) as i32
}

/// Names the listed name that blocks the question, when one does.
#[unsafe(no_mangle)]
pub extern "C" fn moat_explain(len: i32, _qtype: i32) -> i32 {
    let query = query(len);
    let Some(config) = config().filter(|config| crate::decide(*config, &query)) else {
        return 0;
    };
    let name = crate::listed_name(config, query.name).unwrap_or(b"");
    let explanation = Explanation {
        kind: RuleKind::Plugin,
        name,
        origin: b"schedule",
    };
    // SAFETY: the host reads the answer buffer after this call; nothing
    // else runs meanwhile.
    let answer: &mut [u8; ANSWER_CAPACITY] = unsafe { &mut *ANSWER.0.get() };
    explanation.encode(answer) as i32
}

/// Verdicts depend on the client.
#[unsafe(no_mangle)]
pub extern "C" fn moat_decides_by_client() -> i32 {
    1
}

/// Verdicts depend on the time.
#[unsafe(no_mangle)]
pub extern "C" fn moat_decides_by_time() -> i32 {
    1
}

fn query(len: i32) -> Query<'static> {
    // SAFETY: the host wrote the buffer before this call; nothing else runs.
    let buffer: &[u8; QUERY_CAPACITY] = unsafe { &*QUERY.0.get() };
    Query::read(buffer, len)
}

fn config() -> Option<ConfigLines<'static>> {
    // SAFETY: the compiler placed the configuration at DATA_BASE and sized
    // the memory to hold it; the memory's end bounds what is read.
    let data = unsafe {
        let end = core::arch::wasm32::memory_size(0) * 65_536;
        core::slice::from_raw_parts(
            DATA_BASE as *const u8,
            end.saturating_sub(DATA_BASE as usize),
        )
    };
    ConfigLines::new(data)
}

//! The plugin's exports: the ABI's glue around [`crate::decide`].

use core::sync::atomic::{AtomicI64, Ordering};

use moat_plugin_abi::{Explanation, HOLDS_FOREVER, RuleKind, Verdict};

moat_plugin_abi::configured_plugin_glue!();

/// When the last verdict may change, for `moat_valid_until`.
static VALID_UNTIL: AtomicI64 = AtomicI64::new(0);

/// Blocks the question in the query buffer when the schedule says so.
#[unsafe(no_mangle)]
pub extern "C" fn moat_decide(len: i32, _qtype: i32) -> i32 {
    let query = query(len);
    let config = config();
    let until = config
        .and_then(|config| crate::holds_until(config, &query))
        .map_or(HOLDS_FOREVER, |until| {
            i64::try_from(until).unwrap_or(HOLDS_FOREVER)
        });
    VALID_UNTIL.store(until, Ordering::Relaxed);
    let blocked = config.is_some_and(|config| crate::decide(config, &query));
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
    explanation.encode(answer()) as i32
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

/// When the last verdict may change: the schedule's next edge.
#[unsafe(no_mangle)]
pub extern "C" fn moat_valid_until() -> i64 {
    VALID_UNTIL.load(Ordering::Relaxed)
}

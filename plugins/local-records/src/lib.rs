//! The local-records plugin. Its data (added by Moat's policy compiler at
//! `DATA_BASE`) indexes each local name, and each wildcard suffix, by hash
//! (`moat_plugin_abi::Records`); a question for a known name is answered
//! with its records of the asked type (or its CNAME), and with no records
//! (NODATA) if it has none. Explaining names the record's owner: the name,
//! or the longest wildcard suffix covering it.
#![no_std]

use moat_plugin_abi::{
    ANSWER_CAPACITY, DATA_BASE, Explanation, LOCAL_RECORDS_ORIGIN, NAME_AT, NAME_CAPACITY, Owner,
    QUERY_CAPACITY, Records, RuleKind, Verdict, write_answer,
};

moat_plugin_abi::plugin_glue!();

/// Answers the `len`-byte name in the query buffer, if it is local.
#[unsafe(no_mangle)]
pub extern "C" fn moat_decide(len: i32, qtype: i32) -> i32 {
    match find(query_name(len)) {
        Some(found) => {
            write_answer(found.records, qtype as u16, answer_buffer());
            Verdict::Answer as i32
        }
        None => Verdict::NoOpinion as i32,
    }
}

/// Writes which owner answers the `len`-byte name in the query buffer into
/// the answer buffer; returns its length, 0 when the name is not local.
#[unsafe(no_mangle)]
pub extern "C" fn moat_explain(len: i32, _qtype: i32) -> i32 {
    let name = query_name(len);
    let Some(found) = find(name) else {
        return 0;
    };
    let kind = if found.start == 0 {
        RuleKind::LocalName
    } else {
        RuleKind::LocalWildcard
    };
    let explanation = Explanation {
        kind,
        name: &name[found.start..],
        origin: LOCAL_RECORDS_ORIGIN,
    };
    explanation.encode(answer_buffer()) as i32
}

/// The `len`-byte name in the query buffer.
fn query_name(len: i32) -> &'static [u8] {
    // SAFETY: the host wrote the buffer before this call; nothing else runs.
    let query: &[u8; QUERY_CAPACITY] = unsafe { &*QUERY.0.get() };
    &query[NAME_AT..NAME_AT + (len.max(0) as usize).min(NAME_CAPACITY)]
}

fn answer_buffer() -> &'static mut [u8; ANSWER_CAPACITY] {
    // SAFETY: the host reads the answer buffer after the call; nothing else
    // runs meanwhile, and each call takes this reference once.
    unsafe { &mut *ANSWER.0.get() }
}

/// The owner answering `name`, from the data.
fn find(name: &[u8]) -> Option<Owner<'static>> {
    // SAFETY: the compiler placed the data at DATA_BASE and sized the
    // memory to hold it; the memory's end bounds what is read of it.
    let data = unsafe {
        let memory_end = core::arch::wasm32::memory_size(0) * 65_536;
        let base = DATA_BASE as usize;
        core::slice::from_raw_parts(base as *const u8, memory_end.saturating_sub(base))
    };
    Records::parse(data)?.0.find(name)
}

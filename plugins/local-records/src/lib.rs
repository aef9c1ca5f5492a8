//! The local-records plugin. Its data (added by Moat's policy compiler at
//! `DATA_BASE`) indexes each local name, and each wildcard suffix, by hash;
//! a question for a known name is answered with its records of the asked
//! type (or its CNAME), and with no records (NODATA) if it has none.
//! Explaining names the record's owner: the name, or the longest wildcard
//! suffix covering it.
#![no_std]

use moat_plugin_abi::{
    ANSWER_CAPACITY, DATA_BASE, Explanation, FNV_OFFSET, LOCAL_RECORDS_ORIGIN, NAME_AT,
    NAME_CAPACITY, QUERY_CAPACITY, RECORDS_HEADER_LEN, RECORDS_INDEX_ENTRY, RECORDS_MAGIC,
    RuleKind, TYPE_CNAME, Verdict, fnv_step,
};

moat_plugin_abi::plugin_glue!();

/// Answers the `len`-byte name in the query buffer, if it is local.
#[unsafe(no_mangle)]
pub extern "C" fn moat_decide(len: i32, qtype: i32) -> i32 {
    match Data::load().and_then(|data| data.find(query_name(len))) {
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
    let Some(found) = Data::load().and_then(|data| data.find(name)) else {
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

/// An owner's records, and where in the asked name the owner starts
/// (0 for the name itself, else the wildcard's suffix).
struct Found {
    records: &'static [u8],
    start: usize,
}

struct Data {
    exact: &'static [u8],
    wildcard: &'static [u8],
    records: &'static [u8],
}

impl Data {
    fn load() -> Option<Self> {
        // SAFETY: the compiler placed the data at DATA_BASE and sized the
        // memory to hold it; the header says how long each part is.
        let header =
            unsafe { core::slice::from_raw_parts(DATA_BASE as *const u8, RECORDS_HEADER_LEN) };
        if header[..8] != RECORDS_MAGIC {
            return None;
        }
        let exact_count =
            u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
        let wildcard_count =
            u32::from_le_bytes([header[12], header[13], header[14], header[15]]) as usize;
        let records_len =
            u32::from_le_bytes([header[16], header[17], header[18], header[19]]) as usize;
        let base = DATA_BASE as usize + RECORDS_HEADER_LEN;
        let exact_len = exact_count * RECORDS_INDEX_ENTRY;
        let wildcard_len = wildcard_count * RECORDS_INDEX_ENTRY;
        // SAFETY: as above.
        unsafe {
            Some(Self {
                exact: core::slice::from_raw_parts(base as *const u8, exact_len),
                wildcard: core::slice::from_raw_parts(
                    (base + exact_len) as *const u8,
                    wildcard_len,
                ),
                records: core::slice::from_raw_parts(
                    (base + exact_len + wildcard_len) as *const u8,
                    records_len,
                ),
            })
        }
    }

    /// The records of `name`, or of the longest wildcard suffix covering it.
    fn find(&self, name: &[u8]) -> Option<Found> {
        let mut hash = FNV_OFFSET;
        let mut best = None;
        for index in (0..name.len()).rev() {
            hash = fnv_step(hash, name[index]);
            if index == 0 {
                if let Some(found) = lookup(self.exact, hash) {
                    return Some(self.found(found, 0));
                }
            } else if name[index - 1] == b'.'
                && let Some(found) = lookup(self.wildcard, hash)
            {
                // Suffixes come shortest first: a longer match replaces it.
                best = Some((found, index));
            }
        }
        best.map(|(found, start)| self.found(found, start))
    }

    fn found(&self, at: (usize, usize), start: usize) -> Found {
        Found {
            records: self.slice(at),
            start,
        }
    }

    fn slice(&self, (offset, len): (usize, usize)) -> &'static [u8] {
        self.records.get(offset..offset + len).unwrap_or(&[])
    }
}

fn lookup(index: &[u8], hash: u64) -> Option<(usize, usize)> {
    let (mut low, mut high) = (0usize, index.len() / RECORDS_INDEX_ENTRY);
    while low < high {
        let middle = (low + high) / 2;
        let entry = &index[middle * RECORDS_INDEX_ENTRY..(middle + 1) * RECORDS_INDEX_ENTRY];
        let value = u64::from_le_bytes([
            entry[0], entry[1], entry[2], entry[3], entry[4], entry[5], entry[6], entry[7],
        ]);
        if value == hash {
            let offset = u32::from_le_bytes([entry[8], entry[9], entry[10], entry[11]]) as usize;
            let len = u32::from_le_bytes([entry[12], entry[13], entry[14], entry[15]]) as usize;
            return Some((offset, len));
        }
        if value < hash {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    None
}

/// Copies the records of type `qtype` (or CNAME) into the answer buffer.
fn write_answer(records: &[u8], qtype: u16, answer: &mut [u8; ANSWER_CAPACITY]) {
    let mut count: u16 = 0;
    let mut out = 2;
    let mut at = 0;
    while at + 8 <= records.len() {
        let kind = u16::from_be_bytes([records[at], records[at + 1]]);
        let rdlen = u16::from_be_bytes([records[at + 6], records[at + 7]]) as usize;
        let end = at + 8 + rdlen;
        if end > records.len() {
            break;
        }
        if (kind == qtype || kind == TYPE_CNAME) && out + (end - at) <= ANSWER_CAPACITY {
            answer[out..out + (end - at)].copy_from_slice(&records[at..end]);
            out += end - at;
            count += 1;
        }
        at = end;
    }
    answer[..2].copy_from_slice(&count.to_be_bytes());
}

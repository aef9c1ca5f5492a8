//! The blocklist plugin. Its data (added by Moat's policy compiler at
//! `DATA_BASE`) holds sorted tables of name hashes (`Table`); a decision
//! walks the name's suffixes once, from the right, and binary-searches the
//! tables: the suffix tables at every label, the exact tables for the whole
//! name, the below tables for every shorter suffix.
//! Precedence: deny > allow > block. The same walk explains a decision:
//! the deciding rule is the first deny match, else the first allow match,
//! else the first block match, shortest suffix first.
#![no_std]

use moat_plugin_abi::{
    ANSWER_CAPACITY, DATA_BASE, DataHeader, Explanation, FNV_OFFSET, NAME_AT, NAME_CAPACITY,
    Origins, QUERY_CAPACITY, RuleKind, TABLES, Table, Verdict, fnv_step,
};

moat_plugin_abi::plugin_glue!();

/// Decides for the `len`-byte name in the query buffer.
#[unsafe(no_mangle)]
pub extern "C" fn moat_decide(len: i32, _qtype: i32) -> i32 {
    decide(query_name(len), &Tables::load()).0 as i32
}

/// Writes which rule decides the `len`-byte name in the query buffer into
/// the answer buffer; returns its length, 0 when no rule does.
#[unsafe(no_mangle)]
pub extern "C" fn moat_explain(len: i32, _qtype: i32) -> i32 {
    let name = query_name(len);
    let tables = Tables::load();
    let Some(found) = decide(name, &tables).1 else {
        return 0;
    };
    let explanation = Explanation {
        kind: RuleKind::of_table(found.table),
        name: &name[found.start..],
        origin: tables.origin(found.table, found.entry).unwrap_or(b""),
    };
    // SAFETY: the host reads the answer buffer after this call; nothing
    // else runs meanwhile.
    let answer: &mut [u8; ANSWER_CAPACITY] = unsafe { &mut *ANSWER.0.get() };
    explanation.encode(answer) as i32
}

/// The `len`-byte name in the query buffer.
fn query_name(len: i32) -> &'static [u8] {
    // SAFETY: the host wrote the buffer before this call; nothing else runs.
    let query: &[u8; QUERY_CAPACITY] = unsafe { &*QUERY.0.get() };
    &query[NAME_AT..NAME_AT + (len.max(0) as usize).min(NAME_CAPACITY)]
}

struct Tables {
    counts: [u32; TABLES],
    tables: [&'static [u8]; TABLES],
    /// Where the origins section starts.
    end: usize,
}

/// A rule that matched: its table, where in the name its suffix starts,
/// and its entry in the table.
#[derive(Clone, Copy)]
struct Match {
    table: Table,
    start: usize,
    entry: usize,
}

impl Tables {
    fn load() -> Self {
        // SAFETY: the compiler placed the data at DATA_BASE and sized the
        // memory to hold it; the header says how long each table is.
        let header_bytes =
            unsafe { core::slice::from_raw_parts(DATA_BASE as *const u8, DataHeader::LEN) };
        let header = DataHeader::decode(header_bytes).unwrap_or(DataHeader {
            counts: [0; TABLES],
        });
        let mut at = DATA_BASE as usize + DataHeader::LEN;
        let mut tables: [&'static [u8]; TABLES] = [&[]; TABLES];
        for (table, &count) in tables.iter_mut().zip(&header.counts) {
            let len = count as usize * 8;
            // SAFETY: as above.
            *table = unsafe { core::slice::from_raw_parts(at as *const u8, len) };
            at += len;
        }
        Self {
            counts: header.counts,
            tables,
            end: at,
        }
    }

    /// The index of `hash` in `table`, if it is there.
    fn find(&self, table: Table, hash: u64) -> Option<usize> {
        let entries = self.tables[table as usize];
        let (mut low, mut high) = (0usize, entries.len() / 8);
        while low < high {
            let middle = (low + high) / 2;
            let at = middle * 8;
            let mut value = [0u8; 8];
            value.copy_from_slice(&entries[at..at + 8]);
            let value = u64::from_le_bytes(value);
            if value == hash {
                return Some(middle);
            }
            if value < hash {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        None
    }

    /// The suffix table's match for `hash`, else the exact table's (for the
    /// whole name) or the below table's (for a suffix of it).
    fn matching(&self, class: Class, hash: u64, start: usize) -> Option<Match> {
        let found = |table: Table| {
            self.find(table, hash).map(|entry| Match {
                table,
                start,
                entry,
            })
        };
        let narrower = if start == 0 {
            Some(class.exact)
        } else {
            class.below
        };
        found(class.suffix).or_else(|| narrower.and_then(found))
    }

    /// Where entry `entry` of `table` came from.
    fn origin(&self, table: Table, entry: usize) -> Option<&'static [u8]> {
        // SAFETY: the compiler placed the origins section after the tables,
        // within the data; the memory's end bounds what is read of it.
        let bytes = unsafe {
            let memory_end = core::arch::wasm32::memory_size(0) * 65_536;
            core::slice::from_raw_parts(self.end as *const u8, memory_end.saturating_sub(self.end))
        };
        Origins::new(self.counts, bytes).of(table, entry)
    }
}

/// The tables of one kind of rule.
#[derive(Clone, Copy)]
struct Class {
    suffix: Table,
    exact: Table,
    below: Option<Table>,
}

const DENY: Class = Class {
    suffix: Table::DenySuffix,
    exact: Table::DenyExact,
    below: None,
};

const ALLOW: Class = Class {
    suffix: Table::AllowSuffix,
    exact: Table::AllowExact,
    below: Some(Table::AllowBelow),
};

const BLOCK: Class = Class {
    suffix: Table::BlockSuffix,
    exact: Table::BlockExact,
    below: Some(Table::BlockBelow),
};

/// Walks the suffixes of `name` (`com`, `example.com`, `ads.example.com`)
/// and returns the strongest match: deny, then allow, then block.
fn decide(name: &[u8], tables: &Tables) -> (Verdict, Option<Match>) {
    let mut hash = FNV_OFFSET;
    let (mut allowed, mut blocked) = (None, None);
    for index in (0..name.len()).rev() {
        hash = fnv_step(hash, name[index]);
        let at_label_start = index == 0 || name[index - 1] == b'.';
        if !at_label_start {
            continue;
        }
        let deny = tables.matching(DENY, hash, index);
        if deny.is_some() {
            return (Verdict::Block, deny);
        }
        if allowed.is_none() {
            allowed = tables.matching(ALLOW, hash, index);
        }
        if blocked.is_none() && allowed.is_none() {
            blocked = tables.matching(BLOCK, hash, index);
        }
    }
    match (allowed, blocked) {
        (Some(allow), _) => (Verdict::Allow, Some(allow)),
        (None, Some(block)) => (Verdict::Block, Some(block)),
        (None, None) => (Verdict::NoOpinion, None),
    }
}

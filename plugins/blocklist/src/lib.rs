//! The blocklist plugin. Its data (added by Moat's policy compiler at
//! `DATA_BASE`) holds six sorted tables of name hashes; a decision walks the
//! name's suffixes once, from the right, and binary-searches the tables.
//! Precedence: deny > allow > block.
#![no_std]

use moat_plugin_abi::{
    CLIENT_LEN, DATA_BASE, DataHeader, FNV_OFFSET, NAME_CAPACITY, QUERY_CAPACITY, TABLES, Table,
    Verdict, fnv_step,
};

moat_plugin_abi::plugin_glue!();

/// Decides for the `len`-byte name in the query buffer.
#[unsafe(no_mangle)]
pub extern "C" fn moat_decide(len: i32, _qtype: i32) -> i32 {
    // SAFETY: the host wrote the buffer before this call; nothing else runs.
    let query: &[u8; QUERY_CAPACITY] = unsafe { &*QUERY.0.get() };
    let name = &query[CLIENT_LEN..CLIENT_LEN + (len.max(0) as usize).min(NAME_CAPACITY)];
    decide(name, &Tables::load()) as i32
}

struct Tables {
    tables: [&'static [u8]; TABLES],
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
        Self { tables }
    }

    fn contains(&self, table: Table, hash: u64) -> bool {
        let entries = self.tables[table as usize];
        let (mut low, mut high) = (0usize, entries.len() / 8);
        while low < high {
            let middle = (low + high) / 2;
            let at = middle * 8;
            let mut value = [0u8; 8];
            value.copy_from_slice(&entries[at..at + 8]);
            let value = u64::from_le_bytes(value);
            if value == hash {
                return true;
            }
            if value < hash {
                low = middle + 1;
            } else {
                high = middle;
            }
        }
        false
    }
}

/// Walks the suffixes of `name` (`com`, `example.com`, `ads.example.com`)
/// and returns the strongest match: deny, then allow, then block.
fn decide(name: &[u8], tables: &Tables) -> Verdict {
    let mut hash = FNV_OFFSET;
    let (mut allowed, mut blocked) = (false, false);
    for index in (0..name.len()).rev() {
        hash = fnv_step(hash, name[index]);
        let at_label_start = index == 0 || name[index - 1] == b'.';
        if !at_label_start {
            continue;
        }
        let whole = index == 0;
        if tables.contains(Table::DenySuffix, hash)
            || (whole && tables.contains(Table::DenyExact, hash))
        {
            return Verdict::Block;
        }
        allowed |= tables.contains(Table::AllowSuffix, hash)
            || (whole && tables.contains(Table::AllowExact, hash));
        blocked |= tables.contains(Table::BlockSuffix, hash)
            || (whole && tables.contains(Table::BlockExact, hash));
    }
    if allowed {
        Verdict::Allow
    } else if blocked {
        Verdict::Block
    } else {
        Verdict::NoOpinion
    }
}

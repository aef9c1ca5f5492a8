//! The blocklist plugin. Its data (added by Moat's policy compiler at
//! `DATA_BASE`) holds sorted tables of name hashes (`Table`); a decision
//! walks the name's suffixes once, from the right, and binary-searches the
//! tables: the suffix tables at every label, the exact tables for the whole
//! name, the below tables for every shorter suffix.
//! Regex rules (`RegexRules`: serialized sparse DFAs, checked once per
//! instance, then run in place without allocating) are asked after the
//! tables of their kind.
//! Precedence: deny > allow > block > rewrite (a list's name answered with
//! an address, carried as records like local records'). The same walk
//! explains a decision: the deciding rule is the first deny match, else the
//! first allow match (tables, then regexes), else the first block match,
//! shortest suffix first, else the rewrite.
#![no_std]

use core::sync::atomic::{AtomicBool, Ordering};
use moat_plugin_abi::{
    ANSWER_CAPACITY, DATA_BASE, DataHeader, Explanation, FNV_OFFSET, NAME_AT, NAME_CAPACITY,
    Origins, Owner, QUERY_CAPACITY, REGEX_ALLOW, REGEX_INVERT, Records, RegexRule, RegexRules,
    RuleKind, TABLES, Table, Verdict, fnv_step, rewrite_origin, write_answer,
};

use regex_automata::Input;
use regex_automata::dfa::{Automaton, sparse};

moat_plugin_abi::plugin_glue!();

/// Decides for the `len`-byte name in the query buffer.
#[unsafe(no_mangle)]
pub extern "C" fn moat_decide(len: i32, qtype: i32) -> i32 {
    let (verdict, found) = decide(query_name(len), qtype as u16, &Tables::load());
    if let Some(Found::Rewrite(owner)) = found {
        write_answer(owner.records, qtype as u16, answer_buffer());
    }
    verdict as i32
}

/// Writes which rule decides the `len`-byte name in the query buffer into
/// the answer buffer; returns its length, 0 when no rule does.
#[unsafe(no_mangle)]
pub extern "C" fn moat_explain(len: i32, qtype: i32) -> i32 {
    let name = query_name(len);
    let tables = Tables::load();
    let explanation = match decide(name, qtype as u16, &tables).1 {
        None => return 0,
        Some(Found::Table(found)) => Explanation {
            kind: RuleKind::of_table(found.table),
            name: &name[found.start..],
            origin: tables.origin(found.table, found.entry).unwrap_or(b""),
        },
        Some(Found::Rewrite(owner)) => Explanation {
            kind: if owner.start == 0 {
                RuleKind::LocalName
            } else {
                RuleKind::LocalWildcard
            },
            name: &name[owner.start..],
            origin: tables.rewrite_origin(owner.entry).unwrap_or(b""),
        },
        Some(Found::Regex(rule)) => Explanation {
            kind: if rule.flags & REGEX_ALLOW != 0 {
                RuleKind::AllowRegex
            } else {
                RuleKind::BlockRegex
            },
            name: rule.written,
            origin: tables
                .origins()
                .numbered(u32::from(rule.origin))
                .unwrap_or(b""),
        },
    };
    explanation.encode(answer_buffer()) as i32
}

fn answer_buffer() -> &'static mut [u8; ANSWER_CAPACITY] {
    // SAFETY: the host reads the answer buffer after the call; nothing else
    // runs meanwhile, and each call takes this reference once.
    unsafe { &mut *ANSWER.0.get() }
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
    rewrites: Option<Records<'static>>,
    /// Each rewrite entry's origin number.
    rewrite_origins: &'static [u8],
    regexes: RegexRules<'static>,
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

/// What decided: a table's rule, or a rewrite's records.
#[derive(Clone, Copy)]
enum Found {
    Table(Match),
    Rewrite(Owner<'static>),
    Regex(RegexRule<'static>),
}

impl Tables {
    fn load() -> Self {
        // SAFETY: the compiler placed the data at DATA_BASE and sized the
        // memory to hold it; the header says how long each table is.
        let header_bytes =
            unsafe { core::slice::from_raw_parts(DATA_BASE as *const u8, DataHeader::LEN) };
        let header = DataHeader::decode(header_bytes).unwrap_or(DataHeader {
            counts: [0; TABLES],
            rewrites: 0,
            regexes: 0,
        });
        let mut at = DATA_BASE as usize + DataHeader::LEN;
        let mut tables: [&'static [u8]; TABLES] = [&[]; TABLES];
        for (table, &count) in tables.iter_mut().zip(&header.counts) {
            let len = count as usize * 8;
            // SAFETY: as above.
            *table = unsafe { core::slice::from_raw_parts(at as *const u8, len) };
            at += len;
        }
        // SAFETY: as above; the rewrites section follows the tables.
        let section =
            unsafe { core::slice::from_raw_parts(at as *const u8, header.rewrites as usize) };
        let (rewrites, rewrite_origins) = match Records::parse(section) {
            Some((records, origins)) => (Some(records), origins),
            None => (None, &[][..]),
        };
        at += header.rewrites as usize;
        // SAFETY: as above; the regex section follows the rewrites.
        let section =
            unsafe { core::slice::from_raw_parts(at as *const u8, header.regexes as usize) };
        Self {
            counts: header.counts,
            tables,
            rewrites,
            rewrite_origins,
            regexes: RegexRules::new(section),
            end: at + header.regexes as usize,
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
        self.origins().of(table, entry)
    }

    /// Where rewrite entry `entry` came from.
    fn rewrite_origin(&self, entry: usize) -> Option<&'static [u8]> {
        let number = rewrite_origin(self.rewrite_origins, entry)?;
        self.origins().numbered(u32::from(number))
    }

    /// The first regex rule of the kind (`allow` or block) that covers the
    /// question.
    fn regex(&self, name: &[u8], qtype: u16, allow: bool) -> Option<RegexRule<'static>> {
        check_regexes(self.regexes);
        let input = Input::new(name).earliest(true);
        self.regexes.into_iter().find(|rule| {
            (rule.flags & REGEX_ALLOW != 0) == allow
                && rule.covers(qtype)
                && matches(rule, &input) != (rule.flags & REGEX_INVERT != 0)
        })
    }

    fn origins(&self) -> Origins<'static> {
        // SAFETY: the compiler placed the origins section after the tables,
        // within the data; the memory's end bounds what is read of it.
        let bytes = unsafe {
            let memory_end = core::arch::wasm32::memory_size(0) * 65_536;
            core::slice::from_raw_parts(self.end as *const u8, memory_end.saturating_sub(self.end))
        };
        Origins::new(self.counts, bytes)
    }
}

/// Whether the rule's regex matches somewhere in the input.
fn matches(rule: &RegexRule<'_>, input: &Input<'_>) -> bool {
    // SAFETY: `check_regexes` deserialized every DFA of this data with its
    // checks once, in this instance; the data does not change.
    match unsafe { sparse::DFA::from_bytes_unchecked(rule.dfa) } {
        Ok((dfa, _)) => matches!(dfa.try_search_fwd(input), Ok(Some(_))),
        Err(_) => false,
    }
}

/// Deserializes every DFA with its checks, the first time an instance
/// asks; a DFA that fails them traps (a fault the host reports).
fn check_regexes(rules: RegexRules<'_>) {
    static CHECKED: AtomicBool = AtomicBool::new(false);
    if CHECKED.load(Ordering::Relaxed) {
        return;
    }
    for rule in rules {
        if sparse::DFA::from_bytes(rule.dfa).is_err() {
            core::arch::wasm32::unreachable();
        }
    }
    CHECKED.store(true, Ordering::Relaxed);
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
/// and returns the strongest match: deny, then allow, then block (tables,
/// then regexes), then a rewrite.
fn decide(name: &[u8], qtype: u16, tables: &Tables) -> (Verdict, Option<Found>) {
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
            return (Verdict::Block, deny.map(Found::Table));
        }
        if allowed.is_none() {
            allowed = tables.matching(ALLOW, hash, index);
        }
        if blocked.is_none() && allowed.is_none() {
            blocked = tables.matching(BLOCK, hash, index);
        }
    }
    let allowed = allowed
        .map(Found::Table)
        .or_else(|| tables.regex(name, qtype, true).map(Found::Regex));
    if allowed.is_some() {
        return (Verdict::Allow, allowed);
    }
    let blocked = blocked
        .map(Found::Table)
        .or_else(|| tables.regex(name, qtype, false).map(Found::Regex));
    if blocked.is_some() {
        return (Verdict::Block, blocked);
    }
    match tables.rewrites.and_then(|rewrites| rewrites.find(name)) {
        Some(owner) => (Verdict::Answer, Some(Found::Rewrite(owner))),
        None => (Verdict::NoOpinion, None),
    }
}

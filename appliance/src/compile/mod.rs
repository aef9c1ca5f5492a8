//! The policy compiler: turns policy sources (blocklist files, allow and
//! deny lists) into WASM policy modules that carry their data in a data
//! segment.

mod link;
mod parse;
mod records;
mod sources;

use moat_plugin_abi::{DataHeader, TABLES, Table, name_hash};

pub use link::{LinkError, with_data_segment};
pub use parse::{ParsedList, Rule, parse_list};
pub use records::RecordError;
pub(crate) use records::check as check_record;
pub use sources::{
    SourceError, SourceReport, SourceStatus, record_compiled, record_download, source_status,
    store_download,
};

use crate::config::{NameRule, Policy};
use crate::store::DataDir;

/// Why a policy could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// A source could not be read and has no kept copy.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The module could not be built.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// A local record is invalid.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// A compiled policy: the blocklist module and what went into it.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// The blocklist module, data included.
    pub blocklist: Vec<u8>,
    /// The local-records module, data included.
    pub local_records: Vec<u8>,
    /// Totals.
    pub summary: CompileSummary,
    /// Per source.
    pub sources: Vec<SourceReport>,
}

/// Compiles `[policy]`: allow, deny and every blocklist source.
pub fn compile_policy(policy: &Policy, data: &DataDir) -> Result<CompiledPolicy, CompileError> {
    let mut rules = BlocklistRules::default();
    rules.add_config(&policy.allow, &policy.deny);
    let mut reports = Vec::new();
    for source in &policy.blocklists {
        let report = sources::load(source, data, &mut |rule, name| {
            let table = match rule {
                Rule::Block => Table::BlockSuffix,
                Rule::Allow => Table::AllowSuffix,
            };
            rules.insert(table, name.as_bytes());
        })?;
        reports.push(report);
    }
    let (blocklist, summary) = rules.compile()?;
    let records = records::encode(&policy.local_records, policy.local_ptr)?;
    let local_records = with_data_segment(LOCAL_RECORDS_TEMPLATE, &records)?;
    Ok(CompiledPolicy {
        blocklist,
        local_records,
        summary,
        sources: reports,
    })
}

/// A digest of everything a compiled policy depends on: this build of the
/// compiler and plugins, the rules in the configuration, and the bytes of
/// every source. Equal digests compile to equal modules, so modules kept
/// from an earlier run can be used without compiling again.
pub fn inputs_digest(policy: &Policy, data: &DataDir) -> [u8; 32] {
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut add = |bytes: &[u8]| {
        digest.update(&(bytes.len() as u64).to_be_bytes());
        digest.update(bytes);
    };
    add(env!("CARGO_PKG_VERSION").as_bytes());
    add(BLOCKLIST_TEMPLATE);
    add(LOCAL_RECORDS_TEMPLATE);
    let rules = serde_json::json!([
        policy.allow,
        policy.deny,
        policy.blocklists,
        policy.local_records,
        policy.local_ptr
    ]);
    add(rules.to_string().as_bytes());
    for source in &policy.blocklists {
        match sources::current_bytes(source, data) {
            Some(bytes) => add(&bytes),
            None => add(b"\0missing"),
        }
    }
    let mut out = [0; 32];
    out.copy_from_slice(digest.finish().as_ref());
    out
}

/// The blocklist plugin as built from `plugins/blocklist`, without data.
pub const BLOCKLIST_TEMPLATE: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/moat_blocklist.wasm"));

/// The local-records plugin as built from `plugins/local-records`, without data.
pub const LOCAL_RECORDS_TEMPLATE: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/moat_local_records.wasm"));

/// Rules gathered from every source, by table: name hashes, sorted and
/// deduplicated once at the end (8 bytes per rule while compiling).
#[derive(Debug, Default)]
struct BlocklistRules {
    tables: [Vec<u64>; TABLES],
}

/// What the compiler did, for people.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CompileSummary {
    /// Distinct entries per table, in `Table` order.
    pub entries: [usize; TABLES],
    /// Rules seen more than once.
    pub duplicates: usize,
    /// Bytes of the module, data included.
    pub module_bytes: usize,
}

impl BlocklistRules {
    /// Adds the configured allow and deny rules.
    fn add_config(&mut self, allow: &[NameRule], deny: &[NameRule]) {
        for (rules, exact, suffix) in [
            (deny, Table::DenyExact, Table::DenySuffix),
            (allow, Table::AllowExact, Table::AllowSuffix),
        ] {
            for rule in rules {
                let table = if rule.subdomains { suffix } else { exact };
                self.insert(table, rule.name.as_bytes());
            }
        }
    }

    fn insert(&mut self, table: Table, name: &[u8]) {
        self.tables[table as usize].push(name_hash(name));
    }

    /// Sorts and deduplicates every table; returns how many repeats went.
    fn settle(&mut self) -> usize {
        let mut removed = 0;
        for table in &mut self.tables {
            let before = table.len();
            table.sort_unstable();
            table.dedup();
            table.shrink_to_fit();
            removed += before - table.len();
        }
        removed
    }

    /// The data segment contents: header, then each table sorted.
    fn encode(&self) -> Vec<u8> {
        let counts = self.tables.each_ref().map(|table| table.len() as u32);
        let total: usize = self.tables.iter().map(Vec::len).sum();
        let mut data = Vec::with_capacity(DataHeader::LEN + total * 8);
        data.extend_from_slice(&DataHeader { counts }.encode());
        for table in &self.tables {
            for hash in table {
                data.extend_from_slice(&hash.to_le_bytes());
            }
        }
        data
    }

    /// Builds the blocklist module with these rules as its data.
    fn compile(mut self) -> Result<(Vec<u8>, CompileSummary), LinkError> {
        let duplicates = self.settle();
        let module = with_data_segment(BLOCKLIST_TEMPLATE, &self.encode())?;
        let summary = CompileSummary {
            entries: self.tables.each_ref().map(Vec::len),
            duplicates,
            module_bytes: module.len(),
        };
        Ok((module, summary))
    }
}

/// Which rule decided a name, for `moat policy test`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Explanation {
    /// The rule's table (`deny`, `allow`, `block`) and kind (exact, suffix).
    pub table: String,
    /// The rule as it matched (`*.ads.example`, `ads.example`).
    pub rule: String,
    /// Where it came from: `policy.deny`, `policy.allow`, or a source path.
    pub origin: String,
}

/// Finds the rule that decides `name`, by the plugin's precedence (deny,
/// then allow, then block). Reads the sources again: for people, not the
/// query path.
pub fn explain(
    policy: &Policy,
    data: &DataDir,
    name: &str,
) -> Result<Option<Explanation>, CompileError> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let mut rules: Vec<(Table, String, String)> = Vec::new();
    for (list, exact, suffix, origin) in [
        (
            &policy.deny,
            Table::DenyExact,
            Table::DenySuffix,
            "policy.deny",
        ),
        (
            &policy.allow,
            Table::AllowExact,
            Table::AllowSuffix,
            "policy.allow",
        ),
    ] {
        for rule in list {
            let table = if rule.subdomains { suffix } else { exact };
            rules.push((table, rule.name.clone(), origin.to_owned()));
        }
    }
    let matches = |table: Table, rule: &str| match table {
        Table::DenyExact | Table::AllowExact | Table::BlockExact => name == rule,
        _ => name == rule || name.ends_with(&format!(".{rule}")),
    };
    for source in &policy.blocklists {
        let origin = source.source.to_string();
        sources::load(source, data, &mut |kind, rule| {
            let table = match kind {
                Rule::Block => Table::BlockSuffix,
                Rule::Allow => Table::AllowSuffix,
            };
            if matches(table, rule) {
                rules.push((table, rule.to_owned(), origin.clone()));
            }
        })?;
    }
    let precedence = |table: Table| table as usize / 2;
    let best = rules
        .into_iter()
        .filter(|(table, rule, _)| matches(*table, rule))
        .min_by_key(|(table, _, _)| precedence(*table));
    Ok(best.map(|(table, rule, origin)| {
        let suffix = matches!(
            table,
            Table::DenySuffix | Table::AllowSuffix | Table::BlockSuffix
        );
        Explanation {
            table: format!("{table:?}"),
            rule: if suffix { format!("*.{rule}") } else { rule },
            origin,
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::policy::{Decision, Policy, Question, WasmPolicy};

    /// A million-domain hosts file compiles, loads, and decides correctly.
    #[test]
    fn a_million_domains() {
        let root = std::env::temp_dir().join(format!("moat-million-{}", std::process::id()));
        let data = DataDir::open(&root).unwrap();
        let list = root.join("hosts.txt");
        let mut text = String::with_capacity(30_000_000);
        for index in 0..1_000_000u32 {
            text.push_str(&format!(
                "0.0.0.0 d{index}.tracker{}.example\n",
                index % 977
            ));
        }
        std::fs::write(&list, &text).unwrap();
        let config = Config::parse(
            &format!("[[policy.blocklists]]\nsource = \"{}\"\n", list.display()),
            "test",
        )
        .unwrap();
        let started = crate::clock::now();
        let compiled = compile_policy(&config.policy, &data).unwrap();
        let took = crate::clock::now() - started;
        assert_eq!(
            compiled.summary.entries[Table::BlockSuffix as usize],
            1_000_000
        );
        let bytes_per_domain = compiled.blocklist.len() as f64 / 1e6;
        assert!(
            bytes_per_domain < 9.0,
            "{bytes_per_domain} bytes per domain"
        );
        let policy = WasmPolicy::new(&compiled.blocklist).unwrap();
        let ask = |name: &str| {
            policy.decide(&Question {
                name: name.as_bytes(),
                qtype: 1,
                client: [127, 0, 0, 1].into(),
            })
        };
        assert_eq!(
            ask(&format!("d999999.tracker{}.example", 999_999 % 977)),
            Decision::Block
        );
        assert_eq!(
            ask(&format!("x.d12345.tracker{}.example", 12_345 % 977)),
            Decision::Block
        );
        assert_eq!(ask("d12345.tracker1.example"), Decision::NoOpinion);
        assert_eq!(ask("d1000000.tracker0.example"), Decision::NoOpinion);
        eprintln!(
            "1M domains: compiled in {took:?}, {} module bytes",
            compiled.blocklist.len()
        );
        std::fs::remove_dir_all(root).unwrap();
    }
}

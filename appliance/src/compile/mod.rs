//! The policy compiler: turns policy sources (blocklist files, allow and
//! deny lists) into WASM policy modules that carry their data in a data
//! segment.

mod link;
mod parse;
mod plugins;
mod records;
mod regex;
mod sources;

use moat_plugin_abi::{
    DataHeader, ORIGIN_CAPACITY, RuleKind, TABLES, Table, name_hash, packed_len,
};

pub(crate) use link::{LinkError, with_data_segment};
use parse::{Action, Invalid, Listed, Rule, Scope};
pub use plugins::{PluginRefused, check_plugin, with_config};
use records::Owners;
use regex::{RegexRefused, RegexSet};
pub use sources::source_dirs;
pub(crate) use sources::{
    SourceError, SourceReport, SourceStatus, record_compiled, record_download, source_status,
    store_download,
};

use crate::config::{NameRule, PluginName, Policy};
use crate::policy::Explanation;
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
    /// A configured plugin was refused.
    #[error(transparent)]
    Plugin(#[from] PluginRefused),
}

/// A compiled policy: the blocklist module and what went into it.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    /// The blocklist module, data included.
    pub blocklist: Vec<u8>,
    /// The local-records module, data included.
    pub local_records: Vec<u8>,
    /// Each configured plugin's module, its configuration included, in
    /// the order of `[[policy.plugins]]`.
    pub plugins: Vec<(PluginName, Vec<u8>)>,
    /// Totals.
    pub summary: CompileSummary,
    /// Per source.
    pub sources: Vec<SourceReport>,
}

/// Compiles `[policy]`: allow, deny and every blocklist source.
pub fn compile_policy(policy: &Policy, data: &DataDir) -> Result<CompiledPolicy, CompileError> {
    let mut rules = BlocklistRules::default();
    rules.add_config(&policy.allow, &policy.deny);
    let ttl = u32::try_from(policy.blocked_ttl.as_secs()).unwrap_or(u32::MAX);
    let mut reports = Vec::new();
    for source in &policy.blocklists {
        let name = source.source.to_string();
        let origin = rules.origin(&name);
        let report = sources::load(source, data, &mut |listed, line| {
            match listed {
            Listed::Name(rule, listed) => {
                rules.add(rule, listed, origin, ttl);
                Ok(())
            }
            Listed::Regex(rule) => rules.regexes.add(rule, origin).map_err(|err| {
                tracing::warn!(source = %name, line, rule = %rule.written, error = %err, "regex rule refused");
                match err {
                    RegexRefused::Syntax(_) => Invalid::BadRegex,
                    RegexRefused::TooBig { .. } => Invalid::RegexTooBig,
                }
            }),
        }
        })?;
        reports.push(report);
    }
    let (blocklist, summary) = rules.compile()?;
    let records = records::encode(&policy.local_records, policy.local_ptr);
    let local_records = with_data_segment(LOCAL_RECORDS_TEMPLATE, &records)?;
    let plugins = policy
        .plugins
        .iter()
        .map(|spec| Ok((spec.name, plugins::build(spec, data)?)))
        .collect::<Result<_, PluginRefused>>()?;
    Ok(CompiledPolicy {
        blocklist,
        local_records,
        plugins,
        summary,
        sources: reports,
    })
}

/// The table a list's block or exception rule goes into.
fn table_of(action: Action, scope: Scope) -> Option<Table> {
    Some(match (action, scope) {
        (Action::Block, Scope::Exact) => Table::BlockExact,
        (Action::Block, Scope::Subtree) => Table::BlockSuffix,
        (Action::Block, Scope::Below) => Table::BlockBelow,
        (Action::Allow, Scope::Exact) => Table::AllowExact,
        (Action::Allow, Scope::Subtree) => Table::AllowSuffix,
        (Action::Allow, Scope::Below) => Table::AllowBelow,
        (Action::Answer(_), _) => return None,
    })
}

/// The line (from 1) of the blocklist source an explanation names that
/// gives its rule, read again from the source's current copy (the first
/// such line, as the compiler keeps the first of equal rules). `None` for
/// a rule of the configuration or of a plugin, or one the source no
/// longer has. For people: it reads the whole source.
pub fn rule_line(policy: &Policy, data: &DataDir, explanation: &Explanation) -> Option<usize> {
    let source = policy
        .blocklists
        .iter()
        .find(|source| cut_origin(&source.source.to_string()) == explanation.origin)?;
    let bytes = sources::current_bytes(source, data)?;
    let mut found = None;
    let wanted = (explanation.kind, explanation.pattern.as_str());
    parse::parse_list(
        &String::from_utf8_lossy(&bytes),
        source.format,
        source.matching,
        &mut |listed, line| {
            if found.is_none()
                && explains(listed)
                    .iter()
                    .any(|(kind, pattern)| (*kind, pattern.as_str()) == wanted)
            {
                found = Some(line);
            }
            Ok(())
        },
    );
    found
}

/// How the blocklist plugin explains the questions a listed rule decides:
/// its kind and pattern, per kind of name it covers.
fn explains(listed: Listed<'_>) -> Vec<(RuleKind, String)> {
    let below = |name: &str| format!("*.{name}");
    match listed {
        Listed::Regex(rule) => {
            let kind = match rule.action {
                Action::Allow => RuleKind::AllowRegex,
                _ => RuleKind::BlockRegex,
            };
            vec![(kind, rule.written.clone())]
        }
        Listed::Name(
            Rule {
                action: Action::Answer(_),
                scope,
            },
            name,
        ) => {
            let exact = (RuleKind::LocalName, name.to_owned());
            let wildcard = (RuleKind::LocalWildcard, below(name));
            match scope {
                Scope::Exact => vec![exact],
                Scope::Subtree => vec![exact, wildcard],
                Scope::Below => vec![wildcard],
            }
        }
        Listed::Name(rule, name) => table_of(rule.action, rule.scope)
            .map(RuleKind::of_table)
            .map(|kind| {
                let pattern = if kind.is_suffix() {
                    below(name)
                } else {
                    name.to_owned()
                };
                (kind, pattern)
            })
            .into_iter()
            .collect(),
    }
}

/// A digest of everything a compiled policy depends on: this build of the
/// compiler and plugins, the rules in the configuration, and the bytes of
/// every source. Equal digests compile to equal modules, so modules kept
/// from an earlier run can be used without compiling again.
pub(crate) fn inputs_digest(policy: &Policy, data: &DataDir) -> [u8; 32] {
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
        policy.local_ptr,
        policy.plugins
    ]);
    add(rules.to_string().as_bytes());
    for spec in &policy.plugins {
        match plugins::read_module(spec, data) {
            Ok(bytes) => add(&bytes),
            Err(_) => add(b"\0missing"),
        }
    }
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
pub(crate) const BLOCKLIST_TEMPLATE: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/moat_blocklist.wasm"));

/// The example schedule plugin as built from `plugins/examples/schedule`:
/// for tests, benchmarks and people who want a module to start from.
pub const SCHEDULE_EXAMPLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/moat_schedule.wasm"));

/// The example kiosk plugin as built from `plugins/examples/kiosk`: for
/// tests, benchmarks and people who want a module to start from.
pub const KIOSK_EXAMPLE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/moat_kiosk.wasm"));

/// The local-records plugin as built from `plugins/local-records`, without data.
pub(crate) const LOCAL_RECORDS_TEMPLATE: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/moat_local_records.wasm"));

/// Most bytes the DFAs of all regex rules may take (8 MiB).
const REGEX_LIMIT: usize = 8 << 20;

/// Rules gathered from every source, by table: name hashes and where each
/// came from, sorted and deduplicated once at the end (16 bytes per rule
/// while compiling). A rule in several origins keeps the first.
#[derive(Debug)]
struct BlocklistRules {
    tables: [Vec<(u64, u16)>; TABLES],
    /// Names lists answer with an address, as records.
    rewrites: Owners,
    /// Regex rules, compiled.
    regexes: RegexSet,
    /// `policy.deny`, `policy.allow`, then each source, as people read them.
    origins: Vec<String>,
}

/// An origin cut to what an explanation carries.
fn cut_origin(origin: &str) -> &str {
    let mut end = origin.len().min(ORIGIN_CAPACITY);
    while !origin.is_char_boundary(end) {
        end -= 1;
    }
    &origin[..end]
}

/// What the compiler did, for people.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CompileSummary {
    /// Distinct entries per table, in `Table` order.
    pub entries: [usize; TABLES],
    /// Names (and `*.` suffixes) answered with an address by a list.
    pub rewrites: usize,
    /// Regex rules compiled.
    pub regexes: usize,
    /// Rules seen more than once.
    pub duplicates: usize,
    /// Bytes of the module, data included.
    pub module_bytes: usize,
}

impl Default for BlocklistRules {
    fn default() -> Self {
        Self {
            tables: Default::default(),
            rewrites: Owners::default(),
            regexes: RegexSet::new(REGEX_LIMIT),
            origins: Vec::new(),
        }
    }
}

impl BlocklistRules {
    /// Adds the configured allow and deny rules.
    fn add_config(&mut self, allow: &[NameRule], deny: &[NameRule]) {
        for (rules, exact, suffix, origin) in [
            (deny, Table::DenyExact, Table::DenySuffix, "policy.deny"),
            (allow, Table::AllowExact, Table::AllowSuffix, "policy.allow"),
        ] {
            let origin = self.origin(origin);
            for rule in rules {
                let table = if rule.subdomains { suffix } else { exact };
                self.insert(table, rule.name.as_bytes(), origin);
            }
        }
    }

    /// Registers an origin (cut to what an explanation carries); gives its index.
    fn origin(&mut self, origin: &str) -> u16 {
        self.origins.push(cut_origin(origin).to_owned());
        u16::try_from(self.origins.len() - 1).unwrap_or(u16::MAX)
    }

    /// Adds a list's rule for `name` from `origin`; a rewrite answers with
    /// records of `ttl` seconds.
    fn add(&mut self, rule: Rule, name: &str, origin: u16, ttl: u32) {
        let Action::Answer(address) = rule.action else {
            if let Some(table) = table_of(rule.action, rule.scope) {
                self.insert(table, name.as_bytes(), origin);
            }
            return;
        };
        let (kind, ttl, rdata) = records::address_record(&address, ttl);
        let owners = match rule.scope {
            Scope::Exact => &[false][..],
            Scope::Subtree => &[false, true],
            Scope::Below => &[true],
        };
        for &wildcard in owners {
            self.rewrites
                .push(name, wildcard, (kind, ttl, &rdata), origin);
        }
    }

    fn insert(&mut self, table: Table, name: &[u8], origin: u16) {
        self.tables[table as usize].push((name_hash(name), origin));
    }

    /// Sorts and deduplicates every table; returns how many repeats went.
    fn settle(&mut self) -> usize {
        let mut removed = 0;
        for table in &mut self.tables {
            let before = table.len();
            // Equal hashes sort by origin: the first origin's entry stays.
            table.sort_unstable();
            table.dedup_by_key(|(hash, _)| *hash);
            table.shrink_to_fit();
            removed += before - table.len();
        }
        removed
    }

    /// The data segment contents (layout in `moat_plugin_abi::DataHeader`):
    /// header, each table sorted, the rewrites, then the origins.
    fn encode(&self) -> Vec<u8> {
        let counts = self.tables.each_ref().map(|table| table.len() as u32);
        let total: usize = self.tables.iter().map(Vec::len).sum();
        let (mut rewrites, origins) = self.rewrites.encode();
        for origin in origins {
            rewrites.extend_from_slice(&origin.to_le_bytes());
        }
        let regexes = self.regexes.encode();
        let mut data =
            Vec::with_capacity(DataHeader::LEN + total * 8 + rewrites.len() + regexes.len());
        let header = DataHeader {
            counts,
            rewrites: rewrites.len() as u32,
            regexes: regexes.len() as u32,
        };
        data.extend_from_slice(&header.encode());
        for table in &self.tables {
            for (hash, _) in table {
                data.extend_from_slice(&hash.to_le_bytes());
            }
        }
        data.extend_from_slice(&rewrites);
        data.extend_from_slice(&regexes);
        self.encode_origins(&mut data);
        data
    }

    /// Per table the origin base and bits, the packed origins, then the
    /// origin names.
    fn encode_origins(&self, data: &mut Vec<u8>) {
        let ranges = self.tables.each_ref().map(|table| {
            let origins = table.iter().map(|&(_, origin)| origin);
            let base = origins.clone().min().unwrap_or(0);
            let spread = origins.max().unwrap_or(0) - base;
            (base, u16::BITS - spread.leading_zeros())
        });
        for (base, bits) in ranges {
            data.extend_from_slice(&base.to_le_bytes());
            data.push(bits as u8);
        }
        for (table, (base, bits)) in self.tables.iter().zip(ranges) {
            let start = data.len();
            data.resize(start + packed_len(table.len() as u32, bits), 0);
            for (entry, &(_, origin)) in table.iter().enumerate() {
                let value = origin - base;
                for bit in 0..bits {
                    if (value >> bit) & 1 == 1 {
                        let position = entry * bits as usize + bit as usize;
                        data[start + position / 8] |= 1 << (position % 8);
                    }
                }
            }
        }
        data.extend_from_slice(&(self.origins.len() as u16).to_le_bytes());
        for origin in &self.origins {
            data.extend_from_slice(&(origin.len() as u16).to_le_bytes());
            data.extend_from_slice(origin.as_bytes());
        }
    }

    /// Builds the blocklist module with these rules as its data.
    fn compile(mut self) -> Result<(Vec<u8>, CompileSummary), LinkError> {
        let duplicates = self.settle();
        let module = with_data_segment(BLOCKLIST_TEMPLATE, &self.encode())?;
        let summary = CompileSummary {
            entries: self.tables.each_ref().map(Vec::len),
            rewrites: self.rewrites.len(),
            regexes: self.regexes.len(),
            duplicates,
            module_bytes: module.len(),
        };
        Ok((module, summary))
    }
}

#[cfg(test)]
mod syntax_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::policy::{Decision, Policy, PolicyEngine, Question, WasmPolicy};

    /// A million-domain hosts file compiles, loads, and decides correctly:
    /// each name exactly, as hosts lines mean.
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
            compiled.summary.entries[Table::BlockExact as usize],
            1_000_000
        );
        let bytes_per_domain = compiled.blocklist.len() as f64 / 1e6;
        assert!(
            bytes_per_domain < 9.0,
            "{bytes_per_domain} bytes per domain"
        );
        let engine = PolicyEngine::unticked().unwrap();
        let policy = WasmPolicy::new(&engine, &compiled.blocklist).unwrap();
        let ask = |name: &str| {
            policy.decide(&Question {
                name: name.as_bytes(),
                qtype: 1,
                client: [127, 0, 0, 1].into(),
                unix_time: 0,
            })
        };
        assert_eq!(
            ask(&format!("d999999.tracker{}.example", 999_999 % 977)),
            Decision::Block
        );
        assert_eq!(
            ask(&format!("d12345.tracker{}.example", 12_345 % 977)),
            Decision::Block
        );
        assert_eq!(
            ask(&format!("x.d12345.tracker{}.example", 12_345 % 977)),
            Decision::NoOpinion,
            "a hosts line does not cover the names below"
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

//! Regex rules: Pi-hole regex list lines (POSIX ERE as Pi-hole reads it,
//! with its `;querytype=` and `;invert` options) and AdGuard `/regex/`
//! rules, read into [`RegexRule`]s; compiled into sparse DFAs
//! (`regex-automata`) that the blocklist plugin runs in place, without
//! allocating (layout in `moat_plugin_abi::RegexRules`).

use moat_plugin_abi::{REGEX_ALLOW, REGEX_EXCEPT_TYPES, REGEX_INVERT, REGEX_MAX_TYPES};
use regex_automata::dfa::{StartKind, dense};
use regex_automata::nfa::thompson;
use regex_automata::util::syntax;

use super::parse::{Action, Invalid, Unsupported};

/// A regex rule as a list gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RegexRule {
    /// Block, or except from blocking.
    pub action: Action,
    /// The rule as written, for people (`/^ad[0-9]+\./`).
    pub written: String,
    /// The regex in `regex-automata` syntax.
    pub pattern: String,
    /// The rule covers the names the regex does not match (`;invert`).
    pub invert: bool,
    /// Which query types it covers.
    pub types: QueryTypes,
}

/// The query types a regex rule covers (Pi-hole's `;querytype=`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct QueryTypes {
    /// The listed types are the ones not covered (`;querytype=!A`).
    pub except: bool,
    /// The listed types; none listed means every type.
    pub listed: Vec<u16>,
}

/// A Pi-hole regex list line: `REGEX[;querytype=[!]T[,T...]][;invert]`.
/// The regex is matched anywhere in the name, case aside, as Pi-hole's
/// `regexec` does.
pub(super) fn pihole_line(line: &str) -> Result<RegexRule, Why> {
    let mut parts = line.split(';');
    let regex = parts.next().unwrap_or("");
    let mut rule = RegexRule {
        action: Action::Block,
        written: line.to_owned(),
        pattern: translate_posix(regex)?,
        invert: false,
        types: QueryTypes::default(),
    };
    for option in parts {
        match option.split_once('=') {
            None if option == "invert" => rule.invert = true,
            Some(("querytype", types)) => rule.types = query_types(types)?,
            Some(("reply", _)) => return Err(Why::Unsupported(Unsupported::Reply)),
            _ => return Err(Why::Invalid(Invalid::BadRegex)),
        }
    }
    Ok(rule)
}

/// An AdGuard `/regex/` rule's regex (between the slashes), already
/// without its `@@` and modifiers.
pub(super) fn adguard_rule(action: Action, written: &str, regex: &str) -> RegexRule {
    RegexRule {
        action,
        written: written.to_owned(),
        pattern: regex.to_owned(),
        invert: false,
        types: QueryTypes::default(),
    }
}

/// Why a regex line is not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Why {
    Invalid(Invalid),
    Unsupported(Unsupported),
}

/// `A`, `!AAAA`, `A,AAAA`: the types by name, as Pi-hole writes them.
fn query_types(text: &str) -> Result<QueryTypes, Why> {
    let (except, text) = match text.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let listed = text
        .split(',')
        .map(|name| type_code(name.trim()).ok_or(Why::Invalid(Invalid::BadRegex)))
        .collect::<Result<Vec<_>, _>>()?;
    if listed.is_empty() || listed.len() > REGEX_MAX_TYPES {
        return Err(Why::Invalid(Invalid::BadRegex));
    }
    Ok(QueryTypes { except, listed })
}

fn type_code(name: &str) -> Option<u16> {
    Some(match name.to_ascii_uppercase().as_str() {
        "A" => 1,
        "NS" => 2,
        "CNAME" => 5,
        "SOA" => 6,
        "PTR" => 12,
        "MX" => 15,
        "TXT" => 16,
        "AAAA" => 28,
        "SRV" => 33,
        "NAPTR" => 35,
        "DS" => 43,
        "RRSIG" => 46,
        "DNSKEY" => 48,
        "SVCB" => 64,
        "HTTPS" => 65,
        "ANY" => 255,
        _ => return None,
    })
}

/// A POSIX extended regex in `regex-automata` syntax. Outside brackets the
/// two agree (escapes such as `\.` and `\w` included); inside a bracket
/// expression POSIX takes `\`, `[`, `&`, `~` and a second `-` literally
/// where `regex-automata` gives them meaning, so they are escaped; the
/// classes `[:digit:]`, `[:space:]`... are kept, as both read them.
/// Collating elements and equivalence classes (`[.a.]`, `[=a=]`) are
/// refused.
fn translate_posix(ere: &str) -> Result<String, Why> {
    let mut out = String::with_capacity(ere.len() + 8);
    let mut chars = ere.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                out.push('\\');
                out.push(chars.next().ok_or(Why::Invalid(Invalid::BadRegex))?);
            }
            '[' => {
                out.push('[');
                if chars.next_if_eq(&'^').is_some() {
                    out.push('^');
                }
                if chars.next_if_eq(&']').is_some() {
                    out.push_str("\\]");
                }
                bracket(&mut chars, &mut out)?;
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// The rest of a bracket expression, up to and with its `]`.
fn bracket(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    out: &mut String,
) -> Result<(), Why> {
    let mut previous = '[';
    while let Some(c) = chars.next() {
        match c {
            ']' => {
                out.push(']');
                return Ok(());
            }
            '[' => match chars.peek() {
                Some(':') => {
                    out.push_str("[:");
                    chars.next();
                    loop {
                        let c = chars.next().ok_or(Why::Invalid(Invalid::BadRegex))?;
                        out.push(c);
                        if c == ']' && out.ends_with(":]") {
                            break;
                        }
                    }
                }
                Some('.' | '=') => return Err(Why::Unsupported(Unsupported::Collating)),
                _ => out.push_str("\\["),
            },
            '\\' | '&' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '-' if previous == '-' => out.push_str("\\-"),
            c => out.push(c),
        }
        previous = c;
    }
    Err(Why::Invalid(Invalid::BadRegex))
}

/// The regex rules of a policy, each compiled, within a cap on their
/// total DFA bytes.
#[derive(Debug)]
pub(super) struct RegexSet {
    /// Encoded entries (see `moat_plugin_abi::RegexRules`).
    entries: Vec<u8>,
    count: u32,
    /// Bytes the DFAs may take in all.
    limit: usize,
    /// Bytes they may still take.
    room: usize,
}

/// Why a regex rule was not compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RegexRefused {
    /// Not a regex `regex-automata` reads.
    #[error("regex not understood: {0}")]
    Syntax(String),
    /// Its DFA would pass what is left of the cap.
    #[error("regex too big: its automaton passes the {limit}-byte cap on all regex rules")]
    TooBig {
        /// The cap.
        limit: usize,
    },
}

impl RegexSet {
    /// An empty set whose DFAs may take `limit` bytes in all.
    pub(super) fn new(limit: usize) -> Self {
        Self {
            entries: Vec::new(),
            count: 0,
            limit,
            room: limit,
        }
    }

    /// Compiles `rule` from `origin` into the set, or says why not.
    pub(super) fn add(&mut self, rule: &RegexRule, origin: u16) -> Result<(), RegexRefused> {
        let dfa = compile_dfa(&rule.pattern, self.room, self.limit)?;
        self.room -= dfa.len();
        let mut flags = 0;
        if rule.action == Action::Allow {
            flags |= REGEX_ALLOW;
        }
        if rule.invert {
            flags |= REGEX_INVERT;
        }
        if rule.types.except {
            flags |= REGEX_EXCEPT_TYPES;
        }
        let written = &rule.written.as_bytes()[..rule.written.len().min(usize::from(u16::MAX))];
        let entries = &mut self.entries;
        entries.push(flags);
        entries.push(rule.types.listed.len() as u8);
        entries.extend_from_slice(&origin.to_le_bytes());
        for kind in &rule.types.listed {
            entries.extend_from_slice(&kind.to_le_bytes());
        }
        entries.extend_from_slice(&(written.len() as u16).to_le_bytes());
        entries.extend_from_slice(written);
        entries.extend_from_slice(&(dfa.len() as u32).to_le_bytes());
        entries.extend_from_slice(&dfa);
        self.count += 1;
        Ok(())
    }

    /// Rules compiled.
    pub(super) fn len(&self) -> usize {
        self.count as usize
    }

    /// The section: the count, then the entries.
    pub(super) fn encode(&self) -> Vec<u8> {
        let mut section = Vec::with_capacity(4 + self.entries.len());
        section.extend_from_slice(&self.count.to_le_bytes());
        section.extend_from_slice(&self.entries);
        section
    }
}

/// The serialized (little-endian) sparse DFA of `pattern`, unanchored and
/// case-insensitive over bytes, at most `room` bytes; `limit` is the
/// whole cap, for the refusal. Building stops once it passes the room.
fn compile_dfa(pattern: &str, room: usize, limit: usize) -> Result<Vec<u8>, RegexRefused> {
    let syntax = syntax::Config::new()
        .unicode(false)
        .utf8(false)
        .case_insensitive(true)
        .nest_limit(64);
    syntax::parse_with(pattern, &syntax).map_err(|err| RegexRefused::Syntax(err.to_string()))?;
    let too_big = |_| RegexRefused::TooBig { limit };
    // The dense DFA is a few times its sparse form.
    let work = room.saturating_mul(4).max(1 << 16);
    let dense = dense::Builder::new()
        .syntax(syntax)
        .thompson(
            thompson::Config::new()
                .utf8(false)
                .nfa_size_limit(Some(work)),
        )
        .configure(
            dense::Config::new()
                .start_kind(StartKind::Unanchored)
                .dfa_size_limit(Some(work))
                .determinize_size_limit(Some(work)),
        )
        .build(pattern)
        .map_err(too_big)?;
    let bytes = dense.to_sparse().map_err(too_big)?.to_bytes_little_endian();
    if bytes.len() > room {
        return Err(RegexRefused::TooBig { limit });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posix_brackets_become_regex_automata_classes() {
        for (ere, want) in [
            ("^ad[[:digit:]]+\\.", "^ad[[:digit:]]+\\."),
            ("[[:space:]x]", "[[:space:]x]"),
            ("[\\.]", "[\\\\.]"),
            ("[]a]", "[\\]a]"),
            ("[^]a]", "[^\\]a]"),
            ("[a&&b~~c]", "[a\\&\\&b\\~\\~c]"),
            ("[a[b]", "[a\\[b]"),
            ("(\\.|^)ads?\\.", "(\\.|^)ads?\\."),
        ] {
            assert_eq!(translate_posix(ere), Ok(want.to_owned()), "{ere}");
        }
        assert_eq!(
            translate_posix("[[.a.]]"),
            Err(Why::Unsupported(Unsupported::Collating))
        );
        assert_eq!(
            translate_posix("[abc"),
            Err(Why::Invalid(Invalid::BadRegex))
        );
    }

    #[test]
    fn pihole_options() {
        let rule = pihole_line("^ads\\.;querytype=!A,AAAA;invert").unwrap();
        assert_eq!(rule.pattern, "^ads\\.");
        assert!(rule.invert);
        assert_eq!(
            rule.types,
            QueryTypes {
                except: true,
                listed: vec![1, 28]
            }
        );
        assert_eq!(
            pihole_line("x;querytype=BOGUS"),
            Err(Why::Invalid(Invalid::BadRegex))
        );
        assert_eq!(
            pihole_line("x;reply=nxdomain"),
            Err(Why::Unsupported(Unsupported::Reply))
        );
    }

    #[test]
    fn the_cap_refuses_a_rule_whose_automaton_is_too_big() {
        let mut set = RegexSet::new(64 << 10);
        let small = pihole_line("^ad[[:digit:]]+\\.").unwrap();
        set.add(&small, 0).unwrap();
        let huge = pihole_line("(a|b)*a(a|b){20}$").unwrap();
        let started = crate::clock::now();
        assert_eq!(
            set.add(&huge, 0),
            Err(RegexRefused::TooBig { limit: 64 << 10 })
        );
        assert!(
            crate::clock::now() - started < std::time::Duration::from_secs(5),
            "the cap bounds the work too"
        );
        assert_eq!(set.len(), 1);
        assert!(matches!(
            set.add(&adguard_rule(Action::Block, "/(/", "("), 0),
            Err(RegexRefused::Syntax(_))
        ));
    }
}

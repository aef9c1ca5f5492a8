//! Reading blocklist sources in the syntaxes AdGuard Home reads, with its
//! meaning for each: hosts lines, plain domain lines, Adblock-style DNS
//! rules (`/regex/` ones included) and dnsmasq lines; and Pi-hole regex
//! lists (`regex.rs`). Each line is read by its shape; a source's
//! format is detected from the shapes of its lines, or configured, and then
//! lines of a shape the format does not take are rejected. Lines that
//! cannot be used are counted by reason, with the first such line; never
//! fatal, never dropped unsaid.

use std::net::IpAddr;

use crate::config::{ListFormat, ListMatch};

use super::regex::{self, RegexRule};

/// A rule a list gives: what it does, to which names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    /// Block, or except from blocking.
    pub action: Action,
    /// The names it covers.
    pub scope: Scope,
}

/// What a list rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Action {
    /// Block the names.
    Block,
    /// An exception (`@@`): never block the names.
    Allow,
    /// Answer the names with this address (a hosts or dnsmasq line with
    /// an address other than a null or loopback one).
    Answer(IpAddr),
}

/// What a list gives for one rule, as `parse_list` hands it on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Listed<'a> {
    /// A rule for a name.
    Name(Rule, &'a str),
    /// A regex rule.
    Regex(&'a RegexRule),
}

/// Which names a rule covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The name only (hosts lines, domain lines, `|name^`).
    Exact,
    /// The name and every name below it (`||name^`, dnsmasq `/name/`).
    Subtree,
    /// The names below the name, not the name (`*.name`).
    Below,
}

/// What one source contributed, counted. Serialized into the status the
/// control API shows.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ListCounts {
    /// The syntax its lines were read in.
    pub format: ListFormat,
    /// Block rules taken.
    pub blocked: usize,
    /// Exception rules taken.
    pub allowed: usize,
    /// Names answered with an address (rewrites) taken.
    #[serde(default)]
    pub rewritten: usize,
    /// Regex rules taken (counted in `blocked` or `allowed` too).
    #[serde(default)]
    pub regexes: usize,
    /// Lines (or, on a hosts line, names) that are not valid rules.
    pub rejected: usize,
    /// Valid rules Moat does not apply (yet).
    pub unsupported: usize,
    /// Why lines were rejected or not applied: one entry per reason.
    pub notes: Vec<LineNote>,
}

/// Lines left out for one reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct LineNote {
    /// Rejected (invalid) or unsupported.
    pub kind: NoteKind,
    /// Why, for people.
    pub reason: String,
    /// How many lines.
    pub count: usize,
    /// The first such line's number, from 1.
    pub line: usize,
    /// The first such line (cut to [`EXAMPLE_LEN`] bytes).
    pub example: String,
}

/// Whether a line was wrong or only beyond what Moat applies.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum NoteKind {
    /// Not a valid rule.
    Rejected,
    /// A valid rule Moat does not apply.
    Unsupported,
}

/// Why a line is not a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Invalid {
    #[error("longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("not a domain name")]
    BadName,
    #[error("a hosts line without names")]
    NoNames,
    #[error("not a rule")]
    NotARule,
    #[error("a dnsmasq line without /names/")]
    BadDnsmasq,
    #[error("not a {0} line (the source is `format = \"{0}\"`)")]
    OtherSyntax(ListFormat),
    #[error("not a regex Moat reads")]
    BadRegex,
    #[error("regex too big: its automaton passes the cap on all regex rules")]
    RegexTooBig,
}

/// Why a valid rule is not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unsupported {
    #[error("modifier ${0} (not yet supported)")]
    Modifier(&'static str),
    #[error("unknown modifier (the rule is ignored, as AdGuard Home does)")]
    UnknownModifier,
    #[error("collating element or equivalence class in a regex")]
    Collating,
    #[error("Pi-hole ;reply= option (not yet supported)")]
    Reply,
    #[error("answer-IP rule (not yet supported)")]
    AnswerIp,
    #[error("forwarding (server=), not blocking")]
    Forwarding,
    #[error("browser-only rule (cosmetic or URL path)")]
    NotDns,
    #[error("wildcard pattern (not yet supported)")]
    Wildcard,
    #[error("local host name (never blocked)")]
    LocalHost,
    #[error("other dnsmasq option")]
    DnsmasqOption,
}

/// What a line gives, one item per name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Rule(Rule, String),
    Regex(RegexRule),
    Rejected(Invalid),
    Unsupported(Unsupported),
}

/// Longest line considered; longer ones are rejected unread.
const MAX_LINE: usize = 4096;

/// Longest example line a note keeps.
pub(crate) const EXAMPLE_LEN: usize = 200;

/// Lines looked at to detect a source's format.
const DETECT_LINES: usize = 1000;

/// Adblock modifiers AdGuard Home knows whose meaning Moat does not apply.
const UNSUPPORTED_MODIFIERS: [&str; 6] = [
    "badfilter",
    "client",
    "ctag",
    "denyallow",
    "dnsrewrite",
    "dnstype",
];

/// Parses a whole source, handing each rule and its line number (from 1)
/// to `visit` as it is read (a million-name list never exists as a
/// million strings); `visit` may refuse a rule, which is then counted as
/// rejected. `format` and `matching` are the source's overrides. A source
/// detected as a regex list is read as one: every line a regex.
pub(crate) fn parse_list(
    text: &str,
    format: Option<ListFormat>,
    matching: Option<ListMatch>,
    visit: &mut dyn FnMut(Listed<'_>, usize) -> Result<(), Invalid>,
) -> ListCounts {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let detected = format.unwrap_or_else(|| detect(text));
    let format = format.or((detected == ListFormat::Regex).then_some(detected));
    let mut tally = Tally::new(detected);
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim_end_matches('\r').trim();
        if is_comment(line, format) {
            continue;
        }
        let number = index + 1;
        read_line(line, format, &mut |outcome| {
            let (action, taken) = match &outcome {
                Outcome::Rule(rule, name) => {
                    let rule = overridden(*rule, matching);
                    (rule.action, visit(Listed::Name(rule, name), number))
                }
                Outcome::Regex(rule) => (rule.action, visit(Listed::Regex(rule), number)),
                Outcome::Rejected(why) => return tally.note(Why::Invalid(*why), number, line),
                Outcome::Unsupported(why) => {
                    return tally.note(Why::Unsupported(*why), number, line);
                }
            };
            match taken {
                Ok(()) => tally.rule(action, matches!(outcome, Outcome::Regex(_))),
                Err(why) => tally.note(Why::Invalid(why), number, line),
            }
        });
    }
    tally.finish()
}

/// A comment or blank line; a regex list has only `#` comments.
fn is_comment(line: &str, format: Option<ListFormat>) -> bool {
    let marks: &[char] = match format {
        Some(ListFormat::Regex) => &['#'],
        _ => &['#', '!', '['],
    };
    line.is_empty() || line.starts_with(marks)
}

/// The scope a source's `match` gives a rule; `*.name` rules keep theirs.
fn overridden(rule: Rule, matching: Option<ListMatch>) -> Rule {
    let scope = match (rule.scope, matching) {
        (Scope::Below, _) | (_, None) => rule.scope,
        (_, Some(ListMatch::Exact)) => Scope::Exact,
        (_, Some(ListMatch::Subtree)) => Scope::Subtree,
    };
    Rule { scope, ..rule }
}

/// Why a line was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    Invalid(Invalid),
    Unsupported(Unsupported),
}

/// Counts as they are read, with a note per reason: the reasons are a
/// closed set, so however long the list, this stays small.
struct Tally {
    counts: ListCounts,
    reasons: Vec<Why>,
}

impl Tally {
    fn new(format: ListFormat) -> Self {
        Self {
            counts: ListCounts {
                format,
                blocked: 0,
                allowed: 0,
                rewritten: 0,
                regexes: 0,
                rejected: 0,
                unsupported: 0,
                notes: Vec::new(),
            },
            reasons: Vec::new(),
        }
    }

    fn rule(&mut self, action: Action, regex: bool) {
        self.counts.regexes += usize::from(regex);
        match action {
            Action::Block => self.counts.blocked += 1,
            Action::Allow => self.counts.allowed += 1,
            Action::Answer(_) => self.counts.rewritten += 1,
        }
    }

    fn note(&mut self, why: Why, line: usize, text: &str) {
        let kind = match why {
            Why::Invalid(_) => {
                self.counts.rejected += 1;
                NoteKind::Rejected
            }
            Why::Unsupported(_) => {
                self.counts.unsupported += 1;
                NoteKind::Unsupported
            }
        };
        match self.reasons.iter().position(|seen| *seen == why) {
            Some(at) => self.counts.notes[at].count += 1,
            None => {
                self.reasons.push(why);
                self.counts.notes.push(LineNote {
                    kind,
                    reason: match why {
                        Why::Invalid(invalid) => invalid.to_string(),
                        Why::Unsupported(unsupported) => unsupported.to_string(),
                    },
                    count: 1,
                    line,
                    example: cut(text, EXAMPLE_LEN).to_owned(),
                });
            }
        }
    }

    fn finish(self) -> ListCounts {
        self.counts
    }
}

/// `text` cut to at most `len` bytes, on a character boundary.
fn cut(text: &str, len: usize) -> &str {
    let mut end = text.len().min(len);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The syntax a line is written in, by its look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Hosts,
    Domain,
    Adblock,
    Dnsmasq,
    Regex,
}

fn shape(line: &str) -> Shape {
    let first = line.split_whitespace().next().unwrap_or("");
    if is_dnsmasq_option(line) {
        Shape::Dnsmasq
    } else if is_pihole_regex(line) {
        Shape::Regex
    } else if line.starts_with("||")
        || line.starts_with('|')
        || line.starts_with("@@")
        || line.starts_with('/')
        || line.starts_with("*.")
        || line.contains(['^', '$'])
        || line.contains("##")
    {
        Shape::Adblock
    } else if first.parse::<IpAddr>().is_ok() && first.len() < line.len() {
        Shape::Hosts
    } else {
        Shape::Domain
    }
}

/// A line as Pi-hole regex lists write them: no white space, not an
/// Adblock rule (`|`, `@@`, `/` first, a `^` separator, a `$` before
/// modifiers), anchored (`^`, `$`) or with regex syntax (`\.`, `.*`,
/// groups, classes), options (`;querytype=`) aside.
fn is_pihole_regex(line: &str) -> bool {
    let regex = line.split(';').next().unwrap_or(line);
    let separator = regex
        .char_indices()
        .any(|(at, c)| c == '^' && at > 0 && !regex[..at].ends_with(['(', '|', '[']));
    let modifiers = regex
        .match_indices('$')
        .any(|(at, _)| !matches!(regex[at + 1..].chars().next(), None | Some('|' | ')')));
    let adblock = regex.starts_with(['|', '@', '/']) || separator || modifiers;
    !adblock
        && !regex.contains(|c: char| c.is_whitespace() || c == '/' || c == '#')
        && (regex.starts_with('^')
            || regex.ends_with('$')
            || regex.contains("\\.")
            || regex.contains(".*")
            || regex.contains(['(', '[', '+', '?', '{']))
}

/// `key=value` with a lower-case key: how every dnsmasq option is written.
fn is_dnsmasq_option(line: &str) -> bool {
    line.split_once('=').is_some_and(|(key, _)| {
        !key.is_empty()
            && key
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte == b'-')
    })
}

/// The format most of the first lines are written in.
fn detect(text: &str) -> ListFormat {
    let mut votes = [0usize; 5];
    let lines = text
        .lines()
        .map(str::trim)
        .filter(|line| !is_comment(line, None));
    for line in lines.take(DETECT_LINES) {
        votes[shape(line) as usize] += 1;
    }
    // Ties go to the format that reads the most shapes.
    [
        (Shape::Adblock, ListFormat::Adblock),
        (Shape::Domain, ListFormat::Domains),
        (Shape::Hosts, ListFormat::Hosts),
        (Shape::Dnsmasq, ListFormat::Dnsmasq),
        (Shape::Regex, ListFormat::Regex),
    ]
    .into_iter()
    .rev()
    .max_by_key(|(shape, _)| votes[*shape as usize])
    .map_or(ListFormat::Domains, |(_, format)| format)
}

/// Whether a source configured as `format` takes lines of `shape`. As in
/// AdGuard Home, Adblock-style lists take hosts and domain lines too, and a
/// domain list's line that is not a name is read as an Adblock rule. A
/// regex list reads every line as a regex.
fn takes(format: ListFormat, shape: Shape) -> bool {
    match format {
        ListFormat::Hosts => shape == Shape::Hosts,
        ListFormat::Domains => matches!(shape, Shape::Domain | Shape::Adblock),
        ListFormat::Adblock => !matches!(shape, Shape::Dnsmasq | Shape::Regex),
        ListFormat::Dnsmasq => shape == Shape::Dnsmasq,
        ListFormat::Regex => true,
    }
}

fn read_line(line: &str, format: Option<ListFormat>, emit: &mut dyn FnMut(Outcome)) {
    if line.len() > MAX_LINE {
        return emit(Outcome::Rejected(Invalid::TooLong));
    }
    let shape = shape(line);
    match format {
        Some(ListFormat::Regex) => emit(regex_outcome(regex::pihole_line(line))),
        Some(format) if !takes(format, shape) => {
            emit(Outcome::Rejected(Invalid::OtherSyntax(format)));
        }
        _ => match shape {
            Shape::Hosts => hosts_line(line, emit),
            Shape::Domain => emit(domain_line(line)),
            Shape::Adblock => emit(adblock_rule(line)),
            Shape::Dnsmasq => dnsmasq_line(line, emit),
            Shape::Regex => emit(regex_outcome(regex::pihole_line(line))),
        },
    }
}

/// `ADDRESS NAME... [# comment]`: each name exactly. A null or loopback
/// address blocks; any other answers that address (a rewrite).
fn hosts_line(line: &str, emit: &mut dyn FnMut(Outcome)) {
    let line = line.split('#').next().unwrap_or("");
    let mut fields = line.split_whitespace();
    let Some(Ok(address)) = fields.next().map(str::parse::<IpAddr>) else {
        return emit(Outcome::Rejected(Invalid::NotARule));
    };
    let mut names = 0;
    for name in fields {
        names += 1;
        if is_local_alias(&name.to_ascii_lowercase()) {
            emit(Outcome::Unsupported(Unsupported::LocalHost));
            continue;
        }
        emit(match listed_name(name) {
            Err(outcome) => outcome,
            Ok(name) => Outcome::Rule(
                Rule {
                    action: meaning(address),
                    scope: Scope::Exact,
                },
                name,
            ),
        });
    }
    if names == 0 {
        emit(Outcome::Rejected(Invalid::NoNames));
    }
}

/// One name, exactly (AdGuard Home: "blocks the domain but not its
/// subdomains"); a line that is no name is read as an Adblock rule.
fn domain_line(line: &str) -> Outcome {
    let line = strip_inline_comment(line);
    if line.split_whitespace().nth(1).is_some() {
        return Outcome::Rejected(Invalid::NotARule);
    }
    match listed_name(line) {
        Ok(name) => Outcome::Rule(block(Scope::Exact), name),
        Err(Outcome::Rejected(Invalid::BadName)) => adblock_rule(line),
        Err(other) => other,
    }
}

/// Text before a `#` or `!` that follows white space.
fn strip_inline_comment(line: &str) -> &str {
    let mut end = line.len();
    for (at, _) in line.match_indices([' ', '\t']) {
        if line[at..].trim_start().starts_with(['#', '!']) {
            end = at;
            break;
        }
    }
    line[..end].trim()
}

/// An Adblock-style DNS rule: `[@@]pattern[$modifiers]`. `||name^` covers
/// the name and below, `|name^` and a bare `name` the name only, `*.name`
/// the names below; a bare `name^` is taken as `||name^`. A rule with a
/// modifier Moat does not apply is left out, as AdGuard Home leaves out
/// rules with modifiers it does not know; `$important` is taken (without
/// its priority over exceptions).
fn adblock_rule(line: &str) -> Outcome {
    let rule = strip_inline_comment(line);
    let (action, rule) = match rule.strip_prefix("@@") {
        Some(rule) => (Action::Allow, rule),
        None => (Action::Block, rule),
    };
    let regex = adguard_regex(rule);
    let (pattern, modifiers) = match (regex, rule.split_once('$')) {
        (Some((regex, modifiers)), _) => (regex, modifiers),
        (None, Some((pattern, modifiers))) => (pattern, Some(modifiers)),
        (None, None) => (rule, None),
    };
    if let Some(why) = modifiers.and_then(unsupported_modifier) {
        return Outcome::Unsupported(why);
    }
    if regex.is_some() {
        return Outcome::Regex(regex::adguard_rule(action, line, pattern));
    }
    if pattern.contains('#') || pattern.contains('/') {
        return Outcome::Unsupported(Unsupported::NotDns);
    }
    let Some((scope, name)) =
        anchored(pattern).filter(|(_, name)| !name.is_empty() && !name.contains(['*', '|', '^']))
    else {
        return Outcome::Unsupported(Unsupported::Wildcard);
    };
    match listed_name(name) {
        Ok(name) => Outcome::Rule(Rule { action, scope }, name),
        Err(outcome) => outcome,
    }
}

/// An AdGuard `/regex/[$modifiers]` rule's regex and modifiers.
fn adguard_regex(rule: &str) -> Option<(&str, Option<&str>)> {
    let inner = rule.strip_prefix('/')?;
    let end = inner.rfind('/')?;
    let (regex, rest) = (&inner[..end], &inner[end + 1..]);
    let modifiers = match rest {
        "" => None,
        _ => Some(rest.strip_prefix('$')?),
    };
    (!regex.is_empty()).then_some((regex, modifiers))
}

/// What a read regex line gives.
fn regex_outcome(read: Result<RegexRule, regex::Why>) -> Outcome {
    match read {
        Ok(rule) => Outcome::Regex(rule),
        Err(regex::Why::Invalid(why)) => Outcome::Rejected(why),
        Err(regex::Why::Unsupported(why)) => Outcome::Unsupported(why),
    }
}

/// The scope a pattern's anchors give, and the name between them; `None`
/// for a pattern that matches part of a name (`|ads`).
fn anchored(pattern: &str) -> Option<(Scope, &str)> {
    let end_anchored = pattern.ends_with(['^', '|']);
    let (scope, rest) = if let Some(rest) = pattern.strip_prefix("||") {
        (Scope::Subtree, rest)
    } else if let Some(rest) = pattern.strip_prefix('|') {
        (end_anchored.then_some(Scope::Exact)?, rest)
    } else if end_anchored {
        (Scope::Subtree, pattern)
    } else {
        (Scope::Exact, pattern)
    };
    let (scope, rest) = match rest.strip_prefix("*.") {
        Some(below) => (Scope::Below, below),
        None => (scope, rest),
    };
    let name = rest.strip_suffix('|').unwrap_or(rest);
    Some((scope, name.strip_suffix('^').unwrap_or(name)))
}

/// The first modifier that keeps a rule out, if any.
fn unsupported_modifier(modifiers: &str) -> Option<Unsupported> {
    modifiers.split(',').find_map(|modifier| {
        let name = modifier.split('=').next().unwrap_or("").trim();
        let name = name.strip_prefix('~').unwrap_or(name);
        match UNSUPPORTED_MODIFIERS.iter().find(|known| **known == name) {
            Some(known) => Some(Unsupported::Modifier(known)),
            None if name == "important" => None,
            None => Some(Unsupported::UnknownModifier),
        }
    })
}

/// A dnsmasq line: `address=/name/.../[ADDRESS|#]`, `local=/name/.../`,
/// `server=/name/.../[SERVER]`. Each name covers its subtree; no address,
/// `#`, or a null or loopback address block (NXDOMAIN); another address is
/// a rewrite; `server=` with a server forwards.
fn dnsmasq_line(line: &str, emit: &mut dyn FnMut(Outcome)) {
    let (key, value) = line.split_once('=').unwrap_or((line, ""));
    if !matches!(key, "address" | "local" | "server") {
        return emit(Outcome::Unsupported(Unsupported::DnsmasqOption));
    }
    if key == "server" && !value.starts_with('/') {
        return emit(Outcome::Unsupported(Unsupported::Forwarding));
    }
    let Some((names, target)) = value.strip_prefix('/').and_then(|v| v.rsplit_once('/')) else {
        return emit(Outcome::Rejected(Invalid::BadDnsmasq));
    };
    let target = target.trim();
    let meaning = match (key, target) {
        (_, "") | ("address", "#") => Ok(Action::Block),
        ("address", address) => match address.parse::<IpAddr>() {
            Ok(address) => Ok(meaning(address)),
            Err(_) => Err(Outcome::Rejected(Invalid::BadDnsmasq)),
        },
        ("server", _) => Err(Outcome::Unsupported(Unsupported::Forwarding)),
        _ => Err(Outcome::Rejected(Invalid::BadDnsmasq)),
    };
    let names = names.split('/').filter(|name| !name.is_empty());
    let mut any = false;
    for name in names {
        any = true;
        emit(match (&meaning, name) {
            (Err(outcome), _) => outcome.clone(),
            (Ok(_), "#") => Outcome::Unsupported(Unsupported::Wildcard),
            (&Ok(action), name) => match listed_name(name) {
                Ok(name) => Outcome::Rule(
                    Rule {
                        action,
                        scope: Scope::Subtree,
                    },
                    name,
                ),
                Err(outcome) => outcome,
            },
        });
    }
    if !any {
        emit(Outcome::Rejected(Invalid::BadDnsmasq));
    }
}

const fn block(scope: Scope) -> Rule {
    Rule {
        action: Action::Block,
        scope,
    }
}

/// A name as a rule lists it: normalized, or why it is not one (an
/// address in a name's place is an answer-IP rule).
fn listed_name(name: &str) -> Result<String, Outcome> {
    if is_address(name) {
        return Err(Outcome::Unsupported(Unsupported::AnswerIp));
    }
    normalize(name).ok_or(Outcome::Rejected(Invalid::BadName))
}

/// An IP address, a CIDR prefix, or the start of an IPv4 address
/// (`||192.168.^`).
fn is_address(text: &str) -> bool {
    let address = text.split_once('/').map_or(text, |(address, _)| address);
    address.parse::<IpAddr>().is_ok()
        || (!address.is_empty()
            && address.contains('.')
            && address
                .bytes()
                .all(|byte| byte.is_ascii_digit() || byte == b'.'))
}

/// What a hosts or dnsmasq line's address means: unspecified (`0.0.0.0`,
/// `::`) and loopback (`127.0.0.1` and alike, `::1`) block, any other is
/// the answer (as AdGuard Home reads hosts lines).
fn meaning(address: IpAddr) -> Action {
    if address.is_unspecified() || address.is_loopback() {
        Action::Block
    } else {
        Action::Answer(address)
    }
}

/// Lower-cases and checks a name; an internationalized name becomes its
/// punycode (`xn--`) form, as it is asked on the wire. Returns `None` for
/// anything that is not a domain name.
fn normalize(name: &str) -> Option<String> {
    let name = name.trim_end_matches('.');
    let name = if name.is_ascii() {
        name.to_ascii_lowercase()
    } else {
        match url::Host::parse(name).ok()? {
            url::Host::Domain(ascii) => ascii,
            url::Host::Ipv4(_) | url::Host::Ipv6(_) => return None,
        }
    };
    let valid_label = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
            && !label.starts_with('-')
    };
    (name.len() <= 253 && name.contains('.') && name.split('.').all(valid_label)).then_some(name)
}

/// Names hosts files map to themselves, never meant as blocks.
fn is_local_alias(name: &str) -> bool {
    matches!(
        name,
        "localhost"
            | "localhost.localdomain"
            | "local"
            | "broadcasthost"
            | "ip6-localhost"
            | "ip6-loopback"
    ) || name.ends_with(".localdomain")
}

#[cfg(test)]
mod tests;

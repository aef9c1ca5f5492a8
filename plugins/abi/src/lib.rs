//! The SDK of Moat's WASM policy plugins: the ABI between Moat (the host)
//! and a plugin (the guest), shared by both sides. Everything a plugin
//! author needs is on this page; `plugins/examples/schedule` is a plugin
//! written against it, with its tests.
//!
//! # What a plugin is
//!
//! A core WASM module (`wasm32-unknown-unknown`; any language that targets
//! it) that **imports nothing** and exports one linear `memory` and these
//! functions:
//!
//! - `moat_abi_version() -> i32`: must return [`ABI_VERSION`]; a module of
//!   another version is refused, naming the plugin;
//! - `moat_query_buffer() -> i32`: the address of a [`QUERY_CAPACITY`]-byte
//!   buffer the host writes each question into (layout below);
//! - `moat_answer_buffer() -> i32`: the address of an [`ANSWER_CAPACITY`]-byte
//!   buffer the plugin writes answers and explanations into;
//! - `moat_decide(len: i32, qtype: i32) -> i32`: decides the question in
//!   the query buffer, whose name is `len` bytes; `qtype` is the DNS query
//!   type (1 A, 28 AAAA, ...). Returns a [`Verdict`] code;
//! - `moat_explain(len: i32, qtype: i32) -> i32`: for the same question,
//!   writes which rule decides it into the answer buffer ([`Explanation`])
//!   and returns the bytes written; 0 when no rule decides.
//!
//! In Rust, [`plugin_glue!`] defines the buffers, the panic handler and
//! the first three exports; a plugin writes `moat_decide` and `moat_explain`.
//!
//! # The query buffer
//!
//! | bytes | what |
//! |---|---|
//! | `0..16` ([`CLIENT_LEN`]) | the client's address, IPv6 (IPv4 as `::ffff:a.b.c.d`) |
//! | `16..24` ([`TIME_AT`]) | the current time, Unix seconds, u64 LE (UTC) |
//! | `24..56` ([`GROUP_AT`], [`GROUP_LEN`]) | the client's group name, zero-padded: **reserved**, all zero (the empty group) until Moat has client groups |
//! | `56..` ([`NAME_AT`]) | the name: lower case, dotted, no trailing dot, at most [`NAME_CAPACITY`] bytes; `len` says how many |
//!
//! The time is what the appliance's clock says (plus
//! `tuning.plugins.clock_offset_secs`, which is 0 in service and lets a
//! test feed any time), so a schedule needs no host import.
//! [`Query::read`] reads the buffer into its fields.
//!
//! # Verdicts
//!
//! [`Verdict`]: no opinion (the next plugin in the chain decides), allow
//! (resolve, and no later plugin blocks), block (answer with the policy's
//! blocked response), answer (with records the plugin wrote into the answer
//! buffer, in the form of [`RECORDS_HEADER_LEN`]'s doc; no records is
//! NODATA), refuse (answer REFUSED). Any other code is a fault.
//!
//! # The plugin's configuration
//!
//! A plugin configured in `[[policy.plugins]]` receives its `config` table
//! as bytes the policy compiler places in a data segment at [`DATA_BASE`]:
//! the magic [`CONFIG_MAGIC`], the length (u32 LE), then one line per
//! value, `key=value\n`: strings as written, numbers and booleans in their
//! TOML form, an array as one line per element under the same key, a
//! nested table's keys dotted (`days.mon=...`). [`ConfigLines`] reads them.
//! The plugin's statics and stack must stay below [`DATA_BASE`]
//! (`-C link-arg=-zstack-size=65536` keeps a Rust plugin's stack small).
//!
//! # Whether verdicts depend on the client or the time
//!
//! Moat keeps a verdict that lets a question through with its cached
//! answer (the verdict memo) and does not ask the plugins again on a cache
//! hit while it holds. A plugin says how long its verdicts hold:
//!
//! - a plugin exports a function named [`DECIDES_BY_CLIENT_EXPORT`] when
//!   they depend on who asks (address or group): a kept verdict then holds
//!   for the client that asked only (each cached answer remembers the last
//!   client that passed; another client asks the chain again). Since the
//!   group comes from the client, this keeps verdicts per group too;
//! - a plugin exports [`VALID_UNTIL_EXPORT`] (`moat_valid_until() -> i64`)
//!   when they depend on the time: the host calls it right after each
//!   `moat_decide`, and it returns the Unix second at which the verdict
//!   just given may change (the next boundary of a schedule, say). The
//!   verdict is kept until then and decided again after. [`HOLDS_FOREVER`]
//!   (`i64::MAX`) keeps it until the policy changes; a time not after the
//!   query's keeps it not at all;
//! - a plugin that exports [`DECIDES_BY_TIME_EXPORT`] but not
//!   [`VALID_UNTIL_EXPORT`] has its verdicts never kept: every query asks
//!   the chain.
//!
//! Without any of these, a verdict holds until the policy changes. A
//! verdict must be a function of the question, the client, its group, the
//! time and the plugin's configuration: an instance's memory is not kept
//! between calls on every thread. Nothing is allocated per call.
//!
//! # Limits
//!
//! - no imports: a module that imports anything is refused before signing;
//! - memory: the module may declare at most [`MAX_DECLARED_MEMORY`] bytes
//!   (with its configuration) and grow 16 MiB beyond what it declares;
//! - time: each call gets 20–30 ms, then it is stopped;
//! - before a policy with the plugin is signed, the primary asks it a small
//!   smoke set of questions (several names, types, clients and times): a
//!   trap, a timeout or a bad verdict there refuses the plugin;
//! - at run time a trap, a timeout or a bad verdict is a fault, handled by
//!   the plugin's fail mode (`open`, `closed` or `skip`); a plugin that
//!   keeps faulting is switched off and reported in status, and the other
//!   plugins keep deciding.
#![no_std]
#![forbid(unsafe_code)]

/// Version of this ABI; a plugin built for another is refused. Version 2
/// added `moat_explain` and made `moat_answer_buffer` required; version 3
/// added the time and the client group to the query buffer; version 4
/// added the refuse verdict and `moat_valid_until`.
pub const ABI_VERSION: i32 = 4;

/// The export that marks a plugin whose verdicts depend on the client.
pub const DECIDES_BY_CLIENT_EXPORT: &str = "moat_decides_by_client";

/// The export that marks a plugin whose verdicts depend on the time.
pub const DECIDES_BY_TIME_EXPORT: &str = "moat_decides_by_time";

/// The export (`moat_valid_until() -> i64`) a time-dependent plugin
/// names, after each decision, the Unix second its verdict may change at.
pub const VALID_UNTIL_EXPORT: &str = "moat_valid_until";

/// What `moat_valid_until` returns for a verdict that holds until the
/// policy changes.
pub const HOLDS_FOREVER: i64 = i64::MAX;

/// Bytes of the client address at the start of the query buffer.
pub const CLIENT_LEN: usize = 16;

/// Where the time (Unix seconds, u64 LE) is in the query buffer.
pub const TIME_AT: usize = CLIENT_LEN;

/// Where the client's group name is in the query buffer.
pub const GROUP_AT: usize = TIME_AT + 8;

/// Bytes of the client's group name (zero-padded; empty until client groups exist).
pub const GROUP_LEN: usize = 32;

/// Where the name is in the query buffer.
pub const NAME_AT: usize = GROUP_AT + GROUP_LEN;

/// Longest dotted name.
pub const NAME_CAPACITY: usize = 256;

/// Size of the query buffer: client address, time, group, then name.
pub const QUERY_CAPACITY: usize = NAME_AT + NAME_CAPACITY;

/// Most memory a configured plugin's module may declare, its
/// configuration included (32 MiB).
pub const MAX_DECLARED_MEMORY: u64 = 32 << 20;

/// A question as the query buffer holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query<'a> {
    /// The client's address (IPv4 mapped into IPv6).
    pub client: [u8; CLIENT_LEN],
    /// Unix seconds, UTC.
    pub unix_time: u64,
    /// The client's group, empty when it has none.
    pub group: &'a [u8],
    /// The name: lower case, dotted, without the trailing dot.
    pub name: &'a [u8],
}

impl<'a> Query<'a> {
    /// Reads the query buffer, whose name is `len` bytes.
    pub fn read(buffer: &'a [u8; QUERY_CAPACITY], len: i32) -> Self {
        let mut client = [0; CLIENT_LEN];
        client.copy_from_slice(&buffer[..CLIENT_LEN]);
        let mut time = [0; 8];
        time.copy_from_slice(&buffer[TIME_AT..TIME_AT + 8]);
        let group = &buffer[GROUP_AT..GROUP_AT + GROUP_LEN];
        let group_len = group
            .iter()
            .position(|&byte| byte == 0)
            .unwrap_or(GROUP_LEN);
        let len = (len.max(0) as usize).min(NAME_CAPACITY);
        Self {
            client,
            unix_time: u64::from_le_bytes(time),
            group: &group[..group_len],
            name: &buffer[NAME_AT..NAME_AT + len],
        }
    }

    /// Writes the question into a query buffer (what the host does);
    /// gives the name's length as `moat_decide` takes it. A longer name or
    /// group is cut.
    pub fn write(&self, buffer: &mut [u8; QUERY_CAPACITY]) -> i32 {
        buffer[..CLIENT_LEN].copy_from_slice(&self.client);
        buffer[TIME_AT..TIME_AT + 8].copy_from_slice(&self.unix_time.to_le_bytes());
        let group = &self.group[..self.group.len().min(GROUP_LEN)];
        buffer[GROUP_AT..GROUP_AT + GROUP_LEN].fill(0);
        buffer[GROUP_AT..GROUP_AT + group.len()].copy_from_slice(group);
        let name = &self.name[..self.name.len().min(NAME_CAPACITY)];
        buffer[NAME_AT..NAME_AT + name.len()].copy_from_slice(name);
        name.len() as i32
    }
}

/// Magic at the start of a configured plugin's data.
pub const CONFIG_MAGIC: [u8; 8] = *b"MOATPC01";

/// Bytes before the configuration lines: the magic and their length.
pub const CONFIG_HEADER_LEN: usize = 12;

/// The bytes before configuration lines of `len` bytes: the magic and
/// the length (what the compiler writes; a plugin's host tests too).
pub fn config_header(len: usize) -> [u8; CONFIG_HEADER_LEN] {
    let mut header = [0; CONFIG_HEADER_LEN];
    header[..8].copy_from_slice(&CONFIG_MAGIC);
    header[8..].copy_from_slice(&(len as u32).to_le_bytes());
    header
}

/// An IPv4 address as the query buffer holds it (`::ffff:a.b.c.d`).
pub fn mapped_v4(v4: [u8; 4]) -> [u8; CLIENT_LEN] {
    let mut mapped = [0; CLIENT_LEN];
    mapped[10] = 0xff;
    mapped[11] = 0xff;
    mapped[12..].copy_from_slice(&v4);
    mapped
}

/// The `key=value` lines of a plugin's configuration.
#[derive(Debug, Clone, Copy)]
pub struct ConfigLines<'a> {
    rest: &'a [u8],
}

impl<'a> ConfigLines<'a> {
    /// The lines of configuration data (header included), if the magic is
    /// there; `data` may run past the lines.
    pub fn new(data: &'a [u8]) -> Option<Self> {
        let header = data.get(..CONFIG_HEADER_LEN)?;
        if header[..8] != CONFIG_MAGIC {
            return None;
        }
        let len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
        let rest = data.get(CONFIG_HEADER_LEN..CONFIG_HEADER_LEN + len)?;
        Some(Self { rest })
    }

    /// The bytes of the lines.
    pub fn bytes(&self) -> &'a [u8] {
        self.rest
    }

    /// The values of every line of `key`, in order.
    pub fn values(self, key: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.filter(move |(k, _)| *k == key).map(|(_, value)| value)
    }
}

/// Whether `listed` covers `name`: it is the name or a name above it
/// (`example.com` covers `www.example.com`, not `badexample.com`).
pub fn name_covers(listed: &[u8], name: &[u8]) -> bool {
    name == listed
        || (name.len() > listed.len()
            && name.ends_with(listed)
            && name[name.len() - listed.len() - 1] == b'.')
}

/// A decimal of at most nine digits.
pub fn parse_u32(text: &[u8]) -> Option<u32> {
    if text.is_empty() || text.len() > 9 {
        return None;
    }
    text.iter().try_fold(0u32, |value, &byte| {
        byte.is_ascii_digit()
            .then(|| value * 10 + u32::from(byte - b'0'))
    })
}

/// Whether `client` (IPv6, IPv4 mapped) is in `range`: an address, or an
/// address and a prefix length (`192.168.1.0/24`, `fd00::/8`).
pub fn in_range(range: &[u8], client: &[u8; CLIENT_LEN]) -> bool {
    let (address, prefix) = match range.iter().position(|&byte| byte == b'/') {
        Some(slash) => (&range[..slash], parse_u32(&range[slash + 1..])),
        None => (range, None),
    };
    let (network, bits) = if let Some(v4) = parse_v4(address) {
        (mapped_v4(v4), 96 + prefix.unwrap_or(32).min(32))
    } else if let Some(v6) = parse_v6(address) {
        (v6, prefix.unwrap_or(128).min(128))
    } else {
        return false;
    };
    (0..bits as usize).all(|bit| {
        let mask = 0x80 >> (bit % 8);
        network[bit / 8] & mask == client[bit / 8] & mask
    })
}

/// A dotted IPv4 address.
pub fn parse_v4(text: &[u8]) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = text.split(|&byte| byte == b'.');
    for byte in &mut out {
        let value = parse_u32(parts.next()?)?;
        *byte = u8::try_from(value).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// An IPv6 address (with `::`, without an embedded IPv4 part).
pub fn parse_v6(text: &[u8]) -> Option<[u8; 16]> {
    let groups = |part: &[u8], out: &mut [u16; 8]| -> Option<usize> {
        if part.is_empty() {
            return Some(0);
        }
        let mut count = 0;
        for group in part.split(|&byte| byte == b':') {
            if count == 8 || group.is_empty() || group.len() > 4 {
                return None;
            }
            out[count] = group.iter().try_fold(0u16, |value, &byte| {
                let digit = (byte as char).to_digit(16)?;
                Some(value * 16 + digit as u16)
            })?;
            count += 1;
        }
        Some(count)
    };
    let mut head = [0u16; 8];
    let mut tail = [0u16; 8];
    let joined = text.windows(2).position(|pair| pair == b"::");
    let (head_len, tail_len) = match joined {
        Some(at) => (
            groups(&text[..at], &mut head)?,
            groups(&text[at + 2..], &mut tail)?,
        ),
        None => (groups(text, &mut head)?, 0),
    };
    if (joined.is_none() && head_len != 8) || head_len + tail_len > 8 {
        return None;
    }
    let mut all = head;
    all[8 - tail_len..].copy_from_slice(&tail[..tail_len]);
    let mut out = [0u8; 16];
    for (index, group) in all.iter().enumerate() {
        out[index * 2..index * 2 + 2].copy_from_slice(&group.to_be_bytes());
    }
    Some(out)
}

impl<'a> Iterator for ConfigLines<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.rest.is_empty() {
            let end = self
                .rest
                .iter()
                .position(|&byte| byte == b'\n')
                .unwrap_or(self.rest.len());
            let line = &self.rest[..end];
            self.rest = self.rest.get(end + 1..).unwrap_or(&[]);
            if let Some(equals) = line.iter().position(|&byte| byte == b'=') {
                return Some((&line[..equals], &line[equals + 1..]));
            }
        }
        None
    }
}

/// Where the compiler places the plugin's data in linear memory (4 MiB);
/// guests keep their own stack and statics below it.
pub const DATA_BASE: u32 = 4 << 20;

/// What a plugin decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum Verdict {
    /// No rule matched.
    NoOpinion = 0,
    /// An allow rule matched (and no deny rule).
    Allow = 1,
    /// A block or deny rule matched.
    Block = 2,
    /// The plugin answers: records are in the answer buffer.
    Answer = 3,
    /// Answer REFUSED.
    Refuse = 4,
}

impl Verdict {
    /// The verdict for a code returned by `moat_decide`, if valid.
    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            0 => Some(Self::NoOpinion),
            1 => Some(Self::Allow),
            2 => Some(Self::Block),
            3 => Some(Self::Answer),
            4 => Some(Self::Refuse),
            _ => None,
        }
    }
}

/// Size of the answer buffer (`moat_answer_buffer() -> i32` gives its
/// address).
pub const ANSWER_CAPACITY: usize = 4096;

/// Longest origin an explanation carries; the compiler cuts longer ones,
/// so an explanation always fits the answer buffer.
pub const ORIGIN_CAPACITY: usize = 1024;

/// The origin of every local record (and of the PTRs `policy.local_ptr`
/// makes from them).
pub const LOCAL_RECORDS_ORIGIN: &[u8] = b"policy.local_records";

/// Kinds of rule that can decide a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RuleKind {
    /// A `policy.deny` name.
    DenyExact = 0,
    /// A `policy.deny` suffix.
    DenySuffix = 1,
    /// A `policy.allow` name.
    AllowExact = 2,
    /// A `policy.allow` suffix or a list's exception.
    AllowSuffix = 3,
    /// A blocked name.
    BlockExact = 4,
    /// A list entry for the name and everything below it.
    BlockSuffix = 5,
    /// A local record's name.
    LocalName = 6,
    /// A local record's `*.suffix`.
    LocalWildcard = 7,
    /// A list's exception for the names below a name (`@@*.name`).
    AllowBelow = 8,
    /// A list entry for the names below a name, not the name (`*.name`).
    BlockBelow = 9,
    /// A rule of a configured plugin (`[[policy.plugins]]`): the pattern
    /// and origin are the plugin's to choose.
    Plugin = 10,
    /// A list's regex rule that blocks (the pattern is the rule as written).
    BlockRegex = 11,
    /// A list's regex exception.
    AllowRegex = 12,
}

impl RuleKind {
    /// The kind for a code, if valid.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::DenyExact,
            1 => Self::DenySuffix,
            2 => Self::AllowExact,
            3 => Self::AllowSuffix,
            4 => Self::BlockExact,
            5 => Self::BlockSuffix,
            6 => Self::LocalName,
            7 => Self::LocalWildcard,
            8 => Self::AllowBelow,
            9 => Self::BlockBelow,
            10 => Self::Plugin,
            11 => Self::BlockRegex,
            12 => Self::AllowRegex,
            _ => return None,
        })
    }

    /// The kind of a match in a blocklist table.
    pub fn of_table(table: Table) -> Self {
        match table {
            Table::DenyExact => Self::DenyExact,
            Table::DenySuffix => Self::DenySuffix,
            Table::AllowExact => Self::AllowExact,
            Table::AllowSuffix => Self::AllowSuffix,
            Table::BlockExact => Self::BlockExact,
            Table::BlockSuffix => Self::BlockSuffix,
            Table::AllowBelow => Self::AllowBelow,
            Table::BlockBelow => Self::BlockBelow,
        }
    }

    /// Whether the rule covers the names below its pattern (written `*.name`).
    pub fn is_suffix(self) -> bool {
        matches!(
            self,
            Self::DenySuffix
                | Self::AllowSuffix
                | Self::BlockSuffix
                | Self::LocalWildcard
                | Self::AllowBelow
                | Self::BlockBelow
        )
    }
}

/// Which rule decided, as `moat_explain` writes it: the kind (u8, a
/// [`RuleKind`] code), the pattern's length (u16 LE) and the pattern as the
/// rule is written (`ads.example`, `*.ads.example`), the origin's length
/// (u16 LE) and the origin (`policy.deny`, `policy.allow`,
/// `policy.local_records`, or a blocklist source's path or URL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Explanation<'a> {
    /// What kind of rule.
    pub kind: RuleKind,
    /// The name the rule is for, without any `*.`.
    pub name: &'a [u8],
    /// Where the rule came from.
    pub origin: &'a [u8],
}

impl<'a> Explanation<'a> {
    /// Writes the explanation into `out`; returns the bytes written, or 0
    /// when it does not fit.
    pub fn encode(&self, out: &mut [u8]) -> usize {
        let star: &[u8] = if self.kind.is_suffix() { b"*." } else { b"" };
        let pattern_len = star.len() + self.name.len();
        let len = 5 + pattern_len + self.origin.len();
        if len > out.len()
            || pattern_len > usize::from(u16::MAX)
            || self.origin.len() > ORIGIN_CAPACITY
        {
            return 0;
        }
        out[0] = self.kind as u8;
        out[1..3].copy_from_slice(&(pattern_len as u16).to_le_bytes());
        out[3..3 + star.len()].copy_from_slice(star);
        out[3 + star.len()..3 + pattern_len].copy_from_slice(self.name);
        let at = 3 + pattern_len;
        out[at..at + 2].copy_from_slice(&(self.origin.len() as u16).to_le_bytes());
        out[at + 2..len].copy_from_slice(self.origin);
        len
    }

    /// Reads an explanation written by [`Explanation::encode`]; gives the
    /// kind, the pattern as written and the origin.
    pub fn decode(bytes: &'a [u8]) -> Option<(RuleKind, &'a [u8], &'a [u8])> {
        let kind = RuleKind::from_code(*bytes.first()?)?;
        let (pattern, rest) = take_field(bytes.get(1..)?)?;
        let (origin, rest) = take_field(rest)?;
        rest.is_empty().then_some((kind, pattern, origin))
    }
}

/// A u16 LE length and that many bytes, and what follows.
fn take_field(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let len = usize::from(u16::from_le_bytes([*bytes.first()?, *bytes.get(1)?]));
    let field = bytes.get(2..2 + len)?;
    Some((field, &bytes[2 + len..]))
}

/// Magic at the start of local-records data.
pub const RECORDS_MAGIC: [u8; 8] = *b"MOATLR01";

/// Layout of local-records data at [`DATA_BASE`]: the magic; the number of
/// exact names, of wildcard suffixes, and the bytes of the record area
/// (u32 LE each); then that many index
/// entries per kind, sorted by hash: name hash (u64 LE), offset and length
/// (u32 LE each) of the name's records in the record area that follows.
/// A name's records are DNS wire records without owner: type (u16 BE),
/// TTL (u32 BE), RDATA length (u16 BE), RDATA (names uncompressed).
///
/// An answer in the answer buffer is the record count (u16 BE) followed by
/// records in the same form.
pub const RECORDS_HEADER_LEN: usize = 20;

/// Bytes of one index entry.
pub const RECORDS_INDEX_ENTRY: usize = 16;

/// The CNAME record type, which answers every query type.
pub const TYPE_CNAME: u16 = 5;

/// Records data in the form of [`RECORDS_HEADER_LEN`]'s doc, read in place:
/// the local-records plugin's data, and the blocklist's rewrites.
#[derive(Debug, Clone, Copy)]
pub struct Records<'a> {
    exact: &'a [u8],
    wildcard: &'a [u8],
    records: &'a [u8],
}

/// The owner [`Records::find`] found for a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner<'a> {
    /// The owner's records.
    pub records: &'a [u8],
    /// Where in the asked name the owner starts: 0 for the name itself,
    /// else the wildcard's suffix.
    pub start: usize,
    /// The owner's index entry: exact names first, then wildcards.
    pub entry: usize,
}

impl<'a> Records<'a> {
    /// The records data at the start of `bytes` (checking the magic), and
    /// the bytes after it.
    pub fn parse(bytes: &'a [u8]) -> Option<(Self, &'a [u8])> {
        let header = bytes.get(..RECORDS_HEADER_LEN)?;
        if header[..8] != RECORDS_MAGIC {
            return None;
        }
        let field = |at: usize| {
            u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
                as usize
        };
        let exact_len = field(8) * RECORDS_INDEX_ENTRY;
        let wildcard_len = field(12) * RECORDS_INDEX_ENTRY;
        let rest = &bytes[RECORDS_HEADER_LEN..];
        let (exact, rest) = rest.split_at_checked(exact_len)?;
        let (wildcard, rest) = rest.split_at_checked(wildcard_len)?;
        let (records, rest) = rest.split_at_checked(field(16))?;
        Some((
            Self {
                exact,
                wildcard,
                records,
            },
            rest,
        ))
    }

    /// Index entries, exact names and wildcards together.
    pub fn entries(&self) -> usize {
        (self.exact.len() + self.wildcard.len()) / RECORDS_INDEX_ENTRY
    }

    /// The records of `name`, or of the longest wildcard suffix covering
    /// it (`*.lan` covers `a.lan`, not `lan`).
    pub fn find(&self, name: &[u8]) -> Option<Owner<'a>> {
        let mut hash = FNV_OFFSET;
        let mut best = None;
        for index in (0..name.len()).rev() {
            hash = fnv_step(hash, name[index]);
            if index == 0 {
                if let Some(found) = lookup(self.exact, hash) {
                    return Some(self.owner(found, 0, 0));
                }
            } else if name[index - 1] == b'.'
                && let Some(found) = lookup(self.wildcard, hash)
            {
                // Suffixes come shortest first: a longer match replaces it.
                best = Some((found, index));
            }
        }
        let exact_count = self.exact.len() / RECORDS_INDEX_ENTRY;
        best.map(|(found, start)| self.owner(found, start, exact_count))
    }

    fn owner(
        &self,
        (entry, offset, len): (usize, usize, usize),
        start: usize,
        base: usize,
    ) -> Owner<'a> {
        Owner {
            records: self.records.get(offset..offset + len).unwrap_or(&[]),
            start,
            entry: base + entry,
        }
    }
}

/// The entry, offset and length for `hash` in a sorted records index.
fn lookup(index: &[u8], hash: u64) -> Option<(usize, usize, usize)> {
    let (mut low, mut high) = (0usize, index.len() / RECORDS_INDEX_ENTRY);
    while low < high {
        let middle = (low + high) / 2;
        let entry = &index[middle * RECORDS_INDEX_ENTRY..(middle + 1) * RECORDS_INDEX_ENTRY];
        let word = |at: usize| {
            u32::from_le_bytes([entry[at], entry[at + 1], entry[at + 2], entry[at + 3]])
        };
        let value = u64::from(word(0)) | (u64::from(word(4)) << 32);
        if value == hash {
            return Some((middle, word(8) as usize, word(12) as usize));
        }
        if value < hash {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    None
}

/// Writes the answer for `qtype` from an owner's records into `answer`: the
/// records of that type (or CNAME), as many as fit. None is NODATA.
pub fn write_answer(records: &[u8], qtype: u16, answer: &mut [u8]) {
    if answer.len() < 2 {
        return;
    }
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
        if (kind == qtype || kind == TYPE_CNAME) && out + (end - at) <= answer.len() {
            answer[out..out + (end - at)].copy_from_slice(&records[at..end]);
            out += end - at;
            count += 1;
        }
        at = end;
    }
    answer[..2].copy_from_slice(&count.to_be_bytes());
}

/// Magic at the start of blocklist data.
pub const BLOCKLIST_MAGIC: [u8; 8] = *b"MOATBL04";

/// The rule tables of a blocklist. Deny tables win over allow tables,
/// allow tables over block tables. An exact table matches the name only,
/// a suffix table the name and every name below it, a below table only
/// the names below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Table {
    /// `policy.deny` names: block, over everything.
    DenyExact = 0,
    /// `policy.deny` suffixes.
    DenySuffix = 1,
    /// `policy.allow` names: never blocked by block rules.
    AllowExact = 2,
    /// `policy.allow` suffixes.
    AllowSuffix = 3,
    /// Blocklist names.
    BlockExact = 4,
    /// Blocklist suffixes: the name and everything below it.
    BlockSuffix = 5,
    /// List exceptions for the names below a name.
    AllowBelow = 6,
    /// Blocklist entries for the names below a name.
    BlockBelow = 7,
}

/// Number of tables.
pub const TABLES: usize = 8;

/// Layout of blocklist data at [`DATA_BASE`]: the magic, then per table the
/// number of entries (u32 LE), then the bytes of the rewrites section and
/// of the regex section (u32 LE each), then the tables one after the
/// other, each a sorted array of u64 LE name hashes ([`name_hash`]).
///
/// Then the rewrites section: the names a list answers with an address
/// (a hosts line `192.0.2.7 name`), as records data ([`Records`]), then
/// each index entry's origin (u16 LE, an index into the origins below), in
/// index order.
///
/// Then the regex section ([`RegexRules`]).
///
/// Then, read only to explain ([`Origins`]): per table the origin base
/// (u16 LE) and bits per entry (u8); per table the entries' origins packed
/// at that many bits each, least significant bit first, in as many bytes as
/// they need (none at 0 bits: every entry has the base); then the number of
/// origins (u16 LE) and each origin as a length (u16 LE) and bytes. An
/// entry's origin is the base plus its packed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataHeader {
    /// Entries per table.
    pub counts: [u32; TABLES],
    /// Bytes of the rewrites section.
    pub rewrites: u32,
    /// Bytes of the regex section.
    pub regexes: u32,
}

impl DataHeader {
    /// Bytes the header takes.
    pub const LEN: usize = 8 + 4 * TABLES + 8;

    /// Encodes the header.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut bytes = [0u8; Self::LEN];
        bytes[..8].copy_from_slice(&BLOCKLIST_MAGIC);
        let sections = [&self.rewrites, &self.regexes];
        for (index, count) in self.counts.iter().chain(sections).enumerate() {
            bytes[8 + index * 4..12 + index * 4].copy_from_slice(&count.to_le_bytes());
        }
        bytes
    }

    /// Decodes a header, checking the magic.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::LEN || bytes[..8] != BLOCKLIST_MAGIC {
            return None;
        }
        let field = |index: usize| {
            let field = &bytes[8 + index * 4..12 + index * 4];
            u32::from_le_bytes([field[0], field[1], field[2], field[3]])
        };
        Some(Self {
            counts: core::array::from_fn(field),
            rewrites: field(TABLES),
            regexes: field(TABLES + 1),
        })
    }

    /// Bytes of the hash tables.
    pub fn tables_len(&self) -> usize {
        self.counts.iter().map(|&count| count as usize * 8).sum()
    }
}

/// Flag of a regex rule: an exception, not a block.
pub const REGEX_ALLOW: u8 = 1;

/// Flag of a regex rule: it covers the names its regex does not match.
pub const REGEX_INVERT: u8 = 2;

/// Flag of a regex rule: its listed query types are the ones it does not
/// cover.
pub const REGEX_EXCEPT_TYPES: u8 = 4;

/// Most query types a regex rule lists.
pub const REGEX_MAX_TYPES: usize = 8;

/// The regex section of blocklist data: the number of rules (u32 LE), then
/// per rule its flags (u8: [`REGEX_ALLOW`], [`REGEX_INVERT`],
/// [`REGEX_EXCEPT_TYPES`]), the number of query types it lists (u8), its
/// origin number (u16 LE), the types (u16 LE each; none listed: every
/// type), the rule as written (u16 LE length, bytes), and its automaton: a
/// `regex-automata` 0.4 sparse DFA, serialized little-endian (u32 LE
/// length, bytes), matched anywhere in the name.
#[derive(Debug, Clone, Copy)]
pub struct RegexRules<'a> {
    rest: &'a [u8],
    left: u32,
}

/// One regex rule of a [`RegexRules`] section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegexRule<'a> {
    /// [`REGEX_ALLOW`], [`REGEX_INVERT`], [`REGEX_EXCEPT_TYPES`].
    pub flags: u8,
    types: &'a [u8],
    /// Its origin number (see [`Origins::numbered`]).
    pub origin: u16,
    /// The rule as its list writes it.
    pub written: &'a [u8],
    /// The serialized DFA.
    pub dfa: &'a [u8],
}

impl<'a> RegexRules<'a> {
    /// The rules of a section.
    pub fn new(section: &'a [u8]) -> Self {
        match section.split_at_checked(4) {
            Some((count, rest)) => Self {
                rest,
                left: u32::from_le_bytes([count[0], count[1], count[2], count[3]]),
            },
            None => Self { rest: &[], left: 0 },
        }
    }
}

impl<'a> Iterator for RegexRules<'a> {
    type Item = RegexRule<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        self.left = self.left.checked_sub(1)?;
        let (&[flags, types, low, high], rest) = self.rest.split_first_chunk::<4>()?;
        let (types, rest) = rest.split_at_checked(usize::from(types) * 2)?;
        let (written, rest) = take_field(rest)?;
        let (len, rest) = rest.split_first_chunk::<4>()?;
        let (dfa, rest) = rest.split_at_checked(u32::from_le_bytes(*len) as usize)?;
        self.rest = rest;
        Some(RegexRule {
            flags,
            types,
            origin: u16::from_le_bytes([low, high]),
            written,
            dfa,
        })
    }
}

impl RegexRule<'_> {
    /// Whether the rule covers questions of type `qtype`.
    pub fn covers(&self, qtype: u16) -> bool {
        if self.types.is_empty() {
            return true;
        }
        let listed = self
            .types
            .chunks_exact(2)
            .any(|kind| u16::from_le_bytes([kind[0], kind[1]]) == qtype);
        listed != (self.flags & REGEX_EXCEPT_TYPES != 0)
    }
}

/// The origin of rewrite entry `entry` in the origins that follow a
/// rewrites section's records data.
pub fn rewrite_origin(origins: &[u8], entry: usize) -> Option<u16> {
    let at = entry * 2;
    Some(u16::from_le_bytes([
        *origins.get(at)?,
        *origins.get(at + 1)?,
    ]))
}

/// Bytes of one table's entry in the origin header: base (u16) and bits (u8).
pub const ORIGIN_HEADER_ENTRY: usize = 3;

/// The origins section of blocklist data, which follows the hash tables.
#[derive(Debug, Clone, Copy)]
pub struct Origins<'a> {
    counts: [u32; TABLES],
    bytes: &'a [u8],
}

impl<'a> Origins<'a> {
    /// The section in `bytes` (which start right after the rewrites
    /// section) of tables with these entry counts.
    pub fn new(counts: [u32; TABLES], bytes: &'a [u8]) -> Self {
        Self { counts, bytes }
    }

    /// The origin of entry `entry` of `table`, if the data holds one.
    pub fn of(&self, table: Table, entry: usize) -> Option<&'a [u8]> {
        let (base, bits) = self.field(table as usize)?;
        let at = self.packed_start(table as usize)?;
        let mut value: u32 = 0;
        for bit in 0..bits {
            let position = entry as u64 * u64::from(bits) + u64::from(bit);
            let byte = *self.bytes.get(at + (position / 8) as usize)?;
            value |= u32::from((byte >> (position % 8)) & 1) << bit;
        }
        self.numbered(u32::from(base) + value)
    }

    /// Origin number `wanted` (a rewrite's, see [`rewrite_origin`]).
    pub fn numbered(&self, wanted: u32) -> Option<&'a [u8]> {
        let at = self.packed_start(TABLES)?;
        let count = u16::from_le_bytes([*self.bytes.get(at)?, *self.bytes.get(at + 1)?]);
        let mut rest = self.bytes.get(at + 2..)?;
        for index in 0..u32::from(count) {
            let (origin, after) = take_field(rest)?;
            if index == wanted {
                return Some(origin);
            }
            rest = after;
        }
        None
    }

    /// The origin base and bits of `table`.
    fn field(&self, table: usize) -> Option<(u16, u32)> {
        let at = table * ORIGIN_HEADER_ENTRY;
        let field = self.bytes.get(at..at + ORIGIN_HEADER_ENTRY)?;
        Some((
            u16::from_le_bytes([field[0], field[1]]),
            u32::from(field[2]),
        ))
    }

    /// Where the packed origins of `table` start (of `TABLES`: where the
    /// origin names start).
    fn packed_start(&self, table: usize) -> Option<usize> {
        let mut at = TABLES * ORIGIN_HEADER_ENTRY;
        for earlier in 0..table {
            at += packed_len(self.counts[earlier], self.field(earlier)?.1);
        }
        Some(at)
    }
}

/// Bytes `count` entries of `bits` bits take.
pub fn packed_len(count: u32, bits: u32) -> usize {
    (u64::from(count) * u64::from(bits)).div_ceil(8) as usize
}

/// The hash names are stored under: 64-bit FNV-1a over the dotted name's
/// bytes taken from the last to the first. Going backwards lets a guest hash
/// every suffix of a name in one pass (the hash of `example.com` is a step
/// on the way to the hash of `ads.example.com`).
pub fn name_hash(name: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET;
    for &byte in name.iter().rev() {
        hash = fnv_step(hash, byte);
    }
    hash
}

/// FNV-1a offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// One FNV-1a step.
pub fn fnv_step(hash: u64, byte: u8) -> u64 {
    (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
}

/// What every plugin defines besides `moat_decide` and `moat_explain`: the
/// panic handler (a trap the host counts as a fault), a `Buffer` type for
/// buffers the host reads and writes, the query buffer `QUERY`, the answer
/// buffer `ANSWER`, and the exports `moat_abi_version`,
/// `moat_query_buffer` and `moat_answer_buffer`.
#[macro_export]
macro_rules! plugin_glue {
    () => {
        #[panic_handler]
        fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
            core::arch::wasm32::unreachable()
        }

        /// A buffer shared with the host.
        struct Buffer<const N: usize>(core::cell::UnsafeCell<[u8; N]>);

        // SAFETY: a WASM instance runs one call at a time, on one thread.
        unsafe impl<const N: usize> Sync for Buffer<N> {}

        impl<const N: usize> Buffer<N> {
            const fn new() -> Self {
                Self(core::cell::UnsafeCell::new([0; N]))
            }

            fn address(&self) -> i32 {
                self.0.get() as i32
            }
        }

        static QUERY: Buffer<{ $crate::QUERY_CAPACITY }> = Buffer::new();

        static ANSWER: Buffer<{ $crate::ANSWER_CAPACITY }> = Buffer::new();

        /// The ABI version this plugin speaks.
        #[unsafe(no_mangle)]
        pub extern "C" fn moat_abi_version() -> i32 {
            $crate::ABI_VERSION
        }

        /// Address of the buffer the host writes the question into.
        #[unsafe(no_mangle)]
        pub extern "C" fn moat_query_buffer() -> i32 {
            QUERY.address()
        }

        /// Address of the buffer answers and explanations are written into.
        #[unsafe(no_mangle)]
        pub extern "C" fn moat_answer_buffer() -> i32 {
            ANSWER.address()
        }
    };
}

/// [`plugin_glue!`] and what a plugin configured in `[[policy.plugins]]`
/// reads and writes with: `query(len)`, the question in the query buffer;
/// `config()`, its configuration lines at [`DATA_BASE`]; `answer()`, the
/// answer buffer, to write records or an explanation into.
#[macro_export]
macro_rules! configured_plugin_glue {
    () => {
        $crate::plugin_glue!();

        /// The question the host wrote into the query buffer.
        #[allow(dead_code, reason = "not every plugin reads the question")]
        fn query(len: i32) -> $crate::Query<'static> {
            // SAFETY: the host wrote the buffer before this call; nothing else runs.
            let buffer: &[u8; $crate::QUERY_CAPACITY] = unsafe { &*QUERY.0.get() };
            $crate::Query::read(buffer, len)
        }

        /// The answer buffer, which the host reads after this call.
        #[allow(dead_code, reason = "not every plugin answers or explains")]
        fn answer() -> &'static mut [u8; $crate::ANSWER_CAPACITY] {
            // SAFETY: the host reads the answer buffer after this call;
            // nothing else runs meanwhile, and each call takes it once.
            unsafe { &mut *ANSWER.0.get() }
        }

        /// The plugin's configuration, if the compiler placed one.
        #[allow(dead_code, reason = "not every plugin is configured")]
        fn config() -> Option<$crate::ConfigLines<'static>> {
            // SAFETY: the compiler placed the configuration at DATA_BASE and
            // sized the memory to hold it; the memory's end bounds what is read.
            let data = unsafe {
                let end = core::arch::wasm32::memory_size(0) * 65_536;
                core::slice::from_raw_parts(
                    $crate::DATA_BASE as *const u8,
                    end.saturating_sub($crate::DATA_BASE as usize),
                )
            };
            $crate::ConfigLines::new(data)
        }
    };
}

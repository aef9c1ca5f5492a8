//! The DNS wire format on the hot path: reading a query and writing answers
//! into a reused buffer, without allocating.
//!
//! Everything else (upstream answers, building queries) goes through
//! hickory-proto; this module handles only what every query touches.

use std::borrow::Cow;
use std::net::IpAddr;

/// Length of the DNS header.
pub(crate) const HEADER_LEN: usize = 12;
/// Largest wire-format name.
pub(crate) const MAX_NAME_LEN: usize = 255;
/// UDP payload every client may receive (RFC 1035).
pub(crate) const MIN_UDP_PAYLOAD: u16 = 512;

/// RR type numbers used here.
pub(crate) mod rtype {
    /// IPv4 address.
    pub(crate) const A: u16 = 1;
    /// Start of authority.
    pub(crate) const SOA: u16 = 6;
    /// Alias.
    pub(crate) const CNAME: u16 = 5;
    /// IPv6 address.
    pub(crate) const AAAA: u16 = 28;
    /// EDNS(0) pseudo-record.
    pub(crate) const OPT: u16 = 41;
}

/// Flag bits in the high byte of the header's flags (its third byte).
mod flags_hi {
    /// This message is a response.
    pub(super) const QR: u8 = 0x80;
    /// The opcode, four bits.
    pub(super) const OPCODE: u8 = 0x78;
    /// Authoritative answer.
    pub(super) const AA: u8 = 0x04;
    /// Truncated.
    pub(super) const TC: u8 = 0x02;
    /// Recursion desired.
    pub(super) const RD: u8 = 0x01;
}

/// Flag bits in the low byte of the header's flags (its fourth byte).
mod flags_lo {
    /// Recursion available.
    pub(super) const RA: u8 = 0x80;
    /// Authentic data (RFC 4035 §3.2.3; in a query, RFC 6840 §5.7).
    pub(super) const AD: u8 = 0x20;
    /// Checking disabled.
    pub(super) const CD: u8 = 0x10;
    /// The low four bits of the response code.
    pub(super) const RCODE: u8 = 0x0f;
}

/// Response codes used here.
pub(crate) mod rcode {
    /// No error.
    pub(crate) const NOERROR: u16 = 0;
    /// The query was malformed.
    pub(crate) const FORMERR: u16 = 1;
    /// The server failed.
    pub(crate) const SERVFAIL: u16 = 2;
    /// The name does not exist.
    pub(crate) const NXDOMAIN: u16 = 3;
    /// The opcode is not implemented.
    pub(crate) const NOTIMP: u16 = 4;
    /// The query was refused.
    pub(crate) const REFUSED: u16 = 5;
    /// EDNS version not supported (extended).
    pub(crate) const BADVERS: u16 = 16;
}

/// A lower-cased wire-format name, held inline.
pub(crate) type WireName = heapless::Vec<u8, MAX_NAME_LEN>;

/// What identifies a cacheable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct QuestionKey {
    /// Lower-cased wire-format name.
    pub name: WireName,
    /// Query type.
    pub qtype: u16,
    /// Query class.
    pub qclass: u16,
    /// The client asked for DNSSEC records (EDNS DO bit).
    pub dnssec_ok: bool,
    /// The client asked for no validation (the CD bit): such an answer is
    /// never given to a client that did not.
    pub checking_disabled: bool,
}

impl std::hash::Hash for QuestionKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        hash_question(
            &self.name,
            self.qtype,
            self.qclass,
            self.dnssec_bits(),
            state,
        );
    }
}

impl QuestionKey {
    /// DO and CD as the two low bits of one byte, as `hash_question` takes them.
    pub(crate) fn dnssec_bits(&self) -> u8 {
        u8::from(self.dnssec_ok) | u8::from(self.checking_disabled) << 1
    }
}

/// The one hash of a question, shared by every key type that stands for
/// one; `dnssec` holds its DO and CD bits (`QuestionKey::dnssec_bits`).
pub(crate) fn hash_question<H: std::hash::Hasher>(
    name: &[u8],
    qtype: u16,
    qclass: u16,
    dnssec: u8,
    state: &mut H,
) {
    state.write(name);
    state.write_u16(qtype);
    state.write_u16(qclass);
    state.write_u8(dnssec);
}

/// The EDNS(0) options a query carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Edns {
    /// Largest UDP answer the client accepts.
    pub payload: u16,
    /// The DNSSEC OK bit.
    pub dnssec_ok: bool,
}

/// A well-formed query, borrowed from the receive buffer (or owned, once
/// it waits for an upstream: see `into_owned`).
#[derive(Debug)]
pub(crate) struct Query<'a> {
    /// The bytes as received.
    bytes: Cow<'a, [u8]>,
    /// End of the question section in `bytes`.
    question_end: usize,
    /// Cache key of the question.
    pub key: QuestionKey,
    /// The name in dotted form, lower case, no trailing dot.
    pub dotted: DottedName,
    /// EDNS(0) options, if the query had an OPT record.
    pub edns: Option<Edns>,
}

/// Why a message could not be served as a query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    /// Not a query at all (too short, or a response): say nothing.
    Ignore,
    /// Answer with this response code and no records.
    Reply {
        /// Response code (extended codes above 15 need EDNS).
        rcode: u16,
        /// The question section is well formed and can be echoed.
        question_end: Option<usize>,
        /// EDNS of the query, if it was readable.
        edns: Option<Edns>,
    },
}

impl<'a> Query<'a> {
    /// Parses a query. Never panics, whatever the bytes.
    pub(crate) fn parse(bytes: &'a [u8]) -> Result<Self, Rejection> {
        if bytes.len() < HEADER_LEN || is_response(bytes) {
            return Err(Rejection::Ignore);
        }
        let formerr = |question_end| Rejection::Reply {
            rcode: rcode::FORMERR,
            question_end,
            edns: None,
        };
        if bytes[2] & flags_hi::OPCODE != 0 {
            return Err(Rejection::Reply {
                rcode: rcode::NOTIMP,
                question_end: None,
                edns: None,
            });
        }
        if read_u16(bytes, 4) != Some(1) {
            return Err(formerr(None));
        }
        let (name, dotted, at) = read_name(bytes, HEADER_LEN).ok_or(formerr(None))?;
        let qtype = read_u16(bytes, at).ok_or(formerr(None))?;
        let qclass = read_u16(bytes, at + 2).ok_or(formerr(None))?;
        let question_end = at + 4;
        let edns = read_edns(bytes, question_end).map_err(|_| formerr(Some(question_end)))?;
        if let Some((_, version)) = edns
            && version != 0
        {
            return Err(Rejection::Reply {
                rcode: rcode::BADVERS,
                question_end: Some(question_end),
                edns: edns.map(|(edns, _)| edns),
            });
        }
        let edns = edns.map(|(edns, _)| edns);
        Ok(Self {
            bytes: Cow::Borrowed(bytes),
            question_end,
            key: QuestionKey {
                name,
                qtype,
                qclass,
                dnssec_ok: edns.is_some_and(|edns| edns.dnssec_ok),
                checking_disabled: bytes[3] & flags_lo::CD != 0,
            },
            dotted,
            edns,
        })
    }

    /// Whether the client understands AD in an answer: it set DO or AD.
    pub(crate) fn wants_ad(&self) -> bool {
        self.key.dnssec_ok || self.bytes[3] & flags_lo::AD != 0
    }

    /// The question section as received (original letter case).
    pub(crate) fn question(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..self.question_end]
    }

    /// The same query holding its own copy of the bytes, to outlive the
    /// receive buffer without being parsed again.
    pub(crate) fn into_owned(self) -> Query<'static> {
        Query {
            bytes: Cow::Owned(self.bytes.into_owned()),
            question_end: self.question_end,
            key: self.key,
            dotted: self.dotted,
            edns: self.edns,
        }
    }

    /// Largest answer this client accepts over UDP, given our own limit.
    pub(crate) fn udp_limit(&self, server_max: u16) -> usize {
        let asked = self.edns.map_or(MIN_UDP_PAYLOAD, |edns| edns.payload);
        asked.clamp(MIN_UDP_PAYLOAD, server_max.max(MIN_UDP_PAYLOAD)) as usize
    }
}

/// A lower-cased name in dotted form, no trailing dot, held inline.
pub(crate) type DottedName = heapless::Vec<u8, MAX_NAME_LEN>;

/// Reads the uncompressed name at `at`, lower-cased, in wire and dotted
/// form, and where it ends.
pub(crate) fn read_name(bytes: &[u8], mut at: usize) -> Option<(WireName, DottedName, usize)> {
    let mut name = WireName::new();
    let mut dotted = DottedName::new();
    loop {
        let len = *bytes.get(at)? as usize;
        if len == 0 {
            name.push(0).ok()?;
            return Some((name, dotted, at + 1));
        }
        if len > 63 {
            return None;
        }
        let label = bytes.get(at + 1..at + 1 + len)?;
        name.push(len as u8).ok()?;
        if !dotted.is_empty() {
            dotted.push(b'.').ok()?;
        }
        for &byte in label {
            let lower = byte.to_ascii_lowercase();
            name.push(lower).ok()?;
            dotted.push(lower).ok()?;
        }
        at += 1 + len;
    }
}

/// Reads the OPT record, if any, from the sections after the question.
/// Returns the options and the EDNS version.
fn read_edns(bytes: &[u8], mut at: usize) -> Result<Option<(Edns, u8)>, ()> {
    let records = (3..=5)
        .map(|field| read_u16(bytes, field * 2).map(usize::from))
        .sum::<Option<usize>>()
        .ok_or(())?;
    let mut found = None;
    for index in 0..records {
        let owner = at;
        at = skip_name(bytes, at).ok_or(())?;
        let fixed = bytes.get(at..at + 10).ok_or(())?;
        let kind = u16::from_be_bytes([fixed[0], fixed[1]]);
        let rdlen = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        let additional = index >= records - read_u16(bytes, 10).ok_or(())? as usize;
        if kind == rtype::OPT {
            if found.is_some() || !additional || bytes[owner] != 0 {
                return Err(());
            }
            let payload = u16::from_be_bytes([fixed[2], fixed[3]]);
            let version = fixed[5];
            let dnssec_ok = fixed[6] & 0x80 != 0;
            found = Some((Edns { payload, dnssec_ok }, version));
        }
        at += 10 + rdlen;
        if at > bytes.len() {
            return Err(());
        }
    }
    Ok(found)
}

/// Skips a possibly compressed name; returns the offset after it.
pub(crate) fn skip_name(bytes: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *bytes.get(at)?;
        match len & 0xc0 {
            0x00 if len == 0 => return Some(at + 1),
            0x00 => at += 1 + len as usize,
            0xc0 => return (at + 2 <= bytes.len()).then_some(at + 2),
            _ => return None,
        }
    }
}

/// Offsets of the TTL field of every record in a message (OPT excluded),
/// or `None` if the message is malformed.
pub(crate) fn ttl_offsets(bytes: &[u8]) -> Option<Vec<u16>> {
    let questions = read_u16(bytes, 4)?;
    let records: usize = (3..=5)
        .map(|field| read_u16(bytes, field * 2).map(usize::from))
        .sum::<Option<usize>>()?;
    let mut at = HEADER_LEN;
    for _ in 0..questions {
        at = skip_name(bytes, at)? + 4;
    }
    let mut offsets = Vec::with_capacity(records);
    for _ in 0..records {
        at = skip_name(bytes, at)?;
        let fixed = bytes.get(at..at + 10)?;
        if u16::from_be_bytes([fixed[0], fixed[1]]) != rtype::OPT {
            offsets.push(u16::try_from(at + 4).ok()?);
        }
        at += 10 + u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
    }
    (at <= bytes.len()).then_some(offsets)
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*bytes.get(at)?, *bytes.get(at + 1)?]))
}

fn add_to_count(out: &mut [u8], field: usize, by: u16) {
    let at = field * 2;
    let count = u16::from_be_bytes([out[at], out[at + 1]]).wrapping_add(by);
    out[at..at + 2].copy_from_slice(&count.to_be_bytes());
}

/// Index of the answer count in the header, in 16-bit fields.
const ANCOUNT: usize = 3;
/// Index of the authority count.
const NSCOUNT: usize = 4;
/// Index of the additional count.
const ARCOUNT: usize = 5;

/// Starts a response to `query`: header and echoed question, no records.
pub(crate) fn begin_response(query: &Query<'_>, rcode: u16, out: &mut Vec<u8>) {
    begin_reply(&query.bytes, Some(query.question_end), rcode, out);
}

fn begin_reply(request: &[u8], question_end: Option<usize>, rcode: u16, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&request[..2]);
    // QR, the query's opcode and RD; RA; the query's CD; the low rcode bits.
    out.push(flags_hi::QR | (request[2] & (flags_hi::OPCODE | flags_hi::RD)));
    out.push(flags_lo::RA | (request[3] & flags_lo::CD) | (rcode as u8 & flags_lo::RCODE));
    let questions = u16::from(question_end.is_some());
    out.extend_from_slice(&questions.to_be_bytes());
    out.extend_from_slice(&[0; 6]);
    if let Some(end) = question_end {
        out.extend_from_slice(&request[HEADER_LEN..end]);
    }
}

/// Writes the reply to a message that `Query::parse` rejected.
/// Returns false when nothing should be sent.
pub(crate) fn write_rejection(request: &[u8], rejection: Rejection, out: &mut Vec<u8>) -> bool {
    let Rejection::Reply {
        rcode,
        question_end,
        edns,
    } = rejection
    else {
        return false;
    };
    begin_reply(request, question_end, rcode, out);
    if let Some(edns) = edns {
        push_opt(out, edns, rcode);
    }
    true
}

/// Appends our OPT record, echoing the DO bit and the extended rcode.
fn push_opt(out: &mut Vec<u8>, edns: Edns, rcode: u16) {
    out.extend_from_slice(&[0, 0, 41]);
    out.extend_from_slice(&crate::dns::SERVER_UDP_PAYLOAD.to_be_bytes());
    out.push((rcode >> 4) as u8);
    out.push(0);
    out.push(if edns.dnssec_ok { 0x80 } else { 0 });
    out.extend_from_slice(&[0, 0, 0]);
    add_to_count(out, ARCOUNT, 1);
}

/// Ends a response: adds OPT if the query had EDNS and, over UDP, cuts it
/// to the header and question with TC set if it does not fit `limit`.
pub(crate) fn finish_response(query: &Query<'_>, limit: Option<usize>, out: &mut Vec<u8>) {
    const OPT_LEN: usize = 11;
    let opt_len = if query.edns.is_some() { OPT_LEN } else { 0 };
    if let Some(limit) = limit
        && out.len() + opt_len > limit
    {
        out.truncate(HEADER_LEN + query.question().len());
        out[2] |= flags_hi::TC;
        out[6..12].fill(0);
    }
    if let Some(edns) = query.edns {
        push_opt(out, edns, response_code(out));
    }
}

/// Turns a cached response, copied into `out`, into the answer to `query`:
/// its ID, RD and CD bits, RA set, its question in the letter case the
/// client wrote it, and the stored AD bit only if the query set DO or AD
/// (RFC 6840 §5.8).
pub(crate) fn readdress(query: &Query<'_>, out: &mut [u8]) {
    out[..2].copy_from_slice(&query.bytes[..2]);
    out[2] = flags_hi::QR | (query.bytes[2] & flags_hi::RD);
    let keep = flags_lo::RCODE | if query.wants_ad() { flags_lo::AD } else { 0 };
    out[3] = (out[3] & keep) | flags_lo::RA | (query.bytes[3] & flags_lo::CD);
    let question = query.question();
    if let Some(slot) = out.get_mut(HEADER_LEN..HEADER_LEN + question.len()) {
        slot.copy_from_slice(question);
    }
}

/// Marks a response being written as truncated: the client should ask
/// again over TCP.
pub(crate) fn set_truncated(out: &mut [u8]) {
    out[2] |= flags_hi::TC;
}

/// Marks a response being written as authoritative.
pub(crate) fn set_authoritative(out: &mut [u8]) {
    out[2] |= flags_hi::AA;
}

/// The response code in the header (the low four bits; extended codes live
/// in the OPT record).
pub(crate) fn response_code(message: &[u8]) -> u16 {
    message
        .get(3)
        .map_or(0, |flags| u16::from(flags & flags_lo::RCODE))
}

/// Whether a message has the QR bit set.
pub(crate) fn is_response(message: &[u8]) -> bool {
    message
        .get(2)
        .is_some_and(|flags| flags & flags_hi::QR != 0)
}

/// Whether a message has the TC bit set.
pub(crate) fn is_truncated(message: &[u8]) -> bool {
    message
        .get(2)
        .is_some_and(|flags| flags & flags_hi::TC != 0)
}

/// Appends one record whose owner is the question name.
pub(crate) fn push_answer_record(
    out: &mut Vec<u8>,
    section: Section,
    kind: u16,
    ttl: u32,
    rdata: &[u8],
) {
    push_record(out, section, HEADER_LEN, kind, ttl, rdata);
}

/// Appends one record whose owner is the name at offset `owner` of `out`
/// (below 0x4000: the question, or a name in an earlier record's RDATA).
/// Returns where its RDATA starts.
pub(crate) fn push_record(
    out: &mut Vec<u8>,
    section: Section,
    owner: usize,
    kind: u16,
    ttl: u32,
    rdata: &[u8],
) -> usize {
    out.extend_from_slice(&(0xc000 | (owner as u16 & 0x3fff)).to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    let start = out.len();
    out.extend_from_slice(rdata);
    add_to_count(out, section as usize, 1);
    start
}

/// A section of a response that records are added to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    /// The answer section.
    Answer = ANCOUNT as isize,
    /// The authority section.
    Authority = NSCOUNT as isize,
}

/// Appends the SOA that makes a synthesized negative answer cacheable for
/// `ttl` seconds (RFC 2308).
pub(crate) fn push_soa(out: &mut Vec<u8>, ttl: u32) {
    let mut rdata = [0u8; 40];
    rdata[..6].copy_from_slice(b"\x04moat\x00");
    rdata[6..20].copy_from_slice(b"\x07blocked\x04moat\x00");
    for (index, value) in [1u32, 3600, 600, 86_400, ttl].into_iter().enumerate() {
        rdata[20 + index * 4..24 + index * 4].copy_from_slice(&value.to_be_bytes());
    }
    push_answer_record(out, Section::Authority, rtype::SOA, ttl, &rdata);
}

/// Appends the SOA of a zone served here (RFC 6303 §3) whose apex is the
/// name at offset `apex` of `out`: MNAME the apex, RNAME `nobody.invalid`,
/// negative answers cacheable for `ttl` seconds.
pub(crate) fn push_zone_soa(out: &mut Vec<u8>, apex: usize, ttl: u32) {
    let mut rdata = Vec::with_capacity(38);
    rdata.extend_from_slice(&(0xc000 | (apex as u16 & 0x3fff)).to_be_bytes());
    rdata.extend_from_slice(b"\x06nobody\x07invalid\x00");
    for value in [1u32, 3600, 1200, 604_800, ttl] {
        rdata.extend_from_slice(&value.to_be_bytes());
    }
    push_record(out, Section::Authority, apex, rtype::SOA, ttl, &rdata);
}

/// Appends address records of the query's family (A or AAAA) from `ips`.
/// Returns how many were written.
pub(crate) fn push_addresses(out: &mut Vec<u8>, qtype: u16, ttl: u32, ips: &[IpAddr]) -> usize {
    let mut written = 0;
    for ip in ips {
        match (qtype, ip) {
            (rtype::A, IpAddr::V4(v4)) => {
                push_answer_record(out, Section::Answer, rtype::A, ttl, &v4.octets())
            }
            (rtype::AAAA, IpAddr::V6(v6)) => {
                push_answer_record(out, Section::Answer, rtype::AAAA, ttl, &v6.octets())
            }
            _ => continue,
        }
        written += 1;
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query_bytes(name: &str, qtype: u16, edns: Option<(u16, u8, bool)>) -> Vec<u8> {
        let mut bytes = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        for label in name.split('.').filter(|label| !label.is_empty()) {
            bytes.push(label.len() as u8);
            bytes.extend_from_slice(label.as_bytes());
        }
        bytes.push(0);
        bytes.extend_from_slice(&qtype.to_be_bytes());
        bytes.extend_from_slice(&1u16.to_be_bytes());
        if let Some((payload, version, dnssec_ok)) = edns {
            bytes[11] = 1;
            bytes.extend_from_slice(&[0, 0, 41]);
            bytes.extend_from_slice(&payload.to_be_bytes());
            bytes.extend_from_slice(&[0, version, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
        }
        bytes
    }

    #[test]
    fn parses_name_type_and_edns() {
        let bytes = query_bytes("WWW.Example.com", 28, Some((4096, 0, true)));
        let query = Query::parse(&bytes).unwrap();
        assert_eq!(&query.bytes[..2], [0x12, 0x34]);
        assert_eq!(&query.dotted[..], b"www.example.com");
        assert_eq!(&query.key.name[..], b"\x03www\x07example\x03com\x00");
        assert_eq!(query.key.qtype, 28);
        assert!(query.key.dnssec_ok);
        assert_eq!(query.udp_limit(1232), 1232);
        assert_eq!(&query.question()[1..4], b"WWW");
    }

    #[test]
    fn unknown_edns_version_is_badvers() {
        let bytes = query_bytes("a.example", 1, Some((1232, 1, false)));
        let rejection = Query::parse(&bytes).unwrap_err();
        let mut out = Vec::new();
        assert!(write_rejection(&bytes, rejection, &mut out));
        assert_eq!(
            out[3] & 0x0f,
            0,
            "BADVERS lives in the OPT's extended rcode"
        );
        assert_eq!(out[out.len() - 6], 1, "extended rcode 1 => 16 = BADVERS");
    }

    #[test]
    fn responses_are_ignored_and_garbage_is_formerr() {
        let mut response = query_bytes("a.example", 1, None);
        response[2] |= 0x80;
        assert_eq!(Query::parse(&response).unwrap_err(), Rejection::Ignore);
        let mut truncated = query_bytes("a.example", 1, None);
        truncated.truncate(16);
        assert!(matches!(
            Query::parse(&truncated),
            Err(Rejection::Reply {
                rcode: rcode::FORMERR,
                ..
            })
        ));
    }

    #[test]
    fn truncation_sets_tc_and_keeps_question() {
        let bytes = query_bytes("big.example", 1, None);
        let query = Query::parse(&bytes).unwrap();
        let mut out = Vec::new();
        begin_response(&query, rcode::NOERROR, &mut out);
        for index in 0..40u8 {
            push_addresses(&mut out, 1, 60, &[IpAddr::from([10, 0, 0, index])]);
        }
        finish_response(&query, Some(query.udp_limit(1232)), &mut out);
        assert_eq!(out.len(), HEADER_LEN + query.question().len());
        assert_ne!(out[2] & 0x02, 0);
        assert_eq!(&out[6..8], &[0, 0]);
    }

    #[test]
    fn ttl_offsets_skip_opt() {
        let bytes = query_bytes("x.example", 1, None);
        let query = Query::parse(&bytes).unwrap();
        let mut out = Vec::new();
        begin_response(&query, rcode::NOERROR, &mut out);
        push_addresses(&mut out, 1, 77, &[IpAddr::from([192, 0, 2, 1])]);
        push_soa(&mut out, 55);
        let offsets = ttl_offsets(&out).unwrap();
        assert_eq!(offsets.len(), 2);
        let ttl =
            |at: u16| u32::from_be_bytes(out[at as usize..at as usize + 4].try_into().unwrap());
        assert_eq!((ttl(offsets[0]), ttl(offsets[1])), (77, 55));
    }
}

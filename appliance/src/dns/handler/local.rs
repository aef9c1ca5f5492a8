//! Answers written here, without an upstream: local records (following
//! their CNAMEs through the local records), the zones served locally
//! (RFC 6303, RFC 6761 `localhost`), and a local CNAME's answer joined
//! with its target's answer from the cache or an upstream.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use hickory_proto::op::Message;

use super::super::cache::Answer;
use super::super::wire::{self, Query, Section, rcode, rtype};
use super::super::zones::{LocalKind, LocalZone};
use crate::policy::{Decision, LocalAnswer, Policy, Question};

/// TTL of the SOA that makes "this local name has no such record" (and
/// the negative answers of a locally served zone) cacheable.
pub(super) const LOCAL_NODATA_TTL: u32 = 60;

/// The most CNAMEs followed through the local records for one answer.
const MAX_LOCAL_CNAMES: usize = 8;

/// Writes a local answer: authoritative, the records owned by the question
/// name, or NODATA with an SOA when the name has none of the asked type.
/// A CNAME is followed while its target has local records; the target it
/// ends at, if that has none (nor is blocked), is to be resolved the
/// normal way and joined to this answer (`join_target`): where its name
/// is in `out` is returned.
pub(super) fn write_local(
    query: &Query<'_>,
    answer: &LocalAnswer,
    policy: &dyn Policy,
    asked: &Question<'_>,
    out: &mut Vec<u8>,
) -> Option<usize> {
    wire::begin_response(query, rcode::NOERROR, out);
    wire::set_authoritative(out);
    let qtype = query.key.qtype;
    let (written, mut target) = push_local(out, wire::HEADER_LEN, answer, qtype);
    if written == 0 {
        wire::push_soa(out, LOCAL_NODATA_TTL);
    }
    for _ in 0..MAX_LOCAL_CNAMES {
        let at = target?;
        let (_, dotted, _) = wire::read_name(out, at)?;
        let question = Question {
            name: &dotted,
            ..*asked
        };
        match policy.decide(&question) {
            Decision::Answer(next) => target = push_local(out, at, &next, qtype).1,
            Decision::Block => return None,
            _ => return Some(at),
        }
    }
    None
}

/// Appends the records of `answer` owned by the name at `owner`; returns
/// how many, and where the target of a CNAME among them is (unless CNAME
/// was asked).
fn push_local(
    out: &mut Vec<u8>,
    owner: usize,
    answer: &LocalAnswer,
    qtype: u16,
) -> (usize, Option<usize>) {
    let mut written = 0;
    let mut target = None;
    for (kind, ttl, rdata) in answer.records() {
        let at = wire::push_record(out, Section::Answer, owner, kind, ttl, rdata);
        if kind == rtype::CNAME && qtype != rtype::CNAME && at < 0x4000 {
            target = Some(at);
        }
        written += 1;
    }
    (written, target)
}

/// Writes the answer of a zone served here: loopback addresses under
/// `localhost`, else NXDOMAIN below the apex and NODATA at it, with the
/// zone's SOA.
pub(super) fn write_zone(
    query: &Query<'_>,
    zone: LocalZone,
    own_addrs: &[IpAddr],
    out: &mut Vec<u8>,
) {
    const LOOPBACK: [IpAddr; 2] = [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ];
    let apex = wire::HEADER_LEN + zone.apex_at;
    let code = match zone.kind {
        LocalKind::Empty if zone.apex_at > 0 => rcode::NXDOMAIN,
        LocalKind::Empty | LocalKind::Loopback | LocalKind::OwnHost => rcode::NOERROR,
    };
    wire::begin_response(query, code, out);
    wire::set_authoritative(out);
    let addresses = match zone.kind {
        LocalKind::Loopback => &LOOPBACK[..],
        LocalKind::OwnHost => own_addrs,
        LocalKind::Empty => &[],
    };
    if wire::push_addresses(out, query.key.qtype, LOCAL_NODATA_TTL, addresses) == 0 {
        wire::push_zone_soa(out, apex, LOCAL_NODATA_TTL);
    }
}

/// Writes `local` (a local CNAME answer, written by `write_local`) with the
/// answer records of its target's `answer` appended, or its authority
/// records and response code when the target has no answer. Not
/// authoritative: part of it is the upstream's. TTLs as `Answer::write`.
pub(super) fn join_target(
    local: &[u8],
    answer: &Answer,
    now: Instant,
    ttl_override: Option<u32>,
    out: &mut Vec<u8>,
) {
    answer.write_unaddressed(now, ttl_override, out);
    let joined = Message::from_vec(local).ok().and_then(|mut message| {
        let target = Message::from_vec(out).ok()?;
        message.metadata.authoritative = false;
        message.metadata.response_code = target.metadata.response_code;
        match target.answers.is_empty() {
            true => message.authorities = target.authorities,
            false => message.answers.extend(target.answers),
        }
        message.to_vec().ok()
    });
    out.clear();
    out.extend_from_slice(joined.as_deref().unwrap_or(local));
}

//! The request path as one pure function over bytes, for the fuzzer and
//! for a randomized test: everything Moat answers must be valid DNS. Built
//! only for them (`cfg(fuzzing)`, which `cargo fuzz` sets, and `cfg(test)`).

use std::str::FromStr;

use hickory_proto::op::{Message, MessageType, OpCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record};

use crate::config::BlockedResponse;
use crate::dns::cache::{Answer, TtlRules};
use crate::dns::wire::{self, Query, rcode};

/// Parses `request` and writes every kind of answer Moat could give to it
/// (rejection, blocked in each mode, a cached answer, SERVFAIL), checking
/// that each is a DNS message that echoes the ID and fits the UDP limit.
pub fn request_path(request: &[u8]) {
    let mut out = Vec::new();
    let query = match Query::parse(request) {
        Ok(query) => query,
        Err(rejection) => {
            if wire::write_rejection(request, rejection, &mut out) {
                check(request, &out, None);
            }
            return;
        }
    };
    let limit = query.udp_limit(crate::dns::SERVER_UDP_PAYLOAD);
    let modes = [
        BlockedResponse::Nxdomain,
        BlockedResponse::Null,
        BlockedResponse::Refused,
        BlockedResponse::Nodata,
        BlockedResponse::Custom(vec![
            "10.0.0.1".parse().unwrap(),
            "fd00::1".parse().unwrap(),
        ]),
    ];
    for mode in &modes {
        crate::dns::handler::write_blocked(&query, mode, 60, &mut out);
        wire::finish_response(&query, Some(limit), &mut out);
        check(request, &out, Some(limit));
    }
    if let Some(answer) = cached_answer_for(&query) {
        answer.write(&query, crate::clock::now(), None, &mut out);
        wire::finish_response(&query, Some(limit), &mut out);
        check(request, &out, Some(limit));
    }
    wire::begin_response(&query, rcode::SERVFAIL, &mut out);
    wire::finish_response(&query, None, &mut out);
    check(request, &out, None);
}

fn cached_answer_for(query: &Query<'_>) -> Option<Answer> {
    let name = Name::from_str(&String::from_utf8_lossy(&query.dotted)).ok()?;
    let mut message = Message::new(0, MessageType::Response, OpCode::Query);
    let mut question = hickory_proto::op::Query::query(name.clone(), query.key.qtype.into());
    question.set_query_class(query.key.qclass.into());
    message.add_query(question);
    message.add_answer(Record::from_rdata(
        name,
        300,
        RData::A(A::new(192, 0, 2, 1)),
    ));
    // Only names that encode to the same wire form as asked can be cached under that key.
    let wire = message.to_vec().ok()?;
    let same_question = wire
        .get(wire::HEADER_LEN..wire::HEADER_LEN + query.question().len())
        .is_some_and(|asked| asked.eq_ignore_ascii_case(query.question()));
    let rules = TtlRules {
        min: 0,
        max: 86_400,
        negative: 3600,
    };
    same_question
        .then(|| Answer::from_upstream(message, rules, crate::clock::now()).ok())
        .flatten()
}

fn check(request: &[u8], answer: &[u8], limit: Option<usize>) {
    assert_eq!(answer[..2], request[..2], "ID echoed");
    assert!(wire::is_response(answer), "QR set");
    if let Some(limit) = limit {
        assert!(
            answer.len() <= limit,
            "{} bytes over the {limit}-byte limit",
            answer.len()
        );
    }
    if let Err(err) = Message::from_vec(answer) {
        panic!("unparseable answer ({err}) to {request:02x?}: {answer:02x?}");
    }
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    /// The fuzz target's property on many random and mutated inputs.
    #[test]
    fn random_requests_get_valid_answers() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let seed = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01\x03www\x07example\x03com\x00\x00\x01\x00\x01\x00\x00\x29\x04\xd0\x00\x00\x80\x00\x00\x00";
        for round in 0..50_000 {
            let mut input = seed.to_vec();
            if round % 4 == 0 {
                input = (0..rng.random_range(0..80)).map(|_| rng.random()).collect();
            } else {
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..input.len());
                    input[at] = rng.random();
                }
                input.truncate(rng.random_range(0..=input.len()));
            }
            request_path(&input);
        }
    }
}

//! What the mDNS responder answers (RFC 6762) and the DNS-SD services it
//! advertises (RFC 6763): a pure function from a received packet to the
//! reply to send, if any, with the per-second bounds a LAN peer cannot
//! push past.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{A, AAAA, PTR, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use moat_proto::{ApplianceName, Fingerprint};

/// The mDNS port, which a query from any other port marks as a "legacy
/// unicast" question (RFC 6762 §6.7): answered to its sender, with its ID.
pub(crate) const MDNS_PORT: u16 = 5353;

/// The DNS-SD service type of the control plane (the web UI and API).
pub(crate) const CONTROL_SERVICE: &str = "_moat._tcp.local.";

/// The DNS-SD service type of a primary's sync endpoint (QUIC).
pub(crate) const SYNC_SERVICE: &str = "_moat-sync._udp.local.";

/// The name DNS-SD browsers ask for every service type (RFC 6763 §9).
const SERVICE_TYPES: &str = "_services._dns-sd._udp.local.";

/// TTL of the records naming this host (addresses, SRV), RFC 6762 §10.
const HOST_TTL: u32 = 120;
/// TTL of the other records (PTR, TXT).
const OTHER_TTL: u32 = 4500;
/// The longest TTL a legacy unicast answer may carry (RFC 6762 §6.7).
const LEGACY_TTL: u32 = 10;
/// The class bit that says "this record replaces what you cached".
const CACHE_FLUSH: u16 = 0x8000;

/// The most questions of one packet looked at.
const MAX_QUESTIONS: usize = 16;
/// The most replies sent to single senders per second, in all: a LAN
/// peer spoofing sources cannot turn the responder into a flood.
pub(crate) const UNICAST_PER_SECOND: u32 = 20;
/// How long the same answer is not multicast again (RFC 6762 §6).
const MULTICAST_INTERVAL: Duration = Duration::from_secs(1);

/// What this appliance advertises on its links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Advertised {
    /// The host label: the appliance answers `<name>.local`.
    pub(crate) name: ApplianceName,
    /// The port of the control plane.
    pub(crate) control_port: u16,
    /// Whether the control plane speaks TLS.
    pub(crate) control_tls: bool,
    /// On a primary: its sync endpoint.
    pub(crate) sync: Option<SyncEndpoint>,
}

/// A primary's sync endpoint as advertised.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyncEndpoint {
    /// The UDP port replicas dial.
    pub(crate) port: u16,
    /// The primary's certificate, so a joining appliance can skip itself.
    pub(crate) fingerprint: Fingerprint,
}

/// Where a reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Destination {
    /// To the mDNS group of the link the question came on.
    Multicast,
    /// To the one sender.
    Unicast(SocketAddr),
}

/// A reply to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    /// Where to.
    pub(crate) to: Destination,
    /// The DNS message.
    pub(crate) bytes: Vec<u8>,
}

/// The responder: the records of [`Advertised`] and the bounds on replies.
#[derive(Debug)]
pub(crate) struct Responder {
    advertised: Advertised,
    host: Name,
    last_multicast: Vec<(Name, RecordType, Instant)>,
    unicast_window: (Instant, u32),
}

impl Responder {
    /// A responder for `advertised`, its bounds starting at `now`.
    pub(crate) fn new(advertised: Advertised, now: Instant) -> Self {
        Self {
            host: host_name(&advertised.name),
            advertised,
            last_multicast: Vec::new(),
            unicast_window: (now, 0),
        }
    }

    /// What is advertised now.
    pub(crate) fn advertised(&self) -> &Advertised {
        &self.advertised
    }

    /// The reply to `packet` from `from`, answering with `addrs` (this
    /// host's addresses on the link it came in on); none when it asks
    /// nothing of ours, is not a query, or a bound is reached.
    pub(crate) fn reply(
        &mut self,
        packet: &[u8],
        from: SocketAddr,
        addrs: &[IpAddr],
        now: Instant,
    ) -> Option<Reply> {
        let request = Message::from_vec(packet).ok()?;
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            return None;
        }
        let records = self.records(addrs);
        let legacy = from.port() != MDNS_PORT;
        let mut answers = Vec::new();
        let mut unicast = legacy;
        for question in request.queries.iter().take(MAX_QUESTIONS) {
            let class = u16::from(question.query_class);
            if class & !CACHE_FLUSH != u16::from(DNSClass::IN) {
                continue;
            }
            unicast |= class & CACHE_FLUSH != 0;
            let matching = records
                .iter()
                .filter(|record| answers_question(record, question));
            for record in matching {
                if !answers.contains(record) {
                    answers.push(record.clone());
                }
            }
        }
        if answers.is_empty() {
            return None;
        }
        let to = match unicast {
            true => Destination::Unicast(from),
            false => Destination::Multicast,
        };
        if !self.within_bounds(to, &answers, now) {
            return None;
        }
        let additionals = additionals_for(&answers, &records);
        let mut reply = match legacy {
            true => Message::response(request.metadata.id, OpCode::Query),
            false => Message::response(0, OpCode::Query),
        };
        reply.metadata.authoritative = true;
        if legacy {
            reply.queries = request.queries.into_iter().take(MAX_QUESTIONS).collect();
        }
        reply.answers = answers;
        reply.additionals = additionals;
        for record in reply.answers.iter_mut().chain(&mut reply.additionals) {
            mark_for(record, legacy);
        }
        let bytes = reply.to_vec().ok()?;
        Some(Reply { to, bytes })
    }

    /// The unsolicited response announcing every record (RFC 6762 §8.3).
    pub(crate) fn announcement(&self, addrs: &[IpAddr]) -> Vec<u8> {
        let mut message = Message::response(0, OpCode::Query);
        message.metadata.authoritative = true;
        message.answers = self.records(addrs);
        for record in &mut message.answers {
            mark_for(record, false);
        }
        message.to_vec().unwrap_or_default()
    }

    fn within_bounds(&mut self, to: Destination, answers: &[Record], now: Instant) -> bool {
        match to {
            Destination::Unicast(_) => {
                let (started, sent) = &mut self.unicast_window;
                if now.saturating_duration_since(*started) >= Duration::from_secs(1) {
                    (*started, *sent) = (now, 0);
                }
                *sent += 1;
                *sent <= UNICAST_PER_SECOND
            }
            Destination::Multicast => {
                let first = &answers[0];
                let key = (first.name.clone(), first.record_type());
                self.last_multicast
                    .retain(|(.., at)| now.saturating_duration_since(*at) < MULTICAST_INTERVAL);
                if self
                    .last_multicast
                    .iter()
                    .any(|(name, rtype, _)| (name, *rtype) == (&key.0, key.1))
                {
                    return false;
                }
                self.last_multicast.push((key.0, key.1, now));
                true
            }
        }
    }

    /// Every record this host owns, with `addrs` as its addresses.
    fn records(&self, addrs: &[IpAddr]) -> Vec<Record> {
        let mut records: Vec<Record> = addrs
            .iter()
            .map(|addr| match addr {
                IpAddr::V4(v4) => Record::from_rdata(self.host.clone(), HOST_TTL, RData::A(A(*v4))),
                IpAddr::V6(v6) => {
                    Record::from_rdata(self.host.clone(), HOST_TTL, RData::AAAA(AAAA(*v6)))
                }
            })
            .collect();
        let scheme = match self.advertised.control_tls {
            true => "https",
            false => "http",
        };
        let control = [format!("scheme={scheme}"), "path=/".into()];
        self.push_service(
            &mut records,
            CONTROL_SERVICE,
            self.advertised.control_port,
            &control,
        );
        if let Some(sync) = &self.advertised.sync {
            let txt = [format!("fp={}", sync.fingerprint)];
            self.push_service(&mut records, SYNC_SERVICE, sync.port, &txt);
        }
        records
    }

    /// A service's records (RFC 6763 §4, §6): the type's PTR to this
    /// instance, the instance's SRV and TXT, and the type's listing under
    /// the service enumeration name.
    fn push_service(&self, records: &mut Vec<Record>, service: &str, port: u16, txt: &[String]) {
        let Ok(service) = Name::from_ascii(service) else {
            return;
        };
        let Ok(instance) = Name::from_ascii(self.advertised.name.as_str())
            .and_then(|label| label.append_domain(&service))
        else {
            return;
        };
        let Ok(types) = Name::from_ascii(SERVICE_TYPES) else {
            return;
        };
        records.extend([
            Record::from_rdata(types, OTHER_TTL, RData::PTR(PTR(service.clone()))),
            Record::from_rdata(service, OTHER_TTL, RData::PTR(PTR(instance.clone()))),
            Record::from_rdata(
                instance.clone(),
                HOST_TTL,
                RData::SRV(SRV::new(0, 0, port, self.host.clone())),
            ),
            Record::from_rdata(instance, OTHER_TTL, RData::TXT(TXT::new(txt.to_vec()))),
        ]);
    }
}

/// `<name>.local.`
pub(crate) fn host_name(name: &ApplianceName) -> Name {
    Name::from_ascii(format!("{}.local.", name.as_str())).unwrap_or_else(|_| Name::root())
}

fn answers_question(record: &Record, question: &Query) -> bool {
    record.name == question.name
        && (question.query_type == RecordType::ANY || question.query_type == record.record_type())
}

/// What RFC 6763 §12 says to add: for a PTR, the instance's SRV and TXT;
/// for an SRV, the target's addresses.
fn additionals_for(answers: &[Record], records: &[Record]) -> Vec<Record> {
    let mut additionals: Vec<Record> = Vec::new();
    let add_owned_by = |owner: &Name, additionals: &mut Vec<Record>| {
        for record in records.iter().filter(|record| &record.name == owner) {
            if !answers.contains(record) && !additionals.contains(record) {
                additionals.push(record.clone());
            }
        }
    };
    for answer in answers {
        match &answer.data {
            RData::PTR(PTR(instance)) => add_owned_by(instance, &mut additionals),
            RData::SRV(srv) => add_owned_by(&srv.target, &mut additionals),
            _ => {}
        }
    }
    let targets: Vec<Name> = additionals
        .iter()
        .filter_map(|record| match &record.data {
            RData::SRV(srv) => Some(srv.target.clone()),
            _ => None,
        })
        .collect();
    for target in targets {
        add_owned_by(&target, &mut additionals);
    }
    additionals
}

/// Sets the class bits and TTL a record carries in a multicast response
/// (cache-flush on the records only this host owns) or a legacy one.
fn mark_for(record: &mut Record, legacy: bool) {
    if legacy {
        record.ttl = record.ttl.min(LEGACY_TTL);
        return;
    }
    let shared = record.record_type() == RecordType::PTR;
    if !shared {
        record.dns_class = DNSClass::Unknown(u16::from(DNSClass::IN) | CACHE_FLUSH);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::mdns::browse::Browse;

    fn advertised(sync: bool) -> Advertised {
        Advertised {
            name: "hq".parse().unwrap(),
            control_port: 443,
            control_tls: true,
            sync: sync.then_some(SyncEndpoint {
                port: 8853,
                fingerprint: Fingerprint([7; 32]),
            }),
        }
    }

    fn question(name: &str, rtype: RecordType, class: u16, id: u16) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = id;
        let mut query = Query::query(Name::from_ascii(name).unwrap(), rtype);
        query.query_class = DNSClass::from(class);
        message.queries = vec![query];
        message.to_vec().unwrap()
    }

    const LAN: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20));
    const PEER_MDNS: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 7)), 5353);
    const PEER_LEGACY: SocketAddr =
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 7)), 40000);

    fn answers(reply: &Reply) -> Message {
        Message::from_vec(&reply.bytes).unwrap()
    }

    #[test]
    fn the_host_name_answers_its_address_multicast_with_cache_flush() {
        let now = crate::clock::now();
        let mut responder = Responder::new(advertised(false), now);
        let reply = responder
            .reply(
                &question("HQ.local.", RecordType::A, 1, 0),
                PEER_MDNS,
                &[LAN],
                now,
            )
            .expect("its own name is answered, whatever the case");
        assert_eq!(reply.to, Destination::Multicast);
        let message = answers(&reply);
        assert_eq!(message.metadata.id, 0);
        assert!(message.metadata.authoritative && message.queries.is_empty());
        assert_eq!(message.answers.len(), 1);
        assert_eq!(
            message.answers[0].data,
            RData::A(A(Ipv4Addr::new(192, 168, 1, 20)))
        );
        assert_eq!(
            u16::from(message.answers[0].dns_class),
            0x8001,
            "cache-flush on a unique record"
        );
        assert_eq!(message.answers[0].ttl, HOST_TTL);
    }

    #[test]
    fn a_legacy_query_is_answered_to_its_sender_with_its_id_and_short_ttls() {
        let now = crate::clock::now();
        let mut responder = Responder::new(advertised(false), now);
        let reply = responder
            .reply(
                &question("hq.local.", RecordType::A, 1, 4242),
                PEER_LEGACY,
                &[LAN],
                now,
            )
            .unwrap();
        assert_eq!(reply.to, Destination::Unicast(PEER_LEGACY));
        let message = answers(&reply);
        assert_eq!(message.metadata.id, 4242);
        assert_eq!(
            message.queries.len(),
            1,
            "the question is echoed (RFC 6762 §6.7)"
        );
        assert_eq!(message.answers[0].ttl, LEGACY_TTL);
        assert_eq!(message.answers[0].dns_class, DNSClass::IN);
    }

    #[test]
    fn a_unicast_response_bit_gets_a_unicast_reply() {
        let now = crate::clock::now();
        let mut responder = Responder::new(advertised(false), now);
        let packet = question("hq.local.", RecordType::A, 0x8001, 0);
        let reply = responder.reply(&packet, PEER_MDNS, &[LAN], now).unwrap();
        assert_eq!(reply.to, Destination::Unicast(PEER_MDNS));
    }

    #[test]
    fn other_names_classes_and_responses_get_nothing() {
        let now = crate::clock::now();
        let mut responder = Responder::new(advertised(true), now);
        for packet in [
            question("printer.local.", RecordType::A, 1, 0),
            question("hq.local.", RecordType::A, 3, 0),
            question("_other._tcp.local.", RecordType::PTR, 1, 0),
            responder.announcement(&[LAN]),
            b"\x00\x01garbage".to_vec(),
        ] {
            assert_eq!(responder.reply(&packet, PEER_MDNS, &[LAN], now), None);
        }
    }

    #[test]
    fn the_sync_service_is_advertised_only_on_a_primary_with_it_bound() {
        let now = crate::clock::now();
        let ask = question(SYNC_SERVICE, RecordType::PTR, 1, 9);
        let mut replica = Responder::new(advertised(false), now);
        assert_eq!(replica.reply(&ask, PEER_LEGACY, &[LAN], now), None);
        let mut primary = Responder::new(advertised(true), now);
        let reply = primary.reply(&ask, PEER_LEGACY, &[LAN], now).unwrap();
        let mut browse = Browse::new(SYNC_SERVICE).unwrap();
        browse.hear(&reply.bytes);
        let found = browse.found();
        assert_eq!(
            found.len(),
            1,
            "the PTR's SRV, TXT and A come along: {found:?}"
        );
        assert_eq!(found[0].instance, "hq");
        assert_eq!((found[0].port, found[0].addrs.clone()), (8853, vec![LAN]));
        assert_eq!(
            found[0].txt("fp"),
            Some(Fingerprint([7; 32]).to_string().as_str())
        );
    }

    #[test]
    fn services_are_enumerated_and_the_control_plane_says_its_scheme() {
        let now = crate::clock::now();
        let mut responder = Responder::new(advertised(true), now);
        let reply = responder
            .reply(
                &question(SERVICE_TYPES, RecordType::PTR, 1, 1),
                PEER_LEGACY,
                &[LAN],
                now,
            )
            .unwrap();
        let types: Vec<String> = answers(&reply)
            .answers
            .iter()
            .map(|r| r.data.to_string())
            .collect();
        assert_eq!(types, [CONTROL_SERVICE, SYNC_SERVICE]);
        let mut browse = Browse::new(CONTROL_SERVICE).unwrap();
        let reply = responder
            .reply(
                &question(CONTROL_SERVICE, RecordType::PTR, 1, 2),
                PEER_LEGACY,
                &[LAN],
                now,
            )
            .unwrap();
        browse.hear(&reply.bytes);
        let found = browse.found();
        assert_eq!(
            (found[0].port, found[0].txt("scheme")),
            (443, Some("https"))
        );
    }

    #[test]
    fn the_same_answer_is_multicast_at_most_once_a_second() {
        let start = crate::clock::now();
        let mut responder = Responder::new(advertised(false), start);
        let ask = question("hq.local.", RecordType::A, 1, 0);
        assert!(responder.reply(&ask, PEER_MDNS, &[LAN], start).is_some());
        let soon = start + Duration::from_millis(500);
        assert_eq!(responder.reply(&ask, PEER_MDNS, &[LAN], soon), None);
        let later = start + MULTICAST_INTERVAL;
        assert!(responder.reply(&ask, PEER_MDNS, &[LAN], later).is_some());
    }

    #[test]
    fn unicast_replies_are_bounded_per_second_in_all() {
        let start = crate::clock::now();
        let mut responder = Responder::new(advertised(false), start);
        let ask = question("hq.local.", RecordType::A, 1, 0);
        let sent = (0..1000u16)
            .filter(|port| {
                let from = SocketAddr::new(PEER_LEGACY.ip(), 10_000 + port);
                responder.reply(&ask, from, &[LAN], start).is_some()
            })
            .count();
        assert_eq!(sent, UNICAST_PER_SECOND as usize);
        let next_second = start + Duration::from_secs(1);
        assert!(
            responder
                .reply(&ask, PEER_LEGACY, &[LAN], next_second)
                .is_some()
        );
    }
}

//! The query path: parse → paused? → policy → cache → upstream → answer →
//! stats and query log. Listeners call `handle` for every message; only a
//! cache miss (or a stale entry) leaves the fast synchronous path.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use hickory_proto::op::Query as Question;
use hickory_proto::rr::{DNSClass, Name, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::cache::{Answer, Cache, Lookup};
use super::upstream::{UpstreamError, Upstreams, upstream_query};
use super::wire::{self, Query, QuestionKey, rcode};
use crate::clock;
use crate::config::{BlockedResponse, FailMode};
use crate::policy::{Decision, LocalAnswer, Pause, Policy, Question as PolicyQuestion};
use crate::stats::{LogEntry, Outcome, QueryLog, QueryRecord, Stats};

/// The parts of the query path that a reload replaces together, so a query
/// sees either the old set or the new one, never a mix.
#[derive(Debug)]
pub struct Live {
    /// Decides block / allow.
    pub policy: Arc<dyn Policy>,
    /// What a policy fault means for the query.
    pub fail_mode: FailMode,
    /// Identifies this policy version for the verdicts kept with cached
    /// answers; `None` when verdicts cannot be kept (they depend on the
    /// client).
    pub policy_stamp: Option<NonZeroU64>,
    /// Where misses go.
    pub upstreams: Arc<Upstreams>,
    /// How blocked names are answered.
    pub blocked_response: BlockedResponse,
    /// TTL of blocked answers, seconds.
    pub blocked_ttl: u32,
    /// Largest UDP answer.
    pub udp_max_payload: u16,
    /// Whether queries are logged.
    pub query_log: bool,
}

/// The protocol a query came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// UDP: answers are cut to the client's limit with TC set.
    Udp,
    /// TCP: answers are sent whole.
    Tcp,
}

/// What a listener does after `handle`.
#[derive(Debug)]
pub enum Handled {
    /// Send what was written to the output buffer.
    Reply,
    /// Send nothing.
    Ignore,
    /// Call `resolve` with this, off the fast path.
    Resolve(Pending),
}

/// A query waiting for an upstream.
#[derive(Debug)]
pub struct Pending {
    request: Vec<u8>,
    client: IpAddr,
    protocol: Protocol,
    received: Instant,
    stale: Option<Arc<Answer>>,
}

type Resolved = Result<Arc<Answer>, UpstreamError>;

/// The shared query path.
#[derive(Debug)]
pub struct QueryHandler {
    live: ArcSwap<Live>,
    cache: Cache,
    pause: Pause,
    stats: Stats,
    query_log: QueryLog,
    inflight: Mutex<HashMap<QuestionKey, Vec<oneshot::Sender<Resolved>>>>,
    runtime: tokio::runtime::Handle,
}

impl QueryHandler {
    /// Builds the query path; must be called inside a tokio runtime, which
    /// runs the upstream work.
    pub fn new(live: Live, cache: Cache, pause: Pause, query_log: QueryLog) -> Arc<Self> {
        Arc::new(Self {
            live: ArcSwap::from_pointee(live),
            cache,
            pause,
            stats: Stats::default(),
            query_log,
            inflight: Mutex::default(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Replaces policy, upstreams and answer settings at once.
    pub fn replace_live(&self, live: Live) {
        self.live.store(Arc::new(live));
    }

    /// The settings in force.
    pub fn live(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// The cache.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The pause switch.
    pub fn pause(&self) -> &Pause {
        &self.pause
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The runtime that upstream work runs on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.runtime
    }

    /// The query log.
    pub fn query_log(&self) -> &QueryLog {
        &self.query_log
    }

    /// Handles one message. Writes the answer into `out` when it can be
    /// given at once (policy, cache, malformed input); never allocates on
    /// a cache hit once `out` has grown.
    pub fn handle(
        self: &Arc<Self>,
        request: &[u8],
        client: IpAddr,
        protocol: Protocol,
        out: &mut Vec<u8>,
    ) -> Handled {
        let received = clock::now();
        let query = match Query::parse(request) {
            Ok(query) => query,
            Err(rejection) => {
                if !wire::write_rejection(request, rejection, out) {
                    return Handled::Ignore;
                }
                let rcode = match rejection {
                    wire::Rejection::Reply { rcode, .. } => rcode,
                    wire::Rejection::Ignore => rcode::FORMERR,
                };
                self.record(
                    &self.live.load(),
                    b"",
                    0,
                    client,
                    rcode,
                    Outcome::Rejected,
                    received,
                );
                return Handled::Reply;
            }
        };
        let live = self.live.load();
        let lookup = self.cache.lookup(&query.key, received);
        if let Some(outcome) = self.apply_policy(&live, &query, client, &lookup, out) {
            return self.reply(&live, &query, protocol, client, outcome, received, out);
        }
        match lookup {
            Lookup::Fresh { answer, refresh } => {
                answer.write(&query, received, None, out);
                if refresh {
                    self.refresh(&query);
                }
                self.reply(
                    &live,
                    &query,
                    protocol,
                    client,
                    Outcome::Cached,
                    received,
                    out,
                )
            }
            Lookup::Stale(answer) => Handled::Resolve(Pending {
                request: request.to_vec(),
                client,
                protocol,
                received,
                stale: Some(answer),
            }),
            Lookup::Miss => {
                self.stats.record_cache_miss();
                Handled::Resolve(Pending {
                    request: request.to_vec(),
                    client,
                    protocol,
                    received,
                    stale: None,
                })
            }
        }
    }

    /// Asks the policy about `query`, unless blocking is paused or the
    /// cached answer already passed this policy version. Writes the answer
    /// when the policy gives one (blocked, local, or SERVFAIL on a fault
    /// with fail mode closed).
    fn apply_policy(
        &self,
        live: &Live,
        query: &Query<'_>,
        client: IpAddr,
        lookup: &Lookup,
        out: &mut Vec<u8>,
    ) -> Option<Outcome> {
        if self.pause.is_paused() {
            return None;
        }
        let cached = lookup.answer();
        if let (Some(answer), Some(stamp)) = (cached, live.policy_stamp)
            && answer.passed_policy(stamp)
        {
            return None;
        }
        let question = PolicyQuestion {
            name: &query.dotted,
            qtype: query.key.qtype,
            client,
        };
        match live.policy.decide(&question) {
            Decision::Block => {
                write_blocked(query, &live.blocked_response, live.blocked_ttl, out);
                Some(Outcome::Blocked)
            }
            Decision::Fault if live.fail_mode == FailMode::Closed => {
                wire::begin_response(query, rcode::SERVFAIL, out);
                Some(Outcome::Failed)
            }
            Decision::Answer(answer) => {
                write_local(query, &answer, out);
                Some(Outcome::Local)
            }
            Decision::Fault => None,
            Decision::Allow | Decision::NoOpinion => {
                if let (Some(answer), Some(stamp)) = (cached, live.policy_stamp) {
                    answer.mark_passed_policy(stamp);
                }
                None
            }
        }
    }

    /// Answers a pending query from upstream; with a stale entry at hand,
    /// serves it if upstreams fail or are slower than the stale timeout
    /// (RFC 8767). Writes the answer into `out`.
    pub async fn resolve(self: &Arc<Self>, pending: Pending, out: &mut Vec<u8>) -> Handled {
        let Ok(query) = Query::parse(&pending.request) else {
            return Handled::Ignore;
        };
        let fetch = self.fetch(&query);
        let resolution = match &pending.stale {
            Some(stale) => {
                let timeout = self.cache.tuning().stale_answer_timeout;
                match tokio::time::timeout(timeout, fetch).await {
                    Ok(Ok(answer)) => Resolution::Fresh(answer),
                    _ => Resolution::Stale(Arc::clone(stale)),
                }
            }
            None => match fetch.await {
                Ok(answer) => Resolution::Fresh(answer),
                Err(err) => {
                    tracing::debug!(error = %err, "resolution failed");
                    Resolution::Failed
                }
            },
        };
        let now = clock::now();
        let outcome = match resolution {
            Resolution::Fresh(answer) => {
                answer.write(&query, now, None, out);
                Outcome::Forwarded
            }
            Resolution::Stale(stale) => {
                let ttl = u32::try_from(self.cache.tuning().stale_answer_ttl.as_secs())
                    .unwrap_or(u32::MAX);
                stale.write(&query, now, Some(ttl), out);
                Outcome::Stale
            }
            Resolution::Failed => {
                wire::begin_response(&query, rcode::SERVFAIL, out);
                Outcome::Failed
            }
        };
        let live = self.live.load();
        self.reply(
            &live,
            &query,
            pending.protocol,
            pending.client,
            outcome,
            pending.received,
            out,
        )
    }

    /// Finishes the answer in `out` (OPT, truncation) and records it.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site per outcome; a struct would only rename them"
    )]
    fn reply(
        &self,
        live: &Live,
        query: &Query<'_>,
        protocol: Protocol,
        client: IpAddr,
        outcome: Outcome,
        received: Instant,
        out: &mut Vec<u8>,
    ) -> Handled {
        let limit = (protocol == Protocol::Udp).then(|| query.udp_limit(live.udp_max_payload));
        wire::finish_response(query, limit, out);
        let rcode = u16::from(out[3] & 0x0f);
        self.record(
            live,
            &query.dotted,
            query.key.qtype,
            client,
            rcode,
            outcome,
            received,
        );
        Handled::Reply
    }

    #[allow(clippy::too_many_arguments, reason = "the fields of one log record")]
    fn record(
        &self,
        live: &Live,
        name: &[u8],
        qtype: u16,
        client: IpAddr,
        rcode: u16,
        outcome: Outcome,
        received: Instant,
    ) {
        let elapsed = clock::now().saturating_duration_since(received);
        self.stats.record(&QueryRecord {
            name,
            qtype,
            client,
            rcode,
            outcome,
            elapsed,
        });
        if live.query_log {
            self.query_log.push(LogEntry {
                unix_ms: clock::unix_now_ms(),
                client,
                name: heapless::Vec::from_slice(name).unwrap_or_default(),
                qtype,
                rcode,
                outcome,
                elapsed_us: u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX),
            });
        }
    }

    fn refresh(self: &Arc<Self>, query: &Query<'_>) {
        let fetch = self.fetch(query);
        self.runtime.spawn(async move {
            if let Err(err) = fetch.await {
                tracing::debug!(error = %err, "refresh of a hot name failed");
            }
        });
    }

    /// Fetches the answer for `query` from upstream and caches it. Many
    /// concurrent callers for one question share one upstream query; the
    /// work goes on even if every caller stops waiting.
    fn fetch(self: &Arc<Self>, query: &Query<'_>) -> impl Future<Output = Resolved> + use<> {
        let (sender, receiver) = oneshot::channel();
        let key = query.key.clone();
        let leader = match self.inflight.lock().entry(key.clone()) {
            Entry::Occupied(mut waiting) => {
                waiting.get_mut().push(sender);
                false
            }
            Entry::Vacant(slot) => {
                slot.insert(vec![sender]);
                true
            }
        };
        if leader {
            let this = Arc::clone(self);
            let checking_disabled = query.checking_disabled();
            self.runtime.spawn(async move {
                let resolved = this.fetch_upstream(&key, checking_disabled).await;
                let waiting = this.inflight.lock().remove(&key).unwrap_or_default();
                for sender in waiting {
                    let _ = sender.send(resolved.clone());
                }
            });
        }
        async move {
            receiver
                .await
                .unwrap_or_else(|_| Err(UpstreamError::Io("resolution was dropped".into())))
        }
    }

    async fn fetch_upstream(&self, key: &QuestionKey, checking_disabled: bool) -> Resolved {
        let name = Name::read(&mut BinDecoder::new(&key.name))
            .map_err(|err| UpstreamError::BadAnswer(err.to_string()))?;
        let mut question = Question::query(name, RecordType::from(key.qtype));
        question.set_query_class(DNSClass::from(key.qclass));
        let message = upstream_query(question, key.dnssec_ok, checking_disabled);
        let live = self.live.load_full();
        let answer = live.upstreams.resolve(&message, &self.stats).await?;
        let answer = Answer::from_upstream(answer, self.cache.ttl_rules(), clock::now())
            .map_err(|err| UpstreamError::BadAnswer(err.to_string()))?;
        let answer = Arc::new(answer);
        self.cache.insert(key, Arc::clone(&answer));
        Ok(answer)
    }
}

/// How a pending query ended.
enum Resolution {
    Fresh(Arc<Answer>),
    Stale(Arc<Answer>),
    Failed,
}

/// TTL of the SOA that makes "this local name has no such record" cacheable.
const LOCAL_NODATA_TTL: u32 = 60;

/// Writes a local answer: authoritative, the records owned by the question
/// name, or NODATA with an SOA when the name has none of the asked type.
fn write_local(query: &Query<'_>, answer: &LocalAnswer, out: &mut Vec<u8>) {
    wire::begin_response(query, rcode::NOERROR, out);
    out[2] |= 0x04;
    let mut written = 0;
    for (kind, ttl, rdata) in answer.records() {
        wire::push_answer_record(out, wire::Section::Answer, kind, ttl, rdata);
        written += 1;
    }
    if written == 0 {
        wire::push_soa(out, LOCAL_NODATA_TTL);
    }
}

/// Writes the configured answer for a blocked name.
pub(crate) fn write_blocked(
    query: &Query<'_>,
    mode: &BlockedResponse,
    ttl: u32,
    out: &mut Vec<u8>,
) {
    const NULL: [IpAddr; 2] = [
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    ];
    let addresses = match mode {
        BlockedResponse::Refused => {
            wire::begin_response(query, rcode::REFUSED, out);
            return;
        }
        BlockedResponse::Nxdomain => {
            wire::begin_response(query, rcode::NXDOMAIN, out);
            wire::push_soa(out, ttl);
            return;
        }
        BlockedResponse::Nodata => &[][..],
        BlockedResponse::Null => &NULL[..],
        BlockedResponse::Custom(addresses) => &addresses[..],
    };
    wire::begin_response(query, rcode::NOERROR, out);
    if wire::push_addresses(out, query.key.qtype, ttl, addresses) == 0 {
        wire::push_soa(out, ttl);
    }
}

//! The query path: parse → paused? → policy → cache → upstream → answer →
//! stats and query log. Listeners call `handle` for every message; only a
//! cache miss (or a stale entry) leaves the fast synchronous path.
//!
//! The handler owns no runtime and no socket. A miss goes to a `Resolver`,
//! time comes from a `Clock`, and the upstream work a query starts comes
//! back to the listener as a `Fetch`, which it runs detached.

mod inflight;
mod local;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Deref;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwap;
use futures_util::future::{Either, select};
use hickory_proto::op::Query as Question;
use hickory_proto::rr::{DNSClass, Name, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::access::{Access, Gate};
use super::cache::{Answer, Cache, Lookup};
use super::clock::{Clock, SystemClock};
use super::upstream::{Resolver, UpstreamError, Upstreamed, Upstreams, upstream_query};
use super::verdict::VerdictMemo;
use super::wire::{self, Query, QuestionKey, rcode};
use super::zones::{Route, Zones};
use crate::config::{BlockedResponse, FailMode, PluginName};
use crate::policy::{Decision, Pause, Policy, Question as PolicyQuestion};
use crate::stats::{LogEntry, Outcome, QueryLog, QueryRecord, Stats};
pub(crate) use inflight::MissLimits;
use inflight::{InFlight, Role, Shed, Ticket};

/// The parts of the query path that a reload replaces together, so a query
/// sees either the old set or the new one, never a mix.
#[derive(Debug)]
pub(crate) struct Live<R = Arc<Upstreams>> {
    /// Decides block / allow.
    pub policy: Arc<dyn Policy>,
    /// What a policy fault means for the query.
    pub fail_mode: FailMode,
    /// Where misses go that no forward zone takes.
    pub upstreams: R,
    /// The upstreams of each forward zone, as `zones` numbers them.
    pub forwarders: Vec<R>,
    /// Which names go to a forwarder, and which are answered here.
    pub zones: Zones,
    /// How blocked names are answered.
    pub blocked_response: BlockedResponse,
    /// TTL of blocked answers, seconds.
    pub blocked_ttl: u32,
    /// Largest UDP answer.
    pub udp_max_payload: u16,
    /// Whether queries are logged.
    pub query_log: bool,
    /// How many misses may be under way.
    pub miss_limits: MissLimits,
    /// Who may ask, and how fast.
    pub gate: Arc<Gate>,
    /// Seconds added to the time plugins are fed (`tuning.plugins`).
    pub plugin_clock_offset_secs: i64,
}

/// The settings in force, with the verdict memo of their policy.
#[derive(Debug)]
pub(crate) struct Installed<R = Arc<Upstreams>> {
    live: Live<R>,
    verdicts: VerdictMemo,
}

impl<R> Installed<R> {
    fn new(live: Live<R>) -> Self {
        let verdicts = VerdictMemo::issue(&*live.policy);
        Self { live, verdicts }
    }
}

impl<R> Deref for Installed<R> {
    type Target = Live<R>;

    fn deref(&self) -> &Live<R> {
        &self.live
    }
}

/// The protocol a query came over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// UDP: answers are cut to the client's limit with TC set.
    Udp,
    /// TCP: answers are sent whole.
    Tcp,
}

/// What a listener does after `handle`.
#[derive(Debug)]
#[must_use]
pub(crate) enum Handled {
    /// Send what was written to the output buffer.
    Reply,
    /// Send what was written to the output buffer, and run the fetch
    /// detached: it refreshes a hot name before it expires.
    ReplyAndRefresh(Fetch),
    /// Send nothing.
    Ignore,
    /// Run `fetch` detached, if there is one (the first query for a
    /// question starts it; later ones wait on it), and send what
    /// `resolve(pending)` writes, off the fast path.
    Resolve {
        /// The query, waiting for the answer.
        pending: Pending,
        /// The upstream work for its question.
        fetch: Option<Fetch>,
    },
}

/// A query waiting for an upstream, parsed once.
#[derive(Debug)]
pub(crate) struct Pending(Box<Waiting>);

#[derive(Debug)]
struct Waiting {
    query: Query<'static>,
    client: IpAddr,
    protocol: Protocol,
    received: Instant,
    stale: Option<Arc<Answer>>,
    /// The local CNAME answer the fetched target's answer is joined to.
    chase: Option<Box<[u8]>>,
    answer: oneshot::Receiver<Resolved>,
    _place: Ticket<Resolved>,
}

/// The upstream work for one question: it asks the resolver, caches the
/// answer and hands it to every query waiting on it. It goes on even if
/// they all stop waiting; dropped unfinished, it fails them.
#[must_use = "a fetch does nothing unless it is run"]
pub(crate) struct Fetch(Pin<Box<dyn Future<Output = ()> + Send>>);

impl Future for Fetch {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl std::fmt::Debug for Fetch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fetch")
    }
}

type Resolved = Result<Arc<Answer>, UpstreamError>;

/// The shared query path, over a resolver for misses and a clock.
#[derive(Debug)]
pub(crate) struct QueryHandler<R = Arc<Upstreams>, C = SystemClock> {
    installed: ArcSwap<Installed<R>>,
    cache: Cache,
    pause: Pause,
    stats: Stats,
    query_log: QueryLog,
    inflight: Arc<Mutex<InFlight<Resolved>>>,
    own_addrs: ArcSwap<Vec<IpAddr>>,
    clock: C,
}

impl<R: Resolver, C: Clock> QueryHandler<R, C> {
    /// Builds the query path. It needs no runtime: the work it cannot do
    /// at once comes back from `handle` to be run by the caller.
    pub(crate) fn new(
        live: Live<R>,
        cache: Cache,
        pause: Pause,
        query_log: QueryLog,
        clock: C,
    ) -> Arc<Self> {
        Arc::new(Self {
            installed: ArcSwap::from_pointee(Installed::new(live)),
            cache,
            pause,
            stats: Stats::default(),
            query_log,
            inflight: Arc::default(),
            own_addrs: ArcSwap::default(),
            clock,
        })
    }

    /// Sets the addresses the appliance's own name answers.
    pub(crate) fn set_own_addrs(&self, addrs: Vec<IpAddr>) {
        if **self.own_addrs.load() != addrs {
            self.own_addrs.store(Arc::new(addrs));
        }
    }

    /// Replaces policy, upstreams and answer settings at once; cached
    /// answers are checked against the new policy again.
    pub(crate) fn replace_live(&self, live: Live<R>) {
        self.installed.store(Arc::new(Installed::new(live)));
    }

    /// The settings in force.
    pub(crate) fn live(&self) -> Arc<Installed<R>> {
        self.installed.load_full()
    }

    /// The cache.
    pub(crate) fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The pause switch.
    pub(crate) fn pause(&self) -> &Pause {
        &self.pause
    }

    /// The counters.
    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The query log.
    pub(crate) fn query_log(&self) -> &QueryLog {
        &self.query_log
    }

    /// Handles one message. Writes the answer into `out` when it can be
    /// given at once (policy, cache, malformed input); never allocates on
    /// a cache hit once `out` has grown.
    pub(crate) fn handle(
        self: &Arc<Self>,
        request: &[u8],
        client: IpAddr,
        protocol: Protocol,
        out: &mut Vec<u8>,
    ) -> Handled {
        let received = self.clock.now();
        let installed = self.installed.load();
        let over_udp = protocol == Protocol::Udp;
        let access = installed
            .gate
            .check(client, over_udp, self.clock.unix_now_ms());
        let query = match Query::parse(request) {
            Ok(query) => query,
            Err(_) if access != Access::Served => return Handled::Ignore,
            Err(rejection) => return self.reject(request, rejection, client, received, out),
        };
        if access != Access::Served {
            let outcome = turn_away(&query, access, out);
            self.reply(&installed, &query, protocol, client, outcome, received, out);
            return Handled::Reply;
        }
        if not_for_a_resolver(&query.key) {
            wire::begin_response(&query, rcode::REFUSED, out);
            let outcome = Outcome::Rejected;
            self.reply(&installed, &query, protocol, client, outcome, received, out);
            return Handled::Reply;
        }
        let lookup = self.cache.lookup(&query.key, received);
        let arrived = Arrived {
            client,
            protocol,
            received,
        };
        match self.apply_policy(&installed, &query, client, &lookup, out) {
            Step::Answered(outcome, by) => {
                self.reply_by(&installed, &query, &arrived, outcome, by, out);
                return Handled::Reply;
            }
            Step::Chase(target) => return self.chase(&installed, query, arrived, target, out),
            Step::Resolve => {}
        }
        match lookup {
            Lookup::Fresh { answer, refresh } => {
                answer.write(&query, received, None, out);
                self.reply(
                    &installed,
                    &query,
                    protocol,
                    client,
                    Outcome::Cached,
                    received,
                    out,
                );
                let refreshing = refresh
                    && self
                        .inflight
                        .lock()
                        .start_unwaited(&query.key, installed.miss_limits);
                match refreshing {
                    true => Handled::ReplyAndRefresh(self.fetch(&query.key)),
                    false => Handled::Reply,
                }
            }
            Lookup::Stale(answer) => self.miss(&installed, query, arrived, Some(answer), out),
            Lookup::Miss => self.miss(&installed, query, arrived, None, out),
        }
    }

    /// Answers a question the cache has no fresh answer for: here if its
    /// name is in a zone served locally, else from upstream.
    fn miss(
        self: &Arc<Self>,
        installed: &Installed<R>,
        query: Query<'_>,
        arrived: Arrived,
        stale: Option<Arc<Answer>>,
        out: &mut Vec<u8>,
    ) -> Handled {
        if let Route::Local(zone) = installed.zones.route(&query.key.name) {
            local::write_zone(&query, zone, &self.own_addrs.load(), out);
            return self.answered(installed, &query, arrived, Outcome::Local, out);
        }
        if stale.is_none() {
            self.stats.record_cache_miss();
        }
        let miss = Miss {
            key: query.key.clone(),
            stale,
            chase: None,
        };
        self.wait(installed, query, arrived, miss, out)
    }

    /// Finishes a local CNAME answer (in `out`) whose target (the name at
    /// `target` in it) has no local records: with the target's cached
    /// answer, or its upstream answer once fetched; alone if the target is
    /// in a zone served here.
    fn chase(
        self: &Arc<Self>,
        installed: &Installed<R>,
        query: Query<'_>,
        arrived: Arrived,
        target: usize,
        out: &mut Vec<u8>,
    ) -> Handled {
        let key = wire::read_name(out, target).map(|(name, ..)| QuestionKey {
            name,
            ..query.key.clone()
        });
        let Some(key) =
            key.filter(|key| !matches!(installed.zones.route(&key.name), Route::Local(_)))
        else {
            return self.answered(installed, &query, arrived, Outcome::Local, out);
        };
        let received = arrived.received;
        let stale = match self.cache.lookup(&key, received) {
            Lookup::Fresh { answer, .. } => {
                let local = std::mem::take(out);
                local::join_target(&local, &answer, received, None, out);
                return self.answered(installed, &query, arrived, Outcome::Local, out);
            }
            Lookup::Stale(answer) => Some(answer),
            Lookup::Miss => None,
        };
        let miss = Miss {
            key,
            stale,
            chase: Some(out.as_slice().into()),
        };
        self.wait(installed, query, arrived, miss, out)
    }

    /// Answers what `Query::parse` rejected, if it is answered at all.
    fn reject(
        &self,
        request: &[u8],
        rejection: wire::Rejection,
        client: IpAddr,
        received: Instant,
        out: &mut Vec<u8>,
    ) -> Handled {
        if !wire::write_rejection(request, rejection, out) {
            return Handled::Ignore;
        }
        let rcode = match rejection {
            wire::Rejection::Reply { rcode, .. } => rcode,
            wire::Rejection::Ignore => rcode::FORMERR,
        };
        let installed = self.installed.load();
        let record = QueryRecord {
            name: b"",
            qtype: 0,
            client,
            rcode,
            outcome: Outcome::Rejected,
        };
        self.record(&installed, &record, received, None);
        Handled::Reply
    }

    /// Asks the policy about `query`, unless the cached answer already
    /// passed this policy. Writes the answer when the policy gives one
    /// (blocked, local, or SERVFAIL on a fault with fail mode closed);
    /// while blocking is paused, only local records answer.
    fn apply_policy(
        &self,
        installed: &Installed<R>,
        query: &Query<'_>,
        client: IpAddr,
        lookup: &Lookup,
        out: &mut Vec<u8>,
    ) -> Step {
        let cached = lookup.answer();
        let unix_time = (self.clock.unix_now_ms() / 1000)
            .saturating_add_signed(installed.plugin_clock_offset_secs);
        if cached.is_some_and(|answer| {
            installed
                .verdicts
                .passed(answer.verdict(), client, unix_time)
        }) {
            return Step::Resolve;
        }
        let question = PolicyQuestion {
            name: &query.dotted,
            qtype: query.key.qtype,
            client,
            unix_time,
        };
        let ruling = installed.policy.rule(&question);
        if self.pause.is_paused() && !matches!(ruling.decision, Decision::Answer(_)) {
            return Step::Resolve;
        }
        let outcome = match ruling.decision {
            Decision::Block => {
                write_blocked(
                    query,
                    &installed.blocked_response,
                    installed.blocked_ttl,
                    out,
                );
                Outcome::Blocked
            }
            Decision::Refuse => {
                wire::begin_response(query, rcode::REFUSED, out);
                Outcome::Blocked
            }
            Decision::FailClosed => {
                wire::begin_response(query, rcode::SERVFAIL, out);
                Outcome::Failed
            }
            Decision::Fault if installed.fail_mode == FailMode::Closed => {
                wire::begin_response(query, rcode::SERVFAIL, out);
                Outcome::Failed
            }
            Decision::Answer(answer) => {
                match local::write_local(query, &answer, &*installed.policy, &question, out) {
                    Some(target) => return Step::Chase(target),
                    None => Outcome::Local,
                }
            }
            Decision::Fault => return Step::Resolve,
            Decision::Allow | Decision::NoOpinion => {
                if let Some(answer) = cached {
                    installed
                        .verdicts
                        .mark_passed(answer.verdict(), client, &ruling);
                }
                return Step::Resolve;
            }
        };
        Step::Answered(outcome, ruling.by)
    }

    /// Puts `query` in line for the answer to `miss.key`, starting the
    /// fetch if none is under way. Past the miss limits the query is shed:
    /// it gets its stale answer if there is one, else SERVFAIL at once.
    fn wait(
        self: &Arc<Self>,
        installed: &Installed<R>,
        query: Query<'_>,
        arrived: Arrived,
        miss: Miss,
        out: &mut Vec<u8>,
    ) -> Handled {
        let (sender, answer) = oneshot::channel();
        let limits = installed.miss_limits;
        let Miss { key, stale, chase } = miss;
        let (place, role) =
            match InFlight::admit(&self.inflight, &key, arrived.client, sender, limits) {
                Ok(admitted) => admitted,
                Err(why) => {
                    self.shed(
                        installed,
                        &query,
                        &arrived,
                        stale,
                        chase.as_deref(),
                        why,
                        out,
                    );
                    return Handled::Reply;
                }
            };
        let fetch = (role == Role::First).then(|| self.fetch(&key));
        let pending = Pending(Box::new(Waiting {
            query: query.into_owned(),
            client: arrived.client,
            protocol: arrived.protocol,
            received: arrived.received,
            stale,
            chase,
            answer,
            _place: place,
        }));
        Handled::Resolve { pending, fetch }
    }

    /// Finishes and records the answer in `out`; the listener sends it.
    fn answered(
        &self,
        installed: &Installed<R>,
        query: &Query<'_>,
        arrived: Arrived,
        outcome: Outcome,
        out: &mut Vec<u8>,
    ) -> Handled {
        let Arrived {
            client,
            protocol,
            received,
        } = arrived;
        self.reply(installed, query, protocol, client, outcome, received, out);
        Handled::Reply
    }

    /// Answers a miss that was not let in line.
    #[allow(
        clippy::too_many_arguments,
        reason = "the parts of one miss, taken apart by `wait`"
    )]
    fn shed(
        &self,
        installed: &Installed<R>,
        query: &Query<'_>,
        arrived: &Arrived,
        stale: Option<Arc<Answer>>,
        chase: Option<&[u8]>,
        why: Shed,
        out: &mut Vec<u8>,
    ) {
        tracing::trace!(client = %arrived.client, ?why, "miss shed");
        let outcome = match stale {
            Some(stale) => {
                let ttl = Some(self.stale_ttl());
                write_answer(query, chase, &stale, arrived.received, ttl, out);
                Outcome::Stale
            }
            None => {
                wire::begin_response(query, rcode::SERVFAIL, out);
                Outcome::Shed
            }
        };
        let Arrived {
            client,
            protocol,
            received,
        } = *arrived;
        self.reply(installed, query, protocol, client, outcome, received, out);
    }

    fn stale_ttl(&self) -> u32 {
        u32::try_from(self.cache.tuning().stale_answer_ttl.as_secs()).unwrap_or(u32::MAX)
    }

    /// Answers a pending query from upstream; with a stale entry at hand,
    /// serves it if upstreams fail or are slower than the stale timeout
    /// (RFC 8767). Writes the answer into `out`.
    pub(crate) async fn resolve(&self, pending: Pending, out: &mut Vec<u8>) {
        let Waiting {
            query,
            client,
            protocol,
            received,
            stale,
            chase,
            answer,
            _place,
        } = *pending.0;
        let fetched = async {
            answer
                .await
                .unwrap_or_else(|_| Err(UpstreamError::Io("resolution was dropped".into())))
        };
        let resolution = match stale {
            Some(stale) => {
                let timeout = self.cache.tuning().stale_answer_timeout;
                match select(pin!(fetched), pin!(self.clock.sleep(timeout))).await {
                    Either::Left((Ok(answer), _)) => Resolution::Fresh(answer),
                    _ => Resolution::Stale(stale),
                }
            }
            None => match fetched.await {
                Ok(answer) => Resolution::Fresh(answer),
                Err(err) => {
                    tracing::debug!(error = %err, "resolution failed");
                    Resolution::Failed
                }
            },
        };
        let now = self.clock.now();
        let outcome = match resolution {
            Resolution::Fresh(answer) => {
                write_answer(&query, chase.as_deref(), &answer, now, None, out);
                Outcome::Forwarded
            }
            Resolution::Stale(stale) => {
                let ttl = Some(self.stale_ttl());
                write_answer(&query, chase.as_deref(), &stale, now, ttl, out);
                Outcome::Stale
            }
            Resolution::Failed => {
                wire::begin_response(&query, rcode::SERVFAIL, out);
                Outcome::Failed
            }
        };
        let installed = self.installed.load();
        self.reply(&installed, &query, protocol, client, outcome, received, out);
    }

    /// Finishes the answer in `out` (OPT, truncation) and records it.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site per outcome; a struct would only rename them"
    )]
    fn reply(
        &self,
        live: &Live<R>,
        query: &Query<'_>,
        protocol: Protocol,
        client: IpAddr,
        outcome: Outcome,
        received: Instant,
        out: &mut Vec<u8>,
    ) {
        let arrived = Arrived {
            client,
            protocol,
            received,
        };
        self.reply_by(live, query, &arrived, outcome, None, out);
    }

    /// Finishes the answer in `out` and records it, naming the configured
    /// plugin that decided, if one did.
    fn reply_by(
        &self,
        live: &Live<R>,
        query: &Query<'_>,
        arrived: &Arrived,
        outcome: Outcome,
        by: Option<PluginName>,
        out: &mut Vec<u8>,
    ) {
        let limit =
            (arrived.protocol == Protocol::Udp).then(|| query.udp_limit(live.udp_max_payload));
        wire::finish_response(query, limit, out);
        let record = QueryRecord {
            name: &query.dotted,
            qtype: query.key.qtype,
            client: arrived.client,
            rcode: wire::response_code(out),
            outcome,
        };
        self.record(live, &record, arrived.received, by);
    }

    fn record(
        &self,
        live: &Live<R>,
        record: &QueryRecord<'_>,
        received: Instant,
        plugin: Option<PluginName>,
    ) {
        let elapsed = self.clock.now().saturating_duration_since(received);
        self.stats.record(record);
        if live.query_log {
            self.query_log.push(LogEntry {
                unix_ms: self.clock.unix_now_ms(),
                client: record.client,
                name: heapless::Vec::from_slice(record.name).unwrap_or_default(),
                qtype: record.qtype,
                rcode: record.rcode,
                outcome: record.outcome,
                elapsed_us: u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX),
                plugin,
            });
        }
    }

    /// The fetch for `key`, whose slot in `inflight` is taken: many
    /// concurrent queries for one question share one upstream query.
    fn fetch(self: &Arc<Self>, key: &QuestionKey) -> Fetch {
        let mut flight = Flight {
            handler: Arc::clone(self),
            key: key.clone(),
            landed: false,
        };
        Fetch(Box::pin(async move {
            let resolved = flight.handler.fetch_upstream(&flight.key).await;
            if let Err(err) = &resolved {
                tracing::debug!(error = %err, "upstream fetch failed");
            }
            flight.land(&resolved);
        }))
    }

    /// Fetches the answer for `key` from the upstreams its name is routed
    /// to (DO and CD as the client set them) and caches it, with AD only
    /// if the upstream that answered is trusted.
    async fn fetch_upstream(&self, key: &QuestionKey) -> Resolved {
        let name = Name::read(&mut BinDecoder::new(&key.name))
            .map_err(|err| UpstreamError::BadAnswer(err.to_string()))?;
        let mut question = Question::query(name, RecordType::from(key.qtype));
        question.set_query_class(DNSClass::from(key.qclass));
        let message = upstream_query(question, key.dnssec_ok, key.checking_disabled);
        let installed = self.installed.load_full();
        let upstreams = match installed.zones.route(&key.name) {
            Route::General => &installed.upstreams,
            Route::Forward(index) => installed
                .forwarders
                .get(index)
                .ok_or_else(|| UpstreamError::Setup(format!("no forwarder {index}")))?,
            Route::Local(_) => return Err(UpstreamError::Setup("a name served here".into())),
        };
        let Upstreamed {
            mut message,
            trusted,
        } = upstreams.resolve(&message, &self.stats).await?;
        message.metadata.authentic_data &= trusted;
        let answer = Answer::from_upstream(message, self.cache.ttl_rules(), self.clock.now())
            .map_err(|err| UpstreamError::BadAnswer(err.to_string()))?;
        let answer = Arc::new(answer);
        self.cache.insert(key, Arc::clone(&answer));
        Ok(answer)
    }
}

/// A fetch under way for one question; if it ends without landing, its
/// waiters are let go (they see the resolution dropped).
struct Flight<R: Resolver, C: Clock> {
    handler: Arc<QueryHandler<R, C>>,
    key: QuestionKey,
    landed: bool,
}

impl<R: Resolver, C: Clock> Flight<R, C> {
    /// Hands the result to every query waiting for it.
    fn land(&mut self, resolved: &Resolved) {
        self.landed = true;
        let waiting = self.handler.inflight.lock().land(&self.key);
        for sender in waiting {
            let _ = sender.send(resolved.clone());
        }
    }
}

impl<R: Resolver, C: Clock> Drop for Flight<R, C> {
    fn drop(&mut self) {
        if !self.landed {
            self.handler.inflight.lock().land(&self.key);
        }
    }
}

/// Questions no upstream is asked and nothing here answers, so REFUSED:
/// zone transfers (AXFR, IXFR: a resolver serves no zones to copy) and
/// every class but IN and ANY, which also keeps CHAOS `version.bind` and
/// `id.server` from telling a scanner what answers.
fn not_for_a_resolver(key: &QuestionKey) -> bool {
    const CLASS_IN: u16 = 1;
    const CLASS_ANY: u16 = 255;
    const IXFR: u16 = 251;
    const AXFR: u16 = 252;
    !matches!(key.qclass, CLASS_IN | CLASS_ANY) || matches!(key.qtype, IXFR | AXFR)
}

/// Answers a query the gate did not let in: REFUSED from outside the ACL,
/// an empty truncated answer (ask again over TCP) past the rate limit.
fn turn_away(query: &Query<'_>, access: Access, out: &mut Vec<u8>) -> Outcome {
    if access == Access::Limited {
        wire::begin_response(query, rcode::NOERROR, out);
        wire::set_truncated(out);
        return Outcome::Limited;
    }
    wire::begin_response(query, rcode::REFUSED, out);
    Outcome::Rejected
}

/// Where and when a query came in.
#[derive(Debug, Clone, Copy)]
struct Arrived {
    client: IpAddr,
    protocol: Protocol,
    received: Instant,
}

/// What the policy made of a question.
enum Step {
    /// The answer is written; the configured plugin that decided, if one did.
    Answered(Outcome, Option<PluginName>),
    /// A local CNAME answer is written; its target, the name at this
    /// offset of it, is resolved next.
    Chase(usize),
    /// Resolve it: cache, then upstream.
    Resolve,
}

/// A question to fetch for a query, and what to answer with meanwhile.
struct Miss {
    /// The question asked upstream: the query's, or a local CNAME's target.
    key: QuestionKey,
    /// The expired answer to serve if the fetch fails or is slow.
    stale: Option<Arc<Answer>>,
    /// The local CNAME answer the fetched answer is joined to.
    chase: Option<Box<[u8]>>,
}

/// Writes a fetched (or stale) `answer` as the answer to `query`, joined
/// to the local CNAME answer `chase` when the query came through one.
fn write_answer(
    query: &Query<'_>,
    chase: Option<&[u8]>,
    answer: &Answer,
    now: Instant,
    ttl_override: Option<u32>,
    out: &mut Vec<u8>,
) {
    match chase {
        Some(local) => local::join_target(local, answer, now, ttl_override, out),
        None => answer.write(query, now, ttl_override, out),
    }
}

/// How a pending query ended.
enum Resolution {
    Fresh(Arc<Answer>),
    Stale(Arc<Answer>),
    Failed,
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

//! The query path from bytes: each test feeds `handle` a request as a
//! client sends it and reads the response bytes back with hickory. No
//! runtime, no socket: misses go to a table, time is a manual clock, and
//! the futures are polled by hand.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::pin::{Pin, pin};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query as HQuery, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use parking_lot::Mutex;

use super::local::LOCAL_NODATA_TTL;
use super::*;
use crate::compile::compile_policy;
use crate::config::{CacheTuning, Config};
use crate::dns::clock::ManualClock;
use crate::policy::{Chain, PauseState, PolicyEngine, WasmPolicy};
use crate::store::DataDir;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 7));
const BLOCKED_TTL: u32 = 120;
const MISS_LIMITS: MissLimits = MissLimits {
    questions: 4,
    per_client: 2,
};

/// The real plugins, compiled once: `ads.example` and below denied,
/// `nas.lan` a local A record, `alias.lan` a local CNAME to it and
/// `www.lan` one to `example.com`, which has no local records.
static POLICY: LazyLock<Arc<dyn Policy>> = LazyLock::new(|| {
    let root = std::env::temp_dir().join(format!(
        "moat-handler-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let data = DataDir::open(&root).unwrap();
    let config = Config::parse(
        "[policy]\ndeny = [\"ads.example\", \"*.ads.example\"]\n\
         [[policy.local_records]]\nname = \"nas.lan\"\ntype = \"A\"\nvalue = \"192.168.1.20\"\nttl = 600\n\
         [[policy.local_records]]\nname = \"alias.lan\"\ntype = \"CNAME\"\nvalue = \"nas.lan\"\n\
         [[policy.local_records]]\nname = \"www.lan\"\ntype = \"CNAME\"\nvalue = \"example.com\"\n",
        "test",
    )
    .unwrap();
    let compiled = compile_policy(&config.policy, &data).unwrap();
    std::fs::remove_dir_all(root).unwrap();
    let engine = PolicyEngine::unticked().unwrap();
    Arc::new(Chain(vec![
        WasmPolicy::new(&engine, &compiled.local_records).unwrap(),
        WasmPolicy::new(&engine, &compiled.blocklist).unwrap(),
    ]))
});

/// What the test upstream does for a name.
#[derive(Debug, Clone, Copy)]
enum Upstream {
    /// Answers with one A record.
    Answer(Ipv4Addr, u32),
    /// Fails at once (as a SERVFAIL from upstream would).
    Fail,
    /// Never answers.
    Silent,
    /// Answers one A record with AD set, as an upstream trusted or not.
    Authentic(Ipv4Addr, Trust),
    /// Answers one A record for CD=0 queries, another for CD=1.
    ByCheckingDisabled {
        /// The answer to CD=0.
        checked: Ipv4Addr,
        /// The answer to CD=1.
        unchecked: Ipv4Addr,
    },
}

/// Whether the upstream giving an answer is marked `trusted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trust {
    Trusted,
    Untrusted,
}

/// A resolver answering from a table; names not in it fail.
#[derive(Debug, Default)]
struct Table {
    names: Mutex<HashMap<String, Upstream>>,
    asked: AtomicUsize,
}

impl Table {
    fn set(&self, name: &str, upstream: Upstream) {
        self.names.lock().insert(name.to_owned(), upstream);
    }

    fn asked(&self) -> usize {
        self.asked.load(Ordering::Relaxed)
    }
}

impl Resolver for Table {
    fn resolve(
        &self,
        query: &Message,
        _stats: &Stats,
    ) -> impl Future<Output = Result<Upstreamed, UpstreamError>> + Send {
        self.asked.fetch_add(1, Ordering::Relaxed);
        let question = query.queries[0].clone();
        let upstream = self
            .names
            .lock()
            .get(&question.name.to_string())
            .copied()
            .unwrap_or(Upstream::Fail);
        let id = query.metadata.id;
        let upstream = match upstream {
            Upstream::ByCheckingDisabled { checked, unchecked } => Upstream::Answer(
                match query.metadata.checking_disabled {
                    true => unchecked,
                    false => checked,
                },
                300,
            ),
            other => other,
        };
        let answer = move |ip, ttl| {
            let mut answer = Message::new(id, MessageType::Response, OpCode::Query);
            answer.add_answer(Record::from_rdata(
                question.name.clone(),
                ttl,
                RData::A(A(ip)),
            ));
            answer.add_query(question);
            answer
        };
        async move {
            match upstream {
                Upstream::Answer(ip, ttl) => Ok(Upstreamed {
                    message: answer(ip, ttl),
                    trusted: false,
                }),
                Upstream::Authentic(ip, trust) => {
                    let mut message = answer(ip, 300);
                    message.metadata.authentic_data = true;
                    Ok(Upstreamed {
                        message,
                        trusted: trust == Trust::Trusted,
                    })
                }
                Upstream::Fail => Err(UpstreamError::Failed(ResponseCode::ServFail)),
                Upstream::Silent | Upstream::ByCheckingDisabled { .. } => {
                    std::future::pending().await
                }
            }
        }
    }
}

/// A policy that always faults, or always blocks.
#[derive(Debug)]
struct Fixed(Decision);

impl Policy for Fixed {
    fn rule(&self, _: &PolicyQuestion<'_>) -> crate::policy::Ruling {
        crate::policy::Ruling::lasting(self.0.clone())
    }

    fn reads_client(&self) -> bool {
        false
    }
}

type TestHandler = QueryHandler<Arc<Table>, Arc<ManualClock>>;

struct Setup {
    policy: Arc<dyn Policy>,
    fail_mode: FailMode,
    blocked: BlockedResponse,
    pause: PauseState,
    tuning: CacheTuning,
    /// `[policy]` lines: upstream entries and local domains.
    routes: &'static str,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            policy: Arc::clone(&POLICY),
            fail_mode: FailMode::Open,
            blocked: BlockedResponse::Nxdomain,
            pause: PauseState::Blocking,
            tuning: CacheTuning::default(),
            routes: "",
        }
    }
}

struct Harness {
    handler: Arc<TestHandler>,
    upstream: Arc<Table>,
    /// The upstreams of every forward zone in `Setup::routes`.
    router: Arc<Table>,
    clock: Arc<ManualClock>,
}

impl Setup {
    fn build(self) -> Harness {
        let upstream = Arc::new(Table::default());
        let router = Arc::new(Table::default());
        let clock = ManualClock::new();
        let mut live = live(self.policy, self.fail_mode, self.blocked, &upstream);
        let text = format!("[policy]\n{}", self.routes);
        let policy = Config::parse(&text, "routes").unwrap().policy;
        live.zones = Zones::new(&policy);
        live.forwarders = policy
            .forward_zones()
            .map(|_| Arc::clone(&router))
            .collect();
        let handler = QueryHandler::new(
            live,
            Cache::new(self.tuning),
            Pause::new(self.pause),
            QueryLog::new(100),
            Arc::clone(&clock),
        );
        Harness {
            handler,
            upstream,
            router,
            clock,
        }
    }
}

fn live(
    policy: Arc<dyn Policy>,
    fail_mode: FailMode,
    blocked_response: BlockedResponse,
    upstream: &Arc<Table>,
) -> Live<Arc<Table>> {
    Live {
        policy,
        fail_mode,
        upstreams: Arc::clone(upstream),
        forwarders: Vec::new(),
        zones: Zones::default(),
        blocked_response,
        blocked_ttl: BLOCKED_TTL,
        udp_max_payload: 1232,
        query_log: true,
        miss_limits: MISS_LIMITS,
        gate: Arc::new(Gate::open()),
        plugin_clock_offset_secs: 0,
    }
}

fn poll<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

impl Harness {
    /// What a listener does with `request`: the response bytes, or `None`
    /// when nothing is sent. Upstream work is polled once: the table
    /// answers at once.
    fn ask(&self, request: &[u8]) -> Option<Vec<u8>> {
        self.ask_from(CLIENT, request)
    }

    /// `ask`, from `client`.
    fn ask_from(&self, client: IpAddr, request: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        match self
            .handler
            .handle(request, client, Protocol::Udp, &mut out)
        {
            Handled::Reply => Some(out),
            Handled::ReplyAndRefresh(mut fetch) => {
                assert!(poll(Pin::new(&mut fetch)).is_ready());
                Some(out)
            }
            Handled::Ignore => None,
            Handled::Resolve { pending, fetch } => {
                let mut fetch = fetch.expect("no other query waits for this question");
                assert!(poll(Pin::new(&mut fetch)).is_ready(), "the table answers");
                let resolved = poll(pin!(self.handler.resolve(pending, &mut out)));
                assert!(resolved.is_ready(), "the answer is in");
                Some(out)
            }
        }
    }

    /// `ask`, parsed.
    fn answer(&self, request: &[u8]) -> Message {
        Message::from_vec(&self.ask(request).expect("an answer")).unwrap()
    }
}

fn request(id: u16, name: &str, qtype: RecordType) -> Vec<u8> {
    query_message(id, name, qtype).to_vec().unwrap()
}

fn query_message(id: u16, name: &str, qtype: RecordType) -> Message {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(HQuery::query(Name::from_str(name).unwrap(), qtype));
    message
}

fn addresses(message: &Message) -> Vec<(IpAddr, u32)> {
    message
        .answers
        .iter()
        .map(|record| match &record.data {
            RData::A(a) => (IpAddr::V4(a.0), record.ttl),
            RData::AAAA(aaaa) => (IpAddr::V6(aaaa.0), record.ttl),
            other => panic!("not an address: {other:?}"),
        })
        .collect()
}

/// Checks what every answer carries: our ID, QR, RD echoed, the question.
fn assert_answers(message: &Message, id: u16, name: &str) {
    assert_eq!(message.metadata.id, id);
    assert_eq!(message.metadata.message_type, MessageType::Response);
    assert!(message.metadata.recursion_desired);
    assert_eq!(message.queries.len(), 1);
    assert_eq!(message.queries[0].name.to_string(), name);
}

fn soa_ttls(message: &Message) -> Vec<u32> {
    message
        .authorities
        .iter()
        .filter(|record| matches!(record.data, RData::SOA(_)))
        .map(|record| record.ttl)
        .collect()
}

#[test]
fn blocked_in_each_mode() {
    let custom = BlockedResponse::Custom(vec![
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
        IpAddr::V6(Ipv6Addr::from_str("fd00::1").unwrap()),
    ]);
    let cases = [
        (
            BlockedResponse::Nxdomain,
            RecordType::A,
            ResponseCode::NXDomain,
            vec![],
            true,
        ),
        (
            BlockedResponse::Null,
            RecordType::A,
            ResponseCode::NoError,
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)],
            false,
        ),
        (
            BlockedResponse::Null,
            RecordType::AAAA,
            ResponseCode::NoError,
            vec![IpAddr::V6(Ipv6Addr::UNSPECIFIED)],
            false,
        ),
        (
            BlockedResponse::Refused,
            RecordType::A,
            ResponseCode::Refused,
            vec![],
            false,
        ),
        (
            BlockedResponse::Nodata,
            RecordType::A,
            ResponseCode::NoError,
            vec![],
            true,
        ),
        (
            custom.clone(),
            RecordType::A,
            ResponseCode::NoError,
            vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))],
            false,
        ),
        (
            custom,
            RecordType::AAAA,
            ResponseCode::NoError,
            vec!["fd00::1".parse().unwrap()],
            false,
        ),
    ];
    for (mode, qtype, rcode, ips, soa) in cases {
        let label = format!("{mode:?} {qtype}");
        let harness = Setup {
            blocked: mode,
            ..Setup::default()
        }
        .build();
        let answer = harness.answer(&request(0x0101, "x.ads.example.", qtype));
        assert_answers(&answer, 0x0101, "x.ads.example.");
        assert_eq!(answer.metadata.response_code, rcode, "{label}");
        let expected: Vec<_> = ips.into_iter().map(|ip| (ip, BLOCKED_TTL)).collect();
        assert_eq!(addresses(&answer), expected, "{label}");
        let soa_expected = if soa { vec![BLOCKED_TTL] } else { vec![] };
        assert_eq!(soa_ttls(&answer), soa_expected, "{label}");
        assert_eq!(
            harness.upstream.asked(),
            0,
            "{label}: blocked names stay home"
        );
    }
}

#[test]
fn local_records_are_answered_authoritatively() {
    let harness = Setup::default().build();
    let answer = harness.answer(&request(7, "nas.lan.", RecordType::A));
    assert_answers(&answer, 7, "nas.lan.");
    assert!(answer.metadata.authoritative);
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        addresses(&answer),
        vec![(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20)), 600)]
    );
    let nodata = harness.answer(&request(8, "nas.lan.", RecordType::AAAA));
    assert!(nodata.metadata.authoritative);
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty(), "the name has no AAAA");
    assert_eq!(soa_ttls(&nodata), vec![LOCAL_NODATA_TTL]);
    assert_eq!(harness.upstream.asked(), 0);
}

#[test]
fn second_query_is_served_from_the_cache_with_its_ttl_counted_down() {
    let harness = Setup::default().build();
    let ip = Ipv4Addr::new(192, 0, 2, 7);
    harness
        .upstream
        .set("www.example.", Upstream::Answer(ip, 300));
    let first = harness.answer(&request(1, "www.example.", RecordType::A));
    assert_answers(&first, 1, "www.example.");
    assert!(first.metadata.recursion_available);
    assert_eq!(addresses(&first), vec![(IpAddr::V4(ip), 300)]);
    harness.clock.advance(Duration::from_secs(100));
    let second = harness.answer(&request(2, "www.example.", RecordType::A));
    assert_answers(&second, 2, "www.example.");
    assert_eq!(addresses(&second), vec![(IpAddr::V4(ip), 200)]);
    assert_eq!(
        harness.upstream.asked(),
        1,
        "the second came from the cache"
    );
    let stats = harness.handler.stats().snapshot(0);
    assert_eq!((stats.forwarded, stats.cache_hits), (1, 1));
}

#[test]
fn a_cached_name_is_checked_again_under_a_new_policy() {
    let harness = Setup::default().build();
    harness.upstream.set(
        "www.example.",
        Upstream::Answer(Ipv4Addr::new(192, 0, 2, 7), 300),
    );
    harness.ask(&request(1, "www.example.", RecordType::A));
    assert_eq!(
        harness
            .answer(&request(2, "www.example.", RecordType::A))
            .metadata
            .response_code,
        ResponseCode::NoError,
        "passed once, cached"
    );
    harness.handler.replace_live(live(
        Arc::new(Fixed(Decision::Block)),
        FailMode::Open,
        BlockedResponse::Nxdomain,
        &harness.upstream,
    ));
    let blocked = harness.answer(&request(3, "www.example.", RecordType::A));
    assert_eq!(blocked.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(harness.upstream.asked(), 1);
}

/// A policy that blocks from `blocks_from` (the plugins' Unix seconds)
/// on and names that time as the boundary of its passes; counts its calls.
#[derive(Debug)]
struct Bedtime {
    blocks_from: u64,
    by_client: bool,
    asked: AtomicUsize,
}

impl Policy for Bedtime {
    fn rule(&self, question: &PolicyQuestion<'_>) -> crate::policy::Ruling {
        self.asked.fetch_add(1, Ordering::Relaxed);
        match question.unix_time >= self.blocks_from {
            true => crate::policy::Ruling::lasting(Decision::Block),
            false => crate::policy::Ruling {
                holds_until: self.blocks_from,
                ..crate::policy::Ruling::lasting(Decision::NoOpinion)
            },
        }
    }

    fn reads_client(&self) -> bool {
        self.by_client
    }
}

/// The manual clock's Unix seconds at its start.
const CLOCK_START: u64 = 1_700_000_000;

fn bedtime(after_secs: u64, by_client: bool) -> Arc<Bedtime> {
    Arc::new(Bedtime {
        blocks_from: CLOCK_START + after_secs,
        by_client,
        asked: AtomicUsize::new(0),
    })
}

#[test]
fn a_kept_verdict_is_decided_again_at_the_boundary_the_policy_named() {
    let policy = bedtime(100, false);
    let harness = Setup {
        policy: policy.clone(),
        ..Setup::default()
    }
    .build();
    let ip = Ipv4Addr::new(192, 0, 2, 9);
    harness
        .upstream
        .set("www.example.", Upstream::Answer(ip, 3600));
    let rcode = |id| {
        harness
            .answer(&request(id, "www.example.", RecordType::A))
            .metadata
            .response_code
    };
    let asked = || policy.asked.load(Ordering::Relaxed);
    assert_eq!(rcode(1), ResponseCode::NoError);
    assert_eq!(rcode(2), ResponseCode::NoError);
    assert_eq!(
        asked(),
        2,
        "the miss and the first hit ask; the hit keeps the pass"
    );
    harness.clock.advance(Duration::from_secs(99));
    assert_eq!(rcode(3), ResponseCode::NoError);
    assert_eq!(asked(), 2, "before the boundary the kept pass answers");
    harness.clock.advance(Duration::from_secs(1));
    assert_eq!(
        rcode(4),
        ResponseCode::NXDomain,
        "re-decided at the boundary"
    );
    assert_eq!(asked(), 3);
    assert_eq!(harness.upstream.asked(), 1, "the answer stayed cached");
}

#[test]
fn a_verdict_by_client_is_kept_for_the_client_that_asked() {
    let policy = bedtime(100, true);
    let harness = Setup {
        policy: policy.clone(),
        ..Setup::default()
    }
    .build();
    harness.upstream.set(
        "www.example.",
        Upstream::Answer(Ipv4Addr::new(192, 0, 2, 9), 3600),
    );
    let other = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 8));
    let asked = || policy.asked.load(Ordering::Relaxed);
    let www = request(1, "www.example.", RecordType::A);
    for client in [CLIENT, CLIENT, CLIENT] {
        harness.ask_from(client, &www).unwrap();
    }
    assert_eq!(asked(), 2, "kept for the client that asked");
    harness.ask_from(other, &www).unwrap();
    assert_eq!(asked(), 3, "another client is asked about");
    harness.ask_from(other, &www).unwrap();
    assert_eq!(asked(), 3, "and then kept for it");
}

/// A configured plugin that refuses everything.
#[derive(Debug)]
struct Kiosk;

impl Policy for Kiosk {
    fn rule(&self, _: &PolicyQuestion<'_>) -> crate::policy::Ruling {
        crate::policy::Ruling {
            by: Some("kiosk".parse().unwrap()),
            ..crate::policy::Ruling::lasting(Decision::Refuse)
        }
    }

    fn reads_client(&self) -> bool {
        true
    }
}

#[test]
fn a_refusal_is_refused_and_the_query_log_names_the_plugin() {
    let harness = Setup {
        policy: Arc::new(Kiosk),
        ..Setup::default()
    }
    .build();
    let refused = harness.answer(&request(1, "www.example.", RecordType::A));
    assert_answers(&refused, 1, "www.example.");
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    assert_eq!(harness.upstream.asked(), 0);
    let page = harness
        .handler
        .query_log()
        .search(&crate::stats::LogFilter::default(), 0, 10);
    let entry = &page.entries[0];
    assert_eq!(
        entry.plugin.map(|name| name.to_string()).as_deref(),
        Some("kiosk")
    );
    assert_eq!(entry.outcome, Outcome::Blocked);
    let page = Setup::default().build();
    page.answer(&request(2, "ads.example.", RecordType::A));
    let entries = page
        .handler
        .query_log()
        .search(&Default::default(), 0, 10)
        .entries;
    assert_eq!(entries[0].plugin, None, "a built-in plugin decided");
}

#[test]
fn an_expired_answer_is_served_stale_when_upstream_fails() {
    let harness = Setup::default().build();
    let ip = Ipv4Addr::new(192, 0, 2, 8);
    harness
        .upstream
        .set("stale.example.", Upstream::Answer(ip, 60));
    harness.ask(&request(1, "stale.example.", RecordType::A));
    harness.upstream.set("stale.example.", Upstream::Fail);
    harness.clock.advance(Duration::from_secs(61));
    let stale = harness.answer(&request(2, "stale.example.", RecordType::A));
    assert_answers(&stale, 2, "stale.example.");
    assert_eq!(stale.metadata.response_code, ResponseCode::NoError);
    let stale_ttl = CacheTuning::default().stale_answer_ttl.as_secs() as u32;
    assert_eq!(addresses(&stale), vec![(IpAddr::V4(ip), stale_ttl)]);
    assert_eq!(harness.upstream.asked(), 2, "upstream was asked again");
    assert_eq!(harness.handler.stats().snapshot(0).stale_served, 1);
}

#[test]
fn a_silent_upstream_gets_the_stale_answer_after_the_stale_timeout() {
    let harness = Setup::default().build();
    let ip = Ipv4Addr::new(192, 0, 2, 9);
    harness
        .upstream
        .set("slow.example.", Upstream::Answer(ip, 60));
    harness.ask(&request(1, "slow.example.", RecordType::A));
    harness.upstream.set("slow.example.", Upstream::Silent);
    harness.clock.advance(Duration::from_secs(61));
    let mut out = Vec::new();
    let Handled::Resolve { pending, fetch } = harness.handler.handle(
        &request(2, "slow.example.", RecordType::A),
        CLIENT,
        Protocol::Udp,
        &mut out,
    ) else {
        panic!("an expired answer waits for upstream");
    };
    let mut fetch = fetch.expect("a fetch");
    assert!(
        poll(Pin::new(&mut fetch)).is_pending(),
        "upstream is silent"
    );
    {
        let mut resolving = pin!(harness.handler.resolve(pending, &mut out));
        assert!(
            poll(resolving.as_mut()).is_pending(),
            "waits for upstream first"
        );
        let timeout = CacheTuning::default().stale_answer_timeout;
        harness.clock.advance(timeout - Duration::from_millis(1));
        assert!(poll(resolving.as_mut()).is_pending(), "not yet");
        harness.clock.advance(Duration::from_millis(1));
        assert!(
            poll(resolving.as_mut()).is_ready(),
            "the stale timeout passed"
        );
    }
    let stale = Message::from_vec(&out).unwrap();
    assert_answers(&stale, 2, "slow.example.");
    assert_eq!(addresses(&stale)[0].0, IpAddr::V4(ip));
}

#[test]
fn upstream_failure_is_servfail() {
    let harness = Setup::default().build();
    let answer = harness.answer(&request(9, "gone.example.", RecordType::A));
    assert_answers(&answer, 9, "gone.example.");
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert!(answer.answers.is_empty());
    assert_eq!(harness.upstream.asked(), 1);
}

#[test]
fn policy_fault_follows_the_fail_mode() {
    let ip = Ipv4Addr::new(192, 0, 2, 10);
    for (fail_mode, rcode, asked) in [
        (FailMode::Closed, ResponseCode::ServFail, 0),
        (FailMode::Open, ResponseCode::NoError, 1),
    ] {
        let harness = Setup {
            policy: Arc::new(Fixed(Decision::Fault)),
            fail_mode,
            ..Setup::default()
        }
        .build();
        harness
            .upstream
            .set("www.example.", Upstream::Answer(ip, 300));
        let answer = harness.answer(&request(3, "www.example.", RecordType::A));
        assert_answers(&answer, 3, "www.example.");
        assert_eq!(answer.metadata.response_code, rcode, "{fail_mode:?}");
        assert_eq!(harness.upstream.asked(), asked, "{fail_mode:?}");
        if fail_mode == FailMode::Open {
            assert_eq!(addresses(&answer), vec![(IpAddr::V4(ip), 300)]);
        } else {
            assert!(answer.answers.is_empty());
        }
    }
}

#[test]
fn paused_blocking_forwards_a_denied_name() {
    let harness = Setup {
        pause: PauseState::Paused,
        ..Setup::default()
    }
    .build();
    let ip = Ipv4Addr::new(192, 0, 2, 11);
    harness
        .upstream
        .set("ads.example.", Upstream::Answer(ip, 300));
    let answer = harness.answer(&request(4, "ads.example.", RecordType::A));
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&answer), vec![(IpAddr::V4(ip), 300)]);
    harness.handler.pause().set(PauseState::Blocking);
    let blocked = harness.answer(&request(5, "ads.example.", RecordType::A));
    assert_eq!(
        blocked.metadata.response_code,
        ResponseCode::NXDomain,
        "resumed: blocked again, cached or not"
    );
}

#[test]
fn malformed_input_is_formerr_or_ignored() {
    let harness = Setup::default().build();
    assert_eq!(
        harness.ask(&[0x12, 0x34, 0x01]),
        None,
        "shorter than a header"
    );
    let mut response = query_message(5, "www.example.", RecordType::A);
    response.metadata.message_type = MessageType::Response;
    assert_eq!(
        harness.ask(&response.to_vec().unwrap()),
        None,
        "a response is not answered"
    );

    let mut truncated = request(0x5151, "www.example.", RecordType::A);
    truncated.truncate(20);
    let formerr = harness.answer(&truncated);
    assert_eq!(formerr.metadata.id, 0x5151);
    assert_eq!(formerr.metadata.message_type, MessageType::Response);
    assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);
    assert!(formerr.queries.is_empty(), "no question to echo");

    let mut status = query_message(0x5252, "www.example.", RecordType::A);
    status.metadata.op_code = OpCode::Status;
    let notimp = harness.answer(&status.to_vec().unwrap());
    assert_eq!(notimp.metadata.response_code, ResponseCode::NotImp);
    assert_eq!(notimp.metadata.op_code, OpCode::Status);

    let mut message = query_message(0x5353, "www.example.", RecordType::A);
    let mut edns = Edns::new();
    edns.set_version(1);
    message.set_edns(edns);
    let badvers = harness.answer(&message.to_vec().unwrap());
    assert_eq!(
        u16::from(badvers.metadata.response_code),
        rcode::BADVERS,
        "extended rcode 16 (hickory reads it as BADSIG, the same number)"
    );
    assert_eq!(badvers.queries.len(), 1, "the question is echoed");

    assert_eq!(harness.upstream.asked(), 0);
    assert_eq!(harness.handler.stats().snapshot(0).rejected, 3);
}

#[test]
fn concurrent_misses_share_one_upstream_query() {
    let harness = Setup::default().build();
    let ip = Ipv4Addr::new(192, 0, 2, 12);
    harness
        .upstream
        .set("shared.example.", Upstream::Answer(ip, 300));
    let mut outs = [Vec::new(), Vec::new()];
    let [(first, fetch), (second, none)] = [0, 1].map(|index| {
        let mut out = Vec::new();
        let handled = harness.handler.handle(
            &request(20 + index, "shared.example.", RecordType::A),
            CLIENT,
            Protocol::Udp,
            &mut out,
        );
        let Handled::Resolve { pending, fetch } = handled else {
            panic!("a miss");
        };
        (pending, fetch)
    });
    assert!(none.is_none(), "the second waits on the first's fetch");
    let mut fetch = fetch.expect("the first starts the fetch");
    assert!(poll(Pin::new(&mut fetch)).is_ready());
    for (pending, out) in [first, second].into_iter().zip(&mut outs) {
        assert!(poll(pin!(harness.handler.resolve(pending, out))).is_ready());
    }
    for (index, out) in outs.iter().enumerate() {
        let answer = Message::from_vec(out).unwrap();
        assert_answers(&answer, 20 + index as u16, "shared.example.");
        assert_eq!(addresses(&answer), vec![(IpAddr::V4(ip), 300)]);
    }
    assert_eq!(harness.upstream.asked(), 1);
}

#[test]
fn a_fetch_dropped_unrun_fails_its_waiters_and_is_started_again() {
    let harness = Setup::default().build();
    let ip = Ipv4Addr::new(192, 0, 2, 13);
    harness
        .upstream
        .set("dropped.example.", Upstream::Answer(ip, 300));
    let mut out = Vec::new();
    let Handled::Resolve { pending, fetch } = harness.handler.handle(
        &request(30, "dropped.example.", RecordType::A),
        CLIENT,
        Protocol::Udp,
        &mut out,
    ) else {
        panic!("a miss");
    };
    drop(fetch);
    assert!(poll(pin!(harness.handler.resolve(pending, &mut out))).is_ready());
    let failed = Message::from_vec(&out).unwrap();
    assert_eq!(failed.metadata.response_code, ResponseCode::ServFail);
    let answer = harness.answer(&request(31, "dropped.example.", RecordType::A));
    assert_eq!(addresses(&answer), vec![(IpAddr::V4(ip), 300)]);
}

#[test]
fn misses_past_the_limits_are_shed_while_hits_and_local_names_are_answered() {
    let harness = Setup::default().build();
    let ip = Ipv4Addr::new(192, 0, 2, 14);
    harness
        .upstream
        .set("hit.example.", Upstream::Answer(ip, 300));
    harness.ask(&request(40, "hit.example.", RecordType::A));
    let flooder = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 66));
    let ask_as = |client: IpAddr, id: u16, name: &str| {
        let mut out = Vec::new();
        let handled = harness.handler.handle(
            &request(id, name, RecordType::A),
            client,
            Protocol::Udp,
            &mut out,
        );
        (handled, out)
    };
    let mut waiting = Vec::new();
    for (id, name) in [(41, "a.slow.example."), (42, "b.slow.example.")] {
        harness.upstream.set(name, Upstream::Silent);
        let (handled, _) = ask_as(flooder, id, name);
        assert!(
            matches!(handled, Handled::Resolve { .. }),
            "within its share"
        );
        waiting.push(handled);
    }
    let (handled, out) = ask_as(flooder, 43, "c.slow.example.");
    assert!(
        matches!(handled, Handled::Reply),
        "past its share: answered at once"
    );
    let shed = Message::from_vec(&out).unwrap();
    assert_answers(&shed, 43, "c.slow.example.");
    assert_eq!(shed.metadata.response_code, ResponseCode::ServFail);

    for (id, name) in [(44, "d.slow.example."), (45, "e.slow.example.")] {
        harness.upstream.set(name, Upstream::Silent);
        let (handled, _) = ask_as(CLIENT, id, name);
        assert!(
            matches!(handled, Handled::Resolve { .. }),
            "another client is let in"
        );
        waiting.push(handled);
    }
    let other = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 8));
    let (handled, out) = ask_as(other, 46, "f.slow.example.");
    assert!(
        matches!(handled, Handled::Reply),
        "every question slot is taken"
    );
    assert_eq!(
        Message::from_vec(&out).unwrap().metadata.response_code,
        ResponseCode::ServFail
    );

    let hit = harness.answer(&request(47, "hit.example.", RecordType::A));
    assert_eq!(addresses(&hit)[0].0, IpAddr::V4(ip));
    let local = harness.answer(&request(48, "nas.lan.", RecordType::A));
    assert_eq!(local.metadata.response_code, ResponseCode::NoError);
    assert_eq!(harness.handler.stats().snapshot(0).shed, 2);

    drop(waiting);
    let (handled, _) = ask_as(flooder, 49, "g.slow.example.");
    assert!(
        matches!(handled, Handled::Resolve { .. }),
        "dropped waiters and fetches give their slots back"
    );
}

#[test]
fn the_gate_refuses_clients_outside_the_acl_and_sends_rate_limited_ones_to_tcp() {
    let harness = Setup::default().build();
    let tuning: crate::config::ServerTuning = toml::from_str(
        "allow_clients = [\"192.168.1.0/24\"]\nrate_limit_queries = 1\nrate_limit_exempt = []",
    )
    .unwrap();
    let gated = Live {
        gate: Arc::new(Gate::new(&tuning)),
        plugin_clock_offset_secs: 0,
        ..live(
            Arc::clone(&POLICY),
            FailMode::Open,
            BlockedResponse::Nxdomain,
            &harness.upstream,
        )
    };
    harness.handler.replace_live(gated);
    let ask = |client: IpAddr, protocol: Protocol, id: u16| {
        let mut out = Vec::new();
        let handled = harness.handler.handle(
            &request(id, "nas.lan.", RecordType::A),
            client,
            protocol,
            &mut out,
        );
        assert!(matches!(handled, Handled::Reply));
        Message::from_vec(&out).unwrap()
    };
    let outsider = ask(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)), Protocol::Udp, 50);
    assert_answers(&outsider, 50, "nas.lan.");
    assert_eq!(outsider.metadata.response_code, ResponseCode::Refused);
    assert!(outsider.answers.is_empty());

    let first = ask(CLIENT, Protocol::Udp, 51);
    assert_eq!(addresses(&first).len(), 1, "within its rate");
    let limited = ask(CLIENT, Protocol::Udp, 52);
    assert_answers(&limited, 52, "nas.lan.");
    assert!(limited.metadata.truncation, "over UDP: retry over TCP");
    assert!(limited.answers.is_empty());
    let over_tcp = ask(CLIENT, Protocol::Tcp, 53);
    assert_eq!(
        addresses(&over_tcp).len(),
        1,
        "asked again over TCP, it is answered"
    );
    let stats = harness.handler.stats().snapshot(0);
    assert_eq!((stats.rejected, stats.limited), (1, 1));
}

#[test]
fn forward_zones_take_their_names_and_private_reverse_zones_never_reach_the_upstreams() {
    let harness = Setup {
        routes: "upstreams = [\"udp://192.0.2.53\", \"[/lan/168.192.in-addr.arpa/]192.168.1.1\"]\n",
        ..Setup::default()
    }
    .build();
    let ip = Ipv4Addr::new(192, 168, 1, 30);
    harness.router.set("printer.lan.", Upstream::Answer(ip, 60));
    let printer = harness.answer(&request(1, "printer.lan.", RecordType::A));
    assert_eq!(addresses(&printer), vec![(IpAddr::V4(ip), 60)]);
    harness
        .router
        .set("1.1.168.192.in-addr.arpa.", Upstream::Answer(ip, 60));
    let ptr = harness.answer(&request(2, "1.1.168.192.in-addr.arpa.", RecordType::PTR));
    assert_eq!(ptr.metadata.response_code, ResponseCode::NoError);
    assert_eq!(harness.router.asked(), 2, "the router got both");
    let ten = harness.answer(&request(3, "4.3.2.10.in-addr.arpa.", RecordType::PTR));
    assert_eq!(ten.metadata.response_code, ResponseCode::NXDomain);
    assert!(ten.metadata.authoritative);
    let soa = &ten.authorities[0];
    assert_eq!(
        soa.name.to_string(),
        "10.in-addr.arpa.",
        "the zone's own SOA"
    );
    let apex = harness.answer(&request(4, "10.in-addr.arpa.", RecordType::NS));
    assert_eq!(apex.metadata.response_code, ResponseCode::NoError);
    assert_eq!(soa_ttls(&apex).len(), 1, "NODATA at the apex");
    let home = harness.answer(&request(5, "nas.home.arpa.", RecordType::A));
    assert_eq!(home.metadata.response_code, ResponseCode::NXDomain);
    let localhost = harness.answer(&request(6, "db.localhost.", RecordType::AAAA));
    assert_eq!(
        addresses(&localhost),
        vec![(IpAddr::V6(Ipv6Addr::LOCALHOST), 60)]
    );
    assert_eq!(
        harness.upstream.asked(),
        0,
        "nothing reached the general upstreams"
    );
    harness.upstream.set(
        "example.com.",
        Upstream::Answer(Ipv4Addr::new(192, 0, 2, 9), 60),
    );
    harness.answer(&request(7, "example.com.", RecordType::A));
    assert_eq!((harness.upstream.asked(), harness.router.asked()), (1, 2));
}

#[test]
fn pause_keeps_local_records() {
    let harness = Setup {
        pause: PauseState::Paused,
        ..Setup::default()
    }
    .build();
    let answer = harness.answer(&request(1, "nas.lan.", RecordType::A));
    assert!(answer.metadata.authoritative);
    assert_eq!(
        addresses(&answer),
        vec![(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 20)), 600)]
    );
    assert_eq!(harness.upstream.asked(), 0);
}

#[test]
fn a_local_cname_comes_with_its_target() {
    let harness = Setup::default().build();
    let local = harness.answer(&request(1, "alias.lan.", RecordType::A));
    assert_answers(&local, 1, "alias.lan.");
    let kinds: Vec<_> = local
        .answers
        .iter()
        .map(|record| record.record_type())
        .collect();
    assert_eq!(kinds, [RecordType::CNAME, RecordType::A]);
    assert_eq!(local.answers[1].name.to_string(), "nas.lan.");
    assert_eq!(local.answers[1].data, RData::A(A::new(192, 168, 1, 20)));
    assert_eq!(harness.upstream.asked(), 0);

    let ip = Ipv4Addr::new(192, 0, 2, 80);
    harness
        .upstream
        .set("example.com.", Upstream::Answer(ip, 300));
    for id in [2, 3] {
        let joined = harness.answer(&request(id, "www.lan.", RecordType::A));
        assert_answers(&joined, id, "www.lan.");
        assert_eq!(joined.answers.len(), 2, "{joined:?}");
        assert_eq!(joined.answers[0].record_type(), RecordType::CNAME);
        assert_eq!(joined.answers[1].name.to_string(), "example.com.");
        assert_eq!(joined.answers[1].data, RData::A(A(ip)));
    }
    assert_eq!(
        harness.upstream.asked(),
        1,
        "the second came from the cache"
    );
    let cname = harness.answer(&request(4, "www.lan.", RecordType::CNAME));
    assert_eq!(cname.answers.len(), 1, "a CNAME question is not chased");
}

#[test]
fn checking_disabled_answers_are_cached_apart() {
    let harness = Setup::default().build();
    let (checked, unchecked) = (Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2));
    harness.upstream.set(
        "signed.example.",
        Upstream::ByCheckingDisabled { checked, unchecked },
    );
    let ask = |id, cd| {
        let mut message = query_message(id, "signed.example.", RecordType::A);
        message.metadata.checking_disabled = cd;
        let answer = harness.answer(&message.to_vec().unwrap());
        assert_eq!(answer.metadata.checking_disabled, cd);
        addresses(&answer)[0].0
    };
    assert_eq!(ask(1, true), IpAddr::V4(unchecked));
    assert_eq!(
        ask(2, false),
        IpAddr::V4(checked),
        "CD=1's answer is not served to CD=0"
    );
    assert_eq!(ask(3, true), IpAddr::V4(unchecked));
    assert_eq!(ask(4, false), IpAddr::V4(checked));
    assert_eq!(harness.upstream.asked(), 2, "each cached once");
}

#[test]
fn concurrent_misses_with_and_without_cd_do_not_share_a_fetch() {
    let harness = Setup::default().build();
    let mut out = Vec::new();
    let mut held = Vec::new();
    for (client, cd) in [(1, false), (2, true), (3, false)] {
        let mut message = query_message(1, "join.example.", RecordType::A);
        message.metadata.checking_disabled = cd;
        let request = message.to_vec().unwrap();
        let client = IpAddr::from([192, 168, 1, client]);
        match harness
            .handler
            .handle(&request, client, Protocol::Udp, &mut out)
        {
            Handled::Resolve { pending, fetch } => held.push((pending, fetch)),
            other => panic!("{other:?}"),
        }
    }
    let fetches: Vec<bool> = held.iter().map(|(_, fetch)| fetch.is_some()).collect();
    assert_eq!(fetches, [true, true, false], "CD=0 joins CD=0 only");
}

/// How a client asks about AD: plain, with EDNS DO, or with AD in the query.
#[derive(Debug, Clone, Copy)]
enum Asks {
    Plain,
    Do,
    Ad,
}

/// The AD bit of the answer to `asks`'s query for `name`.
fn authentic(harness: &Harness, id: u16, name: &str, asks: Asks) -> bool {
    let mut message = query_message(id, name, RecordType::A);
    match asks {
        Asks::Plain => {}
        Asks::Do => {
            let mut edns = Edns::new();
            edns.set_dnssec_ok(true);
            message.set_edns(edns);
        }
        Asks::Ad => message.metadata.authentic_data = true,
    }
    let answer = harness.answer(&message.to_vec().unwrap());
    assert_answers(&answer, id, name);
    answer.metadata.authentic_data
}

const SIGNED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 53);

#[test]
fn ad_from_an_untrusted_upstream_is_cleared_before_it_is_cached() {
    let harness = Setup::default().build();
    harness.upstream.set(
        "signed.example.",
        Upstream::Authentic(SIGNED, Trust::Untrusted),
    );
    assert!(!authentic(&harness, 1, "signed.example.", Asks::Do));
    assert!(!authentic(&harness, 2, "signed.example.", Asks::Do), "hit");
    assert!(!authentic(&harness, 3, "signed.example.", Asks::Ad));
    assert!(!authentic(&harness, 4, "signed.example.", Asks::Ad), "hit");
    assert_eq!(harness.upstream.asked(), 2, "DO=1 and DO=0 cached apart");
}

#[test]
fn ad_from_a_trusted_upstream_reaches_only_clients_that_set_do_or_ad() {
    let harness = Setup::default().build();
    harness.upstream.set(
        "signed.example.",
        Upstream::Authentic(SIGNED, Trust::Trusted),
    );
    assert!(authentic(&harness, 1, "signed.example.", Asks::Do));
    assert!(authentic(&harness, 2, "signed.example.", Asks::Do), "hit");
    assert!(!authentic(&harness, 3, "signed.example.", Asks::Plain));
    assert_eq!(harness.upstream.asked(), 2);
    assert!(
        authentic(&harness, 4, "signed.example.", Asks::Ad),
        "the DO=0 entry a plain client got AD=0 from keeps AD"
    );
    assert!(
        !authentic(&harness, 5, "signed.example.", Asks::Plain),
        "hit"
    );
    assert_eq!(
        harness.upstream.asked(),
        2,
        "AD and plain clients share an entry"
    );
}

#[test]
fn an_ad_client_missing_first_does_not_give_ad_to_plain_hits() {
    let harness = Setup::default().build();
    harness.upstream.set(
        "signed.example.",
        Upstream::Authentic(SIGNED, Trust::Trusted),
    );
    assert!(authentic(&harness, 1, "signed.example.", Asks::Ad));
    assert!(
        !authentic(&harness, 2, "signed.example.", Asks::Plain),
        "hit"
    );
    assert!(authentic(&harness, 3, "signed.example.", Asks::Ad), "hit");
    assert_eq!(harness.upstream.asked(), 1);
}

#[test]
fn local_and_blocked_answers_never_set_ad() {
    let harness = Setup::default().build();
    harness
        .upstream
        .set("example.com.", Upstream::Authentic(SIGNED, Trust::Trusted));
    for asks in [Asks::Do, Asks::Ad] {
        assert!(!authentic(&harness, 1, "nas.lan.", asks), "local");
        assert!(!authentic(&harness, 2, "ads.example.", asks), "blocked");
        assert!(
            !authentic(&harness, 3, "www.lan.", asks),
            "local CNAME joined"
        );
    }
    assert!(
        authentic(&harness, 4, "example.com.", Asks::Ad),
        "the target's own answer"
    );
}

#[test]
fn zone_transfers_and_chaos_questions_are_refused_without_asking_upstream() {
    let harness = Setup::default().build();
    let mut chaos = query_message(21, "version.bind.", RecordType::TXT);
    chaos.queries[0].set_query_class(DNSClass::CH);
    let questions = [
        (chaos.to_vec().unwrap(), "version.bind."),
        (
            request(22, "example.com.", RecordType::AXFR),
            "example.com.",
        ),
        (
            request(23, "example.com.", RecordType::IXFR),
            "example.com.",
        ),
    ];
    for (index, (question, name)) in questions.iter().enumerate() {
        let answer = harness.answer(question);
        assert_answers(&answer, 21 + index as u16, name);
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::Refused,
            "{name}"
        );
        assert!(answer.answers.is_empty());
    }
    assert_eq!(harness.upstream.asked(), 0);
    let plain = harness.answer(&request(24, "example.com.", RecordType::A));
    assert_ne!(plain.metadata.response_code, ResponseCode::Refused);
    assert_eq!(
        harness.upstream.asked(),
        1,
        "an IN question still goes upstream"
    );
}

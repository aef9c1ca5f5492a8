//! The answer cache: answers kept in wire form, served by patching the ID,
//! the question's letter case and the TTLs into a copy.
//!
//! Time is always passed in, so the rules (clamping, negative TTLs,
//! serve-stale, refresh of hot names) are tested without waiting.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use parking_lot::RwLock;
use quick_cache::Weighter;

use super::verdict::VerdictSlot;
use super::wire::{self, Query, QuestionKey};
use crate::config::{CacheBound, CacheTuning};

/// A cached answer in wire form.
#[derive(Debug)]
pub(crate) struct Answer {
    wire: Box<[u8]>,
    ttl_offsets: Box<[u16]>,
    stored_at: Instant,
    ttl: u32,
    hot: HitWindow,
    refreshing: AtomicBool,
    verdict: VerdictSlot,
}

/// The outcome of clamping an upstream answer to the cache rules.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AnswerError {
    /// The answer could not be re-encoded.
    #[error("cannot encode answer: {0}")]
    Encode(String),
    /// The answer is too big to cache.
    #[error("answer of {0} bytes is too big")]
    TooBig(usize),
}

/// Rules that turn upstream TTLs into cache lifetimes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TtlRules {
    /// Lowest lifetime, seconds.
    pub min: u32,
    /// Highest lifetime, seconds.
    pub max: u32,
    /// Highest lifetime of a negative answer, seconds.
    pub negative: u32,
}

impl Answer {
    /// Builds a cacheable answer from an upstream response: strips EDNS,
    /// clamps each TTL, and derives the lifetime (RFC 2308 for negatives).
    pub(crate) fn from_upstream(
        mut message: Message,
        rules: TtlRules,
        now: Instant,
    ) -> Result<Self, AnswerError> {
        message.edns = None;
        message.signature = None;
        message.metadata.id = 0;
        let negative = message.metadata.response_code == ResponseCode::NXDomain
            || (message.metadata.response_code == ResponseCode::NoError
                && message.answers.is_empty());
        let ttl = if negative {
            let soa_ttl = message
                .authorities
                .iter()
                .find_map(|record| match &record.data {
                    RData::SOA(soa) => Some(record.ttl.min(soa.minimum)),
                    _ => None,
                });
            soa_ttl.unwrap_or(rules.negative).min(rules.negative)
        } else {
            message
                .answers
                .iter()
                .chain(&message.authorities)
                .filter(|record| record.record_type() != RecordType::OPT)
                .map(|record| record.ttl)
                .min()
                .unwrap_or(0)
                .clamp(rules.min, rules.max)
        };
        for record in message
            .answers
            .iter_mut()
            .chain(&mut message.authorities)
            .chain(&mut message.additionals)
        {
            record.ttl = if negative {
                record.ttl.min(ttl)
            } else {
                record.ttl.clamp(rules.min, rules.max)
            };
        }
        let wire = message
            .to_vec()
            .map_err(|err| AnswerError::Encode(err.to_string()))?;
        if wire.len() > u16::MAX as usize {
            return Err(AnswerError::TooBig(wire.len()));
        }
        let ttl_offsets =
            wire::ttl_offsets(&wire).ok_or_else(|| AnswerError::Encode("unreadable".into()))?;
        Ok(Self::new(wire.into(), ttl_offsets.into(), ttl, now))
    }

    fn new(wire: Box<[u8]>, ttl_offsets: Box<[u16]>, ttl: u32, now: Instant) -> Self {
        Self {
            wire,
            ttl_offsets,
            stored_at: now,
            ttl,
            hot: HitWindow::default(),
            refreshing: AtomicBool::new(false),
            verdict: VerdictSlot::default(),
        }
    }

    /// Where the verdict memo keeps which policy let this question through.
    pub(crate) fn verdict(&self) -> &VerdictSlot {
        &self.verdict
    }

    /// Bytes this answer occupies.
    pub(crate) fn size(&self) -> usize {
        self.wire.len() + self.ttl_offsets.len() * 2 + size_of::<Self>()
    }

    /// Writes this answer as the response to `query`. TTLs count down from
    /// when it was stored, or are all `ttl_override` (stale answers).
    pub(crate) fn write(
        &self,
        query: &Query<'_>,
        now: Instant,
        ttl_override: Option<u32>,
        out: &mut Vec<u8>,
    ) {
        self.write_unaddressed(now, ttl_override, out);
        wire::readdress(query, out);
    }

    /// Writes this answer as stored (ID 0, the question as first asked),
    /// its TTLs as `write` gives them.
    pub(crate) fn write_unaddressed(
        &self,
        now: Instant,
        ttl_override: Option<u32>,
        out: &mut Vec<u8>,
    ) {
        out.clear();
        out.extend_from_slice(&self.wire);
        let age = self.age(now);
        for &offset in &self.ttl_offsets {
            let at = offset as usize;
            let stored = u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
            let ttl = ttl_override.unwrap_or_else(|| stored.saturating_sub(age));
            out[at..at + 4].copy_from_slice(&ttl.to_be_bytes());
        }
    }

    fn age(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.stored_at).as_secs()).unwrap_or(u32::MAX)
    }
}

/// Counts hits in a sliding window to tell hot names.
#[derive(Debug, Default)]
struct HitWindow {
    /// Start of the window, milliseconds after the answer was stored.
    start_ms: AtomicU64,
    hits: AtomicU32,
}

impl HitWindow {
    fn hit(&self, since_stored: Duration, window: Duration) -> u32 {
        let now_ms = since_stored.as_millis() as u64;
        let start = self.start_ms.load(Ordering::Relaxed);
        if now_ms.saturating_sub(start) > window.as_millis() as u64 {
            self.start_ms.store(now_ms, Ordering::Relaxed);
            self.hits.store(1, Ordering::Relaxed);
            1
        } else {
            self.hits.fetch_add(1, Ordering::Relaxed) + 1
        }
    }
}

/// What the cache holds for a question.
#[derive(Debug)]
pub(crate) enum Lookup {
    /// A live answer; `refresh` says it is hot and about to expire, and this
    /// caller won the right to refresh it.
    Fresh {
        /// The answer.
        answer: Arc<Answer>,
        /// Fetch it again now, in the background.
        refresh: bool,
    },
    /// An expired answer still within the stale window.
    Stale(Arc<Answer>),
    /// Nothing usable.
    Miss,
}

impl Lookup {
    /// The answer found, fresh or stale.
    pub(crate) fn answer(&self) -> Option<&Arc<Answer>> {
        match self {
            Self::Fresh { answer, .. } | Self::Stale(answer) => Some(answer),
            Self::Miss => None,
        }
    }
}

/// A question as stored: the name on the heap, sized to fit. Lookups use
/// the inline `QuestionKey` of the query without copying it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StoredKey {
    name: Box<[u8]>,
    qtype: u16,
    qclass: u16,
    /// DO and CD (`QuestionKey::dnssec_bits`).
    dnssec: u8,
}

impl From<&QuestionKey> for StoredKey {
    fn from(key: &QuestionKey) -> Self {
        Self {
            name: key.name.as_slice().into(),
            qtype: key.qtype,
            qclass: key.qclass,
            dnssec: key.dnssec_bits(),
        }
    }
}

impl std::hash::Hash for StoredKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        wire::hash_question(&self.name, self.qtype, self.qclass, self.dnssec, state);
    }
}

impl quick_cache::Equivalent<StoredKey> for QuestionKey {
    fn equivalent(&self, stored: &StoredKey) -> bool {
        self.qtype == stored.qtype
            && self.qclass == stored.qclass
            && self.dnssec_bits() == stored.dnssec
            && self.name.as_slice() == &*stored.name
    }
}

#[derive(Debug, Clone, Copy)]
struct AnswerWeight {
    by_bytes: bool,
}

impl Weighter<StoredKey, Arc<Answer>> for AnswerWeight {
    fn weight(&self, key: &StoredKey, answer: &Arc<Answer>) -> u64 {
        if self.by_bytes {
            (answer.size() + key.name.len() + size_of::<StoredKey>()) as u64
        } else {
            1
        }
    }
}

type Store = quick_cache::sync::Cache<StoredKey, Arc<Answer>, AnswerWeight>;

/// The shared answer cache.
pub(crate) struct Cache {
    store: RwLock<(CacheBound, Arc<Store>)>,
    tuning: arc_swap::ArcSwap<CacheTuning>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("entries", &self.len())
            .finish()
    }
}

impl Cache {
    /// Creates an empty cache with these settings.
    pub(crate) fn new(tuning: CacheTuning) -> Self {
        let bound = tuning.bound();
        Self {
            store: RwLock::new((bound, Arc::new(new_store(bound)))),
            tuning: arc_swap::ArcSwap::from_pointee(tuning),
        }
    }

    /// Applies new settings; a change of bound kind starts an empty cache.
    pub(crate) fn retune(&self, tuning: CacheTuning) {
        let bound = tuning.bound();
        let mut store = self.store.write();
        match (store.0, bound) {
            (CacheBound::Entries(_), CacheBound::Entries(limit))
            | (CacheBound::Bytes(_), CacheBound::Bytes(limit)) => {
                store.1.set_capacity(limit);
            }
            _ => store.1 = Arc::new(new_store(bound)),
        }
        store.0 = bound;
        self.tuning.store(Arc::new(tuning));
    }

    /// The settings in force.
    pub(crate) fn tuning(&self) -> arc_swap::Guard<Arc<CacheTuning>> {
        self.tuning.load()
    }

    /// TTL rules derived from the settings in force.
    pub(crate) fn ttl_rules(&self) -> TtlRules {
        let tuning = self.tuning.load();
        let secs = |duration: Duration| u32::try_from(duration.as_secs()).unwrap_or(u32::MAX);
        TtlRules {
            min: secs(tuning.min_ttl),
            max: secs(tuning.max_ttl),
            negative: secs(tuning.negative_ttl),
        }
    }

    /// Looks a question up at `now`.
    pub(crate) fn lookup(&self, key: &QuestionKey, now: Instant) -> Lookup {
        let Some(answer) = self.store.read().1.get(key) else {
            return Lookup::Miss;
        };
        let tuning = self.tuning.load();
        let age = now.saturating_duration_since(answer.stored_at);
        let ttl = Duration::from_secs(u64::from(answer.ttl));
        if age < ttl {
            let refresh = tuning.refresh && self.is_due_for_refresh(&answer, age, ttl, &tuning);
            return Lookup::Fresh { answer, refresh };
        }
        if tuning.serve_stale && age < ttl + tuning.stale_ttl {
            return Lookup::Stale(answer);
        }
        Lookup::Miss
    }

    fn is_due_for_refresh(
        &self,
        answer: &Answer,
        age: Duration,
        ttl: Duration,
        tuning: &CacheTuning,
    ) -> bool {
        let hits = answer.hot.hit(age, tuning.refresh_hit_window);
        let remaining = ttl - age;
        hits >= tuning.refresh_hot_hits
            && remaining * 100 <= ttl * u32::from(tuning.refresh_before.0)
            && !answer.refreshing.swap(true, Ordering::Relaxed)
    }

    /// Stores an answer; answers with a zero lifetime, or larger than
    /// `MAX_ANSWER_BYTES`, are not kept.
    pub(crate) fn insert(&self, key: &QuestionKey, answer: Arc<Answer>) {
        if answer.ttl > 0 && answer.size() <= MAX_ANSWER_BYTES {
            self.store.read().1.insert(StoredKey::from(key), answer);
        }
    }

    /// Number of cached answers.
    pub(crate) fn len(&self) -> usize {
        self.store.read().1.len()
    }
}

/// The largest answer cached (answers over TCP may reach 64 KiB): with any
/// bound in entries, the cache's memory stays below entries × this.
const MAX_ANSWER_BYTES: usize = 16 << 10;

fn new_store(bound: CacheBound) -> Store {
    let (items, weight, by_bytes) = match bound {
        CacheBound::Entries(entries) => (entries as usize, entries, false),
        CacheBound::Bytes(bytes) => ((bytes / 256).max(16) as usize, bytes, true),
    };
    quick_cache::sync::Cache::with_weighter(items.min(1 << 20), weight, AnswerWeight { by_bytes })
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::str::FromStr;

    use hickory_proto::op::{Message, MessageType, OpCode, Query as HQuery};
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::{Name, Record};

    use super::*;

    const RULES: TtlRules = TtlRules {
        min: 60,
        max: 600,
        negative: 300,
    };

    fn response(name: &str, ttl: u32, answers: usize, soa: Option<(u32, u32)>) -> Message {
        let name = Name::from_str(name).unwrap();
        let mut message = Message::new(7, MessageType::Response, OpCode::Query);
        message.add_query(HQuery::query(name.clone(), RecordType::A));
        for index in 0..answers {
            message.add_answer(Record::from_rdata(
                name.clone(),
                ttl,
                RData::A(A(Ipv4Addr::new(192, 0, 2, index as u8))),
            ));
        }
        if let Some((record_ttl, minimum)) = soa {
            let soa = SOA::new(name.clone(), name.clone(), 1, 2, 3, 4, minimum);
            message.add_authority(Record::from_rdata(name, record_ttl, RData::SOA(soa)));
            message.metadata.response_code = ResponseCode::NXDomain;
        }
        message
    }

    fn query(name: &str) -> Vec<u8> {
        let mut message = Message::new(0x4242, MessageType::Query, OpCode::Query);
        message.add_query(HQuery::query(Name::from_str(name).unwrap(), RecordType::A));
        message.to_vec().unwrap()
    }

    #[test]
    fn ttls_are_clamped() {
        let now = crate::clock::now();
        assert_eq!(
            Answer::from_upstream(response("a.example.", 5, 1, None), RULES, now)
                .unwrap()
                .ttl,
            60
        );
        assert_eq!(
            Answer::from_upstream(response("a.example.", 9999, 1, None), RULES, now)
                .unwrap()
                .ttl,
            600
        );
    }

    #[test]
    fn negative_ttl_follows_soa_minimum_and_cap() {
        let now = crate::clock::now();
        let answer =
            Answer::from_upstream(response("n.example.", 0, 0, Some((900, 120))), RULES, now)
                .unwrap();
        assert_eq!(answer.ttl, 120);
        let answer =
            Answer::from_upstream(response("n.example.", 0, 0, Some((9000, 9000))), RULES, now)
                .unwrap();
        assert_eq!(answer.ttl, 300);
    }

    #[test]
    fn written_answer_counts_down_and_echoes_id_and_case() {
        let start = crate::clock::now();
        let answer =
            Answer::from_upstream(response("a.example.", 100, 2, None), RULES, start).unwrap();
        let mut request = query("a.example.");
        request[13] = b'A'; // hickory lower-cases names it encodes
        let parsed = Query::parse(&request).unwrap();
        let mut out = Vec::new();
        answer.write(&parsed, start + Duration::from_secs(30), None, &mut out);
        let message = Message::from_vec(&out).unwrap();
        assert_eq!(message.metadata.id, 0x4242);
        assert_eq!(message.queries[0].name.to_string(), "A.example.");
        assert!(message.answers.iter().all(|record| record.ttl == 70));
    }

    #[test]
    fn stale_then_miss() {
        let tuning = CacheTuning {
            stale_ttl: Duration::from_secs(100),
            ..CacheTuning::default()
        };
        let cache = Cache::new(tuning);
        let start = crate::clock::now();
        let request = query("s.example.");
        let key = Query::parse(&request).unwrap().key;
        let answer =
            Answer::from_upstream(response("s.example.", 60, 1, None), RULES, start).unwrap();
        cache.insert(&key, Arc::new(answer));
        assert!(matches!(
            cache.lookup(&key, start + Duration::from_secs(10)),
            Lookup::Fresh { .. }
        ));
        assert!(matches!(
            cache.lookup(&key, start + Duration::from_secs(61)),
            Lookup::Stale(_)
        ));
        assert!(matches!(
            cache.lookup(&key, start + Duration::from_secs(200)),
            Lookup::Miss
        ));
    }

    #[test]
    fn hot_names_are_refreshed_once() {
        let cache = Cache::new(CacheTuning::default());
        let start = crate::clock::now();
        let request = query("h.example.");
        let key = Query::parse(&request).unwrap().key;
        let answer =
            Answer::from_upstream(response("h.example.", 100, 1, None), RULES, start).unwrap();
        cache.insert(&key, Arc::new(answer));
        let refresh_at = |secs| match cache.lookup(&key, start + Duration::from_secs(secs)) {
            Lookup::Fresh { refresh, .. } => refresh,
            other => panic!("expected fresh, got {other:?}"),
        };
        assert!(!refresh_at(10), "not hot and not near expiry");
        assert!(!refresh_at(20));
        assert!(refresh_at(95), "third hit within the window, 5% left");
        assert!(!refresh_at(96), "only one refresh at a time");
    }

    #[test]
    fn entry_bound_evicts() {
        let tuning = CacheTuning {
            max_entries: Some(50),
            ..CacheTuning::default()
        };
        let cache = Cache::new(tuning);
        let now = crate::clock::now();
        for index in 0..500 {
            let name = format!("n{index}.example.");
            let request = query(&name);
            let key = Query::parse(&request).unwrap().key;
            cache.insert(
                &key,
                Arc::new(Answer::from_upstream(response(&name, 100, 1, None), RULES, now).unwrap()),
            );
        }
        assert!(cache.len() <= 50, "{} entries", cache.len());
    }

    #[test]
    fn by_default_the_cache_is_bounded_in_bytes_and_a_huge_answer_is_not_kept() {
        assert_eq!(CacheTuning::default().bound(), CacheBound::Bytes(32 << 20));
        let cache = Cache::new(CacheTuning::default());
        let now = crate::clock::now();
        let request = query("big.example.");
        let key = Query::parse(&request).unwrap().key;
        let huge =
            Answer::from_upstream(response("big.example.", 100, 2_000, None), RULES, now).unwrap();
        assert!(huge.size() > MAX_ANSWER_BYTES);
        cache.insert(&key, Arc::new(huge));
        assert!(matches!(cache.lookup(&key, now), Lookup::Miss));
        let small =
            Answer::from_upstream(response("big.example.", 100, 1, None), RULES, now).unwrap();
        cache.insert(&key, Arc::new(small));
        assert!(matches!(cache.lookup(&key, now), Lookup::Fresh { .. }));
    }
}

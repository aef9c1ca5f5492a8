//! Counters, top lists, the upstream latency histogram and the query log.
//! Everything here is bounded in memory and cheap to update per query.

mod querylog;
mod series;
mod top;

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

pub(crate) use querylog::{LogEntry, LogFilter, LogPage, QueryLog};
pub(crate) use series::{MinuteCounts, MinuteSeries};
pub(crate) use top::TopCounter;

/// How a query was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// From the cache.
    Cached,
    /// From an upstream.
    Forwarded,
    /// From an expired cache entry because upstreams failed or were slow.
    Stale,
    /// Blocked by policy.
    Blocked,
    /// Refused or answered with an error before resolution.
    Rejected,
    /// Every upstream failed, or policy faulted with fail mode closed.
    Failed,
    /// Answered from local records.
    Local,
    /// SERVFAIL at once: too many misses under way, from this client or
    /// from all (see `[tuning.server]`).
    Shed,
    /// Over the client's UDP rate limit: empty, with TC set.
    Limited,
}

/// Query types counted on their own; others count as "other".
const COUNTED_TYPES: [(u16, &str); 12] = [
    (1, "A"),
    (28, "AAAA"),
    (5, "CNAME"),
    (15, "MX"),
    (16, "TXT"),
    (12, "PTR"),
    (33, "SRV"),
    (6, "SOA"),
    (2, "NS"),
    (65, "HTTPS"),
    (64, "SVCB"),
    (255, "ANY"),
];

/// Upper bounds of the latency buckets, in microseconds.
const LATENCY_BOUNDS_US: [u64; 12] = [
    500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000,
    2_000_000,
];

/// Longest list kept by each top counter.
const TOP_CAPACITY: usize = 2_000;

/// One answered query, as recorded.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueryRecord<'a> {
    /// Dotted lower-case name.
    pub name: &'a [u8],
    /// Query type.
    pub qtype: u16,
    /// Who asked.
    pub client: IpAddr,
    /// Response code sent (extended codes included).
    pub rcode: u16,
    /// How it was answered.
    pub outcome: Outcome,
}

/// All counters of one appliance.
#[derive(Debug)]
pub(crate) struct Stats {
    queries: AtomicU64,
    by_type: [AtomicU64; COUNTED_TYPES.len() + 1],
    by_rcode: [AtomicU64; 24],
    by_outcome: [AtomicU64; 9],
    cache_misses: AtomicU64,
    upstream_errors: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BOUNDS_US.len() + 1],
    latency_sum_us: AtomicU64,
    top_names: TopCounter<Vec<u8>>,
    top_blocked: TopCounter<Vec<u8>>,
    top_clients: TopCounter<IpAddr>,
    series: MinuteSeries,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            queries: AtomicU64::new(0),
            by_type: Default::default(),
            by_rcode: Default::default(),
            by_outcome: Default::default(),
            cache_misses: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            latency_buckets: Default::default(),
            latency_sum_us: AtomicU64::new(0),
            top_names: TopCounter::new(TOP_CAPACITY),
            top_blocked: TopCounter::new(TOP_CAPACITY),
            top_clients: TopCounter::new(TOP_CAPACITY),
            series: MinuteSeries::default(),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    /// Records an answered query.
    pub(crate) fn record(&self, query: &QueryRecord<'_>) {
        bump(&self.queries);
        let type_index = COUNTED_TYPES
            .iter()
            .position(|&(qtype, _)| qtype == query.qtype)
            .unwrap_or(COUNTED_TYPES.len());
        bump(&self.by_type[type_index]);
        bump(&self.by_rcode[usize::from(query.rcode).min(self.by_rcode.len() - 1)]);
        bump(&self.by_outcome[query.outcome as usize]);
        self.top_names.add(query.name);
        self.top_clients.add(&query.client);
        let blocked = query.outcome == Outcome::Blocked;
        if blocked {
            self.top_blocked.add(query.name);
        }
        self.series.record(
            crate::clock::unix_now(),
            blocked,
            query.outcome == Outcome::Cached,
        );
    }

    /// Queries per minute over the last day, oldest first.
    pub(crate) fn series(&self) -> Vec<MinuteCounts> {
        self.series.last_day(crate::clock::unix_now())
    }

    /// Records a question the cache could not answer.
    pub(crate) fn record_cache_miss(&self) {
        bump(&self.cache_misses);
    }

    /// Records one upstream's answer time.
    pub(crate) fn record_upstream_latency(&self, elapsed: Duration) {
        let micros = elapsed.as_micros() as u64;
        let bucket = LATENCY_BOUNDS_US
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        bump(&self.latency_buckets[bucket]);
        self.latency_sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// Records one failed upstream attempt.
    pub(crate) fn record_upstream_error(&self) {
        bump(&self.upstream_errors);
    }

    /// A consistent-enough copy of every counter, for the API.
    pub(crate) fn snapshot(&self, top: usize) -> StatsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let outcome = |outcome: Outcome| load(&self.by_outcome[outcome as usize]);
        let names = |counter: &TopCounter<Vec<u8>>| {
            counter
                .top(top)
                .into_iter()
                .map(|(name, count)| (String::from_utf8_lossy(&name).into_owned(), count))
                .collect()
        };
        let mut by_type: Vec<(String, u64)> = COUNTED_TYPES
            .iter()
            .zip(&self.by_type)
            .map(|(&(_, name), counter)| (name.to_owned(), load(counter)))
            .collect();
        by_type.push(("other".into(), load(&self.by_type[COUNTED_TYPES.len()])));
        StatsSnapshot {
            queries: load(&self.queries),
            by_type: by_type
                .into_iter()
                .filter(|(_, count)| *count > 0)
                .collect(),
            by_rcode: self
                .by_rcode
                .iter()
                .enumerate()
                .filter(|(_, counter)| load(counter) > 0)
                .map(|(rcode, counter)| (rcode_name(rcode as u16), load(counter)))
                .collect(),
            cache_hits: outcome(Outcome::Cached),
            cache_misses: load(&self.cache_misses),
            stale_served: outcome(Outcome::Stale),
            forwarded: outcome(Outcome::Forwarded),
            blocked: outcome(Outcome::Blocked),
            rejected: outcome(Outcome::Rejected),
            failed: outcome(Outcome::Failed),
            local: outcome(Outcome::Local),
            shed: outcome(Outcome::Shed),
            limited: outcome(Outcome::Limited),
            upstream_errors: load(&self.upstream_errors),
            upstream_latency: LatencyHistogram {
                bounds_us: LATENCY_BOUNDS_US.to_vec(),
                counts: self.latency_buckets.iter().map(load).collect(),
                sum_us: load(&self.latency_sum_us),
            },
            top_names: names(&self.top_names),
            top_blocked: names(&self.top_blocked),
            top_clients: self
                .top_clients
                .top(top)
                .into_iter()
                .map(|(ip, count)| (ip.to_string(), count))
                .collect(),
        }
    }
}

fn rcode_name(rcode: u16) -> String {
    match rcode {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        16 => "BADVERS".into(),
        other => format!("RCODE{other}"),
    }
}

/// Upstream answer times.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct LatencyHistogram {
    /// Upper bound of each bucket but the last, microseconds.
    pub bounds_us: Vec<u64>,
    /// Answers per bucket; the last bucket is above every bound.
    pub counts: Vec<u64>,
    /// Sum of all answer times, microseconds.
    pub sum_us: u64,
}

/// Counters as reported by the API.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StatsSnapshot {
    /// Queries answered.
    pub queries: u64,
    /// Queries per type.
    pub by_type: Vec<(String, u64)>,
    /// Answers per response code.
    pub by_rcode: Vec<(String, u64)>,
    /// Answered from the cache.
    pub cache_hits: u64,
    /// Questions the cache did not hold.
    pub cache_misses: u64,
    /// Answered stale.
    pub stale_served: u64,
    /// Answered from upstream.
    pub forwarded: u64,
    /// Blocked.
    pub blocked: u64,
    /// Refused or malformed.
    pub rejected: u64,
    /// SERVFAIL because every upstream failed or policy faulted.
    pub failed: u64,
    /// Answered from local records.
    pub local: u64,
    /// SERVFAIL at once because too many misses were under way.
    pub shed: u64,
    /// Over the client's rate limit.
    pub limited: u64,
    /// Failed upstream attempts.
    pub upstream_errors: u64,
    /// Upstream answer times.
    pub upstream_latency: LatencyHistogram,
    /// Most asked names.
    pub top_names: Vec<(String, u64)>,
    /// Most blocked names.
    pub top_blocked: Vec<(String, u64)>,
    /// Most active clients.
    pub top_clients: Vec<(String, u64)>,
}

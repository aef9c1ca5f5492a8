//! Per-minute counts over the last 24 hours, in a fixed ring of atomic
//! buckets: recording takes no lock and no allocation.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Minutes kept: one day.
const MINUTES: usize = 24 * 60;

#[derive(Debug, Default)]
struct Bucket {
    /// Which minute (Unix seconds / 60) the counts belong to.
    minute: AtomicU64,
    queries: AtomicU64,
    blocked: AtomicU64,
    cache_hits: AtomicU64,
}

/// What happened in one minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct MinuteCounts {
    /// Start of the minute, Unix seconds.
    pub unix_secs: u64,
    /// Queries answered.
    pub queries: u64,
    /// Of those, blocked.
    pub blocked: u64,
    /// Of those, answered from the cache.
    pub cache_hits: u64,
}

/// The last day of queries, minute by minute.
#[derive(Debug)]
pub(crate) struct MinuteSeries {
    buckets: Box<[Bucket]>,
}

impl Default for MinuteSeries {
    fn default() -> Self {
        Self {
            buckets: (0..MINUTES).map(|_| Bucket::default()).collect(),
        }
    }
}

impl MinuteSeries {
    /// Counts one query answered at `unix_secs`.
    pub(crate) fn record(&self, unix_secs: u64, blocked: bool, cache_hit: bool) {
        let minute = unix_secs / 60;
        let bucket = &self.buckets[(minute % MINUTES as u64) as usize];
        let seen = bucket.minute.load(Ordering::Acquire);
        if seen > minute {
            return;
        }
        if seen < minute {
            // The first query of a new minute clears the day-old counts; a
            // query racing it at the boundary may be lost, never doubled.
            let claimed = bucket
                .minute
                .compare_exchange(seen, minute, Ordering::AcqRel, Ordering::Acquire)
                .is_ok();
            if claimed {
                for counter in [&bucket.queries, &bucket.blocked, &bucket.cache_hits] {
                    counter.store(0, Ordering::Relaxed);
                }
            } else if bucket.minute.load(Ordering::Acquire) != minute {
                return;
            }
        }
        bucket.queries.fetch_add(1, Ordering::Relaxed);
        if blocked {
            bucket.blocked.fetch_add(1, Ordering::Relaxed);
        }
        if cache_hit {
            bucket.cache_hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Every minute of the last day up to `now_unix_secs` that saw a
    /// query, oldest first.
    pub(crate) fn last_day(&self, now_unix_secs: u64) -> Vec<MinuteCounts> {
        let now = now_unix_secs / 60;
        let oldest = now.saturating_sub(MINUTES as u64 - 1);
        let mut minutes: Vec<MinuteCounts> = self
            .buckets
            .iter()
            .filter_map(|bucket| {
                let minute = bucket.minute.load(Ordering::Acquire);
                let queries = bucket.queries.load(Ordering::Relaxed);
                (minute >= oldest && minute <= now && queries > 0).then(|| MinuteCounts {
                    unix_secs: minute * 60,
                    queries,
                    blocked: bucket.blocked.load(Ordering::Relaxed),
                    cache_hits: bucket.cache_hits.load(Ordering::Relaxed),
                })
            })
            .collect();
        minutes.sort_unstable_by_key(|counts| counts.unix_secs);
        minutes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_land_in_their_minute_and_age_out_after_a_day() {
        let series = MinuteSeries::default();
        let start = 1_800_000_000 / 60 * 60;
        series.record(start, true, false);
        series.record(start + 59, false, true);
        series.record(start + 60, false, false);
        let day = series.last_day(start + 61);
        assert_eq!(
            day,
            vec![
                MinuteCounts {
                    unix_secs: start,
                    queries: 2,
                    blocked: 1,
                    cache_hits: 1
                },
                MinuteCounts {
                    unix_secs: start + 60,
                    queries: 1,
                    blocked: 0,
                    cache_hits: 0
                },
            ]
        );
        // A day later the same bucket starts over.
        let next_day = start + MINUTES as u64 * 60;
        series.record(next_day, false, false);
        let day = series.last_day(next_day);
        assert_eq!(day.len(), 2, "{day:?}");
        assert_eq!(day[0].unix_secs, start + 60);
        assert_eq!(day[1].queries, 1);
        assert_eq!(day[1].blocked, 0);
    }

    #[test]
    fn a_late_query_does_not_reopen_an_old_minute() {
        let series = MinuteSeries::default();
        let start = 1_800_000_000 / 60 * 60;
        series.record(start + MINUTES as u64 * 60, false, false);
        series.record(start, true, false);
        let day = series.last_day(start + MINUTES as u64 * 60);
        assert_eq!(day.len(), 1);
        assert_eq!(day[0].blocked, 0);
    }
}

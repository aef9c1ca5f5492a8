//! The query log: a fixed ring in memory, appended to daily files in the
//! data directory and pruned after the retention time.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::Outcome;

/// One logged query.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogEntry {
    /// When it was answered, Unix milliseconds.
    pub unix_ms: u64,
    /// Who asked.
    #[schema(value_type = String)]
    pub client: IpAddr,
    /// The name asked, dotted.
    #[serde(
        serialize_with = "serialize_name",
        deserialize_with = "deserialize_name"
    )]
    #[schema(value_type = String)]
    pub name: heapless::Vec<u8, 255>,
    /// Query type number.
    pub qtype: u16,
    /// Response code sent.
    pub rcode: u16,
    /// How it was answered.
    pub outcome: Outcome,
    /// Time spent, microseconds.
    pub elapsed_us: u32,
}

fn serialize_name<S: serde::Serializer>(
    name: &heapless::Vec<u8, 255>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&String::from_utf8_lossy(name))
}

fn deserialize_name<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<heapless::Vec<u8, 255>, D::Error> {
    let name = String::deserialize(deserializer)?;
    heapless::Vec::from_slice(name.as_bytes())
        .map_err(|_| serde::de::Error::custom("a name is at most 255 bytes"))
}

/// Which entries a search returns; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LogFilter {
    /// Part of the name, lower case.
    pub name: Option<String>,
    /// The client's address.
    pub client: Option<IpAddr>,
    /// The query type number.
    pub qtype: Option<u16>,
    /// How the query was answered.
    pub outcome: Option<Outcome>,
    /// Answered at or after this time, Unix milliseconds.
    pub since_ms: Option<u64>,
    /// Answered before this time, Unix milliseconds.
    pub until_ms: Option<u64>,
}

impl LogFilter {
    fn matches(&self, entry: &LogEntry) -> bool {
        self.client.is_none_or(|client| client == entry.client)
            && self.qtype.is_none_or(|qtype| qtype == entry.qtype)
            && self.outcome.is_none_or(|outcome| outcome == entry.outcome)
            && self.since_ms.is_none_or(|since| entry.unix_ms >= since)
            && self.until_ms.is_none_or(|until| entry.unix_ms < until)
            && self.name.as_deref().is_none_or(|part| {
                entry
                    .name
                    .windows(part.len().max(1))
                    .any(|window| window.eq_ignore_ascii_case(part.as_bytes()))
            })
    }
}

/// One page of a query log search.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogPage {
    /// The entries, newest first.
    pub entries: Vec<LogEntry>,
    /// Whether more entries match past this page.
    pub more: bool,
}

#[derive(Debug, Default)]
struct Ring {
    entries: Vec<LogEntry>,
    /// Entries ever written; entry `n` lives at `n % capacity`.
    written: u64,
    /// Entries already appended to disk.
    flushed: u64,
}

/// The in-memory query log.
#[derive(Debug)]
pub(crate) struct QueryLog {
    ring: Mutex<Ring>,
    capacity: usize,
    /// Entries overwritten before they reached disk, in total.
    lost: AtomicU64,
}

impl QueryLog {
    /// A log keeping the last `capacity` entries in memory.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            ring: Mutex::new(Ring::default()),
            capacity: capacity.max(1),
            lost: AtomicU64::new(0),
        }
    }

    /// Records an entry, overwriting the oldest when full.
    pub(crate) fn push(&self, entry: LogEntry) {
        let mut ring = self.ring.lock();
        let slot = (ring.written % self.capacity as u64) as usize;
        if slot < ring.entries.len() {
            ring.entries[slot] = entry;
        } else {
            ring.entries.push(entry);
        }
        ring.written += 1;
    }

    /// Entries overwritten before they reached disk since start.
    pub(crate) fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// The entries `filter` matches, newest first, skipping `offset` of
    /// them and returning at most `limit`.
    pub(crate) fn search(&self, filter: &LogFilter, offset: usize, limit: usize) -> LogPage {
        let ring = self.ring.lock();
        let available = ring.written.min(self.capacity as u64);
        let mut matching = (0..available)
            .map(|back| &ring.entries[((ring.written - 1 - back) % self.capacity as u64) as usize])
            .filter(|entry| filter.matches(entry))
            .skip(offset);
        let entries: Vec<LogEntry> = matching.by_ref().take(limit).cloned().collect();
        LogPage {
            more: matching.next().is_some(),
            entries,
        }
    }

    /// Copies out the entries not yet on disk, a chunk per lock hold so
    /// queries logging meanwhile wait microseconds, not milliseconds.
    fn take_unflushed(&self) -> (Vec<LogEntry>, u64) {
        const CHUNK: u64 = 256;
        let capacity = self.capacity as u64;
        let mut pending = Vec::new();
        let mut lost = 0;
        loop {
            let mut ring = self.ring.lock();
            let oldest_kept = ring.written.saturating_sub(capacity);
            lost += oldest_kept.saturating_sub(ring.flushed);
            let from = ring.flushed.max(oldest_kept);
            let to = ring.written.min(from + CHUNK);
            pending.extend((from..to).map(|seq| ring.entries[(seq % capacity) as usize].clone()));
            ring.flushed = to;
            if to == ring.written {
                return (pending, lost);
            }
        }
    }

    /// Appends entries not yet on disk to today's file in `dir`, then
    /// deletes files older than `retention`. Entries that fell out of the
    /// ring before a flush are counted as lost.
    pub(crate) fn flush(
        &self,
        dir: &Path,
        now_unix_ms: u64,
        retention: Duration,
    ) -> std::io::Result<FlushReport> {
        let (pending, lost) = self.take_unflushed();
        std::fs::create_dir_all(dir)?;
        if !pending.is_empty() {
            let mut text = Vec::with_capacity(pending.len() * 128);
            for entry in &pending {
                serde_json::to_writer(&mut text, entry).map_err(std::io::Error::other)?;
                text.push(b'\n');
            }
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(day_file(dir, now_unix_ms / 1000))?;
            file.write_all(&text)?;
            file.sync_data()?;
        }
        let removed = prune(dir, now_unix_ms / 1000, retention)?;
        Ok(FlushReport {
            written: pending.len(),
            lost,
            removed,
        })
    }
}

/// What a flush did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FlushReport {
    /// Entries appended to disk.
    pub written: usize,
    /// Entries overwritten in memory before they could be flushed.
    pub lost: u64,
    /// Old files deleted.
    pub removed: usize,
}

const PREFIX: &str = "queries-";

fn day_file(dir: &Path, unix_secs: u64) -> PathBuf {
    let (year, month, day) = civil_date(unix_secs / 86_400);
    dir.join(format!("{PREFIX}{year:04}-{month:02}-{day:02}.jsonl"))
}

/// Deletes day files whose whole day lies before `now - retention`.
fn prune(dir: &Path, now_unix_secs: u64, retention: Duration) -> std::io::Result<usize> {
    let cutoff_day = now_unix_secs.saturating_sub(retention.as_secs()) / 86_400;
    let keep_from = day_file(dir, cutoff_day * 86_400);
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let is_log = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with(PREFIX));
        // Day files sort by name, so comparing paths compares dates.
        if is_log && path < keep_from {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Year, month, day of a day number since 1970-01-01 (proleptic Gregorian).
fn civil_date(days: u64) -> (i64, u32, u32) {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> LogEntry {
        LogEntry {
            unix_ms: 0,
            client: [127, 0, 0, 1].into(),
            name: heapless::Vec::from_slice(name.as_bytes()).unwrap(),
            qtype: 1,
            rcode: 0,
            outcome: Outcome::Cached,
            elapsed_us: 1,
        }
    }

    #[test]
    fn search_filters_then_pages() {
        let log = QueryLog::new(100);
        for index in 0..30u64 {
            let mut entry = entry(&format!("host{index}.Example.org"));
            entry.unix_ms = index * 1000;
            entry.outcome = if index % 3 == 0 {
                Outcome::Blocked
            } else {
                Outcome::Forwarded
            };
            log.push(entry);
        }
        let blocked = LogFilter {
            outcome: Some(Outcome::Blocked),
            ..LogFilter::default()
        };
        let first = log.search(&blocked, 0, 4);
        let times: Vec<u64> = first.entries.iter().map(|entry| entry.unix_ms).collect();
        assert_eq!(times, [27_000, 24_000, 21_000, 18_000]);
        assert!(first.more);
        let last = log.search(&blocked, 8, 4);
        assert_eq!(last.entries.len(), 2);
        assert!(!last.more);
        let by_name = LogFilter {
            name: Some("host2".into()),
            until_ms: Some(25_000),
            ..LogFilter::default()
        };
        let names: Vec<u64> = log
            .search(&by_name, 0, 100)
            .entries
            .iter()
            .map(|entry| entry.unix_ms / 1000)
            .collect();
        assert_eq!(names, [24, 23, 22, 21, 20, 2]);
        let by_case = LogFilter {
            name: Some("example.ORG".into()),
            ..LogFilter::default()
        };
        assert_eq!(log.search(&by_case, 0, 100).entries.len(), 30);
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(20_415), (2025, 11, 23));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
    }

    #[test]
    fn ring_keeps_newest_and_flush_counts_losses() {
        let dir = std::env::temp_dir().join(format!("moat-querylog-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let log = QueryLog::new(3);
        for index in 0..5 {
            log.push(entry(&format!("n{index}")));
        }
        let names: Vec<String> = log
            .search(&LogFilter::default(), 0, 10)
            .entries
            .iter()
            .map(|entry| String::from_utf8_lossy(&entry.name).into_owned())
            .collect();
        assert_eq!(names, ["n4", "n3", "n2"]);
        let day = 20_000 * 86_400 * 1000;
        let report = log.flush(&dir, day, Duration::from_secs(86_400)).unwrap();
        assert_eq!((report.written, report.lost), (3, 2));
        let old = log
            .flush(&dir, day + 3 * 86_400_000, Duration::from_secs(86_400))
            .unwrap();
        assert_eq!(
            old.removed, 1,
            "the file from three days ago is past retention"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

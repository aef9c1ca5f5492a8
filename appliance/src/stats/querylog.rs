//! The query log: a fixed ring in memory, appended to daily files in the
//! data directory (0600, in a 0700 directory) and pruned after the
//! retention time. On disk it is bounded twice: all day files together
//! hold at most `tuning.query_log.max_bytes`, and the log always leaves
//! `max(64 MiB, 5 %)` of its file system free, so that policy and bundle
//! writes never meet a full disk. Older days go first; when today's file
//! alone hits a bound, entries are dropped (and counted) until there is
//! room again.

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::Outcome;
use crate::config::QueryLogTuning;
use crate::store::private_dir;

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
    /// The configured plugin (`[[policy.plugins]]`) that decided, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub plugin: Option<crate::config::PluginName>,
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
    /// Entries not written because a disk bound was reached, in total.
    dropped: AtomicU64,
    /// The bound that stopped the last flush writing, if one did.
    limited: Mutex<Option<DiskLimit>>,
}

impl QueryLog {
    /// A log keeping the last `capacity` entries in memory.
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            ring: Mutex::new(Ring::default()),
            capacity: capacity.max(1),
            lost: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            limited: Mutex::new(None),
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

    /// Entries a disk bound kept off disk since start.
    pub(crate) fn dropped_for_disk(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Why the log stopped writing to disk, while it has.
    pub(crate) fn disk_limit(&self) -> Option<DiskLimit> {
        *self.limited.lock()
    }

    /// Keeps the bound the last flush that had entries met, saying so in the log when the
    /// log stops or starts writing again.
    fn note_limit(&self, limit: Option<DiskLimit>, dropped: usize) {
        self.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
        let before = std::mem::replace(&mut *self.limited.lock(), limit);
        match (before, limit) {
            (None, Some(limit)) => {
                tracing::warn!(%limit, "query log stopped writing to disk; dropped entries are counted")
            }
            (Some(_), None) => tracing::info!("query log writes to disk again"),
            _ => {}
        }
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

    /// Deletes files older than the retention time, then appends entries
    /// not yet on disk to today's file in `dir`, as many as the disk
    /// bounds leave room for (deleting the oldest days first). Entries
    /// that fell out of the ring before a flush are counted as lost.
    pub(crate) fn flush(
        &self,
        dir: &Path,
        now_unix_ms: u64,
        tuning: &QueryLogTuning,
    ) -> std::io::Result<FlushReport> {
        let (pending, lost) = self.take_unflushed();
        private_dir(dir).map_err(std::io::Error::other)?;
        let now_secs = now_unix_ms / 1000;
        let mut removed = prune(dir, now_secs, tuning.retention)?;
        let text = encode(&pending)?;
        let today = day_file(dir, now_secs);
        let files = log_files(dir)?;
        let plan = plan(
            &files,
            &today,
            text.len() as u64,
            tuning.max_bytes,
            space(dir)?,
        );
        for (path, _) in &files[..plan.delete] {
            std::fs::remove_file(path)?;
        }
        removed += plan.delete;
        let fits = fitting(&text, plan.room);
        if fits > 0 {
            append(&today, &text[..fits])?;
        }
        let written = text[..fits].iter().filter(|&&byte| byte == b'\n').count();
        let dropped = pending.len() - written;
        if !pending.is_empty() {
            self.note_limit((dropped > 0).then_some(plan.binding), dropped);
        }
        Ok(FlushReport {
            written,
            lost,
            removed,
            dropped,
        })
    }
}

/// Entries as JSON lines.
fn encode(entries: &[LogEntry]) -> std::io::Result<Vec<u8>> {
    let mut text = Vec::with_capacity(entries.len() * 128);
    for entry in entries {
        serde_json::to_writer(&mut text, entry).map_err(std::io::Error::other)?;
        text.push(b'\n');
    }
    Ok(text)
}

/// Appends `text` to `file`, creating it 0600.
fn append(file: &Path, text: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(file)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text)?;
    file.sync_data()
}

/// Free space the log always leaves on its file system, at least...
pub(crate) const RESERVE_MIN_BYTES: u64 = 64 << 20;
/// ... and at least this share of the file system (1/20: 5 %).
const RESERVE_SHARE: u64 = 20;

/// A file system's size and the bytes an unprivileged writer may still use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Space {
    /// Bytes free for unprivileged writers.
    pub free: u64,
    /// Bytes in all.
    pub total: u64,
}

impl Space {
    /// What the log leaves free on this file system.
    fn reserve(self) -> u64 {
        RESERVE_MIN_BYTES.max(self.total / RESERVE_SHARE)
    }
}

/// The space of the file system holding `dir`.
fn space(dir: &Path) -> std::io::Result<Space> {
    let stats = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
    let unit = stats.fragment_size() as u64;
    Ok(Space {
        free: (stats.blocks_available() as u64).saturating_mul(unit),
        total: (stats.blocks() as u64).saturating_mul(unit),
    })
}

/// The disk bound that stopped the log writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DiskLimit {
    /// The day files hold `tuning.query_log.max_bytes`.
    Bytes {
        /// The bound.
        max: u64,
    },
    /// The file system is down to the free space the log leaves.
    FreeSpace {
        /// Bytes free.
        free: u64,
        /// Bytes the log leaves free.
        reserve: u64,
    },
}

impl fmt::Display for DiskLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const MIB: u64 = 1 << 20;
        match self {
            Self::Bytes { max } => write!(
                f,
                "the query log files hold tuning.query_log.max_bytes ({} MiB)",
                max / MIB
            ),
            Self::FreeSpace { free, reserve } => write!(
                f,
                "the data directory's file system has {} MiB free, and the query log leaves {} MiB",
                free / MIB,
                reserve / MIB
            ),
        }
    }
}

/// What a flush may do: delete the `delete` oldest day files, then append
/// up to `room` bytes; `binding` is the bound that sets `room`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    delete: usize,
    room: u64,
    binding: DiskLimit,
}

/// Plans appending `incoming` bytes to `today` beside `files` (day files
/// and their sizes, oldest first): older days are deleted while the bytes
/// bound or the free-space reserve leaves too little room; today's file
/// is never deleted.
fn plan(files: &[(PathBuf, u64)], today: &Path, incoming: u64, max: u64, space: Space) -> Plan {
    let reserve = space.reserve();
    let mut used: u64 = files.iter().map(|(_, len)| len).sum();
    let mut free = space.free;
    let mut delete = 0;
    loop {
        let by_bytes = max.saturating_sub(used);
        let by_space = free.saturating_sub(reserve);
        let (room, binding) = if by_bytes <= by_space {
            (by_bytes, DiskLimit::Bytes { max })
        } else {
            (by_space, DiskLimit::FreeSpace { free, reserve })
        };
        let oldest = files.get(delete).filter(|(path, _)| path != today);
        match oldest {
            Some((_, len)) if room < incoming => {
                used -= len;
                free = free.saturating_add(*len);
                delete += 1;
            }
            _ => {
                return Plan {
                    delete,
                    room,
                    binding,
                };
            }
        }
    }
}

/// How much of `text` (JSON lines) fits in `room` bytes: whole lines only.
fn fitting(text: &[u8], room: u64) -> usize {
    if text.len() as u64 <= room {
        return text.len();
    }
    let room = room as usize;
    text[..room]
        .iter()
        .rposition(|&byte| byte == b'\n')
        .map_or(0, |end| end + 1)
}

/// The day files in `dir` and their sizes, oldest first.
fn log_files(dir: &Path) -> std::io::Result<Vec<(PathBuf, u64)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if is_log(&entry.path()) {
            files.push((entry.path(), entry.metadata()?.len()));
        }
    }
    files.sort();
    Ok(files)
}

fn is_log(path: &Path) -> bool {
    path.file_name()
        .and_then(|name| name.to_str())
        .is_some_and(|name| name.starts_with(PREFIX))
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
    /// Entries not written because a disk bound was reached.
    pub dropped: usize,
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
        // Day files sort by name, so comparing paths compares dates.
        if is_log(&path) && path < keep_from {
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
            plugin: None,
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
        let tuning = QueryLogTuning {
            retention: Duration::from_secs(86_400),
            ..QueryLogTuning::default()
        };
        let report = log.flush(&dir, day, &tuning).unwrap();
        assert_eq!((report.written, report.lost), (3, 2));
        let old = log.flush(&dir, day + 3 * 86_400_000, &tuning).unwrap();
        assert_eq!(
            old.removed, 1,
            "the file from three days ago is past retention"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    const MIB: u64 = 1 << 20;

    fn days(sizes: &[u64]) -> Vec<(PathBuf, u64)> {
        let dir = Path::new("/q");
        (0..sizes.len())
            .map(|day| (day_file(dir, day as u64 * 86_400), sizes[day]))
            .collect()
    }

    #[test]
    fn the_byte_bound_deletes_old_days_then_stops_today() {
        let roomy = Space {
            free: 10_000 * MIB,
            total: 20_000 * MIB,
        };
        let files = days(&[40 * MIB, 40 * MIB, 10 * MIB]);
        let today = &files[2].0;
        let keep = plan(&files, today, MIB, 100 * MIB, roomy);
        assert_eq!((keep.delete, keep.room), (0, 10 * MIB), "room enough");
        let shed = plan(&files, today, 20 * MIB, 100 * MIB, roomy);
        assert_eq!(
            (shed.delete, shed.room),
            (1, 50 * MIB),
            "the oldest day goes"
        );
        let full = plan(&files, today, 200 * MIB, 100 * MIB, roomy);
        assert_eq!(full.delete, 2, "every day but today goes");
        assert_eq!(full.room, 90 * MIB);
        assert_eq!(full.binding, DiskLimit::Bytes { max: 100 * MIB });
    }

    #[test]
    fn the_log_leaves_the_larger_of_64_mib_and_5_percent_free() {
        let files = days(&[MIB, 2 * MIB]);
        let today = &files[1].0;
        let small = Space {
            free: 70 * MIB,
            total: 100 * MIB,
        };
        assert_eq!(small.reserve(), 64 * MIB);
        let tight = plan(&files[1..], today, 10 * MIB, u64::MAX, small);
        assert_eq!(tight.room, 6 * MIB, "64 MiB stay free");
        assert_eq!(
            tight.binding,
            DiskLimit::FreeSpace {
                free: 70 * MIB,
                reserve: 64 * MIB
            }
        );
        let large = Space {
            free: 1100 * MIB,
            total: 20_000 * MIB,
        };
        assert_eq!(large.reserve(), 1000 * MIB, "5 % of a large disk");
        let freed = plan(&files, today, 101 * MIB, u64::MAX, large);
        assert_eq!(freed.delete, 1, "an old day is deleted to make room");
        assert_eq!(freed.room, 101 * MIB);
        let nothing = Space {
            free: 10 * MIB,
            total: 100 * MIB,
        };
        assert_eq!(plan(&[], today, 1, u64::MAX, nothing).room, 0);
        assert!(
            DiskLimit::FreeSpace {
                free: 10 * MIB,
                reserve: 64 * MIB
            }
            .to_string()
            .contains("10 MiB free")
        );
    }

    #[test]
    fn only_whole_lines_are_written() {
        assert_eq!(fitting(b"a\nbb\nccc\n", 100), 9);
        assert_eq!(fitting(b"a\nbb\nccc\n", 8), 5);
        assert_eq!(fitting(b"a\nbb\nccc\n", 1), 0);
    }

    /// Pushes `count` entries and flushes them to `dir`.
    fn flood(log: &QueryLog, dir: &Path, count: usize, tuning: &QueryLogTuning) -> FlushReport {
        for index in 0..count {
            log.push(entry(&format!(
                "r{index}-{}.flood.example",
                rand::random::<u64>()
            )));
        }
        log.flush(dir, 20_000 * 86_400 * 1000, tuning).unwrap()
    }

    #[test]
    fn a_bound_stops_writes_says_so_and_lifts() {
        let root = std::env::temp_dir().join(format!("moat-querylog-bound-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = root.join("querylog");
        let log = QueryLog::new(1000);
        let mut tuning = QueryLogTuning {
            max_bytes: 20_000,
            ..QueryLogTuning::default()
        };
        let first = flood(&log, &dir, 1000, &tuning);
        assert!(first.written > 0 && first.dropped > 0, "{first:?}");
        assert_eq!(first.written + first.dropped, 1000);
        let used: u64 = log_files(&dir).unwrap().iter().map(|(_, len)| len).sum();
        assert!(used <= 20_000, "{used} bytes on disk");
        assert_eq!(log.disk_limit(), Some(DiskLimit::Bytes { max: 20_000 }));
        assert_eq!(log.dropped_for_disk(), first.dropped as u64);
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&log_files(&dir).unwrap()[0].0), 0o600);
        flood(&log, &dir, 0, &tuning);
        assert_eq!(
            log.disk_limit(),
            Some(DiskLimit::Bytes { max: 20_000 }),
            "a flush with nothing new keeps saying so"
        );
        tuning.max_bytes = 1 << 30;
        let after = flood(&log, &dir, 10, &tuning);
        assert_eq!((after.written, after.dropped), (10, 0));
        assert_eq!(log.disk_limit(), None, "writing again once there is room");
        std::fs::remove_dir_all(root).unwrap();
    }

    /// Where [`a_flood_on_a_small_filesystem_stops_before_full`] mounts its
    /// file system for the copy of this test binary it runs there.
    const SMALL_FS_ENV: &str = "MOAT_TEST_SMALL_FS";

    /// Floods the query log on a 96 MiB tmpfs (mounted in a mount
    /// namespace of its own, so it needs root or user namespaces; without
    /// them it fails saying so): writing stops with 64 MiB still
    /// free, and an 8 MiB atomic write (a bundle's size) still succeeds.
    #[test]
    fn a_flood_on_a_small_filesystem_stops_before_full() {
        let dir = std::env::temp_dir().join(format!("moat-small-fs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let script = format!(
            "mount -t tmpfs -o size=96m,mode=0700 tmpfs '{}' && exec \"$0\" --exact \
             stats::querylog::tests::small_filesystem_inner --ignored --nocapture --test-threads=1",
            dir.display()
        );
        let outcome = std::process::Command::new("unshare")
            .args(["-m", "sh", "-c", &script])
            .arg(std::env::current_exe().unwrap())
            .env(SMALL_FS_ENV, &dir)
            .output();
        let _ = std::fs::remove_dir(&dir);
        let output = outcome.unwrap_or_else(|err| {
            panic!("this test mounts a tmpfs with `unshare -m` (util-linux), which failed: {err}")
        });
        let said = String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "the small file system run failed (it needs root or user namespaces to mount a tmpfs): {said}"
        );
        let line = said.lines().find_map(|line| {
            line.find("small filesystem: stopped")
                .map(|start| &line[start..])
        });
        println!(
            "{}",
            line.unwrap_or_else(|| panic!("no report from the inner test: {said}"))
        );
    }

    /// The half of the test above that runs on the small file system.
    #[test]
    #[ignore = "run by a_flood_on_a_small_filesystem_stops_before_full inside its mount namespace"]
    fn small_filesystem_inner() {
        let Some(root) = std::env::var_os(SMALL_FS_ENV).map(PathBuf::from) else {
            return;
        };
        let data = crate::store::DataDir::open(&root.join("data")).unwrap();
        let dir = data.path(crate::store::files::QUERY_LOG);
        let log = QueryLog::new(50_000);
        let tuning = QueryLogTuning {
            max_bytes: u64::MAX,
            ..QueryLogTuning::default()
        };
        let mut flushes = 0;
        while log.disk_limit().is_none() {
            flushes += 1;
            assert!(flushes < 100, "the log never stopped");
            flood(&log, &dir, 50_000, &tuning);
        }
        let left = space(&dir).unwrap();
        assert!(
            left.free >= RESERVE_MIN_BYTES - MIB,
            "{} MiB left",
            left.free / MIB
        );
        assert!(matches!(
            log.disk_limit(),
            Some(DiskLimit::FreeSpace { .. })
        ));
        data.write("bundle", &vec![7u8; 8 << 20], crate::store::Access::Secret)
            .expect("a bundle still fits");
        println!(
            "small filesystem: stopped after {flushes} flushes with {} MiB free, {} entries dropped",
            left.free / MIB,
            log.dropped_for_disk()
        );
    }
}

//! Reading blocklist sources, keeping the last good copy of each in the
//! data directory so an unreadable source never empties the policy.

use crate::config::{BlocklistSource, SourceLocation};
use crate::store::{Access, DataDir, StoreError};

use super::parse::{Rule, parse_list};

/// What one source gave, for the summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceReport {
    /// The source as configured.
    pub source: String,
    /// Names it blocks.
    pub blocked: usize,
    /// Exceptions it lists.
    pub allowed: usize,
    /// Lines it could not use.
    pub rejected: usize,
    /// Lines ignored for their modifier.
    pub ignored: usize,
    /// Set when the source could not be read and its last good copy was used.
    pub stale: Option<String>,
}

/// Why no copy of a source could be had.
#[derive(Debug, thiserror::Error)]
#[error("blocklist {source_path}: {reason}, and no earlier copy is kept")]
pub struct SourceError {
    /// The source.
    pub source_path: String,
    /// Why reading it failed.
    pub reason: String,
}

/// Reads and parses a source. A local file refreshes its kept copy, and
/// falls back to it when unreadable; a URL source is its kept copy (the
/// daemon downloads it, see `store_download`), empty until first fetched.
pub(super) fn load(
    source: &BlocklistSource,
    data: &DataDir,
    visit: &mut dyn FnMut(Rule, &str),
) -> Result<SourceReport, SourceError> {
    let name = source.source.to_string();
    let copy = copy_name(&name);
    let (text, stale) = match &source.source {
        SourceLocation::Path(path) => match std::fs::read(path) {
            Ok(bytes) => {
                if let Err(err) = data.write(&copy, &bytes, Access::Public) {
                    tracing::warn!(source = %name, error = %err, "cannot keep a copy of the blocklist");
                }
                (bytes, None)
            }
            Err(err) => match data.read(&copy) {
                Ok(Some(bytes)) => {
                    tracing::warn!(source = %name, error = %err, "blocklist unreadable; using its last good copy");
                    (bytes, Some(err.to_string()))
                }
                Ok(None) | Err(StoreError::Io { .. } | StoreError::Corrupt { .. }) => {
                    return Err(SourceError {
                        source_path: name,
                        reason: err.to_string(),
                    });
                }
            },
        },
        SourceLocation::Url(_) => match data.read(&copy) {
            Ok(Some(bytes)) => (bytes, None),
            _ => (Vec::new(), Some("not downloaded yet".to_owned())),
        },
    };
    let list = parse_list(&String::from_utf8_lossy(&text), visit);
    let report = SourceReport {
        source: name,
        blocked: list.blocked,
        allowed: list.allowed,
        rejected: list.rejected,
        ignored: list.ignored_modifiers,
        stale,
    };
    Ok(report)
}

/// The bytes a source would be compiled from now (the file, or its kept
/// copy), or `None` when there are none.
pub(super) fn current_bytes(source: &BlocklistSource, data: &DataDir) -> Option<Vec<u8>> {
    let kept = || {
        data.read(&copy_name(&source.source.to_string()))
            .ok()
            .flatten()
    };
    match &source.source {
        SourceLocation::Path(path) => std::fs::read(path).ok().or_else(kept),
        SourceLocation::Url(_) => kept(),
    }
}

/// Keeps a fresh download of a URL source; says whether it differs from
/// the copy kept before.
pub(crate) fn store_download(
    source: &BlocklistSource,
    data: &DataDir,
    bytes: &[u8],
) -> Result<bool, StoreError> {
    let copy = copy_name(&source.source.to_string());
    if data.read(&copy)?.as_deref() == Some(bytes) {
        return Ok(false);
    }
    data.write(&copy, bytes, Access::Public)?;
    Ok(true)
}

/// File name of a source's kept copy: its path or URL, made safe.
fn copy_name(source: &str) -> String {
    let safe: String = source
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{}{safe}", crate::store::files::SOURCE_COPY_PREFIX)
}

/// What a blocklist source gave most recently, for people: counts from
/// the last compile, the last download and the last error.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct SourceStatus {
    /// The source as configured.
    pub source: String,
    /// Names it blocked at the last compile.
    pub domains: Option<usize>,
    /// When it was last compiled, Unix seconds.
    pub compiled_unix: Option<u64>,
    /// When a download last succeeded, Unix seconds (URL sources).
    pub downloaded_unix: Option<u64>,
    /// Why the last read or download failed, if it did.
    pub error: Option<String>,
}

type StatusBook = std::collections::BTreeMap<String, SourceStatus>;

fn update_status(data: &DataDir, change: impl FnOnce(&mut StatusBook)) {
    let mut book: StatusBook = data
        .read_json(crate::store::files::SOURCE_STATUS)
        .ok()
        .flatten()
        .unwrap_or_default();
    change(&mut book);
    if let Err(err) = data.write_json(crate::store::files::SOURCE_STATUS, &book, Access::Public) {
        tracing::warn!(error = %err, "cannot keep the blocklist source status");
    }
}

/// Notes what each source gave at a compile.
pub(crate) fn record_compiled(data: &DataDir, reports: &[SourceReport], now_unix: u64) {
    update_status(data, |book| {
        for report in reports {
            let status = book.entry(report.source.clone()).or_default();
            status.source.clone_from(&report.source);
            status.domains = Some(report.blocked);
            status.compiled_unix = Some(now_unix);
            status.error.clone_from(&report.stale);
        }
    });
}

/// Notes how a download of `source` went.
pub(crate) fn record_download(
    data: &DataDir,
    source: &str,
    outcome: Result<(), String>,
    now_unix: u64,
) {
    update_status(data, |book| {
        let status = book.entry(source.to_owned()).or_default();
        status.source = source.to_owned();
        match outcome {
            Ok(()) => {
                status.downloaded_unix = Some(now_unix);
                status.error = None;
            }
            Err(reason) => status.error = Some(reason),
        }
    });
}

/// The status of each of `sources`, in their order; a source never
/// compiled nor downloaded has only its name.
pub(crate) fn source_status(data: &DataDir, sources: &[BlocklistSource]) -> Vec<SourceStatus> {
    let book: StatusBook = data
        .read_json(crate::store::files::SOURCE_STATUS)
        .ok()
        .flatten()
        .unwrap_or_default();
    sources
        .iter()
        .map(|source| {
            let name = source.source.to_string();
            book.get(&name).cloned().unwrap_or(SourceStatus {
                source: name,
                ..SourceStatus::default()
            })
        })
        .collect()
}

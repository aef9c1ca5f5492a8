//! Reading blocklist sources, keeping the last good copy of each in the
//! data directory so an unreadable source never empties the policy.

use crate::config::BlocklistSource;
use crate::store::{Access, DataDir, StoreError};

use super::parse::{ParsedList, parse_list};

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

/// Reads and parses a source, refreshing its kept copy; falls back to the
/// kept copy when the source cannot be read.
pub(super) fn load(
    source: &BlocklistSource,
    data: &DataDir,
) -> Result<(ParsedList, SourceReport), SourceError> {
    let name = source.source.display().to_string();
    let copy = copy_name(&name);
    let (text, stale) = match std::fs::read(&source.source) {
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
    };
    let list = parse_list(&String::from_utf8_lossy(&text));
    let report = SourceReport {
        source: name,
        blocked: list.block.len(),
        allowed: list.allow.len(),
        rejected: list.rejected,
        ignored: list.ignored_modifiers,
        stale,
    };
    Ok((list, report))
}

/// File name of a source's kept copy: its path, made safe.
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

//! Reading blocklist sources, keeping the last good copy of each in the
//! data directory (mode 0600) so an unreadable source never empties the
//! policy. A local source is read only from inside the allowed
//! directories ([`DataDir::source_dirs`]): the daemon runs as root, and a
//! policy naming `/etc/shadow` must not get a copy of it.

use std::path::{Component, Path, PathBuf};

use crate::config::{BlocklistSource, Config, SourceLocation};
use crate::store::{Access, DataDir, StoreError};

use super::parse::{Invalid, ListCounts, Listed, parse_list};

/// What one source gave, for the summary.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceReport {
    /// The source as configured.
    pub source: String,
    /// Its format and what its lines gave.
    #[serde(flatten)]
    pub lines: ListCounts,
    /// Set when the source could not be read and its last good copy was used.
    pub stale: Option<String>,
}

/// Why no copy of a source could be had.
#[derive(Debug, thiserror::Error)]
#[error("blocklist {source_path}: {reason}")]
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
    visit: &mut dyn FnMut(Listed<'_>, usize) -> Result<(), Invalid>,
) -> Result<SourceReport, SourceError> {
    let name = source.source.to_string();
    let copy = copy_name(&name);
    let (text, stale) = match &source.source {
        SourceLocation::Path(path) => match allowed(path, data.source_dirs()).map(std::fs::read) {
            Err(refused) => {
                return Err(SourceError {
                    source_path: name,
                    reason: refused.to_string(),
                });
            }
            Ok(Ok(bytes)) => {
                if let Err(err) = data.write(&copy, &bytes, Access::Secret) {
                    tracing::warn!(source = %name, error = %err, "cannot keep a copy of the blocklist");
                }
                (bytes, None)
            }
            Ok(Err(err)) => match data.read(&copy) {
                Ok(Some(bytes)) => {
                    tracing::warn!(source = %name, error = %err, "blocklist unreadable; using its last good copy");
                    (bytes, Some(err.to_string()))
                }
                Ok(None) | Err(StoreError::Io { .. } | StoreError::Corrupt { .. }) => {
                    return Err(SourceError {
                        source_path: name,
                        reason: format!("{err}, and no earlier copy is kept"),
                    });
                }
            },
        },
        SourceLocation::Url(_) => match data.read(&copy) {
            Ok(Some(bytes)) => (bytes, None),
            _ => (Vec::new(), Some("not downloaded yet".to_owned())),
        },
    };
    let lines = parse_list(
        &String::from_utf8_lossy(&text),
        source.format,
        source.matching,
        visit,
    );
    let report = SourceReport {
        source: name,
        lines,
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
        SourceLocation::Path(path) => {
            let path = allowed(path, data.source_dirs()).ok()?;
            std::fs::read(path).ok().or_else(kept)
        }
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
    data.write(&copy, bytes, Access::Secret)?;
    Ok(true)
}

/// Where local sources may be read from besides the data directory: the
/// configuration file's own directory and `instance.source_dirs`.
pub fn source_dirs(config_file: Option<&Path>, config: &Config) -> Vec<PathBuf> {
    let config_dir = config_file.map(|file| match file.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    });
    config_dir
        .into_iter()
        .chain(config.instance.source_dirs.iter().cloned())
        .collect()
}

/// A local source outside every allowed directory.
#[derive(Debug, thiserror::Error)]
#[error(
    "outside the directories local lists may be read from ({}); move it into one, or add its directory to `instance.source_dirs`",
    .allowed.iter().map(|dir| dir.display().to_string()).collect::<Vec<_>>().join(", ")
)]
pub(crate) struct OutsideAllowed {
    allowed: Vec<PathBuf>,
}

/// Where `path` really is (symbolic links and `..` resolved), if that is
/// inside one of `dirs`. A path that does not exist is judged by its
/// name, so its kept copy is still used only if the name is allowed.
pub(crate) fn allowed(path: &Path, dirs: &[PathBuf]) -> Result<PathBuf, OutsideAllowed> {
    let real = resolved(path);
    let dirs: Vec<PathBuf> = dirs
        .iter()
        .map(|dir| resolved(dir))
        .filter(|dir| dir.is_absolute())
        .collect();
    if is_inside(&real, &dirs) {
        Ok(real)
    } else {
        Err(OutsideAllowed { allowed: dirs })
    }
}

/// Whether `path` is one of `dirs` or below one; both already resolved.
fn is_inside(path: &Path, dirs: &[PathBuf]) -> bool {
    dirs.iter().any(|dir| path.starts_with(dir))
}

/// The canonical form of `path`, or, when it does not exist, its
/// absolute form with `.` and `..` taken out by name.
fn resolved(path: &Path) -> PathBuf {
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_owned());
    let mut plain = PathBuf::new();
    for part in absolute.components() {
        match part {
            Component::ParentDir => {
                plain.pop();
            }
            Component::CurDir => {}
            other => plain.push(other),
        }
    }
    plain
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
    /// Its format and what its lines gave at the last compile: rules
    /// taken, lines rejected and unsupported, by reason.
    #[serde(default)]
    pub lines: Option<ListCounts>,
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
            status.domains = Some(report.lines.blocked);
            status.lines = Some(report.lines.clone());
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn scratch(label: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("moat-sources-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("lists")).unwrap();
        std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
        dir
    }

    #[test]
    fn the_config_files_directory_is_allowed() {
        let mut config = Config::embedded();
        assert_eq!(source_dirs(None, &config), Vec::<PathBuf>::new());
        assert_eq!(
            source_dirs(Some(Path::new("moat.toml")), &config),
            [PathBuf::from(".")],
            "a bare file name is in the working directory"
        );
        config.instance.source_dirs = vec!["/srv/lists".into()];
        assert_eq!(
            source_dirs(Some(Path::new("/etc/moat/moat.toml")), &config),
            [PathBuf::from("/etc/moat"), PathBuf::from("/srv/lists")]
        );
        assert!(
            allowed(Path::new("/etc/passwd"), &[PathBuf::new()]).is_err(),
            "an empty directory allows nothing"
        );
    }

    #[test]
    fn inside_is_by_whole_components() {
        let dirs = [PathBuf::from("/srv/lists"), PathBuf::from("/data")];
        assert!(is_inside(Path::new("/srv/lists/a.txt"), &dirs));
        assert!(is_inside(Path::new("/data/x/y"), &dirs));
        assert!(!is_inside(Path::new("/srv/lists-evil/a.txt"), &dirs));
        assert!(!is_inside(Path::new("/etc/shadow"), &dirs));
        assert_eq!(
            resolved(Path::new("/srv/lists/../../etc/./shadow-missing")),
            PathBuf::from("/etc/shadow-missing"),
            "a missing path is judged by its name, dots taken out"
        );
    }

    #[test]
    fn only_allowed_directories_are_read_and_copies_are_private() {
        let dir = scratch("allow");
        let data = DataDir::open(&dir.join("data"))
            .unwrap()
            .allow_sources_from([dir.join("lists")]);
        std::fs::write(dir.join("lists/good.txt"), "ads.example\n").unwrap();
        std::fs::write(dir.join("elsewhere/secret.txt"), "secret.example\n").unwrap();
        std::os::unix::fs::symlink(dir.join("elsewhere/secret.txt"), dir.join("lists/link.txt"))
            .unwrap();
        let source = |path: PathBuf| BlocklistSource {
            source: SourceLocation::Path(path),
            format: None,
            matching: None,
            refresh: std::time::Duration::from_secs(60),
        };
        let good = load(&source(dir.join("lists/good.txt")), &data, &mut |_, _| {
            Ok(())
        })
        .unwrap();
        assert_eq!(good.lines.blocked, 1);
        let copy = data.path(&copy_name(
            &dir.join("lists/good.txt").display().to_string(),
        ));
        let mode = std::fs::metadata(copy).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the kept copy is private");
        for refused in [
            dir.join("elsewhere/secret.txt"),
            dir.join("lists/link.txt"),
            dir.join("lists/../elsewhere/secret.txt"),
            PathBuf::from("/etc/passwd"),
        ] {
            let err = load(&source(refused.clone()), &data, &mut |_, _| Ok(())).unwrap_err();
            assert!(
                err.to_string().contains("outside the directories"),
                "{}: {err}",
                refused.display()
            );
            assert_eq!(current_bytes(&source(refused), &data), None);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}

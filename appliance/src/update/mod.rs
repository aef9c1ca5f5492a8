//! Signed image updates: what an update file holds, and the checks an
//! appliance makes before it lets one near its other root slot.
//!
//! An update is an uncompressed tar made by `image/pack-update`: the text
//! manifest (`manifest.rs`), its Ed25519 signature by a release key, then
//! the parts the manifest lists, in its order. [`verify`] reads it once,
//! front to back: the signature is checked against the release keys the
//! running slot pins before anything else is parsed, then the target and
//! version, then every part's size and SHA-256 as it streams past. Nothing
//! is held whole in memory.

mod manifest;
#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ring::digest::{Context, SHA256};
use ring::signature::{ED25519, UnparsedPublicKey};

pub use manifest::{Manifest, ManifestError, PartDigest, PartName, Target};

/// Where stage 1 of init mounts the running root slot.
pub const RUNNING_SLOT: &str = "/slot";

/// Why an update was refused.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The update or a file of the running slot could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The running slot does not say what it is or which keys it trusts.
    #[error("the running slot's {file}: {reason}")]
    Installed {
        /// The slot's file.
        file: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The file is not laid out as an update.
    #[error("not a Moat update: {0}")]
    Layout(String),
    /// No pinned release key made the signature.
    #[error("signed by a key this appliance does not trust (it trusts {trusted})")]
    UnknownKey {
        /// The pinned keys, abbreviated.
        trusted: String,
    },
    /// The signed manifest does not parse.
    #[error("manifest {0}")]
    Manifest(#[from] ManifestError),
    /// The update is for another kind of appliance.
    #[error("the update is for {update}, this appliance is {running}")]
    WrongTarget {
        /// The update's target.
        update: Target,
        /// This appliance's.
        running: Target,
    },
    /// The update is not newer than what runs, and no downgrade was allowed.
    #[error(
        "the update is version {update}, this appliance runs {running}: not newer (a downgrade must be allowed explicitly)"
    )]
    NotNewer {
        /// The update's version.
        update: u64,
        /// The running version.
        running: u64,
    },
    /// A part differs from what the manifest says.
    #[error("part {name}: {reason}")]
    Part {
        /// The part.
        name: String,
        /// How it differs.
        reason: String,
    },
}

/// A release's public key, as an image pins it (64 hex digits).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ReleaseKey([u8; 32]);

impl std::str::FromStr for ReleaseKey {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        manifest::hex32(text)
            .map(Self)
            .ok_or_else(|| format!("{text:?} is not a release key (64 hex digits)"))
    }
}

impl fmt::Display for ReleaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
    }
}

impl fmt::Debug for ReleaseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReleaseKey({self})")
    }
}

/// What the running system is and trusts, read from its root slot: the
/// files `target`, `update-version` and `release-keys` that `image/build`
/// writes there.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The image it was built for.
    pub target: Target,
    /// Its release number.
    pub version: u64,
    /// The release keys an update must be signed by (at least one).
    pub keys: Vec<ReleaseKey>,
}

impl Installed {
    /// Reads a slot's description from the directory it is mounted on.
    pub fn load(slot: &Path) -> Result<Self, UpdateError> {
        let read = |file: &'static str| {
            std::fs::read_to_string(slot.join(file)).map_err(|err| UpdateError::Installed {
                file,
                reason: err.to_string(),
            })
        };
        let bad =
            |file: &'static str| move |reason: String| UpdateError::Installed { file, reason };
        let target = read("target")?.trim().parse().map_err(bad("target"))?;
        let version = read("update-version")?;
        let version = version.trim().parse().map_err(|_| {
            bad("update-version")(format!("{:?} is not a whole number", version.trim()))
        })?;
        let keys = read("release-keys")?
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(str::parse)
            .collect::<Result<Vec<_>, _>>()
            .map_err(bad("release-keys"))?;
        if keys.is_empty() {
            return Err(bad("release-keys")("it names no key".into()));
        }
        Ok(Self {
            target,
            version,
            keys,
        })
    }
}

/// An update whose signature, target, version and every part checked out.
#[derive(Debug, Clone)]
pub struct VerifiedUpdate {
    /// Its manifest.
    pub manifest: Manifest,
    /// The pinned key that signed it.
    pub signed_by: ReleaseKey,
}

/// Checks the update at `path` for the system `installed` describes: signed
/// by one of its keys, for its target, newer than it unless
/// `allow_downgrade`, every part as the manifest says.
pub fn verify(
    path: &Path,
    installed: &Installed,
    allow_downgrade: bool,
) -> Result<VerifiedUpdate, UpdateError> {
    let io = |source| UpdateError::Io {
        path: path.to_owned(),
        source,
    };
    let mut archive = tar::Archive::new(File::open(path).map_err(io)?);
    let mut members = archive.entries().map_err(io)?;
    let text = member(&mut members, "manifest", path)?;
    let text = read_small(text, manifest::MAX_MANIFEST_BYTES, "manifest").map_err(io)?;
    let signature = read_small(
        member(&mut members, "manifest.sig", path)?,
        64,
        "manifest.sig",
    )
    .map_err(io)?;
    let signed_by = signer(&text, &signature, &installed.keys)?;
    let text = std::str::from_utf8(&text)
        .map_err(|_| UpdateError::Layout("the manifest is not UTF-8".into()))?;
    let manifest = Manifest::parse(text)?;
    if manifest.target != installed.target {
        return Err(UpdateError::WrongTarget {
            update: manifest.target,
            running: installed.target,
        });
    }
    if manifest.version <= installed.version && !allow_downgrade {
        return Err(UpdateError::NotNewer {
            update: manifest.version,
            running: installed.version,
        });
    }
    for part in &manifest.parts {
        check_part(member(&mut members, part.name.as_str(), path)?, part)?;
    }
    if let Some(extra) = members.next() {
        let name = member_name(&extra.map_err(io)?);
        return Err(UpdateError::Layout(format!(
            "{name:?} follows the last part"
        )));
    }
    Ok(VerifiedUpdate {
        manifest,
        signed_by,
    })
}

/// The next member of the update, which must be `expected`.
fn member<'a>(
    members: &mut tar::Entries<'a, File>,
    expected: &str,
    path: &Path,
) -> Result<tar::Entry<'a, File>, UpdateError> {
    let entry = members
        .next()
        .ok_or_else(|| UpdateError::Layout(format!("it ends before {expected}")))?
        .map_err(|source| UpdateError::Io {
            path: path.to_owned(),
            source,
        })?;
    let name = member_name(&entry);
    if name != expected {
        return Err(UpdateError::Layout(format!(
            "found {name:?} where {expected} belongs"
        )));
    }
    Ok(entry)
}

fn member_name(entry: &tar::Entry<'_, File>) -> String {
    String::from_utf8_lossy(&entry.path_bytes()).into_owned()
}

fn read_small(entry: impl Read, limit: u64, what: &str) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    entry.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} is longer than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

fn signer(
    message: &[u8],
    signature: &[u8],
    keys: &[ReleaseKey],
) -> Result<ReleaseKey, UpdateError> {
    keys.iter()
        .copied()
        .find(|key| {
            UnparsedPublicKey::new(&ED25519, key.0)
                .verify(message, signature)
                .is_ok()
        })
        .ok_or_else(|| UpdateError::UnknownKey {
            trusted: keys
                .iter()
                .map(|key| format!("{}…", &key.to_string()[..12]))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn check_part(mut entry: impl Read, part: &PartDigest) -> Result<(), UpdateError> {
    let mismatch = |reason: String| UpdateError::Part {
        name: part.name.to_string(),
        reason,
    };
    let mut digest = Context::new(&SHA256);
    let mut size = 0u64;
    let mut buffer = vec![0; 64 * 1024];
    loop {
        let read = entry
            .read(&mut buffer)
            .map_err(|err| mismatch(err.to_string()))?;
        if read == 0 {
            break;
        }
        size += read as u64;
        if size > part.size {
            return Err(mismatch(format!(
                "longer than the manifest's {} bytes",
                part.size
            )));
        }
        digest.update(&buffer[..read]);
    }
    if size != part.size {
        return Err(mismatch(format!(
            "{size} bytes, the manifest says {}",
            part.size
        )));
    }
    if digest.finish().as_ref() != part.sha256 {
        return Err(mismatch("its SHA-256 differs from the manifest's".into()));
    }
    Ok(())
}

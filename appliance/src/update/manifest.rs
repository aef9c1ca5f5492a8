//! The update manifest: a short text file, signed as it stands, that names
//! the target, the version and every part with its size and SHA-256.
//!
//! ```text
//! moat-update 1
//! target x86_64
//! version 1767225600
//! source-date-epoch 1767225600
//! part root.sqfs 9154560 4b1c…
//! ```

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;

/// The largest manifest read: a few parts' lines, with room to spare.
pub(super) const MAX_MANIFEST_BYTES: u64 = 16 * 1024;

/// The format line every manifest starts with.
const FORMAT_LINE: &str = "moat-update 1";

/// What an image is built for; an update fits only its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The UEFI x86_64 image.
    X86_64,
    /// The Raspberry Pi / UEFI arm64 image.
    RpiArm64,
}

impl FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "x86_64" => Ok(Self::X86_64),
            "rpi-arm64" => Ok(Self::RpiArm64),
            other => Err(format!("unknown target {other:?} (x86_64 or rpi-arm64)")),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::X86_64 => "x86_64",
            Self::RpiArm64 => "rpi-arm64",
        })
    }
}

/// A part's name: a plain file name (letters, digits, `.`, `_`, `-`), never
/// one of the manifest's own members.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartName(String);

impl PartName {
    /// The name as written in the update.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for PartName {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let plain = text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._-".contains(&byte));
        if text.is_empty() || text.len() > 64 || !plain || text.starts_with('.') {
            return Err(format!("{text:?} is not a plain file name"));
        }
        if text == "manifest" || text == "manifest.sig" {
            return Err(format!("{text:?} is the manifest's own name"));
        }
        Ok(Self(text.to_owned()))
    }
}

impl fmt::Display for PartName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One part the manifest vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartDigest {
    /// Its name in the update.
    pub name: PartName,
    /// Its length in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
}

/// A manifest that parsed: every field present once, every part distinct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The image it is for.
    pub target: Target,
    /// The release's number; each release raises it.
    pub version: u64,
    /// The build's `SOURCE_DATE_EPOCH`.
    pub source_date_epoch: u64,
    /// The parts, in the order they follow in the update.
    pub parts: Vec<PartDigest>,
}

/// Why a manifest did not parse: the line (1-based) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ManifestError {
    /// The line, counted from 1; 0 for the manifest as a whole.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

impl Manifest {
    /// Parses a manifest's text.
    pub fn parse(text: &str) -> Result<Self, ManifestError> {
        let mut lines = text
            .lines()
            .enumerate()
            .map(|(index, line)| (index + 1, line));
        match lines.next() {
            Some((_, FORMAT_LINE)) => {}
            _ => return Err(whole(format!("the first line is not {FORMAT_LINE:?}"))),
        }
        let (mut target, mut version, mut epoch) = (None, None, None);
        let mut parts = Vec::new();
        let mut names = HashSet::new();
        for (number, line) in lines {
            let at = |reason: String| ManifestError {
                line: number,
                reason,
            };
            let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
            match key {
                "target" => set_once(&mut target, rest.parse().map_err(at)?, number)?,
                "version" => set_once(&mut version, integer(rest).map_err(at)?, number)?,
                "source-date-epoch" => set_once(&mut epoch, integer(rest).map_err(at)?, number)?,
                "part" => {
                    let part = part(rest).map_err(at)?;
                    if !names.insert(part.name.clone()) {
                        return Err(at(format!("part {} is listed twice", part.name)));
                    }
                    parts.push(part);
                }
                other => return Err(at(format!("unknown key {other:?}"))),
            }
        }
        if parts.is_empty() {
            return Err(whole("no part is listed".into()));
        }
        Ok(Self {
            target: target.ok_or_else(|| whole("no target line".into()))?,
            version: version.ok_or_else(|| whole("no version line".into()))?,
            source_date_epoch: epoch.ok_or_else(|| whole("no source-date-epoch line".into()))?,
            parts,
        })
    }
}

fn whole(reason: String) -> ManifestError {
    ManifestError { line: 0, reason }
}

fn set_once<T>(slot: &mut Option<T>, value: T, line: usize) -> Result<(), ManifestError> {
    if slot.replace(value).is_some() {
        return Err(ManifestError {
            line,
            reason: "this key was already given".into(),
        });
    }
    Ok(())
}

fn integer(text: &str) -> Result<u64, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a whole number"))
}

fn part(text: &str) -> Result<PartDigest, String> {
    let fields: Vec<&str> = text.split(' ').collect();
    let [name, size, sha256] = fields[..] else {
        return Err("a part line is: part NAME SIZE SHA256".into());
    };
    Ok(PartDigest {
        name: name.parse()?,
        size: integer(size)?,
        sha256: hex32(sha256).ok_or_else(|| format!("{sha256:?} is not 64 hex digits"))?,
    })
}

/// 64 hex digits (either case) as 32 bytes: written as a fingerprint is,
/// so its parser reads them.
pub(super) fn hex32(text: &str) -> Option<[u8; 32]> {
    moat_proto::Fingerprint::from_hex(text)
        .ok()
        .map(|digits| digits.0)
}

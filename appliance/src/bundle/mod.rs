//! Policy bundles: the policy modules and synced settings, a manifest, and an
//! ed25519 signature; sealing on the primary, verification everywhere, and
//! atomic storage in the data directory.
//!
//! A [`Bundle`] is untrusted bytes; a [`VerifiedBundle`] exists only as the
//! output of [`Bundle::verify`] (key, signature, hashes, version, expiry) or
//! of [`BundleStore::load`] (the same checks but version and expiry, since a
//! rebooted appliance keeps serving what it last accepted).
//!
//! Wire and file form: the magic `MOATBNDL`, then the postcard encoding of
//! an envelope holding the manifest bytes, the signature over exactly those
//! bytes, and the named parts.

use std::borrow::Cow;
use std::path::PathBuf;

use crate::config::PluginName;
use crate::store::StoreError;

mod key;
mod manifest;
mod sealed;
mod store;
#[cfg(test)]
mod tests;

pub use key::SigningKey;
pub(crate) use key::{KeyId, PublicKey};
pub(crate) use manifest::{FORMAT_VERSION, Manifest, PartDigest};
pub use sealed::{Bundle, VerifiedBundle};
pub use store::BundleStore;

/// The parts a bundle carries. On the wire (in the manifest and the
/// envelope) each goes by its [`Part::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// The compiled blocklist module.
    Blocklist,
    /// The compiled local-records module.
    LocalRecords,
    /// The synced policy settings (TOML).
    Settings,
    /// A module of `[[policy.plugins]]`, its configuration included.
    Plugin(PluginName),
}

impl Part {
    /// Every part of a fixed name, in the order they are sealed; plugins
    /// follow.
    pub const ALL: [Self; 3] = [Self::LocalRecords, Self::Blocklist, Self::Settings];

    /// Where a plugin's part name starts.
    const PLUGIN_PREFIX: &str = "plugins/";

    /// The part's name on the wire (`plugins/NAME.wasm` for a plugin).
    pub fn name(self) -> Cow<'static, str> {
        match self {
            Self::Blocklist => "blocklist.wasm".into(),
            Self::LocalRecords => "local-records.wasm".into(),
            Self::Settings => "policy.toml".into(),
            Self::Plugin(name) => format!("{}{name}.wasm", Self::PLUGIN_PREFIX).into(),
        }
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name())
    }
}

impl std::str::FromStr for Part {
    type Err = BundleError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let plugin = name
            .strip_prefix(Self::PLUGIN_PREFIX)
            .and_then(|rest| rest.strip_suffix(".wasm"))
            .and_then(|plugin| plugin.parse().ok())
            .map(Self::Plugin);
        Self::ALL
            .into_iter()
            .find(|part| part.name() == name)
            .or(plugin)
            .ok_or_else(|| BundleError::UnknownPart {
                name: name.to_owned(),
            })
    }
}

/// Largest encoded bundle accepted; anything bigger is refused unread.
pub(crate) const MAX_BUNDLE_BYTES: usize = 128 << 20;
/// Most parts a bundle may carry.
pub(crate) const MAX_PARTS: usize = 64;

/// Why a bundle was refused, or could not be made or stored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// The bytes are not a well-formed bundle (or key).
    #[error("malformed: {0}")]
    Malformed(String),
    /// The input exceeds [`MAX_BUNDLE_BYTES`].
    #[error("bundle of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Bytes offered.
        len: usize,
        /// Bytes allowed.
        limit: usize,
    },
    /// The manifest uses a format this build does not know.
    #[error("unknown bundle format {0} (this build reads format {FORMAT_VERSION})")]
    UnknownFormat(u16),
    /// The manifest names a signing key other than the trusted one.
    #[error("bundle signed by key {got}, expected the pinned key {expected}")]
    WrongKey {
        /// Id of the trusted key.
        expected: KeyId,
        /// Id named by the manifest.
        got: KeyId,
    },
    /// The signature does not match the manifest and trusted key.
    #[error("bad bundle signature")]
    BadSignature,
    /// A part's length or SHA-256 differs from the manifest.
    #[error("part {part} does not match its manifest hash")]
    PartMismatch {
        /// The part.
        part: Part,
    },
    /// The manifest lists a part the bundle does not carry, or a part the
    /// bundle needs is absent.
    #[error("part {part} is listed in the manifest but missing")]
    MissingPart {
        /// The part.
        part: Part,
    },
    /// The bundle carries a part the manifest does not list, or one twice.
    #[error("part {part} is not listed in the manifest or appears twice")]
    UnexpectedPart {
        /// Name of the part as carried.
        part: String,
    },
    /// The manifest names a part this build does not know.
    #[error("unknown bundle part {name:?}")]
    UnknownPart {
        /// The name as listed.
        name: String,
    },
    /// The bundle is not newer than the one running.
    #[error("bundle version {offered} is not above the running version {running}")]
    Rollback {
        /// Version offered.
        offered: u64,
        /// Version running.
        running: u64,
    },
    /// The bundle's lifetime is over.
    #[error("bundle expired at {expires_unix} (now {now_unix})")]
    Expired {
        /// When it expired (Unix seconds).
        expires_unix: u64,
        /// The time of the check (Unix seconds).
        now_unix: u64,
    },
    /// The stored bundle file could not be used.
    #[error("{path}: {source}")]
    Stored {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        source: Box<Self>,
    },
    /// The system random generator failed while making a key.
    #[error("could not generate a signing key")]
    KeyGeneration,
    /// The data directory failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

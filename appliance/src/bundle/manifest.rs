//! The signed manifest: what a bundle claims to be and a hash per part.

use ring::digest::{SHA256, digest};
use serde::{Deserialize, Serialize};

use super::{BundleError, KeyId};

/// The bundle layout this build reads and writes.
pub(crate) const FORMAT_VERSION: u16 = 1;

/// What a bundle's signature covers. `format` and `key_id` come first so
/// they can be read before the signature is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    /// Layout version ([`FORMAT_VERSION`]).
    pub format: u16,
    /// Id of the signing key.
    pub key_id: KeyId,
    /// Bundle version; only ever goes up.
    pub version: u64,
    /// When it was sealed (Unix seconds).
    pub created_unix: u64,
    /// When it stops being acceptable (Unix seconds).
    pub expires_unix: u64,
    /// One entry per part carried.
    pub parts: Vec<PartDigest>,
}

/// A part's name, length and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartDigest {
    /// Name of the part.
    pub name: String,
    /// Length in bytes.
    pub len: u64,
    /// SHA-256 of the bytes.
    pub sha256: [u8; 32],
}

/// The fields readable before the signature is checked.
#[derive(Deserialize)]
struct Head {
    _format: u16,
    key_id: KeyId,
}

impl Manifest {
    /// The postcard encoding, which is what gets signed.
    pub(super) fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("postcard encodes a manifest into a Vec")
    }

    /// Reads from unverified bytes the format, which must be known, then the
    /// signing key id.
    pub(super) fn signer(bytes: &[u8]) -> Result<KeyId, BundleError> {
        let (format, _) = postcard::take_from_bytes::<u16>(bytes).map_err(malformed)?;
        if format != FORMAT_VERSION {
            return Err(BundleError::UnknownFormat(format));
        }
        let (head, _) = postcard::take_from_bytes::<Head>(bytes).map_err(malformed)?;
        Ok(head.key_id)
    }

    /// Decodes signed bytes, which must hold exactly one manifest.
    pub(super) fn decode(bytes: &[u8]) -> Result<Self, BundleError> {
        let (manifest, rest) = postcard::take_from_bytes::<Self>(bytes).map_err(malformed)?;
        if !rest.is_empty() {
            return Err(BundleError::Malformed(
                "manifest: trailing bytes".to_owned(),
            ));
        }
        Ok(manifest)
    }
}

impl PartDigest {
    /// The digest of `bytes` under `name`.
    pub(super) fn of(name: &str, bytes: &[u8]) -> Self {
        Self {
            name: name.to_owned(),
            len: bytes.len() as u64,
            sha256: sha256(bytes),
        }
    }

    /// Whether `bytes` have this length and hash.
    pub(super) fn matches(&self, bytes: &[u8]) -> bool {
        self.len == bytes.len() as u64 && self.sha256 == sha256(bytes)
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0; 32];
    for (out, byte) in out.iter_mut().zip(digest(&SHA256, bytes).as_ref()) {
        *out = *byte;
    }
    out
}

fn malformed(err: postcard::Error) -> BundleError {
    BundleError::Malformed(format!("manifest: {err}"))
}

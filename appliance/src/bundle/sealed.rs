//! A bundle's wire form, sealing and verification.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{
    BundleError, FORMAT_VERSION, MAX_BUNDLE_BYTES, MAX_PARTS, Manifest, Part, PartDigest,
    PublicKey, SigningKey,
};

const MAGIC: &[u8; 8] = b"MOATBNDL";

/// A bundle as sealed or received. Nothing in it is trusted until
/// [`Bundle::verify`] says so.
#[derive(Debug, Clone)]
pub struct Bundle {
    envelope: Envelope,
}

/// A bundle whose signature, hashes, version and expiry have been checked.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    manifest: Manifest,
    envelope: Envelope,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Envelope {
    manifest: Blob,
    signature: Blob,
    parts: Parts,
}

impl Bundle {
    /// Hashes `parts`, writes and signs a manifest valid for `lifetime` from
    /// `created_unix`. Parts must be distinct; otherwise the bundle never
    /// verifies.
    pub fn seal(
        parts: Vec<(Part, Vec<u8>)>,
        version: u64,
        created_unix: u64,
        lifetime: Duration,
        key: &SigningKey,
    ) -> Self {
        let manifest = Manifest {
            format: FORMAT_VERSION,
            key_id: key.public().key_id(),
            version,
            created_unix,
            expires_unix: created_unix.saturating_add(lifetime.as_secs()),
            parts: parts
                .iter()
                .map(|(part, bytes)| PartDigest::of(&part.name(), bytes))
                .collect(),
        };
        let parts = parts
            .into_iter()
            .map(|(part, bytes)| (part.name().into_owned(), bytes))
            .collect();
        Self::sign(&manifest, parts, key)
    }

    /// The encoded bundle: magic, then the postcard envelope.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.envelope.to_bytes()
    }

    /// Decodes a bundle without trusting it. Refuses input over
    /// [`MAX_BUNDLE_BYTES`], a missing magic, trailing bytes and any encoding
    /// other than the canonical one.
    pub fn parse(bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() > MAX_BUNDLE_BYTES {
            return Err(BundleError::TooLarge {
                len: bytes.len(),
                limit: MAX_BUNDLE_BYTES,
            });
        }
        let body = bytes
            .strip_prefix(MAGIC)
            .ok_or_else(|| BundleError::Malformed("not a Moat bundle (no magic)".to_owned()))?;
        let (envelope, rest) = postcard::take_from_bytes::<Envelope>(body)
            .map_err(|err| BundleError::Malformed(format!("envelope: {err}")))?;
        if !rest.is_empty() {
            return Err(BundleError::Malformed(
                "trailing bytes after the envelope".to_owned(),
            ));
        }
        // Each field decoded from at least as many bytes as its canonical
        // (shortest) encoding, so equal sizes mean every field was canonical.
        if envelope.encoded_len() != Some(body.len()) {
            return Err(BundleError::Malformed(
                "envelope: non-canonical encoding".to_owned(),
            ));
        }
        Ok(Self { envelope })
    }

    /// Checks, in order: the format is known, the manifest names the
    /// trusted key, the signature is valid, every part matches the manifest,
    /// the version is above `running_version`, and it has not expired.
    pub(crate) fn verify(
        self,
        trusted: &PublicKey,
        running_version: Option<u64>,
        now_unix: u64,
    ) -> Result<VerifiedBundle, BundleError> {
        let verified = self.verify_integrity(trusted)?;
        if let Some(running) = running_version
            && verified.version() <= running
        {
            return Err(BundleError::Rollback {
                offered: verified.version(),
                running,
            });
        }
        if verified.is_expired(now_unix) {
            return Err(BundleError::Expired {
                expires_unix: verified.expires_unix(),
                now_unix,
            });
        }
        Ok(verified)
    }

    /// Every check of [`Bundle::verify`] except version and expiry.
    pub(super) fn verify_integrity(
        self,
        trusted: &PublicKey,
    ) -> Result<VerifiedBundle, BundleError> {
        let envelope = self.envelope;
        let key_id = Manifest::signer(&envelope.manifest.0)?;
        let expected = trusted.key_id();
        if key_id != expected {
            return Err(BundleError::WrongKey {
                expected,
                got: key_id,
            });
        }
        trusted.verify(&envelope.manifest.0, &envelope.signature.0)?;
        let manifest = Manifest::decode(&envelope.manifest.0)?;
        check_parts(&manifest.parts, &envelope.parts.0)?;
        Ok(VerifiedBundle { manifest, envelope })
    }

    /// Signs `manifest` and parts named as given (tests make bundles no
    /// primary would); [`Bundle::seal`] is the normal way in.
    pub(super) fn sign(
        manifest: &Manifest,
        parts: Vec<(String, Vec<u8>)>,
        key: &SigningKey,
    ) -> Self {
        let manifest = manifest.encode();
        let signature = key.sign(&manifest);
        let parts = parts
            .into_iter()
            .map(|(name, bytes)| (name, Blob(bytes)))
            .collect();
        Self {
            envelope: Envelope {
                manifest: Blob(manifest),
                signature: Blob(signature),
                parts: Parts(parts),
            },
        }
    }
}

impl VerifiedBundle {
    /// The bundle version.
    pub fn version(&self) -> u64 {
        self.manifest.version
    }

    /// When it was sealed (Unix seconds).
    #[cfg(test)]
    pub(crate) fn created_unix(&self) -> u64 {
        self.manifest.created_unix
    }

    /// When it expires (Unix seconds).
    pub(crate) fn expires_unix(&self) -> u64 {
        self.manifest.expires_unix
    }

    /// Whether it has expired at `now_unix`.
    pub(crate) fn is_expired(&self, now_unix: u64) -> bool {
        now_unix >= self.manifest.expires_unix
    }

    /// Id of the key that signed it.
    #[cfg(test)]
    pub(crate) fn key_id(&self) -> super::KeyId {
        self.manifest.key_id
    }

    /// The bytes of a part, if the bundle carries it.
    pub fn part(&self, part: Part) -> Option<&[u8]> {
        self.envelope
            .parts
            .0
            .iter()
            .find(|(name, _)| *name == part.name())
            .map(|(_, bytes)| bytes.0.as_slice())
    }

    /// The bytes of a part the bundle must carry.
    pub(crate) fn required_part(&self, part: Part) -> Result<&[u8], BundleError> {
        self.part(part).ok_or(BundleError::MissingPart { part })
    }

    /// The signed bytes as received, to store or forward unchanged.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.envelope.to_bytes()
    }
}

impl Envelope {
    /// Equal to the parsed input, since parsing accepts only canonical
    /// encodings.
    fn to_bytes(&self) -> Vec<u8> {
        let size = self.encoded_len().unwrap_or(0);
        let mut bytes = Vec::with_capacity(MAGIC.len() + size);
        bytes.extend_from_slice(MAGIC);
        postcard::to_io(self, bytes).expect("postcard encodes an envelope into a Vec")
    }

    fn encoded_len(&self) -> Option<usize> {
        postcard::serialize_with_flavor(self, postcard::ser_flavors::Size::default()).ok()
    }
}

fn check_parts(listed: &[PartDigest], carried: &[(String, Blob)]) -> Result<(), BundleError> {
    let mut seen = HashSet::new();
    for digest in listed {
        if !seen.insert(digest.name.as_str()) {
            return Err(BundleError::Malformed(format!(
                "manifest lists part {} twice",
                digest.name
            )));
        }
        let part: Part = digest.name.parse()?;
        let mut named = carried.iter().filter(|(name, _)| *name == digest.name);
        let Some((_, bytes)) = named.next() else {
            return Err(BundleError::MissingPart { part });
        };
        if named.next().is_some() {
            return Err(BundleError::UnexpectedPart {
                part: digest.name.clone(),
            });
        }
        if !digest.matches(&bytes.0) {
            return Err(BundleError::PartMismatch { part });
        }
    }
    match carried
        .iter()
        .find(|(name, _)| !seen.contains(name.as_str()))
    {
        Some((name, _)) => Err(BundleError::UnexpectedPart { part: name.clone() }),
        None => Ok(()),
    }
}

/// Bytes encoded as one length and a copy, not element by element.
#[derive(Clone, PartialEq, Eq)]
struct Blob(Vec<u8>);

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl Serialize for Blob {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Blob {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BlobVisitor;
        impl Visitor<'_> for BlobVisitor {
            type Value = Blob;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: de::Error>(self, bytes: &[u8]) -> Result<Blob, E> {
                Ok(Blob(bytes.to_vec()))
            }
        }
        deserializer.deserialize_byte_buf(BlobVisitor)
    }
}

/// The named parts, at most [`MAX_PARTS`] of them, so a small input cannot
/// claim millions of empty parts.
#[derive(Debug, Clone, Serialize)]
struct Parts(Vec<(String, Blob)>);

impl<'de> Deserialize<'de> for Parts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PartsVisitor;
        impl<'de> Visitor<'de> for PartsVisitor {
            type Value = Parts;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "at most {MAX_PARTS} parts")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parts, A::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element()? {
                    if parts.len() == MAX_PARTS {
                        return Err(de::Error::invalid_length(MAX_PARTS + 1, &self));
                    }
                    parts.push(part);
                }
                Ok(Parts(parts))
            }
        }
        deserializer.deserialize_seq(PartsVisitor)
    }
}

#[cfg(test)]
impl Bundle {
    pub(super) fn envelope_manifest_len(&self) -> usize {
        self.envelope.manifest.0.len()
    }

    pub(super) fn flip_manifest_byte(&mut self, index: usize, mask: u8) {
        if let Some(byte) = self.envelope.manifest.0.get_mut(index) {
            *byte ^= mask;
        }
    }

    pub(super) fn flip_signature_byte(&mut self, index: usize) {
        if let Some(byte) = self.envelope.signature.0.get_mut(index) {
            *byte ^= 1;
        }
    }
}

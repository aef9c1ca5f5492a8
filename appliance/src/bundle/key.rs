//! The bundle-signing key pair, the public key replicas pin, and its id.

use std::fmt;

use ring::digest::{SHA256, digest};
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::BundleError;
use crate::store::{Access, DataDir, StoreError, files};

/// The Ed25519 key that signs bundles.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    public: PublicKey,
}

impl SigningKey {
    /// A fresh random key, kept only in memory.
    pub fn generate() -> Result<Self, BundleError> {
        let pkcs8 = generate_pkcs8()?;
        Self::from_pkcs8(&pkcs8).map_err(|_| BundleError::KeyGeneration)
    }

    /// The key stored in the data directory, created (mode 0600) on first
    /// use. A file that holds no valid key is an error naming it; it is never
    /// replaced.
    pub fn load_or_create(dir: &DataDir) -> Result<Self, BundleError> {
        if let Some(pkcs8) = dir.read(files::SIGNING_KEY)? {
            return Self::from_pkcs8(&pkcs8).map_err(|reason| {
                StoreError::Corrupt {
                    path: dir.path(files::SIGNING_KEY),
                    reason,
                }
                .into()
            });
        }
        let pkcs8 = generate_pkcs8()?;
        let key = Self::from_pkcs8(&pkcs8).map_err(|_| BundleError::KeyGeneration)?;
        dir.write(files::SIGNING_KEY, &pkcs8, Access::Secret)?;
        Ok(key)
    }

    /// The public half, which replicas pin.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub(super) fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.pair.sign(message).as_ref().to_vec()
    }

    fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, String> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|err| err.to_string())?;
        let public = <[u8; 32]>::try_from(pair.public_key().as_ref())
            .map_err(|_| "public key is not 32 bytes".to_owned())?;
        Ok(Self {
            pair,
            public: PublicKey(public),
        })
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public.key_id())
    }
}

fn generate_pkcs8() -> Result<Vec<u8>, BundleError> {
    Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map(|doc| doc.as_ref().to_vec())
        .map_err(|_| BundleError::KeyGeneration)
}

/// An Ed25519 public key. Serialized as lowercase hex in human-readable
/// formats (JSON state files) and as raw bytes in postcard.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// The key's short id: the first 8 bytes of its SHA-256.
    pub(crate) fn key_id(&self) -> KeyId {
        let mut id = [0; 8];
        for (out, byte) in id.iter_mut().zip(digest(&SHA256, &self.0).as_ref()) {
            *out = *byte;
        }
        KeyId(id)
    }

    pub(super) fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), BundleError> {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .map_err(|_| BundleError::BadSignature)
    }
}

/// Which key signed a bundle: the first 8 bytes of the SHA-256 of its
/// public key. Serialized like [`PublicKey`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId(pub [u8; 8]);

/// Hex display and parsing, and serde as hex or raw bytes, for a byte-array
/// newtype.
macro_rules! hex_newtype {
    ($name:ident, $len:literal, $what:literal) => {
        impl $name {
            #[doc = concat!("Parses ", $what, " from ", stringify!($len), " bytes of hex.")]
            pub fn from_hex(text: &str) -> Result<Self, BundleError> {
                parse_hex(text).map(Self).ok_or_else(|| {
                    BundleError::Malformed(format!("{}: expected {} hex digits", $what, 2 * $len))
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.iter().try_for_each(|byte| write!(f, "{byte:02x}"))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                if serializer.is_human_readable() {
                    serializer.collect_str(self)
                } else {
                    self.0.serialize(serializer)
                }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                if deserializer.is_human_readable() {
                    let text = String::deserialize(deserializer)?;
                    Self::from_hex(&text).map_err(D::Error::custom)
                } else {
                    <[u8; $len]>::deserialize(deserializer).map(Self)
                }
            }
        }
    };
}

hex_newtype!(PublicKey, 32, "public key");
hex_newtype!(KeyId, 8, "key id");

fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let mut bytes = [0; N];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        let [high, low] = pair else { return None };
        *byte = (nibble(*high)? << 4) | nibble(*low)?;
    }
    Some(bytes)
}

fn nibble(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

//! An appliance's identity: its key pair and self-signed certificate, made
//! on first start and kept in the data directory.
//!
//! There is no CA: peers pin each other's certificate by [`Fingerprint`]
//! (SHA-256 of the certificate DER). Validity dates are never checked (a
//! Raspberry Pi boots at 1970), so the certificate's only job is to carry the
//! public key that signs the TLS handshake.
//!
//! A lost certificate is issued again from the stored key. The fingerprint
//! is over the whole certificate and ECDSA signatures are randomized, so
//! the new certificate has a new fingerprint: the appliance comes up and
//! serves, and peers that pinned the old one refuse it until paired again.

use std::fmt;

pub use moat_proto::fingerprint::Fingerprint;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::store::{Access, DataDir, StoreError, files};

/// Why an identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file could not be read or written, or is corrupt.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// One of the two identity files exists without the other.
    #[error(
        "{missing} is missing but {present} exists; refusing to make a new identity over it \
         (remove both files to start over, then pair again)"
    )]
    Incomplete {
        /// The file that is missing.
        missing: String,
        /// The file that exists.
        present: String,
    },
    /// The key pair or certificate could not be generated.
    #[error("cannot generate the identity: {0}")]
    Generate(#[from] rcgen::Error),
    /// The key and certificate given do not form an identity.
    #[error("invalid identity: {0}")]
    Invalid(rustls::Error),
}

/// This appliance's key pair (PKCS#8) and self-signed certificate.
pub struct Identity {
    cert_der: CertificateDer<'static>,
    key_der: PrivatePkcs8KeyDer<'static>,
    fingerprint: Fingerprint,
}

impl Identity {
    /// Loads the identity from `dir`, or makes and stores one on first start
    /// (`name` goes into the certificate's subject, for people reading it).
    ///
    /// A missing certificate is issued again from the stored key (with a
    /// new fingerprint, logged). A corrupt identity, or a certificate
    /// without its key, is an error naming the file: it is never silently
    /// replaced, since peers have pinned it.
    pub fn load_or_create(dir: &DataDir, name: &str) -> Result<Self, IdentityError> {
        let key = dir.read(files::IDENTITY_KEY)?;
        let cert = dir.read(files::IDENTITY_CERT)?;
        match (key, cert) {
            (Some(key), Some(cert)) => Self::load(dir, key, cert),
            (None, None) => {
                let identity = Self::generate(name)?;
                dir.write(
                    files::IDENTITY_KEY,
                    identity.key_der.secret_pkcs8_der(),
                    Access::Secret,
                )?;
                dir.write(files::IDENTITY_CERT, &identity.cert_der, Access::Public)?;
                Ok(identity)
            }
            (Some(key), None) => Self::reissue(dir, name, key),
            (None, Some(_)) => Err(incomplete(dir, files::IDENTITY_KEY, files::IDENTITY_CERT)),
        }
    }

    /// Makes a new key pair (ECDSA P-256) and self-signed certificate, in
    /// memory only.
    pub fn generate(name: &str) -> Result<Self, IdentityError> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        Self::self_signed(name, &key)
    }

    /// A self-signed certificate for `key`, with the identity it makes.
    fn self_signed(name: &str, key: &rcgen::KeyPair) -> Result<Self, IdentityError> {
        let mut params = rcgen::CertificateParams::new(vec!["moat".to_owned()])?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("moat {name}"));
        let cert = params.self_signed(key)?;
        Self::from_der(cert.der().to_vec(), key.serialize_der())
            .map_err(|err| IdentityError::Invalid(err.into_rustls()))
    }

    /// An identity from a certificate and its PKCS#8 key, both DER; checks
    /// that the key parses and matches the certificate.
    pub(crate) fn from_der(cert_der: Vec<u8>, key_der: Vec<u8>) -> Result<Self, IdentityMismatch> {
        let provider = rustls::crypto::ring::default_provider();
        let key_der = PrivatePkcs8KeyDer::from(key_der);
        let signing_key = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(key_der.clone_key()))
            .map_err(IdentityMismatch::Key)?;
        let cert_der = CertificateDer::from(cert_der);
        rustls::sign::CertifiedKey::new(vec![cert_der.clone()], signing_key)
            .keys_match()
            .map_err(IdentityMismatch::Certificate)?;
        let fingerprint = Fingerprint::of(&cert_der);
        Ok(Self {
            cert_der,
            key_der,
            fingerprint,
        })
    }

    /// The certificate, DER.
    pub(crate) fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The private key, PKCS#8 DER.
    pub(crate) fn key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key_der.clone_key())
    }

    /// The certificate's fingerprint, what peers pin.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// Issues and stores a new certificate for the stored `key`, whose
    /// certificate file is missing.
    fn reissue(dir: &DataDir, name: &str, key: Vec<u8>) -> Result<Self, IdentityError> {
        let pair = rcgen::KeyPair::try_from(key.as_slice()).map_err(|err| {
            IdentityError::Store(StoreError::Corrupt {
                path: dir.path(files::IDENTITY_KEY),
                reason: err.to_string(),
            })
        })?;
        let identity = Self::self_signed(name, &pair)?;
        dir.write(files::IDENTITY_CERT, &identity.cert_der, Access::Public)?;
        tracing::warn!(
            fingerprint = %identity.fingerprint,
            "{} was missing: issued again from {}; the fingerprint is new, so peers that \
             pinned the old one refuse this appliance until it is paired again",
            files::IDENTITY_CERT,
            files::IDENTITY_KEY
        );
        Ok(identity)
    }

    fn load(dir: &DataDir, key: Vec<u8>, cert: Vec<u8>) -> Result<Self, IdentityError> {
        Self::from_der(cert, key).map_err(|mismatch| {
            let (name, reason) = match mismatch {
                IdentityMismatch::Key(err) => (files::IDENTITY_KEY, err),
                IdentityMismatch::Certificate(err) => (files::IDENTITY_CERT, err),
            };
            IdentityError::Store(StoreError::Corrupt {
                path: dir.path(name),
                reason: reason.to_string(),
            })
        })
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            cert_der: self.cert_der.clone(),
            key_der: self.key_der.clone_key(),
            fingerprint: self.fingerprint,
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Which half of a would-be identity is wrong.
#[derive(Debug, thiserror::Error)]
pub enum IdentityMismatch {
    /// The private key does not parse.
    #[error("bad private key: {0}")]
    Key(rustls::Error),
    /// The certificate does not parse or is not for this key.
    #[error("bad certificate: {0}")]
    Certificate(rustls::Error),
}

impl IdentityMismatch {
    fn into_rustls(self) -> rustls::Error {
        match self {
            Self::Key(err) | Self::Certificate(err) => err,
        }
    }
}

fn incomplete(dir: &DataDir, missing: &str, present: &str) -> IdentityError {
    IdentityError::Incomplete {
        missing: dir.path(missing).display().to_string(),
        present: dir.path(present).display().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(tag: &str) -> (std::path::PathBuf, DataDir) {
        let root = std::env::temp_dir().join(format!("moat-identity-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dir = DataDir::open(&root).unwrap();
        (root, dir)
    }

    #[test]
    fn created_once_then_loaded_with_a_private_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let (root, dir) = temp_dir("create");
        let first = Identity::load_or_create(&dir, "alpha").unwrap();
        let again = Identity::load_or_create(&dir, "alpha").unwrap();
        assert_eq!(first.fingerprint(), again.fingerprint());
        assert_eq!(first.fingerprint(), Fingerprint::of(first.cert_der()));
        let mode = std::fs::metadata(dir.path(files::IDENTITY_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn corrupt_or_missing_files_are_errors_naming_them() {
        let (root, dir) = temp_dir("corrupt");
        let identity = Identity::load_or_create(&dir, "beta").unwrap();
        dir.write(files::IDENTITY_CERT, b"garbage", Access::Public)
            .unwrap();
        let err = Identity::load_or_create(&dir, "beta").unwrap_err();
        assert!(err.to_string().contains(files::IDENTITY_CERT), "{err}");

        dir.write(files::IDENTITY_CERT, identity.cert_der(), Access::Public)
            .unwrap();
        dir.write(files::IDENTITY_KEY, b"garbage", Access::Secret)
            .unwrap();
        let err = Identity::load_or_create(&dir, "beta").unwrap_err();
        assert!(err.to_string().contains(files::IDENTITY_KEY), "{err}");

        let other = Identity::generate("other").unwrap();
        dir.write(
            files::IDENTITY_KEY,
            other.key_der().secret_der(),
            Access::Secret,
        )
        .unwrap();
        let err = Identity::load_or_create(&dir, "beta").unwrap_err();
        assert!(err.to_string().contains(files::IDENTITY_CERT), "{err}");

        std::fs::remove_file(dir.path(files::IDENTITY_KEY)).unwrap();
        let err = Identity::load_or_create(&dir, "beta").unwrap_err();
        assert!(matches!(err, IdentityError::Incomplete { .. }), "{err}");
        assert!(dir.read(files::IDENTITY_CERT).unwrap().is_some(), "kept");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn a_missing_certificate_is_issued_again_from_the_key() {
        let (root, dir) = temp_dir("reissue");
        let first = Identity::load_or_create(&dir, "gamma").unwrap();
        let key = dir.read(files::IDENTITY_KEY).unwrap().unwrap();
        std::fs::remove_file(dir.path(files::IDENTITY_CERT)).unwrap();

        let rebuilt = Identity::load_or_create(&dir, "gamma").unwrap();
        assert_eq!(dir.read(files::IDENTITY_KEY).unwrap(), Some(key.clone()));
        assert_eq!(rebuilt.key_der().secret_der(), key, "the same key");
        let public_key = |identity: &Identity| {
            rcgen::KeyPair::try_from(identity.key_der().secret_der())
                .unwrap()
                .public_key_pem()
        };
        assert_eq!(public_key(&rebuilt), public_key(&first));
        assert_ne!(
            rebuilt.fingerprint(),
            first.fingerprint(),
            "the fingerprint covers the signature, which is new"
        );
        let again = Identity::load_or_create(&dir, "gamma").unwrap();
        assert_eq!(again.fingerprint(), rebuilt.fingerprint(), "stored");
        assert_eq!(
            dir.read(files::IDENTITY_CERT).unwrap().as_deref(),
            Some(&rebuilt.cert_der()[..])
        );
        std::fs::remove_dir_all(root).unwrap();
    }
}

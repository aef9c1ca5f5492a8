//! The bundle in force, kept in the data directory across reboots.

use super::{Bundle, BundleError, PublicKey, VerifiedBundle};
use crate::store::{Access, DataDir, files};

/// The stored bundle. Saving a verified bundle is the only write; a bad
/// file is reported, never replaced or removed by loading.
#[derive(Debug, Clone)]
pub struct BundleStore {
    dir: DataDir,
}

/// A bundle read back from the data directory.
#[derive(Debug, Clone)]
pub struct LoadedBundle {
    /// The bundle, its signature and hashes checked again.
    pub bundle: VerifiedBundle,
    /// Whether it had expired at load time; it is returned all the same so
    /// the appliance keeps serving, and reports, its last policy.
    pub expired: bool,
}

impl BundleStore {
    /// The store in `dir`.
    pub fn new(dir: DataDir) -> Self {
        Self { dir }
    }

    /// Replaces the stored bundle atomically.
    pub(crate) fn save(&self, bundle: &VerifiedBundle) -> Result<(), BundleError> {
        self.dir
            .write(files::BUNDLE, &bundle.to_bytes(), Access::Public)?;
        Ok(())
    }

    /// The stored bundle, if any, re-verified against `trusted` (signature
    /// and hashes; not version or expiry). An unusable file is an error
    /// naming it.
    pub fn load(
        &self,
        trusted: &PublicKey,
        now_unix: u64,
    ) -> Result<Option<LoadedBundle>, BundleError> {
        let Some(bytes) = self.dir.read(files::BUNDLE)? else {
            return Ok(None);
        };
        let bundle = Bundle::parse(&bytes)
            .and_then(|bundle| bundle.verify_integrity(trusted))
            .map_err(|source| BundleError::Stored {
                path: self.dir.path(files::BUNDLE),
                source: Box::new(source),
            })?;
        let expired = bundle.is_expired(now_unix);
        Ok(Some(LoadedBundle { bundle, expired }))
    }
}

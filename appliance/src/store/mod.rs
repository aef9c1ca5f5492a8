//! The data directory: the only writer of files in it. Every write is
//! atomic (temporary file, fsync, rename); the directory is mode 0700 and
//! secrets are mode 0600.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why a data-directory operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A state file exists but cannot be understood.
    #[error("{path}: corrupt ({reason})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Who may read a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Owner only (0600).
    Secret,
    /// Anyone (0644).
    Public,
}

/// Creates `dir` (and missing parents) mode 0700, or takes group and
/// other access away from it if it exists; a directory Moat cannot
/// change (not its own) is left as it is.
pub(crate) fn private_dir(dir: &Path) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: dir.to_owned(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io)?;
    let mode = fs::metadata(dir).map_err(io)?.permissions().mode();
    if mode & 0o077 != 0
        && let Err(err) = fs::set_permissions(dir, fs::Permissions::from_mode(mode & 0o700))
    {
        tracing::warn!(dir = %dir.display(), error = %err, "cannot make the directory private");
    }
    Ok(())
}

/// Files Moat keeps in its data directory.
pub(crate) mod files {
    /// Bearer token for the control endpoint.
    pub(crate) const CONTROL_TOKEN: &str = "control.token";
    /// Address the control endpoint actually bound.
    pub(crate) const CONTROL_ADDR: &str = "control.addr";
    /// Whether blocking is paused.
    pub(crate) const PAUSE: &str = "pause.json";
    /// Directory of query log files.
    pub(crate) const QUERY_LOG: &str = "querylog";
    /// A replica's pinned primary; its presence makes this appliance a replica.
    pub(crate) const PRIMARY: &str = "primary.json";
    /// Left by the control plane to ask init for a factory reset at the
    /// next boot (on the image).
    pub(crate) const FACTORY_RESET: &str = "factory-reset";
    /// Address the sync endpoint actually bound (primary).
    pub(crate) const SYNC_ADDR: &str = "sync.addr";
    /// The last bundle version the primary sealed.
    pub(crate) const BUNDLE_VERSION: &str = "bundle-version";
    /// Digest of the inputs the stored bundle's modules were compiled from.
    pub(crate) const POLICY_INPUTS: &str = "policy-inputs";
    /// Prefix of the kept copies of blocklist sources.
    pub(crate) const SOURCE_COPY_PREFIX: &str = "source-";
    /// This appliance's private key (PKCS#8 DER, 0600).
    pub(crate) const IDENTITY_KEY: &str = "identity.key";
    /// This appliance's self-signed certificate (DER), pinned by its peers.
    pub(crate) const IDENTITY_CERT: &str = "identity.crt";
    /// The key that signs policy bundles (PKCS#8, secret).
    pub(crate) const SIGNING_KEY: &str = "signing.key";
    /// The verified policy bundle in force.
    pub(crate) const BUNDLE: &str = "bundle";
    /// The primary's paired replicas: pins, revocations, last known state.
    pub(crate) const REPLICAS: &str = "replicas.json";
    /// `[policy]` as last saved through the control API; replaces the
    /// configuration file's.
    pub(crate) const POLICY_SETTINGS: &str = "policy-settings.toml";
    /// `[tuning]` as last saved through the control API; replaces the
    /// configuration file's.
    pub(crate) const TUNING_SETTINGS: &str = "tuning-settings.toml";
    /// What each blocklist source gave at the last compile and download.
    pub(crate) const SOURCE_STATUS: &str = "sources.json";
    /// The admin password's argon2 hash (PHC string, secret).
    pub(crate) const ADMIN_PASSWORD: &str = "admin.password";
    /// The one-time code that lets the first admin password be set (secret).
    pub(crate) const SETUP_CODE: &str = "setup-code";
    /// The control plane's self-signed HTTPS certificate (DER).
    pub(crate) const HTTPS_CERT: &str = "https.crt";
    /// Its private key (PKCS#8 DER, secret).
    pub(crate) const HTTPS_KEY: &str = "https.key";
}

/// The data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
    source_dirs: Arc<[PathBuf]>,
}

impl DataDir {
    /// Opens (creating if needed) the data directory, mode 0700.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        private_dir(root)?;
        Ok(Self {
            root: root.to_owned(),
            source_dirs: Arc::from([root.to_owned()]),
        })
    }

    /// Lets local blocklist sources also be read from `dirs` (by default
    /// only the data directory itself is allowed).
    pub fn allow_sources_from(mut self, dirs: impl IntoIterator<Item = PathBuf>) -> Self {
        let mut all = self.source_dirs.to_vec();
        all.extend(dirs);
        self.source_dirs = Arc::from(all);
        self
    }

    /// The directories local blocklist sources may be read from.
    pub(crate) fn source_dirs(&self) -> &[PathBuf] {
        &self.source_dirs
    }

    /// Path of a file or directory inside.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Replaces `name` with `bytes` atomically.
    pub fn write(&self, name: &str, bytes: &[u8], access: Access) -> Result<(), StoreError> {
        let path = self.path(name);
        let temp = self.path(&format!(".{name}.tmp"));
        let io = |source| StoreError::Io {
            path: path.clone(),
            source,
        };
        let mode = if access == Access::Secret {
            0o600
        } else {
            0o644
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temp)
            .map_err(io)?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(io)?;
        file.write_all(bytes).map_err(io)?;
        file.sync_all().map_err(io)?;
        fs::rename(&temp, &path).map_err(io)?;
        if let Ok(dir) = fs::File::open(&self.root) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Reads `name`; `None` if it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let path = self.path(name);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Deletes `name`; deleting a file that does not exist succeeds.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        let path = self.path(name);
        match fs::remove_file(&path) {
            Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::Io { path, source: err })
            }
            _ => Ok(()),
        }
    }

    /// Writes a value as JSON.
    pub(crate) fn write_json<T: Serialize>(
        &self,
        name: &str,
        value: &T,
        access: Access,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(value).map_err(|err| StoreError::Corrupt {
            path: self.path(name),
            reason: err.to_string(),
        })?;
        self.write(name, &bytes, access)
    }

    /// Reads a JSON value; `None` if the file does not exist.
    pub(crate) fn read_json<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self.read(name)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| StoreError::Corrupt {
                path: self.path(name),
                reason: err.to_string(),
            })
    }

    /// The control token, created (random, 0600) on first use.
    pub(crate) fn control_token(&self) -> Result<String, StoreError> {
        if let Some(bytes) = self.read(files::CONTROL_TOKEN)? {
            let token = String::from_utf8_lossy(&bytes).trim().to_owned();
            if token.len() >= 32 {
                return Ok(token);
            }
        }
        let token: String = (0..32)
            .map(|_| format!("{:02x}", rand::random::<u8>()))
            .collect();
        self.write(files::CONTROL_TOKEN, token.as_bytes(), Access::Secret)?;
        Ok(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_atomic_and_secrets_private() {
        let root = std::env::temp_dir().join(format!("moat-store-{}", std::process::id()));
        let dir = DataDir::open(&root).unwrap();
        let token = dir.control_token().unwrap();
        assert_eq!(dir.control_token().unwrap(), token, "the token is kept");
        let mode = fs::metadata(dir.path(files::CONTROL_TOKEN))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        dir.write("state.json", b"{not json", Access::Public)
            .unwrap();
        let err = dir.read_json::<u32>("state.json").unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(!dir.path(".state.json.tmp").exists());
        fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn the_data_directory_is_private() {
        let root = std::env::temp_dir().join(format!("moat-store-mode-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        DataDir::open(&root.join("data")).unwrap();
        assert_eq!(mode(&root.join("data")), 0o700, "created 0700");
        fs::set_permissions(root.join("data"), fs::Permissions::from_mode(0o755)).unwrap();
        let dir = DataDir::open(&root.join("data")).unwrap();
        assert_eq!(mode(&root.join("data")), 0o700, "tightened when opened");
        assert_eq!(dir.source_dirs(), [root.join("data")]);
        let dir = dir.allow_sources_from([root.clone()]);
        assert_eq!(dir.source_dirs(), [root.join("data"), root.clone()]);
        fs::remove_dir_all(root).unwrap();
    }
}

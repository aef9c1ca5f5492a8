//! Where the policy in force comes from. Every appliance builds its query
//! path from a verified bundle: the primary seals one from its own
//! configuration, a replica takes the last one its primary sent.

use std::sync::Arc;
use std::time::Duration;

use super::DaemonError;
use crate::bundle::{
    Bundle, BundleError, BundleStore, Part, PublicKey, SigningKey, VerifiedBundle,
};
use crate::compile::{compile_policy, inputs_digest, record_compiled};
use crate::config::{self, Config};
use crate::policy::{Chain, Policy, PolicyEngine, WasmPolicy};
use crate::store::{Access, DataDir, files};

/// How long a bundle is valid after it is sealed.
pub(super) const BUNDLE_LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// The primary seals a new version when less than this is left.
pub(super) const RESEAL_BEFORE: Duration = Duration::from_secs(15 * 86_400);

/// A bundle opened for the query path: its settings and its plugins.
#[derive(Debug)]
pub(super) struct OpenedBundle {
    /// The synced settings (upstreams, blocked response, fail mode, rules).
    pub(super) policy: config::Policy,
    /// Local records, then the blocklist.
    pub(super) plugins: Arc<dyn Policy>,
}

/// Opens a verified bundle: reads its settings and loads its modules on `engine`.
pub(super) fn open(
    bundle: &VerifiedBundle,
    engine: &PolicyEngine,
) -> Result<OpenedBundle, DaemonError> {
    let settings = std::str::from_utf8(bundle.required_part(Part::Settings)?)
        .map_err(|err| BundleError::Malformed(format!("settings are not UTF-8: {err}")))?;
    let policy = config::Policy::from_toml(settings, Part::Settings.name())?;
    let plugins = Arc::new(Chain(vec![
        WasmPolicy::new(engine, bundle.required_part(Part::LocalRecords)?)?,
        WasmPolicy::new(engine, bundle.required_part(Part::Blocklist)?)?,
    ]));
    Ok(OpenedBundle { policy, plugins })
}

/// The bundle stored in `data`, verified with `key`; an expired one is
/// still returned (serving the last policy beats serving none) and logged.
pub(super) fn stored(
    data: &DataDir,
    key: &PublicKey,
    now_unix: u64,
) -> Result<Option<VerifiedBundle>, DaemonError> {
    let loaded = BundleStore::new(data.clone()).load(key, now_unix)?;
    Ok(loaded.map(|loaded| {
        if loaded.expired {
            tracing::warn!(
                version = loaded.bundle.version(),
                "the stored bundle has expired; serving it until a new one arrives"
            );
        }
        loaded.bundle
    }))
}

/// The primary's bundle for `config`: the stored one while it was sealed
/// from the same inputs and is not due for re-signing, otherwise a new
/// version (compiling only when the rules or sources changed). When
/// `starting`, a policy that cannot be compiled falls back to the stored
/// bundle, so a restart never serves without policy.
pub(super) fn seal_for_primary(
    config: &Config,
    data: &DataDir,
    key: &SigningKey,
    starting: bool,
    now_unix: u64,
) -> Result<VerifiedBundle, DaemonError> {
    let current = match stored(data, &key.public(), now_unix) {
        Ok(current) => current,
        Err(err) => {
            tracing::error!(error = %err, "stored bundle unusable; sealing a new one");
            None
        }
    };
    let settings = config.policy.to_toml();
    let digest = inputs_digest(&config.policy, data);
    let modules_current = data.read(files::POLICY_INPUTS)?.as_deref() == Some(&digest[..]);
    let reusable = current.as_ref().filter(|_| modules_current);
    if let Some(bundle) = reusable
        && bundle.part(Part::Settings) == Some(settings.as_bytes())
        && bundle.expires_unix() > now_unix + RESEAL_BEFORE.as_secs()
    {
        tracing::info!(
            version = bundle.version(),
            "policy unchanged; serving the stored bundle"
        );
        return Ok(bundle.clone());
    }
    let modules = match reusable {
        Some(bundle) => [Part::LocalRecords, Part::Blocklist]
            .map(|part| bundle.part(part).unwrap_or_default().to_vec()),
        None => match compile_policy(&config.policy, data) {
            Ok(compiled) => {
                tracing::info!(summary = ?compiled.summary, sources = ?compiled.sources, "policy compiled");
                record_compiled(data, &compiled.sources, now_unix);
                [compiled.local_records, compiled.blocklist]
            }
            Err(err) if starting => {
                let Some(current) = current else {
                    return Err(err.into());
                };
                tracing::error!(error = %err, "policy cannot be compiled; serving the stored bundle");
                return Ok(current);
            }
            Err(err) => return Err(err.into()),
        },
    };
    let running = current.as_ref().map(VerifiedBundle::version);
    let [local_records, blocklist] = modules;
    let parts = vec![
        (Part::LocalRecords, local_records),
        (Part::Blocklist, blocklist),
        (Part::Settings, settings.into_bytes()),
    ];
    // Replicas refuse any version they ran before, so versions go on from
    // the last one sealed even when the stored bundle was lost.
    let last_sealed = data
        .read(files::BUNDLE_VERSION)?
        .and_then(|bytes| String::from_utf8_lossy(&bytes).trim().parse::<u64>().ok());
    let version = running.max(last_sealed).map_or(1, |version| version + 1);
    data.write(
        files::BUNDLE_VERSION,
        version.to_string().as_bytes(),
        Access::Public,
    )?;
    let bundle = Bundle::seal(parts, version, now_unix, BUNDLE_LIFETIME, key).verify(
        &key.public(),
        running,
        now_unix,
    )?;
    // The digest goes last: a crash in between leaves it stale, never wrong.
    data.write(files::POLICY_INPUTS, b"", Access::Public)?;
    BundleStore::new(data.clone()).save(&bundle)?;
    data.write(files::POLICY_INPUTS, &digest, Access::Public)?;
    tracing::info!(version, "sealed a new policy bundle");
    Ok(bundle)
}

/// The primary's last sealed bundle, for safe mode; sealed from `config`
/// only when there is no usable stored one.
pub(super) fn last_sealed(
    config: &Config,
    data: &DataDir,
    key: &SigningKey,
    now_unix: u64,
) -> Result<VerifiedBundle, DaemonError> {
    match stored(data, &key.public(), now_unix) {
        Ok(Some(bundle)) => {
            tracing::info!(version = bundle.version(), "serving the stored bundle");
            Ok(bundle)
        }
        Ok(None) => seal_for_primary(config, data, key, true, now_unix),
        Err(err) => {
            tracing::error!(error = %err, "stored bundle unusable; sealing the configuration's policy");
            seal_for_primary(config, data, key, true, now_unix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_only_go_up_even_when_the_stored_bundle_is_lost() {
        let root = std::env::temp_dir().join(format!("moat-seal-{}", std::process::id()));
        let data = DataDir::open(&root).unwrap();
        let key = SigningKey::generate().unwrap();
        let config = |deny: &str| Config::parse(&format!("[policy]\ndeny = [\"{deny}\"]\n"), "t");
        let (first, second) = (config("a.example").unwrap(), config("b.example").unwrap());
        let seal = |config: &Config, now: u64| {
            seal_for_primary(config, &data, &key, true, now)
                .unwrap()
                .version()
        };
        assert_eq!(seal(&first, 1_000), 1);
        assert_eq!(
            seal(&first, 1_000),
            1,
            "unchanged policy: the stored bundle"
        );
        std::fs::write(data.path(files::BUNDLE), b"garbage").unwrap();
        assert_eq!(
            seal(&first, 1_000),
            2,
            "a lost bundle is sealed again, higher"
        );
        assert_eq!(seal(&second, 1_000), 3, "a changed policy");
        let due = 1_000 + BUNDLE_LIFETIME.as_secs() - RESEAL_BEFORE.as_secs() + 1;
        assert_eq!(seal(&second, due), 4, "re-signed before it expires");
        std::fs::remove_dir_all(root).unwrap();
    }
}

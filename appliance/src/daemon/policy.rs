//! Where the policy in force comes from. Every appliance builds its query
//! path from a verified bundle: the primary seals one from its own
//! configuration, a replica takes the last one its primary sent.

use std::sync::Arc;
use std::time::Duration;

use super::DaemonError;
use crate::bundle::{
    Bundle, BundleError, BundleStore, Part, PublicKey, SigningKey, VerifiedBundle,
};
use crate::compile::{PluginRefused, compile_policy, inputs_digest, record_compiled};
use crate::config::{self, Config, PluginPlace};
use crate::policy::{Chain, Configured, Policy, PolicyEngine, WasmPolicy};
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
    /// The chain: first-place plugins, local records, plugins before the
    /// blocklist, the blocklist, last-place plugins.
    pub(super) plugins: Arc<dyn Policy>,
}

/// Opens a verified bundle: reads its settings and loads its modules on `engine`.
pub(super) fn open(
    bundle: &VerifiedBundle,
    engine: &PolicyEngine,
) -> Result<OpenedBundle, DaemonError> {
    let settings = std::str::from_utf8(bundle.required_part(Part::Settings)?)
        .map_err(|err| BundleError::Malformed(format!("settings are not UTF-8: {err}")))?;
    let policy = config::Policy::from_toml(settings, &Part::Settings.name())?;
    let configured = |place: PluginPlace| -> Result<Vec<Arc<dyn Policy>>, DaemonError> {
        let mut chain: Vec<Arc<dyn Policy>> = Vec::new();
        for spec in policy.plugins.iter().filter(|spec| spec.place == place) {
            let module = bundle.required_part(Part::Plugin(spec.name))?;
            let module = WasmPolicy::new(engine, module).map_err(|err| PluginRefused {
                name: spec.name,
                reason: err.to_string(),
            })?;
            chain.push(Arc::new(Configured::new(spec.name, spec.fail_mode, module)));
        }
        Ok(chain)
    };
    let mut chain = configured(PluginPlace::First)?;
    chain.push(WasmPolicy::new(
        engine,
        bundle.required_part(Part::LocalRecords)?,
    )?);
    chain.extend(configured(PluginPlace::BeforeBlocklist)?);
    chain.push(WasmPolicy::new(
        engine,
        bundle.required_part(Part::Blocklist)?,
    )?);
    chain.extend(configured(PluginPlace::Last)?);
    Ok(OpenedBundle {
        policy,
        plugins: Arc::new(Chain(chain)),
    })
}

impl From<PluginRefused> for DaemonError {
    fn from(refused: PluginRefused) -> Self {
        Self::Compile(refused.into())
    }
}

/// Loads each configured plugin's module as a replica will and asks it the
/// smoke set: the checks only running a module can make (its ABI version,
/// its exports, no trap or timeout on ordinary questions).
fn smoke_test(
    plugins: &[(config::PluginName, Vec<u8>)],
    engine: &PolicyEngine,
) -> Result<(), PluginRefused> {
    for (name, module) in plugins {
        let refuse = |err: crate::policy::PluginError| PluginRefused {
            name: *name,
            reason: err.to_string(),
        };
        WasmPolicy::new(engine, module)
            .map_err(refuse)?
            .smoke()
            .map_err(refuse)?;
    }
    Ok(())
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
    engine: &PolicyEngine,
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
    let kept_plugins = |bundle: &VerifiedBundle| {
        config
            .policy
            .plugins
            .iter()
            .map(|spec| {
                let module = bundle.part(Part::Plugin(spec.name)).unwrap_or_default();
                (spec.name, module.to_vec())
            })
            .collect::<Vec<_>>()
    };
    let modules = match reusable {
        Some(bundle) => (
            [Part::LocalRecords, Part::Blocklist]
                .map(|part| bundle.part(part).unwrap_or_default().to_vec()),
            kept_plugins(bundle),
        ),
        None => match compile_policy(&config.policy, data)
            .map_err(DaemonError::from)
            .and_then(|compiled| {
                smoke_test(&compiled.plugins, engine)?;
                Ok(compiled)
            }) {
            Ok(compiled) => {
                tracing::info!(summary = ?compiled.summary, sources = ?compiled.sources, "policy compiled");
                record_compiled(data, &compiled.sources, now_unix);
                (
                    [compiled.local_records, compiled.blocklist],
                    compiled.plugins,
                )
            }
            Err(err) if starting => {
                let Some(current) = current else {
                    return Err(err);
                };
                tracing::error!(error = %err, "policy cannot be compiled; serving the stored bundle");
                return Ok(current);
            }
            Err(err) => return Err(err),
        },
    };
    let running = current.as_ref().map(VerifiedBundle::version);
    let ([local_records, blocklist], plugins) = modules;
    let mut parts = vec![
        (Part::LocalRecords, local_records),
        (Part::Blocklist, blocklist),
        (Part::Settings, settings.into_bytes()),
    ];
    parts.extend(
        plugins
            .into_iter()
            .map(|(name, module)| (Part::Plugin(name), module)),
    );
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
    engine: &PolicyEngine,
    now_unix: u64,
) -> Result<VerifiedBundle, DaemonError> {
    match stored(data, &key.public(), now_unix) {
        Ok(Some(bundle)) => {
            tracing::info!(version = bundle.version(), "serving the stored bundle");
            Ok(bundle)
        }
        Ok(None) => seal_for_primary(config, data, key, engine, true, now_unix),
        Err(err) => {
            tracing::error!(error = %err, "stored bundle unusable; sealing the configuration's policy");
            seal_for_primary(config, data, key, engine, true, now_unix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> &'static PolicyEngine {
        static ENGINE: std::sync::OnceLock<PolicyEngine> = std::sync::OnceLock::new();
        ENGINE.get_or_init(|| PolicyEngine::start().unwrap())
    }

    #[test]
    fn versions_only_go_up_even_when_the_stored_bundle_is_lost() {
        let root = std::env::temp_dir().join(format!("moat-seal-{}", std::process::id()));
        let data = DataDir::open(&root).unwrap();
        let key = SigningKey::generate().unwrap();
        let config = |deny: &str| Config::parse(&format!("[policy]\ndeny = [\"{deny}\"]\n"), "t");
        let (first, second) = (config("a.example").unwrap(), config("b.example").unwrap());
        let seal = |config: &Config, now: u64| {
            seal_for_primary(config, &data, &key, engine(), true, now)
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

    #[test]
    fn a_plugin_travels_in_the_bundle_and_a_refused_one_never_does() {
        let root = std::env::temp_dir().join(format!("moat-seal-plugin-{}", std::process::id()));
        let data = DataDir::open(&root).unwrap();
        let key = SigningKey::generate().unwrap();
        let module = root.join("schedule.wasm");
        std::fs::write(&module, crate::compile::SCHEDULE_EXAMPLE).unwrap();
        let config = |from: &str| {
            Config::parse(
                &format!(
                    "[[policy.plugins]]\nname = \"bedtime\"\nmodule = \"{}\"\nplace = \"first\"\n\
                     config = {{ names = [\"social.example\"], from = \"{from}\", until = \"22:00\" }}\n",
                    module.display()
                ),
                "t",
            )
            .unwrap()
        };
        let sealed =
            seal_for_primary(&config("21:00"), &data, &key, engine(), true, 1_000).unwrap();
        let plugin = Part::Plugin("bedtime".parse().unwrap());
        assert!(sealed.part(plugin).is_some_and(|bytes| !bytes.is_empty()));
        let opened = open(&sealed, engine()).unwrap();
        assert_eq!(opened.plugins.plugins()[0].name, "bedtime");
        let ask = |opened: &OpenedBundle, hour: u64| {
            opened.plugins.decide(&crate::policy::Question {
                name: b"social.example",
                qtype: 1,
                client: [192, 168, 1, 2].into(),
                unix_time: hour * 3600,
            })
        };
        assert_eq!(ask(&opened, 21), crate::policy::Decision::Block);
        assert_eq!(ask(&opened, 20), crate::policy::Decision::NoOpinion);
        let changed =
            seal_for_primary(&config("20:00"), &data, &key, engine(), false, 1_000).unwrap();
        assert_eq!(changed.version(), 2, "a changed config is a new bundle");
        assert_eq!(
            ask(&open(&changed, engine()).unwrap(), 20),
            crate::policy::Decision::Block
        );

        // A module that imports something is refused, naming the plugin;
        // the stored bundle stays.
        std::fs::write(
            &module,
            wat::parse_str(r#"(module (import "env" "f" (func)) (memory (export "memory") 1))"#)
                .unwrap(),
        )
        .unwrap();
        let err = seal_for_primary(&config("20:00"), &data, &key, engine(), false, 1_000)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("plugin `bedtime` refused") && err.contains("env.f"),
            "{err}"
        );
        let kept = stored(&data, &key.public(), 1_000).unwrap().unwrap();
        assert_eq!(kept.version(), 2);
        std::fs::remove_dir_all(root).unwrap();
    }
}

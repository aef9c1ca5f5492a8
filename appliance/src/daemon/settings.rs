//! Policy and tuning changed through the control API: checked, saved in
//! the data directory over the configuration file's sections, applied by
//! a reload, and put back as they were when the reload refuses them.

use serde::Serialize;

use super::{Daemon, DaemonError, Role};
use crate::compile::{SourceStatus, source_status};
use crate::config::{Config, Policy, Tuning};
use crate::store::{Access, files};

/// The policy in force, as the control plane shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PolicyView {
    /// The settings: lists, rules, records, upstreams, blocked response.
    #[schema(value_type = Object)]
    pub policy: Policy,
    /// False on a replica: its policy comes from its primary.
    pub editable: bool,
    /// On a replica, the primary it is synced from.
    pub synced_from: Option<SyncedFrom>,
    /// Each blocklist source's last compile and download.
    pub sources: Vec<SourceStatus>,
}

/// The primary a replica's policy comes from.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SyncedFrom {
    /// Its name.
    pub name: String,
    /// Its sync address.
    pub address: String,
}

impl Daemon {
    /// The policy in force: the primary's own, or on a replica the one in
    /// the bundle its primary sent.
    pub fn policy(&self) -> PolicyView {
        let current = self.current.lock();
        let policy = current.opened.policy.clone();
        let synced_from = match &current.role {
            Role::Replica(pin) => Some(SyncedFrom {
                name: pin.name.to_string(),
                address: pin.address.clone(),
            }),
            Role::Primary(_) => None,
        };
        drop(current);
        PolicyView {
            sources: source_status(&self.data, &policy.blocklists),
            editable: synced_from.is_none(),
            synced_from,
            policy,
        }
    }

    /// Replaces the policy (primary only) and applies it; returns the new
    /// configuration generation.
    pub fn set_policy(&self, policy: &Policy) -> Result<u64, DaemonError> {
        if let Role::Replica(pin) = &self.current.lock().role {
            return Err(DaemonError::SyncedPolicy {
                primary: pin.name.to_string(),
                address: pin.address.clone(),
            });
        }
        self.save_section(files::POLICY_SETTINGS, &policy.to_toml())
    }

    /// The tuning in force.
    pub fn tuning(&self) -> Tuning {
        self.current.lock().config.tuning.clone()
    }

    /// Replaces this appliance's tuning and applies it.
    pub fn set_tuning(&self, tuning: &Tuning) -> Result<u64, DaemonError> {
        self.save_section(files::TUNING_SETTINGS, &tuning.to_toml())
    }

    /// Checks `text` the way a configuration file is checked, saves it as
    /// `file` and reloads; a refused reload restores the file it replaced.
    fn save_section(&self, file: &str, text: &str) -> Result<u64, DaemonError> {
        let _one_writer = self.settings_writer.lock();
        Config::parse(text, "the request")?;
        let before = self.data.read(file)?;
        self.data.write(file, text.as_bytes(), Access::Public)?;
        let applied = self.reload();
        if applied.is_err() {
            match &before {
                Some(bytes) => self.data.write(file, bytes, Access::Public)?,
                None => self.data.remove(file)?,
            }
        }
        applied
    }
}

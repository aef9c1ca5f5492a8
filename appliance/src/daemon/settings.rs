//! Policy and tuning as the control API reads and replaces them; the
//! policy owner checks, saves and applies a change (`owner.rs`).

use serde::Serialize;

use super::owner::Command;
use super::role::Role;
use super::{Daemon, DaemonError};
use crate::compile::{SourceStatus, source_status};
use crate::config::{Policy, Tuning};

/// The policy in force, as the control plane shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
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
        let policy = self.snapshot.load().policy.clone();
        let synced_from = match &*self.role.lock() {
            Role::Replica { pin, .. } => Some(SyncedFrom {
                name: pin.name.to_string(),
                address: pin.address.clone(),
            }),
            Role::Primary { .. } => None,
        };
        PolicyView {
            sources: source_status(&self.data, &policy.blocklists),
            editable: synced_from.is_none(),
            synced_from,
            policy,
        }
    }

    /// Replaces the policy (primary only), keeps it in the data directory
    /// and applies it; returns the new configuration generation.
    pub(crate) async fn set_policy(&self, policy: Policy) -> Result<u64, DaemonError> {
        let policy = Box::new(policy);
        self.commands
            .call(|reply| Command::SetPolicy(policy, reply))
            .await
    }

    /// The tuning in force.
    pub fn tuning(&self) -> Tuning {
        self.snapshot.load().config.tuning.clone()
    }

    /// Replaces this appliance's tuning, keeps it and applies it.
    pub(crate) async fn set_tuning(&self, tuning: Tuning) -> Result<u64, DaemonError> {
        let tuning = Box::new(tuning);
        self.commands
            .call(|reply| Command::SetTuning(tuning, reply))
            .await
    }
}

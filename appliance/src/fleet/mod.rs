//! The primary's view of its replicas: who is paired, their status, the
//! bundle version each applied, when each was last seen, their stats.
//!
//! [`Fleet`] is fed by pairing (pins), the control plane (revocations), and
//! each sync session's updates; it keeps pins, revocations and the last
//! known state in `replicas.json`, and connection state and stats in
//! memory only. Status is derived when listed, from the last event and
//! the time: see [`ReplicaStatus`].

use std::collections::BTreeMap;

use moat_proto::sync::{HEARTBEAT_INTERVAL, ReplicaStats};
use moat_proto::{ApplianceName, Fingerprint};
use serde::{Deserialize, Serialize};

use crate::store::{Access, DataDir, StoreError, files};

/// How long a replica may stay unheard before it counts as failing.
pub(crate) const SILENCE_LIMIT_MS: u64 = 3 * HEARTBEAT_INTERVAL.as_millis() as u64;

/// How a replica is doing, as listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaStatus {
    /// Heard from recently and runs the published bundle (or newer).
    Active,
    /// Runs an older bundle than the published one, or was never seen.
    PendingSync,
    /// Its last event was a rejected bundle or a failed connection, or it
    /// has not been heard from for [`SILENCE_LIMIT_MS`].
    Error,
}

/// One replica, as listed by the control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaView {
    /// Name given at pairing.
    #[schema(value_type = String)]
    pub name: ApplianceName,
    /// Pinned certificate fingerprint, lowercase hex.
    #[schema(value_type = String)]
    pub fingerprint: Fingerprint,
    /// Address it last connected from.
    pub address: Option<String>,
    /// Derived status.
    pub status: ReplicaStatus,
    /// Bundle version it last said it runs.
    pub bundle_version: Option<u64>,
    /// When it was last heard from, Unix milliseconds.
    pub last_seen_unix_ms: Option<u64>,
    /// Its most recent error.
    pub last_error: Option<String>,
    /// Its latest stats, since this primary started.
    pub stats: Option<ReplicaStats>,
    /// When those stats arrived, Unix milliseconds.
    pub stats_updated_unix_ms: Option<u64>,
    /// Whether a sync connection is open.
    pub connected: bool,
    /// Whether it was revoked (refused from then on).
    pub revoked: bool,
}

/// The primary's replicas.
#[derive(Debug)]
pub(crate) struct Fleet {
    dir: DataDir,
    replicas: BTreeMap<ApplianceName, Replica>,
    published: Option<u64>,
}

impl Fleet {
    /// Loads the replicas file from `dir` (none yet: an empty fleet).
    pub(crate) fn load(dir: &DataDir) -> Result<Self, StoreError> {
        let file: ReplicasFile = dir.read_json(files::REPLICAS)?.unwrap_or_default();
        let mut replicas = BTreeMap::new();
        for stored in file.replicas {
            let name = stored.name.clone();
            let replica = Replica {
                stored,
                live: Live::default(),
            };
            if replicas.insert(name.clone(), replica).is_some() {
                return Err(StoreError::Corrupt {
                    path: dir.path(files::REPLICAS),
                    reason: format!("replica {name:?} is listed twice"),
                });
            }
        }
        Ok(Self {
            dir: dir.clone(),
            replicas,
            published: None,
        })
    }

    /// Pins `fingerprint` for replica `name` after pairing. Re-pairing a
    /// name replaces its fingerprint and lifts a revocation; a certificate
    /// pinned under another name moves to this one. Nothing changes if the
    /// replicas file cannot be written.
    pub(crate) fn pin(
        &mut self,
        name: ApplianceName,
        fingerprint: Fingerprint,
    ) -> Result<(), StoreError> {
        let before = self.replicas.clone();
        self.replicas
            .retain(|other, replica| other == &name || replica.stored.fingerprint != fingerprint);
        let replica = self
            .replicas
            .entry(name.clone())
            .or_insert_with(|| Replica::new(name, fingerprint));
        replica.stored.fingerprint = fingerprint;
        replica.stored.revoked = false;
        replica.stored.failing = false;
        self.save().inspect_err(|_| self.replicas = before)
    }

    /// Whether any replica is pinned and not revoked.
    pub(crate) fn has_replicas(&self) -> bool {
        self.replicas
            .values()
            .any(|replica| !replica.stored.revoked)
    }

    /// The name pinned for a certificate `fingerprint`, unless revoked.
    pub(crate) fn admit(&self, fingerprint: &Fingerprint) -> Option<ApplianceName> {
        self.replicas
            .values()
            .find(|replica| replica.stored.fingerprint == *fingerprint && !replica.stored.revoked)
            .map(|replica| replica.stored.name.clone())
    }

    /// Revokes replica `name`; `false` if no such replica. The shell closes
    /// its connection.
    pub(crate) fn revoke(&mut self, name: &str) -> Result<bool, StoreError> {
        let Some(replica) = self.replicas.get_mut(name) else {
            return Ok(false);
        };
        replica.stored.revoked = true;
        self.save()?;
        Ok(true)
    }

    /// Replica `name` connected from `address`.
    pub(crate) fn connected(&mut self, name: &str, address: impl Into<String>, now_ms: u64) {
        if let Some(replica) = self.replicas.get_mut(name) {
            replica.live.connections += 1;
            replica.stored.address = Some(address.into());
            replica.stored.last_seen_unix_ms = Some(now_ms);
            replica.stored.failing = false;
        }
    }

    /// Replica `name` greeted, running `version`.
    pub(crate) fn hello(&mut self, name: &str, version: Option<u64>) {
        if let Some(replica) = self.replicas.get_mut(name) {
            replica.stored.bundle_version = version;
        }
    }

    /// Replica `name` put bundle `version` in force. Saved only when it
    /// clears a failure: every replica acknowledges every change, and a
    /// save per acknowledgement rewrites the whole file a thousand times
    /// per change in a fleet of a thousand (the version is saved with the
    /// next save, and a replica's hello says it again after a restart).
    pub(crate) fn applied(&mut self, name: &str, version: u64) -> Result<(), StoreError> {
        let Some(replica) = self.replicas.get_mut(name) else {
            return Ok(());
        };
        replica.stored.bundle_version = Some(version);
        if std::mem::replace(&mut replica.stored.failing, false) {
            self.save()
        } else {
            Ok(())
        }
    }

    /// Replica `name` refused bundle `version`.
    pub(crate) fn rejected(
        &mut self,
        name: &str,
        version: u64,
        reason: &str,
    ) -> Result<(), StoreError> {
        let Some(replica) = self.replicas.get_mut(name) else {
            return Ok(());
        };
        replica.stored.last_error = Some(format!("rejected bundle {version}: {reason}"));
        replica.stored.failing = true;
        self.save()
    }

    /// Replica `name` sent a heartbeat. Not saved: it comes every few seconds.
    pub(crate) fn heartbeat(
        &mut self,
        name: &str,
        stats: ReplicaStats,
        version: Option<u64>,
        now_ms: u64,
    ) {
        if let Some(replica) = self.replicas.get_mut(name) {
            replica.stored.last_seen_unix_ms = Some(now_ms);
            if version.is_some() {
                replica.stored.bundle_version = version;
            }
            replica.live.stats = Some(stats);
            replica.live.stats_updated_unix_ms = Some(now_ms);
        }
    }

    /// A connection of replica `name` closed, with an error if it failed.
    /// An error counts against the replica only if it was its last connection.
    pub(crate) fn disconnected(
        &mut self,
        name: &str,
        reason: Option<String>,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        let Some(replica) = self.replicas.get_mut(name) else {
            return Ok(());
        };
        replica.live.connections = replica.live.connections.saturating_sub(1);
        replica.stored.last_seen_unix_ms = Some(now_ms);
        if replica.live.connections == 0 {
            replica.stored.failing = reason.is_some();
        }
        if reason.is_some() {
            replica.stored.last_error = reason;
        }
        self.save()
    }

    /// The bundle version the primary publishes now.
    pub(crate) fn set_published(&mut self, version: u64) {
        self.published = Some(version);
    }

    /// Every replica, by name, with its status at `now_ms`.
    pub(crate) fn list(&self, now_ms: u64) -> Vec<ReplicaView> {
        self.replicas
            .values()
            .map(|replica| self.view_of(replica, now_ms))
            .collect()
    }

    /// Replica `name` with its status at `now_ms`.
    #[cfg(test)]
    pub(crate) fn view(&self, name: &str, now_ms: u64) -> Option<ReplicaView> {
        self.replicas
            .get(name)
            .map(|replica| self.view_of(replica, now_ms))
    }

    fn view_of(&self, replica: &Replica, now_ms: u64) -> ReplicaView {
        let stored = &replica.stored;
        ReplicaView {
            name: stored.name.clone(),
            fingerprint: stored.fingerprint,
            address: stored.address.clone(),
            status: self.status(stored, now_ms),
            bundle_version: stored.bundle_version,
            last_seen_unix_ms: stored.last_seen_unix_ms,
            last_error: stored.last_error.clone(),
            stats: replica.live.stats.clone(),
            stats_updated_unix_ms: replica.live.stats_updated_unix_ms,
            connected: replica.live.connections > 0,
            revoked: stored.revoked,
        }
    }

    fn status(&self, stored: &StoredReplica, now_ms: u64) -> ReplicaStatus {
        let silent = stored
            .last_seen_unix_ms
            .is_some_and(|seen| now_ms.saturating_sub(seen) > SILENCE_LIMIT_MS);
        let behind = self.published.is_some() && stored.bundle_version < self.published;
        let never_seen = stored.last_seen_unix_ms.is_none();
        if stored.failing || silent {
            ReplicaStatus::Error
        } else if behind || never_seen {
            ReplicaStatus::PendingSync
        } else {
            ReplicaStatus::Active
        }
    }

    fn save(&self) -> Result<(), StoreError> {
        let file = ReplicasFile {
            replicas: self
                .replicas
                .values()
                .map(|replica| replica.stored.clone())
                .collect(),
        };
        self.dir.write_json(files::REPLICAS, &file, Access::Public)
    }
}

/// The replicas file.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ReplicasFile {
    replicas: Vec<StoredReplica>,
}

/// What is kept of a replica across restarts.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredReplica {
    name: ApplianceName,
    fingerprint: Fingerprint,
    #[serde(default)]
    address: Option<String>,
    #[serde(default)]
    revoked: bool,
    #[serde(default)]
    bundle_version: Option<u64>,
    #[serde(default)]
    last_seen_unix_ms: Option<u64>,
    #[serde(default)]
    last_error: Option<String>,
    /// Whether the last event was a failure.
    #[serde(default)]
    failing: bool,
}

/// What is known of a replica only while this primary runs.
#[derive(Debug, Default, Clone)]
struct Live {
    connections: u32,
    stats: Option<ReplicaStats>,
    stats_updated_unix_ms: Option<u64>,
}

#[derive(Debug, Clone)]
struct Replica {
    stored: StoredReplica,
    live: Live,
}

impl Replica {
    fn new(name: ApplianceName, fingerprint: Fingerprint) -> Self {
        Self {
            stored: StoredReplica {
                name,
                fingerprint,
                address: None,
                revoked: false,
                bundle_version: None,
                last_seen_unix_ms: None,
                last_error: None,
                failing: false,
            },
            live: Live::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const KITCHEN: &str = "0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
    const ATTIC: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
    const T0: u64 = 1_700_000_000_000;

    /// A data directory removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(test: &str) -> Self {
            let root =
                std::env::temp_dir().join(format!("moat-fleet-{test}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            Self(root)
        }

        fn data_dir(&self) -> DataDir {
            DataDir::open(&self.0).unwrap()
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn name(text: &str) -> ApplianceName {
        ApplianceName::parse(text).unwrap()
    }

    fn fp(hex: &str) -> Fingerprint {
        Fingerprint::from_hex(hex).unwrap()
    }

    /// The name admitted for the fingerprint `hex`.
    fn admitted(fleet: &Fleet, hex: &str) -> Option<String> {
        fleet.admit(&fp(hex)).map(|name| name.to_string())
    }

    fn fleet_with_kitchen(dir: &TempDir) -> Fleet {
        let mut fleet = Fleet::load(&dir.data_dir()).unwrap();
        fleet.pin(name("kitchen"), fp(KITCHEN)).unwrap();
        fleet
    }

    fn status(fleet: &Fleet, now_ms: u64) -> ReplicaStatus {
        fleet.view("kitchen", now_ms).unwrap().status
    }

    #[test]
    fn pin_admit_and_revoke() {
        let dir = TempDir::new("pin");
        let mut fleet = fleet_with_kitchen(&dir);
        assert_eq!(admitted(&fleet, KITCHEN).as_deref(), Some("kitchen"));
        assert_eq!(
            admitted(&fleet, &KITCHEN.to_ascii_uppercase()).as_deref(),
            Some("kitchen")
        );
        assert_eq!(admitted(&fleet, ATTIC), None, "not pinned");

        assert!(fleet.revoke("kitchen").unwrap());
        assert!(!fleet.revoke("garage").unwrap());
        assert_eq!(admitted(&fleet, KITCHEN), None, "revoked");
        assert!(fleet.view("kitchen", T0).unwrap().revoked);

        fleet.pin(name("kitchen"), fp(ATTIC)).unwrap();
        assert_eq!(
            admitted(&fleet, ATTIC).as_deref(),
            Some("kitchen"),
            "re-paired"
        );
        assert_eq!(
            admitted(&fleet, KITCHEN),
            None,
            "the old certificate is gone"
        );
        assert!(!fleet.view("kitchen", T0).unwrap().revoked);
    }

    #[test]
    fn a_certificate_belongs_to_one_name() {
        let dir = TempDir::new("rename");
        let mut fleet = fleet_with_kitchen(&dir);
        fleet.pin(name("pantry"), fp(KITCHEN)).unwrap();
        assert_eq!(admitted(&fleet, KITCHEN).as_deref(), Some("pantry"));
        let names: Vec<String> = fleet
            .list(T0)
            .into_iter()
            .map(|view| view.name.to_string())
            .collect();
        assert_eq!(names, ["pantry"]);
    }

    #[test]
    fn bad_names_and_fingerprints_cannot_be_pinned() {
        for fingerprint in ["", "abc", &KITCHEN[1..], &format!("{}g", &KITCHEN[1..])] {
            assert!(Fingerprint::from_hex(fingerprint).is_err(), "{fingerprint}");
        }
        for name in ["", "two words", "tab\there", &"x".repeat(65)] {
            assert!(ApplianceName::parse(name).is_err(), "{name}");
        }
    }

    #[test]
    fn a_pin_that_cannot_be_stored_changes_nothing() {
        let dir = TempDir::new("unstored");
        let mut fleet = fleet_with_kitchen(&dir);
        let data = dir.data_dir();
        std::fs::remove_file(data.path(files::REPLICAS)).unwrap();
        std::fs::create_dir(data.path(files::REPLICAS)).unwrap();
        let err = fleet.pin(name("attic"), fp(ATTIC)).unwrap_err();
        assert!(err.to_string().contains(files::REPLICAS), "{err}");
        assert_eq!(admitted(&fleet, ATTIC), None, "not pinned");
        let err = fleet.pin(name("pantry"), fp(KITCHEN)).unwrap_err();
        assert!(err.to_string().contains(files::REPLICAS), "{err}");
        assert_eq!(admitted(&fleet, KITCHEN).as_deref(), Some("kitchen"));
        assert_eq!(fleet.list(T0).len(), 1);
    }

    #[test]
    fn status_is_pending_until_first_seen_then_active() {
        let dir = TempDir::new("active");
        let mut fleet = fleet_with_kitchen(&dir);
        assert_eq!(status(&fleet, T0), ReplicaStatus::PendingSync, "never seen");
        fleet.set_published(3);
        fleet.connected("kitchen", "192.0.2.7:4433", T0);
        fleet.hello("kitchen", Some(3));
        let view = fleet.view("kitchen", T0).unwrap();
        assert_eq!(view.status, ReplicaStatus::Active);
        assert!(view.connected);
        assert_eq!(view.address.as_deref(), Some("192.0.2.7:4433"));

        fleet.set_published(4);
        assert_eq!(status(&fleet, T0), ReplicaStatus::PendingSync, "behind");
        fleet.applied("kitchen", 4).unwrap();
        assert_eq!(status(&fleet, T0), ReplicaStatus::Active);
        fleet.set_published(5);
        fleet.heartbeat("kitchen", ReplicaStats::default(), Some(6), T0);
        assert_eq!(status(&fleet, T0), ReplicaStatus::Active, "ahead counts");
    }

    #[test]
    fn a_replica_without_a_version_is_pending_once_something_is_published() {
        let dir = TempDir::new("pending");
        let mut fleet = fleet_with_kitchen(&dir);
        fleet.connected("kitchen", "192.0.2.7:4433", T0);
        fleet.hello("kitchen", None);
        assert_eq!(
            status(&fleet, T0),
            ReplicaStatus::Active,
            "nothing published"
        );
        fleet.set_published(1);
        assert_eq!(status(&fleet, T0), ReplicaStatus::PendingSync);
    }

    #[test]
    fn status_is_error_after_a_rejection_until_a_bundle_applies() {
        let dir = TempDir::new("rejected");
        let mut fleet = fleet_with_kitchen(&dir);
        fleet.set_published(2);
        fleet.connected("kitchen", "192.0.2.7:4433", T0);
        fleet.hello("kitchen", Some(1));
        fleet.rejected("kitchen", 2, "bad signature").unwrap();
        let view = fleet.view("kitchen", T0).unwrap();
        assert_eq!(view.status, ReplicaStatus::Error);
        assert_eq!(
            view.last_error.as_deref(),
            Some("rejected bundle 2: bad signature")
        );
        fleet.heartbeat("kitchen", ReplicaStats::default(), Some(1), T0 + 5_000);
        assert_eq!(status(&fleet, T0 + 5_000), ReplicaStatus::Error);

        fleet.set_published(3);
        fleet.applied("kitchen", 3).unwrap();
        let view = fleet.view("kitchen", T0 + 5_000).unwrap();
        assert_eq!(view.status, ReplicaStatus::Active);
        assert!(view.last_error.is_some(), "the last error stays visible");
    }

    #[test]
    fn status_is_error_after_a_failed_connection_or_silence() {
        let dir = TempDir::new("silence");
        let mut fleet = fleet_with_kitchen(&dir);
        fleet.connected("kitchen", "192.0.2.7:4433", T0);
        fleet.heartbeat("kitchen", ReplicaStats::default(), None, T0);
        assert_eq!(status(&fleet, T0 + SILENCE_LIMIT_MS), ReplicaStatus::Active);
        assert_eq!(
            status(&fleet, T0 + SILENCE_LIMIT_MS + 1),
            ReplicaStatus::Error,
            "silent while connected"
        );

        fleet.disconnected("kitchen", None, T0 + 1_000).unwrap();
        let view = fleet.view("kitchen", T0 + 1_000).unwrap();
        assert_eq!(
            view.status,
            ReplicaStatus::Active,
            "a clean close is no error"
        );
        assert!(!view.connected);

        fleet.connected("kitchen", "192.0.2.7:4433", T0 + 2_000);
        fleet
            .disconnected("kitchen", Some("idle timeout".into()), T0 + 3_000)
            .unwrap();
        let view = fleet.view("kitchen", T0 + 3_000).unwrap();
        assert_eq!(view.status, ReplicaStatus::Error);
        assert_eq!(view.last_error.as_deref(), Some("idle timeout"));

        fleet.connected("kitchen", "192.0.2.8:4433", T0 + 4_000);
        assert_eq!(status(&fleet, T0 + 4_000), ReplicaStatus::Active, "back");
    }

    #[test]
    fn an_old_connection_closing_does_not_fail_a_new_one() {
        let dir = TempDir::new("overlap");
        let mut fleet = fleet_with_kitchen(&dir);
        fleet.connected("kitchen", "192.0.2.7:4433", T0);
        fleet.connected("kitchen", "192.0.2.8:4433", T0 + 1_000);
        fleet
            .disconnected("kitchen", Some("lost".into()), T0 + 2_000)
            .unwrap();
        let view = fleet.view("kitchen", T0 + 2_000).unwrap();
        assert!(view.connected);
        assert_eq!(view.status, ReplicaStatus::Active);
    }

    #[test]
    fn heartbeats_carry_stats() {
        let dir = TempDir::new("stats");
        let mut fleet = fleet_with_kitchen(&dir);
        let stats = ReplicaStats {
            queries: 9,
            ..ReplicaStats::default()
        };
        fleet.heartbeat("kitchen", stats.clone(), Some(2), T0);
        let view = fleet.view("kitchen", T0).unwrap();
        assert_eq!(view.stats, Some(stats));
        assert_eq!(view.stats_updated_unix_ms, Some(T0));
        assert_eq!(view.last_seen_unix_ms, Some(T0));
        assert_eq!(view.bundle_version, Some(2));
    }

    #[test]
    fn a_recovery_from_a_rejected_bundle_survives_a_restart() {
        let dir = TempDir::new("recovered");
        let mut fleet = fleet_with_kitchen(&dir);
        fleet.set_published(2);
        fleet.rejected("kitchen", 2, "expired").unwrap();
        assert!(
            Fleet::load(&dir.data_dir()).unwrap().replicas["kitchen"]
                .stored
                .failing
        );
        fleet.applied("kitchen", 2).unwrap();
        let reloaded = Fleet::load(&dir.data_dir()).unwrap();
        assert!(!reloaded.replicas["kitchen"].stored.failing);
        assert_eq!(reloaded.replicas["kitchen"].stored.bundle_version, Some(2));
    }

    #[test]
    fn state_survives_a_restart_but_connections_and_stats_do_not() {
        let dir = TempDir::new("persist");
        let mut fleet = fleet_with_kitchen(&dir);
        fleet.pin(name("attic"), fp(ATTIC)).unwrap();
        fleet.revoke("attic").unwrap();
        fleet.connected("kitchen", "192.0.2.7:4433", T0);
        fleet.heartbeat("kitchen", ReplicaStats::default(), Some(1), T0);
        fleet.rejected("kitchen", 2, "expired").unwrap();
        fleet.applied("kitchen", 3).unwrap();
        fleet.disconnected("kitchen", None, T0 + 1_000).unwrap();
        let before = fleet.list(T0 + 1_000);

        let reloaded = Fleet::load(&dir.data_dir()).unwrap();
        let after = reloaded.list(T0 + 1_000);
        assert_eq!(after.len(), 2);
        assert_eq!(admitted(&reloaded, KITCHEN).as_deref(), Some("kitchen"));
        assert_eq!(admitted(&reloaded, ATTIC), None, "still revoked");
        let kitchen = &after[1];
        assert_eq!(kitchen.name, "kitchen");
        assert_eq!(kitchen.bundle_version, Some(3));
        assert_eq!(kitchen.last_seen_unix_ms, Some(T0 + 1_000));
        assert_eq!(kitchen.address.as_deref(), Some("192.0.2.7:4433"));
        assert_eq!(
            kitchen.last_error.as_deref(),
            Some("rejected bundle 2: expired")
        );
        assert_eq!(kitchen.stats, None, "stats are runtime only");
        assert_eq!(
            ReplicaView {
                stats: None,
                stats_updated_unix_ms: None,
                ..before[1].clone()
            },
            *kitchen
        );
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_it() {
        let dir = TempDir::new("corrupt");
        let data = dir.data_dir();
        data.write(files::REPLICAS, b"{\"replicas\": [", Access::Public)
            .unwrap();
        let err = Fleet::load(&data).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains(files::REPLICAS), "{err}");

        let bad_pin = serde_json::json!({"replicas": [{"name": "kitchen", "fingerprint": "abc"}]});
        data.write_json(files::REPLICAS, &bad_pin, Access::Public)
            .unwrap();
        let err = Fleet::load(&data).unwrap_err();
        assert!(err.to_string().contains("fingerprint"), "{err}");

        let twice = serde_json::json!({"replicas": [
            {"name": "kitchen", "fingerprint": KITCHEN},
            {"name": "kitchen", "fingerprint": ATTIC},
        ]});
        data.write_json(files::REPLICAS, &twice, Access::Public)
            .unwrap();
        let err = Fleet::load(&data).unwrap_err();
        assert!(err.to_string().contains("twice"), "{err}");
    }

    #[test]
    fn status_serializes_in_snake_case() {
        let statuses = [
            ReplicaStatus::Active,
            ReplicaStatus::PendingSync,
            ReplicaStatus::Error,
        ];
        assert_eq!(
            serde_json::to_string(&statuses).unwrap(),
            r#"["active","pending_sync","error"]"#
        );
    }
}

//! `/metrics`: the appliance's counters in the Prometheus text format
//! (version 0.0.4).

use std::fmt::Write;

use super::auth::LoginStats;
use crate::daemon::Status;
use crate::fleet::ReplicaStatus;
use crate::stats::StatsSnapshot;

/// The content type of the text format.
pub(super) const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Counters kept outside the status and stats.
pub(super) struct Extra {
    /// What login attempts met.
    pub(super) logins: LoginStats,
    /// Query log entries a disk bound kept off disk.
    pub(super) query_log_dropped: u64,
    /// Datagrams each UDP thread received: its address, its index, the count.
    pub(super) udp_threads: Vec<(String, usize, u64)>,
}

/// Renders every metric of `status`, `stats` and `extra`.
pub(super) fn render(status: &Status, stats: &StatsSnapshot, extra: &Extra) -> String {
    let mut out = Exposition::default();
    out.family("moat_info", "gauge", "Build and role of this appliance.");
    out.sample(
        "moat_info",
        &[
            ("version", &status.version),
            ("role", &status.role),
            ("name", &status.name),
        ],
        1,
    );
    out.single(
        "moat_uptime_seconds",
        "gauge",
        "Seconds since start.",
        status.uptime_secs,
    );
    out.labelled(
        "moat_queries_total",
        "counter",
        "Queries answered, by query type.",
        "type",
        &stats.by_type,
    );
    out.labelled(
        "moat_responses_total",
        "counter",
        "Queries answered, by response code.",
        "rcode",
        &stats.by_rcode,
    );
    let verdicts = [
        ("cached", stats.cache_hits),
        ("forwarded", stats.forwarded),
        ("stale", stats.stale_served),
        ("blocked", stats.blocked),
        ("rejected", stats.rejected),
        ("failed", stats.failed),
        ("local", stats.local),
        ("shed", stats.shed),
        ("limited", stats.limited),
    ]
    .map(|(verdict, count)| (verdict.to_owned(), count));
    out.labelled(
        "moat_answers_total",
        "counter",
        "Queries answered, by how they were answered.",
        "verdict",
        &verdicts,
    );
    out.single(
        "moat_cache_hits_total",
        "counter",
        "Answers from the cache.",
        stats.cache_hits,
    );
    out.single(
        "moat_cache_misses_total",
        "counter",
        "Questions the cache could not answer.",
        stats.cache_misses,
    );
    out.single(
        "moat_cache_stale_total",
        "counter",
        "Expired answers served because upstreams failed or were slow.",
        stats.stale_served,
    );
    out.single(
        "moat_cache_entries",
        "gauge",
        "Answers in the cache.",
        status.cache_entries as u64,
    );
    out.single(
        "moat_upstream_errors_total",
        "counter",
        "Failed upstream attempts.",
        stats.upstream_errors,
    );
    upstream_latency(&mut out, stats);
    out.single(
        "moat_policy_faults_total",
        "counter",
        "Policy plugin faults since the policy in force was loaded.",
        status.policy_faults,
    );
    plugins(&mut out, status);
    out.single(
        "moat_query_log_lost_total",
        "counter",
        "Query log entries dropped before they reached disk.",
        status.query_log_lost,
    );
    out.single(
        "moat_blocking_paused",
        "gauge",
        "1 while blocking is paused.",
        u64::from(!matches!(status.pause, crate::policy::PauseState::Blocking)),
    );
    if let Some(version) = status.bundle_version {
        out.single(
            "moat_bundle_version",
            "gauge",
            "Version of the policy bundle in force.",
            version,
        );
    }
    replicas(&mut out, status);
    query_log_disk(&mut out, status, extra.query_log_dropped);
    login_metrics(&mut out, &extra.logins);
    udp_threads(&mut out, &extra.udp_threads);
    out.text
}

fn udp_threads(out: &mut Exposition, threads: &[(String, usize, u64)]) {
    out.family(
        "moat_udp_thread_queries_total",
        "counter",
        "Datagrams each UDP listener thread received (tuning.server.threads per address).",
    );
    for (addr, index, queries) in threads {
        let index = index.to_string();
        out.sample(
            "moat_udp_thread_queries_total",
            &[("listen", addr), ("thread", &index)],
            *queries,
        );
    }
}

fn query_log_disk(out: &mut Exposition, status: &Status, dropped: u64) {
    out.single(
        "moat_query_log_disk_limited",
        "gauge",
        "1 while a disk bound (bytes or free space) stops the query log writing.",
        u64::from(status.query_log_disk_limit.is_some()),
    );
    out.single(
        "moat_query_log_disk_dropped_total",
        "counter",
        "Query log entries not written to disk because of a disk bound.",
        dropped,
    );
}

fn login_metrics(out: &mut Exposition, logins: &LoginStats) {
    out.single(
        "moat_login_hashes_total",
        "counter",
        "Admin passwords hashed (logins and the first setup).",
        logins.hashed,
    );
    out.labelled(
        "moat_login_refused_total",
        "counter",
        "Logins refused before hashing: throttled (lockout or global budget), busy (hash queue full).",
        "reason",
        &[
            ("throttled".to_owned(), logins.throttled),
            ("busy".to_owned(), logins.busy),
        ],
    );
    out.single(
        "moat_login_hashes_peak",
        "gauge",
        "Most password hashes that ran at once since start.",
        logins.peak_hashing,
    );
}

fn upstream_latency(out: &mut Exposition, stats: &StatsSnapshot) {
    const NAME: &str = "moat_upstream_latency_seconds";
    let histogram = &stats.upstream_latency;
    out.family(NAME, "histogram", "Upstream answer times.");
    let mut cumulative = 0;
    for (bound, count) in histogram.bounds_us.iter().zip(&histogram.counts) {
        cumulative += count;
        let le = format!("{}", *bound as f64 / 1e6);
        out.sample(&format!("{NAME}_bucket"), &[("le", &le)], cumulative);
    }
    let total: u64 = histogram.counts.iter().sum();
    out.sample(&format!("{NAME}_bucket"), &[("le", "+Inf")], total);
    let _ = writeln!(out.text, "{NAME}_sum {}", histogram.sum_us as f64 / 1e6);
    out.sample(&format!("{NAME}_count"), &[], total);
}

/// Per configured plugin (`[[policy.plugins]]`): calls, verdicts by kind,
/// time spent deciding, faults and whether it is switched off.
fn plugins(out: &mut Exposition, status: &Status) {
    if status.plugins.is_empty() {
        return;
    }
    let each = |value: fn(&crate::policy::PluginStatus) -> u64| -> Vec<(String, u64)> {
        status
            .plugins
            .iter()
            .map(|plugin| (plugin.name.clone(), value(plugin)))
            .collect()
    };
    out.labelled(
        "moat_plugin_faults_total",
        "counter",
        "Faults of each configured policy plugin since the policy in force was loaded.",
        "plugin",
        &each(|plugin| plugin.faults),
    );
    out.labelled(
        "moat_plugin_calls_total",
        "counter",
        "Questions each configured policy plugin was asked since the policy in force was loaded.",
        "plugin",
        &each(|plugin| plugin.calls),
    );
    const VERDICTS: &str = "moat_plugin_verdicts_total";
    out.family(
        VERDICTS,
        "counter",
        "Verdicts of each configured policy plugin, by kind, since the policy in force was loaded.",
    );
    for plugin in &status.plugins {
        for (kind, count) in plugin.verdicts.by_kind() {
            out.sample(
                VERDICTS,
                &[("plugin", plugin.name.as_str()), ("verdict", kind)],
                count,
            );
        }
    }
    const SECONDS: &str = "moat_plugin_decision_seconds_total";
    out.family(
        SECONDS,
        "counter",
        "Seconds each configured policy plugin spent deciding; divided by its calls, the time per decision.",
    );
    for plugin in &status.plugins {
        let seconds = plugin.decision_ns as f64 / 1e9;
        out.sample(SECONDS, &[("plugin", plugin.name.as_str())], seconds);
    }
    out.labelled(
        "moat_plugin_switched_off",
        "gauge",
        "1 while a configured policy plugin is switched off after repeated faults.",
        "plugin",
        &each(|plugin| u64::from(plugin.switched_off)),
    );
}

fn replicas(out: &mut Exposition, status: &Status) {
    if status.replicas.is_empty() {
        return;
    }
    out.family(
        "moat_replica_status",
        "gauge",
        "1 for each replica's current status (active, pending_sync, error).",
    );
    for replica in &status.replicas {
        for (state, name) in [
            (ReplicaStatus::Active, "active"),
            (ReplicaStatus::PendingSync, "pending_sync"),
            (ReplicaStatus::Error, "error"),
        ] {
            out.sample(
                "moat_replica_status",
                &[("replica", replica.name.as_str()), ("status", name)],
                u64::from(replica.status == state),
            );
        }
    }
    out.family(
        "moat_replica_last_seen_timestamp_seconds",
        "gauge",
        "When each replica was last heard from, Unix seconds.",
    );
    for replica in &status.replicas {
        if let Some(ms) = replica.last_seen_unix_ms {
            out.sample(
                "moat_replica_last_seen_timestamp_seconds",
                &[("replica", replica.name.as_str())],
                ms / 1000,
            );
        }
    }
    out.family(
        "moat_replica_bundle_version",
        "gauge",
        "The bundle version each replica last said it runs.",
    );
    for replica in &status.replicas {
        if let Some(version) = replica.bundle_version {
            out.sample(
                "moat_replica_bundle_version",
                &[("replica", replica.name.as_str())],
                version,
            );
        }
    }
}

/// A text exposition being written.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (index, (label, value)) in labels.iter().enumerate() {
                if index > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn single(&mut self, name: &str, kind: &str, help: &str, value: u64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    fn labelled(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        values: &[(String, u64)],
    ) {
        self.family(name, kind, help);
        for (key, value) in values {
            self.sample(name, &[(label, key)], *value);
        }
    }
}

/// Escapes a label value: backslash, double quote and line feed.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut out = Exposition::default();
        out.sample("m", &[("name", "a\"b\\c\nd")], 3);
        assert_eq!(out.text, "m{name=\"a\\\"b\\\\c\\nd\"} 3\n");
    }
}

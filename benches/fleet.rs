//! Fleet benchmark: a primary and replicas as real `moat run` processes on
//! loopback, syncing over QUIC.
//!
//! It measures:
//!
//! 1. **Propagation.** A new name is appended to the primary's blocklist
//!    file, then `moat reload` is run on the primary; the clock starts just
//!    before that command is launched. Every replica is polled over UDP DNS
//!    every 5 ms for that name until it answers `0.0.0.0` (bounded to 30 s;
//!    a replica that never does fails the bench). Before each change every
//!    replica is asked the name once and must not block it (which also puts
//!    the forwarded answer in its cache, so the polls are cache hits until
//!    the new bundle is in force: policy comes before the cache). Reported
//!    per fleet size (1, 10, 50 replicas): p50 and p99 of the per-replica
//!    latency (size × changes samples) and of the time until the last
//!    replica (one sample per change). The fleet grows between sizes: the
//!    same primary, more replicas paired.
//! 2. **Bytes per change.** Replica `r01` is paired through a UDP relay in
//!    this process (`moat join RELAY CODE`), so it keeps dialing the relay,
//!    which forwards every datagram to the primary's sync port and counts
//!    UDP payload bytes and datagrams each way: QUIC packets, i.e. the
//!    bundle plus QUIC/TLS framing, encryption overhead, ACKs and any
//!    heartbeat in the window (IPv4+UDP headers would add 28 bytes per
//!    datagram). The window runs from just before the reload until every
//!    replica blocks the name plus 300 ms. Also reported: the size of the
//!    primary's `bundle` file. For a 1,000,000-domain list (the generator of
//!    benches/policy.sh: `0.0.0.0 dI.trackerJ.example`, J = I mod 1000) on a
//!    primary of its own.
//! 3. **Primary memory per connected replica.** The primary's VmRSS (from
//!    /proc/PID/status, once it is quiet) with 0 replicas and with 50
//!    replicas connected and acknowledging the current bundle, as
//!    (RSS50 - RSS0) / 50. Before RSS0 the primary makes as many warm-up
//!    policy changes as it makes between RSS0 and RSS50, so both readings
//!    follow the same number of compiles. With the small policy, and with
//!    the 1M-domain policy.
//!
//! 4. **The fleet simulator** (`fleet/sim.rs`): one real primary process
//!    and 1, 10, 100, 1000 replica sessions in this process over real QUIC
//!    and mutual TLS, each paired with its own code and verifying every
//!    bundle, without a DNS daemon per replica: change → applied / acked
//!    latency, the primary's RSS and CPU per change and per replica.
//!
//! Run:   cargo bench --bench fleet                     (full, a few minutes)
//!        MOAT_BENCH_SMOKE=1 cargo bench --bench fleet  (1 and 3 replicas, 2 changes, no 1M list)
//! Optional: MOAT_BENCH_FLEET_SIM_ONLY=1 runs only the simulator (full sizes);
//! smoke runs the simulator with 1 and 10 sessions.
//! Optional: MOAT_BENCH_FLEET_1M=0 skips the 1M-domain part of a full run.
//! Output: a table on stdout and in bench-results/fleet-MODE-TIMESTAMP.txt.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use moat_system_tests::moat::{Scratch, binary, pin_binary_copy};
use moat_system_tests::{MoatProcess, TestUpstream, query_message};
use serde_json::Value;
use tokio::net::UdpSocket;
use tokio::task::JoinSet;

#[path = "fleet/sim.rs"]
mod sim;

/// Gap between two polls of one replica.
const POLL_EVERY: Duration = Duration::from_millis(5);
/// How long one poll waits for its answer.
const POLL_WAIT: Duration = Duration::from_millis(250);
/// How long every replica may take to answer a change.
const PROPAGATION_LIMIT: Duration = Duration::from_secs(30);
/// How long newly paired replicas may take to connect and acknowledge.
const SYNC_LIMIT: Duration = Duration::from_secs(180);
/// Traffic counted after the last replica answered (trailing ACKs).
const SETTLE: Duration = Duration::from_millis(300);
/// Domains in the large list.
const MILLION: usize = 1_000_000;
/// The blocked answer.
const BLOCKED: &str = "0.0.0.0";

type Res<T> = Result<T, String>;

struct Settings {
    mode: &'static str,
    sizes: Vec<usize>,
    changes: usize,
    million: bool,
    million_changes: usize,
    /// Fleet sizes of the simulator (`fleet/sim.rs`).
    sim_sizes: Vec<usize>,
    sim_changes: usize,
    /// Only the simulator (`MOAT_BENCH_FLEET_SIM_ONLY=1`).
    sim_only: bool,
}

impl Settings {
    fn from_env() -> Self {
        if std::env::var("MOAT_BENCH_SMOKE").is_ok_and(|v| v == "1") {
            Self {
                mode: "smoke",
                sizes: vec![1, 3],
                changes: 2,
                million: false,
                million_changes: 0,
                sim_sizes: vec![1, 10],
                sim_changes: 2,
                sim_only: false,
            }
        } else {
            Self {
                mode: "full",
                sizes: vec![1, 10, 50],
                changes: 10,
                million: std::env::var("MOAT_BENCH_FLEET_1M").map_or(true, |v| v != "0"),
                million_changes: 3,
                sim_sizes: vec![1, 10, 100, 1000],
                sim_changes: 5,
                sim_only: std::env::var("MOAT_BENCH_FLEET_SIM_ONLY").is_ok_and(|v| v == "1"),
            }
        }
    }
}

fn main() -> ExitCode {
    let build = moat::clock::now();
    // Built if needed, then copied: every process of the run is this build.
    let bin_dir = Scratch::new("fleet-bin");
    let bin = pin_binary_copy(&bin_dir.0);
    println!(
        "moat binary ready after {:.1} s (a copy: {})",
        build.elapsed().as_secs_f64(),
        bin.display()
    );
    let started = moat::clock::now();
    let settings = Settings::from_env();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(&settings, started)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("\nfleet benchmark FAILED: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: &Settings, started: Instant) -> Res<()> {
    println!(
        "fleet benchmark ({}): fleet sizes {:?}, {} changes per size{}",
        settings.mode,
        settings.sizes,
        settings.changes,
        if settings.million {
            ", then a 1,000,000-domain primary"
        } else {
            ""
        }
    );

    if settings.sim_only {
        let sim = sim::run(&settings.sim_sizes, settings.sim_changes).await?;
        let mut report = String::new();
        sim::report(&mut report, &sim);
        println!("{report}");
        return save(settings, &report);
    }
    let small = small_policy_part(settings).await?;
    let large = if settings.million {
        Some(million_part(settings).await?)
    } else {
        None
    };
    let sim = sim::run(&settings.sim_sizes, settings.sim_changes).await?;
    let elapsed = started.elapsed();
    let mut failures: Vec<&String> = small
        .sizes
        .iter()
        .flat_map(|s| s.changes.iter())
        .chain(large.iter().flat_map(|l| l.changes.iter()))
        .flat_map(|c| c.failures.iter())
        .collect();
    let mut report = report(settings, &small, large.as_ref(), elapsed);
    sim::report(&mut report, &sim);
    println!("\n{report}");
    save(settings, &report)?;
    if failures.is_empty() {
        Ok(())
    } else {
        failures.truncate(10);
        Err(format!(
            "some replica never answered a change (see FAILURE above); first ones: {failures:#?}"
        ))
    }
}

/// Writes `report` to bench-results/fleet-MODE-TIMESTAMP.txt.
fn save(settings: &Settings, report: &str) -> Res<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let file = dir.join(format!("fleet-{}-{}.txt", settings.mode, timestamp()));
    std::fs::write(&file, report).map_err(|e| format!("write {}: {e}", file.display()))?;
    println!("saved to {}", file.display());
    Ok(())
}

// ---------------------------------------------------------------- results

/// One policy change, seen from every replica.
struct Change {
    /// Per replica, from the clock start to its first blocked answer.
    per_replica: Vec<Duration>,
    /// How long `moat reload` took to return.
    reload: Duration,
    /// Relay counters over the change window.
    traffic: Traffic,
    /// Replicas that never answered by the change, with what they said.
    failures: Vec<String>,
}

impl Change {
    /// Until the last replica; a change some replica never answered by
    /// counts as [`PROPAGATION_LIMIT`] (censored).
    fn last(&self) -> Duration {
        if self.failures.is_empty() {
            self.per_replica.iter().copied().max().unwrap_or_default()
        } else {
            PROPAGATION_LIMIT
        }
    }

    /// Per replica, a replica that never answered counting as
    /// [`PROPAGATION_LIMIT`].
    fn samples(&self) -> impl Iterator<Item = Duration> + '_ {
        self.per_replica
            .iter()
            .copied()
            .chain(self.failures.iter().map(|_| PROPAGATION_LIMIT))
    }
}

/// Traffic through the relay: (bytes, datagrams) primary→replica and back.
#[derive(Clone, Copy, Default)]
struct Traffic {
    down_bytes: u64,
    down_datagrams: u64,
    up_bytes: u64,
    up_datagrams: u64,
}

impl Traffic {
    fn since(self, before: Self) -> Self {
        Self {
            down_bytes: self.down_bytes - before.down_bytes,
            down_datagrams: self.down_datagrams - before.down_datagrams,
            up_bytes: self.up_bytes - before.up_bytes,
            up_datagrams: self.up_datagrams - before.up_datagrams,
        }
    }
}

struct SizeResult {
    replicas: usize,
    changes: Vec<Change>,
}

/// Primary RSS (KiB) by number of connected replicas, and the median
/// replica RSS with the most replicas.
struct Memory {
    primary: Vec<(usize, u64)>,
    replica_median_kib: Option<u64>,
}

struct SmallResult {
    sizes: Vec<SizeResult>,
    bundle_bytes: u64,
    initial_sync: Traffic,
    idle: (Traffic, Duration),
    memory: Memory,
}

struct LargeResult {
    bundle_bytes: u64,
    list_bytes: u64,
    initial_sync: Traffic,
    changes: Vec<Change>,
    memory: Memory,
}

// ---------------------------------------------------------------- phases

async fn small_policy_part(settings: &Settings) -> Res<SmallResult> {
    let max = *settings.sizes.iter().max().unwrap();
    let mut fleet = Fleet::start("hq", None).await?;
    println!("primary up; {} warm-up changes", warmups(settings));
    for _ in 0..warmups(settings) {
        fleet.silent_change().await?;
    }
    let mut memory = Memory {
        primary: vec![(0, fleet.primary_rss().await?)],
        replica_median_kib: None,
    };
    let mut sizes = Vec::new();
    let mut initial_sync = Traffic::default();
    for &size in &settings.sizes {
        let t = moat::clock::now();
        let synced = fleet.grow(size).await?;
        if fleet.replicas.len() == size && initial_sync.down_bytes == 0 {
            initial_sync = synced;
        }
        println!(
            "{size} replica(s) paired and synced in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        if size == max {
            memory.primary.push((size, fleet.primary_rss().await?));
            memory.replica_median_kib = Some(fleet.replica_rss_median()?);
        } else if size == 1 || size == 10 {
            memory.primary.push((size, fleet.primary_rss().await?));
        }
        let mut changes = Vec::new();
        for k in 0..settings.changes {
            let change = fleet.change().await?;
            println!(
                "  {size} replica(s), change {}: last replica at {:.1} ms (reload returned at {:.1} ms), {} bytes to r01",
                k + 1,
                ms(change.last()),
                ms(change.reload),
                change.traffic.down_bytes
            );
            changes.push(change);
        }
        sizes.push(SizeResult {
            replicas: size,
            changes,
        });
    }
    let idle = fleet.idle_traffic(Duration::from_secs(2)).await;
    let bundle_bytes = fleet.bundle_bytes()?;
    fleet.stop();
    Ok(SmallResult {
        sizes,
        bundle_bytes,
        initial_sync,
        idle,
        memory,
    })
}

async fn million_part(settings: &Settings) -> Res<LargeResult> {
    let max = *settings.sizes.iter().max().unwrap();
    let files = Scratch::new("fleet-1m");
    let list = files.0.join("list.hosts");
    let t = moat::clock::now();
    write_million(&list)?;
    let list_bytes = std::fs::metadata(&list).map_err(|e| e.to_string())?.len();
    println!(
        "\n1M-domain list written ({list_bytes} bytes) in {:.1} s; starting its primary",
        t.elapsed().as_secs_f64()
    );
    let mut fleet = Fleet::start("hq-1m", Some((files, list))).await?;
    println!(
        "1M primary up after {:.1} s; {} warm-up changes",
        t.elapsed().as_secs_f64(),
        settings.million_changes
    );
    for _ in 0..settings.million_changes {
        fleet.silent_change().await?;
    }
    let bundle_bytes = fleet.bundle_bytes()?;
    let mut memory = Memory {
        primary: vec![(0, fleet.primary_rss().await?)],
        replica_median_kib: None,
    };
    let initial_sync = fleet.grow(1).await?;
    memory.primary.push((1, fleet.primary_rss().await?));
    let mut changes = Vec::new();
    for k in 0..settings.million_changes {
        let change = fleet.change().await?;
        println!(
            "  1M policy, change {}: replica at {:.0} ms (reload returned at {:.0} ms), {} bytes to r01",
            k + 1,
            ms(change.last()),
            ms(change.reload),
            change.traffic.down_bytes
        );
        changes.push(change);
    }
    let t = moat::clock::now();
    fleet.grow(max).await?;
    println!(
        "{max} replicas paired and synced on the 1M policy in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    memory.primary.push((max, fleet.primary_rss().await?));
    memory.replica_median_kib = Some(fleet.replica_rss_median()?);
    fleet.stop();
    Ok(LargeResult {
        bundle_bytes,
        list_bytes,
        initial_sync,
        changes,
        memory,
    })
}

/// Warm-up changes before RSS0: as many as the primary makes between RSS0
/// and the reading with the most replicas.
fn warmups(settings: &Settings) -> usize {
    settings.changes * (settings.sizes.len() - 1)
}

// ---------------------------------------------------------------- the fleet

/// A primary, its replicas, and the relay in front of it for `r01`.
struct Fleet {
    label: &'static str,
    primary: MoatProcess,
    upstream: TestUpstream,
    list: PathBuf,
    _files: Scratch,
    replicas: Vec<MoatProcess>,
    relay: Relay,
    next_name: usize,
}

impl Fleet {
    /// Starts a primary named `label` whose blocklist is `list` (or a small
    /// fresh one), forwarding to an upstream in this process.
    async fn start(label: &'static str, list: Option<(Scratch, PathBuf)>) -> Res<Self> {
        let upstream = TestUpstream::start().await;
        let (files, list) = match list {
            Some(given) => given,
            None => {
                let files = Scratch::new("fleet-list");
                let list = files.0.join("list.hosts");
                std::fs::write(&list, "0.0.0.0 ads.fleet-bench.test\n")
                    .map_err(|e| e.to_string())?;
                (files, list)
            }
        };
        let policy = format!(
            "[policy]\nupstreams = [\"udp://{}\"]\n\n[[policy.blocklists]]\nsource = \"{}\"\n",
            upstream.addr,
            list.display()
        );
        let primary = spawn_moat(format!("name = \"{label}\""), policy).await?;
        if !primary.cli(&["code"]).status.success() {
            return Err("moat code failed on the primary".into());
        }
        let relay = Relay::start(primary.sync_addr().await).map_err(|e| format!("relay: {e}"))?;
        let fleet = Self {
            label,
            primary,
            upstream,
            list,
            _files: files,
            replicas: Vec::new(),
            relay,
            next_name: 0,
        };
        let status = fleet.status(&fleet.primary).await?;
        if status["role"] != "primary" {
            return Err(format!("{label} is not a primary: {status}"));
        }
        Ok(fleet)
    }

    /// Starts and pairs replicas until there are `to`; waits until every
    /// one is connected and acknowledges the primary's bundle. Returns the
    /// relay's traffic over that time (the initial sync of `r01`, if it
    /// was among them).
    async fn grow(&mut self, to: usize) -> Res<Traffic> {
        let from = self.replicas.len();
        let before = self.relay.traffic();
        let mut starting = JoinSet::new();
        for index in from..to {
            let instance = format!("name = \"{}\"", replica_name(index));
            let policy = format!("[policy]\nupstreams = [\"udp://{}\"]\n", self.upstream.addr);
            starting.spawn(async move { (index, spawn_moat(instance, policy).await) });
        }
        let mut started = Vec::new();
        while let Some(joined) = starting.join_next().await {
            let (index, moat) = joined.map_err(|e| format!("starting a replica: {e}"))?;
            started.push((
                index,
                moat.map_err(|e| format!("replica {}: {e}", replica_name(index)))?,
            ));
        }
        started.sort_by_key(|(index, _)| *index);
        let direct = self.primary.sync_addr().await;
        for (index, replica) in started {
            let address = if index == 0 { self.relay.addr } else { direct };
            self.pair(&replica, address, &replica_name(index)).await?;
            self.replicas.push(replica);
        }
        self.wait_synced().await?;
        Ok(self.relay.traffic().since(before))
    }

    async fn pair(&self, replica: &MoatProcess, address: SocketAddr, name: &str) -> Res<()> {
        let output = self.primary.cli(&["code"]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            return Err(format!(
                "moat code failed: {}{}",
                String::from_utf8_lossy(&output.stderr),
                tail_logs(&[&self.primary])
            ));
        }
        let code = stdout
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let output = Command::new(binary())
            .args(["join", &address.to_string(), &code, "--config"])
            .arg(&replica.config_path)
            .output()
            .map_err(|e| format!("run moat join: {e}"))?;
        let joined = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() || !joined.contains("paired with") {
            return Err(format!(
                "pairing {name} with {} at {address} failed: exit {}, stdout {joined:?}, stderr {:?}{}",
                self.label,
                output.status,
                String::from_utf8_lossy(&output.stderr),
                tail_logs(&[&self.primary, replica])
            ));
        }
        Ok(())
    }

    /// Waits until every replica is listed by the primary as connected,
    /// active, and running the primary's bundle version.
    async fn wait_synced(&self) -> Res<()> {
        let deadline = moat::clock::now() + SYNC_LIMIT;
        loop {
            let version = self.status(&self.primary).await?["bundle_version"].clone();
            let listed = self.replicas(&self.primary).await?;
            let behind: Vec<String> = (0..self.replicas.len())
                .map(replica_name)
                .filter(|name| {
                    !listed.as_array().is_some_and(|all| {
                        all.iter().any(|r| {
                            r["name"] == name.as_str()
                                && r["connected"] == true
                                && r["status"] == "active"
                                && r["bundle_version"] == version
                        })
                    })
                })
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if moat::clock::now() > deadline {
                let first = behind[0].clone();
                let index = (0..self.replicas.len())
                    .find(|&i| replica_name(i) == first)
                    .unwrap();
                return Err(format!(
                    "{} replica(s) of {} not connected and on bundle {version} after {SYNC_LIMIT:?}: {behind:?}; \
                     the primary lists: {listed}{}",
                    behind.len(),
                    self.label,
                    tail_logs(&[&self.primary, &self.replicas[index]])
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn fresh_name(&mut self) -> String {
        self.next_name += 1;
        format!("c{}.{}.fleet-bench.test", self.next_name, self.label)
    }

    fn append(&self, name: &str) -> Res<()> {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.list)
            .map_err(|e| format!("open {}: {e}", self.list.display()))?;
        writeln!(file, "{BLOCKED} {name}").map_err(|e| e.to_string())
    }

    async fn reload(&self) -> Res<()> {
        let output = tokio::process::Command::new(binary())
            .arg("reload")
            .arg("--config")
            .arg(&self.primary.config_path)
            .output()
            .await
            .map_err(|e| format!("run moat reload: {e}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "moat reload on {} failed: {}{}",
                self.label,
                String::from_utf8_lossy(&output.stderr),
                tail_logs(&[&self.primary])
            ))
        }
    }

    /// A policy change nobody is watching (warm-up).
    async fn silent_change(&mut self) -> Res<()> {
        let name = self.fresh_name();
        self.append(&name)?;
        self.reload().await?;
        let answer = self.primary.dns.a(&name).await;
        if !is_blocked(&answer) {
            return Err(format!(
                "{} does not block {name} after a reload: {}",
                self.label,
                describe(&answer)
            ));
        }
        Ok(())
    }

    /// One measured change: a new name blocked on the primary, timed until
    /// every replica blocks it.
    async fn change(&mut self) -> Res<Change> {
        let name = self.fresh_name();
        // Not blocked yet anywhere; this also caches the forwarded answer.
        let mut sockets = Vec::new();
        for (index, replica) in self.replicas.iter().enumerate() {
            let socket = UdpSocket::bind("127.0.0.1:0")
                .await
                .map_err(|e| e.to_string())?;
            socket
                .connect(replica.dns.udp)
                .await
                .map_err(|e| e.to_string())?;
            match ask(&socket, &name, Duration::from_secs(3)).await {
                Some(answer) if !is_blocked(&answer) => {}
                Some(answer) => {
                    return Err(format!(
                        "{} blocks {name} before the change: {}",
                        replica_name(index),
                        describe(&answer)
                    ));
                }
                None => {
                    return Err(format!(
                        "{} does not answer {name} over UDP within 3 s{}",
                        replica_name(index),
                        tail_logs(&[replica])
                    ));
                }
            }
            sockets.push(socket);
        }
        self.append(&name)?;

        let traffic_before = self.relay.traffic();
        let t0 = moat::clock::now();
        let deadline = t0 + PROPAGATION_LIMIT;
        let mut polls = JoinSet::new();
        for (index, socket) in sockets.into_iter().enumerate() {
            let name = name.clone();
            polls.spawn(
                async move { (index, poll_until_blocked(socket, name, t0, deadline).await) },
            );
        }
        let reload = self.reload().await;
        let reload_time = t0.elapsed();
        let mut per_replica = vec![None; self.replicas.len()];
        while let Some(joined) = polls.join_next().await {
            let (index, result) = joined.map_err(|e| format!("poller: {e}"))?;
            per_replica[index] = Some(result);
        }
        reload?;
        let mut failed = Vec::new();
        let mut latencies = Vec::new();
        for (index, result) in per_replica.into_iter().enumerate() {
            match result.unwrap() {
                Ok(latency) => latencies.push(latency),
                Err(last) => failed.push((index, last)),
            }
        }
        if !failed.is_empty() {
            let mut message = format!(
                "{} of {} replica(s) never answered {name} as blocked within {PROPAGATION_LIMIT:?} \
                 of the change on {}:",
                failed.len(),
                self.replicas.len(),
                self.label
            );
            let listed = self.replicas(&self.primary).await.unwrap_or_default();
            for (index, last) in &failed {
                let name = replica_name(*index);
                let status = self.status(&self.replicas[*index]).await;
                let seen_by_primary = listed
                    .as_array()
                    .and_then(|all| all.iter().find(|r| r["name"] == name.as_str()))
                    .map_or("not listed".into(), |r| {
                        format!(
                            "{}, version {}, last error {}",
                            r["status"], r["bundle_version"], r["last_error"]
                        )
                    });
                let _ = write!(
                    message,
                    "\n  {name}: last answer {last}; the primary sees it as {seen_by_primary}; its own status: {}",
                    status.map_or_else(|e| e, |s| s.to_string())
                );
            }
            message.push_str(&tail_logs(&[&self.primary, &self.replicas[failed[0].0]]));
            // Loud, and fatal at the end; the run goes on so the figures of
            // every other change are still reported.
            eprintln!("\nFAILURE: {message}\n");
        }
        let failures = failed
            .iter()
            .map(|(index, last)| {
                format!(
                    "{} never blocked {name} (last answer {last})",
                    replica_name(*index)
                )
            })
            .collect();
        tokio::time::sleep(SETTLE).await;
        Ok(Change {
            per_replica: latencies,
            reload: reload_time,
            traffic: self.relay.traffic().since(traffic_before),
            failures,
        })
    }

    /// Relay traffic over `window` with no change.
    async fn idle_traffic(&self, window: Duration) -> (Traffic, Duration) {
        let before = self.relay.traffic();
        tokio::time::sleep(window).await;
        (self.relay.traffic().since(before), window)
    }

    fn bundle_bytes(&self) -> Res<u64> {
        let file = self.primary.dir.0.join("data/bundle");
        std::fs::metadata(&file)
            .map(|m| m.len())
            .map_err(|e| format!("{}: {e}", file.display()))
    }

    /// The primary's VmRSS in KiB once it is quiet: no CPU tick for 300 ms
    /// (at most 5 s of waiting), then the median of five readings 100 ms
    /// apart.
    async fn primary_rss(&self) -> Res<u64> {
        let pid = self.primary.pid();
        let deadline = moat::clock::now() + Duration::from_secs(5);
        let mut ticks = cpu_ticks(pid)?;
        while moat::clock::now() < deadline {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = cpu_ticks(pid)?;
            if now == ticks {
                break;
            }
            ticks = now;
        }
        let mut readings = Vec::new();
        for _ in 0..5 {
            readings.push(rss_kib(pid)?);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        readings.sort_unstable();
        Ok(readings[2])
    }

    fn replica_rss_median(&self) -> Res<u64> {
        let mut all = self
            .replicas
            .iter()
            .map(|r| rss_kib(r.pid()))
            .collect::<Res<Vec<_>>>()?;
        all.sort_unstable();
        Ok(all[(all.len() - 1) / 2])
    }

    async fn replicas(&self, moat: &MoatProcess) -> Res<Value> {
        let replicas = moat.control()?.replicas().await;
        let replicas = replicas.map_err(|e| format!("GET replicas: {e}"))?;
        serde_json::to_value(replicas).map_err(|e| e.to_string())
    }

    async fn status(&self, moat: &MoatProcess) -> Res<Value> {
        let status = moat
            .status()
            .await
            .map_err(|e| format!("GET status: {e}"))?;
        serde_json::to_value(status).map_err(|e| e.to_string())
    }

    /// Ends every process of this fleet (by PID, through the harness).
    fn stop(mut self) {
        for replica in &mut self.replicas {
            replica.terminate();
        }
        self.primary.terminate();
    }
}

fn replica_name(index: usize) -> String {
    format!("r{:02}", index + 1)
}

/// Starts a moat, turning a failed start (the harness panics) into an error.
async fn spawn_moat(instance: String, policy: String) -> Res<MoatProcess> {
    tokio::spawn(async move { MoatProcess::start(&instance, &policy).await })
        .await
        .map_err(|e| format!("moat did not start: {e}"))
}

// ---------------------------------------------------------------- DNS polling

/// Sends one A query for `name` on a connected socket; the answer with the
/// same ID, or `None` after `wait`.
async fn ask(socket: &UdpSocket, name: &str, wait: Duration) -> Option<Message> {
    let query = query_message(name, RecordType::A, None);
    let bytes = query.to_vec().ok()?;
    socket.send(&bytes).await.ok()?;
    let until = tokio::time::Instant::now() + wait;
    let mut buffer = [0u8; 4096];
    loop {
        let Ok(Ok(len)) = tokio::time::timeout_at(until, socket.recv(&mut buffer)).await else {
            return None;
        };
        if let Ok(answer) = Message::from_vec(&buffer[..len])
            && answer.metadata.id == query.metadata.id
        {
            return Some(answer);
        }
    }
}

/// Polls every [`POLL_EVERY`] until the answer blocks `name`; the time
/// from `t0` to that answer, or what was last seen at `deadline`.
async fn poll_until_blocked(
    socket: UdpSocket,
    name: String,
    t0: Instant,
    deadline: Instant,
) -> Result<Duration, String> {
    let mut last = String::from("none");
    let mut next = tokio::time::Instant::now();
    loop {
        if moat::clock::now() >= deadline {
            return Err(last);
        }
        match ask(&socket, &name, POLL_WAIT).await {
            Some(answer) if is_blocked(&answer) => return Ok(t0.elapsed()),
            Some(answer) => last = describe(&answer),
            None => last = format!("no answer within {POLL_WAIT:?}"),
        }
        next += POLL_EVERY;
        let now = tokio::time::Instant::now();
        if next < now {
            next = now;
        }
        tokio::time::sleep_until(next).await;
    }
}

fn is_blocked(answer: &Message) -> bool {
    answer.metadata.response_code == ResponseCode::NoError
        && !answer.answers.is_empty()
        && answer.answers.iter().all(|r| r.data.to_string() == BLOCKED)
}

fn describe(answer: &Message) -> String {
    let ips: Vec<String> = answer.answers.iter().map(|r| r.data.to_string()).collect();
    format!("{:?} {ips:?}", answer.metadata.response_code)
}

// ---------------------------------------------------------------- the relay

/// A UDP relay in front of the primary's sync port: a replica paired with
/// its address keeps dialing it; every datagram is forwarded and counted.
/// Plain threads, so the benchmark's own tasks never delay a datagram.
struct Relay {
    addr: SocketAddr,
    counters: Arc<[AtomicU64; 4]>,
}

impl Relay {
    fn start(primary: SocketAddr) -> std::io::Result<Self> {
        let front = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let back = std::net::UdpSocket::bind("127.0.0.1:0")?;
        back.connect(primary)?;
        let addr = front.local_addr()?;
        let counters: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
        let client: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
        {
            let (front, back) = (front.try_clone()?, back.try_clone()?);
            let (counters, client) = (Arc::clone(&counters), Arc::clone(&client));
            std::thread::spawn(move || {
                let mut buffer = vec![0u8; 65_536];
                while let Ok((len, from)) = front.recv_from(&mut buffer) {
                    *client.lock().unwrap() = Some(from);
                    counters[2].fetch_add(len as u64, Ordering::Relaxed);
                    counters[3].fetch_add(1, Ordering::Relaxed);
                    let _ = back.send(&buffer[..len]);
                }
            });
        }
        {
            let counters = Arc::clone(&counters);
            std::thread::spawn(move || {
                let mut buffer = vec![0u8; 65_536];
                loop {
                    // An error is ECONNREFUSED from an earlier send: keep going.
                    let Ok(len) = back.recv(&mut buffer) else {
                        continue;
                    };
                    counters[0].fetch_add(len as u64, Ordering::Relaxed);
                    counters[1].fetch_add(1, Ordering::Relaxed);
                    if let Some(to) = *client.lock().unwrap() {
                        let _ = front.send_to(&buffer[..len], to);
                    }
                }
            });
        }
        Ok(Self { addr, counters })
    }

    fn traffic(&self) -> Traffic {
        let c = |i: usize| self.counters[i].load(Ordering::Relaxed);
        Traffic {
            down_bytes: c(0),
            down_datagrams: c(1),
            up_bytes: c(2),
            up_datagrams: c(3),
        }
    }
}

// ---------------------------------------------------------------- /proc, files

fn rss_kib(pid: u32) -> Res<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Res<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let after = text.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok(field(11) + field(12))
}

/// The list of benches/policy.sh: `0.0.0.0 dI.trackerJ.example`, I from 1
/// to 1,000,000, J = I mod 1000, in hosts syntax.
fn write_million(path: &Path) -> Res<()> {
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for i in 1..=MILLION {
        writeln!(out, "0.0.0.0 d{i}.tracker{}.example", i % 1000).map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())
}

/// The last lines of each process's log, labelled.
fn tail_logs(moats: &[&MoatProcess]) -> String {
    moats
        .iter()
        .map(|moat| {
            let log = moat.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(20)..].join("\n");
            format!(
                "\n----- last lines of {} -----\n{tail}",
                moat.dir.0.join("moat.log").display()
            )
        })
        .collect()
}

fn timestamp() -> String {
    Command::new("date")
        .arg("+%Y%m%d-%H%M%S")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{}", std::process::id()))
}

// ---------------------------------------------------------------- report

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Nearest-rank percentile.
fn percentile(values: &[Duration], p: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn median_u64(values: impl Iterator<Item = u64>) -> u64 {
    let mut v: Vec<u64> = values.collect();
    v.sort_unstable();
    v.get((v.len().max(1) - 1) / 2).copied().unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn memory_rows(out: &mut String, policy: &str, memory: &Memory) {
    let rss0 = memory.primary[0].1;
    let readings: Vec<String> = memory
        .primary
        .iter()
        .map(|(n, kib)| format!("{n}: {:.1} MiB", mib(*kib)))
        .collect();
    let (n, last) = *memory.primary.last().unwrap();
    let per = (last as f64 - rss0 as f64) / n as f64;
    let _ = writeln!(
        out,
        "| {policy} | {:.1} | {:.1} ({n} replicas) | {per:.0} KiB | {} | {} |",
        mib(rss0),
        mib(last),
        readings.join(", "),
        memory
            .replica_median_kib
            .map_or("-".into(), |k| format!("{:.1} MiB", mib(k)))
    );
}

fn report(
    settings: &Settings,
    small: &SmallResult,
    large: Option<&LargeResult>,
    elapsed: Duration,
) -> String {
    let mut out = String::new();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let version = Command::new(binary())
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let _ = writeln!(
        out,
        "## Moat fleet: propagation, bytes per change, primary memory per replica ({})",
        settings.mode
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{version}; {cpu}, {} CPUs; load average at the end: {}. Every appliance is a `moat run` process on loopback;",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(
        out,
        "sync is QUIC with mutual TLS. Wall time of the benchmark (after the build): {:.0} s.",
        elapsed.as_secs_f64()
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "### 1. Propagation: policy change on the primary until every replica answers by it"
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "A new name appended to the primary's blocklist file, then `moat reload` (the clock starts just before"
    );
    let _ = writeln!(
        out,
        "the command is launched; it includes the CLI's start and the primary's compile and seal). Each replica"
    );
    let _ = writeln!(
        out,
        "polled over UDP every 5 ms until it answers the name 0.0.0.0. Per replica: every replica of every change;"
    );
    let _ = writeln!(
        out,
        "last replica: one sample per change (with {} changes, p99 is the maximum).",
        settings.changes
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "A replica that never answered by a change (within {} s) counts as {} ms and is listed under \"never\".",
        PROPAGATION_LIMIT.as_secs(),
        ms(PROPAGATION_LIMIT)
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| replicas | changes | per replica p50 (ms) | per replica p99 (ms) | last replica p50 (ms) | last replica p99 (ms) | `moat reload` returned, p50 (ms) | never (replica x change) | target: last replica p99 <= 1 s |"
    );
    let _ = writeln!(out, "|--:|--:|--:|--:|--:|--:|--:|--:|---|");
    for size in &small.sizes {
        let all: Vec<Duration> = size.changes.iter().flat_map(Change::samples).collect();
        let missed: usize = size.changes.iter().map(|c| c.failures.len()).sum();
        let last: Vec<Duration> = size.changes.iter().map(Change::last).collect();
        let reload: Vec<Duration> = size.changes.iter().map(|c| c.reload).collect();
        let p99_last = percentile(&last, 99.0);
        let _ = writeln!(
            out,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {missed} | {} |",
            size.replicas,
            size.changes.len(),
            ms(percentile(&all, 50.0)),
            ms(percentile(&all, 99.0)),
            ms(percentile(&last, 50.0)),
            ms(p99_last),
            ms(percentile(&reload, 50.0)),
            if size.replicas == 50 {
                if p99_last <= Duration::from_secs(1) {
                    "met"
                } else {
                    "missed"
                }
            } else {
                "-"
            }
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "### 2. Bytes sent per change");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Replica r01 is paired through a UDP relay in the benchmark process, which counts the UDP payload of every"
    );
    let _ = writeln!(
        out,
        "datagram each way (QUIC packets: the bundle plus QUIC/TLS framing and AEAD tags, ACKs, and any heartbeat"
    );
    let _ = writeln!(
        out,
        "in the window; IPv4+UDP headers, 28 bytes a datagram, not included). Window: from just before the reload"
    );
    let _ = writeln!(
        out,
        "until every replica blocks the name, plus {} ms. Medians over the changes.",
        SETTLE.as_millis()
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| policy | `bundle` file on the primary (bytes) | primary -> r01 per change (bytes) | datagrams | r01 -> primary (bytes) | datagrams | initial sync, primary -> r01 (bytes) | bytes per change / bundle |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|--:|--:|--:|--:|");
    let bytes_row =
        |out: &mut String, policy: &str, bundle: u64, changes: &[&Change], initial: Traffic| {
            let down = median_u64(changes.iter().map(|c| c.traffic.down_bytes));
            let _ = writeln!(
                out,
                "| {policy} | {bundle} | {down} | {} | {} | {} | {} | {:.3} |",
                median_u64(changes.iter().map(|c| c.traffic.down_datagrams)),
                median_u64(changes.iter().map(|c| c.traffic.up_bytes)),
                median_u64(changes.iter().map(|c| c.traffic.up_datagrams)),
                initial.down_bytes,
                down as f64 / bundle.max(1) as f64
            );
        };
    let small_changes: Vec<&Change> = small.sizes.iter().flat_map(|s| s.changes.iter()).collect();
    bytes_row(
        &mut out,
        "small (1 + a few names)",
        small.bundle_bytes,
        &small_changes,
        small.initial_sync,
    );
    if let Some(large) = large {
        let changes: Vec<&Change> = large.changes.iter().collect();
        bytes_row(
            &mut out,
            "1,000,000 domains",
            large.bundle_bytes,
            &changes,
            large.initial_sync,
        );
    }
    let (idle, window) = small.idle;
    let _ = writeln!(
        out,
        "\nIdle traffic (no change, {} replicas, {:.0} s): primary -> r01 {} bytes in {} datagrams, r01 -> primary {} bytes in {} datagrams.",
        small.sizes.last().map_or(0, |s| s.replicas),
        window.as_secs_f64(),
        idle.down_bytes,
        idle.down_datagrams,
        idle.up_bytes,
        idle.up_datagrams
    );
    if let Some(large) = large {
        let times: Vec<Duration> = large.changes.iter().map(Change::last).collect();
        let reload: Vec<Duration> = large.changes.iter().map(|c| c.reload).collect();
        let _ = writeln!(
            out,
            "1M policy: list file {} bytes; one replica blocked the new name after {:.0} ms (median of {}; `moat reload`, \
             which compiles the 1M list, returned after {:.0} ms).",
            large.list_bytes,
            ms(percentile(&times, 50.0)),
            times.len(),
            ms(percentile(&reload, 50.0))
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "### 3. Primary memory per connected replica");
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "Primary VmRSS once quiet, with 0 replicas and with every replica connected and acknowledging the current"
    );
    let _ = writeln!(
        out,
        "bundle; before the 0-replica reading the primary made as many warm-up changes as it made before the last."
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| policy | primary RSS, 0 replicas (MiB) | primary RSS, most replicas (MiB) | per replica: (RSSn - RSS0)/n | all readings (replicas: RSS) | replica RSS, median |"
    );
    let _ = writeln!(out, "|---|--:|--:|--:|---|--:|");
    memory_rows(&mut out, "small", &small.memory);
    if let Some(large) = large {
        memory_rows(&mut out, "1,000,000 domains", &large.memory);
    }
    let failures: Vec<&String> = small
        .sizes
        .iter()
        .flat_map(|s| s.changes.iter())
        .chain(large.iter().flat_map(|l| l.changes.iter()))
        .flat_map(|c| c.failures.iter())
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(
            out,
            "\n**FAILED: {} time(s) a replica never answered by a change:**\n",
            failures.len()
        );
        for failure in failures {
            let _ = writeln!(out, "- {failure}");
        }
    }
    out
}

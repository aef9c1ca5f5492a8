//! The fleet simulator: a real primary `moat` process and N replica
//! sessions in this process (`moat::sync::headless`), each with its own
//! identity, paired with its own one-time code over the real SPAKE2
//! exchange, dialing from its own loopback address (127.1.x.y) over real
//! QUIC and mutual TLS, and verifying every bundle it is sent with the
//! pinned key. No DNS daemon per replica.
//!
//! Per change: a new name is appended to the primary's blocklist and
//! `moat reload` runs; the clock starts just before. A replica's latency
//! ends when it has verified the new bundle and put its version in force
//! (it sends the acknowledgement right after). "Acked" ends when the
//! primary's replica list shows every replica on the new version (polled
//! every 50 ms). The primary's CPU (utime + stime) is read over that
//! window; its RSS once it is quiet, with no replica and at each size.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use moat::sync::headless::HeadlessReplica;

use super::{Fleet, Res, cpu_ticks, mib, ms, percentile};

/// Clock ticks per second of /proc/PID/stat (Linux's USER_HZ).
const TICKS_PER_SEC: f64 = 100.0;
/// How long every replica may take to apply and the primary to hear it.
const LIMIT: Duration = Duration::from_secs(60);
/// Gap between two reads of the primary's replica list.
const ACK_POLL: Duration = Duration::from_millis(50);

/// The simulator's figures for one fleet size.
pub(crate) struct SimSize {
    replicas: usize,
    pairing: Duration,
    primary_rss_kib: u64,
    applied: Vec<Duration>,
    acked: Vec<Duration>,
    cpu_ticks: Vec<u64>,
}

/// The simulator's whole run.
pub(crate) struct SimResult {
    rss0_kib: u64,
    sizes: Vec<SimSize>,
}

/// Runs the simulator for each of `sizes` (growing one fleet), with
/// `changes` measured changes per size.
pub(crate) async fn run(sizes: &[usize], changes: usize) -> Res<SimResult> {
    let mut fleet = Fleet::start("sim", None).await?;
    for _ in 0..2 {
        fleet.silent_change().await?;
    }
    let rss0_kib = fleet.primary_rss().await?;
    let mut replicas: Vec<HeadlessReplica> = Vec::new();
    let mut results = Vec::new();
    for &size in sizes {
        let t = moat::clock::now();
        while replicas.len() < size {
            replicas.push(pair(&fleet, replicas.len()).await?);
        }
        let version = primary_version(&fleet).await?;
        wait_applied(&replicas, version, moat::clock::now()).await?;
        wait_acked(&fleet, replicas.len(), version).await?;
        let pairing = t.elapsed();
        println!(
            "sim: {size} replica session(s) paired and on bundle {version} in {:.1} s",
            pairing.as_secs_f64()
        );
        let primary_rss_kib = fleet.primary_rss().await?;
        let mut result = SimSize {
            replicas: size,
            pairing,
            primary_rss_kib,
            applied: Vec::new(),
            acked: Vec::new(),
            cpu_ticks: Vec::new(),
        };
        for k in 0..changes {
            let before = primary_version(&fleet).await?;
            let name = fleet.fresh_name();
            fleet.append(&name)?;
            let pid = fleet.primary.pid();
            let ticks0 = cpu_ticks(pid)?;
            let t0 = moat::clock::now();
            fleet.reload().await?;
            let version = primary_version(&fleet).await?;
            if version <= before {
                return Err(format!(
                    "the reload made no new bundle ({before} -> {version})"
                ));
            }
            let applied = wait_applied(&replicas, version, t0).await?;
            wait_acked(&fleet, replicas.len(), version).await?;
            let acked = t0.elapsed();
            let ticks = cpu_ticks(pid)? - ticks0;
            let last = applied.iter().max().copied().unwrap_or_default();
            println!(
                "  sim {size}: change {}: last applied at {:.1} ms, all acked at {:.1} ms, primary CPU {:.0} ms",
                k + 1,
                ms(last),
                ms(acked),
                ticks as f64 * 1000.0 / TICKS_PER_SEC
            );
            result.applied.extend(applied);
            result.acked.push(acked);
            result.cpu_ticks.push(ticks);
        }
        results.push(result);
    }
    drop(replicas);
    fleet.stop();
    Ok(SimResult {
        rss0_kib,
        sizes: results,
    })
}

/// Pairs replica session `index` with a fresh code from the primary.
async fn pair(fleet: &Fleet, index: usize) -> Res<HeadlessReplica> {
    let output = fleet.primary.cli(&["code"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let code = stdout.split_whitespace().next().unwrap_or_default();
    if !output.status.success() || code.is_empty() {
        return Err(format!(
            "moat code failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let primary = fleet.primary.sync_addr().await;
    let name = format!("s{:04}", index + 1);
    HeadlessReplica::pair(primary, code, &name, local_address(index))
        .await
        .map_err(|err| format!("pairing {name}: {err}"))
}

/// Replica `index` dials from 127.1.(index / 250).(index % 250 + 1): the
/// primary caps unauthenticated connections per address, as it should.
fn local_address(index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        127,
        1,
        (index / 250) as u8,
        (index % 250 + 1) as u8,
    ))
}

async fn primary_version(fleet: &Fleet) -> Res<u64> {
    let status = fleet.status(&fleet.primary).await?;
    status["bundle_version"]
        .as_u64()
        .ok_or_else(|| format!("the primary has no bundle version: {status}"))
}

/// Waits (at most [`LIMIT`]) until every replica runs `version` or later;
/// each one's time from `t0` to when it applied it.
async fn wait_applied(
    replicas: &[HeadlessReplica],
    version: u64,
    t0: Instant,
) -> Res<Vec<Duration>> {
    let deadline = t0 + LIMIT;
    let mut latencies = Vec::with_capacity(replicas.len());
    for (index, replica) in replicas.iter().enumerate() {
        let mut applied = replica.applied();
        let waited = tokio::time::timeout_at(
            deadline.into(),
            applied.wait_for(|now| now.is_some_and(|(v, _)| v >= version)),
        )
        .await;
        match waited {
            Ok(Ok(now)) => {
                let (_, at) = now.expect("checked above");
                latencies.push(at.saturating_duration_since(t0));
            }
            _ => {
                return Err(format!(
                    "replica session {} is not on bundle {version} after {LIMIT:?}: {:?}",
                    index + 1,
                    replica.health()
                ));
            }
        }
    }
    Ok(latencies)
}

/// Waits (at most [`LIMIT`]) until the primary lists `count` connected
/// replicas on `version` or later.
async fn wait_acked(fleet: &Fleet, count: usize, version: u64) -> Res<()> {
    let deadline = moat::clock::now() + LIMIT;
    loop {
        let listed = fleet.replicas(&fleet.primary).await?;
        let on = listed.as_array().map_or(0, |all| {
            all.iter()
                .filter(|r| r["connected"] == true && r["bundle_version"].as_u64() >= Some(version))
                .count()
        });
        if on >= count {
            return Ok(());
        }
        if moat::clock::now() > deadline {
            return Err(format!(
                "the primary sees {on} of {count} replica sessions on bundle {version} after {LIMIT:?}"
            ));
        }
        tokio::time::sleep(ACK_POLL).await;
    }
}

/// The simulator's table.
pub(crate) fn report(out: &mut String, sim: &SimResult) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "\nFleet simulator (one real primary process; replica sessions in one process, real QUIC + mTLS, \
         each paired with its own code and verifying every bundle)\n\
         primary RSS with no replica: {:.1} MiB\n\n\
         {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>11} {:>10} {:>11} {:>12}\n\
         {:>9} {:>9} {:>9} {:>9} {:>9} {:>10} {:>11} {:>10} {:>11} {:>12}",
        mib(sim.rss0_kib),
        "replicas",
        "paired",
        "applied",
        "applied",
        "applied",
        "all acked",
        "primary",
        "RSS per",
        "CPU per",
        "CPU per chg",
        "",
        "in s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "p50 ms",
        "RSS MiB",
        "repl. KiB",
        "change ms",
        "per repl. ms",
    );
    for size in &sim.sizes {
        let cpu_ms =
            super::median_u64(size.cpu_ticks.iter().copied()) as f64 * 1000.0 / TICKS_PER_SEC;
        let per_replica_kib =
            size.primary_rss_kib.saturating_sub(sim.rss0_kib) as f64 / size.replicas as f64;
        let _ = writeln!(
            out,
            "{:>9} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>11.1} {:>10.1} {:>11.0} {:>12.2}",
            size.replicas,
            size.pairing.as_secs_f64(),
            ms(percentile(&size.applied, 50.0)),
            ms(percentile(&size.applied, 99.0)),
            ms(size.applied.iter().max().copied().unwrap_or_default()),
            ms(percentile(&size.acked, 50.0)),
            mib(size.primary_rss_kib),
            per_replica_kib,
            cpu_ms,
            cpu_ms / size.replicas as f64,
        );
    }
    let _ = writeln!(
        out,
        "(applied: per replica, from just before `moat reload` to the verified bundle in force; \
         all acked: until the primary lists every replica on it; \"paired\" includes the first sync; \
         CPU: the primary's, median per change; RSS per replica: (RSS_N - RSS_0) / N; ticks of 10 ms)"
    );
}

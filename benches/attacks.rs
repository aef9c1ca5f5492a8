//! Attack benchmark: the figures for the attack suite (`tests/system/
//! attacks.rs` holds the pass/fail part). Each attack runs against a fresh
//! `moat run` on loopback from 127.0.0.2 (the QUIC flood from 127.0.0.10–59)
//! while a legitimate client on 127.0.0.3 asks, one query every 5 ms with a
//! 1 s deadline and no retry, a cached name, a local name and a new
//! forwarded name in turn. Before each attack the same client runs alone for
//! the same time: the baseline.
//!
//! Reported per attack: the attack's size and achieved rate, the legitimate
//! client's success rate and p99 latency at baseline and during the attack,
//! moat's RSS (idle → peak) and open descriptors (idle → peak), and whether
//! the process was still the same one after.
//!
//! The query-log flood writes to a 72 MiB tmpfs `/data`: the benchmark
//! runs itself again in a mount namespace of its own for that (root or user
//! namespaces).
//!
//! Run:   cargo bench --bench attacks                     (full)
//!        MOAT_BENCH_SMOKE=1 cargo bench --bench attacks  (smaller attacks)
//! Output: a table on stdout and in bench-results/attacks-MODE-TIMESTAMP.txt.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use moat_system_tests::attack::{
    Ask, Isolation, Observed, QUERY_LOG_FLOOD_TUNING, SMALL_DATA_MIB, Served,
    add_record_and_reload, available_bytes, during, in_mount_namespace, legit_asks, long_name,
    never_reading_clients, quic_flood, random_label, rerun_isolated, small_data_dir, target,
    target_in, udp_flood,
};
use moat_system_tests::{MoatProcess, TestUpstream};

/// How long the legitimate client asks, at baseline and during an attack.
const WINDOW: Duration = Duration::from_secs(5);

struct Row {
    attack: String,
    rate: String,
    baseline: Served,
    observed: Observed,
    survived: bool,
}

/// The legitimate client alone on `moat`, and its questions for the attack.
async fn baseline(moat: &MoatProcess) -> (Served, Vec<Ask>) {
    let asks = legit_asks(moat).await;
    let (_, alone) = during(moat.pid(), moat.dns.udp, asks.clone(), WINDOW, async {}).await;
    (alone.served, asks)
}

async fn random_subdomains(count: usize, rate: u32) -> Row {
    let upstream = TestUpstream::start().await;
    upstream.silence("slow.example.test");
    let mut moat = target(&upstream, "").await;
    let (baseline, asks) = baseline(&moat).await;
    let attack = udp_flood(
        moat.dns.udp,
        count,
        rate,
        Duration::from_millis(500),
        |_| format!("{}.slow.example.test", random_label(12)),
    );
    let (flood, observed) = during(moat.pid(), moat.dns.udp, asks, WINDOW, attack).await;
    Row {
        attack: format!("random-subdomain flood, silent zone, {count} names"),
        rate: format!("{:.0} q/s, {} answered", flood.rate(), flood.answered),
        baseline,
        observed,
        survived: moat.is_running(),
    }
}

async fn over_its_rate(count: usize, rate: u32) -> Row {
    let upstream = TestUpstream::start().await;
    let tuning = "[tuning.server]\nrate_limit_queries = 5000\nrate_limit_exempt = []\n";
    let mut moat = target(&upstream, tuning).await;
    let (baseline, asks) = baseline(&moat).await;
    let attack = udp_flood(
        moat.dns.udp,
        count,
        rate,
        Duration::from_millis(500),
        |_| "cached.example.test".to_owned(),
    );
    let (flood, observed) = during(moat.pid(), moat.dns.udp, asks, WINDOW, attack).await;
    Row {
        attack: format!("one client over its rate (5,000/min), {count} queries"),
        rate: format!(
            "{:.0} q/s, {} answered, {} with TC",
            flood.rate(),
            flood.answered,
            flood.truncated
        ),
        baseline,
        observed,
        survived: moat.is_running(),
    }
}

async fn never_reading_tcp() -> Row {
    let upstream = TestUpstream::start().await;
    let mut moat = target(&upstream, "").await;
    let (baseline, asks) = baseline(&moat).await;
    let started = moat::clock::now();
    let (held, observed) = during(
        moat.pid(),
        moat.dns.udp,
        asks,
        WINDOW,
        never_reading_clients(moat.dns.tcp),
    )
    .await;
    let seconds = (moat::clock::now() - started).as_secs_f64();
    Row {
        attack: "1,000 TCP clients pipelining 2,000 queries each, never reading".into(),
        rate: format!(
            "{} connected, {:.0} conn/s",
            held.len(),
            held.len() as f64 / seconds
        ),
        baseline,
        observed,
        survived: moat.is_running(),
    }
}

async fn quic(attempts_per_address: usize) -> Row {
    let upstream = TestUpstream::start().await;
    let mut moat = target(&upstream, "").await;
    assert!(
        moat.cli(&["code"]).status.success(),
        "a pairing code opens the sync port"
    );
    let sync = moat.sync_addr().await;
    let (baseline, asks) = baseline(&moat).await;
    let started = moat::clock::now();
    let attack = async {
        let floods: Vec<_> = (10..60u8)
            .map(|host| {
                let source = IpAddr::from([127, 0, 0, host]);
                tokio::spawn(quic_flood(sync, source, attempts_per_address))
            })
            .collect();
        let mut completed = 0;
        for flood in floods {
            completed += flood.await.unwrap();
        }
        completed
    };
    let (completed, observed) = during(moat.pid(), moat.dns.udp, asks, WINDOW, attack).await;
    let attempts = attempts_per_address * 50;
    let seconds = (moat::clock::now() - started).as_secs_f64();
    Row {
        attack: format!("{attempts} QUIC pairing attempts + stream flood, 50 addresses"),
        rate: format!(
            "{:.0} attempts/s, {completed} handshakes",
            attempts as f64 / seconds
        ),
        baseline,
        observed,
        survived: moat.is_running(),
    }
}

/// A query-log flood of `count` cache hits, each logged as a long line,
/// on a small `/data`; then a policy change must still save its bundle.
async fn query_log_on_small_data(count: usize, rate: u32) -> Row {
    let upstream = TestUpstream::start().await;
    let mut moat = target_in(
        small_data_dir(SMALL_DATA_MIB),
        &upstream,
        QUERY_LOG_FLOOD_TUNING,
    )
    .await;
    let (baseline, asks) = baseline(&moat).await;
    let name = long_name();
    let attack = udp_flood(
        moat.dns.udp,
        count,
        rate,
        Duration::from_millis(500),
        |_| name.clone(),
    );
    let (flood, observed) = during(moat.pid(), moat.dns.udp, asks, WINDOW, attack).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = moat.status().await.expect("status");
    let free_mib = available_bytes(&moat.dir.0.join("data")) >> 20;
    let saved = add_record_and_reload(&moat, &upstream, QUERY_LOG_FLOOD_TUNING)
        .await
        .is_ok_and(|after| after > status.bundle_version);
    Row {
        attack: format!("query-log flood on a {SMALL_DATA_MIB} MiB /data, {count} logged queries"),
        rate: format!(
            "{:.0} q/s; log stopped: {}; {free_mib} MiB left free; bundle saved after: {}",
            flood.rate(),
            if status.query_log_disk_limit.is_some() {
                "yes"
            } else {
                "NO"
            },
            if saved { "yes" } else { "NO" }
        ),
        baseline,
        observed,
        survived: moat.is_running(),
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| attack | rate | legit success (baseline → during) | legit p99 ms (baseline → during) | RSS KiB (idle → peak) | fds (idle → peak) | same process |\n|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let ms = |served: &Served| served.p99().as_secs_f64() * 1000.0;
        let _ = writeln!(
            out,
            "| {} | {} | {:.2}% → {:.2}% ({}/{}) | {:.2} → {:.2} | {} → {} | {} → {} | {} |",
            row.attack,
            row.rate,
            row.baseline.success() * 100.0,
            row.observed.served.success() * 100.0,
            row.observed.served.correct,
            row.observed.served.asked,
            ms(&row.baseline),
            ms(&row.observed.served),
            row.observed.idle_rss_kib,
            row.observed.peak_rss_kib,
            row.observed.idle_fds,
            row.observed.peak_fds,
            if row.survived { "yes" } else { "NO" },
        );
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if !in_mount_namespace() {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        print!("{}", rerun_isolated(Isolation::Mounts, &args));
        return;
    }
    let smoke = std::env::var_os("MOAT_BENCH_SMOKE").is_some();
    let rows = if smoke {
        vec![
            random_subdomains(2_000, 2_000).await,
            over_its_rate(2_000, 2_000).await,
            never_reading_tcp().await,
            quic(10).await,
            query_log_on_small_data(40_000, 5_000).await,
        ]
    } else {
        vec![
            random_subdomains(10_000, 5_000).await,
            random_subdomains(10_000, 50_000).await,
            over_its_rate(20_000, 10_000).await,
            never_reading_tcp().await,
            quic(40).await,
            query_log_on_small_data(100_000, 20_000).await,
        ]
    };
    let report = table(&rows);
    println!("{report}");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("bench-results");
    let _ = std::fs::create_dir_all(&dir);
    let mode = if smoke { "smoke" } else { "full" };
    let path = dir.join(format!("attacks-{mode}-{}.txt", moat::clock::unix_now()));
    std::fs::write(&path, &report).expect("write the report");
    eprintln!("written to {}", path.display());
    assert!(
        rows.iter().all(|row| row.survived),
        "moat died during an attack"
    );
}

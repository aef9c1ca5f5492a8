//! The attack suite's pass/fail part: each attack runs against a real
//! `moat` on loopback from 127.0.0.2 while a legitimate client on 127.0.0.3
//! keeps asking a cached name, a local name and a new forwarded name. The
//! figures (rates, latencies at higher load) are in `benches/attacks.rs`.

use std::net::IpAddr;
use std::time::Duration;

use moat_system_tests::TestUpstream;
use moat_system_tests::attack::{
    ADDED_RECORD, Isolation, Observed, QUERY_LOG_FLOOD_TUNING, SMALL_DATA_MIB, Served,
    add_record_and_reload, available_bytes, during, legit_asks, legit_tcp, long_name,
    never_reading_clients, quic_flood, random_label, run_test_isolated, small_data_dir, target,
    target_in, udp_flood,
};

/// A legitimate query not answered correctly within this counts as failed.
const TIMEOUT: Duration = Duration::from_secs(1);

fn assert_served(served: &Served, attack: &str) {
    assert!(
        served.success() >= 0.999,
        "during {attack}, the legitimate client got {}",
        served.summary()
    );
}

/// What every attack must leave: the legitimate client served, memory
/// below twice idle, descriptors within `fds` more than idle.
fn assert_withstood(observed: &Observed, attack: &str, fds: usize) {
    eprintln!("{attack}: {}", observed.summary());
    assert_served(&observed.served, attack);
    assert!(
        observed.peak_rss_kib < observed.idle_rss_kib * 2,
        "{attack}: RSS above twice idle: {}",
        observed.summary()
    );
    assert!(
        observed.peak_fds < observed.idle_fds + fds,
        "{attack}: descriptors: {}",
        observed.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_subdomain_flood_at_a_silent_zone_is_shed_and_others_are_served() {
    let upstream = TestUpstream::start().await;
    upstream.silence("slow.example.test");
    let moat = target(&upstream, "").await;
    let asks = legit_asks(&moat).await;
    let attack = udp_flood(
        moat.dns.udp,
        10_000,
        5_000,
        Duration::from_millis(200),
        |_| format!("{}.slow.example.test", random_label(12)),
    );
    let length = Duration::from_secs(3);
    let (flood, observed) = during(moat.pid(), moat.dns.udp, asks, length, attack).await;
    eprintln!(
        "flood: {} at {:.0}/s, {} answered",
        flood.sent,
        flood.rate(),
        flood.answered
    );
    assert_withstood(&observed, "a random-subdomain flood", 128 + 64);
    let shed = moat.control().unwrap().stats().await.unwrap().snapshot.shed;
    assert!(
        shed > 5_000,
        "most of the flood is shed at once, not queued: {shed}"
    );
    assert!(
        flood.answered >= flood.sent * 9 / 10,
        "shed queries are answered (SERVFAIL), not dropped: {flood:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_clients_that_pipeline_and_never_read_do_not_end_tcp_dns() {
    let upstream = TestUpstream::start().await;
    let moat = target(
        &upstream,
        "[tuning.server]\ntcp_idle_timeout = \"2s\"\ntcp_max_connections = 256\n",
    )
    .await;
    let asks = legit_asks(&moat).await;
    let length = Duration::from_secs(4);
    let until = moat::clock::now() + length;
    let (tcp, cached) = (moat.dns.tcp, asks[0].clone());
    let attack = async {
        let (held, over_tcp) = tokio::join!(
            never_reading_clients(tcp),
            legit_tcp(tcp, &cached, Duration::from_millis(50), until, TIMEOUT)
        );
        (held.len(), over_tcp)
    };
    let ((held, over_tcp), observed) = during(moat.pid(), moat.dns.udp, asks, length, attack).await;
    eprintln!(
        "{held} never-reading TCP clients; legit over TCP {}",
        over_tcp.summary()
    );
    assert_withstood(&observed, "never-reading TCP clients", 256 + 64);
    assert_served(&over_tcp, "never-reading TCP clients (a TCP client)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_connection_and_stream_flood_on_the_sync_port_is_bounded() {
    let upstream = TestUpstream::start().await;
    let moat = target(&upstream, "").await;
    let code = moat.cli(&["code"]);
    assert!(code.status.success(), "a pairing code opens the sync port");
    let sync = moat.sync_addr().await;
    let asks = legit_asks(&moat).await;
    let attack = async {
        let floods: Vec<_> = (10..60u8)
            .map(|host| tokio::spawn(quic_flood(sync, IpAddr::from([127, 0, 0, host]), 40)))
            .collect();
        let mut completed = 0;
        for flood in floods {
            completed += flood.await.unwrap();
        }
        completed
    };
    let length = Duration::from_secs(3);
    let (completed, observed) = during(moat.pid(), moat.dns.udp, asks, length, attack).await;
    eprintln!("2,000 QUIC attempts from 50 addresses: {completed} handshakes");
    assert_withstood(&observed, "a QUIC flood", 64);
    assert!(
        completed < 1_500,
        "a per-address cap and Retry keep most attempts from costing a handshake: {completed}"
    );
    let after = quic_flood(sync, IpAddr::from([127, 0, 0, 1]), 10).await;
    assert!(
        after > 0,
        "after the flood the pairing channel admits again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_the_acl_are_refused_and_a_flooding_client_is_limited_alone() {
    let upstream = TestUpstream::start().await;
    let moat = target(
        &upstream,
        "[tuning.server]\nallow_clients = [\"127.0.0.1\", \"127.0.0.2\", \"127.0.0.3\"]\nrate_limit_queries = 1000\nrate_limit_exempt = []\n",
    )
    .await;
    let outsider = tokio::net::UdpSocket::bind("127.0.0.4:0").await.unwrap();
    let query = moat_system_tests::query_message("nas.lan", hickory_proto::rr::RecordType::A, None);
    outsider
        .send_to(&query.to_vec().unwrap(), moat.dns.udp)
        .await
        .unwrap();
    let mut buffer = vec![0; 512];
    let len = tokio::time::timeout(Duration::from_secs(2), outsider.recv(&mut buffer))
        .await
        .expect("an answer for the outsider")
        .unwrap();
    let refused = hickory_proto::op::Message::from_vec(&buffer[..len]).unwrap();
    assert_eq!(
        refused.metadata.response_code,
        hickory_proto::op::ResponseCode::Refused
    );
    assert!(refused.answers.is_empty(), "nothing about nas.lan leaks");

    let asks = legit_asks(&moat).await;
    let attack = udp_flood(
        moat.dns.udp,
        5_000,
        5_000,
        Duration::from_millis(200),
        |_| "cached.example.test".to_owned(),
    );
    let length = Duration::from_secs(2);
    let (flood, observed) = during(moat.pid(), moat.dns.udp, asks, length, attack).await;
    eprintln!("flood: {flood:?}");
    assert_withstood(&observed, "a flood from one client over its rate", 64);
    assert!(
        flood.truncated >= 3_000 && flood.answered - flood.truncated <= 1_000,
        "the flooding client gets its 1,000 answers, then only TC: {flood:?}"
    );
    let stats = moat.control().unwrap().stats().await.unwrap().snapshot;
    assert!(stats.limited >= 3_000, "{stats:?}");
}

#[test]
fn a_query_log_flood_on_a_small_data_stops_before_full_and_policy_still_saves() {
    let said = run_test_isolated(
        Isolation::Mounts,
        "attacks::query_log_flood_on_a_small_data_inner",
    );
    eprintln!("{said}");
}

/// The half of the test above that runs in its own mount namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_query_log_flood_on_a_small_data_stops_before_full_and_policy_still_saves inside a mount namespace of its own"]
async fn query_log_flood_on_a_small_data_inner() {
    let upstream = TestUpstream::start().await;
    let tuning = QUERY_LOG_FLOOD_TUNING;
    let moat = target_in(small_data_dir(SMALL_DATA_MIB), &upstream, tuning).await;
    let data = moat.dir.0.join("data");
    let asks = legit_asks(&moat).await;
    let name = long_name();
    let attack = udp_flood(
        moat.dns.udp,
        40_000,
        5_000,
        Duration::from_millis(500),
        |_| name.clone(),
    );
    let length = Duration::from_secs(8);
    let (flood, observed) = during(moat.pid(), moat.dns.udp, asks, length, attack).await;
    eprintln!("query-log flood: {} at {:.0}/s", flood.sent, flood.rate());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_withstood(&observed, "a query-log flood on a small /data", 64);

    let status = moat.status().await.unwrap();
    let limit = status.query_log_disk_limit.clone();
    let free = available_bytes(&data);
    assert!(
        limit.as_deref().is_some_and(|why| why.contains("free")),
        "status says the log stopped for free space: {limit:?}; {} MiB free",
        free >> 20
    );
    assert!(
        free >= 63 << 20,
        "the log stopped with its reserve still free: {} MiB",
        free >> 20
    );

    // A policy change still compiles, seals and saves its bundle.
    let before = status.bundle_version;
    let after = add_record_and_reload(&moat, &upstream, tuning)
        .await
        .expect("reload");
    assert!(after > before, "a new bundle: {before:?} → {after:?}");
    let (name, address) = ADDED_RECORD;
    assert_eq!(
        crate::ips(&moat.dns.a(name).await),
        [address],
        "the new policy answers{}",
        moat.log()
    );
    eprintln!(
        "small /data: stopped at {limit:?} with {} MiB free; bundle {before:?} → {after:?}",
        free >> 20
    );
}

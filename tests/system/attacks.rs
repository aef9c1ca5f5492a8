//! The attack suite's pass/fail part: each attack runs against a real
//! `moat` on loopback from 127.0.0.2 while a legitimate client on 127.0.0.3
//! keeps asking a cached name, a local name and a new forwarded name. The
//! figures (rates, latencies at higher load) are in `benches/attacks.rs`.

use std::net::IpAddr;
use std::time::Duration;

use moat::sync::identity::Identity;
use moat::sync::tls;
use moat_system_tests::attack::{
    ATTACKER, Ask, Peaks, Served, connect_from, legit_tcp, legit_udp, open_fds, random_label,
    rss_kib, udp_flood,
};
use moat_system_tests::{MoatProcess, TestUpstream};
use tokio::io::AsyncWriteExt;

use super::policy_for;

const ANSWER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
const NAS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 1, 20));
/// A legitimate query not answered correctly within this counts as failed.
const TIMEOUT: Duration = Duration::from_secs(1);
const PACE: Duration = Duration::from_millis(5);

/// A moat forwarding to `upstream`, with `nas.lan` a local record.
async fn target(upstream: &TestUpstream, tuning: &str) -> MoatProcess {
    let records =
        "[[policy.local_records]]\nname = \"nas.lan\"\ntype = \"A\"\nvalue = \"192.168.1.20\"\n";
    MoatProcess::start("", &policy_for(upstream, &format!("{records}{tuning}"))).await
}

/// The legitimate client's questions: one cached (asked once first), one
/// local, one new miss each time.
async fn legit_asks(moat: &MoatProcess) -> Vec<Ask> {
    moat.dns.a("cached.example.test").await;
    vec![
        Ask {
            name: "cached.example.test".into(),
            expect: ANSWER,
        },
        Ask {
            name: "nas.lan".into(),
            expect: NAS,
        },
        Ask {
            name: "q{n}.fresh.example.test".into(),
            expect: ANSWER,
        },
    ]
}

fn assert_served(during: &Served, attack: &str) {
    assert!(
        during.success() >= 0.999,
        "during {attack}, the legitimate client got {}",
        during.summary()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_random_subdomain_flood_at_a_silent_zone_is_shed_and_others_are_served() {
    let upstream = TestUpstream::start().await;
    upstream.silence("slow.example.test");
    let moat = target(&upstream, "").await;
    let asks = legit_asks(&moat).await;
    let idle = (rss_kib(moat.pid()), open_fds(moat.pid()));
    let peaks = Peaks::watch(moat.pid());
    let until = moat::clock::now() + Duration::from_secs(3);
    let server = moat.dns.udp;
    let legit = tokio::spawn(async move { legit_udp(server, &asks, PACE, until, TIMEOUT).await });
    let flood = udp_flood(
        moat.dns.udp,
        10_000,
        5_000,
        Duration::from_millis(200),
        |_| format!("{}.slow.example.test", random_label(12)),
    )
    .await;
    let served = legit.await.unwrap();
    let (rss, fds) = peaks.stop().await;
    eprintln!(
        "flood {} queries at {:.0}/s, {} answered; legit {}; RSS {} → {} KiB, fds {} → {}",
        flood.sent,
        flood.rate(),
        flood.answered,
        served.summary(),
        idle.0,
        rss,
        idle.1,
        fds
    );
    assert_served(&served, "the flood");
    let shed = moat.control().unwrap().stats().await.unwrap().snapshot.shed;
    assert!(
        shed > 5_000,
        "most of the flood is shed at once, not queued: {shed}"
    );
    assert!(
        flood.answered >= flood.sent * 9 / 10,
        "shed queries are answered (SERVFAIL), not dropped: {flood:?}"
    );
    assert!(
        fds < idle.1 + 128 + 64,
        "descriptors stay within the attacker's share of misses: {} → {fds}",
        idle.1
    );
    assert!(
        rss < idle.0 * 2,
        "RSS stays below twice idle: {} → {rss} KiB",
        idle.0
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
    let idle = (rss_kib(moat.pid()), open_fds(moat.pid()));
    let peaks = Peaks::watch(moat.pid());
    let query = moat_system_tests::query_message(
        "cached.example.test",
        hickory_proto::rr::RecordType::A,
        None,
    )
    .to_vec()
    .unwrap();
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    let pipeline = framed.repeat(200);
    let attackers: Vec<_> = (0..1_000)
        .map(|_| {
            let (server, pipeline) = (moat.dns.tcp, pipeline.clone());
            tokio::spawn(async move {
                let Ok(mut stream) = connect_from(ATTACKER, server).await else {
                    return None;
                };
                for _ in 0..10 {
                    let write = stream.write_all(&pipeline);
                    if !matches!(
                        tokio::time::timeout(Duration::from_secs(1), write).await,
                        Ok(Ok(()))
                    ) {
                        break;
                    }
                }
                Some(stream)
            })
        })
        .collect();
    let until = moat::clock::now() + Duration::from_secs(4);
    let (server, tcp) = (moat.dns.udp, moat.dns.tcp);
    let udp_asks = asks.clone();
    let legit =
        tokio::spawn(async move { legit_udp(server, &udp_asks, PACE, until, TIMEOUT).await });
    let legit_over_tcp = legit_tcp(tcp, &asks[0], Duration::from_millis(50), until, TIMEOUT).await;
    let served = legit.await.unwrap();
    let mut held = Vec::new();
    for attacker in attackers {
        held.extend(attacker.await.unwrap());
    }
    let (rss, fds) = peaks.stop().await;
    eprintln!(
        "{} never-reading TCP clients; legit UDP {}; legit TCP {}; RSS {} → {} KiB, fds {} → {}",
        held.len(),
        served.summary(),
        legit_over_tcp.summary(),
        idle.0,
        rss,
        idle.1,
        fds
    );
    assert_served(&served, "the TCP flood (UDP client)");
    assert_served(&legit_over_tcp, "the TCP flood (TCP client)");
    assert!(
        rss < idle.0 * 2,
        "RSS stays below twice idle: {} → {rss} KiB",
        idle.0
    );
    assert!(fds < idle.1 + 256 + 64, "descriptors: {} → {fds}", idle.1);
    drop(held);
}

/// Opens `attempts` pairing-channel connections to `sync` from `source`,
/// ten at a time; on each that is let in, floods streams with junk.
/// Returns how many handshakes completed.
async fn quic_flood(sync: std::net::SocketAddr, source: IpAddr, attempts: usize) -> usize {
    let identity = Identity::generate("attacker").unwrap();
    let config = tls::pairing_client_config(&identity).unwrap();
    let endpoint = quinn::Endpoint::client((source, 0).into()).unwrap();
    let mut completed = 0;
    for _ in 0..attempts / 10 {
        let batch = (0..10).map(|_| {
            let connecting = endpoint.connect_with(config.clone(), sync, tls::SERVER_NAME);
            tokio::spawn(async move {
                let connection = tokio::time::timeout(Duration::from_secs(2), connecting.ok()?)
                    .await
                    .ok()?
                    .ok()?;
                for _ in 0..20 {
                    let open =
                        tokio::time::timeout(Duration::from_millis(100), connection.open_bi());
                    let Ok(Ok((mut send, _recv))) = open.await else {
                        break;
                    };
                    let junk = vec![0xa5; 256 << 10];
                    let _ = tokio::time::timeout(Duration::from_millis(200), send.write_all(&junk))
                        .await;
                }
                Some(connection)
            })
        });
        let batch: Vec<_> = batch.collect();
        for connection in batch {
            completed += usize::from(connection.await.unwrap().is_some());
        }
    }
    endpoint.close(0u32.into(), b"done");
    completed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_connection_and_stream_flood_on_the_sync_port_is_bounded() {
    let upstream = TestUpstream::start().await;
    let moat = target(&upstream, "").await;
    let sync = moat.sync_addr().await;
    let asks = legit_asks(&moat).await;
    let idle = (rss_kib(moat.pid()), open_fds(moat.pid()));
    let peaks = Peaks::watch(moat.pid());
    let until = moat::clock::now() + Duration::from_secs(3);
    let server = moat.dns.udp;
    let legit = tokio::spawn(async move { legit_udp(server, &asks, PACE, until, TIMEOUT).await });
    let floods: Vec<_> = (10..60u8)
        .map(|host| tokio::spawn(quic_flood(sync, IpAddr::from([127, 0, 0, host]), 40)))
        .collect();
    let mut completed = 0;
    for flood in floods {
        completed += flood.await.unwrap();
    }
    let served = legit.await.unwrap();
    let (rss, fds) = peaks.stop().await;
    eprintln!(
        "2000 QUIC attempts from 50 addresses, {completed} handshakes; legit {}; RSS {} → {} KiB, fds {} → {}",
        served.summary(),
        idle.0,
        rss,
        idle.1,
        fds
    );
    assert_served(&served, "the QUIC flood");
    assert!(
        rss < idle.0 * 2,
        "RSS stays below twice idle: {} → {rss} KiB",
        idle.0
    );
    assert!(
        completed < 2_000,
        "not every attempt costs a handshake: {completed}"
    );
    let after = quic_flood(sync, IpAddr::from([127, 0, 0, 1]), 10).await;
    assert!(
        after > 0,
        "after the flood the pairing channel admits again"
    );
}

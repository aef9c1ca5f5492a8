//! The attack suite's pass/fail part: each attack runs against a real
//! `moat` on loopback from 127.0.0.2 while a legitimate client on 127.0.0.3
//! keeps asking a cached name, a local name and a new forwarded name. The
//! figures (rates, latencies at higher load) are in `benches/attacks.rs`.

use std::net::IpAddr;
use std::time::Duration;

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

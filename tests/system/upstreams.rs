//! Upstream transports (UDP, TCP, DoT, DoH with a test CA) and strategies.

use hickory_proto::op::ResponseCode;
use moat_system_tests::{MoatProcess, TestCa, TestUpstream};

use super::ips;

/// A local port with nothing listening on UDP or TCP.
fn dead_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

#[tokio::test]
async fn dot_and_doh_upstreams_with_a_test_ca() {
    let ca = TestCa::new();
    let mut upstream = TestUpstream::start().await;
    let dot = upstream.start_tls(&ca).await;
    let doh = upstream.start_https(&ca).await;
    for url in [
        format!("tls://127.0.0.1:{}", dot.port()),
        format!("https://127.0.0.1:{}/dns-query", doh.port()),
    ] {
        let dir = moat_system_tests::moat::Scratch::new("ca");
        let ca_file = ca.write_ca(&dir.0);
        let moat = MoatProcess::start(
            &format!("upstream_ca_file = \"{}\"", ca_file.display()),
            &format!("[policy]\nupstreams = [\"{url}\"]\n"),
        )
        .await;
        let name = format!("{}.secure.test", &url[..3]);
        let answer = moat.dns.a(&name).await;
        assert_eq!(
            ips(&answer),
            ["192.0.2.1"],
            "via {url}; log:\n{}",
            moat.log()
        );
        assert_eq!(upstream.count(&name), 1);
        if url.starts_with("tls") {
            let before = upstream.connections();
            for index in 0..3 {
                moat.dns.a(&format!("again{index}.secure.test")).await;
            }
            assert_eq!(
                upstream.connections(),
                before,
                "later queries reuse the TLS connection"
            );
        }
    }
}

#[tokio::test]
async fn untrusted_tls_upstream_fails() {
    let ca = TestCa::new();
    let mut upstream = TestUpstream::start().await;
    let dot = upstream.start_tls(&ca).await;
    let moat = MoatProcess::start(
        "",
        &format!(
            "[policy]\nupstreams = [\"tls://127.0.0.1:{}\"]\n",
            dot.port()
        ),
    )
    .await;
    let answer = moat.dns.a("untrusted.test").await;
    assert_eq!(answer.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(
        upstream.count("untrusted.test"),
        0,
        "no query over an unverified connection"
    );
}

#[tokio::test]
async fn tcp_upstream() {
    let upstream = TestUpstream::start().await;
    let moat = MoatProcess::start(
        "",
        &format!("[policy]\nupstreams = [\"tcp://{}\"]\n", upstream.addr),
    )
    .await;
    assert_eq!(ips(&moat.dns.a("over-tcp.test").await), ["192.0.2.1"]);
}

#[tokio::test]
async fn dead_upstreams_are_skipped_and_all_dead_is_servfail() {
    let upstream = TestUpstream::start().await;
    for strategy in ["parallel", "round_robin", "fastest"] {
        let moat = MoatProcess::start(
            "",
            &format!(
                "[policy]\nstrategy = \"{strategy}\"\nupstreams = [\"udp://127.0.0.1:{}\", \"udp://{}\"]\n",
                dead_port(),
                upstream.addr
            ),
        )
        .await;
        for index in 0..4 {
            let answer = moat.dns.a(&format!("{strategy}-{index}.test")).await;
            assert_eq!(ips(&answer), ["192.0.2.1"], "{strategy}");
        }
    }
    let moat = MoatProcess::start(
        "",
        &format!(
            "[policy]\nupstreams = [\"udp://127.0.0.1:{}\"]\n",
            dead_port()
        ),
    )
    .await;
    assert_eq!(
        moat.dns.a("nobody.test").await.metadata.response_code,
        ResponseCode::ServFail
    );
}

#[tokio::test]
async fn round_robin_spreads_and_fastest_prefers_the_fast_one() {
    let first = TestUpstream::start().await;
    let second = TestUpstream::start().await;
    let moat = MoatProcess::start(
        "",
        &format!(
            "[policy]\nstrategy = \"round_robin\"\nupstreams = [\"udp://{}\", \"udp://{}\"]\n",
            first.addr, second.addr
        ),
    )
    .await;
    for index in 0..10 {
        moat.dns.a(&format!("rr{index}.test")).await;
    }
    assert_eq!((first.total(), second.total()), (5, 5));

    let slow = TestUpstream::start().await;
    slow.set_delay(std::time::Duration::from_millis(150));
    let fast = TestUpstream::start().await;
    let moat = MoatProcess::start(
        "",
        &format!(
            "[policy]\nstrategy = \"fastest\"\nupstreams = [\"udp://{}\", \"udp://{}\"]\n",
            slow.addr, fast.addr
        ),
    )
    .await;
    for index in 0..10 {
        moat.dns.a(&format!("f{index}.test")).await;
    }
    assert!(
        fast.total() >= 8,
        "fast {} slow {}",
        fast.total(),
        slow.total()
    );
}

//! The UDP listeners on every core: `threads` sockets share each address,
//! and an answer leaves from the address its query was sent to. Runs in a
//! network namespace of its own, since it binds the unspecified address.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use moat_system_tests::RawApi as _;
use moat_system_tests::attack::{Isolation, run_test_isolated};
use moat_system_tests::client::query_message;

use moat_system_tests::{MoatProcess, TestUpstream};

use super::policy_for;

#[test]
fn two_udp_threads_take_queries_and_answers_leave_from_the_address_asked() {
    run_test_isolated(Isolation::Network, "listen::udp_threads_inner");
}

/// The half of the test above that runs in its own network namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by two_udp_threads_take_queries_and_answers_leave_from_the_address_asked inside a network namespace of its own"]
async fn udp_threads_inner() {
    let upstream = TestUpstream::start().await;
    let policy = policy_for(
        &upstream,
        "[[policy.local_records]]\nname = \"nas.lan\"\ntype = \"A\"\nvalue = \"192.168.1.10\"\n\n\
         [tuning.server]\nthreads = 2",
    );
    let moat = MoatProcess::start("listen = [\"0.0.0.0:0\", \"[::]:0\"]", &policy).await;
    let port = moat.dns.udp.port();
    assert!(moat.dns.udp.ip().is_unspecified(), "{:?}", moat.dns.udp);
    // Queries to 127.0.0.2 from 64 client ports: the kernel spreads them
    // over both sockets by their addresses, and each answer must come
    // from 127.0.0.2, not from the socket's 0.0.0.0 or 127.0.0.1.
    let secondary: SocketAddr = ([127, 0, 0, 2], port).into();
    for client in 0..64 {
        let from = ask_from_reply(
            secondary,
            if client % 2 == 0 {
                "nas.lan"
            } else {
                "example.com"
            },
        )
        .await;
        assert_eq!(from, secondary, "client {client}'s answer left from {from}");
    }
    let six: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, moat.dns6.udp.port()).into();
    assert_eq!(ask_from_reply(six, "nas.lan").await, six);
    let metrics = moat.control().unwrap().get("/metrics").await.text;
    let per_thread: Vec<u64> = metrics
        .lines()
        .filter(|line| line.starts_with("moat_udp_thread_queries_total{listen=\"0.0.0.0:"))
        .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(per_thread.len(), 2, "two threads on 0.0.0.0: {metrics}");
    assert!(
        per_thread.iter().all(|&count| count > 0),
        "both threads took queries: {per_thread:?}"
    );
    assert_eq!(per_thread.iter().sum::<u64>(), 64, "{per_thread:?}");
}

/// Asks `server` for `name` from a fresh client socket; where the answer
/// came from (after checking it answers the question).
async fn ask_from_reply(server: SocketAddr, name: &str) -> SocketAddr {
    let local: SocketAddr = if server.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    }
    .parse()
    .unwrap();
    let socket = tokio::net::UdpSocket::bind(local).await.unwrap();
    let query = query_message(name, RecordType::A, None);
    socket
        .send_to(&query.to_vec().unwrap(), server)
        .await
        .unwrap();
    let mut buffer = [0; 1500];
    let (len, from) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buffer))
        .await
        .unwrap_or_else(|_| panic!("no answer from {server} for {name}"))
        .unwrap();
    let answer = Message::from_vec(&buffer[..len]).unwrap();
    assert_eq!(answer.metadata.id, query.metadata.id);
    assert!(!answer.answers.is_empty(), "{name}: {answer:?}");
    from
}

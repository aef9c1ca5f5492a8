//! Found by name: the appliance's own name over DNS, its mDNS answers and
//! DNS-SD services as a peer on the link sees them, and `moat join CODE`
//! pairing with the one primary on the LAN without an address. Multicast
//! runs on the loopback of a network namespace of the test's own.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use moat_system_tests::MoatProcess;
use moat_system_tests::attack::{Isolation, run_test_isolated};
use tokio::net::UdpSocket;

use super::fleet::{self, PRIMARY, Primary, eventually, logs};
use super::ips;

#[test]
fn own_name_mdns_services_and_a_join_without_an_address() {
    run_test_isolated(Isolation::Network, "mdns::found_by_name_inner");
}

/// The half of the test above that runs in its own network namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by own_name_mdns_services_and_a_join_without_an_address inside a network namespace of its own"]
async fn found_by_name_inner() {
    let primary = Primary::start("mdns = true").await;
    let p = &primary.moat;
    let host = format!("{PRIMARY}.local.");

    for name in [PRIMARY.to_string(), host.clone()] {
        let answer = p.dns.a(&name).await;
        assert_eq!(ips(&answer), ["127.0.0.1"], "{name} over DNS{}", logs(&[p]));
    }

    let replies = ask(&host, RecordType::A).await;
    let addrs: Vec<String> = replies.iter().flat_map(ips).collect();
    assert_eq!(addrs, ["127.0.0.1"], "{host} over mDNS{}", logs(&[p]));

    let control = services(p, "_moat._tcp.local.").await;
    let control_addr = read_addr(p, "control.addr");
    assert_eq!(
        control,
        [(format!("{PRIMARY}._moat._tcp.local."), control_addr.port())]
    );
    assert!(
        services(p, "_moat-sync._udp.local.").await.is_empty(),
        "no sync service before a code binds the endpoint"
    );

    let code = fleet::issue_code(p);
    let sync_port = p.sync_addr().await.port();
    let sync_service = [(format!("{PRIMARY}._moat-sync._udp.local."), sync_port)];
    let limit = Duration::from_secs(5);
    eventually(
        "the sync service advertised once a code is out",
        limit,
        &[p],
        async || {
            let found = services(p, "_moat-sync._udp.local.").await;
            match found == sync_service {
                true => Ok(()),
                false => Err(format!("{found:?}")),
            }
        },
    )
    .await;

    let (r, _r_upstream) = fleet::replica().await;
    enable_mdns(&r);
    let r = r.restart().await;
    let output = r.cli(&["join", &code]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains(&format!("paired with primary {PRIMARY}")),
        "moat join CODE without an address: exit {}, stdout {stdout:?}, stderr {:?}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        logs(&[p, &r])
    );
    fleet::answers(&r, &[p], "x.ads.test", "0.0.0.0").await;
}

/// Turns mDNS on in `moat`'s configuration (for its next start).
fn enable_mdns(moat: &MoatProcess) {
    let text = std::fs::read_to_string(&moat.config_path).unwrap();
    let text = text.replacen("[instance]\n", "[instance]\nmdns = true\n", 1);
    std::fs::write(&moat.config_path, text).unwrap();
}

fn read_addr(moat: &MoatProcess, file: &str) -> SocketAddr {
    let text = std::fs::read_to_string(moat.dir.0.join("data").join(file)).unwrap();
    text.trim().parse().unwrap()
}

/// The instances of `service` (name, SRV port) the link answers with.
async fn services(moat: &MoatProcess, service: &str) -> Vec<(String, u16)> {
    let replies = ask(service, RecordType::PTR).await;
    let mut found = Vec::new();
    for reply in &replies {
        for record in &reply.answers {
            let RData::PTR(instance) = &record.data else {
                continue;
            };
            let port = reply
                .additionals
                .iter()
                .find_map(|extra| match &extra.data {
                    RData::SRV(srv) if extra.name == instance.0 => Some(srv.port),
                    _ => None,
                });
            let port =
                port.unwrap_or_else(|| panic!("no SRV along with {instance}{}", logs(&[moat])));
            found.push((instance.0.to_string(), port));
        }
    }
    found
}

/// Asks the mDNS group a one-shot ("legacy unicast", RFC 6762 §6.7)
/// question and gathers the replies heard within a second.
async fn ask(name: &str, rtype: RecordType) -> Vec<Message> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
    let mut query = Message::query();
    query.queries = vec![Query::query(Name::from_ascii(name).unwrap(), rtype)];
    let group = SocketAddr::from((Ipv4Addr::new(224, 0, 0, 251), 5353));
    socket
        .send_to(&query.to_vec().unwrap(), group)
        .await
        .unwrap();
    let mut replies = Vec::new();
    let mut packet = vec![0u8; 9000];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while let Ok(Ok((len, _))) =
        tokio::time::timeout_at(deadline, socket.recv_from(&mut packet)).await
    {
        let reply = Message::from_vec(&packet[..len]).unwrap();
        assert_eq!(
            reply.metadata.id, query.metadata.id,
            "a legacy reply carries the query's id"
        );
        replies.push(reply);
    }
    replies
}

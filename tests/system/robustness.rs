//! Hostile input: thousands of malformed and random packets must not crash
//! the server or stop it answering correctly.

use rand::{Rng, SeedableRng};
use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;

use hickory_proto::rr::RecordType;
use moat_system_tests::client::query_message;

use super::{ips, moat_with_upstream};

fn hostile_packets(count: usize) -> Vec<Vec<u8>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6d6f6174);
    let valid = query_message("fuzz.example.test", RecordType::A, Some((1232, true)))
        .to_vec()
        .unwrap();
    (0..count)
        .map(|index| match index % 6 {
            0 => (0..rng.random_range(0..600))
                .map(|_| rng.random())
                .collect(),
            1 => valid[..rng.random_range(0..valid.len())].to_vec(),
            2 => {
                let mut flipped = valid.clone();
                for _ in 0..rng.random_range(1..6) {
                    let at = rng.random_range(0..flipped.len());
                    flipped[at] ^= 1 << rng.random_range(0..8);
                }
                flipped
            }
            // A name made of a compression pointer to itself.
            3 => [&valid[..12], &[0xc0, 0x0c, 0, 1, 0, 1][..]].concat(),
            // Header claiming many records that are not there.
            4 => {
                let mut claims = valid.clone();
                claims[6..12].copy_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
                claims
            }
            _ => {
                let mut labels = valid[..12].to_vec();
                for _ in 0..200 {
                    labels.extend_from_slice(&[63; 64]);
                }
                labels
            }
        })
        .collect()
}

#[tokio::test]
async fn malformed_flood_does_not_crash_or_stop_answers() {
    let (mut moat, _upstream) = moat_with_upstream("").await;
    let packets = hostile_packets(6000);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (index, packet) in packets.iter().enumerate() {
        let _ = socket.send_to(packet, moat.dns.udp).await;
        if index % 200 == 0 {
            tokio::task::yield_now().await;
        }
    }
    for packet in packets.iter().take(300) {
        if let Ok(mut stream) = tokio::net::TcpStream::connect(moat.dns.tcp).await {
            let _ = stream.write_all(&(packet.len() as u16).to_be_bytes()).await;
            let _ = stream.write_all(packet).await;
        }
    }
    let answer = moat.dns.a("after-the-flood.test").await;
    assert_eq!(ips(&answer), ["192.0.2.1"]);
    let over_tcp = moat
        .dns
        .tcp_query(&query_message("after-tcp.test", RecordType::A, None))
        .await;
    assert_eq!(ips(&over_tcp), ["192.0.2.1"]);
    assert!(
        moat.is_running(),
        "moat still running; log:\n{}",
        moat.log()
    );
    assert!(!moat.log().contains("panicked"), "no panic in the log");
}

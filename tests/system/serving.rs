//! Answers, IDs and questions echoed, EDNS, TCP and truncation.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use moat_system_tests::client::query_message;
use moat_system_tests::upstream::DEFAULT_V4;

use super::{ips, moat_with_upstream};

#[tokio::test]
async fn answers_over_udp_and_tcp() {
    let (moat, upstream) = moat_with_upstream("").await;
    let answer = moat.dns.a("www.example.test").await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(ips(&answer), [DEFAULT_V4.to_string()]);
    assert_eq!(answer.queries[0].name.to_ascii(), "www.example.test.");
    assert!(answer.metadata.recursion_available);
    let over_tcp = moat
        .dns
        .tcp_query(&query_message("tcp.example.test", RecordType::AAAA, None))
        .await;
    assert_eq!(ips(&over_tcp), ["2001:db8::1"]);
    assert_eq!(upstream.count("www.example.test"), 1);
    let over_v6 = moat.dns6.a("www.example.test").await;
    assert_eq!(
        ips(&over_v6),
        [DEFAULT_V4.to_string()],
        "served on [::1] too"
    );
    let v6_tcp = moat
        .dns6
        .tcp_query(&query_message("v6.example.test", RecordType::A, None))
        .await;
    assert_eq!(ips(&v6_tcp), [DEFAULT_V4.to_string()]);
}

#[tokio::test]
async fn question_letter_case_is_echoed() {
    let (moat, _upstream) = moat_with_upstream("").await;
    let mut bytes = query_message("mixed.example.test", RecordType::A, None)
        .to_vec()
        .unwrap();
    bytes[13..18].copy_from_slice(b"MiXeD");
    let answer = moat.dns.udp_raw(&bytes).await.expect("answer");
    assert_eq!(&answer[..2], &bytes[..2], "ID echoed");
    assert_eq!(&answer[13..18], b"MiXeD", "question echoed as asked");
    // Twice: the second answer comes from the cache and must echo too.
    bytes[13..18].copy_from_slice(b"mIxEd");
    let cached = moat.dns.udp_raw(&bytes).await.expect("answer");
    assert_eq!(&cached[13..18], b"mIxEd");
}

#[tokio::test]
async fn edns_do_bit_and_badvers() {
    let (moat, _upstream) = moat_with_upstream("").await;
    let answer = moat
        .dns
        .udp_query(&query_message(
            "do.example.test",
            RecordType::A,
            Some((4096, true)),
        ))
        .await;
    let edns = answer.edns.expect("OPT in the answer to an EDNS query");
    assert!(edns.flags().dnssec_ok, "DO bit echoed");
    assert_eq!(edns.max_payload(), 1232);
    let no_edns = moat
        .dns
        .udp_query(&query_message("plain.example.test", RecordType::A, None))
        .await;
    assert!(no_edns.edns.is_none(), "no OPT for a query without one");

    let mut message = query_message("v1.example.test", RecordType::A, Some((1232, false)));
    message.edns.as_mut().unwrap().set_version(1);
    let answer = moat.dns.udp_query(&message).await;
    // Extended rcode 16; hickory names it BADSIG, which shares the number.
    assert_eq!(u16::from(answer.metadata.response_code), 16, "BADVERS");
}

#[tokio::test]
async fn big_answers_truncate_over_udp_and_come_whole_over_tcp() {
    let (moat, upstream) = moat_with_upstream("").await;
    let many: Vec<std::net::IpAddr> = (0..100u8).map(|index| [10, 0, 1, index].into()).collect();
    upstream.set(
        "big.example.test",
        moat_system_tests::Reply::Addresses {
            ttl: 300,
            ips: many,
        },
    );

    // Upstream truncates its UDP answer (1600 bytes > 1232): moat retries over TCP.
    let udp = moat
        .dns
        .udp_query(&query_message("big.example.test", RecordType::A, None))
        .await;
    assert!(udp.metadata.truncation, "512-byte client gets TC");
    assert!(udp.answers.is_empty());
    assert_eq!(udp.queries.len(), 1, "question kept in a truncated answer");
    let tcp = moat
        .dns
        .tcp_query(&query_message("big.example.test", RecordType::A, None))
        .await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 100);
    assert_eq!(
        upstream.count("big.example.test"),
        2,
        "one UDP try and one TCP retry, then cached"
    );
}

#[tokio::test]
async fn pipelined_tcp_queries_all_answered() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (moat, _upstream) = moat_with_upstream("").await;
    let mut stream = tokio::net::TcpStream::connect(moat.dns.tcp).await.unwrap();
    let mut ids = std::collections::HashSet::new();
    let mut framed = Vec::new();
    for index in 0..20 {
        let message = query_message(&format!("p{index}.example.test"), RecordType::A, None);
        ids.insert(message.metadata.id);
        let bytes = message.to_vec().unwrap();
        framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        framed.extend_from_slice(&bytes);
    }
    stream.write_all(&framed).await.unwrap();
    for _ in 0..20 {
        let len = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_u16())
            .await
            .unwrap()
            .unwrap();
        let mut answer = vec![0u8; len as usize];
        stream.read_exact(&mut answer).await.unwrap();
        let answer = hickory_proto::op::Message::from_vec(&answer).unwrap();
        assert!(
            ids.remove(&answer.metadata.id),
            "answer to a query we sent, once"
        );
    }
    assert!(ids.is_empty());
}

#[tokio::test]
async fn idle_tcp_connections_are_closed() {
    use tokio::io::AsyncReadExt;
    let (moat, _upstream) =
        moat_with_upstream("[tuning.server]\ntcp_idle_timeout = \"300ms\"\n").await;
    let mut stream = tokio::net::TcpStream::connect(moat.dns.tcp).await.unwrap();
    let mut byte = [0u8; 1];
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0))),
        "server closed the idle connection: {read:?}"
    );
}

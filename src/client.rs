//! A small DNS client for tests: UDP and TCP, with bounded waits.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// How long one attempt waits for an answer.
const WAIT: Duration = Duration::from_secs(3);

/// Builds a recursive query; `edns` is `(payload, dnssec_ok)`.
pub fn query_message(name: &str, qtype: RecordType, edns: Option<(u16, bool)>) -> Message {
    let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(
        Name::from_ascii(name).expect("valid test name"),
        qtype,
    ));
    if let Some((payload, dnssec_ok)) = edns {
        let mut options = Edns::new();
        options.set_max_payload(payload);
        options.set_dnssec_ok(dnssec_ok);
        message.set_edns(options);
    }
    message
}

/// Talks DNS to one server.
#[derive(Debug, Clone, Copy)]
pub struct DnsClient {
    /// UDP address.
    pub udp: SocketAddr,
    /// TCP address.
    pub tcp: SocketAddr,
}

impl DnsClient {
    /// Asks an A question over UDP.
    pub async fn a(&self, name: &str) -> Message {
        self.udp_query(&query_message(name, RecordType::A, Some((1232, false))))
            .await
    }

    /// Asks an A question over UDP from `source`, a loopback address.
    pub async fn a_from(&self, source: std::net::IpAddr, name: &str) -> Message {
        let message = query_message(name, RecordType::A, Some((1232, false)));
        self.udp_query_from(SocketAddr::new(source, 0), &message)
            .await
    }

    /// Sends a message over UDP and returns the parsed answer; panics with
    /// a clear message if none comes after three tries.
    pub async fn udp_query(&self, message: &Message) -> Message {
        self.udp_query_from(self.local(), message).await
    }

    async fn udp_query_from(&self, local: SocketAddr, message: &Message) -> Message {
        let bytes = message.to_vec().unwrap();
        let answer = self
            .udp_raw_from(local, &bytes)
            .await
            .unwrap_or_else(|| panic!("no UDP answer from {} after 3 tries", self.udp));
        let answer = Message::from_vec(&answer).expect("answer parses");
        assert_eq!(
            answer.metadata.id, message.metadata.id,
            "answer ID echoes the query ID"
        );
        answer
    }

    /// Sends raw bytes over UDP; the raw answer, or `None` after three tries.
    pub async fn udp_raw(&self, bytes: &[u8]) -> Option<Vec<u8>> {
        self.udp_raw_from(self.local(), bytes).await
    }

    /// The loopback address of the server's family, any port.
    fn local(&self) -> SocketAddr {
        let ip: std::net::IpAddr = if self.udp.is_ipv6() {
            std::net::Ipv6Addr::LOCALHOST.into()
        } else {
            std::net::Ipv4Addr::LOCALHOST.into()
        };
        SocketAddr::new(ip, 0)
    }

    async fn udp_raw_from(&self, local: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
        let socket = UdpSocket::bind(local).await.unwrap();
        socket.connect(self.udp).await.unwrap();
        let mut buffer = vec![0u8; 65_535];
        for _ in 0..3 {
            socket.send(bytes).await.ok()?;
            if let Ok(Ok(len)) = tokio::time::timeout(WAIT, socket.recv(&mut buffer)).await {
                buffer.truncate(len);
                return Some(buffer);
            }
        }
        None
    }

    /// Sends a message over TCP and returns the parsed answer.
    pub async fn tcp_query(&self, message: &Message) -> Message {
        let bytes = message.to_vec().unwrap();
        let answer = tokio::time::timeout(WAIT, async {
            tcp_exchange(&mut TcpStream::connect(self.tcp).await?, &bytes).await
        })
        .await
        .expect("TCP answer in time")
        .expect("TCP exchange");
        Message::from_vec(&answer).expect("answer parses")
    }
}

/// Sends one length-prefixed message on `stream` and reads one back.
pub async fn tcp_exchange(stream: &mut TcpStream, message: &[u8]) -> std::io::Result<Vec<u8>> {
    stream
        .write_all(&(message.len() as u16).to_be_bytes())
        .await?;
    stream.write_all(message).await?;
    let len = stream.read_u16().await?;
    let mut answer = vec![0u8; len as usize];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}

//! A small authoritative DNS server for tests: UDP, TCP, DNS over TLS and
//! DNS over HTTPS on loopback, answers from a table, counts every query.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

use crate::tls::TestCa;

/// What the upstream answers for one name.
#[derive(Debug, Clone)]
pub enum Reply {
    /// These addresses with this TTL (A from v4, AAAA from v6).
    Addresses {
        /// TTL of every record.
        ttl: u32,
        /// The addresses.
        ips: Vec<IpAddr>,
    },
    /// NXDOMAIN with an SOA in authority.
    NxDomain {
        /// TTL of the SOA record.
        soa_ttl: u32,
        /// The SOA MINIMUM field.
        minimum: u32,
    },
    /// SERVFAIL.
    ServFail,
}

#[derive(Debug, Default)]
struct State {
    replies: HashMap<String, Reply>,
    unchecked_replies: HashMap<String, Reply>,
    silent_zones: Vec<String>,
    counts: HashMap<String, usize>,
    connections: usize,
    delay: Duration,
    authentic: bool,
}

/// A running test upstream.
#[derive(Debug)]
pub struct TestUpstream {
    /// UDP and TCP address (same port).
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tasks: Vec<JoinHandle<()>>,
}

/// The addresses every unknown name resolves to.
pub const DEFAULT_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// TTL of unknown names.
pub const DEFAULT_TTL: u32 = 300;

impl TestUpstream {
    /// Starts plain UDP + TCP on 127.0.0.1, a free port.
    pub async fn start() -> Self {
        // A free UDP port may be taken on TCP: try again with another.
        let mut bound = None;
        for _ in 0..100 {
            let udp = UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind upstream udp");
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = TcpListener::bind(addr).await {
                bound = Some((udp, addr, tcp));
                break;
            }
        }
        let (udp, addr, tcp) = bound.expect("a loopback port free on both UDP and TCP");
        let state = Arc::new(Mutex::new(State::default()));
        let tasks = vec![
            tokio::spawn(serve_udp(udp, state.clone())),
            tokio::spawn(serve_tcp(tcp, state.clone(), None)),
        ];
        Self { addr, state, tasks }
    }

    /// Starts a DNS-over-TLS listener with a certificate from `ca`; returns its address.
    pub async fn start_tls(&mut self, ca: &TestCa) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(ca.server_config(vec![])));
        self.tasks.push(tokio::spawn(serve_tcp(
            listener,
            self.state.clone(),
            Some(acceptor),
        )));
        addr
    }

    /// Starts a DNS-over-HTTPS listener (POST /dns-query, HTTP/2 and 1.1).
    pub async fn start_https(&mut self, ca: &TestCa) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(
            ca.server_config(vec![b"h2".to_vec(), b"http/1.1".to_vec()]),
        ));
        self.tasks.push(tokio::spawn(serve_https(
            listener,
            self.state.clone(),
            acceptor,
        )));
        addr
    }

    /// Sets the reply for `name` (no trailing dot).
    pub fn set(&self, name: &str, reply: Reply) {
        self.state
            .lock()
            .replies
            .insert(name.to_ascii_lowercase(), reply);
    }

    /// Sets the reply for `name` to queries with the CD bit set (others
    /// get what `set` gave, or the default), as a validating resolver
    /// answers a bogus name only when asked not to check.
    pub fn set_checking_disabled(&self, name: &str, reply: Reply) {
        self.state
            .lock()
            .unchecked_replies
            .insert(name.to_ascii_lowercase(), reply);
    }

    /// Never answers names in `zone` (the zone's apex and below), as a
    /// zone whose authoritative servers are down looks to a resolver.
    pub fn silence(&self, zone: &str) {
        self.state
            .lock()
            .silent_zones
            .push(zone.to_ascii_lowercase());
    }

    /// Sets AD in every answer, as a validating resolver does for signed
    /// data.
    pub fn set_authentic(&self, authentic: bool) {
        self.state.lock().authentic = authentic;
    }

    /// Delays every answer.
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().delay = delay;
    }

    /// Queries received for `name` so far, over any transport.
    pub fn count(&self, name: &str) -> usize {
        self.state
            .lock()
            .counts
            .get(&name.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// TCP and TLS connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.lock().connections
    }

    /// Queries received in total.
    pub fn total(&self) -> usize {
        self.state.lock().counts.values().sum()
    }

    /// Stops answering on every transport and closes the sockets.
    pub async fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Builds the answer to `request`, or `None` for garbage. Answers over UDP
/// that exceed the query's EDNS size (or 512) are truncated with TC.
fn answer(request: &[u8], state: &Mutex<State>, udp: bool) -> Option<(Vec<u8>, Duration)> {
    let request = Message::from_vec(request).ok()?;
    let query = request.queries.first()?.clone();
    let key = query
        .name
        .to_ascii()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let (reply, delay, authentic) = {
        let mut state = state.lock();
        *state.counts.entry(key.clone()).or_default() += 1;
        let silent = state.silent_zones.iter().any(|zone| {
            key == *zone
                || key
                    .strip_suffix(zone.as_str())
                    .is_some_and(|s| s.ends_with('.'))
        });
        if silent {
            return None;
        }
        let unchecked = request
            .metadata
            .checking_disabled
            .then(|| state.unchecked_replies.get(&key))
            .flatten();
        let reply = unchecked.or_else(|| state.replies.get(&key)).cloned();
        (reply, state.delay, state.authentic)
    };
    let reply = reply.unwrap_or(Reply::Addresses {
        ttl: DEFAULT_TTL,
        ips: vec![
            DEFAULT_V4.into(),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
        ],
    });
    let mut response = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    response.metadata.authoritative = true;
    response.metadata.authentic_data = authentic;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.add_query(query.clone());
    if let Some(edns) = &request.edns {
        let mut ours = hickory_proto::op::Edns::new();
        ours.set_max_payload(1232);
        ours.set_dnssec_ok(edns.flags().dnssec_ok);
        response.set_edns(ours);
    }
    match reply {
        Reply::Addresses { ttl, ips } => {
            for ip in ips {
                let data = match (query.query_type, ip) {
                    (RecordType::A, IpAddr::V4(v4)) => RData::A(A(v4)),
                    (RecordType::AAAA, IpAddr::V6(v6)) => RData::AAAA(AAAA(v6)),
                    _ => continue,
                };
                response.add_answer(Record::from_rdata(query.name.clone(), ttl, data));
            }
        }
        Reply::NxDomain { soa_ttl, minimum } => {
            response.metadata.response_code = ResponseCode::NXDomain;
            let zone = Name::from_ascii("test.").unwrap();
            let soa = SOA::new(
                zone.clone(),
                Name::from_ascii("admin.test.").unwrap(),
                1,
                3600,
                600,
                86_400,
                minimum,
            );
            response.add_authority(Record::from_rdata(zone, soa_ttl, RData::SOA(soa)));
        }
        Reply::ServFail => response.metadata.response_code = ResponseCode::ServFail,
    }
    let mut bytes = response.to_vec().ok()?;
    let limit = request
        .edns
        .as_ref()
        .map_or(512, |edns| edns.max_payload().max(512)) as usize;
    if udp && bytes.len() > limit {
        response.answers.clear();
        response.authorities.clear();
        response.metadata.truncation = true;
        bytes = response.to_vec().ok()?;
    }
    Some((bytes, delay))
}

async fn serve_udp(socket: UdpSocket, state: Arc<Mutex<State>>) {
    let socket = Arc::new(socket);
    let mut buffer = vec![0u8; 65_535];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let Some((bytes, delay)) = answer(&buffer[..len], &state, true) else {
            continue;
        };
        let socket = socket.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = socket.send_to(&bytes, peer).await;
        });
    }
}

async fn serve_tcp(
    listener: TcpListener,
    state: Arc<Mutex<State>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        state.lock().connections += 1;
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        framed_session(stream, state).await;
                    }
                }
                None => framed_session(stream, state).await,
            }
        });
    }
}

async fn framed_session<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    state: Arc<Mutex<State>>,
) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut request = vec![0u8; len as usize];
        if stream.read_exact(&mut request).await.is_err() {
            return;
        }
        let Some((bytes, delay)) = answer(&request, &state, false) else {
            return;
        };
        tokio::time::sleep(delay).await;
        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&bytes);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
    }
}

async fn serve_https(
    listener: TcpListener,
    state: Arc<Mutex<State>>,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let state = state.clone();
                async move {
                    let ok = request.method() == hyper::Method::POST
                        && request.uri().path() == "/dns-query";
                    let body = request
                        .into_body()
                        .collect()
                        .await
                        .map(|body| body.to_bytes())
                        .unwrap_or_default();
                    let answered = if ok {
                        answer(&body, &state, false)
                    } else {
                        None
                    };
                    let response = match answered {
                        Some((bytes, delay)) => {
                            tokio::time::sleep(delay).await;
                            hyper::Response::builder()
                                .header("content-type", "application/dns-message")
                                .body(Full::new(Bytes::from(bytes)))
                        }
                        None => hyper::Response::builder()
                            .status(400)
                            .body(Full::new(Bytes::new())),
                    };
                    Ok::<_, std::convert::Infallible>(response.unwrap())
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

//! Moving one query to one upstream and its answer back: UDP (with TCP
//! retry when truncated), TCP, DNS over TLS and DNS over HTTPS.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::client::TlsStream;

use super::UpstreamError;
use crate::config::{Transport, UpstreamUrl};

/// Largest answer read from any upstream.
const MAX_ANSWER: usize = 65_535;

/// Idle connections kept per TCP or TLS upstream for the next query.
const IDLE_CONNECTIONS: usize = 4;

/// A way to reach one upstream.
#[derive(Debug)]
pub(super) enum Connector {
    Udp(SocketAddr),
    Tcp {
        addr: SocketAddr,
        idle: Idle<TcpStream>,
    },
    Tls {
        host: String,
        port: u16,
        name: ServerName<'static>,
        tls: Arc<rustls::ClientConfig>,
        idle: Idle<TlsStream<TcpStream>>,
    },
    Https {
        client: reqwest::Client,
        url: String,
    },
}

impl Connector {
    pub(super) fn new(
        url: &UpstreamUrl,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<Self, UpstreamError> {
        let ip_addr = || -> Result<SocketAddr, UpstreamError> {
            let ip: IpAddr = url
                .host
                .parse()
                .map_err(|_| UpstreamError::Setup(format!("{url}: host is not an IP")))?;
            Ok(SocketAddr::new(ip, url.port))
        };
        Ok(match url.transport {
            Transport::Udp => Self::Udp(ip_addr()?),
            Transport::Tcp => Self::Tcp {
                addr: ip_addr()?,
                idle: Idle::default(),
            },
            Transport::Tls => Self::Tls {
                host: url.host.clone(),
                port: url.port,
                name: ServerName::try_from(url.host.clone())
                    .map_err(|err| UpstreamError::Setup(format!("{url}: {err}")))?,
                tls: Arc::clone(tls),
                idle: Idle::default(),
            },
            Transport::Https => {
                let mut config = (**tls).clone();
                config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                let client = reqwest::Client::builder()
                    .tls_backend_preconfigured(config)
                    .build()
                    .map_err(|err| UpstreamError::Setup(format!("{url}: {err}")))?;
                Self::Https {
                    client,
                    url: url.endpoint.clone(),
                }
            }
        })
    }

    /// Sends `query` and returns the raw answer; `timeout` bounds the whole exchange.
    pub(super) async fn exchange(
        &self,
        query: &[u8],
        timeout: Duration,
    ) -> Result<Vec<u8>, UpstreamError> {
        tokio::time::timeout(timeout, self.exchange_unbounded(query))
            .await
            .map_err(|_| UpstreamError::Timeout)?
    }

    async fn exchange_unbounded(&self, query: &[u8]) -> Result<Vec<u8>, UpstreamError> {
        match self {
            Self::Udp(addr) => {
                let answer = udp_exchange(*addr, query).await?;
                if crate::dns::wire::is_truncated(&answer) {
                    let mut stream = TcpStream::connect(addr).await?;
                    return framed_exchange(&mut stream, query).await;
                }
                Ok(answer)
            }
            Self::Tcp { addr, idle } => idle.exchange(|| TcpStream::connect(*addr), query).await,
            Self::Tls {
                host,
                port,
                name,
                tls,
                idle,
            } => {
                let connect = || async {
                    let stream = TcpStream::connect((host.as_str(), *port)).await?;
                    let connector = tokio_rustls::TlsConnector::from(Arc::clone(tls));
                    connector.connect(name.clone(), stream).await
                };
                idle.exchange(connect, query).await
            }
            Self::Https { client, url } => {
                let response = client
                    .post(url)
                    .header("content-type", "application/dns-message")
                    .header("accept", "application/dns-message")
                    .body(query.to_vec())
                    .send()
                    .await
                    .map_err(|err| UpstreamError::Http(err.to_string()))?;
                if !response.status().is_success() {
                    return Err(UpstreamError::Http(format!(
                        "HTTP status {}",
                        response.status()
                    )));
                }
                let body = response
                    .bytes()
                    .await
                    .map_err(|err| UpstreamError::Http(err.to_string()))?;
                Ok(body.to_vec())
            }
        }
    }
}

async fn udp_exchange(addr: SocketAddr, query: &[u8]) -> Result<Vec<u8>, UpstreamError> {
    let local: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local).await?;
    socket.connect(addr).await?;
    socket.send(query).await?;
    let mut buffer = vec![0u8; MAX_ANSWER];
    loop {
        let len = socket.recv(&mut buffer).await?;
        // Anything with another ID is a stray or a spoof attempt: keep waiting.
        if len >= 2 && buffer[..2] == query[..2] {
            buffer.truncate(len);
            return Ok(buffer);
        }
    }
}

async fn framed_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    query: &[u8],
) -> Result<Vec<u8>, UpstreamError> {
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    stream.flush().await?;
    let len = stream.read_u16().await? as usize;
    let mut answer = vec![0u8; len];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}

/// Open connections to one upstream, waiting for their next query.
pub(super) struct Idle<S>(parking_lot::Mutex<Vec<S>>);

impl<S> Default for Idle<S> {
    fn default() -> Self {
        Self(parking_lot::Mutex::new(Vec::new()))
    }
}

impl<S> std::fmt::Debug for Idle<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Idle({})", self.0.lock().len())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Idle<S> {
    /// Exchanges `query` over an idle connection, or a new one from
    /// `connect` if there is none or the idle one was closed meanwhile.
    async fn exchange<F, C>(&self, connect: F, query: &[u8]) -> Result<Vec<u8>, UpstreamError>
    where
        F: Fn() -> C,
        C: Future<Output = std::io::Result<S>>,
    {
        let reused = self.0.lock().pop();
        if let Some(mut stream) = reused
            && let Ok(answer) = framed_exchange(&mut stream, query).await
        {
            self.keep(stream);
            return Ok(answer);
        }
        let mut stream = connect().await?;
        let answer = framed_exchange(&mut stream, query).await?;
        self.keep(stream);
        Ok(answer)
    }

    fn keep(&self, stream: S) {
        let mut idle = self.0.lock();
        if idle.len() < IDLE_CONNECTIONS {
            idle.push(stream);
        }
    }
}

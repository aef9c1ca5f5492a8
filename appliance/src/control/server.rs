//! The control endpoint's HTTP/1.1 server: at most [`MAX_CONNECTIONS`]
//! connections (at the cap it stops accepting, so the kernel's backlog
//! holds the rest), at most [`MAX_PER_CLIENT`] from one client (more are
//! answered 429 and closed), request heads bounded in size and read
//! within [`HEADER_TIMEOUT`], which is also how long a kept-alive
//! connection may sit idle. Over TLS, the handshake must also finish
//! within [`HEADER_TIMEOUT`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::{Extension, Router};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_rustls::TlsAcceptor;

use super::throttle::ClientKey;
use crate::limits::{Place, Places};

/// Connections served at once, at most.
pub(super) const MAX_CONNECTIONS: usize = 128;
/// Connections from one client (IPv4 address, IPv6 /64) at once, at most.
pub(super) const MAX_PER_CLIENT: usize = 32;
/// How long a request head may take to arrive, counted from when the
/// server starts waiting for it (so also the keep-alive idle timeout).
pub(super) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The read buffer, which bounds a request head.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// Header lines in a request, at most.
const MAX_HEADERS: usize = 64;
/// The pause after a failed `accept` (out of descriptors, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long a refused connection is drained so the client reads the 429.
const REFUSAL_DRAIN: Duration = Duration::from_secs(1);

/// How a request reached the server, for the handlers that answer
/// differently over TLS (cookies are `Secure` there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Transport {
    /// Plain HTTP.
    Plain,
    /// HTTPS.
    Tls,
}

/// Serves `app` on `listener` (over TLS with `tls`) until `stop` ends,
/// then closes connections gracefully and returns once they are all done.
pub(super) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let clients = Places::new(MAX_CONNECTIONS, MAX_PER_CLIENT);
    let (closing, closed) = watch::channel(false);
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = accept(&listener, &slots) => accepted,
        };
        let Some((slot, stream, peer)) = accepted else {
            break;
        };
        match clients.take(ClientKey::of(peer.ip())) {
            Ok(client) => {
                let held = (slot, client);
                let (tls, app, closed) = (tls.clone(), app.clone(), closed.clone());
                tokio::spawn(async move {
                    let Some(tls) = tls else {
                        return connection(stream, peer, Transport::Plain, app, held, closed).await;
                    };
                    match tokio::time::timeout(HEADER_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            connection(stream, peer, Transport::Tls, app, held, closed).await
                        }
                        Ok(Err(err)) => {
                            tracing::debug!(%peer, error = %err, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                })
            }
            Err(_) => tokio::spawn(refuse(stream, slot)),
        };
    }
    let _ = closing.send(true);
    let _ = slots.acquire_many(MAX_CONNECTIONS as u32).await;
}

/// The next connection, once a slot is free; `None` if the slots closed.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    let slot = Arc::clone(slots).acquire_owned().await.ok()?;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => return Some((slot, stream, peer)),
            Err(err) => {
                tracing::debug!(error = %err, "control endpoint accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// Serves one connection until it ends, or gracefully after `closing`.
async fn connection(
    stream: impl AsyncRead + AsyncWrite + Unpin + Send + 'static,
    peer: SocketAddr,
    transport: Transport,
    app: Router,
    _held: (OwnedSemaphorePermit, Place<ClientKey>),
    mut closing: watch::Receiver<bool>,
) {
    let app = app
        .layer(Extension(ConnectInfo(peer)))
        .layer(Extension(transport));
    let service = TowerToHyperService::new(app);
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_headers(MAX_HEADERS)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = closed(&mut closing) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%peer, error = %err, "control connection ended");
    }
}

/// Ends once the server is closing (or gone).
async fn closed(closing: &mut watch::Receiver<bool>) {
    let _ = closing.wait_for(|closing| *closing).await;
}

/// Answers a client over its connection cap with 429 and closes.
async fn refuse(mut stream: TcpStream, _slot: OwnedSemaphorePermit) {
    const BODY: &str = r#"{"error":"too many connections from this address"}"#;
    let answer = format!(
        "HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\nretry-after: 1\r\n\
         cache-control: no-store\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let drained = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSAL_DRAIN, drained).await;
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    #[test]
    fn connections_are_capped_per_client() {
        let counts = Places::new(MAX_CONNECTIONS, MAX_PER_CLIENT);
        let enter = |client: IpAddr| counts.take(ClientKey::of(client)).ok();
        let client: IpAddr = [192, 0, 2, 1].into();
        let held: Vec<_> = (0..MAX_PER_CLIENT)
            .map(|_| enter(client).expect("under the cap"))
            .collect();
        assert!(enter(client).is_none());
        let same_64: IpAddr = "2001:db8::1".parse().unwrap();
        let v6: Vec<_> = (0..MAX_PER_CLIENT)
            .map(|_| enter(same_64).expect("under the cap"))
            .collect();
        assert!(
            enter("2001:db8::2".parse().unwrap()).is_none(),
            "an IPv6 client is its /64"
        );
        assert!(enter([192, 0, 2, 2].into()).is_some());
        drop(held);
        drop(v6);
        assert_eq!(counts.held(), 0, "closed connections are given back");
    }
}

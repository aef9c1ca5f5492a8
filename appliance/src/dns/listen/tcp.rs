//! The TCP listener: length-prefixed queries, pipelined (answers may leave
//! out of order, RFC 7766). Bounded: connections, unanswered queries per
//! connection (reading pauses), an idle timeout for reads and for writes (a
//! client that never reads is closed), and a backoff after accept errors
//! (`EMFILE` must not spin).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};

use crate::config::ServerTuning;
use crate::dns::handler::{Handled, Protocol, QueryHandler};
use crate::limits::Places;

/// Answers queued per connection before reading pauses.
const QUEUED_ANSWERS: usize = 64;
/// The first wait after a failed accept; it doubles up to `MAX_ACCEPT_BACKOFF`.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

pub(super) async fn serve(listener: TcpListener, handler: Arc<QueryHandler>, tuning: ServerTuning) {
    let slots = Arc::new(Semaphore::new(tuning.tcp_max_connections.max(1)));
    let clients = Places::new(
        tuning.tcp_max_connections.max(1),
        tuning.tcp_max_connections_per_client.max(1),
    );
    let mut backoff = ACCEPT_BACKOFF;
    loop {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::debug!(error = %err, ?backoff, "tcp accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        backoff = ACCEPT_BACKOFF;
        let client = peer.ip().to_canonical();
        let Ok(place) = clients.take(client) else {
            tracing::trace!(%client, "tcp connection over the client's share, closed");
            continue;
        };
        let handler = Arc::clone(&handler);
        let tuning = tuning.clone();
        tokio::spawn(async move {
            connection(stream, client, handler, &tuning).await;
            drop((place, permit));
        });
    }
}

async fn connection(
    stream: TcpStream,
    client: IpAddr,
    handler: Arc<QueryHandler>,
    tuning: &ServerTuning,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (answers, mut queue) = mpsc::channel::<Vec<u8>>(QUEUED_ANSWERS);
    let idle = tuning.tcp_idle_timeout;
    let writing = tokio::spawn(async move {
        let mut framed = Vec::new();
        while let Some(answer) = queue.recv().await {
            framed.clear();
            framed.extend_from_slice(&(answer.len() as u16).to_be_bytes());
            framed.extend_from_slice(&answer);
            if !matches!(
                tokio::time::timeout(idle, writer.write_all(&framed)).await,
                Ok(Ok(()))
            ) {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    let unanswered = Arc::new(Semaphore::new(tuning.tcp_max_queries_per_connection.max(1)));
    let mut request = Vec::new();
    loop {
        let Ok(permit) = Arc::clone(&unanswered).acquire_owned().await else {
            break;
        };
        if answers.is_closed() {
            break;
        }
        let Ok(Ok(len)) = tokio::time::timeout(idle, reader.read_u16()).await else {
            break;
        };
        request.resize(len as usize, 0);
        if !matches!(
            tokio::time::timeout(idle, reader.read_exact(&mut request)).await,
            Ok(Ok(_))
        ) {
            break;
        }
        let mut answer = Vec::new();
        match handler.handle(&request, client, Protocol::Tcp, &mut answer) {
            Handled::Reply => {
                if answers.send(answer).await.is_err() {
                    break;
                }
            }
            Handled::ReplyAndRefresh(fetch) => {
                tokio::spawn(fetch);
                if answers.send(answer).await.is_err() {
                    break;
                }
            }
            Handled::Ignore => {}
            Handled::Resolve { pending, fetch } => {
                if let Some(fetch) = fetch {
                    tokio::spawn(fetch);
                }
                let handler = Arc::clone(&handler);
                let answers = answers.clone();
                tokio::spawn(async move {
                    handler.resolve(pending, &mut answer).await;
                    let _ = answers.send(answer).await;
                    drop(permit);
                });
            }
        }
    }
    drop(answers);
    let _ = writing.await;
}

//! A tiny HTTP server on loopback that serves one text body, for tests of
//! downloaded blocklists.

use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Serves `GET` of any path with the current body.
#[derive(Debug)]
pub struct ListServer {
    /// Where it listens.
    pub addr: SocketAddr,
    body: Arc<Mutex<String>>,
    task: JoinHandle<()>,
}

impl ListServer {
    /// Starts serving `body` on 127.0.0.1, a free port.
    pub async fn start(body: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let body = Arc::new(Mutex::new(body.to_owned()));
        let serving = body.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let body = serving.lock().clone();
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = stream.read(&mut request).await;
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = stream.write_all(response.as_bytes()).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Self { addr, body, task }
    }

    /// Replaces the body.
    pub fn set(&self, body: &str) {
        *self.body.lock() = body.to_owned();
    }

    /// Stops serving.
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for ListServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

//! Listeners: bind every `listen` address on UDP and TCP and feed the
//! query handler.

mod tcp;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use socket2::{Domain, Protocol as SocketProtocol, Socket, Type};

use super::handler::QueryHandler;
use crate::config::ServerTuning;

/// Why listening failed.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// A socket could not be bound.
    #[error("cannot listen on {protocol} {addr}: {source}")]
    Bind {
        /// "udp" or "tcp".
        protocol: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Bound sockets, before serving starts.
#[derive(Debug)]
pub(crate) struct Listeners {
    udp: Vec<std::net::UdpSocket>,
    tcp: Vec<std::net::TcpListener>,
}

impl Listeners {
    /// Binds UDP and TCP on every address. Port 0 binds the same free port
    /// for both protocols where it can.
    pub(crate) fn bind(addrs: &[SocketAddr]) -> Result<Self, ListenError> {
        let mut listeners = Self {
            udp: Vec::new(),
            tcp: Vec::new(),
        };
        for &addr in addrs {
            let (udp, tcp) = bind_pair(addr)?;
            listeners.udp.push(udp.into());
            listeners.tcp.push(tcp.into());
        }
        Ok(listeners)
    }

    /// Bound UDP addresses.
    pub(crate) fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|socket| socket.local_addr().ok())
            .collect()
    }

    /// Bound TCP addresses.
    pub(crate) fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|listener| listener.local_addr().ok())
            .collect()
    }

    /// Starts serving: one thread per UDP socket, one task per TCP
    /// listener. Must run inside a tokio runtime.
    pub(crate) fn serve(
        self,
        handler: &Arc<QueryHandler>,
        tuning: &ServerTuning,
    ) -> std::io::Result<Serving> {
        let runtime = tokio::runtime::Handle::current();
        let stop = Arc::new(AtomicBool::new(false));
        let mut serving = Serving {
            stop: Arc::clone(&stop),
            udp: Vec::new(),
            tcp: Vec::new(),
        };
        for socket in self.udp {
            let thread = udp::spawn(
                socket,
                Arc::clone(handler),
                runtime.clone(),
                Arc::clone(&stop),
            )?;
            serving.udp.push(thread);
        }
        for listener in self.tcp {
            listener.set_nonblocking(true)?;
            let listener = tokio::net::TcpListener::from_std(listener)?;
            let task = tokio::spawn(tcp::serve(listener, Arc::clone(handler), tuning.clone()));
            serving.tcp.push(task);
        }
        Ok(serving)
    }
}

/// The listeners serving; `stop` ends them.
#[derive(Debug)]
pub(crate) struct Serving {
    /// Tells the UDP threads to end at their next idle check.
    stop: Arc<AtomicBool>,
    udp: Vec<std::thread::JoinHandle<()>>,
    tcp: Vec<tokio::task::JoinHandle<()>>,
}

impl Serving {
    /// Stops accepting queries and waits until every listener has ended.
    pub(crate) async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in &self.tcp {
            task.abort();
        }
        for task in self.tcp {
            let _ = task.await;
        }
        let threads = self.udp;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// Binds UDP and TCP on `addr`. With port 0 the kernel picks a UDP port,
/// which may be taken on TCP: then it tries another, a bounded number of times.
fn bind_pair(addr: SocketAddr) -> Result<(Socket, Socket), ListenError> {
    let attempts = if addr.port() == 0 { 100 } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        let udp = bind_socket(addr, Type::DGRAM).map_err(|source| ListenError::Bind {
            protocol: "udp",
            addr,
            source,
        })?;
        let bound = udp
            .local_addr()
            .ok()
            .and_then(|bound| bound.as_socket())
            .unwrap_or(addr);
        match bind_socket(bound, Type::STREAM)
            .and_then(|socket| socket.listen(1024).map(|()| socket))
        {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => {
                last_error = Some(ListenError::Bind {
                    protocol: "tcp",
                    addr: bound,
                    source,
                })
            }
        }
    }
    Err(last_error.expect("at least one attempt"))
}

fn bind_socket(addr: SocketAddr, kind: Type) -> std::io::Result<Socket> {
    let protocol = if kind == Type::DGRAM {
        SocketProtocol::UDP
    } else {
        SocketProtocol::TCP
    };
    let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    if kind == Type::STREAM {
        socket.set_reuse_address(true)?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

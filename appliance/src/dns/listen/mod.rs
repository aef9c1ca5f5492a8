//! Listeners: bind every `listen` address on UDP and TCP and feed the
//! query handler. Each UDP address gets `threads` sockets sharing its port
//! (`SO_REUSEPORT`: the kernel spreads clients over them), each served by a
//! thread of its own; a socket bound to the unspecified address learns each
//! datagram's destination (`IP_PKTINFO`) and answers from it.

mod tcp;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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

/// One UDP socket's thread: where it listens and what it has taken.
#[derive(Debug)]
pub(crate) struct UdpThread {
    /// The address it serves.
    pub(crate) addr: SocketAddr,
    /// Its place among the threads of that address, from 0.
    pub(crate) index: usize,
    /// Datagrams it has received.
    pub(crate) queries: AtomicU64,
}

/// Bound sockets, before serving starts.
#[derive(Debug)]
pub(crate) struct Listeners {
    udp: Vec<(std::net::UdpSocket, Arc<UdpThread>)>,
    tcp: Vec<std::net::TcpListener>,
}

impl Listeners {
    /// Binds TCP and `threads` UDP sockets on every address. Port 0 binds
    /// the same free port for both protocols where it can.
    pub(crate) fn bind(addrs: &[SocketAddr], threads: usize) -> Result<Self, ListenError> {
        let mut listeners = Self {
            udp: Vec::new(),
            tcp: Vec::new(),
        };
        let shared = threads > 1;
        for &addr in addrs {
            let (udp, tcp) = bind_pair(addr, shared)?;
            let bound = tcp
                .local_addr()
                .ok()
                .and_then(|bound| bound.as_socket())
                .unwrap_or(addr);
            listeners.add_udp(udp, bound, 0);
            for index in 1..threads {
                listeners.add_udp(bind_udp(bound, shared)?, bound, index);
            }
            listeners.tcp.push(tcp.into());
        }
        Ok(listeners)
    }

    fn add_udp(&mut self, socket: Socket, addr: SocketAddr, index: usize) {
        let thread = UdpThread {
            addr,
            index,
            queries: AtomicU64::new(0),
        };
        self.udp.push((socket.into(), Arc::new(thread)));
    }

    /// Bound UDP addresses, each once.
    pub(crate) fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter(|(_, thread)| thread.index == 0)
            .map(|(_, thread)| thread.addr)
            .collect()
    }

    /// The UDP threads that will serve, for their counters.
    pub(crate) fn udp_threads(&self) -> Vec<Arc<UdpThread>> {
        self.udp
            .iter()
            .map(|(_, thread)| Arc::clone(thread))
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
        for (socket, counters) in self.udp {
            let thread = udp::spawn(
                socket,
                counters,
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

/// Binds UDP (shared by port if `shared`) and TCP on `addr`. With port 0
/// the kernel picks a UDP port, which may be taken on TCP: then it tries
/// another, a bounded number of times.
fn bind_pair(addr: SocketAddr, shared: bool) -> Result<(Socket, Socket), ListenError> {
    let attempts = if addr.port() == 0 { 100 } else { 1 };
    let mut last_error = None;
    for _ in 0..attempts {
        let udp = bind_udp(addr, shared)?;
        let bound = udp
            .local_addr()
            .ok()
            .and_then(|bound| bound.as_socket())
            .unwrap_or(addr);
        match bind_socket(bound, Type::STREAM, false)
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

/// A UDP socket bound to `addr`, sharing its port if `shared`.
fn bind_udp(addr: SocketAddr, shared: bool) -> Result<Socket, ListenError> {
    bind_socket(addr, Type::DGRAM, shared).map_err(|source| ListenError::Bind {
        protocol: "udp",
        addr,
        source,
    })
}

fn bind_socket(addr: SocketAddr, kind: Type, shared: bool) -> std::io::Result<Socket> {
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
    if shared {
        socket.set_reuse_port(true)?;
    }
    if kind == Type::DGRAM && addr.ip().is_unspecified() {
        udp::learn_destinations(&socket, addr.is_ipv6())?;
    }
    socket.bind(&addr.into())?;
    Ok(socket)
}

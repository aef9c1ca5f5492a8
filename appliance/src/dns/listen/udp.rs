//! The UDP listener: a thread per socket that takes queries in batches
//! (`recvmmsg`), answers cache hits at once and sends the answers in
//! batches (`sendmmsg`); misses go to the runtime and are sent on their own.

use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};

use tokio::runtime::Handle;

use crate::dns::handler::{Fetch, Handled, Pending, Protocol, QueryHandler};

/// Messages taken per system call.
const BATCH: usize = 32;
/// Largest query read; longer ones are cut and then fail to parse.
const MAX_QUERY: usize = 4096;
/// How often an idle thread checks for shutdown.
const IDLE_CHECK: Duration = Duration::from_millis(250);

pub(super) fn spawn(
    socket: UdpSocket,
    handler: Arc<QueryHandler>,
    runtime: Handle,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    socket.set_read_timeout(Some(IDLE_CHECK))?;
    let name = format!("udp {}", socket.local_addr()?);
    std::thread::Builder::new()
        .name(name)
        .spawn(move || Batcher::new(Arc::new(socket), handler, runtime).run(&shutdown))
}

struct Batcher {
    socket: Arc<UdpSocket>,
    handler: Arc<QueryHandler>,
    runtime: Handle,
    received: Box<[[u8; MAX_QUERY]; BATCH]>,
    answers: Vec<Vec<u8>>,
    receive_headers: MultiHeaders<SockaddrStorage>,
    send_headers: MultiHeaders<SockaddrStorage>,
}

impl Batcher {
    fn new(socket: Arc<UdpSocket>, handler: Arc<QueryHandler>, runtime: Handle) -> Self {
        Self {
            socket,
            handler,
            runtime,
            received: Box::new([[0; MAX_QUERY]; BATCH]),
            answers: (0..BATCH).map(|_| Vec::with_capacity(1232)).collect(),
            receive_headers: MultiHeaders::preallocate(BATCH, None),
            send_headers: MultiHeaders::preallocate(BATCH, None),
        }
    }

    fn run(mut self, shutdown: &AtomicBool) {
        let mut senders = [None; BATCH];
        while !shutdown.load(Ordering::Relaxed) {
            let count = match self.receive(&mut senders) {
                Ok(count) => count,
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(err) => {
                    tracing::warn!(error = %err, "udp receive failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let mut replies: heapless::Vec<(usize, SockaddrStorage), BATCH> = heapless::Vec::new();
            for (index, sender) in senders.iter().enumerate().take(count) {
                let Some((len, addr)) = *sender else { continue };
                let Some(client) = socket_addr(&addr) else {
                    continue;
                };
                let request = &self.received[index][..len];
                match self.handler.handle(
                    request,
                    client.ip(),
                    Protocol::Udp,
                    &mut self.answers[index],
                ) {
                    Handled::Reply => {
                        let _ = replies.push((index, addr));
                    }
                    Handled::ReplyAndRefresh(fetch) => {
                        let _ = replies.push((index, addr));
                        self.runtime.spawn(fetch);
                    }
                    Handled::Ignore => {}
                    Handled::Resolve { pending, fetch } => {
                        self.resolve_later(pending, fetch, client);
                    }
                }
            }
            self.send(&replies);
        }
    }

    /// Receives up to `BATCH` messages; fills `senders` with length and source.
    fn receive(
        &mut self,
        senders: &mut [Option<(usize, SockaddrStorage)>; BATCH],
    ) -> Result<usize, Errno> {
        let mut slices = self
            .received
            .each_mut()
            .map(|buffer| [IoSliceMut::new(buffer)]);
        let results = recvmmsg(
            self.socket.as_raw_fd(),
            &mut self.receive_headers,
            slices.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        )?;
        let mut count = 0;
        for (slot, message) in senders.iter_mut().zip(results) {
            *slot = message.address.map(|addr| (message.bytes, addr));
            count += 1;
        }
        Ok(count)
    }

    fn send(&mut self, replies: &[(usize, SockaddrStorage)]) {
        let mut sent = 0;
        while sent < replies.len() {
            let pending = &replies[sent..];
            let slices: heapless::Vec<[IoSlice<'_>; 1], BATCH> = pending
                .iter()
                .map(|&(index, _)| [IoSlice::new(&self.answers[index])])
                .collect();
            let addrs: heapless::Vec<Option<SockaddrStorage>, BATCH> =
                pending.iter().map(|&(_, addr)| Some(addr)).collect();
            let no_control: [ControlMessage<'_>; 0] = [];
            match sendmmsg(
                self.socket.as_raw_fd(),
                &mut self.send_headers,
                &slices,
                &addrs,
                no_control,
                MsgFlags::empty(),
            ) {
                Ok(results) => sent += results.count().max(1),
                Err(Errno::EINTR) => {}
                // This datagram cannot go (e.g. unreachable client): skip it, send the rest.
                Err(_) => sent += 1,
            }
        }
    }

    fn resolve_later(&self, pending: Pending, fetch: Option<Fetch>, client: SocketAddr) {
        if let Some(fetch) = fetch {
            self.runtime.spawn(fetch);
        }
        let handler = Arc::clone(&self.handler);
        let socket = Arc::clone(&self.socket);
        self.runtime.spawn(async move {
            let mut answer = Vec::new();
            handler.resolve(pending, &mut answer).await;
            if let Err(err) = socket.send_to(&answer, client) {
                tracing::debug!(%client, error = %err, "udp send failed");
            }
        });
    }
}

fn socket_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    let v6 = std::net::SocketAddrV6::from(*addr.as_sockaddr_in6()?);
    let ip = IpAddr::V6(*v6.ip()).to_canonical();
    Some(SocketAddr::new(ip, v6.port()))
}

//! The UDP listener: a thread per socket that takes queries in batches
//! (`recvmmsg`), answers cache hits at once and sends the answers in
//! batches (`sendmmsg`); misses go to the runtime and are sent on their own.
//! On a socket bound to the unspecified address every answer leaves from
//! the address its query was sent to (the `IP_PKTINFO` / `IPV6_PKTINFO`
//! the query came with), and to the client's full address, scope id kept.

use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::libc;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg,
    sendmmsg, sendmsg, setsockopt, sockopt,
};
use socket2::Socket;
use tokio::runtime::Handle;

use super::UdpThread;
use crate::dns::handler::{Fetch, Handled, Pending, Protocol, QueryHandler};

/// Messages taken per system call.
const BATCH: usize = 32;
/// Largest query read; longer ones are cut and then fail to parse.
const MAX_QUERY: usize = 4096;
/// How often an idle thread checks for shutdown.
const IDLE_CHECK: Duration = Duration::from_millis(250);

/// Asks the kernel to tell each datagram's destination address, on a
/// socket about to be bound to the unspecified address.
pub(super) fn learn_destinations(socket: &Socket, ipv6: bool) -> std::io::Result<()> {
    if ipv6 {
        setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &true)?;
    } else {
        setsockopt(socket, sockopt::Ipv4PacketInfo, &true)?;
    }
    Ok(())
}

pub(super) fn spawn(
    socket: UdpSocket,
    counters: Arc<UdpThread>,
    handler: Arc<QueryHandler>,
    runtime: Handle,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    socket.set_read_timeout(Some(IDLE_CHECK))?;
    let addr = socket.local_addr()?;
    let name = format!("udp {addr} #{}", counters.index);
    std::thread::Builder::new()
        .name(name)
        .spawn(move || Batcher::new(Arc::new(socket), counters, handler, runtime).run(&shutdown))
}

/// The local address a datagram arrived at, when the socket is bound to
/// the unspecified address: what its answer is sent from.
#[derive(Clone, Copy)]
enum Arrival {
    /// The socket's own address is the answer's source.
    Bound,
    V4(libc::in_pktinfo),
    V6(libc::in6_pktinfo),
}

impl Arrival {
    fn of(message: &nix::sys::socket::RecvMsg<'_, '_, SockaddrStorage>) -> Self {
        let Ok(mut messages) = message.cmsgs() else {
            return Self::Bound;
        };
        messages
            .find_map(|control| match control {
                ControlMessageOwned::Ipv4PacketInfo(info) => Some(Self::V4(libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: info.ipi_addr,
                    ipi_addr: libc::in_addr { s_addr: 0 },
                })),
                ControlMessageOwned::Ipv6PacketInfo(info) => Some(Self::V6(info)),
                _ => None,
            })
            .unwrap_or(Self::Bound)
    }

    fn same_source(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Bound, Self::Bound) => true,
            (Self::V4(a), Self::V4(b)) => a.ipi_spec_dst.s_addr == b.ipi_spec_dst.s_addr,
            (Self::V6(a), Self::V6(b)) => {
                a.ipi6_addr.s6_addr == b.ipi6_addr.s6_addr && a.ipi6_ifindex == b.ipi6_ifindex
            }
            _ => false,
        }
    }

    /// The control message that sets the source, if one is needed.
    fn control(&self) -> Option<ControlMessage<'_>> {
        match self {
            Self::Bound => None,
            Self::V4(info) => Some(ControlMessage::Ipv4PacketInfo(info)),
            Self::V6(info) => Some(ControlMessage::Ipv6PacketInfo(info)),
        }
    }
}

/// Where an answer goes: the client's full address and the local one.
type Reply = (usize, SockaddrStorage, Arrival);

struct Batcher {
    socket: Arc<UdpSocket>,
    counters: Arc<UdpThread>,
    handler: Arc<QueryHandler>,
    runtime: Handle,
    received: Box<[[u8; MAX_QUERY]; BATCH]>,
    answers: Vec<Vec<u8>>,
    receive_headers: MultiHeaders<SockaddrStorage>,
    /// For answers sent from the socket's own address.
    send_headers: MultiHeaders<SockaddrStorage>,
    /// For answers that name their source, room for one packet-info message each.
    send_headers_from: MultiHeaders<SockaddrStorage>,
}

impl Batcher {
    fn new(
        socket: Arc<UdpSocket>,
        counters: Arc<UdpThread>,
        handler: Arc<QueryHandler>,
        runtime: Handle,
    ) -> Self {
        let ipv6 = counters.addr.is_ipv6();
        Self {
            socket,
            counters,
            handler,
            runtime,
            received: Box::new([[0; MAX_QUERY]; BATCH]),
            answers: (0..BATCH).map(|_| Vec::with_capacity(1232)).collect(),
            receive_headers: Self::receive_headers(),
            send_headers: MultiHeaders::preallocate(BATCH, None),
            send_headers_from: MultiHeaders::preallocate(BATCH, Some(packet_info_space(ipv6))),
        }
    }

    /// Receive headers with room for a packet-info message each. The
    /// kernel shrinks a header's control length to what it wrote, so after
    /// a datagram that came without one they are made again.
    fn receive_headers() -> MultiHeaders<SockaddrStorage> {
        MultiHeaders::preallocate(BATCH, Some(nix::cmsg_space!(libc::in6_pktinfo)))
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
            self.counters
                .queries
                .fetch_add(count as u64, Ordering::Relaxed);
            let mut replies: heapless::Vec<Reply, BATCH> = heapless::Vec::new();
            for (index, sender) in senders.iter().enumerate().take(count) {
                let Some((len, addr, arrival)) = *sender else {
                    continue;
                };
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
                        let _ = replies.push((index, addr, arrival));
                    }
                    Handled::ReplyAndRefresh(fetch) => {
                        let _ = replies.push((index, addr, arrival));
                        self.runtime.spawn(fetch);
                    }
                    Handled::Ignore => {}
                    Handled::Resolve { pending, fetch } => {
                        self.resolve_later(pending, fetch, addr, arrival);
                    }
                }
            }
            self.send(&replies);
        }
    }

    /// Receives up to `BATCH` messages; fills `senders` with length, source
    /// and where each arrived.
    fn receive(
        &mut self,
        senders: &mut [Option<(usize, SockaddrStorage, Arrival)>; BATCH],
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
        let (mut count, mut shrunk) = (0, false);
        for (slot, message) in senders.iter_mut().zip(results) {
            let arrival = Arrival::of(&message);
            shrunk |= matches!(arrival, Arrival::Bound);
            *slot = message.address.map(|addr| (message.bytes, addr, arrival));
            count += 1;
        }
        if shrunk && self.learns_destinations() {
            self.receive_headers = Self::receive_headers();
        }
        Ok(count)
    }

    fn learns_destinations(&self) -> bool {
        self.counters.addr.ip().is_unspecified()
    }

    /// Sends the answers in batches, one batch per run of answers that
    /// leave from the same local address.
    fn send(&mut self, replies: &[Reply]) {
        let mut sent = 0;
        while sent < replies.len() {
            let arrival = replies[sent].2;
            let run = replies[sent..]
                .iter()
                .take_while(|reply| reply.2.same_source(&arrival))
                .count();
            sent += self.send_run(&replies[sent..sent + run], &arrival);
        }
    }

    /// Sends some of `run`, all from `arrival`'s address; how many went or
    /// were given up on (at least one).
    fn send_run(&mut self, run: &[Reply], arrival: &Arrival) -> usize {
        let slices: heapless::Vec<[IoSlice<'_>; 1], BATCH> = run
            .iter()
            .map(|&(index, _, _)| [IoSlice::new(&self.answers[index])])
            .collect();
        let addrs: heapless::Vec<Option<SockaddrStorage>, BATCH> =
            run.iter().map(|&(_, addr, _)| Some(addr)).collect();
        let control: heapless::Vec<ControlMessage<'_>, 1> = arrival.control().into_iter().collect();
        let headers = if control.is_empty() {
            &mut self.send_headers
        } else {
            &mut self.send_headers_from
        };
        loop {
            match sendmmsg(
                self.socket.as_raw_fd(),
                headers,
                &slices,
                &addrs,
                &control,
                MsgFlags::empty(),
            ) {
                Ok(results) => return results.count().max(1),
                Err(Errno::EINTR) => {}
                // This datagram cannot go (e.g. unreachable client): skip it, send the rest.
                Err(_) => return 1,
            }
        }
    }

    fn resolve_later(
        &self,
        pending: Pending,
        fetch: Option<Fetch>,
        client: SockaddrStorage,
        arrival: Arrival,
    ) {
        if let Some(fetch) = fetch {
            self.runtime.spawn(fetch);
        }
        let handler = Arc::clone(&self.handler);
        let socket = Arc::clone(&self.socket);
        self.runtime.spawn(async move {
            let mut answer = Vec::new();
            handler.resolve(pending, &mut answer).await;
            let control: heapless::Vec<ControlMessage<'_>, 1> =
                arrival.control().into_iter().collect();
            let sent = sendmsg(
                socket.as_raw_fd(),
                &[IoSlice::new(&answer)],
                &control,
                MsgFlags::empty(),
                Some(&client),
            );
            if let Err(err) = sent {
                tracing::debug!(client = %client, error = %err, "udp send failed");
            }
        });
    }
}

/// Control-message room for one packet-info message of the family.
fn packet_info_space(ipv6: bool) -> Vec<u8> {
    if ipv6 {
        nix::cmsg_space!(libc::in6_pktinfo)
    } else {
        nix::cmsg_space!(libc::in_pktinfo)
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

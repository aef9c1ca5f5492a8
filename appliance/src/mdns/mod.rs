//! Multicast DNS on the appliance's links (RFC 6762) and the DNS-SD
//! services it advertises (RFC 6763): `<name>.local`, the control plane
//! (`_moat._tcp`) and, on a primary, the sync endpoint (`_moat-sync._udp`),
//! so a browser and `moat join CODE` find the appliance without an address.
//!
//! `responder.rs` and `browse.rs` are pure (packets in, packets out);
//! this file is their shell: one IPv4 socket on port 5353 joined to the
//! group on every link that is up, rescanned as links come and go.

mod browse;
mod responder;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;

use crate::clock;
use crate::links::{self, LinkAddr};
pub(crate) use browse::Found;
pub(crate) use responder::{Advertised, SYNC_SERVICE, SyncEndpoint};
use responder::{Destination, MDNS_PORT, Responder};

/// The IPv4 mDNS group.
const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
/// How often the links are looked at again.
const RESCAN: Duration = Duration::from_secs(10);
/// The largest mDNS packet read (RFC 6762 §17).
const MAX_PACKET: usize = 9000;
/// How many times the records are announced after a change (§8.3).
const ANNOUNCEMENTS: u32 = 2;

/// Why mDNS cannot run.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MdnsError {
    /// The socket on port 5353 could not be made.
    #[error("cannot listen for mDNS on UDP port {MDNS_PORT}: {0}")]
    Bind(#[source] std::io::Error),
    /// The browse socket could not be made or used.
    #[error("cannot browse the LAN by mDNS: {0}")]
    Browse(#[source] std::io::Error),
}

/// Answers mDNS questions for what `advertised` returns (looked at again
/// for each packet and each rescan of the links, and announced when it
/// changes) until the task is dropped.
pub(crate) async fn serve(advertised: impl Fn() -> Advertised) -> Result<(), MdnsError> {
    let socket = bind().map_err(MdnsError::Bind)?;
    let mut responder = Responder::new(advertised(), clock::now());
    let mut links = Vec::new();
    let mut joined = HashSet::new();
    let mut rescan = tokio::time::interval(RESCAN);
    let mut announce = tokio::time::interval(Duration::from_secs(1));
    let mut announcements_left = ANNOUNCEMENTS;
    let mut packet = vec![0u8; MAX_PACKET];
    tracing::info!(host = %responder::host_name(&responder.advertised().name), "answering mDNS");
    loop {
        tokio::select! {
            _ = rescan.tick() => {
                links = multicast_links();
                let fresh = join_links(&socket, &links, &mut joined);
                let now = advertised();
                if fresh || now != *responder.advertised() {
                    responder = Responder::new(now, clock::now());
                    announcements_left = ANNOUNCEMENTS;
                }
            }
            _ = announce.tick(), if announcements_left > 0 => {
                announcements_left -= 1;
                announce_on_each_link(&socket, &responder, &links).await;
            }
            received = socket.recv_from(&mut packet) => {
                let Ok((len, from)) = received else { continue };
                let now = advertised();
                if now != *responder.advertised() {
                    responder = Responder::new(now, clock::now());
                    announcements_left = ANNOUNCEMENTS;
                }
                let addrs = links::addrs_for(&links, from.ip());
                let Some(reply) = responder.reply(&packet[..len], from, &addrs, clock::now()) else {
                    continue;
                };
                let to = match reply.to {
                    Destination::Unicast(to) => to,
                    Destination::Multicast => {
                        if let Some(link) = links::link_of(&links, from.ip()) {
                            let _ = SockRef::from(&socket).set_multicast_if_v4(&link);
                        }
                        SocketAddr::from((GROUP, MDNS_PORT))
                    }
                };
                if let Err(err) = socket.send_to(&reply.bytes, to).await {
                    tracing::debug!(error = %err, %to, "mDNS reply not sent");
                }
            }
        }
    }
}

/// Asks every link for instances of `service` and gathers the answers
/// heard within `wait`.
pub(crate) async fn browse(service: &str, wait: Duration) -> Result<Vec<Found>, MdnsError> {
    let Some(mut browse) = browse::Browse::new(service) else {
        return Ok(Vec::new());
    };
    let socket = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
        .await
        .map_err(MdnsError::Browse)?;
    let query = browse.query(rand::random());
    let group = SocketAddr::from((GROUP, MDNS_PORT));
    for link in multicast_links() {
        SockRef::from(&socket)
            .set_multicast_if_v4(&link.addr)
            .map_err(MdnsError::Browse)?;
        if let Err(err) = socket.send_to(&query, group).await {
            tracing::debug!(error = %err, link = %link.addr, "mDNS browse not sent on a link");
        }
    }
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    let mut packet = vec![0u8; MAX_PACKET];
    for _ in 0..browse::MAX_INSTANCES * 8 {
        tokio::select! {
            _ = &mut deadline => break,
            received = socket.recv_from(&mut packet) => {
                if let Ok((len, _)) = received {
                    browse.hear(&packet[..len]);
                }
            }
        }
    }
    Ok(browse.found())
}

fn multicast_links() -> Vec<LinkAddr> {
    let mut links = links::scan();
    links.retain(|link| link.multicast);
    links
}

fn bind() -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_multicast_loop_v4(true)?;
    socket.set_multicast_ttl_v4(255)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, MDNS_PORT).into())?;
    UdpSocket::from_std(socket.into())
}

/// Joins the group on each link not joined yet; true when one was.
fn join_links(socket: &UdpSocket, links: &[LinkAddr], joined: &mut HashSet<Ipv4Addr>) -> bool {
    let mut fresh = false;
    for link in links {
        if joined.contains(&link.addr) {
            continue;
        }
        match socket.join_multicast_v4(GROUP, link.addr) {
            Ok(()) => {
                tracing::info!(link = %link.addr, "mDNS joined a link");
                joined.insert(link.addr);
                fresh = true;
            }
            Err(err) => tracing::warn!(error = %err, link = %link.addr, "mDNS cannot join a link"),
        }
    }
    fresh
}

async fn announce_on_each_link(socket: &UdpSocket, responder: &Responder, links: &[LinkAddr]) {
    let group = SocketAddr::from((GROUP, MDNS_PORT));
    for link in links {
        let own = links::addrs_for(links, std::net::IpAddr::V4(link.addr));
        let announcement = responder.announcement(&own);
        if SockRef::from(socket)
            .set_multicast_if_v4(&link.addr)
            .is_ok()
        {
            let _ = socket.send_to(&announcement, group).await;
        }
    }
}

//! A DHCPv4 client (RFC 2131) as a state machine with no I/O, in the way of
//! quinn-proto: feed it packets (`handle_packet`) and time
//! (`handle_timeout`), then take what it wants sent (`poll_transmit`), when
//! it next needs the time (`poll_timeout`) and what happened
//! (`poll_event`). The caller owns the socket and applies leases.
//!
//! Call order: `new`, then loop: send every `poll_transmit`, drain
//! `poll_event`, wait for a packet or `poll_timeout`, feed it back.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

/// The UDP port a DHCP server listens on.
pub const SERVER_PORT: u16 = 67;
/// The UDP port a DHCP client listens on.
pub const CLIENT_PORT: u16 = 68;

const MAGIC: [u8; 4] = [99, 130, 83, 99];
const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;
/// Retransmissions back off from 1 s up to this.
const MAX_RETRY: Duration = Duration::from_secs(8);
/// Requests sent for an offer before starting over.
const REQUEST_TRIES: u32 = 3;

/// An address lease: what the shell configures on the interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address.
    pub address: Ipv4Addr,
    /// Prefix length of the subnet (from the subnet mask).
    pub prefix_len: u8,
    /// Default gateway, if the server gave one.
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers the network suggests (unused by Moat, logged).
    pub dns: Vec<Ipv4Addr>,
    /// The server that granted the lease.
    pub server: Ipv4Addr,
    /// Lease duration.
    pub duration: Duration,
    /// When to renew (T1).
    pub renew_after: Duration,
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhcpEvent {
    /// A lease was granted or renewed: configure it.
    Bound(Lease),
    /// The lease ran out or was refused: remove the address.
    Lost,
}

#[derive(Debug)]
enum State {
    Selecting,
    Requesting { offer: Lease, tries: u32 },
    Bound { lease: Lease, since: Instant },
    Renewing { lease: Lease, since: Instant },
}

/// The DHCP client state machine for one interface.
#[derive(Debug)]
pub struct DhcpClient {
    mac: [u8; 6],
    xid: u32,
    hostname: Option<String>,
    state: State,
    deadline: Instant,
    retry: Duration,
    transmit: Option<Vec<u8>>,
    events: VecDeque<DhcpEvent>,
}

impl DhcpClient {
    /// A client for the interface with hardware address `mac`; `xid` is a
    /// random transaction id. It wants to send a DISCOVER at once.
    pub fn new(mac: [u8; 6], xid: u32, hostname: Option<String>, now: Instant) -> Self {
        let mut client = Self {
            mac,
            xid,
            hostname,
            state: State::Selecting,
            deadline: now,
            retry: Duration::from_secs(1),
            transmit: None,
            events: VecDeque::new(),
        };
        client.handle_timeout(now);
        client
    }

    /// Time has passed: retransmit, renew or give up a lease when due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.deadline {
            return;
        }
        match &mut self.state {
            State::Selecting => {
                self.transmit = Some(self.message(DISCOVER, None, None));
                self.back_off(now);
            }
            State::Requesting { offer, tries } => {
                if *tries >= REQUEST_TRIES {
                    self.restart(now);
                    return;
                }
                *tries += 1;
                let (address, server) = (offer.address, offer.server);
                self.transmit = Some(self.message(REQUEST, Some(address), Some(server)));
                self.back_off(now);
            }
            State::Bound { lease, since } => {
                let (lease, since) = (lease.clone(), *since);
                self.state = State::Renewing { lease, since };
                self.retry = Duration::from_secs(1);
                self.handle_timeout(now);
            }
            State::Renewing { lease, since } => {
                if now >= *since + lease.duration {
                    self.events.push_back(DhcpEvent::Lost);
                    self.restart(now);
                    return;
                }
                let address = lease.address;
                let mut packet = self.message(REQUEST, None, None);
                packet[12..16].copy_from_slice(&address.octets()); // ciaddr
                self.transmit = Some(packet);
                self.back_off(now);
            }
        }
    }

    /// A packet arrived on the client port.
    pub fn handle_packet(&mut self, packet: &[u8], now: Instant) {
        let Some(reply) = Reply::parse(packet, self.xid, &self.mac) else {
            return;
        };
        match (&self.state, reply.kind) {
            (State::Selecting, OFFER) => {
                if let Some(offer) = reply.lease() {
                    self.state = State::Requesting { offer, tries: 0 };
                    self.retry = Duration::from_secs(1);
                    self.deadline = now;
                    self.handle_timeout(now);
                }
            }
            (State::Requesting { .. } | State::Renewing { .. }, ACK) => {
                if let Some(lease) = reply.lease() {
                    self.deadline = now + lease.renew_after;
                    self.events.push_back(DhcpEvent::Bound(lease.clone()));
                    self.state = State::Bound { lease, since: now };
                }
            }
            (State::Requesting { .. } | State::Renewing { .. }, NAK) => {
                if matches!(self.state, State::Renewing { .. }) {
                    self.events.push_back(DhcpEvent::Lost);
                }
                self.restart(now);
            }
            _ => {}
        }
    }

    /// A DHCP message to broadcast to the server port, if one is due.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmit.take()
    }

    /// When `handle_timeout` must be called next.
    pub fn poll_timeout(&self) -> Instant {
        self.deadline
    }

    /// The next thing that happened.
    pub fn poll_event(&mut self) -> Option<DhcpEvent> {
        self.events.pop_front()
    }

    fn restart(&mut self, now: Instant) {
        self.state = State::Selecting;
        self.retry = Duration::from_secs(1);
        self.deadline = now;
        self.xid = self.xid.wrapping_add(1);
        self.handle_timeout(now);
    }

    fn back_off(&mut self, now: Instant) {
        self.deadline = now + self.retry;
        self.retry = (self.retry * 2).min(MAX_RETRY);
    }

    fn message(&self, kind: u8, requested: Option<Ipv4Addr>, server: Option<Ipv4Addr>) -> Vec<u8> {
        let mut packet = vec![0u8; 236];
        packet[0] = 1; // BOOTREQUEST
        packet[1] = 1; // Ethernet
        packet[2] = 6;
        packet[4..8].copy_from_slice(&self.xid.to_be_bytes());
        packet[10] = 0x80; // broadcast the reply: we have no address yet
        packet[28..34].copy_from_slice(&self.mac);
        packet.extend_from_slice(&MAGIC);
        packet.extend_from_slice(&[53, 1, kind]);
        packet.extend_from_slice(&[61, 7, 1]);
        packet.extend_from_slice(&self.mac);
        if let Some(address) = requested {
            packet.extend_from_slice(&[50, 4]);
            packet.extend_from_slice(&address.octets());
        }
        if let Some(server) = server {
            packet.extend_from_slice(&[54, 4]);
            packet.extend_from_slice(&server.octets());
        }
        if let Some(name) = &self.hostname {
            let name = &name.as_bytes()[..name.len().min(63)];
            packet.extend_from_slice(&[12, name.len() as u8]);
            packet.extend_from_slice(name);
        }
        packet.extend_from_slice(&[55, 6, 1, 3, 6, 51, 54, 58]);
        packet.push(255);
        // Some servers ignore BOOTP messages shorter than 300 bytes.
        packet.resize(packet.len().max(300), 0);
        packet
    }
}

/// The fields of a server reply the client uses.
#[derive(Debug, Default)]
struct Reply {
    kind: u8,
    yiaddr: Option<Ipv4Addr>,
    mask: Option<Ipv4Addr>,
    router: Option<Ipv4Addr>,
    dns: Vec<Ipv4Addr>,
    lease_secs: Option<u32>,
    renew_secs: Option<u32>,
    server: Option<Ipv4Addr>,
}

impl Reply {
    fn parse(packet: &[u8], xid: u32, mac: &[u8; 6]) -> Option<Self> {
        if packet.len() < 240
            || packet[0] != 2
            || packet[4..8] != xid.to_be_bytes()
            || packet[28..34] != mac[..]
            || packet[236..240] != MAGIC
        {
            return None;
        }
        let mut reply = Self {
            yiaddr: Some(ipv4(&packet[16..20])?).filter(|a| !a.is_unspecified()),
            ..Self::default()
        };
        let mut options = &packet[240..];
        while let [code, rest @ ..] = options {
            match code {
                0 => {
                    options = rest;
                    continue;
                }
                255 => break,
                _ => {}
            }
            let [len, rest @ ..] = rest else { return None };
            let value = rest.get(..usize::from(*len))?;
            match (code, value) {
                (53, [kind]) => reply.kind = *kind,
                (1, _) => reply.mask = ipv4(value),
                (3, _) => reply.router = value.get(..4).and_then(ipv4),
                (6, _) => reply.dns = value.chunks_exact(4).filter_map(ipv4).collect(),
                (51, _) => reply.lease_secs = be32(value),
                (58, _) => reply.renew_secs = be32(value),
                (54, _) => reply.server = ipv4(value),
                _ => {}
            }
            options = &rest[usize::from(*len)..];
        }
        (reply.kind != 0).then_some(reply)
    }

    fn lease(&self) -> Option<Lease> {
        let lease_secs = self.lease_secs.unwrap_or(3600).max(60);
        Some(Lease {
            address: self.yiaddr?,
            prefix_len: self
                .mask
                .map_or(24, |mask| u32::from(mask).count_ones() as u8),
            gateway: self.router,
            dns: self.dns.clone(),
            server: self.server?,
            duration: Duration::from_secs(lease_secs.into()),
            renew_after: Duration::from_secs(self.renew_secs.unwrap_or(lease_secs / 2).into()),
        })
    }
}

fn ipv4(bytes: &[u8]) -> Option<Ipv4Addr> {
    <[u8; 4]>::try_from(bytes).ok().map(Ipv4Addr::from)
}

fn be32(bytes: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(bytes).ok().map(u32::from_be_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    /// Any instant will do: the client only compares and adds times.
    #[allow(
        clippy::disallowed_methods,
        reason = "a test's arbitrary origin of time"
    )]
    fn origin() -> Instant {
        Instant::now()
    }

    /// What a server (QEMU's slirp, say) answers.
    fn server_reply(request: &[u8], kind: u8, lease_secs: u32) -> Vec<u8> {
        let mut reply = vec![0u8; 236];
        reply[0] = 2;
        reply[1] = 1;
        reply[2] = 6;
        reply[4..8].copy_from_slice(&request[4..8]);
        reply[16..20].copy_from_slice(&[10, 0, 2, 15]);
        reply[28..34].copy_from_slice(&request[28..34]);
        reply.extend_from_slice(&MAGIC);
        reply.extend_from_slice(&[53, 1, kind, 1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2]);
        reply.extend_from_slice(&[6, 4, 10, 0, 2, 3, 54, 4, 10, 0, 2, 2, 51, 4]);
        reply.extend_from_slice(&lease_secs.to_be_bytes());
        reply.push(255);
        reply
    }

    fn option(packet: &[u8], code: u8) -> Option<Vec<u8>> {
        let mut at = 240;
        while at < packet.len() && packet[at] != 255 {
            let (c, len) = (packet[at], usize::from(packet[at + 1]));
            if c == code {
                return Some(packet[at + 2..at + 2 + len].to_vec());
            }
            at += 2 + len;
        }
        None
    }

    fn bound(now: Instant) -> (DhcpClient, Vec<u8>) {
        let mut client = DhcpClient::new(MAC, 7, Some("moat".into()), now);
        let discover = client.poll_transmit().expect("discover at once");
        client.handle_packet(&server_reply(&discover, OFFER, 86400), now);
        let request = client.poll_transmit().expect("request after the offer");
        client.handle_packet(&server_reply(&request, ACK, 86400), now);
        (client, request)
    }

    #[test]
    fn discover_offer_request_ack_binds_a_lease() {
        let now = origin();
        let (mut client, request) = bound(now);
        assert_eq!(option(&request, 53), Some(vec![REQUEST]));
        assert_eq!(option(&request, 50), Some(vec![10, 0, 2, 15]));
        assert_eq!(option(&request, 54), Some(vec![10, 0, 2, 2]));
        assert_eq!(option(&request, 12), Some(b"moat".to_vec()));
        assert!(request.len() >= 300);
        let Some(DhcpEvent::Bound(lease)) = client.poll_event() else {
            panic!("no lease")
        };
        assert_eq!(lease.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(lease.prefix_len, 24);
        assert_eq!(lease.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(lease.dns, [Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(client.poll_timeout(), now + Duration::from_secs(43200));
        assert_eq!(client.poll_transmit(), None);
    }

    #[test]
    fn discovers_are_retransmitted_with_backoff() {
        let now = origin();
        let mut client = DhcpClient::new(MAC, 7, None, now);
        assert!(client.poll_transmit().is_some());
        client.handle_timeout(now + Duration::from_millis(500));
        assert_eq!(client.poll_transmit(), None, "not due yet");
        let mut at = now;
        let mut gaps = Vec::new();
        for _ in 0..5 {
            let next = client.poll_timeout();
            gaps.push((next - at).as_secs());
            at = next;
            client.handle_timeout(at);
            assert!(client.poll_transmit().is_some());
        }
        assert_eq!(gaps, [1, 2, 4, 8, 8]);
    }

    #[test]
    fn foreign_replies_are_ignored() {
        let now = origin();
        let mut client = DhcpClient::new(MAC, 7, None, now);
        let discover = client.poll_transmit().unwrap();
        let mut other = server_reply(&discover, OFFER, 60);
        other[4] ^= 1; // another transaction
        client.handle_packet(&other, now);
        client.handle_packet(&other[..100], now);
        assert_eq!(client.poll_transmit(), None);
        assert_eq!(client.poll_event(), None);
    }

    #[test]
    fn a_lease_is_renewed_at_t1_and_lost_at_expiry() {
        let now = origin();
        let (mut client, _) = bound(now);
        client.poll_event();
        let t1 = now + Duration::from_secs(43200);
        client.handle_timeout(t1);
        let renew = client.poll_transmit().expect("renew at T1");
        assert_eq!(renew[12..16], [10, 0, 2, 15], "ciaddr carries our address");
        assert_eq!(option(&renew, 50), None);
        // No answer: renewals go on until the lease runs out.
        let lost_at = loop {
            let at = client.poll_timeout();
            client.handle_timeout(at);
            if let Some(event) = client.poll_event() {
                assert_eq!(event, DhcpEvent::Lost);
                break at;
            }
            assert!(client.poll_transmit().is_some(), "a renewal at {at:?}");
        };
        assert!(lost_at >= now + Duration::from_secs(86400));
        let discover = client.poll_transmit().expect("starts over");
        assert_eq!(option(&discover, 53), Some(vec![DISCOVER]));
    }

    #[test]
    fn a_nak_starts_over() {
        let now = origin();
        let mut client = DhcpClient::new(MAC, 7, None, now);
        let discover = client.poll_transmit().unwrap();
        client.handle_packet(&server_reply(&discover, OFFER, 60), now);
        let request = client.poll_transmit().unwrap();
        client.handle_packet(&server_reply(&request, NAK, 60), now);
        let again = client.poll_transmit().expect("discover again");
        assert_eq!(option(&again, 53), Some(vec![DISCOVER]));
    }
}

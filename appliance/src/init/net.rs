//! The network shell: finds the interface, runs the DHCP state machine on a
//! UDP socket, applies addresses with netlink, asks SNTP servers the time.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::mpsc::Sender;
use std::time::Duration;

use moat_netproto::dhcp::{self, DhcpClient, DhcpEvent, Lease};
use moat_netproto::netlink as request;
use moat_netproto::sntp;
use socket2::{Domain, Protocol, Socket, Type};

use super::InitError;
use super::netlink;
use super::system;
use crate::clock;

/// A network interface.
#[derive(Debug, Clone)]
pub(super) struct Interface {
    pub(super) name: String,
    pub(super) index: u32,
    pub(super) mac: [u8; 6],
}

fn read_sys(name: &str, file: &str) -> Option<String> {
    fs::read_to_string(format!("/sys/class/net/{name}/{file}"))
        .ok()
        .map(|text| text.trim().to_owned())
}

fn interface(name: &str) -> Option<Interface> {
    let index = read_sys(name, "ifindex")?.parse().ok()?;
    let mut mac = [0u8; 6];
    let text = read_sys(name, "address")?;
    for (byte, hex) in mac.iter_mut().zip(text.split(':')) {
        *byte = u8::from_str_radix(hex, 16).ok()?;
    }
    Some(Interface {
        name: name.to_owned(),
        index,
        mac,
    })
}

/// Brings the loopback interface up (the kernel gives it 127.0.0.1/8).
pub(super) fn loopback_up() -> Result<(), InitError> {
    let lo = interface("lo").ok_or(InitError::NoInterface)?;
    netlink::apply(&[request::link_up(lo.index, 1)])?;
    Ok(())
}

/// The first Ethernet interface, waiting up to `wait` for its driver (USB
/// adapters on a Pi take seconds).
pub(super) fn ethernet(wait: Duration) -> Result<Interface, InitError> {
    let deadline = clock::now() + wait;
    loop {
        let mut names: Vec<String> = fs::read_dir("/sys/class/net")
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name != "lo" && read_sys(name, "type").as_deref() == Some("1"))
            .collect();
        names.sort();
        if let Some(found) = names.first().and_then(|name| interface(name)) {
            netlink::apply(&[request::link_up(found.index, 1)])?;
            return Ok(found);
        }
        if clock::now() >= deadline {
            return Err(InitError::NoInterface);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Configures a fixed address and default route.
pub(super) fn configure(
    iface: &Interface,
    address: Ipv4Addr,
    prefix_len: u8,
    gateway: Option<Ipv4Addr>,
) -> Result<(), InitError> {
    let mut requests = vec![request::address(iface.index, address, prefix_len, true, 2)];
    if let Some(gateway) = gateway {
        requests.push(request::default_route(iface.index, gateway, 3));
    }
    netlink::apply(&requests)?;
    Ok(())
}

/// Runs DHCP on `iface` for ever, applying every lease; each lease is also
/// sent to `bound`.
pub(super) fn run_dhcp(
    iface: &Interface,
    hostname: &str,
    bound: &Sender<Lease>,
) -> Result<(), InitError> {
    let io = |source| InitError::Io {
        what: format!("DHCP socket on {}", iface.name).into(),
        source,
    };
    let socket = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(io)?;
    socket.set_reuse_address(true).map_err(io)?;
    socket.set_broadcast(true).map_err(io)?;
    socket
        .bind_device(Some(iface.name.as_bytes()))
        .map_err(io)?;
    socket
        .bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, dhcp::CLIENT_PORT)).into())
        .map_err(io)?;
    let socket: UdpSocket = socket.into();
    let server = SocketAddrV4::new(Ipv4Addr::BROADCAST, dhcp::SERVER_PORT);
    let mut client = DhcpClient::new(
        iface.mac,
        rand::random(),
        Some(hostname.to_owned()),
        clock::now(),
    );
    let mut current: Option<Lease> = None;
    let mut buf = [0u8; 1500];
    loop {
        while let Some(packet) = client.poll_transmit() {
            if let Err(err) = socket.send_to(&packet, server) {
                eprintln!("moat init: DHCP send: {err}");
            }
        }
        while let Some(event) = client.poll_event() {
            match event {
                DhcpEvent::Bound(lease) => {
                    if current.as_ref().map(|l| l.address) != Some(lease.address) {
                        if let Some(old) = current.take() {
                            let _ = netlink::apply(&[request::address(
                                iface.index,
                                old.address,
                                old.prefix_len,
                                false,
                                4,
                            )]);
                        }
                        let gateway = lease
                            .gateway
                            .map_or("no gateway".into(), |gw| format!("via {gw}"));
                        eprintln!(
                            "moat init: {} is {}/{} {gateway} (DHCP from {}, {} s)",
                            iface.name,
                            lease.address,
                            lease.prefix_len,
                            lease.server,
                            lease.duration.as_secs()
                        );
                    }
                    if let Err(err) =
                        configure(iface, lease.address, lease.prefix_len, lease.gateway)
                    {
                        eprintln!("moat init: applying the DHCP lease: {err}");
                    }
                    let _ = bound.send(lease.clone());
                    current = Some(lease);
                }
                DhcpEvent::Lost => {
                    if let Some(old) = current.take() {
                        eprintln!("moat init: DHCP lease of {} lost", old.address);
                        let _ = netlink::apply(&[request::address(
                            iface.index,
                            old.address,
                            old.prefix_len,
                            false,
                            4,
                        )]);
                    }
                }
            }
        }
        let wait = client
            .poll_timeout()
            .saturating_duration_since(clock::now())
            .max(Duration::from_millis(10));
        socket.set_read_timeout(Some(wait)).map_err(io)?;
        match socket.recv(&mut buf) {
            Ok(len) => client.handle_packet(&buf[..len], clock::now()),
            Err(err)
                if matches!(
                    err.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(err) => {
                eprintln!("moat init: DHCP receive: {err}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        client.handle_timeout(clock::now());
    }
}

/// Asks every server for the time and sets the clock if the answers pass
/// `guard` (never below the image's floor; a step beyond a day only when
/// two servers agree). Returns whether the clock was set.
pub(super) fn sync_clock(servers: &[SocketAddr], guard: &sntp::ClockGuard) -> bool {
    let samples: Vec<sntp::Sample> = servers
        .iter()
        .enumerate()
        .filter_map(|(index, server)| match ask_time(*server) {
            Ok(unix_ms) => Some(sntp::Sample::new(index, unix_ms, clock::unix_now_ms())),
            Err(err) => {
                eprintln!("moat init: SNTP {server}: {err}");
                None
            }
        })
        .collect();
    let unix_ms = match guard.step(clock::unix_now_ms(), &samples) {
        Ok(unix_ms) => unix_ms,
        Err(refused) => {
            eprintln!("moat init: clock kept: {refused} (answers: {samples:?})");
            return false;
        }
    };
    match system::set_clock(unix_ms) {
        Ok(()) => {
            eprintln!("moat init: clock set by SNTP to {unix_ms} (unix ms)");
            true
        }
        Err(err) => {
            eprintln!("moat init: setting the clock: {err}");
            false
        }
    }
}

fn ask_time(server: SocketAddr) -> Result<u64, Box<dyn std::error::Error>> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(bind)?;
    socket.connect(server)?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let token: u64 = rand::random();
    let start = clock::now();
    socket.send(&sntp::request(token))?;
    let mut reply = [0u8; 128];
    let len = socket.recv(&mut reply)?;
    let elapsed = (clock::now() - start).as_millis() as u64;
    Ok(sntp::reply_time(&reply[..len], token, 0, elapsed)?)
}

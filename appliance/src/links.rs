//! The links this host is on and its IPv4 addresses on each: which
//! multicast groups mDNS joins, and which addresses answer a peer that
//! asks for this appliance's own name (over mDNS or DNS).

use std::net::{IpAddr, Ipv4Addr};

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;

/// One IPv4 address of an interface that is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LinkAddr {
    /// The address.
    pub(crate) addr: Ipv4Addr,
    /// Its prefix length.
    pub(crate) prefix: u8,
    /// Whether the interface is the loopback one.
    pub(crate) loopback: bool,
    /// Whether the interface can multicast.
    pub(crate) multicast: bool,
}

impl LinkAddr {
    /// Whether `peer` is on this address's subnet.
    pub(crate) fn holds(&self, peer: Ipv4Addr) -> bool {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(self.prefix))
            .unwrap_or(0);
        u32::from(peer) & mask == u32::from(self.addr) & mask
    }
}

/// The IPv4 addresses of the interfaces that are up.
pub(crate) fn scan() -> Vec<LinkAddr> {
    let Ok(interfaces) = getifaddrs() else {
        return Vec::new();
    };
    interfaces
        .filter(|interface| interface.flags.contains(InterfaceFlags::IFF_UP))
        .filter_map(|interface| {
            let addr = interface.address?.as_sockaddr_in()?.ip();
            let mask = interface.netmask?.as_sockaddr_in()?.ip();
            Some(LinkAddr {
                addr,
                prefix: u8::try_from(u32::from(mask).leading_ones()).unwrap_or(32),
                loopback: interface.flags.contains(InterfaceFlags::IFF_LOOPBACK),
                multicast: interface.flags.contains(InterfaceFlags::IFF_MULTICAST),
            })
        })
        .collect()
}

/// The addresses that answer `peer`: this host's on the peer's subnet;
/// failing that, every address not on the loopback interface; failing
/// that (a host on loopback only), every one.
pub(crate) fn addrs_for(links: &[LinkAddr], peer: IpAddr) -> Vec<IpAddr> {
    let on_subnet: Vec<IpAddr> = match peer {
        IpAddr::V4(peer) => links
            .iter()
            .filter(|link| link.holds(peer))
            .map(|link| IpAddr::V4(link.addr))
            .collect(),
        IpAddr::V6(_) => Vec::new(),
    };
    if !on_subnet.is_empty() {
        return on_subnet;
    }
    all_addrs(links)
}

/// Every address, the loopback ones only when there are no others.
pub(crate) fn all_addrs(links: &[LinkAddr]) -> Vec<IpAddr> {
    let outside: Vec<IpAddr> = links
        .iter()
        .filter(|link| !link.loopback)
        .map(|link| IpAddr::V4(link.addr))
        .collect();
    match outside.is_empty() {
        true => links.iter().map(|link| IpAddr::V4(link.addr)).collect(),
        false => outside,
    }
}

/// The link a peer is on: the address to send to it from.
pub(crate) fn link_of(links: &[LinkAddr], peer: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V4(peer) = peer else {
        return None;
    };
    links
        .iter()
        .find(|link| link.holds(peer))
        .map(|link| link.addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(addr: [u8; 4], prefix: u8, loopback: bool) -> LinkAddr {
        LinkAddr {
            addr: Ipv4Addr::from(addr),
            prefix,
            loopback,
            multicast: !loopback,
        }
    }

    #[test]
    fn a_peer_is_answered_with_the_address_on_its_subnet() {
        let links = [
            link([127, 0, 0, 1], 8, true),
            link([192, 168, 1, 20], 24, false),
            link([10, 0, 0, 5], 8, false),
        ];
        let peer = |ip: [u8; 4]| IpAddr::V4(Ipv4Addr::from(ip));
        assert_eq!(
            addrs_for(&links, peer([192, 168, 1, 7])),
            [peer([192, 168, 1, 20])]
        );
        assert_eq!(
            addrs_for(&links, peer([10, 9, 9, 9])),
            [peer([10, 0, 0, 5])]
        );
        assert_eq!(
            addrs_for(&links, peer([203, 0, 113, 1])),
            [peer([192, 168, 1, 20]), peer([10, 0, 0, 5])],
            "off every subnet: all but loopback"
        );
        assert_eq!(
            link_of(&links, peer([192, 168, 1, 7])),
            Some(Ipv4Addr::new(192, 168, 1, 20))
        );
        let only_loopback = [link([127, 0, 0, 1], 8, true)];
        assert_eq!(all_addrs(&only_loopback), [peer([127, 0, 0, 1])]);
    }

    #[test]
    fn prefixes_of_zero_and_thirty_two_hold_all_and_one() {
        assert!(link([10, 0, 0, 1], 0, false).holds(Ipv4Addr::new(203, 0, 113, 9)));
        assert!(link([10, 0, 0, 1], 32, false).holds(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(!link([10, 0, 0, 1], 32, false).holds(Ipv4Addr::new(10, 0, 0, 2)));
    }
}

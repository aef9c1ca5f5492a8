//! Where a question goes by the longest suffix of its name: the general
//! upstreams, a forward zone's upstreams, or nowhere (a local domain or a
//! private reverse zone with no forwarder, answered here; the appliance's
//! own name). Pure: a table built from the policy, read on the miss path.

use std::collections::HashMap;

use moat_proto::ApplianceName;

use crate::config::{DomainSuffix, ForwardTarget, Policy};

/// The locally served reverse zones of RFC 6303 §4 (and RFC 7793's shared
/// address space): never asked of the general upstreams.
const PRIVATE_REVERSE_ZONES: &[&str] = &[
    "10.in-addr.arpa",
    "16.172.in-addr.arpa",
    "17.172.in-addr.arpa",
    "18.172.in-addr.arpa",
    "19.172.in-addr.arpa",
    "20.172.in-addr.arpa",
    "21.172.in-addr.arpa",
    "22.172.in-addr.arpa",
    "23.172.in-addr.arpa",
    "24.172.in-addr.arpa",
    "25.172.in-addr.arpa",
    "26.172.in-addr.arpa",
    "27.172.in-addr.arpa",
    "28.172.in-addr.arpa",
    "29.172.in-addr.arpa",
    "30.172.in-addr.arpa",
    "31.172.in-addr.arpa",
    "168.192.in-addr.arpa",
    "0.in-addr.arpa",
    "127.in-addr.arpa",
    "254.169.in-addr.arpa",
    "2.0.192.in-addr.arpa",
    "100.51.198.in-addr.arpa",
    "113.0.203.in-addr.arpa",
    "255.255.255.255.in-addr.arpa",
    "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
    "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
    "d.f.ip6.arpa",
    "8.e.f.ip6.arpa",
    "9.e.f.ip6.arpa",
    "a.e.f.ip6.arpa",
    "b.e.f.ip6.arpa",
    "8.b.d.0.1.0.0.2.ip6.arpa",
];

/// RFC 7793: 64.100.in-addr.arpa to 127.100.in-addr.arpa.
const SHARED_ADDRESS_OCTETS: std::ops::RangeInclusive<u8> = 64..=127;

/// Where one question goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Route {
    /// The general upstreams.
    General,
    /// The upstreams of forward zone `n` (an index into the handler's
    /// forwarders).
    Forward(usize),
    /// Answered here, from the zone whose apex starts at this offset of
    /// the question's wire name.
    Local(LocalZone),
}

/// A zone answered here when nothing forwards it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LocalZone {
    /// Offset of the zone's apex in the question's wire name.
    pub apex_at: usize,
    /// What its names answer.
    pub kind: LocalKind,
}

/// What a locally served zone answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalKind {
    /// Nothing: NXDOMAIN below the apex, NODATA at it (RFC 6303).
    Empty,
    /// `localhost` and below: the loopback addresses (RFC 6761 §6.3).
    Loopback,
    /// The appliance's own name, `<name>` and `<name>.local` (not below):
    /// its addresses, the way Pi-hole answers `pi.hole`.
    OwnHost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    General,
    Forward(usize),
    Local(LocalKind),
}

/// The routing table: wire-form suffixes and where their names go.
#[derive(Debug, Default)]
pub(crate) struct Zones {
    suffixes: HashMap<Box<[u8]>, Entry>,
    own_names: Vec<Box<[u8]>>,
}

impl Zones {
    /// The table for `policy`: private reverse zones and local domains
    /// answered here, forward zones over them on an equal suffix. Forward
    /// zones with upstreams of their own are numbered in the order of
    /// `Policy::forward_zones`.
    pub(crate) fn new(policy: &Policy) -> Self {
        let mut zones = Self::default();
        let shared = SHARED_ADDRESS_OCTETS.map(|octet| format!("{octet}.100.in-addr.arpa"));
        let private = PRIVATE_REVERSE_ZONES.iter().map(|zone| zone.to_string());
        for zone in private.chain(shared) {
            let suffix: DomainSuffix = zone.parse().expect("RFC 6303 zones parse");
            zones.insert(&suffix, Entry::Local(LocalKind::Empty));
        }
        for domain in &policy.local_domains {
            let kind = match domain.as_str() {
                "localhost" => LocalKind::Loopback,
                _ => LocalKind::Empty,
            };
            zones.insert(domain, Entry::Local(kind));
        }
        let mut forwarders = 0;
        for zone in policy.forward_zones() {
            let entry = match zone.target {
                ForwardTarget::General => Entry::General,
                ForwardTarget::Upstreams(_) => {
                    forwarders += 1;
                    Entry::Forward(forwarders - 1)
                }
            };
            for domain in &zone.domains {
                zones.insert(domain, entry);
            }
        }
        zones
    }

    /// This table, answering `name` and `name.local` with the appliance's
    /// own addresses.
    pub(crate) fn with_own_name(mut self, name: &ApplianceName) -> Self {
        let label = name.as_str().to_ascii_lowercase();
        for own in [label.clone(), format!("{label}.local")] {
            if let Ok(suffix) = own.parse::<DomainSuffix>() {
                self.own_names.push(suffix.to_wire().into());
            }
        }
        self
    }

    fn insert(&mut self, suffix: &DomainSuffix, entry: Entry) {
        self.suffixes.insert(suffix.to_wire().into(), entry);
    }

    /// Where `name` (lower-case wire form) goes: its longest listed
    /// suffix decides, the general upstreams when none is listed.
    pub(crate) fn route(&self, name: &[u8]) -> Route {
        if self.own_names.iter().any(|own| **own == *name) {
            let kind = LocalKind::OwnHost;
            return Route::Local(LocalZone { apex_at: 0, kind });
        }
        let mut at = 0;
        while let Some(&len) = name.get(at)
            && len != 0
        {
            if let Some(entry) = self.suffixes.get(&name[at..]) {
                return match *entry {
                    Entry::General => Route::General,
                    Entry::Forward(index) => Route::Forward(index),
                    Entry::Local(kind) => Route::Local(LocalZone { apex_at: at, kind }),
                };
            }
            at += 1 + len as usize;
        }
        Route::General
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn zones(policy: &str) -> Zones {
        let text = format!("[policy]\nupstreams = [\"udp://192.0.2.53\"{policy}]\n");
        Zones::new(&Config::parse(&text, "t").unwrap().policy)
    }

    fn wire(name: &str) -> Vec<u8> {
        name.parse::<DomainSuffix>().unwrap().to_wire()
    }

    #[test]
    fn the_longest_suffix_wins() {
        let zones = zones(
            ", \"[/lan/]udp://192.168.1.1\", \"[/tv.lan/]udp://192.168.1.2\", \"[/public.lan/]#\"",
        );
        assert_eq!(zones.route(&wire("printer.lan")), Route::Forward(0));
        assert_eq!(zones.route(&wire("lan")), Route::Forward(0));
        assert_eq!(zones.route(&wire("a.tv.lan")), Route::Forward(1));
        assert_eq!(zones.route(&wire("www.public.lan")), Route::General);
        assert_eq!(zones.route(&wire("example.com")), Route::General);
        assert_eq!(zones.route(b"\x00"), Route::General, "the root");
        assert_eq!(
            zones.route(&wire("xlan")),
            Route::General,
            "labels, not bytes"
        );
    }

    #[test]
    fn private_reverse_zones_and_local_domains_stay_here_unless_forwarded() {
        let zones = zones(", \"[/168.192.in-addr.arpa/]udp://192.168.1.1\"");
        assert_eq!(
            zones.route(&wire("1.1.168.192.in-addr.arpa")),
            Route::Forward(0)
        );
        let empty = |apex_at| {
            Route::Local(LocalZone {
                apex_at,
                kind: LocalKind::Empty,
            })
        };
        assert_eq!(zones.route(&wire("4.3.2.10.in-addr.arpa")), empty(6));
        assert_eq!(zones.route(&wire("1.64.100.in-addr.arpa")), empty(2));
        assert_eq!(
            zones.route(&wire("1.0.0.0.8.e.f.ip6.arpa")),
            empty(8),
            "IPv6 link-local"
        );
        assert_eq!(zones.route(&wire("8.8.8.8.in-addr.arpa")), Route::General);
        assert_eq!(zones.route(&wire("nas.home.arpa")), empty(4));
        assert_eq!(
            zones.route(&wire("a.localhost")),
            Route::Local(LocalZone {
                apex_at: 2,
                kind: LocalKind::Loopback
            })
        );
    }

    #[test]
    fn the_own_name_and_its_local_form_answer_here_but_not_names_below() {
        let zones = zones(", \"[/local/]udp://192.168.1.1\"").with_own_name(&"HQ".parse().unwrap());
        let own = Route::Local(LocalZone {
            apex_at: 0,
            kind: LocalKind::OwnHost,
        });
        assert_eq!(zones.route(&wire("hq")), own);
        assert_eq!(zones.route(&wire("hq.local")), own);
        assert_eq!(zones.route(&wire("printer.hq.local")), Route::Forward(0));
        assert_eq!(zones.route(&wire("hqx.local")), Route::Forward(0));
    }
}

//! Browsing for a DNS-SD service (RFC 6763 §4): the question to send and
//! what the answers say, gathered into the instances found, with bounds a
//! hostile responder cannot push past.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, Query};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// The most instances one browse keeps.
pub(crate) const MAX_INSTANCES: usize = 32;
/// The most addresses kept per host.
const MAX_ADDRS: usize = 8;

/// A service instance found on the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Found {
    /// The instance's own label (an appliance's name).
    pub(crate) instance: String,
    /// The port it serves on.
    pub(crate) port: u16,
    /// Its host's addresses.
    pub(crate) addrs: Vec<IpAddr>,
    /// Its TXT strings (`key=value`).
    pub(crate) txt: Vec<String>,
}

impl Found {
    /// The value of TXT key `key`.
    pub(crate) fn txt(&self, key: &str) -> Option<&str> {
        self.txt
            .iter()
            .find_map(|entry| entry.strip_prefix(key)?.strip_prefix('='))
    }
}

/// One browse for a service type: the records heard so far.
#[derive(Debug)]
pub(crate) struct Browse {
    service: Name,
    instances: Vec<Name>,
    records: Vec<Record>,
}

/// The most records kept from all answers together.
const MAX_RECORDS: usize = 512;

impl Browse {
    /// A browse for `service` (such as `_moat-sync._udp.local.`).
    pub(crate) fn new(service: &str) -> Option<Self> {
        Some(Self {
            service: Name::from_ascii(service).ok()?,
            instances: Vec::new(),
            records: Vec::new(),
        })
    }

    /// The question to multicast: a PTR query for the service type.
    pub(crate) fn query(&self, id: u16) -> Vec<u8> {
        let mut message = Message::query();
        message.metadata.id = id;
        message.queries = vec![Query::query(self.service.clone(), RecordType::PTR)];
        message.to_vec().unwrap_or_default()
    }

    /// Takes in a received packet; anything but a response is ignored.
    pub(crate) fn hear(&mut self, packet: &[u8]) {
        let Ok(message) = Message::from_vec(packet) else {
            return;
        };
        if message.metadata.message_type != MessageType::Response {
            return;
        }
        for record in message.answers.into_iter().chain(message.additionals) {
            if let RData::PTR(ptr) = &record.data
                && record.name == self.service
                && !self.instances.contains(&ptr.0)
                && self.instances.len() < MAX_INSTANCES
            {
                self.instances.push(ptr.0.clone());
            }
            if self.records.len() < MAX_RECORDS {
                self.records.push(record);
            }
        }
    }

    /// The instances heard whose port and addresses are known.
    pub(crate) fn found(&self) -> Vec<Found> {
        self.instances
            .iter()
            .filter_map(|instance| self.resolve(instance))
            .collect()
    }

    fn resolve(&self, instance: &Name) -> Option<Found> {
        let records = &self.records;
        let owned = |name: &Name| {
            let name = name.clone();
            records.iter().filter(move |record| record.name == name)
        };
        let srv = owned(instance).find_map(|record| match &record.data {
            RData::SRV(srv) => Some(srv.clone()),
            _ => None,
        })?;
        let mut addrs: Vec<IpAddr> = Vec::new();
        for record in owned(&srv.target) {
            let addr = match &record.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                _ => continue,
            };
            if !addrs.contains(&addr) && addrs.len() < MAX_ADDRS {
                addrs.push(addr);
            }
        }
        if addrs.is_empty() {
            return None;
        }
        let txt = owned(instance)
            .filter_map(|record| match &record.data {
                RData::TXT(txt) => Some(txt.txt_data.clone()),
                _ => None,
            })
            .flat_map(|strings| strings.into_vec())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .collect();
        let label = instance.iter().next()?;
        Some(Found {
            instance: String::from_utf8_lossy(label).into_owned(),
            port: srv.port,
            addrs,
            txt,
        })
    }
}

//! Local records (typed by `config`) → the local-records plugin's data:
//! each name's records in DNS wire form, indexed by name hash; PTR records
//! made from A and AAAA.

use std::collections::BTreeMap;
use std::net::IpAddr;

use moat_plugin_abi::{RECORDS_HEADER_LEN, RECORDS_MAGIC, name_hash};

use crate::config::{LocalRecord, RecordData, RecordName};

/// Records by owner: exact names and wildcard suffixes apart, each with
/// the origin number of the rule that gave its first record.
#[derive(Debug, Default)]
pub(super) struct Owners {
    exact: BTreeMap<String, (Vec<u8>, u16)>,
    wildcard: BTreeMap<String, (Vec<u8>, u16)>,
}

/// Encodes the local records (and their PTRs when `auto_ptr`) as plugin data.
pub(super) fn encode(records: &[LocalRecord], auto_ptr: bool) -> Vec<u8> {
    let mut owners = Owners::default();
    for record in records {
        let name = &record.name;
        owners.push(
            &name.name,
            name.subdomains,
            (type_code(&record.data), record.ttl, &rdata(&record.data)),
            0,
        );
        let address = match record.data {
            RecordData::A(v4) => IpAddr::V4(v4),
            RecordData::Aaaa(v6) => IpAddr::V6(v6),
            _ => continue,
        };
        if auto_ptr && !name.subdomains {
            let pointer = (12, record.ttl, &wire_name(&name.name)[..]);
            owners.push(&reverse_name(address), false, pointer, 0);
        }
    }
    owners.encode().0
}

/// A record without its owner: type, TTL, RDATA.
pub(super) type Record<'a> = (u16, u32, &'a [u8]);

/// The A or AAAA record answering `address`.
pub(super) fn address_record(address: &IpAddr, ttl: u32) -> (u16, u32, Vec<u8>) {
    match address {
        IpAddr::V4(v4) => (1, ttl, v4.octets().to_vec()),
        IpAddr::V6(v6) => (28, ttl, v6.octets().to_vec()),
    }
}

impl Owners {
    /// Adds a record of `name` (of the names below it when `wildcard`),
    /// unless the owner has it already.
    pub(super) fn push(&mut self, name: &str, wildcard: bool, record: Record<'_>, origin: u16) {
        let owners = if wildcard {
            &mut self.wildcard
        } else {
            &mut self.exact
        };
        let (records, _) = owners
            .entry(name.to_owned())
            .or_insert_with(|| (Vec::new(), origin));
        let mut encoded = Vec::with_capacity(8 + record.2.len());
        push_record(&mut encoded, record);
        if !holds(records, &encoded) {
            records.extend_from_slice(&encoded);
        }
    }

    /// Owners with records.
    pub(super) fn len(&self) -> usize {
        self.exact.len() + self.wildcard.len()
    }

    /// The records data, and each index entry's origin, in index order.
    pub(super) fn encode(&self) -> (Vec<u8>, Vec<u16>) {
        let mut records = Vec::new();
        let mut index = |owners: &BTreeMap<String, (Vec<u8>, u16)>| {
            let mut entries: Vec<(u64, u32, u32, u16)> = owners
                .iter()
                .map(|(name, (data, origin))| {
                    let offset = records.len() as u32;
                    records.extend_from_slice(data);
                    (
                        name_hash(name.as_bytes()),
                        offset,
                        data.len() as u32,
                        *origin,
                    )
                })
                .collect();
            entries.sort_unstable();
            entries
        };
        let exact = index(&self.exact);
        let wildcard = index(&self.wildcard);
        let mut data = Vec::with_capacity(
            RECORDS_HEADER_LEN + (exact.len() + wildcard.len()) * 16 + records.len(),
        );
        data.extend_from_slice(&RECORDS_MAGIC);
        for count in [exact.len(), wildcard.len(), records.len()] {
            data.extend_from_slice(&(count as u32).to_le_bytes());
        }
        for (hash, offset, len, _) in exact.iter().chain(&wildcard) {
            data.extend_from_slice(&hash.to_le_bytes());
            data.extend_from_slice(&offset.to_le_bytes());
            data.extend_from_slice(&len.to_le_bytes());
        }
        data.extend_from_slice(&records);
        let origins = exact.iter().chain(&wildcard).map(|entry| entry.3).collect();
        (data, origins)
    }
}

/// Whether `records` (an owner's, one after another) hold `record`.
fn holds(records: &[u8], record: &[u8]) -> bool {
    let mut at = 0;
    while at + 8 <= records.len() {
        let end = at + 8 + usize::from(u16::from_be_bytes([records[at + 6], records[at + 7]]));
        if records.get(at..end) == Some(record) {
            return true;
        }
        at = end;
    }
    false
}

fn push_record(into: &mut Vec<u8>, (kind, ttl, rdata): Record<'_>) {
    into.extend_from_slice(&kind.to_be_bytes());
    into.extend_from_slice(&ttl.to_be_bytes());
    into.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    into.extend_from_slice(rdata);
}

fn type_code(data: &RecordData) -> u16 {
    match data {
        RecordData::A(_) => 1,
        RecordData::Cname(_) => 5,
        RecordData::Ptr(_) => 12,
        RecordData::Mx { .. } => 15,
        RecordData::Txt(_) => 16,
        RecordData::Aaaa(_) => 28,
        RecordData::Srv { .. } => 33,
    }
}

/// The RDATA of a record in DNS wire form.
fn rdata(data: &RecordData) -> Vec<u8> {
    let name = |name: &RecordName| wire_name(name.as_str());
    match data {
        RecordData::A(v4) => v4.octets().to_vec(),
        RecordData::Aaaa(v6) => v6.octets().to_vec(),
        RecordData::Cname(target) | RecordData::Ptr(target) => name(target),
        RecordData::Txt(text) => {
            let mut rdata = Vec::new();
            for chunk in text.as_bytes().chunks(255) {
                rdata.push(chunk.len() as u8);
                rdata.extend_from_slice(chunk);
            }
            if rdata.is_empty() {
                rdata.push(0);
            }
            rdata
        }
        RecordData::Mx {
            preference,
            exchange,
        } => [&preference.to_be_bytes()[..], &name(exchange)].concat(),
        RecordData::Srv {
            priority,
            weight,
            port,
            target,
        } => [
            &priority.to_be_bytes()[..],
            &weight.to_be_bytes(),
            &port.to_be_bytes(),
            &name(target),
        ]
        .concat(),
    }
}

/// A valid dotted name (a record's owner or target) in uncompressed wire form.
fn wire_name(name: &str) -> Vec<u8> {
    let mut wire = Vec::with_capacity(name.len() + 2);
    for label in name.split('.') {
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    wire
}

/// The reverse-lookup name of an address (in-addr.arpa / ip6.arpa).
fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut name = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                name.push_str(&format!("{:x}.{:x}.", byte & 0x0f, byte >> 4));
            }
            name.push_str("ip6.arpa");
            name
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_names() {
        assert_eq!(
            reverse_name("192.168.1.10".parse().unwrap()),
            "10.1.168.192.in-addr.arpa"
        );
        assert!(reverse_name("2001:db8::1".parse().unwrap()).starts_with("1.0.0.0.0.0.0.0"));
        assert!(reverse_name("2001:db8::1".parse().unwrap()).ends_with("8.b.d.0.1.0.0.2.ip6.arpa"));
    }
}

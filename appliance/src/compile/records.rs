//! Local records (typed by `config`) → the local-records plugin's data:
//! each name's records in DNS wire form, indexed by name hash; PTR records
//! made from A and AAAA.

use std::collections::BTreeMap;
use std::net::IpAddr;

use moat_plugin_abi::{RECORDS_HEADER_LEN, RECORDS_MAGIC, name_hash};

use crate::config::{LocalRecord, RecordData, RecordName};

/// Records by owner: exact names and wildcard suffixes apart.
#[derive(Debug, Default)]
struct Owners {
    exact: BTreeMap<String, Vec<u8>>,
    wildcard: BTreeMap<String, Vec<u8>>,
}

/// Encodes the local records (and their PTRs when `auto_ptr`) as plugin data.
pub(super) fn encode(records: &[LocalRecord], auto_ptr: bool) -> Vec<u8> {
    let mut owners = Owners::default();
    for record in records {
        let owner = if record.name.subdomains {
            &mut owners.wildcard
        } else {
            &mut owners.exact
        };
        push_record(
            owner.entry(record.name.name.clone()).or_default(),
            type_code(&record.data),
            record.ttl,
            &rdata(&record.data),
        );
        let address = match record.data {
            RecordData::A(v4) => IpAddr::V4(v4),
            RecordData::Aaaa(v6) => IpAddr::V6(v6),
            _ => continue,
        };
        if auto_ptr && !record.name.subdomains {
            let pointer = owners.exact.entry(reverse_name(address)).or_default();
            push_record(pointer, 12, record.ttl, &wire_name(&record.name.name));
        }
    }
    owners.encode()
}

impl Owners {
    fn encode(&self) -> Vec<u8> {
        let mut records = Vec::new();
        let mut index = |owners: &BTreeMap<String, Vec<u8>>| {
            let mut entries: Vec<(u64, u32, u32)> = owners
                .iter()
                .map(|(name, data)| {
                    let offset = records.len() as u32;
                    records.extend_from_slice(data);
                    (name_hash(name.as_bytes()), offset, data.len() as u32)
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
        for (hash, offset, len) in exact.iter().chain(&wildcard) {
            data.extend_from_slice(&hash.to_le_bytes());
            data.extend_from_slice(&offset.to_le_bytes());
            data.extend_from_slice(&len.to_le_bytes());
        }
        data.extend_from_slice(&records);
        data
    }
}

fn push_record(into: &mut Vec<u8>, kind: u16, ttl: u32, rdata: &[u8]) {
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

//! Local records → the local-records plugin's data: each name's records
//! in DNS wire form, indexed by name hash; PTR records made from A and AAAA.

use std::collections::BTreeMap;
use std::net::IpAddr;

use moat_plugin_abi::{RECORDS_HEADER_LEN, RECORDS_MAGIC, name_hash};

use crate::config::{LocalRecord, NameRule, RecordKind};

/// Why a local record cannot be compiled.
#[derive(Debug, thiserror::Error)]
#[error("local record `{name}` {kind:?}: {reason}")]
pub struct RecordError {
    /// The record's name.
    pub name: String,
    /// Its type.
    pub kind: RecordKind,
    /// What is wrong with its value.
    pub reason: String,
}

/// Records by owner: exact names and wildcard suffixes apart.
#[derive(Debug, Default)]
struct Owners {
    exact: BTreeMap<String, Vec<u8>>,
    wildcard: BTreeMap<String, Vec<u8>>,
}

/// Encodes the local records (and their PTRs when `auto_ptr`) as plugin data.
pub(super) fn encode(records: &[LocalRecord], auto_ptr: bool) -> Result<Vec<u8>, RecordError> {
    let mut owners = Owners::default();
    for record in records {
        let rdata = rdata(record)?;
        let owner = if record.name.subdomains {
            &mut owners.wildcard
        } else {
            &mut owners.exact
        };
        push_record(
            owner.entry(record.name.name.clone()).or_default(),
            type_code(record.kind),
            record.ttl,
            &rdata,
        );
        if auto_ptr
            && !record.name.subdomains
            && matches!(record.kind, RecordKind::A | RecordKind::Aaaa)
        {
            let ip: IpAddr = record.value.parse().expect("checked by rdata");
            let pointer = owners.exact.entry(reverse_name(ip)).or_default();
            push_record(
                pointer,
                12,
                record.ttl,
                &wire_name(&record.name.name).expect("a valid rule name"),
            );
        }
    }
    Ok(owners.encode())
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

fn type_code(kind: RecordKind) -> u16 {
    match kind {
        RecordKind::A => 1,
        RecordKind::Cname => 5,
        RecordKind::Ptr => 12,
        RecordKind::Mx => 15,
        RecordKind::Txt => 16,
        RecordKind::Aaaa => 28,
        RecordKind::Srv => 33,
    }
}

/// Checks a record's value, for configuration checks.
pub(crate) fn check(record: &LocalRecord) -> Result<(), RecordError> {
    rdata(record).map(drop)
}

/// The RDATA of a record, from its configured value.
fn rdata(record: &LocalRecord) -> Result<Vec<u8>, RecordError> {
    let error = |reason: &str| RecordError {
        name: record.name.to_string(),
        kind: record.kind,
        reason: reason.to_owned(),
    };
    let value = record.value.trim();
    let numbers = |count: usize| -> Result<(Vec<u16>, Vec<u8>), RecordError> {
        let fields: Vec<&str> = value.split_whitespace().collect();
        if fields.len() != count + 1 {
            return Err(error(&format!(
                "expected {count} numbers and a name, got `{value}`"
            )));
        }
        let numbers = fields[..count]
            .iter()
            .map(|field| {
                field
                    .parse::<u16>()
                    .map_err(|_| error(&format!("`{field}` is not a number 0-65535")))
            })
            .collect::<Result<Vec<u16>, _>>()?;
        let target = wire_name(fields[count])
            .ok_or_else(|| error(&format!("`{}` is not a name", fields[count])))?;
        Ok((numbers, target))
    };
    Ok(match record.kind {
        RecordKind::A => match value.parse::<IpAddr>() {
            Ok(IpAddr::V4(v4)) => v4.octets().to_vec(),
            _ => return Err(error(&format!("`{value}` is not an IPv4 address"))),
        },
        RecordKind::Aaaa => match value.parse::<IpAddr>() {
            Ok(IpAddr::V6(v6)) => v6.octets().to_vec(),
            _ => return Err(error(&format!("`{value}` is not an IPv6 address"))),
        },
        RecordKind::Cname | RecordKind::Ptr => {
            wire_name(value).ok_or_else(|| error(&format!("`{value}` is not a name")))?
        }
        RecordKind::Txt => {
            let mut rdata = Vec::new();
            for chunk in value.as_bytes().chunks(255) {
                rdata.push(chunk.len() as u8);
                rdata.extend_from_slice(chunk);
            }
            if rdata.is_empty() {
                rdata.push(0);
            }
            rdata
        }
        RecordKind::Mx => {
            let (numbers, target) = numbers(1)?;
            [&numbers[0].to_be_bytes()[..], &target].concat()
        }
        RecordKind::Srv => {
            let (numbers, target) = numbers(3)?;
            let mut rdata: Vec<u8> = numbers
                .iter()
                .flat_map(|number| number.to_be_bytes())
                .collect();
            rdata.extend_from_slice(&target);
            rdata
        }
    })
}

/// A dotted name in uncompressed wire form.
fn wire_name(name: &str) -> Option<Vec<u8>> {
    let rule: NameRule = name.parse().ok()?;
    if rule.subdomains {
        return None;
    }
    let mut wire = Vec::with_capacity(rule.name.len() + 2);
    for label in rule.name.split('.') {
        wire.push(label.len() as u8);
        wire.extend_from_slice(label.as_bytes());
    }
    wire.push(0);
    Some(wire)
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

//! An example plugin: a kiosk allowlist. For the configured clients only
//! the configured names (each with every name below it) resolve; every
//! other name is refused, or answered with the configured addresses. Other
//! clients are not its business. Its `[[policy.plugins]]` config:
//!
//! ```toml
//! clients = ["192.168.5.0/24", "fd00::5"]
//! names = ["kiosk.example", "cdn.example"]
//! answer = ["192.168.1.10", "fd00::10"]  # none: REFUSED
//! answer_ttl = 60                         # seconds, 60 unless given
//! ```
//!
//! With `answer`, an A question gets its IPv4 addresses, an AAAA question
//! its IPv6 ones, and any other type no records (NODATA). The decision is
//! [`decide`], pure, tested on the host; nothing is allocated.
#![cfg_attr(not(test), no_std)]

use moat_plugin_abi::{ConfigLines, Query, in_range, name_covers, parse_u32, parse_v4, parse_v6};

#[cfg(target_arch = "wasm32")]
mod exports;

/// What the kiosk does with a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kiosk<'a> {
    /// Not a kiosk client, or a listed name: the rest of the chain decides.
    Pass,
    /// A kiosk client asked for a name not listed: REFUSED.
    Refuse {
        /// The client range that made it a kiosk client.
        range: &'a [u8],
    },
    /// The same, answered with the configured addresses.
    Answer {
        /// The client range that made it a kiosk client.
        range: &'a [u8],
    },
}

/// What the configuration makes of `query`.
pub fn decide<'a>(config: ConfigLines<'a>, query: &Query<'_>) -> Kiosk<'a> {
    let Some(range) = config
        .values(b"clients")
        .find(|range| in_range(range, &query.client))
    else {
        return Kiosk::Pass;
    };
    if config
        .values(b"names")
        .any(|listed| name_covers(listed, query.name))
    {
        return Kiosk::Pass;
    }
    match config.values(b"answer").next() {
        Some(_) => Kiosk::Answer { range },
        None => Kiosk::Refuse { range },
    }
}

/// Writes the configured addresses of type `qtype` into `out` in the
/// answer buffer's form (a record count, then type, TTL, RDATA length and
/// RDATA per record); gives the bytes written. Addresses that do not fit
/// are left out.
pub fn write_answer(config: ConfigLines<'_>, qtype: u16, out: &mut [u8]) -> usize {
    const A: u16 = 1;
    const AAAA: u16 = 28;
    let ttl = config
        .values(b"answer_ttl")
        .next()
        .and_then(parse_u32)
        .unwrap_or(60);
    let mut at = 2;
    let mut count: u16 = 0;
    for value in config.values(b"answer") {
        let mut rdata = [0u8; 16];
        let len = match (qtype, parse_v4(value), parse_v6(value)) {
            (A, Some(v4), _) => {
                rdata[..4].copy_from_slice(&v4);
                4
            }
            (AAAA, _, Some(v6)) => {
                rdata = v6;
                16
            }
            _ => continue,
        };
        let Some(record) = out.get_mut(at..at + 8 + len) else {
            break;
        };
        record[..2].copy_from_slice(&qtype.to_be_bytes());
        record[2..6].copy_from_slice(&ttl.to_be_bytes());
        record[6..8].copy_from_slice(&(len as u16).to_be_bytes());
        record[8..].copy_from_slice(&rdata[..len]);
        at += 8 + len;
        count += 1;
    }
    out[..2].copy_from_slice(&count.to_be_bytes());
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_plugin_abi::{config_header, mapped_v4};

    fn config(lines: &str) -> Vec<u8> {
        [&config_header(lines.len())[..], lines.as_bytes()].concat()
    }

    fn query(name: &str, client: [u8; 4]) -> Query<'_> {
        Query {
            client: mapped_v4(client),
            unix_time: 0,
            group: b"",
            name: name.as_bytes(),
        }
    }

    const KIOSK: &str = "clients=192.168.5.0/24\nclients=127.0.0.2\n\
        names=kiosk.example\nnames=cdn.example\n";

    fn with<T>(lines: &str, then: impl FnOnce(ConfigLines<'_>) -> T) -> T {
        let data = config(lines);
        then(ConfigLines::new(&data).unwrap())
    }

    #[test]
    fn a_kiosk_client_reaches_only_the_listed_names() {
        with(KIOSK, |config| {
            let kiosk = [192, 168, 5, 40];
            assert_eq!(decide(config, &query("kiosk.example", kiosk)), Kiosk::Pass);
            assert_eq!(
                decide(config, &query("img.cdn.example", kiosk)),
                Kiosk::Pass,
                "names below a listed one"
            );
            let range = b"192.168.5.0/24".as_slice();
            assert_eq!(
                decide(config, &query("social.example", kiosk)),
                Kiosk::Refuse { range }
            );
            assert_eq!(
                decide(config, &query("notkiosk.example", kiosk)),
                Kiosk::Refuse { range },
                "a label boundary"
            );
            assert_eq!(
                decide(config, &query("social.example", [127, 0, 0, 2])),
                Kiosk::Refuse {
                    range: b"127.0.0.2"
                }
            );
        });
    }

    #[test]
    fn other_clients_are_not_its_business() {
        with(KIOSK, |config| {
            for client in [[192, 168, 6, 1], [127, 0, 0, 3], [10, 0, 0, 1]] {
                assert_eq!(
                    decide(config, &query("social.example", client)),
                    Kiosk::Pass
                );
            }
        });
        with("names=kiosk.example\n", |config| {
            assert_eq!(
                decide(config, &query("social.example", [192, 168, 5, 1])),
                Kiosk::Pass,
                "no clients: nobody is a kiosk"
            );
        });
    }

    #[test]
    fn a_configured_answer_replaces_the_refusal() {
        let lines = format!("{KIOSK}answer=192.168.1.10\nanswer=fd00::10\nanswer_ttl=30\n");
        with(&lines, |config| {
            let kiosk = [192, 168, 5, 40];
            assert_eq!(
                decide(config, &query("social.example", kiosk)),
                Kiosk::Answer {
                    range: b"192.168.5.0/24"
                }
            );
            let mut out = [0u8; 64];
            let len = write_answer(config, 1, &mut out);
            assert_eq!(
                &out[..len],
                &[0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 192, 168, 1, 10],
                "one A record"
            );
            let len = write_answer(config, 28, &mut out);
            assert_eq!(len, 2 + 8 + 16);
            assert_eq!(&out[..2], &[0, 1]);
            assert_eq!(&out[10..12], &[0xfd, 0]);
            assert_eq!(write_answer(config, 16, &mut out), 2, "TXT: no records");
            assert_eq!(&out[..2], &[0, 0]);
            let mut small = [0u8; 12];
            assert_eq!(
                write_answer(config, 1, &mut small),
                2,
                "what does not fit is left out"
            );
        });
    }
}

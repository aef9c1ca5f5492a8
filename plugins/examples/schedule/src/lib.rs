//! An example plugin: a schedule. It blocks the configured names (each
//! covers itself and every name below it) for the configured clients
//! between two times of day, on the configured weekdays. Its
//! `[[policy.plugins]]` config:
//!
//! ```toml
//! names = ["social.example", "video.example"]
//! clients = ["192.168.1.0/24", "fd00::23"]  # none: every client
//! groups = ["kids"]                          # matched with the client's group
//! days = ["mon", "tue", "wed", "thu", "fri"] # none: every day
//! from = "21:00"
//! until = "07:00"                            # before `from`: past midnight
//! utc_offset_minutes = 60                    # the local time zone
//! ```
//!
//! A window past midnight belongs to the day it starts on (Friday
//! 21:00–07:00 blocks Saturday 02:00). A client is covered when it is in
//! `clients` or its group in `groups`; with neither list, every client is.
//! Everything is read from the configuration lines on each call: nothing
//! is allocated. The decision itself is [`decide`], pure, tested on the
//! host; [`holds_until`] says when it may change (the next `from` or
//! `until`), so Moat keeps a verdict with its cached answer until then.
#![cfg_attr(not(test), no_std)]

use moat_plugin_abi::{ConfigLines, Query, in_range, name_covers, parse_u32};

#[cfg(target_arch = "wasm32")]
mod exports;

/// Whether the configuration blocks `query`.
pub fn decide(config: ConfigLines<'_>, query: &Query<'_>) -> bool {
    names_cover(config, query.name) && covers_client(config, query) && in_window(config, query)
}

/// The Unix second from which [`decide`] may decide `query` otherwise:
/// the next `from` or `until` for a listed name and a covered client,
/// `None` (never) for the others or a broken window.
pub fn holds_until(config: ConfigLines<'_>, query: &Query<'_>) -> Option<u64> {
    if !(names_cover(config, query.name) && covers_client(config, query)) {
        return None;
    }
    let (from, until) = window(config)?;
    let local = query.unix_time as i64 + utc_offset_minutes(config) * 60;
    let second = local.rem_euclid(86_400);
    let next = |minute: u32| {
        let delta = (i64::from(minute) * 60 - second).rem_euclid(86_400);
        if delta == 0 { 86_400 } else { delta }
    };
    Some(
        query
            .unix_time
            .saturating_add(next(from).min(next(until)) as u64),
    )
}

/// Whether the name (or a name above it) is listed; gives the listed one.
pub fn listed_name<'a>(config: ConfigLines<'a>, name: &[u8]) -> Option<&'a [u8]> {
    config
        .values(b"names")
        .find(|listed| name_covers(listed, name))
}

fn names_cover(config: ConfigLines<'_>, name: &[u8]) -> bool {
    listed_name(config, name).is_some()
}

fn covers_client(config: ConfigLines<'_>, query: &Query<'_>) -> bool {
    let mut any = false;
    for range in config.values(b"clients") {
        any = true;
        if in_range(range, &query.client) {
            return true;
        }
    }
    for group in config.values(b"groups") {
        any = true;
        if !query.group.is_empty() && group == query.group {
            return true;
        }
    }
    !any
}

fn in_window(config: ConfigLines<'_>, query: &Query<'_>) -> bool {
    let Some((from, until)) = window(config) else {
        return false;
    };
    let local = query.unix_time as i64 / 60 + utc_offset_minutes(config);
    let minute = local.rem_euclid(24 * 60) as u32;
    // 1970-01-01 was a Thursday; 0 is Sunday.
    let day = (local.div_euclid(24 * 60) + 4).rem_euclid(7) as u32;
    let day_listed = |day: u32| {
        let mut any = false;
        for name in config.values(b"days") {
            any = true;
            if weekday(name) == Some(day) {
                return true;
            }
        }
        !any
    };
    if from <= until {
        from <= minute && minute < until && day_listed(day)
    } else {
        (minute >= from && day_listed(day)) || (minute < until && day_listed((day + 6) % 7))
    }
}

/// `from` and `until` as minutes since midnight, if both are valid.
fn window(config: ConfigLines<'_>) -> Option<(u32, u32)> {
    let minute = |key: &'static [u8]| config.values(key).next().and_then(minute_of_day);
    Some((minute(b"from")?, minute(b"until")?))
}

fn utc_offset_minutes(config: ConfigLines<'_>) -> i64 {
    config
        .values(b"utc_offset_minutes")
        .next()
        .and_then(parse_i64)
        .unwrap_or(0)
        .clamp(-24 * 60, 24 * 60)
}

/// `HH:MM` as minutes since midnight.
fn minute_of_day(text: &[u8]) -> Option<u32> {
    let colon = text.iter().position(|&byte| byte == b':')?;
    let hours = parse_u32(&text[..colon])?;
    let minutes = parse_u32(&text[colon + 1..])?;
    (hours <= 24 && minutes < 60 && hours * 60 + minutes <= 24 * 60).then_some(hours * 60 + minutes)
}

fn weekday(name: &[u8]) -> Option<u32> {
    const DAYS: [&[u8]; 7] = [b"sun", b"mon", b"tue", b"wed", b"thu", b"fri", b"sat"];
    DAYS.iter()
        .position(|day| day.eq_ignore_ascii_case(name))
        .map(|day| day as u32)
}

fn parse_i64(text: &[u8]) -> Option<i64> {
    match text.split_first()? {
        (b'-', rest) => parse_u32(rest).map(|value| -i64::from(value)),
        (b'+', rest) => parse_u32(rest).map(i64::from),
        _ => parse_u32(text).map(i64::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use moat_plugin_abi::{GROUP_LEN, config_header, mapped_v4};

    fn config(lines: &str) -> Vec<u8> {
        [&config_header(lines.len())[..], lines.as_bytes()].concat()
    }

    /// Unix seconds of 2026-11-27 (a Friday) at `hour`:`minute` UTC, plus `days`.
    fn friday(days: u64, hour: u64, minute: u64) -> u64 {
        1_795_737_600 + days * 86_400 + hour * 3600 + minute * 60
    }

    fn query<'a>(name: &'a str, client: [u8; 4], group: &'a str, unix_time: u64) -> Query<'a> {
        assert!(group.len() <= GROUP_LEN);
        Query {
            client: mapped_v4(client),
            unix_time,
            group: group.as_bytes(),
            name: name.as_bytes(),
        }
    }

    const KIDS: &str = "names=social.example\nnames=video.example\nclients=192.168.1.0/24\n\
        groups=kids\ndays=fri\ndays=sat\nfrom=21:00\nuntil=07:00\n";

    fn blocks(lines: &str, query: &Query<'_>) -> bool {
        let data = config(lines);
        decide(ConfigLines::new(&data).unwrap(), query)
    }

    #[test]
    fn the_epoch_day_used_here_is_a_friday() {
        // 2026-11-27 is 20_784 days after 1970-01-01 (a Thursday).
        assert_eq!(friday(0, 0, 0) % 86_400, 0);
        assert_eq!((friday(0, 0, 0) / 86_400 + 4) % 7, 5);
    }

    #[test]
    fn blocks_listed_names_and_names_below_in_the_window() {
        let kid = [192, 168, 1, 40];
        assert!(blocks(
            KIDS,
            &query("social.example", kid, "", friday(0, 21, 0))
        ));
        assert!(blocks(
            KIDS,
            &query("m.social.example", kid, "", friday(0, 23, 59))
        ));
        assert!(!blocks(
            KIDS,
            &query("notsocial.example", kid, "", friday(0, 22, 0))
        ));
        assert!(!blocks(KIDS, &query("example", kid, "", friday(0, 22, 0))));
        assert!(!blocks(
            KIDS,
            &query("social.example", kid, "", friday(0, 20, 59))
        ));
    }

    #[test]
    fn a_window_past_midnight_belongs_to_the_day_it_starts() {
        let kid = [192, 168, 1, 40];
        let at = |days, hour| {
            blocks(
                KIDS,
                &query("video.example", kid, "", friday(days, hour, 0)),
            )
        };
        assert!(at(1, 2), "Saturday 02:00 is in Friday's window");
        assert!(at(1, 6));
        assert!(!at(1, 7), "until is exclusive");
        assert!(
            !at(0, 2),
            "Friday 02:00 is Thursday's window, and Thursday is not listed"
        );
        assert!(at(1, 22), "Saturday evening");
        assert!(at(2, 3), "Sunday morning, Saturday's window");
        assert!(!at(2, 22), "Sunday is not listed");
    }

    #[test]
    fn only_the_listed_clients_and_groups() {
        let late = friday(0, 22, 0);
        assert!(!blocks(
            KIDS,
            &query("social.example", [192, 168, 2, 1], "", late)
        ));
        assert!(blocks(
            KIDS,
            &query("social.example", [192, 168, 2, 1], "kids", late)
        ));
        assert!(!blocks(
            KIDS,
            &query("social.example", [192, 168, 2, 1], "adults", late)
        ));
        let everyone = "names=social.example\nfrom=21:00\nuntil=22:00\n";
        assert!(blocks(
            everyone,
            &query("social.example", [10, 0, 0, 1], "", friday(3, 21, 30))
        ));
        let v6 = "names=a.example\nclients=fd00::/16\nfrom=00:00\nuntil=24:00\n";
        let mut client = query("a.example", [0; 4], "", late);
        client.client = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x23];
        assert!(blocks(v6, &client));
        client.client[1] = 1;
        assert!(!blocks(v6, &client));
    }

    #[test]
    fn the_utc_offset_moves_the_window() {
        let plus_two = format!("{KIDS}utc_offset_minutes=120\n");
        let kid = [192, 168, 1, 40];
        // 19:30 UTC is 21:30 at UTC+2.
        assert!(blocks(
            &plus_two,
            &query("social.example", kid, "", friday(0, 19, 30))
        ));
        assert!(!blocks(
            KIDS,
            &query("social.example", kid, "", friday(0, 19, 30))
        ));
        let minus = format!("{KIDS}utc_offset_minutes=-60\n");
        assert!(!blocks(
            &minus,
            &query("social.example", kid, "", friday(0, 21, 30))
        ));
        assert!(blocks(
            &minus,
            &query("social.example", kid, "", friday(0, 22, 30))
        ));
    }

    #[test]
    fn a_verdict_holds_until_the_next_edge_of_the_window() {
        let data = config(KIDS);
        let config = ConfigLines::new(&data).unwrap();
        let kid = [192, 168, 1, 40];
        let at = |name, time| holds_until(config, &query(name, kid, "", time));
        assert_eq!(
            at("social.example", friday(0, 20, 59) + 30),
            Some(friday(0, 21, 0)),
            "before the window: its start"
        );
        assert_eq!(
            at("social.example", friday(0, 21, 0)),
            Some(friday(1, 7, 0)),
            "in it: its end, past midnight"
        );
        assert_eq!(at("other.example", friday(0, 20, 0)), None, "not listed");
        assert_eq!(
            holds_until(
                config,
                &query("social.example", [10, 0, 0, 1], "", friday(0, 20, 0))
            ),
            None,
            "not covered"
        );
        // At each boundary named, the verdict may change; just before, it has not.
        let mut time = friday(0, 12, 0);
        for _ in 0..6 {
            let edge = at("video.example", time).unwrap();
            let before = decide(config, &query("video.example", kid, "", time));
            assert_eq!(
                decide(config, &query("video.example", kid, "", edge - 1)),
                before
            );
            time = edge;
        }
        let plus_two = format!("{KIDS}utc_offset_minutes=120\n");
        let data = self::config(&plus_two);
        let shifted = ConfigLines::new(&data).unwrap();
        assert_eq!(
            holds_until(shifted, &query("social.example", kid, "", friday(0, 18, 0))),
            Some(friday(0, 19, 0)),
            "21:00 at UTC+2"
        );
    }

    #[test]
    fn a_broken_configuration_blocks_nothing() {
        let kid = [192, 168, 1, 40];
        let late = friday(0, 22, 0);
        for broken in [
            "names=social.example\nfrom=25:00\nuntil=07:00\n",
            "names=social.example\nfrom=21:00\n",
            "names=social.example\nfrom=21:00\nuntil=07:00\nclients=not-an-address\n",
            "",
        ] {
            assert!(
                !blocks(broken, &query("social.example", kid, "", late)),
                "{broken}"
            );
        }
        assert!(ConfigLines::new(b"MOATXX01\0\0\0\0").is_none());
    }
}

//! SNTP (RFC 4330) as pure functions: the request to send, what a reply
//! says the time is, and whether the replies gathered justify setting the
//! clock ([`ClockGuard`]). The shell sends, receives and sets the clock.

use thiserror::Error;

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_TO_UNIX: u64 = 2_208_988_800;
/// The length of an NTP era in seconds: 32-bit timestamps wrap on
/// 2036-02-07 06:28:16 UTC.
const ERA: u64 = 1 << 32;
/// The size of an SNTP packet without extensions.
pub const PACKET_LEN: usize = 48;

/// Why a reply does not give the time.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SntpError {
    /// Shorter than an NTP header.
    #[error("reply of {0} bytes is too short")]
    Short(usize),
    /// Not a server's answer to our request.
    #[error("not a server reply (mode {0})")]
    NotServer(u8),
    /// The server does not know the time itself (kiss-o'-death or unsynchronized).
    #[error("server is unsynchronized (stratum {0})")]
    Unsynchronized(u8),
    /// The reply does not echo our request's transmit time.
    #[error("reply does not answer our request")]
    Mismatch,
    /// The server's transmit timestamp is zero: it gives no time at all.
    #[error("reply carries a transmit time of zero")]
    ZeroTime,
}

/// A client request whose transmit timestamp is `token`: the server echoes
/// it as the originate timestamp, which ties the reply to this request.
pub fn request(token: u64) -> [u8; PACKET_LEN] {
    let mut packet = [0; PACKET_LEN];
    packet[0] = 0b00_100_011; // leap 0, version 4, mode 3 (client)
    packet[40..48].copy_from_slice(&token.to_be_bytes());
    packet
}

/// The Unix time in milliseconds a reply says it is now, given the request's
/// `token` and the round trip (`sent_ms` to `received_ms` on a monotonic
/// clock): the server's transmit time plus half the round trip.
pub fn reply_time(
    reply: &[u8],
    token: u64,
    sent_ms: u64,
    received_ms: u64,
) -> Result<u64, SntpError> {
    if reply.len() < PACKET_LEN {
        return Err(SntpError::Short(reply.len()));
    }
    let mode = reply[0] & 0b111;
    if mode != 4 {
        return Err(SntpError::NotServer(mode));
    }
    let stratum = reply[1];
    if stratum == 0 || stratum >= 16 || reply[0] >> 6 == 3 {
        return Err(SntpError::Unsynchronized(stratum));
    }
    if reply[24..32] != token.to_be_bytes() {
        return Err(SntpError::Mismatch);
    }
    let seconds = u32::from_be_bytes([reply[40], reply[41], reply[42], reply[43]]);
    let fraction = u32::from_be_bytes([reply[44], reply[45], reply[46], reply[47]]);
    if seconds == 0 && fraction == 0 {
        return Err(SntpError::ZeroTime);
    }
    let unix_ms = unix_seconds(seconds) * 1000 + ((u64::from(fraction) * 1000) >> 32);
    Ok(unix_ms + received_ms.saturating_sub(sent_ms) / 2)
}

/// The Unix time of an NTP timestamp's seconds, by RFC 4330 §3's pivot:
/// with the high bit set the time is in era 0 (1968–2036), with it clear
/// in era 1 (2036–2104). Era 0 times before 1970 come out as 0.
fn unix_seconds(ntp_seconds: u32) -> u64 {
    let seconds = u64::from(ntp_seconds);
    let since_1900 = if ntp_seconds & 0x8000_0000 == 0 {
        seconds + ERA
    } else {
        seconds
    };
    since_1900.saturating_sub(NTP_TO_UNIX)
}

/// One server's answer, as the difference between its time and the local
/// wall clock when the answer came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Which of the servers asked gave it (agreement needs two of them).
    pub server: usize,
    /// The server's time minus the local wall clock, in milliseconds.
    pub offset_ms: i64,
}

impl Sample {
    /// The sample of a reply saying `server_ms` when the local wall clock
    /// read `local_ms`.
    pub fn new(server: usize, server_ms: u64, local_ms: u64) -> Self {
        let signed = |ms: u64| i64::try_from(ms).unwrap_or(i64::MAX);
        Self {
            server,
            offset_ms: signed(server_ms).saturating_sub(signed(local_ms)),
        }
    }
}

/// Why the samples do not set the clock.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepRefused {
    /// No server answered with a usable time.
    #[error("no server answered")]
    NoAnswer,
    /// Every answer was before the floor (the image's build time).
    #[error("every answer was before the clock's floor")]
    BelowFloor,
    /// The answers ask for a step beyond the bound that no second server
    /// confirmed.
    #[error("a step of {0} s needs a second server to agree")]
    Unconfirmed(i64),
}

/// The rules a new time must pass before it is applied: never below the
/// floor, and a step beyond `max_step_ms` only when two servers agree on it
/// to within `agree_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockGuard {
    /// The earliest time the clock may show, Unix milliseconds.
    pub floor_ms: u64,
    /// The largest step, either way, one server may make.
    pub max_step_ms: u64,
    /// How close two servers' offsets must be to agree.
    pub agree_ms: u64,
}

impl ClockGuard {
    /// The guard for a clock with `floor_ms` as its floor: one server may
    /// step it by up to a day, two agreeing to within 5 s by more.
    pub fn new(floor_ms: u64) -> Self {
        Self {
            floor_ms,
            max_step_ms: 86_400_000,
            agree_ms: 5_000,
        }
    }

    /// The time to set the clock to, in Unix milliseconds, given the clock
    /// reads `now_ms` and the servers' `samples` in order of preference.
    /// Samples below the floor are dropped; of the rest, the first that a
    /// second server confirms wins, else the first within the bound.
    pub fn step(&self, now_ms: u64, samples: &[Sample]) -> Result<u64, StepRefused> {
        if samples.is_empty() {
            return Err(StepRefused::NoAnswer);
        }
        let time = |sample: &Sample| now_ms.saturating_add_signed(sample.offset_ms);
        let usable: Vec<&Sample> = samples
            .iter()
            .filter(|sample| time(sample) >= self.floor_ms)
            .collect();
        let first = usable.first().ok_or(StepRefused::BelowFloor)?;
        let confirmed = |sample: &&&Sample| {
            usable.iter().any(|other| {
                other.server != sample.server
                    && other.offset_ms.abs_diff(sample.offset_ms) <= self.agree_ms
            })
        };
        let within = |sample: &&&Sample| sample.offset_ms.unsigned_abs() <= self.max_step_ms;
        usable
            .iter()
            .find(confirmed)
            .or_else(|| usable.iter().find(within))
            .map(|chosen| time(chosen))
            .ok_or(StepRefused::Unconfirmed(first.offset_ms / 1000))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_reply(token: u64, unix_secs: u64, stratum: u8) -> [u8; PACKET_LEN] {
        let mut reply = [0; PACKET_LEN];
        reply[0] = 0b00_100_100;
        reply[1] = stratum;
        reply[24..32].copy_from_slice(&token.to_be_bytes());
        let ntp = (unix_secs + NTP_TO_UNIX) as u32;
        reply[40..44].copy_from_slice(&ntp.to_be_bytes());
        reply[44..48].copy_from_slice(&(1u32 << 31).to_be_bytes()); // .5 s
        reply
    }

    #[test]
    fn a_request_is_a_v4_client_packet_carrying_the_token() {
        let packet = request(0x0102_0304_0506_0708);
        assert_eq!(packet[0], 0x23);
        assert_eq!(packet[40..48], [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn the_time_is_the_servers_plus_half_the_round_trip() {
        let reply = server_reply(42, 1_800_000_000, 2);
        assert_eq!(
            reply_time(&reply, 42, 1000, 1200),
            Ok(1_800_000_000_000 + 500 + 100)
        );
    }

    #[test]
    fn foreign_unsynchronized_and_short_replies_are_refused() {
        let reply = server_reply(42, 1_800_000_000, 2);
        assert_eq!(reply_time(&reply, 7, 0, 0), Err(SntpError::Mismatch));
        assert_eq!(
            reply_time(&server_reply(42, 1_800_000_000, 0), 42, 0, 0),
            Err(SntpError::Unsynchronized(0))
        );
        assert_eq!(
            reply_time(&reply[..20], 42, 0, 0),
            Err(SntpError::Short(20))
        );
        assert_eq!(
            reply_time(&request(42), 42, 0, 0),
            Err(SntpError::NotServer(3))
        );
    }

    /// 2036-02-07 06:28:16 UTC, where NTP era 0 ends.
    const WRAP_UNIX: u64 = ERA - NTP_TO_UNIX;
    /// 2026-01-01, the image's build time in these tests.
    const FLOOR_MS: u64 = 1_767_225_600_000;

    fn reply_with_seconds(token: u64, seconds: u32, fraction: u32) -> [u8; PACKET_LEN] {
        let mut reply = server_reply(token, 0, 2);
        reply[40..44].copy_from_slice(&seconds.to_be_bytes());
        reply[44..48].copy_from_slice(&fraction.to_be_bytes());
        reply
    }

    fn at(server: usize, server_ms: u64, local_ms: u64) -> Sample {
        Sample::new(server, server_ms, local_ms)
    }

    #[test]
    fn a_transmit_time_of_zero_is_refused() {
        assert_eq!(
            reply_time(&reply_with_seconds(42, 0, 0), 42, 0, 0),
            Err(SntpError::ZeroTime)
        );
        assert!(reply_time(&reply_with_seconds(42, 0, 1), 42, 0, 0).is_ok());
    }

    #[test]
    fn timestamps_after_the_2036_wrap_are_in_era_1() {
        let before = reply_with_seconds(42, u32::MAX, 0);
        assert_eq!(reply_time(&before, 42, 0, 0), Ok((WRAP_UNIX - 1) * 1000));
        let after = server_reply(42, WRAP_UNIX + 100, 2);
        assert_eq!(after[40..44], [0, 0, 0, 100], "the seconds wrapped");
        assert_eq!(
            reply_time(&after, 42, 0, 0),
            Ok((WRAP_UNIX + 100) * 1000 + 500)
        );
        let late_2090 = 3_786_912_000;
        assert_eq!(
            reply_time(&server_reply(42, late_2090, 2), 42, 0, 0),
            Ok(late_2090 * 1000 + 500)
        );
    }

    #[test]
    fn the_clock_steps_across_the_wrap_on_one_server() {
        let now = (WRAP_UNIX - 10) * 1000;
        let wrapped = reply_time(&reply_with_seconds(42, 5, 0), 42, 0, 0).unwrap();
        let guard = ClockGuard::new(FLOOR_MS);
        assert_eq!(
            guard.step(now, &[at(0, wrapped, now)]),
            Ok((WRAP_UNIX + 5) * 1000)
        );
    }

    #[test]
    fn the_clock_is_never_set_below_the_floor() {
        let guard = ClockGuard::new(FLOOR_MS);
        // Era 0's first years: 1968 to 1970, before the Unix epoch.
        let pre_1970 = reply_time(&reply_with_seconds(42, 0x8000_0000, 0), 42, 0, 0).unwrap();
        assert_eq!(pre_1970, 0);
        let now = FLOOR_MS + 60_000;
        let before_floor = [at(0, pre_1970, now), at(1, FLOOR_MS - 1, now)];
        assert_eq!(guard.step(now, &before_floor), Err(StepRefused::BelowFloor));
        assert_eq!(
            guard.step(now, &[at(0, 0, now), at(1, now + 2_000, now)]),
            Ok(now + 2_000),
            "the answer below the floor is dropped, the other applies"
        );
        assert_eq!(guard.step(now, &[]), Err(StepRefused::NoAnswer));
    }

    #[test]
    fn a_big_step_needs_two_servers_that_agree() {
        let guard = ClockGuard::new(FLOOR_MS);
        let now = FLOOR_MS;
        let far_future = 3_786_912_000_000;
        let years = ((far_future - now) / 1000) as i64;
        assert_eq!(
            guard.step(now, &[at(0, far_future, now)]),
            Err(StepRefused::Unconfirmed(years))
        );
        assert_eq!(
            guard.step(now, &[at(0, far_future, now), at(0, far_future, now)]),
            Err(StepRefused::Unconfirmed(years)),
            "one server twice is not two servers"
        );
        assert_eq!(
            guard.step(
                now,
                &[at(0, far_future, now), at(1, far_future + 9_000, now)]
            ),
            Err(StepRefused::Unconfirmed(years)),
            "9 s apart is no agreement"
        );
        // Asked a second apart, both 3 months ahead of a clock at the floor.
        let ahead = 90 * 86_400_000;
        assert_eq!(
            guard.step(
                now + 1_000,
                &[
                    at(0, now + ahead, now),
                    at(1, now + 1_000 + ahead + 300, now + 1_000)
                ]
            ),
            Ok(now + 1_000 + ahead)
        );
    }

    #[test]
    fn one_server_may_step_within_a_day_unless_two_others_agree() {
        let guard = ClockGuard::new(FLOOR_MS);
        let now = FLOOR_MS + 86_400_000;
        let hours = 5 * 3_600_000;
        assert_eq!(
            guard.step(now, &[at(0, now - hours, now)]),
            Ok(now - hours),
            "backwards, above the floor"
        );
        let far = now + 400 * 86_400_000;
        assert_eq!(
            guard.step(now, &[at(0, far, now), at(1, now + hours, now)]),
            Ok(now + hours),
            "an unconfirmed far time loses to a near one"
        );
        let agreed = now + 90 * 86_400_000;
        assert_eq!(
            guard.step(
                now,
                &[
                    at(0, now + hours, now),
                    at(1, agreed, now),
                    at(2, agreed + 10, now)
                ]
            ),
            Ok(agreed),
            "two agreeing servers outweigh one"
        );
    }
}

//! SNTP (RFC 4330) as pure functions: the request to send and what a reply
//! says the time is. The shell sends, receives and sets the clock.

use thiserror::Error;

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_TO_UNIX: u64 = 2_208_988_800;
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
    let seconds = u64::from(u32::from_be_bytes([
        reply[40], reply[41], reply[42], reply[43],
    ]));
    let fraction = u64::from(u32::from_be_bytes([
        reply[44], reply[45], reply[46], reply[47],
    ]));
    let unix_ms = seconds.saturating_sub(NTP_TO_UNIX) * 1000 + ((fraction * 1000) >> 32);
    Ok(unix_ms + received_ms.saturating_sub(sent_ms) / 2)
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
}

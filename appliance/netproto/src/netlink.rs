//! rtnetlink requests that configure an interface (link up, address,
//! default route) built as bytes, and the reading of the kernel's
//! acknowledgement. The caller sends them over a netlink socket. No `ip`
//! binary on the image: this is all it needs.

use std::net::Ipv4Addr;

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_NEWROUTE: u16 = 24;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const AF_INET: u8 = 2;
const IFF_UP: u32 = 0x1;

/// `RTM_NEWLINK` setting interface `index` up.
pub fn link_up(index: u32, seq: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(16);
    body.extend_from_slice(&[0, 0, 0, 0]); // family, pad, type
    body.extend_from_slice(&index.to_ne_bytes());
    body.extend_from_slice(&IFF_UP.to_ne_bytes()); // flags
    body.extend_from_slice(&IFF_UP.to_ne_bytes()); // change mask
    message(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq, &body)
}

/// `RTM_NEWADDR` (or `RTM_DELADDR` when `add` is false) of
/// `address/prefix_len` on interface `index`.
pub fn address(index: u32, address: Ipv4Addr, prefix_len: u8, add: bool, seq: u32) -> Vec<u8> {
    let mut body = vec![AF_INET, prefix_len, 0, 0]; // family, prefix, flags, scope universe
    body.extend_from_slice(&index.to_ne_bytes());
    attribute(&mut body, 2, &address.octets()); // IFA_LOCAL
    attribute(&mut body, 1, &address.octets()); // IFA_ADDRESS
    let host_bits = 32 - u32::from(prefix_len.min(32));
    let broadcast = u32::from(address) | ((1u64 << host_bits) - 1) as u32;
    attribute(&mut body, 4, &broadcast.to_be_bytes()); // IFA_BROADCAST
    if add {
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        message(RTM_NEWADDR, flags, seq, &body)
    } else {
        message(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, seq, &body)
    }
}

/// `RTM_NEWROUTE`: the IPv4 default route via `gateway` out of `index`.
pub fn default_route(index: u32, gateway: Ipv4Addr, seq: u32) -> Vec<u8> {
    // family, dst_len, src_len, tos, table main, protocol boot, scope universe, type unicast
    let mut body = vec![AF_INET, 0, 0, 0, 254, 3, 0, 1];
    body.extend_from_slice(&0u32.to_ne_bytes()); // flags
    attribute(&mut body, 5, &gateway.octets()); // RTA_GATEWAY
    attribute(&mut body, 4, &index.to_ne_bytes()); // RTA_OIF
    let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    message(RTM_NEWROUTE, flags, seq, &body)
}

/// Reads the kernel's answer to one request: `Ok(0)` for an
/// acknowledgement, `Ok(errno)` for a refusal, `None` if it is no answer.
pub fn parse_ack(answer: &[u8]) -> Option<i32> {
    let kind = u16::from_ne_bytes(answer.get(4..6)?.try_into().ok()?);
    if kind != NLMSG_ERROR {
        return None;
    }
    let code = i32::from_ne_bytes(answer.get(16..20)?.try_into().ok()?);
    Some(-code)
}

fn message(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = 16 + body.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it
    out.extend_from_slice(body);
    out
}

fn attribute(body: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    body.extend_from_slice(&(len as u16).to_ne_bytes());
    body.extend_from_slice(&kind.to_ne_bytes());
    body.extend_from_slice(value);
    body.resize(body.len().next_multiple_of(4), 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_their_length_type_and_aligned_attributes() {
        let msg = address(3, Ipv4Addr::new(10, 0, 2, 15), 24, true, 9);
        assert_eq!(
            u32::from_ne_bytes(msg[0..4].try_into().unwrap()) as usize,
            msg.len()
        );
        assert_eq!(
            u16::from_ne_bytes(msg[4..6].try_into().unwrap()),
            RTM_NEWADDR
        );
        assert_eq!(msg.len() % 4, 0);
        // ifaddrmsg, then IFA_LOCAL, IFA_ADDRESS, IFA_BROADCAST
        assert_eq!(msg[16..18], [AF_INET, 24]);
        assert_eq!(msg[24..32], [8, 0, 2, 0, 10, 0, 2, 15]);
        assert_eq!(msg[44..48], [10, 0, 2, 255]);
    }

    #[test]
    fn the_default_route_names_gateway_and_interface() {
        let msg = default_route(2, Ipv4Addr::new(10, 0, 2, 2), 1);
        assert_eq!(
            u16::from_ne_bytes(msg[4..6].try_into().unwrap()),
            RTM_NEWROUTE
        );
        assert_eq!(msg[28..36], [8, 0, 5, 0, 10, 0, 2, 2]);
        assert_eq!(msg[36..40], [8, 0, 4, 0]);
        assert_eq!(u32::from_ne_bytes(msg[40..44].try_into().unwrap()), 2);
    }

    #[test]
    fn acks_and_refusals_are_told_apart() {
        let mut ack = message(NLMSG_ERROR, 0, 1, &[0; 20]);
        assert_eq!(parse_ack(&ack), Some(0));
        ack[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        assert_eq!(parse_ack(&ack), Some(1));
        assert_eq!(parse_ack(&link_up(1, 1)), None);
    }
}

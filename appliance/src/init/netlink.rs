//! The netlink shell: sends the requests `moat_netproto::netlink` builds
//! over a netlink socket and waits for the kernel's acknowledgements.

use std::os::fd::AsRawFd;

use moat_netproto::netlink::parse_ack;
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, sendto,
    socket,
};
use thiserror::Error;

/// `EEXIST`: the address or route is already there.
const EEXIST: i32 = 17;

/// A netlink request failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub(crate) enum NetlinkError {
    /// The socket could not be opened, sent to or read.
    #[error("netlink socket: {0}")]
    Socket(#[from] nix::Error),
    /// The kernel refused the request.
    #[error("kernel refused the request: {0}")]
    Refused(nix::Error),
    /// The kernel's answer was not an acknowledgement.
    #[error("unexpected netlink answer")]
    Unexpected,
}

/// Sends each request over one netlink socket and waits for its
/// acknowledgement. `EEXIST` counts as done.
pub(super) fn apply(requests: &[Vec<u8>]) -> Result<(), NetlinkError> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    let kernel = NetlinkAddr::new(0, 0);
    let mut answer = [0u8; 4096];
    for request in requests {
        sendto(fd.as_raw_fd(), request, &kernel, MsgFlags::empty())?;
        let len = recv(fd.as_raw_fd(), &mut answer, MsgFlags::empty())?;
        match parse_ack(&answer[..len]) {
            Some(0 | EEXIST) => {}
            Some(errno) => return Err(NetlinkError::Refused(nix::Error::from_raw(errno))),
            None => return Err(NetlinkError::Unexpected),
        }
    }
    Ok(())
}

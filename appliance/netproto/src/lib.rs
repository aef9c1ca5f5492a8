//! The protocols Moat's init speaks to bring the network up, with no I/O:
//! a DHCPv4 client state machine ([`dhcp`]), SNTP requests and replies
//! ([`sntp`]) and the rtnetlink requests that configure an interface
//! ([`netlink`]). Every function takes and returns bytes and takes the time
//! as an argument; sockets, clocks and randomness stay in the caller (the
//! shells in `moat::init`).

pub mod dhcp;
pub mod netlink;
pub mod sntp;

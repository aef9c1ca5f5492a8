//! Support for Moat's end-to-end tests and benchmarks: the real `moat`
//! binary as a child process, a real upstream DNS server on loopback, a
//! test CA, and a small DNS client.

pub mod api;
pub mod attack;
pub mod browser;
pub mod client;
pub mod http;
pub mod moat;
pub mod tls;
pub mod upstream;

pub use api::{ControlClient, Credentials, RawApi, RawResponse};
pub use client::{DnsClient, query_message};
pub use moat::MoatProcess;
pub use tls::TestCa;
pub use upstream::{Reply, TestUpstream};

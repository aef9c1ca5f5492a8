//! End-to-end tests: the real `moat` binary, real upstream servers, real
//! sockets, loopback only.

mod attack_control;
mod attacks;
mod blocking;
mod cache;
mod config;
mod control;
mod fleet;
mod forwarding;
mod hostile;
mod listen;
mod lists;
mod mdns;
mod owner;
mod plugins;
mod policy;
mod robustness;
mod safe_mode;
mod serving;
mod ui;
mod update;
mod upstreams;

use moat_system_tests::{MoatProcess, TestUpstream};

/// An upstream and a moat forwarding to it over UDP, with extra config.
async fn moat_with_upstream(tuning_and_policy: &str) -> (MoatProcess, TestUpstream) {
    let upstream = TestUpstream::start().await;
    let moat = MoatProcess::start("", &policy_for(&upstream, tuning_and_policy)).await;
    (moat, upstream)
}

/// A `[policy]` table using `upstream`, followed by `extra` (which may add
/// policy keys first, then other tables).
fn policy_for(upstream: &TestUpstream, extra: &str) -> String {
    format!(
        "[policy]\nupstreams = [\"udp://{}\"]\n{extra}\n",
        upstream.addr
    )
}

fn ips(message: &hickory_proto::op::Message) -> Vec<String> {
    message
        .answers
        .iter()
        .map(|record| record.data.to_string())
        .collect()
}

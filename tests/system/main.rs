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
mod https;
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

/// Sets `moat`'s first admin password through `api` with its setup code,
/// and checks it was taken.
async fn set_first_password(
    api: &moat_system_tests::ControlClient,
    moat: &MoatProcess,
    password: &str,
) {
    use moat_system_tests::RawApi;
    let body = serde_json::json!({ "password": password, "code": moat.setup_code() });
    let setup = api.post("/api/v1/auth/setup", &body).await;
    assert_eq!(
        setup.status,
        reqwest::StatusCode::NO_CONTENT,
        "{}",
        setup.text
    );
}

/// Checks `refused` is a 429 whose `Retry-After` is 1 or 2 seconds (the
/// first lockout), and returns that wait.
fn first_lockout(refused: &moat_system_tests::RawResponse, what: &str) -> std::time::Duration {
    assert_eq!(
        refused.status,
        reqwest::StatusCode::TOO_MANY_REQUESTS,
        "{what}: {}",
        refused.text
    );
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "retry after {retry} s");
    std::time::Duration::from_secs(retry)
}

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

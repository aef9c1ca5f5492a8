//! Blocking from policy.allow / policy.deny, every blocked-reply mode,
//! reload, and pause/resume that survives a restart.

use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use moat_system_tests::client::query_message;
use moat_system_tests::moat::Scratch;
use moat_system_tests::{MoatProcess, TestUpstream};

use super::{ips, policy_for};

/// Deny beats allow beats the blocklist: `ads.test` is listed (with
/// everything below it), `*.good.ads.test` allowed, `bad.good.ads.test` and
/// `tracker.test` denied.
fn lists(dir: &Scratch) -> String {
    let list = dir.0.join("hosts.txt");
    std::fs::write(
        &list,
        "! an Adblock list with CRLF lines\r\n||ads.test^\r\n||adblock.test^\n",
    )
    .unwrap();
    format!(
        "deny = [\"tracker.test\", \"bad.good.ads.test\"]\nallow = [\"*.good.ads.test\"]\n\
         [[policy.blocklists]]\nsource = \"{}\"\n",
        list.display()
    )
}

async fn ask(moat: &MoatProcess, name: &str, qtype: RecordType) -> Message {
    moat.dns.udp_query(&query_message(name, qtype, None)).await
}

fn reload(moat: &MoatProcess) {
    let output = moat.cli(&["reload"]);
    assert!(
        output.status.success(),
        "reload: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn every_blocked_reply_mode() {
    let upstream = TestUpstream::start().await;
    let dir = Scratch::new("lists");
    let config = |mode: &str| {
        let policy = format!(
            "blocked_response = {mode}\nblocked_ttl = \"42s\"\n{}",
            lists(&dir)
        );
        policy_for(&upstream, &policy)
    };
    let moat = MoatProcess::start("", &config("\"nxdomain\"")).await;

    let nx = ask(&moat, "x.ads.test", RecordType::A).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        nx.authorities[0].ttl, 42,
        "SOA makes the block cacheable for blocked_ttl"
    );
    let allowed = ask(&moat, "ok.good.ads.test", RecordType::A).await;
    assert_eq!(ips(&allowed), ["192.0.2.1"], "allow beats the blocklist");
    let denied = ask(&moat, "bad.good.ads.test", RecordType::A).await;
    assert_eq!(
        denied.metadata.response_code,
        ResponseCode::NXDomain,
        "deny beats allow"
    );
    let adblock = ask(&moat, "x.adblock.test", RecordType::A).await;
    assert_eq!(
        adblock.metadata.response_code,
        ResponseCode::NXDomain,
        "||name^ rules block too"
    );
    let exact = ask(&moat, "tracker.test", RecordType::A).await;
    assert_eq!(exact.metadata.response_code, ResponseCode::NXDomain);
    let below_exact = ask(&moat, "sub.tracker.test", RecordType::A).await;
    assert_eq!(
        below_exact.metadata.response_code,
        ResponseCode::NoError,
        "exact rules do not cover subdomains"
    );

    moat.rewrite_config("", &config("\"null\""));
    reload(&moat);
    let a = ask(&moat, "ads.test", RecordType::A).await;
    assert_eq!(
        (ips(&a), a.answers[0].ttl),
        (vec!["0.0.0.0".to_owned()], 42)
    );
    let aaaa = ask(&moat, "ads.test", RecordType::AAAA).await;
    assert_eq!(ips(&aaaa), ["::"]);
    let mx = ask(&moat, "ads.test", RecordType::MX).await;
    assert!(mx.answers.is_empty() && mx.metadata.response_code == ResponseCode::NoError);

    moat.rewrite_config("", &config("\"refused\""));
    reload(&moat);
    assert_eq!(
        ask(&moat, "a.ads.test", RecordType::A)
            .await
            .metadata
            .response_code,
        ResponseCode::Refused
    );

    moat.rewrite_config("", &config("\"nodata\""));
    reload(&moat);
    let nodata = ask(&moat, "a.ads.test", RecordType::A).await;
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authorities.len(), 1, "SOA for negative caching");

    moat.rewrite_config("", &config("[\"10.9.8.7\", \"fd00::7\"]"));
    reload(&moat);
    assert_eq!(
        ips(&ask(&moat, "a.ads.test", RecordType::A).await),
        ["10.9.8.7"]
    );
    assert_eq!(
        ips(&ask(&moat, "a.ads.test", RecordType::AAAA).await),
        ["fd00::7"]
    );
    assert_eq!(
        upstream.count("a.ads.test"),
        0,
        "blocked names never reach upstream"
    );
}

#[tokio::test]
async fn invalid_reload_keeps_running_config() {
    let upstream = TestUpstream::start().await;
    let dir = Scratch::new("lists");
    let moat = MoatProcess::start("", &policy_for(&upstream, &lists(&dir))).await;
    moat.rewrite_config(
        "",
        &policy_for(&upstream, "blocked_response = \"sometimes\"\n"),
    );
    let output = moat.cli(&["reload"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("policy.blocked_response") && stderr.contains("sometimes"),
        "{stderr}"
    );
    let still_blocked = ask(&moat, "x.ads.test", RecordType::A).await;
    assert_eq!(
        ips(&still_blocked),
        ["0.0.0.0"],
        "old config still in force"
    );

    // SIGHUP with a now-valid config applies it.
    moat.rewrite_config("", &policy_for(&upstream, ""));
    std::process::Command::new("kill")
        .args(["-HUP", &moat.pid().to_string()])
        .status()
        .unwrap();
    let mut unblocked = false;
    for _ in 0..50 {
        if ips(&ask(&moat, "y.ads.test", RecordType::A).await) == ["192.0.2.1"] {
            unblocked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(unblocked, "SIGHUP reloaded the config");
}

#[tokio::test]
async fn pause_survives_restart_and_resume_blocks_again() {
    let upstream = TestUpstream::start().await;
    let dir = Scratch::new("lists");
    let moat = MoatProcess::start("", &policy_for(&upstream, &lists(&dir))).await;
    assert_eq!(
        ips(&ask(&moat, "p.ads.test", RecordType::A).await),
        ["0.0.0.0"]
    );

    let output = moat.cli(&["pause"]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        ips(&ask(&moat, "p.ads.test", RecordType::A).await),
        ["192.0.2.1"]
    );

    let moat = moat.restart().await;
    assert_eq!(
        ips(&ask(&moat, "q.ads.test", RecordType::A).await),
        ["192.0.2.1"],
        "still paused after restart"
    );

    let output = moat.cli(&["resume"]);
    assert!(output.status.success());
    assert_eq!(
        ips(&ask(&moat, "q.ads.test", RecordType::A).await),
        ["0.0.0.0"]
    );

    let output = moat.cli(&["pause", "1s"]);
    assert!(output.status.success());
    assert_eq!(
        ips(&ask(&moat, "r.ads.test", RecordType::A).await),
        ["192.0.2.1"]
    );
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(
        ips(&ask(&moat, "r.ads.test", RecordType::A).await),
        ["0.0.0.0"],
        "timed pause ended by itself"
    );

    let bad = moat.cli(&["pause", "soon"]);
    assert!(!bad.status.success());
}

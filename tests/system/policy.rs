//! Policy as WASM seen from outside: hot swap under load and a restart
//! that serves the persisted policy with no source or upstream reachable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use moat_system_tests::moat::Scratch;
use moat_system_tests::{MoatProcess, TestUpstream};

use super::{ips, policy_for};

fn policy_with_list(upstream: &TestUpstream, list: &std::path::Path) -> String {
    policy_for(
        upstream,
        &format!("[[policy.blocklists]]\nsource = \"{}\"\n", list.display()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_load_fails_no_query() {
    let upstream = TestUpstream::start().await;
    let dir = Scratch::new("swap");
    let list = dir.0.join("list.txt");
    std::fs::write(&list, "||ads.test^\n").unwrap();
    let moat = MoatProcess::start("", &policy_with_list(&upstream, &list)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (dns, stop, answered) = (moat.dns, stop.clone(), answered.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for index in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let blocked = dns.a(&format!("q{client}-{index}.ads.test")).await;
                let either = dns.a(&format!("q{client}-{index}.other.test")).await;
                if ips(&blocked) != ["0.0.0.0"] {
                    failures.push(format!("listed in both versions, got {blocked:?}"));
                }
                let either_ips = ips(&either);
                if either.metadata.response_code != ResponseCode::NoError
                    || !(either_ips == ["0.0.0.0"] || either_ips == ["192.0.2.1"])
                {
                    failures.push(format!("other.test got {either:?}"));
                }
                answered.fetch_add(2, Ordering::Relaxed);
            }
            failures
        }));
    }
    for swap in 0..10 {
        let text = if swap % 2 == 0 {
            "||ads.test^\n||other.test^\n"
        } else {
            "||ads.test^\n"
        };
        std::fs::write(&list, text).unwrap();
        let output = moat.cli(&["reload"]);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let failures = client.await.unwrap();
        assert!(
            failures.is_empty(),
            "{} wrong answers, first: {}",
            failures.len(),
            failures[0]
        );
    }
    assert!(
        answered.load(Ordering::Relaxed) > 100,
        "the load really ran"
    );
    let status = moat.status().await.unwrap();
    assert_eq!(status.config_generation, 11);
}

#[tokio::test]
async fn cached_answers_follow_each_policy_version() {
    let upstream = TestUpstream::start().await;
    let dir = Scratch::new("verdicts");
    let list = dir.0.join("list.txt");
    std::fs::write(&list, "||ads.test^\n").unwrap();
    let moat = MoatProcess::start("", &policy_with_list(&upstream, &list)).await;
    for _ in 0..3 {
        assert_eq!(ips(&moat.dns.a("cached.test").await), ["192.0.2.1"]);
    }
    assert_eq!(upstream.count("cached.test"), 1, "answered from the cache");

    std::fs::write(&list, "||ads.test^\ncached.test\n").unwrap();
    assert!(moat.cli(&["reload"]).status.success());
    assert_eq!(
        ips(&moat.dns.a("cached.test").await),
        ["0.0.0.0"],
        "a verdict kept with the cached answer is not reused by the next policy"
    );
    std::fs::write(&list, "||ads.test^\n").unwrap();
    assert!(moat.cli(&["reload"]).status.success());
    assert_eq!(ips(&moat.dns.a("cached.test").await), ["192.0.2.1"]);
    assert_eq!(upstream.count("cached.test"), 1, "still the cached answer");

    let moat = moat.restart().await;
    assert_eq!(ips(&moat.dns.a("x.ads.test").await), ["0.0.0.0"]);
    assert!(
        moat.log()
            .contains("policy unchanged; serving the stored bundle"),
        "a restart with the same inputs compiles nothing; log:\n{}",
        moat.log()
    );
}

#[tokio::test]
async fn restart_serves_persisted_policy_without_sources_or_upstreams() {
    let mut upstream = TestUpstream::start().await;
    let dir = Scratch::new("persist");
    let list = dir.0.join("list.txt");
    std::fs::write(&list, "||persisted.test^\n").unwrap();
    let moat = MoatProcess::start("", &policy_with_list(&upstream, &list)).await;
    assert_eq!(ips(&moat.dns.a("x.persisted.test").await), ["0.0.0.0"]);

    upstream.stop().await;
    std::fs::remove_file(&list).unwrap();
    let data = moat.dir.0.join("data");
    for entry in std::fs::read_dir(&data).unwrap().flatten() {
        if entry.file_name().to_string_lossy().starts_with("source-") {
            std::fs::remove_file(entry.path()).unwrap();
        }
    }
    let moat = moat.restart().await;
    assert_eq!(
        ips(&moat.dns.a("y.persisted.test").await),
        ["0.0.0.0"],
        "blocked by the stored bundle; log:\n{}",
        moat.log()
    );
    assert!(
        moat.log()
            .contains("policy cannot be compiled; serving the stored bundle")
    );
}

#[test]
fn policy_compile_and_test_explain_decisions() {
    use moat_system_tests::moat::binary;
    let dir = Scratch::new("policy-cli");
    let list = dir.0.join("list.txt");
    std::fs::write(
        &list,
        "0.0.0.0 ads.example\nnot a rule line\n@@||ok.ads.example^\n",
    )
    .unwrap();
    let config = dir.0.join("moat.toml");
    std::fs::write(
        &config,
        format!(
            "[instance]\ndata_dir = \"{}\"\n[policy]\ndeny = [\"*.deny.ok.ads.example\"]\n\
             [[policy.blocklists]]\nsource = \"{}\"\n",
            dir.0.join("data").display(),
            list.display()
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let output = std::process::Command::new(binary())
            .args(args)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let out = dir.0.join("out");
    let summary = run(&[
        "policy",
        "compile",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary["sources"][0]["blocked"], 1, "{summary}");
    assert_eq!(summary["sources"][0]["rejected"], 1, "{summary}");
    assert!(out.join("blocklist.wasm").exists());

    let config = config.to_str().unwrap();
    let said = run(&["policy", "test", "ads.example", "--config", config]);
    assert!(
        said.contains("Block by BlockExact `ads.example` from"),
        "{said}"
    );
    assert!(
        said.trim_end().ends_with("list.txt, line 1"),
        "the rule's line: {said}"
    );
    let said = run(&["policy", "test", "x.ads.example", "--config", config]);
    assert!(
        said.contains("NoOpinion (no rule matches)"),
        "a hosts line is exact: {said}"
    );
    let said = run(&["policy", "test", "ok.ads.example", "--config", config]);
    assert!(
        said.contains("Allow by AllowSuffix `*.ok.ads.example`") && said.contains(", line 3"),
        "{said}"
    );
    let said = run(&[
        "policy",
        "test",
        "a.deny.ok.ads.example",
        "--config",
        config,
    ]);
    assert!(
        said.contains("Block by DenySuffix `*.deny.ok.ads.example` from policy.deny"),
        "{said}"
    );
    let said = run(&["policy", "test", "elsewhere.example", "--config", config]);
    assert!(said.contains("NoOpinion (no rule matches)"), "{said}");
}

#[tokio::test]
async fn local_records_of_every_type_wildcards_and_auto_ptr() {
    use hickory_proto::rr::RecordType;
    use moat_system_tests::client::query_message;
    let upstream = TestUpstream::start().await;
    let records = [
        ("nas.lan", "A", "192.168.1.10"),
        ("nas.lan", "AAAA", "fd00::10"),
        ("www.lan", "CNAME", "nas.lan"),
        ("note.lan", "TXT", "hello from moat"),
        ("lan", "MX", "10 mail.lan"),
        ("_sip._udp.lan", "SRV", "0 5 5060 sip.lan"),
        ("*.dev.lan", "A", "192.168.1.99"),
        ("printer.lan", "PTR", "explicit.lan"),
    ];
    let mut policy = String::new();
    for (name, kind, value) in records {
        policy.push_str(&format!(
            "[[policy.local_records]]\nname = \"{name}\"\ntype = \"{kind}\"\nvalue = \"{value}\"\nttl = 120\n"
        ));
    }
    let moat = MoatProcess::start("", &policy_for(&upstream, &policy)).await;
    let ask = |name: &'static str, kind: RecordType| {
        let dns = moat.dns;
        async move { dns.udp_query(&query_message(name, kind, None)).await }
    };
    let a = ask("nas.lan", RecordType::A).await;
    assert_eq!(
        (ips(&a), a.answers[0].ttl),
        (vec!["192.168.1.10".to_owned()], 120)
    );
    assert!(a.metadata.authoritative);
    assert_eq!(ips(&ask("NAS.lan", RecordType::AAAA).await), ["fd00::10"]);
    assert_eq!(
        ips(&ask("www.lan", RecordType::A).await),
        ["nas.lan.", "192.168.1.10"],
        "CNAME answers any type, with its target's records"
    );
    assert_eq!(
        ips(&ask("note.lan", RecordType::TXT).await),
        ["hello from moat"]
    );
    assert_eq!(ips(&ask("lan", RecordType::MX).await), ["10 mail.lan."]);
    assert_eq!(
        ips(&ask("_sip._udp.lan", RecordType::SRV).await),
        ["0 5 5060 sip.lan."]
    );
    assert_eq!(
        ips(&ask("x.y.dev.lan", RecordType::A).await),
        ["192.168.1.99"],
        "wildcard"
    );
    let apex = ask("dev.lan", RecordType::A).await;
    assert_eq!(
        apex.metadata.response_code,
        ResponseCode::NXDomain,
        "a wildcard does not cover its own suffix: and `lan` never leaves"
    );
    assert_eq!(
        ips(&ask("10.1.168.192.in-addr.arpa", RecordType::PTR).await),
        ["nas.lan."],
        "auto PTR"
    );
    let v6_ptr = "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa";
    assert_eq!(ips(&ask(v6_ptr, RecordType::PTR).await), ["nas.lan."]);
    assert_eq!(
        ips(&ask("printer.lan", RecordType::PTR).await),
        ["explicit.lan."]
    );
    let nodata = ask("nas.lan", RecordType::TXT).await;
    assert!(nodata.answers.is_empty() && nodata.metadata.response_code == ResponseCode::NoError);
    assert_eq!(nodata.authorities.len(), 1, "SOA for negative caching");
    assert_eq!(
        upstream.count("nas.lan"),
        0,
        "local names never go upstream"
    );
}

#[test]
fn bad_local_records_are_refused_with_their_name() {
    use moat_system_tests::moat::binary;
    let dir = Scratch::new("bad-records");
    let config = dir.0.join("moat.toml");
    std::fs::write(
        &config,
        format!(
            "[instance]\ndata_dir = \"{}\"\n[[policy.local_records]]\nname = \"nas.lan\"\ntype = \"A\"\nvalue = \"fd00::1\"\n",
            dir.0.join("data").display()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(binary())
        .args([
            "policy",
            "test",
            "nas.lan",
            "--config",
            config.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("local record `nas.lan` A: `fd00::1` is not an IPv4 address"),
        "{said}"
    );
}

#[tokio::test]
async fn downloaded_lists_refresh_and_survive_an_outage() {
    use moat_system_tests::http::ListServer;
    let upstream = TestUpstream::start().await;
    let server = ListServer::start("||first.test^\n").await;
    let policy = policy_for(
        &upstream,
        &format!(
            "[[policy.blocklists]]\nsource = \"http://{}/hosts.txt\"\nrefresh = \"1s\"\n",
            server.addr
        ),
    );
    let moat = MoatProcess::start("", &policy).await;
    let blocked = |name: &'static str| {
        let dns = moat.dns;
        async move {
            for _ in 0..100 {
                if ips(&dns.a(name).await) == ["0.0.0.0"] {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        }
    };
    assert!(
        blocked("x.first.test").await,
        "downloaded list applied; log:\n{}",
        moat.log()
    );
    server.set("||first.test^\n||second.test^\n");
    assert!(blocked("x.second.test").await, "refreshed list applied");

    server.stop();
    let moat = moat.restart().await;
    assert_eq!(
        ips(&moat.dns.a("y.second.test").await),
        ["0.0.0.0"],
        "last good copy after restart"
    );
    let mut reported = false;
    for _ in 0..50 {
        reported = moat
            .log()
            .contains("list download failed; keeping the last good copy");
        if reported {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        reported,
        "the failed download is reported; log:\n{}",
        moat.log()
    );
}

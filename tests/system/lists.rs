//! Every list syntax downloaded from list servers and answered by a real
//! `moat`: hosts lines exact, a hosts line's address answered (a rewrite),
//! `||name^` subtrees, `@@` exceptions, dnsmasq subtrees, Pi-hole regexes;
//! and each source's counts in the policy status.

use std::time::Duration;

use moat_system_tests::http::ListServer;
use moat_system_tests::{MoatProcess, TestUpstream};

use super::{ips, policy_for};

/// The fixtures the compiler's unit tests read too.
const FIXTURES: [(&str, &str); 5] = [
    (
        "hosts",
        include_str!("../../appliance/src/compile/fixtures/hosts.txt"),
    ),
    (
        "domains",
        include_str!("../../appliance/src/compile/fixtures/domains.txt"),
    ),
    (
        "adblock",
        include_str!("../../appliance/src/compile/fixtures/adblock.txt"),
    ),
    (
        "dnsmasq",
        include_str!("../../appliance/src/compile/fixtures/dnsmasq.txt"),
    ),
    (
        "regex",
        include_str!("../../appliance/src/compile/fixtures/regex.txt"),
    ),
];

const BLOCKED: &str = "0.0.0.0";
const FORWARDED: &str = "192.0.2.1";

#[tokio::test]
async fn every_list_syntax_answers_as_adguard_home_reads_it() {
    let upstream = TestUpstream::start().await;
    let mut servers = Vec::new();
    let mut sources = String::new();
    for (name, text) in FIXTURES {
        let server = ListServer::start(text).await;
        sources.push_str(&format!(
            "[[policy.blocklists]]\nsource = \"http://{}/{name}.txt\"\n",
            server.addr
        ));
        servers.push(server);
    }
    let moat = MoatProcess::start("", &policy_for(&upstream, &sources)).await;
    let answer = |name: &'static str| {
        let dns = moat.dns;
        async move { ips(&dns.a(name).await) }
    };
    // URL sources apply once downloaded: wait for the last of them.
    let mut applied = false;
    for _ in 0..100 {
        applied = answer("dm-null.example").await == [BLOCKED]
            && answer("metrics.example").await == [BLOCKED]
            && answer("ads2.example").await == [BLOCKED]
            && answer("plain.example").await == [BLOCKED]
            && answer("ad1.example").await == [BLOCKED];
        if applied {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        applied,
        "lists downloaded and applied; log:\n{}",
        moat.log()
    );

    for (name, expected, why) in [
        ("tracker.example", BLOCKED, "a hosts line blocks its name"),
        ("x.tracker.example", FORWARDED, "and not the names below"),
        ("x.plain.example", FORWARDED, "a domain line is exact too"),
        ("x.ads2.example", BLOCKED, "||name^ covers the names below"),
        ("ads.example", BLOCKED, "||ads.example^"),
        ("x.ads.example", BLOCKED, "||ads.example^"),
        (
            "ok.ads.example",
            FORWARDED,
            "an @@ exception beats the block",
        ),
        (
            "x.ok.ads.example",
            FORWARDED,
            "an @@|| exception covers below",
        ),
        (
            "exact-ok.ads.example",
            FORWARDED,
            "@@|name^ excepts the name",
        ),
        ("x.exact-ok.ads.example", BLOCKED, "and only the name"),
        ("below.example", FORWARDED, "*.name does not cover the name"),
        ("x.below.example", BLOCKED, "*.name covers the names below"),
        ("client.example", FORWARDED, "a $client rule is not applied"),
        ("x.dm-null.example", BLOCKED, "address=/name/# covers below"),
        ("x.dm-local.example", BLOCKED, "local=/name/ covers below"),
        ("dm-forward.example", FORWARDED, "server=/name/IP forwards"),
        ("x.doubleclick.net", BLOCKED, "(\\.|^)doubleclick\\.net$"),
        ("ad7.example", BLOCKED, "^ad[[:digit:]]+\\."),
        ("x.ad7.example", FORWARDED, "a regex anchored at the start"),
        ("trackme.example", FORWARDED, "a ;querytype=AAAA regex"),
    ] {
        assert_eq!(answer(name).await, [expected], "{name}: {why}");
    }
    assert_eq!(
        answer("rewritten.test").await,
        ["1.2.3.4"],
        "a hosts line with another address answers it"
    );
    assert_eq!(
        answer("rewrite.example").await,
        ["192.0.2.7", "192.0.2.8"],
        "one record per line naming it"
    );

    let view = moat.control().unwrap().policy().await.unwrap();
    let sources = serde_json::to_value(&view.sources).unwrap();
    let lines = |index: usize| sources[index]["lines"].clone();
    let counts = |index: usize| {
        let lines = lines(index);
        [
            lines["blocked"].clone(),
            lines["allowed"].clone(),
            lines["rejected"].clone(),
            lines["unsupported"].clone(),
        ]
        .map(|value| value.as_u64().unwrap_or(u64::MAX))
    };
    for (index, (format, _)) in FIXTURES.iter().enumerate() {
        assert_eq!(lines(index)["format"], *format, "{sources:#}");
    }
    assert_eq!(counts(0), [5, 0, 1, 3], "hosts: {sources:#}");
    assert_eq!(lines(0)["rewritten"], 4, "hosts: {sources:#}");
    assert_eq!(counts(1), [5, 0, 1, 1], "domains: {sources:#}");
    assert_eq!(counts(2), [9, 2, 1, 8], "adblock: {sources:#}");
    assert_eq!(counts(3), [8, 0, 1, 4], "dnsmasq: {sources:#}");
    assert_eq!(lines(3)["rewritten"], 1, "dnsmasq: {sources:#}");
    assert_eq!(counts(4), [5, 0, 2, 2], "regex: {sources:#}");
    assert_eq!(lines(4)["regexes"], 5, "regex: {sources:#}");
    let refused = lines(4)["notes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|note| note["example"] == "a(a|b){24}x$")
        .cloned()
        .unwrap_or_default();
    assert_eq!(refused["line"], 10, "the over-cap regex named: {sources:#}");
    let client = &lines(2)["notes"][0];
    assert_eq!(client["kind"], "unsupported");
    assert_eq!(client["reason"], "modifier $client (not yet supported)");
    assert_eq!(
        (client["count"].as_u64(), client["line"].as_u64()),
        (Some(2), Some(12))
    );
    assert_eq!(client["example"], "||client.example^$client=192.168.1.2");
    drop(servers);
}

//! Conditional forwarding and local names that never leak: a "router"
//! upstream for `lan` and the private reverse zones, a "public" one for
//! the rest, and what each of them receives. Also pause, local CNAMEs and
//! the CD bit in the cache.

use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use moat_system_tests::client::query_message;
use moat_system_tests::upstream::Reply;
use moat_system_tests::{MoatProcess, TestUpstream};

use super::ips;

const PRINTER: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 30);

fn addresses(ip: Ipv4Addr) -> Reply {
    Reply::Addresses {
        ttl: 300,
        ips: vec![IpAddr::V4(ip)],
    }
}

async fn ask(moat: &MoatProcess, name: &str, qtype: RecordType) -> Message {
    moat.dns.udp_query(&query_message(name, qtype, None)).await
}

/// A moat whose general upstream is `public`, with `policy` lines after
/// `upstreams` (which may add entries to it: `entries`).
async fn moat(public: &TestUpstream, entries: &str, policy: &str) -> MoatProcess {
    let config = format!(
        "[policy]\nupstreams = [\"udp://{}\"{entries}]\n{policy}\n",
        public.addr
    );
    MoatProcess::start("", &config).await
}

#[tokio::test]
async fn lan_names_and_private_reverse_zones_reach_only_the_router() {
    let (public, router) = (TestUpstream::start().await, TestUpstream::start().await);
    router.set("printer.lan", addresses(PRINTER));
    router.set("fritz.box", addresses(Ipv4Addr::new(192, 168, 178, 1)));
    let entries = format!(
        ", \"[/lan/168.192.in-addr.arpa/]udp://{}\", \"[/www.lan/]#\"",
        router.addr
    );
    let table = format!(
        "[[policy.forward]]\ndomain = \"fritz.box\"\nupstreams = [\"{}\"]\n",
        router.addr
    );
    let moat = moat(&public, &entries, &table).await;

    let printer = ask(&moat, "printer.lan", RecordType::A).await;
    assert_eq!(ips(&printer), [PRINTER.to_string()]);
    let ptr = ask(&moat, "1.1.168.192.in-addr.arpa", RecordType::PTR).await;
    assert_eq!(ptr.metadata.response_code, ResponseCode::NoError);
    let fritz = ask(&moat, "fritz.box", RecordType::A).await;
    assert_eq!(
        ips(&fritz),
        ["192.168.178.1"],
        "the table form forwards too"
    );
    for name in ["printer.lan", "1.1.168.192.in-addr.arpa", "fritz.box"] {
        assert_eq!(router.count(name), 1, "{name} reached the router");
        assert_eq!(
            public.count(name),
            0,
            "{name} never reached the public upstream"
        );
    }

    let public_names = ask(&moat, "example.com", RecordType::A).await;
    assert_eq!(ips(&public_names), ["192.0.2.1"]);
    let opted_out = ask(&moat, "www.lan", RecordType::A).await;
    assert_eq!(
        ips(&opted_out),
        ["192.0.2.1"],
        "`#` sends it to the general upstreams"
    );
    assert_eq!((public.total(), router.total()), (2, 3));
}

#[tokio::test]
async fn without_a_router_private_and_local_names_never_leave() {
    let public = TestUpstream::start().await;
    let moat = moat(&public, "", "").await;

    let ptr = ask(&moat, "1.1.168.192.in-addr.arpa", RecordType::PTR).await;
    assert_eq!(ptr.metadata.response_code, ResponseCode::NXDomain);
    assert!(ptr.metadata.authoritative);
    let soa = &ptr.authorities[0];
    assert!(matches!(soa.data, RData::SOA(_)), "{ptr:?}");
    assert_eq!(soa.name.to_string(), "168.192.in-addr.arpa.");
    for (name, qtype) in [
        ("4.3.2.10.in-addr.arpa", RecordType::PTR),
        (
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa",
            RecordType::PTR,
        ),
        ("printer.lan", RecordType::A),
        ("nas.home.arpa", RecordType::AAAA),
        ("db.internal", RecordType::A),
    ] {
        let answer = ask(&moat, name, qtype).await;
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
    }
    let localhost = ask(&moat, "localhost", RecordType::A).await;
    assert_eq!(ips(&localhost), ["127.0.0.1"], "RFC 6761");
    let public_ptr = ask(&moat, "8.8.8.8.in-addr.arpa", RecordType::PTR).await;
    assert_eq!(public_ptr.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        public.total(),
        1,
        "only the public PTR reached the upstream: {}",
        public.count("8.8.8.8.in-addr.arpa")
    );
}

#[tokio::test]
async fn pause_keeps_local_records_and_a_local_cname_comes_with_its_target() {
    let public = TestUpstream::start().await;
    public.set("cdn.example", addresses(Ipv4Addr::new(192, 0, 2, 80)));
    let records = "deny = [\"ads.test\"]\n\
        [[policy.local_records]]\nname = \"nas.lan\"\ntype = \"A\"\nvalue = \"192.168.1.20\"\n\
        [[policy.local_records]]\nname = \"files.lan\"\ntype = \"CNAME\"\nvalue = \"nas.lan\"\n\
        [[policy.local_records]]\nname = \"www.lan\"\ntype = \"CNAME\"\nvalue = \"cdn.example\"\n";
    let moat = moat(&public, "", records).await;

    let local = ask(&moat, "files.lan", RecordType::A).await;
    let owners: Vec<_> = local.answers.iter().map(|r| r.name.to_string()).collect();
    assert_eq!(owners, ["files.lan.", "nas.lan."], "{local:?}");
    assert_eq!(ips(&local), ["nas.lan.", "192.168.1.20"]);
    let joined = ask(&moat, "www.lan", RecordType::A).await;
    assert_eq!(ips(&joined), ["cdn.example.", "192.0.2.80"], "{joined:?}");
    assert_eq!(
        public.count("cdn.example"),
        1,
        "the target was resolved upstream"
    );
    assert_eq!(public.count("www.lan"), 0);

    let output = moat.cli(&["pause"]);
    assert!(output.status.success(), "{output:?}");
    let paused = ask(&moat, "nas.lan", RecordType::A).await;
    assert_eq!(
        ips(&paused),
        ["192.168.1.20"],
        "local records answer while paused"
    );
    assert!(paused.metadata.authoritative);
    let unblocked = ask(&moat, "ads.test", RecordType::A).await;
    assert_eq!(ips(&unblocked), ["192.0.2.1"], "blocking is what pauses");
    assert_eq!(public.count("nas.lan"), 0);
}

#[tokio::test]
async fn cd_and_plain_queries_are_cached_apart() {
    let public = TestUpstream::start().await;
    public.set_checking_disabled("bogus.test", addresses(Ipv4Addr::new(192, 0, 2, 66)));
    let moat = moat(&public, "", "").await;
    let ask_cd = |cd: bool| {
        let mut message = query_message("bogus.test", RecordType::A, Some((1232, true)));
        message.metadata.checking_disabled = cd;
        let moat = &moat;
        async move { moat.dns.udp_query(&message).await }
    };
    for _ in 0..2 {
        let unchecked = ask_cd(true).await;
        assert_eq!(ips(&unchecked), ["192.0.2.66"]);
        assert!(unchecked.metadata.checking_disabled);
        let checked = ask_cd(false).await;
        assert_eq!(
            ips(&checked),
            ["192.0.2.1"],
            "a CD=1 answer is never served to CD=0"
        );
    }
    assert_eq!(
        public.count("bogus.test"),
        2,
        "one upstream query each, then the cache"
    );
}

#[tokio::test]
async fn ad_comes_only_from_a_trusted_upstream_and_only_to_clients_that_ask() {
    let (public, trusted) = (TestUpstream::start().await, TestUpstream::start().await);
    public.set_authentic(true);
    trusted.set_authentic(true);
    let entries = format!(", \"[/signed.test/]udp://{}?trusted\"", trusted.addr);
    let moat = moat(&public, &entries, "").await;
    let ask_ad = |name: &'static str, dnssec_ok: bool, ad: bool| {
        let mut message = query_message(name, RecordType::A, Some((1232, dnssec_ok)));
        message.metadata.authentic_data = ad;
        let moat = &moat;
        async move { moat.dns.udp_query(&message).await.metadata.authentic_data }
    };
    for round in 0..2 {
        assert!(ask_ad("www.signed.test", true, false).await, "DO, {round}");
        assert!(ask_ad("www.signed.test", false, true).await, "AD, {round}");
        assert!(
            !ask_ad("www.signed.test", false, false).await,
            "plain, {round}"
        );
        assert!(
            !ask_ad("www.public.test", true, true).await,
            "untrusted, {round}"
        );
    }
    assert_eq!(
        trusted.count("www.signed.test"),
        2,
        "DO=1 and DO=0, then the cache"
    );
    assert_eq!(public.count("www.public.test"), 1);
    assert_eq!(public.count("www.signed.test"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_forwards_as_the_bundle_it_runs_says() {
    use super::fleet::{PRIMARY, answers, pair, replica};
    let (public, router) = (TestUpstream::start().await, TestUpstream::start().await);
    router.set("printer.lan", addresses(PRINTER));
    let policy = format!(
        "[policy]\nupstreams = [\"udp://{}\", \"[/lan/]udp://{}\"]\n",
        public.addr, router.addr
    );
    let primary = MoatProcess::start(&format!("name = \"{PRIMARY}\""), &policy).await;
    let (replica, own_upstream) = replica().await;
    let before = ask(&replica, "printer.lan", RecordType::A).await;
    assert_eq!(
        before.metadata.response_code,
        ResponseCode::NXDomain,
        "its own policy has no forwarder for lan"
    );
    pair(&primary, &replica).await;
    answers(&replica, &[&primary], "printer.lan", &PRINTER.to_string()).await;
    assert!(router.count("printer.lan") >= 1);
    assert_eq!(
        public.count("printer.lan") + own_upstream.count("printer.lan"),
        0
    );
}

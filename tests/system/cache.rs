//! Cache behaviour seen from outside: hits, clamping, negative caching,
//! serve-stale, refresh of hot names, one upstream query per miss.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use moat::control::LogQuery;
use moat_system_tests::Reply;

use super::{ips, moat_with_upstream};

#[tokio::test]
async fn repeated_names_reach_upstream_once() {
    let (moat, upstream) = moat_with_upstream("").await;
    for _ in 0..5 {
        let answer = moat.dns.a("repeat.example.test").await;
        assert_eq!(ips(&answer), ["192.0.2.1"]);
    }
    assert_eq!(upstream.count("repeat.example.test"), 1);
    let stats = moat.control().unwrap().stats().await.unwrap().snapshot;
    assert_eq!(stats.cache_hits, 4, "{stats:?}");
    assert_eq!(stats.cache_misses, 1, "{stats:?}");
}

#[tokio::test]
async fn cached_ttl_counts_down() {
    let (moat, upstream) = moat_with_upstream("").await;
    upstream.set(
        "down.example.test",
        Reply::Addresses {
            ttl: 100,
            ips: vec![[192, 0, 2, 9].into()],
        },
    );
    let first = moat.dns.a("down.example.test").await;
    assert_eq!(first.answers[0].ttl, 100);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let later = moat.dns.a("down.example.test").await;
    assert!(
        (97..=98).contains(&later.answers[0].ttl),
        "ttl {}",
        later.answers[0].ttl
    );
}

#[tokio::test]
async fn concurrent_misses_share_one_upstream_query() {
    let (moat, upstream) = moat_with_upstream("").await;
    upstream.set_delay(Duration::from_millis(300));
    let asks = (0..50).map(|_| {
        let dns = moat.dns;
        tokio::spawn(async move { dns.a("herd.example.test").await })
    });
    for answer in futures_join(asks).await {
        assert_eq!(ips(&answer), ["192.0.2.1"]);
    }
    assert_eq!(upstream.count("herd.example.test"), 1);
}

async fn futures_join<T: Send + 'static>(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<T> {
    let mut results = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        results.push(task.await.unwrap());
    }
    results
}

#[tokio::test]
async fn ttls_are_clamped_to_min_and_max() {
    let (moat, upstream) =
        moat_with_upstream("[tuning.cache]\nmin_ttl = \"60s\"\nmax_ttl = \"120s\"\n").await;
    upstream.set(
        "short.example.test",
        Reply::Addresses {
            ttl: 5,
            ips: vec![[192, 0, 2, 5].into()],
        },
    );
    upstream.set(
        "long.example.test",
        Reply::Addresses {
            ttl: 99_999,
            ips: vec![[192, 0, 2, 6].into()],
        },
    );
    assert_eq!(moat.dns.a("short.example.test").await.answers[0].ttl, 60);
    assert_eq!(moat.dns.a("long.example.test").await.answers[0].ttl, 120);
}

#[tokio::test]
async fn negative_answers_are_cached_per_rfc2308() {
    let (moat, upstream) = moat_with_upstream("[tuning.cache]\nnegative_ttl = \"40s\"\n").await;
    upstream.set(
        "gone.example.test",
        Reply::NxDomain {
            soa_ttl: 3600,
            minimum: 30,
        },
    );
    upstream.set(
        "capped.example.test",
        Reply::NxDomain {
            soa_ttl: 3600,
            minimum: 3600,
        },
    );
    for _ in 0..3 {
        let answer = moat.dns.a("gone.example.test").await;
        assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
        let soa_ttl = answer.authorities[0].ttl;
        assert!(
            (29..=30).contains(&soa_ttl),
            "SOA TTL follows MINIMUM: {soa_ttl}"
        );
    }
    assert_eq!(upstream.count("gone.example.test"), 1);
    let capped = moat.dns.a("capped.example.test").await;
    assert_eq!(
        capped.authorities[0].ttl, 40,
        "negative_ttl caps the SOA MINIMUM"
    );
}

#[tokio::test]
async fn stale_answers_are_served_when_upstream_dies() {
    let (moat, mut upstream) = moat_with_upstream(
        "[tuning.cache]\nstale_ttl = \"1h\"\nstale_answer_ttl = \"30s\"\nstale_answer_timeout = \"300ms\"\n[tuning.upstream]\ntimeout = \"500ms\"\n",
    )
    .await;
    upstream.set(
        "stale.example.test",
        Reply::Addresses {
            ttl: 1,
            ips: vec![[192, 0, 2, 77].into()],
        },
    );
    assert_eq!(ips(&moat.dns.a("stale.example.test").await), ["192.0.2.77"]);
    upstream.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stale = moat.dns.a("stale.example.test").await;
    assert_eq!(stale.metadata.response_code, ResponseCode::NoError);
    assert_eq!(ips(&stale), ["192.0.2.77"]);
    assert_eq!(
        stale.answers[0].ttl, 30,
        "stale answers carry stale_answer_ttl"
    );
    // A name never seen fails: nothing stale to serve.
    let unknown = moat.dns.a("never.example.test").await;
    assert_eq!(unknown.metadata.response_code, ResponseCode::ServFail);
    let stats = moat.control().unwrap().stats().await.unwrap().snapshot;
    assert!(stats.stale_served >= 1, "{stats:?}");
}

#[tokio::test]
async fn hot_names_are_refreshed_before_expiry() {
    let (moat, upstream) = moat_with_upstream(
        "[tuning.cache]\nrefresh_before = \"50%\"\nrefresh_hot_hits = 3\nrefresh_hit_window = \"10s\"\n",
    )
    .await;
    upstream.set(
        "hot.example.test",
        Reply::Addresses {
            ttl: 4,
            ips: vec![[192, 0, 2, 4].into()],
        },
    );
    moat.dns.a("hot.example.test").await;
    moat.dns.a("hot.example.test").await;
    moat.dns.a("hot.example.test").await;
    tokio::time::sleep(Duration::from_millis(2200)).await;
    // Third hit in the window with under half the TTL left: refresh in the background.
    let answer = moat.dns.a("hot.example.test").await;
    assert!(
        answer.answers[0].ttl <= 2,
        "still the old entry: {}",
        answer.answers[0].ttl
    );
    for _ in 0..50 {
        if upstream.count("hot.example.test") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(upstream.count("hot.example.test"), 2, "refreshed once");
    tokio::time::sleep(Duration::from_millis(2300)).await;
    // The original entry would have expired by now; the refreshed one answers.
    let answer = moat.dns.a("hot.example.test").await;
    assert!(answer.answers[0].ttl >= 1, "fresh after refresh");
    assert_eq!(
        upstream.count("hot.example.test"),
        2,
        "served from the refreshed entry"
    );
}

#[tokio::test]
async fn query_log_is_flushed_to_data_dir() {
    let (moat, _upstream) =
        moat_with_upstream("[tuning.query_log]\nflush_interval = \"200ms\"\n").await;
    moat.dns.a("logged.example.test").await;
    let dir = moat.dir.0.join("data/querylog");
    let mut found = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            if std::fs::read_to_string(entry.path())
                .unwrap_or_default()
                .contains("\"logged.example.test\"")
            {
                found = true;
            }
        }
        if found {
            break;
        }
    }
    assert!(found, "query log file in {} names the query", dir.display());
    let recent = moat
        .control()
        .unwrap()
        .query_log(&LogQuery {
            limit: Some(5),
            ..LogQuery::default()
        })
        .await
        .unwrap()
        .page;
    assert_eq!(
        recent.entries.first().map(|entry| &entry.name[..]),
        Some(&b"logged.example.test"[..]),
        "{recent:?}"
    );
}

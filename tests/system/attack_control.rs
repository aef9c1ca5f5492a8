//! Attacks on the control plane, against the real binary on loopback: a
//! flood of wrong logins from one address and from two hundred, slow and
//! oversized requests, too many connections, durations that overflow, and
//! a policy that names a file outside the allowed directories.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use moat::clock;
use moat_system_tests::attack::{Peaks, connect_from, http_exchange, rss_kib};
use moat_system_tests::moat::PASSWORD;
use moat_system_tests::{Credentials, RawApi};
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::moat_with_upstream;

/// One HTTP/1.1 exchange over a fresh connection from `source`.
async fn exchange(to: SocketAddr, source: Ipv4Addr, request: &[u8]) -> Option<(u16, String)> {
    http_exchange(to, source.into(), request).await
}

/// A login request with `password`.
fn login_request(password: &str) -> Vec<u8> {
    let body = json!({ "password": password }).to_string();
    format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What a wave of wrong logins met.
#[derive(Debug, Default)]
struct Tally {
    /// 401: the password was hashed and was wrong.
    hashed: u64,
    /// 429 from the per-client lockout or the global failure budget.
    throttled: u64,
    /// 429 because the hash queue was full.
    busy: u64,
    /// 429 at the per-client connection cap.
    connections: u64,
    /// Anything else (failed connections included).
    other: Vec<String>,
}

impl Tally {
    fn count(&mut self, answer: Option<(u16, String)>) {
        match answer {
            Some((401, _)) => self.hashed += 1,
            Some((429, text)) if text.contains("too many failed logins") => self.throttled += 1,
            Some((429, text)) if text.contains("too many logins at once") => self.busy += 1,
            Some((429, text)) if text.contains("too many connections") => self.connections += 1,
            Some((status, text)) => self.other.push(format!("{status}: {text}")),
            None => self.other.push("connection failed".into()),
        }
    }

    fn refused(&self) -> u64 {
        self.throttled + self.busy + self.connections
    }
}

/// Sends `count` wrong logins at once, the `index`th from `source(index)`.
async fn wave(to: SocketAddr, count: u32, source: impl Fn(u32) -> Ipv4Addr) -> Tally {
    let mut logins = tokio::task::JoinSet::new();
    for index in 0..count {
        let (source, request) = (source(index), login_request(&format!("guess {index}")));
        logins.spawn(async move { exchange(to, source, &request).await });
    }
    let mut tally = Tally::default();
    while let Some(answer) = logins.join_next().await {
        tally.count(answer.unwrap());
    }
    tally
}

/// The value of an unlabelled sample in a Prometheus exposition.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_wrong_logins_hash_at_most_two_at_once() {
    let (moat, _upstream) = moat_with_upstream("").await;
    let anonymous = moat.api(Credentials::Anonymous);
    crate::set_first_password(&anonymous, &moat, PASSWORD).await;
    let to = moat.control_addr();
    let idle = rss_kib(moat.pid());
    let peak = Peaks::watch(moat.pid());

    let started = clock::now();
    let one = wave(to, 200, |_| Ipv4Addr::LOCALHOST).await;
    let one_took = started.elapsed();
    let started = clock::now();
    let many = wave(to, 200, |index| Ipv4Addr::new(127, 0, 1, 1 + index as u8)).await;
    let many_took = started.elapsed();
    let started = clock::now();
    let mut paced = Tally::default();
    for batch in 0..10u8 {
        let part = wave(to, 4, |index| {
            Ipv4Addr::new(127, 0, 3, 1 + batch * 4 + index as u8)
        })
        .await;
        paced.hashed += part.hashed;
        paced.throttled += part.throttled;
        paced.busy += part.busy;
        paced.other.extend(part.other);
    }
    let paced_took = started.elapsed();
    let (peak_kib, _) = peak.stop().await;

    let metrics = moat.control().unwrap().get("/metrics").await.text;
    let hashes = metric(&metrics, "moat_login_hashes_total");
    let at_once = metric(&metrics, "moat_login_hashes_peak");
    println!(
        "200 wrong logins from one address in {one_took:?}: {one:?}\n\
         200 wrong logins from 200 addresses in {many_took:?}: {many:?}\n\
         40 more, four at a time, from 40 more addresses in {paced_took:?}: {paced:?}\n\
         hashes {hashes} (1 at setup), at most {at_once} at once; RSS idle {} MiB, peak {} MiB",
        idle / 1024,
        peak_kib / 1024
    );
    assert!(
        one.other.is_empty() && many.other.is_empty() && paced.other.is_empty(),
        "{one:?} {many:?} {paced:?}"
    );
    assert!(at_once <= 2, "{at_once} hashes ran at once");
    let wrong = one.hashed + many.hashed + paced.hashed;
    assert_eq!(hashes, 1 + wrong, "each 401 is one hash");
    assert!(
        one.hashed <= 6 + one_took.as_secs(),
        "one address: five free failures, a sixth, then one per lockout (1 s, 2 s …) while the wave lasts"
    );
    assert!(
        wrong <= 24,
        "the global budget (20, one back every 3 s) holds: {wrong}"
    );
    assert!(
        paced.throttled >= 15,
        "the budget refuses new addresses too"
    );
    assert!(
        one.refused() >= 190 && many.refused() >= 170,
        "most are refused"
    );
    assert!(
        peak_kib < idle * 2,
        "RSS grew from {idle} KiB to {peak_kib} KiB, more than twice idle"
    );

    let deadline = clock::now() + Duration::from_secs(30);
    let login = login_request(PASSWORD);
    let mut waited = Duration::ZERO;
    loop {
        let (status, text) = exchange(to, Ipv4Addr::LOCALHOST, &login).await.unwrap();
        if status == 204 {
            break;
        }
        assert_eq!(status, 429, "{text}");
        assert!(clock::now() < deadline, "still locked out: {text}");
        let retry: u64 = text
            .lines()
            .find_map(|line| line.strip_prefix("retry-after: "))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(1);
        waited += Duration::from_secs(retry);
        tokio::time::sleep(Duration::from_secs(retry)).await;
    }
    println!("the right password worked after waiting {waited:?} as Retry-After said");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_large_and_too_many_requests_are_cut_off() {
    let (moat, _upstream) = moat_with_upstream("").await;
    let to = moat.control_addr();
    let hog = Ipv4Addr::new(127, 0, 2, 1);
    let mut held = Vec::new();
    for _ in 0..32 {
        let mut stream = connect_from(hog.into(), to).await.unwrap();
        stream
            .write_all(b"GET /api/v1/auth HTTP/1.1\r\n")
            .await
            .unwrap();
        held.push(stream);
    }
    let (status, text) = exchange(
        to,
        hog,
        b"GET /api/v1/auth HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n",
    )
    .await
    .expect("an answer");
    assert_eq!(status, 429, "the 33rd connection from one address: {text}");
    let other = exchange(
        to,
        Ipv4Addr::new(127, 0, 2, 2),
        b"GET /api/v1/auth HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(other.map(|(status, _)| status), Some(200), "others get in");

    let big = "x".repeat(100_000);
    let (status, _) = exchange(to, Ipv4Addr::LOCALHOST, &login_request(&big))
        .await
        .expect("an answer");
    assert_eq!(status, 413, "a 100 kB login body is too large");

    let started = clock::now();
    let mut slow = held.pop().unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "a head that never ends is cut off");
    let took = started.elapsed();
    println!("an unfinished request head was cut off after {took:?}");
    assert!(took <= Duration::from_secs(12), "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_that_overflow_are_refused_not_panicked_on() {
    let (mut moat, _upstream) = moat_with_upstream("").await;
    let api = moat.control().unwrap();
    for (path, body) in [
        ("/api/v1/pairing-code", json!({ "valid": "300000000000y" })),
        ("/api/v1/pairing-code", json!({ "valid": "100000y" })),
        ("/api/v1/pairing-code", json!({ "valid": "25h" })),
        ("/api/v1/pause", json!({ "duration": "300000000000y" })),
    ] {
        let refused = api.post(path, &body).await;
        assert_eq!(
            refused.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {body}: {}",
            refused.text
        );
        assert!(refused.text.contains("at most"), "{}", refused.text);
    }
    let tuning = json!({ "query_log": { "retention": "300000000000y" } });
    let refused = api.put("/api/v1/tuning", &tuning).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.text
    );
    let cli = moat.cli(&["code", "--valid", "300000000000y"]);
    let said = String::from_utf8_lossy(&cli.stderr);
    assert!(
        !cli.status.success() && said.contains("at most 1day"),
        "{said}"
    );
    let code = api
        .post("/api/v1/pairing-code", &json!({ "valid": "24h" }))
        .await;
    assert_eq!(code.status, StatusCode::OK, "{}", code.text);
    assert_eq!(code.json()["valid_secs"], 86_400);
    assert!(moat.is_running());
    assert!(!moat.log().contains("panicked"), "{}", moat.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_naming_a_file_outside_the_allowed_directories_is_refused() {
    let (moat, _upstream) = moat_with_upstream("").await;
    let api = moat.control().unwrap();
    let mut policy = api.get("/api/v1/policy").await.json()["policy"].clone();
    policy["blocklists"] = json!([{ "source": "/etc/passwd" }]);
    let refused = api.put("/api/v1/policy", &policy).await;
    assert_eq!(
        refused.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        refused.text
    );
    assert!(
        refused.text.contains("outside the directories"),
        "{}",
        refused.text
    );
    let data = moat.dir.0.join("data");
    let copies = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().contains("passwd"))
        .count();
    assert_eq!(copies, 0, "no copy of the file is kept");
    let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode(&data) & 0o777, 0o700, "the data directory is private");
}

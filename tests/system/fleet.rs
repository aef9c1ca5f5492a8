//! The fleet seen from outside: a primary and replicas as real processes on
//! loopback, paired with one-time codes over QUIC, following every policy
//! change, surviving an absent primary, revoked, refusing local policy edits
//! and reporting their stats; codes that expired or were used, a relay in
//! the middle of pairing, replicas keeping their own tuning, and a restarted
//! replica serving its stored bundle.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moat::store::DataDir;
use moat::sync::identity::Identity;
use moat::sync::tls;
use moat_system_tests::moat::{Scratch, binary, free_udp_port};
use moat_system_tests::upstream::DEFAULT_TTL;
use moat_system_tests::{MoatProcess, TestUpstream};
use serde_json::Value;

use super::{ips, policy_for};

/// Name of every primary.
pub(super) const PRIMARY: &str = "hq";
/// Name of every replica.
pub(super) const REPLICA: &str = "branch-1";
/// How long a change may take to reach a replica.
pub(super) const SYNC_LIMIT: Duration = Duration::from_secs(15);
/// How long a replica may take to reconnect to a restarted primary.
const RECONNECT_LIMIT: Duration = Duration::from_secs(30);
/// The characters of a Crockford base32 code.
const CROCKFORD: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A primary named [`PRIMARY`] with its own upstream, a blocklist file
/// (kept in `list`) and a local record `printer.lan A 192.168.1.9`.
pub(super) struct Primary {
    pub(super) moat: MoatProcess,
    pub(super) upstream: TestUpstream,
    /// Holds the blocklist file.
    _files: Scratch,
    list: std::path::PathBuf,
}

impl Primary {
    /// Starts one listing `||ads.test^`, with `extra_instance` lines after its name.
    pub(super) async fn start(extra_instance: &str) -> Self {
        let upstream = TestUpstream::start().await;
        let files = Scratch::new("fleet-list");
        let list = files.0.join("list.txt");
        std::fs::write(&list, "||ads.test^\n").unwrap();
        let extra_instance = format!("name = \"{PRIMARY}\"\n{extra_instance}");
        let moat = MoatProcess::start(&extra_instance, &Self::policy(&upstream, &list)).await;
        Self {
            moat,
            upstream,
            _files: files,
            list,
        }
    }

    fn policy(upstream: &TestUpstream, list: &Path) -> String {
        policy_for(
            upstream,
            &format!(
                "[[policy.blocklists]]\nsource = \"{}\"\n\n[[policy.local_records]]\nname = \"printer.lan\"\ntype = \"A\"\nvalue = \"192.168.1.9\"\nttl = 120\n",
                list.display()
            ),
        )
    }

    /// Rewrites its blocklist file: one `||name^` rule a line, each
    /// covering the name and every name below it.
    pub(super) fn set_list(&self, names: &[&str]) {
        let rules: String = names.iter().map(|name| format!("||{name}^\n")).collect();
        std::fs::write(&self.list, rules).unwrap();
    }

    /// Rewrites its blocklist and has the running primary reload it.
    fn change_list(&self, names: &[&str], replica: &MoatProcess) {
        self.set_list(names);
        let output = self.moat.cli(&["reload"]);
        assert!(
            output.status.success(),
            "primary reload failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            logs(&[&self.moat, replica])
        );
    }
}

/// The replica's own upstream and config: a `[policy]` with only that
/// upstream (never used once it is a replica).
pub(super) async fn replica() -> (MoatProcess, TestUpstream) {
    replica_named(REPLICA, "").await
}

/// A replica-to-be named `name`, with `tuning` tables after its `[policy]`.
async fn replica_named(name: &str, tuning: &str) -> (MoatProcess, TestUpstream) {
    let upstream = TestUpstream::start().await;
    let moat = MoatProcess::start(
        &format!("name = \"{name}\""),
        &policy_for(&upstream, tuning),
    )
    .await;
    (moat, upstream)
}

fn replica_instance() -> String {
    format!("name = \"{REPLICA}\"")
}

/// Both logs (or more), labelled, for a failure message.
pub(super) fn logs(moats: &[&MoatProcess]) -> String {
    moats
        .iter()
        .map(|moat| {
            format!(
                "\n----- log of {} -----\n{}",
                moat.config_path.display(),
                moat.log()
            )
        })
        .collect()
}

/// Polls `check` every 100 ms until it gives `Ok`, for at most `limit`;
/// panics naming `what`, the last thing seen, and the logs of `moats`.
pub(super) async fn eventually<T>(
    what: &str,
    limit: Duration,
    moats: &[&MoatProcess],
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let mut seen = String::from("nothing yet");
    let polling = async {
        loop {
            match check().await {
                Ok(value) => return value,
                Err(now) => seen = now,
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    match tokio::time::timeout(limit, polling).await {
        Ok(value) => value,
        Err(_) => panic!(
            "{what}: not so after {limit:?}; last seen: {seen}{}",
            logs(moats)
        ),
    }
}

/// The status of a running instance, as JSON.
pub(super) async fn status(moat: &MoatProcess) -> Result<Value, String> {
    let status = moat.status().await?;
    serde_json::to_value(status).map_err(|err| err.to_string())
}

/// `moat replicas` on a primary, parsed.
fn replicas(primary: &MoatProcess) -> Result<Vec<Value>, String> {
    let output = primary.cli(&["replicas", "--json"]);
    if !output.status.success() {
        return Err(format!(
            "moat replicas failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_slice(&output.stdout).map_err(|err| {
        format!(
            "moat replicas printed no JSON array ({err}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// The entry named `name` in `moat replicas`.
fn replica_entry(primary: &MoatProcess, name: &str) -> Result<Value, String> {
    let list = replicas(primary)?;
    list.iter()
        .find(|entry| entry["name"] == name)
        .cloned()
        .ok_or_else(|| format!("{name} not among {list:?}"))
}

/// The bundle version in a status, which every appliance has once running.
pub(super) fn bundle_version(status: &Value) -> Result<u64, String> {
    status["bundle_version"]
        .as_u64()
        .ok_or_else(|| format!("no bundle_version in status {status}"))
}

/// Issues a pairing code on the primary.
pub(super) fn issue_code(primary: &MoatProcess) -> String {
    issue_code_with(primary, &[])
}

/// Issues a pairing code on the primary, with more arguments to `moat code`.
fn issue_code_with(primary: &MoatProcess, args: &[&str]) -> String {
    let mut command = vec!["code"];
    command.extend_from_slice(args);
    let output = primary.cli(&command);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "moat code failed: {}{}",
        String::from_utf8_lossy(&output.stderr),
        logs(&[primary])
    );
    let code = stdout.split_whitespace().next().unwrap_or_default();
    assert!(
        is_code(code),
        "moat code printed {stdout:?}: its first word is not XXXX-XXXX in Crockford base32"
    );
    code.to_string()
}

fn is_code(code: &str) -> bool {
    let groups: Vec<&str> = code.split('-').collect();
    groups.len() == 2
        && groups
            .iter()
            .all(|group| group.len() == 4 && group.chars().all(|c| CROCKFORD.contains(c)))
}

/// The same code with its first character changed: still well formed.
fn wrong_code(code: &str, attempt: usize) -> String {
    let first = code.chars().next().unwrap();
    let other = CROCKFORD
        .chars()
        .filter(|&c| c != first)
        .nth(attempt)
        .unwrap();
    let wrong = format!("{other}{}", &code[1..]);
    assert!(is_code(&wrong) && wrong != code);
    wrong
}

/// `moat join ADDR CODE --config CONFIG`, run by the binary itself (the
/// replica's daemon may or may not be running).
fn join(addr: SocketAddr, code: &str, config: &Path) -> Output {
    Command::new(binary())
        .args(["join", &addr.to_string(), code, "--config"])
        .arg(config)
        .output()
        .expect("run moat join")
}

/// Pairs `replica` (running or not) with `primary` by a fresh code.
pub(super) async fn pair(primary: &MoatProcess, replica: &MoatProcess) {
    let code = issue_code(primary);
    let output = join(primary.sync_addr().await, &code, &replica.config_path);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("paired with"),
        "moat join with the right code: exit {}, stdout {stdout:?}, stderr {:?}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        logs(&[primary, replica])
    );
}

/// Waits until `moat` answers `name` with `expected`.
pub(super) async fn answers(
    moat: &MoatProcess,
    others: &[&MoatProcess],
    name: &str,
    expected: &str,
) {
    let mut all = vec![moat];
    all.extend_from_slice(others);
    eventually(
        &format!("{name} answered with {expected}"),
        SYNC_LIMIT,
        &all,
        async || {
            let got = ips(&moat.dns.a(name).await);
            if got == [expected] {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await;
}

/// Waits until the replica is a replica running bundle `version`.
pub(super) async fn runs_version(replica: &MoatProcess, primary: &MoatProcess, version: u64) {
    eventually(
        &format!("replica runs bundle version {version}"),
        SYNC_LIMIT,
        &[primary, replica],
        async || {
            let status = status(replica).await?;
            if status["role"] == "replica" && status["bundle_version"] == version {
                Ok(())
            } else {
                Err(status.to_string())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pairing_then_sync_follows_every_change() {
    let primary = Primary::start("").await;
    let p = &primary.moat;
    let (r, r_upstream) = replica().await;
    let before = status(p).await.unwrap();
    assert_eq!(before["role"], "primary", "{before}");
    assert!(before["primary"].is_null(), "{before}");
    let version = bundle_version(&before).unwrap();

    pair(p, &r).await;
    answers(&r, &[p], "x.ads.test", "0.0.0.0").await;
    answers(&r, &[p], "printer.lan", "192.168.1.9").await;
    runs_version(&r, p, version).await;
    let replica_status = status(&r).await.unwrap();
    assert_eq!(
        replica_status["primary"]["name"], PRIMARY,
        "{replica_status}"
    );
    assert_eq!(
        replica_status["replicas"],
        Value::Array(vec![]),
        "{replica_status}"
    );
    assert_eq!(
        ips(&r.dns.a("fresh.test").await),
        ["192.0.2.1"],
        "forwarded"
    );
    assert!(
        primary.upstream.count("fresh.test") >= 1 && r_upstream.count("fresh.test") == 0,
        "the replica forwards to the upstreams synced from the primary{}",
        logs(&[p, &r])
    );
    eventually(
        "primary lists the replica as active",
        SYNC_LIMIT,
        &[p, &r],
        async || {
            let entry = replica_entry(p, REPLICA)?;
            if entry["status"] == "active"
                && entry["bundle_version"] == version
                && entry["connected"] == true
            {
                Ok(())
            } else {
                Err(entry.to_string())
            }
        },
    )
    .await;
    let listed = status(p).await.unwrap()["replicas"].clone();
    assert!(
        listed
            .as_array()
            .is_some_and(|list| list.iter().any(|entry| entry["name"] == REPLICA)),
        "primary status lists the replica: {listed}"
    );

    primary.change_list(&["ads.test", "new.test"], &r);
    let newer = bundle_version(&status(p).await.unwrap()).unwrap();
    assert!(
        newer > version,
        "a policy change raises the bundle version ({version} -> {newer})"
    );
    answers(&r, &[p], "new.test", "0.0.0.0").await;
    runs_version(&r, p, newer).await;
    answers(&r, &[p], "printer.lan", "192.168.1.9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_burn_the_code_and_pin_nothing() {
    let primary = Primary::start("").await;
    let p = &primary.moat;
    let (r, _r_upstream) = replica().await;
    let code = issue_code(p);
    let addr = p.sync_addr().await;
    for attempt in 0..3 {
        let wrong = wrong_code(&code, attempt);
        let output = join(addr, &wrong, &r.config_path);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success() && stderr.contains("wrong pairing code"),
            "attempt {} with {wrong} (issued {code}): exit {}, stderr {stderr:?}{}",
            attempt + 1,
            output.status,
            logs(&[p, &r])
        );
    }
    let primary_status = status(p).await.unwrap();
    let failed = primary_status["failed_pairings"].as_array().unwrap();
    assert_eq!(failed.len(), 3, "{primary_status}");
    assert!(
        failed.iter().all(|entry| entry["from"]
            .as_str()
            .is_some_and(|from| from.starts_with("127.0.0.1:"))),
        "each failure says where it came from: {primary_status}"
    );
    assert!(
        failed[2]["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("0 attempts left")),
        "the last one burned the code: {primary_status}"
    );
    let output = join(addr, &code, &r.config_path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("expired or was already used"),
        "the right code after 3 wrong ones: exit {}, stdout {:?}, stderr {stderr:?}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        logs(&[p, &r])
    );

    let replica_status = status(&r).await.unwrap();
    assert_eq!(replica_status["role"], "primary", "{replica_status}");
    assert!(
        replica_status["primary"].is_null(),
        "nothing pinned on the replica: {replica_status}"
    );
    assert!(
        !r.dir.0.join("data/primary.json").exists(),
        "no primary.json after failed pairings"
    );
    assert_eq!(
        replicas(p).unwrap(),
        Vec::<Value>::new(),
        "nothing pinned on the primary{}",
        logs(&[p, &r])
    );
    assert_eq!(
        ips(&r.dns.a("x.ads.test").await),
        ["192.0.2.1"],
        "still its own policy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_while_stopped_then_start_as_replica() {
    let primary = Primary::start("").await;
    let p = &primary.moat;
    let (mut r, _r_upstream) = replica().await;
    r.terminate();
    assert!(!r.is_running());
    pair(p, &r).await;
    assert!(
        r.dir.0.join("data/primary.json").exists(),
        "join pins the primary in the data dir{}",
        logs(&[p, &r])
    );

    let r = r.restart().await;
    let replica_status = status(&r).await.unwrap();
    assert_eq!(
        replica_status["role"],
        "replica",
        "started as a replica: {replica_status}{}",
        logs(&[p, &r])
    );
    answers(&r, &[p], "x.ads.test", "0.0.0.0").await;
    let version = bundle_version(&status(p).await.unwrap()).unwrap();
    runs_version(&r, p, version).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_keeps_serving_while_primary_is_away_and_catches_up() {
    let port = free_udp_port();
    let mut primary = Primary::start(&format!("sync = \"127.0.0.1:{port}\"")).await;
    let (r, _r_upstream) = replica().await;
    pair(&primary.moat, &r).await;
    answers(&r, &[&primary.moat], "x.ads.test", "0.0.0.0").await;
    let version = bundle_version(&status(&primary.moat).await.unwrap()).unwrap();
    runs_version(&r, &primary.moat, version).await;

    primary.moat.terminate();
    for name in ["y.ads.test", "printer.lan", "other.test"] {
        let expected = match name {
            "printer.lan" => "192.168.1.9",
            "other.test" => "192.0.2.1",
            _ => "0.0.0.0",
        };
        assert_eq!(
            ips(&r.dns.a(name).await),
            [expected],
            "{name} from the last bundle with the primary gone{}",
            logs(&[&r])
        );
    }
    let replica_status = status(&r).await.unwrap();
    assert_eq!(replica_status["role"], "replica", "{replica_status}");
    assert_eq!(
        replica_status["bundle_version"], version,
        "{replica_status}"
    );

    primary.set_list(&["ads.test", "later.test"]);
    primary.moat = primary.moat.restart().await;
    assert_eq!(
        primary.moat.sync_addr().await.port(),
        port,
        "the primary is back on its fixed sync port"
    );
    let newer = bundle_version(&status(&primary.moat).await.unwrap()).unwrap();
    assert!(
        newer > version,
        "the changed list gives a newer bundle ({version} -> {newer})"
    );
    eventually(
        "replica catches up with the returned primary",
        RECONNECT_LIMIT,
        &[&primary.moat, &r],
        async || {
            let got = ips(&r.dns.a("later.test").await);
            if got == ["0.0.0.0"] {
                Ok(())
            } else {
                Err(format!("later.test -> {got:?}"))
            }
        },
    )
    .await;
    runs_version(&r, &primary.moat, newer).await;
    eventually(
        "replica connected again",
        SYNC_LIMIT,
        &[&primary.moat, &r],
        async || {
            let status = status(&r).await?;
            if status["primary"]["connected"] == true {
                Ok(())
            } else {
                Err(status.to_string())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_replica_is_refused() {
    let primary = Primary::start("").await;
    let p = &primary.moat;
    let (r, _r_upstream) = replica().await;
    pair(p, &r).await;
    let version = bundle_version(&status(p).await.unwrap()).unwrap();
    runs_version(&r, p, version).await;

    let output = p.cli(&["revoke", REPLICA]);
    assert!(
        output.status.success(),
        "moat revoke: {}{}",
        String::from_utf8_lossy(&output.stderr),
        logs(&[p, &r])
    );
    eventually(
        "primary shows the replica revoked and cut off",
        SYNC_LIMIT,
        &[p, &r],
        async || {
            let entry = replica_entry(p, REPLICA)?;
            if entry["revoked"] == true && entry["connected"] == false {
                Ok(())
            } else {
                Err(entry.to_string())
            }
        },
    )
    .await;
    eventually(
        "replica sees itself revoked, and asks again only hourly",
        SYNC_LIMIT,
        &[p, &r],
        async || {
            let status = status(&r).await?;
            if status["primary"]["connected"] == false && status["primary"]["revoked"] == true {
                Ok(())
            } else {
                Err(status.to_string())
            }
        },
    )
    .await;

    primary.change_list(&["ads.test", "revoked.test"], &r);
    let newer = bundle_version(&status(p).await.unwrap()).unwrap();
    assert!(newer > version, "{version} -> {newer}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let replica_status = status(&r).await.unwrap();
    assert_eq!(
        replica_status["bundle_version"],
        version,
        "a revoked replica gets no newer bundle: {replica_status}{}",
        logs(&[p, &r])
    );
    assert_eq!(
        replica_status["primary"]["connected"], false,
        "{replica_status}"
    );
    assert_eq!(
        ips(&r.dns.a("revoked.test").await),
        ["192.0.2.1"],
        "not blocked by the change it never got"
    );
    assert_eq!(
        ips(&r.dns.a("x.ads.test").await),
        ["0.0.0.0"],
        "still serving its last bundle"
    );
    let entry = replica_entry(p, REPLICA).unwrap();
    assert!(
        entry["revoked"] == true && entry["connected"] == false,
        "still refused: {entry}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_refuses_local_policy_changes() {
    let primary = Primary::start("").await;
    let p = &primary.moat;
    let (r, r_upstream) = replica().await;
    pair(p, &r).await;
    answers(&r, &[p], "x.ads.test", "0.0.0.0").await;

    r.rewrite_config(
        &replica_instance(),
        &policy_for(&r_upstream, "deny = [\"local.test\"]\n"),
    );
    let output = r.cli(&["reload"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains(PRIMARY) && stderr.contains("synced from"),
        "a policy edit on a replica is refused naming its primary: exit {}, stderr {stderr:?}{}",
        output.status,
        logs(&[p, &r])
    );

    r.rewrite_config(
        &replica_instance(),
        &policy_for(&r_upstream, "\n[tuning.cache]\nmax_ttl = \"2h\"\n"),
    );
    let output = r.cli(&["reload"]);
    assert!(
        output.status.success(),
        "a tuning change on a replica reloads: {}{}",
        String::from_utf8_lossy(&output.stderr),
        logs(&[p, &r])
    );
    assert_eq!(
        ips(&r.dns.a("local.test").await),
        ["192.0.2.1"],
        "the refused deny rule never applied"
    );
    assert_eq!(
        ips(&r.dns.a("y.ads.test").await),
        ["0.0.0.0"],
        "the synced policy still applies after the tuning reload"
    );
    let replica_status = status(&r).await.unwrap();
    assert_eq!(replica_status["role"], "replica", "{replica_status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_carry_replica_stats() {
    let primary = Primary::start("").await;
    let p = &primary.moat;
    // Its own tuning limits it to 10 queries a minute over UDP.
    let limit = "[tuning.server]\nrate_limit_queries = 10\nrate_limit_exempt = []\n";
    let (r, _r_upstream) = replica_named(REPLICA, limit).await;
    pair(p, &r).await;
    let version = bundle_version(&status(p).await.unwrap()).unwrap();
    runs_version(&r, p, version).await;

    for index in 0..20 {
        r.dns.a(&format!("q{index}.stats.test")).await;
    }
    eventually(
        "primary shows the replica's 20 queries, 10 of them rate-limited",
        SYNC_LIMIT,
        &[p, &r],
        async || {
            let entry = replica_entry(p, REPLICA)?;
            let stat = |key: &str| entry["stats"][key].as_u64().unwrap_or(0);
            if stat("queries") >= 20
                && stat("limited") >= 10
                && entry["stats_updated_unix_ms"].is_u64()
            {
                Ok(())
            } else {
                Err(entry.to_string())
            }
        },
    )
    .await;
}

/// The status of a replica whose pairing failed: still its own primary,
/// nothing pinned.
async fn assert_nothing_pinned(moat: &MoatProcess, others: &[&MoatProcess]) {
    let mut all = vec![moat];
    all.extend_from_slice(others);
    let status = status(moat).await.unwrap();
    assert!(
        status["role"] == "primary" && status["primary"].is_null(),
        "nothing pinned after a failed pairing: {status}{}",
        logs(&all)
    );
    assert!(
        !moat.dir.0.join("data/primary.json").exists(),
        "no primary.json after a failed pairing{}",
        logs(&all)
    );
}

/// Asserts `output` is a failed `moat join` whose stderr says one of `messages`.
fn assert_join_failed(output: &Output, messages: &[&str], what: &str, moats: &[&MoatProcess]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && messages.iter().any(|message| stderr.contains(message)),
        "{what}: exit {}, stdout {:?}, stderr {stderr:?} (expected one of {messages:?}){}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        logs(moats)
    );
}

/// Asserts `output` is a successful `moat join`.
fn assert_joined(output: &Output, what: &str, moats: &[&MoatProcess]) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("paired with"),
        "{what}: exit {}, stdout {stdout:?}, stderr {:?}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        logs(moats)
    );
}

/// The TTL of the first answer `moat` gives for `name`.
async fn first_ttl(moat: &MoatProcess, name: &str) -> u32 {
    let answer = moat.dns.a(name).await;
    answer
        .answers
        .first()
        .map(|record| record.ttl)
        .unwrap_or_else(|| panic!("no answer for {name}: {answer:?}{}", logs(&[moat])))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_follow_a_blocked_name_and_a_local_record() {
    let primary = Primary::start("").await;
    let p = &primary.moat;
    let names = ["branch-1", "branch-2", "branch-3"];
    let mut started = Vec::new();
    for name in names {
        started.push(replica_named(name, "").await);
    }
    let rs: Vec<&MoatProcess> = started.iter().map(|(moat, _)| moat).collect();
    let mut everyone = vec![p];
    everyone.extend_from_slice(&rs);

    let mut codes = Vec::new();
    for r in &rs {
        let code = issue_code(p);
        assert!(
            !codes.contains(&code),
            "a fresh code per replica: {codes:?} {code}"
        );
        assert_joined(
            &join(p.sync_addr().await, &code, &r.config_path),
            "moat join with its own code",
            &everyone,
        );
        codes.push(code);
    }
    let version = bundle_version(&status(p).await.unwrap()).unwrap();
    for r in &rs {
        runs_version(r, p, version).await;
        answers(r, &[p], "x.ads.test", "0.0.0.0").await;
        assert_eq!(
            ips(&r.dns.a("nas.office.test").await),
            ["192.0.2.1"],
            "nas.office.test is not a local record yet: forwarded (and cached)"
        );
    }

    // One reload on the primary: a newly blocked name and a new local record.
    primary.set_list(&["ads.test", "new.test"]);
    let policy = format!(
        "{}\n[[policy.local_records]]\nname = \"nas.office.test\"\ntype = \"A\"\nvalue = \"192.168.1.20\"\nttl = 120\n",
        Primary::policy(&primary.upstream, &primary.list)
    );
    p.rewrite_config(&format!("name = \"{PRIMARY}\""), &policy);
    let output = p.cli(&["reload"]);
    assert!(
        output.status.success(),
        "primary reload: {}{}",
        String::from_utf8_lossy(&output.stderr),
        logs(&everyone)
    );
    let newer = bundle_version(&status(p).await.unwrap()).unwrap();
    assert!(newer > version, "{version} -> {newer}");
    answers(p, &[], "a.new.test", "0.0.0.0").await;
    answers(p, &[], "nas.office.test", "192.168.1.20").await;
    for r in &rs {
        answers(r, &everyone, "a.new.test", "0.0.0.0").await;
        answers(r, &everyone, "nas.office.test", "192.168.1.20").await;
        answers(r, &everyone, "printer.lan", "192.168.1.9").await;
        runs_version(r, p, newer).await;
    }

    eventually(
        "moat replicas lists all three active on the new version",
        SYNC_LIMIT,
        &everyone,
        async || {
            let list = replicas(p)?;
            let mut listed: Vec<&str> = list
                .iter()
                .filter(|entry| entry["status"] == "active" && entry["bundle_version"] == newer)
                .filter_map(|entry| entry["name"].as_str())
                .collect();
            listed.sort_unstable();
            if list.len() == 3 && listed == names {
                Ok(())
            } else {
                Err(serde_json::to_string(&list).unwrap_or_default())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_tuning_survives_syncs() {
    let primary = Primary::start("").await;
    let p = &primary.moat;
    let (r, _r_upstream) = replica_named(REPLICA, "\n[tuning.cache]\nmin_ttl = \"1h\"\n").await;
    pair(p, &r).await;
    let version = bundle_version(&status(p).await.unwrap()).unwrap();
    runs_version(&r, p, version).await;

    // Each round asks a name neither has cached: the primary passes on the
    // upstream's TTL, the replica raises it to its own minimum.
    let check = async |round: usize| {
        let name = format!("tuned-{round}.test");
        let primary_ttl = first_ttl(p, &name).await;
        let replica_ttl = first_ttl(&r, &name).await;
        assert!(
            primary_ttl <= DEFAULT_TTL,
            "round {round}: the primary answers {name} with the upstream's TTL {DEFAULT_TTL}, got {primary_ttl}{}",
            logs(&[p, &r])
        );
        assert!(
            replica_ttl >= 3600,
            "round {round}: the replica answers {name} with its own min_ttl (1h), got {replica_ttl}{}",
            logs(&[p, &r])
        );
    };
    check(0).await;

    let mut list = vec!["ads.test"];
    let mut running = version;
    for (round, added) in [(1, "one.test"), (2, "two.test")] {
        list.push(added);
        primary.change_list(&list, &r);
        let newer = bundle_version(&status(p).await.unwrap()).unwrap();
        assert!(newer > running, "{running} -> {newer}");
        runs_version(&r, p, newer).await;
        answers(&r, &[p], &format!("a.{added}"), "0.0.0.0").await;
        check(round).await;
        running = newer;
    }
    let replica_status = status(&r).await.unwrap();
    assert_eq!(replica_status["role"], "replica", "{replica_status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_reused_codes_are_refused() {
    let primary = Primary::start("").await;
    let p = &primary.moat;
    let (first, _first_upstream) = replica_named("branch-1", "").await;
    let (second, _second_upstream) = replica_named("branch-2", "").await;
    let everyone = [p, &first, &second];

    let code = issue_code_with(p, &["--valid", "1s"]);
    let addr = p.sync_addr().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_join_failed(
        &join(addr, &code, &first.config_path),
        &["expired or was already used"],
        "a code past its 1 s",
        &everyone,
    );
    assert_nothing_pinned(&first, &[p]).await;

    let code = issue_code(p);
    assert_joined(
        &join(addr, &code, &first.config_path),
        "the first replica with a fresh code",
        &everyone,
    );
    assert_join_failed(
        &join(addr, &code, &second.config_path),
        &["expired or was already used"],
        "a second replica with the code the first one used",
        &everyone,
    );
    assert_nothing_pinned(&second, &[p]).await;
    assert_eq!(
        ips(&second.dns.a("x.ads.test").await),
        ["192.0.2.1"],
        "the refused replica keeps its own policy"
    );

    let version = bundle_version(&status(p).await.unwrap()).unwrap();
    runs_version(&first, p, version).await;
    let listed: Vec<Value> = replicas(p).unwrap();
    assert!(
        listed.len() == 1 && listed[0]["name"] == "branch-1",
        "only the replica that used the code is pinned: {listed:?}{}",
        logs(&everyone)
    );
}

/// Bytes a [`PairingRelay`] passed on, each way.
#[derive(Debug, Default)]
struct Relayed {
    to_primary: AtomicU64,
    to_replica: AtomicU64,
}

/// A man in the middle of pairing: a QUIC endpoint with its own
/// certificate that takes one pairing connection, opens its own pairing
/// connection to the primary and passes the pairing stream's bytes both ways.
struct PairingRelay {
    addr: SocketAddr,
    endpoint: quinn::Endpoint,
    relayed: Arc<Relayed>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl PairingRelay {
    fn start(primary: SocketAddr) -> Self {
        let identity = Identity::generate("relay").expect("relay identity");
        let config = tls::server_config(&identity).expect("relay server config");
        let endpoint = quinn::Endpoint::server(config, SocketAddr::from(([127, 0, 0, 1], 0)))
            .expect("bind the relay");
        let addr = endpoint.local_addr().unwrap();
        let relayed = Arc::new(Relayed::default());
        let task = tokio::spawn(relay(
            endpoint.clone(),
            identity,
            primary,
            Arc::clone(&relayed),
        ));
        Self {
            addr,
            endpoint,
            relayed,
            task,
        }
    }

    /// Waits for the relay to end (at most 30 s); bytes passed to the
    /// primary and to the replica.
    async fn finish(self) -> Result<(u64, u64), String> {
        let ended = tokio::time::timeout(Duration::from_secs(30), self.task).await;
        self.endpoint.close(0u32.into(), b"relay done");
        let counts = (
            self.relayed.to_primary.load(Ordering::SeqCst),
            self.relayed.to_replica.load(Ordering::SeqCst),
        );
        match ended {
            Ok(Ok(Ok(()))) => Ok(counts),
            Ok(Ok(Err(err))) => Err(format!("relay failed: {err} (relayed {counts:?})")),
            Ok(Err(err)) => Err(format!("relay task: {err}")),
            Err(_) => Err(format!(
                "relay still running after 30 s (relayed {counts:?})"
            )),
        }
    }
}

async fn relay(
    endpoint: quinn::Endpoint,
    identity: Identity,
    primary: SocketAddr,
    relayed: Arc<Relayed>,
) -> Result<(), String> {
    let text = |err: &dyn std::fmt::Display| err.to_string();
    let incoming = endpoint.accept().await.ok_or("relay endpoint closed")?;
    let replica = incoming.await.map_err(|err| text(&err))?;
    if tls::channel(&replica) != Some(tls::Channel::Pairing) {
        return Err("the replica did not ask for pairing".into());
    }
    let client = tls::client_endpoint(primary).map_err(|err| text(&err))?;
    let config = tls::pairing_client_config(&identity).map_err(|err| text(&err))?;
    let upstream = client
        .connect_with(config, primary, tls::SERVER_NAME)
        .map_err(|err| text(&err))?
        .await
        .map_err(|err| text(&err))?;
    let (to_replica, from_replica) = replica.accept_bi().await.map_err(|err| text(&err))?;
    let (to_primary, from_primary) = upstream.open_bi().await.map_err(|err| text(&err))?;
    tokio::join!(
        pump(from_replica, to_primary, &relayed.to_primary),
        pump(from_primary, to_replica, &relayed.to_replica),
    );
    // Let the last bytes and stream ends arrive before closing.
    let _ = tokio::time::timeout(Duration::from_secs(5), replica.closed()).await;
    upstream.close(0u32.into(), b"relay done");
    let _ = tokio::time::timeout(Duration::from_secs(5), client.wait_idle()).await;
    Ok(())
}

/// Copies one stream into another until it ends or fails, then ends the other.
async fn pump(mut from: quinn::RecvStream, mut to: quinn::SendStream, count: &AtomicU64) {
    let mut buffer = vec![0; 4096];
    while let Ok(Some(len)) = from.read(&mut buffer).await {
        if to.write_all(&buffer[..len]).await.is_err() {
            return;
        }
        count.fetch_add(len as u64, Ordering::SeqCst);
    }
    let _ = to.finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_in_the_middle_is_detected() {
    let primary = Primary::start("").await;
    let p = &primary.moat;
    let (r, _r_upstream) = replica().await;
    let code = issue_code(p);
    let relay = PairingRelay::start(p.sync_addr().await);
    let relay_addr = relay.addr;

    let output = join(relay_addr, &code, &r.config_path);
    let (to_primary, to_replica) = relay.finish().await.unwrap();
    assert_join_failed(
        &output,
        &["wrong pairing code", "someone in the middle"],
        "pairing through a relay with its own certificate, with the right code",
        &[p, &r],
    );
    assert!(
        to_primary > 0 && to_replica > 0,
        "the pairing exchange went through the relay both ways ({to_primary} bytes to the primary, {to_replica} to the replica){}",
        logs(&[p, &r])
    );
    assert_nothing_pinned(&r, &[p]).await;
    assert_eq!(
        replicas(p).unwrap(),
        Vec::<Value>::new(),
        "nothing pinned on the primary{}",
        logs(&[p, &r])
    );

    // The code itself was right: straight to the primary, it pairs.
    assert_joined(
        &join(p.sync_addr().await, &code, &r.config_path),
        "the same code without the relay",
        &[p, &r],
    );
    let data = DataDir::open(&p.dir.0.join("data")).unwrap();
    let real = Identity::load_or_create(&data, PRIMARY).unwrap();
    let replica_status = status(&r).await.unwrap();
    assert_eq!(
        replica_status["primary"]["fingerprint"],
        real.fingerprint().to_string(),
        "the replica pinned the real primary, not the relay: {replica_status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_replica_serves_its_persisted_bundle_before_reconnecting() {
    let mut primary = Primary::start("").await;
    let (r, _r_upstream) = replica().await;
    pair(&primary.moat, &r).await;
    let version = bundle_version(&status(&primary.moat).await.unwrap()).unwrap();
    runs_version(&r, &primary.moat, version).await;
    answers(&r, &[&primary.moat], "x.ads.test", "0.0.0.0").await;

    primary.moat.terminate();
    let r = r.restart().await;
    let replica_status = status(&r).await.unwrap();
    assert!(
        replica_status["role"] == "replica"
            && replica_status["bundle_version"] == version
            && replica_status["primary"]["connected"] == false,
        "the restarted replica runs its stored bundle, unconnected: {replica_status}{}",
        logs(&[&r])
    );
    for (name, expected) in [
        ("y.ads.test", "0.0.0.0"),
        ("printer.lan", "192.168.1.9"),
        ("other.test", "192.0.2.1"),
    ] {
        assert_eq!(
            ips(&r.dns.a(name).await),
            [expected],
            "{name} from the stored bundle with the primary gone{}",
            logs(&[&r])
        );
    }
    let replica_status = status(&r).await.unwrap();
    assert_eq!(
        replica_status["primary"]["connected"], false,
        "still no primary to connect to: {replica_status}"
    );
}

/// Runs `moat run --config config`, which must exit within a few seconds;
/// its output.
fn run_expecting_exit(config: &Path) -> Output {
    let mut child = Command::new(binary())
        .args(["run", "--config"])
        .arg(config)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start moat");
    for _ in 0..100 {
        if child.try_wait().expect("wait for moat").is_some() {
            return child.wait_with_output().expect("moat's output");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("moat's output");
    panic!(
        "moat run kept running on {}: {}",
        config.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_a_space_is_refused_at_start_and_never_half_pairs() {
    let primary = Primary::start("").await;
    let p = &primary.moat;
    let dir = Scratch::new("living-room");
    let config = dir.0.join("moat.toml");
    std::fs::write(
        &config,
        format!(
            "[instance]\nname = \"living room\"\nlisten = [\"127.0.0.1:0\"]\n\
             control = \"127.0.0.1:0\"\nsync = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
            dir.0.join("data").display()
        ),
    )
    .unwrap();

    let output = run_expecting_exit(&config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "moat run started: {stderr}");
    assert!(
        stderr.contains("instance.name") && stderr.contains("living room"),
        "the error names the key and the value: {stderr}"
    );

    let code = issue_code(p);
    let output = join(p.sync_addr().await, &code, &config);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "moat join paired: {stderr}");
    assert!(stderr.contains("instance.name"), "{stderr}");
    assert_eq!(replicas(p).unwrap(), Vec::<Value>::new(), "nothing pinned");
    assert!(
        !dir.0.join("data").join("primary.json").exists(),
        "the replica pinned nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_that_fails_on_the_primary_leaves_the_replica_as_it_was() {
    let primary = Primary::start("").await;
    let p = &primary.moat;
    let upstream = TestUpstream::start().await;
    let own_policy = "[[policy.local_records]]\nname = \"mine.lan\"\ntype = \"A\"\nvalue = \"10.0.0.7\"\nttl = 120\n";
    let r = MoatProcess::start(&replica_instance(), &policy_for(&upstream, own_policy)).await;
    answers(&r, &[p], "mine.lan", "10.0.0.7").await;
    let before = status(&r).await.unwrap();

    // The primary cannot write its replica list: the pin fails.
    let replicas_file = p.dir.0.join("data").join("replicas.json");
    let _ = std::fs::remove_file(&replicas_file);
    std::fs::create_dir(&replicas_file).unwrap();
    let code = issue_code(p);
    let output = join(p.sync_addr().await, &code, &r.config_path);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "moat join succeeded: {}{}",
        String::from_utf8_lossy(&output.stdout),
        logs(&[p, &r])
    );
    assert!(
        stderr.contains("could not pin this replica") && stderr.contains("replicas.json"),
        "the join error says why: {stderr}"
    );

    let after = status(&r).await.unwrap();
    assert_eq!(after["role"], "primary", "still its own: {after}");
    assert!(after["primary"].is_null(), "no primary pinned: {after}");
    assert_eq!(after["bundle_version"], before["bundle_version"], "{after}");
    assert_eq!(ips(&r.dns.a("mine.lan").await), ["10.0.0.7"], "its policy");
    assert_ne!(
        ips(&r.dns.a("x.ads.test").await),
        ["0.0.0.0"],
        "not the primary's"
    );
    assert_eq!(replicas(p).unwrap(), Vec::<Value>::new(), "nothing pinned");

    // Once the primary can store pins again, a fresh code pairs it.
    std::fs::remove_dir(&replicas_file).unwrap();
    pair(p, &r).await;
    answers(&r, &[p], "x.ads.test", "0.0.0.0").await;
    replica_entry(p, REPLICA).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_opens_its_sync_port_only_while_a_pairing_code_or_replicas_need_it() {
    let port = free_udp_port();
    let primary = Primary::start(&format!("sync = \"127.0.0.1:{port}\"")).await;
    let p = &primary.moat;
    assert!(
        !p.dir.0.join("data/sync.addr").exists(),
        "no sync address before any code{}",
        logs(&[p])
    );
    let probe = std::net::UdpSocket::bind(("127.0.0.1", port));
    assert!(probe.is_ok(), "the sync port is not bound: {probe:?}");
    drop(probe);

    issue_code_with(p, &["--valid", "2s"]);
    let bound = p.sync_addr().await;
    assert_eq!(bound.port(), port);
    assert!(
        std::net::UdpSocket::bind(bound).is_err(),
        "a pairing code opens the sync port"
    );

    // The code expires with no replica paired: the port closes again.
    let deadline = moat::clock::now() + Duration::from_secs(15);
    while std::net::UdpSocket::bind(bound).is_err() {
        assert!(
            moat::clock::now() < deadline,
            "the sync port is still bound 15 s after its only code expired{}",
            logs(&[p])
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        !p.dir.0.join("data/sync.addr").exists(),
        "no sync address once the port is closed"
    );
    issue_code(p);
    assert_eq!(
        p.sync_addr().await.port(),
        port,
        "a new code opens it again"
    );
}

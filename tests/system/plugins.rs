//! Plugins of the user's own (`[[policy.plugins]]`), as real processes: the
//! example schedule is signed by a primary, sent to a replica and decides
//! there at the time the test feeds it (`tuning.plugins.clock_offset_secs`
//! on the replica), not an hour later; a change of its config changes the
//! replica's verdict with the next bundle; modules the primary must refuse
//! are refused naming the plugin, and the replica keeps its bundle; a
//! plugin that traps at run time is switched off while the built-in
//! blocklist keeps deciding; a schedule's verdict kept with a cached answer
//! is decided again at the boundary it named, and is counted in status,
//! `/metrics` and the query log; the example kiosk refuses, on a replica,
//! what its client may not reach, and only for that client.

use moat::compile::SCHEDULE_EXAMPLE;
use moat::policy::ABI_VERSION as ABI;
use moat_system_tests::api::RawApi;
use moat_system_tests::moat::Scratch;
use moat_system_tests::{MoatProcess, TestUpstream};
use serde_json::{Value, json};

use super::fleet::{
    Primary, REPLICA, SYNC_LIMIT, answers, bundle_version, eventually, logs, pair, runs_version,
    status,
};
use super::{ips, policy_for};

/// 2026-11-27, a Friday, 21:30 UTC: the time the replica's plugins are fed.
const FRIDAY_NINE_THIRTY: i64 = 1_795_737_600 + 21 * 3600 + 1800;

/// The length of the names the trapping plugin traps on: one no name of
/// the smoke set has.
const TRAP_LEN: usize = 16;

/// The `index`th name the trapping plugin traps on, each asked once (a
/// verdict kept with a cached answer is not asked again).
fn trap_name(index: usize) -> String {
    let name = format!("t{index:03}.plugin.test");
    assert_eq!(name.len(), TRAP_LEN);
    name
}

/// The `[[policy.plugins]]` entry of the schedule in `dir`, blocking
/// `social.test` for loopback clients on Fridays from `from` to 22:00.
fn schedule(dir: &Scratch, from: &str) -> Value {
    json!({
        "name": "bedtime",
        "module": dir.0.join("schedule.wasm"),
        "place": "first",
        "config": {
            "names": ["social.test"],
            "clients": ["127.0.0.0/8"],
            "days": ["fri"],
            "from": from,
            "until": "22:00",
        },
    })
}

/// A module speaking this ABI (or `abi`), with `extra` fields, whose
/// `moat_decide` is `body`.
fn module(abi: i32, extra: &str, pages: u32, body: &str) -> Vec<u8> {
    wat::parse_str(moat::policy::plugin_module_wat(abi, pages, extra, body)).unwrap()
}

/// Replaces the primary's `[[policy.plugins]]` with `plugins`; the answer.
pub(super) async fn set_plugins(
    primary: &MoatProcess,
    plugins: Value,
) -> moat_system_tests::api::RawResponse {
    let api = primary.control().unwrap();
    let mut policy = api.get("/api/v1/policy").await.json()["policy"].clone();
    policy["plugins"] = plugins;
    api.put("/api/v1/policy", &policy).await
}

/// Sets the primary's plugins, checks it took them, and waits until the
/// replica runs the bundle that carries them; that bundle's version.
async fn plugins_reach_replica(p: &MoatProcess, r: &MoatProcess, plugins: Value) -> u64 {
    let saved = set_plugins(p, plugins).await;
    assert!(saved.status.is_success(), "{}{}", saved.text, logs(&[p, r]));
    let version = bundle_version(&status(p).await.unwrap()).unwrap();
    runs_version(r, p, version).await;
    version
}

/// `moat plugin check FILE`.
fn plugin_check(file: &std::path::Path) -> std::process::Output {
    std::process::Command::new(moat_system_tests::moat::binary())
        .args(["plugin", "check"])
        .arg(file)
        .output()
        .unwrap()
}

/// Whether the replica answers `name` with the blocked answer.
async fn blocked(replica: &MoatProcess, name: &str) -> bool {
    ips(&replica.dns.a(name).await) == ["0.0.0.0"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_decides_on_the_replica_at_the_time_it_is_fed() {
    let dir = Scratch::new("plugins");
    std::fs::write(dir.0.join("schedule.wasm"), SCHEDULE_EXAMPLE).unwrap();
    let primary = Primary::start("").await;
    let p = &primary.moat;
    let offset = FRIDAY_NINE_THIRTY - moat::clock::unix_now() as i64;
    let replica_upstream = TestUpstream::start().await;
    let r = MoatProcess::start(
        &format!("name = \"{REPLICA}\""),
        &policy_for(
            &replica_upstream,
            &format!("[tuning.plugins]\nclock_offset_secs = {offset}\n"),
        ),
    )
    .await;
    pair(p, &r).await;

    let version = plugins_reach_replica(p, &r, json!([schedule(&dir, "21:00")])).await;
    answers(&r, &[p], "social.test", "0.0.0.0").await;
    assert!(
        blocked(&r, "m.social.test").await,
        "names below are blocked"
    );
    assert!(!blocked(&r, "other.test").await, "other names are not");
    assert!(
        !blocked(p, "social.test").await,
        "the primary is fed its own clock"
    );

    // An hour later (22:30) the window is over: the same question resolves.
    let api = r.control().unwrap();
    let mut tuning = api.get("/api/v1/tuning").await.json()["tuning"].clone();
    tuning["plugins"]["clock_offset_secs"] = json!(offset + 3600);
    let saved = api.put("/api/v1/tuning", &tuning).await;
    assert!(saved.status.is_success(), "{}", saved.text);
    assert!(
        !blocked(&r, "social.test").await,
        "an hour later{}",
        logs(&[&r])
    );
    tuning["plugins"]["clock_offset_secs"] = json!(offset);
    assert!(api.put("/api/v1/tuning", &tuning).await.status.is_success());
    assert!(blocked(&r, "social.test").await, "back at 21:30");

    // Its config changed on the primary (from 21:45): at 21:30 the next
    // bundle lets the name through.
    let changed = plugins_reach_replica(p, &r, json!([schedule(&dir, "21:45")])).await;
    assert!(changed > version);
    assert!(
        !blocked(&r, "social.test").await,
        "the new config's window{}",
        logs(&[p, &r])
    );

    // Refusals: each names the plugin and the reason; nothing is sealed.
    for (name, bytes, says) in [
        (
            "importer",
            module(ABI, r#"(import "env" "now" (func))"#, 1, "i32.const 0"),
            "imports `env.now`",
        ),
        ("old-abi", module(2, "", 1, "i32.const 0"), "ABI 2"),
        (
            "greedy",
            module(ABI, "", 1024, "i32.const 0"),
            "bytes of memory",
        ),
        ("trapper", module(ABI, "", 1, "unreachable"), "plugin fault"),
    ] {
        let file = dir.0.join(format!("{name}.wasm"));
        std::fs::write(&file, bytes).unwrap();
        let plugin = json!({ "name": name, "module": file });
        let refused = set_plugins(p, json!([schedule(&dir, "21:45"), plugin])).await;
        assert!(
            !refused.status.is_success()
                && refused.text.contains(&format!("plugin `{name}` refused"))
                && refused.text.contains(says),
            "{name}: {} {}",
            refused.status,
            refused.text
        );
        let now = bundle_version(&status(p).await.unwrap()).unwrap();
        assert_eq!(now, changed, "{name}: the primary sealed nothing");
        let checked = plugin_check(&file);
        let said = String::from_utf8_lossy(&checked.stderr);
        assert!(
            !checked.status.success() && said.contains(says),
            "moat plugin check {name}: {said}"
        );
    }
    let checked = plugin_check(&dir.0.join("schedule.wasm"));
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let replica_status = status(&r).await.unwrap();
    assert_eq!(
        bundle_version(&replica_status).unwrap(),
        changed,
        "{replica_status}"
    );

    // A plugin that traps on one name at run time, failing open to the
    // chain: it is switched off, and the built-in blocklist still blocks.
    let trapping = module(
        ABI,
        "",
        1,
        &format!(
            "(if (i32.eq (local.get 0) (i32.const {})) (then unreachable)) i32.const 0",
            TRAP_LEN
        ),
    );
    std::fs::write(dir.0.join("trapping.wasm"), trapping).unwrap();
    let trapping = json!({
        "name": "trapping",
        "module": dir.0.join("trapping.wasm"),
        "fail_mode": "skip",
    });
    plugins_reach_replica(p, &r, json!([trapping])).await;
    for index in 0..10 {
        assert!(
            !blocked(&r, &trap_name(index)).await,
            "skip: the chain decides"
        );
    }
    eventually(
        "the trapping plugin is switched off",
        SYNC_LIMIT,
        &[&r],
        async || {
            let status = status(&r).await?;
            let plugin = &status["plugins"][0];
            if plugin["name"] == "trapping" && plugin["switched_off"] == true {
                Ok(())
            } else {
                Err(status.to_string())
            }
        },
    )
    .await;
    assert!(
        blocked(&r, "a.ads.test").await,
        "the blocklist keeps deciding"
    );
    let metrics = api.get("/metrics").await.text;
    assert!(
        metrics.contains("moat_plugin_switched_off{plugin=\"trapping\"} 1"),
        "{metrics}"
    );
}

/// 2026-11-27, a Friday, 21:00 UTC: where the schedule's window starts.
const FRIDAY_NINE: i64 = 1_795_737_600 + 21 * 3600;

/// The value of the sample `series` (name and labels as written) in a
/// `/metrics` text, if it is there.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

/// How often the configured plugin `name` was asked, per `/metrics`.
async fn calls(moat: &MoatProcess, name: &str) -> f64 {
    let metrics = moat.control().unwrap().get("/metrics").await.text;
    sample(
        &metrics,
        &format!("moat_plugin_calls_total{{plugin=\"{name}\"}}"),
    )
    .unwrap_or_else(|| panic!("no calls of {name} in {metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_schedule_verdict_is_decided_again_at_the_boundary_it_named() {
    let dir = Scratch::new("plugins-boundary");
    std::fs::write(dir.0.join("schedule.wasm"), SCHEDULE_EXAMPLE).unwrap();
    let primary = Primary::start("").await;
    let p = &primary.moat;
    let saved = set_plugins(p, json!([schedule(&dir, "21:00")])).await;
    assert!(saved.status.is_success(), "{}{}", saved.text, logs(&[p]));
    // The plugins' clock stands `LEAD` seconds before the window opens.
    const LEAD: i64 = 3;
    let api = p.control().unwrap();
    let mut tuning = api.get("/api/v1/tuning").await.json()["tuning"].clone();
    let started = moat::clock::unix_now() as i64;
    tuning["plugins"]["clock_offset_secs"] = json!(FRIDAY_NINE - LEAD - started);
    assert!(api.put("/api/v1/tuning", &tuning).await.status.is_success());

    assert!(!blocked(p, "social.test").await, "before the window");
    assert!(
        !blocked(p, "social.test").await,
        "a cache hit, asked once more"
    );
    let asked = calls(p, "bedtime").await;
    assert_eq!(asked, 2.0, "the miss and the first hit");
    assert!(!blocked(p, "social.test").await);
    assert_eq!(
        calls(p, "bedtime").await,
        asked,
        "the kept verdict answered"
    );
    assert!(
        (moat::clock::unix_now() as i64) < started + LEAD,
        "the test ran past the boundary before it could look"
    );

    let boundary_ms = (started + LEAD) as u64 * 1000;
    let wait = boundary_ms.saturating_sub(moat::clock::unix_now_ms()) + 300;
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    assert!(
        blocked(p, "social.test").await,
        "decided again at 21:00{}",
        logs(&[p])
    );
    assert_eq!(calls(p, "bedtime").await, asked + 1.0);

    // Status and /metrics count it; the query log names it.
    let status = status(p).await.unwrap();
    let plugin = &status["plugins"][0];
    assert_eq!(
        (
            &plugin["calls"],
            &plugin["verdicts"]["no_opinion"],
            &plugin["verdicts"]["block"]
        ),
        (&json!(3), &json!(2), &json!(1)),
        "{status}"
    );
    assert!(plugin["decision_ns"].as_u64().unwrap() > 0, "{status}");
    let metrics = api.get("/metrics").await.text;
    let verdicts = |kind: &str| {
        sample(
            &metrics,
            &format!("moat_plugin_verdicts_total{{plugin=\"bedtime\",verdict=\"{kind}\"}}"),
        )
    };
    assert_eq!(
        (verdicts("block"), verdicts("no_opinion")),
        (Some(1.0), Some(2.0)),
        "{metrics}"
    );
    let seconds = sample(
        &metrics,
        "moat_plugin_decision_seconds_total{plugin=\"bedtime\"}",
    );
    assert!(
        seconds.is_some_and(|seconds| seconds > 0.0 && seconds < 1.0),
        "{metrics}"
    );
    let log = api.get("/api/v1/querylog").await.json();
    let entries = log["entries"].as_array().unwrap();
    let decided: Vec<&Value> = entries
        .iter()
        .filter(|entry| entry["plugin"] == "bedtime")
        .collect();
    assert_eq!(decided.len(), 1, "{log}");
    assert_eq!(decided[0]["name"], "social.test");
    assert_eq!(decided[0]["outcome"], "blocked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kiosk_on_the_primary_refuses_other_names_for_its_client_on_the_replica() {
    let dir = Scratch::new("plugins-kiosk");
    let module = dir.0.join("kiosk.wasm");
    std::fs::write(&module, moat::compile::KIOSK_EXAMPLE).unwrap();
    let primary = Primary::start("").await;
    let p = &primary.moat;
    let replica_upstream = TestUpstream::start().await;
    let r = MoatProcess::start(
        &format!("name = \"{REPLICA}\""),
        &policy_for(&replica_upstream, ""),
    )
    .await;
    pair(p, &r).await;
    let kiosk = json!([{
        "name": "kiosk",
        "module": module,
        "place": "first",
        "config": { "clients": ["127.0.0.2"], "names": ["kiosk.test"] },
    }]);
    plugins_reach_replica(p, &r, kiosk).await;

    let kiosk_client: std::net::IpAddr = [127, 0, 0, 2].into();
    let other_client: std::net::IpAddr = [127, 0, 0, 3].into();
    let refused = r.dns.a_from(kiosk_client, "other.test").await;
    assert_eq!(
        refused.metadata.response_code,
        hickory_proto::op::ResponseCode::Refused,
        "{refused:?}{}",
        logs(&[&r])
    );
    let answered = r.dns.a_from(other_client, "other.test").await;
    assert_eq!(
        answered.metadata.response_code,
        hickory_proto::op::ResponseCode::NoError
    );
    assert!(!ips(&answered).is_empty(), "{answered:?}");
    let listed = r.dns.a_from(kiosk_client, "www.kiosk.test").await;
    assert!(
        !ips(&listed).is_empty(),
        "a listed name resolves for the kiosk"
    );
    let again = r.dns.a_from(kiosk_client, "other.test").await;
    assert_eq!(
        again.metadata.response_code,
        hickory_proto::op::ResponseCode::Refused,
        "the other client's pass is not the kiosk's"
    );

    let log = r.control().unwrap().get("/api/v1/querylog").await.json();
    let refusals = log["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["plugin"] == "kiosk")
        .count();
    assert_eq!(refusals, 2, "{log}");
}

/// `moat plugin ARGS...`.
fn plugin_tool(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(moat_system_tests::moat::binary())
        .arg("plugin")
        .args(args)
        .output()
        .unwrap()
}

/// What `moat plugin ARGS...` prints, which must succeed.
fn plugin_says(args: &[&std::ffi::OsStr]) -> String {
    let done = plugin_tool(args);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    String::from_utf8(done.stdout).unwrap()
}

#[test]
fn a_new_plugin_builds_as_written_and_the_check_accepts_it() {
    let dir = Scratch::new("plugin-new");
    let new = [
        "new".as_ref(),
        "no-ads".as_ref(),
        "--dir".as_ref(),
        dir.0.as_os_str(),
    ];
    plugin_says(&new);
    let root = dir.0.join("no-ads");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = std::process::Command::new(cargo)
        .args([
            "build",
            "--offline",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
        ])
        .current_dir(&root)
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "the template does not build (is the wasm32-unknown-unknown target installed?): {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let module = root.join("target/wasm32-unknown-unknown/release/no_ads.wasm");
    plugin_says(&["check".as_ref(), module.as_os_str()]);
    let config = dir.0.join("config.toml");
    std::fs::write(&config, "names = [\"ads.example\"]\n").unwrap();
    let said = |name: &str| {
        let config = ["--config".as_ref(), config.as_os_str()];
        plugin_says(
            &[
                &["test".as_ref(), module.as_os_str(), name.as_ref()],
                &config[..],
            ]
            .concat(),
        )
    };
    assert!(
        said("x.ads.example").starts_with("x.ads.example: Block"),
        "{}",
        said("x.ads.example")
    );
    assert!(
        said("example.org").starts_with("example.org: NoOpinion"),
        "{}",
        said("example.org")
    );
    let again = plugin_tool(&new);
    assert!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("exists already"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
}

#[test]
fn plugin_test_prints_the_schedules_verdict_at_two_times() {
    let dir = Scratch::new("plugin-test");
    let module = dir.0.join("schedule.wasm");
    std::fs::write(&module, SCHEDULE_EXAMPLE).unwrap();
    let config = dir.0.join("bedtime.toml");
    std::fs::write(
        &config,
        "names = [\"social.test\"]\nclients = [\"192.168.1.0/24\"]\nfrom = \"21:00\"\nuntil = \"22:00\"\n",
    )
    .unwrap();
    let at = |time: &str, client: &str| {
        plugin_says(&[
            "test".as_ref(),
            module.as_os_str(),
            "m.social.test".as_ref(),
            "--client".as_ref(),
            client.as_ref(),
            "--time".as_ref(),
            time.as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
        ])
    };
    let nine_thirty = at("2026-11-27T21:30:00Z", "192.168.1.7");
    assert!(
        nine_thirty.starts_with("m.social.test: Block by Plugin `social.test` from schedule")
            && nine_thirty.contains(&format!("holds until {}", FRIDAY_NINE + 3600)),
        "{nine_thirty}"
    );
    let later = at(&(FRIDAY_NINE + 2 * 3600).to_string(), "192.168.1.7");
    assert!(later.starts_with("m.social.test: NoOpinion"), "{later}");
    let elsewhere = at("2026-11-27T21:30:00Z", "10.0.0.1");
    assert!(
        elsewhere.starts_with("m.social.test: NoOpinion"),
        "{elsewhere}"
    );
    let bad = plugin_tool(&[
        "test".as_ref(),
        module.as_os_str(),
        "x".as_ref(),
        "--time".as_ref(),
        "soon".as_ref(),
    ]);
    assert!(
        !bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--time `soon`"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

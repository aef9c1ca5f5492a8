//! Plugins of the user's own (`[[policy.plugins]]`), as real processes: the
//! example schedule is signed by a primary, sent to a replica and decides
//! there at the time the test feeds it (`tuning.plugins.clock_offset_secs`
//! on the replica), not an hour later; a change of its config changes the
//! replica's verdict with the next bundle; modules the primary must refuse
//! are refused naming the plugin, and the replica keeps its bundle; a
//! plugin that traps at run time is switched off while the built-in
//! blocklist keeps deciding.

use moat::compile::SCHEDULE_EXAMPLE;
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
async fn set_plugins(primary: &MoatProcess, plugins: Value) -> moat_system_tests::api::RawResponse {
    let api = primary.control().unwrap();
    let mut policy = api.get("/api/v1/policy").await.json()["policy"].clone();
    policy["plugins"] = plugins;
    api.put("/api/v1/policy", &policy).await
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

    let saved = set_plugins(p, json!([schedule(&dir, "21:00")])).await;
    assert!(
        saved.status.is_success(),
        "{}{}",
        saved.text,
        logs(&[p, &r])
    );
    let version = bundle_version(&status(p).await.unwrap()).unwrap();
    runs_version(&r, p, version).await;
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
    let saved = set_plugins(p, json!([schedule(&dir, "21:45")])).await;
    assert!(saved.status.is_success(), "{}", saved.text);
    let changed = bundle_version(&status(p).await.unwrap()).unwrap();
    assert!(changed > version);
    runs_version(&r, p, changed).await;
    assert!(
        !blocked(&r, "social.test").await,
        "the new config's window{}",
        logs(&[p, &r])
    );

    // Refusals: each names the plugin and the reason; nothing is sealed.
    for (name, bytes, says) in [
        (
            "importer",
            module(3, r#"(import "env" "now" (func))"#, 1, "i32.const 0"),
            "imports `env.now`",
        ),
        ("old-abi", module(2, "", 1, "i32.const 0"), "ABI 2"),
        (
            "greedy",
            module(3, "", 1024, "i32.const 0"),
            "bytes of memory",
        ),
        ("trapper", module(3, "", 1, "unreachable"), "plugin fault"),
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
        3,
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
    let saved = set_plugins(p, json!([trapping])).await;
    assert!(saved.status.is_success(), "{}", saved.text);
    let last = bundle_version(&status(p).await.unwrap()).unwrap();
    runs_version(&r, p, last).await;
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

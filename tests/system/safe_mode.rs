//! Safe mode: a daemon whose saved policy no longer parses refuses to
//! start, naming the file, and `moat run --safe-mode` (what init starts
//! after failed starts) serves the last bundle it sealed and says so, also
//! past a torn replicas file.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use moat::config::Config;
use moat::control::ControlClient;
use moat::daemon::Status;
use moat_system_tests::moat::binary;
use moat_system_tests::{DnsClient, RawApi};
use reqwest::StatusCode;
use serde_json::json;

use crate::{ips, moat_with_upstream};

const REASON: &str = "the test says so";

/// Runs `moat run --config <config> <extra>`; waits up to 10 s for its exit.
fn run_to_exit(config: &Path) -> (bool, String) {
    let mut child = Command::new(binary())
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start moat");
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            let output = child.wait_with_output().unwrap();
            return (
                status.success(),
                String::from_utf8_lossy(&output.stderr).into(),
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("moat with a broken saved policy kept running");
}

/// `moat run --safe-mode=REASON` on `config`, logging to `log`; killed on drop.
struct SafeMoat(Child);

impl Drop for SafeMoat {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn start_safe(config: &Path, data: &Path, log: &Path) -> (SafeMoat, Status, ControlClient) {
    let _ = std::fs::remove_file(data.join("control.addr"));
    let mut moat = SafeMoat(
        Command::new(binary())
            .args(["run", "--config"])
            .arg(config)
            .arg(format!("--safe-mode={REASON}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start moat in safe mode"),
    );
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    for _ in 0..300 {
        if let Some(exit) = moat.0.try_wait().unwrap() {
            panic!("safe mode exited ({exit}); log:\n{}", log_text());
        }
        if data.join("control.addr").exists() {
            let client = ControlClient::for_config(&Config::load(config).unwrap()).unwrap();
            if let Ok(status) = client.status().await {
                return (moat, status, client);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("safe mode not ready after 30 s; log:\n{}", log_text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_policy_that_no_longer_parses_comes_up_in_safe_mode_on_the_last_bundle() {
    let (mut moat, _upstream) = moat_with_upstream("").await;
    let api = moat.control().unwrap();
    let mut policy = api.get("/api/v1/policy").await.json()["policy"].clone();
    policy["deny"] = json!(["denied.test"]);
    policy["blocked_response"] = json!("nxdomain");
    policy["local_records"] =
        json!([{"name": "nas.lan", "type": "A", "value": "192.168.1.20", "ttl": 120}]);
    let saved = api.put("/api/v1/policy", &policy).await;
    assert_eq!(saved.status, StatusCode::OK, "{}", saved.text);
    assert_eq!(ips(&moat.dns.a("nas.lan").await), ["192.168.1.20"]);
    let sealed = moat.status().await.unwrap().bundle_version;
    moat.terminate();

    // An upgrade that no longer knows a key the saved file has.
    let saved_file = moat.dir.0.join("data/policy-settings.toml");
    let mut text = std::fs::read_to_string(&saved_file).unwrap();
    text.insert_str(text.find("[policy]\n").unwrap() + 9, "retired = true\n");
    std::fs::write(&saved_file, text).unwrap();

    let (started, stderr) = run_to_exit(&moat.config_path);
    assert!(!started, "a normal start fails");
    assert!(
        stderr.contains("policy-settings.toml"),
        "names the file: {stderr}"
    );
    assert!(stderr.contains("retired"), "names the key: {stderr}");

    let data = moat.dir.0.join("data");
    std::fs::write(data.join("replicas.json"), "{ torn").unwrap();
    let log = moat.dir.0.join("safe.log");
    let (_safe, status, client) = start_safe(&moat.config_path, &data, &log).await;
    assert_eq!(status.safe_mode.as_deref(), Some(REASON));
    assert_eq!(
        status.bundle_version, sealed,
        "the last bundle, not a new one"
    );
    let dns = DnsClient {
        udp: status.udp[0],
        tcp: status.tcp[0],
    };
    assert_eq!(ips(&dns.a("nas.lan").await), ["192.168.1.20"]);
    let denied = dns.a("denied.test").await;
    assert_eq!(denied.metadata.response_code, ResponseCode::NXDomain);
    let served = client.policy().await.unwrap().policy;
    assert_eq!(
        served
            .deny
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["denied.test"],
        "the bundle's policy is the one in force"
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("SAFE MODE"), "on the console: {log_text}");
    let kept: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("replicas.json"))
        .collect();
    assert!(
        kept.len() == 1 && kept[0].starts_with("replicas.json.unreadable-"),
        "the torn replicas file is set aside, not deleted: {kept:?}"
    );
}

//! The web UI in a real headless Chromium driven over WebDriver
//! (`moat_system_tests::browser`): first-use password, login, a dashboard
//! showing the DNS traffic just sent and a plugin's status, the query log,
//! adding a blocked name on the primary and seeing the replica's policy
//! page show it read-only after sync, and a pairing code read from the
//! fleet page and used to pair that replica. Console errors fail the test;
//! screenshots (desktop and phone widths) go to `target/ui-screenshots/`.
//! No browser: the test fails, it never skips.

use std::process::{Command, Output};
use std::time::Duration;

use fantoccini::Locator;
use moat_system_tests::MoatProcess;
use moat_system_tests::browser::{Browser, DESKTOP, PHONE};
use moat_system_tests::moat::{Scratch, binary};
use serde_json::json;

use super::fleet::{PRIMARY, Primary, REPLICA, SYNC_LIMIT, answers, eventually, logs, replica};

/// `http://<control address>/` of a running moat.
fn control_url(moat: &MoatProcess) -> String {
    format!("http://{}/", moat.control_addr())
}

/// The first use of an appliance's UI: set the password, which logs in.
async fn set_password(browser: &mut Browser, moat: &MoatProcess) {
    browser
        .set_first_password(&control_url(moat), &moat.setup_code())
        .await;
}

/// Logs in to `moat` with the password set before.
async fn log_in(browser: &mut Browser, moat: &MoatProcess) {
    browser.log_in(&control_url(moat)).await;
}

/// The number shown in a dashboard tile (digits only).
fn number(text: &str) -> u64 {
    text.chars()
        .filter(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or(0)
}

/// What `moat join` of `replica` with `code` to `primary` did.
async fn try_join(primary: &MoatProcess, replica: &MoatProcess, code: &str) -> Output {
    Command::new(binary())
        .args([
            "join",
            &primary.sync_addr().await.to_string(),
            code,
            "--config",
        ])
        .arg(&replica.config_path)
        .output()
        .expect("run moat join")
}

/// `moat join` of `replica` with `code` to `primary`, which must pair.
async fn join(primary: &MoatProcess, replica: &MoatProcess, code: &str) {
    let output = try_join(primary, replica, code).await;
    assert!(
        output.status.success(),
        "moat join with the code read from the UI: {}{}",
        String::from_utf8_lossy(&output.stderr),
        logs(&[primary, replica])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_dashboard_policy_fleet_and_replica_in_a_browser() {
    let started = moat::clock::now();
    let primary = Primary::start("").await;
    let p = &primary.moat;
    let (r, _r_upstream) = replica().await;

    // Real DNS traffic first: forwarded, cached and blocked answers.
    for round in 0..3 {
        for name in ["www.example.com", "mail.example.com", "news.example.org"] {
            p.dns.a(name).await;
        }
        if round < 2 {
            p.dns.a("x.ads.test").await;
        }
    }
    let sent = 11;

    let mut browser = Browser::start().await;
    browser.resize(DESKTOP).await;

    // First use: the password form; setting it logs in to the dashboard.
    set_password(&mut browser, p).await;
    let queries = browser
        .text_until(
            "[data-test=stat-queries-value]",
            "the queries sent",
            |text| number(text) >= sent,
        )
        .await;
    assert!(number(&queries) >= sent, "{queries}");
    let blocked = browser
        .find("[data-test=stat-blocked-value]")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(number(&blocked), 2, "blocked tile: {blocked}");
    browser.shows("[data-test=top-blocked]", "x.ads.test").await;
    browser
        .shows("[data-test=top-names]", "www.example.com")
        .await;
    browser.shows("[data-test=top-clients]", "127.0.0.1").await;
    let hit_rate = browser
        .text_until("[data-test=stat-cache-hit-value]", "a hit rate", |text| {
            text.ends_with('%')
        })
        .await;
    assert_ne!(number(&hit_rate), 0, "cache hit rate {hit_rate}");
    browser.shows("[data-test=stat-latency-value]", "s /").await;
    assert!(
        browser.exists("svg[data-test=chart] rect").await,
        "the chart draws the queries per minute"
    );
    browser.screenshot("dashboard-desktop").await;

    // Log out, then log in with the password.
    browser.click("#logout-button").await;
    log_in(&mut browser, p).await;

    // The query log, filtered to blocked answers.
    browser.hash("#/querylog?verdict=blocked").await;
    browser.shows("[data-test=ql-table]", "x.ads.test").await;
    let rows = browser
        .client
        .find_all(Locator::Css("[data-test=ql-table] tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "two blocked queries in the log");
    browser.screenshot("querylog-desktop").await;

    // One click on "Allow" puts the blocked name on the primary's allow list.
    browser.click("[data-test=allow-this]").await;
    browser
        .shows("[data-test=notice]", "Allowing x.ads.test")
        .await;
    let policy = p.control().unwrap().policy().await.unwrap().policy;
    assert!(
        policy
            .allow
            .iter()
            .any(|rule| rule.to_string() == "x.ads.test"),
        "{policy:?}"
    );

    // The fleet page: a pairing code, shown once, pairs the replica for real.
    browser.hash("#/fleet").await;
    browser.click("[data-test=pairing-code-button]").await;
    let mut code = browser
        .text_until("[data-test=pairing-code]", "a code", |text| {
            text.len() == 9 && text.as_bytes()[4] == b'-'
        })
        .await;
    let expiry = browser
        .find("[data-test=pairing-expiry]")
        .await
        .text()
        .await
        .unwrap();
    assert!(expiry.contains("expires"), "{expiry}");
    browser.screenshot("fleet-code-desktop").await;
    let last = code.pop().unwrap();
    let wrong = format!("{code}{}", if last == '0' { '1' } else { '0' });
    code.push(last);
    let refused = try_join(p, &r, &wrong).await;
    assert!(!refused.status.success(), "a wrong code does not pair");
    join(p, &r, &code).await;

    // Block a name through the policy page of the primary.
    browser.hash("#/policy").await;
    let deny = browser.find("#policy-deny").await;
    deny.send_keys("\ntracker.ui.test").await.unwrap();
    browser.click("[data-test=save]").await;
    browser.shows("[data-test=notice]", "Policy saved").await;
    browser.find("[data-test=blocklist-table]").await;
    browser
        .shows("[data-test=blocklist-lines]", "adblock")
        .await;
    browser.screenshot("policy-primary-desktop").await;
    answers(p, &[&r], "tracker.ui.test", "0.0.0.0").await;
    answers(&r, &[p], "tracker.ui.test", "0.0.0.0").await;

    // The replica's own UI: read-only policy with the name, synced from hq.
    set_password(&mut browser, &r).await;
    browser.hash("#/policy").await;
    let badge = browser.shows("[data-test=synced-badge]", PRIMARY).await;
    assert!(badge.starts_with("synced from"), "{badge}");
    let deny = browser
        .find("#policy-deny")
        .await
        .prop("value")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(
        deny.lines().any(|line| line == "tracker.ui.test"),
        "{deny:?}"
    );
    let readonly = browser
        .find("#policy-deny")
        .await
        .attr("readonly")
        .await
        .unwrap();
    assert!(readonly.is_some(), "the replica's deny list is read-only");
    for button in ["save", "add-blocklist", "add-record"] {
        assert!(
            !browser.exists(&format!("[data-test={button}]")).await,
            "a replica's policy page has no `{button}` button"
        );
    }
    browser.screenshot("policy-replica-desktop").await;
    browser.resize(PHONE).await;
    browser.assert_fits_width("replica policy on a phone").await;
    browser.screenshot("policy-replica-phone").await;

    // Back on the primary: the replica is listed, active, with its stats.
    // Both listen on 127.0.0.1 and cookies do not tell ports apart: the
    // replica's session replaced the primary's, so log in there again.
    browser.resize(DESKTOP).await;
    log_in(&mut browser, p).await;
    browser.hash("#/fleet").await;
    browser
        .text_until("[data-test=replicas]", "the replica active", |text| {
            text.contains(REPLICA) && text.contains("active")
        })
        .await;
    let failed = browser
        .shows("[data-test=failed-pairings]", "127.0.0.1")
        .await;
    assert!(
        failed.contains("Failed pairings"),
        "the wrong code's attempt is listed with its address: {failed}"
    );
    browser.screenshot("fleet-desktop").await;

    // Phone width: the dashboard and the fleet fit.
    browser.resize(PHONE).await;
    browser.hash("#/dashboard").await;
    browser.find("svg[data-test=chart]").await;
    browser.assert_fits_width("dashboard on a phone").await;
    browser.screenshot("dashboard-phone").await;
    browser.hash("#/fleet").await;
    browser.find("[data-test=replicas]").await;
    browser.assert_fits_width("fleet on a phone").await;
    browser.screenshot("fleet-phone").await;

    browser.assert_no_console_errors().await;
    browser.close();
    eventually(
        "the primary still answers",
        SYNC_LIMIT,
        &[p, &r],
        async || Ok::<_, String>(p.dns.a("www.example.com").await),
    )
    .await;
    eprintln!("browser test took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_tuning_and_a_plugins_status_from_the_header_dashboard_and_tuning_page() {
    let primary = Primary::start("").await;
    let p = &primary.moat;
    let dir = Scratch::new("ui-kiosk");
    let module = dir.0.join("kiosk.wasm");
    std::fs::write(&module, moat::compile::KIOSK_EXAMPLE).unwrap();
    let kiosk = json!([{
        "name": "kiosk",
        "module": module,
        "place": "first",
        "config": { "clients": ["127.0.0.2"], "names": ["kiosk.test"] },
    }]);
    let saved = super::plugins::set_plugins(p, kiosk).await;
    assert!(saved.status.is_success(), "{}", saved.text);
    let kiosk_client: std::net::IpAddr = [127, 0, 0, 2].into();
    for name in ["one.test", "two.test", "three.test"] {
        p.dns.a_from(kiosk_client, name).await;
    }
    let mut browser = Browser::start().await;
    browser.resize(PHONE).await;
    set_password(&mut browser, p).await;

    // The dashboard's status card: the plugin's calls, its time per
    // decision and the three refusals it gave.
    let row = browser
        .text_until("[data-test=status]", "the kiosk's three refusals", |text| {
            text.contains("Plugin kiosk") && text.contains("refuse 3")
        })
        .await;
    let summary = row
        .lines()
        .skip_while(|line| !line.contains("Plugin kiosk"))
        .collect::<Vec<_>>()
        .join(" ");
    assert!(
        summary.contains(" calls")
            && summary.contains("ns per decision")
            && summary.contains("0 faults (skip)"),
        "the kiosk's status row: {summary}"
    );
    browser
        .client
        .execute(
            "document.querySelector('[data-test=status]').scrollIntoView();",
            vec![],
        )
        .await
        .expect("scroll to the status card");
    browser.screenshot("dashboard-plugin-phone").await;

    // Pause for five minutes from the header, then resume.
    browser
        .find("#pause-duration")
        .await
        .select_by_value("5m")
        .await
        .unwrap();
    browser.click("[data-test=pause-button]").await;
    browser
        .text_until("[data-test=pause-state]", "paused", |text| {
            text.starts_with("paused until")
        })
        .await;
    let status = super::fleet::status(p).await.unwrap();
    assert_eq!(status["pause"]["state"], "paused_until", "{status}");
    browser.screenshot("paused-phone").await;
    browser.click("[data-test=resume-button]").await;
    browser
        .text_until("[data-test=pause-state]", "blocking", |text| {
            text == "blocking"
        })
        .await;

    // Tuning: change the query-log retention and see it stored.
    browser.hash("#/tuning").await;
    browser
        .type_into("#tuning-query_log-retention", "3days")
        .await;
    browser.click("[data-test=tuning-save]").await;
    browser.shows("[data-test=notice]", "Tuning saved").await;
    let tuning = p.control().unwrap().tuning().await.expect("GET tuning");
    assert_eq!(
        tuning.query_log.retention,
        Duration::from_secs(3 * 86_400),
        "{tuning:?}"
    );
    browser.assert_fits_width("tuning on a phone").await;
    browser.screenshot("tuning-phone").await;
    browser.assert_no_console_errors().await;
    browser.close();
}

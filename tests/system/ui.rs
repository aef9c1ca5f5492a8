//! The web UI in a real headless Chromium driven over WebDriver
//! (chromedriver, started here by PID and killed on drop): first-use
//! password, login, a dashboard showing the DNS traffic just sent, the
//! query log, adding a blocked name on the primary and seeing the replica's
//! policy page show it read-only after sync, and a pairing code read from
//! the fleet page and used to pair that replica. Console errors fail the
//! test; screenshots (desktop and phone widths) go to
//! `target/ui-screenshots/`. No browser: the test fails, it never skips.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use moat_system_tests::MoatProcess;
use moat_system_tests::moat::{Scratch, binary};
use serde_json::json;

use super::fleet::{PRIMARY, Primary, REPLICA, SYNC_LIMIT, answers, eventually, logs, replica};

/// The Chromium and chromedriver Debian ships (`chromium`, `chromium-driver`).
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the page may take to show something.
const UI_LIMIT: Duration = Duration::from_secs(15);
/// The admin password the tests set.
const PASSWORD: &str = "correct horse battery";

/// A desktop and a phone viewport.
const DESKTOP: (u32, u32) = (1280, 900);
const PHONE: (u32, u32) = (390, 844);

/// chromedriver on a loopback port and one browser session through it.
struct Browser {
    driver: Child,
    client: Client,
    /// The browser's fresh profile directory.
    _profile: Scratch,
    /// Console errors seen so far, with the page they came from.
    errors: Vec<String>,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; panics with the reason
    /// if either cannot start.
    async fn start() -> Self {
        for path in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: install Debian's chromium and chromium-driver \
                 (scripts/test.sh does); the browser tests cannot run without them"
            );
        }
        let profile = Scratch::new("chromium-profile");
        let port = free_tcp_port();
        let log = profile.0.join("chromedriver.log");
        let mut driver = Command::new(CHROMEDRIVER)
            .process_group(0)
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {CHROMEDRIVER}: {err}"));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = moat::clock::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(exit) = driver.try_wait().unwrap() {
                panic!(
                    "chromedriver exited at start ({exit}); its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if moat::clock::now() > deadline {
                let _ = driver.kill();
                let _ = driver.wait();
                panic!("chromedriver did not listen on {url} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let user_data = profile.0.join("user-data");
        let args = [
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-dev-shm-usage".into(),
            "--hide-scrollbars".into(),
            format!("--window-size={},{}", DESKTOP.0, DESKTOP.1),
            format!("--user-data-dir={}", user_data.display()),
        ];
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        let client = match ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
        {
            Ok(client) => client,
            Err(err) => {
                let _ = driver.kill();
                let _ = driver.wait();
                panic!(
                    "headless Chromium did not start through chromedriver: {err}\nchromedriver log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        };
        Self {
            driver,
            client,
            _profile: profile,
            errors: Vec::new(),
        }
    }

    async fn resize(&self, (width, height): (u32, u32)) {
        self.client
            .set_window_size(width, height)
            .await
            .expect("resize the window");
    }

    async fn goto(&mut self, url: &str) {
        self.client.goto(url).await.expect("open the page");
        self.collect_errors(url).await;
    }

    /// Goes to `#/page` of the page already open (no reload).
    async fn hash(&mut self, page: &str) {
        self.client
            .execute("location.hash = arguments[0];", vec![json!(page)])
            .await
            .expect("set location.hash");
    }

    /// Waits for an element matching the CSS selector.
    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(UI_LIMIT)
            .for_element(Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(err) => panic!(
                "no `{css}` on the page after {UI_LIMIT:?} ({err}); page text:\n{}",
                self.body_text().await
            ),
        }
    }

    async fn exists(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .expect("query the page")
            .is_empty()
    }

    async fn body_text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(err) => format!("(no body: {err})"),
        }
    }

    /// Waits until the text of `css` passes `check`; returns that text.
    async fn text_until(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = moat::clock::now() + UI_LIMIT;
        let mut seen = String::new();
        while moat::clock::now() < deadline {
            if let Ok(element) = self.client.find(Locator::Css(css)).await
                && let Ok(text) = element.text().await
            {
                if check(&text) {
                    return text;
                }
                seen = text;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "`{css}` never showed {what} within {UI_LIMIT:?}; last text {seen:?}; page:\n{}",
            self.body_text().await
        );
    }

    /// Waits until the text of `css` contains `needle`; returns that text.
    async fn shows(&self, css: &str, needle: &str) -> String {
        self.text_until(css, &format!("{needle:?}"), |text| text.contains(needle))
            .await
    }

    /// Waits for the element, then clicks it.
    async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        element.clear().await.expect("clear the field");
        element.send_keys(text).await.expect("type into the field");
    }

    /// Saves a screenshot to `target/ui-screenshots/<name>.png`.
    async fn screenshot(&mut self, name: &str) {
        self.collect_errors(name).await;
        let png = self.client.screenshot().await.expect("take a screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("create the screenshot directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write the screenshot");
    }

    /// The page must not scroll sideways (a phone layout that fits).
    async fn assert_fits_width(&self, what: &str) {
        let sizes = self
            .client
            .execute(
                "return [document.documentElement.scrollWidth, window.innerWidth];",
                vec![],
            )
            .await
            .expect("measure the page");
        let (scroll, inner) = (sizes[0].as_f64().unwrap(), sizes[1].as_f64().unwrap());
        assert!(
            scroll <= inner + 1.0,
            "{what}: the page is {scroll}px wide in a {inner}px window"
        );
    }

    /// Moves the browser's console errors (and uncaught exceptions) into
    /// `self.errors`, labelled with `context`.
    async fn collect_errors(&mut self, context: &str) {
        let entries = self
            .client
            .issue_cmd(BrowserLog)
            .await
            .expect("read the browser console log");
        for entry in entries.as_array().into_iter().flatten() {
            if entry["level"] == "SEVERE" || entry["level"] == "WARNING" {
                self.errors.push(format!(
                    "[{context}] {} {}",
                    entry["level"].as_str().unwrap_or_default(),
                    entry["message"].as_str().unwrap_or_default()
                ));
            }
        }
    }

    async fn assert_no_console_errors(&mut self) {
        self.collect_errors("end").await;
        assert!(
            self.errors.is_empty(),
            "the browser console reported:\n{}",
            self.errors.join("\n")
        );
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Killing chromedriver alone orphans its Chromium: chromedriver
        // leads its own process group, which Chromium's processes join, so
        // the whole group is killed (also on a panic's unwinding). The
        // session is not closed politely because that needs the runtime.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Processes whose command line names `path`.
fn processes_using(path: &Path) -> Vec<u32> {
    let needle = path.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(&needle))
        })
        .collect()
}

/// Ends `browser` and checks that no Chromium it started lives on and that
/// its profile is gone.
fn close(browser: Browser) {
    let profile = browser._profile.0.clone();
    drop(browser);
    let deadline = moat::clock::now() + Duration::from_secs(10);
    let mut left = processes_using(&profile);
    while !left.is_empty() && moat::clock::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        left = processes_using(&profile);
    }
    assert!(
        left.is_empty(),
        "Chromium processes outlived the test: {left:?}"
    );
    assert!(
        !profile.exists(),
        "the browser profile {} is left",
        profile.display()
    );
}

/// chromedriver's `POST /session/{id}/se/log {"type": "browser"}`: the
/// console entries since the last call.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (hyper::Method, Option<String>) {
        (hyper::Method::POST, Some(r#"{"type":"browser"}"#.into()))
    }
}

/// `target/ui-screenshots`, from the workspace root.
fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots")
}

fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a loopback TCP port")
        .port()
}

/// `http://<control address>/` of a running moat.
fn control_url(moat: &MoatProcess) -> String {
    format!("http://{}/", moat.control_addr())
}

/// The first use of an appliance's UI: set the password, which logs in.
async fn set_password(browser: &mut Browser, moat: &MoatProcess) {
    browser.goto(&control_url(moat)).await;
    browser.find("[data-test=setup-form]").await;
    browser.type_into("#setup-code", &moat.setup_code()).await;
    browser.type_into("#login-password", PASSWORD).await;
    browser.type_into("#login-confirm", PASSWORD).await;
    browser.click("#login-submit").await;
    browser.find("[data-test=stat-queries-value]").await;
}

/// Logs in to `moat` with the password set before (from its login page,
/// or from wherever the browser is if that is the login page already).
async fn log_in(browser: &mut Browser, moat: &MoatProcess) {
    browser.goto(&control_url(moat)).await;
    browser.find("[data-test=login-form]").await;
    browser.type_into("#login-password", PASSWORD).await;
    browser.click("#login-submit").await;
    browser.find("[data-test=stat-queries-value]").await;
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
    close(browser);
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
async fn pause_and_tuning_from_the_header_and_tuning_page() {
    let primary = Primary::start("").await;
    let p = &primary.moat;
    let mut browser = Browser::start().await;
    browser.resize(PHONE).await;
    set_password(&mut browser, p).await;

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
    close(browser);
}

//! Headless Chromium driven over WebDriver, for the web UI's tests (the
//! system tests' `ui.rs` and the boot test of a primary image):
//! chromedriver is started here by PID and its whole process group killed
//! on drop, and each browser gets a fresh profile that goes with it.
//! Debian's `chromium` and `chromium-driver`; without them the test fails
//! with that message, it never skips.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::json;

use crate::moat::{PASSWORD, Scratch};

/// The Chromium Debian ships (`chromium`).
const CHROMIUM: &str = "/usr/bin/chromium";
/// The chromedriver Debian ships (`chromium-driver`).
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the page may take to show something.
const UI_LIMIT: Duration = Duration::from_secs(15);

/// A desktop viewport.
pub const DESKTOP: (u32, u32) = (1280, 900);
/// A phone viewport.
pub const PHONE: (u32, u32) = (390, 844);

/// chromedriver on a loopback port and one browser session through it.
pub struct Browser {
    driver: Child,
    /// The WebDriver session, for what the methods here do not cover.
    pub client: Client,
    /// The browser's fresh profile directory.
    profile: Scratch,
    /// Console errors seen so far, with the page they came from.
    errors: Vec<String>,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium; panics with the reason
    /// if either cannot start.
    pub async fn start() -> Self {
        Self::start_with(&[], false).await
    }

    /// [`Browser::start`] with more Chromium arguments, and accepting a
    /// certificate no root vouches for (as a user who checked its
    /// fingerprint clicks through the warning) when `accept_insecure_certs`.
    pub async fn start_with(extra_args: &[String], accept_insecure_certs: bool) -> Self {
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
        ]
        .into_iter()
        .chain(extra_args.iter().cloned())
        .collect::<Vec<_>>();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
            "acceptInsecureCerts": accept_insecure_certs,
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
            profile,
            errors: Vec::new(),
        }
    }

    /// Sets the window to `(width, height)`.
    pub async fn resize(&self, (width, height): (u32, u32)) {
        self.client
            .set_window_size(width, height)
            .await
            .expect("resize the window");
    }

    /// Opens `url` and keeps its console errors.
    pub async fn goto(&mut self, url: &str) {
        self.client.goto(url).await.expect("open the page");
        self.collect_errors(url).await;
    }

    /// Goes to `#/page` of the page already open (no reload).
    pub async fn hash(&mut self, page: &str) {
        self.client
            .execute("location.hash = arguments[0];", vec![json!(page)])
            .await
            .expect("set location.hash");
    }

    /// Waits for an element matching the CSS selector.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
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

    /// Whether something on the page matches the CSS selector now.
    pub async fn exists(&self, css: &str) -> bool {
        !self
            .client
            .find_all(Locator::Css(css))
            .await
            .expect("query the page")
            .is_empty()
    }

    /// The page's text, for failure messages.
    pub async fn body_text(&self) -> String {
        match self.client.find(Locator::Css("body")).await {
            Ok(body) => body.text().await.unwrap_or_default(),
            Err(err) => format!("(no body: {err})"),
        }
    }

    /// Waits until the text of `css` passes `check`; returns that text.
    pub async fn text_until(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
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
    pub async fn shows(&self, css: &str, needle: &str) -> String {
        self.text_until(css, &format!("{needle:?}"), |text| text.contains(needle))
            .await
    }

    /// Waits for the element, then clicks it.
    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }

    /// Waits for the field, clears it and types `text`.
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        element.clear().await.expect("clear the field");
        element.send_keys(text).await.expect("type into the field");
    }

    /// Saves a screenshot to `target/ui-screenshots/<name>.png`.
    pub async fn screenshot(&mut self, name: &str) {
        self.collect_errors(name).await;
        let png = self.client.screenshot().await.expect("take a screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).expect("create the screenshot directory");
        std::fs::write(dir.join(format!("{name}.png")), png).expect("write the screenshot");
    }

    /// The page must not scroll sideways (a phone layout that fits).
    pub async fn assert_fits_width(&self, what: &str) {
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
    pub async fn collect_errors(&mut self, context: &str) {
        let entries = self
            .client
            .issue_cmd(SessionPost::browser_log())
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

    /// Fails with every console error seen since the browser started.
    pub async fn assert_no_console_errors(&mut self) {
        self.collect_errors("end").await;
        assert!(
            self.errors.is_empty(),
            "the browser console reported:\n{}",
            self.errors.join("\n")
        );
    }

    /// Ends the browser and checks that no Chromium it started lives on
    /// and that its profile is gone.
    pub fn close(self) {
        let profile = self.profile.0.clone();
        drop(self);
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

    /// The DER certificate the browser was shown for `origin`
    /// (`https://host[:port]`), as it saw it: Chrome's
    /// `Network.getCertificate`, through chromedriver's DevTools passthrough.
    /// It reloads the page: Chrome keeps the certificate only for loads its
    /// network domain saw.
    pub async fn certificate(&self, origin: &str) -> Vec<u8> {
        self.client
            .issue_cmd(SessionPost::dev_tools("Network.enable", json!({})))
            .await
            .expect("enable DevTools' network domain");
        self.client.refresh().await.expect("reload the page");
        let reply = self
            .client
            .issue_cmd(SessionPost::dev_tools(
                "Network.getCertificate",
                json!({ "origin": origin }),
            ))
            .await
            .expect("ask Chromium for the certificate it was shown");
        let first = reply["tableNames"][0]
            .as_str()
            .unwrap_or_else(|| panic!("Chromium has no certificate for {origin}: {reply}"));
        base64::engine::general_purpose::STANDARD
            .decode(first)
            .unwrap_or_else(|err| panic!("the certificate Chromium gave is not base64: {err}"))
    }

    /// The first use of an appliance's UI at `url`: the setup code and the
    /// new password in one form, which logs in to the dashboard.
    pub async fn set_first_password(&mut self, url: &str, setup_code: &str) {
        self.goto(url).await;
        self.find("[data-test=setup-form]").await;
        self.type_into("#setup-code", setup_code).await;
        self.type_into("#login-password", PASSWORD).await;
        self.type_into("#login-confirm", PASSWORD).await;
        self.click("#login-submit").await;
        self.find("[data-test=stat-queries-value]").await;
    }

    /// Logs in at `url` with the password [`Browser::set_first_password`] set.
    pub async fn log_in(&mut self, url: &str) {
        self.goto(url).await;
        self.find("[data-test=login-form]").await;
        self.type_into("#login-password", PASSWORD).await;
        self.click("#login-submit").await;
        self.find("[data-test=stat-queries-value]").await;
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

/// A chromedriver extension: `POST /session/{id}/PATH` with a JSON body.
/// `se/log {"type": "browser"}` gives the console entries since the last
/// call; `goog/cdp/execute {"cmd", "params"}` runs one Chrome DevTools
/// command and gives its result.
#[derive(Debug)]
struct SessionPost {
    path: &'static str,
    body: serde_json::Value,
}

impl SessionPost {
    fn browser_log() -> Self {
        Self {
            path: "se/log",
            body: json!({ "type": "browser" }),
        }
    }

    fn dev_tools(method: &str, params: serde_json::Value) -> Self {
        Self {
            path: "goog/cdp/execute",
            body: json!({ "cmd": method, "params": params }),
        }
    }
}

impl WebDriverCompatibleCommand for SessionPost {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/{}",
            session_id.unwrap_or_default(),
            self.path
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (hyper::Method, Option<String>) {
        (hyper::Method::POST, Some(self.body.to_string()))
    }
}

/// `target/ui-screenshots`, from the workspace root.
fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a loopback TCP port")
        .port()
}

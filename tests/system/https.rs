//! The control plane a flashed appliance shows its LAN, against the real
//! binary: the first password only with the setup code (wrong codes
//! throttled), `Host` and `Origin` checks, HTTPS pinned by the fingerprint
//! status and the log show (a `Secure` cookie), plain HTTP that only
//! redirects, and the CLI driving an appliance by `--url`.

use std::net::{Ipv4Addr, SocketAddr};

use moat::control::ClientError;
use moat::sync::identity::Fingerprint;
use moat_system_tests::attack::http_exchange;
use moat_system_tests::moat::PASSWORD;
use moat_system_tests::{ControlClient, Credentials, MoatProcess, RawApi};
use reqwest::StatusCode;
use serde_json::json;

use crate::{first_lockout, moat_with_upstream};

/// `[instance]` lines serving HTTPS and the redirect on loopback ports.
const HTTPS: &str = "https = \"127.0.0.1:0\"\nhttp_redirect = \"127.0.0.1:0\"\n";

/// One raw request to `to` from 127.0.0.1: the status and the answer.
async fn raw(to: SocketAddr, request: &str) -> (u16, String) {
    http_exchange(to, Ipv4Addr::LOCALHOST.into(), request.as_bytes())
        .await
        .unwrap_or_else(|| panic!("no answer to {request}"))
}

/// A POST of `body` to `path` with `headers` (each `name: value\r\n`).
fn post(path: &str, headers: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\n{headers}content-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_password_needs_the_setup_code_and_wrong_codes_are_throttled() {
    let (moat, _upstream) = moat_with_upstream("").await;
    let code = moat.setup_code();
    assert!(
        moat.log().contains(&code),
        "the code is in the log: {}",
        moat.log()
    );
    let anonymous = moat.api(Credentials::Anonymous);
    let setup = |code: Option<&str>| {
        let body = json!({ "password": PASSWORD, "code": code });
        let anonymous = anonymous.clone();
        async move { anonymous.post("/api/v1/auth/setup", &body).await }
    };
    let bare = setup(None).await;
    assert_eq!(bare.status, StatusCode::FORBIDDEN, "{}", bare.text);
    assert!(bare.text.contains("setup code"), "{}", bare.text);
    for attempt in 0..5 {
        let wrong = setup(Some("AAAA-AAAA")).await;
        assert_eq!(
            wrong.status,
            StatusCode::FORBIDDEN,
            "{attempt}: {}",
            wrong.text
        );
    }
    let throttled = setup(Some(&code)).await;
    let wait = first_lockout(&throttled, "even the right code waits after six wrong ones");
    assert_eq!(
        anonymous.get("/api/v1/auth").await.json()["password_set"],
        false,
        "nothing was set"
    );
    tokio::time::sleep(wait).await;
    let done = setup(Some(&code.to_lowercase())).await;
    assert_eq!(done.status, StatusCode::NO_CONTENT, "{}", done.text);
    assert!(
        !moat.dir.0.join("data/setup-code").exists(),
        "the code is spent"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_hosts_and_cross_origin_changes_are_refused() {
    let (moat, _upstream) = moat_with_upstream("").await;
    let to = moat.control_addr();
    let get = |host: &str| {
        format!("GET /api/v1/auth HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n")
    };
    for host in ["evil.example", "test.evil.example", "evil.example:8053"] {
        let (status, text) = raw(to, &get(host)).await;
        assert_eq!(status, 421, "Host {host}: {text}");
        assert!(text.contains("does not name this appliance"), "{text}");
    }
    let (status, _) = raw(to, "GET / HTTP/1.1\r\nconnection: close\r\n\r\n").await;
    assert_eq!(status, 421, "no Host at all");
    for host in [
        "test",
        "test.local",
        "localhost",
        &to.to_string(),
        "[::1]:1",
    ] {
        let (status, text) = raw(to, &get(host)).await;
        assert_eq!(status, 200, "Host {host}: {text}");
    }

    let token = moat.control().unwrap();
    let setup = token
        .post("/api/v1/auth/setup", &json!({ "password": PASSWORD }))
        .await;
    assert_eq!(
        setup.status,
        StatusCode::NO_CONTENT,
        "the token needs no code: {}",
        setup.text
    );
    let cookie = format!("cookie: moat_session={}\r\n", setup.session().unwrap());
    let host = format!("host: {to}\r\n");
    let pause = |extra: &str| post("/api/v1/pause", &format!("{host}{cookie}{extra}"), "{}");
    for (extra, what) in [
        ("origin: http://evil.example\r\n", "another site's Origin"),
        ("origin: null\r\n", "an opaque Origin"),
        (
            "referer: http://evil.example/page\r\n",
            "another site's Referer",
        ),
        ("", "no Origin with a cookie"),
        (
            &format!("origin: https://{to}\r\n") as &str,
            "another scheme",
        ),
    ] {
        let (status, text) = raw(to, &pause(extra)).await;
        assert_eq!(status, 403, "{what}: {text}");
    }
    let (status, text) = raw(
        to,
        &post(
            "/api/v1/auth/login",
            &format!("{host}origin: http://evil.example\r\n"),
            &json!({ "password": PASSWORD }).to_string(),
        ),
    )
    .await;
    assert_eq!(status, 403, "a login from another site: {text}");
    let (status, text) = raw(to, &pause(&format!("origin: http://{to}\r\n"))).await;
    assert_eq!(status, 200, "the appliance's own page: {text}");
    let (status, text) = raw(to, &pause(&format!("referer: http://{to}/#dashboard\r\n"))).await;
    assert_eq!(status, 200, "its own Referer: {text}");
    let bearer = format!("authorization: Bearer {}\r\n", read_token(&moat));
    let (status, text) = raw(
        to,
        &post(
            "/api/v1/resume",
            &format!("{host}{bearer}origin: http://evil.example\r\n"),
            "{}",
        ),
    )
    .await;
    assert_eq!(status, 200, "scripts with the token are not asked: {text}");
    let (status, text) = raw(to, &format!("GET /api/v1/status HTTP/1.1\r\n{host}{cookie}origin: http://evil.example\r\nconnection: close\r\n\r\n")).await;
    assert_eq!(status, 200, "reading is not a change: {text}");
}

fn read_token(moat: &MoatProcess) -> String {
    std::fs::read_to_string(moat.dir.0.join("data/control.token"))
        .unwrap()
        .trim()
        .to_owned()
}

/// A moat serving HTTPS and the redirect, its HTTPS view in status.
async fn https_moat() -> (MoatProcess, moat::control::HttpsView) {
    let upstream = moat_system_tests::TestUpstream::start().await;
    let policy = format!("[policy]\nupstreams = [\"udp://{}\"]\n", upstream.addr);
    let moat = MoatProcess::start(HTTPS, &policy).await;
    let https = moat.status().await.unwrap().https.expect("https in status");
    (moat, https)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_is_pinned_by_the_fingerprint_shown_and_plain_http_only_redirects() {
    let (moat, https) = https_moat().await;
    let fingerprint = https.fingerprint;
    assert!(
        moat.log().contains(&fingerprint.to_string()),
        "the fingerprint is in the log"
    );
    let cert = std::fs::read(moat.dir.0.join("data/https.crt")).unwrap();
    assert_eq!(
        Fingerprint::of(&cert),
        fingerprint,
        "the kept certificate's"
    );
    let url = format!("https://{}", https.addr);
    let anonymous = ControlClient::remote(&url, fingerprint, Credentials::Anonymous).unwrap();
    crate::set_first_password(&anonymous, &moat, PASSWORD).await;
    let login = anonymous
        .post("/api/v1/auth/login", &json!({ "password": PASSWORD }))
        .await;
    assert_eq!(login.status, StatusCode::NO_CONTENT, "{}", login.text);
    let cookie = login.set_cookie().unwrap_or_default();
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    let browser = anonymous.with_credentials(Credentials::Session(login.session().unwrap()));
    let paused = browser
        .post("/api/v1/pause", &json!({ "duration": "1m" }))
        .await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.text);
    let plain = moat.api(Credentials::Anonymous);
    let plain_login = plain
        .post("/api/v1/auth/login", &json!({ "password": PASSWORD }))
        .await;
    assert!(
        !plain_login
            .set_cookie()
            .unwrap_or_default()
            .contains("Secure"),
        "the loopback endpoint is plain HTTP"
    );

    let redirect = https.http_redirect.expect("the redirect listener");
    let host = format!("host: 127.0.0.1:{}\r\n", redirect.port());
    let (status, text) = raw(
        redirect,
        &post(
            "/api/v1/auth/login",
            &host,
            &json!({ "password": PASSWORD }).to_string(),
        ),
    )
    .await;
    assert_eq!(
        status, 308,
        "a login over plain HTTP is only redirected: {text}"
    );
    let location = format!(
        "location: https://127.0.0.1:{}/api/v1/auth/login",
        https.addr.port()
    );
    assert!(text.to_lowercase().contains(&location), "{text}");
    assert!(!text.to_lowercase().contains("set-cookie"), "{text}");
    let (status, text) = raw(
        redirect,
        &format!("GET /?x=1 HTTP/1.1\r\n{host}connection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 301, "{text}");
    assert!(text.to_lowercase().contains("/?x=1"), "{text}");
    let (status, _) = raw(
        redirect,
        "GET / HTTP/1.1\r\nhost: evil.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 421, "the redirect port checks Host too");

    let wrong = Fingerprint([7; 32]);
    let pinned_wrong = ControlClient::remote(&url, wrong, Credentials::Anonymous).unwrap();
    match pinned_wrong
        .request(reqwest::Method::GET, "/api/v1/auth", None)
        .await
    {
        Err(ClientError::WrongCertificate {
            presented, pinned, ..
        }) => {
            assert_eq!((presented, pinned), (fingerprint, wrong));
        }
        other => panic!("a wrong pin must be refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_drives_a_remote_appliance_by_url_token_and_fingerprint() {
    let (moat, https) = https_moat().await;
    let url = format!("https://{}", https.addr);
    let token = read_token(&moat);
    let status = moat.cli(&[
        "status",
        "--json",
        "--url",
        &url,
        "--token",
        &token,
        "--fingerprint",
        &https.fingerprint.to_string().to_uppercase(),
    ]);
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let shown: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown["name"], "test");
    assert_eq!(shown["https"]["fingerprint"], https.fingerprint.to_string());

    let from_env = std::process::Command::new(moat_system_tests::moat::binary())
        .args(["pause", "30s"])
        .env("MOAT_URL", &url)
        .env("MOAT_TOKEN", &token)
        .env("MOAT_FINGERPRINT", https.fingerprint.to_string())
        .output()
        .unwrap();
    assert!(
        from_env.status.success(),
        "{}",
        String::from_utf8_lossy(&from_env.stderr)
    );
    let pause = serde_json::to_value(moat.status().await.unwrap().pause).unwrap();
    assert_eq!(pause["state"], "paused_until", "{pause}");

    let wrong = moat.cli(&[
        "status",
        "--url",
        &url,
        "--token",
        &token,
        "--fingerprint",
        &"ab".repeat(32),
    ]);
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success());
    assert!(
        stderr.contains("not the pinned") && stderr.contains(&https.fingerprint.to_string()),
        "{stderr}"
    );
}

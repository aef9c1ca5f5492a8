//! The control API over real HTTP against the real binary: who may do
//! what, settings that persist, the query log's filters, the fleet's
//! rules, and `/metrics` read by Prometheus' own parser.

use std::process::{Command, Stdio};

use moat::control::{ClientError, LogQuery};
use moat_system_tests::moat::PASSWORD;
use moat_system_tests::{ControlClient, Credentials, MoatProcess, RawApi, RawResponse};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::fleet::{PRIMARY, Primary, SYNC_LIMIT, answers, eventually, logs, pair, replica};
use crate::{first_lockout, moat_with_upstream};

/// PUTs `body` to `path` and checks it is refused as invalid with a
/// message naming `key`.
async fn assert_refused_naming(api: &ControlClient, path: &str, body: &Value, key: &str) {
    let refused = api.put(path, body).await;
    assert_refused(
        &refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        &format!("PUT {path}"),
        key,
    );
}

/// Checks `response` (to `what`) has `status` and its text says `words`.
fn assert_refused(response: &RawResponse, status: StatusCode, what: &str, words: &str) {
    assert_eq!(response.status, status, "{what}: {}", response.text);
    assert!(
        response.text.contains(words),
        "{what} says `{words}`: {}",
        response.text
    );
}

fn open_client(moat: &MoatProcess) -> ControlClient {
    moat.api(Credentials::Anonymous)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_a_login_and_wrong_passwords_are_throttled() {
    let (moat, _upstream) = moat_with_upstream("").await;
    let anonymous = open_client(&moat);
    for (method, path) in [
        ("GET", "/api/v1/status"),
        ("GET", "/api/v1/querylog"),
        ("GET", "/metrics"),
        ("PUT", "/api/v1/tuning"),
        ("PUT", "/api/v1/policy"),
        ("POST", "/api/v1/pause"),
        ("POST", "/api/v1/pairing-code"),
        ("POST", "/api/v1/reboot"),
        ("POST", "/api/v1/factory-reset"),
    ] {
        let response = anonymous
            .send(method.parse().unwrap(), path, Some(&json!({})))
            .await;
        assert_eq!(response.status, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    let state = anonymous.get("/api/v1/auth").await;
    assert_eq!(state.json()["password_set"], false, "{}", state.text);

    let code = moat.setup_code();
    let short = anonymous
        .post(
            "/api/v1/auth/setup",
            &json!({ "password": "short", "code": code }),
        )
        .await;
    assert_eq!(
        short.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        short.text
    );
    let setup = anonymous
        .post(
            "/api/v1/auth/setup",
            &json!({ "password": PASSWORD, "code": code }),
        )
        .await;
    assert_eq!(setup.status, StatusCode::NO_CONTENT, "{}", setup.text);
    let cookie = setup.set_cookie().unwrap_or_default().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let again = anonymous
        .post(
            "/api/v1/auth/setup",
            &json!({ "password": "another password", "code": code }),
        )
        .await;
    assert_eq!(
        again.status,
        StatusCode::CONFLICT,
        "the password is set once"
    );

    let browser = anonymous.with_credentials(Credentials::Session(setup.session().unwrap()));
    let paused = browser
        .post("/api/v1/pause", &json!({ "duration": "5m" }))
        .await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.text);
    assert_eq!(paused.json()["state"], "paused_until");
    let logout = browser.post("/api/v1/auth/logout", &json!({})).await;
    assert_eq!(logout.status, StatusCode::NO_CONTENT);
    assert_eq!(
        browser.post("/api/v1/resume", &json!({})).await.status,
        StatusCode::UNAUTHORIZED,
        "a closed session opens nothing"
    );

    for attempt in 0..6 {
        let wrong = anonymous
            .post(
                "/api/v1/auth/login",
                &json!({ "password": format!("guess {attempt}") }),
            )
            .await;
        assert_eq!(
            wrong.status,
            StatusCode::UNAUTHORIZED,
            "attempt {attempt}: {}",
            wrong.text
        );
    }
    let throttled = anonymous
        .post("/api/v1/auth/login", &json!({ "password": PASSWORD }))
        .await;
    let wait = first_lockout(
        &throttled,
        "even the right password waits after six wrong ones",
    );
    tokio::time::sleep(wait).await;
    let login = anonymous
        .post("/api/v1/auth/login", &json!({ "password": PASSWORD }))
        .await;
    assert_eq!(login.status, StatusCode::NO_CONTENT, "{}", login.text);
    let session = anonymous.with_credentials(Credentials::Session(login.session().unwrap()));
    assert_eq!(session.get("/api/v1/status").await.status, StatusCode::OK);
    assert_eq!(
        moat.control().unwrap().get("/api/v1/status").await.status,
        StatusCode::OK,
        "scripts use the bearer token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_route() {
    let (moat, _upstream) = moat_with_upstream("").await;
    let document = open_client(&moat).get("/api/openapi.json").await;
    assert_eq!(document.status, StatusCode::OK);
    let document = document.json();
    let paths = document["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/api/v1/status", "get"),
        ("/api/v1/stats", "get"),
        ("/api/v1/querylog", "get"),
        ("/api/v1/policy", "put"),
        ("/api/v1/tuning", "put"),
        ("/api/v1/pause", "post"),
        ("/api/v1/pairing-code", "post"),
        ("/api/v1/replicas/{name}/revoke", "post"),
        ("/api/v1/auth/login", "post"),
    ] {
        assert!(
            paths.get(path).and_then(|item| item.get(method)).is_some(),
            "{method} {path} missing from {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    // Every documented path answers something other than 404.
    let client = moat.control().unwrap();
    for path in paths.keys().filter(|path| !path.contains('{')) {
        let response = client.get(path).await;
        assert_ne!(response.status, StatusCode::NOT_FOUND, "{path}");
    }
}

/// Off the image no init can reboot or wipe: both say so and erase
/// nothing (the boot tests reset a real image).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reboot_and_factory_reset_are_refused_off_the_image_and_erase_nothing() {
    let (moat, _upstream) = moat_with_upstream("").await;
    let client = moat.control().unwrap();
    let unconfirmed = client
        .post("/api/v1/factory-reset", &json!({ "confirm": "yes" }))
        .await;
    let status = StatusCode::UNPROCESSABLE_ENTITY;
    assert_refused(
        &unconfirmed,
        status,
        "an unconfirmed reset",
        "erase everything",
    );
    let confirmed = json!({ "confirm": "erase everything" });
    for (path, body, what) in [
        ("/api/v1/reboot", json!({}), "reboot"),
        ("/api/v1/factory-reset", confirmed, "factory reset"),
    ] {
        let refused = client.post(path, &body).await;
        let why = format!("{what} works on the appliance image only");
        assert_refused(&refused, StatusCode::CONFLICT, path, &why);
    }
    assert!(
        !moat.dir.0.join("data/factory-reset").exists(),
        "no reset asked for"
    );
    assert!(
        moat.dir.0.join("data/control.token").exists(),
        "nothing erased"
    );
    assert_eq!(client.get("/api/v1/status").await.status, StatusCode::OK);
}

/// The support bundle: status and the recent log, and no secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_support_bundle_holds_status_and_the_log_but_no_secret() {
    let (moat, _upstream) = moat_with_upstream("").await;
    let anonymous = open_client(&moat).get("/api/v1/support-bundle").await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let response = moat.control().unwrap().get("/api/v1/support-bundle").await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text);
    let bundle = response.json();
    assert_eq!(bundle["status"]["name"], "test", "{bundle}");
    let log: Vec<&str> = bundle["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        log.iter().any(|line| line.contains("serving DNS")),
        "the start is in the log: {log:?}"
    );
    let token = std::fs::read_to_string(moat.dir.0.join("data/control.token")).unwrap();
    assert!(
        !response.text.contains(token.trim()),
        "the control token is not in the bundle"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuning_and_policy_writes_persist_across_restart_and_bad_ones_change_nothing() {
    let (moat, upstream) = moat_with_upstream("").await;
    let api = moat.control().unwrap();
    let mut tuning = api.get("/api/v1/tuning").await.json()["tuning"].clone();
    tuning["cache"]["min_ttl"] = json!("42s");
    tuning["query_log"]["retention"] = json!("3days");
    let saved = api.put("/api/v1/tuning", &tuning).await;
    assert_eq!(saved.status, StatusCode::OK, "{}", saved.text);

    let mut broken = tuning.clone();
    broken["cache"]["min_ttl"] = json!("2days");
    assert_refused_naming(&api, "/api/v1/tuning", &broken, "min_ttl").await;
    let mut mistyped = tuning.clone();
    mistyped["cache"]["min_tll"] = json!("1s");
    assert_refused_naming(&api, "/api/v1/tuning", &mistyped, "min_tll").await;

    let mut policy = api.get("/api/v1/policy").await.json()["policy"].clone();
    policy["deny"] = json!(["denied.test"]);
    let saved = api.put("/api/v1/policy", &policy).await;
    assert_eq!(saved.status, StatusCode::OK, "{}", saved.text);
    let mut no_upstreams = policy.clone();
    no_upstreams["upstreams"] = json!([]);
    assert_refused_naming(&api, "/api/v1/policy", &no_upstreams, "policy.upstreams").await;

    let moat = moat.restart().await;
    let api = moat.control().unwrap();
    let tuning = api.get("/api/v1/tuning").await.json()["tuning"].clone();
    assert_eq!(tuning["cache"]["min_ttl"], "42s", "{tuning}");
    assert_eq!(tuning["query_log"]["retention"], "3days", "{tuning}");
    let policy = api.get("/api/v1/policy").await.json();
    assert_eq!(policy["policy"]["deny"], json!(["denied.test"]), "{policy}");
    assert_eq!(policy["editable"], true);
    assert_eq!(
        policy["policy"]["upstreams"],
        json!([format!("udp://{}", upstream.addr)])
    );
    let answer = moat.dns.a("denied.test").await;
    assert_eq!(
        crate::ips(&answer),
        ["0.0.0.0"],
        "the saved deny rule is in force"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_log_pages_and_filters() {
    let (moat, _upstream) = moat_with_upstream("deny = [\"*.blocked.test\"]").await;
    for index in 0..12 {
        moat.dns.a(&format!("host{index}.allowed.test")).await;
        moat.dns.a(&format!("ad{index}.blocked.test")).await;
    }
    moat.dns6.a("six.allowed.test").await;
    let api = moat.control().unwrap();
    let search = async |query: LogQuery| -> (Vec<String>, bool) {
        let page = api.query_log(&query).await.expect("a query log page").page;
        let names = page.entries.iter();
        let names = names.map(|entry| String::from_utf8_lossy(&entry.name).into_owned());
        (names.collect(), page.more)
    };
    let blocked = |offset| LogQuery {
        verdict: Some("blocked".into()),
        limit: Some(5),
        offset,
        ..LogQuery::default()
    };

    let (first, more) = search(blocked(None)).await;
    assert_eq!(
        first,
        [
            "ad11.blocked.test",
            "ad10.blocked.test",
            "ad9.blocked.test",
            "ad8.blocked.test",
            "ad7.blocked.test"
        ]
    );
    assert!(more);
    let (last, more) = search(blocked(Some(10))).await;
    assert_eq!(last, ["ad1.blocked.test", "ad0.blocked.test"]);
    assert!(!more);

    let by_name = LogQuery {
        name: Some("host1".into()),
        ..LogQuery::default()
    };
    assert_eq!(
        search(by_name).await.0,
        [
            "host11.allowed.test",
            "host10.allowed.test",
            "host1.allowed.test"
        ]
    );
    let by_client = LogQuery {
        client: Some("::1".into()),
        ..LogQuery::default()
    };
    assert_eq!(search(by_client).await.0, ["six.allowed.test"]);
    let by_type = |qtype: &str| LogQuery {
        qtype: Some(qtype.into()),
        limit: Some(1000),
        ..LogQuery::default()
    };
    assert_eq!(search(by_type("AAAA")).await.0, Vec::<String>::new());
    assert_eq!(search(by_type("a")).await.0.len(), 25);

    let now_ms = moat::clock::unix_now_ms();
    let future = LogQuery {
        since_ms: Some(now_ms + 60_000),
        ..LogQuery::default()
    };
    assert_eq!(search(future).await.0, Vec::<String>::new());
    let maybe = LogQuery {
        verdict: Some("maybe".into()),
        ..LogQuery::default()
    };
    match api.query_log(&maybe).await {
        Err(ClientError::Refused { status, message }) => {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{message}");
            assert!(message.contains("maybe"), "{message}");
        }
        other => panic!("verdict=maybe is refused as a bad request: {other:?}"),
    }

    let series = api.stats().await.expect("stats").series;
    let total: u64 = series.iter().map(|minute| minute.queries).sum();
    let blocked: u64 = series.iter().map(|minute| minute.blocked).sum();
    assert_eq!((total, blocked), (25, 12), "{series:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_refuses_policy_writes_and_follows_the_primarys() {
    let primary = Primary::start("").await;
    let (replica, _upstream) = replica().await;
    pair(&primary.moat, &replica).await;
    let on_replica = replica.control().unwrap();
    let on_primary = primary.moat.control().unwrap();
    let moats = [&primary.moat, &replica];

    let view = eventually(
        "the replica shows the synced policy",
        SYNC_LIMIT,
        &moats,
        async || {
            let view = on_replica.get("/api/v1/policy").await.json();
            if view["synced_from"]["name"] == PRIMARY {
                Ok(view)
            } else {
                Err(view.to_string())
            }
        },
    )
    .await;
    assert_eq!(view["editable"], false);
    let mut policy = view["policy"].clone();
    policy["deny"] = json!(["from-api.test"]);
    let refused = on_replica.put("/api/v1/policy", &policy).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.text);
    assert!(
        refused.text.contains(PRIMARY),
        "names the primary: {}",
        refused.text
    );
    let code = on_replica.post("/api/v1/pairing-code", &json!({})).await;
    assert_eq!(code.status, StatusCode::CONFLICT, "{}", code.text);

    let mut tuning = on_replica.get("/api/v1/tuning").await.json()["tuning"].clone();
    tuning["cache"]["max_ttl"] = json!("1h");
    let local = on_replica.put("/api/v1/tuning", &tuning).await;
    assert_eq!(
        local.status,
        StatusCode::OK,
        "tuning stays local: {}",
        local.text
    );

    let mut policy = on_primary.get("/api/v1/policy").await.json()["policy"].clone();
    policy["deny"] = json!(["from-api.test"]);
    let saved = on_primary.put("/api/v1/policy", &policy).await;
    assert_eq!(saved.status, StatusCode::OK, "{}", saved.text);
    answers(&replica, &[&primary.moat], "from-api.test", "0.0.0.0").await;
    let synced = on_replica.get("/api/v1/policy").await.json();
    assert_eq!(
        synced["policy"]["deny"],
        json!(["from-api.test"]),
        "{synced}"
    );

    let code = on_primary
        .post("/api/v1/pairing-code", &json!({ "valid": "2m" }))
        .await;
    assert_eq!(code.status, StatusCode::OK, "{}", code.text);
    assert_eq!(code.json()["valid_secs"], 120);
    let replicas = on_primary.get("/api/v1/replicas").await.json();
    assert_eq!(replicas[0]["name"], crate::fleet::REPLICA, "{replicas}");
    let metrics = on_primary.get("/metrics").await.text;
    assert!(
        metrics.contains(&format!(
            "moat_replica_status{{replica=\"{}\",status=\"active\"}}",
            crate::fleet::REPLICA
        )),
        "{metrics}{}",
        logs(&moats)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_prometheus_own_parser() {
    let (moat, _upstream) = moat_with_upstream("deny = [\"blocked.test\"]").await;
    for _ in 0..3 {
        moat.dns.a("example.test").await;
        moat.dns.a("blocked.test").await;
    }
    let metrics = moat.control().unwrap().get("/metrics").await;
    assert_eq!(metrics.status, StatusCode::OK);
    assert!(
        metrics.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4"),
        "{:?}",
        metrics.headers
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it) must run");
    std::io::Write::write_all(promtool.stdin.as_mut().unwrap(), metrics.text.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool refused the exposition: {}{}\n{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr),
        metrics.text
    );
    let value = |line_start: &str| -> f64 {
        metrics
            .text
            .lines()
            .find_map(|line| line.strip_prefix(line_start)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no `{line_start}` in\n{}", metrics.text))
    };
    assert_eq!(value("moat_queries_total{type=\"A\"}"), 6.0);
    assert_eq!(value("moat_answers_total{verdict=\"blocked\"}"), 3.0);
    assert_eq!(value("moat_answers_total{verdict=\"cached\"}"), 2.0);
    assert_eq!(value("moat_upstream_latency_seconds_count"), 1.0);
    assert!(value("moat_bundle_version") >= 1.0);
}

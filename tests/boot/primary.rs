//! The image as a fleet's primary, set up the way a user does it: the setup
//! code read off the console, then everything else in a browser over the
//! appliance's own HTTPS, and a replica joining it from its own web UI.
//!
//! The browser, the blocklist's HTTP server and the replica run on a thread
//! that has joined the VM's network namespace, so they see QEMU's forwarded
//! ports on its loopback, and the guest sees them at 10.0.2.2.

use std::time::Duration;

use moat::sync::identity::Fingerprint;
use moat_system_tests::MoatProcess;
use moat_system_tests::browser::Browser;
use moat_system_tests::http::ListServer;

use super::{Vm, x86_64};

/// The primary's name: the browser opens `https://<name>.local/`.
const PRIMARY_NAME: &str = "boot-primary";

/// The host-side replica's name.
const REPLICA_NAME: &str = "boot-host-replica";

/// The address QEMU's user network gives the guest.
const GUEST_ADDRESS: &str = "10.0.2.15";

/// How long a change may take to show on the guest (a list download and a
/// policy compile under TCG) or to reach the replica.
const CHANGE_LIMIT: Duration = Duration::from_secs(120);

/// The first-boot settings: a name and nothing else of a fleet.
const FIRST_BOOT: &str = r#"
[network]
mode = "dhcp"

[instance]
name = "boot-primary"

[policy]
upstreams = ["udp://10.0.2.2:5300"]
"#;

#[test]
fn x86_64_primary_image_is_set_up_in_a_browser_and_a_replica_joins_it() {
    let ns = super::Netns::new("primary");
    let mut vm = Vm::boot(x86_64(), ns, FIRST_BOOT);
    let setup_code = vm.wait_for("the setup code on the console", |vm| {
        setup_code(&vm.console())
    });
    let fingerprint = vm.wait_for("the HTTPS fingerprint on the console", |vm| {
        console_fingerprint(&vm.console())
    });
    let own_name = vm.wait_for("an answer for the appliance's own name", |vm| {
        vm.dig(PRIMARY_NAME, false)
    });
    assert_eq!(own_name, GUEST_ADDRESS, "Moat answers its own name");
    let vm = &vm;
    std::thread::scope(|scope| {
        let inside = scope.spawn(|| {
            vm.ns.enter();
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(set_up_in_a_browser(vm, &setup_code, fingerprint));
        });
        if let Err(panic) = inside.join() {
            eprintln!("{}: console:\n{}", vm.name, vm.console());
            std::panic::resume_unwind(panic);
        }
    });
}

/// What the console's `no admin password yet: setup code XXXX-XXXX` says.
fn setup_code(console: &str) -> Option<String> {
    let code = console
        .lines()
        .find_map(|line| line.split("setup code ").nth(1))?
        .trim();
    (code.len() == 9).then(|| code.to_owned())
}

/// The `AB:CD:…` line after the console's fingerprint heading.
fn console_fingerprint(console: &str) -> Option<Fingerprint> {
    let mut lines = console.lines();
    lines.find(|line| line.contains("HTTPS certificate SHA-256 fingerprint"))?;
    let hex: String = lines
        .next()?
        .trim_start_matches("moat init:")
        .trim()
        .replace(':', "");
    Fingerprint::from_hex(&hex).ok()
}

/// The browser's part, inside the namespace: set the password, check the
/// certificate, add a blocklist source and a local record, issue a code;
/// then a replica joins with it from its own UI and serves that policy.
async fn set_up_in_a_browser(vm: &Vm, setup_code: &str, console_fingerprint: Fingerprint) {
    let list = ListServer::start("blocked.boot.test\n").await;
    let origin = format!("https://{PRIMARY_NAME}.local");
    let mut browser = Browser::start_with(
        &[format!(
            "--host-resolver-rules=MAP {PRIMARY_NAME}.local 127.0.0.1"
        )],
        true,
    )
    .await;
    browser.set_first_password(&origin, setup_code).await;
    let seen = Fingerprint::of(&browser.certificate(&origin).await);
    assert_eq!(
        seen, console_fingerprint,
        "the certificate the browser was shown is the one the console names"
    );

    browser.hash("#/policy").await;
    browser.click("[data-test=add-blocklist]").await;
    let source = format!("http://10.0.2.2:{}/list.txt", list.addr.port());
    browser
        .type_into("tr.blocklist:last-child input.source", &source)
        .await;
    browser.click("[data-test=add-record]").await;
    browser
        .type_into("tr.record:last-child input.rname", "media.lan")
        .await;
    browser
        .type_into("tr.record:last-child input.rvalue", "192.168.1.20")
        .await;
    browser.click("[data-test=save]").await;
    browser.shows("[data-test=notice]", "Policy saved").await;
    browser.screenshot("boot-primary-policy").await;
    until(vm, "the primary blocks the listed name", || {
        vm.dig("blocked.boot.test", false).as_deref() == Some("0.0.0.0")
    })
    .await;
    assert_eq!(
        vm.dig("media.lan", false).as_deref(),
        Some("192.168.1.20"),
        "the primary answers the local record"
    );

    browser.hash("#/fleet").await;
    browser.click("[data-test=pairing-code-button]").await;
    let code = browser
        .text_until("[data-test=pairing-code]", "a code", |text| {
            text.len() == 9 && text.as_bytes()[4] == b'-'
        })
        .await;

    let replica = MoatProcess::start(&format!("name = \"{REPLICA_NAME}\""), "").await;
    let replica_url = format!("http://{}/", replica.control_addr());
    browser
        .set_first_password(&replica_url, &replica.setup_code())
        .await;
    browser.hash("#/fleet").await;
    browser.type_into("#join-address", "127.0.0.1:8853").await;
    browser.type_into("#join-code", &code).await;
    browser.click("#join-button").await;
    browser
        .shows("[data-test=notice]", &format!("Paired with {PRIMARY_NAME}"))
        .await;
    browser.find("[data-test=primary-card]").await;
    until(vm, "the replica blocks the primary's listed name", || {
        answer(vm, &replica, "blocked.boot.test") == Some("0.0.0.0".into())
    })
    .await;
    assert_eq!(
        answer(vm, &replica, "media.lan"),
        Some("192.168.1.20".into()),
        "the replica answers the primary's local record; its log:\n{}",
        replica.log()
    );

    browser.goto(&format!("{origin}/")).await;
    browser.hash("#/fleet").await;
    browser
        .text_until("[data-test=replicas]", "the replica active", |text| {
            text.contains(REPLICA_NAME) && text.contains("active")
        })
        .await;
    browser.screenshot("boot-primary-fleet").await;
    browser.assert_no_console_errors().await;
    browser.close();
}

/// The first A record the replica answers for `name`, if any.
fn answer(vm: &Vm, replica: &MoatProcess, name: &str) -> Option<String> {
    super::dig_at(&vm.ns, replica.dns.udp.port(), name, false)
}

/// Polls `check` every half second for [`CHANGE_LIMIT`].
async fn until(vm: &Vm, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = moat::clock::now() + CHANGE_LIMIT;
    while !check() {
        assert!(
            moat::clock::now() < deadline,
            "{what}: not within {CHANGE_LIMIT:?}; console:\n{}",
            vm.console()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

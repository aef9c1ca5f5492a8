//! Configuration errors name the file, line, key and reason.

use std::process::Command;

use moat_system_tests::moat::{Scratch, binary};

fn check(text: &str) -> (bool, String) {
    let dir = Scratch::new("config");
    let path = dir.0.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(binary())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stderr).replace(&dir.0.display().to_string(), "DIR");
    (
        output.status.success(),
        said + &String::from_utf8_lossy(&output.stdout),
    )
}

#[test]
fn valid_config_passes() {
    let (ok, said) = check("[policy]\nupstreams = [\"udp://127.0.0.1:53\"]\n");
    assert!(ok, "{said}");
    assert!(said.contains("ok"));
}

#[test]
fn unknown_key_is_named_with_its_line() {
    let (ok, said) = check("[instance]\nname = \"x\"\n\n[tuning.cache]\nmax_tll = \"1h\"\n");
    assert!(!ok);
    assert!(said.contains("DIR/bad.toml:5: key `tuning.cache"), "{said}");
    assert!(said.contains("max_tll"), "{said}");
}

#[test]
fn bad_values_are_named_with_reason() {
    let cases = [
        (
            "[policy]\nupstreams = [\"quic://1.2.3.4\"]\n",
            "bad.toml:2: key `policy.upstreams",
            "quic",
        ),
        (
            "[instance]\nlisten = [\"127.0.0.1\"]\n",
            "bad.toml:2: key `instance.listen",
            "socket address",
        ),
        (
            "[tuning.cache]\nmin_ttl = \"soon\"\n",
            "bad.toml:2: key `tuning.cache.min_ttl`",
            "not a duration",
        ),
        (
            "[policy]\n\ndeny = [\"ok.test\", \"not a name\"]\n",
            "bad.toml:3: key `policy.deny",
            "not a domain",
        ),
        (
            "[policy]\nupstreams = [\"udp://1.2.3.4\", \"[/lan]udp://192.168.1.1\"]\n",
            "bad.toml:2: key `policy.upstreams",
            "write `[/domain1/domain2/]upstream`",
        ),
        (
            "[policy]\nupstreams = [\"udp://1.2.3.4\", \"[/bad name/]192.168.1.1\"]\n",
            "bad.toml:2: key `policy.upstreams",
            "`bad name` is not a domain name",
        ),
        (
            "[policy]\nlocal_domains = [\"lan\", \"*.home\"]\n",
            "bad.toml:2: key `policy.local_domains",
            "not a domain name",
        ),
        (
            "[[policy.forward]]\ndomain = \"lan\"\nupstreams = []\n",
            "key `policy.forward",
            "lists no upstream",
        ),
        (
            "[tuning.server]\nudp_max_payload = \"big\"\n",
            "bad.toml:2: key `tuning.server.udp_max_payload`",
            "expected u16",
        ),
    ];
    for (text, location, reason) in cases {
        let (ok, said) = check(text);
        assert!(!ok, "{text} must be refused");
        assert!(said.contains(location), "expected `{location}` in: {said}");
        assert!(
            said.to_lowercase().contains(reason),
            "expected `{reason}` in: {said}"
        );
    }
}

#[test]
fn run_refuses_a_broken_config() {
    let dir = Scratch::new("config-run");
    let path = dir.0.join("moat.toml");
    std::fs::write(&path, "[policy]\nblocked_ttl = -5\n").unwrap();
    let output = Command::new(binary())
        .arg("run")
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("moat.toml:2: key `policy.blocked_ttl`"),
        "{said}"
    );
}

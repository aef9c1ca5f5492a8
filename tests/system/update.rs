//! Image updates as `image/build` packs them (`image/pack-update`, signed by
//! an `openssl` Ed25519 key) and as an appliance checks them: the real
//! `moat update verify` against a root slot laid out as the build lays it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use moat_system_tests::moat;

fn image_tool(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("image")
        .join(name)
}

fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap_or_else(|err| {
        panic!("{command:?}: {err} (scripts/test.sh installs openssl, tar, xxd)")
    });
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// A scratch directory with a release key, the parts of an update, and a
/// root slot that pins the key, is x86_64 and runs release 100.
struct Release {
    dir: PathBuf,
}

impl Release {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("moat-update-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("slot")).unwrap();
        let release = Self { dir };
        for key in ["release.pem", "stranger.pem"] {
            run(Command::new("openssl")
                .args(["genpkey", "-algorithm", "ed25519", "-out"])
                .arg(release.dir.join(key)));
        }
        let public =
            run(Command::new(image_tool("release-key")).arg(release.dir.join("release.pem")));
        std::fs::write(release.dir.join("slot/release-keys"), &public.stdout).unwrap();
        std::fs::write(release.dir.join("slot/target"), "x86_64\n").unwrap();
        std::fs::write(release.dir.join("slot/update-version"), "100\n").unwrap();
        let root: Vec<u8> = (0..3_000_000u32).map(|index| (index % 251) as u8).collect();
        std::fs::write(release.dir.join("root.sqfs"), root).unwrap();
        std::fs::write(release.dir.join("vmlinuz"), b"a kernel").unwrap();
        release
    }

    /// Packs an update as `image/build` does; its path.
    fn pack(&self, name: &str, target: &str, version: u64, key: &str) -> PathBuf {
        let out = self.dir.join(name);
        run(Command::new(image_tool("pack-update"))
            .arg(&out)
            .args([target, &version.to_string()])
            .arg(self.dir.join(key))
            .arg(self.dir.join("root.sqfs"))
            .arg(self.dir.join("vmlinuz"))
            .env("SOURCE_DATE_EPOCH", "1767225600"));
        out
    }

    fn verify(&self, update: &Path, extra: &[&str]) -> Output {
        Command::new(moat::binary())
            .args(["update", "verify"])
            .arg(update)
            .arg("--slot")
            .arg(self.dir.join("slot"))
            .args(extra)
            .output()
            .expect("moat runs")
    }

    fn assert_refused(&self, update: &Path, why: &str) {
        let output = self.verify(update, &[]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{} was accepted",
            update.display()
        );
        assert!(
            stderr.contains(why),
            "{}: expected {why:?} in {stderr}",
            update.display()
        );
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn an_update_from_the_build_verifies_against_the_slot_that_pins_its_key() {
    let release = Release::new("good");
    let update = release.pack("next.update", "x86_64", 101, "release.pem");
    let output = release.verify(&update, &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("x86_64 version 101 (running 100)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("root.sqfs 3000000 bytes, SHA-256 checked"),
        "{stdout}"
    );
    let listing = run(Command::new("tar").arg("tf").arg(&update));
    assert_eq!(
        String::from_utf8_lossy(&listing.stdout),
        "manifest\nmanifest.sig\nroot.sqfs\nvmlinuz\n"
    );
}

#[test]
fn updates_signed_by_another_key_for_another_target_or_older_are_refused() {
    let release = Release::new("refused");
    let stranger = release.pack("stranger.update", "x86_64", 101, "stranger.pem");
    release.assert_refused(&stranger, "signed by a key this appliance does not trust");
    let arm = release.pack("arm.update", "rpi-arm64", 101, "release.pem");
    release.assert_refused(
        &arm,
        "the update is for rpi-arm64, this appliance is x86_64",
    );
    let older = release.pack("older.update", "x86_64", 99, "release.pem");
    release.assert_refused(
        &older,
        "the update is version 99, this appliance runs 100: not newer",
    );
    let allowed = release.verify(&older, &["--allow-downgrade"]);
    assert!(
        allowed.status.success(),
        "{}",
        String::from_utf8_lossy(&allowed.stderr)
    );
}

#[test]
fn an_update_whose_part_changed_after_signing_is_refused() {
    let release = Release::new("tampered");
    let update = release.pack("next.update", "x86_64", 101, "release.pem");
    let mut bytes = std::fs::read(&update).unwrap();
    // The root slot's data starts after three 512-byte tar headers and the
    // manifest's and signature's one block each.
    bytes[5 * 512 + 1000] ^= 0xff;
    std::fs::write(&update, bytes).unwrap();
    release.assert_refused(
        &update,
        "part root.sqfs: its SHA-256 differs from the manifest's",
    );
}

//! Updates built here the way `image/pack-update` builds them (a tar of
//! manifest, signature, parts), each refused for the reason it was made to
//! carry.

use std::path::{Path, PathBuf};

use ring::digest::{SHA256, digest};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use super::*;

struct Release {
    pair: Ed25519KeyPair,
}

impl Release {
    fn new() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Self {
            pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap(),
        }
    }

    fn key(&self) -> ReleaseKey {
        ReleaseKey(self.pair.public_key().as_ref().try_into().unwrap())
    }
}

/// An update's contents before packing, changed by each test.
struct Draft {
    target: &'static str,
    version: u64,
    parts: Vec<(&'static str, Vec<u8>)>,
    /// Replaces a part's bytes after the manifest was written.
    tamper: Option<(usize, Vec<u8>)>,
    extra_member: bool,
}

impl Draft {
    fn new() -> Self {
        Self {
            target: "x86_64",
            version: 8,
            parts: vec![
                ("root.sqfs", vec![7; 200_000]),
                ("vmlinuz", b"kernel".to_vec()),
            ],
            tamper: None,
            extra_member: false,
        }
    }

    fn manifest(&self) -> String {
        let mut text = format!(
            "moat-update 1\ntarget {}\nversion {}\nsource-date-epoch 1767225600\n",
            self.target, self.version
        );
        for (name, bytes) in &self.parts {
            let sum: String = digest(&SHA256, bytes)
                .as_ref()
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect();
            text.push_str(&format!("part {name} {} {sum}\n", bytes.len()));
        }
        text
    }

    fn pack(&self, release: &Release, dir: &Path) -> PathBuf {
        let manifest = self.manifest();
        let signature = release.pair.sign(manifest.as_bytes());
        let path = dir.join(format!("update-{}", self.version));
        let mut builder = tar::Builder::new(std::fs::File::create(&path).unwrap());
        let mut add = |name: &str, bytes: &[u8]| {
            let mut header = tar::Header::new_ustar();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder.append_data(&mut header, name, bytes).unwrap();
        };
        add("manifest", manifest.as_bytes());
        add("manifest.sig", signature.as_ref());
        for (index, (name, bytes)) in self.parts.iter().enumerate() {
            match &self.tamper {
                Some((tampered, replaced)) if *tampered == index => add(name, replaced),
                _ => add(name, bytes),
            }
        }
        if self.extra_member {
            add("surprise", b"x");
        }
        builder.finish().unwrap();
        path
    }
}

fn installed(release: &Release) -> Installed {
    Installed {
        target: Target::X86_64,
        version: 7,
        keys: vec![release.key()],
    }
}

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moat-update-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_newer_update_for_this_target_signed_by_a_pinned_key_verifies() {
    let (release, dir) = (Release::new(), dir("good"));
    let other = Release::new();
    let mut system = installed(&release);
    system.keys.insert(0, other.key());
    let verified = verify(&Draft::new().pack(&release, &dir), &system, false).unwrap();
    assert_eq!(verified.signed_by, release.key());
    assert_eq!(verified.manifest.version, 8);
    let names: Vec<_> = verified
        .manifest
        .parts
        .iter()
        .map(|part| part.name.to_string())
        .collect();
    assert_eq!(names, ["root.sqfs", "vmlinuz"]);
}

#[test]
fn an_update_signed_by_another_key_is_refused() {
    let (release, dir) = (Release::new(), dir("key"));
    let stranger = Release::new();
    let err = verify(
        &Draft::new().pack(&stranger, &dir),
        &installed(&release),
        false,
    )
    .unwrap_err();
    assert!(matches!(err, UpdateError::UnknownKey { .. }), "{err}");
    assert!(
        err.to_string().contains(&release.key().to_string()[..12]),
        "{err}"
    );
}

#[test]
fn an_update_for_another_target_is_refused() {
    let (release, dir) = (Release::new(), dir("target"));
    let draft = Draft {
        target: "rpi-arm64",
        ..Draft::new()
    };
    let err = verify(&draft.pack(&release, &dir), &installed(&release), false).unwrap_err();
    assert!(
        matches!(
            err,
            UpdateError::WrongTarget {
                update: Target::RpiArm64,
                running: Target::X86_64
            }
        ),
        "{err}"
    );
}

#[test]
fn an_update_not_newer_is_refused_unless_a_downgrade_is_allowed() {
    let (release, dir) = (Release::new(), dir("older"));
    for version in [6, 7] {
        let update = Draft {
            version,
            ..Draft::new()
        }
        .pack(&release, &dir);
        let err = verify(&update, &installed(&release), false).unwrap_err();
        assert!(
            matches!(err, UpdateError::NotNewer { running: 7, .. }),
            "{err}"
        );
        assert_eq!(
            verify(&update, &installed(&release), true)
                .unwrap()
                .manifest
                .version,
            version
        );
    }
}

#[test]
fn a_part_that_differs_from_the_manifest_is_refused() {
    let (release, dir) = (Release::new(), dir("part"));
    let same_length = Draft {
        tamper: Some((0, vec![8; 200_000])),
        ..Draft::new()
    };
    let err = verify(
        &same_length.pack(&release, &dir),
        &installed(&release),
        false,
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("root.sqfs: its SHA-256 differs"),
        "{err}"
    );
    let longer = Draft {
        version: 9,
        tamper: Some((1, b"kernel+".to_vec())),
        ..Draft::new()
    };
    let err = verify(&longer.pack(&release, &dir), &installed(&release), false).unwrap_err();
    assert!(err.to_string().contains("vmlinuz: longer than"), "{err}");
}

#[test]
fn members_out_of_place_are_refused() {
    let (release, dir) = (Release::new(), dir("layout"));
    let extra = Draft {
        extra_member: true,
        ..Draft::new()
    };
    let err = verify(&extra.pack(&release, &dir), &installed(&release), false).unwrap_err();
    assert!(
        err.to_string()
            .contains("\"surprise\" follows the last part"),
        "{err}"
    );
    let not_tar = dir.join("not-an-update");
    std::fs::write(&not_tar, b"hello").unwrap();
    assert!(verify(&not_tar, &installed(&release), false).is_err());
}

#[test]
fn manifests_that_break_a_rule_name_the_line() {
    let sum = "a".repeat(64);
    for (text, expected) in [
        ("moat-update 2\n", "line 0: the first line"),
        ("moat-update 1\ntarget mips\n", "line 2: unknown target"),
        (
            "moat-update 1\nversion x\n",
            "line 2: \"x\" is not a whole number",
        ),
        (
            "moat-update 1\nversion 1\nversion 2\n",
            "line 3: this key was already given",
        ),
        (
            &format!("moat-update 1\npart ../etc 1 {sum}\n"),
            "line 2: \"../etc\" is not a plain file name",
        ),
        (
            &format!("moat-update 1\npart manifest 1 {sum}\n"),
            "the manifest's own name",
        ),
        ("moat-update 1\npart a 1 +f\n", "is not 64 hex digits"),
        (
            &format!("moat-update 1\npart a 1 {sum}\npart a 1 {sum}\n"),
            "line 3: part a is listed twice",
        ),
        (
            "moat-update 1\ncolour blue\n",
            "line 2: unknown key \"colour\"",
        ),
        (
            "moat-update 1\ntarget x86_64\nversion 1\nsource-date-epoch 0\n",
            "no part is listed",
        ),
    ] {
        let err = Manifest::parse(text).unwrap_err().to_string();
        assert!(err.contains(expected), "{text:?}: {err}");
    }
}

#[test]
fn the_running_slot_must_say_its_target_version_and_keys() {
    let release = Release::new();
    let slot = dir("slot");
    std::fs::write(slot.join("target"), "x86_64\n").unwrap();
    std::fs::write(slot.join("update-version"), "41\n").unwrap();
    std::fs::write(
        slot.join("release-keys"),
        format!("# the release key\n{}\n", release.key()),
    )
    .unwrap();
    let system = Installed::load(&slot).unwrap();
    assert_eq!(
        (system.target, system.version, system.keys),
        (Target::X86_64, 41, vec![release.key()])
    );
    std::fs::write(slot.join("release-keys"), "# none\n").unwrap();
    let err = Installed::load(&slot).unwrap_err().to_string();
    assert!(err.contains("release-keys: it names no key"), "{err}");
    std::fs::remove_file(slot.join("update-version")).unwrap();
    let err = Installed::load(&slot).unwrap_err().to_string();
    assert!(err.contains("update-version"), "{err}");
}

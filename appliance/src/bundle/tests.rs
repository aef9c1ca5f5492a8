use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use ring::digest::{SHA256, digest};

use super::*;
use crate::store::{Access, DataDir, StoreError, files};

const NOW: u64 = 1_700_000_000;
const DAY: Duration = Duration::from_secs(86_400);

fn parts() -> Vec<(Part, Vec<u8>)> {
    vec![
        (Part::Blocklist, b"\0asm blocklist".to_vec()),
        (Part::LocalRecords, b"\0asm records".to_vec()),
        (Part::Settings, b"fail_mode = \"closed\"\n".to_vec()),
    ]
}

/// The parts as named on the wire, for bundles made with `Bundle::sign`.
fn named() -> Vec<(String, Vec<u8>)> {
    parts()
        .into_iter()
        .map(|(part, bytes)| (part.name().into_owned(), bytes))
        .collect()
}

fn key() -> SigningKey {
    SigningKey::generate().unwrap()
}

fn sealed(key: &SigningKey, version: u64) -> Vec<u8> {
    Bundle::seal(parts(), version, NOW, DAY, key).to_bytes()
}

fn check(bytes: &[u8], key: &SigningKey) -> Result<VerifiedBundle, BundleError> {
    Bundle::parse(bytes)?.verify(&key.public(), None, NOW)
}

fn manifest(key: &SigningKey) -> Manifest {
    Manifest {
        format: FORMAT_VERSION,
        key_id: key.public().key_id(),
        version: 7,
        created_unix: NOW,
        expires_unix: NOW + 60,
        parts: parts()
            .iter()
            .map(|(part, bytes)| PartDigest::of(&part.name(), bytes))
            .collect(),
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(label: &str) -> Self {
        let path = std::env::temp_dir().join(format!("moat-bundle-{label}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        Self(path)
    }

    fn data(&self) -> DataDir {
        DataDir::open(&self.0).unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[test]
fn seal_parse_verify_round_trip() {
    let key = key();
    let bytes = sealed(&key, 7);
    assert!(bytes.starts_with(b"MOATBNDL"));
    let bundle = check(&bytes, &key).unwrap();
    assert_eq!(bundle.version(), 7);
    assert_eq!(bundle.created_unix(), NOW);
    assert_eq!(bundle.expires_unix(), NOW + DAY.as_secs());
    assert_eq!(bundle.key_id(), key.public().key_id());
    for (part, content) in parts() {
        assert_eq!(bundle.part(part), Some(content.as_slice()), "{part}");
    }
    let without_settings = Bundle::seal(parts()[..2].to_vec(), 7, NOW, DAY, &key).to_bytes();
    let without_settings = check(&without_settings, &key).unwrap();
    assert_eq!(without_settings.part(Part::Settings), None);
    assert!(matches!(
        without_settings.required_part(Part::Settings),
        Err(BundleError::MissingPart {
            part: Part::Settings
        })
    ));
    assert_eq!(bundle.to_bytes(), bytes, "forwarded unchanged");
    let newer = Bundle::parse(&bytes)
        .unwrap()
        .verify(&key.public(), Some(6), NOW);
    assert_eq!(newer.unwrap().version(), 7);
}

#[test]
fn any_flipped_manifest_byte_is_refused() {
    let key = key();
    let good = Bundle::seal(parts(), 7, NOW, DAY, &key);
    for index in 0..good.envelope_manifest_len() {
        for mask in [0x01, 0x80, 0xff] {
            let mut bundle = good.clone();
            bundle.flip_manifest_byte(index, mask);
            let err = check(&bundle.to_bytes(), &key).unwrap_err();
            assert!(
                matches!(
                    err,
                    BundleError::BadSignature
                        | BundleError::Malformed(_)
                        | BundleError::UnknownFormat(_)
                        | BundleError::WrongKey { .. }
                ),
                "byte {index} ^ {mask:#x}: {err}"
            );
        }
    }
}

#[test]
fn flipped_signature_is_refused() {
    let key = key();
    let mut bundle = Bundle::seal(parts(), 7, NOW, DAY, &key);
    bundle.flip_signature_byte(10);
    let err = check(&bundle.to_bytes(), &key).unwrap_err();
    assert!(matches!(err, BundleError::BadSignature), "{err}");
}

#[test]
fn changed_part_is_refused() {
    let key = key();
    let manifest = manifest(&key);
    let mut same_length = named();
    same_length[0].1[1] ^= 1;
    let mut longer = named();
    longer[2].1.push(b'#');
    for changed in [same_length, longer] {
        let bytes = Bundle::sign(&manifest, changed, &key).to_bytes();
        let err = check(&bytes, &key).unwrap_err();
        assert!(matches!(err, BundleError::PartMismatch { .. }), "{err}");
    }
}

#[test]
fn missing_extra_or_repeated_parts_are_refused() {
    let key = key();
    let manifest = manifest(&key);
    let mut missing = named();
    missing.pop();
    let mut extra = named();
    extra.push(("extra.wasm".to_owned(), vec![1]));
    let mut repeated = named();
    repeated.push(named()[0].clone());

    let err = check(&Bundle::sign(&manifest, missing, &key).to_bytes(), &key).unwrap_err();
    assert!(
        matches!(&err, BundleError::MissingPart { part } if *part == Part::Settings),
        "{err}"
    );
    let err = check(&Bundle::sign(&manifest, extra, &key).to_bytes(), &key).unwrap_err();
    assert!(
        matches!(&err, BundleError::UnexpectedPart { part } if part == "extra.wasm"),
        "{err}"
    );
    let err = check(&Bundle::sign(&manifest, repeated, &key).to_bytes(), &key).unwrap_err();
    assert!(
        matches!(&err, BundleError::UnexpectedPart { part } if *part == Part::Blocklist.name()),
        "{err}"
    );
}

#[test]
fn an_unknown_part_is_a_typed_error() {
    let key = key();
    let mut manifest = manifest(&key);
    let mut carried = named();
    manifest.parts.push(PartDigest::of("extra.wasm", &[1]));
    carried.push(("extra.wasm".to_owned(), vec![1]));
    let err = check(&Bundle::sign(&manifest, carried, &key).to_bytes(), &key).unwrap_err();
    assert!(
        matches!(&err, BundleError::UnknownPart { name } if name == "extra.wasm"),
        "{err}"
    );
    assert!(matches!(
        "blocklist".parse::<Part>(),
        Err(BundleError::UnknownPart { .. })
    ));
    for part in Part::ALL {
        assert_eq!(part.name().parse::<Part>().unwrap(), part);
    }
    let plugin = Part::Plugin("bed-time".parse().unwrap());
    assert_eq!(plugin.name(), "plugins/bed-time.wasm");
    assert_eq!(plugin.name().parse::<Part>().unwrap(), plugin);
    for bad in [
        "plugins/Bad.wasm",
        "plugins/.wasm",
        "plugins/a",
        "plugins/../a.wasm",
    ] {
        assert!(bad.parse::<Part>().is_err(), "{bad}");
    }
}

#[test]
fn other_key_is_refused() {
    let ours = key();
    let theirs = key();
    let err = check(&sealed(&theirs, 7), &ours).unwrap_err();
    match err {
        BundleError::WrongKey { expected, got } => {
            assert_eq!(expected, ours.public().key_id());
            assert_eq!(got, theirs.public().key_id());
        }
        other => panic!("{other}"),
    }
}

#[test]
fn forged_key_id_fails_the_signature() {
    let ours = key();
    let theirs = key();
    let mut manifest = manifest(&theirs);
    manifest.key_id = ours.public().key_id();
    let bytes = Bundle::sign(&manifest, named(), &theirs).to_bytes();
    let err = check(&bytes, &ours).unwrap_err();
    assert!(matches!(err, BundleError::BadSignature), "{err}");
}

#[test]
fn same_or_lower_version_is_rollback() {
    let key = key();
    let bytes = sealed(&key, 7);
    for running in [7, 8, u64::MAX] {
        let err = Bundle::parse(&bytes)
            .unwrap()
            .verify(&key.public(), Some(running), NOW)
            .unwrap_err();
        assert!(
            matches!(err, BundleError::Rollback { offered: 7, running: r } if r == running),
            "{err}"
        );
    }
}

#[test]
fn expired_bundle_is_refused() {
    let key = key();
    let bytes = sealed(&key, 7);
    let expires = NOW + DAY.as_secs();
    let verify = |now| {
        Bundle::parse(&bytes)
            .unwrap()
            .verify(&key.public(), None, now)
    };
    assert!(verify(expires - 1).is_ok());
    for now in [expires, expires + 1] {
        let err = verify(now).unwrap_err();
        assert!(
            matches!(err, BundleError::Expired { expires_unix, now_unix }
                if expires_unix == expires && now_unix == now),
            "{err}"
        );
    }
}

#[test]
fn unknown_format_is_refused() {
    let key = key();
    let mut manifest = manifest(&key);
    manifest.format = FORMAT_VERSION + 1;
    let bytes = Bundle::sign(&manifest, named(), &key).to_bytes();
    let err = check(&bytes, &key).unwrap_err();
    assert!(
        matches!(err, BundleError::UnknownFormat(f) if f == FORMAT_VERSION + 1),
        "{err}"
    );
}

#[test]
fn oversized_input_is_refused_before_decoding() {
    let bytes = vec![0; MAX_BUNDLE_BYTES + 1];
    let err = Bundle::parse(&bytes).unwrap_err();
    assert!(
        matches!(err, BundleError::TooLarge { len, limit }
            if len == MAX_BUNDLE_BYTES + 1 && limit == MAX_BUNDLE_BYTES),
        "{err}"
    );
}

#[test]
fn trailing_and_non_canonical_bytes_are_refused() {
    let key = key();
    let bytes = sealed(&key, 7);
    let mut trailing = bytes.clone();
    trailing.push(0);
    assert!(matches!(
        Bundle::parse(&trailing),
        Err(BundleError::Malformed(_))
    ));

    // The signature's length (64) is one varint byte; spell it in two.
    let bundle = Bundle::parse(&bytes).unwrap();
    let manifest_len = bundle.envelope_manifest_len();
    let at = 8 + postcard::to_stdvec(&(manifest_len as u64)).unwrap().len() + manifest_len;
    assert_eq!(bytes[at], 64);
    let mut overlong = bytes[..at].to_vec();
    overlong.extend_from_slice(&[0x80 | 64, 0]);
    overlong.extend_from_slice(&bytes[at + 1..]);
    let err = Bundle::parse(&overlong).unwrap_err();
    assert!(err.to_string().contains("non-canonical"), "{err}");
}

#[test]
fn too_many_parts_are_refused() {
    let key = key();
    let many = (0..=MAX_PARTS)
        .map(|n| (format!("part-{n}"), Vec::new()))
        .collect();
    let bytes = Bundle::sign(&manifest(&key), many, &key).to_bytes();
    assert!(matches!(
        Bundle::parse(&bytes),
        Err(BundleError::Malformed(_))
    ));
}

#[test]
fn mangled_bundles_never_panic_or_verify() {
    let key = key();
    let good = sealed(&key, 7);
    let mut rng = StdRng::seed_from_u64(4);
    for round in 0..4000 {
        let mut bytes = good.clone();
        let at = rng.random_range(0..bytes.len());
        match round % 5 {
            0 => bytes.truncate(at),
            1 => bytes[at] ^= 1 << rng.random_range(0..8),
            2 => bytes[at] = bytes[at].wrapping_add(rng.random_range(1..=255)),
            3 => bytes.insert(at, rng.random()),
            _ => {
                bytes.remove(at);
            }
        }
        for _ in 0..round % 3 {
            let at = rng.random_range(0..bytes.len().max(1));
            if let Some(byte) = bytes.get_mut(at) {
                *byte = rng.random();
            }
        }
        if bytes == good {
            continue;
        }
        let result = Bundle::parse(&bytes).and_then(|b| b.verify(&key.public(), None, NOW));
        assert!(result.is_err(), "round {round} verified");
    }
}

#[test]
fn public_key_hex_and_serde() {
    let public = key().public();
    let hex = public.to_string();
    assert_eq!(hex.len(), 64);
    assert_eq!(hex, hex.to_lowercase());
    assert_eq!(PublicKey::from_hex(&hex).unwrap(), public);
    assert_eq!(PublicKey::from_hex(&hex.to_uppercase()).unwrap(), public);
    for bad in [
        "",
        "00",
        &hex[1..],
        &format!("{}zz", &hex[2..]),
        &format!("+{}", &hex[1..]),
    ] {
        assert!(PublicKey::from_hex(bad).is_err(), "{bad:?}");
    }

    let json = serde_json::to_string(&public).unwrap();
    assert_eq!(json, format!("\"{hex}\""));
    assert_eq!(serde_json::from_str::<PublicKey>(&json).unwrap(), public);
    let wire = postcard::to_stdvec(&public).unwrap();
    assert_eq!(wire, public.0);
    assert_eq!(postcard::from_bytes::<PublicKey>(&wire).unwrap(), public);

    let id = public.key_id();
    assert_eq!(id.0, digest(&SHA256, &public.0).as_ref()[..8]);
    assert_eq!(id.to_string().len(), 16);
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(serde_json::from_str::<KeyId>(&json).unwrap(), id);
}

#[test]
fn store_round_trip() {
    let temp = TempDir::new("store");
    let store = BundleStore::new(temp.data());
    let key = key();
    assert!(store.load(&key.public(), NOW).unwrap().is_none());

    let bytes = sealed(&key, 7);
    let bundle = check(&bytes, &key).unwrap();
    store.save(&bundle).unwrap();
    let loaded = store.load(&key.public(), NOW).unwrap().unwrap();
    assert!(!loaded.expired);
    assert_eq!(loaded.bundle.version(), 7);
    assert_eq!(loaded.bundle.to_bytes(), bytes);
    assert_eq!(fs::read(temp.data().path(files::BUNDLE)).unwrap(), bytes);
}

#[test]
fn corrupt_stored_bundle_is_reported_and_kept() {
    let temp = TempDir::new("corrupt");
    let data = temp.data();
    let store = BundleStore::new(data.clone());
    let key = key();
    let good = sealed(&key, 7);
    for damaged in [&good[..good.len() / 2], b"garbage".as_slice()] {
        data.write(files::BUNDLE, damaged, Access::Public).unwrap();
        let err = store.load(&key.public(), NOW).unwrap_err();
        assert!(
            matches!(&err, BundleError::Stored { path, .. } if *path == data.path(files::BUNDLE)),
            "{err}"
        );
        assert!(err.to_string().contains(files::BUNDLE), "{err}");
        assert_eq!(
            fs::read(data.path(files::BUNDLE)).unwrap(),
            damaged,
            "left as found"
        );
    }
    store.save(&check(&good, &key).unwrap()).unwrap();
    let loaded = store.load(&key.public(), NOW).unwrap().unwrap();
    assert_eq!(loaded.bundle.version(), 7);
}

#[test]
fn stored_bundle_from_another_key_is_reported() {
    let temp = TempDir::new("rekeyed");
    let store = BundleStore::new(temp.data());
    let old = key();
    store.save(&check(&sealed(&old, 7), &old).unwrap()).unwrap();
    let err = store.load(&key().public(), NOW).unwrap_err();
    assert!(
        matches!(&err, BundleError::Stored { source, .. }
            if matches!(**source, BundleError::WrongKey { .. })),
        "{err}"
    );
}

#[test]
fn expired_stored_bundle_still_loads() {
    let temp = TempDir::new("expired");
    let store = BundleStore::new(temp.data());
    let key = key();
    store.save(&check(&sealed(&key, 7), &key).unwrap()).unwrap();
    let later = NOW + DAY.as_secs() + 1;
    let loaded = store.load(&key.public(), later).unwrap().unwrap();
    assert!(loaded.expired);
    assert_eq!(loaded.bundle.version(), 7);
}

#[test]
fn signing_key_is_private_and_kept() {
    let temp = TempDir::new("key");
    let data = temp.data();
    let first = SigningKey::load_or_create(&data).unwrap();
    let second = SigningKey::load_or_create(&data).unwrap();
    assert_eq!(first.public(), second.public());
    let mode = fs::metadata(data.path(files::SIGNING_KEY))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let bytes = sealed(&first, 1);
    assert!(check(&bytes, &second).is_ok(), "the reloaded key verifies");
}

#[test]
fn corrupt_signing_key_is_an_error_not_replaced() {
    let temp = TempDir::new("badkey");
    let data = temp.data();
    data.write(files::SIGNING_KEY, b"not a key", Access::Secret)
        .unwrap();
    let err = SigningKey::load_or_create(&data).unwrap_err();
    assert!(
        matches!(&err, BundleError::Store(StoreError::Corrupt { path, .. })
            if *path == data.path(files::SIGNING_KEY)),
        "{err}"
    );
    assert_eq!(
        fs::read(data.path(files::SIGNING_KEY)).unwrap(),
        b"not a key"
    );
}

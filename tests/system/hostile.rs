//! Hostile input against a replica. A replica is paired with a real
//! primary; then the primary stops and the test takes over its sync address
//! with a fake primary made from the primary's own identity and signing key
//! (so the replica's pins accept it) that speaks the real protocol and sends
//! bad bundles and broken frames. Each is refused and the replica keeps
//! serving its last good bundle; then a good bundle from the same fake
//! primary is applied, so the refusals were for the defects and nothing else.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use moat::bundle::{Bundle, BundleStore, Part, SigningKey, VerifiedBundle};
use moat::compile::compile_policy;
use moat::config::Policy;
use moat::store::DataDir;
use moat::sync::identity::{Fingerprint, Identity};
use moat::sync::protocol::{
    FrameDecoder, PROTOCOL_VERSION, PrimaryMessage, ReplicaMessage, encode_frame,
};
use moat::sync::tls::{self, Admission, Pins};
use moat_system_tests::MoatProcess;
use moat_system_tests::moat::{Scratch, free_udp_port};

use super::fleet::{
    PRIMARY, Primary, REPLICA, answers, bundle_version, eventually, logs, pair, replica,
    runs_version, status,
};
use super::ips;

/// How long the replica may take to dial the fake primary again (its
/// backoff doubles with every dropped connection).
const REDIAL_LIMIT: Duration = Duration::from_secs(90);
/// How long the replica may take to answer a bundle or drop a connection.
const VERDICT_LIMIT: Duration = Duration::from_secs(15);
/// Lifetime of the bundles the fake primary seals.
const LIFETIME: Duration = Duration::from_secs(30 * 86_400);
/// A name only the fake primary's bundles block (and everything below it).
const HOSTILE_LISTED: &str = "evil.test";

/// The primary's sync endpoint, run by the test with the primary's identity.
struct FakePrimary {
    endpoint: quinn::Endpoint,
    replica: Fingerprint,
    pins: Pins,
}

impl FakePrimary {
    /// Listens on `addr` as `identity`, admitting only `replica` to sync.
    async fn bind(addr: SocketAddr, identity: &Identity, replica: Fingerprint) -> Self {
        let mut last = None;
        for _ in 0..50 {
            let config = tls::server_config(identity).expect("server config");
            match quinn::Endpoint::server(config, addr) {
                Ok(endpoint) => {
                    return Self {
                        endpoint,
                        replica,
                        pins: Pins::only(replica),
                    };
                }
                Err(err) => last = Some(err),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cannot take over the primary's sync address {addr}: {last:?}");
    }

    /// Waits for the replica to dial, admits it and reads its hello.
    async fn accept(&self, replica: &MoatProcess) -> Session {
        let fail = |what: String| -> ! { panic!("{what}{}", logs(&[replica])) };
        let incoming = match tokio::time::timeout(REDIAL_LIMIT, self.endpoint.accept()).await {
            Ok(Some(incoming)) => incoming,
            Ok(None) => fail("the fake primary's endpoint closed".into()),
            Err(_) => fail(format!("the replica did not dial within {REDIAL_LIMIT:?}")),
        };
        let connection = incoming
            .await
            .unwrap_or_else(|err| fail(format!("handshake with the replica: {err}")));
        let admission = tls::admit(&connection, &self.pins)
            .unwrap_or_else(|err| fail(format!("the replica was not admitted: {err}")));
        assert_eq!(
            admission,
            Admission::Sync {
                replica: self.replica
            }
        );
        let (send, recv) = match tokio::time::timeout(VERDICT_LIMIT, connection.accept_bi()).await {
            Ok(Ok(streams)) => streams,
            Ok(Err(err)) => fail(format!("the replica opened no stream: {err}")),
            Err(_) => fail("the replica opened no stream in time".into()),
        };
        let mut session = Session {
            connection,
            send,
            recv,
            decoder: FrameDecoder::new(),
            hello_version: None,
        };
        match session.next(replica).await {
            ReplicaMessage::Hello {
                protocol,
                name,
                bundle_version,
            } => {
                assert_eq!(protocol, PROTOCOL_VERSION);
                assert_eq!(name, REPLICA);
                session.hello_version = bundle_version;
            }
            other => fail(format!(
                "the replica's first message is not a hello: {other:?}"
            )),
        }
        session
    }
}

/// One sync connection from the replica, on the fake primary's side.
struct Session {
    connection: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    decoder: FrameDecoder<ReplicaMessage>,
    /// The bundle version the replica said it runs.
    hello_version: Option<u64>,
}

impl Session {
    /// The replica's next message.
    async fn next(&mut self, replica: &MoatProcess) -> ReplicaMessage {
        let reading = async {
            let mut buffer = vec![0; 64 << 10];
            loop {
                if let Some(message) = self.decoder.next_message()? {
                    return Ok(message);
                }
                let len = self
                    .recv
                    .read(&mut buffer)
                    .await
                    .map_err(|err| err.to_string())?
                    .ok_or("the replica ended the stream")?;
                if let Some(message) = self.decoder.push(&buffer[..len])? {
                    return Ok(message);
                }
            }
        };
        let read: Result<ReplicaMessage, String> =
            match tokio::time::timeout(VERDICT_LIMIT, reading).await {
                Ok(read) => read.map_err(|err: Box<dyn std::error::Error>| err.to_string()),
                Err(_) => Err(format!("nothing from the replica in {VERDICT_LIMIT:?}")),
            };
        read.unwrap_or_else(|err| panic!("reading the replica: {err}{}", logs(&[replica])))
    }

    /// Sends raw bytes on the sync stream (errors ignored: the replica may
    /// already have dropped the connection).
    async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.send.write_all(bytes).await;
    }

    /// Sends a bundle message.
    async fn send_bundle(&mut self, version: u64, bytes: Vec<u8>) {
        let frame = encode_frame(&PrimaryMessage::Bundle {
            version,
            bytes: Bytes::from(bytes),
        })
        .expect("encode a bundle frame");
        self.send.write_all(&frame).await.expect("send a bundle");
    }

    /// The replica's answer to a bundle (heartbeats skipped).
    async fn verdict(&mut self, replica: &MoatProcess) -> ReplicaMessage {
        loop {
            match self.next(replica).await {
                ReplicaMessage::Heartbeat { .. } => {}
                other => return other,
            }
        }
    }

    /// Sends bundle `bytes` announced as `version` and checks the replica
    /// rejects it, giving a reason that contains `because`.
    async fn expect_rejected(
        &mut self,
        replica: &MoatProcess,
        what: &str,
        version: u64,
        bytes: Vec<u8>,
        because: &str,
    ) {
        self.send_bundle(version, bytes).await;
        match self.verdict(replica).await {
            ReplicaMessage::Rejected {
                version: rejected,
                reason,
            } if rejected == version && reason.contains(because) => {}
            other => panic!(
                "{what}: expected Rejected {{ version: {version}, reason: ..{because}.. }}, got {other:?}{}",
                logs(&[replica])
            ),
        }
    }

    /// Waits for the replica to drop this connection.
    async fn expect_dropped(self, replica: &MoatProcess, what: &str) {
        if tokio::time::timeout(VERDICT_LIMIT, self.connection.closed())
            .await
            .is_err()
        {
            panic!(
                "{what}: the replica kept the connection open for {VERDICT_LIMIT:?}{}",
                logs(&[replica])
            );
        }
    }
}

/// The parts of a bundle like `stored` whose blocklist lists only
/// [`HOSTILE_LISTED`], compiled by the real compiler.
fn hostile_parts(stored: &VerifiedBundle, files: &Scratch) -> Vec<(Part, Vec<u8>)> {
    let list = files.0.join("hostile-list.txt");
    std::fs::write(&list, format!("||{HOSTILE_LISTED}^\n")).unwrap();
    let policy = Policy::from_toml(
        &format!(
            "[policy]\n[[policy.blocklists]]\nsource = \"{}\"\n",
            list.display()
        ),
        "hostile policy",
    )
    .expect("hostile policy parses");
    let data = DataDir::open(&files.0.join("data"))
        .unwrap()
        .allow_sources_from([files.0.clone()]);
    let compiled = compile_policy(&policy, &data).expect("hostile policy compiles");
    let part = |part: Part| stored.part(part).expect("stored part").to_vec();
    vec![
        (Part::LocalRecords, part(Part::LocalRecords)),
        (Part::Blocklist, compiled.blocklist),
        (Part::Settings, part(Part::Settings)),
    ]
}

/// Reads a postcard varint at `at`, moving `at` past it.
fn varint(bytes: &[u8], at: &mut usize) -> usize {
    let mut value = 0;
    for shift in (0..).step_by(7) {
        let byte = bytes[*at];
        *at += 1;
        value |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return value;
        }
    }
    unreachable!()
}

/// Flips one bit of the signature in an encoded bundle: the magic
/// `MOATBNDL`, the manifest (varint length, bytes), then the signature.
fn flip_signature_bit(bytes: &mut [u8]) {
    let mut at = b"MOATBNDL".len();
    let manifest = varint(bytes, &mut at);
    at += manifest;
    let signature = varint(bytes, &mut at);
    assert_eq!(signature, 64, "an ed25519 signature");
    bytes[at + signature / 2] ^= 0x01;
}

/// Changes one byte of part `text` inside an encoded bundle.
fn change_part(bytes: &mut [u8], text: &[u8]) {
    let at = bytes
        .windows(text.len())
        .position(|window| window == text)
        .expect("the part is in the encoded bundle");
    bytes[at + text.len() / 2] ^= 0x01;
}

/// Asserts the replica still runs bundle `good`: status, a name blocked by
/// it, a name only the hostile bundles block (`round` makes names fresh).
async fn still_serves_last_good(replica: &MoatProcess, good: u64, after: &str, round: usize) {
    let status = status(replica).await.unwrap();
    assert!(
        status["role"] == "replica" && status["bundle_version"] == good,
        "after {after}: the replica runs bundle {good} still: {status}{}",
        logs(&[replica])
    );
    assert_eq!(
        ips(&replica.dns.a(&format!("r{round}.ads.test")).await),
        ["0.0.0.0"],
        "after {after}: the last good bundle still blocks ads.test{}",
        logs(&[replica])
    );
    assert_eq!(
        ips(&replica.dns.a(&format!("r{round}.{HOSTILE_LISTED}")).await),
        ["192.0.2.1"],
        "after {after}: nothing of the refused bundle is in force{}",
        logs(&[replica])
    );
}

/// Waits until the replica's status shows its link down with an error
/// containing `because`.
async fn link_error(replica: &MoatProcess, what: &str, because: &str) {
    eventually(
        &format!("after {what}, the replica reports an error containing {because:?}"),
        VERDICT_LIMIT,
        &[replica],
        async || {
            let status = status(replica).await?;
            let error = status["primary"]["last_error"].as_str().unwrap_or_default();
            if status["primary"]["connected"] == false && error.contains(because) {
                Ok(())
            } else {
                Err(status.to_string())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_refuses_hostile_bundles_and_frames_and_keeps_its_last_good_bundle() {
    let port = free_udp_port();
    let mut primary = Primary::start(&format!("sync = \"127.0.0.1:{port}\"")).await;
    let (r, _r_upstream) = replica().await;
    pair(&primary.moat, &r).await;
    let good = bundle_version(&status(&primary.moat).await.unwrap()).unwrap();
    runs_version(&r, &primary.moat, good).await;
    answers(&r, &[&primary.moat], "x.ads.test", "0.0.0.0").await;
    let pinned = status(&r).await.unwrap()["primary"]["fingerprint"].clone();

    // The primary stops; the test takes its address, identity and keys.
    primary.moat.terminate();
    let primary_data = DataDir::open(&primary.moat.dir.0.join("data")).unwrap();
    let identity = Identity::load_or_create(&primary_data, PRIMARY).unwrap();
    assert_eq!(
        pinned,
        identity.fingerprint().to_string(),
        "the primary's identity files are the ones the replica pinned"
    );
    let fake = FakePrimary::bind(
        SocketAddr::from(([127, 0, 0, 1], port)),
        &identity,
        Identity::load_or_create(&DataDir::open(&r.dir.0.join("data")).unwrap(), REPLICA)
            .unwrap()
            .fingerprint(),
    )
    .await;
    let key = SigningKey::load_or_create(&primary_data).unwrap();
    let now = moat::clock::unix_now();
    let stored = BundleStore::new(primary_data)
        .load(&key.public(), now)
        .unwrap()
        .expect("the primary's stored bundle")
        .bundle;
    assert_eq!(stored.version(), good);
    let files = Scratch::new("hostile");
    let parts = hostile_parts(&stored, &files);
    let next = good + 1;
    let valid = Bundle::seal(parts.clone(), next, now, LIFETIME, &key).to_bytes();

    let mut session = fake.accept(&r).await;
    assert_eq!(session.hello_version, Some(good), "the replica's hello");

    let mut bytes = valid.clone();
    flip_signature_bit(&mut bytes);
    session
        .expect_rejected(&r, "bad signature", next, bytes, "bad bundle signature")
        .await;
    still_serves_last_good(&r, good, "a bad signature", 1).await;

    let stranger = SigningKey::generate().unwrap();
    let bytes = Bundle::seal(parts.clone(), next, now, LIFETIME, &stranger).to_bytes();
    session
        .expect_rejected(&r, "another key", next, bytes, "expected the pinned key")
        .await;
    still_serves_last_good(&r, good, "a bundle signed by another key", 2).await;

    let lower = good - 1;
    let bytes = Bundle::seal(parts.clone(), lower, now, LIFETIME, &key).to_bytes();
    session
        .expect_rejected(
            &r,
            "lower version",
            lower,
            bytes,
            "not above the running version",
        )
        .await;
    still_serves_last_good(&r, good, "a lower version", 3).await;

    let bytes = Bundle::seal(parts.clone(), good, now, LIFETIME, &key).to_bytes();
    session
        .expect_rejected(
            &r,
            "equal version",
            good,
            bytes.clone(),
            "not above the running version",
        )
        .await;
    session
        .expect_rejected(
            &r,
            "equal version announced as newer",
            next,
            bytes,
            "not above the running version",
        )
        .await;
    still_serves_last_good(&r, good, "an equal version", 4).await;

    let long_ago = now - 10 * 86_400;
    let day = Duration::from_secs(86_400);
    let bytes = Bundle::seal(parts.clone(), next, long_ago, day, &key).to_bytes();
    session
        .expect_rejected(&r, "expired", next, bytes, "expired")
        .await;
    still_serves_last_good(&r, good, "an expired bundle", 5).await;

    let mut bytes = valid.clone();
    change_part(&mut bytes, stored.part(Part::Settings).unwrap());
    session
        .expect_rejected(
            &r,
            "a part changed after sealing",
            next,
            bytes,
            "does not match its manifest hash",
        )
        .await;
    still_serves_last_good(&r, good, "a wrong hash", 6).await;

    let bytes = b"this is not a bundle at all".repeat(40);
    session
        .expect_rejected(&r, "garbage bundle", next, bytes, "malformed")
        .await;
    still_serves_last_good(&r, good, "a garbage bundle", 7).await;

    // A truncated frame (half of a valid bundle's), then the stream ends.
    let frame = encode_frame(&PrimaryMessage::Bundle {
        version: next,
        bytes: Bytes::from(valid.clone()),
    })
    .unwrap();
    session.send_raw(&frame[..frame.len() / 2]).await;
    let _ = session.send.finish();
    session.expect_dropped(&r, "a truncated frame").await;
    link_error(&r, "a truncated frame", "stream ended inside a message").await;
    still_serves_last_good(&r, good, "a truncated frame", 8).await;

    // A frame announcing 200 MiB, over the 128 MiB limit: refused at once.
    let mut session = fake.accept(&r).await;
    assert_eq!(session.hello_version, Some(good));
    let mut oversized = (200u32 << 20).to_be_bytes().to_vec();
    oversized.extend_from_slice(&frame[4..frame.len().min(4096)]);
    session.send_raw(&oversized).await;
    session
        .expect_dropped(&r, "a frame announcing 200 MiB")
        .await;
    link_error(&r, "an oversized frame", "limit").await;
    still_serves_last_good(&r, good, "an oversized frame", 9).await;

    // Garbage in a well-formed frame: not a message.
    let mut session = fake.accept(&r).await;
    assert_eq!(session.hello_version, Some(good));
    let mut garbage = 32u32.to_be_bytes().to_vec();
    garbage.extend_from_slice(&[0xff; 32]);
    session.send_raw(&garbage).await;
    session.expect_dropped(&r, "garbage on the stream").await;
    link_error(&r, "garbage on the stream", "malformed").await;
    still_serves_last_good(&r, good, "garbage on the stream", 10).await;

    // The same fake primary, with a sound bundle of the same content: applied.
    let mut session = fake.accept(&r).await;
    assert_eq!(session.hello_version, Some(good));
    session.send_bundle(next, valid).await;
    match session.verdict(&r).await {
        ReplicaMessage::Applied { version } if version == next => {}
        other => panic!(
            "a sound bundle {next} is applied, got {other:?}{}",
            logs(&[&r])
        ),
    }
    let replica_status = status(&r).await.unwrap();
    assert_eq!(
        replica_status["bundle_version"],
        next,
        "{replica_status}{}",
        logs(&[&r])
    );
    assert_eq!(
        ips(&r.dns.a(&format!("z.{HOSTILE_LISTED}")).await),
        ["0.0.0.0"],
        "the new bundle's list is in force{}",
        logs(&[&r])
    );
    assert_eq!(
        ips(&r.dns.a("z.ads.test").await),
        ["192.0.2.1"],
        "the old list is gone{}",
        logs(&[&r])
    );
    fake.endpoint.close(0u32.into(), b"done");
}

//! Attacks against a real `moat`, and the legitimate client that must keep
//! being served while they run: what the attack suite (`tests/system/
//! attacks.rs`) asserts and the attack benchmark (`benches/attacks.rs`)
//! reports. Every loop here is bounded by a count or a deadline, and every
//! address is on loopback.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

use moat::sync::identity::Identity;
use moat::sync::tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::{query_message, tcp_exchange};
use crate::moat::Scratch;
use crate::{MoatProcess, TestUpstream};

/// The address `nas.lan` has on the target.
pub const NAS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 168, 1, 20));
/// The legitimate client's address: apart from every attacker's.
pub const LEGIT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));
/// The attacker's address.
pub const ATTACKER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// A question the legitimate client asks, and the address a correct answer holds.
#[derive(Debug, Clone)]
pub struct Ask {
    /// The name; `{n}` in it is replaced by a counter, so each query is a new miss.
    pub name: String,
    /// The address the answer must hold.
    pub expect: IpAddr,
}

/// What the legitimate client saw.
#[derive(Debug, Clone, Default)]
pub struct Served {
    /// Queries asked.
    pub asked: usize,
    /// Answered NOERROR with the expected address, in time.
    pub correct: usize,
    /// Latency of each correct answer.
    pub latencies: Vec<Duration>,
}

impl Served {
    /// Share of queries answered correctly.
    pub fn success(&self) -> f64 {
        if self.asked == 0 {
            return 0.0;
        }
        self.correct as f64 / self.asked as f64
    }

    /// 99th percentile latency of the correct answers.
    pub fn p99(&self) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        sorted
            .get((sorted.len() * 99).div_ceil(100).saturating_sub(1))
            .copied()
            .unwrap_or_default()
    }

    /// One line for a report.
    pub fn summary(&self) -> String {
        format!(
            "{}/{} correct ({:.2}%), p99 {:.2} ms",
            self.correct,
            self.asked,
            self.success() * 100.0,
            self.p99().as_secs_f64() * 1000.0
        )
    }
}

/// Asks `asks` in turn over UDP from `LEGIT`, one query every `pace`,
/// until `until`; each query waits at most `timeout` and is not retried.
pub async fn legit_udp(
    server: SocketAddr,
    asks: &[Ask],
    pace: Duration,
    until: Instant,
    timeout: Duration,
) -> Served {
    let socket = UdpSocket::bind((LEGIT, 0))
        .await
        .expect("bind the legit client");
    socket.connect(server).await.unwrap();
    let mut served = Served::default();
    let mut buffer = vec![0u8; 4096];
    let mut ticks = tokio::time::interval(pace);
    while moat::clock::now() < until {
        ticks.tick().await;
        let ask = &asks[served.asked % asks.len()];
        let query = query_message(
            &ask.name.replace("{n}", &served.asked.to_string()),
            RecordType::A,
            Some((1232, false)),
        );
        served.asked += 1;
        let started = moat::clock::now();
        if socket.send(&query.to_vec().unwrap()).await.is_err() {
            continue;
        }
        let deadline = started + timeout;
        while let Ok(Ok(len)) =
            tokio::time::timeout_at(deadline.into(), socket.recv(&mut buffer)).await
        {
            let Ok(answer) = Message::from_vec(&buffer[..len]) else {
                continue;
            };
            if answer.metadata.id != query.metadata.id {
                continue;
            }
            if holds(&answer, ask.expect) {
                served.correct += 1;
                served.latencies.push(started.elapsed());
            }
            break;
        }
    }
    served
}

/// Asks `ask` over TCP from `LEGIT`, a new connection per query, one query
/// every `pace` until `until`.
pub async fn legit_tcp(
    server: SocketAddr,
    ask: &Ask,
    pace: Duration,
    until: Instant,
    timeout: Duration,
) -> Served {
    let mut served = Served::default();
    let mut ticks = tokio::time::interval(pace);
    while moat::clock::now() < until {
        ticks.tick().await;
        served.asked += 1;
        let started = moat::clock::now();
        let query = query_message(&ask.name, RecordType::A, None);
        let exchange = async {
            let mut stream = connect_from(LEGIT, server).await?;
            tcp_exchange(&mut stream, &query.to_vec().unwrap()).await
        };
        if let Ok(Ok(bytes)) = tokio::time::timeout(timeout, exchange).await
            && Message::from_vec(&bytes).is_ok_and(|answer| holds(&answer, ask.expect))
        {
            served.correct += 1;
            served.latencies.push(started.elapsed());
        }
    }
    served
}

fn holds(answer: &Message, expect: IpAddr) -> bool {
    answer.metadata.response_code == ResponseCode::NoError
        && answer.answers.iter().any(|record| match &record.data {
            RData::A(a) => IpAddr::V4(a.0) == expect,
            RData::AAAA(aaaa) => IpAddr::V6(aaaa.0) == expect,
            _ => false,
        })
}

/// Opens a TCP connection to `server` from `source`.
pub async fn connect_from(source: IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(server).await
}

/// One HTTP/1.1 exchange over a fresh connection from `source`: the status
/// and the answer (as much as arrived before the server closed), or `None`
/// when no answer came.
pub async fn http_exchange(
    to: SocketAddr,
    source: IpAddr,
    request: &[u8],
) -> Option<(u16, String)> {
    let mut stream = connect_from(source, to).await.ok()?;
    let _ = stream.write_all(request).await;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(read @ 1..) = stream.read(&mut chunk).await {
        answer.extend_from_slice(&chunk[..read]);
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    Some((status, text))
}

/// What a flood sent and got back.
#[derive(Debug, Clone, Copy)]
pub struct Flood {
    /// Queries sent.
    pub sent: usize,
    /// Answers received.
    pub answered: usize,
    /// Of those, answers with TC set.
    pub truncated: usize,
    /// How long sending took.
    pub elapsed: Duration,
}

impl Flood {
    /// Queries sent per second.
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends `count` queries over UDP from `ATTACKER`, the `n`th for
/// `name(n)`, at about `rate` per second, and counts the answers that come
/// back within `linger` after the last.
pub async fn udp_flood(
    server: SocketAddr,
    count: usize,
    rate: u32,
    linger: Duration,
    name: impl Fn(usize) -> String,
) -> Flood {
    let socket = Arc::new(
        UdpSocket::bind((ATTACKER, 0))
            .await
            .expect("bind the attacker"),
    );
    socket.connect(server).await.unwrap();
    let answered = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
    let stop = Arc::new(AtomicBool::new(false));
    let counting = {
        let (socket, answered, stop) = (socket.clone(), answered.clone(), stop.clone());
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(Ok(len)) =
                    tokio::time::timeout(Duration::from_millis(50), socket.recv(&mut buffer)).await
                {
                    answered[0].fetch_add(1, Ordering::Relaxed);
                    let truncated = len > 2 && buffer[2] & 0x02 != 0;
                    answered[1].fetch_add(usize::from(truncated), Ordering::Relaxed);
                }
            }
        })
    };
    let started = moat::clock::now();
    let per_tick = (rate / 1000).max(1) as usize;
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    let mut sent = 0;
    while sent < count {
        ticks.tick().await;
        for _ in 0..per_tick.min(count - sent) {
            let query = query_message(&name(sent), RecordType::A, None);
            let _ = socket.send(&query.to_vec().unwrap()).await;
            sent += 1;
        }
    }
    let elapsed = started.elapsed();
    tokio::time::sleep(linger).await;
    stop.store(true, Ordering::Relaxed);
    let _ = counting.await;
    Flood {
        sent,
        answered: answered[0].load(Ordering::Relaxed),
        truncated: answered[1].load(Ordering::Relaxed),
        elapsed,
    }
}

/// A random label of `len` lower-case letters.
pub fn random_label(len: usize) -> String {
    (0..len)
        .map(|_| char::from(b'a' + rand::random::<u8>() % 26))
        .collect()
}

/// The highest resident memory and open descriptors of a process, sampled
/// until stopped.
#[derive(Debug)]
pub struct Peaks {
    pid: u32,
    stop: Arc<AtomicBool>,
    task: JoinHandle<(u64, usize)>,
}

/// Resident memory of `pid` in KiB (`VmRSS`), 0 if it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Open descriptors of `pid`, 0 if it is gone.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |entries| entries.count())
}

impl Peaks {
    /// Starts sampling `pid` every 20 ms.
    pub fn watch(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let (mut rss, mut fds) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                rss = rss.max(rss_kib(pid));
                fds = fds.max(open_fds(pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (rss, fds)
        });
        Self { pid, stop, task }
    }

    /// Stops sampling: the peak RSS in KiB and the peak descriptor count.
    pub async fn stop(self) -> (u64, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let (rss, fds) = self.task.await.unwrap();
        (rss.max(rss_kib(self.pid)), fds.max(open_fds(self.pid)))
    }
}

/// The legitimate client and the target process during an attack.
#[derive(Debug, Clone)]
pub struct Observed {
    /// What the legitimate client saw.
    pub served: Served,
    /// Resident memory before the attack, KiB.
    pub idle_rss_kib: u64,
    /// Highest resident memory during it, KiB.
    pub peak_rss_kib: u64,
    /// Open descriptors before the attack.
    pub idle_fds: usize,
    /// Most open descriptors during it.
    pub peak_fds: usize,
}

impl Observed {
    /// One line for a report.
    pub fn summary(&self) -> String {
        format!(
            "legit {}; RSS {} → {} KiB; fds {} → {}",
            self.served.summary(),
            self.idle_rss_kib,
            self.peak_rss_kib,
            self.idle_fds,
            self.peak_fds
        )
    }
}

/// Runs `attack` while the legitimate client asks `asks` over UDP of
/// `server` for `length`, watching process `pid`.
pub async fn during<T>(
    pid: u32,
    server: SocketAddr,
    asks: Vec<Ask>,
    length: Duration,
    attack: impl std::future::Future<Output = T>,
) -> (T, Observed) {
    let (idle_rss_kib, idle_fds) = (rss_kib(pid), open_fds(pid));
    let peaks = Peaks::watch(pid);
    let until = moat::clock::now() + length;
    let legit = tokio::spawn(async move {
        legit_udp(
            server,
            &asks,
            Duration::from_millis(5),
            until,
            Duration::from_secs(1),
        )
        .await
    });
    let outcome = attack.await;
    let served = legit.await.unwrap();
    let (peak_rss_kib, peak_fds) = peaks.stop().await;
    let observed = Observed {
        served,
        idle_rss_kib,
        peak_rss_kib,
        idle_fds,
        peak_fds,
    };
    (outcome, observed)
}

/// A moat forwarding to `upstream` over UDP, with `nas.lan` a local
/// record, and `tuning` tables after its policy.
pub async fn target(upstream: &TestUpstream, tuning: &str) -> MoatProcess {
    target_in(Scratch::new("moat"), upstream, tuning).await
}

/// [`target`], in `dir`.
pub async fn target_in(dir: Scratch, upstream: &TestUpstream, tuning: &str) -> MoatProcess {
    MoatProcess::start_in(dir, "", &target_config(upstream, tuning)).await
}

/// The policy of [`target`], then `more` (tables, or more local records).
fn target_config(upstream: &TestUpstream, more: &str) -> String {
    format!(
        "[policy]\nupstreams = [\"udp://{}\"]\n[[policy.local_records]]\nname = \"nas.lan\"\ntype = \"A\"\nvalue = \"{NAS}\"\n{more}",
        upstream.addr
    )
}

/// The legitimate client's questions: one cached (asked once first), one
/// local, one new miss each time.
pub async fn legit_asks(moat: &MoatProcess) -> Vec<Ask> {
    moat.dns.a("cached.example.test").await;
    vec![
        Ask {
            name: "cached.example.test".into(),
            expect: crate::upstream::DEFAULT_V4.into(),
        },
        Ask {
            name: "nas.lan".into(),
            expect: NAS,
        },
        Ask {
            name: "q{n}.fresh.example.test".into(),
            expect: crate::upstream::DEFAULT_V4.into(),
        },
    ]
}

/// 1,000 connections from `ATTACKER`, each writing 2,000 pipelined queries
/// and reading nothing; the streams, to be dropped after.
pub async fn never_reading_clients(server: SocketAddr) -> Vec<TcpStream> {
    let query = query_message("cached.example.test", RecordType::A, None)
        .to_vec()
        .unwrap();
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&query);
    let pipeline = framed.repeat(200);
    let clients: Vec<_> = (0..1_000)
        .map(|_| {
            let pipeline = pipeline.clone();
            tokio::spawn(async move {
                let mut stream = connect_from(ATTACKER, server).await.ok()?;
                for _ in 0..10 {
                    let write = stream.write_all(&pipeline);
                    let written = tokio::time::timeout(Duration::from_secs(1), write).await;
                    if !matches!(written, Ok(Ok(()))) {
                        break;
                    }
                }
                Some(stream)
            })
        })
        .collect();
    let mut held = Vec::new();
    for client in clients {
        held.extend(client.await.unwrap());
    }
    held
}

/// Opens `attempts` pairing-channel connections to `sync` from `source`,
/// ten at a time (so a multiple of ten); on each that is let in, floods
/// streams with junk.
/// Returns how many handshakes completed.
pub async fn quic_flood(sync: SocketAddr, source: IpAddr, attempts: usize) -> usize {
    let identity = Identity::generate("attacker").unwrap();
    let config = tls::pairing_client_config(&identity).unwrap();
    let endpoint = quinn::Endpoint::client((source, 0).into()).unwrap();
    let mut completed = 0;
    for _ in 0..attempts / 10 {
        let batch = (0..10).map(|_| {
            let connecting = endpoint.connect_with(config.clone(), sync, tls::SERVER_NAME);
            tokio::spawn(async move {
                let connection = tokio::time::timeout(Duration::from_secs(2), connecting.ok()?)
                    .await
                    .ok()?
                    .ok()?;
                for _ in 0..20 {
                    let open =
                        tokio::time::timeout(Duration::from_millis(100), connection.open_bi());
                    let Ok(Ok((mut send, _recv))) = open.await else {
                        break;
                    };
                    let junk = vec![0xa5; 256 << 10];
                    let _ = tokio::time::timeout(Duration::from_millis(200), send.write_all(&junk))
                        .await;
                }
                Some(connection)
            })
        });
        let batch: Vec<_> = batch.collect();
        for connection in batch {
            completed += usize::from(connection.await.unwrap().is_some());
        }
    }
    endpoint.close(0u32.into(), b"done");
    completed
}

/// Set, to the [`Isolation`]'s name, in the copy of a test or bench
/// executable that [`rerun_isolated`] started.
const ISOLATED: &str = "MOAT_TEST_ISOLATED";

/// What a re-run of a test gets of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// A mount namespace: what it mounts vanishes with it.
    Mounts,
    /// A network namespace with only its loopback, up: it may bind the
    /// unspecified address and use all of 127.0.0.0/8, and multicast on
    /// it (the mDNS group is routed there).
    Network,
}

/// Brings a new network namespace's loopback up with multicast, then runs
/// the command after it.
const MULTICAST_LOOPBACK: &str = "ip link set lo up multicast on && \
    ip route add 224.0.0.0/4 dev lo && exec \"$0\" \"$@\"";

impl Isolation {
    fn name(self) -> &'static str {
        match self {
            Self::Mounts => "mounts",
            Self::Network => "network",
        }
    }
}

/// Whether this process is the copy [`rerun_isolated`] started with
/// `isolation`.
pub fn isolated(isolation: Isolation) -> bool {
    std::env::var_os(ISOLATED).is_some_and(|name| name == isolation.name())
}

/// Whether this process is the copy [`rerun_isolated`] started in a mount
/// namespace of its own.
pub fn in_mount_namespace() -> bool {
    isolated(Isolation::Mounts)
}

/// Runs this executable again with `args` inside a namespace of its own
/// (`unshare -m` or `unshare -n`: root or user namespaces); panics saying
/// why when that fails. Returns what it printed, stdout then stderr.
pub fn rerun_isolated(isolation: Isolation, args: &[&str]) -> String {
    let exe = std::env::current_exe().expect("this executable's path");
    let mut command = std::process::Command::new("unshare");
    match isolation {
        Isolation::Mounts => command.arg("-m").arg(&exe),
        Isolation::Network => command
            .args(["-n", "sh", "-c", MULTICAST_LOOPBACK])
            .arg(&exe),
    };
    let output = command
        .args(args)
        .env(ISOLATED, isolation.name())
        .output()
        .unwrap_or_else(|err| panic!("a namespace of its own needs `unshare` (util-linux): {err}"));
    let said = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the run in a {} namespace of its own failed (it needs root or user namespaces, and `ip`): {said}",
        isolation.name()
    );
    said
}

/// Runs the ignored test `test` (its full path) of this test executable
/// again with `isolation`, and asserts that it ran and passed; what it
/// printed.
pub fn run_test_isolated(isolation: Isolation, test: &str) -> String {
    let said = rerun_isolated(
        isolation,
        &[
            "--exact",
            test,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ],
    );
    assert!(said.contains("1 passed"), "{test} ran and passed: {said}");
    said
}

/// A scratch directory whose `data` is a tmpfs of `mib` MiB: a small
/// `/data`. Only inside a mount namespace of this process's own, so the
/// mount never outlives the run.
pub fn small_data_dir(mib: u64) -> Scratch {
    assert!(
        in_mount_namespace(),
        "a small /data is mounted only inside rerun_isolated(Isolation::Mounts, …)"
    );
    let dir = Scratch::new("small-data");
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={mib}m,mode=0700"),
            "tmpfs",
        ])
        .arg(&data)
        .status()
        .expect("run mount");
    assert!(
        mounted.success(),
        "mount a {mib} MiB tmpfs at {}",
        data.display()
    );
    dir
}

/// Bytes free to an unprivileged writer at `path` (`df`).
pub fn available_bytes(path: &std::path::Path) -> u64 {
    let output = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(path)
        .output()
        .expect("run df");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .unwrap_or_else(|| panic!("df of {}: {text}", path.display()))
}

/// The size of the small `/data` a query-log flood fills, MiB: past the
/// log's 64 MiB free-space reserve, about 8 MiB is the log's.
pub const SMALL_DATA_MIB: u64 = 72;

/// The tuning of a query-log flood's target: flushes often enough that the
/// default in-memory ring loses nothing at 20,000 queries a second.
pub const QUERY_LOG_FLOOD_TUNING: &str = "[tuning.query_log]\nflush_interval = \"200ms\"\n";

/// The local record [`add_record_and_reload`] adds: name and address.
pub const ADDED_RECORD: (&str, &str) = ("added.lan", "10.0.0.9");

/// Gives [`target`]'s policy one more local record ([`ADDED_RECORD`]),
/// then `more` tables, and has `moat` reload it; the bundle version in
/// force after.
pub async fn add_record_and_reload(
    moat: &MoatProcess,
    upstream: &TestUpstream,
    more: &str,
) -> Result<Option<u64>, String> {
    let (name, address) = ADDED_RECORD;
    let added = format!(
        "[[policy.local_records]]\nname = \"{name}\"\ntype = \"A\"\nvalue = \"{address}\"\n{more}"
    );
    moat.rewrite_config("", &target_config(upstream, &added));
    let client = moat.control()?;
    client.reload().await.map_err(|err| err.to_string())?;
    Ok(client
        .status()
        .await
        .map_err(|err| err.to_string())?
        .bundle_version)
}

/// The name a query-log flood asks: one name, so every query is a cache
/// hit, as long as names go (253 bytes), so every log line is large.
pub fn long_name() -> String {
    let label = "a".repeat(62);
    format!("{label}.{label}.{label}.{}.test", "b".repeat(57))
}

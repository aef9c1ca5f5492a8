//! Nanoseconds per policy decision inside the real WASM plugins: the
//! blocklist module compiled from a generated hosts list read as subtrees
//! (`match = "subtree"`; 1,000,000 domains, or
//! 10,000 with `MOAT_BENCH_SMOKE=1`), asked about a listed name, a name
//! below a listed one, and a name it does not list; and the local-records
//! module asked about a record and a name it does not have; and the example
//! schedule plugin (`plugins/examples/schedule`, five names, a client
//! range, all day) asked about a name it blocks and one it does not list,
//! reading its configuration lines on each call; and the example kiosk
//! (`plugins/examples/kiosk`) asked for its client and another. Each
//! figure is one typed call into a pre-instantiated instance, as on the
//! query path.
//!
//! Then the CPU a real `moat` process spends per cache hit (utime + stime
//! over a bounded UDP load of cached names from one loopback client), with
//! no configured plugins and with both examples in the chain: the verdict
//! memo keeps their verdicts, so the two should be within 5%.
//!
//! Run: `cargo bench --bench decision`

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use moat::compile::{KIOSK_EXAMPLE, SCHEDULE_EXAMPLE, compile_policy};
use moat::config::Config;
use moat::policy::{Decision, Policy, PolicyEngine, Question, WasmPolicy};
use moat::store::DataDir;
use moat_system_tests::attack::{ATTACKER, udp_flood};
use moat_system_tests::moat::Scratch;
use moat_system_tests::{MoatProcess, TestUpstream};

fn domains() -> usize {
    if std::env::var("MOAT_BENCH_SMOKE").is_ok_and(|smoke| smoke == "1") {
        10_000
    } else {
        1_000_000
    }
}

/// The `[[policy.plugins]]` of both examples, their modules in `dir`: a
/// schedule for 192.168.1.0/24 all day, a kiosk for 192.168.9.0/24.
fn example_plugins(dir: &std::path::Path) -> String {
    let schedule = dir.join("schedule.wasm");
    let kiosk = dir.join("kiosk.wasm");
    std::fs::write(&schedule, SCHEDULE_EXAMPLE).expect("write the schedule module");
    std::fs::write(&kiosk, KIOSK_EXAMPLE).expect("write the kiosk module");
    format!(
        "[[policy.plugins]]\nname = \"schedule\"\nmodule = \"{}\"\n[policy.plugins.config]\n\
         names = [\"a.example\", \"b.example\", \"c.example\", \"social.example\", \"video.example\"]\n\
         clients = [\"192.168.1.0/24\"]\nfrom = \"00:00\"\nuntil = \"24:00\"\n\
         [[policy.plugins]]\nname = \"kiosk\"\nmodule = \"{}\"\n[policy.plugins.config]\n\
         clients = [\"192.168.9.0/24\"]\nnames = [\"kiosk.example\"]\n",
        schedule.display(),
        kiosk.display()
    )
}

/// The compiled (local records, blocklist, schedule, kiosk) modules.
fn modules() -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let root = std::env::temp_dir().join(format!("moat-bench-decision-{}", std::process::id()));
    let data = DataDir::open(&root).expect("scratch directory");
    let mut list = String::new();
    for index in 0..domains() {
        let _ = writeln!(list, "0.0.0.0 d{index}.tracker{}.example", index % 1000);
    }
    let list_path = root.join("list.txt");
    std::fs::write(&list_path, list).expect("write the list");
    let config = Config::parse(
        &format!(
            "[policy]\n[[policy.blocklists]]\nsource = \"{}\"\nmatch = \"subtree\"\n[[policy.local_records]]\nname = \"nas.lan\"\ntype = \"A\"\nvalue = \"192.168.1.20\"\n{}",
            list_path.display(),
            example_plugins(&root)
        ),
        "bench",
    )
    .expect("bench config");
    let mut compiled = compile_policy(&config.policy, &data).expect("compile");
    let _ = std::fs::remove_dir_all(&root);
    let (_, kiosk) = compiled.plugins.remove(1);
    let (_, schedule) = compiled.plugins.remove(0);
    (compiled.local_records, compiled.blocklist, schedule, kiosk)
}

fn ask(policy: &dyn Policy, name: &str) -> Decision {
    ask_from(policy, name, [192, 168, 1, 7])
}

fn ask_from(policy: &dyn Policy, name: &str, client: [u8; 4]) -> Decision {
    policy.decide(&Question {
        name: black_box(name.as_bytes()),
        qtype: 1,
        client: client.into(),
        unix_time: 0,
    })
}

fn decisions(c: &mut Criterion) {
    let (local_records, blocklist, schedule, kiosk) = modules();
    let engine = PolicyEngine::start().expect("policy engine");
    let blocklist = WasmPolicy::new(&engine, &blocklist).expect("blocklist module");
    let local_records = WasmPolicy::new(&engine, &local_records).expect("local-records module");
    let schedule = WasmPolicy::new(&engine, &schedule).expect("schedule module");
    let cases: [(&str, &dyn Policy, &str); 7] = [
        ("schedule/blocked", &*schedule, "m.social.example"),
        ("schedule/unlisted", &*schedule, "www.news.example.org"),
        ("blocklist/listed", &*blocklist, "d4242.tracker242.example"),
        (
            "blocklist/below-listed",
            &*blocklist,
            "cdn.d4242.tracker242.example",
        ),
        ("blocklist/unlisted", &*blocklist, "www.news.example.org"),
        (
            "local-records/missing",
            &*local_records,
            "www.news.example.org",
        ),
        ("local-records/answer", &*local_records, "nas.lan"),
    ];
    for (label, policy, name) in cases {
        let decided = ask(policy, name);
        let expected = match label {
            "blocklist/listed" | "blocklist/below-listed" | "schedule/blocked" => {
                decided == Decision::Block
            }
            "local-records/answer" => matches!(decided, Decision::Answer(_)),
            _ => decided == Decision::NoOpinion,
        };
        assert!(expected, "{label}: {name} decided {decided:?}");
        c.bench_function(label, |b| b.iter(|| ask(policy, name)));
    }
    let kiosk = WasmPolicy::new(&engine, &kiosk).expect("kiosk module");
    for (label, client, expected) in [
        ("kiosk/refused", [192, 168, 9, 7], Decision::Refuse),
        ("kiosk/other-client", [192, 168, 1, 7], Decision::NoOpinion),
    ] {
        let name = "www.news.example.org";
        assert_eq!(ask_from(&*kiosk, name, client), expected, "{label}");
        c.bench_function(label, |b| b.iter(|| ask_from(&*kiosk, name, client)));
    }
}

/// Cached names the load asks for.
const CACHED_NAMES: usize = 64;

/// Linux's `USER_HZ`, the unit of `/proc/PID/stat` times.
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let after = text.rsplit_once(") ").map_or("", |(_, rest)| rest);
    let fields: Vec<u64> = after
        .split_whitespace()
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    fields[11] + fields[12]
}

/// Microseconds of `moat`'s CPU per answered cache hit over `queries`.
async fn cpu_per_hit(moat: &MoatProcess, queries: usize) -> f64 {
    let name = |index: usize| format!("n{}.cached.example", index % CACHED_NAMES);
    // A miss, then a hit that asks the plugins and keeps their verdict.
    let primed = udp_flood(
        moat.dns.udp,
        CACHED_NAMES * 2,
        1000,
        Duration::from_millis(300),
        |index| name(index / 2),
    )
    .await;
    assert_eq!(primed.answered, CACHED_NAMES * 2, "priming answered");
    let before = cpu_ticks(moat.pid());
    let load = udp_flood(
        moat.dns.udp,
        queries,
        40_000,
        Duration::from_millis(300),
        name,
    )
    .await;
    let ticks = cpu_ticks(moat.pid()) - before;
    assert!(
        load.answered * 100 >= queries * 99,
        "{} of {queries} answered",
        load.answered
    );
    ticks as f64 / CLOCK_TICKS_PER_SECOND * 1e6 / load.answered as f64
}

/// Cache-hit CPU per query without configured plugins and with both
/// examples, alternating runs; prints the medians and their ratio.
fn cache_hits(_: &mut Criterion) {
    let queries = if domains() < 1_000_000 {
        20_000
    } else {
        200_000
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let upstream = TestUpstream::start().await;
        let dir = Scratch::new("bench-cache-hits");
        let policy = |plugins: &str| {
            format!(
                "[policy]\nupstreams = [\"udp://{}\"]\n{plugins}\n",
                upstream.addr
            )
        };
        let without = MoatProcess::start("", &policy("")).await;
        let with = MoatProcess::start("", &policy(&example_plugins(&dir.0))).await;
        let (mut plain, mut chained) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            plain.push(cpu_per_hit(&without, queries).await);
            chained.push(cpu_per_hit(&with, queries).await);
        }
        let median = |runs: &mut Vec<f64>| {
            runs.sort_by(f64::total_cmp);
            runs[runs.len() / 2]
        };
        let (plain, chained) = (median(&mut plain), median(&mut chained));
        println!(
            "cache-hit CPU per query ({queries} queries from {ATTACKER}, median of 3): \
             no plugins {plain:.2} us, schedule + kiosk {chained:.2} us, ratio {:.3}",
            chained / plain
        );
    });
}

criterion_group!(benches, decisions, cache_hits);
criterion_main!(benches);

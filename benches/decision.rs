//! Nanoseconds per policy decision inside the real WASM plugins: the
//! blocklist module compiled from a generated hosts list read as subtrees
//! (`match = "subtree"`; 1,000,000 domains, or
//! 10,000 with `MOAT_BENCH_SMOKE=1`), asked about a listed name, a name
//! below a listed one, and a name it does not list; and the local-records
//! module asked about a record and a name it does not have; and the example
//! schedule plugin (`plugins/examples/schedule`, five names, a client
//! range, all day) asked about a name it blocks and one it does not list,
//! reading its configuration lines on each call. Each figure is
//! one typed call into a pre-instantiated instance, as on the query path.
//!
//! Run: `cargo bench --bench decision`

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use moat::compile::{SCHEDULE_EXAMPLE, compile_policy};
use moat::config::Config;
use moat::policy::{Decision, Policy, PolicyEngine, Question, WasmPolicy};
use moat::store::DataDir;

fn domains() -> usize {
    if std::env::var("MOAT_BENCH_SMOKE").is_ok_and(|smoke| smoke == "1") {
        10_000
    } else {
        1_000_000
    }
}

/// The compiled (local records, blocklist, schedule) modules.
fn modules() -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let root = std::env::temp_dir().join(format!("moat-bench-decision-{}", std::process::id()));
    let data = DataDir::open(&root).expect("scratch directory");
    let mut list = String::new();
    for index in 0..domains() {
        let _ = writeln!(list, "0.0.0.0 d{index}.tracker{}.example", index % 1000);
    }
    let list_path = root.join("list.txt");
    std::fs::write(&list_path, list).expect("write the list");
    let schedule_path = root.join("schedule.wasm");
    std::fs::write(&schedule_path, SCHEDULE_EXAMPLE).expect("write the schedule module");
    let config = Config::parse(
        &format!(
            "[policy]\n[[policy.blocklists]]\nsource = \"{}\"\nmatch = \"subtree\"\n[[policy.local_records]]\nname = \"nas.lan\"\ntype = \"A\"\nvalue = \"192.168.1.20\"\n\
             [[policy.plugins]]\nname = \"schedule\"\nmodule = \"{}\"\n[policy.plugins.config]\n\
             names = [\"a.example\", \"b.example\", \"c.example\", \"social.example\", \"video.example\"]\n\
             clients = [\"192.168.1.0/24\"]\nfrom = \"00:00\"\nuntil = \"24:00\"\n",
            list_path.display(),
            schedule_path.display()
        ),
        "bench",
    )
    .expect("bench config");
    let mut compiled = compile_policy(&config.policy, &data).expect("compile");
    let _ = std::fs::remove_dir_all(&root);
    let (_, schedule) = compiled.plugins.remove(0);
    (compiled.local_records, compiled.blocklist, schedule)
}

fn ask(policy: &dyn Policy, name: &str) -> Decision {
    policy.decide(&Question {
        name: black_box(name.as_bytes()),
        qtype: 1,
        client: [192, 168, 1, 7].into(),
        unix_time: 0,
    })
}

fn decisions(c: &mut Criterion) {
    let (local_records, blocklist, schedule) = modules();
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
}

criterion_group!(benches, decisions);
criterion_main!(benches);

//! One owner of the running state: a policy change compiles off every lock
//! a reader needs, so status answers while a big list compiles.

use std::fmt::Write as _;
use std::time::Duration;

use hickory_proto::op::ResponseCode;
use moat_system_tests::moat::Scratch;
use moat_system_tests::{MoatProcess, TestUpstream};

use super::policy_for;

/// Polls answered while the reload runs; far fewer means status waited.
const POLLS_DURING_COMPILE: usize = 10;

fn million_domains() -> String {
    let mut text = String::with_capacity(24 << 20);
    for index in 0..1_000_000 {
        let _ = writeln!(text, "d{index}.big.test");
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_answers_while_a_million_domain_list_compiles() {
    let upstream = TestUpstream::start().await;
    let dir = Scratch::new("big-compile");
    let list = dir.0.join("list.txt");
    std::fs::write(&list, "ads.test\n").unwrap();
    let policy = format!(
        "blocked_response = \"nxdomain\"\n[[policy.blocklists]]\nsource = \"{}\"\n",
        list.display()
    );
    let moat = MoatProcess::start("", &policy_for(&upstream, &policy)).await;
    let before = moat.status().await.unwrap().config_generation;
    std::fs::write(&list, million_domains()).unwrap();

    let client = moat.control().unwrap();
    let started = moat::clock::now();
    let reload = tokio::spawn(async move { client.reload().await });
    let (mut during, mut slowest) = (0, Duration::ZERO);
    while !reload.is_finished() {
        let asked = moat::clock::now();
        let status = moat.status().await.unwrap();
        slowest = slowest.max(asked.elapsed());
        if !reload.is_finished() {
            assert_eq!(
                status.config_generation, before,
                "status during the compile shows the policy in force"
            );
            during += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let compile = started.elapsed();
    let applied = reload.await.unwrap().expect("the reload is applied");
    println!(
        "reload of 1,000,000 domains: {compile:?}; {during} status polls answered meanwhile, slowest {slowest:?}"
    );
    assert_eq!(applied.config_generation, before + 1);
    assert!(
        during >= POLLS_DURING_COMPILE,
        "only {during} status polls answered during a {compile:?} reload"
    );
    let blocked = moat.dns.a("d999999.big.test").await;
    assert_eq!(blocked.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(moat.status().await.unwrap().config_generation, before + 1);
}

//! Each list syntax compiled into the real blocklist plugin: the verdict
//! for a listed name and for a name below it, per entry kind, and what the
//! compile reports per source.

use std::sync::Arc;

use super::*;
use crate::config::Config;
use crate::policy::{Decision, Policy, PolicyEngine, Question, RuleKind, WasmPolicy};

use Decision::{Allow, Block, NoOpinion};

/// The fixture lists, as `tests/system` serves them too.
const HOSTS: &str = include_str!("fixtures/hosts.txt");
const DOMAINS: &str = include_str!("fixtures/domains.txt");
const ADBLOCK: &str = include_str!("fixtures/adblock.txt");
const DNSMASQ: &str = include_str!("fixtures/dnsmasq.txt");

/// The blocklist compiled from one source per `(text, keys)`, `keys` being
/// extra lines of its `[[policy.blocklists]]` table.
fn compile(lists: &[(&str, &str)]) -> (Arc<WasmPolicy>, CompiledPolicy) {
    let root = std::env::temp_dir().join(format!(
        "moat-syntax-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let data = DataDir::open(&root).unwrap();
    let mut toml = String::from("[policy]\n");
    for (index, (text, keys)) in lists.iter().enumerate() {
        let path = root.join(format!("list-{index}.txt"));
        std::fs::write(&path, text).unwrap();
        toml.push_str(&format!(
            "[[policy.blocklists]]\nsource = \"{}\"\n{keys}\n",
            path.display()
        ));
    }
    let config = Config::parse(&toml, "test").unwrap();
    let compiled = compile_policy(&config.policy, &data).unwrap();
    std::fs::remove_dir_all(root).unwrap();
    let engine = PolicyEngine::unticked().unwrap();
    (
        WasmPolicy::new(&engine, &compiled.blocklist).unwrap(),
        compiled,
    )
}

/// The verdicts for each name.
fn verdicts(policy: &dyn Policy, names: &[&str]) -> Vec<Decision> {
    names
        .iter()
        .map(|name| {
            policy.decide(&Question {
                name: name.as_bytes(),
                qtype: 1,
                client: [127, 0, 0, 1].into(),
                unix_time: 0,
            })
        })
        .collect()
}

/// Asserts each `(name, verdict)`.
fn assert_verdicts(policy: &dyn Policy, expected: &[(&str, Decision)]) {
    let names: Vec<&str> = expected.iter().map(|(name, _)| *name).collect();
    let got = verdicts(policy, &names);
    for ((name, want), got) in expected.iter().zip(got) {
        assert_eq!(&got, want, "{name}");
    }
}

#[test]
fn hosts_entries_are_exact() {
    let (policy, compiled) = compile(&[(HOSTS, "")]);
    assert_verdicts(
        &*policy,
        &[
            ("ads.example", Block),
            ("x.ads.example", NoOpinion),
            ("metrics.example", Block),
            ("x.metrics.example", NoOpinion),
            ("null6.example", Block),
            ("rewrite.example", NoOpinion),
            ("localhost", NoOpinion),
        ],
    );
    let report = &compiled.sources[0].lines;
    assert_eq!(report.format, crate::config::ListFormat::Hosts);
    assert_eq!(
        (report.blocked, report.rejected, report.unsupported),
        (5, 1, 4)
    );
    assert_eq!(compiled.summary.entries[Table::BlockExact as usize], 5);
    assert_eq!(compiled.summary.entries[Table::BlockSuffix as usize], 0);
}

#[test]
fn domain_entries_are_exact_and_wildcards_cover_names_below() {
    let (policy, _) = compile(&[(DOMAINS, "")]);
    assert_verdicts(
        &*policy,
        &[
            ("plain.example", Block),
            ("x.plain.example", NoOpinion),
            ("another.example", Block),
            ("wild.example", NoOpinion),
            ("x.wild.example", Block),
            ("y.x.wild.example", Block),
            ("xn--bcher-kva.example", Block),
            ("adblock-in-domains.example", Block),
            ("x.adblock-in-domains.example", Block),
        ],
    );
}

#[test]
fn adblock_anchors_exceptions_and_modifiers() {
    let (policy, compiled) = compile(&[(ADBLOCK, "")]);
    assert_verdicts(
        &*policy,
        &[
            ("ads.example", Block),
            ("x.ads.example", Block),
            ("ok.ads.example", Allow),
            ("x.ok.ads.example", Allow),
            ("exact-ok.ads.example", Allow),
            ("x.exact-ok.ads.example", Block),
            ("exact.example", Block),
            ("x.exact.example", NoOpinion),
            ("below.example", NoOpinion),
            ("x.below.example", Block),
            ("below-too.example", NoOpinion),
            ("x.below-too.example", Block),
            ("bare.example", Block),
            ("x.bare.example", NoOpinion),
            ("important.example", Block),
            ("hosts-in-adblock.example", Block),
            ("client.example", NoOpinion),
            ("dnstype.example", NoOpinion),
            ("script.example", NoOpinion),
        ],
    );
    let explain = |name: &str| {
        let question = Question {
            name: name.as_bytes(),
            qtype: 1,
            client: [127, 0, 0, 1].into(),
            unix_time: 0,
        };
        let rule = policy.explain(&question).unwrap().unwrap();
        (rule.kind, rule.pattern)
    };
    assert_eq!(
        explain("x.below.example"),
        (RuleKind::BlockBelow, "*.below.example".to_owned())
    );
    assert_eq!(
        explain("exact.example"),
        (RuleKind::BlockExact, "exact.example".to_owned())
    );
    assert_eq!(
        explain("exact-ok.ads.example"),
        (RuleKind::AllowExact, "exact-ok.ads.example".to_owned())
    );
    assert_eq!(
        explain("x.ads.example"),
        (RuleKind::BlockSuffix, "*.ads.example".to_owned())
    );
    let report = &compiled.sources[0].lines;
    assert_eq!(
        (
            report.blocked,
            report.allowed,
            report.rejected,
            report.unsupported
        ),
        (8, 2, 1, 9)
    );
}

#[test]
fn dnsmasq_entries_cover_subtrees() {
    let (policy, _) = compile(&[(DNSMASQ, "")]);
    assert_verdicts(
        &*policy,
        &[
            ("dm-null.example", Block),
            ("x.dm-null.example", Block),
            ("x.dm-empty.example", Block),
            ("x.dm-zero.example", Block),
            ("x.dm-v6.example", Block),
            ("x.dm-two.example", Block),
            ("dm-local.example", Block),
            ("x.dm-server-empty.example", Block),
            ("dm-rewrite.example", NoOpinion),
            ("dm-forward.example", NoOpinion),
        ],
    );
}

#[test]
fn exceptions_from_one_source_beat_blocks_from_another() {
    let (policy, _) = compile(&[(HOSTS, "match = \"subtree\""), ("@@||ads.example^\n", "")]);
    assert_verdicts(
        &*policy,
        &[
            ("ads.example", Allow),
            ("x.ads.example", Allow),
            ("x.metrics.example", Block),
        ],
    );
}

#[test]
fn match_and_format_override_a_source() {
    let (policy, compiled) = compile(&[
        (ADBLOCK, "match = \"exact\""),
        (HOSTS, "format = \"dnsmasq\""),
    ]);
    assert_verdicts(
        &*policy,
        &[
            ("ads.example", Block),
            ("x.ads.example", NoOpinion),
            ("x.below.example", Block),
            ("metrics.example", NoOpinion),
        ],
    );
    let hosts = &compiled.sources[1].lines;
    assert_eq!(hosts.format, crate::config::ListFormat::Dnsmasq);
    assert_eq!((hosts.blocked, hosts.rejected), (0, 9));
}

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
    let (policy, compiled, _, _, root) = compile_kept(lists);
    std::fs::remove_dir_all(root).unwrap();
    (policy, compiled)
}

/// Like `compile`, keeping the sources, the configuration, the data
/// directory and the directory that holds them (for the caller to remove).
fn compile_kept(
    lists: &[(&str, &str)],
) -> (
    Arc<WasmPolicy>,
    CompiledPolicy,
    Config,
    DataDir,
    std::path::PathBuf,
) {
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
    let engine = PolicyEngine::unticked().unwrap();
    let policy = WasmPolicy::new(&engine, &compiled.blocklist).unwrap();
    (policy, compiled, config, data, root)
}

/// A question from 127.0.0.1 at time 0.
fn question(name: &str, qtype: u16) -> Question<'_> {
    Question {
        name: name.as_bytes(),
        qtype,
        client: [127, 0, 0, 1].into(),
        unix_time: 0,
    }
}

/// The rule that decides `name` (asked as A), as the plugin explains it.
fn explained(policy: &WasmPolicy, name: &str) -> crate::policy::Explanation {
    policy.explain(&question(name, 1)).unwrap().unwrap()
}

/// The verdicts for each name.
fn verdicts(policy: &dyn Policy, names: &[&str]) -> Vec<Decision> {
    names
        .iter()
        .map(|name| policy.decide(&question(name, 1)))
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
            ("x.rewrite.example", NoOpinion),
            ("localhost", NoOpinion),
        ],
    );
    let report = &compiled.sources[0].lines;
    assert_eq!(report.format, crate::config::ListFormat::Hosts);
    assert_eq!(
        (
            report.blocked,
            report.rewritten,
            report.rejected,
            report.unsupported
        ),
        (5, 4, 1, 3)
    );
    assert_eq!(
        compiled.summary.rewrites, 3,
        "two lines name rewrite.example"
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
            ("ad12.example", Block),
            ("x.ad12.example", NoOpinion),
            ("adx.example", NoOpinion),
        ],
    );
    let explain = |name: &str| {
        let rule = explained(&policy, name);
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
    assert_eq!(
        explain("ad7.example"),
        (RuleKind::BlockRegex, "/^ad[0-9]+\\.example$/".to_owned())
    );
    let report = &compiled.sources[0].lines;
    assert_eq!(
        (
            report.blocked,
            report.allowed,
            report.rejected,
            report.unsupported
        ),
        (9, 2, 1, 8)
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
    assert_eq!((hosts.blocked, hosts.rejected), (0, 12));
}

/// The records `name` is answered with for `qtype`, as (type, RDATA), or
/// `None` when the policy does not answer it.
fn answer(policy: &dyn Policy, name: &str, qtype: u16) -> Option<Vec<(u16, Vec<u8>)>> {
    let decision = policy.decide(&question(name, qtype));
    match decision {
        Decision::Answer(records) => Some(
            records
                .records()
                .map(|(kind, _, rdata)| (kind, rdata.to_vec()))
                .collect(),
        ),
        _ => None,
    }
}

#[test]
fn hosts_and_dnsmasq_addresses_answer_as_rewrites() {
    let (policy, compiled) = compile(&[(HOSTS, ""), (DNSMASQ, "")]);
    let a = |octets: [u8; 4]| (1, octets.to_vec());
    assert_eq!(
        answer(&*policy, "rewritten.test", 1),
        Some(vec![a([1, 2, 3, 4])])
    );
    assert_eq!(
        answer(&*policy, "rewritten.test", 28),
        Some(vec![]),
        "an IPv4 rewrite has no AAAA: NODATA"
    );
    let v6: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
    assert_eq!(
        answer(&*policy, "rewrite6.example", 28),
        Some(vec![(28, v6.octets().to_vec())])
    );
    assert_eq!(
        answer(&*policy, "rewrite.example", 1),
        Some(vec![a([192, 0, 2, 7]), a([192, 0, 2, 8])]),
        "each line's address, in list order"
    );
    assert_eq!(answer(&*policy, "x.rewritten.test", 1), None, "exact");
    for name in ["dm-rewrite.example", "x.dm-rewrite.example"] {
        assert_eq!(
            answer(&*policy, name, 1),
            Some(vec![a([192, 0, 2, 5])]),
            "{name}: address=/name/IP covers the subtree"
        );
    }
    let rule = |name: &str| {
        let rule = explained(&policy, name);
        (rule.kind, rule.pattern, rule.origin)
    };
    let (kind, pattern, origin) = rule("rewritten.test");
    assert_eq!(
        (kind, pattern.as_str()),
        (RuleKind::LocalName, "rewritten.test")
    );
    assert!(origin.ends_with("list-0.txt"), "{origin}");
    let (kind, pattern, origin) = rule("x.dm-rewrite.example");
    assert_eq!(
        (kind, pattern.as_str()),
        (RuleKind::LocalWildcard, "*.dm-rewrite.example")
    );
    assert!(origin.ends_with("list-1.txt"), "{origin}");
    assert_eq!(compiled.sources[1].lines.rewritten, 1);
}

#[test]
fn exceptions_and_blocks_beat_rewrites() {
    let (policy, _) = compile(&[
        (HOSTS, ""),
        ("@@||rewritten.test^\n||rewrite6.example^\n", ""),
    ]);
    assert_verdicts(
        &*policy,
        &[("rewritten.test", Allow), ("rewrite6.example", Block)],
    );
    assert!(answer(&*policy, "rewrite.example", 1).is_some());
}

/// The verdict for `name` asked as `qtype`.
fn verdict_for(policy: &dyn Policy, name: &str, qtype: u16) -> Decision {
    policy.decide(&question(name, qtype))
}

const REGEX: &str = include_str!("fixtures/regex.txt");

#[test]
fn pihole_regex_rules_with_bracket_classes_and_query_types() {
    let (policy, compiled) = compile(&[(REGEX, "")]);
    assert_verdicts(
        &*policy,
        &[
            ("doubleclick.net", Block),
            ("x.doubleclick.net", Block),
            ("notdoubleclick.net", NoOpinion),
            ("ad1.example", Block),
            ("ad42.x.example", Block),
            ("x.ad1.example", NoOpinion),
            ("ad.example", NoOpinion),
            ("telemetry.example", Block),
            ("x-telemetry.example", Block),
            ("telemetryx.example", NoOpinion),
            ("ok.example", NoOpinion),
        ],
    );
    for (name, qtype, want) in [
        ("trackme.example", 1, NoOpinion),
        ("trackme.example", 28, Block),
        ("v6less.example", 1, Block),
        ("v6less.example", 28, NoOpinion),
    ] {
        assert_eq!(
            verdict_for(&*policy, name, qtype),
            want,
            "{name} type {qtype}"
        );
    }
    let rule = explained(&policy, "ad1.example");
    assert_eq!(
        (rule.kind, rule.pattern.as_str()),
        (RuleKind::BlockRegex, "^ad[[:digit:]]+\\.")
    );
    assert!(rule.origin.ends_with("list-0.txt"), "{}", rule.origin);
    let report = &compiled.sources[0].lines;
    assert_eq!(report.format, crate::config::ListFormat::Regex);
    assert_eq!(
        (
            report.blocked,
            report.regexes,
            report.rejected,
            report.unsupported
        ),
        (5, 5, 2, 2)
    );
    assert_eq!(compiled.summary.regexes, 5);
    let too_big = report
        .notes
        .iter()
        .find(|note| note.reason.starts_with("regex too big"))
        .expect("the over-cap rule is refused");
    assert_eq!(
        (too_big.line, too_big.example.as_str()),
        (10, "a(a|b){24}x$")
    );
    let bad = report
        .notes
        .iter()
        .find(|note| note.reason == "not a regex Moat reads")
        .unwrap();
    assert_eq!(bad.line, 8);
}

#[test]
fn inverted_regexes_exceptions_and_a_configured_regex_format() {
    let (policy, _) = compile(&[
        ("^keep[[:digit:]]\\.example$;invert;querytype=A\n", ""),
        (
            "||ads.example^\n@@/^ok[0-9]\\.ads\\.example$/\n/^re[a-z]+\\.example$/$important\n",
            "",
        ),
        ("tracker.example\n", "format = \"regex\""),
    ]);
    assert_eq!(verdict_for(&*policy, "keep1.example", 1), NoOpinion);
    assert_eq!(verdict_for(&*policy, "other.example", 1), Block, ";invert");
    assert_eq!(verdict_for(&*policy, "other.example", 28), NoOpinion);
    assert_eq!(verdict_for(&*policy, "ok1.ads.example", 28), Allow);
    assert_eq!(
        verdict_for(&*policy, "ok1.ads.example", 1),
        Allow,
        "an exception beats every block"
    );
    assert_eq!(verdict_for(&*policy, "x.ads.example", 28), Block);
    assert_eq!(verdict_for(&*policy, "rex.example", 28), Block);
    assert_eq!(
        verdict_for(&*policy, "a.tracker.example.org", 28),
        Block,
        "a regex list's name is a regex, matched anywhere"
    );
}

#[test]
fn explanations_name_the_line_of_their_rule() {
    let (policy, _, config, data, root) =
        compile_kept(&[(HOSTS, ""), (ADBLOCK, ""), (REGEX, ""), (DNSMASQ, "")]);
    let line = |name: &str| {
        let rule = explained(&policy, name);
        let line = rule_line(&config.policy, &data, &rule);
        (
            rule.origin.rsplit('/').next().unwrap_or("").to_owned(),
            line,
        )
    };
    let at = |list: usize, line: usize| (format!("list-{list}.txt"), Some(line));
    for (name, want) in [
        ("tracker.example", at(0, 5)),
        ("loop6.example", at(0, 7)),
        ("rewrite.example", at(0, 9)),
        ("rewritten.test", at(0, 11)),
        ("x.ads.example", at(1, 2)),
        ("exact-ok.ads.example", at(1, 5)),
        ("x.below.example", at(1, 7)),
        ("ad7.example", at(1, 17)),
        ("x.doubleclick.net", at(2, 2)),
        ("ad1.x.example", at(2, 3)),
        ("x.dm-two.example", at(3, 6)),
        ("x.dm-rewrite.example", at(3, 9)),
    ] {
        assert_eq!(line(name), want, "{name}");
    }
    let denied = Config::parse("[policy]\ndeny = [\"d.example\"]\n", "test").unwrap();
    let compiled = compile_policy(&denied.policy, &data).unwrap();
    let engine = PolicyEngine::unticked().unwrap();
    let policy = WasmPolicy::new(&engine, &compiled.blocklist).unwrap();
    let rule = explained(&policy, "d.example");
    assert_eq!(
        rule_line(&denied.policy, &data, &rule),
        None,
        "not from a list"
    );
    std::fs::remove_dir_all(root).unwrap();
}

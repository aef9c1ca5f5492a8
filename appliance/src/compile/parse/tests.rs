use super::*;

/// Every rule a text gives, as (action, scope, name), and the counts.
fn read(
    text: &str,
    format: Option<ListFormat>,
    matching: Option<ListMatch>,
) -> (ListCounts, Vec<(Action, Scope, String)>) {
    let mut rules = Vec::new();
    let counts = parse_list(text, format, matching, &mut |listed, _| {
        if let Listed::Name(rule, name) = listed {
            rules.push((rule.action, rule.scope, name.to_owned()));
        }
        Ok(())
    });
    (counts, rules)
}

/// Every regex rule a text gives, with its line, and the counts.
fn read_regexes(text: &str, format: Option<ListFormat>) -> (ListCounts, Vec<(usize, RegexRule)>) {
    let mut rules = Vec::new();
    let counts = parse_list(text, format, None, &mut |listed, line| {
        if let Listed::Regex(rule) = listed {
            rules.push((line, rule.clone()));
        }
        Ok(())
    });
    (counts, rules)
}

fn blocks(scope: Scope, names: &[&str]) -> Vec<(Action, Scope, String)> {
    names
        .iter()
        .map(|name| (Action::Block, scope, (*name).to_owned()))
        .collect()
}

/// The notes as (kind, reason, count, line, example).
fn notes(counts: &ListCounts) -> Vec<(NoteKind, &str, usize, usize, &str)> {
    counts
        .notes
        .iter()
        .map(|note| {
            (
                note.kind,
                note.reason.as_str(),
                note.count,
                note.line,
                note.example.as_str(),
            )
        })
        .collect()
}

use NoteKind::{Rejected, Unsupported as Unapplied};

#[test]
fn hosts_lines_block_names_exactly() {
    let (counts, rules) = read(include_str!("../fixtures/hosts.txt"), None, None);
    assert_eq!(counts.format, ListFormat::Hosts, "detected");
    let answer = |address: &str, name: &str| {
        let action = Action::Answer(address.parse().unwrap());
        (action, Scope::Exact, name.to_owned())
    };
    let mut expected = blocks(
        Scope::Exact,
        &[
            "ads.example",
            "tracker.example",
            "metrics.example",
            "null6.example",
            "loop6.example",
        ],
    );
    expected.insert(5, answer("192.0.2.7", "rewrite.example"));
    expected.extend([
        answer("1.2.3.4", "rewritten.test"),
        answer("2001:db8::7", "rewrite6.example"),
        answer("192.0.2.8", "rewrite.example"),
    ]);
    assert_eq!(
        rules, expected,
        "inline comments stripped, every null and loopback address blocks, any other answers"
    );
    assert_eq!(
        (
            counts.blocked,
            counts.rewritten,
            counts.rejected,
            counts.unsupported
        ),
        (5, 4, 1, 3)
    );
    assert_eq!(
        notes(&counts),
        [
            (
                Unapplied,
                "local host name (never blocked)",
                2,
                2,
                "127.0.0.1 localhost"
            ),
            (
                Unapplied,
                "answer-IP rule (not yet supported)",
                1,
                8,
                "0.0.0.0 192.0.2.1"
            ),
            (
                Rejected,
                "not a domain name",
                1,
                10,
                "0.0.0.0 bad!name.example"
            ),
        ]
    );
}

#[test]
fn domain_lines_are_exact_and_other_lines_adblock_rules() {
    let (counts, rules) = read(include_str!("../fixtures/domains.txt"), None, None);
    assert_eq!(counts.format, ListFormat::Domains, "detected");
    let mut expected = blocks(Scope::Exact, &["plain.example", "another.example"]);
    expected.extend(blocks(Scope::Below, &["wild.example"]));
    expected.extend(blocks(Scope::Exact, &["xn--bcher-kva.example"]));
    expected.extend(blocks(Scope::Subtree, &["adblock-in-domains.example"]));
    assert_eq!(rules, expected);
    assert_eq!(
        notes(&counts),
        [
            (Rejected, "not a rule", 1, 6, "not a name line"),
            (
                Unapplied,
                "answer-IP rule (not yet supported)",
                1,
                7,
                "192.0.2.9"
            ),
        ]
    );
}

#[test]
fn adblock_rules_by_anchor_with_exceptions_and_modifiers() {
    let (counts, rules) = read(include_str!("../fixtures/adblock.txt"), None, None);
    assert_eq!(counts.format, ListFormat::Adblock, "detected");
    let allow = |scope, name: &str| (Action::Allow, scope, name.to_owned());
    let block = |scope, name: &str| (Action::Block, scope, name.to_owned());
    assert_eq!(
        rules,
        [
            block(Scope::Subtree, "ads.example"),
            block(Scope::Subtree, "important.example"),
            allow(Scope::Subtree, "ok.ads.example"),
            allow(Scope::Exact, "exact-ok.ads.example"),
            block(Scope::Exact, "exact.example"),
            block(Scope::Below, "below.example"),
            block(Scope::Below, "below-too.example"),
            block(Scope::Exact, "bare.example"),
            block(Scope::Subtree, "ads2.example"),
            block(Scope::Exact, "hosts-in-adblock.example"),
        ]
    );
    assert_eq!(
        (
            counts.blocked,
            counts.allowed,
            counts.rejected,
            counts.unsupported
        ),
        (9, 2, 1, 8),
        "the /regex/ rule is a block"
    );
    assert_eq!(counts.regexes, 1);
    assert_eq!(
        notes(&counts),
        [
            (
                Unapplied,
                "modifier $client (not yet supported)",
                2,
                12,
                "||client.example^$client=192.168.1.2"
            ),
            (
                Unapplied,
                "modifier $dnstype (not yet supported)",
                1,
                13,
                "||dnstype.example^$dnstype=AAAA"
            ),
            (
                Unapplied,
                "modifier $badfilter (not yet supported)",
                1,
                15,
                "||gone.example^$badfilter"
            ),
            (
                Unapplied,
                "unknown modifier (the rule is ignored, as AdGuard Home does)",
                1,
                16,
                "||script.example^$third-party"
            ),
            (
                Unapplied,
                "browser-only rule (cosmetic or URL path)",
                1,
                18,
                "example.com##.banner"
            ),
            (
                Unapplied,
                "answer-IP rule (not yet supported)",
                1,
                19,
                "||192.0.2.3^"
            ),
            (
                Unapplied,
                "wildcard pattern (not yet supported)",
                1,
                20,
                "||ads*.example^"
            ),
            (Rejected, "not a domain name", 1, 21, "||bad!name.example^"),
        ]
    );
}

#[test]
fn dnsmasq_lines_block_subtrees() {
    let (counts, rules) = read(include_str!("../fixtures/dnsmasq.txt"), None, None);
    assert_eq!(counts.format, ListFormat::Dnsmasq, "detected");
    assert_eq!(
        rules,
        blocks(
            Scope::Subtree,
            &[
                "dm-null.example",
                "dm-empty.example",
                "dm-zero.example",
                "dm-v6.example",
                "dm-one.example",
                "dm-two.example",
                "dm-local.example",
                "dm-server-empty.example"
            ]
        )
        .into_iter()
        .chain([(
            Action::Answer("192.0.2.5".parse().unwrap()),
            Scope::Subtree,
            "dm-rewrite.example".to_owned()
        )])
        .collect::<Vec<_>>(),
        "address=/name/IP answers the subtree with IP"
    );
    assert_eq!(
        notes(&counts),
        [
            (
                Unapplied,
                "forwarding (server=), not blocking",
                2,
                10,
                "server=/dm-forward.example/192.0.2.53"
            ),
            (Unapplied, "other dnsmasq option", 1, 12, "cache-size=1000"),
            (
                Unapplied,
                "wildcard pattern (not yet supported)",
                1,
                13,
                "address=/#/0.0.0.0"
            ),
            (
                Rejected,
                "a dnsmasq line without /names/",
                1,
                14,
                "address=nonsense"
            ),
        ]
    );
}

#[test]
fn a_configured_format_rejects_lines_of_other_syntaxes() {
    let text = "0.0.0.0 hosts.example\n||adblock.example^\naddress=/dm.example/\nplain.example\n";
    let (counts, rules) = read(text, Some(ListFormat::Hosts), None);
    assert_eq!(rules, blocks(Scope::Exact, &["hosts.example"]));
    assert_eq!(
        notes(&counts),
        [(
            Rejected,
            "not a hosts line (the source is `format = \"hosts\"`)",
            3,
            2,
            "||adblock.example^"
        )]
    );
    let (counts, rules) = read(text, Some(ListFormat::Dnsmasq), None);
    assert_eq!(rules, blocks(Scope::Subtree, &["dm.example"]));
    assert_eq!(counts.rejected, 3);
    let (counts, _) = read(text, Some(ListFormat::Adblock), None);
    assert_eq!((counts.blocked, counts.rejected), (3, 1), "all but dnsmasq");
}

#[test]
fn match_overrides_the_scope_except_below() {
    let text = "0.0.0.0 hosts.example\n||adblock.example^\n*.below.example\n";
    let (_, rules) = read(text, None, Some(ListMatch::Subtree));
    let mut expected = blocks(Scope::Subtree, &["hosts.example", "adblock.example"]);
    expected.extend(blocks(Scope::Below, &["below.example"]));
    assert_eq!(rules, expected);
    let (_, rules) = read(text, None, Some(ListMatch::Exact));
    let mut expected = blocks(Scope::Exact, &["hosts.example", "adblock.example"]);
    expected.extend(blocks(Scope::Below, &["below.example"]));
    assert_eq!(rules, expected);
}

#[test]
fn idn_names_become_punycode_and_long_lines_are_rejected() {
    let long = format!("{}.example", "a".repeat(5000));
    let text = format!(
        "Bücher.example\n0.0.0.0 münchen.de\n||xn--caf-dma.example^\n{long}\nbad\u{0}name.example\nok.example\n\u{feff}"
    );
    let (counts, rules) = read(&text, None, None);
    let names: Vec<&str> = rules.iter().map(|(_, _, name)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "xn--bcher-kva.example",
            "xn--mnchen-3ya.de",
            "xn--caf-dma.example",
            "ok.example"
        ]
    );
    assert_eq!(
        counts.rejected, 3,
        "the long line, the control character, the stray mark"
    );
    assert_eq!(counts.notes[0].reason, "longer than 4096 bytes");
    assert_eq!(
        counts.notes[0].example.len(),
        EXAMPLE_LEN,
        "examples are cut"
    );
}

#[test]
fn comments_blank_lines_and_a_byte_order_mark_count_as_nothing() {
    let (counts, rules) = read(
        "\u{feff}# hosts comment\r\n! adblock comment\n[Adblock Plus 2.0]\n\n   \nads.example\r\n",
        None,
        None,
    );
    assert_eq!(rules, blocks(Scope::Exact, &["ads.example"]));
    assert_eq!((counts.rejected, counts.unsupported), (0, 0));
}

#[test]
fn pihole_regex_lists_are_detected_and_read_line_by_line() {
    let (counts, rules) = read_regexes(include_str!("../fixtures/regex.txt"), None);
    assert_eq!(counts.format, ListFormat::Regex, "detected");
    let lines: Vec<usize> = rules.iter().map(|(line, _)| *line).collect();
    assert_eq!(
        lines,
        [2, 3, 4, 5, 6, 8, 10],
        "every line but the unsupported"
    );
    assert_eq!(rules[1].1.pattern, "^ad[[:digit:]]+\\.");
    assert_eq!(rules[3].1.types.listed, [28]);
    assert!(rules[4].1.types.except);
    assert_eq!(
        notes(&counts),
        [
            (
                Unapplied,
                "collating element or equivalence class in a regex",
                1,
                7,
                "[[.a.]]x"
            ),
            (
                Unapplied,
                "Pi-hole ;reply= option (not yet supported)",
                1,
                9,
                "^ok\\.example$;reply=nxdomain"
            ),
        ]
    );
    let (counts, rules) = read_regexes("doubleclick.net\n[0-9]ads\\.\n", Some(ListFormat::Regex));
    assert_eq!(
        (counts.blocked, counts.regexes, rules.len()),
        (2, 2, 2),
        "a configured regex list reads every line as a regex, `[` too"
    );
    let (counts, _) = read_regexes("doubleclick.net\nads.example\n^ad[0-9]\\.\n", None);
    assert_eq!(
        counts.format,
        ListFormat::Domains,
        "mostly names: a domains list"
    );
}

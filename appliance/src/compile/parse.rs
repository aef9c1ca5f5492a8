//! Reading blocklist sources: hosts files, plain domain lists and
//! Adblock-style DNS rules, detected per line. Lines that cannot be used
//! are counted, never fatal.

/// A rule a list gives; each covers the name and everything below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rule {
    /// Block the name.
    Block,
    /// An exception (`@@||name^`).
    Allow,
}

/// What one source contributed, counted.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct ParsedList {
    /// Block rules.
    pub blocked: usize,
    /// Exception rules.
    pub allowed: usize,
    /// Lines that were neither rules nor comments.
    pub rejected: usize,
    /// Adblock rules ignored for their modifier (`$badfilter`).
    pub ignored_modifiers: usize,
    /// Comment and blank lines.
    pub comments: usize,
}

/// Longest line considered; longer ones are rejected unread.
const MAX_LINE: usize = 4096;

/// Parses a whole source, handing each rule to `visit` as it is read (a
/// million-name list never exists as a million strings).
pub(crate) fn parse_list(text: &str, visit: &mut dyn FnMut(Rule, &str)) -> ParsedList {
    let mut list = ParsedList::default();
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut emit = |rule: Rule, name: &str, list: &mut ParsedList| {
        match rule {
            Rule::Block => list.blocked += 1,
            Rule::Allow => list.allowed += 1,
        }
        visit(rule, name);
    };
    for line in text.lines() {
        parse_line(line.trim_end_matches('\r').trim(), &mut list, &mut emit);
    }
    list
}

type Emit<'a> = dyn FnMut(Rule, &str, &mut ParsedList) + 'a;

fn parse_line(line: &str, list: &mut ParsedList, emit: &mut Emit<'_>) {
    if line.is_empty() || line.starts_with('#') || line.starts_with('!') || line.starts_with('[') {
        list.comments += 1;
        return;
    }
    if line.len() > MAX_LINE {
        list.rejected += 1;
        return;
    }
    let (exception, rule) = match line.strip_prefix("@@") {
        Some(rule) => (true, rule),
        None => (false, line),
    };
    if exception || rule.starts_with("||") || rule.starts_with("*.") || rule.contains(['^', '$']) {
        match (adblock_rule(rule), exception) {
            (AdblockRule::Name(name), true) => emit(Rule::Allow, &name, list),
            (AdblockRule::Name(name), false) => emit(Rule::Block, &name, list),
            (AdblockRule::Ignored, _) => list.ignored_modifiers += 1,
            (AdblockRule::Unusable, _) => list.rejected += 1,
        }
        return;
    }
    let line = line.split('#').next().unwrap_or("").trim();
    let mut fields = line.split_whitespace();
    let first = fields.next().unwrap_or("");
    if first.parse::<std::net::IpAddr>().is_ok() {
        let mut names = 0;
        for name in fields {
            names += 1;
            if is_local_alias(&name.to_ascii_lowercase()) {
                continue;
            }
            match normalize(name) {
                Some(name) => emit(Rule::Block, &name, list),
                None => list.rejected += 1,
            }
        }
        if names == 0 {
            list.rejected += 1;
        }
        return;
    }
    match (normalize(first), fields.next()) {
        (Some(name), None) => emit(Rule::Block, &name, list),
        _ => list.rejected += 1,
    }
}

enum AdblockRule {
    Name(String),
    /// A rule whose modifier Moat does not apply (`$badfilter`).
    Ignored,
    Unusable,
}

/// Reads an Adblock DNS rule `||name^` or `*.name`. Modifiers such as
/// `$important` are dropped (the rule applies as a plain block);
/// `$badfilter` rules are ignored; cosmetic and path rules are unusable.
fn adblock_rule(rule: &str) -> AdblockRule {
    let rule = match rule.split_once('$') {
        Some((_, modifiers))
            if modifiers
                .split(',')
                .any(|modifier| modifier.trim() == "badfilter") =>
        {
            return AdblockRule::Ignored;
        }
        Some((rule, _)) => rule,
        None => rule,
    };
    let rule = rule
        .strip_prefix("||")
        .or_else(|| rule.strip_prefix("*."))
        .unwrap_or(rule);
    let rule = rule.strip_suffix('^').unwrap_or(rule);
    if rule.contains(['/', '*', '^', '|', '#']) {
        return AdblockRule::Unusable;
    }
    normalize(rule).map_or(AdblockRule::Unusable, AdblockRule::Name)
}

/// Lower-cases and checks a name; an internationalized name becomes its
/// punycode (`xn--`) form, as it is asked on the wire. Returns `None` for
/// anything that is not a domain name.
fn normalize(name: &str) -> Option<String> {
    let name = name.trim_end_matches('.');
    let name = if name.is_ascii() {
        name.to_ascii_lowercase()
    } else {
        match url::Host::parse(name).ok()? {
            url::Host::Domain(ascii) => ascii,
            url::Host::Ipv4(_) | url::Host::Ipv6(_) => return None,
        }
    };
    let valid_label = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
            && !label.starts_with('-')
    };
    (name.len() <= 253 && name.contains('.') && name.split('.').all(valid_label)).then_some(name)
}

/// Names hosts files map to themselves, never meant as blocks.
fn is_local_alias(name: &str) -> bool {
    matches!(
        name,
        "localhost"
            | "localhost.localdomain"
            | "local"
            | "broadcasthost"
            | "ip6-localhost"
            | "ip6-loopback"
    ) || name.ends_with(".localdomain")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(text: &str) -> (ParsedList, Vec<String>, Vec<String>) {
        let (mut block, mut allow) = (Vec::new(), Vec::new());
        let list = parse_list(text, &mut |rule, name| match rule {
            Rule::Block => block.push(name.to_owned()),
            Rule::Allow => allow.push(name.to_owned()),
        });
        (list, block, allow)
    }

    #[test]
    fn hosts_domains_and_adblock_lines() {
        let text = "\u{feff}# comment\r\n0.0.0.0 ads.example tracker.example\r\n127.0.0.1 localhost\n\
                    ::1 ip6-localhost\nplain.example\n||adblock.example^\n@@||good.adblock.example^\n\
                    ||important.example^$important\n||gone.example^$badfilter\n*.wild.example\n\
                    ! adblock comment\n\nexample.com/path\nnot a domain line\n0.0.0.0\nxn--bcher-kva.example\n";
        let (list, block, allow) = collect(text);
        assert_eq!(
            block,
            [
                "ads.example",
                "tracker.example",
                "plain.example",
                "adblock.example",
                "important.example",
                "wild.example",
                "xn--bcher-kva.example"
            ]
        );
        assert_eq!(allow, ["good.adblock.example"]);
        assert_eq!((list.blocked, list.allowed), (7, 1));
        assert_eq!(list.ignored_modifiers, 1, "the $badfilter rule");
        assert_eq!(list.rejected, 3, "path rule, sentence, bare address");
        assert_eq!(list.comments, 3);
    }

    #[test]
    fn idn_names_become_punycode_and_long_lines_are_rejected() {
        let long = format!("{}.example", "a".repeat(5000));
        let text = format!(
            "Bücher.example\n0.0.0.0 münchen.de\n||xn--caf-dma.example^\n{long}\nbad\u{0}name.example\nok.example\n"
        );
        let (list, block, _) = collect(&text);
        assert_eq!(
            block,
            [
                "xn--bcher-kva.example",
                "xn--mnchen-3ya.de",
                "xn--caf-dma.example",
                "ok.example"
            ]
        );
        assert_eq!(list.rejected, 2, "the long line and the control character");
    }
}

//! Exact and `*.suffix` name rules from `policy.allow` and `policy.deny`.

use std::collections::HashSet;

use super::{Decision, Policy, Question};
use crate::config::NameRule;

/// A set of names and suffixes, looked up without allocating.
#[derive(Debug, Default)]
struct NameSet {
    exact: HashSet<Box<[u8]>>,
    suffixes: HashSet<Box<[u8]>>,
}

impl NameSet {
    fn new(rules: &[NameRule]) -> Self {
        let mut set = Self::default();
        for rule in rules {
            let name: Box<[u8]> = rule.name.as_bytes().into();
            if rule.subdomains {
                set.suffixes.insert(name);
            } else {
                set.exact.insert(name);
            }
        }
        set
    }

    /// The rule matching `name`, if any: exact first, then the longest suffix.
    fn matches(&self, name: &[u8]) -> bool {
        if self.exact.contains(name) {
            return true;
        }
        if self.suffixes.is_empty() {
            return false;
        }
        let mut rest = name;
        loop {
            if self.suffixes.contains(rest) {
                return true;
            }
            match rest.iter().position(|&byte| byte == b'.') {
                Some(dot) => rest = &rest[dot + 1..],
                None => return false,
            }
        }
    }
}

/// Policy from the configured allow and deny lists: a denied name is
/// blocked unless it is also allowed (the allowlist wins).
#[derive(Debug, Default)]
pub struct NameRules {
    allow: NameSet,
    deny: NameSet,
}

impl NameRules {
    /// Builds the rule sets.
    pub fn new(allow: &[NameRule], deny: &[NameRule]) -> Self {
        Self {
            allow: NameSet::new(allow),
            deny: NameSet::new(deny),
        }
    }
}

impl Policy for NameRules {
    fn decide(&self, question: &Question<'_>) -> Decision {
        if self.allow.matches(question.name) {
            Decision::Allow
        } else if self.deny.matches(question.name) {
            Decision::Block
        } else {
            Decision::NoOpinion
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decide(rules: &NameRules, name: &str) -> Decision {
        rules.decide(&Question {
            name: name.as_bytes(),
            qtype: 1,
            client: [127, 0, 0, 1].into(),
        })
    }

    #[test]
    fn exact_suffix_and_allow_wins() {
        let parse = |names: &[&str]| {
            names
                .iter()
                .map(|name| name.parse().unwrap())
                .collect::<Vec<NameRule>>()
        };
        let rules = NameRules::new(
            &parse(&["ok.ads.example"]),
            &parse(&["*.ads.example", "tracker.example"]),
        );
        assert_eq!(decide(&rules, "ads.example"), Decision::Block);
        assert_eq!(decide(&rules, "x.y.ads.example"), Decision::Block);
        assert_eq!(decide(&rules, "tracker.example"), Decision::Block);
        assert_eq!(decide(&rules, "sub.tracker.example"), Decision::NoOpinion);
        assert_eq!(decide(&rules, "badads.example"), Decision::NoOpinion);
        assert_eq!(decide(&rules, "ok.ads.example"), Decision::Allow);
    }
}

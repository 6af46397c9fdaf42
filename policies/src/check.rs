//! Checking a policy document: every problem is collected (not only the
//! first), each with its line and column, before anything is built.

use crate::error::{closest, suggest, PolicyError, Reporter};
use crate::rule::{BlastRadius, Match, Mode, OnFailure, PolicyBrakes, PolicySet, RateLimit, Rule};
use crate::tree::{self, Entry, Node, Val};
use crate::{links, params};
use keel_model::{Action, FindingKind};
use std::ops::Range;
use std::path::Path;

pub(crate) const RULE_KEYS: &[&str] = &[
    "name",
    "description",
    "match",
    "action",
    "params",
    "mode",
    "cooldown_s",
    "rate_limit",
    "blast_radius",
    "verify_s",
    "on_failure",
    "continue",
    "escalation_only",
];

pub(crate) const MATCH_KEYS: &[&str] = &[
    "kind",
    "cause",
    "severity",
    "min_confidence",
    "min_duration_s",
    "jobs",
    "tenants",
    "nodes",
    "when",
];

/// Checks a policy document given as text; `file` names it in messages.
/// Returns the checked set (with any warnings), or every problem found,
/// warnings included, in file order.
pub fn check(file: &str, text: &str) -> Result<PolicySet, Vec<PolicyError>> {
    let mut rep = Reporter::new(file, text);
    let doc = match toml_edit::ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            // The parser stops at its first error; its message is a headline
            // and, on the following lines, what it expected.
            let mut lines = e.message().lines().map(str::trim).filter(|l| !l.is_empty());
            let head = lines.next().unwrap_or("invalid TOML").to_string();
            let rest: Vec<&str> = lines.collect();
            let help = if rest.is_empty() {
                "check the quotes, brackets and `=` there".to_string()
            } else {
                rest.join("; ")
            };
            let at = e.span().map_or(0, |s| s.start);
            rep.error_at(at, format!("invalid TOML: {head}"), Some(help));
            return Err(rep.into_sorted());
        }
    };
    let mut rules = Vec::new();
    let mut names = Vec::new();
    let mut saw_rule = false;
    let mut brakes = PolicyBrakes::default();
    for e in tree::root(doc.as_table()) {
        if e.key == "brakes" {
            let mut ck = Checker {
                rep: &mut rep,
                text,
                names: &mut names,
            };
            brakes = ck.brakes(&e.node);
            continue;
        }
        if e.key != "rule" {
            rep.error(
                &e.key_span,
                format!("unknown key `{}` at the top level", e.key),
                Some(suggest(&e.key, ["rule", "brakes"])),
            );
            continue;
        }
        saw_rule = true;
        match &e.node.val {
            Val::Array(items) => {
                for item in items {
                    let mut ck = Checker {
                        rep: &mut rep,
                        text,
                        names: &mut names,
                    };
                    if let Some(r) = ck.rule(item) {
                        rules.push(r);
                    }
                }
            }
            other => rep.error(
                &e.node.span,
                format!(
                    "`rule` must be an array of tables, found {}",
                    other.type_name()
                ),
                Some("write each rule as [[rule]]".into()),
            ),
        }
    }
    if !saw_rule {
        rep.warn_at(
            0,
            "no [[rule]] tables: nothing will ever be planned".into(),
            Some("add a [[rule]]".into()),
        );
    }
    links::check(&mut rep, &rules, &names);
    if rep.has_errors() {
        return Err(rep.into_sorted());
    }
    Ok(PolicySet {
        file: file.to_string(),
        brakes,
        rules: rules.into_iter().map(|r| r.rule).collect(),
        warnings: rep.into_sorted(),
    })
}

/// Reads and checks a policy file; an unreadable file is reported like any
/// other problem, at 1:1.
pub fn check_file(path: impl AsRef<Path>) -> Result<PolicySet, Vec<PolicyError>> {
    let path = path.as_ref();
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => check(&name, &text),
        Err(e) => {
            let mut rep = Reporter::new(&name, "");
            rep.error_at(0, format!("cannot read the file: {e}"), None);
            Err(rep.into_sorted())
        }
    }
}

/// A rule with the spans that the cross-rule checks point at.
pub(crate) struct Checked {
    pub(crate) rule: Rule,
    pub(crate) name_span: Range<usize>,
    pub(crate) on_failure_span: Option<Range<usize>>,
    /// Each kind selector with where it was written.
    pub(crate) kind_spans: Vec<(FindingKind, Range<usize>)>,
}

pub(crate) struct Checker<'r, 'a> {
    pub(crate) rep: &'r mut Reporter<'a>,
    pub(crate) text: &'a str,
    /// Every well-formed rule name with where it was written, including
    /// those of rules with other errors, so that an escalation to a rule
    /// with a typo in its params is not also reported as "missing".
    pub(crate) names: &'r mut Vec<(String, Range<usize>)>,
}

impl Checker<'_, '_> {
    fn rule(&mut self, node: &Node) -> Option<Checked> {
        let Val::Table(entries) = &node.val else {
            self.rep.error(
                &node.span,
                format!("a rule must be a table, found {}", node.val.type_name()),
                None,
            );
            return None;
        };
        let errors_before = self.rep.problems.len();
        let get = |k: &str| entries.iter().find(|e| e.key == k);
        for e in entries {
            if !RULE_KEYS.contains(&e.key.as_str()) {
                let help = if MATCH_KEYS.contains(&e.key.as_str()) {
                    format!("`{}` is a selector: put it under [rule.match]", e.key)
                } else {
                    suggest(&e.key, RULE_KEYS.iter().copied())
                };
                self.rep.error(
                    &e.key_span,
                    format!("unknown key `{}` in a rule", e.key),
                    Some(help),
                );
            }
        }
        let name = match get("name") {
            None => {
                self.rep.error(
                    &node.span,
                    "this rule has no `name`".into(),
                    Some("add name = \"...\"".into()),
                );
                None
            }
            Some(e) => {
                let n = self.name(&e.node);
                if let Some(n) = &n {
                    self.names.push((n.clone(), e.node.span.clone()));
                }
                n
            }
        };
        let description = get("description").and_then(|e| self.string(&e.node, "description"));
        let action = match get("action") {
            None => {
                self.rep.error(
                    &node.span,
                    "this rule has no `action`".into(),
                    Some(format!("one of: {}", action_names().join(", "))),
                );
                None
            }
            Some(e) => self.action(&e.node),
        };
        let params = action.and_then(|a| {
            let anchor = get("action").map_or(node.span.clone(), |e| e.node.span.clone());
            params::check(self.rep, a, get("params").map(|e| &e.node), &anchor)
        });
        let escalation_only = get("escalation_only").is_some_and(|e| self.boolean(&e.node));
        let continue_ = get("continue").is_some_and(|e| self.boolean(&e.node));
        let (selectors, kind_spans) = match get("match") {
            Some(e) => self.selectors(&e.node),
            None if escalation_only => (Match::default(), Vec::new()),
            None => {
                self.rep.error(
                    &node.span,
                    "this rule has no [rule.match]".into(),
                    Some(
                        "add [rule.match] (an empty one matches every finding), \
                         or set escalation_only = true"
                            .into(),
                    ),
                );
                (Match::default(), Vec::new())
            }
        };
        let mode = get("mode").map_or(Some(Mode::default()), |e| self.mode(&e.node));
        let cooldown_s = get("cooldown_s").map_or(Some(0.0), |e| {
            self.number(&e.node, "cooldown_s", 0.0, f64::MAX)
        });
        let rate_limit = get("rate_limit").and_then(|e| self.rate_limit(&e.node));
        let blast_radius = get("blast_radius").and_then(|e| self.blast_radius(&e.node));
        let verify_s = get("verify_s").and_then(|e| {
            let v = self.number(&e.node, "verify_s", 0.0, f64::MAX)?;
            if v <= 0.0 {
                self.rep.error(
                    &e.node.span,
                    "`verify_s` must be more than 0".into(),
                    Some("leave it out to skip verification".into()),
                );
            }
            Some(v)
        });
        let on_failure =
            get("on_failure").map_or(Some(OnFailure::None), |e| self.on_failure(&e.node));
        if self.rep.problems[errors_before..]
            .iter()
            .any(PolicyError::is_error)
        {
            return None;
        }
        let name_node = &get("name")?.node;
        Some(Checked {
            rule: Rule {
                name: name?,
                description,
                selectors,
                action: action?,
                params: params?,
                mode: mode?,
                cooldown_s: cooldown_s?,
                rate_limit,
                blast_radius,
                verify_s,
                on_failure: on_failure?,
                continue_,
                escalation_only,
            },
            name_span: name_node.span.clone(),
            on_failure_span: get("on_failure").map(|e| e.node.span.clone()),
            kind_spans,
        })
    }

    fn name(&mut self, node: &Node) -> Option<String> {
        let s = self.string(node, "name")?;
        let ok = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !ok {
            // Names go into idempotency keys ("f7/NAME/...") and into
            // "escalate:NAME", so separators are kept out of them.
            self.rep.error(
                &node.span,
                format!("rule name \"{s}\" must be letters, digits, '-', '_' or '.'"),
                Some("e.g. name = \"straggler-pcie-remap\"".into()),
            );
            return None;
        }
        Some(s)
    }

    fn action(&mut self, node: &Node) -> Option<Action> {
        let s = self.string(node, "action")?;
        let found = Action::ALL.iter().copied().find(|a| a.wire() == s);
        if found == Some(Action::InjectFault) {
            self.rep.error(
                &node.span,
                "`inject_fault` is not a rule's action: an operator asks for one fault at a time with `keel chaos inject`".to_string(),
                None,
            );
            return None;
        }
        if found.is_none() {
            self.rep.error(
                &node.span,
                format!("unknown action `{s}`"),
                Some(suggest(&s, Action::ALL.iter().map(|a| a.wire()))),
            );
        }
        found
    }

    fn mode(&mut self, node: &Node) -> Option<Mode> {
        let s = self.string(node, "mode")?;
        let found = Mode::from_wire(&s);
        if found.is_none() {
            self.rep.error(
                &node.span,
                format!("unknown mode `{s}`"),
                Some(suggest(&s, Mode::ALL.iter().map(|m| m.wire()))),
            );
        }
        found
    }

    fn on_failure(&mut self, node: &Node) -> Option<OnFailure> {
        let s = self.string(node, "on_failure")?;
        match s.as_str() {
            "none" => return Some(OnFailure::None),
            "rollback" => return Some(OnFailure::Rollback),
            _ => {}
        }
        if let Some(target) = s.strip_prefix("escalate:") {
            if !target.trim().is_empty() {
                return Some(OnFailure::Escalate(target.trim().to_string()));
            }
        }
        let help = match closest(&s, ["none", "rollback", "escalate"]) {
            Some("escalate") | None => "\"escalate:RULE_NAME\", \"rollback\" or \"none\"".into(),
            Some(c) => format!("did you mean `{c}`?"),
        };
        self.rep.error(
            &node.span,
            format!("`on_failure` = \"{s}\" is not understood"),
            Some(help),
        );
        None
    }

    /// "N/Ts" (also with m or h), or { max = N, per_s = T }.
    fn rate_limit(&mut self, node: &Node) -> Option<RateLimit> {
        let help = || Some("e.g. rate_limit = \"3/600s\" or { max = 3, per_s = 600 }".into());
        let parsed = match &node.val {
            Val::Str(s) => parse_rate(s),
            Val::Table(entries) => {
                self.unknown_keys(entries, &["max", "per_s"], "rate_limit");
                let get = |k: &str| entries.iter().find(|e| e.key == k).map(|e| &e.node);
                let max = get("max").and_then(|n| match n.val {
                    Val::Int(i) if i >= 1 => u32::try_from(i).ok(),
                    _ => None,
                });
                let per = get("per_s")
                    .and_then(Node::as_number)
                    .filter(|p| *p > 0.0 && p.is_finite());
                max.zip(per).map(|(max, per_s)| RateLimit { max, per_s })
            }
            _ => None,
        };
        if parsed.is_none() {
            self.rep.error(
                &node.span,
                "`rate_limit` needs a whole number of actions (at least 1) per a positive time"
                    .into(),
                help(),
            );
        }
        parsed
    }

    fn blast_radius(&mut self, node: &Node) -> Option<BlastRadius> {
        let Val::Table(entries) = &node.val else {
            self.rep.error(
                &node.span,
                format!(
                    "`blast_radius` must be a table, found {}",
                    node.val.type_name()
                ),
                Some("e.g. blast_radius = { max_nodes_share = 0.1 }".into()),
            );
            return None;
        };
        let keys = ["max_nodes_share", "max_jobs_share"];
        let typos = self.unknown_keys(entries, &keys, "blast_radius");
        let mut b = BlastRadius::default();
        for e in entries {
            match e.key.as_str() {
                "max_nodes_share" => b.max_nodes_share = self.number(&e.node, &e.key, 0.0, 1.0),
                "max_jobs_share" => b.max_jobs_share = self.number(&e.node, &e.key, 0.0, 1.0),
                _ => {}
            }
        }
        // After a misspelt key, "sets neither" would only repeat it.
        if b.max_nodes_share.is_none() && b.max_jobs_share.is_none() && !typos {
            self.rep.error(
                &node.span,
                "`blast_radius` sets neither max_nodes_share nor max_jobs_share".into(),
                Some("e.g. blast_radius = { max_nodes_share = 0.1 }".into()),
            );
        }
        Some(b)
    }

    /// Reports keys outside `known`; true if there were any.
    pub(crate) fn unknown_keys(&mut self, entries: &[Entry], known: &[&str], within: &str) -> bool {
        let mut any = false;
        for e in entries {
            if !known.contains(&e.key.as_str()) {
                any = true;
                self.rep.error(
                    &e.key_span,
                    format!("unknown key `{}` in `{within}`", e.key),
                    Some(suggest(&e.key, known.iter().copied())),
                );
            }
        }
        any
    }

    pub(crate) fn string(&mut self, node: &Node, what: &str) -> Option<String> {
        match node.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.rep.error(
                    &node.span,
                    format!("`{what}` must be a string, found {}", node.val.type_name()),
                    Some(format!("quote it: {what} = \"...\"")),
                );
                None
            }
        }
    }

    /// The top-level `[brakes]` table: advisory mode and the circuit breaker.
    fn brakes(&mut self, node: &Node) -> PolicyBrakes {
        let mut b = PolicyBrakes::default();
        let Val::Table(entries) = &node.val else {
            self.rep.error(
                &node.span,
                format!("`brakes` must be a table, found {}", node.val.type_name()),
                Some("write it as [brakes]".into()),
            );
            return b;
        };
        let keys = [
            "advisory",
            "max_nodes_share",
            "max_jobs_share",
            "window_s",
            "min_targets",
        ];
        self.unknown_keys(entries, &keys, "brakes");
        for e in entries {
            let br = &mut b.breaker;
            match e.key.as_str() {
                "advisory" => b.advisory = self.boolean(&e.node),
                "max_nodes_share" => {
                    if let Some(x) = self.number(&e.node, &e.key, 0.0, 1.0) {
                        br.max_nodes_share = x;
                    }
                }
                "max_jobs_share" => {
                    if let Some(x) = self.number(&e.node, &e.key, 0.0, 1.0) {
                        br.max_jobs_share = x;
                    }
                }
                "window_s" => {
                    if let Some(x) = self.number(&e.node, &e.key, 1.0, f64::MAX) {
                        br.window_s = x;
                    }
                }
                "min_targets" => {
                    if let Some(x) = self.number(&e.node, &e.key, 0.0, 1_000_000.0) {
                        br.min_targets = x as usize;
                    }
                }
                _ => {}
            }
        }
        b
    }

    fn boolean(&mut self, node: &Node) -> bool {
        match node.val {
            Val::Bool(b) => b,
            _ => {
                self.rep.error(
                    &node.span,
                    format!("expected true or false, found {}", node.val.type_name()),
                    None,
                );
                false
            }
        }
    }

    pub(crate) fn number(&mut self, node: &Node, what: &str, lo: f64, hi: f64) -> Option<f64> {
        let example = format!("e.g. {what} = {}", if hi <= 1.0 { "0.5" } else { "60" });
        let Some(x) = node.as_number() else {
            self.rep.error(
                &node.span,
                format!("`{what}` must be a number, found {}", node.val.type_name()),
                Some(example),
            );
            return None;
        };
        if !(lo..=hi).contains(&x) {
            let range = if hi == f64::MAX {
                format!("at least {lo}")
            } else {
                format!("within {lo}..={hi}")
            };
            self.rep.error(
                &node.span,
                format!("`{what}` must be {range}, not {x}"),
                Some(example),
            );
            return None;
        }
        Some(x)
    }

    /// A string or an array of strings, each with its own span; wrong
    /// shapes are reported and dropped.
    pub(crate) fn words(&mut self, node: &Node, what: &str) -> Vec<(String, Range<usize>)> {
        let items: Vec<&Node> = match &node.val {
            Val::Array(items) => items.iter().collect(),
            _ => vec![node],
        };
        let mut out = Vec::new();
        for n in items {
            match n.as_str() {
                Some(s) if !s.is_empty() => out.push((s.to_string(), n.span.clone())),
                _ => self.rep.error(
                    &n.span,
                    format!("`{what}` takes a non-empty string or an array of them"),
                    Some(format!("e.g. {what} = [\"a\", \"b\"]")),
                ),
            }
        }
        out
    }
}

fn action_names() -> Vec<&'static str> {
    Action::ALL.iter().map(|a| a.wire()).collect()
}

fn parse_rate(s: &str) -> Option<RateLimit> {
    let (n, per) = s.split_once('/')?;
    let max: u32 = n.trim().parse().ok().filter(|m| *m >= 1)?;
    let per = per.trim();
    let (num, unit) = match per.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => (&per[..i], &per[i..]),
        None => (per, "s"),
    };
    let scale = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    let per_s = num.trim().parse::<f64>().ok().filter(|x| *x > 0.0)? * scale;
    per_s.is_finite().then_some(RateLimit { max, per_s })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        let r = |s| parse_rate(s).map(|r| (r.max, r.per_s));
        assert_eq!(r("3/600s"), Some((3, 600.0)));
        assert_eq!(r("1/5m"), Some((1, 300.0)));
        assert_eq!(r("2/1h"), Some((2, 3600.0)));
        assert_eq!(r("2/30"), Some((2, 30.0)));
        assert_eq!(r("0/30s"), None);
        assert_eq!(r("2/0s"), None);
        assert_eq!(r("2/10d"), None);
        assert_eq!(r("x/10s"), None);
    }
}

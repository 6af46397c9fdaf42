//! The selectors of `[rule.match]`: which findings a rule applies to.

use crate::check::{Checker, MATCH_KEYS, RULE_KEYS};
use crate::error::suggest;
use crate::rule::{Match, Pattern};
use crate::tree::{Node, Val};
use crate::when::{char_offsets, When};
use keel_model::{Cause, FindingKind, Severity};
use std::ops::Range;

const SEVERITIES: &[Severity] = &[Severity::Info, Severity::Warning, Severity::Critical];

impl Checker<'_, '_> {
    pub(crate) fn selectors(&mut self, node: &Node) -> (Match, Vec<(FindingKind, Range<usize>)>) {
        let mut m = Match::default();
        let mut kind_spans = Vec::new();
        let Val::Table(entries) = &node.val else {
            self.rep.error(
                &node.span,
                format!("`match` must be a table, found {}", node.val.type_name()),
                Some("write [rule.match] with selectors such as kind = \"tp_straggler\"".into()),
            );
            return (m, kind_spans);
        };
        for e in entries {
            let n = &e.node;
            match e.key.as_str() {
                "kind" => {
                    for (s, span) in self.words(n, "kind") {
                        match FindingKind::from_wire(&s) {
                            Some(k) => {
                                m.kinds.push(k);
                                kind_spans.push((k, span));
                            }
                            None => self.rep.error(
                                &span,
                                format!("unknown finding kind `{s}`"),
                                Some(suggest(&s, FindingKind::ALL.iter().map(|k| k.wire()))),
                            ),
                        }
                    }
                }
                "cause" => {
                    for (s, span) in self.words(n, "cause") {
                        match Cause::ALL.iter().find(|c| c.wire() == s) {
                            Some(c) => m.causes.push(*c),
                            None => self.rep.error(
                                &span,
                                format!("unknown cause `{s}`"),
                                Some(suggest(&s, Cause::ALL.iter().map(|c| c.wire()))),
                            ),
                        }
                    }
                }
                "severity" => {
                    if let Some(s) = self.string(n, "severity") {
                        match SEVERITIES.iter().find(|v| v.wire() == s) {
                            Some(v) => m.severity = Some(*v),
                            None => self.rep.error(
                                &n.span,
                                format!("unknown severity `{s}`"),
                                Some(suggest(&s, SEVERITIES.iter().map(|v| v.wire()))),
                            ),
                        }
                    }
                }
                "min_confidence" => m.min_confidence = self.number(n, "min_confidence", 0.0, 1.0),
                "min_duration_s" => {
                    m.min_duration_s = self.number(n, "min_duration_s", 0.0, f64::MAX)
                }
                "jobs" | "tenants" | "nodes" => {
                    let pats: Vec<Pattern> = self
                        .words(n, &e.key)
                        .into_iter()
                        .map(|(s, _)| Pattern(s))
                        .collect();
                    match e.key.as_str() {
                        "jobs" => m.jobs = pats,
                        "tenants" => m.tenants = pats,
                        _ => m.nodes = pats,
                    }
                }
                "when" => m.when = self.when(n),
                other => {
                    let help = if RULE_KEYS.contains(&other) {
                        format!("`{other}` belongs to the rule, above [rule.match]")
                    } else {
                        suggest(other, MATCH_KEYS.iter().copied())
                    };
                    self.rep.error(
                        &e.key_span,
                        format!("unknown selector `{other}` in [rule.match]"),
                        Some(help),
                    );
                }
            }
        }
        (m, kind_spans)
    }

    fn when(&mut self, node: &Node) -> Option<When> {
        let src = self.string(node, "when")?;
        // Maps a character of the expression back to the file, through the
        // quotes and escapes of the TOML string.
        let raw = self.text.get(node.span.clone()).unwrap_or("");
        let offsets = char_offsets(raw, &src);
        let at = |i: usize| {
            node.span.start
                + offsets
                    .as_ref()
                    .and_then(|o| o.get(i.min(o.len().saturating_sub(1))).copied())
                    .unwrap_or(0)
        };
        match When::compile(&src) {
            Ok(w) => {
                if let Some(p) = w.lint_absent_fields() {
                    self.rep.warn_at(at(p.at), p.message, p.help);
                }
                Some(w)
            }
            Err(p) => {
                self.rep.error_at(at(p.at), p.message, p.help);
                None
            }
        }
    }
}

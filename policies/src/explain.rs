//! Which rules a finding matches, and for those it does not, the first
//! selector that failed and why: what `keel policy explain` prints.

use crate::plan::Context;
use crate::rule::{Pattern, PolicySet, Rule};
use crate::when::Subject;
use keel_model::{Action, Finding};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The selectors of `[rule.match]`, in the order they are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    Kind,
    Cause,
    Severity,
    MinConfidence,
    MinDurationS,
    Jobs,
    Tenants,
    Nodes,
    When,
}

impl Selector {
    /// The key as written in a policy file.
    pub fn wire(self) -> &'static str {
        match self {
            Selector::Kind => "kind",
            Selector::Cause => "cause",
            Selector::Severity => "severity",
            Selector::MinConfidence => "min_confidence",
            Selector::MinDurationS => "min_duration_s",
            Selector::Jobs => "jobs",
            Selector::Tenants => "tenants",
            Selector::Nodes => "nodes",
            Selector::When => "when",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The rule matches and its action would be planned.
    Matched,
    /// The rule matches, but an earlier matching rule stops the search
    /// (first match wins unless that rule sets `continue = true`).
    Shadowed {
        by: String,
    },
    NoMatch {
        selector: Selector,
        why: String,
    },
    /// The rule is reached only through another rule's escalation.
    EscalationOnly,
}

/// What one rule makes of one finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleVerdict {
    pub rule: String,
    pub action: Action,
    pub verdict: Verdict,
}

impl RuleVerdict {
    /// Whether this rule's action would be planned for the finding.
    pub fn fires(&self) -> bool {
        self.verdict == Verdict::Matched
    }
}

impl fmt::Display for RuleVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}): ", self.rule, self.action)?;
        match &self.verdict {
            Verdict::Matched => f.write_str("matched"),
            Verdict::Shadowed { by } => {
                write!(f, "matched, but `{by}` matched first and does not continue")
            }
            Verdict::NoMatch { selector, why } => {
                write!(f, "no match on {}: {why}", selector.wire())
            }
            Verdict::EscalationOnly => f.write_str("only reached by escalation"),
        }
    }
}

impl PolicySet {
    /// Every rule's verdict on `finding`, in rule order.
    pub fn explain(&self, finding: &Finding, ctx: &Context) -> Vec<RuleVerdict> {
        let mut stopped_by: Option<&str> = None;
        self.rules
            .iter()
            .map(|rule| {
                let verdict = if rule.escalation_only {
                    Verdict::EscalationOnly
                } else {
                    match selects(rule, finding, ctx) {
                        Err((selector, why)) => Verdict::NoMatch { selector, why },
                        Ok(()) => match stopped_by {
                            Some(by) => Verdict::Shadowed { by: by.to_string() },
                            None => {
                                if !rule.continue_ {
                                    stopped_by = Some(&rule.name);
                                }
                                Verdict::Matched
                            }
                        },
                    }
                };
                RuleVerdict {
                    rule: rule.name.clone(),
                    action: rule.action,
                    verdict,
                }
            })
            .collect()
    }
}

/// Whether the rule's selectors all admit the finding; if not, the first
/// that refused it and why, in words an operator can check.
pub(crate) fn selects(rule: &Rule, f: &Finding, ctx: &Context) -> Result<(), (Selector, String)> {
    let m = &rule.selectors;
    if !m.admits_kind(f.kind) {
        return Err((
            Selector::Kind,
            format!("{} is not {}", f.kind, list(m.kinds.iter())),
        ));
    }
    if !m.causes.is_empty() && !m.causes.contains(&f.cause) {
        return Err((
            Selector::Cause,
            format!("{} is not {}", f.cause, list(m.causes.iter())),
        ));
    }
    if let Some(min) = m.severity {
        if f.severity < min {
            return Err((Selector::Severity, format!("{} is below {min}", f.severity)));
        }
    }
    if let Some(min) = m.min_confidence {
        if f.confidence < min || f.confidence.is_nan() {
            return Err((
                Selector::MinConfidence,
                format!("confidence {:.2} is below {min}", f.confidence),
            ));
        }
    }
    if let Some(min) = m.min_duration_s {
        if ctx.duration_s < min || ctx.duration_s.is_nan() {
            return Err((
                Selector::MinDurationS,
                format!(
                    "the episode has lasted {:.1} s, less than {min} s",
                    ctx.duration_s
                ),
            ));
        }
    }
    names(Selector::Jobs, "job", &m.jobs, f.job.as_deref())?;
    names(
        Selector::Tenants,
        "tenant",
        &m.tenants,
        ctx.tenant.as_deref(),
    )?;
    names(Selector::Nodes, "node", &m.nodes, f.node.as_deref())?;
    if let Some(when) = &m.when {
        let subject = Subject {
            finding: f,
            duration_s: ctx.duration_s,
            tenant: ctx.tenant.as_deref(),
        };
        match when.eval(&subject) {
            Ok(true) => {}
            Ok(false) => return Err((Selector::When, format!("`{}` is false", when.source()))),
            Err(e) => {
                return Err((
                    Selector::When,
                    format!("`{}` failed ({e}), which counts as no match", when.source()),
                ))
            }
        }
    }
    Ok(())
}

fn names(
    selector: Selector,
    what: &str,
    patterns: &[Pattern],
    value: Option<&str>,
) -> Result<(), (Selector, String)> {
    if patterns.is_empty() {
        return Ok(());
    }
    match value {
        None => Err((selector, format!("the finding has no {what}"))),
        Some(v) if patterns.iter().any(|p| p.matches(v)) => Ok(()),
        Some(v) => Err((
            selector,
            format!("{what} {v} matches none of {}", list(patterns.iter())),
        )),
    }
}

fn list<T: fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let items: Vec<String> = items.map(|i| i.to_string()).collect();
    if items.len() == 1 {
        items.concat()
    } else {
        format!("one of {}", items.join(", "))
    }
}

//! A checked policy: rules with their selectors, action and guards. Values
//! here are already validated; building one by hand skips that, so the only
//! way in from a file is `check`.

use crate::error::PolicyError;
use crate::when::When;
use keel_model::{Action, Cause, FindingKind, Severity};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Whether a planned action runs on its own, waits for a person, or is only
/// recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Dispatched as soon as it is committed.
    Auto,
    /// Waits for `keel action approve ID`. The default: an operator opts a
    /// rule into acting alone, never out of it.
    #[default]
    Approve,
    /// Recorded as what would have happened; nothing is dispatched.
    DryRun,
}

impl Mode {
    pub const ALL: &'static [Mode] = &[Mode::Auto, Mode::Approve, Mode::DryRun];

    pub fn wire(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Approve => "approve",
            Mode::DryRun => "dry_run",
        }
    }

    pub fn from_wire(s: &str) -> Option<Mode> {
        Mode::ALL.iter().copied().find(|m| m.wire() == s)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire())
    }
}

/// What to do when an action does not clear its finding within `verify_s`
/// (or its executor reports failure).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFailure {
    #[default]
    None,
    /// Undo the action (the executor restores what it recorded before).
    Rollback,
    /// Plan the named rule's action for the same finding.
    Escalate(String),
}

impl OnFailure {
    /// Reads what `Display` writes: `none`, `rollback`, `escalate:RULE`.
    pub fn from_wire(s: &str) -> Option<OnFailure> {
        match s {
            "" | "none" => Some(OnFailure::None),
            "rollback" => Some(OnFailure::Rollback),
            _ => s
                .strip_prefix("escalate:")
                .filter(|r| !r.is_empty())
                .map(|r| OnFailure::Escalate(r.to_string())),
        }
    }
}

impl fmt::Display for OnFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OnFailure::None => f.write_str("none"),
            OnFailure::Rollback => f.write_str("rollback"),
            OnFailure::Escalate(r) => write!(f, "escalate:{r}"),
        }
    }
}

/// At most `max` actions by one rule within any `per_s` seconds, across all
/// of its targets.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RateLimit {
    pub max: u32,
    pub per_s: f64,
}

/// The largest share of the cluster's nodes (jobs) that one rule may have
/// actions in flight on at once.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct BlastRadius {
    pub max_nodes_share: Option<f64>,
    pub max_jobs_share: Option<f64>,
}

/// A name pattern where `*` stands for any run of characters (including
/// none); everything else matches itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(pub String);

impl Pattern {
    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Iterative wildcard matching with one backtrack point: linear in practice
/// and never recursive, so a hostile pattern cannot blow the stack.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Which findings a rule applies to. An empty list means "any".
#[derive(Debug, Clone, Default)]
pub struct Match {
    pub kinds: Vec<FindingKind>,
    pub causes: Vec<Cause>,
    /// The least severe finding that matches.
    pub severity: Option<Severity>,
    pub min_confidence: Option<f64>,
    /// How long the episode must have lasted, in seconds.
    pub min_duration_s: Option<f64>,
    pub jobs: Vec<Pattern>,
    pub tenants: Vec<Pattern>,
    pub nodes: Vec<Pattern>,
    pub when: Option<When>,
}

impl Match {
    /// Whether the kind selector admits `kind` (other selectors aside).
    pub fn admits_kind(&self, kind: FindingKind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&kind)
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub description: Option<String>,
    pub selectors: Match,
    pub action: Action,
    /// Validated for the action, rendered as the strings a command carries.
    pub params: BTreeMap<String, String>,
    pub mode: Mode,
    pub cooldown_s: f64,
    pub rate_limit: Option<RateLimit>,
    pub blast_radius: Option<BlastRadius>,
    pub verify_s: Option<f64>,
    pub on_failure: OnFailure,
    /// Go on to later rules after this one matches (first match wins
    /// otherwise, as in a firewall or an alert route).
    pub continue_: bool,
    /// Reached only by escalation from another rule, never by a finding
    /// directly.
    pub escalation_only: bool,
}

/// The policy document's `[brakes]`: above every rule.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyBrakes {
    /// Advisory mode for the whole set: every rule's action is recorded
    /// (`dry_run`), nothing is sent, whatever the rule's own mode.
    pub advisory: bool,
    /// The circuit breaker over all rules.
    pub breaker: crate::steward::Breaker,
}

/// A checked policy document.
#[derive(Debug, Clone)]
pub struct PolicySet {
    pub(crate) file: String,
    pub(crate) brakes: PolicyBrakes,
    pub(crate) rules: Vec<Rule>,
    pub(crate) warnings: Vec<PolicyError>,
}

impl PolicySet {
    /// The name the document was checked under (its path, or what the
    /// caller passed with the text).
    pub fn file(&self) -> &str {
        &self.file
    }

    /// The document's brakes (advisory mode, circuit breaker).
    pub fn brakes(&self) -> &PolicyBrakes {
        &self.brakes
    }

    /// Rules in file order, which is the order they are tried in.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn rule(&self, name: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// Notes that did not stop the document from checking.
    pub fn warnings(&self) -> &[PolicyError] {
        &self.warnings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_patterns() {
        let p = |s: &str| Pattern(s.into());
        assert!(p("*").matches(""));
        assert!(p("node-*").matches("node-12"));
        assert!(!p("node-*").matches("gpu-1"));
        assert!(p("*-prod-*").matches("llama-prod-7"));
        assert!(p("a*b*c").matches("aXbYbc"));
        assert!(!p("a*b*c").matches("aXbY"));
        assert!(p("exact").matches("exact"));
        assert!(!p("exact").matches("exactly"));
    }
}

//! Checks across rules: unique names, escalations that lead somewhere and
//! never in a circle, and actions that the matched findings can feed.

use crate::check::Checked;
use crate::error::{suggest, Reporter};
use crate::rule::OnFailure;
use keel_model::{Action, LocusKind};
use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

pub(crate) fn check(rep: &mut Reporter<'_>, rules: &[Checked], names: &[(String, Range<usize>)]) {
    let mut first: HashMap<&str, &Range<usize>> = HashMap::new();
    for (name, span) in names {
        match first.get(name.as_str()) {
            Some(earlier) => {
                let hint = rep.position(earlier.start);
                rep.error(
                    span,
                    format!("duplicate rule name `{name}`"),
                    Some(format!("first used at {hint}; rule names must be unique")),
                );
            }
            None => {
                first.insert(name, span);
            }
        }
    }
    let escalations = |c: &Checked| match &c.rule.on_failure {
        OnFailure::Escalate(t) => Some(t.clone()),
        _ => None,
    };
    for c in rules {
        let (Some(target), Some(span)) = (escalations(c), &c.on_failure_span) else {
            continue;
        };
        if !first.contains_key(target.as_str()) {
            rep.error(
                span,
                format!(
                    "`{}` escalates to `{target}`, which is not a rule here",
                    c.rule.name
                ),
                Some(suggest(&target, names.iter().map(|(n, _)| n.as_str()))),
            );
        }
    }
    cycles(rep, rules);
    for c in rules.iter().filter(|c| c.rule.escalation_only) {
        let reached = rules
            .iter()
            .any(|o| escalations(o).as_deref() == Some(c.rule.name.as_str()));
        if !reached {
            rep.warn(
                &c.name_span,
                format!(
                    "`{}` is escalation_only but no rule escalates to it: it never fires",
                    c.rule.name
                ),
                Some(format!(
                    "set on_failure = \"escalate:{}\" on a rule, or drop escalation_only",
                    c.rule.name
                )),
            );
        }
    }
    for c in rules {
        for (kind, span) in &c.kind_spans {
            if let Some(need) = unmet(c.rule.action, kind.locus_kind()) {
                rep.warn(
                    span,
                    format!(
                        "`{}` needs {need}, which `{kind}` findings (about a {}) may not carry",
                        c.rule.action,
                        locus_name(kind.locus_kind())
                    ),
                    Some("such findings get no action; consider notify".into()),
                );
            }
        }
    }
}

/// Reports each escalation cycle once, at the rule of the cycle written
/// first in the file.
fn cycles(rep: &mut Reporter<'_>, rules: &[Checked]) {
    let index: HashMap<&str, usize> = rules
        .iter()
        .enumerate()
        .map(|(i, c)| (c.rule.name.as_str(), i))
        .collect();
    let next = |i: usize| match &rules[i].rule.on_failure {
        OnFailure::Escalate(t) => index.get(t.as_str()).copied(),
        _ => None,
    };
    let mut seen: BTreeSet<Vec<usize>> = BTreeSet::new();
    for start in 0..rules.len() {
        let mut path = vec![start];
        let mut cur = start;
        while let Some(n) = next(cur) {
            if let Some(pos) = path.iter().position(|&p| p == n) {
                let mut cycle = path[pos..].to_vec();
                let lead = cycle
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, &r)| r)
                    .map_or(0, |(i, _)| i);
                cycle.rotate_left(lead);
                if seen.insert(cycle.clone()) {
                    let names: Vec<&str> = cycle
                        .iter()
                        .chain(cycle.first())
                        .map(|&i| rules[i].rule.name.as_str())
                        .collect();
                    let at = &rules[cycle[0]];
                    let span = at.on_failure_span.as_ref().unwrap_or(&at.name_span);
                    rep.error(
                        span,
                        format!("escalation cycle: {}", names.join(" -> ")),
                        Some("end the chain with on_failure = \"none\" or \"rollback\"".into()),
                    );
                }
                break;
            }
            path.push(n);
            cur = n;
        }
    }
}

/// What an action needs from a finding that a locus of this kind does not
/// promise. A rank lives on a node and a GPU finding names its node, so
/// those count as present.
fn unmet(action: Action, locus: LocusKind) -> Option<&'static str> {
    use LocusKind as L;
    let has_node = matches!(locus, L::Rank | L::Gpu | L::Node | L::Link);
    let has_job = matches!(locus, L::Rank | L::Job);
    let has_gpu = matches!(locus, L::Gpu);
    match action {
        Action::RemapRequests if !(has_job || has_node) => Some("a job or a node"),
        Action::RetuneNic | Action::DrainNode | Action::ResumeNode if !has_node => Some("a node"),
        Action::RebalanceRanks if !has_job => Some("a job"),
        Action::ReclaimZombie if !(has_job || (has_node && has_gpu)) => {
            Some("a job, or a node and a GPU")
        }
        _ => None,
    }
}

fn locus_name(l: LocusKind) -> &'static str {
    match l {
        LocusKind::Rank => "rank",
        LocusKind::Gpu => "GPU",
        LocusKind::Node => "node",
        LocusKind::Job => "job",
        LocusKind::Link => "link",
        LocusKind::Cluster => "whole cluster",
    }
}

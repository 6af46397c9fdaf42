//! From findings to planned actions, under the rules' guards. Nothing here
//! reads a clock or the network: the caller passes the time and what the
//! ledger holds, so a replica, a replay or a test gets the same answer from
//! the same inputs.

use crate::explain::selects;
use crate::rule::{Mode, OnFailure, PolicySet, Rule};
use keel_model::{Action, Finding, Locus, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use keel_model::ActionStatus;

/// An action already in the ledger, planned by `rule` at `ts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PastAction {
    pub rule: String,
    pub target: String,
    pub action: Action,
    pub ts: Timestamp,
    pub status: ActionStatus,
}

/// What the planner knows about the world when it looks at one finding.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Context {
    /// The time of the decision (the controller's clock or the trace's).
    pub now: Timestamp,
    /// How long the finding's episode has lasted so far, in seconds.
    pub duration_s: f64,
    /// Nodes in the cluster; 0 when unknown.
    pub nodes: usize,
    /// Jobs running; 0 when unknown.
    pub jobs: usize,
    /// The tenant (account) of the finding's job, when known.
    pub tenant: Option<String>,
    /// Actions in the ledger, whatever their status; older than every
    /// guard's window may be left out.
    pub actions: Vec<PastAction>,
}

/// An action to commit to the ledger and, unless its mode says otherwise,
/// dispatch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub finding_id: u64,
    pub rule: String,
    pub action: Action,
    /// "job/<job>", "node/<node>", "node/<node>/<device>",
    /// "node/<node>/gpu/<gpu>", or for `notify` the finding's locus.
    pub target: String,
    pub params: BTreeMap<String, String>,
    pub mode: Mode,
    /// The same finding, rule, action and target always give the same key,
    /// so a new leader planning again commits nothing new.
    pub key: String,
    pub verify_s: Option<f64>,
    pub on_failure: OnFailure,
    /// The finding it answers, kept so that an escalation can derive its
    /// own target from it.
    pub finding: Finding,
}

/// The guard that held an action back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guard {
    Cooldown,
    RateLimit,
    BlastRadius,
}

impl fmt::Display for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Guard::Cooldown => "cooldown",
            Guard::RateLimit => "rate_limit",
            Guard::BlastRadius => "blast_radius",
        })
    }
}

/// What the planner decided for one rule.
// A plan is much larger than the other variants, but a finding yields a
// handful of decisions that are moved, never stored in bulk: boxing would
// only make matching on them clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Plan(Plan),
    Suppressed {
        rule: String,
        action: Action,
        target: String,
        guard: Guard,
        why: String,
    },
    /// The rule matched but the finding lacks what the action acts on
    /// (say `retune_nic` for a finding that names no device).
    NoTarget {
        rule: String,
        action: Action,
        why: String,
    },
}

/// Plans actions for findings from a checked policy set.
#[derive(Debug, Clone)]
pub struct Planner {
    set: PolicySet,
}

impl Planner {
    pub fn new(set: PolicySet) -> Planner {
        Planner { set }
    }

    pub fn policies(&self) -> &PolicySet {
        &self.set
    }

    /// One decision per rule that fires for the finding (the first match,
    /// plus any later ones that earlier rules let through with `continue`).
    pub fn plan(&self, finding_id: u64, finding: &Finding, ctx: &Context) -> Vec<Decision> {
        let mut out = Vec::new();
        for rule in self.set.rules.iter().filter(|r| !r.escalation_only) {
            if selects(rule, finding, ctx).is_ok() {
                out.push(self.advised(decide(rule, finding_id, finding, ctx)));
                if !rule.continue_ {
                    break;
                }
            }
        }
        out
    }

    /// The next step for a plan that failed: the decision of the rule its
    /// `on_failure` escalates to, for the same finding and under that rule's
    /// own guards (an escalated drain must respect the blast radius too).
    /// `None` when the plan does not escalate.
    pub fn escalate(&self, failed: &Plan, ctx: &Context) -> Option<Decision> {
        let OnFailure::Escalate(next) = &failed.on_failure else {
            return None;
        };
        let rule = self.set.rule(next)?;
        Some(self.advised(decide(rule, failed.finding_id, &failed.finding, ctx)))
    }

    /// In advisory mode every plan is a dry run.
    fn advised(&self, d: Decision) -> Decision {
        match d {
            Decision::Plan(mut p) if self.set.brakes.advisory => {
                p.mode = Mode::DryRun;
                Decision::Plan(p)
            }
            other => other,
        }
    }
}

/// The idempotency key of an action: deterministic in its inputs.
pub fn idempotency_key(finding_id: u64, rule: &str, action: Action, target: &str) -> String {
    format!("f{finding_id}/{rule}/{action}/{target}")
}

/// What an action acts on for this finding, and the parameters it derives
/// from it; an error says what the finding lacks.
pub fn target_for(
    action: Action,
    f: &Finding,
) -> Result<(String, BTreeMap<String, String>), String> {
    let mut derived = BTreeMap::new();
    let target = match action {
        // A replica is the job's engine behind the router; engine findings
        // name only the node the replica runs on.
        Action::RemapRequests => match (&f.job, &f.node) {
            (Some(j), _) => format!("job/{j}"),
            (None, Some(n)) => format!("node/{n}"),
            (None, None) => return Err("the finding names neither a job nor a node".into()),
        },
        Action::RetuneNic => match (&f.node, &f.device) {
            (Some(n), Some(d)) => format!("node/{n}/{d}"),
            (None, _) => return Err("the finding names no node".into()),
            (_, None) => return Err("the finding names no network device".into()),
        },
        // What holds the GPU decides who reclaims it. A job that ended (or
        // no job at all) leaves a process behind with no Slurm job to
        // cancel: the node's executor kills it (`node/N/gpu/G`), after
        // checking on the node that it holds the GPU and belongs to no
        // running job; `job` names the ended job, so that a process of any
        // other job is left alone. A job Slurm still runs is cancelled
        // through Slurm (`job/J`), whose executor checks first that the job
        // is on that node, holds that GPU and is in the state assumed
        // (`node`, `gpu`, `state`). Keel never reclaims on an unknown holder.
        Action::ReclaimZombie => {
            use keel_model::Basis;
            let leftover =
                match f.basis {
                    Some(Basis::JobEnded | Basis::NoJob) => true,
                    Some(Basis::EngineDead | Basis::EngineHung | Basis::JobStalled) => false,
                    Some(Basis::MappingUnknown) => {
                        return Err(
                            "which job holds the GPU is unknown: never reclaimed on a guess".into(),
                        )
                    }
                    Some(Basis::EngineIdle | Basis::NoEngineSignal) => return Err(
                        "the GPU's holder is a running job with a live engine: nothing to reclaim"
                            .into(),
                    ),
                    None => return Err(
                        "the finding does not say what holds the GPU (no basis): never reclaimed"
                            .into(),
                    ),
                };
            if let Some(n) = &f.node {
                derived.insert("node".to_string(), n.to_string());
            }
            if let Some(g) = f.gpu {
                derived.insert("gpu".to_string(), g.to_string());
            }
            if leftover {
                if let Some(i) = f.gpu_instance {
                    return Err(format!(
                        "the finding is about MIG instance {i}: processes of MIG instances are not told apart yet, so a leftover on one is not reclaimed"
                    ));
                }
                let (Some(n), Some(g)) = (&f.node, f.gpu) else {
                    return Err(
                        "a leftover process is reclaimed on its node: the finding names no node and GPU"
                            .into(),
                    );
                };
                if f.basis == Some(Basis::JobEnded) {
                    if let Some(j) = &f.job {
                        derived.insert("job".to_string(), j.to_string());
                    }
                }
                format!("node/{n}/gpu/{g}")
            } else {
                derived.insert("state".to_string(), "RUNNING".to_string());
                match &f.job {
                    Some(j) => format!("job/{j}"),
                    None => {
                        return Err(
                            "the finding names no job: a running job is cancelled through Slurm"
                                .into(),
                        )
                    }
                }
            }
        }
        Action::InjectFault => {
            return Err(
                "inject_fault is an operator's chaos test (`keel chaos inject`), never a rule's"
                    .into(),
            )
        }
        Action::DrainNode | Action::ResumeNode => match &f.node {
            Some(n) => format!("node/{n}"),
            None => return Err("the finding names no node".into()),
        },
        Action::RebalanceRanks => {
            let Some(j) = &f.job else {
                return Err("the finding names no job".into());
            };
            if let Some(n) = &f.node {
                derived.insert("exclude".to_string(), n.to_string());
            }
            if let Some(r) = f.rank {
                derived.insert("rank".to_string(), r.to_string());
            }
            format!("job/{j}")
        }
        Action::Notify => match f.locus() {
            Some(Locus::Rank { job, rank }) => format!("job/{job}/rank/{rank}"),
            Some(Locus::Gpu {
                node,
                gpu,
                instance: None,
            }) => format!("node/{node}/gpu/{gpu}"),
            Some(Locus::Gpu {
                node,
                gpu,
                instance: Some(i),
            }) => format!("node/{node}/gpu/{gpu}/mig/{i}"),
            Some(Locus::Node { node }) => format!("node/{node}"),
            Some(Locus::Job { job }) => format!("job/{job}"),
            Some(Locus::Link { a, b }) => format!("link/{a}/{b}"),
            Some(Locus::Cluster) | None => "cluster".to_string(),
        },
    };
    Ok((target, derived))
}

fn decide(rule: &Rule, finding_id: u64, finding: &Finding, ctx: &Context) -> Decision {
    let (target, derived) = match target_for(rule.action, finding) {
        Ok(t) => t,
        Err(why) => {
            return Decision::NoTarget {
                rule: rule.name.clone(),
                action: rule.action,
                why,
            }
        }
    };
    if let Some((guard, why)) = guards(rule, &target, ctx) {
        return Decision::Suppressed {
            rule: rule.name.clone(),
            action: rule.action,
            target,
            guard,
            why,
        };
    }
    let mut params = rule.params.clone();
    params.extend(derived);
    if rule.action == Action::Notify && !params.contains_key("message") {
        let at = finding
            .locus()
            .map_or("the cluster".into(), |l| l.to_string());
        params.insert(
            "message".into(),
            format!(
                "{} ({}, {}) at {at}",
                finding.kind, finding.cause, finding.severity
            ),
        );
    }
    Decision::Plan(Plan {
        finding_id,
        key: idempotency_key(finding_id, &rule.name, rule.action, &target),
        rule: rule.name.clone(),
        action: rule.action,
        target,
        params,
        mode: rule.mode,
        verify_s: rule.verify_s,
        on_failure: rule.on_failure.clone(),
        finding: finding.clone(),
    })
}

/// The first guard that holds the action back, if any.
fn guards(rule: &Rule, target: &str, ctx: &Context) -> Option<(Guard, String)> {
    let mine = || ctx.actions.iter().filter(|a| a.rule == rule.name);
    // A timestamp ahead of `now` (clock skew between replicas) counts as
    // just now, never as long ago.
    let age = |a: &PastAction| (ctx.now - a.ts).max(0.0);
    if rule.cooldown_s > 0.0 {
        let recent = mine()
            .filter(|a| a.target == target)
            .map(age)
            .filter(|s| *s < rule.cooldown_s)
            .reduce(f64::min);
        if let Some(s) = recent {
            return Some((
                Guard::Cooldown,
                format!(
                    "`{}` acted on {target} {s:.0} s ago (cooldown_s = {})",
                    rule.name, rule.cooldown_s
                ),
            ));
        }
    }
    if let Some(rl) = rule.rate_limit {
        let n = mine().filter(|a| age(a) < rl.per_s).count();
        if n >= rl.max as usize {
            return Some((
                Guard::RateLimit,
                format!(
                    "`{}` acted {n} times in the last {} s (at most {} allowed)",
                    rule.name, rl.per_s, rl.max
                ),
            ));
        }
    }
    if let Some(br) = rule.blast_radius {
        let in_flight: Vec<&PastAction> = mine().filter(|a| a.status.in_flight()).collect();
        let dims = [
            (
                br.max_nodes_share,
                Dim::Node,
                ctx.nodes,
                "nodes",
                "max_nodes_share",
            ),
            (
                br.max_jobs_share,
                Dim::Job,
                ctx.jobs,
                "jobs",
                "max_jobs_share",
            ),
        ];
        for (share, dim, total, noun, key) in dims {
            let (Some(share), Some(new)) = (share, touched(dim, target)) else {
                continue;
            };
            let mut held: BTreeSet<&str> = in_flight
                .iter()
                .filter_map(|a| touched(dim, &a.target))
                .collect();
            let already = held.len();
            held.insert(new);
            let limit = limit(share, total);
            if held.len() > limit {
                let total = if total == 0 {
                    "an unknown number of".to_string()
                } else {
                    total.to_string()
                };
                return Some((
                    Guard::BlastRadius,
                    format!(
                        "`{}` has actions in flight on {already} of {total} {noun}; \
                         {new} would make {}, over {key} = {share} (at most {limit})",
                        rule.name,
                        held.len()
                    ),
                ));
            }
        }
    }
    None
}

#[derive(Clone, Copy)]
enum Dim {
    Node,
    Job,
}

/// The node or job a target acts on, for the blast radius.
fn touched(dim: Dim, target: &str) -> Option<&str> {
    let mut parts = target.split('/');
    let (head, name) = (parts.next()?, parts.next()?);
    match (dim, head) {
        (Dim::Node, "node") | (Dim::Job, "job") => Some(name),
        _ => None,
    }
}

/// How many nodes (jobs) a share allows. Rounded up, like a Kubernetes
/// disruption budget's percentage, so that any share above 0 lets one
/// target be acted on even in a small (or not yet known) cluster; a share
/// of 0 forbids the action outright.
fn limit(share: f64, total: usize) -> usize {
    if share <= 0.0 {
        return 0;
    }
    // The small epsilon keeps 0.25 * 8 at 2 despite float rounding.
    ((share * total as f64 - 1e-9).ceil() as usize).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_round_up_and_zero_forbids() {
        assert_eq!(limit(0.25, 8), 2);
        assert_eq!(limit(0.2, 10), 2);
        assert_eq!(limit(0.1, 3), 1);
        assert_eq!(limit(0.5, 0), 1);
        assert_eq!(limit(0.0, 100), 0);
        assert_eq!(limit(1.0, 4), 4);
    }

    #[test]
    fn targets_name_node_or_job() {
        assert_eq!(touched(Dim::Node, "node/n1/eth0"), Some("n1"));
        assert_eq!(touched(Dim::Job, "node/n1"), None);
        assert_eq!(touched(Dim::Job, "job/j7"), Some("j7"));
        assert_eq!(touched(Dim::Node, "cluster"), None);
    }
}

//! The controller leader's loop over the mitigation ledger, sans-IO.
//!
//! Each turn the leader shows [`steward`] what its replicated state holds
//! (open findings, every ledger entry) and the time; it answers with the
//! steps to take: plans to commit, transitions to commit, commands to send.
//! Everything it decides follows from the ledger, never from memory of
//! earlier turns, so a new leader that looks at the same ledger carries on
//! exactly where the old one stopped: a planned action is planned once
//! (its key is deterministic), an action dispatched but never acknowledged
//! is dispatched again under the same key (the executor answers "already
//! done"), and a verified one is left alone.

use crate::plan::{ActionStatus, Context, Decision, PastAction, Plan, Planner};
use crate::rule::{Mode, OnFailure};
use keel_model::{Action, Finding, Timestamp};
use std::collections::{BTreeMap, BTreeSet};

/// The verification window of a rule that names none.
pub const DEFAULT_VERIFY_S: f64 = 60.0;

/// A finding as the ledger's loop sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenFinding {
    pub id: u64,
    pub finding: Finding,
    /// When the controller committed it.
    pub opened: Timestamp,
    pub closed: Option<Timestamp>,
}

/// One ledger entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub rule: String,
    pub action: Action,
    pub target: String,
    pub params: BTreeMap<String, String>,
    pub finding: Option<u64>,
    pub status: ActionStatus,
    pub mode: Mode,
    pub verify_s: Option<f64>,
    pub on_failure: OnFailure,
    pub planned_at: Timestamp,
    /// When the status last changed.
    pub since: Timestamp,
}

/// What the leader knows this turn.
#[derive(Debug, Clone, Default)]
pub struct World {
    pub now: Timestamp,
    pub nodes: usize,
    pub jobs: usize,
    /// job -> tenant, for jobs whose tenant is known.
    pub tenants: BTreeMap<String, String>,
    /// Open findings, and closed ones that ledger entries refer to.
    pub findings: Vec<OpenFinding>,
    pub ledger: Vec<Entry>,
    /// Keys this leader itself committed as dispatched in its term: those it
    /// sends; any other dispatched key it dispatches again first, so that
    /// the re-send is in the audit trail.
    pub dispatched_by_me: BTreeSet<String>,
    /// The brakes above every rule, as committed.
    pub brakes: Brakes,
}

/// Brakes above every rule: committed in the replicated state, so that
/// every leader obeys them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Brakes {
    /// `keel pause`: nothing is sent, rolled back or escalated; findings are
    /// still planned (and wait), verification still watches.
    pub paused: bool,
    /// The circuit breaker tripped: actions of `auto` rules wait for a
    /// person (`keel action approve`) until `keel resume`.
    pub tripped: bool,
    pub breaker: Breaker,
}

/// The circuit breaker over all rules: at most this much of the cluster
/// acted on per window, whichever rules act. Past it, it trips.
#[derive(Debug, Clone, PartialEq)]
pub struct Breaker {
    /// Share of the cluster's nodes (0..1) acted on per window.
    pub max_nodes_share: f64,
    /// Share of the cluster's jobs (0..1) acted on per window.
    pub max_jobs_share: f64,
    /// The window, seconds.
    pub window_s: f64,
    /// Targets always allowed per window, however small the cluster (a
    /// share of a 2-node cluster would otherwise stop the first action).
    pub min_targets: usize,
}

impl Default for Breaker {
    /// Half the nodes or jobs in 5 minutes, at least 3: the quarantine
    /// bound of NVIDIA's NVSentinel (50 % of nodes per 5 minutes).
    fn default() -> Self {
        Breaker {
            max_nodes_share: 0.5,
            max_jobs_share: 0.5,
            window_s: 300.0,
            min_targets: 3,
        }
    }
}

/// One thing to do.
// A plan is much larger than the other steps, but a turn yields a handful
// of steps that are moved once, as with `Decision`.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Commit this plan to the ledger.
    Plan { plan: Plan, reason: String },
    /// Commit a transition of `key`.
    Move {
        key: String,
        to: ActionStatus,
        detail: String,
    },
    /// Send the dispatched action to its executor (again, if it was before).
    Send { key: String },
    /// Ask the executor to undo the failed action.
    Rollback { key: String },
    /// A rule matched but did not plan: a guard held it back, or the finding
    /// lacks what the action acts on.
    Held {
        finding: u64,
        rule: String,
        why: String,
    },
    /// Commit that the circuit breaker tripped: from then on actions wait
    /// for a person.
    Trip { why: String },
}

/// The steps for this turn, in the order they should be taken.
pub fn steward(planner: &Planner, w: &World) -> Vec<Step> {
    let findings: BTreeMap<u64, &OpenFinding> = w.findings.iter().map(|f| (f.id, f)).collect();
    let keys: BTreeSet<&str> = w.ledger.iter().map(|e| e.key.as_str()).collect();
    let mut ctx = Context {
        now: w.now,
        duration_s: 0.0,
        nodes: w.nodes,
        jobs: w.jobs,
        tenant: None,
        actions: w.ledger.iter().map(past).collect(),
    };
    let mut out = Vec::new();
    let mut turn = Turn::new(w, &findings);
    for e in &w.ledger {
        advance(
            planner, w, e, &findings, &keys, &mut ctx, &mut turn, &mut out,
        );
    }
    let acted: BTreeSet<(u64, &str)> = w
        .ledger
        .iter()
        .filter_map(|e| Some((e.finding?, e.rule.as_str())))
        .collect();
    for f in w.findings.iter().filter(|f| f.closed.is_none()) {
        ctx.duration_s = (w.now - f.opened).max(0.0);
        ctx.tenant = f
            .finding
            .job
            .as_ref()
            .and_then(|j| w.tenants.get(j.as_str()).cloned());
        for d in planner.plan(f.id, &f.finding, &ctx) {
            if acted.contains(&(f.id, rule_of(&d))) {
                continue;
            }
            let why = format!(
                "{} ({}) lasting {:.0} s",
                f.finding.kind, f.finding.cause, ctx.duration_s
            );
            take(d, f.id, why, &keys, &mut ctx, &mut out);
        }
    }
    out
}

fn rule_of(d: &Decision) -> &str {
    match d {
        Decision::Plan(p) => &p.rule,
        Decision::Suppressed { rule, .. } | Decision::NoTarget { rule, .. } => rule,
    }
}

/// Turns a decision into a step; a plan counts against the guards of the
/// plans after it in the same turn.
fn take(
    d: Decision,
    finding: u64,
    why: String,
    keys: &BTreeSet<&str>,
    ctx: &mut Context,
    out: &mut Vec<Step>,
) {
    match d {
        Decision::Plan(plan) => {
            if keys.contains(plan.key.as_str()) {
                return;
            }
            ctx.actions.push(PastAction {
                rule: plan.rule.clone(),
                target: plan.target.clone(),
                action: plan.action,
                ts: ctx.now,
                status: ActionStatus::Planned,
            });
            let reason = format!("rule `{}` ({}): {why}", plan.rule, plan.mode);
            out.push(Step::Plan { plan, reason });
        }
        Decision::Suppressed {
            rule, guard, why, ..
        } => out.push(Step::Held {
            finding,
            rule,
            why: format!("{guard}: {why}"),
        }),
        Decision::NoTarget { rule, why, .. } => out.push(Step::Held { finding, rule, why }),
    }
}

fn past(e: &Entry) -> PastAction {
    PastAction {
        rule: e.rule.clone(),
        target: e.target.clone(),
        action: e.action,
        ts: e.planned_at,
        status: e.status,
    }
}

/// What the brakes let through this turn: the nodes and jobs acted on
/// within the breaker's window (grown by what this turn dispatches).
struct Turn {
    paused: bool,
    tripped: bool,
    nodes: BTreeSet<String>,
    jobs: BTreeSet<String>,
    max_nodes: usize,
    max_jobs: usize,
}

impl Turn {
    fn new(w: &World, findings: &BTreeMap<u64, &OpenFinding>) -> Turn {
        let b = &w.brakes.breaker;
        let bound =
            |share: f64, total: usize| ((share * total as f64).ceil() as usize).max(b.min_targets);
        let mut t = Turn {
            paused: w.brakes.paused,
            tripped: w.brakes.tripped,
            nodes: BTreeSet::new(),
            jobs: BTreeSet::new(),
            max_nodes: bound(b.max_nodes_share, w.nodes),
            max_jobs: bound(b.max_jobs_share, w.jobs),
        };
        for e in &w.ledger {
            let acted = !matches!(
                e.status,
                ActionStatus::Planned
                    | ActionStatus::Approved
                    | ActionStatus::Recorded
                    | ActionStatus::Rejected
                    | ActionStatus::Cancelled
            );
            if acted && w.now - e.since <= b.window_s && e.action != Action::Notify {
                let (n, j) = Turn::places(e, findings);
                t.nodes.extend(n);
                t.jobs.extend(j);
            }
        }
        t
    }

    /// The node and job an action acts on, from its finding.
    fn places(
        e: &Entry,
        findings: &BTreeMap<u64, &OpenFinding>,
    ) -> (Option<String>, Option<String>) {
        let f = e.finding.and_then(|id| findings.get(&id));
        (
            f.and_then(|f| f.finding.node.as_ref().map(|n| n.to_string())),
            f.and_then(|f| f.finding.job.as_ref().map(|j| j.to_string())),
        )
    }

    /// Whether dispatching `e` keeps the breaker closed; counts it if so.
    fn admit(&mut self, e: &Entry, findings: &BTreeMap<u64, &OpenFinding>) -> Result<(), String> {
        if e.action == Action::Notify {
            return Ok(());
        }
        let (n, j) = Turn::places(e, findings);
        let nodes =
            self.nodes.len() + usize::from(n.as_ref().is_some_and(|n| !self.nodes.contains(n)));
        let jobs =
            self.jobs.len() + usize::from(j.as_ref().is_some_and(|j| !self.jobs.contains(j)));
        if nodes > self.max_nodes {
            return Err(format!(
                "acting on {} would make {nodes} nodes acted on within the window (at most {})",
                e.key, self.max_nodes
            ));
        }
        if jobs > self.max_jobs {
            return Err(format!(
                "acting on {} would make {jobs} jobs acted on within the window (at most {})",
                e.key, self.max_jobs
            ));
        }
        self.nodes.extend(n);
        self.jobs.extend(j);
        Ok(())
    }
}

#[allow(clippy::too_many_arguments)]
fn advance(
    planner: &Planner,
    w: &World,
    e: &Entry,
    findings: &BTreeMap<u64, &OpenFinding>,
    keys: &BTreeSet<&str>,
    ctx: &mut Context,
    turn: &mut Turn,
    out: &mut Vec<Step>,
) {
    let key = e.key.clone();
    let mv = |to, detail: String| Step::Move {
        key: key.clone(),
        to,
        detail,
    };
    // Paused: nothing goes out (first sends, re-sends, rollbacks,
    // escalations); the ledger is still watched for verification.
    if turn.paused
        && matches!(
            e.status,
            ActionStatus::Planned
                | ActionStatus::Approved
                | ActionStatus::Dispatched
                | ActionStatus::Failed
        )
        && !(e.status == ActionStatus::Planned && e.mode == Mode::DryRun)
        // The revert of a fault injection is never held back.
        && !(e.action == Action::InjectFault && e.status == ActionStatus::Failed)
    {
        return;
    }
    match e.status {
        // A fault injection acts for its `duration_s` from its
        // acknowledgement (the ledger's time, not this replica's memory),
        // then is rolled back; one that failed, or that a person cancelled
        // while it acted, is rolled back at once (its executor reverts
        // whatever part of it was applied, and its own deadline holds even
        // if no rollback ever comes).
        ActionStatus::Acknowledged if e.action == Action::InjectFault => {
            if w.now - e.since >= injection_s(e) {
                out.push(Step::Rollback { key })
            }
        }
        ActionStatus::Failed if e.action == Action::InjectFault => out.push(Step::Rollback { key }),
        ActionStatus::Planned => match e.mode {
            Mode::Auto if turn.tripped => {}
            Mode::Auto => match turn.admit(e, findings) {
                Ok(()) => out.push(mv(ActionStatus::Dispatched, "sent to its executor".into())),
                Err(why) => {
                    turn.tripped = true;
                    out.push(Step::Trip { why });
                }
            },
            Mode::Approve => {}
            Mode::DryRun => out.push(mv(
                ActionStatus::Recorded,
                format!(
                    "dry run: would {} {}{}",
                    e.action,
                    e.target,
                    params_text(&e.params)
                ),
            )),
        },
        ActionStatus::Approved => {
            // A person approved it: the breaker does not hold it back, but
            // it counts.
            let _ = turn.admit(e, findings);
            out.push(mv(
                ActionStatus::Dispatched,
                "approved; sent to its executor".into(),
            ))
        }
        ActionStatus::Dispatched if w.dispatched_by_me.contains(&e.key) => {
            out.push(Step::Send { key })
        }
        ActionStatus::Dispatched => out.push(mv(
            ActionStatus::Dispatched,
            "sent again under the same key: dispatched by an earlier leader, never acknowledged"
                .into(),
        )),
        ActionStatus::Acknowledged => {
            let Some(id) = e.finding else {
                out.push(mv(
                    ActionStatus::Verified,
                    "acknowledged; no finding to watch".into(),
                ));
                return;
            };
            let verify = e.verify_s.unwrap_or(DEFAULT_VERIFY_S);
            match findings.get(&id) {
                Some(f) if f.closed.is_none() => {
                    let waited = w.now - e.since;
                    if waited >= verify {
                        out.push(mv(
                            ActionStatus::Failed,
                            format!(
                                "finding {id} still open {waited:.0} s after the acknowledgement \
                                 (verify_s = {verify})"
                            ),
                        ));
                    }
                }
                Some(f) => {
                    let at = f.closed.unwrap_or(w.now);
                    out.push(mv(
                        ActionStatus::Verified,
                        format!(
                            "finding {id} cleared {:.1} s after the acknowledgement",
                            (at - e.since).max(0.0)
                        ),
                    ));
                }
                // The finding was compacted away: nothing left to watch.
                None => out.push(mv(
                    ActionStatus::Verified,
                    format!("finding {id} no longer held"),
                )),
            }
        }
        ActionStatus::Failed => match &e.on_failure {
            OnFailure::None => {}
            OnFailure::Rollback => out.push(Step::Rollback { key }),
            OnFailure::Escalate(_) => {
                let Some(f) = e.finding.and_then(|id| findings.get(&id)) else {
                    return;
                };
                let plan = Plan {
                    finding_id: f.id,
                    rule: e.rule.clone(),
                    action: e.action,
                    target: e.target.clone(),
                    params: e.params.clone(),
                    mode: e.mode,
                    key: e.key.clone(),
                    verify_s: e.verify_s,
                    on_failure: e.on_failure.clone(),
                    finding: f.finding.clone(),
                };
                if let Some(d) = planner.escalate(&plan, ctx) {
                    let why = format!("escalated: `{}` failed", e.rule);
                    take(d, f.id, why, keys, ctx, out);
                }
            }
        },
        ActionStatus::Recorded
        | ActionStatus::Verified
        | ActionStatus::RolledBack
        | ActionStatus::Rejected
        | ActionStatus::Cancelled => {}
    }
}

/// How long an injection acts: its `duration_s`, 0 when unreadable (the
/// ledger refuses such an injection; one that got in anyway is reverted).
pub fn injection_s(e: &Entry) -> f64 {
    e.params
        .get("duration_s")
        .and_then(|d| d.parse::<f64>().ok())
        .filter(|d| d.is_finite() && *d > 0.0)
        .unwrap_or(0.0)
}

fn params_text(p: &BTreeMap<String, String>) -> String {
    if p.is_empty() {
        return String::new();
    }
    let kv: Vec<String> = p.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(" ({})", kv.join(", "))
}

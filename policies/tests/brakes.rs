//! Brakes above every rule: `keel pause` stops a leader (and the next one:
//! the pause is in the replicated state the loop reads), the circuit
//! breaker trips across rules, and a rejected or cancelled action is never
//! sent. Each test would fail without its brake.

use keel_model::{Cause, Finding, FindingKind, Severity};
use keel_policies::{
    check, steward, ActionStatus, Breaker, Entry, OpenFinding, Planner, Step, World,
};

const RULES: &str = r#"
[[rule]]
name = "remap"
action = "remap_requests"
mode = "auto"
[rule.match]
kind = "tp_straggler"
[rule.params]
weight = 32

[[rule]]
name = "reclaim"
action = "reclaim_zombie"
mode = "auto"
[rule.match]
kind = "gpu_squatter"
"#;

fn planner() -> Planner {
    Planner::new(check("brakes.toml", RULES).unwrap_or_else(|e| panic!("{e:?}")))
}

fn finding(id: u64, kind: FindingKind, job: &str, node: &str) -> OpenFinding {
    OpenFinding {
        id,
        finding: Finding {
            ts: 100.0,
            kind,
            cause: Cause::Host,
            severity: Severity::Warning,
            confidence: 0.9,
            job: Some(job.into()),
            node: Some(node.into()),
            rank: Some(1),
            gpu: Some(1),
            device: None,
            evidence: vec![],
            // A running job's squatter: reclaimed through Slurm, on `job/J`,
            // so that both rules act on jobs.
            basis: (kind == FindingKind::GpuSquatter).then_some(keel_model::Basis::EngineDead),
            gpu_instance: None,
            related: Vec::new(),
        },
        opened: 100.0,
        closed: None,
    }
}

/// Turns of the loop with every step committed at once.
fn turns(p: &Planner, w: &mut World, n: usize) -> Vec<Step> {
    let mut all = Vec::new();
    for _ in 0..n {
        for s in steward(p, w) {
            match &s {
                Step::Plan { plan, .. } => w.ledger.push(Entry {
                    key: plan.key.clone(),
                    rule: plan.rule.clone(),
                    action: plan.action,
                    target: plan.target.clone(),
                    params: plan.params.clone(),
                    finding: Some(plan.finding_id),
                    status: ActionStatus::Planned,
                    mode: plan.mode,
                    verify_s: plan.verify_s,
                    on_failure: plan.on_failure.clone(),
                    planned_at: w.now,
                    since: w.now,
                }),
                Step::Move { key, to, .. } => {
                    let e = w.ledger.iter_mut().find(|e| &e.key == key).unwrap();
                    e.status = *to;
                    e.since = w.now;
                    if *to == ActionStatus::Dispatched {
                        w.dispatched_by_me.insert(key.clone());
                    }
                }
                Step::Trip { .. } => w.brakes.tripped = true,
                _ => {}
            }
            all.push(s);
        }
        w.now += 1.0;
    }
    all
}

fn status(w: &World, key: &str) -> ActionStatus {
    w.ledger.iter().find(|e| e.key == key).unwrap().status
}

const REMAP: &str = "f1/remap/remap_requests/job/j1";
const RECLAIM: &str = "f2/reclaim/reclaim_zombie/job/j2";

fn world() -> World {
    World {
        now: 100.0,
        nodes: 8,
        jobs: 8,
        findings: vec![
            finding(1, FindingKind::TpStraggler, "j1", "n1"),
            finding(2, FindingKind::GpuSquatter, "j2", "n2"),
        ],
        ..World::default()
    }
}

#[test]
fn the_circuit_breaker_trips_across_two_rules() {
    let p = planner();
    let mut w = world();
    // At most one node and one job acted on per 5 minutes.
    w.brakes.breaker = Breaker {
        max_nodes_share: 0.1,
        max_jobs_share: 0.1,
        window_s: 300.0,
        min_targets: 1,
    };
    let steps = turns(&p, &mut w, 4);
    assert_eq!(
        status(&w, REMAP),
        ActionStatus::Dispatched,
        "the first acts"
    );
    assert_eq!(
        status(&w, RECLAIM),
        ActionStatus::Planned,
        "the second rule's action waits"
    );
    assert!(w.brakes.tripped);
    let trips = steps
        .iter()
        .filter(|s| matches!(s, Step::Trip { why } if why.contains(RECLAIM)))
        .count();
    assert_eq!(trips, 1, "tripped once, naming the action: {steps:?}");
    // Tripped, it waits for a person; an approval still goes through.
    turns(&p, &mut w, 3);
    assert_eq!(status(&w, RECLAIM), ActionStatus::Planned);
    w.ledger
        .iter_mut()
        .find(|e| e.key == RECLAIM)
        .unwrap()
        .status = ActionStatus::Approved;
    turns(&p, &mut w, 1);
    assert_eq!(status(&w, RECLAIM), ActionStatus::Dispatched);
}

#[test]
fn without_the_breaker_both_act() {
    // The same world with the default breaker (half the cluster, at least
    // 3): both actions go, so the test above fails without its brake.
    let p = planner();
    let mut w = world();
    turns(&p, &mut w, 4);
    assert_eq!(status(&w, REMAP), ActionStatus::Dispatched);
    assert_eq!(status(&w, RECLAIM), ActionStatus::Dispatched);
    assert!(!w.brakes.tripped);
}

#[test]
fn pause_stops_this_leader_and_the_next_one() {
    let p = planner();
    let mut w = world();
    w.brakes.paused = true;
    let steps = turns(&p, &mut w, 4);
    assert!(
        w.ledger.iter().all(|e| e.status == ActionStatus::Planned),
        "planned, never sent: {:?}",
        w.ledger
    );
    assert!(!steps.iter().any(|s| matches!(s, Step::Send { .. })));
    // A new leader reads the same committed pause: it sends nothing either,
    // not even what the old leader had dispatched.
    let mut next = w.clone();
    next.dispatched_by_me.clear();
    next.ledger[0].status = ActionStatus::Dispatched;
    let steps = turns(&p, &mut next, 3);
    assert!(
        !steps
            .iter()
            .any(|s| matches!(s, Step::Send { .. } | Step::Move { .. })),
        "{steps:?}"
    );
    // `keel resume`: it carries on.
    next.brakes.paused = false;
    let steps = turns(&p, &mut next, 3);
    assert!(steps.iter().any(|s| matches!(s, Step::Send { .. })));
}

#[test]
fn rejected_and_cancelled_actions_are_never_sent() {
    let p = planner();
    let mut w = world();
    w.brakes.paused = true;
    turns(&p, &mut w, 2);
    assert!(ActionStatus::Planned.may_become(ActionStatus::Rejected));
    assert!(ActionStatus::Approved.may_become(ActionStatus::Cancelled));
    assert!(!ActionStatus::Dispatched.may_become(ActionStatus::Cancelled));
    for (e, to) in w
        .ledger
        .iter_mut()
        .zip([ActionStatus::Rejected, ActionStatus::Cancelled])
    {
        e.status = to;
    }
    w.brakes.paused = false;
    let steps = turns(&p, &mut w, 5);
    assert!(
        !steps
            .iter()
            .any(|s| matches!(s, Step::Send { .. } | Step::Move { .. } | Step::Plan { .. })),
        "a refused action came back: {steps:?}"
    );
}

#[test]
fn the_policy_file_sets_the_breaker_and_advisory_mode() {
    let text = format!(
        "[brakes]\nadvisory = true\nmax_nodes_share = 0.2\nwindow_s = 600\nmin_targets = 2\n{RULES}"
    );
    let set = check("advisory.toml", &text).unwrap_or_else(|e| panic!("{e:?}"));
    assert!(set.brakes().advisory);
    assert_eq!(set.brakes().breaker.max_nodes_share, 0.2);
    assert_eq!(set.brakes().breaker.window_s, 600.0);
    assert_eq!(set.brakes().breaker.min_targets, 2);
    // Advisory: every rule's action is a dry run, recorded and never sent.
    let p = Planner::new(set);
    let mut w = world();
    let steps = turns(&p, &mut w, 4);
    assert!(w.ledger.iter().all(|e| e.status == ActionStatus::Recorded));
    assert!(!steps.iter().any(|s| matches!(s, Step::Send { .. })));
    // A mistake in [brakes] is reported with its place.
    let bad = check(
        "bad.toml",
        &format!("[brakes]\nmax_nodes_share = 2\n{RULES}"),
    )
    .unwrap_err();
    assert!(bad[0].to_string().contains("bad.toml:2:"), "{}", bad[0]);
}

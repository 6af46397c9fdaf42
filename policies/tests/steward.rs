//! The leader's loop over the ledger: approval, dry runs, verification,
//! escalation, rollback and a new leader carrying on, each shown acting on a
//! small ledger that applies the loop's steps the way the controller's
//! replicated state does.

use keel_model::{Cause, Finding, FindingKind, Severity};
use keel_policies::{check, steward, ActionStatus, Entry, Mode, OpenFinding, Planner, Step, World};

const RULES: &str = r#"
[[rule]]
name = "remap"
action = "remap_requests"
mode = "MODE"
verify_s = 30
on_failure = "escalate:drain"
[rule.match]
kind = "tp_straggler"
[rule.params]
weight = 32

[[rule]]
name = "drain"
action = "drain_node"
mode = "auto"
escalation_only = true
on_failure = "rollback"
rate_limit = "1/600s"
[rule.params]
reason = "keel: straggler survived remap"

[[rule]]
name = "squatter"
action = "reclaim_zombie"
mode = "auto"
rate_limit = "1/600s"
[rule.match]
kind = "gpu_squatter"
"#;

fn planner(mode: &str) -> Planner {
    let text = RULES.replace("MODE", mode);
    Planner::new(check("test.toml", &text).unwrap_or_else(|e| panic!("{e:?}")))
}

fn finding(id: u64, kind: FindingKind, job: &str) -> OpenFinding {
    OpenFinding {
        id,
        finding: Finding {
            basis: (kind == FindingKind::GpuSquatter).then_some(keel_model::Basis::JobEnded),
            gpu_instance: None,
            related: Vec::new(),
            ts: 100.0,
            kind,
            cause: Cause::Host,
            severity: Severity::Warning,
            confidence: 0.9,
            job: Some(job.into()),
            node: Some("n03".into()),
            rank: Some(5),
            gpu: Some(5),
            device: None,
            evidence: vec![],
        },
        opened: 100.0,
        closed: None,
    }
}

/// The ledger part of the controller's state machine, applying steps as
/// committed proposals would; `sent` records what reached an executor.
struct Ledger {
    world: World,
    sent: Vec<(String, bool)>,
}

impl Ledger {
    fn new(findings: Vec<OpenFinding>) -> Ledger {
        Ledger {
            world: World {
                now: 100.0,
                nodes: 4,
                jobs: 4,
                findings,
                ..World::default()
            },
            sent: Vec::new(),
        }
    }

    fn entry(&self, key: &str) -> &Entry {
        self.world.ledger.iter().find(|e| e.key == key).unwrap()
    }

    fn status(&self, key: &str) -> ActionStatus {
        self.entry(key).status
    }

    fn set(&mut self, key: &str, to: ActionStatus) {
        let now = self.world.now;
        let e = self.world.ledger.iter_mut().find(|e| e.key == key).unwrap();
        e.status = to;
        e.since = now;
    }

    /// One turn: every step is committed at once (a leader with a healthy
    /// quorum); held ones are returned.
    fn turn(&mut self, planner: &Planner) -> Vec<Step> {
        let steps = steward(planner, &self.world);
        let mut held = Vec::new();
        for s in steps {
            match s {
                Step::Plan { plan, .. } => self.world.ledger.push(Entry {
                    key: plan.key,
                    rule: plan.rule,
                    action: plan.action,
                    target: plan.target,
                    params: plan.params,
                    finding: Some(plan.finding_id),
                    status: ActionStatus::Planned,
                    mode: plan.mode,
                    verify_s: plan.verify_s,
                    on_failure: plan.on_failure,
                    planned_at: self.world.now,
                    since: self.world.now,
                }),
                Step::Move { key, to, .. } => {
                    if to == ActionStatus::Dispatched {
                        self.world.dispatched_by_me.insert(key.clone());
                    }
                    self.set(&key, to);
                }
                Step::Send { key } => self.sent.push((key, false)),
                Step::Rollback { key } => self.sent.push((key, true)),
                Step::Trip { .. } => self.world.brakes.tripped = true,
                h @ Step::Held { .. } => held.push(h),
            }
        }
        held
    }

    fn close(&mut self, id: u64) {
        let now = self.world.now;
        let f = self.world.findings.iter_mut().find(|f| f.id == id).unwrap();
        f.closed = Some(now);
    }
}

const REMAP: &str = "f1/remap/remap_requests/job/j1";
const DRAIN: &str = "f1/drain/drain_node/node/n03";

#[test]
fn an_auto_action_is_planned_dispatched_sent_and_verified_when_its_finding_clears() {
    let p = planner("auto");
    let mut l = Ledger::new(vec![finding(1, FindingKind::TpStraggler, "j1")]);
    assert!(l.turn(&p).is_empty());
    assert_eq!(l.status(REMAP), ActionStatus::Planned);
    assert_eq!(l.entry(REMAP).params["weight"], "32");
    l.turn(&p);
    assert_eq!(l.status(REMAP), ActionStatus::Dispatched);
    l.turn(&p);
    assert_eq!(l.sent, vec![(REMAP.to_string(), false)]);
    // The executor acknowledges; the finding clears inside the window.
    l.set(REMAP, ActionStatus::Acknowledged);
    l.world.now += 10.0;
    l.turn(&p);
    assert_eq!(l.status(REMAP), ActionStatus::Acknowledged);
    l.close(1);
    l.turn(&p);
    assert_eq!(l.status(REMAP), ActionStatus::Verified);
    // Nothing more happens, however long we wait: planned once.
    l.world.now += 1000.0;
    l.turn(&p);
    assert_eq!(l.world.ledger.len(), 1);
    assert_eq!(l.sent.len(), 1);
}

#[test]
fn approval_holds_an_action_until_an_operator_approves_it() {
    let p = planner("approve");
    let mut l = Ledger::new(vec![finding(1, FindingKind::TpStraggler, "j1")]);
    for _ in 0..5 {
        l.turn(&p);
        l.world.now += 10.0;
    }
    assert_eq!(l.status(REMAP), ActionStatus::Planned);
    assert!(l.sent.is_empty(), "sent without approval: {:?}", l.sent);
    // `keel action approve` commits this transition.
    l.set(REMAP, ActionStatus::Approved);
    l.turn(&p);
    l.turn(&p);
    assert_eq!(l.status(REMAP), ActionStatus::Dispatched);
    assert_eq!(l.sent, vec![(REMAP.to_string(), false)]);
}

#[test]
fn a_dry_run_is_recorded_and_never_sent() {
    let p = planner("dry_run");
    let mut l = Ledger::new(vec![finding(1, FindingKind::TpStraggler, "j1")]);
    for _ in 0..4 {
        l.turn(&p);
    }
    assert_eq!(l.status(REMAP), ActionStatus::Recorded);
    assert_eq!(l.entry(REMAP).mode, Mode::DryRun);
    assert!(l.sent.is_empty());
    let steps = steward(&p, &l.world);
    assert!(steps.is_empty(), "{steps:?}");
}

#[test]
fn a_finding_still_open_after_the_window_fails_the_action_and_escalates() {
    let p = planner("auto");
    let mut l = Ledger::new(vec![finding(1, FindingKind::TpStraggler, "j1")]);
    l.turn(&p);
    l.turn(&p);
    l.set(REMAP, ActionStatus::Acknowledged);
    l.world.now += 29.0;
    l.turn(&p);
    assert_eq!(l.status(REMAP), ActionStatus::Acknowledged);
    l.world.now += 2.0;
    l.turn(&p);
    assert_eq!(l.status(REMAP), ActionStatus::Failed);
    l.turn(&p);
    assert_eq!(l.status(DRAIN), ActionStatus::Planned);
    assert_eq!(
        l.entry(DRAIN).params["reason"],
        "keel: straggler survived remap"
    );
    // Escalated once, however many turns follow.
    for _ in 0..3 {
        l.turn(&p);
    }
    assert_eq!(l.world.ledger.len(), 2);
    // The drain fails too, and its rule rolls it back.
    l.set(DRAIN, ActionStatus::Failed);
    l.turn(&p);
    assert!(l.sent.contains(&(DRAIN.to_string(), true)), "{:?}", l.sent);
}

#[test]
fn a_new_leader_dispatches_again_under_the_same_key_and_plans_nothing_new() {
    let p = planner("auto");
    let mut l = Ledger::new(vec![finding(1, FindingKind::TpStraggler, "j1")]);
    l.turn(&p);
    l.turn(&p);
    assert_eq!(l.status(REMAP), ActionStatus::Dispatched);
    // The leader dies before the acknowledgement; its successor never
    // dispatched anything itself.
    l.world.dispatched_by_me.clear();
    l.sent.clear();
    let steps = steward(&p, &l.world);
    assert_eq!(
        steps,
        vec![Step::Move {
            key: REMAP.into(),
            to: ActionStatus::Dispatched,
            detail: "sent again under the same key: dispatched by an earlier leader, \
                     never acknowledged"
                .into(),
        }]
    );
    l.turn(&p);
    l.turn(&p);
    assert_eq!(l.sent, vec![(REMAP.to_string(), false)]);
    assert_eq!(l.world.ledger.len(), 1);
}

#[test]
fn plans_of_one_turn_count_against_each_others_guards() {
    let p = planner("auto");
    let mut l = Ledger::new(vec![
        finding(1, FindingKind::GpuSquatter, "j1"),
        finding(2, FindingKind::GpuSquatter, "j2"),
    ]);
    let held = l.turn(&p);
    assert_eq!(l.world.ledger.len(), 1, "{:?}", l.world.ledger);
    match held.as_slice() {
        [Step::Held { finding, rule, why }] => {
            assert_eq!((*finding, rule.as_str()), (2, "squatter"));
            assert!(why.starts_with("rate_limit"), "{why}");
        }
        other => panic!("expected one held step, got {other:?}"),
    }
}

//! The state machine's own tests: retries, transitions, dedup, snapshots.

use super::*;

fn p(client: &str, seq: u64, command: Command) -> Vec<u8> {
    Proposal {
        client: client.into(),
        seq,
        command,
    }
    .encode()
}

fn plan(key: &str) -> Command {
    Command::PlanAction {
        key: key.into(),
        action: Action::ReclaimZombie,
        target: "job/4242".into(),
        params: BTreeMap::new(),
        finding: None,
        ts: 1.0,
        reason: "gpu_squatter on n02 gpu 1".into(),
        handling: Handling::default(),
    }
}

fn to(key: &str, to: ActionStatus) -> Command {
    Command::Transition {
        key: key.into(),
        to,
        ts: 2.0,
        detail: String::new(),
    }
}

fn job(name: &str, state: &str, ts: f64) -> Command {
    let record = serde_json::from_value(serde_json::json!({
        "t": "job", "ts": ts, "job": name, "state": state,
        "nodes": ["n1"], "ranks": {"n1": [0]}, "gpus": {"0": 0}
    }))
    .unwrap();
    Command::Job { record }
}

#[test]
fn ended_jobs_stay_known_and_the_oldest_are_forgotten() {
    let mut s = State::default();
    s.apply(1, &p("op", 1, job("live", "RUNNING", 0.0)));
    s.apply(2, &p("op", 2, job("j0", "RUNNING", 1.0)));
    let mut end = job("j0", "FAILED", 2.0);
    if let Command::Job { record } = &mut end {
        record.ranks.clear();
        record.nodes.clear();
    }
    s.apply(3, &p("op", 3, end));
    assert!(s.jobs["j0"].state.is_finished());
    assert_eq!(s.jobs["j0"].ranks.len(), 1, "placement kept");
    for i in 0..ENDED_JOBS_KEPT as u64 + 5 {
        let seq = 10 + i;
        s.apply(
            seq,
            &p(
                "op",
                seq,
                job(&format!("e{i}"), "COMPLETED", 10.0 + i as f64),
            ),
        );
    }
    let ended = s.jobs.values().filter(|j| j.state.is_finished()).count();
    assert_eq!(ended, ENDED_JOBS_KEPT);
    assert!(
        !s.jobs.contains_key("j0"),
        "the oldest ended job is forgotten first"
    );
    assert!(
        s.jobs.contains_key("live"),
        "running jobs are never forgotten"
    );
}

#[test]
fn a_retried_proposal_is_applied_once() {
    let mut s = State::default();
    let first = s.apply(
        1,
        &p(
            "c1",
            7,
            Command::ApplyPolicy {
                name: "default".into(),
                document: "x".into(),
            },
        ),
    );
    assert_eq!(first, Outcome::PolicyVersion(1));
    let again = s.apply(
        2,
        &p(
            "c1",
            7,
            Command::ApplyPolicy {
                name: "default".into(),
                document: "x".into(),
            },
        ),
    );
    assert_eq!(
        again,
        Outcome::Duplicate(Box::new(Outcome::PolicyVersion(1)))
    );
    assert_eq!(s.policies["default"].len(), 1);
    // an earlier seq that commits late is still applied (pipelining)...
    assert_eq!(s.apply(3, &p("c1", 6, plan("k"))), Outcome::Applied);
    // ...but one older than the remembered window is refused
    for seq in 8..8 + CLIENT_WINDOW as u64 {
        s.apply(
            seq,
            &p(
                "c1",
                seq,
                Command::RegisterNode {
                    node: "n".into(),
                    gpus: 8,
                    nics: vec![],
                },
            ),
        );
    }
    let stale = s.apply(5000, &p("c1", 1, plan("k2")));
    assert!(
        matches!(stale, Outcome::Rejected(Rejection::Stale { .. })),
        "{stale:?}"
    );
    assert_eq!(s.ledger.len(), 1);
}

#[test]
fn an_idempotency_key_plans_one_action_whoever_proposes_it() {
    let mut s = State::default();
    assert_eq!(s.apply(1, &p("leader-1", 1, plan("k1"))), Outcome::Applied);
    assert_eq!(
        s.apply(2, &p("leader-2", 1, plan("k1"))),
        Outcome::AlreadyPlanned("k1".into())
    );
    assert_eq!(s.ledger.len(), 1);
    assert_eq!(s.audit.len(), 1);
}

#[test]
fn the_ledger_follows_the_allowed_transitions_and_audits_each() {
    let mut s = State::default();
    s.apply(1, &p("c", 1, plan("k")));
    assert_eq!(
        s.apply(2, &p("c", 2, to("k", ActionStatus::Dispatched))),
        Outcome::Applied
    );
    // a new leader re-sends under the same key
    assert_eq!(
        s.apply(3, &p("c2", 1, to("k", ActionStatus::Dispatched))),
        Outcome::Applied
    );
    assert_eq!(s.in_flight().count(), 1);
    assert_eq!(
        s.apply(4, &p("c", 3, to("k", ActionStatus::Acknowledged))),
        Outcome::Applied
    );
    assert_eq!(s.in_flight().count(), 0);
    let back = s.apply(5, &p("c", 4, to("k", ActionStatus::Planned)));
    assert!(matches!(
        back,
        Outcome::Rejected(Rejection::BadTransition { .. })
    ));
    assert_eq!(
        s.apply(6, &p("c", 5, to("k", ActionStatus::Verified))),
        Outcome::Applied
    );
    assert_eq!(s.ledger["k"].dispatches, 2);
    let trail: Vec<ActionStatus> = s.audit.iter().map(|a| a.to).collect();
    use ActionStatus::*;
    assert_eq!(
        trail,
        vec![Planned, Dispatched, Dispatched, Acknowledged, Verified]
    );
}

#[test]
fn replaying_applied_entries_changes_nothing_and_snapshots_round_trip() {
    let mut s = State::default();
    s.apply(1, &p("c", 1, plan("k")));
    s.apply(2, &p("c", 2, to("k", ActionStatus::Dispatched)));
    let snap = s.snapshot();
    s.apply(2, &p("c", 2, to("k", ActionStatus::Acknowledged)));
    assert_eq!(s.snapshot(), snap, "an old index is ignored");
    assert_eq!(State::restore(&snap).unwrap(), s);
}

#[test]
fn garbage_is_rejected_deterministically() {
    let mut s = State::default();
    assert!(matches!(
        s.apply(1, b"\xff\x00garbage"),
        Outcome::Rejected(Rejection::Undecodable(_))
    ));
    assert_eq!(s.applied, 1);
}

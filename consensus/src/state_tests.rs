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

fn finding(node: &str) -> Finding {
    serde_json::from_value(serde_json::json!({
        "kind": "nic_saturation", "ts": 1.0, "job": "j", "node": node, "device": "eth0",
        "cause": "network", "severity": "warning", "confidence": 0.9, "evidence": []
    }))
    .unwrap()
}

#[test]
fn a_session_numbers_its_proposals_and_is_never_refused_while_it_counts_up() {
    let mut s = State::default();
    let mut index = 0;
    for seq in 1..=5_000u64 {
        index += 1;
        let o = s.apply(
            index,
            &p(
                "cli/abc",
                seq,
                Command::RegisterNode {
                    node: format!("n{seq}").as_str().into(),
                    gpus: 8,
                    nics: vec![],
                },
            ),
        );
        assert_eq!(o, Outcome::Applied, "seq {seq}");
    }
    assert_eq!(s.nodes.len(), 5_000);
    // a retry inside the window gets its first outcome; one far behind is an error
    index += 1;
    let retry = s.apply(index, &p("cli/abc", 4_500, plan("x")));
    assert_eq!(retry, Outcome::Duplicate(Box::new(Outcome::Applied)));
    index += 1;
    let stale = s.apply(index, &p("cli/abc", 10, plan("x")));
    assert!(matches!(stale, Outcome::Rejected(Rejection::Stale { .. })));
    assert!(s.ledger.is_empty());
}

#[test]
fn sessions_are_bounded_and_the_idlest_goes_first() {
    let mut s = State::default();
    for i in 0..CLIENT_SESSIONS_KEPT as u64 + 10 {
        s.apply(
            i + 1,
            &p(
                &format!("cli/{i}"),
                1,
                Command::RegisterNode {
                    node: "n".into(),
                    gpus: 1,
                    nics: vec![],
                },
            ),
        );
    }
    assert_eq!(s.sessions(), CLIENT_SESSIONS_KEPT);
    assert!(!s.clients.contains_key("cli/0"), "the idlest left first");
    assert!(s
        .clients
        .contains_key(&format!("cli/{}", CLIENT_SESSIONS_KEPT + 9)));
    // idle sessions leave at an Expire
    let n = s.apply(
        100_000,
        &p(
            "leader",
            1,
            Command::Expire {
                before: 0.0,
                sessions_before: 5_000,
            },
        ),
    );
    assert!(matches!(n, Outcome::Expired(k) if k > 4_000), "{n:?}");
    assert!(s.sessions() < CLIENT_SESSIONS_KEPT - 4_000);
}

#[test]
fn retention_moves_settled_records_to_the_history_and_keeps_what_is_in_use() {
    let mut s = State::default();
    let mut i = 0;
    let mut go = |s: &mut State, c: Command| {
        i += 1;
        s.apply(i, &p("op", i, c))
    };
    assert_eq!(
        go(
            &mut s,
            Command::OpenFinding {
                finding: finding("n1"),
                opened: 10.0
            }
        ),
        Outcome::FindingOpened(1)
    );
    assert_eq!(
        go(
            &mut s,
            Command::OpenFinding {
                finding: finding("n2"),
                opened: 10.0
            }
        ),
        Outcome::FindingOpened(2)
    );
    go(&mut s, Command::CloseFinding { id: 1, ts: 20.0 });
    go(&mut s, Command::CloseFinding { id: 2, ts: 20.0 });
    // finding 1's action failed long ago; finding 2's is still in flight
    for (key, f) in [("a1", 1), ("a2", 2)] {
        let mut c = plan(key);
        if let Command::PlanAction { finding: fi, .. } = &mut c {
            *fi = Some(f);
        }
        go(&mut s, c);
    }
    go(&mut s, to("a1", ActionStatus::Failed));
    go(&mut s, to("a2", ActionStatus::Dispatched));
    assert!(s.take_expired().is_empty());
    let digest = s.digest();
    // nothing is old enough yet
    assert!(!s.expirable(1.0, 0));
    assert_eq!(s.digest(), digest);
    let out = go(
        &mut s,
        Command::Expire {
            before: 1_000.0,
            sessions_before: 0,
        },
    );
    assert!(matches!(out, Outcome::Expired(_)), "{out:?}");
    assert!(!s.findings.contains_key(&1), "closed and unused: gone");
    assert!(
        s.findings.contains_key(&2),
        "an action in flight still reads it"
    );
    assert!(!s.ledger.contains_key("a1"));
    assert!(s.ledger.contains_key("a2"));
    assert!(s.audit.is_empty(), "audit events before `before` left");
    let history = s.take_expired();
    let kinds: Vec<&str> = history.iter().map(|h| h.kind()).collect();
    assert!(kinds.contains(&"finding") && kinds.contains(&"action") && kinds.contains(&"audit"));
    assert!(s.take_expired().is_empty(), "drained once");
    // the history is not part of the replicated state
    let restored = State::restore(&s.snapshot()).unwrap();
    assert_eq!(restored.digest(), s.digest());
}

#[test]
fn retention_is_due_only_when_something_is_old_and_not_too_often() {
    let r = crate::retention::Retention {
        keep_s: 100.0,
        every_s: 10.0,
        session_idle_entries: 1_000,
    };
    let mut s = State::default();
    assert_eq!(r.due(&s, 1_000.0, 0.0), None, "nothing to expire");
    s.apply(
        1,
        &p(
            "op",
            1,
            Command::OpenFinding {
                finding: finding("n1"),
                opened: 1.0,
            },
        ),
    );
    s.apply(2, &p("op", 2, Command::CloseFinding { id: 1, ts: 5.0 }));
    assert_eq!(r.due(&s, 50.0, 0.0), None, "closed, but not old enough");
    assert!(matches!(
        r.due(&s, 1_000.0, 0.0),
        Some(Command::Expire { before, .. }) if before == 900.0
    ));
    assert_eq!(r.due(&s, 1_000.0, 995.0), None, "checked 5 s ago");
}

#[test]
fn bounded_collections_refuse_with_a_reason() {
    let mut s = State::default();
    for i in 0..POLICIES_MAX as u64 {
        s.apply(
            i + 1,
            &p(
                "op",
                i + 1,
                Command::ApplyPolicy {
                    name: format!("p{i}"),
                    document: "x".into(),
                },
            ),
        );
    }
    let o = s.apply(
        1_000,
        &p(
            "op",
            1_000,
            Command::ApplyPolicy {
                name: "one-more".into(),
                document: "x".into(),
            },
        ),
    );
    assert!(matches!(o, Outcome::Rejected(Rejection::Full { ref what, .. }) if what == "policies"));
    // versions beyond the bound move to the history
    for v in 0..POLICY_VERSIONS_KEPT as u64 + 3 {
        s.apply(
            2_000 + v,
            &p(
                "op",
                2_000 + v,
                Command::ApplyPolicy {
                    name: "p0".into(),
                    document: format!("v{v}"),
                },
            ),
        );
    }
    assert_eq!(s.policies["p0"].len(), POLICY_VERSIONS_KEPT);
    assert_eq!(s.take_expired().len(), 4);
}

#[test]
fn brakes_are_committed_with_who_and_why_and_resume_clears_both() {
    let mut s = State::default();
    s.apply(
        1,
        &p(
            "approver/alice",
            1,
            Command::Pause {
                reason: "maintenance".into(),
                ts: 5.0,
            },
        ),
    );
    let paused = s.brakes.paused.clone().unwrap();
    assert_eq!(
        (paused.by.as_str(), paused.reason.as_str(), paused.index),
        ("approver/alice", "maintenance", 1)
    );
    s.apply(
        2,
        &p(
            "steward/1",
            1,
            Command::Trip {
                reason: "too many nodes".into(),
                ts: 6.0,
            },
        ),
    );
    s.apply(
        3,
        &p(
            "steward/2",
            1,
            Command::Trip {
                reason: "again".into(),
                ts: 7.0,
            },
        ),
    );
    assert_eq!(
        s.brakes.tripped.as_ref().unwrap().reason,
        "too many nodes",
        "the first trip stays"
    );
    let restored = State::restore(&s.snapshot()).unwrap();
    assert_eq!(restored.brakes, s.brakes, "brakes survive a snapshot");
    s.apply(4, &p("approver/alice", 2, Command::Resume { ts: 8.0 }));
    assert_eq!(s.brakes, Brakes::default());
}

#[test]
fn a_finding_naming_an_open_one_is_linked_to_it_both_ways() {
    let mut s = State::default();
    let nic = finding("n1");
    let mut straggler: Finding = serde_json::from_value(serde_json::json!({
        "kind": "tp_straggler", "ts": 2.0, "job": "j", "node": "n1", "rank": 3, "device": "eth0",
        "cause": "network", "severity": "warning", "confidence": 0.9, "evidence": []
    }))
    .unwrap();
    straggler.related = vec![keel_model::Related::to(&nic)];
    let open = |f: Finding| Command::OpenFinding {
        finding: f,
        opened: 0.0,
    };
    assert_eq!(s.apply(1, &p("c", 1, open(nic))), Outcome::FindingOpened(1));
    assert_eq!(
        s.apply(2, &p("c", 2, open(straggler.clone()))),
        Outcome::FindingOpened(2)
    );
    let by_id = |s: &State, id| {
        s.open_findings()
            .find(|e| e.id == id)
            .unwrap()
            .related
            .clone()
    };
    assert_eq!(by_id(&s, 2), vec![1]);
    assert_eq!(by_id(&s, 1), vec![2]);
    // A name that matches no open finding links nothing.
    let mut other = straggler;
    other.rank = Some(4);
    other.related[0].node = Some("n9".into());
    assert_eq!(
        s.apply(3, &p("c", 3, open(other.clone()))),
        Outcome::FindingOpened(3)
    );
    assert!(by_id(&s, 3).is_empty());
    // More names than RELATED_MAX are refused, not stored.
    other.rank = Some(5);
    other.related = vec![other.related[0].clone(); RELATED_MAX + 1];
    assert!(matches!(
        s.apply(4, &p("c", 4, open(other))),
        Outcome::Rejected(Rejection::Full { .. })
    ));
}

//! A fault injection in the leader's loop: sent like any auto action,
//! rolled back when its `duration_s` has passed since the acknowledgement
//! (the ledger's time), at once when it failed or was cancelled while it
//! acted (even with automation paused), and never planned by a rule.

use keel_model::Action;
use keel_policies::{check, steward, ActionStatus, Entry, Mode, OnFailure, Planner, Step, World};
use std::collections::BTreeMap;

fn entry(status: ActionStatus, since: f64) -> Entry {
    Entry {
        key: "chaos/n02/host/1".into(),
        rule: "operator".into(),
        action: Action::InjectFault,
        target: "node/n02".into(),
        params: BTreeMap::from([
            ("cause".to_string(), "host".to_string()),
            ("duration_s".to_string(), "10".to_string()),
        ]),
        finding: None,
        status,
        mode: Mode::Auto,
        verify_s: None,
        on_failure: OnFailure::Rollback,
        planned_at: 90.0,
        since,
    }
}

fn steps(e: Entry, now: f64, paused: bool) -> Vec<Step> {
    let planner = Planner::new(check("none", "").unwrap_or_else(|e| panic!("{e:?}")));
    let mut w = World {
        now,
        nodes: 4,
        ledger: vec![e],
        ..Default::default()
    };
    w.brakes.paused = paused;
    steward(&planner, &w)
}

#[test]
fn an_injection_is_sent_then_rolled_back_when_its_time_is_up() {
    assert!(matches!(
        steps(entry(ActionStatus::Planned, 90.0), 91.0, false).as_slice(),
        [Step::Move {
            to: ActionStatus::Dispatched,
            ..
        }]
    ));
    // Acknowledged at 100: acting until 110, no step before.
    assert!(steps(entry(ActionStatus::Acknowledged, 100.0), 109.9, false).is_empty());
    // No finding to verify: it is never taken for verified.
    assert_eq!(
        steps(entry(ActionStatus::Acknowledged, 100.0), 110.0, false),
        vec![Step::Rollback {
            key: "chaos/n02/host/1".into()
        }]
    );
}

#[test]
fn a_failed_or_cancelled_injection_is_reverted_even_when_paused() {
    assert_eq!(
        steps(entry(ActionStatus::Failed, 100.0), 101.0, true),
        vec![Step::Rollback {
            key: "chaos/n02/host/1".into()
        }]
    );
    // Paused: a planned injection waits.
    assert!(steps(entry(ActionStatus::Planned, 90.0), 91.0, true).is_empty());
    assert!(steps(entry(ActionStatus::RolledBack, 100.0), 500.0, false).is_empty());
}

#[test]
fn no_rule_plans_an_injection() {
    let doc = "[[rule]]\nname = \"x\"\naction = \"inject_fault\"\nmode = \"auto\"\n[rule.match]\nkind = \"tp_straggler\"\n";
    let Err(errs) = check("p.toml", doc) else {
        panic!("a rule naming inject_fault was accepted")
    };
    assert!(
        errs.iter()
            .any(|e| e.to_string().contains("keel chaos inject")),
        "{errs:?}"
    );
}

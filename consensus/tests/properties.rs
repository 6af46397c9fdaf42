//! The replicated state machine under arbitrary proposals (and arbitrary
//! bytes): it never panics, every collection stays within its named bound,
//! and every replica that applies the same entries holds the same state.

use keel_consensus::state::{Command, Proposal, State, FINDINGS_MAX, JOBS_MAX, LEDGER_MAX};
use keel_model::{
    Action, ActionStatus, Basis, Cause, Finding, FindingKind, JobRecord, JobState, Severity,
};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(-1.0),
        Just(0.0),
        1.7e9..1.9e9f64,
        any::<f64>(),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just("k".to_string()), Just("".to_string()), ".{0,40}"]
}

const STATUSES: [ActionStatus; 10] = [
    ActionStatus::Planned,
    ActionStatus::Approved,
    ActionStatus::Recorded,
    ActionStatus::Dispatched,
    ActionStatus::Acknowledged,
    ActionStatus::Verified,
    ActionStatus::Failed,
    ActionStatus::RolledBack,
    ActionStatus::Rejected,
    ActionStatus::Cancelled,
];

prop_compose! {
    fn finding()(kind in 0..FindingKind::ALL.len(), cause in 0..Cause::ALL.len(), ts in any_f64(),
                 conf in any_f64(), job in proptest::option::of(text()), node in proptest::option::of(text()),
                 gpu in proptest::option::of(any::<u32>()), rank in proptest::option::of(any::<u32>()))
                 -> Finding {
        Finding { ts, kind: FindingKind::ALL[kind], cause: Cause::ALL[cause], severity: Severity::Warning,
            confidence: conf, job: job.map(|j| j.as_str().into()), node: node.map(|n| n.as_str().into()),
            rank, gpu, device: None, evidence: vec![], basis: Some(Basis::JobEnded), gpu_instance: None,
            related: vec![] }
    }
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (text(), any::<u32>()).prop_map(|(n, g)| Command::RegisterNode {
            node: n.as_str().into(),
            gpus: g,
            nics: vec![]
        }),
        (text(), any_f64(), any::<bool>()).prop_map(|(j, ts, ended)| {
            let state = if ended {
                JobState::Failed
            } else {
                JobState::Running
            };
            Command::Job {
                record: JobRecord::state_only(&j, state, ts),
            }
        }),
        (finding(), any_f64())
            .prop_map(|(finding, opened)| Command::OpenFinding { finding, opened }),
        (any::<u64>(), any_f64()).prop_map(|(id, ts)| Command::CloseFinding { id: id % 8, ts }),
        (any_f64(), any::<u64>()).prop_map(|(before, s)| Command::Expire {
            before,
            sessions_before: s
        }),
        (text(), any_f64()).prop_map(|(reason, ts)| Command::Pause { reason, ts }),
        any_f64().prop_map(|ts| Command::Resume { ts }),
        (text(), text()).prop_map(|(name, document)| Command::ApplyPolicy { name, document }),
        (
            text(),
            0..Action::ALL.len(),
            text(),
            proptest::option::of(0..8u64),
            any_f64()
        )
            .prop_map(|(key, a, target, finding, ts)| Command::PlanAction {
                key,
                action: Action::ALL[a],
                target,
                params: BTreeMap::new(),
                finding,
                ts,
                reason: String::new(),
                handling: Default::default(),
            }),
        (text(), 0..STATUSES.len(), any_f64(), text()).prop_map(|(key, to, ts, detail)| {
            Command::Transition {
                key,
                to: STATUSES[to],
                ts,
                detail,
            }
        }),
    ]
}

fn entry() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        8 => (text(), 0..4u64, command()).prop_map(|(client, seq, command)| Proposal { client, seq, command }.encode()),
        1 => proptest::collection::vec(any::<u8>(), 0..64),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn any_entries_apply_without_panic_within_bounds_and_alike(
        entries in proptest::collection::vec(entry(), 0..120)
    ) {
        let (mut a, mut b) = (State::default(), State::default());
        for (i, e) in entries.iter().enumerate() {
            let index = i as u64 + 1;
            let oa = a.apply(index, e);
            let ob = b.apply(index, e);
            prop_assert_eq!(format!("{oa:?}"), format!("{ob:?}"));
        }
        prop_assert!(a.jobs.len() <= JOBS_MAX);
        prop_assert!(a.findings.len() <= FINDINGS_MAX);
        prop_assert!(a.ledger.len() <= LEDGER_MAX);
        prop_assert_eq!(a.digest(), b.digest());
        // A snapshot restores to the same state.
        let back = State::restore(&a.snapshot()).expect("a snapshot restores");
        prop_assert_eq!(back.digest(), a.digest());
    }
}

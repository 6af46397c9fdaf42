//! The shipped `deploy/policies/default.toml`: it checks clean, every kind of
//! the taxonomy has a rule, and the kinds keel detects lead to the actions
//! the operators' notes in the file promise.

use keel_model::{Action, Cause, Finding, FindingKind, Severity};
use keel_policies::{check_file, Context, Decision, Mode, OnFailure, Plan, Planner};
use std::path::Path;

fn default_planner() -> Planner {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/policies/default.toml");
    match check_file(&path) {
        Ok(set) => {
            let warnings: Vec<String> = set.warnings().iter().map(|w| w.to_string()).collect();
            assert!(warnings.is_empty(), "{}", warnings.join("\n"));
            Planner::new(set)
        }
        Err(errs) => panic!(
            "{}",
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

fn finding(kind: FindingKind, cause: Cause) -> Finding {
    Finding {
        basis: None,
        gpu_instance: None,
        related: Vec::new(),
        ts: 1000.0,
        kind,
        cause,
        severity: Severity::Critical,
        confidence: 0.9,
        job: Some("llama-70b".into()),
        node: Some("gpu-node-3".into()),
        rank: Some(5),
        gpu: Some(5),
        device: Some("ens1f0".into()),
        evidence: vec![],
    }
}

fn ctx() -> Context {
    Context {
        now: 2000.0,
        duration_s: 600.0,
        nodes: 8,
        jobs: 4,
        tenant: None,
        actions: vec![],
    }
}

fn first_plan(p: &Planner, f: &Finding) -> Plan {
    match p.plan(1, f, &ctx()).into_iter().next() {
        Some(Decision::Plan(plan)) => plan,
        other => panic!("{} ({}): expected a plan, got {other:?}", f.kind, f.cause),
    }
}

#[test]
fn every_kind_is_named_by_a_rule_and_fires_one() {
    let p = default_planner();
    for &kind in FindingKind::ALL {
        let named = p
            .policies()
            .rules()
            .iter()
            .any(|r| !r.escalation_only && r.selectors.kinds.contains(&kind));
        assert!(named, "no rule names {kind}");
        for &cause in Cause::ALL {
            let f = finding(kind, cause);
            first_plan(&p, &f);
            // A weak finding (little confidence, least severe) still
            // reaches a person rather than falling through, once it has
            // lasted as long as the acting rules wait (5 s for stragglers,
            // so that a notify does not go out ahead of every remap).
            let mut weak = f.clone();
            weak.confidence = 0.1;
            weak.severity = Severity::Info;
            let weak_ctx = Context {
                duration_s: 5.0,
                ..ctx()
            };
            assert!(
                matches!(p.plan(1, &weak, &weak_ctx).first(), Some(Decision::Plan(_))),
                "weak {kind} ({cause}) fires nothing"
            );
        }
    }
}

#[test]
fn stragglers_remap_then_drain_or_retune_by_cause() {
    let p = default_planner();
    for cause in [Cause::Pcie, Cause::Host, Cause::Gpu] {
        let plan = first_plan(&p, &finding(FindingKind::TpStraggler, cause));
        assert_eq!(
            (plan.action, plan.mode, plan.verify_s, plan.target.as_str()),
            (
                Action::RemapRequests,
                Mode::Auto,
                Some(30.0),
                "job/llama-70b"
            ),
            "{cause}"
        );
        assert_eq!(
            plan.on_failure,
            OnFailure::Escalate("straggler-drain".into())
        );
        let Some(Decision::Plan(next)) = p.escalate(&plan, &ctx()) else {
            panic!("remap escalates to a drain");
        };
        assert_eq!(
            (next.action, next.target.as_str()),
            (Action::DrainNode, "node/gpu-node-3")
        );
    }
    let net = first_plan(&p, &finding(FindingKind::TpStraggler, Cause::Network));
    assert_eq!(net.action, Action::RetuneNic);
    assert_eq!(net.target, "node/gpu-node-3/ens1f0");
    assert_eq!(net.on_failure, OnFailure::Rollback);
}

#[test]
fn squatters_are_reclaimed_by_what_the_conclusion_rests_on() {
    use keel_model::Basis;
    let p = default_planner();
    let with = |basis: Option<Basis>| {
        let mut f = finding(FindingKind::GpuSquatter, Cause::Engine);
        f.basis = basis;
        first_plan(&p, &f)
    };
    // Nothing should hold the GPU: reclaimed at once, by the node's
    // executor (a leftover process; no Slurm job to cancel).
    for b in [Basis::JobEnded, Basis::NoJob] {
        let plan = with(Some(b));
        assert_eq!(
            (plan.action, plan.mode, plan.target.as_str()),
            (Action::ReclaimZombie, Mode::Auto, "node/gpu-node-3/gpu/5"),
            "{b:?}"
        );
    }
    // A job Slurm still calls RUNNING: cancelled through Slurm, only once
    // a person approves.
    for b in [Basis::EngineDead, Basis::EngineHung, Basis::JobStalled] {
        let plan = with(Some(b));
        assert_eq!(
            (plan.action, plan.mode, plan.target.as_str()),
            (Action::ReclaimZombie, Mode::Approve, "job/llama-70b"),
            "{b:?}"
        );
    }
    // An unknown holder, or a finding that says nothing: a person is told.
    assert_eq!(with(Some(Basis::MappingUnknown)).action, Action::Notify);
    assert_eq!(with(None).action, Action::Notify);
    // An idle reservation is never reclaimed.
    let mut idle = finding(FindingKind::IdleGpuReservation, Cause::Engine);
    idle.basis = Some(Basis::EngineIdle);
    assert_eq!(first_plan(&p, &idle).action, Action::Notify);
}

#[test]
fn engine_and_network_findings() {
    let p = default_planner();
    let mut engine = finding(FindingKind::KvCacheSaturation, Cause::Engine);
    engine.job = None;
    let kv = first_plan(&p, &engine);
    assert_eq!(
        (kv.action, kv.target.as_str()),
        (Action::RemapRequests, "node/gpu-node-3")
    );

    engine.kind = FindingKind::EngineStall;
    let stall = first_plan(&p, &engine);
    assert_eq!(
        (stall.action, stall.params["weight"].as_str()),
        (Action::RemapRequests, "0")
    );
    let Some(Decision::Plan(drain)) = p.escalate(&stall, &ctx()) else {
        panic!("a stall that stays is drained");
    };
    assert_eq!(
        (drain.action, drain.mode),
        (Action::DrainNode, Mode::Approve)
    );

    let storm = first_plan(&p, &finding(FindingKind::RetransmitStorm, Cause::Network));
    assert_eq!(storm.action, Action::Notify);
    let Some(Decision::Plan(drain)) = p.escalate(&storm, &ctx()) else {
        panic!("a storm that stays is drained");
    };
    assert_eq!(drain.action, Action::DrainNode);

    let nic = first_plan(&p, &finding(FindingKind::NicSaturation, Cause::Network));
    assert_eq!(
        (nic.action, nic.target.as_str()),
        (Action::RetuneNic, "node/gpu-node-3/ens1f0")
    );
}

#[test]
fn an_unknown_cause_only_ever_reaches_a_person() {
    // However sure, severe and long-lasting the finding, and whatever its
    // kind: with no cause decided, no rule changes anything.
    let p = default_planner();
    for &kind in FindingKind::ALL {
        let mut f = finding(kind, Cause::Unknown);
        f.confidence = 0.99;
        f.basis = Some(keel_model::Basis::JobEnded);
        let plans = p.plan(1, &f, &ctx());
        assert!(!plans.is_empty(), "{kind} (unknown) fires nothing");
        for d in plans {
            match d {
                Decision::Plan(plan) => assert_eq!(
                    plan.action,
                    Action::Notify,
                    "{kind} (unknown) acts: {plan:?}"
                ),
                other => panic!("{kind} (unknown): {other:?}"),
            }
        }
    }
    let straggler = first_plan(&p, &finding(FindingKind::TpStraggler, Cause::Unknown));
    assert_eq!(
        (straggler.action, straggler.target.as_str()),
        (Action::Notify, "job/llama-70b/rank/5")
    );
}

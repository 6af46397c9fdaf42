//! The planner (with the shipped default policy) under arbitrary findings
//! and contexts: it never panics, and never plans a reclaim on a finding
//! that does not say what holds the GPU.

use keel_model::{Action, Basis, Cause, Finding, FindingKind, Severity};
use keel_policies::{check, Context, Decision, PastAction, Planner};
use proptest::prelude::*;

fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(-1.0),
        0.0..1.0f64,
        any::<f64>()
    ]
}

const BASES: [Option<Basis>; 5] = [
    None,
    Some(Basis::JobEnded),
    Some(Basis::NoJob),
    Some(Basis::MappingUnknown),
    Some(Basis::EngineIdle),
];

prop_compose! {
    fn finding()(kind in 0..FindingKind::ALL.len(), cause in 0..Cause::ALL.len(), ts in any_f64(),
                 conf in any_f64(), job in proptest::option::of(".{0,12}"), node in proptest::option::of(".{0,12}"),
                 gpu in proptest::option::of(any::<u32>()), rank in proptest::option::of(any::<u32>()),
                 basis in 0..BASES.len(), instance in proptest::option::of(any::<u32>())) -> Finding {
        Finding { ts, kind: FindingKind::ALL[kind], cause: Cause::ALL[cause], severity: Severity::Critical,
            confidence: conf, job: job.map(|j| j.as_str().into()), node: node.map(|n| n.as_str().into()),
            rank, gpu, device: None, evidence: vec![], basis: BASES[basis], gpu_instance: instance,
            related: vec![] }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn the_default_policy_plans_anything_without_panic(
        f in finding(), now in any_f64(), duration in any_f64(), nodes in any::<usize>(), jobs in any::<usize>()
    ) {
        let doc = include_str!("../../deploy/policies/default.toml");
        let planner = Planner::new(check("default.toml", doc).expect("the default policy checks"));
        let ctx = Context { now, duration_s: duration, nodes, jobs, tenant: None, actions: Vec::<PastAction>::new() };
        for d in planner.plan(1, &f, &ctx) {
            if let Decision::Plan(p) = d {
                if p.action == Action::ReclaimZombie {
                    prop_assert!(matches!(f.basis, Some(Basis::JobEnded | Basis::NoJob)), "{p:?} on {f:?}");
                    prop_assert!(f.gpu_instance.is_none());
                }
            }
        }
    }
}

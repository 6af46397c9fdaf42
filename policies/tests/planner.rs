//! The planner's guards, modes, keys, `when` filtering and escalation, each
//! shown acting: every test here fails if its feature is taken away.

use keel_model::{Action, Cause, Finding, FindingKind, Severity};
use keel_policies::{
    check, ActionStatus, Context, Decision, Guard, Mode, OnFailure, PastAction, Plan, Planner,
};

fn planner(rules: &str) -> Planner {
    match check("test.toml", rules) {
        Ok(set) => Planner::new(set),
        Err(errs) => panic!(
            "{}",
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

fn straggler(job: &str, node: &str, cause: Cause) -> Finding {
    Finding {
        basis: None,
        gpu_instance: None,
        related: Vec::new(),
        ts: 100.0,
        kind: FindingKind::TpStraggler,
        cause,
        severity: Severity::Warning,
        confidence: 0.9,
        job: Some(job.into()),
        node: Some(node.into()),
        rank: Some(3),
        gpu: Some(3),
        device: Some("eth1".into()),
        evidence: vec![],
    }
}

fn ctx(now: f64, actions: Vec<PastAction>) -> Context {
    Context {
        now,
        duration_s: 60.0,
        nodes: 10,
        jobs: 10,
        tenant: Some("research".into()),
        actions,
    }
}

fn past(rule: &str, target: &str, ts: f64, status: ActionStatus) -> PastAction {
    PastAction {
        rule: rule.into(),
        target: target.into(),
        action: Action::DrainNode,
        ts,
        status,
    }
}

fn only_plan(ds: Vec<Decision>) -> Plan {
    match <[Decision; 1]>::try_from(ds) {
        Ok([Decision::Plan(p)]) => p,
        other => panic!("expected one plan, got {other:?}"),
    }
}

fn only_suppressed(ds: Vec<Decision>) -> (Guard, String) {
    match <[Decision; 1]>::try_from(ds) {
        Ok([Decision::Suppressed { guard, why, .. }]) => (guard, why),
        other => panic!("expected one suppression, got {other:?}"),
    }
}

const DRAIN: &str = r#"
[[rule]]
name = "drain"
action = "drain_node"
mode = "auto"
GUARD
[rule.match]
kind = "tp_straggler"
[rule.params]
reason = "test"
"#;

fn drain_with(guard: &str) -> Planner {
    planner(&DRAIN.replace("GUARD", guard))
}

#[test]
fn cooldown_holds_back_the_same_target_only_within_the_window() {
    let p = drain_with("cooldown_s = 300");
    let f = straggler("j1", "n1", Cause::Pcie);
    let before = vec![past("drain", "node/n1", 1000.0, ActionStatus::Verified)];
    let (guard, why) = only_suppressed(p.plan(7, &f, &ctx(1100.0, before.clone())));
    assert_eq!(guard, Guard::Cooldown);
    assert!(
        why.contains("node/n1") && why.contains("100 s ago"),
        "{why}"
    );
    // Another node is not in cooldown; neither is this one once it passed.
    let other = straggler("j1", "n2", Cause::Pcie);
    assert_eq!(
        only_plan(p.plan(8, &other, &ctx(1100.0, before.clone()))).target,
        "node/n2"
    );
    assert_eq!(
        only_plan(p.plan(7, &f, &ctx(1301.0, before))).target,
        "node/n1"
    );
    // Without the guard the same history plans again at once.
    let p = drain_with("");
    let before = vec![past("drain", "node/n1", 1000.0, ActionStatus::Verified)];
    only_plan(p.plan(7, &f, &ctx(1100.0, before)));
}

#[test]
fn rate_limit_counts_every_target_of_the_rule() {
    let p = drain_with("rate_limit = \"2/600s\"");
    let history = vec![
        past("drain", "node/a", 1000.0, ActionStatus::Verified),
        past("drain", "node/b", 1200.0, ActionStatus::Failed),
        // Another rule's actions do not count against this one.
        past("other", "node/c", 1250.0, ActionStatus::Verified),
    ];
    let f = straggler("j1", "n9", Cause::Pcie);
    let (guard, why) = only_suppressed(p.plan(1, &f, &ctx(1300.0, history.clone())));
    assert_eq!(guard, Guard::RateLimit);
    assert!(why.contains("2 times"), "{why}");
    // Once the first leaves the window, one more fits.
    only_plan(p.plan(1, &f, &ctx(1601.0, history)));
}

#[test]
fn rate_limit_table_form_is_the_same() {
    let p = drain_with("rate_limit = { max = 1, per_s = 60 }");
    let f = straggler("j1", "n9", Cause::Pcie);
    let history = vec![past("drain", "node/a", 1000.0, ActionStatus::Planned)];
    assert_eq!(
        only_suppressed(p.plan(1, &f, &ctx(1030.0, history.clone()))).0,
        Guard::RateLimit
    );
    only_plan(p.plan(1, &f, &ctx(1061.0, history)));
}

#[test]
fn blast_radius_caps_the_share_of_nodes_in_flight() {
    // 10 nodes, 20%: two nodes at once.
    let p = drain_with("blast_radius = { max_nodes_share = 0.2 }");
    let f = straggler("j1", "n3", Cause::Pcie);
    let one = vec![past("drain", "node/n1", 1000.0, ActionStatus::Dispatched)];
    assert_eq!(
        only_plan(p.plan(1, &f, &ctx(1010.0, one))).target,
        "node/n3"
    );
    let two = vec![
        past("drain", "node/n1", 1000.0, ActionStatus::Dispatched),
        past("drain", "node/n2", 1001.0, ActionStatus::Acknowledged),
    ];
    let (guard, why) = only_suppressed(p.plan(1, &f, &ctx(1010.0, two.clone())));
    assert_eq!(guard, Guard::BlastRadius);
    assert!(why.contains("2 of 10 nodes"), "{why}");
    // A node already being acted on adds nothing to the radius.
    let again = straggler("j1", "n2", Cause::Pcie);
    only_plan(p.plan(2, &again, &ctx(1010.0, two)));
    // Finished actions are no longer in flight.
    let done = vec![
        past("drain", "node/n1", 1000.0, ActionStatus::Verified),
        past("drain", "node/n2", 1001.0, ActionStatus::RolledBack),
    ];
    only_plan(p.plan(1, &f, &ctx(1010.0, done)));
}

#[test]
fn blast_radius_on_jobs() {
    let p = planner(
        r#"
[[rule]]
name = "remap"
action = "remap_requests"
mode = "auto"
blast_radius = { max_jobs_share = 0.1 }
[rule.match]
kind = "tp_straggler"
[rule.params]
weight = 16
"#,
    );
    let history = vec![past("remap", "job/other", 1.0, ActionStatus::Dispatched)];
    let (guard, _) =
        only_suppressed(p.plan(1, &straggler("j1", "n1", Cause::Host), &ctx(2.0, history)));
    assert_eq!(guard, Guard::BlastRadius);
}

#[test]
fn modes_travel_with_the_plan_and_approve_is_the_default() {
    let rule = |mode: &str| {
        format!(
            "[[rule]]\nname = \"r\"\naction = \"notify\"\n{mode}\n[rule.match]\nkind = \"tp_straggler\"\n"
        )
    };
    let f = straggler("j1", "n1", Cause::Pcie);
    let mode_of = |text: String| only_plan(planner(&text).plan(1, &f, &ctx(0.0, vec![]))).mode;
    assert_eq!(mode_of(rule("")), Mode::Approve);
    assert_eq!(mode_of(rule("mode = \"approve\"")), Mode::Approve);
    assert_eq!(mode_of(rule("mode = \"auto\"")), Mode::Auto);
    assert_eq!(mode_of(rule("mode = \"dry_run\"")), Mode::DryRun);
}

#[test]
fn keys_are_deterministic_and_name_finding_rule_action_target() {
    let p = drain_with("");
    let f = straggler("j1", "n4", Cause::Pcie);
    let a = only_plan(p.plan(42, &f, &ctx(10.0, vec![])));
    // Another leader, later, with another view of the cluster: same key.
    let mut later = ctx(99.0, vec![]);
    later.nodes = 3;
    let b = only_plan(p.plan(42, &f, &later));
    assert_eq!(a.key, "f42/drain/drain_node/node/n4");
    assert_eq!(a.key, b.key);
    assert_ne!(a.key, only_plan(p.plan(43, &f, &ctx(10.0, vec![]))).key);
}

#[test]
fn targets_per_action() {
    let f = straggler("j1", "n1", Cause::Network);
    let plan = |action: &str, params: &str| {
        let text = format!(
            "[[rule]]\nname = \"r\"\naction = \"{action}\"\n[rule.match]\n[rule.params]\n{params}\n"
        );
        only_plan(planner(&text).plan(5, &f, &ctx(0.0, vec![])))
    };
    assert_eq!(plan("remap_requests", "share = 0.25").target, "job/j1");
    assert_eq!(
        plan("remap_requests", "share = 0.25").params["share"],
        "0.25"
    );
    assert_eq!(plan("retune_nic", "channels = 8").target, "node/n1/eth1");
    assert_eq!(plan("drain_node", "reason = \"x\"").target, "node/n1");
    assert_eq!(plan("resume_node", "").target, "node/n1");
    let rebalance = plan("rebalance_ranks", "");
    assert_eq!(rebalance.target, "job/j1");
    assert_eq!(rebalance.params["exclude"], "n1");
    assert_eq!(plan("notify", "").target, "job/j1/rank/3");
    assert!(plan("notify", "").params["message"].contains("tp_straggler"));
}

#[test]
fn squatter_without_a_job_reclaims_the_gpu_and_engine_findings_remap_the_node() {
    let p = planner(
        r#"
[[rule]]
name = "reclaim"
action = "reclaim_zombie"
[rule.match]
kind = "gpu_squatter"
[[rule]]
name = "remap"
action = "remap_requests"
[rule.match]
kind = "kv_cache_saturation"
[rule.params]
weight = 0
[[rule]]
name = "retune"
action = "retune_nic"
[rule.match]
kind = "retransmit_storm"
[rule.params]
txqueuelen = 5000
"#,
    );
    let mut f = straggler("j", "n5", Cause::Engine);
    f.kind = FindingKind::GpuSquatter;
    f.job = None;
    f.basis = Some(keel_model::Basis::NoJob);
    let reclaim = only_plan(p.plan(1, &f, &ctx(0.0, vec![])));
    assert_eq!(reclaim.target, "node/n5/gpu/3");
    assert_eq!(
        (
            reclaim.params["node"].as_str(),
            reclaim.params["gpu"].as_str()
        ),
        ("n5", "3")
    );
    // A job's squatter carries what the executor checks at Slurm first.
    f.job = Some("77".into());
    f.basis = Some(keel_model::Basis::EngineHung);
    let reclaim = only_plan(p.plan(1, &f, &ctx(0.0, vec![])));
    assert_eq!(reclaim.target, "job/77");
    assert_eq!(reclaim.params["state"], "RUNNING");
    // An ended job's leftover process: the node's executor kills it,
    // and only if it belongs to that job.
    f.basis = Some(keel_model::Basis::JobEnded);
    let reclaim = only_plan(p.plan(1, &f, &ctx(0.0, vec![])));
    assert_eq!(reclaim.target, "node/n5/gpu/3");
    assert_eq!(
        (
            reclaim.params["node"].as_str(),
            reclaim.params["gpu"].as_str(),
            reclaim.params["job"].as_str()
        ),
        ("n5", "3", "77")
    );
    assert!(!reclaim.params.contains_key("state"), "{reclaim:?}");
    // On a MIG instance a leftover is not told apart from its neighbours'.
    f.gpu_instance = Some(2);
    let ds = p.plan(1, &f, &ctx(0.0, vec![]));
    assert!(
        matches!(&ds[..], [Decision::NoTarget { why, .. }] if why.contains("MIG instance 2")),
        "{ds:?}"
    );
    f.gpu_instance = None;
    // Never on an unknown holder, nor on a finding that does not say.
    for basis in [Some(keel_model::Basis::MappingUnknown), None] {
        f.basis = basis;
        assert!(
            matches!(
                p.plan(1, &f, &ctx(0.0, vec![])).as_slice(),
                [Decision::NoTarget { .. }]
            ),
            "{basis:?}"
        );
    }
    f.job = None;
    f.kind = FindingKind::KvCacheSaturation;
    assert_eq!(
        only_plan(p.plan(1, &f, &ctx(0.0, vec![]))).target,
        "node/n5"
    );
    f.kind = FindingKind::RetransmitStorm;
    f.device = None;
    let ds = p.plan(1, &f, &ctx(0.0, vec![]));
    assert!(
        matches!(&ds[..], [Decision::NoTarget { why, .. }] if why.contains("device")),
        "{ds:?}"
    );
}

#[test]
fn when_filters_on_cel() {
    let p = planner(
        r#"
[[rule]]
name = "prod-only"
action = "notify"
[rule.match]
kind = "tp_straggler"
when = 'tenant == "prod" && finding.rank == 3 && finding.job.startsWith("llama-")'
"#,
    );
    let hit = straggler("llama-70b", "n1", Cause::Pcie);
    let mut c = ctx(0.0, vec![]);
    assert!(
        p.plan(1, &hit, &c).is_empty(),
        "tenant research is filtered out"
    );
    c.tenant = Some("prod".into());
    only_plan(p.plan(1, &hit, &c));
    assert!(p
        .plan(1, &straggler("mistral", "n1", Cause::Pcie), &c)
        .is_empty());
    // A finding without a job makes the expression fail: no match, no panic.
    let mut nojob = hit.clone();
    nojob.job = None;
    assert!(p.plan(1, &nojob, &c).is_empty());
}

#[test]
fn first_match_wins_unless_continue() {
    let text = |cont: &str| {
        format!(
            r#"
[[rule]]
name = "first"
action = "notify"
{cont}
[rule.match]
kind = "tp_straggler"
[[rule]]
name = "second"
action = "drain_node"
[rule.match]
[rule.params]
reason = "x"
"#
        )
    };
    let f = straggler("j", "n", Cause::Gpu);
    assert_eq!(planner(&text("")).plan(1, &f, &ctx(0.0, vec![])).len(), 1);
    assert_eq!(
        planner(&text("continue = true"))
            .plan(1, &f, &ctx(0.0, vec![]))
            .len(),
        2
    );
}

#[test]
fn explain_says_why_each_rule_does_or_does_not_match() {
    let p = planner(
        r#"
[[rule]]
name = "network"
action = "notify"
[rule.match]
kind = "tp_straggler"
cause = ["network"]
[[rule]]
name = "confident"
action = "notify"
[rule.match]
min_confidence = 0.95
[[rule]]
name = "long"
action = "notify"
[rule.match]
min_duration_s = 120
[[rule]]
name = "nodes"
action = "notify"
[rule.match]
nodes = ["gpu-*"]
[[rule]]
name = "cel"
action = "notify"
[rule.match]
when = "finding.rank > 5"
[[rule]]
name = "any"
action = "notify"
[rule.match]
[[rule]]
name = "after"
action = "notify"
[rule.match]
[[rule]]
name = "spare"
escalation_only = true
action = "notify"
"#,
    );
    let f = straggler("j1", "n1", Cause::Pcie);
    let lines: Vec<String> = p
        .policies()
        .explain(&f, &ctx(0.0, vec![]))
        .iter()
        .map(|v| v.to_string())
        .collect();
    assert_eq!(
        lines,
        [
            "network (notify): no match on cause: pcie is not network",
            "confident (notify): no match on min_confidence: confidence 0.90 is below 0.95",
            "long (notify): no match on min_duration_s: the episode has lasted 60.0 s, less than 120 s",
            "nodes (notify): no match on nodes: node n1 matches none of gpu-*",
            "cel (notify): no match on when: `finding.rank > 5` is false",
            "any (notify): matched",
            "after (notify): matched, but `any` matched first and does not continue",
            "spare (notify): only reached by escalation",
        ]
    );
}

#[test]
fn escalation_plans_the_next_rule_under_its_own_guards() {
    let p = planner(
        r#"
[[rule]]
name = "remap"
action = "remap_requests"
mode = "auto"
verify_s = 30
on_failure = "escalate:drain"
[rule.match]
kind = "tp_straggler"
[rule.params]
weight = 32

[[rule]]
name = "drain"
escalation_only = true
action = "drain_node"
blast_radius = { max_nodes_share = 0.1 }
[rule.params]
reason = "remap did not help"
"#,
    );
    let f = straggler("j1", "n7", Cause::Pcie);
    let first = only_plan(p.plan(9, &f, &ctx(0.0, vec![])));
    assert_eq!(first.on_failure, OnFailure::Escalate("drain".into()));
    assert_eq!(first.verify_s, Some(30.0));
    let Some(Decision::Plan(next)) = p.escalate(&first, &ctx(40.0, vec![])) else {
        panic!("expected an escalation plan");
    };
    assert_eq!(
        (
            next.rule.as_str(),
            next.action,
            next.target.as_str(),
            next.mode
        ),
        ("drain", Action::DrainNode, "node/n7", Mode::Approve)
    );
    assert_eq!(next.key, "f9/drain/drain_node/node/n7");
    assert!(
        p.escalate(&next, &ctx(40.0, vec![])).is_none(),
        "chain ends"
    );
    // The escalated drain respects its blast radius.
    let busy = vec![past("drain", "node/n1", 30.0, ActionStatus::Dispatched)];
    assert!(matches!(
        p.escalate(&first, &ctx(40.0, busy)),
        Some(Decision::Suppressed {
            guard: Guard::BlastRadius,
            ..
        })
    ));
}

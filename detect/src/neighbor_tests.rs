use super::*;
use keel_model::{MetricLabels, Severity};

const NODE: &str = "n03";
const VICTIM: &str = "/system.slice/slurmstepd.scope/job_4242";
const TENANT: &str = "/system.slice/slurmstepd.scope/job_77";

/// A node's cgroups read once a second: each `(path, cpus)` as the
/// cumulative counter `cgroup_cpu_total_seconds` advancing by `cpus` per s.
struct Node {
    signals: SignalStore,
    totals: HashMap<String, f64>,
    det: NeighborDetector,
    found: Vec<Finding>,
    closed: Vec<Finding>,
}

impl Node {
    fn new() -> Node {
        Node {
            signals: SignalStore::default(),
            totals: HashMap::default(),
            det: NeighborDetector::new(NeighborConfig::default()),
            found: Vec::new(),
            closed: Vec::new(),
        }
    }

    fn second(&mut self, ts: f64, use_: &[(&str, f64)]) {
        for &(path, cpus) in use_ {
            let total = self.totals.entry(path.into()).or_insert(0.0);
            *total += cpus;
            let s = MetricSample {
                ts,
                node: NODE.into(),
                name: MetricName::CgroupCpuSeconds,
                labels: MetricLabels {
                    cgroup: Some(path.into()),
                    ..Default::default()
                },
                value: *total,
            };
            self.signals.push(&s);
            self.det
                .push(&s, &self.signals, ts, &mut self.found, &mut self.closed);
        }
    }

    fn finding(&mut self, f: Finding, now: f64) {
        self.det.findings(
            &[f],
            &[],
            &self.signals,
            now,
            &mut self.found,
            &mut self.closed,
        );
    }

    fn cleared(&mut self, f: Finding, now: f64) {
        self.det.findings(
            &[],
            &[f],
            &self.signals,
            now,
            &mut self.found,
            &mut self.closed,
        );
    }
}

fn straggler(ts: f64, cause: Cause) -> Finding {
    Finding {
        ts,
        kind: FindingKind::TpStraggler,
        cause,
        severity: Severity::Warning,
        confidence: 0.9,
        job: Some("4242".into()),
        node: Some(NODE.into()),
        rank: Some(5),
        gpu: Some(1),
        device: None,
        evidence: Vec::new(),
        basis: None,
        gpu_instance: None,
        related: Vec::new(),
    }
}

#[test]
fn a_tenant_taking_cpus_under_a_host_straggler_is_named() {
    let mut n = Node::new();
    for t in 0..60 {
        n.second(t as f64, &[(VICTIM, 7.8), (TENANT, 0.3)]);
    }
    // The tenant takes 6 more CPUs from t=60; the victim gets less.
    for t in 60..64 {
        n.second(t as f64, &[(VICTIM, 5.0), (TENANT, 6.3)]);
    }
    assert!(n.found.is_empty(), "no starvation yet, no finding");
    n.finding(straggler(64.0, Cause::Host), 64.0);
    assert_eq!(n.found.len(), 1, "{:?}", n.found);
    let f = &n.found[0];
    assert_eq!(f.kind, FindingKind::NoisyNeighbor);
    assert_eq!(f.cause, Cause::Host);
    assert_eq!(f.node.as_deref(), Some(NODE));
    assert_eq!(f.job.as_deref(), Some("77"), "the tenant's Slurm job");
    assert!(f.evidence[0].contains(TENANT), "{:?}", f.evidence);
    assert!(
        f.evidence[1].contains("job 4242 rank 5"),
        "{:?}",
        f.evidence
    );
    // The tenant gives the CPUs back: the finding clears once.
    for t in 64..70 {
        n.second(t as f64, &[(VICTIM, 7.8), (TENANT, 0.3)]);
    }
    assert_eq!(n.closed.len(), 1);
    n.cleared(straggler(64.0, Cause::Host), 71.0);
    assert_eq!(n.closed.len(), 1, "no second clearing");
    assert_eq!(n.found.len(), 1);
}

#[test]
fn the_straggling_jobs_own_cpu_use_is_not_a_neighbour() {
    let mut n = Node::new();
    for t in 0..60 {
        n.second(t as f64, &[(VICTIM, 2.0), (TENANT, 0.3)]);
    }
    // The job itself burns CPUs (its own data loader): no tenant grabbed.
    for t in 60..66 {
        n.second(t as f64, &[(VICTIM, 9.0), (TENANT, 0.4)]);
    }
    n.finding(straggler(66.0, Cause::Host), 66.0);
    for t in 66..70 {
        n.second(t as f64, &[(VICTIM, 9.0), (TENANT, 0.4)]);
    }
    assert!(n.found.is_empty(), "{:?}", n.found);
}

#[test]
fn a_tenant_grabbing_cpus_without_a_starved_rank_is_no_finding() {
    let mut n = Node::new();
    for t in 0..60 {
        n.second(t as f64, &[(VICTIM, 7.8), (TENANT, 0.3)]);
    }
    for t in 60..90 {
        n.second(t as f64, &[(VICTIM, 7.8), (TENANT, 12.0)]);
    }
    // A straggler of another cause does not starve the node either.
    n.finding(straggler(80.0, Cause::Pcie), 80.0);
    for t in 90..95 {
        n.second(t as f64, &[(VICTIM, 7.8), (TENANT, 12.0)]);
    }
    assert!(n.found.is_empty(), "{:?}", n.found);
}

#[test]
fn one_burst_reading_is_not_a_tenant() {
    let mut n = Node::new();
    for t in 0..60 {
        n.second(t as f64, &[(VICTIM, 7.8), (TENANT, 0.3)]);
    }
    n.second(60.0, &[(VICTIM, 7.8), (TENANT, 0.3)]);
    n.second(61.0, &[(VICTIM, 7.8), (TENANT, 0.3)]);
    n.second(62.0, &[(VICTIM, 6.0), (TENANT, 4.0)]);
    n.second(63.0, &[(VICTIM, 7.8), (TENANT, 0.3)]);
    n.finding(straggler(64.0, Cause::Host), 64.0);
    assert!(n.found.is_empty(), "{:?}", n.found);
}

#[test]
fn a_tenant_that_arrives_at_the_onset_is_named_and_the_deepest_cgroup_wins() {
    let mut n = Node::new();
    let parent = "/slurm/uid_1001";
    let child = "/slurm/uid_1001/job_91";
    for t in 0..60 {
        n.second(t as f64, &[(VICTIM, 7.8), (parent, 0.1)]);
    }
    for t in 60..64 {
        n.second(t as f64, &[(VICTIM, 5.0), (parent, 3.1), (child, 3.0)]);
    }
    n.finding(straggler(64.0, Cause::Host), 64.0);
    assert_eq!(n.found.len(), 1, "{:?}", n.found);
    assert_eq!(n.found[0].job.as_deref(), Some("91"));
    assert!(
        n.found[0].evidence[0].contains("arrived after"),
        "{:?}",
        n.found[0].evidence
    );
}

#[test]
fn without_cgroup_readings_nothing_is_concluded() {
    let mut n = Node::new();
    n.finding(straggler(64.0, Cause::Host), 64.0);
    assert!(n.found.is_empty());
    n.cleared(straggler(64.0, Cause::Host), 70.0);
    assert!(n.closed.is_empty());
}

#[test]
fn slurm_job_ids_come_from_the_job_component() {
    assert_eq!(slurm_job_of_cgroup(TENANT), Some("77"));
    assert_eq!(
        slurm_job_of_cgroup("/slurm/uid_1/job_12/step_0"),
        Some("12")
    );
    assert_eq!(slurm_job_of_cgroup("/user.slice/user-1000.slice"), None);
    assert_eq!(slurm_job_of_cgroup("/slurm/job_/x"), None);
    assert!(is_below("/slurm/uid_1/job_9", "/slurm/uid_1"));
    assert!(!is_below("/slurm/uid_10", "/slurm/uid_1"));
}

#[test]
fn cgroups_past_the_bound_are_counted_not_judged_in_silence() {
    let mut n = Node::new();
    let idle: Vec<String> = (0..CGROUPS_MAX + 5)
        .map(|i| format!("/user.slice/user-{i}.slice"))
        .collect();
    for t in 0..3 {
        let mut use_: Vec<(&str, f64)> = idle.iter().map(|p| (p.as_str(), 0.0)).collect();
        use_.push((VICTIM, 7.8));
        n.second(t as f64, &use_);
    }
    assert_eq!(n.det.stats.cgroups_skipped, 0, "nothing judged yet");
    n.finding(straggler(3.0, Cause::Host), 3.0);
    assert_eq!(
        n.det.stats.cgroups_skipped, 6,
        "1,030 cgroups, 1,024 judged"
    );
}

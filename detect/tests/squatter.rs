//! `gpu_squatter` as seed 001 states it: memory held while nothing useful
//! holds it (the job ended, no job holds the GPU, or the running job's
//! engine is dead or hung), told apart from an idle engine of a running job
//! (`idle_gpu_reservation`, never reclaimed). MIG instances are GPUs of
//! their own. Sans-IO: records in, findings out, trace time only.

use keel_detect::Engine;
use keel_model::{
    Basis, Finding, FindingKind, JobRecord, JobState, MetricLabels, MetricName, MetricSample,
    Record,
};
use std::collections::BTreeMap;

const T0: f64 = 1_763_800_000.0;
const FB_MIB: f64 = 143_771.0; // an H200

fn job(name: &str, state: JobState, ts: f64, gpus: &[u32]) -> Record {
    Record::Job(Box::new(JobRecord {
        ts,
        node: None,
        job: name.into(),
        state,
        tenant: None,
        nodes: vec!["n01".into()],
        ranks: BTreeMap::new(),
        gpus: BTreeMap::new(),
        nics: BTreeMap::new(),
        node_gpus: BTreeMap::from([("n01".into(), gpus.to_vec())]),
        tp: None,
        pp: None,
        replica: None,
    }))
}

fn metric(ts: f64, name: MetricName, labels: MetricLabels, value: f64) -> Record {
    Record::Metric(MetricSample {
        ts,
        node: "n01".into(),
        name,
        labels,
        value,
    })
}

fn gpu(g: u32) -> MetricLabels {
    MetricLabels {
        gpu: Some(g),
        ..Default::default()
    }
}

/// One dcgm-exporter scrape of `g`: `share` of the framebuffer used at `util` %.
fn scrape(ts: f64, g: u32, share: f64, util: f64) -> Vec<Record> {
    let used = (FB_MIB * share).round();
    vec![
        metric(ts, MetricName::FbUsed, gpu(g), used),
        metric(ts, MetricName::FbFree, gpu(g), FB_MIB - used),
        metric(ts, MetricName::GpuUtil, gpu(g), util),
        metric(ts, MetricName::PowerUsage, gpu(g), 75.0),
    ]
}

/// One scrape of the vLLM engine serving on n01.
fn engine(ts: f64, waiting: f64, running: f64) -> Vec<Record> {
    let l = MetricLabels {
        model_name: Some("llama-70b".into()),
        ..Default::default()
    };
    vec![
        metric(ts, MetricName::VllmRequestsWaiting, l.clone(), waiting),
        metric(ts, MetricName::VllmRequestsRunning, l, running),
    ]
}

struct Run {
    engine: Engine,
    found: Vec<Finding>,
    cleared: Vec<Finding>,
}

impl Run {
    fn new() -> Run {
        Run {
            engine: Engine::default(),
            found: Vec::new(),
            cleared: Vec::new(),
        }
    }

    fn feed(&mut self, records: impl IntoIterator<Item = Record>) {
        for r in records {
            self.engine.push(&r, &mut self.found);
        }
        self.cleared.extend(self.engine.take_cleared());
    }

    fn of(&self, kind: FindingKind) -> Vec<&Finding> {
        self.found.iter().filter(|f| f.kind == kind).collect()
    }
}

#[test]
fn an_idle_healthy_engine_is_never_a_squatter() {
    let mut r = Run::new();
    r.feed([job("svc", JobState::Running, T0, &[0])]);
    // Ten minutes at 96 % of the framebuffer and 0 % utilisation, the engine
    // answering every scrape with nothing running and nothing waiting.
    for i in 0..120 {
        let ts = T0 + 5.0 * i as f64;
        r.feed(engine(ts, 0.0, 0.0));
        r.feed(scrape(ts, 0, 0.96, 0.0));
    }
    assert!(r.of(FindingKind::GpuSquatter).is_empty(), "{:#?}", r.found);
    let idle = r.of(FindingKind::IdleGpuReservation);
    assert_eq!(idle.len(), 1, "reported once, for an operator");
    assert_eq!(idle[0].basis, Some(Basis::EngineIdle));
    assert_eq!(idle[0].job.as_deref(), Some("svc"));
}

/// The same engine, alive for a minute, then hung in `how`: the squatter is
/// found within the configured time, resting on what keel saw.
fn hung(how: Basis) -> (f64, Finding) {
    let mut r = Run::new();
    r.feed([job("svc", JobState::Running, T0, &[0])]);
    let broke = T0 + 60.0;
    for i in 0..120 {
        let ts = T0 + 5.0 * i as f64;
        match how {
            Basis::EngineHung if ts >= broke => r.feed(engine(ts, 7.0, 0.0)),
            Basis::EngineDead if ts >= broke => {} // the endpoint is gone
            _ => r.feed(engine(ts, 0.0, 0.0)),
        }
        r.feed(scrape(ts, 0, 0.96, 0.0));
        if let Some(f) = r.of(FindingKind::GpuSquatter).first() {
            return (ts - broke, (*f).clone());
        }
    }
    panic!("no squatter for an engine {how:?}: {:#?}", r.found);
}

#[test]
fn the_same_engine_hung_or_gone_is_a_squatter_within_the_configured_time() {
    let cfg = keel_detect::Config::default().squatter;
    for how in [Basis::EngineHung, Basis::EngineDead] {
        let (after, f) = hung(how);
        let bound = cfg.engine_hung_s.max(cfg.engine_gone_s) + cfg.orphan_sustain_s + 10.0;
        assert!(after <= bound, "{how:?}: found {after} s after it broke");
        assert_eq!(f.basis, Some(how));
        assert_eq!(f.job.as_deref(), Some("svc"));
        assert!(
            f.evidence.iter().any(|e| e.contains("engine")),
            "{:?}",
            f.evidence
        );
    }
}

#[test]
fn memory_left_by_a_failed_or_timed_out_job_is_found_within_ten_seconds() {
    for end in [JobState::Failed, JobState::Timeout] {
        let mut r = Run::new();
        r.feed([job("train", JobState::Running, T0, &[2])]);
        for i in 0..12 {
            r.feed(scrape(T0 + 5.0 * i as f64, 2, 0.92, 0.0));
        }
        let ended = T0 + 60.0;
        r.feed([job("train", end, ended, &[2])]);
        // A crashed engine keeps what it preallocated: 92 %, under seed
        // 001's 95 % but far above what an ended job should hold.
        let mut found_at = None;
        for i in 0..10 {
            let ts = ended + 2.0 * i as f64;
            r.feed(scrape(ts, 2, 0.92, 0.0));
            if found_at.is_none() && !r.of(FindingKind::GpuSquatter).is_empty() {
                found_at = Some(ts);
            }
        }
        let at = found_at.unwrap_or_else(|| panic!("{end:?}: no squatter: {:#?}", r.found));
        assert!(
            at - ended <= 10.0,
            "{end:?}: found {} s after the end",
            at - ended
        );
        let f = r.of(FindingKind::GpuSquatter)[0];
        assert_eq!(
            (f.basis, f.gpu, f.job.as_deref()),
            (Some(Basis::JobEnded), Some(2), Some("train"))
        );
        // Released: the finding closes.
        for i in 0..5 {
            r.feed(scrape(ended + 30.0 + 2.0 * i as f64, 2, 0.0, 0.0));
        }
        assert_eq!(
            r.cleared
                .iter()
                .filter(|c| c.kind == FindingKind::GpuSquatter)
                .count(),
            1
        );
    }
}

#[test]
fn memory_held_by_a_process_of_no_job_is_a_squatter_and_an_unknown_holder_says_so() {
    let mut r = Run::new();
    // Slurm's allocation on n01 is known: GPU 1 is the job's, GPU 0 nobody's.
    r.feed([job("svc", JobState::Running, T0, &[1])]);
    for i in 0..6 {
        r.feed(scrape(T0 + 2.0 * i as f64, 0, 0.90, 0.0));
    }
    let f = r.of(FindingKind::GpuSquatter);
    assert_eq!(f.len(), 1, "{:#?}", r.found);
    assert_eq!((f[0].basis, f[0].job.as_ref()), (Some(Basis::NoJob), None));

    // Without any allocation known for the node, keel cannot tell: it says
    // so, later and less sure, and no rule may reclaim on it.
    let mut u = Run::new();
    for i in 0..40 {
        u.feed(scrape(T0 + 2.0 * i as f64, 0, 0.97, 0.0));
    }
    let f = u.of(FindingKind::GpuSquatter);
    assert_eq!(f.len(), 1, "{:#?}", u.found);
    assert_eq!(f[0].basis, Some(Basis::MappingUnknown));
    assert!(f[0].confidence < 0.85, "below the reclaim rule's bar");
}

#[test]
fn a_mig_instance_is_a_gpu_of_its_own() {
    let mig = |i: u32| MetricLabels {
        gpu: Some(0),
        gpu_instance: Some(i),
        ..Default::default()
    };
    let mut r = Run::new();
    r.feed([job("tenant-a", JobState::Failed, T0, &[0])]);
    for k in 0..8 {
        let ts = T0 + 2.0 * k as f64;
        // The parent GPU is busy (its other instances work)...
        r.feed(scrape(ts, 0, 0.50, 80.0));
        // ...instance 13 is idle at full memory; instance 14 works.
        r.feed([
            metric(ts, MetricName::FbUsed, mig(13), 4_800.0),
            metric(ts, MetricName::FbFree, mig(13), 60.0),
            metric(ts, MetricName::GrEngineActive, mig(13), 0.0),
            metric(ts, MetricName::FbUsed, mig(14), 4_800.0),
            metric(ts, MetricName::FbFree, mig(14), 60.0),
            metric(ts, MetricName::GrEngineActive, mig(14), 0.93),
        ]);
    }
    let f = r.of(FindingKind::GpuSquatter);
    assert_eq!(f.len(), 1, "{:#?}", r.found);
    assert_eq!((f[0].gpu, f[0].gpu_instance), (Some(0), Some(13)));
    assert!(f[0].evidence[0].contains("MIG instance 13"));
}

#[test]
fn a_job_without_its_gpus_on_the_node_leaves_free_gpus_unknown() {
    let mut r = Run::new();
    // "svc" came with Slurm's allocation (GPU 1); "old" was placed by a
    // prolog that did not say its GPUs, so it may hold GPU 0.
    r.feed([job("svc", JobState::Running, T0, &[1])]);
    let mut old = JobRecord::state_only("old", JobState::Running, T0);
    old.nodes = vec!["n01".into()];
    old.ranks = BTreeMap::from([("n01".into(), vec![0])]);
    r.feed([Record::Job(Box::new(old))]);
    for i in 0..40 {
        r.feed(scrape(T0 + 2.0 * i as f64, 0, 0.97, 0.0));
    }
    let f = r.of(FindingKind::GpuSquatter);
    assert!(
        f.iter().all(|f| f.basis == Some(Basis::MappingUnknown)),
        "GPU 0 is not known to be free while \"old\" may hold it: {f:#?}"
    );
}

/// The node's sensor watches GPU-level conditions, a job's correlator the
/// rest: each engine of a scope concludes only its own kinds, so that a
/// squatter is reported once, by the node, whatever becomes of the job.
#[test]
fn gpu_conditions_belong_to_the_node_scope_only() {
    use keel_detect::Scope;
    let mut records = vec![job("train", JobState::Running, T0, &[2])];
    for i in 0..12 {
        records.extend(scrape(T0 + 5.0 * i as f64, 2, 0.92, 0.0));
    }
    records.push(job("train", JobState::Failed, T0 + 60.0, &[2]));
    for i in 0..10 {
        records.extend(scrape(T0 + 60.0 + 2.0 * i as f64, 2, 0.92, 0.0));
    }
    let kinds = |scope: Scope| {
        let mut e = Engine::with_scope(keel_detect::Config::default(), scope);
        let mut out = Vec::new();
        for r in &records {
            e.push(r, &mut out);
        }
        out.iter().map(|f| f.kind).collect::<Vec<_>>()
    };
    assert_eq!(kinds(Scope::Node), vec![FindingKind::GpuSquatter]);
    assert_eq!(kinds(Scope::All), vec![FindingKind::GpuSquatter]);
    assert!(kinds(Scope::Job).is_empty());
}

#[test]
fn a_job_told_on_other_gpus_no_longer_holds_the_old_ones() {
    let mut r = Run::new();
    r.feed([job("svc", JobState::Running, T0, &[0])]);
    // A later record (a prolog's correction) moves it to GPU 2: GPU 0,
    // still full, is nobody's now.
    r.feed([job("svc", JobState::Running, T0 + 1.0, &[2])]);
    for i in 0..6 {
        r.feed(scrape(T0 + 2.0 + 2.0 * i as f64, 0, 0.92, 0.0));
    }
    let f = r.of(FindingKind::GpuSquatter);
    assert_eq!(f.len(), 1, "{:#?}", r.found);
    assert_eq!((f[0].basis, f[0].job.as_ref()), (Some(Basis::NoJob), None));
}

//! Findings about GPUs and NICs clear once their condition has gone, under
//! the locus they were reported at, and only after they were reported.

use keel_detect::Engine;
use keel_model::{
    Finding, FindingKind, JobRecord, JobState, MetricLabels, MetricName, MetricSample, Record,
    Timestamp,
};
use std::collections::BTreeMap;

const T0: f64 = 1_763_800_000.0;
const FB_MIB: f64 = 81_920.0;

/// A job on n01's GPU 3 that has already ended, so that its memory left
/// behind is an orphan.
fn ended_job() -> Record {
    Record::Job(Box::new(JobRecord {
        ts: T0,
        node: None,
        job: "j7".into(),
        state: JobState::Failed,
        tenant: None,
        nodes: vec!["n01".into()],
        ranks: BTreeMap::from([("n01".into(), vec![0])]),
        gpus: BTreeMap::from([(0, 3)]),
        nics: BTreeMap::new(),
        node_gpus: Default::default(),
        tp: None,
        pp: None,
        replica: None,
    }))
}

fn sample(ts: Timestamp, name: MetricName, labels: MetricLabels, value: f64) -> Record {
    Record::Metric(MetricSample {
        ts,
        node: "n01".into(),
        name,
        labels,
        value,
    })
}

/// GPU 3's memory readings once a second from `from` for `secs` seconds.
fn gpu_memory(from: Timestamp, secs: u32, used_mib: f64) -> Vec<Record> {
    let labels = MetricLabels {
        gpu: Some(3),
        ..MetricLabels::default()
    };
    (0..secs)
        .flat_map(|i| {
            let ts = from + f64::from(i);
            [
                sample(ts, MetricName::FbUsed, labels.clone(), used_mib),
                sample(ts, MetricName::FbFree, labels.clone(), FB_MIB - used_mib),
                sample(ts, MetricName::GpuUtil, labels.clone(), 0.0),
            ]
        })
        .collect()
}

/// Feeds `records`; returns the findings and each clearing with the number
/// of findings emitted before it.
fn feed(engine: &mut Engine, records: &[Record]) -> (Vec<Finding>, Vec<(usize, Finding)>) {
    let mut found = Vec::new();
    let mut cleared = Vec::new();
    for r in records {
        engine.push(r, &mut found);
        for c in engine.take_cleared() {
            cleared.push((found.len(), c));
        }
    }
    (found, cleared)
}

#[test]
fn a_squatted_gpu_clears_once_its_memory_is_released() {
    let mut records = vec![ended_job()];
    records.extend(gpu_memory(T0 + 1.0, 20, FB_MIB - 200.0));
    records.extend(gpu_memory(T0 + 21.0, 20, 300.0));
    let (found, cleared) = feed(&mut Engine::default(), &records);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].kind, FindingKind::GpuSquatter);
    assert_eq!(cleared.len(), 1, "{cleared:?}");
    let (before, c) = &cleared[0];
    assert_eq!(*before, 1);
    assert_eq!(c.kind, FindingKind::GpuSquatter);
    assert_eq!(c.locus(), found[0].locus());
    assert_eq!(
        (&c.job, &c.node, c.gpu),
        (&found[0].job, &found[0].node, Some(3))
    );
    // Released at T0 + 21; closed once clear for `clear_s` (5 s).
    assert!(c.ts >= T0 + 26.0 && c.ts < T0 + 28.0, "{c:?}");
    assert_eq!(c.evidence.len(), 1, "{:?}", c.evidence);
}

#[test]
fn memory_held_too_briefly_neither_finds_nor_clears() {
    let mut records = vec![ended_job()];
    records.extend(gpu_memory(T0 + 1.0, 3, FB_MIB - 200.0));
    records.extend(gpu_memory(T0 + 4.0, 20, 300.0));
    let (found, cleared) = feed(&mut Engine::default(), &records);
    assert!(found.is_empty(), "{found:?}");
    assert!(cleared.is_empty(), "{cleared:?}");
}

#[test]
fn a_saturated_nic_clears_under_its_device() {
    let labels = MetricLabels {
        device: Some("mlx5_1".into()),
        ..MetricLabels::default()
    };
    let records: Vec<Record> = (0..40)
        .map(|i| {
            let util = if i < 15 { 0.99 } else { 0.3 };
            sample(
                T0 + f64::from(i) * 0.5,
                MetricName::DpuNicLinkUtil,
                labels.clone(),
                util,
            )
        })
        .collect();
    let (found, cleared) = feed(&mut Engine::default(), &records);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(cleared.len(), 1, "{cleared:?}");
    let c = &cleared[0].1;
    assert_eq!(c.kind, FindingKind::NicSaturation);
    assert_eq!(c.device.as_deref(), Some("mlx5_1"));
    assert_eq!(c.locus(), found[0].locus());
    assert!(c.ts > found[0].ts);
}

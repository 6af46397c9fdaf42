//! Arbitrary values, not only well-formed ones, through the sensor's edge
//! and the detection engine: nothing panics, and what is held stays within
//! its named bounds.

use keel_detect::edge::{EdgeAggregator, EdgeConfig, JOBS_MAX, RANKS_PER_JOB_MAX};
use keel_detect::Engine;
use keel_model::{
    CollectiveRecord, JobRecord, JobState, MetricLabels, MetricName, MetricSample, Record, Summary,
};
use proptest::prelude::*;

const STATES: [JobState; 12] = [
    JobState::Pending,
    JobState::Running,
    JobState::Completing,
    JobState::Completed,
    JobState::Failed,
    JobState::Timeout,
    JobState::OutOfMemory,
    JobState::Cancelled,
    JobState::NodeFail,
    JobState::Preempted,
    JobState::Suspended,
    JobState::Other,
];
use std::collections::BTreeMap;

fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(0.0),
        Just(-1.0),
        Just(1.8e9),
        any::<f64>(),
        1.7e9..1.9e9f64,
    ]
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![Just("j".to_string()), Just("n1".to_string()), ".{0,12}"]
}

prop_compose! {
    fn collective()(job in name(), node in name(), rank in prop_oneof![0..8u32, any::<u32>()],
                    seq in prop_oneof![0..64u64, any::<u64>()], ts in any_f64(), dur in any_f64())
                    -> CollectiveRecord {
        CollectiveRecord { ts, node: node.as_str().into(), job: job.as_str().into(), rank,
            op: "allreduce".into(), seq, bytes: 1, arrive: ts, dur_us: dur }
    }
}

prop_compose! {
    fn metric()(node in name(), which in 0..MetricName::ALL.len(), gpu in proptest::option::of(any::<u32>()),
                instance in proptest::option::of(any::<u32>()), ts in any_f64(), value in any_f64())
                -> MetricSample {
        MetricSample { ts, node: node.as_str().into(), name: MetricName::ALL[which],
            labels: MetricLabels { gpu, gpu_instance: instance, ..Default::default() }, value }
    }
}

prop_compose! {
    fn job()(id in name(), node in name(), state in 0..STATES.len(), ts in any_f64(),
             ranks in proptest::collection::vec(any::<u32>(), 0..4),
             gpus in proptest::collection::vec(any::<u32>(), 0..4)) -> JobRecord {
        let mut r = JobRecord::state_only(&id, STATES[state], ts);
        r.ranks = BTreeMap::from([(node.as_str().into(), ranks.clone())]);
        r.gpus = ranks.iter().copied().zip(gpus.iter().copied()).collect();
        r.node_gpus = BTreeMap::from([(node.as_str().into(), gpus)]);
        r
    }
}

prop_compose! {
    fn summary()(c in collective(), window in any::<u64>(), count in any::<u32>(), step in any::<u32>(),
                 p50 in any::<u32>(), p99 in any::<u32>(), offset in any::<i64>()) -> Summary {
        Summary { node: c.node, job: c.job, rank: c.rank, window, window_end: c.ts, count,
            step_us: step, dur_p50_us: p50, dur_p99_us: p99, offset_us: offset }
    }
}

fn record() -> impl Strategy<Value = Record> {
    prop_oneof![
        collective().prop_map(Record::Collective),
        metric().prop_map(Record::Metric),
        job().prop_map(|j| Record::Job(Box::new(j))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_edge_takes_anything_and_stays_bounded(
        events in proptest::collection::vec((collective(), any_f64()), 0..300)
    ) {
        let mut edge = EdgeAggregator::new(EdgeConfig::default());
        let mut out = Vec::new();
        for (c, received) in &events {
            edge.push(c, *received, &mut out);
        }
        edge.flush_idle(f64::INFINITY, &mut out);
        let (jobs, ranks) = edge.held();
        prop_assert!(jobs <= JOBS_MAX);
        prop_assert!(ranks <= jobs * RANKS_PER_JOB_MAX);
        prop_assert!(out.len() <= events.len());
    }

    #[test]
    fn the_engine_takes_anything(
        records in proptest::collection::vec(record(), 0..200),
        summaries in proptest::collection::vec(summary(), 0..50),
    ) {
        for scope in [keel_detect::Scope::All, keel_detect::Scope::Job, keel_detect::Scope::Node] {
            let mut engine = Engine::with_scope(keel_detect::Config::default(), scope);
            let mut out = Vec::new();
            for r in &records {
                engine.push(r, &mut out);
            }
            for s in &summaries {
                engine.push_window(s, &mut out);
            }
            let _ = engine.take_cleared();
            for f in &out {
                prop_assert!(f.confidence.is_finite());
            }
        }
    }
}

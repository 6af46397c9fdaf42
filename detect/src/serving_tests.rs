use crate::Engine;
use keel_model::{
    FindingKind, JobRecord, JobState, MetricLabels, MetricName, MetricSample, Record, RequestPhase,
    RequestRecord,
};
use std::collections::BTreeMap;

fn metric(ts: f64, node: &str, name: MetricName, value: f64) -> Record {
    Record::Metric(MetricSample {
        ts,
        node: node.into(),
        name,
        labels: MetricLabels {
            model_name: matches!(
                name,
                MetricName::VllmPreemptions
                    | MetricName::VllmRequestsRunning
                    | MetricName::VllmRequestsWaiting
                    | MetricName::VllmKvCacheUsage
            )
            .then(|| "llama".into()),
            ..Default::default()
        },
        value,
    })
}

fn request(ts: f64, node: &str, id: u64, phase: RequestPhase, out: Option<u32>) -> Record {
    Record::Request(RequestRecord {
        ts,
        node: Some(node.into()),
        job: Some("7".into()),
        id: format!("r{id}").as_str().into(),
        phase,
        prompt_tokens: Some(500),
        output_tokens: out,
    })
}

fn kinds(e: &mut Engine, records: &[Record]) -> (Vec<FindingKind>, Vec<FindingKind>) {
    let mut out = Vec::new();
    for r in records {
        e.push(r, &mut out);
    }
    let cleared = e.take_cleared().iter().map(|f| f.kind).collect();
    (out.iter().map(|f| f.kind).collect(), cleared)
}

/// An engine running 30 requests whose preemption counter grows by `rate`
/// a second from `from` to `to`, and by 1 every 20 s otherwise.
fn preempting(rates: &[(f64, f64, f64)], until: f64) -> Vec<Record> {
    let mut v = Vec::new();
    let mut count = 100.0;
    for t in 0..until as usize {
        let t = 1000.0 + t as f64;
        let rate = rates
            .iter()
            .find(|(a, b, _)| *a <= t && t < *b)
            .map_or(0.05, |r| r.2);
        count += rate;
        v.push(metric(t, "n1", MetricName::VllmKvCacheUsage, 0.99));
        v.push(metric(t, "n1", MetricName::VllmRequestsRunning, 30.0));
        v.push(metric(t, "n1", MetricName::VllmPreemptions, count.floor()));
    }
    v
}

#[test]
fn sustained_preemptions_are_thrashing_and_clear() {
    let mut e = Engine::default();
    let (found, cleared) = kinds(&mut e, &preempting(&[(1030.0, 1060.0, 20.0)], 90.0));
    assert_eq!(found, vec![FindingKind::SwapThrashing]);
    assert_eq!(cleared, vec![FindingKind::SwapThrashing]);
}

#[test]
fn a_pinned_cache_preempting_a_few_a_second_or_one_burst_is_not_thrashing() {
    let mut e = Engine::default();
    // 3 a second with 30 running (kv_cache_saturation's share), then one
    // scrape of 40 at once.
    let recs = preempting(&[(1030.0, 1060.0, 3.0), (1070.0, 1071.0, 40.0)], 90.0);
    let (found, _) = kinds(&mut e, &recs);
    assert!(!found.contains(&FindingKind::SwapThrashing), "{found:?}");
}

#[test]
fn an_oom_kill_counter_rise_is_one_finding_and_a_reboot_is_none() {
    let mut e = Engine::default();
    let mut recs = Vec::new();
    for (i, v) in [2.0, 2.0, 3.0, 4.0, 4.0, 0.0, 0.0].iter().enumerate() {
        recs.push(metric(
            1000.0 + i as f64,
            "n1",
            MetricName::VmstatOomKill,
            *v,
        ));
    }
    for i in 0..40 {
        recs.push(metric(
            1010.0 + i as f64,
            "n1",
            MetricName::VmstatOomKill,
            0.0,
        ));
    }
    let (found, cleared) = kinds(&mut e, &recs);
    assert_eq!(found, vec![FindingKind::OomKill]);
    assert_eq!(cleared, vec![FindingKind::OomKill]);
}

#[test]
fn a_job_ended_out_of_memory_is_an_oom_kill_on_its_node_once() {
    let mut e = Engine::default();
    let mut j = JobRecord::state_only("7", JobState::Running, 1000.0);
    j.nodes = vec!["n2".into()];
    j.ranks = BTreeMap::from([("n2".into(), vec![0])]);
    let mut end = j.clone();
    end.state = JobState::OutOfMemory;
    end.ts = 1010.0;
    let mut failed = j.clone();
    failed.job = "8".into();
    failed.state = JobState::Failed;
    let recs = [
        Record::Job(Box::new(j)),
        Record::Job(Box::new(failed)),
        Record::Job(Box::new(end.clone())),
        Record::Job(Box::new(end)),
    ];
    let mut out = Vec::new();
    for r in &recs {
        e.push(r, &mut out);
    }
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].kind, FindingKind::OomKill);
    assert_eq!(out[0].node.as_deref(), Some("n2"));
}

/// 30 requests a second on n1 for `secs` seconds; the `slow` share of them
/// (every 1/slow-th) takes `slow_ttft` to its first token, the rest 200 ms.
fn serving(secs: usize, slow: impl Fn(f64) -> (usize, f64)) -> Vec<Record> {
    let mut v = Vec::new();
    let mut id = 0;
    for s in 0..secs {
        for k in 0..30 {
            let t = 1000.0 + s as f64 + k as f64 / 30.0;
            let (every, slow_ttft) = slow(t);
            let ttft = if every > 0 && id % every == 0 {
                slow_ttft
            } else {
                0.2
            };
            v.push(request(t, "n1", id as u64, RequestPhase::Arrive, None));
            v.push(request(
                t + ttft,
                "n1",
                id as u64,
                RequestPhase::FirstToken,
                None,
            ));
            v.push(request(
                t + ttft + 2.0,
                "n1",
                id as u64,
                RequestPhase::Done,
                Some(101),
            ));
            id += 1;
        }
    }
    v.sort_by(|a, b| a.ts().total_cmp(&b.ts()));
    v
}

#[test]
fn a_tail_past_the_objective_while_p50_holds_is_tail_latency() {
    let mut e = Engine::default();
    let recs = serving(120, |t| {
        if (1040.0..1080.0).contains(&t) {
            (20, 4.0)
        } else {
            (0, 0.0)
        }
    });
    let (found, cleared) = kinds(&mut e, &recs);
    assert_eq!(found, vec![FindingKind::TailLatency]);
    assert_eq!(cleared, vec![FindingKind::TailLatency]);
}

#[test]
fn a_slower_service_or_a_few_slow_requests_is_not_tail_latency() {
    let mut e = Engine::default();
    // everyone slow (p50 past half the objective), then 3 slow requests.
    let recs = serving(120, |t| {
        if (1040.0..1060.0).contains(&t) {
            (1, 2.5)
        } else if (1080.0..1080.2).contains(&t) {
            (2, 5.0)
        } else {
            (0, 0.0)
        }
    });
    let (found, _) = kinds(&mut e, &recs);
    assert!(!found.contains(&FindingKind::TailLatency), "{found:?}");
}

#[test]
fn an_arrival_burst_with_a_growing_queue_is_ingress_burst_backlog() {
    let mut e = Engine::default();
    let mut recs = Vec::new();
    let mut id = 0;
    for s in 0..120 {
        let t0 = 1000.0 + s as f64;
        // A 1 s spike at 50 s with no queue, a 10 s burst at 80 s.
        let n = if s == 50 || (80..90).contains(&s) {
            60
        } else {
            10
        };
        let waiting = if (81..95).contains(&s) {
            5.0 * (s - 80) as f64
        } else {
            0.0
        };
        recs.push(metric(t0, "n1", MetricName::VllmRequestsWaiting, waiting));
        for k in 0..n {
            recs.push(request(
                t0 + k as f64 / n as f64,
                "n1",
                id,
                RequestPhase::Arrive,
                None,
            ));
            id += 1;
        }
    }
    let (found, cleared) = kinds(&mut e, &recs);
    assert_eq!(found, vec![FindingKind::IngressBurstBacklog]);
    assert_eq!(cleared, vec![FindingKind::IngressBurstBacklog]);
}

#[test]
fn requests_followed_are_bounded_and_a_node_watch_takes_none() {
    use crate::serving_requests::PENDING_MAX;
    let mut e = Engine::default();
    let mut out = Vec::new();
    for i in 0..(PENDING_MAX + 10) as u64 {
        let t = 1000.0 + i as f64 * 1e-4;
        e.push(&request(t, "n1", i, RequestPhase::Arrive, None), &mut out);
    }
    assert!(e.serving.requests.stats.dropped >= 10);
    // A node's sensor watches GPUs only: serving events conclude nothing there.
    let mut node = Engine::with_scope(crate::Config::default(), crate::Scope::Node);
    let recs = serving(120, |t| {
        if (1040.0..1080.0).contains(&t) {
            (20, 4.0)
        } else {
            (0, 0.0)
        }
    });
    let (found, _) = kinds(&mut node, &recs);
    assert!(found.is_empty(), "{found:?}");
}

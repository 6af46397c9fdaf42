//! `keel bench edge`: the sensor's edge aggregation rate on one core, and
//! the memory a tracked rank costs in a sensor and in a correlator.

use anyhow::Result;
use keel_detect::edge::{EdgeAggregator, EdgeConfig};
use keel_detect::Engine;
use keel_model::{CollectiveRecord, JobRecord, JobState, Name, Record, Summary};
use std::collections::BTreeMap;
use std::time::Instant;

/// Resident memory now, in KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_string();
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Collectives of `jobs` jobs of `ranks` ranks, `steps` steps each, as a
/// sensor sees them: in completion order, one job's ranks together.
fn events(jobs: usize, ranks: u32, steps: u64) -> Vec<CollectiveRecord> {
    let mut out = Vec::with_capacity(jobs * ranks as usize * steps as usize);
    for seq in 0..steps {
        step(jobs, ranks, seq, &mut out);
    }
    out
}

/// One step's collectives of every job.
fn step(jobs: usize, ranks: u32, seq: u64, out: &mut Vec<CollectiveRecord>) {
    let node: Name = "node-0".into();
    let op: Name = "allreduce".into();
    {
        for j in 0..jobs {
            let job: Name = format!("job-{j}").as_str().into();
            let ts = 1.8e9 + seq as f64 * 0.03 + j as f64 * 1e-4;
            for rank in 0..ranks {
                out.push(CollectiveRecord {
                    ts,
                    node: node.clone(),
                    job: job.clone(),
                    rank,
                    op: op.clone(),
                    seq,
                    bytes: 1 << 20,
                    arrive: ts - 0.002,
                    dur_us: 2000.0 + ((seq * 7 + rank as u64 * 13) % 97) as f64,
                });
            }
        }
    }
}

pub fn run(events_per_run: u64, window_len: u64) -> Result<()> {
    let (jobs, ranks) = (4usize, 8u32);
    let steps = (events_per_run / (jobs as u64 * ranks as u64)).max(1);
    let evs = events(jobs, ranks, steps);
    println!(
        "edge aggregation, one core: {} events ({jobs} jobs x {ranks} ranks x {steps} steps), windows of {window_len}",
        evs.len()
    );
    let mut best = 0.0f64;
    for run in 1..=5 {
        let mut edge = EdgeAggregator::new(EdgeConfig {
            window_len,
            ..EdgeConfig::default()
        });
        let mut out: Vec<Summary> = Vec::with_capacity(1 << 16);
        let mut summaries = 0u64;
        let t = Instant::now();
        for e in &evs {
            edge.push(e, e.ts + 0.001, &mut out);
            if out.len() >= 1 << 16 {
                summaries += out.len() as u64;
                out.clear();
            }
        }
        summaries += out.len() as u64;
        let secs = t.elapsed().as_secs_f64();
        let rate = evs.len() as f64 / secs;
        best = best.max(rate);
        println!(
            "  run {run}: {:.2} M events/s, {summaries} summaries ({:.1} events each)",
            rate / 1e6,
            evs.len() as f64 / summaries.max(1) as f64
        );
    }
    println!("  best: {:.2} M events/s", best / 1e6);
    drop(evs);

    // Memory per tracked rank: many small jobs, each rank with full
    // windows; events are made step by step so that only the state stays.
    let (jobs, ranks, steps) = (2000usize, 16u32, 64u64);
    let tracked = jobs as u64 * ranks as u64;
    let stream = |edge: &mut EdgeAggregator, mut sink: Box<dyn FnMut(&Summary) + '_>| {
        let mut out = Vec::new();
        let mut evs = Vec::new();
        for seq in 0..steps {
            evs.clear();
            step(jobs, ranks, seq, &mut evs);
            for e in &evs {
                edge.push(e, e.ts + 0.001, &mut out);
            }
            for s in out.drain(..) {
                sink(&s);
            }
        }
    };
    let cfg = EdgeConfig {
        window_len,
        ..EdgeConfig::default()
    };
    let base = rss_kib();
    let mut edge = EdgeAggregator::new(cfg.clone());
    stream(&mut edge, Box::new(|_| {}));
    let sensor_kib = rss_kib().saturating_sub(base);
    drop(edge);
    let mut engine = Engine::default();
    let mut found = Vec::new();
    let base = rss_kib();
    for j in 0..jobs {
        let placement: Vec<u32> = (0..ranks).collect();
        engine.push(
            &Record::Job(Box::new(JobRecord {
                ts: 1.8e9,
                node: None,
                job: format!("job-{j}").as_str().into(),
                state: JobState::Running,
                tenant: None,
                nodes: vec!["node-0".into()],
                ranks: BTreeMap::from([("node-0".into(), placement)]),
                gpus: (0..ranks).map(|r| (r, r % 8)).collect(),
                nics: BTreeMap::new(),
                node_gpus: Default::default(),
                tp: Some(ranks),
                pp: None,
                replica: None,
            })),
            &mut found,
        );
    }
    let mut edge = EdgeAggregator::new(cfg);
    stream(&mut edge, Box::new(|s| engine.push_window(s, &mut found)));
    let correlator_kib = rss_kib().saturating_sub(base).saturating_sub(sensor_kib);
    println!(
        "memory per tracked rank ({tracked} ranks): sensor edge {:.0} B, correlator engine {:.0} B (resident memory growth)",
        sensor_kib as f64 * 1024.0 / tracked as f64,
        correlator_kib as f64 * 1024.0 / tracked as f64
    );
    Ok(())
}

/// `keel bench live`: the whole live cluster of `keel demo` (leader kill
/// and correlator crash included), once per seed, quietly.
pub fn live(scenario: &str, seeds: &[u64]) -> Result<()> {
    let mut all = Vec::new();
    let (mut missed, mut wrong, mut false_alarms) = (0, 0, 0);
    for &seed in seeds {
        let r = crate::live::run(crate::live::LiveOptions {
            scenario: scenario.into(),
            seed,
            speed: 1.0,
            keep: None,
            quiet: true,
            duration: None,
            http: None,
            stay: false,
            slurm: false,
        })?;
        println!(
            "seed {seed}: onset to commit {:?} s; missed {}, wrong cause {}, false alarms {}",
            r.latencies
                .iter()
                .map(|l| (l * 100.0).round() / 100.0)
                .collect::<Vec<_>>(),
            r.missed,
            r.wrong_cause,
            r.false_alarms
        );
        all.extend(r.latencies);
        missed += r.missed;
        wrong += r.wrong_cause;
        false_alarms += r.false_alarms;
    }
    all.sort_by(f64::total_cmp);
    let q =
        |p: f64| all.get(((all.len() as f64 * p).ceil() as usize).clamp(1, all.len().max(1)) - 1);
    println!(
        "{} episodes: p50 {:.2} s, p99 {:.2} s, max {:.2} s; missed {missed}, wrong cause {wrong}, false alarms {false_alarms}",
        all.len(),
        q(0.5).copied().unwrap_or(f64::NAN),
        q(0.99).copied().unwrap_or(f64::NAN),
        all.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}

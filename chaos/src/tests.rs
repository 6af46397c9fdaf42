use super::*;
use crate::cluster::FB_TOTAL_MIB;
use keel_model::{CollectiveRecord, FindingKind, JobRecord, Label, MetricName, MetricSample};
use serde_json::Value;
use std::collections::BTreeMap;

struct Run {
    trace: Vec<u8>,
    labels: Vec<Label>,
    summary: GenSummary,
    stats: writer::Stats,
}

fn run(name: &str, seed: u64, duration_s: Option<f64>) -> Run {
    let plan = scenarios::build(name, seed, &GenOptions { duration_s }).unwrap();
    let (mut trace, mut labels) = (Vec::new(), Vec::new());
    let names = (Path::new("trace"), Path::new("labels"));
    let (summary, stats) = write_plan(&plan, seed, &mut trace, &mut labels, names).unwrap();
    let labels = lines(&labels)
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    Run {
        trace,
        labels,
        summary,
        stats,
    }
}

fn lines(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    buf.split(|&b| b == b'\n').filter(|l| !l.is_empty())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn names() -> Vec<&'static str> {
    scenarios().iter().map(|s| s.name).collect()
}

#[test]
fn same_seed_same_bytes_other_seed_differs() {
    let opts = GenOptions {
        duration_s: Some(60.0),
    };
    let gen = |seed| {
        let (mut t, mut l) = (Vec::new(), Vec::new());
        generate("noisy", seed, &opts, &mut t, &mut l).unwrap();
        (t, l)
    };
    let a = gen(3);
    assert_eq!(a, gen(3));
    assert_ne!(a.0, gen(4).0);

    let dir = std::env::temp_dir().join(format!("keel-chaos-test-{}", std::process::id()));
    let s = generate_to_dir("noisy", 3, &opts, &dir).unwrap();
    assert_eq!(std::fs::read(dir.join("trace.jsonl")).unwrap(), a.0);
    assert_eq!(std::fs::read(dir.join("labels.jsonl")).unwrap(), a.1);
    assert_eq!(s.records, lines(&a.0).count() as u64);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn unknown_scenario_lists_the_known_ones() {
    let mut sink = Vec::new();
    let err = generate(
        "nope",
        1,
        &GenOptions::default(),
        &mut sink,
        &mut Vec::new(),
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("nope"), "{msg}");
    for name in names() {
        assert!(msg.contains(name), "{msg}");
    }
    assert!(sink.is_empty());
}

/// Every line is JSON with `t` and `ts` except the deliberately malformed
/// ones, and the known record types have their spec shape.
#[test]
fn lines_parse_except_deliberate_junk() {
    for name in names() {
        let d = if name == "large" { 30.0 } else { 80.0 };
        let r = run(name, 1, Some(d));
        let mut bad = 0;
        let mut n = 0;
        for line in lines(&r.trace) {
            n += 1;
            let Ok(v) = serde_json::from_slice::<Value>(line) else {
                bad += 1;
                continue;
            };
            let t = v["t"].as_str().unwrap_or_else(|| panic!("{name}: no t"));
            let ts = v["ts"].as_f64().unwrap_or_else(|| panic!("{name}: no ts"));
            assert!(ts > build::TS_BASE, "{name}: ts {ts}");
            match t {
                "collective" => {
                    let c: CollectiveRecord = serde_json::from_value(v).unwrap();
                    assert!(c.dur_us > 0.0);
                    // One clock: dur_us matches ts - arrive (to rounding and drift).
                    let tol = 3.0 + 50e-6 * c.dur_us;
                    assert!(((c.ts - c.arrive) * 1e6 - c.dur_us).abs() < tol, "{c:?}");
                }
                "job" => {
                    let j: JobRecord = serde_json::from_value(v).unwrap();
                    assert_eq!(j.rank_count() as u32, j.tp.unwrap());
                }
                "metric"
                    if v["value"].is_f64()
                        && MetricName::from_wire(v["name"].as_str().unwrap()).is_some() =>
                {
                    let m: MetricSample = serde_json::from_value(v).unwrap();
                    assert!(m.value.is_finite());
                }
                "metric" => {}
                "request" => {
                    let q: keel_model::RequestRecord = serde_json::from_value(v).unwrap();
                    assert!(q.job.is_some() && q.node.is_some(), "{q:?}");
                }
                _ => assert!(["kernel", "log"].contains(&t), "{name}: {t}"),
            }
        }
        assert_eq!(bad, r.stats.malformed, "{name}");
        assert_eq!(n, r.summary.records, "{name}");
        assert!((bad as f64) < 0.01 * n as f64, "{name}: {bad} of {n}");
    }
}

/// Labels carry the fields their kind's locus needs, a cause, and sit
/// inside the trace after its healthy start.
#[test]
fn labels_are_well_formed() {
    let mut kinds = BTreeMap::new();
    for (name, seed) in corpus().into_iter().chain([("large", 1)]) {
        let plan = scenarios::build(name, seed, &GenOptions::default()).unwrap();
        let (start, end) = (plan.cluster.ts0, plan.cluster.end());
        for l in plan.labels() {
            assert!(l.locus().is_some(), "{name} {seed}: {l:?}");
            assert!(l.cause.is_some(), "{name} {seed}: {l:?}");
            assert!(l.onset < l.end, "{name} {seed}: {l:?}");
            assert!(
                l.onset >= start + build::EARLIEST_ONSET,
                "{name} {seed}: {l:?}"
            );
            assert!(l.end <= end, "{name} {seed}: {l:?}");
            if l.kind == FindingKind::TpStraggler {
                let len = l.end - l.onset;
                assert!((20.0..=60.0).contains(&len), "{name} {seed}: {l:?}");
                assert!(l.node.is_some());
            }
            *kinds.entry(l.kind).or_insert(0) += 1;
        }
    }
    for kind in [
        FindingKind::TpStraggler,
        FindingKind::GpuSquatter,
        FindingKind::KvCacheSaturation,
        FindingKind::EngineStall,
        FindingKind::RetransmitStorm,
        FindingKind::NicSaturation,
    ] {
        assert!(kinds.contains_key(&kind), "{kind} never labelled");
    }
}

#[test]
fn clean_scenarios_have_no_labels() {
    for name in ["healthy", "whole-job-slowdown", "spikes"] {
        for seed in 0..6 {
            let plan = scenarios::build(name, seed, &GenOptions::default()).unwrap();
            assert!(plan.labels().is_empty(), "{name} {seed}");
        }
    }
}

#[test]
fn straggler_episodes_of_one_job_keep_apart() {
    for (name, seed) in corpus() {
        let plan = scenarios::build(name, seed, &GenOptions::default()).unwrap();
        let mut by_job: BTreeMap<_, Vec<(f64, f64)>> = BTreeMap::new();
        for l in plan
            .labels()
            .into_iter()
            .filter(|l| l.kind == FindingKind::TpStraggler)
        {
            by_job
                .entry(l.job.clone())
                .or_default()
                .push((l.onset, l.end));
        }
        // That scenario's point is an episode right after another.
        let gap = if name == "straggler-back-to-back" {
            0.2
        } else {
            20.0
        };
        for w in by_job.values() {
            for pair in w.windows(2) {
                assert!(pair[1].0 - pair[0].1 >= gap, "{name} {seed}: {w:?}");
            }
        }
    }
}

/// During an episode the straggler arrives last, so its collectives are the
/// shortest of its job (its peers wait for it).
#[test]
fn straggler_has_the_shortest_median_collective() {
    let mut checked = 0;
    for (name, seed) in corpus() {
        if !name.starts_with("straggler") && name != "mixed" {
            continue;
        }
        let r = run(name, seed, None);
        for l in r
            .labels
            .iter()
            .filter(|l| l.kind == FindingKind::TpStraggler)
        {
            let job = l.job.as_ref().unwrap();
            let key = format!("\"job\":\"{job}\"");
            let mut durs: BTreeMap<u32, Vec<f64>> = BTreeMap::new();
            for line in lines(&r.trace) {
                if !line.starts_with(b"{\"t\":\"collective\"") || !contains(line, key.as_bytes()) {
                    continue;
                }
                let Ok(c) = serde_json::from_slice::<CollectiveRecord>(line) else {
                    continue;
                };
                if c.ts > l.onset + 1.0 && c.ts < l.end - 1.0 {
                    durs.entry(c.rank).or_default().push(c.dur_us);
                }
            }
            let medians: BTreeMap<u32, f64> =
                durs.iter_mut().map(|(r, v)| (*r, median(v))).collect();
            let shortest = medians.iter().min_by(|a, b| a.1.total_cmp(b.1)).unwrap();
            assert_eq!(
                *shortest.0,
                l.rank.unwrap(),
                "{name} {seed} {l:?}: {medians:?}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 30, "{checked}");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// A squatting GPU holds nearly all its memory and does nothing.
#[test]
fn squatters_hold_memory_without_work() {
    for seed in [1, 2] {
        let r = run("gpu-squatter", seed, None);
        let squat: Vec<&Label> = r
            .labels
            .iter()
            .filter(|l| l.kind == FindingKind::GpuSquatter)
            .collect();
        assert!(squat.len() >= 2);
        for l in squat {
            let (mut fb, mut util) = (Vec::new(), Vec::new());
            for line in lines(&r.trace) {
                let Ok(m) = serde_json::from_slice::<MetricSample>(line) else {
                    continue;
                };
                if Some(&m.node) != l.node.as_ref() || m.labels.gpu != l.gpu {
                    continue;
                }
                if m.ts < l.onset + 2.0 || m.ts > l.end - 1.0 {
                    continue;
                }
                match m.name {
                    MetricName::FbUsed => fb.push(m.value),
                    MetricName::GpuUtil => util.push(m.value),
                    _ => {}
                }
            }
            assert!(fb.len() > 40, "{l:?}");
            assert!(fb.iter().all(|&v| v >= 0.96 * FB_TOTAL_MIB - 1.0), "{l:?}");
            assert!(util.iter().all(|&v| v <= 3.0), "{l:?}");
            assert!(l.end - l.onset >= 60.0, "{l:?}");
        }
    }
}

/// Late lines land at most 4 s after the lines they should precede (readers
/// allow 5 s), and the heavy scenario does have some.
#[test]
fn out_of_order_lines_stay_within_five_seconds() {
    for (name, seed) in [("noisy", 1), ("noisy", 2), ("healthy", 1)] {
        let r = run(name, seed, None);
        let (mut newest, mut worst, mut late) = (0.0f64, 0.0f64, 0);
        for line in lines(&r.trace) {
            let Ok(v) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            let ts = v["ts"].as_f64().unwrap();
            newest = newest.max(ts);
            worst = worst.max(newest - ts);
            if newest - ts > 0.5 {
                late += 1;
            }
        }
        assert!(worst <= 5.0, "{name}: {worst}");
        if name == "noisy" {
            assert!(late > 100, "{name}: {late}");
            assert!(r.stats.non_finite > 0 && r.stats.unknown > 0);
        }
    }
}

/// node-exporter restarts show as counters that go back down.
#[test]
fn counter_resets_happen() {
    let r = run("noisy", 1, None);
    let mut last: BTreeMap<(String, String), f64> = BTreeMap::new();
    let mut drops = 0;
    for line in lines(&r.trace) {
        let Ok(m) = serde_json::from_slice::<MetricSample>(line) else {
            continue;
        };
        if m.name == MetricName::TcpOutSegs {
            let key = (m.node.to_string(), String::new());
            if let Some(prev) = last.insert(key, m.value) {
                if m.value < prev {
                    drops += 1;
                }
            }
        }
    }
    assert!(drops >= 1);
}

#[test]
fn corpus_is_big_enough() {
    let c = corpus();
    assert!(c.len() >= 24);
    for name in names() {
        let n = c.iter().filter(|(s, _)| *s == name).count();
        if name == "large" {
            assert_eq!(n, 0);
        } else {
            assert!(n >= 1, "{name}");
        }
    }
    let labels: usize = c
        .iter()
        .map(|&(name, seed)| {
            scenarios::build(name, seed, &GenOptions::default())
                .unwrap()
                .labels()
                .len()
        })
        .sum();
    assert!(labels >= 50, "{labels}");
}

/// Benchmarks ask `large` for long traces: it must reach a million records
/// in a few minutes of trace time.
#[test]
fn large_scales_with_duration() {
    let r = run("large", 5, Some(40.0));
    let per_s = r.summary.records as f64 / 40.0;
    assert!(per_s * 300.0 >= 1.0e6, "{per_s} records/s");
    assert!((r.summary.end - r.summary.start - 40.0).abs() < 1e-9);
}

#[test]
fn straggler_scenarios_have_two_to_four_episodes() {
    for name in names().into_iter().filter(|n| n.starts_with("straggler")) {
        for seed in 0..100 {
            let plan = scenarios::build(name, seed, &GenOptions::default()).unwrap();
            let n = plan
                .labels()
                .iter()
                .filter(|l| l.kind == FindingKind::TpStraggler)
                .count();
            assert!((2..=4).contains(&n), "{name} {seed}: {n}");
        }
    }
}

/// Each fault scenario carries its fault for any seed, and `mixed` one of every kind.
#[test]
fn fault_scenarios_always_carry_their_faults() {
    let expect: &[(&str, &[FindingKind])] = &[
        ("gpu-squatter", &[FindingKind::GpuSquatter]),
        ("kv-cache-saturation", &[FindingKind::KvCacheSaturation]),
        ("engine-stall", &[FindingKind::EngineStall]),
        ("retransmit-storm", &[FindingKind::RetransmitStorm]),
        ("nic-saturation", &[FindingKind::NicSaturation]),
        ("noisy", &[]),
        (
            "mixed",
            &[
                FindingKind::TpStraggler,
                FindingKind::GpuSquatter,
                FindingKind::KvCacheSaturation,
                FindingKind::EngineStall,
                FindingKind::RetransmitStorm,
                FindingKind::NicSaturation,
            ],
        ),
    ];
    for &(name, kinds) in expect {
        for seed in 0..60 {
            let plan = scenarios::build(name, seed, &GenOptions::default()).unwrap();
            let labels = plan.labels();
            assert!(!labels.is_empty(), "{name} {seed}");
            for l in &labels {
                assert!(
                    l.locus().is_some() && l.onset < l.end,
                    "{name} {seed}: {l:?}"
                );
                assert!(l.onset >= plan.cluster.ts0 + build::EARLIEST_ONSET);
                assert!(l.end <= plan.cluster.end(), "{name} {seed}: {l:?}");
            }
            for kind in kinds {
                assert!(
                    labels.iter().any(|l| l.kind == *kind),
                    "{name} {seed}: no {kind}"
                );
            }
        }
    }
}

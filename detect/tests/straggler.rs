//! The straggler detector fed directly with records: no files, no sockets,
//! no clock. Each test builds a TP job's collectives by the spec's arrival
//! model (all ranks leave together; a late rank waits least).

use keel_detect::{Config, Engine};
use keel_model::{CollectiveRecord, Finding, JobRecord, JobState, Record, Timestamp};
use std::collections::BTreeMap;

const T0: f64 = 1_763_800_000.0;
const STEP: f64 = 0.04;

fn job(ranks: u32) -> Record {
    job_at(ranks, T0, JobState::Running)
}

fn job_at(ranks: u32, ts: Timestamp, state: JobState) -> Record {
    let mut by_node: BTreeMap<keel_model::Name, Vec<u32>> = BTreeMap::new();
    let mut gpus = BTreeMap::new();
    for r in 0..ranks {
        let node = if r < ranks / 2 { "n01" } else { "n02" };
        by_node.entry(node.into()).or_default().push(r);
        gpus.insert(r, r % (ranks / 2).max(1));
    }
    Record::Job(Box::new(JobRecord {
        ts,
        node: None,
        job: "j1".into(),
        state,
        tenant: None,
        nodes: by_node.keys().cloned().collect(),
        ranks: by_node,
        gpus,
        nics: BTreeMap::new(),
        node_gpus: Default::default(),
        tp: Some(ranks),
        pp: None,
        replica: None,
    }))
}

/// What one run produced.
struct Run {
    engine: Engine,
    findings: Vec<Finding>,
    /// Each clearing with the number of findings emitted before it.
    cleared: Vec<(usize, Finding)>,
}

/// `delay(step, rank)` is how late the rank arrives at that step (seconds);
/// `offset(rank)` its node clock's offset.
fn run(
    ranks: u32,
    steps: u64,
    delay: impl Fn(u64, u32) -> f64,
    offset: impl Fn(u32) -> f64,
) -> Vec<Finding> {
    let r = run_all(ranks, steps, delay, offset);
    assert!(
        r.cleared.len() <= r.findings.len(),
        "more clearings than findings: {:?}",
        r.cleared
    );
    r.findings
}

fn run_all(
    ranks: u32,
    steps: u64,
    delay: impl Fn(u64, u32) -> f64,
    offset: impl Fn(u32) -> f64,
) -> Run {
    run_in(Engine::default(), ranks, steps, delay, offset)
}

fn run_in(
    mut engine: Engine,
    ranks: u32,
    steps: u64,
    delay: impl Fn(u64, u32) -> f64,
    offset: impl Fn(u32) -> f64,
) -> Run {
    let mut out = Vec::new();
    let mut cleared = Vec::new();
    engine.push(&job(ranks), &mut out);
    let mut start = T0 + 1.0;
    for seq in 0..steps {
        let arrivals: Vec<f64> = (0..ranks)
            .map(|r| start + STEP + delay(seq, r) + 1e-5 * f64::from(r))
            .collect();
        let leave = arrivals.iter().copied().fold(f64::MIN, f64::max) + 0.0003;
        for r in 0..ranks {
            let rec = CollectiveRecord {
                ts: leave + offset(r),
                node: if r < ranks / 2 { "n01" } else { "n02" }.into(),
                job: "j1".into(),
                rank: r,
                op: "allreduce".into(),
                seq,
                bytes: 1 << 24,
                arrive: arrivals[r as usize] + offset(r),
                dur_us: (leave - arrivals[r as usize]) * 1e6,
            };
            engine.push(&Record::Collective(rec), &mut out);
            for c in engine.take_cleared() {
                cleared.push((out.len(), c));
            }
        }
        start = leave;
    }
    Run {
        engine,
        findings: out,
        cleared,
    }
}

fn none(_: u32) -> f64 {
    0.0
}

#[test]
fn a_late_rank_is_found_as_the_rank_that_waits_least() {
    // rank 5 computes 10% longer from step 1000 on
    let f = run(
        8,
        2000,
        |s, r| if r == 5 && s >= 1000 { 0.1 * STEP } else { 0.0 },
        none,
    );
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].rank, Some(5));
    assert_eq!(f[0].node.as_deref(), Some("n02"));
    // Each step lasts a little over STEP (the collective itself).
    let onset = T0 + 1.0 + 1000.0 * (STEP + 0.0003);
    // Without telemetry nothing can decide the cause: it is settled as
    // `unknown` once the attribution grace has passed, about 0.6 s + 1.5 s.
    let latency = f[0].ts - onset;
    assert!(
        latency > 0.0 && latency < 2.5,
        "concluded {latency} s after onset"
    );
    assert_eq!(f[0].cause, keel_model::Cause::Unknown);
}

#[test]
fn node_clock_offsets_change_nothing() {
    let delay = |s: u64, r: u32| if r == 2 && s >= 800 { 0.08 * STEP } else { 0.0 };
    let skewed = |r: u32| if r < 4 { -0.05 } else { 0.047 };
    let plain = run(8, 1600, delay, none);
    let offset = run(8, 1600, delay, skewed);
    assert_eq!(plain.len(), 1);
    assert_eq!(offset.len(), 1);
    assert_eq!(plain[0].rank, offset[0].rank);
}

#[test]
fn a_whole_job_slowing_down_together_is_not_a_straggler() {
    let f = run(
        8,
        2000,
        |s, _| if s >= 1000 { 0.4 * STEP } else { 0.0 },
        none,
    );
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn a_straggler_that_catches_up_clears_once_under_its_locus() {
    let r = run_all(
        8,
        2400,
        |s, r| {
            if r == 5 && (1000..1600).contains(&s) {
                0.1 * STEP
            } else {
                0.0
            }
        },
        none,
    );
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    assert_eq!(r.cleared.len(), 1, "{:?}", r.cleared);
    let (before, c) = &r.cleared[0];
    let f = &r.findings[0];
    assert_eq!(*before, 1, "the clearing came before its finding");
    assert_eq!(c.kind, f.kind);
    assert_eq!(c.locus(), f.locus());
    assert_eq!(
        (&c.job, &c.node, c.rank, c.gpu, &c.device),
        (&f.job, &f.node, f.rank, f.gpu, &f.device)
    );
    // Rank 5 catches up at step 1600; the episode closes after `clear_s`.
    let recovered = T0 + 1.0 + 1600.0 * (STEP + 0.0003);
    assert!(
        c.ts > f.ts && c.ts > recovered && c.ts - recovered < 6.0,
        "{c:?}"
    );
    assert_eq!(c.evidence.len(), 1, "{:?}", c.evidence);
}

#[test]
fn a_straggler_that_clears_before_attribution_is_reported_then_cleared() {
    let mut cfg = Config::default();
    cfg.straggler.clear_s = 0.5;
    cfg.straggler.attribution_grace_s = 60.0;
    let r = run_in(
        Engine::new(cfg),
        8,
        1400,
        |s, r| {
            if r == 5 && (1000..1100).contains(&s) {
                0.1 * STEP
            } else {
                0.0
            }
        },
        none,
    );
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    assert_eq!(r.cleared.len(), 1, "{:?}", r.cleared);
    let (before, c) = &r.cleared[0];
    assert_eq!(*before, 1);
    assert_eq!(c.locus(), r.findings[0].locus());
    // Reported only because it closed: both in the same judgement.
    assert_eq!(c.ts, r.findings[0].ts);
}

#[test]
fn a_straggler_clears_when_its_job_ends() {
    let mut r = run_all(
        8,
        2000,
        |s, r| if r == 5 && s >= 1000 { 0.1 * STEP } else { 0.0 },
        none,
    );
    assert_eq!(r.findings.len(), 1, "{:?}", r.findings);
    assert!(r.cleared.is_empty(), "{:?}", r.cleared);
    let end = r.engine.now() + 1.0;
    r.engine
        .push(&job_at(8, end, JobState::Completed), &mut r.findings);
    assert_eq!(r.findings.len(), 1);
    let cleared = r.engine.take_cleared();
    assert_eq!(cleared.len(), 1, "{cleared:?}");
    assert_eq!(cleared[0].locus(), r.findings[0].locus());
    assert_eq!(cleared[0].ts, end);
    assert!(r.engine.take_cleared().is_empty());
}

#[test]
fn nothing_clears_without_a_finding() {
    let mut r = run_all(
        8,
        2000,
        |s, _| if s >= 1000 { 0.4 * STEP } else { 0.0 },
        none,
    );
    assert!(r.findings.is_empty(), "{:?}", r.findings);
    assert!(r.cleared.is_empty(), "{:?}", r.cleared);
    let end = r.engine.now() + 1.0;
    r.engine
        .push(&job_at(8, end, JobState::Completed), &mut r.findings);
    assert!(r.engine.take_cleared().is_empty());
}

#[test]
fn one_off_spikes_are_not_a_straggler() {
    // every 50th step one rank is 3 steps late, never twice in a row
    let f = run(
        8,
        3000,
        |s, r| {
            if s % 50 == 0 && r == (s / 50 % 8) as u32 {
                3.0 * STEP
            } else {
                0.0
            }
        },
        none,
    );
    assert!(f.is_empty(), "{f:?}");
}

#[test]
fn a_habitually_late_rank_is_not_a_straggler_but_its_slowdown_is() {
    // rank 1 is always 2% late (a slower hop); from step 1500 it is 7% late
    let f = run(
        2,
        3000,
        |s, r| match (r, s >= 1500) {
            (1, false) => 0.02 * STEP,
            (1, true) => 0.07 * STEP,
            _ => 0.0,
        },
        none,
    );
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].rank, Some(1));
    assert!(f[0].ts > T0 + 1.0 + 1500.0 * STEP);
}

#[test]
fn the_episode_is_reported_once_and_a_new_one_after_it_clears() {
    let r = run_all(
        4,
        4000,
        |s, r| {
            if r == 3 && ((1000..1600).contains(&s) || (2600..3200).contains(&s)) {
                0.2 * STEP
            } else {
                0.0
            }
        },
        none,
    );
    assert_eq!(r.findings.len(), 2, "{:?}", r.findings);
    // Each episode's clearing follows its own finding and precedes the next.
    let before: Vec<usize> = r.cleared.iter().map(|c| c.0).collect();
    assert_eq!(before, [1, 2], "{:?}", r.cleared);
    for (f, (_, c)) in r.findings.iter().zip(&r.cleared) {
        assert_eq!(c.locus(), f.locus());
        assert!(c.ts > f.ts);
    }
}

#[test]
fn a_rank_whose_lateness_jitters_by_milliseconds_is_judged_against_its_own_noise() {
    // Every rank's arrival jitters over 8% of a step (a busy host: a median
    // absolute deviation of ~2% of the step). From step 1500 rank 2 is
    // 3.5% later for 60 steps: past the plain 2.5% threshold, yet within
    // two of its own deviations. From step 2500 it is 12% later: a
    // straggler however noisy the host.
    let jitter = |s: u64, r: u32| {
        let mut x =
            s.wrapping_mul(6364136223846793005) ^ u64::from(r).wrapping_mul(1442695040888963407);
        x ^= x >> 29;
        x = x.wrapping_mul(0xbf58476d1ce4e5b9);
        x ^= x >> 32;
        (x % 1000) as f64 / 1000.0 * 0.08 * STEP
    };
    let delay = move |s: u64, r: u32| {
        let extra = match (r, s) {
            (2, 1500..1560) => 0.035 * STEP,
            (2, 2500..) => 0.12 * STEP,
            _ => 0.0,
        };
        jitter(s, r) + extra
    };
    let f = run(4, 3000, delay, none);
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].rank, Some(2));
    assert!(f[0].ts > T0 + 1.0 + 2500.0 * STEP, "{f:?}");

    // Judged against the plain threshold alone, the same noise is an alarm.
    let mut cfg = Config::default();
    cfg.straggler.noise_ratio = 0.0;
    let plain = run_in(Engine::new(cfg), 4, 3000, delay, none);
    assert!(
        plain
            .findings
            .iter()
            .any(|f| f.ts < T0 + 1.0 + 2500.0 * STEP),
        "{:?}",
        plain.findings
    );
}

#[test]
fn a_small_lateness_is_concluded_when_it_lasts_not_when_a_burst_carries_it() {
    // Every rank jitters over 3% of a step (a median absolute deviation
    // under 1%: the 2.5% threshold decides). Three times rank 2 is 4% later
    // for 15 steps (a burst of a busy host: past the threshold, within the
    // 5% noise cap, long enough to carry the short window's median); from
    // step 2500 it is 4% later for good: a small straggler, and a real one.
    let jitter = |s: u64, r: u32| {
        let mut x =
            s.wrapping_mul(6364136223846793005) ^ u64::from(r).wrapping_mul(1442695040888963407);
        x ^= x >> 29;
        x = x.wrapping_mul(0xbf58476d1ce4e5b9);
        x ^= x >> 32;
        (x % 1000) as f64 / 1000.0 * 0.03 * STEP
    };
    let delay = move |s: u64, r: u32| {
        let extra = match (r, s) {
            (2, 1500..1515 | 1800..1815 | 2100..2115) => 0.04 * STEP,
            (2, 2500..) => 0.04 * STEP,
            _ => 0.0,
        };
        jitter(s, r) + extra
    };
    // A short window, as over the sensors' summaries (9 entries of two
    // collectives): a burst carries its median sooner.
    // `weak_window` as `keel chaos run` sets it for ranks sharing cores.
    let mut cfg = Config::default();
    cfg.straggler.window = 8;
    cfg.straggler.min_window = 4;
    cfg.straggler.weak_window = 32;
    let f = run_in(Engine::new(cfg.clone()), 4, 3000, delay, none).findings;
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(f[0].rank, Some(2));
    // When step 2500 begins (as `run_in` lays steps out).
    let onset = (0..2500).fold(T0 + 1.0, |t, s| {
        let slowest = (0..4).map(|r| delay(s, r)).fold(0.0, f64::max);
        t + STEP + slowest + 3e-5 + 0.0003
    });
    // Half the long window late (16 steps, 0.7 s), the confirmation (0.4 s)
    // and the wait for telemetry to attribute it (1.5 s).
    assert!(f[0].ts > onset && f[0].ts < onset + 3.5, "{onset} {f:?}");

    // Judged over the short window alone (the default), each burst is an alarm.
    cfg.straggler.weak_window = 0;
    let short = run_in(Engine::new(cfg), 4, 3000, delay, none);
    let early = short.findings.iter().filter(|f| f.ts < onset).count();
    assert!(early >= 1, "{:?}", short.findings);
}

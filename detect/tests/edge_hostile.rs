//! The sensor's edge aggregation takes collectives from any local process
//! (the push endpoint), so what a datagram says must never cost more than
//! a bounded amount of memory, nor move the job's clock.

use keel_detect::edge::{
    check_summary, EdgeAggregator, EdgeConfig, CLOCK_GAP_MAX_S, NAME_LEN_MAX, RANKS_PER_JOB_MAX,
};
use keel_model::CollectiveRecord;

const T0: f64 = 1_800_000_000.0;

fn coll(job: &str, rank: u32, seq: u64, ts: f64, dur_us: f64) -> CollectiveRecord {
    CollectiveRecord {
        ts,
        node: "n1".into(),
        job: job.into(),
        rank,
        op: "allreduce".into(),
        seq,
        bytes: 1024,
        arrive: ts - dur_us / 1e6,
        dur_us,
    }
}

#[test]
fn a_huge_rank_costs_one_entry_not_a_vector_of_that_size() {
    let mut edge = EdgeAggregator::new(EdgeConfig::default());
    let mut out = Vec::new();
    // Once aborted the sensor ("memory allocation of 584115552256 bytes failed").
    edge.push(&coll("j", u32::MAX, 0, T0, 900.0), T0, &mut out);
    edge.push(
        &coll("j", u32::MAX, 1, T0 + 0.03, 900.0),
        T0 + 0.03,
        &mut out,
    );
    assert_eq!(out.len(), 1, "the rank is summarised like any other");
    assert_eq!(out[0].rank, u32::MAX);
}

#[test]
fn ranks_beyond_the_bound_are_dropped_and_counted() {
    let mut edge = EdgeAggregator::new(EdgeConfig::default());
    let mut out = Vec::new();
    let n = RANKS_PER_JOB_MAX as u32 + 10;
    for r in 0..n {
        edge.push(&coll("j", r * 1000, 0, T0, 900.0), T0, &mut out);
    }
    assert_eq!(edge.stats.ranks_dropped, 10);
}

#[test]
fn stamps_far_from_the_sensors_clock_and_absurd_durations_are_refused() {
    let mut edge = EdgeAggregator::new(EdgeConfig::default());
    let mut out = Vec::new();
    let far = T0 + CLOCK_GAP_MAX_S * 10.0;
    edge.push(&coll("j", 0, 0, far, 900.0), T0, &mut out);
    edge.push(&coll("j", 0, 1, T0, f64::INFINITY), T0, &mut out);
    edge.push(&coll("j", 0, 2, T0, -5.0), T0, &mut out);
    assert_eq!(edge.stats.implausible, 3);
    assert!(edge.offset_s().is_none(), "the clock estimate is untouched");
    // The job's real collectives are summarised as if nothing happened.
    for seq in 4..8 {
        let ts = T0 + seq as f64 * 0.03;
        edge.push(&coll("j", 0, seq, ts, 900.0), ts + 0.001, &mut out);
    }
    assert_eq!(out.len(), 2);
    assert!(out.iter().all(|s| (s.window_end - T0).abs() < 1.0));
}

#[test]
fn names_longer_than_a_dns_name_are_refused_at_the_edge_and_at_the_correlator() {
    let mut edge = EdgeAggregator::new(EdgeConfig::default());
    let mut out = Vec::new();
    let long = "j".repeat(NAME_LEN_MAX + 1);
    edge.push(&coll(&long, 0, 0, T0, 900.0), T0, &mut out);
    let mut op = coll("j", 0, 0, T0, 900.0);
    op.op = "x".repeat(60_000).into();
    edge.push(&op, T0, &mut out);
    assert_eq!(edge.stats.implausible, 2);
    // A name at the bound is a name.
    let fine = "j".repeat(NAME_LEN_MAX);
    edge.push(&coll(&fine, 0, 0, T0, 900.0), T0, &mut out);
    edge.push(&coll(&fine, 0, 1, T0 + 0.03, 900.0), T0 + 0.03, &mut out);
    assert_eq!(out.len(), 1);
    let mut s = out[0].clone();
    assert!(check_summary(&s, Some(T0)).is_ok());
    s.job = long.into();
    let why = check_summary(&s, Some(T0)).unwrap_err();
    assert!(why.contains("254 bytes"), "{why}");
}

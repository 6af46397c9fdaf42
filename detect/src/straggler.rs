//! `tp_straggler`: one rank arrives late at the job's collectives.
//!
//! All ranks of a collective leave at about the same moment, so the rank that
//! arrives last spends the least time inside it: its peers wait for it. The
//! detector therefore reads `dur_us` only, which each rank measures on its own
//! clock, and never compares `arrive` or `ts` across nodes (their clocks may be
//! tens of milliseconds apart and drift). For each collective, a rank's
//! lateness is the median time its peers spent inside minus its own; a rank is
//! a straggler when the median of its lateness over a window of collectives is
//! a real share of the step period and it is the last to arrive in most of
//! them. A whole job slowing down leaves lateness unchanged; one-off spikes do
//! not move a median.

use crate::attribute::{attribute, attribute_span, Attribution, Site};
use crate::config::StragglerConfig;
use crate::episode::{Episode, Reported, Step};
use crate::signals::SignalStore;
use crate::stats::{median_in_place, Ring};
use crate::topology::Topology;
use keel_model::{CollectiveRecord, Finding, FindingKind, Name, Severity, Summary, Timestamp};
use rustc_hash::FxHashMap as HashMap;
use std::collections::BTreeMap;

/// How many collectives between refreshes of the step period estimate.
const PERIOD_REFRESH: u32 = 8;

/// Collectives of one job whose records are still arriving.
#[derive(Debug, Default)]
struct Pending {
    first_ts: Timestamp,
    /// The step period the ranks measured themselves (window summaries).
    step_s: Option<f64>,
    /// Collectives each entry stands for: 1 for single collectives, a
    /// window's count for summaries, so that habits are learned at the same
    /// pace per collective on both paths.
    collectives: u32,
    /// (rank, dur_us, ts)
    entries: Vec<(u32, f64, Timestamp)>,
}

/// Quiet entries a rank's healthy spread is the median of.
const SPREAD_SAMPLES: usize = 64;
/// Entries between two refreshes of the spread.
const SPREAD_REFRESH: u32 = 16;
/// Entries needed before the spread counts.
const SPREAD_MIN: usize = 32;

#[derive(Debug)]
struct RankTiming {
    node: Name,
    lateness: Ring<f64>,
    /// The last `weak_window` entries' lateness (us), for a small one.
    recent: Ring<f64>,
    last: Ring<bool>,
    prev: Option<(u64, Timestamp)>,
    episode: Episode,
    /// The rank's habitual lateness while healthy (some ranks are always a
    /// little late: a slower PCIe switch hop, a busier NUMA node), learned
    /// slowly and only while no episode runs, so it never absorbs one.
    habit: Option<f64>,
    /// Collectives the habit was learned from (saturating).
    learned: u32,
    /// The rank's healthy spread around its habit (us): the median absolute
    /// deviation of its last `SPREAD_SAMPLES` quiet entries (a median, so
    /// one-off spikes do not inflate it), taken every `SPREAD_REFRESH` of
    /// them and averaged as slowly as the habit.
    spread: Option<f64>,
    deviations: Ring<f64>,
    since_spread: u32,
    spread_learned: u32,
    /// Concluded but not yet reported: waiting for attribution.
    unreported: Option<Timestamp>,
    reported: Reported,
    median_us: f64,
    period_s: f64,
    /// When the open, reported episode was last reviewed, and its median
    /// lateness (us) at the last two reviews (see `review`).
    reviewed_at: Timestamp,
    reviewed_us: [f64; 2],
    /// Whether the reported finding's cause rested on positive evidence,
    /// and the onset it was attributed from.
    reported_decisive: bool,
    reported_since: Timestamp,
    /// When the open finding was reported.
    reported_at: Timestamp,
    /// Since when reviews have found the reported cause ruled out.
    cause_gone: Option<Timestamp>,
}

impl RankTiming {
    fn new(node: Name, window: usize, weak_window: usize) -> Self {
        RankTiming {
            node,
            lateness: Ring::new(window),
            recent: Ring::new(weak_window),
            last: Ring::new(window),
            prev: None,
            episode: Episode::Idle,
            habit: None,
            learned: 0,
            spread: None,
            deviations: Ring::new(SPREAD_SAMPLES),
            since_spread: 0,
            spread_learned: 0,
            unreported: None,
            reported: Reported::default(),
            median_us: 0.0,
            period_s: 0.0,
            reviewed_at: f64::NEG_INFINITY,
            reviewed_us: [0.0; 2],
            reported_decisive: false,
            reported_since: 0.0,
            reported_at: 0.0,
            cause_gone: None,
        }
    }
}

#[derive(Debug, Default)]
struct JobTiming {
    pending: BTreeMap<u64, Pending>,
    ranks: HashMap<u32, RankTiming>,
    periods: Option<Ring<f64>>,
    /// The median of `periods`, refreshed every `PERIOD_REFRESH` collectives:
    /// the step period changes slowly and a median per collective costs.
    period: Option<f64>,
    since_refresh: u32,
    /// Collectives at or below this seq were judged already.
    judged_up_to: Option<u64>,
}

/// Counters for the replay summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StragglerStats {
    pub collectives: u64,
    pub judged_incomplete: u64,
    pub dropped_incomplete: u64,
    pub late_records: u64,
    /// Records whose sequence number (window index) leapt more than
    /// [`SEQ_LEAP_MAX`] past the last one judged: refused, so that one
    /// forged number cannot make every later collective "late".
    pub leaps_refused: u64,
}

/// How far past the last judged collective (window) a record's sequence
/// number may be: a million collectives, over a quarter of an hour at
/// 1 kHz; a job that pauses sends none meanwhile, so its numbers do not
/// leap.
pub const SEQ_LEAP_MAX: u64 = 1 << 20;

#[derive(Debug)]
pub struct StragglerDetector {
    cfg: StragglerConfig,
    jobs: HashMap<Name, JobTiming>,
    pub stats: StragglerStats,
}

/// Where one timing came from.
struct At<'a> {
    job: &'a Name,
    node: &'a Name,
    rank: u32,
    seq: u64,
    ts: Timestamp,
}

/// Everything a judgement needs besides the detector's own state.
pub struct Inputs<'a> {
    pub topology: &'a Topology,
    pub signals: &'a SignalStore,
    pub now: Timestamp,
}

impl StragglerDetector {
    pub fn new(cfg: StragglerConfig) -> Self {
        StragglerDetector {
            cfg,
            jobs: HashMap::default(),
            stats: StragglerStats::default(),
        }
    }

    /// Forgets a job that has ended. Its reported stragglers clear with it:
    /// no collective will ever close their episodes.
    pub fn end_job(&mut self, job: &Name, now: Timestamp, cleared: &mut Vec<Finding>) {
        let Some(timing) = self.jobs.remove(job) else {
            return;
        };
        let mut ranks: Vec<(u32, RankTiming)> = timing.ranks.into_iter().collect();
        ranks.sort_unstable_by_key(|(r, _)| *r);
        for (_, mut rt) in ranks {
            cleared.extend(rt.reported.clear(now));
        }
    }

    /// Findings concluded go to `out`; the clearings of findings whose rank
    /// has caught up go to `cleared`.
    pub fn push(
        &mut self,
        rec: &CollectiveRecord,
        inp: &Inputs,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        let at = At {
            job: &rec.job,
            node: &rec.node,
            rank: rec.rank,
            seq: rec.seq,
            ts: rec.ts,
        };
        self.add(at, rec.dur_us, None, 1, inp, out, cleared);
    }

    /// One rank's window of collectives, summarised by its sensor: the
    /// window's median duration stands for its collectives, and the window
    /// index for their sequence numbers.
    pub fn push_window(
        &mut self,
        s: &Summary,
        ts: Timestamp,
        inp: &Inputs,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        let at = At {
            job: &s.job,
            node: &s.node,
            rank: s.rank,
            seq: s.window,
            ts,
        };
        let step = (s.step_us > 0).then(|| s.step_us as f64 / 1e6);
        self.add(at, s.dur_p50_us as f64, step, s.count, inp, out, cleared);
    }

    #[allow(clippy::too_many_arguments)]
    fn add(
        &mut self,
        rec: At,
        dur_us: f64,
        step_s: Option<f64>,
        collectives: u32,
        inp: &Inputs,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        let (window, weak_window) = (self.cfg.window, self.cfg.weak_window);
        // Looked up once: this runs for every collective record.
        let timing = match self.jobs.get_mut(rec.job) {
            Some(t) => t,
            None => self.jobs.entry(rec.job.clone()).or_default(),
        };
        if timing.judged_up_to.is_some_and(|s| rec.seq <= s) {
            self.stats.late_records += 1;
            return;
        }
        if timing
            .judged_up_to
            .is_some_and(|s| rec.seq - s > SEQ_LEAP_MAX)
        {
            self.stats.leaps_refused += 1;
            return;
        }
        timing
            .ranks
            .entry(rec.rank)
            .or_insert_with(|| RankTiming::new(rec.node.clone(), window, weak_window));
        let pending = timing.pending.entry(rec.seq).or_insert_with(|| Pending {
            first_ts: rec.ts,
            step_s: None,
            collectives: 1,
            entries: Vec::new(),
        });
        if pending.entries.iter().any(|e| e.0 == rec.rank) {
            return;
        }
        pending.entries.push((rec.rank, dur_us, rec.ts));
        if step_s.is_some() {
            pending.step_s = step_s;
        }
        pending.collectives = pending.collectives.max(collectives.clamp(1, 1 << 16));
        let expected = inp
            .topology
            .job(rec.job)
            .map(|j| j.ranks.len())
            .filter(|&n| n >= 2)
            .unwrap_or(timing.ranks.len());
        let complete = pending.entries.len() >= expected.max(2);

        // Judge every collective that is complete, or has waited long enough.
        let mut ready = Vec::new();
        if complete {
            ready.push(rec.seq);
        }
        for (&seq, p) in &timing.pending {
            if seq != rec.seq && rec.ts - p.first_ts >= self.cfg.incomplete_after_s {
                ready.push(seq);
            }
        }
        ready.sort_unstable();
        for seq in ready {
            let Some(p) = timing.pending.remove(&seq) else {
                continue;
            };
            let full = p.entries.len() >= expected.max(2);
            if !full && p.entries.len() * 2 < expected.max(4) {
                self.stats.dropped_incomplete += 1;
                continue;
            }
            if !full {
                self.stats.judged_incomplete += 1;
            }
            self.stats.collectives += 1;
            timing.judged_up_to = Some(timing.judged_up_to.map_or(seq, |s| s.max(seq)));
            judge(&self.cfg, rec.job, timing, seq, &p, inp, out, cleared);
        }
    }
}

/// Median of `sorted` without its element at `skip`.
fn median_without(sorted: &[f64], skip: usize) -> f64 {
    let m = sorted.len() - 1;
    let at = |j: usize| if j < skip { sorted[j] } else { sorted[j + 1] };
    if m % 2 == 1 {
        at(m / 2)
    } else {
        (at(m / 2 - 1) + at(m / 2)) / 2.0
    }
}

#[allow(clippy::too_many_arguments)]
fn judge(
    cfg: &StragglerConfig,
    job: &Name,
    timing: &mut JobTiming,
    seq: u64,
    pending: &Pending,
    inp: &Inputs,
    out: &mut Vec<Finding>,
    cleared: &mut Vec<Finding>,
) {
    let entries = &pending.entries[..];
    if entries.len() < 2 {
        return;
    }
    let mut order: Vec<usize> = (0..entries.len()).collect();
    order.sort_by(|&a, &b| entries[a].1.total_cmp(&entries[b].1));
    let sorted: Vec<f64> = order.iter().map(|&i| entries[i].1).collect();
    let last_rank = entries[order[0]].0;

    // The step period, from the latest rank's own clock (so no clock offset).
    let periods = timing.periods.get_or_insert_with(|| Ring::new(32));
    let (r0, _, ts0) = entries[order[0]];
    if let Some(step) = pending.step_s {
        periods.push(step);
    } else if let Some(rt) = timing.ranks.get(&r0) {
        if let Some((pseq, pts)) = rt.prev {
            if seq > pseq && ts0 > pts {
                periods.push((ts0 - pts) / (seq - pseq) as f64);
            }
        }
    }
    timing.since_refresh += 1;
    if timing.period.is_none() || timing.since_refresh >= PERIOD_REFRESH {
        let mut pv = periods.values().to_vec();
        if pv.len() >= 4 {
            timing.period = median_in_place(&mut pv);
            timing.since_refresh = 0;
        }
    }
    let period = timing.period;

    // Habits are learned only while the whole job is quiet: while one rank
    // straggles, its peers' lateness is deeply negative and says nothing of
    // their healthy habit.
    let quiet = timing.ranks.values().all(|r| r.episode == Episode::Idle);
    // One entry standing for n collectives weighs as n would.
    let weight = 1.0 - (1.0 - cfg.habit_weight).powi(pending.collectives as i32);
    for (pos, &i) in order.iter().enumerate() {
        let (rank, dur, ts) = entries[i];
        let Some(rt) = timing.ranks.get_mut(&rank) else {
            continue;
        };
        let late = median_without(&sorted, pos) - dur;
        rt.lateness.push(late);
        rt.recent.push(late);
        if quiet {
            // A plain mean of the first collectives, then the slow average:
            // a habit is known within the job's first seconds, not only
            // after the average's time constant (~500 collectives).
            let n = pending.collectives;
            rt.learned = rt.learned.saturating_add(n);
            let w = weight.max(f64::from(n) / f64::from(rt.learned));
            let h = match rt.habit {
                Some(h) => h + (late - h) * w,
                None => late,
            };
            rt.habit = Some(h);
            // A rank already late past the plain threshold is not healthy:
            // its lateness must not teach it that it is noisy.
            // (Half its window past the threshold: its median is.)
            let suspect = period.is_some_and(|p| {
                let habit = h.clamp(0.0, cfg.habit_cap_share * p * 1e6);
                let base = cfg.late_floor_us.max(cfg.late_share * p * 1e6);
                let values = rt.lateness.values();
                values.iter().filter(|&&v| v - habit >= base).count() * 2 >= values.len()
            });
            if !suspect {
                rt.deviations.push((late - h).abs());
                rt.since_spread += 1;
            }
            if rt.since_spread >= SPREAD_REFRESH && rt.deviations.len() >= SPREAD_MIN {
                rt.since_spread = 0;
                let mut d = rt.deviations.values().to_vec();
                if let Some(m) = median_in_place(&mut d) {
                    // Each refresh weighs as its entries would in the
                    // habit: the spread moves as slowly, so the onset of a
                    // slow straggler does not raise its own bar.
                    rt.spread_learned = rt.spread_learned.saturating_add(1);
                    let w = (f64::from(SPREAD_REFRESH) * cfg.habit_weight)
                        .max(1.0 / f64::from(rt.spread_learned))
                        .min(1.0);
                    rt.spread = Some(rt.spread.map_or(m, |s| s + (m - s) * w));
                }
            }
        }
        rt.last.push(rank == last_rank);
        rt.prev = Some((seq, ts));
    }

    let Some(period) = period else { return };
    let base = cfg.late_floor_us.max(cfg.late_share * period * 1e6);
    let noise_cap = cfg.noise_cap_share * period * 1e6;
    // Capped, so that a rank late from the job's first step is still caught.
    let habit_cap = cfg.habit_cap_share * period * 1e6;
    let ranks: Vec<u32> = timing
        .ranks
        .iter()
        .filter(|(r, t)| **r == last_rank || t.episode != Episode::Idle)
        .map(|(r, _)| *r)
        .collect();
    for rank in ranks {
        let rt = timing.ranks.get_mut(&rank).expect("listed above");
        if rt.lateness.len() < cfg.min_window {
            continue;
        }
        // A median at or above the threshold needs half the window there:
        // for an idle rank, counting is enough to rule that out, and it
        // spares a selection per collective on the hot path.
        let habit = rt.habit.unwrap_or(0.0).clamp(0.0, habit_cap);
        // Above the rank's own healthy noise too: where lateness jitters by
        // milliseconds (a busy host), a median a few milliseconds late is
        // still healthy; capped, so that noise never hides a slowdown
        // operators care about.
        // Until the rank's noise is known (its first few seconds), only a
        // lateness past the cap is concluded: a job's start is its noisiest
        // moment, and its habit is not known yet either.
        let noise = rt.spread.map_or(noise_cap, |spread| {
            (cfg.noise_ratio * spread).min(noise_cap)
        });
        let threshold = base.max(noise);
        if rt.episode == Episode::Idle {
            let above = rt
                .lateness
                .values()
                .iter()
                .filter(|&&v| v - habit >= threshold)
                .count();
            if above * 2 < rt.lateness.len() {
                continue;
            }
        }
        let mut lv = rt.lateness.values().to_vec();
        let med = median_in_place(&mut lv).unwrap_or(0.0);
        let excess = med - habit;
        let last_share =
            rt.last.values().iter().filter(|&&b| b).count() as f64 / rt.last.len() as f64;
        let holds = if rt.episode.is_open() {
            excess >= cfg.clear_ratio * threshold
        } else {
            excess >= threshold
                && last_share >= cfg.last_share
                && (excess >= noise_cap || held_long(rt, cfg, habit, threshold))
        };
        rt.median_us = med;
        rt.period_s = period;
        match rt
            .episode
            .observe(holds, inp.now, cfg.confirm_s, cfg.clear_s)
        {
            Step::Concluded { since } => rt.unreported = Some(since),
            Step::Closed => {
                // Cleared before attribution settled: still report it, since
                // it was concluded.
                if let Some(since) = rt.unreported.take() {
                    report(cfg, job, rank, since, true, None, timing, inp, out);
                }
                let rt = timing.ranks.get_mut(&rank).expect("listed above");
                cleared.extend(rt.reported.clear(inp.now));
                continue;
            }
            Step::Nothing => {}
        }
        if let Some(since) = timing.ranks[&rank].unreported {
            report(cfg, job, rank, since, false, None, timing, inp, out);
        } else if holds && excess >= threshold {
            // Only a rank that is late enough to conclude now can start a
            // new episode (not one on its way back to its habit).
            review(cfg, job, rank, timing, inp, out, cleared);
        }
    }
}

/// Whether a lateness within the noise cap holds over the rank's last
/// `weak_window` entries too (their median past the threshold), not only
/// over the short window a burst of jitter can carry.
fn held_long(rt: &RankTiming, cfg: &StragglerConfig, habit: f64, threshold: f64) -> bool {
    if cfg.weak_window == 0 {
        return true;
    }
    if rt.recent.len() < cfg.weak_window {
        return false;
    }
    let mut v = rt.recent.values().to_vec();
    median_in_place(&mut v).is_some_and(|m| m - habit >= threshold)
}

/// Looks again at an open, reported straggler (every `review_every_s`): a
/// new cause that decides over the last `review_span_s`, or a lateness
/// `lateness_jump` times the one of the previous reviews, is a new episode
/// under the open one. The open finding is then cleared and the new one
/// reported (attributed like any other, from `review_span_s` ago), so a
/// `host` episode that begins while a `gpu` one is open gets its own
/// finding and its own mitigation.
#[allow(clippy::too_many_arguments)]
fn review(
    cfg: &StragglerConfig,
    job: &Name,
    rank: u32,
    timing: &mut JobTiming,
    inp: &Inputs,
    out: &mut Vec<Finding>,
    cleared: &mut Vec<Finding>,
) {
    let rt = &timing.ranks[&rank];
    let Some(open_cause) = rt.reported.cause() else {
        return;
    };
    if !rt.episode.is_open() || inp.now - rt.reviewed_at < cfg.review_every_s {
        return;
    }
    // Against the higher of the last two reviews: a step up within a
    // second, not a rise from one review's dip.
    let before = rt.reviewed_us[0].max(rt.reviewed_us[1]);
    // A fault takes hold over a few seconds (a CPU quota, a queue filling):
    // a finding concluded on its way up is not a new episode when it gets
    // there, so jumps count only once the episode has settled.
    let settled = inp.now - rt.reported_at >= cfg.review_settle_s;
    let jumped = settled && before > 0.0 && rt.median_us >= cfg.lateness_jump * before;
    let was_decisive = rt.reported_decisive;
    let rt = timing.ranks.get_mut(&rank).expect("present");
    rt.reviewed_at = inp.now;
    rt.reviewed_us = [rt.reviewed_us[1], rt.median_us];
    if jumped {
        // A new episode from now: attributed like any other, waiting for
        // its cause (1 Hz exporters) as long as a new one may.
        cleared.extend(rt.reported.clear(inp.now));
        rt.unreported = Some(inp.now);
        return;
    }
    // The last `review_span_s` judged two ways. Against what came before
    // them, the open episode included: a cause that runs since the episode
    // began no longer stands out against its own history, a new one does.
    // Against the history before the reported onset: a cause that decided
    // then and is now ruled out has ended, and what remains is judged on
    // its own (the GPU by elimination, say).
    let (who, peers) = sites(job, rank, timing, inp);
    let from = inp.now - cfg.review_span_s;
    let span = |before: Timestamp| {
        attribute_span(
            inp.signals,
            &who,
            &peers,
            from,
            before,
            inp.now,
            &cfg.attribution,
        )
    };
    let recent = span(from);
    let a = if recent.decisive && recent.cause != open_cause {
        Some(recent)
    } else if was_decisive {
        // Ruled out at every review for another review span: causes such
        // as pageable copies come in bursts, and one quiet span is no end.
        let onset = timing.ranks[&rank].reported_since;
        let b = span(onset - crate::attribute::BASELINE_GAP_S);
        // Gone means gone from the rank's own signals: a cause that no
        // longer stands out only because a peer's signal rose too (another
        // tenant's CPU pressure on a peer node) still holds here.
        let own = || {
            attribute_span(
                inp.signals,
                &who,
                &[],
                from,
                onset - crate::attribute::BASELINE_GAP_S,
                inp.now,
                &cfg.attribution,
            )
            .cause
        };
        let gone =
            b.cause != open_cause && b.cause != keel_model::Cause::Unknown && own() != open_cause;
        let rt = timing.ranks.get_mut(&rank).expect("present");
        rt.cause_gone = if gone {
            rt.cause_gone.or(Some(inp.now))
        } else {
            None
        };
        rt.cause_gone
            .is_some_and(|t| inp.now - t >= cfg.review_span_s)
            .then_some(b)
    } else {
        None
    };
    let changed = a.is_some();
    if !changed {
        return;
    }
    let rt = timing.ranks.get_mut(&rank).expect("present");
    cleared.extend(rt.reported.clear(inp.now));
    rt.unreported = Some(from);
    report(cfg, job, rank, from, true, a, timing, inp, out);
}

/// Where `rank` and its peers sit: the job's placement where known, else
/// the node their records came from.
fn sites(job: &Name, rank: u32, timing: &JobTiming, inp: &Inputs) -> (Site, Vec<Site>) {
    let placement = |r: u32, t: &RankTiming| -> Site {
        let p = inp.topology.job(job).and_then(|j| j.ranks.get(&r));
        Site {
            node: p.map_or_else(|| t.node.clone(), |p| p.node.clone()),
            gpu: p.and_then(|p| p.gpu),
            nic: p.and_then(|p| p.nic.clone()),
        }
    };
    let who = placement(rank, &timing.ranks[&rank]);
    let peers: Vec<Site> = timing
        .ranks
        .iter()
        .filter(|(r, _)| **r != rank)
        .map(|(r, t)| placement(*r, t))
        .collect();
    (who, peers)
}

/// Attributes a concluded straggler and emits its finding once the cause is
/// clear or the grace period has run out (`force`).
#[allow(clippy::too_many_arguments)]
fn report(
    cfg: &StragglerConfig,
    job: &Name,
    rank: u32,
    since: Timestamp,
    force: bool,
    given: Option<Attribution>,
    timing: &mut JobTiming,
    inp: &Inputs,
    out: &mut Vec<Finding>,
) {
    let rt = &timing.ranks[&rank];
    let (who, peers) = sites(job, rank, timing, inp);
    let Attribution {
        cause,
        confidence,
        decisive,
        evidence,
    } = given
        .unwrap_or_else(|| attribute(inp.signals, &who, &peers, since, inp.now, &cfg.attribution));
    let confirmed_at = since + cfg.confirm_s;
    if !(decisive || force || inp.now - confirmed_at >= cfg.attribution_grace_s) {
        return;
    }
    let share = rt.median_us / (rt.period_s * 1e6);
    let last = rt.last.values().iter().filter(|&&b| b).count();
    let mut lines = vec![format!(
        "rank {rank} arrives {:.2} ms (p50) after its peers over the last {} collectives: {:.1}% of a {:.1} ms step; last to arrive in {last}/{}",
        rt.median_us / 1000.0,
        rt.lateness.len(),
        share * 100.0,
        rt.period_s * 1000.0,
        rt.last.len(),
    )];
    lines.extend(evidence);
    let f = Finding {
        basis: None,
        gpu_instance: None,
        related: Vec::new(),
        ts: inp.now,
        kind: FindingKind::TpStraggler,
        cause,
        severity: if share >= cfg.critical_share {
            Severity::Critical
        } else {
            Severity::Warning
        },
        confidence,
        job: Some(job.clone()),
        node: Some(who.node),
        rank: Some(rank),
        gpu: who.gpu,
        device: who.nic,
        evidence: lines,
    };
    let rt = timing.ranks.get_mut(&rank).expect("present");
    rt.unreported = None;
    rt.reported.set(&f);
    rt.reviewed_at = inp.now;
    rt.reviewed_us = [rt.median_us; 2];
    rt.reported_decisive = decisive;
    rt.reported_since = since;
    rt.reported_at = inp.now;
    rt.cause_gone = None;
    out.push(f);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_without_skips_one_element() {
        let s = [1.0, 2.0, 3.0, 10.0];
        assert_eq!(median_without(&s, 0), 3.0);
        assert_eq!(median_without(&s, 3), 2.0);
        assert_eq!(median_without(&[1.0, 5.0], 0), 5.0);
        assert_eq!(median_without(&[1.0, 5.0, 7.0], 1), 4.0);
    }
}

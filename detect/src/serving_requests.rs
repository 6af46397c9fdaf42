//! Request-level serving conditions, from `t:"request"` records (arrive,
//! first token, done): `tail_latency` (a job's p99 time to first token or
//! inter-token latency past its objective while its p50 holds) and
//! `ingress_burst_backlog` (a node's arrival rate jumps far above its habit
//! and a queue builds behind it).

use crate::episode::{Episode, Reported, Step};
use crate::signals::SignalStore;
use keel_model::{
    Cause, Dir, Finding, FindingKind, MetricName, Name, RequestPhase, RequestRecord, Severity,
    Timestamp,
};
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;

/// Requests between arrival and done held at once; past it a new arrival
/// is not followed (counted in `RequestStats::dropped`).
pub const PENDING_MAX: usize = 262_144;
/// A request not done this long after its arrival is forgotten (s).
pub const PENDING_MAX_AGE_S: f64 = 600.0;
/// Jobs whose latencies are kept at once.
pub const JOBS_MAX: usize = 4096;
/// Nodes whose arrivals are counted at once.
pub const NODES_MAX: usize = 4096;
/// Latencies one job keeps (per measure), newest first kept: enough for
/// the window at a few hundred requests a second.
pub const LATENCIES_MAX: usize = 16_384;
/// Nodes one job's latencies name (a finding names the first).
pub const JOB_NODES_MAX: usize = 64;
/// Seconds of arrival counts one node keeps: the habit's window and the
/// burst's.
pub const ARRIVAL_HISTORY_S: usize = 120;

/// Objectives and thresholds, with the reasons for their values.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RequestsConfig {
    /// Time-to-first-token objective at p99 (s). MLPerf Inference's server
    /// scenario for Llama 2 70B holds TTFT p99 to 2 s; an operator with
    /// its own SLO sets its own.
    pub ttft_p99_objective_s: f64,
    /// Inter-token latency objective at p99 (s): MLPerf's 200 ms TPOT for
    /// the same scenario (about 5 tokens a second, reading speed).
    pub itl_p99_objective_s: f64,
    /// The p50 "holds" while at most this share of the objective: a tail
    /// is a few requests far slower than the rest, not everyone slower
    /// (an overloaded engine lifts p50 too, and is `kv_cache_saturation`
    /// or an ingress burst, not a tail).
    pub p50_max_share: f64,
    /// The window (s) the quantiles are taken over, and the least requests
    /// in it: a p99 over fewer than 100 is its maximum, one slow request.
    pub window_s: f64,
    pub min_requests: usize,
    /// The p50 must hold, and the p99 be broken, over the last `recent_s`
    /// of the window too: a
    /// whole service slowing down looks like a tail for as long as its slow
    /// requests are a minority of the window, but the recent seconds show
    /// everyone slower within a few seconds; once a slowdown ends, its slow
    /// requests stay in the window but not in the recent seconds.
    pub recent_s: f64,
    /// The p99 must stay past its objective this long (s): longer than
    /// `recent_s` takes to see a slowdown that began with the suspicion.
    pub tail_sustain_s: f64,
    /// An open episode ends once the p99 meets the objective this long.
    pub tail_clear_s: f64,
    /// Arrival rate (per s, over `burst_rate_s`) that is a burst: this many
    /// times the node's habit (median per-second arrivals over the
    /// `habit_s` before)...
    pub burst_ratio: f64,
    /// ...and at least this many requests a second more than the habit
    /// (a node serving 2 a second that gets 8 is not a burst worth a
    /// finding).
    pub burst_min_extra_per_s: f64,
    pub burst_rate_s: f64,
    pub habit_s: f64,
    /// Habit needs this many seconds of history before a burst is judged.
    pub habit_min_s: f64,
    /// Queueing behind the burst: the engine's waiting queue
    /// (`vllm:num_requests_waiting`, the node's largest) at or above this
    /// many requests and grown by it since the burst began, or a NIC's RX
    /// queue (`dpu_nic_queue_depth`) at or above `rx_queue`.
    pub waiting_min: f64,
    pub rx_queue: f64,
    /// Burst and queue must hold together this long (s).
    pub burst_sustain_s: f64,
    /// The episode ends once the arrivals are back under half the burst
    /// bar and the queue under `waiting_min`, for this long (s).
    pub burst_clear_s: f64,
    /// A queue reading older than this is not used (s).
    pub stale_s: f64,
}

impl Default for RequestsConfig {
    fn default() -> Self {
        RequestsConfig {
            ttft_p99_objective_s: 2.0,
            itl_p99_objective_s: 0.2,
            p50_max_share: 0.5,
            window_s: 20.0,
            min_requests: 100,
            recent_s: 5.0,
            tail_sustain_s: 5.0,
            tail_clear_s: 10.0,
            burst_ratio: 3.0,
            burst_min_extra_per_s: 10.0,
            burst_rate_s: 2.0,
            habit_s: 60.0,
            habit_min_s: 20.0,
            waiting_min: 10.0,
            rx_queue: 100.0,
            burst_sustain_s: 1.0,
            burst_clear_s: 5.0,
            stale_s: 5.0,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestStats {
    pub records: u64,
    /// Requests or series not followed because a bound was reached.
    pub dropped: u64,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    arrive: Timestamp,
    first: Option<Timestamp>,
}

#[derive(Debug, Default)]
struct JobLatency {
    ttft: VecDeque<(Timestamp, f64)>,
    itl: VecDeque<(Timestamp, f64)>,
    nodes: Vec<Name>,
    next_check: Timestamp,
    episode: Episode,
    reported: Reported,
}

#[derive(Debug, Default)]
struct NodeArrivals {
    /// (whole second, arrivals in it), oldest first.
    counts: VecDeque<(i64, u32)>,
    next_check: i64,
    habit: Option<f64>,
    waiting_at_start: Option<f64>,
    episode: Episode,
    reported: Reported,
}

#[derive(Debug)]
pub struct RequestsDetector {
    cfg: RequestsConfig,
    pending: HashMap<(Name, Name), Pending>,
    last_prune: Timestamp,
    jobs: HashMap<Name, JobLatency>,
    nodes: HashMap<Name, NodeArrivals>,
    pub stats: RequestStats,
}

impl RequestsDetector {
    pub fn new(cfg: RequestsConfig) -> Self {
        RequestsDetector {
            cfg,
            pending: HashMap::default(),
            last_prune: f64::NEG_INFINITY,
            jobs: HashMap::default(),
            nodes: HashMap::default(),
            stats: RequestStats::default(),
        }
    }

    /// Whether a burst is suspected or open on `node`: queueing behind it
    /// lengthens first tokens, and the tail is the burst's.
    fn bursting(&self, node: &Name) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|n| n.episode != Episode::Idle)
    }

    pub fn push(
        &mut self,
        r: &RequestRecord,
        signals: &SignalStore,
        now: Timestamp,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        self.stats.records += 1;
        if !r.ts.is_finite() {
            return;
        }
        // A request of no job still arrives at its node; its latencies
        // belong to no job's objective.
        let job = r.job.clone().unwrap_or_default();
        let of_job = r.job.is_some();
        if now - self.last_prune >= 10.0 {
            self.last_prune = now;
            self.pending
                .retain(|_, p| now - p.arrive <= PENDING_MAX_AGE_S);
        }
        let key = (job.clone(), r.id.clone());
        match r.phase {
            RequestPhase::Arrive => {
                if !of_job {
                    // Arrives, counted below; no latency is followed.
                } else if self.pending.len() >= PENDING_MAX {
                    self.stats.dropped += 1;
                } else {
                    self.pending.insert(
                        key,
                        Pending {
                            arrive: r.ts,
                            first: None,
                        },
                    );
                }
                if let Some(node) = &r.node {
                    self.arrival(node, r.ts, signals, now, out, cleared);
                }
            }
            RequestPhase::FirstToken => {
                let Some(p) = self.pending.get_mut(&key).filter(|_| of_job) else {
                    return;
                };
                p.first = Some(r.ts);
                let ttft = r.ts - p.arrive;
                if let Some(j) = self.job_entry(&job, r.node.as_ref()) {
                    push_bounded(&mut j.ttft, (r.ts, ttft));
                }
                self.judge_tail(&job, r.ts, now, out, cleared);
            }
            RequestPhase::Done => {
                let Some(p) = self.pending.remove(&key).filter(|_| of_job) else {
                    return;
                };
                let n = r.output_tokens.unwrap_or(0);
                if let (Some(first), true) = (p.first, n >= 2) {
                    let itl = (r.ts - first) / f64::from(n - 1);
                    if let Some(j) = self.job_entry(&job, r.node.as_ref()) {
                        push_bounded(&mut j.itl, (r.ts, itl));
                    }
                }
                self.judge_tail(&job, r.ts, now, out, cleared);
            }
        }
    }

    fn job_entry(&mut self, job: &Name, node: Option<&Name>) -> Option<&mut JobLatency> {
        if !self.jobs.contains_key(job) && self.jobs.len() >= JOBS_MAX {
            self.stats.dropped += 1;
            return None;
        }
        let j = self.jobs.entry(job.clone()).or_default();
        if let Some(n) = node {
            if !j.nodes.contains(n) && j.nodes.len() < JOB_NODES_MAX {
                j.nodes.push(n.clone());
            }
        }
        Some(j)
    }

    fn judge_tail(
        &mut self,
        job: &Name,
        ts: Timestamp,
        now: Timestamp,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        let cfg = &self.cfg;
        let bursting = match self.jobs.get(job) {
            Some(j) if ts >= j.next_check => j.nodes.iter().any(|n| self.bursting(n)),
            _ => return,
        };
        let Some(j) = self.jobs.get_mut(job) else {
            return;
        };
        j.next_check = ts + 0.5;
        let from = ts - cfg.window_s;
        for q in [&mut j.ttft, &mut j.itl] {
            while q.front().is_some_and(|p| p.0 < from) {
                q.pop_front();
            }
        }
        let measures = [
            ("TTFT", &j.ttft, cfg.ttft_p99_objective_s),
            ("inter-token latency", &j.itl, cfg.itl_p99_objective_s),
        ];
        let mut broken = None;
        let mut met = true;
        for (what, q, objective) in measures {
            if q.len() < cfg.min_requests {
                continue;
            }
            let mut v: Vec<f64> = q.iter().map(|p| p.1).collect();
            let p50 = crate::stats::quantile_in_place(&mut v, 0.5).unwrap_or(0.0);
            let p99 = crate::stats::quantile_in_place(&mut v, 0.99).unwrap_or(0.0);
            let mut recent: Vec<f64> = q
                .iter()
                .filter(|p| p.0 >= ts - cfg.recent_s)
                .map(|p| p.1)
                .collect();
            let recent_p50 = crate::stats::quantile_in_place(&mut recent, 0.5).unwrap_or(0.0);
            let recent_p99 = crate::stats::quantile_in_place(&mut recent, 0.99).unwrap_or(0.0);
            let bar = cfg.p50_max_share * objective;
            if p99 > objective {
                met = false;
                // The tail is still there in the recent seconds (not the
                // leftovers of a slowdown that has ended).
                let now_too = recent_p99 > objective;
                if p50 <= bar && recent_p50 <= bar && now_too && broken.is_none() {
                    broken = Some((what, p50, p99, objective, q.len()));
                }
            }
        }
        let holds = if j.episode.is_open() {
            !met
        } else {
            broken.is_some() && !bursting
        };
        match j
            .episode
            .observe(holds, ts, cfg.tail_sustain_s, cfg.tail_clear_s)
        {
            Step::Concluded { since } => {
                let Some((what, p50, p99, objective, n)) = broken else {
                    return;
                };
                let f = Finding {
                    basis: None,
                    gpu_instance: None,
                    related: Vec::new(),
                    ts: now,
                    kind: FindingKind::TailLatency,
                    cause: Cause::Unknown,
                    severity: Severity::Warning,
                    confidence: 0.8,
                    job: Some(job.clone()),
                    node: j.nodes.first().cloned(),
                    rank: None,
                    gpu: None,
                    device: None,
                    evidence: vec![
                        format!(
                            "job {job}: {what} p99 {:.0} ms over the last {:.0} s ({n} requests), objective {:.0} ms, since {since_at}",
                            p99 * 1e3,
                            cfg.window_s,
                            objective * 1e3, since_at = keel_model::Clock(since)),
                        format!(
                            "p50 {:.0} ms holds: a tail of slow requests, not a slower service",
                            p50 * 1e3
                        ),
                    ],
                };
                j.reported.set(&f);
                out.push(f);
            }
            Step::Closed => cleared.extend(j.reported.clear(now)),
            Step::Nothing => {}
        }
    }

    fn arrival(
        &mut self,
        node: &Name,
        ts: Timestamp,
        signals: &SignalStore,
        now: Timestamp,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        let cfg = &self.cfg;
        if !self.nodes.contains_key(node) && self.nodes.len() >= NODES_MAX {
            self.stats.dropped += 1;
            return;
        }
        let n = self.nodes.entry(node.clone()).or_default();
        let sec = ts.floor() as i64;
        match n.counts.back_mut() {
            Some((s, c)) if *s == sec => *c += 1,
            // Out of order by a second or more: counted where it belongs.
            Some((s, _)) if *s > sec => {
                if let Some(p) = n.counts.iter_mut().rev().find(|p| p.0 == sec) {
                    p.1 += 1;
                }
            }
            _ => {
                // Seconds with no arrival count as zero.
                let mut next = n.counts.back().map_or(sec, |p| (p.0 + 1).max(sec - 200));
                while next <= sec {
                    n.counts.push_back((next, u32::from(next == sec)));
                    next += 1;
                }
                while n.counts.len() > ARRIVAL_HISTORY_S {
                    n.counts.pop_front();
                }
            }
        }
        // Judged once a second, on the first arrival of a new second: the
        // seconds before it are complete.
        if sec < n.next_check {
            return;
        }
        n.next_check = sec + 1;
        let rate_from = sec - cfg.burst_rate_s as i64;
        let recent: Vec<u32> = n
            .counts
            .iter()
            .filter(|p| p.0 >= rate_from && p.0 < sec)
            .map(|p| p.1)
            .collect();
        if recent.is_empty() {
            return;
        }
        let rate = recent.iter().sum::<u32>() as f64 / recent.len() as f64;
        let start = n
            .episode
            .suspect_since()
            .map_or(rate_from, |s| s.floor() as i64 - cfg.burst_rate_s as i64);
        let mut before: Vec<f64> = n
            .counts
            .iter()
            .filter(|p| p.0 < start && p.0 >= start - cfg.habit_s as i64)
            .map(|p| f64::from(p.1))
            .collect();
        let habit = if n.episode.is_open() {
            n.habit
        } else if before.len() as f64 >= cfg.habit_min_s {
            crate::stats::quantile_in_place(&mut before, 0.5)
        } else {
            None
        };
        let Some(habit) = habit else { return };
        let waiting = signals
            .on_node(node, MetricName::VllmRequestsWaiting)
            .filter_map(|(_, s)| s.latest())
            .filter(|(t, _)| (ts - t).abs() <= cfg.stale_s)
            .map(|p| p.1)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let rx_queue = signals
            .on_node(node, MetricName::DpuNicQueueDepth)
            .filter(|(k, _)| matches!(k, crate::signals::Sub::Device(_, Some(Dir::Rx))))
            .filter_map(|(_, s)| s.latest())
            .filter(|(t, _)| (ts - t).abs() <= cfg.stale_s)
            .map(|p| p.1)
            .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
        let bar = (cfg.burst_ratio * habit).max(habit + cfg.burst_min_extra_per_s);
        let spike = rate >= bar;
        if n.episode == Episode::Idle && !spike {
            n.waiting_at_start = None;
        } else if n.waiting_at_start.is_none() {
            // The queue as the burst began: its growth is the backlog.
            n.waiting_at_start = Some(waiting.unwrap_or(0.0));
        }
        let grown = waiting.is_some_and(|w| {
            w >= cfg.waiting_min && w - n.waiting_at_start.unwrap_or(0.0) >= cfg.waiting_min
        });
        let queueing = grown || rx_queue.is_some_and(|q| q >= cfg.rx_queue);
        let holds = if n.episode.is_open() {
            rate >= bar / 2.0 || waiting.is_some_and(|w| w >= cfg.waiting_min)
        } else {
            spike && queueing
        };
        match n
            .episode
            .observe(holds, sec as f64, cfg.burst_sustain_s, cfg.burst_clear_s)
        {
            Step::Concluded { since } => {
                n.habit = Some(habit);
                let mut evidence = vec![format!(
                    "{node}: {rate:.0} requests/s arriving since {}, {:.1}x its usual {habit:.1}/s",
                    keel_model::Clock(since),
                    rate / habit.max(0.1)
                )];
                if let Some(w) = waiting {
                    evidence.push(format!(
                        "waiting queue {:.0} -> {w:.0} requests (vllm:num_requests_waiting)",
                        n.waiting_at_start.unwrap_or(0.0)
                    ));
                }
                if let Some(q) = rx_queue {
                    evidence.push(format!("RX queue depth {q:.0} packets"));
                }
                let f = Finding {
                    confidence: if waiting.is_some() { 0.85 } else { 0.7 },
                    evidence,
                    ..Finding::on_node(FindingKind::IngressBurstBacklog, Cause::Workload, now, node)
                };
                n.reported.set(&f);
                out.push(f);
            }
            Step::Closed => {
                n.habit = None;
                n.waiting_at_start = None;
                cleared.extend(n.reported.clear(now));
            }
            Step::Nothing => {}
        }
    }
}

fn push_bounded(q: &mut VecDeque<(Timestamp, f64)>, p: (Timestamp, f64)) {
    if q.len() >= LATENCIES_MAX {
        q.pop_front();
    }
    q.push_back(p);
}

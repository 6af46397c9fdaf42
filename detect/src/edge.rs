//! Edge aggregation: what a sensor does with raw collective events before
//! anything crosses the network.
//!
//! Each rank's collectives are cut into windows of `window_len` consecutive
//! sequence numbers, and each window becomes one fixed-size
//! [`Summary`](keel_model::Summary): count, median and p99 duration, median
//! step period. Windows are runs of sequence numbers rather than of time, so
//! that every rank's window `w` covers the same collectives whatever the
//! nodes' clocks say, and the correlator compares like with like.
//!
//! The aggregator also estimates the offset between the ranks' clock and
//! the sensor's own from collective completions: a completion stamped `ts` on
//! the ranks' clock reaches the sensor `d >= 0` later on its clock, so
//! `ts - received = offset - d`, and the largest value seen over a recent
//! stretch is the offset less the smallest delay (the estimate NTP makes
//! from one-way stamps).

use keel_model::{CollectiveRecord, Name, Summary, Timestamp};
use rustc_hash::FxHashMap as HashMap;

/// How the sensor cuts collectives into windows.
#[derive(Debug, Clone, PartialEq)]
pub struct EdgeConfig {
    /// Collectives per window. Two: on the evaluation corpus, detection
    /// through windows of two is as fast as over single collectives (p50
    /// 0.94 s against 0.88 s), while windows of four cost 0.6 s more.
    pub window_len: u64,
    /// A window still open this long after its last event (on the sensor's
    /// clock) is sent as it is: the job paused, or events were lost.
    pub max_idle_s: f64,
    /// The offset estimate forgets samples older than about two of these.
    pub offset_epoch_s: f64,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            window_len: 2,
            max_idle_s: 0.5,
            offset_epoch_s: 10.0,
        }
    }
}

/// Jobs a sensor summarises at once; a collective of one more is dropped
/// and counted (`EdgeStats::jobs_dropped`). A node runs a few jobs.
pub const JOBS_MAX: usize = 4096;
/// Ranks of one job a sensor summarises; one more is dropped and counted
/// (`EdgeStats::ranks_dropped`). One node hosts at most a few dozen ranks
/// of a job; the bound leaves room for a DPU serving several hosts.
pub const RANKS_PER_JOB_MAX: usize = 4096;
/// A collective stamped further than this from the sensor's clock (either
/// way, seconds) is refused and counted (`EdgeStats::implausible`): node
/// clocks are milliseconds to seconds apart, never minutes, and one
/// far-future stamp would otherwise move the job's clock for good.
pub const CLOCK_GAP_MAX_S: f64 = 300.0;
/// The longest collective duration taken, microseconds (ten minutes: NCCL's
/// own watchdog gives up on a collective long before).
pub const DUR_MAX_US: f64 = 600e6;

/// The most collectives one window summary may count.
pub const WINDOW_COUNT_MAX: u32 = 65_536;
/// The longest step period a summary may carry, microseconds (ten
/// minutes: no inference or training step takes longer).
pub const STEP_MAX_US: u32 = 600_000_000;
pub use keel_model::NAME_LEN_MAX;

/// Whether a window summary that arrived from the network could have come
/// from [`EdgeAggregator`] on a sensor whose clock is `now` (seconds, the
/// receiver's clock): a finite end within [`CLOCK_GAP_MAX_S`] of `now`
/// once the sensor's offset is taken off, an offset within it too, a count
/// in `1..=WINDOW_COUNT_MAX`, a step of at most [`STEP_MAX_US`], and
/// durations of at most [`DUR_MAX_US`] with the median at most the p99.
/// The error names the field and its value. Checked where summaries enter
/// a correlator, so that one forged summary cannot move a job's clock for
/// good, inflate its step past every threshold, or never age out.
///
/// `now` is None where the receiver's clock is not the senders' (a host
/// fed by replayed traces): the distance to it is then not checked.
pub fn check_summary(s: &Summary, now: Option<f64>) -> Result<(), String> {
    let gap_us = CLOCK_GAP_MAX_S * 1e6;
    if s.job.len() > NAME_LEN_MAX || s.node.len() > NAME_LEN_MAX {
        return Err(format!(
            "job or node name of {} bytes (at most {NAME_LEN_MAX})",
            s.job.len().max(s.node.len())
        ));
    }
    if !s.window_end.is_finite() {
        return Err(format!("window_end {} is not a time", s.window_end));
    }
    if (s.offset_us as f64).abs() > gap_us {
        return Err(format!("offset_us {} is beyond {gap_us} us", s.offset_us));
    }
    let at = s.window_end - s.offset_us as f64 / 1e6;
    if let Some(now) = now.filter(|now| (at - now).abs() > CLOCK_GAP_MAX_S) {
        return Err(format!(
            "window_end {} is {:.0} s from the receiver's clock (at most {CLOCK_GAP_MAX_S} s)",
            s.window_end,
            at - now
        ));
    }
    if !(1..=WINDOW_COUNT_MAX).contains(&s.count) {
        return Err(format!(
            "count {} is not in 1..={WINDOW_COUNT_MAX}",
            s.count
        ));
    }
    if s.step_us > STEP_MAX_US {
        return Err(format!("step_us {} is beyond {STEP_MAX_US}", s.step_us));
    }
    if f64::from(s.dur_p99_us) > DUR_MAX_US || s.dur_p50_us > s.dur_p99_us {
        return Err(format!(
            "durations p50 {} us, p99 {} us are not a window's (p50 <= p99 <= {DUR_MAX_US} us)",
            s.dur_p50_us, s.dur_p99_us
        ));
    }
    Ok(())
}

/// Counters for the sensor's own status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EdgeStats {
    pub events: u64,
    pub summaries: u64,
    /// Events for a window already sent (arrived too late to count).
    pub late_events: u64,
    /// Collectives refused: a timestamp or duration no real collective has.
    pub implausible: u64,
    /// Collectives dropped because [`JOBS_MAX`] jobs were held.
    pub jobs_dropped: u64,
    /// Collectives dropped because [`RANKS_PER_JOB_MAX`] ranks of the job
    /// were held.
    pub ranks_dropped: u64,
}

#[derive(Debug)]
struct OpenWindow {
    window: u64,
    durs: Vec<f64>,
    steps: Vec<f64>,
    last_ts: Timestamp,
    /// Sensor clock at the last event, for the idle flush.
    touched: f64,
}

#[derive(Debug)]
struct RankState {
    node: Name,
    open: Option<OpenWindow>,
    /// Windows at or below this were sent.
    sent_up_to: Option<u64>,
    prev: Option<(u64, Timestamp)>,
}

/// The sensor's edge aggregation, one per sensor.
#[derive(Debug)]
pub struct EdgeAggregator {
    cfg: EdgeConfig,
    /// job -> rank -> state, bounded by [`JOBS_MAX`] and
    /// [`RANKS_PER_JOB_MAX`].
    jobs: HashMap<Name, HashMap<u32, RankState>>,
    offset: OffsetEstimate,
    pub stats: EdgeStats,
}

impl EdgeAggregator {
    pub fn new(cfg: EdgeConfig) -> Self {
        let offset = OffsetEstimate::new(cfg.offset_epoch_s);
        EdgeAggregator {
            cfg,
            jobs: HashMap::default(),
            offset,
            stats: EdgeStats::default(),
        }
    }

    /// The current estimate of the ranks' clock minus the sensor's, seconds.
    pub fn offset_s(&self) -> Option<f64> {
        self.offset.estimate()
    }

    /// Takes one collective event that reached the sensor at `received`
    /// (sensor clock); windows it completes are appended to `out`.
    pub fn push(&mut self, c: &CollectiveRecord, received: f64, out: &mut Vec<Summary>) {
        self.stats.events += 1;
        let plausible = (c.ts - received).abs() <= CLOCK_GAP_MAX_S
            && (0.0..=DUR_MAX_US).contains(&c.dur_us)
            && c.job.len().max(c.node.len()).max(c.op.len()) <= NAME_LEN_MAX;
        if !plausible {
            self.stats.implausible += 1;
            return;
        }
        self.offset.observe(c.ts - received, received);
        let offset_us = self.offset_us();
        let len = self.cfg.window_len.max(1);
        if !self.jobs.contains_key(&c.job) {
            if self.jobs.len() >= JOBS_MAX {
                self.stats.jobs_dropped += 1;
                return;
            }
            self.jobs.insert(c.job.clone(), HashMap::default());
        }
        let ranks = self.jobs.get_mut(&c.job).expect("inserted above");
        if !ranks.contains_key(&c.rank) && ranks.len() >= RANKS_PER_JOB_MAX {
            self.stats.ranks_dropped += 1;
            return;
        }
        let rank = ranks.entry(c.rank).or_insert_with(|| RankState {
            node: c.node.clone(),
            open: None,
            sent_up_to: None,
            prev: None,
        });
        let window = c.seq / len;
        if rank.sent_up_to.is_some_and(|w| window <= w) {
            self.stats.late_events += 1;
            return;
        }
        let step = rank
            .prev
            .filter(|&(pseq, pts)| c.seq > pseq && c.ts > pts)
            .map(|(pseq, pts)| (c.ts - pts) / (c.seq - pseq) as f64);
        if rank.prev.is_none_or(|p| c.seq >= p.0) {
            rank.prev = Some((c.seq, c.ts));
        }
        if rank.open.as_ref().is_some_and(|o| o.window != window) {
            let done = rank.open.take().expect("checked");
            if let Some(s) = close(&c.job, c.rank, rank, done, offset_us) {
                out.push(s);
                self.stats.summaries += 1;
            }
        }
        let open = rank.open.get_or_insert_with(|| OpenWindow {
            window,
            durs: Vec::with_capacity(len as usize),
            steps: Vec::with_capacity(len as usize),
            last_ts: c.ts,
            touched: received,
        });
        open.steps.extend(step);
        open.durs.push(c.dur_us);
        open.last_ts = open.last_ts.max(c.ts);
        open.touched = received;
        if open.durs.len() as u64 >= len {
            let done = rank.open.take().expect("just filled");
            if let Some(s) = close(&c.job, c.rank, rank, done, offset_us) {
                out.push(s);
                self.stats.summaries += 1;
            }
        }
    }

    /// Jobs held, and ranks held over all of them (for the bounds'
    /// tests and the sensor's status).
    pub fn held(&self) -> (usize, usize) {
        (self.jobs.len(), self.jobs.values().map(|r| r.len()).sum())
    }

    /// Sends windows left open longer than `max_idle_s` (sensor clock `now`).
    pub fn flush_idle(&mut self, now: f64, out: &mut Vec<Summary>) {
        let offset_us = self.offset_us();
        for (job, ranks) in &mut self.jobs {
            for (&idx, rank) in ranks.iter_mut() {
                if rank
                    .open
                    .as_ref()
                    .is_some_and(|o| now - o.touched >= self.cfg.max_idle_s)
                {
                    let done = rank.open.take().expect("checked");
                    if let Some(s) = close(job, idx, rank, done, offset_us) {
                        out.push(s);
                        self.stats.summaries += 1;
                    }
                }
            }
        }
    }

    /// Forgets a job that ended.
    pub fn end_job(&mut self, job: &str) {
        self.jobs.remove(job);
    }

    fn offset_us(&self) -> i64 {
        self.offset
            .estimate()
            .map_or(0, |o| (o * 1e6).round() as i64)
    }
}

fn close(
    job: &Name,
    rank: u32,
    state: &mut RankState,
    mut w: OpenWindow,
    offset_us: i64,
) -> Option<Summary> {
    state.sent_up_to = Some(state.sent_up_to.map_or(w.window, |s| s.max(w.window)));
    if w.durs.is_empty() {
        return None;
    }
    w.durs.sort_unstable_by(f64::total_cmp);
    let n = w.durs.len();
    let p50 = if n % 2 == 1 {
        w.durs[n / 2]
    } else {
        (w.durs[n / 2 - 1] + w.durs[n / 2]) / 2.0
    };
    let p99 = w.durs[((n as f64 * 0.99).ceil() as usize).clamp(1, n) - 1];
    let step = if w.steps.is_empty() {
        0.0
    } else {
        w.steps.sort_unstable_by(f64::total_cmp);
        w.steps[w.steps.len() / 2]
    };
    Some(Summary {
        node: state.node.clone(),
        job: job.clone(),
        rank,
        window: w.window,
        window_end: w.last_ts,
        count: n as u32,
        step_us: to_u32(step * 1e6),
        dur_p50_us: to_u32(p50),
        dur_p99_us: to_u32(p99),
        offset_us,
    })
}

fn to_u32(v: f64) -> u32 {
    if v.is_finite() {
        v.round().clamp(0.0, u32::MAX as f64) as u32
    } else {
        0
    }
}

/// The largest `ts - received` over the current and the previous epoch.
#[derive(Debug)]
struct OffsetEstimate {
    epoch_s: f64,
    epoch_start: f64,
    current: Option<f64>,
    previous: Option<f64>,
}

impl OffsetEstimate {
    fn new(epoch_s: f64) -> Self {
        OffsetEstimate {
            epoch_s,
            epoch_start: f64::NEG_INFINITY,
            current: None,
            previous: None,
        }
    }

    fn observe(&mut self, sample: f64, now: f64) {
        if !sample.is_finite() || !now.is_finite() {
            return;
        }
        if now - self.epoch_start >= self.epoch_s {
            self.previous = self.current.take();
            self.epoch_start = now;
        }
        self.current = Some(self.current.map_or(sample, |c| c.max(sample)));
    }

    fn estimate(&self) -> Option<f64> {
        match (self.current, self.previous) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A whole live path without the network: one edge aggregator per node in
/// front of one engine, as sensors and a correlator run it. Replays and
/// tests use it to check that detection through window summaries matches
/// detection over raw collectives.
#[derive(Debug)]
pub struct EdgePipeline {
    cfg: EdgeConfig,
    edges: HashMap<Name, EdgeAggregator>,
    pub engine: crate::Engine,
    summaries: Vec<Summary>,
    last_flush: f64,
}

impl EdgePipeline {
    pub fn new(cfg: EdgeConfig, engine: crate::Engine) -> Self {
        EdgePipeline {
            cfg,
            edges: HashMap::default(),
            engine,
            summaries: Vec::new(),
            last_flush: f64::NEG_INFINITY,
        }
    }

    /// Feeds one record that reached its sensor at `received`.
    pub fn push(
        &mut self,
        record: &keel_model::Record,
        received: f64,
        out: &mut Vec<keel_model::Finding>,
    ) {
        match record {
            keel_model::Record::Collective(c) => {
                if !self.edges.contains_key(&c.node) {
                    let edge = EdgeAggregator::new(self.cfg.clone());
                    self.edges.insert(c.node.clone(), edge);
                }
                let edge = self.edges.get_mut(&c.node).expect("inserted above");
                edge.push(c, received, &mut self.summaries);
            }
            other => self.engine.push(other, out),
        }
        if received - self.last_flush >= self.cfg.max_idle_s / 2.0 {
            self.last_flush = received;
            for edge in self.edges.values_mut() {
                edge.flush_idle(received, &mut self.summaries);
            }
        }
        for s in self.summaries.drain(..) {
            self.engine.push_window(&s, out);
        }
    }

    pub fn stats(&self) -> EdgeStats {
        let mut total = EdgeStats::default();
        for e in self.edges.values() {
            total.events += e.stats.events;
            total.summaries += e.stats.summaries;
            total.late_events += e.stats.late_events;
        }
        total
    }
}

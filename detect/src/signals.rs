//! The signal store: recent history of every metric series, as values
//! (gauges) or per-second rates (counters, with resets handled), so that
//! detectors and attribution can ask "what did this look like just now, and
//! before the trouble began?".

use keel_model::{Dir, MetricKind, MetricName, MetricSample, Name, Timestamp};
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;

/// How much history a series keeps: long enough for a pre-onset baseline
/// (`BASELINE_S`) plus the episode itself at exporter rates (1 Hz typical).
pub const HISTORY_S: f64 = 150.0;
/// At most this many points a series, whatever its rate: memory stays bounded
/// even for a source sampling far faster than exporters do.
pub const HISTORY_POINTS: usize = 600;
/// A counter's rate is taken over the newest span of at least this long
/// (s): a source read faster than exporters are scraped (the `linux`
/// source at 4 Hz) then gives rates as steady as a 1 Hz scrape's instead of
/// four times as noisy (retransmits come in bursts; a quarter-second with
/// none would break every episode's `sustain_s`). Under a second, so that a
/// 1 Hz exporter whose samples jitter still gets its rate from the last
/// interval alone.
pub const RATE_MIN_S: f64 = 0.75;
/// Series kept at once, all nodes together: a 2,000-node cluster of 8
/// GPUs, each with a few dozen series, and its NICs. A sample of a new
/// series past it is dropped and counted (`SignalStats::series_dropped`);
/// the series kept go on. At 1 Hz a series holds about 2.4 KB of history,
/// so the store stays under about 1.5 GB however many series a source
/// invents.
pub const SERIES_MAX: usize = 1 << 19;
/// How far back a baseline looks.
pub const BASELINE_S: f64 = 60.0;
/// Which quantile of that window is the baseline.
pub const BASELINE_QUANTILE: f64 = 0.25;

/// What a series is about beyond its node and metric.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sub {
    Node,
    Gpu(u32),
    /// A MIG instance (`GPU_I_ID`) of a GPU: a series of its own, never the
    /// parent's.
    MigInstance(u32, u32),
    Device(Name, Option<Dir>),
    Model(Name),
    /// A cgroup (`MetricLabels::cgroup`): a job's or a tenant's CPU use.
    Cgroup(Name),
}

impl Sub {
    /// Whether `sample` is about this: `*self == Sub::of(sample)`, without
    /// building one.
    pub fn is_of(&self, sample: &MetricSample) -> bool {
        let l = &sample.labels;
        match (l.gpu, l.gpu_instance) {
            (Some(g), Some(i)) => *self == Sub::MigInstance(g, i),
            (Some(g), None) => *self == Sub::Gpu(g),
            _ => match (self, &l.device, &l.model_name, &l.cgroup) {
                (Sub::Device(n, dir), Some(d), _, _) => n == d && *dir == l.dir,
                (_, Some(_), _, _) => false,
                (Sub::Model(n), None, Some(m), _) => n == m,
                (_, None, Some(_), _) => false,
                (Sub::Cgroup(n), None, None, Some(c)) => n == c,
                (_, None, None, Some(_)) => false,
                (sub, None, None, None) => *sub == Sub::Node,
            },
        }
    }

    pub fn of(sample: &MetricSample) -> Sub {
        let l = &sample.labels;
        if let (Some(g), Some(i)) = (l.gpu, l.gpu_instance) {
            Sub::MigInstance(g, i)
        } else if let Some(g) = l.gpu {
            Sub::Gpu(g)
        } else if let Some(d) = &l.device {
            Sub::Device(d.clone(), l.dir)
        } else if let Some(m) = &l.model_name {
            Sub::Model(m.clone())
        } else if let Some(c) = &l.cgroup {
            Sub::Cgroup(c.clone())
        } else {
            Sub::Node
        }
    }
}

/// Pushes between two sweeps of a series' points older than `HISTORY_S`.
///
/// Looking at the oldest point on every push costs a cache miss (it was
/// written `HISTORY_S` ago, and a cluster has thousands of series), so
/// points that age out stay in memory for up to this many pushes more;
/// every reader below leaves them out, so what a series says is exactly
/// what it would say had each been dropped at once. `HISTORY_POINTS`
/// still bounds the memory.
const SWEEP_EVERY: u8 = 16;

/// A series' recent points: gauge values, or rates for counters.
#[derive(Debug, Clone, Default)]
pub struct Series {
    /// In time order; those older than `HISTORY_S` before the newest are
    /// aged out and never read (`cutoff`).
    points: VecDeque<(Timestamp, f64)>,
    /// Pushes since aged-out points were last dropped.
    since_sweep: u8,
    last_raw: Option<(Timestamp, f64)>,
    /// Counters: (time, count since the first sample, resets added up),
    /// back to the newest point at least `RATE_MIN_S` old.
    counted: VecDeque<(Timestamp, f64)>,
}

/// Summary of a series over a span of time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub mean: f64,
    pub max: f64,
    pub min: f64,
    pub n: usize,
}

impl Series {
    /// Points older than this have aged out (`HISTORY_S` before the newest).
    fn cutoff(&self) -> Timestamp {
        self.points
            .back()
            .map_or(f64::NEG_INFINITY, |p| p.0 - HISTORY_S)
    }

    /// The points kept, newest first.
    fn kept(&self) -> impl Iterator<Item = &(Timestamp, f64)> + '_ {
        let cutoff = self.cutoff();
        self.points.iter().rev().take_while(move |p| p.0 >= cutoff)
    }

    pub fn latest(&self) -> Option<(Timestamp, f64)> {
        self.points.back().copied()
    }

    /// The time of the oldest point kept.
    pub fn first(&self) -> Option<Timestamp> {
        let cutoff = self.cutoff();
        self.points.iter().map(|p| p.0).find(|&ts| ts >= cutoff)
    }

    /// The newest `n` points, newest first.
    pub fn recent(&self, n: usize) -> impl Iterator<Item = (Timestamp, f64)> + '_ {
        self.kept().take(n).copied()
    }

    /// Points with `from <= ts <= to`.
    pub fn span(&self, from: Timestamp, to: Timestamp) -> Option<Span> {
        let mut n = 0;
        let (mut sum, mut max, mut min) = (0.0, f64::NEG_INFINITY, f64::INFINITY);
        for &(ts, v) in self.kept() {
            if ts < from {
                break;
            }
            if ts > to {
                continue;
            }
            n += 1;
            sum += v;
            max = max.max(v);
            min = min.min(v);
        }
        (n > 0).then(|| Span {
            mean: sum / n as f64,
            max,
            min,
            n,
        })
    }

    /// The calm level of the series in `[before - BASELINE_S, before)`: its
    /// lower quartile, not its median, because that window may hold an
    /// earlier episode (a GPU that straggled a minute ago would otherwise
    /// look busy as usual).
    pub fn baseline(&self, before: Timestamp) -> Option<f64> {
        let from = before - BASELINE_S;
        let mut v: Vec<f64> = self
            .kept()
            .filter(|(ts, _)| *ts >= from && *ts < before)
            .map(|p| p.1)
            .collect();
        crate::stats::quantile_in_place(&mut v, BASELINE_QUANTILE)
    }
}

/// Counter resets seen, for the replay summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignalStats {
    pub samples: u64,
    pub counter_resets: u64,
    /// Samples older than their series' newest point, which are ignored.
    pub stale: u64,
    /// Samples of a new series refused because `SERIES_MAX` were kept.
    pub series_dropped: u64,
}

/// One node's series, by metric and what each is about: their slots.
type NodeSeries = HashMap<(MetricName, Sub), u32>;

/// No slot.
const NONE: u32 = u32::MAX;

/// One series and what it is about.
#[derive(Debug)]
struct Slot {
    node: Name,
    name: MetricName,
    sub: Sub,
    series: Series,
    /// The slot whose sample came after this one's last time (`NONE`).
    next: u32,
    /// False once pruned, until used again.
    live: bool,
}

/// One node's series (`SignalStore::node`); empty for a node never seen.
#[derive(Debug, Clone, Copy)]
pub struct NodeSignals<'a> {
    series: Option<&'a NodeSeries>,
    slots: &'a [Slot],
}

impl<'a> NodeSignals<'a> {
    pub fn get(&self, name: MetricName, sub: &Sub) -> Option<&'a Series> {
        // A borrowed lookup would need a key type of references; a `Sub`
        // is small (an inline string at most), so building one is cheap.
        let i = *self.series?.get(&(name, sub.clone()))?;
        Some(&self.slots[i as usize].series)
    }
}

/// Every series, in `slots`, found by node, metric and what it is about.
///
/// Exporters send a scrape's series in the same order every time, so the
/// series whose sample followed the last one's last time is tried first:
/// a comparison of its names, no hashing (a sample's node, metric and
/// labels are compared in full; a wrong guess costs only the lookup).
#[derive(Debug, Default)]
pub struct SignalStore {
    /// By node first: a node's series are read together (every device of
    /// one metric on one node), and a node's map is a few hundred series
    /// where the whole store is thousands.
    nodes: HashMap<Name, NodeSeries>,
    slots: Vec<Slot>,
    /// Slots of pruned series, to be used again.
    free: Vec<u32>,
    /// The slot of the last sample pushed (`NONE` before the first).
    last: Option<u32>,
    pub stats: SignalStats,
}

impl SignalStore {
    /// Records a sample. Returns the derived value (the gauge, or the
    /// counter's rate) when the sample produced a new point.
    pub fn push(&mut self, sample: &MetricSample) -> Option<f64> {
        self.stats.samples += 1;
        let last = self.last.unwrap_or(NONE) as usize;
        let guess = self.slots.get(last).map_or(NONE, |s| s.next);
        let i = match self.slots.get(guess as usize) {
            Some(s)
                if s.live
                    && s.name == sample.name
                    && s.node == sample.node
                    && s.sub.is_of(sample) =>
            {
                guess
            }
            _ => match self.slot_of(sample) {
                Some(i) => i,
                None => {
                    self.stats.series_dropped += 1;
                    return None;
                }
            },
        };
        if let Some(s) = self.slots.get_mut(last) {
            s.next = i;
        }
        self.last = Some(i);
        let series = &mut self.slots[i as usize].series;
        if let Some((last_ts, _)) = series.last_raw {
            if sample.ts <= last_ts {
                self.stats.stale += 1;
                return None;
            }
        }
        let value = match sample.name.kind() {
            MetricKind::Gauge => sample.value,
            MetricKind::Counter => {
                let prev = series.last_raw;
                series.last_raw = Some((sample.ts, sample.value));
                let Some((last_ts, last_v)) = prev else {
                    series.counted.clear();
                    series.counted.push_back((sample.ts, 0.0));
                    return None;
                };
                // A counter that goes down has restarted from zero: what it
                // counted since then is its whole value (as Prometheus' rate()).
                let increase = if sample.value < last_v {
                    self.stats.counter_resets += 1;
                    sample.value
                } else {
                    sample.value - last_v
                };
                let total = series.counted.back().map_or(0.0, |p| p.1) + increase;
                series.counted.push_back((sample.ts, total));
                while series.counted.len() > 2 && series.counted[1].0 <= sample.ts - RATE_MIN_S {
                    series.counted.pop_front();
                }
                let (base_ts, base) = series
                    .counted
                    .front()
                    .copied()
                    .unwrap_or((last_ts, total - increase));
                (total - base) / (sample.ts - base_ts)
            }
        };
        if sample.name.kind() == MetricKind::Gauge {
            series.last_raw = Some((sample.ts, sample.value));
        }
        series.points.push_back((sample.ts, value));
        if series.points.len() > HISTORY_POINTS {
            series.points.pop_front();
        }
        series.since_sweep += 1;
        if series.since_sweep >= SWEEP_EVERY {
            series.since_sweep = 0;
            let cutoff = sample.ts - HISTORY_S;
            while series.points.front().is_some_and(|p| p.0 < cutoff) {
                series.points.pop_front();
            }
        }
        Some(value)
    }

    /// The slot of `sample`'s series, made if it is new and there is
    /// room (`SERIES_MAX`).
    fn slot_of(&mut self, sample: &MetricSample) -> Option<u32> {
        let key = (sample.name, Sub::of(sample));
        if let Some(&i) = self.nodes.get(&sample.node).and_then(|n| n.get(&key)) {
            return Some(i);
        }
        if self.slots.len() - self.free.len() >= SERIES_MAX {
            return None;
        }
        // Keys are cloned only for a new node or series.
        let node = match self.nodes.get_mut(&sample.node) {
            Some(n) => n,
            None => self.nodes.entry(sample.node.clone()).or_default(),
        };
        let slot = Slot {
            node: sample.node.clone(),
            name: sample.name,
            sub: key.1.clone(),
            series: Series::default(),
            next: NONE,
            live: true,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        node.insert(key, i);
        Some(i)
    }

    pub fn get(&self, node: &Name, name: MetricName, sub: &Sub) -> Option<&Series> {
        self.node(node).get(name, sub)
    }

    /// One node's series, its name looked up once for many questions.
    pub fn node(&self, node: &Name) -> NodeSignals<'_> {
        NodeSignals {
            series: self.nodes.get(node),
            slots: &self.slots,
        }
    }

    /// Every series of one metric on one node (all devices, all GPUs), with
    /// what each is about.
    pub fn on_node<'a>(
        &'a self,
        node: &'a Name,
        name: MetricName,
    ) -> impl Iterator<Item = (&'a Sub, &'a Series)> + 'a {
        self.nodes
            .get(node)
            .into_iter()
            .flat_map(|n| n.iter())
            .filter(move |((n, _), _)| *n == name)
            .map(|((_, sub), &i)| (sub, &self.slots[i as usize].series))
    }

    /// Drops series that have said nothing for `HISTORY_S`: hosts leave
    /// clusters and GPUs get renumbered, and their history must not pile up.
    pub fn prune(&mut self, now: Timestamp) {
        let (slots, free) = (&mut self.slots, &mut self.free);
        for series in self.nodes.values_mut() {
            series.retain(|_, &mut i| {
                let slot = &mut slots[i as usize];
                let keep = slot
                    .series
                    .last_raw
                    .is_some_and(|(ts, _)| ts >= now - HISTORY_S);
                if !keep {
                    // Its history goes now; the slot waits to be used again.
                    slot.series = Series::default();
                    slot.live = false;
                    free.push(i);
                }
                keep
            });
        }
        self.nodes.retain(|_, series| !series.is_empty());
    }

    /// How many series are kept.
    pub fn len(&self) -> usize {
        self.nodes.values().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_model::MetricLabels;

    fn sample(name: MetricName, ts: f64, value: f64) -> MetricSample {
        MetricSample {
            ts,
            node: "n1".into(),
            name,
            labels: MetricLabels::default(),
            value,
        }
    }

    #[test]
    fn a_fast_counters_rate_spans_most_of_a_second() {
        let mut s = SignalStore::default();
        let c = MetricName::TcpRetransSegs;
        assert!(s.push(&sample(c, 100.0, 0.0)).is_none());
        // Read at 4 Hz: bursts of 100 every other quarter-second.
        let mut rates = Vec::new();
        for (i, v) in [100.0, 100.0, 200.0, 200.0, 300.0, 300.0]
            .iter()
            .enumerate()
        {
            let ts = 100.0 + 0.25 * (i + 1) as f64;
            rates.push(s.push(&sample(c, ts, *v)).unwrap());
        }
        // The first ones over what there is; then over 0.75 s, never 0.
        assert_eq!(rates[0], 400.0);
        assert_eq!(rates[1], 200.0);
        assert!((rates[2] - 200.0 / 0.75).abs() < 1e-9, "{rates:?}");
        assert!(rates[3..].iter().all(|r| *r > 100.0), "{rates:?}");
        // A reset inside the window still counts what came after it.
        assert!(s.push(&sample(c, 101.75, 50.0)).unwrap() > 0.0);
    }

    #[test]
    fn counters_become_rates_and_survive_resets() {
        let mut s = SignalStore::default();
        let c = MetricName::TcpRetransSegs;
        assert!(s.push(&sample(c, 100.0, 1000.0)).is_none());
        assert_eq!(s.push(&sample(c, 101.0, 1010.0)).unwrap(), 10.0);
        // restart: the counter starts again from zero
        assert_eq!(s.push(&sample(c, 102.0, 4.0)).unwrap(), 4.0);
        assert_eq!(s.push(&sample(c, 103.0, 9.0)).unwrap(), 5.0);
        assert_eq!(s.stats.counter_resets, 1);
    }

    #[test]
    fn stale_samples_are_ignored() {
        let mut s = SignalStore::default();
        let g = MetricName::GpuUtil;
        s.push(&sample(g, 100.0, 1.0));
        assert!(s.push(&sample(g, 99.0, 2.0)).is_none());
        assert_eq!(s.stats.stale, 1);
    }

    #[test]
    fn span_and_baseline() {
        let mut s = SignalStore::default();
        let g = MetricName::GpuUtil;
        for i in 0..100 {
            s.push(&sample(
                g,
                1000.0 + i as f64,
                if i < 90 { 10.0 } else { 50.0 },
            ));
        }
        let series = s.get(&"n1".into(), g, &Sub::Node).unwrap();
        assert_eq!(series.baseline(1090.0), Some(10.0));
        let sp = series.span(1090.0, 1100.0).unwrap();
        assert_eq!((sp.n, sp.max, sp.min), (10, 50.0, 50.0));
    }

    #[test]
    fn a_sample_is_of_the_sub_it_makes_and_of_no_other() {
        let mut samples = Vec::new();
        for gpu in [None, Some(0), Some(1)] {
            for inst in [None, Some(2)] {
                for device in [None, Some("mlx5_0"), Some("eth0")] {
                    for dir in [None, Some(Dir::Rx), Some(Dir::Tx)] {
                        for model in [None, Some("llama")] {
                            for cgroup in [None, Some("/job_1")] {
                                let mut s = sample(MetricName::GpuUtil, 1.0, 1.0);
                                s.labels.gpu = gpu;
                                s.labels.gpu_instance = inst;
                                s.labels.device = device.map(Name::from);
                                s.labels.dir = dir;
                                s.labels.model_name = model.map(Name::from);
                                s.labels.cgroup = cgroup.map(Name::from);
                                samples.push(s);
                            }
                        }
                    }
                }
            }
        }
        for a in &samples {
            let sub = Sub::of(a);
            for b in &samples {
                assert_eq!(sub.is_of(b), sub == Sub::of(b), "{sub:?} {:?}", b.labels);
            }
        }
    }

    #[test]
    fn series_pruned_and_made_again_keep_their_own_histories() {
        let mut s = SignalStore::default();
        let g = MetricName::GpuUtil;
        let on = |node: &str, gpu: u32, ts: f64, v: f64| {
            let mut x = sample(g, ts, v);
            x.node = node.into();
            x.labels.gpu = Some(gpu);
            x
        };
        // Two nodes' GPUs in one order, then a node gone and back in
        // another order: every value lands in its own series.
        for t in 0..10 {
            for (node, gpu) in [("n1", 0), ("n1", 1), ("n2", 0)] {
                s.push(&on(node, gpu, 1000.0 + t as f64, f64::from(gpu) + t as f64));
            }
        }
        s.prune(1010.0 + HISTORY_S);
        assert!(s.is_empty());
        for t in 0..5 {
            for (node, gpu) in [("n2", 0), ("n1", 1), ("n3", 7)] {
                s.push(&on(
                    node,
                    gpu,
                    2000.0 + t as f64,
                    100.0 * f64::from(gpu) + t as f64,
                ));
            }
        }
        assert_eq!(s.len(), 3);
        let latest = |node: &str, gpu| {
            s.get(&node.into(), g, &Sub::Gpu(gpu))
                .and_then(Series::latest)
        };
        assert_eq!(latest("n2", 0), Some((2004.0, 4.0)));
        assert_eq!(latest("n1", 1), Some((2004.0, 104.0)));
        assert_eq!(latest("n3", 7), Some((2004.0, 704.0)));
        assert_eq!(latest("n1", 0), None);
        let n1 = s.get(&"n1".into(), g, &Sub::Gpu(1)).unwrap();
        assert_eq!(n1.recent(100).count(), 5);
    }

    #[test]
    fn series_past_the_bound_are_dropped_and_counted_and_the_kept_go_on() {
        let mut s = SignalStore::default();
        let g = MetricName::GpuUtil;
        let on = |i: usize, ts: f64| {
            let mut x = sample(g, ts, 1.0);
            x.labels.gpu = Some(i as u32);
            x
        };
        for i in 0..SERIES_MAX + 10 {
            s.push(&on(i, 1000.0));
        }
        assert_eq!((s.len(), s.stats.series_dropped), (SERIES_MAX, 10));
        assert!(s.push(&on(7, 1001.0)).is_some());
        assert!(s.push(&on(SERIES_MAX + 3, 1001.0)).is_none());
        assert_eq!(s.stats.series_dropped, 11);
        // Pruned series make room again.
        s.prune(1002.0 + HISTORY_S);
        assert!(s.is_empty());
        assert!(s.push(&on(SERIES_MAX + 3, 1200.0)).is_some());
    }

    #[test]
    fn history_is_bounded() {
        let mut s = SignalStore::default();
        for i in 0..10_000 {
            s.push(&sample(MetricName::GpuUtil, 1000.0 + i as f64 * 0.01, 1.0));
        }
        let series = s
            .get(&"n1".into(), MetricName::GpuUtil, &Sub::Node)
            .unwrap();
        assert!(series.points.len() <= HISTORY_POINTS);
    }

    #[test]
    fn points_older_than_the_history_are_never_read_though_still_held() {
        let mut s = SignalStore::default();
        let g = MetricName::GpuUtil;
        // One point a second for 200 s: the first 50 have aged out.
        for i in 0..200 {
            s.push(&sample(g, 1000.0 + i as f64, i as f64));
        }
        let series = s.get(&"n1".into(), g, &Sub::Node).unwrap();
        let newest = 1199.0;
        assert_eq!(series.first(), Some(newest - HISTORY_S));
        assert_eq!(series.recent(1000).count(), 151);
        let all = series.span(0.0, newest).unwrap();
        assert_eq!((all.n, all.min), (151, 49.0));
        assert_eq!(series.baseline(newest - HISTORY_S), None);
        assert_eq!(series.baseline(newest - HISTORY_S + 1.0), Some(49.0));
        assert!(series.points.len() >= 151 && series.points.len() < 151 + SWEEP_EVERY as usize);
    }
}

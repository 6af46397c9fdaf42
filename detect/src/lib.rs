//! keel's detection brain, written sans-IO.
//!
//! Records go in (`Engine::push`), findings come out, and later the
//! clearings of those findings whose condition has gone
//! (`Engine::take_cleared`). Time is the records' own, never the wall clock,
//! so a replayed trace gives the same findings on any machine at any speed,
//! and a test feeds records and reads findings with no sockets and no
//! sleeps. The correlator actor runs one `Engine` per job; `keel replay`
//! runs one over a whole trace.

pub mod attribute;
pub mod bus;
pub mod config;
pub mod edge;
pub mod engine_health;
pub mod episode;
pub mod fabric;
pub mod hang;
pub mod incident;
pub mod neighbor;
pub mod network;
pub mod score;
pub mod serving;
pub mod serving_requests;
pub mod signals;
pub mod squatter;
pub mod stats;
pub mod straggler;
pub mod topology;

pub use config::Config;

use keel_model::{Finding, Record, Summary, Timestamp};
use signals::SignalStore;
use straggler::{Inputs, StragglerDetector, StragglerStats};
use topology::Topology;

/// How often (trace time) idle series are pruned from the signal store.
const PRUNE_EVERY_S: f64 = 30.0;

/// Counters for the replay summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub records: u64,
    pub findings: u64,
    pub counter_resets: u64,
    pub stale_samples: u64,
    /// Samples of new series refused at `signals::SERIES_MAX`.
    pub series_dropped: u64,
    pub straggler: StragglerStats,
    /// What `noisy_neighbor` left out at its bounds.
    pub neighbor: neighbor::NeighborStats,
}

/// Which detectors an [`Engine`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Every detector: `keel replay` and `keel eval` over a whole trace.
    #[default]
    All,
    /// A job's correlator: everything but the GPU-level conditions
    /// (`gpu_squatter`, `idle_gpu_reservation`), which outlive the job that
    /// caused them and are watched by the node's sensor.
    Job,
    /// A node's sensor: only the GPU-level conditions, over every GPU of
    /// the node and every job placed there, until each clears.
    Node,
}

/// All detectors, fed by one stream of records.
#[derive(Debug)]
pub struct Engine {
    topology: Topology,
    signals: SignalStore,
    straggler: StragglerDetector,
    /// The same detector fed by sensors' window summaries (live clusters).
    windowed: StragglerDetector,
    squatter: squatter::SquatterDetector,
    engine_health: engine_health::EngineHealthDetector,
    network: network::NetworkDetector,
    bus: bus::BusDetector,
    fabric: fabric::FabricDetector,
    hang: hang::HangDetector,
    serving: serving::ServingDetector,
    neighbor: neighbor::NeighborDetector,
    incidents: incident::Incidents,
    scope: Scope,
    now: Timestamp,
    last_prune: Timestamp,
    records: u64,
    findings: u64,
    /// Clearings not yet taken: at most one per finding emitted.
    cleared: Vec<Finding>,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new(Config::default())
    }
}

impl Engine {
    pub fn new(cfg: Config) -> Self {
        Engine::with_scope(cfg, Scope::All)
    }

    /// An engine that runs only the detectors of `scope`.
    pub fn with_scope(cfg: Config, scope: Scope) -> Self {
        Engine {
            scope,
            topology: Topology::default(),
            signals: SignalStore::default(),
            windowed: StragglerDetector::new(cfg.straggler.for_windows()),
            straggler: StragglerDetector::new(cfg.straggler),
            squatter: squatter::SquatterDetector::new(cfg.squatter),
            engine_health: engine_health::EngineHealthDetector::new(cfg.engine),
            network: network::NetworkDetector::new(cfg.network),
            bus: bus::BusDetector::new(cfg.bus),
            fabric: fabric::FabricDetector::new(cfg.fabric),
            hang: hang::HangDetector::new(cfg.hang),
            serving: serving::ServingDetector::new(cfg.serving),
            neighbor: neighbor::NeighborDetector::new(cfg.neighbor),
            incidents: incident::Incidents::default(),
            now: f64::NEG_INFINITY,
            last_prune: f64::NEG_INFINITY,
            records: 0,
            findings: 0,
            cleared: Vec::new(),
        }
    }

    /// The latest trace time seen.
    pub fn now(&self) -> Timestamp {
        self.now
    }

    /// Feeds one record; findings concluded because of it are appended to
    /// `out`, and clearings it caused wait for `take_cleared`.
    pub fn push(&mut self, record: &Record, out: &mut Vec<Finding>) {
        self.records += 1;
        let ts = record.ts();
        if ts.is_finite() {
            self.now = self.now.max(ts);
        }
        let before = out.len();
        let cleared_before = self.cleared.len();
        match record {
            Record::Job(job) => {
                if self.topology.apply(job) {
                    let cleared = &mut self.cleared;
                    self.straggler.end_job(&job.job, self.now, cleared);
                    self.windowed.end_job(&job.job, self.now, cleared);
                    self.hang.end_job(&job.job, self.now, cleared);
                }
                if self.scope != Scope::Node {
                    self.serving.job(job, self.now, out);
                }
            }
            Record::Collective(c) => {
                if c.ts.is_finite() {
                    self.topology.collective_seen(&c.job, c.ts);
                }
                let inputs = Inputs {
                    topology: &self.topology,
                    signals: &self.signals,
                    now: self.now,
                };
                if self.scope != Scope::Node {
                    self.straggler.push(c, &inputs, out, &mut self.cleared);
                    self.hang.arrived(&c.job, c.ts, &mut self.cleared);
                }
            }
            Record::Metric(m) => {
                if let Some(derived) = self.signals.push(m) {
                    let cleared = &mut self.cleared;
                    if self.scope != Scope::Job {
                        self.squatter
                            .push(m, &self.topology, self.now, out, cleared);
                    }
                    if self.scope != Scope::Node {
                        if m.name == keel_model::MetricName::GpuUtil {
                            self.hang
                                .check(self.now, &self.topology, &self.signals, out);
                        }
                        self.engine_health.push(m, self.now, out, cleared);
                        self.network
                            .push(m, derived, &self.signals, self.now, out, cleared);
                        let inputs = Inputs {
                            topology: &self.topology,
                            signals: &self.signals,
                            now: self.now,
                        };
                        self.bus.push(m, derived, &inputs, out, cleared);
                        self.serving
                            .push(m, derived, &self.signals, self.now, out, cleared);
                        self.fabric
                            .push(m, derived, &self.signals, self.now, out, cleared);
                        self.neighbor.push(m, &self.signals, self.now, out, cleared);
                    }
                }
            }
            Record::Request(r) => {
                if self.scope != Scope::Node {
                    let cleared = &mut self.cleared;
                    self.serving
                        .requests
                        .push(r, &self.signals, self.now, out, cleared);
                }
            }
        }
        if self.now - self.last_prune >= PRUNE_EVERY_S {
            self.signals.prune(self.now);
            self.last_prune = self.now;
        }
        self.starvations(before, cleared_before, out);
        self.incidents.cleared(&self.cleared[cleared_before..]);
        self.incidents.link(&mut out[before..]);
        self.findings += (out.len() - before) as u64;
    }

    /// Feeds one sensor window summary (see `edge`); its time is put on the
    /// sensor's clock with the offset the sensor estimated.
    pub fn push_window(&mut self, s: &Summary, out: &mut Vec<Finding>) {
        self.records += 1;
        let ts = s.window_end - s.offset_us as f64 / 1e6;
        if ts.is_finite() {
            self.now = self.now.max(ts);
            // A window's ranks left their last collective at its end: what
            // the GPU watch needs to tell a hung job's held GPUs from a
            // working one's, as raw collectives tell it.
            self.topology.collective_seen(&s.job, ts);
        }
        if self.scope == Scope::Node {
            return;
        }
        let before = out.len();
        let cleared_before = self.cleared.len();
        let inputs = Inputs {
            topology: &self.topology,
            signals: &self.signals,
            now: self.now,
        };
        self.windowed
            .push_window(s, ts, &inputs, out, &mut self.cleared);
        self.hang.arrived(&s.job, ts, &mut self.cleared);
        self.starvations(before, cleared_before, out);
        self.incidents.cleared(&self.cleared[cleared_before..]);
        self.incidents.link(&mut out[before..]);
        self.findings += (out.len() - before) as u64;
    }

    /// Hands the findings this record opened and cleared to the
    /// `noisy_neighbor` watch, which looks for a tenant on each node they
    /// say is short of CPU.
    fn starvations(&mut self, before: usize, cleared_before: usize, out: &mut Vec<Finding>) {
        if self.scope == Scope::Node
            || (out.len() == before && self.cleared.len() == cleared_before)
        {
            return;
        }
        let mut found = Vec::new();
        let mut closed = Vec::new();
        self.neighbor.findings(
            &out[before..],
            &self.cleared[cleared_before..],
            &self.signals,
            self.now,
            &mut found,
            &mut closed,
        );
        out.extend(found);
        self.cleared.extend(closed);
    }

    /// Findings whose condition has cleared since the last call, oldest
    /// first. Each has the kind and locus of a finding `push` or
    /// `push_window` emitted earlier, `ts` at the trace time it cleared and
    /// one line of evidence; no finding clears twice.
    pub fn take_cleared(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.cleared)
    }

    pub fn stats(&self) -> EngineStats {
        EngineStats {
            records: self.records,
            findings: self.findings,
            counter_resets: self.signals.stats.counter_resets,
            stale_samples: self.signals.stats.stale,
            series_dropped: self.signals.stats.series_dropped,
            straggler: self.straggler.stats,
            neighbor: self.neighbor.stats,
        }
    }
}

/// Runs a fresh engine over `records` and returns every finding.
pub fn detect_all<'a>(records: impl IntoIterator<Item = &'a Record>) -> Vec<Finding> {
    let mut engine = Engine::default();
    let mut out = Vec::new();
    for r in records {
        engine.push(r, &mut out);
    }
    out
}

//! GPUs held while nothing computes on them (seed 001, Table 3: most of the
//! framebuffer used, utilisation 0-5 %, sustained), told apart by what holds
//! the memory:
//!
//! - `gpu_squatter`: nothing useful holds it. The job that held the GPU
//!   ended (a Slurm terminal state), or Slurm's allocation on the node is
//!   known and no job holds the GPU, or the engine of the running job is
//!   dead (its metrics stopped) or hung (requests wait, none run, for
//!   `engine_hung_s`), or a running job with no engine metrics stopped
//!   arriving at its collectives after running them. With the first two (strong evidence) the memory bar is
//!   what engines really keep after a crash (vLLM preallocates
//!   `gpu_memory_utilization`, 0.90 by default, and a crashed engine keeps
//!   it), not seed 001's 95 %. When keel cannot tell who holds the GPU, the
//!   finding says so (`mapping_unknown`) and no rule may reclaim on it.
//! - `idle_gpu_reservation`: a running job's engine holds the memory, alive
//!   and with nothing to do (or with no engine metrics to tell). Capacity
//!   reserved but unused: reported for an operator, never reclaimed.
//!
//! MIG instances are GPUs of their own, keyed by DCGM's `GPU_I_ID` beside
//! the parent's index; their activity is `DCGM_FI_PROF_GR_ENGINE_ACTIVE`
//! (dcgm-exporter exports no `DCGM_FI_DEV_GPU_UTIL` for them).

use crate::config::SquatterConfig;
use crate::episode::{Episode, Reported, Step};
use crate::topology::{Holder, Topology};
use keel_model::{
    Basis, Cause, Finding, FindingKind, MetricName, MetricSample, Name, Severity, Timestamp,
};
use rustc_hash::FxHashMap as HashMap;

/// GPUs (and MIG instances) tracked per correlator; a sample for a new one
/// beyond this is dropped and counted.
pub const GPUS_MAX: usize = 65_536;
/// Engines (node, served model) tracked; beyond this, dropped and counted.
pub const ENGINES_MAX: usize = 16_384;

type Reading = Option<(Timestamp, f64)>;

#[derive(Debug, Default)]
struct GpuState {
    fb_used: Reading,
    fb_free: Reading,
    /// `DCGM_FI_DEV_GPU_UTIL`, %.
    util: Reading,
    /// `DCGM_FI_PROF_GR_ENGINE_ACTIVE` as %, for MIG instances and exporters
    /// without GPU_UTIL.
    gr_active: Reading,
    power: Reading,
    squat: Episode,
    squat_reported: Reported,
    idle: Episode,
    idle_reported: Reported,
}

#[derive(Debug, Default)]
struct EngineSeen {
    last: Timestamp,
    waiting: Reading,
    running: Reading,
    /// Requests waiting and none running since then.
    hung_since: Option<Timestamp>,
}

/// What `push` dropped because a bound was reached.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SquatterStats {
    pub gpus_dropped: u64,
    pub engines_dropped: u64,
}

#[derive(Debug)]
pub struct SquatterDetector {
    cfg: SquatterConfig,
    gpus: HashMap<(Name, u32, Option<u32>), GpuState>,
    engines: HashMap<(Name, Name), EngineSeen>,
    pub stats: SquatterStats,
}

/// What keel read of the GPU's holder at one moment.
struct Judged<'a> {
    basis: Basis,
    holder: Option<&'a Holder>,
    engine: Option<String>,
}

impl SquatterDetector {
    pub fn new(cfg: SquatterConfig) -> Self {
        SquatterDetector {
            cfg,
            gpus: HashMap::default(),
            engines: HashMap::default(),
            stats: SquatterStats::default(),
        }
    }

    /// Findings concluded go to `out`; the clearings of findings whose
    /// condition ended go to `cleared`.
    pub fn push(
        &mut self,
        s: &MetricSample,
        topology: &Topology,
        now: Timestamp,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        match s.name {
            MetricName::VllmRequestsWaiting | MetricName::VllmRequestsRunning => {
                self.engine_sample(s);
                return;
            }
            MetricName::FbUsed
            | MetricName::FbFree
            | MetricName::GpuUtil
            | MetricName::GrEngineActive
            | MetricName::PowerUsage => {}
            _ => return,
        }
        let Some(gpu) = s.labels.gpu else { return };
        let key = (s.node.clone(), gpu, s.labels.gpu_instance);
        // Looked up once; a GPU is added only for a sample that says it is
        // in use, and only while there is room.
        let full = self.gpus.len() >= GPUS_MAX;
        let g = match self.gpus.get_mut(&key) {
            Some(g) => g,
            None if s.name == MetricName::PowerUsage => return,
            None if full => {
                self.stats.gpus_dropped += 1;
                return;
            }
            None => self.gpus.entry(key).or_default(),
        };
        let reading = Some((s.ts, s.value));
        match s.name {
            MetricName::FbUsed => g.fb_used = reading,
            MetricName::FbFree => g.fb_free = reading,
            MetricName::GpuUtil => g.util = reading,
            MetricName::GrEngineActive => g.gr_active = Some((s.ts, s.value * 100.0)),
            _ => {
                g.power = reading;
                return;
            }
        }
        let cfg = &self.cfg;
        let fresh = |r: Reading| r.filter(|(ts, _)| s.ts - ts <= cfg.stale_s);
        let util = fresh(g.util).or(fresh(g.gr_active));
        let (Some((_, used)), Some((_, free)), Some((_, util))) =
            (fresh(g.fb_used), fresh(g.fb_free), util)
        else {
            return;
        };
        let total = used + free;
        let share = if total > 0.0 { used / total } else { 0.0 };
        let idle_now = util <= cfg.util_max;
        let judged = judge(cfg, &self.engines, topology, &s.node, gpu, s.ts);
        let squat_bar = match judged.basis {
            Basis::JobEnded | Basis::NoJob => cfg.fb_used_share_orphan,
            _ => cfg.fb_used_share,
        };
        let is_squat = matches!(
            judged.basis,
            Basis::JobEnded
                | Basis::NoJob
                | Basis::EngineDead
                | Basis::EngineHung
                | Basis::JobStalled
                | Basis::MappingUnknown
        );
        let squat_holds = idle_now && is_squat && share > squat_bar;
        let idle_holds = idle_now && !is_squat && share > cfg.fb_used_share_orphan;
        let squat_sustain = match judged.basis {
            Basis::MappingUnknown => cfg.owned_sustain_s,
            _ => cfg.orphan_sustain_s,
        };
        let ctx = Ctx {
            s,
            gpu,
            instance: s.labels.gpu_instance,
            used,
            total,
            share,
            util,
            power: fresh(g.power).map(|(_, w)| w),
            now,
        };
        match g
            .squat
            .observe(squat_holds, s.ts, squat_sustain, cfg.clear_s)
        {
            Step::Concluded { since } => {
                let f = ctx.finding(FindingKind::GpuSquatter, &judged, since);
                g.squat_reported.set(&f);
                out.push(f);
            }
            Step::Closed => cleared.extend(g.squat_reported.clear(now)),
            Step::Nothing => {}
        }
        match g
            .idle
            .observe(idle_holds, s.ts, cfg.owned_sustain_s, cfg.clear_s)
        {
            Step::Concluded { since } => {
                let f = ctx.finding(FindingKind::IdleGpuReservation, &judged, since);
                g.idle_reported.set(&f);
                out.push(f);
            }
            Step::Closed => cleared.extend(g.idle_reported.clear(now)),
            Step::Nothing => {}
        }
    }

    fn engine_sample(&mut self, s: &MetricSample) {
        let model = s.labels.model_name.clone().unwrap_or_default();
        let key = (s.node.clone(), model);
        if !self.engines.contains_key(&key) && self.engines.len() >= ENGINES_MAX {
            self.stats.engines_dropped += 1;
            return;
        }
        let e = self.engines.entry(key).or_default();
        e.last = e.last.max(s.ts);
        if s.name == MetricName::VllmRequestsWaiting {
            e.waiting = Some((s.ts, s.value));
        } else {
            e.running = Some((s.ts, s.value));
        }
        let hung = match (e.waiting, e.running) {
            (Some((tw, w)), Some((tr, r))) => {
                (tw - tr).abs() <= self.cfg.stale_s && w > 0.0 && r <= 0.0
            }
            _ => false,
        };
        e.hung_since = if hung {
            Some(e.hung_since.unwrap_or(s.ts))
        } else {
            None
        };
    }
}

/// Who holds the GPU and in what state, at trace time `ts`.
fn judge<'a>(
    cfg: &SquatterConfig,
    engines: &HashMap<(Name, Name), EngineSeen>,
    topology: &'a Topology,
    node: &Name,
    gpu: u32,
    ts: Timestamp,
) -> Judged<'a> {
    let holder = topology.holder(node, gpu);
    let Some(h) = holder else {
        let basis = if topology.allocation_known(node) {
            Basis::NoJob
        } else {
            Basis::MappingUnknown
        };
        return Judged {
            basis,
            holder,
            engine: None,
        };
    };
    if h.state.is_finished() {
        return Judged {
            basis: Basis::JobEnded,
            holder,
            engine: None,
        };
    }
    // The engines serving on the node: one hung, or all gone quiet, is the
    // running job's engine dead or hung (one engine per node is the common
    // case; on a node with several, the evidence names the engine).
    let mut seen = 0;
    let mut gone = 0;
    for ((n, model), e) in engines {
        if n != node {
            continue;
        }
        seen += 1;
        if let Some(since) = e.hung_since {
            if ts - since >= cfg.engine_hung_s && ts - e.last <= cfg.engine_gone_s {
                return Judged {
                    basis: Basis::EngineHung,
                    holder,
                    engine: Some(format!(
                        "engine {model:?} on {node}: requests waiting and none running for {:.0} s",
                        ts - since
                    )),
                };
            }
        }
        if ts - e.last > cfg.engine_gone_s {
            gone += 1;
        }
    }
    let stalled = topology
        .job(&h.job)
        .and_then(|j| j.last_collective)
        .filter(|t| ts - t > cfg.job_silent_s);
    let (basis, engine) = if seen == 0 {
        match stalled {
            Some(t) => (
                Basis::JobStalled,
                Some(format!(
                    "its ranks last left a collective {:.0} s ago and have not arrived since",
                    ts - t
                )),
            ),
            None => (Basis::NoEngineSignal, None),
        }
    } else if gone == seen {
        (
            Basis::EngineDead,
            Some(format!(
                "the engine metrics on {node} stopped answering more than {:.0} s ago",
                cfg.engine_gone_s
            )),
        )
    } else {
        (
            Basis::EngineIdle,
            Some(format!(
                "the engine on {node} answers its metrics with nothing waiting"
            )),
        )
    };
    Judged {
        basis,
        holder,
        engine,
    }
}

struct Ctx<'a> {
    s: &'a MetricSample,
    gpu: u32,
    instance: Option<u32>,
    used: f64,
    total: f64,
    share: f64,
    util: f64,
    power: Option<f64>,
    now: Timestamp,
}

impl Ctx<'_> {
    fn finding(&self, kind: FindingKind, j: &Judged<'_>, since: Timestamp) -> Finding {
        let node = &self.s.node;
        let what = match self.instance {
            Some(i) => format!("{node} gpu {} MIG instance {i}", self.gpu),
            None => format!("{node} gpu {}", self.gpu),
        };
        let mut evidence = vec![format!(
            "{what}: framebuffer {:.1}% used ({:.0} of {:.0} MiB) at {:.0}% utilisation for {:.0} s",
            self.share * 100.0,
            self.used,
            self.total,
            self.util,
            self.s.ts - since
        )];
        if let Some(w) = self.power {
            evidence.push(format!("still drawing {w:.0} W"));
        }
        evidence.push(match (j.basis, j.holder) {
            (Basis::JobEnded, Some(h)) => format!(
                "job {} that held it ended {} at {}; nothing has released the memory",
                h.job,
                h.state,
                keel_model::Clock(h.since)
            ),
            (Basis::NoJob, _) => {
                "Slurm's allocation on this node gives this GPU to no job".to_string()
            }
            (Basis::MappingUnknown, _) => {
                "which job holds this GPU is not known (no Slurm allocation for the node): not reclaimable"
                    .to_string()
            }
            (_, Some(h)) => format!("job {} reports {}", h.job, h.state),
            (_, None) => String::new(),
        });
        if let Some(e) = &j.engine {
            evidence.push(e.clone());
        }
        if j.basis == Basis::NoEngineSignal {
            evidence.push("no engine metrics on the node tell whether it is alive".into());
        }
        let (severity, confidence) = match (kind, j.basis) {
            (FindingKind::IdleGpuReservation, _) => (Severity::Info, 0.9),
            (_, Basis::JobEnded) => (Severity::Warning, 0.9),
            (_, Basis::NoJob) => (Severity::Warning, 0.85),
            (_, Basis::MappingUnknown) => (Severity::Warning, 0.5),
            _ => (Severity::Warning, 0.8),
        };
        Finding {
            ts: self.now,
            kind,
            cause: Cause::Engine,
            severity,
            confidence,
            job: j.holder.map(|h| h.job.clone()),
            node: Some(node.clone()),
            rank: None,
            gpu: Some(self.gpu),
            device: None,
            evidence,
            basis: Some(j.basis),
            gpu_instance: self.instance,
            related: Vec::new(),
        }
    }
}

//! `gpu_squatter`: a GPU whose memory is held while nothing computes on it
//! (seed 001, Table 3: framebuffer > 95% used, utilisation 0-5%, sustained).
//! The zombie of a crashed job keeps its memory for hours; knowing that the
//! job which held the GPU has ended lets keel conclude in seconds, while a GPU
//! still claimed by a running job must look dead for longer, since model
//! loading and warm-up look the same for a while.

use crate::config::SquatterConfig;
use crate::episode::{Episode, Reported, Step};
use crate::topology::Topology;
use keel_model::{
    Cause, Finding, FindingKind, MetricName, MetricSample, Name, Severity, Timestamp,
};
use rustc_hash::FxHashMap as HashMap;

#[derive(Debug, Default)]
struct GpuState {
    fb_used: Option<(Timestamp, f64)>,
    fb_free: Option<(Timestamp, f64)>,
    util: Option<(Timestamp, f64)>,
    power: Option<(Timestamp, f64)>,
    episode: Episode,
    reported: Reported,
}

#[derive(Debug)]
pub struct SquatterDetector {
    cfg: SquatterConfig,
    gpus: HashMap<(Name, u32), GpuState>,
}

impl SquatterDetector {
    pub fn new(cfg: SquatterConfig) -> Self {
        SquatterDetector {
            cfg,
            gpus: HashMap::default(),
        }
    }

    /// Findings concluded go to `out`; the clearings of findings whose GPU
    /// was released go to `cleared`.
    pub fn push(
        &mut self,
        s: &MetricSample,
        topology: &Topology,
        now: Timestamp,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        let Some(gpu) = s.labels.gpu else { return };
        match s.name {
            MetricName::FbUsed | MetricName::FbFree | MetricName::GpuUtil => {}
            MetricName::PowerUsage => {
                if let Some(g) = self.gpus.get_mut(&(s.node.clone(), gpu)) {
                    g.power = Some((s.ts, s.value));
                }
                return;
            }
            _ => return,
        }
        let cfg = &self.cfg;
        let g = self.gpus.entry((s.node.clone(), gpu)).or_default();
        let reading = Some((s.ts, s.value));
        match s.name {
            MetricName::FbUsed => g.fb_used = reading,
            MetricName::FbFree => g.fb_free = reading,
            _ => g.util = reading,
        }
        let fresh = |r: Option<(Timestamp, f64)>| r.filter(|(ts, _)| s.ts - ts <= cfg.stale_s);
        let (Some((_, used)), Some((_, free)), Some((_, util))) =
            (fresh(g.fb_used), fresh(g.fb_free), fresh(g.util))
        else {
            return;
        };
        let total = used + free;
        let share = if total > 0.0 { used / total } else { 0.0 };
        let holds = share > cfg.fb_used_share && util <= cfg.util_max;
        let holder = topology.holder(&s.node, gpu);
        let orphan = holder.is_some_and(|h| h.state.is_finished());
        let sustain = if orphan {
            cfg.orphan_sustain_s
        } else {
            cfg.owned_sustain_s
        };
        let since = match g.episode.observe(holds, s.ts, sustain, cfg.clear_s) {
            Step::Concluded { since } => since,
            Step::Closed => {
                cleared.extend(g.reported.clear(now));
                return;
            }
            Step::Nothing => return,
        };
        let mut evidence = vec![format!(
            "{} gpu {gpu}: framebuffer {:.1}% used ({:.0} of {:.0} MiB) at {:.0}% utilisation for {:.0} s",
            s.node,
            share * 100.0,
            used,
            total,
            util,
            s.ts - since
        )];
        if let Some((_, w)) = fresh(g.power) {
            evidence.push(format!("still drawing {w:.0} W"));
        }
        match holder {
            Some(h) if h.state.is_finished() => evidence.push(format!(
                "job {} that held it ended {} at {:.1}; nothing has released the memory",
                h.job, h.state, h.since
            )),
            Some(h) => evidence.push(format!(
                "job {} still reports {} but does no work on this GPU",
                h.job, h.state
            )),
            None => evidence.push("no known job holds this GPU".into()),
        }
        let f = Finding {
            ts: now,
            kind: FindingKind::GpuSquatter,
            cause: Cause::Engine,
            severity: Severity::Warning,
            confidence: if holder.is_some() { 0.9 } else { 0.75 },
            job: holder.map(|h| h.job.clone()),
            node: Some(s.node.clone()),
            rank: None,
            gpu: Some(gpu),
            device: None,
            evidence,
        };
        g.reported.set(&f);
        out.push(f);
    }
}

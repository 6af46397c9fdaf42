//! The inference engine's own health, from vLLM's gauges (seed 001, Table 2):
//! `kv_cache_saturation` (KV cache pinned near full while the waiting queue
//! grows: the onset of queue instability) and `engine_stall` (nothing running
//! while the cache stays full and requests wait: a hung or crashed worker).

use crate::config::EngineConfig;
use crate::episode::{Episode, Reported, Step};
use crate::stats::Ring;
use keel_model::{
    Cause, Finding, FindingKind, MetricName, MetricSample, Name, Severity, Timestamp,
};
use rustc_hash::FxHashMap as HashMap;

#[derive(Debug)]
struct EngineState {
    usage: Option<(Timestamp, f64)>,
    waiting: Option<(Timestamp, f64)>,
    running: Option<(Timestamp, f64)>,
    waiting_history: Ring<(Timestamp, f64)>,
    saturation: Episode,
    stall: Episode,
    saturation_reported: Reported,
    stall_reported: Reported,
}

impl Default for EngineState {
    fn default() -> Self {
        EngineState {
            usage: None,
            waiting: None,
            running: None,
            waiting_history: Ring::new(64),
            saturation: Episode::Idle,
            stall: Episode::Idle,
            saturation_reported: Reported::default(),
            stall_reported: Reported::default(),
        }
    }
}

#[derive(Debug)]
pub struct EngineHealthDetector {
    cfg: EngineConfig,
    /// Keyed by node and served model: one engine per (node, model).
    engines: HashMap<(Name, Name), EngineState>,
}

impl EngineHealthDetector {
    pub fn new(cfg: EngineConfig) -> Self {
        EngineHealthDetector {
            cfg,
            engines: HashMap::default(),
        }
    }

    /// Findings concluded go to `out`; the clearings of findings whose
    /// condition has cleared go to `cleared`.
    pub fn push(
        &mut self,
        s: &MetricSample,
        now: Timestamp,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        if !matches!(
            s.name,
            MetricName::VllmKvCacheUsage
                | MetricName::VllmRequestsWaiting
                | MetricName::VllmRequestsRunning
        ) {
            return;
        }
        let cfg = &self.cfg;
        let model = s.labels.model_name.clone().unwrap_or_default();
        let e = self
            .engines
            .entry((s.node.clone(), model.clone()))
            .or_default();
        let reading = Some((s.ts, s.value));
        match s.name {
            MetricName::VllmKvCacheUsage => e.usage = reading,
            MetricName::VllmRequestsWaiting => {
                e.waiting = reading;
                e.waiting_history.push((s.ts, s.value));
            }
            _ => e.running = reading,
        }
        let fresh =
            |r: Option<(Timestamp, f64)>| r.filter(|(ts, _)| s.ts - ts <= cfg.stale_s).map(|r| r.1);
        let (Some(usage), Some(waiting), Some(running)) =
            (fresh(e.usage), fresh(e.waiting), fresh(e.running))
        else {
            return;
        };
        // Only judge once per scrape: on the sample that completes it.
        if s.name != MetricName::VllmRequestsRunning {
            return;
        }
        // The ring holds its values in slot order, not time order.
        let mut recent: Vec<(Timestamp, f64)> = e
            .waiting_history
            .values()
            .iter()
            .filter(|(ts, _)| *ts >= s.ts - cfg.growth_window_s)
            .copied()
            .collect();
        recent.sort_by(|a, b| a.0.total_cmp(&b.0));
        let oldest_recent = recent.first().map_or(waiting, |p| p.1);
        let growing = queue_grows(&recent, cfg);
        let saturated = if e.saturation.is_open() {
            usage >= cfg.kv_clear && waiting >= 1.0
        } else {
            usage >= cfg.kv_full && running > 0.0 && waiting >= cfg.waiting_min && growing
        };
        let place = if model.is_empty() {
            s.node.to_string()
        } else {
            format!("{} ({model})", s.node)
        };
        match e
            .saturation
            .observe(saturated, s.ts, cfg.saturation_sustain_s, cfg.clear_s)
        {
            Step::Concluded { since } => out.push(finding(
                &mut e.saturation_reported,
                FindingKind::KvCacheSaturation,
                Severity::Warning,
                now,
                &s.node,
                vec![
                    format!(
                        "{place}: KV cache {:.1}% full since {}",
                        usage * 100.0,
                        keel_model::Clock(since)
                    ),
                    format!(
                        "waiting queue went from {oldest_recent:.0} to {waiting:.0} in {:.0} s while {running:.0} requests run",
                        recent.last().map_or(0.0, |l| l.0) - recent.first().map_or(0.0, |f| f.0)
                    ),
                ],
            )),
            Step::Closed => cleared.extend(e.saturation_reported.clear(now)),
            Step::Nothing => {}
        }

        let stalled = if e.stall.is_open() {
            running < 1.0
        } else {
            running < 1.0 && usage >= cfg.kv_full && waiting >= 1.0
        };
        match e
            .stall
            .observe(stalled, s.ts, cfg.stall_sustain_s, cfg.clear_s)
        {
            Step::Concluded { since } => out.push(finding(
                &mut e.stall_reported,
                FindingKind::EngineStall,
                Severity::Critical,
                now,
                &s.node,
                vec![
                    format!(
                        "{place}: no request running since {since_at}",
                        since_at = keel_model::Clock(since)
                    ),
                    format!(
                        "KV cache {:.1}% full and {waiting:.0} requests waiting",
                        usage * 100.0
                    ),
                ],
            )),
            Step::Closed => cleared.extend(e.stall_reported.clear(now)),
            Step::Nothing => {}
        }
    }
}

/// The finding, remembered in `reported` for its clearing.
/// Whether the waiting queue grows, judged on its trend: its least-squares
/// slope over `growth_window_s` adds up to `waiting_growth_abs` requests or
/// more (whatever the queue's length: with the cache pinned, a queue that
/// keeps growing means arrivals outpace what the engine can admit), or it
/// rose at each of the last two scrapes by `waiting_growth_abs` in all, for
/// a growth that has only just begun. `recent` is oldest first.
fn queue_grows(recent: &[(Timestamp, f64)], cfg: &EngineConfig) -> bool {
    let n = recent.len();
    if n < 3 {
        return false;
    }
    let [a, b, c] = [recent[n - 3].1, recent[n - 2].1, recent[n - 1].1];
    if b > a && c > b && c - a >= cfg.waiting_growth_abs {
        return true;
    }
    let t0 = recent[0].0;
    let (mt, mv) = recent.iter().fold((0.0, 0.0), |(st, sv), (t, v)| {
        (st + (t - t0) / n as f64, sv + v / n as f64)
    });
    let (mut cov, mut var) = (0.0, 0.0);
    for (t, v) in recent {
        cov += (t - t0 - mt) * (v - mv);
        var += (t - t0 - mt) * (t - t0 - mt);
    }
    let span = recent[n - 1].0 - t0;
    var > 0.0 && cov / var * span >= cfg.waiting_growth_abs
}

fn finding(
    reported: &mut Reported,
    kind: FindingKind,
    severity: Severity,
    now: Timestamp,
    node: &Name,
    evidence: Vec<String>,
) -> Finding {
    let f = Finding {
        severity,
        confidence: 0.9,
        evidence,
        ..Finding::on_node(kind, Cause::Engine, now, node)
    };
    reported.set(&f);
    f
}

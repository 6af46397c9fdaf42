//! Serving conditions of a node's engine and memory: `swap_thrashing`
//! (vLLM preempting running requests so often that recomputation eats the
//! batch) and `oom_kill` (the kernel's OOM killer fired on the node, or
//! Slurm ended a job `OUT_OF_MEMORY`). The request-level kinds
//! (`tail_latency`, `ingress_burst_backlog`) are in `serving_requests`.

use crate::episode::{Episode, Reported, Step};
use crate::signals::{SignalStore, Sub};
use keel_model::{
    Cause, Finding, FindingKind, JobRecord, JobState, MetricName, MetricSample, Name, Severity,
    Timestamp,
};
use rustc_hash::FxHashMap as HashMap;
use std::collections::VecDeque;

pub use crate::serving_requests::RequestsConfig;

/// Engines (node, served model) watched for thrashing at once; past it a
/// new engine is not watched (counted in `ServingStats::dropped`).
pub const ENGINES_MAX: usize = 4096;
/// Nodes watched for OOM kills at once; past it a new node is not watched.
pub const NODES_MAX: usize = 4096;
/// Jobs ended `OUT_OF_MEMORY` remembered, so that Slurm repeating the
/// record does not make a second finding.
pub const OOM_JOBS_MAX: usize = 256;
/// Nodes one job's `OUT_OF_MEMORY` record may name findings on.
pub const OOM_JOB_NODES_MAX: usize = 64;

/// Thresholds of the serving detectors, with the reasons for their values.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServingConfig {
    /// Preemptions per second (`vllm:num_preemptions_total`'s rate) at or
    /// above which an engine may be thrashing: a preempted request has its
    /// KV blocks freed and its prefill recomputed (or swapped out and back
    /// over PCIe in vLLM's V0), so a handful a second means the engine
    /// spends a real share of each second redoing work. Healthy engines
    /// preempt now and then (a long prompt arriving into a full batch);
    /// an engine whose cache is merely pinned preempts a few a second.
    pub preempt_min_per_s: f64,
    /// ...and at or above this many per second per running request: each
    /// running request preempted every 4 s on average. A request that is
    /// preempted every few seconds spends more time recomputing its prefill
    /// than decoding: throughput collapses while the cache stays full. A
    /// pinned cache that preempts 1 in 10 running requests a second is
    /// queue instability (`kv_cache_saturation`), not yet thrashing.
    pub preempt_per_running: f64,
    /// Thrashing must hold this long: three consecutive 1 Hz scrapes, so
    /// one burst (a long prompt evicting several requests at once, in one
    /// scrape interval) never concludes.
    pub thrash_sustain_s: f64,
    /// An open episode ends once the rate stays under half the bars this
    /// long.
    pub thrash_clear_s: f64,
    /// A reading of the running gauge older than this no longer describes
    /// the engine.
    pub stale_s: f64,
    /// An OOM episode ends this long after the node's last kill: the OOM
    /// killer often fires several times as it frees memory, and a kill a
    /// few seconds after the first is the same episode.
    pub oom_clear_s: f64,
    /// `tail_latency` and `ingress_burst_backlog`, from request records.
    pub requests: RequestsConfig,
}

impl Default for ServingConfig {
    fn default() -> Self {
        ServingConfig {
            preempt_min_per_s: 5.0,
            preempt_per_running: 0.25,
            thrash_sustain_s: 1.9,
            thrash_clear_s: 5.0,
            stale_s: 30.0,
            oom_clear_s: 30.0,
            requests: RequestsConfig::default(),
        }
    }
}

/// Counters for status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServingStats {
    /// Engines or nodes not watched because a bound was reached.
    pub dropped: u64,
}

#[derive(Debug, Default)]
struct OomState {
    /// The counter's last reading.
    last: Option<f64>,
    /// The newest kill of the open episode.
    last_kill: Option<Timestamp>,
    reported: Reported,
}

#[derive(Debug)]
pub struct ServingDetector {
    cfg: ServingConfig,
    thrash: HashMap<(Name, Sub), (Episode, Reported)>,
    oom: HashMap<Name, OomState>,
    oom_jobs: VecDeque<Name>,
    pub requests: crate::serving_requests::RequestsDetector,
    pub stats: ServingStats,
}

impl ServingDetector {
    pub fn new(cfg: ServingConfig) -> Self {
        ServingDetector {
            requests: crate::serving_requests::RequestsDetector::new(cfg.requests.clone()),
            cfg,
            thrash: HashMap::default(),
            oom: HashMap::default(),
            oom_jobs: VecDeque::new(),
            stats: ServingStats::default(),
        }
    }

    /// A metric sample `signals` took, with the rate or value it derived.
    pub fn push(
        &mut self,
        s: &MetricSample,
        derived: f64,
        signals: &SignalStore,
        now: Timestamp,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        match s.name {
            MetricName::VllmPreemptions => self.preemptions(s, derived, signals, now, out, cleared),
            MetricName::VmstatOomKill => self.oom_counter(s, now, out),
            _ => {}
        }
        self.oom_clear(s, now, cleared);
    }

    /// A job record: a job Slurm ended `OUT_OF_MEMORY` is an OOM kill on
    /// its nodes (Slurm names the job, not which of its nodes ran out).
    pub fn job(&mut self, j: &JobRecord, now: Timestamp, out: &mut Vec<Finding>) {
        if j.state != JobState::OutOfMemory || self.oom_jobs.contains(&j.job) {
            return;
        }
        if self.oom_jobs.len() >= OOM_JOBS_MAX {
            self.oom_jobs.pop_front();
        }
        self.oom_jobs.push_back(j.job.clone());
        let mut nodes: Vec<&Name> = j.ranks.keys().chain(j.nodes.iter()).collect();
        nodes.sort();
        nodes.dedup();
        for node in nodes.into_iter().take(OOM_JOB_NODES_MAX) {
            let line = format!(
                "Slurm ended job {} OUT_OF_MEMORY at {} (a step killed for memory)",
                j.job,
                keel_model::Clock(j.ts)
            );
            // On Slurm's clock: the record may be the newest thing seen.
            self.kill(node, now.max(j.ts), Some(j.job.clone()), line, out);
        }
    }

    fn preemptions(
        &mut self,
        s: &MetricSample,
        rate: f64,
        signals: &SignalStore,
        now: Timestamp,
        out: &mut Vec<Finding>,
        cleared: &mut Vec<Finding>,
    ) {
        let cfg = &self.cfg;
        let sub = Sub::of(s);
        let key = (s.node.clone(), sub.clone());
        if !self.thrash.contains_key(&key) && self.thrash.len() >= ENGINES_MAX {
            self.stats.dropped += 1;
            return;
        }
        let reading = |name| {
            signals
                .get(&s.node, name, &sub)
                .and_then(|x| x.latest())
                .filter(|(ts, _)| (s.ts - ts).abs() <= cfg.stale_s)
                .map(|p| p.1)
        };
        let running = reading(MetricName::VllmRequestsRunning);
        let usage = reading(MetricName::VllmKvCacheUsage);
        let (episode, reported) = self.thrash.entry(key).or_default();
        let scale = if episode.is_open() { 0.5 } else { 1.0 };
        let per_running = running.map(|r| rate / r.max(1.0));
        let holds = rate >= scale * cfg.preempt_min_per_s
            && per_running.is_none_or(|p| p >= scale * cfg.preempt_per_running);
        let since = match episode.observe(holds, s.ts, cfg.thrash_sustain_s, cfg.thrash_clear_s) {
            Step::Concluded { since } => since,
            Step::Closed => {
                cleared.extend(reported.clear(now));
                return;
            }
            Step::Nothing => return,
        };
        let place = match &s.labels.model_name {
            Some(m) => format!("{} ({m})", s.node),
            None => s.node.to_string(),
        };
        let mut evidence = vec![format!(
            "{place}: {rate:.1} preemptions/s since {since_at} (vllm:num_preemptions_total)",
            since_at = keel_model::Clock(since)
        )];
        if let (Some(r), Some(p)) = (running, per_running) {
            evidence.push(format!(
                "{r:.0} requests running: each preempted every {:.1} s on average",
                1.0 / p.max(1e-9)
            ));
        }
        if let Some(u) = usage {
            evidence.push(format!("KV cache {:.1}% full", u * 100.0));
        }
        let f = Finding {
            confidence: if running.is_some() { 0.9 } else { 0.7 },
            evidence,
            ..Finding::on_node(FindingKind::SwapThrashing, Cause::Engine, now, &s.node)
        };
        reported.set(&f);
        out.push(f);
    }

    /// `node_vmstat_oom_kill`: the kernel's count of OOM kills since boot.
    /// A rise is a kill; a fall is a reboot, after which counting starts
    /// again from the new value.
    fn oom_counter(&mut self, s: &MetricSample, now: Timestamp, out: &mut Vec<Finding>) {
        if !self.oom.contains_key(&s.node) && self.oom.len() >= NODES_MAX {
            self.stats.dropped += 1;
            return;
        }
        let st = self.oom.entry(s.node.clone()).or_default();
        let prev = st.last.replace(s.value);
        let Some(prev) = prev else { return };
        if s.value <= prev {
            return;
        }
        let line = format!(
            "{}: node_vmstat_oom_kill rose from {prev:.0} to {:.0} at {}: the kernel's OOM killer ended {:.0} process(es)",
            s.node,
            s.value,
            keel_model::Clock(s.ts),
            s.value - prev
        );
        let node = s.node.clone();
        self.kill(&node, now.max(s.ts), None, line, out);
    }

    fn kill(
        &mut self,
        node: &Name,
        now: Timestamp,
        job: Option<Name>,
        line: String,
        out: &mut Vec<Finding>,
    ) {
        if !self.oom.contains_key(node) && self.oom.len() >= NODES_MAX {
            self.stats.dropped += 1;
            return;
        }
        let st = self.oom.entry(node.clone()).or_default();
        let open = st.last_kill.is_some();
        st.last_kill = Some(now);
        if open {
            return;
        }
        let f = Finding {
            severity: Severity::Critical,
            confidence: 0.95,
            job,
            evidence: vec![line],
            ..Finding::on_node(FindingKind::OomKill, Cause::Host, now, node)
        };
        st.reported.set(&f);
        out.push(f);
    }

    /// Closes the OOM episode of the sample's node once no kill came for
    /// `oom_clear_s`: every reading of the node is a tick of its clock.
    fn oom_clear(&mut self, s: &MetricSample, now: Timestamp, cleared: &mut Vec<Finding>) {
        let Some(st) = self.oom.get_mut(&s.node) else {
            return;
        };
        if st
            .last_kill
            .is_some_and(|k| s.ts - k >= self.cfg.oom_clear_s)
        {
            st.last_kill = None;
            cleared.extend(st.reported.clear(now));
        }
    }
}

#[cfg(test)]
#[path = "serving_tests.rs"]
mod tests;

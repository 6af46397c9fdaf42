//! `noisy_neighbor` (node; taxonomy: "a co-located tenant (cgroup) takes the
//! resource that a straggler lacks"; seed 002's host-side checklist: another
//! job's threads on the straggler's cores).
//!
//! A node is *starved* while a finding says its CPU is short: a
//! `tp_straggler` of cause `host` with a rank there, or the node's
//! `host_cpu_bottleneck`. While it is, every cgroup the node reports CPU use
//! for (`cgroup_cpu_total_seconds{cgroup=...}`, the cgroup exporter's
//! counter, or the `linux` source's reading of each Slurm job's cgroup v2
//! `cpu.stat`) is compared with its own calm level before the starvation
//! began. A cgroup other than the starved job's own that now takes at least
//! `grab_cpus` more CPUs than it did, and `rise_ratio` times as many, is the
//! neighbour: the finding names it (its path, and as `job` the Slurm job it
//! belongs to, the tenant an operator would act on). A cgroup first seen
//! after the starvation began, on a node whose cgroups were watched before,
//! is a tenant that just arrived (first read a scrape or more after the
//! node's other cgroups, within the last `BASELINE_S`): its calm level is
//! none at all, however late the starvation was concluded.
//!
//! Without per-cgroup CPU readings nothing is concluded: the starved node
//! stays a `host` straggler or a `host_cpu_bottleneck`, which name no
//! tenant. The finding clears when the node is no longer starved or the
//! tenant gives the CPUs back.

use crate::signals::{SignalStore, Sub};
use keel_model::{
    slurm_job_of_cgroup, Cause, Finding, FindingKind, MetricName, MetricSample, Name, Timestamp,
};
use rustc_hash::FxHashMap as HashMap;

/// Starved nodes watched at most; a starvation past it is not judged here
/// (`NeighborStats::nodes_dropped`).
pub const NODES_MAX: usize = 4096;
/// Findings keeping one node starved at most (its host stragglers and its
/// bottleneck); past it the node stays starved until one clears.
pub const STARVERS_MAX: usize = 64;
/// Cgroups of one node compared at most (in the store's order); a node
/// reporting more (every user slice of a login node) is judged on these
/// (`NeighborStats::cgroups_skipped` counts the rest).
pub const CGROUPS_MAX: usize = 1024;

/// How much later than the node's other cgroups (s) a cgroup must first be
/// read to have arrived: more than a scrape interval's jitter.
const ARRIVAL_S: f64 = 5.0;

/// When a co-located cgroup is the tenant that took the CPU.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NeighborConfig {
    /// CPUs (cores' worth of time per second) a tenant must take beyond its
    /// calm level: one whole CPU is the least that, taken, leaves a rank's
    /// launch thread a core short while the tenant runs.
    pub grab_cpus: f64,
    /// ...and at least this many times its calm level: a tenant that
    /// always used 20 CPUs and now uses 21 changed nothing.
    pub rise_ratio: f64,
    /// Seconds before the starvation's finding that its onset is taken to
    /// be: a straggler is concluded 1-4 s after it begins, so the calm
    /// level is read before that.
    pub lead_s: f64,
    /// A cgroup's newest readings, all since the onset, that must each show
    /// the grab (each a rate over at least 0.75 s), so that one scrape's
    /// burst is not a tenant.
    pub min_readings: usize,
}

impl Default for NeighborConfig {
    fn default() -> Self {
        NeighborConfig {
            grab_cpus: 1.0,
            rise_ratio: 2.0,
            lead_s: 5.0,
            min_readings: 2,
        }
    }
}

/// What the detector dropped at its bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NeighborStats {
    pub nodes_dropped: u64,
    pub starvers_dropped: u64,
    /// Cgroups left out of a judgement for being past `CGROUPS_MAX` on
    /// their node (counted at each judgement).
    pub cgroups_skipped: u64,
}

/// One finding that keeps a node starved.
#[derive(Debug, Clone, PartialEq)]
struct Starver {
    kind: FindingKind,
    job: Option<Name>,
    rank: Option<u32>,
    /// When the starvation is taken to have begun (the finding's time less
    /// `lead_s`).
    onset: Timestamp,
    line: String,
}

#[derive(Debug, Default)]
struct NodeState {
    starvers: Vec<Starver>,
    /// The open finding, if one was concluded, and its cgroup.
    open: Option<(Finding, Name)>,
}

#[derive(Debug, Default)]
pub struct NeighborDetector {
    cfg: NeighborConfig,
    nodes: HashMap<Name, NodeState>,
    pub stats: NeighborStats,
}

impl NeighborDetector {
    pub fn new(cfg: NeighborConfig) -> Self {
        NeighborDetector {
            cfg,
            ..Default::default()
        }
    }

    /// Takes the findings just concluded and cleared by the other
    /// detectors: starvations begin and end with them. A node that became
    /// starved is judged at once from the readings already stored.
    pub fn findings(
        &mut self,
        new: &[Finding],
        cleared: &[Finding],
        signals: &SignalStore,
        now: Timestamp,
        out: &mut Vec<Finding>,
        closed: &mut Vec<Finding>,
    ) {
        for c in cleared.iter().filter(|f| starves(f)) {
            let Some(node) = &c.node else { continue };
            let Some(state) = self.nodes.get_mut(node) else {
                continue;
            };
            state
                .starvers
                .retain(|s| !(s.kind == c.kind && s.job == c.job && s.rank == c.rank));
            if state.starvers.is_empty() {
                if let Some((f, _)) = state.open.take() {
                    closed.push(clearing(f, now, "the node is no longer short of CPU"));
                }
                self.nodes.remove(node);
            }
        }
        for f in new.iter().filter(|f| starves(f)) {
            let Some(node) = &f.node else { continue };
            if !self.nodes.contains_key(node) && self.nodes.len() >= NODES_MAX {
                self.stats.nodes_dropped += 1;
                continue;
            }
            let state = self.nodes.entry(node.clone()).or_default();
            if state.starvers.len() >= STARVERS_MAX {
                self.stats.starvers_dropped += 1;
                continue;
            }
            let line = match (f.kind, &f.job, f.rank) {
                (FindingKind::TpStraggler, Some(j), Some(r)) => {
                    format!(
                        "job {j} rank {r} straggles for want of CPU (cause host) since {}",
                        keel_model::Clock(f.ts)
                    )
                }
                _ => format!(
                    "{} on {node} since {}",
                    f.kind.wire(),
                    keel_model::Clock(f.ts)
                ),
            };
            state.starvers.push(Starver {
                kind: f.kind,
                job: f.job.clone(),
                rank: f.rank,
                onset: f.ts - self.cfg.lead_s,
                line,
            });
            let node = node.clone();
            self.judge(&node, signals, now, out, closed);
        }
    }

    /// Takes one stored sample: a cgroup's CPU reading on a starved node
    /// judges the node again.
    pub fn push(
        &mut self,
        s: &MetricSample,
        signals: &SignalStore,
        now: Timestamp,
        out: &mut Vec<Finding>,
        closed: &mut Vec<Finding>,
    ) {
        if s.name == MetricName::CgroupCpuSeconds && self.nodes.contains_key(&s.node) {
            self.judge(&s.node.clone(), signals, now, out, closed);
        }
    }

    fn judge(
        &mut self,
        node: &Name,
        signals: &SignalStore,
        now: Timestamp,
        out: &mut Vec<Finding>,
        closed: &mut Vec<Finding>,
    ) {
        let cfg = &self.cfg;
        let Some(state) = self.nodes.get_mut(node) else {
            return;
        };
        let cgroups = signals.on_node(node, MetricName::CgroupCpuSeconds).count();
        self.stats.cgroups_skipped += cgroups.saturating_sub(CGROUPS_MAX) as u64;
        let Some(onset) = state.starvers.iter().map(|s| s.onset).reduce(f64::min) else {
            return;
        };
        let own: Vec<&str> = state
            .starvers
            .iter()
            .filter_map(|s| s.job.as_deref())
            .collect();
        // When the node's cgroups were first read: a cgroup first read a
        // scrape or more after that, within the calm window, is a tenant
        // that just arrived (however late the starvation was concluded).
        let Some(watched_since) = signals
            .on_node(node, MetricName::CgroupCpuSeconds)
            .take(CGROUPS_MAX)
            .filter_map(|(_, s)| s.first())
            .reduce(f64::min)
        else {
            return;
        };
        // (rise, path, CPUs taken, calm level) of each cgroup that grabs.
        let mut grabbing: Vec<(f64, Name, f64, Option<f64>)> = Vec::new();
        for (key, series) in signals
            .on_node(node, MetricName::CgroupCpuSeconds)
            .take(CGROUPS_MAX)
        {
            let Sub::Cgroup(path) = key else {
                continue;
            };
            if is_own(path, &own) {
                continue;
            }
            // Its newest readings, every one since the onset, show the
            // grab: one scrape's burst is not a tenant.
            let mut taken = f64::INFINITY;
            let mut n = 0;
            for (ts, v) in series.recent(cfg.min_readings) {
                if ts < onset {
                    break;
                }
                taken = taken.min(v);
                n += 1;
            }
            if n < cfg.min_readings {
                continue;
            }
            let first = series.first().unwrap_or(now);
            let arrived =
                first - watched_since >= ARRIVAL_S && first >= onset - crate::signals::BASELINE_S;
            let calm = if arrived {
                None
            } else {
                series.baseline(onset)
            };
            let base = match calm {
                Some(c) => c,
                None if arrived => 0.0,
                None => continue,
            };
            if taken - base >= cfg.grab_cpus && taken >= cfg.rise_ratio * base.max(0.0) {
                grabbing.push((taken - base, path.clone(), taken, calm));
            }
        }
        // A parent cgroup (`/slurm/uid_1`) adds up its children: the tenant
        // is the deepest one that grabs.
        let best = grabbing
            .iter()
            .filter(|(_, p, ..)| !grabbing.iter().any(|(_, q, ..)| is_below(q, p)))
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .cloned();
        match (&state.open, best) {
            (None, Some((_, path, taken, calm))) => {
                let job = slurm_job_of_cgroup(&path).map(Name::from);
                let mut f = Finding {
                    confidence: if calm.is_some() { 0.85 } else { 0.7 },
                    job: job.clone(),
                    ..Finding::on_node(FindingKind::NoisyNeighbor, Cause::Host, now, node)
                };
                let who = match &job {
                    Some(j) => format!("cgroup {path} (Slurm job {j})"),
                    None => format!("cgroup {path}"),
                };
                f.evidence.push(match calm {
                    Some(c) => {
                        format!(
                            "{node}: {who} takes {taken:.2} CPUs, {c:.2} before {}",
                            keel_model::Clock(onset)
                        )
                    }
                    None => {
                        format!(
                            "{node}: {who} takes {taken:.2} CPUs, arrived after {}",
                            keel_model::Clock(onset)
                        )
                    }
                });
                f.evidence
                    .extend(state.starvers.iter().map(|s| s.line.clone()));
                state.open = Some((f.clone(), path));
                out.push(f);
            }
            (Some((_, path)), None) => {
                let path = path.clone();
                let (f, _) = state.open.take().expect("matched Some");
                closed.push(clearing(
                    f,
                    now,
                    &format!("{path} no longer takes the CPU it took"),
                ));
            }
            _ => {}
        }
    }
}

/// Whether `f` says its node is short of CPU.
fn starves(f: &Finding) -> bool {
    match f.kind {
        FindingKind::TpStraggler => f.cause == Cause::Host,
        FindingKind::HostCpuBottleneck => true,
        _ => false,
    }
}

/// Whether the cgroup at `path` is one of the starved jobs' own (their job
/// cgroup or a step under it), whose CPU use is the victim's, not a tenant's.
fn is_own(path: &str, own: &[&str]) -> bool {
    slurm_job_of_cgroup(path).is_some_and(|j| own.contains(&j))
}

/// Whether cgroup `child` lies under cgroup `parent`.
fn is_below(child: &str, parent: &str) -> bool {
    let parent = parent.trim_end_matches('/');
    child.len() > parent.len()
        && child.starts_with(parent)
        && child.as_bytes()[parent.len()] == b'/'
}

fn clearing(f: Finding, now: Timestamp, why: &str) -> Finding {
    Finding {
        ts: now,
        evidence: vec![format!(
            "noisy_neighbor cleared at {}, {:.1} s after it was reported: {why}",
            keel_model::Clock(now),
            now - f.ts
        )],
        related: Vec::new(),
        ..f
    }
}

#[cfg(test)]
#[path = "neighbor_tests.rs"]
mod tests;
